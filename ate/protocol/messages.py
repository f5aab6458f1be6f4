"""Typed messages of the wire contract and the codec that maps them to MQTT.

:class:`Codec` turns ``(topic, payload bytes)`` into one of the frozen
dataclasses below (validating every field it reads) and back. One codec
serves the master, the simulated sites and the handler application, so every
message kind is decoded on its topic, including the master's own
publications; callers drop what they do not want.

Section numbers refer to ``protocol.md``. No Twisted here: this module is
pure and is imported by everything else.  The message kinds live in
:mod:`ate.protocol.kinds`, the decode and encode halves of the codec in
:mod:`ate.protocol.decoding` and :mod:`ate.protocol.encoding` (JSON reading
helpers in :mod:`ate.protocol.reading`); every public name is re-exported here.

Conventions:

- Lists on the wire become tuples; objects that are passed through (job data,
  STDF records, io-control parameters, ...) stay dicts, and such fields are
  excluded from hashing.
- Values that the master passes through unchanged (``partid``, ``binning``,
  ``logflag``, ``additionalinfo``, records) are kept exactly as decoded,
  including ``NaN``/``Infinity`` floats.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, cast

from ate.protocol.decoding import Decoding, _Decoder, _ignore
from ate.protocol.encoding import Encoding
from ate.protocol.kinds import (
    _ENDLOT,
    _GETHOST,
    _GETSTATE,
    _IDENTIFY,
    _RESET,
    _UNLOAD,
    CONTROL_STATES,
    HANDLER_COMMANDS,
    MESSAGE_TYPES,
    RESPONSE_TYPES,
    TESTAPP_STATES,
    ControlLoadTest,
    ControlReset,
    ControlSetLogLevel,
    ControlStatus,
    ErrorResponse,
    ExecutionStrategy,
    GetHost,
    GetHostResponse,
    GetState,
    GetStateResponse,
    HandlerCommand,
    HandlerResponse,
    HandlerStatus,
    Identify,
    IdentifyResponse,
    IoControlForward,
    IoControlRequest,
    IoControlResponse,
    Load,
    LogLine,
    MasterAlarm,
    MasterStatus,
    Message,
    Next,
    NextResponse,
    NextResult,
    PeripheralResponseRelay,
    PeripheralStatus,
    Reset,
    SiteInfo,
    SiteLayout,
    TestAppGetExecutionStrategy,
    TestAppNext,
    TestAppReset,
    TestAppSetHBin,
    TestAppSetLogLevel,
    TestAppSetParameter,
    TestAppStatus,
    TestAppTerminate,
    TestResult,
    TestSummary,
    Unload,
    dumps,
)
from ate.protocol.reading import MAX_JSON_DEPTH, _Ctx, json_too_deep
from ate.protocol.topics import Topics

__all__ = [
    # handler -> master
    "Load", "Next", "SiteInfo", "Unload", "Reset", "Identify", "GetState",
    "SiteLayout", "GetHost",
    # master -> handler
    "NextResponse", "NextResult", "IdentifyResponse", "GetStateResponse",
    "GetHostResponse", "ErrorResponse", "MasterStatus", "MasterAlarm",
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


class Codec(Decoding, Encoding):
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
            t.master_alarm: (self._dec_master_alarm, None),
            t.master_response: (self._dec_master_response, None),
            t.master_job: (_ignore, None),
            t.master_peripherystate: (_ignore, None),
            t.control_cmd: (self._dec_control_cmd, None),
            t.testapp_cmd: (self._dec_testapp_cmd, None),
            t.handler_command: (self._dec_handler_command, None),
        }
        if handler_id is not None:
            # both are set when handler_id is
            fixed[cast(str, t.handler_status)] = (self._dec_handler_status, None)
            fixed[cast(str, t.handler_response)] = (self._dec_handler_response, None)
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
        self._status_memo = {}  # (site, payload) -> TestAppStatus, see _dec_testapp_status

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
            MasterAlarm: self._enc_master_alarm,
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
