"""twisted-mqtt (PyPI ``twisted-mqtt``, import name ``mqtt``) behind our link contract,
for the benchmarks only: not a project dependency, never used by ate-master itself.

    pip install twisted-mqtt         # into a throwaway venv that also has ate-master's deps
    python bench/cycle.py --link twisted-mqtt
    python bench/links.py            # publish/receive loops, every link that imports

:func:`create` has the signature of a link factory (``ate.mqtt.link.LinkFactory``), so an
``MqttService`` runs on it; :func:`install` makes it the master's link in this process
(bench/cycle.py starts the master with it). What twisted-mqtt 0.3.11 does not do itself,
this adapter does, or leaves out and the note in README "Benchmarks" says so:

- The session across a reconnect: with a clean session it fails every unacked QoS 1/2
  publish in its window when the connection drops, but keeps those still in its queue
  (per broker address, in the factory) and sends them on the next connection. The
  adapter empties that queue, keeps its own copy of each message until acked and
  publishes it again after the next CONNACK (as a new message: twisted-mqtt sets DUP only
  on its own in-connection retransmissions).
- QoS 0 completion: its Deferred has already fired when ``publish`` returns, so the
  adapter reports ``link_published`` one reactor turn later.
- Payloads: it takes ``bytearray`` or ``str`` only (a copy per publish) and delivers
  ``bytearray`` (copied to ``bytes`` here); the last will's message must be a ``str``
  (it is UTF-8 encoded): a binary will cannot be sent (ours is JSON, so it is decoded).
- The in-flight window: at most 16 (``MAX_WINDOW``; its default is 1); ours is 20.
- No reconnect of its own with endpoints (``MQTTFactory`` is a
  ``ReconnectingClientFactory``, which endpoints do not drive): the service's connection
  machine reconnects, as with our links.
- Not available: a packet size cap (it buffers every packet whole, however large:
  ``refused_packets`` stays 0); an injected clock (its timers use the global reactor:
  ``callLater`` is a class attribute, patched here per connection, but the keepalive
  ``LoopingCall`` is not); and it retransmits unacked QoS 1/2 PUBLISHes on the same
  connection after a timeout from an assumed 10 000 bytes/s, logging each at ERROR.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from mqtt.client.factory import MQTTFactory  # twisted-mqtt
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from ate.mqtt.link import LinkListener, MqttLinkError

__all__ = ["TwistedMqttLink", "create", "install"]

WINDOW = 16  # twisted-mqtt's MAX_WINDOW
CONNECT_TIMEOUT = 10.0


class TwistedMqttLink:
    """One twisted-mqtt ``MQTTProtocol`` per connection, session kept here."""

    log = Logger(namespace="bench.twisted_mqtt_link")
    refused_packets = 0  # twisted-mqtt has no packet size cap

    def __init__(self, reactor: Any, options: Any, client_id: str,
                 will: tuple[str, bytes, int] | None, listener: LinkListener) -> None:
        self._reactor = reactor
        self._options = options
        self._clientId = client_id
        self._will = will
        self.listener = listener
        self._factory = MQTTFactory(profile=MQTTFactory.PUBLISHER | MQTTFactory.SUBSCRIBER)
        self._proto: Any = None
        self._open = False  # CONNACK accepted on self._proto, not lost since
        self._connecting = False
        self._lastMid = 0
        self._out: dict[int, tuple[str, bytes, int]] = {}  # unacked QoS 1/2, publish order
        self._q0: list[int] = []
        self._q0Call: Any = None

    # -- link contract --------------------------------------------------

    def start(self) -> None:
        pass

    def stop(self) -> None:
        call, self._q0Call = self._q0Call, None
        if call is not None and call.active():
            call.cancel()
        self._q0 = []

    def connect(self) -> Deferred[None]:
        if self._connecting:
            raise MqttLinkError("connect: a connection attempt is already running")
        self._connecting = True
        o = self._options
        endpoint: Any = HostnameEndpoint(self._reactor, o.host, o.port, timeout=CONNECT_TIMEOUT)
        if o.tls:
            from ate.mqtt.tls import tls_connection_creator

            endpoint = wrapClientTLS(tls_connection_creator(o), endpoint)
        d = endpoint.connect(self._factory)

        def made(proto: Any) -> None:
            self._connecting = False
            self._attach(proto)

        def failed(f: Failure) -> Failure:
            self._connecting = False
            return f

        d.addCallbacks(made, failed)
        return d

    def publish(self, topic: str, payload: bytes, qos: int) -> int:
        if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic:
            raise ValueError(f"publish: bad topic {topic!r}")
        if qos not in (0, 1, 2):
            raise ValueError(f"publish to {topic!r}: qos must be 0, 1 or 2, got {qos!r}")
        if qos == 0:
            if not self._open:
                raise MqttLinkError(f"publish to {topic!r}: not connected")
            mid = self._next_mid()
            self._proto.publish(topic, bytearray(payload), 0).addErrback(self._lostPublish)
            self._q0.append(mid)
            if self._q0Call is None:
                self._q0Call = self._reactor.callLater(0, self._flush_q0)
            return mid
        mid = self._next_mid()
        self._out[mid] = (topic, bytes(payload), qos)
        if self._open:
            self._send(mid)
        return mid

    def subscribe(self, subscriptions: Sequence[tuple[str, int]]) -> int | None:
        if not subscriptions:
            return None
        if self._proto is None:
            raise MqttLinkError("subscribe: not connected")
        mid = self._next_mid()
        proto = self._proto

        def granted(codes: list[tuple[int, bool]]) -> None:
            if proto is self._proto:
                self.listener.link_subscribed(
                    mid, ["Unspecified error" for _qos, failed in codes if failed])

        self._proto.subscribe([(t, q) for t, q in subscriptions]).addCallbacks(
            granted, self._lostPublish)
        return mid

    def disconnect(self) -> None:
        proto = self._proto
        if proto is None or proto.transport is None:
            return
        self._open = False
        if proto.state is proto.CONNECTED:
            proto.disconnect()  # DISCONNECT, then loseConnection
        else:
            proto.transport.loseConnection()

    def abort(self) -> None:
        proto = self._proto
        if proto is not None and proto.transport is not None:
            self._open = False
            proto.transport.abortConnection()

    # -- twisted-mqtt side ----------------------------------------------

    def _attach(self, proto: Any) -> None:
        self._proto = proto
        proto.callLater = self._reactor.callLater
        proto.setWindowSize(WINDOW)
        proto.onPublish = self._on_publish
        lost = proto.connectionLost

        def connectionLost(reason: Failure) -> None:
            lost(reason)  # fails twisted-mqtt's in-flight Deferreds: kept in self._out
            self._lost(proto, reason)

        proto.connectionLost = connectionLost
        o = self._options
        will = self._will
        username = o.username
        d = proto.connect(
            self._clientId, keepalive=int(o.keepalive),
            willTopic=will[0] if will else None,
            willMessage=will[1].decode("utf-8") if will else None,  # a str only
            willQoS=will[2] if will else 0, willRetain=False,
            username=username, password=o.password if username is not None else None,
            cleanStart=True)
        d.addCallbacks(lambda _session: self._connack(proto, True, "Success"),
                       lambda f: self._connack(proto, False, f.getErrorMessage()))

    def _connack(self, proto: Any, accepted: bool, reason: str) -> None:
        if proto is not self._proto or proto.transport is None:
            return  # a late answer (or its CONNACK timeout) of a connection that is gone
        if not accepted:
            self.listener.link_connected(False, reason)
            proto.transport.loseConnection()
            return
        self._open = True
        self.listener.link_connected(True, reason)
        for mid in list(self._out):  # the session: unacked messages again, in order
            if self._open:
                self._send(mid)

    def _lost(self, proto: Any, reason: Failure) -> None:
        if proto is not self._proto:
            return
        self._open = False
        self._proto = None
        self.stop()
        # Its factory keeps the messages its window had not taken yet, per broker address,
        # and the next connection to the same address would send them: the session is ours.
        for queue in self._factory.queuePublishTx.values():
            queue.clear()
        self.listener.link_lost(f"connection lost: {reason.getErrorMessage()}")

    def _send(self, mid: int) -> None:
        topic, payload, qos = self._out[mid]
        proto = self._proto

        def acked(_: object) -> None:
            if self._out.pop(mid, None) is not None:
                self.listener.link_published(mid)

        proto.publish(topic, bytearray(payload), qos).addCallbacks(acked, self._lostPublish)

    def _lostPublish(self, f: Failure) -> None:
        """An in-flight operation failed with its connection; the session keeps it."""

    def _on_publish(self, topic: str, payload: bytearray, qos: int, dup: bool,
                   retain: bool, msgId: int | None) -> None:
        try:
            self.listener.link_message(topic, bytes(payload), qos)
        except Exception:
            self.log.failure("listener link_message failed for {topic}", topic=topic)

    def _flush_q0(self) -> None:
        self._q0Call = None
        mids, self._q0 = self._q0, []
        for mid in mids:
            self.listener.link_published(mid)

    def _next_mid(self) -> int:
        mid = self._lastMid
        while True:
            mid = mid + 1 if mid < 65535 else 1
            if mid not in self._out:
                self._lastMid = mid
                return mid
            if mid == self._lastMid:
                raise MqttLinkError("no free message id: 65535 messages unacked")


def create(reactor: Any, options: Any, client_id: str,
           will: tuple[str, bytes, int] | None, listener: LinkListener) -> TwistedMqttLink:
    """A link factory (``ate.mqtt.link.LinkFactory``) on twisted-mqtt."""
    return TwistedMqttLink(reactor, options, client_id, will, listener)


def install() -> None:
    """Every MqttService of this process built without ``link_factory`` uses twisted-mqtt."""
    import ate.mqtt.service

    ate.mqtt.service.default_link_factory = lambda options: create


if __name__ == "__main__":  # python bench/twisted_mqtt_link.py <twistd args>: the master on it
    install()
    from twisted.scripts.twistd import run

    sys.argv[0] = "twistd"
    run()
