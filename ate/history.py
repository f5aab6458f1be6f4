"""The lot history database (protocol 15.3): one SQLite row per finalised lot.

Every finalised lot (unload, softerror/reset, stop, and a datalog repaired at start-up)
is recorded from its summary (``Lot.summary()`` as completed by the datalog sink, or the
summary ``ate.stdf.recover`` writes for a repaired file). The statistical alarm rules
read their baseline from here (:meth:`History.baseline`), the web API lists the lots.

One schema, versioned with ``PRAGMA user_version`` and marked with ``PRAGMA
application_id``; a database with a newer or a foreign schema is refused with a
:class:`HistoryError` (the master logs it and runs without history). WAL journal,
``synchronous=NORMAL``: a commit costs no fsync, a crash of the machine may lose the
last lots but never corrupts the database. About every 500 lots SQLite's automatic
checkpoint copies the journal into the database with one fsync (a few to some tens of
milliseconds, in the :meth:`History.record` call that crosses the threshold).

Every call is synchronous and small (figures in ``bench/history.py``): it runs on the
reactor thread and must only be called from there.

The datalog path is the key of a lot: recording the same datalog again updates its row
(:meth:`History.record`, the id stays) or is skipped (:meth:`History.import_summaries`),
so a repaired file found again at the next start is never counted twice.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from ate.stdf.reader import decode, detect_endian, iter_records

__all__ = ["APPLICATION_ID", "BaselineData", "History", "HistoryError", "SCHEMA_VERSION"]

#: ``PRAGMA user_version`` of the schema this module writes.
SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of an ate-master lot history ("ATEH").
APPLICATION_ID = 0x41544548
#: Bounds of :meth:`History.lots` ``limit`` and :meth:`History.baseline` ``history``.
MAX_PAGE = 500
MAX_BASELINE = 10_000
#: A ``*.summary.json`` bigger than this is not a summary (skipped by the import).
MAX_SUMMARY_BYTES = 16 * 1024 * 1024
_SUMMARY_SUFFIX = ".summary.json"

log = Logger(namespace="ate.history")

_SCHEMA = """
CREATE TABLE lots (
    id INTEGER PRIMARY KEY,
    lot TEXT NOT NULL,
    part_type TEXT NOT NULL,
    program TEXT NOT NULL,
    device TEXT NOT NULL,
    start_t NUMERIC,
    finish_t NUMERIC NOT NULL,
    end_reason TEXT NOT NULL,
    parts INTEGER NOT NULL,
    parts_tested INTEGER NOT NULL,
    yield_percent REAL NOT NULL,
    site_yields TEXT NOT NULL,
    soft_bins TEXT NOT NULL,
    hard_bins TEXT NOT NULL,
    bin_totals TEXT NOT NULL,
    alarms TEXT NOT NULL,
    alarm_count INTEGER NOT NULL,
    datalog TEXT NOT NULL UNIQUE,
    summary TEXT NOT NULL,
    held INTEGER NOT NULL,
    recorded_t NUMERIC NOT NULL
);
CREATE INDEX lots_part_type_finish ON lots (part_type, finish_t);
CREATE INDEX lots_finish ON lots (finish_t);
"""

#: Columns written by record(), in order (id is the row id).
_COLUMNS = ("lot", "part_type", "program", "device", "start_t", "finish_t", "end_reason",
            "parts", "parts_tested", "yield_percent", "site_yields", "soft_bins",
            "hard_bins", "bin_totals", "alarms", "alarm_count", "datalog", "summary", "held",
            "recorded_t")
_EXPECTED = frozenset(("id",) + _COLUMNS)

_INSERT = (f"INSERT INTO lots ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(_COLUMNS))})")
_UPSERT = (_INSERT + " ON CONFLICT(datalog) DO UPDATE SET "
           + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "datalog"))
_IMPORT = _INSERT.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)

#: The columns of a row of lots(), in order.
_LIST = ("id", "lot", "part_type", "program", "device", "start_t", "finish_t", "parts",
         "yield_percent", "end_reason", "alarm_count", "datalog", "held")
_DETAIL = ("parts_tested", "site_yields", "soft_bins", "hard_bins", "alarms", "summary",
           "recorded_t")


class HistoryError(Exception):
    """The lot history cannot be opened or used, or a summary cannot be recorded."""


@dataclass(frozen=True, slots=True)
class BaselineData:
    """The recent history of one part type, for the statistical yield and bin rules.

    Only lots with parts (``parts > 0``) that ended by a normal unload (``end_reason``
    empty: no softerror, reset, stop or repaired file) count; a lot that was held by an
    alarm and then unloaded normally does count.
    """

    #: How many lots the figures come from.
    lots: int
    #: Each lot's total yield in percent, newest lot first.
    yields: tuple[float, ...]
    #: Soft bin number -> the percent of each lot's distinct parts in that bin, one value
    #: per lot in the order of ``yields`` (0.0 where the lot had none of it).
    bin_shares: dict[int, tuple[float, ...]]


# -- validation of a summary -----------------------------------------------------------------


def _bad(where: str, what: str, value: Any) -> HistoryError:
    return HistoryError(f"summary {where} must be {what}, got {_describe(value)}")


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(obj: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _bad(f"{where}{key!r}", "a string", value)
    return value


def _count(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> int:
    value = obj.get(key)
    if value is None and not required:
        return 0
    if type(value) is not int or value < 0:
        raise _bad(f"{where}{key!r}", "an integer >= 0", value)
    return value


def _number(obj: Mapping[str, Any], key: str, where: str, default: float | None = None
            ) -> float | None:
    value = obj.get(key)
    if value is None:
        return default
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value)):
        raise _bad(f"{where}{key!r}", "a finite number", value)
    return value


def _rows(obj: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise _bad(repr(key), "a list", value)
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _bad(f"{key!r}[{index}]", "an object", item)
    return list(value)


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise HistoryError(f"{what} cannot be stored as JSON: {err}") from None


def _mir_start(datalog: str) -> int | None:
    """START_T (else SETUP_T) of the datalog's MIR, or None if the file has none."""
    try:
        with open(datalog, "rb") as fh:
            head = fh.read(16384)
        endian = detect_endian(head)
        for raw in iter_records(head, endian):
            if raw.name == "MIR":
                mir = decode(raw, endian)
                for key in ("START_T", "SETUP_T"):
                    if isinstance(mir.get(key), int) and mir[key] > 0:
                        return mir[key]
                return None
    except (OSError, ValueError):
        return None
    return None


def _normalise(path: str) -> str:
    return os.path.abspath(path)


def _row_of(summary: Any, datalog: str, program: str, alarms: Sequence[Any],
            finish_default: float, recorded_t: float) -> tuple[Any, ...]:
    """The column values of one lot (in the order of ``_COLUMNS``); raises HistoryError
    naming the first field that is wrong."""
    if not isinstance(summary, Mapping):
        raise _bad("", "an object", summary)
    if not isinstance(summary.get("lot"), str):
        raise _bad("'lot'", "a string", summary.get("lot"))
    if not isinstance(program, str):
        raise _bad("program", "a string", program)
    total = summary.get("total")
    if total is None:
        total = {}
    elif not isinstance(total, Mapping):
        raise _bad("'total'", "an object", total)
    parts = _count(summary, "parts_distinct", "")
    site_yields = []
    for index, row in enumerate(_rows(summary, "per_site")):
        where = f"'per_site'[{index}]."
        site = row.get("site")
        if isinstance(site, bool) or not isinstance(site, (str, int)):
            raise _bad(f"{where}'site'", "a site id", site)
        site_yields.append({"site": str(site), "parts": _count(row, "parts", where),
                            "good": _count(row, "good", where),
                            "yield_percent": _number(row, "yield_percent", where, 0.0)})
    soft_bins = []
    for index, row in enumerate(_rows(summary, "bins")):
        where = f"'bins'[{index}]."
        hbin = row.get("hbin")
        if hbin is not None and type(hbin) is not int:
            raise _bad(f"{where}'hbin'", "an integer or null", hbin)
        soft_bins.append({"sbin": _count(row, "sbin", where, required=True), "hbin": hbin,
                          "name": _text(row, "name", where), "group": _text(row, "group", where),
                          "total": _count(row, "total", where),
                          "percent": _number(row, "percent", where, 0.0)})
    hard_bins = []
    for index, row in enumerate(_rows(summary, "hard_bins")):
        where = f"'hard_bins'[{index}]."
        hard_bins.append({"hbin": _count(row, "hbin", where, required=True),
                          "name": _text(row, "name", where),
                          "total": _count(row, "total", where),
                          "percent": _number(row, "percent", where, 0.0)})
    if not alarms:
        alarms = _rows(summary, "alarms")
    elif not isinstance(alarms, (list, tuple)) or not all(
            isinstance(a, Mapping) for a in alarms):
        raise HistoryError(f"alarms must be a list of objects, got {_describe(alarms)}")
    start_t = _number(summary, "start_t", "")
    if start_t is None:
        start_t = _mir_start(datalog)
    return (summary["lot"], _text(summary, "part_type", ""),
            program or _text(summary, "program", ""), _text(summary, "device", ""),
            start_t, _number(summary, "finish_t", "", finish_default),
            _text(summary, "end_reason", ""), parts, _count(summary, "parts_tested", ""),
            _number(total, "yield_percent", "'total'.", 0.0),
            _dumps(site_yields, "per_site"), _dumps(soft_bins, "bins"),
            _dumps(hard_bins, "hard_bins"),
            json.dumps([[b["sbin"], b["total"]] for b in soft_bins], separators=(",", ":")),
            _dumps(list(alarms), "alarms"), len(alarms),
            datalog, _dumps(summary, "the summary"), int(bool(summary.get("ended_held"))),
            recorded_t)


# -- the database ------------------------------------------------------------------------------


class History:
    """The lot history in one SQLite file. Open it with :meth:`open`, end with :meth:`close`.

    Errors of the database itself (disk full, a file damaged meanwhile) and summaries
    that cannot be recorded raise :class:`HistoryError`; bad arguments raise ValueError.
    """

    def __init__(self, connection: sqlite3.Connection, path: str,
                 wallclock: Callable[[], float]) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = connection
        self._wallclock = wallclock

    @classmethod
    def open(cls, path: str, *, wallclock: Callable[[], float] = time.time) -> "History":
        """Open (or create) the history at ``path``.

        Raises HistoryError naming the path and the reason when it cannot be opened (a
        directory, a missing parent directory, no permission, a file that is not an SQLite
        database) or holds a newer or a foreign schema. ``wallclock`` gives the time a
        lot is recorded (and its finish time if its summary has none).
        """
        if not isinstance(path, str) or not path:
            raise HistoryError(f"history database path must be a non-empty string, "
                               f"got {_describe(path)}")
        if os.path.isdir(path):
            raise HistoryError(f"history database {path}: is a directory")
        try:
            conn = sqlite3.connect(path, timeout=1.0, isolation_level=None)
        except sqlite3.Error as err:
            raise HistoryError(f"history database {path}: cannot be opened: {err}") from None
        try:
            _prepare(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, wallclock)

    def close(self) -> None:
        """Close the database; idempotent. Any later call raises HistoryError."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise HistoryError(f"history database {self.path} is closed")
        return self._conn

    def _failed(self, err: sqlite3.Error, doing: str) -> HistoryError:
        return HistoryError(f"history database {self.path}: {doing} failed: {err}")

    # -- writing ---------------------------------------------------------------------------

    def record(self, summary: Mapping[str, Any], *, datalog_path: str, program: str = "",
               alarms: Sequence[Mapping[str, Any]] = ()) -> int:
        """Record one finalised lot; return its row id.

        ``summary`` is the lot summary (``Lot.summary()`` plus ``datalog``, ``finish_t``,
        ``end_reason`` as the datalog sink adds them); ``start_t``, ``program``,
        ``alarms`` and ``ended_held`` are taken from it when present. ``program`` and
        ``alarms`` given here win over the summary's. Without ``start_t`` the MIR of the
        datalog gives it (START_T) if the file can be read; without ``finish_t`` the
        wall clock does. Recording the same ``datalog_path`` again updates that row and
        returns the same id. Raises HistoryError naming the field of a summary that is
        not of the expected shape (nothing is recorded then) or when the database fails.
        """
        if not isinstance(datalog_path, str) or not datalog_path:
            raise HistoryError(f"datalog_path must be a non-empty string, "
                               f"got {_describe(datalog_path)}")
        conn = self._live()
        datalog = _normalise(datalog_path)
        now = self._wallclock()
        row = _row_of(summary, datalog, program, alarms, now, now)
        try:
            conn.execute(_UPSERT, row)
            found = conn.execute("SELECT id FROM lots WHERE datalog = ?", (datalog,)).fetchone()
        except sqlite3.Error as err:
            raise self._failed(err, f"recording lot {summary['lot']!r}") from None
        return int(found[0])

    def import_summaries(self, directory: str) -> int:
        """Record every ``*.summary.json`` of ``directory`` whose datalog (the file name
        with ``.stdf`` for ``.summary.json``) is not recorded yet; return how many were.

        A file that cannot be read, is not JSON or not a lot summary is skipped with a
        WARNING naming it (so is a directory that cannot be listed); a missing directory
        imports nothing. Only a failing database raises HistoryError (nothing of this
        call is recorded then). A file's finish time, if its summary has none, is its
        modification time.
        """
        conn = self._live()
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            log.info("lot history: no directory {directory}, nothing to import",
                     directory=directory)
            return 0
        except OSError as err:
            log.warn("lot history: cannot list {directory}: {err}", directory=directory,
                     err=err)
            return 0
        try:
            known = {r[0] for r in conn.execute("SELECT datalog FROM lots")}
        except sqlite3.Error as err:
            raise self._failed(err, "reading the recorded datalogs") from None
        rows = []
        now = self._wallclock()
        for name in names:
            if not name.endswith(_SUMMARY_SUFFIX):
                continue
            path = os.path.join(directory, name)
            datalog = _normalise(path[:-len(_SUMMARY_SUFFIX)] + ".stdf")
            if datalog in known:
                continue
            try:
                rows.append(_read_summary(path, datalog, now))
            except (OSError, ValueError, HistoryError) as err:
                log.warn("lot history: {file} skipped: {reason}", file=path, reason=err)
            known.add(datalog)
        if not rows:
            return 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                conn.executemany(_IMPORT, rows)
                added = conn.total_changes - before
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise self._failed(err, f"importing the summaries of {directory}") from None
        log.info("lot history: imported {n} lot summary file(s) from {directory}",
                 n=added, directory=directory)
        return added

    # -- reading ---------------------------------------------------------------------------

    def lots(self, *, part_type: str | None = None, limit: int = 50,
             before: int | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` (1..500) lots, newest first (by finish time, then id).

        ``part_type`` keeps that part type only; ``before`` (a lot id from an earlier
        page) starts right after that lot. Each row: id, lot, part_type, program,
        device, start_t, finish_t, duration_s (None without a start time), parts
        (distinct), yield_percent, end_reason, alarms (how many), datalog (file name),
        held. ValueError for a bad argument or an unknown ``before`` id.
        """
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be an integer 1..{MAX_PAGE}, got {_describe(limit)}")
        if part_type is not None and not isinstance(part_type, str):
            raise ValueError(f"part_type must be a string, got {_describe(part_type)}")
        conn = self._live()
        where: list[str] = []
        args: list[Any] = []
        if part_type is not None:
            where.append("part_type = ?")
            args.append(part_type)
        try:
            if before is not None:
                _check_id(before, "before")
                anchor = conn.execute("SELECT finish_t FROM lots WHERE id = ?",
                                      (before,)).fetchone()
                if anchor is None:
                    raise ValueError(f"before: no lot with id {before}")
                where.append("(finish_t < ? OR (finish_t = ? AND id < ?))")
                args += [anchor[0], anchor[0], before]
            sql = (f"SELECT {', '.join(_LIST)} FROM lots"
                   + (" WHERE " + " AND ".join(where) if where else "")
                   + " ORDER BY finish_t DESC, id DESC LIMIT ?")
            found = conn.execute(sql, (*args, limit)).fetchall()
        except sqlite3.Error as err:
            raise self._failed(err, "listing lots") from None
        return [_list_row(row) for row in found]

    def lot(self, lot_id: int) -> dict[str, Any] | None:
        """One lot, or None: the row of :meth:`lots` plus parts_tested, site_yields,
        soft_bins, hard_bins (lists of objects), alarm_list (the alarms), recorded_t and
        summary (the whole stored summary)."""
        _check_id(lot_id, "lot_id")
        conn = self._live()
        try:
            row = conn.execute(f"SELECT {', '.join(_LIST + _DETAIL)} FROM lots WHERE id = ?",
                               (lot_id,)).fetchone()
        except sqlite3.Error as err:
            raise self._failed(err, f"reading lot {lot_id}") from None
        if row is None:
            return None
        out = _list_row(row[:len(_LIST)])
        detail = dict(zip(_DETAIL, row[len(_LIST):], strict=True))
        out["parts_tested"] = detail["parts_tested"]
        for key in ("site_yields", "soft_bins", "hard_bins"):
            out[key] = json.loads(detail[key])
        out["alarm_list"] = json.loads(detail["alarms"])
        out["recorded_t"] = detail["recorded_t"]
        out["summary"] = json.loads(detail["summary"])
        return out

    def datalog_path(self, lot_id: int) -> str | None:
        """The full path of the lot's datalog as recorded (absolute), or None."""
        _check_id(lot_id, "lot_id")
        try:
            row = self._live().execute("SELECT datalog FROM lots WHERE id = ?",
                                       (lot_id,)).fetchone()
        except sqlite3.Error as err:
            raise self._failed(err, f"reading lot {lot_id}") from None
        return None if row is None else str(row[0])

    def baseline(self, part_type: str, history: int) -> BaselineData:
        """The last ``history`` (1..10000) lots of ``part_type`` that count (see
        :class:`BaselineData`), newest first by finish time then id."""
        if not isinstance(part_type, str):
            raise ValueError(f"part_type must be a string, got {_describe(part_type)}")
        if type(history) is not int or not 1 <= history <= MAX_BASELINE:
            raise ValueError(f"history must be an integer 1..{MAX_BASELINE}, "
                             f"got {_describe(history)}")
        try:
            found = self._live().execute(
                "SELECT parts, yield_percent, bin_totals FROM lots "
                "WHERE part_type = ? AND parts > 0 AND end_reason = '' "
                "ORDER BY finish_t DESC, id DESC LIMIT ?", (part_type, history)).fetchall()
        except sqlite3.Error as err:
            raise self._failed(err, f"reading the baseline of {part_type!r}") from None
        shares: dict[int, list[float]] = {}
        for index, (parts, _, bins) in enumerate(found):
            for sbin, total in json.loads(bins):
                values = shares.get(sbin)
                if values is None:
                    values = shares[sbin] = [0.0] * len(found)
                values[index] += total / parts * 100.0
        return BaselineData(lots=len(found), yields=tuple(float(r[1]) for r in found),
                            bin_shares={sb: tuple(v) for sb, v in sorted(shares.items())})


def _check_id(value: Any, name: str) -> None:
    if type(value) is not int:
        raise ValueError(f"{name} must be an integer lot id, got {_describe(value)}")


def _list_row(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(_LIST, row, strict=True))
    start, finish = out["start_t"], out["finish_t"]
    out["duration_s"] = None if start is None else finish - start
    out["alarms"] = out.pop("alarm_count")
    out["datalog"] = os.path.basename(out["datalog"])
    out["held"] = bool(out["held"])
    return out


def _read_summary(path: str, datalog: str, now: float) -> tuple[Any, ...]:
    with open(path, "rb") as fh:
        stat = os.fstat(fh.fileno())
        if stat.st_size > MAX_SUMMARY_BYTES:
            raise ValueError(f"{stat.st_size} bytes, more than a lot summary "
                             f"({MAX_SUMMARY_BYTES})")
        data = fh.read()
    try:
        summary = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8: {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err}") from None
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    return _row_of(summary, datalog, "", (), stat.st_mtime, now)


def _prepare(conn: sqlite3.Connection, path: str) -> None:
    """Check the schema (create it in an empty database), then WAL and NORMAL sync."""
    where = f"history database {path}"
    try:
        version, app_id, tables = _identity(conn)
        if version == 0 and app_id == 0 and not tables:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version, app_id, tables = _identity(conn)  # another process may have won
                if version == 0 and app_id == 0 and not tables:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    version, app_id, tables = SCHEMA_VERSION, APPLICATION_ID, {"lots"}
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        if app_id != APPLICATION_ID:
            raise HistoryError(f"{where}: not an ate-master lot history (application id "
                               f"{app_id:#x}, tables: {', '.join(sorted(tables)) or 'none'})")
        if version > SCHEMA_VERSION:
            raise HistoryError(f"{where}: schema version {version} is newer than this "
                               f"ate-master's ({SCHEMA_VERSION}); use a newer ate-master "
                               f"or another history_database")
        if version != SCHEMA_VERSION:
            raise HistoryError(f"{where}: unknown schema version {version} "
                               f"(this ate-master writes {SCHEMA_VERSION})")
        columns = {r[1] for r in conn.execute("PRAGMA table_info(lots)")}
        if not _EXPECTED <= columns:
            missing = ", ".join(sorted(_EXPECTED - columns))
            raise HistoryError(f"{where}: table lots lacks column(s) {missing}")
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error as err:
        raise HistoryError(f"{where}: cannot be used: {err}") from None


def _identity(conn: sqlite3.Connection) -> tuple[int, int, set[str]]:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    return int(version), int(app_id), tables
