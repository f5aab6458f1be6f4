"""``twistd -n ate-sim-handler``: a simulated handler device on the line protocol.

The device side of a real handler, to try ``ate-handler`` (with a master and simulated
sites) without a handler: it runs lots of the demo lot, ``LL`` / ``ST`` ... / ``LE``, over

* ``--listen ENDPOINT`` (default ``tcp:5000:interface=127.0.0.1``): ate-handler connects
  to it with ``serial = "tcp:127.0.0.1:5000"`` (``etc/handler-tcp.toml``);
* ``--pty``: a pseudo-terminal, whose name it logs (``/dev/pts/N``; ``--pty-link PATH``
  also makes a symbolic link to it): ate-handler opens it as its serial port, through
  pyserial, exactly as a real RS-232 line (``etc/handler.toml`` with the port given on the
  command line, or ``serial_port = PATH``).

Nobody tells the device that ate-handler opened the line (a pty) or that its masters are
up, so it asks ``ID?`` every second until ate-handler answers with the tester's name and
only then starts the first lot.  ``--lots N`` stops it (exit status 0) after N lots.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage

from ate.handler import lineproto as lp
from ate.handler.drivers.simulated import SimulatedHandler, SimulatedHandlerProtocol

__all__ = ["Options", "makeService", "PtyDevice", "ProbingProtocol", "LotCount"]

log = Logger(namespace="ate.sim.handler")

LOT_NUMBER = "306426.001"


def _fail(line: str) -> None:
    sys.stderr.write(f"ate-sim-handler: {line}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def _number(kind: type, name: str, minimum: float) -> Any:
    def coerce(value: Any) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"--{name}: not a number: {value!r}") from None
        if number < minimum:
            raise ValueError(f"--{name}: must be at least {minimum}, got {value}")
        return number

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    synopsis = "[--listen ENDPOINT | --pty [--pty-link PATH]] [--lots N] [--parts-per-lot N]"
    longdesc = ("A simulated handler device speaking the handler line protocol, to try "
                "ate-handler without a handler: over TCP (--listen) or a pseudo-terminal "
                "that ate-handler opens as its serial port (--pty).")
    optParameters = [
        ["listen", "l", "tcp:5000:interface=127.0.0.1",
         "Twisted server endpoint ate-handler connects to (its config: serial = "
         "\"tcp:127.0.0.1:5000\")."],
        ["pty-link", None, None, "With --pty: also make a symbolic link PATH to the pty."],
        ["lot", None, LOT_NUMBER, "Lot number the device loads."],
        ["lots", None, 1, "Lots to run, then exit 0; 0 runs lots until stopped.",
         _number(int, "lots", 0)],
        ["parts-per-lot", None, 20, "Parts in every lot.", _number(int, "parts-per-lot", 1)],
        ["sites", "n", 4, "Sites of the device (ST blocks).", _number(int, "sites", 1)],
        ["index-time", None, 0.0, "Seconds between a part's end and the next ST.",
         _number(float, "index-time", 0.0)],
    ]
    optFlags = [
        ["pty", None, "Use a pseudo-terminal (serial line) instead of --listen."],
    ]

    def postOptions(self) -> None:
        if self["pty-link"] and not self["pty"]:
            raise usage.UsageError("--pty-link needs --pty")


class PtyDevice(Service):
    """The device on the master side of a new pseudo-terminal (``name`` and ``tty_name``:
    the slave)."""

    def __init__(self, reactor: Any, device: SimulatedHandler, link: str | None = None,
                 probe_interval: float = 1.0) -> None:
        import tty

        self.reactor = reactor
        self.device = device
        self.link = link
        self.master_fd, self.slave_fd = os.openpty()  # the slave stays open: no EIO
        tty.setraw(self.slave_fd)
        self.tty_name = os.ttyname(self.slave_fd)
        # the service is named after its tty (Twisted declares Service.name as None)
        self.name = self.tty_name  # type: ignore[assignment]
        self.protocol = ProbingProtocol(device, reactor, probe_interval)
        self._io: Any = None

    def startService(self) -> None:
        from twisted.internet.stdio import StandardIO

        super().startService()
        if self.link:
            if os.path.islink(self.link):
                os.remove(self.link)
            os.symlink(self.tty_name, self.link)
        where = f"{self.tty_name} (linked as {self.link})" if self.link else self.tty_name
        log.info("simulated handler device on the serial line {where}: give it to "
                 "ate-handler as the serial port", where=where)
        # the POSIX StandardIO takes stdin/stdout; mypy sees the Windows one
        self._io = StandardIO(self.protocol, stdin=self.master_fd,  # type: ignore[call-arg]
                              stdout=os.dup(self.master_fd), reactor=self.reactor)

    def stopService(self) -> None:
        super().stopService()
        self.protocol.stop_probing()
        self.device.stop()
        if self._io is not None:
            self._io.loseConnection()
        os.close(self.slave_fd)
        if self.link and os.path.islink(self.link):
            os.remove(self.link)


class ProbingProtocol(SimulatedHandlerProtocol):
    """The device's side of the line: asks ``ID?`` every ``interval`` seconds until
    ate-handler answers with the tester's name (it does once its masters are up), then
    starts the first lot.  So the device neither talks into a line nobody reads (a pty)
    nor sends its first ``LL`` to an application that is still starting."""

    def __init__(self, device: SimulatedHandler, clock: Any, interval: float = 1.0) -> None:
        super().__init__(device, autostart=False)
        self.clock = clock
        self.interval = interval
        self.answered = False
        self._probe: LoopingCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._probe = LoopingCall(self.probe)
        self._probe.clock = self.clock
        self._probe.start(self.interval, now=True)

    def connectionLost(self, reason: Any = None) -> None:
        self.stop_probing()
        super().connectionLost(reason)

    def stop_probing(self) -> None:
        if self._probe is not None and self._probe.running:
            self._probe.stop()
        self._probe = None

    def probe(self) -> None:
        if not self.answered and self.transport is not None:
            self.transport.write(lp.format_line(lp.IdentifyQuery()).encode("ascii") + b"\n")

    def lineReceived(self, data: bytes) -> None:
        super().lineReceived(data)
        if self.answered or self.device.tester_name is None:
            return
        self.answered = True
        self.stop_probing()
        log.info("ate-handler answered for tester {name}; starting lot {lot}",
                 name=self.device.tester_name, lot=self.device.lot)
        self.device.start()


class _ProbingFactory(Factory):
    """Serves the device to whoever connects (the latest connection is the line)."""

    def __init__(self, device: SimulatedHandler, clock: Any) -> None:
        self.device = device
        self.clock = clock

    def buildProtocol(self, addr: Any) -> ProbingProtocol:
        return ProbingProtocol(self.device, self.clock)


class LotCount(Service):
    """Stops the program (``stop()``) once the device finished ``count`` lots."""

    def __init__(self, device: SimulatedHandler, count: int, stop: Any, clock: Any) -> None:
        self.device = device
        self.count = count
        self.stop = stop
        self.clock = clock

    def startService(self) -> None:
        super().startService()
        self.device.wait_lots(self.count).addCallback(self._done)

    def _done(self, _: Any) -> None:
        if self.running:
            log.info("simulated handler device: {n} lot(s) done ({parts} parts), stopping",
                     n=self.count, parts=self.device.parts_tested)
            self.clock.callLater(0, self.stop)


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor  # noqa: F811 (only tap modules do this)
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.endpoints import serverFromString

    from ate.tap import ListenError, Listening, install_clean_exit, listen_now

    lots = options["lots"]
    lot_list = (options["lot"],) * max(lots, 1)
    device = SimulatedHandler(reactor, lots=lot_list, parts_per_lot=options["parts-per-lot"],
                              sites=options["sites"], index_time=options["index-time"])
    if lots == 0:
        device.lots = _Forever(options["lot"])  # type: ignore[assignment]
    top = MultiService()
    if options["pty"]:
        PtyDevice(reactor, device, options["pty-link"]).setServiceParent(top)
    else:
        try:
            endpoint = serverFromString(reactor, options["listen"])
        except (ValueError, TypeError) as e:
            _fail(f"--listen {options['listen']!r}: not a server endpoint: {e}")
        factory = _ProbingFactory(device, reactor)
        try:
            port = listen_now(endpoint, factory)
        except ListenError as e:
            _fail(f"cannot listen on {options['listen']}: {e}")
        StreamServerEndpointService(Listening(port) if port is not None else endpoint,
                                    factory).setServiceParent(top)
        log.info("simulated handler device listening on {where} for ate-handler",
                 where=options["listen"])
    if lots:
        LotCount(device, lots, reactor.stop, reactor).setServiceParent(top)
    install_clean_exit(reactor)
    return top


class _Forever:
    """An endless sequence of one lot number (``SimulatedHandler.lots``)."""

    def __init__(self, lot: str) -> None:
        self.lot = lot

    def __getitem__(self, index: int) -> str:
        return self.lot

    def __len__(self) -> int:
        return sys.maxsize
