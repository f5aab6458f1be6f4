"""Lot summary building blocks shared by the lot, the datalog and crash recovery (pure).

- :class:`Tally` holds the counts of *final* parts (retests replaced) that the STDF footer
  needs; the lot updates it in O(1) per result, recovery rebuilds it from PRRs.
- :func:`footer_records` turns a tally into SBR, HBR, TSR and PCR dicts (protocol 7.4).
- :func:`mir_record` builds the MIR dict (7.4), which is also the web UI ``lotdata``.
- :func:`summary_text` renders a lot summary dict for humans.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Tally",
    "BinRow",
    "footer_records",
    "tsr_totals",
    "mir_record",
    "summary_text",
    "is_good_bin",
    "is_abort_bin",
    "MIR_FIELDS",
]

MIR_FIELDS = (
    "SETUP_T", "START_T", "STAT_NUM", "MODE_COD", "RTST_COD", "PROT_COD", "BURN_TIM",
    "CMOD_COD", "LOT_ID", "PART_TYP", "NODE_NAM", "TSTR_TYP", "JOB_NAM", "JOB_REV",
    "SBLOT_ID", "OPER_NAM", "EXEC_TYP", "EXEC_VER", "TEST_COD", "TST_TEMP", "USER_TXT",
    "AUX_FILE", "PKG_TYP", "FAMLY_ID", "DATE_COD", "FACIL_ID", "FLOOR_ID", "PROC_ID",
    "OPER_FRQ", "SPEC_NAM", "SPEC_VER", "FLOW_ID", "SETUP_ID", "DSGN_REV", "ENG_ID",
    "ROM_COD", "SERL_NUM", "SUPR_NAM",
)


def is_good_bin(sbin: int) -> bool:
    """Soft bins 1–9 are the Semi-ATE pass grades."""
    return 1 <= sbin <= 9


def is_abort_bin(sbin: int) -> bool:
    """Soft bins 60000–65535 count as aborts in the PCR."""
    return 60000 <= sbin <= 65535


@dataclass(frozen=True, slots=True)
class BinRow:
    """One bin-table entry as the footer sees it (hard bin after any binMap override)."""

    sbin: int
    hbin: int
    name: str
    group: str


def _bump(d: dict, key: Any, delta: int) -> None:
    n = d.get(key, 0) + delta
    if n:
        d[key] = n
    else:
        d.pop(key, None)


@dataclass(slots=True)
class Tally:
    """Counts of final parts per site (site ids are strings)."""

    sbin: dict[tuple[str, int], int] = field(default_factory=dict)   # (site, soft) -> n
    hbin: dict[tuple[str, int], int] = field(default_factory=dict)   # (site, hard) -> n
    pairs: dict[tuple[int, int], int] = field(default_factory=dict)  # (soft, hard) -> n
    parts: dict[str, int] = field(default_factory=dict)              # site -> n
    retests: dict[str, int] = field(default_factory=dict)            # site -> retests

    def add(self, site: str, sbin: int, hbin: int, retests: int, sign: int = 1) -> None:
        """Add (sign +1) or remove (sign -1) one final part."""
        _bump(self.sbin, (site, sbin), sign)
        _bump(self.hbin, (site, hbin), sign)
        _bump(self.pairs, (sbin, hbin), sign)
        _bump(self.parts, site, sign)
        if retests:
            _bump(self.retests, site, sign * retests)

    def sites(self, configured: Sequence[str] = ()) -> list[str]:
        """Configured sites in order, then any other site with parts (numeric order)."""
        known = set(configured)
        extra = sorted((s for s in self.parts if s not in known), key=_site_key)
        return list(configured) + extra


def _site_key(site: str) -> tuple[int, str]:
    try:
        return (int(site), site)
    except ValueError:
        return (1 << 30, site)


def _site_num(site: str) -> int:
    try:
        return int(site)
    except ValueError:
        return 0


def footer_records(
    sites: Sequence[str],
    tally: Tally,
    bins: Sequence[BinRow] = (),
    tsrs: Sequence[Mapping[str, Any]] = (),
    *,
    sbin_names: Mapping[int, str] | None = None,
    hbin_names: Mapping[int, str] | None = None,
) -> list[dict[str, Any]]:
    """SBR, HBR, TSR and PCR record dicts for the end of a datalog (protocol 7.4).

    ``bins`` is the job's bin table in order; ``sbin_names``/``hbin_names`` supply names
    for bins outside it (crash recovery). ``tsrs`` are the TestApps' TSRs in arrival order.
    """
    all_sites = tally.sites(sites)
    table: dict[int, BinRow] = {}
    for row in bins:
        table.setdefault(row.sbin, row)
    snames = {sb: r.name for sb, r in table.items()}
    for sb, name in (sbin_names or {}).items():
        snames.setdefault(sb, name)
    seen_sbins = {sb for (_, sb) in tally.sbin}
    extra = sorted((seen_sbins | set(sbin_names or ())) - set(table))
    sbins = list(table) + extra

    sbin_total: dict[int, int] = {}
    for (_, sb), n in tally.sbin.items():
        sbin_total[sb] = sbin_total.get(sb, 0) + n

    out: list[dict[str, Any]] = []
    for site in all_sites:
        num = _site_num(site)
        for sb in sbins:
            out.append({"type": "SBR", "HEAD_NUM": 0, "SITE_NUM": num, "SBIN_NUM": sb,
                        "SBIN_CNT": tally.sbin.get((site, sb), 0),
                        "SBIN_PF": "P" if is_good_bin(sb) else "F",
                        "SBIN_NAM": snames.get(sb, "")})
    for sb in sbins:
        out.append({"type": "SBR", "HEAD_NUM": 255, "SITE_NUM": 0, "SBIN_NUM": sb,
                    "SBIN_CNT": sbin_total.get(sb, 0),
                    "SBIN_PF": "P" if is_good_bin(sb) else "F",
                    "SBIN_NAM": snames.get(sb, "")})

    # Hard bins: table order of first mapping, then any other seen in PRRs.
    hnames: dict[int, str] = {}
    mapped: dict[int, set[int]] = {}
    for row in table.values():
        hnames.setdefault(row.hbin, row.group)
        mapped.setdefault(row.hbin, set()).add(row.sbin)
    for (sb, hb) in tally.pairs:
        mapped.setdefault(hb, set()).add(sb)
    for hb, name in (hbin_names or {}).items():
        hnames.setdefault(hb, name)
    seen_hbins = {hb for (_, hb) in tally.hbin} | set(hbin_names or ())
    hbins = list(dict.fromkeys(r.hbin for r in table.values()))
    hbins += sorted(seen_hbins - set(hbins))
    hbin_total: dict[int, int] = {}
    for (_, hb), n in tally.hbin.items():
        hbin_total[hb] = hbin_total.get(hb, 0) + n

    def hpf(hb: int) -> str:
        sbs = mapped.get(hb)
        return "P" if sbs and all(is_good_bin(s) for s in sbs) else "F"

    for site in all_sites:
        num = _site_num(site)
        for hb in hbins:
            out.append({"type": "HBR", "HEAD_NUM": 0, "SITE_NUM": num, "HBIN_NUM": hb,
                        "HBIN_CNT": tally.hbin.get((site, hb), 0), "HBIN_PF": hpf(hb),
                        "HBIN_NAM": hnames.get(hb, "")})
    for hb in hbins:
        out.append({"type": "HBR", "HEAD_NUM": 255, "SITE_NUM": 0, "HBIN_NUM": hb,
                    "HBIN_CNT": hbin_total.get(hb, 0), "HBIN_PF": hpf(hb),
                    "HBIN_NAM": hnames.get(hb, "")})

    for tsr in tsrs:
        rec = dict(tsr)
        rec["type"] = "TSR"
        rec.pop("rec_id", None)
        out.append(rec)
    out.extend(tsr_totals(tsrs))

    good_total = abort_total = 0
    for site in all_sites:
        parts = tally.parts.get(site, 0)
        if not parts:
            continue
        good = sum(n for (s, sb), n in tally.sbin.items() if s == site and is_good_bin(sb))
        abrt = sum(n for (s, sb), n in tally.sbin.items() if s == site and is_abort_bin(sb))
        good_total += good
        abort_total += abrt
        out.append({"type": "PCR", "HEAD_NUM": 0, "SITE_NUM": _site_num(site),
                    "PART_CNT": parts, "RTST_CNT": tally.retests.get(site, 0),
                    "ABRT_CNT": abrt, "GOOD_CNT": good, "FUNC_CNT": good})
    out.append({"type": "PCR", "HEAD_NUM": 255, "SITE_NUM": 255,
                "PART_CNT": sum(tally.parts.values()),
                "RTST_CNT": sum(tally.retests.values()),
                "ABRT_CNT": abort_total, "GOOD_CNT": good_total, "FUNC_CNT": good_total})
    return out


_TSR_BITS = {"TEST_MIN": 0x01, "TEST_MAX": 0x02, "TEST_TIM": 0x04, "TST_SUMS": 0x10,
             "TST_SQRS": 0x20}
_U4_MISSING = 4294967295


def _tsr_value(tsr: Mapping[str, Any], name: str) -> float | None:
    """A TSR float field, or None if missing or flagged invalid by OPT_FLAG."""
    value = tsr.get(name)
    flag = tsr.get("OPT_FLAG")
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(flag, int) and flag & _TSR_BITS[name]:
        return None
    return float(value)


def _tsr_count(tsr: Mapping[str, Any], name: str) -> int | None:
    value = tsr.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value == _U4_MISSING:
        return None
    return value


def tsr_totals(tsrs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One HEAD_NUM 255 TSR per TEST_NUM (first-seen order): counts and sums added,
    minimum of TEST_MIN, maximum of TEST_MAX, EXEC_CNT-weighted mean of TEST_TIM."""
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for tsr in tsrs:
        groups.setdefault(tsr.get("TEST_NUM"), []).append(tsr)
    out = []
    for test_num, items in groups.items():
        first = items[0]
        rec: dict[str, Any] = {
            "type": "TSR", "HEAD_NUM": 255, "SITE_NUM": 0,
            "TEST_TYP": first.get("TEST_TYP"), "TEST_NUM": test_num,
            "TEST_NAM": first.get("TEST_NAM"), "SEQ_NAME": first.get("SEQ_NAME"),
            "TEST_LBL": first.get("TEST_LBL"),
        }
        for name in ("EXEC_CNT", "FAIL_CNT", "ALRM_CNT"):
            vals = [v for v in (_tsr_count(t, name) for t in items) if v is not None]
            rec[name] = min(sum(vals), _U4_MISSING - 1) if vals else None
        for name in ("TST_SUMS", "TST_SQRS"):
            fvals = [v for v in (_tsr_value(t, name) for t in items) if v is not None]
            rec[name] = math.fsum(fvals) if fvals else None
        mins = [v for v in (_tsr_value(t, "TEST_MIN") for t in items) if v is not None]
        maxs = [v for v in (_tsr_value(t, "TEST_MAX") for t in items) if v is not None]
        rec["TEST_MIN"] = min(mins) if mins else None
        rec["TEST_MAX"] = max(maxs) if maxs else None
        weighted = wsum = 0.0
        for t in items:
            tim, cnt = _tsr_value(t, "TEST_TIM"), _tsr_count(t, "EXEC_CNT")
            if tim is not None and cnt:
                weighted += tim * cnt
                wsum += cnt
        rec["TEST_TIM"] = weighted / wsum if wsum else None
        rec["OPT_FLAG"] = None  # computed from the missing fields by the encoder
        out.append(rec)
    return out


def mir_record(job: Any, device_id: str, setup_t: float, start_t: float,
               exec_ver: str) -> dict[str, Any]:
    """The MIR of a lot (protocol 7.4) as a dict; also the web UI ``lotdata`` (11.3)."""
    rec: dict[str, Any] = {"REC_LEN": 0, "REC_TYP": 1, "REC_SUB": 10}
    rec.update(dict.fromkeys(MIR_FIELDS))
    rec.update({
        "SETUP_T": int(setup_t), "START_T": int(start_t), "STAT_NUM": 0, "MODE_COD": "P",
        "LOT_ID": job.lot_number, "PART_TYP": job.part_typ,
        "NODE_NAM": f"{device_id}.Master", "TSTR_TYP": "MSCT-81",
        "JOB_NAM": job.lot_number, "SBLOT_ID": job.sblot_id, "OPER_NAM": "sct",
        "EXEC_TYP": "ate-master", "EXEC_VER": exec_ver, "TST_TEMP": job.tst_temp,
        "USER_TXT": job.user_txt, "PKG_TYP": job.pkg_typ,
    })
    rec["rec_id"] = "MIR"
    return rec


def _stat_line(label: str, stats: Mapping[str, Any] | None, unit: str) -> str:
    if not stats or not stats.get("count"):
        return f"{label}: no data"
    return (f"{label}: n={stats['count']} min={stats['min']:.3f}{unit} "
            f"mean={stats['mean']:.3f}{unit} max={stats['max']:.3f}{unit}")


def summary_text(summary: Mapping[str, Any]) -> str:
    """Human-readable rendering of ``Lot.summary()``."""
    lines = [
        f"Lot {summary.get('lot', '')} on {summary.get('device', '')}",
    ]
    if summary.get("datalog"):
        lines.append(f"Datalog: {summary['datalog']}")
    if summary.get("end_reason"):
        lines.append(f"Ended: {summary['end_reason']}")
    lines += [
        f"Parts: {summary.get('parts_distinct', 0)} distinct, "
        f"{summary.get('parts_tested', 0)} results, {summary.get('retests', 0)} retests",
        "",
        "Per site:",
        f"  {'site':>6} {'parts':>8} {'good':>8} {'fail':>8} {'abort':>6} "
        f"{'retest':>7} {'yield%':>7}",
    ]
    for row in list(summary.get("per_site", ())) + [summary.get("total", {})]:
        if not row:
            continue
        lines.append(f"  {row['site']:>6} {row['parts']:>8} {row['good']:>8} "
                     f"{row['fail']:>8} {row['aborted']:>6} {row['retests']:>7} "
                     f"{row['yield_percent']:>7.2f}")
    sites = [r["site"] for r in summary.get("per_site", ())]
    lines += ["", "Soft bins:",
              "  " + f"{'sbin':>6} {'hbin':>5} {'name':<20} {'group':<20} "
              + " ".join(f"{'s' + s:>7}" for s in sites) + f" {'total':>8} {'%':>7}"]
    for b in summary.get("bins", ()):
        hb = "" if b.get("hbin") is None else b["hbin"]
        lines.append("  " + f"{b['sbin']:>6} {hb!s:>5} {b['name'][:20]:<20} "
                     f"{b['group'][:20]:<20} "
                     + " ".join(f"{b['counts'].get(s, 0):>7}" for s in sites)
                     + f" {b['total']:>8} {b['percent']:>7.2f}")
    lines += ["", "Hard bins:"]
    for b in summary.get("hard_bins", ()):
        lines.append(f"  {b['hbin']:>6} {b['name'][:20]:<20} {b['total']:>8} "
                     f"{b['percent']:>7.2f}")
    lines += ["", _stat_line("Test time", summary.get("test_time_ms"), " ms"),
              _stat_line("Cycle time", summary.get("cycle_time_s"), " s")]
    if summary.get("production"):
        from ate.master.production import production_lines
        lines += ["", *production_lines(summary["production"])]
    alarms = summary.get("alarms")
    if alarms or summary.get("ended_held"):
        lines += ["", "Alarms:"]
        for a in alarms or ():
            where = f" site {a['site']}" if a.get("site") is not None else ""
            lines.append(f"  #{a.get('id')} {a.get('name')} ({a.get('kind')}, "
                         f"{a.get('action')}){where} at part {a.get('parts')}: "
                         f"{a.get('message')}")
            if a.get("state") == "released":
                lines.append(f"     released by {a.get('released_by')}: {a.get('comment')}")
        if summary.get("ended_held"):
            lines.append("  the lot ended held")
    fixes = summary.get("datalog_fixes")
    if fixes:
        lines += ["", "Fields made writable in the datalog:"]
        lines += [f"  {n:>8} {kind}" for kind, n in fixes.items()]
    return "\n".join(lines) + "\n"
