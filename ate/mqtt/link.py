"""The MQTT link seam: what L{ate.mqtt.service.MqttService} asks of the network.

A link is one MQTT 3.1.1 clean-session client connection, driven by the service's
connection machine (which owns reconnecting, backoff and timeouts) and reporting back
through a L{LinkListener}. Two links implement it:

- C{"twisted"}, L{ate.mqtt.twistedlink}: our MQTT 3.1.1 protocol on Twisted. The
  default (config C{mqtt_client = "twisted"}, L{DEFAULT_LINK}).
- C{"paho"}, L{ate.mqtt.reactorpaho}: paho-mqtt 2.x, the ecosystem's client, driven by
  the reactor (config C{mqtt_client = "paho"}).

This module imports neither of them (nor paho): L{link_factory} imports the chosen one
when asked, so a process on the default link never loads paho.

The contract both links keep (tests/unit/test_twistedlink.py, tests/unit/test_mqtt_service.py
and the real-broker tests in tests/integration/test_mqtt*.py run them both):

- C{connect()} opens the connection and writes CONNECT (clean session, keepalive,
  credentials, TLS, a non-retained last will); its Deferred fires once CONNECT is on its
  way and fails for a failed attempt. The broker's answer comes later, in another
  reactor turn, as C{link_connected(accepted, reason)}.
- C{publish(topic, payload, qos) -> mid}: QoS 0 is written at once and reported with
  C{link_published(mid)} after C{publish} has returned; QoS 1/2 wait in an in-flight
  window of L{WINDOW} and are reported on PUBACK / PUBCOMP. A QoS 1/2 message unacked
  when the connection drops is sent again after the next accepted CONNACK.
  L{MqttLinkError} when the link cannot take it, ValueError for a bad argument.
- C{subscribe(subscriptions) -> mid | None}: one SUBSCRIBE; C{link_subscribed} follows.
- C{disconnect()}: a clean DISCONNECT (the broker drops the will); C{abort()}: the
  connection is dropped without one (the broker publishes the will). Both end in
  C{link_lost}.
- C{start()} / C{stop()}: the link's own timers (idempotent).
- C{refused_packets}: PUBLISH packets refused for being larger than
  C{options.max_packet_size} (L{DEFAULT_MAX_PACKET}); such a packet is never buffered
  whole, never delivered, and acknowledged so the session goes on.
- Every listener call runs on the reactor thread; a listener exception is logged,
  never raised into the link or the reactor.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from twisted.internet.defer import Deferred

from ate.config import MqttOptions

__all__ = ["DEFAULT_LINK", "DEFAULT_MAX_PACKET", "LINKS", "Link", "LinkFactory",
           "LinkListener", "MqttLinkError", "WINDOW", "link_factory"]

#: The link used when the config does not name one (config ``mqtt_client``).
DEFAULT_LINK = "twisted"
#: Every link by its config name.
LINKS = ("twisted", "paho")

#: Outgoing QoS 1/2 messages in flight at once, in both links. Measured against
#: mosquitto 2.0.11 on loopback: 2000 QoS 2 publishes are acked in ~0.29 s with a
#: window of 10, 20 or 1000 alike. A window larger than the broker's
#: ``max_inflight_messages`` (default 20, which mosquitto also applies to what a 3.1.1
#: client sends it) makes the broker drop the connection ("Bad socket read/write");
#: 0 (unlimited) did exactly that with a stock broker. Messages beyond the window wait
#: in the link's queue and go out as acks come back.
WINDOW = 20

#: Largest packet accepted (remaining length), config ``mqtt_max_packet_size``.
DEFAULT_MAX_PACKET = 4 * 1024 * 1024


class MqttLinkError(Exception):
    """The link refused an operation (the message names the operation and why)."""


class LinkListener(Protocol):
    """What a link reports to; every call is on the reactor thread."""

    def link_connected(self, accepted: bool, reason: str) -> None:
        """CONNACK received: C{accepted} is False when the broker refused."""

    def link_lost(self, reason: str) -> None:
        """The connection is gone (broker loss, our DISCONNECT, keepalive)."""

    def link_message(self, topic: str, payload: bytes, qos: int) -> None:
        """A PUBLISH arrived."""

    def link_published(self, mid: int) -> None:
        """Our message C{mid} was acked (QoS > 0) or written (QoS 0)."""

    def link_subscribed(self, mid: int, failures: Sequence[str]) -> None:
        """SUBACK for C{mid}; C{failures} names refused filters' reasons."""


class Link(Protocol):
    """One client connection, as the service drives it (see the module docstring)."""

    refused_packets: int

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def connect(self) -> Deferred[None]: ...
    def publish(self, topic: str, payload: bytes, qos: int) -> int: ...
    def subscribe(self, subscriptions: Sequence[tuple[str, int]]) -> int | None: ...
    def disconnect(self) -> None: ...
    def abort(self) -> None: ...


class LinkFactory(Protocol):
    """Builds a link: C{(reactor, options, client_id, will, listener) -> Link}."""

    def __call__(self, reactor: Any, options: MqttOptions, client_id: str,
                 will: tuple[str, bytes, int] | None, listener: LinkListener) -> Link: ...


def link_factory(name: str = DEFAULT_LINK) -> LinkFactory:
    """The factory of the link called C{name} (one of L{LINKS}); imports only that link.

    ValueError naming the choices for any other name.
    """
    if name == "twisted":
        from ate.mqtt.twistedlink import create

        return create
    if name == "paho":
        from ate.mqtt.reactorpaho import ReactorPaho

        return ReactorPaho.create
    raise ValueError(f"MQTT link {name!r}: not one of {', '.join(LINKS)}")
