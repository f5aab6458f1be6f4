"""A simulated handler device: lots of N parts with an index time.

:class:`SimulatedHandler` is the device logic alone. It sends requests
(``LL``, ``ST``, ``LE``) through its ``output`` callable and consumes the
application's replies (``TS``, ``ET``, ``ID``, ``ID?``, ``HS?``) through
:meth:`SimulatedHandler.received`. Two ways to connect it:

* in process: :class:`InProcessLink` wires it straight to a
  :class:`~ate.handler.machine.HandlerController` (it is the controller's
  :class:`~ate.handler.drivers.HandlerLink`); lines are delivered on a later
  reactor turn, as a real line would;
* as a line-protocol peer: :class:`SimulatedHandlerFactory` over any stream
  endpoint (e.g. listening on TCP for ate-handler's ``serial`` endpoint).

Flow per lot: ``LL`` until answered ``TS|2|...``; ``ST`` every ``index_time``
seconds for the enabled sites until ``parts_per_lot`` parts have an ``ET``;
then ``LE`` until answered ``TS|0|...``. Refusals and errors are recorded in
``errors`` and the same line is sent again after ``retry_time``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from ate.handler import lineproto as lp
from ate.handler.drivers import RequestSink

__all__ = ["SimulatedHandler", "InProcessLink", "SimulatedHandlerProtocol",
           "SimulatedHandlerFactory"]


class SimulatedHandler:
    """The simulated device (see the module docstring).

    Results: ``results`` (``(lot, partid, binning)`` per tested part),
    ``parts_tested``, ``lots_done``, ``errors`` (the error ``TS`` replies),
    ``bad_lines`` (replies it could not parse).
    """

    log = Logger(namespace="ate.handler.sim")

    def __init__(self, clock: IReactorTime, *, lots: Sequence[str] = ("306426.001",),
                 parts_per_lot: int = 10, sites: int = 4, index_time: float = 0.0,
                 retry_time: float = 1.0, devicetype: str = "HS2C",
                 temperature: str = "25", name: str = "SIM-HANDLER") -> None:
        if parts_per_lot < 1:
            raise ValueError(f"parts_per_lot must be at least 1, got {parts_per_lot}")
        if sites < 1:
            raise ValueError(f"sites must be at least 1, got {sites}")
        self.clock = clock
        self.lots = list(lots)
        self.parts_per_lot = parts_per_lot
        self.sites = sites
        self.index_time = index_time
        self.retry_time = retry_time
        self.devicetype = devicetype
        self.temperature = temperature
        self.name = name
        self.enabled = set(range(sites))
        self.output: Callable[[lp.Request], None] | None = None
        self.phase = "idle"  # idle, loading, testing, ending, done
        self.lot_index = 0
        self.done_in_lot = 0
        self.parts_tested = 0
        self.lots_done = 0
        self.results: list[tuple[str, str, int]] = []
        self.errors: list[lp.TestStatus] = []
        self.bad_lines = 0
        self.tester_name: str | None = None
        self._part_counter = 0
        self._current: lp.StartTest | None = None
        self._timer: IDelayedCall | None = None
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []

    # ---- control

    @property
    def lot(self) -> str | None:
        return self.lots[self.lot_index] if self.lot_index < len(self.lots) else None

    def start(self) -> None:
        """Begin with the first lot (again, if it is idle)."""
        if self.phase == "idle" and self.lot is not None:
            self._send_load()

    def stop(self) -> None:
        """Cancel the pending timer; nothing more is sent."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.phase = "stopped"

    def disable_site(self, index: int) -> None:
        """The operator takes site ``index`` out: later ``ST`` lines leave it disabled."""
        self.enabled.discard(index)

    def wait_parts(self, count: int) -> Deferred[None]:
        """Fires once ``parts_tested >= count``."""
        return self._wait(lambda: self.parts_tested >= count)

    def wait_lots(self, count: int) -> Deferred[None]:
        """Fires once ``lots_done >= count``."""
        return self._wait(lambda: self.lots_done >= count)

    def _wait(self, predicate: Callable[[], bool]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if predicate():
            d.callback(None)
        else:
            self._waiters.append((predicate, d))
        return d

    def _notify(self) -> None:
        still = []
        for predicate, d in self._waiters:
            if predicate():
                d.callback(None)
            else:
                still.append((predicate, d))
        self._waiters = still

    # ---- output

    def _emit(self, req: lp.Request) -> None:
        if self.output is None:
            self.log.warn("simulated handler not connected; {line} not sent",
                          line=lp.format_line(req))
            return
        self.output(req)

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.clock.callLater(delay, fn)

    def _send_load(self) -> None:
        self.phase = "loading"
        self._emit(lp.LoadLot(self.lot or "", self.devicetype, self.temperature))

    def _send_start(self) -> None:
        if self._current is None:
            remaining = self.parts_per_lot - self.done_in_lot
            blocks = []
            for index in range(self.sites):
                use = index in self.enabled and remaining > 0
                if use:
                    remaining -= 1
                    self._part_counter += 1
                blocks.append(lp.StSite(use, f"P{self._part_counter}" if use else "",
                                        -1, 2, "000"))
            self._current = lp.StartTest(tuple(blocks))
        if not self._current.enabled():
            self.log.warn("simulated handler has no enabled site; waiting")
            self._current = None
            self._later(self.retry_time, self._send_start)
            return
        self.phase = "testing"
        self._emit(self._current)

    def _send_end(self) -> None:
        self.phase = "ending"
        self._emit(lp.LotEnd())

    # ---- input

    def received(self, msg: lp.Reply) -> None:
        """One reply from the application."""
        if isinstance(msg, lp.AskIdentity):
            self._emit(lp.HandlerName(self.name))
        elif isinstance(msg, lp.AskState):
            self._emit(lp.HandlerState(0, "OK"))
        elif isinstance(msg, lp.TesterName):
            self.tester_name = msg.name
        elif isinstance(msg, lp.EndTest):
            self._end_test(msg)
        elif isinstance(msg, lp.TestStatus):
            self._status(msg)
        self._notify()

    def _status(self, ts: lp.TestStatus) -> None:
        if self.phase == "loading" and ts.code == 2 and ts.text.startswith("Lot is Loaded"):
            self.done_in_lot = 0
            self._later(self.index_time, self._send_start)
        elif self.phase == "ending" and ts.code == 0:
            self.lots_done += 1
            self.lot_index += 1
            if self.lot is None:
                self.phase = "done"
            else:
                self._later(self.index_time, self._send_load)
        else:
            self.log.info("simulated handler got {line} in {phase}",
                          line=lp.format_line(ts), phase=self.phase)
            if ts.code not in (0, 1, 2) or self.phase in ("loading", "testing", "ending"):
                self.errors.append(ts)
            if self.phase == "testing" and self._current is not None:
                # the parts were not tested: build the ST again at the retry,
                # so that sites disabled meanwhile are left out
                self._part_counter -= len(self._current.enabled())
                self._current = None
            retry = {"loading": self._send_load, "testing": self._send_start,
                     "ending": self._send_end}.get(self.phase)
            if retry is not None:
                self._later(self.retry_time, retry)

    def _end_test(self, et: lp.EndTest) -> None:
        if self.phase != "testing" or self._current is None:
            self.log.warn("unexpected ET in {phase}", phase=self.phase)
            return
        tested = self._current.enabled()
        if len(et.parts) != len(tested):
            self.log.error("ET has {n} parts for {m} tested sites", n=len(et.parts),
                           m=len(tested))
            self.errors.append(lp.error_status("ET part count mismatch"))
        for part in et.parts:
            self.results.append((self.lot or "", part.partid, part.binning))
        self.parts_tested += len(et.parts)
        self.done_in_lot += len(tested)
        self._current = None
        if self.done_in_lot >= self.parts_per_lot:
            self._later(self.index_time, self._send_end)
        else:
            self._later(self.index_time, self._send_start)


class InProcessLink:
    """Connects a :class:`SimulatedHandler` directly to a controller.

    It is the controller's :class:`~ate.handler.drivers.HandlerLink`; each
    direction is delivered with ``callLater(0)`` so that neither side is
    re-entered from inside the other.
    """

    def __init__(self, clock: IReactorTime, device: SimulatedHandler, sink: RequestSink) -> None:
        self.clock = clock
        self.device = device
        self.sink = sink
        device.output = self._to_sink

    def send(self, msg: lp.Reply) -> None:
        self.clock.callLater(0, self.device.received, msg)

    def _to_sink(self, req: lp.Request) -> None:
        self.clock.callLater(0, self.sink.line_request, req)


class SimulatedHandlerProtocol(LineReceiver):
    """The simulated device as a line-protocol peer (it is the *device* side)."""

    transport: ITransport  # set by makeConnection, before any line is written
    delimiter = b"\n"
    log = Logger(namespace="ate.handler.sim")

    def __init__(self, device: SimulatedHandler, autostart: bool) -> None:
        self.device = device
        self.autostart = autostart

    def connectionMade(self) -> None:
        self.device.output = self._write
        if self.autostart:
            self.device.start()

    def connectionLost(self, reason: Any = None) -> None:
        if self.device.output == self._write:
            self.device.output = None

    def _write(self, req: lp.Request) -> None:
        self.transport.write(lp.format_line(req).encode("ascii", "replace") + b"\n")

    def lineReceived(self, data: bytes) -> None:
        line = data.decode("ascii", "replace").strip()
        try:
            msg = lp.parse_reply(line)
        except lp.LineError as e:
            self.device.bad_lines += 1
            self.log.warn("simulated handler: bad line {line!r}: {reason}", line=line,
                          reason=e.reason)
            return
        if msg is not None:
            self.device.received(msg)


class SimulatedHandlerFactory(Factory):
    """Serves one :class:`SimulatedHandler` to whoever connects."""

    def __init__(self, device: SimulatedHandler, autostart: bool = True) -> None:
        self.device = device
        self.autostart = autostart

    def buildProtocol(self, addr: Any) -> SimulatedHandlerProtocol:
        return SimulatedHandlerProtocol(self.device, self.autostart)
