"""What the master tells the operator: every external state change with its reason, and
while connecting, every 10 s (the injected clock), which sites it still waits for."""

from __future__ import annotations

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from ate.master.progress import StateLog, WaitingReport, transition_reason, waiting_text
from tests.unit.cellharness import LOT, Harness


@pytest.fixture
def logged():
    """(level, text) of every event of the namespace ate.master logged during the test."""
    events: list[tuple[LogLevel, str]] = []

    def observer(event: dict) -> None:
        if event.get("log_namespace") == "ate.master":
            events.append((event["log_level"], formatEvent(event)))

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def info(events) -> list[str]:
    return [text for level, text in events if level == LogLevel.info]


def test_every_external_state_change_is_one_info_line_with_its_reason(tmp_path, logged):
    h = Harness(tmp_path, loglevel=10)
    h.cell.subscribe(StateLog(h.cell))
    h.to_ready()
    h.run_part()
    h.handler("unload")
    changes = [t for t in info(logged) if t.startswith("state ")]
    assert changes[:4] == [
        "state startup -> connecting: connected to the broker; waiting until every site "
        "reports idle",
        "state connecting -> initialized: every site reports idle",
        f"state initialized -> loading: load of lot {LOT}",
        f"state loading -> ready: lot {LOT} loaded on every site",
    ]
    assert f"state ready -> unloading: unload of lot {LOT}" in changes
    # the two changes of a handler cycle are DEBUG, not INFO
    debug = [t for level, t in logged if level == LogLevel.debug and t.startswith("state ")]
    assert debug == ["state ready -> testing: next part", "state testing -> ready: part done"]
    assert not any("testing" in t for t in changes)


def test_the_cycle_lines_are_not_made_above_debug(tmp_path, logged):
    h = Harness(tmp_path, loglevel=20)
    h.cell.subscribe(StateLog(h.cell))
    h.to_ready()
    h.run_part()
    h.handler("unload")
    assert not [t for level, t in logged if t.startswith("state ready -> testing")]
    assert f"state ready -> unloading: unload of lot {LOT}" in info(logged)


def test_an_error_is_logged_with_the_message_that_caused_it(tmp_path, logged):
    h = Harness(tmp_path)
    h.cell.subscribe(StateLog(h.cell))
    h.to_ready()
    h.testapp("1", "crash")
    assert h.state == "softerror"
    last = [t for t in info(logged) if t.startswith("state ")][-1]
    assert last.startswith("state ready -> softerror: ")
    assert last != "state ready -> softerror: "      # the cell's message is the reason
    assert h.cell.status()["error_message"] in last


def test_a_repeated_status_is_not_logged_again(logged):
    log = StateLog(cell=None)
    status = {"state": "initialized", "error_message": "", "lot_number": ""}
    log("status", status)
    log("status", status)         # republished after a reconnect: same state
    log("sites", None)
    assert info(logged) == ["state startup -> initialized: sites idle"]


@pytest.mark.parametrize("before,status,reason", [
    ("unloading", {"state": "initialized", "lot_number": "L1"}, "lot L1 unloaded"),
    ("ready", {"state": "initialized", "lot_number": "L1"}, "lot L1 ended"),
    ("error", {"state": "connecting", "error_message": "reset by the handler"},
     "reset by the handler"),
    ("testing", {"state": "stopped", "error_message": "master stopped"}, "master stopped"),
])
def test_transition_reasons(before, status, reason):
    assert transition_reason(before, status) == reason


def test_while_connecting_every_10_s_which_sites_it_waits_for(tmp_path, logged):
    h = Harness(tmp_path)
    report = WaitingReport(h.cell, h.clock, interval=10.0)
    h.cell.subscribe(report)
    report.start()                   # what MasterService.startService does
    h.clock.advance(10)
    assert info(logged) == ["connecting: broker localhost:1883 not connected yet"]
    logged.clear()
    h.cell.mqtt_connected()
    h.control("0", "idle")
    h.control("1", "resetting")
    h.testapp("1", "idle")
    h.clock.advance(9.9)
    assert info(logged) == []        # not before 10 s
    h.clock.advance(0.1)
    (line,) = info(logged)
    assert line.startswith("connecting: waiting for site(s) 1, 2, 3 to report idle; ")
    assert "site 1: Control resetting, TestApp idle" in line
    assert "site 2: nothing received" in line and "site 3: nothing received" in line
    assert "site 0" not in line.split(";", 1)[1]
    logged.clear()
    for s in ("1", "2", "3"):
        h.control(s, "idle")
    assert h.state == "initialized"
    assert not report.running        # stopped when the state left connecting
    h.clock.advance(60)
    assert info(logged) == []


def test_the_report_starts_again_when_the_master_connects_again(tmp_path):
    h = Harness(tmp_path)
    report = WaitingReport(h.cell, h.clock)
    h.cell.subscribe(report)
    h.to_initialized()
    assert not report.running
    h.handler("reset")
    assert h.cell.status()["state"] == "connecting"
    assert report.running
    assert waiting_text(h.cell).startswith("connecting: waiting for site(s) 0, 1, 2, 3")
