"""Both MQTT links over TLS against a private mosquitto with a private CA: ours
(ate.mqtt.twistedlink, the default) and paho on the reactor (ate.mqtt.reactorpaho).
The plain-TCP checks run for both links in test_mqtt.py."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from ate.broker import Mosquitto
from ate.config import MqttOptions
from ate.mqtt.link import link_factory
from test_mqtt import TIMEOUT, Client


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
    ca = (x509.CertificateBuilder()
          .subject_name(name("ate test CA")).issuer_name(name("ate test CA"))
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


LINKS = pytest.mark.parametrize("client", ["twisted", "paho"])


@LINKS
@pytest_twisted.ensureDeferred
async def test_tls_round_trip_with_private_ca(reactor, tmp_path, client, no_logged_errors):
    paths = _write_pki(tmp_path)
    broker = _tls_broker(paths, "good")
    try:
        c = Client(reactor, broker, f"tl.tls.{client}", subscriptions=[("ate/IT/tls", 2)],
                   client=client, tls=True, tls_ca=str(paths["ca"]))
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

    def link_connected(self, accepted, reason):
        self.calls.append(("connected", accepted))
        self.connected.callback(accepted)

    def link_lost(self, reason):
        self.calls.append(("lost", reason))
        self.lost.callback(reason)

    def link_message(self, topic, payload, qos):
        pass

    def link_published(self, mid):
        pass

    def link_subscribed(self, mid, failures):
        pass


@LINKS
@pytest_twisted.ensureDeferred
async def test_tls_host_name_checked_unless_tls_insecure(reactor, tmp_path, client):
    paths = _write_pki(tmp_path)
    broker = _tls_broker(paths, "wrongname")  # certificate for other.example, not 127.0.0.1
    create = link_factory(client)
    try:
        strict = _Events()
        link = create(
            reactor, MqttOptions(host=broker.host, port=broker.port, keepalive=10, tls=True,
                                 tls_ca=str(paths["ca"])), "tl.strict", None, strict)
        if client == "twisted":
            # the handshake completes after connect() has fired: lost, never a CONNACK
            await link.connect().addTimeout(TIMEOUT, reactor)
            await strict.lost.addTimeout(TIMEOUT, reactor)
        else:
            # paho shakes hands inside connect(): the attempt fails, naming the check
            with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
                await link.connect().addTimeout(TIMEOUT, reactor)
        assert ("connected", True) not in strict.calls

        lax = _Events()
        link = create(
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
