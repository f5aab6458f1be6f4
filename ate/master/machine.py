"""The master lifecycle (protocol.md §3), as an Automat typed state machine.

The machine owns the phase, its timers and the rules of what is allowed in which state.
Its states are the external states of §3.1 plus the internal ``startup`` (no broker yet),
two ``connecting`` states (``connecting.startup`` after start-up with the ``startup``
timer, ``connecting.reset`` after a reset with the ``reset`` timer) and ``stopped``.
``testing`` drives a small machine of its own (:mod:`ate.master.part`: starting, running,
waiting_for_resource) and hears ``part_step``/``part_done``/``fault`` from it.

Timed states (both connecting states, loading, unloading) are data states: the factory
creates the phase's timer (``PhaseTimer``, its ``IDelayedCall`` None when
``enable_timeouts`` is false) and every transition that leaves the state cancels it.  The
expiry is the ``expired()`` input of that state: it asks the effects for the missing sites
and goes to softerror.

Every input has an explicit transition in every state: a command that a state does not
allow returns a ``Refusal`` (protocol.md §4.2, §4.3) and changes nothing; an event that
does not matter in a state is a logged no-op.  The acceptance matrix is one table
(``_MATRIX``); :func:`refusal_type` answers from it for an external state (the web API).
``status()`` returns a frozen ``Status`` snapshot; every change of it is also handed to the
effects (``status_changed``), which publish it when ``publish`` is set.

Behaviours are short: each calls one or two effects of the cell (``MasterEffects``), which
does the publishing and the datalog.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol, cast

from automat import TypeMachineBuilder
from twisted.internet.interfaces import IReactorTime

from ate.jobs.model import Job
from ate.master.part import PartInputs, PhaseTimer, arm, index_transitions, timeout_text


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused command: ``response_type`` is notlot, havelot, busy or error; ``state``
    is the external state that refused it."""

    command: str
    response_type: str
    message: str
    state: str = ""
    #: an answer the operator already knows about (a hold: its alarm was the WARNING), so
    #: the refusal itself is logged at INFO, not once more per handler retry
    expected: bool = False


@dataclass(frozen=True, slots=True)
class Status:
    """What the master machine is doing: ``state`` as published (protocol §3.1),
    ``internal`` the machine's own state name (``testing.running``, ``connecting.reset``,
    ...), ``message`` the reason of an error state (or the last refused load's error)."""

    state: str
    internal: str
    message: str = ""


class MasterInputs(Protocol):
    # commands (from the handler, the web UI or the HTTP API): a Refusal or None
    def load(self, lot_number: str) -> Refusal | None: ...
    def next(self, sites: Any) -> Refusal | None: ...
    def unload(self) -> Refusal | None: ...
    def reset(self) -> Refusal | None: ...
    def site_layout(self, layout: Any) -> Refusal | None: ...
    # UI/API changes that only some states allow: a Refusal or None (the cell goes on)
    def usersettings(self) -> Refusal | None: ...
    def bin_map(self) -> Refusal | None: ...
    # queries
    def status(self) -> Status: ...

    # events
    def connected(self) -> None: ...
    def disconnected(self) -> None: ...
    def job_accepted(self, job: Job) -> None: ...
    def part_started(self, plan: Any) -> None: ...
    def part_step(self, step: str) -> None: ...
    def synced(self) -> None: ...
    def loaded(self) -> None: ...
    def part_done(self) -> None: ...
    def fault(self, message: str) -> None: ...
    def fatal(self, message: str) -> None: ...
    def expired(self) -> None: ...
    def test_summary(self, site: str, records: Any) -> None: ...
    def handler_status(self, state: str, message: Any) -> None: ...
    def complete_message(self, bare: str, full: str) -> None: ...
    def stop(self) -> None: ...


class MasterEffects(Protocol):
    """What the machine's behaviours may do; implemented by the cell."""

    def status_changed(self, status: Status, publish: bool) -> None: ...
    def first_connect(self) -> None: ...
    def note_disconnected(self, where: str) -> None: ...
    def testapps_rejoin(self) -> None: ...
    def reset_sites(self) -> None: ...
    def enter_initialized(self) -> None: ...
    def prepare_load(self, lot_number: str) -> tuple[Refusal | None, Job | None]: ...
    def start_load(self, job: Job) -> None: ...
    def lot_loading(self) -> None: ...
    def enter_ready(self) -> None: ...
    def prepare_next(self, sites: Any) -> tuple[Refusal | None, Any]: ...
    def start_part(self, plan: Any) -> None: ...
    def part_started(self) -> None: ...
    def complete_part(self) -> None: ...
    def part_finished(self) -> None: ...
    def start_unload(self) -> None: ...
    def finish_unload(self) -> None: ...
    def take_summary(self, site: str, records: Any) -> None: ...
    def stray_summary(self, site: str) -> None: ...
    def handler_reports(self, state: str, message: Any) -> None: ...
    def set_layout(self, layout: Any) -> None: ...
    def missing_sites(self) -> list[str]: ...
    def enter_softerror(self, message: str) -> None: ...
    def enter_error(self, message: str) -> None: ...
    def ignore(self, what: str, detail: str, where: str) -> None: ...
    def shutdown(self) -> None: ...


@dataclass
class MasterCore:
    fx: MasterEffects
    part: PartInputs  # testing's inner machine (ate.master.part)
    clock: IReactorTime
    timeouts: Any  # ate.config.Timeouts
    enable_timeouts: bool
    status: Status = Status("connecting", "startup")
    # the ``sites`` of the last accepted ``next`` (None: no payload), to recognise a resend
    request: Any = None


Inputs = MasterInputs
builder = TypeMachineBuilder(MasterInputs, MasterCore)


def _arm(kind: str):
    def factory(inputs: MasterInputs, core: MasterCore, *args: object) -> PhaseTimer:
        return arm(core.clock, core.timeouts, core.enable_timeouts, kind, inputs.expired)

    factory.__name__ = f"arm_{kind}"
    return factory


startup = builder.state("startup")
connecting = builder.state("connecting.startup", _arm("startup"))
resetting = builder.state("connecting.reset", _arm("reset"))
initialized = builder.state("initialized")
loading = builder.state("loading", _arm("load"))
ready = builder.state("ready")
testing = builder.state("testing")
unloading = builder.state("unloading", _arm("unload"))
softerror = builder.state("softerror")
error = builder.state("error")
stopped = builder.state("stopped")

CONNECTING = (connecting, resetting)
TIMED = frozenset((connecting, resetting, loading, unloading))
ALL_STATES = (
    startup, *CONNECTING, initialized, loading, ready, testing, unloading, softerror,
    error, stopped,
)
#: external (published) state of every internal one (protocol §3.1)
EXTERNAL = {s.name: s.name for s in ALL_STATES}
EXTERNAL.update({"startup": "connecting", "connecting.startup": "connecting",
                 "connecting.reset": "connecting"})


def _ext(state: Any) -> str:
    return EXTERNAL[state.name]


def _set(core: MasterCore, internal: str, message: str = "", force: bool = False) -> None:
    """The machine's status becomes ``internal``; published when the external state
    changes (or ``force``)."""
    external = EXTERNAL.get(internal) or EXTERNAL[internal.split(".")[0]]
    publish = force or external != core.status.state
    core.status = Status(external, internal, message)
    core.fx.status_changed(core.status, publish)


# --------------------------------------------------------------------------------------
# Registration helpers: a timed state's loops do not take its timer (nodata); every
# transition that leaves it gets the timer first and cancels it.


def _loop(state: Any, input: Any, behaviour: Callable[..., Any]) -> None:
    if state in TIMED:
        state.upon(input, nodata=True).loop()(behaviour)
    else:
        state.upon(input).loop()(behaviour)


def _leave(state: Any, input: Any, target: Any, behaviour: Callable[..., Any]) -> None:
    if state in TIMED:

        def leaving(inputs: MasterInputs, core: MasterCore, timer: PhaseTimer,
                    *args: Any) -> Any:
            timer.cancel()
            return behaviour(inputs, core, *args)

        leaving.__name__ = f"{behaviour.__name__}_cancelling_{timer_kind(state)}"
        state.upon(input).to(target)(leaving)
    else:
        state.upon(input).to(target)(behaviour)


def timer_kind(state: Any) -> str:
    return {connecting: "startup", resetting: "reset", loading: "load",
            unloading: "unload"}[state]


# --------------------------------------------------------------------------------------
# Refusals: the acceptance matrix of protocol.md §4.3.


def _reason(command: str, rtype: str, state: Any) -> Callable[[MasterCore], str]:
    external = _ext(state)
    if command == "usersettings":
        return lambda core: f"usersettings refused: not allowed in {external}"
    if command == "binMap":
        return lambda core: f"binMap refused: allowed in ready only (state {external})"
    if rtype == "busy":
        return lambda core: f"{command} refused: master is busy ({external})"
    if rtype == "havelot":
        if command == "reset":
            return lambda core: "reset refused: a lot is loaded (ready) - unload first"
        return lambda core: f"{command} refused: a lot is already loaded (ready)"
    if rtype == "notlot":
        return lambda core: f"{command} refused: no lot is loaded"
    if external == "connecting":
        return lambda core: f"{command} refused: no tester available: master is connecting"
    if external in ("softerror", "error"):
        return lambda core: (f"{command} refused: master in {external}: "
                             f"{core.status.message} - send reset")
    if state is stopped:
        return lambda core: f"{command} refused: master is stopping"
    return lambda core: f"{command} refused: master is {external}"


def _refuse(command: str, rtype: str, state: Any):
    reason = _reason(command, rtype, state)
    external = _ext(state)

    def behaviour(inputs: MasterInputs, core: MasterCore, *args: object) -> Refusal:
        return Refusal(command, rtype, reason(core), external)

    behaviour.__name__ = f"refuse_{command}_{rtype}"
    return behaviour


_COMMANDS = {
    "load": Inputs.load,
    "next": Inputs.next,
    "unload": Inputs.unload,
    "reset": Inputs.reset,
    "site-layout": Inputs.site_layout,
    "usersettings": Inputs.usersettings,
    "binMap": Inputs.bin_map,
}

_ERRORS: dict[Any, str] = {startup: "error", **{s: "error" for s in CONNECTING}, softerror: "error",
           error: "error", stopped: "error"}
_BUSY = {loading: "busy", testing: "busy", unloading: "busy"}

# command -> {state: response_type}; states absent here accept the command
_MATRIX: dict[str, dict[Any, str]] = {
    "load": {**_ERRORS, **_BUSY, ready: "havelot"},
    # testing: see _next_while_testing (a resend of the part's own next is not refused)
    "next": {**_ERRORS, initialized: "notlot", loading: "busy", unloading: "busy"},
    "unload": {**_ERRORS, **_BUSY, initialized: "notlot"},
    "reset": {startup: "error", **_BUSY, ready: "havelot", stopped: "error"},
    "site-layout": {**_BUSY, ready: "havelot", stopped: "error"},
    "usersettings": {**_ERRORS, **_BUSY},
    "binMap": {s: "error" for s in ALL_STATES if s is not ready},
}

for _command, _table in _MATRIX.items():
    for _state, _rtype in _table.items():
        _loop(_state, _COMMANDS[_command], _refuse(_command, _rtype, _state))


def refusal_type(command: str, external_state: str) -> str | None:
    """How the machine answers ``command`` in ``external_state`` by the state alone:
    None when it is accepted there (so an ``error`` refusal is about the input), else the
    response type.  An external state whose internal states disagree counts as refusing
    (``reset`` in ``connecting``: refused before the broker is connected)."""
    table = _MATRIX.get(command)
    if table is None:
        return None
    rtypes = [table.get(s) for s in ALL_STATES if _ext(s) == external_state]
    if command == "next" and external_state == "testing":
        return "busy"
    refused = [r for r in rtypes if r is not None]
    if not rtypes or not refused:
        return None
    return refused[0]


# --------------------------------------------------------------------------------------
# Accepted commands.


def _accept(inputs: MasterInputs, core: MasterCore, *args: object) -> Refusal | None:
    return None


for _command in ("usersettings", "binMap"):
    for _state in ALL_STATES:
        if _state not in _MATRIX[_command]:
            _loop(_state, _COMMANDS[_command], _accept)


@initialized.upon(Inputs.load).loop()
def _load(inputs: MasterInputs, core: MasterCore, lot_number: str) -> Refusal | None:
    refusal, job = core.fx.prepare_load(lot_number)
    if refusal is not None:
        if refusal.response_type == "error":
            # the reason stays readable with get-state (the state does not change)
            core.status = replace(core.status, message=refusal.message)
            core.fx.status_changed(core.status, False)
        return replace(refusal, state=core.status.state)
    inputs.job_accepted(cast(Job, job))  # prepare_load gives a job when it refuses nothing
    return None


@initialized.upon(Inputs.job_accepted).to(loading)
def _start_load(inputs: MasterInputs, core: MasterCore, job: Job) -> None:
    core.fx.start_load(job)
    _set(core, "loading")
    core.fx.lot_loading()


@ready.upon(Inputs.next).loop()
def _next(inputs: MasterInputs, core: MasterCore, sites: Any) -> Refusal | None:
    refusal, plan = core.fx.prepare_next(sites)
    if refusal is not None:
        return replace(refusal, state=core.status.state)
    core.request = sites
    inputs.part_started(plan)
    return None


_next_busy = _reason("next", "busy", testing)


@testing.upon(Inputs.next).loop()
def _next_while_testing(inputs: MasterInputs, core: MasterCore, sites: Any) -> Refusal | None:
    # A handler that lost the broker may resend its ``next`` (README "Broker loss").
    # The very same request while its part is under test is that resend: it starts
    # nothing and is not refused, so the handler waits for the one response.
    if sites is not None and sites == core.request:
        core.fx.ignore("next", "repeated for the part under test (a resend)",
                       core.status.internal)
        return None
    return Refusal("next", "busy", _next_busy(core), "testing")


@ready.upon(Inputs.part_started).to(testing)
def _start_part(inputs: MasterInputs, core: MasterCore, plan: Any) -> None:
    core.fx.start_part(plan)
    _set(core, "testing.starting")
    core.part.start()
    core.fx.part_started()


@testing.upon(Inputs.part_step).loop()
def _part_step(inputs: MasterInputs, core: MasterCore, step: str) -> None:
    _set(core, f"testing.{step}", core.status.message)


@testing.upon(Inputs.part_done).to(ready)
def _part_done(inputs: MasterInputs, core: MasterCore) -> None:
    core.fx.complete_part()
    _set(core, "ready")
    core.fx.part_finished()


@ready.upon(Inputs.unload).to(unloading)
def _unload(inputs: MasterInputs, core: MasterCore) -> Refusal | None:
    core.fx.start_unload()
    _set(core, "unloading")
    return None


def _reset(inputs: MasterInputs, core: MasterCore) -> Refusal | None:
    core.fx.reset_sites()
    _set(core, "connecting.reset")
    return None


for _state in (connecting, initialized, softerror, error):
    _leave(_state, Inputs.reset, resetting, _reset)


@resetting.upon(Inputs.reset).loop()
def _reset_again(inputs: MasterInputs, core: MasterCore, timer: PhaseTimer) -> Refusal | None:
    # a reset while resetting starts the reset again, with a fresh timer
    timer.cancel()
    timer.call = arm(core.clock, core.timeouts, core.enable_timeouts, "reset",
                     inputs.expired).call
    return _reset(inputs, core)


def _layout(inputs: MasterInputs, core: MasterCore, layout: Any) -> Refusal | None:
    core.fx.set_layout(layout)
    return None


for _state in (startup, *CONNECTING, initialized, softerror, error):
    _loop(_state, Inputs.site_layout, _layout)


# --------------------------------------------------------------------------------------
# Phase events.


@startup.upon(Inputs.connected).to(connecting)
def _first_connect(inputs: MasterInputs, core: MasterCore) -> None:
    core.fx.first_connect()
    _set(core, "connecting.startup", force=True)


def _synced(inputs: MasterInputs, core: MasterCore) -> None:
    core.fx.enter_initialized()
    _set(core, "initialized")


def _unloaded(inputs: MasterInputs, core: MasterCore) -> None:
    core.fx.finish_unload()
    _set(core, "initialized")


def _loaded(inputs: MasterInputs, core: MasterCore) -> None:
    core.fx.enter_ready()
    _set(core, "ready")


for _state in CONNECTING:
    _leave(_state, Inputs.synced, initialized, _synced)
_leave(unloading, Inputs.synced, initialized, _unloaded)
_leave(loading, Inputs.loaded, ready, _loaded)


def _fault(inputs: MasterInputs, core: MasterCore, message: str) -> None:
    core.part.abort()
    core.fx.enter_softerror(message)
    _set(core, "softerror", message)


def _fatal(inputs: MasterInputs, core: MasterCore, message: str) -> None:
    core.fx.enter_error(message)
    _set(core, "error", message)


def _expired(inputs: MasterInputs, core: MasterCore, timer: PhaseTimer) -> None:
    # the timer fired: the phase ends in softerror naming the sites that did not answer
    timer.cancel()
    _fault(inputs, core, timeout_text(timer.kind, core.fx.missing_sites()))


LIVE = (*CONNECTING, initialized, loading, ready, testing, unloading)
for _state in LIVE:
    _leave(_state, Inputs.fault, softerror, _fault)
for _state in CONNECTING:
    _leave(_state, Inputs.fatal, error, _fatal)
for _state in (initialized, loading, ready, testing, unloading):
    _leave(_state, Inputs.fatal, softerror, _fault)
for _state in TIMED:
    _state.upon(Inputs.expired).to(softerror)(_expired)


# Broker loss (a "blip"): every state is kept, loading, testing and unloading included.
# The phase's timer keeps running and decides: messages that still arrive after the
# reconnect complete the phase (TestApps on paho queue their QoS > 0 publishes while
# offline); when the timer expires the softerror names the sites that never answered.
# On the reconnect the master re-publishes its status (``connected`` below) and the Control
# apps echo their states, which resynchronises the site tracking.
def _disconnected(inputs: MasterInputs, core: MasterCore) -> None:
    core.fx.note_disconnected(core.status.internal)


def _republish(inputs: MasterInputs, core: MasterCore) -> None:
    _set(core, core.status.internal, core.status.message, force=True)


def _republish_rejoin(inputs: MasterInputs, core: MasterCore) -> None:
    # with TestApps running, a next waits until they are back (ate.master.rejoin)
    core.fx.testapps_rejoin()
    _republish(inputs, core)


def _stop(inputs: MasterInputs, core: MasterCore) -> None:
    core.part.abort()
    core.status = Status("stopped", "stopped", "master stopped")
    core.fx.status_changed(core.status, False)  # the last status is "crash" (shutdown)
    core.fx.shutdown()


def _status(inputs: MasterInputs, core: MasterCore) -> Status:
    return core.status


def _summary(inputs: MasterInputs, core: MasterCore, site: str, records: Any) -> None:
    core.fx.take_summary(site, records)


def _stray_summary(inputs: MasterInputs, core: MasterCore, site: str, records: Any) -> None:
    core.fx.stray_summary(site)


def _handler_status(republish: bool):
    def behaviour(inputs: MasterInputs, core: MasterCore, state: str, message: Any) -> None:
        if state == "connecting":  # the handler (re)started: it wants our status
            if republish:
                _republish(inputs, core)
        else:
            core.fx.handler_reports(state, message)

    behaviour.__name__ = f"handler_status_{'republish' if republish else 'log'}"
    return behaviour


def _complete_message(inputs: MasterInputs, core: MasterCore, bare: str, full: str) -> None:
    # a Control app's ERROR log line after its bare ``error`` status: the message is
    # completed and re-published
    if core.status.message == bare:
        _set(core, core.status.internal, full, force=True)


def _ignore(name: str, where: str):
    def behaviour(inputs: MasterInputs, core: MasterCore, *args: object) -> None:
        core.fx.ignore(name, " ".join(str(a) for a in args), where)

    behaviour.__name__ = f"ignore_{name}"
    return behaviour


for _state in ALL_STATES:
    _loop(_state, Inputs.status, _status)
    if _state is stopped:
        _loop(_state, Inputs.disconnected, _ignore("disconnected", "stopped"))
        _loop(_state, Inputs.connected, _ignore("connected", "stopped"))
        _loop(_state, Inputs.stop, _ignore("stop", "stopped"))
    else:
        _loop(_state, Inputs.disconnected, _disconnected)
        if _state in (ready, testing):
            _loop(_state, Inputs.connected, _republish_rejoin)
        elif _state is not startup:
            _loop(_state, Inputs.connected, _republish)
        _leave(_state, Inputs.stop, stopped, _stop)
    if _state is unloading:
        _loop(_state, Inputs.test_summary, _summary)
    else:
        _loop(_state, Inputs.test_summary, _stray_summary)
    if _state is softerror:
        _loop(_state, Inputs.handler_status, _ignore("handler_status", "softerror"))
    else:
        _loop(_state, Inputs.handler_status,
              _handler_status(republish=_state not in (startup, stopped)))
    if _state in (softerror, error):
        _loop(_state, Inputs.complete_message, _complete_message)
    else:
        _loop(_state, Inputs.complete_message, _ignore("complete_message", _state.name))


# --------------------------------------------------------------------------------------
# Everything else that can arrive in a state but does not matter there: logged no-ops.

_EVENTS = {
    "job_accepted": Inputs.job_accepted,
    "part_started": Inputs.part_started,
    "part_step": Inputs.part_step,
    "synced": Inputs.synced,
    "loaded": Inputs.loaded,
    "part_done": Inputs.part_done,
    "fault": Inputs.fault,
    "fatal": Inputs.fatal,
    "expired": Inputs.expired,
}

_HANDLED: dict[str, set[Any]] = {
    "job_accepted": {initialized},
    "part_started": {ready},
    "part_step": {testing},
    "synced": {*CONNECTING, unloading},
    "loaded": {loading},
    "part_done": {testing},
    "fault": set(LIVE),
    "fatal": set(LIVE),
    "expired": set(TIMED),
}

for _name, _input in _EVENTS.items():
    for _state in ALL_STATES:
        if _state not in _HANDLED[_name]:
            _loop(_state, _input, _ignore(_name, _state.name))

MasterMachine = index_transitions(builder.build())
