"""The MQTT packet size cap (config ``mqtt_max_packet_size``) of both links.

Our Twisted link refuses an oversized PUBLISH from its header on and never buffers its
payload; the paho link checks the length paho has just read and drops the payload as it
is read.  Either way the refused message is logged, counted, acknowledged and never
delivered, and the session goes on (issue 11, item 4).
"""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from twisted.logger import LogLevel, capturedLogs

from tests.unit.test_twistedlink import CONNACK_OK, Harness, ack, packet, publish_in

CAP = 64 * 1024


def chunks(data: bytes, size: int = 64 * 1024):
    return [data[i:i + size] for i in range(0, len(data), size)]


def refused_warnings(events) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events
            if e.get("log_level") == LogLevel.warn and "refused" in formatEvent(e)]


# -- twistedlink ---------------------------------------------------------------------


def test_oversized_qos0_publish_is_skipped_without_buffering_it():
    h = Harness(max_packet_size=CAP)
    h.connect()
    big = publish_in("ate/D/TestApp/testresult/site0", b"x" * (4 * 1024 * 1024))
    after = publish_in("ate/D/TestApp/status/site0", b'{"ok":1}')
    largest = 0
    with capturedLogs() as events:
        for chunk in chunks(big + after, 60_000):
            h.feed(chunk)
            largest = max(largest, len(h.link._buf))
    assert h.listener.take() == [("message", "ate/D/TestApp/status/site0", b'{"ok":1}', 0)]
    assert largest < 70_000          # never more than one read plus a header
    assert h.link.refused_packets == 1
    texts = refused_warnings(events)
    assert len(texts) == 1
    assert "ate/D/TestApp/testresult/site0" in texts[0] and str(4 * 1024 * 1024 + 32) in texts[0]
    assert h.transport.connected and not h.transport.aborted
    assert h.transport.take() == b""


def test_oversized_qos1_publish_is_acked_after_its_last_byte():
    h = Harness(max_packet_size=CAP)
    h.connect()
    big = publish_in("t/big", b"y" * (CAP + 1), qos=1, mid=7)
    h.feed(big[:-1])
    assert h.transport.take() == b""           # not before the broker has sent it all
    h.feed(big[-1:] + publish_in("t/small", b"s", qos=1, mid=8))
    assert h.transport.take() == ack(0x40, 7) + ack(0x40, 8)
    assert h.listener.take() == [("message", "t/small", b"s", 1)]
    assert h.link.refused_packets == 1


def test_oversized_qos2_publish_gets_pubrec_then_pubcomp_and_is_never_delivered():
    h = Harness(max_packet_size=CAP)
    h.connect()
    h.feed(publish_in("t/big", b"z" * (CAP * 3), qos=2, mid=9))
    assert h.transport.take() == ack(0x50, 9)
    h.feed(ack(0x62, 9))                       # PUBREL
    assert h.transport.take() == ack(0x70, 9)  # PUBCOMP
    assert h.listener.take() == []


def test_refusal_split_at_every_byte_boundary_gives_the_same_result():
    cap = 1024
    stream = (publish_in("a", b"1")
              + publish_in("big/topic", b"B" * (cap + 10), qos=1, mid=3)
              + publish_in("b", b"2", qos=1, mid=4))

    def run(parts):
        h = Harness(max_packet_size=cap)
        h.connect()
        for part in parts:
            h.feed(part)
        return h.listener.take(), h.transport.take(), h.link.refused_packets

    expected = run([stream])
    assert expected == ([("message", "a", b"1", 0), ("message", "b", b"2", 1)],
                        ack(0x40, 3) + ack(0x40, 4), 1)
    for i in range(1, len(stream)):
        assert run([stream[:i], stream[i:]]) == expected, f"split at {i}"
    assert run([stream[i:i + 1] for i in range(len(stream))]) == expected


def test_refusal_at_the_cap_boundary():
    h = Harness(max_packet_size=1024)
    h.connect()
    topic = "t"
    fits = publish_in(topic, b"f" * (1024 - 3))        # remaining length exactly 1024
    over = publish_in(topic, b"o" * (1024 - 2))        # 1025
    h.feed(fits + over)
    assert h.listener.take() == [("message", "t", b"f" * 1021, 0)]
    assert h.link.refused_packets == 1


def test_oversized_control_packet_is_a_protocol_error():
    h = Harness(max_packet_size=CAP)
    h.connect()
    h.feed(bytes((0x90,)) + b"\x80\x80\x80\x01")       # SUBACK of 2 MiB announced
    calls = h.listener.take()
    assert len(calls) == 1 and calls[0][0] == "lost"
    assert "mqtt_max_packet_size" in calls[0][1]
    assert h.transport.aborted


def test_reconnect_forgets_a_skip_in_progress():
    h = Harness(max_packet_size=CAP)
    h.connect()
    h.feed(publish_in("t/big", b"x" * (CAP * 2))[:1000])
    h.transport.loseConnection()
    h.listener.take()
    h.connect()
    h.feed(publish_in("t/next", b"n"))
    assert h.listener.take() == [("message", "t/next", b"n", 0)]


def test_default_cap_is_4_mib():
    h = Harness()
    h.connect()
    h.feed(publish_in("t", b"x" * (4 * 1024 * 1024 - 3)))
    assert h.listener.take()[0][1] == "t"
    h.feed(publish_in("t", b"x" * (4 * 1024 * 1024)))
    assert h.listener.take() == [] and h.link.refused_packets == 1


# -- reactorpaho ---------------------------------------------------------------------


class _FakeBroker:
    """One accepted socket on 127.0.0.1: answers CONNECT, then sends what the test gives."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.conn = None

    def accept(self):
        self.conn, _ = self.server.accept()
        self.conn.settimeout(10)

    def read_packet(self) -> tuple[int, bytes]:
        first = self._exact(1)[0]
        length, shift = 0, 0
        while True:
            b = self._exact(1)[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if b < 128:
                break
        return first, self._exact(length)

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.conn.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    def close(self):
        for s in (self.conn, self.server):
            if s is not None:
                s.close()


class _PahoListener:
    def __init__(self):
        self.messages = []
        self.connected = []
        self.lost = []

    def link_connected(self, accepted, reason):
        self.connected.append(accepted)

    def link_lost(self, reason):
        self.lost.append(reason)

    def link_message(self, topic, payload, qos):
        self.messages.append((topic, payload, qos))

    def link_published(self, mid):
        pass

    def link_subscribed(self, mid, failures):
        pass


class _Reactor:
    """What ReactorPaho needs of a reactor here: a clock and descriptor registration
    (the test drives paho's reads itself)."""

    def __init__(self):
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.callLater = self.clock.callLater
        self.seconds = self.clock.seconds

    def addReader(self, descriptor):
        pass

    addWriter = removeReader = removeWriter = addReader


def _paho_options(port, **kw):
    from types import SimpleNamespace

    base = dict(host="127.0.0.1", port=port, username=None, password=None, tls=False,
                tls_ca=None, tls_cert=None, tls_key=None, tls_insecure=False, keepalive=60,
                subscribe_qos=0, client="paho")
    base.update(kw)
    return SimpleNamespace(**base)


def test_paho_link_refuses_an_oversized_publish_and_keeps_the_session():
    """paho's read loop, driven by hand on a real loopback socket (no reactor needed:
    the link's read hook is what is under test)."""
    from ate.mqtt.reactorpaho import ReactorPaho

    broker = _FakeBroker()
    try:
        listener = _PahoListener()
        link = ReactorPaho.create(_Reactor(), _paho_options(broker.port, max_packet_size=CAP),
                                  "c1", None, listener)
        accepter = threading.Thread(target=broker.accept)
        accepter.start()
        assert link.client.reconnect() == 0
        accepter.join(10)
        link.client.loop_write()                               # CONNECT
        first, _ = broker.read_packet()
        assert first == 0x10                                   # CONNECT
        broker.conn.sendall(CONNACK_OK)
        big = publish_in("t/big", b"x" * (2 * 1024 * 1024), qos=1, mid=5)
        small = publish_in("t/small", b"ok", qos=1, mid=6)
        sender = threading.Thread(target=broker.conn.sendall, args=(big + small,))
        sender.start()
        largest = 0
        with capturedLogs() as events:
            for _ in range(2000):
                link.client.loop_read()
                largest = max(largest, len(link.client._in_packet["packet"]))
                if listener.messages:
                    break
        sender.join(10)
        assert listener.connected == [True]
        assert listener.messages == [("t/small", b"ok", 1)]
        assert largest < CAP
        assert link.refused_packets == 1
        assert len(refused_warnings(events)) == 1
        link.client.loop_write()                               # the two PUBACKs
        acks = [broker.read_packet(), broker.read_packet()]
        assert acks == [(0x40, struct.pack(">H", 5)), (0x40, struct.pack(">H", 6))]
        assert listener.lost == []
    finally:
        broker.close()


def test_paho_link_oversized_control_packet_drops_the_connection():
    from ate.mqtt.reactorpaho import ReactorPaho

    broker = _FakeBroker()
    try:
        listener = _PahoListener()
        link = ReactorPaho.create(_Reactor(), _paho_options(broker.port, max_packet_size=CAP),
                                  "c1", None, listener)
        accepter = threading.Thread(target=broker.accept)
        accepter.start()
        assert link.client.reconnect() == 0
        accepter.join(10)
        link.client.loop_write()                               # CONNECT
        broker.read_packet()
        broker.conn.sendall(CONNACK_OK + packet(0x90, b"\x00\x01" + b"\x00" * (CAP + 1)))
        with capturedLogs():
            for _ in range(200):
                rc = link.client.loop_read()
                if rc != 0 or listener.lost:
                    break
        assert listener.lost or rc != 0
        assert link.refused_packets == 0
    finally:
        broker.close()


# -- config ------------------------------------------------------------------------------


def _master(tmp_path, **extra):
    from ate.config import master_config_from_dict

    base = {"device_id": "D1", "sites": ["0"], "Handler": "H", "jobsource": "filesystem",
            "jobformat": "xml.semi-ate", "filesystemdatasource_path": str(tmp_path),
            "filesystemdatasource_jobpattern": "x#jobname#.xml"}
    base.update(extra)
    return master_config_from_dict(base, source="m.json")


def test_config_key_default_and_value(tmp_path):
    from ate.config import mqtt_options_from_dict

    cfg = _master(tmp_path)
    assert cfg.mqtt.max_packet_size == 4 * 1024 * 1024
    cfg = _master(tmp_path, mqtt_max_packet_size=65536)
    assert cfg.mqtt.max_packet_size == 65536 and cfg.warnings == ()
    assert mqtt_options_from_dict({"mqtt_max_packet_size": 2048}).max_packet_size == 2048


@pytest.mark.parametrize("bad, words", [
    (100, "between 1024 and 268435455"),
    (268_435_456, "between 1024 and 268435455"),
    ("4MB", "must be an integer"),
    (True, "must be an integer"),
])
def test_config_key_validated(tmp_path, bad, words):
    from ate.config import ConfigError

    with pytest.raises(ConfigError) as e:
        _master(tmp_path, mqtt_max_packet_size=bad)
    assert str(e.value).startswith("m.json: mqtt_max_packet_size: ") and words in str(e.value)


def test_links_take_the_cap_from_the_options(tmp_path):
    from ate.mqtt import twistedlink
    from ate.mqtt.reactorpaho import ReactorPaho

    cfg = _master(tmp_path, mqtt_max_packet_size=5000)
    link = twistedlink.create(_Reactor().clock, cfg.mqtt, "c", None, _PahoListener())
    assert link._maxPacket == 5000
    paho_link = ReactorPaho.create(_Reactor(), cfg.mqtt, "c", None, _PahoListener())
    assert paho_link._maxPacket == 5000
