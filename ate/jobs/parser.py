"""Job XML (``xml.semi-ate``) parsing and verification (protocol 5.2-5.5).

The file is parsed with :mod:`xml.etree.ElementTree` and turned into the structure the
reference gets from xmltodict: attributes become ``"@name"`` keys, an element that appears
once is a dict (or its stripped text, or ``None`` when empty), a repeated one is a list.
Document type declarations are refused, so entity expansion attacks cannot happen.

Every failure raises :class:`~ate.jobs.model.JobError` with a one-line message that starts
with ``job file <name>:``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from ate.jobs.model import BinEntry, Job, JobError

__all__ = [
    "MAX_DEPTH",
    "REQUIRED_SECTIONS",
    "STATION_FIELDS",
    "Identity",
    "job_from_document",
    "job_from_xml",
    "parse_xml",
]

#: The eight top-level sections every job file must have, non-empty (5.2).
REQUIRED_SECTIONS = (
    "MAIN",
    "CLUSTER",
    "TESTPROGRAM",
    "HANDLERSECTION",
    "PAT",
    "STATION",
    "DIEELEMENT_COUNT",
    "DIEELEMENT",
)

#: Station children (names with digits removed) that must hold text.
STATION_FIELDS = ("USERTEXT", "TEMP", "TESTERPRG", "PROGRAM_DIR")

#: Deepest element nesting accepted; real job files use about five levels.
MAX_DEPTH = 64

#: The arguments the TestApp is started with (5.4).
TESTAPP_SCRIPT_ARGS = ("--verbose",)

_TESTER_NAME = re.compile(r"TESTER[0-9]*")
_DIGITS = re.compile(r"[0-9]")
_BIN_NUMBER = re.compile(r"[0-9]+")
_BIN_MAX = 65535


@dataclass(frozen=True)
class Identity:
    """What the job file is checked against: the requested lot and this test cell."""

    lot_number: str
    device_id: str
    handler_id: str


# --------------------------------------------------------------------------------------
# XML -> xmltodict-like structure


class _HostileXML(Exception):
    """Raised from inside the XML parser for constructs we refuse."""


class _GuardedTreeBuilder(ET.TreeBuilder):
    """A tree builder that refuses DOCTYPE declarations and absurd nesting."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise _HostileXML(
            f"DOCTYPE declaration ({name}) not allowed: job files must not declare entities"
        )

    def start(self, tag: str, attrs: dict[str, str]) -> ET.Element:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _HostileXML(f"elements nested deeper than {MAX_DEPTH} levels")
        return super().start(tag, attrs)

    def end(self, tag: str) -> ET.Element:
        self._depth -= 1
        return super().end(tag)


def _element_value(element: ET.Element) -> Any:
    """Convert one element the way xmltodict does (``strip_whitespace=True``)."""
    text_parts = [element.text or ""]
    children: dict[str, Any] = {}
    for child in element:
        value = _element_value(child)
        if child.tag in children:
            previous = children[child.tag]
            if isinstance(previous, list):
                previous.append(value)
            else:
                children[child.tag] = [previous, value]
        else:
            children[child.tag] = value
        text_parts.append(child.tail or "")
    text = "".join(text_parts).strip()
    if not element.attrib and not children:
        return text or None
    result: dict[str, Any] = {f"@{name}": value for name, value in element.attrib.items()}
    result.update(children)
    if text:
        result["#text"] = text
    return result


def parse_xml(data: bytes, file_name: str) -> dict[str, Any]:
    """Parse job XML into ``{root_tag: content}`` with xmltodict semantics.

    Raises JobError naming ``file_name`` and, for syntax errors, the line and column.
    """
    builder = _GuardedTreeBuilder()
    parser = ET.XMLParser(target=builder)
    try:
        parser.feed(data)
        root = parser.close()
    except _HostileXML as exc:
        raise JobError(f"job file {file_name}: {exc}") from None
    except ET.ParseError as exc:
        line, column = exc.position
        reason = str(exc).split(":", 1)[0]
        raise JobError(
            f"job file {file_name}: malformed XML: {reason} at line {line}, column {column + 1}"
        ) from None
    return {root.tag: _element_value(root)}


# --------------------------------------------------------------------------------------
# Verification and derivation


class _Checker:
    """Reads values out of the parsed document, raising JobError with the file name."""

    def __init__(self, file_name: str) -> None:
        self.file_name = file_name

    def fail(self, problem: str) -> JobError:
        return JobError(f"job file {self.file_name}: {problem}")

    def text(self, parent: Any, name: str, where: str) -> str:
        """Return the non-empty text of ``parent[name]`` or fail naming ``where/name``."""
        value = parent.get(name) if isinstance(parent, dict) else None
        if value is None or value == "":
            raise self.fail(f"{where}{name} missing or empty")
        if isinstance(value, list):
            raise self.fail(f"{where}{name} given {len(value)} times, expected once")
        if isinstance(value, dict):
            nested = [key for key in value if not key.startswith("@") and key != "#text"]
            if nested:
                raise self.fail(f"{where}{name} must be plain text, not nested elements")
            if "#text" not in value:
                raise self.fail(f"{where}{name} missing or empty")
            return value["#text"]
        return value


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def _tester_names(section: Any) -> list[str]:
    """All text values of ``TESTER``/``TESTERn`` children of ``section``."""
    names: list[str] = []
    if not isinstance(section, dict):
        return names
    for key, value in section.items():
        if _TESTER_NAME.fullmatch(key):
            names.extend(item for item in _as_list(value) if isinstance(item, str))
    return names


def _check_sections(check: _Checker, content: Any) -> dict[str, Any]:
    if not isinstance(content, dict):
        raise check.fail(f"section {REQUIRED_SECTIONS[0]} missing or empty")
    for name in REQUIRED_SECTIONS:
        value = content.get(name)
        if value is None or value == "" or value == {}:
            raise check.fail(f"section {name} missing or empty")
        if isinstance(value, list):
            raise check.fail(f"section {name} given {len(value)} times, expected once")
    return content


def _find_station(check: _Checker, stations: Any, device_id: str) -> tuple[str, dict[str, Any]]:
    """Return (name, children with digits stripped from their names) of *the station*."""
    if isinstance(stations, dict):
        for name, value in stations.items():
            if name.startswith("@") or name == "#text":
                continue
            for candidate in _as_list(value):
                if device_id in _tester_names(candidate):
                    return name, _strip_digits(check, name, candidate)
    raise check.fail(f"no STATION entry has TESTER {device_id}")


def _strip_digits(check: _Checker, station: str, children: dict[str, Any]) -> dict[str, Any]:
    """Rename ``TEMP1`` -> ``TEMP`` etc.; a read field may appear only once."""
    stripped: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, value in children.items():
        if name.startswith("@") or name == "#text":
            continue
        short = _DIGITS.sub("", name)
        if short in stripped:
            if short in STATION_FIELDS or short == "BINTABLE":
                raise check.fail(
                    f"station {station}: {short} given more than once ({origin[short]}, {name})"
                )
            continue
        stripped[short] = value
        origin[short] = name
    return stripped


def _parse_bin_number(check: _Checker, where: str, attrs: dict[str, Any], name: str) -> int:
    raw = attrs.get(f"@{name}")
    if raw is None or raw.strip() == "":
        raise check.fail(f"{where}: {name} missing or empty")
    value = raw.strip()
    if not _BIN_NUMBER.fullmatch(value) or int(value) > _BIN_MAX:
        raise check.fail(f"{where}: {name} {raw!r} is not an integer from 0 to {_BIN_MAX}")
    return int(value)


def _bin_entries(check: _Checker, station: str, bintable: Any) -> tuple[BinEntry, ...]:
    entries = _as_list(bintable.get("ENTRY")) if isinstance(bintable, dict) else []
    if not entries:
        raise check.fail(f"station {station}: BINTABLE has no ENTRY")
    bins: list[BinEntry] = []
    first_use: dict[int, int] = {}
    for number, raw in enumerate(entries, start=1):
        where = f"bin table entry {number}"
        attrs = raw if isinstance(raw, dict) else {}
        sbin = _parse_bin_number(check, where, attrs, "SBIN")
        hbin = _parse_bin_number(check, where, attrs, "HBIN")
        if sbin in first_use:
            raise check.fail(
                f"{where}: SBIN {sbin} already used by bin table entry {first_use[sbin]}"
            )
        first_use[sbin] = number
        texts = {}
        for name in ("SBINNAME", "GROUP"):
            value = attrs.get(f"@{name}")
            if value is None or value.strip() == "":
                raise check.fail(f"{where}: {name} missing or empty")
            texts[name] = value
        bins.append(
            BinEntry(
                sbin=sbin,
                hbin=hbin,
                name=texts["SBINNAME"],
                group=texts["GROUP"],
                description=attrs.get("@DESCRIPTION") or "",
            )
        )
    return tuple(bins)


def _split_program_dir(check: _Checker, station: str, program_dir: str) -> tuple[str, str]:
    """Split at the last ``/`` or ``\\``: (cwd, script)."""
    cut = max(program_dir.rfind("/"), program_dir.rfind("\\"))
    cwd, script = program_dir[: max(cut, 0)], program_dir[cut + 1 :]
    if not script:
        raise check.fail(f"station {station}: PROGRAM_DIR {program_dir!r} names no file")
    return cwd, script


def job_from_document(
    document: dict[str, Any],
    *,
    file_name: str,
    path: str,
    identity: Identity,
    verify_identity: bool = True,
) -> Job:
    """Verify a parsed job document (5.3) and derive the :class:`Job` (5.4).

    With ``verify_identity`` false, the lot, CLUSTER tester and handler matching is skipped
    (``skip_jobdata_verification``); everything else is still checked, including that a
    station for this tester exists.
    """
    check = _Checker(file_name)
    if not isinstance(document, dict) or len(document) != 1:
        raise check.fail("document must have exactly one root element")
    (content,) = document.values()
    sections = _check_sections(check, content)

    main = sections["MAIN"]
    lot_in_file = check.text(main, "LOTNUMBER", "MAIN/")
    matchcode = check.text(main, "MATCHCODE", "MAIN/")
    package = check.text(main, "PACKAGEID_SHORT", "MAIN/")
    cluster = sections["CLUSTER"]

    if verify_identity:
        if lot_in_file != identity.lot_number:
            raise check.fail(f"LOTNUMBER is {lot_in_file}, expected {identity.lot_number}")
        testers = _tester_names(cluster)
        if identity.device_id not in testers:
            found = ", ".join(testers) if testers else "missing"
            raise check.fail(f"CLUSTER TESTER is {found}, expected {identity.device_id}")

    station_name, station = _find_station(check, sections["STATION"], identity.device_id)

    if verify_identity:
        handler = check.text(cluster, "HANDLER_PROBER", "CLUSTER/")
        if handler != identity.handler_id:
            raise check.fail(f"HANDLER_PROBER is {handler}, expected {identity.handler_id}")

    where = f"station {station_name}: "
    fields = {name: check.text(station, name, where) for name in STATION_FIELDS}
    if station.get("BINTABLE") is None:
        raise check.fail(f"{where}BINTABLE missing or empty")
    bins = _bin_entries(check, station_name, station["BINTABLE"])
    cwd, script = _split_program_dir(check, station_name, fields["PROGRAM_DIR"])

    _, dot, sblot = lot_in_file.partition(".")
    return Job(
        lot_number=identity.lot_number,
        sblot_id=sblot if dot else "",
        part_typ=f"{matchcode}_{fields['TESTERPRG']}",
        pkg_typ=package,
        tst_temp=fields["TEMP"],
        user_txt=fields["USERTEXT"],
        testapp_script_path=script,
        cwd=cwd,
        testapp_script_args=TESTAPP_SCRIPT_ARGS,
        bins=bins,
        path=path,
    )


def job_from_xml(
    data: bytes,
    *,
    file_name: str,
    path: str,
    identity: Identity,
    verify_identity: bool = True,
) -> Job:
    """Parse, verify and derive in one step: :func:`parse_xml` + :func:`job_from_document`."""
    document = parse_xml(data, file_name)
    return job_from_document(
        document,
        file_name=file_name,
        path=path,
        identity=identity,
        verify_identity=verify_identity,
    )
