"""Shared peripherals (io-control) synchronisation (protocol.md section 9).

:class:`PeripheralSync` is pure logic: the cell feeds it what happened (a part started,
a site delivered its result, a TestApp asked for a peripheral, an actuator answered or
reported its status) and acts on what it returns.  It never publishes, logs or keeps a
timer; the 5 s actuator timeout (9.3) belongs to the cell, which calls
:meth:`PeripheralSync.cancel_pending` when it fires.

Synchronisation (9.2): a request is forwarded once every site still testing the part
(released and without a result) has asked for the same ``(periphery_type, ioctl_name,
parameters)``.  A different request while one is gathered or forwarded raises
:class:`PeripheralMismatch`, which the cell turns into softerror.

Availability (9.4): every watched type starts unknown, and unknown counts as not
available: ``next`` is refused until the actuator has published ``available``.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Sequence

__all__ = ["Forward", "PeripheralMismatch", "PeripheralSync"]

AVAILABLE = "available"


class Forward(NamedTuple):
    """A request to publish on ``~/<periphery_type>/io-control/request`` (9.3)."""

    periphery_type: str
    ioctl_name: str
    parameters: Any


class PeripheralMismatch(ValueError):
    """Two different io-control requests for the same part (9.2).

    The message reads ``io-control mismatch: site 1 asked …, site 0 asked …`` with the
    newer request first.
    """


def _canonical(parameters: Any) -> str:
    """A comparable text of a parameters value (key order ignored, NaN equals NaN)."""
    try:
        return json.dumps(parameters, sort_keys=True, separators=(",", ":"), default=repr)
    except (TypeError, ValueError):
        return repr(parameters)


def _describe(periphery_type: str, ioctl_name: str, parameters: Any) -> str:
    return f"{periphery_type} {ioctl_name} {_canonical(parameters)}"


class PeripheralSync:
    """Gathers io-control requests of the tested sites and tracks actuator status."""

    def __init__(self, peripherals: Sequence[str]) -> None:
        if isinstance(peripherals, str):
            raise TypeError(
                f"peripherals must be a sequence of type names, not the string {peripherals!r}"
            )
        self._watched: tuple[str, ...] = tuple(dict.fromkeys(str(p) for p in peripherals))
        self._status: dict[str, str] = {}
        self._testing: set[str] = set()
        # site -> (canonical key, Forward) of the request being gathered
        self._asked: dict[str, tuple[tuple[str, str, str], Forward]] = {}
        self._pending: Forward | None = None
        self._pending_site: str | None = None

    # -- part lifecycle --------------------------------------------------------------

    @property
    def watched(self) -> tuple[str, ...]:
        """The peripheral types from the config key ``peripherals`` (9.4)."""
        return self._watched

    @property
    def pending(self) -> Forward | None:
        """The forwarded request awaiting the actuator's response, if any."""
        return self._pending

    @property
    def testing(self) -> frozenset[str]:
        """The sites still testing the current part."""
        return frozenset(self._testing)

    @property
    def asked(self) -> frozenset[str]:
        """The sites whose request is gathered but not yet forwarded."""
        return frozenset(self._asked)

    def start_part(self, tested_sites: Sequence[str]) -> None:
        """A part was released on ``tested_sites``; forget any earlier part's requests."""
        self._testing = {str(s) for s in tested_sites}
        self._asked.clear()
        self._pending = None
        self._pending_site = None

    def site_done(self, site: str) -> Forward | None:
        """``site`` delivered its result: it is no longer waited for.

        Its own unforwarded request is dropped.  Returns the Forward to send if the
        remaining sites have now all asked the same.
        """
        site = str(site)
        self._testing.discard(site)
        self._asked.pop(site, None)
        return self._complete()

    def request(
        self, site: str, periphery_type: str, ioctl_name: str, parameters: Any
    ) -> Forward | None:
        """``site`` asked for an io-control (9.1).

        Returns the Forward to publish when every still-testing site has asked the
        same, else None.  A request from a site that is not testing, or a repeat of
        the request already gathered or forwarded for that site, changes nothing and
        returns None.  Raises PeripheralMismatch, with nothing changed, if the request
        differs from the one gathered or forwarded.
        """
        site = str(site)
        forward = Forward(str(periphery_type), str(ioctl_name), parameters)
        key = (forward.periphery_type, forward.ioctl_name, _canonical(parameters))
        if self._pending is not None:
            if key != self._key(self._pending):
                raise PeripheralMismatch(self._mismatch(site, forward, self._pending_site,
                                                        self._pending))
            return None
        if site not in self._testing:
            return None
        for other, (other_key, other_forward) in self._asked.items():
            if other_key != key:
                raise PeripheralMismatch(self._mismatch(site, forward, other, other_forward))
            break  # all gathered requests are equal; comparing with one suffices
        self._asked[site] = (key, forward)
        return self._complete()

    def response(self, periphery_type: str, payload: Any) -> bool:
        """An actuator answered on ``~/P/io-control/response`` (9.3).

        True (and the pending request is cleared) if it answers the pending forward:
        same type and, when the payload names one, the same ``ioctl_name``.
        """
        pending = self._pending
        if pending is None or str(periphery_type) != pending.periphery_type:
            return False
        if isinstance(payload, dict) and "ioctl_name" in payload:
            if payload["ioctl_name"] != pending.ioctl_name:
                return False
        self._pending = None
        self._pending_site = None
        return True

    def cancel_pending(self) -> Forward | None:
        """Drop the pending forward (actuator timeout, 9.3 step 4) and return it."""
        pending, self._pending, self._pending_site = self._pending, None, None
        return pending

    def reset(self) -> None:
        """Forget the part: sites, gathered and pending requests.  Statuses are kept."""
        self._testing.clear()
        self._asked.clear()
        self._pending = None
        self._pending_site = None

    # -- availability ----------------------------------------------------------------

    def set_status(self, periphery_type: str, status: Any) -> None:
        """An actuator published ``{"status": ...}`` on ``~/P/status`` (9.4)."""
        self._status[str(periphery_type)] = str(status)

    def status(self, periphery_type: str) -> str | None:
        """The last status of a type, or None if none was received."""
        return self._status.get(periphery_type)

    def unavailable(self) -> list[str]:
        """Watched types that are not ``available`` (unknown counts), in config order."""
        return [p for p in self._watched if self._status.get(p) != AVAILABLE]

    # -- internals -------------------------------------------------------------------

    @staticmethod
    def _key(forward: Forward) -> tuple[str, str, str]:
        return (forward.periphery_type, forward.ioctl_name, _canonical(forward.parameters))

    @staticmethod
    def _mismatch(site: str, forward: Forward, other: str | None, other_forward: Forward) -> str:
        return (
            f"io-control mismatch: site {site} asked {_describe(*forward)}, "
            f"site {other} asked {_describe(*other_forward)}"
        )

    def _complete(self) -> Forward | None:
        if not self._asked or not self._testing.issubset(self._asked):
            return None
        first_site = min(self._asked, key=_site_order)
        _, forward = self._asked[first_site]
        self._asked.clear()
        self._pending = forward
        self._pending_site = first_site
        return forward


def _site_order(site: str) -> tuple[int, int | str]:
    return (0, int(site)) if site.isdigit() else (1, site)
