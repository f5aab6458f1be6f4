"""The simulated sites' config: :class:`SimConfig`, its shapes and defaults once
(:class:`SimBin`, :class:`SimFaults`, ``DEFAULT_SIM_BINS``, ``SIM_DEFAULTS``) and its loaders.

Besides the once-only faults (``crash_on_part`` ...), two faults change the outcome of
every part of one site from its part ``after + 1`` on, counted over the site's lifetime
(``parts_tested``, the numbering of the other faults, not reset by a new lot or load):

* ``drift`` (:class:`SimDrift`): the site's parts pass with probability ``yield`` percent;
  a passing part gets a passing soft bin (1..9) of ``bins``, a failing one a failing soft
  bin, each by the relative weights of ``bins`` (the normal mix, restricted).
* ``bin_storm`` (:class:`SimBinStorm`): every part of the site gets soft bin ``sbin``, its
  hard bin from the job's bin table (else from ``bins``, else 0).  An ``sbin`` that is not
  in the job's bin table is sent as it is: the master then goes to softerror (a fault too).

In the file: ``faults.drift = {site = "2", after = 300, yield = 50}`` (or a list of such
objects, one per site); on the command line (:func:`parse_fault_spec`):
``--fault drift:site=2,after=300,yield=50``, ``--fault bin_storm:site=1,after=200,sbin=12``.
``site`` defaults to ``fault_site``, ``after`` to 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, NoReturn, Sequence

from ate.config.common import (
    ConfigError,
    MqttOptions,
    _check_ident,
    _check_int,
    _check_list,
    _check_number,
    _check_object,
    _check_positive_part,
    _check_site_id,
    _check_sites,
    _describe,
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
    drift: tuple["SimDrift", ...] = ()
    bin_storm: tuple["SimBinStorm", ...] = ()

    def describe(self) -> str:
        """One line for ``--check``: the faults set, or ``none``."""
        once = [f"{name}={getattr(self, name)}" for name in _FAULT_PARTS + ("slow_load",)
                if getattr(self, name) not in (None, 0.0)]
        text = [", ".join(once) + f" on site {self.fault_site}"] if once else []
        text += [fault.spec() for fault in self.drift + self.bin_storm]
        return "; ".join(text) or "none"


@dataclass(frozen=True)
class SimDrift:
    """From part ``after + 1`` of ``site`` on, its parts pass with ``yield_percent`` %."""

    site: str
    after: int
    yield_percent: float

    def spec(self) -> str:
        return f"drift:site={self.site},after={self.after},yield={self.yield_percent:g}"


@dataclass(frozen=True)
class SimBinStorm:
    """From part ``after + 1`` of ``site`` on, every part gets soft bin ``sbin``."""

    site: str
    after: int
    sbin: int

    def spec(self) -> str:
        return f"bin_storm:site={self.site},after={self.after},sbin={self.sbin}"


class FaultSpecError(ConfigError):
    """A bad ``--fault KIND:NAME=VALUE,...``: ``file`` is ``--fault <spec>``."""


#: The per-part fault kinds and their names (file keys and ``--fault`` names alike).
FAULT_KINDS: dict[str, tuple[str, ...]] = {
    "drift": ("site", "after", "yield"),
    "bin_storm": ("site", "after", "sbin"),
}


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
_FAULT_KEYS = _FAULT_PARTS + ("slow_load", "fault_site") + tuple(FAULT_KINDS)


def load_sim_config(
    path: str | os.PathLike[str],
    *,
    device_id: str | None = None,
    sites: str | Sequence[str] | None = None,
    broker_host: str | None = None,
    broker_port: int | str | None = None,
    fault_specs: Sequence[str] = (),
) -> SimConfig:
    """Load and validate the simulated-sites config at ``path``.  Raises :class:`ConfigError`
    (:class:`FaultSpecError` for a bad one of ``fault_specs``, the ``--fault KIND:...``
    options: those of a kind replace the file's faults of that kind)."""
    name, data, warnings = _read_file(path)
    return _sim_config(_start(data, name, warnings), device_id, sites, broker_host, broker_port,
                       fault_specs)


def sim_config_from_dict(
    data: Mapping[str, Any],
    *,
    source: str = "<dict>",
    device_id: str | None = None,
    sites: str | Sequence[str] | None = None,
    broker_host: str | None = None,
    broker_port: int | str | None = None,
    fault_specs: Sequence[str] = (),
) -> SimConfig:
    """Like :func:`load_sim_config`, from an already parsed object."""
    return _sim_config(_start(data, source), device_id, sites, broker_host, broker_port,
                       fault_specs)


def parse_fault_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``KIND:NAME=VALUE,...`` -> ``(kind, {name: value})``, syntax only.

    ``site`` stays a string; other values become an int, else a float, else stay strings
    (the checks of the loader then name them).  Raises :class:`FaultSpecError`.
    """
    source = f"--fault {spec}"
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().replace("-", "_")
    kinds = ", ".join(FAULT_KINDS)
    if not sep:
        raise FaultSpecError(source, "-", f"expected KIND:NAME=VALUE,... with KIND one of {kinds}")
    if kind not in FAULT_KINDS:
        raise FaultSpecError(source, "kind", f"unknown fault kind {kind!r}; one of {kinds}")
    values: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        name, sep, text = (p.strip() for p in item.partition("="))
        if not sep or not name or not text:
            raise FaultSpecError(source, f"{kind}.{name or item}",
                                 f"expected NAME=VALUE, got {item!r}")
        if name in values:
            raise FaultSpecError(source, f"{kind}.{name}", "given twice")
        values[name] = text if name == "site" else _spec_number(text)
    return kind, values


def _spec_number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _read_fault(r: _Reader, where: str, kind: str, table: Mapping[str, Any],
                site_ids: tuple[str, ...], default_site: str,
                bins: tuple[SimBin, ...]) -> SimDrift | SimBinStorm:
    """One ``drift`` or ``bin_storm`` object at key ``where``."""
    r.reject_unknown(where, table, FAULT_KINDS[kind])
    need = "yield" if kind == "drift" else "sbin"
    if need not in table:
        r.fail(f"{where}.{need}", "missing required key")
    site = default_site
    if "site" in table:
        site = _check_site_id(r, f"{where}.site", table["site"])
        if site not in site_ids:
            r.fail(f"{where}.site", f"site {json.dumps(site)} is not in sites")
    after = _check_int(r, f"{where}.after", table.get("after", 0), minimum=0)
    if kind == "bin_storm":
        sbin = _check_int(r, f"{where}.sbin", table["sbin"], minimum=0, maximum=65535)
        return SimBinStorm(site, after, sbin)
    percent = _check_number(r, f"{where}.yield", table["yield"])
    if percent > 100:
        r.fail(f"{where}.yield", f"must be a percentage 0..100, got {table['yield']!r}")
    for wanted, passing, label in ((percent > 0, True, "a passing soft bin (1..9)"),
                                   (percent < 100, False, "a failing soft bin (not 1..9)")):
        if wanted and not any((1 <= b.sbin <= 9) == passing and b.weight > 0 for b in bins):
            r.fail(f"{where}.yield", f"yield {percent:g} needs {label} of weight > 0 in bins")
    return SimDrift(site, after, percent)


def _read_part_faults(r: _Reader, faults_raw: Mapping[str, Any], site_ids: tuple[str, ...],
                      default_site: str, bins: tuple[SimBin, ...],
                      fault_specs: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """The ``drift`` and ``bin_storm`` faults of the file, replaced per kind by specs."""
    found: dict[str, list[tuple[_Reader, str, Any]]] = {kind: [] for kind in FAULT_KINDS}
    for kind in FAULT_KINDS:
        raw = faults_raw.get(kind)
        if isinstance(raw, Mapping):
            found[kind].append((r, f"faults.{kind}", raw))
        elif isinstance(raw, (list, tuple)):
            for index, item in enumerate(raw):
                found[kind].append((r, f"faults.{kind}[{index}]", item))
        elif raw is not None:
            r.fail(f"faults.{kind}", "must be an object (a table in TOML) or a list of them, "
                                     f"got {_describe(raw)}")
    from_specs: dict[str, list[tuple[_Reader, str, Any]]] = {}
    for spec in fault_specs:
        kind, values = parse_fault_spec(spec)
        from_specs.setdefault(kind, []).append((_SpecReader({}, f"--fault {spec}", []),
                                                kind, values))
    found.update(from_specs)
    out: dict[str, tuple[Any, ...]] = {}
    for kind, entries in found.items():
        parsed: list[Any] = []
        for reader, where, item in entries:
            table = _check_object(reader, where, item)
            fault = _read_fault(reader, where, kind, table, site_ids, default_site, bins)
            if any(other.site == fault.site for other in parsed):
                reader.fail(f"{where}.site", f"site {json.dumps(fault.site)} has a {kind} "
                                             "fault already")
            parsed.append(fault)
        out[kind] = tuple(parsed)
    return out


class _SpecReader(_Reader):
    def fail(self, key: str, problem: str) -> NoReturn:
        raise FaultSpecError(self.source, key, problem)


def _sim_config(
    r: _Reader,
    device_id: str | None,
    sites: Any,
    broker_host: str | None,
    broker_port: int | str | None,
    fault_specs: Sequence[str] = (),
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
    per_part = _read_part_faults(r, faults_raw, site_ids, fault_site, bins, fault_specs)
    faults = SimFaults(slow_load=slow_load, fault_site=fault_site, **parts,
                       drift=per_part["drift"], bin_storm=per_part["bin_storm"])

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
