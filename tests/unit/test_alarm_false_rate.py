"""False-alarm rate of ``site_divergence`` with its defaults (z 4.0, min_parts 100), by a
seeded simulation of equal-yield lots (the figure is quoted in ate/alarms/monitor.py), and
its power on a lot with one bad site, so that a rule that never fires cannot pass."""

from __future__ import annotations

import random

from ate.alarms import DIVERGENCE_FALSE_BOUND, AlarmMonitor, parse_alarms

SITES = ("0", "1", "2", "3")
PARTS_PER_SITE = 150  # 50 looks per site after the 100 of min_parts
LOTS = 10_000


def lots_with_an_alarm(lots: int, yields: tuple[float, ...],
                       seed: int) -> tuple[int, dict[str, int]]:
    """Simulate ``lots`` lots (every site tests one part per round); the number of lots
    in which the rule fired, and per site the number of lots in which it was named."""
    rules = parse_alarms([{"kind": "site_divergence"}])
    rng = random.Random(seed)
    order = SITES * PARTS_PER_SITE
    cum = [(p, 1.0) for p in yields]
    named = dict.fromkeys(SITES, 0)
    fired = 0
    for _ in range(lots):
        part = AlarmMonitor(rules, SITES, "SIM", None, lambda: 0.0).part
        draws = [rng.choices((True, False), cum_weights=c, k=PARTS_PER_SITE) for c in cum]
        outcomes = [draws[i][r] for r in range(PARTS_PER_SITE) for i in range(len(SITES))]
        sites: set[str | None] = set()
        for site, good in zip(order, outcomes, strict=True):
            alarms = part(site, good, 1)
            if alarms:
                sites.update(a.site for a in alarms)
        fired += bool(sites)
        for site in sites:
            named[str(site)] += 1
    return fired, named


def test_false_divergence_alarms_on_equal_sites_stay_within_the_bound() -> None:
    fired, _ = lots_with_an_alarm(LOTS, (0.9,) * 4, seed=20240)
    assert fired <= DIVERGENCE_FALSE_BOUND * LOTS // 10_000


def test_a_bad_site_is_found_in_most_lots_and_it_is_the_one_named() -> None:
    # site 3 at 75%: |z| about 3.8 at 100 parts and 4.6 at 150 on average
    fired, named = lots_with_an_alarm(200, (0.9, 0.9, 0.9, 0.75), seed=7)
    assert fired >= named["3"] >= 140
    assert named["0"] + named["1"] + named["2"] <= 4  # a good site against a pool with the bad
