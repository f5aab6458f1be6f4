"""The real handler application (HandlerService, simulated device in process) driving two
real masters (build_master) with their own simulated sites, on one private mosquitto:
8 handler sites split 4 + 4 over SCT-81-1F and SCT-81-2F."""

from __future__ import annotations

import glob
import json
import os

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList

from ate.broker import free_port
from ate.config import (
    DEFAULT_SIM_BINS,
    MqttOptions,
    handler_config_from_dict,
    master_config_from_dict,
    sim_config_from_dict,
)
from ate.handler.drivers.simulated import SimulatedHandler
from ate.handler.service import HandlerService
from ate.mqtt.service import MqttService
from ate.sim.sites import SimSitesService
from ate.stdf.records import decode, iter_records
from ate.tap import build_master
from tests.waiting import Waiter as _Waiter

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "jobs", "le306426001.xml")

TIMEOUT = 30
H, A, B = "HTO92-20F", "SCT-81-1F", "SCT-81-2F"
LOT = "306426.001"
SITES = ("0", "1", "2", "3")


class Waiter(_Waiter):
    timeout = TIMEOUT


class Watcher(Waiter):
    """Records the handler status and both masters' states from the broker."""

    def __init__(self, reactor, broker):
        super().__init__()
        self.handler = []                      # (state, message)
        self.masters = {A: [], B: []}          # states
        self.mqtt = MqttService(
            reactor, MqttOptions(host=broker.host, port=broker.port), "it.cell.watcher",
            subscriptions=[(f"ate/{H}/Handler/status", 2), (f"ate/{A}/Master/status", 2),
                           (f"ate/{B}/Master/status", 2)],
            on_message=self._message)

    def _message(self, topic, payload):
        msg = json.loads(payload)
        if topic.endswith("Handler/status"):
            self.handler.append((msg["payload"]["state"], msg["payload"]["message"]))
        else:
            self.masters[topic.split("/")[1]].append(msg["payload"]["state"])
        self.poke()


class MasterWithSites:
    """One real master with its own simulated sites."""

    def __init__(self, reactor, broker, tmp_path, device_id, faults=None):
        self.reactor = reactor
        self.device_id = device_id
        base = tmp_path / device_id
        jobs = base / "jobs"
        jobs.mkdir(parents=True)
        with open(FIXTURE, encoding="utf-8") as f:
            # the job names its tester (CLUSTER and STATION): one variant per tester
            (jobs / "le306426001.xml").write_text(f.read().replace(A, device_id),
                                                  encoding="utf-8")
        self.stdf = base / "stdf"
        self.stdf.mkdir()
        self.master_config = master_config_from_dict({
            "broker_host": broker.host, "broker_port": broker.port,
            "device_id": device_id, "sites": list(SITES), "Handler": H,
            "environment": "F1", "jobsource": "filesystem", "jobformat": "xml.semi-ate",
            "filesystemdatasource_path": str(jobs),
            "filesystemdatasource_jobpattern": "le#jobname#.xml",
            "stdf_directory": str(self.stdf), "log_directory": str(base / "log"),
            "webui_port": free_port(), "site_layout": [[i, 0] for i in range(len(SITES))],
            "timeouts": {"startup": 30, "load": 10, "next_ack": 5, "test": 10, "unload": 10},
        }, source=f"test-master-{device_id}")
        self.sim_config = sim_config_from_dict({
            "broker_host": broker.host, "broker_port": broker.port, "device_id": device_id,
            "sites": list(SITES), "test_time": 0.0, "seed": 3, "ptr_count": 3,
            "faults": faults or {}}, source=f"test-sim-{device_id}")
        self.master, self.cell = build_master(self.master_config, reactor, observe_logs=False)
        self.sim = SimSitesService(reactor, self.sim_config, client_id=f"simsites.{device_id}.it")

    def start(self):
        self.master.startService()
        self.sim.startService()

    def services(self):
        return [s for s in (self.sim, self.master) if s.running]


class CellUnderTest:
    def __init__(self, reactor, broker, tmp_path, faults_b=None):
        self.reactor = reactor
        self.watcher = Watcher(reactor, broker)
        self.a = MasterWithSites(reactor, broker, tmp_path, A)
        self.b = MasterWithSites(reactor, broker, tmp_path, B, faults_b)
        # no lot until the handler is initialized: device.start() waits for the test
        self.device = SimulatedHandler(reactor, lots=(), parts_per_lot=1, sites=8,
                                       index_time=0, retry_time=0.2)
        self.handler = HandlerService(reactor, handler_config_from_dict({
            "broker_host": broker.host, "broker_port": broker.port,
            "handler_type": "simulated", "handler_id": H, "device_ids": [A, B],
            "site_layout": [[i, 0] for i in range(8)],
            "site_map": [[A, s] for s in SITES] + [[B, s] for s in SITES],
            "timeouts": {"load": 15, "next": 15, "unload": 15, "startup": 30},
        }, source="test-handler"), device=self.device)

    async def start(self, lots, parts_per_lot):
        self.watcher.mqtt.startService()
        await self.watcher.mqtt.whenConnected().addTimeout(TIMEOUT, self.reactor)
        self.a.start()
        self.b.start()
        self.handler.startService()
        await self.watcher.until(lambda: self.handler.controller.status().state == "initialized"
                                 and ("initialized", "") in self.watcher.handler, self.reactor)
        self.device.lots = list(lots)
        self.device.parts_per_lot = parts_per_lot
        self.device.start()

    async def stop(self):
        self.device.stop()
        if self.handler.running:
            await self.handler.stopService()
        await DeferredList([s.stopService() for t in (self.a, self.b) for s in t.services()])
        if self.watcher.mqtt.running:
            await self.watcher.mqtt.stopService()


@pytest.fixture
def cell(reactor, broker, tmp_path):
    made = []

    def make(**kw):
        c = CellUnderTest(reactor, broker, tmp_path, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        pytest_twisted.blockon(Deferred.fromCoroutine(c.stop()))


def datalog_parts(directory):
    """[(path, part ids, last record kind)] of every STDF file in ``directory``."""
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "*.stdf"))):
        with open(path, "rb") as f:
            raws = list(iter_records(f.read()))
        parts = [decode(r)["PART_ID"] for r in raws if (r.rec_typ, r.rec_sub) == (5, 20)]
        out.append((path, parts, (raws[0].rec_typ, raws[0].rec_sub),
                    (raws[-1].rec_typ, raws[-1].rec_sub)))
    return out


@pytest_twisted.ensureDeferred
async def test_handler_runs_a_lot_on_two_real_masters(reactor, cell):
    c = cell()
    await c.start(lots=(LOT,), parts_per_lot=20)
    await c.device.wait_lots(1).addTimeout(TIMEOUT, reactor)
    # 20 parts in ST cycles of 8 sites: 8 + 8 + 4 (handler sites 0-3 = SCT-81-1F)
    assert c.device.parts_tested == 20
    assert c.device.errors == [] and c.device.bad_lines == 0
    hbins = {b.hbin for b in DEFAULT_SIM_BINS}
    assert {b for _, _, b in c.device.results} <= hbins, c.device.results
    await c.watcher.until(lambda: c.handler.controller.status().state == "initialized",
                          reactor)
    assert c.handler.controller.status().excluded == {}
    # both masters loaded, tested and unloaded the lot, and wrote a complete datalog
    for tester, expected in ((c.a, 12), (c.b, 8)):
        states = c.watcher.masters[tester.device_id]
        assert "loading" in states and "testing" in states and "unloading" in states
        [(path, parts, first, last)] = datalog_parts(tester.stdf)
        assert first == (0, 10) and last == (1, 20), path
        assert len(parts) == expected, (tester.device_id, parts)
    tested_ids = sorted(pid for _, pid, _ in c.device.results)
    logged_ids = sorted(p for t in (c.a, c.b) for _, ps, _, _ in datalog_parts(t.stdf)
                        for p in ps)
    assert logged_ids == tested_ids


@pytest_twisted.ensureDeferred
async def test_sites_of_one_master_crash_the_other_goes_on(reactor, cell):
    c = cell(faults_b={"crash_on_part": 3, "fault_site": "1"})
    await c.start(lots=(LOT,), parts_per_lot=10_000)
    # the handler names the failed tester in its status and excludes it
    await c.watcher.until(lambda: any(f"master {B} reported softerror" in m
                                      for _, m in c.watcher.handler), reactor)
    await c.watcher.until(lambda: B in c.handler.controller.status().excluded, reactor)
    assert c.watcher.masters[B][-1] == "softerror"
    assert "softerror" not in c.watcher.masters[A]
    assert A not in c.handler.controller.status().excluded
    assert all(B in ts.text for ts in c.device.errors), c.device.errors
    # the operator disables the handler sites of SCT-81-2F; SCT-81-1F keeps testing
    for index in range(4, 8):
        c.device.disable_site(index)
    errors = len(c.device.errors)
    before_device = c.device.parts_tested
    before_a = c.a.cell.lot.parts_tested
    await c.device.wait_parts(before_device + 40).addTimeout(TIMEOUT, reactor)
    assert c.a.cell.lot.parts_tested >= before_a + 40
    assert c.a.cell.status()["state"] in ("ready", "testing")
    assert c.handler.controller.status().state in ("ready", "testing")
    assert B in c.handler.controller.status().excluded
    # a refusal in flight when the sites were disabled may still arrive, no more
    assert len(c.device.errors) <= errors + 1
    assert all(state != "error" for state, _ in c.watcher.handler)
