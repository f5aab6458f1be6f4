"""Property tests of ate.protocol: round trips for every message kind, and
hostile input on every topic never raises anything but ProtocolError."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ate.protocol import (
    CONTROL_STATES,
    MESSAGE_TYPES,
    RESPONSE_TYPES,
    TESTAPP_STATES,
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
    MasterAlarm,
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
    Unload,
)
from ate.protocol.reading import _is_level

D = "SCT-81-1F"
H = "HTO92-20F"
SITES = ("0", "1", "2", "3")
CODEC = Codec(D, SITES, H)

PROPS = settings(max_examples=200, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])

# -- building blocks -----------------------------------------------------------

text = st.text(max_size=12)
nonempty = st.text(min_size=1, max_size=12)
site = st.sampled_from(SITES)
site_list = st.lists(text, max_size=5).map(tuple)
json_scalar = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
               | st.floats(allow_nan=False) | text)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
json_object = st.dictionaries(text, json_value, max_size=5)
pairs = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
                 min_size=1, max_size=4).map(tuple)
ptype = nonempty.filter(_is_level)  # a topic level a broker takes (reading._is_level)


def record(name: str) -> st.SearchStrategy[dict]:
    # a PRR's SOFT_BIN/HARD_BIN must be JSON integers 0..65535 (else the result is
    # malformed, tested in test_stdf_hostile.py): arbitrary keys never take those names
    return json_object.map(
        lambda d: {**{k: v for k, v in d.items()
                      if k not in ("type", "rec_id", "SOFT_BIN", "HARD_BIN")},
                   "type": name})


site_info = st.builds(
    SiteInfo,
    site,
    json_value, json_value, json_value, json_value,
    st.dictionaries(text.filter(lambda k: k not in
                                {"siteid", "partid", "binning", "logflag",
                                 "additionalinfo"}),
                    json_value, max_size=2).map(lambda d: tuple(d.items())),
)
next_sites = st.lists(site_info, min_size=1, max_size=4,
                      unique_by=lambda s: s.siteid).map(tuple)

MESSAGES: dict[type, st.SearchStrategy[Message]] = {
    Load: st.builds(Load, nonempty),
    Next: st.builds(Next, st.none() | next_sites),
    Unload: st.builds(Unload, st.booleans()),
    Reset: st.just(Reset()),
    Identify: st.just(Identify()),
    GetState: st.just(GetState()),
    GetHost: st.just(GetHost()),
    SiteLayout: st.builds(SiteLayout, pairs),
    NextResponse: st.builds(NextResponse, st.lists(st.builds(
        NextResult, text, json_value, st.integers(-1, 70000), json_value, json_value),
        max_size=4).map(tuple)),
    IdentifyResponse: st.builds(IdentifyResponse, text),
    GetStateResponse: st.builds(GetStateResponse, text, st.none() | text),
    GetHostResponse: st.builds(GetHostResponse, text, st.integers(0, 65535)),
    ErrorResponse: st.builds(ErrorResponse, text, st.sampled_from(sorted(RESPONSE_TYPES)),
                             text, text),
    MasterStatus: st.builds(MasterStatus, text, st.none() | text),
    MasterAlarm: st.builds(MasterAlarm, json_object),
    ControlLoadTest: st.builds(
        ControlLoadTest, site_list, nonempty, site_list, text,
        st.dictionaries(text, st.lists(text, max_size=3), max_size=4)),
    ControlReset: st.builds(ControlReset, site_list),
    ControlSetLogLevel: st.builds(ControlSetLogLevel, site_list, st.integers()),
    TestAppNext: st.builds(
        TestAppNext, site_list,
        st.builds(lambda d, infos: {**d, "sites_info": infos},
                  json_object, st.lists(json_object, max_size=3))),
    TestAppTerminate: st.builds(TestAppTerminate, site_list),
    TestAppReset: st.builds(TestAppReset, site_list),
    TestAppSetLogLevel: st.builds(TestAppSetLogLevel, site_list, st.integers()),
    TestAppGetExecutionStrategy: st.builds(TestAppGetExecutionStrategy, site_list, pairs),
    TestAppSetHBin: st.builds(TestAppSetHBin, site_list, text, text),
    TestAppSetParameter: st.builds(TestAppSetParameter, site_list,
                                   st.lists(json_object, max_size=3).map(tuple)),
    ControlStatus: st.builds(ControlStatus, site, st.sampled_from(sorted(CONTROL_STATES)),
                             text, st.just(1)),
    TestAppStatus: st.builds(TestAppStatus, site, st.sampled_from(sorted(TESTAPP_STATES))),
    TestResult: st.builds(
        lambda s, body, prr: TestResult(s, (*body, prr)), site,
        st.lists(st.sampled_from(["PIR", "PTR", "MPR", "FTR"]).flatmap(record),
                 max_size=4),
        record("PRR")),
    TestSummary: st.builds(TestSummary, site,
                           st.lists(record("TSR"), max_size=3).map(tuple)),
    ExecutionStrategy: st.builds(ExecutionStrategy, site, st.lists(
        st.lists(st.lists(text, max_size=4).map(tuple), max_size=3).map(tuple),
        max_size=3).map(tuple)),
    LogLine: st.builds(LogLine, st.sampled_from(["Control", "TestApp"]), site, text),
    IoControlRequest: st.builds(IoControlRequest, site, ptype, text, json_value),
    IoControlForward: st.builds(IoControlForward, ptype, text, json_value),
    IoControlResponse: st.builds(IoControlResponse, ptype, json_object),
    PeripheralResponseRelay: st.builds(PeripheralResponseRelay, ptype, json_object),
    PeripheralStatus: st.builds(PeripheralStatus, ptype, text),
    HandlerStatus: st.builds(HandlerStatus, st.just(H), text, st.none() | text),
    HandlerCommand: st.builds(HandlerCommand, text, json_object),
    HandlerResponse: st.builds(HandlerResponse, json_object, text),
}

any_message = st.one_of(*MESSAGES.values())


def test_every_message_kind_has_a_strategy():
    assert set(MESSAGES) == set(MESSAGE_TYPES)


# -- round trips -----------------------------------------------------------------

def _roundtrip_test(cls: type):
    """One round-trip property test per message kind.

    (Generated functions rather than ``parametrize``: pytest-twisted wraps a
    shared hypothesis test function once per parametrized item.)
    """

    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(msg=MESSAGES[cls])
    def test(msg):
        topic, payload = CODEC.encode(msg)
        assert isinstance(payload, bytes)
        decoded = CODEC.decode(topic, payload)
        assert decoded == msg, payload
        assert type(decoded) is cls
        # encoding is deterministic: the decoded message re-encodes identically
        assert CODEC.encode(decoded) == (topic, payload)

    test.__name__ = test.__qualname__ = f"test_roundtrip_{cls.__name__}"
    return test


for _cls in MESSAGES:
    globals()[f"test_roundtrip_{_cls.__name__}"] = _roundtrip_test(_cls)
del _cls


# -- hostile input -----------------------------------------------------------------

def _topics() -> list[str]:
    t = CODEC.topics
    out = [t.master_cmd, t.master_status, t.master_response, t.master_job,
           t.control_cmd, t.testapp_cmd, t.handler_command, t.handler_status,
           t.handler_response, t.peripheral_request("Temperature"),
           t.peripheral_response("Temperature"), t.peripheral_status("Temperature"),
           t.master_peripheral_response("Temperature"),
           "ate/SCT-81-1F/TestApp/binsettings/site0", "ate/other/Master/cmd"]
    for s in ("0", "3", "7"):
        out += [t.control_status(s), t.control_log(s), t.testapp_status(s),
                t.testapp_testresult(s), t.testapp_testsummary(s),
                t.testapp_execution_strategy(s), t.testapp_log(s),
                t.testapp_io_request(s)]
    return out


TOPICS = _topics()
topic_st = st.sampled_from(TOPICS) | st.text(max_size=40) | st.builds(
    lambda parts: "ate/SCT-81-1F/" + "/".join(parts),
    st.lists(st.sampled_from(["Master", "Control", "TestApp", "Handler", "Temperature",
                              "status", "cmd", "site0", "site9", "io-control",
                              "request", "response", "log", ""]), max_size=4))

VOCAB = ["type", "payload", "state", "message", "sites", "siteid", "partid", "binning",
         "lot_number", "lotnumber", "command", "interface_version", "error_message",
         "testapp_params", "job_data", "sites_info", "layout", "level", "sbin", "hbin",
         "periphery_type", "ioctl_name", "parameters", "status", "rec_id", "name",
         "host", "port", "command_type", "response_type", "testapp_script_path",
         "testapp_script_args", "cwd", "bin_table"]
VALUES = ["next", "load", "unload", "endlot", "reset", "identify", "get-state",
          "get-host", "site-layout", "error", "status", "cmd", "loadTest", "setloglevel",
          "terminate", "getexecutionstrategy", "sethbin", "setparameter", "idle",
          "crash", "PRR", "PIR", "TSR", "notlot", "1", "0", "3", "4", 0, 1, -1, "Temperature"]
plausible_scalar = st.sampled_from(VALUES) | json_scalar
plausible = st.recursive(
    plausible_scalar,
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(st.sampled_from(VOCAB) | text, inner, max_size=5)),
    max_leaves=20,
)


def _decode_safely(topic: str, payload: bytes) -> None:
    try:
        result = CODEC.decode(topic, payload)
    except ProtocolError as e:
        assert "\n" not in str(e)
        assert e.kind in ("not-json", "malformed", "unknown-command",
                          "interface-version", "site-not-configured", "unknown-topic")
    else:
        assert result is None or isinstance(result, Message)


@PROPS
@given(topic_st, st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_protocol_error(topic, payload):
    _decode_safely(topic, payload)


@PROPS
@given(st.sampled_from(TOPICS), plausible)
def test_arbitrary_json_only_raises_protocol_error(topic, value):
    _decode_safely(topic, json.dumps(value).encode())


def _mutate(data, obj):
    """Replace one randomly chosen nested value of ``obj`` with plausible JSON."""
    if isinstance(obj, dict) and obj and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(obj)))
        if data.draw(st.booleans()):
            return {k: v for k, v in obj.items() if k != key}   # drop a field
        return {**obj, key: _mutate(data, obj[key])}
    if isinstance(obj, list) and obj and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(obj) - 1))
        return obj[:i] + [_mutate(data, obj[i])] + obj[i + 1:]
    return data.draw(plausible)


@PROPS
@given(st.data())
def test_mutated_valid_messages_only_raise_protocol_error(data):
    msg = data.draw(any_message)
    topic, payload = CODEC.encode(msg)
    mutated = _mutate(data, json.loads(payload))
    _decode_safely(topic, json.dumps(mutated).encode())
