"""The master lifecycle with fake peers and a Clock: every state × every handler command,
phase events, timeouts, crashes and bad input (protocol.md §3, §4)."""

from __future__ import annotations

import os

import pytest

from cellharness import DEVICE, LOT, Harness

STATES = ["connecting", "initialized", "loading", "ready", "testing", "unloading",
          "softerror", "error"]

# protocol.md §4.3: None = accepted
MATRIX = {
    "load": {"connecting": "error", "initialized": None, "loading": "busy", "ready": "havelot",
             "testing": "busy", "unloading": "busy", "softerror": "error", "error": "error"},
    "next": {"connecting": "error", "initialized": "notlot", "loading": "busy", "ready": None,
             "testing": "busy", "unloading": "busy", "softerror": "error", "error": "error"},
    "unload": {"connecting": "error", "initialized": "notlot", "loading": "busy", "ready": None,
               "testing": "busy", "unloading": "busy", "softerror": "error", "error": "error"},
    "reset": {"connecting": None, "initialized": None, "loading": "busy", "ready": "havelot",
              "testing": "busy", "unloading": "busy", "softerror": None, "error": None},
    "site-layout": {"connecting": None, "initialized": None, "loading": "busy",
                    "ready": "havelot", "testing": "busy", "unloading": "busy",
                    "softerror": None, "error": None},
}

PAYLOADS = {"load": {"lot_number": LOT}, "next": None, "unload": {}, "reset": {},
            "site-layout": {"sites": [[0, 0], [1, 0], [0, 1], [1, 1]]}}

AFTER_ACCEPT = {"load": "loading", "next": "testing", "unload": "unloading",
                "reset": "connecting", "site-layout": None}


def reach(h: Harness, state: str) -> None:
    getattr(h, f"to_{state}")()
    h.pub.take()


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("command", sorted(MATRIX))
def test_acceptance_matrix(tmp_path, state, command):
    h = Harness(tmp_path)
    reach(h, state)
    h.handler(command, PAYLOADS[command])
    expected = MATRIX[command][state]
    sent = h.pub.take()
    errors = [p for p in h.responses(sent) if p["type"] == "error"]
    if expected is None:
        assert errors == []
        target = AFTER_ACCEPT[command] or state
        assert h.state == target
    else:
        assert h.state == state
        assert len(errors) == 1, sent
        err = errors[0]
        assert err["command_type"] == command
        assert err["response_type"] == expected
        assert err["state"] == state
        assert err["payload"]["state"] == state
        assert isinstance(err["payload"]["message"], str) and err["payload"]["message"]
        if expected == "error":
            assert err["message"] == err["payload"]["message"]
        else:
            assert err["message"] is None
        # a refusal changes nothing: no status, no site command
        assert [t for t, _ in sent if not t.endswith("/Master/response")] == []


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("command,key", [("identify", "name"), ("get-state", "state"),
                                         ("get-host", "host")])
def test_queries_answer_in_every_state(tmp_path, state, command, key):
    h = Harness(tmp_path)
    reach(h, state)
    h.handler(command, {})
    [resp] = h.responses(h.pub.take())
    assert resp["type"] == command
    if command == "identify":
        assert resp["payload"] == {"name": DEVICE}
    elif command == "get-state":
        assert resp["payload"]["state"] == state
        assert isinstance(resp["payload"]["message"], str)
    else:
        assert resp["payload"] == {"host": "127.0.0.1", "port": 8081}
    assert h.state == state


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("bad", [b"not json", b"[1,2]", b'{"type": 5}', b'{"type":"fly"}',
                                 b'{"type":"load","payload":{}}',
                                 b'{"type":"next","payload":{"sites":[{"siteid":"9"}]}}',
                                 b'{"type":"next","payload":{"sites":[{"siteid":"0"},{"siteid":"0"}]}}',
                                 b'{"type":"next","payload":{"sites":[]}}'])
def test_bad_commands_change_nothing(tmp_path, state, bad):
    h = Harness(tmp_path)
    reach(h, state)
    before = h.cell.status()
    h.mqtt("Master/cmd", bad)
    sent = h.pub.take()
    assert h.state == state
    assert [t for t, _ in sent if not t.endswith("/Master/response")] == []
    resps = h.responses(sent)
    if bad in (b"not json", b"[1,2]", b'{"type": 5}'):
        assert resps == []  # nothing to answer: the command type is unknown
    else:
        [err] = resps
        assert err["type"] == "error" and err["response_type"] == "error"
        assert err["message"]
    after = h.cell.status()
    assert after["state"] == before["state"]
    assert after["lot_number"] == before["lot_number"]


def test_startup_resets_then_publishes_connecting(tmp_path):
    h = Harness(tmp_path)
    h.cell.mqtt_connected()
    sent = h.pub.take()
    assert [t.split("/", 2)[2] for t, _ in sent] == ["Control/cmd", "TestApp/cmd", "Master/status"]
    assert sent[2][1] == {"type": "status", "interface_version": 1, "state": "connecting",
                          "payload": {"state": "connecting", "message": ""}}
    assert sent[0][1]["command"] == "reset" and sent[0][1]["sites"] == ["0", "1", "2", "3"]
    for s in ("0", "1", "2"):
        h.control(s, "idle")
    assert h.state == "connecting"
    h.control("3", "idle")
    assert h.state == "initialized"
    assert h.statuses(h.pub.take()) == ["initialized"]


def test_sites_up_before_master_and_resetting_tolerated(tmp_path):
    h = Harness(tmp_path)
    h.to_initialized()
    h.pub.take()
    # the Control apps answer the master's start-up reset after it reached initialized
    # (their idle sent on connecting reached the master before the reset reached them)
    for s in h.sites:
        h.control(s, "resetting")
    assert h.state == "initialized"
    # a load now is accepted; its loadTest waits until every site is idle again
    h.handler("load", {"lot_number": LOT})
    assert h.state == "loading"
    sent = h.pub.take()
    assert [t.split("/", 2)[2] for t, _ in sent] == ["Master/status"]
    for s in h.sites[:-1]:
        h.control(s, "idle")
        assert h.pub.take() == []
    h.control(h.sites[-1], "idle")
    [(topic, load)] = h.pub.take()
    assert topic.endswith("/Control/cmd") and load["command"] == "loadTest"
    assert load["sites"] == list(h.sites)
    # the load goes on as usual
    for s in h.sites:
        h.control(s, "loading")
        h.control(s, "busy")
        h.testapp(s, "idle")
    assert h.state == "ready"


def test_a_held_load_times_out_and_a_reset_drops_it(tmp_path):
    h = Harness(tmp_path)
    h.to_initialized()
    h.control(h.sites[0], "resetting")
    h.handler("load", {"lot_number": LOT})
    assert h.state == "loading"
    # the site never gets idle: the load timer decides, as for any load
    h.clock.advance(h.config.timeouts.load)
    assert h.state == "softerror"
    assert h.cell.status()["error_message"].startswith("not all sites loaded the testprogram")
    h.handler("reset")
    assert h.state == "connecting"
    h.pub.take()
    for s in h.sites:
        h.control(s, "idle")
    # the held loadTest never goes out after the reset
    assert not [p for t, p in h.pub.take() if t.endswith("/Control/cmd")]
    assert h.state == "initialized"


def test_full_lot_wire_sequence(tmp_path):
    h = Harness(tmp_path)
    h.to_initialized()
    h.pub.take()
    h.handler("load", {"lot_number": LOT})
    sent = h.pub.take()
    assert [t.split("/", 2)[2] for t, _ in sent] == ["Control/cmd", "Master/status"]
    load = sent[0][1]
    assert load["command"] == "loadTest"
    assert load["testapp_params"] == {
        "testapp_script_path": "hallsens2_ft1.py", "testapp_script_args": ["--verbose"],
        "cwd": "programs/HALLSENS2/rev1.3",
        "bin_table": {"1": ["1"], "2": ["2"], "5": ["12", "13"], "6": ["20", "21"],
                      "0": ["60000"]}}
    for s in h.sites:
        h.control(s, "loading")
        h.control(s, "busy")
    for s in h.sites:
        h.testapp(s, "idle")
    sent = h.pub.take()
    kinds = [(t.split("/", 2)[2], p.get("command", p.get("state"))) for t, p in sent]
    assert kinds == [("TestApp/cmd", "setloglevel"), ("Control/cmd", "setloglevel"),
                     ("TestApp/cmd", "getexecutionstrategy"), ("Master/status", "ready")]
    # a subset, out of order: the response follows the request order
    h.handler("next", {"sites": [{"siteid": "2", "partid": "A"}, {"siteid": 0, "partid": "B"}]})
    sent = h.pub.take()
    assert sent[0][1]["command"] == "next" and sent[0][1]["sites"] == ["0", "2"]
    assert sent[0][1]["job_data"]["sites_info"] == [  # binning: the default (§4.5)
        {"siteid": "2", "partid": "A", "binning": -1},
        {"siteid": "0", "partid": "B", "binning": -1}]
    assert set(sent[0][1]["job_data"]) >= {"stop_on_fail", "single_step", "sites_info"}
    assert h.statuses(sent) == ["testing"]
    h.testapp("0", "testing")
    h.testapp("2", "testing")
    h.testapp("0", "idle")
    h.result("0", "B", 12, 5)
    h.result("2", "A", 1, 1)
    assert h.state == "testing"  # site 2 not idle yet
    h.testapp("2", "idle")
    sent = h.pub.take()
    assert [t.split("/", 2)[2] for t, _ in sent] == ["Master/response", "Master/status"]
    assert sent[0][1] == {"type": "next", "payload": {"sites": [
        {"siteid": "2", "partid": "A", "binning": 1, "logflag": 0, "additionalinfo": 0},
        {"siteid": "0", "partid": "B", "binning": 5, "logflag": 0, "additionalinfo": 0}]}}
    assert h.state == "ready"
    # no payload: every configured site, generated part ids
    h.handler("next")
    [(topic, cmd)] = [x for x in h.pub.take() if x[0].endswith("TestApp/cmd")]
    assert [i["siteid"] for i in cmd["job_data"]["sites_info"]] == ["0", "1", "2", "3"]
    for s in h.sites:
        h.testapp(s, "testing")
        h.result(s, "")
        h.testapp(s, "idle")
    resp = h.responses(h.pub.take())[0]
    # PRR PART_ID empty: the requested partid is used
    assert [e["partid"] for e in resp["payload"]["sites"]] == [
        i["partid"] for i in cmd["job_data"]["sites_info"]]
    h.handler("unload")
    sent = h.pub.take()
    assert sent[0][1]["command"] == "terminate" and h.statuses(sent) == ["unloading"]
    for s in h.sites:
        h.mqtt(f"TestApp/testsummary/site{s}", {"type": "testresult", "payload": [
            {"type": "TSR", "HEAD_NUM": 0, "SITE_NUM": int(s), "TEST_TYP": "P",
             "TEST_NUM": 1000, "EXEC_CNT": 2, "FAIL_CNT": 0, "ALRM_CNT": 0,
             "TEST_NAM": "offset", "SEQ_NAME": "", "TEST_LBL": "", "OPT_FLAG": 0,
             "TEST_TIM": 0.1, "TEST_MIN": 0.1, "TEST_MAX": 0.9, "TST_SUMS": 1.0,
             "TST_SQRS": 0.5}]})
        h.testapp(s, "terminated")
        h.control(s, "idle")
    assert h.state == "initialized"
    datalog = h.cell.datalog
    assert datalog is not None and datalog.finalised and os.path.exists(datalog.path)
    assert h.cell.lot.parts_tested == 6


def test_retest_and_second_lot(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.run_part(part_prefix="X")
    h.run_part(part_prefix="X", bins={"0": (12, 5)})  # same part ids: retest
    assert h.state == "ready"
    yields = {(y["name"], y["siteid"]): y["count"] for y in h.cell.lot.yields()}
    assert yields[("sum", "-1")] == 4  # retests replace
    assert yields[("BT_FAIL_CONT", "0")] == 1
    h.handler("unload")
    for s in h.sites:
        h.control(s, "idle")
    assert h.state == "initialized"
    first = h.cell.datalog.path
    h.handler("load", {"lot_number": LOT})
    assert h.state == "loading"
    assert h.cell.datalog.path != first and os.path.exists(first)


@pytest.mark.parametrize("phase,drive,text", [
    ("startup", lambda h: (h.cell.mqtt_connected(), h.control("0", "idle")),
     "not all sites connected (missing: 1, 2, 3)"),
    ("load", lambda h: (h.to_loading(), h.testapp("0", "idle"), h.testapp("2", "idle")),
     "not all sites loaded the testprogram (missing: 1, 3)"),
    ("next_ack", lambda h: (h.to_testing(), h.testapp("0", "testing")),
     "not all sites respond to next command (missing: 1, 2, 3)"),
    ("test", lambda h: (h.to_testing(), [h.testapp(s, "testing") for s in h.sites],
                        h.testapp("0", "idle"), h.result("0", "P0")),
     "not all sites completed the active test (missing: 1, 2, 3)"),
    ("unload", lambda h: (h.to_unloading(), h.control("1", "idle")),
     "not all sites unloaded the testprogram (missing: 0, 2, 3)"),
    ("reset", lambda h: (h.to_softerror(), h.handler("reset"), h.control("3", "idle")),
     "not all sites do report state idle after reset (missing: 0, 1, 2)"),
])
def test_timeouts(tmp_path, phase, drive, text):
    h = Harness(tmp_path, timeouts={phase: 7})
    drive(h)
    state = h.state
    h.clock.advance(6.9)
    assert h.state == state
    h.clock.advance(0.2)
    assert h.state == "softerror"
    assert h.cell.error_message_text == text
    sent = h.pub.take()
    assert sent[-1][1]["payload"] == {"state": "softerror", "message": text}


def test_timeouts_disabled(tmp_path):
    h = Harness(tmp_path, enable_timeouts=False)
    h.to_testing()
    h.clock.advance(10_000)
    assert h.state == "testing"


def test_timer_cancelled_on_exit(tmp_path):
    h = Harness(tmp_path, timeouts={"test": 5, "next_ack": 5})
    h.to_ready()
    h.run_part()
    assert h.state == "ready"
    h.clock.advance(100)
    assert h.state == "ready"


@pytest.mark.parametrize("drive,text", [
    (lambda h: (h.to_ready(), h.testapp("1", "crash")), "testapp 1 crashed"),
    (lambda h: (h.to_ready(), h.control("2", "crash")), "control 2 crashed"),
    (lambda h: (h.to_testing(), h.testapp("3", "crash")), "testapp 3 crashed"),
    (lambda h: (h.to_initialized(), h.control("0", "busy")), "site 0: control went to busy"),
    (lambda h: (h.to_loading(), h.testapp("1", "terminated")),
     "site 1: testapp went to terminated"),
    (lambda h: (h.to_testing(), h.testapp("0", "terminated")),
     "site 0: testapp went to terminated"),
    (lambda h: (h.to_ready(), h.control("1", "idle", version=7)),
     "site 1: Control interface version 7 not supported"),
])
def test_site_faults_go_to_softerror(tmp_path, drive, text):
    h = Harness(tmp_path)
    drive(h)
    assert h.state == "softerror"
    assert h.cell.error_message_text.startswith(text)


def test_interface_version_in_connecting_is_fatal(tmp_path):
    h = Harness(tmp_path)
    h.to_error()
    assert "interface version 2" in h.cell.error_message_text
    h.handler("reset")
    assert h.state == "connecting"


def test_testapp_will_with_integer_state_is_a_crash(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.mqtt("TestApp/status/site2", {"type": "status", "framework_version": 1,
                                    "test_version": "N/A", "payload": {"state": 0},
                                    "state": "crash"})
    assert h.state == "softerror" and "testapp 2 crashed" in h.cell.error_message_text


def test_unexpected_duplicate_and_wrong_site_results(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.result("0", "EARLY")  # not testing
    assert h.state == "ready"
    h.handler("next", {"sites": [{"siteid": "0", "partid": "A"}, {"siteid": "1", "partid": "B"}]})
    h.testapp("0", "testing")
    h.result("0", "A")
    h.result("0", "A")  # duplicate
    h.result("2", "C")  # not tested
    h.testapp("0", "idle")
    h.testapp("1", "testing")
    h.result("1", "B")
    h.testapp("1", "idle")
    assert h.state == "ready"
    m = h.cell.metrics
    assert m.unexpected_results == 2 and m.duplicate_results == 1
    assert h.cell.lot.parts_tested == 2
    [resp] = [r for r in h.responses() if r["type"] == "next"]
    assert [e["partid"] for e in resp["payload"]["sites"]] == ["A", "B"]


def test_unknown_soft_bin_is_recorded_then_softerror(tmp_path):
    h = Harness(tmp_path)
    h.to_testing(sites=["0"])
    h.testapp("0", "testing")
    h.testapp("0", "idle")
    h.result("0", "P0", soft_bin=77, hard_bin=9)
    assert h.state == "softerror"
    assert "soft bin 77 is not in the job's bin table" in h.cell.error_message_text
    assert [r for r in h.responses() if r["type"] == "next"] == []
    assert h.cell.lot.parts_tested == 1 and not h.cell.datalog.finalised
    h.handler("reset")
    assert h.cell.datalog.finalised


def test_malformed_result_of_tested_site(tmp_path):
    h = Harness(tmp_path)
    h.to_testing(sites=["0"])
    h.mqtt("TestApp/testresult/site0", {"type": "testresult", "payload": [{"type": "PIR"}]})
    assert h.state == "softerror"
    assert "site 0 sent a malformed test result" in h.cell.error_message_text


def test_unconfigured_site_messages_are_ignored(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.control("9", "crash")
    h.testapp("9", "testing")
    assert h.state == "ready"
    assert h.cell.metrics.protocol_errors["site-not-configured"] == 2


def test_reset_from_softerror_finalises_and_resyncs(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.run_part()
    h.testapp("1", "crash")
    assert h.state == "softerror" and not h.cell.datalog.finalised
    h.pub.take()
    h.handler("reset")
    assert h.cell.datalog.finalised
    sent = h.pub.take()
    assert [t.split("/", 2)[2] for t, _ in sent] == ["Control/cmd", "TestApp/cmd", "Master/status"]
    # stale idle echoes before the reset took effect: preset to resetting, so idle counts
    for s in h.sites:
        h.control(s, "resetting")
    for s in h.sites:
        h.control(s, "idle")
    assert h.state == "initialized"
    assert h.cell.error_message_text == ""


def test_broker_loss(tmp_path):
    h = Harness(tmp_path)
    h.to_initialized()
    h.pub.take()
    h.cell.mqtt_disconnected()
    assert h.state == "initialized"
    h.cell.mqtt_connected()
    assert h.statuses(h.pub.take()) == ["initialized"]  # re-published
    h.handler("load", {"lot_number": LOT})
    h.cell.mqtt_disconnected()
    assert h.state == "loading"  # kept; the load timer decides (test_master_broker_loss.py)


def test_handler_connecting_republishes_external_state(tmp_path):
    h = Harness(tmp_path)
    h.to_testing()
    h.pub.take()
    h.mqtt("../HTO92-20F/Handler/status".replace("../", ""), {})  # wrong topic, ignored
    h.router.received("ate/HTO92-20F/Handler/status",
                      b'{"type":"status","payload":{"state":"connecting","message":""}}')
    assert h.statuses(h.pub.take()) == ["testing"]


def test_invalid_job_is_refused_and_state_kept(tmp_path):
    h = Harness(tmp_path)
    h.to_initialized()
    h.pub.take()
    h.handler("load", {"lot_number": "999999.001"})
    [err] = h.responses(h.pub.take())
    assert err["response_type"] == "error"
    assert "not found" in err["message"] and "le999999.001.xml" in err["message"]
    assert h.state == "initialized"
    assert h.cell.status()["lot_number"] == ""
    h.handler("load", {"lot_number": "../../etc/passwd"})
    [err] = h.responses(h.pub.take())
    assert err["response_type"] == "error" and h.state == "initialized"


def test_execution_strategy_mismatch(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    good = {"type": "execution_strategy", "payload": [[["0", "1", "2", "3"]]]}
    for s in ("0", "1", "2"):
        h.mqtt(f"TestApp/execution_strategy/site{s}", good)
    h.mqtt("TestApp/execution_strategy/site3",
           {"type": "execution_strategy", "payload": [[["0", "1"]]]})
    assert h.state == "softerror"
    assert h.cell.error_message_text.startswith("execution strategy mismatch")


def test_execution_strategy_good(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    for s in h.sites:
        h.mqtt(f"TestApp/execution_strategy/site{s}",
               {"type": "execution_strategy", "payload": [[["0", "1", "2", "3"]]]})
    assert h.state == "ready"


def test_stop_finalises_and_publishes_crash(tmp_path):
    h = Harness(tmp_path)
    h.to_testing()
    h.testapp("0", "testing")
    h.result("0", "P0")
    h.pub.take()
    h.cell.stop()
    sent = h.pub.take()
    assert sent[-1][1]["payload"] == {"state": "crash", "message": "master stopped"}
    assert h.cell.datalog.finalised
    h.handler("load", {"lot_number": LOT})
    [err] = h.responses(h.pub.take())
    assert err["response_type"] == "error"


def test_io_control_round_trip_and_timeout(tmp_path):
    h = Harness(tmp_path, timeouts={"ioctl": 5})
    h.to_testing(sites=["0", "1"])
    h.testapp("0", "testing")
    h.testapp("1", "testing")
    req = {"type": "io-control-request", "periphery_type": "Temperature",
           "ioctl_name": "set_temperature", "parameters": {"temperature": [25], "timeout": 5}}
    h.mqtt("TestApp/io-control/site0/request", req)
    assert not [t for t, _ in h.pub.sent if "io-control" in t]
    h.mqtt("TestApp/io-control/site1/request", req)
    [(topic, fwd)] = [x for x in h.pub.take() if "io-control" in x[0]]
    assert topic == f"ate/{DEVICE}/Temperature/io-control/request"
    assert fwd["ioctl_name"] == "set_temperature"
    answer = {"type": "io-control-response", "ioctl_name": "set_temperature",
              "result": {"status": "ok"}}
    h.mqtt("Temperature/io-control/response", answer)
    [(topic, relay)] = h.pub.take()
    assert topic == f"ate/{DEVICE}/Master/Temperature/response" and relay == answer
    assert h.state == "testing"
    h.mqtt("TestApp/io-control/site0/request", req)
    h.mqtt("TestApp/io-control/site1/request", req)
    h.pub.take()
    h.clock.advance(5.1)
    assert h.state == "softerror"
    assert h.cell.error_message_text == "Failed to control resource Temperature. Reason: Timeout."


def test_site_restart_while_connecting(tmp_path):
    h = Harness(tmp_path)
    h.cell.mqtt_connected()
    h.control("0", "idle")
    h.control("1", "idle")
    h.control("0", "crash")  # site 0 restarts while the master waits
    h.control("2", "idle")
    h.control("3", "idle")
    assert h.state == "connecting"
    h.control("0", "idle")
    assert h.state == "initialized"


def test_crash_in_unloading_after_summary_is_expected(tmp_path):
    h = Harness(tmp_path)
    h.to_unloading()
    h.testapp("0", "terminated")
    h.testapp("0", "crash")
    assert h.state == "unloading"
    h.control("0", "error")
    assert h.state == "softerror"


def test_bad_record_is_counted_and_the_lot_goes_on(tmp_path):
    h = Harness(tmp_path)
    h.to_testing(sites=["0"])
    h.testapp("0", "testing")
    h.testapp("0", "idle")
    bad = {"type": "testresult", "payload": [
        {"type": "PIR", "HEAD_NUM": 0, "SITE_NUM": 0},
        {"type": "PTR", "TEST_NUM": "not a number", "HEAD_NUM": 0, "SITE_NUM": 0,
         "RESULT": 1.0},
        {"type": "XYZ", "HEAD_NUM": 0},
        {"type": "PRR", "HEAD_NUM": 0, "SITE_NUM": 0, "PART_FLG": 0, "NUM_TEST": 1,
         "HARD_BIN": 1, "SOFT_BIN": 1, "X_COORD": 0, "Y_COORD": 0, "TEST_T": 5,
         "PART_ID": "P0"}]}
    h.mqtt("TestApp/testresult/site0", bad)
    assert h.state == "ready"
    # the XYZ record; the bad TEST_NUM is written as missing (a counted fix)
    assert h.cell.metrics.bad_records == 1
    [resp] = [r for r in h.responses() if r["type"] == "next"]
    assert resp["payload"]["sites"][0]["partid"] == "P0"
    h.run_part(sites=["0"])
    assert h.state == "ready" and h.cell.lot.parts_tested == 2


def test_identical_idle_after_reset_still_resyncs(tmp_path):
    """The router skips byte-identical Control echoes only while the master still knows
    that state: after a reset (states preset to resetting) the same idle bytes count."""
    h = Harness(tmp_path)
    h.to_initialized()
    for s in h.sites:
        h.control(s, "idle")  # echoes: skipped
    h.handler("reset")
    assert h.state == "connecting"
    for s in h.sites:
        h.control(s, "idle")  # same bytes as before the reset
    assert h.state == "initialized"


def test_setloglevel_reaches_sites_buffer_and_log_file(tmp_path):
    from ate.master.logs import LogBuffer

    class Writer:
        level = 30

        def set_level(self, level):
            self.level = level

    h = Harness(tmp_path)
    h.cell.logs = LogBuffer(level=30)
    h.cell.log_file = Writer()
    h.to_initialized()
    h.pub.take()
    h.cell.set_loglevel(10)
    sent = h.pub.take()
    assert [(t.split("/", 2)[2], p["level"]) for t, p in sent] == [
        ("TestApp/cmd", 10), ("Control/cmd", 10)]
    assert h.cell.logs.level == 10 and h.cell.log_file.level == 10
    with pytest.raises(ValueError):
        h.cell.set_loglevel(15)
    assert h.cell.loglevel == 10


def test_missing_stdf_directory_is_created_at_load(tmp_path):
    h = Harness(tmp_path, stdf_directory=str(tmp_path / "new" / "stdf"))
    h.to_ready()
    assert os.path.dirname(h.cell.datalog.path) == str(tmp_path / "new" / "stdf")


def test_unwritable_stdf_directory_refuses_the_load(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    h = Harness(tmp_path, stdf_directory=str(blocker / "stdf"))
    h.to_initialized()
    h.pub.take()
    h.handler("load", {"lot_number": LOT})
    [err] = h.responses(h.pub.take())
    assert err["response_type"] == "error" and "cannot create the datalog" in err["message"]
    assert h.state == "initialized"


# -- the machine decides for the web API (issue 12 item 3) --------------------------------


def test_usersettings_and_binmap_refusals_come_from_the_machine(tmp_path):
    from ate.master.cell import CommandRefused

    h = Harness(tmp_path)
    h.to_testing()
    with pytest.raises(CommandRefused) as e:
        h.cell.update_settings([])
    assert (e.value.refusal.response_type, str(e.value)) == (
        "busy", "usersettings refused: not allowed in testing")
    with pytest.raises(CommandRefused) as e:
        h.cell.bin_map(1, 1)
    assert str(e.value) == "binMap refused: allowed in ready only (state testing)"
    assert isinstance(e.value, ValueError)  # the feed's refusal path catches ValueError


def test_http_status_of_real_cell_refusals(tmp_path):
    from ate.protocol import messages as m
    from ate.web.api import http_status_for_refusal

    h = Harness(tmp_path)
    h.to_initialized()
    unknown = h.cell.command(m.Load(lot_number="999999.001"), "api")
    assert (unknown.response_type, http_status_for_refusal(unknown)) == ("error", 400)
    h.to_softerror()
    refused = h.cell.command(m.Load(lot_number=LOT), "api")
    assert (refused.response_type, refused.state, http_status_for_refusal(refused)) == (
        "error", "softerror", 409)


def test_cell_snapshot_is_the_machine_status(tmp_path):
    h = Harness(tmp_path)
    for step in (h.to_testing, lambda: h.testapp("0", "testing")):
        step()
        status, snapshot = h.cell.machine.status(), h.cell.status()
        assert (snapshot["state"], snapshot["internal_state"], snapshot["error_message"]) == (
            status.state, status.internal, status.message)
