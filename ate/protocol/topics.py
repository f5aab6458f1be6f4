"""MQTT topic names of the wire contract (protocol.md 1.3, 9, 13.1).

``~/X`` in the protocol means ``ate/<device_id>/X``. All names are computed
once; the per-site and per-peripheral names are small methods.
"""

from __future__ import annotations

from typing import Iterable, Sequence

__all__ = ["Topics", "SUBSCRIBE_QOS", "RESERVED_APPS"]

#: QoS of the subscription lists below; the master subscribes with its config
#: ``mqtt_subscribe_qos`` instead (protocol 1.1).
SUBSCRIBE_QOS = 2

#: First topic levels below ``ate/D/`` that belong to the contract itself and
#: therefore can never name a peripheral (actuator) type.
RESERVED_APPS = frozenset({"Master", "Control", "TestApp", "Handler"})


def _check_level(what: str, value: object) -> str:
    """Return ``value`` if it is usable as one MQTT topic level, else raise."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if any(c in value for c in "/+#\x00"):
        raise ValueError(f"{what} {value!r} must not contain '/', '+', '#' or NUL")
    return value


class Topics:
    """Every topic name for one master device (and optionally its handler).

    Attributes (fixed topics):
        base: ``ate/D``
        master_status, master_cmd, master_response, master_job,
        master_peripherystate, control_cmd, testapp_cmd: ``~/...``
        handler_command: ``~/Handler/command`` (master -> handler)
        handler_status, handler_response: ``ate/H/Handler/status`` and
            ``ate/H/Handler/response``; ``None`` without a handler id.
    """

    __slots__ = (
        "device_id",
        "handler_id",
        "base",
        "master_status",
        "master_alarm",
        "master_cmd",
        "master_response",
        "master_job",
        "master_peripherystate",
        "control_cmd",
        "testapp_cmd",
        "handler_command",
        "handler_status",
        "handler_response",
    )

    def __init__(self, device_id: str, handler_id: str | None = None) -> None:
        self.device_id = _check_level("device_id", device_id)
        self.handler_id = (
            None if handler_id is None else _check_level("handler_id", handler_id)
        )
        base = self.base = f"ate/{device_id}"
        self.master_status = f"{base}/Master/status"
        self.master_alarm = f"{base}/Master/alarm"
        self.master_cmd = f"{base}/Master/cmd"
        self.master_response = f"{base}/Master/response"
        self.master_job = f"{base}/Master/job"
        self.master_peripherystate = f"{base}/Master/peripherystate"
        self.control_cmd = f"{base}/Control/cmd"
        self.testapp_cmd = f"{base}/TestApp/cmd"
        self.handler_command = f"{base}/Handler/command"
        if handler_id is None:
            self.handler_status = self.handler_response = None
        else:
            self.handler_status = f"ate/{handler_id}/Handler/status"
            self.handler_response = f"ate/{handler_id}/Handler/response"

    # -- per site --------------------------------------------------------
    def control_status(self, site: str) -> str:
        return f"{self.base}/Control/status/site{site}"

    def control_log(self, site: str) -> str:
        return f"{self.base}/Control/log/site{site}"

    def testapp_status(self, site: str) -> str:
        return f"{self.base}/TestApp/status/site{site}"

    def testapp_testresult(self, site: str) -> str:
        return f"{self.base}/TestApp/testresult/site{site}"

    def testapp_testsummary(self, site: str) -> str:
        return f"{self.base}/TestApp/testsummary/site{site}"

    def testapp_execution_strategy(self, site: str) -> str:
        return f"{self.base}/TestApp/execution_strategy/site{site}"

    def testapp_log(self, site: str) -> str:
        return f"{self.base}/TestApp/log/site{site}"

    def testapp_io_request(self, site: str) -> str:
        return f"{self.base}/TestApp/io-control/site{site}/request"

    def log(self, app: str, site: str) -> str:
        """``~/Control/log/siteN`` or ``~/TestApp/log/siteN``."""
        if app not in ("Control", "TestApp"):
            raise ValueError(f"log app must be 'Control' or 'TestApp', got {app!r}")
        return f"{self.base}/{app}/log/site{site}"

    # -- per peripheral (actuator) type ---------------------------------
    def _ptype(self, periphery_type: str) -> str:
        _check_level("periphery_type", periphery_type)
        if periphery_type in RESERVED_APPS:
            raise ValueError(f"periphery_type {periphery_type!r} is a reserved name")
        return periphery_type

    def peripheral_request(self, periphery_type: str) -> str:
        """``~/P/io-control/request`` (master -> actuator)."""
        return f"{self.base}/{self._ptype(periphery_type)}/io-control/request"

    def peripheral_response(self, periphery_type: str) -> str:
        """``~/P/io-control/response`` (actuator -> master)."""
        return f"{self.base}/{self._ptype(periphery_type)}/io-control/response"

    def peripheral_status(self, periphery_type: str) -> str:
        """``~/P/status`` (actuator availability, protocol 9.4)."""
        return f"{self.base}/{self._ptype(periphery_type)}/status"

    def master_peripheral_response(self, periphery_type: str) -> str:
        """``~/Master/P/response`` (master -> TestApps, relayed result)."""
        return f"{self.base}/Master/{self._ptype(periphery_type)}/response"

    # -- subscriptions ---------------------------------------------------
    def master_subscriptions(
        self, peripherals: Iterable[str] = ()
    ) -> list[tuple[str, int]]:
        """Topic filters of the master (protocol 1.2), all at QoS 2.

        The filters are explicit rather than ``~/Master/#``, ``~/+/status``,
        ``~/Control/#`` or ``~/TestApp/#``: those would also deliver the
        master's own publications (``Master/status``, ``Master/response``,
        ``Master/P/response``, and ``Control/cmd`` and ``TestApp/cmd`` on the
        hot path) back to it, so every inbound site topic is named instead.
        Unused TestApp sub-topics (``stdf``, ``binsettings``, ...) are thereby
        not received at all. Actuator results are taken on
        ``~/+/io-control/response`` permanently (protocol 1.2 allows it), as
        the peripheral types a TestApp may ask for are not known in advance;
        ``~/P/status`` is subscribed for each configured peripheral (9.4).
        """
        b = self.base
        subs = [
            (self.master_cmd, SUBSCRIBE_QOS),
            (f"{b}/Control/status/+", SUBSCRIBE_QOS),
            (f"{b}/Control/log/+", SUBSCRIBE_QOS),
            (f"{b}/TestApp/status/+", SUBSCRIBE_QOS),
            (f"{b}/TestApp/testresult/+", SUBSCRIBE_QOS),
            (f"{b}/TestApp/testsummary/+", SUBSCRIBE_QOS),
            (f"{b}/TestApp/execution_strategy/+", SUBSCRIBE_QOS),
            (f"{b}/TestApp/log/+", SUBSCRIBE_QOS),
            (f"{b}/TestApp/io-control/+/request", SUBSCRIBE_QOS),
            (f"{b}/+/io-control/response", SUBSCRIBE_QOS),
        ]
        if self.handler_status is not None:
            subs.append((self.handler_status, SUBSCRIBE_QOS))
        for ptype in peripherals:
            subs.append((self.peripheral_status(ptype), SUBSCRIBE_QOS))
        return subs

    # internals.md names the master's list ``subscriptions()``.
    subscriptions = master_subscriptions

    @staticmethod
    def handler_subscriptions(device_ids: Sequence[str]) -> list[tuple[str, int]]:
        """Topic filters of the handler application (protocol 13.1).

        For each master device id: ``Master/status``, ``Master/response`` and
        ``Handler/command``.
        """
        subs: list[tuple[str, int]] = []
        for device_id in device_ids:
            base = f"ate/{_check_level('device_id', device_id)}"
            subs.append((f"{base}/Master/status", SUBSCRIBE_QOS))
            subs.append((f"{base}/Master/response", SUBSCRIBE_QOS))
            subs.append((f"{base}/Handler/command", SUBSCRIBE_QOS))
        return subs

    def sim_subscriptions(self) -> list[tuple[str, int]]:
        """Topic filters of the simulated sites (Control app + TestApp).

        ``~/Master/+/response`` matches the relayed io-control results
        (``Master/P/response``) but not ``Master/response`` (one level less).
        """
        return [
            (self.control_cmd, SUBSCRIBE_QOS),
            (self.testapp_cmd, SUBSCRIBE_QOS),
            (self.master_status, SUBSCRIBE_QOS),
            (f"{self.base}/Master/+/response", SUBSCRIBE_QOS),
        ]

    def __repr__(self) -> str:
        return f"Topics(device_id={self.device_id!r}, handler_id={self.handler_id!r})"
