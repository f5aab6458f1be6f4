"""The ate-master config (protocol.md 12.1): :class:`MasterConfig` and its loaders."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ate.alarms.rules import AlarmRule, AlarmRuleError, parse_alarms
from ate.config.common import (
    _MISSING,
    DEFAULT_WEBUI_ROOT,
    JOB_FORMATS,
    JOB_SOURCES,
    MqttOptions,
    _check_ident,
    _check_layout,
    _check_list,
    _check_port,
    _check_sites,
    _check_string,
    _describe,
    _is_int,
    _override,
    _port_override,
    _read_file,
    _read_mqtt,
    _read_timeouts,
    _Reader,
    _split_sites_override,
    _start,
    _with_warnings,
)
from ate.protocol import LOG_LEVELS


@dataclass(frozen=True)
class Timeouts:
    """Phase timers of the master, in seconds (protocol.md 3.5)."""

    startup: float = 300.0
    load: float = 180.0
    next_ack: float = 5.0
    test: float = 30.0
    unload: float = 60.0
    reset: float = 60.0
    ioctl: float = 5.0


@dataclass(frozen=True)
class MasterConfig:
    """The validated configuration of ate-master (protocol.md 12.1)."""

    path: str
    device_id: str
    sites: tuple[str, ...]
    handler_id: str
    environment: str
    webui_host: str
    webui_port: int
    webui_root_path: str
    webui_token: str | None = field(repr=False)  # a secret: never in a repr
    jobsource: str
    jobformat: str
    filesystemdatasource_path: str
    filesystemdatasource_jobpattern: str
    skip_jobdata_verification: bool
    enable_timeouts: bool
    user_settings_filepath: str | None
    site_layout: tuple[tuple[int, int], ...]
    tester_type: str | None
    loglevel: int
    stdf_directory: str
    log_directory: str
    stdf_fsync_interval: float
    timeouts: Timeouts
    peripherals: tuple[str, ...]
    mqtt: MqttOptions
    #: Alarm rules (protocol.md 15.1), in the order given.
    alarms: tuple[AlarmRule, ...] = ()
    #: The lot history database (15.3); None: ``<stdf_directory>/history.sqlite``.
    history_database: str | None = None
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------
# ate-master


def load_master_config(
    path: str | os.PathLike[str],
    *,
    device_id: str | None = None,
    sites: str | Sequence[str] | None = None,
    broker_host: str | None = None,
    broker_port: int | str | None = None,
    webui_host: str | None = None,
    webui_port: int | str | None = None,
) -> MasterConfig:
    """Load and validate the ate-master config file at ``path``.

    The keyword arguments are command-line overrides (``sites`` as ``"0,1,2"`` or a list);
    they replace the file's value and are validated the same way.  Raises
    :class:`ConfigError`.
    """
    name, data, warnings = _read_file(path)
    return _master_config(
        _start(data, name, warnings), device_id, sites, broker_host, broker_port,
        webui_host, webui_port,
    )


def master_config_from_dict(
    data: Mapping[str, Any],
    *,
    source: str = "<dict>",
    device_id: str | None = None,
    sites: str | Sequence[str] | None = None,
    broker_host: str | None = None,
    broker_port: int | str | None = None,
    webui_host: str | None = None,
    webui_port: int | str | None = None,
) -> MasterConfig:
    """Like :func:`load_master_config`, from an already parsed object; ``path`` = ``source``."""
    return _master_config(_start(data, source), device_id, sites, broker_host, broker_port,
                          webui_host, webui_port)


def _master_config(
    r: _Reader,
    device_id: str | None,
    sites: Any,
    broker_host: str | None,
    broker_port: int | str | None,
    webui_host: str | None = None,
    webui_port: int | str | None = None,
) -> MasterConfig:
    if r.raw("develop_mode", False) is not False:
        value = r.data["develop_mode"]
        if value is True:
            r.fail("develop_mode", "develop_mode is not supported; remove it or set it to false")
        r.fail("develop_mode", f"must be true or false, got {_describe(value)}")

    mqtt = _read_mqtt(r, broker_host, broker_port)
    dev = _check_ident(r, "device_id", _override(r, "device_id", device_id))
    site_ids = _check_sites(r, "sites", _override(r, "sites", _split_sites_override(sites)))
    handler_id = r.ident("Handler")

    jobsource = r.string("jobsource")
    if jobsource not in JOB_SOURCES:
        r.fail(
            "jobsource",
            f"unknown job source {json.dumps(jobsource)}; "
            f"must be one of: {', '.join(JOB_SOURCES)}",
        )
    if jobsource == "static":
        r.warn("jobsource", "\"static\" provides no test program; every load will be refused")
    jobformat = r.string("jobformat")
    if jobformat not in JOB_FORMATS:
        r.fail("jobformat", f"unknown job format {json.dumps(jobformat)}; must be {JOB_FORMATS[0]}")
    fs_default = _MISSING if jobsource == "filesystem" else ""
    fs_path = r.string("filesystemdatasource_path", fs_default, empty=fs_default == "")
    fs_pattern = r.string("filesystemdatasource_jobpattern", fs_default, empty=fs_default == "")

    if r.has("webui_root_path"):
        web_root = r.string("webui_root_path")
        if not os.path.isdir(web_root):
            r.fail(
                "webui_root_path",
                f"directory {json.dumps(web_root)} does not exist "
                f"(relative to the working directory {os.getcwd()})",
            )
    else:
        web_root = DEFAULT_WEBUI_ROOT

    webui_token = r.string("webui_token", None)

    enable = r.raw("enable_timeouts", True)
    if not isinstance(enable, bool) and not _is_int(enable):
        r.fail("enable_timeouts", f"must be true, false or an integer, got {_describe(enable)}")

    if r.has("site_layout"):
        layout = _check_layout(r, "site_layout", r.raw("site_layout"))
        if len(layout) > len(site_ids) and sites is not None:
            r.warn(
                "site_layout",
                f"has {len(layout)} positions; only the first {len(site_ids)} are used "
                "for the sites given on the command line",
            )
            layout = layout[: len(site_ids)]
        if len(layout) > len(site_ids):
            r.fail(
                "site_layout",
                f"has {len(layout)} positions but only {len(site_ids)} sites are configured",
            )
        if len(layout) < len(site_ids):
            r.warn("site_layout", f"has {len(layout)} positions for {len(site_ids)} sites")
    else:
        r.seen.add("site_layout")
        layout = tuple((i, 0) for i in range(len(site_ids)))

    peripherals_raw = _check_list(r, "peripherals", r.raw("peripherals", []))
    peripherals = tuple(
        _check_ident(r, f"peripherals[{i}]", item) for i, item in enumerate(peripherals_raw)
    )
    if len(set(peripherals)) != len(peripherals):
        r.fail("peripherals", "lists a peripheral type twice")

    try:
        alarms = parse_alarms(r.raw("alarms", []))
    except AlarmRuleError as e:
        r.fail(e.key, e.problem)

    config = MasterConfig(
        path=r.source,
        device_id=dev,
        sites=site_ids,
        handler_id=handler_id,
        environment=r.string("environment", "", empty=True),
        webui_host=(r.string("webui_host", "127.0.0.1") if webui_host is None
                    else _check_string(r, "webui_host", _override(r, "webui_host", webui_host))),
        webui_port=_check_port(r, "webui_port", _port_override(r, "webui_port", webui_port, 8081)),
        webui_root_path=web_root,
        webui_token=webui_token,
        jobsource=jobsource,
        jobformat=jobformat,
        filesystemdatasource_path=fs_path,
        filesystemdatasource_jobpattern=fs_pattern,
        skip_jobdata_verification=r.boolean("skip_jobdata_verification", False),
        enable_timeouts=bool(enable),
        user_settings_filepath=r.string("user_settings_filepath", None),
        site_layout=layout,
        tester_type=r.string("tester_type", None, empty=True),
        loglevel=r.integer("loglevel", 30, choices=LOG_LEVELS),
        stdf_directory=r.string("stdf_directory", "."),
        log_directory=r.string("log_directory", "log"),
        stdf_fsync_interval=r.number("stdf_fsync_interval", 0.2),
        timeouts=_read_timeouts(r, "timeouts", Timeouts()),
        peripherals=peripherals,
        mqtt=mqtt,
        alarms=alarms,
        history_database=r.string("history_database", None),
    )
    r.warn_unknown()
    return _with_warnings(config, r)

