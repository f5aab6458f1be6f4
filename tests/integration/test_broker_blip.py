"""Broker blips against a real private mosquitto (README "Broker loss"): the broker is
killed -9 and restarted on the same port while the master (build_master), its simulated
sites and a handler are on it; and the master pointed at a closed port."""

from __future__ import annotations

import os
import shutil
import socket

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher

from ate.broker import free_port
from ate.config import handler_config_from_dict, master_config_from_dict, sim_config_from_dict
from ate.handler import lineproto as lp
from ate.handler.drivers.simulated import SimulatedHandler
from ate.handler.service import HandlerService
from ate.sim.sites import SimSitesService
from ate.tap import build_master
from ate.testing.peers import HandlerClient
from tests.waiting import Waiter

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "jobs", "le306426001.xml")
DEVICE = "SCT-81-1F"
HANDLER = "HTO92-20F"
LOT = "306426.001"
SITES = ("0", "1", "2", "3")
TIMEOUT = 30.0
DOWN = 2.0  # seconds the broker stays dead


class Logs(Waiter):
    """Every log event while installed; ``until`` fires on a matching one (on a later
    reactor turn: a test resumed inside a state machine's transition could not query it)."""

    timeout = TIMEOUT

    def __init__(self, reactor):
        super().__init__()
        self.reactor = reactor
        self.events: list[dict] = []

    def __call__(self, event):
        self.events.append(event)
        self.reactor.callLater(0, self.poke)

    def has(self, fmt):
        return any(e.get("log_format") == fmt for e in self.events)

    def bad(self):
        return [e for e in self.events
                if e.get("log_level") == LogLevel.critical or e.get("log_failure") is not None]


@pytest.fixture
def logs(reactor):
    observer = Logs(reactor)
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def master_config(tmp_path, port, client="twisted", **timeouts):
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    shutil.copy(FIXTURE, jobs / "le306426001.xml")
    return master_config_from_dict({
        "broker_host": "127.0.0.1", "broker_port": port, "mqtt_client": client,
        "device_id": DEVICE,
        "sites": list(SITES), "Handler": HANDLER, "environment": "F1",
        "jobsource": "filesystem", "jobformat": "xml.semi-ate",
        "filesystemdatasource_path": str(jobs),
        "filesystemdatasource_jobpattern": "le#jobname#.xml",
        "stdf_directory": str(tmp_path / "stdf"), "log_directory": str(tmp_path / "log"),
        "webui_port": free_port(), "site_layout": [[i, 0] for i in range(len(SITES))],
        "timeouts": {"startup": 30, "load": 20, "next_ack": 10, "test": 30, "unload": 20,
                     **timeouts},
    }, source="test-blip-master")


class Blip(Waiter):
    """Master + simulated sites (+ handler client) on one broker that can be killed."""

    timeout = TIMEOUT

    def __init__(self, reactor, broker, tmp_path, test_time, **timeouts):
        super().__init__()
        self.reactor = reactor
        self.broker = broker
        self.master, self.cell = build_master(master_config(tmp_path, broker.port, **timeouts),
                                              reactor, observe_logs=False)
        self.cell.subscribe(lambda kind, data: reactor.callLater(0, self.poke))
        self.sim = SimSitesService(reactor, sim_config_from_dict({
            "broker_host": broker.host, "broker_port": broker.port, "device_id": DEVICE,
            "sites": list(SITES), "test_time": test_time, "seed": 5, "ptr_count": 3},
            source="test-blip-sim"), client_id="simsites.blip")
        self.client = HandlerClient(reactor, broker.host, broker.port, DEVICE, "blip.handler")

    @property
    def internal(self):
        return self.cell.status()["internal_state"]

    async def start(self):
        await self.client.start()
        self.sim.startService()
        await self.sim.mqtt.whenConnected()
        up = self.client.wait_state("initialized", TIMEOUT)
        self.master.startService()
        await up

    async def blip(self, logs):
        """kill -9, wait until the master noticed, DOWN seconds later start it again."""
        self.broker.kill()
        await logs.until(lambda: logs.has("broker connection lost in {state}; state kept"),
                         self.reactor)
        await deferLater(self.reactor, DOWN)  # the broker's down time, not a wait for a result
        self.broker.restart()

    async def stop(self):
        ds = [s.stopService() for s in (self.master, self.sim) if s.running]
        if self.client.mqtt.running:
            ds.append(self.client.stop())
        await DeferredList(ds)


@pytest.fixture
def blip(reactor, broker, tmp_path):
    made = []

    def make(**kw):
        b = Blip(reactor, broker, tmp_path, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        pytest_twisted.blockon(Deferred.fromCoroutine(b.stop()))


async def poll(predicate, reactor, timeout=TIMEOUT, step=0.05):
    """Wait (bounded) until ``predicate()`` holds, for state without an event to hook."""
    for _ in range(int(timeout / step)):
        if predicate():
            return
        await deferLater(reactor, step)
    assert predicate()


NEXT = {"sites": [{"siteid": s, "partid": f"P{s}", "binning": -1} for s in SITES]}


@pytest_twisted.ensureDeferred
async def test_broker_killed_mid_part_and_restarted_the_part_completes(reactor, blip, logs):
    # the TestApps finish after the broker is back (as paho TestApps deliver their queued
    # results after the reconnect); the master keeps the part open meanwhile
    b = blip(test_time=6.0)
    await b.start()
    await b.client.command("load", {"lot_number": LOT}, expect="ready")
    response = b.client.wait_response("next", TIMEOUT)
    await b.client.send("next", NEXT)
    await b.until(lambda: b.internal == "testing.running", reactor)
    await b.blip(logs)
    _, msg = await response
    assert [e["siteid"] for e in msg["payload"]["sites"]] == list(SITES)
    await b.until(lambda: b.cell.state == "ready", reactor)
    assert b.cell.lot.parts_tested == 4 == b.sim.sites.truth.part_count
    assert b.cell.metrics.mqtt_disconnects == 1 and b.cell.metrics.softerrors == 0
    assert "softerror" not in b.client.states()
    assert logs.bad() == []


@pytest_twisted.ensureDeferred
async def test_results_lost_in_the_blip_softerror_at_the_test_timeout_naming_the_sites(
        reactor, blip, logs):
    # our simulated TestApps do not queue while offline: results published while the
    # broker is dead are lost, and the test timer (armed at the acknowledge) decides
    b = blip(test_time=1.0, test=8)
    await b.start()
    await b.client.command("load", {"lot_number": LOT}, expect="ready")
    await b.client.send("next", NEXT)
    await b.until(lambda: b.internal == "testing.running", reactor)
    await b.blip(logs)
    await b.until(lambda: b.cell.state == "softerror", reactor)
    assert b.cell.error_message_text == \
        "not all sites completed the active test (missing: 0, 1, 2, 3)"
    assert b.cell.metrics.mqtt_disconnects == 1
    assert logs.bad() == []


class Line(Waiter):
    """The handler device's side of the line: records the replies."""

    timeout = TIMEOUT

    def __init__(self, reactor):
        super().__init__()
        self.reactor = reactor
        self.lines: list[str] = []

    def send(self, msg):
        self.lines.append(lp.format_line(msg))
        self.reactor.callLater(0, self.poke)


@pytest_twisted.ensureDeferred
async def test_handler_next_lost_while_the_broker_is_dead_is_resent_once(
        reactor, blip, broker, logs):
    b = blip(test_time=0.2)
    handler = HandlerService(reactor, handler_config_from_dict({
        "broker_host": broker.host, "broker_port": broker.port, "handler_type": "simulated",
        "handler_id": HANDLER, "device_ids": [DEVICE],
        "site_layout": [[i, 0] for i in range(len(SITES))],
        "timeouts": {"load": 20, "next": 40, "unload": 20, "startup": 30},
    }, source="test-blip-handler"), device=SimulatedHandler(reactor, lots=(), sites=4))
    line = Line(reactor)
    handler.controller.attach(line)
    try:
        await b.start()
        handler.startService()
        await poll(lambda: handler.controller.status().state == "initialized", reactor)
        handler.controller.line_request(lp.LoadLot(LOT, "HS2C", "25"))
        await line.until(lambda: line.lines == [lp.format_line(lp.TS_LOT_LOADED)], reactor)
        b.broker.kill()
        await logs.until(lambda: not handler.mqtt.connected
                         and logs.has("broker connection lost in {state}; state kept"), reactor)
        # ST while the broker is dead: the handler's QoS 0 next cannot go out
        handler.controller.line_request(lp.StartTest(tuple(
            lp.StSite(True, f"P{i}", -1, 0, "0") for i in range(len(SITES)))))
        assert logs.has("not connected; {topic} not published")
        await deferLater(reactor, DOWN)  # the broker's down time
        b.broker.restart()
        await line.until(lambda: any(x.startswith("ET|") for x in line.lines), reactor)
        [et] = [x for x in line.lines if x.startswith("ET|")]
        assert et.startswith("ET|4|P0|")
        await b.until(lambda: b.cell.state == "ready", reactor)
        assert b.cell.lot.parts_tested == 4 and b.cell.metrics.commands_refused == 0
        assert handler.controller.status().state == "ready"
        assert [e for e in logs.events if "resending" in e.get("log_format", "")] != []
        assert logs.bad() == []
    finally:
        if handler.running:
            await handler.stopService()


@pytest.mark.parametrize("client", ["twisted", "paho"])
@pytest_twisted.ensureDeferred
async def test_master_at_a_closed_port_warns_with_the_reason_and_no_critical(
        reactor, tmp_path, logs, client):
    # a port bound but not listening: every connect is refused, and nobody else gets it
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))
    try:
        cfg = master_config(tmp_path, closed.getsockname()[1], client=client)
        master, cell = build_master(cfg, reactor, observe_logs=False)
        master.startService()
        try:
            await logs.until(lambda: logs.has("MQTT connection attempt failed: {reason}"),
                             reactor)
            assert cell.state == "connecting" and not cell.status()["connected"]
        finally:
            await master.stopService()
    finally:
        closed.close()
    [warning] = [e for e in logs.events
                 if e.get("log_format") == "MQTT connection attempt failed: {reason}"]
    assert warning["log_level"] == LogLevel.warn
    assert "ConnectionRefusedError" in warning["reason"] and "refused" in warning["reason"]
    assert logs.bad() == []
