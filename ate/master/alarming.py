"""The lot's alarms as the cell runs them (protocol §15.2): what an alarm does.

:class:`LotAlarms` wraps one :class:`~ate.alarms.monitor.AlarmMonitor` per lot (built at
load from the config's ``alarms`` rules and, for the statistical rules, a baseline read
once from the lot history) and carries out every alarm's actions: a WARNING
``alarm <name>: <message>``, ``~/Master/alarm`` (QoS 2), the ``alarm`` frame on ``/ws``,
the ``ate_alarms_total{kind, action}`` count, a DTR in the datalog at that point of the
part stream and an entry in the lot summary.  A ``hold`` alarm holds the lot: the cell
asks :meth:`next_refusal` before every ``next`` and shows :meth:`held_text` as the
status ``error_message`` while ready.  Release (HTTP API or operator UI) writes the
``RELEASE`` DTR and lets ``next`` through again; unload and reset end a hold.

The monitor evaluates each completed site result in O(1); nothing here loops over the
lot.  Which parts are good follows §15.1: the soft bin's group is ``BT_PASS`` (a job
without a ``BT_PASS`` group: soft bins 1-9, as the summary's yield).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from twisted.logger import Logger

from ate.master.lot import PartOutcome
from ate.master.lotlog import LotLog
from ate.protocol import messages as m
from ate.stdf.summary import is_good_bin

if TYPE_CHECKING:
    from ate.alarms.monitor import Alarm, AlarmMonitor, Baseline
    from ate.alarms.rules import AlarmRule

__all__ = ["AlarmError", "LotAlarms"]

#: the group whose soft bins are good parts (protocol 7.2, §15.1)
PASS_GROUP = "BT_PASS"


class AlarmError(ValueError):
    """A release that cannot be done; ``status`` is the HTTP status the API answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def good_bins(job: Any) -> Callable[[int], bool]:
    """Whether a soft bin is a good part for ``job`` (§15.1)."""
    bins = getattr(job, "bins", ())
    good = frozenset(e.sbin for e in bins if e.group == PASS_GROUP)
    if not any(e.group == PASS_GROUP for e in bins):
        return is_good_bin
    return good.__contains__


class LotAlarms:
    """The alarms of the current lot; ``publish`` sends a message, ``emit`` a cell event
    (the feed's frames), ``status_changed`` is called when the hold starts or ends."""

    log = Logger(namespace="ate.master.alarms")

    def __init__(self, rules: Sequence[AlarmRule], sites: Sequence[str], *,
                 records: LotLog, publish: Callable[[Any], Any],
                 emit: Callable[[str, Any], None], status_changed: Callable[[], None],
                 wallclock: Callable[[], float],
                 baseline: Callable[[str, int], Baseline | None] | None = None) -> None:
        self.rules = tuple(rules)
        self.sites = tuple(sites)
        self.records = records
        self.publish = publish
        self.emit = emit
        self.status_changed = status_changed
        self.wallclock = wallclock
        self.baseline = baseline
        self.counts: Counter[tuple[str, str]] = Counter()  # (kind, action) -> alarms raised
        self.monitor: AlarmMonitor | None = None
        self.lot_number = ""
        self._good: Callable[[int], bool] = is_good_bin
        self._ended_held = False
        self._next_id = 1  # alarm ids are unique while the master runs

    # -- the lot ------------------------------------------------------------------------

    def start_lot(self, job: Any) -> None:
        """A lot was loaded: a new monitor (no rules: none at all, nothing is evaluated)."""
        self.lot_number = job.lot_number
        self._good = good_bins(job)
        self._ended_held = False
        if not self.rules:
            self.monitor = None
            return
        from ate.alarms.monitor import AlarmMonitor

        baseline = None
        if self.baseline is not None and any(
                r.kind.startswith("statistical_") for r in self.rules):
            depth = max(r.history for r in self.rules if r.kind.startswith("statistical_"))
            baseline = self.baseline(getattr(job, "part_typ", "") or "", depth)
        self.monitor = AlarmMonitor(self.rules, self.sites, job.lot_number, baseline,
                                    self.wallclock, first_id=self._next_id)
        for note in self.monitor.inactive():
            self.log.info("{note}", note=note)

    def judge(self, outcomes: Iterable[PartOutcome]) -> None:
        """Evaluate the completed site results of a part (after its PRRs are written)."""
        monitor = self.monitor
        if monitor is None:
            return
        good = self._good
        was_held = monitor.held() is not None
        for o in outcomes:
            previous = o.previous
            prev = None if previous is None else (previous[0], good(previous[1]), previous[1])
            for alarm in monitor.part(o.site, good(o.soft_bin), o.soft_bin, prev):
                self._raised(alarm)
        if not was_held and monitor.held() is not None:
            self.status_changed()

    def end_lot(self) -> dict[str, Any]:
        """Unload or reset: the hold ends; what the lot summary records of the alarms."""
        monitor = self.monitor
        held = monitor.held() if monitor is not None else None
        alarms = [a.to_payload() | {"released_by": a.released_by, "comment": a.comment}
                  for a in (monitor.alarms() if monitor is not None else ())]
        if monitor is not None:
            self._next_id = monitor.next_id
        self.monitor = None
        if held is not None:
            self.log.info("lot {lot} ended held by alarm {name}", lot=self.lot_number,
                          name=held.name)
        return {"alarms": alarms, "ended_held": held is not None}

    # -- queries ------------------------------------------------------------------------

    def held(self) -> Alarm | None:
        return self.monitor.held() if self.monitor is not None else None

    def held_text(self) -> str:
        """``held: <name>: <message>`` while a hold alarm holds the lot, else ''."""
        alarm = self.held()
        return "" if alarm is None else f"held: {alarm.name}: {alarm.message}"

    def next_refusal_text(self) -> str | None:
        """The error response's message for a ``next`` while held (§15.2), else None."""
        alarm = self.held()
        if alarm is None:
            return None
        return f"next refused: held by alarm {alarm.name}: {alarm.message}"

    def alarms(self) -> list[dict[str, Any]]:
        """The lot's alarms for ``GET /api/v1/alarms`` (oldest first)."""
        if self.monitor is None:
            return []
        return [a.to_payload() | {"released_by": a.released_by, "comment": a.comment}
                for a in self.monitor.alarms()]

    # -- release ------------------------------------------------------------------------

    def release(self, alarm_id: Any, operator: Any, comment: Any) -> dict[str, Any]:
        """Release alarm ``alarm_id``; raises :class:`AlarmError` naming what is wrong."""
        for name, value in (("operator", operator), ("comment", comment)):
            if not isinstance(value, str) or not value.strip():
                raise AlarmError(400, f"{name}: must be a non-empty string, got {value!r}")
        monitor = self.monitor
        if monitor is None:
            raise AlarmError(404, f"alarm {alarm_id}: no lot is loaded")
        known = {a.id: a for a in monitor.alarms()}
        alarm = known.get(alarm_id)
        if alarm is None:
            raise AlarmError(404, f"alarm {alarm_id}: no such alarm in lot {self.lot_number}")
        if alarm.state == "released":
            raise AlarmError(409, f"alarm {alarm_id} ({alarm.name}) is already released")
        was_held = monitor.held() is not None
        released = monitor.release(alarm_id, operator.strip(), comment.strip())
        text = f"RELEASE {released.name} by {released.released_by}: {released.comment}"
        self.log.info("alarm {id} {text}", id=released.id, text=text)
        self.records.write_text(text)
        self._announce(released)
        if was_held and monitor.held() is None:
            self.status_changed()
        return released.to_payload() | {"released_by": released.released_by,
                                         "comment": released.comment}

    # -- internals ----------------------------------------------------------------------

    def _raised(self, alarm: Alarm) -> None:
        self.counts[(alarm.kind, alarm.action)] += 1
        self.log.warn("alarm {name}: {message}", name=alarm.name, message=alarm.message)
        self.records.write_text(f"ALARM {alarm.name}: {alarm.message}")
        self._announce(alarm)

    def _announce(self, alarm: Alarm) -> None:
        payload = alarm.to_payload()
        self.publish(m.MasterAlarm(payload))
        self.emit("alarm", payload)
