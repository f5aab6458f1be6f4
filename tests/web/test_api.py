"""The /api/v1 JSON API, /metrics, static routes and the access rule, through StubTreq."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
import treq
from treq.testing import StubTreq
from twisted.internet.task import Clock

from ate.web.api import Api
from ate.web.site import check_access_config, is_loopback, make_site, web_service

BASE = "http://127.0.0.1:8081"
KNOWN_LOT = "306426.001"


def _result(d: Any, stub: Any = None) -> Any:
    out: list = []
    d.addBoth(out.append)
    for _ in range(100):
        if out or stub is None:
            break
        stub.flush()
    assert out, "request did not complete"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class Client:
    def __init__(self, cell: Any, **site_kwargs: Any) -> None:
        self.site = make_site(cell, Clock(), start=False, **site_kwargs)
        self.stub = StubTreq(self.site.resource)

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict | None = None) -> tuple[int, Any, bytes]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        d = self.stub.request(method, BASE + path, data=data, headers=headers or {})
        resp = _result(d, self.stub)
        content = _result(treq.content(resp), self.stub)
        return resp.code, resp.headers, content

    def json(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        code, headers, content = self.request(method, path, body, **kw)
        ctype = headers.getRawHeaders("content-type")[0]
        assert ctype.startswith("application/json"), (path, ctype, content[:200])
        return code, json.loads(content)


@pytest.fixture
def client(cell):
    return Client(cell)


# -- read-only routes ----------------------------------------------------------------------


def test_status(client, cell):
    code, body = client.json("GET", "/api/v1/status")
    assert code == 200
    assert body["state"] == "initialized"
    assert body["sites"] == ["0", "1", "2", "3"]
    assert body["device_id"] == "SCT-81-1F"


def test_lot_without_lot_is_404(client):
    code, body = client.json("GET", "/api/v1/lot")
    assert code == 404
    assert body["error"] == "notlot"


def test_lot_after_parts(client, cell):
    assert client.json("POST", "/api/v1/commands/load", {"lot_number": KNOWN_LOT})[0] == 202
    cell.next_bins = {"1": 12}
    assert client.json("POST", "/api/v1/commands/next")[0] == 202
    code, body = client.json("GET", "/api/v1/lot")
    assert code == 200
    assert body["lot_number"] == KNOWN_LOT
    assert body["parts_tested"] == 4
    assert body["job"]["testapp_script_path"] == "hallsens2_ft1.py"
    assert body["job"]["bins"][1]["sbin"] == 12
    total = {y["name"]: y["count"] for y in body["yields"] if y["siteid"] == "-1"}
    assert total["BT_PASS"] == 3 and total["BT_FAIL_CONT"] == 1 and total["sum"] == 4
    cont = next(r for r in body["bintable"] if r["sBin"] == 12)
    assert [c["count"] for c in cont["siteCounts"]] == [0, 1, 0, 0]
    assert body["lotdata"]["LOT_ID"] == KNOWN_LOT


def test_results_last_and_strict_json(client, cell):
    client.json("POST", "/api/v1/commands/load", {"lot_number": KNOWN_LOT})
    cell.next_result = float("nan")
    client.json("POST", "/api/v1/commands/next")
    cell.next_result = float("-inf")
    client.json("POST", "/api/v1/commands/next")
    code, headers, raw = client.request("GET", "/api/v1/results?last=2")
    assert code == 200
    assert b"NaN" not in raw and b"Infinity" not in raw
    body = json.loads(raw)
    assert len(body["results"]) == 2
    assert body["results"][-1][1]["RESULT"] == "-inf"
    code, body = client.json("GET", "/api/v1/results")
    assert len(body["results"]) == 8
    assert body["results"][0][1]["RESULT"] == "nan"


@pytest.mark.parametrize("last", ["0", "abc", "-1", "1001"])
def test_results_bad_last(client, last):
    code, body = client.json("GET", f"/api/v1/results?last={last}")
    assert code == 400
    assert body["error"] == "bad-request" and "last" in body["message"]


def test_results_without_lot_is_empty(client):
    assert client.json("GET", "/api/v1/results") == (200, {"results": [], "omitted": 0})


def test_settings_get_and_put(client, cell):
    code, body = client.json("GET", "/api/v1/settings")
    assert code == 200
    assert len(body["testoptions"]) == 6 and body["loglevel"] == 30
    new = [{"name": "stop_on_fail", "active": True, "value": 0}]
    code, body = client.json("PUT", "/api/v1/settings", {"testoptions": new})
    assert code == 200
    opt = next(o for o in body["testoptions"] if o["name"] == "stop_on_fail")
    assert opt == {"name": "stop_on_fail", "active": True, "value": 0}


def test_settings_invalid_is_400_naming_the_problem(client, cell):
    code, body = client.json("PUT", "/api/v1/settings",
                             {"testoptions": [{"name": "bogus", "active": True}]})
    assert code == 400
    assert body["error"] == "invalid" and "bogus" in body["message"]
    code, body = client.json("PUT", "/api/v1/settings", {"testoptions": "x"})
    assert code == 400 and body["error"] == "bad-request"


def test_settings_in_wrong_state_is_409(client, cell):
    cell.state = "testing"
    code, body = client.json("PUT", "/api/v1/settings", {"testoptions": []})
    assert code == 409
    assert body["error"] == "busy" and "testing" in body["message"]


def test_logs_and_logfile(client, cell):
    cell.log.warn("something odd on site {site}", site="2")
    code, body = client.json("GET", "/api/v1/logs?limit=5")
    assert code == 200
    assert body["logs"][0]["type"] == "WARNING"
    assert "site 2" in body["logs"][0]["description"]
    assert client.json("GET", "/api/v1/logs?limit=x")[0] == 400
    code, body = client.json("GET", "/api/v1/logs/file")
    assert code == 200
    assert body["filename"].endswith("_master.log")
    assert "something odd" in body["content"]


def test_loglevel(client, cell):
    code, body = client.json("PUT", "/api/v1/logs/level", {"level": 10})
    assert code == 200 and cell.loglevel == 10 and cell.logs.level == 10
    code, body = client.json("PUT", "/api/v1/logs/level", {"level": 15})
    assert code == 400 and "15" in body["message"]
    code, body = client.json("PUT", "/api/v1/logs/level", {})
    assert code == 400 and "level" in body["message"]


# -- commands ------------------------------------------------------------------------------


def test_load_next_unload_reset(client, cell):
    code, body = client.json("POST", "/api/v1/commands/load", {"lot_number": KNOWN_LOT})
    assert code == 202 and body == {"accepted": True, "command": "load", "state": "ready"}
    assert cell.commands[-1][1] == "api"
    code, body = client.json("POST", "/api/v1/commands/next",
                             {"sites": [{"siteid": "1", "partid": "P7"}, {"siteid": "3"}]})
    assert code == 202
    sites = cell.commands[-1][0].sites
    assert [s.siteid for s in sites] == ["1", "3"] and sites[0].partid == "P7"
    assert client.json("POST", "/api/v1/commands/unload")[0] == 202
    assert cell.state == "initialized"
    assert client.json("POST", "/api/v1/commands/reset")[0] == 202


@pytest.mark.parametrize("setup,path,body,status,error", [
    ("ready", "/api/v1/commands/load", {"lot_number": KNOWN_LOT}, 409, "havelot"),
    ("testing", "/api/v1/commands/load", {"lot_number": KNOWN_LOT}, 409, "busy"),
    ("initialized", "/api/v1/commands/load", {"lot_number": "999999.001"}, 400, "error"),
    ("softerror", "/api/v1/commands/load", {"lot_number": KNOWN_LOT}, 409, "error"),
    ("initialized", "/api/v1/commands/next", None, 409, "notlot"),
    ("initialized", "/api/v1/commands/unload", None, 409, "notlot"),
    ("ready", "/api/v1/commands/reset", None, 409, "havelot"),
    ("unloading", "/api/v1/commands/reset", None, 409, "busy"),
])
def test_refusals(client, cell, setup, path, body, status, error):
    if setup == "ready":
        client.json("POST", "/api/v1/commands/load", {"lot_number": KNOWN_LOT})
    else:
        cell.state = setup
    code, reply = client.json("POST", path, body)
    assert (code, reply["error"]) == (status, error)
    assert reply["message"]


def test_next_bad_site_is_400(client, cell):
    client.json("POST", "/api/v1/commands/load", {"lot_number": KNOWN_LOT})
    code, body = client.json("POST", "/api/v1/commands/next", {"sites": [{"siteid": "9"}]})
    assert code == 400 and "9" in body["message"]
    code, body = client.json("POST", "/api/v1/commands/next", {"sites": [{"partid": "x"}]})
    assert code == 400 and "siteid" in body["message"]
    code, body = client.json("POST", "/api/v1/commands/next", {"sites": "all"})
    assert code == 400


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"x"'])
def test_malformed_body_is_400(client, raw):
    code, body = client.json("POST", "/api/v1/commands/load", raw=raw)
    assert code == 400
    assert body["error"] in ("bad-json", "bad-request")


def test_load_missing_lot_number(client, cell):
    code, body = client.json("POST", "/api/v1/commands/load", {"lot": "x"})
    assert code == 400 and "lot_number" in body["message"]
    assert cell.commands == []


def test_unknown_route_and_method(client):
    code, body = client.json("GET", "/api/v1/nothing")
    assert code == 404 and body["error"] == "not-found"
    code, body = client.json("DELETE", "/api/v1/status")
    assert code == 405 and body["error"] == "method-not-allowed"
    code, body = client.json("GET", "/api/v2/status")
    assert code == 404


# -- OpenAPI -------------------------------------------------------------------------------


def _klein_routes() -> set[tuple[str, str]]:
    out = set()
    for rule in Api.app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            out.add((path, method.lower()))
    return out


def test_openapi_served_and_matches_routes(client):
    code, doc = client.json("GET", "/api/v1/openapi.json")
    assert code == 200
    assert doc["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops
                  if method in ("get", "put", "post", "delete", "patch")}
    assert documented == _klein_routes()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("responses"), f"{method} {path} has no responses"


# -- /metrics ------------------------------------------------------------------------------


def test_metrics(client, cell):
    client.json("POST", "/api/v1/commands/load", {"lot_number": KNOWN_LOT})
    cell.next_bins = {"0": 12}
    client.json("POST", "/api/v1/commands/next")
    cell.metrics.protocol_errors["not-json"] = 2
    code, headers, raw = client.request("GET", "/metrics")
    assert code == 200
    assert headers.getRawHeaders("content-type")[0].startswith("text/plain; version=0.0.4")
    text = raw.decode()
    assert "ate_parts_total 4\n" in text
    assert "ate_cycles_total 1\n" in text
    assert 'ate_protocol_errors_total{kind="not-json"} 2\n' in text
    assert 'ate_yield_parts{site="-1",group="BT_PASS"} 3\n' in text
    assert ('ate_bin_parts{site="0",sbin="12",hbin="5",name="SB_CONT_OPEN",'
            'group="BT_FAIL_CONT"} 1') in text
    assert 'ate_cycle_seconds_bucket{le="0.25"} 1\n' in text
    assert 'ate_cycle_seconds_bucket{le="0.1"} 0\n' in text
    assert "ate_cycle_seconds_count 1\n" in text
    assert 'ate_master_state{state="ready"} 1\n' in text
    # every sample line is "name{labels} value" and every family has HELP and TYPE
    families = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
        elif not line.startswith("#"):
            assert re.fullmatch(r'[a-z_][a-z0-9_]*(\{[^}]*\})? [-+0-9.eInfa]+', line), line
    assert {"ate_softerrors_total", "ate_mqtt_disconnects_total",
            "ate_commands_refused_total", "ate_cycle_seconds", "ate_alarms_total",
            "ate_lot_held", "ate_uph", "ate_index_seconds", "ate_test_seconds",
            "ate_site_slots_offered_total", "ate_site_slots_tested_total",
            "ate_e10_seconds_total"} <= families
    assert "ate_lot_held 0\n" in text
    # each family once: the production lines add no name the cell's lines already have
    assert len([ln for ln in text.splitlines() if ln.startswith("# TYPE ")]) == len(families)


# -- static UI -----------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/", "/information", "/control", "/records", "/logging",
                                   "/bin"])
def test_ui_routes_serve_index(client, route):
    code, headers, raw = client.request("GET", route)
    assert code == 200
    assert headers.getRawHeaders("content-type")[0].startswith("text/html")
    assert b"<html" in raw.lower()


def test_static_js_type_and_404(client):
    code, headers, _ = client.request("GET", "/app.js")
    assert code == 200
    assert headers.getRawHeaders("content-type")[0].startswith("text/javascript")
    assert client.request("GET", "/nope.js")[0] == 404
    assert client.request("GET", "/information/x")[0] == 404


def test_missing_index_explains(tmp_path, cell):
    c = Client(cell, root=str(tmp_path))
    code, _, raw = c.request("GET", "/")
    assert code == 200 and b"webui_root_path" in raw


# -- access --------------------------------------------------------------------------------


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert not is_loopback("tester.example")


def test_check_access_config(fakes):
    make_config = fakes.make_config
    check_access_config(make_config(webui_host="127.0.0.1"))
    check_access_config(make_config(webui_host="0.0.0.0", webui_token="s3cret"))
    with pytest.raises(ValueError, match="webui_token"):
        check_access_config(make_config(webui_host="0.0.0.0"))


def test_token_required_off_loopback(logbuffer, fakes):
    cell = fakes.FakeCell(fakes.make_config(webui_host="0.0.0.0", webui_token="s3cret"),
                          logs=logbuffer)
    c = Client(cell)
    assert c.json("GET", "/api/v1/status")[0] == 200
    assert c.request("GET", "/metrics")[0] == 200
    code, body = c.json("POST", "/api/v1/commands/reset")
    assert code == 401 and body["error"] == "unauthorized"
    code, body = c.json("POST", "/api/v1/commands/reset",
                        headers={"Authorization": "Bearer wrong"})
    assert code == 401
    assert cell.commands == []
    code, body = c.json("POST", "/api/v1/commands/reset",
                        headers={"Authorization": "Bearer s3cret"})
    assert code == 202
    # ?token= is for the websocket upgrade only (a browser cannot send a header there)
    code, body = c.json("POST", "/api/v1/commands/reset?token=s3cret")
    assert code == 401 and "?token" not in body["message"]
    # the websocket upgrade needs the token too
    code, _, content = c.request("GET", "/ws")
    assert code == 401 and b"?token=" in content
    assert c.request("GET", "/ws?token=wrong")[0] == 401


def test_no_token_on_loopback(client, cell):
    assert client.json("POST", "/api/v1/commands/reset")[0] == 202


def test_web_service_listens_on_configured_address(cell, fakes):
    make_config = fakes.make_config
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    cfg = make_config(webui_host="127.0.0.1", webui_port=18081)
    svc = web_service(cell, reactor, cfg)
    svc.startService()
    try:
        port, factory, backlog, interface = reactor.tcpServers[0]
        assert (port, interface) == (18081, "127.0.0.1")
        assert svc.site.feed._status_loop.running
    finally:
        svc.stopService()
    assert not svc.site.feed._status_loop.running
    with pytest.raises(ValueError):
        web_service(cell, reactor, make_config(webui_host="0.0.0.0"))


# -- with the real Cell --------------------------------------------------------------------


@pytest.fixture
def harness(tmp_path):
    """The lead's cell harness (tests/unit/cellharness.py): a real Cell with fake peers."""
    import sys

    unit = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "unit")
    if unit not in sys.path:
        sys.path.insert(0, unit)
    cellharness = pytest.importorskip("cellharness", reason="tests/unit/cellharness.py missing")
    harness = cellharness.Harness(tmp_path)
    yield harness
    harness.cell.stop()  # as the master service does: the lot's datalog is closed


def test_real_cell_through_the_api(harness):
    cell = harness.cell
    client = Client(cell, root=None)
    harness.to_initialized()
    code, body = client.json("GET", "/api/v1/status")
    assert code == 200 and body["state"] == "initialized"
    code, body = client.json("POST", "/api/v1/commands/next")
    assert (code, body["error"]) == (409, "notlot")
    code, body = client.json("POST", "/api/v1/commands/load", {"lot_number": "123456.001"})
    assert (code, body["error"]) == (400, "error") and body["message"]
    code, body = client.json("POST", "/api/v1/commands/load", {"lot_number": KNOWN_LOT})
    assert code == 202 and body["state"] == "loading"
    for s in harness.sites:
        harness.control(s, "loading")
        harness.control(s, "busy")
        harness.testapp(s, "idle")
    assert client.json("GET", "/api/v1/status")[1]["state"] == "ready"
    code, body = client.json("POST", "/api/v1/commands/load", {"lot_number": KNOWN_LOT})
    assert (code, body["error"]) == (409, "havelot")
    harness.run_part()
    code, body = client.json("GET", "/api/v1/lot")
    assert code == 200 and body["parts_tested"] == 4
    assert [c["siteId"] for c in body["bintable"][0]["siteCounts"]] == list(harness.sites)
    code, body = client.json("GET", "/api/v1/results?last=2")
    assert len(body["results"]) == 2
    code, headers, raw = client.request("GET", "/metrics")
    text = raw.decode()
    assert "ate_parts_total 4\n" in text and "ate_cycles_total 1\n" in text
    assert "ate_cycle_seconds_count 1\n" in text
    assert "ate_commands_refused_total 3\n" in text
