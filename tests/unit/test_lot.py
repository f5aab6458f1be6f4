"""Tests for ate.master.lot: part identity, retests, yields, bin table, summaries."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from types import MappingProxyType

import pytest

from ate.master.lot import Lot, PartOutcome

try:
    from ate.jobs.model import BinEntry, Job
except ImportError:  # pragma: no cover - the jobs package is written in parallel
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class BinEntry:  # type: ignore[no-redef]
        sbin: int
        hbin: int
        name: str
        group: str
        description: str

    @dataclass(frozen=True)
    class Job:  # type: ignore[no-redef]
        lot_number: str
        sblot_id: str
        part_typ: str
        pkg_typ: str
        tst_temp: str
        user_txt: str
        testapp_script_path: str
        cwd: str
        testapp_script_args: tuple
        bins: tuple
        path: str

        def groups(self):
            return tuple(dict.fromkeys(e.group for e in self.bins))


BINS = (
    BinEntry(1, 1, "SB_GOOD", "BT_PASS", "Good part, grade A"),
    BinEntry(2, 2, "SB_GOOD_B", "BT_PASS", "Good part, grade B"),
    BinEntry(12, 5, "SB_CONT_OPEN", "BT_FAIL_CONT", "Contact open"),
    BinEntry(13, 5, "SB_CONT_SHORT", "BT_FAIL_CONT", "Contact short"),
    BinEntry(20, 6, "SB_IDD", "BT_FAIL_ELECTRIC", "Supply current"),
    BinEntry(21, 6, "SB_OFFSET", "BT_FAIL_ELECTRIC", "Hall offset"),
    BinEntry(60000, 0, "SB_SMU_ALARM", "BT_ALARM", "SMU alarm"),
)
GROUPS = ("BT_PASS", "BT_FAIL_CONT", "BT_FAIL_ELECTRIC", "BT_ALARM")
HBIN = {b.sbin: b.hbin for b in BINS}
GROUP = {b.sbin: b.group for b in BINS}
SITES = ("0", "1", "2", "3")


def make_job() -> Job:
    return Job(lot_number="306426.001", sblot_id="001", part_typ="HS2CQFN16T7A_FT1A",
               pkg_typ="QF", tst_temp="25", user_txt="FT1 ROOM",
               testapp_script_path="hallsens2_ft1.py", cwd="programs/HALLSENS2/rev1.3",
               testapp_script_args=(), bins=BINS, path="le306426001.xml")


def result(site: str, sbin: int, part_id: str | None = "P1", *, hbin: int | None = None,
           x: int | None = None, y: int | None = None, test_t: int | None = 12,
           flag: int | None = None) -> list[dict]:
    """One TestApp result for a part: PIR, one PTR, PRR."""
    if flag is None:
        flag = 0 if 1 <= sbin <= 9 else 8
    return [
        {"type": "PIR", "HEAD_NUM": 0, "SITE_NUM": int(site)},
        {"type": "PTR", "TEST_NUM": 1000, "HEAD_NUM": 0, "SITE_NUM": int(site),
         "TEST_FLG": 0, "PARM_FLG": 0, "RESULT": 0.5, "TEST_TXT": "t", "ALARM_ID": "",
         "OPT_FLAG": 2, "RES_SCAL": 0, "LLM_SCAL": 0, "HLM_SCAL": 0, "LO_LIMIT": 0.0,
         "HI_LIMIT": 1.0, "UNITS": "V", "C_RESFMT": "%f", "C_LLMFMT": "%f",
         "C_HLMFMT": "%f", "LO_SPEC": 0.0, "HI_SPEC": 1.0},
        {"type": "PRR", "HEAD_NUM": 0, "SITE_NUM": int(site), "PART_FLG": flag,
         "NUM_TEST": 1, "HARD_BIN": HBIN.get(sbin, 99) if hbin is None else hbin,
         "SOFT_BIN": sbin, "X_COORD": x, "Y_COORD": y, "TEST_T": test_t,
         "PART_ID": part_id, "PART_TXT": "", "PART_FIX": None},
    ]


@pytest.fixture
def lot() -> Lot:
    return Lot(make_job(), SITES, "SCT-81-1F")


def test_empty_lot_payloads(lot: Lot) -> None:
    assert lot.yields() == []
    table = lot.bintable()
    assert [row["sBin"] for row in table] == [b.sbin for b in BINS]
    assert table[2] == {"name": "SB_CONT_OPEN", "sBin": 12, "hBin": 5,
                        "type": "BT_FAIL_CONT",
                        "siteCounts": [{"siteId": s, "count": 0} for s in SITES]}
    assert lot.parts_tested == 0 and lot.parts_distinct == 0
    assert lot.last_results() == []


def test_add_result_outcome(lot: Lot) -> None:
    out = lot.add_result("2", result("2", 12, "P102", test_t=17))
    assert out == PartOutcome(site="2", part_id="P102", soft_bin=12, hard_bin=5,
                              passed=False, retest=False, unknown_soft_bin=False,
                              test_time_ms=17)
    good = lot.add_result("0", result("0", 1, "P100"))
    assert good.passed and not good.retest


def test_yields_match_protocol_example_shape(lot: Lot) -> None:
    for i, sbin in enumerate((1, 1, 1, 1, 12)):
        lot.add_result("0", result("0", sbin, f"A{i}"))
    lot.add_result("1", result("1", 20, "B0"))
    rows = lot.yields()
    site0 = [r for r in rows if r["siteid"] == "0"]
    assert site0 == [
        {"name": "BT_PASS", "siteid": "0", "value": 80.0, "count": 4},
        {"name": "BT_FAIL_CONT", "siteid": "0", "value": 20.0, "count": 1},
        {"name": "BT_FAIL_ELECTRIC", "siteid": "0", "value": 0.0, "count": 0},
        {"name": "BT_ALARM", "siteid": "0", "value": 0.0, "count": 0},
        {"name": "sum", "siteid": "0", "value": 100.0, "count": 5},
    ]
    # Sites without results are absent; the total "-1" comes last.
    assert [r["siteid"] for r in rows] == ["0"] * 5 + ["1"] * 5 + ["-1"] * 5
    total = {r["name"]: r["count"] for r in rows if r["siteid"] == "-1"}
    assert total == {"BT_PASS": 4, "BT_FAIL_CONT": 1, "BT_FAIL_ELECTRIC": 1,
                     "BT_ALARM": 0, "sum": 6}
    assert all(isinstance(r["value"], float) for r in rows)


def test_retest_replaces_previous_result_on_any_site(lot: Lot) -> None:
    lot.add_result("0", result("0", 12, "P1"))
    out = lot.add_result("3", result("3", 1, "P1"))
    assert out.retest
    assert lot.parts_tested == 2 and lot.parts_distinct == 1
    assert [r["siteid"] for r in lot.yields()][0] == "3"
    table = {row["sBin"]: row for row in lot.bintable()}
    assert table[12]["siteCounts"][0]["count"] == 0
    assert table[1]["siteCounts"][3]["count"] == 1
    pcr = [r for r in lot.summary_records() if r["type"] == "PCR"]
    assert pcr == [
        {"type": "PCR", "HEAD_NUM": 0, "SITE_NUM": 3, "PART_CNT": 1, "RTST_CNT": 1,
         "ABRT_CNT": 0, "GOOD_CNT": 1, "FUNC_CNT": 1},
        {"type": "PCR", "HEAD_NUM": 255, "SITE_NUM": 255, "PART_CNT": 1, "RTST_CNT": 1,
         "ABRT_CNT": 0, "GOOD_CNT": 1, "FUNC_CNT": 1},
    ]
    # Both results are kept for the UI.
    assert len(lot.last_results()) == 2


def test_part_identity_rules(lot: Lot) -> None:
    assert lot.add_result("0", result("0", 1, "", x=3, y=4)).part_id == "3x4"
    assert lot.add_result("1", result("1", 1, None, x=3, y=4)).retest
    out = lot.add_result("2", result("2", 1, None))
    assert out.part_id == "site2-3"
    assert out.warnings and "site 2" in out.warnings[0]
    out2 = lot.add_result("2", result("2", 1, None))
    assert out2.part_id == "site2-4" and not out2.retest


@pytest.mark.parametrize("site,records,message", [
    ("7", result("0", 1), "site '7' is not configured"),
    ("0", result("0", 1)[:2], "exactly one PRR, found 0"),
    ("0", result("0", 1) + result("0", 1)[2:], "exactly one PRR, found 2"),
    ("0", "PRR", "list of records"),
])
def test_bad_results_raise_and_count_nothing(lot: Lot, site, records, message) -> None:
    with pytest.raises(ValueError, match=message):
        lot.add_result(site, records)
    assert lot.parts_tested == 0 and lot.yields() == []


def test_records_of_any_sequence_and_mapping_type_count_as_lists_of_dicts(lot: Lot) -> None:
    """The fast paths for lists, tuples and dicts take nothing else away: a tuple or
    another Sequence of records, and records that are other Mappings, count the same."""
    class Records(Sequence):
        def __init__(self, items):
            self.items = list(items)

        def __getitem__(self, i):
            return self.items[i]

        def __len__(self):
            return len(self.items)

    as_list = lot.add_result("0", result("0", 12, "a"))
    as_tuple = lot.add_result("1", tuple(result("1", 12, "b")))
    as_proxies = lot.add_result("2", Records(MappingProxyType(r) for r in result("2", 12, "c")))
    for out, site in ((as_list, "0"), (as_tuple, "1"), (as_proxies, "2")):
        assert (out.site, out.soft_bin, out.hard_bin, out.passed) == (site, 12, 5, False)
    two_prrs = [MappingProxyType(r) for r in result("3", 1) + result("3", 1)[2:]]
    with pytest.raises(ValueError, match="exactly one PRR, found 2"):
        lot.add_result("3", tuple(two_prrs))
    for records in (b"PRR", {"type": "PRR"}, 7):
        with pytest.raises(ValueError, match="list of records"):
            lot.add_result("3", records)
    assert lot.parts_tested == 3


@pytest.mark.parametrize("sbin", [None, "12", -1, 70000, 1.5, True])
def test_bad_soft_bin(lot: Lot, sbin) -> None:
    recs = result("0", 1)
    recs[-1]["SOFT_BIN"] = sbin
    with pytest.raises(ValueError, match="SOFT_BIN"):
        lot.add_result("0", recs)
    assert lot.parts_tested == 0


def test_unknown_soft_bin_is_counted_and_flagged(lot: Lot) -> None:
    out = lot.add_result("1", result("1", 77, "Q", hbin=9))
    assert out.unknown_soft_bin and out.hard_bin == 9
    sbr = [r for r in lot.summary_records() if r["type"] == "SBR"]
    extra = [r for r in sbr if r["SBIN_NUM"] == 77]
    assert len(extra) == len(SITES) + 1
    assert all(r["SBIN_NAM"] == "" and r["SBIN_PF"] == "F" for r in extra)
    assert [r["SBIN_CNT"] for r in extra] == [0, 1, 0, 0, 1]


def test_passed_follows_part_flag(lot: Lot) -> None:
    assert not lot.add_result("0", result("0", 1, "a", flag=8)).passed
    assert lot.add_result("0", result("0", 12, "b", flag=0)).passed
    # Bit 4 (pass/fail invalid): judged by the grade.
    assert not lot.add_result("0", result("0", 12, "c", flag=0x10)).passed
    assert lot.add_result("0", result("0", 2, "d", flag=0x18)).passed


def test_set_hbin(lot: Lot) -> None:
    lot.set_hbin(12, 7)
    assert {r["sBin"]: r["hBin"] for r in lot.bintable()}[12] == 7
    with pytest.raises(KeyError, match="soft bin 99"):
        lot.set_hbin(99, 1)
    for bad in (-1, 65536, "7", 2.0):
        with pytest.raises(ValueError, match="hard bin"):
            lot.set_hbin(12, bad)
    # HBR: hard bin 7 now named after the group of the first soft bin mapped to it.
    hbr = {(r["HEAD_NUM"], r["SITE_NUM"], r["HBIN_NUM"]): r
           for r in lot.summary_records() if r["type"] == "HBR"}
    assert hbr[(255, 0, 7)]["HBIN_NAM"] == "BT_FAIL_CONT"
    assert hbr[(255, 0, 7)]["HBIN_PF"] == "F"


def test_keep_last_bounds_results() -> None:
    lot = Lot(make_job(), SITES, "D", keep_last=3)
    for i in range(5):
        lot.add_result("0", result("0", 1, f"P{i}"))
    kept = lot.last_results()
    assert [r[-1]["PART_ID"] for r in kept] == ["P2", "P3", "P4"]


def test_mir_is_lotdata(lot: Lot) -> None:
    mir = lot.mir(1795544990, 1795545000, "0.1.0")
    assert mir["rec_id"] == "MIR" and mir["REC_TYP"] == 1 and mir["REC_SUB"] == 10
    assert mir["SETUP_T"] == 1795544990 and mir["START_T"] == 1795545000
    assert mir["LOT_ID"] == "306426.001" and mir["JOB_NAM"] == "306426.001"
    assert mir["PART_TYP"] == "HS2CQFN16T7A_FT1A" and mir["SBLOT_ID"] == "001"
    assert mir["NODE_NAM"] == "SCT-81-1F.Master" and mir["TSTR_TYP"] == "MSCT-81"
    assert mir["OPER_NAM"] == "sct" and mir["MODE_COD"] == "P" and mir["STAT_NUM"] == 0
    assert mir["EXEC_TYP"] == "ate-master" and mir["EXEC_VER"] == "0.1.0"
    assert (mir["TST_TEMP"], mir["USER_TXT"], mir["PKG_TYP"]) == ("25", "FT1 ROOM", "QF")
    assert mir["FAMLY_ID"] is None and mir["SUPR_NAM"] is None
    json.dumps(mir)


def test_summary_stats(lot: Lot) -> None:
    lot.add_result("0", result("0", 1, "a", test_t=10))
    lot.add_result("1", result("1", 12, "b", test_t=30))
    lot.add_result("1", result("1", 60000, "a", test_t=20))
    lot.note_cycle(0.5)
    lot.note_cycle(1.5)
    s = lot.summary()
    json.dumps(s, allow_nan=False)
    assert s["test_time_ms"] == {"count": 3, "min": 10.0, "mean": 20.0, "max": 30.0}
    assert s["cycle_time_s"] == {"count": 2, "min": 0.5, "mean": 1.0, "max": 1.5}
    assert s["parts_tested"] == 3 and s["parts_distinct"] == 2 and s["retests"] == 1
    assert s["total"] == {"site": "-1", "parts": 2, "good": 0, "fail": 2, "aborted": 1,
                          "retests": 1, "yield_percent": 0.0}
    bins = {b["sbin"]: b for b in s["bins"]}
    assert bins[60000]["total"] == 1 and bins[60000]["percent"] == 50.0
    assert bins[60000]["counts"] == {"0": 0, "1": 1, "2": 0, "3": 0}


def test_random_lot_with_retests_matches_ground_truth() -> None:
    """10 000 results with retests: every count equals an independent recount."""
    rng = random.Random(4711)
    lot = Lot(make_job(), SITES, "SCT-81-1F")
    sbins = [b.sbin for b in BINS]
    final: dict[str, tuple[str, int]] = {}
    retests: Counter[str] = Counter()
    for i in range(10_000):
        if final and rng.random() < 0.15:
            pid = rng.choice(list(final)) if i % 7 else next(iter(final))
            retests[pid] += 1
        else:
            pid = f"P{i}"
        site = rng.choice(SITES)
        sbin = rng.choice(sbins)
        out = lot.add_result(site, result(site, sbin, pid))
        assert out.retest == (pid in final)
        final[pid] = (site, sbin)

    assert lot.parts_tested == 10_000
    assert lot.parts_distinct == len(final)

    per_site_bin = Counter(final.values())
    per_site = Counter(site for site, _ in final.values())
    for row in lot.bintable():
        assert [c["count"] for c in row["siteCounts"]] == [
            per_site_bin[(s, row["sBin"])] for s in SITES]

    expected_yields = []
    for site in list(SITES) + ["-1"]:
        members = [sb for s, sb in final.values() if site in ("-1", s)]
        groups = Counter(GROUP[sb] for sb in members)
        for g in GROUPS:
            expected_yields.append({"name": g, "siteid": site, "count": groups[g],
                                    "value": groups[g] / len(members) * 100.0})
        expected_yields.append({"name": "sum", "siteid": site, "count": len(members),
                                "value": 100.0})
    got = lot.yields()
    assert [(r["name"], r["siteid"], r["count"]) for r in got] == [
        (r["name"], r["siteid"], r["count"]) for r in expected_yields]
    for a, b in zip(got, expected_yields, strict=True):
        assert a["value"] == pytest.approx(b["value"])

    records = lot.summary_records()
    pcr = {(r["HEAD_NUM"], r["SITE_NUM"]): r for r in records if r["type"] == "PCR"}
    for site in SITES:
        ids = [p for p, (s, _) in final.items() if s == site]
        row = pcr[(0, int(site))]
        assert row["PART_CNT"] == per_site[site]
        assert row["RTST_CNT"] == sum(retests[p] for p in ids)
        assert row["GOOD_CNT"] == sum(1 for p in ids if final[p][1] in (1, 2))
        assert row["ABRT_CNT"] == sum(1 for p in ids if final[p][1] == 60000)
    assert pcr[(255, 255)]["PART_CNT"] == len(final)
    assert pcr[(255, 255)]["RTST_CNT"] == sum(retests.values())

    hbr = {(r["HEAD_NUM"], r["SITE_NUM"], r["HBIN_NUM"]): r["HBIN_CNT"]
           for r in records if r["type"] == "HBR"}
    hard = Counter((s, HBIN[sb]) for s, sb in final.values())
    for (s, hb), n in hard.items():
        assert hbr[(0, int(s), hb)] == n
    assert hbr[(255, 0, 5)] == sum(n for (s, hb), n in hard.items() if hb == 5)
    # One HBR per distinct hard bin per site, plus the totals.
    assert len(hbr) == 5 * (len(SITES) + 1)
    assert {r["HBIN_NUM"]: r["HBIN_PF"] for r in records if r["type"] == "HBR"} == {
        1: "P", 2: "P", 5: "F", 6: "F", 0: "F"}

    s = lot.summary()
    assert s["total"]["parts"] == len(final)
    assert sum(b["total"] for b in s["bins"]) == len(final)
    # Compact per-part state: one packed int per distinct part (ate.master.partindex).
    assert len(lot._parts) == len(final)
    assert all(type(v) is int for v in lot._parts._recent.values())



def test_last_results_are_bounded_by_bytes_and_huge_ones_keep_pir_and_prr() -> None:
    lot = Lot(make_job(), SITES, "D", keep_last=1000, keep_bytes=10_000, entry_bytes=3_000)
    for i in range(20):
        lot.add_result("0", result("0", 1, f"P{i}"), size=1_000)
    kept = lot.last_results()
    assert [r[-1]["PART_ID"] for r in kept] == [f"P{i}" for i in range(10, 20)]
    big = result("0", 1, "BIG")
    big[1:2] = [big[1]] * 50
    lot.add_result("0", big, size=4 << 20)  # kept as PIR + PRR, counted as 3 000 bytes
    kept = lot.last_results()
    assert [r["type"] for r in kept[-1]] == ["PIR", "PRR"]
    assert [r[-1]["PART_ID"] for r in kept] == [f"P{i}" for i in range(13, 20)] + ["BIG"]
    assert lot.parts_tested == 21
