"""``twistd -n ate-demo``: a whole test cell in one process.

A private broker (``ate.broker.private_broker``: mosquitto, or amqtt where mosquitto
is not installed) on a free 127.0.0.1 port,
the master with its web UI, N simulated sites and the handler application driving a
simulated handler device that runs lots of the demo job (``ate/demodata``) one after the
other.  Services start in that order (broker first) and stop one after the other in the
reverse order (handler first, broker last), so the master finalises the open datalog
while the broker still carries its last status.  SIGTERM/SIGINT exit with status 0, and
so does the end of ``--lots N`` lots.

It logs one start-up line with the address of the UI and where the datalogs go: a
temporary directory removed at exit, or ``--stdf-dir``; either way only the last
``--keep-lots`` (20) lots are kept.  twistd's log shows INFO and above (``--verbose``:
DEBUG too).

Without a broker program, or when the web port is taken, it stops before anything
starts, with one line saying what to do (exit status 2).

Alarms (protocol.md §15): the master runs :data:`DEMO_ALARMS`, three ``notify`` rules
(site divergence, a run of failing parts, too many contact opens) tuned to stay quiet on
healthy sites, and the simulated sites run one fault so that a newcomer sees an alarm fire
for a reason: the last site drifts to 40% yield from the second lot on
(:func:`default_fault_spec`; with the default 200 parts on 4 sites
``drift:site=3,after=50,yield=40``).  The first lot is healthy and logs no WARNING; in the
second lot the divergence rule names the drifting site (a WARNING ``alarm
site_divergence: site 3 ...``, the UI's alarm list, a DTR in the datalog) once every site
has 30 parts, and so on in every lot after it, since the site stays bad.  ``--healthy``
runs without the fault (no alarm fires: the rules are quiet on healthy sites, about one
false divergence in 700 lots of 200 parts); any ``--fault`` replaces it.  The rules only
notify: a ``hold`` would stop the demo until someone releases the alarm in the UI.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from importlib import resources
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.python import usage

import ate
from ate.config import (
    ConfigError,
    HandlerConfig,
    MasterConfig,
    SimConfig,
    handler_config_from_dict,
    master_config_from_dict,
    sim_config_from_dict,
)
from ate.config.sim import FAULT_KINDS, FaultSpecError, parse_fault_spec
from ate.handler.drivers.simulated import SimulatedHandler
from ate.handler.tap import QuietHandlerService

__all__ = ["Options", "makeService", "DemoService", "BrokerService", "DemoHandler",
           "FAULT_KEYS", "DEVICE_ID", "HANDLER_ID", "LOT_NUMBER", "DEMO_ALARMS",
           "DRIFT_YIELD", "default_fault_spec"]

log = Logger(namespace="ate.demo")

DEVICE_ID = "SCT-81-1F"
HANDLER_ID = "HTO92-20F"
LOT_NUMBER = "306426.001"
JOB_FILE = "le306426001.xml"
JOB_PATTERN = "le#jobname#.xml"
FAULT_KEYS = ("crash_on_part", "drop_result_on_part", "wrong_site_on_part",
              "duplicate_result_on_part", "slow_load", "fault_site")
REPORT_INTERVAL = 5.0

#: The demo master's alarm rules (config key ``alarms``, protocol.md §15.1): all ``notify``.
#: Seeded simulation of the demo's mix (85% good, 5% soft bin 12) in lots of 200 parts on
#: 4 sites, 5 000 lots: on healthy sites 7 lots with a false divergence and 16 over the
#: contact-open limit (0.14% and 0.3%), no failing run of 8; with one site at 40% yield the
#: divergence names it in 99% of the lots, the failing run fires there in 27%, the contact
#: opens in 21%.  (A healthy site of such a lot is named too in about 3%: the drifting site
#: drags "the other sites'" pooled yield down.)  ``DEFAULT_DEMO_ALARMS`` of
#: :mod:`ate.alarms.rules` is not used: its 4% limit on soft bin 12 fires in most healthy
#: lots.
DEMO_ALARMS: tuple[dict[str, Any], ...] = (
    {"kind": "site_divergence", "action": "notify", "z": 4.0, "min_parts": 30},
    {"kind": "consecutive_fails", "action": "notify", "count": 8},
    {"kind": "bin_limit", "name": "contact_opens", "action": "notify", "sbin": 12,
     "max_percent": 12.0, "min_parts": 100},
)
#: The yield (percent) of the demo's drifting site.
DRIFT_YIELD = 40


def _fail(line: str) -> None:
    sys.stderr.write(f"ate-demo: {line}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def _number(kind: type, name: str, minimum: float) -> Any:
    def coerce(value: Any) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"--{name}: not a number: {value!r}") from None
        if number < minimum:
            raise ValueError(f"--{name}: must be at least {minimum}, got {value}")
        return number

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _fault_value(name: str, text: str) -> Any:
    if name == "fault_site":
        return text
    try:
        return float(text) if name == "slow_load" else int(text)
    except ValueError:
        raise usage.UsageError(f"--fault {name}={text}: not a number") from None


class Options(usage.Options):
    synopsis = ("[--sites N] [--test-time S] [--parts-per-lot N] [--web-port P] [--lots N] "
                "[--stdf-dir DIR] [--keep-lots N] [--fault K=V] [--fault KIND:K=V,...] "
                "[--healthy] [--verbose]")
    longdesc = ("Run a whole test cell in one process: a private mosquitto broker, the "
                "master with its web UI, simulated sites and a simulated handler running "
                "lots.  Open the address it prints in a browser.  Datalogs go to a "
                "temporary directory removed at exit unless --stdf-dir is given; only the "
                "last --keep-lots lots are kept.  --lots N stops it (exit 0) after N lots.  "
                "The master runs three notify alarms (site divergence, 8 failing parts in a "
                "row on a site, soft bin 12 above 12%), quiet on healthy sites; so that one "
                "fires, the last site drifts to 40% yield from the second lot on (with the "
                "defaults drift:site=3,after=50,yield=40): the first lot is healthy, the "
                "second names the site in a WARNING and the UI's alarms.  --healthy runs "
                "without that fault; any --fault replaces it.")
    optParameters = [
        ["sites", "n", 4, "Number of simulated sites.", _number(int, "sites", 1)],
        ["test-time", "t", 0.05, "Test time of one part in seconds.",
         _number(float, "test-time", 0.0)],
        ["parts-per-lot", None, 200, "Parts in every lot.", _number(int, "parts-per-lot", 1)],
        ["web-port", "p", 8081, "Port of the web UI and API on 127.0.0.1; 0 takes a free "
                                "port (the start-up line shows it).",
         _number(int, "web-port", 0)],
        ["stdf-dir", None, None, "Directory of the STDF datalogs and lot summaries (and the "
                                 "master's log files, in its 'log' subdirectory), kept at "
                                 "exit.  Default: a temporary directory removed at exit."],
        ["keep-lots", None, 20, "Keep the datalogs of the last N lots only; 0 keeps all.",
         _number(int, "keep-lots", 0)],
        ["lots", None, 0, "Number of lots to run, then exit with status 0; 0 runs lots "
                          "until stopped.", _number(int, "lots", 0)],
    ]
    optFlags = [
        ["verbose", "v", "Log DEBUG events too (the default shows INFO and above)."],
        ["healthy", None, "No simulated fault: without --fault the last site drifts to "
                          f"{DRIFT_YIELD}% yield from the second lot on, so that an alarm "
                          "fires; with --healthy no alarm should."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["faults"] = {}
        self["fault_specs"] = []

    def opt_port(self, value: str) -> None:
        """Old name of --web-port."""
        try:
            self["web-port"] = _number(int, "port", 0)(value)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def opt_fault(self, value: str) -> None:
        """Inject a fault in the simulated sites, NAME=VALUE (repeatable or comma
        separated): crash_on_part, drop_result_on_part, wrong_site_on_part,
        duplicate_result_on_part (part numbers), slow_load (seconds), fault_site; or a
        per-part fault from the site's part K+1 on (lifetime count), repeatable:
        drift:site=S,after=K,yield=PERCENT or bin_storm:site=S,after=K,sbin=N."""
        head = value.split("=", 1)[0]
        if ":" in head:
            try:
                parse_fault_spec(value)
            except FaultSpecError as e:
                raise usage.UsageError(str(e)) from None
            self["fault_specs"].append(value)
            return
        for item in filter(None, (p.strip() for p in value.split(","))):
            name, sep, text = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in FAULT_KEYS:
                raise usage.UsageError(
                    f"--fault {item!r}: expected NAME=VALUE with NAME one of "
                    f"{', '.join(FAULT_KEYS)}, or KIND:NAME=VALUE,... with KIND one of "
                    f"{', '.join(FAULT_KINDS)}")
            self["faults"][name] = _fault_value(name, text.strip())

    opt_fault.__doc__ = " ".join((opt_fault.__doc__ or "").split())  # one line for --help

    def postOptions(self) -> None:
        if self["web-port"] > 65535:
            raise usage.UsageError(f"--web-port: out of range 0-65535, got {self['web-port']}")
        try:
            # validated now, so that a bad --fault stops twistd before anything starts
            sim_config(self, 1883)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


# ------------------------------------------------------------------------------------
# configurations


def _site_ids(options: Any) -> list[str]:
    return [str(i) for i in range(options["sites"])]


def master_config(options: Any, broker_port: int, job_dir: str,
                  stdf_dir: str | None = None) -> MasterConfig:
    """The demo master's configuration; datalogs in ``stdf_dir`` (default: --stdf-dir)."""
    sites = _site_ids(options)
    stdf = os.path.abspath(stdf_dir if stdf_dir is not None else options["stdf-dir"])
    return master_config_from_dict({
        "broker_host": "127.0.0.1", "broker_port": broker_port,
        "device_id": DEVICE_ID, "sites": sites, "Handler": HANDLER_ID,
        "environment": "F1", "jobsource": "filesystem", "jobformat": "xml.semi-ate",
        "filesystemdatasource_path": job_dir,
        "filesystemdatasource_jobpattern": JOB_PATTERN,
        "skip_jobdata_verification": False, "enable_timeouts": True,
        "webui_host": "127.0.0.1", "webui_port": options["web-port"] or 8081,
        "site_layout": [[i, 0] for i in range(len(sites))],
        "loglevel": 20,
        "stdf_directory": stdf, "log_directory": os.path.join(stdf, "log"),
        "alarms": [dict(rule) for rule in DEMO_ALARMS],
    }, source="ate-demo master")


def default_fault_spec(options: Any) -> str | None:
    """The demo's own fault, ``drift:site=S,after=N,yield=40``: the last site S drifts from
    its first part of the second lot on (N = its parts in the first lot); None with
    ``--healthy``, with any ``--fault``, or with one site (nothing to diverge from)."""
    if (options.get("healthy") or options.get("faults") or options.get("fault_specs")
            or options["sites"] < 2):
        return None
    # the handler gives a lot's odd parts to the first sites: the last one tests N exactly
    after = options["parts-per-lot"] // options["sites"]
    return f"drift:site={options['sites'] - 1},after={after},yield={DRIFT_YIELD}"


def sim_config(options: Any, broker_port: int) -> SimConfig:
    default = default_fault_spec(options)
    specs = [default] if default is not None else list(options.get("fault_specs") or ())
    return sim_config_from_dict({
        "broker_host": "127.0.0.1", "broker_port": broker_port,
        "device_id": DEVICE_ID, "sites": _site_ids(options),
        "test_time": options["test-time"], "seed": 1, "ptr_count": 5,
        "faults": dict(options["faults"]),
    }, source="ate-demo --fault", fault_specs=specs)


def handler_config(options: Any, broker_port: int) -> HandlerConfig:
    return handler_config_from_dict({
        "broker_host": "127.0.0.1", "broker_port": broker_port,
        "handler_type": "simulated", "handler_id": HANDLER_ID, "device_ids": [DEVICE_ID],
        "site_layout": [[i, 0] for i in range(options["sites"])],
    }, source="ate-demo handler")


# ------------------------------------------------------------------------------------
# services


class DemoHandler(SimulatedHandler):
    """The simulated handler device running ``lot_count`` lots of the demo lot
    (0: forever).  ``ready`` (if set) tells whether the handler application can take
    the first lot; until then :meth:`start` looks again every 0.1 s."""

    def __init__(self, clock: Any, *, lot_count: int = 0, **kw: Any) -> None:
        super().__init__(clock, lots=(LOT_NUMBER,), **kw)
        self.lot_count = lot_count
        self.ready: Any = None

    def start(self) -> None:
        if self.phase == "idle" and self.ready is not None and not self.ready():
            self._later(0.1, self.start)
            return
        super().start()

    @property
    def lot(self) -> str | None:
        if self.lot_count and self.lot_index >= self.lot_count:
            return None
        return LOT_NUMBER


class BrokerService(Service):
    """The private mosquitto: started in startService, stopped by PID in stopService."""

    def __init__(self, broker: Any, work_dir: str | None = None) -> None:
        self.broker = broker
        self.work_dir = work_dir

    def startService(self) -> None:
        self.broker.start()
        log.info("private {kind} broker (pid {pid}) on {host}:{port}",
                 kind=type(self.broker).__name__.lower(), pid=self.broker.pid,
                 host=self.broker.host, port=self.broker.port)
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        self.broker.stop()
        self.broker.cleanup()
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)


class ReportService(Service):
    """Logs the demo's start-up line once (with the address of the UI and where the
    datalogs go) and the progress every few seconds."""

    def __init__(self, clock: Any, url: str, device: SimulatedHandler, cell: Any,
                 interval: float = REPORT_INTERVAL, line: str | None = None) -> None:
        self.clock = clock
        self.url = url
        self.device = device
        self.cell = cell
        self.interval = interval
        self.line = line if line is not None else f"ate-demo: open {url}"
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        log.info("{line}", line=self.line)
        self._loop = LoopingCall(self.report)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def report(self) -> None:
        status = self.cell.status()
        log.info("ate-demo: {parts} parts tested in {lots} complete lots; master {state}, "
                 "{lot_parts} parts in the current lot",
                 parts=self.device.parts_tested, lots=self.device.lots_done,
                 state=status.get("state"), lot_parts=status.get("parts"))

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()


class LotLimit(Service):
    """Stops the demo (``stop()``, e.g. ``reactor.stop``) once ``count`` lots are done."""

    def __init__(self, device: SimulatedHandler, count: int, stop: Any, clock: Any) -> None:
        self.device = device
        self.count = count
        self.stop = stop
        self.clock = clock

    def startService(self) -> None:
        super().startService()
        self.device.wait_lots(self.count).addCallback(self._done)

    def _done(self, _: Any) -> None:
        if not self.running:
            return
        log.info("ate-demo: {count} lot(s) done, stopping", count=self.count)
        self.clock.callLater(0, self.stop)


class LotPruner:
    """Cell listener: after every finalised datalog, removes the oldest lots of the demo
    (``<lot>_<device>_*.stdf`` with its ``.summary.json`` and ``.summary.txt``) in the
    datalog directory beyond the last ``keep`` (0: keep all)."""

    def __init__(self, directory: str, keep: int,
                 prefix: str = f"{LOT_NUMBER}_{DEVICE_ID}_") -> None:
        self.directory = directory
        self.keep = keep
        self.prefix = prefix

    def __call__(self, kind: str, data: Any) -> None:
        if kind == "finalised":
            self.prune()

    def lots(self) -> list[str]:
        """Base paths of the demo's lots in the directory, oldest first."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        bases = [os.path.join(self.directory, n[:-len(".stdf")]) for n in names
                 if n.startswith(self.prefix) and n.endswith(".stdf")]

        def age(base: str) -> tuple[float, str]:
            try:
                return os.stat(base + ".stdf").st_mtime, base
            except OSError:
                return 0.0, base

        return sorted(bases, key=age)

    def prune(self) -> list[str]:
        if not self.keep:
            return []
        lots = self.lots()
        removed = lots[:-self.keep] if len(lots) > self.keep else []
        for base in removed:
            for suffix in (".stdf", ".summary.json", ".summary.txt"):
                try:
                    os.remove(base + suffix)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.error("cannot remove the old datalog {path}: {e}", path=base + suffix,
                              e=e)
        return removed


class DemoService(MultiService):
    """Starts its children in order; stops them one after the other in reverse order,
    each once the one after it has stopped.  ``console_level`` (if set) is the lowest
    level twistd's own log observer shows once logging has begun."""

    console_level: Any = None
    exclude_observers: tuple[Any, ...] = ()

    def privilegedStartService(self) -> None:
        if self.console_level is not None:
            filter_console(self.console_level, exclude=self.exclude_observers)
        super().privilegedStartService()

    def stopService(self) -> Deferred:
        Service.stopService(self)
        children = list(self)[::-1]

        async def stop_all() -> None:
            for service in children:
                if not service.running:
                    continue
                try:
                    result = service.stopService()
                    if isinstance(result, Deferred):
                        await result
                except Exception:
                    log.failure("stopping {service} failed", service=service)

        return Deferred.fromCoroutine(stop_all())


def filter_console(level: Any, *, exclude: Any = (), publisher: Any = None) -> int:
    """Wrap the log observers twistd installed (all of ``publisher``'s but ``exclude``)
    so that they only see events at ``level`` and above.  Returns how many were wrapped.

    twistd has no log-level option; its observer is whatever it added to the global log
    publisher when logging began, so this runs after that (privilegedStartService).
    """
    publisher = publisher if publisher is not None else globalLogPublisher
    observers = getattr(publisher, "_observers", None)
    if observers is None:  # pragma: no cover - a future twisted.logger
        return 0
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    wrapped = 0
    for observer in list(observers):
        if any(observer is e for e in exclude) or isinstance(observer, FilteringLogObserver):
            continue
        publisher.removeObserver(observer)
        publisher.addObserver(FilteringLogObserver(observer, [predicate]))
        wrapped += 1
    return wrapped


def build_demo(options: Any, reactor: Any, broker: Any, *, observe_logs: bool = True,
               stop: Any = None) -> tuple[DemoService, dict[str, Any]]:
    """Assemble the demo on ``broker`` (a not yet started ``Mosquitto`` whose ``port`` is
    set); returns the top service and its parts by name.  ``stop`` ends the demo after
    ``--lots`` lots (default ``reactor.stop``)."""
    work_dir = tempfile.mkdtemp(prefix="ate-demo-")
    try:
        return _assemble(options, reactor, broker, work_dir, observe_logs, stop)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise


def _assemble(options: Any, reactor: Any, broker: Any, work_dir: str, observe_logs: bool,
              stop: Any) -> tuple[DemoService, dict[str, Any]]:
    from ate.broker import free_port
    from ate.sim.sites import SimSitesService
    from ate.tap import build_master

    job_dir = os.path.join(work_dir, "jobs")
    os.makedirs(job_dir)
    job_text = resources.files("ate.demodata").joinpath(JOB_FILE).read_bytes()
    with open(os.path.join(job_dir, JOB_FILE), "wb") as f:
        f.write(job_text)
    kept = options["stdf-dir"] is not None
    stdf_dir = os.path.abspath(options["stdf-dir"]) if kept else os.path.join(work_dir, "stdf")
    web_port = options["web-port"] or free_port()
    mcfg = master_config(dict(options, **{"web-port": web_port}), broker.port, job_dir,
                         stdf_dir)
    scfg = sim_config(options, broker.port)
    hcfg = handler_config(options, broker.port)
    os.makedirs(mcfg.stdf_directory, exist_ok=True)

    top = DemoService()
    BrokerService(broker, work_dir).setServiceParent(top)  # started first, stopped last
    master, cell = build_master(mcfg, reactor, observe_logs=observe_logs, announce=False)
    master.setServiceParent(top)
    top.exclude_observers = tuple(o for o in (cell.logs, cell.log_file) if o is not None)
    pruner = LotPruner(mcfg.stdf_directory, options["keep-lots"])
    cell.subscribe(pruner)
    sites = SimSitesService(reactor, scfg, client_id=f"simsites.{DEVICE_ID}.demo")
    sites.setServiceParent(top)
    device = DemoHandler(reactor, lot_count=options["lots"],
                         parts_per_lot=options["parts-per-lot"], sites=options["sites"],
                         index_time=0.0, retry_time=1.0)
    handler = QuietHandlerService(reactor, hcfg, device=device)
    # the first lot once the handler application sees the master initialized
    device.ready = lambda: handler.controller.status().state == "initialized"
    handler.setServiceParent(top)
    url = f"http://127.0.0.1:{web_port}/"
    keep = options["keep-lots"]
    where = (f"datalogs in {mcfg.stdf_directory}"
             + (f" (the last {keep} lots kept)" if keep else " (every lot kept)")
             + ("" if kept else ", removed at exit (--stdf-dir DIR keeps them)"))
    fault = default_fault_spec(options)
    faults = "" if fault is None else (f", simulated fault {fault} (the last site drifts "
                                       "from lot 2 on; --healthy: none)")
    line = (f"ate-demo {ate.__version__}: open {url} ; {type(broker).__name__.lower()} broker "
            f"on {broker.host}:{broker.port}, device {DEVICE_ID}, sites "
            f"{','.join(_site_ids(options))}, {where}{faults}")
    ReportService(reactor, url, device, cell, line=line).setServiceParent(top)
    if options["lots"]:
        LotLimit(device, options["lots"], stop if stop is not None else reactor.stop,
                 reactor).setServiceParent(top)
    return top, {"master": master, "cell": cell, "sites": sites, "handler": handler,
                 "device": device, "url": url, "work_dir": work_dir, "pruner": pruner,
                 "stdf_dir": mcfg.stdf_directory, "config": mcfg}


def makeService(options: Options, reactor: Any = None) -> DemoService:
    if reactor is None:
        from twisted.internet import reactor  # noqa: F811 (only tap modules do this)
    from ate.broker import MosquittoError, free_port, private_broker
    from ate.tap import WebAddressError, install_clean_exit, listen_web_now

    try:
        # mosquitto when installed; else amqtt (pure Python, 2.7x slower: bench/broker.py)
        broker = private_broker(free_port(), new_session=True)
    except MosquittoError:
        _fail("no MQTT broker: install mosquitto (apt-get install -y mosquitto) "
              "or amqtt (pip install amqtt)")
    try:
        top, parts = build_demo(options, reactor, broker)
    except ConfigError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{options['stdf-dir']}: {e}")
    try:
        listen_web_now(parts["master"], parts["config"])
    except WebAddressError as e:
        shutil.rmtree(parts["work_dir"], ignore_errors=True)
        _fail(f"{e}; give another port with --web-port P (0 takes a free one)")
    if not options["verbose"]:
        top.console_level = LogLevel.info
    install_clean_exit(reactor)
    return top
