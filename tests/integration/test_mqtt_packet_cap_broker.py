"""mqtt_max_packet_size against a real private mosquitto, with each link: a retained
message above the cap comes again after every reconnect, and must never cost the session
(issue 11, item 4)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from ate.config import MqttOptions
from ate.mqtt import MqttService, twistedlink
from ate.mqtt.reactorpaho import ReactorPaho

TIMEOUT = 15.0
CAP = 256 * 1024


@pytest.mark.parametrize("client", ["twisted", "paho"])
@pytest_twisted.ensureDeferred
async def test_retained_oversized_message_is_skipped_after_every_reconnect(
        reactor, broker, client):
    import paho.mqtt.client as paho

    links = []
    make = twistedlink.create if client == "twisted" else ReactorPaho.create

    def link_factory(*args):
        links.append(make(*args))
        return links[-1]

    got: list[tuple[str, bytes]] = []
    waiters: list[tuple[object, Deferred]] = []

    def on_message(topic, payload):
        got.append((topic, payload))
        for entry in list(waiters):
            if entry[0]():
                waiters.remove(entry)
                entry[1].callback(None)

    def until(condition) -> Deferred:
        """Fires once ``condition()`` holds: checked on every message and every 50 ms
        (link and service state change without a message)."""
        from twisted.internet.task import LoopingCall

        d: Deferred = Deferred()
        entry = (condition, d)
        waiters.append(entry)

        def check():
            if entry in waiters and condition():
                waiters.remove(entry)
                d.callback(None)

        loop = LoopingCall(check)
        loop.clock = reactor
        loop.start(0.05, now=True)

        def done(result):
            if loop.running:
                loop.stop()
            if entry in waiters:
                waiters.remove(entry)
            return result

        return d.addTimeout(TIMEOUT, reactor).addBoth(done)

    publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="hostile")
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    try:
        publisher.publish("cap/big", b"x" * (CAP * 4), qos=1, retain=True).wait_for_publish(10)
        service = MqttService(
            reactor,
            MqttOptions(host=broker.host, port=broker.port, keepalive=10, client=client,
                        max_packet_size=CAP),
            f"capped-{client}", subscriptions=[("cap/#", 1)], on_message=on_message,
            backoff=(0.1, 0.5), link_factory=link_factory)
        service.startService()
        try:
            # the retained message comes with the subscription: refused, so subscribed
            await until(lambda: links and links[0].refused_packets == 1)
            publisher.publish("cap/small", b"1", qos=1).wait_for_publish(10)
            await until(lambda: ("cap/small", b"1") in got)
            assert links[0].refused_packets == 1
            # a reconnect brings the retained message again; refused again, session kept
            links[0].abort()
            await until(lambda: service.reconnects >= 1 and service.connected
                        and links[0].refused_packets == 2)
            publisher.publish("cap/small", b"2", qos=1).wait_for_publish(10)
            await until(lambda: ("cap/small", b"2") in got)
            assert links[0].refused_packets == 2
            assert [p for t, p in got if t == "cap/big"] == []
            assert service.connected
        finally:
            await service.stopService()
    finally:
        publisher.publish("cap/big", b"", qos=1, retain=True).wait_for_publish(10)
        publisher.loop_stop()
        publisher.disconnect()
