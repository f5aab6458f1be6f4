"""A real cell: mosquitto, ``twistd ate-master``, one real Semi-ATE Control app per site
(``semi-ate-control-app`` 1.0.17, ``launch_control -s N``) and the real TestApp framework
(``semi-ate-test-app`` 1.0.17) running tests/fixtures/testapp/minimal_program.py, two
sites. This test is the handler (``Master/cmd``) and watches the sites' topics.

The bin of every part follows from its part id (see the program's docstring), so every
``next`` response and every PRR of the datalog is checked. The peers run from their own
virtual environment, built on first use (tests/integration/realpeers.py).
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import time
from functools import partial
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from ate.testing.peers import HandlerClient
from realpeers import (
    DEVICE,
    SITES,
    SiteMonitor,
    install_program,
    master_config,
    master_log_lines,
    peers_venv,
    start_control,
    start_master,
    write_job,
)
from tests.stdfread import read_stdf

__all__ = ["peers_venv"]  # the fixture, used by name

LOT = "730001.001"
#: The job's bin table (tests/fixtures/testapp/job_template.xml): soft bin -> hard bin.
HARD_BIN = {1: 1, 11: 5, 12: 6}
CYCLES = 300

#: every failure of the group is consumed: one is raised, none is left unhandled
gather = partial(gatherResults, consumeErrors=True)


def part_number(part_id: str) -> int:
    found = re.search(r"(\d+)$", part_id)
    return int(found.group(1)) if found else 0


def soft_bin(part_id: str) -> int:
    """The program's rule: contact fails for n % 4 in (1, 3), leakage for (2, 3); the first
    failure decides."""
    return {0: 1, 1: 11, 2: 12, 3: 11}[part_number(part_id) % 4]


def hard_bin(part_id: str) -> int:
    return HARD_BIN[soft_bin(part_id)]


#: what the real TestApp's exit at terminate says when its paho thread races its shutdown:
#: a callback handed to the executor it already shut down, or a read of the socket its
#: disconnect already closed (paho 1.6.1 ``self._sock.recv``)
TEARDOWN_RACES = ("cannot schedule new futures after interpreter shutdown",
                  "OSError: [Errno 9] Bad file descriptor")


class Cell:
    """Broker (the test's), master and Control apps as processes; handler and monitor on
    the test's reactor."""

    def __init__(self, reactor, broker, venv: Path, workdir: Path) -> None:
        self.reactor = reactor
        self.broker = broker
        self.venv = venv
        self.workdir = workdir
        (workdir / "stdf").mkdir()
        self.programs = install_program(workdir)
        write_job(workdir, LOT, self.programs / "minimal_program.py")
        self.config = master_config(workdir, broker)
        self.handler = HandlerClient(reactor, broker.host, broker.port, DEVICE,
                                     client_id="realpeers-handler")
        self.monitor = SiteMonitor(reactor, broker)
        self.master = None
        self.controls: dict[str, object] = {}

    async def connect_clients(self) -> None:
        await self.handler.start()
        await self.monitor.start()

    def start_master(self) -> None:
        self.master = start_master(self.workdir, self.config)

    def start_controls(self) -> None:
        for site in SITES:
            self.controls[site] = start_control(self.venv, self.workdir, site, self.broker)

    async def start(self, order: str = "master-first") -> None:
        await self.connect_clients()
        if order == "master-first":
            connecting = self.handler.wait_state("connecting", 60)
            self.start_master()
            await connecting
            initialized = self.handler.wait_state("initialized", 60)
            self.start_controls()
            await initialized
        else:
            idle = [self.monitor.wait(
                lambda t, m, s=site: t == f"Control/status/site{s}"
                and SiteMonitor.state_of(m) == "idle", 60) for site in SITES]
            self.start_controls()
            await gather(idle)
            initialized = self.handler.wait_state("initialized", 60)
            self.start_master()
            await initialized

    async def stop(self) -> int | None:
        code = None
        if self.master is not None:
            code = self.master.terminate()
        for proc in self.controls.values():
            proc.kill_group()
        await self.handler.stop()
        await self.monitor.stop()
        return code

    # -- handler commands ---------------------------------------------------------------

    async def load(self, lot: str = LOT) -> None:
        ready = self.handler.wait_state("ready", 120)
        await self.handler.send("load", {"lot_number": lot})
        await ready

    async def unload(self) -> None:
        done = self.handler.wait(lambda k, m: k == "status" and m.get("state") in (
            "initialized", "softerror"), 60)
        await self.handler.send("unload")
        _, status = await done
        message = status.get("message") or ""
        if status["state"] == "softerror" and any(r in message for r in TEARDOWN_RACES):
            # The real TestApp (semi-ate-test-app 1.0.17) sometimes exits non-zero at
            # terminate: its paho thread races its shutdown (TEARDOWN_RACES).  Its Control
            # app then reports error and the master softerrors in unloading, as the contract
            # says (3.3).  Seen only under load; a bug of that app, not of ours: reported as
            # an expected failure, never hidden.
            pytest.xfail(f"real TestApp teardown race: {status['message']}")
        assert status["state"] == "initialized", status

    async def next(self, parts: dict[str, str]) -> tuple[list[dict], float]:
        """One ``next`` for {site: part id}; returns the response's sites and its time.

        The entries carry every field the Semi-ATE handler app sends: the real TestApp reads
        ``partid`` and ``binning`` and goes to ``error`` (KeyError) without ``binning``."""
        answered = self.handler.wait(lambda k, m: k == "response"
                                     and m.get("type") in ("next", "error"), 30)
        started = time.perf_counter()
        await self.handler.send("next", {"sites": [
            {"siteid": s, "partid": p, "binning": -1, "logflag": 0, "additionalinfo": 0}
            for s, p in parts.items()]})
        _, msg = await answered
        elapsed = time.perf_counter() - started
        assert msg["type"] == "next", msg
        return msg["payload"]["sites"], elapsed

    async def state(self) -> dict:
        _, msg = await self.handler.command("get-state")
        return msg["payload"]

    def stdf_files(self) -> list[Path]:
        return sorted((self.workdir / "stdf").glob("*.stdf"))

    def warnings(self) -> list[list[str]]:
        return [f for f in master_log_lines(self.workdir) if f[2] in ("WARNING", "ERROR")]


def expected_response(parts: dict[str, str]) -> list[dict]:
    return [{"siteid": s, "partid": p, "binning": hard_bin(p), "logflag": 0, "additionalinfo": 0}
            for s, p in parts.items()]


def prrs(path: Path) -> list[dict]:
    return [f for name, f in read_stdf(str(path)) if name == "PRR"]


@pytest_twisted.async_yield_fixture
async def cell(reactor, broker, peers_venv, tmp_path):
    c = Cell(reactor, broker, peers_venv, tmp_path)
    try:
        yield c
    finally:
        code = await c.stop()
    if c.master is not None:  # SIGTERM: the master finalises, says goodbye, exits 0
        assert code == 0, (c.workdir / "twistd.log").read_text(errors="replace")[-3000:]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("order", ["master-first", "controls-first"])
async def test_startup_in_either_order_then_a_lot(cell, order):
    """Controls first is the start-up race the reference loses (protocol 3.3): the Control
    apps are idle before the master's reset, whose ``resetting`` echo must not hurt."""
    await cell.start(order)
    await cell.load()
    parts = {"0": "A4", "1": "B5"}
    sites, _ = await cell.next(parts)
    assert sites == expected_response(parts)
    await cell.unload()
    assert "softerror" not in cell.handler.states()
    assert cell.warnings() == []
    [path] = cell.stdf_files()
    assert sorted((p["PART_ID"], p["HARD_BIN"]) for p in prrs(path)) == [("A4", 1), ("B5", 5)]


@pytest_twisted.ensureDeferred
async def test_lot_of_300_cycles_with_every_bin_checked(cell):
    await cell.start("controls-first")
    await cell.load()
    expected: dict[str, tuple[str, int, int]] = {}  # part id -> (site, soft bin, hard bin)
    times = []
    checked = 0
    for i in range(CYCLES):
        parts = {"0": f"A{i}", "1": f"B{i + 1}"}
        sites, seconds = await cell.next(parts)
        assert sites == expected_response(parts), f"cycle {i}"
        checked += len(sites)
        times.append(seconds)
        for site, part in parts.items():
            expected[part] = (site, soft_bin(part), hard_bin(part))
    for parts in ({"1": "C7"}, {"0": "D2"}):  # a subset: only the listed site is tested
        sites, _ = await cell.next(parts)
        assert sites == expected_response(parts)
        checked += 1
        for site, part in parts.items():
            expected[part] = (site, soft_bin(part), hard_bin(part))
    await cell.unload()
    assert "softerror" not in cell.handler.states()
    assert cell.warnings() == []

    [path] = cell.stdf_files()
    records = read_stdf(str(path))
    names = [n for n, _ in records]
    assert names[:3] == ["FAR", "MIR", "SDR"] and names[-1] == "MRR"
    assert records[-1][1]["EXC_DESC"] == ""
    found = {p["PART_ID"]: (str(p["SITE_NUM"]), p["SOFT_BIN"], p["HARD_BIN"])
             for p in prrs(path)}
    assert names.count("PRR") == len(expected) == 2 * CYCLES + 2
    assert found == expected
    for p in prrs(path):
        assert bool(p["PART_FLG"] & 8) == (p["SOFT_BIN"] != 1), p
    assert names.count("PTR") == 2 * len(expected)  # two tests, one PTR each, every part
    hbr = {f["HBIN_NUM"]: f["HBIN_CNT"] for n, f in records if n == "HBR" and f["HEAD_NUM"] == 255}
    assert hbr == {h: sum(1 for _, _, hb in expected.values() if hb == h) for h in (0, 1, 5, 6)}
    tsr = [f for n, f in records if n == "TSR" and f["HEAD_NUM"] == 0]
    assert sorted((f["SITE_NUM"], f["TEST_NUM"], f["EXEC_CNT"]) for f in tsr) == [
        (0, 101, CYCLES + 1), (0, 201, CYCLES + 1), (1, 101, CYCLES + 1), (1, 201, CYCLES + 1)]
    [pcr] = [f for n, f in records if n == "PCR" and f["HEAD_NUM"] == 255]
    assert pcr["PART_CNT"] == len(expected)
    assert pcr["GOOD_CNT"] == sum(1 for _, sb, _ in expected.values() if sb == 1)

    ms = sorted(t * 1000 for t in times)
    print(f"\nreal peers, 2 sites: {CYCLES} cycles + 2 subset parts, {checked} bins checked, "
          f"handler next -> response p50 {statistics.median(ms):.1f} ms, "
          f"p90 {ms[int(0.9 * len(ms))]:.1f} ms, max {ms[-1]:.1f} ms")


@pytest_twisted.ensureDeferred
async def test_testapp_killed_mid_part(cell):
    """Both TestApps hold a part; site 1's is killed (SIGKILL): softerror naming site 1. Site
    0 finishes its part after the softerror and its result is in the (aborted) datalog;
    reset brings the cell back to initialized and a new lot runs."""
    await cell.start("master-first")
    await cell.load()
    sites, _ = await cell.next({"0": "A0", "1": "B1"})
    assert sites == expected_response({"0": "A0", "1": "B1"})
    release = cell.programs / "release"
    held = [cell.monitor.wait(lambda t, m, s=site: t == f"TestApp/status/site{s}"
                              and SiteMonitor.state_of(m) == "testing") for site in SITES]
    await cell.handler.send("next", {"sites": [
        {"siteid": "0", "partid": "HOLD8", "binning": -1, "logflag": 0, "additionalinfo": 0},
        {"siteid": "1", "partid": "HOLD9", "binning": -1, "logflag": 0, "additionalinfo": 0}]})
    await gather(held)
    [testapp1] = cell.controls["1"].children()
    softerror = cell.handler.wait_state("softerror", 30)
    os.kill(testapp1, signal.SIGKILL)
    await softerror
    assert (await cell.state())["message"] == "testapp 1 crashed"
    late = cell.monitor.wait(lambda t, m: t == "TestApp/testresult/site0")
    release.write_text("")
    await late
    # the Control app of site 1 reports the TestApp's exit as an error; softerror keeps
    # the first message
    await cell.monitor.wait(lambda t, m: t == "Control/status/site1"
                            and SiteMonitor.state_of(m) == "error",
                            since=0)
    assert (await cell.state())["message"] == "testapp 1 crashed"
    release.unlink()

    initialized = cell.handler.wait_state("initialized", 60)
    await cell.handler.send("reset")
    await initialized
    [aborted] = cell.stdf_files()
    records = read_stdf(str(aborted))
    assert records[-1][0] == "MRR"
    assert "testapp 1 crashed" in records[-1][1]["EXC_DESC"]
    assert sorted((p["PART_ID"], p["SITE_NUM"], p["HARD_BIN"]) for p in prrs(aborted)) == [
        ("A0", 0, 1), ("B1", 1, 5), ("HOLD8", 0, 1)]

    await cell.load()  # a new lot on the same cell: new TestApps
    for i in range(3):
        parts = {"0": f"E{2 * i}", "1": f"F{2 * i + 1}"}
        sites, _ = await cell.next(parts)
        assert sites == expected_response(parts)
    await cell.unload()
    second = [p for p in cell.stdf_files() if p != aborted]
    assert len(second) == 1
    records = read_stdf(str(second[0]))
    assert records[-1][0] == "MRR" and records[-1][1]["EXC_DESC"] == ""
    assert sorted(p["PART_ID"] for p in prrs(second[0])) == ["E0", "E2", "E4", "F1", "F3", "F5"]


@pytest_twisted.ensureDeferred
async def test_job_whose_program_is_missing(cell):
    """The Control app checks that the program exists, goes to ``error`` with an empty
    ``error_message`` and puts the reason only on its log topic: the master's softerror
    names the site and that reason, the site's last ERROR line before its ``error`` status.

    Not its last line: the app logs ``control state is: error`` (INFO, published once its
    log level is INFO or lower, as in its documented config or after the master's
    ``setloglevel`` 20) right after publishing the status, and that QoS 0 line overtakes
    the QoS 2 status at the broker, so it usually arrives first."""
    missing = cell.programs / "missing_program.py"
    write_job(cell.workdir, "730002.001", missing)
    await cell.start("master-first")
    since = cell.monitor.mark()
    softerror = cell.handler.wait_state("softerror", 60)
    await cell.handler.send("load", {"lot_number": "730002.001"})
    await softerror
    message = (await cell.state())["message"]
    found = re.fullmatch(r"site ([01]): control app reported error: (.*)", message)
    assert found, message
    site, reason = found.groups()
    assert reason == f"Test program could not be found: {cell.programs}/missing_program.py"
    # what the Control app of that site published: its log line before its error status
    seen = cell.monitor.received[since:]
    status_at = next(i for i, (t, m) in enumerate(seen) if t == f"Control/status/site{site}"
                     and SiteMonitor.state_of(m) == "error")
    assert seen[status_at][1]["payload"]["error_message"] == ""
    lines = [m["payload"].split("|", 3) for t, m in seen[:status_at]
             if t == f"Control/log/site{site}"]
    errors = [f[3].strip() for f in lines if f[2].strip() == "ERROR"]
    assert errors and errors[-1] == reason

    initialized = cell.handler.wait_state("initialized", 60)
    await cell.handler.send("reset")
    await initialized


def test_peers_venv_built_when_absent_or_stale_reused_otherwise(tmp_path, monkeypatch):
    """The builder's bookkeeping, with pip replaced by a recorder (no network)."""
    import realpeers

    calls: list[list[str]] = []

    def run(args, what):
        calls.append(args)
        if args[1:3] == ["-m", "venv"]:
            (Path(args[3]) / "bin").mkdir(parents=True)
            (Path(args[3]) / "bin" / "python").write_text("")

    monkeypatch.setattr(realpeers, "_run", run)
    venv = tmp_path / "peers"
    assert realpeers.ensure_peers_venv(venv) == venv  # absent: built
    installs = [c[c.index("--no-build-isolation") + 1:] for c in calls if "install" in c]
    assert installs == [list(realpeers.BUILD_TOOLS), list(realpeers.PINNED),
                        list(realpeers.LAST)]
    assert all("==" in r for r in realpeers.BUILD_TOOLS + realpeers.PINNED + realpeers.LAST)
    assert (venv / realpeers.MARKER.name).read_text() == realpeers._marker_text()
    calls.clear()
    realpeers.ensure_peers_venv(venv)  # current: reused
    assert calls == []
    (venv / realpeers.MARKER.name).write_text("python 3.11\nsemi-ate-test-app==1.0.16\n")
    (venv / "leftover").write_text("")
    realpeers.ensure_peers_venv(venv)  # stale: rebuilt from scratch
    assert calls and not (venv / "leftover").exists()

    def fail(args, what):
        raise realpeers.PeersVenvError(f"{what} failed")

    monkeypatch.setattr(realpeers, "_run", fail)
    (venv / realpeers.MARKER.name).unlink()
    with pytest.raises(realpeers.PeersVenvError):
        realpeers.ensure_peers_venv(venv)  # a failed build raises, leaves no marker
    assert not (venv / realpeers.MARKER.name).exists()
