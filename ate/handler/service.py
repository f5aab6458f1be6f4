"""The ate-handler service: MQTT, the controller and one driver (protocol.md 13).

MQTT (13.1): client id ``handler.H``; status on ``ate/H/Handler/status``
(QoS 2, will ``crash``); commands on ``ate/D/Master/cmd`` and the temperature
reply on ``ate/H/Handler/response`` (QoS 0); subscriptions from
:meth:`ate.protocol.topics.Topics.handler_subscriptions`.

Every message is encoded and decoded by :class:`ate.protocol.Codec`, one per
configured master (a codec belongs to one device id): :class:`MqttBus`
publishes the controller's messages, :class:`HandlerRouter` decodes what the
subscriptions deliver and feeds the controller. The codec reads the master
state as the Semi-ATE handler does, from the top-level ``state``, else
``payload.state`` (2.1), and takes a ``null`` message. A message it refuses is
logged as an error naming the topic and the field and changes nothing, except
that a refused answer to a pending ``next`` ends that ``next`` at once with
``TS|-1|...|`` (as a bad result does) instead of at its timeout.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from twisted.application.service import MultiService
from twisted.logger import Logger

from ate.handler.drivers.line import LineDriver, SerialOptions
from ate.handler.drivers.simulated import InProcessLink, SimulatedHandler
from ate.handler.machine import HandlerController, HandlerSettings
from ate.mqtt.service import MqttNotConnected, MqttService
from ate.protocol import ProtocolError, Topics
from ate.protocol.messages import (
    Codec,
    ErrorResponse,
    GetHostResponse,
    GetStateResponse,
    HandlerCommand,
    HandlerResponse,
    HandlerStatus,
    IdentifyResponse,
    MasterStatus,
    Message,
    NextResponse,
)

__all__ = ["MqttBus", "HandlerRouter", "HandlerService", "handler_codecs", "handler_will"]

log = Logger(namespace="ate.handler.service")

_RESPONSES = (NextResponse, IdentifyResponse, GetStateResponse, GetHostResponse, ErrorResponse)


def handler_codecs(handler_id: str, device_ids: Sequence[str]) -> dict[str, Codec]:
    """One codec per master device id, each knowing the handler's own topics (which are
    therefore the same in every one of them)."""
    return {device: Codec(device, (), handler_id) for device in device_ids}


def handler_will(handler_id: str, codecs: Mapping[str, Codec]) -> tuple[str, bytes, int]:
    """The last will: the handler status ``crash`` at QoS 2 (13.1)."""
    own = next(iter(codecs.values()))
    return (*own.encode(HandlerStatus(handler_id, "crash", "")), 2)


class MqttBus:
    """:class:`~ate.handler.machine.MasterBus` over an :class:`MqttService`."""

    def __init__(self, mqtt: Any, handler_id: str, codecs: Mapping[str, Codec]) -> None:
        self.mqtt = mqtt
        self.handler_id = handler_id
        self.codecs = codecs
        self._own = next(iter(codecs.values()))  # for the handler's own topics

    def _publish(self, topic: str, payload: bytes, qos: int) -> None:
        d = self.mqtt.publish(topic, payload, qos)

        def failed(f: Any) -> None:
            if f.check(MqttNotConnected):
                log.warn("not connected; {topic} not published", topic=topic)
            else:
                log.failure("publishing on {topic} failed", f, topic=topic)

        d.addErrback(failed)

    def command(self, device_id: str, msg: Message) -> None:
        self._publish(*self.codecs[device_id].encode(msg), 0)

    def handler_status(self, state: str, message: str) -> None:
        self._publish(*self._own.encode(HandlerStatus(self.handler_id, state, message)), 2)

    def handler_response(self, msg: HandlerResponse) -> None:
        self._publish(*self._own.encode(msg), 0)


class HandlerRouter:
    """Decodes the messages of the handler's subscriptions (13.1) for the controller.

    ``Master/status`` becomes :meth:`~HandlerController.master_status`,
    ``Master/response`` :meth:`~HandlerController.master_response` (or
    :meth:`~HandlerController.master_response_malformed` when the codec refuses it) and
    ``Handler/command`` :meth:`~HandlerController.master_request`.
    """

    def __init__(self, controller: HandlerController, codecs: Mapping[str, Codec]) -> None:
        self.controller = controller
        self._routes: dict[str, tuple[str, Codec]] = {}
        for device, codec in codecs.items():
            t = codec.topics
            for topic in (t.master_status, t.master_response, t.handler_command):
                self._routes[topic] = (device, codec)

    def received(self, topic: str, payload: bytes) -> None:
        route = self._routes.get(topic)
        if route is None:
            log.error("dropped message on {topic}: not a topic of a configured master",
                      topic=topic)
            return
        device, codec = route
        try:
            msg = codec.decode(topic, payload)
        except ProtocolError as e:
            log.error("dropped message: {error}", error=str(e))
            if topic == codec.topics.master_response:
                reason = e.reason if e.field is None else f"{e.field}: {e.reason}"
                self.controller.master_response_malformed(device, e.command, reason)
            return
        if isinstance(msg, MasterStatus):
            if not msg.state:
                log.error("dropped message: {topic}: state: must not be empty", topic=topic)
                return
            self.controller.master_status(device, msg.state, msg.message or "")
        elif isinstance(msg, _RESPONSES):
            self.controller.master_response(device, msg)
        elif isinstance(msg, HandlerCommand):
            self.controller.master_request(device, msg)
        else:  # pragma: no cover - the codec decodes these topics to nothing else
            log.error("dropped message on {topic}: unexpected {kind}", topic=topic,
                      kind=type(msg).__name__)


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
        codecs = handler_codecs(config.handler_id, config.device_ids)
        self.mqtt = MqttService(
            reactor, config.broker, f"handler.{config.handler_id}",
            will=handler_will(config.handler_id, codecs),
            subscriptions=Topics.handler_subscriptions(config.device_ids),
            on_message=self._message,
            on_connected=self._connected,
            on_disconnected=self._disconnected,
        )
        self.mqtt.setServiceParent(self)
        self.bus = MqttBus(self.mqtt, config.handler_id, codecs)
        self.controller = HandlerController(reactor, HandlerSettings.from_config(config), self.bus)
        self.router = HandlerRouter(self.controller, codecs)
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
        self.router.received(topic, payload)
