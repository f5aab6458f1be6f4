"""Tests for ate.stdf.recover: completing datalogs left unfinished by a crash."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from ate.master.lot import Lot
from ate.stdf import records as R
from ate.stdf.recover import RECOVERED, recover_directory
from ate.stdf.sink import Datalog
from tests.stdfread import pystdf_records
from tests.unit.test_lot import BINS, SITES, make_job, result

SETUP_T = 1795544990.0




def cycles(n: int) -> list[list[tuple[str, list[dict]]]]:
    """n handler cycles on four sites; every fifth part id is a retest of an older one."""
    out = []
    k = 0
    for _ in range(n):
        cycle = []
        for site in SITES:
            k += 1
            pid = f"P{k - 7}" if k % 5 == 0 and k > 7 else f"P{k}"
            cycle.append((site, result(site, BINS[k % len(BINS)].sbin, pid)))
        out.append(cycle)
    return out


def unfinished_log(directory: str, n: int = 6, endian: str = "<") -> tuple[str, list]:
    log = Datalog.create(directory, make_job(), "SCT-81-1F", SITES, SETUP_T,
                         clock=Clock(), fsync_interval=0, endian=endian)
    all_cycles = cycles(n)
    for cyc in all_cycles:
        assert log.write_parts(cyc, SETUP_T + 1) == []
    log._file.close()  # the master "crashed": no footer
    return log.path, [part for cyc in all_cycles for part in cyc]


def expected_counts(parts) -> tuple[Counter, int, int]:
    final: dict[str, tuple[str, int]] = {}
    retests = 0
    for site, recs in parts:
        pid = recs[-1]["PART_ID"]
        retests += pid in final
        final[pid] = (site, recs[-1]["SOFT_BIN"])
    return Counter(final.values()), len(final), retests


def part_ends(data: bytes) -> list[int]:
    """Offsets just after each PRR (each complete part)."""
    return [raw.end for raw in R.iter_records(data) if raw.name == "PRR"]


def test_complete_files_are_untouched(tmp_path) -> None:
    log = Datalog.create(str(tmp_path), make_job(), "D", SITES, SETUP_T, clock=Clock())
    log.write_parts(cycles(2)[0], SETUP_T)
    log.finalise(Lot(make_job(), SITES, "D"), finish_t=SETUP_T + 1)
    before = Path(log.path).read_bytes()
    assert recover_directory(str(tmp_path)) == []
    assert Path(log.path).read_bytes() == before


@pytest.mark.parametrize("endian", ["<", ">"])
def test_truncated_at_many_offsets(tmp_path, endian) -> None:
    path, parts = unfinished_log(str(tmp_path), endian=endian)
    data = Path(path).read_bytes()
    ends = part_ends(data)
    header_end = [raw.end for raw in R.iter_records(data) if raw.name == "SDR"][0]
    # cut: mid-record in a part, on a part boundary, inside a record header,
    # right after a PIR, at the end of the file, and inside the last PRR.
    cuts = [ends[3] + 10, ends[5], ends[7] + 2, ends[8] + 6, len(data), len(data) - 3,
            header_end]
    for cut in cuts:
        with open(path, "wb") as fh:
            fh.write(data[:cut])
        lines = recover_directory(str(tmp_path))
        assert len(lines) == 1 and RECOVERED in lines[0]
        fixed = Path(path).read_bytes()
        kept = sum(1 for e in ends if e <= cut)
        assert fixed[: ends[kept - 1] if kept else header_end] == data[
            : ends[kept - 1] if kept else header_end]
        recs = pystdf_records(fixed)
        names = [n for n, _ in recs]
        assert names[:3] == ["FAR", "MIR", "SDR"]
        assert names.count("PRR") == kept and names.count("PIR") == kept
        assert names[-1] == "MRR" and recs[-1][1]["EXC_DESC"] == RECOVERED
        footer = names[3 + 3 * kept:]
        assert set(footer) <= {"SBR", "HBR", "PCR", "MRR"}
        assert footer[-2] == "PCR"
        if kept:
            assert footer.index("HBR") > footer.index("SBR")
            assert footer.index("PCR") > footer.index("HBR")
        # Summaries rebuilt from the kept PRRs, with independent ground truth.
        truth, distinct, retests = expected_counts(parts[:kept])
        sbr = {(f["HEAD_NUM"], f["SITE_NUM"], f["SBIN_NUM"]): f["SBIN_CNT"]
               for n, f in recs if n == "SBR"}
        for (site, sbin), n in truth.items():
            assert sbr[(0, int(site), sbin)] == n
        assert sum(v for (h, _, _), v in sbr.items() if h == 255) == distinct
        pcr = {(f["HEAD_NUM"], f["SITE_NUM"]): f for n, f in recs if n == "PCR"}
        assert pcr[(255, 255)]["PART_CNT"] == distinct
        assert pcr[(255, 255)]["RTST_CNT"] == retests
        # Our reader agrees with pystdf and the file is now complete.
        ours = list(R.iter_records(fixed))
        assert ours[-1].end == len(fixed) and ours[-1].name == "MRR"
        assert recover_directory(str(tmp_path)) == []


def test_partial_footer_is_replaced_and_names_kept(tmp_path) -> None:
    path, parts = unfinished_log(str(tmp_path), n=3)
    log = Datalog.create(str(tmp_path), make_job(), "D", SITES, SETUP_T, clock=Clock())
    # Build a complete reference file to borrow a footer from.
    lot = Lot(make_job(), SITES, "D")
    for site, recs in parts:
        lot.add_result(site, recs)
    log.write_parts(parts, SETUP_T)
    log.add_summary("0", [{"type": "TSR", "HEAD_NUM": 0, "SITE_NUM": 0, "TEST_NUM": 1000,
                           "EXEC_CNT": 3, "TEST_NAM": "t", "TEST_MIN": 0.5}])
    log.finalise(lot, finish_t=SETUP_T + 9)
    full = Path(log.path).read_bytes()
    os.remove(log.path)
    os.remove(log.base + ".summary.json")
    os.remove(log.base + ".summary.txt")
    recs = list(R.iter_records(full))
    pcr_at = [r.offset for r in recs if r.name == "PCR"][0]
    with open(path, "wb") as fh:  # crash in the middle of writing the footer
        fh.write(full[: pcr_at + 3])
    lines = recover_directory(str(tmp_path))
    assert len(lines) == 1
    got = pystdf_records(Path(path).read_bytes())
    sbr_names = {f["SBIN_NUM"]: f["SBIN_NAM"] for n, f in got if n == "SBR"}
    assert sbr_names[12] == "SB_CONT_OPEN"
    hbr_names = {f["HBIN_NUM"]: f["HBIN_NAM"] for n, f in got if n == "HBR"}
    assert hbr_names[5] == "BT_FAIL_CONT"
    tsrs = [f for n, f in got if n == "TSR"]
    assert [(t["HEAD_NUM"], t["EXEC_CNT"]) for t in tsrs] == [(0, 3), (255, 3)]
    names = [n for n, _ in got]
    assert names.count("PRR") == len(parts) and names.count("MRR") == 1
    assert names.count("SBR") == len(BINS) * 5


def test_empty_and_foreign_files(tmp_path) -> None:
    empty = tmp_path / "306426.001_SCT-81-1F_20261124-182849.stdf"
    empty.write_bytes(b"")
    foreign = tmp_path / "notes.stdf"
    foreign.write_bytes(b"hello world, not stdf")
    (tmp_path / "other.txt").write_bytes(b"")
    lines = recover_directory(str(tmp_path))
    assert any("not an STDF file" in line and "notes.stdf" in line for line in lines)
    assert foreign.read_bytes() == b"hello world, not stdf"
    got = pystdf_records(empty.read_bytes())
    assert [n for n, _ in got] == ["FAR", "MIR", "PCR", "MRR"]
    assert got[1][1]["LOT_ID"] == "306426.001"
    assert got[1][1]["NODE_NAM"] == "SCT-81-1F.Master"
    assert got[-1][1]["EXC_DESC"] == RECOVERED


def test_big_endian_file_written_by_hand(tmp_path) -> None:
    """A big-endian file built with records.encode(endian='>'), torn in its last part."""
    e = ">"
    recs = [{"type": "FAR", "CPU_TYPE": 1, "STDF_VER": 4},
            {"type": "MIR", "SETUP_T": 5, "START_T": 6, "LOT_ID": "L1"},
            {"type": "SDR", "SITE_NUM": [0, 1]}]
    for i in range(4):
        site = i % 2
        recs += [{"type": "PIR", "HEAD_NUM": 0, "SITE_NUM": site},
                 {"type": "PRR", "HEAD_NUM": 0, "SITE_NUM": site, "SOFT_BIN": 300 + i,
                  "HARD_BIN": 258, "PART_ID": f"X{i}", "PART_FLG": 8}]
    data = b"".join(R.encode(r, e) for r in recs)
    path = tmp_path / "L1_D_20260101-000000.stdf"
    path.write_bytes(data[:-4])
    lines = recover_directory(str(tmp_path))
    assert "kept 3 complete part result(s)" in lines[0]
    fixed = path.read_bytes()
    assert R.detect_endian(fixed) == ">"
    ours = [R.decode(raw, e) for raw in R.iter_records(fixed)]
    assert [r["type"] for r in ours][-1] == "MRR"
    sbr = [r for r in ours if r["type"] == "SBR" and r["HEAD_NUM"] == 255]
    assert [(r["SBIN_NUM"], r["SBIN_CNT"], r["SBIN_NAM"]) for r in sbr] == [
        (300, 1, ""), (301, 1, ""), (302, 1, "")]
    hbr = [r for r in ours if r["type"] == "HBR" and r["HEAD_NUM"] == 255]
    assert [(r["HBIN_NUM"], r["HBIN_CNT"], r["HBIN_PF"]) for r in hbr] == [(258, 3, "F")]
    got = pystdf_records(fixed)
    assert got[-1][0] == "MRR" and got[-1][1]["EXC_DESC"] == RECOVERED



def test_a_repaired_file_gets_its_summary_files(tmp_path) -> None:
    import json

    from ate.stdf.recover import recover_file

    path, parts = unfinished_log(str(tmp_path), n=6)
    line = recover_file(path)
    assert line is not None and "summary files written" in line
    base = path[:-5]
    with open(base + ".summary.json", encoding="utf-8") as fh:
        summary = json.load(fh)
    assert summary["end_reason"] == RECOVERED and summary["recovered"] is True
    assert summary["lot"] == "306426.001" and summary["sites"] == list(SITES)
    _, distinct, _ = expected_counts(parts)
    assert summary["parts_distinct"] == distinct
    assert sum(b["total"] for b in summary["bins"]) == distinct
    with open(base + ".summary.txt", encoding="utf-8") as fh:
        assert f"Ended: {RECOVERED}" in fh.read()
    assert recover_file(path) is None  # complete now: untouched


def test_a_repaired_footer_and_summary_carry_the_jobs_bin_names(tmp_path) -> None:
    import json

    from ate.stdf.summary import BinRow

    path, parts = unfinished_log(str(tmp_path), n=6)
    job = make_job()
    asked = []

    def bins_for(lot: str) -> list[BinRow]:
        asked.append(lot)
        return [BinRow(e.sbin, e.hbin, e.name, e.group) for e in job.bins]

    [line] = recover_directory(str(tmp_path), bins_for)
    assert RECOVERED in line and asked == ["306426.001"]
    with open(path, "rb") as fh:
        recs = pystdf_records(fh.read())
    names = {r["SBIN_NUM"]: r["SBIN_NAM"] for n, r in recs
             if n == "SBR" and r["HEAD_NUM"] == 255}
    assert names == {e.sbin: e.name for e in job.bins}  # every entry of the table, named
    hnames = {r["HBIN_NUM"]: r["HBIN_NAM"] for n, r in recs if n == "HBR"}
    assert all(hnames[e.hbin] for e in job.bins)
    with open(path[:-5] + ".summary.json", encoding="utf-8") as fh:
        summary = json.load(fh)
    by_sbin = {b["sbin"]: b for b in summary["bins"]}
    for e in job.bins:
        if e.sbin in by_sbin:
            assert (by_sbin[e.sbin]["name"], by_sbin[e.sbin]["group"]) == (e.name, e.group)


def test_a_job_that_cannot_be_had_leaves_the_names_empty(tmp_path) -> None:
    path, _ = unfinished_log(str(tmp_path), n=3)

    def bins_for(lot: str) -> list:
        raise OSError(f"no job for lot {lot}")

    [line] = recover_directory(str(tmp_path), bins_for)
    assert RECOVERED in line
    with open(path, "rb") as fh:
        recs = pystdf_records(fh.read())
    assert {r["SBIN_NAM"] for n, r in recs if n == "SBR"} == {""}
