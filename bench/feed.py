#!/usr/bin/env python3
"""Websocket feed benchmark: the handler cycle with and without 50 UI clients on ``/ws``.

    python bench/feed.py [--sites 16] [--cycles 1000] [--clients 50] [--blocks 4] [--nice 19]

One private mosquitto (set_tcp_nodelay) on 127.0.0.1 and one ``twistd -n ate-master`` with
its web UI on a free loopback port (``spawn_master`` from bench/cycle.py).  This process runs
the simulated sites (T = 0 test time) and the handler client on the Twisted reactor, exactly
as bench/cycle.py does; the handler sends ``next`` with every site and waits for the
response.  The lot is loaded once and both modes run against the same master and lot, in
alternating blocks (ABBA: off, on, on, off, ...) so drift (lot growth, other load on the
machine) hits both modes alike.

The websocket clients run in a **separate child process** (this file with ``--child``),
started for every "on" block and gone for every "off" block.  Running them on this
process's reactor would put their 50 x 18 frames per cycle of websocket decoding and
``json.loads`` on the same thread as the handler client and the simulated sites, so the
handler cycle would measure the bench's own client work rather than the master's.  The
child is reniced (``--nice``, default 19) so on a small machine it takes CPU only when the
master, broker and handler would leave it idle; the price is that its receipt times
include its own scheduling delay, so the feed latency is an upper bound.

Every client parses every message with ``json.loads`` like a real UI.  The handler's part
ids are ``<cycle>.<site>``, so a ``testresult`` (PRR ``PART_ID``) and a ``yield`` (the
total count of the ``-1`` row / number of sites) name their cycle.  Feed latency =
client receipt time - handler receipt time of that cycle's ``next`` response (both
``time.perf_counter``, i.e. CLOCK_MONOTONIC, shared across processes).  The master sends
each ``testresult`` as the site result arrives, *before* it publishes the response, so that
latency may be negative; ``yield`` goes out right after the response.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

KIND_TESTRESULT = 0
KIND_YIELD = 1
KIND_BINTABLE = 2

# ------------------------------------------------------------------------------------------
# The child: N websocket clients.


def child_main(args) -> None:
    """Connect ``args.clients`` clients; print "ready" when all got their connection start;
    on stdin EOF close them and pickle what they received to ``args.out``."""
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet import defer, protocol, reactor, stdio, task

    if args.nice:
        os.nice(args.nice)
    nsites = args.sites
    perf = time.perf_counter
    loads = json.loads

    class Rec:
        def __init__(self) -> None:
            self.kind = array.array("b")
            self.cycle = array.array("q")
            self.t = array.array("d")
            self.client = array.array("i")
            self.messages = 0
            self.errors = 0

    rec = Rec()
    opened: list = []
    closed: list = []
    all_ready: defer.Deferred = defer.Deferred()
    all_closed: defer.Deferred = defer.Deferred()

    seen: dict = {}                      # client -> last cycle whose yield it parsed
    drain = {"target": None, "d": defer.Deferred()}

    def check_drained() -> None:
        target = drain["target"]
        if (target is not None and not drain["d"].called
                and all(seen.get(c, -1) >= target for c in opened if c not in closed)):
            drain["d"].callback(None)

    class Client(WebSocketClientProtocol):
        started = False

        def onOpen(self) -> None:
            self.index = len(seen)
            seen[self] = -1

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            t = perf()
            try:
                msg = loads(payload)
                rec.messages += 1
                kind = msg["type"]
                body = msg["payload"]
                if kind == "testresult":
                    records = body["payload"] if isinstance(body, dict) else body
                    prr = records[-1]
                    k = int(str(prr.get("PART_ID", "")).split(".", 1)[0])
                    rec.kind.append(KIND_TESTRESULT)
                    rec.cycle.append(k)
                    rec.t.append(t)
                    rec.client.append(self.index)
                elif kind == "yield":
                    for row in body:
                        if row["siteid"] == "-1" and row["name"] == "sum":
                            n = row["count"]
                            if n % nsites == 0:  # a tick between results counts a partial part
                                rec.kind.append(KIND_YIELD)
                                rec.cycle.append(n // nsites - 1)
                                rec.t.append(t)
                                rec.client.append(self.index)
                                seen[self] = n // nsites - 1
                                if drain["target"] is not None:
                                    check_drained()
                            break
                elif kind == "bintable":
                    total = sum(sc["count"] for row in body for sc in row["siteCounts"])
                    if total % nsites == 0:
                        rec.kind.append(KIND_BINTABLE)
                        rec.cycle.append(total // nsites - 1)
                        rec.t.append(t)
                        rec.client.append(self.index)
                elif kind == "status" and not self.started:
                    self.started = True  # the last message of the connection start (§11.2)
                    opened.append(self)
                    if len(opened) == args.clients and not all_ready.called:
                        all_ready.callback(None)
            except Exception:
                rec.errors += 1

        def onClose(self, wasClean, code, reason) -> None:
            closed.append(self)
            check_drained()                  # a client the master dropped gets no more
            if len(closed) == args.clients and not all_closed.called:
                all_closed.callback(None)

    url = f"ws://127.0.0.1:{args.port}/ws"
    factory = WebSocketClientFactory(url)
    factory.protocol = Client
    factory.setProtocolOptions(autoFragmentSize=0)

    class Stdin(protocol.Protocol):
        def __init__(self) -> None:
            self.eof: defer.Deferred = defer.Deferred()

        def dataReceived(self, data: bytes) -> None:
            # "<k>\n": the last measured cycle; finish once every client parsed its yield
            self.buf = getattr(self, "buf", b"") + data
            if b"\n" in self.buf:
                drain["target"] = int(self.buf.split(b"\n", 1)[0])
                check_drained()

        def connectionLost(self, reason=None) -> None:
            if not self.eof.called:
                self.eof.callback(None)

    async def run(_reactor) -> None:
        stdin = Stdin()
        stdio.StandardIO(stdin)
        for _ in range(args.clients):
            reactor.connectTCP("127.0.0.1", args.port, factory)
        all_ready.addTimeout(30, reactor)
        await all_ready
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        drain["d"].addTimeout(120, reactor)
        try:
            await drain["d"]
        except defer.TimeoutError:
            sys.stderr.write("clients did not receive every yield within 120 s\n")
        for c in opened:
            c.sendClose(1000)
        all_closed.addTimeout(10, reactor)
        try:
            await all_closed
        except defer.TimeoutError:
            pass
        with open(args.out, "wb") as f:
            pickle.dump({"kind": rec.kind.tobytes(), "cycle": rec.cycle.tobytes(),
                         "t": rec.t.tobytes(), "client": rec.client.tobytes(),
                         "messages": rec.messages,
                         "errors": rec.errors, "clients": len(opened),
                         "cpu": time.process_time(),
                         "closed": len(closed)}, f)

    task.react(lambda r: defer.Deferred.fromCoroutine(run(r)))


# ------------------------------------------------------------------------------------------
# The bench.


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


async def bench(args) -> None:
    from twisted.internet import defer, protocol, reactor, task

    from cycle import (
        DEVICE,
        LOT,
        HandlerClient,
        Mosquitto,
        SimSitesService,
        cpu_seconds,
        sim_config_from_dict,
        spawn_master,
    )

    class Child(protocol.ProcessProtocol):
        def __init__(self) -> None:
            self.ready: defer.Deferred = defer.Deferred()
            self.ended: defer.Deferred = defer.Deferred()
            self.out = b""

        def outReceived(self, data: bytes) -> None:
            self.out += data
            if b"ready\n" in self.out and not self.ready.called:
                self.ready.callback(None)

        def errReceived(self, data: bytes) -> None:
            sys.stderr.write(data.decode(errors="replace"))

        def processExited(self, reason) -> None:
            pass

        def processEnded(self, reason) -> None:
            if not self.ready.called:
                self.ready.errback(RuntimeError(f"client process ended: {self.out[-500:]!r}"))
            self.ended.callback(None)

    n = args.sites
    broker = Mosquitto()
    broker.start()
    workdir = tempfile.mkdtemp(prefix="ate-bench-feed-")
    sim = handler = transport = pp = None
    cyc = {False: [], True: []}          # handler cycle seconds per mode
    cpu = {False: 0.0, True: 0.0}        # master CPU seconds per mode
    child_cpu = 0.0                      # client process CPU seconds, over child_cycles
    child_cycles = 0
    resp_t: dict[int, float] = {}        # cycle -> handler receipt of the response
    measured_on: set[int] = set()        # cycles measured with clients
    lat = {KIND_TESTRESULT: [], KIND_YIELD: [], KIND_BINTABLE: []}
    last_tr: list[float] = []            # per client and cycle: its last testresult
    counts = {"messages": 0, "errors": 0, "clients": 0, "expected": 0, "got": 0}
    try:
        sim_cfg = sim_config_from_dict({
            "broker_host": broker.host, "broker_port": broker.port, "device_id": DEVICE,
            "sites": [str(i) for i in range(n)], "test_time": 0.0, "ptr_count": 5,
            "bins": [{"sbin": 1, "hbin": 1, "weight": 1}], "seed": 1}, source="bench")
        sim = SimSitesService(reactor, sim_cfg, client_id="simsites.bench.feed")
        sim.startService()
        handler = HandlerClient(reactor, broker.host, broker.port, DEVICE, client_id="bench.feed")
        await handler.start()
        await sim.mqtt.whenConnected()
        up = handler.wait_state("initialized", 60)
        pp, transport = spawn_master(broker, n, workdir)
        with open(os.path.join(workdir, f"master{n}.json")) as f:
            port = json.load(f)["webui_port"]
        pid = transport.pid
        await up
        ready = handler.wait_state("ready", 60)
        await handler.send("load", {"lot_number": LOT})
        await ready

        state = {"k": 0}

        async def cycle() -> float:
            k = state["k"]
            payload = {"sites": [{"siteid": str(i), "partid": f"{k}.{i}", "binning": -1}
                                 for i in range(n)]}
            t0 = time.perf_counter()
            d = handler.wait_response("next", 30)
            handler.send("next", payload)
            await d
            t1 = time.perf_counter()
            resp_t[k] = t1
            if args.pace:
                await task.deferLater(reactor, max(0.0, args.pace - (t1 - t0)), lambda: None)
            state["k"] = k + 1
            return t1 - t0

        for _ in range(args.warmup):
            await cycle()

        per_block = max(1, args.cycles // args.blocks)
        order = []
        for b in range(args.blocks):   # ABBA ABBA ...
            order += [False, True] if b % 2 == 0 else [True, False]
        for on in order:
            child = None
            if on:
                out = os.path.join(workdir, f"clients{state['k']}.pickle")
                child = Child()
                ct = reactor.spawnProcess(
                    child, sys.executable,
                    [sys.executable, os.path.abspath(__file__), "--child", "--port", str(port),
                     "--clients", str(args.clients), "--sites", str(n), "--nice",
                     str(args.nice), "--out", out],
                    env=dict(os.environ), path=workdir)
                child.ready.addTimeout(60, reactor)
                await child.ready
            for _ in range(args.settle):
                await cycle()
            k0 = state["k"]
            cpu0 = cpu_seconds(pid)
            for _ in range(per_block):
                cyc[on].append(await cycle())
            cpu[on] += cpu_seconds(pid) - cpu0
            k1 = state["k"]
            handler.received.clear()
            if on:
                ct.write(f"{k1 - 1}\n".encode())   # the child ends once it has it all
                child.ended.addTimeout(150, reactor)
                await child.ended

                with open(out, "rb") as f:
                    r = pickle.load(f)
                child_cpu += r["cpu"]
                child_cycles += args.settle + per_block
                kinds = array.array("b", r["kind"])
                cycles = array.array("q", r["cycle"])
                ts = array.array("d", r["t"])
                clients = array.array("i", r["client"])
                counts["messages"] += r["messages"]
                counts["errors"] += r["errors"]
                counts["clients"] = max(counts["clients"], r["clients"])
                counts["expected"] += r["clients"] * (k1 - k0) * (n + 2)
                # a client's stream is in order: its last testresult of cycle k is the one
                # just before its yield of cycle k
                prev_tr: dict[tuple[int, int], float] = {}
                for kind, k, t, c in zip(kinds, cycles, ts, clients, strict=True):
                    if not (k0 <= k < k1):
                        continue
                    counts["got"] += 1
                    lat[kind].append(t - resp_t[k])
                    if kind == KIND_TESTRESULT:
                        prev_tr[c, k] = t
                    elif kind == KIND_YIELD and (c, k) in prev_tr:
                        last_tr.append(prev_tr.pop((c, k)) - resp_t[k])
                measured_on.update(range(k0, k1))
            print(f"  block {'50 clients' if on else 'no clients':10s} cycles {k0}-{k1 - 1}: "
                  f"p50 {statistics.median(cyc[on][-per_block:]) * 1e3:.3f} ms", flush=True)
    finally:
        if transport is not None:
            transport.signalProcess("TERM")
            pp.ended.addTimeout(10, reactor)
            try:
                await pp.ended
            except defer.TimeoutError:
                transport.signalProcess("KILL")
        if handler is not None:
            await handler.stop()
        if sim is not None:
            await sim.stopService()
        broker.stop()
        broker.cleanup()
        dropped = 0
        try:
            with open(os.path.join(workdir, f"twistd{n}.log")) as f:
                dropped = sum(1 for line in f if "dropped:" in line)
        except OSError:
            pass
        shutil.rmtree(workdir, ignore_errors=True)

    off, on = cyc[False], cyc[True]
    print()
    print(f"{n} sites, T = 0, pace {args.pace or 'none'}, {len(off)} cycles each way in "
          f"{args.blocks * 2} alternating "
          f"blocks; {args.clients} clients in a child process (nice {args.nice})")
    print()
    print("| mode | cycles | cycle p50 ms | cycle p99 ms | parts/s | master CPU ms/cycle |")
    print("|---|---|---|---|---|---|")
    for name, xs, c in (("no clients", off, cpu[False]),
                        (f"{args.clients} clients", on, cpu[True])):
        print(f"| {name} | {len(xs)} | {statistics.median(xs) * 1e3:.3f} | "
              f"{pct(xs, 0.99) * 1e3:.3f} | {len(xs) * n / sum(xs):.0f} | "
              f"{c / len(xs) * 1e3:.3f} |")
    print(f"| ratio | | {statistics.median(on) / statistics.median(off):.3f}x | "
          f"{pct(on, 0.99) / pct(off, 0.99):.3f}x | "
          f"{(len(on) / sum(on)) / (len(off) / sum(off)):.3f}x | "
          f"{(cpu[True] / len(on)) / (cpu[False] / len(off)):.3f}x |")
    print()
    print("feed latency: client receipt - handler receipt of that cycle's next response")
    print()
    print("| message | samples | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for name, xs in (("testresult (each)", lat[KIND_TESTRESULT]),
                     ("testresult (last of the part)", last_tr),
                     ("yield", lat[KIND_YIELD]), ("bintable", lat[KIND_BINTABLE])):
        if xs:
            print(f"| {name} | {len(xs)} | {statistics.median(xs) * 1e3:.3f} | "
                  f"{pct(xs, 0.99) * 1e3:.3f} | {max(xs) * 1e3:.3f} |")
    print()
    print(f"clients: {counts['clients']} connected per block, {counts['messages']} messages "
          f"parsed, {counts['errors']} parse errors; measured-cycle messages received "
          f"{counts['got']} of {counts['expected']} expected; master dropped {dropped}; "
          f"client process CPU {child_cpu / max(1, child_cycles) * 1e3:.3f} ms/cycle")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=16)
    p.add_argument("--cycles", type=int, default=1000, help="measured cycles per mode")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--blocks", type=int, default=4, help="blocks per mode")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--settle", type=int, default=20,
                   help="unmeasured cycles at the start of every block")
    p.add_argument("--pace", type=float, default=0.0,
                   help="seconds from one next to the next (0: back to back, T = 0 lot)")
    p.add_argument("--nice", type=int, default=19, help="niceness of the client process")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse()
    if a.child:
        child_main(a)
    else:
        from twisted.internet import defer, task
        task.react(lambda _r: defer.Deferred.fromCoroutine(bench(a)))
