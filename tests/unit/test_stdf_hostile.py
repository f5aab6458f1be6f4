"""Every datalog stays readable whatever arrives (issue 11, items 1-3).

Hostile records (non-ASCII text in every text field, 300-byte strings, integers out of
their STDF range, Infinity/NaN in float and integer fields) and a 490-byte softerror
reason go through the writer, the footer and the crash-recovery path; pystdf, the
independent reader, must read every file to its MRR. What was changed to make a record
writable is counted per lot and logged once per kind.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from ate.master.lot import Lot
from ate.protocol.errors import ProtocolError
from ate.protocol.messages import Codec
from ate.stdf import records as R
from ate.stdf.records import Fixes, RecordError, encode, sanitise
from ate.stdf.recover import RECOVERED, recover_directory
from ate.stdf.sink import Datalog
from cellharness import Harness
from tests.stdfread import pystdf_records, read_stdf
from tests.unit.test_lot import BINS, SITES, make_job, result

SETUP_T = 1795544990.0
LONG = "x" * 300
U4_MAX = 0xFFFFFFFF


def cut(text: str) -> str:
    """What a text longer than 255 bytes becomes: 252 characters and '...'."""
    return text[:252] + "..."


def hostile_part(site: str, part_id: str) -> list[dict]:
    """One site result with something unwritable as given in nearly every field."""
    s = int(site)
    return [
        {"type": "PIR", "HEAD_NUM": 300, "SITE_NUM": s},
        {"type": "PTR", "TEST_NUM": 2 ** 40, "HEAD_NUM": 0, "SITE_NUM": s, "TEST_FLG": 0,
         "PARM_FLG": 0, "RESULT": math.inf, "TEST_TXT": "Vout \u00b5" + LONG,
         "ALARM_ID": "\u00c4rger", "OPT_FLAG": 2, "RES_SCAL": 300, "LLM_SCAL": -300,
         "HLM_SCAL": math.nan, "LO_LIMIT": -math.inf, "HI_LIMIT": math.nan,
         "UNITS": "\u00b5V", "C_RESFMT": "%7.3f\u2026", "C_LLMFMT": LONG,
         "C_HLMFMT": "\u20ac", "LO_SPEC": 1e300, "HI_SPEC": math.nan},
        {"type": "MPR", "TEST_NUM": 7, "HEAD_NUM": 0, "SITE_NUM": s, "TEST_FLG": 0,
         "PARM_FLG": 0, "RTN_ICNT": 2, "RSLT_CNT": 3, "RTN_STAT": [1, 20],
         "RTN_INDX": [1, 70000], "RTN_RSLT": [math.inf, math.nan, 1.5],
         "TEST_TXT": "Str\u00f6me", "ALARM_ID": LONG, "OPT_FLAG": 0, "RES_SCAL": 0,
         "LLM_SCAL": 0, "HLM_SCAL": 0, "LO_LIMIT": 0.0, "HI_LIMIT": 1.0,
         "START_IN": math.nan, "INCR_IN": math.inf, "UNITS": "\u00b5A",
         "UNITS_IN": "\u2126", "C_RESFMT": "", "C_LLMFMT": "", "C_HLMFMT": "",
         "LO_SPEC": 0.0, "HI_SPEC": 1.0},
        {"type": "FTR", "TEST_NUM": 8, "HEAD_NUM": 0, "SITE_NUM": s, "TEST_FLG": 0,
         "OPT_FLAG": 255, "CYCL_CNT": math.inf, "XFAIL_AD": -2 ** 40,
         "VECT_OFF": math.nan, "RTN_ICNT": 0, "PGM_ICNT": 0, "VECT_NAM": "\u00fc",
         "PROG_TXT": LONG, "RSLT_TXT": "Gr\u00fc\u00dfe", "PATG_NUM": -3},
        {"type": "DTR", "TEXT_DAT": "Gr\u00fc\u00dfe " + LONG},
        {"type": "PRR", "HEAD_NUM": 300, "SITE_NUM": s, "PART_FLG": 0, "NUM_TEST": 70000,
         "HARD_BIN": 1, "SOFT_BIN": 1, "X_COORD": 40000, "Y_COORD": -math.inf,
         "TEST_T": math.inf, "PART_ID": part_id, "PART_TXT": "Pr\u00fcfling " + LONG,
         "PART_FIX": -1},
    ]


def new_log(tmp_path, job=None, **kw) -> Datalog:
    kw.setdefault("clock", Clock())
    return Datalog.create(str(tmp_path), job or make_job(), "SCT-81-1F", SITES, SETUP_T,
                          **kw)


def texts_are_ascii(recs) -> None:
    """Every string field pystdf returned is ASCII and at most 255 bytes."""
    for name, fields in recs:
        for key, value in fields.items():
            if isinstance(value, str):
                assert value.isascii() and len(value) <= 255, (name, key, value[:40])


def read_one(data: bytes) -> dict:
    """The fields of the one record in ``data``, read by pystdf after a FAR."""
    got = pystdf_records(encode({"type": "FAR", "CPU_TYPE": 2, "STDF_VER": 4}) + data)
    assert [n for n, _ in got][0] == "FAR" and len(got) == 2
    return got[1][1]


def warnings(events) -> list[dict]:
    return [e for e in events if e.get("log_level") is not None
            and e["log_level"] >= LogLevel.warn]


# -- the encoder --------------------------------------------------------------------------


def test_strict_encode_refuses_non_ascii_text() -> None:
    with pytest.raises(RecordError) as info:
        encode({"type": "PRR", "PART_TXT": "Pr\u00fcfling"})
    assert info.value.field == "PART_TXT" and "ASCII" in info.value.reason
    with pytest.raises(RecordError) as info:
        encode({"type": "SBR", "SBIN_PF": "\u00e9"})
    assert info.value.field == "SBIN_PF"


def test_text_is_made_ascii_and_short() -> None:
    fixes = Fixes()
    data = encode({"type": "PRR", "HEAD_NUM": 0, "SITE_NUM": 1, "SOFT_BIN": 1,
                   "HARD_BIN": 1, "PART_ID": "P\u00e4\u2026", "PART_TXT": "\u00fc" + LONG},
                  fixes=fixes)
    prr = read_one(data)
    assert prr["PART_ID"] == "P?..."
    assert prr["PART_TXT"] == cut("?" + LONG) and len(prr["PART_TXT"]) == 255
    assert fixes.counts == {R.FIX_ASCII: 2, R.FIX_LONG: 1}
    assert fixes.first[R.FIX_ASCII].startswith("PRR.PART_ID")


def test_integers_clamped_nan_missing_floats_ieee() -> None:
    fixes = Fixes()
    rec = {"type": "PRR", "HEAD_NUM": 300, "SITE_NUM": -1, "SOFT_BIN": 1, "HARD_BIN": 1,
           "NUM_TEST": 2.6, "X_COORD": math.nan, "Y_COORD": -math.inf, "TEST_T": math.inf,
           "PART_ID": "P1", "PART_FIX": "zz"}
    data = encode(rec, fixes=fixes)
    prr = read_one(data)
    assert (prr["HEAD_NUM"], prr["SITE_NUM"], prr["NUM_TEST"]) == (255, 0, 3)
    assert (prr["X_COORD"], prr["Y_COORD"], prr["TEST_T"]) == (-32768, -32768, U4_MAX)
    assert fixes.counts == {R.FIX_RANGE: 2, R.FIX_FLOAT: 1, R.FIX_NONFINITE: 3,
                            R.FIX_TYPE: 1}
    ptr = encode({"type": "PTR", "TEST_NUM": 1, "HEAD_NUM": 0, "SITE_NUM": 0,
                  "RESULT": math.nan, "LO_LIMIT": -math.inf, "HI_LIMIT": math.inf},
                 fixes=fixes)
    got = read_one(ptr)
    assert math.isnan(got["RESULT"]) and got["LO_LIMIT"] == -math.inf
    assert got["HI_LIMIT"] == math.inf


def test_test_t_minus_five_is_zero() -> None:
    fixes = Fixes()
    data = encode({"type": "PRR", "SOFT_BIN": 1, "TEST_T": -5}, fixes=fixes)
    assert read_one(data)["TEST_T"] == 0
    assert fixes.counts == {R.FIX_RANGE: 1}


def test_a_clean_record_is_not_changed() -> None:
    rec = result("1", 1, "P1")[1]
    fixes = Fixes()
    assert encode(rec, fixes=fixes) == encode(rec)
    assert not fixes and fixes.counts == {}
    assert sanitise(rec) == {k: v for k, v in rec.items()}


_ints = st.one_of(st.none(), st.integers(-2 ** 40, 2 ** 40), st.booleans(),
                  st.floats(), st.text(max_size=3))
_floats = st.one_of(st.none(), st.floats(), st.integers(-10 ** 400, 10 ** 400),
                    st.text(max_size=3))
_texts = st.one_of(st.none(), st.text(max_size=300), st.integers(), st.floats(),
                   st.lists(st.integers(), max_size=2), st.binary(max_size=300))
_arrays = st.one_of(st.none(), st.lists(_ints, max_size=6), st.text(max_size=2))


def _value_for(kind: str):
    if kind in ("Cn", "C1"):
        return _texts
    if kind in ("R4", "R8"):
        return _floats
    if kind.startswith("k"):
        return _arrays
    if kind in ("Bn", "Dn"):
        return st.one_of(_ints, st.binary(max_size=300), _arrays)
    return _ints


@st.composite
def any_record(draw):
    name = draw(st.sampled_from(sorted(R.RECORD_TYPES)))
    spec = R._SPECS[name]
    rec = {"type": name}
    for fld in spec.fields:
        if draw(st.booleans()):
            rec[fld.name] = draw(_value_for(fld.kind))
    return rec


@settings(max_examples=400, deadline=None)
@given(any_record(), st.sampled_from("<>"))
def test_any_record_is_writable_and_readable(rec, endian) -> None:
    """Whatever the field values, the sanitising encoder writes a record pystdf reads."""
    fixes = Fixes()
    data = encode(rec, endian, fixes=fixes)
    far = encode({"type": "FAR", "CPU_TYPE": 2 if endian == "<" else 1}, endian)
    got = pystdf_records(far + data)
    assert [n for n, _ in got] == ["FAR", rec["type"]]
    texts_are_ascii(got)
    # our own decoder reads it back too, and a second pass changes nothing
    [_, raw] = list(R.iter_records(far + data, endian))
    again = Fixes()
    assert encode(R.decode(raw, endian), endian, fixes=again) == data
    assert again.counts == {}, again.first


# -- the datalog --------------------------------------------------------------------------


def test_hostile_parts_are_all_in_the_file_and_the_lot_ends_with_mrr(tmp_path) -> None:
    log = new_log(tmp_path)
    lot = Lot(make_job(), SITES, "SCT-81-1F")
    with capturedLogs() as events:
        for cycle in range(5):
            parts = [(s, hostile_part(s, f"H{cycle}-{s}")) for s in SITES]
            for site, recs in parts:
                lot.add_result(site, recs)
            assert log.write_parts(parts, SETUP_T + 1) == []
        reason = "aborted: site 1 sent \u00bbB\u00f6ses\u00ab " + "r" * 470
        assert len(reason.encode()) > 480
        log.finalise(lot, finish_t=SETUP_T + 9, reason=reason)
    got = read_stdf(log.path)
    texts_are_ascii(got)
    names = [n for n, _ in got]
    assert names[:3] == ["FAR", "MIR", "SDR"] and names[-1] == "MRR"
    prrs = [f for n, f in got if n == "PRR"]
    assert [p["PART_ID"] for p in prrs] == [f"H{c}-{s}" for c in range(5) for s in SITES]
    assert names.count("PTR") == names.count("MPR") == names.count("FTR") == 20
    prr = prrs[0]
    assert (prr["HEAD_NUM"], prr["NUM_TEST"], prr["X_COORD"], prr["TEST_T"]) \
        == (255, 65535, 32767, U4_MAX)
    assert prr["PART_TXT"] == cut("Pr?fling " + LONG)
    ptr = next(f for n, f in got if n == "PTR")
    assert ptr["RESULT"] == math.inf and math.isnan(ptr["HI_LIMIT"])
    assert ptr["TEST_TXT"] == cut("Vout ?" + LONG) and ptr["UNITS"] == "?V"
    assert ptr["C_RESFMT"] == "%7.3f..." and ptr["TEST_NUM"] == U4_MAX
    mrr = got[-1][1]
    assert mrr["EXC_DESC"] == cut("aborted: site 1 sent ?B?ses? " + "r" * 470)
    pcr = [f for n, f in got if n == "PCR" and f["HEAD_NUM"] == 255]
    assert pcr[0]["PART_CNT"] == 20

    # counted per lot, logged once per kind (not per part)
    counts = log.fixes.counts
    assert counts[R.FIX_ASCII] >= 5 * 4 * 8 and counts[R.FIX_LONG] >= 5 * 4 * 6
    warned = warnings(events)
    assert len(warned) == len(counts)
    assert len(log.problems) == len(counts)
    summary = json.loads(Path(log.base + ".summary.json").read_text())
    assert summary["datalog_fixes"] == counts
    assert "made writable" in Path(log.base + ".summary.txt").read_text()


def test_a_healthy_lot_logs_no_warning_and_counts_nothing(tmp_path) -> None:
    log = new_log(tmp_path)
    lot = Lot(make_job(), SITES, "SCT-81-1F")
    with capturedLogs() as events:
        for k in range(8):
            site = SITES[k % 4]
            recs = result(site, 1, f"P{k}")
            lot.add_result(site, recs)
            assert log.write_parts([(site, recs)], SETUP_T) == []
        log.finalise(lot, finish_t=SETUP_T + 1)
    assert warnings(events) == [] and log.problems == []
    assert log.fixes.counts == {}
    assert json.loads(Path(log.base + ".summary.json").read_text())["datalog_fixes"] == {}


def test_header_and_footer_text_from_the_job_is_ascii(tmp_path) -> None:
    bins = (replace(BINS[0], name="SB_G\u00fcT", group="BT_P\u00c4SS"),) + BINS[1:]
    job = replace(make_job(), user_txt="FT1 25\u00b0C " + LONG, tst_temp="25\u00b0C",
                  bins=bins)
    log = new_log(tmp_path, job=job)
    lot = Lot(job, SITES, "SCT-81-1F")
    recs = result("0", 1, "P1")
    lot.add_result("0", recs)
    assert log.write_parts([("0", recs)], SETUP_T) == []
    log.add_summary("0", [{"type": "TSR", "HEAD_NUM": 0, "SITE_NUM": 0, "TEST_TYP": "P",
                           "TEST_NUM": 1000, "EXEC_CNT": 2 ** 40, "FAIL_CNT": -1,
                           "ALRM_CNT": math.nan, "TEST_NAM": "Offset \u00b5V",
                           "SEQ_NAME": LONG, "TEST_LBL": "", "OPT_FLAG": 0,
                           "TEST_TIM": math.inf, "TEST_MIN": 0.1, "TEST_MAX": 0.9,
                           "TST_SUMS": 1.2, "TST_SQRS": 0.8}])
    log.finalise(lot, finish_t=SETUP_T + 1)
    got = read_stdf(log.path)
    texts_are_ascii(got)
    mir = got[1][1]
    assert mir["TST_TEMP"] == "25?C" and mir["USER_TXT"] == cut("FT1 25?C " + LONG)
    assert {f["SBIN_NAM"] for n, f in got if n == "SBR" and f["SBIN_NUM"] == 1} \
        == {"SB_G?T"}
    tsrs = [f for n, f in got if n == "TSR"]
    assert [t["HEAD_NUM"] for t in tsrs] == [0, 255]
    assert tsrs[0]["TEST_NAM"] == "Offset ?V" and tsrs[0]["EXEC_CNT"] == U4_MAX
    assert got[-1][0] == "MRR"


# -- crash recovery -----------------------------------------------------------------------


def test_hostile_parts_through_the_recover_path(tmp_path) -> None:
    log = new_log(tmp_path, fsync_interval=0)
    for cycle in range(3):
        assert log.write_parts([(s, hostile_part(s, f"H{cycle}-{s}")) for s in SITES],
                               SETUP_T + 1) == []
    log._file.close()  # the master "crashed": no footer
    lines = recover_directory(str(tmp_path))
    assert len(lines) == 1 and RECOVERED in lines[0]
    got = read_stdf(log.path)
    texts_are_ascii(got)
    assert got[-1][0] == "MRR" and got[-1][1]["EXC_DESC"] == RECOVERED
    assert sum(1 for n, _ in got if n == "PRR") == 12


def _cn(text: bytes) -> bytes:
    return bytes((len(text),)) + text


def test_recovery_makes_utf8_text_of_an_old_file_ascii(tmp_path) -> None:
    """A file cut by a crash before this fix: UTF-8 in its parts and its partial footer."""
    e = "<"
    head = b"".join(encode(r, e) for r in (
        {"type": "FAR", "CPU_TYPE": 2, "STDF_VER": 4},
        {"type": "MIR", "SETUP_T": 1, "START_T": 1, "LOT_ID": "L"},
        {"type": "SDR", "SITE_CNT": 1, "SITE_NUM": [0]},
        {"type": "PIR", "HEAD_NUM": 0, "SITE_NUM": 0}))
    body = (struct.pack("<BBBHHHhhI", 0, 0, 0, 1, 1, 1, 0, 0, 12)
            + _cn(b"P1") + _cn("Pr\u00fcfling".encode()) + b"\x00")
    prr = struct.pack("<HBB", len(body), 5, 20) + body
    sbr_body = (struct.pack("<BBHIc", 0, 0, 1, 1, b"P") + _cn("G\u00fct".encode()))
    sbr = struct.pack("<HBB", len(sbr_body), 1, 50) + sbr_body
    path = tmp_path / "L_D_20260101-000000.stdf"
    path.write_bytes(head + prr + sbr)
    with pytest.raises(UnicodeDecodeError):
        pystdf_records(path.read_bytes())
    lines = recover_directory(str(tmp_path))
    assert len(lines) == 1 and RECOVERED in lines[0]
    got = read_stdf(str(path))
    texts_are_ascii(got)
    prr_read = next(f for n, f in got if n == "PRR")
    assert prr_read["PART_TXT"] == "Pr??fling"  # each UTF-8 byte of the old file: '?'
    assert {f["SBIN_NAM"] for n, f in got if n == "SBR"} == {"G?t"}
    assert got[-1][0] == "MRR"


@pytest.mark.parametrize("endian", "<>")
@pytest.mark.parametrize("rec", [
    {"type": "PTR", "TEST_NUM": 1, "RESULT": 0.5, "TEST_TXT": "a@@b", "UNITS": "@@"},
    {"type": "MPR", "TEST_NUM": 1, "RTN_STAT": [1, 2, 3], "RTN_INDX": [1, 2, 3],
     "RTN_RSLT": [1.0, 2.0], "TEST_TXT": "@@", "UNITS_IN": "x@@", "C_HLMFMT": "@@"},
    {"type": "FTR", "TEST_NUM": 1, "RTN_INDX": [1, 2], "RTN_STAT": [3, 4],
     "PGM_INDX": [5], "PGM_STAT": [6], "FAIL_PIN": b"\xff\xfe", "VECT_NAM": "@@",
     "RSLT_TXT": "r@@", "SPIN_MAP": b"\xc3\xbc"},
    {"type": "SDR", "SITE_CNT": 2, "SITE_NUM": [0, 1], "HAND_ID": "@@", "EXTR_ID": "@@"},
    {"type": "SBR", "SBIN_NUM": 1, "SBIN_CNT": 0xC3BC, "SBIN_PF": "~", "SBIN_NAM": "@@"},
])
def test_ascii_patch_finds_the_text_of_any_record(rec, endian) -> None:
    """UTF-8 text in the body of an old record is found after arrays and bit fields;
    only text bytes change (numbers and bit fields that hold high bytes are kept)."""
    data = bytearray(encode(rec, endian))
    old = bytes(data).replace(b"@@", "\u00fc".encode()).replace(b"~", b"\xe9")
    [raw] = list(R.iter_records(old, endian))
    patched = R.ascii_patch(raw, endian)
    assert patched is not None and len(patched) == len(raw.body)
    expected = bytes(data).replace(b"@@", b"??").replace(b"~", b"?")[4:]
    assert patched == expected
    [clean] = list(R.iter_records(bytes(data[:4]) + patched, endian))
    assert R.ascii_patch(clean, endian) is None


# -- the lot and the codec ------------------------------------------------------------------


@pytest.mark.parametrize("test_t,expected", [
    (math.inf, U4_MAX), (-math.inf, 0), (math.nan, None), (-5, 0), (2 ** 40, U4_MAX),
    (12.6, 13), ("12", None), (12, 12),
])
def test_lot_takes_any_test_time(test_t, expected) -> None:
    lot = Lot(make_job(), SITES, "SCT-81-1F")
    outcome = lot.add_result("1", result("1", 1, "P1", test_t=test_t))
    assert outcome.test_time_ms == expected
    stats = lot.summary()["test_time_ms"]
    assert stats["count"] == (0 if expected is None else 1)
    json.dumps(lot.summary(), allow_nan=False)


def _result_payload(prr_fields: dict) -> bytes:
    recs = result("1", 1, "P1")
    recs[-1].update(prr_fields)
    return json.dumps({"type": "testresult", "payload": recs}).encode()


@pytest.mark.parametrize("field,value", [
    ("SOFT_BIN", 70000), ("SOFT_BIN", -1), ("SOFT_BIN", 1.0), ("SOFT_BIN", "1"),
    ("SOFT_BIN", True), ("SOFT_BIN", math.inf), ("SOFT_BIN", math.nan),
    ("HARD_BIN", 65536), ("HARD_BIN", -math.inf), ("HARD_BIN", [1]),
])
def test_codec_refuses_a_bin_stdf_cannot_hold(field, value) -> None:
    codec = Codec("SCT-81-1F", SITES)
    with pytest.raises(ProtocolError) as info:
        codec.decode(codec.topics.testapp_testresult("1"), _result_payload({field: value}))
    err = info.value
    assert (err.kind, err.site, err.field) == ("malformed", "1", f"payload[2].{field}")
    assert "0..65535" in err.reason


def test_codec_takes_bins_in_range_and_a_missing_hard_bin() -> None:
    codec = Codec("SCT-81-1F", SITES)
    topic = codec.topics.testapp_testresult("1")
    for fields in ({"SOFT_BIN": 65535, "HARD_BIN": 0}, {"HARD_BIN": None}):
        msg = codec.decode(topic, _result_payload(fields))
        assert msg.prr["SOFT_BIN"] == fields.get("SOFT_BIN", 1)
    # non-finite values elsewhere are not the codec's business: the writer handles them
    msg = codec.decode(topic, _result_payload({"TEST_T": math.inf, "HEAD_NUM": 300}))
    assert msg.prr["TEST_T"] == math.inf


# -- through the cell ------------------------------------------------------------------------


def _raw_result(site: str, part_id: str, **prr_fields) -> bytes:
    recs = hostile_part(site, part_id)
    recs[-1].update(prr_fields)
    return json.dumps({"type": "testresult", "payload": recs}).encode()


def test_cell_answers_and_writes_a_part_with_infinite_test_time(tmp_path) -> None:
    h = Harness(tmp_path)
    h.to_ready()
    h.next()
    for s in h.sites:
        h.testapp(s, "testing")
    sent = len(h.pub.sent)
    for s in h.sites:
        h.testapp(s, "idle")
        h.mqtt(f"TestApp/testresult/site{s}", _raw_result(s, f"P{s}"))
    assert b"Infinity" in _raw_result("0", "P0")
    assert h.state == "ready", h.cell.error_message_text
    [response] = h.responses(h.pub.sent[sent:])
    assert [e["siteid"] for e in response["payload"]["sites"]] == list(h.sites)
    h.handler("unload")
    for s in h.sites:
        h.control(s, "idle")
    got = read_stdf(h.cell.datalog.path)
    assert [f["PART_ID"] for n, f in got if n == "PRR"] == [f"P{s}" for s in h.sites]
    assert got[-1][0] == "MRR"


def test_cell_refuses_an_unwritable_bin_before_the_response(tmp_path) -> None:
    h = Harness(tmp_path)
    h.to_ready()
    h.next()
    for s in h.sites:
        h.testapp(s, "testing")
    sent = len(h.pub.sent)
    for s in h.sites:
        h.testapp(s, "idle")
        h.mqtt(f"TestApp/testresult/site{s}",
               _raw_result(s, f"P{s}", SOFT_BIN=70000 if s == "2" else 1))
    assert h.state == "softerror"
    assert "site 2 sent a malformed test result" in h.cell.error_message_text
    assert h.responses(h.pub.sent[sent:]) == []


def test_cell_long_softerror_reason_still_ends_with_mrr(tmp_path) -> None:
    h = Harness(tmp_path)
    h.to_ready()
    h.run_part()
    h.mqtt("Control/status/site1", {
        "type": "status", "interface_version": 1, "software_version": 1,
        "payload": {"state": "error", "error_message": "Versorgung \u00fcberlastet " * 20}})
    assert h.state in ("softerror", "error")
    assert len(h.cell.error_message_text.encode()) > 255
    h.handler("reset")
    got = read_stdf(h.cell.datalog.path)
    assert h.cell.datalog.finalised and got[-1][0] == "MRR"
    exc = got[-1][1]["EXC_DESC"]
    assert exc.startswith("aborted: ") and exc.endswith("...") and len(exc) == 255
