"""A broker blip (connection lost, then back) in every phase of the master, with a Clock:
the phase is kept, its timer decides, late messages still complete it (README "Broker
loss"), and a handler's resent ``next`` for the part under test starts nothing."""

from __future__ import annotations

import pytest
from twisted.logger import LogLevel, capturedLogs

from cellharness import LOT, Harness
from tests.stdfread import read_stdf


def warnings(logged) -> list[str]:
    return [e["log_format"] for e in logged if e["log_level"] >= LogLevel.warn]


def acked_part(h: Harness) -> None:
    h.to_testing()
    for s in h.sites:
        h.testapp(s, "testing")
    assert h.cell.status()["internal_state"] == "testing.running"
    h.pub.take()


def test_blip_in_testing_keeps_the_part_and_late_results_complete_it(tmp_path):
    h = Harness(tmp_path, timeouts={"test": 30})
    acked_part(h)
    h.result("0", "P0")  # before the loss
    h.testapp("0", "idle")
    with capturedLogs() as logged:
        h.cell.mqtt_disconnected()
    assert h.state == "testing"
    assert warnings(logged) == ["broker connection lost in {state}; state kept"]
    h.clock.advance(3)
    h.cell.mqtt_connected()
    assert h.statuses(h.pub.take()) == ["testing"]  # re-published on the reconnect
    for s in h.sites:  # the Control apps echo their states: repeats, no-ops
        h.control(s, "busy")
    assert h.state == "testing"
    # the TestApps' queued publishes arrive after the reconnect
    for s in ("1", "2", "3"):
        h.testapp(s, "idle")
        h.result(s, f"P{s}")
    assert h.state == "ready"
    sent = h.pub.take()
    [response] = h.responses(sent)
    assert [e["siteid"] for e in response["payload"]["sites"]] == ["0", "1", "2", "3"]
    assert h.statuses(sent) == ["ready"]
    assert h.cell.lot.parts_tested == 4
    h.clock.advance(100)  # the test timer was cancelled with the part
    assert h.state == "ready"


def test_blip_in_testing_then_test_timeout_names_the_sites_whose_results_never_came(tmp_path):
    h = Harness(tmp_path, timeouts={"test": 7})
    acked_part(h)  # the test timer runs from here
    h.result("0", "P0")
    h.testapp("0", "idle")
    h.clock.advance(2)
    h.cell.mqtt_disconnected()
    h.clock.advance(2)
    h.cell.mqtt_connected()  # the reconnect does not restart the timer
    h.testapp("1", "idle")
    h.result("1", "P1")
    h.clock.advance(2.9)
    assert h.state == "testing"
    h.clock.advance(0.2)
    assert h.state == "softerror"
    assert h.cell.error_message_text == "not all sites completed the active test (missing: 2, 3)"
    # the results that did arrive are in the datalog (protocol.md §3.6)
    recs = read_stdf(h.cell.datalog.path)
    assert sorted(f["SITE_NUM"] for name, f in recs if name == "PRR") == [0, 1]


def test_blip_before_the_acknowledge_the_next_ack_timer_decides(tmp_path):
    h = Harness(tmp_path, timeouts={"next_ack": 5})
    h.to_testing()
    h.testapp("0", "testing")
    h.cell.mqtt_disconnected()
    h.clock.advance(3)
    h.cell.mqtt_connected()
    h.testapp("1", "testing")
    h.clock.advance(2.1)
    assert h.state == "softerror"
    assert h.cell.error_message_text == "not all sites respond to next command (missing: 2, 3)"


def test_blip_before_the_acknowledge_late_statuses_still_start_the_part(tmp_path):
    h = Harness(tmp_path, timeouts={"next_ack": 5})
    h.to_testing()
    h.cell.mqtt_disconnected()
    h.clock.advance(3)
    h.cell.mqtt_connected()
    for s in h.sites:
        h.testapp(s, "testing")
    h.clock.advance(4)  # the next_ack timer was cancelled by the acknowledge
    for s in h.sites:
        h.testapp(s, "idle")
        h.result(s, f"P{s}")
    assert h.state == "ready"


def test_blip_in_loading_keeps_the_load(tmp_path):
    h = Harness(tmp_path)
    h.to_loading()
    for s in h.sites:
        h.control(s, "loading")
    h.testapp("0", "idle")
    h.cell.mqtt_disconnected()
    assert h.state == "loading"
    h.pub.take()
    h.cell.mqtt_connected()
    assert h.statuses(h.pub.take()) == ["loading"]
    for s in h.sites:
        h.control(s, "busy")
    for s in ("1", "2", "3"):
        h.testapp(s, "idle")
    assert h.state == "ready"


def test_blip_in_loading_then_load_timeout_names_the_missing_sites(tmp_path):
    h = Harness(tmp_path, timeouts={"load": 20})
    h.to_loading()
    h.testapp("0", "idle")
    h.cell.mqtt_disconnected()
    h.clock.advance(5)
    h.cell.mqtt_connected()
    h.testapp("2", "idle")
    h.clock.advance(15.1)
    assert h.state == "softerror"
    assert h.cell.error_message_text == "not all sites loaded the testprogram (missing: 1, 3)"


def test_blip_in_unloading_the_control_echo_completes_it(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.run_part()
    h.handler("unload")
    assert h.state == "unloading"
    h.control("0", "idle")
    h.cell.mqtt_disconnected()  # the other sites' idle is lost meanwhile
    assert h.state == "unloading"
    h.pub.take()
    h.cell.mqtt_connected()
    assert h.statuses(h.pub.take()) == ["unloading"]
    for s in h.sites:  # the echo of every Control app's state on the re-published status
        h.control(s, "idle")
    assert h.state == "initialized"
    assert h.cell.datalog.finalised


def test_blip_in_unloading_then_unload_timeout_names_the_missing_sites(tmp_path):
    h = Harness(tmp_path, timeouts={"unload": 9})
    h.to_unloading()
    h.control("3", "idle")
    h.cell.mqtt_disconnected()
    h.clock.advance(4)
    h.cell.mqtt_connected()
    h.clock.advance(5.1)
    assert h.state == "softerror"
    assert h.cell.error_message_text == "not all sites unloaded the testprogram (missing: 0, 1, 2)"


@pytest.mark.parametrize("state", ["connecting", "initialized", "ready", "softerror", "error"])
def test_blip_elsewhere_keeps_the_state_and_republishes_it(tmp_path, state):
    h = Harness(tmp_path)
    getattr(h, f"to_{state}")()
    h.pub.take()
    h.cell.mqtt_disconnected()
    assert h.state == state
    h.cell.mqtt_connected()
    assert h.statuses(h.pub.take()) == [state]


def test_resent_next_for_the_part_under_test_is_no_second_part_and_no_warning(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.pub.take()
    h.next()  # P0..P3
    assert len([t for t, _ in h.pub.take() if t.endswith("TestApp/cmd")]) == 1
    for _when in ("starting", "running"):
        with capturedLogs() as logged:
            h.next()  # the handler's resend after its reconnect
        assert h.state == "testing"
        assert h.pub.take() == []  # no error response, no second TestApp next
        assert warnings(logged) == []
        assert h.cell.metrics.commands_refused == 0
        for s in h.sites:
            h.testapp(s, "testing")
    for s in h.sites:
        h.testapp(s, "idle")
        h.result(s, f"P{s}")
    [response] = h.responses(h.pub.take())
    assert len(response["payload"]["sites"]) == 4
    assert h.cell.lot.parts_tested == 4


def test_a_different_next_while_testing_is_still_refused_busy(tmp_path):
    h = Harness(tmp_path)
    h.to_testing()
    h.pub.take()
    h.handler("next", {"sites": [{"siteid": "0", "partid": "OTHER", "binning": -1}]})
    [err] = h.responses(h.pub.take())
    assert err["response_type"] == "busy" and err["command_type"] == "next"
    h.handler("next")  # no payload: cannot be recognised as a resend
    [err] = h.responses(h.pub.take())
    assert err["response_type"] == "busy"
    assert h.state == "testing"


def test_the_same_next_after_the_part_is_a_retest(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.run_part()
    h.pub.take()
    h.next()  # same sites and part ids, in ready: a new part (retest), not a resend
    assert h.state == "testing"
    assert len([t for t, _ in h.pub.take() if t.endswith("TestApp/cmd")]) == 1


def test_load_after_a_blip_in_initialized(tmp_path):
    h = Harness(tmp_path)
    h.to_initialized()
    h.cell.mqtt_disconnected()
    h.cell.mqtt_connected()
    h.handler("load", {"lot_number": LOT})
    assert h.state == "loading"
