"""Ground truth of the simulated sites: every part result they sent, counted.

Compared with the master's view by the integration tests and the benchmark.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["GroundTruth", "PartRecord"]


@dataclass(frozen=True)
class PartRecord:
    """One part result the simulator sent (once, even when the fault sent it twice)."""

    site: str            # the site whose topic carried the result
    origin_site: str     # the site that tested it (differs for wrong_site faults)
    number: int          # 1-based part counter of the origin site
    part_id: str
    soft_bin: int
    hard_bin: int
    passed: bool


@dataclass
class GroundTruth:
    """Counts of everything the simulator sent, to compare with the master's view.

    ``by_*`` counters count parts whose result was sent (a duplicated result counts once;
    dropped results and crashes count nothing).  ``messages`` counts testresult messages.
    """

    parts: list[PartRecord] = field(default_factory=list)
    by_site: Counter = field(default_factory=Counter)            # site -> parts
    by_soft_bin: Counter = field(default_factory=Counter)        # sbin -> parts
    by_hard_bin: Counter = field(default_factory=Counter)        # hbin -> parts
    by_site_soft_bin: Counter = field(default_factory=Counter)   # (site, sbin) -> parts
    by_site_hard_bin: Counter = field(default_factory=Counter)   # (site, hbin) -> parts
    passed: Counter = field(default_factory=Counter)             # site -> passing parts
    messages: int = 0
    dropped: int = 0
    crashes: int = 0
    faults: list[tuple[str, str, int]] = field(default_factory=list)  # (fault, site, part)

    def record(self, part: PartRecord, copies: int) -> None:
        self.parts.append(part)
        self.by_site[part.site] += 1
        self.by_soft_bin[part.soft_bin] += 1
        self.by_hard_bin[part.hard_bin] += 1
        self.by_site_soft_bin[(part.site, part.soft_bin)] += 1
        self.by_site_hard_bin[(part.site, part.hard_bin)] += 1
        if part.passed:
            self.passed[part.site] += 1
        self.messages += copies

    @property
    def part_count(self) -> int:
        return len(self.parts)


