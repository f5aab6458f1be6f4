"""Our MQTT 3.1.1 client link on Twisted: the default link (config C{mqtt_client = "twisted"}).

L{TwistedLink} speaks MQTT 3.1.1 itself over a Twisted transport, so the
reactor reads whole socket chunks and the parser slices packets out of them
with C{memoryview}s: no byte-wise C{recv}, no per-packet objects, no locks
or condition variables, and no paho (it imports none). It keeps the link
contract of L{ate.mqtt.link} and reports to a L{ate.mqtt.link.LinkListener},
as the other link, L{ate.mqtt.reactorpaho.ReactorPaho} (paho-mqtt on the
reactor, C{mqtt_client = "paho"}), does; it mirrors paho's behaviour where the
service can see it:

- C{connect()} opens TCP (or TLS) through a Twisted endpoint, sets
  TCP_NODELAY, writes CONNECT (MQTT 3.1.1, clean session, keepalive,
  credentials, a non-retained last will) and fires; the CONNACK is read in a
  later reactor turn and reported with C{link_connected(accepted, reason)}.
  A refused CONNACK is followed by the connection closing (C{link_lost}).
- C{publish()} returns a mid (1..65535, shared with SUBSCRIBE, skipping mids
  still unacked). QoS 0 is written at once and C{link_published(mid)} follows
  in a later reactor turn (after C{publish} has returned, so the caller can
  register the mid first). QoS 1/2 messages use an in-flight window of 20
  (L{ate.mqtt.link.WINDOW} says why 20); beyond it they
  wait in a FIFO queue. C{link_published(mid)} fires on PUBACK / PUBCOMP.
- A QoS 1/2 message unacked when the connection drops is kept and sent again
  (with DUP when it had been sent) after the next accepted CONNACK, as paho
  does with a clean session; QoS 0 messages are never kept.
- Incoming QoS 1 is delivered, then PUBACKed; incoming QoS 2 is answered
  with PUBREC, held until PUBREL, delivered once, then PUBCOMPed (a
  duplicate PUBLISH before the PUBREL replaces the held one).
- Keepalive: a PINGREQ goes out when nothing was sent or nothing was
  received for C{keepalive} seconds; the connection is dropped if no PINGRESP
  arrives within another C{keepalive} seconds.
- C{disconnect()} writes DISCONNECT and closes; C{abort()} drops the
  connection without DISCONNECT. Both end with C{link_lost}.
- A malformed or unexpected packet aborts the connection; C{link_lost} names
  the problem. Nothing raises out of C{dataReceived}; listener exceptions are
  logged with C{log.failure} (like paho's guarded callbacks).
- Packet size cap (C{options.max_packet_size}, config C{mqtt_max_packet_size},
  default 4 MiB): a PUBLISH whose remaining length is larger is refused as
  soon as its fixed header, topic and packet id have arrived. Its payload is
  never buffered: the rest of its bytes are counted off as they arrive and
  dropped. It is logged (WARNING naming topic and size), counted in
  C{refused_packets}, never delivered, and acknowledged like any other
  (PUBACK after its last byte for QoS 1, PUBREC then PUBCOMP for QoS 2), so
  the broker's in-flight window for us stays open and the session goes on:
  a single hostile publisher (even of a retained message, which would come
  back after every reconnect) cannot make us lose the session. Any other
  packet above the cap is a protocol error (the connection is dropped).

TLS (C{options.tls}): the settings of L{ate.mqtt.tls}. Unlike paho, the TLS handshake
completes after C{connect()} has fired, so a handshake failure shows up as C{link_lost}
before the CONNACK rather than as a failed connect; the service retries either way.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence, cast

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from ate.config import MqttOptions
from ate.mqtt.link import DEFAULT_MAX_PACKET, WINDOW, LinkListener, MqttLinkError
from ate.mqtt.packets import ACK as _ACK
from ate.mqtt.packets import CONNACK_REASONS as _CONNACK_REASONS
from ate.mqtt.packets import DISCONNECT as _DISCONNECT
from ate.mqtt.packets import PINGREQ as _PINGREQ
from ate.mqtt.packets import connect_packet, encode_remaining_length
from ate.mqtt.packets import pack_H as _pack_H
from ate.mqtt.packets import utf8 as _utf8
from ate.mqtt.tls import tls_connection_creator

__all__ = ["TwistedLink", "create", "encode_remaining_length"]

CONNECT_TIMEOUT = 10.0  # seconds for TCP connect (DNS included)


class _Out:
    """An outgoing QoS 1/2 message until its PUBACK / PUBCOMP."""

    __slots__ = ("mid", "qos", "packet", "sent", "dup", "released")

    def __init__(self, mid: int, qos: int, packet: bytes) -> None:
        self.mid = mid
        self.qos = qos
        self.packet = packet
        self.sent = False  # written on the current connection (counts in the window)
        self.dup = False  # written on an earlier connection: resend with DUP
        self.released = False  # QoS 2: PUBREC received, PUBREL written


class _Connection(Protocol):
    """One TCP/TLS connection; forwards to its link until detached."""

    def __init__(self, link: "TwistedLink") -> None:
        self.link: TwistedLink | None = link

    def connectionMade(self) -> None:
        if self.link is not None:
            self.link._connection_made(self)

    def dataReceived(self, data: bytes) -> None:
        link = self.link
        if link is not None:
            try:
                link._data_received(self, data)
            except Exception:  # a bug in the parser: never into the reactor
                link.log.failure("MQTT link: reading failed; dropping the connection")
                link._protocol_error(self, "internal error while reading")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        link, self.link = self.link, None
        if link is not None:
            link._connection_lost(self, reason)


class TwistedLink:
    """One MQTT 3.1.1 client session on Twisted; see the module docstring.

    @param reactor: provides C{callLater}/C{seconds} (and TCP for the default
        endpoint).
    @param endpoint: an C{IStreamClientEndpoint} to use instead of the one
        built from C{options} (tests).
    """

    log = Logger(namespace="ate.mqtt.twistedlink")

    def __init__(self, reactor: Any, options: MqttOptions, client_id: str,
                 will: tuple[str, bytes, int] | None, listener: LinkListener,
                 *, endpoint: IStreamClientEndpoint | None = None,
                 window: int = WINDOW) -> None:
        self._reactor = reactor
        self._options = options
        self.listener = listener
        self._endpoint = endpoint
        self._window = window
        self._keepalive = int(options.keepalive)
        self._maxPacket = int(getattr(options, "max_packet_size", DEFAULT_MAX_PACKET))
        #: PUBLISH packets refused for being larger than max_packet_size.
        self.refused_packets = 0
        username = options.username
        self._connectPacket = connect_packet(
            client_id, self._keepalive, will, username,
            options.password if username is not None else None)
        # session state (survives reconnects)
        self._lastMid = 0
        self._out: dict[int, _Out] = {}  # unacked QoS 1/2, in publish order
        self._queue: deque[_Out] = deque()  # not yet written on this connection
        self._inflight = 0
        self._q0: list[int] = []  # QoS 0 mids written, link_published pending
        self._q0Call: Any = None
        # connection state
        self._conn: _Connection | None = None
        self._transport: Any = None
        self._connecting = False
        self._reading = False  # still processing incoming packets
        self._gotConnack = False
        self._open = False  # CONNACK accepted and not closing
        self._lostReason: str | None = None
        self._buf = bytearray()
        self._need = 2
        self._skip = 0  # bytes of a refused packet still to drop
        self._afterSkip: bytes | None = None  # its PUBACK, written once it is dropped
        self._inQos2: dict[int, tuple[str, bytes]] = {}
        self._lastIn = 0.0
        self._lastOut = 0.0
        self._pingSentAt: float | None = None
        self._kaCall: Any = None

    # -- link contract --------------------------------------------------

    def start(self) -> None:
        """Nothing to start: timers run only while a connection is open."""

    def stop(self) -> None:
        """Cancel timers and pending QoS 0 notifications (idempotent)."""
        self._cancel_keepalive()
        self._drop_q0()

    def connect(self) -> Deferred[None]:
        """Open the connection and write CONNECT; fires once CONNECT is written."""
        if self._connecting:
            raise MqttLinkError("connect: a connection attempt is already running")
        old = self._conn
        if old is not None:  # a leftover connection: drop it silently
            self._detach(old)
            old.link = None
            transport = old.transport
            if transport is not None:  # a TCP or TLS transport: both abort
                cast(ITCPTransport, transport).abortConnection()
        self._connecting = True
        endpoint = self._endpoint if self._endpoint is not None else self._make_endpoint()
        d = connectProtocol(endpoint, _Connection(self))

        def done(result: object) -> object:
            self._connecting = False
            if isinstance(result, Failure):
                return result
            return None

        d.addBoth(done)
        return d

    def publish(self, topic: str, payload: bytes, qos: int) -> int:
        """Write (QoS 0) or queue (QoS 1/2) a PUBLISH; returns its mid.

        Raises ValueError for a bad topic/payload/qos and MqttLinkError for
        QoS 0 while not connected.
        """
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"publish: topic must be a non-empty string, got {topic!r}")
        if "+" in topic or "#" in topic:
            raise ValueError(f"publish to {topic!r}: wildcards are not allowed in a topic name")
        if qos not in (0, 1, 2):
            raise ValueError(f"publish to {topic!r}: qos must be 0, 1 or 2, got {qos!r}")
        rawTopic = topic.encode("utf-8")
        tl = len(rawTopic)
        if tl > 65535:
            raise ValueError(f"publish to {topic!r}: topic longer than 65535 bytes")
        if qos == 0:
            if not self._open:
                raise MqttLinkError(f"publish to {topic!r}: not connected")
            mid = self._next_mid()
            self._write(b"".join((b"\x30", encode_remaining_length(2 + tl + len(payload)),
                                  _pack_H(tl), rawTopic, payload)))
            self._q0.append(mid)
            if self._q0Call is None:
                self._q0Call = self._reactor.callLater(0, self._flush_q0)
            return mid
        mid = self._next_mid()
        m = _Out(mid, qos, b"".join((
            b"\x32" if qos == 1 else b"\x34",
            encode_remaining_length(4 + tl + len(payload)),
            _pack_H(tl), rawTopic, _pack_H(mid), payload)))
        self._out[mid] = m
        if self._open and not self._queue and self._inflight < self._window:
            self._send(m)
        else:
            self._queue.append(m)
        return mid

    def subscribe(self, subscriptions: Sequence[tuple[str, int]]) -> int | None:
        """Write one SUBSCRIBE for all filters; returns its mid (None if empty)."""
        if not subscriptions:
            return None
        if self._transport is None or not self._reading:
            raise MqttLinkError("subscribe: not connected")
        parts = []
        for topic, qos in subscriptions:
            if not topic:
                raise ValueError("subscribe: empty topic filter")
            if qos not in (0, 1, 2):
                raise ValueError(f"subscribe {topic!r}: qos must be 0, 1 or 2, got {qos!r}")
            parts.append(_utf8(f"topic filter {topic!r}", topic))
            parts.append(bytes((qos,)))
        mid = self._next_mid()
        body = _pack_H(mid) + b"".join(parts)
        self._write(b"\x82" + encode_remaining_length(len(body)) + body)
        return mid

    def disconnect(self) -> None:
        """Write DISCONNECT and close (the broker then drops the will)."""
        transport = self._transport
        if transport is None or not self._reading:
            return
        self._write(_DISCONNECT)
        self._stop_reading("disconnected")
        transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (the broker publishes the will)."""
        transport = self._transport
        if transport is None:
            return
        if self._reading:
            self._stop_reading("connection aborted by the client")
        transport.abortConnection()

    # -- connection events ----------------------------------------------

    def _make_endpoint(self) -> IStreamClientEndpoint:
        o = self._options
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, o.host, o.port, timeout=CONNECT_TIMEOUT)
        if o.tls:
            endpoint = wrapClientTLS(tls_connection_creator(o), endpoint)
        return endpoint

    def _connection_made(self, conn: _Connection) -> None:
        transport: Any = conn.transport
        try:
            transport.setTcpNoDelay(True)
        except Exception:  # not a TCP transport (tests, unix sockets)
            pass
        self._conn = conn
        self._transport = transport
        self._reading = True
        self._gotConnack = False
        self._open = False
        self._lostReason = None
        self._buf = bytearray()
        self._need = 2
        self._skip = 0
        self._afterSkip = None
        self._inQos2 = {}
        self._pingSentAt = None
        now = self._reactor.seconds()
        self._lastIn = now
        self._write(self._connectPacket)

    def _connection_lost(self, conn: _Connection, reason: Failure) -> None:
        if conn is not self._conn:
            return
        text = self._lostReason or f"connection lost: {reason.getErrorMessage()}"
        self._detach(conn)
        try:
            self.listener.link_lost(text)
        except Exception:
            self.log.failure("MQTT link listener link_lost failed")

    def _detach(self, conn: _Connection) -> None:
        """Forget the connection; keep unacked QoS 1/2 messages for the next one."""
        self._conn = None
        self._transport = None
        self._reading = False
        self._open = False
        self._buf = bytearray()  # a new one: a parse in progress may hold a view
        self._skip = 0
        self._afterSkip = None
        self._inQos2 = {}
        self._cancel_keepalive()
        self._drop_q0()
        for m in self._out.values():
            if m.sent:
                m.dup = True
            m.sent = False
            m.released = False
        self._queue = deque(self._out.values())
        self._inflight = 0

    def _stop_reading(self, reason: str) -> None:
        self._reading = False
        self._open = False
        if self._lostReason is None:
            self._lostReason = reason
        self._cancel_keepalive()

    def _protocol_error(self, conn: _Connection, reason: str) -> None:
        if conn is not self._conn:
            return
        self.log.warn("MQTT link: {reason}; dropping the connection", reason=reason)
        self._stop_reading(f"protocol error: {reason}")
        self._buf = bytearray()
        transport = self._transport
        if transport is not None:
            transport.abortConnection()

    # -- writing --------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._transport.write(data)
        self._lastOut = self._reactor.seconds()

    def _send(self, m: _Out) -> None:
        self._inflight += 1
        m.sent = True
        if m.dup:
            packet = m.packet
            self._write(bytes((packet[0] | 0x08,)) + packet[1:])
        else:
            self._write(m.packet)

    def _pump(self) -> None:
        queue = self._queue
        while queue and self._open and self._inflight < self._window:
            self._send(queue.popleft())

    def _next_mid(self) -> int:
        mid = self._lastMid
        out = self._out
        while True:
            mid = mid + 1 if mid < 65535 else 1
            if mid not in out:
                self._lastMid = mid
                return mid
            if mid == self._lastMid:
                raise MqttLinkError("no free message id: 65535 messages unacked")

    def _flush_q0(self) -> None:
        self._q0Call = None
        mids, self._q0 = self._q0, []
        listener = self.listener
        for mid in mids:
            try:
                listener.link_published(mid)
            except Exception:
                self.log.failure("MQTT link listener link_published failed")

    def _drop_q0(self) -> None:
        call, self._q0Call = self._q0Call, None
        if call is not None and call.active():
            call.cancel()
        self._q0 = []

    # -- keepalive ------------------------------------------------------

    def _cancel_keepalive(self) -> None:
        call, self._kaCall = self._kaCall, None
        if call is not None and call.active():
            call.cancel()
        self._pingSentAt = None

    def _keepalive_due(self) -> None:
        self._kaCall = None
        if not self._open:
            return
        ka = self._keepalive
        now = self._reactor.seconds()
        if self._pingSentAt is not None:
            due = self._pingSentAt + ka
            if now >= due:
                self.log.warn("MQTT link: no PINGRESP within {keepalive} s", keepalive=ka)
                self._stop_reading(f"keepalive: no PINGRESP within {ka} s")
                self._transport.abortConnection()
                return
        else:
            due = min(self._lastIn, self._lastOut) + ka
            if now >= due:
                self._write(_PINGREQ)
                self._pingSentAt = now
                due = now + ka
        self._kaCall = self._reactor.callLater(due - now, self._keepalive_due)

    # -- reading --------------------------------------------------------

    def _data_received(self, conn: _Connection, data: bytes) -> None:
        if conn is not self._conn or not self._reading:
            return
        self._lastIn = self._reactor.seconds()
        if self._skip:  # inside a refused packet: drop its bytes, keep nothing
            n = len(data)
            if n < self._skip:
                self._skip -= n
                return
            data = data[self._skip:]
            self._skip = 0
            self._skipped()
            if not data or not self._reading:
                return
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return
            pos = self._parse(conn, buf)
            if self._buf is buf:
                del buf[:pos]
        else:
            pos = self._parse(conn, data)
            if pos < len(data) and self._buf is buf and self._reading:
                buf += memoryview(data)[pos:]

    def _parse(self, conn: _Connection, data: bytes | bytearray) -> int:
        """Handle every complete packet in C{data}; returns the bytes consumed."""
        end = len(data)
        pos = 0
        listener = self.listener
        with memoryview(data) as mv:
            while self._reading:
                if end - pos < 2:
                    self._need = 2
                    break
                first = data[pos]
                b = data[pos + 1]
                if b < 128:
                    start = pos + 2
                    stop = start + b
                else:
                    length = b & 0x7F
                    shift = 7
                    i = pos + 2
                    while True:
                        if i >= end:
                            length = -1
                            break
                        b = data[i]
                        i += 1
                        length |= (b & 0x7F) << shift
                        if b < 128:
                            break
                        shift += 7
                        if shift > 21:
                            self._protocol_error(conn, "remaining length longer than 4 bytes")
                            return pos
                    if length < 0:
                        self._need = 5
                        break
                    start = i
                    stop = start + length
                if stop - start > self._maxPacket:
                    # too large: refused from its header on, its payload never buffered
                    if first & 0xF0 != 0x30 or not self._gotConnack or first & 6 == 6:
                        self._protocol_error(
                            conn, f"packet type {first >> 4} with remaining length "
                            f"{stop - start} (above mqtt_max_packet_size {self._maxPacket})")
                        return pos
                    if end - start < 2:
                        self._need = start + 2 - pos
                        break
                    te = start + 2 + ((data[start] << 8) | data[start + 1])
                    head = te + 2 if first & 6 else te
                    if head > stop:
                        self._protocol_error(conn, "PUBLISH shorter than its topic and packet id")
                        return pos
                    if head > end:
                        self._need = head - pos
                        break
                    self._refuse(first, mv, start, te, stop)
                    if stop > end:
                        self._skip = stop - end
                        self._need = 2
                        return end
                    self._skipped()
                    pos = stop
                    continue
                if stop > end:
                    self._need = stop - pos
                    break
                if first & 0xF0 == 0x30 and self._gotConnack:  # PUBLISH
                    qos = (first >> 1) & 3
                    te = start + 2
                    if stop >= te:
                        te += (data[start] << 8) | data[start + 1]
                    p = te + 2 if qos else te
                    if p > stop:
                        self._protocol_error(conn, "PUBLISH shorter than its topic and packet id")
                        return pos
                    try:
                        topic = str(mv[start + 2:te], "utf-8")
                    except UnicodeDecodeError:
                        self._protocol_error(conn, "PUBLISH topic is not valid UTF-8")
                        return pos
                    if qos:
                        mid = (data[te] << 8) | data[te + 1]
                    payload = bytes(mv[p:stop])
                    if qos == 0:
                        try:
                            listener.link_message(topic, payload, 0)
                        except Exception:
                            self.log.failure("MQTT link listener link_message failed for {topic}",
                                             topic=topic)
                    elif qos == 1:
                        try:
                            listener.link_message(topic, payload, 1)
                        except Exception:
                            self.log.failure("MQTT link listener link_message failed for {topic}",
                                             topic=topic)
                        if self._transport is not None:
                            self._write(_ACK(0x40, 2, mid))
                    elif qos == 2:
                        self._inQos2[mid] = (topic, payload)
                        self._write(_ACK(0x50, 2, mid))
                    else:
                        self._protocol_error(conn, "PUBLISH with QoS 3")
                        return pos
                else:
                    self._control(conn, first, data, start, stop)
                pos = stop
        return pos

    def _refuse(self, first: int, mv: memoryview, start: int, te: int, stop: int) -> None:
        """Refuse the PUBLISH at C{start}: log, count, prepare its acknowledgement."""
        qos = (first >> 1) & 3
        try:
            topic = str(mv[start + 2:te], "utf-8")
        except UnicodeDecodeError:
            topic = repr(bytes(mv[start + 2:min(te, start + 202)]))
        self.refused_packets += 1
        self.log.warn(
            "MQTT link: PUBLISH on {topic} refused: {size} bytes, above "
            "mqtt_max_packet_size {limit}; skipped (not delivered, acknowledged)",
            topic=topic[:200], size=stop - start, limit=self._maxPacket)
        self._afterSkip = None
        if qos:
            mid = (mv[te] << 8) | mv[te + 1]
            if qos == 1:
                self._afterSkip = _ACK(0x40, 2, mid)
            else:  # QoS 2: PUBREC after its last byte; its PUBREL then gets a PUBCOMP
                self._inQos2.pop(mid, None)
                self._afterSkip = _ACK(0x50, 2, mid)

    def _skipped(self) -> None:
        """The refused packet's last byte is gone: acknowledge it."""
        ack, self._afterSkip = self._afterSkip, None
        if ack is not None and self._transport is not None:
            self._write(ack)

    def _control(self, conn: _Connection, first: int, data: Any, start: int, stop: int) -> None:
        """Every packet but an accepted session's PUBLISH."""
        length = stop - start
        if not self._gotConnack:
            if first != 0x20:
                self._protocol_error(conn, f"expected CONNACK, got packet type {first >> 4}")
                return
            if length != 2:
                self._protocol_error(conn, f"CONNACK with remaining length {length}")
                return
            self._connack(conn, data[start + 1])
            return
        if first == 0xD0 and length == 0:  # PINGRESP
            self._pingSentAt = None
            return
        if first in (0x40, 0x50, 0x62, 0x70) or first == 0xB0:
            if length != 2:
                self._protocol_error(
                    conn, f"packet type {first >> 4} with remaining length {length}")
                return
            mid = (data[start] << 8) | data[start + 1]
            if first == 0x40:  # PUBACK
                self._acked(mid, 1)
            elif first == 0x50:  # PUBREC
                m = self._out.get(mid)
                if m is not None and m.qos == 2 and m.sent:
                    m.released = True
                self._write(_ACK(0x62, 2, mid))
            elif first == 0x62:  # PUBREL
                held = self._inQos2.pop(mid, None)
                if held is not None:
                    try:
                        self.listener.link_message(held[0], held[1], 2)
                    except Exception:
                        self.log.failure("MQTT link listener link_message failed for {topic}",
                                         topic=held[0])
                if self._transport is not None:
                    self._write(_ACK(0x70, 2, mid))
            elif first == 0x70:  # PUBCOMP
                self._acked(mid, 2)
            return  # UNSUBACK: we never unsubscribe
        if first == 0x90 and length >= 3:  # SUBACK
            mid = (data[start] << 8) | data[start + 1]
            failures = ["Unspecified error" for i in range(start + 2, stop)
                        if data[i] not in (0, 1, 2)]
            try:
                self.listener.link_subscribed(mid, failures)
            except Exception:
                self.log.failure("MQTT link listener link_subscribed failed")
            return
        self._protocol_error(
            conn, f"unexpected packet type {first >> 4} (flags {first & 15:#x}, length {length})")

    def _connack(self, conn: _Connection, rc: int) -> None:
        self._gotConnack = True
        listener = self.listener
        if rc != 0:
            reason = _CONNACK_REASONS.get(rc, f"Unknown CONNACK code {rc}")
            self._stop_reading(f"broker refused the connection: {reason}")
            try:
                listener.link_connected(False, reason)
            except Exception:
                self.log.failure("MQTT link listener link_connected failed")
            if self._transport is not None:
                self._transport.loseConnection()
            return
        self._open = True
        self._pingSentAt = None
        if self._keepalive > 0:
            self._kaCall = self._reactor.callLater(self._keepalive, self._keepalive_due)
        try:
            listener.link_connected(True, "Success")
        except Exception:
            self.log.failure("MQTT link listener link_connected failed")
        self._pump()

    def _acked(self, mid: int, qos: int) -> None:
        m = self._out.get(mid)
        if m is None or m.qos != qos or not m.sent:
            return  # stale (an earlier connection's) or unknown: ignore
        del self._out[mid]
        self._inflight -= 1
        self._pump()
        try:
            self.listener.link_published(mid)
        except Exception:
            self.log.failure("MQTT link listener link_published failed")


def create(reactor: Any, options: MqttOptions, client_id: str,
           will: tuple[str, bytes, int] | None, listener: LinkListener) -> TwistedLink:
    """The link factory (L{ate.mqtt.link.LinkFactory}) of config C{mqtt_client = "twisted"}."""
    return TwistedLink(reactor, options, client_id, will, listener)

