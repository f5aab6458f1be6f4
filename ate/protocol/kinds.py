"""The message kinds of the wire contract: one frozen dataclass per message, the
command and state names they use, and :func:`dumps` (the compact outbound JSON).

Pure: no Twisted.  :mod:`ate.protocol.messages` re-exports every name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

HANDLER_COMMANDS = frozenset(
    {"load", "next", "unload", "endlot", "reset", "identify", "get-state",
     "site-layout", "get-host"}
)
#: ``response_type`` values of an error response (4.2). Nothing else may be sent.
RESPONSE_TYPES = frozenset({"notlot", "havelot", "busy", "error"})
#: Control app states (2.5).
CONTROL_STATES = frozenset({"idle", "loading", "busy", "resetting", "error", "crash"})
#: TestApp states (2.7); ``crash`` stands for the last will.
TESTAPP_STATES = frozenset(
    {"idle", "testing", "terminated", "error", "selftesting", "crash"}
)

_ENCODER = json.JSONEncoder(separators=(",", ":"))


def dumps(obj: Any) -> bytes:
    """Serialise ``obj`` the way everything is sent to MQTT (compact JSON)."""
    return _ENCODER.encode(obj).encode("utf-8")


# ---------------------------------------------------------------------------
# Message classes
# ---------------------------------------------------------------------------

class Message:
    """Base class of every message (for ``isinstance`` checks only)."""

    __slots__ = ()
    __test__ = False  # ``TestResult`` & co. are not pytest test classes


def _pass(default: Any = None) -> Any:
    """A pass-through field: compared, but not hashed (may hold lists/dicts)."""
    return field(default=default, hash=False)


# -- handler -> master, ~/Master/cmd (2.2, 4.1) -----------------------------

@dataclass(frozen=True, slots=True)
class Load(Message):
    """``load``: only the lot number is used (4.1). ``devicetype`` and ``temperature``
    are what ate-handler sends along from the ``LL`` line (13.4); the master's decode
    ignores them (4.1), so they are ``None`` in a decoded ``Load``."""
    lot_number: str
    devicetype: str | None = None
    temperature: str | None = None


_SITEINFO_KEYS = frozenset({"siteid", "partid", "binning", "logflag", "additionalinfo"})


@dataclass(frozen=True, slots=True)
class SiteInfo:
    """One entry of a handler ``next``: passed through to the TestApps (6.1).

    ``siteid`` is always a string; the other documented keys are ``None``
    when missing; any other keys are kept, in order, in ``extra``.
    """
    siteid: str
    partid: Any = _pass()
    binning: Any = _pass()
    logflag: Any = _pass()
    additionalinfo: Any = _pass()
    extra: tuple[tuple[str, Any], ...] = _pass(())

    def to_wire(self) -> dict[str, Any]:
        """The entry as it goes into ``sites_info`` (missing keys left out)."""
        d: dict[str, Any] = {"siteid": self.siteid}
        if self.partid is not None:
            d["partid"] = self.partid
        if self.binning is not None:
            d["binning"] = self.binning
        if self.logflag is not None:
            d["logflag"] = self.logflag
        if self.additionalinfo is not None:
            d["additionalinfo"] = self.additionalinfo
        for key, value in self.extra:
            d[key] = value
        return d


@dataclass(frozen=True, slots=True)
class Next(Message):
    """``next``: ``sites`` is ``None`` when the handler sent no site list,
    which means "test every configured site" (4.5 item 2)."""
    sites: tuple[SiteInfo, ...] | None = _pass(None)

    def sites_wire(self) -> list[dict[str, Any]] | None:
        """The site list in wire form, or ``None``."""
        if self.sites is None:
            return None
        return [s.to_wire() for s in self.sites]


@dataclass(frozen=True, slots=True)
class Unload(Message):
    """``unload``; ``alias`` is true when it arrived as ``endlot``."""
    alias: bool = False


@dataclass(frozen=True, slots=True)
class Reset(Message):
    """``reset``."""


@dataclass(frozen=True, slots=True)
class Identify(Message):
    """``identify``."""


@dataclass(frozen=True, slots=True)
class GetState(Message):
    """``get-state``."""


@dataclass(frozen=True, slots=True)
class GetHost(Message):
    """``get-host``."""


@dataclass(frozen=True, slots=True)
class SiteLayout(Message):
    """``site-layout``: entry i is ``(x, y)`` of site i (4.1, 4.8)."""
    layout: tuple[tuple[int, int], ...]


# -- master -> handler, ~/Master/response and ~/Master/status (2.1, 2.3, 4.2)

@dataclass(frozen=True, slots=True)
class NextResult:
    """One entry of a ``next`` response (4.5 item 4)."""
    siteid: str
    partid: Any = _pass()
    binning: int = 0
    logflag: Any = _pass(0)
    additionalinfo: Any = _pass(0)


@dataclass(frozen=True, slots=True)
class NextResponse(Message):
    sites: tuple[NextResult, ...]


@dataclass(frozen=True, slots=True)
class IdentifyResponse(Message):
    name: str


@dataclass(frozen=True, slots=True)
class GetStateResponse(Message):
    state: str
    message: str | None = ""


@dataclass(frozen=True, slots=True)
class GetHostResponse(Message):
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ErrorResponse(Message):
    """A refused command (4.2). ``message`` is the human-readable reason; it
    goes to the top level only for ``response_type == "error"``."""
    command_type: str
    response_type: str
    state: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class MasterStatus(Message):
    """``~/Master/status`` (2.1). ``message`` is ``None`` when the sender
    (the reference) wrote ``null``."""
    state: str
    message: str | None = ""


@dataclass(frozen=True, slots=True)
class MasterAlarm(Message):
    """``~/Master/alarm`` (ate-master only, protocol §15.2): ``payload`` is the alarm's
    payload object (id, name, kind, action, site, sbin, message, lot_number, parts, time,
    state)."""
    payload: Mapping[str, Any]


# -- master -> sites, ~/Control/cmd (2.4) and ~/TestApp/cmd (2.6) -----------

@dataclass(frozen=True, slots=True)
class ControlLoadTest(Message):
    """``loadTest``; ``bin_table`` in wire form, ``{hbin: [sbin, ...]}`` (5.4)."""
    sites: tuple[str, ...]
    script_path: str
    script_args: tuple[str, ...] = ()
    cwd: str = ""
    bin_table: Mapping[str, Sequence[str]] = _pass(None)


@dataclass(frozen=True, slots=True)
class ControlReset(Message):
    sites: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ControlSetLogLevel(Message):
    sites: tuple[str, ...]
    level: int


@dataclass(frozen=True, slots=True)
class TestAppNext(Message):
    """TestApp ``next``; ``job_data`` as in 6.1 (user settings + ``sites_info``)."""
    sites: tuple[str, ...]
    job_data: Mapping[str, Any] = _pass(None)

    @property
    def sites_info(self) -> list[dict[str, Any]]:
        """``job_data["sites_info"]`` (validated to be a list of objects)."""
        return self.job_data["sites_info"]


@dataclass(frozen=True, slots=True)
class TestAppTerminate(Message):
    sites: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TestAppReset(Message):
    sites: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TestAppSetLogLevel(Message):
    sites: tuple[str, ...]
    level: int


@dataclass(frozen=True, slots=True)
class TestAppGetExecutionStrategy(Message):
    sites: tuple[str, ...]
    layout: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class TestAppSetHBin(Message):
    """``sethbin``: soft and hard bin are strings on the wire (2.6)."""
    sites: tuple[str, ...]
    sbin: str
    hbin: str


@dataclass(frozen=True, slots=True)
class TestAppSetParameter(Message):
    """``setparameter`` (2.6): supported by TestApps, sent by no master."""
    sites: tuple[str, ...]
    parameters: tuple[Mapping[str, Any], ...] = _pass(())


# -- sites -> master (2.5, 2.7-2.11, 9.1) ------------------------------------

@dataclass(frozen=True, slots=True)
class ControlStatus(Message):
    site: str
    state: str
    error_message: str = ""
    interface_version: int = 1


@dataclass(frozen=True, slots=True)
class TestAppStatus(Message):
    """``state`` is ``"crash"`` for the TestApp's last will (2.7)."""
    site: str
    state: str


@dataclass(frozen=True, slots=True)
class TestResult(Message):
    """One part of one site: PIR, results, exactly one PRR, last (2.8)."""
    site: str
    records: tuple[Mapping[str, Any], ...] = _pass(())

    @property
    def prr(self) -> Mapping[str, Any]:
        """The part's PRR record (always the last one)."""
        return self.records[-1]


@dataclass(frozen=True, slots=True)
class TestSummary(Message):
    """TSR records sent at terminate (2.9)."""
    site: str
    records: tuple[Mapping[str, Any], ...] = _pass(())


@dataclass(frozen=True, slots=True)
class ExecutionStrategy(Message):
    """``strategy[t][s]`` is the tuple of site ids of stage s of test t (2.10)."""
    site: str
    strategy: tuple[tuple[tuple[str, ...], ...], ...]


@dataclass(frozen=True, slots=True)
class LogLine(Message):
    """A remote log line; ``app`` is ``"Control"`` or ``"TestApp"`` (2.11)."""
    app: str
    site: str
    line: str


@dataclass(frozen=True, slots=True)
class IoControlRequest(Message):
    """``~/TestApp/io-control/siteN/request`` (9.1)."""
    site: str
    periphery_type: str
    ioctl_name: str
    parameters: Any = _pass()


# -- peripherals (9) -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class IoControlForward(Message):
    """Master -> actuator on ``~/P/io-control/request`` (9.3 item 1)."""
    periphery_type: str
    ioctl_name: str
    parameters: Any = _pass()


@dataclass(frozen=True, slots=True)
class IoControlResponse(Message):
    """Actuator -> master on ``~/P/io-control/response``; payload kept as given."""
    periphery_type: str
    payload: Mapping[str, Any] = _pass(None)

    @property
    def ioctl_name(self) -> Any:
        return self.payload.get("ioctl_name")


@dataclass(frozen=True, slots=True)
class PeripheralResponseRelay(Message):
    """Master -> TestApps on ``~/Master/P/response`` (9.3 items 3, 4)."""
    periphery_type: str
    payload: Mapping[str, Any] = _pass(None)


@dataclass(frozen=True, slots=True)
class PeripheralStatus(Message):
    """Actuator availability on ``~/P/status`` (9.4)."""
    periphery_type: str
    status: str


# -- handler application (4.9, 13.1) ------------------------------------------

@dataclass(frozen=True, slots=True)
class HandlerStatus(Message):
    handler_id: str
    state: str
    message: str | None = ""


@dataclass(frozen=True, slots=True)
class HandlerCommand(Message):
    """Master -> handler on ``~/Handler/command`` (e.g. ``temperature``)."""
    command: str
    payload: Mapping[str, Any] = _pass(None)


@dataclass(frozen=True, slots=True)
class HandlerResponse(Message):
    """Handler -> (master) on ``ate/H/Handler/response``."""
    payload: Mapping[str, Any] = _pass(None)
    response_type: str = "temperature"


Message_ = Union[
    Load, Next, Unload, Reset, Identify, GetState, SiteLayout, GetHost,
    NextResponse, IdentifyResponse, GetStateResponse, GetHostResponse,
    ErrorResponse, MasterStatus, MasterAlarm, ControlLoadTest, ControlReset,
    ControlSetLogLevel, TestAppNext, TestAppTerminate, TestAppReset,
    TestAppSetLogLevel, TestAppGetExecutionStrategy, TestAppSetHBin,
    TestAppSetParameter, ControlStatus, TestAppStatus, TestResult, TestSummary,
    ExecutionStrategy, LogLine, IoControlRequest, IoControlForward,
    IoControlResponse, PeripheralResponseRelay, PeripheralStatus,
    HandlerStatus, HandlerCommand, HandlerResponse,
]


# Shared instances of the payload-less commands.
_NEXT_ALL = Next(None)
_UNLOAD = Unload(False)
_ENDLOT = Unload(True)
_RESET = Reset()
_IDENTIFY = Identify()
_GETSTATE = GetState()
_GETHOST = GetHost()
_SIMPLE_TYPES = {Reset: "reset", Identify: "identify", GetState: "get-state",
                 GetHost: "get-host"}

#: Every message class the codec knows (the type alias ``Message`` above is the
#: common base class; this tuple lists the concrete kinds).
MESSAGE_TYPES: tuple[type, ...] = Message_.__args__  # type: ignore[attr-defined]
