#!/usr/bin/env python3
"""Lot memory benchmark: RSS over a million parts with the per-part retest index.

    python bench/memory.py [--parts 1000000] [--sites 4] [--index dict,packed,spill]
                           [--bound 20000] [--batch 512] [--filter-bits 8388608]
                           [--retest-every 50] [--directory DIR]

Drives an ``ate.master.lot.Lot`` directly, one site result (PIR, PTR, PRR; the part id
``P<n>``) per part, the sites in turn; every ``--retest-every``-th part retests an earlier
part picked at random (so retests reach parts long moved out of memory).  Each index runs
in its own process, so one's heap does not flatter the next:

``dict``    the index before ``ate.master.partindex``: a dict of 6-tuples (the baseline)
``packed``  ``PartIndex(bound=None)``: every part in the dict, one packed int a part
``spill``   ``PartIndex(bound)``: the newest ``--bound`` parts in the dict, the rest in a
            private SQLite file

Printed per index: RSS (``/proc/self/statm``) at 10k, 50k, 100k, 250k, 500k, 1M parts,
after ``Lot.close()`` + gc, after the lot is dropped + gc and after glibc's
``malloc_trim(0)`` (memory free in the heap, handed back to the system); the growth from
part 10 000 to the end; the time of one ``add_result`` (median, p99, mean, from a fixed
histogram so measuring takes no memory) and the CPU time a part of the whole loop (what
a busy machine's other processes do not inflate); the index file's size and whether close removed
it; and a digest of ``Lot.summary()`` (equal digests: equal counts, yields, bins and
retests).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from ate.jobs.model import BinEntry, Job  # noqa: E402
from ate.master.lot import Lot  # noqa: E402
from ate.master.partindex import (  # noqa: E402
    DEFAULT_BATCH,
    DEFAULT_BOUND,
    DEFAULT_FILTER_BITS,
    PartIndex,
)

CHECKPOINTS = (10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000)
PAGE = os.sysconf("SC_PAGE_SIZE")
BINS = (
    BinEntry(1, 1, "SB_GOOD", "BT_PASS", "Good part"),
    BinEntry(2, 2, "SB_GOOD_B", "BT_PASS", "Good part, grade B"),
    BinEntry(12, 5, "SB_CONT_OPEN", "BT_FAIL_CONT", "Contact open"),
    BinEntry(20, 6, "SB_IDD", "BT_FAIL_ELECTRIC", "Supply current"),
    BinEntry(60000, 0, "SB_SMU_ALARM", "BT_ALARM", "SMU alarm"),
)
SBINS = (1, 1, 1, 1, 1, 1, 2, 2, 12, 20, 60000)
HBIN = {b.sbin: b.hbin for b in BINS}
#: histogram of add_result times: 10 ns buckets up to 1 ms, the last one for the rest
BUCKET_NS = 10
BUCKETS = 100_000


class DictIndex:
    """The index as it was before ``PartIndex``: a dict of (site, head, soft, hard, flag,
    retests) tuples, the plain dict methods bound (no overhead)."""

    def __init__(self) -> None:
        self._parts: dict[str, tuple[int, int, int, int, int, int]] = {}
        self.get = self._parts.get
        self.put = self._parts.__setitem__
        self.path = None

    def __len__(self) -> int:
        return len(self._parts)

    def close(self) -> None:  # the old Lot had nothing to close
        pass


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / (1 << 20)


def trim() -> bool:
    """glibc ``malloc_trim(0)``: what stays after it is held, not just cached by malloc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def make_job() -> Job:
    return Job(lot_number="306426.001", sblot_id="001", part_typ="HS2CQFN16T7A_FT1A",
               pkg_typ="QF", tst_temp="25", user_txt="FT1 ROOM",
               testapp_script_path="hallsens2_ft1.py", cwd="programs/HALLSENS2/rev1.3",
               testapp_script_args=(), bins=BINS, path="le306426001.xml")


def make_index(args: argparse.Namespace):
    if args.index == "dict":
        return DictIndex()
    if args.index == "packed":
        return PartIndex(bound=None)
    return PartIndex(bound=args.bound, batch=args.batch, directory=args.directory,
                     filter_bits=args.filter_bits)


def percentile(hist: array, total: int, q: float) -> float:
    rank = q * (total - 1)
    seen = 0
    for bucket, n in enumerate(hist):
        seen += n
        if seen > rank:
            return (bucket + 0.5) * BUCKET_NS
    return BUCKETS * BUCKET_NS


class Workload:
    """The site results, the same sequence for every index: part ``P<n>``, the sites in
    turn, every ``retest_every``-th part a retest of an earlier part picked at random."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.sites = [str(s) for s in range(args.sites)]
        self.retest_every = args.retest_every
        self.rng = random.Random(4711)
        self.new_parts = 0
        self.done = 0
        self.pir = [{"type": "PIR", "HEAD_NUM": 1, "SITE_NUM": int(s)} for s in self.sites]
        self.ptr = [{"type": "PTR", "TEST_NUM": 1000, "HEAD_NUM": 1, "SITE_NUM": int(s),
                     "TEST_FLG": 0, "PARM_FLG": 0, "RESULT": 0.5, "TEST_TXT": "t"}
                    for s in self.sites]

    def next(self) -> tuple[str, list[dict]]:
        i = self.done
        self.done += 1
        k = i % len(self.sites)
        every = self.retest_every
        if every and i % every == every - 1:
            part_id = f"P{self.rng.randrange(self.new_parts)}"
        else:
            part_id = f"P{self.new_parts}"
            self.new_parts += 1
        sbin = SBINS[i % len(SBINS)]
        prr = {"type": "PRR", "HEAD_NUM": 1, "SITE_NUM": k, "PART_FLG": 0 if sbin < 10 else 8,
               "NUM_TEST": 1, "HARD_BIN": HBIN[sbin], "SOFT_BIN": sbin, "X_COORD": -32768,
               "Y_COORD": -32768, "TEST_T": 10 + i % 7, "PART_ID": part_id}
        return self.sites[k], [self.pir[k], self.ptr[k], prr]


class Timer:
    """add_result times: a fixed histogram (no memory grows), their sum and the CPU."""

    def __init__(self) -> None:
        self.hist = array("Q", bytes(8 * (BUCKETS + 1)))
        self.total_ns = 0
        self.cpu_s = 0.0
        self.n = 0

    def run(self, add, results: list[tuple[str, list[dict]]]) -> None:
        clock, hist = time.perf_counter_ns, self.hist
        cpu0 = time.process_time()
        for site, records in results:
            t0 = clock()
            add(site, records, 300)
            dt = clock() - t0
            self.total_ns += dt
            hist[min(dt // BUCKET_NS, BUCKETS)] += 1
        self.cpu_s += time.process_time() - cpu0
        self.n += len(results)

    def report(self) -> dict:
        n = self.n
        return {"median": percentile(self.hist, n, 0.5),
                "p99": percentile(self.hist, n, 0.99),
                "p999": percentile(self.hist, n, 0.999),
                "mean": self.total_ns / n,
                # CPU of add_result and its timing a part: not inflated by the other
                # processes of a busy machine
                "cpu": self.cpu_s * 1e9 / n}


def child(args: argparse.Namespace) -> dict:
    """One index in its own process: the RSS curve, close, drop."""
    gc.collect()
    report: dict = {"index": args.index, "rss_mb": {"start": rss_mb()}}
    index = make_index(args)
    work = Workload(args)
    lot = Lot(make_job(), work.sites, "SCT-81-1F", part_index=index)
    timer = Timer()
    checkpoints = [c for c in CHECKPOINTS if c < args.parts] + [args.parts]
    for mark in checkpoints:
        while work.done < mark:
            timer.run(lot.add_result, [work.next() for _ in range(min(1000, mark - work.done))])
        report["rss_mb"][str(mark)] = rss_mb()
    report["parts_distinct"] = lot.parts_distinct
    assert lot.parts_distinct == work.new_parts, (lot.parts_distinct, work.new_parts)
    report["in_memory"] = getattr(index, "in_memory", len(index))
    summary = lot.summary()
    digest = json.dumps(summary, sort_keys=True)  # no cycles noted: no times in it
    report["summary_sha1"] = hashlib.sha1(digest.encode()).hexdigest()[:12]
    report["retests"] = summary["retests"]
    path = index.path
    report["file_mb"] = os.path.getsize(path) / (1 << 20) if path else 0.0
    report["file_bytes_per_row"] = (os.path.getsize(path) / index.spilled
                                    if path and index.spilled else None)
    report["problem"] = getattr(index, "problem", None)
    lot.close()
    gc.collect()
    report["rss_mb"]["closed"] = rss_mb()
    report["file_removed"] = path is None or not os.path.exists(path)
    report["dir_removed"] = path is None or not os.path.exists(os.path.dirname(path))
    assert lot.parts_distinct == work.new_parts
    del lot, index
    gc.collect()
    report["rss_mb"]["dropped"] = rss_mb()
    if trim():
        report["rss_mb"]["trimmed"] = rss_mb()
    report["add_result_ns"] = timer.report()
    return report


def timing(args: argparse.Namespace, modes: list[str]) -> dict:
    """Every index in one process, 1000 results each in turn: the same load for all."""
    work = Workload(args)
    lots, timers = [], []
    for mode in modes:
        args.index = mode
        lots.append(Lot(make_job(), work.sites, "SCT-81-1F", part_index=make_index(args)))
        timers.append(Timer())
    while work.done < args.parts:
        chunk = [work.next() for _ in range(min(1000, args.parts - work.done))]
        for lot, timer in zip(lots, timers, strict=True):
            timer.run(lot.add_result, chunk)
    assert len({lot.parts_distinct for lot in lots}) == 1
    for lot in lots:
        lot.close()
    return {mode: timer.report() for mode, timer in zip(modes, timers, strict=True)}


def print_times(title: str, times: dict) -> None:
    print(f"{title}\nadd_result ns   median     p99   p99.9    mean     CPU")
    for mode, t in times.items():
        print(f"{mode:<14}{t['median']:8.0f}{t['p99']:8.0f}{t['p999']:8.0f}{t['mean']:8.0f}"
              f"{t['cpu']:8.0f}")
    modes = list(times)
    base = times[modes[0]]
    for mode in modes[1:]:
        t = times[mode]
        print(f"  {mode} - {modes[0]}: median {t['median'] - base['median']:+.0f}, "
              f"mean {t['mean'] - base['mean']:+.0f}, CPU {t['cpu'] - base['cpu']:+.0f} ns")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", type=int, default=1_000_000)
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--index", default="dict,packed,spill",
                   help="comma-separated: dict (the old dict of tuples), packed, spill")
    p.add_argument("--bound", type=int, default=DEFAULT_BOUND)
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    p.add_argument("--filter-bits", type=int, default=DEFAULT_FILTER_BITS)
    p.add_argument("--retest-every", type=int, default=50,
                   help="every N-th part retests an earlier one (0: no retests)")
    p.add_argument("--directory", default=None,
                   help="where the spill index makes its temporary directory")
    p.add_argument("--no-timing", action="store_true",
                   help="skip the interleaved timing run (the RSS runs only)")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.add_argument("--child", choices=("rss", "timing"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.parts < 1 or args.sites < 1:
        p.error("--parts and --sites must be >= 1")
    modes = args.index.split(",")
    for mode in modes:
        if mode not in ("dict", "packed", "spill"):
            p.error(f"--index: unknown index {mode!r} (dict, packed or spill)")
    if args.child == "rss":
        print(json.dumps(child(args)))
        return
    if args.child == "timing":
        print(json.dumps(timing(args, modes)))
        return

    def run(kind: str, index: str) -> dict:
        argv = [sys.executable, os.path.abspath(__file__), "--child", kind, "--index", index]
        for name in ("parts", "sites", "bound", "batch", "filter_bits", "retest_every"):
            argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        if args.directory:
            argv += ["--directory", args.directory]
        return json.loads(subprocess.run(argv, check=True, capture_output=True,
                                         text=True).stdout)

    reports = [run("rss", mode) for mode in modes]
    times = None if args.no_timing else run("timing", args.index)
    if args.json:
        print(json.dumps({"rss": reports, "timing": times}, indent=2))
        return
    print(f"{args.parts} parts at {args.sites} sites, a retest every {args.retest_every}; "
          f"spill: bound {args.bound}, batch {args.batch}, filter {args.filter_bits} bits")
    keys = list(reports[0]["rss_mb"])
    print("RSS MB  " + "".join(f"{k:>9}" for k in keys) + "   growth 10k->end")
    for r in reports:
        rss = r["rss_mb"]
        growth = rss[str(args.parts)] - rss["10000"] if "10000" in rss else float("nan")
        print(f"{r['index']:<8}" + "".join(f"{rss[k]:9.1f}" for k in keys)
              + f"   {growth:+.1f}")
    for r in reports:
        row = r["file_bytes_per_row"]
        print(f"{r['index']}: {r['parts_distinct']} distinct parts, {r['retests']} retests, "
              f"{r['in_memory']} in memory, summary {r['summary_sha1']}, "
              f"file {r['file_mb']:.1f} MB"
              + (f" ({row:.1f} B/row)" if row else "")
              + f", removed at close: {r['file_removed'] and r['dir_removed']}"
              + (f", problem: {r['problem']}" if r["problem"] else ""))
    print_times("timing, each index in its own process (the RSS runs):",
                {r["index"]: r["add_result_ns"] for r in reports})
    if times is not None:
        print_times("timing, the indexes in one process, 1000 results each in turn:", times)
    if len({r["summary_sha1"] for r in reports}) != 1:
        sys.exit("the indexes disagree on the lot's summary")


if __name__ == "__main__":
    main()
