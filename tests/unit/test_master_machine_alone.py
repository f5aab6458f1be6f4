"""The master machine and testing's part machine driven alone: fake effects that record
what they are asked (as test_handler_machine.py does with ``FakeBus``), a Clock, no cell,
no router, no codec, no files.

Every state × every command (the refusal and the state named in it), the phase timers
(entered → armed, left → cancelled, expiry → softerror naming the missing sites), the
status snapshot and the inputs that replaced the cell's state comparisons.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock

from ate.master import machine as mm
from ate.master import part as pm
from ate.master.machine import MasterCore, MasterEffects, MasterMachine, Refusal, Status
from ate.master.part import PartCore, PartEffects, PartMachine

TIMEOUTS = SimpleNamespace(startup=300.0, reset=60.0, load=180.0, next_ack=5.0, test=30.0,
                           unload=60.0, ioctl=7.0)


def _protocol_methods(proto: type) -> set[str]:
    return {n for n in vars(proto) if not n.startswith("_")}


class FakeEffects:
    """Records every effect as ``(name, args)``; answers the few that return something."""

    NAMES = _protocol_methods(MasterEffects) | _protocol_methods(PartEffects)

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.statuses: list[tuple[Status, bool]] = []
        self.missing = ["1", "3"]
        self.missing_acks = ["2"]
        self.load_refusal: Refusal | None = None
        self.next_refusal: Refusal | None = None

    def __getattr__(self, name: str) -> Any:
        if name not in self.NAMES:
            raise AttributeError(name)

        def record(*args: Any) -> None:
            self.calls.append((name, args))

        return record

    def names(self) -> list[str]:
        return [n for n, _ in self.calls]

    def status_changed(self, status: Status, publish: bool) -> None:
        self.statuses.append((status, publish))

    def prepare_load(self, lot_number: str):
        self.calls.append(("prepare_load", (lot_number,)))
        if self.load_refusal is not None:
            return self.load_refusal, None
        return None, SimpleNamespace(lot_number=lot_number)

    def prepare_next(self, sites: Any):
        self.calls.append(("prepare_next", (sites,)))
        if self.next_refusal is not None:
            return self.next_refusal, None
        return None, SimpleNamespace(sites=sites)

    def missing_sites(self) -> list[str]:
        return list(self.missing)

    def missing_ack(self) -> list[str]:
        return list(self.missing_acks)

    def ioctl_timed_out(self) -> str:
        self.calls.append(("ioctl_timed_out", ()))
        return "Failed to control resource Prober. Reason: Timeout."


class Cell:
    """The two machines wired as the cell wires them, with fake effects."""

    def __init__(self, enable_timeouts: bool = True) -> None:
        self.clock = Clock()
        self.fx = FakeEffects()
        part_core = PartCore(self.fx, self.clock, TIMEOUTS, enable_timeouts)
        self.part = PartMachine(part_core)
        self.m = MasterMachine(MasterCore(self.fx, self.part, self.clock, TIMEOUTS,
                                          enable_timeouts))
        part_core.master = self.m

    def timers(self) -> list[float]:
        now = self.clock.seconds()
        return sorted(round(c.getTime() - now, 6) for c in self.clock.getDelayedCalls())

    @property
    def internal(self) -> str:
        return self.m.status().internal

    # -- reaching a state ------------------------------------------------------------

    def to(self, state: str) -> None:
        getattr(self, "_to_" + state.replace(".", "_"))()
        assert self.internal == state, (self.internal, state)
        self.fx.calls.clear()
        self.fx.statuses.clear()

    def _to_startup(self) -> None:
        pass

    def _to_connecting_startup(self) -> None:
        self.m.connected()

    def _to_initialized(self) -> None:
        self.m.connected()
        self.m.synced()

    def _to_connecting_reset(self) -> None:
        self._to_initialized()
        assert self.m.reset() is None

    def _to_loading(self) -> None:
        self._to_initialized()
        assert self.m.load("306426.001") is None

    def _to_ready(self) -> None:
        self._to_loading()
        self.m.loaded()

    def _to_testing_starting(self) -> None:
        self._to_ready()
        assert self.m.next(("a",)) is None

    def _to_testing_running(self) -> None:
        self._to_testing_starting()
        self.part.acknowledged()

    def _to_testing_waiting_for_resource(self) -> None:
        self._to_testing_running()
        self.part.resource_requested()

    def _to_unloading(self) -> None:
        self._to_ready()
        assert self.m.unload() is None

    def _to_softerror(self) -> None:
        self._to_ready()
        self.m.fault("site 1: boom")

    def _to_error(self) -> None:
        self.m.connected()
        self.m.fatal("interface version 2")

    def _to_stopped(self) -> None:
        self.m.connected()
        self.m.stop()


INTERNAL = ["startup", "connecting.startup", "connecting.reset", "initialized", "loading",
            "ready", "testing.starting", "testing.running", "testing.waiting_for_resource",
            "unloading", "softerror", "error", "stopped"]
EXTERNAL = {"startup": "connecting", "connecting.startup": "connecting",
            "connecting.reset": "connecting", "testing.starting": "testing",
            "testing.running": "testing", "testing.waiting_for_resource": "testing"}

# protocol.md §4.3 per internal state (None: accepted); written out here on purpose, so
# that the machine's table is checked against an independent copy
_E = {s: "error" for s in ("startup", "connecting.startup", "connecting.reset", "softerror",
                           "error", "stopped")}
_T = {s: "busy" for s in ("loading", "testing.starting", "testing.running",
                          "testing.waiting_for_resource", "unloading")}
MATRIX = {
    "load": {**_E, **_T, "ready": "havelot", "initialized": None},
    "next": {**_E, **_T, "initialized": "notlot", "ready": None},
    "unload": {**_E, **_T, "initialized": "notlot", "ready": None},
    "reset": {**{s: None for s in INTERNAL}, **_T, "startup": "error", "ready": "havelot",
              "stopped": "error"},
    "site-layout": {**{s: None for s in INTERNAL}, **_T, "ready": "havelot",
                    "stopped": "error"},
    "usersettings": {**_E, **_T, "initialized": None, "ready": None},
    "binMap": {**{s: "error" for s in INTERNAL}, "ready": None},
}

CALL = {
    "load": lambda m: m.load("306426.001"),
    "next": lambda m: m.next(("b",)),  # not the part under test's request
    "unload": lambda m: m.unload(),
    "reset": lambda m: m.reset(),
    "site-layout": lambda m: m.site_layout(((0, 0),)),
    "usersettings": lambda m: m.usersettings(),
    "binMap": lambda m: m.bin_map(),
}


@pytest.mark.parametrize("state", INTERNAL)
@pytest.mark.parametrize("command", sorted(MATRIX))
def test_every_state_every_command(state, command):
    c = Cell()
    c.to(state)
    timers = c.timers()
    before = c.m.status()
    refusal = CALL[command](c.m)
    expected = MATRIX[command][state]
    if expected is None:
        assert refusal is None
        return
    external = EXTERNAL.get(state, state)
    assert isinstance(refusal, Refusal)
    assert (refusal.command, refusal.response_type, refusal.state) == (command, expected,
                                                                       external)
    assert refusal.message.startswith(f"{command} refused")
    # a refusal changes nothing: no effect, same status, same timers
    assert c.fx.calls == [] and c.fx.statuses == []
    assert c.m.status() == before and c.timers() == timers


def test_refusal_texts_name_the_state_and_the_error():
    c = Cell()
    c.to("softerror")
    assert c.m.load("x").message == "load refused: master in softerror: site 1: boom - send reset"
    c = Cell()
    c.to("connecting.reset")
    assert c.m.next(None).message == "next refused: no tester available: master is connecting"
    assert c.m.bin_map().message == "binMap refused: allowed in ready only (state connecting)"
    c = Cell()
    c.to("testing.running")
    assert c.m.usersettings().message == "usersettings refused: not allowed in testing"
    assert c.m.reset().message == "reset refused: master is busy (testing)"


def test_refusal_type_answers_from_the_same_table():
    assert mm.refusal_type("load", "initialized") is None
    assert mm.refusal_type("next", "ready") is None
    assert mm.refusal_type("load", "softerror") == "error"
    assert mm.refusal_type("next", "testing") == "busy"
    assert mm.refusal_type("usersettings", "unloading") == "busy"
    assert mm.refusal_type("usersettings", "ready") is None
    # reset is refused before the broker is connected (startup, published as connecting)
    assert mm.refusal_type("reset", "connecting") == "error"
    assert mm.refusal_type("reset", "softerror") is None


def test_the_effects_refusal_names_the_state():
    c = Cell()
    c.to("initialized")
    c.fx.load_refusal = Refusal("load", "error", "no job for lot x")
    refusal = c.m.load("x")
    assert refusal == Refusal("load", "error", "no job for lot x", "initialized")
    # the reason of an input error stays readable with get-state; nothing is published
    assert c.m.status() == Status("initialized", "initialized", "no job for lot x")
    assert c.fx.statuses == [(c.m.status(), False)]
    c.fx.load_refusal = Refusal("load", "busy", "sites not idle yet (1)")
    assert c.m.load("x").state == "initialized"
    assert c.m.status().message == "no job for lot x"


def test_a_resent_next_for_the_part_under_test_is_not_refused():
    c = Cell()
    c.to("testing.starting")
    assert c.m.next(("a",)) is None
    assert c.fx.names() == ["ignore"]
    assert c.m.next(None).response_type == "busy"


# -- timers -------------------------------------------------------------------------------

TIMED = [("connecting.startup", 300.0), ("connecting.reset", 60.0), ("loading", 180.0),
         ("unloading", 60.0), ("testing.starting", 5.0), ("testing.running", 30.0),
         ("testing.waiting_for_resource", 7.0)]
UNTIMED = ["startup", "initialized", "ready", "softerror", "error", "stopped"]


@pytest.mark.parametrize("state,seconds", TIMED)
def test_entering_a_timed_state_arms_its_timer(state, seconds):
    c = Cell()
    c.to(state)
    assert c.timers() == [seconds]


@pytest.mark.parametrize("state", UNTIMED)
def test_untimed_states_have_no_timer(state):
    c = Cell()
    c.to(state)
    assert c.timers() == []


LEAVE = {
    "connecting.startup": [("synced", lambda c: c.m.synced(), "initialized"),
                           ("reset", lambda c: c.m.reset(), "connecting.reset"),
                           ("fault", lambda c: c.m.fault("x"), "softerror"),
                           ("fatal", lambda c: c.m.fatal("x"), "error"),
                           ("stop", lambda c: c.m.stop(), "stopped")],
    "connecting.reset": [("synced", lambda c: c.m.synced(), "initialized"),
                         ("fault", lambda c: c.m.fault("x"), "softerror"),
                         ("fatal", lambda c: c.m.fatal("x"), "error"),
                         ("stop", lambda c: c.m.stop(), "stopped")],
    "loading": [("loaded", lambda c: c.m.loaded(), "ready"),
                ("fault", lambda c: c.m.fault("x"), "softerror"),
                ("fatal", lambda c: c.m.fatal("x"), "softerror"),
                ("stop", lambda c: c.m.stop(), "stopped")],
    "unloading": [("synced", lambda c: c.m.synced(), "initialized"),
                  ("fault", lambda c: c.m.fault("x"), "softerror"),
                  ("stop", lambda c: c.m.stop(), "stopped")],
    "testing.starting": [("acknowledged", lambda c: c.part.acknowledged(), "testing.running"),
                         ("part_done", lambda c: c.part.part_done(), "ready"),
                         ("resource", lambda c: c.part.resource_requested(),
                          "testing.waiting_for_resource"),
                         ("fault", lambda c: c.m.fault("x"), "softerror"),
                         ("stop", lambda c: c.m.stop(), "stopped")],
    "testing.running": [("part_done", lambda c: c.part.part_done(), "ready"),
                        ("fault", lambda c: c.m.fault("x"), "softerror"),
                        ("fatal", lambda c: c.m.fatal("x"), "softerror")],
    "testing.waiting_for_resource": [("resource_done", lambda c: c.part.resource_done(),
                                      "testing.running"),
                                     ("part_done", lambda c: c.part.part_done(), "ready"),
                                     ("stop", lambda c: c.m.stop(), "stopped")],
}
NEXT_TIMER = {"connecting.reset": [60.0], "testing.running": [30.0],
              "testing.waiting_for_resource": [7.0]}


@pytest.mark.parametrize("state,how,target", [
    (s, how, target) for s, cases in LEAVE.items() for how, _f, target in cases])
def test_leaving_a_timed_state_cancels_its_timer(state, how, target):
    c = Cell()
    c.to(state)
    [call] = c.clock.getDelayedCalls()
    dict((h, f) for h, f, _t in LEAVE[state])[how](c)
    assert c.internal == target
    assert not call.active()
    assert c.timers() == NEXT_TIMER.get(target, [])


def test_a_reset_while_resetting_restarts_the_reset_timer():
    c = Cell()
    c.to("connecting.reset")
    [first] = c.clock.getDelayedCalls()
    c.clock.advance(50)
    assert c.m.reset() is None
    assert not first.active() and c.timers() == [60.0]
    assert c.fx.names() == ["reset_sites"]
    c.clock.advance(59)
    assert c.internal == "connecting.reset"
    c.clock.advance(1)
    assert c.internal == "softerror"


EXPIRY = [
    ("connecting.startup", 300.0, "not all sites connected (missing: 1, 3)"),
    ("connecting.reset", 60.0, "not all sites do report state idle after reset (missing: 1, 3)"),
    ("loading", 180.0, "not all sites loaded the testprogram (missing: 1, 3)"),
    ("unloading", 60.0, "not all sites unloaded the testprogram (missing: 1, 3)"),
    ("testing.starting", 5.0, "not all sites respond to next command (missing: 2)"),
    ("testing.running", 30.0, "not all sites completed the active test (missing: 1, 3)"),
    ("testing.waiting_for_resource", 7.0, "Failed to control resource Prober. Reason: Timeout."),
]


@pytest.mark.parametrize("state,seconds,message", EXPIRY)
def test_expiry_goes_to_softerror_naming_the_missing_sites(state, seconds, message):
    c = Cell()
    c.to(state)
    c.clock.advance(seconds - 0.001)
    assert c.internal == state and c.fx.calls == []
    c.clock.advance(0.001)
    assert c.m.status() == Status("softerror", "softerror", message)
    assert ("enter_softerror", (message,)) in c.fx.calls
    assert c.fx.statuses[-1] == (Status("softerror", "softerror", message), True)
    assert c.clock.getDelayedCalls() == []


def test_expiry_without_missing_sites_has_the_bare_text():
    c = Cell()
    c.to("loading")
    c.fx.missing = []
    c.clock.advance(180)
    assert c.m.status().message == "not all sites loaded the testprogram"


@pytest.mark.parametrize("state,seconds", TIMED)
def test_timeouts_disabled_arm_nothing_but_the_ioctl_timer(state, seconds):
    c = Cell(enable_timeouts=False)
    c.to(state)
    if state == "testing.waiting_for_resource":
        assert c.timers() == [7.0]
    else:
        assert c.timers() == []
        c.clock.advance(10 * seconds)
        assert c.internal == state


def test_a_late_expired_input_is_a_logged_no_op():
    c = Cell()
    c.to("ready")
    c.m.expired()
    c.part.expired()
    assert c.internal == "ready"
    assert c.fx.names() == ["ignore", "ignore"]


# -- status, publishing and the inputs that replaced the cell's state comparisons -------


def test_status_snapshot_follows_every_step_and_publishes_external_changes_only():
    c = Cell()
    assert c.m.status() == Status("connecting", "startup", "")
    c.m.connected()
    assert c.fx.statuses[-1] == (Status("connecting", "connecting.startup"), True)
    c.m.reset()
    assert c.fx.statuses[-1] == (Status("connecting", "connecting.reset"), False)
    c.m.synced()
    c.m.load("L")
    c.m.loaded()
    c.fx.statuses.clear()
    c.m.next(None)
    c.part.acknowledged()
    c.part.resource_requested()
    c.part.resource_done()
    c.part.part_done()
    assert [(s.internal, p) for s, p in c.fx.statuses] == [
        ("testing.starting", True), ("testing.running", False),
        ("testing.waiting_for_resource", False), ("testing.running", False), ("ready", True)]
    snapshot = c.m.status()
    with pytest.raises(AttributeError):
        snapshot.state = "error"  # frozen


def test_a_reconnect_republishes_and_a_loss_keeps_the_state():
    c = Cell()
    c.to("testing.running")
    c.m.disconnected()
    assert c.fx.calls == [("note_disconnected", ("testing.running",))]
    c.m.connected()
    assert c.fx.statuses == [(Status("testing", "testing.running"), True)]
    assert c.timers() == [30.0]
    c = Cell()
    c.to("stopped")
    c.m.disconnected()
    c.m.connected()
    assert c.fx.statuses == [] and c.fx.names() == ["ignore", "ignore"]


def test_first_connect_publishes_and_startup_republishes_nothing():
    c = Cell()
    c.m.handler_status("connecting", "")
    assert c.fx.statuses == []
    c.m.connected()
    assert c.fx.names() == ["first_connect"]
    assert c.fx.statuses == [(Status("connecting", "connecting.startup"), True)]


@pytest.mark.parametrize("state", INTERNAL)
def test_test_summary_is_taken_while_unloading_only(state):
    c = Cell()
    c.to(state)
    c.m.test_summary("1", ({"type": "TSR"},))
    expected = "take_summary" if state == "unloading" else "stray_summary"
    assert c.fx.calls[0][0] == expected and c.internal == state


@pytest.mark.parametrize("state", INTERNAL)
def test_handler_status(state):
    c = Cell()
    c.to(state)
    c.m.handler_status("connecting", "")
    c.m.handler_status("error", "jam")
    republished = [p for _s, p in c.fx.statuses]
    if state == "softerror":
        assert c.fx.names() == ["ignore", "ignore"] and republished == []
    else:
        assert ("handler_reports", ("error", "jam")) in c.fx.calls
        assert republished == ([] if state in ("startup", "stopped") else [True])


@pytest.mark.parametrize("state", INTERNAL)
def test_io_requests_are_taken_while_testing_only(state):
    c = Cell()
    c.to(state)
    c.part.io_request("1", "Prober", "move", {})
    expected = "take_io_request" if state.startswith("testing.") else "stray_io_request"
    assert c.fx.calls[0][0] == expected and c.internal == state


def test_a_bare_control_error_message_is_completed_in_softerror_only():
    c = Cell()
    c.to("ready")
    c.m.complete_message("", "x")
    assert c.fx.statuses == []
    c.m.fault("site 1: control app reported error")
    c.fx.statuses.clear()
    c.m.complete_message("site 1: other", "no")
    assert c.fx.statuses == []
    c.m.complete_message("site 1: control app reported error",
                        "site 1: control app reported error: disk full")
    assert c.fx.statuses == [(Status("softerror", "softerror",
                                     "site 1: control app reported error: disk full"), True)]


def test_stop_finalises_once_and_aborts_the_part():
    c = Cell()
    c.to("testing.running")
    c.m.stop()
    assert c.m.status() == Status("stopped", "stopped", "master stopped")
    assert c.fx.names() == ["shutdown"] and c.clock.getDelayedCalls() == []
    assert c.part.status() == "idle"
    c.m.stop()
    assert c.fx.names() == ["shutdown", "ignore"]


def test_a_fault_while_testing_aborts_the_part_machine():
    c = Cell()
    c.to("testing.waiting_for_resource")
    c.m.fault("testapp 1 crashed")
    assert c.part.status() == "idle" and c.clock.getDelayedCalls() == []
    # what the part machine hears afterwards changes nothing
    c.part.resource_done()
    c.part.part_done()
    assert c.internal == "softerror"


# -- the part machine alone ------------------------------------------------------------


class Master:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def part_step(self, step: str) -> None:
        self.calls.append(("part_step", (step,)))

    def part_done(self) -> None:
        self.calls.append(("part_done", ()))

    def fault(self, message: str) -> None:
        self.calls.append(("fault", (message,)))


def _part(enable_timeouts: bool = True):
    clock, fx, master = Clock(), FakeEffects(), Master()
    part = PartMachine(PartCore(fx, clock, TIMEOUTS, enable_timeouts, master))
    return part, clock, fx, master


def test_part_machine_steps_and_timers():
    part, clock, fx, master = _part()
    assert part.status() == "idle" and clock.getDelayedCalls() == []
    part.start()
    [ack] = clock.getDelayedCalls()
    assert part.status() == "starting" and ack.getTime() == 5.0
    part.acknowledged()
    [test] = clock.getDelayedCalls()
    assert not ack.active() and test.getTime() == 30.0
    part.resource_requested()
    [io] = clock.getDelayedCalls()
    assert not test.active() and io.getTime() == 7.0
    part.resource_done()
    assert part.status() == "running" and not io.active()
    part.part_done()
    assert part.status() == "idle" and clock.getDelayedCalls() == []
    assert master.calls == [("part_step", ("running",)), ("part_step", ("waiting_for_resource",)),
                            ("part_step", ("running",)), ("part_done", ())]


def test_part_machine_expiry_tells_the_master():
    part, clock, fx, master = _part()
    part.start()
    clock.advance(5)
    assert master.calls == [("fault", ("not all sites respond to next command (missing: 2)",))]
    assert part.status() == "idle"
    part.start()
    part.resource_requested()
    clock.advance(7)
    assert fx.names() == ["ioctl_timed_out"]
    assert master.calls[-1] == ("fault", ("Failed to control resource Prober. Reason: Timeout.",))


def test_part_machine_ignores_what_does_not_matter():
    part, clock, fx, master = _part()
    for name in ("acknowledged", "resource_requested", "resource_done", "part_done", "expired",
                 "abort"):
        getattr(part, name)()
    assert part.status() == "idle" and master.calls == []
    part.start()
    part.start()
    part.resource_done()
    assert part.status() == "starting" and len(clock.getDelayedCalls()) == 1


def test_timer_texts_are_the_reference_texts():
    assert pm.timeout_text("reset", ["0"]) == \
        "not all sites do report state idle after reset (missing: 0)"
    assert set(pm.TIMER_TEXT) == {"startup", "reset", "load", "next_ack", "test", "unload"}


@pytest.mark.parametrize("machine", [MasterMachine, PartMachine])
def test_the_transition_index_answers_as_automat_does(machine):
    from automat import NoTransition
    from automat._core import Automaton

    automaton = machine.__automat_automaton__
    transitions = automaton._transitions
    assert len(transitions) > 20
    for in_state, symbol, out_state, outputs in transitions:
        assert automaton.outputForInput(in_state, symbol) == \
            Automaton.outputForInput(automaton, in_state, symbol) == \
            (out_state, list(outputs))
    with pytest.raises(NoTransition):
        automaton.outputForInput(object(), "no-such-input")
