"""STDF V4 record specifications (pure): the field table of every record this package
writes and reads, and the tables derived from it (record types, flag bits, integer ranges,
struct codes, field sizes, array groups). Also :class:`RecordError`, the one error the
encoder raises, and the helpers that name a record.

A field: (name, kind, missing value, flag field to mark when None, bit, count field);
kind: U1 U2 U4 I1 I2 I4 R4 R8 B1 C1 Cn Bn Dn, or an array kU1 kU2 kR4 kN1.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class RecordError(ValueError):
    """A record could not be encoded: ``field`` names the culprit, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


_U4_MISSING = 4294967295


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
_SIZES = {"U1": 1, "B1": 1, "I1": 1, "U2": 2, "I2": 2, "U4": 4, "I4": 4, "R4": 4, "R8": 8}

# Per record: count field -> the array fields it governs (in record order).
_ARRAYS: dict[str, dict[str, tuple[_Field, ...]]] = {}
for _name, _s in _SPECS.items():
    _groups: dict[str, list[_Field]] = {}
    for _fld in _s.fields:
        if _fld.count:
            _groups.setdefault(_fld.count, []).append(_fld)
    _ARRAYS[_name] = {c: tuple(f) for c, f in _groups.items()}
del _name, _s, _groups, _fld


def record_name(record: Mapping[str, Any]) -> str | None:
    """The record type name of a record dict (``type`` if a string, else ``rec_id``, as
    the protocol codec reads it), or None."""
    name = record.get("type")
    if type(name) is str:
        return name
    name = record.get("rec_id")
    return name if type(name) is str else None


def _spec_of(record: Mapping[str, Any]) -> _Spec:
    if not isinstance(record, Mapping):
        raise RecordError("record", f"expected a dict, got {type(record).__name__}")
    name = record_name(record)
    spec = _SPECS.get(name) if name is not None else None
    if spec is None:
        raise RecordError("type", f"unknown record type {name!r}")
    return spec
