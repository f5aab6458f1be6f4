"""The master lifecycle (protocol.md §3), as an Automat typed state machine.

States are the external states of §3.1 plus the internal ``startup`` and ``stopped`` and the
testing sub-states (published as ``testing``).  Every input has an explicit transition in
every state: a command that a state does not allow returns a ``Refusal`` (protocol.md §4.2,
§4.3) and changes nothing; an event that does not matter in a state is a logged no-op.

Behaviours are short: each calls one or two effects of the cell (``MasterEffects``), which
does the publishing, the datalog and the timers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from automat import TypeMachineBuilder

from ate.jobs.model import Job


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused command: ``response_type`` is notlot, havelot, busy or error."""

    command: str
    response_type: str
    message: str


class MasterInputs(Protocol):
    # commands (from the handler, the web UI or the HTTP API): a Refusal or None
    def load(self, lot_number: str) -> Refusal | None: ...
    def next(self, sites: Any) -> Refusal | None: ...
    def unload(self) -> Refusal | None: ...
    def reset(self) -> Refusal | None: ...
    def siteLayout(self, layout: Any) -> Refusal | None: ...

    # events
    def connected(self) -> None: ...
    def disconnected(self) -> None: ...
    def jobAccepted(self, job: Job) -> None: ...
    def partStarted(self, plan: Any) -> None: ...
    def synced(self) -> None: ...
    def loaded(self) -> None: ...
    def acknowledged(self) -> None: ...
    def partDone(self) -> None: ...
    def resourceRequested(self) -> None: ...
    def resourceDone(self) -> None: ...
    def fault(self, message: str) -> None: ...
    def fatal(self, message: str) -> None: ...
    def stop(self) -> None: ...


class MasterEffects(Protocol):
    """What the machine's behaviours may do; implemented by the cell."""

    def external_state(self) -> str: ...
    def error_message(self) -> str: ...
    def first_connect(self) -> None: ...
    def republish(self) -> None: ...
    def note_disconnected(self) -> None: ...
    def reset_sites(self) -> None: ...
    def enter_initialized(self) -> None: ...
    def prepare_load(self, lot_number: str) -> tuple[Refusal | None, Job | None]: ...
    def start_load(self, job: Job) -> None: ...
    def enter_ready(self) -> None: ...
    def prepare_next(self, sites: Any) -> tuple[Refusal | None, Any]: ...
    def start_part(self, plan: Any) -> None: ...
    def part_acknowledged(self) -> None: ...
    def complete_part(self) -> None: ...
    def wait_for_resource(self) -> None: ...
    def resource_done(self) -> None: ...
    def start_unload(self) -> None: ...
    def finish_unload(self) -> None: ...
    def set_layout(self, layout: Any) -> None: ...
    def enter_softerror(self, message: str) -> None: ...
    def enter_error(self, message: str) -> None: ...
    def ignore(self, what: str, detail: str = "") -> None: ...
    def shutdown(self) -> None: ...


@dataclass
class MasterCore:
    fx: MasterEffects
    # the ``sites`` of the last accepted ``next`` (None: no payload), to recognise a resend
    request: Any = None


I = MasterInputs
builder = TypeMachineBuilder(MasterInputs, MasterCore)

startup = builder.state("startup")
connecting = builder.state("connecting")
initialized = builder.state("initialized")
loading = builder.state("loading")
ready = builder.state("ready")
t_starting = builder.state("testing.starting")
t_running = builder.state("testing.running")
t_resource = builder.state("testing.waiting_for_resource")
unloading = builder.state("unloading")
softerror = builder.state("softerror")
error = builder.state("error")
stopped = builder.state("stopped")

TESTING_STATES = (t_starting, t_running, t_resource)
ALL_STATES = (
    startup, connecting, initialized, loading, ready, *TESTING_STATES,
    unloading, softerror, error, stopped,
)

# --------------------------------------------------------------------------------------
# Refusals: the acceptance matrix of protocol.md §4.3.


def _refuse(command: str, response_type: str, reason: Callable[[MasterCore], str]):
    def behaviour(inputs: MasterInputs, core: MasterCore, *args: object) -> Refusal:
        return Refusal(command, response_type, reason(core))

    behaviour.__name__ = f"refuse_{command}_{response_type}"
    return behaviour


def _state_reason(command: str) -> Callable[[MasterCore], str]:
    def reason(core: MasterCore) -> str:
        state = core.fx.external_state()
        if state == "connecting":
            return f"{command} refused: no tester available: master is connecting"
        if state in ("softerror", "error"):
            return f"{command} refused: master in {state}: {core.fx.error_message()} - send reset"
        if state == "stopped":
            return f"{command} refused: master is stopping"
        return f"{command} refused: master is {state}"

    return reason


def _busy(command: str) -> Callable[[MasterCore], str]:
    return lambda core: f"{command} refused: master is busy ({core.fx.external_state()})"


def _havelot(command: str) -> Callable[[MasterCore], str]:
    if command == "reset":
        return lambda core: "reset refused: a lot is loaded (ready) - unload first"
    return lambda core: f"{command} refused: a lot is already loaded (ready)"


def _notlot(command: str) -> Callable[[MasterCore], str]:
    return lambda core: f"{command} refused: no lot is loaded"


_COMMANDS = {
    "load": I.load,
    "next": I.next,
    "unload": I.unload,
    "reset": I.reset,
    "site-layout": I.siteLayout,
}

# command -> {state: response_type}; states absent here accept the command
_MATRIX: dict[str, dict[Any, str]] = {
    "load": {startup: "error", connecting: "error", loading: "busy", ready: "havelot",
             **{s: "busy" for s in TESTING_STATES}, unloading: "busy",
             softerror: "error", error: "error", stopped: "error"},
    # testing: see _next_while_testing (a resend of the part's own next is not refused)
    "next": {startup: "error", connecting: "error", initialized: "notlot", loading: "busy",
             unloading: "busy", softerror: "error", error: "error", stopped: "error"},
    "unload": {startup: "error", connecting: "error", initialized: "notlot", loading: "busy",
               **{s: "busy" for s in TESTING_STATES}, unloading: "busy",
               softerror: "error", error: "error", stopped: "error"},
    "reset": {startup: "error", loading: "busy", ready: "havelot",
              **{s: "busy" for s in TESTING_STATES}, unloading: "busy", stopped: "error"},
    "site-layout": {loading: "busy", ready: "havelot",
                    **{s: "busy" for s in TESTING_STATES}, unloading: "busy",
                    stopped: "error"},
}

_REASONS = {"error": _state_reason, "busy": _busy, "havelot": _havelot, "notlot": _notlot}

for _command, _table in _MATRIX.items():
    for _state, _rtype in _table.items():
        _state.upon(_COMMANDS[_command]).loop()(
            _refuse(_command, _rtype, _REASONS[_rtype](_command))
        )

# --------------------------------------------------------------------------------------
# Accepted commands.


@initialized.upon(I.load).loop()
def _load(inputs: MasterInputs, core: MasterCore, lot_number: str) -> Refusal | None:
    refusal, job = core.fx.prepare_load(lot_number)
    if refusal is not None:
        return refusal
    inputs.jobAccepted(job)
    return None


@initialized.upon(I.jobAccepted).to(loading)
def _start_load(inputs: MasterInputs, core: MasterCore, job: Job) -> None:
    core.fx.start_load(job)


@ready.upon(I.next).loop()
def _next(inputs: MasterInputs, core: MasterCore, sites: Any) -> Refusal | None:
    refusal, plan = core.fx.prepare_next(sites)
    if refusal is not None:
        return refusal
    core.request = sites
    inputs.partStarted(plan)
    return None


_next_busy = _busy("next")

for _state in TESTING_STATES:

    @_state.upon(I.next).loop()
    def _next_while_testing(inputs: MasterInputs, core: MasterCore, sites: Any) -> Refusal | None:
        # A handler that lost the broker may resend its ``next`` (README "Broker loss").
        # The very same request while its part is under test is that resend: it starts
        # nothing and is not refused, so the handler waits for the one response.
        if sites is not None and sites == core.request:
            core.fx.ignore("next", "repeated for the part under test (a resend)")
            return None
        return Refusal("next", "busy", _next_busy(core))


@ready.upon(I.partStarted).to(t_starting)
def _start_part(inputs: MasterInputs, core: MasterCore, plan: Any) -> None:
    core.fx.start_part(plan)


@ready.upon(I.unload).to(unloading)
def _unload(inputs: MasterInputs, core: MasterCore) -> Refusal | None:
    core.fx.start_unload()
    return None


for _state in (connecting, initialized, softerror, error):

    @_state.upon(I.reset).to(connecting)
    def _reset(inputs: MasterInputs, core: MasterCore) -> Refusal | None:
        core.fx.reset_sites()
        return None

    @_state.upon(I.siteLayout).loop()
    def _layout(inputs: MasterInputs, core: MasterCore, layout: Any) -> Refusal | None:
        core.fx.set_layout(layout)
        return None


@startup.upon(I.siteLayout).loop()
def _layout_startup(inputs: MasterInputs, core: MasterCore, layout: Any) -> Refusal | None:
    core.fx.set_layout(layout)
    return None


# --------------------------------------------------------------------------------------
# Phase events.


@startup.upon(I.connected).to(connecting)
def _first_connect(inputs: MasterInputs, core: MasterCore) -> None:
    core.fx.first_connect()


@connecting.upon(I.synced).to(initialized)
def _synced(inputs: MasterInputs, core: MasterCore) -> None:
    core.fx.enter_initialized()


@unloading.upon(I.synced).to(initialized)
def _unloaded(inputs: MasterInputs, core: MasterCore) -> None:
    core.fx.finish_unload()


@loading.upon(I.loaded).to(ready)
def _loaded(inputs: MasterInputs, core: MasterCore) -> None:
    core.fx.enter_ready()


@t_starting.upon(I.acknowledged).to(t_running)
def _acknowledged(inputs: MasterInputs, core: MasterCore) -> None:
    core.fx.part_acknowledged()


for _state in TESTING_STATES:

    @_state.upon(I.partDone).to(ready)
    def _part_done(inputs: MasterInputs, core: MasterCore) -> None:
        core.fx.complete_part()


@t_starting.upon(I.resourceRequested).to(t_resource)
@t_running.upon(I.resourceRequested).to(t_resource)
def _resource(inputs: MasterInputs, core: MasterCore) -> None:
    core.fx.wait_for_resource()


@t_resource.upon(I.resourceDone).to(t_running)
def _resource_done(inputs: MasterInputs, core: MasterCore) -> None:
    core.fx.resource_done()


# faults: to softerror from every live state
for _state in (connecting, initialized, loading, ready, *TESTING_STATES, unloading):

    @_state.upon(I.fault).to(softerror)
    def _fault(inputs: MasterInputs, core: MasterCore, message: str) -> None:
        core.fx.enter_softerror(message)


@connecting.upon(I.fatal).to(error)
def _fatal(inputs: MasterInputs, core: MasterCore, message: str) -> None:
    core.fx.enter_error(message)


for _state in (initialized, loading, ready, *TESTING_STATES, unloading):

    @_state.upon(I.fatal).to(softerror)
    def _fatal_soft(inputs: MasterInputs, core: MasterCore, message: str) -> None:
        core.fx.enter_softerror(message)


# Broker loss (a "blip"): every state is kept, loading, testing and unloading included.
# The phase's timer keeps running and decides: messages that still arrive after the
# reconnect complete the phase (TestApps on paho queue their QoS > 0 publishes while
# offline); when the timer expires the softerror names the sites that never answered.
# On the reconnect the master re-publishes its status (``connected`` below) and the Control
# apps echo their states, which resynchronises the site tracking.
for _state in ALL_STATES:
    _state.upon(I.disconnected).loop()(
        lambda inputs, core: core.fx.note_disconnected()
    )

for _state in ALL_STATES:
    if _state is not startup:
        _state.upon(I.connected).loop()(lambda inputs, core: core.fx.republish())
    if _state is not stopped:

        @_state.upon(I.stop).to(stopped)
        def _stop(inputs: MasterInputs, core: MasterCore) -> None:
            core.fx.shutdown()


stopped.upon(I.stop).loop().returns(None)

# --------------------------------------------------------------------------------------
# Everything else that can arrive in a state but does not matter there: logged no-ops.

_EVENTS = {
    "jobAccepted": I.jobAccepted,
    "partStarted": I.partStarted,
    "synced": I.synced,
    "loaded": I.loaded,
    "acknowledged": I.acknowledged,
    "partDone": I.partDone,
    "resourceRequested": I.resourceRequested,
    "resourceDone": I.resourceDone,
    "fault": I.fault,
    "fatal": I.fatal,
}


def _ignore(name: str):
    def behaviour(inputs: MasterInputs, core: MasterCore, *args: object) -> None:
        core.fx.ignore(name, " ".join(str(a) for a in args))

    behaviour.__name__ = f"ignore_{name}"
    return behaviour


_HANDLED: dict[str, set[Any]] = {
    "jobAccepted": {initialized},
    "partStarted": {ready},
    "synced": {connecting, unloading},
    "loaded": {loading},
    "acknowledged": {t_starting},
    "partDone": set(TESTING_STATES),
    "resourceRequested": {t_starting, t_running},
    "resourceDone": {t_resource},
    "fault": {connecting, initialized, loading, ready, *TESTING_STATES, unloading},
    "fatal": {connecting, initialized, loading, ready, *TESTING_STATES, unloading},
}

for _name, _input in _EVENTS.items():
    for _state in ALL_STATES:
        if _state not in _HANDLED[_name]:
            _state.upon(_input).loop()(_ignore(_name))

MasterMachine = builder.build()

EXTERNAL = {
    "testing.starting": "testing",
    "testing.running": "testing",
    "testing.waiting_for_resource": "testing",
}
