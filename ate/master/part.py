"""Testing's inner steps (protocol.md §3.5), as an Automat typed state machine of their own.

The master machine's ``testing`` state drives it: ``start()`` when a ``next`` is accepted,
``abort()`` when testing ends any other way (softerror, stop).  Its states are ``idle`` and
the three steps of a part, all published as ``testing``:

- ``starting``: the TestApps were sent ``next``; the ``next_ack`` timer runs until every
  tested TestApp reported ``testing`` (or sent its result) — ``acknowledged()``;
- ``running``: the ``test`` timer runs until every tested site delivered its result and is
  idle again — ``part_done()``;
- ``waiting_for_resource``: an io-control request went to the actuator; the ``ioctl``
  timer (always armed, whatever ``enable_timeouts`` says) runs until ``resource_done()``.

Each step is a data state: its factory creates the step's timer and every transition that
leaves it cancels the timer.  The timer's expiry is the ``expired()`` input: the machine asks
the effects which sites are missing and tells the master ``fault(text)``.  The machine talks
to the master only through ``PartListener`` (``part_step``, ``part_done``, ``fault``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from automat import TypeMachineBuilder
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: the texts of an expired phase timer (the missing sites are appended), by timer kind
TIMER_TEXT = {
    "startup": "not all sites connected",
    "reset": "not all sites do report state idle after reset",
    "load": "not all sites loaded the testprogram",
    "next_ack": "not all sites respond to next command",
    "test": "not all sites completed the active test",
    "unload": "not all sites unloaded the testprogram",
}


def timeout_text(kind: str, missing: list[str]) -> str:
    """The softerror message of an expired ``kind`` timer, naming the missing sites."""
    text = TIMER_TEXT[kind]
    if missing:
        text += f" (missing: {', '.join(missing)})"
    return text


class PhaseTimer:
    """The timer of one phase: the ``IDelayedCall`` that ends it (None when timeouts are
    off).  A data state's factory makes one; the transitions leaving the state cancel it."""

    __slots__ = ("kind", "call")

    def __init__(self, kind: str, call: IDelayedCall | None) -> None:
        self.kind = kind
        self.call = call

    @property
    def armed(self) -> bool:
        return self.call is not None and self.call.active()

    def cancel(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


def arm(clock: IReactorTime, timeouts: Any, enabled: bool, kind: str,
        expired: Callable[[], None]) -> PhaseTimer:
    """A ``PhaseTimer`` of ``timeouts.<kind>`` seconds that calls ``expired``."""
    if not enabled:
        return PhaseTimer(kind, None)
    return PhaseTimer(kind, clock.callLater(getattr(timeouts, kind), expired))


def index_transitions(machine: Any) -> Any:
    """Look transitions up in a dict instead of Automat's scan of all of them.

    Automat (25.4) finds the transition of an input by comparing the (state, input) pair with
    every transition of the machine, so each input costs O(states x inputs); the master
    machine lists every input in every state, and the handler's ``next`` runs several
    inputs.  A built machine's table never changes, so it is indexed once; a pair that is
    not in it still goes to Automat (``NoTransition``).  Returns ``machine``."""
    automaton = machine.__automat_automaton__
    scan = automaton.outputForInput
    table = {(i, sym): (o, tuple(outs)) for (i, sym, o, outs) in automaton._transitions}

    def output_for_input(in_state: Any, input_symbol: Any) -> tuple[Any, list[Any]]:
        found = table.get((in_state, input_symbol))
        if found is None:
            return scan(in_state, input_symbol)
        return found[0], list(found[1])

    automaton.outputForInput = output_for_input
    return machine


class PartInputs(Protocol):
    def start(self) -> None: ...
    def acknowledged(self) -> None: ...
    def resource_requested(self) -> None: ...
    def resource_done(self) -> None: ...
    def part_done(self) -> None: ...
    def io_request(self, site: str, periphery_type: str, ioctl_name: str,
                  parameters: Any) -> None: ...
    def expired(self) -> None: ...
    def abort(self) -> None: ...
    def status(self) -> str: ...


class PartEffects(Protocol):
    """What the part machine's behaviours may do; implemented by the cell."""

    def missing_ack(self) -> list[str]: ...
    def missing_sites(self) -> list[str]: ...
    def take_io_request(self, site: str, periphery_type: str, ioctl_name: str,
                        parameters: Any) -> None: ...
    def stray_io_request(self, site: str) -> None: ...
    def ioctl_timed_out(self) -> str: ...
    def ignore(self, what: str, detail: str, where: str) -> None: ...


class PartListener(Protocol):
    """The master machine's inputs the part machine calls."""

    def part_step(self, step: str) -> None: ...
    def part_done(self) -> None: ...
    def fault(self, message: str) -> None: ...


@dataclass
class PartCore:
    fx: PartEffects
    clock: IReactorTime
    timeouts: Any  # ate.config.Timeouts
    enable_timeouts: bool
    master: PartListener | None = None  # wired by the cell (the Boss)


P = PartInputs
builder = TypeMachineBuilder(PartInputs, PartCore)


def _arm(kind: str, always: bool = False):
    def factory(inputs: PartInputs, core: PartCore, *args: object) -> PhaseTimer:
        return arm(core.clock, core.timeouts, always or core.enable_timeouts, kind,
                   inputs.expired)

    factory.__name__ = f"arm_{kind}"
    return factory


idle = builder.state("idle")
starting = builder.state("starting", _arm("next_ack"))
running = builder.state("running", _arm("test"))
waiting = builder.state("waiting_for_resource", _arm("ioctl", always=True))

STEPS = (starting, running, waiting)
ALL = (idle, *STEPS)

for _state in ALL:
    _name = _state.name
    if _state is idle:
        _state.upon(P.status).loop().returns(_name)
    else:
        # every state but idle is a data state (mypy sees ALL's common type)
        _state.upon(P.status, nodata=True).loop().returns(_name)  # type: ignore[call-arg]


def _master(core: PartCore) -> PartListener:
    assert core.master is not None, "part machine not wired to the master"
    return core.master


@idle.upon(P.start).to(starting)
def _start(inputs: PartInputs, core: PartCore) -> None:
    pass


@starting.upon(P.acknowledged).to(running)
def _acknowledged(inputs: PartInputs, core: PartCore, timer: PhaseTimer) -> None:
    timer.cancel()
    _master(core).part_step("running")


@starting.upon(P.resource_requested).to(waiting)
@running.upon(P.resource_requested).to(waiting)
def _resource(inputs: PartInputs, core: PartCore, timer: PhaseTimer) -> None:
    timer.cancel()
    _master(core).part_step("waiting_for_resource")


@waiting.upon(P.resource_done).to(running)
def _resource_done(inputs: PartInputs, core: PartCore, timer: PhaseTimer) -> None:
    timer.cancel()
    _master(core).part_step("running")


for _state in STEPS:

    @_state.upon(P.part_done).to(idle)
    def _done(inputs: PartInputs, core: PartCore, timer: PhaseTimer) -> None:
        timer.cancel()
        _master(core).part_done()

    @_state.upon(P.expired).to(idle)
    def _expired(inputs: PartInputs, core: PartCore, timer: PhaseTimer) -> None:
        timer.cancel()
        if timer.kind == "ioctl":
            text = core.fx.ioctl_timed_out()
        elif timer.kind == "next_ack":
            text = timeout_text("next_ack", core.fx.missing_ack())
        else:
            text = timeout_text(timer.kind, core.fx.missing_sites())
        _master(core).fault(text)

    @_state.upon(P.abort).to(idle)
    def _abort(inputs: PartInputs, core: PartCore, timer: PhaseTimer) -> None:
        timer.cancel()

    @_state.upon(P.io_request, nodata=True).loop()
    def _io(inputs: PartInputs, core: PartCore, site: str, periphery_type: str,
            ioctl_name: str, parameters: Any) -> None:
        core.fx.take_io_request(site, periphery_type, ioctl_name, parameters)


@idle.upon(P.io_request).loop()
def _stray_io(inputs: PartInputs, core: PartCore, site: str, periphery_type: str,
              ioctl_name: str, parameters: Any) -> None:
    core.fx.stray_io_request(site)


idle.upon(P.abort).loop().returns(None)


def _ignore(name: str, where: str):
    def behaviour(inputs: PartInputs, core: PartCore, *args: object) -> None:
        core.fx.ignore(name, " ".join(str(a) for a in args), where)

    behaviour.__name__ = f"ignore_{name}"
    return behaviour


_EVENTS = {"start": P.start, "acknowledged": P.acknowledged,
           "resource_requested": P.resource_requested, "resource_done": P.resource_done,
           "part_done": P.part_done, "expired": P.expired}
_HANDLED: dict[str, set[Any]] = {"start": {idle}, "acknowledged": {starting},
            "resource_requested": {starting, running}, "resource_done": {waiting},
            "part_done": set(STEPS), "expired": set(STEPS)}

for _ename, _input in _EVENTS.items():
    for _state in ALL:
        if _state in _HANDLED[_ename]:
            continue
        if _state is idle:
            _state.upon(_input).loop()(_ignore(_ename, _state.name))
        else:
            # a data state, as above
            _state.upon(_input, nodata=True).loop()(  # type: ignore[call-arg]
                _ignore(_ename, _state.name))

PartMachine = index_transitions(builder.build())
