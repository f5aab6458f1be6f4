"""STDF V4 datalog: record encoding (``records``), the per-lot file (``sink``), summary
building blocks (``summary``) and crash recovery (``recover``)."""

from ate.stdf.records import RecordError, decode, encode, iter_records
from ate.stdf.recover import recover_directory

__all__ = ["RecordError", "encode", "decode", "iter_records", "recover_directory"]
