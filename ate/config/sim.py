"""The simulated sites' config: :class:`SimConfig`, its shapes and defaults once
(:class:`SimBin`, :class:`SimFaults`, ``DEFAULT_SIM_BINS``, ``SIM_DEFAULTS``) and its loaders."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ate.config.common import (
    MqttOptions,
    _check_ident,
    _check_int,
    _check_list,
    _check_number,
    _check_object,
    _check_positive_part,
    _check_site_id,
    _check_sites,
    _override,
    _read_file,
    _read_mqtt,
    _Reader,
    _split_sites_override,
    _start,
    _with_warnings,
)


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
