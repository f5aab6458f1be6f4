"""The ate-handler config (protocol.md 12.2 and 13): :class:`HandlerConfig` and its
loaders."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

from ate.config.common import (
    HANDLER_TYPES,
    SERIAL_PARITIES,
    MqttOptions,
    _check_endpoint,
    _check_ident,
    _check_layout,
    _check_list,
    _check_site_id,
    _check_string,
    _describe,
    _is_number,
    _read_file,
    _read_mqtt,
    _read_timeouts,
    _Reader,
    _start,
    _with_warnings,
)
from ate.protocol import LOG_LEVELS


@dataclass(frozen=True)
class HandlerTimeouts:
    """Timers of ate-handler, in seconds (protocol.md 13.2)."""

    load: float = 200.0
    next: float = 40.0
    unload: float = 70.0
    startup: float = 300.0
    ready: float = 15.0


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
