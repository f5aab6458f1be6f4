"""Job sources (protocol 5.1): where the job for a lot number comes from."""

from __future__ import annotations

import abc
import os
from typing import Any

from ate.jobs.model import Job, JobError
from ate.jobs.parser import Identity, job_from_xml

__all__ = [
    "JOB_FORMAT",
    "JOBNAME_PLACEHOLDER",
    "MAX_JOB_FILE_SIZE",
    "MAX_LOT_NUMBER_LENGTH",
    "FilesystemSource",
    "JobSource",
    "StaticSource",
    "check_lot_number",
    "job_source_from_config",
]

#: The only supported ``jobformat``.
JOB_FORMAT = "xml.semi-ate"
#: Replaced by the lot number in ``filesystemdatasource_jobpattern``.
JOBNAME_PLACEHOLDER = "#jobname#"
#: Job files larger than this are refused unread.
MAX_JOB_FILE_SIZE = 10 * 1024 * 1024
#: Longest lot number accepted.
MAX_LOT_NUMBER_LENGTH = 128

_FORBIDDEN_IN_LOT = ("/", "\\", ":", "..")


def check_lot_number(lot_number: Any) -> str:
    """Return ``lot_number`` if it is safe to put into a file name, else raise JobError.

    Refused: non-strings, empty strings, control characters, path separators, drive
    colons, ``..`` and overlong values. This runs before the filesystem is touched.
    """
    if not isinstance(lot_number, str):
        raise JobError(f"lot number must be a string, not {type(lot_number).__name__}")
    if not lot_number:
        raise JobError("lot number missing or empty")
    if len(lot_number) > MAX_LOT_NUMBER_LENGTH:
        raise JobError(
            f"lot number refused: longer than {MAX_LOT_NUMBER_LENGTH} characters"
        )
    if any(ord(char) < 32 or ord(char) == 127 for char in lot_number):
        raise JobError(f"lot number {lot_number!r} refused: contains a control character")
    for forbidden in _FORBIDDEN_IN_LOT:
        if forbidden in lot_number:
            raise JobError(f"lot number {lot_number!r} refused: contains {forbidden!r}")
    return lot_number


class JobSource(abc.ABC):
    """Gives the verified :class:`Job` for a lot number."""

    @abc.abstractmethod
    def load(self, lot_number: str) -> Job:
        """Return the job for ``lot_number``; raise :class:`JobError` if there is none."""


class StaticSource(JobSource):
    """``jobsource: static``: accepted in the config, but no load can succeed (5.1)."""

    def load(self, lot_number: str) -> Job:
        raise JobError("job source 'static' provides no test program")


class FilesystemSource(JobSource):
    """``jobsource: filesystem``: one XML file per lot in a directory (5.1).

    The file name is ``pattern`` with ``#jobname#`` replaced by the lot number verbatim;
    if no such file exists, the lot number with every ``.`` removed is tried.
    """

    def __init__(
        self,
        directory: str,
        pattern: str,
        *,
        device_id: str,
        handler_id: str,
        skip_verification: bool = False,
        max_size: int = MAX_JOB_FILE_SIZE,
    ) -> None:
        if not pattern:
            raise JobError("filesystemdatasource_jobpattern is empty")
        self.directory = os.path.abspath(directory)
        self.pattern = pattern
        self.device_id = device_id
        self.handler_id = handler_id
        self.skip_verification = skip_verification
        self.max_size = max_size

    def candidates(self, lot_number: str) -> tuple[str, ...]:
        """File names tried for ``lot_number``, in order (no duplicates)."""
        verbatim = self.pattern.replace(JOBNAME_PLACEHOLDER, lot_number)
        dotless = self.pattern.replace(JOBNAME_PLACEHOLDER, lot_number.replace(".", ""))
        return tuple(dict.fromkeys((verbatim, dotless)))

    def load(self, lot_number: str) -> Job:
        check_lot_number(lot_number)
        names = self.candidates(lot_number)
        root = os.path.realpath(self.directory)
        for name in names:
            resolved = os.path.realpath(os.path.join(root, name))
            if os.path.commonpath((root, resolved)) != root or resolved == root:
                raise JobError(f"job file {name}: outside the job directory {self.directory}")
            if os.path.isfile(resolved):
                return self._load_file(name, resolved, lot_number)
        raise JobError(f"job file for lot {lot_number} not found (tried {', '.join(names)})")

    def _load_file(self, name: str, path: str, lot_number: str) -> Job:
        try:
            with open(path, "rb") as stream:
                if os.fstat(stream.fileno()).st_size > self.max_size:
                    raise JobError(f"job file {name}: larger than {self.max_size} bytes")
                data = stream.read(self.max_size + 1)
        except OSError as exc:
            raise JobError(f"job file {name}: cannot be read: {exc.strerror}") from None
        if len(data) > self.max_size:
            raise JobError(f"job file {name}: larger than {self.max_size} bytes")
        identity = Identity(lot_number, self.device_id, self.handler_id)
        return job_from_xml(
            data,
            file_name=name,
            path=path,
            identity=identity,
            verify_identity=not self.skip_verification,
        )


def job_source_from_config(cfg: Any) -> JobSource:
    """Build the job source the master config asks for.

    ``cfg`` needs the :class:`~ate.config.MasterConfig` attributes ``jobsource``,
    ``jobformat``, ``filesystemdatasource_path``, ``filesystemdatasource_jobpattern``,
    ``skip_jobdata_verification``, ``device_id`` and ``handler_id``. An unknown
    ``jobsource`` or ``jobformat`` raises JobError.
    """
    if cfg.jobformat != JOB_FORMAT:
        raise JobError(f"jobformat {cfg.jobformat!r} unknown, expected {JOB_FORMAT!r}")
    if cfg.jobsource == "static":
        return StaticSource()
    if cfg.jobsource == "filesystem":
        return FilesystemSource(
            cfg.filesystemdatasource_path,
            cfg.filesystemdatasource_jobpattern,
            device_id=cfg.device_id,
            handler_id=cfg.handler_id,
            skip_verification=bool(cfg.skip_jobdata_verification),
        )
    raise JobError(f"jobsource {cfg.jobsource!r} unknown, expected 'filesystem' or 'static'")
