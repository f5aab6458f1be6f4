#!/usr/bin/env python3
"""A floor of testers: N masters on one mosquitto, or each on its own bridged to a floor.

    python bench/floor.py [--masters 20] [--sites 4] [--seconds 120] [--solo-seconds 30]
                          [--topology single|bridged] [--floor-persistence off|changes:N|seconds:N]
                          [--sim process|bench]

Every tester is a ``twistd -n ate-master`` process with its own device id, its simulated
sites (T = 0 test time; by default a ``twistd -n ate-sim-sites`` process per tester) and its
own handler client on this bench's reactor, which sends ``next`` with every site and waits
for the response, again and again.  First one tester runs alone for ``--solo-seconds``
(the others are not started yet), then all N together for ``--seconds``.  Reported per
tester: cycle p50/p90 (ms) and parts/s, against the lone tester of the same run; and each
broker's message rate (``$SYS/broker/messages/received`` and ``sent``, published every
second: ``sys_interval 1``) and CPU.

``--topology single``: every master, its sites and its handler client on one mosquitto.
``bridged``: every tester has its own mosquitto (its master, sites and handler client
connect there) bridged to a floor broker with the topics of ``ate.broker.
floor_bridge_topics`` (docs/floor.md).  ``--floor-persistence`` makes the floor broker
(or the one broker) persist: ``changes:N`` saves its database after every N changes
(``autosave_on_changes true``, ``autosave_interval N``), ``seconds:N`` every N seconds
(etc/mosquitto-floor.conf: ``seconds:10``).  In both topologies a floor
subscriber (on the floor broker, or on the one broker) counts the state changes it sees on
``ate/+/Master/status`` and the alarms on ``ate/+/Master/alarm`` per tester, against what
the tester's own handler client saw, and their delay behind it.

Every process (brokers, masters, sites) runs in its own session and is stopped by PID at
the end, also on Ctrl-C or an error.  Run by hand; figures are in docs/floor.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from twisted.internet import defer, reactor, task  # noqa: E402

from ate.broker import Mosquitto, bridge_config, floor_bridge_topics, free_port  # noqa: E402
from ate.config import MqttOptions, sim_config_from_dict  # noqa: E402
from ate.mqtt.service import MqttService  # noqa: E402
from ate.testing.peers import HandlerClient  # noqa: E402

HANDLER = "HTO92-20F"
LOT = "306426.001"
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "jobs", "le306426001.xml")
FIXTURE_DEVICE = "SCT-81-1F"
BROKER_LINES = ("sys_interval 1", "max_inflight_messages 1000", "max_queued_messages 100000")


def persistence_lines(spec: str) -> list[str]:
    """mosquitto lines for ``--floor-persistence``: off, changes:N or seconds:N."""
    if spec == "off":
        return []
    kind, _, n = spec.partition(":")
    if kind not in ("changes", "seconds") or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(
            f"--floor-persistence: expected off, changes:N or seconds:N, got {spec!r}")
    return ["persistence true", f"autosave_on_changes {'true' if kind == 'changes' else 'false'}",
            f"autosave_interval {n}"]

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
          "--pidfile="]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / TICKS


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


# --------------------------------------------------------------------------------------
# processes, stopped by PID


class Processes:
    """Every child process of the bench, each in its own session (a Ctrl-C in the terminal
    reaches the bench only), stopped by PID."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.brokers: list[Mosquitto] = []

    def spawn(self, name: str, args: list[str], cwd: str, log: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=ROOT)
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def broker(self, extra: list[str]) -> Mosquitto:
        b = Mosquitto(extra_config=extra, new_session=True)
        self.brokers.append(b)
        b.start()
        return b

    def stop_all(self) -> None:
        """SIGTERM every process by PID, wait up to 10 s, SIGKILL what is left; then the
        brokers (idempotent)."""
        procs, self.procs = self.procs, []
        for _, p in procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for name, p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{name} (pid {p.pid}) did not stop on SIGTERM: SIGKILL", file=sys.stderr)
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
        brokers, self.brokers = self.brokers, []
        for b in brokers:
            b.stop()
            b.cleanup()


# --------------------------------------------------------------------------------------
# what the bench watches


class SysStats:
    """The counters of one broker, as (time, count): ``$SYS/broker/publish/messages/sent``
    (PUBLISH packets sent: "sent") and ``$SYS/broker/messages/received`` and ``sent``
    (every packet, PUBREL, PUBACK ... included: "packets received", "packets sent").
    mosquitto 2.0.11 leaves ``$SYS/broker/publish/messages/received`` at 0."""

    TOPICS = {"$SYS/broker/publish/messages/sent": "sent",
              "$SYS/broker/messages/received": "packets received",
              "$SYS/broker/messages/sent": "packets sent"}

    def __init__(self, broker: Mosquitto, name: str) -> None:
        self.broker = broker
        self.samples: dict[str, list[tuple[float, int]]] = {k: [] for k in self.TOPICS.values()}
        self.mqtt = MqttService(
            reactor, MqttOptions(host=broker.host, port=broker.port), f"bench.sys.{name}",
            subscriptions=[(topic, 0) for topic in self.TOPICS], on_message=self._message)

    def _message(self, topic: str, payload: bytes) -> None:
        self.samples[self.TOPICS[topic]].append((time.perf_counter(), int(payload)))

    def rate(self, kind: str, t0: float, t1: float) -> float:
        """Messages per second between the last sample before t0 and the first after t1
        (mosquitto publishes them every sys_interval, 1 s)."""
        samples = self.samples[kind]
        before = [s for s in samples if s[0] <= t0][-1:]
        after = [s for s in samples if s[0] >= t1][:1]
        inside = before + [s for s in samples if t0 < s[0] < t1] + after
        if len(inside) < 2:
            return float("nan")
        (a, x), (b, y) = inside[0], inside[-1]
        return (y - x) / (b - a) if b > a else float("nan")


class FloorView:
    """The floor subscriber: every tester's Master/status and Master/alarm."""

    def __init__(self, broker: Mosquitto) -> None:
        self.states: dict[str, list[tuple[float, str]]] = {}
        self.alarms: dict[str, int] = {}
        self.mqtt = MqttService(
            reactor, MqttOptions(host=broker.host, port=broker.port), "bench.floor.view",
            subscriptions=[("ate/+/Master/status", 2), ("ate/+/Master/alarm", 2)],
            on_message=self._message)

    def _message(self, topic: str, payload: bytes) -> None:
        device = topic.split("/")[1]
        if topic.endswith("/alarm"):
            self.alarms[device] = self.alarms.get(device, 0) + 1
        else:
            self.states.setdefault(device, []).append(
                (time.perf_counter(), json.loads(payload).get("state")))


class TimedClient(HandlerClient):
    """The handler client, timing every status it receives."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.status_times: list[tuple[float, str]] = []

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/status"):
            self.status_times.append((time.perf_counter(), json.loads(payload).get("state")))
        super()._on_message(topic, payload)


# --------------------------------------------------------------------------------------
# one tester


class Tester:
    def __init__(self, index: int, args, procs: Processes, workdir: str) -> None:
        self.index = index
        self.device = f"SCT-{index + 1:02d}"
        self.sites = [str(i) for i in range(args.sites)]
        self.args = args
        self.procs = procs
        self.dir = os.path.join(workdir, self.device)
        os.makedirs(os.path.join(self.dir, "jobs"))
        with open(FIXTURE, encoding="utf-8") as f:  # the job names its tester
            job = f.read().replace(FIXTURE_DEVICE, self.device)
        with open(os.path.join(self.dir, "jobs", "le306426001.xml"), "w") as f:
            f.write(job)
        self.broker: Mosquitto | None = None
        self.client: TimedClient | None = None
        self.master: subprocess.Popen | None = None
        self.sim_proc: subprocess.Popen | None = None
        self.sim = None
        self.lat: dict[str, list[float]] = {}
        self.parts: dict[str, int] = {}

    def start_broker(self, floor: Mosquitto | None, shared: Mosquitto | None) -> None:
        if shared is not None:
            self.broker = shared
            return
        assert floor is not None
        self.broker = self.procs.broker([*BROKER_LINES, *bridge_config(
            f"floor-{self.device}", floor.port, floor_bridge_topics(self.device, [HANDLER]))])

    def start(self) -> defer.Deferred:
        """Start the handler client, the sites and the master; fires once initialized."""
        b = self.broker
        self.client = TimedClient(reactor, b.host, b.port, self.device, "bench.floor")
        d = self.client.start()
        d.addCallback(lambda _: self._spawn())
        return d

    def _spawn(self) -> defer.Deferred:
        b = self.broker
        up = self.client.wait_state("initialized", 600, since=0)
        sim_cfg = {"broker_host": b.host, "broker_port": b.port, "device_id": self.device,
                   "sites": self.sites, "test_time": 0.0, "ptr_count": 5, "seed": 1,
                   "bins": [{"sbin": 1, "hbin": 1, "weight": 1}]}
        if self.args.sim == "process":
            path = os.path.join(self.dir, "sim.json")
            with open(path, "w") as f:
                json.dump(sim_cfg, f)
            self.sim_proc = self.procs.spawn(f"sim {self.device}", TWISTD + [
                "-l", os.path.join(self.dir, "sim.log"), "ate-sim-sites", "--config", path],
                self.dir, os.path.join(self.dir, "sim.out"))
        else:
            from ate.sim.sites import SimSitesService

            self.sim = SimSitesService(reactor, sim_config_from_dict(sim_cfg, source="bench"),
                                       client_id=f"simsites.{self.device}")
            self.sim.startService()
        cfg = {
            "broker_host": b.host, "broker_port": b.port, "device_id": self.device,
            "sites": self.sites, "Handler": HANDLER, "environment": "FLOOR",
            "webui_host": "127.0.0.1", "webui_port": free_port(), "jobsource": "filesystem",
            "jobformat": "xml.semi-ate", "filesystemdatasource_path": os.path.join(
                self.dir, "jobs"),
            "filesystemdatasource_jobpattern": "le#jobname#.xml", "enable_timeouts": True,
            "site_layout": [[i, 0] for i in range(len(self.sites))], "loglevel": 30,
            "stdf_directory": self.dir, "log_directory": os.path.join(self.dir, "log"),
        }
        path = os.path.join(self.dir, "master.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.master = self.procs.spawn(f"master {self.device}", TWISTD + [
            "-l", os.path.join(self.dir, "master.log"), "ate-master", "--config", path],
            self.dir, os.path.join(self.dir, "master.out"))
        return up

    async def load(self) -> None:
        await self.client.command("load", {"lot_number": LOT}, expect="ready", timeout=300)

    async def run(self, phase: str, seconds: float) -> None:
        """Cycles for ``seconds``: next with every site, wait for the response."""
        lat = self.lat.setdefault(phase, [])
        n = mark = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            ids = [f"{phase}{n}-{s}" for s in self.sites]
            payload = {"sites": [{"siteid": s, "partid": p, "binning": -1}
                                 for s, p in zip(self.sites, ids, strict=True)]}
            t0 = time.perf_counter()
            mark = self.client.mark()
            d = self.client.wait_response("next", 60)
            self.client.send("next", payload)
            await d
            lat.append(time.perf_counter() - t0)
            n += 1
        self.parts[phase] = n * len(self.sites)
        # the ready after the last part; then what the client recorded is dropped
        await self.client.wait_state("ready", 60, since=mark)
        self.client.received.clear()

    async def unload(self) -> None:
        await self.client.command("unload", expect="initialized", timeout=120)

    async def stop(self) -> None:
        if self.client is not None and self.client.mqtt.running:
            await self.client.stop()
        if self.sim is not None and self.sim.running:
            await self.sim.stopService()


# --------------------------------------------------------------------------------------


def floor_counts(view: FloorView, t: Tester, t0: float, t1: float) -> tuple[int, int, float]:
    """(state changes the floor saw, the tester's client saw, median delay ms) of the
    statuses the client got in [t0, t1].  The floor's sequence of a tester is matched with
    its client's position by position; where they differ (the floor missed some), only
    the count of the floor's statuses in the window is given."""
    local = t.client.status_times
    seen = view.states.get(t.device, [])
    window = [i for i, (ts, _) in enumerate(local) if t0 <= ts <= t1]
    if not window:
        return 0, 0, float("nan")
    if [s for _, s in seen[:len(local)]] == [s for _, s in local[:len(seen)]]:
        matched = [i for i in window if i < len(seen)]
        delays = [seen[i][0] - local[i][0] for i in matched]
        return len(matched), len(window), (statistics.median(delays) * 1e3 if delays
                                           else float("nan"))
    count = sum(1 for ts, _ in seen if local[window[0]][0] <= ts <= local[window[-1]][0] + 1)
    return count, len(window), float("nan")


async def main(args) -> None:
    procs = Processes()
    workdir = tempfile.mkdtemp(prefix="ate-bench-floor-")

    def clean_up() -> None:
        procs.stop_all()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    # Ctrl-C (or SIGTERM) stops the reactor before this coroutine could run its finally:
    # stop the processes from the shutdown trigger too (clean_up runs once)
    trigger = reactor.addSystemEventTrigger("before", "shutdown", clean_up)
    testers: list[Tester] = []
    watchers: list = []
    try:
        floor_extra = [*BROKER_LINES, *persistence_lines(args.floor_persistence)]
        floor = procs.broker(floor_extra)
        shared = floor if args.topology == "single" else None
        stats = {"floor" if shared is None else "broker": SysStats(floor, "floor")}
        view = FloorView(floor)
        watchers = [view.mqtt, *(s.mqtt for s in stats.values())]
        for w in watchers:
            w.startService()
            await w.whenConnected()
        testers = [Tester(i, args, procs, workdir) for i in range(args.masters)]
        print(f"topology {args.topology}, {args.masters} masters x {args.sites} sites, "
              f"sites {args.sim}, floor persistence {args.floor_persistence}; "
              f"work directory {workdir}", flush=True)

        async def bring_up(group: list[Tester]) -> None:
            for t in group:
                t.start_broker(floor, shared)
                if shared is None:
                    s = stats[t.device] = SysStats(t.broker, t.device)
                    s.mqtt.startService()
                    watchers.append(s.mqtt)
            t_up = time.perf_counter()
            await defer.gatherResults([t.start() for t in group])
            await defer.gatherResults([defer.Deferred.fromCoroutine(t.load()) for t in group])
            print(f"  {len(group)} tester(s) up and loaded in {time.perf_counter() - t_up:.1f} s",
                  flush=True)

        def process_cpu() -> dict[str, float]:
            """CPU seconds so far: this bench, the masters, the site processes."""
            return {"bench": cpu_seconds(os.getpid()),
                    "masters": sum(cpu_seconds(t.master.pid) for t in testers if t.master),
                    "sites": sum(cpu_seconds(t.sim_proc.pid) for t in testers if t.sim_proc)}

        async def phase(name: str, group: list[Tester], seconds: float) -> dict:
            cpu0 = {k: cpu_seconds(s.broker.pid) for k, s in stats.items()}
            own0 = process_cpu()
            t0 = time.perf_counter()
            await defer.gatherResults([defer.Deferred.fromCoroutine(t.run(name, seconds))
                                       for t in group])
            t1 = time.perf_counter()
            await task.deferLater(reactor, 1.5)  # the last $SYS samples and floor statuses
            cpu = {k: (cpu_seconds(s.broker.pid) - cpu0[k]) / (t1 - t0) * 100
                   for k, s in stats.items()}
            own = {k: (v - own0[k]) / (t1 - t0 + 1.5) * 100 for k, v in process_cpu().items()}
            return {"t0": t0, "t1": t1, "cpu": cpu, "own": own,
                    "tx": {k: s.rate("sent", t0, t1) for k, s in stats.items()},
                    "prx": {k: s.rate("packets received", t0, t1) for k, s in stats.items()},
                    "ptx": {k: s.rate("packets sent", t0, t1) for k, s in stats.items()}}

        await bring_up(testers[:1])
        solo = await phase("solo", testers[:1], args.solo_seconds)
        print("  solo done", flush=True)
        if len(testers) > 1:
            await bring_up(testers[1:])
        together = await phase("all", testers, args.seconds)
        print("  all done", flush=True)
        await defer.gatherResults([defer.Deferred.fromCoroutine(t.unload()) for t in testers])
        report(args, testers, solo, together, view)
    finally:
        for t in testers:
            try:
                await t.stop()
            except Exception as e:  # noqa: BLE001 - the processes are stopped regardless
                print(f"stopping {t.device}: {e}", file=sys.stderr)
        for w in watchers:
            if w.running:
                await w.stopService()
        reactor.removeSystemEventTrigger(trigger)
        clean_up()


def report(args, testers: list[Tester], solo: dict, together: dict, view: FloorView) -> None:
    s0 = testers[0]
    solo_lat = s0.lat["solo"]
    solo_p50, solo_p90 = statistics.median(solo_lat) * 1e3, pct(solo_lat, 0.9) * 1e3
    solo_rate = s0.parts["solo"] / (solo["t1"] - solo["t0"])
    print()
    print("| tester | cycles | p50 ms | p90 ms | parts/s | p50 vs alone | floor saw "
          "| floor delay p50 ms | alarms |")
    print("|---|---|---|---|---|---|---|---|---|")
    seen, local, delay = floor_counts(view, s0, solo["t0"], solo["t1"])
    print(f"| {s0.device} alone | {len(solo_lat)} | {solo_p50:.2f} | {solo_p90:.2f} | "
          f"{solo_rate:.0f} | 1.00x | {seen}/{local} | {delay:.2f} | "
          f"{view.alarms.get(s0.device, 0)} |")
    wall = together["t1"] - together["t0"]
    p50s, p90s, total = [], [], 0.0
    for t in testers:
        lat = t.lat["all"]
        p50, p90 = statistics.median(lat) * 1e3, pct(lat, 0.9) * 1e3
        rate = t.parts["all"] / wall
        p50s.append(p50)
        p90s.append(p90)
        total += rate
        seen, local, delay = floor_counts(view, t, together["t0"], together["t1"])
        print(f"| {t.device} | {len(lat)} | {p50:.2f} | {p90:.2f} | {rate:.0f} | "
              f"{p50 / solo_p50:.2f}x | {seen}/{local} | {delay:.2f} | "
              f"{view.alarms.get(t.device, 0)} |")
    print()
    print(f"alone: p50 {solo_p50:.2f} ms, p90 {solo_p90:.2f} ms, {solo_rate:.0f} parts/s")
    print(f"{len(testers)} together: median of the testers' p50 {statistics.median(p50s):.2f} ms "
          f"({statistics.median(p50s) / solo_p50:.2f}x alone), worst p90 {max(p90s):.2f} ms, "
          f"{total:.0f} parts/s in all ({total / len(testers):.0f} per tester, "
          f"{total / len(testers) / solo_rate:.2f}x alone)")
    for name, ph in (("alone", solo), ("together", together)):
        keys = list(ph["tx"])
        floor_keys = [k for k in keys if k in ("floor", "broker")]
        tester_keys = [k for k in keys if k not in ("floor", "broker")]
        parts = []
        for k in floor_keys:
            parts.append(f"{k}: {ph['tx'][k]:.0f} PUBLISH/s out, packets {ph['prx'][k]:.0f}/s "
                         f"in, {ph['ptx'][k]:.0f}/s out, CPU {ph['cpu'][k]:.0f}%")
        if tester_keys:
            tx, prx, ptx = (sum(ph[x][k] for k in tester_keys) for x in ("tx", "prx", "ptx"))
            cpu = [ph["cpu"][k] for k in tester_keys]
            parts.append(f"{len(tester_keys)} tester brokers (sums): {tx:.0f} PUBLISH/s out, "
                         f"packets {prx:.0f}/s in, {ptx:.0f}/s out, CPU {sum(cpu):.0f}%, "
                         f"the busiest {max(cpu):.0f}%")
        print(f"brokers {name}: " + "; ".join(parts))
        print(f"processes {name}: CPU " + ", ".join(f"{k} {v:.0f}%" for k, v in ph["own"].items())
              + f" (100% = one core; {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f})")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--masters", type=int, default=20)
    p.add_argument("--sites", type=int, default=4, help="simulated sites per tester")
    p.add_argument("--seconds", type=float, default=120.0, help="all testers together")
    p.add_argument("--solo-seconds", type=float, default=30.0, help="the first tester alone")
    p.add_argument("--topology", choices=("single", "bridged"), default="single")
    p.add_argument("--floor-persistence", default="off",
                   help="the floor broker (bridged) or the one broker (single) persists: off, "
                        "changes:N (autosave after N changes) or seconds:N (every N s)")
    p.add_argument("--sim", choices=("process", "bench"), default="process",
                   help="simulated sites: a twistd ate-sim-sites per tester, or all in the bench")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, STDF)")
    a = p.parse_args(argv)
    try:
        persistence_lines(a.floor_persistence)
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if a.masters < 1 or a.sites < 1 or a.seconds <= 0 or a.solo_seconds <= 0:
        p.error("--masters and --sites must be at least 1, --seconds and --solo-seconds > 0")
    return a


if __name__ == "__main__":
    a = parse()
    task.react(lambda _r: defer.Deferred.fromCoroutine(main(a)))
