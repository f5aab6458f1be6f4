"""SiteTracker (ate/master/sites.py): what a site said before a phase began must not
stand in for what the phase waits for (protocol.md §3.4)."""

from __future__ import annotations

from ate.master.sites import SiteTracker


class Events:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def synced(self) -> None:
        self.calls.append("synced")

    def loaded(self) -> None:
        self.calls.append("loaded")

    def acknowledged(self) -> None:
        self.calls.append("acknowledged")

    def part_done(self) -> None:
        self.calls.append("part_done")

    def fault(self, message: str) -> None:
        self.calls.append(f"fault: {message}")

    def fatal(self, message: str) -> None:
        self.calls.append(f"fatal: {message}")


def _initialized(sites=("0", "1")) -> tuple[SiteTracker, Events]:
    events = Events()
    tracker = SiteTracker(sites, events)
    tracker.begin_connecting(after_reset=True)
    for site in sites:
        tracker.control(site, "idle")
    assert events.calls == ["synced"]
    tracker.begin_initialized()
    return tracker, events


def test_a_testapp_idle_heard_before_the_load_does_not_hide_the_loaded_testapps_idle():
    # a stray or stale TestApp status while initialized (a TestApp left from before, or
    # a message from nobody) is recorded; the TestApp the load starts is a new one
    tracker, events = _initialized()
    tracker.testapp("0", "idle")
    tracker.begin_loading()
    for site in ("0", "1"):
        tracker.control(site, "loading")
        tracker.control(site, "busy")
        tracker.testapp(site, "idle")
    assert events.calls == ["synced", "loaded"]
    assert tracker.missing() == []


def test_testapp_idle_heard_while_connecting_does_not_hide_the_loaded_testapps_idle():
    events = Events()
    tracker = SiteTracker(("0", "1"), events)
    tracker.begin_connecting(after_reset=True)
    tracker.testapp("1", "idle")
    for site in ("0", "1"):
        tracker.control(site, "idle")
    tracker.begin_initialized()
    tracker.begin_loading()
    for site in ("0", "1"):
        tracker.control(site, "loading")
        tracker.control(site, "busy")
        tracker.testapp(site, "idle")
    assert events.calls == ["synced", "loaded"]


def test_a_repeated_idle_within_the_load_still_counts_once():
    tracker, events = _initialized()
    tracker.begin_loading()
    for site in ("0", "1"):
        tracker.control(site, "loading")
        tracker.control(site, "busy")
        tracker.testapp(site, "idle")
        tracker.testapp(site, "idle")
    assert events.calls == ["synced", "loaded"]
