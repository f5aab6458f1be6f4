"""Log levels of the wire contract (protocol.md 10.1-10.3).

``setloglevel`` (to the master from the UI, and from the master to the Control apps and
TestApps) carries one of :data:`LOG_LEVELS`; anything else is refused. A remote log line
(2.11, 10.2) names its level as in :data:`LOG_LEVEL_NAMES`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

__all__ = ["LOG_LEVELS", "LOG_LEVEL_NAMES"]

#: Level number -> its name in a log line: Debug 10, Info 20, Warning 30, Error 40 (10.1).
LOG_LEVEL_NAMES: Mapping[int, str] = MappingProxyType(
    {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR"})

#: The levels a ``setloglevel`` may carry (10.3). A tuple, so that ``value in LOG_LEVELS``
#: is simply False for any JSON value (a list or an object would not be hashable).
LOG_LEVELS: tuple[int, ...] = tuple(LOG_LEVEL_NAMES)
