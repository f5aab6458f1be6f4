"""Configuration files of ate-master, ate-handler and the simulated sites.

Pure module: no Twisted.  Every loader reads JSON (the reference's format, accepted
unchanged) or TOML (by the suffix ``.toml``) with the same key names, validates every key
and returns a frozen dataclass.  Any problem raises :class:`ConfigError`, whose ``str()`` is
one line naming the file, the key and the problem.  Things that are accepted but doubtful
(unknown keys, an unusual site list, ``jobsource = "static"``) are collected as text in the
``warnings`` field, for the caller to log.

Relative paths are kept as written and, as in the reference, are relative to the working
directory of the process.  See protocol.md section 12 and docs/internals.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, replace
from typing import Any, Mapping, NoReturn, Sequence

from ate.protocol import LOG_LEVELS

__all__ = [
    "ConfigError",
    "Timeouts",
    "HandlerTimeouts",
    "MqttOptions",
    "MasterConfig",
    "HandlerConfig",
    "SimBin",
    "SimFaults",
    "SimConfig",
    "DEFAULT_WEBUI_ROOT",
    "DEFAULT_SIM_BINS",
    "SIM_DEFAULTS",
    "SimDefaults",
    "load_master_config",
    "master_config_from_dict",
    "load_handler_config",
    "handler_config_from_dict",
    "load_sim_config",
    "sim_config_from_dict",
    "mqtt_options_from_dict",
    "parse_sites",
]

#: The operator UI shipped with the package (``ate/web/static``).
DEFAULT_WEBUI_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web", "static")

JOB_SOURCES = ("filesystem", "static")
JOB_FORMATS = ("xml.semi-ate",)
HANDLER_TYPES = ("geringer", "simulated")
SERIAL_PARITIES = ("N", "E", "O", "M", "S")


# --------------------------------------------------------------------------------------
# Errors


class ConfigError(Exception):
    """A configuration problem.  ``str(e)`` is exactly ``"<file>: <key>: <problem>"``.

    ``key`` is ``"-"`` when the whole file is at fault (unreadable, not parseable, not an
    object).  Nested keys are written ``timeouts.load``, ``site_layout[2]``,
    ``bins[0].weight``.
    """

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = _one_line(str(file))
        self.key = _one_line(str(key))
        self.problem = _one_line(str(problem))
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.problem}"


def _one_line(text: str) -> str:
    return " ".join(text.split()) if ("\n" in text or "\r" in text) else text


# --------------------------------------------------------------------------------------
# Result types


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
class HandlerTimeouts:
    """Timers of ate-handler, in seconds (protocol.md 13.2)."""

    load: float = 200.0
    next: float = 40.0
    unload: float = 70.0
    startup: float = 300.0
    ready: float = 15.0


@dataclass(frozen=True)
class MqttOptions:
    """How to reach the MQTT broker."""

    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    keepalive: int = 60
    subscribe_qos: int = 0
    client: str = "twisted"
    max_packet_size: int = 4 * 1024 * 1024  # bytes after a packet's fixed header


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
    webui_token: str | None
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
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class HandlerConfig:
    """The validated configuration of ate-handler (protocol.md 12.2 and 13)."""

    path: str
    broker: MqttOptions
    handler_type: str
    handler_id: str
    device_ids: tuple[str, ...]
    site_layout: tuple[tuple[int, int], ...]
    loglevel: int
    serial: str | None
    listen: str | None
    site_map: tuple[tuple[str, str], ...] | None
    timeouts: HandlerTimeouts
    warnings: tuple[str, ...] = ()
    #: the handler device's serial port (e.g. ``/dev/ttyUSB0``) and its line settings;
    #: the command line's positional port and ``--baudrate`` etc. take precedence
    serial_port: str | None = None
    serial_baudrate: int = 115200
    serial_timeout: float = 0.2
    serial_parity: str = "N"
    serial_bytesize: int = 8
    serial_stopbits: float = 1


@dataclass(frozen=True)
class SimBin:
    """One outcome of a simulated part: soft bin, hard bin and relative weight."""

    sbin: int
    hbin: int
    weight: float


@dataclass(frozen=True)
class SimFaults:
    """Faults the simulated sites inject.  Part numbers count from 1; ``None`` = never.

    ``fault_site`` ``None``: the first configured site (the loader always names one).
    """

    crash_on_part: int | None = None
    drop_result_on_part: int | None = None
    wrong_site_on_part: int | None = None
    duplicate_result_on_part: int | None = None
    slow_load: float = 0.0
    fault_site: str | None = None


#: Default outcome mix of the simulated sites, consistent with the fixture job's bin table.
DEFAULT_SIM_BINS: tuple[SimBin, ...] = (
    SimBin(1, 1, 80.0),
    SimBin(2, 2, 5.0),
    SimBin(12, 5, 5.0),
    SimBin(13, 5, 3.0),
    SimBin(20, 6, 4.0),
    SimBin(21, 6, 3.0),
)


@dataclass(frozen=True)
class SimDefaults:
    """The defaults of the simulated sites' keys, kept once: the loader and
    :class:`ate.sim.sites.SimSites` (its keyword defaults) both take them from here."""

    test_time: float = 0.0
    load_time: float = 0.0
    ptr_count: int = 5
    seed: int = 1
    strategy_delay: float = 0.05
    bins: tuple[SimBin, ...] = DEFAULT_SIM_BINS


SIM_DEFAULTS = SimDefaults()


@dataclass(frozen=True)
class SimConfig:
    """The validated configuration of the simulated sites program."""

    path: str
    broker: MqttOptions
    device_id: str
    sites: tuple[str, ...]
    test_time: float
    load_time: float
    ptr_count: int
    bins: tuple[SimBin, ...]
    seed: int
    faults: SimFaults
    warnings: tuple[str, ...] = ()
    strategy_delay: float = SIM_DEFAULTS.strategy_delay


# --------------------------------------------------------------------------------------
# Low-level reading and validation


_MISSING: Any = object()
_ID_FORBIDDEN = re.compile(r"[/+#\x00-\x1f\x7f]")
_SITE_ID = re.compile(r"0|[1-9][0-9]{0,2}")
_ENDPOINT = re.compile(r"[A-Za-z][A-Za-z0-9_-]*:.+", re.DOTALL)


def _describe(value: Any) -> str:
    """Name a value the way a JSON or TOML author would recognise it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean " + ("true" if value else "false")
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"string {json.dumps(text)}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Reader:
    """Reads keys of one config object, tracking which keys were used."""

    def __init__(self, data: Mapping[str, Any], source: str, warnings: list[str]) -> None:
        self.data = data
        self.source = source
        self.warnings = warnings
        self.seen: set[str] = set()

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(self.source, key, problem)

    def warn(self, key: str, problem: str) -> None:
        self.warnings.append(f"{self.source}: {key}: {problem}")

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self.seen.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            self.fail(key, "missing required key")
        return default

    def string(self, key: str, default: Any = _MISSING, *, empty: bool = False) -> Any:
        value = self.raw(key, default)
        if value is None and default is None:
            return None
        return _check_string(self, key, value, empty=empty)

    def ident(self, key: str, default: Any = _MISSING) -> str:
        return _check_ident(self, key, self.raw(key, default))

    def integer(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        choices: Sequence[int] | None = None,
    ) -> Any:
        value = self.raw(key, default)
        if value is None and default is None:
            return None
        return _check_int(self, key, value, minimum=minimum, maximum=maximum, choices=choices)

    def number(self, key: str, default: Any = _MISSING, *, positive: bool = False) -> float:
        return _check_number(self, key, self.raw(key, default), positive=positive)

    def choice(self, key: str, allowed: Sequence[str], default: Any = _MISSING) -> str:
        value = self.string(key, default)
        if value not in allowed:
            self.fail(key, f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {_describe(value)}")
        return value

    def warn_unknown(self, what: str = "key") -> None:
        for key in self.data:
            if key not in self.seen:
                self.warn(str(key), f"unknown {what}, ignored")

    def reject_unknown(self, prefix: str, table: Mapping[str, Any], allowed: Sequence[str]) -> None:
        """Nested objects are strict: a misspelt name there is an error, not a warning."""
        for key in table:
            if key not in allowed:
                self.fail(
                    f"{prefix}.{key}",
                    f"unknown name; allowed: {', '.join(allowed)}",
                )


def _check_string(r: _Reader, key: str, value: Any, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        r.fail(key, f"must be a string, got {_describe(value)}")
    if not empty and not value.strip():
        r.fail(key, "must not be empty")
    return value


def _check_ident(r: _Reader, key: str, value: Any) -> str:
    """An id used inside MQTT topic names (device id, handler id, peripheral type)."""
    value = _check_string(r, key, value)
    if _ID_FORBIDDEN.search(value):
        r.fail(key, f"{json.dumps(value)} must not contain '/', '+', '#' or control characters")
    if value != value.strip():
        r.fail(key, f"{json.dumps(value)} must not start or end with spaces")
    return value


def _check_int(
    r: _Reader,
    key: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    choices: Sequence[int] | None = None,
) -> int:
    if not _is_int(value):
        r.fail(key, f"must be an integer, got {_describe(value)}")
    if choices is not None and value not in choices:
        r.fail(key, f"must be one of {', '.join(map(str, choices))}, got {value}")
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        r.fail(key, f"must be between {minimum} and {maximum}, got {value}")
    if minimum is not None and value < minimum:
        r.fail(key, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        r.fail(key, f"must be at most {maximum}, got {value}")
    return value


def _check_number(r: _Reader, key: str, value: Any, *, positive: bool = False) -> float:
    if not _is_number(value):
        r.fail(key, f"must be a number, got {_describe(value)}")
    if not math.isfinite(value):
        r.fail(key, f"must be a finite number, got {value!r}")
    if positive and value <= 0:
        r.fail(key, f"must be greater than 0, got {value!r}")
    if not positive and value < 0:
        r.fail(key, f"must not be negative, got {value!r}")
    return float(value)


def _check_port(r: _Reader, key: str, value: Any) -> int:
    return _check_int(r, key, value, minimum=1, maximum=65535)


def _check_list(r: _Reader, key: str, value: Any) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)):
        r.fail(key, f"must be a list, got {_describe(value)}")
    return value


def _check_object(r: _Reader, key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        r.fail(key, f"must be an object (a table in TOML), got {_describe(value)}")
    return value


def _check_site_id(r: _Reader, key: str, value: Any) -> str:
    if not isinstance(value, str):
        r.fail(key, f"site ids must be strings such as \"0\", got {_describe(value)}")
    if not _SITE_ID.fullmatch(value) or int(value) > 255:
        r.fail(
            key,
            f"site id {json.dumps(value)} must be a decimal integer 0..255 "
            "written without sign, spaces or leading zeros",
        )
    return value


def _check_sites(r: _Reader, key: str, value: Any) -> tuple[str, ...]:
    """A non-empty list of unique site ids; warns unless it is "0".."N-1" in order."""
    items = _check_list(r, key, value)
    if not items:
        r.fail(key, "must list at least one site")
    sites: list[str] = []
    for index, item in enumerate(items):
        site = _check_site_id(r, f"{key}[{index}]", item)
        if site in sites:
            r.fail(key, f"site {json.dumps(site)} is listed twice")
        sites.append(site)
    expected = [str(i) for i in range(len(sites))]
    if sites != expected:
        r.warn(
            key,
            f"sites {', '.join(sites)} are not \"0\"..\"{len(sites) - 1}\" in order; "
            "the MSCT web UI matches sites by position and will show them wrongly",
        )
    return tuple(sites)


def _split_sites_override(value: Any) -> Any:
    """A command-line site list: "0,1,2" or a list; anything else is checked later."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")] if value.strip() else []
    return value


def _check_layout(r: _Reader, key: str, value: Any) -> tuple[tuple[int, int], ...]:
    items = _check_list(r, key, value)
    layout: list[tuple[int, int]] = []
    for index, item in enumerate(items):
        where = f"{key}[{index}]"
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            r.fail(where, f"must be an [x, y] pair, got {_describe(item)}")
        x, y = item
        for name, coordinate in (("x", x), ("y", y)):
            if not _is_int(coordinate) or coordinate < 0:
                r.fail(where, f"{name} must be a non-negative integer, got {_describe(coordinate)}")
        layout.append((x, y))
    return tuple(layout)


def _check_endpoint(r: _Reader, key: str, value: Any) -> str:
    value = _check_string(r, key, value)
    if not _ENDPOINT.fullmatch(value):
        r.fail(
            key,
            f"{json.dumps(value)} is not a Twisted endpoint string such as "
            "\"tcp:127.0.0.1:5000\" or \"unix:/path/to/socket\"",
        )
    return value


def _check_positive_part(r: _Reader, key: str, value: Any) -> int | None:
    if value is None:
        return None
    return _check_int(r, key, value, minimum=1)


def _read_timeouts(r: _Reader, key: str, defaults: Any) -> Any:
    """A partial object of positive seconds, merged over the dataclass ``defaults``."""
    value = r.raw(key, None)
    if value is None:
        return defaults
    table = _check_object(r, key, value)
    names = list(type(defaults).__dataclass_fields__)
    r.reject_unknown(key, table, names)
    merged = {name: getattr(defaults, name) for name in names}
    for name, seconds in table.items():
        merged[name] = _check_number(r, f"{key}.{name}", seconds, positive=True)
    return type(defaults)(**merged)


# --------------------------------------------------------------------------------------
# MQTT options, shared by all three programs


def _read_mqtt(
    r: _Reader,
    broker_host: str | None,
    broker_port: int | str | None,
    *,
    require_broker: bool = False,
) -> MqttOptions:
    if broker_host is not None:
        r.seen.add("broker_host")
        host = _check_string(r, "broker_host", broker_host)
    else:
        host = r.string("broker_host", _MISSING if require_broker else "localhost")
    if broker_port is not None:
        r.seen.add("broker_port")
        port = broker_port
        if isinstance(port, str) and port.strip().isdigit():
            port = int(port.strip())
        port = _check_port(r, "broker_port", port)
    else:
        default_port = _MISSING if require_broker else 1883
        port = _check_port(r, "broker_port", r.raw("broker_port", default_port))
    options = MqttOptions(
        host=host,
        port=port,
        username=r.string("mqtt_username", None),
        password=r.string("mqtt_password", None, empty=True),
        tls=r.boolean("mqtt_tls", False),
        tls_ca=r.string("mqtt_tls_ca", None),
        tls_cert=r.string("mqtt_tls_cert", None),
        tls_key=r.string("mqtt_tls_key", None),
        tls_insecure=r.boolean("mqtt_tls_insecure", False),
        keepalive=r.integer("mqtt_keepalive", 60, minimum=0, maximum=65535),
        subscribe_qos=r.integer("mqtt_subscribe_qos", 0, minimum=0, maximum=2),
        client=r.choice("mqtt_client", ("twisted", "paho"), "twisted"),
        max_packet_size=r.integer("mqtt_max_packet_size", 4 * 1024 * 1024, minimum=1024,
                                  maximum=268_435_455),
    )
    if options.password is not None and options.username is None:
        r.fail("mqtt_password", "is set but mqtt_username is not")
    if options.tls_key is not None and options.tls_cert is None:
        r.fail("mqtt_tls_key", "is set but mqtt_tls_cert is not")
    if not options.tls:
        for key in ("mqtt_tls_ca", "mqtt_tls_cert", "mqtt_tls_key", "mqtt_tls_insecure"):
            if r.has(key) and r.data[key] not in (None, False):
                r.warn(key, "ignored because mqtt_tls is not true")
    return options


def mqtt_options_from_dict(
    data: Mapping[str, Any],
    *,
    source: str = "<dict>",
    broker_host: str | None = None,
    broker_port: int | str | None = None,
) -> MqttOptions:
    """Build :class:`MqttOptions` from the broker and ``mqtt_*`` keys of ``data``.

    Other keys are ignored; a missing key takes its default.  Raises :class:`ConfigError`.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(source, "-", f"must be an object, got {_describe(data)}")
    return _read_mqtt(_Reader(data, source, []), broker_host, broker_port)


def parse_sites(
    value: Any, *, source: str = "<command line>", key: str = "sites"
) -> tuple[str, ...]:
    """Validate a site list given as ``"0,1,2"`` or as a list of strings.

    Raises :class:`ConfigError`; ordering warnings are dropped (use the loaders to get them).
    """
    return _check_sites(_Reader({}, source, []), key, _split_sites_override(value))


# --------------------------------------------------------------------------------------
# Reading files


def _read_file(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any], list[str]]:
    """Read and parse one config file: TOML by the suffix ``.toml``, JSON otherwise."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            raw = handle.read()
    except OSError as e:
        raise ConfigError(name, "-", f"cannot read the file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(name, "-", f"the file is not UTF-8 text (byte {e.start})") from None
    warnings: list[str] = []
    if name.lower().endswith(".toml"):
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(name, "-", f"invalid TOML: {e}") from None
        except RecursionError:
            raise ConfigError(name, "-", "invalid TOML: nested too deeply") from None
    else:
        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            result: dict[str, Any] = {}
            for key, value in items:
                if key in result:
                    warnings.append(f"{name}: {key}: key given twice; the last value is used")
                result[key] = value
            return result

        try:
            data = json.loads(text, object_pairs_hook=pairs)
        except json.JSONDecodeError as e:
            raise ConfigError(
                name, "-", f"invalid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
            ) from None
        except RecursionError:
            raise ConfigError(name, "-", "invalid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(name, "-", f"the top level must be an object, got {_describe(data)}")
    return name, data, warnings


def _start(data: Any, source: str, warnings: list[str] | None = None) -> _Reader:
    if not isinstance(data, Mapping):
        raise ConfigError(source, "-", f"the top level must be an object, got {_describe(data)}")
    return _Reader(data, source, list(warnings or ()))


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


def _override(r: _Reader, key: str, value: Any) -> Any:
    """Use a command-line value instead of the file's, if one was given."""
    if value is None:
        return r.raw(key)
    r.seen.add(key)
    return value


def _port_override(r: _Reader, key: str, value: Any, default: int) -> Any:
    """A command-line port (int or decimal text) instead of the file's value or default."""
    if value is None:
        return r.raw(key, default)
    r.seen.add(key)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


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
    )
    r.warn_unknown()
    return _with_warnings(config, r)


def _with_warnings(config: Any, r: _Reader) -> Any:
    """Attach the warnings collected while reading."""
    return replace(config, warnings=tuple(r.warnings))


# --------------------------------------------------------------------------------------
# ate-handler


def load_handler_config(
    path: str | os.PathLike[str],
    *,
    broker_host: str | None = None,
    broker_port: int | str | None = None,
) -> HandlerConfig:
    """Load and validate the ate-handler config file at ``path`` (protocol.md 12.2).

    ``broker_host`` and ``broker_port`` are required in the file unless given here.
    Raises :class:`ConfigError`.
    """
    name, data, warnings = _read_file(path)
    return _handler_config(_start(data, name, warnings), broker_host, broker_port)


def handler_config_from_dict(
    data: Mapping[str, Any],
    *,
    source: str = "<dict>",
    broker_host: str | None = None,
    broker_port: int | str | None = None,
) -> HandlerConfig:
    """Like :func:`load_handler_config`, from an already parsed object."""
    return _handler_config(_start(data, source), broker_host, broker_port)


def _handler_config(
    r: _Reader, broker_host: str | None, broker_port: int | str | None
) -> HandlerConfig:
    broker = _read_mqtt(r, broker_host, broker_port, require_broker=True)
    handler_type = r.string("handler_type")
    if handler_type not in HANDLER_TYPES:
        r.fail(
            "handler_type",
            f"unknown handler type {json.dumps(handler_type)}; "
            f"must be one of: {', '.join(HANDLER_TYPES)}",
        )
    handler_id = r.ident("handler_id")

    ids_raw = _check_list(r, "device_ids", r.raw("device_ids"))
    if not ids_raw:
        r.fail("device_ids", "must list at least one device id")
    device_ids: list[str] = []
    for index, item in enumerate(ids_raw):
        dev = _check_ident(r, f"device_ids[{index}]", item)
        if dev in device_ids:
            r.fail("device_ids", f"device id {json.dumps(dev)} is listed twice")
        device_ids.append(dev)

    layout = _check_layout(r, "site_layout", r.raw("site_layout"))

    site_map: tuple[tuple[str, str], ...] | None = None
    map_raw = r.raw("site_map", None)
    if map_raw is not None:
        entries = _check_list(r, "site_map", map_raw)
        if not entries:
            r.fail("site_map", "must map at least one handler site")
        pairs: list[tuple[str, str]] = []
        for index, item in enumerate(entries):
            where = f"site_map[{index}]"
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                r.fail(where, f"must be a [device_id, site_id] pair, got {_describe(item)}")
            dev = _check_string(r, where, item[0])
            if dev not in device_ids:
                r.fail(where, f"device id {json.dumps(dev)} is not in device_ids")
            site = _check_site_id(r, where, item[1])
            if (dev, site) in pairs:
                r.fail(where, f"site {json.dumps(site)} of {json.dumps(dev)} is mapped twice")
            pairs.append((dev, site))
        site_map = tuple(pairs)
    elif len(device_ids) > 1:
        r.warn("site_map", "not set with several device_ids; every ST (next) will be refused")

    serial = r.raw("serial", None)
    listen = r.raw("listen", None)
    serial_port = r.string("serial_port", None)
    if serial_port is not None:
        for other in ("serial", "listen"):
            if r.raw(other, None) is not None:
                r.fail("serial_port", f"give either serial_port or {other}, not both")
    stopbits = r.raw("serial_stopbits", 1)
    if not _is_number(stopbits) or stopbits not in (1, 1.5, 2):
        r.fail("serial_stopbits", f"must be 1, 1.5 or 2, got {_describe(stopbits)}")
    config = HandlerConfig(
        path=r.source,
        broker=broker,
        handler_type=handler_type,
        handler_id=handler_id,
        device_ids=tuple(device_ids),
        site_layout=layout,
        loglevel=r.integer("loglevel", 30, choices=LOG_LEVELS),
        serial=None if serial is None else _check_endpoint(r, "serial", serial),
        listen=None if listen is None else _check_endpoint(r, "listen", listen),
        site_map=site_map,
        timeouts=_read_timeouts(r, "timeouts", HandlerTimeouts()),
        serial_port=serial_port,
        serial_baudrate=r.integer("serial_baudrate", 115200, minimum=1),
        serial_timeout=r.number("serial_timeout", 0.2),
        serial_parity=r.choice("serial_parity", SERIAL_PARITIES, "N"),
        serial_bytesize=r.integer("serial_bytesize", 8, choices=(5, 6, 7, 8)),
        serial_stopbits=int(stopbits) if stopbits in (1, 2) else float(stopbits),
    )
    r.warn_unknown()
    return _with_warnings(config, r)


# --------------------------------------------------------------------------------------
# Simulated sites


_FAULT_PARTS = (
    "crash_on_part",
    "drop_result_on_part",
    "wrong_site_on_part",
    "duplicate_result_on_part",
)
_FAULT_KEYS = _FAULT_PARTS + ("slow_load", "fault_site")


def load_sim_config(
    path: str | os.PathLike[str],
    *,
    device_id: str | None = None,
    sites: str | Sequence[str] | None = None,
    broker_host: str | None = None,
    broker_port: int | str | None = None,
) -> SimConfig:
    """Load and validate the simulated-sites config at ``path``.  Raises :class:`ConfigError`."""
    name, data, warnings = _read_file(path)
    return _sim_config(_start(data, name, warnings), device_id, sites, broker_host, broker_port)


def sim_config_from_dict(
    data: Mapping[str, Any],
    *,
    source: str = "<dict>",
    device_id: str | None = None,
    sites: str | Sequence[str] | None = None,
    broker_host: str | None = None,
    broker_port: int | str | None = None,
) -> SimConfig:
    """Like :func:`load_sim_config`, from an already parsed object."""
    return _sim_config(_start(data, source), device_id, sites, broker_host, broker_port)


def _sim_config(
    r: _Reader,
    device_id: str | None,
    sites: Any,
    broker_host: str | None,
    broker_port: int | str | None,
) -> SimConfig:
    broker = _read_mqtt(r, broker_host, broker_port)
    dev = _check_ident(r, "device_id", _override(r, "device_id", device_id))
    site_ids = _check_sites(r, "sites", _override(r, "sites", _split_sites_override(sites)))

    bins = SIM_DEFAULTS.bins
    if r.has("bins"):
        entries = _check_list(r, "bins", r.raw("bins"))
        if not entries:
            r.fail("bins", "must list at least one bin")
        parsed: list[SimBin] = []
        for index, item in enumerate(entries):
            where = f"bins[{index}]"
            table = _check_object(r, where, item)
            r.reject_unknown(where, table, ("sbin", "hbin", "weight"))
            for name in ("sbin", "hbin", "weight"):
                if name not in table:
                    r.fail(f"{where}.{name}", "missing required key")
            parsed.append(
                SimBin(
                    sbin=_check_int(r, f"{where}.sbin", table["sbin"], minimum=0, maximum=65535),
                    hbin=_check_int(r, f"{where}.hbin", table["hbin"], minimum=0, maximum=65535),
                    weight=_check_number(r, f"{where}.weight", table["weight"]),
                )
            )
        if not any(b.weight > 0 for b in parsed):
            r.fail("bins", "at least one weight must be greater than 0")
        bins = tuple(parsed)
    else:
        r.seen.add("bins")

    faults_raw = _check_object(r, "faults", r.raw("faults", {}))
    r.reject_unknown("faults", faults_raw, _FAULT_KEYS)
    parts = {
        name: _check_positive_part(r, f"faults.{name}", faults_raw.get(name))
        for name in _FAULT_PARTS
    }
    slow_load = _check_number(r, "faults.slow_load", faults_raw.get("slow_load", 0.0))
    fault_site = site_ids[0]
    if "fault_site" in faults_raw:
        fault_site = _check_site_id(r, "faults.fault_site", faults_raw["fault_site"])
        if fault_site not in site_ids:
            r.fail("faults.fault_site", f"site {json.dumps(fault_site)} is not in sites")
    faults = SimFaults(slow_load=slow_load, fault_site=fault_site, **parts)

    config = SimConfig(
        path=r.source,
        broker=broker,
        device_id=dev,
        sites=site_ids,
        test_time=r.number("test_time", SIM_DEFAULTS.test_time),
        load_time=r.number("load_time", SIM_DEFAULTS.load_time),
        ptr_count=r.integer("ptr_count", SIM_DEFAULTS.ptr_count, minimum=0),
        bins=bins,
        seed=r.integer("seed", SIM_DEFAULTS.seed),
        faults=faults,
        strategy_delay=r.number("strategy_delay", SIM_DEFAULTS.strategy_delay),
    )
    r.warn_unknown()
    return _with_warnings(config, r)
