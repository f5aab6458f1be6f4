"""The /ws feed as the MSCT web UI reads it, over a real lot: the master with the simulated
sites on a real mosquitto, a real Autobahn client, and a reader that does what the UI does
(protocol §11.3/§11.4): one message handler that dispatches on ``type`` and uses every
payload as the UI's code does.  An exception in that handler ends the connection for good,
as in the UI, and fails the test: a frame wrapped twice, a payload of the wrong JSON type or
a non-strict number cannot pass.

Also here: a healthy lot logs no WARNING or ERROR at all (issue: a warning is for the
operator; one that fires every lot is a bug)."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint

from tests.integration.test_master import LOT, cellfactory, run_parts

__all__ = ["cellfactory"]  # the fixture, used by name
SITES = ("0", "1", "2", "3")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-strict JSON constant {name} (a browser cannot parse it)")


class UIContractError(AssertionError):
    pass


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise UIContractError(what)


def _records(kind: str, records: Any) -> None:
    # testresult / one entry of testresults: the UI calls records.forEach and reads every
    # record as key/value rows, keeping the last PRR per site and head
    _expect(isinstance(records, list) and records, f"{kind}: payload is not a list of records")
    for r in records:
        _expect(isinstance(r, dict) and isinstance(r.get("type"), str),
                f"{kind}: record without a string type: {r!r:.200}")
    prr = records[-1]
    _expect(prr["type"] == "PRR", f"{kind}: the last record is {prr['type']}, not PRR")
    _expect(prr.get("HEAD_NUM") == 0, f"{kind}: PRR HEAD_NUM {prr.get('HEAD_NUM')!r} is not 0")
    _expect(isinstance(prr.get("SITE_NUM"), int), f"{kind}: PRR SITE_NUM is not an integer")


class MsctReader:
    """What the MSCT web UI does with each frame, as checks.  ``seen`` counts frames by type."""

    def __init__(self, sites: tuple[str, ...]) -> None:
        self.sites = list(sites)
        self.seen: dict[str, int] = {}
        self.prr_per_site: dict[int, dict] = {}

    def handle(self, raw: bytes) -> None:
        msg = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        _expect(isinstance(msg, dict), "frame is not a JSON object")
        kind = msg.get("type")
        _expect(isinstance(kind, str), "frame without a string type")
        _expect("payload" in msg and msg["payload"] is not None, f"{kind}: payload missing or null")
        handler = getattr(self, "on_" + kind, None)
        _expect(handler is not None, f"frame of unknown type {kind!r}")
        handler(msg["payload"])
        self.seen[kind] = self.seen.get(kind, 0) + 1

    def on_connectionid(self, p: Any) -> None:
        _expect(isinstance(p, dict) and isinstance(p.get("connectionid"), str),
                "connectionid: payload.connectionid is not a string")

    def on_masterconfiguration(self, p: Any) -> None:
        _expect(isinstance(p, dict), "masterconfiguration: payload is not an object")
        _expect(isinstance(p.get("sites"), list), "masterconfiguration: sites is not a list")

    def on_status(self, p: Any) -> None:
        _expect(isinstance(p, dict), "status: payload is not an object")
        _expect(isinstance(p.get("sites"), list), "status: sites is not a list")
        for key in ("device_id", "systemTime", "state", "error_message", "lot_number"):
            _expect(isinstance(p.get(key), str), f"status: {key} is not a string")

    def on_usersettings(self, p: Any) -> None:
        _expect(isinstance(p, dict), "usersettings: payload is not an object")
        opts = p.get("testoptions")
        _expect(isinstance(opts, list) and len(opts) == 6, "usersettings: not 6 testoptions")
        for o in opts:
            _expect(isinstance(o, dict) and isinstance(o.get("name"), str)
                    and isinstance(o.get("active"), bool) and type(o.get("value")) is int,
                    f"usersettings: bad testoption {o!r}")
        _expect(type(p.get("loglevel")) is int, "usersettings: loglevel is not an integer")

    def on_testresult(self, p: Any) -> None:
        _records("testresult", p)
        self.prr_per_site[p[-1]["SITE_NUM"]] = p[-1]

    def on_testresults(self, p: Any) -> None:
        _expect(isinstance(p, list), "testresults: payload is not a list")
        for records in p:
            _records("testresults", records)

    def on_yield(self, p: Any) -> None:
        _expect(isinstance(p, list), "yield: payload is not a list")
        for row in p:
            _expect(isinstance(row, dict) and isinstance(row.get("siteid"), str),
                    f"yield: row without a string siteid: {row!r:.200}")

    def on_bintable(self, p: Any) -> None:
        _expect(isinstance(p, list), "bintable: payload is not a list")
        for row in p:
            _expect(isinstance(row, dict), "bintable: row is not an object")
            counts = row.get("siteCounts")
            _expect(isinstance(counts, list) and len(counts) == len(self.sites),
                    f"bintable: siteCounts does not list every configured site: {row!r:.200}")
            _expect([c.get("siteId") if isinstance(c, dict) else None for c in counts]
                    == self.sites, f"bintable: siteCounts not in the configured order: {counts}")

    def on_lotdata(self, p: Any) -> None:
        _expect(isinstance(p, dict) and p.get("rec_id") == "MIR", "lotdata: not the MIR dict")

    def on_logs(self, p: Any) -> None:
        _expect(isinstance(p, list), "logs: payload is not a list")
        for e in p:
            _expect(isinstance(e, dict) and isinstance(e.get("type"), str)
                    and isinstance(e.get("source"), str),
                    f"logs: entry without string type and source: {e!r:.200}")

    def on_logfile(self, p: Any) -> None:
        _expect(isinstance(p, dict) and isinstance(p.get("content"), str),
                "logfile: content is not a string")


class UIProtocol(WebSocketClientProtocol):
    """One handler for every message, as the UI has; the first exception closes the
    socket for good (the UI never reconnects)."""

    reader: MsctReader

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None
        self.opened: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.error is not None:
            return
        try:
            _expect(not isBinary, "binary frame")
            self.reader.handle(payload)
        except Exception as e:  # the UI's handler throws: it is gone for good
            self.error = e
            self.sendClose()

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.closed.called:
            self.closed.callback(None)

    def command(self, command: str) -> None:
        self.sendMessage(json.dumps({"type": "cmd", "command": command,
                                     "connectionid": "ui"}).encode())


async def connect_ui(reactor, port: int, sites=SITES) -> UIProtocol:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/ws")
    reader = MsctReader(sites)

    class Proto(UIProtocol):
        pass

    Proto.reader = reader
    factory.protocol = Proto
    proto = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    await proto.opened
    return proto


async def _wait(reactor, cond, what: str, timeout: float = 10.0) -> None:
    """Poll ``cond`` on the reactor (bounded); the frames come over a real socket."""
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        d: defer.Deferred = defer.Deferred()
        reactor.callLater(0.05, d.callback, None)
        await d
    raise AssertionError(f"timed out waiting for {what}")


@pytest_twisted.ensureDeferred
async def test_msct_ui_reads_every_frame_of_a_real_lot(reactor, cellfactory):
    c = cellfactory()
    await c.start_all()
    port = c.master_config.webui_port
    early = await connect_ui(reactor, port)  # connected before the lot
    await c.handler.command("load", {"lot_number": LOT}, expect="ready")
    await run_parts(c.handler, 20)
    late = await connect_ui(reactor, port)  # connects mid-lot: testresults, lotdata, ...
    late.command("getresults")
    late.command("getlogs")
    await run_parts(c.handler, 5, prefix="Q")
    await c.handler.command("unload", {}, expect="initialized")
    # the frames of the last part and the unload reach both clients
    await _wait(reactor, lambda: early.error is not None or
                early.reader.seen.get("testresult", 0) >= 100, "100 testresult frames")
    await _wait(reactor, lambda: late.error is not None or
                late.reader.seen.get("testresults", 0) >= 2, "the getresults reply")
    for ui in (early, late):
        assert ui.error is None, f"the UI's handler threw: {ui.error}"
        assert ui.connected, "the UI's socket was closed"
    seen = early.reader.seen
    assert seen["testresult"] == 100
    for kind in ("connectionid", "masterconfiguration", "usersettings", "status", "yield",
                 "bintable", "lotdata"):
        assert seen.get(kind, 0) >= 1, f"no {kind} frame"
    assert sorted(early.reader.prr_per_site) == [0, 1, 2, 3]
    assert late.reader.seen.get("logs", 0) >= 1
    for ui in (early, late):
        ui.sendClose()
        await ui.closed


@pytest_twisted.ensureDeferred
async def test_a_healthy_lot_logs_no_warning(reactor, cellfactory, warnings_logged):
    # simulated TestApps answer getexecutionstrategy 50 ms after it, as real ones do:
    # the answers arrive while the first parts are testing
    c = cellfactory(test_time=0.01)
    assert c.sim_config.strategy_delay == 0.05
    await c.start_all()
    ui = await connect_ui(reactor, c.master_config.webui_port)
    await c.handler.command("load", {"lot_number": LOT}, expect="ready")
    await run_parts(c.handler, 30)
    await c.handler.command("unload", {}, expect="initialized")
    await c.handler.command("load", {"lot_number": LOT}, expect="ready")
    await run_parts(c.handler, 5, prefix="B")
    await c.handler.command("unload", {}, expect="initialized")
    assert c.cell.metrics.softerrors == 0
    assert ui.error is None
    ui.sendClose()
    await ui.closed
    assert warnings_logged == []
