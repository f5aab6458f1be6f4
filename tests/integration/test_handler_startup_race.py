"""The start-up race of ate-handler against a real master, on a private mosquitto, in the
order that stranded the lot (protocol.md 13.2 "Broker loss").

What a spy client on ``ate/#`` showed (about one start in ten when the handler starts as
the master reaches initialized): the handler subscribed and published its ``connecting``
(QoS 2) while the master was still connecting; the master reached initialized and
published it (1); the handler took (1) for the end of its start-up and the device sent LL
at once; the handler's ``connecting`` had reached the master before the load did
(mosquitto passes a QoS 2 message on at its PUBREL), so the master's answer, its status
published again (2), still said ``initialized``, and it came to the handler after the load.
The old handler read (2) as "the master did not get the load" and sent the load again; the
master, loading by then, refused the copy ``busy``; the handler went back to
``initialized`` while the master loaded the lot, and every later LL was refused
``havelot``.

Here that order is forced: the master (build_master, two simulated sites) gets the
handler's ``connecting`` held back until the handler publishes its load, and then at once,
so that the master publishes (2) before the load reaches it.  The handler must ask
``get-state`` rather than resend, and the lot must run to its end.
"""

from __future__ import annotations

import json
import os

import pytest_twisted
from twisted.internet.defer import DeferredList

from ate.broker import free_port
from ate.config import (
    MqttOptions,
    handler_config_from_dict,
    master_config_from_dict,
    sim_config_from_dict,
)
from ate.handler.drivers.simulated import SimulatedHandler
from ate.handler.service import HandlerService
from ate.mqtt.service import MqttService
from ate.protocol import messages as m
from ate.sim.sites import SimSitesService
from ate.tap import build_master
from tests.waiting import Waiter as _Waiter

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "jobs", "le306426001.xml")

TIMEOUT = 20
D, H = "SCT-81-1F", "HTO92-20F"
LOT = "306426.001"
SITES = ("0", "1")
PARTS = 6


class Spy(_Waiter):
    """Every message on ``ate/#`` except the sites' traffic, in arrival order."""

    timeout = TIMEOUT

    def __init__(self, reactor, broker):
        super().__init__()
        self.seen: list[tuple[str, dict]] = []
        self.mqtt = MqttService(
            reactor, MqttOptions(host=broker.host, port=broker.port), "it.race.spy",
            subscriptions=[("ate/#", 2)], on_message=self._message)

    def _message(self, topic, payload):
        if "/Master/" in topic or "/Handler/" in topic:
            self.seen.append((topic, json.loads(payload)))
            self.poke()

    def commands(self):
        return [p["type"] for t, p in self.seen if t == f"ate/{D}/Master/cmd"]

    def refusals(self):
        return [p for t, p in self.seen
                if t == f"ate/{D}/Master/response" and p["type"] == "error"]


class Race:
    """The master, its sites, ate-handler with the simulated device, and the two hooks that
    force the order; ``order`` records, in process, what happened when."""

    def __init__(self, reactor, broker, tmp_path):
        self.reactor = reactor
        jobs = tmp_path / "jobs"
        jobs.mkdir()
        with open(FIXTURE, encoding="utf-8") as f:
            (jobs / "le306426001.xml").write_text(f.read(), encoding="utf-8")
        (tmp_path / "stdf").mkdir()
        self.spy = Spy(reactor, broker)
        self.master, self.cell = build_master(master_config_from_dict({
            "broker_host": broker.host, "broker_port": broker.port,
            "device_id": D, "sites": list(SITES), "Handler": H,
            "environment": "F1", "jobsource": "filesystem", "jobformat": "xml.semi-ate",
            "filesystemdatasource_path": str(jobs),
            "filesystemdatasource_jobpattern": "le#jobname#.xml",
            "stdf_directory": str(tmp_path / "stdf"), "log_directory": str(tmp_path / "log"),
            "webui_port": free_port(), "site_layout": [[i, 0] for i in range(len(SITES))],
            "timeouts": {"startup": 30, "load": 10, "next_ack": 5, "test": 10, "unload": 10},
        }, source="test-race-master"), reactor, observe_logs=False, announce=False)
        self.sim = SimSitesService(reactor, sim_config_from_dict({
            "broker_host": broker.host, "broker_port": broker.port, "device_id": D,
            "sites": list(SITES), "test_time": 0.0, "seed": 5, "ptr_count": 2,
        }, source="test-race-sim"), client_id="simsites.it.race")
        self.device = SimulatedHandler(reactor, lots=(), parts_per_lot=PARTS,
                                       sites=len(SITES), index_time=0, retry_time=0.2)
        self.handler = HandlerService(reactor, handler_config_from_dict({
            "broker_host": broker.host, "broker_port": broker.port,
            "handler_type": "simulated", "handler_id": H, "device_ids": [D],
            "site_layout": [[i, 0] for i in range(len(SITES))],
            "timeouts": {"load": 10, "next": 10, "unload": 10, "startup": 30},
        }, source="test-race-handler"), device=self.device)
        self.order: list[str] = []
        self.held: list[str] = []
        self._hook()

    def _hook(self):
        cell, bus, spy = self.cell, self.handler.bus, self.spy
        master_takes, handler_sends = cell.handler_status, bus.command
        handler_publishes = bus.handler_status

        def cell_handler_status(state, message):  # the master's side of ~/Handler/status
            if state == "connecting" and "released" not in self.order:
                self.order.append("connecting held")
                self.held.append(message)
                spy.poke()
                return
            master_takes(state, message)

        def command(device_id, msg):  # the handler's side of ~/Master/cmd
            if isinstance(msg, m.Load) and self.held:
                self.order.append("released")
                master_takes("connecting", self.held.pop())
                self.order.append(f"master answered {self.cell.status()['state']}")
            self.order.append(f"handler sends {type(msg).__name__}")
            handler_sends(device_id, msg)

        def handler_status(state, message):  # the device sends LL once it is initialized
            handler_publishes(state, message)
            if state == "initialized" and not self.device.lots:
                self.device.lots = [LOT]
                self.reactor.callLater(0, self.device.start)

        cell.handler_status = cell_handler_status
        bus.command = command
        bus.handler_status = handler_status

    async def stop(self):
        self.device.stop()
        if self.handler.running:
            await self.handler.stopService()
        await DeferredList([s.stopService() for s in (self.sim, self.master) if s.running])
        if self.spy.mqtt.running:
            await self.spy.mqtt.stopService()


@pytest_twisted.ensureDeferred
async def test_a_master_status_older_than_the_load_does_not_strand_the_lot(
        reactor, broker, tmp_path, warnings_logged):
    race = Race(reactor, broker, tmp_path)
    spy, device = race.spy, race.device
    try:
        spy.mqtt.startService()
        await spy.mqtt.whenConnected().addTimeout(TIMEOUT, reactor)
        race.master.startService()      # its sites are not up: it stays connecting
        await spy.until(lambda: any(t == f"ate/{D}/Master/status" and p["state"] == "connecting"
                                    for t, p in spy.seen), reactor)
        race.handler.startService()     # subscribed once the master holds its connecting
        await spy.until(lambda: race.held, reactor)
        race.sim.startService()         # the master reaches initialized and publishes it (1)
        done = device.wait_lots(1)
        done.addCallback(lambda _: spy.poke())
        await spy.until(lambda: done.called or device.errors, reactor)

        # the order was the stranding one: the master answered the handler's connecting
        # (2) initialized, after the handler had become initialized and before its load
        assert race.order[:4] == ["connecting held", "handler sends SiteLayout", "released",
                                  "master answered initialized"], race.order
        assert race.order[4] == "handler sends Load"
        # the handler asked instead of sending the load again; the lot ran to its end
        assert device.errors == [] and device.lots_done == 1, device.errors
        assert device.parts_tested == PARTS and device.bad_lines == 0
        assert spy.commands().count("load") == 1
        assert spy.commands().count("get-state") == 1
        assert spy.refusals() == []
        assert race.cell.metrics.softerrors == 0
        await spy.until(lambda: race.handler.controller.status().state == "initialized"
                        and race.cell.status()["state"] == "initialized", reactor)
        assert warnings_logged == []
    finally:
        await race.stop()
