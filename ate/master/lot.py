"""One loaded lot: its results, yields, bin counts and part counters (pure, no Twisted).

The master's state machine decides *when* a result is counted; this module decides *what*
is counted (protocol 7.1–7.3). Every result is folded in in constant time: a retest
removes the part's previous contribution and adds the new one. Per part only a compact
value is kept (site, head, soft bin, hard bin, part flag, retest count), in a
:class:`~ate.master.partindex.PartIndex`: the newest parts in memory, the rest on disk.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from ate.master.partindex import PartIndex
from ate.stdf.records import writable_int
from ate.stdf.summary import BinRow, Tally, footer_records, is_abort_bin, is_good_bin, mir_record

__all__ = ["Lot", "PartOutcome"]

_MISSING_COORD = -32768


@dataclass(frozen=True, slots=True)
class PartOutcome:
    """What one site result meant for the lot."""

    site: str
    part_id: str
    soft_bin: int
    hard_bin: int
    passed: bool
    retest: bool
    unknown_soft_bin: bool
    test_time_ms: int | None
    #: Notes for the master's log, e.g. a generated part id (7.1).
    warnings: tuple[str, ...] = ()
    #: A retest: the part's previous result (site, soft bin), which no longer counts.
    previous: tuple[str, int] | None = None


class _RunningStats:
    """Count, min, mean and max of a stream of numbers, in O(1) memory."""

    __slots__ = ("count", "total", "low", "high")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.low = self.high = 0.0

    def add(self, value: float) -> None:
        if self.count == 0:
            self.low = self.high = value
        else:
            self.low = min(self.low, value)
            self.high = max(self.high, value)
        self.count += 1
        self.total += value

    def as_dict(self) -> dict[str, Any]:
        if not self.count:
            return {"count": 0, "min": None, "mean": None, "max": None}
        return {"count": self.count, "min": self.low, "mean": self.total / self.count,
                "max": self.high}


def _bin_value(value: Any, what: str, site: str) -> int:
    if type(value) is int and 0 <= value <= 65535:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"site {site}: PRR {what} must be an integer 0..65535, "
                         f"got {value!r}")
    return value


def _record_type(record: Any) -> Any:
    """``type`` if it is a string, else ``rec_id`` (as the protocol codec reads it)."""
    if type(record) is not dict and not isinstance(record, Mapping):  # dict: no ABC check
        return None
    name = record.get("type")
    return name if type(name) is str else record.get("rec_id")


class Lot:
    """Results, yields and bins of one loaded lot.

    ``sites`` are the configured site ids in configured order; ``device_id`` is the
    tester's id (D). ``keep_last`` bounds the results kept for the web UI, and so do
    ``keep_bytes`` (their total payload size) and ``entry_bytes`` (a larger result is kept
    as its first and last record only, PIR and PRR, which is what the UI shows of it).
    ``part_index`` holds the parts seen (default: a :class:`PartIndex`, which keeps memory
    flat over any number of parts); :meth:`close` frees it once no result can come.
    """

    def __init__(self, job: Any, sites: Sequence[str], device_id: str,
                 keep_last: int = 1000, keep_bytes: int = 16 << 20,
                 entry_bytes: int = 256 << 10, part_index: PartIndex | None = None) -> None:
        if isinstance(sites, str) or not sites:
            raise ValueError("Lot needs a non-empty list of site ids")
        if keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {keep_last}")
        self.job = job
        self.sites: tuple[str, ...] = tuple(str(s) for s in sites)
        self.device_id = device_id
        self.parts_tested = 0
        self._site_set = frozenset(self.sites)
        self._entries: dict[int, Any] = {}
        for entry in job.bins:
            self._entries.setdefault(entry.sbin, entry)
        self._groups: tuple[str, ...] = tuple(dict.fromkeys(e.group for e in job.bins))
        self._group_sbins: dict[str, tuple[int, ...]] = {
            g: tuple(sb for sb, e in self._entries.items() if e.group == g)
            for g in self._groups
        }
        self._hbin_override: dict[int, int] = {}
        # part id -> (site index, head, soft bin, hard bin, part flag, retest count)
        self._parts = PartIndex() if part_index is None else part_index
        self._site_index = {s: i for i, s in enumerate(self.sites)}
        self._closed = False
        self._tally = Tally()
        self._last: deque[list[dict]] = deque()
        self._last_sizes: deque[int] = deque()
        self._last_bytes = 0
        self._keep_last = keep_last
        self._keep_bytes = keep_bytes
        self._entry_bytes = entry_bytes
        self._test_time = _RunningStats()
        self._cycle = _RunningStats()
        #: more for the summary, from the cell's collaborators (alarms, production figures)
        self.extra: dict[str, Any] = {}

    # -- counting -----------------------------------------------------------------------

    @property
    def parts_distinct(self) -> int:
        """Number of distinct parts (a retested part counts once)."""
        return len(self._parts)

    def close(self) -> None:
        """Free the part index (its memory and temporary file) once the lot takes no more
        results; counts, yields and summaries stay readable, add_result raises."""
        self._closed = True
        self._parts.close()

    @property
    def tally(self) -> Tally:
        """The final-part counts (read only; used for the STDF footer)."""
        return self._tally

    def add_result(self, site: str, records: Sequence[dict], size: int = 0) -> PartOutcome:
        """Count one site result (PIR … PRR) in O(1); a known part id is a retest.

        Raises ValueError naming the problem (unconfigured site, not exactly one PRR,
        bad SOFT_BIN/HARD_BIN); nothing is counted then. Other PRR fields never raise:
        HEAD_NUM, PART_FLG and TEST_T are taken as the datalog writes them (clamped to
        their STDF range, Infinity to its end; NaN or a non-number as missing).
        """
        if self._closed:
            raise RuntimeError(f"lot {self.job.lot_number} is closed (unloaded); "
                               f"a result of site {site} cannot be counted")
        site = str(site)
        if site not in self._site_set:
            raise ValueError(f"site {site!r} is not configured")
        if type(records) is not tuple and type(records) is not list and (
                isinstance(records, (str, bytes, Mapping))
                or not isinstance(records, Sequence)):
            raise ValueError(f"site {site}: a result must be a list of records")
        prrs = [r for r in records if _record_type(r) == "PRR"]
        if len(prrs) != 1:
            raise ValueError(f"site {site}: a result must hold exactly one PRR, "
                             f"found {len(prrs)}")
        prr = prrs[0]
        soft = _bin_value(prr.get("SOFT_BIN"), "SOFT_BIN", site)
        hard = prr.get("HARD_BIN")
        if hard is None:
            hard = self._hbin_of(soft, 0)
        hard = _bin_value(hard, "HARD_BIN", site)
        head = writable_int("U1", prr.get("HEAD_NUM")) or 0
        flag = writable_int("B1", prr.get("PART_FLG"))
        test_t = writable_int("U4", prr.get("TEST_T"))

        self.parts_tested += 1
        warnings: tuple[str, ...] = ()
        part_id = self._part_id(prr)
        if part_id is None:
            part_id = f"site{site}-{self.parts_tested}"
            warnings = (f"site {site}: PRR has neither PART_ID nor coordinates; "
                        f"using part id {part_id}",)

        old = self._parts.get(part_id)
        retests = 0
        if old is not None:
            self._tally.add(self.sites[old[0]], old[2], old[3], old[5], -1)
            retests = old[5] + 1
        self._parts.put(part_id, (self._site_index[site], head, soft, hard, flag or 0, retests))
        self._tally.add(site, soft, hard, retests, 1)
        if self._keep_last:
            self._remember(records, size)
        if test_t is not None:
            self._test_time.add(float(test_t))

        if flag is None or flag & 0x10:  # no valid pass/fail flag: judge by the grade
            passed = is_good_bin(soft)
        else:
            passed = not flag & 0x08
        return PartOutcome(
            site=site, part_id=part_id, soft_bin=soft, hard_bin=hard, passed=passed,
            retest=old is not None, unknown_soft_bin=soft not in self._entries,
            test_time_ms=test_t, warnings=warnings,
            previous=None if old is None else (self.sites[old[0]], old[2]))

    @staticmethod
    def _part_id(prr: Mapping[str, Any]) -> str | None:
        pid = prr.get("PART_ID")
        if pid is not None and pid != "":
            return str(pid)
        x, y = prr.get("X_COORD"), prr.get("Y_COORD")
        if (isinstance(x, int) and isinstance(y, int)
                and x != _MISSING_COORD and y != _MISSING_COORD):
            return f"{x}x{y}"
        return None

    def note_cycle(self, seconds: float) -> None:
        """Record one handler cycle (index) time for the summary statistics."""
        self._cycle.add(float(seconds))

    # -- bin table ------------------------------------------------------------------------

    def _hbin_of(self, sbin: int, default: int | None = None) -> int | None:
        if sbin in self._hbin_override:
            return self._hbin_override[sbin]
        entry = self._entries.get(sbin)
        return entry.hbin if entry is not None else default

    def set_hbin(self, sbin: int, hbin: int) -> None:
        """UI ``binMap``: map a soft bin of the table to another hard bin.

        Raises KeyError for a soft bin not in the bin table, ValueError for a hard bin
        that is not an integer 0..65535.
        """
        if sbin not in self._entries:
            raise KeyError(f"soft bin {sbin!r} is not in the job's bin table")
        if isinstance(hbin, bool) or not isinstance(hbin, int) or not 0 <= hbin <= 65535:
            raise ValueError(f"hard bin must be an integer 0..65535, got {hbin!r}")
        self._hbin_override[sbin] = hbin

    def bin_rows(self) -> list[BinRow]:
        """The bin table in order, hard bins after binMap overrides."""
        # every sb here is in the table, so it has a hard bin
        return [BinRow(sb, cast(int, self._hbin_of(sb)), e.name, e.group)
                for sb, e in self._entries.items()]

    # -- web UI payloads ------------------------------------------------------------------

    def yields(self) -> list[dict]:
        """Protocol 7.2: per site with results and total "-1", one row per group + sum."""
        out: list[dict] = []
        counts = self._tally.sbin
        rows: list[tuple[str, dict[str, int], int]] = []
        total_groups = dict.fromkeys(self._groups, 0)
        for site in self.sites:
            n = self._tally.parts.get(site, 0)
            if not n:
                continue
            groups = {g: sum(counts.get((site, sb), 0) for sb in sbs)
                      for g, sbs in self._group_sbins.items()}
            for g, c in groups.items():
                total_groups[g] += c
            rows.append((site, groups, n))
        if rows:
            rows.append(("-1", total_groups, sum(r[2] for r in rows)))
        for site, groups, n in rows:
            for g in self._groups:
                out.append({"name": g, "siteid": site, "value": groups[g] / n * 100.0,
                            "count": groups[g]})
            out.append({"name": "sum", "siteid": site, "value": 100.0, "count": n})
        return out

    def bintable(self) -> list[dict]:
        """Protocol 7.3: one row per bin-table entry, counts for every configured site."""
        counts = self._tally.sbin
        return [
            {"name": e.name, "sBin": sb, "hBin": self._hbin_of(sb), "type": e.group,
             "siteCounts": [{"siteId": s, "count": counts.get((s, sb), 0)}
                            for s in self.sites]}
            for sb, e in self._entries.items()
        ]

    def _remember(self, records: Sequence[dict], size: int) -> None:
        """Keep a result for the UI: at most keep_last of them and keep_bytes in all
        (``size`` is the result's payload length, as received)."""
        if size > self._entry_bytes and len(records) > 2:
            records = (records[0], records[-1])
            size = self._entry_bytes
        last, sizes = self._last, self._last_sizes
        last.append(list(records))
        sizes.append(size)
        self._last_bytes += size
        while len(last) > self._keep_last or (self._last_bytes > self._keep_bytes
                                              and len(last) > 1):
            last.popleft()
            self._last_bytes -= sizes.popleft()

    def last_results(self) -> list[list[dict]]:
        """The last <= keep_last site results (their records), oldest first."""
        return list(self._last)

    def mir(self, setup_t: int, start_t: int, exec_ver: str) -> dict:
        """The MIR as a dict (7.4), which is also the web UI ``lotdata`` payload (11.3)."""
        return mir_record(self.job, self.device_id, setup_t, start_t, exec_ver)

    def summary_records(self, tsrs: Sequence[Mapping[str, Any]] = ()) -> list[dict]:
        """SBR, HBR, TSR (+ HEAD 255 totals) and PCR dicts for the STDF footer (7.4)."""
        return footer_records(self.sites, self._tally, self.bin_rows(), tsrs)

    # -- summary --------------------------------------------------------------------------

    def _site_row(self, site: str, sites: Sequence[str]) -> dict[str, Any]:
        parts = sum(self._tally.parts.get(s, 0) for s in sites)
        good = aborted = 0
        for (s, sb), n in self._tally.sbin.items():
            if s in sites:
                good += n if is_good_bin(sb) else 0
                aborted += n if is_abort_bin(sb) else 0
        return {"site": site, "parts": parts, "good": good, "fail": parts - good,
                "aborted": aborted,
                "retests": sum(self._tally.retests.get(s, 0) for s in sites),
                "yield_percent": good / parts * 100.0 if parts else 0.0}

    def summary(self) -> dict:
        """A JSON-able summary of the lot: counts, yields, bins, test and index times."""
        total = self.parts_distinct
        sites = self._tally.sites(self.sites)
        bins = []
        seen = {sb for (_, sb) in self._tally.sbin}
        for sb in list(self._entries) + sorted(seen - set(self._entries)):
            e = self._entries.get(sb)
            counts = {s: self._tally.sbin.get((s, sb), 0) for s in sites}
            n = sum(counts.values())
            bins.append({"sbin": sb, "hbin": self._hbin_of(sb),
                         "name": e.name if e else "", "group": e.group if e else "",
                         "counts": counts, "total": n,
                         "percent": n / total * 100.0 if total else 0.0})
        hard: dict[int, int] = {}
        for (_, hb), n in self._tally.hbin.items():
            hard[hb] = hard.get(hb, 0) + n
        hnames: dict[int, str] = {}
        for row in self.bin_rows():
            hnames.setdefault(row.hbin, row.group)
        hard_bins = [{"hbin": hb, "name": hnames.get(hb, ""), "total": n,
                      "percent": n / total * 100.0 if total else 0.0}
                     for hb, n in sorted(hard.items())]
        return {
            "lot": self.job.lot_number,
            "device": self.device_id,
            "part_type": getattr(self.job, "part_typ", ""),
            "sites": list(self.sites),
            "parts_tested": self.parts_tested,
            "parts_distinct": total,
            "retests": sum(self._tally.retests.values()),
            "per_site": [self._site_row(s, (s,)) for s in sites],
            "total": self._site_row("-1", sites),
            "yields": self.yields(),
            "bins": bins,
            "hard_bins": hard_bins,
            "test_time_ms": self._test_time.as_dict(),
            "cycle_time_s": self._cycle.as_dict(),  # next to its response (index: production)
        } | self.extra
