"""MQTT 3.1.1 packet encoding for the Twisted link (L{ate.mqtt.twistedlink}); pure.

The fixed-header length, the UTF-8 / binary fields and the CONNECT packet; the small
constant packets and the CONNACK refusal reasons. Decoding lives in the link's parser,
which slices packets out of the reactor's chunks in place.
"""

from __future__ import annotations

import struct

__all__ = ["ACK", "CONNACK_REASONS", "DISCONNECT", "MAX_REMAINING_LENGTH", "PINGREQ",
           "connect_packet", "encode_remaining_length", "pack_H", "utf8"]

MAX_REMAINING_LENGTH = 268_435_455

pack_H = struct.Struct(">H").pack
ACK = struct.Struct(">BBH").pack  # PUBACK / PUBREC / PUBREL / PUBCOMP
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"

CONNACK_REASONS = {
    1: "Unsupported protocol version",
    2: "Client identifier not valid",
    3: "Server unavailable",
    4: "Bad user name or password",
    5: "Not authorized",
}

_SMALL_LENGTHS = [bytes((n,)) for n in range(128)]


def encode_remaining_length(n: int) -> bytes:
    """MQTT variable-length encoding of a packet's remaining length."""
    if n < 128:
        if n < 0:
            raise ValueError(f"remaining length must be >= 0, got {n}")
        return _SMALL_LENGTHS[n]
    if n > MAX_REMAINING_LENGTH:
        raise ValueError(
            f"packet too large for MQTT: remaining length {n} > {MAX_REMAINING_LENGTH}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def utf8(what: str, value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 65535:
        raise ValueError(f"{what} is longer than 65535 bytes in UTF-8")
    return pack_H(len(raw)) + raw


def _binary(what: str, value: bytes) -> bytes:
    if len(value) > 65535:
        raise ValueError(f"{what} is longer than 65535 bytes")
    return pack_H(len(value)) + bytes(value)


def connect_packet(client_id: str, keepalive: int, will: tuple[str, bytes, int] | None,
                   username: str | None, password: str | bytes | None) -> bytes:
    """The CONNECT packet: MQTT 3.1.1, clean session, non-retained will."""
    flags = 0x02  # clean session
    payload = [utf8("client id", client_id)]
    if will is not None:
        topic, message, qos = will
        flags |= 0x04 | (qos << 3)
        payload.append(utf8("will topic", topic))
        payload.append(_binary("will message", message))
    if username is not None:
        flags |= 0x80
        payload.append(utf8("user name", username))
        if password is not None:
            flags |= 0x40
            raw = password.encode("utf-8") if isinstance(password, str) else password
            payload.append(_binary("password", raw))
    if not 0 <= keepalive <= 65535:
        raise ValueError(f"keepalive must be 0..65535, got {keepalive}")
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + pack_H(keepalive) + b"".join(payload)
    return b"\x10" + encode_remaining_length(len(body)) + body
