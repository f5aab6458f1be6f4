"""Reading STDF V4 files back (pure): :func:`iter_records` and :func:`decode` (either
endianness), and :func:`ascii_patch`, which recovery uses to make the text of a record ASCII
in place. What crash recovery needs, not a full-featured reader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from ate.stdf.spec import _BY_TYPE, _HEADER, _SIZES, _SPECS, _STRUCT_CODE, _STRUCTS, _Spec

# ---------------------------------------------------------------------------------------
# Patching text to ASCII in place (recovery)
# ---------------------------------------------------------------------------------------


def _layout(spec: _Spec) -> tuple[tuple, ...]:
    """The walk over a record body that finds its text: runs of fixed-size fields merged
    into one skip; count fields kept (the arrays after them need their value)."""
    counts = {f.count for f in spec.fields if f.count}
    steps: list[tuple] = []
    for fld in spec.fields:
        kind = fld.kind
        if kind in _SIZES and fld.name not in counts:
            if steps and steps[-1][0] == "skip":
                steps[-1] = ("skip", steps[-1][1] + _SIZES[kind])
            else:
                steps.append(("skip", _SIZES[kind]))
        elif kind in _SIZES:
            steps.append(("count", fld.name, kind))
        elif kind.startswith("k"):
            steps.append(("array", fld.count, kind[1:]))
        else:
            steps.append((kind,))
    return tuple(steps)


_LAYOUTS = {name: _layout(spec) for name, spec in _SPECS.items()}


def ascii_patch(raw: "RawRecord", endian: str = "<") -> bytes | None:
    """The body of ``raw`` with every non-ASCII byte of its text fields replaced by ``?``
    (same length, so a file can be patched in place), or None if there is none."""
    body = raw.body
    if body.isascii():
        return None
    spec = _BY_TYPE.get((raw.rec_typ, raw.rec_sub))
    if spec is None:
        return None
    size = len(body)
    pos = 0
    counts: dict[str, int] = {}
    bad: list[tuple[int, int]] = []
    for step in _LAYOUTS[spec.name]:
        if pos >= size:
            break
        op = step[0]
        if op == "skip":
            pos += step[1]
        elif op == "Cn":
            end = min(pos + 1 + body[pos], size)
            if not body[pos + 1:end].isascii():
                bad.append((pos + 1, end))
            pos = end
        elif op == "C1":
            if body[pos] >= 0x80:
                bad.append((pos, pos + 1))
            pos += 1
        elif op == "count":
            n = _SIZES[step[2]]
            counts[step[1]] = int.from_bytes(body[pos:pos + n],
                                             "little" if endian == "<" else "big")
            pos += n
        elif op == "array":
            n = counts.get(step[1], 0)
            pos += (n + 1) // 2 if step[2] == "N1" else n * _SIZES[step[2]]
        elif op == "Bn":
            pos += 1 + body[pos]
        elif op == "Dn":
            if pos + 2 > size:
                break
            bits = int.from_bytes(body[pos:pos + 2], "little" if endian == "<" else "big")
            pos += 2 + (bits + 7) // 8
    if not bad:
        return None
    out = bytearray(body)
    for start, end in bad:
        for i in range(start, end):
            if out[i] >= 0x80:
                out[i] = 0x3F
    return bytes(out)


# ---------------------------------------------------------------------------------------
# Decoding (recovery)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as found in a file: type, sub-type, offset of its header, body bytes."""

    rec_typ: int
    rec_sub: int
    offset: int
    body: bytes

    @property
    def name(self) -> str | None:
        spec = _BY_TYPE.get((self.rec_typ, self.rec_sub))
        return spec.name if spec else None

    @property
    def end(self) -> int:
        return self.offset + 4 + len(self.body)


def detect_endian(head: bytes) -> str:
    """Endianness of a file from its first bytes (the FAR). Raises ValueError if not STDF."""
    if len(head) < 6 or head[2] != 0 or head[3] != 10:
        raise ValueError("file does not start with an STDF FAR record")
    cpu = head[4]
    if cpu == 2:
        return "<"
    if cpu == 1:
        return ">"
    # Unknown CPU type: guess from REC_LEN (the FAR body is 2 bytes long).
    if head[0:2] == b"\x02\x00":
        return "<"
    if head[0:2] == b"\x00\x02":
        return ">"
    raise ValueError(f"cannot tell the byte order of CPU_TYPE {cpu}")


def iter_records(data: bytes | BinaryIO, endian: str | None = None) -> Iterator[RawRecord]:
    """Yield the complete records of an STDF file (bytes or a binary file object).

    Stops silently at a torn last record; compare the last ``RawRecord.end`` with the
    data length to find it. The byte order comes from the FAR unless ``endian`` is given.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = data.read()
    data = bytes(data)
    e = endian or detect_endian(data[:6])
    hdr = _HEADER[e]
    pos, size = 0, len(data)
    while pos + 4 <= size:
        length, typ, sub = hdr.unpack_from(data, pos)
        end = pos + 4 + length
        if end > size:
            return
        yield RawRecord(typ, sub, pos, data[pos + 4:end])
        pos = end


class _Reader:
    def __init__(self, body: bytes, e: str) -> None:
        self.body, self.e, self.pos = body, e, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.body):
            raise EOFError
        out = self.body[self.pos:self.pos + n]
        self.pos += n
        return out

    def num(self, kind: str):
        st = _STRUCTS[self.e][kind]
        return st.unpack(self.take(st.size))[0]


def decode(raw: RawRecord, endian: str = "<") -> dict[str, Any]:
    """Decode a raw record into a dict with ``type`` and its fields.

    Fields cut off by a short record are ``None`` (STDF allows truncated trailing fields).
    Strings are decoded as UTF-8 (invalid bytes replaced). Raises ValueError for an
    unknown record type.
    """
    spec = _BY_TYPE.get((raw.rec_typ, raw.rec_sub))
    if spec is None:
        raise ValueError(f"unknown record type ({raw.rec_typ}, {raw.rec_sub})")
    out: dict[str, Any] = {"type": spec.name}
    rd = _Reader(raw.body, endian)
    try:
        for fld in spec.fields:
            kind = fld.kind
            if kind == "Cn":
                out[fld.name] = rd.take(rd.take(1)[0]).decode("utf-8", "replace")
            elif kind == "C1":
                out[fld.name] = rd.take(1).decode("latin-1")
            elif kind in _STRUCT_CODE:
                out[fld.name] = rd.num(kind)
            elif kind == "Bn":
                out[fld.name] = list(rd.take(rd.take(1)[0]))
            elif kind == "Dn":
                bits = rd.num("U2")
                out[fld.name] = list(rd.take((bits + 7) // 8))
            else:
                n = out.get(cast(str, fld.count)) or 0  # an array field has a count
                elem = kind[1:]
                if elem == "N1":
                    packed = rd.take((n + 1) // 2)
                    vals: list[int] = []
                    for b in packed:
                        vals.extend((b & 0x0F, b >> 4))
                    out[fld.name] = vals[:n]
                else:
                    out[fld.name] = [rd.num(elem) for _ in range(n)]
    except EOFError:
        for fld in spec.fields:
            out.setdefault(fld.name, None)
    return out
