"""The real Semi-ATE peers for the integration tests: the Control app
(``semi-ate-control-app`` 1.0.17, ``launch_control -s N``) and the TestApp framework
(``semi-ate-test-app`` 1.0.17) running tests/fixtures/testapp/minimal_program.py.

They live in their own virtual environment, ``.venv-peers/`` at the top of the repository
(gitignored), so their dependencies (paho-mqtt 1.x among them) never constrain ours. The
``peers_venv`` fixture builds it once with the pinned versions below and reuses it while its
marker file holds the same list; any other content, or none, means stale: it is rebuilt. A
build that fails raises (the tests fail, they are not skipped). Builds are serialised with a
lock file, since several test runs may share the work tree.

The packages the apps need without declaring them (``semi-ate-plugins`` for the plugin
manager, ``pluggy``, ``semi-ate-testers`` for the tester plugin) are pinned here too.
Everything is installed without dependency resolution and without build isolation, with
pinned build tools installed first; ``semi-ate-testers`` comes last because its
``setup.py`` imports ``ate_common`` and ``requests``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from twisted.internet.defer import Deferred

from ate.broker import free_port
from ate.config import MqttOptions
from ate.mqtt.service import MqttService

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-peers"
MARKER = VENV / "ate-peers-requirements.txt"
LOCK = ROOT / ".venv-peers.lock"
FIXTURES = ROOT / "tests" / "fixtures"
PROGRAM = FIXTURES / "testapp" / "minimal_program.py"
JOB_TEMPLATE = FIXTURES / "testapp" / "job_template.xml"
CONTROL_TEMPLATE = FIXTURES / "control" / "control_config_file.json"

DEVICE = "SCT-81-1F"
HANDLER = "HTO92-20F"
SITES = ("0", "1")

#: Installed with ``--no-deps``: the whole set is pinned, nothing is resolved on the way.
PINNED = (
    "semi-ate-control-app==1.0.17",
    "semi-ate-test-app==1.0.17",
    "semi-ate-common==1.0.17",
    "semi-ate-apps-common==1.0.17",
    "semi-ate-plugins==1.0.17",
    "Semi-ATE-STDF==0.1.28",
    "aiomqtt==0.1.3",
    "paho-mqtt==1.6.1",  # aiomqtt 0.1.3 and the TestApp use the paho 1.x API
    "transitions==0.9.3",
    "six==1.17.0",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-extensions==4.16.0",
    "typing-inspection==0.4.5",
    "numpy==2.4.6",
    "XlsxWriter==3.3.1",
    "pluggy==1.6.0",
    "requests==2.34.2",
    "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3",
    "idna==3.20",
    "urllib3==2.8.0",
)
#: Installed first: what builds the packages that come as source (the semi-ate ones,
#: paho-mqtt 1.6.1, ...) without build isolation, so no unpinned build tools are fetched.
BUILD_TOOLS = ("setuptools==65.5.0", "wheel==0.45.1")
#: Last, on its own: its setup.py imports installed packages (ate_common, requests).
LAST = ("semi-ate-testers==1.0.17",)


class PeersVenvError(RuntimeError):
    """The peers' virtual environment could not be built."""


def _marker_text() -> str:
    lines = [f"python {sys.version_info.major}.{sys.version_info.minor}", *BUILD_TOOLS,
             *PINNED, *LAST]
    return "\n".join(lines) + "\n"


def peers_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def _fresh(venv: Path) -> bool:
    marker = venv / MARKER.name
    try:
        return marker.read_text() == _marker_text() and peers_python(venv).exists()
    except OSError:
        return False


def _run(args: list[str], what: str) -> None:
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    if proc.returncode != 0:
        raise PeersVenvError(f"{what} failed (exit status {proc.returncode}): "
                             f"{' '.join(args)}\n{proc.stdout[-6000:]}")


def ensure_peers_venv(venv: Path = VENV) -> Path:
    """Build ``venv`` with the pinned peers unless it is there and current; return it."""
    with open(LOCK if venv == VENV else venv.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _fresh(venv):
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", None) or sys.executable
        _run([base, "-m", "venv", str(venv)], "creating the peers' virtual environment")
        pip = [str(peers_python(venv)), "-m", "pip", "install", "-q", "--no-input",
               "--disable-pip-version-check", "--no-deps", "--no-build-isolation"]
        _run(pip + list(BUILD_TOOLS), "installing the build tools")
        _run(pip + list(PINNED), "installing the pinned peers")
        _run(pip + list(LAST), "installing the tester plugin")
        _run([str(peers_python(venv)), "-m", "pip", "check"], "checking the peers' packages")
        _run([str(peers_python(venv)), "-c",
              "import ate_control_app.launch_control, ate_test_app.sequencers.Sequencer, "
              "semi_ate_testers, ate_semiateplugins.pluginmanager"],
             "importing the peers")
        (venv / MARKER.name).write_text(_marker_text())
        return venv


@pytest.fixture(scope="session")
def peers_venv() -> Path:
    """The peers' virtual environment (built on first use, see the module docstring)."""
    return ensure_peers_venv()


# -- processes ---------------------------------------------------------------------------


class Process:
    """A child started in its own session (process group), stopped by its id."""

    def __init__(self, name: str, args: list[str], *, cwd: Path, env: dict | None = None,
                 log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(args, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        self.pid = self.popen.pid

    def children(self) -> list[int]:
        """PIDs of the processes whose parent is this one (Linux /proc)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.pid:
                found.append(int(entry))
        return found

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait; then SIGKILL the whole group. Returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()
        return self.popen.returncode

    def kill_group(self) -> None:
        """SIGKILL this process and everything it started (same process group)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def master_config(workdir: Path, broker, **over) -> Path:
    """A master config for the two-site cell in ``workdir``; returns its path."""
    data = {
        "broker_host": broker.host, "broker_port": broker.port, "device_id": DEVICE,
        "sites": list(SITES), "Handler": HANDLER, "environment": "F1",
        "webui_host": "127.0.0.1", "webui_port": free_port(),
        "jobsource": "filesystem", "jobformat": "xml.semi-ate",
        "filesystemdatasource_path": str(workdir / "jobs"),
        "filesystemdatasource_jobpattern": "le#jobname#.xml",
        "enable_timeouts": True, "site_layout": [[0, 0], [1, 0]],
        "tester_type": "Semi_ATE Master Parallel Tester", "loglevel": 20,
        "stdf_directory": str(workdir / "stdf"), "log_directory": str(workdir / "log"),
        "user_settings_filepath": str(workdir / "master_user_settings.json"),
    }
    data.update(over)
    path = workdir / "master.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def start_master(workdir: Path, config: Path) -> Process:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
            "--pidfile=", "-l", str(workdir / "twistd.log"), "ate-master", "--config",
            str(config)]
    return Process("master", args, cwd=workdir, env=env, log=workdir / "master.out")


def start_control(venv: Path, workdir: Path, site: str, broker, **over) -> Process:
    """``launch_control -s N`` in its own directory holding its control_config_file.json."""
    home = workdir / f"control{site}"
    home.mkdir(exist_ok=True)
    config = json.loads(CONTROL_TEMPLATE.read_text())
    config.update(broker_host=broker.host, broker_port=broker.port, device_id=DEVICE,
                  site_id=site, **over)
    (home / "control_config_file.json").write_text(json.dumps(config, indent=1))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = str(venv / "bin") + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return Process(f"control{site}", [str(venv / "bin" / "launch_control"), "-s", site],
                   cwd=home, env=env, log=home / "control.out")


def install_program(workdir: Path) -> Path:
    """Copy the test program with its JSON files to ``workdir/programs``; return the dir."""
    programs = workdir / "programs"
    programs.mkdir(exist_ok=True)
    for path in PROGRAM.parent.glob(f"{PROGRAM.stem}*"):
        shutil.copy(path, programs / path.name)
    return programs


def write_job(workdir: Path, lot: str, program: Path) -> Path:
    """The job file for ``lot`` naming ``program`` (need not exist)."""
    jobs = workdir / "jobs"
    jobs.mkdir(exist_ok=True)
    text = (JOB_TEMPLATE.read_text().replace("@LOT@", lot).replace("@DEVICE@", DEVICE)
            .replace("@HANDLER@", HANDLER).replace("@PROGRAM@", str(program)))
    path = jobs / f"le{lot}.xml"
    path.write_text(text)
    return path


def master_log_lines(workdir: Path) -> list[list[str]]:
    """The master's own log file(s), as ``[name, date, LEVEL, message]`` lists."""
    lines = []
    for path in sorted((workdir / "log").glob("*_master.log")):
        for text in path.read_text(errors="replace").splitlines():
            fields = [f.strip() for f in text.split("|", 3)]
            if len(fields) == 4:
                lines.append(fields)
    return lines


# -- MQTT: what the sites say --------------------------------------------------------------


class SiteMonitor:
    """Records every message on ``~/Control/#`` and ``~/TestApp/#`` as (topic, payload)."""

    def __init__(self, reactor, broker) -> None:
        self.reactor = reactor
        self.received: list[tuple[str, dict]] = []
        self.times: list[float] = []  # time.perf_counter() at arrival, one per message
        self._waiters: list[tuple[Callable[[str, dict], bool], Deferred]] = []
        base = f"ate/{DEVICE}"
        self.mqtt = MqttService(
            reactor, MqttOptions(host=broker.host, port=broker.port), f"sitemonitor.{DEVICE}",
            subscriptions=[(f"{base}/Control/#", 2), (f"{base}/TestApp/#", 2)],
            on_message=self._on_message)

    def start(self) -> Deferred:
        self.mqtt.startService()
        return self.mqtt.whenConnected()

    def stop(self) -> Deferred:
        return self.mqtt.stopService()

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            msg = {"raw": payload.decode(errors="replace")}
        short = topic.split("/", 2)[2]
        self.received.append((short, msg))
        self.times.append(time.perf_counter())
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate(short, msg):
                self._waiters.remove(waiter)
                d.callback((short, msg))

    def wait(self, predicate: Callable[[str, dict], bool], timeout: float = 30.0,
             since: int | None = None) -> Deferred:
        """Fires with (topic, message) for the first match after index ``since`` (default:
        messages from now on)."""
        if since is not None:
            for topic, msg in self.received[since:]:
                if predicate(topic, msg):
                    d: Deferred = Deferred()
                    d.callback((topic, msg))
                    return d
        d = Deferred()
        self._waiters.append((predicate, d))
        d.addTimeout(timeout, self.reactor)
        return d

    def mark(self) -> int:
        return len(self.received)

    @staticmethod
    def state_of(msg: dict):
        payload = msg.get("payload")
        return payload.get("state") if isinstance(payload, dict) else None

    def control_states(self, site: str) -> list[str]:
        topic = f"Control/status/site{site}"
        return [self.state_of(m) for t, m in self.received if t == topic]

    def control_logs(self, site: str, since: int = 0) -> list[str]:
        topic = f"Control/log/site{site}"
        return [m.get("payload") for t, m in self.received[since:] if t == topic]

