"""A whole cell as separate processes, as on a tester: mosquitto, ``twistd ate-master``,
``twistd ate-sim-sites`` and ``twistd ate-handler`` listening for the handler device on TCP;
this test is the handler device and speaks the Geringer line protocol (protocol.md §13.4).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from ate.broker import free_port
from tests.stdfread import read_stdf

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
          "--pidfile="]
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "jobs", "le306426001.xml")


def line(text: str) -> str:
    """A line with its checksum (§13.4)."""
    return f"{text}{sum(map(ord, text)) % 256:03d}"


class Device:
    """The handler device end of the line protocol."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 5)
        self.sock.settimeout(20)
        self.file = self.sock.makefile("rwb", buffering=0)

    def ask(self, text: str, *, raw: bool = False) -> str:
        self.file.write(((text if raw else line(text)) + "\n").encode())
        reply = self.file.readline().decode().strip()
        assert reply, f"no reply to {text!r}"
        return reply

    def close(self) -> None:
        self.sock.close()


def _wait(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _status(port: int):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


def test_handler_device_drives_a_cell_of_processes(broker, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    shutil.copy(FIXTURE, jobs)
    stdf = tmp_path / "stdf"
    web, line_port = free_port(), free_port()
    (tmp_path / "master.json").write_text(json.dumps({
        "broker_host": broker.host, "broker_port": broker.port, "device_id": "SCT-81-1F",
        "sites": ["0", "1", "2", "3"], "Handler": "HTO92-20F", "environment": "F1",
        "webui_host": "127.0.0.1", "webui_port": web, "jobsource": "filesystem",
        "jobformat": "xml.semi-ate", "filesystemdatasource_path": str(jobs),
        "filesystemdatasource_jobpattern": "le#jobname#.xml", "stdf_directory": str(stdf),
        "log_directory": str(tmp_path / "log")}))
    (tmp_path / "handler.json").write_text(json.dumps({
        "broker_host": broker.host, "broker_port": broker.port, "handler_type": "geringer",
        "handler_id": "HTO92-20F", "device_ids": ["SCT-81-1F"],
        "site_layout": [[0, 0], [1, 0], [0, 1], [1, 1]],
        "listen": f"tcp:{line_port}:interface=127.0.0.1"}))
    env = dict(os.environ, PYTHONPATH=ROOT)
    broker_arg = f"{broker.host}:{broker.port}"
    procs = {}
    try:
        for name, args in [
            ("sites", ["ate-sim-sites", "--config", os.path.join(ROOT, "etc", "sim-sites.toml"),
                       "--broker", broker_arg]),
            ("master", ["ate-master", "--config", str(tmp_path / "master.json")]),
            ("handler", ["ate-handler", "--config", str(tmp_path / "handler.json")]),
        ]:
            procs[name] = subprocess.Popen(
                TWISTD + ["-l", str(tmp_path / f"{name}.log")] + args, env=env,
                cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait(lambda: (_status(web) or {}).get("state") == "initialized", 60,
              "the master to be initialized")
        _wait(lambda: _accepts(line_port), 30, "the handler's line port")
        device = Device(line_port)
        try:
            # the handler becomes initialized once it has seen the master: retry briefly
            reply = _wait(lambda: (lambda r: r if r.startswith("ID|") else None)(
                device.ask("ID?|")), 30, "ID reply")
            assert reply == line("ID|SCT-81-1F|")
            assert device.ask("LL|306426.001|HS2C|25|") == line(
                "TS|2|Lot is Loaded, Test start is awaited|")
            et = device.ask("ST|04|" + "".join(f"1|P{k}|-01|002|000|" for k in range(4)))
            fields = et.split("|")
            assert fields[:2] == ["ET", "4"] and fields[2::4][:4] == ["P0", "P1", "P2", "P3"]
            et = device.ask("ST|04|1|A|-01|002|000|0|B|-01|002|000|1|C|-01|002|000|"
                            "0|D|-01|002|000|")
            assert et.split("|")[:3] == ["ET", "2", "A"] and et.split("|")[6] == "C"
            assert device.ask("ST|04|garbage|123", raw=True) == line("TS|-1|checksum error|")
            assert device.ask("LL|306426.001|HS2C|25|") == line("TS|2|Lot is Already Active|")
            assert device.ask("TS?|") == line("TS|0|OK|")
            assert device.ask("LE|") == line("TS|0|OK|")
            assert device.ask("LE|") == line("TS|-68|No Lot was Started|")
        finally:
            device.close()
    finally:
        for name in ("handler", "master", "sites"):
            proc = procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes, errors = {}, {}
        for name, proc in procs.items():
            try:  # communicate() reads stderr to its end and closes the pipe
                _, errors[name] = proc.communicate(timeout=15)
                codes[name] = proc.returncode
            except subprocess.TimeoutExpired:
                proc.kill()
                _, errors[name] = proc.communicate()
                codes[name] = "killed"
    assert codes["master"] == 0, errors["master"]
    [path] = glob.glob(str(stdf / "*.stdf"))
    records = read_stdf(path)
    assert records[0][0] == "FAR" and records[-1][0] == "MRR"
    assert [f["PART_ID"] for n, f in records if n == "PRR"] == ["P0", "P1", "P2", "P3", "A", "C"]
    assert records[-1][1]["EXC_DESC"] == ""
