"""The start-up reset on a real broker: Control apps that were up before the master answer
its reset after it reached ``initialized`` (their ``idle`` sent on connecting got to the
master first).  A ``load`` in that window is accepted: the master reports ``loading`` and
sends the ``loadTest`` once every Control app is idle (protocol.md §3.4).

The Control apps and TestApps here are scripted on one MQTT client, so that the test
decides when their reset ends.
"""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet.defer import DeferredList

from ate.config import MqttOptions
from ate.mqtt.service import MqttService
from ate.tap import build_master
from ate.testing.peers import HandlerClient
from tests.integration.test_broker_blip import DEVICE, SITES, master_config
from tests.waiting import Waiter

LOT = "306426.001"
TIMEOUT = 20.0


class ScriptedSites(Waiter):
    """Every site's Control app and TestApp on one client.  The master's reset is answered
    with a stale ``idle`` (sent before the reset arrived) and ``resetting``; ``idle`` follows
    only on ``release()``.  ``loadTest`` is answered ``loading``, ``busy``, TestApp ``idle``."""

    timeout = TIMEOUT

    def __init__(self, reactor, port: int) -> None:
        super().__init__()
        base = f"ate/{DEVICE}"
        self.base = base
        self.seen: list[tuple[str, dict]] = []   # (topic tail, message) of what came in
        self.mqtt = MqttService(
            reactor, MqttOptions(host="127.0.0.1", port=port), "scripted.sites",
            subscriptions=[(f"{base}/Control/cmd", 2), (f"{base}/TestApp/cmd", 2),
                           (f"{base}/Master/status", 2)],
            on_message=self._message)

    def _status(self, app: str, site: str, state: str) -> None:
        if app == "Control":
            msg = {"type": "status", "interface_version": 1, "software_version": 1,
                   "payload": {"state": state, "error_message": ""}}
        else:
            msg = {"type": "status", "framework_version": 1, "test_version": "N/A",
                   "payload": {"state": state, "message": ""}, "state": state}
        self.mqtt.publish(f"{self.base}/{app}/status/site{site}", json.dumps(msg).encode(), 2)

    def _message(self, topic: str, payload: bytes) -> None:
        tail = topic[len(self.base) + 1:]
        msg = json.loads(payload)
        self.seen.append((tail, msg))
        command = msg.get("command") if tail == "Control/cmd" else None
        if command == "reset":
            for state in ("idle", "resetting"):  # the stale idles, then the answers
                for site in SITES:
                    self._status("Control", site, state)
        elif command == "loadTest":
            for site in SITES:
                for state in ("loading", "busy"):
                    self._status("Control", site, state)
                self._status("TestApp", site, "idle")
        self.poke()

    def release(self) -> None:
        for site in SITES:
            self._status("Control", site, "idle")

    def commands(self, name: str) -> list[dict]:
        return [m for t, m in self.seen if t == "Control/cmd" and m.get("command") == name]

    def statuses(self) -> list[str]:
        return [m["state"] for t, m in self.seen if t == "Master/status"]


@pytest_twisted.ensureDeferred
async def test_a_load_while_the_sites_answer_the_start_up_reset_waits_for_them(
        reactor, mosquitto, tmp_path, warnings_logged):
    cfg = master_config(tmp_path, mosquitto.port)
    master, cell = build_master(cfg, reactor, observe_logs=False)
    sites = ScriptedSites(reactor, mosquitto.port)
    client = HandlerClient(reactor, "127.0.0.1", mosquitto.port, DEVICE, "reset.handler")
    try:
        await client.start()
        sites.mqtt.startService()
        await sites.mqtt.whenConnected()
        up = client.wait_state("initialized", TIMEOUT)
        master.startService()
        await up
        # the master took the stale idles; the resetting that followed is what it knows now
        await sites.until(lambda: all(cell.tracker.control_state(s) == "resetting"
                                      for s in SITES), reactor)
        assert cell.status()["state"] == "initialized"

        # the load is accepted at once; the loadTest waits: the master's commands precede
        # its status on the wire, so a loadTest sent with the load would have come first
        loading = client.wait_state("loading", TIMEOUT)
        await client.send("load", {"lot_number": LOT})
        await loading
        await sites.until(lambda: "loading" in sites.statuses(), reactor)
        assert sites.commands("loadTest") == []
        assert not [m for k, m in client.received if k == "response"]

        ready = client.wait_state("ready", TIMEOUT)
        sites.release()
        await ready
        [load] = sites.commands("loadTest")
        assert load["testapp_params"]["testapp_script_path"]
        assert sites.statuses()[-2:] == ["loading", "ready"]
        assert warnings_logged == []
    finally:
        ds = [s.stopService() for s in (master, sites.mqtt, client.mqtt) if s.running]
        await DeferredList(ds)
