"""Evaluation of the alarm rules of one lot (protocol.md 15.1): :class:`AlarmMonitor`.

Pure: no Twisted, no I/O; the wall clock is a callable passed in (``reactor.seconds``).
The master creates one monitor per lot and calls :meth:`AlarmMonitor.part` once per
completed site result.  Each call is O(number of rules): running totals per lot, per site
and per soft bin a rule names, nothing rescans the lot or loops over the sites.

Counting (protocol.md 7.1: a part's last result counts)
    ``part(site, good, sbin, previous)`` with ``previous`` the part's earlier result when it
    is a retest.  The lot, site and bin counters are exact: the earlier result's
    contribution is removed before the new one is added, so a failing part retested good
    un-counts the fail.  ``lot_yield``, ``bin_limit``, the statistical rules,
    ``site_divergence`` and ``site_yield`` with ``window = 0`` read these counters; a site's
    counters hold the parts whose current result is from that site (as the yield table).
    ``consecutive_fails`` and a windowed ``site_yield`` follow the *tests* of a site: a
    retest enters its site's sequence and window as a new test, and the earlier test stays
    where it was (they watch the site's hardware, which did test that part twice).

Thresholds ("fires exactly at the threshold part, not before")
    - ``consecutive_fails``: the ``count``-th failing test in a row on a site fires.
    - ``site_yield``: evaluated once the site has ``min_parts`` (parts, or tests when
      windowed); yield strictly below ``min_percent`` fires.  The window holds the site's
      last ``min(window, tests)`` tests.
    - ``lot_yield``: evaluated once the lot has ``min_parts`` distinct parts; strictly below.
    - ``bin_limit``: share strictly above ``max_percent`` once the lot has ``min_parts``
      parts, or count strictly above ``max_count`` (a count limit is absolute: it does not
      wait for ``min_parts``).
    - ``site_divergence``: the site of the result against the pooled other sites, the
      standard two-proportion z-test with pooled variance,
      ``z = (p1 - p2) / sqrt(p (1 - p) (1/n1 + 1/n2))``, ``p`` the lot's yield; fires when
      ``|z| >= z``.  Evaluated once every site that has results holds ``min_parts`` parts
      (and at least two sites have results); all-pass or all-fail lots (``p`` 0 or 1) never
      fire.  Evaluated for the site of each result (and for the earlier site of a retest).
    - ``statistical_yield_limit`` (SYL): mean and sample standard deviation of the yields
      of the newest ``history`` lots of the baseline; fires once the lot has ``min_parts``
      parts and its yield is strictly below ``mean - k * sigma``.  ``sigma`` is taken as at
      least :data:`SIGMA_FLOOR` (0.5 percentage points), so a history of identical lots
      (sigma 0, or one lot) does not make a tiny deviation fire.
    - ``statistical_bin_limit`` (SBL): the same on the soft bin's share, strictly above
      ``mean + k * sigma``.  With fewer than ``min_history`` lots (or no baseline) both
      are inactive; :meth:`AlarmMonitor.inactive` says so, for the master to log once.

Firing and re-arming
    A rule fires at most once per lot and per site (site rules) or for its bin, while that
    alarm is raised.  After :meth:`AlarmMonitor.release` the rule re-arms without a storm:
    ``consecutive_fails`` restarts its count for the site (``count`` new failing tests in a
    row fire again); every other rule first needs one evaluation where its condition is
    false (the yield recovered, the share fell back), and fires again when the condition
    holds again.  A lot that stays bad after a release is therefore not re-alarmed on every
    part: the operator has decided on it.  ``site_divergence`` re-arms a site only once its
    |z| fell below half of ``z`` (a bad site hovers at the threshold), and a site it named
    is left out of the other sites' pool for the rest of the lot (a bad site would make the
    healthy ones look good enough to be named as well).

False-alarm rate of ``site_divergence`` (default ``z = 4.0``, ``min_parts = 100``)
    The two-sided normal tail of ``|z| >= 4`` is p = 6.3e-5 per look.  Every result after
    the sites are ready is a look, so the union bound per lot is 6.3e-5 times the number of
    looks: 4 sites x 50 parts after readiness, 200 looks, 1.3%; 4 sites x 300, 1200 looks,
    7.6%.  Successive looks of one site share almost all their data, so the real rate is far
    lower.  Simulated with every site at 90% yield (10 000 seeded lots, every result
    evaluated): 14 lots with a false alarm at 150 parts per site (0.14% per lot; this is
    ``tests/unit/test_alarm_false_rate.py``, which asserts at most
    :data:`DIVERGENCE_FALSE_BOUND` = 50, 0.5%), 33 at 400 parts per site (0.33% per lot,
    about one false notify per 300 lots).  Raise ``z`` (or ``min_parts``) to trade
    sensitivity for fewer false alarms; a site at 75% among sites at 90% is found in about
    three lots of four by the 150th part per site.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ate.alarms.rules import AlarmRule

__all__ = ["Alarm", "AlarmMonitor", "AlarmNotFound", "Baseline", "DIVERGENCE_FALSE_BOUND",
           "SIGMA_FLOOR"]

#: The least standard deviation (percentage points) the statistical rules use.
SIGMA_FLOOR = 0.5
#: Lots per 10 000 equal-yield lots with a false divergence alarm the test tolerates.
DIVERGENCE_FALSE_BOUND = 50


class AlarmNotFound(LookupError):
    """No alarm of that id in this lot."""


@dataclass(frozen=True, slots=True)
class Alarm:
    """One alarm of a lot, as raised or after its release (protocol.md 15.2)."""

    id: int
    name: str
    kind: str
    action: str
    site: str | None
    sbin: int | None
    message: str
    lot_number: str
    parts: int
    time: float
    state: str = "raised"
    released_by: str = ""
    comment: str = ""
    released_time: float | None = None

    def to_payload(self) -> dict[str, Any]:
        """The ``payload`` of the ``alarm`` message (``~/Master/alarm`` and ``/ws``)."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "action": self.action,
                "site": self.site, "sbin": self.sbin, "message": self.message,
                "lot_number": self.lot_number, "parts": self.parts, "time": self.time,
                "state": self.state}


@dataclass(frozen=True)
class Baseline:
    """Finalised lots of the lot's part type, newest first, for SYL and SBL.

    ``yields`` are lot yields in percent, one per lot; ``bin_shares[N]`` the percent of each
    lot's parts in soft bin N, one value per lot (0 where the lot had none); a bin absent
    from the mapping was in none of the lots.
    """

    lots: int
    yields: tuple[float, ...]
    bin_shares: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    part_type: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.lots, bool) or not isinstance(self.lots, int) or self.lots < 0:
            raise ValueError(f"Baseline.lots must be an integer >= 0, got {self.lots!r}")
        if len(self.yields) != self.lots:
            raise ValueError(f"Baseline.yields has {len(self.yields)} values for "
                             f"{self.lots} lots")
        _check_percents("Baseline.yields", self.yields)
        for sbin, shares in self.bin_shares.items():
            if len(shares) != self.lots:
                raise ValueError(f"Baseline.bin_shares[{sbin}] has {len(shares)} values for "
                                 f"{self.lots} lots")
            _check_percents(f"Baseline.bin_shares[{sbin}]", shares)


def _check_percents(what: str, values: Sequence[float]) -> None:
    for i, value in enumerate(values):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not 0 <= value <= 100):
            raise ValueError(f"{what}[{i}] must be a percentage 0..100, got {value!r}")


def _mean_sigma(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def _pct(count: int, total: int) -> str:
    return f"{count * 100.0 / total:.1f}%" if total else "-"


# --------------------------------------------------------------------------------------
# One evaluator per rule.  ``step`` updates the rule's own state for one result and looks
# at the keys (site or None) it concerns; ``hit`` is the rule's condition.


class _Eval:
    __slots__ = ("rule", "raised", "waiting")

    def __init__(self, rule: AlarmRule) -> None:
        self.rule = rule
        self.raised: dict[str | None, int] = {}  # key -> id of its raised alarm
        self.waiting: set[str | None] = set()  # released, condition not yet false

    def step(self, m: AlarmMonitor, site: str, good: bool, sbin: int,
             psite: str | None, out: list[Alarm]) -> None:
        raise NotImplementedError

    def hit(self, m: AlarmMonitor, site: str) -> bool:
        raise NotImplementedError

    def message(self, m: AlarmMonitor, site: str) -> str:
        raise NotImplementedError

    def look(self, m: AlarmMonitor, key: str | None, site: str, out: list[Alarm]) -> None:
        if key in self.raised:
            return
        hit = self.hit(m, site)
        if key in self.waiting:
            if not hit:
                self.waiting.discard(key)
        elif hit:
            out.append(m._fire(self, key, self.message(m, site)))

    def released(self, key: str | None) -> None:
        self.waiting.add(key)


class _Consecutive(_Eval):
    __slots__ = ("runs",)

    def __init__(self, rule: AlarmRule, sites: Sequence[str]) -> None:
        super().__init__(rule)
        self.runs = dict.fromkeys(sites, 0)

    def step(self, m: AlarmMonitor, site: str, good: bool, sbin: int,
             psite: str | None, out: list[Alarm]) -> None:
        if good:
            self.runs[site] = 0
            return
        self.runs[site] += 1
        if self.runs[site] >= self.rule.count and site not in self.raised:
            out.append(m._fire(self, site, f"site {site}: {self.runs[site]} failing parts in "
                                            f"a row (last soft bin {sbin})"))

    def released(self, key: str | None) -> None:
        if key is not None:
            self.runs[key] = 0


class _SiteYield(_Eval):
    __slots__ = ("windows", "window_good", "tests")

    def __init__(self, rule: AlarmRule, sites: Sequence[str]) -> None:
        super().__init__(rule)
        self.windows: dict[str, deque[bool]] = {s: deque() for s in sites}
        self.window_good = dict.fromkeys(sites, 0)
        self.tests = dict.fromkeys(sites, 0)

    def step(self, m: AlarmMonitor, site: str, good: bool, sbin: int,
             psite: str | None, out: list[Alarm]) -> None:
        if self.rule.window:
            window = self.windows[site]
            if len(window) == self.rule.window:
                self.window_good[site] -= window.popleft()
            window.append(good)
            self.window_good[site] += good
            self.tests[site] += 1
            self.look(m, site, site, out)
            return
        self.look(m, site, site, out)
        if psite is not None and psite != site:
            self.look(m, psite, psite, out)

    def counts(self, m: AlarmMonitor, site: str) -> tuple[int, int, int]:
        """(good, out of, tested) of the site as the rule sees it."""
        if self.rule.window:
            return self.window_good[site], len(self.windows[site]), self.tests[site]
        return m._site_good[site], m._site_parts[site], m._site_parts[site]

    def hit(self, m: AlarmMonitor, site: str) -> bool:
        good, total, tested = self.counts(m, site)
        assert self.rule.min_percent is not None
        return tested >= self.rule.min_parts and good * 100 < self.rule.min_percent * total

    def message(self, m: AlarmMonitor, site: str) -> str:
        good, total, _ = self.counts(m, site)
        over = f" over its last {total} tests" if self.rule.window else ""
        return (f"site {site} yield{over} {_pct(good, total)} is below "
                f"{self.rule.min_percent:.1f}% ({good} of {total} parts good)")


class _LotYield(_Eval):
    __slots__ = ()

    def step(self, m: AlarmMonitor, site: str, good: bool, sbin: int,
             psite: str | None, out: list[Alarm]) -> None:
        self.look(m, None, site, out)

    def hit(self, m: AlarmMonitor, site: str) -> bool:
        assert self.rule.min_percent is not None
        return m._parts >= self.rule.min_parts and m._good * 100 < self.rule.min_percent * m._parts

    def message(self, m: AlarmMonitor, site: str) -> str:
        return (f"lot yield {_pct(m._good, m._parts)} is below {self.rule.min_percent:.1f}% "
                f"({m._good} of {m._parts} parts good)")


class _BinLimit(_Eval):
    __slots__ = ()

    def step(self, m: AlarmMonitor, site: str, good: bool, sbin: int,
             psite: str | None, out: list[Alarm]) -> None:
        self.look(m, None, site, out)

    def hit(self, m: AlarmMonitor, site: str) -> bool:
        rule = self.rule
        count = m._bins[rule.sbin]  # type: ignore[index]
        if rule.max_count is not None and count > rule.max_count:
            return True
        return (rule.max_percent is not None and m._parts >= rule.min_parts
                and count * 100 > rule.max_percent * m._parts)

    def message(self, m: AlarmMonitor, site: str) -> str:
        rule = self.rule
        count = m._bins[rule.sbin]  # type: ignore[index]
        if rule.max_count is not None and count > rule.max_count:
            return (f"soft bin {rule.sbin} holds {count} parts, more than {rule.max_count} "
                    f"({_pct(count, m._parts)} of {m._parts} parts)")
        return (f"soft bin {rule.sbin} holds {_pct(count, m._parts)} of the lot's parts, "
                f"above {rule.max_percent:.1f}% ({count} of {m._parts} parts)")


class _Divergence(_Eval):
    """A site against the pooled others.  Sites that this rule named in the lot are left
    out of the others' pool from then on (raised or released): a bad site would otherwise
    make the healthy ones look good enough to be named too.  After a release the site
    re-arms only once its |z| fell below half the threshold (hysteresis: a site that stays
    bad hovers at the threshold and would be named again within a few parts)."""

    __slots__ = ("ready", "flagged")

    def __init__(self, rule: AlarmRule) -> None:
        super().__init__(rule)
        self.ready = 0  # sites holding at least min_parts parts
        self.flagged: list[str] = []  # sites this rule named in the lot, in order

    def step(self, m: AlarmMonitor, site: str, good: bool, sbin: int,
             psite: str | None, out: list[Alarm]) -> None:
        if self.ready != m._active or m._active < 2:
            return
        if site not in self.raised and site not in self.waiting:  # the common case, inline
            z = self.z_of(m, site)
            if z is not None and abs(z) >= self.rule.z:
                out.append(self.fire(m, site))
        else:
            self.look(m, site, site, out)
        if psite is not None and psite != site:
            self.look(m, psite, psite, out)

    def look(self, m: AlarmMonitor, key: str | None, site: str, out: list[Alarm]) -> None:
        if key in self.raised or key is None:
            return
        z = self.z_of(m, site)
        if key in self.waiting:
            if z is None or abs(z) < self.rule.z / 2:
                self.waiting.discard(key)
        elif z is not None and abs(z) >= self.rule.z:
            out.append(self.fire(m, site))

    def fire(self, m: AlarmMonitor, site: str) -> Alarm:
        message = self.message(m, site)
        if site not in self.flagged:
            self.flagged.append(site)
        return m._fire(self, site, message)

    def others(self, m: AlarmMonitor, site: str) -> tuple[int, int]:
        """(parts, good) of the pool ``site`` is compared with."""
        n2, g2 = m._parts - m._site_parts[site], m._good - m._site_good[site]
        for other in self.flagged:  # at most the sites named so far: usually none or one
            if other != site:
                n2 -= m._site_parts[other]
                g2 -= m._site_good[other]
        return n2, g2

    def z_of(self, m: AlarmMonitor, site: str) -> float | None:
        n1, g1 = m._site_parts[site], m._site_good[site]
        n2, g2 = self.others(m, site)
        if n1 == 0 or n2 == 0:
            return None
        p = (g1 + g2) / (n1 + n2)
        if p <= 0 or p >= 1:
            return None
        return (g1 / n1 - g2 / n2) / math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))

    def hit(self, m: AlarmMonitor, site: str) -> bool:
        z = self.z_of(m, site)
        return z is not None and abs(z) >= self.rule.z

    def message(self, m: AlarmMonitor, site: str) -> str:
        n1, g1 = m._site_parts[site], m._site_good[site]
        n2, g2 = self.others(m, site)
        left_out = [s for s in self.flagged if s != site]
        pool = f" (without site(s) {', '.join(left_out)})" if left_out else ""
        return (f"site {site} yield {_pct(g1, n1)} differs from the other sites' "
                f"{_pct(g2, n2)}{pool} (z = {self.z_of(m, site):.1f}; {n1} parts on site "
                f"{site}, {n2} on the others)")


class _Statistical(_Eval):
    __slots__ = ("mean", "sigma", "limit", "lots", "part_type")

    def __init__(self, rule: AlarmRule, values: Sequence[float], part_type: str) -> None:
        super().__init__(rule)
        self.lots = len(values)
        self.mean, self.sigma = _mean_sigma(values)
        spread = rule.k * max(self.sigma, SIGMA_FLOOR)
        bins = rule.kind == "statistical_bin_limit"
        self.limit = self.mean + spread if bins else self.mean - spread
        self.part_type = part_type

    def step(self, m: AlarmMonitor, site: str, good: bool, sbin: int,
             psite: str | None, out: list[Alarm]) -> None:
        self.look(m, None, site, out)

    def hit(self, m: AlarmMonitor, site: str) -> bool:
        if m._parts < self.rule.min_parts:
            return False
        if self.rule.sbin is None:
            return m._good * 100 < self.limit * m._parts
        return m._bins[self.rule.sbin] * 100 > self.limit * m._parts

    def message(self, m: AlarmMonitor, site: str) -> str:
        k = f"{self.rule.k:g}"
        sigma = f"sigma {self.sigma:.2f}" + (
            f" (floor {SIGMA_FLOOR})" if self.sigma < SIGMA_FLOOR else "")
        of = f"{self.lots} lots" + (f" of part type {self.part_type}" if self.part_type else "")
        if self.rule.sbin is None:
            return (f"lot yield {_pct(m._good, m._parts)} is below the statistical limit "
                    f"{self.limit:.1f}% (mean {self.mean:.1f}% - {k} x {sigma} of {of}; "
                    f"{m._good} of {m._parts} parts good)")
        count = m._bins[self.rule.sbin]
        return (f"soft bin {self.rule.sbin} share {_pct(count, m._parts)} is above the "
                f"statistical limit {self.limit:.1f}% (mean {self.mean:.1f}% + {k} x {sigma} "
                f"of {of}; {count} of {m._parts} parts)")


# --------------------------------------------------------------------------------------


class AlarmMonitor:
    """The alarm rules of one lot, evaluated on every completed site result.

    ``rules`` are validated :class:`AlarmRule` (:func:`ate.alarms.rules.parse_alarms`),
    ``sites`` the lot's configured site ids, ``baseline`` the lot history of the part type
    (``None``: no history, the statistical rules are inactive), ``wallclock`` returns epoch
    seconds (``reactor.seconds``).  Alarm ids increase from ``first_id`` (pass the next id
    after the previous lot's to keep them unique while the master runs).
    """

    def __init__(self, rules: Sequence[AlarmRule], sites: Sequence[str], lot_number: str,
                 baseline: Baseline | None, wallclock: Callable[[], float], *,
                 first_id: int = 1) -> None:
        if isinstance(sites, str) or not sites:
            raise ValueError("AlarmMonitor needs a non-empty list of site ids")
        self.sites: tuple[str, ...] = tuple(str(s) for s in sites)
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"AlarmMonitor: a site is listed twice in {list(self.sites)}")
        for rule in rules:
            if not isinstance(rule, AlarmRule):
                raise ValueError(f"AlarmMonitor: rules must be AlarmRule, got {rule!r}")
        if baseline is not None and not isinstance(baseline, Baseline):
            raise ValueError(f"AlarmMonitor: baseline must be a Baseline or None, "
                             f"got {baseline!r}")
        if isinstance(first_id, bool) or not isinstance(first_id, int) or first_id < 1:
            raise ValueError(f"AlarmMonitor: first_id must be an integer >= 1, got {first_id!r}")
        self.rules: tuple[AlarmRule, ...] = tuple(rules)
        self.lot_number = str(lot_number)
        self._wallclock = wallclock
        self._next_id = first_id
        self._parts = 0
        self._good = 0
        self._site_parts = dict.fromkeys(self.sites, 0)
        self._site_good = dict.fromkeys(self.sites, 0)
        self._active = 0  # sites holding at least one part
        self._bins: dict[int, int] = {}
        self._alarms: dict[int, Alarm] = {}
        self._owners: dict[int, tuple[_Eval, str | None]] = {}
        self._inactive: list[str] = []
        self._evals: list[_Eval] = []
        self._divergence: list[_Divergence] = []
        for rule in self.rules:
            if rule.sbin is not None:
                self._bins[rule.sbin] = 0
            evaluator = self._evaluator(rule, baseline)
            if evaluator is not None:
                self._evals.append(evaluator)
                if isinstance(evaluator, _Divergence):
                    self._divergence.append(evaluator)

    def _evaluator(self, rule: AlarmRule, baseline: Baseline | None) -> _Eval | None:
        if rule.kind == "consecutive_fails":
            return _Consecutive(rule, self.sites)
        if rule.kind == "site_yield":
            return _SiteYield(rule, self.sites)
        if rule.kind == "lot_yield":
            return _LotYield(rule)
        if rule.kind == "bin_limit":
            return _BinLimit(rule)
        if rule.kind == "site_divergence":
            return _Divergence(rule)
        if rule.kind not in ("statistical_yield_limit", "statistical_bin_limit"):
            raise ValueError(f"AlarmMonitor: unknown rule kind {rule.kind!r}")
        if baseline is None:
            self._inactive.append(f"alarm {rule.name}: inactive, no lot history")
            return None
        lots = min(baseline.lots, rule.history)
        if lots < rule.min_history:
            of = f" of part type {baseline.part_type}" if baseline.part_type else ""
            self._inactive.append(f"alarm {rule.name}: inactive, {lots} of "
                                  f"{rule.min_history} lots{of} in history")
            return None
        if rule.sbin is None:
            values = baseline.yields[:lots]
        else:
            values = baseline.bin_shares.get(rule.sbin, (0.0,) * lots)[:lots]
        return _Statistical(rule, values, baseline.part_type)

    # -- counting -----------------------------------------------------------------------

    @property
    def parts(self) -> int:
        """Distinct parts of the lot so far."""
        return self._parts

    @property
    def good(self) -> int:
        """Distinct parts whose last result is good."""
        return self._good

    def part(self, site: str, good: bool, sbin: int,
             previous: tuple[str, bool, int] | None = None) -> list[Alarm]:
        """Count one completed site result and return the alarms it raised (usually none).

        ``good`` is whether the part counts as good in the yield, ``sbin`` its soft bin,
        ``previous`` the part's earlier ``(site, good, sbin)`` when this is a retest.
        Raises ValueError, counting nothing, for an unconfigured site, a bin outside
        0..65535, or a ``previous`` that was never counted.
        """
        site_parts = self._site_parts
        if site not in site_parts:
            raise ValueError(f"site {site!r} is not configured (sites: {', '.join(self.sites)})")
        if sbin.__class__ is not int or not 0 <= sbin <= 65535:
            raise ValueError(f"site {site}: soft bin must be an integer 0..65535, got {sbin!r}")
        if good.__class__ is not bool:
            good = bool(good)
        psite: str | None = None
        if previous is not None:
            psite, pgood, psbin = previous
            if psite not in site_parts:
                raise ValueError(f"retest on site {site}: the previous site {psite!r} "
                                 "is not configured")
            if (site_parts[psite] < 1 or (pgood and self._site_good[psite] < 1)
                    or (not pgood and self._site_good[psite] >= site_parts[psite])
                    or self._bins.get(psbin, 1) < 1):
                raise ValueError(f"retest on site {site}: the previous result {previous!r} "
                                 "was never counted")
            self._parts -= 1
            if pgood:
                self._good -= 1
                self._site_good[psite] -= 1
            self._uncount_site(psite)
            if psbin in self._bins:
                self._bins[psbin] -= 1
        self._parts += 1
        if good:
            self._good += 1
            self._site_good[site] += 1
        count = site_parts[site] = site_parts[site] + 1
        if count == 1:
            self._active += 1
        for divergence in self._divergence:
            if count == divergence.rule.min_parts:
                divergence.ready += 1
        if sbin in self._bins:
            self._bins[sbin] += 1
        out: list[Alarm] = []
        for evaluator in self._evals:
            evaluator.step(self, site, good, sbin, psite, out)
        return out

    def _uncount_site(self, site: str) -> None:
        before = self._site_parts[site]
        self._site_parts[site] = before - 1
        if before == 1:
            self._active -= 1
        for divergence in self._divergence:
            if before == divergence.rule.min_parts:
                divergence.ready -= 1

    def _fire(self, evaluator: _Eval, key: str | None, message: str) -> Alarm:
        rule = evaluator.rule
        alarm = Alarm(id=self._next_id, name=rule.name, kind=rule.kind, action=rule.action,
                      site=key, sbin=rule.sbin, message=message, lot_number=self.lot_number,
                      parts=self._parts, time=float(self._wallclock()))
        self._next_id += 1
        self._alarms[alarm.id] = alarm
        self._owners[alarm.id] = (evaluator, key)
        evaluator.raised[key] = alarm.id
        return alarm

    # -- alarms -------------------------------------------------------------------------

    @property
    def next_id(self) -> int:
        """The id the next alarm will get (``first_id`` of the next lot's monitor)."""
        return self._next_id

    def release(self, alarm_id: int, operator: str, comment: str) -> Alarm:
        """Release a raised alarm; returns the released copy (state ``released``).

        Raises :class:`AlarmNotFound` for an id not of this lot, ValueError for an alarm
        already released or an empty ``operator`` or ``comment``.
        """
        alarm = self._alarms.get(alarm_id)
        if alarm is None:
            raise AlarmNotFound(f"no alarm {alarm_id!r} in lot {self.lot_number}")
        for what, text in (("operator", operator), ("comment", comment)):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"release of alarm {alarm_id}: {what} must be a non-empty "
                                 f"string, got {text!r}")
        if alarm.state != "raised":
            raise ValueError(f"alarm {alarm_id} ({alarm.name}) was already released by "
                             f"{alarm.released_by}")
        released = replace(alarm, state="released", released_by=operator, comment=comment,
                           released_time=float(self._wallclock()))
        self._alarms[alarm_id] = released
        evaluator, key = self._owners[alarm_id]
        del evaluator.raised[key]
        evaluator.released(key)
        return released

    def alarms(self) -> list[Alarm]:
        """Every alarm of the lot in its current state, in id order."""
        return list(self._alarms.values())

    def held(self) -> Alarm | None:
        """The oldest raised ``hold`` alarm, or None when the lot is not held."""
        for alarm in self._alarms.values():
            if alarm.action == "hold" and alarm.state == "raised":
                return alarm
        return None

    def inactive(self) -> list[str]:
        """One message per statistical rule that lacks history (log them once, at load)."""
        return list(self._inactive)
