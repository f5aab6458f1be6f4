"""Production figures of protocol.md §15.4: units per hour, index and test time, site
utilisation and SEMI E10 time per state, per lot and since start.

:class:`Production` is pure bookkeeping fed by the cell, each call O(1) amortised, with
time from the injected clock (an ``IReactorTime``).  It publishes nothing; the cell puts
:meth:`Production.figures` into ``GET /api/v1/production``, :meth:`Production.metrics_text`
into ``/metrics`` and :meth:`Production.summary` into the lot summary.

Definitions (the choices §15.4 leaves open are made here):

* **parts**: tested site slots of completed cycles, counted when the cycle's last site
  result arrived (:meth:`~Production.last_result`).  **cycles**: those completed cycles.
* **units per hour**: parts completed in the window, scaled to an hour.  The windows are
  one hour and five minutes, kept in a fixed ring of one-second buckets (3600 of them, so
  memory does not grow with parts).  During the first hour of a scope (since start, or the
  lot) the count is scaled by the time elapsed since the scope's first accepted ``next``
  (at least one second): ``parts * 3600 / min(3600, elapsed)``, so the figure is a rate
  from the first part on rather than a raw count that climbs for an hour.  The 5-min figure
  is the same with 300 s (once five minutes have elapsed: ``parts in the last 300 s * 12``).
  The window ends at the current (partial) second, so it covers 299 to 300 (3599 to 3600)
  whole seconds.  ``uph_mean`` is ``parts * 3600 / elapsed`` since that first ``next``.
* **index time**: from the master's ``next`` response to the next accepted ``next``, within
  one lot and only while the master stays in ``ready``/``testing`` with the lot, not held
  and connected; a long pause in plain ``ready`` counts as index time, while a hold, a lost
  broker, an unload, a reset or any other state ends the interval (that time is downtime
  in E10, not handler index).
* **test time**: from the accepted ``next`` to the cycle's last site result.
* **site utilisation**: tested site slots / offered (configured) site slots over the
  accepted ``next`` commands; ``None`` before the first.
* **SEMI E10** (time accrues between calls of :meth:`~Production.state`):
  ``productive`` = ``testing``, or ``ready`` with a lot; ``standby`` = ``initialized``,
  ``loading``, ``unloading`` (and ``ready`` without a lot); ``unscheduled_down`` =
  ``softerror``, ``error``, held, a ``connecting`` after the master was initialized once
  (a reset or a reconnect), and the broker lost (which wins over every other state);
  ``non_scheduled`` = ``connecting`` at start-up before the first ``initialized`` (with or
  without a broker not yet reached) and ``stopped`` (shut down).
* a lot's figures start at zero on :meth:`~Production.new_lot` and are frozen at
  :meth:`~Production.end_lot` (its windows and E10 times are those at the end), and kept
  for the summary until the next :meth:`~Production.new_lot`.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime

from ate.promtext import labels, number

__all__ = ["E10_STATES", "HISTOGRAM_BUCKETS", "MASTER_STATES", "Production",
           "production_lines"]

#: the SEMI E10 states reported, in this order
E10_STATES = ("productive", "standby", "unscheduled_down", "non_scheduled")

#: the external states of protocol.md §3.1 (and ``stopped``, at shutdown) that
#: :meth:`Production.state` accepts
MASTER_STATES = frozenset(("connecting", "initialized", "loading", "ready", "testing",
                           "unloading", "softerror", "error", "stopped"))

#: upper bounds (seconds) of the index and test time histograms of ``/metrics``
HISTOGRAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                     60.0)

HOUR = 3600
SHORT = 300
DAY = 24 * HOUR
#: the lot's last cycles kept for the UI's histogram of test and index time
RECENT_MAX = 500
#: at most this many E10 state changes are kept for the timeline
TIMELINE_MAX = 10000


class _Ring:
    """Counts per second over the last ``size`` seconds in a fixed ring of buckets, with
    running sums over the whole ring and over its last ``short`` seconds."""

    __slots__ = ("size", "short", "buckets", "head", "long_sum", "short_sum")

    def __init__(self, size: int = HOUR, short: int = SHORT) -> None:
        self.size = size
        self.short = short
        self.buckets = [0] * size
        self.head: int | None = None  # the second of the newest bucket
        self.long_sum = 0
        self.short_sum = 0

    def advance(self, now: float) -> None:
        """Move the ring's newest bucket to the second of ``now`` (never backwards)."""
        sec = math.floor(now)
        head = self.head
        if head is None:
            self.head = sec
            return
        if sec <= head:
            return
        if sec - head >= self.size:
            self.buckets = [0] * self.size
            self.long_sum = self.short_sum = 0
        else:
            buckets, size = self.buckets, self.size
            for s in range(head + 1, sec + 1):
                self.short_sum -= buckets[(s - self.short) % size]
                self.long_sum -= buckets[s % size]
                buckets[s % size] = 0
        self.head = sec

    def add(self, now: float, count: int) -> None:
        self.advance(now)
        assert self.head is not None
        self.buckets[self.head % self.size] += count
        self.long_sum += count
        self.short_sum += count


class _Stats:
    """Count, mean, min, max and last of a stream of durations, in O(1) memory."""

    __slots__ = ("count", "total", "low", "high", "last")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.low = self.high = self.last = 0.0

    def add(self, value: float) -> None:
        if self.count == 0:
            self.low = self.high = value
        else:
            self.low = min(self.low, value)
            self.high = max(self.high, value)
        self.count += 1
        self.total += value
        self.last = value

    def as_dict(self) -> dict[str, Any]:
        if not self.count:
            return {"count": 0, "mean": None, "min": None, "max": None, "last": None}
        return {"count": self.count, "mean": self.total / self.count, "min": self.low,
                "max": self.high, "last": self.last}


class _Histogram:
    """Prometheus histogram: counts per bucket (cumulated when rendered), sum and count."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...] = HISTOGRAM_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((bound, running))
        return out


class _Scope:
    """The figures of one scope: since start, or one lot."""

    __slots__ = ("ring", "parts", "cycles", "offered", "tested", "index", "test", "e10",
                 "first_next", "index_hist", "test_hist")

    def __init__(self, histograms: bool = False) -> None:
        self.ring = _Ring()
        self.parts = 0
        self.cycles = 0
        self.offered = 0
        self.tested = 0
        self.index = _Stats()
        self.test = _Stats()
        self.e10 = dict.fromkeys(E10_STATES, 0.0)
        self.first_next: float | None = None
        self.index_hist = _Histogram() if histograms else None
        self.test_hist = _Histogram() if histograms else None

    def uph(self, now: float) -> tuple[float, float, float]:
        """Units per hour over the last hour, the last 5 minutes, and since the first
        ``next`` of the scope, at ``now``."""
        if self.first_next is None:
            return 0.0, 0.0, 0.0
        self.ring.advance(now)
        elapsed = max(now - self.first_next, 1.0)
        return (self.ring.long_sum * HOUR / min(float(HOUR), elapsed),
                self.ring.short_sum * HOUR / min(float(SHORT), elapsed),
                self.parts * HOUR / elapsed)

    def block(self, now: float) -> dict[str, Any]:
        uph_1h, uph_5m, uph_mean = self.uph(now)
        return {
            "uph_1h": uph_1h,
            "uph_5m": uph_5m,
            "uph_mean": uph_mean,
            "parts": self.parts,
            "cycles": self.cycles,
            "slots_offered": self.offered,
            "slots_tested": self.tested,
            "index_time_s": self.index.as_dict(),
            "test_time_s": self.test.as_dict(),
            "site_utilisation": self.tested / self.offered if self.offered else None,
            "e10_seconds": dict(self.e10),
        }


def _count(value: Any, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"production: {what} must be an integer >= {low}, got {value!r}")
    return value


class Production:
    """Production figures of protocol.md §15.4 (see the module's docstring for the
    definitions).  Every input is O(1) amortised; the clock gives the time."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        now = clock.seconds()
        self._start = _Scope(histograms=True)
        self._lot: _Scope | None = None
        self._lot_number: str | None = None
        self._lot_started: float | None = None
        self._lot_ended: float | None = None
        self._e10_state = "non_scheduled"
        #: (clock seconds, E10 state) at every change of the E10 state, the last day's
        self._timeline: deque[tuple[float, str]] = deque([(now, "non_scheduled")],
                                                         maxlen=TIMELINE_MAX)
        self._since = now
        #: the lot's last cycles as [test_s, index_s or None] (the index that followed it)
        self._recent: deque[list[Any]] = deque(maxlen=RECENT_MAX)
        self._initialized_once = False
        self._connected_once = False
        self._state = "connecting"
        self._lot_flag = False
        self._held = False
        self._connected = False
        self._next_at: float | None = None   # the pending cycle's accepted next
        self._tested_now = 0                  # its tested slots
        self._cycle_open = False              # a next accepted, its response not out yet
        self._response_at: float | None = None  # the last response, while index runs

    # -- inputs ------------------------------------------------------------------------

    def state(self, state: str, *, lot: bool, held: bool, connected: bool) -> None:
        """The master's external ``state``, whether a lot is loaded, held by an alarm, and
        connected to the broker, on every change of any of them (first call at start-up)."""
        if state not in MASTER_STATES:
            raise ValueError(f"production: unknown master state {state!r} "
                             f"(expected one of {', '.join(sorted(MASTER_STATES))})")
        for name, flag in (("lot", lot), ("held", held), ("connected", connected)):
            if not isinstance(flag, bool):
                raise ValueError(f"production: {name} must be a bool, got {flag!r}")
        self._accrue(self.clock.seconds())
        if state == "initialized":
            self._initialized_once = True
        if connected:
            self._connected_once = True
        self._state, self._lot_flag, self._held, self._connected = state, lot, held, connected
        e10 = self._classify()
        if e10 != self._e10_state:
            self._timeline.append((self.clock.seconds(), e10))
        self._e10_state = e10
        if not self._indexing():
            self._response_at = None

    def new_lot(self, lot_number: str) -> None:
        """A lot was loaded: its figures start at zero."""
        if not isinstance(lot_number, str) or not lot_number:
            raise ValueError(f"production: lot_number must be a non-empty string, "
                             f"got {lot_number!r}")
        now = self.clock.seconds()
        self._accrue(now)
        self._lot = _Scope()
        self._recent.clear()
        self._lot_number = lot_number
        self._lot_started = now
        self._lot_ended = None
        self._response_at = None
        self._next_at = None
        self._cycle_open = False

    def end_lot(self) -> None:
        """The lot ended (unload, reset): its figures are frozen and kept for the summary
        until the next :meth:`new_lot`.  Without an open lot it changes nothing."""
        if self._lot is None or self._lot_ended is not None:
            return
        now = self.clock.seconds()
        self._accrue(now)
        self._lot.ring.advance(now)
        self._lot_ended = now
        self._response_at = None
        self._next_at = None
        self._cycle_open = False

    def next_command(self, offered: int, tested: int) -> None:
        """A ``next`` was accepted: ``offered`` configured sites, ``tested`` of them in
        this part."""
        offered = _count(offered, "offered", 1)
        tested = _count(tested, "tested", 0)
        if tested > offered:
            raise ValueError(f"production: tested ({tested}) must not exceed offered "
                             f"({offered})")
        now = self.clock.seconds()
        scopes = self._scopes()
        index = None
        if self._response_at is not None and self._indexing():
            index = max(now - self._response_at, 0.0)
        self._response_at = None
        for scope in scopes:
            scope.offered += offered
            scope.tested += tested
            if scope.first_next is None:
                scope.first_next = now
            if index is not None:
                scope.index.add(index)
                if scope.index_hist is not None:
                    scope.index_hist.observe(index)
        if index is not None and self._recent:
            self._recent[-1][1] = index
        self._next_at = now
        self._tested_now = tested
        self._cycle_open = True

    def last_result(self) -> None:
        """The pending part's last site result arrived: the cycle is complete (its test
        time ends, its tested slots count as parts).  Without a pending ``next`` it
        changes nothing."""
        if self._next_at is None:
            return
        now = self.clock.seconds()
        test = max(now - self._next_at, 0.0)
        for scope in self._scopes():
            scope.cycles += 1
            scope.parts += self._tested_now
            scope.ring.add(now, self._tested_now)
            scope.test.add(test)
            if scope.test_hist is not None:
                scope.test_hist.observe(test)
        if self._lot is not None:
            self._recent.append([test, None])
        self._next_at = None

    def next_response(self) -> None:
        """The master's ``next`` response went out: the index time starts (within a lot,
        in ``ready`` or ``testing``, not held, connected).  Without an accepted ``next``
        before it, it changes nothing."""
        if not self._cycle_open:
            return
        self._cycle_open = False
        self._next_at = None
        self._response_at = self.clock.seconds() if self._indexing() else None

    # -- outputs -----------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """``{"since_start": block, "lot": block | None, "e10_state": str}``; a lot block
        also has ``lot_number``, ``started``, ``ended`` (clock seconds, ``None`` while
        open) and ``open``."""
        now = self.clock.seconds()
        self._accrue(now)
        return {"since_start": self._start.block(now), "lot": self._lot_block(now),
                "e10_state": self._e10_state, "e10_timeline": self.timeline(now),
                "recent_cycles": [list(c) for c in self._recent], "now": now}

    def timeline(self, now: float | None = None) -> list[list[Any]]:
        """The E10 state changes of the last 24 h as ``[start, state]`` pairs, oldest
        first; the first pair starts at most 24 h ago (the state then in force)."""
        now = self.clock.seconds() if now is None else now
        since = now - DAY
        out: list[list[Any]] = []
        for t, state in self._timeline:
            if t <= since:
                out = [[since, state]]
            else:
                out.append([t, state])
        return out

    def summary(self) -> dict[str, Any]:
        """The lot block (as in :meth:`figures`) for the lot summary; ``{}`` before the
        first lot."""
        now = self.clock.seconds()
        self._accrue(now)
        return self._lot_block(now) or {}

    def summary_text(self) -> str:
        """The lines of :meth:`summary` for the text summary (``""`` before the first
        lot)."""
        lines = production_lines(self.summary())
        return "\n".join(lines) + "\n" if lines else ""

    def metrics_text(self) -> str:
        """Prometheus text format 0.0.4 lines (since start), ending with a newline."""
        now = self.clock.seconds()
        self._accrue(now)
        start = self._start
        uph_1h, uph_5m, _ = start.uph(now)
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str,
                   samples: list[tuple[str, float | int]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{label_set} {number(value)}" for label_set, value in samples)

        metric("ate_uph", "gauge", "Units (tested site slots) per hour, by window.",
               [(labels(window="1h"), uph_1h), (labels(window="5m"), uph_5m)])
        for name, help_text, hist in (
                ("ate_index_seconds", "Index time, from the next response to the next "
                 "next command.", start.index_hist),
                ("ate_test_seconds", "Test time, from the next command to the last site "
                 "result.", start.test_hist)):
            assert hist is not None
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} histogram")
            for bound, count in hist.cumulative():
                lines.append(f"{name}_bucket{labels(le=number(bound))} {count}")
            lines.append(f"{name}_bucket{labels(le='+Inf')} {hist.count}")
            lines.append(f"{name}_sum {number(hist.total)}")
            lines.append(f"{name}_count {hist.count}")
        metric("ate_site_slots_offered_total", "counter",
               "Site slots offered by accepted next commands (configured sites).",
               [("", start.offered)])
        metric("ate_site_slots_tested_total", "counter",
               "Site slots tested by accepted next commands.", [("", start.tested)])
        metric("ate_e10_seconds_total", "counter", "Seconds in each SEMI E10 state.",
               [(labels(state=s), start.e10[s]) for s in E10_STATES])
        return "\n".join(lines) + "\n"

    # -- internals ---------------------------------------------------------------------

    def _scopes(self) -> tuple[_Scope, ...]:
        if self._lot is not None and self._lot_ended is None:
            return (self._start, self._lot)
        return (self._start,)

    def _accrue(self, now: float) -> None:
        """Add the time since the last accrual to the current E10 state."""
        dt = now - self._since
        self._since = now
        if dt <= 0:
            return
        for scope in self._scopes():
            scope.e10[self._e10_state] += dt

    def _classify(self) -> str:
        state = self._state
        if not self._connected and self._connected_once:
            return "unscheduled_down"
        if self._held or state in ("softerror", "error"):
            return "unscheduled_down"
        if state == "connecting":
            return "unscheduled_down" if self._initialized_once else "non_scheduled"
        if state == "stopped":
            return "non_scheduled"
        if state == "testing" or (state == "ready" and self._lot_flag):
            return "productive"
        return "standby"

    def _indexing(self) -> bool:
        """Whether the time now may be index time."""
        return (self._lot is not None and self._lot_ended is None and self._lot_flag
                and self._state in ("ready", "testing") and not self._held
                and self._connected)

    def _lot_block(self, now: float) -> dict[str, Any] | None:
        if self._lot is None:
            return None
        at = now if self._lot_ended is None else self._lot_ended
        block = {"lot_number": self._lot_number, "started": self._lot_started,
                 "ended": self._lot_ended, "open": self._lot_ended is None}
        block.update(self._lot.block(at))
        return block


def production_lines(block: Mapping[str, Any]) -> list[str]:
    """Text summary lines of a lot block (:meth:`Production.summary`, also as read back
    from JSON); ``[]`` for an empty block."""
    if not block:
        return []
    util = block.get("site_utilisation")
    util_text = "n/a" if util is None else f"{util * 100:.1f}%"
    lines = [
        "Production:",
        f"  Parts: {block.get('parts', 0)} in {block.get('cycles', 0)} cycles, "
        f"site utilisation {util_text}",
        f"  UPH: {block.get('uph_1h', 0.0):.0f} last hour, {block.get('uph_5m', 0.0):.0f} "
        f"last 5 min, {block.get('uph_mean', 0.0):.0f} mean",
        "  " + _stats_line("Test time", block.get("test_time_s")),
        "  " + _stats_line("Index time", block.get("index_time_s")),
    ]
    e10 = block.get("e10_seconds") or {}
    total = sum(float(e10.get(s, 0.0)) for s in E10_STATES)
    parts = []
    for s in E10_STATES:
        seconds = float(e10.get(s, 0.0))
        share = f" ({seconds / total * 100:.1f}%)" if total > 0 else ""
        parts.append(f"{s} {seconds:.1f} s{share}")
    lines.append("  E10: " + ", ".join(parts))
    return lines


def _stats_line(label: str, stats: Mapping[str, Any] | None) -> str:
    if not stats or not stats.get("count"):
        return f"{label}: no data"
    return (f"{label}: n={stats['count']} min={stats['min']:.3f} s "
            f"mean={stats['mean']:.3f} s max={stats['max']:.3f} s "
            f"last={stats['last']:.3f} s")





