"""MqttService against a real private mosquitto, with each link: our MQTT protocol on
Twisted (``mqtt_client = "twisted"``) and paho-mqtt on the reactor (``"paho"``)."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from ate.config import MqttOptions
from ate.mqtt import MqttService

TIMEOUT = 10.0


class Client:
    """An MqttService plus a record of everything its callbacks saw."""

    def __init__(self, reactor, broker, client_id, subscriptions=(), will=None,
                 backoff=(0.1, 0.5), client="twisted", **options):
        self.reactor = reactor
        self.messages: list[tuple[str, bytes]] = []
        self.events: list[str] = []
        self.off_thread: list[str] = []  # callbacks that ran off the main thread
        self._waiters: list[tuple[object, Deferred]] = []
        self.service = MqttService(
            reactor,
            MqttOptions(host=broker.host, port=broker.port, keepalive=10, client=client,
                        **options),
            client_id,
            will=will,
            subscriptions=subscriptions,
            on_message=self._message,
            on_connected=lambda: self._event("connected"),
            on_disconnected=lambda: self._event("disconnected"),
            backoff=backoff,
        )

    def _check_thread(self, what):
        if threading.current_thread() is not threading.main_thread():
            self.off_thread.append(what)

    def _message(self, topic, payload):
        self._check_thread("on_message")
        self.messages.append((topic, payload))
        self._poll()

    def _event(self, name):
        self._check_thread(name)
        self.events.append(name)
        self._poll()

    def _poll(self):
        for entry in list(self._waiters):
            condition, d = entry
            if condition():
                self._waiters.remove(entry)
                d.callback(None)

    def until(self, condition, timeout=TIMEOUT) -> Deferred:
        """Fires when condition() holds (checked after every callback)."""
        d: Deferred = Deferred()
        if condition():
            d.callback(None)
            return d
        self._waiters.append((condition, d))
        return d.addTimeout(timeout, self.reactor)

    async def start(self):
        self.service.startService()
        await self.service.whenConnected().addTimeout(TIMEOUT, self.reactor)

    async def stop(self):
        await self.service.stopService().addTimeout(TIMEOUT, self.reactor)


@pytest.fixture(params=["twisted", "paho"])
def link(request):
    """Each test runs with both MQTT links."""
    return request.param


@pytest_twisted.ensureDeferred
async def test_qos2_round_trip_large_payload_on_reactor_thread(reactor, mosquitto, link,
                                                              no_logged_errors):
    c = Client(reactor, mosquitto, "it.roundtrip", client=link,
                     subscriptions=[("ate/IT/#", 2)])
    await c.start()
    try:
        assert c.service.connected
        big = bytes(range(256)) * 800  # 204800 bytes
        acked = []
        await c.service.publish("ate/IT/small", b'{"type":"x"}', 2).addCallback(acked.append) \
            .addTimeout(TIMEOUT, reactor)
        await c.service.publish("ate/IT/big", big, 2).addCallback(acked.append) \
            .addTimeout(TIMEOUT, reactor)
        await c.service.publish("ate/IT/q0", b"zero", 0).addTimeout(TIMEOUT, reactor)
        assert acked == [None, None]
        await c.until(lambda: len(c.messages) == 3)
        assert c.messages == [("ate/IT/small", b'{"type":"x"}'), ("ate/IT/big", big),
                              ("ate/IT/q0", b"zero")]
        assert c.off_thread == []
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_burst_of_2000_qos2_messages_all_delivered_in_order(reactor, mosquitto, link,
                                                                  no_logged_errors):
    receiver = Client(reactor, mosquitto, "it.receiver", client=link,
                     subscriptions=[("ate/IT/burst", 2)])
    sender = Client(reactor, mosquitto, "it.sender", client=link)
    await receiver.start()
    await sender.start()
    try:
        n = 2000
        acks = [sender.service.publish("ate/IT/burst", str(i).encode(), 2) for i in range(n)]
        for d in acks:
            await d.addTimeout(TIMEOUT, reactor)
        await receiver.until(lambda: len(receiver.messages) >= n)
        assert [int(p) for _, p in receiver.messages] == list(range(n))
        assert receiver.off_thread == [] and sender.off_thread == []
    finally:
        await sender.stop()
        await receiver.stop()


@pytest_twisted.ensureDeferred
async def test_broker_killed_and_restarted_reconnects_and_resubscribes(reactor, mosquitto, link):
    c = Client(reactor, mosquitto, "it.reconnect", client=link,
                     subscriptions=[("ate/IT/after", 2)])
    await c.start()
    try:
        mosquitto.kill()
        await c.until(lambda: "disconnected" in c.events)
        assert not c.service.connected
        mosquitto.restart()  # same port
        await c.until(lambda: c.events.count("connected") == 2)
        assert c.service.reconnects == 1
        await c.service.publish("ate/IT/after", b"hello again", 2).addTimeout(TIMEOUT, reactor)
        await c.until(lambda: ("ate/IT/after", b"hello again") in c.messages)
        assert c.off_thread == []
    finally:
        await c.stop()


WILL = ("ate/IT/Master/status", b'{"type":"status","state":"crash"}', 2)


@pytest_twisted.ensureDeferred
async def test_will_published_when_socket_dies_without_disconnect(reactor, mosquitto, link):
    watcher = Client(reactor, mosquitto, "it.watcher", client=link,
                     subscriptions=[("ate/IT/Master/status", 2)])
    await watcher.start()
    victim = Client(reactor, mosquitto, "it.victim", client=link,
                     will=WILL, backoff=(30.0, 30.0))
    await victim.start()
    try:
        victim.service._link.abort()  # socket shut down, no DISCONNECT sent
        await watcher.until(lambda: (WILL[0], WILL[1]) in watcher.messages)
        await victim.until(lambda: "disconnected" in victim.events)
    finally:
        await victim.stop()
        await watcher.stop()


@pytest_twisted.ensureDeferred
async def test_no_will_after_clean_stop_and_final_publish_acked(reactor, mosquitto, link,
                                                                no_logged_errors):
    watcher = Client(reactor, mosquitto, "it.watcher", client=link,
                     subscriptions=[("ate/IT/Master/status", 2)])
    await watcher.start()
    master = Client(reactor, mosquitto, "it.master", client=link,
                     will=WILL)
    await master.start()
    # the master's last words, then a clean stop
    final = master.service.publish(WILL[0], b"master stopped", 2)
    stopped = master.service.stopService().addTimeout(TIMEOUT, reactor)
    await final.addTimeout(TIMEOUT, reactor)
    await stopped
    assert not master.service.connected
    assert master.events == ["connected", "disconnected"]
    # anything the broker published for the master's socket close comes before this marker
    await watcher.service.publish(WILL[0], b"marker", 2).addTimeout(TIMEOUT, reactor)
    await watcher.until(lambda: (WILL[0], b"marker") in watcher.messages)
    assert watcher.messages == [(WILL[0], b"master stopped"), (WILL[0], b"marker")]
    await watcher.stop()


@pytest_twisted.ensureDeferred
async def test_more_than_a_window_of_qos2_pending_across_a_reconnect_all_delivered(
        reactor, mosquitto, link):
    """Publishes beyond the in-flight window (20) are queued in the link; after a connection
    drop the link resends within its window again: every message acked and delivered
    (a resent one may come twice), one reconnect."""
    receiver = Client(reactor, mosquitto, "it.window.rx", client=link,
                      subscriptions=[("ate/IT/window", 2)])
    sender = Client(reactor, mosquitto, "it.window.tx", client=link)
    await receiver.start()
    await sender.start()
    try:
        n = 300
        acked = []

        def one_acked(_):
            acked.append(1)
            if len(acked) == 50:
                sender.service._link.abort()  # 250 unacked: 20 in flight, 230 queued

        acks = [sender.service.publish("ate/IT/window", str(i).encode(), 2)
                .addCallback(one_acked) for i in range(n)]
        for d in acks:
            await d.addTimeout(TIMEOUT, reactor)
        await receiver.until(lambda: len({p for _, p in receiver.messages}) == n)
        got = [int(p) for _, p in receiver.messages]
        assert sorted(set(got)) == list(range(n))
        assert len(got) - n <= 20  # only the window in flight at the drop may come twice
        assert sender.service.reconnects == 1
    finally:
        await sender.stop()
        await receiver.stop()
