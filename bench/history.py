"""Lot history (ate.history) call times, for the reactor thread budget.

Run by hand:  python bench/history.py [--lots N] [--dir DIR]

Fills a fresh database with N lots (4 sites, 20 soft bins, 3 part types, 1 in 10 ended
by a reset), then times, each repeated and reported as median / 95th percentile / max
wall time and the median CPU time:

  record        one more lot (summary with start_t, as the master records at lot end)
  record+MIR    one more lot whose summary has no start_t: read from the datalog's MIR
  baseline      baseline(part_type, 20) and baseline(part_type, 500)
  lots          the first page (50), a page further on (before=...), filtered by part type
  lot           one lot with its whole summary
  import        import_summaries() of a directory of 1000 new summary files, and again
                (everything known: nothing parsed)

The target is well under 5 ms per call so that record() and baseline() may run on the
reactor thread at lot end and lot start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet.task import Clock  # noqa: E402

from ate.history import History  # noqa: E402
from ate.jobs.model import Job  # noqa: E402
from ate.stdf.sink import Datalog  # noqa: E402

SITES = ("0", "1", "2", "3")
PART_TYPES = ("HS2CQFN16T7A_FT1A", "HS2CQFN16T7A_FT2A", "LE306426_FT1")
SBINS = tuple(range(1, 21))


def make_summary(i: int, *, start: bool = True) -> dict:
    """A summary of the shape of Lot.summary() (4 sites, 20 soft bins, 6 hard bins)."""
    parts = 4000 + i % 500
    counts = [(parts // 40) * (1 + (sb + i) % 3) for sb in SBINS[1:]]
    counts.insert(0, parts - sum(counts))
    good = counts[0]
    per_site = [{"site": s, "parts": parts // 4, "good": good // 4,
                 "fail": parts // 4 - good // 4, "aborted": 0, "retests": 3,
                 "yield_percent": good / parts * 100} for s in SITES]
    bins = [{"sbin": sb, "hbin": 1 if sb == 1 else 2 + sb % 5, "name": f"SB_{sb}",
             "group": "BT_PASS" if sb == 1 else "BT_FAIL",
             "counts": {s: n // 4 for s in SITES}, "total": n, "percent": n / parts * 100}
            for sb, n in zip(SBINS, counts, strict=True)]
    hard: dict[int, int] = {}
    for b in bins:
        hard[b["hbin"]] = hard.get(b["hbin"], 0) + b["total"]
    finish = 1_790_000_000 + 3600 * i
    out = {
        "lot": f"{300000 + i}.001", "device": "SCT-81-1F",
        "part_type": PART_TYPES[i % len(PART_TYPES)], "sites": list(SITES),
        "parts_tested": parts + 12, "parts_distinct": parts, "retests": 12,
        "per_site": per_site,
        "total": {"site": "-1", "parts": parts, "good": good, "fail": parts - good,
                  "aborted": 0, "retests": 12, "yield_percent": good / parts * 100},
        "bins": bins,
        "hard_bins": [{"hbin": hb, "name": f"HB{hb}", "total": n, "percent": n / parts * 100}
                      for hb, n in sorted(hard.items())],
        "test_time_ms": {"count": parts, "min": 1.0, "mean": 2.5, "max": 9.0},
        "index_time_s": {"count": parts // 4, "min": 0.04, "mean": 0.05, "max": 0.09},
        "datalog": f"{300000 + i}.stdf", "finish_t": finish,
        "end_reason": "aborted: reset" if i % 10 == 9 else "", "datalog_fixes": {},
        "alarms": [], "ended_held": False,
    }
    if start:
        out["start_t"] = finish - 3000
    return out


def stats(samples: list[tuple[float, float]]) -> str:
    """Wall time median / p95 / max, and the median CPU time of this process (on a
    loaded machine the wall p95 and max are mostly waiting for a core)."""
    ms = sorted(w * 1000 for w, _ in samples)
    cpu = statistics.median(c * 1000 for _, c in samples)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return (f"median {statistics.median(ms):7.3f} ms  p95 {p95:7.3f} ms  "
            f"max {ms[-1]:7.3f} ms  cpu median {cpu:7.3f} ms  (n={len(ms)})")


def timed(fn, repeat: int) -> list[tuple[float, float]]:
    out = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        out.append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def header_file(directory: str) -> bytes:
    """The bytes of a real (finished, empty) datalog, for the MIR read."""
    job = Job("300000.001", "001", PART_TYPES[0], "QF", "25", "FT1", "p.py", ".", (), (),
              "job.xml")
    log = Datalog.create(directory, job, "SCT-81-1F", SITES, 1_790_000_000, clock=Clock())

    class _Empty:
        def summary_records(self, tsrs):
            return []

        def summary(self):
            return {"lot": job.lot_number}

    log.finalise(_Empty(), finish_t=1_790_000_600)
    with open(log.path, "rb") as fh:
        return fh.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lots", type=int, default=10_000, help="lots in the database")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="history-bench-", dir=args.dir)
    try:
        run(work, args.lots)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: str, n: int) -> None:
    stdf = os.path.join(work, "stdf")
    os.mkdir(stdf)
    history = History.open(os.path.join(work, "history.sqlite"))
    try:
        t0 = time.perf_counter()
        fill = []
        for i in range(n):
            s = make_summary(i)
            t1, c1 = time.perf_counter(), time.process_time()
            history.record(s, datalog_path=os.path.join(stdf, s["datalog"]))
            fill.append((time.perf_counter() - t1, time.process_time() - c1))
        print(f"filled {n} lots in {time.perf_counter() - t0:.2f} s; "
              f"database {os.path.getsize(history.path) / 1e6:.1f} MB (+WAL)")
        print(f"record (while filling)     {stats(fill)}")
        extra = [make_summary(n + i) for i in range(300)]
        it = iter(extra)

        def one() -> None:
            s = next(it)
            history.record(s, datalog_path=os.path.join(stdf, s["datalog"]))
        print(f"record                     {stats(timed(one, 300))}")
        data = header_file(work)
        mir = [make_summary(n + 300 + i, start=False) for i in range(200)]
        for s in mir:
            with open(os.path.join(stdf, s["datalog"]), "wb") as fh:
                fh.write(data)
        it = iter(mir)
        print(f"record+MIR                 {stats(timed(one, 200))}")
        pt = PART_TYPES[0]
        print(f"baseline(pt, 20)           "
              f"{stats(timed(lambda: history.baseline(pt, 20), 300))}")
        print(f"baseline(pt, 500)          "
              f"{stats(timed(lambda: history.baseline(pt, 500), 100))}")
        print(f"lots()                     {stats(timed(lambda: history.lots(), 300))}")
        mid = history.lots(limit=500)[-1]["id"]
        print(f"lots(before=500th)         "
              f"{stats(timed(lambda: history.lots(before=mid), 300))}")
        print(f"lots(part_type=pt)         "
              f"{stats(timed(lambda: history.lots(part_type=pt), 300))}")
        print(f"lots(limit=500)            "
              f"{stats(timed(lambda: history.lots(limit=500), 50))}")
        print(f"lot(id)                    {stats(timed(lambda: history.lot(mid), 300))}")
        imports = os.path.join(work, "import")
        os.mkdir(imports)
        for i in range(1000):
            s = make_summary(2 * n + i)
            with open(os.path.join(imports, f"x{i}.summary.json"), "w") as fh:
                json.dump(s, fh, indent=2)
        t1 = time.perf_counter()
        count = history.import_summaries(imports)
        first = time.perf_counter() - t1
        t1 = time.perf_counter()
        again = history.import_summaries(imports)
        second = time.perf_counter() - t1
        print(f"import 1000 files          {first * 1000:8.1f} ms ({count} recorded); "
              f"again {second * 1000:.1f} ms ({again} recorded)")
    finally:
        history.close()


if __name__ == "__main__":
    main()
