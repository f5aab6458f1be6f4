"""Fuzzing a live master (``twistd -n ate-master``) on the real MQTT link against mosquitto,
and on its websocket and HTTP side.

hypothesis generates the inputs (bounded: a fixed number of examples, no deadline; the seed
is ``ATE_FUZZ_SEED``, default 0, so a failure is reproducible); the checks run against the
live cell afterwards: no critical line, traceback or unhandled error in the master's log,
``get-state`` answered after every batch, the real lot that follows completes with the
simulator's bins, and every STDF file the run leaves is read whole by pystdf and by our
strict reader.  ``bench/fuzz.py`` runs the same for longer.
"""

from __future__ import annotations

import json
import os

import pytest_twisted

from fuzzharness import (
    SITES,
    FuzzReport,
    LiveCell,
    WsClient,
    check_all_stdf,
    fuzz_mqtt,
    fuzz_web,
    http_call,
    plan,
    web_plan,
)

SEED = int(os.environ.get("ATE_FUZZ_SEED", "0"))


async def _fuzz(reactor, broker, tmp_path, run, steps, *, lots: int) -> FuzzReport:
    """Start a live cell, run one lot, ``run`` the steps, stop; every check of the run."""
    cell = LiveCell(reactor, broker, str(tmp_path))
    report = FuzzReport()
    await cell.start()
    try:
        await cell.run_lot(2)  # the cell works before it is fuzzed
        await run(cell, steps, report, lot_every=4, dump=str(tmp_path / "findings"))
    finally:
        code = await cell.stop()
    check_all_stdf(cell.master.stdf_directory, report)
    print(report.summary())
    assert not report.findings, (
        f"{report.summary()} (seed {SEED})\n\n"
        + "\n\n".join(f.describe() for f in report.findings[:10]))
    assert cell.master.output_problems() == []
    assert report.lots >= lots
    assert code == 0, cell.master.output.decode("utf-8", "replace")[-3000:]
    return report


@pytest_twisted.ensureDeferred
async def test_mqtt_fuzz_every_topic_in_every_state(reactor, broker, tmp_path):
    """Batches of 40 messages on every subscribed topic (protocol.md §1.2), each from the
    next of eight states, 36 rounds; a real lot after every fourth batch."""
    steps = plan(rounds=36, size=40, seed=SEED)
    await _fuzz(reactor, broker, tmp_path, fuzz_mqtt, steps, lots=len(steps) // 4)


@pytest_twisted.ensureDeferred
async def test_web_fuzz_websocket_frames_and_http_bodies(reactor, broker, tmp_path):
    """Websocket frames (oversized, binary, invalid UTF-8, reserved opcodes, unknown
    types and commands) and HTTP requests with hostile bodies on every route (§11)."""
    steps = web_plan(rounds=10, frames=15, requests=10, seed=SEED)
    await _fuzz(reactor, broker, tmp_path, fuzz_web, steps, lots=len(steps) // 4)


@pytest_twisted.ensureDeferred
async def test_io_control_request_naming_a_bad_topic_leaves_the_master_online(
        reactor, broker, tmp_path):
    """A periphery_type with a control character must not become a topic: mosquitto drops
    a client that publishes one, and again at every resend of that QoS 2 message after
    the reconnect (found by the fuzz test, seed 0)."""
    cell = LiveCell(reactor, broker, str(tmp_path))
    await cell.start()
    try:
        await cell.enter("testing")
        request = json.dumps({"type": "io-control-request", "periphery_type": "Temp\x01",
                              "ioctl_name": "set_temperature", "parameters": {}}).encode()
        for site in SITES:
            await cell.publish(cell.topic(f"TestApp/io-control/site{site}/request"), request)
        await cell.get_state(timeout=5)
        await cell.settle()
        lot = await cell.run_lot(1)
        assert not lot.problems
        assert not cell.master.new_log_problems()
    finally:
        await cell.stop()



@pytest_twisted.ensureDeferred
async def test_log_file_view_with_a_lone_surrogate_in_the_log(reactor, broker, tmp_path):
    cell = LiveCell(reactor, broker, str(tmp_path))
    await cell.start()
    try:
        await cell.publish(cell.topic("TestApp/log/site0"),
                           b'{"type":"log","payload":"testapp 0|x|ERROR|bad \\ud800 text"}')
        await cell.get_state()
        code, body = await http_call(reactor, cell.master.web_port, "GET",
                                     "/api/v1/logs/file", {}, b"")
        assert code == 200, body[:300]
        assert "bad" in json.loads(body)["content"]
        ws = WsClient(reactor, cell.master.web_port)
        reply = ws.wait(lambda m: m.get("type") == "logfile")
        await ws.send("text", b'{"type":"cmd","command":"getlogfile"}')
        await reply
        ws.close()
        assert cell.master.new_log_problems() == []
    finally:
        await cell.stop()
