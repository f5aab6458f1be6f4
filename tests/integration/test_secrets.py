"""The web token and the MQTT password never reach a log, the log file or an API response
(issue 11, item 6).

A whole master (``build_master`` with its log buffer and log file) against a private
mosquitto that checks passwords, at debug level: the token is sent in queries, headers and
a Referer, a second client is refused for a wrong password, the broker restarts, and then
every log event, the buffer, the log file and every HTTP and websocket answer are searched.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from ate.broker import Mosquitto, free_port
from ate.config import master_config_from_dict
from ate.mqtt.service import MqttService
from ate.tap import build_master

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "jobs", "le306426001.xml")
TOKEN = "webtok-Q7x2Lm9Rv4"
PASSWORD = "mqttpw-Zk31Pp0sW8"
WRONG = "mqttpw-wrong-Jb77Hq"
TIMEOUT = 15


def _event_text(event: dict) -> str:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    return text


def _wait_for(events: list, needle: str, reactor, count: int = 1,
              timeout: float = TIMEOUT) -> defer.Deferred:
    """Fires once ``count`` events whose text contains ``needle`` have been logged
    (``events`` is the list an earlier observer appends every event to)."""
    d: defer.Deferred = defer.Deferred()
    seen = [sum(needle in _event_text(e) for e in events)]

    def check(event: dict) -> None:
        if needle in _event_text(event):
            seen[0] += 1
        if seen[0] >= count and not d.called:
            d.callback(None)

    if seen[0] >= count:
        d.callback(None)
        return d
    globalLogPublisher.addObserver(check)

    def gone(result):
        globalLogPublisher.removeObserver(check)
        return result

    return d.addTimeout(timeout, reactor).addBoth(gone)


@pytest.fixture
def password_broker(tmp_path):
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.path.exists(passwd):
        pytest.skip("mosquitto_passwd not installed")
    pwfile = tmp_path / "passwords"
    subprocess.run([passwd, "-b", "-c", str(pwfile), "ate", PASSWORD], check=True,
                   capture_output=True)
    os.chmod(pwfile, 0o600)
    broker = Mosquitto(extra_config=[f"password_file {pwfile}"])
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        broker.cleanup()


@pytest_twisted.inlineCallbacks
def test_no_token_or_password_in_any_log_file_or_response(reactor, password_broker, tmp_path):
    from autobahn.twisted.websocket import WebSocketClientFactory
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from tests.web.test_feed import UIClient

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    shutil.copy(FIXTURE, jobs / "le306426001.xml")
    web_port = free_port()
    cfg = master_config_from_dict({
        "broker_host": password_broker.host, "broker_port": password_broker.port,
        "mqtt_username": "ate", "mqtt_password": PASSWORD,
        "device_id": "SCT-81-1F", "sites": ["0"], "Handler": "HTO92-20F",
        "environment": "F1", "jobsource": "filesystem", "jobformat": "xml.semi-ate",
        "filesystemdatasource_path": str(jobs),
        "filesystemdatasource_jobpattern": "le#jobname#.xml",
        "stdf_directory": str(tmp_path / "stdf"), "log_directory": str(tmp_path / "log"),
        "webui_host": "127.0.0.1", "webui_port": web_port, "webui_token": TOKEN,
        "loglevel": 10, "site_layout": [[0, 0]],
    }, source="secrets.json")

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    top, cell = build_master(cfg, reactor, observe_logs=True)
    wrong = None
    bodies: list[bytes] = []
    try:
        top.startService()
        yield cell.publisher.whenConnected().addTimeout(TIMEOUT, reactor)

        # a client with a wrong password is refused; the refusal is logged
        wrong = MqttService(reactor, dataclasses.replace(cfg.mqtt, password=WRONG),
                            "masterapp.intruder", on_message=lambda t, p: None,
                            backoff=(30.0, 30.0))
        wrong.startService()
        yield _wait_for(events, "MQTT broker refused the connection", reactor)
        yield wrong.stopService()

        # the broker restarts: the master reconnects with its credentials
        password_broker.restart()
        yield _wait_for(events, "MQTT connected to", reactor, count=2)

        base = f"http://127.0.0.1:{web_port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for method, path, headers, body in [
            ("GET", f"/?token={TOKEN}", {}, None),
            ("GET", "/app.js", {"Referer": f"{base}/?token={TOKEN}"}, None),
            ("GET", f"/api/v1/status?token={TOKEN}", {}, None),
            ("POST", f"/api/v1/commands/reset?token={TOKEN}", {}, b"{}"),
            ("GET", f"/api/v1/logs?token={TOKEN}", {}, None),
            ("GET", "/api/v1/logs", {"Authorization": "Bearer wrong-token"}, None),
            ("POST", "/api/v1/commands/load", auth, b'{"lot_number": "306426.001"}'),
            ("PUT", "/api/v1/logs/level", auth, b'{"level": 10}'),
            ("GET", "/api/v1/status", auth, None),
            ("GET", "/api/v1/settings", auth, None),
            ("GET", "/api/v1/lot", auth, None),
            ("GET", "/api/v1/results", auth, None),
            ("GET", "/api/v1/openapi.json", auth, None),
            ("GET", "/metrics", auth, None),
        ]:
            resp = yield treq.request(method, base + path, headers=headers, data=body)
            bodies.append((yield treq.content(resp)))

        factory = WebSocketClientFactory(f"ws://127.0.0.1:{web_port}/ws?token={TOKEN}")
        factory.protocol = UIClient
        ws = yield TCP4ClientEndpoint(reactor, "127.0.0.1", web_port).connect(factory)
        yield ws.opened.addTimeout(TIMEOUT, reactor)
        ws.command("getlogs")
        yield ws.next_of("logs")
        ws.command("getlogfile")
        yield ws.next_of("logfile")
        ws.transport.loseConnection()
        yield ws.closed.addTimeout(TIMEOUT, reactor)
        bodies.extend(ws.raw)

        for path in ("/api/v1/logs", "/api/v1/logs/file"):   # read last: they hold it all
            resp = yield treq.get(base + path, headers=auth)
            assert resp.code == 200
            bodies.append((yield treq.content(resp)))
    finally:
        if wrong is not None and wrong.running:
            yield wrong.stopService()
        if top.running:
            yield top.stopService()
        globalLogPublisher.removeObserver(cell.logs)
        if cell.log_file is not None:
            globalLogPublisher.removeObserver(cell.log_file)
            cell.log_file.close()
        globalLogPublisher.removeObserver(events.append)

    secrets = (TOKEN, PASSWORD, WRONG)
    texts = [_event_text(e) for e in events]
    files = glob.glob(str(tmp_path / "log" / "*_master.log*"))
    file_text = "".join(Path(f).read_text(encoding="utf-8", errors="replace") for f in files)
    for secret in secrets:
        assert not [t for t in texts if secret in t], secret
        assert not [e for e in cell.logs.entries() if secret in json.dumps(e)], secret
        assert secret not in file_text, secret
        assert not [b for b in bodies if secret.encode() in b], secret
    # and the search looked at what it should have
    assert any("?<redacted>" in t for t in texts), "the access log was not seen"
    assert any("MQTT broker refused the connection" in t for t in texts)
    assert len(bodies) >= 14 + 2 + 2 and all(bodies)
    assert json.loads(bodies[-2])["logs"], "the log route returned no entries"
    assert "MQTT connected to" in file_text and "?<redacted>" in file_text
