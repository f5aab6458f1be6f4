"""The /ws feed with a real Autobahn client over a real port on 127.0.0.1.

Timers of the feed run on a ``Clock`` (advanced by hand); the sockets run on the reactor.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Clock

from ate.protocol import messages as m
from ate.web.feed import sanitize, strict_json
from ate.web.site import make_site

TIMEOUT = 10


class UIClient(WebSocketClientProtocol):
    """Collects every message; ``next_message()`` waits for the next one."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: defer.DeferredQueue = defer.DeferredQueue()
        self.raw: list[bytes] = []
        self.opened: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.raw.append(payload)
        self.queue.put(json.loads(payload))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.closed.called:
            self.closed.callback((wasClean, code, reason))

    def next_message(self) -> defer.Deferred:
        from twisted.internet import reactor

        return self.queue.get().addTimeout(TIMEOUT, reactor)

    @defer.inlineCallbacks
    def next_of(self, kind: str):
        """Skip messages until one of type ``kind`` arrives."""
        while True:
            msg = yield self.next_message()
            if msg["type"] == kind:
                return msg

    def command(self, command: str, **fields: Any) -> None:
        msg = {"type": "cmd", "command": command, "connectionid": "ignored", **fields}
        self.sendMessage(json.dumps(msg).encode())


class Server:
    def __init__(self, cell: Any, **kw: Any) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.clock = Clock()
        self.site = make_site(cell, self.clock, **kw)
        self.feed = self.site.feed
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.clients: list[UIClient] = []

    @defer.inlineCallbacks
    def connect(self):
        number = self.port.getHost().port
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{number}/ws")
        factory.protocol = UIClient
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", number)
        client = yield endpoint.connect(factory)
        self.clients.append(client)
        yield client.opened.addTimeout(TIMEOUT, self.reactor)
        return client

    @defer.inlineCallbacks
    def close(self):
        for client in self.clients:
            if client.transport is not None:
                client.transport.abortConnection()
        for client in self.clients:
            yield client.closed.addTimeout(TIMEOUT, self.reactor)
        self.feed.stop()
        yield self.port.stopListening()


@pytest.fixture
def server(cell):
    srv = Server(cell)
    yield srv
    pytest_twisted.blockon(srv.close())


@defer.inlineCallbacks
def round_trip(client: UIClient):
    """Ask the feed for its results and wait for the answer, which it sends at once (never
    coalesced): whatever the feed sent before that answer has arrived by then, in order.
    Returns the raw messages received from the call on, the answer last."""
    mark = len(client.raw)
    client.command("getresults")
    yield client.next_of("testresults")
    return client.raw[mark:]


# -- pure helpers --------------------------------------------------------------------------


def test_strict_json_replaces_non_finite():
    data = {"a": [float("nan"), float("inf"), float("-inf"), 1.5], "b": (2, {"c": float("nan")})}
    assert json.loads(strict_json(data)) == {"a": ["nan", "inf", "-inf", 1.5],
                                             "b": [2, {"c": "nan"}]}
    assert strict_json({"x": 1}) == b'{"x":1}'
    assert sanitize(float("nan")) == "nan"


# -- connection start ----------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_connect_sequence_without_lot(server, cell):
    client = yield server.connect()
    kinds = []
    for _ in range(4):
        msg = yield client.next_message()
        kinds.append(msg["type"])
        assert msg["payload"] is not None
        if msg["type"] == "connectionid":
            assert len(msg["payload"]["connectionid"]) == 36
        if msg["type"] == "masterconfiguration":
            assert msg["payload"]["device_id"] == "SCT-81-1F"
            assert msg["payload"]["sites"] == ["0", "1", "2", "3"]
            assert msg["payload"]["broker_port"] == 1883
        if msg["type"] == "status":
            st = msg["payload"]
            assert st["state"] == "initialized" and st["sites"] == ["0", "1", "2", "3"]
            assert st["env"] == "F1" and st["handler"] == "HTO92-20F"
            assert st["lot_number"] == "" and st["program"] == ""
            assert isinstance(st["systemTime"], str) and st["systemTime"]
    assert kinds == ["connectionid", "masterconfiguration", "usersettings", "status"]


@pytest_twisted.inlineCallbacks
def test_connect_sequence_with_lot(server, cell, fakes):
    cell.command(m.Load(lot_number=fakes.KNOWN_LOT), "handler")
    cell.command(m.Next(), "handler")
    client = yield server.connect()
    kinds = []
    msgs = {}
    for _ in range(8):
        msg = yield client.next_message()
        kinds.append(msg["type"])
        msgs[msg["type"]] = msg["payload"]
    assert kinds == ["connectionid", "masterconfiguration", "usersettings", "testresults",
                     "yield", "bintable", "lotdata", "status"]
    assert len(msgs["testresults"]) == 4
    assert msgs["lotdata"]["LOT_ID"] == fakes.KNOWN_LOT
    assert [c["siteId"] for c in msgs["bintable"][0]["siteCounts"]] == ["0", "1", "2", "3"]
    assert msgs["status"]["lot_number"] == fakes.KNOWN_LOT


# -- pushes --------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_status_on_state_change_and_every_second(server, cell):
    a = yield server.connect()
    b = yield server.connect()
    yield a.next_of("status")
    yield b.next_of("status")
    cell.set_state("softerror", "site 2: soft bin 99 is not in the job's bin table")
    for client in (a, b):
        msg = yield client.next_of("status")
        assert msg["payload"]["state"] == "softerror"
        assert "site 2" in msg["payload"]["error_message"]
    server.clock.advance(1.0)
    for client in (a, b):
        msg = yield client.next_of("status")
        assert msg["payload"]["state"] == "softerror"


@pytest_twisted.inlineCallbacks
def test_site_change_sends_status_at_the_tick(server, cell):
    client = yield server.connect()
    yield client.next_of("status")
    cell.set_site("1", "error", "terminated", "TestApp exited with code 1")
    server.clock.advance(0.1)
    msg = yield client.next_of("status")
    assert msg["payload"]["site_states"]["1"]["error_message"] == "TestApp exited with code 1"


@pytest_twisted.inlineCallbacks
def test_results_then_one_batch_per_part(server, cell, fakes):
    client = yield server.connect()
    yield client.next_of("status")
    cell.command(m.Load(lot_number=fakes.KNOWN_LOT), "handler")
    cell.command(m.Next(), "handler")
    kinds = []
    while True:
        msg = yield client.next_message()
        if msg["type"] in ("status", "usersettings", "lotdata"):
            continue
        kinds.append(msg["type"])
        if len(kinds) == 1 + 1 + 4 + 2:  # bintable, yield(lot), 4 x testresult, yield, bintable
            break
    assert kinds == ["bintable", "yield"] + ["testresult"] * 4 + ["yield", "bintable"]
    # nothing more at the next tick: the batch was sent with the part
    server.clock.advance(0.1)
    server.clock.advance(1.0)
    msg = yield client.next_message()
    while msg["type"] == "logs":
        msg = yield client.next_message()
    assert msg["type"] == "status"


@pytest_twisted.inlineCallbacks
def test_nan_becomes_string(server, cell):
    client = yield server.connect()
    yield client.next_of("status")
    cell.emit("testresult", [
        {"type": "PTR", "RESULT": float("nan"), "LO_LIMIT": float("-inf"),
         "HI_LIMIT": float("inf")}])
    msg = yield client.next_of("testresult")
    raw = client.raw[-1]
    assert b"NaN" not in raw and b"Infinity" not in raw
    rec = msg["payload"][0]
    assert (rec["RESULT"], rec["LO_LIMIT"], rec["HI_LIMIT"]) == ("nan", "-inf", "inf")


@pytest_twisted.inlineCallbacks
def test_logs_pushed_per_tick(server, cell):
    client = yield server.connect()
    yield client.next_of("status")
    cell.log.error("site {site} crashed", site="3")
    cell.log.warn("second")
    server.clock.advance(0.1)
    msg = yield client.next_of("logs")
    entries = msg["payload"]
    assert [e["description"] for e in entries[:2]] == ["second", "site 3 crashed"]
    assert all(isinstance(e["type"], str) and isinstance(e["source"], str) for e in entries)


# -- commands ------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_load_next_through_the_feed(server, cell, fakes):
    client = yield server.connect()
    yield client.next_of("status")
    client.command("load", lot_number=fakes.KNOWN_LOT)
    msg = yield client.next_of("status")
    while msg["payload"]["state"] != "ready":
        msg = yield client.next_of("status")
    assert cell.commands[-1] == (m.Load(lot_number=fakes.KNOWN_LOT), "ui")
    client.command("next")
    yield client.next_of("testresult")
    assert isinstance(cell.commands[-1][0], m.Next) and cell.commands[-1][0].sites is None


@pytest_twisted.inlineCallbacks
def test_replies_go_to_the_sender_only(server, cell, fakes):
    cell.command(m.Load(lot_number=fakes.KNOWN_LOT), "handler")
    cell.command(m.Next(), "handler")
    a = yield server.connect()
    b = yield server.connect()
    yield a.next_of("status")
    yield b.next_of("status")
    a.command("getresults")
    msg = yield a.next_message()
    assert msg["type"] == "testresults" and len(msg["payload"]) == 4
    a.command("getlogfile")
    msg = yield a.next_message()
    assert msg["type"] == "logfile" and msg["payload"]["filename"].endswith(".log")
    b.command("getlogs")
    msg = yield b.next_message()
    assert msg["type"] == "logs"  # b saw neither testresults nor logfile
    assert b.queue.pending == [] and a.queue.pending == []


@pytest_twisted.inlineCallbacks
def test_settings_loglevel_binmap(server, cell, fakes):
    client = yield server.connect()
    yield client.next_of("status")
    client.command("usersettings", payload=[{"name": "stop_on_fail", "active": True,
                                             "value": 3}])
    msg = yield client.next_of("usersettings")
    opt = next(o for o in msg["payload"]["testoptions"] if o["name"] == "stop_on_fail")
    assert opt["active"] is True and opt["value"] == 3
    client.command("setloglevel", level=20)
    msg = yield client.next_of("usersettings")
    assert msg["payload"]["loglevel"] == 20
    cell.command(m.Load(lot_number=fakes.KNOWN_LOT), "handler")
    client.command("binMap", sBin=12, hBin=7)
    msg = yield client.next_of("bintable")
    while next(r for r in msg["payload"] if r["sBin"] == 12)["hBin"] != 7:
        msg = yield client.next_of("bintable")


@pytest.mark.parametrize("command,fields,expected", [
    ("next", {}, "next refused"),
    ("setloglevel", {"level": 15}, "setloglevel refused"),
    ("usersettings", {"payload": [{"name": "bogus", "active": True}]}, "usersettings refused"),
    ("usersettings", {"payload": "x"}, "usersettings refused"),
    ("binMap", {"sBin": 1, "hBin": 2}, "binMap refused"),
    ("load", {}, "load refused: lot_number"),
    ("explode", {}, "explode refused: unknown command"),
])
@pytest_twisted.inlineCallbacks
def test_refusals_become_warning_logs(server, cell, command, fields, expected):
    client = yield server.connect()
    yield client.next_of("status")
    client.command(command, **fields)
    client.command("getlogs")  # any reply proves the command was handled
    yield client.next_of("logs")
    server.clock.advance(0.1)
    msg = yield client.next_of("logs")
    warnings = [e for e in msg["payload"] if e["type"] == "WARNING"]
    assert any(expected in e["description"] for e in warnings), msg["payload"]
    assert client.transport is not None and client.state == client.STATE_OPEN


@pytest_twisted.inlineCallbacks
def test_malformed_frames_keep_the_connection(server, cell, logbuffer):
    client = yield server.connect()
    yield client.next_of("status")
    client.sendMessage(b"this is not json")
    client.sendMessage(b"[1, 2, 3]")
    client.sendMessage(b"\xff\xfe\x00", isBinary=True)
    client.sendMessage(json.dumps({"type": "other", "command": "load"}).encode())
    client.command("getresults")
    msg = yield client.next_message()
    assert msg["type"] == "testresults"
    texts = [e["description"] for e in logbuffer.entries()]
    assert sum("not JSON" in t or "not a JSON object" in t for t in texts) == 3
    assert cell.commands == []


# -- slow clients --------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_slow_client_is_dropped_others_continue(cell, logbuffer):
    srv = Server(cell, max_buffer=64 * 1024)
    try:
        slow = yield srv.connect()
        fast = yield srv.connect()
        yield slow.next_of("status")
        yield fast.next_of("status")
        slow.transport.pauseProducing()  # the slow client stops reading its socket
        big = [{"type": "DTR", "TEXT_DAT": "x" * 512 * 1024}]
        for _ in range(400):
            cell.emit("testresult", big)
            yield fast.next_of("testresult")
            if srv.feed.dropped:
                break
        assert srv.feed.dropped == 1
        assert len(srv.feed.clients) == 1
        assert any("dropped" in e["description"] for e in logbuffer.entries())
        cell.set_state("ready")
        msg = yield fast.next_of("status")
        assert msg["payload"]["state"] == "ready"
        slow.transport.resumeProducing()
        yield slow.closed.addTimeout(TIMEOUT, srv.reactor)
    finally:
        yield srv.close()


# -- with the real Cell --------------------------------------------------------------------


@pytest.fixture
def harness(tmp_path):
    """The lead's cell harness (tests/unit/cellharness.py): a real Cell with fake peers."""
    import os
    import sys

    unit = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "unit")
    if unit not in sys.path:
        sys.path.insert(0, unit)
    cellharness = pytest.importorskip("cellharness", reason="tests/unit/cellharness.py missing")
    harness = cellharness.Harness(tmp_path)
    yield harness
    harness.cell.stop()  # as the master service does: the lot's datalog is closed


@pytest_twisted.inlineCallbacks
def test_real_cell_feed(harness):
    srv = Server(harness.cell)
    try:
        harness.to_initialized()
        client = yield srv.connect()
        msg = yield client.next_of("status")
        assert msg["payload"]["state"] == "initialized"
        client.command("load", lot_number="306426.001")
        msg = yield client.next_of("status")
        assert msg["payload"]["state"] == "loading"
        for s in harness.sites:
            harness.control(s, "loading")
            harness.control(s, "busy")
            harness.testapp(s, "idle")
        msg = yield client.next_of("status")
        while msg["payload"]["state"] != "ready":
            msg = yield client.next_of("status")
        assert msg["payload"]["program"]
        harness.run_part(bins={"1": (12, 5)})
        results = []
        while len(results) < 4:
            results.append((yield client.next_of("testresult")))
        msg = yield client.next_of("yield")
        total = {r["name"]: r["count"] for r in msg["payload"] if r["siteid"] == "-1"}
        assert total["sum"] == 4
        msg = yield client.next_of("bintable")
        row = next(r for r in msg["payload"] if r["sBin"] == 12)
        assert [c["count"] for c in row["siteCounts"]] == [0, 1, 0, 0]
        client.command("load", lot_number="306426.001")  # refused: a lot is loaded
        client.command("getresults")
        msg = yield client.next_of("testresults")
        assert len(msg["payload"]) == 4
    finally:
        yield srv.close()


@pytest_twisted.inlineCallbacks
def test_coalesced_broadcasts_arrive_in_order_as_one_write(cell):
    srv = Server(cell, coalesce=True)
    try:
        client = yield srv.connect()
        yield client.next_of("status")  # the end of the connection start
        yield round_trip(client)
        for i in range(5):
            srv.feed.broadcast("testresult", {"n": i})
        got = yield round_trip(client)
        assert [json.loads(raw)["type"] for raw in got] == ["testresults"]  # held back
        srv.clock.advance(srv.feed.flush_delay)
        got = []
        while len(got) < 5:
            msg = yield client.next_of("testresult")
            got.append(msg["payload"]["n"])
        assert got == [0, 1, 2, 3, 4]
    finally:
        yield srv.close()


@pytest_twisted.inlineCallbacks
def test_coalesced_status_and_batches_once_per_flush(cell):
    srv = Server(cell, coalesce=True)
    try:
        client = yield srv.connect()
        yield client.next_of("status")
        yield round_trip(client)
        for _ in range(3):
            srv.feed._cell_event("status", None)
            srv.feed._cell_event("sites", None)
            srv.feed._cell_event("part", 0.01)
        got = yield round_trip(client)
        assert [json.loads(raw)["type"] for raw in got] == ["testresults"]  # held back
        srv.clock.advance(srv.feed.flush_delay)
        got = yield round_trip(client)
        # three status changes, one message (no lot), in the same write before the answer
        assert [json.loads(raw)["type"] for raw in got] == ["status", "testresults"]
    finally:
        yield srv.close()
