"""Typed messages of the wire contract and the codec that maps them to MQTT.

:class:`Codec` turns ``(topic, payload bytes)`` into one of the frozen
dataclasses below (validating every field it reads) and back. One codec
serves the master, the simulated sites and the handler application, so every
message kind is decoded on its topic, including the master's own
publications; callers drop what they do not want.

Section numbers refer to ``protocol.md``. No Twisted here: this module is
pure and is imported by everything else.

Conventions:

- Lists on the wire become tuples; objects that are passed through (job data,
  STDF records, io-control parameters, ...) stay dicts, and such fields are
  excluded from hashing.
- Values that the master passes through unchanged (``partid``, ``binning``,
  ``logflag``, ``additionalinfo``, records) are kept exactly as decoded,
  including ``NaN``/``Infinity`` floats.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

from ate.protocol.errors import ProtocolError
from ate.protocol.topics import RESERVED_APPS, Topics

__all__ = [
    # handler -> master
    "Load", "Next", "SiteInfo", "Unload", "Reset", "Identify", "GetState",
    "SiteLayout", "GetHost",
    # master -> handler
    "NextResponse", "NextResult", "IdentifyResponse", "GetStateResponse",
    "GetHostResponse", "ErrorResponse", "MasterStatus",
    # master -> sites
    "ControlLoadTest", "ControlReset", "ControlSetLogLevel", "TestAppNext",
    "TestAppTerminate", "TestAppReset", "TestAppSetLogLevel",
    "TestAppGetExecutionStrategy", "TestAppSetHBin", "TestAppSetParameter",
    # sites -> master
    "ControlStatus", "TestAppStatus", "TestResult", "TestSummary",
    "ExecutionStrategy", "LogLine", "IoControlRequest",
    # peripherals
    "IoControlForward", "IoControlResponse", "PeripheralResponseRelay",
    "PeripheralStatus",
    # handler application
    "HandlerStatus", "HandlerCommand", "HandlerResponse",
    # misc
    "Message", "Codec", "HANDLER_COMMANDS", "RESPONSE_TYPES", "CONTROL_STATES",
    "TESTAPP_STATES", "MESSAGE_TYPES", "dumps", "MAX_JSON_DEPTH", "json_too_deep",
]

#: Handler command types accepted on ``~/Master/cmd`` (2.2; ``endlot`` is an alias).
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


_frozen = dataclass(frozen=True, slots=True)


def _pass(default: Any = None) -> Any:
    """A pass-through field: compared, but not hashed (may hold lists/dicts)."""
    return field(default=default, hash=False)


# -- handler -> master, ~/Master/cmd (2.2, 4.1) -----------------------------

@_frozen
class Load(Message):
    """``load``: only the lot number is used (4.1). ``devicetype`` and ``temperature``
    are what ate-handler sends along from the ``LL`` line (13.4); the master's decode
    ignores them (4.1), so they are ``None`` in a decoded ``Load``."""
    lot_number: str
    devicetype: str | None = None
    temperature: str | None = None


_SITEINFO_KEYS = frozenset({"siteid", "partid", "binning", "logflag", "additionalinfo"})


@_frozen
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


@_frozen
class Next(Message):
    """``next``: ``sites`` is ``None`` when the handler sent no site list,
    which means "test every configured site" (4.5 item 2)."""
    sites: tuple[SiteInfo, ...] | None = _pass(None)

    def sites_wire(self) -> list[dict[str, Any]] | None:
        """The site list in wire form, or ``None``."""
        if self.sites is None:
            return None
        return [s.to_wire() for s in self.sites]


@_frozen
class Unload(Message):
    """``unload``; ``alias`` is true when it arrived as ``endlot``."""
    alias: bool = False


@_frozen
class Reset(Message):
    """``reset``."""


@_frozen
class Identify(Message):
    """``identify``."""


@_frozen
class GetState(Message):
    """``get-state``."""


@_frozen
class GetHost(Message):
    """``get-host``."""


@_frozen
class SiteLayout(Message):
    """``site-layout``: entry i is ``(x, y)`` of site i (4.1, 4.8)."""
    layout: tuple[tuple[int, int], ...]


# -- master -> handler, ~/Master/response and ~/Master/status (2.1, 2.3, 4.2)

@_frozen
class NextResult:
    """One entry of a ``next`` response (4.5 item 4)."""
    siteid: str
    partid: Any = _pass()
    binning: int = 0
    logflag: Any = _pass(0)
    additionalinfo: Any = _pass(0)


@_frozen
class NextResponse(Message):
    sites: tuple[NextResult, ...]


@_frozen
class IdentifyResponse(Message):
    name: str


@_frozen
class GetStateResponse(Message):
    state: str
    message: str | None = ""


@_frozen
class GetHostResponse(Message):
    host: str
    port: int


@_frozen
class ErrorResponse(Message):
    """A refused command (4.2). ``message`` is the human-readable reason; it
    goes to the top level only for ``response_type == "error"``."""
    command_type: str
    response_type: str
    state: str
    message: str = ""


@_frozen
class MasterStatus(Message):
    """``~/Master/status`` (2.1). ``message`` is ``None`` when the sender
    (the reference) wrote ``null``."""
    state: str
    message: str | None = ""


# -- master -> sites, ~/Control/cmd (2.4) and ~/TestApp/cmd (2.6) -----------

@_frozen
class ControlLoadTest(Message):
    """``loadTest``; ``bin_table`` in wire form, ``{hbin: [sbin, ...]}`` (5.4)."""
    sites: tuple[str, ...]
    script_path: str
    script_args: tuple[str, ...] = ()
    cwd: str = ""
    bin_table: Mapping[str, Sequence[str]] = _pass(None)


@_frozen
class ControlReset(Message):
    sites: tuple[str, ...]


@_frozen
class ControlSetLogLevel(Message):
    sites: tuple[str, ...]
    level: int


@_frozen
class TestAppNext(Message):
    """TestApp ``next``; ``job_data`` as in 6.1 (user settings + ``sites_info``)."""
    sites: tuple[str, ...]
    job_data: Mapping[str, Any] = _pass(None)

    @property
    def sites_info(self) -> list[dict[str, Any]]:
        """``job_data["sites_info"]`` (validated to be a list of objects)."""
        return self.job_data["sites_info"]


@_frozen
class TestAppTerminate(Message):
    sites: tuple[str, ...]


@_frozen
class TestAppReset(Message):
    sites: tuple[str, ...]


@_frozen
class TestAppSetLogLevel(Message):
    sites: tuple[str, ...]
    level: int


@_frozen
class TestAppGetExecutionStrategy(Message):
    sites: tuple[str, ...]
    layout: tuple[tuple[int, int], ...]


@_frozen
class TestAppSetHBin(Message):
    """``sethbin``: soft and hard bin are strings on the wire (2.6)."""
    sites: tuple[str, ...]
    sbin: str
    hbin: str


@_frozen
class TestAppSetParameter(Message):
    """``setparameter`` (2.6): supported by TestApps, sent by no master."""
    sites: tuple[str, ...]
    parameters: tuple[Mapping[str, Any], ...] = _pass(())


# -- sites -> master (2.5, 2.7-2.11, 9.1) ------------------------------------

@_frozen
class ControlStatus(Message):
    site: str
    state: str
    error_message: str = ""
    interface_version: int = 1


@_frozen
class TestAppStatus(Message):
    """``state`` is ``"crash"`` for the TestApp's last will (2.7)."""
    site: str
    state: str


@_frozen
class TestResult(Message):
    """One part of one site: PIR, results, exactly one PRR, last (2.8)."""
    site: str
    records: tuple[Mapping[str, Any], ...] = _pass(())

    @property
    def prr(self) -> Mapping[str, Any]:
        """The part's PRR record (always the last one)."""
        return self.records[-1]


@_frozen
class TestSummary(Message):
    """TSR records sent at terminate (2.9)."""
    site: str
    records: tuple[Mapping[str, Any], ...] = _pass(())


@_frozen
class ExecutionStrategy(Message):
    """``strategy[t][s]`` is the tuple of site ids of stage s of test t (2.10)."""
    site: str
    strategy: tuple[tuple[tuple[str, ...], ...], ...]


@_frozen
class LogLine(Message):
    """A remote log line; ``app`` is ``"Control"`` or ``"TestApp"`` (2.11)."""
    app: str
    site: str
    line: str


@_frozen
class IoControlRequest(Message):
    """``~/TestApp/io-control/siteN/request`` (9.1)."""
    site: str
    periphery_type: str
    ioctl_name: str
    parameters: Any = _pass()


# -- peripherals (9) -----------------------------------------------------------

@_frozen
class IoControlForward(Message):
    """Master -> actuator on ``~/P/io-control/request`` (9.3 item 1)."""
    periphery_type: str
    ioctl_name: str
    parameters: Any = _pass()


@_frozen
class IoControlResponse(Message):
    """Actuator -> master on ``~/P/io-control/response``; payload kept as given."""
    periphery_type: str
    payload: Mapping[str, Any] = _pass(None)

    @property
    def ioctl_name(self) -> Any:
        return self.payload.get("ioctl_name")


@_frozen
class PeripheralResponseRelay(Message):
    """Master -> TestApps on ``~/Master/P/response`` (9.3 items 3, 4)."""
    periphery_type: str
    payload: Mapping[str, Any] = _pass(None)


@_frozen
class PeripheralStatus(Message):
    """Actuator availability on ``~/P/status`` (9.4)."""
    periphery_type: str
    status: str


# -- handler application (4.9, 13.1) ------------------------------------------

@_frozen
class HandlerStatus(Message):
    handler_id: str
    state: str
    message: str | None = ""


@_frozen
class HandlerCommand(Message):
    """Master -> handler on ``~/Handler/command`` (e.g. ``temperature``)."""
    command: str
    payload: Mapping[str, Any] = _pass(None)


@_frozen
class HandlerResponse(Message):
    """Handler -> (master) on ``ate/H/Handler/response``."""
    payload: Mapping[str, Any] = _pass(None)
    response_type: str = "temperature"


Message_ = Union[
    Load, Next, Unload, Reset, Identify, GetState, SiteLayout, GetHost,
    NextResponse, IdentifyResponse, GetStateResponse, GetHostResponse,
    ErrorResponse, MasterStatus, ControlLoadTest, ControlReset,
    ControlSetLogLevel, TestAppNext, TestAppTerminate, TestAppReset,
    TestAppSetLogLevel, TestAppGetExecutionStrategy, TestAppSetHBin,
    TestAppSetParameter, ControlStatus, TestAppStatus, TestResult, TestSummary,
    ExecutionStrategy, LogLine, IoControlRequest, IoControlForward,
    IoControlResponse, PeripheralResponseRelay, PeripheralStatus,
    HandlerStatus, HandlerCommand, HandlerResponse,
]


# ---------------------------------------------------------------------------
# Decoding helpers
# ---------------------------------------------------------------------------

_JTYPES = {
    str: "a string", int: "an integer", float: "a number", bool: "a boolean",
    type(None): "null", list: "an array", dict: "an object",
}


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _json_short(value: Any) -> str:
    """A decoded JSON value for error messages, in JSON spelling (``Infinity``, ``NaN``)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return _short(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: PRR fields the handler's bins come from; the codec checks them (2.8, 3.8).
_PRR_BINS = ("SOFT_BIN", "HARD_BIN")


def _jtype(value: Any) -> str:
    """Describe a decoded JSON value's type for error messages."""
    return _JTYPES.get(type(value), type(value).__name__)


_json_decode = json.JSONDecoder().decode

#: The deepest nesting of arrays and objects accepted in JSON from outside (MQTT payloads,
#: HTTP bodies, websocket frames).  The protocol's messages nest 4 levels at most; a
#: decoded value nested close to Python's recursion limit would make every later
#: encoder or walker over it raise RecursionError.
MAX_JSON_DEPTH = 64
_CONTAINERS = frozenset((dict, list))


def json_too_deep(obj: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if the decoded JSON value ``obj`` nests arrays/objects more than ``limit``
    levels deep (a scalar is level 0, ``[]`` level 1).  Iterative, one level at a time."""
    if type(obj) not in _CONTAINERS:
        return False
    level = [obj]
    depth = 0
    flat = _CONTAINERS.isdisjoint
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list = []
        for o in level:
            values = o.values() if type(o) is dict else o
            if not flat(map(type, values)):
                below += [v for v in values if type(v) in _CONTAINERS]
        level = below
    return False


def _loads(topic: str, payload: bytes, site: str | None = None) -> dict:
    """Parse one JSON object or raise ``ProtocolError(kind="not-json")``."""
    try:
        # UTF-8 only (protocol §0): decoding first skips json's encoding detection
        obj = _json_decode(payload.decode("utf-8") if type(payload) is bytes
                           else bytes(payload).decode("utf-8"))
    except (ValueError, RecursionError, TypeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ProtocolError(
            topic, None, f"payload is not valid JSON: {reason[:120]}",
            site=site, kind="not-json",
        ) from None
    # deeper than the limit needs at least 2 * (limit + 1) bytes: short payloads skip the walk
    if len(payload) > 2 * MAX_JSON_DEPTH and json_too_deep(obj):
        raise ProtocolError(
            topic, None, f"payload is not valid JSON: nested deeper than {MAX_JSON_DEPTH} "
            "levels", site=site, kind="not-json",
        )
    if type(obj) is not dict:
        raise ProtocolError(
            topic, None, f"payload must be a JSON object, got {_jtype(obj)}",
            site=site, kind="not-json",
        )
    return obj


class _Ctx:
    """Error context while decoding one message: topic, command, site."""

    __slots__ = ("topic", "command", "site")

    def __init__(self, topic: str, command: str | None = None,
                 site: str | None = None) -> None:
        self.topic = topic
        self.command = command
        self.site = site

    def error(self, fld: str | None, reason: str,
              kind: str = "malformed") -> ProtocolError:
        return ProtocolError(self.topic, fld, reason, command=self.command,
                             site=self.site, kind=kind)

    def wrong(self, fld: str, expected: str, value: Any) -> ProtocolError:
        return self.error(fld, f"must be {expected}, got {_jtype(value)}")

    def missing(self, fld: str) -> ProtocolError:
        return self.error(fld, "missing")

    # -- typed getters -------------------------------------------------------
    def str_(self, obj: dict, key: str, path: str, *, nonempty: bool = False) -> str:
        value = obj.get(key, _MISSING)
        if type(value) is str:
            if nonempty and not value:
                raise self.error(path, "must not be empty")
            return value
        if value is _MISSING:
            raise self.missing(path)
        raise self.wrong(path, "a string", value)

    def opt_str(self, obj: dict, key: str, path: str, default: Any) -> Any:
        """A string, or ``default`` when missing; ``null`` kept as ``None``."""
        value = obj.get(key, _MISSING)
        if value is _MISSING:
            return default
        if value is None or type(value) is str:
            return value
        raise self.wrong(path, "a string or null", value)

    def int_(self, obj: dict, key: str, path: str) -> int:
        value = obj.get(key, _MISSING)
        if type(value) is int:
            return value
        if value is _MISSING:
            raise self.missing(path)
        raise self.wrong(path, "an integer", value)

    def obj(self, obj: dict, key: str, path: str) -> dict:
        value = obj.get(key, _MISSING)
        if type(value) is dict:
            return value
        if value is _MISSING:
            raise self.missing(path)
        raise self.wrong(path, "an object", value)

    def list_(self, obj: dict, key: str, path: str) -> list:
        value = obj.get(key, _MISSING)
        if type(value) is list:
            return value
        if value is _MISSING:
            raise self.missing(path)
        raise self.wrong(path, "an array", value)

    def str_list(self, obj: dict, key: str, path: str) -> tuple[str, ...]:
        items = self.list_(obj, key, path)
        for i, item in enumerate(items):
            if type(item) is not str:
                raise self.wrong(f"{path}[{i}]", "a string", item)
        return tuple(items)

    def layout(self, items: Any, path: str, max_len: int | None = None,
               ) -> tuple[tuple[int, int], ...]:
        """A list of ``[x, y]`` pairs of non-negative integers."""
        if type(items) is not list:
            raise self.wrong(path, "an array of [x, y] pairs", items)
        if not items:
            raise self.error(path, "must not be empty")
        if max_len is not None and len(items) > max_len:
            raise self.error(
                path, f"has {len(items)} pairs, more than the {max_len} "
                      f"configured sites")
        out = []
        for i, pair in enumerate(items):
            if type(pair) is not list or len(pair) != 2:
                raise self.error(f"{path}[{i}]", "must be an [x, y] pair")
            x, y = pair
            if type(x) is not int or type(y) is not int or x < 0 or y < 0:
                raise self.error(f"{path}[{i}]",
                                 "x and y must be non-negative integers")
            out.append((x, y))
        return tuple(out)


_MISSING = object()


def _record_name(rec: dict) -> Any:
    """The STDF record name of a record dict (``type``, else ``rec_id``)."""
    name = rec.get("type")
    if type(name) is str:
        return name
    name = rec.get("rec_id")
    if type(name) is str:
        return name
    return None


def _is_level(value: str) -> bool:
    """True if ``value`` can be one MQTT topic level naming a peripheral: not empty, not a
    reserved app name, no ``/ + #``, and nothing a broker refuses in a topic (mosquitto
    drops a client that publishes a topic with a control character, a lone surrogate or a
    non-character, and every resend of that QoS 2 message after the reconnect again), at
    most 256 bytes of UTF-8."""
    if not value or value in RESERVED_APPS or len(value) > 256:
        return False
    if value.isascii():
        return value.isprintable() and not any(c in value for c in "/+#")
    if any(c in value for c in "/+#"):
        return False
    for c in value:
        cat = unicodedata.category(c)
        if cat in ("Cc", "Cs") or c in "\ufffe\uffff":
            return False
    return len(value.encode("utf-8")) <= 256


# ---------------------------------------------------------------------------
# The codec
# ---------------------------------------------------------------------------

_Decoder = Callable[[str, "str | None", bytes], "Message | None"]

# Sub-topics below ~/TestApp/ and ~/Control/ that carry a site (siteN last).
_TESTAPP_SITE_SUBTOPICS = ("status", "testresult", "testsummary",
                           "execution_strategy", "log")
_CONTROL_SITE_SUBTOPICS = ("status", "log")
# Known TestApp sub-topics; any other one is ignored (3.8 last row).
_TESTAPP_KNOWN = frozenset(_TESTAPP_SITE_SUBTOPICS + ("cmd", "io-control"))


class Codec:
    """Decode and encode every message of the contract for one device.

    Args:
        device_id: the master's device id ``D``.
        sites: the configured site ids (strings of decimal integers).
        handler_id: the handler id ``H``; without it the ``ate/H/Handler/*``
            topics are unknown.

    ``decode`` returns ``None`` only for topics the contract lists as unused
    (``~/Master/job``, ``~/Master/peripherystate``, unknown ``~/TestApp/...``
    sub-topics such as ``stdf``, ``binsettings`` or ``peripherystate``).
    Everything else is decoded or refused with :class:`ProtocolError`.
    """

    def __init__(self, device_id: str, sites: Sequence[str],
                 handler_id: str | None = None) -> None:
        if isinstance(sites, str):
            raise TypeError("sites must be a sequence of site id strings, not a string")
        sites = tuple(sites)
        for s in sites:
            if type(s) is not str or not s:
                raise ValueError(f"site ids must be non-empty strings, got {s!r}")
        if len(set(sites)) != len(sites):
            raise ValueError(f"duplicate site ids in {sites!r}")
        self.topics = t = Topics(device_id, handler_id)
        self.device_id = device_id
        self.handler_id = handler_id
        self.sites = sites
        self._site_set = frozenset(sites)
        self._prefix = t.base + "/"

        # Exact topic -> (decoder, site). Per-site topics of every configured
        # site are listed too, so the hot path is one dict lookup.
        fixed: dict[str, tuple[_Decoder, str | None]] = {
            t.master_cmd: (self._dec_master_cmd, None),
            t.master_status: (self._dec_master_status, None),
            t.master_response: (self._dec_master_response, None),
            t.master_job: (_ignore, None),
            t.master_peripherystate: (_ignore, None),
            t.control_cmd: (self._dec_control_cmd, None),
            t.testapp_cmd: (self._dec_testapp_cmd, None),
            t.handler_command: (self._dec_handler_command, None),
        }
        if handler_id is not None:
            fixed[t.handler_status] = (self._dec_handler_status, None)
            fixed[t.handler_response] = (self._dec_handler_response, None)
        self._site_topics: dict[str, tuple[str, ...]] = {}
        for s in sites:
            fixed[t.control_status(s)] = (self._dec_control_status, s)
            fixed[t.control_log(s)] = (self._dec_control_log, s)
            fixed[t.testapp_status(s)] = (self._dec_testapp_status, s)
            fixed[t.testapp_testresult(s)] = (self._dec_testresult, s)
            fixed[t.testapp_testsummary(s)] = (self._dec_testsummary, s)
            fixed[t.testapp_execution_strategy(s)] = (self._dec_strategy, s)
            fixed[t.testapp_log(s)] = (self._dec_testapp_log, s)
            fixed[t.testapp_io_request(s)] = (self._dec_io_request, s)
            self._site_topics[s] = self._make_site_topics(s)
        self._fixed = fixed

        self._cmd_decoders: dict[str, Callable[[_Ctx, dict], Message]] = {
            "load": self._dec_load,
            "next": self._dec_next,
            "unload": lambda c, o: _UNLOAD,
            "endlot": lambda c, o: _ENDLOT,
            "reset": lambda c, o: _RESET,
            "identify": lambda c, o: _IDENTIFY,
            "get-state": lambda c, o: _GETSTATE,
            "get-host": lambda c, o: _GETHOST,
            "site-layout": self._dec_site_layout,
        }
        self._encoders: dict[type, Callable[[Any], tuple[str, bytes]]] = {
            Load: self._enc_load, Next: self._enc_next, Unload: self._enc_unload,
            Reset: self._enc_simple, Identify: self._enc_simple,
            GetState: self._enc_simple, GetHost: self._enc_simple,
            SiteLayout: self._enc_site_layout,
            NextResponse: self._enc_next_response,
            IdentifyResponse: self._enc_identify_response,
            GetStateResponse: self._enc_get_state_response,
            GetHostResponse: self._enc_get_host_response,
            ErrorResponse: self._enc_error_response,
            MasterStatus: self._enc_master_status,
            ControlLoadTest: self._enc_control_load,
            ControlReset: self._enc_control_reset,
            ControlSetLogLevel: self._enc_control_loglevel,
            TestAppNext: self._enc_testapp_next,
            TestAppTerminate: self._enc_testapp_terminate,
            TestAppReset: self._enc_testapp_reset,
            TestAppSetLogLevel: self._enc_testapp_loglevel,
            TestAppGetExecutionStrategy: self._enc_testapp_strategy,
            TestAppSetHBin: self._enc_testapp_sethbin,
            TestAppSetParameter: self._enc_testapp_setparameter,
            ControlStatus: self._enc_control_status,
            TestAppStatus: self._enc_testapp_status,
            TestResult: self._enc_testresult,
            TestSummary: self._enc_testsummary,
            ExecutionStrategy: self._enc_strategy,
            LogLine: self._enc_log,
            IoControlRequest: self._enc_io_request,
            IoControlForward: self._enc_io_forward,
            IoControlResponse: self._enc_io_response,
            PeripheralResponseRelay: self._enc_relay,
            PeripheralStatus: self._enc_peripheral_status,
            HandlerStatus: self._enc_handler_status,
            HandlerCommand: self._enc_handler_command,
            HandlerResponse: self._enc_handler_response,
        }

    def _make_site_topics(self, s: str) -> tuple[str, ...]:
        t = self.topics
        return (t.control_status(s), t.control_log(s), t.testapp_status(s),
                t.testapp_testresult(s), t.testapp_testsummary(s),
                t.testapp_execution_strategy(s), t.testapp_log(s),
                t.testapp_io_request(s))

    def __repr__(self) -> str:
        return (f"Codec(device_id={self.device_id!r}, sites={self.sites!r}, "
                f"handler_id={self.handler_id!r})")

    # ------------------------------------------------------------------ decode
    def decode(self, topic: str, payload: bytes) -> Message | None:
        """Decode one MQTT message.

        Returns the typed message, or ``None`` for an ignored topic. Raises
        :class:`ProtocolError` for anything that breaks the contract.
        """
        entry = self._fixed.get(topic)
        if entry is not None:
            return entry[0](topic, entry[1], payload)
        return self._decode_other(topic, payload)

    def _decode_other(self, topic: str, payload: bytes) -> Message | None:
        """Topics that are not in the exact-match table."""
        if type(topic) is not str:
            raise TypeError(f"topic must be a string, got {type(topic).__name__}")
        if not topic.startswith(self._prefix):
            raise ProtocolError(topic, None, "topic is not part of the contract "
                                f"for device {self.device_id}", kind="unknown-topic")
        parts = topic[len(self._prefix):].split("/")
        app, n = parts[0], len(parts)
        if app == "TestApp" and n >= 2:
            sub = parts[1]
            if sub and sub not in _TESTAPP_KNOWN:
                return None                      # stdf, binsettings, ... (3.8)
            if n == 3 and sub in _TESTAPP_SITE_SUBTOPICS:
                self._unconfigured(topic, parts[2])
            if n == 4 and sub == "io-control" and parts[3] == "request":
                self._unconfigured(topic, parts[2])
        elif app == "Control" and n == 3 and parts[1] in _CONTROL_SITE_SUBTOPICS:
            self._unconfigured(topic, parts[2])
        elif app == "Master":
            if n == 3 and parts[2] == "response" and _is_level(parts[1]):
                return self._dec_relay(topic, parts[1], payload)
        elif app not in RESERVED_APPS and _is_level(app):
            if n == 2 and parts[1] == "status":
                return self._dec_peripheral_status(topic, app, payload)
            if n == 3 and parts[1] == "io-control":
                if parts[2] == "request":
                    return self._dec_io_forward(topic, app, payload)
                if parts[2] == "response":
                    return self._dec_io_response(topic, app, payload)
        raise ProtocolError(topic, None, "topic is not part of the contract",
                            kind="unknown-topic")

    def _unconfigured(self, topic: str, level: str) -> None:
        """Raise for a ``siteN`` level of an unconfigured site (N is not configured:
        configured ones never get here)."""
        if level.startswith("site") and len(level) > 4:
            site = level[4:]
            raise ProtocolError(topic, None, f"site {site} is not configured",
                                site=site, kind="site-not-configured")

    # -- ~/Master/cmd -----------------------------------------------------------
    def _dec_master_cmd(self, topic: str, _site: None, payload: bytes) -> Message:
        obj = _loads(topic, payload)
        ctype = obj.get("type", _MISSING)
        if type(ctype) is not str:
            ctx = _Ctx(topic)
            if ctype is _MISSING:
                raise ctx.missing("type")
            raise ctx.wrong("type", "a string", ctype)
        decoder = self._cmd_decoders.get(ctype)
        if decoder is None:
            raise ProtocolError(topic, "type", f"unknown command {_short(ctype)}",
                                command=ctype, kind="unknown-command")
        return decoder(_Ctx(topic, command=ctype), obj)

    def _dec_load(self, ctx: _Ctx, obj: dict) -> Load:
        p = ctx.obj(obj, "payload", "payload")
        if "lot_number" in p or "lotnumber" not in p:
            return Load(ctx.str_(p, "lot_number", "payload.lot_number", nonempty=True))
        return Load(ctx.str_(p, "lotnumber", "payload.lotnumber", nonempty=True))

    def _dec_next(self, ctx: _Ctx, obj: dict) -> Next:
        p = obj.get("payload")
        if p is None:
            return _NEXT_ALL
        if type(p) is not dict:
            raise ctx.wrong("payload", "an object", p)
        sites = p.get("sites")
        if sites is None:
            return _NEXT_ALL
        if type(sites) is not list:
            raise ctx.wrong("payload.sites", "a non-empty array of objects", sites)
        if not sites:
            raise ctx.error("payload.sites", "must not be empty")
        configured = self._site_set
        seen: set[str] = set()
        out = []
        for i, entry in enumerate(sites):
            if type(entry) is not dict:
                raise ctx.wrong(f"payload.sites[{i}]", "an object", entry)
            sid = entry.get("siteid", _MISSING)
            tsid = type(sid)
            if tsid is int:
                sid = str(sid)
            elif tsid is not str:
                if sid is _MISSING:
                    raise ctx.missing(f"payload.sites[{i}].siteid")
                raise ctx.wrong(f"payload.sites[{i}].siteid",
                                "a string or an integer", sid)
            if sid not in configured:
                ctx.site = sid
                raise ctx.error(f"payload.sites[{i}].siteid",
                                f"site {sid} is not configured",
                                kind="site-not-configured")
            if sid in seen:
                raise ctx.error(f"payload.sites[{i}].siteid",
                                f"site {sid} appears more than once")
            seen.add(sid)
            if entry.keys() <= _SITEINFO_KEYS:
                extra = ()
            else:
                extra = tuple((k, v) for k, v in entry.items()
                              if k not in _SITEINFO_KEYS)
            out.append(SiteInfo(sid, entry.get("partid"), entry.get("binning"),
                                entry.get("logflag"), entry.get("additionalinfo"),
                                extra))
        return Next(tuple(out))

    def _dec_site_layout(self, ctx: _Ctx, obj: dict) -> SiteLayout:
        p = ctx.obj(obj, "payload", "payload")
        if "sites" not in p:
            raise ctx.missing("payload.sites")
        return SiteLayout(ctx.layout(p["sites"], "payload.sites", len(self.sites)))

    # -- ~/Master/status, ~/Master/response ------------------------------------
    def _dec_master_status(self, topic: str, _site: None, payload: bytes) -> MasterStatus:
        obj = _loads(topic, payload)
        ctx = _Ctx(topic)
        p = obj.get("payload")
        if p is not None and type(p) is not dict:
            raise ctx.wrong("payload", "an object", p)
        state = obj.get("state", _MISSING)
        if state is _MISSING and p is not None:
            state = ctx.str_(p, "state", "payload.state")
        elif type(state) is not str:
            if state is _MISSING:
                raise ctx.missing("state")
            raise ctx.wrong("state", "a string", state)
        message = "" if p is None else ctx.opt_str(p, "message", "payload.message", "")
        return MasterStatus(state, message)

    def _dec_master_response(self, topic: str, _site: None, payload: bytes) -> Message:
        obj = _loads(topic, payload)
        ctx = _Ctx(topic)
        rtype = ctx.str_(obj, "type", "type")
        ctx.command = rtype
        if rtype == "error":
            return self._dec_error_response(ctx, obj)
        p = ctx.obj(obj, "payload", "payload")
        if rtype == "next":
            sites = ctx.list_(p, "sites", "payload.sites")
            out = []
            for i, e in enumerate(sites):
                path = f"payload.sites[{i}]"
                if type(e) is not dict:
                    raise ctx.wrong(path, "an object", e)
                sid = e.get("siteid", _MISSING)
                if type(sid) is int:
                    sid = str(sid)
                elif type(sid) is not str:
                    if sid is _MISSING:
                        raise ctx.missing(path + ".siteid")
                    raise ctx.wrong(path + ".siteid", "a string", sid)
                out.append(NextResult(sid, e.get("partid"),
                                      ctx.int_(e, "binning", path + ".binning"),
                                      e.get("logflag", 0), e.get("additionalinfo", 0)))
            return NextResponse(tuple(out))
        if rtype == "identify":
            return IdentifyResponse(ctx.str_(p, "name", "payload.name"))
        if rtype == "get-state":
            return GetStateResponse(ctx.str_(p, "state", "payload.state"),
                                    ctx.opt_str(p, "message", "payload.message", ""))
        if rtype == "get-host":
            return GetHostResponse(ctx.str_(p, "host", "payload.host"),
                                   ctx.int_(p, "port", "payload.port"))
        raise ctx.error("type", f"unknown response type {_short(rtype)}",
                        kind="unknown-command")

    def _dec_error_response(self, ctx: _Ctx, obj: dict) -> ErrorResponse:
        p = obj.get("payload")
        if p is not None and type(p) is not dict:
            raise ctx.wrong("payload", "an object", p)
        p = p or {}
        ctype = obj.get("command_type", p.get("command"))
        if type(ctype) is not str:
            raise ctx.wrong("command_type", "a string", ctype) if ctype is not None \
                else ctx.missing("command_type")
        ctx.command = ctype
        rtype = obj.get("response_type", p.get("response_type"))
        if type(rtype) is not str or rtype not in RESPONSE_TYPES:
            raise ctx.error("response_type", f"must be one of "
                            f"{', '.join(sorted(RESPONSE_TYPES))}, got {_short(rtype)}")
        state = obj.get("state", p.get("state"))
        if type(state) is not str:
            raise ctx.wrong("state", "a string", state) if state is not None \
                else ctx.missing("state")
        message = p.get("message")
        if type(message) is not str:
            message = obj.get("message")
            if type(message) is not str:
                message = ""
        return ErrorResponse(ctype, rtype, state, message)

    # -- ~/Control/cmd ------------------------------------------------------------
    def _dec_control_cmd(self, topic: str, _site: None, payload: bytes) -> Message:
        obj = _loads(topic, payload)
        ctx = _Ctx(topic)
        command = ctx.str_(obj, "command", "command")
        ctx.command = command
        sites = ctx.str_list(obj, "sites", "sites")
        if command == "loadTest":
            p = ctx.obj(obj, "testapp_params", "testapp_params")
            path = "testapp_params."
            args = (ctx.str_list(p, "testapp_script_args", path + "testapp_script_args")
                    if "testapp_script_args" in p else ())
            bins: dict[str, list[str]] = {}
            if "bin_table" in p:
                table = ctx.obj(p, "bin_table", path + "bin_table")
                for hbin, sbins in table.items():
                    bins[hbin] = list(ctx.str_list(table, hbin, f"{path}bin_table.{hbin}"))
            return ControlLoadTest(
                sites,
                ctx.str_(p, "testapp_script_path", path + "testapp_script_path",
                         nonempty=True),
                args,
                ctx.str_(p, "cwd", path + "cwd"),
                bins,
            )
        if command == "reset":
            return ControlReset(sites)
        if command == "setloglevel":
            return ControlSetLogLevel(sites, ctx.int_(obj, "level", "level"))
        raise ctx.error("command", f"unknown Control command {_short(command)}",
                        kind="unknown-command")

    # -- ~/TestApp/cmd ----------------------------------------------------------
    def _dec_testapp_cmd(self, topic: str, _site: None, payload: bytes) -> Message:
        obj = _loads(topic, payload)
        ctx = _Ctx(topic)
        command = ctx.str_(obj, "command", "command")
        ctx.command = command
        if command == "setparameter" and "sites" not in obj:
            sites: tuple[str, ...] = ()
        else:
            sites = ctx.str_list(obj, "sites", "sites")
        if command == "next":
            job = ctx.obj(obj, "job_data", "job_data")
            info = ctx.list_(job, "sites_info", "job_data.sites_info")
            for i, e in enumerate(info):
                if type(e) is not dict:
                    raise ctx.wrong(f"job_data.sites_info[{i}]", "an object", e)
            return TestAppNext(sites, job)
        if command == "terminate":
            return TestAppTerminate(sites)
        if command == "reset":
            return TestAppReset(sites)
        if command == "setloglevel":
            return TestAppSetLogLevel(sites, ctx.int_(obj, "level", "level"))
        if command == "getexecutionstrategy":
            if "layout" not in obj:
                raise ctx.missing("layout")
            return TestAppGetExecutionStrategy(sites, ctx.layout(obj["layout"], "layout"))
        if command == "sethbin":
            return TestAppSetHBin(sites, ctx.str_(obj, "sbin", "sbin"),
                                  ctx.str_(obj, "hbin", "hbin"))
        if command == "setparameter":
            params = ctx.list_(obj, "parameters", "parameters")
            for i, e in enumerate(params):
                if type(e) is not dict:
                    raise ctx.wrong(f"parameters[{i}]", "an object", e)
            return TestAppSetParameter(sites, tuple(params))
        raise ctx.error("command", f"unknown TestApp command {_short(command)}",
                        kind="unknown-command")

    # -- site messages ----------------------------------------------------------
    def _dec_control_status(self, topic: str, site: str, payload: bytes) -> ControlStatus:
        obj = _loads(topic, payload, site)
        version = obj.get("interface_version", _MISSING)
        if not ((version == 1 and type(version) is int) or version == "1"):
            what = "missing" if version is _MISSING else f"{_short(version)}"
            raise ProtocolError(
                topic, "interface_version",
                f"site {site}: Control interface version {what} not supported",
                site=site, kind="interface-version")
        ctx = _Ctx(topic, site=site)
        p = ctx.obj(obj, "payload", "payload")
        state = p.get("state")
        if type(state) is not str or state not in CONTROL_STATES:
            raise ctx.error("payload.state", f"unknown Control state {_short(state)}")
        message = p.get("error_message")
        if type(message) is not str:
            if message is not None:
                raise ctx.wrong("payload.error_message", "a string", message)
            message = ""
        return ControlStatus(site, state, message, 1)

    def _dec_testapp_status(self, topic: str, site: str, payload: bytes) -> TestAppStatus:
        obj = _loads(topic, payload, site)
        top = obj.get("state")
        if top == "crash":
            return TestAppStatus(site, "crash")
        ctx = _Ctx(topic, site=site)
        p = obj.get("payload")
        if type(p) is dict:
            state = p.get("state", _MISSING)
            if state == 0 and type(state) is int:
                return TestAppStatus(site, "crash")
            if state is _MISSING:
                state = top
        elif p is None:
            state = top
        else:
            raise ctx.wrong("payload", "an object", p)
        if type(state) is not str or state not in TESTAPP_STATES:
            raise ctx.error("payload.state", f"unknown TestApp state {_short(state)}")
        return TestAppStatus(site, state)

    def _dec_testresult(self, topic: str, site: str, payload: bytes) -> TestResult:
        obj = _loads(topic, payload, site)
        recs = obj.get("payload", _MISSING)
        ctx = _Ctx(topic, site=site)
        if type(recs) is not list:
            if recs is _MISSING:
                raise ctx.missing("payload")
            raise ctx.wrong("payload", "an array of records", recs)
        last = len(recs) - 1
        if last < 0:
            raise ctx.error("payload", "has no records (needs exactly one PRR, last)")
        for i, rec in enumerate(recs):
            if type(rec) is not dict:
                raise ctx.wrong(f"payload[{i}]", "a record object", rec)
            name = _record_name(rec)
            if name is None:
                raise ctx.error(f"payload[{i}]", "record has no string type or rec_id")
            if name == "PRR":
                if i != last:
                    raise ctx.error(f"payload[{i}]",
                                    "PRR must be the single, last record")
            elif i == last:
                raise ctx.error("payload", "the last record must be the PRR, "
                                f"got {_short(name)}")
        prr = recs[last]
        for key in _PRR_BINS:
            value = prr.get(key)
            # the handler gets these bins: one STDF cannot hold is refused here (3.8),
            # before any response; other fields are made writable by the datalog
            if value is not None and (type(value) is not int or not 0 <= value <= 65535):
                raise ctx.error(f"payload[{last}].{key}",
                                f"PRR {key} must be an integer 0..65535 (STDF U*2), "
                                f"got {_json_short(value)}")
        return TestResult(site, tuple(recs))

    def _dec_testsummary(self, topic: str, site: str, payload: bytes) -> TestSummary:
        obj = _loads(topic, payload, site)
        ctx = _Ctx(topic, site=site)
        recs = ctx.list_(obj, "payload", "payload")
        for i, rec in enumerate(recs):
            if type(rec) is not dict:
                raise ctx.wrong(f"payload[{i}]", "a TSR record object", rec)
            name = _record_name(rec)
            if name != "TSR":
                raise ctx.error(f"payload[{i}]",
                                f"must be a TSR record, got {_short(name)}")
        return TestSummary(site, tuple(recs))

    def _dec_strategy(self, topic: str, site: str, payload: bytes) -> ExecutionStrategy:
        obj = _loads(topic, payload, site)
        ctx = _Ctx(topic, site=site)
        tests = ctx.list_(obj, "payload", "payload")
        out = []
        for t, stages in enumerate(tests):
            if type(stages) is not list:
                raise ctx.wrong(f"payload[{t}]", "an array of stages", stages)
            tstages = []
            for s, ids in enumerate(stages):
                if type(ids) is not list:
                    raise ctx.wrong(f"payload[{t}][{s}]", "an array of site ids", ids)
                sids = []
                for k, sid in enumerate(ids):
                    if type(sid) is int:
                        sid = str(sid)
                    elif type(sid) is not str:
                        raise ctx.wrong(f"payload[{t}][{s}][{k}]", "a site id string", sid)
                    sids.append(sid)
                tstages.append(tuple(sids))
            out.append(tuple(tstages))
        return ExecutionStrategy(site, tuple(out))

    def _dec_log(self, app: str, topic: str, site: str, payload: bytes) -> LogLine:
        obj = _loads(topic, payload, site)
        return LogLine(app, site, _Ctx(topic, site=site).str_(obj, "payload", "payload"))

    def _dec_control_log(self, topic: str, site: str, payload: bytes) -> LogLine:
        return self._dec_log("Control", topic, site, payload)

    def _dec_testapp_log(self, topic: str, site: str, payload: bytes) -> LogLine:
        return self._dec_log("TestApp", topic, site, payload)

    def _dec_io_request(self, topic: str, site: str, payload: bytes) -> IoControlRequest:
        obj = _loads(topic, payload, site)
        ctx = _Ctx(topic, site=site)
        ptype = ctx.str_(obj, "periphery_type", "periphery_type")
        if not _is_level(ptype):
            raise ctx.error("periphery_type",
                            f"{_short(ptype)} cannot name a peripheral topic")
        return IoControlRequest(site, ptype, ctx.str_(obj, "ioctl_name", "ioctl_name"),
                                obj.get("parameters"))

    # -- peripherals ------------------------------------------------------------
    def _dec_io_forward(self, topic: str, ptype: str, payload: bytes) -> IoControlForward:
        obj = _loads(topic, payload)
        ctx = _Ctx(topic)
        return IoControlForward(ptype, ctx.str_(obj, "ioctl_name", "ioctl_name"),
                                obj.get("parameters"))

    def _dec_io_response(self, topic: str, ptype: str, payload: bytes) -> IoControlResponse:
        return IoControlResponse(ptype, _loads(topic, payload))

    def _dec_relay(self, topic: str, ptype: str, payload: bytes) -> PeripheralResponseRelay:
        return PeripheralResponseRelay(ptype, _loads(topic, payload))

    def _dec_peripheral_status(self, topic: str, ptype: str,
                               payload: bytes) -> PeripheralStatus:
        obj = _loads(topic, payload)
        return PeripheralStatus(ptype, _Ctx(topic).str_(obj, "status", "status"))

    # -- handler application ----------------------------------------------------
    def _dec_handler_status(self, topic: str, _site: None, payload: bytes) -> HandlerStatus:
        obj = _loads(topic, payload)
        ctx = _Ctx(topic)
        p = ctx.obj(obj, "payload", "payload")
        return HandlerStatus(self.handler_id, ctx.str_(p, "state", "payload.state"),
                             ctx.opt_str(p, "message", "payload.message", ""))

    def _dec_handler_command(self, topic: str, _site: None, payload: bytes) -> HandlerCommand:
        obj = _loads(topic, payload)
        ctx = _Ctx(topic)
        command = ctx.str_(obj, "type", "type")
        ctx.command = command
        return HandlerCommand(command, self._opt_obj(ctx, obj))

    def _dec_handler_response(self, topic: str, _site: None,
                              payload: bytes) -> HandlerResponse:
        obj = _loads(topic, payload)
        ctx = _Ctx(topic)
        rtype = ctx.str_(obj, "type", "type")
        return HandlerResponse(self._opt_obj(ctx, obj), rtype)

    @staticmethod
    def _opt_obj(ctx: _Ctx, obj: dict) -> dict:
        p = obj.get("payload")
        if p is None:
            return {}
        if type(p) is not dict:
            raise ctx.wrong("payload", "an object", p)
        return p

    # ------------------------------------------------------------------ encode
    def encode(self, msg: Message) -> tuple[str, bytes]:
        """Return ``(topic, payload)`` for ``msg``, ready to publish."""
        encoder = self._encoders.get(type(msg))
        if encoder is None:
            raise TypeError(f"cannot encode {type(msg).__name__}: not a protocol message")
        try:
            return encoder(msg)
        except (TypeError, ValueError) as e:
            kind = TypeError if isinstance(e, TypeError) else ValueError
            raise kind(f"cannot encode {type(msg).__name__}: {e}") from e

    def _site(self, site: str) -> tuple[str, ...]:
        topics = self._site_topics.get(site)
        if topics is None:
            topics = self._make_site_topics(site)
        return topics

    # handler commands
    def _enc_load(self, m: Load) -> tuple[str, bytes]:
        p = {"lot_number": m.lot_number}
        if m.devicetype is not None:
            p["devicetype"] = m.devicetype
        if m.temperature is not None:
            p["temperature"] = m.temperature
        return self.topics.master_cmd, dumps({"type": "load", "payload": p})

    def _enc_next(self, m: Next) -> tuple[str, bytes]:
        p = {} if m.sites is None else {"sites": [s.to_wire() for s in m.sites]}
        return self.topics.master_cmd, dumps({"type": "next", "payload": p})

    def _enc_unload(self, m: Unload) -> tuple[str, bytes]:
        return self.topics.master_cmd, dumps(
            {"type": "endlot" if m.alias else "unload", "payload": {}})

    def _enc_simple(self, m: Message) -> tuple[str, bytes]:
        return self.topics.master_cmd, dumps(
            {"type": _SIMPLE_TYPES[type(m)], "payload": {}})

    def _enc_site_layout(self, m: SiteLayout) -> tuple[str, bytes]:
        return self.topics.master_cmd, dumps(
            {"type": "site-layout", "payload": {"sites": [list(p) for p in m.layout]}})

    # master responses and status
    def _enc_next_response(self, m: NextResponse) -> tuple[str, bytes]:
        sites = [{"siteid": r.siteid, "partid": r.partid, "binning": r.binning,
                  "logflag": r.logflag, "additionalinfo": r.additionalinfo}
                 for r in m.sites]
        return self.topics.master_response, dumps(
            {"type": "next", "payload": {"sites": sites}})

    def _enc_identify_response(self, m: IdentifyResponse) -> tuple[str, bytes]:
        return self.topics.master_response, dumps(
            {"type": "identify", "payload": {"name": m.name}})

    def _enc_get_state_response(self, m: GetStateResponse) -> tuple[str, bytes]:
        return self.topics.master_response, dumps(
            {"type": "get-state", "payload": {"state": m.state, "message": m.message}})

    def _enc_get_host_response(self, m: GetHostResponse) -> tuple[str, bytes]:
        return self.topics.master_response, dumps(
            {"type": "get-host", "payload": {"host": m.host, "port": m.port}})

    def _enc_error_response(self, m: ErrorResponse) -> tuple[str, bytes]:
        if m.response_type not in RESPONSE_TYPES:
            raise ValueError(f"response_type {m.response_type!r} is not one of "
                             f"{', '.join(sorted(RESPONSE_TYPES))}")
        message = m.message if type(m.message) is str else ""
        return self.topics.master_response, dumps({
            "type": "error", "command_type": m.command_type,
            "response_type": m.response_type, "state": m.state,
            "message": message if m.response_type == "error" else None,
            "payload": {"command": m.command_type, "response_type": m.response_type,
                        "state": m.state, "message": message},
        })

    def _enc_master_status(self, m: MasterStatus) -> tuple[str, bytes]:
        return self.topics.master_status, dumps({
            "type": "status", "interface_version": 1, "state": m.state,
            "payload": {"state": m.state, "message": m.message},
        })

    # master -> Control apps
    def _enc_control_load(self, m: ControlLoadTest) -> tuple[str, bytes]:
        bins = {} if m.bin_table is None else {
            str(h): list(s) for h, s in m.bin_table.items()}
        return self.topics.control_cmd, dumps({
            "type": "cmd", "command": "loadTest", "sites": list(m.sites),
            "testapp_params": {
                "testapp_script_path": m.script_path,
                "testapp_script_args": list(m.script_args),
                "cwd": m.cwd, "bin_table": bins,
            },
        })

    def _enc_control_reset(self, m: ControlReset) -> tuple[str, bytes]:
        return self.topics.control_cmd, dumps(
            {"type": "cmd", "command": "reset", "sites": list(m.sites)})

    def _enc_control_loglevel(self, m: ControlSetLogLevel) -> tuple[str, bytes]:
        return self.topics.control_cmd, dumps(
            {"type": "cmd", "command": "setloglevel", "sites": list(m.sites),
             "level": m.level})

    # master -> TestApps
    def _enc_testapp_next(self, m: TestAppNext) -> tuple[str, bytes]:
        return self.topics.testapp_cmd, dumps(
            {"type": "cmd", "command": "next", "sites": list(m.sites),
             "job_data": m.job_data})

    def _enc_testapp_terminate(self, m: TestAppTerminate) -> tuple[str, bytes]:
        return self.topics.testapp_cmd, dumps(
            {"type": "cmd", "command": "terminate", "sites": list(m.sites)})

    def _enc_testapp_reset(self, m: TestAppReset) -> tuple[str, bytes]:
        return self.topics.testapp_cmd, dumps(
            {"type": "cmd", "command": "reset", "sites": list(m.sites)})

    def _enc_testapp_loglevel(self, m: TestAppSetLogLevel) -> tuple[str, bytes]:
        return self.topics.testapp_cmd, dumps(
            {"type": "cmd", "command": "setloglevel", "sites": list(m.sites),
             "level": m.level})

    def _enc_testapp_strategy(self, m: TestAppGetExecutionStrategy) -> tuple[str, bytes]:
        return self.topics.testapp_cmd, dumps(
            {"type": "cmd", "command": "getexecutionstrategy", "sites": list(m.sites),
             "layout": [list(p) for p in m.layout]})

    def _enc_testapp_sethbin(self, m: TestAppSetHBin) -> tuple[str, bytes]:
        return self.topics.testapp_cmd, dumps(
            {"type": "cmd", "command": "sethbin", "sites": list(m.sites),
             "sbin": m.sbin, "hbin": m.hbin})

    def _enc_testapp_setparameter(self, m: TestAppSetParameter) -> tuple[str, bytes]:
        return self.topics.testapp_cmd, dumps(
            {"type": "cmd", "command": "setparameter", "sites": list(m.sites),
             "parameters": list(m.parameters)})

    # sites -> master (used by the simulated sites)
    def _enc_control_status(self, m: ControlStatus) -> tuple[str, bytes]:
        return self._site(m.site)[0], dumps({
            "type": "status", "interface_version": m.interface_version,
            "software_version": 1,
            "payload": {"state": m.state, "error_message": m.error_message},
        })

    def _enc_testapp_status(self, m: TestAppStatus) -> tuple[str, bytes]:
        if m.state == "crash":
            body = {"type": "status", "framework_version": 1, "test_version": "N/A",
                    "payload": {"state": 0}, "state": "crash"}
        else:
            body = {"type": "status", "framework_version": 1, "test_version": "N/A",
                    "payload": {"state": m.state, "message": ""}, "state": m.state}
        return self._site(m.site)[2], dumps(body)

    def _enc_testresult(self, m: TestResult) -> tuple[str, bytes]:
        return self._site(m.site)[3], dumps(
            {"type": "testresult", "payload": m.records})

    def _enc_testsummary(self, m: TestSummary) -> tuple[str, bytes]:
        return self._site(m.site)[4], dumps(
            {"type": "testresult", "payload": m.records})

    def _enc_strategy(self, m: ExecutionStrategy) -> tuple[str, bytes]:
        return self._site(m.site)[5], dumps(
            {"type": "execution_strategy", "payload": m.strategy})

    def _enc_log(self, m: LogLine) -> tuple[str, bytes]:
        if m.app == "Control":
            topic = self._site(m.site)[1]
        elif m.app == "TestApp":
            topic = self._site(m.site)[6]
        else:
            raise ValueError(f"LogLine.app must be 'Control' or 'TestApp', got {m.app!r}")
        return topic, dumps({"type": "log", "payload": m.line})

    def _enc_io_request(self, m: IoControlRequest) -> tuple[str, bytes]:
        return self._site(m.site)[7], dumps(
            {"type": "io-control-request", "periphery_type": m.periphery_type,
             "ioctl_name": m.ioctl_name, "parameters": m.parameters})

    # peripherals
    def _enc_io_forward(self, m: IoControlForward) -> tuple[str, bytes]:
        return self.topics.peripheral_request(m.periphery_type), dumps(
            {"type": "io-control-request", "ioctl_name": m.ioctl_name,
             "parameters": m.parameters})

    def _enc_io_response(self, m: IoControlResponse) -> tuple[str, bytes]:
        return self.topics.peripheral_response(m.periphery_type), dumps(m.payload)

    def _enc_relay(self, m: PeripheralResponseRelay) -> tuple[str, bytes]:
        return self.topics.master_peripheral_response(m.periphery_type), dumps(m.payload)

    def _enc_peripheral_status(self, m: PeripheralStatus) -> tuple[str, bytes]:
        return self.topics.peripheral_status(m.periphery_type), dumps(
            {"type": "status", "status": m.status})

    # handler application
    def _handler_topic(self, which: str) -> str:
        topic = getattr(self.topics, which)
        if topic is None:
            raise ValueError(f"no handler_id given to the Codec, {which} unknown")
        return topic

    def _enc_handler_status(self, m: HandlerStatus) -> tuple[str, bytes]:
        if m.handler_id != self.handler_id:
            raise ValueError(f"handler_id {m.handler_id!r} is not this codec's "
                             f"{self.handler_id!r}")
        return self._handler_topic("handler_status"), dumps(
            {"type": "status", "payload": {"state": m.state, "message": m.message}})

    def _enc_handler_command(self, m: HandlerCommand) -> tuple[str, bytes]:
        return self.topics.handler_command, dumps(
            {"type": m.command, "payload": {} if m.payload is None else m.payload})

    def _enc_handler_response(self, m: HandlerResponse) -> tuple[str, bytes]:
        return self._handler_topic("handler_response"), dumps(
            {"type": m.response_type, "payload": {} if m.payload is None else m.payload})


def _ignore(topic: str, site: str | None, payload: bytes) -> None:
    """Decoder of topics the contract lists as unused."""
    return None


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
