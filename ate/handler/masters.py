"""The handler machine's bookkeeping and collaborators (protocol.md 13.2, 13.3, 13.5).

The states and constants, the collaborators' Protocols (:class:`MasterBus`,
:class:`LineSink`), the settings and the status snapshot, the last state of every
master (:class:`Masters`), the plan of one ``next`` (:class:`NextPlan`), the one timer
(:class:`Deadline`) and the pending command (:class:`Work`). The rules they serve are
in :mod:`ate.handler.machine`, which re-exports the public names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, Union

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ate.handler import lineproto as lp
from ate.protocol.messages import (
    ErrorResponse,
    GetHostResponse,
    GetState,
    GetStateResponse,
    HandlerResponse,
    Identify,
    IdentifyResponse,
    Message,
    Next,
    NextResponse,
    NextResult,
    SiteInfo,
)

__all__ = [
    "HANDLER_STATES",
    "FAILED_STATES",
    "MAX_RESENDS",
    "NO_TESTER",
    "MasterBus",
    "LineSink",
    "MasterResponse",
    "HandlerSettings",
    "HandlerSnapshot",
    "Masters",
    "NextPlan",
    "Deadline",
    "Work",
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
    ``get-state`` (after the handler's reconnect, or after a status that may be older
    than the command) since the last copy sent to them; ``resends`` how often it was
    resent to each.
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
