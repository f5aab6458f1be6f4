"""A live cell for fuzzing and crash tests: ``twistd -n ate-master`` as a real process, the
simulated sites in this process behind gates, and one MQTT client that is both the handler
and the fuzzing publisher.  Shared by tests/integration/test_fuzz.py,
tests/integration/test_kill9_matrix.py and bench/fuzz.py.

* :class:`MasterProcess` runs the master with its own config, log file and directories;
  it measures the RSS of the process and scans its log for critical lines, tracebacks and
  unhandled errors.
* :class:`GatedSites` are the simulated sites; a gate holds what the master sends them (so
  the master stays in ``loading``, ``testing``, ``unloading`` or ``connecting`` as long as
  a test needs) or what one site publishes.
* :class:`LiveCell` puts them together: brings the master into a given state, publishes
  fuzz messages, checks after each batch that ``get-state`` is answered, settles the cell
  back to ``initialized`` and runs real lots whose bins it checks against the simulator's
  ground truth and whose STDF files it reads with pystdf and our own strict reader.
* The hypothesis strategies at the end generate the payloads: right-shaped JSON with
  mutated fields, arbitrary bytes, wrong types, huge and deep values, NaN/Infinity,
  non-ASCII and invalid UTF-8, for every topic the master subscribes to, and websocket
  frames and HTTP requests for the web side.

Waiting is event driven (Deferreds that fire on a status or response, with timeouts from
the reactor); nothing sleeps.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from twisted.internet import protocol
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers

from ate.broker import free_port
from ate.config import sim_config_from_dict
from ate.mqtt.service import MqttService
from ate.sim.sites import SimSitesService
from ate.stdf import records as stdf_records
from ate.testing.peers import HandlerClient
from tests.stdfread import pystdf_records

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
JOB_FIXTURE = os.path.join(ROOT, "tests", "fixtures", "jobs", "le306426001.xml")
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
DEVICE = "SCT-81-1F"
HANDLER_ID = "HTO92-20F"
SITES = ("0", "1")
LOT = "306426.001"
PERIPHERAL = "Temperature"
#: What a master's log must never hold (twisted's text log: ``[namespace#level]``).
BAD_LOG_MARKS = ("#critical]", "Traceback (most recent call last)", "Unhandled Error",
                 "Unhandled error")


# -- the master process ------------------------------------------------------------------


def write_master_config(directory: str, broker_port: int, **over: Any) -> str:
    """A master config in ``directory`` (jobs, stdf and log directories below it)."""
    jobs = os.path.join(directory, "jobs")
    os.makedirs(jobs, exist_ok=True)
    shutil.copy(JOB_FIXTURE, os.path.join(jobs, "le306426001.xml"))
    data: dict[str, Any] = {
        "broker_host": "127.0.0.1", "broker_port": broker_port, "device_id": DEVICE,
        "sites": list(SITES), "Handler": HANDLER_ID, "environment": "F1",
        "webui_host": "127.0.0.1", "webui_port": free_port(),
        "jobsource": "filesystem", "jobformat": "xml.semi-ate",
        "filesystemdatasource_path": jobs,
        "filesystemdatasource_jobpattern": "le#jobname#.xml",
        "enable_timeouts": True, "site_layout": [[0, 0], [1, 0]],
        "stdf_directory": os.path.join(directory, "stdf"),
        "log_directory": os.path.join(directory, "log"),
        "peripherals": [PERIPHERAL],
        # short enough that a fuzzed state ends by itself within a batch or two
        "timeouts": {"startup": 30, "load": 10, "next_ack": 4, "test": 4, "unload": 10,
                     "reset": 10, "ioctl": 2},
    }
    data.update(over)
    path = os.path.join(directory, "master.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


class MasterProcess(protocol.ProcessProtocol):
    """``twistd -n ate-master`` with its log in ``<directory>/master.log``."""

    def __init__(self, reactor: Any, directory: str, broker_port: int, **config: Any) -> None:
        self.reactor = reactor
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.config_path = write_master_config(directory, broker_port, **config)
        with open(self.config_path, encoding="utf-8") as f:
            self.config = json.load(f)
        self.stdf_directory = self.config["stdf_directory"]
        self.web_port = self.config["webui_port"]
        self.log_path = os.path.join(directory, "master.log")
        self.output = b""
        self.ended: Deferred = Deferred()
        self.exit_code: int | None = None
        self.transport: Any = None
        self._log_offset = 0

    def start(self) -> "MasterProcess":
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        args = TWISTD + ["-n", "--pidfile=", "-l", self.log_path, "ate-master",
                         "--config", self.config_path]
        self.transport = self.reactor.spawnProcess(self, sys.executable, args, env=env,
                                                   path=self.directory)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.transport is None else self.transport.pid

    @property
    def running(self) -> bool:
        return self.transport is not None and self.exit_code is None and not self.ended.called

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.ended.callback(self.exit_code)

    def signal(self, name: str) -> None:
        self.transport.signalProcess(name)

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not end in time."""
        if self.running:
            self.signal("TERM")
            self.ended.addTimeout(timeout, self.reactor)
            try:
                await self.ended
            except Exception:
                if self.running:
                    self.signal("KILL")
        return self.exit_code

    def rss_bytes(self) -> int:
        """Resident set size of the master process (from /proc)."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def log_files(self) -> list[str]:
        """The log, oldest first: twistd rotates ``master.log`` to ``master.log.1`` at
        1 MB, and an older ``.1`` to ``.2`` and so on."""
        directory, name = os.path.split(self.log_path)
        rotated = sorted((int(n[len(name) + 1:]), n) for n in os.listdir(directory)
                         if n.startswith(name + ".") and n[len(name) + 1:].isdigit())
        paths = [os.path.join(directory, n) for _, n in reversed(rotated)]
        return paths + ([self.log_path] if os.path.exists(self.log_path) else [])

    def log_bytes(self, start: int = 0) -> bytes:
        """The whole log (every rotated part) from byte ``start`` on."""
        out = []
        position = 0
        for path in self.log_files():
            size = os.path.getsize(path)
            if position + size > start:
                with open(path, "rb") as f:
                    f.seek(max(0, start - position))
                    out.append(f.read(position + size - max(start, position)))
            position += size
        return b"".join(out)

    def log_tail(self, lines: int = 8) -> str:
        tail = self.log_bytes(max(0, self._log_offset - 50_000)).decode("utf-8", "replace")
        return "\n".join(line[:300] for line in tail.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_bytes().decode("utf-8", "replace")

    def new_log_problems(self) -> list[str]:
        """Critical/traceback/unhandled lines logged since the last call (with context)."""
        new = self.log_bytes(self._log_offset)
        self._log_offset += len(new)
        return bad_log_lines(new.decode("utf-8", "replace"))

    def output_problems(self) -> list[str]:
        """The same in what the process wrote to stdout/stderr."""
        return bad_log_lines(self.output.decode("utf-8", "replace"))


def bad_log_lines(text: str, context: int = 12) -> list[str]:
    """Each critical line, traceback or unhandled error, with the lines that follow."""
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        if any(mark in lines[i] for mark in BAD_LOG_MARKS):
            out.append("\n".join(line[:400] for line in lines[i:i + context]))
            i += context
        else:
            i += 1
    return out


# -- the simulated sites, gated ----------------------------------------------------------


class Gate:
    """Holds messages while closed (those ``match`` selects), in order."""

    def __init__(self) -> None:
        self.match: Callable[..., bool] | None = None
        self.held: list[tuple[Callable[..., None], tuple]] = []

    def close(self, match: Callable[..., bool] = lambda *a: True) -> None:
        self.match = match

    def passes(self, deliver: Callable[..., None], *args: Any) -> bool:
        if self.match is not None and self.match(*args):
            self.held.append((deliver, args))
            return False
        return True

    def open(self) -> None:
        """Deliver what was held, in order."""
        self.match = None
        held, self.held = self.held, []
        for deliver, args in held:
            deliver(*args)

    def discard(self) -> int:
        """Open and drop what was held (the receiver of it is gone)."""
        self.match = None
        n, self.held = len(self.held), []
        return n


class GatedSites(SimSitesService):
    """The simulated sites with a gate on what they receive and one on what they publish.

    ``inbound`` holds ``(topic, payload)`` from the master; ``outbound`` holds
    :class:`ate.sim.sites.Outbound` publications (e.g. of one site only).
    """

    def __init__(self, reactor: Any, broker_port: int, *, seed: int = 1, test_time: float = 0.0,
                 load_time: float = 0.0, client_id: str = "simsites.fuzz") -> None:
        self.inbound = Gate()
        self.outbound = Gate()
        cfg = sim_config_from_dict({
            "broker_host": "127.0.0.1", "broker_port": broker_port, "device_id": DEVICE,
            "sites": list(SITES), "seed": seed, "test_time": test_time,
            "load_time": load_time, "ptr_count": 3}, source="fuzzharness")

        def factory(*args: Any, on_message: Callable[[str, bytes], None], **kw: Any) -> Any:
            def gated(topic: str, payload: bytes) -> None:
                if self.inbound.passes(on_message, topic, payload):
                    on_message(topic, payload)
            return MqttService(*args, on_message=gated, **kw)

        super().__init__(reactor, cfg, mqtt_factory=factory, client_id=client_id)

    def _publish(self, out: Any) -> None:
        if self.outbound.passes(super()._publish, out):
            super()._publish(out)

    @property
    def truth(self) -> Any:
        return self.sites.truth


# -- STDF checks -------------------------------------------------------------------------


def stdf_problems(path: str) -> list[str]:
    """Why pystdf or our strict reader rejects ``path`` (empty if both read it whole)."""
    with open(path, "rb") as f:
        data = f.read()
    name = os.path.basename(path)
    problems = []
    if len(data) < 6:
        return [f"{name}: {len(data)} bytes, not an STDF file"]
    try:
        ours = list(stdf_records.iter_records(data))
        end = ours[-1].end if ours else 0
        if end != len(data):
            problems.append(f"{name}: our reader stops at byte {end} of {len(data)}")
        decoded = [stdf_records.decode(raw) for raw in ours]
        names = [r["type"] for r in decoded]
        if names[:1] != ["FAR"] or names[-1:] != ["MRR"]:
            problems.append(f"{name}: records run {names[:1]} ... {names[-1:]}, "
                            "expected FAR ... MRR")
    except Exception as e:  # any exception is a rejection
        problems.append(f"{name}: our reader: {type(e).__name__}: {e}")
        ours = []
    try:
        theirs = pystdf_records(data)
        if len(theirs) != len(ours):
            problems.append(f"{name}: pystdf reads {len(theirs)} records, ours {len(ours)}")
    except Exception as e:
        problems.append(f"{name}: pystdf: {type(e).__name__}: {e}")
    return problems


def stdf_files(directory: str) -> list[str]:
    try:
        return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                      if n.endswith(".stdf"))
    except FileNotFoundError:
        return []


def prrs(path: str) -> list[dict]:
    with open(path, "rb") as f:
        return [fields for name, fields in pystdf_records(f.read()) if name == "PRR"]


# -- the live cell -----------------------------------------------------------------------


class CellError(AssertionError):
    """The cell did not do what the harness asked of it (a finding, or a harness bug)."""


@dataclass
class LotResult:
    path: str
    parts: int
    problems: list[str] = field(default_factory=list)


_TRANSIENT = ("loading", "testing", "unloading")
#: The states fuzz batches start in, in turn.
FUZZ_STATES = ("initialized", "connecting", "loading", "ready", "testing", "unloading",
               "softerror", "error")


class LiveCell:
    """Master process + gated sites + one handler/fuzzing client, on ``reactor``."""

    def __init__(self, reactor: Any, broker: Any, directory: str, **master_config: Any) -> None:
        self.reactor = reactor
        self.broker = broker
        self.directory = directory
        self.master_config = master_config
        self.master: MasterProcess | None = None
        self.sites = GatedSites(reactor, broker.port)
        self.handler = HandlerClient(reactor, broker.host, broker.port, DEVICE,
                                     client_id="fuzzhandler")
        self._log_file: Any = None
        self._barrier = 0
        self._part = 0

    # -- lifecycle --

    def _log(self, event: dict) -> None:
        """What the simulated sites and the MQTT clients of this process log, for findings
        (in ``<directory>/harness.log``)."""
        namespace = event.get("log_namespace", "")
        if namespace.startswith("ate.") and self._log_file is not None:
            level = getattr(event.get("log_level"), "name", "?")
            self._log_file.write(f"{event.get('log_time', 0):.3f} [{namespace}#{level}] "
                                       f"{formatEvent(event)}\n")

    async def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self._log_file = open(os.path.join(self.directory, "harness.log"), "a",
                              encoding="utf-8", errors="backslashreplace", buffering=1)
        globalLogPublisher.addObserver(self._log)
        self.sites.startService()
        await self.sites.whenConnected()
        await self.handler.start()
        await self.start_master()
        await self.peripheral_available()

    async def peripheral_available(self) -> None:
        """The actuator (protocol.md 9.4) says it is available, whatever fuzzing said."""
        await self.publish(self.topic(f"{PERIPHERAL}/status"), b'{"status":"available"}')

    async def start_master(self, timeout: float = 60.0) -> MasterProcess:
        up = self.handler.wait_state("initialized", timeout)
        self.master = MasterProcess(self.reactor, self.directory, self.broker.port,
                                    **self.master_config).start()

        def ended(result: Any) -> Any:
            if not up.called:
                up.cancel()
            return result

        self.master.ended.addBoth(ended)
        try:
            await up
        except Exception:
            raise CellError("master did not reach initialized; output:\n"
                            + self.master.output.decode("utf-8", "replace")[-3000:]) from None
        return self.master

    async def stop(self) -> int | None:
        code = None
        try:
            if self.master is not None:
                code = await self.master.stop()
        finally:
            self.sites.inbound.discard()
            self.sites.outbound.discard()
            await self.handler.stop()
            await self.sites.stopService()
            globalLogPublisher.removeObserver(self._log)
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
        return code

    # -- talking to the master --

    def publish(self, topic: str, payload: bytes) -> Deferred:
        return self.handler.mqtt.publish(topic, payload, 2)

    async def fuzz(self, messages: Iterable[tuple[str, bytes]]) -> int:
        """Publish every (topic suffix below ``ate/D/`` or absolute topic, payload)."""
        ds = []
        for topic, payload in messages:
            ds.append(self.publish(self.topic(topic), payload))
        if ds:
            await gatherResults(ds, consumeErrors=True)
        return len(ds)

    @staticmethod
    def topic(suffix: str) -> str:
        return suffix if suffix.startswith("ate/") else f"ate/{DEVICE}/{suffix}"

    async def barrier(self, timeout: float = 20.0) -> None:
        """Everything published before has been handled by the master: an unknown command
        with a unique type is answered with an error naming it, in order."""
        self._barrier += 1
        marker = f"fuzz-barrier-{self._barrier}"
        d = self.handler.wait(lambda k, m: k == "response" and m.get("command_type") == marker,
                              timeout)
        await self.handler.send(marker)
        try:
            await d
        except Exception:
            raise CellError(f"no answer to the barrier command {marker}") from None

    async def get_state(self, timeout: float = 10.0) -> str:
        """``get-state`` after a barrier (so the answer is ours); CellError if unanswered."""
        await self.barrier(timeout)
        d = self.handler.wait_response("get-state", timeout)
        await self.handler.send("get-state")
        try:
            _, msg = await d
        except Exception:
            raise CellError("get-state not answered") from None
        return msg["payload"]["state"]

    async def command_until(self, command: str, payload: Any, states: Sequence[str],
                            timeout: float = 20.0) -> str:
        d = self.handler.wait(lambda k, m: k == "status" and m.get("state") in states, timeout)
        await self.handler.send(command, payload)
        try:
            _, msg = await d
        except Exception:
            raise CellError(f"{command}: none of {list(states)} within {timeout} s") from None
        return msg["state"]

    async def command_until_published(self, topic: str, message: dict,
                                      states: Sequence[str], timeout: float = 10.0) -> str:
        """Publish ``message`` on ``topic`` (below ``ate/D/``) as if from a site; wait for
        one of ``states``."""
        d = self.handler.wait(lambda k, m: k == "status" and m.get("state") in states, timeout)
        await self.publish(self.topic(topic), json.dumps(message).encode())
        try:
            _, msg = await d
        except Exception:
            raise CellError(f"{topic}: none of {list(states)} within {timeout} s") from None
        return msg["state"]

    async def wait_state(self, states: Sequence[str], timeout: float) -> str | None:
        d = self.handler.wait(lambda k, m: k == "status" and m.get("state") in states, timeout)
        try:
            _, msg = await d
        except Exception:
            return None
        return msg["state"]

    # -- states --

    async def settle(self, timeout: float = 60.0) -> None:
        """Back to ``initialized`` from wherever fuzzing left the cell."""
        self.sites.inbound.open()
        self.sites.outbound.open()
        await self.peripheral_available()
        deadline = self.reactor.seconds() + timeout
        while self.reactor.seconds() < deadline:
            state = await self.get_state()
            if state == "initialized":
                return
            if state == "ready":
                await self.command_until("unload", None, ("initialized", "softerror"))
            elif state in _TRANSIENT:
                # a phase ends by itself (the sites answer) or by its timeout
                await self.wait_state(("ready", "initialized", "softerror", "error"), 15)
            elif state == "connecting":
                if await self.wait_state(("initialized",), 3) is None:
                    await self.command_until("reset", None, ("initialized", "softerror"))
            else:  # softerror, error
                await self.command_until("reset", None, ("initialized", "softerror", "error"))
        raise CellError(f"cell not back to initialized within {timeout} s")

    async def enter(self, state: str) -> None:
        """From ``initialized`` (see :meth:`settle`) into ``state``; the gates stay closed
        for the phases that must last (``settle`` opens them)."""
        gate = self.sites.inbound
        if state == "initialized":
            return
        if state in ("connecting", "error"):
            gate.close()
            await self.command_until("reset", None, ("connecting",))
            if state == "error":
                d = self.wait_state(("error",), 10)
                await self.publish(self.topic("Control/status/site0"), json.dumps(
                    {"type": "status", "interface_version": 2, "software_version": 1,
                     "payload": {"state": "idle", "error_message": ""}}).encode())
                if await d is None:
                    raise CellError("no error after a Control status of interface version 2")
            return
        if state == "loading":
            gate.close()
            await self.command_until("load", {"lot_number": LOT}, ("loading",))
            return
        await self.command_until("load", {"lot_number": LOT}, ("ready",))
        if state == "ready":
            return
        if state == "testing":
            gate.close()
            await self.command_until("next", self.next_payload(), ("testing",))
            return
        if state == "unloading":
            gate.close()
            await self.command_until("unload", None, ("unloading",))
            return
        if state == "softerror":
            d = self.wait_state(("softerror",), 10)
            await self.publish(self.topic("TestApp/status/site0"), json.dumps(
                {"type": "status", "framework_version": 1, "test_version": "N/A",
                 "payload": {"state": "error", "message": ""}, "state": "error"}).encode())
            if await d is None:
                raise CellError("no softerror after a TestApp error")
            return
        raise ValueError(f"unknown state {state!r}")

    def next_payload(self) -> dict:
        sites = []
        for s in SITES:
            self._part += 1
            sites.append({"siteid": s, "partid": f"P{self._part}"})
        return {"sites": sites}

    async def api_status(self) -> dict:
        code, body = await http_call(self.reactor, self.master.web_port, "GET",
                                     "/api/v1/status", {}, b"")
        if code != 200:
            raise CellError(f"GET /api/v1/status: {code} {body[:200]!r}")
        return json.loads(body)

    async def results_at_master(self, n: int, timeout: float = 10.0) -> None:
        """Wait until the master has taken ``n`` site results of this lot (its API)."""
        deadline = self.reactor.seconds() + timeout
        while (await self.api_status()).get("parts", 0) < n:
            if self.reactor.seconds() > deadline:
                raise CellError(f"the master has not taken {n} results in {timeout} s")
            await deferLater(self.reactor, 0.05, lambda: None)

    async def next_answered(self) -> dict[str, int]:
        """One ``next`` of every site; the answered part ids and their bins."""
        payload = self.next_payload()
        d = self.handler.wait_response("next", 10)
        await self.handler.send("next", payload)
        try:
            _, msg = await d
        except Exception:
            raise CellError(f"next {payload} not answered") from None
        return {e["partid"]: e["binning"] for e in msg["payload"]["sites"]}

    # -- a real lot --

    async def run_lot(self, parts: int = 3) -> LotResult:
        """load, ``parts`` x next, unload on a settled cell; checks the bins of every
        response and of the STDF file against the simulator's ground truth."""
        await self.settle()
        before = set(stdf_files(self.master.stdf_directory))
        truth_start = len(self.sites.truth.parts)
        problems: list[str] = []
        await self.command_until("load", {"lot_number": LOT}, ("ready",))
        answered: dict[str, int] = {}
        for _ in range(parts):
            answered.update(await self.next_answered())
        state = await self.command_until("unload", None, ("initialized", "softerror"))
        if state != "initialized":
            problems.append(f"unload ended in {state}")
        truth = {p.part_id: p for p in self.sites.truth.parts[truth_start:]}
        if set(truth) != set(answered):
            problems.append(f"parts answered {sorted(answered)}, simulated {sorted(truth)}")
        for pid, binning in answered.items():
            if pid in truth and truth[pid].hard_bin != binning:
                problems.append(f"part {pid}: answered bin {binning}, "
                                f"simulated hard bin {truth[pid].hard_bin}")
        new = sorted(set(stdf_files(self.master.stdf_directory)) - before)
        if len(new) != 1:
            raise CellError(f"expected one new datalog for the lot, found {new}")
        path = new[0]
        problems += stdf_problems(path)
        if not problems:
            got = {p["PART_ID"]: (p["SOFT_BIN"], p["HARD_BIN"]) for p in prrs(path)}
            want = {pid: (p.soft_bin, p.hard_bin) for pid, p in truth.items()}
            if got != want:
                problems.append(f"{os.path.basename(path)}: PRR bins {got}, simulated {want}")
            base = path[:-len(".stdf")]
            for suffix in (".summary.json", ".summary.txt"):
                if not os.path.exists(base + suffix):
                    problems.append(f"{os.path.basename(base + suffix)} not written")
        return LotResult(path, parts, problems)


# -- hypothesis: generating from strategies outside @given tests -------------------------


def draw(strategy: st.SearchStrategy, n: int, seed: int = 0) -> list:
    """``n`` examples of ``strategy`` (generation only: the checks run afterwards against
    the live cell, so there is nothing to shrink)."""
    out: list = []

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @hypothesis_seed(seed)
    @given(strategy)
    def collect(example: Any) -> None:
        out.append(example)

    collect()
    return out[:n]


# -- strategies: values --------------------------------------------------------------------

_BIG = 2 ** 70


def rarely(common: st.SearchStrategy, rare: st.SearchStrategy, one_in: int) -> st.SearchStrategy:
    """``rare`` about once in ``one_in`` draws, else ``common`` (the simplest draw is common)."""
    return st.integers(0, one_in - 1).flatmap(lambda i: rare if i == one_in - 1 else common)


_depth = st.sampled_from([50, 1000, 3000, 20_000, 100_000])
#: raw JSON texts that json.dumps would not produce
raw_literal = st.sampled_from([
    "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 5000, "-0", "1e-400",
    '"\\ud800"', '"\\u0000"', "null", "[]", "{}", '""', "[" * 50 + "]" * 50])
deep_json = _depth.flatmap(lambda d: st.sampled_from(["[" * d + "]" * d,
                                                      '{"a":' * d + "1" + "}" * d]))
raw_json = rarely(raw_literal, deep_json, 3)

texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.sampled_from(["", " ", "ß", "日本語", "\u202e", "\x00", "\ud800", "%s%n{}", "{0}{x}",
                     "\n\r\t", "a|b|c|d", "x" * 256, "\u00ff" * 200]),
)

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-_BIG, _BIG),
    st.sampled_from([0, -1, 1, 255, 256, 65535, 65536, 2 ** 31, 2 ** 63, -2 ** 63 - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)

huge = st.sampled_from(["y" * 70_000, "\u00e9" * 40_000]) | st.integers(1000, 100_000).map(
    lambda n: [0] * n)

hostile = rarely(st.one_of(
    scalars,
    st.lists(scalars, max_size=5),
    st.dictionaries(st.text(max_size=8), scalars, max_size=4),
    st.just({"type": "PRR"}),
), huge, 40)


class Raw:
    """A JSON fragment written into the payload as is (NaN, deep nesting, ...)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _encode(obj: Any, ascii_only: bool) -> bytes:
    raws: list[str] = []

    def default(o: Any) -> Any:
        if isinstance(o, Raw):
            raws.append(o.text)
            return f"\x01raw{len(raws) - 1}\x01"
        raise TypeError(type(o).__name__)

    text = json.dumps(obj, default=default, ensure_ascii=ascii_only, allow_nan=True)
    for i, r in enumerate(raws):
        text = text.replace(json.dumps(f"\x01raw{i}\x01", ensure_ascii=ascii_only), r)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: Any, template: dict, valid: bool = False) -> dict:
    """``template`` (values: strategies or constants) with fields dropped, replaced by
    hostile values or raw JSON, and unknown fields added; ``valid``: none of that."""
    out: dict = {}
    for key, value in template.items():
        how = 0 if valid else draw(st.integers(0, 29))
        if how <= 26:
            out[key] = draw(value) if isinstance(value, st.SearchStrategy) else value
        elif how == 27:
            continue  # dropped
        elif how == 28:
            out[key] = draw(hostile)
        else:
            out[key] = Raw(draw(raw_literal))
    if not valid and draw(st.integers(0, 9)) == 9:
        out[draw(st.text(max_size=10))] = draw(hostile)
    return out


def _m(template: dict, valid: bool = False) -> st.SearchStrategy:
    return mutated(template, valid)


# -- strategies: the shapes of protocol.md §2 ----------------------------------------------

site_ids = rarely(st.sampled_from(SITES), st.sampled_from(
    ["7", "00", "-1", "", " 0", "x", "\u0661", "1" * 300]), 3)
site_nums = st.one_of(st.sampled_from([0, 1]), scalars)
valid_bins = st.sampled_from([1, 2, 12, 13, 20, 21])
bins = st.one_of(valid_bins, st.just(60000), scalars)
_RECORDS: dict[str, tuple[int, int, dict]] = {}


def _record(kind: str, typ: int, sub: int, fields: dict) -> st.SearchStrategy:
    base = {"type": st.one_of(st.just(kind), hostile), "REC_LEN": None, "REC_TYP": typ,
            "REC_SUB": sub, "HEAD_NUM": st.one_of(st.just(0), scalars), "SITE_NUM": site_nums,
            "rec_id": kind}
    base.update(fields)
    _RECORDS[kind] = (typ, sub, fields)
    return _m(base)


pir = _record("PIR", 5, 10, {})
ptr = _record("PTR", 15, 10, {
    "TEST_NUM": st.one_of(st.integers(0, 5000), scalars), "TEST_FLG": 0, "PARM_FLG": 0,
    "RESULT": st.one_of(st.floats(allow_nan=True, allow_infinity=True), scalars),
    "TEST_TXT": texts, "ALARM_ID": "", "OPT_FLAG": 2, "RES_SCAL": 0, "LLM_SCAL": 0,
    "HLM_SCAL": 0, "LO_LIMIT": 0.0, "HI_LIMIT": 1.0, "UNITS": texts, "C_RESFMT": "%7.3f",
    "C_LLMFMT": "%7.3f", "C_HLMFMT": "%7.3f", "LO_SPEC": -1.0, "HI_SPEC": 2.0})
mpr = _record("MPR", 15, 15, {
    "TEST_NUM": 2000, "TEST_FLG": 0, "PARM_FLG": 0, "RTN_ICNT": 2, "RSLT_CNT": 2,
    "RTN_STAT": [0, 1], "RTN_RSLT": st.lists(st.floats(allow_nan=True), max_size=4),
    "TEST_TXT": texts, "RTN_INDX": [1, 2], "UNITS": "V"})
ftr = _record("FTR", 15, 20, {"TEST_NUM": 3000, "TEST_FLG": 0, "OPT_FLAG": 255,
                              "RTN_ICNT": 0, "PGM_ICNT": 0, "FAIL_PIN": hostile})
dtr = _record("DTR", 50, 30, {"TEXT_DAT": texts})
prr = _record("PRR", 5, 20, {
    "PART_FLG": st.one_of(st.sampled_from([0, 8]), scalars), "NUM_TEST": 3,
    "HARD_BIN": bins, "SOFT_BIN": bins, "X_COORD": st.one_of(st.just(1), scalars),
    "Y_COORD": 1, "TEST_T": st.one_of(st.integers(0, 10_000), scalars),
    "PART_ID": texts, "PART_TXT": texts, "PART_FIX": hostile})


def _valid_record(kind: str, site: int, **fixed: Any) -> st.SearchStrategy:
    """A record as a TestApp sends it; the values of the fuzz template's first choice."""
    typ, sub, fields = _RECORDS[kind]
    template = {"type": kind, "REC_LEN": None, "REC_TYP": typ, "REC_SUB": sub,
                "HEAD_NUM": 0, "SITE_NUM": site, "rec_id": kind}
    for key, value in fields.items():
        template[key] = value
    template.update(fixed)
    return _m(template, valid=True)


@st.composite
def nearly_valid_result(draw: Any, site: int) -> list[dict]:
    """A well-formed result of one part on ``site`` with at most one field of one record
    made hostile (the values a TestApp could really send: huge, non-finite, wrong type,
    non-ASCII, lone surrogates, strings longer than STDF allows)."""
    middle = draw(st.lists(st.sampled_from(["PTR", "MPR", "FTR", "DTR"]), max_size=3))
    kinds = ["PIR", *middle, "PRR"]
    records = [draw(_valid_record(k, site, **({
        "HARD_BIN": valid_bins, "SOFT_BIN": valid_bins, "TEST_T": st.integers(0, 5000),
        "PART_FLG": st.sampled_from([0, 8]), "PART_ID": st.text(max_size=12),
        "X_COORD": st.integers(-5, 5), "PART_FIX": 0} if k == "PRR" else
        {"RESULT": st.floats(-1e6, 1e6), "RTN_RSLT": st.lists(st.floats(-1e6, 1e6), min_size=2,
                                                               max_size=2),
         "FAIL_PIN": None} if k in ("PTR", "MPR", "FTR") else {})))
        for k in kinds]
    if draw(st.integers(0, 5)):
        rec = records[draw(st.integers(0, len(records) - 1))]
        key = draw(st.sampled_from(sorted(rec)))
        if draw(st.integers(0, 9)) == 9:
            del rec[key]
        else:
            rec[key] = draw(st.one_of(result_hostile, hostile))
    return records


#: values for one field of an otherwise good record
result_hostile = st.sampled_from([
    1e999, -1e999, float("nan"), 2 ** 70, -2 ** 70, 2 ** 32, -1, 65536, 1.5, "1", "",
    "\ud800", "\udcff" * 3, "x" * 256, "\u00e9" * 200, "日本語", [1, 2], {"a": 1}, True, None,
    [float("nan")] * 3, [2 ** 70], list(range(70000)),
])


@st.composite
def result_message(draw: Any) -> tuple[str, bytes]:
    site = draw(st.sampled_from(SITES))
    records = draw(nearly_valid_result(int(site)))
    return (f"TestApp/testresult/site{site}",
            _encode({"type": "testresult", "payload": records}, draw(st.booleans())))


other_record = st.sampled_from(["MIR", "MRR", "SBR", "WIR", "XYZ", "", "prr"]).flatmap(
    lambda kind: _m({"type": kind, "HEAD_NUM": 0, "SITE_NUM": 0, "LOT_ID": texts}))

result_records = st.one_of(
    st.tuples(pir, st.lists(st.one_of(ptr, mpr, ftr, dtr), max_size=4), prr).map(
        lambda t: [t[0], *t[1], t[2]]),
    st.lists(st.one_of(pir, ptr, prr, other_record), max_size=6),
    st.tuples(pir, prr, prr).map(list),
    hostile,
)

tsr = _m({"type": "TSR", "HEAD_NUM": 0, "SITE_NUM": site_nums, "TEST_TYP": "P",
          "TEST_NUM": st.one_of(st.integers(1000, 1003), scalars), "EXEC_CNT": scalars,
          "FAIL_CNT": scalars, "ALRM_CNT": 0, "TEST_NAM": texts, "SEQ_NAME": "",
          "TEST_LBL": "", "OPT_FLAG": 0, "TEST_TIM": scalars, "TEST_MIN": scalars,
          "TEST_MAX": scalars, "TST_SUMS": scalars, "TST_SQRS": scalars})

control_states = st.one_of(st.sampled_from(
    ["idle", "loading", "busy", "resetting", "error", "crash", "IDLE", "testing", ""]), hostile)
testapp_states = st.one_of(st.sampled_from(
    ["idle", "testing", "terminated", "error", "selftesting", "crash", 0]), hostile)
commands = st.one_of(st.sampled_from(
    ["load", "next", "unload", "endlot", "reset", "identify", "get-state", "site-layout",
     "get-host", "cmd", "status", "Load", ""]), hostile)
site_info = _m({"siteid": site_ids, "partid": texts, "binning": scalars,
                "logflag": scalars, "additionalinfo": scalars})
handler_payload = st.one_of(
    _m({"lot_number": st.one_of(st.just(LOT), texts), "lotnumber": texts,
        "devicetype": "HS2C", "temperature": "25"}),
    _m({"sites": st.one_of(st.lists(site_info, max_size=4), hostile)}),
    _m({"sites": st.one_of(st.lists(st.lists(scalars, max_size=3), max_size=4), hostile)}),
    hostile,
)


def _status_topic_strategy(app: str) -> st.SearchStrategy:
    return site_ids.map(lambda s: f"{app}/site{s}")


def shaped(kind: str) -> st.SearchStrategy:
    """A right-shaped message of one kind with mutated fields, as a JSON-able object."""
    if kind == "handler":
        return _m({"type": commands, "payload": handler_payload})
    if kind == "control_status":
        return _m({"type": "status", "interface_version": st.one_of(
            st.sampled_from([1, "1", 2, 1.0, True]), hostile), "software_version": 1,
            "payload": _m({"state": control_states, "error_message": texts})})
    if kind == "testapp_status":
        state = testapp_states
        return _m({"type": "status", "framework_version": 1, "test_version": "N/A",
                   "payload": _m({"state": state, "message": texts}), "state": state})
    if kind == "testresult":
        return _m({"type": st.one_of(st.just("testresult"), hostile),
                   "payload": result_records})
    if kind == "testsummary":
        return _m({"type": "testresult",
                   "payload": st.one_of(st.lists(tsr, max_size=4), hostile)})
    if kind == "strategy":
        stage = st.lists(site_ids, max_size=3)
        return _m({"type": "execution_strategy", "payload": st.one_of(
            st.lists(st.lists(stage, max_size=2), max_size=3), hostile)})
    if kind == "log":
        # no CRITICAL: a remote line is relayed at its own level (protocol.md 10.2), and
        # a relayed critical line would read as one of the master's own
        return _m({"type": "log", "payload": st.one_of(
            st.builds(lambda a, b: f"control 0|24/11/2026 06:29:50 PM |{a}|{b}",
                      st.sampled_from(["INFO    ", "ERROR   ", "WARNING ", "DEBUG   ",
                                       "MEASURE ", "?"]),
                      texts), texts, hostile)})
    if kind == "io_request":
        return _m({"type": "io-control-request", "periphery_type": st.one_of(
            st.just(PERIPHERAL), texts), "ioctl_name": texts, "parameters": st.one_of(
            st.just({"temperature": [25], "timeout": 5}), hostile)})
    if kind == "io_response":
        return _m({"type": "io-control-response", "payload": hostile, "status": hostile})
    if kind == "peripheral_status":
        return _m({"type": "status", "status": st.one_of(st.sampled_from(
            ["available", "crashed", "terminated"]), hostile)})
    if kind == "handler_status":
        return _m({"type": "status", "payload": _m({"state": st.one_of(st.sampled_from(
            ["connecting", "error", "crash", "ready"]), hostile), "message": texts})})
    raise ValueError(kind)


def fuzz_topics() -> list[tuple[str, st.SearchStrategy]]:
    """Every topic the master subscribes to (protocol.md §1.2), with its message kind."""
    per_site = [
        ("Control/status", "control_status"), ("Control/log", "log"),
        ("TestApp/status", "testapp_status"), ("TestApp/testresult", "testresult"),
        ("TestApp/testsummary", "testsummary"), ("TestApp/execution_strategy", "strategy"),
        ("TestApp/log", "log"),
    ]
    out = [("Master/cmd", st.just("Master/cmd"), "handler")]
    out += [(t, _status_topic_strategy(t), k) for t, k in per_site]
    out.append(("TestApp/io-control/request",
                site_ids.map(lambda s: f"TestApp/io-control/site{s}/request"), "io_request"))
    out.append(("P/io-control/response", st.sampled_from(
        [PERIPHERAL, "Prober", "Master", "x" * 200]).map(lambda p: f"{p}/io-control/response"),
        "io_response"))
    out.append(("P/status", st.just(f"{PERIPHERAL}/status"), "peripheral_status"))
    out.append(("Handler/status", st.just(f"ate/{HANDLER_ID}/Handler/status"),
                "handler_status"))
    return [(name, topic, kind) for name, topic, kind in out]


def _byte_mutation(data: bytes) -> st.SearchStrategy:
    n = len(data)
    return st.one_of(
        st.integers(0, max(0, n - 1)).map(lambda i: data[:i]),                   # truncated
        st.tuples(st.integers(0, max(0, n - 1)), st.integers(0, 255)).map(
            lambda t: data[:t[0]] + bytes([t[1]]) + data[t[0] + 1:]),             # one byte
        st.integers(0, n).map(lambda i: data[:i] + b"\xff\xfe\xc0\x80" + data[i:]),  # bad UTF-8
        st.just(data + data),
    )


@st.composite
def payload_for(draw: Any, kind: str) -> bytes:
    how = draw(st.integers(0, 11))
    if how <= 5:
        return _encode(draw(shaped(kind)), draw(st.booleans()))
    if how == 6:
        return draw(st.binary(max_size=300))
    if how == 7:
        return _encode(draw(hostile), True)
    if how == 8:
        return draw(raw_json).encode()
    if how == 9:
        envelope = {"handler": "type", "testresult": "payload"}.get(kind, "payload")
        return b'{"type":"testresult","%s":%s}' % (envelope.encode(), draw(raw_json).encode())
    if how == 10:
        return draw(rarely(st.sampled_from([b"", b"{", b"null", b"[]", b"\x00" * 16,
                                            b"\xef\xbb\xbf{}"]), st.just(b"x" * 300_000), 10))
    data = _encode(draw(shaped(kind)), True)
    return draw(_byte_mutation(data))


@st.composite
def mqtt_message(draw: Any) -> tuple[str, bytes]:
    """One fuzz message: (topic, payload) on a topic the master subscribes to."""
    topics = fuzz_topics()
    _name, topic, kind = draw(st.sampled_from(topics))
    return draw(topic), draw(payload_for(kind))


def mqtt_batches(size: int) -> st.SearchStrategy:
    return st.lists(mqtt_message(), min_size=size, max_size=size)


def result_batches(size: int) -> st.SearchStrategy:
    """Results of the part under test, nearly valid, for a cell in ``testing``."""
    return st.lists(result_message(), min_size=size, max_size=size)


def plan(rounds: int, size: int, seed: int, states: Sequence[str] | None = None
         ) -> list[tuple[str, list]]:
    """``rounds`` x every state of ``states``: (state, batch); in ``testing`` the batch
    starts with nearly valid results of the part under test."""
    states = tuple(states or FUZZ_STATES)
    general = draw(mqtt_batches(size), rounds * len(states), seed=seed)
    results = draw(result_batches(max(1, size // 4)), rounds, seed=seed + 1)
    out = []
    for i, batch in enumerate(general):
        state = states[i % len(states)]
        if state == "testing":
            batch = results[(i // len(states)) % len(results)] + batch
        out.append((state, batch))
    return out


# -- strategies: the web side ---------------------------------------------------------------

ui_commands = st.one_of(st.sampled_from(
    ["load", "next", "unload", "reset", "usersettings", "setloglevel", "getresults",
     "getlogs", "getlogfile", "binMap", "unknown", ""]), hostile)
ui_message = _m({"type": st.one_of(st.just("cmd"), hostile), "command": ui_commands,
                 "connectionid": texts, "lot_number": st.one_of(st.just(LOT), texts),
                 "level": st.one_of(st.sampled_from([10, 20, 30, 40]), scalars),
                 "sBin": bins, "hBin": bins,
                 "payload": st.one_of(st.lists(_m({"name": texts, "active": scalars,
                                                   "value": scalars}), max_size=3), hostile)})


@st.composite
def ws_frame(draw: Any) -> tuple[str, Any]:
    """(kind, data): ``text``/``binary`` payloads, or ``opcode`` (a raw frame)."""
    how = draw(st.integers(0, 9))
    if how <= 3:
        return "text", _encode(draw(ui_message), draw(st.booleans()))
    if how == 4:
        return "binary", draw(st.one_of(st.binary(max_size=200),
                                        st.just(b'{"type":"cmd","command":"getlogs"}')))
    if how == 5:
        return "text", draw(st.sampled_from([b"\xff\xfe", b"\xc0\x80", b'{"a":"\xed\xa0\x80"}',
                                             b"\x80abc"]))
    if how == 6:
        return "text", draw(st.sampled_from([2 ** 20, 4 * 2 ** 20])) * b"x"
    if how == 7:
        return "text", draw(raw_json).encode()
    if how == 8:
        return "opcode", draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]))
    return "text", _encode(draw(hostile), True)


API = "/api/v1"
HTTP_ROUTES = [
    ("GET", "/"), ("GET", "/information"), ("GET", "/control"), ("GET", "/records"),
    ("GET", "/logging"), ("GET", "/bin"), ("GET", "/ws"), ("GET", "/metrics"),
    ("GET", "/app.js"), ("GET", "/style.css"), ("GET", "/nonexistent"),
    ("GET", "/%2e%2e/%2e%2e/etc/passwd"), ("GET", "/%ff%fe"), ("GET", "/api"),
    ("GET", f"{API}/openapi.json"), ("GET", f"{API}/status"), ("GET", f"{API}/lot"),
    ("GET", f"{API}/results"), ("GET", f"{API}/results?last=abc"),
    ("GET", f"{API}/results?last=99999999999999999999"), ("GET", f"{API}/settings"),
    ("GET", f"{API}/logs"), ("GET", f"{API}/logs?limit=%ff"), ("GET", f"{API}/logs/file"),
    ("PUT", f"{API}/settings"), ("PUT", f"{API}/logs/level"),
    ("POST", f"{API}/commands/load"), ("POST", f"{API}/commands/next"),
    ("POST", f"{API}/commands/unload"), ("POST", f"{API}/commands/reset"),
    ("POST", f"{API}/nonexistent"),
]
http_bodies = st.one_of(
    _m({"lot_number": st.one_of(st.just(LOT), texts), "lotnumber": texts}).map(
        lambda o: _encode(o, True)),
    _m({"level": st.one_of(st.sampled_from([10, 20, 30, 40]), scalars)}).map(
        lambda o: _encode(o, True)),
    _m({"testoptions": st.one_of(st.lists(_m({"name": texts, "active": scalars,
                                              "value": scalars}), max_size=3), hostile)}).map(
        lambda o: _encode(o, True)),
    _m({"sites": st.one_of(st.lists(site_info, max_size=3), hostile)}).map(
        lambda o: _encode(o, False)),
    hostile.map(lambda o: _encode(o, True)),
    raw_json.map(str.encode),
    st.binary(max_size=300),
    st.sampled_from([b"", b"\xff\xfe\x00", b"{" * 10_000, b"x" * (2 * 2 ** 20)]),
)


@st.composite
def http_request(draw: Any) -> tuple[str, str, dict, bytes]:
    """(method, path, headers, body) on every route, with other methods as well."""
    method, path = draw(st.sampled_from(HTTP_ROUTES))
    method = draw(st.sampled_from([method, method, method, "POST", "PUT", "DELETE", "PATCH",
                                   "OPTIONS", "HEAD"]))
    ctype = draw(st.sampled_from(["application/json", "application/json; charset=latin-1",
                                  "text/plain", "multipart/form-data; boundary=x",
                                  "application/x-www-form-urlencoded", ""]))
    headers = {"Content-Type": ctype} if ctype else {}
    return method, path, headers, draw(http_bodies)


def http_body_producer(body: bytes) -> Any:
    return FileBodyProducer(io.BytesIO(body))


# -- the fuzzing run -------------------------------------------------------------------------

@dataclass
class Finding:
    batch: int
    state: str
    what: str
    messages: list = field(default_factory=list)

    def describe(self, limit: int = 3) -> str:
        shown = "\n".join(f"    {t!r}: {p[:300]!r}{' ...' if len(p) > 300 else ''}"
                          for t, p in self.messages[:limit])
        more = len(self.messages) - limit
        tail = f"\n    ... {more} more message(s) of the batch" if more > 0 else ""
        return f"batch {self.batch} (from {self.state}): {self.what}\n{shown}{tail}"


@dataclass
class FuzzReport:
    messages: int = 0
    batches: int = 0
    lots: int = 0
    stdf_files: int = 0
    rss_before: int = 0
    rss_after: int = 0
    findings: list[Finding] = field(default_factory=list)
    checked: set[str] = field(default_factory=set)
    #: why the run stopped early: the cell was no longer usable
    stopped: str | None = None

    def summary(self) -> str:
        rss = (f"RSS {self.rss_before / 2**20:.1f} -> {self.rss_after / 2**20:.1f} MB, "
               if self.rss_before and self.rss_after else "")
        return (f"{self.messages} messages in {self.batches} batches, {self.lots} lots "
                f"checked, {self.stdf_files} STDF files read, {rss}"
                f"{len(self.findings)} finding(s)")


async def fuzz_mqtt(cell: LiveCell, batches: Iterable[tuple[str, list]], report: FuzzReport,
                    *, lot_every: int = 8, parts: int = 3, dump: str | None = None
                    ) -> FuzzReport:
    """Each (state, batch) of :func:`plan`: the batch published with the cell in that
    state, get-state after each; a real lot every ``lot_every`` batches.  After each batch
    the cell is settled and the datalogs the batch left are read.  Findings (with their
    batch) go to ``report``; ``dump`` is a directory where each finding's whole batch is
    saved as JSON lines.  Stops at a finding that leaves the cell unusable."""
    for state, batch in batches:
        i = report.batches
        report.batches += 1
        try:
            await cell.enter(state)
            report.messages += await cell.fuzz(batch)
            await cell.get_state()
            await cell.settle()
        except CellError as e:
            _found(report, Finding(i, state, f"{e}; the master's log ends:\n"
                                   + cell.master.log_tail(), batch), dump)
            _log_findings(cell, report, i, state, batch, dump, "logged")
            report.stopped = str(e)
            return report
        _log_findings(cell, report, i, state, batch, dump, "logged")
        _stdf_findings(cell, report, i, state, batch, dump)
        if i % lot_every == lot_every - 1 and not await check_lot(
                cell, report, i, state, parts, batch, dump):
            return report
    return report


async def check_lot(cell: LiveCell, report: FuzzReport, i: int, state: str, parts: int,
                    batch: list, dump: str | None) -> bool:
    """A real lot after batch ``i``; False if the cell could not run it."""
    try:
        lot = await cell.run_lot(parts)
    except CellError as e:
        _found(report, Finding(i, state, f"the following lot: {e}", batch), dump)
        _log_findings(cell, report, i, state, batch, dump, "logged during the lot")
        report.stopped = f"the following lot: {e}"
        return False
    report.lots += 1
    report.checked.add(lot.path)
    if lot.problems:
        _found(report, Finding(i, state, "the following lot: " + "; ".join(lot.problems),
                               batch), dump)
    _log_findings(cell, report, i, state, batch, dump, "logged during the lot")
    return True


def _log_findings(cell: LiveCell, report: FuzzReport, i: int, state: str, batch: list,
                  dump: str | None, what: str) -> None:
    problems = cell.master.new_log_problems()
    if problems:
        _found(report, Finding(i, state, f"{what}:\n" + "\n".join(problems), batch), dump)


def _stdf_findings(cell: LiveCell, report: FuzzReport, i: int, state: str, batch: list,
                   dump: str | None) -> None:
    """Read the datalogs finalised since the last check (the cell is settled: none open)."""
    for path in stdf_files(cell.master.stdf_directory):
        if path in report.checked:
            continue
        report.checked.add(path)
        report.stdf_files += 1
        problems = stdf_problems(path)
        if problems:
            _found(report, Finding(i, state, "; ".join(problems), batch), dump)


def _found(report: FuzzReport, finding: Finding, dump: str | None) -> None:
    report.findings.append(finding)
    if dump is not None:
        os.makedirs(dump, exist_ok=True)
        path = os.path.join(dump, f"batch-{finding.batch}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for topic, payload in finding.messages:
                f.write(json.dumps({"topic": topic,
                                    "payload": payload.decode("latin-1")}) + "\n")
        finding.what += f" (batch saved in {path}, payload bytes as latin-1)"


def check_all_stdf(directory: str, report: FuzzReport) -> None:
    """Every datalog the run left must be readable by pystdf and our strict reader."""
    for path in stdf_files(directory):
        if path in report.checked:
            continue
        report.checked.add(path)
        report.stdf_files += 1
        problems = stdf_problems(path)
        if problems:
            report.findings.append(Finding(-1, "-", "; ".join(problems)))


# -- the web side ----------------------------------------------------------------------------


class WsClient:
    """One websocket connection to the master's ``/ws``, reconnected after the server
    closes it (as it must for invalid UTF-8 or unknown frame opcodes)."""

    def __init__(self, reactor: Any, port: int) -> None:
        self.reactor = reactor
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.proto: Any = None
        self.received: list[dict] = []
        self.closes: list[Any] = []
        self._waiters: list[tuple[Callable[[dict], bool], Deferred]] = []

    async def connect(self, timeout: float = 10.0) -> Any:
        client = self
        opened: Deferred = Deferred()

        class Proto(WebSocketClientProtocol):
            def onOpen(self) -> None:
                opened.callback(self)

            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                try:
                    msg = json.loads(payload)
                except ValueError:
                    msg = {"type": "<not json>", "payload": payload[:200]}
                client._received(msg)

            def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
                client.closes.append(code)
                if client.proto is self:
                    client.proto = None
                    waiters, client._waiters = client._waiters, []
                    for _predicate, d in waiters:  # nothing more comes on this connection
                        d.errback(CellError(f"websocket closed: {code} {reason}"))
                if not opened.called:
                    opened.errback(CellError(f"websocket closed before open: {code} {reason}"))

        factory = WebSocketClientFactory(self.url)
        factory.protocol = Proto
        factory.setProtocolOptions(autoFragmentSize=0, maxMessagePayloadSize=0,
                                   maxFramePayloadSize=0)
        connectWS(factory)
        opened.addTimeout(timeout, self.reactor)
        self.proto = await opened
        return self.proto

    def _received(self, msg: dict) -> None:
        self.received.append(msg)
        del self.received[:-200]
        for waiter in list(self._waiters):
            if waiter[0](msg):
                self._waiters.remove(waiter)
                waiter[1].callback(msg)

    def wait(self, predicate: Callable[[dict], bool], timeout: float = 10.0) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append((predicate, d))
        d.addTimeout(timeout, self.reactor)
        return d

    async def send(self, kind: str, data: Any) -> None:
        if self.proto is None:
            await self.connect()
        if kind == "opcode":
            self.proto.sendFrame(opcode=data, payload=b"fuzz")
        else:
            self.proto.sendMessage(data, isBinary=(kind == "binary"))

    async def barrier(self, timeout: float = 20.0) -> None:
        """A ``getresults`` answered means the frames before it were handled."""
        for _attempt in range(3):
            if self.proto is None:
                await self.connect()
            d = self.wait(lambda m: m.get("type") == "testresults", timeout)
            proto = self.proto
            proto.sendMessage(b'{"type":"cmd","command":"getresults"}')
            try:
                await d
                return
            except Exception:
                if self.proto is proto:
                    raise CellError("websocket: getresults not answered") from None
        raise CellError("websocket: the connection keeps closing")

    def close(self) -> None:
        if self.proto is not None:
            self.proto.sendClose(1000)
            self.proto = None


async def fresh_ws_works(reactor: Any, port: int) -> None:
    """A new UI connection gets its start messages (protocol.md §11.2)."""
    client = WsClient(reactor, port)
    status = client.wait(lambda m: m.get("type") == "status")
    await client.connect()
    try:
        await status
    except Exception:
        raise CellError("websocket: a new connection got no status") from None
    finally:
        client.close()


async def http_call(reactor: Any, port: int, method: str, path: str, headers: dict,
                    body: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    agent = Agent(reactor)
    hdrs = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
    d = agent.request(method.encode(), f"http://127.0.0.1:{port}{path}".encode(), hdrs,
                      http_body_producer(body) if body or method in ("POST", "PUT") else None)
    d.addTimeout(timeout, reactor)
    response = await d
    if method == "HEAD":
        return response.code, b""
    body_done: Deferred = Deferred()
    response.deliverBody(_Collect(body_done))
    body_done.addTimeout(timeout, reactor)
    return response.code, await body_done


class _Collect(protocol.Protocol):
    """A response body, whole or as far as it came (the server may close after a 400)."""

    def __init__(self, done: Deferred) -> None:
        self.done = done
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(b"".join(self.chunks))


async def fuzz_web(cell: LiveCell, steps: Iterable[tuple[str, list, list]], report: FuzzReport,
                   *, lot_every: int = 4, parts: int = 2, dump: str | None = None
                   ) -> FuzzReport:
    """Each (state, websocket frames, HTTP requests): sent with the cell in that state;
    then the websocket and get-state must answer, no HTTP answer may be a 5xx, and every
    ``lot_every`` steps a real lot is checked."""
    port = cell.master.web_port
    ws = WsClient(cell.reactor, port)
    try:
        for state, frames, requests in steps:
            i = report.batches
            report.batches += 1
            shown = [(f"ws {k}", d if isinstance(d, bytes) else str(d).encode())
                     for k, d in frames] + [
                (f"{m} {p} {h}", b) for m, p, h, b in requests]
            try:
                await cell.enter(state)
                for kind, data in frames:
                    await ws.send(kind, data)
                    report.messages += 1
                await ws.barrier()

                for method, path, headers, body in requests:
                    code, answer = await http_call(cell.reactor, port, method, path, headers,
                                                   body)
                    report.messages += 1
                    if code == 500 or code > 501:  # 501: a method nobody implements
                        _found(report, Finding(i, state, f"HTTP {method} {path}: {code} "
                                               f"{answer[:300]!r}", shown), dump)
                await cell.get_state()
                await fresh_ws_works(cell.reactor, port)
                await cell.settle()
            except Exception as e:
                _found(report, Finding(i, state, f"{type(e).__name__}: {e}", shown), dump)
                _log_findings(cell, report, i, state, shown, dump, "logged")
                report.stopped = f"{type(e).__name__}: {e}"
                return report
            _log_findings(cell, report, i, state, shown, dump, "logged")
            _stdf_findings(cell, report, i, state, shown, dump)
            if i % lot_every == lot_every - 1 and not await check_lot(
                    cell, report, i, state, parts, shown, dump):
                return report
    finally:
        ws.close()
    return report


def web_plan(rounds: int, frames: int, requests: int, seed: int,
             states: Sequence[str] = ("initialized", "ready", "testing", "softerror")
             ) -> list[tuple[str, list, list]]:
    """``rounds`` x ``states``: (state, websocket frames, HTTP requests)."""
    n = rounds * len(states)
    ws = draw(st.lists(ws_frame(), min_size=frames, max_size=frames), n, seed=seed)
    http = draw(st.lists(http_request(), min_size=requests, max_size=requests), n,
                seed=seed + 1)
    return [(states[i % len(states)], ws[i % len(ws)], http[i % len(http)])
            for i in range(n)]
