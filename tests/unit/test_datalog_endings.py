"""Every way a lot ends leaves a complete STDF file (FAR first, MRR last), read back by
pystdf, the independent reader (issue: 'an STDF datalog that survives anything')."""

from __future__ import annotations

import pytest

from cellharness import Harness
from tests.stdfread import read_stdf


def read(path: str) -> list[tuple[str, dict]]:
    return [(name.capitalize(), fields) for name, fields in read_stdf(path)]


def ended_by_unload(h):
    h.handler("unload")
    for s in h.sites:
        h.control(s, "idle")
    assert h.state == "initialized"
    return ""


def ended_by_crash(h):
    # softerror keeps the file open (later results of the part are still written, §3.6);
    # here the master is stopped while in softerror
    h.testapp("2", "crash")
    assert h.state == "softerror" and not h.cell.datalog.finalised
    h.cell.stop()
    return "aborted: testapp 2 crashed; master stopped"


def ended_by_timeout(h):
    h.next()
    for s in h.sites:
        h.testapp(s, "testing")
    h.testapp("0", "idle")
    h.result("0", "P0")  # received before the timeout: kept
    h.clock.advance(31)
    assert h.state == "softerror" and not h.cell.datalog.finalised
    h.result("1", "P1")  # arrives after the softerror: still written (§3.6)
    h.handler("reset")
    return "aborted: not all sites completed the active test (missing: 1, 2, 3)"


def ended_by_reset(h):
    h.testapp("2", "crash")
    h.handler("reset")
    return "aborted: testapp 2 crashed"


def ended_by_stop(h):
    h.cell.stop()
    return "aborted: master stopped"


@pytest.mark.parametrize("end", [ended_by_unload, ended_by_crash, ended_by_timeout,
                                 ended_by_reset, ended_by_stop])
def test_every_ending_finalises(tmp_path, end):
    h = Harness(tmp_path)
    h.to_ready()
    for i in range(3):
        h.run_part(part_prefix=f"L{i}-")
    reason = end(h)
    path = h.cell.datalog.path
    assert h.cell.datalog.finalised
    records = read(path)
    names = [n for n, _ in records]
    assert names[:3] == ["Far", "Mir", "Sdr"]
    assert names[-1] == "Mrr"
    prrs = [f for n, f in records if n == "Prr"]
    expected = 12 + (2 if end is ended_by_timeout else 0)
    assert len(prrs) == expected
    assert records[-1][1]["EXC_DESC"] == reason
    pcr_total = [f for n, f in records if n == "Pcr" and f["HEAD_NUM"] == 255]
    assert pcr_total and pcr_total[0]["PART_CNT"] == expected
    assert names.index("Sbr") > max(i for i, n in enumerate(names) if n == "Prr")


def test_empty_lot_still_has_header_and_footer(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    ended_by_unload(h)
    names = [n for n, _ in read(h.cell.datalog.path)]
    assert names[:3] == ["Far", "Mir", "Sdr"] and names[-1] == "Mrr"
    assert "Prr" not in names
