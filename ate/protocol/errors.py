"""The one exception the protocol codec raises for bad input.

Every problem found while decoding an MQTT message is reported as a
:class:`ProtocolError` that names the topic, the offending field (a dotted
path such as ``payload.sites[1].siteid``) and the reason, so that the router
can log it in one line and, where the sender expects it, answer it.
"""

from __future__ import annotations

__all__ = ["ProtocolError", "KINDS"]

#: The values :attr:`ProtocolError.kind` can take.
KINDS = frozenset(
    {
        "not-json",             # payload is not JSON, or not a JSON object
        "malformed",            # a field is missing or has the wrong type/value
        "unknown-command",      # a command ``type`` we do not know
        "interface-version",    # a Control status of an unsupported interface version
        "site-not-configured",  # a siteN topic or a ``next`` site id not configured
        "unknown-topic",        # a topic that is not part of the contract
    }
)


class ProtocolError(ValueError):
    """A message that does not follow the wire contract.

    Attributes:
        topic: the MQTT topic the message arrived on.
        field: dotted path of the offending field, or ``None`` when the
            problem concerns the whole message or topic.
        reason: human readable reason, without the topic or field.
        command: for handler commands, the command ``type`` when it is a
            known string (or the unknown type string for
            ``kind="unknown-command"``), so the router can answer an error
            response (protocol 4.2); otherwise ``None``.
        site: the site id the problem concerns: the sender's site for
            messages on ``siteN`` topics, or the unconfigured site id.
        kind: one of :data:`KINDS`.

    ``str(err)`` is one line: ``"<topic>: <field>: <reason>"`` (the field part
    is left out when ``field`` is ``None``).
    """

    __slots__ = ("topic", "field", "reason", "command", "site", "kind")

    def __init__(
        self,
        topic: str,
        field: str | None,
        reason: str,
        *,
        command: str | None = None,
        site: str | None = None,
        kind: str = "malformed",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown ProtocolError kind {kind!r}")
        self.topic = topic
        self.field = field
        self.reason = reason
        self.command = command
        self.site = site
        self.kind = kind
        super().__init__(self._line())

    def _line(self) -> str:
        reason = " ".join(self.reason.split())  # always one line
        topic = _printable(self.topic)
        if self.field is None:
            return f"{topic}: {reason}"
        return f"{topic}: {_printable(self.field)}: {reason}"

    def __str__(self) -> str:
        return self._line()

    def __repr__(self) -> str:
        return (
            f"ProtocolError(topic={self.topic!r}, field={self.field!r}, "
            f"reason={self.reason!r}, command={self.command!r}, "
            f"site={self.site!r}, kind={self.kind!r})"
        )

    def __reduce__(self):  # keep pickling (e.g. for multiprocessing) working
        return (
            _rebuild,
            (self.topic, self.field, self.reason, self.command, self.site, self.kind),
        )


def _printable(text: str) -> str:
    """``text`` with control characters escaped (topics come from the wire)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _rebuild(topic, field, reason, command, site, kind) -> ProtocolError:
    return ProtocolError(topic, field, reason, command=command, site=site, kind=kind)
