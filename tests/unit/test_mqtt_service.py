"""MqttService and its connection machine, without a broker.

The service is given a fake link (the network seam) and a Clock, so
connects, CONNACKs, losses and acks are fired by hand. The paho adapter's
callback guarding is tested with a real paho client whose callbacks are
driven directly.
"""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

import paho.mqtt.client as paho
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from ate.mqtt import MqttNotConnected, MqttService
from ate.mqtt.reactorpaho import ReactorPaho, make_paho_client


def options(**kw):
    base = dict(host="127.0.0.1", port=1883, username=None, password=None, tls=False,
                tls_ca=None, tls_cert=None, tls_key=None, tls_insecure=False, keepalive=60)
    base.update(kw)
    return SimpleNamespace(**base)


class FakeLink:
    """Records what the service asks of the network; the test fires the answers."""

    def __init__(self, events):
        self.events = events
        self.connects: list[Deferred] = []
        self.published: list[tuple[str, bytes, int]] = []
        self.listener = None
        self.running = False

    def factory(self, reactor, opts, client_id, will, listener):
        self.listener = listener
        self.events.append(("link", client_id, will))
        return self

    def start(self):
        self.running = True

    def stop(self):
        self.running = False

    def connect(self):
        self.events.append("connect")
        d = Deferred()
        self.connects.append(d)
        return d

    def subscribe(self, subs):
        self.events.append(("subscribe", tuple(subs)))

    def publish(self, topic, payload, qos):
        self.published.append((topic, payload, qos))
        self.events.append(("publish", topic))
        return len(self.published)  # mid

    def disconnect(self):
        self.events.append("disconnect")

    def abort(self):
        self.events.append("abort")

    # test helpers: one full successful connection
    def succeed(self):
        self.connects[-1].callback(None)
        self.listener.link_connected(True, "Success")


class Harness:
    def __init__(self, **kw):
        self.clock = Clock()
        self.events: list = []
        self.messages: list = []
        self.link = FakeLink(self.events)
        self.service = MqttService(
            self.clock, options(), "masterapp.D",
            will=("ate/D/Master/status", b"crash", 2),
            subscriptions=[("ate/D/Master/#", 2), ("ate/D/Control/#", 2)],
            on_message=kw.pop("on_message", lambda t, p: self.messages.append((t, p))),
            on_connected=lambda: self.events.append("on_connected"),
            on_disconnected=lambda: self.events.append("on_disconnected"),
            link_factory=self.link.factory,
            **kw,
        )

    def delays(self):
        return [round(c.getTime() - self.clock.seconds(), 6) for c in self.clock.getDelayedCalls()]


def test_connect_subscribes_before_on_connected():
    h = Harness()
    h.service.startService()
    assert h.events == [("link", "masterapp.D", ("ate/D/Master/status", b"crash", 2)), "connect"]
    h.link.succeed()
    assert h.events[2:] == [
        ("subscribe", (("ate/D/Master/#", 2), ("ate/D/Control/#", 2))),
        "on_connected",
    ]
    assert h.service.connected
    assert h.service.reconnects == 0
    assert h.delays() == []  # handshake timer cancelled


def test_backoff_doubles_to_cap_and_resets_after_connect():
    h = Harness()
    h.service.startService()
    seen = []
    for _ in range(8):
        h.link.connects[-1].errback(ConnectionRefusedError("refused"))
        (delay,) = h.delays()
        seen.append(delay)
        h.clock.advance(delay)
    assert seen == [1, 2, 4, 8, 16, 30, 30, 30]
    assert len(h.link.connects) == 9
    h.link.succeed()
    assert h.service.connected and h.service.reconnects == 0
    h.link.listener.link_lost("Unspecified error")
    assert "on_disconnected" in h.events and not h.service.connected
    assert h.delays() == [1]  # reset after the successful connect
    h.clock.advance(1)
    h.link.succeed()
    assert h.service.connected and h.service.reconnects == 1
    assert h.events.count(("subscribe", (("ate/D/Master/#", 2), ("ate/D/Control/#", 2)))) == 2


def test_custom_backoff_tuple():
    h = Harness(backoff=(0.5, 3.0))
    h.service.startService()
    seen = []
    for _ in range(5):
        h.link.connects[-1].errback(OSError("no route"))
        (delay,) = h.delays()
        seen.append(delay)
        h.clock.advance(delay)
    assert seen == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_broker_loss_is_logged_as_warning_with_reason():
    h = Harness()
    h.service.startService()
    h.link.succeed()
    with capturedLogs() as logged:
        h.link.listener.link_lost("Unspecified error")
    texts = [e["log_format"] for e in logged]
    assert any("connection lost" in t for t in texts)
    lost = [e for e in logged if "connection lost" in e["log_format"]][0]
    assert lost["reason"] == "Unspecified error"
    assert lost["log_level"].name == "warn"


@pytest.mark.parametrize("synchronous", [False, True])
def test_failed_connect_is_a_warning_with_the_reason_and_no_critical(synchronous):
    h = Harness()
    if synchronous:  # a link whose connect() raises at once
        def refuse():
            h.events.append("connect")
            raise ConnectionRefusedError(111, "Connection refused")
        h.link.connect = refuse
    with capturedLogs() as logged:
        h.service.startService()
        if not synchronous:
            h.link.connects[-1].errback(ConnectionRefusedError(111, "Connection refused"))
    assert [e for e in logged if e["log_level"].name == "critical"
            or e.get("log_failure") is not None] == []
    [warning] = [e for e in logged if e["log_level"].name == "warn"]
    assert warning["log_format"] == "MQTT connection attempt failed: {reason}"
    assert warning["reason"].startswith("ConnectionRefusedError: ")
    assert "Connection refused" in warning["reason"]
    assert h.delays() == [1]  # and the retry is scheduled
    h.clock.advance(1)
    assert h.events.count("connect") == 2


def test_refused_connack_and_handshake_timeout_retry():
    h = Harness(handshake_timeout=5.0)
    h.service.startService()
    h.link.connects[-1].callback(None)
    h.link.listener.link_connected(False, "Not authorized")
    assert h.events[-1] == "abort" and not h.service.connected
    h.link.listener.link_lost("closed")  # the socket closes after a refusal: ignored
    assert h.delays() == [1]
    h.clock.advance(1)
    h.link.connects[-1].callback(None)
    assert h.delays() == [5.0]
    h.clock.advance(5.0)  # no CONNACK
    assert h.events[-1] == "abort"
    assert h.delays() == [2]
    assert "on_connected" not in h.events


def test_publish_when_disconnected_errbacks():
    h = Harness()
    d = h.service.publish("ate/D/Master/status", b"{}")
    assert isinstance(failure_of(d).value, MqttNotConnected)
    h.service.startService()
    h.link.succeed()
    h.link.listener.link_lost("gone")
    d = h.service.publish("ate/D/Master/status", b"{}")
    assert isinstance(failure_of(d).value, MqttNotConnected)
    assert h.link.published == []


def test_publish_bad_arguments_name_the_problem():
    h = Harness()
    h.service.startService()
    h.link.succeed()
    assert "payload must be bytes" in str(failure_of(h.service.publish("t", "text")).value)
    assert "qos must be 0, 1 or 2" in str(failure_of(h.service.publish("t", b"", 3)).value)
    assert "topic" in str(failure_of(h.service.publish("", b"")).value)


def test_publish_fires_on_ack_qos0_lost_with_connection():
    h = Harness()
    h.service.startService()
    h.link.succeed()
    d2 = h.service.publish("a", b"1", 2)
    d0 = h.service.publish("b", b"2", 0)
    results = []
    d2.addCallback(results.append)
    assert results == []
    h.link.listener.link_published(1)
    assert results == [None]
    h.link.listener.link_lost("gone")
    assert isinstance(failure_of(d0).value, MqttNotConnected)


def test_qos2_in_flight_survives_reconnect():
    h = Harness()
    h.service.startService()
    h.link.succeed()
    d = h.service.publish("a", b"1", 2)
    h.link.listener.link_lost("gone")
    assert not d.called
    h.clock.advance(1)
    h.link.succeed()
    h.link.listener.link_published(1)  # paho resent it after the reconnect
    assert d.called and d.result is None


def test_stop_sends_disconnect_and_waits_for_close():
    h = Harness()
    h.service.startService()
    h.link.succeed()
    d = fired(h.service.stopService())
    assert h.events[-2:] == ["disconnect", "on_disconnected"]
    assert d == []
    h.link.listener.link_lost("Normal disconnection")
    assert d == [None]
    assert h.delays() == []  # no reconnect scheduled
    assert not h.link.running


def test_stop_times_out_and_aborts():
    h = Harness()
    h.service.startService()
    h.link.succeed()
    d = fired(h.service.stopService())
    h.clock.advance(1.9)
    assert d == []
    h.clock.advance(0.1)
    assert d == [None] and h.events[-1] == "abort"
    h.link.listener.link_lost("late")  # ignored in stopped
    assert h.delays() == []


def test_stop_waits_for_final_publish_ack_first():
    h = Harness()
    h.service.startService()
    h.link.succeed()
    final = h.service.publish("ate/D/Master/status", b"crash", 2)
    d = fired(h.service.stopService())
    assert "disconnect" not in h.events
    h.link.listener.link_published(1)
    assert final.called and final.result is None
    assert h.events[-2:] == ["disconnect", "on_disconnected"]
    h.link.listener.link_lost("Normal disconnection")
    assert d == [None]


def test_stop_while_connect_thread_runs_then_disconnects():
    h = Harness()
    h.service.startService()
    d = fired(h.service.stopService())
    assert d == []
    h.link.connects[-1].callback(None)  # the worker thread finishes
    assert h.events[-1] == "disconnect"
    h.link.listener.link_lost("Normal disconnection")
    assert d == [None] and h.delays() == []


def test_stop_while_waiting_cancels_retry_and_fails_waiters():
    h = Harness()
    h.service.startService()
    waiter = h.service.whenConnected()
    h.link.connects[-1].errback(ConnectionRefusedError())
    assert h.delays() == [1]
    d = fired(h.service.stopService())
    assert d == [None] and h.delays() == []
    assert isinstance(failure_of(waiter).value, MqttNotConnected)


def test_restart_after_stop_builds_a_fresh_link():
    h = Harness()
    h.service.startService()
    h.link.succeed()
    h.service.stopService()
    h.link.listener.link_lost("Normal disconnection")
    h.service.startService()
    assert h.events.count("connect") == 2
    h.link.succeed()
    assert h.service.connected


def test_on_connected_may_stop_reentrantly():
    h = Harness()
    stops = []
    h.service._on_connected = lambda: stops.append(fired(h.service.stopService()))
    h.service.startService()
    h.link.succeed()
    assert h.events[-2:] == ["disconnect", "on_disconnected"]
    assert stops == [[]]
    h.link.listener.link_lost("Normal disconnection")
    assert stops == [[None]]


def test_bad_constructor_arguments_are_named():
    clock = Clock()
    with pytest.raises(ValueError, match="port"):
        MqttService(clock, options(port=0), "c", on_message=print)
    with pytest.raises(TypeError, match="missing attribute.*keepalive"):
        MqttService(clock, SimpleNamespace(host="h", port=1), "c", on_message=print)
    with pytest.raises(ValueError, match="client_id"):
        MqttService(clock, options(), "", on_message=print)
    with pytest.raises(ValueError, match="will"):
        MqttService(clock, options(), "c", will=("t", "str", 2), on_message=print)
    with pytest.raises(ValueError, match="qos"):
        MqttService(clock, options(), "c", subscriptions=[("t", 5)], on_message=print)
    with pytest.raises(ValueError, match="backoff"):
        MqttService(clock, options(), "c", backoff=(0, 1), on_message=print)


# -- the paho adapter, with a real paho client driven by hand ----------------


class ThreadAwareReactor(MemoryReactorClock):
    """MemoryReactorClock plus callFromThread (recorded, run by the test)."""

    def __init__(self):
        super().__init__()
        self.fromThread = []

    def callFromThread(self, f, *args, **kw):
        self.fromThread.append((f, args, kw))

    def runThreadCalls(self):
        calls, self.fromThread = self.fromThread, []
        for f, args, kw in calls:
            f(*args, **kw)


class NeverConnects(ReactorPaho):
    def connect(self):
        return Deferred()


def message(topic, payload):
    m = paho.MQTTMessage(mid=0, topic=topic.encode())
    m.payload = payload
    return m


def test_exception_in_on_message_is_logged_and_delivery_goes_on(no_logged_errors):
    reactor = ThreadAwareReactor()
    got = []

    def handler(topic, payload):
        if payload == b"boom":
            raise RuntimeError("handler bug")
        got.append((topic, payload))

    links = []

    def factory(r, opts, client_id, will, listener):
        links.append(NeverConnects(r, make_paho_client(opts, client_id, will), listener))
        return links[0]

    service = MqttService(reactor, options(), "masterapp.D", on_message=handler,
                          link_factory=factory)
    service.startService()
    client = links[0].client
    with capturedLogs() as logged:
        client.on_message(client, None, message("ate/D/Master/cmd", b"boom"))
        client.on_message(client, None, message("ate/D/Master/cmd", b"next"))
    assert got == [("ate/D/Master/cmd", b"next")]
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)
    assert failures[0]["topic"] == "ate/D/Master/cmd"
    assert client.suppress_exceptions is True
    links[0].stop()
    assert len(no_logged_errors) == 1
    no_logged_errors.clear()  # the handler bug above is logged on purpose


def test_callbacks_from_other_threads_are_marshalled_to_the_reactor():
    reactor = ThreadAwareReactor()
    seen = []

    class Listener:
        def link_message(self, topic, payload, qos):
            seen.append((topic, threading.current_thread() is threading.main_thread()))

    link = ReactorPaho(reactor, make_paho_client(options(), "c", None), Listener())
    client = link.client
    t = threading.Thread(target=client.on_message, args=(client, None, message("x", b"1")))
    t.start()
    t.join()
    assert seen == [] and len(reactor.fromThread) == 1
    reactor.runThreadCalls()
    assert seen == [("x", True)]


def test_socket_hooks_register_descriptors_with_the_reactor():
    reactor = ThreadAwareReactor()
    link = ReactorPaho(reactor, make_paho_client(options(), "c", None), SimpleNamespace())
    client = link.client
    a, b = socket.socketpair()
    try:
        client.on_socket_open(client, None, a)
        (descriptor,) = reactor.getReaders()
        assert descriptor.fileno() == a.fileno()
        client.on_socket_register_write(client, None, a)
        assert reactor.getWriters() == [descriptor]
        client.on_socket_unregister_write(client, None, a)
        assert reactor.getWriters() == []
        client.on_socket_register_write(client, None, a)
        client.on_socket_close(client, None, a)
        assert reactor.getReaders() == [] and reactor.getWriters() == []
    finally:
        a.close()
        b.close()


def test_tcp_nodelay_is_set_on_open():
    reactor = ThreadAwareReactor()
    link = ReactorPaho(reactor, make_paho_client(options(), "c", None), SimpleNamespace())
    client = link.client
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    sock = socket.create_connection(server.getsockname())
    try:
        client.on_socket_open(client, None, sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        client.on_socket_close(client, None, sock)
    finally:
        sock.close()
        server.close()


def test_paho_client_settings():
    client = make_paho_client(options(username="u", password="p", keepalive=17), "masterapp.D",
                              ("ate/D/Master/status", b"crash", 2))
    assert client.max_inflight_messages == 20 and client.max_queued_messages == 0
    assert client.username == "u" and client.password == "p"
    assert client.will_topic == "ate/D/Master/status" and client.will_payload == b"crash"
    assert client.keepalive == 17 and client.host == "127.0.0.1"


def failure_of(d):
    out = []
    d.addErrback(out.append)
    assert out, f"expected {d!r} to have failed"
    return out[0]


def fired(d):
    """A list that receives d's result when it fires (empty until then)."""
    out = []
    d.addCallback(out.append)
    return out


def test_socket_reaches_the_reactor_only_after_the_connect_thread_returned():
    reactor = ThreadAwareReactor()
    link = ReactorPaho(reactor, make_paho_client(options(), "c", None), SimpleNamespace())
    client = link.client
    a, b = socket.socketpair()
    try:
        link._blocking = True  # as while reconnect() runs in the worker thread
        client.on_socket_open(client, None, a)
        client.on_socket_register_write(client, None, a)
        assert reactor.getReaders() == [] and reactor.getWriters() == []
        link._blocking = False
        link._register_descriptor()  # what connect()'s completion does
        (descriptor,) = reactor.getReaders()
        assert reactor.getWriters() == [descriptor]
        client.on_socket_close(client, None, a)
        assert reactor.getReaders() == [] and reactor.getWriters() == []
    finally:
        a.close()
        b.close()


class SyncPool:
    """A thread pool that runs the work at once, in this thread."""

    def callInThreadWithCallback(self, onResult, f, *args, **kw):
        try:
            result = f(*args, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


def test_failed_tls_handshake_closes_its_socket():
    """paho drops the TLS socket of a failed handshake without closing it; the link closes
    it (no ResourceWarning, no fd left for the garbage collector)."""
    import gc
    import warnings

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    closer = threading.Thread(target=lambda: server.accept()[0].close())
    closer.start()
    reactor = ThreadAwareReactor()
    reactor.getThreadPool = lambda: SyncPool()
    opts = options(port=server.getsockname()[1], tls=True)
    link = ReactorPaho(reactor, make_paho_client(opts, "c", None), SimpleNamespace())
    failures = []
    gc.collect()  # what earlier tests left to the collector is not this test's business
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            link.connect().addErrback(failures.append)
            reactor.runThreadCalls()
            assert len(failures) == 1 and isinstance(failures[0].value, OSError)
            failures.clear()
            gc.collect()
        leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert [text for text in leaks if "socket" in text.lower()] == []
    finally:
        closer.join(10)
        server.close()
