"""A floor of testers through bridges (docs/floor.md): every tester has its own mosquitto,
run from ``etc/mosquitto-tester-bridge.conf`` and bridged to a floor broker run from
``etc/mosquitto-floor.conf``; its master (build_master), simulated sites and a handler
client talk to the tester's broker only, and a floor subscriber watches
``ate/+/Master/status`` and ``ate/+/Master/alarm`` on the floor broker.

The floor broker is killed -9 mid-lot and restarted on the same port: the testers do not
notice (no part lost, no reconnect), and the floor view catches up.  The helpers here are
also used by tests/integration/test_handler_floor.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
from functools import partial

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher

from ate.broker import Mosquitto, floor_bridge_topics, free_port
from ate.config import MqttOptions, master_config_from_dict, sim_config_from_dict
from ate.mqtt.service import MqttService
from ate.sim.sites import SimSitesService
from ate.tap import build_master
from ate.testing.peers import HandlerClient
from tests.stdfread import read_stdf
from tests.waiting import Waiter as _Waiter

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ETC = os.path.join(ROOT, "etc")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "jobs", "le306426001.xml")
TIMEOUT = 30.0
H = "HTO92-20F"
LOT = "306426.001"
#: the device and handler ids the shipped bridge config is written for
ETC_DEVICE, ETC_HANDLER = "SCT-81-1F", "HTO92-20F"
PROBE = "ate/_floorprobe/Master/alarm"

#: every failure of the group is consumed: one is raised, none is left unhandled
gather = partial(gatherResults, consumeErrors=True)


class Waiter(_Waiter):
    timeout = TIMEOUT


# --------------------------------------------------------------------------------------
# the shipped mosquitto configs, on private ports


def etc_lines(name: str) -> list[str]:
    """The settings of ``etc/<name>`` without comments and blank lines."""
    with open(os.path.join(ETC, name), encoding="utf-8") as f:
        return [line.strip() for line in f
                if line.strip() and not line.lstrip().startswith("#")]


def _private(lines: list[str]) -> list[str]:
    """Drop what the private broker sets itself: its listener (loopback, a free port) and
    the persistence location (its own directory)."""
    return [line for line in lines
            if not line.startswith(("listener ", "persistence_location "))]


def floor_broker() -> Mosquitto:
    """The floor broker of ``etc/mosquitto-floor.conf`` on 127.0.0.1 and a free port."""
    return Mosquitto(extra_config=_private(etc_lines("mosquitto-floor.conf")))


def bridged_broker(device_id: str, floor: Mosquitto, handler_id: str = H) -> Mosquitto:
    """A tester's broker of ``etc/mosquitto-tester-bridge.conf`` for ``device_id``, bridged
    to ``floor``."""
    lines = []
    for line in _private(etc_lines("mosquitto-tester-bridge.conf")):
        if line.startswith("address "):
            line = f"address {floor.host}:{floor.port}"
        line = line.replace(ETC_DEVICE, device_id)
        if line.startswith("topic ate/"):
            line = line.replace(f"ate/{ETC_HANDLER}/", f"ate/{handler_id}/")
        lines.append(line)
    return Mosquitto(extra_config=lines)


def saves(broker: Mosquitto) -> int:
    """How often ``broker`` saved its database (from its log)."""
    return broker.log_text().count("Saving in-memory database")


def bridge_connects(floor: Mosquitto, device_id: str) -> int:
    """How often the bridge of ``device_id`` connected to ``floor`` (from its log, which
    survives the floor's restarts)."""
    return len(re.findall(rf" as bridge\.{re.escape(device_id)} ", floor.log_text()))


async def poll(predicate, reactor, timeout: float = TIMEOUT, step: float = 0.05) -> None:
    """Wait (bounded) until ``predicate()`` holds, for state without an event to hook (a
    broker's log)."""
    for _ in range(int(timeout / step)):
        if predicate():
            return
        await deferLater(reactor, step)
    assert predicate()


def is_subsequence(short: list, long: list) -> bool:
    it = iter(long)
    return all(any(x == y for y in it) for x in short)


# --------------------------------------------------------------------------------------
# the floor's view and one tester


def persistent_paho_link(reactor, options, client_id, will, listener):
    """A link factory for MqttService: paho on the reactor (ate.mqtt.reactorpaho) with a
    persistent session (cleansession false), as a floor consumer (MES, dashboard) would
    connect.  ate's own links speak clean sessions only (protocol.md 1.1)."""
    import paho.mqtt.client as paho

    from ate.mqtt.reactorpaho import ReactorPaho

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=False, protocol=paho.MQTTv311,
                         reconnect_on_failure=False)
    client.connect_async(options.host, options.port, options.keepalive)
    return ReactorPaho(reactor, client, listener)


class FloorWatcher(Waiter):
    """A floor subscriber: every tester's Master/status and Master/alarm, by device id;
    with ``persistent``, on a persistent session (the floor broker queues for it while it
    is away, also across the floor's restart: etc/mosquitto-floor.conf persists)."""

    def __init__(self, reactor, floor: Mosquitto, *, persistent: bool = False,
                 events: _Waiter | None = None, also: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.events = events  # also poked on every message
        self.other: list[tuple[str, dict]] = []  # the messages of the topics in ``also``
        self.reactor = reactor
        self.states: dict[str, list[str]] = {}
        self.alarms: dict[str, list[dict]] = {}
        self.probes = 0
        self.mqtt = MqttService(
            reactor, MqttOptions(host=floor.host, port=floor.port),
            "it.floor.consumer" if persistent else "it.floor.watcher",
            subscriptions=[("ate/+/Master/status", 2), ("ate/+/Master/alarm", 2),
                           *((topic, 2) for topic in also)],
            on_message=self._message, backoff=(0.2, 1.0),
            link_factory=persistent_paho_link if persistent else None)

    def _message(self, topic: str, payload: bytes) -> None:
        if topic == PROBE:
            self.probes += 1
        elif not topic.startswith("ate/") or "/Master/" not in topic:
            self.other.append((topic, json.loads(payload)))
        else:
            device, kind = topic.split("/")[1], topic.rsplit("/", 1)[1]
            msg = json.loads(payload)
            if kind == "status":
                self.states.setdefault(device, []).append(msg["state"])
            else:
                self.alarms.setdefault(device, []).append(msg)
        self.poke()
        if self.events is not None:
            self.events.poke()

    async def subscribed(self) -> None:
        """Once (re)connected and subscribed: a probe published after the subscription on
        the same connection comes back."""
        await self.mqtt.whenConnected().addTimeout(TIMEOUT, self.reactor)
        seen = self.probes
        await self.mqtt.publish(PROBE, b"{}", 2)
        await self.until(lambda: self.probes > seen, self.reactor)


class LocalClient(HandlerClient):
    """The handler client on a tester's broker, telling ``on_message`` of every message
    (so that a waiter comparing the floor's view with it is poked from both sides)."""

    def __init__(self, *args, on_message=None, **kw) -> None:
        super().__init__(*args, **kw)
        self._also = on_message

    def _on_message(self, topic: str, payload: bytes) -> None:
        super()._on_message(topic, payload)
        if self._also is not None:
            self._also()


def job_directory(base, device_id: str) -> str:
    """The sample job for ``device_id`` (the job names its tester)."""
    jobs = base / "jobs"
    jobs.mkdir(parents=True)
    with open(FIXTURE, encoding="utf-8") as f:
        (jobs / "le306426001.xml").write_text(f.read().replace(ETC_DEVICE, device_id),
                                              encoding="utf-8")
    return str(jobs)


class FloorTester:
    """One tester: its bridged broker, a master and simulated sites on it, and (after
    ``start_client``) a handler client on it."""

    def __init__(self, reactor, tmp_path, floor: Mosquitto, device_id: str,
                 sites=("0", "1"), *, sim_backoff: tuple[float, float] = (1.0, 30.0),
                 next_ack: float = 10) -> None:
        self.reactor = reactor
        self.device_id = device_id
        self.sites = tuple(sites)
        self.broker = bridged_broker(device_id, floor)
        self.base = tmp_path / device_id
        self.jobs = job_directory(self.base, device_id)
        self.stdf = self.base / "stdf"
        self.parts: list[str] = []   # part ids sent with next, in order
        self.master = self.cell = self.sim = None
        self.client: LocalClient | None = None
        self.sim_backoff = sim_backoff
        self.next_ack = next_ack

    def start_broker(self) -> None:
        self.broker.start()

    def start(self) -> None:
        b = self.broker
        cfg = master_config_from_dict({
            "broker_host": b.host, "broker_port": b.port, "device_id": self.device_id,
            "sites": list(self.sites), "Handler": H, "environment": "FLOOR",
            "jobsource": "filesystem", "jobformat": "xml.semi-ate",
            "filesystemdatasource_path": self.jobs,
            "filesystemdatasource_jobpattern": "le#jobname#.xml",
            "stdf_directory": str(self.stdf), "log_directory": str(self.base / "log"),
            "webui_port": free_port(), "site_layout": [[i, 0] for i in range(len(self.sites))],
            "timeouts": {"startup": 30, "load": 20, "next_ack": self.next_ack, "test": 20,
                         "unload": 20},
        }, source=f"test-floor-master-{self.device_id}")
        self.master, self.cell = build_master(cfg, self.reactor, observe_logs=False)
        self.sim = SimSitesService(self.reactor, sim_config_from_dict({
            "broker_host": b.host, "broker_port": b.port, "device_id": self.device_id,
            "sites": list(self.sites), "test_time": 0.0, "seed": 7, "ptr_count": 2},
            source=f"test-floor-sim-{self.device_id}"), client_id=f"simsites.{self.device_id}",
            mqtt_factory=lambda *a, **kw: MqttService(*a, backoff=self.sim_backoff, **kw))
        self.sim.startService()
        self.master.startService()

    async def start_client(self, on_message=None) -> None:
        self.client = LocalClient(self.reactor, self.broker.host, self.broker.port,
                                  self.device_id, "it.floor.handler", on_message=on_message)
        await self.client.start()

    async def cycle(self) -> None:
        """One part on every site: next, its response (every site), and the ready after it."""
        client = self.client
        k = len(self.parts) // len(self.sites)
        ids = [f"{self.device_id}-{k}-{s}" for s in self.sites]
        mark = client.mark()
        sites = [{"siteid": s, "partid": p, "binning": -1}
                 for s, p in zip(self.sites, ids, strict=True)]
        _, msg = await client.command("next", {"sites": sites}, timeout=TIMEOUT)
        assert [e["siteid"] for e in msg["payload"]["sites"]] == list(self.sites), msg
        self.parts += ids
        await client.wait_state("ready", TIMEOUT, since=mark)

    async def cycles(self, n: int) -> None:
        for _ in range(n):
            await self.cycle()

    def datalog(self) -> list[tuple[str, dict]]:
        [path] = [os.path.join(self.stdf, n) for n in os.listdir(self.stdf)
                  if n.endswith(".stdf")]
        return read_stdf(path)

    async def stop(self) -> None:
        ds = [s.stopService() for s in (self.master, self.sim) if s is not None and s.running]
        if self.client is not None and self.client.mqtt.running:
            ds.append(self.client.stop())
        await DeferredList(ds)
        self.broker.stop()
        self.broker.cleanup()


@pytest.fixture
def trace():
    """Every log event of the test, printed at its end: pytest shows it when the test
    failed (what each master and simulator did, with times)."""
    lines: list[str] = []

    def observe(event: dict) -> None:
        lines.append(f"{event.get('log_time', 0):.3f} {event.get('log_level').name} "
                     f"{event.get('log_namespace')}: {formatEvent(event)}")

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)
        print("\n".join(lines[-400:]))


@pytest.fixture
def floor():
    broker = floor_broker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        broker.cleanup()


# --------------------------------------------------------------------------------------
# the shipped configs


def test_the_shipped_bridge_config_bridges_what_floor_bridge_topics_names():
    lines = etc_lines("mosquitto-tester-bridge.conf")
    topics = [tuple(line.split()[1:3]) for line in lines if line.startswith("topic ")]
    assert topics == floor_bridge_topics(ETC_DEVICE, [ETC_HANDLER])
    assert {line.split()[3] for line in lines if line.startswith("topic ")} == {"2"}
    for setting in ("cleansession false", "bridge_protocol_version mqttv311",
                    "persistence true", "set_tcp_nodelay true", "max_inflight_messages 1000"):
        assert setting in lines, setting
    floor = etc_lines("mosquitto-floor.conf")
    for setting in ("persistence true", "autosave_interval 10", "set_tcp_nodelay true",
                    "max_inflight_messages 1000"):
        assert setting in floor, setting
    assert not any(line.startswith(("queue_qos0_messages", "autosave_on_changes"))
                   for line in floor)


@pytest_twisted.ensureDeferred
async def test_the_shipped_configs_bridge_the_master_topics_and_keep_the_hot_path(
        reactor, floor, tmp_path):
    tester = bridged_broker("SCT-9", floor)
    tester.start()
    got: dict[str, list[str]] = {"floor": [], "tester": []}
    waiter = Waiter()

    def recorder(where):
        def record(topic, payload):
            got[where].append(topic)
            waiter.poke()
        return record

    on_floor = MqttService(reactor, MqttOptions(host=floor.host, port=floor.port), "it.f",
                           subscriptions=[("ate/#", 2)], on_message=recorder("floor"))
    on_tester = MqttService(reactor, MqttOptions(host=tester.host, port=tester.port), "it.t",
                            subscriptions=[("ate/#", 2)], on_message=recorder("tester"))
    try:
        for s in (on_floor, on_tester):
            s.startService()
            await s.whenConnected().addTimeout(TIMEOUT, reactor)
        await poll(lambda: bridge_connects(floor, "SCT-9") == 1, reactor)
        # hot path first, then the master's status, from the same client on the tester
        for topic in ("ate/SCT-9/TestApp/testresult/site0", "ate/SCT-9/Control/cmd",
                      "ate/SCT-9/Master/status", "ate/SCT-9/Master/alarm"):
            await on_tester.publish(topic, b"{}", 2)
        await waiter.until(lambda: "ate/SCT-9/Master/alarm" in got["floor"], reactor)
        assert got["floor"] == ["ate/SCT-9/Master/status", "ate/SCT-9/Master/alarm"]
        # the handler's command and status come in; another tester's command does not
        for topic in ("ate/SCT-8/Master/cmd", "ate/SCT-9/Master/cmd", f"ate/{H}/Handler/status"):
            await on_floor.publish(topic, b"{}", 0 if topic.endswith("cmd") else 2)
        await waiter.until(lambda: f"ate/{H}/Handler/status" in got["tester"], reactor)
        assert got["tester"][-2:] == ["ate/SCT-9/Master/cmd", f"ate/{H}/Handler/status"]
        assert "ate/SCT-8/Master/cmd" not in got["tester"]
    finally:
        await DeferredList([s.stopService() for s in (on_floor, on_tester) if s.running])
        tester.stop()
        tester.cleanup()


# --------------------------------------------------------------------------------------
# the floor broker killed mid-lot


DEVICES = ("SCT-81-1F", "SCT-81-2F", "SCT-81-3F")


@pytest_twisted.ensureDeferred
async def test_floor_broker_killed_mid_lot_no_tester_loses_a_part_and_the_view_catches_up(
        reactor, floor, tmp_path, trace):
    events = Waiter()  # poked by every message of the floor's view and of the testers
    watcher = FloorWatcher(reactor, floor, events=events)                   # a clean session
    consumer = FloorWatcher(reactor, floor, persistent=True, events=events)  # persistent
    testers = [FloorTester(reactor, tmp_path, floor, d) for d in DEVICES]
    try:
        for t in testers:
            t.start_broker()
        await poll(lambda: all(bridge_connects(floor, d) == 1 for d in DEVICES), reactor)
        for w in (watcher, consumer):
            w.mqtt.startService()
            await w.subscribed()
        for t in testers:
            await t.start_client(on_message=events.poke)
            t.start()
        await gather([t.client.wait_state("initialized", TIMEOUT, since=0)
                             for t in testers])

        def in_step(watchers=(watcher, consumer)):
            return all(w.states.get(t.device_id) == t.client.states()
                       for t in testers for w in watchers)

        def consumer_in_step():
            # at least once: a persistent session may get again across the floor's kill -9
            # what the floor's last save held as not yet delivered
            return all(is_subsequence(t.client.states(), consumer.states[t.device_id])
                       and consumer.states[t.device_id][-1] == t.client.states()[-1]
                       for t in testers)

        # the floor sees every state change of every tester, in order
        await events.until(in_step, reactor)
        for t in testers:
            assert watcher.states[t.device_id][-1] == "initialized"
        await gather([Deferred.fromCoroutine(
            t.client.command("load", {"lot_number": LOT}, expect="ready", timeout=TIMEOUT))
            for t in testers])
        await gather([Deferred.fromCoroutine(t.cycles(10)) for t in testers])
        await events.until(in_step, reactor)
        for t in testers:
            states = watcher.states[t.device_id]
            assert states[:4] == ["connecting", "initialized", "loading", "ready"], states
            assert states[4:] == ["testing", "ready"] * 10, states
        before = {t.device_id: len(t.client.states()) for t in testers}
        # the floor saves its database (as it does every 10 s), with the consumer's session
        saved = saves(floor)
        os.kill(floor.pid, signal.SIGUSR1)
        await poll(lambda: saves(floor) > saved, reactor)

        # kill -9 the floor mid-lot; the lot goes on while it is down
        floor.kill()
        await gather([Deferred.fromCoroutine(t.cycles(8)) for t in testers])
        await deferLater(reactor, 1.0)  # the floor's down time, not a wait for a result
        floor.start()
        await watcher.subscribed()
        await gather([Deferred.fromCoroutine(t.cycles(5)) for t in testers])
        # the floor catches up: the clean watcher sees the parts after its restart (and what
        # the bridges queued while the floor was down, as far as it was subscribed again in
        # time: the bridges are usually back first); the persistent consumer sees them all
        await consumer.subscribed()
        await events.until(lambda: all(
            watcher.states[t.device_id][-10:] == t.client.states()[-10:] for t in testers),
            reactor)
        await events.until(consumer_in_step, reactor)
        await gather([Deferred.fromCoroutine(
            t.client.command("unload", expect="initialized", timeout=TIMEOUT))
            for t in testers])
        await events.until(lambda: all(
            watcher.states[t.device_id][-2:] == ["unloading", "initialized"] for t in testers),
            reactor)
        await events.until(consumer_in_step, reactor)
        for t in testers:
            local, seen = t.client.states(), watcher.states[t.device_id]
            assert seen[:before[t.device_id]] == local[:before[t.device_id]]
            assert is_subsequence(seen, local), (t.device_id, seen, local)
            # the floor's loss did not touch the tester
            assert t.cell.metrics.mqtt_disconnects == 0
            assert "softerror" not in local and local[-1] == "initialized"
            assert len(t.parts) == 2 * 23
            records = t.datalog()
            assert records[0][0] == "FAR" and records[-1][0] == "MRR"
            assert [f["PART_ID"] for n, f in records if n == "PRR"] == t.parts
            print(f"{t.device_id}: of {len(local)} state changes the floor showed "
                  f"{len(seen)} to a clean session, all to a persistent one (with "
                  f"{len(consumer.states[t.device_id]) - len(local)} repeated)")
        assert watcher.alarms == {} and consumer.alarms == {}
    finally:
        for w in (watcher, consumer):
            if w.mqtt.running:
                await w.mqtt.stopService()
        for t in testers:
            await t.stop()
