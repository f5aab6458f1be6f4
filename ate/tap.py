"""``twistd ate-master``: options and service assembly.

This is the only master module that imports the global reactor (and only when none is
given).  Configuration errors end the process before anything starts, with one line that
names the file and the key, and exit status 2.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage

from ate.config import ConfigError, MasterConfig, load_master_config


class Options(usage.Options):
    synopsis = "--config FILE [options]"
    longdesc = (
        "Run the test cell controller.  FILE is the master configuration (JSON in the "
        "existing master_config_file.json format, or TOML with the same keys)."
    )
    optParameters = [
        ["config", "c", "master_config_file.json", "Master configuration file (JSON or TOML)."],
        ["device-id", "d", None, "Override device_id."],
        ["sites", "s", None, "Override the site list (comma separated, e.g. 0,1,2,3)."],
        ["broker", "b", None, "Override the broker address, HOST:PORT."],
        ["file", "f", None, "Accepted for compatibility with the existing master; unused."],
    ]

    def postOptions(self) -> None:
        host = port = None
        if self["broker"]:
            host, _, port_text = self["broker"].rpartition(":")
            if not host or not port_text.isdigit():
                _fail(f"--broker: expected HOST:PORT, got {self['broker']!r}")
            port = int(port_text)
        try:
            self["master_config"] = load_master_config(
                self["config"], device_id=self["device-id"], sites=self["sites"],
                broker_host=host, broker_port=port,
            )
        except ConfigError as e:
            _fail(str(e))
        try:
            from ate.web.site import check_access_config
        except ImportError:  # pragma: no cover - web not installed
            return
        try:
            check_access_config(self["master_config"])
        except ValueError as e:
            _fail(f"{self['config']}: webui_host: {e}")


def _fail(line: str) -> None:
    sys.stderr.write(f"ate-master: {line}\n")
    sys.stderr.flush()
    raise SystemExit(2)


class MasterService(Service):
    """Stops before MQTT: finalises the datalog and publishes the last status."""

    log = Logger(namespace="ate.master")

    def __init__(self, cell: Any, clock: Any, stop_timeout: float = 3.0) -> None:
        self.cell = cell
        self.clock = clock
        self.stop_timeout = stop_timeout

    def startService(self) -> None:
        super().startService()
        self.log.info("ate-master for {device} with sites {sites}",
                      device=self.cell.config.device_id, sites=",".join(self.cell.sites))

    def stopService(self) -> Deferred:
        super().stopService()
        d = maybeDeferred(self.cell.stop)
        d.addTimeout(self.stop_timeout, self.clock)
        d.addErrback(lambda f: self.log.warn("last status not acknowledged: {why}",
                                             why=f.getErrorMessage()))
        return d


def build_master(cfg: MasterConfig, reactor: Any, *, observe_logs: bool = True) -> tuple[MultiService, Any]:
    """Assemble the master: returns (top service, cell)."""
    from ate.jobs.source import job_source_from_config
    from ate.master.cell import Cell
    from ate.master.logs import LogBuffer, LogFileWriter
    from ate.master.router import Router
    from ate.master.settings import UserSettings
    from ate.mqtt.service import MqttService
    from ate.protocol import messages as m
    from ate.stdf.recover import recover_directory

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

    if os.path.isdir(cfg.stdf_directory):  # created at the first load otherwise
        for line in recover_directory(cfg.stdf_directory):
            log.warn("datalog recovery: {line}", line=line)

    pool = reactor.getThreadPool()

    def run_in_thread(f: Any, *args: Any) -> Deferred:
        return deferToThreadPool(reactor, pool, f, *args)

    top = MultiService()
    holder: dict[str, Any] = {}

    def on_message(topic: str, payload: bytes) -> None:
        holder["router"].received(topic, payload)

    codec = m.Codec(cfg.device_id, cfg.sites, cfg.handler_id)
    will_topic, will_payload = codec.encode(m.MasterStatus(state="crash", message=""))
    mqtt = MqttService(
        reactor, cfg.mqtt, f"masterapp.{cfg.device_id}",
        will=(will_topic, will_payload, 2),
        subscriptions=[(topic, cfg.mqtt.subscribe_qos)
                       for topic, _qos in codec.topics.master_subscriptions(cfg.peripherals)],
        on_message=on_message,
        on_connected=lambda: holder["cell"].mqtt_connected(),
        on_disconnected=lambda: holder["cell"].mqtt_disconnected(),
    )
    cell = Cell(
        cfg, reactor, mqtt,
        job_source=job_source_from_config(cfg),
        settings=UserSettings(cfg.user_settings_filepath),
        logs=logs,
        run_in_thread=run_in_thread,
    )
    cell.log_file = writer
    holder["cell"] = cell
    holder["router"] = Router(cell)
    mqtt.setServiceParent(top)  # started first, stopped last
    MasterService(cell, reactor).setServiceParent(top)
    try:
        from ate.web.site import web_service
    except ImportError:  # pragma: no cover - web part not present
        web_service = None
    if web_service is not None:
        web_service(cell, reactor, cfg).setServiceParent(top)
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


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor  # the one place the global reactor is used
    top, _cell = build_master(options["master_config"], reactor)
    install_clean_exit(reactor)
    return top
