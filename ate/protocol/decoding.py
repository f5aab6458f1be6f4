"""Decoding MQTT messages into the message kinds (the codec's decode half)."""

from __future__ import annotations

from typing import Any, Callable, cast

from ate.protocol.errors import ProtocolError
from ate.protocol.kinds import (
    _NEXT_ALL,
    _SITEINFO_KEYS,
    CONTROL_STATES,
    RESPONSE_TYPES,
    TESTAPP_STATES,
    ControlLoadTest,
    ControlReset,
    ControlSetLogLevel,
    ControlStatus,
    ErrorResponse,
    ExecutionStrategy,
    GetHostResponse,
    GetStateResponse,
    HandlerCommand,
    HandlerResponse,
    HandlerStatus,
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
)
from ate.protocol.reading import (
    _MISSING,
    _PRR_BINS,
    _Ctx,
    _is_level,
    _json_short,
    _loads,
    _record_name,
    _short,
)
from ate.protocol.topics import RESERVED_APPS

# the site argument is None for the fixed topics and a site id for the per-site ones
_Decoder = Callable[[str, Any, bytes], "Message | None"]

# Sub-topics below ~/TestApp/ and ~/Control/ that carry a site (siteN last).
_TESTAPP_SITE_SUBTOPICS = ("status", "testresult", "testsummary",
                           "execution_strategy", "log")
_CONTROL_SITE_SUBTOPICS = ("status", "log")
# Known TestApp sub-topics; any other one is ignored (3.8 last row).
_TESTAPP_KNOWN = frozenset(_TESTAPP_SITE_SUBTOPICS + ("cmd", "io-control"))
# The TestApp status memo: payloads up to this size, at most this many (then it starts over)
_MEMO_PAYLOAD = 512
_MEMO_ENTRIES = 4096


def _ignore(topic: str, site: str | None, payload: bytes) -> None:
    """Decoder of topics the contract lists as unused."""
    return None


class Decoding:
    """The decoding half of :class:`ate.protocol.messages.Codec`: one method per topic
    and command; the tables that pick them are built by ``Codec.__init__``."""

    # set by ``Codec.__init__``
    device_id: str
    handler_id: str | None
    sites: tuple[str, ...]
    _site_set: frozenset[str]
    _prefix: str
    _fixed: dict[str, tuple[_Decoder, str | None]]
    _cmd_decoders: dict[str, Callable[[_Ctx, dict], Message]]
    _status_memo: dict[tuple[str, bytes], TestAppStatus]

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
            extra: tuple[tuple[str, Any], ...]
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

    def _dec_master_alarm(self, topic: str, _site: None, payload: bytes) -> MasterAlarm:
        """``~/Master/alarm`` (§15.2), for floor subscribers and tests: the payload as is."""
        obj = _loads(topic, payload)
        return MasterAlarm(_Ctx(topic).obj(obj, "payload", "payload"))

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
                for hbin in table:
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
        # A TestApp publishes the same few payloads over and over (testing, idle: two per
        # part and site): a repeat decodes to the same immutable message, kept here
        if type(payload) is not bytes or len(payload) > _MEMO_PAYLOAD:
            return self._testapp_status(topic, site, payload)
        memo = self._status_memo
        key = (site, payload)
        msg = memo.get(key)
        if msg is None:
            msg = self._testapp_status(topic, site, payload)  # raises for a bad one
            if len(memo) >= _MEMO_ENTRIES:
                memo.clear()
            memo[key] = msg
        return msg

    def _testapp_status(self, topic: str, site: str, payload: bytes) -> TestAppStatus:
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
        # only listed in the topic table when handler_id is set
        return HandlerStatus(cast(str, self.handler_id), ctx.str_(p, "state", "payload.state"),
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
