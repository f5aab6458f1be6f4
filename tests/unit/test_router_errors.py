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


def test_next_entry_without_partid_or_binning_gets_the_defaults(tmp_path):
    # the Semi-ATE TestApp reads partid and binning from its sites_info entry and goes to
    # error without them: the master fills in the defaults of a next without payload
    h = Harness(tmp_path)
    h.to_ready()
    h.pub.take()
    h.handler("next", {"sites": [{"siteid": "0"}, {"siteid": "1", "partid": "X", "logflag": 2}]})
    [cmd] = [p for t, p in h.pub.take() if t.endswith("TestApp/cmd")]
    infos = cmd["job_data"]["sites_info"]
    assert infos[0]["siteid"] == "0" and infos[0]["binning"] == -1
    assert isinstance(infos[0]["partid"], str) and infos[0]["partid"]
    assert infos[1] == {"siteid": "1", "partid": "X", "binning": -1, "logflag": 2}
