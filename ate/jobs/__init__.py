"""Job loading (protocol section 5): job sources, the XML parser and the Job model.

Pure Python; no Twisted. Typical use::

    source = job_source_from_config(master_config)
    job = source.load("306426.001")        # raises JobError with a one-line message
"""

from __future__ import annotations

from ate.jobs.model import BinEntry, Job, JobError
from ate.jobs.parser import Identity, job_from_document, job_from_xml, parse_xml
from ate.jobs.source import (
    FilesystemSource,
    JobSource,
    StaticSource,
    check_lot_number,
    job_source_from_config,
)

__all__ = [
    "BinEntry",
    "FilesystemSource",
    "Identity",
    "Job",
    "JobError",
    "JobSource",
    "StaticSource",
    "check_lot_number",
    "job_from_document",
    "job_from_xml",
    "job_source_from_config",
    "parse_xml",
]
