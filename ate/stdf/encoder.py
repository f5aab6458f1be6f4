"""The STDF V4 record encoder (pure): :func:`encode` and the per-endianness
:data:`ENCODERS` table, with fast paths for the hot records (PIR, PTR, PRR) and the
generic, spec-driven path for the rest; with a :class:`~ate.stdf.fixes.Fixes` collector a
record the generic path refuses is sanitised (``ate.stdf.fixes``) and encoded again."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, cast

from ate.stdf.fixes import Fixes, _sanitise
from ate.stdf.spec import (
    _FLAG_BASE,
    _FLAG_USERS,
    _HEADER,
    _INT_RANGE,
    _SPECS,
    _STRUCTS,
    RecordError,
    _Field,
    _Spec,
    _spec_of,
)
from ate.stdf.values import (
    _bit_bytes,
    _check_float,
    _check_int,
    _enc_array,
    _enc_c1,
    _enc_cn,
    _pack_float,
)

# ---------------------------------------------------------------------------------------
# Generic path
# ---------------------------------------------------------------------------------------


def _resolve_counts(spec: _Spec, rec: Mapping[str, Any]) -> dict[str, int]:
    """Element count of every count field, checked against the arrays it governs."""
    counts: dict[str, int] = {}
    arrays: dict[str, list[_Field]] = {}
    for fld in spec.fields:
        if fld.count:
            arrays.setdefault(fld.count, []).append(fld)
    for cname, flds in arrays.items():
        given = rec.get(cname)
        lengths = {}
        for fld in flds:
            v = rec.get(fld.name)
            if v is None:
                continue
            if not isinstance(v, (list, tuple)):
                raise RecordError(fld.name, f"expected a list, got {type(v).__name__}")
            lengths[fld.name] = len(v)
        if given is None:
            n = max(lengths.values(), default=0)
        else:
            n = _check_int(cname, "U1" if spec.name == "SDR" else "U2", given)
        for fld in flds:
            if lengths.get(fld.name, 0) != n:
                if fld.name not in lengths and n:
                    raise RecordError(fld.name, f"missing, but {cname} is {n}")
                if fld.name in lengths:
                    raise RecordError(fld.name, f"has {lengths[fld.name]} elements, but "
                                                f"{cname} is {n}")
        counts[cname] = n
    return counts


def _encode_generic(spec: _Spec, rec: Mapping[str, Any], e: str) -> bytes:
    structs = _STRUCTS[e]
    counts = _resolve_counts(spec, rec) if any(f.count for f in spec.fields) else {}
    missing_bits: dict[str, int] = {}
    for fld in _FLAG_USERS[spec.name]:
        if rec.get(fld.name) is None:
            flag = cast(str, fld.flag)  # _FLAG_USERS holds flagged fields only
            missing_bits[flag] = missing_bits.get(flag, 0) | fld.bit
    base = _FLAG_BASE[spec.name]
    parts: list[bytes] = []
    for fld in spec.fields:
        name, kind = fld.name, fld.kind
        value = rec.get(name)
        if name in counts:
            value = counts[name]
        if name in base or name in missing_bits:
            if value is None:
                value = base.get(name, 0)
            value = _check_int(name, kind, value) | missing_bits.get(name, 0)
        if kind == "Cn":
            parts.append(_enc_cn(name, value))
        elif kind == "C1":
            parts.append(_enc_c1(name, value))
        elif kind in ("R4", "R8"):
            if value is None:
                value = fld.missing if fld.missing is not None else 0.0
            parts.append(_pack_float(structs[kind], _check_float(name, kind, value)))
        elif kind in _INT_RANGE:
            if value is None:
                value = fld.missing if fld.missing is not None else 0
                if spec.name == "FAR" and name == "CPU_TYPE":
                    value = 2 if e == "<" else 1
            parts.append(structs[kind].pack(_check_int(name, kind, value)))
        elif kind == "Bn":
            data = _bit_bytes(name, value, 255)
            parts.append(bytes((len(data),)) + data)
        elif kind == "Dn":
            data = _bit_bytes(name, value, 8191)
            parts.append(structs["U2"].pack(len(data) * 8) + data)
        elif kind.startswith("k"):
            parts.append(_enc_array(name, kind, list(value or ()), e))
        else:  # pragma: no cover - specification error
            raise RecordError(name, f"unsupported field kind {kind}")
    body = b"".join(parts)
    if len(body) > 0xFFFF:
        raise RecordError("REC_LEN", f"record body of {len(body)} bytes exceeds 65535")
    return _HEADER[e].pack(len(body), spec.typ, spec.sub) + body


# ---------------------------------------------------------------------------------------
# The total encoder: a record the generic path refuses, sanitised and encoded again
# ---------------------------------------------------------------------------------------


def _encode_total(spec: _Spec, rec: Mapping[str, Any], e: str, fixes: Fixes | None) -> bytes:
    """The generic encoder; with ``fixes``, a record it refuses is sanitised and encoded
    again (clean records pay nothing for that)."""
    try:
        return _encode_generic(spec, rec, e)
    except (RecordError, TypeError, OverflowError):
        if fixes is None:
            raise
    return _encode_generic(spec, _sanitise(spec, rec, fixes), e)


# ---------------------------------------------------------------------------------------
# Fast paths for the hot records (PIR, PTR, PRR)
# ---------------------------------------------------------------------------------------

_CN_CACHE: dict[Any, bytes] = {}
_CN_CACHE_MAX = 8192


def _cn_fast(value: Any) -> bytes:
    """Encoded Cn of a string, cached (test names, units and formats repeat per part)."""
    try:
        return _CN_CACHE[value]
    except KeyError:
        pass
    if value is None:
        return b"\x00"
    if type(value) is not str or not value.isascii() or len(value) > 255:
        raise ValueError("not plain ASCII text of at most 255 bytes")
    data = value.encode("ascii")
    out = bytes((len(data),)) + data
    if len(_CN_CACHE) >= _CN_CACHE_MAX:
        _CN_CACHE.clear()
    _CN_CACHE[value] = out
    return out


_FAST_ERRORS = (struct.error, KeyError, TypeError, ValueError, OverflowError)


def _make_fast(e: str):
    pir_s = struct.Struct(e + "HBBBB")
    ptr_h = struct.Struct(e + "HBB")
    ptr_a = struct.Struct(e + "IBBBBf")
    ptr_b = struct.Struct(e + "Bbbbff")
    ptr_c = struct.Struct(e + "ff")
    prr_a = struct.Struct(e + "BBBHHHhhI")
    spec_ptr, spec_prr, spec_pir = _SPECS["PTR"], _SPECS["PRR"], _SPECS["PIR"]

    def pir(r: Mapping[str, Any], fixes: Fixes | None = None) -> bytes:
        try:
            return pir_s.pack(2, 5, 10, r["HEAD_NUM"], r["SITE_NUM"])
        except _FAST_ERRORS:
            return _encode_total(spec_pir, r, e, fixes)

    def ptr(r: Mapping[str, Any], fixes: Fixes | None = None) -> bytes:
        try:
            body = b"".join((
                ptr_a.pack(r["TEST_NUM"], r["HEAD_NUM"], r["SITE_NUM"], r["TEST_FLG"],
                           r["PARM_FLG"], r["RESULT"]),
                _cn_fast(r["TEST_TXT"]), _cn_fast(r["ALARM_ID"]),
                ptr_b.pack(r["OPT_FLAG"], r["RES_SCAL"], r["LLM_SCAL"], r["HLM_SCAL"],
                           r["LO_LIMIT"], r["HI_LIMIT"]),
                _cn_fast(r["UNITS"]), _cn_fast(r["C_RESFMT"]), _cn_fast(r["C_LLMFMT"]),
                _cn_fast(r["C_HLMFMT"]),
                ptr_c.pack(r["LO_SPEC"], r["HI_SPEC"]),
            ))
            return ptr_h.pack(len(body), 15, 10) + body
        except _FAST_ERRORS:
            return _encode_total(spec_ptr, r, e, fixes)

    def prr(r: Mapping[str, Any], fixes: Fixes | None = None) -> bytes:
        try:
            fix = r["PART_FIX"]
            if fix is None:
                fixb = b"\x00"
            elif type(fix) is int and 0 <= fix <= 255:
                fixb = b"\x01" + bytes((fix,))
            else:
                raise TypeError("slow path")
            body = b"".join((
                prr_a.pack(r["HEAD_NUM"], r["SITE_NUM"], r["PART_FLG"], r["NUM_TEST"],
                           r["HARD_BIN"], r["SOFT_BIN"], r["X_COORD"], r["Y_COORD"],
                           r["TEST_T"]),
                _cn_fast(r["PART_ID"]), _cn_fast(r["PART_TXT"]), fixb,
            ))
            return ptr_h.pack(len(body), 5, 20) + body
        except _FAST_ERRORS:
            return _encode_total(spec_prr, r, e, fixes)

    return {"PIR": pir, "PTR": ptr, "PRR": prr}


_FAST = {e: _make_fast(e) for e in ("<", ">")}


def _generic_encoder(spec: _Spec, e: str):
    def enc(r: Mapping[str, Any], fixes: Fixes | None = None) -> bytes:
        return _encode_total(spec, r, e, fixes)
    return enc


#: Per endianness, record name -> encoder function taking the record dict and an
#: optional :class:`Fixes` (given: total, every record is made writable).
ENCODERS: dict[str, dict[str, Any]] = {
    e: {n: _FAST[e].get(n) or _generic_encoder(s, e) for n, s in _SPECS.items()}
    for e in ("<", ">")
}


def encode(record: Mapping[str, Any], endian: str = "<",
           fixes: Fixes | None = None) -> bytes:
    """Encode one record dict as STDF V4 bytes (header included).

    ``endian`` is ``"<"`` (little, CPU_TYPE 2) or ``">"`` (big, CPU_TYPE 1).
    Raises :class:`RecordError` for an unknown record type, and, without ``fixes``, for
    a bad field value. With ``fixes`` every field is made writable and the changes are
    noted there; only a record body beyond 65535 bytes still raises.
    """
    if endian not in ENCODERS:
        raise RecordError("endian", f"must be '<' or '>', got {endian!r}")
    return ENCODERS[endian][_spec_of(record).name](record, fixes)
