"""Which fault of :class:`ate.config.SimFaults` hits which part of which simulated site.

:class:`FaultPlan` answers two questions for :mod:`ate.sim.sites`, by the site's lifetime
part number (``SimSite.parts_tested``, counted from 1 over every lot and load):

* :meth:`FaultPlan.event_for`: the once-only event of the part (``crash``, ``drop``,
  ``wrong_site``, ``duplicate``) on ``fault_site``, each at most once;
* :meth:`FaultPlan.outcome`: the part's soft bin, from the normal mix of ``bins`` or, from
  part ``after + 1`` of its site on, from a ``bin_storm`` (always its ``sbin``) or a
  ``drift`` (pass with ``yield_percent`` %: a passing bin of ``bins`` (soft bin 1..9) or a
  failing one, by the mix's weights).  A ``bin_storm`` wins over a ``drift`` of the same
  site once both apply.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from ate.config import SimFaults

__all__ = ["FaultPlan", "is_pass_bin"]

_EVENTS = (("crash", "crash_on_part"), ("drop", "drop_result_on_part"),
           ("wrong_site", "wrong_site_on_part"), ("duplicate", "duplicate_result_on_part"))


def is_pass_bin(sbin: int) -> bool:
    """The simulator's (and the fixture job's) passing soft bins: 1..9."""
    return 1 <= sbin <= 9


class FaultPlan:
    """The faults of one :class:`ate.sim.sites.SimSites`; raises ``ValueError`` naming a
    fault that names a site that is not simulated, or that the bins cannot serve."""

    def __init__(self, faults: SimFaults, sites: Sequence[str], bins: Sequence[Any],
                 weights: Sequence[float]):
        self.faults = faults
        fs = faults.fault_site
        self.fault_site = str(fs) if fs is not None else sites[0]
        if self.fault_site not in sites:
            raise ValueError(f"simulated sites: fault_site {self.fault_site!r} is not one of "
                             f"the sites {list(sites)}")
        self.bins = tuple(bins)
        self.weights = list(weights)
        self._hbins = {int(b.sbin): int(b.hbin) for b in reversed(self.bins)}
        pairs = [(b, w) for b, w in zip(self.bins, self.weights, strict=True) if w > 0]
        self._pass = [b for b, _ in pairs if is_pass_bin(int(b.sbin))]
        self._pass_w = [w for b, w in pairs if is_pass_bin(int(b.sbin))]
        self._fail = [b for b, _ in pairs if not is_pass_bin(int(b.sbin))]
        self._fail_w = [w for b, w in pairs if not is_pass_bin(int(b.sbin))]
        self.drift = self._by_site("drift", faults.drift, sites)
        self.bin_storm = self._by_site("bin_storm", faults.bin_storm, sites)
        for d in self.drift.values():
            if not 0 <= d.yield_percent <= 100:
                raise ValueError(f"simulated sites: drift of site {d.site}: yield "
                                 f"{d.yield_percent} is not a percentage 0..100")
            if (d.yield_percent > 0 and not self._pass) or (d.yield_percent < 100
                                                            and not self._fail):
                raise ValueError(f"simulated sites: drift of site {d.site}: yield "
                                 f"{d.yield_percent:g} needs passing (1..9) and failing soft "
                                 "bins of weight > 0")
        self._fired: set[str] = set()

    @staticmethod
    def _by_site(kind: str, faults: Sequence[Any], sites: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fault in faults:
            if fault.site not in sites:
                raise ValueError(f"simulated sites: {kind} site {fault.site!r} is not one of "
                                 f"the sites {list(sites)}")
            if fault.site in out:
                raise ValueError(f"simulated sites: site {fault.site!r} has two {kind} faults")
            out[fault.site] = fault
        return out

    def event_for(self, site: str, number: int) -> str | None:
        """The once-only event of part ``number`` of ``site``, or ``None``."""
        if site != self.fault_site:
            return None
        for name, attr in _EVENTS:
            k = getattr(self.faults, attr, None)
            if k and k == number and name not in self._fired:
                self._fired.add(name)
                return name
        return None

    def outcome(self, site: str, number: int, rng: random.Random) -> tuple[int, int, str | None]:
        """``(sbin, hbin of bins, fault)`` of part ``number`` of ``site``; ``fault`` is
        ``"drift"``, ``"bin_storm"`` or ``None`` (the normal mix).  The hard bin is the
        one ``bins`` gives the soft bin (0 for a storm's soft bin that ``bins`` lacks); the
        job's bin table, when the loadTest sent one, overrides it."""
        storm = self.bin_storm.get(site)
        if storm is not None and number > storm.after:
            return storm.sbin, self._hbins.get(storm.sbin, 0), "bin_storm"
        drift = self.drift.get(site)
        if drift is not None and number > drift.after:
            if rng.random() * 100.0 < drift.yield_percent:
                spec = rng.choices(self._pass, weights=self._pass_w)[0]
            else:
                spec = rng.choices(self._fail, weights=self._fail_w)[0]
            return int(spec.sbin), int(spec.hbin), "drift"
        spec = rng.choices(self.bins, weights=self.weights)[0]
        return int(spec.sbin), int(spec.hbin), None
