"""The handler application's state machine (protocol.md 13.2, 13.3, 13.5).

:class:`HandlerController` is the only public object: the MQTT service feeds
it master states and responses, the line driver feeds it parsed requests, and
it answers through two narrow collaborators, a :class:`MasterBus` (MQTT
publications) and a :class:`~ate.handler.drivers.HandlerLink` (lines to the
handler device). What goes to and comes from the masters are the messages of
:mod:`ate.protocol` (``Load``, ``Next``, ``NextResponse``, ``ErrorResponse``,
...); :mod:`ate.handler.service` encodes and decodes them with its codec.
The bookkeeping (:class:`Masters`, :class:`NextPlan`, the pending work, the
timer, the collaborators' Protocols) is in :mod:`ate.handler.masters`, the
machine's inputs, core and shared steps in :mod:`ate.handler.actions`.

The lifecycle is an Automat ``TypeMachineBuilder`` machine with the states of
13.2: ``startup``, ``connecting``, ``initialized``, ``loading``, ``ready``,
``testing``, ``unloading`` and ``error``. Every input has an explicit
transition in every state where it can arrive.

Several masters (ate-handler's rules)
-------------------------------------
* The last state of every configured master is kept (:class:`Masters`).
* A *pending expectation* is a state that a set of masters must report. For
  ``load``, ``next`` and ``unload`` the report must be fresh (after the
  command); for ``initialized`` in ``connecting``/``error`` and after a lot
  ended outside the handler, a master already ``initialized`` counts.
  Other states in between are ignored, except in ``connecting``, where
  anything but ``connecting``/``initialized`` is an error (reference).
* A master that reports ``crash``, ``softerror`` or ``error`` after an earlier
  state is **excluded**: it gets no more commands and nobody waits for it. The
  exclusion is logged and published as the handler status message naming the
  master. While at least one master is left the handler goes on: a pending
  ``load``/``unload`` completes with the others; a pending ``next`` that had
  sites on the lost master is answered ``TS|-1|tester D failed during the
  test: ...|`` once the others are done, and later ``ST`` lines with enabled
  sites on an excluded master are refused with ``TS|-1|tester D is not
  available|``. When no master is left the handler goes to ``error``.
* A master that misses the 300 s ``initialized`` deadline (start-up or error
  recovery) is excluded the same way, provided another master is initialized.
* An excluded master is included again when it reports ``initialized`` while
  the handler is between lots (``connecting``, ``initialized``, ``error``);
  if that happens during a lot it rejoins when the handler next reaches
  ``initialized``. A master that rejoins in ``initialized`` gets the
  ``site-layout`` at once.
* Timeouts of ``load``/``next``/``unload`` (and the 15 s ``initialized``
  wait after a lot ended outside the handler) send the handler to
  ``error`` with ``TS|-1|<reason>|`` (13.2 ★).
* An error response of a master (4.2) to the pending command returns the
  handler to the state before the command and is passed on to the line.
  Masters that had accepted the same command keep their new state.

Resend after a broker loss (README "Broker loss", protocol.md 13.2)
-------------------------------------------------------------------
Commands go out with QoS 0, so a broker loss can swallow a ``load``, ``next``
or ``unload``. A master *has* the pending command once it reports the state the
command leads to (``loading``, ``testing``, ``unloading``) or answers it. A
``Master/status`` with the state the command was sent in (``initialized`` for
load, ``ready`` for next and unload) proves nothing: the master may have
published it before the command reached it (its answer to the handler's own
``connecting`` at start-up, a re-publish after its reconnect or when a hold
starts or ends), and it can arrive after the command was sent. On such a status
the handler asks that master ``get-state``; a master gets its commands in order
on ``~/Master/cmd``, so it answers after the command, and only an answer that
still shows the state the command was sent in means it has *not* got it. After
its own reconnect the handler asks the same of every master that has not shown
it has the command. Only then is the command resent to that master (at most
``MAX_RESENDS`` times; the command's timeout still decides). A refusal comes
before that answer and ends the command, so a refused command is never resent,
and a master that got the command is not sent it again; the one exception (the
master finished the whole command while the handler was away, and its answer
was lost with the handler's clean session) is in the README. ate-master also
ignores a ``next`` identical to the one of the part under test, so a resend that
crosses a late ``testing`` starts nothing.
"""

from __future__ import annotations

from typing import Any, Callable

from automat import TypeMachineBuilder
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ate.handler import lineproto as lp
from ate.handler.actions import (
    HandlerCore,
    HandlerInputs,
    _check,
    _exclude_late,
    _expect_initialized,
    _fail_in,
    _ignore,
    _malformed_in,
    _publish,
    _refuse_in,
    _rejoin,
    _republish_in,
    _response_in,
    _send_layout,
    _snapshot_in,
    _state_answer_in,
    _status_in,
)
from ate.handler.masters import (  # the bookkeeping, its public names re-exported
    _QUERIES,
    FAILED_STATES,
    HANDLER_STATES,
    INITIALIZED,
    MAX_RESENDS,  # noqa: F401 (re-exported)
    NO_TESTER,
    READY,
    Deadline,
    HandlerSettings,
    HandlerSnapshot,
    LineSink,
    MasterBus,
    MasterResponse,
    Masters,
    NextPlan,
    Work,
    _line_message,
)
from ate.protocol.messages import (
    ErrorResponse,
    GetStateResponse,
    HandlerCommand,
    HandlerResponse,
    IdentifyResponse,
    Load,
    Unload,
)

__all__ = [
    "HANDLER_STATES",
    "FAILED_STATES",
    "NO_TESTER",
    "MasterBus",
    "LineSink",
    "MasterResponse",
    "HandlerSettings",
    "HandlerSnapshot",
    "Masters",
    "NextPlan",
    "HandlerController",
    "HandlerMachine",
]

log = Logger(namespace="ate.handler")


# --------------------------------------------------------------------------
# the machine (its inputs, core and shared steps are in ate.handler.actions)

builder = TypeMachineBuilder(HandlerInputs, HandlerCore)
startup = builder.state("startup")
connecting = builder.state("connecting")
initialized = builder.state("initialized")
loading = builder.state("loading")
ready = builder.state("ready")
testing = builder.state("testing")
unloading = builder.state("unloading")
error = builder.state("error")

_ALL = {
    "startup": startup,
    "connecting": connecting,
    "initialized": initialized,
    "loading": loading,
    "ready": ready,
    "testing": testing,
    "unloading": unloading,
    "error": error,
}

# every state: status snapshot, master status/response tracking
for _name, _state in _ALL.items():
    _state.upon(HandlerInputs.status).loop()(_snapshot_in(_name))
    _state.upon(HandlerInputs.master_status).loop()(_status_in(_name))
    _state.upon(HandlerInputs.master_response).loop()(_response_in(_name))
    _state.upon(HandlerInputs.response_malformed).loop()(_malformed_in(_name))
    _state.upon(HandlerInputs.state_answered).loop()(_state_answer_in(_name))
    if _name != "startup":
        _state.upon(HandlerInputs.mqtt_connected).loop()(_republish_in(_name))
    if _name != "error":
        _state.upon(HandlerInputs.failed).to(error)(_fail_in(_name))
    if _name not in ("ready",):
        _state.upon(HandlerInputs.master_unloaded).loop()(_ignore)

# refusals of serial commands (13.3); startup counts as connecting
_REFUSALS: dict[str, dict[str, tuple[str, str | None]]] = {
    "startup": {c: ("error", NO_TESTER) for c in ("load", "next", "unload")},
    "connecting": {c: ("error", NO_TESTER) for c in ("load", "next", "unload")},
    "initialized": {"next": ("notlot", None), "unload": ("notlot", None)},
    "loading": {c: ("error", None) for c in ("load", "next", "unload")},
    "ready": {"load": ("havelot", None)},
    "testing": {c: ("busy", None) for c in ("load", "next", "unload")},
    "unloading": {c: ("error", None) for c in ("load", "next", "unload")},
    "error": {c: ("error", None) for c in ("load", "next", "unload")},
}
_INPUT_OF: dict[str, Callable[..., Any]] = {"load": HandlerInputs.load, "next": HandlerInputs.next,
             "unload": HandlerInputs.unload}
for _name, _table in _REFUSALS.items():
    for _command, (_rtype, _message) in _table.items():
        _ALL[_name].upon(_INPUT_OF[_command]).loop()(
            _refuse_in(_name, _command, _rtype, _message))

# ---- startup / connecting


@startup.upon(HandlerInputs.mqtt_connected).to(connecting)
def _connected(inputs: HandlerInputs, core: HandlerCore) -> None:
    _publish(core, "connecting")
    core.masters.expect(INITIALIZED, core.masters.live(), fresh=False)
    core.deadline.arm(core.settings.startup_timeout, inputs.deadline)
    _check(inputs, core)


for _state in (startup, ready):
    _state.upon(HandlerInputs.command_refused).loop()(_ignore)
    _state.upon(HandlerInputs.reached).loop()(_ignore)
    _state.upon(HandlerInputs.deadline).loop()(_ignore)


@connecting.upon(HandlerInputs.reached).to(initialized)
@error.upon(HandlerInputs.reached).to(initialized)
def _all_initialized(inputs: HandlerInputs, core: HandlerCore) -> None:
    core.deadline.cancel()
    core.masters.clear()
    _publish(core, INITIALIZED)
    _send_layout(core, core.masters.live())


@connecting.upon(HandlerInputs.deadline).to(error)
def _startup_timeout(inputs: HandlerInputs, core: HandlerCore) -> None:
    late = sorted(core.masters.waiting)
    reason = f"start-up timeout: master(s) {', '.join(late)} did not report initialized"
    _exclude_late(core, core.settings.startup_timeout)
    _fail_in("connecting")(inputs, core, reason)


for _state in (connecting, initialized, error):
    _state.upon(HandlerInputs.command_refused).loop()(_ignore)

# ---- initialized


@initialized.upon(HandlerInputs.load).to(loading)
def _load(inputs: HandlerInputs, core: HandlerCore, cmd: lp.LoadLot) -> None:
    core.deadline.cancel()
    live = core.masters.live()
    load = Load(cmd.lot, cmd.devicetype, cmd.temperature)
    core.masters.expect(READY, live, fresh=True)
    core.work.begin("load", core.settings.load_timeout, {d: load for d in live})
    core.deadline.arm(core.settings.load_timeout, inputs.deadline)
    _publish(core, "loading")
    for device in live:
        core.bus.command(device, load)


@initialized.upon(HandlerInputs.reached).loop()
def _all_back_initialized(inputs: HandlerInputs, core: HandlerCore) -> None:
    core.deadline.cancel()
    core.masters.clear()


@initialized.upon(HandlerInputs.deadline).to(error)
def _initialized_timeout(inputs: HandlerInputs, core: HandlerCore) -> None:
    late = sorted(core.masters.waiting)
    _fail_in(INITIALIZED)(
        inputs, core,
        f"master(s) {', '.join(late)} did not report initialized within "
        f"{core.settings.ready_timeout:g} s")


# ---- loading / testing / unloading: completion, refusal by a master, timeout


@loading.upon(HandlerInputs.reached).to(ready)
def _loaded(inputs: HandlerInputs, core: HandlerCore) -> None:
    core.deadline.cancel()
    core.masters.clear()
    core.work.clear()
    _publish(core, READY)
    core.link.send(lp.TS_LOT_LOADED)


@ready.upon(HandlerInputs.next).loop()
def _next(inputs: HandlerInputs, core: HandlerCore, cmd: lp.StartTest) -> None:
    plan = NextPlan.build(cmd, core.settings, core.masters)
    if isinstance(plan, str):
        log.warn("ST refused: {reason}", reason=plan)
        core.link.send(lp.error_status(plan))
        return
    core.masters.expect(READY, plan.devices, fresh=True)
    commands = {d: plan.command(d) for d in plan.devices}
    core.work.begin("next", core.settings.next_timeout, commands, plan)
    core.deadline.arm(core.settings.next_timeout, inputs.deadline)
    inputs.test_started()
    for device, command in commands.items():
        core.bus.command(device, command)


@ready.upon(HandlerInputs.test_started).to(testing)
def _test_started(inputs: HandlerInputs, core: HandlerCore) -> None:
    _publish(core, "testing")


@ready.upon(HandlerInputs.unload).to(unloading)
def _unload(inputs: HandlerInputs, core: HandlerCore) -> None:
    live = core.masters.live()
    core.masters.expect(INITIALIZED, live, fresh=True)
    unload = Unload(False)
    core.work.begin("unload", core.settings.unload_timeout, {d: unload for d in live})
    core.deadline.arm(core.settings.unload_timeout, inputs.deadline)
    _publish(core, "unloading")
    for device in live:
        core.bus.command(device, unload)


@ready.upon(HandlerInputs.master_unloaded).to(initialized)
def _unloaded_elsewhere(inputs: HandlerInputs, core: HandlerCore, device_id: str) -> None:
    _publish(core, INITIALIZED, f"master {device_id} reported initialized; lot ended")
    _expect_initialized(inputs, core, core.settings.ready_timeout)


@testing.upon(HandlerInputs.reached).to(ready)
def _tested(inputs: HandlerInputs, core: HandlerCore) -> None:
    core.deadline.cancel()
    plan = core.work.plan
    core.masters.clear()
    core.work.clear()
    _publish(core, READY)
    if plan is not None:
        core.link.send(plan.reply())


@unloading.upon(HandlerInputs.reached).to(initialized)
def _unloaded(inputs: HandlerInputs, core: HandlerCore) -> None:
    core.deadline.cancel()
    core.masters.clear()
    core.work.clear()
    _publish(core, INITIALIZED)
    core.link.send(lp.TS_OK)
    _rejoin(core)


def _refused_back_to(here: str, back: str) -> Callable[..., None]:
    def refused(inputs: HandlerInputs, core: HandlerCore, device: str,
                reply: ErrorResponse) -> None:
        core.deadline.cancel()
        core.masters.clear()
        core.work.clear()
        message = _line_message(reply)
        text = message or reply.response_type
        _publish(core, back, f"master {device} refused {reply.command_type}: {text}")
        core.link.send(lp.error_response_status(reply.response_type, message))

    refused.__name__ = f"refused_in_{here}"
    return refused


loading.upon(HandlerInputs.command_refused).to(initialized)(
    _refused_back_to("loading", INITIALIZED))
testing.upon(HandlerInputs.command_refused).to(ready)(_refused_back_to("testing", READY))
unloading.upon(HandlerInputs.command_refused).to(ready)(_refused_back_to("unloading", READY))


def _timeout_in(here: str, target: str) -> Callable[[HandlerInputs, HandlerCore], None]:
    def timed_out(inputs: HandlerInputs, core: HandlerCore) -> None:
        late = sorted(core.masters.waiting) or sorted(
            d for d in (core.work.plan.devices if core.work.plan else ())
            if d not in core.work.plan.responded)  # type: ignore[union-attr]
        reason = (f"{core.work.kind} timeout: master(s) {', '.join(late)} did not report "
                  f"{target} within {core.work.timeout:g} s")
        _fail_in(here)(inputs, core, reason)

    timed_out.__name__ = f"timeout_in_{here}"
    return timed_out


loading.upon(HandlerInputs.deadline).to(error)(_timeout_in("loading", READY))
testing.upon(HandlerInputs.deadline).to(error)(_timeout_in("testing", READY))
unloading.upon(HandlerInputs.deadline).to(error)(_timeout_in("unloading", INITIALIZED))

# ---- error


@error.upon(HandlerInputs.deadline).loop()
def _error_timeout(inputs: HandlerInputs, core: HandlerCore) -> None:
    late = sorted(core.masters.waiting)
    _exclude_late(core, core.settings.startup_timeout)
    if late:
        _publish(core, "error",
                 f"master(s) {', '.join(late)} did not report initialized")
    _expect_initialized(inputs, core, core.settings.startup_timeout)


@error.upon(HandlerInputs.failed).loop()
def _failed_again(inputs: HandlerInputs, core: HandlerCore, reason: str) -> None:
    log.error("handler error: {reason}", reason=reason)
    _publish(core, "error", reason)


HandlerMachine = builder.build()


# --------------------------------------------------------------------------
# the public object


class _Slot:
    """The line to the device, attached later; drops lines while detached."""

    def __init__(self) -> None:
        self.link: LineSink | None = None

    def send(self, msg: lp.Reply) -> None:
        if self.link is None:
            log.warn("no handler device attached; dropped {line}", line=lp.format_line(msg))
            return
        self.link.send(msg)


class _Query:
    """One ``ID?`` or ``TS?`` waiting for the answers of the live masters."""

    def __init__(self, waiting: set[str], call: IDelayedCall) -> None:
        self.waiting = waiting
        self.answers: dict[str, MasterResponse] = {}
        self.call = call


class HandlerController:
    """The handler application without its transports (the "Boss").

    ``bus`` publishes to MQTT; ``link`` (or :meth:`attach`) writes to the
    handler device. Inputs: :meth:`mqtt_connected`, :meth:`master_status`,
    :meth:`master_response`, :meth:`master_request` (from MQTT) and
    :meth:`line_request` (from the device).
    """

    def __init__(self, clock: IReactorTime, settings: HandlerSettings, bus: MasterBus,
                 link: LineSink | None = None) -> None:
        self.clock = clock
        self.settings = settings
        self.bus = bus
        self._slot = _Slot()
        self._slot.link = link
        self.core = HandlerCore(
            settings=settings,
            bus=bus,
            link=self._slot,
            deadline=Deadline(clock),
            masters=Masters(settings.device_ids),
            work=Work(),
        )
        self.machine = HandlerMachine(self.core)
        self._queries: dict[str, _Query] = {}
        self.connected = False

    def attach(self, link: LineSink | None) -> None:
        """Attach (or with ``None`` detach) the line to the handler device."""
        self._slot.link = link

    # ---- from MQTT

    def mqtt_connected(self) -> None:
        self.connected = True
        self.machine.mqtt_connected()

    def mqtt_disconnected(self) -> None:
        self.connected = False
        log.warn("MQTT connection lost")

    def master_status(self, device_id: str, state: str, message: str = "") -> None:
        self.machine.master_status(device_id, state, message or "")

    def master_response(self, device_id: str, reply: MasterResponse) -> None:
        """A decoded ``ate/D/Master/response``; answers to ``ID?``/``TS?`` go to the query."""
        if isinstance(reply, IdentifyResponse):
            kind: str | None = "identify"
        elif isinstance(reply, GetStateResponse):
            kind = "get-state"
        elif isinstance(reply, ErrorResponse) and reply.command_type in _QUERIES:
            kind = reply.command_type
        else:
            kind = None
        if kind is not None:
            self._answer(kind, device_id, reply)
            return
        self.machine.master_response(device_id, reply)

    def master_response_malformed(self, device_id: str, command: str | None,
                                  reason: str) -> None:
        """An ``ate/D/Master/response`` the codec refused (the caller logged it); ``command``
        is the response's type as far as it could be read."""
        self.machine.response_malformed(device_id, command, reason)

    def master_request(self, device_id: str, cmd: HandlerCommand) -> None:
        """``ate/D/Handler/command``: ``identify``/``get-state`` become ``ID?``/``HS?``."""
        if cmd.command == "identify" and not cmd.payload:
            self._slot.send(lp.AskIdentity())
        elif cmd.command == "get-state" and not cmd.payload:
            self._slot.send(lp.AskState())
        else:
            log.warn("handler command {type} from {device} is not implemented",
                     type=cmd.command, device=device_id)

    # ---- from the handler device

    def line_request(self, req: lp.Request) -> None:
        """One parsed line from the handler device."""
        if isinstance(req, lp.LoadLot):
            self.machine.load(req)
        elif isinstance(req, lp.StartTest):
            self.machine.next(req)
        elif isinstance(req, lp.LotEnd):
            self.machine.unload()
        elif isinstance(req, lp.IdentifyQuery):
            self._ask("identify")
        elif isinstance(req, lp.StateQuery):
            self._ask("get-state")
        elif isinstance(req, lp.Temperature):
            self.bus.handler_response(HandlerResponse({"temperature": req.value}))
        elif isinstance(req, lp.HandlerState):
            self.core.device["state"] = f"{req.code} {req.text}"
            log.info("handler device state: {code} {text}", code=req.code, text=req.text)
        elif isinstance(req, lp.HandlerName):
            self.core.device["name"] = req.name
            log.info("handler device name: {name}", name=req.name)
        else:  # pragma: no cover - the parser produces nothing else
            log.warn("unexpected line request {req!r}", req=req)

    def status(self) -> HandlerSnapshot:
        return self.machine.status()

    # ---- ID? and TS? (allowed in every state)

    def _ask(self, kind: str) -> None:
        live = self.core.masters.live()
        if not self.connected or not live:
            self._slot.send(lp.error_status(NO_TESTER))
            return
        if kind in self._queries:
            log.info("{kind} already asked; waiting for the answer", kind=kind)
            return
        call = self.clock.callLater(self.settings.ready_timeout, self._query_timeout, kind)
        self._queries[kind] = _Query(set(live), call)
        for device in live:
            self.bus.command(device, _QUERIES[kind])

    def _answer(self, kind: str, device: str, reply: MasterResponse) -> None:
        probed = False
        if isinstance(reply, GetStateResponse):
            probed = bool(self.machine.state_answered(device, reply.state))
        query = self._queries.get(kind)
        if query is None or device not in query.waiting:
            if not probed:
                log.info("{kind} answer from {device} not asked for", kind=kind, device=device)
            return
        query.waiting.discard(device)
        query.answers[device] = reply
        if not query.waiting:
            query.call.cancel()
            del self._queries[kind]
            self._slot.send(self._query_reply(kind, query))

    def _query_timeout(self, kind: str) -> None:
        query = self._queries.pop(kind)
        late = ", ".join(sorted(query.waiting))
        self._slot.send(lp.error_status(f"no {kind} answer from master(s) {late}"))

    def _query_reply(self, kind: str, query: _Query) -> lp.Reply:
        order = [d for d in self.settings.device_ids if d in query.answers]
        answers = [query.answers[d] for d in order]
        for reply in answers:
            if isinstance(reply, ErrorResponse):
                return lp.error_response_status(reply.response_type, _line_message(reply))
        if kind == "identify":
            return lp.TesterName(",".join(
                r.name if isinstance(r, IdentifyResponse) else d
                for d, r in zip(order, answers, strict=True)))
        for device, reply in zip(order, answers, strict=True):
            if isinstance(reply, GetStateResponse) and reply.state in FAILED_STATES:
                return lp.error_status(reply.message or f"tester {device} is in {reply.state}")
        return lp.TS_OK
