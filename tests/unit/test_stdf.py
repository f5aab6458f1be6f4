"""Tests for ate.stdf.records and ate.stdf.sink, read back with pystdf (independent)."""

from __future__ import annotations

import json
import math
import os
import random
import struct
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from ate.master.lot import Lot
from ate.stdf import records as R
from ate.stdf.records import RecordError, encode
from ate.stdf.sink import Datalog
from tests.stdfread import pystdf_records
from tests.unit.test_lot import BINS, HBIN, SITES, make_job, result

SETUP_T = 1795544990.0


# -- helpers -----------------------------------------------------------------------------




def read_file(path: str) -> list[tuple[str, dict]]:
    with open(path, "rb") as fh:
        return pystdf_records(fh.read())


def names(recs) -> str:
    """Record order compressed: 'FAR MIR SDR PIR PTR PRR ...'."""
    return " ".join(n for n, _ in recs)


def full_ptr(site: int = 0, **over) -> dict:
    rec = {"type": "PTR", "TEST_NUM": 1000, "HEAD_NUM": 0, "SITE_NUM": site, "TEST_FLG": 0,
           "PARM_FLG": 0, "RESULT": 0.42, "TEST_TXT": "offset.vout", "ALARM_ID": "",
           "OPT_FLAG": 2, "RES_SCAL": 0, "LLM_SCAL": 0, "HLM_SCAL": 0, "LO_LIMIT": 0.0,
           "HI_LIMIT": 1.0, "UNITS": "V", "C_RESFMT": "%7.3f", "C_LLMFMT": "%7.3f",
           "C_HLMFMT": "%7.3f", "LO_SPEC": -1.0, "HI_SPEC": 2.0, "rec_id": "PTR"}
    rec.update(over)
    return rec


class Threads:
    """A fake run_in_thread: records calls, runs nothing until fire()."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.pending: list[Deferred] = []

    def __call__(self, fn, *args):
        self.calls.append((fn, args))
        d = Deferred()
        self.pending.append(d)
        return d

    def fire(self) -> None:
        while self.pending:
            self.pending.pop(0).callback(None)


def new_log(tmp_path, **kw) -> Datalog:
    kw.setdefault("clock", Clock())
    return Datalog.create(str(tmp_path), make_job(), "SCT-81-1F", SITES, SETUP_T, **kw)


# -- records.encode ------------------------------------------------------------------------


def test_encode_ptr_reads_back_with_pystdf() -> None:
    data = encode({"type": "FAR"}) + encode(full_ptr(2))
    (far_name, far), (name, ptr) = pystdf_records(data)
    assert far == {"CPU_TYPE": 2, "STDF_VER": 4}
    assert name == "PTR"
    assert ptr["TEST_NUM"] == 1000 and ptr["SITE_NUM"] == 2
    assert ptr["RESULT"] == pytest.approx(0.42)
    assert ptr["TEST_TXT"] == "offset.vout" and ptr["UNITS"] == "V"
    assert (ptr["LO_SPEC"], ptr["HI_SPEC"]) == (-1.0, 2.0)
    assert ptr["OPT_FLAG"] == 2


def test_missing_fields_set_standard_flags() -> None:
    ptr = {"type": "PTR", "TEST_NUM": 7, "HEAD_NUM": 0, "SITE_NUM": 1}
    (_, _), (_, got) = pystdf_records(encode({"type": "FAR"}) + encode(ptr))
    # RESULT missing -> TEST_FLG bit 1; OPT_FLAG: reserved bit 1 + every missing field.
    assert got["TEST_FLG"] == 0x02
    assert got["OPT_FLAG"] == 0xFF
    ptr = full_ptr(LO_LIMIT=None, HI_SPEC=None)
    (_, _), (_, got) = pystdf_records(encode({"type": "FAR"}) + encode(ptr))
    assert got["OPT_FLAG"] == 0x02 | 0x40 | 0x08
    tsr = {"type": "TSR", "TEST_NUM": 3, "EXEC_CNT": 5, "TEST_MIN": 1.0}
    (_, _), (_, got) = pystdf_records(encode({"type": "FAR"}) + encode(tsr))
    assert got["OPT_FLAG"] == 0xC8 | 0x02 | 0x04 | 0x10 | 0x20
    assert got["FAIL_CNT"] == 4294967295 and got["TEST_TYP"] == " "
    prr = {"type": "PRR", "SOFT_BIN": 1, "HARD_BIN": 1}
    (_, _), (_, got) = pystdf_records(encode({"type": "FAR"}) + encode(prr))
    assert (got["X_COORD"], got["Y_COORD"]) == (-32768, -32768)
    ftr = {"type": "FTR", "TEST_NUM": 1000, "HEAD_NUM": 0, "SITE_NUM": 2, "TEST_FLG": 0,
           "OPT_FLAG": None, "RTN_ICNT": 0, "PGM_ICNT": 0}
    (_, _), (_, got) = pystdf_records(encode({"type": "FAR"}) + encode(ftr))
    assert got["OPT_FLAG"] == 0xFF and got["PATG_NUM"] == 255


def test_non_finite_floats_are_ieee() -> None:
    data = encode({"type": "FAR"}) + encode(full_ptr(RESULT=math.inf, LO_LIMIT=-math.inf,
                                                    HI_LIMIT=math.nan, LO_SPEC=1e300))
    (_, _), (_, got) = pystdf_records(data)
    assert got["RESULT"] == math.inf and got["LO_LIMIT"] == -math.inf
    assert math.isnan(got["HI_LIMIT"]) and got["LO_SPEC"] == math.inf


def test_arrays_and_bit_fields() -> None:
    mpr = {"type": "MPR", "TEST_NUM": 5, "HEAD_NUM": 0, "SITE_NUM": 1,
           "RTN_ICNT": 3, "RTN_STAT": [1, 2, 15], "RTN_INDX": [10, 11, 12],
           "RTN_RSLT": [1.5, -2.0], "RSLT_CNT": None, "UNITS": "mA"}
    sdr = {"type": "SDR", "HEAD_NUM": 0, "SITE_GRP": 0, "SITE_NUM": [0, 1, 2, 3]}
    ftr = {"type": "FTR", "TEST_NUM": 1, "FAIL_PIN": b"\x05", "PART_FIX": None}
    prr = {"type": "PRR", "SOFT_BIN": 1, "HARD_BIN": 1, "PART_FIX": 0x0102}
    data = b"".join(encode(r) for r in ({"type": "FAR"}, mpr, sdr, ftr, prr))
    got = dict(pystdf_records(data))
    assert got["MPR"]["RSLT_CNT"] == 2 and got["MPR"]["RTN_RSLT"] == [1.5, -2.0]
    assert got["MPR"]["RTN_INDX"] == [10, 11, 12] and got["MPR"]["UNITS"] == "mA"
    assert got["SDR"]["SITE_CNT"] == 4 and got["SDR"]["SITE_NUM"] == [0, 1, 2, 3]
    assert got["FTR"]["FAIL_PIN"] == [5]
    assert got["PRR"]["PART_FIX"] == [2, 1]
    # Our decoder agrees, nibbles included.
    decoded = [R.decode(raw) for raw in R.iter_records(data)]
    assert decoded[1]["RTN_STAT"] == [1, 2, 15]


@pytest.mark.parametrize("record,field,reason", [
    ({"type": "PIR", "HEAD_NUM": 256}, "HEAD_NUM", "out of range for U1"),
    ({"type": "PIR", "SITE_NUM": -1}, "SITE_NUM", "out of range for U1"),
    ({"type": "PRR", "SOFT_BIN": 65536}, "SOFT_BIN", "out of range for U2"),
    ({"type": "PTR", "TEST_NUM": 2 ** 32}, "TEST_NUM", "out of range for U4"),
    ({"type": "PTR", "RES_SCAL": 128}, "RES_SCAL", "out of range for I1"),
    ({"type": "PRR", "X_COORD": 40000}, "X_COORD", "out of range for I2"),
    ({"type": "FTR", "XFAIL_AD": 2 ** 31}, "XFAIL_AD", "out of range for I4"),
    ({"type": "PTR", "RESULT": "0.4"}, "RESULT", "expected a number"),
    ({"type": "PTR", "TEST_NUM": 1.0}, "TEST_NUM", "expected an integer"),
    ({"type": "PTR", "TEST_TXT": 5}, "TEST_TXT", "expected a string"),
    ({"type": "PRR", "PART_ID": "x" * 256}, "PART_ID", "longer than 255 bytes"),
    ({"type": "SBR", "SBIN_PF": "PF"}, "SBIN_PF", "single character"),
    ({"type": "MPR", "RTN_ICNT": 2, "RTN_STAT": [1]}, "RTN_STAT", "has 1 elements"),
    ({"type": "MPR", "RTN_STAT": [16], "RTN_INDX": [1]}, "RTN_STAT", "0..15"),
    ({"type": "MPR", "RTN_STAT": [1]}, "RTN_INDX", "missing, but RTN_ICNT is 1"),
    ({"type": "XYZ"}, "type", "unknown record type 'XYZ'"),
    ({"HEAD_NUM": 0}, "type", "unknown record type None"),
])
def test_encode_errors_name_the_field(record, field, reason) -> None:
    with pytest.raises(RecordError) as info:
        encode(record)
    assert info.value.field == field
    assert reason in info.value.reason


def test_encode_big_endian_reads_back() -> None:
    data = b"".join(encode(r, ">") for r in (
        {"type": "FAR"}, {"type": "PIR", "HEAD_NUM": 0, "SITE_NUM": 3}, full_ptr(3),
        {"type": "PRR", "HEAD_NUM": 0, "SITE_NUM": 3, "SOFT_BIN": 300, "HARD_BIN": 5,
         "PART_ID": "B1", "X_COORD": -2, "Y_COORD": 7, "TEST_T": 70000}))
    assert data[4] == 1  # CPU_TYPE 1 = big-endian
    got = pystdf_records(data)
    assert names(got) == "FAR PIR PTR PRR"
    prr = got[3][1]
    assert (prr["SOFT_BIN"], prr["X_COORD"], prr["TEST_T"]) == (300, -2, 70000)
    assert R.detect_endian(data) == ">"
    ours = [R.decode(raw, ">") for raw in R.iter_records(data)]
    assert ours[3]["SOFT_BIN"] == 300 and ours[3]["PART_ID"] == "B1"


_int8 = st.one_of(st.none(), st.integers(-130, 130))
_u8 = st.one_of(st.none(), st.integers(-2, 260))
_flt = st.one_of(st.none(), st.floats(allow_nan=False, width=32), st.just(math.inf))
_txt = st.one_of(st.none(), st.text(max_size=8), st.just("u" * 256))


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({
    "TEST_NUM": st.integers(0, 2 ** 32 + 1), "HEAD_NUM": _u8, "SITE_NUM": _u8,
    "TEST_FLG": _u8, "PARM_FLG": _u8, "RESULT": _flt, "TEST_TXT": _txt,
    "ALARM_ID": _txt, "OPT_FLAG": _u8, "RES_SCAL": _int8, "LLM_SCAL": _int8,
    "HLM_SCAL": _int8, "LO_LIMIT": _flt, "HI_LIMIT": _flt, "UNITS": _txt,
    "C_RESFMT": _txt, "C_LLMFMT": _txt, "C_HLMFMT": _txt, "LO_SPEC": _flt,
    "HI_SPEC": _flt}))
def test_fast_path_equals_generic_path(rec) -> None:
    """The precompiled PTR encoder gives exactly the bytes (or error) of the generic one."""
    rec = dict(rec, type="PTR")
    generic = R._SPECS["PTR"]
    try:
        expected = R._encode_generic(generic, rec, "<")
    except RecordError as err:
        with pytest.raises(RecordError) as info:
            encode(rec)
        assert info.value.field == err.field
    else:
        assert encode(rec) == expected


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({
    "HEAD_NUM": _u8, "SITE_NUM": _u8, "PART_FLG": _u8,
    "NUM_TEST": st.integers(0, 70000), "HARD_BIN": st.integers(0, 70000),
    "SOFT_BIN": st.one_of(st.none(), st.integers(0, 70000)),
    "X_COORD": st.one_of(st.none(), st.integers(-40000, 40000)),
    "Y_COORD": st.one_of(st.none(), st.integers(-5, 5)),
    "TEST_T": st.one_of(st.none(), st.integers(0, 2 ** 32)),
    "PART_ID": _txt, "PART_TXT": _txt,
    "PART_FIX": st.one_of(st.none(), st.integers(0, 300))}))
def test_fast_prr_equals_generic(rec) -> None:
    rec = dict(rec, type="PRR")
    try:
        expected = R._encode_generic(R._SPECS["PRR"], rec, ">")
    except RecordError:
        with pytest.raises(RecordError):
            encode(rec, ">")
    else:
        assert encode(rec, ">") == expected


# -- Datalog ---------------------------------------------------------------------------


def test_file_name_and_never_overwrite(tmp_path) -> None:
    a = new_log(tmp_path)
    b = new_log(tmp_path)
    stamp = __import__("time").strftime("%Y%m%d-%H%M%S",
                                        __import__("time").localtime(SETUP_T))
    base = os.path.join(str(tmp_path), f"306426.001_SCT-81-1F_{stamp}")
    assert a.path == base + ".stdf"
    assert b.path == base + "-1.stdf"
    # An orphan summary also reserves its name.
    open(base + "-2.summary.json", "w").close()
    c = new_log(tmp_path)
    assert c.path == base + "-3.stdf"
    for log in (a, b, c):
        log.finalise(Lot(make_job(), SITES, "SCT-81-1F"), finish_t=SETUP_T + 1)
    assert os.path.getsize(base + "-2.summary.json") == 0


def test_full_lot_record_order_and_fields(tmp_path) -> None:
    clock = Clock()
    lot = Lot(make_job(), SITES, "SCT-81-1F")
    log = new_log(tmp_path, clock=clock, fsync_interval=0)
    start = SETUP_T + 60
    # Two cycles on four sites; P2 comes back on site 0 as a retest.
    cycles = [
        [("0", result("0", 1, "P0")), ("1", result("1", 12, "P1")),
         ("2", result("2", 20, "P2")), ("3", result("3", 60000, "P3"))],
        [("0", result("0", 2, "P2")), ("1", result("1", 13, "P5"))],
    ]
    for i, cycle in enumerate(cycles):
        assert log.write_parts(cycle, start + i * 10) == []
        for site, recs in cycle:
            lot.add_result(site, recs)
    tsr = {"type": "TSR", "HEAD_NUM": 0, "SITE_NUM": 0, "TEST_TYP": "P", "TEST_NUM": 1000,
           "EXEC_CNT": 2, "FAIL_CNT": 0, "ALRM_CNT": 0, "TEST_NAM": "t", "SEQ_NAME": "",
           "TEST_LBL": "", "OPT_FLAG": 0, "TEST_TIM": 1.0, "TEST_MIN": 0.25,
           "TEST_MAX": 0.5, "TST_SUMS": 0.75, "TST_SQRS": 0.3125}
    assert log.add_summary("0", [tsr]) == []
    assert log.add_summary("1", [dict(tsr, SITE_NUM=1, EXEC_CNT=6, TEST_TIM=3.0,
                                      TEST_MIN=0.1, TEST_MAX=0.4)]) == []
    log.finalise(lot, finish_t=start + 100, reason="")
    assert log.finalised

    recs = read_file(log.path)
    part = "PIR PTR PRR"
    n_sbr = len(BINS) * (len(SITES) + 1)
    n_hbr = 5 * (len(SITES) + 1)
    expected = " ".join(["FAR MIR SDR"] + [part] * 6 + ["SBR"] * n_sbr + ["HBR"] * n_hbr
                        + ["TSR"] * 3 + ["PCR"] * 4 + ["MRR"])
    assert names(recs) == expected

    far, mir, sdr = (r[1] for r in recs[:3])
    assert far == {"CPU_TYPE": 2, "STDF_VER": 4}
    assert mir["SETUP_T"] == int(SETUP_T) and mir["START_T"] == int(start)
    assert (mir["LOT_ID"], mir["JOB_NAM"], mir["SBLOT_ID"]) == ("306426.001",) * 2 + ("001",)
    assert mir["PART_TYP"] == "HS2CQFN16T7A_FT1A" and mir["NODE_NAM"] == "SCT-81-1F.Master"
    assert (mir["TSTR_TYP"], mir["OPER_NAM"], mir["MODE_COD"]) == ("MSCT-81", "sct", "P")
    assert mir["EXEC_TYP"] == "ate-master" and mir["EXEC_VER"]
    assert (mir["TST_TEMP"], mir["USER_TXT"], mir["PKG_TYP"]) == ("25", "FT1 ROOM", "QF")
    assert sdr["SITE_CNT"] == 4 and sdr["SITE_NUM"] == [0, 1, 2, 3]

    prrs = [f for n, f in recs if n == "PRR"]
    assert [p["PART_ID"] for p in prrs] == ["P0", "P1", "P2", "P3", "P2", "P5"]

    sbr = {(f["HEAD_NUM"], f["SITE_NUM"], f["SBIN_NUM"]): f for n, f in recs if n == "SBR"}
    assert sbr[(0, 2, 20)]["SBIN_CNT"] == 0  # replaced by the retest
    assert sbr[(0, 0, 2)]["SBIN_CNT"] == 1 and sbr[(0, 0, 2)]["SBIN_PF"] == "P"
    assert sbr[(255, 0, 12)]["SBIN_CNT"] == 1 and sbr[(255, 0, 12)]["SBIN_NAM"] == "SB_CONT_OPEN"
    assert sbr[(255, 0, 60000)]["SBIN_PF"] == "F"
    hbr = {(f["HEAD_NUM"], f["SITE_NUM"], f["HBIN_NUM"]): f for n, f in recs if n == "HBR"}
    assert hbr[(255, 0, 5)]["HBIN_CNT"] == 2 and hbr[(255, 0, 5)]["HBIN_NAM"] == "BT_FAIL_CONT"
    assert hbr[(255, 0, 1)]["HBIN_PF"] == "P" and hbr[(255, 0, 5)]["HBIN_PF"] == "F"
    tsrs = [f for n, f in recs if n == "TSR"]
    total = tsrs[2]
    assert total["HEAD_NUM"] == 255 and total["EXEC_CNT"] == 8
    assert total["TEST_MIN"] == pytest.approx(0.1) and total["TEST_MAX"] == pytest.approx(0.5)
    assert total["TEST_TIM"] == pytest.approx((1.0 * 2 + 3.0 * 6) / 8)
    assert total["TST_SUMS"] == pytest.approx(1.5)
    pcr = {(f["HEAD_NUM"], f["SITE_NUM"]): f for n, f in recs if n == "PCR"}
    assert pcr[(255, 255)] == {"HEAD_NUM": 255, "SITE_NUM": 255, "PART_CNT": 5,
                               "RTST_CNT": 1, "ABRT_CNT": 1, "GOOD_CNT": 2, "FUNC_CNT": 2}
    assert pcr[(0, 0)]["PART_CNT"] == 2 and pcr[(0, 0)]["RTST_CNT"] == 1
    assert (0, 2) not in pcr  # site 2 has no final part left after the retest
    mrr = recs[-1][1]
    assert mrr == {"FINISH_T": int(start + 100), "DISP_COD": " ", "USR_DESC": "",
                   "EXC_DESC": ""}

    summary = json.loads(Path(log.base + ".summary.json").read_text())
    assert summary["parts_distinct"] == 5 and summary["datalog"] == os.path.basename(log.path)
    text = Path(log.base + ".summary.txt").read_text()
    assert "306426.001" in text and "SB_CONT_OPEN" in text and "Test time" in text


def test_bad_records_are_skipped_and_reported(tmp_path) -> None:
    log = new_log(tmp_path)
    recs = result("1", 1, "P9")
    recs.insert(1, full_ptr(1, HEAD_NUM=999))
    recs.insert(2, {"type": "GDR", "GEN_DATA": []})
    recs.insert(3, "not a record")
    recs.insert(4, full_ptr(1, TEST_TXT=["x"]))
    problems = log.write_parts([("1", recs)], SETUP_T)
    # records of an unaccepted type are skipped; bad field values are made writable
    assert len(problems) == 2
    assert "record 2 not written" in problems[0] and "'GDR' is not accepted" in problems[0]
    assert "<str>" in problems[1]
    assert log.fixes.counts == {R.FIX_RANGE: 1, R.FIX_TYPE: 1}
    assert log.fixes.first[R.FIX_RANGE] == "PTR.HEAD_NUM: 999 -> 255"
    assert log.fixes.first[R.FIX_TYPE].startswith("PTR.TEST_TXT: list")
    log.finalise(Lot(make_job(), SITES, "D"), finish_t=SETUP_T + 5, reason="aborted: test")
    got = read_file(log.path)
    assert names(got).startswith("FAR MIR SDR PIR PTR PTR PTR PRR SBR")
    assert got[4][1]["HEAD_NUM"] == 255 and got[5][1]["TEST_TXT"] == ""
    assert got[-1][1]["EXC_DESC"] == "aborted: test"
    # Our own reader sees the file end exactly on the MRR.
    data = Path(log.path).read_bytes()
    assert list(R.iter_records(data))[-1].end == len(data)


def test_finalise_without_parts(tmp_path) -> None:
    log = new_log(tmp_path)
    lot = Lot(make_job(), SITES, "SCT-81-1F")
    log.finalise(lot, finish_t=SETUP_T + 30, reason="aborted: master stopped")
    log.finalise(lot, finish_t=SETUP_T + 99)  # idempotent
    got = read_file(log.path)
    assert names(got) == " ".join(["FAR MIR SDR"] + ["SBR"] * 35 + ["HBR"] * 25
                                  + ["PCR", "MRR"])
    assert got[1][1]["START_T"] == got[1][1]["SETUP_T"] == int(SETUP_T)
    assert got[-2][1]["PART_CNT"] == 0 and got[-2][1]["SITE_NUM"] == 255
    assert got[-1][1]["FINISH_T"] == int(SETUP_T + 30)
    assert got[-1][1]["EXC_DESC"] == "aborted: master stopped"
    assert log.write_parts([("0", result("0", 1))], SETUP_T)[0].endswith("not written")


def test_header_written_once_with_first_start_time(tmp_path) -> None:
    log = new_log(tmp_path)
    log.write_parts([("0", result("0", 1, "a"))], SETUP_T + 5)
    log.write_parts([("0", result("0", 1, "b"))], SETUP_T + 50)
    log.finalise(Lot(make_job(), SITES, "D"), finish_t=SETUP_T + 60)
    got = read_file(log.path)
    assert [n for n, _ in got].count("MIR") == 1
    assert got[1][1]["START_T"] == int(SETUP_T + 5)


def test_each_cycle_is_one_write_and_flush(tmp_path) -> None:
    log = new_log(tmp_path, fsync_interval=0)
    calls = []

    class Spy:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            calls.append(("write", len(data)))
            return self.f.write(data)

        def flush(self):
            calls.append(("flush",))
            self.f.flush()

        def __getattr__(self, name):
            return getattr(self.f, name)

    log._file = Spy(log._file)
    log.write_parts([(s, result(s, 1, f"P{s}")) for s in SITES], SETUP_T)
    assert [c[0] for c in calls] == ["write", "flush"]
    # The data reached the file: it parses up to the last complete part.
    got = read_file(log.path)
    assert names(got) == "FAR MIR SDR" + " PIR PTR PRR" * 4
    log.finalise(Lot(make_job(), SITES, "D"), finish_t=SETUP_T)
    assert [c[0] for c in calls] == ["write", "flush"] * 2  # the footer: one write too


def test_fsync_every_call_in_thread(tmp_path) -> None:
    threads = Threads()
    log = new_log(tmp_path, fsync_interval=0, run_in_thread=threads)
    log.write_parts([("0", result("0", 1, "a"))], SETUP_T)
    assert len(threads.calls) == 1 and threads.calls[0][0] is os.fsync
    threads.fire()
    log.write_parts([("0", result("0", 1, "b"))], SETUP_T)
    assert len(threads.calls) == 2
    # While one fsync is in flight, the next write waits for it, then syncs again.
    log.write_parts([("0", result("0", 1, "c"))], SETUP_T)
    assert len(threads.calls) == 2
    threads.fire()
    assert len(threads.calls) == 3
    threads.fire()
    log.finalise(Lot(make_job(), SITES, "D"), finish_t=SETUP_T)
    assert log._sync_fd is None


def test_fsync_cadence_at_most_once_per_interval(tmp_path) -> None:
    clock = Clock()
    threads = Threads()
    log = new_log(tmp_path, clock=clock, fsync_interval=0.2, run_in_thread=threads)
    for i in range(10):  # ten cycles within 100 ms
        log.write_parts([("0", result("0", 1, f"a{i}"))], SETUP_T)
        clock.advance(0.01)
    assert threads.calls == []
    clock.advance(0.1)
    assert len(threads.calls) == 1
    fd = threads.calls[0][1][0]
    assert os.path.samefile(f"/proc/self/fd/{fd}", log.path)
    threads.fire()
    clock.advance(1.0)
    assert len(threads.calls) == 1  # nothing new written, nothing to sync
    log.write_parts([("0", result("0", 1, "z"))], SETUP_T)
    clock.advance(0.19)
    assert len(threads.calls) == 1
    clock.advance(0.01)
    assert len(threads.calls) == 2
    # Finalising with an fsync still in flight keeps its descriptor open until it returns.
    log.write_parts([("0", result("0", 1, "y"))], SETUP_T)
    log.finalise(Lot(make_job(), SITES, "D"), finish_t=SETUP_T)
    assert log._sync_fd == fd
    threads.fire()
    assert log._sync_fd is None
    assert clock.getDelayedCalls() == []


def test_fsync_synchronous_without_thread_helper(tmp_path, monkeypatch) -> None:
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    clock = Clock()
    log = new_log(tmp_path, clock=clock, fsync_interval=0.5)
    log.write_parts([("0", result("0", 1, "a"))], SETUP_T)
    assert synced == []
    clock.advance(0.5)
    assert len(synced) == 1
    log.finalise(Lot(make_job(), SITES, "D"), finish_t=SETUP_T)
    assert len(synced) == 2 and clock.getDelayedCalls() == []


def test_random_lot_counts_in_file_match_ground_truth(tmp_path) -> None:
    rng = random.Random(99)
    lot = Lot(make_job(), SITES, "SCT-81-1F")
    log = new_log(tmp_path, fsync_interval=0.2)
    final: dict[str, tuple[str, int]] = {}
    retests = 0
    for cycle in range(2500):
        parts = []
        for site in SITES:
            if final and rng.random() < 0.1:
                pid = rng.choice(sorted(final)[:50])
                retests += 1
            else:
                pid = f"L{cycle}-{site}"
            sbin = rng.choice([b.sbin for b in BINS])
            parts.append((site, result(site, sbin, pid)))
        # A part may appear only once per cycle: drop duplicates within the cycle.
        seen, unique = set(), []
        for site, recs in parts:
            pid = recs[-1]["PART_ID"]
            if pid in seen:
                retests -= 1
                continue
            seen.add(pid)
            unique.append((site, recs))
        assert log.write_parts(unique, SETUP_T) == []
        for site, recs in unique:
            lot.add_result(site, recs)
            final[recs[-1]["PART_ID"]] = (site, recs[-1]["SOFT_BIN"])
    log.finalise(lot, finish_t=SETUP_T + 1000)
    got = read_file(log.path)
    counts = Counter(n for n, _ in got)
    assert counts["PRR"] == lot.parts_tested
    sbr = {(f["HEAD_NUM"], f["SITE_NUM"], f["SBIN_NUM"]): f["SBIN_CNT"]
           for n, f in got if n == "SBR"}
    truth = Counter(final.values())
    for b in BINS:
        for site in SITES:
            assert sbr[(0, int(site), b.sbin)] == truth[(site, b.sbin)]
        assert sbr[(255, 0, b.sbin)] == sum(truth[(s, b.sbin)] for s in SITES)
    pcr = {(f["HEAD_NUM"], f["SITE_NUM"]): f for n, f in got if n == "PCR"}
    assert pcr[(255, 255)]["PART_CNT"] == len(final)
    assert pcr[(255, 255)]["RTST_CNT"] == retests
    hbr = {(f["HEAD_NUM"], f["SITE_NUM"], f["HBIN_NUM"]): f["HBIN_CNT"]
           for n, f in got if n == "HBR"}
    hard = Counter(HBIN[sb] for _, sb in final.values())
    for hb, n in hard.items():
        assert hbr[(255, 0, hb)] == n


def test_create_rejects_bad_site_ids(tmp_path) -> None:
    with pytest.raises(ValueError, match="site id 'x'"):
        Datalog.create(str(tmp_path), make_job(), "D", ["0", "x"], SETUP_T, clock=Clock())
    assert os.listdir(tmp_path) == []


def test_create_that_fails_after_opening_leaves_no_file_open_or_behind(
        tmp_path, monkeypatch) -> None:
    """Out of descriptors for the fsync thread's copy: the error comes through, the new
    file is closed and removed (no datalog of a refused load is left for the recovery)."""
    import ate.stdf.sink as sink

    def no_descriptor(fd):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(sink.os, "dup", no_descriptor)
    with pytest.raises(OSError, match="Too many open files"):
        new_log(tmp_path, run_in_thread=Threads())
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
    open_files = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                  if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [f for f in open_files if f.startswith(str(tmp_path))]


def test_struct_is_standard_layout() -> None:
    """A hand-check of one record's bytes against the V4 layout (PIR)."""
    assert encode({"type": "PIR", "HEAD_NUM": 1, "SITE_NUM": 3}) == struct.pack(
        "<HBBBB", 2, 5, 10, 1, 3)
    assert encode({"type": "PIR", "HEAD_NUM": 1, "SITE_NUM": 3}, ">") == struct.pack(
        ">HBBBB", 2, 5, 10, 1, 3)


def test_succeed_deferred_run_in_thread(tmp_path) -> None:
    """A run_in_thread that completes at once (already-fired Deferred) works too."""
    ran = []
    log = new_log(tmp_path, fsync_interval=0,
                  run_in_thread=lambda fn, *a: succeed(ran.append(fn(*a))))
    log.write_parts([("0", result("0", 1, "a"))], SETUP_T)
    log.write_parts([("0", result("0", 1, "b"))], SETUP_T)
    assert len(ran) == 2
    log.finalise(Lot(make_job(), SITES, "D"), finish_t=SETUP_T)
    assert log._sync_fd is None  # the descriptor for the thread is closed too


def test_write_text_puts_a_dtr_at_that_point_of_the_part_stream(tmp_path) -> None:
    log = new_log(tmp_path)
    log.write_parts([("0", result("0", 1, "a"))], SETUP_T + 5)
    assert log.write_text("ALARM cf: site 0 failed 5 parts in a row \u00e9" + "x" * 400,
                          SETUP_T) == []
    log.write_parts([("0", result("0", 1, "b"))], SETUP_T + 50)
    log.finalise(Lot(make_job(), SITES, "D"), finish_t=SETUP_T + 60)
    got = read_file(log.path)
    order = [n for n, _ in got if n in ("PRR", "DTR")]
    assert order == ["PRR", "DTR", "PRR"]
    dtr = next(r for n, r in got if n == "DTR")
    assert dtr["TEXT_DAT"].startswith("ALARM cf: site 0 failed 5 parts in a row")
    assert len(dtr["TEXT_DAT"].encode("latin-1", "replace")) <= 255
    assert log.write_text("late", SETUP_T)[0].startswith(f"datalog {log.path} is finalised")


def test_write_text_before_any_part_writes_the_header_first(tmp_path) -> None:
    log = new_log(tmp_path)
    assert log.write_text("RELEASE x by op: ok", SETUP_T + 1) == []
    log.finalise(Lot(make_job(), SITES, "D"), finish_t=SETUP_T + 60)
    names_ = [n for n, _ in read_file(log.path)]
    assert names_.count("MIR") == 1 and names_.count("DTR") == 1
    assert names_.index("MIR") < names_.index("DTR") < names_.index("MRR")
