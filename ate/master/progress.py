"""What the master tells the operator while it runs (its log at INFO).

* :class:`StateLog`, a cell listener: every change of the external state (the state
  published on ``Master/status``, protocol.md 3.1) as one INFO line with its reason.  The
  two changes of every handler cycle (``ready`` -> ``testing`` -> ``ready``) are DEBUG, so
  that a running lot does not write two INFO lines per part.
* :class:`WaitingReport`: while the master is ``connecting``, every ``interval`` seconds
  (10) one INFO line saying which sites it still waits for and what each last reported,
  or that the broker is not connected yet.  Driven by the injected clock.

Both use only the cell's public API (``subscribe``, ``status()``, ``missing()``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

if TYPE_CHECKING:
    from ate.master.cell import Cell

__all__ = ["StateLog", "WaitingReport", "transition_reason", "waiting_text"]

log = Logger(namespace="ate.master")

#: the per-part changes, logged at DEBUG
_CYCLE = {("ready", "testing"), ("testing", "ready")}


def transition_reason(before: str | None, status: dict) -> str:
    """Why the master went from ``before`` to ``status["state"]``."""
    message = status.get("error_message") or ""
    state = status.get("state")
    lot = status.get("lot_number") or ""
    if state in ("softerror", "error", "stopped", "crash") and message:
        return message
    if state == "connecting":
        if message:
            return message
        if before in (None, "startup"):
            return "connected to the broker; waiting until every site reports idle"
        return "waiting until every site reports idle"
    if state == "initialized":
        if before == "connecting":
            return "every site reports idle"
        if before == "unloading":
            return f"lot {lot} unloaded" if lot else "lot unloaded"
        if before == "ready":
            return f"lot {lot} ended" if lot else "lot ended"
        return message or "sites idle"
    if state == "loading":
        return f"load of lot {lot}" if lot else "load"
    if state == "ready":
        if before == "loading":
            return f"lot {lot} loaded on every site" if lot else "loaded on every site"
        if before == "testing":
            return "part done"
        return message or "ready"
    if state == "testing":
        return "next part"
    if state == "unloading":
        return f"unload of lot {lot}" if lot else "unload"
    return message


#: the master's DEBUG log level (protocol 10.1)
DEBUG = 10


class StateLog:
    """Cell listener: logs every external state change once, with its reason."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.state: str | None = None

    def __call__(self, kind: str, data: Any) -> None:
        if kind != "status" or not isinstance(data, dict):
            return
        state = data.get("state")
        if state == self.state:
            return
        before, self.state = self.state, state
        cycle = (before, state) in _CYCLE
        if cycle and self.cell.loglevel > DEBUG:
            # twistd's own log takes every level: the two lines of every handler cycle
            # cost a fifth of the master's time at 1 site (bench/cycle.py profile), so
            # they are made only when the master's log level asks for DEBUG
            return
        reason = transition_reason(before, data)
        emit = log.debug if cycle else log.info
        emit("state {before} -> {state}: {reason}", before=before or "startup", state=state,
             reason=reason)


def waiting_text(cell: Cell) -> str | None:
    """One line on what the master waits for in ``connecting``; None in any other state."""
    status = cell.status()
    if status.get("state") != "connecting":
        return None
    if not status.get("connected"):
        mqtt = cell.config.mqtt
        return f"connecting: broker {mqtt.host}:{mqtt.port} not connected yet"
    missing = list(cell.missing())
    if not missing:
        return None
    states = status.get("site_states") or {}
    parts = []
    for site in missing:
        s = states.get(site) or {}
        control, testapp = s.get("control"), s.get("testapp")
        if control is None and testapp is None:
            parts.append(f"site {site}: nothing received")
            continue
        text = f"site {site}: Control {control or '-'}, TestApp {testapp or '-'}"
        if s.get("error_message"):
            text += f" ({s['error_message']})"
        parts.append(text)
    return (f"connecting: waiting for site(s) {', '.join(missing)} to report idle; "
            + "; ".join(parts))


class WaitingReport:
    """While the master is ``connecting``: every ``interval`` s, what it still waits for."""

    def __init__(self, cell: Cell, clock: Any, interval: float = 10.0) -> None:
        self.cell = cell
        self.clock = clock
        self.interval = interval
        self._loop: LoopingCall | None = None

    def __call__(self, kind: str, data: Any) -> None:
        if kind != "status" or not isinstance(data, dict):
            return
        if data.get("state") == "connecting":
            self.start()
        else:
            self.stop()

    def start(self) -> None:
        if self._loop is not None and self._loop.running:
            return
        self._loop = LoopingCall(self.report)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def report(self) -> None:
        text = waiting_text(self.cell)
        if text is not None:
            log.info("{text}", text=text)

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.running
