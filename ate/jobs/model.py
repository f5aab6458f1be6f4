"""The loaded job: what a job file tells the master about one lot (protocol 5.4)."""

from __future__ import annotations

from dataclasses import dataclass


class JobError(Exception):
    """A job could not be loaded.

    ``str(error)`` is one line that names the file (or the lot) and the rule that failed,
    e.g. ``job file le306426001.xml: section PAT missing or empty``. It is sent to the
    handler unchanged as the ``load`` error message (protocol 5.5).
    """


@dataclass(frozen=True)
class BinEntry:
    """One ``ENTRY`` of the station's bin table."""

    sbin: int
    hbin: int
    name: str
    group: str
    description: str


@dataclass(frozen=True)
class Job:
    """A verified job, ready for ``loadTest`` (protocol 5.4).

    ``lot_number`` is the lot number the handler asked for; ``path`` is the job file read.
    ``bins`` keeps the bin table in file order.
    """

    lot_number: str
    sblot_id: str
    part_typ: str
    pkg_typ: str
    tst_temp: str
    user_txt: str
    testapp_script_path: str
    cwd: str
    testapp_script_args: tuple[str, ...]
    bins: tuple[BinEntry, ...]
    path: str

    def bin_table_wire(self) -> dict[str, list[str]]:
        """Return the ``bin_table`` of ``loadTest``: ``{"<HBIN>": ["<SBIN>", ...]}``.

        Keys and values are decimal strings without leading zeros. Hard bins appear in the
        order of their first entry, soft bins in table order.
        """
        table: dict[str, list[str]] = {}
        for entry in self.bins:
            table.setdefault(str(entry.hbin), []).append(str(entry.sbin))
        return table

    def groups(self) -> tuple[str, ...]:
        """Return the distinct ``GROUP`` values in table order."""
        return tuple(dict.fromkeys(entry.group for entry in self.bins))
