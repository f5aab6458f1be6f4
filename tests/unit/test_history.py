"""The lot history database (ate.history, protocol 15.3)."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing

import pytest
from twisted.internet.task import Clock

from ate.history import APPLICATION_ID, SCHEMA_VERSION, BaselineData, History, HistoryError
from ate.jobs.model import BinEntry, Job
from ate.master.lot import Lot
from ate.stdf.recover import RECOVERED, recover_directory
from ate.stdf.sink import Datalog


def summary(lot="306426.001", part_type="PT_FT1", parts=100, good=90, bins=None,
            finish_t=1_000, end_reason="", **extra):
    """A lot summary in the shape of Lot.summary() plus what the datalog sink adds."""
    bins = {1: good, 12: parts - good} if bins is None else bins
    half = parts // 2
    per_site = [{"site": "0", "parts": half, "good": good // 2, "fail": half - good // 2,
                 "aborted": 0, "retests": 0,
                 "yield_percent": (good // 2) / half * 100 if half else 0.0},
                {"site": "1", "parts": parts - half, "good": good - good // 2,
                 "fail": parts - half - (good - good // 2), "aborted": 0, "retests": 0,
                 "yield_percent": (good - good // 2) / (parts - half) * 100
                 if parts - half else 0.0}]
    out = {
        "lot": lot, "device": "SCT-81-1F", "part_type": part_type, "sites": ["0", "1"],
        "parts_tested": parts, "parts_distinct": parts, "retests": 0,
        "per_site": per_site,
        "total": {"site": "-1", "parts": parts, "good": good, "fail": parts - good,
                  "aborted": 0, "retests": 0,
                  "yield_percent": good / parts * 100 if parts else 0.0},
        "bins": [{"sbin": sb, "hbin": 1 if sb == 1 else 5, "name": f"SB{sb}", "group": "",
                  "counts": {"0": n}, "total": n,
                  "percent": n / parts * 100 if parts else 0.0} for sb, n in bins.items()],
        "hard_bins": [{"hbin": 1, "name": "BT_PASS", "total": good,
                       "percent": good / parts * 100 if parts else 0.0}],
        "datalog": f"{lot}.stdf", "finish_t": finish_t, "end_reason": end_reason,
        "datalog_fixes": {},
    }
    out.update(extra)
    return out


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "history.sqlite")


@pytest.fixture
def history(db_path):
    h = History.open(db_path, wallclock=lambda: 5_000.0)
    try:
        yield h
    finally:
        h.close()


def add(history, tmp_path, name, **kw):
    return history.record(summary(**kw), datalog_path=str(tmp_path / f"{name}.stdf"))


def pragma(path, name):
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


# -- opening ---------------------------------------------------------------------------------


def test_a_new_database_gets_the_schema_wal_and_the_index(history, db_path):
    assert pragma(db_path, "user_version") == SCHEMA_VERSION
    assert pragma(db_path, "application_id") == APPLICATION_ID
    assert pragma(db_path, "journal_mode") == "wal"
    with closing(sqlite3.connect(db_path)) as conn:
        index = conn.execute("SELECT sql FROM sqlite_master WHERE name = "
                             "'lots_part_type_finish'").fetchone()[0]
    assert "(part_type, finish_t)" in index
    assert history.lots() == []


def test_reopen_keeps_the_lots(db_path, tmp_path):
    with History.open(db_path) as h:
        lot_id = add(h, tmp_path, "a")
    with History.open(db_path) as h:
        assert [r["id"] for r in h.lots()] == [lot_id]
        assert h.lot(lot_id)["lot"] == "306426.001"


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(HistoryError, match="is a directory"):
        History.open(str(tmp_path))


def test_a_missing_parent_directory_is_refused(tmp_path):
    with pytest.raises(HistoryError, match="cannot be"):
        History.open(str(tmp_path / "no" / "such" / "history.sqlite"))


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"this is a text file, not SQLite\n" * 100)
    with pytest.raises(HistoryError, match="history.sqlite.*not a database"):
        History.open(str(path))
    assert path.read_bytes().startswith(b"this is a text file")


def test_a_newer_schema_is_refused(db_path):
    History.open(db_path).close()
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(HistoryError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        History.open(db_path)


def test_a_foreign_database_is_refused_and_left_alone(db_path):
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("CREATE TABLE parts (x)")
        conn.commit()
    with pytest.raises(HistoryError, match="not an ate-master lot history.*parts"):
        History.open(db_path)
    assert pragma(db_path, "user_version") == 0
    assert pragma(db_path, "journal_mode") == "delete"


def test_our_id_without_the_lots_table_is_refused(db_path):
    History.open(db_path).close()
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("DROP TABLE lots")
    with pytest.raises(HistoryError, match="lacks column"):
        History.open(db_path)


def test_a_closed_history_says_so(db_path):
    h = History.open(db_path)
    h.close()
    h.close()
    with pytest.raises(HistoryError, match="closed"):
        h.lots()


# -- recording -------------------------------------------------------------------------------


def test_record_stores_the_columns(history, tmp_path):
    alarms = [{"id": 1, "name": "low", "kind": "lot_yield", "state": "raised"}]
    s = summary(parts=200, good=150, start_t=400, ended_held=True)
    lot_id = history.record(s, datalog_path=str(tmp_path / "a.stdf"), program="p.py",
                            alarms=alarms)
    row = history.lot(lot_id)
    assert row["lot"] == "306426.001" and row["part_type"] == "PT_FT1"
    assert row["program"] == "p.py" and row["device"] == "SCT-81-1F"
    assert (row["start_t"], row["finish_t"], row["duration_s"]) == (400, 1_000, 600)
    assert row["parts"] == 200 and row["parts_tested"] == 200
    assert row["yield_percent"] == 75.0
    assert row["held"] is True and row["alarms"] == 1 and row["alarm_list"] == alarms
    assert row["datalog"] == "a.stdf" and row["recorded_t"] == 5_000.0
    assert [(s["site"], s["yield_percent"]) for s in row["site_yields"]] == [
        ("0", 75.0), ("1", 75.0)]
    assert [(b["sbin"], b["total"], b["percent"]) for b in row["soft_bins"]] == [
        (1, 150, 75.0), (12, 50, 25.0)]
    assert row["hard_bins"] == [{"hbin": 1, "name": "BT_PASS", "total": 150,
                                 "percent": 75.0}]
    assert row["summary"] == s
    assert history.datalog_path(lot_id) == str(tmp_path / "a.stdf")
    assert history.lot(lot_id + 1) is None and history.datalog_path(lot_id + 1) is None


def test_summary_alarms_and_defaults(history, tmp_path):
    s = summary(alarms=[{"id": 3}, {"id": 4}], program="q.py")
    del s["finish_t"]
    lot_id = history.record(s, datalog_path=str(tmp_path / "missing.stdf"))
    row = history.lots()[0]
    assert row["id"] == lot_id and row["alarms"] == 2 and row["program"] == "q.py"
    assert row["finish_t"] == 5_000.0  # the wall clock
    assert row["start_t"] is None and row["duration_s"] is None and row["held"] is False


def test_recording_a_datalog_again_updates_its_row(history, tmp_path, monkeypatch):
    first = add(history, tmp_path, "a", good=10)
    monkeypatch.chdir(tmp_path)
    again = history.record(summary(good=20), datalog_path="a.stdf")  # the same file
    assert again == first
    rows = history.lots()
    assert len(rows) == 1 and rows[0]["yield_percent"] == 20.0


@pytest.mark.parametrize(("change", "named"), [
    ({"parts_distinct": -1}, "'parts_distinct' must be an integer >= 0"),
    ({"lot": 7}, "'lot' must be a string"),
    ({"total": {"yield_percent": float("nan")}}, "'total'.'yield_percent' must be a finite"),
    ({"bins": [{"sbin": "1"}]}, "'bins'\\[0\\].'sbin' must be an integer"),
    ({"per_site": "0"}, "'per_site' must be a list"),
    ({"finish_t": True}, "'finish_t' must be a finite number"),
])
def test_a_bad_summary_is_refused_naming_the_field(history, tmp_path, change, named):
    bad = summary() | change
    with pytest.raises(HistoryError, match=named):
        history.record(bad, datalog_path=str(tmp_path / "a.stdf"))
    assert history.lots() == []


def test_bad_arguments_are_refused(history, tmp_path):
    with pytest.raises(HistoryError, match="datalog_path"):
        history.record(summary(), datalog_path="")
    with pytest.raises(HistoryError, match="summary  must be an object"):
        history.record([], datalog_path=str(tmp_path / "a.stdf"))  # type: ignore[arg-type]
    with pytest.raises(HistoryError, match="alarms must be a list of objects"):
        history.record(summary(), datalog_path=str(tmp_path / "a.stdf"), alarms=[1])
    for limit in (0, 501, True, "5"):
        with pytest.raises(ValueError, match="limit must be an integer 1..500"):
            history.lots(limit=limit)
    with pytest.raises(ValueError, match="lot_id must be an integer"):
        history.lot("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="history must be an integer"):
        history.baseline("PT", 0)


# -- listing ---------------------------------------------------------------------------------


def test_lots_are_newest_first_by_finish_time_then_id(history, tmp_path):
    a = add(history, tmp_path, "a", finish_t=300)
    b = add(history, tmp_path, "b", finish_t=100)
    c = add(history, tmp_path, "c", finish_t=300)
    d = add(history, tmp_path, "d", finish_t=200)
    assert [r["id"] for r in history.lots()] == [c, a, d, b]


def test_lots_filter_by_part_type(history, tmp_path):
    a = add(history, tmp_path, "a", part_type="X", finish_t=1)
    add(history, tmp_path, "b", part_type="Y", finish_t=2)
    c = add(history, tmp_path, "c", part_type="X", finish_t=3)
    assert [r["id"] for r in history.lots(part_type="X")] == [c, a]
    assert history.lots(part_type="Z") == []


def test_lots_page_with_before(history, tmp_path):
    ids = [add(history, tmp_path, f"l{i}", finish_t=10 * (i // 2), part_type="XY"[i % 2])
           for i in range(9)]
    newest_first = sorted(ids, key=lambda i: ((i - ids[0]) // 2, i), reverse=True)
    pages, before = [], None
    for _ in range(10):  # bounded: a paging bug must fail, not loop
        page = history.lots(limit=2, before=before)
        if not page:
            break
        pages.append([r["id"] for r in page])
        before = page[-1]["id"]
    assert [i for p in pages for i in p] == newest_first
    assert all(len(p) == 2 for p in pages[:-1]) and len(pages) == 5
    x_page = history.lots(part_type="X", limit=2, before=newest_first[0])
    assert [r["part_type"] for r in x_page] == ["X", "X"]
    with pytest.raises(ValueError, match="before: no lot with id 999"):
        history.lots(before=999)


# -- baseline --------------------------------------------------------------------------------


def test_baseline_values_newest_first(history, tmp_path):
    add(history, tmp_path, "old", parts=100, good=80, bins={1: 80, 12: 20}, finish_t=1)
    add(history, tmp_path, "mid", parts=200, good=190, bins={1: 190, 7: 10}, finish_t=2)
    add(history, tmp_path, "new", parts=50, good=25, bins={1: 25, 12: 25}, finish_t=3)
    add(history, tmp_path, "other", part_type="OTHER", finish_t=4)
    base = history.baseline("PT_FT1", 20)
    assert base == BaselineData(lots=3, yields=(50.0, 95.0, 80.0),
                                bin_shares={1: (50.0, 95.0, 80.0), 7: (0.0, 5.0, 0.0),
                                            12: (50.0, 0.0, 20.0)})
    assert history.baseline("PT_FT1", 2).yields == (50.0, 95.0)
    assert history.baseline("NONE", 5) == BaselineData(lots=0, yields=(), bin_shares={})


def test_baseline_counts_only_normally_unloaded_lots_with_parts(history, tmp_path):
    add(history, tmp_path, "good", good=70, finish_t=1)
    add(history, tmp_path, "aborted", good=10, finish_t=2, end_reason="aborted: reset")
    add(history, tmp_path, "repaired", good=10, finish_t=3, end_reason=RECOVERED)
    add(history, tmp_path, "empty", parts=0, good=0, bins={}, finish_t=4)
    add(history, tmp_path, "held", good=60, finish_t=5, ended_held=True)
    base = history.baseline("PT_FT1", 20)
    assert base.lots == 2 and base.yields == (60.0, 70.0)
    assert len(history.lots()) == 5


# -- import ----------------------------------------------------------------------------------


def write_summary(directory, name, content):
    path = directory / f"{name}.summary.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_import_records_new_summaries_once_and_skips_broken_ones(history, tmp_path,
                                                                 warnings_logged):
    stdf = tmp_path / "stdf"
    stdf.mkdir()
    write_summary(stdf, "a", summary(lot="A", finish_t=1))
    write_summary(stdf, "b", summary(lot="B", finish_t=2))
    write_summary(stdf, "torn", '{"lot": "T", "parts_dis')
    write_summary(stdf, "list", "[1, 2]")
    write_summary(stdf, "bad", summary(lot="X", parts_distinct="many"))
    (stdf / "c.summary.txt").write_text("not JSON, not a .summary.json")
    known = history.record(summary(lot="B-live", finish_t=2),
                           datalog_path=str(stdf / "b.stdf"))
    assert history.import_summaries(str(stdf)) == 1
    assert sorted(r["lot"] for r in history.lots()) == ["A", "B-live"]
    assert history.lot(known)["lot"] == "B-live"  # a recorded datalog is not replaced
    assert len(warnings_logged) == 3
    for name, reason in (("bad", "'parts_distinct' must be an integer"),
                         ("list", "must be an object"), ("torn", "not JSON")):
        assert any(f"{name}.summary.json skipped" in w and reason in w
                   for w in warnings_logged), warnings_logged
    warnings_logged.clear()
    write_summary(stdf, "d", summary(lot="D", finish_t=3))
    assert history.import_summaries(str(stdf)) == 1
    assert history.import_summaries(str(stdf)) == 0
    assert len(history.lots()) == 3 and len(warnings_logged) == 6


def test_import_of_a_missing_directory_imports_nothing(history, tmp_path, warnings_logged):
    assert history.import_summaries(str(tmp_path / "none")) == 0
    assert warnings_logged == []


def test_import_takes_the_files_time_when_the_summary_has_none(history, tmp_path):
    s = summary()
    del s["finish_t"]
    path = write_summary(tmp_path, "a", s)
    os.utime(path, (1234, 1234))
    assert history.import_summaries(str(tmp_path)) == 1
    assert history.lots()[0]["finish_t"] == 1234


SITES = ("0", "1")
BINS = (BinEntry(1, 1, "SB_GOOD", "BT_PASS", ""), BinEntry(12, 5, "SB_CONT", "BT_FAIL", ""))
JOB = Job("306426.001", "001", "REAL_FT1", "QF", "25", "FT1 ROOM", "p.py", ".", (), BINS,
          "job.xml")


def part(i):
    site = SITES[i % 2]
    sbin = 12 if i % 4 == 0 else 1
    return (site, [{"type": "PIR", "HEAD_NUM": 0, "SITE_NUM": int(site)},
                   {"type": "PRR", "HEAD_NUM": 0, "SITE_NUM": int(site),
                    "PART_FLG": 0 if sbin == 1 else 8, "NUM_TEST": 1,
                    "HARD_BIN": 1 if sbin == 1 else 5, "SOFT_BIN": sbin, "X_COORD": i,
                    "Y_COORD": 0, "TEST_T": 3, "PART_ID": f"P{i}", "PART_TXT": "",
                    "PART_FIX": 0}])


def test_real_summaries_of_a_finished_and_a_repaired_datalog(history, tmp_path):
    """What the datalog sink and the recovery write is recorded as it is meant."""
    stdf = tmp_path / "stdf"
    stdf.mkdir()
    for n, setup_t in ((8, 1_795_000_000), (6, 1_795_100_000)):
        lot = Lot(JOB, SITES, "SCT-81-1F")
        datalog = Datalog.create(str(stdf), JOB, "SCT-81-1F", SITES, setup_t, clock=Clock())
        parts = [part(i) for i in range(n)]
        for site, records in parts:
            lot.add_result(site, records)
        datalog.write_parts(parts, setup_t + 60)
        if n == 8:
            datalog.finalise(lot, finish_t=setup_t + 600)
        else:  # the master died: the file is repaired at the next start
            datalog._write_final(b"", [])
            assert len(recover_directory(str(stdf))) == 1
    assert history.import_summaries(str(stdf)) == 2
    done, repaired = sorted(history.lots(), key=lambda r: r["parts"], reverse=True)
    assert done["part_type"] == "REAL_FT1" and done["parts"] == 8
    assert done["yield_percent"] == 75.0 and done["end_reason"] == ""
    assert done["start_t"] == 1_795_000_060 and done["duration_s"] == 540  # from the MIR
    assert done["datalog"].endswith(".stdf")
    assert history.datalog_path(done["id"]) == str(stdf / done["datalog"])
    assert os.path.isfile(history.datalog_path(done["id"]))
    assert repaired["parts"] == 6 and repaired["end_reason"] == RECOVERED
    assert repaired["start_t"] == 1_795_100_060
    assert history.baseline("REAL_FT1", 20) == BaselineData(
        lots=1, yields=(75.0,), bin_shares={1: (75.0,), 12: (25.0,)})
    assert history.import_summaries(str(stdf)) == 0
