"""Per-site tracking: what every Control app and TestApp last said, checked against what
the current phase expects (protocol.md §3.4).

The tracker knows nothing about MQTT or timers.  The cell tells it which phase has begun,
feeds it every site status and result, and receives phase events through a small
``TrackerEvents`` interface: ``synced`` (every Control app idle), ``idle_for_load`` (the
Control apps a load waited for are idle), ``loaded`` (every TestApp idle after a load),
``acknowledged`` (every tested TestApp started the part), ``part_done`` (every tested site
delivered its result and is idle again), ``fault`` (a site broke the expected sequence) and
``fatal``.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from twisted.logger import Logger

CONNECTING = "connecting"
INITIALIZED = "initialized"
LOADING = "loading"
READY = "ready"
TESTING = "testing"
UNLOADING = "unloading"
HALTED = "halted"  # softerror / error: record only


class TrackerEvents(Protocol):
    def synced(self) -> None: ...
    def idle_for_load(self) -> None: ...
    def loaded(self) -> None: ...
    def acknowledged(self) -> None: ...
    def part_done(self) -> None: ...
    def fault(self, message: str) -> None: ...


class _Site:
    __slots__ = ("id", "control", "testapp", "done", "acked", "result", "idle_again",
                 "error_message", "last_log")

    def __init__(self, site_id: str) -> None:
        self.id = site_id
        self.control: str | None = None
        self.testapp: str | None = None
        self.error_message = ""
        self.last_log = ""  # the Control app's last ERROR log line since the load/reset
        self.done = False  # phase goal reached for this site
        self.acked = False  # testing: TestApp reported testing (or sent its result)
        self.result = False  # testing: result received
        self.idle_again = False  # testing: TestApp back to idle after testing


class SiteTracker:
    """Last known states of every configured site and the rules of the current phase."""

    log = Logger(namespace="ate.master.sites")

    def __init__(self, sites: Sequence[str], events: TrackerEvents) -> None:
        self._sites = {s: _Site(s) for s in sites}
        self._order = tuple(sites)
        self._events = events
        self.phase = CONNECTING
        self._tested: tuple[_Site, ...] = ()
        self._tested_ids: frozenset[str] = frozenset()
        self._pending = 0
        self._pending_ack = 0
        self._load_waits: set[str] = set()  # loading: Control apps still resetting

    # -- queries -------------------------------------------------------------------

    def states(self) -> dict[str, dict[str, str | None]]:
        return {
            s.id: {"control": s.control, "testapp": s.testapp, "error_message": s.error_message}
            for s in self._sites.values()
        }

    def control_state(self, site: str) -> str | None:
        """The last known Control state of ``site`` (None when unknown)."""
        s = self._sites.get(site)
        return s.control if s is not None else None

    def unavailable(self) -> list[str]:
        """Sites whose Control app is not idle (e.g. still resetting) in initialized."""
        return [s.id for s in self._sites.values() if s.control != "idle"]

    def missing(self) -> list[str]:
        """Sites that have not yet reached the goal of the current phase."""
        if self.phase == TESTING:
            return [s.id for s in self._tested if not (s.result and s.idle_again)]
        return [s.id for s in self._sites.values() if not s.done]

    def missing_ack(self) -> list[str]:
        return [s.id for s in self._tested if not s.acked]

    def is_tested(self, site: str) -> bool:
        return site in self._tested_ids

    def has_result(self, site: str) -> bool:
        s = self._sites.get(site)
        return s is not None and site in self._tested_ids and s.result

    # -- phases --------------------------------------------------------------------

    def begin_connecting(self, after_reset: bool) -> None:
        """Wait until every Control app reports idle.  After a reset the known states are
        preset to ``resetting`` so that the idle which follows the reset counts."""
        self._load_waits = set()
        self.phase = CONNECTING
        for s in self._sites.values():
            s.done = False
            s.last_log = ""
            if after_reset:
                s.control = "resetting"
                s.testapp = None
        self._tested, self._tested_ids = (), frozenset()

    def begin_initialized(self) -> None:
        self._load_waits = set()
        self.phase = INITIALIZED

    def begin_loading(self, waits: Sequence[str] = ()) -> None:
        """Wait until every TestApp the load starts reports idle.  A TestApp state heard
        before (a stray or left-over TestApp) is not the new TestApp's: it is forgotten, so
        that the new one's idle is not taken for a repeat.

        ``waits``: Control apps still answering a reset (``resetting``) when the load was
        accepted; the ``loadTest`` is held until they are idle (``idle_for_load``)."""
        self.phase = LOADING
        self._load_waits = set(waits)
        for s in self._sites.values():
            s.done = False
            s.last_log = ""
            s.testapp = None

    def begin_ready(self) -> None:
        self._load_waits = set()
        self.phase = READY
        self._tested, self._tested_ids = (), frozenset()

    def begin_testing(self, tested: Sequence[str]) -> None:
        self.phase = TESTING
        self._tested = tuple(self._sites[t] for t in tested)
        self._tested_ids = frozenset(tested)
        for s in self._tested:
            s.acked = s.result = s.idle_again = False
        self._pending = len(self._tested)
        self._pending_ack = len(self._tested)

    def begin_unloading(self) -> None:
        self._load_waits = set()
        self.phase = UNLOADING
        for s in self._sites.values():
            s.done = False

    def halt(self) -> None:
        self._load_waits = set()
        self.phase = HALTED

    # -- inputs --------------------------------------------------------------------

    def control_log(self, site: str, level: str, message: str) -> str | None:
        """A Control app's log line.  Its ERROR lines are the reason of an error that the
        app reports with an empty ``error_message`` (the Semi-ATE Control app logs the
        reason at ERROR and publishes ``error`` without it).  Returns the reason when the
        site already reported that error without one (the line came after the status)."""
        s = self._sites.get(site)
        if s is None or level not in ("ERROR", "CRITICAL") or not message:
            return None
        s.last_log = message
        if s.control == "error" and not s.error_message:
            s.error_message = message
            return message
        return None

    def control(self, site: str, state: str, error_message: str = "") -> None:
        s = self._sites[site]
        if state == s.control:
            return
        previous, s.control = s.control, state
        if state == "error":
            error_message = error_message or s.last_log
            s.error_message = error_message or ""
        phase = self.phase
        if phase == CONNECTING:
            if state == "idle" and not s.done:
                s.done = True
                if all(x.done for x in self._sites.values()):
                    self._events.synced()
            elif state != "idle":
                s.done = False
                self.log.debug("site {site}: control {state} while connecting", site=site,
                               state=state)
            return
        if phase == HALTED:
            return
        if state == "crash":
            self._events.fault(f"control {site} crashed")
            return
        if state == "error":
            detail = f": {error_message}" if error_message else ""
            self._events.fault(f"site {site}: control app reported error{detail}")
            return
        if phase == INITIALIZED:
            if state in ("idle", "resetting"):
                return
            self._bad("control", s, state, "idle", "sync")
        elif phase == LOADING:
            waits = self._load_waits
            if waits and site in waits:
                # the load's loadTest is held for this site: it answers a reset
                if state == "resetting":
                    return
                if state == "idle":
                    waits.discard(site)
                    if not waits:
                        self._events.idle_for_load()
                    return
            if state in ("loading", "busy"):
                return
            if state == "idle" and previous not in ("loading", "busy"):
                return  # a late echo of the pre-load state
            self._bad("control", s, state, "loading or busy", "load")
        elif phase in (READY, TESTING):
            if state != "busy":
                self._bad("control", s, state, "busy", phase)
        elif phase == UNLOADING:
            if state == "idle":
                if not s.done:
                    s.done = True
                    if all(x.done for x in self._sites.values()):
                        self._events.synced()
                return
            if state in ("busy", "resetting"):
                return
            self._bad("control", s, state, "idle", "unload")

    def testapp(self, site: str, state: str) -> None:
        s = self._sites[site]
        if state == s.testapp:
            return
        s.testapp = state
        phase = self.phase
        if phase in (CONNECTING, HALTED):
            return
        if phase == INITIALIZED:
            if state == "crash":
                self.log.info("site {site}: testapp gone (crash) while initialized", site=site)
            elif state == "testing":
                self._bad("testapp", s, state, "idle or terminated", "sync")
            return
        if state == "crash" and phase != UNLOADING:
            self._events.fault(f"testapp {site} crashed")
            return
        if phase == LOADING:
            if state == "idle":
                if not s.done:
                    s.done = True
                    if all(x.done for x in self._sites.values()):
                        self._events.loaded()
                return
            self._bad("testapp", s, state, "idle", "load")
        elif phase == READY:
            if state != "idle":
                self._bad("testapp", s, state, "idle", "ready")
        elif phase == TESTING:
            if site not in self._tested_ids:
                if state != "idle":
                    self._bad("testapp", s, state, "idle (not tested)", "test")
                return
            if state == "testing":
                self._ack(s)
            elif state == "idle":
                if not s.acked:
                    self._bad("testapp", s, state, "testing", "test")
                    return
                if not s.idle_again:
                    s.idle_again = True
                    self._maybe_done(s)
            else:
                self._bad("testapp", s, state, "testing or idle", "test")
        elif phase == UNLOADING:
            if state == "error":
                self.log.warn("site {site}: testapp reported error while unloading", site=site)
            # terminated, and a crash after the summary, are expected

    def result_problem(self, site: str) -> str | None:
        """None when a result from ``site`` belongs to the part under test, else why not.
        After a softerror (halted) the part that was under test still takes the results
        of its sites (protocol §3.6): they are recorded, but complete nothing."""
        s = self._sites[site]
        if self.phase not in (TESTING, HALTED) or site not in self._tested_ids:
            return f"unexpected test result from site {site} (not being tested)"
        if s.result:
            return f"duplicate test result from site {site}"
        return None

    def result(self, site: str) -> str | None:
        """A result from ``site``.  Returns None when it belongs to the part under test
        (and may complete the part), else the reason it is unexpected."""
        problem = self.result_problem(site)
        if problem is not None:
            return problem
        s = self._sites[site]
        s.result = True
        if self.phase == HALTED:
            return None
        if not s.acked:
            self._ack(s)  # a result before 'testing' counts as 'testing'
        self._maybe_done(s)
        return None

    # -- internals -----------------------------------------------------------------

    def _ack(self, s: _Site) -> None:
        if s.acked:
            return
        s.acked = True
        self._pending_ack -= 1
        if self._pending_ack == 0:
            self._events.acknowledged()

    def _maybe_done(self, s: _Site) -> None:
        if s.result and s.idle_again:
            self._pending -= 1
            if self._pending == 0:
                self._events.part_done()

    def _bad(self, app: str, s: _Site, state: str, expected: str, during: str) -> None:
        self._events.fault(
            f"site {s.id}: {app} went to {state} during {during}, expected {expected}"
        )
