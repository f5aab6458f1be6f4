"""Deeply nested JSON from MQTT is a ProtocolError, never a RecursionError (issue 11, item 5).

json.loads fails only beyond Python's recursion limit minus the caller's stack, so a payload
nested a little less deep decoded and then broke whatever walked or encoded it later (the
cell forwarding a ``next`` to the TestApps, the feed, the datalog).  The codec refuses any
nesting deeper than ``MAX_JSON_DEPTH``.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from ate.protocol.errors import ProtocolError
from ate.protocol.messages import MAX_JSON_DEPTH, Codec, json_too_deep
from ate.protocol.reading import _loads

sys.path.insert(0, os.path.dirname(__file__))
from cellharness import DEVICE, Harness, result_payload  # noqa: E402


def nested(levels: int, leaf=None):
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize("levels", [0, 1, 2, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH])
def test_depth_within_the_limit(levels):
    assert not json_too_deep(nested(levels, 1))


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 500, 5000])
def test_depth_beyond_the_limit(levels):
    assert json_too_deep(nested(levels))


def test_depth_counts_the_deepest_branch_and_scalars_are_level_0():
    wide = {"a": [1, 2, {"b": "x"}], "c": nested(10), "d": [[[]]]}
    assert not json_too_deep(wide, limit=11)
    assert json_too_deep(wide, limit=10)
    assert not json_too_deep("text") and not json_too_deep(3.5)
    assert json_too_deep([], limit=0) and not json_too_deep([], limit=1)


def _next_payload(info) -> bytes:
    return json.dumps({"type": "next", "payload": {"sites": [
        {"siteid": "0", "partid": "P0", "binning": -1, "additionalinfo": info}]}}).encode()


def test_codec_refuses_a_payload_nested_deeper_than_the_limit():
    codec = Codec(DEVICE, ["0"], "H")
    topic = f"ate/{DEVICE}/Master/cmd"
    ok = codec.decode(topic, _next_payload(nested(MAX_JSON_DEPTH - 4)))
    assert ok.sites[0].additionalinfo == nested(MAX_JSON_DEPTH - 4)
    with pytest.raises(ProtocolError) as e:
        codec.decode(topic, _next_payload(nested(MAX_JSON_DEPTH)))
    assert e.value.kind == "not-json" and "nested deeper than 64 levels" in str(e.value)
    with pytest.raises(ProtocolError) as e:                       # beyond the recursion limit
        codec.decode(topic, b"[" * 100_000 + b"]" * 100_000)
    assert e.value.kind == "not-json"


def _stack_depth() -> int:
    frame, depth = sys._getframe(1), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def test_router_turns_a_deep_next_into_a_logged_protocol_error(tmp_path):
    """Payloads that json.loads still decodes, a little less deep than the recursion limit
    allows at the router: before the depth limit, forwarding one to the TestApps raised
    RecursionError out of the router (into the MQTT link's error handler)."""
    headroom = sys.getrecursionlimit() - _stack_depth()
    for margin in range(4, 120, 4):
        levels = headroom - margin
        (tmp_path / str(margin)).mkdir()
        h = Harness(tmp_path / str(margin))
        h.to_ready()
        h.pub.take()
        raw = (b'{"type":"next","payload":{"sites":[{"siteid":"0","partid":"P0","binning":-1,'
               b'"additionalinfo":' + b"[" * levels + b"]" * levels + b"}]}}")
        h.router.received(f"ate/{DEVICE}/Master/cmd", raw)   # raises nothing
        assert h.state == "ready", margin
        assert h.cell.metrics.protocol_errors.get("not-json") == 1, margin
        assert h.pub.take() == [], margin


def test_router_refuses_a_deep_test_result(tmp_path):
    h = Harness(tmp_path, sites=("0",))
    h.to_ready()
    h.next()
    h.testapp("0", "testing")
    h.testapp("0", "idle")
    payload = result_payload("0", "P0")
    payload["payload"][1]["TEST_TXT"] = nested(200, "x")
    h.mqtt("TestApp/testresult/site0", payload)
    assert h.cell.metrics.protocol_errors.get("not-json") == 1
    assert h.cell.lot.parts_tested == 0


def _loads_refuses(text: str) -> bool:
    try:
        _loads("t", text.encode())
    except ProtocolError as e:
        assert e.kind == "not-json"
        return "nested deeper" in str(e)
    return False


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1])
def test_the_bracket_count_never_skips_a_payload_that_is_too_deep(levels):
    """The codec walks the decoded value only when the text has more than MAX_JSON_DEPTH
    opening brackets; the verdict is the walk's, for every shape near the limit."""
    shapes = [
        {"k": nested(levels)},                                   # one deep branch
        {"wide": [[] for _ in range(100)], "k": nested(levels)},  # many shallow brackets too
        {"s": "[{" * 200, "k": nested(levels)},                   # brackets in a string
        {"k": nested(levels), "pad": "x" * 300},
    ]
    for obj in shapes:
        assert _loads_refuses(json.dumps(obj)) == json_too_deep(obj), obj
    # many brackets, all shallow: the walk runs and accepts it
    assert not _loads_refuses(json.dumps({"rows": [[i, {"v": [i]}] for i in range(200)]}))
