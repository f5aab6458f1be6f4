"""Reading JSON from the wire: the size and depth limits, the typed field getters
(:class:`_Ctx`) and the checks the decoders share.  Pure: no Twisted."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from ate.protocol.errors import ProtocolError
from ate.protocol.topics import RESERVED_APPS

_JTYPES = {
    str: "a string", int: "an integer", float: "a number", bool: "a boolean",
    type(None): "null", list: "an array", dict: "an object",
}


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _json_short(value: Any) -> str:
    """A decoded JSON value for error messages, in JSON spelling (``Infinity``, ``NaN``)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return _short(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: PRR fields the handler's bins come from; the codec checks them (2.8, 3.8).
_PRR_BINS = ("SOFT_BIN", "HARD_BIN")


def _jtype(value: Any) -> str:
    """Describe a decoded JSON value's type for error messages."""
    return _JTYPES.get(type(value), type(value).__name__)


_json_decode = json.JSONDecoder().decode

#: The deepest nesting of arrays and objects accepted in JSON from outside (MQTT payloads,
#: HTTP bodies, websocket frames).  The protocol's messages nest 4 levels at most; a
#: decoded value nested close to Python's recursion limit would make every later
#: encoder or walker over it raise RecursionError.
MAX_JSON_DEPTH = 64
_CONTAINERS = frozenset((dict, list))


def json_too_deep(obj: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if the decoded JSON value ``obj`` nests arrays/objects more than ``limit``
    levels deep (a scalar is level 0, ``[]`` level 1).  Iterative, one level at a time."""
    if type(obj) not in _CONTAINERS:
        return False
    level = [obj]
    depth = 0
    flat = _CONTAINERS.isdisjoint
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list = []
        for o in level:
            values = o.values() if type(o) is dict else o
            if not flat(map(type, values)):
                below += [v for v in values if type(v) in _CONTAINERS]
        level = below
    return False


def _loads(topic: str, payload: bytes, site: str | None = None) -> dict:
    """Parse one JSON object or raise ``ProtocolError(kind="not-json")``."""
    try:
        # UTF-8 only (protocol §0): decoding first skips json's encoding detection
        text = (payload.decode("utf-8") if type(payload) is bytes
                else bytes(payload).decode("utf-8"))
        obj = _json_decode(text)
    except (ValueError, RecursionError, TypeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ProtocolError(
            topic, None, f"payload is not valid JSON: {reason[:120]}",
            site=site, kind="not-json",
        ) from None
    # deeper than the limit needs more than ``limit`` opening brackets, so at least
    # 2 * (limit + 1) characters: a short payload, or one with few brackets (a test result:
    # about 10), skips the walk over the decoded value (counting is a C scan of the text)
    if (len(text) > 2 * MAX_JSON_DEPTH
            and text.count("[") + text.count("{") > MAX_JSON_DEPTH and json_too_deep(obj)):
        raise ProtocolError(
            topic, None, f"payload is not valid JSON: nested deeper than {MAX_JSON_DEPTH} "
            "levels", site=site, kind="not-json",
        )
    if type(obj) is not dict:
        raise ProtocolError(
            topic, None, f"payload must be a JSON object, got {_jtype(obj)}",
            site=site, kind="not-json",
        )
    return obj


class _Ctx:
    """Error context while decoding one message: topic, command, site."""

    __slots__ = ("topic", "command", "site")

    def __init__(self, topic: str, command: str | None = None,
                 site: str | None = None) -> None:
        self.topic = topic
        self.command = command
        self.site = site

    def error(self, fld: str | None, reason: str,
              kind: str = "malformed") -> ProtocolError:
        return ProtocolError(self.topic, fld, reason, command=self.command,
                             site=self.site, kind=kind)

    def wrong(self, fld: str, expected: str, value: Any) -> ProtocolError:
        return self.error(fld, f"must be {expected}, got {_jtype(value)}")

    def missing(self, fld: str) -> ProtocolError:
        return self.error(fld, "missing")

    # -- typed getters -------------------------------------------------------
    def str_(self, obj: dict, key: str, path: str, *, nonempty: bool = False) -> str:
        value = obj.get(key, _MISSING)
        if type(value) is str:
            if nonempty and not value:
                raise self.error(path, "must not be empty")
            return value
        if value is _MISSING:
            raise self.missing(path)
        raise self.wrong(path, "a string", value)

    def opt_str(self, obj: dict, key: str, path: str, default: Any) -> Any:
        """A string, or ``default`` when missing; ``null`` kept as ``None``."""
        value = obj.get(key, _MISSING)
        if value is _MISSING:
            return default
        if value is None or type(value) is str:
            return value
        raise self.wrong(path, "a string or null", value)

    def int_(self, obj: dict, key: str, path: str) -> int:
        value = obj.get(key, _MISSING)
        if type(value) is int:
            return value
        if value is _MISSING:
            raise self.missing(path)
        raise self.wrong(path, "an integer", value)

    def obj(self, obj: dict, key: str, path: str) -> dict:
        value = obj.get(key, _MISSING)
        if type(value) is dict:
            return value
        if value is _MISSING:
            raise self.missing(path)
        raise self.wrong(path, "an object", value)

    def list_(self, obj: dict, key: str, path: str) -> list:
        value = obj.get(key, _MISSING)
        if type(value) is list:
            return value
        if value is _MISSING:
            raise self.missing(path)
        raise self.wrong(path, "an array", value)

    def str_list(self, obj: dict, key: str, path: str) -> tuple[str, ...]:
        items = self.list_(obj, key, path)
        for i, item in enumerate(items):
            if type(item) is not str:
                raise self.wrong(f"{path}[{i}]", "a string", item)
        return tuple(items)

    def layout(self, items: Any, path: str, max_len: int | None = None,
               ) -> tuple[tuple[int, int], ...]:
        """A list of ``[x, y]`` pairs of non-negative integers."""
        if type(items) is not list:
            raise self.wrong(path, "an array of [x, y] pairs", items)
        if not items:
            raise self.error(path, "must not be empty")
        if max_len is not None and len(items) > max_len:
            raise self.error(
                path, f"has {len(items)} pairs, more than the {max_len} "
                      f"configured sites")
        out = []
        for i, pair in enumerate(items):
            if type(pair) is not list or len(pair) != 2:
                raise self.error(f"{path}[{i}]", "must be an [x, y] pair")
            x, y = pair
            if type(x) is not int or type(y) is not int or x < 0 or y < 0:
                raise self.error(f"{path}[{i}]",
                                 "x and y must be non-negative integers")
            out.append((x, y))
        return tuple(out)


_MISSING = object()


def _record_name(rec: dict) -> Any:
    """The STDF record name of a record dict (``type``, else ``rec_id``)."""
    name = rec.get("type")
    if type(name) is str:
        return name
    name = rec.get("rec_id")
    if type(name) is str:
        return name
    return None


def _is_level(value: str) -> bool:
    """True if ``value`` can be one MQTT topic level naming a peripheral: not empty, not a
    reserved app name, no ``/ + #``, and nothing a broker refuses in a topic (mosquitto
    drops a client that publishes a topic with a control character, a lone surrogate or a
    non-character, and every resend of that QoS 2 message after the reconnect again), at
    most 256 bytes of UTF-8."""
    if not value or value in RESERVED_APPS or len(value) > 256:
        return False
    if value.isascii():
        return value.isprintable() and not any(c in value for c in "/+#")
    if any(c in value for c in "/+#"):
        return False
    for c in value:
        cat = unicodedata.category(c)
        if cat in ("Cc", "Cs") or c in "\ufffe\uffff":
            return False
    return len(value.encode("utf-8")) <= 256
