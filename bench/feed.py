#!/usr/bin/env python3
"""Websocket feed benchmark: the handler cycle with and without 50 UI clients on ``/ws``,
or with the operator UI's charts page open in Chromium (``--browsers N``).

    python bench/feed.py [--sites 16] [--cycles 1000] [--clients 50] [--blocks 4] [--nice 19]
    python bench/feed.py --pace 0.05 --browsers 1 [--clients 0] [--page-profile]
    python bench/feed.py --pace 0.05 --hogs 1        # the control: a busy loop, no client

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

``--browsers N`` (default 0; ``--clients`` then defaults to 0, give both to have both):
the "on" blocks have N headless Chromium pages (``/usr/bin/chromium`` through Playwright,
the arguments of tests/web/test_browser.py) of the UI's root page ``/``, scrolled to the
production charts; a block starts only once the charts card is visible and every chart
drew its data elements (trend polylines and site bars for every site, pareto bars, time
histogram bars, E10 segments, figures), and ends once every page shows the last cycle's
parts count, then its pages close.  One browser process serves the whole run, launched
before the warm-up (the "off" blocks run with it idle, no page): launching Chromium for
every block would put its start-up and the first layout into the blocks' start, which is
not what an open page costs.  The browser child runs this file (``--browser-child``) and
is reniced; Chromium sets its own niceness (browser process -8, renderers 0 or 5, some
threads -8), so this process renices every thread of the browser's process tree before
the settle cycles and again before the measured ones, and reports how many Chromium had
set otherwise.  Reported for the pages: feed messages counted in the page, chart drawings
a second, page errors and the browser tree's CPU per measured cycle (from /proc).  The
page's own receipt times are not compared (no shared clock), so there is no latency table
for pages; the page's own ``window.ateUi`` figures (frames, drawing, style/layout/paint) are
printed when the UI has them, and ``--page-profile`` samples the first page's JavaScript.

Two controls tell the master's share from the machine's: ``--clients 1`` (one bare
websocket client: the master does the same feed work as for one page, the client next to
none) and ``--hogs 1`` (a reniced busy loop, no feed client at all: what CPU competition
alone costs the cycle on this machine).  ``--idle`` puts the client, browser and busy-loop
processes in SCHED_IDLE as well as renicing them.
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
    if args.idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
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
# The browser child: N headless Chromium pages of the operator UI.

CHROMIUM = "/usr/bin/chromium"
#: the Chromium arguments of tests/web/test_browser.py
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

#: before the page's scripts: count the feed's messages and the page's errors in the page
#: (no Playwright event reaches this process while a block runs)
PAGE_PROBE = """(() => {
  const stats = { messages: 0, bytes: 0, errors: [] };
  window.__bench = stats;
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...a) {
      super(...a);
      this.addEventListener("message", (e) => { stats.messages++; stats.bytes += e.data.length; });
    }
  };
  window.addEventListener("error", (e) => stats.errors.push(`error: ${e.message}`));
  window.addEventListener("unhandledrejection", (e) => stats.errors.push(`rejection: ${e.reason}`));
  const error = console.error;
  console.error = (...a) => {
    stats.errors.push(a.map(String).join(" "));
    error.apply(console, a);
  };
})();"""

#: every chart of the production card has drawn its data elements
CHARTS_DRAWN = """([n]) => {
  const q = (s) => document.querySelectorAll(s).length;
  return q('#chart-trend polyline[data-site]') === n && q('#chart-pareto rect[data-sbin]') > 0
    && q('#chart-sites rect[data-site]') === n && q('#chart-cycle rect[data-kind]') > 0
    && q('#chart-e10 rect[data-state]') > 0 && q('#production-figures dd[data-key]') > 0;
}"""

#: the status shows ``parts`` parts: the page has had the last measured cycle
PAGE_DRAINED = """([parts]) => document.getElementById('parts').textContent === String(parts)"""

PAGE_STATS = """() => ({ renders: +(document.getElementById('charts').dataset.renders || 0),
  messages: window.__bench.messages, bytes: window.__bench.bytes,
  errors: window.__bench.errors.slice(0, 5), nerrors: window.__bench.errors.length,
  ms: performance.now(),
  ui: window.ateUi ? { frames: window.ateUi.frames.n, frame_ms: window.ateUi.frames.ms,
    frame_cost: window.ateUi.frames.cost, frame_max: window.ateUi.frames.max,
    message_ms: Object.values(window.ateUi.messages).reduce((a, c) => a + c.ms, 0),
    opens: window.ateUi.opens } : null })"""


def browser_main(args) -> None:
    """One Chromium for the whole run (this process reniced first, so Chromium and
    Playwright's driver inherit the niceness).  Commands on stdin, one a line, each
    answered on stdout: ``open`` opens ``args.browsers`` pages of ``/`` (a context each),
    waits until the charts card is visible and every chart drew its data, answers
    ``ready``; ``drain <k>`` waits until every page shows the parts of cycle k, answers
    ``done <json>`` (per page: renders, feed messages and bytes, page errors) and closes
    the pages; EOF closes Chromium."""
    if args.nice:
        os.nice(args.nice)
    if args.idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    from playwright.sync_api import sync_playwright

    url = f"http://127.0.0.1:{args.port}/"

    def answer(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                     headless=True)
        pages: list = []
        answer("launched")
        try:
            for line in sys.stdin:
                words = line.split()
                if not words:
                    continue
                if words[0] == "open":
                    for _ in range(args.browsers):
                        page = browser.new_page(viewport={"width": 1280, "height": 900})
                        page.set_default_timeout(60_000)
                        page.add_init_script(PAGE_PROBE)
                        pages.append(page)
                        page.goto(url)
                    for page in pages:
                        page.wait_for_function(
                            "() => document.getElementById('conn').textContent === 'online'",
                            polling=100)
                        page.locator("#charts").scroll_into_view_if_needed()
                        if not page.locator("#charts").is_visible():
                            raise RuntimeError("the charts card is not visible")
                        page.wait_for_function(CHARTS_DRAWN, arg=[args.sites], polling=100)
                    if args.page_profile:  # the first page's JavaScript, sampled
                        cdp = pages[0].context.new_cdp_session(pages[0])
                        cdp.send("Profiler.enable")
                        cdp.send("Profiler.setSamplingInterval", {"interval": 500})
                        cdp.send("Profiler.start")
                    answer("ready")
                elif words[0] == "drain":
                    parts = (int(words[1]) + 1) * args.sites
                    for page in pages:
                        page.wait_for_function(PAGE_DRAINED, arg=[parts], polling=100,
                                               timeout=120_000)
                    stats = [page.evaluate(PAGE_STATS) for page in pages]
                    if args.page_profile:
                        stats[0]["profile"] = self_times(cdp.send("Profiler.stop")["profile"])
                    for page in pages:
                        page.context.close()
                    pages = []
                    answer("done " + json.dumps(stats))
                else:
                    raise RuntimeError(f"browser child: unknown command {line!r}")
        finally:
            browser.close()


#: a reniced busy loop (--hogs)
HOG = ("import os\nos.nice({nice})\nif {idle}:\n"
       "    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True:\n    pass\n")


def self_times(profile: dict) -> dict[str, float]:
    """A CDP ``Profiler.Profile`` as self milliseconds per function (``name file:line``;
    style, layout and paint show as ``(program)``)."""
    names = {}
    for node in profile["nodes"]:
        f = node["callFrame"]
        where = f["url"].rsplit("/", 1)[-1]
        names[node["id"]] = (f"{f['functionName'] or '(anonymous)'} {where}:{f['lineNumber'] + 1}"
                             if where else f["functionName"])
    out: dict[str, float] = {}
    for node, dt in zip(profile.get("samples", []), profile.get("timeDeltas", []), strict=True):
        out[names[node]] = out.get(names[node], 0.0) + dt / 1e3
    return out


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def renice_tree(pid: int, nice: int, idle: bool = False) -> int:
    """Set every thread of ``pid`` and its descendants to niceness ``nice`` (and with
    ``idle`` the SCHED_IDLE policy); the number of threads that had another.  Chromium
    sets its own niceness: the browser process -8, renderers 0 (foreground) or 5, some
    threads -8 (display critical), so the niceness its launcher inherited does not stick."""
    changed = 0
    for p in tree_pids(pid):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                other = False
                if idle and os.sched_getscheduler(tid) != os.SCHED_IDLE:
                    os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                    other = True
                if os.getpriority(os.PRIO_PROCESS, tid) != nice:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
                    other = True
                changed += other
            except OSError:
                pass  # the thread ended meanwhile
    return changed


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants, from /proc."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


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

    class Hog(protocol.ProcessProtocol):
        def __init__(self) -> None:
            self.ended: defer.Deferred = defer.Deferred()

        def processEnded(self, reason) -> None:
            self.ended.callback(None)

    class Browsers(protocol.ProcessProtocol):
        """The browser child: one answer line per command (``launched``, ``ready``,
        ``done <json>``)."""

        def __init__(self) -> None:
            self.buf = b""
            self.waiting: defer.Deferred | None = None
            self.ended: defer.Deferred = defer.Deferred()

        def answer(self, timeout: float) -> defer.Deferred:
            self.waiting = d = defer.Deferred()
            d.addTimeout(timeout, reactor)
            return d

        def outReceived(self, data: bytes) -> None:
            self.buf += data
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                d, self.waiting = self.waiting, None
                if d is not None and not d.called:
                    d.callback(line.decode())

        def errReceived(self, data: bytes) -> None:
            sys.stderr.write(data.decode(errors="replace"))

        def processEnded(self, reason) -> None:
            d, self.waiting = self.waiting, None
            if d is not None and not d.called:
                d.errback(RuntimeError(f"browser process ended: {reason.value}"))
            self.ended.callback(None)

    n = args.sites
    label = " + ".join(x for x in (
        f"{args.browsers} page{'s' if args.browsers > 1 else ''}" if args.browsers else "",
        f"{args.clients} clients" if args.clients else "",
        f"{args.hogs} busy loop{'s' if args.hogs > 1 else ''}" if args.hogs else "") if x)
    broker = Mosquitto()
    broker.start()
    workdir = tempfile.mkdtemp(prefix="ate-bench-feed-")
    sim = handler = transport = pp = None
    browsers = bt = None                 # the browser child and its transport
    browser_cpu = 0.0                    # its CPU seconds (Chromium, driver) over on cycles
    page_stats: list[dict] = []          # per page and block, from the page
    loads = [os.getloadavg()]
    hogs: list = []                      # the running busy loops: (protocol, transport)
    hog_cpu = 0.0                        # the busy loops' CPU seconds over their blocks
    reniced = unniced = 0                # Chromium threads reniced before / after blocks
    blocks: list[tuple[bool, list[float]]] = []  # (on, its cycle seconds) in run order
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

        if args.browsers:
            # one Chromium for the whole run, started before the warm-up: "off" blocks run
            # with it idle (no page), "on" blocks with args.browsers pages of the UI
            browsers = Browsers()
            launched = browsers.answer(120)
            bt = reactor.spawnProcess(
                browsers, sys.executable,
                [sys.executable, os.path.abspath(__file__), "--browser-child", "--port",
                 str(port), "--browsers", str(args.browsers), "--sites", str(n), "--nice",
                 str(args.nice)] + (["--page-profile"] if args.page_profile else [])
                + (["--idle"] if args.idle else []),
                env=dict(os.environ), path=workdir)
            if await launched != "launched":
                raise RuntimeError("the browser child did not launch Chromium")
            if args.nice or args.idle:
                reniced += renice_tree(bt.pid, args.nice, args.idle)  # idle in "off" blocks too

        for _ in range(args.warmup):
            await cycle()

        per_block = max(1, args.cycles // args.blocks)
        order = []
        for b in range(args.blocks):   # ABBA ABBA ...
            order += [False, True] if b % 2 == 0 else [True, False]
        for on in order:
            child = None
            if on and args.browsers:
                opened = browsers.answer(180)
                bt.write(b"open\n")
                if await opened != "ready":
                    raise RuntimeError("the browser pages did not draw their charts")
            if on and args.clients:
                out = os.path.join(workdir, f"clients{state['k']}.pickle")
                child = Child()
                ct = reactor.spawnProcess(
                    child, sys.executable,
                    [sys.executable, os.path.abspath(__file__), "--child", "--port", str(port),
                     "--clients", str(args.clients), "--sites", str(n), "--nice",
                     str(args.nice), "--out", out] + (["--idle"] if args.idle else []),
                    env=dict(os.environ), path=workdir)
                child.ready.addTimeout(60, reactor)
                await child.ready
            for _ in range(args.hogs if on else 0):
                hog = Hog()
                hogs.append((hog, reactor.spawnProcess(
                    hog, sys.executable,
                    [sys.executable, "-c", HOG.format(nice=args.nice, idle=args.idle)],
                    env=dict(os.environ), path=workdir)))
            if on and bt is not None and (args.nice or args.idle):
                reniced += renice_tree(bt.pid, args.nice, args.idle)
            for _ in range(args.settle):
                await cycle()
            if on and bt is not None and (args.nice or args.idle):
                reniced += renice_tree(bt.pid, args.nice, args.idle)  # threads started meanwhile
            k0 = state["k"]
            cpu0 = cpu_seconds(pid)
            bcpu0 = tree_cpu(bt.pid) if on and bt is not None else 0.0
            for _ in range(per_block):
                cyc[on].append(await cycle())
            cpu[on] += cpu_seconds(pid) - cpu0
            if on and bt is not None:
                browser_cpu += tree_cpu(bt.pid) - bcpu0
                if args.nice or args.idle:  # what Chromium set since then
                    unniced += renice_tree(bt.pid, args.nice, args.idle)
            k1 = state["k"]
            loads.append(os.getloadavg())
            handler.received.clear()
            while hogs:
                hog, ht = hogs.pop()
                hog_cpu += tree_cpu(ht.pid)
                ht.signalProcess("KILL")
                await hog.ended
            if on and args.browsers:
                drained = browsers.answer(180)
                bt.write(f"drain {k1 - 1}\n".encode())
                done = await drained
                if not done.startswith("done "):
                    raise RuntimeError(f"the browser pages did not drain: {done!r}")
                page_stats += json.loads(done[5:])
            if on and args.clients:
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
            blocks.append((on, cyc[on][-per_block:]))
            print(f"  block {label if on else 'off':{len(label)}s} cycles {k0}-{k1 - 1}: "
                  f"p50 {statistics.median(cyc[on][-per_block:]) * 1e3:.3f} ms, "
                  f"load {loads[-1][0]:.2f}", flush=True)
    finally:
        for _hog, ht in hogs:
            ht.signalProcess("KILL")
        if bt is not None:
            bt.closeStdin()              # the child closes Chromium and ends
            browsers.ended.addTimeout(30, reactor)
            try:
                await browsers.ended
            except defer.TimeoutError:
                bt.signalProcess("KILL")
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
    # ABBA: blocks 0-1, 2-3, ... are adjacent pairs of one off and one on block
    pair_blocks = [dict(blocks[i:i + 2]) for i in range(0, len(blocks) - 1, 2)]
    where = []
    if args.browsers:
        where.append(f"{args.browsers} Chromium page{'s' if args.browsers > 1 else ''} of the "
                     "UI (/, charts drawn) in one browser child")
    if args.clients:
        where.append(f"{args.clients} websocket clients in a child process")
    if args.hogs:
        where.append(f"{args.hogs} busy loop process{'es' if args.hogs > 1 else ''} "
                     f"(a control: CPU competition alone, no feed client; "
                     f"{hog_cpu / max(1, len(on)) * 1e3:.3f} ms CPU per on cycle)")
    print()
    print(f"{n} sites, T = 0, pace {args.pace or 'none'}, {len(off)} cycles each way in "
          f"{args.blocks * 2} alternating blocks; {' and '.join(where)} (nice {args.nice}"
          f"{', SCHED_IDLE' if args.idle else ''}); "
          f"load average {loads[0][0]:.2f} at the start, "
          f"{statistics.mean(x[0] for x in loads[1:]):.2f} mean after the blocks, "
          f"{os.cpu_count()} CPUs")
    print()
    print("| mode | cycles | cycle p50 ms | cycle p99 ms | parts/s | master CPU ms/cycle |")
    print("|---|---|---|---|---|---|")
    for name, xs, c in (("off", off, cpu[False]), (label, on, cpu[True])):
        print(f"| {name} | {len(xs)} | {statistics.median(xs) * 1e3:.3f} | "
              f"{pct(xs, 0.99) * 1e3:.3f} | {len(xs) * n / sum(xs):.0f} | "
              f"{c / len(xs) * 1e3:.3f} |")
    print(f"| ratio | | {statistics.median(on) / statistics.median(off):.3f}x | "
          f"{pct(on, 0.99) / pct(off, 0.99):.3f}x | "
          f"{(len(on) / sum(on)) / (len(off) / sum(off)):.3f}x | "
          f"{(cpu[True] / len(on)) / max(1e-9, cpu[False] / len(off)):.3f}x |")
    if args.clients:
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
        print(f"clients: {counts['clients']} connected per block, {counts['messages']} "
              f"messages parsed, {counts['errors']} parse errors; measured-cycle messages "
              f"received {counts['got']} of {counts['expected']} expected; client process "
              f"CPU {child_cpu / max(1, child_cycles) * 1e3:.3f} ms/cycle")
    if args.browsers:
        seconds = sum(x["ms"] for x in page_stats) / 1e3
        errors = [e for x in page_stats for e in x["errors"]]
        print()
        print(f"pages: {len(page_stats)} opened ({args.browsers} per block), "
              f"{sum(x['messages'] for x in page_stats)} feed messages "
              f"({sum(x['bytes'] for x in page_stats) / 1e6:.1f} MB of text), chart drawings "
              f"{sum(x['renders'] for x in page_stats) / max(1e-9, seconds):.2f} per second "
              f"a page, {sum(x['nerrors'] for x in page_stats)} page errors"
              f"{' ' + repr(errors[:3]) if errors else ''}; browser (Chromium + driver) CPU "
              f"{browser_cpu / max(1, len(on)) * 1e3:.3f} ms/cycle over the measured cycles; "
              f"threads Chromium had set to another niceness: {reniced} reniced to "
              f"{args.nice} before the measured cycles, {unniced} found after them")
        uis = [x["ui"] for x in page_stats if x.get("ui")]
        if uis:  # what the page measured itself (window.ateUi), over its whole life
            life = sum(x["ms"] for x in page_stats if x.get("ui")) / 1e3
            print(f"the pages' own figures (window.ateUi, over each page's life, "
                  f"{life / len(uis):.1f} s a page): {sum(u['frames'] for u in uis) / life:.2f} "
                  f"frames/s, feed messages {sum(u['message_ms'] for u in uis) / life:.2f} "
                  f"ms/s, drawing {sum(u['frame_ms'] for u in uis) / life:.2f} ms/s, frames with "
                  f"style, layout and paint {sum(u['frame_cost'] for u in uis) / life:.2f} "
                  f"ms/s, longest frame {max(u['frame_max'] for u in uis):.1f} ms, "
                  f"{sum(u['opens'] for u in uis) - len(uis)} reconnects")
        profile: dict[str, float] = {}
        for x in page_stats:
            for name, ms in x.get("profile", {}).items():
                profile[name] = profile.get(name, 0.0) + ms
        if profile:
            sampled = sum(v for k, v in profile.items() if k != "(idle)")
            print()
            print(f"the first page's main thread, sampled: {sampled:.0f} ms not idle over "
                  f"{len(on)} measured cycles ({sampled / len(on):.2f} ms/cycle; wall time, "
                  "so a niced thread waiting for a CPU counts); self time")
            print()
            print("| function | ms | ms/cycle |")
            print("|---|---|---|")
            for name, ms in sorted(profile.items(), key=lambda x: -x[1])[:15]:
                print(f"| {name} | {ms:.0f} | {ms / len(on):.3f} |")
    print()
    pairs = [statistics.median(block[True]) / statistics.median(block[False])
             for block in pair_blocks]
    print(f"cycle p50 on/off of adjacent blocks (ABBA pairs): "
          f"{', '.join(f'{r:.3f}' for r in pairs)}; median {statistics.median(pairs):.3f}x")
    print(f"master dropped {dropped} websocket clients")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=16)
    p.add_argument("--cycles", type=int, default=1000, help="measured cycles per mode")
    p.add_argument("--clients", type=int, default=None,
                   help="websocket clients in the 'on' blocks (default 50, 0 with --browsers "
                   "or --hogs)")
    p.add_argument("--browsers", type=int, default=0,
                   help="headless Chromium pages of the UI's root page (the charts) in the "
                   "'on' blocks, in one reniced browser process (" + CHROMIUM + ")")
    p.add_argument("--blocks", type=int, default=4, help="blocks per mode")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--settle", type=int, default=20,
                   help="unmeasured cycles at the start of every block")
    p.add_argument("--pace", type=float, default=0.0,
                   help="seconds from one next to the next (0: back to back, T = 0 lot)")
    p.add_argument("--nice", type=int, default=19,
                   help="niceness of the client and browser processes")
    p.add_argument("--idle", action="store_true",
                   help="run the client, browser and busy-loop processes with the SCHED_IDLE "
                   "policy as well: they get a CPU only when nothing else wants one")
    p.add_argument("--hogs", type=int, default=0,
                   help="busy-loop processes (reniced) in the 'on' blocks: a control for "
                   "what CPU competition alone costs the handler cycle")
    p.add_argument("--page-profile", action="store_true",
                   help="with --browsers: sample the first page's JavaScript (CDP Profiler) "
                   "during the measured cycles and print where its time went")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--browser-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.clients is None:
        args.clients = 0 if args.browsers or args.hogs else 50
    for name in ("sites", "cycles", "blocks"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("clients", "browsers", "hogs", "warmup", "settle"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must not be negative, got {getattr(args, name)}")
    if not (args.child or args.browser_child) and args.clients + args.browsers + args.hogs == 0:
        p.error("nothing in the 'on' blocks: give --clients, --browsers or --hogs a positive "
                "number")
    if args.browsers and not os.path.exists(CHROMIUM):
        p.error(f"--browsers needs Chromium at {CHROMIUM} (apt-get install chromium)")
    return args


if __name__ == "__main__":
    a = parse()
    if a.child:
        child_main(a)
    elif a.browser_child:
        browser_main(a)
    else:
        from twisted.internet import defer, task
        task.react(lambda _r: defer.Deferred.fromCoroutine(bench(a)))
