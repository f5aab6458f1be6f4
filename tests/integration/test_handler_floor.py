"""ate-handler on the floor broker driving four masters on four tester brokers through their
bridges (docs/floor.md): the handler application (HandlerService, its simulated device in
process) connects to the floor broker only; each master (build_master, 2 simulated sites)
to its own tester broker, bridged to the floor by ``etc/mosquitto-tester-bridge.conf``.
One ``ST`` of 8 handler sites is split 2 + 2 + 2 + 2 over the four testers (``site_map``).

One tester's broker is killed -9 mid-lot and restarted: the handler's ``next`` for it,
sent while its bridge was down, is lost (QoS 0), and resent once the master re-publishes
``ready`` after its reconnect (README "Broker loss"); the others are not disturbed, and no
part is lost, also when the master is back before its TestApps (the resent next waits for
them).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from ate.config import handler_config_from_dict
from ate.handler.drivers.simulated import SimulatedHandler
from ate.handler.service import HandlerService
from tests.integration.test_floor_bridge import (
    TIMEOUT,
    FloorTester,
    FloorWatcher,
    Waiter,
    bridge_connects,
    floor_broker,
    poll,
)

H = "HTO92-20F"
LOT = "306426.001"
DEVICES = ("SCT-81-1F", "SCT-81-2F", "SCT-81-3F", "SCT-81-4F")
SITES = ("0", "1")
SITE_MAP = [[d, s] for d in DEVICES for s in SITES]  # handler site 2j + k -> tester j, site k
STS = 12                                             # ST lines of the lot
PARTS = STS * len(SITE_MAP)
RESEND = ("master {device} reports {state} ({how}) and has not got {kind}: resending it "
          "(lost with the broker connection)")


@pytest.fixture
def floor():
    broker = floor_broker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        broker.cleanup()


class Logs:
    """The log events while installed."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def of(self, fmt: str) -> list[dict]:
        return [e for e in self.events if e.get("log_format") == fmt]


@pytest.fixture
def logs():
    observer = Logs()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def expected_parts(j: int) -> list[str]:
    """The part ids of tester ``j`` in the order tested: the simulated device numbers the
    parts P1, P2 ... in handler site order, ST after ST."""
    width = len(SITE_MAP)
    return [f"P{k * width + 2 * j + s + 1}" for k in range(STS) for s in range(len(SITES))]


async def run_lot(reactor, floor, tmp_path, logs, victim_sites_backoff):
    """The lot of the module docstring; the victim's simulated sites reconnect with
    ``victim_sites_backoff``, the other sites and every master with the default (1 s
    doubling).  Returns the handler status messages seen on the floor."""
    events = Waiter()
    watcher = FloorWatcher(reactor, floor, events=events, also=(f"ate/{H}/Handler/status",))
    testers = [FloorTester(reactor, tmp_path, floor, d, SITES, next_ack=3) for d in DEVICES]
    victim = testers[2]
    victim.sim_backoff = victim_sites_backoff
    device = SimulatedHandler(reactor, lots=(), sites=len(SITE_MAP), index_time=0.3,
                              retry_time=0.2)
    handler = HandlerService(reactor, handler_config_from_dict({
        "broker_host": floor.host, "broker_port": floor.port, "handler_type": "simulated",
        "handler_id": H, "device_ids": list(DEVICES),
        "site_layout": [[i, 0] for i in range(len(SITE_MAP))], "site_map": SITE_MAP,
        "timeouts": {"load": 20, "next": 30, "unload": 20, "startup": 30},
    }, source="test-handler-floor"), device=device)
    try:
        for t in testers:
            t.start_broker()
        await poll(lambda: all(bridge_connects(floor, d) == 1 for d in DEVICES), reactor)
        watcher.mqtt.startService()
        await watcher.subscribed()
        for t in testers:
            t.start()
        await events.until(lambda: all(watcher.states.get(d, [])[-1:] == ["initialized"]
                                       for d in DEVICES), reactor)
        handler.startService()
        await events.until(lambda: handler.controller.status().state == "initialized"
                           and any(m["payload"]["state"] == "initialized"
                                   for _, m in watcher.other), reactor)
        device.lots, device.parts_per_lot = [LOT], PARTS
        device.start()

        # after the 4th ET, while the device waits its index time before the next ST:
        # kill -9 the third tester's broker
        await device.wait_parts(4 * len(SITE_MAP)).addTimeout(TIMEOUT, reactor)
        assert victim.cell.status()["state"] == "ready"
        victim.broker.kill()
        await deferLater(reactor, 1.5)  # its down time, not a wait for a result
        victim.broker.start()
        # the lot ends, or the restarted tester fails
        lot_done = device.wait_lots(1)
        lot_done.addCallback(lambda _: events.poke())
        await events.until(lambda: lot_done.called
                           or "softerror" in watcher.states[victim.device_id], reactor,
                           2 * TIMEOUT)
        assert "softerror" not in watcher.states[victim.device_id], \
            victim.cell.status()["error_message"]
        await events.until(lambda: handler.controller.status().state == "initialized"
                           and all(watcher.states[d][-1] == "initialized" for d in DEVICES),
                           reactor)

        # nothing lost: every ST got its ET, every part of every tester is in its datalog
        assert device.parts_tested == PARTS and device.errors == [] and device.bad_lines == 0
        assert sorted(p for _, p, _ in device.results) == sorted(
            f"P{i}" for i in range(1, PARTS + 1))
        for j, t in enumerate(testers):
            records = t.datalog()
            assert records[0][0] == "FAR" and records[-1][0] == "MRR", t.device_id
            assert [f["PART_ID"] for n, f in records if n == "PRR"] == expected_parts(j)
            assert t.cell.metrics.softerrors == 0, t.device_id
            assert t.cell.metrics.mqtt_disconnects == (1 if t is victim else 0), t.device_id
        # the lost next was resent to the restarted tester only, once
        resent = logs.of(RESEND)
        assert [(e["device"], e["state"], e["kind"]) for e in resent] == \
            [(victim.device_id, "ready", "next")]
        # the others went on: nobody excluded, the handler never in error
        assert handler.controller.status().excluded == {}
        handler_states = [m["payload"]["state"] for _, m in watcher.other]
        assert "error" not in handler_states, watcher.other
        for d in DEVICES:
            assert "softerror" not in watcher.states[d]
    finally:
        device.stop()
        if handler.running:
            await handler.stopService()
        if watcher.mqtt.running:
            await watcher.mqtt.stopService()
        for t in testers:
            await t.stop()


@pytest_twisted.ensureDeferred
async def test_handler_drives_four_masters_through_the_floor_one_tester_broker_restarted(
        reactor, floor, tmp_path, logs):
    # the restarted tester's sites are back before its master (see the next test)
    await run_lot(reactor, floor, tmp_path, logs, victim_sites_backoff=(0.2, 1.0))


@pytest_twisted.ensureDeferred
async def test_a_master_back_before_its_testapps_holds_the_resent_next_until_they_are(
        reactor, floor, tmp_path, logs):
    # the master reconnects 3 s after the kill (1 s, then 2 s), its sites only at 4 s: the
    # resent next waits for the TestApps (ate.master.held.Rejoin) instead of being lost
    await run_lot(reactor, floor, tmp_path, logs, victim_sites_backoff=(4.0, 30.0))
    held = logs.of("next held until the TestApps of sites {sites} are back after the "
                   "reconnect")
    back = logs.of("TestApps of sites {sites} back: next sent")
    assert [e["sites"] for e in held] == ["0, 1"]
    assert [e["sites"] for e in back] == ["0, 1"]
