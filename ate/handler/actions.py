"""The handler machine's inputs, its core and the actions its transitions share.

:class:`HandlerInputs` and :class:`HandlerCore` are the Automat machine's input
Protocol and core; the functions below are the steps the transitions of
:mod:`ate.handler.machine` are made of (publish, track a master's state, resend,
refuse, answer, fail) and the per-state input handlers built from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from twisted.logger import Logger

from ate.handler import lineproto as lp
from ate.handler.masters import (
    _BETWEEN_LOTS,
    _RESEND_RULES,
    FAILED_STATES,
    INITIALIZED,
    MAX_RESENDS,
    READY,
    Deadline,
    HandlerSettings,
    HandlerSnapshot,
    LineSink,
    MasterBus,
    MasterResponse,
    Masters,
    Work,
    _line_message,
)
from ate.protocol.messages import ErrorResponse, GetState, NextResponse, SiteLayout

__all__ = ["HandlerCore", "HandlerInputs"]

log = Logger(namespace="ate.handler")


class HandlerInputs(Protocol):
    def mqtt_connected(self) -> None: ...
    def state_answered(self, device_id: str, state: str) -> bool: ...
    def master_status(self, device_id: str, state: str, message: str) -> None: ...
    def master_response(self, device_id: str, reply: MasterResponse) -> None: ...
    def response_malformed(self, device_id: str, command: str | None, reason: str) -> None: ...
    def load(self, cmd: lp.LoadLot) -> None: ...
    def next(self, cmd: lp.StartTest) -> None: ...
    def unload(self) -> None: ...
    def test_started(self) -> None: ...
    def master_unloaded(self, device_id: str) -> None: ...
    def command_refused(self, device_id: str, reply: ErrorResponse) -> None: ...
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
    for device in devices:
        layout = layout_of(core.settings, device)
        if layout:  # a master none of whose sites has a pair keeps its own layout
            core.bus.command(device, SiteLayout(layout))


def layout_of(settings: HandlerSettings, device: str) -> tuple[tuple[int, int], ...]:
    """The ``site-layout`` for master ``device`` (protocol 13.5): the whole layout without
    ``site_map``; with it, the pairs of the handler sites mapped to that master, in the
    order of its site ids (numeric ids by value)."""
    layout = settings.site_layout
    if settings.site_map is None:
        return layout
    mine = [(site, layout[i]) for i, (d, site) in enumerate(settings.site_map)
            if d == device and i < len(layout)]
    mine.sort(key=lambda e: (0, int(e[0]), e[0]) if e[0].isdigit() else (1, 0, e[0]))
    return tuple(pair for _, pair in mine)


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
        inputs.master_unloaded(device)
        return
    if here == "connecting" and state not in (INITIALIZED, "connecting"):
        inputs.failed(f"master {device} reported state {state} while initialized is expected")
        return
    if _resend_if_lost(core, here, device, state, "Master/status"):
        return
    m.seen(device, state)
    _check(inputs, core)


def _resend_if_lost(core: HandlerCore, here: str, device: str, state: str, how: str) -> bool:
    """Apply the resend rule (module docstring of :mod:`ate.handler.machine`) to ``state``
    reported by ``device``, on ``Master/status`` or (``how == "get-state"``) in the answer
    to a ``get-state`` asked after the command.  A status showing the state the command was
    sent in may be older than the command, so it only makes the handler ask ``get-state``;
    the answer, given after every command sent before it, decides the resend.  Returns True
    when the report was not taken for a completion (the master was asked, or sent the
    command again)."""
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
    if how != "get-state":
        log.info("master {device} reports {state} ({how}) while {kind} is pending, maybe "
                 "from before the command: asking get-state", device=device, state=state,
                 how=how, kind=work.kind)
        work.probing.add(device)
        core.bus.command(device, GetState())
        return True
    work.resends[device] = count + 1
    work.probing.discard(device)  # answers to earlier questions are older than the resend
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
            inputs.command_refused(device, reply)
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


def _fail_in(here: str) -> Callable[..., None]:
    def enter_error(inputs: HandlerInputs, core: HandlerCore, reason: str) -> None:
        core.deadline.cancel()
        if core.work.kind is not None:
            core.link.send(lp.error_status(reason))
        core.work.clear()
        log.error("handler error in {state}: {reason}", state=here, reason=reason)
        _publish(core, "error", reason)
        _expect_initialized(inputs, core, core.settings.startup_timeout)

    enter_error.__name__ = f"error_from_{here}"
    return enter_error


def _status_in(here: str) -> Callable[..., None]:
    def master_status(inputs: HandlerInputs, core: HandlerCore, device: str, state: str,
                     message: str) -> None:
        _track(inputs, core, here, device, state, message)

    master_status.__name__ = f"status_in_{here}"
    return master_status


def _response_in(here: str) -> Callable[..., None]:
    def master_response(inputs: HandlerInputs, core: HandlerCore, device: str,
                       reply: MasterResponse) -> None:
        _response(inputs, core, here, device, reply)

    master_response.__name__ = f"response_in_{here}"
    return master_response


def _malformed_in(here: str) -> Callable[..., None]:
    def response_malformed(inputs: HandlerInputs, core: HandlerCore, device: str,
                          command: str | None, reason: str) -> None:
        _malformed(inputs, core, here, device, command, reason)

    response_malformed.__name__ = f"malformed_in_{here}"
    return response_malformed


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


def _state_answer_in(here: str) -> Callable[..., bool]:
    def state_answered(inputs: HandlerInputs, core: HandlerCore, device: str, state: str) -> bool:
        work = core.work
        if device not in work.probing:
            return False
        work.probing.discard(device)
        _resend_if_lost(core, here, device, state, "get-state")
        return True

    state_answered.__name__ = f"state_answer_in_{here}"
    return state_answered


def _refuse_in(here: str, command: str, response_type: str,
               message: str | None = None) -> Callable[..., None]:
    def refuse(inputs: HandlerInputs, core: HandlerCore, *args: Any, **kwargs: Any) -> None:
        _refuse(core, here, command, response_type, message)

    refuse.__name__ = f"refuse_{command}_in_{here}"
    return refuse


def _ignore(inputs: HandlerInputs, core: HandlerCore, *args: Any, **kwargs: Any) -> None:
    """An input that means nothing in this state."""
