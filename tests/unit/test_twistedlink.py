"""The pure-Twisted MQTT link (ate.mqtt.twistedlink) at the protocol level.

A fake endpoint connects the link to a StringTransport, a Clock drives the
keepalive, and the test plays the broker: it feeds bytes with dataReceived
and checks the bytes the link wrote and the calls its listener received.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from ate.mqtt.link import MqttLinkError
from ate.mqtt.twistedlink import TwistedLink, create, encode_remaining_length


def options(**kw):
    base = dict(host="127.0.0.1", port=1883, username=None, password=None, tls=False,
                tls_ca=None, tls_cert=None, tls_key=None, tls_insecure=False, keepalive=60,
                subscribe_qos=0)
    base.update(kw)
    return SimpleNamespace(**base)


class Transport(StringTransportWithDisconnection):
    """Records setTcpNoDelay and aborts; loss is reported synchronously."""

    nodelay = None
    aborted = False

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()

    def take(self) -> bytes:
        data = self.value()
        self.clear()
        return data


class Endpoint:
    """Connects each attempt to a fresh Transport (or fails / hangs)."""

    def __init__(self):
        self.transports: list[Transport] = []
        self.mode = "ok"

    def connect(self, factory):
        if self.mode == "fail":
            return fail(ConnectionRefusedError("nobody home"))
        if self.mode == "hang":
            return Deferred()
        proto = factory.buildProtocol(None)
        t = Transport()
        t.protocol = proto
        self.transports.append(t)
        proto.makeConnection(t)
        return succeed(proto)


class Listener:
    def __init__(self):
        self.calls: list[tuple] = []

    def link_connected(self, accepted, reason):
        self.calls.append(("connected", accepted, reason))

    def link_lost(self, reason):
        self.calls.append(("lost", reason))

    def link_message(self, topic, payload, qos):
        self.calls.append(("message", topic, payload, qos))

    def link_published(self, mid):
        self.calls.append(("published", mid))

    def link_subscribed(self, mid, failures):
        self.calls.append(("subscribed", mid, list(failures)))

    def take(self):
        calls, self.calls = self.calls, []
        return calls


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_remaining_length(len(body)) + body


def publish_in(topic: str, payload: bytes, qos: int = 0, mid: int = 0, dup: bool = False) -> bytes:
    t = topic.encode()
    body = struct.pack(">H", len(t)) + t + (struct.pack(">H", mid) if qos else b"") + payload
    return packet(0x30 | (qos << 1) | (0x08 if dup else 0), body)


def ack(first: int, mid: int) -> bytes:
    return bytes((first, 2)) + struct.pack(">H", mid)


CONNACK_OK = b"\x20\x02\x00\x00"


class Harness:
    def __init__(self, **kw):
        will = kw.pop("will", None)
        client_id = kw.pop("client_id", "c1")
        self.clock = Clock()
        self.listener = Listener()
        self.endpoint = Endpoint()
        self.link = TwistedLink(self.clock, options(**kw), client_id, will, self.listener,
                                endpoint=self.endpoint)
        self.link.start()

    @property
    def transport(self) -> Transport:
        return self.endpoint.transports[-1]

    def feed(self, data: bytes) -> None:
        self.transport.protocol.dataReceived(data)

    def connect(self, accept: bool = True) -> None:
        done = []
        self.link.connect().addCallback(done.append)
        assert done == [None]
        self.transport.take()  # CONNECT
        if accept:
            self.feed(CONNACK_OK)
            assert self.listener.take() == [("connected", True, "Success")]


# -- encoding -------------------------------------------------------------


@pytest.mark.parametrize("n, encoded", [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"), (2097152, b"\x80\x80\x80\x01"),
    (268435455, b"\xff\xff\xff\x7f"),
])
def test_remaining_length_encoding(n, encoded):
    assert encode_remaining_length(n) == encoded


def test_remaining_length_beyond_mqtt_limit_is_refused():
    with pytest.raises(ValueError):
        encode_remaining_length(268435456)


# -- CONNECT / CONNACK ------------------------------------------------------


def test_connect_writes_connect_with_will_credentials_keepalive_clean_session():
    h = Harness(client_id="c1", keepalive=30, username="u", password="p",
                will=("w/t", b"bye", 1))
    fired = []
    h.link.connect().addCallback(fired.append)
    assert fired == [None]
    assert h.transport.take() == (
        b"\x10\x1e" b"\x00\x04MQTT\x04" + bytes((0x80 | 0x40 | 0x08 | 0x04 | 0x02,))
        + b"\x00\x1e" b"\x00\x02c1" b"\x00\x03w/t" b"\x00\x03bye" b"\x00\x01u" b"\x00\x01p")
    assert h.transport.nodelay is True
    assert h.listener.calls == []  # nothing until the CONNACK


def test_connect_minimal_and_password_without_user_is_not_sent():
    h = Harness(client_id="x", keepalive=60, password="secret")
    h.link.connect()
    assert h.transport.take() == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01x"


def test_will_qos2_sets_will_flags_and_never_retain():
    h = Harness(client_id="x", will=("t", b"", 2))
    h.link.connect()
    data = h.transport.take()
    assert data[9] == 0x04 | (2 << 3) | 0x02  # will, will QoS 2, clean session; no retain


def test_connack_accepted_reports_connected():
    h = Harness()
    h.link.connect()
    h.feed(CONNACK_OK)
    assert h.listener.take() == [("connected", True, "Success")]
    assert h.transport.connected


def test_connack_refused_reports_reason_then_closes():
    h = Harness()
    h.link.connect()
    h.feed(b"\x20\x02\x00\x05")
    calls = h.listener.take()
    assert calls[0] == ("connected", False, "Not authorized")
    assert calls[1][0] == "lost" and "Not authorized" in calls[1][1]
    assert len(calls) == 2
    assert not h.transport.connected


def test_connect_failure_errbacks_and_a_second_attempt_while_connecting_is_refused():
    h = Harness()
    h.endpoint.mode = "fail"
    failures = []
    h.link.connect().addErrback(failures.append)
    assert failures and failures[0].check(ConnectionRefusedError)
    h.endpoint.mode = "hang"
    h.link.connect()
    with pytest.raises(MqttLinkError):
        h.link.connect()


def test_reconnect_drops_a_leftover_connection_silently():
    h = Harness()
    h.connect()
    old = h.transport
    h.link.connect()
    assert old.aborted and h.transport is not old
    assert h.listener.take() == []  # the old connection's loss is not reported
    h.feed(CONNACK_OK)
    assert h.listener.take() == [("connected", True, "Success")]


# -- SUBSCRIBE ---------------------------------------------------------------


def test_subscribe_and_suback_with_a_refused_filter():
    h = Harness()
    h.connect()
    assert h.link.subscribe([]) is None
    mid = h.link.subscribe([("a/#", 2), ("b", 0)])
    assert mid == 1
    assert h.transport.take() == b"\x82\x0c\x00\x01\x00\x03a/#\x02\x00\x01b\x00"
    h.feed(b"\x90\x04\x00\x01\x02\x80")
    assert h.listener.take() == [("subscribed", 1, ["Unspecified error"])]


def test_subscribe_without_connection_raises():
    h = Harness()
    with pytest.raises(MqttLinkError):
        h.link.subscribe([("a", 0)])


# -- PUBLISH in ----------------------------------------------------------------


def test_publish_in_qos0_delivered_nothing_written():
    h = Harness()
    h.connect()
    h.feed(publish_in("a/b", b"hello"))
    assert h.listener.take() == [("message", "a/b", b"hello", 0)]
    assert h.transport.take() == b""


def test_publish_in_qos1_delivered_then_puback():
    h = Harness()
    h.connect()
    h.feed(publish_in("a/b", b"one", qos=1, mid=7))
    assert h.listener.take() == [("message", "a/b", b"one", 1)]
    assert h.transport.take() == ack(0x40, 7)


def test_publish_in_qos2_waits_for_pubrel_delivers_once():
    h = Harness()
    h.connect()
    h.feed(publish_in("a/ü", b"two", qos=2, mid=300))
    assert h.listener.take() == []
    assert h.transport.take() == ack(0x50, 300)  # PUBREC
    h.feed(publish_in("a/ü", b"two", qos=2, mid=300, dup=True))  # broker resends
    assert h.listener.take() == []
    assert h.transport.take() == ack(0x50, 300)
    h.feed(ack(0x62, 300))  # PUBREL
    assert h.listener.take() == [("message", "a/ü", b"two", 2)]
    assert h.transport.take() == ack(0x70, 300)  # PUBCOMP
    h.feed(ack(0x62, 300))  # a repeated PUBREL: completed again, not delivered again
    assert h.listener.take() == []
    assert h.transport.take() == ack(0x70, 300)


def test_listener_exception_is_logged_and_reading_goes_on(no_logged_errors):
    h = Harness()
    h.connect()

    def boom(topic, payload, qos):
        h.listener.calls.append(("message", topic))
        raise RuntimeError("handler bug")

    h.listener.link_message = boom
    with capturedLogs() as events:
        h.feed(publish_in("a", b"1", qos=1, mid=1) + publish_in("b", b"2", qos=1, mid=2))
    assert h.listener.take() == [("message", "a"), ("message", "b")]
    assert h.transport.take() == ack(0x40, 1) + ack(0x40, 2)
    assert sum(1 for e in events if e.get("log_failure") is not None) == 2
    assert len(no_logged_errors) == 2
    no_logged_errors.clear()  # the two failures above are the point of the test


# -- PUBLISH out ---------------------------------------------------------------


def test_publish_out_qos0_written_and_reported_in_a_later_turn():
    h = Harness()
    h.connect()
    mid = h.link.publish("t/x", b"zero", 0)
    assert h.transport.take() == publish_in("t/x", b"zero")
    assert h.listener.take() == []  # not before publish() returned
    h.clock.advance(0)
    assert h.listener.take() == [("published", mid)]


def test_publish_out_qos0_not_connected_raises_and_lost_ones_are_not_reported():
    h = Harness()
    with pytest.raises(MqttLinkError):
        h.link.publish("t", b"x", 0)
    h.connect()
    h.link.publish("t", b"x", 0)
    h.transport.loseConnection()
    h.clock.advance(0)
    assert [c[0] for c in h.listener.take()] == ["lost"]


def test_publish_out_bad_arguments_raise_value_error():
    h = Harness()
    h.connect()
    for topic, qos in [("", 0), ("a/+", 1), ("a/#", 0), ("t", 3)]:
        with pytest.raises(ValueError):
            h.link.publish(topic, b"x", qos)


def test_publish_out_qos1_puback_reports_published():
    h = Harness()
    h.connect()
    mid = h.link.publish("t", b"one", 1)
    assert h.transport.take() == publish_in("t", b"one", qos=1, mid=mid)
    h.feed(ack(0x40, mid + 1))  # unknown mid: ignored
    assert h.listener.take() == []
    h.feed(ack(0x40, mid))
    assert h.listener.take() == [("published", mid)]


def test_publish_out_qos2_pubrec_pubrel_pubcomp_reports_published():
    h = Harness()
    h.connect()
    mid = h.link.publish("t", b"two", 2)
    assert h.transport.take() == publish_in("t", b"two", qos=2, mid=mid)
    h.feed(ack(0x50, mid))
    assert h.transport.take() == ack(0x62, mid)  # PUBREL
    assert h.listener.take() == []
    h.feed(ack(0x70, mid))
    assert h.listener.take() == [("published", mid)]


def test_inflight_window_of_20_with_a_queue_beyond():
    h = Harness()
    h.connect()
    mids = [h.link.publish("t", str(i).encode(), 1) for i in range(25)]
    assert mids == list(range(1, 26))
    assert h.transport.take() == b"".join(
        publish_in("t", str(i).encode(), qos=1, mid=mids[i]) for i in range(20))
    h.feed(ack(0x40, mids[3]))
    assert h.transport.take() == publish_in("t", b"20", qos=1, mid=mids[20])
    assert h.listener.take() == [("published", mids[3])]
    # a new message waits behind the queue
    late = h.link.publish("t", b"late", 2)
    assert h.transport.take() == b""
    h.feed(b"".join(ack(0x40, m) for m in mids[:3] + mids[4:20]))
    assert h.transport.take() == b"".join(
        publish_in("t", str(i).encode(), qos=1, mid=mids[i]) for i in range(21, 25)
    ) + publish_in("t", b"late", qos=2, mid=late)


def test_unacked_messages_resent_after_reconnect_with_dup():
    h = Harness()
    h.connect()
    a = h.link.publish("t", b"a", 1)
    b = h.link.publish("t", b"b", 2)
    h.feed(ack(0x50, b))  # PUBREC: b is released but not complete
    h.transport.take()
    h.transport.loseConnection()
    calls = h.listener.take()
    assert len(calls) == 1 and calls[0][0] == "lost" and "Bye." in calls[0][1]
    c = h.link.publish("t", b"c", 1)  # while disconnected: queued
    h.connect()
    assert h.transport.take() == (publish_in("t", b"a", qos=1, mid=a, dup=True)
                                  + publish_in("t", b"b", qos=2, mid=b, dup=True)
                                  + publish_in("t", b"c", qos=1, mid=c))
    h.feed(ack(0x40, a) + ack(0x50, b) + ack(0x70, b) + ack(0x40, c))
    assert h.listener.take() == [("published", a), ("published", b), ("published", c)]


def test_mids_wrap_and_skip_unacked_ones():
    h = Harness()
    h.connect()
    first = h.link.publish("t", b"keep", 1)  # mid 1 stays unacked
    h.link._lastMid = 65534
    assert h.link.publish("t", b"x", 0) == 65535
    assert h.link.publish("t", b"y", 0) == 2  # 1 is still in use
    assert first == 1


# -- remaining-length edge cases, both directions -------------------------------


@pytest.mark.parametrize("remaining", [127, 128, 16383, 16384, 2 * 1024 * 1024])
def test_publish_sizes_at_remaining_length_boundaries(remaining):
    h = Harness()
    h.connect()
    payload = bytes(range(256)) * (remaining // 256 + 1)
    payload = payload[:remaining - 2 - 1]  # topic "t": 2 length bytes + 1
    data = publish_in("t", payload)
    header = len(encode_remaining_length(remaining))
    assert len(data) == 1 + header + remaining
    h.feed(data)
    assert h.listener.take() == [("message", "t", payload, 0)]
    h.link.publish("t", payload, 0)
    assert h.transport.take() == data


# -- packets split across reads ---------------------------------------------------


def _stream_after_connect() -> bytes:
    return b"".join([
        b"\x90\x03\x00\x01\x01",  # SUBACK for mid 1
        publish_in("s/0", b"q0"),
        publish_in("s/1", bytes(200), qos=1, mid=9),  # two-byte remaining length
        publish_in("s/2", b"q2", qos=2, mid=10),
        ack(0x62, 10),  # PUBREL
        b"\xd0\x00",  # PINGRESP
        ack(0x40, 2),  # PUBACK for our publish
        ack(0x50, 3), ack(0x70, 3),  # PUBREC, PUBCOMP for our QoS 2 publish
        publish_in("s/end", b"last" * 40),
    ])


def _run_stream(chunks) -> tuple[list, bytes]:
    h = Harness()
    h.connect()
    h.link.subscribe([("s/#", 2)])
    h.link.publish("o", b"1", 1)
    h.link.publish("o", b"2", 2)
    h.transport.take()
    for chunk in chunks:
        h.feed(chunk)
    return h.listener.take(), h.transport.take()


def test_packets_split_at_every_byte_boundary_give_the_same_result():
    stream = _stream_after_connect()
    expected = _run_stream([stream])
    assert [c[0] for c in expected[0]] == ["subscribed", "message", "message", "message",
                                           "published", "published", "message"]
    for i in range(1, len(stream)):
        assert _run_stream([stream[:i], stream[i:]]) == expected, f"split at {i}"
    assert _run_stream([stream[i:i + 1] for i in range(len(stream))]) == expected


# -- malformed input -----------------------------------------------------------------


@pytest.mark.parametrize("bad, words", [
    (b"\x30\xff\xff\xff\xff\x01", "4 bytes"),
    (b"\x00\x00", "type 0"),
    (b"\x10\x00", "type 1"),
    (b"\xc0\x00", "type 12"),
    (publish_in("t", b"x", qos=1, mid=1)[:1] + b"\x01\x00", "PUBLISH"),
    (b"\x30\x05\x00\x09abc", "PUBLISH"),
    (b"\x30\x04\x00\x02\xff\xfe", "UTF-8"),
    (bytes((0x36,)) + publish_in("t", b"x", qos=1, mid=1)[1:], "QoS 3"),
    (b"\x60\x02\x00\x01", "type 6"),
    (b"\x40\x03\x00\x01\x00", "length 3"),
    (b"\x20\x02\x00\x00", "type 2"),  # a second CONNACK
])
def test_malformed_packet_aborts_with_a_reason_and_never_raises(bad, words):
    h = Harness()
    h.connect()
    h.feed(bad + publish_in("after", b"never"))
    calls = h.listener.take()
    assert len(calls) == 1 and calls[0][0] == "lost", calls
    assert "protocol error" in calls[0][1] and words in calls[0][1]
    assert h.transport.aborted and not h.transport.connected
    h.feed(publish_in("later", b"ignored"))  # late data after the loss: ignored
    assert h.listener.take() == []


def test_packet_before_connack_is_a_protocol_error():
    h = Harness()
    h.link.connect()
    h.feed(publish_in("t", b"x"))
    calls = h.listener.take()
    assert len(calls) == 1 and calls[0][0] == "lost" and "expected CONNACK" in calls[0][1]


def test_malformed_packet_in_a_buffered_read_aborts_too():
    h = Harness()
    h.connect()
    h.feed(b"\x30")
    h.feed(b"\x05\x00\x09abc")
    calls = h.listener.take()
    assert len(calls) == 1 and "protocol error" in calls[0][1]


# -- keepalive -----------------------------------------------------------------------


def test_pingreq_at_keepalive_and_drop_without_pingresp():
    h = Harness(keepalive=10)
    h.connect()
    h.clock.advance(9.5)
    assert h.transport.take() == b""
    h.clock.advance(0.5)
    assert h.transport.take() == b"\xc0\x00"  # PINGREQ
    h.clock.advance(5)
    h.feed(b"\xd0\x00")  # PINGRESP
    h.clock.advance(5)  # 10 s since the PINGREQ, nothing received since 15 s... ping again
    assert h.transport.take() == b"\xc0\x00"
    h.clock.advance(9.9)
    assert h.listener.take() == []
    h.clock.advance(0.1)  # no PINGRESP within keepalive
    calls = h.listener.take()
    assert len(calls) == 1 and calls[0][0] == "lost" and "PINGRESP" in calls[0][1]
    assert h.transport.aborted


def test_traffic_both_ways_postpones_the_ping():
    h = Harness(keepalive=10)
    h.connect()
    h.clock.advance(6)
    h.link.publish("t", b"x", 0)  # out
    h.feed(publish_in("t", b"y"))  # in
    h.transport.take()
    h.clock.advance(4)
    assert h.transport.take() == b""
    h.clock.advance(6)
    assert h.transport.take() == b"\xc0\x00"


def test_only_outgoing_traffic_still_pings():
    h = Harness(keepalive=10)
    h.connect()
    for _ in range(10):
        h.clock.advance(1)
        h.link.publish("t", b"x", 0)
    assert b"\xc0\x00" in h.transport.take()


def test_no_keepalive_timer_left_after_loss_or_stop():
    h = Harness(keepalive=10)
    h.connect()
    h.link.publish("t", b"x", 0)
    h.transport.loseConnection()
    h.link.stop()
    assert h.clock.getDelayedCalls() == []


# -- disconnect / abort ----------------------------------------------------------------


def test_disconnect_writes_disconnect_then_closes():
    h = Harness()
    h.connect()
    h.link.disconnect()
    assert h.transport.value() == b"\xe0\x00"
    assert not h.transport.connected and not h.transport.aborted
    assert h.listener.take() == [("lost", "disconnected")]
    h.link.disconnect()  # no connection: nothing happens
    h.link.abort()


def test_abort_drops_without_disconnect():
    h = Harness()
    h.connect()
    h.link.abort()
    assert h.transport.value() == b""
    assert h.transport.aborted
    calls = h.listener.take()
    assert len(calls) == 1 and calls[0][0] == "lost"


def test_remote_close_reports_lost():
    h = Harness()
    h.connect()
    h.transport.protocol.connectionLost(Failure(ConnectionDone("closed by peer")))
    calls = h.listener.take()
    assert len(calls) == 1 and calls[0][0] == "lost" and "closed by peer" in calls[0][1]


# -- selection ----------------------------------------------------------------------------


def test_create_signature():
    opts = options()
    link = create(Clock(), opts, "cid", None, Listener())
    assert isinstance(link, TwistedLink)
