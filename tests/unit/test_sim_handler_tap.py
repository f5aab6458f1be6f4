"""``twistd ate-sim-handler``: the simulated handler device asks ``ID?`` until ate-handler
names the tester, and only then loads its first lot; its options."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage

from ate.handler import lineproto as lp
from ate.handler.drivers.simulated import SimulatedHandler
from ate.sim.handler_tap import Options, ProbingProtocol, makeService


def lines(transport: StringTransport) -> list[str]:
    out = transport.value().decode().splitlines()
    transport.clear()
    return out


def test_probes_until_the_tester_is_named_then_loads():
    clock = Clock()
    device = SimulatedHandler(clock, lots=("306426.001",), parts_per_lot=4, sites=4)
    proto = ProbingProtocol(device, clock, interval=1.0)
    transport = StringTransport()
    proto.makeConnection(transport)
    probe = lp.format_line(lp.IdentifyQuery())
    assert lines(transport) == [probe]
    clock.advance(1.0)
    clock.advance(1.0)
    assert lines(transport) == [probe, probe]
    proto.dataReceived(lp.format_line(lp.error_status("busy")).encode() + b"\n")
    clock.advance(1.0)
    assert lines(transport) == [probe]             # an error is not an answer
    proto.dataReceived(lp.format_line(lp.TesterName("SCT-81-1F")).encode() + b"\n")
    assert device.tester_name == "SCT-81-1F"
    (load,) = lines(transport)
    assert load.startswith("LL|306426.001|")
    clock.advance(10)
    assert lines(transport) == []                  # no more probes
    proto.connectionLost(None)


def test_options():
    opts = Options()
    opts.parseOptions([])
    assert (opts["listen"], opts["pty"], opts["lots"], opts["parts-per-lot"], opts["sites"]) == (
        "tcp:5000:interface=127.0.0.1", 0, 1, 20, 4)
    with pytest.raises(usage.UsageError, match="--pty-link needs --pty"):
        Options().parseOptions(["--pty-link", "/tmp/x"])


def test_a_bad_listen_endpoint_is_one_line_exit_2(capsys):
    opts = Options()
    opts.parseOptions(["--listen", "nonsense:1"])
    with pytest.raises(SystemExit) as e:
        makeService(opts, reactor=MemoryReactorClock())
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ate-sim-handler: --listen 'nonsense:1'") and err.count("\n") == 1
