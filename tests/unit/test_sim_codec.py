"""The simulated sites and the master's codec, each against the other.

The simulator reads and writes the wire on its own, deliberately (ate/sim/sites.py, "Why
it does not use ate.protocol"), so these tests hold the two readings of the contract
together: every publication of the simulator is decoded by :class:`ate.protocol.Codec` and
encoded again to the same topic and the same bytes, and every command the codec encodes is
taken by the simulator with the effect protocol.md gives it, without a warning.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from ate.config import SimBin, SimFaults
from ate.protocol import messages as m
from ate.protocol.messages import Codec
from ate.sim import sites as sim_sites
from ate.sim.sites import ControlCommand, MasterStatusSeen, SimSites, TestAppCommand, decode

D = "SCT-81-1F"
SITES = ("0", "1")
BIN_TABLE = {"1": ["1"], "5": ["12"]}
BINS = (SimBin(1, 1, 1.0), SimBin(12, 5, 1.0))

#: What the simulated sites publish (protocol 2.5, 2.7-2.11).
SIM_PUBLISHES = {m.ControlStatus, m.TestAppStatus, m.TestResult, m.TestSummary,
                 m.ExecutionStrategy, m.LogLine}
#: Kinds that are neither sent to the sites nor sent by them: handler commands and master
#: responses (2.2, 2.3), io-control (9; the simulated TestApps ask for no peripheral) and
#: the handler application's messages (13.1).
NOT_THE_SITES = {m.Load, m.Next, m.Unload, m.Reset, m.Identify, m.GetState, m.SiteLayout,
                 m.GetHost, m.NextResponse, m.IdentifyResponse, m.GetStateResponse,
                 m.GetHostResponse, m.ErrorResponse, m.MasterAlarm, m.IoControlRequest,
                 m.IoControlForward,
                 m.IoControlResponse, m.PeripheralResponseRelay, m.PeripheralStatus,
                 m.HandlerStatus, m.HandlerCommand, m.HandlerResponse}


def commands() -> list[m.Message]:
    """One of every message the master sends to the sites, in an order the sites take."""
    return [
        m.MasterStatus("initialized", ""),
        m.ControlLoadTest(SITES, "programs/ft.py", ("--verbose",), "programs", BIN_TABLE),
        m.ControlSetLogLevel(SITES, 10),
        m.TestAppSetLogLevel(SITES, 10),
        m.TestAppGetExecutionStrategy(SITES, ((0, 0), (1, 0))),
        m.TestAppSetHBin(SITES, "12", "7"),
        m.TestAppSetParameter(SITES, ({"name": "vdd", "value": 3.3},)),
        m.TestAppNext(SITES, {"sites_info": [
            {"siteid": s, "partid": f"P{s}", "binning": -1, "logflag": 0,
             "additionalinfo": "000"} for s in SITES]}),
        m.TestAppTerminate(SITES),
        m.ControlLoadTest(SITES, "programs/ft.py", (), "programs", BIN_TABLE),
        m.TestAppReset(SITES),
        m.ControlReset(SITES),
    ]


def test_every_message_kind_is_classified():
    """A new message kind must be added to the tests below or named as not the sites'."""
    sent_to_sites = {type(c) for c in commands()}
    assert sent_to_sites | SIM_PUBLISHES | NOT_THE_SITES == set(m.MESSAGE_TYPES)
    assert not sent_to_sites & SIM_PUBLISHES and not NOT_THE_SITES & (
        sent_to_sites | SIM_PUBLISHES)


def run_sim(**kw):
    """The simulator through every command of the codec; returns (sim, clock, outbounds)."""
    clock = Clock()
    outs = []
    sim = SimSites(D, SITES, clock, outs.append, ptr_count=2, bins=BINS,
                   publish_logs=True, strategy_delay=0.0, **kw)
    codec = Codec(D, SITES)
    sim.connected()
    for cmd in commands():
        sim.received(*codec.encode(cmd))
        clock.advance(1)
    return sim, clock, outs


@pytest.fixture
def codec():
    return Codec(D, SITES)


def test_codec_commands_are_decoded_by_the_simulator_as_sent(codec):
    for cmd in commands():
        topic, payload = codec.encode(cmd)
        got = decode(D, topic, payload)
        wire = json.loads(payload)
        if isinstance(cmd, m.MasterStatus):
            assert got == MasterStatusSeen(cmd.state)
            continue
        kind = ControlCommand if topic == codec.topics.control_cmd else TestAppCommand
        assert isinstance(got, kind)
        assert got.command == wire["command"]
        assert got.sites == tuple(cmd.sites)
        assert dict(got.fields) == {k: v for k, v in wire.items()
                                    if k not in ("type", "command", "sites")}


def test_codec_commands_drive_the_simulator_without_a_warning():
    with capturedLogs() as logged:
        sim, clock, outs = run_sim()
    assert [e["log_format"] for e in logged if e["log_level"] >= LogLevel.warn] == []
    # every command had its effect (protocol 2.4, 2.6)
    for site in sim.site.values():
        assert (site.control_loglevel, site.testapp_loglevel) == (10, 10)
        assert site.control_state == "idle" and site.testapp_state is None
    kinds = [(o.app, o.kind) for o in outs]
    assert kinds.count(("TestApp", "execution_strategy")) == len(SITES)
    assert kinds.count(("TestApp", "testresult")) == len(SITES)
    assert kinds.count(("TestApp", "testsummary")) == len(SITES)
    results = [o.payload["payload"][-1] for o in outs if o.kind == "testresult"]
    assert sorted(r["PART_ID"] for r in results) == ["P0", "P1"]
    # sethbin 12 -> 7 is applied: every part of soft bin 12 has hard bin 7
    assert all(r["HARD_BIN"] == (7 if r["SOFT_BIN"] == 12 else 1) for r in results)
    # each TestApp's states in order: two loads, a part, terminate, reset
    states = [o.payload["payload"]["state"] for o in outs
              if o.kind == "status" and o.app == "TestApp" and o.site == "0"]
    assert states == ["idle", "testing", "idle", "terminated", "idle", "terminated"]
    controls = [o.payload["payload"]["state"] for o in outs
                if o.kind == "status" and o.app == "Control" and o.site == "0"]
    assert controls == ["idle", "idle",                    # connected, Master/status echo
                        "loading", "busy", "idle",         # load, terminate
                        "loading", "busy", "idle",         # load, TestApp reset
                        "resetting", "idle"]               # Control reset


def assert_codec_reads_it_back(codec, topic, payload):
    msg = codec.decode(topic, payload)
    assert msg is not None
    assert codec.encode(msg) == (topic, payload), type(msg).__name__
    return msg


def test_every_simulator_publication_is_what_the_codec_would_send(codec):
    sim, clock, outs = run_sim()
    seen = {type(assert_codec_reads_it_back(codec, o.topic, o.encode())) for o in outs}
    assert seen == SIM_PUBLISHES


def test_faults_and_errors_are_what_the_codec_would_send(codec):
    """A Control error with its message, the TestApp crash will, the Control will."""
    clock = Clock()
    outs = []
    sim = SimSites(D, SITES, clock, outs.append, ptr_count=1, bins=BINS,
                   faults=SimFaults(crash_on_part=1, fault_site="1"))
    sim.received(*codec.encode(m.ControlLoadTest(SITES, "ft.py", (), "", {"1": ["1"]})))
    clock.advance(1)
    errors = [assert_codec_reads_it_back(codec, o.topic, o.encode()) for o in outs
              if o.app == "Control" and o.payload["payload"]["state"] == "error"]
    assert errors == [m.ControlStatus(s, "error", "soft bin 12 of the test program is "
                                      "missing from the bin table", 1) for s in SITES]
    outs.clear()
    sim.received(*codec.encode(m.ControlReset(SITES)))
    clock.advance(1)
    sim.received(*codec.encode(m.ControlLoadTest(SITES, "ft.py", (), "", BIN_TABLE)))
    clock.advance(1)
    sim.received(*codec.encode(m.TestAppNext(SITES, {"sites_info": []})))
    clock.advance(1)
    crash = [assert_codec_reads_it_back(codec, o.topic, o.encode()) for o in outs
             if o.app == "TestApp" and o.site == "1" and o.kind == "status"]
    assert crash[-1] == m.TestAppStatus("1", "crash")
    for will in (sim_sites.control_will(D, "1"), sim_sites.testapp_will(D, "1")):
        topic, payload, qos = will
        assert qos == 2
        assert codec.decode(topic, payload) in (m.ControlStatus("1", "crash", "", 1),
                                                m.TestAppStatus("1", "crash"))
        assert_codec_reads_it_back(codec, topic, payload)
