"""The master's lot history (protocol §15.3): :class:`LotHistory` around
:class:`ate.history.History`.

Opened at start-up (``history_database``, default ``<stdf_directory>/history.sqlite``);
a database that cannot be opened is logged at ERROR and the master runs without history
and without the statistical alarm rules.  Before the master serves, every
``*.summary.json`` of the datalog directory not recorded yet is imported (lots finalised
before the database existed, and files repaired at start-up).  Every lot the cell
finalises (its ``finalised`` event) is recorded from the summary written beside its
datalog: one small write of well under a millisecond at the end of a lot
(``bench/history.py``), on the reactor thread.  The alarm rules read their baseline once
per load through :meth:`baseline`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.logger import Logger

from ate.alarms.monitor import Baseline
from ate.history import History, HistoryError

__all__ = ["LotHistory", "history_path"]


def history_path(config: Any) -> str:
    """The database path of ``config`` (``history_database`` or the default)."""
    path = getattr(config, "history_database", None)
    return path or os.path.join(config.stdf_directory, "history.sqlite")


class LotHistory:
    """The history of a master; ``db`` is None when it is disabled (the reason in
    ``problem``)."""

    log = Logger(namespace="ate.history")

    def __init__(self, db: History | None, problem: str = "") -> None:
        self.db = db
        self.problem = problem

    @classmethod
    def open(cls, config: Any) -> LotHistory:
        """Open the history of ``config`` and import the summaries of its datalog
        directory; never raises (a failure disables the history and is logged)."""
        path = history_path(config)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            db = History.open(path)
        except (HistoryError, OSError) as e:
            cls.log.error("lot history disabled (no lot history, no statistical alarm "
                          "rules): {e}", e=e)
            return cls(None, str(e))
        history = cls(db)
        try:
            added = db.import_summaries(config.stdf_directory)
        except HistoryError as e:
            cls.log.error("lot history: importing the summaries of {d} failed: {e}",
                          d=config.stdf_directory, e=e)
        else:
            if added:
                cls.log.info("lot history: {n} earlier lot(s) imported from {d}", n=added,
                             d=config.stdf_directory)
        return history

    @property
    def enabled(self) -> bool:
        return self.db is not None

    def cell_event(self, kind: str, data: Any) -> None:
        """A cell listener: records each finalised lot."""
        if kind == "finalised" and isinstance(data, str):
            self.record_datalog(data)

    def record_datalog(self, datalog_path: str) -> int | None:
        """Record the lot of ``datalog_path`` from its ``.summary.json``; a failure is
        logged and changes nothing else."""
        if self.db is None:
            return None
        summary_path = os.path.splitext(datalog_path)[0] + ".summary.json"
        try:
            with open(summary_path, encoding="utf-8") as fh:
                summary = json.load(fh)
            return self.db.record(summary, datalog_path=datalog_path)
        except (OSError, ValueError, HistoryError) as e:
            self.log.warn("lot history: lot of {path} not recorded: {e}", path=datalog_path,
                          e=e)
            return None

    def baseline(self, part_type: str, depth: int) -> Baseline | None:
        """The last ``depth`` finalised lots of ``part_type`` for the SYL/SBL rules."""
        if self.db is None:
            return None
        try:
            data = self.db.baseline(part_type, depth)
        except (HistoryError, ValueError) as e:
            self.log.warn("lot history: no baseline for part type {pt!r}: {e}",
                          pt=part_type, e=e)
            return None
        return Baseline(lots=data.lots, yields=data.yields, bin_shares=data.bin_shares,
                        part_type=part_type)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
