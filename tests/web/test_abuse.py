"""Hostile input on the web side (issue 11, items 4-6): deep JSON, oversized websocket
messages, results too large to send whole, and the token kept out of every log."""

from __future__ import annotations

import json
import struct

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from ate.protocol import messages as m
from ate.protocol.messages import MAX_JSON_DEPTH
from ate.web.feed import MAX_UI_MESSAGE, encode_results
from ate.web.site import access_log_line, make_site, redact_uri
from tests.web.test_api import Client
from tests.web.test_feed import TIMEOUT, Server

KNOWN_LOT = "306426.001"
TOKEN = "tok-3f9a1c77e2"


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.fixture
def events():
    """Every event logged through the global publisher during the test."""
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(seen.append)


def failures(events) -> list[str]:
    return [formatEvent(e) for e in events
            if e.get("log_failure") is not None or e.get("log_level") == LogLevel.critical]


# -- deep JSON (item 5) --------------------------------------------------------------------


@pytest.mark.parametrize("levels", [1000, 5000])
def test_http_body_nested_beyond_the_recursion_limit_is_400(client_factory, events, levels):
    client, cell = client_factory()
    code, body = client.json("POST", "/api/v1/commands/load", raw=deep(levels).encode())
    assert code == 400 and body["error"] == "bad-json"
    assert "nested deeper than 64 levels" in body["message"]
    assert failures(events) == []
    assert cell.commands == []


def test_http_body_nested_below_the_recursion_limit_is_400_too(client_factory, events):
    client, cell = client_factory()
    client.json("POST", "/api/v1/commands/load", {"lot_number": KNOWN_LOT})
    info = json.loads(deep(MAX_JSON_DEPTH))                 # 64 + 3 levels with the body
    code, body = client.json("POST", "/api/v1/commands/next",
                             {"sites": [{"siteid": "0", "additionalinfo": info}]})
    assert code == 400 and body["error"] == "bad-json"
    assert isinstance(cell.commands[-1][0], m.Load)   # the next never reached the cell
    ok = json.loads(deep(MAX_JSON_DEPTH - 3))
    code, body = client.json("POST", "/api/v1/commands/next",
                             {"sites": [{"siteid": "0", "additionalinfo": ok}]})
    assert code == 202
    assert failures(events) == []


@pytest_twisted.inlineCallbacks
def test_websocket_frame_nested_deep_is_a_warning_and_the_connection_stays(cell, logbuffer,
                                                                          events):
    srv = Server(cell)
    try:
        client = yield srv.connect()
        yield client.next_of("status")
        client.sendMessage(deep(1000).encode())
        client.sendMessage(json.dumps({"type": "cmd", "command": "usersettings",
                                       "payload": json.loads(deep(100))}).encode())
        client.command("getresults")
        msg = yield client.next_of("testresults")
        assert msg["payload"] == []
        texts = [e["description"] for e in logbuffer.entries() if e["type"] == "WARNING"]
        assert sum("nested deeper than 64 levels" in t for t in texts) == 2, texts
        assert failures(events) == []
        assert client.state == client.STATE_OPEN
    finally:
        yield srv.close()


# -- websocket message size (item 4) -----------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_websocket_frame_announcing_1_gib_fails_at_its_header(cell, logbuffer):
    srv = Server(cell)
    try:
        client = yield srv.connect()
        yield client.next_of("status")
        # a masked text frame header announcing 1 GiB, then a little of it: the server must
        # not wait for (and buffer) the rest
        client.transport.write(b"\x81\xff" + struct.pack("!Q", 1 << 30) + b"mask" + b"x" * 4096)
        yield client.closed.addTimeout(TIMEOUT, srv.reactor)   # dropped at once
        assert srv.feed.refused == 1
        assert srv.feed.clients == []
        assert any("larger than 65536 bytes" in e["description"] for e in logbuffer.entries())
    finally:
        yield srv.close()


@pytest_twisted.inlineCallbacks
def test_websocket_message_in_many_small_fragments_is_capped_too(cell):
    srv = Server(cell)
    try:
        client = yield srv.connect()
        yield client.next_of("status")
        client.sendMessage(b"y" * (MAX_UI_MESSAGE + 1), fragmentSize=1024)
        yield client.closed.addTimeout(TIMEOUT, srv.reactor)
        assert srv.feed.refused == 1
    finally:
        yield srv.close()


@pytest_twisted.inlineCallbacks
def test_replies_larger_than_the_incoming_limit_are_still_sent(cell, fakes):
    srv = Server(cell)
    try:
        cell.command(m.Load(KNOWN_LOT))
        big = [{"type": "DTR", "TEXT_DAT": "d" * (3 * MAX_UI_MESSAGE)}]
        cell.lot.results.append(big)
        client = yield srv.connect()
        msg = yield client.next_of("testresults")
        assert msg["payload"] == [big]
        client.command("getresults")
        msg = yield client.next_of("testresults")
        assert msg["payload"] == [big]
        assert client.state == client.STATE_OPEN
    finally:
        yield srv.close()


# -- results too large to send whole (item 4) --------------------------------------------


def test_encode_results_keeps_the_newest_that_fit():
    results = [[{"type": "PRR", "PART_ID": str(i), "PART_TXT": "t" * 100}] for i in range(50)]
    one = len(json.dumps(results[-1], separators=(",", ":")))
    array, omitted = encode_results(results, 2 + 10 * (one + 1))
    kept = json.loads(array)
    assert [r[0]["PART_ID"] for r in kept] == [str(i) for i in range(40, 50)]
    assert omitted == 40
    array, omitted = encode_results(results, 1)          # the newest always goes
    assert json.loads(array) == [results[-1]] and omitted == 49
    assert encode_results([], 10) == (b"[]", 0)
    array, omitted = encode_results([[{"RESULT": float("nan")}]], 1000)
    assert json.loads(array) == [[{"RESULT": "nan"}]] and omitted == 0


@pytest_twisted.inlineCallbacks
def test_testresults_reply_is_bounded_by_bytes(cell, logbuffer):
    srv = Server(cell)
    try:
        cell.command(m.Load(KNOWN_LOT))
        for i in range(30):
            cell.lot.results.append([{"type": "DTR", "TEXT_DAT": f"{i:03d}" + "r" * 100_000}])
        srv.feed.max_results_bytes = 1_000_000
        client = yield srv.connect()
        msg = yield client.next_of("testresults")
        assert [r[0]["TEXT_DAT"][:3] for r in msg["payload"]] == [f"{i:03d}" for i in range(21, 30)]
        assert len(client.raw[-1]) <= 1_000_100
        assert any("the newest 9 of 30 results" in e["description"]
                   for e in logbuffer.entries(newest_first=True))
    finally:
        yield srv.close()


def test_api_results_are_bounded_by_bytes(client_factory, monkeypatch):
    from ate.web import api

    client, cell = client_factory()
    cell.command(m.Load(KNOWN_LOT))
    for i in range(30):
        cell.lot.results.append([{"type": "DTR", "TEXT_DAT": f"{i:03d}" + "r" * 100_000}])
    monkeypatch.setattr(api, "MAX_RESULTS_BYTES", 1_000_000)
    code, headers, raw = client.request("GET", "/api/v1/results")
    assert code == 200 and len(raw) <= 1_000_100
    body = json.loads(raw)
    assert body["omitted"] == 21 and len(body["results"]) == 9
    assert body["results"][-1][0]["TEXT_DAT"].startswith("029")


# -- the token (item 6) ------------------------------------------------------------------


@pytest.fixture
def client_factory(logbuffer, fakes):
    def make(**config):
        cell = fakes.FakeCell(fakes.make_config(**config), logs=logbuffer)
        return Client(cell), cell

    return make


def test_query_token_is_accepted_only_for_the_websocket_upgrade(client_factory):
    client, cell = client_factory(webui_host="0.0.0.0", webui_token=TOKEN)
    code, body = client.json("POST", f"/api/v1/commands/reset?token={TOKEN}")
    assert code == 401 and cell.commands == []
    code, body = client.json("POST", "/api/v1/commands/reset",
                             headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 202
    assert client.request("GET", "/ws")[0] == 401
    assert client.request("GET", f"/ws?token={TOKEN}")[0] != 401   # past the access check


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
@pytest.mark.parametrize("path", ["/api/v1/logs", "/api/v1/logs/file", "/api/v1/logs?limit=3"])
def test_log_routes_need_a_configured_token_on_any_address(client_factory, host, path):
    client, cell = client_factory(webui_host=host, webui_token=TOKEN)
    code, body = client.json("GET", path)
    assert code == 401 and body["error"] == "unauthorized"
    sep = "&" if "?" in path else "?"
    assert client.json("GET", f"{path}{sep}token={TOKEN}")[0] == 401
    code, body = client.json("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 200
    assert client.json("GET", "/api/v1/status")[0] == 200   # other reads stay open


def test_log_routes_open_on_loopback_without_a_token(client_factory):
    client, cell = client_factory()
    assert client.json("GET", "/api/v1/logs")[0] == 200
    assert client.json("GET", "/api/v1/logs/file")[0] == 200


def test_redact_uri():
    assert redact_uri(b"/api/v1/status") == b"/api/v1/status"
    assert redact_uri(b"/ws?token=abc&x=1") == b"/ws?<redacted>"
    assert redact_uri(b"/?") == b"/?<redacted>"


def test_access_log_line_has_no_query_and_no_referer_query(fakes):
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b"ws"])
    request.uri = f"/ws?token={TOKEN}".encode()
    request.method = b"GET"
    request.clientproto = b"HTTP/1.1"
    request.code = 101
    request.sentLength = 0
    request.requestHeaders.setRawHeaders(b"referer", [f"http://h/?token={TOKEN}".encode()])
    request.requestHeaders.setRawHeaders(b"user-agent", [b"probe"])
    line = access_log_line("[01/Jan/2026:00:00:00 +0000]", request)
    assert TOKEN not in line
    assert '"GET /ws?<redacted> HTTP/1.1" 101' in line
    assert '"http://h/?<redacted>" "probe"' in line


@defer.inlineCallbacks
def _ws_connect(reactor, port: int, path: str):
    from autobahn.twisted.websocket import WebSocketClientFactory
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from tests.web.test_feed import UIClient

    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}{path}")
    factory.protocol = UIClient
    client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    yield client.opened.addTimeout(TIMEOUT, reactor)
    return client


@pytest_twisted.inlineCallbacks
def test_token_never_reaches_a_log_or_a_response(logbuffer, fakes, events, tmp_path):
    """Over a real socket (the access log is written by the listening Site): requests with
    the token in the query and in the header, then every log and log route is searched."""
    from twisted.internet import reactor

    from ate.master.logs import LogFileWriter

    writer = LogFileWriter(str(tmp_path), level=10)
    globalLogPublisher.addObserver(writer)
    logbuffer.log_directory = str(tmp_path)
    cell = fakes.FakeCell(fakes.make_config(webui_host="127.0.0.1", webui_token=TOKEN),
                          logs=logbuffer)
    site = make_site(cell, reactor, start=False)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bodies: list[bytes] = []
    try:
        for method, path, headers in [
            ("GET", f"/api/v1/status?token={TOKEN}", {}),
            ("POST", f"/api/v1/commands/reset?token={TOKEN}", {}),
            ("GET", f"/api/v1/logs?token={TOKEN}", {}),
            ("GET", f"/nonexistent?token={TOKEN}", {"Referer": f"{base}/?token={TOKEN}"}),
            ("PUT", "/api/v1/logs/level", auth),
            ("GET", "/api/v1/status", auth),
            ("GET", "/metrics", auth),
            ("GET", "/api/v1/openapi.json", {}),
        ]:
            resp = yield treq.request(method, base + path, headers=headers, data=b"{}")
            bodies.append((yield treq.content(resp)))
        ws = yield _ws_connect(reactor, port.getHost().port, f"/ws?token={TOKEN}")
        ws.command("getlogs")
        yield ws.next_of("logs")
        ws.command("getlogfile")
        yield ws.next_of("logfile")
        ws.transport.loseConnection()
        yield ws.closed.addTimeout(TIMEOUT, reactor)
        bodies.extend(ws.raw)
        for path in ("/api/v1/logs", "/api/v1/logs/file"):
            resp = yield treq.get(base + path, headers=auth)
            assert resp.code == 200
            bodies.append((yield treq.content(resp)))
    finally:
        yield port.stopListening()
        globalLogPublisher.removeObserver(writer)
        writer.close()
    texts = [formatEvent(e) for e in events]
    assert any("/api/v1/status?<redacted>" in t for t in texts), "no access log line seen"
    assert not [t for t in texts if TOKEN in t]
    assert not [e for e in logbuffer.entries() if TOKEN in json.dumps(e)]
    with open(writer.path, encoding="utf-8") as f:
        file_text = f.read()
    assert "?<redacted>" in file_text and TOKEN not in file_text
    assert not [b for b in bodies if TOKEN.encode() in b]
