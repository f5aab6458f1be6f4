"""Deferreds that fire when a predicate over recorded test state holds."""

from __future__ import annotations

from twisted.internet.defer import Deferred


class Waiter:
    """Subclasses record what they see and call ``poke()``; ``until()`` is bounded."""

    timeout = 20.0

    def __init__(self) -> None:
        self._waiting: list[tuple[object, Deferred]] = []

    def until(self, predicate, reactor, timeout: float | None = None) -> Deferred:
        d: Deferred = Deferred()
        if predicate():
            d.callback(None)
        else:
            self._waiting.append((predicate, d))
        return d.addTimeout(self.timeout if timeout is None else timeout, reactor)

    def poke(self) -> None:
        still = []
        for predicate, d in self._waiting:
            if d.called:
                continue
            if predicate():
                d.callback(None)
            else:
                still.append((predicate, d))
        self._waiting = still
