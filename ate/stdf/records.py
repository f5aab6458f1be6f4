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

The code lives in sibling modules named for what they hold, re-exported here (the import
path of every caller): ``ate.stdf.spec`` (the record table and :class:`RecordError`),
``ate.stdf.values`` (field value encoders), ``ate.stdf.fixes`` (:class:`Fixes`,
:func:`sanitise`), ``ate.stdf.encoder`` (:func:`encode`, ``ENCODERS``, the fast paths) and
``ate.stdf.reader`` (:func:`iter_records`, :func:`decode`, :func:`ascii_patch`).
"""

from __future__ import annotations

from ate.stdf.encoder import ENCODERS as ENCODERS
from ate.stdf.encoder import _encode_generic as _encode_generic
from ate.stdf.encoder import encode
from ate.stdf.fixes import FIX_ARRAY as FIX_ARRAY
from ate.stdf.fixes import FIX_ASCII as FIX_ASCII
from ate.stdf.fixes import FIX_CHAR as FIX_CHAR
from ate.stdf.fixes import FIX_FLOAT as FIX_FLOAT
from ate.stdf.fixes import FIX_KINDS, Fixes, sanitise, writable_int
from ate.stdf.fixes import FIX_LONG as FIX_LONG
from ate.stdf.fixes import FIX_NONFINITE as FIX_NONFINITE
from ate.stdf.fixes import FIX_RANGE as FIX_RANGE
from ate.stdf.fixes import FIX_TEXT as FIX_TEXT
from ate.stdf.fixes import FIX_TYPE as FIX_TYPE
from ate.stdf.reader import RawRecord, ascii_patch, decode, detect_endian, iter_records
from ate.stdf.spec import _SPECS as _SPECS
from ate.stdf.spec import RECORD_TYPES, RecordError
from ate.stdf.spec import record_name as record_name

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
