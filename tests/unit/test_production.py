"""Production figures (protocol.md §15.4): ate.master.production.Production on a Clock."""

from __future__ import annotations

import json
import re

import pytest
from twisted.internet.task import Clock

from ate.master.production import (
    E10_STATES,
    HISTOGRAM_BUCKETS,
    Production,
    production_lines,
)

READY = {"lot": True, "held": False, "connected": True}


def started(clock: Clock | None = None) -> tuple[Clock, Production]:
    """A Production that went connecting -> initialized at t=0 (no time accrued)."""
    clock = clock or Clock()
    prod = Production(clock)
    prod.state("connecting", lot=False, held=False, connected=False)
    prod.state("connecting", lot=False, held=False, connected=True)
    prod.state("initialized", lot=False, held=False, connected=True)
    return clock, prod


def loaded(lot: str = "L1") -> tuple[Clock, Production]:
    clock, prod = started()
    prod.new_lot(lot)
    prod.state("loading", lot=True, held=False, connected=True)
    prod.state("ready", **READY)
    return clock, prod


def cycle(clock: Clock, prod: Production, test: float = 1.0, index: float = 0.0,
          offered: int = 4, tested: int = 4) -> None:
    """One handler cycle: ``index`` s in ready, next, ``test`` s testing, response."""
    clock.advance(index)
    prod.next_command(offered, tested)
    prod.state("testing", **READY)
    clock.advance(test)
    prod.last_result()
    prod.next_response()
    prod.state("ready", **READY)


# -- units per hour -------------------------------------------------------------------------

def test_uph_over_the_last_hour_and_five_minutes_and_old_parts_fall_out() -> None:
    clock, prod = loaded()
    for _ in range(3600):            # one 4-site part per second for an hour
        cycle(clock, prod, test=0.5, index=0.5)
    fig = prod.figures()["since_start"]
    assert fig["parts"] == 14400
    assert fig["cycles"] == 3600
    assert fig["uph_1h"] == pytest.approx(14400, rel=1e-3)
    assert fig["uph_5m"] == pytest.approx(14400)
    clock.advance(600)               # ten minutes without parts
    fig = prod.figures()["since_start"]
    assert fig["uph_5m"] == 0.0
    assert fig["uph_1h"] == pytest.approx(14400 * 50 / 60, rel=0.01)
    clock.advance(3000)              # the last part is now an hour old
    fig = prod.figures()["since_start"]
    assert fig["uph_1h"] == 0.0
    assert fig["parts"] == 14400     # the count since start stays


def test_five_minute_window_is_parts_in_the_last_300_s_times_12() -> None:
    clock, prod = loaded()
    for _ in range(100):             # 100 parts of 4 sites every 10 s: 1000 s
        cycle(clock, prod, test=2.0, index=8.0)
    fig = prod.figures()["since_start"]
    # parts completed within the last 300 s: 30 cycles
    assert fig["uph_5m"] == pytest.approx(30 * 4 * 12)
    # first hour: scaled by the 1000 s since the first next
    assert fig["uph_1h"] == pytest.approx(400 * 3600 / (1000 - 8.0), rel=1e-9)
    assert fig["uph_mean"] == pytest.approx(400 * 3600 / (1000 - 8.0), rel=1e-9)


def test_uph_is_zero_before_any_part_and_never_divides_by_zero() -> None:
    clock, prod = loaded()
    fig = prod.figures()["since_start"]
    assert (fig["uph_1h"], fig["uph_5m"], fig["parts"]) == (0.0, 0.0, 0)
    cycle(clock, prod, test=0.0)     # a part done in no time at all
    fig = prod.figures()["since_start"]
    assert fig["uph_1h"] == pytest.approx(4 * 3600)   # the elapsed time is at least 1 s


def test_the_ring_does_not_grow_with_parts() -> None:
    clock, prod = loaded()
    for _ in range(100_000):
        prod.next_command(2, 2)
        clock.advance(0.01)
        prod.last_result()
        prod.next_response()
    assert prod.figures()["since_start"]["parts"] == 200_000
    assert len(prod._start.ring.buckets) == 3600
    assert prod._lot is not None and len(prod._lot.ring.buckets) == 3600
    # 1000 s of parts: the hour window holds them all, the 5-min one the last 300 s
    assert prod._start.ring.long_sum == 200_000
    assert prod._start.ring.short_sum == pytest.approx(60_000, abs=300)


# -- index and test time, utilisation ---------------------------------------------------------

def test_index_time_and_test_time() -> None:
    clock, prod = loaded()
    cycle(clock, prod, test=1.5, index=4.0)     # first next after load: no index time
    cycle(clock, prod, test=0.5, index=2.0)
    cycle(clock, prod, test=1.0, index=3.0)
    fig = prod.figures()["lot"]
    assert fig["test_time_s"] == {"count": 3, "mean": pytest.approx(1.0), "min": 0.5,
                                  "max": 1.5, "last": 1.0}
    assert fig["index_time_s"] == {"count": 2, "mean": pytest.approx(2.5), "min": 2.0,
                                   "max": 3.0, "last": 3.0}
    clock.advance(120)               # a long pause in ready is index time
    prod.next_command(4, 4)
    assert prod.figures()["lot"]["index_time_s"]["max"] == 120


def test_index_time_is_not_counted_across_unload_hold_or_broker_loss() -> None:
    clock, prod = loaded()
    cycle(clock, prod)
    # a hold: the interval is broken
    prod.state("ready", lot=True, held=True, connected=True)
    clock.advance(30)
    prod.state("ready", **READY)
    cycle(clock, prod, index=1.0)
    # broker lost in ready
    prod.state("ready", lot=True, held=False, connected=False)
    clock.advance(10)
    prod.state("ready", **READY)
    cycle(clock, prod, index=1.0)
    # unload and a new lot
    prod.state("unloading", **READY)
    prod.end_lot()
    prod.state("initialized", lot=False, held=False, connected=True)
    prod.new_lot("L2")
    prod.state("ready", **READY)
    cycle(clock, prod, index=7.0)
    start = prod.figures()["since_start"]
    assert start["index_time_s"]["count"] == 0
    assert start["cycles"] == 4
    cycle(clock, prod, index=2.0)
    assert prod.figures()["since_start"]["index_time_s"]["last"] == 2.0


def test_site_utilisation_with_partial_next() -> None:
    clock, prod = loaded()
    assert prod.figures()["lot"]["site_utilisation"] is None
    cycle(clock, prod, offered=4, tested=4)
    cycle(clock, prod, offered=4, tested=2)
    cycle(clock, prod, offered=4, tested=3)
    fig = prod.figures()["lot"]
    assert fig["site_utilisation"] == pytest.approx(9 / 12)
    assert (fig["slots_offered"], fig["slots_tested"], fig["parts"]) == (12, 9, 9)


def test_out_of_order_calls_change_no_figure() -> None:
    clock, prod = loaded()
    prod.last_result()               # no pending next
    prod.next_response()
    clock.advance(5)
    prod.next_command(4, 4)
    prod.next_response()             # a response without the last result (timeout)
    prod.last_result()
    fig = prod.figures()["lot"]
    assert (fig["cycles"], fig["parts"], fig["test_time_s"]["count"]) == (0, 0, 0)
    assert fig["index_time_s"]["count"] == 0


@pytest.mark.parametrize(("call", "message"), [
    (lambda p: p.state("paused", lot=False, held=False, connected=True),
     "unknown master state 'paused'"),
    (lambda p: p.state("ready", lot=1, held=False, connected=True), "lot must be a bool"),
    (lambda p: p.next_command(0, 0), "offered must be an integer >= 1, got 0"),
    (lambda p: p.next_command(4, -1), "tested must be an integer >= 0, got -1"),
    (lambda p: p.next_command(2, 3), "tested (3) must not exceed offered (2)"),
    (lambda p: p.next_command(True, 1), "offered must be an integer"),
    (lambda p: p.new_lot(""), "lot_number must be a non-empty string"),
])
def test_bad_input_names_what_was_wrong(call, message) -> None:
    _, prod = started()
    with pytest.raises(ValueError, match=re.escape(message)):
        call(prod)


# -- SEMI E10 ---------------------------------------------------------------------------------

def test_non_scheduled_at_start_up_then_standby() -> None:
    clock = Clock()
    prod = Production(clock)
    prod.state("connecting", lot=False, held=False, connected=False)
    clock.advance(5)                 # broker not reached yet: still start-up
    prod.state("connecting", lot=False, held=False, connected=True)
    assert prod.figures()["e10_state"] == "non_scheduled"
    clock.advance(10)
    prod.state("initialized", lot=False, held=False, connected=True)
    assert prod.figures()["e10_state"] == "standby"
    clock.advance(20)
    e10 = prod.figures()["since_start"]["e10_seconds"]
    assert e10 == {"productive": 0.0, "standby": 20.0, "unscheduled_down": 0.0,
                   "non_scheduled": 15.0}
    assert prod.figures()["lot"] is None


def test_e10_through_testing_softerror_reset_hold_and_broker_loss() -> None:
    clock, prod = loaded()
    clock.advance(3)                                     # ready with a lot: productive
    prod.next_command(4, 4)
    prod.state("testing", **READY)
    clock.advance(2)                                     # testing: productive
    prod.state("testing", lot=True, held=False, connected=False)
    assert prod.figures()["e10_state"] == "unscheduled_down"
    clock.advance(7)                                     # broker lost while testing
    prod.state("testing", **READY)
    clock.advance(1)
    prod.state("softerror", **READY)
    clock.advance(11)                                    # softerror
    prod.end_lot()
    prod.state("connecting", lot=False, held=False, connected=True)
    clock.advance(13)                                    # connecting after a reset
    prod.state("initialized", lot=False, held=False, connected=True)
    clock.advance(17)                                    # standby
    prod.new_lot("L2")
    prod.state("loading", lot=True, held=False, connected=True)
    clock.advance(19)                                    # loading: standby
    prod.state("ready", **READY)
    clock.advance(23)                                    # productive
    prod.state("ready", lot=True, held=True, connected=True)
    clock.advance(29)                                    # held
    prod.state("ready", lot=True, held=True, connected=False)
    clock.advance(31)                                    # held and broker lost
    prod.state("unloading", lot=True, held=False, connected=True)
    clock.advance(37)                                    # unloading: standby
    prod.end_lot()
    prod.state("initialized", lot=False, held=False, connected=True)
    clock.advance(41)
    prod.state("error", lot=False, held=False, connected=True)
    clock.advance(43)
    fig = prod.figures()
    assert fig["since_start"]["e10_seconds"] == {
        "productive": 3 + 2 + 1 + 23,
        "standby": 17 + 19 + 37 + 41,
        "unscheduled_down": 7 + 11 + 13 + 29 + 31 + 43,
        "non_scheduled": 0.0,
    }
    assert fig["lot"]["e10_seconds"] == {"productive": 23.0, "standby": 19.0 + 37.0,
                                         "unscheduled_down": 29.0 + 31.0,
                                         "non_scheduled": 0.0}
    assert fig["e10_state"] == "unscheduled_down"


def test_broker_lost_wins_and_stopped_is_non_scheduled() -> None:
    clock, prod = started()
    prod.state("initialized", lot=False, held=False, connected=False)
    assert prod.figures()["e10_state"] == "unscheduled_down"
    prod.state("connecting", lot=False, held=False, connected=False)
    assert prod.figures()["e10_state"] == "unscheduled_down"
    prod.state("stopped", lot=False, held=False, connected=True)
    assert prod.figures()["e10_state"] == "non_scheduled"


# -- per lot ------------------------------------------------------------------------------------

def test_per_lot_figures_start_at_zero_and_are_kept_until_the_next_lot() -> None:
    clock, prod = loaded("L1")
    for _ in range(10):
        cycle(clock, prod, test=1.0, index=1.0)
    prod.state("unloading", **READY)
    prod.end_lot()
    prod.state("initialized", lot=False, held=False, connected=True)
    lot1 = prod.figures()["lot"]
    assert lot1["lot_number"] == "L1"
    assert lot1["open"] is False and lot1["ended"] == 20.0
    assert lot1["parts"] == 40
    clock.advance(5000)              # the ended lot's figures are frozen
    assert prod.figures()["lot"] == lot1
    assert prod.summary() == lot1
    assert prod.figures()["since_start"]["uph_1h"] == 0.0
    prod.new_lot("L2")
    lot2 = prod.figures()["lot"]
    assert lot2["lot_number"] == "L2" and lot2["open"] is True
    assert (lot2["parts"], lot2["cycles"], lot2["uph_1h"]) == (0, 0, 0.0)
    assert lot2["e10_seconds"] == dict.fromkeys(E10_STATES, 0.0)
    assert lot2["test_time_s"]["count"] == 0
    assert prod.figures()["since_start"]["parts"] == 40


def test_summary_json_and_text() -> None:
    _, prod = started()
    assert prod.summary() == {}
    assert prod.summary_text() == ""
    clock, prod = loaded("LOT7")
    cycle(clock, prod, test=1.25, index=0.0, offered=4, tested=3)
    cycle(clock, prod, test=0.75, index=2.0, offered=4, tested=4)
    prod.end_lot()
    summary = json.loads(json.dumps(prod.summary()))
    assert summary["lot_number"] == "LOT7" and summary["parts"] == 7
    text = prod.summary_text()
    assert text.endswith("\n")
    assert text.splitlines() == production_lines(summary)
    assert "  Parts: 7 in 2 cycles, site utilisation 87.5%" in text
    assert "Test time: n=2 min=0.750 s mean=1.000 s max=1.250 s last=0.750 s" in text
    assert "Index time: n=1 min=2.000 s" in text
    assert "productive 4.0 s (100.0%)" in text


# -- /metrics -----------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> tuple[dict[str, str], dict[tuple[str, tuple], float]]:
    """Text format 0.0.4: TYPE per family and the samples; fails on any bad line."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, tuple], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split(" ", 3)[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name not in types, f"TYPE twice: {line}"
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"bad sample line {line!r}"
        name, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert family in types or name in types, f"sample before its TYPE: {line}"
        key = (name, tuple(_LABEL.findall(labels or "")))
        assert key not in samples, f"duplicate sample {line}"
        samples[key] = float(value)
    assert helps == set(types)
    return types, samples


def test_metrics_text_parses_and_has_the_names_the_rules_use() -> None:
    clock, prod = loaded()
    for _ in range(20):
        cycle(clock, prod, test=0.02, index=0.3, offered=4, tested=3)
    types, samples = parse_metrics(prod.metrics_text())
    assert types == {"ate_uph": "gauge", "ate_index_seconds": "histogram",
                     "ate_test_seconds": "histogram",
                     "ate_site_slots_offered_total": "counter",
                     "ate_site_slots_tested_total": "counter",
                     "ate_e10_seconds_total": "counter"}
    fig = prod.figures()["since_start"]
    assert samples[("ate_uph", (("window", "1h"),))] == pytest.approx(fig["uph_1h"])
    assert samples[("ate_uph", (("window", "5m"),))] == pytest.approx(fig["uph_5m"])
    assert samples[("ate_site_slots_offered_total", ())] == 80
    assert samples[("ate_site_slots_tested_total", ())] == 60
    for state in E10_STATES:
        assert samples[("ate_e10_seconds_total", (("state", state),))] == pytest.approx(
            fig["e10_seconds"][state])
    assert samples[("ate_e10_seconds_total", (("state", "productive"),))] == pytest.approx(
        20 * 0.32)
    assert samples[("ate_test_seconds_count", ())] == 20
    assert samples[("ate_test_seconds_sum", ())] == pytest.approx(0.4)
    assert samples[("ate_index_seconds_count", ())] == 19


def test_histogram_buckets_are_cumulative() -> None:
    clock, prod = loaded()
    for test in (0.005, 0.001, 0.03, 0.03, 0.7, 4.0, 59.0, 61.0, 300.0):
        cycle(clock, prod, test=test)
    _, samples = parse_metrics(prod.metrics_text())
    buckets = [(le, v) for (name, labels), v in samples.items()
               if name == "ate_test_seconds_bucket" for (_, le) in labels]
    bounds = [le for le, _ in buckets]
    assert bounds == [repr(float(b)) for b in HISTOGRAM_BUCKETS] + ["+Inf"]
    counts = dict(buckets)
    assert counts["0.005"] == 2      # le is inclusive
    assert counts["0.01"] == 2
    assert counts["0.05"] == 4
    assert counts["1.0"] == 5
    assert counts["5.0"] == 6
    assert counts["60.0"] == 7
    assert counts["+Inf"] == 9 == samples[("ate_test_seconds_count", ())]
    values = [v for _, v in buckets]
    assert values == sorted(values)


def test_metrics_before_anything_happened() -> None:
    prod = Production(Clock())
    types, samples = parse_metrics(prod.metrics_text())
    assert len(types) == 6
    assert samples[("ate_index_seconds_bucket", (("le", "+Inf"),))] == 0
    assert samples[("ate_uph", (("window", "1h"),))] == 0


def test_e10_timeline_lists_the_changes_of_the_last_day() -> None:
    from twisted.internet.task import Clock

    from ate.master.production import DAY, Production
    clock = Clock()
    clock.advance(1000)
    p = Production(clock)
    clock.advance(10)
    p.state("connecting", lot=False, held=False, connected=True)   # still non_scheduled
    p.state("initialized", lot=False, held=False, connected=True)
    clock.advance(5)
    p.state("ready", lot=True, held=False, connected=True)
    p.state("testing", lot=True, held=False, connected=True)       # productive again
    clock.advance(5)
    p.state("ready", lot=True, held=True, connected=True)
    assert p.timeline() == [[1000, "non_scheduled"], [1010, "standby"],
                            [1015, "productive"], [1020, "unscheduled_down"]]
    assert p.figures()["e10_timeline"] == p.timeline()
    clock.advance(DAY - 7)  # now 1013 + DAY: the first two changes are older than a day
    assert p.timeline() == [[1013, "standby"], [1015, "productive"],
                            [1020, "unscheduled_down"]]


def test_recent_cycles_pair_each_test_time_with_the_index_that_followed() -> None:
    from twisted.internet.task import Clock

    from ate.master.production import RECENT_MAX, Production
    clock = Clock()
    p = Production(clock)
    p.state("initialized", lot=False, held=False, connected=True)
    p.state("ready", lot=True, held=False, connected=True)
    p.new_lot("L1")
    for test, index in ((0.5, 0.25), (1.0, 0.125), (0.75, None)):
        p.next_command(2, 2)
        clock.advance(test)
        p.last_result()
        p.next_response()
        if index is not None:
            clock.advance(index)
    figures = p.figures()
    assert figures["recent_cycles"] == [[0.5, 0.25], [1.0, 0.125], [0.75, None]]
    assert figures["now"] == clock.seconds()
    for _ in range(RECENT_MAX + 10):
        p.next_command(2, 2)
        p.last_result()
        p.next_response()
    assert len(p.figures()["recent_cycles"]) == RECENT_MAX
    p.new_lot("L2")
    assert p.figures()["recent_cycles"] == []
