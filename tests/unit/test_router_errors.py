"""A malformed handler command is answered with an error response that names the field."""

from __future__ import annotations

from cellharness import Harness


def test_load_without_lot_number_names_the_field(tmp_path):
    h = Harness(tmp_path)
    h.to_initialized()
    h.pub.take()
    h.handler("load", {})
    [err] = h.responses(h.pub.take())
    assert err["command_type"] == "load" and err["response_type"] == "error"
    assert err["message"].startswith("load refused: payload.lot_number: ")
    assert h.state == "initialized"
