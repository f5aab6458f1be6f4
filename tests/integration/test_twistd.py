"""The programs as real ``twistd`` processes: config errors, ``--check`` on every file in
``etc/``, a missing job directory, a taken web port, a missing pyserial (each one line and
exit status 2), the start-up line, SIGTERM, kill -9."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.defer import Deferred

from ate.broker import free_port
from ate.testing.peers import HandlerClient
from tests.twistdrun import ROOT, TWISTD, env
from tests.waiting import Waiter

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "jobs", "le306426001.xml")
DEVICE = "SCT-81-1F"


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


class _Ended(protocol.ProcessProtocol, Waiter):
    def __init__(self) -> None:
        Waiter.__init__(self)
        self.ended: Deferred = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self.poke()

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode if hasattr(reason.value, "exitCode") else None)


def spawn(reactor, tmp_path, broker, *extra):
    path = write_config(tmp_path, broker_port=broker.port)
    pp = _Ended()
    args = TWISTD + ["-n", "--pidfile=", "ate-master", "--config", path, *extra]
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
    text = pp.output.decode(errors="replace")
    assert "#warn]" not in text and "#error]" not in text and "Traceback" not in text, text


@pytest_twisted.ensureDeferred
async def test_startup_line_and_web_overrides(reactor, broker, tmp_path):
    """One start-up line with version, config file, broker, device, sites, web URL and
    datalog directory; --web-host/--web-port replace the file's web address."""
    port = free_port()
    handler = HandlerClient(reactor, broker.host, broker.port, DEVICE)
    await handler.start()
    try:
        connecting = handler.wait_state("connecting", 30)
        pp, transport = spawn(reactor, tmp_path, broker, "--web-host", "127.0.0.1",
                              "--web-port", str(port))
        await connecting
        ended = handler.wait_state("crash", 10)
        transport.signalProcess("TERM")
        await ended
        pp.ended.addTimeout(5, reactor)
        assert await pp.ended == 0
    finally:
        await handler.stop()
    import ate

    text = pp.output.decode(errors="replace")
    lines = [ln for ln in text.splitlines() if f"ate-master {ate.__version__} with " in ln]
    assert len(lines) == 1, text
    line = lines[0]
    for part in (str(tmp_path / "master.json"), f"broker 127.0.0.1:{broker.port}",
                 f"device {DEVICE}", "sites 0,1", f"web http://127.0.0.1:{port}/",
                 f"datalogs in {tmp_path}"):
        assert part in line, (part, line)
    assert "state startup -> connecting: connected to the broker" in text


def run_twistd(args, cwd, timeout=60, **extra_env):
    return subprocess.run(TWISTD + args, capture_output=True, text=True, cwd=str(cwd),
                          env=env(**extra_env), timeout=timeout, stdin=subprocess.DEVNULL)


CHECKS = [("ate-master", "master.toml"), ("ate-master", "master.json"),
          ("ate-handler", "handler.toml"), ("ate-handler", "handler-tcp.toml"),
          ("ate-sim-sites", "sim-sites.toml")]


@pytest.mark.parametrize("program,name", CHECKS)
def test_check_passes_on_every_etc_config(program, name):
    """``twistd PROGRAM --config etc/NAME --check`` from the checkout: exit 0, and what it
    would run with."""
    proc = run_twistd([program, "--config", f"etc/{name}", "--check"], ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert out.startswith(f"{program} ") and f"etc/{name} is valid" in out.splitlines()[0]
    assert "broker" in out and "127.0.0.1:1883" in out
    assert "error:" not in out
    if program == "ate-master":
        for label in ("device", "sites", "jobs", "datalogs", "web"):
            assert f"\n  {label} " in out, (label, out)
        assert "le306426001.xml" in out and "http://127.0.0.1:8081/" in out


def test_every_etc_config_is_checked():
    from tests.unit.test_etc import KINDS

    assert sorted(name for _, name in CHECKS) == sorted(
        n for n, kind in KINDS.items() if kind in ("master", "handler", "sim"))


def test_missing_job_directory_one_line_exit_2(tmp_path):
    """etc/master.toml run from a directory without ./jobs: one line, before anything."""
    config = os.path.join(ROOT, "etc", "master.toml")
    proc = run_twistd(["-n", "--pidfile=", "ate-master", "--config", config], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (f"ate-master: {config}: filesystemdatasource_path: job directory "
                           f"'./jobs' does not exist (relative to the working directory "
                           f"{tmp_path})\n")
    assert "Traceback" not in proc.stdout and not (tmp_path / "log").exists()
    proc = run_twistd(["ate-master", "--config", config, "--check"], tmp_path)
    assert proc.returncode == 2
    assert "error: " + config + ": filesystemdatasource_path: job directory" in proc.stdout


def _taken_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def test_web_port_taken_master_one_line_exit_2(tmp_path):
    sock, port = _taken_port()
    try:
        path = write_config(tmp_path, webui_port=port)
        proc = run_twistd(["-n", "--pidfile=", "ate-master", "--config", path], tmp_path)
        other = run_twistd(["-n", "--pidfile=", "ate-master", "--config", path,
                            "--web-port", str(port)], tmp_path)
    finally:
        sock.close()
    for p in (proc, other):
        assert p.returncode == 2, p.stdout + p.stderr
        assert p.stderr == (f"ate-master: web address http://127.0.0.1:{port}/ cannot be "
                            f"used: address already in use (webui_host/webui_port in {path}, "
                            "or --web-host/--web-port)\n")
        assert "Traceback" not in p.stdout


def test_web_port_taken_demo_one_line_exit_2(tmp_path):
    sock, port = _taken_port()
    try:
        proc = run_twistd(["-n", "--pidfile=", "ate-demo", "--web-port", str(port)], tmp_path)
    finally:
        sock.close()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (f"ate-demo: web address http://127.0.0.1:{port}/ cannot be used: "
                           "address already in use; give another port with --web-port P "
                           "(0 takes a free one)\n")
    assert proc.stdout == "" and os.listdir(tmp_path) == []


def test_missing_pyserial_one_line_exit_2(tmp_path):
    """A serial port without pyserial: the extra to install, no traceback (also --check)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "serial.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'serial'\", name='serial')\n")
    handler = os.path.join(ROOT, "etc", "handler.toml")
    pythonpath = f"{shadow}{os.pathsep}{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    want = ("serial port /dev/ttyS9 needs pyserial, which is not installed: "
            "pip install 'ate-master[serial]' (or pip install pyserial)")
    proc = run_twistd(["-n", "--pidfile=", "ate-handler", "--config", handler, "/dev/ttyS9"],
                      tmp_path, PYTHONPATH=pythonpath)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == f"ate-handler: {want}\n" and "Traceback" not in proc.stdout
    proc = run_twistd(["ate-handler", "--config", handler, "--check", "/dev/ttyS9"],
                      tmp_path, PYTHONPATH=pythonpath)
    assert proc.returncode == 2 and f"error: {want}" in proc.stdout
    # with pyserial the same command line is fine
    proc = run_twistd(["ate-handler", "--config", handler, "--check", "/dev/ttyS9"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("program,args,key", [
    ("ate-handler", ["--config", "{missing}"], "-: cannot read the file"),
    ("ate-sim-sites", ["--config", "{missing}"], "-: cannot read the file"),
    ("ate-handler", ["--config", "etc/handler.toml", "--broker", "h:70000"], "broker_port"),
    ("ate-sim-sites", ["--config", "etc/sim-sites.toml", "--sites", "0,0"], "sites"),
])
def test_handler_and_sim_config_errors_one_line_exit_2(tmp_path, program, args, key):
    missing = str(tmp_path / "nope.toml")
    args = [a.format(missing=missing) for a in args]
    proc = run_twistd(["-n", "--pidfile=", program] + args, ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{program}: ") and key in lines[0], lines
    assert "Traceback" not in proc.stdout and "Usage:" not in proc.stdout


@pytest_twisted.ensureDeferred
async def test_handler_sigterm_exits_zero_without_warning(reactor, broker, tmp_path):
    """A clean shutdown of ate-handler logs no "MQTT connection lost" (nor any warning)."""
    pp = _Ended()
    args = TWISTD + ["-n", "--pidfile=", "ate-handler", "--config",
                     os.path.join(ROOT, "etc", "handler-tcp.toml"),
                     "--broker", f"127.0.0.1:{broker.port}"]
    transport = reactor.spawnProcess(pp, sys.executable, args, env=env(), path=str(tmp_path))
    await pp.until(lambda: b"MQTT connected" in pp.output, reactor, 30)
    transport.signalProcess("TERM")
    pp.ended.addTimeout(10, reactor)
    assert await pp.ended == 0
    text = pp.output.decode(errors="replace")
    assert "MQTT disconnected cleanly" in text
    assert "#warn]" not in text and "#error]" not in text and "Traceback" not in text, text



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
