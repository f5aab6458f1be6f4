"""The master against a real mosquitto and the simulated sites (in-process, on the reactor),
driven by a handler client over MQTT."""

from __future__ import annotations

import glob
import os
import shutil

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater

from ate.broker import free_port
from ate.config import master_config_from_dict, sim_config_from_dict
from ate.sim.sites import SimSitesService
from ate.tap import build_master
from ate.testing.peers import HandlerClient
from tests.stdfread import read_stdf

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "jobs", "le306426001.xml")
DEVICE = "SCT-81-1F"
LOT = "306426.001"


class Cell:
    """Master + simulated sites + handler on one broker."""

    def __init__(self, reactor, broker, tmp_path, sites=("0", "1", "2", "3"), faults=None,
                 test_time=0.0, master_extra=None):
        self.reactor = reactor
        self.broker = broker
        jobs = tmp_path / "jobs"
        jobs.mkdir(exist_ok=True)
        shutil.copy(FIXTURE, jobs / "le306426001.xml")
        self.stdf = tmp_path / "stdf"
        self.stdf.mkdir(exist_ok=True)
        data = {
            "broker_host": broker.host, "broker_port": broker.port,
            "device_id": DEVICE, "sites": list(sites), "Handler": "HTO92-20F",
            "environment": "F1", "jobsource": "filesystem", "jobformat": "xml.semi-ate",
            "filesystemdatasource_path": str(jobs),
            "filesystemdatasource_jobpattern": "le#jobname#.xml",
            "stdf_directory": str(self.stdf), "log_directory": str(tmp_path / "log"),
            "webui_port": free_port(), "site_layout": [[i, 0] for i in range(len(sites))],
            "timeouts": {"startup": 30, "load": 10, "next_ack": 5, "test": 10, "unload": 10},
        }
        data.update(master_extra or {})
        self.master_config = master_config_from_dict(data, source="test-master")
        sim = {"broker_host": broker.host, "broker_port": broker.port, "device_id": DEVICE,
               "sites": list(sites), "test_time": test_time, "seed": 7, "ptr_count": 5,
               "faults": faults or {}}
        self.sim_config = sim_config_from_dict(sim, source="test-sim")
        self.master = None
        self.cell = None
        self.sim = None
        self.handler = HandlerClient(reactor, broker.host, broker.port, DEVICE)

    async def start_master(self):
        self.master, self.cell = build_master(self.master_config, self.reactor, observe_logs=False)
        self.master.startService()

    async def start_sites(self):
        self.sim = SimSitesService(self.reactor, self.sim_config, client_id="simsites.test")
        self.sim.startService()
        # connected before the master starts: a Control app connecting in the same instant
        # as the master's start-up reset may answer it after the master already counted
        # its connect-time idle, and a load is then refused "busy" until it is idle again
        # (protocol.md §3.4); that race is the protocol's, not under test here
        await self.sim.mqtt.whenConnected()

    async def start_all(self):
        """Handler client, then the sites, then the master; returns once initialized."""
        await self.handler.start()
        await self.start_sites()
        up = self.handler.wait_state("initialized", 15)
        await self.start_master()
        await up

    async def stop(self):
        ds = []
        for svc in (self.master, self.sim):
            if svc is not None and svc.running:
                ds.append(svc.stopService())
        if self.handler.mqtt.running:
            ds.append(self.handler.stop())
        await DeferredList(ds)


@pytest.fixture
def cellfactory(reactor, broker, tmp_path):
    made = []

    def make(**kw):
        c = Cell(reactor, broker, tmp_path, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        pytest_twisted.blockon(Deferred.fromCoroutine(c.stop()))


async def run_parts(h: HandlerClient, n: int, sites=("0", "1", "2", "3"), prefix="P"):
    responses = []
    for i in range(n):
        d = h.wait_response("next", timeout=10)
        await h.send("next", {"sites": [{"siteid": s, "partid": f"{prefix}{i}-{s}", "binning": -1}
                                        for s in sites]})
        _, msg = await d
        responses.append(msg)
    return responses


@pytest_twisted.ensureDeferred
async def test_full_lots_then_load_again(cellfactory):
    c = cellfactory()
    await c.handler.start()
    await c.start_sites()  # sites before the master
    up = c.handler.wait_state("initialized", 15)
    await c.start_master()
    await up
    _, ready = await c.handler.command("load", {"lot_number": LOT}, expect="ready")
    assert ready["payload"] == {"state": "ready", "message": ""}
    responses = await run_parts(c.handler, 125)  # 500 parts on 4 sites
    assert all([e["siteid"] for e in r["payload"]["sites"]] == ["0", "1", "2", "3"]
               for r in responses)
    assert responses[3]["payload"]["sites"][2]["partid"] == "P3-2"
    # a subset, out of order
    [sub] = await run_parts(c.handler, 1, sites=("3", "1"), prefix="S")
    assert [e["siteid"] for e in sub["payload"]["sites"]] == ["3", "1"]
    await c.handler.command("unload", {}, expect="initialized")
    lot = c.cell.lot
    truth = c.sim.sites.truth
    assert lot.parts_tested == 502 == truth.part_count
    datalog = c.cell.datalog
    assert datalog.finalised and os.path.getsize(datalog.path) > 0
    # a second lot, and a refused command in between
    d = c.handler.wait_response("error")
    await c.handler.send("next", {})
    _, err = await d
    assert err["response_type"] == "notlot" and err["state"] == "initialized"
    await c.handler.command("load", {"lot_number": LOT}, expect="ready")
    await run_parts(c.handler, 3)
    await c.handler.command("unload", {}, expect="initialized")
    files = sorted(glob.glob(str(c.stdf / "*.stdf")))
    assert len(files) == 2


@pytest_twisted.ensureDeferred
async def test_master_before_sites_and_broker_restart(cellfactory, broker):
    c = cellfactory()
    await c.handler.start()
    await c.start_master()
    up = c.handler.wait_state("initialized", 15)
    await c.start_sites()
    await up
    assert c.cell.state == "initialized"
    mark = c.handler.mark()
    broker.kill()
    broker.restart()
    # the master reconnects by itself (capped backoff) and keeps its state; its status
    # re-publish may come before the handler client is back, so ask for the state
    await c.handler.mqtt.whenConnected()
    master_mqtt = c.cell.publisher
    for _ in range(400):  # bounded: backoff is capped at 30 s
        if master_mqtt.reconnects >= 1 and master_mqtt.connected:
            break
        await deferLater(c.reactor, 0.1)
    assert master_mqtt.reconnects == 1 and c.cell.metrics.mqtt_disconnects == 1
    _, st = await c.handler.command("get-state", {})
    assert st["payload"] == {"state": "initialized", "message": ""}
    # whatever status the master published around the blip (before the answer above) kept
    # the state: no connecting, no error
    since = [m["state"] for kind, m in c.handler.received[mark:] if kind == "status"]
    assert set(since) <= {"initialized"}, since
    await c.handler.command("load", {"lot_number": LOT}, expect="ready")
    await run_parts(c.handler, 2)


@pytest_twisted.ensureDeferred
async def test_refusals_over_mqtt(cellfactory):
    c = cellfactory()
    await c.start_all()
    for payload, rtype in [(b"{garbage", None), (b'{"type":"dance","payload":{}}', "error"),
                           (b'{"type":"next","payload":{}}', "notlot")]:
        mark = c.handler.mark()
        if rtype is not None:
            d = c.handler.wait_response("error")
        await c.handler.mqtt.publish(f"ate/{DEVICE}/Master/cmd", payload, 2)
        if rtype is not None:
            _, err = await d
            assert err["response_type"] == rtype
        # identify answers after it, so nothing else was published for the bad command
        _, ident = await c.handler.command("identify", {})
        assert ident["payload"] == {"name": DEVICE}
        assert [k for k, _ in c.handler.received[mark:]].count("status") == 0
    assert c.cell.state == "initialized"
    await c.handler.command("load", {"lot_number": LOT}, expect="ready")
    d = c.handler.wait_response("error")
    await c.handler.send("load", {"lot_number": LOT})
    _, err = await d
    assert err["response_type"] == "havelot" and c.cell.state == "ready"
    d = c.handler.wait_response("error")
    await c.handler.send("next", {"sites": [{"siteid": "7"}]})
    _, err = await d
    assert err["response_type"] == "error" and "7" in err["message"]


@pytest.mark.parametrize("fault,expect", [
    ({"crash_on_part": 3}, "testapp 0 crashed"),
    ({"drop_result_on_part": 3}, "not all sites completed the active test (missing: 0)"),
    ({"duplicate_result_on_part": 3}, None),
    ({"wrong_site_on_part": 3}, "not all sites completed the active test (missing: 0)"),
])
@pytest_twisted.ensureDeferred
async def test_injected_faults(cellfactory, fault, expect):
    c = cellfactory(faults=fault, master_extra={"timeouts": {"test": 1.5, "next_ack": 2}})
    await c.start_all()
    await c.handler.command("load", {"lot_number": LOT}, expect="ready")
    await run_parts(c.handler, 2)
    if expect is None:
        await run_parts(c.handler, 3)
        assert c.cell.state == "ready"
        assert c.cell.metrics.duplicate_results == 1
        return
    soft = c.handler.wait_state("softerror", 10)
    await c.handler.send("next", {"sites": [{"siteid": s, "partid": f"F{s}"} for s in "0123"]})
    _, status = await soft
    assert status["payload"]["message"] == expect
    # the datalog stays open in softerror (results of the part still come, §3.6) ...
    assert not c.cell.datalog.finalised
    # ... and is finalised by the reset, with the other sites' results of part F in it
    await c.handler.command("reset", {}, expect="initialized")
    assert c.cell.datalog.finalised
    prrs = [f for name, f in read_stdf(c.cell.datalog.path) if name.lower() == "prr"]
    # (with the wrong-site fault, site 0's result F0 came in under site 1's topic first)
    late = ["F0", "F2", "F3"] if "wrong_site_on_part" in fault else ["F1", "F2", "F3"]
    assert [p["PART_ID"] for p in prrs[8:]] == late


@pytest_twisted.ensureDeferred
async def test_ten_thousand_parts_match_the_simulators_ground_truth(cellfactory):
    c = cellfactory()
    await c.start_all()
    await c.handler.command("load", {"lot_number": LOT}, expect="ready")
    await run_parts(c.handler, 2500)  # 10 000 parts on 4 sites, unique part ids
    lot = c.cell.lot
    truth = c.sim.sites.truth
    assert lot.parts_tested == truth.part_count == 10_000
    job = c.cell.job
    group_of = {b.sbin: b.group for b in job.bins}
    rows = {(r["name"], r["siteid"]): r for r in lot.yields()}
    for site in ("0", "1", "2", "3"):
        n = truth.by_site[site]
        assert rows[("sum", site)]["count"] == n
        for group in job.groups():
            expected = sum(cnt for (s, sb), cnt in truth.by_site_soft_bin.items()
                           if s == site and group_of[sb] == group)
            assert rows[(group, site)]["count"] == expected
            assert rows[(group, site)]["value"] == pytest.approx(expected / n * 100)
    assert rows[("sum", "-1")]["count"] == 10_000
    for row in lot.bintable():
        for sc in row["siteCounts"]:
            assert sc["count"] == truth.by_site_soft_bin[(sc["siteId"], row["sBin"])]
    await c.handler.command("unload", {}, expect="initialized")
    import json
    summary_path = c.cell.datalog.path[:-len(".stdf")] + ".summary.json"
    with open(summary_path) as f:
        summary = json.load(f)
    assert json.dumps(summary).count("10000") >= 1
