"""The STDF datalog of one lot: durable appends per handler cycle, a footer at the end.

One :class:`Datalog` per lot (protocol 7.4). The file is created exclusively when the
load is accepted, the header (FAR MIR SDR) is written with the first parts, every
completed handler cycle is appended as one ``write`` plus ``flush``, and ``fsync`` runs
at a configured cadence in a thread. :meth:`Datalog.finalise` writes the footer
(SBR HBR TSR PCR MRR) and closes the file, plus a JSON and a text summary beside it.

Whatever arrives, every record is written in a form STDF readers accept: the encoder is
total (``ate.stdf.records``, with a :class:`Fixes` per lot). What had to be changed
(non-ASCII or over-long text, integers out of range, Infinity/NaN in integer fields …)
is counted per lot and kind, logged once per kind with where it happened first, and
listed in ``problems`` and in the summary files (``datalog_fixes``).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.logger import Logger

import ate
from ate.stdf.records import ENCODERS, Fixes, RecordError, encode, record_name, sanitise
from ate.stdf.summary import mir_record, summary_text

__all__ = ["Datalog", "PART_RECORD_TYPES"]

#: Record types accepted in a TestApp result (protocol 7.4).
PART_RECORD_TYPES = ("PIR", "PTR", "MPR", "FTR", "PRR", "DTR")

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def _safe(text: str) -> str:
    """A file-name-safe rendering of a lot number or device id."""
    return _UNSAFE.sub("_", str(text)) or "_"


def _part_name(records: Sequence[Any]) -> str:
    for rec in records:
        if isinstance(rec, Mapping) and record_name(rec) == "PRR":
            pid = rec.get("PART_ID")
            if pid not in (None, ""):
                text = str(pid)
                return text if len(text) <= 40 else repr(text[:37] + "...")
            x, y = rec.get("X_COORD"), rec.get("Y_COORD")
            if x is not None and y is not None:
                return f"{x}x{y}"
    return "?"


class Datalog:
    """The STDF V4 file of one lot. Create it with :meth:`create`."""

    log = Logger()

    def __init__(self, path: str, fileobj: Any, job: Any, device_id: str,
                 sites: Sequence[str], setup_t: float, *, clock: Any,
                 fsync_interval: float = 0.2,
                 run_in_thread: Callable[..., Any] | None = None,
                 endian: str = "<") -> None:
        self.path = path
        self.base = path[:-5] if path.endswith(".stdf") else path
        self.job = job
        self.device_id = device_id
        self.sites = tuple(str(s) for s in sites)
        self.setup_t = setup_t
        self.finalised = False
        self.problems: list[str] = []
        #: What was changed to make this lot's records writable, by kind.
        self.fixes = Fixes()
        self._fixes_logged: set[str] = set()
        self._file = fileobj
        self._clock = clock
        self._fsync_interval = max(0.0, float(fsync_interval))
        self._run_in_thread = run_in_thread
        self._endian = endian
        enc = ENCODERS[endian]
        self._encoders = {name: enc[name] for name in PART_RECORD_TYPES}
        self._header_written = False
        self._tsrs: list[dict] = []
        self._timer: Any = None
        self._dirty = False
        self._inflight = False
        self._closed = False
        self._sync_fd: int | None = None
        if run_in_thread is not None:
            # A private descriptor for the thread: it stays valid until the last fsync
            # has come back, even if the file itself is closed meanwhile.
            self._sync_fd = os.dup(fileobj.fileno())

    @classmethod
    def create(cls, directory: str, job: Any, device_id: str, sites: Sequence[str],
               setup_t: float, *, clock: Any, fsync_interval: float = 0.2,
               run_in_thread: Callable[..., Any] | None = None,
               endian: str = "<") -> "Datalog":
        """Create ``<dir>/<lot>_<device>_<YYYYMMDD-HHMMSS>.stdf`` (local setup time).

        An existing name is never overwritten: ``-1``, ``-2``, … is appended. Raises
        OSError if the directory cannot be written (or the file set up, which then is
        closed and removed), ValueError for a site id that is not a decimal integer 0..255
        or for more than 255 sites (the SDR's SITE_CNT is U1).
        """
        if len(sites) > 255:
            raise ValueError(f"{len(sites)} sites, an STDF head holds at most 255")
        for site in sites:
            if not str(site).isdigit() or int(site) > 255:
                raise ValueError(f"site id {site!r} is not a decimal integer 0..255")
        if endian not in ("<", ">"):
            raise ValueError(f"endian must be '<' or '>', got {endian!r}")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(setup_t))
        stem = os.path.join(directory, f"{_safe(job.lot_number)}_{_safe(device_id)}_{stamp}")
        n = 0
        while True:
            base = stem if n == 0 else f"{stem}-{n}"
            path = base + ".stdf"
            n += 1
            if (os.path.exists(base + ".summary.json")
                    or os.path.exists(base + ".summary.txt")):
                continue
            try:
                fileobj = open(path, "xb")
            except FileExistsError:
                continue
            break
        try:
            return cls(path, fileobj, job, device_id, sites, setup_t, clock=clock,
                       fsync_interval=fsync_interval, run_in_thread=run_in_thread,
                       endian=endian)
        except BaseException:
            # e.g. no descriptor left for the fsync thread's copy: no datalog, so neither
            # an open file nor an empty one for the next start's recovery to complete
            fileobj.close()
            try:
                os.unlink(path)
            except OSError:
                pass
            raise

    # -- writing --------------------------------------------------------------------------

    def _header(self, start_t: float) -> bytes:
        mir = mir_record(self.job, self.device_id, self.setup_t, start_t, ate.__version__)
        mir["type"] = "MIR"
        sdr = {"type": "SDR", "HEAD_NUM": 0, "SITE_GRP": 0, "SITE_CNT": len(self.sites),
               "SITE_NUM": [int(s) for s in self.sites]}
        self._header_written = True
        e, fixes = self._endian, self.fixes
        data = (encode({"type": "FAR", "CPU_TYPE": 2 if e == "<" else 1, "STDF_VER": 4}, e)
                + encode(mir, e, fixes) + encode(sdr, e, fixes))
        self._report_fixes("the header")
        return data

    def _report_fixes(self, where: str) -> None:
        """Log each kind of fix the first time it happens in this lot (not per part)."""
        if len(self.fixes.counts) == len(self._fixes_logged):
            return
        for kind, first in self.fixes.first.items():
            if kind in self._fixes_logged:
                continue
            self._fixes_logged.add(kind)
            message = (f"datalog {self.path}: {kind}, first in {where} ({first}); each "
                       f"such change is counted in the lot summary")
            self.problems.append(message)
            self.log.warn("{message}", message=message)

    def write_parts(self, parts: Sequence[tuple[str, Sequence[dict]]],
                    start_t: float) -> list[str]:
        """Append one completed handler cycle: ``[(site, records), ...]``.

        Writes the header first if needed (START_T = ``start_t`` of the first call). All
        records go out in one write and one flush. Field values STDF cannot hold are made
        writable and counted (:attr:`fixes`); records whose type is not accepted (or, for
        an MPR/FTR, whose body would exceed 65535 bytes) are skipped and reported. A PRR
        is always written. This never raises for bad records.
        """
        if self.finalised:
            return [f"datalog {self.path} is finalised; {len(parts)} part(s) not written"]
        problems: list[str] = []
        chunks: list[bytes] = []
        if not self._header_written:
            chunks.append(self._header(start_t))
        encoders = self._encoders
        fixes = self.fixes
        for site, records in parts:
            for index, rec in enumerate(records):
                try:
                    name = rec.get("type")
                    if type(name) is not str:
                        name = rec.get("rec_id")
                    # any value: a non-string finds nothing, an unhashable one raises
                    encoder = encoders.get(name)  # type: ignore[arg-type]
                except (AttributeError, TypeError):
                    encoder = None
                if encoder is None:
                    problems.append(
                        f"site {site}, part {_part_name(records)}: record {index} "
                        f"not written: record type {_describe_type(rec)} is not accepted "
                        f"(only {', '.join(PART_RECORD_TYPES)})")
                    continue
                try:
                    chunks.append(encoder(rec, fixes))
                except RecordError as err:
                    problems.append(f"site {site}, part {_part_name(records)}: {name} "
                                    f"record {index} not written: {err}")
                except Exception as err:  # never let one bad record stop the datalog
                    problems.append(f"site {site}, part {_part_name(records)}: {name} "
                                    f"record {index} not written: {err!r}")
            if len(fixes.counts) != len(self._fixes_logged):
                self._report_fixes(f"site {site}, part {_part_name(records)}")
        self._write(b"".join(chunks), problems)
        return problems

    def write_text(self, text: str, start_t: float) -> list[str]:
        """Append a DTR (``TEXT_DAT`` = ``text``, made writable: at most 255 bytes) at this
        point of the part stream, e.g. an alarm (protocol §15.2); the header first if
        needed. Returns the problems, like :meth:`write_parts`; never raises."""
        if self.finalised:
            return [f"datalog {self.path} is finalised; text not written: {text[:80]!r}"]
        problems: list[str] = []
        chunks: list[bytes] = []
        if not self._header_written:
            chunks.append(self._header(start_t))
        try:
            chunks.append(encode({"type": "DTR", "TEXT_DAT": text}, self._endian, self.fixes))
        except Exception as err:
            problems.append(f"DTR not written: {err!r}")
        self._write(b"".join(chunks), problems)
        return problems

    def _write(self, data: bytes, problems: list[str]) -> None:
        try:
            self._file.write(data)
            self._file.flush()
        except (OSError, ValueError) as err:
            message = f"datalog {self.path}: write failed: {err}"
            problems.append(message)
            self.problems.append(message)
            self.log.error("{message}", message=message)
            return
        self._dirty = True
        if self._fsync_interval <= 0:
            self._fsync()
        elif self._timer is None:
            self._timer = self._clock.callLater(self._fsync_interval, self._on_timer)

    def add_summary(self, site: str, tsr_records: Sequence[dict]) -> list[str]:
        """Keep a TestApp's test summary (TSRs) for the footer, made writable (counted in
        :attr:`fixes`); report records that are not TSRs."""
        problems = []
        for index, rec in enumerate(tsr_records):
            if not isinstance(rec, Mapping) or record_name(rec) != "TSR":
                problems.append(f"site {site}: summary record {index} ignored: "
                                f"record type {_describe_type(rec)} is not TSR")
                continue
            try:
                clean = sanitise(rec, self.fixes)
                encode(clean, self._endian)
            except Exception as err:  # cannot happen for a sanitised TSR; never raise
                problems.append(f"site {site}: TSR {index} ignored: {err}")
                continue
            self._tsrs.append(clean)
        self._report_fixes(f"the test summary of site {site}")
        return problems

    # -- durability ------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        if self._dirty and not self._closed:
            self._fsync()

    def _fsync(self) -> None:
        if self._run_in_thread is None:
            self._dirty = False
            try:
                os.fsync(self._file.fileno())
            except (OSError, ValueError) as err:
                self.log.error("datalog {path}: fsync failed: {err}", path=self.path, err=err)
            return
        if self._inflight:
            return  # retried when the running one comes back
        self._dirty = False
        self._inflight = True
        try:
            result = self._run_in_thread(os.fsync, self._sync_fd)
        except Exception as err:  # the thread helper itself failed
            self._inflight = False
            self.log.error("datalog {path}: fsync failed: {err}", path=self.path, err=err)
            return
        if hasattr(result, "addBoth"):
            result.addBoth(self._fsync_done)
        else:
            self._fsync_done(None)

    def _fsync_done(self, result: Any) -> None:
        self._inflight = False
        if hasattr(result, "getErrorMessage"):
            self.log.error("datalog {path}: fsync failed: {err}", path=self.path,
                           err=result.getErrorMessage())
        if self._closed:
            self._close_sync_fd()
        elif self._dirty:
            if self._fsync_interval <= 0:
                self._fsync()
            elif self._timer is None:
                self._timer = self._clock.callLater(self._fsync_interval, self._on_timer)
        return None

    def _close_sync_fd(self) -> None:
        if self._sync_fd is not None:
            try:
                os.close(self._sync_fd)
            except OSError:
                pass
            self._sync_fd = None

    # -- end of lot -------------------------------------------------------------------------

    def finalise(self, lot: Any, *, finish_t: float, reason: str = "") -> None:
        """Write the footer (SBR HBR TSR PCR MRR), flush, fsync and close; idempotent.

        Writes the header first if no part was tested (START_T = SETUP_T). ``reason`` goes
        into MRR ``EXC_DESC`` (e.g. ``aborted: …``). Also writes ``<base>.summary.json``
        and ``<base>.summary.txt``.
        """
        if self.finalised:
            return
        self.finalised = True
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        chunks: list[bytes] = []
        if not self._header_written:
            chunks.append(self._header(self.setup_t))
        try:
            records = list(lot.summary_records(self._tsrs))
        except Exception as err:  # the MRR is written whatever happened to the counts
            records = []
            message = f"datalog {self.path}: summary records not written: {err!r}"
            self.problems.append(message)
            self.log.error("{message}", message=message)
        records.append({"type": "MRR", "FINISH_T": int(finish_t), "DISP_COD": " ",
                        "USR_DESC": "", "EXC_DESC": reason or ""})
        for rec in records:
            try:
                chunks.append(encode(rec, self._endian, self.fixes))
            except Exception as err:
                message = f"datalog {self.path}: {rec.get('type')} not written: {err}"
                self.problems.append(message)
                self.log.warn("{message}", message=message)
        self._report_fixes("the footer")
        if self.fixes:
            self.log.info("datalog {path}: fields made writable in this lot: {counts}",
                          path=self.path, counts=self._fix_counts_text())
        problems: list[str] = []
        self._write_final(b"".join(chunks), problems)
        self._write_summaries(lot, finish_t, reason)

    def _fix_counts_text(self) -> str:
        return "; ".join(f"{n} x {kind}" for kind, n in self.fixes.counts.items())

    def _write_final(self, data: bytes, problems: list[str]) -> None:
        try:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        except (OSError, ValueError) as err:
            message = f"datalog {self.path}: finalising failed: {err}"
            self.problems.append(message)
            self.log.error("{message}", message=message)
        finally:
            self._closed = True
            try:
                self._file.close()
            except OSError:
                pass
            if not self._inflight:
                self._close_sync_fd()

    def _write_summaries(self, lot: Any, finish_t: float, reason: str) -> None:
        try:
            summary = lot.summary()
        except Exception as err:
            message = f"summaries of {self.path} not written: {err!r}"
            self.problems.append(message)
            self.log.error("{message}", message=message)
            return
        summary["datalog"] = os.path.basename(self.path)
        summary["finish_t"] = int(finish_t)
        summary["end_reason"] = reason or ""
        summary["datalog_fixes"] = dict(self.fixes.counts)
        for suffix, text in ((".summary.json", lambda: json.dumps(summary, indent=2)),
                             (".summary.txt", lambda: summary_text(summary))):
            target = self.base + suffix
            try:
                with open(target, "x", encoding="utf-8") as fh:
                    fh.write(text())
            except (OSError, ValueError, TypeError) as err:
                message = f"summary {target} not written: {err}"
                self.problems.append(message)
                self.log.warn("{message}", message=message)


def _describe_type(rec: Any) -> str:
    if not isinstance(rec, Mapping):
        return f"<{type(rec).__name__}>"
    return repr(record_name(rec) or rec.get("type"))
