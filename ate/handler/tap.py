"""``twistd -n ate-handler --config FILE [port]``: options and service assembly.

The positional ``port`` and ``--baudrate``/``--timeout``/``--parity``/
``--bytesize``/``--stopbits`` are the reference's serial options
(protocol.md 12.2); without a port, the config's ``serial`` (client endpoint)
or ``listen`` (server endpoint) is used, or the in-process simulated device
for ``handler_type = "simulated"``.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from ate.config import ConfigError, load_handler_config
from ate.handler.drivers.line import PARITIES, SerialOptions

__all__ = ["Options", "makeService"]


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
        ["baudrate", None, 115200, "Serial baud rate.", _number(int, "baudrate")],
        ["timeout", None, 0.2, "Serial read timeout in seconds.", _number(float, "timeout")],
        ["parity", None, "N", f"Serial parity ({', '.join(PARITIES)})."],
        ["bytesize", None, 8, "Serial byte size.", _number(int, "bytesize")],
        ["stopbits", None, 1, "Serial stop bits (1, 1.5 or 2).", _number(float, "stopbits")],
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
            self["handler_config"] = load_handler_config(
                self["config"], broker_host=host, broker_port=port)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self["serial"] = None
        if self["port"]:
            stopbits = self["stopbits"]
            try:
                self["serial"] = SerialOptions(
                    self["port"], baudrate=self["baudrate"], timeout=self["timeout"],
                    parity=str(self["parity"]).upper(), bytesize=self["bytesize"],
                    stopbits=int(stopbits) if stopbits in (1, 2) else stopbits)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        cfg = self["handler_config"]
        if (self["serial"] is None and cfg.serial is None and cfg.listen is None
                and cfg.handler_type != "simulated"):
            raise usage.UsageError(
                f"{cfg.path}: no handler device: give the serial port as argument, or set "
                "'serial' (client endpoint) or 'listen' (server endpoint) in the config")


def makeService(options: Options, reactor: Any = None) -> Any:
    """The ate-handler service for twistd."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    from ate.handler.service import HandlerService
    from twisted.logger import Logger

    cfg = options["handler_config"]
    log = Logger(namespace="ate.handler")
    for warning in cfg.warnings:
        log.warn("config: {warning}", warning=warning)
    return HandlerService(reactor, cfg, serial=options["serial"])
