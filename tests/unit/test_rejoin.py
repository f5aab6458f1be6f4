"""A next after the master's reconnect waits for the TestApps (ate.master.held.Rejoin)."""

from __future__ import annotations

from cellharness import Harness

STRATEGY = {"type": "execution_strategy", "payload": [[["0", "1", "2", "3"]]]}


def sent(h: Harness, tail: str) -> list[dict]:
    return [p for t, p in h.pub.take() if t.endswith(tail)]


def reconnect(h: Harness) -> None:
    h.cell.mqtt_disconnected()
    h.cell.mqtt_connected()


def test_a_next_after_a_reconnect_waits_until_every_testapp_is_heard(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.pub.take()
    reconnect(h)
    out = h.pub.take()
    # the probe that every live TestApp answers, then the re-published status
    assert [t.rsplit("/", 2)[-2:] for t, _ in out] == [["TestApp", "cmd"], ["Master", "status"]]
    assert out[0][1]["command"] == "getexecutionstrategy"
    h.next()
    assert h.state == "testing"
    assert sent(h, "TestApp/cmd") == []
    # a TestApp that kept its connection answers the probe; the others re-announce their
    # state after their own reconnect (a repeat of what the master knows)
    h.mqtt("TestApp/execution_strategy/site0", STRATEGY)
    h.testapp("1", "idle")
    h.testapp("2", "idle")
    assert sent(h, "TestApp/cmd") == []
    h.testapp("3", "idle")
    [nxt] = sent(h, "TestApp/cmd")
    assert nxt["command"] == "next" and h.state == "testing"
    # the part completes as usual, and the next part goes out at once
    for s in h.sites:
        h.testapp(s, "testing")
    for s in h.sites:
        h.testapp(s, "idle")
        h.result(s, f"P{s}")
    assert h.state == "ready"
    h.pub.take()
    h.next()
    assert [p["command"] for p in sent(h, "TestApp/cmd")] == ["next"]


def test_a_next_for_a_subset_waits_only_for_its_sites(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    reconnect(h)
    h.testapp("0", "idle")
    h.testapp("1", "idle")
    h.pub.take()
    h.next(["0", "1"])
    assert [p["command"] for p in sent(h, "TestApp/cmd")] == ["next"]


def test_a_held_next_is_dropped_when_its_timer_ends_the_part(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    reconnect(h)
    h.next()
    h.clock.advance(h.config.timeouts.next_ack)
    assert h.state == "softerror"
    assert "not all sites respond to next command" in h.cell.status()["error_message"]
    h.pub.take()
    for s in h.sites:
        h.testapp(s, "idle")
    assert sent(h, "TestApp/cmd") == []


def test_without_a_reconnect_nothing_is_held_and_no_probe_is_sent(tmp_path):
    h = Harness(tmp_path)
    h.to_ready()
    h.pub.take()
    h.next()
    assert [p["command"] for p in sent(h, "TestApp/cmd")] == ["next"]


def test_a_reconnect_outside_ready_and_testing_sends_no_probe(tmp_path):
    h = Harness(tmp_path)
    h.to_initialized()
    h.pub.take()
    reconnect(h)
    assert sent(h, "TestApp/cmd") == []
