"""The cell's collaborators, as narrow Protocols, and its plain records.

:class:`~ate.master.cell.Cell` talks to MQTT through a :class:`Publisher`, loads jobs
from a :class:`JobSource`, writes a :class:`LotDatalog` and sets the level of
:class:`LevelSink` log observers; :class:`CommandRefused` is what its UI/API inputs
raise when the master machine refuses, :class:`Metrics` its counters.  All are
re-exported by :mod:`ate.master.cell`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from twisted.internet.defer import Deferred

from ate.jobs.model import Job
from ate.master.lot import Lot
from ate.master.machine import Refusal
from ate.master.settings import SettingsError

__all__ = ["CommandRefused", "JobSource", "LevelSink", "LotDatalog", "Metrics", "Publisher"]


class Publisher(Protocol):
    """What the cell needs from MQTT (``MqttService``; a recorder in tests)."""

    def publish(self, topic: str, payload: bytes, qos: int = 2) -> Deferred: ...


class JobSource(Protocol):
    """Where a lot's job comes from (``ate.jobs.source``)."""

    def load(self, lot_number: str) -> Job: ...


class LotDatalog(Protocol):
    """What the cell needs from a lot's datalog (``ate.stdf.sink.Datalog``)."""

    path: str
    finalised: bool

    def write_parts(self, parts: Sequence[tuple[str, Sequence[dict]]],
                    start_t: float) -> list[str]: ...
    def write_text(self, text: str, start_t: float) -> list[str]: ...
    def add_summary(self, site: str, tsr_records: Sequence[dict]) -> list[str]: ...
    def finalise(self, lot: Lot, *, finish_t: float, reason: str = "") -> None: ...


class LevelSink(Protocol):
    """A log observer whose level follows ``setloglevel`` (LogBuffer, LogFileWriter)."""

    def set_level(self, level: int) -> None: ...


class CommandRefused(SettingsError):
    """A UI/API change (usersettings, bin_map) the master machine refuses in its state;
    ``refusal`` is the machine's answer (its ``response_type`` says busy or error)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


@dataclass
class Metrics:
    """Counters for /metrics and the operator."""

    parts: int = 0
    cycles: int = 0
    commands_refused: int = 0
    protocol_errors: dict[str, int] = field(default_factory=dict)
    unexpected_results: int = 0
    duplicate_results: int = 0
    bad_records: int = 0
    softerrors: int = 0
    mqtt_disconnects: int = 0

    def count_protocol_error(self, kind: str) -> None:
        self.protocol_errors[kind] = self.protocol_errors.get(kind, 0) + 1
