"""The handler application's state machine (protocol.md 13.2, 13.3, 13.5).

:class:`HandlerController` is the only public object: the MQTT service feeds
it master states and responses, the line driver feeds it parsed requests, and
it answers through two narrow collaborators, a :class:`MasterBus` (MQTT
publications) and a :class:`~ate.handler.drivers.HandlerLink` (lines to the
handler device). What goes to and comes from the masters are the messages of
:mod:`ate.protocol` (``Load``, ``Next``, ``NextResponse``, ``ErrorResponse``,
...); :mod:`ate.handler.service` encodes and decodes them with its codec.

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

Resend after a broker loss (README "Broker loss")
-------------------------------------------------
Commands go out with QoS 0, so a broker loss can swallow a ``load``, ``next``
or ``unload``. A master *has* the pending command once it reports the state the
command leads to (``loading``, ``testing``, ``unloading``) or answers it; it has
*not* got it when, before that, it reports the state the command was sent in
(``initialized`` for load, ``ready`` for next and unload), on ``Master/status``
or in the answer to the ``get-state`` the handler sends to every such master
after its own reconnect. Only then is the command resent to that master (at
most ``MAX_RESENDS`` times; the command's timeout still decides). A master
publishes its states in order and a part's ``next`` response before its
``ready``, so a master that did get the command is never sent it twice; the
one exception (the master finished the whole command while the handler was
away, and its answer was lost with the handler's clean session) is in the
README. ate-master also ignores a ``next`` identical to the one of the part
under test, so a resend that crosses a late ``testing`` starts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, Union

from automat import TypeMachineBuilder
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ate.handler import lineproto as lp
from ate.protocol.messages import (
    ErrorResponse,
    GetHostResponse,
    GetState,
    GetStateResponse,
    HandlerCommand,
    HandlerResponse,
    Identify,
    IdentifyResponse,
    Load,
    Message,
    Next,
    NextResponse,
    NextResult,
    SiteInfo,
    SiteLayout,
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

HANDLER_STATES = (
    "startup",
    "connecting",
    "initialized",
    "loading",
    "ready",
    "testing",
    "unloading",
    "error",
)
#: Master states that exclude a master (13.2 ★: ``error`` like ``softerror``).
FAILED_STATES = frozenset({"softerror", "error", "crash"})
INITIALIZED = "initialized"
READY = "ready"
#: How often one pending command is resent to one master after a broker loss.
MAX_RESENDS = 3
#: pending command -> (handler state while pending, master states showing that the master
#: has the command, the master state showing that it has not got it)
_RESEND_RULES: dict[str, tuple[str, frozenset[str], str]] = {
    "load": ("loading", frozenset({"loading", "ready"}), "initialized"),
    "next": ("testing", frozenset({"testing"}), "ready"),
    "unload": ("unloading", frozenset({"unloading", "initialized"}), "ready"),
}
#: ate-handler's spelling of the reference's ``No Tester is availabe`` (13.3).
NO_TESTER = "No tester is available"
_BETWEEN_LOTS = frozenset({"connecting", "initialized", "error"})
#: The queries of the line (``ID?``, ``TS?``) and the command each sends to every master.
_QUERIES: dict[str, Message] = {"identify": Identify(), "get-state": GetState()}


# --------------------------------------------------------------------------
# collaborators


class MasterBus(Protocol):
    """What the handler publishes on MQTT (13.1), as messages of :mod:`ate.protocol`."""

    def command(self, device_id: str, msg: Message) -> None:
        """Publish a handler command (``Load``, ``Next``, ``Unload``, ``Identify``,
        ``GetState``, ``SiteLayout``) on ``ate/D/Master/cmd``."""

    def handler_status(self, state: str, message: str) -> None:
        """Publish the handler status on ``ate/H/Handler/status``."""

    def handler_response(self, msg: HandlerResponse) -> None:
        """Publish on ``ate/H/Handler/response`` (temperature reply)."""


class LineSink(Protocol):
    """The line towards the handler device (see :mod:`ate.handler.drivers`)."""

    def send(self, msg: lp.Reply) -> None:
        """Write one reply line."""


#: A message from ``ate/D/Master/response`` (2.3, 4.2), decoded by :class:`ate.protocol.Codec`.
MasterResponse = Union[NextResponse, IdentifyResponse, GetStateResponse, GetHostResponse,
                       ErrorResponse]


def _line_message(reply: ErrorResponse) -> str | None:
    """The message that goes on the line with an error response: only for
    ``response_type`` ``error`` (4.2, the top-level ``message``)."""
    return reply.message if reply.response_type == "error" else None


@dataclass(frozen=True)
class HandlerSettings:
    """The parts of the handler config the machine needs."""

    device_ids: tuple[str, ...]
    site_layout: tuple[tuple[int, int], ...] = ()
    site_map: tuple[tuple[str, str], ...] | None = None
    load_timeout: float = 200.0
    next_timeout: float = 40.0
    unload_timeout: float = 70.0
    startup_timeout: float = 300.0
    ready_timeout: float = 15.0

    @classmethod
    def from_config(cls, config: Any) -> "HandlerSettings":
        """Build from an :class:`ate.config.HandlerConfig`."""
        t = config.timeouts
        return cls(
            device_ids=tuple(config.device_ids),
            site_layout=tuple(tuple(p) for p in config.site_layout),  # type: ignore[misc]
            site_map=config.site_map,
            load_timeout=t.load,
            next_timeout=t.next,
            unload_timeout=t.unload,
            startup_timeout=t.startup,
            ready_timeout=t.ready,
        )


@dataclass(frozen=True)
class HandlerSnapshot:
    """What :meth:`HandlerController.status` returns."""

    state: str
    masters: Mapping[str, str | None]
    excluded: Mapping[str, str]
    pending: str | None
    device_state: str | None = None
    device_name: str | None = None


class Masters:
    """Last state of every configured master, exclusions and the expectation."""

    def __init__(self, device_ids: Sequence[str]) -> None:
        self.order = tuple(device_ids)
        self.last: dict[str, str | None] = {d: None for d in device_ids}
        self.excluded: dict[str, str] = {}
        self.target: str | None = None
        self.waiting: set[str] = set()

    def live(self) -> list[str]:
        """Configured masters that are not excluded, in config order."""
        return [d for d in self.order if d not in self.excluded]

    def update(self, device_id: str, state: str) -> str | None:
        """Record ``state``; return the previous one."""
        prev = self.last[device_id]
        self.last[device_id] = state
        return prev

    def exclude(self, device_id: str, reason: str) -> None:
        self.excluded[device_id] = reason
        self.waiting.discard(device_id)

    def include(self, device_id: str) -> None:
        self.excluded.pop(device_id, None)

    def expect(self, target: str, over: Sequence[str], *, fresh: bool) -> None:
        """Wait for ``target`` from every master in ``over``.

        Without ``fresh``, masters whose last state already is ``target`` count.
        """
        self.target = target
        self.waiting = {d for d in over if fresh or self.last[d] != target}

    def seen(self, device_id: str, state: str) -> None:
        if state == self.target:
            self.waiting.discard(device_id)

    def clear(self) -> None:
        self.target = None
        self.waiting = set()


class NextPlan:
    """One ``ST`` split over the masters (13.5) and its collected results."""

    def __init__(self, cmd: lp.StartTest) -> None:
        self.cmd = cmd
        #: device id -> list of (handler site index, site info for the master)
        self.per_master: dict[str, list[tuple[int, SiteInfo]]] = {}
        self.index_of: dict[tuple[str, str], int] = {}
        self.results: dict[int, lp.EtPart] = {}
        self.responded: set[str] = set()
        self.lost: dict[str, str] = {}
        self.problems: list[str] = []

    @classmethod
    def build(
        cls, cmd: lp.StartTest, settings: HandlerSettings, masters: Masters
    ) -> "NextPlan | str":
        """Split ``cmd``; return the plan or the reason to refuse it."""
        enabled = cmd.enabled()
        if not enabled:
            return "no site enabled"
        site_map = settings.site_map
        if site_map is None and len(settings.device_ids) > 1:
            return "site_map required for several testers"
        plan = cls(cmd)
        for index, block in enabled:
            if site_map is None:
                device, site = settings.device_ids[0], str(index)
            elif index < len(site_map):
                device, site = site_map[index]
            else:
                return f"site {index} is not in site_map"
            if device in masters.excluded:
                return f"tester {device} is not available"
            info = SiteInfo(site, block.partid, block.binning, block.logflag, block.info)
            plan.per_master.setdefault(device, []).append((index, info))
            plan.index_of[(device, site)] = index
        return plan

    @property
    def devices(self) -> list[str]:
        return list(self.per_master)

    def command(self, device_id: str) -> Next:
        """The ``next`` for one master: its sites only."""
        return Next(tuple(info for _, info in self.per_master[device_id]))

    def _responding(self, device_id: str) -> bool:
        if device_id not in self.per_master or device_id in self.responded:
            log.warn("unexpected next response from {device}", device=device_id)
            return False
        self.responded.add(device_id)
        return True

    def record(self, device_id: str, sites: Sequence[NextResult]) -> None:
        """Take one master's ``next`` response; problems are kept for the reply."""
        if not self._responding(device_id):
            return
        for entry in sites:
            index = self.index_of.get((device_id, entry.siteid))
            if index is None:
                self.problems.append(
                    f"tester {device_id} sent a bad result for site {entry.siteid}")
                continue
            self.results[index] = lp.EtPart(
                "" if entry.partid is None else str(entry.partid),
                entry.binning,
                entry.logflag,
                entry.additionalinfo,
            )

    def malformed(self, device_id: str, reason: str) -> None:
        """One master answered with a response the codec refused: the reply is an error."""
        if self._responding(device_id):
            self.problems.append(f"tester {device_id} sent a bad next response: {reason}")

    def lose(self, device_id: str, reason: str) -> None:
        if device_id in self.per_master:
            self.lost[device_id] = reason

    def all_responded(self) -> bool:
        return all(d in self.responded or d in self.lost for d in self.per_master)

    def reply(self) -> lp.Reply:
        """One ``ET`` in handler site order, or ``TS|-1|...|`` if incomplete."""
        if self.lost:
            device, reason = next(iter(self.lost.items()))
            return lp.error_status(f"tester {device} failed during the test: {reason}")
        if self.problems:
            return lp.error_status(self.problems[0])
        indices = [i for info in self.per_master.values() for i, _ in info]
        missing = sorted(i for i in indices if i not in self.results)
        if missing:
            return lp.error_status(f"no result for site {missing[0]}")
        return lp.EndTest(tuple(self.results[i] for i in sorted(indices)))


class Deadline:
    """The machine's one timer (re-armed on every state that needs one)."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.call: IDelayedCall | None = None

    def arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self.cancel()
        self.call = self.clock.callLater(seconds, callback)

    def cancel(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


class Work:
    """The serial command waiting for the masters (``load``/``next``/``unload``).

    ``commands`` is what was sent to each master (for a resend); ``confirmed`` the
    masters that showed they have the command; ``probing`` the masters asked
    ``get-state`` after a reconnect; ``resends`` how often it was resent to each.
    """

    def __init__(self) -> None:
        self.kind: str | None = None
        self.plan: NextPlan | None = None
        self.timeout: float = 0.0
        self.commands: dict[str, Message] = {}
        self.confirmed: set[str] = set()
        self.probing: set[str] = set()
        self.resends: dict[str, int] = {}

    def begin(self, kind: str, timeout: float, commands: Mapping[str, Message],
              plan: NextPlan | None = None) -> None:
        self.kind, self.timeout, self.plan = kind, timeout, plan
        self.commands = dict(commands)
        self.confirmed, self.probing, self.resends = set(), set(), {}

    def clear(self) -> None:
        self.kind, self.plan = None, None
        self.commands = {}
        self.confirmed, self.probing, self.resends = set(), set(), {}

    def answered(self, device: str) -> bool:
        """The master answered the pending ``next`` (or is lost for it)."""
        plan = self.plan
        return plan is not None and (device in plan.responded or device in plan.lost)


# --------------------------------------------------------------------------
# the machine


class HandlerInputs(Protocol):
    def mqttConnected(self) -> None: ...
    def stateAnswered(self, device_id: str, state: str) -> bool: ...
    def masterStatus(self, device_id: str, state: str, message: str) -> None: ...
    def masterResponse(self, device_id: str, reply: MasterResponse) -> None: ...
    def responseMalformed(self, device_id: str, command: str | None, reason: str) -> None: ...
    def load(self, cmd: lp.LoadLot) -> None: ...
    def next(self, cmd: lp.StartTest) -> None: ...
    def unload(self) -> None: ...
    def testStarted(self) -> None: ...
    def masterUnloaded(self, device_id: str) -> None: ...
    def commandRefused(self, device_id: str, reply: ErrorResponse) -> None: ...
    def reached(self) -> None: ...
    def failed(self, reason: str) -> None: ...
    def deadline(self) -> None: ...
    def status(self) -> HandlerSnapshot: ...


@dataclass
class HandlerCore:
    settings: HandlerSettings
    bus: MasterBus
    link: LineSink
    deadline: Deadline
    masters: Masters
    work: Work
    device: dict[str, str] = field(default_factory=dict)  # what the device told us


def _publish(core: HandlerCore, state: str, message: str = "") -> None:
    log.info("handler state {state} {message}", state=state, message=message)
    core.bus.handler_status(state, message)


def _send_layout(core: HandlerCore, devices: Sequence[str]) -> None:
    layout = SiteLayout(core.settings.site_layout)
    for device in devices:
        core.bus.command(device, layout)


def _check(inputs: HandlerInputs, core: HandlerCore) -> None:
    """Fire ``reached`` when the pending expectation is complete."""
    m = core.masters
    if m.target is None or m.waiting or not m.live():
        return
    plan = core.work.plan
    if plan is not None and not plan.all_responded():
        return
    inputs.reached()


def _lose(inputs: HandlerInputs, core: HandlerCore, here: str, device: str, reason: str) -> None:
    """Exclude ``device``; go on with the others, or fail when none is left."""
    core.masters.exclude(device, reason)
    log.error("{reason}; master {device} excluded", reason=reason, device=device)
    if not core.masters.live():
        inputs.failed(reason)
        return
    _publish(core, here, f"{reason}; excluded until it reports initialized")
    if core.work.plan is not None:
        core.work.plan.lose(device, reason)
    _check(inputs, core)


def _track(
    inputs: HandlerInputs, core: HandlerCore, here: str, device: str, state: str, message: str
) -> None:
    m = core.masters
    if device not in m.last:
        inputs.failed(f"unknown master id {device}")
        return
    prev = m.update(device, state)
    if state in FAILED_STATES:
        if prev is None or device in m.excluded:
            log.info("master {device} reported {state}, ignored", device=device, state=state)
            return
        reason = f"master {device} reported {state}" + (f": {message}" if message else "")
        _lose(inputs, core, here, device, reason)
        return
    if device in m.excluded:
        if state == INITIALIZED and here in _BETWEEN_LOTS:
            m.include(device)
            _publish(core, here, f"master {device} is back")
            if here == INITIALIZED:
                _send_layout(core, [device])
            _check(inputs, core)
        return
    if here == READY and state == INITIALIZED:
        inputs.masterUnloaded(device)
        return
    if here == "connecting" and state not in (INITIALIZED, "connecting"):
        inputs.failed(f"master {device} reported state {state} while initialized is expected")
        return
    if _resend_if_lost(core, here, device, state, "Master/status"):
        return
    m.seen(device, state)
    _check(inputs, core)


def _resend_if_lost(core: HandlerCore, here: str, device: str, state: str, how: str) -> bool:
    """Apply the resend rule (module docstring) to ``state`` reported by ``device``.
    Returns True when the command was resent (the report is then not a completion)."""
    work = core.work
    rule = _RESEND_RULES.get(work.kind or "")
    if rule is None or rule[0] != here or device not in work.commands \
            or device in core.masters.excluded:
        return False
    _pending_state, has_it, not_got = rule
    if state in has_it:
        work.confirmed.add(device)
        return False
    if state != not_got or device in work.confirmed or work.answered(device):
        return False
    count = work.resends.get(device, 0)
    if count >= MAX_RESENDS:
        log.warn("master {device} still reports {state} ({how}) after {count} resends of "
                 "{kind}; the {timeout:g} s timeout decides", device=device, state=state,
                 how=how, count=count, kind=work.kind, timeout=work.timeout)
        return False
    work.resends[device] = count + 1
    log.info("master {device} reports {state} ({how}) and has not got {kind}: resending it "
             "(lost with the broker connection)", device=device, state=state, how=how,
             kind=work.kind)
    core.masters.waiting.add(device)  # its completion must be reported afresh
    core.bus.command(device, work.commands[device])
    return True


def _probe_unconfirmed(core: HandlerCore) -> None:
    """After a reconnect: ask ``get-state`` of every master that may have missed the
    pending command (its re-published status may have come before our subscription)."""
    work = core.work
    for device in work.commands:
        if device in work.confirmed or work.answered(device) or device in core.masters.excluded:
            continue
        work.probing.add(device)
        core.bus.command(device, GetState())


def _rejoin(core: HandlerCore) -> None:
    """Include excluded masters that are initialized again (entering initialized)."""
    back = [d for d in core.masters.order if d in core.masters.excluded
            and core.masters.last[d] == INITIALIZED]
    for device in back:
        core.masters.include(device)
    if back:
        log.info("masters {back} rejoin", back=back)
        _send_layout(core, back)


def _expect_initialized(inputs: HandlerInputs, core: HandlerCore, seconds: float) -> None:
    core.masters.expect(INITIALIZED, core.masters.live(), fresh=False)
    core.deadline.arm(seconds, inputs.deadline)
    _check(inputs, core)


def _exclude_late(core: HandlerCore, seconds: float) -> None:
    """After an ``initialized`` deadline: exclude the late masters if others are fine."""
    m = core.masters
    late = [d for d in m.live() if d in m.waiting]
    if late and len(late) < len(m.live()):
        for device in late:
            reason = f"master {device} did not report initialized within {seconds:g} s"
            m.exclude(device, reason)
            log.error("{reason}; excluded", reason=reason)


def _refuse(
    core: HandlerCore, here: str, command: str, response_type: str, message: str | None = None
) -> None:
    """Answer a serial command locally (13.3)."""
    response = {
        "type": "error",
        "state": here,
        "command_type": command,
        "response_type": response_type,
        "message": message,
    }
    log.warn("serial {command} refused in {state}: {response}", command=command,
             state=here, response=response)
    core.link.send(lp.error_response_status(response_type, message))


_COMMAND_NAMES = {"load": "load", "next": "next", "unload": "unload", "endlot": "unload"}


def _response(inputs: HandlerInputs, core: HandlerCore, here: str, device: str,
              reply: MasterResponse) -> None:
    """A master response while in ``here`` (queries are handled by the controller)."""
    pending = core.work.kind
    if isinstance(reply, ErrorResponse):
        if pending is not None and _COMMAND_NAMES.get(reply.command_type) == pending \
                and device not in core.masters.excluded:
            inputs.commandRefused(device, reply)
        else:
            log.warn("master {device} refused {command}: {rtype} {message}", device=device,
                     command=reply.command_type, rtype=reply.response_type,
                     message=_line_message(reply))
    elif isinstance(reply, NextResponse):
        if here == "testing" and core.work.plan is not None:
            core.work.plan.record(device, reply.sites)
            _check(inputs, core)
        else:
            log.info("response next from {device} ignored in {state}", device=device,
                     state=here)


def _malformed(inputs: HandlerInputs, core: HandlerCore, here: str, device: str,
               command: str | None, reason: str) -> None:
    """A response the codec refused (already logged). A pending ``next`` ends with the
    error on the line at once, as a bad result does, rather than at its timeout."""
    plan = core.work.plan
    if command == "next" and here == "testing" and plan is not None:
        plan.malformed(device, reason)
        _check(inputs, core)


def _fail_in(here: str) -> Callable[[HandlerInputs, HandlerCore, str], None]:
    def enterError(inputs: HandlerInputs, core: HandlerCore, reason: str) -> None:
        core.deadline.cancel()
        if core.work.kind is not None:
            core.link.send(lp.error_status(reason))
        core.work.clear()
        log.error("handler error in {state}: {reason}", state=here, reason=reason)
        _publish(core, "error", reason)
        _expect_initialized(inputs, core, core.settings.startup_timeout)

    enterError.__name__ = f"error_from_{here}"
    return enterError


def _status_in(here: str) -> Callable[..., None]:
    def masterStatus(inputs: HandlerInputs, core: HandlerCore, device: str, state: str,
                     message: str) -> None:
        _track(inputs, core, here, device, state, message)

    masterStatus.__name__ = f"status_in_{here}"
    return masterStatus


def _response_in(here: str) -> Callable[..., None]:
    def masterResponse(inputs: HandlerInputs, core: HandlerCore, device: str,
                       reply: MasterResponse) -> None:
        _response(inputs, core, here, device, reply)

    masterResponse.__name__ = f"response_in_{here}"
    return masterResponse


def _malformed_in(here: str) -> Callable[..., None]:
    def responseMalformed(inputs: HandlerInputs, core: HandlerCore, device: str,
                          command: str | None, reason: str) -> None:
        _malformed(inputs, core, here, device, command, reason)

    responseMalformed.__name__ = f"malformed_in_{here}"
    return responseMalformed


def _snapshot_in(here: str) -> Callable[[HandlerInputs, HandlerCore], HandlerSnapshot]:
    def status(inputs: HandlerInputs, core: HandlerCore) -> HandlerSnapshot:
        return HandlerSnapshot(
            state=here,
            masters=dict(core.masters.last),
            excluded=dict(core.masters.excluded),
            pending=core.work.kind,
            device_state=core.device.get("state"),
            device_name=core.device.get("name"),
        )

    status.__name__ = f"status_{here}"
    return status


def _republish_in(here: str) -> Callable[[HandlerInputs, HandlerCore], None]:
    def republish(inputs: HandlerInputs, core: HandlerCore) -> None:
        _publish(core, here)
        if core.work.kind is not None:
            _probe_unconfirmed(core)

    republish.__name__ = f"republish_{here}"
    return republish


def _state_answer_in(here: str) -> Callable[[HandlerInputs, HandlerCore, str, str], bool]:
    def stateAnswered(inputs: HandlerInputs, core: HandlerCore, device: str, state: str) -> bool:
        work = core.work
        if device not in work.probing:
            return False
        work.probing.discard(device)
        _resend_if_lost(core, here, device, state, "get-state")
        return True

    stateAnswered.__name__ = f"state_answer_in_{here}"
    return stateAnswered


def _refuse_in(here: str, command: str, response_type: str,
               message: str | None = None) -> Callable[..., None]:
    def refuse(inputs: HandlerInputs, core: HandlerCore, *args: Any) -> None:
        _refuse(core, here, command, response_type, message)

    refuse.__name__ = f"refuse_{command}_in_{here}"
    return refuse


def _ignore(inputs: HandlerInputs, core: HandlerCore, *args: Any) -> None:
    """An input that means nothing in this state."""


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
    _state.upon(HandlerInputs.masterStatus).loop()(_status_in(_name))
    _state.upon(HandlerInputs.masterResponse).loop()(_response_in(_name))
    _state.upon(HandlerInputs.responseMalformed).loop()(_malformed_in(_name))
    _state.upon(HandlerInputs.stateAnswered).loop()(_state_answer_in(_name))
    if _name != "startup":
        _state.upon(HandlerInputs.mqttConnected).loop()(_republish_in(_name))
    if _name != "error":
        _state.upon(HandlerInputs.failed).to(error)(_fail_in(_name))
    if _name not in ("ready",):
        _state.upon(HandlerInputs.masterUnloaded).loop()(_ignore)

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
_INPUT_OF = {"load": HandlerInputs.load, "next": HandlerInputs.next,
             "unload": HandlerInputs.unload}
for _name, _table in _REFUSALS.items():
    for _command, (_rtype, _message) in _table.items():
        _ALL[_name].upon(_INPUT_OF[_command]).loop()(
            _refuse_in(_name, _command, _rtype, _message))

# ---- startup / connecting


@startup.upon(HandlerInputs.mqttConnected).to(connecting)
def _connected(inputs: HandlerInputs, core: HandlerCore) -> None:
    _publish(core, "connecting")
    core.masters.expect(INITIALIZED, core.masters.live(), fresh=False)
    core.deadline.arm(core.settings.startup_timeout, inputs.deadline)
    _check(inputs, core)


for _state in (startup, ready):
    _state.upon(HandlerInputs.commandRefused).loop()(_ignore)
    _state.upon(HandlerInputs.reached).loop()(_ignore)
    _state.upon(HandlerInputs.deadline).loop()(_ignore)


@connecting.upon(HandlerInputs.reached).to(initialized)
@error.upon(HandlerInputs.reached).to(initialized)
def _allInitialized(inputs: HandlerInputs, core: HandlerCore) -> None:
    core.deadline.cancel()
    core.masters.clear()
    _publish(core, INITIALIZED)
    _send_layout(core, core.masters.live())


@connecting.upon(HandlerInputs.deadline).to(error)
def _startupTimeout(inputs: HandlerInputs, core: HandlerCore) -> None:
    late = sorted(core.masters.waiting)
    reason = f"start-up timeout: master(s) {', '.join(late)} did not report initialized"
    _exclude_late(core, core.settings.startup_timeout)
    _fail_in("connecting")(inputs, core, reason)


for _state in (connecting, initialized, error):
    _state.upon(HandlerInputs.commandRefused).loop()(_ignore)

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
def _allBackInitialized(inputs: HandlerInputs, core: HandlerCore) -> None:
    core.deadline.cancel()
    core.masters.clear()


@initialized.upon(HandlerInputs.deadline).to(error)
def _initializedTimeout(inputs: HandlerInputs, core: HandlerCore) -> None:
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
    inputs.testStarted()
    for device, command in commands.items():
        core.bus.command(device, command)


@ready.upon(HandlerInputs.testStarted).to(testing)
def _testStarted(inputs: HandlerInputs, core: HandlerCore) -> None:
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


@ready.upon(HandlerInputs.masterUnloaded).to(initialized)
def _unloadedElsewhere(inputs: HandlerInputs, core: HandlerCore, device: str) -> None:
    _publish(core, INITIALIZED, f"master {device} reported initialized; lot ended")
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


loading.upon(HandlerInputs.commandRefused).to(initialized)(
    _refused_back_to("loading", INITIALIZED))
testing.upon(HandlerInputs.commandRefused).to(ready)(_refused_back_to("testing", READY))
unloading.upon(HandlerInputs.commandRefused).to(ready)(_refused_back_to("unloading", READY))


def _timeout_in(here: str, target: str) -> Callable[[HandlerInputs, HandlerCore], None]:
    def timedOut(inputs: HandlerInputs, core: HandlerCore) -> None:
        late = sorted(core.masters.waiting) or sorted(
            d for d in (core.work.plan.devices if core.work.plan else ())
            if d not in core.work.plan.responded)  # type: ignore[union-attr]
        reason = (f"{core.work.kind} timeout: master(s) {', '.join(late)} did not report "
                  f"{target} within {core.work.timeout:g} s")
        _fail_in(here)(inputs, core, reason)

    timedOut.__name__ = f"timeout_in_{here}"
    return timedOut


loading.upon(HandlerInputs.deadline).to(error)(_timeout_in("loading", READY))
testing.upon(HandlerInputs.deadline).to(error)(_timeout_in("testing", READY))
unloading.upon(HandlerInputs.deadline).to(error)(_timeout_in("unloading", INITIALIZED))

# ---- error


@error.upon(HandlerInputs.deadline).loop()
def _errorTimeout(inputs: HandlerInputs, core: HandlerCore) -> None:
    late = sorted(core.masters.waiting)
    _exclude_late(core, core.settings.startup_timeout)
    if late:
        _publish(core, "error",
                 f"master(s) {', '.join(late)} did not report initialized")
    _expect_initialized(inputs, core, core.settings.startup_timeout)


@error.upon(HandlerInputs.failed).loop()
def _failedAgain(inputs: HandlerInputs, core: HandlerCore, reason: str) -> None:
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
        self.machine.mqttConnected()

    def mqtt_disconnected(self) -> None:
        self.connected = False
        log.warn("MQTT connection lost")

    def master_status(self, device_id: str, state: str, message: str = "") -> None:
        self.machine.masterStatus(device_id, state, message or "")

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
        self.machine.masterResponse(device_id, reply)

    def master_response_malformed(self, device_id: str, command: str | None,
                                  reason: str) -> None:
        """An ``ate/D/Master/response`` the codec refused (the caller logged it); ``command``
        is the response's type as far as it could be read."""
        self.machine.responseMalformed(device_id, command, reason)

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
            probed = bool(self.machine.stateAnswered(device, reply.state))
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
                r.name if isinstance(r, IdentifyResponse) else d for d, r in zip(order, answers)))
        for device, reply in zip(order, answers):
            if isinstance(reply, GetStateResponse) and reply.state in FAILED_STATES:
                return lp.error_status(reply.message or f"tester {device} is in {reply.state}")
        return lp.TS_OK
