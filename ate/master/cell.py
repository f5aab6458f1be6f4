"""The cell: builds and wires the master's parts and is the one object that the MQTT router,
the web API and the feed talk to (the "Boss").

It builds the master machine (:mod:`ate.master.machine`, the phase, its timers and what is
allowed when) and testing's part machine (:mod:`ate.master.part`), wires them to each other
and to the site tracker, and implements their effects (``MasterEffects``, ``PartEffects``):
publishing, the lot's results and the datalog.  It keeps no timer and no state of its own:
``status()`` reports the last ``Status`` snapshot the master machine handed over.  Time comes
from the injected clock only.  The datalog sits behind :class:`ate.master.lotlog.LotLog`, the
part's plan and answer in :mod:`ate.master.partplan`, the collaborators' Protocols in
:mod:`ate.master.collaborators` (re-exported here).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

import ate
from ate.config import MasterConfig
from ate.jobs.model import Job, JobError
from ate.master.alarming import LotAlarms
from ate.master.collaborators import (
    CommandRefused,
    JobSource,
    LevelSink,
    LotDatalog,
    Metrics,
    Publisher,
)
from ate.master.held import HeldLoad, Rejoin
from ate.master.logs import LogBuffer, excerpt, split_log_line
from ate.master.lot import Lot
from ate.master.lothistory import LotHistory
from ate.master.lotlog import LotLog
from ate.master.machine import MasterCore, MasterMachine, Refusal, Status
from ate.master.part import PartCore, PartMachine
from ate.master.partplan import Part, StrategyAnswers, next_results, plan_part
from ate.master.peripherals import PeripheralMismatch, PeripheralSync
from ate.master.production import Production
from ate.master.settings import UserSettings
from ate.master.sites import SiteTracker
from ate.master.uicommands import UiCommands
from ate.protocol import messages as m

__all__ = ["Cell", "CommandRefused", "JobSource", "LevelSink", "LotDatalog", "Metrics",
           "Publisher"]



class Cell(UiCommands):
    log = Logger(namespace="ate.master.cell")

    def __init__(
        self,
        config: MasterConfig,
        clock: IReactorTime,
        publisher: Publisher,
        *,
        job_source: JobSource,
        settings: UserSettings,
        logs: LogBuffer | None = None,
        log_file: LevelSink | None = None,
        run_in_thread: Callable[..., Deferred] | None = None,
        wallclock: Callable[[], float] = time.time,
        history: LotHistory | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.publisher = publisher
        self.job_source = job_source
        self.settings = settings
        self.logs = logs
        self.log_file = log_file  # the log file writer, when the tap made one
        self.run_in_thread = run_in_thread
        self.wallclock = wallclock
        self.sites: tuple[str, ...] = tuple(config.sites)
        self.codec = m.Codec(config.device_id, self.sites, config.handler_id)
        self.metrics = Metrics()
        self.tracker = SiteTracker(self.sites, self)
        self.peripherals = PeripheralSync(tuple(config.peripherals))
        self.layout: tuple[tuple[int, int], ...] = tuple(config.site_layout)
        self.loglevel: int = config.loglevel
        self.lot: Lot | None = None
        self.job: Job | None = None
        self.lot_number = ""
        self.part: Part | None = None
        # the master machine's last snapshot (read by listeners during its transitions)
        self._status = Status("connecting", "startup")
        self._strategies = StrategyAnswers(self.sites, self.log)  # of the current load
        self._abort_reason = ""
        self.held_load = HeldLoad(self._publish)  # a loadTest for sites still resetting
        self.rejoin = Rejoin(self._publish)  # TestApps back after a reconnect
        self._summaries: set[str] = set()  # sites whose test summary came in this unload
        self._part_ids = itertools.count(1)
        self._listeners: list[Callable[[str, Any], None]] = []
        self.records = LotLog(config, self.sites, clock, log=self.log, metrics=self.metrics,
                              emit=self._emit, wallclock=wallclock, run_in_thread=run_in_thread)
        self.alarms = LotAlarms(config.alarms, self.sites, records=self.records,
                                publish=self._publish, emit=self._emit,
                                status_changed=self._hold_changed, wallclock=wallclock,
                                baseline=history.baseline if history is not None else None)
        self.production = Production(clock)
        self.history = history  # the lot history (the API's /lots), None without one
        if history is not None:
            self.subscribe(history.cell_event)  # records every finalised lot
        self._last_publish: Deferred = succeed(None)
        self._connected = False
        self._pending_io: Any = None
        self._cycle = 0.0
        # the machines: testing's steps, and the master that drives them (wired once here)
        part_core = PartCore(self, clock, config.timeouts, config.enable_timeouts)
        self.part_machine = PartMachine(part_core)
        self.machine = MasterMachine(MasterCore(
            self, self.part_machine, clock, config.timeouts, config.enable_timeouts))
        part_core.master = self.machine
        self._production_state()  # E10: non-scheduled until the first initialized

    # ================================================================================
    # Public API: MQTT lifecycle, commands, site messages, web.

    def subscribe(self, listener: Callable[[str, Any], None]) -> None:
        """``listener(kind, data)`` for every cell event (status, testresult, part, …)."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[str, Any], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def mqtt_connected(self) -> None:
        self._connected = True
        self.machine.connected()
        self._production_state()

    def mqtt_disconnected(self) -> None:
        self._connected = False
        self.metrics.mqtt_disconnects += 1
        self.machine.disconnected()
        self._production_state()

    def command(self, msg: Any, origin: str = "handler") -> Any:
        """Run one handler-type command.  Returns the response message to send (or None);
        refusals come back as an ``ErrorResponse`` message."""
        if isinstance(msg, m.Identify):
            return m.IdentifyResponse(name=self.config.device_id)
        if isinstance(msg, m.GetState):
            status = self.machine.status()
            return m.GetStateResponse(state=status.state, message=status.message)
        if isinstance(msg, m.GetHost):
            return m.GetHostResponse(host=self.config.webui_host, port=self.config.webui_port)
        if isinstance(msg, m.Load):
            refusal = self.machine.load(msg.lot_number)
        elif isinstance(msg, m.Next):
            refusal = self.machine.next(msg.sites)
        elif isinstance(msg, m.Unload):
            refusal = self.machine.unload()
        elif isinstance(msg, m.Reset):
            refusal = self.machine.reset()
        elif isinstance(msg, m.SiteLayout):
            refusal = self.machine.site_layout(msg.layout)
        else:
            raise TypeError(f"not a handler command: {msg!r}")
        if refusal is None:
            return None
        return self.refusal_response(refusal, origin)

    def refusal_response(self, refusal: Refusal, origin: str = "handler") -> Any:
        self.metrics.commands_refused += 1
        (self.log.info if refusal.expected else self.log.warn)(
            "{origin} command {command} refused ({rtype}): {reason}",
            origin=origin, command=refusal.command, rtype=refusal.response_type,
            reason=refusal.message,
        )
        return m.ErrorResponse(
            command_type=refusal.command,
            response_type=refusal.response_type,
            state=refusal.state or self._status.state,
            message=refusal.message,
        )

    def handle_command(self, msg: Any, origin: str = "handler") -> None:
        """A command from MQTT: run it and publish the answer, if any."""
        response = self.command(msg, origin)
        if response is not None:
            self._publish(response)

    def command_error(self, command: str, reason: str, origin: str = "handler") -> Any:
        """A malformed or unknown command: the error response, state unchanged."""
        return self.refusal_response(Refusal(command, "error", reason), origin)

    def answer_bad_command(self, command: str, reason: str) -> None:
        """A handler command that could not be decoded: publish its error response."""
        self._publish(self.command_error(command, reason))

    def knows_control_state(self, site: str, state: str) -> bool:
        """Whether ``state`` is the last Control state known for ``site`` (the router
        skips a re-published identical status while this holds)."""
        return self.tracker.control_state(site) == state

    # -- site messages (from the router) ---------------------------------------------

    def control_status(self, site: str, state: str, error_message: str = "") -> None:
        self.tracker.control(site, state, error_message)
        self._emit("sites", None)

    def control_log(self, site: str, line: str) -> None:
        """A Control app's log line (``name|date|LEVEL|message``): its ERROR lines are the
        reason of an error the app reports without one.  When the line comes after the
        ``error`` status, the softerror message is completed and re-published."""
        parsed = split_log_line(line)
        late = None if parsed is None else self.tracker.control_log(site, *parsed)
        if late is not None:
            bare = f"site {site}: control app reported error"
            self.machine.complete_message(bare, f"{bare}: {late}")

    def testapp_status(self, site: str, state: str) -> None:
        self.rejoin.heard(site)
        self.tracker.testapp(site, state)
        self._emit("sites", None)

    def interface_mismatch(self, site: str, message: str) -> None:
        """A Control status of another interface version (protocol.md §2.5)."""
        self.machine.fatal(message)

    def test_result(self, site: str, records: Sequence[dict], size: int = 0) -> None:
        """A TestApp's result; ``size`` is its payload length (bounds what the UI keeps)."""
        self.rejoin.heard(site)
        part = self.part
        problem = self.tracker.result_problem(site) if part is not None else (
            f"unexpected test result from site {site} (no part under test)"
        )
        if problem is not None:
            if problem.startswith("duplicate"):
                self.metrics.duplicate_results += 1
            else:
                self.metrics.unexpected_results += 1
            self.log.warn("{problem}; ignored: {records}", problem=problem,
                          records=excerpt(records))
            return
        assert part is not None and self.lot is not None
        try:
            outcome = self.lot.add_result(site, records, size)
        except ValueError as e:
            self.machine.fault(f"site {site} sent a malformed test result: {e}")
            return
        for note in outcome.warnings:
            self.records.note_once(note.split(";")[0], note)
        part.results.append((site, records))
        part.outcomes[site] = outcome
        part.prrs[site] = records[-1]
        self.metrics.parts += 1
        self._emit("testresult", list(records))  # the frame's payload is the record list (§11.3)
        if part.written:
            # the part was flushed when the master went to softerror: a result that still
            # comes for it is written at once (protocol §3.6); it answers nothing
            self.records.write_results([(site, records)])
            self.alarms.judge((outcome,))
            self.tracker.result(site)
            return
        if outcome.unknown_soft_bin:
            self.machine.fault(
                f"site {site}: soft bin {outcome.soft_bin} is not in the job's bin table"
            )
            return
        done = self.peripherals.site_done(site)
        if done is not None:
            self._forward_io(done)
        self.tracker.result(site)  # may complete the part

    def malformed_result(self, site: str, reason: str) -> None:
        if (self.part is not None and self.tracker.is_tested(site)
                and not self.tracker.has_result(site)):
            self.machine.fault(f"site {site} sent a malformed test result: {reason}")
        else:
            self.metrics.unexpected_results += 1
            self.log.warn("malformed test result from site {site} ignored: {reason}",
                          site=site, reason=reason)

    def test_summary(self, site: str, records: Sequence[dict]) -> None:
        self.machine.test_summary(site, records)

    def take_summary(self, site: str, records: Sequence[dict]) -> None:
        """Effect: a test summary while unloading goes to the datalog (once per site)."""
        if self.datalog is None:
            self.stray_summary(site)
            return
        if site in self._summaries:
            self.log.warn("second test summary from site {site} ignored", site=site)
            return
        self._summaries.add(site)
        self.records.add_summary(site, records)

    def execution_strategy(self, site: str, strategy: Any) -> None:
        """A TestApp's answer to the load's ``getexecutionstrategy`` (StrategyAnswers)."""
        self.rejoin.heard(site)
        problem = self._strategies.take(site, strategy)
        if problem is not None:
            self.machine.fault(problem)

    def stray_summary(self, site: str) -> None:
        self.log.warn("test summary from site {site} outside unloading ignored", site=site)

    def io_request(self, site: str, periphery_type: str, ioctl_name: str, parameters: Any) -> None:
        self.part_machine.io_request(site, periphery_type, ioctl_name, parameters)

    def stray_io_request(self, site: str) -> None:
        self.log.warn("io-control request from site {site} outside testing ignored", site=site)

    def take_io_request(self, site: str, periphery_type: str, ioctl_name: str,
                        parameters: Any) -> None:
        """Effect (part machine, testing): a TestApp's io-control request."""
        if not self.tracker.is_tested(site):
            self.stray_io_request(site)
            return
        try:
            forward = self.peripherals.request(site, periphery_type, ioctl_name, parameters)
        except PeripheralMismatch as e:
            self.machine.fault(str(e))
            return
        if forward is not None:
            self._forward_io(forward)

    def io_response(self, periphery_type: str, payload: Any) -> None:
        if not self.peripherals.response(periphery_type, payload):
            self.log.warn("io-control response for {ptype} without a pending request ignored",
                          ptype=periphery_type)
            return
        self._publish(m.PeripheralResponseRelay(periphery_type=periphery_type, payload=payload))
        self.part_machine.resource_done()

    def peripheral_status(self, periphery_type: str, status: str) -> None:
        self.peripherals.set_status(periphery_type, status)

    def handler_status(self, state: str, message: Any) -> None:
        self.machine.handler_status(state, message)

    def handler_reports(self, state: str, message: Any) -> None:
        if state in ("error", "crash"):
            self.log.warn("handler reports {state}: {message}", state=state, message=message)

    # -- queries ------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The published state (protocol §3.1), from the master machine's snapshot."""
        return self._status.state

    @property
    def datalog(self) -> LotDatalog | None:
        """The current lot's datalog (None before the first load)."""
        return self.records.datalog

    @property
    def error_message_text(self) -> str:
        return self._message(self._status)

    def _message(self, status: Status) -> str:
        """The status ``error_message``: the machine's, or ``held: …`` while held (§15.2)."""
        if not status.message and status.state == "ready":
            return self.alarms.held_text()
        return status.message

    def _hold_changed(self) -> None:
        """A hold started or ended: a ready master publishes its status again."""
        if self._status.state == "ready":
            self.status_changed(self._status, True)
        self._production_state()

    def _production_state(self) -> None:
        self.production.state(self._status.state, lot=self.lot is not None,
                              held=self.alarms.held() is not None, connected=self._connected)

    def release_alarm(self, alarm_id: Any, operator: Any, comment: Any) -> dict:
        """Release an alarm (HTTP API, operator UI); raises AlarmError naming the problem."""
        return self.alarms.release(alarm_id, operator, comment)

    def missing(self) -> list[str]:
        """Sites that have not reached the goal of the current phase yet."""
        return self.tracker.missing()

    def status(self) -> dict:
        lot = self.lot
        return {
            "device_id": self.config.device_id,
            "handler": self.config.handler_id,
            "environment": self.config.environment,
            "state": self._status.state,
            "internal_state": self._status.internal,
            "error_message": self._message(self._status),
            "sites": list(self.sites),
            "site_states": self.tracker.states(),
            "lot_number": self.lot_number,
            "program": self.job.testapp_script_path if self.job else "",
            "parts": lot.parts_tested if lot is not None else 0,
            "datalog": self.datalog.path if self.datalog is not None else None,
            "connected": self._connected,
        }

    def stop(self) -> Deferred:
        """Shut down: finalise the datalog, publish the last status.  The Deferred fires
        when the broker acknowledged it (or at once when not connected)."""
        self.machine.stop()
        if self.history is not None:
            self.history.close()
        return self._last_publish

    # ================================================================================
    # MasterEffects (called by the machine's behaviours only).

    def status_changed(self, status: Status, publish: bool) -> None:
        self._status = status
        self._production_state()
        if publish:
            self._publish(m.MasterStatus(state=status.state, message=self._message(status)))
            self._emit("status", self.status())

    def first_connect(self) -> None:
        # The resets go out before the status (protocol.md §3.2: a transition's commands
        # precede its Master/status).  A Control app that was already up then answers
        # resetting, idle, and only then echoes the status: the master never takes a
        # stale idle for synced and reaches initialized with every site really idle.
        self._publish(m.ControlReset(sites=self.sites))
        self._publish(m.TestAppReset(sites=self.sites))
        self.tracker.begin_connecting(after_reset=False)

    def testapps_rejoin(self) -> None:
        probe = m.TestAppGetExecutionStrategy(sites=self.sites, layout=self.layout)
        self.rejoin.reconnected(self.sites, probe)

    def note_disconnected(self, where: str) -> None:
        self.log.warn("broker connection lost in {state}; state kept", state=where)

    def reset_sites(self) -> None:
        self._finalise(f"aborted: {self._abort_reason or 'reset'}")
        self._strategies.close()
        self._abort_reason = ""
        self.held_load.drop()
        self.rejoin.forget()
        self._clear_part()
        self._publish(m.ControlReset(sites=self.sites))
        self._publish(m.TestAppReset(sites=self.sites))
        self.tracker.begin_connecting(after_reset=True)

    def enter_initialized(self) -> None:
        self.tracker.begin_initialized()

    def prepare_load(self, lot_number: str) -> tuple[Refusal | None, Job | None]:
        try:
            job = self.job_source.load(lot_number)
        except JobError as e:
            return Refusal("load", "error", str(e)), None
        try:
            self.records.create(job)
        except OSError as e:
            reason = f"load refused: cannot create the datalog in {self.config.stdf_directory}: {e}"
            return Refusal("load", "error", reason), None
        return None, job

    def start_load(self, job: Job) -> None:
        self.job = job
        self.lot_number = job.lot_number
        if self.lot is not None:
            self.lot.close()
        self.lot = Lot(job, self.sites, self.config.device_id)
        self.records.new_lot()
        self.alarms.start_lot(job)
        self.production.new_lot(job.lot_number)
        self._strategies.close()
        self._abort_reason = ""
        self.settings.reset_to_defaults()
        load = m.ControlLoadTest(
            sites=self.sites, script_path=job.testapp_script_path,
            script_args=tuple(job.testapp_script_args), cwd=job.cwd,
            bin_table=job.bin_table_wire())
        # Control apps still answering a reset get the loadTest once idle (idle_for_load);
        # the load timer runs from now
        waits = self.tracker.unavailable()
        self.held_load.send(load, waits, job.lot_number)
        self.tracker.begin_loading(waits)

    def lot_loading(self) -> None:
        """Effect after the loading status: the lot's log line and UI events."""
        job, lot = self.job, self.lot
        assert job is not None and lot is not None
        self.log.info("lot {lot} loading ({path})", lot=job.lot_number, path=job.path)
        self._emit("usersettings", self.usersettings())
        self._emit("bintable", lot.bintable())
        self._emit("lot", None)

    def enter_ready(self) -> None:
        self._send_loglevel()
        self._strategies.open()  # answers are taken from now until the lot's unload
        self._publish(m.TestAppGetExecutionStrategy(sites=self.sites, layout=self.layout))
        self.tracker.begin_ready()

    def prepare_next(self, sites: Any) -> tuple[Refusal | None, Any]:
        held = self.alarms.next_refusal_text()
        if held is not None:
            return Refusal("next", "error", held, expected=True), None
        missing = self.peripherals.unavailable()
        if missing:
            return Refusal("next", "error",
                           f"next refused: peripheral {', '.join(missing)} not available"), None
        return None, plan_part(sites, self.sites, self._part_ids, self.clock.seconds())

    def start_part(self, plan: Part) -> None:
        self.part = plan
        self._first_part = self.records.first_part()
        self.tracker.begin_testing(plan.tested)
        self.production.next_command(len(self.sites), len(plan.tested))
        self.peripherals.start_part(plan.tested)
        job_data: dict[str, Any] = self.settings.job_data()  # plus the list sites_info
        job_data["sites_info"] = plan.sites_info
        self.rejoin.send_next(m.TestAppNext(sites=plan.tested, job_data=job_data))

    def part_started(self) -> None:
        """Effect after the testing status: the lot's first part sends the UI its MIR."""
        if self._first_part and self.lot is not None:
            self._emit("lotdata", self.lotdata())

    def complete_part(self) -> None:
        part = self.part
        assert part is not None
        self.production.last_result()
        self.records.write_part(part)
        self.alarms.judge(part.outcomes.values())  # after the part's PRRs (its DTRs follow)
        self._publish(m.NextResponse(sites=next_results(part)))
        self.production.next_response()
        cycle = self.clock.seconds() - part.started
        self.metrics.cycles += 1
        if self.lot is not None:
            self.lot.note_cycle(cycle)
        self.part = None
        self.tracker.begin_ready()
        self._cycle = cycle

    def part_finished(self) -> None:
        """Effect after the ready status: the cycle time for the UI and the metrics."""
        self._emit("part", self._cycle)

    def start_unload(self) -> None:
        self._strategies.close()
        self._summaries = set()
        self._publish(m.TestAppTerminate(sites=self.sites))
        self.tracker.begin_unloading()

    def finish_unload(self) -> None:
        missing = [s for s in self.sites if s not in self._summaries]
        if missing and self.records.open:
            self.log.warn("datalog finalised without the test summary of site(s) {sites} "
                          "(their TSRs are missing from the footer)", sites=", ".join(missing))
        self._finalise("")
        self.tracker.begin_initialized()

    def set_layout(self, layout: Any) -> None:
        self.layout = tuple(tuple(p) for p in layout)
        for x, y in self.layout:
            if x >= len(self.sites) or y >= len(self.sites):
                self.log.warn("site-layout coordinate ({x}, {y}) beyond the site count", x=x, y=y)
                break
        self.log.info("site layout set to {layout}", layout=self.layout)

    def enter_softerror(self, message: str) -> None:
        self.metrics.softerrors += 1
        self.log.error("softerror: {message}", message=message)
        self._halt(message)

    def enter_error(self, message: str) -> None:
        self.log.error("error: {message}", message=message)
        self._halt(message)

    def _halt(self, message: str) -> None:
        """softerror/error: what came of the part under test is written now, and its
        missing results are still taken; the datalog stays open until the reset (or
        shutdown) finalises it as aborted (protocol §3.6, §7.4)."""
        self.tracker.halt()
        self.held_load.drop()
        self.rejoin.drop()  # a next held for TestApps not back is not sent any more
        self._flush_part_results()
        if self.part is not None:
            self.part.written = True  # later results of it are written one by one
        if not self._abort_reason:
            self._abort_reason = message

    def ignore(self, what: str, detail: str, where: str) -> None:
        self.log.debug("{what} ignored in {state} {detail}", what=what, state=where,
                       detail=detail)

    def missing_sites(self) -> list[str]:
        return self.tracker.missing()

    def missing_ack(self) -> list[str]:
        return self.tracker.missing_ack()

    def ioctl_timed_out(self) -> str:
        """Effect (part machine): the io-control timer expired; the TestApps get the
        timeout relayed, and the softerror message is returned."""
        forward = self._pending_io
        ptype = forward.periphery_type if forward is not None else "?"
        if forward is not None:
            self._publish(m.PeripheralResponseRelay(
                periphery_type=ptype,
                payload={"type": "io-control-response", "ioctl_name": forward.ioctl_name,
                         "result": "Timeout"}))
        self.peripherals.reset()
        return f"Failed to control resource {ptype}. Reason: Timeout."

    def shutdown(self) -> None:
        self._flush_part_results()
        reason = f"{self._abort_reason}; master stopped" if self._abort_reason else "master stopped"
        self._finalise(f"aborted: {reason}", close=False)  # results may still come
        if self._connected:
            self._last_publish = self._publish(
                m.MasterStatus(state="crash", message="master stopped"))
        self._emit("status", self.status())

    # ================================================================================
    # Tracker events (SiteTracker calls these).

    def synced(self) -> None:
        self.machine.synced()

    def idle_for_load(self) -> None:
        self.held_load.release()

    def loaded(self) -> None:
        self.machine.loaded()

    def acknowledged(self) -> None:
        self.part_machine.acknowledged()

    def part_done(self) -> None:
        self.part_machine.part_done()

    def fault(self, message: str) -> None:
        self.machine.fault(message)

    # ================================================================================
    # Internals.

    def lotdata(self) -> dict | None:
        if self.lot is None:
            return None
        return self.lot.mir(int(self.records.setup_t), int(self.records.start()), ate.__version__)

    def _publish(self, msg: Any) -> Deferred:
        topic, payload = self.codec.encode(msg)
        d = self.publisher.publish(topic, payload, 2)
        d.addErrback(self._publish_failed, topic)
        return d

    def _publish_failed(self, failure: Any, topic: str) -> None:
        self.log.warn("publish on {topic} failed: {reason}", topic=topic,
                      reason=failure.getErrorMessage())

    def _emit(self, kind: str, data: Any) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(kind, data)
            except Exception:
                self.log.failure("cell listener failed on {kind}", kind=kind)

    def _send_loglevel(self) -> None:
        self._publish(m.TestAppSetLogLevel(sites=self.sites, level=self.loglevel))
        self._publish(m.ControlSetLogLevel(sites=self.sites, level=self.loglevel))

    def _forward_io(self, forward: Any) -> None:
        self._publish(m.IoControlForward(periphery_type=forward.periphery_type,
                                         ioctl_name=forward.ioctl_name,
                                         parameters=forward.parameters))
        self._pending_io = forward
        self.part_machine.resource_requested()

    # -- datalog ------------------------------------------------------------------------

    def _finalise(self, reason: str, close: bool = True) -> None:
        if self.lot is not None and self.records.open:
            self.production.end_lot()
            self.lot.extra.update(production=self.production.summary(),
                                  start_t=int(self.records.start()),
                                  program=self.job.testapp_script_path if self.job else "")
            if self.alarms.monitor is not None:
                self.lot.extra.update(self.alarms.end_lot())  # the summary lists the alarms
        self.records.finalise(self.lot, reason)
        if close and self.lot is not None:
            self.lot.close()  # its part index (a temp file past 10 000 parts) goes

    def _flush_part_results(self) -> None:
        if self.part is not None:
            self.records.write_part(self.part)

    def _clear_part(self) -> None:
        self.part = None
        self.rejoin.drop()
        self.peripherals.reset()
