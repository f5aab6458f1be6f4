"""The alarms in a real cell (protocol §15.2): what an alarm does, and the hold.

The rules themselves are tested alone in test_alarm_monitor.py; here a real Cell with the
real router, codec and datalog runs parts until a rule fires, and the test checks every
action: the WARNING, ~/Master/alarm, the feed event, the metrics count, the DTR at that
point of the part stream, the refused next while held (state ready, error response,
``held:`` status message), the release (DTR, released alarm, next allowed again) and the
lot summary.
"""

from __future__ import annotations

import json
import os

import pytest

from ate.master.alarming import AlarmError
from ate.web.api import PrometheusMetrics
from tests.integration.test_prometheus_rules import known_metrics, unexposed
from tests.stdfread import pystdf_records
from tests.unit.cellharness import Harness

HOLD = [{"kind": "consecutive_fails", "name": "cf", "count": 3, "action": "hold"}]
NOTIFY = [{"kind": "bin_limit", "name": "opens", "sbin": 12, "max_count": 1, "min_parts": 1}]


def alarms_sent(h: Harness) -> list[dict]:
    return [p["payload"] for t, p in h.pub.sent if t.endswith("/Master/alarm")]


def fail_part(h: Harness, n: int, site: str = "0") -> None:
    """One part on every site; ``site`` fails (soft bin 12), the others pass."""
    h.run_part(part_prefix=f"F{n}-", bins={site: (12, 5)})


def read_stdf(h: Harness) -> list[tuple[str, dict]]:
    path = h.cell.datalog.path
    with open(path, "rb") as fh:
        return pystdf_records(fh.read())


def test_a_hold_alarm_holds_the_lot_until_released(tmp_path, warnings_logged) -> None:
    h = Harness(tmp_path, alarms=HOLD)
    h.to_ready()
    fail_part(h, 1)
    fail_part(h, 2)
    assert alarms_sent(h) == []  # not before the threshold part
    fail_part(h, 3)
    assert h.state == "ready"
    [alarm] = alarms_sent(h)
    assert alarm["name"] == "cf" and alarm["site"] == "0" and alarm["state"] == "raised"
    assert alarm["action"] == "hold" and alarm["lot_number"] == "306426.001"
    assert alarm["parts"] == 9  # site 0's result comes first in part 3: 2 parts on 4 sites + 1
    assert any(k == "alarm" and d["id"] == alarm["id"] for k, d in h.events)
    assert warnings_logged == [f"alarm cf: {alarm['message']}"]  # the one WARNING
    # held: ready, the status message says so, and next is refused with the §15.2 error
    status = [p for t, p in h.pub.sent if t.endswith("/Master/status")][-1]
    assert status["state"] == "ready"
    assert status["payload"]["message"] == f"held: cf: {alarm['message']}"
    assert h.cell.status()["error_message"] == f"held: cf: {alarm['message']}"
    h.pub.take()
    h.next()
    assert h.state == "ready"
    [refusal] = h.responses()
    assert refusal["type"] == "error" and refusal["response_type"] == "error"
    assert refusal["message"] == f"next refused: held by alarm cf: {alarm['message']}"
    h.next()  # a handler that retries: each refusal is an INFO, the alarm was the WARNING
    assert warnings_logged == [f"alarm cf: {alarm['message']}"]
    assert h.cell.metrics.commands_refused >= 1
    # metrics count it and show the hold
    text = PrometheusMetrics(h.cell).render()
    assert 'ate_alarms_total{kind="consecutive_fails",action="hold"} 1\n' in text
    assert "ate_lot_held 1\n" in text
    # release: bad requests change nothing
    with pytest.raises(AlarmError, match="operator: must be a non-empty string"):
        h.cell.release_alarm(alarm["id"], "", "x")
    with pytest.raises(AlarmError, match="no such alarm"):
        h.cell.release_alarm(99, "ana", "x")
    h.pub.take()
    released = h.cell.release_alarm(alarm["id"], "ana", "probe card cleaned")
    assert released["state"] == "released" and released["released_by"] == "ana"
    assert alarms_sent(h)[-1]["state"] == "released"
    status = [p for t, p in h.pub.sent if t.endswith("/Master/status")][-1]
    assert status["state"] == "ready" and status["payload"]["message"] == ""
    with pytest.raises(AlarmError, match="already released"):
        h.cell.release_alarm(alarm["id"], "ana", "again")
    assert "ate_lot_held 0\n" in PrometheusMetrics(h.cell).render()
    # next goes through again; a passing part does not raise it again
    h.run_part(part_prefix="G-")
    assert h.state == "ready" and h.responses()[-1]["type"] == "next"
    # the datalog holds the ALARM DTR after the PRRs of the third part, then the RELEASE
    recs = read_stdf(h)
    stream = [(n, r.get("PART_ID") or r.get("TEXT_DAT")) for n, r in recs
              if n in ("PRR", "DTR")]
    alarm_at = stream.index(("DTR", f"ALARM cf: {alarm['message']}"))
    assert [x for _, x in stream[alarm_at - 4:alarm_at]] == ["F3-0", "F3-1", "F3-2", "F3-3"]
    assert stream[alarm_at + 1] == ("DTR", "RELEASE cf by ana: probe card cleaned")
    assert [x for _, x in stream[alarm_at + 2:]] == ["G-0", "G-1", "G-2", "G-3"]


def test_unload_ends_a_hold_and_the_summary_lists_the_alarms(tmp_path) -> None:
    h = Harness(tmp_path, alarms=HOLD + NOTIFY)
    h.to_ready()
    for n in range(3):
        fail_part(h, n)
    assert {a["name"] for a in alarms_sent(h)} == {"cf", "opens"}
    assert h.cell.alarms.held() is not None
    h.handler("unload")
    for s in h.sites:
        h.control(s, "idle")
    assert h.state == "initialized"
    assert h.cell.alarms.held() is None
    base = os.path.splitext(h.cell.datalog.path)[0]
    with open(base + ".summary.json", encoding="utf-8") as fh:
        summary = json.load(fh)
    assert summary["ended_held"] is True
    assert [a["name"] for a in summary["alarms"]] == ["opens", "cf"]  # part 2, part 3
    assert summary["production"]["cycles"] == 3
    with open(base + ".summary.txt", encoding="utf-8") as fh:
        text = fh.read()
    assert "Alarms:" in text and "the lot ended held" in text
    # a new lot starts without alarms and is not held; alarm ids go on across lots
    last_id = max(a["id"] for a in summary["alarms"])
    h.handler("load", {"lot_number": "306426.001"})
    for s in h.sites:
        h.control(s, "loading")
        h.control(s, "busy")
        h.testapp(s, "idle")
    assert h.state == "ready"
    assert h.cell.alarms.alarms() == [] and h.cell.alarms.held() is None
    for n in range(3):
        fail_part(h, 10 + n)
    assert min(a["id"] for a in h.cell.alarms.alarms()) == last_id + 1


def test_a_notify_alarm_lets_the_lot_go_on(tmp_path) -> None:
    h = Harness(tmp_path, alarms=NOTIFY)
    h.to_ready()
    fail_part(h, 1)
    assert alarms_sent(h) == []  # one part in bin 12 is not more than max_count 1
    fail_part(h, 2)
    [alarm] = alarms_sent(h)
    assert alarm["kind"] == "bin_limit" and alarm["sbin"] == 12 and alarm["site"] is None
    h.pub.take()
    fail_part(h, 3)  # fires once per lot
    assert alarms_sent(h) == [] and h.responses()[-1]["type"] == "next"
    assert h.cell.alarms.held() is None


def test_a_retest_counts_its_last_result(tmp_path) -> None:
    h = Harness(tmp_path, alarms=HOLD)
    h.to_ready()
    fail_part(h, 1)
    fail_part(h, 2)
    # part F2-0 is retested good: its fail no longer counts in the lot; the site's
    # sequence of tests goes on with a pass, so the third fail does not fire
    h.run_part(part_prefix="F2-")
    fail_part(h, 4)
    assert alarms_sent(h) == []


def test_every_metric_of_the_floor_rules_is_exposed(tmp_path) -> None:
    h = Harness(tmp_path, alarms=HOLD)
    h.to_ready()
    for n in range(3):
        fail_part(h, n)
    assert unexposed(known_metrics(), PrometheusMetrics(h.cell).render()) == []


def test_no_rules_no_alarm_work(tmp_path) -> None:
    h = Harness(tmp_path)
    h.to_ready()
    for n in range(5):
        fail_part(h, n)
    assert h.cell.alarms.monitor is None and alarms_sent(h) == []
    assert "ate_lot_held 0\n" in PrometheusMetrics(h.cell).render()
