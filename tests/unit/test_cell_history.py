"""The lot history in a real cell (protocol §15.3): every finalised lot is recorded, the
API lists and serves them, and the statistical yield rule reads its baseline from it."""

from __future__ import annotations

import os
import statistics

import pytest_twisted
import treq
from twisted.internet.task import Clock

from ate.jobs.source import job_source_from_config
from ate.master.lot import Lot
from ate.web.site import make_site
from tests.stdfread import pystdf_records
from tests.unit.cellharness import LOT, Harness
from tests.web.test_api import Client


def unload(h: Harness) -> None:
    h.handler("unload")
    for s in h.sites:
        h.control(s, "idle")
    assert h.state == "initialized"


def load(h: Harness) -> None:
    h.handler("load", {"lot_number": LOT})
    for s in h.sites:
        h.control(s, "loading")
        h.control(s, "busy")
        h.testapp(s, "idle")
    assert h.state == "ready", h.cell.error_message_text


def test_finalised_lots_are_recorded_and_served(tmp_path) -> None:
    h = Harness(tmp_path, history=True)
    h.to_ready()
    h.run_part(part_prefix="A-")
    h.run_part(part_prefix="B-", bins={"1": (12, 5)})
    unload(h)
    load(h)
    h.run_part(part_prefix="C-")
    unload(h)
    db = h.history.db
    rows = db.lots()
    assert [r["parts"] for r in rows] == [4, 8]  # newest first
    assert rows[1]["yield_percent"] == 87.5 and rows[0]["end_reason"] == ""
    assert rows[1]["program"] == h.cell.job.testapp_script_path
    api = Client(h.cell)
    code, body = api.json("GET", "/api/v1/lots?limit=1")
    assert code == 200 and [r["id"] for r in body["lots"]] == [rows[0]["id"]]
    assert body["next"] == rows[0]["id"]
    code, body = api.json("GET", f"/api/v1/lots?limit=1&before={rows[0]['id']}")
    assert [r["id"] for r in body["lots"]] == [rows[1]["id"]]
    code, body = api.json("GET", f"/api/v1/lots/{rows[1]['id']}")
    assert code == 200 and body["summary"]["parts_distinct"] == 8
    assert body["summary"]["production"]["cycles"] == 2
    for path, err in (("/api/v1/lots/999", 404), ("/api/v1/lots/x", 404),
                      ("/api/v1/lots/999/stdf", 404), ("/api/v1/lots?limit=0", 400),
                      ("/api/v1/lots?limit=x", 400), ("/api/v1/lots?page=2", 400)):
        code, body = api.json("GET", path)
        assert code == err and body["message"], path


@pytest_twisted.inlineCallbacks
def test_the_stdf_download_streams_the_file_as_an_attachment(tmp_path):
    from twisted.internet import reactor

    h = Harness(tmp_path, history=True)
    h.to_ready()
    for n in range(30):
        h.run_part(part_prefix=f"D{n}-")
    unload(h)
    [row] = h.history.db.lots()
    site = make_site(h.cell, Clock(), start=False)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/api/v1/lots/{row['id']}/stdf"
        resp = yield treq.get(url)
        raw = yield treq.content(resp)
        assert resp.code == 200
        assert resp.headers.getRawHeaders("content-disposition")[0] == (
            f'attachment; filename="{row["datalog"]}"')
        with open(h.history.db.datalog_path(row["id"]), "rb") as fh:
            assert raw == fh.read()
        prrs = [r for n, r in pystdf_records(raw) if n == "PRR"]
        assert len(prrs) == 120
        os.remove(h.history.db.datalog_path(row["id"]))
        resp = yield treq.get(url)
        body = yield treq.json_content(resp)
        assert resp.code == 404 and "no longer on disk" in body["message"]
    finally:
        yield port.stopListening()


def test_without_history_the_routes_say_so(tmp_path) -> None:
    h = Harness(tmp_path)
    code, body = Client(h.cell).json("GET", "/api/v1/lots")
    assert code == 503 and "lot history is not available" in body["message"]


def test_a_database_that_cannot_be_opened_disables_history_only(tmp_path) -> None:
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher
    errors: list[str] = []

    def observer(event: dict) -> None:
        if event.get("log_level") == LogLevel.error:
            errors.append(formatEvent(event))

    (tmp_path / "db-is-a-dir").mkdir()
    globalLogPublisher.addObserver(observer)
    try:
        h = Harness(tmp_path, history=True, history_database=str(tmp_path / "db-is-a-dir"))
    finally:
        globalLogPublisher.removeObserver(observer)
    assert h.history.db is None
    assert len(errors) == 1 and "lot history disabled" in errors[0]
    assert "is a directory" in errors[0]
    h.to_ready()  # the master itself is not affected
    h.run_part()
    unload(h)
    code, body = Client(h.cell).json("GET", "/api/v1/lots")
    assert code == 503 and "is a directory" in body["message"]


def record_history(h: Harness, yields: list[int], parts: int = 100) -> None:
    """Finalised lots of the job's part type with the given yields (percent of ``parts``)."""
    job = job_source_from_config(h.config).load(LOT)
    for i, y in enumerate(yields):
        lot = Lot(job, ("0",), "D")
        for n in range(parts):
            good = n < y * parts // 100
            sbin = 1 if good else 12
            lot.add_result("0", [{"type": "PRR", "HEAD_NUM": 0, "SITE_NUM": 0,
                                  "PART_FLG": 0 if good else 8, "SOFT_BIN": sbin,
                                  "HARD_BIN": 1 if good else 5, "PART_ID": f"{i}-{n}"}])
        summary = lot.summary() | {"finish_t": 1_700_000_000 + i, "end_reason": ""}
        h.history.db.record(summary, datalog_path=str(h.config.stdf_directory) + f"/old{i}.stdf")


def syl_lot(tmp_path, good: int) -> list[dict]:
    h = Harness(tmp_path, sites=("0",), history=True,
                alarms=[{"kind": "statistical_yield_limit", "name": "syl", "k": 3,
                         "history": 10, "min_history": 6, "min_parts": 100}])
    base = [88, 89, 90, 91, 92, 90, 89, 91, 90, 90]
    record_history(h, base)
    h.to_ready()
    for n in range(100):
        h.run_part(part_prefix=f"S{n}-", bins={"0": (1, 1) if n >= 100 - good else (12, 5)})
    return [p["payload"] for t, p in h.pub.sent if t.endswith("/Master/alarm")]


BASE_MEAN = statistics.mean([88, 89, 90, 91, 92, 90, 89, 91, 90, 90])
BASE_SIGMA = statistics.stdev([88, 89, 90, 91, 92, 90, 89, 91, 90, 90])


def test_syl_fires_on_a_lot_5_sigma_below_its_history(tmp_path) -> None:
    good = round(BASE_MEAN - 5 * BASE_SIGMA)  # 84 of 100 (mean 90.0, sigma 1.15)
    [alarm] = syl_lot(tmp_path, good)
    assert alarm["kind"] == "statistical_yield_limit" and alarm["parts"] == 100


def test_syl_is_quiet_on_a_lot_1_sigma_below_its_history(tmp_path) -> None:
    good = round(BASE_MEAN - 1 * BASE_SIGMA)  # 89 of 100
    assert syl_lot(tmp_path, good) == []
