"""Production alarms (protocol.md 15): the ``alarms`` rules and their evaluation per lot.

Pure: no Twisted.  :mod:`ate.alarms.rules` parses the config key, :mod:`ate.alarms.monitor`
evaluates the rules of one lot on every completed site result.
"""

from ate.alarms.monitor import (
    DIVERGENCE_FALSE_BOUND,
    SIGMA_FLOOR,
    Alarm,
    AlarmMonitor,
    AlarmNotFound,
    Baseline,
)
from ate.alarms.rules import (
    ACTIONS,
    DEFAULT_DEMO_ALARMS,
    KINDS,
    AlarmRule,
    AlarmRuleError,
    history_needed,
    parse_alarms,
)

__all__ = [
    "ACTIONS",
    "DEFAULT_DEMO_ALARMS",
    "DIVERGENCE_FALSE_BOUND",
    "KINDS",
    "SIGMA_FLOOR",
    "Alarm",
    "AlarmMonitor",
    "AlarmNotFound",
    "AlarmRule",
    "AlarmRuleError",
    "Baseline",
    "history_needed",
    "parse_alarms",
]
