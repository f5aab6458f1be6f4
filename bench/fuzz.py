#!/usr/bin/env python3
"""Fuzzing a live master for longer than the test suite does (tests/integration/test_fuzz.py).

    python bench/fuzz.py [--messages 100000] [--batch 50] [--seed 0] [--lot-every 8]
                         [--web-every 10] [--keep DIR]

One private mosquitto on 127.0.0.1, ``twistd -n ate-master`` as its own process, the
simulated sites and one handler/fuzzing client in this process (the harness of the test:
tests/integration/fuzzharness.py).  Batches of hypothesis-generated messages go to every
topic the master subscribes to, each batch with the cell in the next state of a lot
(initialized, connecting, loading, ready, testing, unloading, softerror, error); after each
batch get-state must answer; every ``--lot-every`` batches a real lot runs and its bins are
checked against the simulator; every ``--web-every`` batches websocket frames and HTTP
requests go to the web side.  At the end every STDF file left is read by pystdf and our
strict reader.

Quoted: messages sent, lots checked, STDF files read, critical lines, the master's RSS
after the warm-up lot and at the end.  Exit status 1 on any finding or an RSS growth of
30 MB or more.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from twisted.internet import task  # noqa: E402

import fuzzharness as fh  # noqa: E402
from ate.broker import Mosquitto  # noqa: E402

RSS_LIMIT = 30 * 2 ** 20


async def run(reactor, args) -> int:
    directory = args.keep or tempfile.mkdtemp(prefix="ate-fuzz-")
    os.makedirs(directory, exist_ok=True)
    broker = Mosquitto()
    broker.start()
    report = fh.FuzzReport()
    dump = os.path.join(directory, "findings")
    cell = fh.LiveCell(reactor, broker, os.path.join(directory, "cell"))
    started = time.monotonic()
    try:
        await cell.start()
        await cell.run_lot(args.parts)  # warm-up: every code path of a lot loaded once
        report.rss_before = cell.master.rss_bytes()
        chunk = 0
        while report.messages < args.messages and report.stopped is None:
            steps = fh.plan(rounds=1, size=args.batch, seed=args.seed + 1000 * chunk)
            await fh.fuzz_mqtt(cell, steps, report, lot_every=args.lot_every,
                               parts=args.parts, dump=dump)
            if args.web_every and chunk % max(1, args.web_every // len(steps)) == 0 \
                    and report.stopped is None:
                web = fh.web_plan(rounds=1, frames=10, requests=5,
                                  seed=args.seed + 1000 * chunk + 7)
                await fh.fuzz_web(cell, web, report, lot_every=len(web), parts=args.parts,
                                  dump=dump)
            chunk += 1
            elapsed = time.monotonic() - started
            print(f"  {report.messages} messages, {report.lots} lots, "
                  f"RSS {cell.master.rss_bytes() / 2**20:.1f} MB, {elapsed:.0f} s",
                  flush=True)
        if report.stopped is None:
            await fh.check_lot(cell, report, report.batches, "end", args.parts, [], dump)
            report.rss_after = cell.master.rss_bytes()
    finally:
        code = await cell.stop()
        broker.stop()
        broker.cleanup()
    fh.check_all_stdf(cell.master.stdf_directory, report)
    critical = fh.bad_log_lines(cell.master.log_text())
    elapsed = time.monotonic() - started
    growth = report.rss_after - report.rss_before
    print()
    print(f"messages sent      {report.messages} ({report.batches} batches, "
          f"{elapsed:.0f} s, {report.messages / max(elapsed, 1e-9):.0f}/s)")
    print(f"lots checked       {report.lots}")
    print(f"STDF files read    {report.stdf_files} (pystdf and ate.stdf.records)")
    print(f"critical lines     {len(critical)}")
    print(f"RSS before/after   {report.rss_before / 2**20:.1f} / "
          f"{report.rss_after / 2**20:.1f} MB (growth {growth / 2**20:+.1f} MB, "
          f"limit {RSS_LIMIT // 2**20} MB)")
    print(f"master exit status {code}")
    print(f"findings           {len(report.findings)}"
          + (f" (stopped early: {report.stopped})" if report.stopped else ""))
    for finding in report.findings[:20]:
        print("\n" + finding.describe())
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        print(f"\nkept in {directory}")
    ok = (not report.findings and not critical and report.rss_after
          and growth < RSS_LIMIT and code == 0)
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=50, help="messages per batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lot-every", type=int, default=8, help="batches between real lots")
    parser.add_argument("--parts", type=int, default=3, help="next commands per real lot")
    parser.add_argument("--web-every", type=int, default=16,
                        help="MQTT batches between web (websocket + HTTP) steps; 0: none")
    parser.add_argument("--keep", help="keep the run's files (logs, datalogs) in DIR")
    args = parser.parse_args()
    task.react(lambda reactor: _deferred(run(reactor, args)))


def _deferred(coro):
    from twisted.internet.defer import Deferred

    d = Deferred.fromCoroutine(coro)

    def done(code):
        if code:
            raise SystemExit(code)
    return d.addCallback(done)


if __name__ == "__main__":
    main()
