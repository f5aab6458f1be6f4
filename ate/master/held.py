"""Commands the master holds until their sites can take them.

``HeldLoad``: a ``load`` accepted while Control apps still answer a reset (``resetting``,
protocol.md §3.2): the ``Control/cmd loadTest`` goes out once they are idle.

``Rejoin``: TestApps that rejoin after the master's reconnect (§3.7, broker loss).  When the
broker restarts, the master may be back before the TestApps: a ``next`` it sends
then reaches no TestApp (they subscribe again only when they reconnect) and is lost.  So,
from a reconnect in ``ready`` or ``testing`` on, a TestApp counts as *unheard* until a
message of it arrives (its status, which the Semi-ATE TestApp publishes again once it has
subscribed, a result, or its answer to the ``getexecutionstrategy`` probe sent at the
reconnect for TestApps that never lost their connection).  A ``TestApp/cmd next`` for an
unheard site is held and goes out when the last of its sites is heard; the part's
next-acknowledge timer, armed when the ``next`` was accepted, decides if one never is.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.logger import Logger


class HeldLoad:
    """The ``loadTest`` of a load accepted while some Control apps were resetting."""

    log = Logger(namespace="ate.master.held")

    def __init__(self, publish: Callable[[Any], Any]) -> None:
        self._publish = publish
        self._held: Any = None  # a ControlLoadTest message

    def send(self, msg: Any, waits: Sequence[str], lot: str) -> None:
        """Publish ``msg`` now, or hold it while the sites ``waits`` are resetting."""
        self._held = msg if waits else None
        if waits:
            self.log.info("lot {lot}: loadTest held until sites {sites} are idle (resetting)",
                          lot=lot, sites=", ".join(waits))
        else:
            self._publish(msg)

    def release(self) -> None:
        """The sites it waited for are idle: the held ``loadTest`` goes out."""
        if self._held is not None:
            self._publish(self._held)
            self._held = None

    def drop(self) -> None:
        self._held = None


class Rejoin:
    """The unheard TestApps since the last reconnect and the ``next`` held for them."""

    log = Logger(namespace="ate.master.held")

    def __init__(self, publish: Callable[[Any], Any]) -> None:
        self._publish = publish
        self._unheard: set[str] = set()
        self._held: Any = None  # a TestAppNext message

    @property
    def waiting(self) -> bool:
        return bool(self._unheard)

    def reconnected(self, sites: Sequence[str], probe: Any) -> None:
        """The master reconnected with TestApps running: every site is unheard; ``probe``
        (a message every live TestApp answers) is published."""
        self._unheard = set(sites)
        self._publish(probe)

    def heard(self, site: str) -> None:
        """A message of ``site``'s TestApp arrived."""
        unheard = self._unheard
        if site not in unheard:
            return
        unheard.discard(site)
        held = self._held
        if held is not None and unheard.isdisjoint(held.sites):
            self._held = None
            self.log.info("TestApps of sites {sites} back: next sent",
                          sites=", ".join(held.sites))
            self._publish(held)

    def send_next(self, msg: Any) -> None:
        """Publish a ``TestAppNext``, or hold it while one of its sites is unheard."""
        missing = [s for s in msg.sites if s in self._unheard] if self._unheard else []
        if not missing:
            self._publish(msg)
            return
        self._held = msg
        self.log.info("next held until the TestApps of sites {sites} are back after the "
                      "reconnect", sites=", ".join(missing))

    def drop(self) -> None:
        """The part ended: a held ``next`` is not sent any more."""
        self._held = None

    def forget(self) -> None:
        """The sites were reset: the TestApps start anew, nobody is unheard."""
        self._held = None
        self._unheard = set()
