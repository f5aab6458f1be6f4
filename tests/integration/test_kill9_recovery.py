"""kill -9 of the master mid-lot: the next start repairs the datalog, and every part whose
`next` response reached the handler is in it."""

from __future__ import annotations

import glob
import os

import pytest_twisted

from ate.config import sim_config_from_dict
from ate.sim.sites import SimSitesService
from ate.testing.peers import HandlerClient
from test_twistd import DEVICE, spawn
from tests.stdfread import read_stdf


def _records(path):
    return [(name.capitalize(), fields) for name, fields in read_stdf(path)]


@pytest_twisted.ensureDeferred
async def test_kill9_mid_lot_then_restart_repairs(reactor, broker, tmp_path):
    sim_cfg = sim_config_from_dict({
        "broker_host": broker.host, "broker_port": broker.port, "device_id": DEVICE,
        "sites": ["0", "1"], "seed": 3}, source="test")
    sim = SimSitesService(reactor, sim_cfg, client_id="simsites.kill9")
    sim.startService()
    handler = HandlerClient(reactor, broker.host, broker.port, DEVICE)
    await handler.start()
    try:
        up = handler.wait_state("initialized", 30)
        pp, transport = spawn(reactor, tmp_path, broker)
        await up
        ready = handler.wait_state("ready", 30)
        await handler.send("load", {"lot_number": "306426.001"})
        await ready
        answered = 0
        for i in range(20):
            d = handler.wait_response("next", 10)
            await handler.send("next", {"sites": [{"siteid": "0", "partid": f"A{i}"},
                                                  {"siteid": "1", "partid": f"B{i}"}]})
            await d
            answered += 2
        transport.signalProcess("KILL")
        pp.ended.addTimeout(5, reactor)
        await pp.ended
        [path] = glob.glob(str(tmp_path / "*.stdf"))
        with open(path, "rb") as f:
            assert b"recovered" not in f.read()
        # restart: the unfinished file is repaired at start
        up = handler.wait_state("initialized", 30)
        pp2, transport2 = spawn(reactor, tmp_path, broker)
        await up
        transport2.signalProcess("TERM")
        pp2.ended.addTimeout(10, reactor)
        assert await pp2.ended == 0
    finally:
        await handler.stop()
        await sim.stopService()
    files = glob.glob(str(tmp_path / "*.stdf"))
    assert files == [path]  # nothing new (no lot loaded), nothing deleted
    records = _records(path)
    names = [n for n, _ in records]
    assert names[:3] == ["Far", "Mir", "Sdr"] and names[-1] == "Mrr"
    assert records[-1][1]["EXC_DESC"] == "recovered after master restart"
    prr_ids = {f["PART_ID"] for n, f in records if n == "Prr"}
    assert {f"A{i}" for i in range(20)} | {f"B{i}" for i in range(20)} <= prr_ids
    assert len(prr_ids) >= answered
    pcr = [f for n, f in records if n == "Pcr" and f["HEAD_NUM"] == 255]
    assert pcr[0]["PART_CNT"] == len(prr_ids)
    assert os.path.getsize(path) > 0
