"""Field value encoders of the generic path (pure): one STDF field value to its bytes,
raising :class:`~ate.stdf.spec.RecordError` naming the field for a value it cannot write."""

from __future__ import annotations

import math
import struct
from numbers import Real
from typing import Any

from ate.stdf.spec import _INT_RANGE, _STRUCTS, RecordError, _short


def _check_int(name: str, kind: str, value: Any) -> int:
    if not isinstance(value, int):
        raise RecordError(name, f"expected an integer for {kind}, got {type(value).__name__}")
    lo, hi = _INT_RANGE[kind]
    if not lo <= value <= hi:
        raise RecordError(name, f"value {value} out of range for {kind} ({lo}..{hi})")
    return int(value)


def _check_float(name: str, kind: str, value: Any) -> float:
    if isinstance(value, (str, bytes)) or not isinstance(value, Real):
        raise RecordError(name, f"expected a number for {kind}, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float: IEEE rounding gives an infinity
        # numbers.Real declares no comparison operators in typeshed
        return math.inf if value > 0 else -math.inf  # type: ignore[operator]


def _pack_float(st: struct.Struct, value: float) -> bytes:
    try:
        return st.pack(value)
    except OverflowError:
        # Too large for R4: IEEE rounding gives an infinity of the same sign.
        return st.pack(math.copysign(math.inf, value))


def _str_bytes(name: str, value: Any) -> bytes:
    if isinstance(value, str):
        if not value.isascii():
            raise RecordError(name, f"text {_short(value)} is not ASCII")
        return value.encode("ascii")
    if isinstance(value, (bytes, bytearray)):
        if not value.isascii():
            raise RecordError(name, f"text {_short(value)} is not ASCII")
        return bytes(value)
    raise RecordError(name, f"expected a string, got {type(value).__name__}")


def _enc_cn(name: str, value: Any) -> bytes:
    if value is None:
        return b"\x00"
    data = _str_bytes(name, value)
    if len(data) > 255:
        raise RecordError(name, f"string of {len(data)} bytes is longer than 255 bytes")
    return bytes((len(data),)) + data


def _enc_c1(name: str, value: Any) -> bytes:
    if value is None:
        return b" "
    data = _str_bytes(name, value)
    if len(data) == 0:
        return b" "
    if len(data) != 1:
        raise RecordError(name, f"expected a single character, got {len(data)} bytes")
    return data


def _bit_bytes(name: str, value: Any, limit: int) -> bytes:
    """Bytes of a Bn/Dn field: an int (bit 0 = first item), bytes, or a list of bytes."""
    if value is None:
        return b""
    if isinstance(value, bool) or isinstance(value, int):
        if value < 0:
            raise RecordError(name, f"negative bit field value {value}")
        data = int(value).to_bytes(max(1, (int(value).bit_length() + 7) // 8), "little")
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if not isinstance(item, int) or not 0 <= item <= 255:
                raise RecordError(name, f"byte value {item!r} is not an integer 0..255")
        data = bytes(value)
    else:
        raise RecordError(name, f"expected an int, bytes or list of bytes, got "
                                f"{type(value).__name__}")
    if len(data) > limit:
        raise RecordError(name, f"bit field of {len(data)} bytes is longer than {limit}")
    return data


def _enc_array(name: str, kind: str, values: list, e: str) -> bytes:
    elem = kind[1:]
    if elem == "N1":
        nibbles = []
        for v in values:
            if not isinstance(v, int) or not 0 <= v <= 15:
                raise RecordError(name, f"nibble value {v!r} is not an integer 0..15")
            nibbles.append(v)
        if len(nibbles) % 2:
            nibbles.append(0)
        return bytes(nibbles[i] | (nibbles[i + 1] << 4) for i in range(0, len(nibbles), 2))
    st = _STRUCTS[e][elem]
    out = []
    for v in values:
        if elem == "R4":
            out.append(_pack_float(st, _check_float(name, elem, v)))
        else:
            out.append(st.pack(_check_int(name, elem, v)))
    return b"".join(out)
