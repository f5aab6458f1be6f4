"""The simulated sites' own reading and writing of the wire (protocol 1.3, 2.4-2.7).

The decoded inbound commands (:func:`decode`, :class:`ControlCommand`,
:class:`TestAppCommand`, :class:`MasterStatusSeen`), the outbound publications
(:class:`Outbound`) and the Control app's and TestApp's status payloads and last wills.
Deliberately independent of :mod:`ate.protocol`; :mod:`ate.sim.sites` says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

__all__ = [
    "CONTROL_COMMANDS",
    "CONTROL_STATES",
    "ControlCommand",
    "MasterStatusSeen",
    "Outbound",
    "SimInputError",
    "SiteMessage",
    "TESTAPP_COMMANDS",
    "TESTAPP_WILL_PAYLOAD",
    "TestAppCommand",
    "control_status_bytes",
    "control_status_payload",
    "control_will",
    "decode",
    "testapp_status_bytes",
    "testapp_status_payload",
    "testapp_will",
]

CONTROL_STATES = ("idle", "loading", "busy", "resetting", "error", "crash")
CONTROL_COMMANDS = ("loadTest", "reset", "setloglevel")
TESTAPP_COMMANDS = (
    "next", "terminate", "reset", "setloglevel", "getexecutionstrategy", "sethbin",
    "setparameter",
)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------------------
# Decoded inbound messages (the sites' view of the wire)
# --------------------------------------------------------------------------------------


class SimInputError(ValueError):
    """An inbound message the simulated sites cannot use; ``str()`` names topic and field."""

    def __init__(self, topic: str, reason: str):
        super().__init__(f"{topic}: {reason}")
        self.topic = topic
        self.reason = reason


@dataclass(frozen=True)
class ControlCommand:
    """A command on ``~/Control/cmd`` (protocol 2.4)."""

    command: str
    sites: tuple[str, ...]
    fields: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class TestAppCommand:
    """A command on ``~/TestApp/cmd`` (protocol 2.6)."""

    __test__ = False  # not a pytest test class

    command: str
    sites: tuple[str, ...]
    fields: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class MasterStatusSeen:
    """A ``~/Master/status`` message; the Control apps echo their state on each one."""

    state: str | None


SiteMessage = ControlCommand | TestAppCommand | MasterStatusSeen


def decode(device_id: str, topic: str, payload: bytes) -> SiteMessage | None:
    """Decode one inbound MQTT message for the simulated sites.

    Returns ``None`` for topics the sites do not listen to.  Raises
    :class:`SimInputError` naming the problem for anything malformed or unknown.
    """
    prefix = f"ate/{device_id}/"
    if not topic.startswith(prefix):
        return None
    sub = topic[len(prefix):]
    if sub not in ("Control/cmd", "TestApp/cmd", "Master/status"):
        return None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise SimInputError(topic, "payload is not UTF-8") from None
    try:
        obj = json.loads(text)
    except ValueError as e:  # JSONDecodeError, or a plain one for an over-long integer
        reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise SimInputError(topic, f"payload is not JSON ({reason})") from None
    if not isinstance(obj, dict):
        raise SimInputError(topic, f"payload is {type(obj).__name__}, expected a JSON object")

    if sub == "Master/status":
        state = obj.get("state")
        inner = obj.get("payload")
        if state is None and isinstance(inner, dict):
            state = inner.get("state")
        return MasterStatusSeen(state if isinstance(state, str) else None)

    if obj.get("type") != "cmd":
        raise SimInputError(topic, f"type is {obj.get('type')!r}, expected 'cmd'")
    command = obj.get("command")
    if not isinstance(command, str):
        raise SimInputError(topic, "command missing or not a string")
    known = CONTROL_COMMANDS if sub == "Control/cmd" else TESTAPP_COMMANDS
    if command not in known:
        raise SimInputError(topic, f"unknown command {command!r}")
    raw_sites = obj.get("sites")
    if not isinstance(raw_sites, list):
        raise SimInputError(topic, f"{command}: sites missing or not a list")
    sites: list[str] = []
    for s in raw_sites:
        if isinstance(s, bool) or not isinstance(s, (str, int)):
            raise SimInputError(topic, f"{command}: site id {s!r} is not a string")
        sites.append(str(s))
    fields = {k: v for k, v in obj.items() if k not in ("type", "command", "sites")}
    if sub == "Control/cmd":
        return ControlCommand(command, tuple(sites), fields)
    return TestAppCommand(command, tuple(sites), fields)


# --------------------------------------------------------------------------------------
# Outbound publications
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outbound:
    """One publication of a simulated app: ``app`` is ``"Control"`` or ``"TestApp"``."""

    topic: str
    payload: Mapping[str, Any]
    qos: int
    app: str
    site: str
    raw: bytes | None = field(default=None, compare=False, repr=False)  # payload, encoded

    def encode(self) -> bytes:
        return self.raw if self.raw is not None else _dumps(self.payload)

    @property
    def kind(self) -> str:
        """The topic's kind below the app, e.g. ``status``, ``testresult``, ``log``."""
        return self.topic.split("/")[3]


def control_status_payload(state: str, error_message: str = "") -> dict:
    return {"type": "status", "interface_version": 1, "software_version": 1,
            "payload": {"state": state, "error_message": error_message}}


@lru_cache(maxsize=64)
def control_status_bytes(state: str, error_message: str = "") -> bytes:
    """``control_status_payload`` encoded: a Control app publishes the same few statuses
    again on every ``Master/status`` (2.5), so they are encoded once."""
    return _dumps(control_status_payload(state, error_message))


def testapp_status_payload(state: str, message: str = "") -> dict:
    return {"type": "status", "framework_version": 1, "test_version": "N/A",
            "payload": {"state": state, "message": message}, "state": state}


@lru_cache(maxsize=64)
def testapp_status_bytes(state: str, message: str = "") -> bytes:
    """``testapp_status_payload`` encoded once per state (two of them on every part)."""
    return _dumps(testapp_status_payload(state, message))


def control_will(device_id: str, site: str) -> tuple[str, bytes, int]:
    """The Control app's last will (protocol 1.3/2.5): its status ``crash``."""
    return (f"ate/{device_id}/Control/status/site{site}",
            _dumps(control_status_payload("crash")), 2)


TESTAPP_WILL_PAYLOAD = {"type": "status", "framework_version": 1, "test_version": "N/A",
                        "payload": {"state": 0}, "state": "crash"}


def testapp_will(device_id: str, site: str) -> tuple[str, bytes, int]:
    """The TestApp's last will (protocol 2.7): ``payload.state`` is the integer 0."""
    return (f"ate/{device_id}/TestApp/status/site{site}", _dumps(TESTAPP_WILL_PAYLOAD), 2)
