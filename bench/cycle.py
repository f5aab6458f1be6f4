#!/usr/bin/env python3
"""Handler-cycle benchmark: ate-master against the floor relay, same broker, same sites.

    python bench/cycle.py [--sites 1,4,16,64,128,255] [--cycles 2000] [--rss-parts 100000]
                          [--persistence off|on|every-change] [--subscribe-qos 0|1|2]
                          [--max-inflight N] [--link twisted|paho|twisted-mqtt] [--alarms 7]
                          [--tree DIR] [--repeat N] [--floor-status]

One private mosquitto (set_tcp_nodelay) on 127.0.0.1.  This process runs the simulated
sites (T = 0 test time) and a handler client on the Twisted reactor; the target — the floor
relay bench/floor_relay.py (the baseline: a bare relay, see README "Benchmarks"), or
``twistd -n ate-master`` — runs as its own process.  For every site count the handler sends
``next`` with every site and waits for the response, N cycles after a warm-up.  Reported:
p50/p99 ms per cycle, parts/s, target CPU ms per cycle (from /proc), and for the master at
4 sites its RSS after 0, 10 000 and 100 000 parts.  Ratios are master/floor, measured in
the same run.

The broker and session settings of README "Broker loss" (what bench/blip.py measures the
losses of): ``--persistence`` (mosquitto ``persistence true``; ``every-change`` adds
``autosave_on_changes true`` and ``autosave_interval 1``), ``--max-inflight`` (mosquitto
``max_inflight_messages``) and ``--subscribe-qos`` (the master's ``mqtt_subscribe_qos``;
the floor relay keeps its own).  Both targets run on the same broker settings.

``--link`` is the master's MQTT link (its ``mqtt_client``; default: the config default,
``twisted``, our own): ``twisted``, ``paho`` (paho-mqtt on the reactor), or
``twisted-mqtt`` (the PyPI package through bench/twisted_mqtt_link.py; run this script
with a Python that has it installed).  The simulated sites and the handler keep the
default link, so only the master's link changes between runs.

``--floor-status`` also runs the relay with ``--cycle-status``: it then publishes
``Master/status`` ``testing`` and ``ready`` on every part as a master does (protocol.md
3.2), and every simulated Control app answers each with its state (2.5), so at many
sites a cycle carries about 1.7 times the messages of a plain relay cycle.  The
extra table compares the master with that relay, which isolates the master's own cost.

``--tree DIR`` also runs the master of another source tree (e.g. ``git worktree add
/tmp/base HEAD~1``) in the same run, right next to this tree's master, so that a change is
measured A/B on the same loaded machine; ``--repeat N`` runs every site count N times,
with the two masters in alternating order, and the tables give the median of the N runs
with their spread (min-max).
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from twisted.internet import defer, protocol, reactor, task  # noqa: E402

from ate.broker import Mosquitto, free_port  # noqa: E402
from ate.config import sim_config_from_dict  # noqa: E402
from ate.mqtt.link import DEFAULT_LINK, LINKS  # noqa: E402
from ate.sim.sites import SimSitesService  # noqa: E402
from ate.testing.peers import HandlerClient  # noqa: E402

DEVICE = "SCT-81-1F"
LOT = "306426.001"
FLOOR = os.path.join(HERE, "floor_relay.py")  # the baseline, with its mqttloop.py
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "jobs", "le306426001.xml")
PERSISTENCE = {
    "off": (),
    "on": ("persistence true",),
    "every-change": ("persistence true", "autosave_on_changes true", "autosave_interval 1"),
}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _Proc(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended = defer.Deferred()
        self.tail = b""

    def outReceived(self, data: bytes) -> None:
        self.tail = (self.tail + data)[-4000:]

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(None)


def spawn_floor(broker: Mosquitto, n: int, cycle_status: bool = False):
    pp = _Proc()
    args = [sys.executable, FLOOR, "--broker", f"{broker.host}:{broker.port}",
            "--device-id", DEVICE, "--sites", str(n), *(("--cycle-status",) * cycle_status)]
    t = reactor.spawnProcess(pp, sys.executable, args, env=dict(os.environ),
                             path=os.path.dirname(FLOOR))
    return pp, t


def spawn_master(broker: Mosquitto, n: int, workdir: str, master_extra: dict | None = None,
                 link: str = DEFAULT_LINK, root: str = ROOT):
    jobs = os.path.join(workdir, "jobs")
    os.makedirs(jobs, exist_ok=True)
    shutil.copy(FIXTURE, os.path.join(jobs, "le306426001.xml"))
    cfg = {
        "broker_host": broker.host, "broker_port": broker.port, "device_id": DEVICE,
        "sites": [str(i) for i in range(n)], "Handler": "HTO92-20F", "environment": "BENCH",
        "webui_host": "127.0.0.1", "webui_port": free_port(), "jobsource": "filesystem",
        "jobformat": "xml.semi-ate", "filesystemdatasource_path": jobs,
        "filesystemdatasource_jobpattern": "le#jobname#.xml", "enable_timeouts": True,
        "site_layout": [[i, 0] for i in range(n)], "loglevel": 30,
        "stdf_directory": workdir, "log_directory": os.path.join(workdir, "log"),
        "mqtt_client": link if link in LINKS else DEFAULT_LINK,
        **(master_extra or {}),
    }
    path = os.path.join(workdir, f"master{n}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    pp = _Proc()
    env = dict(os.environ)
    env["PYTHONPATH"] = root
    boot = "from twisted.scripts.twistd import run; run()"
    if link == "twisted-mqtt":  # the master's MqttService on bench/twisted_mqtt_link.py
        boot = (f"import sys; sys.path.insert(0, {HERE!r}); import twisted_mqtt_link; "
                f"twisted_mqtt_link.install(); {boot}")
    args = [sys.executable, "-c", boot, "-n",
            "--pidfile=", "-l", os.path.join(workdir, f"twistd{n}.log")]
    if os.environ.get("ATE_BENCH_PROFILE"):  # cProfile the master: a .prof file per run
        args += ["--profile", f"{os.environ['ATE_BENCH_PROFILE']}.{n}", "--profiler",
                 "cprofile", "--savestats"]
    args += ["ate-master", "--config", path]
    t = reactor.spawnProcess(pp, sys.executable, args, env=env, path=workdir)
    return pp, t


async def run_target(kind: str, broker: Mosquitto, n: int, cycles: int, workdir: str,
                     rss_marks: tuple[int, ...] = (), master_extra: dict | None = None,
                     link: str = DEFAULT_LINK, root: str = ROOT,
                     cycle_status: bool = False) -> dict:
    sim_cfg = sim_config_from_dict({
        "broker_host": broker.host, "broker_port": broker.port, "device_id": DEVICE,
        "sites": [str(i) for i in range(n)], "test_time": 0.0, "ptr_count": 5,
        "bins": [{"sbin": 1, "hbin": 1, "weight": 1}], "seed": 1}, source="bench")
    sim = SimSitesService(reactor, sim_cfg, client_id=f"simsites.bench.{kind}.{n}")
    sim.startService()
    handler = HandlerClient(reactor, broker.host, broker.port, DEVICE,
                            client_id=f"bench.{kind}.{n}")
    await handler.start()
    await sim.mqtt.whenConnected()
    up = handler.wait_state("initialized", 60)
    pp, transport = (spawn_floor(broker, n, cycle_status) if kind == "floor"
                     else spawn_master(broker, n, workdir, master_extra, link, root))
    pid = transport.pid
    result: dict = {"kind": kind, "sites": n}
    try:
        await up
        ready = handler.wait_state("ready", 60)
        await handler.send("load", {"lot_number": LOT})
        await ready
        infos = [{"siteid": str(i), "partid": f"P{i}", "binning": -1} for i in range(n)]
        payload = {"sites": infos}
        parts = 0

        async def cycle() -> float:
            t0 = time.perf_counter()
            d = handler.wait_response("next", 30)
            handler.send("next", payload)
            await d
            return time.perf_counter() - t0

        for _ in range(min(50, cycles)):
            await cycle()
            parts += n
        rss = {0: rss_mb(pid)}
        lat = []
        cpu0 = cpu_seconds(pid)
        w0 = time.perf_counter()
        for _ in range(cycles):
            lat.append(await cycle())
            parts += n
        wall = time.perf_counter() - w0
        cpu = cpu_seconds(pid) - cpu0
        for mark in rss_marks:
            while parts < mark:
                await cycle()
                parts += n
            rss[mark] = rss_mb(pid)
        handler.received.clear()
        lat.sort()
        result.update(
            p50=statistics.median(lat) * 1e3,
            p99=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
            parts_s=cycles * n / wall,
            cpu_ms=cpu / cycles * 1e3,
            rss=rss,
        )
    except Exception:
        log = os.path.join(workdir, f"twistd{n}.log")
        if kind == "master" and os.path.exists(log):
            with open(log) as f:
                print("".join(f.readlines()[-30:]), file=sys.stderr)
        raise
    finally:
        transport.signalProcess("TERM")
        pp.ended.addTimeout(10, reactor)
        try:
            await pp.ended
        except defer.TimeoutError:
            transport.signalProcess("KILL")
        await handler.stop()
        await sim.stopService()
    return result


async def main(args) -> None:
    extra = [*PERSISTENCE[args.persistence]]
    if args.max_inflight is not None:
        extra.append(f"max_inflight_messages {args.max_inflight}")
    master_extra = {} if args.subscribe_qos is None else {"mqtt_subscribe_qos": args.subscribe_qos}
    broker = Mosquitto(extra_config=extra)
    broker.start()
    print(f"broker: {', '.join(extra) or 'defaults'}; master: link {args.link}"
          f"{''.join(f', {k} {v}' for k, v in master_extra.items())}", flush=True)
    workdir = tempfile.mkdtemp(prefix="ate-bench-")
    rows = []
    loads = []
    try:
        for n in args.sites:
            cycles = max(50, args.cycles // max(1, n // 4))
            for rep in range(args.repeat):
                masters: tuple[str, ...] = ("master", "tree") if args.tree else ("master",)
                if rep % 2:  # alternate which master goes first
                    masters = masters[::-1]
                floors = ("floor", "floorst") if args.floor_status else ("floor",)
                for kind in (*floors, *masters) + (("alarms",) if args.alarms else ()):
                    marks: tuple[int, ...] = ()
                    if rep == 0 and n == 4 and (kind in ("master", "tree") or
                                                (kind == "floor" and args.rss_floor)):
                        marks = tuple(args.rss_parts)
                    extra_cfg = master_extra
                    if kind == "alarms":  # the same master with the rules configured
                        extra_cfg = {**master_extra, "alarms": BENCH_ALARMS[:args.alarms]}
                    root = os.path.abspath(args.tree) if kind == "tree" else ROOT
                    r = await run_target("floor" if kind in floors else "master", broker, n,
                                         cycles, workdir, marks, extra_cfg, args.link, root,
                                         cycle_status=kind == "floorst")
                    r["kind"] = kind
                    r["load"] = os.getloadavg()[0]
                    loads.append(r["load"])
                    rows.append(r)
                    print(f"  {kind:6s} {n:3d} sites: p50 {r['p50']:.3f} ms  "
                          f"p99 {r['p99']:.3f} ms  {r['parts_s']:.0f} parts/s  "
                          f"cpu {r['cpu_ms']:.3f} ms/cycle  "
                          f"rss {', '.join(f'{k}:{v:.1f}MB' for k, v in r['rss'].items())}  "
                          f"load {r['load']:.1f}", flush=True)
    finally:
        broker.stop()
        broker.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    by = _medians(rows)
    print()
    if args.repeat > 1:
        print(f"medians of {args.repeat} runs; ", end="")
    print(f"load average (1 min) during the runs: {min(loads):.1f}-{max(loads):.1f}")
    print()
    _against(by, args.sites, "floor", "floor")
    if args.floor_status:
        print()
        print("floor+status: the relay with --cycle-status (Master/status testing and ready "
              "every part, as a master publishes them)")
        print()
        _against(by, args.sites, "floorst", "floor+status")
    if args.tree:
        print()
        print(f"tree: {os.path.abspath(args.tree)} (spread: min-max of the runs)")
        print()
        print("| sites | floor p50 | tree p50 | master p50 | tree/floor | master/floor | "
              "master/tree | tree CPU ms | master CPU ms | master/tree CPU |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for n in args.sites:
            f, t, m = by[("floor", n)], by[("tree", n)], by[("master", n)]
            print(f"| {n} | {f['p50']:.3f} | {_spread(t, 'p50')} | {_spread(m, 'p50')} | "
                  f"{t['p50'] / f['p50']:.2f}x | {m['p50'] / f['p50']:.2f}x | "
                  f"{m['p50'] / t['p50']:.2f}x | {_spread(t, 'cpu_ms')} | "
                  f"{_spread(m, 'cpu_ms')} | {m['cpu_ms'] / t['cpu_ms']:.2f}x |")
    if args.alarms:
        print()
        print(f"| sites | master p50 | with {args.alarms} alarm rules p50 | ratio | "
              "master CPU ms | with rules CPU ms | ratio |")
        print("|---|---|---|---|---|---|---|")
        for n in args.sites:
            m, a = by[("master", n)], by[("alarms", n)]
            print(f"| {n} | {m['p50']:.3f} | {a['p50']:.3f} | {a['p50'] / m['p50']:.3f}x | "
                  f"{m['cpu_ms']:.3f} | {a['cpu_ms']:.3f} | {a['cpu_ms'] / m['cpu_ms']:.3f}x |")
    for kind in ("master", "tree"):
        m4 = by.get((kind, 4))
        if m4 and len(m4["rss"]) > 1:
            print()
            print(f"{kind} RSS at 4 sites: " + ", ".join(f"{k} parts: {v:.1f} MB"
                                                         for k, v in m4["rss"].items()))
            ks = sorted(m4["rss"])
            print(f"growth 0 -> {ks[-1]} parts: {m4['rss'][ks[-1]] - m4['rss'][0]:.1f} MB")


def _against(by: dict, sites: list[int], ref: str, name: str) -> None:
    """The master against the baseline ``ref`` (a kind of run), as a markdown table."""
    print(f"| sites | {name} p50 | master p50 | ratio | {name} p99 | master p99 | ratio | "
          f"{name} parts/s | master parts/s | {name} CPU ms | master CPU ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sites:
        f, m = by[(ref, n)], by[("master", n)]
        print(f"| {n} | {f['p50']:.3f} | {m['p50']:.3f} | {m['p50'] / f['p50']:.2f}x | "
              f"{f['p99']:.3f} | {m['p99']:.3f} | {m['p99'] / f['p99']:.2f}x | "
              f"{f['parts_s']:.0f} | {m['parts_s']:.0f} | {f['cpu_ms']:.3f} | {m['cpu_ms']:.3f} | "
              f"{m['cpu_ms'] / f['cpu_ms']:.2f}x |")


def _medians(rows: list[dict]) -> dict:
    """(kind, sites) -> the median of each figure over the repeated runs, with the runs'
    values under ``runs`` and the first run's RSS marks."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["sites"]), []).append(r)
    out = {}
    for key, runs in groups.items():
        out[key] = {k: statistics.median(r[k] for r in runs)
                    for k in ("p50", "p99", "parts_s", "cpu_ms")}
        out[key]["runs"] = runs
        out[key]["rss"] = runs[0]["rss"]
    return out


def _spread(fig: dict, key: str) -> str:
    values = [r[key] for r in fig["runs"]]
    if len(values) < 2:
        return f"{fig[key]:.3f}"
    return f"{fig[key]:.3f} ({min(values):.3f}-{max(values):.3f})"


#: ``--alarms N``: the first N of these rules (one of every kind), set so that none fires on
#: the bench's simulated mix: the run measures their evaluation on every part (the two
#: statistical rules have no history here, so they stay inactive after one INFO line)
BENCH_ALARMS = [
    {"kind": "consecutive_fails", "count": 1000000, "action": "hold"},
    {"kind": "site_yield", "min_percent": 1, "window": 200},
    {"kind": "lot_yield", "min_percent": 1},
    {"kind": "bin_limit", "sbin": 60000, "max_percent": 99},
    {"kind": "site_divergence", "z": 50},
    {"kind": "statistical_yield_limit"},
    {"kind": "statistical_bin_limit", "sbin": 12},
]


def site_counts(text: str) -> list[int]:
    """``--sites``: comma-separated site counts, each 1..255 (SDR SITE_CNT is U1)."""
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}") from None
    bad = [n for n in counts if not 1 <= n <= 255]
    if bad:
        raise argparse.ArgumentTypeError(
            f"site counts must be 1..255 (STDF holds 255 sites per head), got {bad}")
    return counts


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", default="1,4,16,64,128,255", type=site_counts,
                   help="site counts, 1..255 each (STDF holds 255 sites per head)")
    p.add_argument("--cycles", type=int, default=2000,
                   help="measured cycles at 1 and 4 sites (fewer at more sites)")
    p.add_argument("--rss-parts", default="10000,100000",
                   type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--floor-status", action="store_true",
                   help="also run the relay with --cycle-status (it then publishes the two "
                        "Master/status messages per part that a master publishes) and "
                        "compare the master with it too")
    p.add_argument("--rss-floor", action="store_true", help="also measure the floor's RSS")
    p.add_argument("--persistence", choices=sorted(PERSISTENCE), default="off",
                   help="mosquitto persistence (README \"Broker loss\")")
    p.add_argument("--max-inflight", type=int, default=None,
                   help="mosquitto max_inflight_messages (its default is 20)")
    p.add_argument("--subscribe-qos", type=int, choices=(0, 1, 2), default=None,
                   help="the master's mqtt_subscribe_qos (default: the master's default)")
    p.add_argument("--alarms", type=int, choices=range(0, len(BENCH_ALARMS) + 1), default=0,
                   help="also run the master with the first N of 7 alarm rules (none fires) "
                        "and compare")
    p.add_argument("--tree", default=None,
                   help="also run the master of this source tree (e.g. a git worktree of "
                        "an older commit) in the same run, next to this tree's")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per site count (the masters alternate order); medians reported")
    p.add_argument("--link", choices=(*LINKS, "twisted-mqtt"), default=DEFAULT_LINK,
                   help=f"the master's MQTT link (default: {DEFAULT_LINK}, the config default)")
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse()
    task.react(lambda _r: defer.Deferred.fromCoroutine(main(a)))
