"""The lot's datalog as the cell keeps it: created at load, parts and summaries written,
finalised once (protocol §3.6, §7.4), and the lot's once-only warnings.

:class:`LotLog` is the cell's one way to the datalog; it logs through the cell's logger
and counts bad records in the cell's :class:`~ate.master.collaborators.Metrics`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ate.jobs.model import Job
from ate.master.collaborators import LotDatalog, Metrics
from ate.master.lot import Lot
from ate.master.partplan import Part
from ate.stdf.sink import Datalog

__all__ = ["LotLog"]


class LotLog:
    """The datalog of the current lot (``datalog`` is None before the first load),
    ``setup_t`` (when it was created) and ``start_t`` (the lot's first part, None before).
    """

    def __init__(self, config: Any, sites: Sequence[str], clock: IReactorTime, *,
                 log: Logger, metrics: Metrics, emit: Callable[[str, Any], None],
                 wallclock: Callable[[], float],
                 run_in_thread: Callable[..., Deferred] | None) -> None:
        self.config = config
        self.sites = tuple(sites)
        self.clock = clock
        self.log = log
        self.metrics = metrics
        self.emit = emit
        self.wallclock = wallclock
        self.run_in_thread = run_in_thread
        self.datalog: LotDatalog | None = None
        self.setup_t = 0.0
        self.start_t: float | None = None
        self._notes: set[str] = set()  # per-lot warnings already logged once

    def create(self, job: Job) -> None:
        """A new datalog for ``job``'s lot; raises OSError when it cannot be made."""
        os.makedirs(self.config.stdf_directory, exist_ok=True)
        self.setup_t = self.wallclock()
        self.datalog = Datalog.create(
            self.config.stdf_directory, job, self.config.device_id, self.sites, self.setup_t,
            clock=self.clock, fsync_interval=self.config.stdf_fsync_interval,
            run_in_thread=self.run_in_thread,
        )
        self.log.info("datalog {path}", path=self.datalog.path)

    def new_lot(self) -> None:
        """A lot starts: no part yet, no warning logged yet."""
        self.start_t = None
        self._notes = set()

    def first_part(self) -> bool:
        """Whether this part is the lot's first (it then sets ``start_t``)."""
        first = self.start_t is None
        if first:
            self.start_t = self.wallclock()
        return first

    def start(self) -> float:
        """The lot's start time: its first part, or the setup before that."""
        return self.start_t if self.start_t is not None else self.setup_t

    @property
    def open(self) -> bool:
        """There is a datalog and it is not finalised yet."""
        return self.datalog is not None and not self.datalog.finalised

    def write_part(self, part: Part) -> None:
        if part.written or not part.results or self.datalog is None or self.datalog.finalised:
            return
        part.written = True
        self.write_results(part.results)

    def write_results(self, results: Sequence[tuple[str, Sequence[dict]]]) -> None:
        if self.datalog is None or self.datalog.finalised:
            return
        problems = self.datalog.write_parts(results, self.start())
        self.count_problems(problems)

    def write_text(self, text: str) -> None:
        """A DTR at this point of the part stream (an alarm, a release)."""
        if self.datalog is None or self.datalog.finalised:
            return
        self.count_problems(self.datalog.write_text(text, self.start()))

    def add_summary(self, site: str, records: Sequence[dict]) -> None:
        assert self.datalog is not None
        self.count_problems(self.datalog.add_summary(site, records))

    def note_once(self, key: str, text: str) -> None:
        """A warning about the lot's data that would repeat every part: logged once per lot."""
        if key in self._notes:
            return
        self._notes.add(key)
        self.log.warn("{text} (logged once per lot)", text=text)

    def count_problems(self, problems: Sequence[str]) -> None:
        for problem in problems:
            self.metrics.bad_records += 1
            self.log.warn("datalog: {problem}", problem=problem)

    def finalise(self, lot: Lot | None, reason: str) -> None:
        datalog = self.datalog
        if datalog is None or datalog.finalised or lot is None:
            return
        try:
            datalog.finalise(lot, finish_t=self.wallclock(), reason=reason)
            self.log.info("datalog {path} finalised{why}", path=datalog.path,
                          why=f" ({reason})" if reason else "")
        except OSError as e:
            self.log.error("datalog {path} could not be finalised: {e}", path=datalog.path, e=e)
        self.emit("finalised", datalog.path)
