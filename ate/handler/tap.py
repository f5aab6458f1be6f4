"""``twistd -n ate-handler --config FILE [port]``: options and service assembly.

The positional ``port`` and ``--baudrate``/``--timeout``/``--parity``/
``--bytesize``/``--stopbits`` are the reference's serial options
(protocol.md 12.2); without a port, the config's ``serial_port`` (with its
``serial_*`` line settings), ``serial`` (client endpoint) or ``listen`` (server
endpoint) is used, or the in-process simulated device for
``handler_type = "simulated"``.  A serial port without pyserial installed stops
it before anything starts, with one line (exit status 2).  ``--check`` prints
what it would run with and exits 0, or 2 with errors.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from ate.config import ConfigError, load_handler_config
from ate.handler.drivers.line import PARITIES, SerialOptions
from ate.handler.service import HandlerService

__all__ = ["Options", "makeService", "QuietHandlerService", "have_pyserial"]


def have_pyserial() -> bool:
    """True when pyserial (needed for a serial port) can be imported."""
    try:
        import serial  # noqa: F401
    except ImportError:
        return False
    return True


def _fail(line: str) -> None:
    sys.stderr.write(f"ate-handler: {line}\n")
    sys.stderr.flush()
    raise SystemExit(2)


class QuietHandlerService(HandlerService):
    """The handler service whose own shutdown is not reported as a lost broker connection
    (the controller warns "MQTT connection lost" on every disconnect, also the clean
    DISCONNECT while it stops)."""

    def _disconnected(self) -> None:
        if not self.running:
            self.controller.connected = False
            return
        super()._disconnected()


def _number(kind: type, name: str) -> Any:
    def coerce(value: str) -> Any:
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"--{name}: not a number: {value!r}") from None

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    synopsis = "--config FILE [options] [port]"
    longdesc = ("Run the handler application between one handler device and one or more "
                "masters. FILE is handler_config_file.json (or TOML with the same keys).")
    optParameters = [
        ["config", "c", "handler_config_file.json", "Handler configuration file (JSON or TOML)."],
        ["broker", "b", None, "Override the broker address, HOST:PORT."],
        ["baudrate", None, None, "Serial baud rate (default: serial_baudrate, 115200).",
         _number(int, "baudrate")],
        ["timeout", None, None, "Serial read timeout in seconds (default: serial_timeout, "
                                "0.2).", _number(float, "timeout")],
        ["parity", None, None, f"Serial parity ({', '.join(PARITIES)}; default: "
                               "serial_parity, N)."],
        ["bytesize", None, None, "Serial byte size (default: serial_bytesize, 8).",
         _number(int, "bytesize")],
        ["stopbits", None, None, "Serial stop bits, 1, 1.5 or 2 (default: serial_stopbits, 1).",
         _number(float, "stopbits")],
    ]
    optFlags = [
        ["check", None, "Validate the configuration, print what would run, exit 0 or 2."],
    ]

    def parseArgs(self, port: str | None = None) -> None:
        self["port"] = port

    def postOptions(self) -> None:
        host = port = None
        if self["broker"]:
            host, _, port_text = self["broker"].rpartition(":")
            if not host or not port_text.isdigit():
                raise usage.UsageError(f"--broker: expected HOST:PORT, got {self['broker']!r}")
            port = int(port_text)
        try:
            self["handler_config"] = cfg = load_handler_config(
                self["config"], broker_host=host, broker_port=port)
        except ConfigError as e:
            _fail(str(e))
        self["serial"] = None
        port_name = self["port"] or cfg.serial_port
        if port_name:
            def pick(option: str, configured: Any) -> Any:
                return configured if self[option] is None else self[option]

            stopbits = pick("stopbits", cfg.serial_stopbits)
            try:
                self["serial"] = SerialOptions(
                    port_name, baudrate=pick("baudrate", cfg.serial_baudrate),
                    timeout=pick("timeout", cfg.serial_timeout),
                    parity=str(pick("parity", cfg.serial_parity)).upper(),
                    bytesize=pick("bytesize", cfg.serial_bytesize),
                    stopbits=int(stopbits) if stopbits in (1, 2) else stopbits)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        if (self["serial"] is None and cfg.serial is None and cfg.listen is None
                and cfg.handler_type != "simulated"):
            raise usage.UsageError(
                f"{cfg.path}: no handler device: give the serial port as argument, or set "
                "'serial_port' (a serial device), 'serial' (client endpoint) or 'listen' "
                "(server endpoint) in the config")
        pyserial = have_pyserial()
        if self["check"]:
            from ate import __version__
            from ate.checks import check_handler

            report = check_handler(cfg, self["serial"], have_pyserial=pyserial)
            sys.stdout.write(report.text(__version__))
            sys.stdout.flush()
            raise SystemExit(report.exit_code)
        if self["serial"] is not None and not pyserial:
            from ate.checks import serial_needs_pyserial

            _fail(serial_needs_pyserial(self["serial"].port))


def makeService(options: Options, reactor: Any = None) -> Any:
    """The ate-handler service for twistd."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    from twisted.logger import Logger

    from ate import __version__
    from ate.checks import broker_text, handler_device_text

    cfg = options["handler_config"]
    log = Logger(namespace="ate.handler")
    for warning in cfg.warnings:
        log.warn("config: {warning}", warning=warning)
    log.info("ate-handler {version} with {path}: broker {broker}; handler {handler}, "
             "masters {masters}; {device}", version=__version__, path=cfg.path,
             broker=broker_text(cfg.broker), handler=cfg.handler_id,
             masters=",".join(cfg.device_ids), device=handler_device_text(cfg, options["serial"]))
    from ate.tap import install_clean_exit

    install_clean_exit(reactor)  # SIGTERM/SIGINT: a clean stop, exit status 0
    return QuietHandlerService(reactor, cfg, serial=options["serial"])
