"""The Prometheus text exposition format 0.0.4, the small part of it ate-master writes:
label sets and sample values (``/metrics``, :mod:`ate.web.api` and
:mod:`ate.master.production`)."""

from __future__ import annotations

from typing import Any

__all__ = ["escape", "labels", "number"]


def escape(value: Any) -> str:
    """A label value: backslash, newline and double quote escaped."""
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(**pairs: Any) -> str:
    """``{k="v",...}`` in the order given, or '' without labels."""
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs.items()) + "}"


def number(value: Any) -> str:
    """A sample value: booleans as 1/0, integers exact, floats with NaN and ±Inf spelled as
    the format wants."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
