"""``twistd -n ate-master`` as a real process: config errors, SIGTERM, kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.defer import Deferred

from ate.testing.broker import free_port
from ate.testing.peers import HandlerClient

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "jobs", "le306426001.xml")
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
DEVICE = "SCT-81-1F"


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


def write_config(tmp_path, **over) -> str:
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    shutil.copy(FIXTURE, jobs / "le306426001.xml")
    data = {
        "broker_host": "127.0.0.1", "broker_port": 1883, "device_id": DEVICE,
        "sites": ["0", "1"], "Handler": "HTO92-20F", "environment": "F1",
        "webui_host": "127.0.0.1", "webui_port": free_port(),
        "jobsource": "filesystem", "jobformat": "xml.semi-ate",
        "filesystemdatasource_path": str(jobs),
        "filesystemdatasource_jobpattern": "le#jobname#.xml",
        "enable_timeouts": True, "site_layout": [[0, 0], [1, 0]],
        "stdf_directory": str(tmp_path), "log_directory": str(tmp_path / "log"),
    }
    for k, v in over.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path = tmp_path / "master.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("over,key", [
    ({"device_id": None}, "device_id"),
    ({"sites": []}, "sites"),
    ({"sites": ["0", "0"]}, "sites"),
    ({"broker_port": 70000}, "broker_port"),
    ({"webui_port": "8081"}, "webui_port"),
    ({"jobformat": "xml.other"}, "jobformat"),
    ({"develop_mode": True}, "develop_mode"),
    ({"webui_root_path": "/nonexistent/webroot"}, "webui_root_path"),
])
def test_config_errors_exit_before_start(tmp_path, over, key):
    path = write_config(tmp_path, **over)
    proc = subprocess.run(TWISTD + ["-n", "--pidfile=", "ate-master", "--config", path],
                          capture_output=True, text=True, env=env(), cwd=str(tmp_path), timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert path in lines[0] and key in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


class _Ended(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode if hasattr(reason.value, "exitCode") else None)


def spawn(reactor, tmp_path, broker):
    path = write_config(tmp_path, broker_port=broker.port)
    pp = _Ended()
    args = TWISTD + ["-n", "--pidfile=", "ate-master", "--config", path]
    transport = reactor.spawnProcess(pp, sys.executable, args, env=env(), path=str(tmp_path))
    return pp, transport


@pytest_twisted.ensureDeferred
async def test_sigterm_exits_zero_with_last_status(reactor, broker, tmp_path):
    handler = HandlerClient(reactor, broker.host, broker.port, DEVICE)
    await handler.start()
    try:
        connecting = handler.wait_state("connecting", 30)
        pp, transport = spawn(reactor, tmp_path, broker)
        await connecting
        crash = handler.wait_state("crash", 10)
        transport.signalProcess("TERM")
        _, status = await crash
        assert status["payload"]["message"] == "master stopped"
        pp.ended.addTimeout(5, reactor)
        code = await pp.ended
        assert code == 0, pp.output.decode(errors="replace")[-2000:]
    finally:
        await handler.stop()


@pytest_twisted.ensureDeferred
async def test_kill_9_makes_the_broker_publish_crash(reactor, broker, tmp_path):
    handler = HandlerClient(reactor, broker.host, broker.port, DEVICE)
    await handler.start()
    try:
        connecting = handler.wait_state("connecting", 30)
        pp, transport = spawn(reactor, tmp_path, broker)
        await connecting
        crash = handler.wait_state("crash", 10)
        transport.signalProcess("KILL")
        _, status = await crash
        assert status == {"type": "status", "interface_version": 1, "state": "crash",
                          "payload": {"state": "crash", "message": ""}}
        pp.ended.addTimeout(5, reactor)
        await pp.ended
    finally:
        await handler.stop()
