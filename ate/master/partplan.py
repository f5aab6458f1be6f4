"""The part under test as the cell keeps it: the plan built from a ``next`` command and
the ``next`` response built from its results (protocol §4.5, §6.1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from ate.protocol import messages as m

__all__ = ["Part", "next_results", "plan_part"]


@dataclass(slots=True)
class Part:
    """The part under test: what was asked and what came back."""

    sites_info: list[dict]
    tested: tuple[str, ...]  # ascending
    order: tuple[str, ...]  # request order
    requested: dict[str, dict]
    started: float
    results: list[tuple[str, Sequence[dict]]] = field(default_factory=list)
    outcomes: dict[str, Any] = field(default_factory=dict)
    prrs: dict[str, Any] = field(default_factory=dict)
    written: bool = False


def _site_key(site: str) -> int:
    return int(site)


def plan_part(sites: Any, all_sites: Sequence[str], part_ids: Iterator[int],
              started: float) -> Part:
    """The plan of one ``next``: ``sites`` is its ``SiteInfo`` list, or None for every
    configured site; ``part_ids`` numbers the entries without a part id."""
    infos: list[dict[str, Any]]
    if sites is None:
        infos = [{"siteid": s, "partid": str(next(part_ids)), "binning": -1}
                 for s in all_sites]
    else:
        infos = [_site_info_dict(si) for si in sites]
        for info in infos:
            # a TestApp reads partid and binning from its entry (§6.1): the real one
            # fails without them, so an entry that lacks one gets the §4.5 default
            if info.get("partid") is None:
                info["partid"] = str(next(part_ids))
            if info.get("binning") is None:
                info["binning"] = -1
    order = tuple(i["siteid"] for i in infos)
    tested = tuple(sorted(order, key=_site_key))
    requested = {i["siteid"]: i for i in infos}
    return Part(infos, tested, order, requested, started)


def next_results(part: Part) -> tuple[m.NextResult, ...]:
    """The ``next`` response's entries, in the request's order."""
    sites_out = []
    for siteid in part.order:
        outcome = part.outcomes[siteid]
        prr = part.prrs[siteid]
        partid = prr.get("PART_ID") or part.requested[siteid].get("partid")
        if not partid:
            partid = f"{prr.get('X_COORD')}x{prr.get('Y_COORD')}"
        sites_out.append(m.NextResult(siteid=siteid, partid=str(partid),
                                      binning=outcome.hard_bin, logflag=0, additionalinfo=0))
    return tuple(sites_out)


def _site_info_dict(si: Any) -> dict:
    if isinstance(si, dict):
        return dict(si)
    out: dict[str, Any] = {"siteid": si.siteid}
    for name in ("partid", "binning", "logflag", "additionalinfo"):
        value = getattr(si, name)
        if value is not None:
            out[name] = value
    for key, value in getattr(si, "extra", ()) or ():
        out[key] = value
    return out


def strategy_problem(strategies: dict[str, Any], sites: Sequence[str]) -> str | None:
    """What is wrong with the TestApps' execution strategies once every site answered
    (protocol §3.8, §6.4): they disagree, are malformed, or test 0 does not cover exactly
    the configured sites; None when they are fine."""
    values = list(strategies.values())
    first = values[0]
    if any(v != first for v in values[1:]):
        detail = "; ".join(f"site {s}: {v!r}" for s, v in strategies.items())
        return f"execution strategy mismatch: sites disagree ({detail})"
    covered: set[str] = set()
    try:
        for stage in first[0]:
            covered.update(str(x) for x in stage)
    except (TypeError, IndexError):
        return f"execution strategy mismatch: malformed strategy {first!r}"
    if covered != set(sites):
        return ("execution strategy mismatch: test 0 covers sites "
                f"{sorted(covered)}, configured {list(sites)}")
    return None


class StrategyAnswers:
    """The TestApps' answers to a load's ``getexecutionstrategy`` (protocol §3.8, §6.4):
    taken from the request (``open``) until the lot's unload or a reset (``close``), one per
    site, checked once every configured site has answered."""

    def __init__(self, sites: Sequence[str], log: Any) -> None:
        self.sites = tuple(sites)
        self.log = log
        self._answers: dict[str, Any] | None = None

    def open(self) -> None:
        self._answers = {}

    def close(self) -> None:
        self._answers = None

    def take(self, site: str, strategy: Any) -> str | None:
        """Record ``site``'s answer; returns the problem once all answered and they are
        wrong (``strategy_problem``), else None."""
        answers = self._answers
        if answers is None:
            self.log.debug("execution strategy from site {site} outside a lot ignored", site=site)
            return None
        if site in answers:
            self.log.debug("second execution strategy from site {site} for this load ignored",
                           site=site)
            return None
        answers[site] = strategy
        if len(answers) == len(self.sites):
            return strategy_problem(answers, self.sites)
        return None
