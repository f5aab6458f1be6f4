"""Making any record writable (pure): the sanitising half of the total encoder.

:func:`sanitise` returns a copy of a record in which every field is writable, noting each
change in a :class:`Fixes` collector by kind (``FIX_*``); :func:`writable_int` is the value
an integer field gets. The encoder (``ate.stdf.encoder``) calls it only for a record its
generic path refuses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

from ate.stdf.spec import _ARRAYS, _INT_RANGE, RecordError, _short, _Spec, _spec_of
from ate.stdf.values import _bit_bytes

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
            # numbers.Real declares no comparison operators in typeshed
            f = math.inf if value > 0 else -math.inf  # type: ignore[operator]
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
    out: list[Any] = []
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


def sanitise(record: Mapping[str, Any], fixes: Fixes | None = None) -> dict[str, Any]:
    """A copy of ``record`` in which every field is writable; each change is noted in
    ``fixes``. Raises :class:`RecordError` only for an unknown record type."""
    return _sanitise(_spec_of(record), record, Fixes() if fixes is None else fixes)
