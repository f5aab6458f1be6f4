#!/usr/bin/env python3
"""Which broker for the demo: mosquitto against amqtt (a maintained Python broker).

    pip install amqtt && python bench/broker.py [--sites 4] [--cycles 1000]

Same master (``twistd ate-master``), same simulated sites and handler as bench/cycle.py;
only the broker changes, both measured in this run: handler-cycle p50/p99, parts/s, master
CPU per cycle.  mosquitto runs with ``set_tcp_nodelay true`` (ate.broker); amqtt
from its command line with a minimal config on a free loopback port, stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import defer, task  # noqa: E402

from ate.broker import Amqtt, Mosquitto  # noqa: E402
from cycle import run_target  # noqa: E402


async def main(args) -> None:
    rows = []
    workdir = tempfile.mkdtemp(prefix="ate-bench-broker-")
    try:
        for name, factory in (("mosquitto", Mosquitto), ("amqtt", Amqtt)):
            broker = factory()
            broker.start()
            try:
                r = await run_target("master", broker, args.sites, args.cycles, workdir)
            finally:
                broker.stop()
                broker.cleanup()
            rows.append((name, r))
            print(f"  {name:9s} p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms  "
                  f"{r['parts_s']:.0f} parts/s  master cpu {r['cpu_ms']:.3f} ms/cycle",
                  flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = rows[0][1]
    print("\n| broker | p50 ms | p99 ms | parts/s | master CPU ms/cycle | p50 vs mosquitto |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['p50']:.3f} | {r['p99']:.3f} | {r['parts_s']:.0f} | "
              f"{r['cpu_ms']:.3f} | {r['p50'] / base['p50']:.2f}x |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--cycles", type=int, default=1000)
    a = p.parse_args()
    task.react(lambda _r: defer.Deferred.fromCoroutine(main(a)))
