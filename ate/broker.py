"""A private mosquitto broker on 127.0.0.1, for tests, benchmarks and the demo.

Plain Python (no Twisted), so it can be used from pytest fixtures, bench
scripts and the demo alike::

    broker = Mosquitto()
    broker.start()
    try:
        ...  # connect to broker.host, broker.port
    finally:
        broker.stop()

The broker listens on loopback only, never persists anything (unless
``extra_config`` says ``persistence true``: the database is then kept in its
directory across restarts) and logs to a file in its own temporary directory
(``broker.log_path``), which is kept after ``stop()`` so a failing test can
show it, and removed by ``cleanup()``.

A tester's broker bridged to a floor broker (docs/floor.md) is one with the
lines of L{bridge_config} over L{floor_bridge_topics} in its ``extra_config``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Sequence, cast

__all__ = ["Amqtt", "Mosquitto", "MosquittoError", "bridge_config", "find_amqtt",
           "find_mosquitto", "floor_bridge_topics", "free_port", "private_broker"]

_DEFAULT_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class MosquittoError(RuntimeError):
    """The private broker could not be found, started or stopped."""


def find_mosquitto() -> str:
    """Return the path of the mosquitto executable or raise L{MosquittoError}."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _DEFAULT_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise MosquittoError(
        "mosquitto executable not found (looked in PATH and "
        f"{', '.join(_DEFAULT_PATHS)}); install it with: apt-get install -y mosquitto"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on C{host} that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return "root" if os.getuid() == 0 else "nobody"


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """One private mosquitto process, restartable on the same port.

    @param port: the port to listen on; a free one is picked when 0.
    @param extra_config: more lines for mosquitto.conf (e.g. limits).
    @param start_timeout: seconds to wait for the port to accept connections.
    @param stop_timeout: seconds to wait after SIGTERM before SIGKILL.
    @param new_session: run mosquitto in its own session, so that a Ctrl-C in the
        terminal (SIGINT to the foreground process group) does not stop it before its
        clients are done; it is stopped by PID.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        port: int = 0,
        *,
        executable: str | None = None,
        extra_config: Sequence[str] = (),
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        new_session: bool = False,
    ) -> None:
        self.new_session = new_session
        self.port = port
        self.executable = executable
        self.extra_config = tuple(extra_config)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.directory: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- properties -----------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the running broker, or None when not running."""
        process = self._process
        return process.pid if process is not None and self.running else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> str | None:
        return None if self.directory is None else os.path.join(self.directory, "mosquitto.log")

    @property
    def config_path(self) -> str | None:
        return None if self.directory is None else os.path.join(self.directory, "mosquitto.conf")

    def log_text(self) -> str:
        """The broker's log so far ("" if none), for test failure messages."""
        if self.log_path is None or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    # -- lifecycle ------------------------------------------------------

    def start(self) -> "Mosquitto":
        """Start the broker and wait until its port accepts connections.

        The first start picks a free port (unless one was given); later
        starts (see L{restart}) reuse it.
        """
        if self.running:
            raise MosquittoError(f"mosquitto already running (pid {self.pid})")
        executable = self.executable or find_mosquitto()
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="ate-mosquitto-")
        if not self.port:
            self.port = free_port(self.host)
        self._write_config()
        with open(os.path.join(self.directory, "stderr.log"), "ab") as err:
            self._process = subprocess.Popen(
                [executable, "-c", cast(str, self.config_path)],  # directory set above
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.directory,
                start_new_session=self.new_session,
            )
        deadline = time.monotonic() + self.start_timeout
        while not _accepts(self.host, self.port):
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise MosquittoError(
                    f"mosquitto exited with status {code} on start "
                    f"(port {self.port}); log:\n{self.log_text()}{self._stderr_text()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise MosquittoError(
                    f"mosquitto did not accept connections on {self.host}:{self.port} "
                    f"within {self.start_timeout} s; log:\n{self.log_text()}"
                )
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """SIGTERM by PID, wait, SIGKILL if it does not exit in time."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._kill(process)
        self._process = None

    def kill(self) -> None:
        """SIGKILL the broker (simulates a crash: no clean shutdown)."""
        process = self._process
        if process is None:
            return
        self._kill(process)
        self._process = None

    def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the broker and remove its temporary directory."""
        self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<Mosquitto {self.host}:{self.port} pid={self.pid}>"

    # -- helpers --------------------------------------------------------

    def _kill(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(self.stop_timeout)

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "set_tcp_nodelay true",
            "persistence false",
            # Run as whoever started us: as root, mosquitto would otherwise
            # drop to user "mosquitto", which cannot write our temp dir.
            f"user {_current_user()}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            *self.extra_config,
        ]
        # start() sets the directory before writing the config
        with open(cast(str, self.config_path), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def _stderr_text(self) -> str:
        path = os.path.join(self.directory or "", "stderr.log")
        if not os.path.exists(path):
            return ""
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()


def find_amqtt() -> str:
    """Return the path of amqtt's broker command or raise L{MosquittoError}.

    First next to the running Python (the ``bin`` directory of its virtual environment,
    which is not on PATH when the venv is not activated, e.g. ``.venv/bin/twistd``), then
    on PATH.
    """
    beside = os.path.join(os.path.dirname(sys.executable), "amqtt")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    path = shutil.which("amqtt")
    if path is None:
        raise MosquittoError(f"amqtt is not installed (looked in {os.path.dirname(sys.executable)} "
                             "and PATH; pip install amqtt)")
    return path


class Amqtt(Mosquitto):
    """amqtt, a maintained pure-Python MQTT 3.1.1 broker, with the same interface.

    The demo's fallback when mosquitto is not installed.  bench/broker.py measured it at
    2.7x mosquitto's handler-cycle p50 with our master at 4 sites, so mosquitto comes
    first wherever it is installed; tests and benchmarks always use mosquitto.
    """

    @property
    def config_path(self) -> str | None:
        return None if self.directory is None else os.path.join(self.directory, "amqtt.yaml")

    def start(self) -> "Amqtt":
        if self.executable is None:
            self.executable = find_amqtt()
        super().start()
        return self

    def log_text(self) -> str:
        return self._stderr_text()

    def _write_config(self) -> None:
        lines = [
            "listeners:",
            "  default:",
            "    type: tcp",
            f"    bind: {self.host}:{self.port}",
            "plugins:",
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:",
            "    allow_anonymous: true",
            *self.extra_config,
        ]
        # start() sets the directory before writing the config
        with open(cast(str, self.config_path), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def __repr__(self) -> str:
        return f"<Amqtt {self.host}:{self.port} pid={self.pid}>"


def _check_level(what: str, value: object) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in "/+#\x00 "):
        raise ValueError(f"{what} must be one MQTT topic level (no '/', '+', '#', NUL or "
                         f"space), got {value!r}")
    return value


def floor_bridge_topics(device_id: str, handler_ids: Sequence[str] = ()) -> list[tuple[str, str]]:
    """What a tester's broker exchanges with the floor broker: ``(topic, direction)``.

    ``out`` (tester to floor): the master's ``Master/status``, ``Master/response``,
    ``Master/alarm`` and its requests to the handler, ``Handler/command``; ``in`` (floor
    to tester): the handler commands ``Master/cmd`` and the status of every handler in
    ``handler_ids`` (``ate/H/Handler/status``, which the master reads, protocol.md 4.9).
    Everything else (Control, TestApp, io-control: the part's hot path) stays on the
    tester's broker.  See docs/floor.md.
    """
    base = f"ate/{_check_level('device_id', device_id)}"
    topics = [(f"{base}/Master/status", "out"), (f"{base}/Master/response", "out"),
              (f"{base}/Master/alarm", "out"), (f"{base}/Handler/command", "out"),
              (f"{base}/Master/cmd", "in")]
    topics += [(f"ate/{_check_level('handler id', h)}/Handler/status", "in")
               for h in handler_ids]
    return topics


def bridge_config(name: str, remote_port: int, topics: Sequence[tuple[str, str]], *,
                  remote_host: str = "127.0.0.1", remote_clientid: str | None = None,
                  qos: int = 2, restart_timeout: str = "1 2",
                  keepalive: int = 20) -> list[str]:
    """mosquitto.conf lines of one bridge (its ``connection`` section) to the broker at
    ``remote_host:remote_port``: MQTT 3.1.1, a persistent session (``cleansession
    false``) under ``remote_clientid`` (default ``bridge.<name>``), every topic at ``qos``.

    ``restart_timeout`` "1 2" (a back-off of 1 to 2 s): mosquitto 2.0.11 took about 5 s to
    reconnect with a single constant value, whatever it was.  Put the lines last in the
    config (every line after ``connection`` belongs to the bridge).
    """
    _check_level("bridge name", name)
    if not isinstance(remote_port, int) or not 0 < remote_port < 65536:
        raise ValueError(f"bridge {name}: remote_port must be a TCP port, got {remote_port!r}")
    if qos not in (0, 1, 2):
        raise ValueError(f"bridge {name}: qos must be 0, 1 or 2, got {qos!r}")
    if not topics:
        raise ValueError(f"bridge {name}: no topics to bridge")
    lines = [
        f"connection {name}",
        f"address {remote_host}:{remote_port}",
        f"remote_clientid {remote_clientid or 'bridge.' + name}",
        "cleansession false",
        "bridge_protocol_version mqttv311",
        "try_private true",
        f"restart_timeout {restart_timeout}",
        f"keepalive_interval {keepalive}",
    ]
    for topic, direction in topics:
        if direction not in ("in", "out", "both"):
            raise ValueError(f"bridge {name}: direction of {topic!r} must be in, out or "
                             f"both, got {direction!r}")
        if not topic or " " in topic:
            raise ValueError(f"bridge {name}: bad topic {topic!r}")
        lines.append(f"topic {topic} {direction} {qos}")
    return lines


def private_broker(port: int = 0, *, new_session: bool = False) -> Mosquitto:
    """mosquitto when installed, else amqtt when installed; L{MosquittoError} if neither."""
    try:
        find_mosquitto()
    except MosquittoError:
        find_amqtt()
        return Amqtt(port, new_session=new_session)
    return Mosquitto(port, new_session=new_session)
