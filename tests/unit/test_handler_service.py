"""ate-handler's MQTT side (ate/handler/service.py): what it publishes, byte for byte, and
how what the masters publish (encoded by ate-master's codec, or as the reference writes it)
reaches the controller.  A fake MQTT service and a Clock, no broker."""

from __future__ import annotations

import json

import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from ate.handler import lineproto as lp
from ate.handler.machine import HandlerController, HandlerSettings
from ate.handler.service import HandlerRouter, MqttBus, handler_codecs, handler_will
from ate.protocol import messages as m
from ate.protocol.messages import Codec
from test_handler_machine import FakeLine, st

H, A, B = "HTO92-20F", "SCT-A", "SCT-B"
LAYOUT = ((0, 0), (1, 0))


class FakeMqtt:
    def __init__(self):
        self.published = []

    def publish(self, topic, payload, qos=2):
        self.published.append((topic, payload, qos))
        return succeed(None)

    def take(self):
        got, self.published = self.published, []
        return got


class Cell:
    """The controller behind the service's bus and router, with one or two masters."""

    def __init__(self, devices=(A,)):
        self.clock, self.mqtt, self.line = Clock(), FakeMqtt(), FakeLine()
        codecs = handler_codecs(H, devices)
        self.ctl = HandlerController(
            self.clock, HandlerSettings(device_ids=tuple(devices), site_layout=LAYOUT),
            MqttBus(self.mqtt, H, codecs), self.line)
        self.router = HandlerRouter(self.ctl, codecs)
        self.master = {d: Codec(d, ("0", "1")) for d in devices}   # as ate-master encodes

    def send(self, device, msg):
        """``msg`` published by master ``device`` (ate-master's codec)."""
        self.router.received(*self.master[device].encode(msg))

    def raw(self, topic, obj):
        self.router.received(topic, obj if isinstance(obj, bytes) else json.dumps(obj).encode())

    def initialized(self):
        self.ctl.mqtt_connected()
        for device in self.master:
            self.send(device, m.MasterStatus("initialized", ""))
        assert self.ctl.status().state == "initialized"
        self.mqtt.take()

    def ready(self):
        self.initialized()
        self.ctl.line_request(lp.LoadLot("306426.001", "HS2C", "25"))
        for device in self.master:
            self.send(device, m.MasterStatus("loading", ""))
            self.send(device, m.MasterStatus("ready", ""))
        assert self.ctl.status().state == "ready"
        self.mqtt.take()
        self.line.lines.clear()


def status(state, message=""):
    payload = json.dumps({"type": "status", "payload": {"state": state, "message": message}},
                         separators=(",", ":")).encode()
    return (f"ate/{H}/Handler/status", payload, 2)


def test_publications_byte_for_byte():
    """Exactly the bytes protocol.md 13.1/13.4 gives (and ate-handler always sent)."""
    c = Cell()
    assert handler_will(H, handler_codecs(H, (A,))) == status("crash")
    c.ctl.mqtt_connected()
    c.send(A, m.MasterStatus("initialized", ""))
    cmd = f"ate/{A}/Master/cmd"
    assert c.mqtt.take() == [
        status("connecting"), status("initialized"),
        (cmd, b'{"type":"site-layout","payload":{"sites":[[0,0],[1,0]]}}', 0)]
    c.ctl.line_request(lp.LoadLot("306426.001", "HS2C", "25"))
    assert c.mqtt.take() == [status("loading"), (cmd, (
        b'{"type":"load","payload":{"lot_number":"306426.001","devicetype":"HS2C",'
        b'"temperature":"25"}}'), 0)]
    c.send(A, m.MasterStatus("ready", ""))
    c.mqtt.take()
    c.ctl.line_request(st((True, "P100"), (True, "P101")))
    assert c.mqtt.take() == [(cmd, (
        b'{"type":"next","payload":{"sites":['
        b'{"siteid":"0","partid":"P100","binning":-1,"logflag":2,"additionalinfo":"000"},'
        b'{"siteid":"1","partid":"P101","binning":-1,"logflag":2,"additionalinfo":"000"}]}}'),
        0), status("testing")]
    c.send(A, m.NextResponse((m.NextResult("0", "P100", 1, 0, 0),
                              m.NextResult("1", "P101", 5, 0, 0))))
    c.send(A, m.MasterStatus("ready", ""))
    c.mqtt.take()
    c.ctl.line_request(lp.IdentifyQuery())
    c.ctl.line_request(lp.StateQuery())
    assert c.mqtt.take() == [(cmd, b'{"type":"identify","payload":{}}', 0),
                             (cmd, b'{"type":"get-state","payload":{}}', 0)]
    c.ctl.line_request(lp.Temperature(25.0, "25.0"))
    assert c.mqtt.take() == [(f"ate/{H}/Handler/response",
                              b'{"type":"temperature","payload":{"temperature":25.0}}', 0)]
    c.ctl.line_request(lp.LotEnd())
    assert c.mqtt.take() == [status("unloading"), (cmd, b'{"type":"unload","payload":{}}', 0)]


def test_a_lot_from_ate_master_codec_to_the_line():
    c = Cell()
    c.ready()
    c.ctl.line_request(st((True, "P100"), (True, "P101")))
    c.send(A, m.MasterStatus("testing", ""))
    c.send(A, m.NextResponse((m.NextResult("1", "P101", 5, 0, 0),
                              m.NextResult("0", "P100", 1, 0, 0))))
    c.send(A, m.MasterStatus("ready", ""))
    assert c.line.lines == ["ET|2|P100|1|0|0|P101|5|0|0|" +
                            "%03d" % lp.checksum("ET|2|P100|1|0|0|P101|5|0|0|")]
    c.ctl.line_request(lp.IdentifyQuery())
    c.send(A, m.IdentifyResponse(A))
    assert c.line.lines[-1] == lp.frame(["ID", A])


@pytest.mark.parametrize("response_type,line", [
    ("busy", "TS|3|Busy Testing|239"),
    ("notlot", "TS|-68|No Lot was Started|036"),
    ("error", lp.frame(["TS", "-1", "next refused: site 1 is not configured"])),
])
def test_error_response_of_ate_master_gives_the_geringer_reply(response_type, line):
    """Only an ``error`` response's message goes on the line (4.2): ate-master puts the
    human text of the others in ``payload.message`` too, but the line must not show it."""
    c = Cell()
    c.ready()
    c.ctl.line_request(st((True, "P100")))
    c.send(A, m.ErrorResponse("next", response_type, "ready",
                              "next refused: site 1 is not configured"))
    assert c.line.lines == [line]
    assert c.ctl.status().state == "ready"


def test_reference_master_status_with_null_message_and_top_level_state():
    c = Cell()
    c.ctl.mqtt_connected()
    c.raw(f"ate/{A}/Master/status", {"type": "status", "interface_version": 1,
                                      "state": "initialized",
                                      "payload": {"state": "initialized", "message": None}})
    assert c.ctl.status().state == "initialized"
    c.raw(f"ate/{A}/Master/status", {"state": "softerror"})   # top level only
    assert c.ctl.status().state == "error"


def test_handler_command_becomes_a_line():
    c = Cell()
    c.raw(f"ate/{A}/Handler/command", {"type": "identify", "payload": {}})
    c.raw(f"ate/{A}/Handler/command", {"type": "get-state"})
    assert c.line.lines == ["ID?|072", "HS?|086"]


def errors(logged):
    return [e for e in logged if e["log_level"] >= LogLevel.error]


@pytest.mark.parametrize("topic,payload,needle", [
    (f"ate/{A}/Master/status", b"{nope", "payload is not valid JSON"),
    (f"ate/{A}/Master/status", b'{"state": 7}', "state: must be a string, got an integer"),
    (f"ate/{A}/Master/status", b'{"state": ""}', "state: must not be empty"),
    (f"ate/{A}/Master/response", b'{"type": "fly", "payload": {}}', "unknown response type"),
    (f"ate/{A}/Master/response", b'{"type": "next", "payload": {"sites": 1}}',
     "payload.sites: must be an array"),
    (f"ate/{A}/Handler/command", b'{"type": "identify", "payload": []}',
     "payload: must be an object"),
    ("ate/SCT-X/Master/status", b'{"state": "ready"}', "not a topic of a configured master"),
])
def test_bad_input_is_logged_and_changes_nothing(topic, payload, needle):
    c = Cell()
    c.initialized()
    with capturedLogs() as logged:
        c.router.received(topic, payload)
    [error] = errors(logged)
    assert needle in formatEvent(error)
    assert c.ctl.status().state == "initialized"
    assert c.mqtt.take() == [] and c.line.lines == []


def test_a_malformed_next_response_ends_the_next_at_once():
    """Refused by the codec, logged, and the line gets TS|-1 naming the field rather than
    waiting for the next timeout (as for a result of a site it was not asked for)."""
    c = Cell()
    c.ready()
    c.ctl.line_request(st((True, "P100")))
    with capturedLogs() as logged:
        c.raw(f"ate/{A}/Master/response", {"type": "next", "payload": {"sites": [
            {"siteid": "0", "partid": "P100", "binning": "1"}]}})
    assert len(errors(logged)) == 1
    assert c.ctl.status().state == "testing"    # the master's ready still ends the part
    c.send(A, m.MasterStatus("ready", ""))
    assert c.line.lines == [lp.frame([
        "TS", "-1", f"tester {A} sent a bad next response: payload.sites[0].binning: "
        "must be an integer, got a string"])]
    assert c.ctl.status().state == "ready"
    assert c.clock.getDelayedCalls() == []


def test_a_malformed_response_outside_a_next_changes_nothing():
    c = Cell()
    c.ready()
    c.raw(f"ate/{A}/Master/response", {"type": "next", "payload": {}})
    c.raw(f"ate/{A}/Master/response", {"type": "error", "command_type": "load"})
    assert c.ctl.status().state == "ready" and c.line.lines == [] and c.mqtt.take() == []


def test_two_masters_each_get_their_own_topic():
    c = Cell(devices=(A, B))
    c.initialized()
    c.ctl.line_request(lp.LoadLot("L1", "HS2C", "25"))
    assert [t for t, _, _ in c.mqtt.take()] == [
        f"ate/{H}/Handler/status", f"ate/{A}/Master/cmd", f"ate/{B}/Master/cmd"]
