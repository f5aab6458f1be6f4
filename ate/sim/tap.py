"""twistd plugin module of the simulated sites: ``twistd -n ate-sim-sites --config FILE``.

Options override the config file: ``--broker host:port``, ``--device-id D``,
``--sites 0,1,2,3``, ``--fault KIND:NAME=VALUE,...`` (repeatable; the ``--fault``s of a kind
replace the file's ``faults.KIND``): ``--fault drift:site=2,after=300,yield=50`` (from the
site's part 301 on, counted over its lifetime, its parts pass with 50 % probability),
``--fault bin_storm:site=1,after=200,sbin=12`` (from part 201 on, every part of site 1 gets
soft bin 12); see :mod:`ate.config.sim`.  A bad ``--fault`` is a usage error naming it.

The sites may be started before or after the master: every Control
app publishes its state on connect and again on every ``Master/status``.  A config error
stops it before anything starts, with one line naming the file and the key (exit status
2); ``--check`` prints what it would run with and exits 0, or 2 with errors.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from ate.config import ConfigError, load_sim_config
from ate.config.sim import FaultSpecError, parse_fault_spec
from ate.sim.sites import SimSitesService

log = Logger(namespace="ate.sim.tap")


def _fail(line: str) -> None:
    sys.stderr.write(f"ate-sim-sites: {line}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def parse_broker(value: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) -> ``(host, port)``; raises ``UsageError``."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text:
        raise usage.UsageError(f"--broker {value!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise usage.UsageError(f"--broker {value!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise usage.UsageError(f"--broker {value!r}: port {port} is out of range 1-65535")
    return host, port


class Options(usage.Options):
    """Command line of ``twistd ate-sim-sites``."""

    synopsis = ("--config FILE [--broker HOST:PORT] [--device-id D] [--sites 0,1,...] "
                "[--fault KIND:NAME=VALUE,...]... [--logs] [--per-site-clients]")
    optParameters = [
        ["config", "c", None, "Simulated sites config file (JSON, or TOML by suffix)"],
        ["broker", "b", None, "MQTT broker HOST:PORT (overrides the config)"],
        ["device-id", "d", None, "Device id D (overrides the config)"],
        ["sites", "s", None, "Comma-separated site ids (overrides the config)"],
    ]
    optFlags = [
        ["check", None, "Validate the configuration, print what would run, exit 0 or 2"],
        ["logs", None, "Publish Control/TestApp log lines (protocol 2.11)"],
        ["per-site-clients", None,
         "One MQTT client per Control app and per TestApp, with their real last wills"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["fault_specs"] = []

    def opt_fault(self, value: str) -> None:
        """Inject a per-part fault, repeatable: drift:site=S,after=K,yield=PERCENT or
        bin_storm:site=S,after=K,sbin=N (site: default faults.fault_site; after: default 0);
        they replace the config's faults of their kind."""
        try:
            parse_fault_spec(value)
        except FaultSpecError as e:
            raise usage.UsageError(str(e)) from None
        self["fault_specs"].append(value)

    opt_fault.__doc__ = " ".join((opt_fault.__doc__ or "").split())  # one line for --help

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        host = port = None
        if self["broker"]:
            host, port = parse_broker(self["broker"])
        try:
            self["sim_config"] = load_sim_config(
                self["config"], device_id=self["device-id"], sites=self["sites"],
                broker_host=host, broker_port=port, fault_specs=self["fault_specs"])
        except FaultSpecError as e:
            raise usage.UsageError(str(e)) from None
        except ConfigError as e:
            _fail(str(e))
        if self["check"]:
            from ate import __version__
            from ate.checks import check_sim

            report = check_sim(self["sim_config"])
            sys.stdout.write(report.text(__version__))
            sys.stdout.flush()
            raise SystemExit(report.exit_code)


def makeService(options: Any, reactor: Any = None) -> IService:
    """Build the simulated sites service from parsed :class:`Options`."""
    if reactor is None:
        from twisted.internet import reactor  # noqa: F811 (only tap modules do this)
    cfg = options["sim_config"]
    for warning in cfg.warnings:
        log.warn("{path}: {warning}", path=cfg.path, warning=warning)
    from ate import __version__

    log.info("ate-sim-sites {version} with {path}: simulating sites {sites} of {device} on "
             "{host}:{port}", version=__version__, path=cfg.path,
             sites=",".join(cfg.sites), device=cfg.device_id,
             host=cfg.broker.host, port=cfg.broker.port)
    from ate.tap import install_clean_exit

    install_clean_exit(reactor)  # SIGTERM/SIGINT: a clean stop, exit status 0
    return SimSitesService(reactor, cfg, publish_logs=bool(options["logs"]),
                           per_site_clients=bool(options["per-site-clients"]))
