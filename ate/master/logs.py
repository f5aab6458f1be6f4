"""Log collection for the master (protocol.md section 10).

- :class:`LogBuffer` is a twisted.logger observer keeping the last entries in the shape
  of the web UI's ``logs`` message (10.4), with the master's log level, a per-tick
  "new since last push" queue and the ``getlogfile`` rendering (10.3).
- :class:`LogFileWriter` is an observer writing the master's log file (10.1).
- :func:`relay_remote_line` re-logs a Control app or TestApp log line (10.2).

Our own namespaces (``ate`` and ``ate.*``) show as source ``master``.  An event may name
its source explicitly with the key ``ate_source`` (used for relayed remote lines).
Observers never raise: an observer that raises is removed by twisted.logger's publisher.

Memory is bounded whatever is logged: an entry's text (and a log file line) is cut at
``MAX_ENTRY_CHARS`` characters, with a marker saying how much was cut, and the buffer
keeps at most ``maxlen`` entries *and* at most ``max_bytes`` bytes (the memory of the
entries' strings plus a fixed per-entry overhead), dropping the oldest first.
"""

from __future__ import annotations

import os
import re
import reprlib
import stat
import sys
import time
from collections import deque
from datetime import datetime
from typing import Any, BinaryIO, Callable, cast

from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from zope.interface import implementer

__all__ = [
    "LEVELS",
    "LogBuffer",
    "LogFileWriter",
    "relay_remote_line",
    "logfile_name",
]

LEVELS: dict[int, str] = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR"}

_LOGLEVEL_NUMBER: dict[LogLevel, int] = {
    LogLevel.debug: 10,
    LogLevel.info: 20,
    LogLevel.warn: 30,
    LogLevel.error: 40,
    LogLevel.critical: 40,
}

# Level names found in remote lines (10.2); Measure (15) has no twisted level and is
# shown as DEBUG, which the master's level filter treats like the reference would at
# the usual levels.
_REMOTE_LEVELS: dict[str, LogLevel] = {
    "DEBUG": LogLevel.debug,
    "MEASURE": LogLevel.debug,
    "INFO": LogLevel.info,
    "WARNING": LogLevel.warn,
    "WARN": LogLevel.warn,
    "ERROR": LogLevel.error,
    "CRITICAL": LogLevel.critical,
    "FATAL": LogLevel.critical,
}

MASTER_SOURCE = "master"
#: The longest text of one entry or log file line; longer ones are cut with a marker.
MAX_ENTRY_CHARS = 16 * 1024
#: The most memory (bytes) the in-memory entries may take together.
LOG_BUFFER_BYTES = 8 * 1024 * 1024
#: Memory of one entry besides its description and source: the dict, the date, the type.
_ENTRY_OVERHEAD = 400
# one getlogfile reply; larger ones kept ~40 MB of heap (bench/fuzz.py)
LOGFILE_CAP = 2 * 1024 * 1024
LOGFILE_MAX_BYTES = 100 * 1024 * 1024
LOGFILE_MAX_AGE_DAYS = 14.0
_LOGFILE_RE = re.compile(r"[0-9]{8}-[0-9]{6}_master\.log", re.ASCII)
_LOGFILE_OR_BACKUP_RE = re.compile(r"[0-9]{8}-[0-9]{6}_master\.log(\.1)?", re.ASCII)
_REFERENCE_DATE = "%d/%m/%Y %I:%M:%S %p"

_log = Logger(namespace="ate.master.logs")


# -- event helpers ---------------------------------------------------------------------


def _check_level(level: Any) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS:
        raise ValueError(f"log level must be one of 10, 20, 30, 40, got {level!r}")
    return level


def event_level(event: dict) -> int:
    """The numeric level (10/20/30/40) of a twisted.logger event; info if missing."""
    level: Any = event.get("log_level")  # any value: an unknown one gives 20
    return _LOGLEVEL_NUMBER.get(level, 20)


def event_source(event: dict) -> str:
    """``ate_source`` if given, ``master`` for ``ate``/``ate.*``, else the namespace."""
    source = event.get("ate_source")
    if source is not None:
        return str(source)
    namespace = event.get("log_namespace")
    if not namespace:
        return MASTER_SOURCE
    namespace = str(namespace)
    if namespace == "ate" or namespace.startswith("ate."):
        return MASTER_SOURCE
    return namespace


def event_description(event: dict) -> str:
    """The formatted message, plus ``[Type: message]`` of an attached failure, cut at
    ``MAX_ENTRY_CHARS`` (see :func:`clip_text`)."""
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            summary = clip_text(f"{failure.type.__name__}: {failure.getErrorMessage()}", 2048)
        except Exception:
            summary = "unprintable failure"
        text = f"{text} [{summary}]" if text else summary
    return clip_text(text)


def clip_text(text: str, limit: int = MAX_ENTRY_CHARS) -> str:
    """``text`` if it has at most ``limit`` characters, else its start followed by
    ``" [... N characters cut]"``, the whole at most ``limit`` characters."""
    n = len(text)
    if n <= limit:
        return text
    # the marker names how many characters were left out; with n in it, it is at least
    # as long as the final one, so the result stays within the limit
    keep = max(0, limit - len(f" [... {n} characters cut]"))
    return f"{text[:keep]} [... {n - keep} characters cut]"


def entry_bytes(entry: dict) -> int:
    """The memory of one 10.4 entry as the buffer counts it."""
    return (sys.getsizeof(entry.get("description", "")) + sys.getsizeof(entry.get("source", ""))
            + _ENTRY_OVERHEAD)


def _event_time(event: dict, clock: Any) -> float:
    t = event.get("log_time")
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return float(t)
    return _now(clock)


def _now(clock: Any) -> float:
    return float(clock.seconds()) if clock is not None else time.time()


def iso_date(t: float) -> str:
    """Local time, ISO 8601 without zone, whole seconds: ``2026-11-24T18:29:58``."""
    return datetime.fromtimestamp(t).isoformat(timespec="seconds")


def logfile_name(t: float) -> str:
    """``<YYYYmmdd-HHMMSS>_master.log`` for local time ``t``."""
    return datetime.fromtimestamp(t).strftime("%Y%m%d-%H%M%S") + "_master.log"


def render_entry(entry: dict) -> str:
    """One ``source|date|LEVEL|description`` line (with newline) of a 10.4 entry."""
    return f"{entry['source']}|{entry['date']}|{entry['type']}|{entry['description']}\n"


# -- in-memory buffer ------------------------------------------------------------------


class _Ring:
    """Entries, oldest first, bounded by count and by :func:`entry_bytes`."""

    __slots__ = ("entries", "bytes", "maxlen", "max_bytes")

    def __init__(self, maxlen: int, max_bytes: int) -> None:
        self.entries: deque[tuple[dict, int]] = deque()
        self.bytes = 0
        self.maxlen = maxlen
        self.max_bytes = max_bytes

    def append(self, entry: dict, size: int) -> None:
        entries = self.entries
        entries.append((entry, size))
        self.bytes += size
        while len(entries) > self.maxlen or (self.bytes > self.max_bytes and len(entries) > 1):
            self.bytes -= entries.popleft()[1]

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Any:
        return (e for e, _ in self.entries)

    def __reversed__(self) -> Any:
        return (e for e, _ in reversed(self.entries))


@implementer(ILogObserver)
class LogBuffer:
    """The last ``maxlen`` log entries in the 10.4 shape, filtered by the master's level.

    Entries are ``{"source", "date", "type", "description"}`` dicts.  Subscribers are
    called with each accepted entry; their exceptions are swallowed (an observer must
    not raise, and logging from inside an observer would recurse).  The entries kept
    (and those waiting for the next push) take at most ``max_bytes`` of memory
    (:func:`entry_bytes`); each description is at most ``MAX_ENTRY_CHARS`` characters.
    """

    def __init__(
        self,
        *,
        maxlen: int = 4000,
        level: int = 30,
        log_directory: str | None = None,
        clock: Any = None,
        logfile_cap: int = LOGFILE_CAP,
        max_bytes: int = LOG_BUFFER_BYTES,
    ) -> None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ValueError(f"maxlen must be a positive integer, got {maxlen!r}")
        if isinstance(logfile_cap, bool) or not isinstance(logfile_cap, int) or logfile_cap < 1:
            raise ValueError(f"logfile_cap must be a positive integer, got {logfile_cap!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self._level = _check_level(level)
        self._entries = _Ring(maxlen, max_bytes)
        self._new = _Ring(maxlen, max_bytes)
        self._subscribers: list[Callable[[dict], Any]] = []
        self._clock = clock
        self.log_directory = log_directory
        self.logfile_cap = logfile_cap
        #: The master's current log file; when None it is looked up in log_directory.
        self.logfile_path: str | None = None
        #: Events that could not be turned into an entry, or subscriber errors.
        self.errors = 0

    @property
    def bytes(self) -> int:
        """The memory the kept entries take, as counted against ``max_bytes``."""
        return self._entries.bytes

    # -- level ---------------------------------------------------------------------------

    @property
    def level(self) -> int:
        return self._level

    @level.setter
    def level(self, level: int) -> None:
        self.set_level(level)

    def set_level(self, level: int) -> None:
        """Set the level (10, 20, 30 or 40); ValueError naming the bad level otherwise."""
        self._level = _check_level(level)

    # -- observer ------------------------------------------------------------------------

    def __call__(self, event: dict) -> None:
        try:
            number = event_level(event)
            if number < self._level:
                return
            entry = {
                "source": event_source(event),
                "date": iso_date(_event_time(event, self._clock)),
                "type": LEVELS[number],
                "description": event_description(event),
            }
            size = entry_bytes(entry)
        except Exception:
            self.errors += 1
            return
        self._entries.append(entry, size)
        self._new.append(entry, size)
        for callback in tuple(self._subscribers):
            try:
                callback(entry)
            except Exception:
                self.errors += 1

    # -- reading -------------------------------------------------------------------------

    def entries(self, newest_first: bool = True) -> list[dict]:
        """Copies of the kept entries (``getlogs``: newest first)."""
        source = reversed(self._entries) if newest_first else iter(self._entries)
        return [dict(e) for e in source]

    def drain_new(self) -> list[dict]:
        """Entries added since the last drain, newest first (the feed's per-tick push)."""
        new = [dict(e) for e in reversed(self._new)]
        self._new.clear()
        return new

    def subscribe(self, callback: Callable[[dict], Any]) -> None:
        """Call ``callback(entry)`` for every accepted entry from now on."""
        if callback not in self._subscribers:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[dict], Any]) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored."""
        try:
            self._subscribers.remove(callback)
        except ValueError:
            pass

    # -- getlogfile ----------------------------------------------------------------------

    def current_logfile(self) -> str | None:
        """``logfile_path`` if set, else the newest master log file in log_directory.

        Only regular files directly in the directory count: a symbolic link, a directory
        or anything else with a log file's name is skipped and logged.
        """
        if self.logfile_path is not None:
            return self.logfile_path
        if not self.log_directory:
            return None
        try:
            names = sorted((n for n in os.listdir(self.log_directory)
                            if _LOGFILE_RE.fullmatch(n)), reverse=True)
        except OSError:
            return None
        for name in names:
            path = os.path.join(self.log_directory, name)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode):
                return path
            _log.warn("log directory {directory}: {name} is not a regular file; not served",
                      directory=self.log_directory, name=name)
        return None

    def logfile(self) -> dict:
        """The ``logfile`` payload (10.3): ``{"filename", "content"}``.

        The content is the text rendering of the in-memory entries (oldest first)
        followed by the tail of the current log file, if any, the whole capped at
        ``logfile_cap`` bytes of UTF-8 (whole lines; the oldest lines go first).
        """
        cap = self.logfile_cap
        memory = _tail_lines("".join(render_entry(e) for e in self._entries), cap)
        path = self.current_logfile()
        filename = os.path.basename(path) if path else logfile_name(_now(self._clock))
        content = memory
        if path:
            header = f"=== log file {filename} ===\n"
            budget = cap - len(memory.encode("utf-8", "replace")) - len(header.encode("utf-8"))
            file_text = _read_tail(path, budget) if budget > 0 else None
            if file_text:
                content = memory + header + file_text
        return {"filename": filename, "content": content}


# a bounded repr of a payload for a log line (a result can be megabytes)
_REPR = reprlib.Repr()
_REPR.maxlist = _REPR.maxtuple = 8
_REPR.maxdict = 24
_REPR.maxstring = _REPR.maxother = 120
_REPR.maxlevel = 4


def excerpt(value: object) -> str:
    """A short repr of ``value`` for a log line, built without the whole repr."""
    return _REPR.repr(value)


def _tail_lines(text: str, cap: int) -> str:
    """The longest suffix of ``text`` starting at a line start and within ``cap`` bytes.
    What cannot be UTF-8 (a lone surrogate that came in a remote log line) becomes ``?``."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= cap:
        return data.decode("utf-8")
    tail = data[len(data) - cap:]
    newline = tail.find(b"\n")
    tail = tail[newline + 1:] if newline >= 0 else b""
    return tail.decode("utf-8", errors="replace")


def _read_tail(path: str, cap: int) -> str | None:
    """The last ``cap`` bytes of a regular file, cut to whole lines; None if unreadable
    or not a regular file (a symbolic link is not followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        _log.warn("log file {path} not served: {error}", path=path, error=e.strerror or e)
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                _log.warn("log file {path} not served: not a regular file", path=path)
                return None
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - cap)
            f.seek(start)
            data = f.read(cap)
    except OSError:
        return None
    if start > 0:
        newline = data.find(b"\n")
        data = data[newline + 1:] if newline >= 0 else b""
    return data.decode("utf-8", errors="replace")


# -- remote lines ----------------------------------------------------------------------


def relay_remote_line(log: Logger, app: str, site: str, line: str) -> None:
    """Re-log a remote ``name|date|LEVEL|message`` line (10.2).

    The message is logged under the remote name (event key ``ate_source``) at the
    remote level, with the remote date kept in the text: ``[<date>] <message>``.  A
    line with fewer than four fields, or with a level name we do not know, is logged
    verbatim at warning level with source ``"<app> <site>"``.
    """
    if not isinstance(line, str):
        line = repr(line)
    line = line.rstrip("\r\n")
    fallback = f"{app} {site}"
    fields = line.split("|", 3)
    level = _REMOTE_LEVELS.get(fields[2].strip().upper()) if len(fields) == 4 else None
    if level is None:
        log.emit(LogLevel.warn, "{ate_text}", ate_text=line, ate_source=fallback,
                 ate_app=app, ate_site=site)
        return
    name, date, _, message = (f.strip() for f in fields)
    text = f"[{date}] {message}" if date else message
    log.emit(level, "{ate_text}", ate_text=text, ate_source=name or fallback,
             ate_app=app, ate_site=site)


# -- log file --------------------------------------------------------------------------


@implementer(ILogObserver)
class LogFileWriter:
    """Write ``name|date|LEVEL|message`` lines to ``<log_directory>/<start>_master.log``.

    The line format is the reference's (10.1): name padded to 9, date as
    ``%d/%m/%Y %I:%M:%S %p`` followed by a space, level padded to 7 followed by a
    space.  At ``max_bytes`` the file is renamed to ``<name>.1`` (replacing an older
    backup) and a new file with the same name is started.  At construction the
    directory is created and master log files (and backups) older than
    ``max_age_days`` are deleted.  Each event is one small append, flushed at once.
    Construction raises OSError if the file cannot be opened; writing never raises
    (failures are counted in ``errors`` and the file is reopened on the next event).
    """

    log = Logger()

    def __init__(
        self,
        log_directory: str = "log",
        *,
        level: int = 10,
        max_bytes: int = LOGFILE_MAX_BYTES,
        max_age_days: float = LOGFILE_MAX_AGE_DAYS,
        clock: Any = None,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self._level = _check_level(level)
        self._clock = clock
        self.max_bytes = max_bytes
        self.directory = log_directory
        self.errors = 0
        now = _now(clock)
        os.makedirs(log_directory, exist_ok=True)
        self.deleted = self._delete_old(now - max_age_days * 86400.0)
        self.path = os.path.join(log_directory, logfile_name(now))
        self._file: BinaryIO | None = None
        self._size = 0
        self._open()

    @property
    def level(self) -> int:
        return self._level

    def set_level(self, level: int) -> None:
        """Set the level (10, 20, 30 or 40); ValueError naming the bad level otherwise."""
        self._level = _check_level(level)

    def _delete_old(self, cutoff: float) -> list[str]:
        deleted = []
        for name in sorted(os.listdir(self.directory)):
            if not _LOGFILE_OR_BACKUP_RE.fullmatch(name):
                continue
            path = os.path.join(self.directory, name)
            try:
                if os.path.getmtime(path) < cutoff:
                    os.unlink(path)
                    deleted.append(name)
            except OSError as e:
                self.log.warn("cannot delete old log file {path}: {error}", path=path, error=e)
        return deleted

    def _open(self) -> None:
        self._file = f = open(self.path, "ab")
        self._size = f.tell()

    def _rotate(self) -> None:
        self.close()
        os.replace(self.path, self.path + ".1")
        self._open()

    def format(self, event: dict) -> str:
        """The file line (with newline) for an event."""
        number = event_level(event)
        date = datetime.fromtimestamp(_event_time(event, self._clock)).strftime(_REFERENCE_DATE)
        return f"{event_source(event):<9}|{date} |{LEVELS[number]:<7} |{event_description(event)}\n"

    def __call__(self, event: dict) -> None:
        try:
            if event_level(event) < self._level:
                return
            data = self.format(event).encode("utf-8", errors="replace")
            if self._file is None:
                self._open()
            if self._size > 0 and self._size + len(data) > self.max_bytes:
                self._rotate()
            f = cast(BinaryIO, self._file)  # set by _open or _rotate above
            f.write(data)
            f.flush()
            self._size += len(data)
        except Exception:
            self.errors += 1
            self.close()

    def close(self) -> None:
        """Close the file (a later event reopens it)."""
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                self.errors += 1


def split_log_line(line: Any) -> tuple[str, str] | None:
    """``(LEVEL, message)`` of a site's log line ``name|date|LEVEL|message`` (the message
    cut to 500 characters), or None when it is not one."""
    fields = line.split("|", 3) if isinstance(line, str) else ()
    if len(fields) != 4:
        return None
    return fields[2].strip().upper(), fields[3].strip()[:500]
