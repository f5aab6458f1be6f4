#!/usr/bin/env python3
"""The master's own CPU per handler cycle, in one process, without a broker.

    python bench/cell_cycle.py [--sites 1,4,16,64,128,255] [--cycles 2000] [--blocks 5]
                               [--tree DIR] [--profile FILE]

``bench/cycle.py`` measures the whole cell (broker, links, sites, master) on a machine
that is shared: its cycle times move with the load.  This one measures what the master's
code costs: the master as ``twistd ate-master`` builds it (``ate.tap.build_master``: the
cell, its router, the master service's listeners, the web feed and API without clients),
on a ``Clock``, with its MQTT publisher replaced by a list; the simulated sites
(``ate.sim.sites.SimSites``, T = 0, 5 PTRs a part) answer it in the same process while it
loads.  One cycle of the sites' messages (as MQTT payloads, in the order they were sent)
is recorded and then replayed to the router for every measured cycle: the handler's
``next``, every site's ``testing``, ``idle`` and test result, exactly as bench/cycle.py
drives it.  Only the master runs during the measurement; the figure is the process CPU
time (``time.process_time``) per cycle, which the machine's load hardly moves.  Logging
goes to a file at every level, as in twistd.

Each (tree, site count) runs in its own child process, ``--blocks`` times, trees in
alternating order; ``--tree DIR`` compares another source tree (e.g. ``git worktree add
/tmp/base HEAD~1``) with this one.  Reported: the median CPU ms per cycle with the spread
of the blocks, and the garbage collections per cycle.  ``--profile FILE`` (one site count,
this tree) writes a cProfile of the measured cycles, timed by process CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEVICE = "SCT-81-1F"
LOT = "306426.001"
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "jobs", "le306426001.xml")


def child(n: int, cycles: int, warmup: int, profile: str | None) -> dict:
    """Run in the child: build the master of the tree on sys.path, measure, return figures."""
    import gc
    import time

    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock
    from twisted.logger import globalLogBeginner, textFileLogObserver

    import ate.tap
    from ate.config import master_config_from_dict
    from ate.sim.sites import SimSites
    from ate.tap import build_master

    work = tempfile.mkdtemp(prefix="ate-cellcycle-")
    try:
        jobs = os.path.join(work, "jobs")
        os.makedirs(jobs)
        shutil.copy(FIXTURE, os.path.join(jobs, "le306426001.xml"))
        sites = [str(i) for i in range(n)]
        cfg = master_config_from_dict({
            "broker_host": "127.0.0.1", "broker_port": 1, "device_id": DEVICE,
            "sites": sites, "Handler": "HTO92-20F", "environment": "BENCH",
            "webui_host": "127.0.0.1", "webui_port": 1, "jobsource": "filesystem",
            "jobformat": "xml.semi-ate", "filesystemdatasource_path": jobs,
            "filesystemdatasource_jobpattern": "le#jobname#.xml", "enable_timeouts": True,
            "site_layout": [[i, 0] for i in range(n)], "loglevel": 30,
            "stdf_directory": work, "log_directory": os.path.join(work, "log"),
            "user_settings_filepath": os.path.join(work, "usersettings.json"),
        }, source="bench")
        logfile = open(os.path.join(work, "twistd.log"), "a")  # noqa: SIM115
        globalLogBeginner.beginLoggingTo([textFileLogObserver(logfile)],
                                         redirectStandardIO=False)

        class _Reactor(Clock):
            def getThreadPool(self) -> None:
                return None

        clock = _Reactor()
        clock.advance(1_800_000_000)
        _top, cell = build_master(cfg, clock, observe_logs=False, announce=False)
        tune_gc = getattr(ate.tap, "tune_gc", None)  # what makeService adds, where it does
        if tune_gc is not None:
            tune_gc()
        cell.run_in_thread = None  # the datalog's fsync on the clock, in this thread
        cell.records.run_in_thread = None
        out: list[tuple[str, bytes]] = []

        class _Publisher:
            def publish(self, topic: str, payload: bytes, qos: int = 2):
                out.append((topic, payload))
                return succeed(None)

        cell.publisher = _Publisher()
        router = cell_router(cell)
        inbound: list[tuple[str, bytes]] = []
        sim = SimSites(DEVICE, sites, clock, lambda o: inbound.append((o.topic, o.encode())),
                       test_time=0.0, load_time=0.0, ptr_count=5, seed=1, strategy_delay=0.0)
        cmd_topic = f"ate/{DEVICE}/Master/cmd"
        record: list[tuple[str, bytes]] | None = None

        def pump() -> None:
            while True:
                clock.advance(0)
                if out:
                    batch = out[:]
                    del out[:]
                    for topic, payload in batch:
                        sim.received(topic, payload)
                    continue
                if inbound:
                    batch = inbound[:]
                    del inbound[:]
                    for topic, payload in batch:
                        if record is not None:
                            record.append((topic, payload))
                        router.received(topic, payload)
                    continue
                return

        def command(obj: dict) -> None:
            router.received(cmd_topic, json.dumps(obj).encode())
            pump()

        cell.mqtt_connected()
        sim.connected()
        pump()
        assert cell.state == "initialized", cell.state
        command({"type": "load", "payload": {"lot_number": LOT}})
        clock.advance(1)
        pump()
        assert cell.state == "ready", (cell.state, cell.error_message_text)
        nxt = json.dumps({"type": "next", "payload": {"sites": [
            {"siteid": s, "partid": f"P{s}", "binning": -1} for s in sites]}}).encode()
        router.received(cmd_topic, nxt)
        record = []
        pump()
        replay = [(cmd_topic, nxt)] + record
        record = None
        assert cell.state == "ready", cell.state

        def run(count: int) -> None:
            received = router.received
            for _ in range(count):
                for topic, payload in replay:
                    received(topic, payload)
                clock.advance(0.001)
                del out[:]

        run(warmup)
        assert cell.state == "ready", cell.state
        gc.collect()
        stats0 = [s["collections"] for s in gc.get_stats()]
        gc_time = [0.0, 0.0]  # total, start of the running collection

        def on_gc(phase: str, _info: dict) -> None:
            if phase == "start":
                gc_time[1] = time.process_time()
            else:
                gc_time[0] += time.process_time() - gc_time[1]

        gc.callbacks.append(on_gc)
        prof = None
        if profile:
            import cProfile
            prof = cProfile.Profile(time.process_time)
            prof.enable()
        t0 = time.process_time()
        run(cycles)
        cpu = time.process_time() - t0
        gc.callbacks.remove(on_gc)
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)
        stats1 = [s["collections"] for s in gc.get_stats()]
        assert cell.state == "ready", cell.state
        parts = cell.lot.parts_tested if cell.lot is not None else 0
        assert parts == (warmup + cycles + 1) * n, parts
        logfile.flush()
        return {"sites": n, "cycles": cycles, "cpu_ms": cpu / cycles * 1e3,
                "gc_ms": gc_time[0] / cycles * 1e3,
                "gc": [(b - a) / cycles for a, b in zip(stats0, stats1, strict=True)],
                "messages": len(replay), "log_bytes": os.path.getsize(logfile.name)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cell_router(cell):
    from ate.master.router import Router
    return Router(cell)


def spawn(tree: str, n: int, cycles: int, warmup: int, profile: str | None = None) -> dict:
    args = [sys.executable, os.path.abspath(__file__), "--child", "--sites", str(n),
            "--cycles", str(cycles), "--warmup", str(warmup)]
    if profile:
        args += ["--profile", profile]
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child ({tree}, {n} sites) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt(values: list[float]) -> str:
    med = statistics.median(values)
    if len(values) < 2:
        return f"{med:.3f}"
    return f"{med:.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", default="1,4,16,64,128,255",
                   type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--cycles", type=int, default=2000,
                   help="measured cycles at 1 and 4 sites (fewer at more sites)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--blocks", type=int, default=5, help="child processes per tree and count")
    p.add_argument("--tree", default=None, help="another source tree to compare with")
    p.add_argument("--profile", default=None, help="cProfile the measured cycles to FILE")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    bad = [n for n in a.sites if not 1 <= n <= 255]
    if bad:
        p.error(f"site counts must be 1..255, got {bad}")
    if a.child:
        print(json.dumps(child(a.sites[0], a.cycles, a.warmup, a.profile)))
        return
    if a.profile:
        r = spawn(ROOT, a.sites[0], a.cycles, a.warmup, a.profile)
        print(f"{a.sites[0]} sites: {r['cpu_ms']:.3f} ms CPU/cycle (profiled); {a.profile}")
        return
    trees = [("this", ROOT)] + ([("tree", a.tree)] if a.tree else [])
    results: dict[tuple[str, int], list[dict]] = {}
    loads = []
    for n in a.sites:
        cycles = max(20, a.cycles // max(1, n // 4))
        for block in range(a.blocks):
            order = trees if block % 2 == 0 else trees[::-1]
            for name, tree in order:
                r = spawn(tree, n, cycles, a.warmup)
                results.setdefault((name, n), []).append(r)
                loads.append(os.getloadavg()[0])
                print(f"  {name:4s} {n:3d} sites: {r['cpu_ms']:.3f} ms CPU/cycle, "
                      f"gc {r['gc_ms']:.3f} ms/cycle ({', '.join(f'{g:.2f}' for g in r['gc'])}), "
                      f"load {loads[-1]:.1f}", flush=True)
    print()
    print(f"load average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f}; "
          f"medians of {a.blocks} blocks (min-max)")
    if a.tree:
        print(f"tree: {os.path.abspath(a.tree)}")
        print()
        print("| sites | tree CPU ms/cycle | this CPU ms/cycle | this/tree | "
              "tree gc0/cycle | this gc0/cycle |")
        print("|---|---|---|---|---|---|")
    else:
        print()
        print("| sites | CPU ms/cycle | gc0/cycle | gc1/cycle | gc2/cycle |")
        print("|---|---|---|---|---|")
    for n in a.sites:
        this = results[("this", n)]
        cpu = [r["cpu_ms"] for r in this]
        gc0 = statistics.median(r["gc"][0] for r in this)
        if a.tree:
            tree = results[("tree", n)]
            tcpu = [r["cpu_ms"] for r in tree]
            tgc0 = statistics.median(r["gc"][0] for r in tree)
            print(f"| {n} | {_fmt(tcpu)} | {_fmt(cpu)} | "
                  f"{statistics.median(cpu) / statistics.median(tcpu):.3f}x | "
                  f"{tgc0:.2f} | {gc0:.2f} |")
        else:
            print(f"| {n} | {_fmt(cpu)} | {gc0:.2f} | "
                  f"{statistics.median(r['gc'][1] for r in this):.3f} | "
                  f"{statistics.median(r['gc'][2] for r in this):.4f} |")


if __name__ == "__main__":
    main()
