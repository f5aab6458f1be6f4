"""Drivers that connect the handler application to a handler device.

A driver delivers each parsed line from the device to a :class:`RequestSink`
(the :class:`~ate.handler.machine.HandlerController`) and offers the
:class:`HandlerLink` interface, through which the controller writes replies.
The controller does not know which driver it talks to, so the line driver
(:mod:`ate.handler.drivers.line`, serial or TCP) and the in-process
simulated device (:mod:`ate.handler.drivers.simulated`) are interchangeable::

    controller = HandlerController(clock, settings, bus)
    driver = LineDriver(reactor, controller, client="tcp:127.0.0.1:5000")
    controller.attach(driver)
"""

from __future__ import annotations

from typing import Protocol

from ate.handler import lineproto

__all__ = ["HandlerLink", "RequestSink"]


class HandlerLink(Protocol):
    """The line towards the handler device, as the controller sees it."""

    def send(self, msg: lineproto.Reply) -> None:
        """Write one reply line (``TS``, ``ET``, ``ID``, ``ID?``, ``HS?``)."""


class RequestSink(Protocol):
    """Who receives the device's parsed lines."""

    def line_request(self, req: lineproto.Request) -> None:
        """One well-formed line from the handler device."""
