"""The Geringer line protocol over a Twisted transport (protocol.md 13.4).

:class:`GeringerLineProtocol` frames lines, answers bad ones itself
(``TS|-1|checksum error|``, ``TS|-99|Not Implemented|`` or ``TS|-1|<reason>|``
for malformed fields), counts them and never stops reading; good lines go to
the :class:`~ate.handler.drivers.RequestSink`.

:class:`LineDriver` is a service that owns the connection to the device, in
one of three ways:

* ``serial=SerialOptions(port, ...)``: a serial port through
  ``twisted.internet.serialport`` (needs pyserial);
* ``client="tcp:host:port"``: a client endpoint string, reconnected with
  ``ClientService`` (config key ``serial``);
* ``server="tcp:5000:interface=127.0.0.1"``: a server endpoint string; the
  latest accepted connection is the device (config key ``listen``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, ITransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from ate.handler import lineproto as lp
from ate.handler.drivers import RequestSink

__all__ = ["SerialOptions", "GeringerLineProtocol", "LineDriver", "PARITIES"]

PARITIES = ("N", "E", "O", "M", "S")


@dataclass(frozen=True)
class SerialOptions:
    """The serial line options of protocol.md 12.2 (reference defaults)."""

    port: str
    baudrate: int = 115200
    timeout: float = 0.2
    parity: str = "N"
    bytesize: int = 8
    stopbits: float = 1

    def __post_init__(self) -> None:
        if not self.port:
            raise ValueError("serial port: must not be empty")
        if self.baudrate <= 0:
            raise ValueError(f"--baudrate: must be positive, got {self.baudrate}")
        if self.timeout < 0:
            raise ValueError(f"--timeout: must not be negative, got {self.timeout}")
        if self.parity not in PARITIES:
            raise ValueError(f"--parity: must be one of {', '.join(PARITIES)}, got {self.parity!r}")
        if self.bytesize not in (5, 6, 7, 8):
            raise ValueError(f"--bytesize: must be 5, 6, 7 or 8, got {self.bytesize}")
        if self.stopbits not in (1, 1.5, 2):
            raise ValueError(f"--stopbits: must be 1, 1.5 or 2, got {self.stopbits}")


class GeringerLineProtocol(LineReceiver):
    """One connection to the handler device."""

    transport: ITransport  # set by makeConnection, before any line is sent or received
    delimiter = b"\n"
    MAX_LENGTH = lp.MAX_LINE
    log = Logger(namespace="ate.handler.line")

    def __init__(self, sink: RequestSink, driver: "LineDriver | None" = None) -> None:
        self.sink = sink
        self.driver = driver
        #: bad lines in a row (reset by a good line) and in total
        self.errors_in_row = 0
        self.errors = 0
        self.lines = 0

    def connectionMade(self) -> None:
        self.log.info("handler device connected: {peer}", peer=self._peer())
        if self.driver is not None:
            self.driver._connected(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.log.info("handler device disconnected: {reason}",
                      reason=reason.getErrorMessage() if reason else "")
        if self.driver is not None:
            self.driver._lost(self)

    def _peer(self) -> str:
        try:
            return str(self.transport.getPeer())
        except Exception:
            return "?"

    def send(self, msg: lp.Reply) -> None:
        """Write one message as a line."""
        line = lp.format_line(msg)
        self.log.debug("line out: {line}", line=line)
        self.transport.write(line.encode("ascii", "replace") + b"\n")

    def lineReceived(self, data: bytes) -> None:
        try:
            self._line(data.decode("ascii", "replace").strip())
        except Exception:
            self.log.failure("handling a line from the handler device failed")

    def _line(self, line: str) -> None:
        self.lines += 1
        self.log.debug("line in: {line}", line=line)
        try:
            req = lp.parse_request(line)
        except lp.LineError as e:
            self._bad(line, e.reason, e.reply)
            return
        if req is None:
            self.log.info("line ignored (no '|' or no checksum): {line!r}", line=line)
            return
        self.errors_in_row = 0
        self.sink.line_request(req)

    def _bad(self, line: str, reason: str, reply: lp.TestStatus) -> None:
        self.errors += 1
        self.errors_in_row += 1
        if self.driver is not None:
            self.driver.errors += 1
        self.log.warn("bad line from the handler device ({reason}, {n} in a row): {line!r}",
                      reason=reason, n=self.errors_in_row, line=line)
        self.send(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        # LineReceiver discards the buffer; answer and keep reading.
        self._bad(line[:64].decode("ascii", "replace") + "...", "line too long",
                  lp.error_status(f"line longer than {self.MAX_LENGTH} characters"))


class _LineFactory(Factory):
    def __init__(self, driver: "LineDriver") -> None:
        self.driver = driver

    def buildProtocol(self, addr: Any) -> GeringerLineProtocol:
        return GeringerLineProtocol(self.driver.sink, self.driver)


class LineDriver(Service):
    """A :class:`~ate.handler.drivers.HandlerLink` over serial or TCP.

    Exactly one of ``serial``, ``client`` and ``server`` must be given.
    ``errors`` counts the bad lines of all connections.
    """

    log = Logger(namespace="ate.handler.line")

    def __init__(self, reactor: Any, sink: RequestSink, *, serial: SerialOptions | None = None,
                 client: str | None = None, server: str | None = None) -> None:
        given = [x for x in (serial, client, server) if x is not None]
        if len(given) != 1:
            raise ValueError("LineDriver: give exactly one of serial, client or server")
        self.reactor = reactor
        self.sink = sink
        self.serial = serial
        self.client = client
        self.server = server
        self.protocol: GeringerLineProtocol | None = None
        self.errors = 0
        self._client_service: ClientService | None = None
        self._listening: IListeningPort | None = None
        self._port: Any = None
        self.dropped = 0
        self._connect_waiters: list[Deferred[GeringerLineProtocol]] = []

    # ---- HandlerLink

    def send(self, msg: lp.Reply) -> None:
        if self.protocol is None:
            self.dropped += 1
            self.log.warn("no handler device connected; dropped {line}",
                          line=lp.format_line(msg))
            return
        self.protocol.send(msg)

    # ---- connection bookkeeping

    def _connected(self, proto: GeringerLineProtocol) -> None:
        if self.protocol is not None and self.protocol is not proto and self.server:
            self.log.info("a new handler device connection replaces the previous one")
            self.protocol.transport.loseConnection()
        self.protocol = proto
        waiters, self._connect_waiters = self._connect_waiters, []
        for d in waiters:
            d.callback(proto)

    def whenConnected(self) -> "Deferred[GeringerLineProtocol]":
        """Fires with the device connection once there is one."""
        d: Deferred[GeringerLineProtocol] = Deferred()
        if self.protocol is not None:
            d.callback(self.protocol)
        else:
            self._connect_waiters.append(d)
        return d

    def _lost(self, proto: GeringerLineProtocol) -> None:
        if self.protocol is proto:
            self.protocol = None

    # ---- service

    def startService(self) -> None:
        super().startService()
        factory = _LineFactory(self)
        if self.serial is not None:
            self._open_serial(factory)
        elif self.client is not None:
            endpoint = endpoints.clientFromString(self.reactor, self.client)
            self._client_service = ClientService(endpoint, factory, clock=self.reactor)
            self._client_service.startService()
        else:
            endpoint = endpoints.serverFromString(self.reactor, self.server)
            d = endpoint.listen(factory)

            def listening(port: IListeningPort) -> IListeningPort:
                self._listening = port
                self.log.info("waiting for the handler device on {addr}", addr=port.getHost())
                return port

            d.addCallback(listening)
            d.addErrback(lambda f: self.log.failure("cannot listen on {server}", f,
                                                    server=self.server))

    def _open_serial(self, factory: _LineFactory) -> None:
        try:
            from twisted.internet.serialport import SerialPort
        except ImportError:  # pragma: no cover - pyserial missing
            self.log.error("serial port {port} needs pyserial (pip install pyserial)",
                           port=self.serial.port)  # type: ignore[union-attr]
            raise
        opts = self.serial
        assert opts is not None
        proto = factory.buildProtocol(None)
        self._port = SerialPort(
            proto, opts.port, self.reactor, baudrate=opts.baudrate, bytesize=opts.bytesize,
            parity=opts.parity, stopbits=opts.stopbits,
            # the POSIX SerialPort takes timeout; mypy sees the Windows one
            timeout=opts.timeout)  # type: ignore[call-arg]

    def stopService(self) -> Any:
        super().stopService()
        if self._client_service is not None:
            return self._client_service.stopService()
        if self._port is not None:
            port, self._port = self._port, None
            port.loseConnection()
            return None
        if self._listening is not None:
            listening, self._listening = self._listening, None
            if self.protocol is not None:
                self.protocol.transport.loseConnection()
            return listening.stopListening()
        return None
