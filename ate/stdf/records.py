"""STDF V4 record encoding and decoding (pure, no Twisted).

Records are plain dicts keyed by STDF V4 field names, with the record name under
``type`` (or ``rec_id``), exactly as the TestApps send them (protocol 2.8).

:func:`encode` turns one record into the bytes of one STDF record (header included).
A field that is absent or ``None`` is written as the STDF "missing" value of that field
and, where the standard says so, the matching ``OPT_FLAG`` (or ``TEST_FLG``) bit is set.

Two modes. Without ``fixes``, bad values raise :class:`RecordError` naming the field.
With a :class:`Fixes` collector the encoder is total: every value is made writable
(:func:`sanitise`) and each change is counted in the collector by kind (``FIX_*``):
``C*n``/``C*1`` text becomes ASCII (``?`` for anything else, ``...`` for ``…``) and at
most 255 bytes (cut to 252 plus ``...``), integers are clamped to their field's range
(Infinity too; NaN and values of the wrong type are written as missing), array counts are
made to match their arrays. Floats, non-finite ones included, are written as IEEE values.
Records that are clean already take the fast path and cost nothing extra.

:func:`iter_records` and :func:`decode` read files back (either endianness); they are what
crash recovery needs, not a full-featured reader.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any, BinaryIO

__all__ = [
    "RecordError",
    "RECORD_TYPES",
    "Fixes",
    "FIX_KINDS",
    "sanitise",
    "writable_int",
    "ascii_patch",
    "encode",
    "decode",
    "iter_records",
    "detect_endian",
    "RawRecord",
]


class RecordError(ValueError):
    """A record could not be encoded: ``field`` names the culprit, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# What the sanitising encoder changes, one kind per kind of change (counted per lot).
FIX_ASCII = "non-ASCII text replaced by '?'"
FIX_LONG = "text longer than 255 bytes truncated"
FIX_TEXT = "number in a text field written as text"
FIX_CHAR = "text in a one-character field cut to its first character"
FIX_RANGE = "integer outside its STDF field range clamped"
FIX_FLOAT = "non-integer number in an integer field rounded"
FIX_NONFINITE = "Infinity clamped, NaN written as missing, in an integer field"
FIX_TYPE = "value of the wrong type written as missing"
FIX_ARRAY = "array count not matching its arrays made to match"
FIX_KINDS = (FIX_ASCII, FIX_LONG, FIX_TEXT, FIX_CHAR, FIX_RANGE, FIX_FLOAT, FIX_NONFINITE,
             FIX_TYPE, FIX_ARRAY)


class Fixes:
    """What the encoder changed to make records writable: a count per kind (``FIX_*``)
    and, per kind, where it happened first (``"PRR.TEST_T: inf -> 4294967295"``)."""

    __slots__ = ("counts", "first")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def note(self, kind: str, where: str) -> None:
        n = self.counts.get(kind)
        if n is None:
            self.counts[kind] = 1
            self.first[kind] = where
        else:
            self.counts[kind] = n + 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return bool(self.counts)

    def __repr__(self) -> str:
        return f"Fixes({self.counts!r})"


# ---------------------------------------------------------------------------------------
# Record specifications (STDF V4)
# ---------------------------------------------------------------------------------------

_U4_MISSING = 4294967295

# A field: (name, kind, missing value, flag field to mark when None, bit, count field)
# kind: U1 U2 U4 I1 I2 I4 R4 R8 B1 C1 Cn Bn Dn, or an array kU1 kU2 kR4 kN1.


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: str
    missing: Any = None
    flag: str | None = None  # field whose bit is set when this one is None
    bit: int = 0
    count: str | None = None  # for arrays: the field holding the element count


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    typ: int
    sub: int
    fields: tuple[_Field, ...]
    flag_base: tuple[tuple[str, int], ...] = ()  # value of a flag field given as None


def _f(name: str, kind: str, missing: Any = None, flag: str | None = None, bit: int = 0,
       count: str | None = None) -> _Field:
    return _Field(name, kind, missing, flag, bit, count)


def _cns(*names: str) -> tuple[_Field, ...]:
    return tuple(_f(n, "Cn") for n in names)


_SPECS: dict[str, _Spec] = {}


def _spec(name: str, typ: int, sub: int, fields: tuple[_Field, ...],
          flag_base: tuple[tuple[str, int], ...] = ()) -> None:
    _SPECS[name] = _Spec(name, typ, sub, fields, flag_base)


_spec("FAR", 0, 10, (_f("CPU_TYPE", "U1"), _f("STDF_VER", "U1", 4)))
_spec("MIR", 1, 10, (
    _f("SETUP_T", "U4"), _f("START_T", "U4"), _f("STAT_NUM", "U1"),
    _f("MODE_COD", "C1"), _f("RTST_COD", "C1"), _f("PROT_COD", "C1"),
    _f("BURN_TIM", "U2", 65535), _f("CMOD_COD", "C1"),
) + _cns("LOT_ID", "PART_TYP", "NODE_NAM", "TSTR_TYP", "JOB_NAM", "JOB_REV", "SBLOT_ID",
         "OPER_NAM", "EXEC_TYP", "EXEC_VER", "TEST_COD", "TST_TEMP", "USER_TXT", "AUX_FILE",
         "PKG_TYP", "FAMLY_ID", "DATE_COD", "FACIL_ID", "FLOOR_ID", "PROC_ID", "OPER_FRQ",
         "SPEC_NAM", "SPEC_VER", "FLOW_ID", "SETUP_ID", "DSGN_REV", "ENG_ID", "ROM_COD",
         "SERL_NUM", "SUPR_NAM"))
_spec("SDR", 1, 80, (
    _f("HEAD_NUM", "U1"), _f("SITE_GRP", "U1"), _f("SITE_CNT", "U1"),
    _f("SITE_NUM", "kU1", count="SITE_CNT"),
) + _cns("HAND_TYP", "HAND_ID", "CARD_TYP", "CARD_ID", "LOAD_TYP", "LOAD_ID", "DIB_TYP",
         "DIB_ID", "CABL_TYP", "CABL_ID", "CONT_TYP", "CONT_ID", "LASR_TYP", "LASR_ID",
         "EXTR_TYP", "EXTR_ID"))
_spec("PIR", 5, 10, (_f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1")))
_spec("PTR", 15, 10, (
    _f("TEST_NUM", "U4"), _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"),
    _f("TEST_FLG", "B1"), _f("PARM_FLG", "B1"),
    _f("RESULT", "R4", 0.0, "TEST_FLG", 0x02),
    _f("TEST_TXT", "Cn"), _f("ALARM_ID", "Cn"), _f("OPT_FLAG", "B1"),
    _f("RES_SCAL", "I1", 0, "OPT_FLAG", 0x01),
    _f("LLM_SCAL", "I1", 0, "OPT_FLAG", 0x10), _f("HLM_SCAL", "I1", 0, "OPT_FLAG", 0x20),
    _f("LO_LIMIT", "R4", 0.0, "OPT_FLAG", 0x40), _f("HI_LIMIT", "R4", 0.0, "OPT_FLAG", 0x80),
    _f("UNITS", "Cn"), _f("C_RESFMT", "Cn"), _f("C_LLMFMT", "Cn"), _f("C_HLMFMT", "Cn"),
    _f("LO_SPEC", "R4", 0.0, "OPT_FLAG", 0x04), _f("HI_SPEC", "R4", 0.0, "OPT_FLAG", 0x08),
), flag_base=(("OPT_FLAG", 0x02), ("TEST_FLG", 0)))
_spec("MPR", 15, 15, (
    _f("TEST_NUM", "U4"), _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"),
    _f("TEST_FLG", "B1"), _f("PARM_FLG", "B1"),
    _f("RTN_ICNT", "U2"), _f("RSLT_CNT", "U2"),
    _f("RTN_STAT", "kN1", count="RTN_ICNT"), _f("RTN_RSLT", "kR4", count="RSLT_CNT"),
    _f("TEST_TXT", "Cn"), _f("ALARM_ID", "Cn"), _f("OPT_FLAG", "B1"),
    _f("RES_SCAL", "I1", 0, "OPT_FLAG", 0x01),
    _f("LLM_SCAL", "I1", 0, "OPT_FLAG", 0x10), _f("HLM_SCAL", "I1", 0, "OPT_FLAG", 0x20),
    _f("LO_LIMIT", "R4", 0.0, "OPT_FLAG", 0x40), _f("HI_LIMIT", "R4", 0.0, "OPT_FLAG", 0x80),
    _f("START_IN", "R4", 0.0, "OPT_FLAG", 0x02), _f("INCR_IN", "R4", 0.0, "OPT_FLAG", 0x02),
    _f("RTN_INDX", "kU2", count="RTN_ICNT"),
    _f("UNITS", "Cn"), _f("UNITS_IN", "Cn"),
    _f("C_RESFMT", "Cn"), _f("C_LLMFMT", "Cn"), _f("C_HLMFMT", "Cn"),
    _f("LO_SPEC", "R4", 0.0, "OPT_FLAG", 0x04), _f("HI_SPEC", "R4", 0.0, "OPT_FLAG", 0x08),
), flag_base=(("OPT_FLAG", 0x00),))
_spec("FTR", 15, 20, (
    _f("TEST_NUM", "U4"), _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"),
    _f("TEST_FLG", "B1"), _f("OPT_FLAG", "B1"),
    _f("CYCL_CNT", "U4", 0, "OPT_FLAG", 0x01), _f("REL_VADR", "U4", 0, "OPT_FLAG", 0x02),
    _f("REPT_CNT", "U4", 0, "OPT_FLAG", 0x04), _f("NUM_FAIL", "U4", 0, "OPT_FLAG", 0x08),
    _f("XFAIL_AD", "I4", 0, "OPT_FLAG", 0x10), _f("YFAIL_AD", "I4", 0, "OPT_FLAG", 0x10),
    _f("VECT_OFF", "I2", 0, "OPT_FLAG", 0x20),
    _f("RTN_ICNT", "U2"), _f("PGM_ICNT", "U2"),
    _f("RTN_INDX", "kU2", count="RTN_ICNT"), _f("RTN_STAT", "kN1", count="RTN_ICNT"),
    _f("PGM_INDX", "kU2", count="PGM_ICNT"), _f("PGM_STAT", "kN1", count="PGM_ICNT"),
    _f("FAIL_PIN", "Dn"),
) + _cns("VECT_NAM", "TIME_SET", "OP_CODE", "TEST_TXT", "ALARM_ID", "PROG_TXT", "RSLT_TXT")
  + (_f("PATG_NUM", "U1", 255), _f("SPIN_MAP", "Dn")),
  flag_base=(("OPT_FLAG", 0xC0),))
_spec("DTR", 50, 30, (_f("TEXT_DAT", "Cn"),))
_spec("PRR", 5, 20, (
    _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"), _f("PART_FLG", "B1"), _f("NUM_TEST", "U2"),
    _f("HARD_BIN", "U2"), _f("SOFT_BIN", "U2", 65535),
    _f("X_COORD", "I2", -32768), _f("Y_COORD", "I2", -32768), _f("TEST_T", "U4"),
    _f("PART_ID", "Cn"), _f("PART_TXT", "Cn"), _f("PART_FIX", "Bn"),
))
_spec("SBR", 1, 50, (
    _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"), _f("SBIN_NUM", "U2"), _f("SBIN_CNT", "U4"),
    _f("SBIN_PF", "C1"), _f("SBIN_NAM", "Cn"),
))
_spec("HBR", 1, 40, (
    _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"), _f("HBIN_NUM", "U2"), _f("HBIN_CNT", "U4"),
    _f("HBIN_PF", "C1"), _f("HBIN_NAM", "Cn"),
))
_spec("TSR", 10, 30, (
    _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"), _f("TEST_TYP", "C1"), _f("TEST_NUM", "U4"),
    _f("EXEC_CNT", "U4", _U4_MISSING), _f("FAIL_CNT", "U4", _U4_MISSING),
    _f("ALRM_CNT", "U4", _U4_MISSING),
    _f("TEST_NAM", "Cn"), _f("SEQ_NAME", "Cn"), _f("TEST_LBL", "Cn"), _f("OPT_FLAG", "B1"),
    _f("TEST_TIM", "R4", 0.0, "OPT_FLAG", 0x04), _f("TEST_MIN", "R4", 0.0, "OPT_FLAG", 0x01),
    _f("TEST_MAX", "R4", 0.0, "OPT_FLAG", 0x02), _f("TST_SUMS", "R4", 0.0, "OPT_FLAG", 0x10),
    _f("TST_SQRS", "R4", 0.0, "OPT_FLAG", 0x20),
), flag_base=(("OPT_FLAG", 0xC8),))
_spec("PCR", 1, 30, (
    _f("HEAD_NUM", "U1"), _f("SITE_NUM", "U1"), _f("PART_CNT", "U4"),
    _f("RTST_CNT", "U4", _U4_MISSING), _f("ABRT_CNT", "U4", _U4_MISSING),
    _f("GOOD_CNT", "U4", _U4_MISSING), _f("FUNC_CNT", "U4", _U4_MISSING),
))
_spec("MRR", 1, 20, (
    _f("FINISH_T", "U4"), _f("DISP_COD", "C1"), _f("USR_DESC", "Cn"), _f("EXC_DESC", "Cn"),
))

#: Record names this module encodes, mapped to (REC_TYP, REC_SUB).
RECORD_TYPES: dict[str, tuple[int, int]] = {n: (s.typ, s.sub) for n, s in _SPECS.items()}
_BY_TYPE: dict[tuple[int, int], _Spec] = {(s.typ, s.sub): s for s in _SPECS.values()}

# Map from a flag field to the fields that set bits in it, per record, precomputed.
_FLAG_USERS: dict[str, tuple[_Field, ...]] = {
    n: tuple(f for f in s.fields if f.flag) for n, s in _SPECS.items()
}
_FLAG_BASE: dict[str, dict[str, int]] = {n: dict(s.flag_base) for n, s in _SPECS.items()}

_INT_RANGE = {
    "U1": (0, 0xFF), "B1": (0, 0xFF), "U2": (0, 0xFFFF), "U4": (0, 0xFFFFFFFF),
    "I1": (-0x80, 0x7F), "I2": (-0x8000, 0x7FFF), "I4": (-0x80000000, 0x7FFFFFFF),
}
_STRUCT_CODE = {"U1": "B", "B1": "B", "U2": "H", "U4": "I", "I1": "b", "I2": "h",
                "I4": "i", "R4": "f", "R8": "d"}
_STRUCTS = {
    e: {k: struct.Struct(e + c) for k, c in _STRUCT_CODE.items()} for e in ("<", ">")
}
_HEADER = {e: struct.Struct(e + "HBB") for e in ("<", ">")}

# ---------------------------------------------------------------------------------------
# Value encoders (generic path)
# ---------------------------------------------------------------------------------------


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
        return math.inf if value > 0 else -math.inf


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


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
            missing_bits[fld.flag] = missing_bits.get(fld.flag, 0) | fld.bit
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
# Making any record writable (the total encoder)
# ---------------------------------------------------------------------------------------

_R4_FIELD_KINDS = ("R4", "R8")
_N1_RANGE = (0, 15)


def _int_fix(value: Any, lo: int, hi: int) -> tuple[int | None, str | None]:
    """``value`` as an integer lo..hi (None: write as missing) and the fix kind, if any."""
    if isinstance(value, int):
        if lo <= value <= hi:
            return value, None
        return (lo if value < lo else hi), FIX_RANGE
    if isinstance(value, Real) and not isinstance(value, (str, bytes)):
        try:
            f = float(value)
        except OverflowError:
            f = math.inf if value > 0 else -math.inf
        if f != f:
            return None, FIX_NONFINITE
        if f in (math.inf, -math.inf):
            return (hi if f > 0 else lo), FIX_NONFINITE
        return min(max(int(round(f)), lo), hi), FIX_FLOAT
    return None, FIX_TYPE


def writable_int(kind: str, value: Any) -> int | None:
    """The value an STDF integer field of ``kind`` (U1 U2 U4 I1 I2 I4 B1) gets for
    ``value`` from the sanitising encoder: clamped to the field's range, Infinity to its
    end, a fraction rounded; None (written as missing) for None, NaN or a non-number."""
    lo, hi = _INT_RANGE[kind]
    if type(value) is int and lo <= value <= hi:
        return value
    if value is None:
        return None
    return _int_fix(value, lo, hi)[0]


def _text_fix(value: Any, where: str, fixes: Fixes, limit: int = 255) -> Any:
    """A C*n value as ASCII text of at most ``limit`` bytes (None: missing)."""
    if type(value) is str:
        text = value
    elif isinstance(value, (bytes, bytearray)):
        if value.isascii() and len(value) <= limit:
            return value
        text = bytes(value).decode("latin-1")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        text = str(value)
        fixes.note(FIX_TEXT, f"{where}: {_short(value)} written as text")
    elif isinstance(value, str):  # a str subclass
        text = str(value)
    else:
        fixes.note(FIX_TYPE, f"{where}: {type(value).__name__} {_short(value)} "
                             f"is not text")
        return None
    if not text.isascii():
        fixes.note(FIX_ASCII, f"{where}: {_short(text)}")
        text = text.replace("\u2026", "...").encode("ascii", "replace").decode("ascii")
    if len(text) > limit:
        fixes.note(FIX_LONG, f"{where}: text of {len(text)} bytes")
        text = text[:limit - 3] + "..."
    return text


def _char_fix(value: Any, where: str, fixes: Fixes) -> Any:
    """A C*1 value as one ASCII character (None or empty: a space)."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    if not isinstance(value, str):
        fixes.note(FIX_TYPE, f"{where}: {type(value).__name__} {_short(value)} "
                             f"is not a character")
        return None
    text = value
    if not text.isascii():
        fixes.note(FIX_ASCII, f"{where}: {_short(text)}")
        text = text.encode("ascii", "replace").decode("ascii")
    if len(text) > 1:
        fixes.note(FIX_CHAR, f"{where}: {_short(text)}")
        text = text[0]
    return text


def _float_fix(value: Any, where: str, fixes: Fixes) -> Any:
    if isinstance(value, Real) and not isinstance(value, (str, bytes)):
        return value  # any real number, Infinity and NaN included, has an IEEE value
    fixes.note(FIX_TYPE, f"{where}: {type(value).__name__} {_short(value)} "
                         f"is not a number")
    return None


def _bits_fix(name: str, value: Any, where: str, fixes: Fixes, limit: int) -> Any:
    if isinstance(value, (bytes, bytearray)) and len(value) > limit:
        fixes.note(FIX_LONG, f"{where}: bit field of {len(value)} bytes")
        return bytes(value[:limit])
    try:
        _bit_bytes(name, value, limit)
    except RecordError as err:
        fixes.note(FIX_TYPE, f"{where}: {err.reason}")
        return None
    return value


def _element_fix(elem: str, values: Any, where: str, fixes: Fixes) -> list:
    out = []
    if elem == "R4":
        for v in values:
            if isinstance(v, Real) and not isinstance(v, (str, bytes)):
                out.append(v)
            else:
                fixes.note(FIX_TYPE, f"{where}: element {_short(v)} is not a number")
                out.append(math.nan)
        return out
    lo, hi = _N1_RANGE if elem == "N1" else _INT_RANGE[elem]
    for v in values:
        fixed, kind = _int_fix(v, lo, hi)
        if kind is not None:
            fixes.note(kind, f"{where}: element {_short(v)} -> {fixed}")
        out.append(0 if fixed is None else fixed)
    return out


# Per record: count field -> the array fields it governs (in record order).
_ARRAYS: dict[str, dict[str, tuple[_Field, ...]]] = {}
for _name, _s in _SPECS.items():
    _groups: dict[str, list[_Field]] = {}
    for _fld in _s.fields:
        if _fld.count:
            _groups.setdefault(_fld.count, []).append(_fld)
    _ARRAYS[_name] = {c: tuple(f) for c, f in _groups.items()}
del _name, _s, _groups, _fld


def _sanitise(spec: _Spec, rec: Mapping[str, Any], fixes: Fixes) -> dict[str, Any]:
    out = dict(rec)
    rname = spec.name
    for fld in spec.fields:
        if fld.count:
            continue  # arrays below, with their counts
        value = rec.get(fld.name)
        if value is None:
            continue
        kind = fld.kind
        where = f"{rname}.{fld.name}"
        if kind == "Cn":
            if type(value) is str and len(value) <= 255 and value.isascii():
                continue
            fixed = _text_fix(value, where, fixes)
        elif kind in _INT_RANGE:
            lo, hi = _INT_RANGE[kind]
            fixed, fix = _int_fix(value, lo, hi)
            if fix is None:
                continue
            fixes.note(fix, f"{where}: {_short(value)} -> {fixed}")
        elif kind in _R4_FIELD_KINDS:
            fixed = _float_fix(value, where, fixes)
        elif kind == "C1":
            fixed = _char_fix(value, where, fixes)
        elif kind == "Bn":
            fixed = _bits_fix(fld.name, value, where, fixes, 255)
        elif kind == "Dn":
            fixed = _bits_fix(fld.name, value, where, fixes, 8191)
        else:  # pragma: no cover - specification error
            continue
        if fixed is not value:
            out[fld.name] = fixed
    for cname, flds in _ARRAYS[rname].items():
        limit = 255 if rname == "SDR" else 65535
        lengths: dict[str, int] = {}
        for fld in flds:
            value = out.get(fld.name)
            if value is None:
                continue
            where = f"{rname}.{fld.name}"
            if not isinstance(value, (list, tuple)):
                fixes.note(FIX_TYPE, f"{where}: {type(value).__name__} {_short(value)} "
                                     f"is not an array")
                out[fld.name] = None
                continue
            out[fld.name] = _element_fix(fld.kind[1:], value, where, fixes)
            lengths[fld.name] = len(value)
        given = out.get(cname)
        n = min(max(lengths.values(), default=0), limit)
        if (given is None or given == n) and all(lengths.get(f.name, 0) == n
                                                 for f in flds):
            continue  # a missing count is derived from the arrays
        fixes.note(FIX_ARRAY, f"{rname}.{cname}: {_short(given)} for arrays of "
                              f"{', '.join(f'{k} {v}' for k, v in lengths.items()) or 'none'}")
        out[cname] = n
        for fld in flds:
            items = list(out.get(fld.name) or ())[:n]
            pad = math.nan if fld.kind == "kR4" else 0
            out[fld.name] = items + [pad] * (n - len(items))
    return out


def _spec_of(record: Mapping[str, Any]) -> _Spec:
    if not isinstance(record, Mapping):
        raise RecordError("record", f"expected a dict, got {type(record).__name__}")
    name = record_name(record)
    spec = _SPECS.get(name) if name is not None else None
    if spec is None:
        raise RecordError("type", f"unknown record type {name!r}")
    return spec


def sanitise(record: Mapping[str, Any], fixes: Fixes | None = None) -> dict[str, Any]:
    """A copy of ``record`` in which every field is writable; each change is noted in
    ``fixes``. Raises :class:`RecordError` only for an unknown record type."""
    return _sanitise(_spec_of(record), record, Fixes() if fixes is None else fixes)


def _encode_total(spec: _Spec, rec: Mapping[str, Any], e: str, fixes: Fixes | None) -> bytes:
    """The generic encoder; with ``fixes``, a record it refuses is sanitised and encoded
    again (clean records pay nothing for that)."""
    try:
        return _encode_generic(spec, rec, e)
    except (RecordError, TypeError, OverflowError):
        if fixes is None:
            raise
    return _encode_generic(spec, _sanitise(spec, rec, fixes), e)


_SIZES = {"U1": 1, "B1": 1, "I1": 1, "U2": 2, "I2": 2, "U4": 4, "I4": 4, "R4": 4, "R8": 8}


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


def record_name(record: Mapping[str, Any]) -> str | None:
    """The record type name of a record dict (``type`` if a string, else ``rec_id``, as
    the protocol codec reads it), or None."""
    name = record.get("type")
    if type(name) is str:
        return name
    name = record.get("rec_id")
    return name if type(name) is str else None


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
                n = out.get(fld.count) or 0
                elem = kind[1:]
                if elem == "N1":
                    packed = rd.take((n + 1) // 2)
                    vals = []
                    for b in packed:
                        vals.extend((b & 0x0F, b >> 4))
                    out[fld.name] = vals[:n]
                else:
                    out[fld.name] = [rd.num(elem) for _ in range(n)]
    except EOFError:
        for fld in spec.fields:
            out.setdefault(fld.name, None)
    return out
