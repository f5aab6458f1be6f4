"""ate.alarms.monitor: evaluation of the alarm rules of one lot (protocol.md 15.1, 15.2)."""

from __future__ import annotations

import json
import math
import random
import statistics
from typing import Any

import pytest
from twisted.internet.task import Clock

from ate.alarms import (
    SIGMA_FLOOR,
    Alarm,
    AlarmMonitor,
    AlarmNotFound,
    Baseline,
    parse_alarms,
)

SITES = ("0", "1", "2", "3")


def monitor(*rules: dict[str, Any], sites: tuple[str, ...] = SITES,
            baseline: Baseline | None = None, clock: Clock | None = None,
            first_id: int = 1) -> AlarmMonitor:
    clock = clock if clock is not None else Clock()
    return AlarmMonitor(parse_alarms(list(rules)), sites, "306426.001", baseline, clock.seconds,
                        first_id=first_id)


def feed(m: AlarmMonitor, site: str, pattern: str, fail_bin: int = 12) -> list[tuple[int, Alarm]]:
    """One result per character, G good (soft bin 1) and F failing (``fail_bin``); the
    alarms raised, with the 1-based position of the result that raised them."""
    fired = []
    for index, char in enumerate(pattern, 1):
        good = char == "G"
        for alarm in m.part(site, good, 1 if good else fail_bin):
            fired.append((index, alarm))
    return fired


def positions(fired: list[tuple[int, Alarm]]) -> list[int]:
    return [index for index, _ in fired]


# --------------------------------------------------------------------------------------
# consecutive_fails


def test_consecutive_fails_fires_at_the_count_th_fail_once() -> None:
    m = monitor({"kind": "consecutive_fails", "count": 5})
    assert feed(m, "0", "FFFF") == []
    (alarm,) = m.part("0", False, 12)
    assert (alarm.id, alarm.name, alarm.kind, alarm.action) == (1, "consecutive_fails",
                                                                "consecutive_fails", "notify")
    assert (alarm.site, alarm.sbin, alarm.parts, alarm.state) == ("0", None, 5, "raised")
    assert alarm.message == "site 0: 5 failing parts in a row (last soft bin 12)"
    assert feed(m, "0", "FFFFFFFFFF") == []  # once, while raised


def test_consecutive_fails_counts_per_site_and_a_good_part_resets() -> None:
    m = monitor({"kind": "consecutive_fails", "count": 3})
    for site in SITES:  # interleaved sites: every site's own run
        assert feed(m, site, "FF") == []
    assert feed(m, "1", "GFF") == []
    fired = feed(m, "2", "F")
    assert [a.site for _, a in fired] == ["2"]
    assert [a.site for _, a in feed(m, "1", "F")] == ["1"]


def test_consecutive_fails_rearms_after_release_with_a_fresh_count() -> None:
    m = monitor({"kind": "consecutive_fails", "count": 3, "action": "hold"})
    ((_, first),) = feed(m, "0", "FFF")
    assert m.held() == first
    m.release(first.id, "alice", "probe card cleaned")
    assert m.held() is None
    assert feed(m, "0", "FF") == []  # the run restarted at the release
    ((_, second),) = feed(m, "0", "F")
    assert second.id == 2 and m.held() == second


def test_consecutive_fails_a_retest_enters_the_sequence_as_a_new_test() -> None:
    m = monitor({"kind": "consecutive_fails", "count": 3})
    assert feed(m, "0", "FF") == []
    (alarm,) = m.part("0", False, 12, previous=("0", False, 12))  # retest of a failed part
    assert alarm.parts == 2  # distinct parts: the retest is no new part
    m = monitor({"kind": "consecutive_fails", "count": 3})
    assert feed(m, "0", "FF") == []
    assert m.part("0", True, 1, previous=("0", False, 12)) == []  # retested good: run broken
    assert feed(m, "0", "FF") == []


# --------------------------------------------------------------------------------------
# site_yield


def test_site_yield_is_first_evaluated_at_min_parts() -> None:
    m = monitor({"kind": "site_yield", "min_percent": 80, "min_parts": 10})
    assert feed(m, "1", "FFFFFFFFF") == []  # another site: its own count
    assert feed(m, "0", "GGGGGFFFF") == []  # 55.6% after 9 parts: not evaluated yet
    ((position, alarm),) = feed(m, "0", "F")
    assert position == 1 and alarm.site == "0" and alarm.parts == 19  # lot parts
    assert alarm.message == "site 0 yield 50.0% is below 80.0% (5 of 10 parts good)"


def test_site_yield_strictly_below() -> None:
    m = monitor({"kind": "site_yield", "min_percent": 80, "min_parts": 10})
    assert feed(m, "0", "GGGGGGGGFF") == []  # exactly 80%
    assert feed(m, "1", "FFFFFFFFF") == []
    assert positions(feed(m, "0", "F")) == [1]  # 8 of 11
    assert [a.site for _, a in feed(m, "1", "F")] == ["1"]
    assert feed(m, "0", "FFF") == [] and feed(m, "1", "FFF") == []  # once per site


def test_site_yield_windowed_follows_the_last_tests() -> None:
    m = monitor({"kind": "site_yield", "min_percent": 80, "min_parts": 5, "window": 5})
    assert feed(m, "0", "GGGGGGGGGG" "F") == []  # 4 of the last 5: 80%, not below
    ((_, alarm),) = feed(m, "0", "F")
    assert alarm.message == ("site 0 yield over its last 5 tests 60.0% is below 80.0% "
                             "(3 of 5 parts good)")
    m.release(alarm.id, "bob", "watching it")
    assert feed(m, "0", "FFF") == []  # still below after the release: no storm
    assert feed(m, "0", "GGGGG") == []  # recovered: re-armed
    assert positions(feed(m, "0", "FF")) == [2]


def test_site_yield_windowed_before_the_window_is_full() -> None:
    m = monitor({"kind": "site_yield", "min_percent": 50, "min_parts": 3, "window": 10})
    assert feed(m, "0", "GF") == []
    assert positions(feed(m, "0", "F")) == [1]  # 1 of 3 tests


def test_site_yield_retest_moves_the_part_to_its_new_site() -> None:
    m = monitor({"kind": "site_yield", "min_percent": 50, "min_parts": 2})
    assert feed(m, "0", "GG") == [] and feed(m, "1", "GF") == []
    # site 0's good part is retested failing on site 1: site 0 keeps 1 part (not evaluated
    # below min_parts), site 1 has 1 good of 3
    fired = m.part("1", False, 12, previous=("0", True, 1))
    assert [(a.site, a.parts) for a in fired] == [("1", 4)]
    assert fired[0].message == "site 1 yield 33.3% is below 50.0% (1 of 3 parts good)"


def test_site_yield_evaluates_the_earlier_site_of_a_retest() -> None:
    m = monitor({"kind": "site_yield", "min_percent": 50, "min_parts": 3})
    assert feed(m, "0", "GGFF") == []  # 50%
    assert feed(m, "1", "G") == []
    # a good part of site 0 retested good on site 1: site 0 drops to 1 of 3
    fired = m.part("1", True, 1, previous=("0", True, 1))
    assert [a.site for a in fired] == ["0"]


# --------------------------------------------------------------------------------------
# lot_yield


def test_lot_yield_is_first_evaluated_at_min_parts() -> None:
    m = monitor({"kind": "lot_yield", "min_percent": 90, "min_parts": 20})
    assert feed(m, "0", "GGGGGGGGGGGGGGGGGFF") == []  # 19 parts, 89.5%
    ((_, alarm),) = feed(m, "1", "F")
    assert (alarm.site, alarm.sbin, alarm.parts) == (None, None, 20)
    assert alarm.message == "lot yield 85.0% is below 90.0% (17 of 20 parts good)"
    assert feed(m, "2", "FFFF") == []


def test_lot_yield_strictly_below_across_sites() -> None:
    m = monitor({"kind": "lot_yield", "min_percent": 90, "min_parts": 20})
    for site in SITES:
        assert feed(m, site, "GGGG") == []
    assert feed(m, "0", "GF") == [] and feed(m, "1", "GF") == []  # 18 of 20: 90%
    assert positions(feed(m, "2", "F")) == [1]


def test_lot_yield_a_failing_part_retested_good_uncounts_the_fail() -> None:
    m = monitor({"kind": "lot_yield", "min_percent": 90, "min_parts": 20})
    assert feed(m, "0", "GGGGGGGGGGGGGGGGGGFF") == []  # 18 of 20
    assert m.part("1", True, 1, previous=("0", False, 12)) == []  # 19 of 20
    assert (m.parts, m.good) == (20, 19)
    assert feed(m, "2", "F") == []  # 19 of 21: 90.5%; counted as a new part it would fire
    assert (m.parts, m.good) == (21, 19)
    assert positions(feed(m, "3", "F")) == [1]  # 19 of 22


def test_lot_yield_a_good_part_retested_failing_uncounts_the_good() -> None:
    m = monitor({"kind": "lot_yield", "min_percent": 90, "min_parts": 20})
    assert feed(m, "0", "GGGGGGGGGGGGGGGGGGFF") == []  # 18 of 20
    (alarm,) = m.part("1", False, 12, previous=("0", True, 1))
    assert (alarm.parts, m.parts, m.good) == (20, 20, 17)


def test_lot_yield_rearms_once_the_yield_recovered() -> None:
    m = monitor({"kind": "lot_yield", "min_percent": 50, "min_parts": 4})
    ((_, alarm),) = feed(m, "0", "FFFF")
    released = m.release(alarm.id, "carol", "known bad wafer edge")
    assert feed(m, "0", "FFFF") == []  # still below: no re-fire
    assert feed(m, "0", "GGGGGGGGGG") == []  # 10 of 18: recovered, re-armed
    assert feed(m, "0", "FF") == []  # 10 of 20: 50%, not below
    ((_, again),) = feed(m, "0", "F")
    assert again.id == released.id + 1
    assert [a.state for a in m.alarms()] == ["released", "raised"]


# --------------------------------------------------------------------------------------
# bin_limit


def test_bin_limit_percent_fires_strictly_above_once_min_parts() -> None:
    m = monitor({"kind": "bin_limit", "sbin": 12, "max_percent": 10, "min_parts": 20})
    assert feed(m, "0", "FFFGGGGGGGGGGGGGGG") == []  # 18 parts, 3 in bin 12: not yet
    assert feed(m, "1", "G") == []  # 19
    ((_, alarm),) = feed(m, "1", "G")  # 3 of 20 = 15%
    assert (alarm.sbin, alarm.site, alarm.parts) == (12, None, 20)
    assert alarm.message == ("soft bin 12 holds 15.0% of the lot's parts, above 10.0% "
                             "(3 of 20 parts)")
    assert feed(m, "0", "FFFF") == []


def test_bin_limit_percent_at_the_limit_does_not_fire() -> None:
    m = monitor({"kind": "bin_limit", "sbin": 12, "max_percent": 10, "min_parts": 20})
    assert feed(m, "0", "FF" + "G" * 18) == []  # 2 of 20: 10%
    assert feed(m, "0", "F", fail_bin=13) == []  # another bin
    assert positions(feed(m, "0", "F")) == [1]  # 3 of 22


def test_bin_limit_count_is_absolute() -> None:
    m = monitor({"kind": "bin_limit", "sbin": 12, "max_count": 3})  # min_parts 100
    assert feed(m, "0", "FFF") == []
    ((_, alarm),) = feed(m, "1", "F")
    assert alarm.message == "soft bin 12 holds 4 parts, more than 3 (100.0% of 4 parts)"


def test_bin_limit_retest_uncounts_the_bin() -> None:
    m = monitor({"kind": "bin_limit", "sbin": 12, "max_count": 2})
    assert feed(m, "0", "FF") == []
    assert m.part("1", True, 1, previous=("0", False, 12)) == []
    assert feed(m, "0", "F") == []  # 2 in bin 12
    assert positions(feed(m, "0", "F")) == [1]


# --------------------------------------------------------------------------------------
# site_divergence


def reference_z(site_good: int, site_parts: int, good: int, parts: int) -> float | None:
    """The pooled two-proportion z, written out independently of the module."""
    other_good, other_parts = good - site_good, parts - site_parts
    pooled = good / parts
    if other_parts == 0 or pooled in (0.0, 1.0):
        return None
    se = math.sqrt(pooled * (1 - pooled) * (1 / site_parts + 1 / other_parts))
    return (site_good / site_parts - other_good / other_parts) / se


def test_divergence_waits_for_every_site_and_names_the_divergent_one() -> None:
    m = monitor({"kind": "site_divergence"})
    bad = "GGGGGGFFFF" * 10  # 60%
    fine = "GGGGGGGGGF" * 10  # 90%
    for index in range(100):  # the sites test in parallel; site 3 skips the last round
        for site, pattern in (("0", bad), ("1", fine), ("2", fine), ("3", fine[:-1])):
            assert feed(m, site, pattern[index:index + 1]) == []
    assert feed(m, "3", "F") == []  # site 3 ready; its own z is 2.3
    assert feed(m, "1", "G") == [] and feed(m, "2", "G") == []
    ((_, alarm),) = feed(m, "0", "F")
    assert alarm.site == "0" and alarm.kind == "site_divergence"
    z = reference_z(60, 101, 60 + 91 + 91 + 90, 403)
    assert z is not None and z < -4
    assert alarm.message == (f"site 0 yield 59.4% differs from the other sites' 90.1% "
                             f"(z = {z:.1f}; 101 parts on site 0, 302 on the others)")
    assert feed(m, "0", "FFFF") == [] and feed(m, "1", "GGGG") == []


def test_divergence_is_quiet_on_equal_sites() -> None:
    m = monitor({"kind": "site_divergence", "z": 2.0})
    for _ in range(100):
        for site in SITES:
            assert feed(m, site, "GGGGGGGGGF") == []


def test_divergence_never_fires_on_a_degenerate_lot() -> None:
    for pattern in ("G", "F"):
        m = monitor({"kind": "site_divergence", "min_parts": 1, "z": 0.001})
        for site in SITES:
            assert feed(m, site, pattern * 20) == []
    m = monitor({"kind": "site_divergence", "min_parts": 5})
    for site in SITES[1:]:
        feed(m, site, "GGGGG")
    assert [a.site for _, a in feed(m, "0", "FFFFF")] == ["0"]  # one site all failing


def test_divergence_fires_exactly_where_the_reference_z_crosses() -> None:
    rng = random.Random(7)
    yields = {"0": 0.9, "1": 0.75, "2": 0.9, "3": 0.9}
    m = monitor({"kind": "site_divergence", "min_parts": 30})
    site_good = dict.fromkeys(SITES, 0)
    site_parts = dict.fromkeys(SITES, 0)
    first: dict[str, int] = {}  # site -> index of the result that raised its alarm
    for index in range(4000):
        site = SITES[index % 4]
        good = rng.random() < yields[site]
        site_parts[site] += 1
        site_good[site] += good
        fired = m.part(site, good, 1 if good else 12)
        z = None
        if min(site_parts.values()) >= 30:
            # the pool leaves out the sites named before (not the site itself)
            out = [s for s in first if s != site]
            z = reference_z(site_good[site], site_parts[site],
                            sum(site_good.values()) - sum(site_good[s] for s in out),
                            sum(site_parts.values()) - sum(site_parts[s] for s in out))
        if site not in first and z is not None and abs(z) >= 4:
            first[site] = index
            assert [a.site for a in fired] == [site], index
        else:
            assert fired == [], index
    assert min(first.values()) == first["1"] > 4 * 30  # the bad site first
    assert list(first) == ["1"]  # without site 1 in their pool, the good sites stay quiet


def test_a_named_site_leaves_the_pool_and_re_arms_only_well_below_the_threshold() -> None:
    m = monitor({"kind": "site_divergence", "min_parts": 20, "z": 4.0})
    for _ in range(20):
        for site in ("1", "2", "3"):
            feed(m, site, "G" * 9 + "F")   # 90 %
    fired = feed(m, "0", "F" * 20)        # site 0 all failing: named at once
    [(pos, alarm)] = fired
    assert alarm.site == "0"
    # the healthy sites are now compared with each other only: quiet
    for _ in range(30):
        for site in ("1", "2", "3"):
            assert feed(m, site, "G" * 9 + "F") == []
    m.release(alarm.id, "ana", "checked")
    # site 0 stays bad: |z| never falls below 2, so it is not named again
    assert feed(m, "0", "F" * 30) == []
    # it recovers (|z| < 2 re-arms it) and then fails again: named a second time
    feed(m, "0", "G" * 400)
    again = feed(m, "0", "F" * 400)
    assert [a.site for _, a in again] == ["0"]


def test_divergence_ignores_a_site_without_results() -> None:
    m = monitor({"kind": "site_divergence", "min_parts": 10})
    feed(m, "0", "G" * 10)
    feed(m, "1", "G" * 9 + "F")
    assert positions(feed(m, "2", "F" * 10)) == [10]  # site 3 never tested


def test_divergence_rearms_after_release_once_below_the_threshold() -> None:
    m = monitor({"kind": "site_divergence", "min_parts": 10})
    feed(m, "1", "G" * 9 + "F")
    feed(m, "2", "G" * 9 + "F")
    feed(m, "3", "G" * 9 + "F")
    ((_, alarm),) = feed(m, "0", "F" * 10)
    m.release(alarm.id, "dave", "socket replaced")
    assert feed(m, "0", "FFF") == []
    assert feed(m, "0", "G" * 60) == []  # back in line: re-armed
    assert [a.site for _, a in feed(m, "0", "F" * 60)] == ["0"]


# --------------------------------------------------------------------------------------
# statistical_yield_limit and statistical_bin_limit


TEN = (89.0, 91.0) * 5  # mean 90, sample sigma 1.054


def lot_with(m: AlarmMonitor, good: int, parts: int) -> list[tuple[int, Alarm]]:
    """Failing parts first (the yield is lowest early), then good ones, over the sites."""
    fired = []
    for index in range(parts):
        is_good = index >= parts - good
        for alarm in m.part(SITES[index % 4], is_good, 1 if is_good else 12):
            fired.append((index + 1, alarm))
    return fired


def test_syl_five_sigma_below_fires_one_sigma_below_does_not() -> None:
    mean, sigma = statistics.mean(TEN), statistics.stdev(TEN)
    baseline = Baseline(10, TEN, {}, "HS2CQFN16T7A")
    rule = {"kind": "statistical_yield_limit", "name": "syl"}
    m = monitor(rule, baseline=baseline)
    assert lot_with(m, round(mean - sigma), 100) == []  # 89%: 1 sigma below
    m = monitor(rule, baseline=baseline)
    good = math.floor(mean - 5 * sigma)  # 84%
    ((position, alarm),) = lot_with(m, good, 100)
    assert position == 100  # below all along, first evaluated at min_parts
    assert alarm.message == (f"lot yield 84.0% is below the statistical limit "
                             f"{mean - 3 * sigma:.1f}% (mean 90.0% - 3 x sigma {sigma:.2f} of "
                             f"10 lots of part type HS2CQFN16T7A; 84 of 100 parts good)")


def test_syl_limit_is_exact() -> None:
    baseline = Baseline(10, TEN)
    limit = statistics.mean(TEN) - 3 * statistics.stdev(TEN)  # 86.84
    rule = {"kind": "statistical_yield_limit"}
    assert lot_with(monitor(rule, baseline=baseline), math.ceil(limit), 100) == []
    assert positions(lot_with(monitor(rule, baseline=baseline), math.floor(limit), 100)) == [100]


def test_syl_reads_only_the_newest_history_lots() -> None:
    baseline = Baseline(30, TEN + (50.0, 99.0) * 10)  # the old lots are wild
    rule = {"kind": "statistical_yield_limit", "history": 10}
    assert lot_with(monitor(rule, baseline=baseline), 87, 100) == []
    assert positions(lot_with(monitor(rule, baseline=baseline), 86, 100)) == [100]
    wide = {"kind": "statistical_yield_limit", "history": 30}
    assert lot_with(monitor(wide, baseline=baseline), 60, 100) == []


def test_syl_sigma_floor() -> None:
    baseline = Baseline(10, (95.0,) * 10)
    rule = {"kind": "statistical_yield_limit"}
    assert 95 - 3 * SIGMA_FLOOR == 93.5
    assert lot_with(monitor(rule, baseline=baseline), 94, 100) == []
    ((_, alarm),) = lot_with(monitor(rule, baseline=baseline), 93, 100)
    assert "3 x sigma 0.00 (floor 0.5) of 10 lots;" in alarm.message


def test_sbl_fires_above_mean_plus_k_sigma() -> None:
    shares = (4.0, 6.0) * 5  # mean 5, sigma 1.054: limit 8.16 with k 3
    baseline = Baseline(10, TEN, {12: shares})
    rule = {"kind": "statistical_bin_limit", "name": "sbl", "sbin": 12}
    assert lot_with(monitor(rule, baseline=baseline), 92, 100) == []  # 8 in bin 12
    ((position, alarm),) = lot_with(monitor(rule, baseline=baseline), 91, 100)
    assert position == 100 and alarm.sbin == 12 and alarm.site is None
    assert alarm.message.startswith("soft bin 12 share 9.0% is above the statistical limit "
                                    "8.2% (mean 5.0% + 3 x sigma 1.05 of 10 lots; 9 of 100")


def test_sbl_bin_absent_from_history_counts_as_zero_shares() -> None:
    baseline = Baseline(10, TEN, {13: (1.0,) * 10})
    rule = {"kind": "statistical_bin_limit", "sbin": 12, "min_parts": 100}
    assert lot_with(monitor(rule, baseline=baseline), 99, 100) == []  # 1%, limit 1.5%
    assert positions(lot_with(monitor(rule, baseline=baseline), 98, 100)) == [100]


def test_statistical_rules_inactive_without_enough_history() -> None:
    rules = ({"kind": "statistical_yield_limit", "name": "syl"},
             {"kind": "statistical_bin_limit", "name": "sbl", "sbin": 12, "min_history": 2,
              "history": 2})
    m = monitor(*rules, baseline=Baseline(3, (90.0, 91.0, 92.0), {}, "X"))
    assert m.inactive() == ["alarm syl: inactive, 3 of 6 lots of part type X in history"]
    assert lot_with(m, 0, 200)[0][1].name == "sbl"  # sbl active on 2 lots
    assert [a.name for a in m.alarms()] == ["sbl"]
    m = monitor(*rules)
    assert m.inactive() == ["alarm syl: inactive, no lot history",
                            "alarm sbl: inactive, no lot history"]
    assert lot_with(m, 0, 200) == []
    m = monitor(rules[0], baseline=Baseline(5, (90.0,) * 5))
    assert m.inactive() == ["alarm syl: inactive, 5 of 6 lots in history"]


def test_one_lot_of_history_uses_the_floor() -> None:
    m = monitor({"kind": "statistical_yield_limit", "history": 1, "min_history": 1},
                baseline=Baseline(1, (90.0,)))
    assert m.inactive() == []
    assert lot_with(m, 89, 100) == []  # limit 88.5
    assert positions(lot_with(monitor({"kind": "statistical_yield_limit", "history": 1,
                                       "min_history": 1}, baseline=Baseline(1, (90.0,))),
                              88, 100)) == [100]


@pytest.mark.parametrize("args, message", [
    ((2, (90.0,)), "Baseline.yields has 1 values for 2 lots"),
    ((-1, ()), "Baseline.lots must be an integer >= 0, got -1"),
    ((1, (101.0,)), "Baseline.yields[0] must be a percentage 0..100, got 101.0"),
    ((1, (90.0,), {12: ()}), "Baseline.bin_shares[12] has 0 values for 1 lots"),
    ((1, (90.0,), {12: (float("nan"),)}),
     "Baseline.bin_shares[12][0] must be a percentage 0..100, got nan"),
])
def test_bad_baseline(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Baseline(*args)
    assert str(info.value) == message


# --------------------------------------------------------------------------------------
# alarms, release, hold, payload


def test_alarm_payload_and_time() -> None:
    clock = Clock()
    clock.advance(1_700_000_000.5)
    m = monitor({"kind": "lot_yield", "min_percent": 50, "min_parts": 2, "action": "hold",
                 "name": "low"}, clock=clock, first_id=41)
    ((_, alarm),) = feed(m, "3", "FF")
    payload = alarm.to_payload()
    assert payload == {"id": 41, "name": "low", "kind": "lot_yield", "action": "hold",
                       "site": None, "sbin": None,
                       "message": "lot yield 0.0% is below 50.0% (0 of 2 parts good)",
                       "lot_number": "306426.001", "parts": 2, "time": 1_700_000_000.5,
                       "state": "raised"}
    assert json.loads(json.dumps(payload)) == payload
    assert m.next_id == 42
    clock.advance(60)
    released = m.release(41, "erin", "retest the lot")
    assert released.to_payload() == dict(payload, state="released")
    assert (released.released_by, released.comment, released.released_time) == (
        "erin", "retest the lot", 1_700_000_060.5)
    assert (alarm.state, alarm.released_by, alarm.comment) == ("raised", "", "")
    assert m.alarms() == [released]


def test_held_is_the_oldest_raised_hold() -> None:
    m = monitor({"kind": "consecutive_fails", "count": 2, "action": "hold"},
                {"kind": "bin_limit", "sbin": 12, "max_count": 0, "name": "b12"})
    assert m.held() is None
    fired = feed(m, "0", "F")
    assert [a.name for _, a in fired] == ["b12"] and m.held() is None  # notify: no hold
    fired += feed(m, "0", "F") + feed(m, "1", "FF")
    first, second = (a for _, a in fired if a.action == "hold")
    assert (first.site, second.site) == ("0", "1")
    assert m.held() == first
    m.release(first.id, "frank", "ok")
    assert m.held() == second
    m.release(second.id, "frank", "ok")
    assert m.held() is None
    assert [a.id for a in m.alarms()] == [1, 2, 3]


def test_release_errors() -> None:
    m = monitor({"kind": "consecutive_fails", "count": 1})
    ((_, alarm),) = feed(m, "0", "F")
    with pytest.raises(AlarmNotFound, match="no alarm 9 in lot 306426.001"):
        m.release(9, "x", "y")
    with pytest.raises(ValueError, match="operator must be a non-empty string, got ' '"):
        m.release(alarm.id, " ", "y")
    with pytest.raises(ValueError, match="comment must be a non-empty string, got None"):
        m.release(alarm.id, "x", None)  # type: ignore[arg-type]
    assert m.alarms() == [alarm]
    m.release(alarm.id, "gina", "fine")
    with pytest.raises(ValueError, match=r"alarm 1 \(consecutive_fails\) was already released "
                                         "by gina"):
        m.release(alarm.id, "x", "y")


def test_rules_are_evaluated_in_config_order() -> None:
    m = monitor({"kind": "lot_yield", "min_percent": 50, "min_parts": 1},
                {"kind": "consecutive_fails", "count": 1})
    assert [a.kind for a in m.part("2", False, 12)] == ["lot_yield", "consecutive_fails"]


# --------------------------------------------------------------------------------------
# bad input


def test_part_rejects_bad_input_and_counts_nothing() -> None:
    m = monitor({"kind": "bin_limit", "sbin": 12, "max_count": 5})
    with pytest.raises(ValueError, match=r"site '7' is not configured \(sites: 0, 1, 2, 3\)"):
        m.part("7", True, 1)
    with pytest.raises(ValueError, match="site 0: soft bin must be an integer 0..65535, "
                                         "got 70000"):
        m.part("0", True, 70000)
    with pytest.raises(ValueError, match="got True"):
        m.part("0", True, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the previous site '9' is not configured"):
        m.part("0", True, 1, previous=("9", True, 1))
    with pytest.raises(ValueError, match=r"the previous result \('0', True, 1\) was never "
                                         "counted"):
        m.part("0", True, 1, previous=("0", True, 1))
    m.part("0", True, 1)
    with pytest.raises(ValueError, match="never counted"):
        m.part("0", True, 1, previous=("0", False, 1))  # no failing part on site 0
    with pytest.raises(ValueError, match="never counted"):
        m.part("0", True, 1, previous=("0", True, 12))  # bin 12 is empty
    assert (m.parts, m.good) == (1, 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"sites": ()}, "AlarmMonitor needs a non-empty list of site ids"),
    ({"sites": "01"}, "AlarmMonitor needs a non-empty list of site ids"),
    ({"sites": ("0", "0")}, "AlarmMonitor: a site is listed twice in ['0', '0']"),
    ({"first_id": 0}, "AlarmMonitor: first_id must be an integer >= 1, got 0"),
])
def test_bad_monitor_arguments(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"sites": SITES, "first_id": 1}
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        AlarmMonitor((), args["sites"], "L", None, Clock().seconds, first_id=args["first_id"])
    assert str(info.value) == message


def test_rules_must_be_alarm_rules() -> None:
    with pytest.raises(ValueError, match="rules must be AlarmRule, got"):
        AlarmMonitor([{"kind": "lot_yield"}], SITES, "L", None, Clock().seconds)  # type: ignore
