"""The lot's per-part retest index, flat in memory however many parts the lot has.

Protocol §7.1: a part's last result counts and a known part id is a retest, so the lot
must remember every part id it has seen with what that part contributed (site, head, soft
bin, hard bin, part flag, retest count).  A plain dict of those costs about 190 bytes a
part: 190 MB over a million parts.  :class:`PartIndex` keeps only the newest ``bound``
parts in a dict; past the bound it moves the oldest, ``batch`` at a time, to a private
SQLite file (stdlib :mod:`sqlite3`, ~20–30 bytes a row on disk) and asks it for a part
id the dict does not know.  A fixed-size Bloom filter of the moved ids answers "never
seen" for a new part without a query in the common case.

The file is a cache of what the STDF datalog holds, so it is written without journal or
sync and removed at :meth:`PartIndex.close` (or, should close never be called, when the
index is garbage collected or the interpreter exits).  Everything runs synchronously on
the caller's (the reactor's) thread: a lookup is a dict get, a bit test and, for a part
moved out, one primary-key select.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import weakref
from itertools import islice
from typing import Any

from twisted.logger import Logger

__all__ = ["PartIndex", "PartValue", "DEFAULT_BOUND", "DEFAULT_BATCH", "DEFAULT_FILTER_BITS",
           "pack", "unpack"]

_log = Logger(namespace="ate.master.partindex")

#: (site index, head, soft bin, hard bin, part flag, retest count)
PartValue = tuple[int, int, int, int, int, int]

DEFAULT_BOUND = 10_000
DEFAULT_BATCH = 512
#: 2**23 bits = 1 MiB; false positives ~4 % at a million parts moved out, and a false
#: positive only costs one select.
DEFAULT_FILTER_BITS = 1 << 23

_LOW63 = (1 << 63) - 1
_SCHEMA = ("CREATE TABLE parts (id TEXT PRIMARY KEY, v INTEGER NOT NULL, "
           "r INTEGER NOT NULL) WITHOUT ROWID")
_PRAGMAS = ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE",
            "temp_store=FILE", "mmap_size=0")
_SELECT = "SELECT v, r FROM parts WHERE id = ?"
_DELETE = "DELETE FROM parts WHERE id = ?"
_INSERT = "INSERT INTO parts (id, v, r) VALUES (?, ?, ?)"


def pack(value: Any) -> int:
    """One int for a part's value: soft bits 0–15, hard 16–31, head 32–39, flag 40–47,
    site index 48–62, retests from bit 63 (a row stores bits 0–62 and the retests).

    Raises ValueError naming the field when ``value`` is not six ints in range.
    """
    try:
        site, head, soft, hard, flag, retests = value
        if (0 <= soft <= 0xFFFF and 0 <= hard <= 0xFFFF and 0 <= head <= 0xFF
                and 0 <= flag <= 0xFF and 0 <= site <= 0x7FFF and 0 <= retests <= _LOW63):
            return soft | hard << 16 | head << 32 | flag << 40 | site << 48 | retests << 63
    except (TypeError, ValueError):
        pass
    raise ValueError(_bad_value(value))


def unpack(packed: int) -> PartValue:
    """The value :func:`pack` packed."""
    return (packed >> 48 & 0x7FFF, packed >> 32 & 0xFF, packed & 0xFFFF,
            packed >> 16 & 0xFFFF, packed >> 40 & 0xFF, packed >> 63)


_FIELDS = (("site index", 0x7FFF), ("head", 0xFF), ("soft bin", 0xFFFF),
           ("hard bin", 0xFFFF), ("part flag", 0xFF), ("retest count", _LOW63))


def _bad_value(value: Any) -> str:
    names = ", ".join(name for name, _ in _FIELDS)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 6:
        return f"a part value must be 6 ints ({names}), got {value!r}"
    for (name, high), field in zip(_FIELDS, value, strict=True):
        if isinstance(field, bool) or not isinstance(field, int) or not 0 <= field <= high:
            return f"a part's {name} must be an integer 0..{high}, got {field!r}"
    return f"a part value must be 6 ints ({names}), got {value!r}"  # pragma: no cover


def _remove(db: list[sqlite3.Connection], directory: str) -> None:
    """Close the connection and remove the private directory (also run by the finalizer,
    possibly from another thread or at exit, so it never raises)."""
    for conn in db:
        try:
            conn.close()
        except sqlite3.Error:  # pragma: no cover - closing a closed connection is a no-op
            pass
    db.clear()
    shutil.rmtree(directory, ignore_errors=True)


class PartIndex:
    """Part id -> :data:`PartValue`, the newest ``bound`` in a dict, the rest on disk.

    ``bound`` None keeps every part in the dict (no file ever). ``directory`` is where the
    private temporary directory for the SQLite file is made (default: the system's).
    ``filter_bits`` (a power of two, or 0 for none) sizes the Bloom filter of moved ids.
    The file is created at the first move, so a small lot never touches the disk.
    """

    __slots__ = ("_recent", "_bound", "_batch", "_spilled", "_absent", "_closed", "_count",
                 "_bits", "_mask", "_filter_bits", "_dir", "_parent", "_db", "_conn",
                 "_finalizer", "problem", "__weakref__")

    def __init__(self, bound: int | None = DEFAULT_BOUND, *, batch: int = DEFAULT_BATCH,
                 directory: str | os.PathLike[str] | None = None,
                 filter_bits: int = DEFAULT_FILTER_BITS) -> None:
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)
                                  or bound < 1):
            raise ValueError(f"PartIndex bound must be an integer >= 1 or None, got {bound!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"PartIndex batch must be an integer >= 1, got {batch!r}")
        if (isinstance(filter_bits, bool) or not isinstance(filter_bits, int) or filter_bits < 0
                or filter_bits & (filter_bits - 1) or 0 < filter_bits < 8):
            raise ValueError("PartIndex filter_bits must be 0 or a power of two >= 8, "
                             f"got {filter_bits!r}")
        self._recent: dict[str, int] = {}
        self._bound = bound if bound is not None else -1
        self._batch = min(batch, bound) if bound is not None else batch
        self._spilled = 0            # rows in the file (never also in _recent)
        self._absent: str | None = None  # the id the last get found nowhere
        self._closed = False
        self._count = 0              # len() after close
        self._filter_bits = filter_bits
        self._bits: bytearray | None = None
        self._mask = filter_bits - 1
        self._parent = None if directory is None else os.fspath(directory)
        self._dir: str | None = None
        self._db: list[sqlite3.Connection] = []  # shared with the finalizer
        self._conn: sqlite3.Connection | None = None
        self._finalizer: weakref.finalize | None = None
        #: Why the index stopped moving parts to disk (None while it works).
        self.problem: str | None = None

    # -- the hot path ---------------------------------------------------------------------

    def get(self, part_id: str) -> PartValue | None:
        """The value stored for ``part_id``, or None for a part never put."""
        packed = self._recent.get(part_id)
        if packed is not None:  # unpack(), inline: this is every retest's path
            return (packed >> 48 & 0x7FFF, packed >> 32 & 0xFF, packed & 0xFFFF,
                    packed >> 16 & 0xFFFF, packed >> 40 & 0xFF, packed >> 63)
        if self._closed:
            raise RuntimeError(f"part index is closed (looking up part {part_id!r})")
        if self._spilled and self._maybe_spilled(part_id):
            assert self._conn is not None
            row = self._conn.execute(_SELECT, (part_id,)).fetchone()
            if row is not None:
                return unpack(row[0] | row[1] << 63)
        self._absent = part_id
        return None

    def put(self, part_id: str, value: PartValue) -> None:
        """Store ``value`` for ``part_id`` (replacing what it had).

        Raises ValueError for a part id that is not a string or a value that is not six
        ints in range (see :func:`pack`), RuntimeError once closed.
        """
        try:  # pack(), inline: this is every result's path
            site, head, soft, hard, flag, retests = value
            if not (0 <= soft <= 0xFFFF and 0 <= hard <= 0xFFFF and 0 <= head <= 0xFF
                    and 0 <= flag <= 0xFF and 0 <= site <= 0x7FFF and 0 <= retests <= _LOW63):
                raise ValueError
            packed = soft | hard << 16 | head << 32 | flag << 40 | site << 48 | retests << 63
        except (TypeError, ValueError):
            raise ValueError(f"part {part_id!r}: {_bad_value(value)}") from None
        recent = self._recent
        if part_id in recent:
            del recent[part_id]  # a retest is the newest part again
        else:
            if self._closed:
                raise RuntimeError(f"part index is closed (storing part {part_id!r})")
            if type(part_id) is not str:
                raise ValueError(f"a part id must be a string, got {part_id!r}")
            if self._spilled and part_id is not self._absent:
                self._drop_spilled(part_id)
            if len(recent) == self._bound:
                self._spill()
        self._absent = None
        recent[part_id] = packed

    def __len__(self) -> int:
        """Number of distinct part ids stored (still right after close)."""
        if self._closed:
            return self._count
        return len(self._recent) + self._spilled

    def __contains__(self, part_id: object) -> bool:
        return isinstance(part_id, str) and self.get(part_id) is not None

    # -- moving out -----------------------------------------------------------------------

    def _maybe_spilled(self, part_id: str) -> bool:
        bits = self._bits
        if bits is None:
            return True
        h = hash(part_id)
        mask = self._mask
        i = h & mask
        j = (h >> 32) & mask
        return bool(bits[i >> 3] & (1 << (i & 7)) and bits[j >> 3] & (1 << (j & 7)))

    def _drop_spilled(self, part_id: str) -> None:
        """Delete ``part_id``'s row, if any (it is about to live in the dict)."""
        if self._maybe_spilled(part_id):
            assert self._conn is not None
            self._spilled -= self._conn.execute(_DELETE, (part_id,)).rowcount

    def _spill(self) -> None:
        """Move the oldest ``batch`` parts of the dict to the file (one transaction).

        Should the file fail (no temporary directory, disk full), the index keeps every
        part in the dict from then on, which stays exact, and says so in ``problem``.
        """
        recent = self._recent
        moved = sorted(islice(recent.items(), self._batch))  # key order: B-tree locality
        try:
            conn = self._conn if self._conn is not None else self._open()
            conn.execute("BEGIN")
            conn.executemany(_INSERT, [(pid, v & _LOW63, v >> 63) for pid, v in moved])
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as e:
            # rows of this batch the file may hold stay shadowed by the dict (a part in
            # the dict is never looked up, deleted or counted in the file)
            self._bound = -1
            self.problem = (f"cannot move parts to the index file ({e}); keeping every "
                            "part of the lot in memory from now on")
            _log.warn("part index: {problem}", problem=self.problem)  # once: no more spills
            return
        bits, mask = self._bits, self._mask
        if bits is None:
            for pid, _ in moved:
                del recent[pid]
        else:
            for pid, _ in moved:
                del recent[pid]
                h = hash(pid)
                i = h & mask
                bits[i >> 3] |= 1 << (i & 7)
                i = h >> 32 & mask
                bits[i >> 3] |= 1 << (i & 7)
        self._spilled += len(moved)

    def _open(self) -> sqlite3.Connection:
        directory = tempfile.mkdtemp(prefix="ate-parts-", dir=self._parent)
        try:
            # check_same_thread off only so the finalizer may close it from any thread;
            # the index itself is used on one thread (the reactor's)
            conn = sqlite3.connect(os.path.join(directory, "parts.sqlite3"),
                                   isolation_level=None, check_same_thread=False)
            try:
                for pragma in _PRAGMAS:
                    conn.execute(f"PRAGMA {pragma}")
                # a page cache of 1 MiB: the B-tree's inner pages and a batch's leaves
                conn.execute("PRAGMA cache_size=-1024")
                conn.execute(_SCHEMA)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._dir = directory
        self._db.append(conn)
        self._conn = conn
        self._finalizer = weakref.finalize(self, _remove, self._db, directory)
        if self._filter_bits:
            self._bits = bytearray(self._filter_bits // 8)
        return conn

    # -- end ------------------------------------------------------------------------------

    @property
    def path(self) -> str | None:
        """The SQLite file, None before the first move and after close."""
        return None if self._dir is None else os.path.join(self._dir, "parts.sqlite3")

    @property
    def in_memory(self) -> int:
        """Number of parts held in the dict (at most ``bound``)."""
        return len(self._recent)

    @property
    def spilled(self) -> int:
        """Number of parts held in the file."""
        return self._spilled

    def close(self) -> None:
        """Free the dict and the filter, close and remove the file. len() stays right;
        get and put raise RuntimeError after. Closing twice is a no-op."""
        if self._closed:
            return
        self._count = len(self)
        self._closed = True
        self._recent = {}
        self._bits = None
        self._spilled = 0
        self._absent = None
        self._conn = None
        if self._finalizer is not None:
            self._finalizer()  # closes the connection, removes the directory
            self._finalizer = None
        self._dir = None

    @property
    def closed(self) -> bool:
        return self._closed
