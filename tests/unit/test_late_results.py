"""Results that come after a softerror, and execution-strategy answers that come after
``ready`` (protocol §3.6, §3.8, §6.4): what real TestApps do, driven with a Clock."""

from __future__ import annotations

from cellharness import Harness
from tests.stdfread import read_stdf

STRATEGY = {"type": "execution_strategy", "payload": [[["0", "1", "2", "3"]]]}


def prrs(path: str) -> list[dict]:
    return [f for name, f in read_stdf(path) if name.lower() == "prr"]


def test_result_after_a_testapp_crash_is_written(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.run_part(part_prefix="A")
    h.next(sites=["0", "1"])
    h.testapp("0", "testing")
    h.testapp("1", "testing")
    h.testapp("0", "crash")
    assert h.state == "softerror" and "testapp 0 crashed" in h.cell.error_message_text
    h.pub.take()
    h.result("1", "B1", soft_bin=1)  # the other site's result, a moment later
    assert h.state == "softerror"
    assert h.cell.metrics.unexpected_results == 0
    assert h.cell.lot.parts_tested == 4 + 1
    # no next response: the handler learns of the failure from Master/status (§3.6)
    assert [r for r in h.responses(h.pub.take()) if r["type"] == "next"] == []
    # the part was already flushed to disk before the reset: a kill -9 would keep it
    assert [p["PART_ID"] for p in prrs(h.cell.datalog.path)][-1] == "B1"
    h.handler("reset")
    path = h.cell.datalog.path
    assert h.cell.datalog.finalised
    records = read_stdf(path)
    assert records[-1][0].lower() == "mrr"
    assert records[-1][1]["EXC_DESC"] == "aborted: testapp 0 crashed"
    assert [p["PART_ID"] for p in prrs(path)] == ["A0", "A1", "A2", "A3", "B1"]


def test_second_result_after_softerror_is_a_duplicate(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.next(sites=["0", "1"])
    h.testapp("0", "crash")
    h.result("1", "B1")
    h.result("1", "B1")
    assert h.cell.metrics.duplicate_results == 1
    assert h.cell.lot.parts_tested == 1


def test_result_of_a_site_not_tested_after_softerror_is_not_written(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.next(sites=["0", "1"])
    h.testapp("0", "crash")
    h.result("2", "X")
    assert h.cell.metrics.unexpected_results == 1
    assert h.cell.lot.parts_tested == 0


def test_result_after_softerror_in_ready_is_unexpected(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.run_part()
    h.testapp("0", "crash")  # no part under test
    h.result("0", "late")
    assert h.cell.metrics.unexpected_results == 1
    assert h.cell.lot.parts_tested == 4


def test_results_after_test_timeout_are_written(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.next()
    for s in h.sites:
        h.testapp(s, "testing")
    h.clock.advance(31)
    assert h.state == "softerror"
    for s in h.sites:
        h.result(s, f"T{s}")
    assert h.cell.lot.parts_tested == 4
    h.handler("reset")
    assert [p["PART_ID"] for p in prrs(h.cell.datalog.path)] == ["T0", "T1", "T2", "T3"]


def test_late_strategy_answers_are_checked_while_testing(tmp_path, warnings_logged):
    h = Harness(tmp_path)
    h.to_ready()
    h.next()  # the handler's first next went out before the answers came
    assert h.state == "testing"
    for s in h.sites:
        h.mqtt(f"TestApp/execution_strategy/site{s}",
               {"type": "execution_strategy", "payload": [[["0", "1"]]]})
    assert h.state == "softerror"
    assert h.cell.error_message_text.startswith("execution strategy mismatch")
    assert "test 0 covers sites ['0', '1']" in h.cell.error_message_text


def test_late_strategy_answers_in_a_healthy_lot_log_no_warning(tmp_path, warnings_logged):
    h = Harness(tmp_path)
    h.to_ready()
    h.next()
    for s in h.sites:
        h.testapp(s, "testing")
        h.mqtt(f"TestApp/execution_strategy/site{s}", STRATEGY)
    for s in h.sites:
        h.testapp(s, "idle")
        h.result(s, f"P{s}")
    assert h.state == "ready"
    # a second answer from one site for the same load: ignored (debug)
    h.mqtt("TestApp/execution_strategy/site0", STRATEGY)
    h.run_part(part_prefix="Q")
    assert h.state == "ready"
    assert warnings_logged == []


def test_strategy_mismatch_after_some_parts(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.run_part()
    h.run_part(part_prefix="Q")
    for s in ("0", "1", "2"):
        h.mqtt(f"TestApp/execution_strategy/site{s}", STRATEGY)
    assert h.state == "ready"
    h.mqtt("TestApp/execution_strategy/site3",
           {"type": "execution_strategy", "payload": [[["0", "1", "2", "3"]], [["0"]]]})
    assert h.state == "softerror"
    assert "sites disagree" in h.cell.error_message_text


def test_strategy_outside_a_lot_is_ignored(tmp_path, warnings_logged):
    h = Harness(tmp_path)
    h.to_initialized()
    bad = {"type": "execution_strategy", "payload": [[["0"]]]}
    for s in h.sites:
        h.mqtt(f"TestApp/execution_strategy/site{s}", bad)
    assert h.state == "initialized"
    h.to_ready()
    # answers of the previous lot do not count for this one: three bad ones before the
    # load are forgotten, four good ones after it pass
    for s in h.sites:
        h.mqtt(f"TestApp/execution_strategy/site{s}", STRATEGY)
    assert h.state == "ready"
    h.handler("unload")
    for s in h.sites:
        h.mqtt(f"TestApp/execution_strategy/site{s}", bad)  # during unloading: ignored
    for s in h.sites:
        h.mqtt(f"TestApp/testsummary/site{s}", summary(s))
        h.control(s, "idle")
    assert h.state == "initialized"
    assert warnings_logged == []


def summary(site: str) -> dict:
    return {"type": "testresult", "payload": [
        {"type": "TSR", "HEAD_NUM": 0, "SITE_NUM": int(site), "TEST_TYP": "P",
         "TEST_NUM": 1000, "EXEC_CNT": 2, "FAIL_CNT": 0, "TEST_NAM": "offset"}]}


def test_second_summary_of_a_site_is_ignored_and_missing_ones_are_named(tmp_path,
                                                                         warnings_logged):
    h = Harness(tmp_path)
    h.to_ready()
    h.run_part()
    h.handler("unload")
    h.mqtt("TestApp/testsummary/site0", summary("0"))
    h.mqtt("TestApp/testsummary/site0", summary("0"))
    h.mqtt("TestApp/testsummary/site1", summary("1"))
    for s in h.sites:
        h.control(s, "idle")
    assert h.state == "initialized"
    assert warnings_logged == [
        "second test summary from site 0 ignored",
        "datalog finalised without the test summary of site(s) 2, 3 "
        "(their TSRs are missing from the footer)"]
    tsrs = [f for name, f in read_stdf(h.cell.datalog.path)
            if name.lower() == "tsr" and f["HEAD_NUM"] == 0]
    assert [t["SITE_NUM"] for t in tsrs] == [0, 1]


def test_generated_part_id_is_warned_once_per_lot(tmp_path, warnings_logged):
    h = Harness(tmp_path)
    h.to_ready()
    for _ in range(3):
        h.next(sites=["0"])
        h.testapp("0", "testing")
        h.testapp("0", "idle")
        h.mqtt("TestApp/testresult/site0", {"type": "testresult", "payload": [
            {"type": "PIR", "HEAD_NUM": 0, "SITE_NUM": 0},
            {"type": "PRR", "HEAD_NUM": 0, "SITE_NUM": 0, "PART_FLG": 0, "NUM_TEST": 1,
             "HARD_BIN": 1, "SOFT_BIN": 1, "TEST_T": 5}]})
        assert h.state == "ready"
    assert len(warnings_logged) == 1
    assert "PRR has neither PART_ID nor coordinates" in warnings_logged[0]
