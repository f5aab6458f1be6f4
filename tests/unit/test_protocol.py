"""Unit tests of ate.protocol against the documented wire examples (protocol.md)."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle

import pytest

from ate.protocol import (
    MESSAGE_TYPES,
    Codec,
    ControlLoadTest,
    ControlReset,
    ControlSetLogLevel,
    ControlStatus,
    ErrorResponse,
    ExecutionStrategy,
    GetHost,
    GetHostResponse,
    GetState,
    GetStateResponse,
    HandlerCommand,
    HandlerResponse,
    HandlerStatus,
    Identify,
    IdentifyResponse,
    IoControlForward,
    IoControlRequest,
    IoControlResponse,
    Load,
    LogLine,
    MasterStatus,
    Message,
    Next,
    NextResponse,
    NextResult,
    PeripheralResponseRelay,
    PeripheralStatus,
    ProtocolError,
    Reset,
    SiteInfo,
    SiteLayout,
    TestAppGetExecutionStrategy,
    TestAppNext,
    TestAppReset,
    TestAppSetHBin,
    TestAppSetLogLevel,
    TestAppSetParameter,
    TestAppStatus,
    TestAppTerminate,
    TestResult,
    TestSummary,
    Topics,
    Unload,
)

D = "SCT-81-1F"
H = "HTO92-20F"
SITES = ("0", "1", "2", "3")


@pytest.fixture
def codec() -> Codec:
    return Codec(D, SITES, H)


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


def wire(codec: Codec, msg: Message) -> tuple[str, dict]:
    topic, payload = codec.encode(msg)
    assert isinstance(payload, bytes)
    body = json.loads(payload)
    assert payload == json.dumps(body, separators=(",", ":")).encode()  # compact
    return topic, body


def mqtt_match(filt: str, topic: str) -> bool:
    """MQTT 3.1.1 topic filter matching (``+`` one level, ``#`` the rest)."""
    fparts, tparts = filt.split("/"), topic.split("/")
    for i, f in enumerate(fparts):
        if f == "#":
            return True
        if i >= len(tparts) or (f != "+" and f != tparts[i]):
            return False
    return len(fparts) == len(tparts)


def test_mqtt_match_helper():
    assert mqtt_match("a/+/c", "a/b/c") and not mqtt_match("a/+/c", "a/b/c/d")
    assert mqtt_match("a/#", "a/b/c") and not mqtt_match("a/+", "a/b/c")
    assert not mqtt_match("a/b", "a/c")


def roundtrip(codec: Codec, msg: Message) -> None:
    assert codec.decode(*codec.encode(msg)) == msg


def perr(codec: Codec, topic: str, payload) -> ProtocolError:
    if not isinstance(payload, bytes):
        payload = raw(payload)
    with pytest.raises(ProtocolError) as info:
        codec.decode(topic, payload)
    err = info.value
    assert "\n" not in str(err)
    assert str(err).startswith(topic + ": ")
    return err


# ---------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------

class TestTopics:
    def test_fixed_names(self):
        t = Topics(D, H)
        assert t.master_status == "ate/SCT-81-1F/Master/status"
        assert t.master_cmd == "ate/SCT-81-1F/Master/cmd"
        assert t.master_response == "ate/SCT-81-1F/Master/response"
        assert t.control_cmd == "ate/SCT-81-1F/Control/cmd"
        assert t.testapp_cmd == "ate/SCT-81-1F/TestApp/cmd"
        assert t.handler_command == "ate/SCT-81-1F/Handler/command"
        assert t.handler_status == "ate/HTO92-20F/Handler/status"
        assert t.handler_response == "ate/HTO92-20F/Handler/response"

    def test_site_and_peripheral_names(self):
        t = Topics(D, H)
        assert t.control_status("2") == "ate/SCT-81-1F/Control/status/site2"
        assert t.control_log("2") == "ate/SCT-81-1F/Control/log/site2"
        assert t.testapp_status("2") == "ate/SCT-81-1F/TestApp/status/site2"
        assert t.testapp_testresult("2") == "ate/SCT-81-1F/TestApp/testresult/site2"
        assert t.testapp_testsummary("2") == "ate/SCT-81-1F/TestApp/testsummary/site2"
        assert (t.testapp_execution_strategy("2")
                == "ate/SCT-81-1F/TestApp/execution_strategy/site2")
        assert t.testapp_log("2") == "ate/SCT-81-1F/TestApp/log/site2"
        assert (t.testapp_io_request("2")
                == "ate/SCT-81-1F/TestApp/io-control/site2/request")
        assert (t.peripheral_request("Temperature")
                == "ate/SCT-81-1F/Temperature/io-control/request")
        assert (t.peripheral_response("Temperature")
                == "ate/SCT-81-1F/Temperature/io-control/response")
        assert t.peripheral_status("Temperature") == "ate/SCT-81-1F/Temperature/status"
        assert (t.master_peripheral_response("Temperature")
                == "ate/SCT-81-1F/Master/Temperature/response")

    def test_master_subscriptions_are_explicit_qos2(self):
        subs = Topics(D, H).master_subscriptions(peripherals=["Temperature"])
        filters = [f for f, _ in subs]
        assert all(q == 2 for _, q in subs)
        assert filters == [
            "ate/SCT-81-1F/Master/cmd",
            "ate/SCT-81-1F/Control/status/+",
            "ate/SCT-81-1F/Control/log/+",
            "ate/SCT-81-1F/TestApp/status/+",
            "ate/SCT-81-1F/TestApp/testresult/+",
            "ate/SCT-81-1F/TestApp/testsummary/+",
            "ate/SCT-81-1F/TestApp/execution_strategy/+",
            "ate/SCT-81-1F/TestApp/log/+",
            "ate/SCT-81-1F/TestApp/io-control/+/request",
            "ate/SCT-81-1F/+/io-control/response",
            "ate/HTO92-20F/Handler/status",
            "ate/SCT-81-1F/Temperature/status",
        ]
        assert Topics(D, H).subscriptions() == Topics(D, H).master_subscriptions()

    def test_master_subscriptions_get_inbound_but_no_echoes(self):
        t = Topics(D, H)
        filters = [f for f, _ in t.master_subscriptions(peripherals=["Temperature"])]

        def received(topic: str) -> bool:
            return any(mqtt_match(f, topic) for f in filters)

        inbound = [t.master_cmd, t.handler_status, t.peripheral_response("Temperature"),
                   t.peripheral_status("Temperature")]
        for s in SITES:
            inbound += [t.control_status(s), t.control_log(s), t.testapp_status(s),
                        t.testapp_testresult(s), t.testapp_testsummary(s),
                        t.testapp_execution_strategy(s), t.testapp_log(s),
                        t.testapp_io_request(s)]
        own = [t.master_status, t.master_response, t.control_cmd, t.testapp_cmd,
               t.master_peripheral_response("Temperature"),
               t.peripheral_request("Temperature"), t.handler_command]
        assert all(received(x) for x in inbound)
        assert not any(received(x) for x in own)

    def test_master_subscriptions_without_handler(self):
        filters = [f for f, _ in Topics(D).master_subscriptions()]
        assert not any("Handler" in f for f in filters)

    def test_handler_and_sim_subscriptions(self):
        subs = Topics.handler_subscriptions(["A", "B"])
        assert subs == [
            ("ate/A/Master/status", 2), ("ate/A/Master/response", 2),
            ("ate/A/Handler/command", 2), ("ate/B/Master/status", 2),
            ("ate/B/Master/response", 2), ("ate/B/Handler/command", 2),
        ]
        assert Topics(D).sim_subscriptions() == [
            ("ate/SCT-81-1F/Control/cmd", 2), ("ate/SCT-81-1F/TestApp/cmd", 2),
            ("ate/SCT-81-1F/Master/status", 2), ("ate/SCT-81-1F/Master/+/response", 2),
        ]

    @pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", 3, None])
    def test_bad_device_id(self, bad):
        with pytest.raises(ValueError, match="device_id"):
            Topics(bad)

    def test_reserved_peripheral_name(self):
        with pytest.raises(ValueError, match="reserved"):
            Topics(D).peripheral_request("Master")


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

class TestProtocolError:
    def test_str_and_attributes(self):
        e = ProtocolError("ate/D/Master/cmd", "payload.sites[1].siteid",
                          "site 4 is not configured", command="next", site="4",
                          kind="site-not-configured")
        assert str(e) == "ate/D/Master/cmd: payload.sites[1].siteid: site 4 is not configured"
        assert isinstance(e, ValueError)
        assert (e.topic, e.field, e.command, e.site, e.kind) == (
            "ate/D/Master/cmd", "payload.sites[1].siteid", "next", "4",
            "site-not-configured")

    def test_without_field_and_multiline_reason(self):
        e = ProtocolError("t", None, "bad\nthing")
        assert str(e) == "t: bad thing"
        assert e.kind == "malformed" and e.command is None and e.site is None

    def test_unknown_kind_rejected(self):
        with pytest.raises(ValueError):
            ProtocolError("t", None, "x", kind="nonsense")

    def test_pickles(self):
        e = ProtocolError("t", "f", "r", command="c", site="1", kind="not-json")
        e2 = pickle.loads(pickle.dumps(e))
        assert (e2.topic, e2.field, e2.reason, e2.command, e2.site, e2.kind) == (
            "t", "f", "r", "c", "1", "not-json")


# ---------------------------------------------------------------------------
# Codec construction / topic routing
# ---------------------------------------------------------------------------

class TestCodecRouting:
    def test_bad_sites(self):
        with pytest.raises(TypeError):
            Codec(D, "0123")
        with pytest.raises(ValueError, match="duplicate"):
            Codec(D, ["0", "0"])
        with pytest.raises(ValueError):
            Codec(D, ["0", 1])

    @pytest.mark.parametrize("topic", [
        "ate/OTHER/Master/cmd",
        "foo/bar",
        "ate/SCT-81-1F",
        "ate/SCT-81-1F/",
        "ate/SCT-81-1F/Control/cmd/x",
        "ate/SCT-81-1F/Control/weird/site0",
        "ate/SCT-81-1F/Master/foo",
        "ate/SCT-81-1F/Handler/status",
        "ate/SCT-81-1F/TestApp/status",
        "ate/SCT-81-1F/TestApp/status/site0/extra",
        "ate/SCT-81-1F/TestApp/status/node0",
        "ate/SCT-81-1F/Temperature/io-control/other",
        "ate/OTHER-H/Handler/status",
    ])
    def test_unknown_topic(self, codec, topic):
        err = perr(codec, topic, {"type": "status"})
        assert err.kind == "unknown-topic"

    def test_handler_topics_unknown_without_handler_id(self):
        c = Codec(D, SITES)
        err = perr(c, "ate/HTO92-20F/Handler/status",
                   {"type": "status", "payload": {"state": "ready"}})
        assert err.kind == "unknown-topic"

    @pytest.mark.parametrize("topic", [
        "ate/SCT-81-1F/Master/job",
        "ate/SCT-81-1F/Master/peripherystate",
        "ate/SCT-81-1F/TestApp/stdf/site0",
        "ate/SCT-81-1F/TestApp/binsettings/site1",
        "ate/SCT-81-1F/TestApp/peripherystate/Temperature/site0",
        "ate/SCT-81-1F/TestApp/stdf/site9",
        "ate/SCT-81-1F/TestApp/whatever",
    ])
    def test_ignored_topics(self, codec, topic):
        assert codec.decode(topic, b"not even json") is None

    @pytest.mark.parametrize("topic", [
        "ate/SCT-81-1F/Control/status/site4",
        "ate/SCT-81-1F/Control/log/site4",
        "ate/SCT-81-1F/TestApp/status/site4",
        "ate/SCT-81-1F/TestApp/testresult/site4",
        "ate/SCT-81-1F/TestApp/testsummary/site4",
        "ate/SCT-81-1F/TestApp/execution_strategy/site4",
        "ate/SCT-81-1F/TestApp/log/site4",
        "ate/SCT-81-1F/TestApp/io-control/site4/request",
    ])
    def test_site_not_configured(self, codec, topic):
        err = perr(codec, topic, {"type": "status"})
        assert err.kind == "site-not-configured"
        assert err.site == "4"
        assert "site 4 is not configured" in str(err)

    @pytest.mark.parametrize("payload,fragment", [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "JSON object, got an array"),
        (b'"x"', "got a string"),
        (b"null", "got null"),
        (b"[" * 100000, "not valid JSON"),
    ])
    def test_not_json(self, codec, payload, fragment):
        for topic in (codec.topics.master_cmd, codec.topics.control_status("1")):
            err = perr(codec, topic, payload)
            assert err.kind == "not-json"
            assert fragment in str(err)
        assert err.site == "1"

    def test_encode_rejects_non_messages(self, codec):
        with pytest.raises(TypeError, match="not a protocol message"):
            codec.encode({"type": "status"})

    def test_every_message_type_has_an_encoder(self, codec):
        assert len(MESSAGE_TYPES) == len(set(MESSAGE_TYPES)) == 39
        for cls in MESSAGE_TYPES:
            assert cls in codec._encoders, cls

    def test_messages_are_frozen_and_slotted(self):
        msg = MasterStatus("ready", "")
        with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'state'"):
            msg.state = "testing"  # type: ignore[misc]
        assert msg.state == "ready"
        assert not hasattr(msg, "__dict__")
        assert hash(Load("1.1")) == hash(Load("1.1"))


# ---------------------------------------------------------------------------
# Handler commands, ~/Master/cmd (2.2, 4)
# ---------------------------------------------------------------------------

NEXT_EXAMPLE = {"type": "next", "payload": {"sites": [
    {"siteid": "0", "partid": "P100", "binning": -1, "logflag": 2, "additionalinfo": "000"},
    {"siteid": "1", "partid": "P101", "binning": -1, "logflag": 2, "additionalinfo": "000"},
]}}


class TestHandlerCommands:
    def test_load_documented(self, codec):
        msg = codec.decode(codec.topics.master_cmd, raw(
            {"type": "load", "payload": {"lot_number": "306426.001",
                                         "devicetype": "HS2C", "temperature": "25"}}))
        assert msg == Load("306426.001")
        assert wire(codec, msg) == ("ate/SCT-81-1F/Master/cmd",
                                    {"type": "load", "payload": {"lot_number": "306426.001"}})

    def test_load_from_the_handler_app(self, codec):
        """ate-handler sends devicetype and temperature along (13.4); the master's decode
        ignores them (4.1)."""
        topic, payload = codec.encode(Load("306426.001", "HS2C", "25"))
        assert (topic, payload) == ("ate/SCT-81-1F/Master/cmd", (
            b'{"type":"load","payload":{"lot_number":"306426.001","devicetype":"HS2C",'
            b'"temperature":"25"}}'))
        assert codec.decode(topic, payload) == Load("306426.001")

    def test_load_lotnumber_alias(self, codec):
        msg = codec.decode(codec.topics.master_cmd, raw(
            {"type": "load", "payload": {"lotnumber": "306426.001",
                                         "sublotnumber": "1"}}))
        assert msg == Load("306426.001")

    @pytest.mark.parametrize("payload,field", [
        ({"type": "load"}, "payload"),
        ({"type": "load", "payload": []}, "payload"),
        ({"type": "load", "payload": {}}, "payload.lot_number"),
        ({"type": "load", "payload": {"lot_number": 306426}}, "payload.lot_number"),
        ({"type": "load", "payload": {"lot_number": ""}}, "payload.lot_number"),
        ({"type": "load", "payload": {"lotnumber": None}}, "payload.lotnumber"),
    ])
    def test_load_errors(self, codec, payload, field):
        err = perr(codec, codec.topics.master_cmd, payload)
        assert (err.kind, err.command, err.field) == ("malformed", "load", field)

    def test_next_documented(self, codec):
        msg = codec.decode(codec.topics.master_cmd, raw(NEXT_EXAMPLE))
        assert msg == Next((SiteInfo("0", "P100", -1, 2, "000"),
                            SiteInfo("1", "P101", -1, 2, "000")))
        topic, body = wire(codec, msg)
        assert topic == "ate/SCT-81-1F/Master/cmd"
        assert body == NEXT_EXAMPLE
        assert msg.sites_wire() == NEXT_EXAMPLE["payload"]["sites"]

    def test_next_int_siteid_missing_fields_and_extras(self, codec):
        msg = codec.decode(codec.topics.master_cmd, raw({"type": "next", "payload": {
            "sites": [{"siteid": 3, "custom": [1, 2], "partid": None, "z": {"a": 1}}]}}))
        assert msg == Next((SiteInfo("3", None, None, None, None,
                                     (("custom", [1, 2]), ("z", {"a": 1}))),))
        assert msg.sites[0].to_wire() == {"siteid": "3", "custom": [1, 2], "z": {"a": 1}}
        roundtrip(codec, msg)

    @pytest.mark.parametrize("payload", [
        {"type": "next"},
        {"type": "next", "payload": None},
        {"type": "next", "payload": {}},
        {"type": "next", "payload": {"sites": None}},
    ])
    def test_next_without_sites_means_all(self, codec, payload):
        msg = codec.decode(codec.topics.master_cmd, raw(payload))
        assert msg == Next(None)
        assert wire(codec, msg)[1] == {"type": "next", "payload": {}}

    @pytest.mark.parametrize("payload,field,kind,site,fragment", [
        ({"payload": []}, "payload", "malformed", None, "an object"),
        ({"payload": {"sites": []}}, "payload.sites", "malformed", None, "empty"),
        ({"payload": {"sites": "0"}}, "payload.sites", "malformed", None, "array"),
        ({"payload": {"sites": ["0"]}}, "payload.sites[0]", "malformed", None, "object"),
        ({"payload": {"sites": [{"partid": "x"}]}}, "payload.sites[0].siteid",
         "malformed", None, "missing"),
        ({"payload": {"sites": [{"siteid": True}]}}, "payload.sites[0].siteid",
         "malformed", None, "boolean"),
        ({"payload": {"sites": [{"siteid": 1.0}]}}, "payload.sites[0].siteid",
         "malformed", None, "number"),
        ({"payload": {"sites": [{"siteid": "0"}, {"siteid": 4}]}},
         "payload.sites[1].siteid", "site-not-configured", "4",
         "site 4 is not configured"),
        ({"payload": {"sites": [{"siteid": "0"}, {"siteid": 0}]}},
         "payload.sites[1].siteid", "malformed", None, "more than once"),
    ])
    def test_next_errors(self, codec, payload, field, kind, site, fragment):
        err = perr(codec, codec.topics.master_cmd, {"type": "next", **payload})
        assert (err.kind, err.command, err.field, err.site) == (kind, "next", field, site)
        assert fragment in err.reason

    def test_next_error_str(self, codec):
        err = perr(codec, codec.topics.master_cmd,
                   {"type": "next", "payload": {"sites": [{"siteid": "0"}, {"siteid": "4"}]}})
        assert str(err) == ("ate/SCT-81-1F/Master/cmd: payload.sites[1].siteid: "
                            "site 4 is not configured")

    @pytest.mark.parametrize("ctype,expected", [
        ("unload", Unload(False)), ("endlot", Unload(True)), ("reset", Reset()),
        ("identify", Identify()), ("get-state", GetState()), ("get-host", GetHost()),
    ])
    def test_simple_commands(self, codec, ctype, expected):
        for body in ({"type": ctype, "payload": {}}, {"type": ctype}):
            assert codec.decode(codec.topics.master_cmd, raw(body)) == expected
        assert wire(codec, expected) == (codec.topics.master_cmd,
                                         {"type": ctype, "payload": {}})

    def test_site_layout_documented(self, codec):
        body = {"type": "site-layout", "payload": {"sites": [[0, 0], [1, 0], [0, 1], [1, 1]]}}
        msg = codec.decode(codec.topics.master_cmd, raw(body))
        assert msg == SiteLayout(((0, 0), (1, 0), (0, 1), (1, 1)))
        assert wire(codec, msg) == (codec.topics.master_cmd, body)

    @pytest.mark.parametrize("sites,fragment", [
        ([[0, 0], [1, 0], [0, 1], [1, 1], [2, 2]], "more than the 4"),
        ([[0, True]], "non-negative integers"),
        ([[0, -1]], "non-negative integers"),
        ([[0, 1.5]], "non-negative integers"),
        ([[0]], "[x, y] pair"),
        ([[0, 1, 2]], "[x, y] pair"),
        ([{"x": 0}], "[x, y] pair"),
        ([], "empty"),
        ("0,0", "array"),
    ])
    def test_site_layout_errors(self, codec, sites, fragment):
        err = perr(codec, codec.topics.master_cmd,
                   {"type": "site-layout", "payload": {"sites": sites}})
        assert (err.kind, err.command) == ("malformed", "site-layout")
        assert fragment in err.reason

    def test_site_layout_missing(self, codec):
        err = perr(codec, codec.topics.master_cmd, {"type": "site-layout", "payload": {}})
        assert err.field == "payload.sites" and err.command == "site-layout"

    def test_unknown_command(self, codec):
        err = perr(codec, codec.topics.master_cmd, {"type": "dance", "payload": {}})
        assert (err.kind, err.command, err.field) == ("unknown-command", "dance", "type")
        assert "unknown command 'dance'" in str(err)

    @pytest.mark.parametrize("body,fragment", [
        ({"payload": {}}, "missing"),
        ({"type": 7}, "must be a string, got an integer"),
        ({"type": None}, "got null"),
    ])
    def test_missing_or_bad_type(self, codec, body, fragment):
        err = perr(codec, codec.topics.master_cmd, body)
        assert (err.kind, err.command, err.field) == ("malformed", None, "type")
        assert fragment in str(err)


# ---------------------------------------------------------------------------
# Master status and responses (2.1, 2.3, 4.2, 4.5)
# ---------------------------------------------------------------------------

class TestMasterOutbound:
    def test_master_status_documented(self, codec):
        doc = {"type": "status", "interface_version": 1, "state": "ready",
               "payload": {"state": "ready", "message": None}}
        msg = codec.decode(codec.topics.master_status, raw(doc))
        assert msg == MasterStatus("ready", None)
        assert wire(codec, msg) == (codec.topics.master_status, doc)

    def test_master_status_error_message(self, codec):
        topic, body = wire(codec, MasterStatus("softerror", "site 1: boom"))
        assert body == {"type": "status", "interface_version": 1, "state": "softerror",
                        "payload": {"state": "softerror", "message": "site 1: boom"}}

    def test_master_will(self, codec):
        will = (b'{"type":"status","interface_version":1,"state":"crash",'
                b'"payload":{"state":"crash","message":""}}')
        assert codec.decode(codec.topics.master_status, will) == MasterStatus("crash", "")
        assert codec.encode(MasterStatus("crash", "")) == (codec.topics.master_status, will)

    def test_master_status_state_from_payload_and_errors(self, codec):
        t = codec.topics.master_status
        assert codec.decode(t, raw({"type": "status", "payload": {"state": "ready"}})) \
            == MasterStatus("ready", "")
        assert perr(codec, t, {"type": "status"}).field == "state"
        assert perr(codec, t, {"type": "status", "state": 1}).field == "state"
        assert perr(codec, t, {"state": "ready", "payload": 3}).field == "payload"
        assert perr(codec, t, {"state": "ready",
                               "payload": {"message": 5}}).field == "payload.message"

    def test_next_response_documented(self, codec):
        doc = {"type": "next", "payload": {"sites": [
            {"siteid": "0", "partid": "P100", "binning": 1, "logflag": 0,
             "additionalinfo": 0}]}}
        msg = codec.decode(codec.topics.master_response, raw(doc))
        assert msg == NextResponse((NextResult("0", "P100", 1, 0, 0),))
        assert wire(codec, msg) == (codec.topics.master_response, doc)

    def test_next_response_errors(self, codec):
        t = codec.topics.master_response
        err = perr(codec, t, {"type": "next", "payload": {"sites": [{"siteid": "0"}]}})
        assert err.field == "payload.sites[0].binning"
        err = perr(codec, t, {"type": "next", "payload": {"sites": [{"binning": 1}]}})
        assert err.field == "payload.sites[0].siteid"
        err = perr(codec, t, {"type": "next", "payload": {}})
        assert err.field == "payload.sites"

    @pytest.mark.parametrize("msg,doc", [
        (IdentifyResponse("SCT-81-1F"),
         {"type": "identify", "payload": {"name": "SCT-81-1F"}}),
        (GetStateResponse("initialized", ""),
         {"type": "get-state", "payload": {"state": "initialized", "message": ""}}),
        (GetHostResponse("127.0.0.1", 8081),
         {"type": "get-host", "payload": {"host": "127.0.0.1", "port": 8081}}),
    ])
    def test_simple_responses_documented(self, codec, msg, doc):
        assert codec.decode(codec.topics.master_response, raw(doc)) == msg
        assert wire(codec, msg) == (codec.topics.master_response, doc)

    def test_get_host_bad_port(self, codec):
        err = perr(codec, codec.topics.master_response,
                   {"type": "get-host", "payload": {"host": "h", "port": "8081"}})
        assert err.field == "payload.port"

    def test_error_response_documented(self, codec):
        doc = {"type": "error", "command_type": "next", "response_type": "notlot",
               "state": "initialized", "message": None,
               "payload": {"command": "next", "response_type": "notlot",
                           "state": "initialized",
                           "message": "next refused: no lot is loaded"}}
        msg = codec.decode(codec.topics.master_response, raw(doc))
        assert msg == ErrorResponse("next", "notlot", "initialized",
                                    "next refused: no lot is loaded")
        assert wire(codec, msg) == (codec.topics.master_response, doc)

    def test_error_response_type_error_has_top_level_message(self, codec):
        msg = ErrorResponse("next", "error", "ready", "next refused: site 4 is not configured")
        _, body = wire(codec, msg)
        assert body["message"] == "next refused: site 4 is not configured"
        assert body["payload"]["message"] == body["message"]
        roundtrip(codec, msg)

    @pytest.mark.parametrize("rtype", ["notlot", "havelot", "busy"])
    def test_error_response_message_null_at_top(self, codec, rtype):
        _, body = wire(codec, ErrorResponse("load", rtype, "ready", "why"))
        assert body["message"] is None and body["payload"]["message"] == "why"

    def test_error_response_handler_shape(self, codec):
        # protocol 13.3: the handler application's own refusal shape (no payload)
        msg = codec.decode(codec.topics.master_response, raw(
            {"type": "error", "state": "ready", "command_type": "load",
             "response_type": "havelot", "message": None}))
        assert msg == ErrorResponse("load", "havelot", "ready", "")

    def test_error_response_invented_type(self, codec):
        err = perr(codec, codec.topics.master_response,
                   {"type": "error", "command_type": "load", "response_type": "nope",
                    "state": "ready"})
        assert err.field == "response_type"
        with pytest.raises(ValueError, match="response_type"):
            codec.encode(ErrorResponse("load", "nope", "ready", ""))

    def test_unknown_response_type(self, codec):
        err = perr(codec, codec.topics.master_response, {"type": "foo", "payload": {}})
        assert (err.kind, err.command) == ("unknown-command", "foo")


# ---------------------------------------------------------------------------
# Commands to the sites (2.4, 2.6, 6.1)
# ---------------------------------------------------------------------------

LOADTEST_DOC = {
    "type": "cmd", "command": "loadTest", "sites": ["0", "1", "2", "3"],
    "testapp_params": {"testapp_script_path": "hallsens2_ft1.py",
                       "testapp_script_args": ["--verbose"],
                       "cwd": "programs/HALLSENS2/rev1.3",
                       "bin_table": {"1": ["1"], "2": ["2"], "5": ["12", "13"],
                                     "6": ["20", "21"], "0": ["60000"]}}}

JOB_DATA = {
    "stop_on_fail": {"active": False, "value": -1},
    "single_step": {"active": False, "value": -1},
    "stop_on_test": {"active": False, "value": -1},
    "trigger_on_test": {"active": True, "value": 1005},
    "trigger_on_fail": {"active": False, "value": -1},
    "trigger_site_specific": {"active": False, "value": -1},
    "sites_info": [
        {"siteid": "0", "partid": "P100", "binning": -1, "logflag": 2, "additionalinfo": "000"},
        {"siteid": "1", "partid": "P101", "binning": -1, "logflag": 2, "additionalinfo": "000"},
        {"siteid": "2", "partid": "P102", "binning": -1, "logflag": 2, "additionalinfo": "000"}]}


class TestSiteCommands:
    def test_load_test_documented(self, codec):
        msg = codec.decode(codec.topics.control_cmd, raw(LOADTEST_DOC))
        assert msg == ControlLoadTest(
            SITES, "hallsens2_ft1.py", ("--verbose",), "programs/HALLSENS2/rev1.3",
            {"1": ["1"], "2": ["2"], "5": ["12", "13"], "6": ["20", "21"], "0": ["60000"]})
        assert wire(codec, msg) == (codec.topics.control_cmd, LOADTEST_DOC)

    def test_load_test_errors(self, codec):
        t = codec.topics.control_cmd
        doc = json.loads(json.dumps(LOADTEST_DOC))
        doc["testapp_params"]["bin_table"]["5"] = ["12", 13]
        err = perr(codec, t, doc)
        assert (err.field, err.command) == ("testapp_params.bin_table.5[1]", "loadTest")
        err = perr(codec, t, {"type": "cmd", "command": "loadTest", "sites": SITES})
        assert err.field == "testapp_params"
        err = perr(codec, t, {"type": "cmd", "command": "loadTest", "sites": [0]})
        assert err.field == "sites[0]"

    def test_control_reset_and_loglevel(self, codec):
        t = codec.topics.control_cmd
        reset = {"type": "cmd", "command": "reset", "sites": list(SITES)}
        assert codec.decode(t, raw(reset)) == ControlReset(SITES)
        assert wire(codec, ControlReset(SITES)) == (t, reset)
        lvl = {"type": "cmd", "command": "setloglevel", "sites": list(SITES), "level": 20}
        assert codec.decode(t, raw(lvl)) == ControlSetLogLevel(SITES, 20)
        assert wire(codec, ControlSetLogLevel(SITES, 20)) == (t, lvl)
        err = perr(codec, t, {**lvl, "level": "20"})
        assert (err.field, err.command) == ("level", "setloglevel")

    def test_unknown_control_command(self, codec):
        err = perr(codec, codec.topics.control_cmd,
                   {"type": "cmd", "command": "explode", "sites": []})
        assert (err.kind, err.command) == ("unknown-command", "explode")

    def test_testapp_next_documented(self, codec):
        doc = {"type": "cmd", "command": "next", "sites": ["0", "1", "2"],
               "job_data": JOB_DATA}
        msg = codec.decode(codec.topics.testapp_cmd, raw(doc))
        assert msg == TestAppNext(("0", "1", "2"), JOB_DATA)
        assert msg.sites_info[2]["partid"] == "P102"
        assert wire(codec, msg) == (codec.topics.testapp_cmd, doc)

    def test_testapp_next_errors(self, codec):
        t = codec.topics.testapp_cmd
        err = perr(codec, t, {"type": "cmd", "command": "next", "sites": ["0"]})
        assert err.field == "job_data"
        err = perr(codec, t, {"type": "cmd", "command": "next", "sites": ["0"],
                              "job_data": {"sites_info": [1]}})
        assert err.field == "job_data.sites_info[0]"

    @pytest.mark.parametrize("msg,doc", [
        (TestAppTerminate(SITES), {"type": "cmd", "command": "terminate", "sites": list(SITES)}),
        (TestAppReset(SITES), {"type": "cmd", "command": "reset", "sites": list(SITES)}),
        (TestAppSetLogLevel(SITES, 10),
         {"type": "cmd", "command": "setloglevel", "sites": list(SITES), "level": 10}),
        (TestAppGetExecutionStrategy(SITES, ((0, 0), (1, 0), (0, 1), (1, 1))),
         {"type": "cmd", "command": "getexecutionstrategy", "sites": list(SITES),
          "layout": [[0, 0], [1, 0], [0, 1], [1, 1]]}),
        (TestAppSetHBin(SITES, "12", "5"),
         {"type": "cmd", "command": "sethbin", "sites": list(SITES), "sbin": "12",
          "hbin": "5"}),
        (TestAppSetParameter(SITES, ({"parametername": "t1.p", "value": 1.5},)),
         {"type": "cmd", "command": "setparameter", "sites": list(SITES),
          "parameters": [{"parametername": "t1.p", "value": 1.5}]}),
    ])
    def test_testapp_commands(self, codec, msg, doc):
        assert codec.decode(codec.topics.testapp_cmd, raw(doc)) == msg
        assert wire(codec, msg) == (codec.topics.testapp_cmd, doc)

    def test_setparameter_without_sites(self, codec):
        msg = codec.decode(codec.topics.testapp_cmd, raw(
            {"type": "cmd", "command": "setparameter", "parameters": []}))
        assert msg == TestAppSetParameter((), ())

    def test_sethbin_needs_strings(self, codec):
        err = perr(codec, codec.topics.testapp_cmd,
                   {"type": "cmd", "command": "sethbin", "sites": [], "sbin": 12, "hbin": "5"})
        assert (err.field, err.command) == ("sbin", "sethbin")

    def test_unknown_testapp_command(self, codec):
        err = perr(codec, codec.topics.testapp_cmd,
                   {"type": "cmd", "command": "fly", "sites": []})
        assert (err.kind, err.command, err.field) == ("unknown-command", "fly", "command")
        err = perr(codec, codec.topics.testapp_cmd, {"type": "cmd", "sites": []})
        assert err.field == "command"


# ---------------------------------------------------------------------------
# Site messages (2.5, 2.7-2.11, 9.1)
# ---------------------------------------------------------------------------

RESULT_DOC = {"type": "testresult", "payload": [
    {"type": "PIR", "REC_LEN": None, "REC_TYP": 5, "REC_SUB": 10, "HEAD_NUM": 0,
     "SITE_NUM": 2, "rec_id": "PIR"},
    {"type": "PTR", "REC_LEN": None, "REC_TYP": 15, "REC_SUB": 10, "TEST_NUM": 1000,
     "HEAD_NUM": 0, "SITE_NUM": 2, "TEST_FLG": 0, "PARM_FLG": 0, "RESULT": 0.42,
     "TEST_TXT": "offset.vout", "ALARM_ID": "", "OPT_FLAG": 2, "RES_SCAL": 0,
     "LLM_SCAL": 0, "HLM_SCAL": 0, "LO_LIMIT": 0.0, "HI_LIMIT": 1.0, "UNITS": "V",
     "C_RESFMT": "%7.3f", "C_LLMFMT": "%7.3f", "C_HLMFMT": "%7.3f", "LO_SPEC": -1.0,
     "HI_SPEC": 2.0, "rec_id": "PTR"},
    {"type": "FTR", "REC_LEN": None, "REC_TYP": 15, "REC_SUB": 20, "TEST_NUM": 1000,
     "HEAD_NUM": 0, "SITE_NUM": 2, "TEST_FLG": 0, "OPT_FLAG": 255, "RTN_ICNT": 0,
     "PGM_ICNT": 0, "rec_id": "FTR"},
    {"type": "PRR", "REC_LEN": None, "REC_TYP": 5, "REC_SUB": 20, "HEAD_NUM": 0,
     "SITE_NUM": 2, "PART_FLG": 8, "NUM_TEST": 1, "HARD_BIN": 5, "SOFT_BIN": 12,
     "X_COORD": 1, "Y_COORD": 1, "TEST_T": 12, "PART_ID": "P102", "PART_TXT": "1",
     "PART_FIX": 0, "rec_id": "PRR"}]}


class TestSiteMessages:
    def test_control_status_documented(self, codec):
        doc = {"type": "status", "interface_version": 1, "software_version": 1,
               "payload": {"state": "busy", "error_message": ""}}
        t = codec.topics.control_status("2")
        msg = codec.decode(t, raw(doc))
        assert msg == ControlStatus("2", "busy", "", 1)
        assert wire(codec, msg) == (t, doc)

    @pytest.mark.parametrize("state", ["idle", "loading", "busy", "resetting", "error",
                                       "crash"])
    def test_control_states(self, codec, state):
        roundtrip(codec, ControlStatus("0", state, "stderr text" if state == "error" else ""))

    def test_control_status_string_version_and_null_message(self, codec):
        msg = codec.decode(codec.topics.control_status("1"), raw(
            {"type": "status", "interface_version": "1",
             "payload": {"state": "idle", "error_message": None}}))
        assert msg == ControlStatus("1", "idle", "", 1)

    @pytest.mark.parametrize("version", [2, "2", 1.0, True, None, [1], "missing"])
    def test_control_interface_version(self, codec, version):
        doc = {"type": "status", "payload": {"state": "idle", "error_message": ""}}
        if version != "missing":
            doc["interface_version"] = version
        err = perr(codec, codec.topics.control_status("3"), doc)
        assert (err.kind, err.site, err.field) == ("interface-version", "3",
                                                   "interface_version")
        assert "site 3: Control interface version" in err.reason
        assert "not supported" in err.reason

    @pytest.mark.parametrize("payload,field", [
        ({"state": "dancing"}, "payload.state"),
        ({"state": ["idle"]}, "payload.state"),
        ({}, "payload.state"),
        ({"state": "idle", "error_message": 5}, "payload.error_message"),
        ("idle", "payload"),
    ])
    def test_control_status_errors(self, codec, payload, field):
        err = perr(codec, codec.topics.control_status("0"),
                   {"type": "status", "interface_version": 1, "payload": payload})
        assert (err.kind, err.site, err.field) == ("malformed", "0", field)

    def test_testapp_status_documented(self, codec):
        doc = {"type": "status", "framework_version": 1, "test_version": "N/A",
               "payload": {"state": "testing", "message": ""}, "state": "testing"}
        t = codec.topics.testapp_status("1")
        msg = codec.decode(t, raw(doc))
        assert msg == TestAppStatus("1", "testing")
        assert wire(codec, msg) == (t, doc)

    def test_testapp_will(self, codec):
        will = {"type": "status", "framework_version": 1, "test_version": "N/A",
                "payload": {"state": 0}, "state": "crash"}
        t = codec.topics.testapp_status("0")
        assert codec.decode(t, raw(will)) == TestAppStatus("0", "crash")
        assert wire(codec, TestAppStatus("0", "crash")) == (t, will)
        # either marker alone means crash
        assert codec.decode(t, raw({"type": "status", "payload": {"state": 0}})) \
            == TestAppStatus("0", "crash")
        assert codec.decode(t, raw({"type": "status", "state": "crash",
                                    "payload": {"state": "idle"}})) \
            == TestAppStatus("0", "crash")

    @pytest.mark.parametrize("state", ["idle", "testing", "terminated", "error",
                                       "selftesting"])
    def test_testapp_states(self, codec, state):
        roundtrip(codec, TestAppStatus("3", state))

    @pytest.mark.parametrize("doc", [
        {"type": "status", "payload": {"state": "flying"}},
        {"type": "status", "payload": {"state": 1}},
        {"type": "status", "payload": {"state": False}},
        {"type": "status", "payload": "idle"},
        {"type": "status"},
    ])
    def test_testapp_status_errors(self, codec, doc):
        err = perr(codec, codec.topics.testapp_status("2"), doc)
        assert (err.kind, err.site) == ("malformed", "2")

    def test_test_result_documented(self, codec):
        t = codec.topics.testapp_testresult("2")
        msg = codec.decode(t, raw(RESULT_DOC))
        assert isinstance(msg, TestResult)
        assert msg.site == "2"
        assert msg.records == tuple(RESULT_DOC["payload"])
        assert msg.prr["PART_ID"] == "P102" and msg.prr["SOFT_BIN"] == 12
        assert wire(codec, msg) == (t, RESULT_DOC)

    def test_test_result_rec_id_only_and_nan(self, codec):
        payload = (b'{"type":"testresult","payload":[{"rec_id":"PTR","RESULT":NaN,'
                   b'"HI_LIMIT":Infinity,"LO_LIMIT":-Infinity},{"rec_id":"PRR"}]}')
        t = codec.topics.testapp_testresult("0")
        msg = codec.decode(t, payload)
        assert math.isnan(msg.records[0]["RESULT"])
        assert msg.records[0]["HI_LIMIT"] == math.inf
        # records are passed through as given, NaN included
        assert codec.encode(msg) == (t, payload)

    @pytest.mark.parametrize("records,field,fragment", [
        ([], "payload", "no records"),
        ([{"type": "PIR"}], "payload", "last record must be the PRR"),
        ([{"type": "PRR"}, {"type": "PRR"}], "payload[0]", "single, last"),
        ([{"type": "PRR"}, {"type": "PIR"}], "payload[0]", "single, last"),
        ([{"type": "PIR"}, 5, {"type": "PRR"}], "payload[1]", "record object"),
        ([{"REC_TYP": 5}, {"type": "PRR"}], "payload[0]", "no string type"),
        ({"type": "PRR"}, "payload", "array"),
        (None, "payload", "array"),
    ])
    def test_test_result_malformed(self, codec, records, field, fragment):
        err = perr(codec, codec.topics.testapp_testresult("1"),
                   {"type": "testresult", "payload": records})
        assert (err.kind, err.site, err.field) == ("malformed", "1", field)
        assert fragment in err.reason

    def test_test_result_missing_payload(self, codec):
        err = perr(codec, codec.topics.testapp_testresult("1"), {"type": "testresult"})
        assert (err.kind, err.site, err.field) == ("malformed", "1", "payload")

    def test_test_summary(self, codec):
        tsr = {"type": "TSR", "HEAD_NUM": 0, "SITE_NUM": 1, "TEST_TYP": "P",
               "TEST_NUM": 1000, "EXEC_CNT": 3, "FAIL_CNT": 1, "ALRM_CNT": 0,
               "TEST_NAM": "offset.vout", "SEQ_NAME": "", "TEST_LBL": "", "OPT_FLAG": 0,
               "TEST_TIM": 0.0, "TEST_MIN": 0.1, "TEST_MAX": 0.9, "TST_SUMS": 1.2,
               "TST_SQRS": 0.8, "rec_id": "TSR"}
        doc = {"type": "testresult", "payload": [tsr]}
        t = codec.topics.testapp_testsummary("1")
        msg = codec.decode(t, raw(doc))
        assert msg == TestSummary("1", (tsr,))
        assert wire(codec, msg) == (t, doc)
        assert codec.decode(t, raw({"type": "testresult", "payload": []})) \
            == TestSummary("1", ())
        err = perr(codec, t, {"type": "testresult", "payload": [{"type": "PRR"}]})
        assert (err.site, err.field) == ("1", "payload[0]")

    def test_execution_strategy_documented(self, codec):
        doc = {"type": "execution_strategy",
               "payload": [[["0", "1", "2", "3"]], [["0", "2"], ["1", "3"]]]}
        t = codec.topics.testapp_execution_strategy("0")
        msg = codec.decode(t, raw(doc))
        assert msg == ExecutionStrategy("0", ((("0", "1", "2", "3"),),
                                              (("0", "2"), ("1", "3"))))
        assert wire(codec, msg) == (t, doc)
        err = perr(codec, t, {"type": "execution_strategy", "payload": [[["0", None]]]})
        assert (err.site, err.field) == ("0", "payload[0][0][1]")
        err = perr(codec, t, {"type": "execution_strategy", "payload": [["0"]]})
        assert err.field == "payload[0][0]"

    @pytest.mark.parametrize("app", ["Control", "TestApp"])
    def test_log_line_documented(self, codec, app):
        doc = {"type": "log",
               "payload": "control 0|24/11/2026 06:29:50 PM |INFO    |control state is: busy"}
        t = codec.topics.log(app, "0")
        msg = codec.decode(t, raw(doc))
        assert msg == LogLine(app, "0", doc["payload"])
        assert wire(codec, msg) == (t, doc)
        err = perr(codec, t, {"type": "log", "payload": 3})
        assert (err.site, err.field) == ("0", "payload")

    def test_log_line_bad_app(self, codec):
        with pytest.raises(ValueError, match="app"):
            codec.encode(LogLine("Master", "0", "x"))

    def test_io_control_request_documented(self, codec):
        doc = {"type": "io-control-request", "periphery_type": "Temperature",
               "ioctl_name": "set_temperature",
               "parameters": {"temperature": [25], "timeout": 5}}
        t = codec.topics.testapp_io_request("1")
        msg = codec.decode(t, raw(doc))
        assert msg == IoControlRequest("1", "Temperature", "set_temperature",
                                       {"temperature": [25], "timeout": 5})
        assert wire(codec, msg) == (t, doc)

    @pytest.mark.parametrize("ptype", ["", "Master", "a/b", "x#", 7])
    def test_io_control_request_bad_type(self, codec, ptype):
        err = perr(codec, codec.topics.testapp_io_request("1"),
                   {"type": "io-control-request", "periphery_type": ptype,
                    "ioctl_name": "x"})
        assert (err.site, err.field) == ("1", "periphery_type")


# ---------------------------------------------------------------------------
# Peripherals (9) and the handler application (4.9, 13.1)
# ---------------------------------------------------------------------------

class TestPeripheralsAndHandler:
    def test_io_forward(self, codec):
        doc = {"type": "io-control-request", "ioctl_name": "set_temperature",
               "parameters": {"temperature": [25], "timeout": 5}}
        t = "ate/SCT-81-1F/Temperature/io-control/request"
        msg = codec.decode(t, raw(doc))
        assert msg == IoControlForward("Temperature", "set_temperature",
                                       {"temperature": [25], "timeout": 5})
        assert "periphery_type" not in wire(codec, msg)[1]
        assert wire(codec, msg) == (t, doc)

    def test_io_response_and_relay_unchanged(self, codec):
        doc = {"type": "io-control-response", "ioctl_name": "set_temperature",
               "result": {"status": "ok", "temperature": 25.0}, "extra": [1]}
        t = "ate/SCT-81-1F/Temperature/io-control/response"
        msg = codec.decode(t, raw(doc))
        assert msg == IoControlResponse("Temperature", doc)
        assert msg.ioctl_name == "set_temperature"
        assert wire(codec, msg) == (t, doc)
        relay = PeripheralResponseRelay("Temperature", msg.payload)
        assert wire(codec, relay) == ("ate/SCT-81-1F/Master/Temperature/response", doc)
        assert codec.decode("ate/SCT-81-1F/Master/Temperature/response", raw(doc)) == relay

    def test_io_timeout_relay(self, codec):
        doc = {"type": "io-control-response", "ioctl_name": "set_temperature",
               "result": "Timeout"}
        roundtrip(codec, PeripheralResponseRelay("Temperature", doc))

    def test_peripheral_status(self, codec):
        t = "ate/SCT-81-1F/Temperature/status"
        assert codec.decode(t, b'{"status":"available"}') \
            == PeripheralStatus("Temperature", "available")
        assert wire(codec, PeripheralStatus("Temperature", "crashed")) == (
            t, {"type": "status", "status": "crashed"})
        err = perr(codec, t, {"status": 1})
        assert err.field == "status"

    def test_handler_status(self, codec):
        doc = {"type": "status", "payload": {"state": "connecting", "message": ""}}
        t = "ate/HTO92-20F/Handler/status"
        msg = codec.decode(t, raw(doc))
        assert msg == HandlerStatus(H, "connecting", "")
        assert wire(codec, msg) == (t, doc)
        will = {"type": "status", "payload": {"state": "crash", "message": ""}}
        assert codec.decode(t, raw(will)) == HandlerStatus(H, "crash", "")
        assert perr(codec, t, {"type": "status"}).field == "payload"
        assert perr(codec, t, {"type": "status", "payload": {}}).field == "payload.state"

    def test_handler_status_wrong_id(self, codec):
        with pytest.raises(ValueError, match="handler_id"):
            codec.encode(HandlerStatus("OTHER", "ready", ""))

    def test_handler_command(self, codec):
        t = "ate/SCT-81-1F/Handler/command"
        doc = {"type": "temperature", "payload": {}}
        msg = codec.decode(t, raw(doc))
        assert msg == HandlerCommand("temperature", {})
        assert wire(codec, msg) == (t, doc)
        assert codec.decode(t, b'{"type":"identify"}') == HandlerCommand("identify", {})
        err = perr(codec, t, {"type": "identify", "payload": 3})
        assert (err.field, err.command) == ("payload", "identify")

    def test_handler_response(self, codec):
        t = "ate/HTO92-20F/Handler/response"
        doc = {"type": "temperature", "payload": {"temperature": 25.0}}
        msg = codec.decode(t, raw(doc))
        assert msg == HandlerResponse({"temperature": 25.0}, "temperature")
        assert wire(codec, msg) == (t, doc)

    def test_handler_topics_need_handler_id_to_encode(self):
        with pytest.raises(ValueError, match="handler_id"):
            Codec(D, SITES).encode(HandlerResponse({"temperature": 1.0}))


def test_echoes_are_decoded_not_dropped(codec):
    """The codec is shared by master, sims and handler: own publications decode."""
    for msg in (MasterStatus("ready", ""), ControlReset(SITES), TestAppReset(SITES),
                IdentifyResponse(D), PeripheralResponseRelay("T", {"type": "x"}),
                IoControlForward("T", "n", None)):
        assert codec.decode(*codec.encode(msg)) == msg
