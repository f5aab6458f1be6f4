"""The Geringer (PTO92UT style) serial line protocol, protocol.md 13.4. Pure.

A line is ASCII, ends in ``\\n`` and consists of fields separated by ``|``;
the last ``|`` is followed by a checksum: the sum of the character codes of
everything up to and including the last ``|``, modulo 256, written with three
digits. On input any integer text is accepted as checksum (``LE|13``).

Two directions are modelled, each as small frozen dataclasses:

* handler device -> application ("requests"): :class:`LoadLot` (``LL``),
  :class:`StartTest` (``ST``), :class:`LotEnd` (``LE``),
  :class:`IdentifyQuery` (``ID?``), :class:`StateQuery` (``TS?``),
  :class:`Temperature` (``TE``), :class:`HandlerState` (``HS``),
  :class:`HandlerName` (``ID`` from the device);
* application -> handler device ("replies"): :class:`TestStatus` (``TS``),
  :class:`EndTest` (``ET``), :class:`TesterName` (``ID``),
  :class:`AskIdentity` (``ID?``), :class:`AskState` (``HS?``).

:func:`parse_request` and :func:`parse_reply` turn one line into one message,
return ``None`` for lines that are ignored (no ``|`` at all, or no checksum
after the last ``|``, i.e. a truncated line) and raise :class:`LineError`
for lines that must be answered. :func:`format_line` turns any message back
into a line without the ``\\n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, TypeVar, Union

__all__ = [
    "checksum",
    "frame",
    "LineError",
    "LoadLot",
    "StSite",
    "StartTest",
    "LotEnd",
    "IdentifyQuery",
    "StateQuery",
    "Temperature",
    "HandlerState",
    "HandlerName",
    "TestStatus",
    "EtPart",
    "EndTest",
    "TesterName",
    "AskIdentity",
    "AskState",
    "Request",
    "Reply",
    "parse_request",
    "parse_reply",
    "format_line",
    "clean_text",
    "HS_TEXTS",
    "TS_LOT_LOADED",
    "TS_OK",
    "TS_NO_LOT",
    "TS_HAVE_LOT",
    "TS_BUSY",
    "TS_CHECKSUM_ERROR",
    "TS_NOT_IMPLEMENTED",
    "error_status",
    "error_response_status",
]

#: Longest line accepted; anything longer is answered as malformed.
MAX_LINE = 4096

#: ``HS`` codes and the texts that replace what the device sent (13.4).
HS_TEXTS = {
    -99: "command not implemented",
    -64: "unrecoverable error",
    -10: "checksum error",
    -1: "error",
    0: "ok",
    1: "busy",
}


# --------------------------------------------------------------------------
# framing


def checksum(text: str) -> int:
    """The checksum of ``text`` up to and including its last ``|``.

    >>> checksum("TS|0|OK|")
    229
    """
    end = text.rfind("|")
    return sum(map(ord, text[: end + 1])) % 256


def frame(fields: Sequence[str]) -> str:
    """Join ``fields`` with ``|``, add the final ``|`` and the checksum."""
    body = "".join(f"{field}|" for field in fields)
    return f"{body}{checksum(body):03d}"


def clean_text(value: object) -> str:
    """``value`` as a field: ``|``, control characters and non-ASCII replaced.

    Free texts (error messages, names) are sent on the line; they must not
    break its framing.
    """
    text = "" if value is None else str(value)
    return "".join(
        c if (32 <= ord(c) < 127 and c != "|") else ("/" if c == "|" else "?")
        for c in text
    )


class LineError(ValueError):
    """A line that must be answered with a ``TS`` error reply.

    Attributes:
        line: the offending line (stripped).
        code: the ``TS`` code of the answer: -1 (checksum error, malformed
            fields) or -99 (unknown header).
        reason: the text of the answer, also the log message.
    """

    def __init__(self, line: str, code: int, reason: str) -> None:
        super().__init__(f"{reason}: {line!r}")
        self.line = line
        self.code = code
        self.reason = reason

    @property
    def reply(self) -> "TestStatus":
        """The ``TS`` reply the application sends for this line."""
        return TestStatus(self.code, self.reason)


def _split(line: str) -> tuple[str, list[str]] | None:
    """Check the framing of ``line``; return ``(header, fields)``.

    Returns ``None`` for an ignored line; raises :class:`LineError` (-1
    ``checksum error``) when the checksum does not match.
    """
    text = line.strip()
    if "|" not in text:
        return None
    end = text.rfind("|")
    tail = text[end + 1 :].strip()
    if not tail:
        return None  # truncated: the checksum is missing
    try:
        given = int(tail)
    except ValueError:
        raise LineError(text, -1, "checksum error") from None
    if given != checksum(text):
        raise LineError(text, -1, "checksum error")
    parts = text[:end].split("|")
    return parts[0], parts[1:]


def _int(line: str, what: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise LineError(line, -1, f"{what} must be an integer, got {clean_text(value)}") from None


def _count(line: str, header: str, fields: list[str], expected: int) -> None:
    if len(fields) != expected:
        raise LineError(
            line, -1, f"{header} needs {expected} field(s), got {len(fields)}"
        )


# --------------------------------------------------------------------------
# handler device -> application


@dataclass(frozen=True)
class LoadLot:
    """``LL|<lot>|<devicetype>|<temperature>|``: load a lot."""

    lot: str
    devicetype: str
    temperature: str

    def fields(self) -> list[str]:
        return ["LL", self.lot, self.devicetype, self.temperature]


@dataclass(frozen=True)
class StSite:
    """One block of ``ST``: the site at the block's index (0-based)."""

    enabled: bool
    partid: str
    binning: int
    logflag: int
    info: str


@dataclass(frozen=True)
class StartTest:
    """``ST|<n>|{<en>|<partid>|<binning>|<logflag>|<info>|}xn``: start a test."""

    sites: tuple[StSite, ...]

    def fields(self) -> list[str]:
        out = ["ST", f"{len(self.sites):02d}"]
        for s in self.sites:
            out += [
                "1" if s.enabled else "0",
                s.partid,
                f"{s.binning:03d}",
                f"{s.logflag:03d}",
                s.info,
            ]
        return out

    def enabled(self) -> list[tuple[int, StSite]]:
        """``(index, block)`` of every enabled site, in handler site order."""
        return [(i, s) for i, s in enumerate(self.sites) if s.enabled]


@dataclass(frozen=True)
class LotEnd:
    """``LE|``: lot end (unload)."""

    def fields(self) -> list[str]:
        return ["LE"]


@dataclass(frozen=True)
class IdentifyQuery:
    """``ID?|``: the device asks for the tester name."""

    def fields(self) -> list[str]:
        return ["ID?"]


@dataclass(frozen=True)
class StateQuery:
    """``TS?|``: the device asks for the tester state."""

    def fields(self) -> list[str]:
        return ["TS?"]


@dataclass(frozen=True)
class Temperature:
    """``TE|<temp>|``: the device's temperature reply."""

    value: float
    text: str

    def fields(self) -> list[str]:
        return ["TE", self.text]


@dataclass(frozen=True)
class HandlerState:
    """``HS|<code>|<text>|``: the device's state reply; ``text`` from :data:`HS_TEXTS`."""

    code: int
    text: str

    def fields(self) -> list[str]:
        return ["HS", str(self.code), self.text]


@dataclass(frozen=True)
class HandlerName:
    """``ID|<name>|`` from the device: its own name."""

    name: str

    def fields(self) -> list[str]:
        return ["ID", self.name]


Request = Union[
    LoadLot, StartTest, LotEnd, IdentifyQuery, StateQuery, Temperature, HandlerState, HandlerName
]


def _parse_ll(line: str, f: list[str]) -> LoadLot:
    _count(line, "LL", f, 3)
    if not f[0]:
        raise LineError(line, -1, "LL lot number is empty")
    return LoadLot(f[0], f[1], f[2])


def _parse_st(line: str, f: list[str]) -> StartTest:
    if not f:
        raise LineError(line, -1, "ST needs a site count")
    n = _int(line, "ST site count", f[0])
    if n < 0 or len(f) != 1 + 5 * n:
        raise LineError(
            line, -1, f"ST announces {n} site(s) but has {len(f) - 1} block field(s)"
        )
    sites = []
    for i in range(n):
        en, partid, binning, logflag, info = f[1 + 5 * i : 6 + 5 * i]
        sites.append(
            StSite(
                enabled=_int(line, f"ST site {i} enable flag", en) == 1,
                partid=partid,
                binning=_int(line, f"ST site {i} binning", binning),
                logflag=_int(line, f"ST site {i} logflag", logflag),
                info=info,
            )
        )
    return StartTest(tuple(sites))


def _parse_te(line: str, f: list[str]) -> Temperature:
    _count(line, "TE", f, 1)
    try:
        value = float(f[0])
    except ValueError:
        raise LineError(line, -1, f"TE temperature is not a number: {clean_text(f[0])}") from None
    return Temperature(value, f[0])


def _parse_hs(line: str, f: list[str]) -> HandlerState:
    if len(f) not in (1, 2):
        raise LineError(line, -1, f"HS needs 2 fields, got {len(f)}")
    code = _int(line, "HS code", f[0])
    return HandlerState(code, HS_TEXTS.get(code, f[1] if len(f) > 1 else "unknown"))


def _parse_id(line: str, f: list[str]) -> HandlerName:
    _count(line, "ID", f, 1)
    return HandlerName(f[0])


_T = TypeVar("_T")


def _no_fields(cls: Callable[[], _T], header: str) -> Callable[[str, list[str]], _T]:
    def parse(line: str, f: list[str]) -> _T:
        _count(line, header, f, 0)
        return cls()

    return parse


_REQUESTS: dict[str, Callable[[str, list[str]], Request]] = {
    "LL": _parse_ll,
    "ST": _parse_st,
    "LE": _no_fields(LotEnd, "LE"),
    "ID?": _no_fields(IdentifyQuery, "ID?"),
    "TS?": _no_fields(StateQuery, "TS?"),
    "TE": _parse_te,
    "HS": _parse_hs,
    "ID": _parse_id,
}


def parse_request(line: str) -> Request | None:
    """Parse one line sent by the handler device.

    Returns ``None`` for an ignored line (no ``|``, or truncated before the
    checksum); raises :class:`LineError` for a bad checksum (code -1,
    ``checksum error``), an unknown header (code -99, ``Not Implemented``)
    or malformed fields (code -1, a reason naming the field).
    """
    return _parse(line, _REQUESTS)


# --------------------------------------------------------------------------
# application -> handler device


@dataclass(frozen=True)
class TestStatus:
    """``TS|<code>|<text>|``: the application's status reply."""

    __test__ = False  # not a pytest test class

    code: int
    text: str

    def fields(self) -> list[str]:
        return ["TS", str(self.code), clean_text(self.text)]


@dataclass(frozen=True)
class EtPart:
    """One block of ``ET``: values written unpadded."""

    partid: str
    binning: int
    logflag: object = 0
    info: object = 0


@dataclass(frozen=True)
class EndTest:
    """``ET|<n>|{<partid>|<binning>|<logflag>|<info>|}xn``: test results."""

    parts: tuple[EtPart, ...]

    def fields(self) -> list[str]:
        out = ["ET", str(len(self.parts))]
        for p in self.parts:
            out += [clean_text(p.partid), str(p.binning), clean_text(p.logflag), clean_text(p.info)]
        return out


@dataclass(frozen=True)
class TesterName:
    """``ID|<name>|``: the tester's name, reply to ``ID?``."""

    name: str

    def fields(self) -> list[str]:
        return ["ID", clean_text(self.name)]


@dataclass(frozen=True)
class AskIdentity:
    """``ID?|``: a master asks the handler device for its name."""

    def fields(self) -> list[str]:
        return ["ID?"]


@dataclass(frozen=True)
class AskState:
    """``HS?|``: a master asks the handler device for its state."""

    def fields(self) -> list[str]:
        return ["HS?"]


Reply = Union[TestStatus, EndTest, TesterName, AskIdentity, AskState]


def _parse_ts(line: str, f: list[str]) -> TestStatus:
    _count(line, "TS", f, 2)
    return TestStatus(_int(line, "TS code", f[0]), f[1])


def _parse_et(line: str, f: list[str]) -> EndTest:
    if not f:
        raise LineError(line, -1, "ET needs a part count")
    n = _int(line, "ET part count", f[0])
    if n < 0 or len(f) != 1 + 4 * n:
        raise LineError(line, -1, f"ET announces {n} part(s) but has {len(f) - 1} block field(s)")
    parts = []
    for i in range(n):
        partid, binning, logflag, info = f[1 + 4 * i : 5 + 4 * i]
        parts.append(EtPart(partid, _int(line, f"ET part {i} binning", binning), logflag, info))
    return EndTest(tuple(parts))


def _parse_tester_id(line: str, f: list[str]) -> TesterName:
    _count(line, "ID", f, 1)
    return TesterName(f[0])


_REPLIES: dict[str, Callable[[str, list[str]], Reply]] = {
    "TS": _parse_ts,
    "ET": _parse_et,
    "ID": _parse_tester_id,
    "ID?": _no_fields(AskIdentity, "ID?"),
    "HS?": _no_fields(AskState, "HS?"),
}


def parse_reply(line: str) -> Reply | None:
    """Parse one line sent by the application (the handler device's side).

    Same rules as :func:`parse_request`.
    """
    return _parse(line, _REPLIES)


def _parse(line: str, table: Mapping[str, Callable[[str, list[str]], _T]]) -> _T | None:
    if len(line) > MAX_LINE:
        raise LineError(line[:64] + "...", -1, f"line longer than {MAX_LINE} characters")
    split = _split(line)
    if split is None:
        return None
    header, fields = split
    parser = table.get(header)
    if parser is None:
        raise LineError(line.strip(), -99, "Not Implemented")
    return parser(line.strip(), fields)


def format_line(msg: Request | Reply) -> str:
    """The line for ``msg``, checksum included, without the line end."""
    return frame(msg.fields())


# --------------------------------------------------------------------------
# fixed replies and refusals (13.3, 13.4, 4.2)

TS_LOT_LOADED = TestStatus(2, "Lot is Loaded, Test start is awaited")
TS_OK = TestStatus(0, "OK")
TS_NO_LOT = TestStatus(-68, "No Lot was Started")
TS_HAVE_LOT = TestStatus(2, "Lot is Already Active")
TS_BUSY = TestStatus(3, "Busy Testing")
TS_CHECKSUM_ERROR = TestStatus(-1, "checksum error")
TS_NOT_IMPLEMENTED = TestStatus(-99, "Not Implemented")


def error_status(message: str | None) -> TestStatus:
    """``TS|-1|<message>|``, or ``TS|-1|Error|`` without a message."""
    return TestStatus(-1, message if message else "Error")


def error_response_status(response_type: str, message: str | None) -> TestStatus:
    """The ``TS`` line for an error response (4.2 and 13.3).

    A non-null ``message`` replaces the code with -1; an unknown
    ``response_type`` gives ``TS|-1|Error|``.
    """
    if message:
        return error_status(message)
    return {
        "notlot": TS_NO_LOT,
        "havelot": TS_HAVE_LOT,
        "busy": TS_BUSY,
    }.get(response_type, error_status(None))
