"""The config key ``alarms`` (protocol.md 15.1): :class:`AlarmRule` and :func:`parse_alarms`.

Pure: no Twisted, no I/O.  A rule is one object of the list (TOML ``[[alarms]]``, a JSON
list of objects)::

    [[alarms]]
    kind = "consecutive_fails"     # required, one of KINDS
    name = "contact"               # optional, default: the kind; unique among the rules
    action = "hold"                # "notify" (default) or "hold"
    count = 8                      # the fields of the kind, see FIELDS

Every problem raises :class:`AlarmRuleError` (a ``ValueError``) whose text names the rule's
index and key, e.g. ``alarms[2].min_percent: must be a number 0..100, got 'x'``; the config
reader turns it into a ``ConfigError`` for the same key.

Fields, with their defaults (``None``: required, or unused by the kind):

- ``count`` (5): failing parts in a row (``consecutive_fails``), integer >= 1;
- ``min_percent``: yield limit in percent, number 0..100, required by ``site_yield`` and
  ``lot_yield``;
- ``min_parts`` (100): parts tested before the rule is evaluated, integer >= 1;
- ``window`` (0): ``site_yield`` over the site's last ``window`` tests, 0 for the whole
  lot, integer 0..100000;
- ``sbin``: soft bin, integer 0..65535, required by ``bin_limit`` and
  ``statistical_bin_limit``;
- ``max_percent`` / ``max_count``: ``bin_limit`` needs at least one (number 0..100 /
  integer >= 0); with both it fires on whichever is exceeded first;
- ``z`` (4.0): ``site_divergence`` threshold on ``|z|``, number > 0;
- ``k`` (3.0): ``statistical_*`` sigma multiplier, number > 0;
- ``history`` (20): newest finalised lots of the part type used, integer 1..1000;
- ``min_history`` (6): lots needed in history, else the rule is inactive, integer
  1..``history``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACTIONS",
    "DEFAULT_DEMO_ALARMS",
    "FIELDS",
    "KINDS",
    "STATISTICAL_KINDS",
    "AlarmRule",
    "AlarmRuleError",
    "history_needed",
    "parse_alarms",
]

KINDS = (
    "consecutive_fails",
    "site_yield",
    "lot_yield",
    "bin_limit",
    "site_divergence",
    "statistical_yield_limit",
    "statistical_bin_limit",
)
STATISTICAL_KINDS = ("statistical_yield_limit", "statistical_bin_limit")
ACTIONS = ("notify", "hold")

_COMMON = ("kind", "name", "action")
_STATISTICS = ("k", "history", "min_history", "min_parts")
#: The fields each kind accepts besides kind, name and action.
FIELDS: Mapping[str, tuple[str, ...]] = {
    "consecutive_fails": ("count",),
    "site_yield": ("min_percent", "min_parts", "window"),
    "lot_yield": ("min_percent", "min_parts"),
    "bin_limit": ("sbin", "max_percent", "max_count", "min_parts"),
    "site_divergence": ("z", "min_parts"),
    "statistical_yield_limit": _STATISTICS,
    "statistical_bin_limit": ("sbin",) + _STATISTICS,
}
_REQUIRED: Mapping[str, tuple[str, ...]] = {
    "site_yield": ("min_percent",),
    "lot_yield": ("min_percent",),
    "bin_limit": ("sbin",),
    "statistical_bin_limit": ("sbin",),
}
_ALL_FIELDS = frozenset(_COMMON).union(*FIELDS.values())

MAX_WINDOW = 100_000
MAX_HISTORY = 1000
MAX_NAME = 64
_MAX_INT = 10**9
DEFAULT_HISTORY = 20
DEFAULT_MIN_HISTORY = 6

#: Rules the demo cell runs with, so that a newcomer sees alarms fire: the demo's soft bin
#: 12 (contact open) takes about 5% of the parts, above the 4% limit, so ``contact_opens``
#: notifies in most lots; the other two stay quiet on healthy sites.
DEFAULT_DEMO_ALARMS: tuple[Mapping[str, Any], ...] = (
    {"kind": "site_divergence", "action": "notify"},
    {"kind": "consecutive_fails", "action": "hold", "count": 8},
    {"kind": "bin_limit", "name": "contact_opens", "action": "notify", "sbin": 12,
     "max_percent": 4.0, "min_parts": 100},
)


class AlarmRuleError(ValueError):
    """A bad ``alarms`` entry.  ``str(e)`` is ``"<key>: <problem>"``."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}")


@dataclass(frozen=True, slots=True)
class AlarmRule:
    """One validated alarm rule; the fields a kind does not use keep their defaults."""

    kind: str
    name: str
    action: str = "notify"
    count: int = 5
    min_percent: float | None = None
    min_parts: int = 100
    window: int = 0
    sbin: int | None = None
    max_percent: float | None = None
    max_count: int | None = None
    z: float = 4.0
    k: float = 3.0
    history: int = DEFAULT_HISTORY
    min_history: int = DEFAULT_MIN_HISTORY

    @property
    def statistical(self) -> bool:
        """True for the rules that read the lot history (SYL, SBL)."""
        return self.kind in STATISTICAL_KINDS


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _integer(key: str, value: Any, low: int, high: int = _MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AlarmRuleError(key, f"must be an integer {low}..{high}, got {_describe(value)}")
    if not low <= value <= high:
        raise AlarmRuleError(key, f"must be an integer {low}..{high}, got {value}")
    return value


def _percent(key: str, value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not 0 <= value <= 100):
        raise AlarmRuleError(key, f"must be a number 0..100, got {_describe(value)}")
    return float(value)


def _positive(key: str, value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise AlarmRuleError(key, f"must be a number greater than 0, got {_describe(value)}")
    return float(value)


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise AlarmRuleError(key, f"must be a string, got {_describe(value)}")
    if not value.strip():
        raise AlarmRuleError(key, "must not be empty")
    if value != value.strip():
        raise AlarmRuleError(key, f"{value!r} must not start or end with spaces")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise AlarmRuleError(key, f"{value!r} must not contain control characters")
    if len(value) > MAX_NAME:
        raise AlarmRuleError(key, f"must be at most {MAX_NAME} characters, got {len(value)}")
    return value


def _rule(where: str, item: Any) -> AlarmRule:
    if not isinstance(item, Mapping):
        raise AlarmRuleError(where, f"must be an object (a [[alarms]] table in TOML), "
                                    f"got {_describe(item)}")
    if "kind" not in item:
        raise AlarmRuleError(where, f"missing field 'kind' (one of: {', '.join(KINDS)})")
    kind = item["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise AlarmRuleError(where, f"unknown kind {_describe(kind)} (known: {', '.join(KINDS)})")
    allowed = _COMMON + FIELDS[kind]
    for field in item:
        if field not in allowed:
            what = "unknown field" if field not in _ALL_FIELDS else "field"
            tail = "" if field not in _ALL_FIELDS else f" does not apply to kind {kind!r}"
            raise AlarmRuleError(where, f"{what} {field!r}{tail} (fields of {kind}: "
                                        f"{', '.join(allowed)})")
    for field in _REQUIRED.get(kind, ()):
        if field not in item:
            raise AlarmRuleError(where, f"kind {kind!r} needs the field {field!r}")
    if kind == "bin_limit" and "max_percent" not in item and "max_count" not in item:
        raise AlarmRuleError(where, "kind 'bin_limit' needs 'max_percent' or 'max_count'")

    values: dict[str, Any] = {"kind": kind}
    values["name"] = _name(f"{where}.name", item["name"]) if "name" in item else kind
    if "action" in item:
        action = item["action"]
        if not isinstance(action, str) or action not in ACTIONS:
            raise AlarmRuleError(f"{where}.action", f"must be one of {', '.join(ACTIONS)}, "
                                                    f"got {_describe(action)}")
        values["action"] = action
    for field in FIELDS[kind]:
        if field not in item:
            continue
        key, value = f"{where}.{field}", item[field]
        if field in ("min_percent", "max_percent"):
            values[field] = _percent(key, value)
        elif field in ("z", "k"):
            values[field] = _positive(key, value)
        elif field == "sbin":
            values[field] = _integer(key, value, 0, 65535)
        elif field == "window":
            values[field] = _integer(key, value, 0, MAX_WINDOW)
        elif field == "max_count":
            values[field] = _integer(key, value, 0)
        elif field == "history":
            values[field] = _integer(key, value, 1, MAX_HISTORY)
        elif field != "min_history":  # count, min_parts
            values[field] = _integer(key, value, 1)
    if "min_history" in item:
        history = values.get("history", DEFAULT_HISTORY)
        values["min_history"] = _integer(f"{where}.min_history", item["min_history"], 1, history)
    elif values.get("history", DEFAULT_HISTORY) < DEFAULT_MIN_HISTORY:
        raise AlarmRuleError(f"{where}.history",
                             f"is {values['history']}, below the default min_history "
                             f"{DEFAULT_MIN_HISTORY}; give min_history too")
    return AlarmRule(**values)


def parse_alarms(value: Any, key: str = "alarms") -> tuple[AlarmRule, ...]:
    """Validate ``value`` (a list of rule objects) into rules, in the order given.

    Raises :class:`AlarmRuleError` naming ``key[index]`` and the field at fault.  Names
    must be unique; two rules of one kind therefore need a ``name`` each but one.
    """
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise AlarmRuleError(key, f"must be a list of rule objects ([[{key}]] in TOML), "
                                  f"got {_describe(value)}")
    rules: list[AlarmRule] = []
    names: dict[str, int] = {}
    for index, item in enumerate(value):
        where = f"{key}[{index}]"
        rule = _rule(where, item)
        if rule.name in names:
            first = names[rule.name]
            if isinstance(item, Mapping) and "name" not in item:
                if rules[first].kind == rule.kind:
                    raise AlarmRuleError(where, f"a second {rule.kind} rule needs a 'name' "
                                                f"({key}[{first}] is already called "
                                                f"{rule.name!r})")
                raise AlarmRuleError(where, f"needs a 'name': its default {rule.name!r} is "
                                            f"already the name of {key}[{first}]")
            raise AlarmRuleError(f"{where}.name",
                                 f"{rule.name!r} is already the name of {key}[{first}]")
        names[rule.name] = index
        rules.append(rule)
    return tuple(rules)


def history_needed(rules: Sequence[AlarmRule]) -> int:
    """How many newest lots of the part type the statistical rules read (0: none)."""
    return max((rule.history for rule in rules if rule.statistical), default=0)
