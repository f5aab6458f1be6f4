"""Every command in README.rst is run by a test here, by another named test, or by
``.ci/run``.

The commands are the lines of the README's literal blocks.  ``COVERED`` says for each one
how it is covered; a command added to the README without an entry here fails
``test_every_readme_command_is_covered``.  Commands run here are run as written, from a
copy of the checkout's ``etc/`` and ``jobs/``, with only what a test needs changed: the
broker and web ports are private ones (``--broker``, ``--web-port``, the mosquitto
listener), ``.venv/bin/twistd`` is this checkout's twistd, and the systemd installation
goes into a temporary root instead of ``/`` (``systemctl --root``, ``systemd-analyze
--root``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ate.broker import free_port
from tests.twistdrun import ROOT, TWISTD, env

README = os.path.join(ROOT, "README.rst")
VENV_TWISTD = ".venv/bin/twistd"

DEMO = ("$(command -v sudo) apt-get update -qq && $(command -v sudo) apt-get install -y -qq "
        "mosquitto && python3 -m venv .venv && .venv/bin/pip install -q . && "
        ".venv/bin/twistd -n ate-demo")
TESTS = ("$(command -v sudo) apt-get update -qq && $(command -v sudo) apt-get install -y -qq "
         "mosquitto chromium prometheus && python3 -m venv .venv && "
         ".venv/bin/pip install -q '.[test]' && "
         ".venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/python -m pytest -q")
CHECKS = [f".venv/bin/twistd {program} --config etc/{name} --check" for program, name in (
    ("ate-master", "master.toml"), ("ate-master", "master.json"),
    ("ate-handler", "handler.toml"), ("ate-handler", "handler-tcp.toml"),
    ("ate-sim-sites", "sim-sites.toml"))]
BROKER = "/usr/sbin/mosquitto -c etc/mosquitto-ate.conf"
MASTER = ".venv/bin/twistd -n --pidfile= ate-master --config etc/master.toml"
SITES = ".venv/bin/twistd -n --pidfile= ate-sim-sites --config etc/sim-sites.toml"
SIM_TCP = ".venv/bin/twistd -n --pidfile= ate-sim-handler --lots 1"
HANDLER_TCP = ".venv/bin/twistd -n --pidfile= ate-handler --config etc/handler-tcp.toml"
SIM_PTY = (".venv/bin/twistd -n --pidfile= ate-sim-handler --pty --pty-link /tmp/ate-handler-tty "
           "--lots 1")
HANDLER_PTY = (".venv/bin/twistd -n --pidfile= ate-handler --config etc/handler.toml "
               "/tmp/ate-handler-tty")
SYSTEMD = [
    "sudo python3 -m venv /opt/ate-master/venv && sudo /opt/ate-master/venv/bin/pip install -q .",
    "sudo install -D -m 644 etc/master.toml /etc/ate-master/master.toml",
    "sudo install -D -m 644 etc/ate-master.service /etc/systemd/system/ate-master.service",
    "sudo systemctl daemon-reload && sudo systemctl enable --now ate-master",
]
#: ``python bench/NAME.py [options]``: a benchmark, run by hand (see the README)
BENCH_COMMAND = re.compile(r"python bench/[a-z_]+\.py( --[a-z-]+ [0-9.]+)*")

#: command -> how it is covered: ("here", test of this module), ("test", "file::name")
#: or ("ci", the part .ci/run runs)
COVERED: dict[str, tuple[str, str]] = {
    DEMO: ("test",
           "tests/integration/test_demo.py::test_demo_runs_lots_and_exits_cleanly_on_sigterm"),
    TESTS: ("ci", "python3 -m venv .venv && .venv/bin/pip install -q '.[test]' && "
                  ".venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/python -m pytest -q"),
    **{c: ("here", "test_readme_check_commands") for c in CHECKS},
    **{c: ("here", "test_readme_handler_over_tcp") for c in (BROKER, MASTER, SITES, SIM_TCP,
                                                              HANDLER_TCP)},
    **{c: ("here", "test_readme_handler_over_a_serial_line") for c in (SIM_PTY, HANDLER_PTY)},
    **{c: ("here", "test_readme_systemd_installation") for c in SYSTEMD},
}


def covered(command: str) -> tuple[str, str] | None:
    if BENCH_COMMAND.fullmatch(command):
        return ("here", "test_readme_benchmarks_start")
    return COVERED.get(command)


def readme_commands() -> list[str]:
    """The lines of every literal block (a paragraph ending in ``::``), comments cut."""
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    commands, in_block, seen_text = [], False, False
    for line in lines:
        if line.rstrip().endswith("::") and not line.startswith(" "):
            in_block, seen_text = True, False
            continue
        if in_block:
            if not line.strip():
                if seen_text:
                    in_block = False
                continue
            if not line.startswith("    "):
                in_block = False
                continue
            seen_text = True
            command = re.sub(r"\s+#\s.*$", "", line.strip())
            commands.append(command)
    return commands


def test_every_readme_command_is_covered():
    commands = readme_commands()
    assert len(commands) == len(set(commands)), commands
    assert [c for c in commands if covered(c) is None] == []
    assert sorted(set(COVERED) - set(commands)) == []     # no stale entries
    assert any(BENCH_COMMAND.fullmatch(c) for c in commands)
    here = globals()
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    for command in commands:
        how, what = covered(command)
        if how == "here":
            assert callable(here.get(what)), what
        elif how == "ci":
            assert what in ci and what in command, command
        else:
            path, name = what.split("::")
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                assert f"def {name}(" in f.read(), what
            assert "ate-demo" in command


def test_the_test_command_lints_before_pytest():
    """ruff and then mypy run in the README's test command (and so in .ci/run) before
    pytest, with their configuration in pyproject.toml and both in the test extra that
    command installs."""
    [tests] = [c for c in readme_commands() if " -m pytest" in c]
    assert "&& .venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/python -m pytest" in tests
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        last = f.read().strip().splitlines()[-1]
    assert tests.endswith(last), last     # .ci/run's last line is the command's tail
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        pyproject = f.read()
    assert "\n[tool.ruff]\n" in pyproject
    assert re.search(r'\n\[tool\.mypy\]\n(.*\n)*files = \["ate"\]\n', pyproject)
    assert 'plugins = ["mypy_zope:plugin"]' in pyproject
    with open(os.path.join(ROOT, "setup.cfg"), encoding="utf-8") as f:
        cfg = f.read()
    for tool in ("ruff", "mypy", "mypy-zope"):
        assert re.search(rf"\ntest =\n(    .*\n)*    {tool}[<>=]", cfg), tool


# --------------------------------------------------------------------------------------
# running them


def argv(command: str, options: list[str] = (), **replace: str) -> list[str]:
    """A README command line as argv; this checkout's twistd for .venv/bin/twistd;
    ``options`` go right after the program's name (before its positional arguments)."""
    words = [replace.get(w, w) for w in shlex.split(command)]
    if words[0] == VENV_TWISTD:
        words = TWISTD + words[1:]
    for i, word in enumerate(words):
        if word.startswith("ate-"):
            return words[:i + 1] + list(options) + words[i + 1:]
    return words


@pytest.fixture
def checkout(tmp_path):
    """A working directory laid out like the checkout: etc/ and jobs/."""
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copytree(os.path.join(ROOT, "etc"), work / "etc")
    shutil.copytree(os.path.join(ROOT, "jobs"), work / "jobs")
    return work


@pytest.mark.parametrize("command", CHECKS)
def test_readme_check_commands(command, checkout):
    proc = subprocess.run(argv(command), cwd=str(checkout), env=env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " is valid; it would run with:" in proc.stdout.splitlines()[0]


class Processes:
    """Programs started for one test, stopped (SIGTERM, then SIGKILL) by PID."""

    def __init__(self, directory) -> None:
        self.directory = directory
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        out = open(self.directory / f"{name}.out", "wb")
        proc = subprocess.Popen(args, cwd=str(self.directory), env=env(), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.procs[name] = proc
        return proc

    def output(self, name: str) -> str:
        return (self.directory / f"{name}.out").read_text(errors="replace")

    def outputs(self) -> str:
        return "\n".join(f"--- {n}\n{self.output(n)[-3000:]}" for n in self.procs)

    def wait_for(self, name: str, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output(name):
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{name}: no {text!r}\n{self.outputs()}")
            time.sleep(0.05)

    def stop(self, name: str, timeout: float = 15.0) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            pytest.fail(f"{name} did not stop on SIGTERM\n{self.outputs()}")

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def run_cell(checkout, device_commands: list[str], replace: dict[str, str]):
    """The README's broker, master and sites, then the handler device and ate-handler;
    returns when the device finished its lot, after stopping everything."""
    port, web = free_port(), free_port()
    with open(checkout / "etc" / "mosquitto-ate.conf", encoding="utf-8") as f:
        conf = f.read()
    assert "listener 1883 127.0.0.1" in conf
    with open(checkout / "etc" / "mosquitto-ate.conf", "w", encoding="utf-8") as f:
        f.write(conf.replace("listener 1883 ", f"listener {port} "))
    broker = ["--broker", f"127.0.0.1:{port}"]
    procs = Processes(checkout)
    try:
        mosquitto = argv(BROKER)
        if not os.access(mosquitto[0], os.X_OK):
            from ate.broker import find_mosquitto

            mosquitto[0] = find_mosquitto()
        procs.start("mosquitto", mosquitto)
        deadline = time.monotonic() + 10
        while not _accepts(port):
            if time.monotonic() > deadline:
                pytest.fail(f"no broker on {port}\n{procs.outputs()}")
            time.sleep(0.05)
        procs.start("master", argv(MASTER, broker + ["--web-port", str(web)]))
        procs.start("sites", argv(SITES, broker))
        device, handler = device_commands
        sim = procs.start("device", argv(device, **replace))
        if "--pty" in device:
            procs.wait_for("device", "simulated handler device on the serial line")
        procs.start("handler", argv(handler, broker, **replace))
        try:
            code = sim.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the simulated device did not finish its lot\n{procs.outputs()}")
        assert code == 0, procs.outputs()
        for name in ("handler", "sites", "master"):
            assert procs.stop(name) == 0, procs.outputs()
        procs.stop("mosquitto")
    finally:
        procs.kill_all()
    assert "1 lot(s) done (20 parts), stopping" in procs.output("device")
    for name in ("master", "sites", "handler", "device"):
        text = procs.output(name)
        for marker in ("#warn]", "#error]", "#critical]", "Traceback"):
            assert marker not in text, (name, marker, text)
    datalogs = sorted(os.listdir(checkout / "datalogs"))
    assert [n for n in datalogs if n.endswith(".stdf")] == [
        n for n in datalogs if n.startswith("306426.001_SCT-81-1F_") and n.endswith(".stdf")]
    assert len([n for n in datalogs if n.endswith(".summary.json")]) == 1
    return procs


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_readme_handler_over_tcp(checkout):
    device_port = free_port()
    listen = f"tcp:{device_port}:interface=127.0.0.1"
    with open(checkout / "etc" / "handler-tcp.toml", encoding="utf-8") as f:
        text = f.read()
    with open(checkout / "etc" / "handler-tcp.toml", "w", encoding="utf-8") as f:
        f.write(text.replace('serial = "tcp:127.0.0.1:5000"',
                             f'serial = "tcp:127.0.0.1:{device_port}"'))
    procs = run_cell(checkout, [SIM_TCP + f" --listen {listen}", HANDLER_TCP], {})
    assert f"connects to tcp:127.0.0.1:{device_port}" in procs.output("handler")


def test_readme_handler_over_a_serial_line(checkout):
    pytest.importorskip("serial")
    link = str(checkout / "ate-handler-tty")
    procs = run_cell(checkout, [SIM_PTY, HANDLER_PTY], {"/tmp/ate-handler-tty": link})
    assert f"serial port {link} (115200 baud, 8N1" in procs.output("handler")
    assert not os.path.lexists(link)      # the device removed its link


def test_readme_systemd_installation(tmp_path, checkout):
    """The four installation commands into a temporary root: the venv's twistd (the venv
    and pip install are what .ci/run does) runs the unit's ExecStart with --check in the
    unit's working directory, created as systemd does from StateDirectory=; the unit is
    enabled with ``systemctl --root`` and verified with ``systemd-analyze --root``."""
    root = tmp_path / "root"
    root.mkdir()

    def rooted(word: str) -> str:
        return str(root) + word if word.startswith(("/opt/", "/etc/", "/var/")) else word

    # 1. the virtual environment: this one, behind the path the unit starts
    venv_bin = root / "opt" / "ate-master" / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    assert "/opt/ate-master/venv" in SYSTEMD[0]
    boot = " ".join(shlex.quote(w) for w in TWISTD)
    (venv_bin / "twistd").write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(ROOT)} exec {boot} \"$@\"\n")
    (venv_bin / "twistd").chmod(0o755)
    # 2. and 3. the configuration and the unit
    for command in SYSTEMD[1:3]:
        words = [rooted(w) for w in shlex.split(command) if w != "sudo"]
        subprocess.run(words, cwd=str(checkout), check=True, timeout=30)
    unit = root / "etc" / "systemd" / "system" / "ate-master.service"
    assert unit.is_file() and (root / "etc" / "ate-master" / "master.toml").is_file()
    values: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    # what systemd creates before the start, then the unit's command with --check
    for directory in values["StateDirectory"].split():
        (root / "var" / "lib" / directory).mkdir(parents=True, exist_ok=True)
    workdir = rooted(values["WorkingDirectory"])
    # "Put the job files into /var/lib/ate-master/jobs/ (e.g. the sample ...)"
    shutil.copy(checkout / "jobs" / "le306426001.xml", os.path.join(workdir, "jobs"))
    words = [rooted(w) for w in shlex.split(values["ExecStart"])] + ["--check"]
    proc = subprocess.run(words, cwd=workdir, capture_output=True, text=True, timeout=60,
                          env=env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"./jobs ({workdir}/jobs), files le#jobname#.xml (1 found" in proc.stdout
    assert "warning:" not in proc.stdout, proc.stdout
    # 4. enable (daemon-reload and --now need a running systemd)
    if shutil.which("systemctl") is None or shutil.which("systemd-analyze") is None:
        pytest.skip("systemctl/systemd-analyze are not installed on this machine")
    assert SYSTEMD[3].endswith("systemctl enable --now ate-master")
    subprocess.run(["systemctl", f"--root={root}", "enable", "ate-master"], check=True,
                   capture_output=True, timeout=30)
    assert (root / "etc" / "systemd" / "system" / "multi-user.target.wants" /
            "ate-master.service").is_symlink()
    units = root / "usr" / "lib" / "systemd" / "system"
    units.parent.mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", units, symlinks=True)
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "ate-master.service"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def bench_commands() -> list[str]:
    return [c for c in readme_commands() if BENCH_COMMAND.fullmatch(c)]


@pytest.mark.parametrize("command", bench_commands())
def test_readme_benchmarks_start(command):
    """The benchmarks are run by hand (they measure for minutes); here each one starts
    and parses its options."""
    words = shlex.split(command)
    proc = subprocess.run([sys.executable, words[1], "--help"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
