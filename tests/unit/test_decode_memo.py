"""The codec's TestApp status memo: a repeated status payload decodes to the same message
without being parsed again; bad payloads still raise every time; the memo stays bounded."""

from __future__ import annotations

import json

import pytest

from ate.protocol import decoding
from ate.protocol.errors import ProtocolError
from ate.protocol.messages import Codec, TestAppStatus

DEVICE = "SCT-81-1F"


def status(state: str, message: str = "") -> bytes:
    return json.dumps({"type": "status", "framework_version": 1, "test_version": "N/A",
                       "payload": {"state": state, "message": message},
                       "state": state}).encode()


def topic(site: str) -> str:
    return f"ate/{DEVICE}/TestApp/status/site{site}"


def test_a_repeat_is_the_same_message_and_not_parsed_again(monkeypatch):
    codec = Codec(DEVICE, ["0", "1"], "H")
    first = codec.decode(topic("0"), status("testing"))
    assert first == TestAppStatus("0", "testing")
    calls = []
    real = decoding._loads
    monkeypatch.setattr(decoding, "_loads", lambda *a: calls.append(a) or real(*a))
    assert codec.decode(topic("0"), status("testing")) is first
    assert calls == []
    # the same bytes on another site's topic are that site's status
    assert codec.decode(topic("1"), status("testing")) == TestAppStatus("1", "testing")
    assert codec.decode(topic("0"), status("idle")) == TestAppStatus("0", "idle")
    assert len(calls) == 2


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_every_payload_type_decodes_the_same(wrap):
    codec = Codec(DEVICE, ["0"], "H")
    for _ in range(2):
        assert codec.decode(topic("0"), wrap(status("idle"))) == TestAppStatus("0", "idle")
    long = status("idle", "x" * 600)  # above the memo's payload size: parsed every time
    assert codec.decode(topic("0"), wrap(long)) == TestAppStatus("0", "idle")
    assert all(len(p) <= decoding._MEMO_PAYLOAD for (_s, p) in codec._status_memo)


def test_a_bad_status_raises_every_time():
    codec = Codec(DEVICE, ["0"], "H")
    bad = status("dancing")
    for _ in range(3):
        with pytest.raises(ProtocolError, match="unknown TestApp state"):
            codec.decode(topic("0"), bad)
    assert codec._status_memo == {}


def test_the_memo_is_bounded():
    codec = Codec(DEVICE, ["0"], "H")
    for i in range(decoding._MEMO_ENTRIES + 10):
        msg = codec.decode(topic("0"), status("idle", f"m{i}"))
        assert msg == TestAppStatus("0", "idle")
        assert len(codec._status_memo) <= decoding._MEMO_ENTRIES
    assert codec.decode(topic("0"), status("crash")) == TestAppStatus("0", "crash")
