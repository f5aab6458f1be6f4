"""MQTT messages into cell inputs.

Decodes every payload with the protocol codec, drops our own echoes, logs and counts bad
input, answers malformed handler commands with an error response, and calls exactly one
cell input per message.  It uses only the cell's public inputs (``knows_control_state``
for the echo skip, ``answer_bad_command`` for a malformed handler command).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

from twisted.logger import Logger

from ate.master.logs import relay_remote_line
from ate.protocol import messages as m
from ate.protocol.errors import ProtocolError

if TYPE_CHECKING:
    from ate.master.cell import Cell

_Records = Sequence[dict]  # a decoded result's records (JSON objects)

_ECHOES = (
    m.MasterStatus, m.NextResponse, m.IdentifyResponse, m.GetStateResponse,
    m.GetHostResponse, m.ErrorResponse, m.ControlLoadTest, m.ControlReset,
    m.ControlSetLogLevel, m.TestAppNext, m.TestAppTerminate, m.TestAppReset,
    m.TestAppSetLogLevel, m.TestAppGetExecutionStrategy, m.TestAppSetHBin,
    m.TestAppSetParameter, m.IoControlForward, m.PeripheralResponseRelay,
    m.HandlerCommand, m.HandlerResponse,
)

_COMMANDS = (m.Load, m.Next, m.Unload, m.Reset, m.Identify, m.GetState, m.GetHost, m.SiteLayout)


def _excerpt(payload: bytes, limit: int = 200) -> str:
    text = payload[:limit].decode("utf-8", "replace")
    return text + ("…" if len(payload) > limit else "")


# module level: a Logger that is a class attribute takes the class's name as namespace
_remote_log = Logger(namespace="ate.remote")


class Router:
    log = Logger(namespace="ate.master.router")

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.codec = cell.codec
        handlers: dict[type, Callable[[Any], None]] = {
            m.ControlStatus: self._control_status,
            m.TestAppStatus: self._testapp_status,
            m.TestResult: self._test_result,
            m.TestSummary: lambda msg: cell.test_summary(msg.site, msg.records),
            m.ExecutionStrategy: lambda msg: cell.execution_strategy(msg.site, msg.strategy),
            m.LogLine: self._log_line,
            m.IoControlRequest: lambda msg: cell.io_request(
                msg.site, msg.periphery_type, msg.ioctl_name, msg.parameters),
            m.IoControlResponse: lambda msg: cell.io_response(msg.periphery_type, msg.payload),
            m.PeripheralStatus: lambda msg: cell.peripheral_status(msg.periphery_type, msg.status),
            m.HandlerStatus: lambda msg: cell.handler_status(msg.state, msg.message),
        }
        for kind in _COMMANDS:
            handlers[kind] = cell.handle_command
        for echo in _ECHOES:
            handlers[echo] = _drop
        self._handlers = handlers
        self._echoes: dict[str, tuple[bytes, str, str]] = {}

    def received(self, topic: str, payload: bytes) -> None:
        """paho's on_message, on the reactor thread."""
        echo = self._echoes.get(topic)
        if echo is not None and echo[0] == payload and \
                self.cell.knows_control_state(echo[1], echo[2]):
            # Control apps re-publish their state on every Master/status (protocol §2.5):
            # the same bytes while the master still knows that state are a no-op
            return
        try:
            msg = self.codec.decode(topic, payload)
        except ProtocolError as e:
            self._bad(e, payload)
            return
        if msg is None:
            self.log.debug("ignored message on {topic}", topic=topic)
            return
        if type(msg) is m.ControlStatus:
            self._control_status(msg)
            if self.cell.knows_control_state(msg.site, msg.state):
                self._echoes[topic] = (payload, msg.site, msg.state)
            return
        if type(msg) is m.TestResult:  # the hot path; its size bounds what the UI keeps
            # decoded JSON objects: dicts, the datalog's type
            self.cell.test_result(msg.site, cast(_Records, msg.records), len(payload))
            return
        handler = self._handlers.get(type(msg))
        if handler is None:
            self.log.debug("no handler for {kind} on {topic}", kind=type(msg).__name__, topic=topic)
            return
        handler(msg)

    # ------------------------------------------------------------------------------

    def _control_status(self, msg: m.ControlStatus) -> None:
        self.cell.control_status(msg.site, msg.state, msg.error_message)



    def _testapp_status(self, msg: m.TestAppStatus) -> None:
        self.cell.testapp_status(msg.site, msg.state)

    def _test_result(self, msg: m.TestResult) -> None:
        self.cell.test_result(msg.site, cast(_Records, msg.records))

    def _log_line(self, msg: m.LogLine) -> None:
        relay_remote_line(_remote_log, msg.app, msg.site, msg.line)
        if msg.app == "Control":
            self.cell.control_log(msg.site, msg.line)

    def _bad(self, error: ProtocolError, payload: bytes) -> None:
        cell = self.cell
        cell.metrics.count_protocol_error(error.kind)
        kind = error.kind
        if kind == "site-not-configured" and error.command is None:
            self.log.warn("{error}; ignored", error=str(error))
            return
        if kind == "interface-version" and error.site is not None:
            self.log.error("{error}", error=str(error))
            cell.interface_mismatch(error.site, error.reason)
            return
        if kind == "malformed" and error.site is not None and "/testresult/" in error.topic:
            self.log.error("{error}", error=str(error))
            cell.malformed_result(error.site, error.reason)
            return
        self.log.error("bad message: {error} (payload {excerpt})", error=str(error),
                       excerpt=_excerpt(payload))
        if error.command is not None and error.topic.endswith("/Master/cmd"):
            # a handler command we could not accept: answer it, change nothing
            where = f"{error.field}: " if error.field else ""
            cell.answer_bad_command(error.command,
                                    f"{error.command} refused: {where}{error.reason}")


def _drop(msg: Any) -> None:
    """Our own publications echo back (protocol.md §1.2): ignore them."""
