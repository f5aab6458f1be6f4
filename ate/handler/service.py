"""The ate-handler service: MQTT, the controller and one driver (protocol.md 13).

MQTT (13.1): client id ``handler.H``; status on ``ate/H/Handler/status``
(QoS 2, will ``crash``); commands on ``ate/D/Master/cmd`` and the temperature
reply on ``ate/H/Handler/response`` (QoS 0); subscriptions from
:meth:`ate.protocol.topics.Topics.handler_subscriptions`.

Inbound messages are decoded here, tolerantly, because the handler must work
with the reference master as well as ate-master: the master state is read
from the top-level ``state`` (falling back to ``payload.state``), ``message``
may be ``null``. A message that cannot be decoded is logged and dropped.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from twisted.application.service import MultiService
from twisted.logger import Logger

from ate.handler.drivers.line import LineDriver, SerialOptions
from ate.handler.drivers.simulated import InProcessLink, SimulatedHandler
from ate.handler.machine import HandlerController, HandlerSettings, MasterReply
from ate.mqtt.service import MqttNotConnected, MqttService
from ate.protocol.topics import Topics

__all__ = ["MqttBus", "decode_inbound", "HandlerService", "status_payload"]

log = Logger(namespace="ate.handler.service")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def status_payload(state: str, message: str) -> bytes:
    """The handler status message (13.1)."""
    return _dumps({"type": "status", "payload": {"state": state, "message": message}})


class MqttBus:
    """:class:`~ate.handler.machine.MasterBus` over an :class:`MqttService`."""

    def __init__(self, mqtt: Any, handler_id: str) -> None:
        self.mqtt = mqtt
        self.status_topic = f"ate/{handler_id}/Handler/status"
        self.response_topic = f"ate/{handler_id}/Handler/response"

    def _publish(self, topic: str, payload: bytes, qos: int) -> None:
        d = self.mqtt.publish(topic, payload, qos)

        def failed(f: Any) -> None:
            if f.check(MqttNotConnected):
                log.warn("not connected; {topic} not published", topic=topic)
            else:
                log.failure("publishing on {topic} failed", f, topic=topic)

        d.addErrback(failed)

    def command(self, device_id: str, type: str, payload: Mapping[str, Any]) -> None:
        self._publish(f"ate/{device_id}/Master/cmd", _dumps({"type": type, "payload": payload}), 0)

    def handler_status(self, state: str, message: str) -> None:
        self._publish(self.status_topic, status_payload(state, message), 2)

    def handler_response(self, payload: Mapping[str, Any]) -> None:
        self._publish(self.response_topic, _dumps(payload), 0)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def decode_inbound(topic: str, payload: bytes) -> tuple[str, str, Any]:
    """Decode one subscribed message into ``(kind, device_id, value)``.

    ``kind`` is ``"status"`` (value ``(state, message)``), ``"response"``
    (value a :class:`MasterReply`) or ``"request"`` (value ``(type,
    payload)``). Raises ``ValueError`` naming the problem.
    """
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "ate":
        raise ValueError(f"{topic}: not a handler topic")
    device, app, leaf = parts[1], parts[2], parts[3]
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{topic}: payload is not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{topic}: payload is not a JSON object")
    body = obj.get("payload")
    body = body if isinstance(body, dict) else {}
    mtype = obj.get("type")
    if not isinstance(mtype, str):
        raise ValueError(f"{topic}: type: missing or not a string")
    if (app, leaf) == ("Master", "status"):
        state = obj.get("state", body.get("state"))
        if not isinstance(state, str) or not state:
            raise ValueError(f"{topic}: state: missing or not a string")
        return "status", device, (state, _text(obj.get("message", body.get("message"))))
    if (app, leaf) == ("Master", "response"):
        if mtype == "error":
            return "response", device, MasterReply(
                "error", body, command_type=_text(obj.get("command_type")) or None,
                response_type=_text(obj.get("response_type")) or None,
                message=obj.get("message") if isinstance(obj.get("message"), str) else None)
        return "response", device, MasterReply(mtype, body)
    if (app, leaf) == ("Handler", "command"):
        return "request", device, (mtype, body)
    raise ValueError(f"{topic}: not a handler topic")


class HandlerService(MultiService):
    """ate-handler: MQTT first, then the driver (so the driver stops first).

    The driver is chosen in this order: ``serial`` (a serial port), the
    config's ``serial`` client endpoint, its ``listen`` server endpoint, and
    for ``handler_type = "simulated"`` (or an explicit ``device``) an
    in-process :class:`SimulatedHandler`.
    """

    def __init__(self, reactor: Any, config: Any, *, serial: SerialOptions | None = None,
                 device: SimulatedHandler | None = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.config = config
        topics_status = f"ate/{config.handler_id}/Handler/status"
        self.mqtt = MqttService(
            reactor, config.broker, f"handler.{config.handler_id}",
            will=(topics_status, status_payload("crash", ""), 2),
            subscriptions=Topics.handler_subscriptions(config.device_ids),
            on_message=self._message,
            on_connected=self._connected,
            on_disconnected=self._disconnected,
        )
        self.mqtt.setServiceParent(self)
        self.bus = MqttBus(self.mqtt, config.handler_id)
        self.controller = HandlerController(reactor, HandlerSettings.from_config(config), self.bus)
        self.device: SimulatedHandler | None = None
        self.driver: LineDriver | None = None
        if serial is not None:
            self.driver = LineDriver(reactor, self.controller, serial=serial)
        elif device is None and config.serial is not None:
            self.driver = LineDriver(reactor, self.controller, client=config.serial)
        elif device is None and config.listen is not None:
            self.driver = LineDriver(reactor, self.controller, server=config.listen)
        elif device is not None or config.handler_type == "simulated":
            self.device = device or SimulatedHandler(
                reactor, sites=max(1, len(config.site_layout)), index_time=0.5)
            self.controller.attach(InProcessLink(reactor, self.device, self.controller))
        else:
            raise ValueError(
                f"{config.path}: no handler device: give a serial port, or the key "
                "'serial' (client endpoint) or 'listen' (server endpoint)")
        if self.driver is not None:
            self.controller.attach(self.driver)
            self.driver.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        if self.device is not None:
            self.reactor.callLater(0, self.device.start)

    def stopService(self) -> Any:
        if self.device is not None:
            self.device.stop()
        return super().stopService()

    def _connected(self) -> None:
        self.controller.mqtt_connected()

    def _disconnected(self) -> None:
        self.controller.mqtt_disconnected()

    def _message(self, topic: str, payload: bytes) -> None:
        try:
            kind, device, value = decode_inbound(topic, payload)
        except ValueError as e:
            log.error("dropped message: {error}", error=str(e))
            return
        if device not in self.config.device_ids:
            log.warn("message from unconfigured master {device} on {topic}", device=device,
                     topic=topic)
        if kind == "status":
            self.controller.master_status(device, *value)
        elif kind == "response":
            self.controller.master_response(device, value)
        else:
            self.controller.master_request(device, *value)
