"""ate-handler resends a command lost with the broker connection, and only then (README
"Broker loss"; the rule is in ate/handler/machine.py).  Clock and fakes, no broker."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from ate.handler import lineproto as lp
from ate.handler.machine import MAX_RESENDS, HandlerController, HandlerSettings
from ate.protocol.messages import ErrorResponse, GetStateResponse
from test_handler_machine import (
    LAYOUT,
    A,
    B,
    FakeLine,
    make,
    next_reply,
    next_response,
    st,
    to_ready,
    wire,
)

MAP = ((A, "0"), (B, "0"))


def get_state(state):
    return GetStateResponse(state, "")


def warnings(logged):
    return [e["log_format"] for e in logged if e["log_level"] >= LogLevel.warn]


def resent(logged):
    return [e for e in logged if "resending" in e["log_format"]]


def testing(devices=(A,)):
    ctl, clock, bus, line = make(devices=devices, site_map=MAP if len(devices) > 1 else None)
    to_ready(ctl, devices)
    bus.clear()
    line.lines.clear()
    ctl.line_request(st(*[(True, f"P{i}") for i in range(len(devices))]))
    assert ctl.status().state == "testing"
    return ctl, clock, bus, line


def test_lost_next_is_resent_when_the_master_reports_ready_again():
    ctl, clock, bus, line = testing()
    [(_, _, first)] = bus.commands("next")
    with capturedLogs() as logged:
        ctl.master_status(A, "ready")  # re-published after its reconnect, maybe before the next
        assert [c[1] for c in bus.commands()] == ["next", "get-state"]
        ctl.master_response(A, get_state("ready"))  # answered after the next: never got it
    assert bus.commands("next") == [(A, "next", first)] * 2
    assert len(resent(logged)) == 1 and resent(logged)[0]["log_level"] == LogLevel.info
    assert warnings(logged) == []
    assert ctl.status().state == "testing"
    ctl.master_status(A, "testing")
    ctl.master_response(A, next_response(("0", "P0", 1)))
    assert ctl.status().state == "testing"  # the ready that came before the resend is old
    ctl.master_status(A, "ready")
    assert ctl.status().state == "ready"
    assert line.lines == [lp.format_line(lp.EndTest((lp.EtPart("P0", 1),)))]


def test_after_its_reconnect_the_handler_asks_and_resends_only_if_the_master_is_ready():
    ctl, clock, bus, line = testing()
    bus.clear()
    ctl.mqtt_connected()  # the handler's own reconnect
    assert bus.events == [("status", "testing", ""), ("cmd", A, "get-state", {})]
    with capturedLogs() as logged:
        ctl.master_response(A, get_state("ready"))
    assert [c[1] for c in bus.commands()] == ["get-state", "next"]
    assert warnings(logged) == []
    assert not any("not asked for" in e["log_format"] for e in logged)
    ctl.master_status(A, "testing")
    ctl.master_response(A, next_response(("0", "P0", 3)))
    ctl.master_status(A, "ready")
    assert ctl.status().state == "ready"
    assert line.lines == [lp.format_line(lp.EndTest((lp.EtPart("P0", 3),)))]


def test_the_master_answers_testing_nothing_is_resent():
    ctl, clock, bus, line = testing()
    bus.clear()
    ctl.mqtt_connected()
    ctl.master_response(A, get_state("testing"))
    ctl.master_status(A, "ready")  # later a repeat ready, say: it has the part
    assert bus.commands("next") == []
    ctl.master_response(A, next_response(("0", "P0", 1)))
    ctl.master_status(A, "ready")
    assert ctl.status().state == "ready"


def test_a_master_that_reported_testing_is_never_asked_nor_resent():
    ctl, clock, bus, line = testing()
    ctl.master_status(A, "testing")
    bus.clear()
    ctl.mqtt_connected()
    assert bus.commands() == []
    ctl.master_status(A, "ready")  # e.g. its response was lost: the timeout decides
    assert bus.commands() == []
    clock.advance(40)
    assert ctl.status().state == "error"
    assert line.lines[-1].startswith("TS|-1|next timeout")


def test_a_master_that_answered_is_not_resent_on_its_ready():
    ctl, clock, bus, line = testing()
    ctl.master_response(A, next_response(("0", "P0", 1)))  # testing status lost
    bus.clear()
    ctl.master_status(A, "ready")
    assert bus.commands() == []
    assert ctl.status().state == "ready"


def test_only_the_master_that_lost_it_gets_the_resend():
    ctl, clock, bus, line = testing((A, B))
    ctl.master_status(A, "testing")
    bus.clear()
    ctl.mqtt_connected()
    assert bus.commands() == [(B, "get-state", {})]
    ctl.master_response(B, get_state("ready"))
    assert [(d, t) for d, t, _ in bus.commands()] == [(B, "get-state"), (B, "next")]
    for d, part in ((A, "P0"), (B, "P1")):
        ctl.master_status(d, "testing")
        ctl.master_response(d, next_response(("0", part, 1)))
        ctl.master_status(d, "ready")
    assert ctl.status().state == "ready"
    assert line.lines == [lp.format_line(lp.EndTest((lp.EtPart("P0", 1), lp.EtPart("P1", 1))))]


def test_resends_are_bounded_then_the_timeout_decides():
    ctl, clock, bus, line = testing()
    for _ in range(MAX_RESENDS + 2):
        ctl.master_status(A, "ready")
        ctl.master_response(A, get_state("ready"))
    assert len(bus.commands("next")) == 1 + MAX_RESENDS
    assert len(bus.commands("get-state")) == MAX_RESENDS  # then the timeout decides
    clock.advance(40)
    assert ctl.status().state == "error"
    assert line.lines[-1].startswith("TS|-1|next timeout")


def test_lost_load_and_unload_are_resent():
    ctl, clock, bus, line = make()
    ctl.mqtt_connected()
    ctl.master_status(A, "initialized")
    ctl.line_request(lp.LoadLot("306426.001", "HS2C", "25"))
    ctl.master_status(A, "initialized")  # re-published, maybe before the load
    ctl.master_response(A, get_state("initialized"))  # answered after it: never got it
    assert [c[1] for c in bus.commands() if c[1] == "load"] == ["load", "load"]
    ctl.master_status(A, "loading")
    ctl.master_status(A, "ready")
    assert ctl.status().state == "ready"
    bus.clear()
    ctl.line_request(lp.LotEnd())
    ctl.mqtt_connected()
    ctl.master_response(A, get_state("ready"))
    assert [c[1] for c in bus.commands()] == ["unload", "get-state", "unload"]
    ctl.master_status(A, "unloading")
    ctl.master_status(A, "initialized")
    assert ctl.status().state == "initialized"


def test_a_probe_answer_also_answers_a_pending_ts_query():
    ctl, clock, bus, line = testing()
    ctl.mqtt_connected()
    ctl.line_request(lp.StateQuery())
    ctl.master_response(A, get_state("ready"))
    assert line.lines == [lp.format_line(lp.TS_OK)]
    assert len(bus.commands("next")) == 2


class AteMaster:
    """A fake master with ate-master's rules for ``next`` (protocol.md 4.3, README "Broker
    loss"): accepted in ready, a resend of the part's own next ignored in testing, anything
    else refused busy.  ``lose`` drops the next commands that the broker would lose."""

    def __init__(self, clock, device):
        self.clock = clock
        self.device = device
        self.ctl = None
        self.state = "ready"
        self.request = None
        self.parts = 0
        self.refused = 0
        self.lose = 0

    def command(self, device_id, msg):
        type, payload = wire(device_id, msg)
        if type == "next" and self.lose:
            self.lose -= 1
            return
        self.clock.callLater(0, self._receive, type, payload)

    def handler_status(self, state, message):
        pass

    def handler_response(self, payload):
        pass

    def _receive(self, type, payload):
        if type == "get-state":
            self.ctl.master_response(self.device, get_state(self.state))
        elif type == "next" and self.state == "ready":
            self.state, self.request = "testing", payload
            self.parts += 1
            self.ctl.master_status(self.device, "testing")
            self.clock.callLater(1.0, self._done)
        elif type == "next" and payload == self.request:
            pass  # the resend of the part under test
        elif type == "next":
            self.refused += 1
            self.ctl.master_response(self.device, ErrorResponse(
                "next", "busy", self.state, "next refused: busy testing"))

    def _done(self):
        self.state = "ready"
        sites = [dict(s, binning=1, logflag=0, additionalinfo=0) for s in self.request["sites"]]
        self.ctl.master_response(self.device, next_reply(sites))
        self.ctl.master_status(self.device, "ready")

    def reconnected(self):
        self.ctl.master_status(self.device, self.state)  # ate-master re-publishes its status


@pytest.mark.parametrize("story", ["lost", "delivered", "testing-status-lost"])
def test_against_a_master_with_ate_master_rules_exactly_one_part(story):
    clock, line = Clock(), FakeLine()
    master = AteMaster(clock, A)
    ctl = HandlerController(clock, HandlerSettings(device_ids=(A,), site_layout=LAYOUT),
                            master, line)
    master.ctl = ctl
    ctl.mqtt_connected()
    ctl.master_status(A, "initialized")
    ctl.line_request(lp.LoadLot("306426.001", "HS2C", "25"))
    ctl.master_status(A, "loading")
    ctl.master_status(A, "ready")
    line.lines.clear()
    with capturedLogs() as logged:
        if story == "lost":
            master.lose = 1
            ctl.line_request(st((True, "P0")))
            ctl.mqtt_connected()  # both reconnect; the master re-publishes ready
            master.reconnected()
        elif story == "delivered":
            ctl.line_request(st((True, "P0")))
            clock.advance(0)
            ctl.mqtt_connected()
            master.reconnected()
        else:  # the master got it, its testing went nowhere: the handler sees only repeats
            master.ctl = _Deaf(ctl, "testing")
            ctl.line_request(st((True, "P0")))
            clock.advance(0)
            master.ctl = ctl
            ctl.mqtt_connected()
        clock.advance(0)
        clock.advance(1.0)
    assert ctl.status().state == "ready"
    assert master.parts == 1 and master.refused == 0
    assert line.lines == [lp.format_line(lp.EndTest((lp.EtPart("P0", 1),)))]
    assert warnings(logged) == []


class _Deaf:
    """Forwards to the controller all but the master status ``state`` (lost)."""

    def __init__(self, ctl, state):
        self.ctl, self.state = ctl, state

    def master_status(self, device, state, message=""):
        if state != self.state:
            self.ctl.master_status(device, state, message)

    def master_response(self, device, reply):
        self.ctl.master_response(device, reply)


def test_a_healthy_lot_never_resends_nor_asks():
    clock, line = Clock(), FakeLine()
    master = AteMaster(clock, A)
    ctl = HandlerController(clock, HandlerSettings(device_ids=(A,), site_layout=LAYOUT),
                            master, line)
    master.ctl = ctl
    sent = []
    real = master.command
    master.command = lambda d, msg: (sent.append(wire(d, msg)[0]), real(d, msg))
    ctl.mqtt_connected()
    ctl.master_status(A, "initialized")
    ctl.line_request(lp.LoadLot("306426.001", "HS2C", "25"))
    ctl.master_status(A, "loading")
    ctl.master_status(A, "ready")
    with capturedLogs() as logged:
        for i in range(20):
            ctl.line_request(st((True, f"P{i}")))
            clock.advance(0)
            clock.advance(1.0)
            assert ctl.status().state == "ready"
    assert sent.count("next") == 20 and "get-state" not in sent
    assert master.parts == 20
    assert resent(logged) == [] and warnings(logged) == []
