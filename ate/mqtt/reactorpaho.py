"""paho-mqtt 2.x driven by the Twisted reactor: the link of config C{mqtt_client = "paho"}.

The default link is ours, L{ate.mqtt.twistedlink} (C{mqtt_client = "twisted"}); this one
keeps paho-mqtt, the ecosystem's client, supported behind the same link contract
(L{ate.mqtt.link}), and only a process that chooses it imports paho.

L{ReactorPaho} owns one C{paho.mqtt.client.Client} and runs its network loop
on the reactor:

- paho's socket is registered with the reactor as an C{IReadDescriptor} /
  C{IWriteDescriptor} through paho's C{on_socket_open}, C{on_socket_close},
  C{on_socket_register_write} and C{on_socket_unregister_write} hooks; the
  reactor calls C{loop_read()} / C{loop_write()} when the socket is ready.
- C{loop_misc()} (keepalive pings, retries) runs from a C{LoopingCall} every
  second, clocked by the injected reactor.
- The blocking C{reconnect()} (DNS, TCP, TLS) runs in the reactor's thread
  pool. Socket hooks paho calls from that thread are marshalled to the
  reactor thread with C{callFromThread}; the socket is handed to the
  reactor only once the thread has returned, so paho is never used by two
  threads at once and the CONNACK is never read before C{connect()}'s
  Deferred has fired.
- Every paho callback is guarded: it always runs on the reactor thread (it
  is marshalled if paho ever calls it from elsewhere), and an exception is
  logged with C{log.failure} instead of escaping into paho or the reactor,
  where it would silently stop delivery.

The application side sees a L{LinkListener}: plain method calls on the
reactor thread with decoded arguments (topic, payload, reason text, mid).

Packet size cap (C{options.max_packet_size}, config C{mqtt_max_packet_size}):
paho has no limit of its own and buffers a whole packet before handling it.
The link hooks paho's socket read: once paho has read a packet's remaining
length and it is above the cap, the link reads that packet's bytes itself and
drops them (keeping only topic and packet id), logs and counts the refusal
(C{refused_packets}) and hands paho a stand-in PUBLISH with the same topic,
QoS and packet id and a marker payload. paho acknowledges it as usual (PUBACK,
or PUBREC then PUBCOMP), so the session goes on, and the link never delivers
the marker. Any other packet above the cap drops the connection.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable, Sequence

import paho.mqtt.client as paho
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ate.config import MqttOptions
from ate.mqtt.link import DEFAULT_MAX_PACKET, WINDOW, LinkListener, MqttLinkError

__all__ = ["ReactorPaho", "make_paho_client"]

#: The payload of the stand-in for a refused PUBLISH; never delivered (not JSON, so no
#: real message of the protocol can equal it).
_REFUSED = b"\x00ate-master: refused, larger than mqtt_max_packet_size\x00"
_READ_CHUNK = 64 * 1024
_READS_PER_TURN = 64  # then yield to the reactor (the socket stays readable)
_HEAD_MAX = 2 + 65535 + 2  # topic length, the longest topic, packet id


def make_paho_client(options: Any, client_id: str,
                     will: tuple[str, bytes, int] | None,
                     *, max_inflight: int = WINDOW) -> paho.Client:
    """Build a paho client for C{options} (an C{ate.config.MqttOptions}).

    MQTT 3.1.1, clean session, our own reconnect (paho's is off), an
    unlimited outgoing queue, credentials, TLS and the last will (never
    retained).

    The inflight window is L{ate.mqtt.link.WINDOW} (20; it says why), as in our link.
    Messages beyond the window wait in paho's queue and go out as acks come back.
    """
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=paho.MQTTv311,
        reconnect_on_failure=False,
    )
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)
    if options.username is not None:
        client.username_pw_set(options.username, options.password)
    if options.tls:
        client.tls_set(
            ca_certs=options.tls_ca,
            certfile=options.tls_cert,
            keyfile=options.tls_key,
        )
        if options.tls_insecure:
            client.tls_insecure_set(True)
    if will is not None:
        topic, payload, qos = will
        client.will_set(topic, payload, qos, retain=False)
    client.connect_async(options.host, options.port, options.keepalive)
    return client


@implementer(IReadDescriptor, IWriteDescriptor)
class _PahoSocket:
    """The reactor's view of paho's socket; forwards readiness to paho."""

    def __init__(self, link: "ReactorPaho", sock: Any) -> None:
        self.sock = sock
        self._link = link
        self._fd = sock.fileno()

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        self._link._do_read()
        return None  # never a reason: paho handles its own connection loss

    def doWrite(self) -> None:
        self._link._do_write()
        return None

    def connectionLost(self, reason: Failure) -> None:
        self._link._descriptor_lost(self, reason)

    def logPrefix(self) -> str:
        return "paho-mqtt"


class ReactorPaho:
    """One paho client on the reactor; see the module docstring.

    Construct it on the reactor thread. C{client} should come from
    L{make_paho_client} (C{connect_async} already called), C{listener}
    receives the events.
    """

    log = Logger()

    def __init__(self, reactor: Any, client: paho.Client, listener: LinkListener,
                 *, misc_interval: float = 1.0) -> None:
        self._reactor = reactor
        self.client = client
        self.listener = listener
        self._reactorThread = threading.get_ident()
        self._descriptor: _PahoSocket | None = None
        self._registered = False  # descriptor handed to the reactor?
        self._wantWrite = False
        self._blocking = False
        self._misc = LoopingCall(self._loop_misc)
        self._misc.clock = reactor
        self._miscInterval = misc_interval
        # Write coalescing: while the reactor drives loop_write(), paho's packets are
        # gathered and sent with one send() call (one syscall per reactor turn instead of
        # one per MQTT packet; bench/cycle.py).  Plain TCP sockets only.
        self._wbuf = bytearray()
        self._gathering = False
        self._pahoSend = client._sock_send
        client._sock_send = self._sock_send  # type: ignore[method-assign]
        # The packet size cap: paho reads each packet body through _sock_recv.
        self._maxPacket = DEFAULT_MAX_PACKET
        #: PUBLISH packets refused for being larger than max_packet_size.
        self.refused_packets = 0
        self._refusing: dict | None = None  # the oversized packet being dropped
        self._pahoRecv = client._sock_recv
        client._sock_recv = self._sock_recv  # type: ignore[method-assign]
        # paho 2.x marks every unacked message for sending at the next CONNACK without
        # counting them against the in-flight window, so after a reconnect with more than
        # WINDOW of them it floods the broker (mosquitto drops the connection again, or
        # acks and drops the messages): keep the window, the rest queued.
        self._pahoResetOut = client._messages_reconnect_reset_out
        client._messages_reconnect_reset_out = self._reset_out  # type: ignore[method-assign]
        # paho leaves the TLS socket of a failed handshake unclosed (a ResourceWarning and
        # an fd until the garbage collector finds it): keep the last one to close it.
        self._tlsSocket: Any = None
        context = client._ssl_context
        if context is not None:
            wrap = context.wrap_socket

            def wrapSocket(*args: Any, **kw: Any) -> Any:
                self._tlsSocket = wrap(*args, **kw)
                return self._tlsSocket

            context.wrap_socket = wrapSocket  # type: ignore[method-assign]

        client.suppress_exceptions = True
        client.on_socket_open = self._guard("on_socket_open", self._socket_opened)
        client.on_socket_close = self._guard("on_socket_close", self._socket_closed)
        client.on_socket_register_write = self._guard(
            "on_socket_register_write", self._register_write)
        client.on_socket_unregister_write = self._guard(
            "on_socket_unregister_write", self._unregister_write)
        client.on_connect = self._guard("on_connect", self._on_connect)
        client.on_disconnect = self._guard("on_disconnect", self._on_disconnect)
        client.on_message = self._guard("on_message", self._on_message)
        client.on_publish = self._guard("on_publish", self._on_publish)
        client.on_subscribe = self._guard("on_subscribe", self._on_subscribe)

    # -- public API -----------------------------------------------------

    @classmethod
    def create(cls, reactor: Any, options: MqttOptions, client_id: str,
               will: tuple[str, bytes, int] | None,
               listener: LinkListener) -> "ReactorPaho":
        """Build a paho client for C{options} and wrap it."""
        link = cls(reactor, make_paho_client(options, client_id, will), listener)
        link._maxPacket = int(getattr(options, "max_packet_size", DEFAULT_MAX_PACKET))
        return link

    def start(self) -> None:
        """Start the C{loop_misc} timer (idempotent)."""
        if not self._misc.running:
            self._misc.start(self._miscInterval, now=False)

    def stop(self) -> None:
        """Stop the C{loop_misc} timer (idempotent)."""
        if self._misc.running:
            self._misc.stop()

    def connect(self) -> Deferred[None]:
        """Open the TCP (TLS) connection and send CONNECT, in a worker thread.

        Fires when the socket is registered with the reactor and CONNECT is
        queued; the broker's answer arrives later via C{link_connected}.
        """
        if self._blocking:
            raise MqttLinkError("connect: a connection attempt is already running")
        self._blocking = True

        def attempt() -> None:
            try:
                rc = self.client.reconnect()
            except BaseException:
                tls, self._tlsSocket = self._tlsSocket, None
                if tls is not None and tls is not self.client.socket():
                    tls.close()
                raise
            self._tlsSocket = None
            if rc != paho.MQTT_ERR_SUCCESS:
                raise MqttLinkError(f"connect: {paho.error_string(rc)}")

        def done(result: object) -> object:
            # Only now, with the worker thread finished, does the reactor
            # see the socket: no read (so no CONNACK) can be processed
            # before this Deferred's callers learn that connect returned.
            self._blocking = False
            self._register_descriptor()
            return result

        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), attempt)
        d.addBoth(done)
        return d

    def publish(self, topic: str, payload: bytes, qos: int) -> int:
        """Queue a PUBLISH; returns its mid. Raises MqttLinkError or ValueError."""
        info = self.client.publish(topic, payload, qos, retain=False)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise MqttLinkError(f"publish to {topic!r}: {paho.error_string(info.rc)}")
        return info.mid

    def subscribe(self, subscriptions: Sequence[tuple[str, int]]) -> int | None:
        """Queue one SUBSCRIBE for all filters; returns its mid (None if empty)."""
        if not subscriptions:
            return None
        rc, mid = self.client.subscribe(list(subscriptions))
        if rc != paho.MQTT_ERR_SUCCESS:
            raise MqttLinkError(f"subscribe: {paho.error_string(rc)}")
        return mid

    def disconnect(self) -> None:
        """Queue a clean DISCONNECT (the broker then drops the will)."""
        self.client.disconnect()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (used when a stop times out).

        The socket is shut down; paho notices the EOF on its next read and
        reports the loss as usual.
        """
        sock: Any = self.client.socket()
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- guarding -------------------------------------------------------

    def _in_reactor_thread(self) -> bool:
        return threading.get_ident() == self._reactorThread

    def _guard(self, name: str, fn: Callable[..., None]) -> Callable[..., None]:
        """Wrap a paho callback: reactor thread only, exceptions logged."""

        def guarded(*args: Any) -> None:
            if not self._in_reactor_thread():
                self._reactor.callFromThread(guarded, *args)
                return
            try:
                fn(*args)
            except Exception:
                self.log.failure("paho callback {callback} failed", callback=name)

        return guarded

    # -- socket registration --------------------------------------------

    def _socket_opened(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # unix sockets, exotic transports
        self._drop_descriptor()
        self._descriptor = _PahoSocket(self, sock)
        self._wantWrite = False
        if not self._blocking:
            self._register_descriptor()

    def _socket_closed(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._descriptor is not None and self._descriptor.sock is sock:
            self._drop_descriptor()

    def _register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._descriptor is not None and self._descriptor.sock is sock:
            self._wantWrite = True
            if self._registered:
                self._reactor.addWriter(self._descriptor)

    def _unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._descriptor is not None and self._descriptor.sock is sock:
            self._wantWrite = False
            if self._registered and not self._wbuf:
                self._reactor.removeWriter(self._descriptor)

    def _register_descriptor(self) -> None:
        if self._descriptor is None or self._registered:
            return
        self._registered = True
        self._reactor.addReader(self._descriptor)
        if self._wantWrite:
            self._reactor.addWriter(self._descriptor)

    def _drop_descriptor(self) -> None:
        descriptor, self._descriptor = self._descriptor, None
        registered, self._registered = self._registered, False
        self._wantWrite = False
        self._wbuf.clear()
        if descriptor is not None and registered:
            self._reactor.removeReader(descriptor)
            self._reactor.removeWriter(descriptor)

    def _descriptor_lost(self, descriptor: _PahoSocket, reason: Failure) -> None:
        # The reactor gave up on the fd (e.g. it became invalid); paho will
        # notice on its side through loop_misc or the next read.
        self.log.debug("paho socket removed by the reactor: {reason}",
                       reason=reason.getErrorMessage())
        if descriptor is self._descriptor:
            self._drop_descriptor()

    # -- loop driving ---------------------------------------------------

    def _do_read(self) -> None:
        try:
            self.client.loop_read()
        except Exception:
            self.log.failure("paho loop_read failed")

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._gathering:
            self._wbuf += buf
            if buf[:1] == b"\xe0":
                # DISCONNECT: paho closes the socket right after it, so send now
                self._flush(self.client.socket())
            return len(buf)
        return self._pahoSend(buf)

    def _sock_recv(self, bufsize: int) -> bytes:
        packet = self.client._in_packet
        if packet["have_remaining"] and packet["remaining_length"] > self._maxPacket:
            return self._drop_oversized(packet)
        self._refusing = None
        return self._pahoRecv(bufsize)

    def _drop_oversized(self, packet: Any) -> bytes:
        """Read the body of the oversized packet paho is at and drop it; once all of it
        is read, return the stand-in PUBLISH body (see the module docstring).  Raises
        BlockingIOError (paho: try again later) while bytes are still to come."""
        command = packet["command"]
        length = packet["remaining_length"]
        state = self._refusing
        if state is None or state["packet"] is not packet:
            if command & 0xF0 != 0x30 or command & 6 == 6:
                self.log.warn("MQTT packet type {type} with remaining length {size} is above "
                              "mqtt_max_packet_size {limit}; dropping the connection",
                              type=command >> 4, size=length, limit=self._maxPacket)
                raise OSError(f"packet above mqtt_max_packet_size {self._maxPacket}")
            state = self._refusing = {"packet": packet, "left": length, "head": bytearray(),
                                      "need": 0, "logged": False}
        qos = (command >> 1) & 3
        head: bytearray = state["head"]
        for _ in range(_READS_PER_TURN):
            if not state["left"]:
                break
            data = self._pahoRecv(min(state["left"], _READ_CHUNK))
            if not data:
                return data  # EOF: paho reports the connection lost
            state["left"] -= len(data)
            if len(head) < _HEAD_MAX:  # topic length, topic, packet id: kept, rest dropped
                head += data[:_HEAD_MAX - len(head)]
            if not state["logged"] and len(head) >= 2:
                need = 2 + ((head[0] << 8) | head[1]) + (2 if qos else 0)
                if need > length:
                    raise OSError("refused PUBLISH shorter than its topic and packet id")
                if len(head) >= need:
                    state["need"] = need
                    state["logged"] = True
                    self.refused_packets += 1
                    topic = bytes(head[2:need - (2 if qos else 0)])
                    self.log.warn(
                        "MQTT link: PUBLISH on {topic} refused: {size} bytes, above "
                        "mqtt_max_packet_size {limit}; skipped (not delivered, acknowledged)",
                        topic=topic.decode("utf-8", "replace")[:200], size=length,
                        limit=self._maxPacket)
        if state["left"]:
            raise BlockingIOError()  # more to come, or yield to the reactor a while
        self._refusing = None
        stub = bytes(head[:state["need"]]) + _REFUSED
        packet["to_process"] = len(stub)
        return stub

    def _reset_out(self) -> None:
        """paho's reconnect reset of outgoing messages, within the in-flight window.

        QoS 0 messages still unwritten are dropped (the service has already failed them
        with MqttNotConnected); of the QoS 1/2 ones, the first C{max_inflight} go out
        after the CONNACK and the others wait, queued, for acks (paho's C{_update_inflight}).
        """
        self._pahoResetOut()
        client = self.client
        window = client._max_inflight_messages
        out = client._out_messages
        inflight = 0
        for mid, m in list(out.items()):
            if m.qos == 0:
                del out[mid]
            elif m.state == paho.mqtt_ms_publish:
                if window and inflight >= window:
                    m.state = paho.mqtt_ms_queued
                else:
                    inflight += 1

    def _do_write(self) -> None:
        sock = self.client.socket()
        self._gathering = type(sock) is socket.socket and not self._blocking
        try:
            self.client.loop_write()
        except Exception:
            self.log.failure("paho loop_write failed")
        finally:
            self._gathering = False
        if self._wbuf:
            self._flush(sock)

    def _flush(self, sock: Any) -> None:
        """Send what paho wrote during this turn; keep the writer while any is left."""
        buf = self._wbuf
        while buf:
            try:
                n = sock.send(buf)
            except BlockingIOError:
                break
            except OSError as e:
                # the connection is gone: paho notices on its next read or ping
                self.log.debug("send failed: {e}", e=e)
                buf.clear()
                break
            del buf[:n]
        if self._descriptor is not None and self._registered:
            if buf:
                self._reactor.addWriter(self._descriptor)
            elif not self._wantWrite:
                self._reactor.removeWriter(self._descriptor)

    def _loop_misc(self) -> None:
        if self._blocking or self.client.socket() is None:
            return  # a worker thread owns the client, or nothing to ping
        try:
            self.client.loop_misc()
        except Exception:
            self.log.failure("paho loop_misc failed")

    # -- paho callbacks -> listener --------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any,
                   reason: Any, properties: Any) -> None:
        self.listener.link_connected(not reason.is_failure, str(reason))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any,
                      reason: Any, properties: Any) -> None:
        self.listener.link_lost(str(reason))

    def _on_message(self, client: paho.Client, userdata: Any, message: Any) -> None:
        if message.payload == _REFUSED:
            return  # the stand-in of a refused oversized PUBLISH (logged when read)
        self.listener.link_message(message.topic, message.payload, message.qos)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int,
                   reason: Any, properties: Any) -> None:
        self.listener.link_published(mid)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int,
                     reasons: Sequence[Any], properties: Any) -> None:
        self.listener.link_subscribed(
            mid, [str(r) for r in reasons if r.is_failure])
