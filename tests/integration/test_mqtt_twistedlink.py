"""MqttService with the pure-Twisted link (ate.mqtt.twistedlink) against a real private mosquitto.

The same checks as test_mqtt.py (the paho link), with C{link_factory=twistedlink.create}.
"""

from __future__ import annotations

import datetime
import ipaddress
import threading

import pytest_twisted
from twisted.internet.defer import Deferred

from ate.config import MqttOptions
from ate.mqtt import MqttService
from ate.mqtt import twistedlink
from ate.testing.broker import Mosquitto

TIMEOUT = 10.0


class Client:
    """An MqttService plus a record of everything its callbacks saw."""

    def __init__(self, reactor, broker, client_id, subscriptions=(), will=None,
                 backoff=(0.1, 0.5), **options):
        self.reactor = reactor
        self.messages: list[tuple[str, bytes]] = []
        self.events: list[str] = []
        self.off_thread: list[str] = []  # callbacks that ran off the main thread
        self._waiters: list[tuple[object, Deferred]] = []
        self.service = MqttService(
            reactor,
            MqttOptions(host=broker.host, port=broker.port, keepalive=10, **options),
            client_id,
            will=will,
            subscriptions=subscriptions,
            on_message=self._message,
            on_connected=lambda: self._event("connected"),
            on_disconnected=lambda: self._event("disconnected"),
            backoff=backoff,
            link_factory=twistedlink.create,
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
        assert isinstance(self.service._link, twistedlink.TwistedLink)
        await self.service.whenConnected().addTimeout(TIMEOUT, self.reactor)

    async def stop(self):
        await self.service.stopService().addTimeout(TIMEOUT, self.reactor)


@pytest_twisted.ensureDeferred
async def test_qos2_round_trip_large_payload_on_reactor_thread(reactor, mosquitto,
                                                              no_logged_errors):
    c = Client(reactor, mosquitto, "tl.roundtrip", subscriptions=[("ate/IT/#", 2)])
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
async def test_burst_of_2000_qos2_messages_all_delivered_in_order(reactor, mosquitto,
                                                                  no_logged_errors):
    receiver = Client(reactor, mosquitto, "tl.receiver", subscriptions=[("ate/IT/burst", 2)])
    sender = Client(reactor, mosquitto, "tl.sender")
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
async def test_broker_killed_and_restarted_reconnects_and_resubscribes(reactor, mosquitto):
    c = Client(reactor, mosquitto, "tl.reconnect", subscriptions=[("ate/IT/after", 2)])
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
async def test_will_published_when_socket_dies_without_disconnect(reactor, mosquitto):
    watcher = Client(reactor, mosquitto, "tl.watcher", subscriptions=[("ate/IT/Master/status", 2)])
    await watcher.start()
    victim = Client(reactor, mosquitto, "tl.victim", will=WILL, backoff=(30.0, 30.0))
    await victim.start()
    try:
        victim.service._link.abort()  # socket shut down, no DISCONNECT sent
        await watcher.until(lambda: (WILL[0], WILL[1]) in watcher.messages)
        await victim.until(lambda: "disconnected" in victim.events)
    finally:
        await victim.stop()
        await watcher.stop()


@pytest_twisted.ensureDeferred
async def test_no_will_after_clean_stop_and_final_publish_acked(reactor, mosquitto,
                                                                no_logged_errors):
    watcher = Client(reactor, mosquitto, "tl.watcher", subscriptions=[("ate/IT/Master/status", 2)])
    await watcher.start()
    master = Client(reactor, mosquitto, "tl.master", will=WILL)
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


# -- TLS ---------------------------------------------------------------------


def _write_pki(directory):
    """A CA and two server certificates: one for 127.0.0.1, one for another name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key_pem(key):
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("ate test CA")).issuer_name(name("ate test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for label, san in (("good", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
                       ("wrongname", x509.DNSName("other.example"))):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(label)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.SubjectAlternativeName([san]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        paths[label] = directory / f"{label}.pem"
        paths[label].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[label + "_key"] = directory / f"{label}.key"
        paths[label + "_key"].write_bytes(key_pem(key))
    return paths


def _tls_broker(paths, label):
    broker = Mosquitto(extra_config=[f"cafile {paths['ca']}", f"certfile {paths[label]}",
                                     f"keyfile {paths[label + '_key']}"])
    broker.start()
    return broker


@pytest_twisted.ensureDeferred
async def test_tls_round_trip_with_private_ca(reactor, tmp_path, no_logged_errors):
    paths = _write_pki(tmp_path)
    broker = _tls_broker(paths, "good")
    try:
        c = Client(reactor, broker, "tl.tls", subscriptions=[("ate/IT/tls", 2)],
                   tls=True, tls_ca=str(paths["ca"]))
        await c.start()
        try:
            await c.service.publish("ate/IT/tls", b"secret", 2).addTimeout(TIMEOUT, reactor)
            await c.until(lambda: ("ate/IT/tls", b"secret") in c.messages)
        finally:
            await c.stop()
    finally:
        broker.stop()
        broker.cleanup()


class _Events:
    def __init__(self):
        self.calls = []
        self.lost: Deferred = Deferred()
        self.connected: Deferred = Deferred()

    def linkConnected(self, accepted, reason):
        self.calls.append(("connected", accepted))
        self.connected.callback(accepted)

    def linkLost(self, reason):
        self.calls.append(("lost", reason))
        self.lost.callback(reason)

    def linkMessage(self, topic, payload, qos):
        pass

    def linkPublished(self, mid):
        pass

    def linkSubscribed(self, mid, failures):
        pass


@pytest_twisted.ensureDeferred
async def test_tls_host_name_checked_unless_tls_insecure(reactor, tmp_path):
    paths = _write_pki(tmp_path)
    broker = _tls_broker(paths, "wrongname")  # certificate for other.example, not 127.0.0.1
    try:
        strict = _Events()
        link = twistedlink.create(
            reactor, MqttOptions(host=broker.host, port=broker.port, keepalive=10, tls=True,
                                 tls_ca=str(paths["ca"])), "tl.strict", None, strict)
        await link.connect().addTimeout(TIMEOUT, reactor)
        await strict.lost.addTimeout(TIMEOUT, reactor)
        assert strict.calls[0][0] == "lost"  # the handshake failed: never a CONNACK

        lax = _Events()
        link = twistedlink.create(
            reactor, MqttOptions(host=broker.host, port=broker.port, keepalive=10, tls=True,
                                 tls_ca=str(paths["ca"]), tls_insecure=True),
            "tl.insecure", None, lax)
        await link.connect().addTimeout(TIMEOUT, reactor)
        assert await lax.connected.addTimeout(TIMEOUT, reactor) is True
        link.disconnect()
        await lax.lost.addTimeout(TIMEOUT, reactor)
    finally:
        broker.stop()
        broker.cleanup()
