"""What the three programs' configs share: :class:`ConfigError`, :class:`MqttOptions`,
the key reader and its checks, and reading a JSON or TOML file.  Pure: no Twisted."""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, NoReturn, Sequence

#: The operator UI shipped with the package (``ate/web/static``).
DEFAULT_WEBUI_ROOT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web", "static")

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


@dataclass(frozen=True)
class MqttOptions:
    """How to reach the MQTT broker."""

    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # a secret: never in a repr
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    keepalive: int = 60
    subscribe_qos: int = 0
    client: str = "twisted"
    max_packet_size: int = 4 * 1024 * 1024  # bytes after a packet's fixed header


# --------------------------------------------------------------------------------------
# Low-level reading and validation


_MISSING: Any = object()
_ID_FORBIDDEN = re.compile(r"[/+#\x00-\x1f\x7f]")
_SITE_ID = re.compile(r"0|[1-9][0-9]{0,2}")
#: The most sites one cell can have: an STDF head holds 255 (SDR SITE_CNT is U1).
MAX_SITES = 255
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
    if len(items) > MAX_SITES:
        r.fail(key, f"lists {len(items)} sites, at most {MAX_SITES} are possible "
                    "(an STDF datalog holds 255 sites per head: SDR SITE_CNT is U1)")
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
        except ValueError as e:  # an integer beyond Python's digit limit
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
        except ValueError as e:  # an integer beyond Python's digit limit
            raise ConfigError(name, "-", f"invalid JSON: {e}") from None
        except RecursionError:
            raise ConfigError(name, "-", "invalid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(name, "-", f"the top level must be an object, got {_describe(data)}")
    return name, data, warnings


def _start(data: Any, source: str, warnings: list[str] | None = None) -> _Reader:
    if not isinstance(data, Mapping):
        raise ConfigError(source, "-", f"the top level must be an object, got {_describe(data)}")
    return _Reader(data, source, list(warnings or ()))


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


def _with_warnings(config: Any, r: _Reader) -> Any:
    """Attach the warnings collected while reading."""
    return replace(config, warnings=tuple(r.warnings))

