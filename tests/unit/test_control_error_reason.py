"""A Control app that reports ``error`` with an empty ``error_message`` (as the Semi-ATE
Control app does when the program file is missing) and puts the reason on its log topic:
the softerror names the site and that reason, whichever of the two comes first."""

from __future__ import annotations

from cellharness import Harness

REASON = "Test program could not be found: /jobs/missing.py"


def log(h: Harness, site: str, level: str, text: str) -> None:
    h.mqtt(f"Control/log/site{site}",
           {"type": "log", "payload": f"control  |2026-12-01 10:00:00 |{level:<7} |{text}"})


def test_reason_logged_before_the_error_status(tmp_path):
    h = Harness(tmp_path)
    h.to_loading()
    log(h, "1", "INFO", "test_program parameters: {...}")
    log(h, "1", "ERROR", REASON)
    h.control("1", "error")
    log(h, "1", "INFO", "control state is: error")  # not a reason
    assert h.state == "softerror"
    assert h.cell.error_message_text == f"site 1: control app reported error: {REASON}"


def test_reason_logged_after_the_error_status_completes_the_message(tmp_path):
    h = Harness(tmp_path)
    h.to_loading()
    h.pub.take()
    h.control("1", "error")
    assert h.cell.error_message_text == "site 1: control app reported error"
    log(h, "1", "INFO", "control state is: error")
    log(h, "1", "ERROR", REASON)
    assert h.cell.error_message_text == f"site 1: control app reported error: {REASON}"
    statuses = [p for t, p in h.pub.take() if t.endswith("Master/status")]
    assert statuses[-1]["payload"] == {
        "state": "softerror", "message": f"site 1: control app reported error: {REASON}"}
    assert h.cell.tracker.states()["1"]["error_message"] == REASON


def test_a_reason_from_an_earlier_load_is_not_reused(tmp_path):
    h = Harness(tmp_path)
    h.to_initialized()
    log(h, "1", "ERROR", "something from long ago")
    h.handler("load", {"lot_number": "306426.001"})
    h.control("1", "error")
    assert h.cell.error_message_text == "site 1: control app reported error"


def test_a_given_error_message_wins(tmp_path):
    h = Harness(tmp_path)
    h.to_loading()
    log(h, "1", "ERROR", REASON)
    h.mqtt("Control/status/site1", {"type": "status", "interface_version": 1,
                                    "payload": {"state": "error", "error_message": "own"}})
    assert h.cell.error_message_text == "site 1: control app reported error: own"


def test_relayed_remote_lines_log_under_ate_remote(tmp_path):
    from twisted.logger import globalLogPublisher

    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        h = Harness(tmp_path)
        h.to_initialized()
        log(h, "1", "INFO", "hello from the control app")
    finally:
        globalLogPublisher.removeObserver(seen.append)
    [event] = [e for e in seen if e.get("ate_text", "").endswith("hello from the control app")]
    assert event["log_namespace"] == "ate.remote"
