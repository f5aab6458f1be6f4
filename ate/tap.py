"""``twistd ate-master``: options and service assembly.

This is the only master module that imports the global reactor (and only when none is
given).  Configuration errors, a job directory that does not exist and a web address that
cannot be listened on end the process before anything starts, with one line that names
the file and the key (or the address), and exit status 2.  ``--check`` prints what the
master would run with (:mod:`ate.checks`) and exits 0, or 2 with errors.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

import ate
from ate.checks import broker_text, check_master, job_directory_problem, web_url
from ate.config import ConfigError, MasterConfig, load_master_config


class Options(usage.Options):
    synopsis = "--config FILE [options]"
    longdesc = (
        "Run the test cell controller.  FILE is the master configuration (JSON in the "
        "existing master_config_file.json format, or TOML with the same keys).  With "
        "--check, validate FILE, print what the master would run with and exit (0, or 2 "
        "with errors)."
    )
    optParameters = [
        ["config", "c", "master_config_file.json", "Master configuration file (JSON or TOML)."],
        ["device-id", "d", None, "Override device_id."],
        ["sites", "s", None, "Override the site list (comma separated, e.g. 0,1,2,3)."],
        ["broker", "b", None, "Override the broker address, HOST:PORT."],
        ["web-host", None, None, "Override webui_host (the HTTP bind address)."],
        ["web-port", None, None, "Override webui_port (the HTTP port)."],
        ["file", "f", None, "Accepted for compatibility with the existing master; unused."],
    ]
    optFlags = [
        ["check", None, "Validate the configuration, print what would run, exit 0 or 2."],
    ]

    def postOptions(self) -> None:
        host = port = None
        if self["broker"]:
            host, _, port_text = self["broker"].rpartition(":")
            if not host or not port_text.isdigit():
                _fail(f"--broker: expected HOST:PORT, got {self['broker']!r}")
            port = int(port_text)
        web_port = self["web-port"]
        if web_port is not None and not str(web_port).strip().isdigit():
            _fail(f"--web-port: expected a port number, got {web_port!r}")
        try:
            self["master_config"] = cfg = load_master_config(
                self["config"], device_id=self["device-id"], sites=self["sites"],
                broker_host=host, broker_port=port,
                webui_host=self["web-host"], webui_port=web_port,
            )
        except ConfigError as e:
            _fail(str(e))
        try:
            from ate.web.site import check_access_config
        except ImportError:  # pragma: no cover - web not installed
            check_access_config = None  # type: ignore[assignment]  # the import fallback
        if check_access_config is not None:
            try:
                check_access_config(cfg)
            except ValueError as e:
                _fail(f"{self['config']}: webui_host: {e}")
        if self["check"]:
            report = check_master(cfg)
            sys.stdout.write(report.text(ate.__version__))
            sys.stdout.flush()
            raise SystemExit(report.exit_code)
        problem = job_directory_problem(cfg)
        if problem is not None:
            _fail(problem)


def _fail(line: str) -> None:
    sys.stderr.write(f"ate-master: {line}\n")
    sys.stderr.flush()
    raise SystemExit(2)


class MasterService(Service):
    """Stops before MQTT: finalises the datalog and publishes the last status.

    At start it logs one line with what the master runs with (``announce``), and while
    the master is ``connecting`` it reports every ``wait_interval`` seconds which sites it
    still waits for (:mod:`ate.master.progress`).
    """

    log = Logger(namespace="ate.master")

    def __init__(self, cell: Any, clock: Any, stop_timeout: float = 3.0, *,
                 announce: bool = True, wait_interval: float = 10.0) -> None:
        from ate.master.progress import StateLog, WaitingReport

        self.cell = cell
        self.clock = clock
        self.stop_timeout = stop_timeout
        self.announce = announce
        self.waiting = WaitingReport(cell, clock, wait_interval)
        cell.subscribe(StateLog(cell))
        cell.subscribe(self.waiting)

    def startService(self) -> None:
        super().startService()
        if self.announce:
            self.log.info("{line}", line=startup_line(self.cell.config))
        self.waiting.start()

    def stopService(self) -> Deferred:
        super().stopService()
        self.waiting.stop()
        d = maybeDeferred(self.cell.stop)
        d.addTimeout(self.stop_timeout, self.clock)
        d.addErrback(lambda f: self.log.warn("last status not acknowledged: {why}",
                                             why=f.getErrorMessage()))
        return d


def startup_line(cfg: MasterConfig) -> str:
    """The master's start-up line: version, config file, broker, device, sites, web, datalogs."""
    return (f"ate-master {ate.__version__} with {cfg.path}: broker {broker_text(cfg.mqtt)}; "
            f"device {cfg.device_id}, sites {','.join(cfg.sites)}; "
            f"web {web_url(cfg.webui_host, cfg.webui_port)}; "
            f"datalogs in {os.path.abspath(cfg.stdf_directory)}")


class WebAddressError(Exception):
    """The web address cannot be listened on; ``str()`` is one line naming it."""


@implementer(IStreamServerEndpoint)
class Listening:
    """An endpoint whose port is already listening (see :func:`listen_now`)."""

    def __init__(self, port: Any) -> None:
        self.port = port

    def listen(self, factory: Any) -> Deferred:
        return succeed(self.port)


class ListenError(Exception):
    """An endpoint cannot listen; ``str()`` is the reason, lower case, one line."""


def listen_now(endpoint: Any, factory: Any) -> Any:
    """Listen on ``endpoint`` at once (TCP endpoints answer synchronously) and return the
    listening port, or raise :class:`ListenError`; None if the endpoint answers later."""
    results: list[Any] = []
    endpoint.listen(factory).addBoth(results.append)
    if not results:  # pragma: no cover - TCP and UNIX endpoints answer synchronously
        return None
    if isinstance(results[0], Failure):
        failure = results[0]
        reason = failure.getErrorMessage()
        if failure.check(CannotListenError) and failure.value.socketError is not None:
            error = failure.value.socketError
            reason = getattr(error, "strerror", None) or str(error)
        raise ListenError(" ".join(reason.rstrip(".").lower().split()))
    return results[0]


def listen_web_now(top: MultiService, cfg: MasterConfig) -> Any:
    """Listen on the web address now, before the reactor runs, so that a taken address
    stops the program at once (``WebAddressError``) instead of a traceback and a master
    without HTTP.  Returns the listening address (its ``port`` is the real one), or None
    when ``top`` has no web service."""
    try:
        web = top.getServiceNamed("web")
    except KeyError:
        return None
    listener = web.listener
    try:
        port = listen_now(listener.endpoint, listener.factory)
    except ListenError as e:
        raise WebAddressError(
            f"web address {web_url(cfg.webui_host, cfg.webui_port)} cannot be used: {e}"
        ) from None
    if port is None:  # pragma: no cover
        return None
    listener.endpoint = Listening(port)
    return port.getHost()


def build_master(cfg: MasterConfig, reactor: Any, *, observe_logs: bool = True,
                 announce: bool = True) -> tuple[MultiService, Any]:
    """Assemble the master: returns (top service, cell).  Its children are named
    ``mqtt``, ``master`` and ``web``; ``announce`` logs the start-up line."""
    from ate.jobs.source import job_source_from_config
    from ate.master.cell import Cell
    from ate.master.logs import LogBuffer, LogFileWriter
    from ate.master.lothistory import LotHistory
    from ate.master.router import Router
    from ate.master.settings import UserSettings
    from ate.mqtt.service import MqttService
    from ate.protocol import messages as m
    from ate.stdf.recover import recover_directory
    from ate.stdf.summary import BinRow

    log = Logger(namespace="ate.master")
    for warning in cfg.warnings:
        log.warn("config {path}: {warning}", path=cfg.path, warning=warning)
    if cfg.tester_type:
        log.info("tester_type {t!r} accepted and ignored: ate-master releases all tested "
                 "sites together (protocol.md 6.4)", t=cfg.tester_type)

    logs = LogBuffer(level=cfg.loglevel, log_directory=cfg.log_directory, clock=reactor)
    writer = None
    if observe_logs:
        globalLogPublisher.addObserver(logs)
        try:
            writer = LogFileWriter(cfg.log_directory, level=cfg.loglevel)
        except OSError as e:
            log.error("cannot write the log directory {d}: {e}", d=cfg.log_directory, e=e)
        else:
            globalLogPublisher.addObserver(writer)

    jobs = job_source_from_config(cfg)

    def job_bins(lot_number: str) -> list[BinRow]:  # a repaired footer names its bins
        return [BinRow(e.sbin, e.hbin, e.name, e.group) for e in jobs.load(lot_number).bins]

    if os.path.isdir(cfg.stdf_directory):  # created at the first load otherwise
        for line in recover_directory(cfg.stdf_directory, job_bins):
            log.warn("datalog recovery: {line}", line=line)
    # after the recovery, so that repaired files (and their new summaries) are imported
    history = LotHistory.open(cfg)

    pool = reactor.getThreadPool()

    def run_in_thread(f: Any, *args: Any) -> Deferred:
        return deferToThreadPool(reactor, pool, f, *args)

    top = MultiService()

    # The one cycle of the wiring: MQTT delivers to the router and the cell, which publish
    # through MQTT.  The callbacks name ``router`` and ``cell``, built just below in this
    # same pass; MQTT calls them only once the reactor runs.
    def on_message(topic: str, payload: bytes) -> None:
        router.received(topic, payload)

    def on_connected() -> None:
        cell.mqtt_connected()

    def on_disconnected() -> None:
        cell.mqtt_disconnected()

    codec = m.Codec(cfg.device_id, cfg.sites, cfg.handler_id)
    will_topic, will_payload = codec.encode(m.MasterStatus(state="crash", message=""))
    mqtt = MqttService(
        reactor, cfg.mqtt, f"masterapp.{cfg.device_id}",
        will=(will_topic, will_payload, 2),
        subscriptions=[(topic, cfg.mqtt.subscribe_qos)
                       for topic, _qos in codec.topics.master_subscriptions(cfg.peripherals)],
        on_message=on_message,
        on_connected=on_connected,
        on_disconnected=on_disconnected,
    )
    cell = Cell(
        cfg, reactor, mqtt,
        job_source=jobs,
        settings=UserSettings(cfg.user_settings_filepath),
        logs=logs,
        log_file=writer,
        run_in_thread=run_in_thread,
        history=history,
    )
    router = Router(cell)
    mqtt.setName("mqtt")
    mqtt.setServiceParent(top)  # started first, stopped last
    master = MasterService(cell, reactor, announce=announce)
    master.setName("master")
    master.setServiceParent(top)
    try:
        from ate.web.site import web_service
    except ImportError:  # pragma: no cover - web part not present
        web_service = None  # type: ignore[assignment]  # the import fallback
    if web_service is not None:
        web = web_service(cell, reactor, cfg)
        web.setName("web")
        web.setServiceParent(top)
    return top, cell


def install_clean_exit(reactor: Any) -> None:
    """SIGTERM/SIGINT stop the reactor and the process exits with status 0.

    Twisted's own handlers record the signal and re-raise it after shutdown, so the exit
    status would say "killed by SIGTERM"; a controlled shutdown that finalised the datalog
    and published its last status is a normal exit for ate-master (protocol.md §3.7).
    Installed once the reactor runs, after Twisted installed its handlers.
    """
    import signal

    log = Logger(namespace="ate.master")

    def handler(signum: int, frame: Any) -> None:
        log.info("received signal {signum}, shutting down", signum=signum)
        reactor.callFromThread(_stop_once, reactor)

    def install() -> None:
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    reactor.callWhenRunning(install)


def _stop_once(reactor: Any) -> None:
    if reactor.running:
        try:
            reactor.stop()
        except Exception:  # already stopping
            pass


#: The collector's first threshold in ate-master (Python's default: 700).  A handler cycle
#: allocates and frees its messages, records and results within the cycle: at 255 sites
#: the default ran about one collection a cycle (bench/cell_cycle.py: 1.2 ms of 30 ms
#: CPU), this one none, while garbage in reference cycles still starts one after 10 000
#: uncollected container objects.
GC_THRESHOLD0 = 10_000


def tune_gc() -> None:
    """The master process's collector thresholds (called once by ``makeService``)."""
    g0, g1, g2 = gc.get_threshold()
    gc.set_threshold(max(GC_THRESHOLD0, g0), g1, g2)


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor  # the one place the global reactor is used
    cfg = options["master_config"]
    top, _cell = build_master(cfg, reactor)
    tune_gc()
    try:
        listen_web_now(top, cfg)
    except WebAddressError as e:
        _fail(f"{e} (webui_host/webui_port in {cfg.path}, or --web-host/--web-port)")
    install_clean_exit(reactor)
    return top
