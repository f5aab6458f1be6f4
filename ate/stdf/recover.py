"""Completing datalogs left unfinished by a crash of the master (protocol 7.4).

A datalog is unfinished when its last complete record is not an MRR. Recovery keeps the
header and every complete part (PIR … PRR), cuts off a torn last record, an incomplete
part and any partial footer, rebuilds SBR, HBR, TSR and PCR from the kept PRRs (names
and TSRs salvaged from a partial footer where there was one) and appends an MRR with
``EXC_DESC`` "recovered after master restart". Both byte orders are read and the footer
is written in the file's own order. Complete files are never touched.

Everything written is readable by STDF readers: the footer goes through the total
encoder (salvaged names and TSRs made ASCII and short), and non-ASCII bytes in the text
of the kept records (a file cut before text was made ASCII) are replaced by ``?`` in
place.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Sequence

from ate.stdf.records import (
    Fixes,
    RawRecord,
    ascii_patch,
    decode,
    detect_endian,
    encode,
    iter_records,
)
from ate.stdf.summary import (
    BinRow,
    Tally,
    footer_records,
    is_abort_bin,
    is_good_bin,
    summary_text,
)

__all__ = ["recover_directory", "recover_file", "RECOVERED"]

RECOVERED = "recovered after master restart"
_FOOTER = {"SBR", "HBR", "TSR", "PCR", "MRR"}
_MISSING_COORD = -32768
# Text that is not ASCII came from str.encode("utf-8"): a lead byte and a continuation
# byte. A record without that pair anywhere is not walked (a C-speed search; most
# records are skipped).
_UTF8_PAIR = re.compile(rb"[\xc2-\xf4][\x80-\xbf]")


#: the bin table of a lot's job, by lot number (for the names in a repaired footer)
BinsFor = Callable[[str], Sequence[BinRow]]


def recover_directory(directory: str, bins_for: BinsFor | None = None) -> list[str]:
    """Repair every unfinished ``*.stdf`` file in ``directory``; return log lines.

    ``bins_for(lot_number)`` gives the job's bin table of the lot named in a file's MIR:
    the repaired SBR/HBR and the summary then carry its bin names and groups (a table
    that cannot be had, or raises, leaves them empty)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as err:
        return [f"datalog recovery: cannot list {directory}: {err}"]
    lines = []
    for name in names:
        path = os.path.join(directory, name)
        if not name.endswith(".stdf") or not os.path.isfile(path):
            continue
        try:
            line = recover_file(path, bins_for)
        except (OSError, ValueError) as err:
            line = f"{path}: not recovered: {err}"
        if line:
            lines.append(line)
    return lines


def _part_key(prr: dict[str, Any], seq: int) -> str:
    pid = prr.get("PART_ID")
    if pid:
        return pid
    x, y = prr.get("X_COORD"), prr.get("Y_COORD")
    if x is not None and y is not None and x != _MISSING_COORD and y != _MISSING_COORD:
        return f"{x}x{y}"
    return f"site{prr.get('SITE_NUM')}-{seq}"


def _minimal_header(path: str, stamp: int, endian: str, need_far: bool,
                    fixes: Fixes) -> bytes:
    """FAR (if needed) and a MIR made from the file name, for a file cut in its header."""
    stem = os.path.basename(path)[:-5]
    parts = stem.split("_")
    lot = parts[0]
    device = "_".join(parts[1:-1]) if len(parts) > 2 else ""
    out = b""
    if need_far:
        out += encode({"type": "FAR", "CPU_TYPE": 2 if endian == "<" else 1,
                       "STDF_VER": 4}, endian)
    out += encode({"type": "MIR", "SETUP_T": stamp, "START_T": stamp, "STAT_NUM": 0,
                   "MODE_COD": "P", "LOT_ID": lot, "JOB_NAM": lot,
                   "NODE_NAM": f"{device}.Master" if device else "",
                   "EXEC_TYP": "ate-master"}, endian, fixes)
    return out


def recover_file(path: str, bins_for: BinsFor | None = None) -> str | None:
    """Repair one datalog if it is unfinished; return a log line, or None if complete."""
    with open(path, "r+b") as fh:
        data = fh.read()
        stamp = int(os.fstat(fh.fileno()).st_mtime)
        if len(data) < 6:
            endian = "<"
            records: list[RawRecord] = []
        else:
            try:
                endian = detect_endian(data[:6])
            except ValueError:
                return f"{path}: not an STDF file, left as is"
            records = list(iter_records(data, endian))
        if records and records[-1].name == "MRR":
            return None

        keep_end = 0
        seen: set[str] = set()
        open_parts: set[tuple[Any, Any]] = set()  # (HEAD_NUM, SITE_NUM) as decoded
        pending: list[dict[str, Any]] = []
        kept: list[dict[str, Any]] = []
        sites: list[str] = []
        sbin_names: dict[int, str] = {}
        hbin_names: dict[int, str] = {}
        tsrs: list[dict[str, Any]] = []
        mir: dict[str, Any] = {}
        in_footer = False
        for raw in records:
            name = raw.name
            if name in _FOOTER:
                in_footer = True
                rec = decode(raw, endian)
                if name == "SBR" and rec.get("SBIN_NUM") is not None:
                    sbin_names.setdefault(rec["SBIN_NUM"], rec.get("SBIN_NAM") or "")
                elif name == "HBR" and rec.get("HBIN_NUM") is not None:
                    hbin_names.setdefault(rec["HBIN_NUM"], rec.get("HBIN_NAM") or "")
                elif name == "TSR" and rec.get("HEAD_NUM") != 255:
                    tsrs.append(rec)
                continue
            if in_footer:
                break  # nothing but footer records may follow the footer
            if name == "PIR":
                rec = decode(raw, endian)
                open_parts.add((rec.get("HEAD_NUM"), rec.get("SITE_NUM")))
            elif name == "PRR":
                rec = decode(raw, endian)
                open_parts.discard((rec.get("HEAD_NUM"), rec.get("SITE_NUM")))
                pending.append(rec)
            elif name == "SDR":
                rec = decode(raw, endian)
                sites = [str(s) for s in rec.get("SITE_NUM") or ()]
            elif name == "MIR":
                mir = decode(raw, endian)
            if name:
                seen.add(name)
            if not open_parts:
                keep_end = raw.end
                kept.extend(pending)
                pending.clear()

        fixes = Fixes()
        head = b""
        if "MIR" not in seen:
            head = _minimal_header(path, stamp, endian, need_far="FAR" not in seen,
                                   fixes=fixes)
            if "FAR" not in seen:
                keep_end = 0
        patches = []
        for raw in records:
            if raw.end > keep_end:
                break
            if _UTF8_PAIR.search(raw.body) is None:
                continue
            body = ascii_patch(raw, endian)
            if body is not None:
                patches.append((raw.offset + 4, body))

        tally = Tally()
        parts: dict[str, tuple[str, int, int, int]] = {}
        for seq, prr in enumerate(kept, 1):
            key = _part_key(prr, seq)
            site = str(prr.get("SITE_NUM"))
            soft, hard = prr.get("SOFT_BIN") or 0, prr.get("HARD_BIN") or 0
            old = parts.get(key)
            retests = 0
            if old is not None:
                tally.add(old[0], old[1], old[2], old[3], -1)
                retests = old[3] + 1
            parts[key] = (site, soft, hard, retests)
            tally.add(site, soft, hard, retests, 1)
        table = _job_bins(bins_for, str(mir.get("LOT_ID") or ""))
        footer = footer_records(sites, tally, table, tsrs, sbin_names=sbin_names,
                                hbin_names=hbin_names)
        footer.append({"type": "MRR", "FINISH_T": stamp, "DISP_COD": " ",
                       "USR_DESC": "", "EXC_DESC": RECOVERED})
        tail = head + b"".join(encode(rec, endian, fixes) for rec in footer)

        for offset, body in patches:
            fh.seek(offset)
            fh.write(body)
        fh.seek(keep_end)
        fh.truncate()
        fh.write(tail)
        fh.flush()
        os.fsync(fh.fileno())
    dropped = len(data) - keep_end
    summary = _summary(path, mir, sites, tally, kept, parts, stamp, fixes, table)
    summary_note = _write_summaries(path, summary)
    rebuilt = "rebuilt header, " if head else ""
    ascii_note = (f", replaced non-ASCII text bytes by '?' in {len(patches)} record(s)"
                  if patches else "")
    fixed_note = (f", made {fixes.total} footer field(s) writable "
                  f"({', '.join(fixes.counts)})" if fixes else "")
    return (f"{path}: {RECOVERED}: kept {len(kept)} complete part result(s), "
            f"dropped {dropped} byte(s) from offset {keep_end}, {rebuilt}"
            f"appended {len(footer) - 1} summary record(s) and MRR{ascii_note}{fixed_note}"
            f"{summary_note}")


def _job_bins(bins_for: BinsFor | None, lot: str) -> tuple[BinRow, ...]:
    if bins_for is None or not lot:
        return ()
    try:
        return tuple(bins_for(lot))
    except Exception:  # no job for that lot any more, or a broken one: names stay empty
        return ()


def _summary(path: str, mir: dict[str, Any], sites: list[str], tally: Tally,
             kept: list[dict[str, Any]], parts: dict[str, tuple[str, int, int, int]],
             stamp: int, fixes: Fixes, table: Sequence[BinRow] = ()) -> dict[str, Any]:
    """The lot summary of a repaired file, in the shape of ``Lot.summary()``, from its
    PRRs; bin names and groups from the job's ``table`` (empty without one)."""
    named = {entry.sbin: entry for entry in table}
    hnames: dict[int, str] = {}
    for entry in table:
        hnames.setdefault(entry.hbin, entry.group)
    all_sites = tally.sites(sites)
    total = len(parts)

    def row(site: str, members: list[str]) -> dict[str, Any]:
        n = sum(tally.parts.get(s, 0) for s in members)
        good = sum(c for (s, sb), c in tally.sbin.items() if s in members and is_good_bin(sb))
        aborted = sum(c for (s, sb), c in tally.sbin.items()
                      if s in members and is_abort_bin(sb))
        return {"site": site, "parts": n, "good": good, "fail": n - good, "aborted": aborted,
                "retests": sum(tally.retests.get(s, 0) for s in members),
                "yield_percent": good / n * 100.0 if n else 0.0}

    hbin_of = {sb: hb for (sb, hb) in sorted(tally.pairs)}
    bins = []
    for sb in sorted({sb for (_, sb) in tally.sbin}):
        counts = {s: tally.sbin.get((s, sb), 0) for s in all_sites}
        n = sum(counts.values())
        known = named.get(sb)
        bins.append({"sbin": sb, "hbin": hbin_of.get(sb),
                     "name": known.name if known else "", "group": known.group if known else "",
                     "counts": counts, "total": n,
                     "percent": n / total * 100.0 if total else 0.0})
    hard: dict[int, int] = {}
    for (_, hb), n in tally.hbin.items():
        hard[hb] = hard.get(hb, 0) + n
    times = [t for t in (p.get("TEST_T") for p in kept) if isinstance(t, int)]
    test_time = ({"count": len(times), "min": min(times), "max": max(times),
                  "mean": sum(times) / len(times)} if times
                 else {"count": 0, "min": None, "mean": None, "max": None})
    node = str(mir.get("NODE_NAM") or "")
    return {
        "lot": str(mir.get("LOT_ID") or ""),
        "device": node[:-len(".Master")] if node.endswith(".Master") else node,
        "part_type": str(mir.get("PART_TYP") or ""),
        "sites": list(sites),
        "parts_tested": len(kept),
        "parts_distinct": total,
        "retests": sum(tally.retests.values()),
        "per_site": [row(s, [s]) for s in all_sites],
        "total": row("-1", all_sites),
        "bins": bins,
        "hard_bins": [{"hbin": hb, "name": hnames.get(hb, ""), "total": n,
                       "percent": n / total * 100.0 if total else 0.0}
                      for hb, n in sorted(hard.items())],
        "test_time_ms": test_time,
        "cycle_time_s": {"count": 0, "min": None, "mean": None, "max": None},
        "datalog": os.path.basename(path),
        "finish_t": stamp,
        "end_reason": RECOVERED,
        "recovered": True,
        "datalog_fixes": dict(fixes.counts),
    }


def _write_summaries(path: str, summary: dict[str, Any]) -> str:
    """``<base>.summary.json`` and ``.summary.txt`` beside a repaired file (never over an
    existing one); returns a note for the log line."""
    base = path[:-5] if path.endswith(".stdf") else path
    notes = []
    for suffix, render in ((".summary.json", lambda: json.dumps(summary, indent=2)),
                           (".summary.txt", lambda: summary_text(summary))):
        try:
            with open(base + suffix, "x", encoding="utf-8") as fh:
                fh.write(render())
        except FileExistsError:
            notes.append(f"{suffix} exists, kept")
        except (OSError, ValueError, TypeError) as err:
            notes.append(f"{suffix} not written: {err}")
    return f"; summaries: {', '.join(notes)}" if notes else "; summary files written"
