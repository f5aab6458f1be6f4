"""Test and benchmark peers: a scriptable handler client that records what the master says.

Runs on the reactor through ``ate.mqtt.MqttService``; waiting is event driven (a Deferred
fires when a matching message arrives), never by sleeping.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.defer import Deferred

from ate.config import MqttOptions
from ate.mqtt.service import MqttService


class HandlerClient:
    """Sends handler commands to one master and records its status and responses."""

    def __init__(self, reactor: Any, host: str, port: int, device_id: str,
                 client_id: str = "testhandler") -> None:
        self.reactor = reactor
        self.device_id = device_id
        self.received: list[tuple[str, dict]] = []
        self._waiters: list[tuple[Callable[[str, dict], bool], Deferred]] = []
        base = f"ate/{device_id}/Master"
        self.t_cmd = f"{base}/cmd"
        self.mqtt = MqttService(
            reactor, MqttOptions(host=host, port=port), f"{client_id}.{device_id}",
            subscriptions=[(f"{base}/status", 2), (f"{base}/response", 2)],
            on_message=self._on_message,
        )

    def start(self) -> Deferred:
        self.mqtt.startService()
        return self.mqtt.whenConnected()

    def stop(self) -> Deferred:
        return self.mqtt.stopService()

    def _on_message(self, topic: str, payload: bytes) -> None:
        msg = json.loads(payload)
        kind = topic.rsplit("/", 1)[1]
        self.received.append((kind, msg))
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate(kind, msg):
                self._waiters.remove(waiter)
                d.callback((kind, msg))

    def send(self, type_: str, payload: Any = None) -> Deferred:
        msg: dict[str, Any] = {"type": type_}
        if payload is not None:
            msg["payload"] = payload
        return self.mqtt.publish(self.t_cmd, json.dumps(msg).encode(), 2)

    def wait(self, predicate: Callable[[str, dict], bool], timeout: float = 10.0,
             since: int | None = None) -> Deferred:
        """Fires with (kind, message) for the first matching message after index ``since``
        (default: only messages that arrive from now on)."""
        if since is not None:
            for kind, msg in self.received[since:]:
                if predicate(kind, msg):
                    d: Deferred = Deferred()
                    d.callback((kind, msg))
                    return d
        d = Deferred()
        self._waiters.append((predicate, d))
        d.addTimeout(timeout, self.reactor)
        return d

    def wait_state(self, state: str, timeout: float = 10.0, since: int | None = None) -> Deferred:
        return self.wait(lambda k, m: k == "status" and m.get("state") == state, timeout, since)

    def wait_response(self, type_: str, timeout: float = 10.0) -> Deferred:
        return self.wait(lambda k, m: k == "response" and m.get("type") == type_, timeout)

    def states(self) -> list[str]:
        return [m["state"] for k, m in self.received if k == "status"]

    def mark(self) -> int:
        return len(self.received)

    async def command(self, type_: str, payload: Any = None, *, expect: str | None = None,
                      timeout: float = 10.0) -> tuple[str, dict]:
        """Send a command and wait for the status ``expect`` or the response of that type."""
        if expect is not None:
            d = self.wait_state(expect, timeout)
        else:
            d = self.wait_response(
                "error" if type_ in ("load", "unload", "reset") else type_, timeout)
        await self.send(type_, payload)
        return await d
