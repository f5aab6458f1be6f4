"""The simulated sites on a real (private) mosquitto, driven by a fake master client."""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest_twisted
from twisted.internet.defer import Deferred

from ate.config import sim_config_from_dict
from ate.sim.sites import _mqtt_service_class
from ate.sim.tap import Options, makeService

MqttService = _mqtt_service_class()

D = "SIM-IT-1"
TIMEOUT = 10.0
BIN_TABLE = {"1": ["1"], "2": ["2"], "5": ["12", "13"], "6": ["20", "21"]}


class FakeMaster:
    """A master stand-in: sends commands, records every site publication in order."""

    def __init__(self, reactor, broker_options, device=D):
        self.reactor = reactor
        self.d = device
        self.received: list[tuple[str, Any]] = []
        self._waiters: list[tuple[Callable[[], Any], Deferred]] = []
        self.mqtt = MqttService(
            reactor, broker_options, f"masterapp.{device}",
            subscriptions=[(f"ate/{device}/Control/#", 2), (f"ate/{device}/TestApp/#", 2)],
            on_message=self._on_message)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/cmd"):
            return  # our own command echoes
        self.received.append((topic, json.loads(payload)))
        for waiter in list(self._waiters):
            predicate, d = waiter
            value = predicate()
            if value:
                self._waiters.remove(waiter)
                d.callback(value)

    def wait_for(self, predicate: Callable[[], Any], what: str) -> Deferred:
        """Fire with predicate()'s truthy value, or fail after TIMEOUT naming ``what``."""
        value = predicate()
        d: Deferred = Deferred()
        if value:
            d.callback(value)
            return d
        self._waiters.append((predicate, d))

        def timed_out(failure):
            raise AssertionError(f"timed out waiting for {what}; received: "
                                 f"{[(t, p) for t, p in self.received][-20:]}")

        d.addTimeout(TIMEOUT, self.reactor)
        d.addErrback(timed_out)
        return d

    async def start(self):
        self.mqtt.startService()
        await self.mqtt.whenConnected().addTimeout(TIMEOUT, self.reactor)

    async def send(self, sub: str, obj: dict) -> None:
        await self.mqtt.publish(f"ate/{self.d}/{sub}", json.dumps(obj).encode(), 2)

    async def cmd(self, app: str, command: str, sites, **fields) -> None:
        await self.send(f"{app}/cmd", {"type": "cmd", "command": command,
                                       "sites": list(sites), **fields})

    # ---- views on what was received --------------------------------------------

    def states(self, app: str, site: str) -> list[Any]:
        topic = f"ate/{self.d}/{app}/status/site{site}"
        out = []
        for t, p in self.received:
            if t == topic:
                out.append(p["state"] if p["payload"].get("state") == 0 else p["payload"]["state"])
        return out

    def of_kind(self, kind: str, site: str | None = None) -> list[Any]:
        return [(t, p) for t, p in self.received
                if t.split("/")[3] == kind and (site is None or t.endswith(f"/site{site}"))]

    def sequence(self, site: str) -> list[str]:
        """TestApp status states and result markers of one site, in arrival order."""
        out = []
        for t, p in self.received:
            if t == f"ate/{self.d}/TestApp/status/site{site}":
                out.append(p["payload"]["state"])
            elif t == f"ate/{self.d}/TestApp/testresult/site{site}":
                out.append("result")
        return out


def _sim_config(broker, **extra):
    data = {"device_id": D, "sites": ["0", "1"], "broker_host": broker.host,
            "broker_port": broker.port, "ptr_count": 2, "test_time": 0.01, "seed": 3}
    data.update(extra)
    return sim_config_from_dict(data)


async def _start(reactor, broker, per_site_clients=False, **extra):
    """Start a fake master, then the sim (via the twistd plugin), and sync on idle."""
    cfg = _sim_config(broker, **extra)
    master = FakeMaster(reactor, cfg.broker)
    await master.start()
    opts = Options()
    opts["sim_config"] = cfg
    opts["logs"] = False
    opts["per-site-clients"] = per_site_clients
    sim = makeService(opts, reactor)
    sim.startService()
    await sim.whenConnected().addTimeout(TIMEOUT, reactor)
    # Control apps publish on connect; an echo of a master status also works
    await master.wait_for(lambda: all(master.states("Control", s) for s in cfg.sites),
                          "Control idle on connect")
    return master, sim, cfg


async def _stop(master, sim):
    await sim.stopService()
    await master.mqtt.stopService()


async def _load(master, sites=("0", "1")):
    await master.cmd("Control", "loadTest", sites, testapp_params={
        "testapp_script_path": "prog.py", "testapp_script_args": ["--verbose"], "cwd": "",
        "bin_table": BIN_TABLE})
    await master.wait_for(lambda: all(master.states("TestApp", s)[-1:] == ["idle"]
                                      for s in sites), "TestApps idle after load")


async def _next(master, sites, partids):
    await master.cmd("TestApp", "next", sites, job_data={"sites_info": [
        {"siteid": s, "partid": partids[s], "binning": -1, "logflag": 0, "additionalinfo": "0"}
        for s in sites]})


@pytest_twisted.ensureDeferred
async def test_lot_on_the_wire(reactor, broker):
    master, sim, cfg = await _start(reactor, broker)
    try:
        # echo on every master status
        n = len(master.states("Control", "0"))
        await master.send("Master/status", {"type": "status", "interface_version": 1,
                                             "state": "initialized",
                                             "payload": {"state": "initialized",
                                                         "message": ""}})
        await master.wait_for(lambda: len(master.states("Control", "0")) > n and
                              len(master.states("Control", "1")) > n, "Control echo")

        await _load(master)
        for s in ("0", "1"):
            assert master.states("Control", s)[-2:] == ["loading", "busy"]

        await master.cmd("TestApp", "getexecutionstrategy", ("0", "1"),
                         layout=[[0, 0], [1, 0]])
        strategies = await master.wait_for(
            lambda: len(master.of_kind("execution_strategy")) == 2 and
            master.of_kind("execution_strategy"), "execution strategies")
        assert all(p == {"type": "execution_strategy", "payload": [[["0", "1"]]] * 2}
                   for _t, p in strategies)

        await _next(master, ("0", "1"), {"0": "P100", "1": "P101"})
        await master.wait_for(lambda: all(master.of_kind("testresult", s) for s in "01"),
                              "one result per site")
        for s in ("0", "1"):
            assert master.sequence(s)[-3:] == ["testing", "idle", "result"]
            (_t, result), = master.of_kind("testresult", s)
            prr = result["payload"][-1]
            assert prr["type"] == "PRR" and prr["PART_ID"] == f"P10{s}"
            assert prr["SITE_NUM"] == int(s)
        truth = sim.sites.truth
        assert truth.part_count == 2 and truth.messages == 2

        # a subset: only site 1 is tested
        await _next(master, ("1",), {"1": "P102"})
        await master.wait_for(lambda: len(master.of_kind("testresult", "1")) == 2,
                              "second result of site 1")
        assert len(master.of_kind("testresult", "0")) == 1
        got = [p["payload"][-1]["SOFT_BIN"] for _t, p in master.of_kind("testresult")]
        assert sorted(got) == sorted(p.soft_bin for p in truth.parts)

        await master.cmd("TestApp", "terminate", ("0", "1"))
        await master.wait_for(lambda: all(master.states("Control", s)[-1] == "idle"
                                          for s in "01"), "Control idle after terminate")
        for s in ("0", "1"):
            assert master.sequence(s)[-1] == "terminated"
            (_t, summary), = master.of_kind("testsummary", s)
            assert summary["type"] == "testresult"
            assert [r["EXEC_CNT"] for r in summary["payload"]] == [truth.by_site[s]] * 2
    finally:
        await _stop(master, sim)


@pytest_twisted.ensureDeferred
async def test_reset_while_loaded(reactor, broker):
    master, sim, cfg = await _start(reactor, broker)
    try:
        await _load(master)
        await master.cmd("Control", "reset", ("0", "1"))
        await master.wait_for(lambda: all(master.states("Control", s)[-2:] ==
                                          ["resetting", "idle"] for s in "01"),
                              "resetting, idle")
        # the TestApps are gone; a new load brings them back
        await _load(master)
    finally:
        await _stop(master, sim)


@pytest_twisted.ensureDeferred
async def test_fault_crash(reactor, broker):
    master, sim, cfg = await _start(reactor, broker, faults={"crash_on_part": 1, "fault_site": "1"})
    try:
        await _load(master)
        await _next(master, ("0", "1"), {"0": "A", "1": "B"})
        await master.wait_for(lambda: "crash" in master.states("TestApp", "1"),
                              "TestApp will of site 1")
        await master.wait_for(lambda: master.states("Control", "1")[-1] == "error",
                              "Control error after the crash")
        (_t, will), = [(t, p) for t, p in master.of_kind("status", "1")
                       if t.split("/")[2] == "TestApp" and p["state"] == "crash"]
        assert will["payload"] == {"state": 0}
        assert not master.of_kind("testresult", "1")
        await master.wait_for(lambda: master.of_kind("testresult", "0"), "site 0 result")
    finally:
        await _stop(master, sim)


@pytest_twisted.ensureDeferred
async def test_fault_drop_result(reactor, broker):
    master, sim, cfg = await _start(reactor, broker, faults={"drop_result_on_part": 1})
    try:
        await _load(master)
        await _next(master, ("0", "1"), {"0": "A", "1": "B"})
        await master.wait_for(lambda: master.of_kind("testresult", "1"), "site 1 result")
        await master.wait_for(lambda: master.sequence("0")[-2:] == ["testing", "idle"],
                              "site 0 idle")
        # part 2 of site 0 is delivered; part 1 never was
        await _next(master, ("0",), {"0": "C"})
        await master.wait_for(lambda: master.of_kind("testresult", "0"), "site 0 result")
        (_t, p), = master.of_kind("testresult", "0")
        assert p["payload"][-1]["PART_ID"] == "C"
        assert sim.sites.truth.dropped == 1
    finally:
        await _stop(master, sim)


@pytest_twisted.ensureDeferred
async def test_fault_wrong_site(reactor, broker):
    master, sim, cfg = await _start(reactor, broker,
                                    faults={"wrong_site_on_part": 1, "fault_site": "0"})
    try:
        await _load(master)
        await _next(master, ("0",), {"0": "A"})
        (_t, p), = await master.wait_for(lambda: master.of_kind("testresult", "1"),
                                         "result on site 1's topic")
        assert p["payload"][-1]["PART_ID"] == "A" and p["payload"][-1]["SITE_NUM"] == 0
        assert not master.of_kind("testresult", "0")
    finally:
        await _stop(master, sim)


@pytest_twisted.ensureDeferred
async def test_fault_duplicate_and_slow_load(reactor, broker):
    master, sim, cfg = await _start(reactor, broker, faults={"duplicate_result_on_part": 1,
                                                    "slow_load": 0.2, "fault_site": "1"})
    try:
        await _load(master)
        # site 1 loaded last (slow load)
        busy = [t for t, p in master.received
                if t.split("/")[2] == "Control" and p["payload"]["state"] == "busy"]
        assert busy[-1].endswith("site1")
        await _next(master, ("1",), {"1": "A"})
        results = await master.wait_for(
            lambda: len(master.of_kind("testresult", "1")) == 2 and
            master.of_kind("testresult", "1"), "two results")
        assert results[0][1] == results[1][1]
        assert sim.sites.truth.messages == 2 and sim.sites.truth.part_count == 1
    finally:
        await _stop(master, sim)


@pytest_twisted.ensureDeferred
async def test_sites_started_before_master(reactor, broker):
    """A master that connects later resynchronises through the Control echo."""
    cfg = _sim_config(broker)
    opts = Options()
    opts["sim_config"] = cfg
    opts["logs"] = False
    opts["per-site-clients"] = False
    sim = makeService(opts, reactor)
    sim.startService()
    try:
        await sim.whenConnected().addTimeout(TIMEOUT, reactor)
        master = FakeMaster(reactor, cfg.broker)
        await master.start()
        assert master.received == []
        await master.send("Master/status", {"type": "status", "interface_version": 1,
                                             "state": "connecting",
                                             "payload": {"state": "connecting",
                                                         "message": ""}})
        await master.wait_for(lambda: all(master.states("Control", s) == ["idle"]
                                          for s in "01"), "Control echo")
        await master.mqtt.stopService()
    finally:
        await sim.stopService()


@pytest_twisted.ensureDeferred
async def test_per_site_clients(reactor, broker):
    master, sim, cfg = await _start(reactor, broker, per_site_clients=True)
    try:
        assert len(sim.clients) == 4
        await _load(master)
        await _next(master, ("0", "1"), {"0": "P1", "1": "P2"})
        await master.wait_for(lambda: all(master.of_kind("testresult", s) for s in "01"),
                              "one result per site")
        for s, pid in (("0", "P1"), ("1", "P2")):
            assert master.sequence(s)[-3:] == ["testing", "idle", "result"]
            (_t, p), = master.of_kind("testresult", s)
            assert p["payload"][-1]["PART_ID"] == pid
    finally:
        await _stop(master, sim)
