"""What ``--check`` prints: the validated configuration of a program, in the operator's terms.

Pure module (no Twisted).  Each ``check_*`` function takes a config that the loader has
already validated and returns a :class:`Report`: what the program would run with (broker,
sites, job directory, datalog directory, web address ...), warnings (the loader's, and
directories that do not exist yet) and errors (what stops the program from starting, such
as a job directory that does not exist).  ``twistd <program> --config FILE --check``
prints the report and exits with :attr:`Report.exit_code` (0, or 2 with errors).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Report", "check_master", "check_handler", "check_sim", "job_directory_problem",
           "web_url", "broker_text", "directory_state"]


@dataclass
class Report:
    """The result of a check: ``items`` are (label, value) lines."""

    program: str
    path: str
    items: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 0

    def text(self, version: str = "") -> str:
        head = f"{self.program} {version}".strip()
        verdict = "has errors" if self.errors else "is valid"
        lines = [f"{head}: {self.path} {verdict}; it would run with:"]
        width = max((len(label) for label, _ in self.items), default=0)
        lines += [f"  {label.ljust(width)}  {value}" for label, value in self.items]
        lines += [f"warning: {text}" for text in self.warnings]
        lines += [f"error: {text}" for text in self.errors]
        return "\n".join(lines) + "\n"


def broker_text(mqtt: Any) -> str:
    """``host:port`` of the broker and how the connection is made."""
    parts = [f"{_host_port(mqtt.host, mqtt.port)}"]
    parts.append("TLS" if mqtt.tls else "plain TCP")
    if mqtt.username:
        parts.append(f"user {mqtt.username}")
    if getattr(mqtt, "client", None):
        parts.append(f"{mqtt.client} client")
    return ", ".join(parts)


def web_url(host: str, port: int) -> str:
    """The address of the web UI as a browser would use it."""
    return f"http://{_host_port(host, port)}/"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def directory_state(path: str, what: str, key: str) -> tuple[str, str | None]:
    """(description, warning or None) of a directory the program writes into."""
    absolute = os.path.abspath(path)
    shown = path if path == absolute else f"{path} ({absolute})"
    if os.path.isdir(absolute):
        if os.access(absolute, os.W_OK | os.X_OK):
            return shown, None
        return shown, f"{key}: {what} directory {absolute} is not writable by this user"
    if os.path.exists(absolute):
        return shown, f"{key}: {absolute} is not a directory"
    parent = absolute
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    if os.access(parent, os.W_OK | os.X_OK):
        return (f"{shown}, created when first needed",
                f"{key}: {what} directory {absolute} does not exist yet; it is created when "
                "first needed")
    return (shown, f"{key}: {what} directory {absolute} does not exist and cannot be created "
                   f"({parent} is not writable by this user)")


def job_directory_problem(cfg: Any) -> str | None:
    """The one-line reason the master could never load a job, or None.

    ``jobsource = "filesystem"`` needs ``filesystemdatasource_path`` to be an existing,
    readable directory (relative paths are relative to the working directory).
    """
    if cfg.jobsource != "filesystem":
        return None
    path = cfg.filesystemdatasource_path
    absolute = os.path.abspath(path)
    where = "" if path == absolute else f" (relative to the working directory {os.getcwd()})"
    if not os.path.exists(absolute):
        return (f"{cfg.path}: filesystemdatasource_path: job directory {path!r} does not "
                f"exist{where}")
    if not os.path.isdir(absolute):
        return f"{cfg.path}: filesystemdatasource_path: {path!r} is not a directory{where}"
    if not os.access(absolute, os.R_OK | os.X_OK):
        return (f"{cfg.path}: filesystemdatasource_path: job directory {absolute} is not "
                "readable by this user")
    return None


def _job_files(cfg: Any) -> list[str]:
    pattern = cfg.filesystemdatasource_jobpattern.replace("#jobname#", "*")
    directory = os.path.abspath(cfg.filesystemdatasource_path)
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(directory),
                                                                       pattern)))


def check_master(cfg: Any) -> Report:
    """What ``twistd ate-master --config FILE`` would run with."""
    report = Report("ate-master", cfg.path)
    add = report.items.append
    add(("broker", broker_text(cfg.mqtt)))
    add(("device", f"{cfg.device_id} (handler {cfg.handler_id}"
                   + (f", environment {cfg.environment})" if cfg.environment else ")")))
    add(("sites", ", ".join(cfg.sites)))
    if cfg.jobsource == "filesystem":
        problem = job_directory_problem(cfg)
        directory = cfg.filesystemdatasource_path
        absolute = os.path.abspath(directory)
        shown = directory if directory == absolute else f"{directory} ({absolute})"
        if problem is not None:
            report.errors.append(problem)
            add(("jobs", f"{shown}, files {cfg.filesystemdatasource_jobpattern}: MISSING"))
        else:
            files = _job_files(cfg)
            found = (f"{len(files)} found: {', '.join(files[:5])}"
                     + (", ..." if len(files) > 5 else "")) if files else "none found yet"
            add(("jobs", f"{shown}, files {cfg.filesystemdatasource_jobpattern} ({found})"))
            if not files:
                report.warnings.append(
                    f"filesystemdatasource_path: no job file matching "
                    f"{cfg.filesystemdatasource_jobpattern} in {absolute} yet")
    else:
        add(("jobs", f"jobsource {cfg.jobsource} (every load is refused)"))
    for label, path, what, key in (("datalogs", cfg.stdf_directory, "datalog", "stdf_directory"),
                                   ("logs", cfg.log_directory, "log", "log_directory")):
        text, warning = directory_state(path, what, key)
        add((label, text))
        if warning is not None:
            report.warnings.append(warning)
    settings = cfg.user_settings_filepath
    add(("settings", os.path.abspath(settings) if settings else "in memory only "
         "(user_settings_filepath not set)"))
    access = "token required from other hosts" if cfg.webui_token else "no token"
    root = ("the shipped operator UI" if os.path.abspath(cfg.webui_root_path)
            == os.path.abspath(_shipped_ui()) else cfg.webui_root_path)
    add(("web", f"{web_url(cfg.webui_host, cfg.webui_port)} ({root}; {access})"))
    add(("timeouts", "enabled" if cfg.enable_timeouts else "disabled (enable_timeouts false)"))
    add(("log level", str(cfg.loglevel)))
    from ate.master.lothistory import history_path
    add(("history", os.path.abspath(history_path(cfg))))
    add(("alarms", "; ".join(f"{r.name} ({r.kind}, {r.action})" for r in cfg.alarms)
         if cfg.alarms else "none"))
    report.warnings[:0] = list(cfg.warnings)
    return report


def _shipped_ui() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "web", "static")


def handler_device_text(cfg: Any, serial: Any = None) -> str:
    """Where ate-handler finds the handler device (``serial``: resolved SerialOptions)."""
    if serial is not None:
        return (f"serial port {serial.port} ({serial.baudrate} baud, {serial.bytesize}"
                f"{serial.parity}{serial.stopbits:g}, read timeout {serial.timeout:g} s)")
    if cfg.serial is not None:
        return f"connects to {cfg.serial}"
    if cfg.listen is not None:
        return f"listens on {cfg.listen} for the handler device"
    return "simulated handler device (in process)"


def check_handler(cfg: Any, serial: Any = None, *, have_pyserial: bool = True) -> Report:
    """What ``twistd ate-handler --config FILE`` would run with."""
    report = Report("ate-handler", cfg.path)
    add = report.items.append
    add(("broker", broker_text(cfg.broker)))
    add(("handler", f"{cfg.handler_id} ({cfg.handler_type})"))
    add(("masters", ", ".join(cfg.device_ids)))
    add(("device", handler_device_text(cfg, serial)))
    add(("site layout", " ".join(f"[{x},{y}]" for x, y in cfg.site_layout)))
    t = cfg.timeouts
    add(("timeouts", f"load {t.load:g} s, next {t.next:g} s, unload {t.unload:g} s, "
                     f"startup {t.startup:g} s"))
    if serial is not None:
        if not have_pyserial:
            report.errors.append(serial_needs_pyserial(serial.port))
        elif not os.path.exists(serial.port):
            report.warnings.append(f"serial port {serial.port} does not exist (yet)")
    report.warnings[:0] = list(cfg.warnings)
    return report


def serial_needs_pyserial(port: str) -> str:
    return (f"serial port {port} needs pyserial, which is not installed: "
            "pip install 'ate-master[serial]' (or pip install pyserial)")


def check_sim(cfg: Any) -> Report:
    """What ``twistd ate-sim-sites --config FILE`` would run with."""
    report = Report("ate-sim-sites", cfg.path)
    add = report.items.append
    add(("broker", broker_text(cfg.broker)))
    add(("device", cfg.device_id))
    add(("sites", ", ".join(cfg.sites)))
    add(("timing", f"test {cfg.test_time:g} s per part, load {cfg.load_time:g} s, "
                   f"execution strategy after {cfg.strategy_delay:g} s"))
    add(("bins", ", ".join(f"{b.sbin}/{b.hbin} x{b.weight:g}" for b in cfg.bins)))
    add(("faults", cfg.faults.describe()))
    report.warnings[:0] = list(cfg.warnings)
    return report
