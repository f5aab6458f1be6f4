"""ate.alarms.rules: the config key ``alarms`` (protocol.md 15.1)."""

from __future__ import annotations

from typing import Any

import pytest

from ate.alarms import (
    DEFAULT_DEMO_ALARMS,
    KINDS,
    AlarmMonitor,
    AlarmRule,
    AlarmRuleError,
    history_needed,
    parse_alarms,
)
from ate.alarms.rules import FIELDS


def error_of(value: Any) -> str:
    with pytest.raises(AlarmRuleError) as info:
        parse_alarms(value)
    assert isinstance(info.value, ValueError)
    text = str(info.value)
    assert text == f"{info.value.key}: {info.value.problem}"
    assert "\n" not in text
    return text


def test_every_kind_with_its_defaults() -> None:
    rules = parse_alarms([
        {"kind": "consecutive_fails"},
        {"kind": "site_yield", "min_percent": 80},
        {"kind": "lot_yield", "min_percent": 85.5},
        {"kind": "bin_limit", "sbin": 12, "max_percent": 5},
        {"kind": "site_divergence"},
        {"kind": "statistical_yield_limit"},
        {"kind": "statistical_bin_limit", "sbin": 12},
    ])
    assert [r.kind for r in rules] == list(KINDS)
    assert [r.name for r in rules] == list(KINDS)
    assert {r.action for r in rules} == {"notify"}
    consecutive, site_yield, lot_yield, bin_limit, divergence, syl, sbl = rules
    assert consecutive.count == 5
    assert (site_yield.min_percent, site_yield.min_parts, site_yield.window) == (80.0, 100, 0)
    assert isinstance(site_yield.min_percent, float)
    assert lot_yield.min_percent == 85.5
    assert (bin_limit.sbin, bin_limit.max_percent, bin_limit.max_count) == (12, 5.0, None)
    assert (divergence.z, divergence.min_parts) == (4.0, 100)
    assert (syl.k, syl.history, syl.min_history, syl.min_parts, syl.sbin) == (3.0, 20, 6, 100,
                                                                              None)
    assert syl.statistical and sbl.statistical and not divergence.statistical
    assert sbl.sbin == 12


def test_every_field_given() -> None:
    (rule,) = parse_alarms([{"kind": "statistical_bin_limit", "name": "sbl 12", "action": "hold",
                             "sbin": 65535, "k": 2.5, "history": 30, "min_history": 30,
                             "min_parts": 1}])
    assert rule == AlarmRule(kind="statistical_bin_limit", name="sbl 12", action="hold",
                             sbin=65535, k=2.5, history=30, min_history=30, min_parts=1)
    (rule,) = parse_alarms([{"kind": "bin_limit", "sbin": 0, "max_count": 0, "max_percent": 0}])
    assert (rule.max_count, rule.max_percent) == (0, 0.0)
    (rule,) = parse_alarms([{"kind": "site_yield", "min_percent": 100, "window": 100000}])
    assert rule.window == 100000


def test_empty_list_and_tuple() -> None:
    assert parse_alarms([]) == ()
    assert parse_alarms(({"kind": "lot_yield", "min_percent": 1},))[0].kind == "lot_yield"


def test_rules_are_frozen() -> None:
    (rule,) = parse_alarms([{"kind": "consecutive_fails"}])
    with pytest.raises(AttributeError):
        rule.count = 3  # type: ignore[misc]


def test_two_rules_of_one_kind_with_names() -> None:
    rules = parse_alarms([{"kind": "consecutive_fails"},
                          {"kind": "consecutive_fails", "name": "long run", "count": 20}])
    assert [r.name for r in rules] == ["consecutive_fails", "long run"]


@pytest.mark.parametrize("value, expected", [
    ({"kind": "lot_yield"}, "alarms: must be a list of rule objects ([[alarms]] in TOML), "
                            "got an object"),
    ("lot_yield", "alarms: must be a list of rule objects ([[alarms]] in TOML), got 'lot_yield'"),
    (None, "alarms: must be a list of rule objects ([[alarms]] in TOML), got null"),
    ([3], "alarms[0]: must be an object (a [[alarms]] table in TOML), got 3"),
    ([{}], "alarms[0]: missing field 'kind' (one of: consecutive_fails, site_yield, lot_yield, "
           "bin_limit, site_divergence, statistical_yield_limit, statistical_bin_limit)"),
    ([{"kind": "foo"}], "alarms[0]: unknown kind 'foo' (known: consecutive_fails, site_yield, "
                        "lot_yield, bin_limit, site_divergence, statistical_yield_limit, "
                        "statistical_bin_limit)"),
    ([{"kind": 3}], "alarms[0]: unknown kind 3 (known: "),
    ([{"kind": "lot_yield", "min_percent": 50}, {"kind": "consecutive_fails", "cnt": 3}],
     "alarms[1]: unknown field 'cnt' (fields of consecutive_fails: kind, name, action, count)"),
    ([{"kind": "lot_yield", "min_percent": 50, "count": 3}],
     "alarms[0]: field 'count' does not apply to kind 'lot_yield' (fields of lot_yield: kind, "
     "name, action, min_percent, min_parts)"),
    ([{"kind": "site_yield"}], "alarms[0]: kind 'site_yield' needs the field 'min_percent'"),
    ([{"kind": "lot_yield"}], "alarms[0]: kind 'lot_yield' needs the field 'min_percent'"),
    ([{"kind": "bin_limit", "max_count": 3}], "alarms[0]: kind 'bin_limit' needs the field "
                                              "'sbin'"),
    ([{"kind": "bin_limit", "sbin": 3}], "alarms[0]: kind 'bin_limit' needs 'max_percent' or "
                                         "'max_count'"),
    ([{"kind": "statistical_bin_limit"}], "alarms[0]: kind 'statistical_bin_limit' needs the "
                                          "field 'sbin'"),
    ([{"kind": "lot_yield", "min_percent": "x"}],
     "alarms[0].min_percent: must be a number 0..100, got 'x'"),
    ([{"kind": "lot_yield", "min_percent": 100.5}],
     "alarms[0].min_percent: must be a number 0..100, got 100.5"),
    ([{"kind": "lot_yield", "min_percent": -1}],
     "alarms[0].min_percent: must be a number 0..100, got -1"),
    ([{"kind": "lot_yield", "min_percent": float("nan")}],
     "alarms[0].min_percent: must be a number 0..100, got nan"),
    ([{"kind": "lot_yield", "min_percent": True}],
     "alarms[0].min_percent: must be a number 0..100, got true"),
    ([{"kind": "bin_limit", "sbin": 1, "max_percent": [5]}],
     "alarms[0].max_percent: must be a number 0..100, got a list"),
    ([{"kind": "bin_limit", "sbin": 1, "max_count": -1}],
     "alarms[0].max_count: must be an integer 0..1000000000, got -1"),
    ([{"kind": "bin_limit", "sbin": 1, "max_count": 2.0}],
     "alarms[0].max_count: must be an integer 0..1000000000, got 2.0"),
    ([{"kind": "bin_limit", "sbin": 65536, "max_count": 2}],
     "alarms[0].sbin: must be an integer 0..65535, got 65536"),
    ([{"kind": "bin_limit", "sbin": "12", "max_count": 2}],
     "alarms[0].sbin: must be an integer 0..65535, got '12'"),
    ([{"kind": "consecutive_fails", "count": 0}],
     "alarms[0].count: must be an integer 1..1000000000, got 0"),
    ([{"kind": "consecutive_fails", "count": True}],
     "alarms[0].count: must be an integer 1..1000000000, got true"),
    ([{"kind": "consecutive_fails", "count": 5.0}],
     "alarms[0].count: must be an integer 1..1000000000, got 5.0"),
    ([{"kind": "lot_yield", "min_percent": 5, "min_parts": 0}],
     "alarms[0].min_parts: must be an integer 1..1000000000, got 0"),
    ([{"kind": "site_yield", "min_percent": 5, "window": -1}],
     "alarms[0].window: must be an integer 0..100000, got -1"),
    ([{"kind": "site_yield", "min_percent": 5, "window": 100001}],
     "alarms[0].window: must be an integer 0..100000, got 100001"),
    ([{"kind": "site_divergence", "z": 0}],
     "alarms[0].z: must be a number greater than 0, got 0"),
    ([{"kind": "site_divergence", "z": False}],
     "alarms[0].z: must be a number greater than 0, got false"),
    ([{"kind": "site_divergence", "z": float("inf")}],
     "alarms[0].z: must be a number greater than 0, got inf"),
    ([{"kind": "statistical_yield_limit", "k": -3}],
     "alarms[0].k: must be a number greater than 0, got -3"),
    ([{"kind": "statistical_yield_limit", "history": 0}],
     "alarms[0].history: must be an integer 1..1000, got 0"),
    ([{"kind": "statistical_yield_limit", "history": 4}],
     "alarms[0].history: is 4, below the default min_history 6; give min_history too"),
    ([{"kind": "statistical_yield_limit", "history": 4, "min_history": 5}],
     "alarms[0].min_history: must be an integer 1..4, got 5"),
    ([{"kind": "statistical_yield_limit", "min_history": 0}],
     "alarms[0].min_history: must be an integer 1..20, got 0"),
    ([{"kind": "statistical_yield_limit", "min_history": 21}],
     "alarms[0].min_history: must be an integer 1..20, got 21"),
    ([{"kind": "lot_yield", "min_percent": 5, "action": "stop"}],
     "alarms[0].action: must be one of notify, hold, got 'stop'"),
    ([{"kind": "lot_yield", "min_percent": 5, "action": None}],
     "alarms[0].action: must be one of notify, hold, got null"),
    ([{"kind": "lot_yield", "min_percent": 5, "name": ""}], "alarms[0].name: must not be empty"),
    ([{"kind": "lot_yield", "min_percent": 5, "name": 7}],
     "alarms[0].name: must be a string, got 7"),
    ([{"kind": "lot_yield", "min_percent": 5, "name": " y"}],
     "alarms[0].name: ' y' must not start or end with spaces"),
    ([{"kind": "lot_yield", "min_percent": 5, "name": "a\nb"}],
     "alarms[0].name: 'a\\nb' must not contain control characters"),
    ([{"kind": "lot_yield", "min_percent": 5, "name": "n" * 65}],
     "alarms[0].name: must be at most 64 characters, got 65"),
    ([{"kind": "consecutive_fails"}, {"kind": "lot_yield", "min_percent": 5},
      {"kind": "consecutive_fails", "count": 9}],
     "alarms[2]: a second consecutive_fails rule needs a 'name' (alarms[0] is already called "
     "'consecutive_fails')"),
    ([{"kind": "consecutive_fails", "name": "x"}, {"kind": "lot_yield", "min_percent": 5,
                                                   "name": "x"}],
     "alarms[1].name: 'x' is already the name of alarms[0]"),
    ([{"kind": "lot_yield", "min_percent": 5, "name": "consecutive_fails"},
      {"kind": "consecutive_fails"}],
     "alarms[1]: needs a 'name': its default 'consecutive_fails' is already the name of "
     "alarms[0]"),
])
def test_bad_rules(value: Any, expected: str) -> None:
    assert error_of(value).startswith(expected)


def test_the_key_prefix_is_the_callers() -> None:
    with pytest.raises(AlarmRuleError) as info:
        parse_alarms([{"kind": "foo"}], key="extra_alarms")
    assert info.value.key == "extra_alarms[0]"


def test_every_field_name_is_a_rule_field() -> None:
    names = set(AlarmRule.__dataclass_fields__)
    for fields in FIELDS.values():
        assert set(fields) <= names


def test_history_needed() -> None:
    assert history_needed(()) == 0
    assert history_needed(parse_alarms([{"kind": "lot_yield", "min_percent": 5}])) == 0
    assert history_needed(parse_alarms([
        {"kind": "statistical_yield_limit", "history": 12},
        {"kind": "statistical_bin_limit", "sbin": 3, "history": 40}])) == 40


def test_demo_alarms_parse_and_hold_one_hold_rule() -> None:
    rules = parse_alarms(DEFAULT_DEMO_ALARMS)
    assert {r.kind for r in rules} == {"site_divergence", "consecutive_fails", "bin_limit"}
    assert [r.name for r in rules if r.action == "hold"] == ["consecutive_fails"]
    assert AlarmMonitor(rules, ("0", "1"), "L", None, lambda: 0.0).inactive() == []
