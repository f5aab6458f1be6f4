#!/usr/bin/env python3
"""Cost of the alarm rules per completed site result (protocol.md 15.1).

    python bench/alarms.py [--parts 200000] [--repeat 5]

Times ``AlarmMonitor.part()`` on one precomputed stream of 4-site results (90% yield, 1%
retests) with no rule, with only ``site_divergence``, and with 7 rules (one of every
kind, the statistical ones active on a 20-lot baseline).  Prints the best of ``--repeat``
runs per call, and the same stream's cost with a bare loop for scale.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ate.alarms import AlarmMonitor, Baseline, parse_alarms  # noqa: E402

SITES = ("0", "1", "2", "3")
SEVEN = [
    {"kind": "consecutive_fails", "count": 8},
    {"kind": "site_yield", "min_percent": 50, "window": 200},
    {"kind": "lot_yield", "min_percent": 50},
    {"kind": "bin_limit", "sbin": 12, "max_percent": 50},
    {"kind": "site_divergence"},
    {"kind": "statistical_yield_limit", "k": 6},
    {"kind": "statistical_bin_limit", "sbin": 12, "k": 6},
]


def stream(n: int, seed: int = 1) -> list[tuple[str, bool, int, tuple[str, bool, int] | None]]:
    rng = random.Random(seed)
    done: list[tuple[str, bool, int]] = []
    out: list[tuple[str, bool, int, tuple[str, bool, int] | None]] = []
    for i in range(n):
        site = SITES[i % 4]
        good = rng.random() < 0.9
        sbin = 1 if good else 12
        previous = None
        if done and rng.random() < 0.01:
            previous = done.pop(rng.randrange(len(done)))
        done.append((site, good, sbin))
        out.append((site, good, sbin, previous))
    return out


def baseline() -> Baseline:
    rng = random.Random(2)
    yields = tuple(90 + rng.gauss(0, 1) for _ in range(20))
    return Baseline(20, yields, {12: tuple(100 - y for y in yields)}, "BENCH")


def run(rules: list[dict], parts: list, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        monitor = AlarmMonitor(parse_alarms(rules), SITES, "BENCH.1", baseline(), lambda: 0.0)
        part = monitor.part
        start = time.perf_counter()
        for site, good, sbin, previous in parts:
            part(site, good, sbin, previous)
        best = min(best, time.perf_counter() - start)
    return best / len(parts)


def bare(parts: list, repeat: int) -> float:
    def nothing(site: str, good: bool, sbin: int, previous: object) -> None:
        return None

    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for site, good, sbin, previous in parts:
            nothing(site, good, sbin, previous)
        best = min(best, time.perf_counter() - start)
    return best / len(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    parts = stream(args.parts)
    print(f"{args.parts} results, best of {args.repeat}")
    print(f"  empty function call           {bare(parts, args.repeat) * 1e6:6.2f} us/call")
    for label, rules in (("no rules", []), ("site_divergence only", SEVEN[4:5]),
                         ("7 rules", SEVEN)):
        print(f"  part(), {label:<22}{run(rules, parts, args.repeat) * 1e6:6.2f} us/call")


if __name__ == "__main__":
    main()
