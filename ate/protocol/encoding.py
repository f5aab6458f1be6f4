"""Encoding the message kinds into ``(topic, payload)`` (the codec's encode half)."""

from __future__ import annotations

from typing import Any, Callable

from ate.protocol.kinds import (
    _SIMPLE_TYPES,
    RESPONSE_TYPES,
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
    PeripheralResponseRelay,
    PeripheralStatus,
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
from ate.protocol.topics import Topics


class Encoding:
    """The encoding half of :class:`ate.protocol.messages.Codec`: one method per message
    kind; the table that picks them is built by ``Codec.__init__``."""

    # set by ``Codec.__init__``
    topics: Topics
    handler_id: str | None
    _encoders: dict[type, Callable[[Any], tuple[str, bytes]]]
    _site_topics: dict[str, tuple[str, ...]]
    _make_site_topics: Callable[[str], tuple[str, ...]]

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

    def _enc_master_alarm(self, m: MasterAlarm) -> tuple[str, bytes]:
        return self.topics.master_alarm, dumps({"type": "alarm", "payload": dict(m.payload)})

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
