"""Simulated sites: N Control apps and their TestApps, speaking the wire contract.

The simulator plays the *sites' side* of protocol.md (1.3, 2.4-2.11, 3.3/3.4, Appendix A):

* A Control app publishes its state on connect, on every change, and again on every
  ``Master/status`` it receives.  ``loadTest`` takes it ``idle -> loading -> busy`` and starts
  the TestApp, which reports ``idle``.  ``reset`` kills the TestApp and goes
  ``resetting -> idle``.
* A TestApp answers ``next`` with ``testing``, then (after the test time) ``idle`` followed by
  one test result; ``terminate`` with a summary and ``terminated`` (its Control app then goes
  ``idle``); ``getexecutionstrategy`` with a one-stage strategy covering all sites;
  ``sethbin`` remaps a soft bin; ``setloglevel`` is accepted.

The core (:class:`SimSites`, :class:`SimSite`) is a plain object: it receives decoded
commands through :meth:`SimSites.handle` (or raw MQTT messages through
:meth:`SimSites.received`), takes time from an injected ``IReactorTime`` and emits every
publication as an :class:`Outbound` through an injected ``send`` callable.

Why it does not use :mod:`ate.protocol`
---------------------------------------
The simulator stands in for *other people's* programs (the Semi-ATE Control app and
TestApp), so it reads and writes the wire on its own, deliberately, with its own topic
strings, its own JSON and its own :func:`decode`:

* if it shared :class:`ate.protocol.Codec` with the master, a mistake in the codec would be
  made on both sides of every integration test and no test could see it; written
  separately, each side checks the other (tests/unit/test_sim_codec.py runs every
  publication of the simulator through the master's codec, byte for byte against the
  codec's own encoding, and every command the codec encodes through the simulator);
* it is as lenient as the programs it imitates, where the master's codec is strict: site
  ids given as integers are taken, a ``loadTest`` without ``testapp_script_path`` still
  starts a TestApp (the benchmark's floor relay sends only the bin table), unknown fields
  are ignored.

Only facts that are not an encoding are shared: the log levels
(:data:`ate.protocol.LOG_LEVELS`) and the configuration's shapes and defaults
(:mod:`ate.config`).

:class:`SimSitesService` wires the core to MQTT (``ate.mqtt.MqttService``).  The wire
reading and writing is in :mod:`ate.sim.wire`, the ground truth in :mod:`ate.sim.truth`
(both re-exported here), which fault hits which part in :mod:`ate.sim.faults`.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ate.config import SIM_DEFAULTS, SimFaults
from ate.protocol import LOG_LEVEL_NAMES, LOG_LEVELS
from ate.sim.faults import FaultPlan, is_pass_bin
from ate.sim.truth import GroundTruth, PartRecord
from ate.sim.wire import (
    CONTROL_STATES,
    TESTAPP_WILL_PAYLOAD,
    ControlCommand,
    MasterStatusSeen,
    Outbound,
    SimInputError,
    SiteMessage,
    TestAppCommand,
    control_status_bytes,
    control_status_payload,
    control_will,
    decode,
    testapp_status_bytes,
    testapp_status_payload,
    testapp_will,
)

__all__ = [
    "CONTROL_STATES",
    "ControlCommand",
    "GroundTruth",
    "MasterStatusSeen",
    "Outbound",
    "PartRecord",
    "SimInputError",
    "SimSite",
    "SimSites",
    "SimSitesService",
    "TestAppCommand",
    "control_will",
    "decode",
    "testapp_will",
]

log = Logger(namespace="ate.sim")


# --------------------------------------------------------------------------------------
# One site
# --------------------------------------------------------------------------------------


@dataclass
class _TestStats:
    """Per-test statistics of one TestApp run, for the TSR summary."""

    exec_cnt: int = 0
    fail_cnt: int = 0
    sums: float = 0.0
    sqrs: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, value: float, failed: bool) -> None:
        self.exec_cnt += 1
        self.fail_cnt += int(failed)
        self.sums += value
        self.sqrs += value * value
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)


class SimSite:
    """One site: a Control app and (when loaded) its TestApp.

    ``control_state`` is one of :data:`CONTROL_STATES`.  ``testapp_state`` is ``None`` while
    no TestApp runs, else ``idle``, ``testing`` or ``error``; a crashed TestApp is
    ``"crashed"`` and answers nothing.
    """

    def __init__(self, owner: "SimSites", site: str, index: int):
        self.owner = owner
        self.site = site
        self.index = index
        self.control_state = "idle"
        self.control_error = ""
        self.testapp_state: str | None = None
        self.control_loglevel = 20
        self.testapp_loglevel = 20
        self.parts_tested = 0                       # lifetime counter (fault numbering)
        self.hbin_map: dict[int, int] = {}          # sbin -> hbin of the running TestApp
        self.stats: dict[int, _TestStats] = {}
        self.rng = random.Random(f"{owner.seed}:{site}")
        self._control_call: IDelayedCall | None = None
        self._testapp_call: IDelayedCall | None = None
        d = owner.device_id
        self.t_control_status = f"ate/{d}/Control/status/site{site}"
        self.t_control_log = f"ate/{d}/Control/log/site{site}"
        self.t_testapp_status = f"ate/{d}/TestApp/status/site{site}"
        self.t_testapp_log = f"ate/{d}/TestApp/log/site{site}"
        self.t_result = f"ate/{d}/TestApp/testresult/site{site}"
        self.t_summary = f"ate/{d}/TestApp/testsummary/site{site}"
        self.t_strategy = f"ate/{d}/TestApp/execution_strategy/site{site}"

    # ---- emitting ------------------------------------------------------------------

    def _emit(self, app: str, topic: str, payload: dict, qos: int = 2,
              raw: bytes | None = None) -> None:
        self.owner._send(Outbound(topic, payload, qos, app, self.site, raw))

    def _log(self, app: str, level: int, message: str) -> None:
        """Publish a remote log line (protocol 2.11/10.2) if enabled and above the level."""
        threshold = self.control_loglevel if app == "Control" else self.testapp_loglevel
        if not self.owner.publish_logs or level < threshold:
            return
        name = f"{'control' if app == 'Control' else 'testapp'} {self.site}".ljust(9)
        date = time.strftime("%d/%m/%Y %I:%M:%S %p", time.localtime(self.owner.clock.seconds()))
        line = f"{name}|{date} |{LOG_LEVEL_NAMES.get(level, 'INFO').ljust(7)} |{message}"
        if app == "Control":
            self._emit(app, self.t_control_log, {"type": "log", "payload": line}, qos=0)
        else:
            self._emit(app, self.t_testapp_log, {"type": "log", "payload": line}, qos=2)

    def publish_control_state(self) -> None:
        state, error = self.control_state, self.control_error
        self._emit("Control", self.t_control_status, control_status_payload(state, error),
                   raw=control_status_bytes(state, error))

    def _set_control(self, state: str, error_message: str = "") -> None:
        self.control_state = state
        self.control_error = error_message
        self.publish_control_state()
        self._log("Control", 20, f"control state is: {state}")

    def announce_testapp(self) -> None:
        """After a reconnect a running TestApp publishes its state again (as the Semi-ATE
        TestApp does once it has subscribed again)."""
        if self.testapp_state not in (None, "crashed"):
            self._emit("TestApp", self.t_testapp_status,
                       testapp_status_payload(self.testapp_state),
                       raw=testapp_status_bytes(self.testapp_state))

    def _set_testapp(self, state: str) -> None:
        self.testapp_state = state
        self._emit("TestApp", self.t_testapp_status, testapp_status_payload(state),
                   raw=testapp_status_bytes(state))
        self._log("TestApp", 20, f"testapp state is: {state}")

    def _cancel(self) -> None:
        for call in (self._control_call, self._testapp_call):
            if call is not None and call.active():
                call.cancel()
        self._control_call = self._testapp_call = None

    @property
    def testapp_alive(self) -> bool:
        return self.testapp_state not in (None, "crashed")

    # ---- Control app ---------------------------------------------------------------

    def control_command(self, cmd: ControlCommand) -> None:
        if cmd.command == "reset":
            self._reset()
        elif cmd.command == "setloglevel":
            level = cmd.fields.get("level")
            if level in LOG_LEVELS and not isinstance(level, bool):
                self.control_loglevel = level
            else:
                log.warn("site {site}: control setloglevel: bad level {value!r}",
                         site=self.site, value=level)
        elif cmd.command == "loadTest":
            self._load(cmd)
        else:
            log.warn("site {site}: unknown Control command {command!r} ignored",
                     site=self.site, command=cmd.command)

    def _load(self, cmd: ControlCommand) -> None:
        if self.control_state != "idle":
            log.warn("site {site}: loadTest ignored in control state {state}",
                     site=self.site, state=self.control_state)
            return
        params = cmd.fields.get("testapp_params")
        if not isinstance(params, dict):
            self._set_control("loading")
            self._set_control("error", "loadTest: testapp_params missing")
            return
        if not isinstance(params.get("testapp_script_path"), str):
            # a simulator runs no program: a loader that sends only the bin table (such as
            # the benchmark's floor relay) still gets simulated TestApps
            log.info("site {site}: loadTest without testapp_script_path", site=self.site)
        hbin_map, problem = self.owner._bin_map(params.get("bin_table"))
        self._set_control("loading")
        delay = self.owner.load_time
        if self.site == self.owner.fault_site:
            delay += self.owner.faults.slow_load or 0.0
        self._control_call = self.owner.clock.callLater(
            delay, self._loaded, hbin_map, problem)

    def _loaded(self, hbin_map: dict[int, int], problem: str | None) -> None:
        self._control_call = None
        if problem is not None:
            # The real TestApp refuses to start; its non-zero exit drives the Control app.
            self._set_control("error", problem)
            return
        self.hbin_map = hbin_map
        self.stats = {}
        self._set_control("busy")
        self._set_testapp("idle")

    def _reset(self) -> None:
        """Kill the TestApp (silently) and go ``resetting -> idle``, from any state."""
        self._cancel()
        self.testapp_state = None
        self._set_control("resetting")
        self._control_call = self.owner.clock.callLater(0, self._reset_done)

    def _reset_done(self) -> None:
        self._control_call = None
        self._set_control("idle")

    def _testapp_exited(self, error_message: str | None) -> None:
        """The TestApp process is gone: the Control app goes idle, or error on a crash."""
        self._control_call = None
        if error_message is None:
            self._set_control("idle")
        else:
            self._set_control("error", error_message)

    # ---- TestApp -------------------------------------------------------------------

    def testapp_command(self, cmd: TestAppCommand) -> None:
        if not self.testapp_alive:
            log.debug("site {site}: TestApp {command} ignored: no TestApp running",
                      site=self.site, command=cmd.command)
            return
        handler = getattr(self, f"_ta_{cmd.command}", None)
        if handler is None:
            log.warn("site {site}: unknown TestApp command {command!r} ignored",
                     site=self.site, command=cmd.command)
            return
        handler(cmd)

    def _ta_next(self, cmd: TestAppCommand) -> None:
        if self.testapp_state != "idle":
            log.warn("site {site}: next in TestApp state {state}: error",
                     site=self.site, state=self.testapp_state)
            self._set_testapp("error")
            return
        part_id = ""
        job_data = cmd.fields.get("job_data")
        infos = job_data.get("sites_info") if isinstance(job_data, dict) else None
        if isinstance(infos, list):
            for info in infos:
                if isinstance(info, dict) and str(info.get("siteid")) == self.site:
                    pid = info.get("partid")
                    part_id = "" if pid is None else str(pid)
                    break
        self.parts_tested += 1
        number = self.parts_tested
        self._set_testapp("testing")
        self._testapp_call = self.owner.clock.callLater(
            self.owner.test_time, self._tested, number, part_id)

    def _tested(self, number: int, part_id: str) -> None:
        self._testapp_call = None
        owner = self.owner
        fault = owner.plan.event_for(self.site, number)
        if fault == "crash":
            owner.truth.crashes += 1
            owner.truth.faults.append(("crash", self.site, number))
            topic, _payload, _qos = testapp_will(owner.device_id, self.site)
            self.testapp_state = "crashed"
            self._emit("TestApp", topic, dict(TESTAPP_WILL_PAYLOAD))
            self._control_call = owner.clock.callLater(
                0, self._testapp_exited, "testapp exited with code 1 (crashed)")
            return
        records, sbin, hbin, passed = self._make_result(number, part_id)
        self._set_testapp("idle")
        if fault == "drop":
            owner.truth.dropped += 1
            owner.truth.faults.append(("drop", self.site, number))
            return
        topic_site = self.site
        copies = 1
        if fault == "wrong_site":
            topic_site = owner.next_site(self.site)
            owner.truth.faults.append(("wrong_site", self.site, number))
        elif fault == "duplicate":
            copies = 2
            owner.truth.faults.append(("duplicate", self.site, number))
        topic = f"ate/{owner.device_id}/TestApp/testresult/site{topic_site}"
        payload = {"type": "testresult", "payload": records}
        for _ in range(copies):
            self._emit("TestApp", topic, payload)
        owner.truth.record(
            PartRecord(topic_site, self.site, number, part_id, sbin, hbin, passed), copies)

    def _make_result(self, number: int, part_id: str) -> tuple[list[dict], int, int, bool]:
        """One part's records: PIR, ``ptr_count`` PTRs, PRR (protocol 2.8)."""
        owner = self.owner
        rng = self.rng
        sbin, hbin, fault = owner.plan.outcome(self.site, number, rng)
        if fault is not None:
            owner.truth.faults.append((fault, self.site, number))
        hbin = self.hbin_map.get(sbin, hbin)
        passed = is_pass_bin(sbin)
        site_num = int(self.site) if self.site.isdigit() else self.index
        failing_test = -1 if passed or owner.ptr_count == 0 else rng.randrange(owner.ptr_count)
        records: list[dict] = [{"type": "PIR", "REC_LEN": None, "REC_TYP": 5, "REC_SUB": 10,
                                "HEAD_NUM": 0, "SITE_NUM": site_num, "rec_id": "PIR"}]
        for t in range(owner.ptr_count):
            failed = t == failing_test
            value = round(1.0 + rng.random() * 0.5 if failed else rng.random(), 6)
            self.stats.setdefault(t, _TestStats()).add(value, failed)
            records.append({
                "type": "PTR", "REC_LEN": None, "REC_TYP": 15, "REC_SUB": 10,
                "TEST_NUM": 1000 + t, "HEAD_NUM": 0, "SITE_NUM": site_num,
                "TEST_FLG": 128 if failed else 0, "PARM_FLG": 0, "RESULT": value,
                "TEST_TXT": f"test{t}.vout", "ALARM_ID": "", "OPT_FLAG": 2,
                "RES_SCAL": 0, "LLM_SCAL": 0, "HLM_SCAL": 0, "LO_LIMIT": 0.0, "HI_LIMIT": 1.0,
                "UNITS": "V", "C_RESFMT": "%7.3f", "C_LLMFMT": "%7.3f", "C_HLMFMT": "%7.3f",
                "LO_SPEC": -1.0, "HI_SPEC": 2.0, "rec_id": "PTR"})
        records.append({
            "type": "PRR", "REC_LEN": None, "REC_TYP": 5, "REC_SUB": 20, "HEAD_NUM": 0,
            "SITE_NUM": site_num, "PART_FLG": 0 if passed else 8, "NUM_TEST": owner.ptr_count,
            "HARD_BIN": hbin, "SOFT_BIN": sbin, "X_COORD": number, "Y_COORD": self.index,
            "TEST_T": int(round(owner.test_time * 1000)), "PART_ID": part_id,
            "PART_TXT": str(number), "PART_FIX": 0, "rec_id": "PRR"})
        return records, sbin, hbin, passed

    def _ta_terminate(self, cmd: TestAppCommand) -> None:
        if self.testapp_state != "idle":
            log.warn("site {site}: terminate ignored in TestApp state {state}",
                     site=self.site, state=self.testapp_state)
            return
        self._emit("TestApp", self.t_summary,
                   {"type": "testresult", "payload": self._summary_records()})
        self._set_testapp("terminated")
        self.testapp_state = None
        self._control_call = self.owner.clock.callLater(0, self._testapp_exited, None)

    def _summary_records(self) -> list[dict]:
        site_num = int(self.site) if self.site.isdigit() else self.index
        out = []
        for t in range(self.owner.ptr_count):
            s = self.stats.get(t, _TestStats())
            out.append({
                "type": "TSR", "REC_LEN": None, "REC_TYP": 10, "REC_SUB": 30,
                "HEAD_NUM": 0, "SITE_NUM": site_num, "TEST_TYP": "P", "TEST_NUM": 1000 + t,
                "EXEC_CNT": s.exec_cnt, "FAIL_CNT": s.fail_cnt, "ALRM_CNT": 0,
                "TEST_NAM": f"test{t}.vout", "SEQ_NAME": "", "TEST_LBL": "",
                "OPT_FLAG": 0 if s.exec_cnt else 0xFF,
                "TEST_TIM": round(self.owner.test_time / max(1, self.owner.ptr_count), 6),
                "TEST_MIN": s.minimum if s.exec_cnt else 0.0,
                "TEST_MAX": s.maximum if s.exec_cnt else 0.0,
                "TST_SUMS": round(s.sums, 6), "TST_SQRS": round(s.sqrs, 6),
                "rec_id": "TSR"})
        return out

    def _ta_reset(self, cmd: TestAppCommand) -> None:
        if self._testapp_call is not None and self._testapp_call.active():
            self._testapp_call.cancel()
        self._testapp_call = None
        self._set_testapp("terminated")
        self.testapp_state = None
        self._control_call = self.owner.clock.callLater(0, self._testapp_exited, None)

    def _ta_setloglevel(self, cmd: TestAppCommand) -> None:
        level = cmd.fields.get("level")
        if level in LOG_LEVELS and not isinstance(level, bool):
            self.testapp_loglevel = level
        else:
            log.warn("site {site}: testapp setloglevel: bad level {value!r}",
                     site=self.site, value=level)

    def _ta_getexecutionstrategy(self, cmd: TestAppCommand) -> None:
        layout = cmd.fields.get("layout")
        if layout is not None and not isinstance(layout, list):
            log.warn("site {site}: getexecutionstrategy: layout is not a list", site=self.site)
        stage = list(cmd.sites)
        strategy = [[list(stage)] for _ in range(max(1, self.owner.ptr_count))]
        payload = {"type": "execution_strategy", "payload": strategy}
        delay = self.owner.strategy_delay
        if delay > 0:
            # real TestApps answer about 50 ms later, usually while the first part tests
            self.owner.clock.callLater(delay, self._emit, "TestApp", self.t_strategy, payload)
        else:
            self._emit("TestApp", self.t_strategy, payload)

    def _ta_sethbin(self, cmd: TestAppCommand) -> None:
        try:
            sbin = int(str(cmd.fields.get("sbin")))
            hbin = int(str(cmd.fields.get("hbin")))
        except ValueError:
            log.warn("site {site}: sethbin: sbin {sbin!r} / hbin {hbin!r} are not integers",
                     site=self.site, sbin=cmd.fields.get("sbin"), hbin=cmd.fields.get("hbin"))
            return
        self.hbin_map[sbin] = hbin

    def _ta_setparameter(self, cmd: TestAppCommand) -> None:
        log.info("site {site}: setparameter accepted", site=self.site)


# --------------------------------------------------------------------------------------
# All sites
# --------------------------------------------------------------------------------------


class SimSites:
    """N simulated sites of one device, driven by decoded messages.

    :param send: called with every :class:`Outbound`, in wire order.
    :param clock: time source; every delay (even 0) goes through ``callLater``.
    """

    def __init__(self, device_id: str, sites: Sequence[str], clock: IReactorTime,
                 send: Callable[[Outbound], None], *,
                 test_time: float = SIM_DEFAULTS.test_time,
                 load_time: float = SIM_DEFAULTS.load_time,
                 ptr_count: int = SIM_DEFAULTS.ptr_count,
                 bins: Iterable[Any] = SIM_DEFAULTS.bins, seed: int | str = SIM_DEFAULTS.seed,
                 faults: SimFaults | None = None, publish_logs: bool = False,
                 strategy_delay: float = SIM_DEFAULTS.strategy_delay):
        self.device_id = str(device_id)
        self.sites = tuple(str(s) for s in sites)
        if not self.sites:
            raise ValueError("simulated sites: no site ids given")
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"simulated sites: duplicate site ids in {list(self.sites)}")
        self.clock = clock
        self._send_fn = send
        self.test_time = float(test_time)
        self.load_time = float(load_time)
        self.strategy_delay = float(strategy_delay)
        if ptr_count < 0:
            raise ValueError(f"simulated sites: ptr_count {ptr_count} is negative")
        self.ptr_count = int(ptr_count)
        self.bins = tuple(bins)
        if not self.bins:
            raise ValueError("simulated sites: no bins configured")
        self.weights = [float(b.weight) for b in self.bins]
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("simulated sites: bin weights must be >= 0 with a positive sum")
        self.seed = seed
        self.faults = faults if faults is not None else SimFaults()
        self.plan = FaultPlan(self.faults, self.sites, self.bins, self.weights)
        self.fault_site = self.plan.fault_site
        self.publish_logs = publish_logs
        self.truth = GroundTruth()
        self.site = {s: SimSite(self, s, i) for i, s in enumerate(self.sites)}

    @classmethod
    def from_config(cls, cfg: Any, clock: IReactorTime,
                    send: Callable[[Outbound], None], **kw: Any) -> "SimSites":
        """Build from an ``ate.config.SimConfig`` (or anything with its attributes)."""
        return cls(cfg.device_id, cfg.sites, clock, send, test_time=cfg.test_time,
                   load_time=cfg.load_time, ptr_count=cfg.ptr_count, bins=cfg.bins,
                   seed=cfg.seed, faults=cfg.faults, strategy_delay=cfg.strategy_delay, **kw)

    # ---- plumbing ------------------------------------------------------------------

    def _send(self, out: Outbound) -> None:
        try:
            self._send_fn(out)
        except Exception:
            log.failure("simulated sites: sending to {topic} failed", topic=out.topic)

    def next_site(self, site: str) -> str:
        """The site after ``site`` in configured order (cyclic)."""
        i = self.sites.index(site)
        return self.sites[(i + 1) % len(self.sites)]

    def _bin_map(self, bin_table: Any) -> tuple[dict[int, int], str | None]:
        """Soft -> hard bin map from a loadTest ``bin_table`` (protocol 5.4).

        Returns ``(map, problem)``; ``problem`` names a configured soft bin that the table
        lacks (the real TestApp refuses to start then).  No table: the configured hard bins.
        """
        mapping: dict[int, int] = {}
        if bin_table is None or bin_table == {}:
            return mapping, None
        if not isinstance(bin_table, dict):
            return mapping, "loadTest: bin_table is not an object"
        for hbin, sbins in bin_table.items():
            try:
                h = int(str(hbin))
                if not isinstance(sbins, list):
                    raise ValueError
                for sb in sbins:
                    mapping[int(str(sb))] = h
            except ValueError:
                return {}, f"loadTest: bin_table entry {hbin!r}: {sbins!r} is not integers"
        for b in self.bins:
            if int(b.sbin) not in mapping:
                return {}, f"soft bin {b.sbin} of the test program is missing from the bin table"
        return mapping, None

    # ---- inputs --------------------------------------------------------------------

    def connected(self, only_site: str | None = None,
                  apps: tuple[str, ...] = ("Control", "TestApp")) -> None:
        """(Re)connected to the broker: every Control app (or one) publishes its state, and
        a running TestApp re-announces its own."""
        for s in self.site.values():
            if only_site is None or s.site == only_site:
                if "Control" in apps:
                    s.publish_control_state()
                if "TestApp" in apps:
                    s.announce_testapp()

    def received(self, topic: str, payload: bytes, only_site: str | None = None) -> None:
        """Decode and handle one MQTT message; bad input is logged and ignored."""
        try:
            msg = decode(self.device_id, topic, payload)
        except SimInputError as e:
            log.warn("simulated sites: ignored message: {error}; payload {excerpt!r}",
                     error=str(e), excerpt=payload[:200])
            return
        if msg is not None:
            self.handle(msg, only_site)

    def handle(self, msg: SiteMessage, only_site: str | None = None) -> None:
        """Apply one decoded message to every addressed site (or only ``only_site``)."""
        targets = self.sites if only_site is None else (only_site,)
        if isinstance(msg, MasterStatusSeen):
            for s in targets:
                self.site[s].publish_control_state()
            return
        for s in targets:
            if s not in msg.sites:
                continue
            if isinstance(msg, ControlCommand):
                self.site[s].control_command(msg)
            elif isinstance(msg, TestAppCommand):
                self.site[s].testapp_command(msg)
            else:
                raise TypeError(f"simulated sites: cannot handle {msg!r}")

    def stop(self) -> None:
        """Cancel every pending delayed call (service stop)."""
        for s in self.site.values():
            s._cancel()


# --------------------------------------------------------------------------------------
# MQTT wiring
# --------------------------------------------------------------------------------------


def _mqtt_service_class() -> Callable[..., Any]:
    """``ate.mqtt.MqttService`` (imported late: the core does not need MQTT)."""
    try:
        from ate.mqtt import MqttService
    except ImportError:
        from ate.mqtt.service import MqttService
    return MqttService


class SimSitesService(MultiService):
    """The simulated sites on MQTT.

    By default one MQTT client serves all sites (client id ``simsites.<device>.<pid>``),
    which keeps benchmarks cheap.  One client has only one last will, so:

    * crash faults publish the TestApp will payload (protocol 2.7) explicitly;
    * the client's own will is the ``crash`` Control status of the first site: if the
      simulator process dies, the master sees a Control crash and goes to softerror.

    With ``per_site_clients=True`` every Control app and every TestApp has its own client
    (``controlapp.D.N`` / ``testapp.D.N``) with its real last will, so killing the process
    makes the broker publish every app's will.  The TestApp clients stay connected for the
    whole service lifetime (also while "no TestApp runs"); crash faults still publish the
    will payload explicitly.

    Subscriptions: ``~/Control/cmd`` and ``~/Master/status`` with QoS 0, ``~/TestApp/cmd``
    with QoS 2, as the Semi-ATE Control app and TestApp 1.0.17 subscribe (per-site
    clients: the Control client the first and last, the TestApp client the second).
    Statuses and results are published with QoS 2, Control logs with QoS 0.

    ``mqtt_factory`` (tests) replaces ``ate.mqtt.MqttService`` and is called with the same
    arguments.
    """

    log = Logger()

    def __init__(self, reactor: Any, config: Any, *, publish_logs: bool = False,
                 per_site_clients: bool = False,
                 mqtt_factory: Callable[..., Any] | None = None, client_id: str | None = None):
        super().__init__()
        self.reactor = reactor
        self.config = config
        self.sites = SimSites.from_config(config, reactor, self._publish,
                                          publish_logs=publish_logs)
        if mqtt_factory is None:
            mqtt_factory = _mqtt_service_class()
        device = self.sites.device_id
        # as the Semi-ATE apps 1.0.17 subscribe: the Control app with paho's default QoS 0,
        # the TestApp with QoS 2
        t_control = (f"ate/{device}/Control/cmd", 0)
        t_testapp = (f"ate/{device}/TestApp/cmd", 2)
        t_master = (f"ate/{device}/Master/status", 0)
        self.per_site_clients = per_site_clients
        self.clients: dict[tuple[str, str], Any] = {}   # (app, site) -> MqttService
        if not per_site_clients:
            self.client_id = client_id or f"simsites.{device}.{os.getpid()}"
            self.mqtt = mqtt_factory(
                reactor, config.broker, self.client_id,
                will=control_will(device, self.sites.sites[0]),
                subscriptions=[t_control, t_testapp, t_master],
                on_message=self.sites.received,
                on_connected=self.sites.connected)
            self.mqtt.setServiceParent(self)
            return
        for site in self.sites.sites:
            control = mqtt_factory(
                reactor, config.broker, f"controlapp.{device}.{site}",
                will=control_will(device, site),
                subscriptions=[t_control, t_master],
                on_message=lambda t, p, site=site: self.sites.received(t, p, site),
                on_connected=lambda site=site: self.sites.connected(site, ("Control",)))
            testapp = mqtt_factory(
                reactor, config.broker, f"testapp.{device}.{site}",
                will=testapp_will(device, site),
                subscriptions=[t_testapp],
                on_message=lambda t, p, site=site: self.sites.received(t, p, site),
                on_connected=lambda site=site: self.sites.connected(site, ("TestApp",)))
            for app, client in (("Control", control), ("TestApp", testapp)):
                self.clients[(app, site)] = client
                client.setServiceParent(self)
        self.mqtt = self.clients[("Control", self.sites.sites[0])]

    def _publish(self, out: Outbound) -> None:
        client = self.clients.get((out.app, out.site), self.mqtt)
        d = client.publish(out.topic, out.encode(), out.qos)
        d.addErrback(lambda f: self.log.warn(
            "simulated sites: publish to {topic} failed: {reason}",
            topic=out.topic, reason=f.getErrorMessage()))

    def whenConnected(self) -> Deferred:
        """Fires when every MQTT client of the simulator is connected."""
        clients = list(self.clients.values()) or [self.mqtt]
        return gatherResults([c.whenConnected() for c in clients]).addCallback(lambda _: None)

    def stopService(self):
        self.sites.stop()
        return super().stopService()
