"""MqttService: one MQTT connection with reconnect, last will and publish Deferreds.

The connection lifecycle is an Automat C{TypeMachineBuilder} machine
(L{ConnectionMachine}), modelled on Twisted's C{ClientService}::

    idle --start--> connecting --socket_ready--> handshaking --broker_accepted--> connected
                        |                           |                              |
                   socket_failed       broker_refused/connectionLost/          connectionLost
                        v              handshake_timed_out v                          v
                     waiting <-----------------------------------------------------+
                        |  (delay 1 s doubling to 30 s; reset on broker_accepted)
                        +--retry_due--> connecting

    stop: waiting/idle -> stopped; connecting -> cancelling (the worker thread
    finishes first); handshaking/connected -> disconnecting (clean DISCONNECT,
    so the broker drops the will) -> stopped on connectionLost or after
    C{stop_timeout} (the socket is then shut down).

Every input returns None, so inputs fired from inside a behaviour (for
example an C{on_connected} callback that calls C{stopService}) are queued by
Automat instead of raising. Every state lists the inputs that can reach it.

The network side is a "link" (L{ate.mqtt.link.Link}): C{connect() ->
Deferred}, C{publish(topic, payload, qos) -> mid}, C{subscribe(subs)},
C{disconnect()}, C{abort()}, C{start()}, C{stop()}; it reports back through
the L{ate.mqtt.link.LinkListener} methods that L{MqttService} implements.
The link is chosen by C{options.client} (config C{mqtt_client}): by default
C{"twisted"}, our MQTT 3.1.1 protocol on Twisted (L{ate.mqtt.twistedlink}),
or C{"paho"}, paho-mqtt on the reactor (L{ate.mqtt.reactorpaho}); only the
chosen one is imported. Unit tests inject a fake link with C{link_factory}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, cast

from automat import TypeMachineBuilder, pep614
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ate.config import MqttOptions
from ate.mqtt.link import DEFAULT_LINK, Link, LinkFactory, MqttLinkError, link_factory

__all__ = ["ConnectionMachine", "MqttNotConnected", "MqttService"]

_OPTION_FIELDS = ("host", "port", "username", "password", "tls", "tls_ca",
                  "tls_cert", "tls_key", "tls_insecure", "keepalive")


class MqttNotConnected(Exception):
    """The message could not be sent: the service is not connected."""


# -- the connection machine ---------------------------------------------


class Connection(Protocol):
    """Inputs of the connection machine, named after what happened."""

    def start(self) -> None:
        "The service was started."

    def stop(self) -> None:
        "The service is stopping; the core's events.stopped() signals the end."

    def socket_ready(self) -> None:
        "The worker thread connected the socket and queued CONNECT."

    def socket_failed(self, reason: str) -> None:
        "The worker thread could not connect (DNS, refused, TLS...)."

    def broker_accepted(self) -> None:
        "CONNACK with success."

    def broker_refused(self, reason: str) -> None:
        "CONNACK with a failure code (bad credentials, identifier rejected...)."

    def connectionLost(self, reason: str) -> None:
        "The socket closed (broker gone, our DISCONNECT written, keepalive)."

    def retry_due(self) -> None:
        "The backoff delay has passed."

    def handshake_timed_out(self) -> None:
        "No CONNACK within the handshake timeout."

    def stop_timed_out(self) -> None:
        "The socket did not close within the stop timeout."


class ConnectionEvents(Protocol):
    """What the machine tells its owner."""

    def up(self) -> None:
        "Connected and subscriptions requested."

    def down(self, reason: str) -> None:
        "A connection that was up is gone (or being closed)."

    def stopped(self) -> None:
        "The machine reached (or is in) the stopped state."


@dataclass
class ConnectionCore:
    """Collaborators and settings of the connection machine."""

    clock: IReactorTime
    link: Link
    events: ConnectionEvents
    subscriptions: Sequence[tuple[str, int]] = ()
    backoff: tuple[float, float] = (1.0, 30.0)
    handshake_timeout: float = 10.0
    stop_timeout: float = 2.0
    log: Logger = field(default_factory=lambda: Logger(namespace="ate.mqtt.connection"))
    failures: int = 0  # consecutive failed attempts, drives the backoff

    def next_delay(self) -> float:
        low, high = self.backoff
        delay = min(high, low * (2 ** min(self.failures, 32)))
        self.failures += 1
        return delay


def _begin_connect(conn: Connection, core: ConnectionCore) -> None:
    """Data factory of C{connecting}: run the blocking connect in a thread."""
    try:
        d = core.link.connect()
    except Exception as e:  # a synchronous refusal is just a failed attempt
        conn.socket_failed(f"{type(e).__name__}: {e}")
        return

    def failed(f: Failure) -> None:
        conn.socket_failed(f"{f.type.__name__}: {f.getErrorMessage()}")

    d.addCallbacks(lambda _: conn.socket_ready(), failed)
    d.addErrback(lambda f: core.log.failure("connection machine input failed", f))


def _arm_handshake(conn: Connection, core: ConnectionCore) -> IDelayedCall:
    return core.clock.callLater(core.handshake_timeout, conn.handshake_timed_out)


def _schedule_retry(conn: Connection, core: ConnectionCore, reason: str = "") -> IDelayedCall:
    delay = core.next_delay()
    core.log.info("MQTT reconnect attempt {attempt} in {delay} s",
                  attempt=core.failures, delay=delay)
    return core.clock.callLater(delay, conn.retry_due)


def _arm_stop(conn: Connection, core: ConnectionCore) -> IDelayedCall:
    return core.clock.callLater(core.stop_timeout, conn.stop_timed_out)


_b = TypeMachineBuilder(Connection, ConnectionCore)
_idle = _b.state("idle")
_connecting = _b.state("connecting", _begin_connect)
_handshaking = _b.state("handshaking", _arm_handshake)
_connected = _b.state("connected")
_waiting = _b.state("waiting", _schedule_retry)
_cancelling = _b.state("cancelling")
_disconnecting = _b.state("disconnecting", _arm_stop)
_stopped = _b.state("stopped")

# start
_idle.upon(Connection.start).to(_connecting).returns(None)
_stopped.upon(Connection.start).to(_connecting).returns(None)
_connecting.upon(Connection.start).loop().returns(None)
_handshaking.upon(Connection.start).loop().returns(None)
_connected.upon(Connection.start).loop().returns(None)
_waiting.upon(Connection.start).loop().returns(None)
_cancelling.upon(Connection.start).loop().returns(None)
_disconnecting.upon(Connection.start).loop().returns(None)

# connecting
_connecting.upon(Connection.socket_ready).to(_handshaking).returns(None)
_connecting.upon(Connection.stop).to(_cancelling).returns(None)


# C{connecting} has a data factory (L{_begin_connect}) and C{waiting} builds its
# data (the retry timer) from this input's arguments, so the behaviour must not
# take the old state's data: C{nodata=True}, as in C{ClientService}'s
# C{failedWhenConnecting}.
@pep614(_connecting.upon(Connection.socket_failed, nodata=True).to(_waiting))
def _connect_failed(conn: Connection, core: ConnectionCore, reason: str) -> None:
    core.log.warn("MQTT connection attempt failed: {reason}", reason=reason)


# handshaking


@pep614(_handshaking.upon(Connection.broker_accepted).to(_connected))
def _accepted(conn: Connection, core: ConnectionCore, timer: IDelayedCall) -> None:
    timer.cancel()
    core.failures = 0
    try:
        core.link.subscribe(core.subscriptions)
    except Exception as e:
        core.log.error("MQTT subscribe failed, dropping the connection: {reason}",
                       reason=str(e))
        core.link.abort()
        return
    core.events.up()


@pep614(_handshaking.upon(Connection.broker_refused).to(_waiting))
def _refused(conn: Connection, core: ConnectionCore, timer: IDelayedCall, reason: str) -> None:
    timer.cancel()
    core.log.error("MQTT broker refused the connection: {reason}", reason=reason)
    core.link.abort()


@pep614(_handshaking.upon(Connection.connectionLost).to(_waiting))
def _lost_in_handshake(conn: Connection, core: ConnectionCore, timer: IDelayedCall,
                     reason: str) -> None:
    timer.cancel()
    core.log.warn("MQTT connection closed before CONNACK: {reason}", reason=reason)


@pep614(_handshaking.upon(Connection.handshake_timed_out).to(_waiting))
def _handshake_timeout(conn: Connection, core: ConnectionCore, timer: IDelayedCall) -> None:
    core.log.warn("MQTT broker sent no CONNACK within {timeout} s",
                  timeout=core.handshake_timeout)
    core.link.abort()


@pep614(_handshaking.upon(Connection.stop).to(_disconnecting))
def _stop_in_handshake(conn: Connection, core: ConnectionCore, timer: IDelayedCall) -> None:
    timer.cancel()
    core.link.disconnect()


# connected


@pep614(_connected.upon(Connection.connectionLost).to(_waiting))
def _lost(conn: Connection, core: ConnectionCore, reason: str) -> None:
    core.log.warn("MQTT broker connection lost: {reason}", reason=reason)
    core.events.down(reason)


@pep614(_connected.upon(Connection.stop).to(_disconnecting))
def _stop_connected(conn: Connection, core: ConnectionCore) -> None:
    core.link.disconnect()
    core.events.down("service stopping")


# waiting
_waiting.upon(Connection.retry_due, nodata=True).to(_connecting).returns(None)
# a refused CONNACK is followed by the socket closing:
_waiting.upon(Connection.connectionLost, nodata=True).loop().returns(None)


@pep614(_waiting.upon(Connection.stop).to(_stopped))
def _stop_waiting(conn: Connection, core: ConnectionCore, timer: IDelayedCall) -> None:
    timer.cancel()
    core.events.stopped()


# cancelling: stop arrived while the worker thread was connecting
_cancelling.upon(Connection.stop).loop().returns(None)


@pep614(_cancelling.upon(Connection.socket_ready).to(_disconnecting))
def _cancel_after_connect(conn: Connection, core: ConnectionCore) -> None:
    core.link.disconnect()


@pep614(_cancelling.upon(Connection.socket_failed).to(_stopped))
def _cancel_after_failure(conn: Connection, core: ConnectionCore, reason: str) -> None:
    core.events.stopped()


# disconnecting
_disconnecting.upon(Connection.stop, nodata=True).loop().returns(None)
_disconnecting.upon(Connection.broker_accepted, nodata=True).loop().returns(None)
_disconnecting.upon(Connection.broker_refused, nodata=True).loop().returns(None)


@pep614(_disconnecting.upon(Connection.connectionLost).to(_stopped))
def _closed(conn: Connection, core: ConnectionCore, timer: IDelayedCall, reason: str) -> None:
    timer.cancel()
    core.log.info("MQTT disconnected cleanly")
    core.events.stopped()


@pep614(_disconnecting.upon(Connection.stop_timed_out).to(_stopped))
def _close_timeout(conn: Connection, core: ConnectionCore, timer: IDelayedCall) -> None:
    core.log.warn("MQTT socket did not close within {timeout} s; dropping it",
                  timeout=core.stop_timeout)
    core.link.abort()
    core.events.stopped()


# idle and stopped
@pep614(_idle.upon(Connection.stop).to(_stopped))
@pep614(_stopped.upon(Connection.stop).loop())
def _already_stopped(conn: Connection, core: ConnectionCore) -> None:
    core.events.stopped()


# late events after an aborted stop
_stopped.upon(Connection.connectionLost).loop().returns(None)
_stopped.upon(Connection.broker_accepted).loop().returns(None)
_stopped.upon(Connection.broker_refused).loop().returns(None)

ConnectionMachine = _b.build()


# -- the service -----------------------------------------------------------


def _check_options(options: Any) -> None:
    missing = [name for name in _OPTION_FIELDS if not hasattr(options, name)]
    if missing:
        raise TypeError(f"MqttService options: missing attribute(s) {', '.join(missing)}")
    if not isinstance(options.host, str) or not options.host:
        raise ValueError(
            f"MqttService options: host must be a non-empty string, got {options.host!r}")
    if not isinstance(options.port, int) or not 0 < options.port < 65536:
        raise ValueError(f"MqttService options: port must be 1..65535, got {options.port!r}")
    if not isinstance(options.keepalive, int) or options.keepalive <= 0:
        raise ValueError("MqttService options: keepalive must be a positive integer, "
                         f"got {options.keepalive!r}")


def _check_qos(what: str, qos: object) -> None:
    if not isinstance(qos, int) or isinstance(qos, bool) or qos not in (0, 1, 2):
        raise ValueError(f"{what}: qos must be 0, 1 or 2, got {qos!r}")


def default_link_factory(options: Any) -> LinkFactory:
    """The network link chosen by ``options.client`` (config ``mqtt_client``).

    ``twisted`` (the default, also when ``options`` has no ``client``): our MQTT 3.1.1
    protocol on Twisted (ate/mqtt/twistedlink.py); ``paho``: paho-mqtt on the reactor
    (ate/mqtt/reactorpaho.py), which stays supported. bench/cycle.py ``--link`` measures
    the two (README "Benchmarks"). Only the chosen link is imported.
    """
    return link_factory(getattr(options, "client", DEFAULT_LINK))


class MqttService(Service):
    """One MQTT 3.1.1 clean-session connection, kept up until stopped.

    See docs/internals.md "ate/mqtt/". All callbacks run on the reactor
    thread. C{reconnects} counts connections re-established after a loss.
    The link is C{link_factory}, else the one C{options.client} names
    (L{default_link_factory}: our Twisted link unless it says C{"paho"}).
    """

    log = Logger(namespace="ate.mqtt")

    def __init__(
        self,
        reactor: Any,
        options: MqttOptions,
        client_id: str,
        *,
        will: tuple[str, bytes, int] | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Callable[[str, bytes], None],
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        backoff: tuple[float, float] = (1.0, 30.0),
        handshake_timeout: float = 10.0,
        stop_timeout: float = 2.0,
        link_factory: LinkFactory | None = None,
    ) -> None:
        _check_options(options)
        if not isinstance(client_id, str) or not client_id:
            raise ValueError(
                f"MqttService: client_id must be a non-empty string, got {client_id!r}")
        if will is not None:
            if not (isinstance(will, tuple) and len(will) == 3 and isinstance(will[0], str)
                    and will[0] and isinstance(will[1], (bytes, bytearray))):
                raise ValueError(
                    f"MqttService: will must be (topic, payload bytes, qos), got {will!r}")
            _check_qos("MqttService will", will[2])
        subscriptions = tuple((str(t), q) for t, q in subscriptions)
        for topic, qos in subscriptions:
            if not topic:
                raise ValueError("MqttService subscriptions: empty topic filter")
            _check_qos(f"MqttService subscription {topic!r}", qos)
        low, high = backoff
        if not (0 < low <= high):
            raise ValueError("MqttService: backoff must be (min, max) with 0 < min <= max, "
                             f"got {backoff!r}")
        if not callable(on_message):
            raise TypeError("MqttService: on_message must be callable")

        self._reactor = reactor
        self._options = options
        self._client_id = client_id
        self._will = will
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._link_factory = link_factory or default_link_factory(options)
        self.connected = False
        self.reconnects = 0
        self._ever_connected = False
        self._pending: dict[int, tuple[Deferred[None], int]] = {}
        self._connect_waiters: list[Deferred[None]] = []
        self._stop_waiters: list[Deferred[None]] = []
        self._drain_waiters: list[Deferred[None]] = []
        self._link: Link | None = None
        self._core = ConnectionCore(
            clock=reactor,
            link=cast(Link, None),  # set in startService
            events=self,
            subscriptions=subscriptions,
            backoff=(float(low), float(high)),
            handshake_timeout=handshake_timeout,
            stop_timeout=stop_timeout,
        )
        self._machine = ConnectionMachine(self._core)

    # -- Service ----------------------------------------------------------

    def startService(self) -> None:
        if self.running:
            return
        Service.startService(self)
        # A fresh client per start: nothing queued by an earlier run leaks in.
        link = self._link_factory(
            self._reactor, self._options, self._client_id, self._will, self)
        self._link = self._core.link = link
        link.start()
        self._machine.start()

    def stopService(self) -> Deferred[None]:
        """Wait (bounded) for unacked publishes, DISCONNECT, wait for the close."""
        Service.stopService(self)
        drained = self._drain()
        drained.addCallback(lambda _: self._stop_machine())
        return drained

    # -- public API -------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 2) -> Deferred[None]:
        """Publish (never retained).

        Fires with None when the broker acked (QoS 1/2) or the message was
        written (QoS 0). Errbacks with L{MqttNotConnected} when not connected
        (or QoS 0 lost with the connection), ValueError/TypeError for bad
        arguments. QoS 1/2 messages in flight when the connection drops are
        resent by the link after the reconnect.
        """
        if not isinstance(topic, str) or not topic:
            return fail(ValueError(f"publish: topic must be a non-empty string, got {topic!r}"))
        if not isinstance(payload, (bytes, bytearray)):
            return fail(TypeError(f"publish to {topic!r}: payload must be bytes, "
                                  f"got {type(payload).__name__}"))
        try:
            _check_qos(f"publish to {topic!r}", qos)
        except ValueError as e:
            return fail(e)
        if not self.connected or self._link is None:
            return fail(MqttNotConnected(f"publish to {topic!r}: not connected to the MQTT broker"))
        try:
            mid = self._link.publish(topic, bytes(payload), qos)
        except (ValueError, MqttLinkError) as e:
            return fail(e)

        def cancel(d: Deferred[None]) -> None:
            self._forget(mid)

        d: Deferred[None] = Deferred(cancel)
        self._pending[mid] = (d, qos)
        return d

    def whenConnected(self) -> Deferred[None]:
        """Fires when connected (now, or after the next successful connect)."""
        if self.connected:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._connect_waiters.remove(d)
                                     if d in self._connect_waiters else None)
        self._connect_waiters.append(d)
        return d

    # -- ConnectionEvents (called by the machine) --------------------------

    def up(self) -> None:
        self.connected = True
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self.log.info("MQTT connected to {host}:{port} as {client_id}",
                      host=self._options.host, port=self._options.port,
                      client_id=self._client_id)
        waiters, self._connect_waiters = self._connect_waiters, []
        for w in waiters:
            w.callback(None)
        if self._on_connected is not None:
            self._call_app("on_connected", self._on_connected)

    def down(self, reason: str) -> None:
        self.connected = False
        # QoS 0 messages not yet written are dropped by the link on reconnect.
        for mid, (d, qos) in list(self._pending.items()):
            if qos == 0:
                del self._pending[mid]
                d.errback(MqttNotConnected(
                    f"connection lost before the message was written ({reason})"))
        self._check_drained()
        if self._on_disconnected is not None:
            self._call_app("on_disconnected", self._on_disconnected)

    def stopped(self) -> None:
        self.connected = False
        if self._link is not None:
            self._link.stop()
        pending, self._pending = self._pending, {}
        for d, _ in pending.values():
            d.errback(MqttNotConnected("MQTT service stopped before the broker acked"))
        self._check_drained()
        waiters, self._connect_waiters = self._connect_waiters, []
        for w in waiters:
            w.errback(MqttNotConnected("MQTT service stopped"))
        stops, self._stop_waiters = self._stop_waiters, []
        for s in stops:
            s.callback(None)

    # -- LinkListener (called by the link, on the reactor thread) -----------

    def link_connected(self, accepted: bool, reason: str) -> None:
        if accepted:
            self._machine.broker_accepted()
        else:
            self._machine.broker_refused(reason)

    def link_lost(self, reason: str) -> None:
        self._machine.connectionLost(reason)

    def link_message(self, topic: str, payload: bytes, qos: int) -> None:
        try:
            self._on_message(topic, payload)
        except Exception:
            self.log.failure("MQTT on_message handler failed for topic {topic}", topic=topic)

    def link_published(self, mid: int) -> None:
        entry = self._pending.pop(mid, None)
        if entry is not None:
            entry[0].callback(None)
            self._check_drained()

    def link_subscribed(self, mid: int, failures: Sequence[str]) -> None:
        if failures:
            self.log.error("MQTT broker refused subscription(s): {failures}",
                           failures=", ".join(failures))

    # -- helpers ------------------------------------------------------------

    def _call_app(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            self.log.failure("MQTT {callback} callback failed", callback=name)

    def _forget(self, mid: int) -> None:
        self._pending.pop(mid, None)
        self._check_drained()

    def _drain(self) -> Deferred[None]:
        """Fires when no acknowledged publish is outstanding (bounded)."""
        if not self.connected or not any(q for _, q in self._pending.values()):
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drain_waiters.append(d)

        def timed_out(f: Failure) -> None:
            f.trap(TimeoutError, CancelledError)
            self.log.warn("MQTT stop: {count} publish(es) still unacked after {timeout} s",
                          count=len(self._pending), timeout=self._core.stop_timeout)

        d.addTimeout(self._core.stop_timeout, self._reactor)
        d.addErrback(timed_out)
        return d

    def _check_drained(self) -> None:
        if self._drain_waiters and not any(q for _, q in self._pending.values()):
            waiters, self._drain_waiters = self._drain_waiters, []
            for w in waiters:
                if not w.called:
                    w.callback(None)

    def _stop_machine(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._stop_waiters.append(d)
        self._machine.stop()
        return d
