"""/api/v1/alarms, the release route and /api/v1/production against the fake cell
(the real cell's alarms are tested in tests/unit/test_cell_alarms.py)."""

from __future__ import annotations

import pytest

from tests.web.test_api import Client


@pytest.fixture
def client(cell):
    return Client(cell)

ALARM = {"id": 1, "name": "cf", "kind": "consecutive_fails", "action": "hold", "site": "0",
         "sbin": None, "message": "site 0 failed 5 parts in a row", "lot_number": "L1",
         "parts": 9, "time": 1.0, "state": "raised", "released_by": "", "comment": ""}


def test_alarms_list_and_release(client, cell):
    cell.alarms.rows.append(dict(ALARM))
    code, body = client.json("GET", "/api/v1/alarms")
    assert code == 200 and body["alarms"][0]["name"] == "cf" and body["held"] is None
    code, body = client.json("POST", "/api/v1/alarms/1/release",
                             {"operator": "ana", "comment": "probe card cleaned"})
    assert code == 200 and body["state"] == "released" and body["released_by"] == "ana"
    assert cell.released == [(1, "ana", "probe card cleaned")]


def test_release_errors_name_the_problem(client, cell):
    code, body = client.json("POST", "/api/v1/alarms/7/release", {"operator": "a", "comment": "b"})
    assert code == 404 and "alarm 7" in body["message"]
    code, body = client.json("POST", "/api/v1/alarms/x/release", {"operator": "a", "comment": "b"})
    assert code == 404 and "positive integers" in body["message"]
    code, body = client.json("POST", "/api/v1/alarms/1/release", [1])
    assert code == 400 and "JSON object" in body["message"]
    assert cell.released == []


def test_release_needs_the_token_off_loopback(logbuffer, fakes):
    cell = fakes.FakeCell(fakes.make_config(webui_host="0.0.0.0", webui_token="s3cret"),
                          logs=logbuffer)
    cell.alarms.rows.append(dict(ALARM))
    c = Client(cell)
    assert c.json("GET", "/api/v1/alarms")[0] == 200  # reading needs no token
    code, body = c.json("POST", "/api/v1/alarms/1/release", {"operator": "a", "comment": "b"})
    assert code == 401 and cell.released == []
    code, _ = c.json("POST", "/api/v1/alarms/1/release", {"operator": "a", "comment": "b"},
                     headers={"Authorization": "Bearer s3cret"})
    assert code == 200 and cell.released == [(1, "a", "b")]


def test_production_figures(client, cell):
    code, body = client.json("GET", "/api/v1/production")
    assert code == 200
    assert set(body) == {"since_start", "lot", "e10_state", "e10_timeline", "recent_cycles",
                         "now"}
    assert body["lot"] is None and body["since_start"]["parts"] == 0
