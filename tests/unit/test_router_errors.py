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


import json  # noqa: E402

import pytest  # noqa: E402

from ate.protocol import messages as m  # noqa: E402
from ate.protocol.errors import ProtocolError  # noqa: E402


@pytest.mark.parametrize("ptype", ["Temp\x01", "\ud800", "a\x7f", "a\u0085b", "x\ufffe",
                                   "a/b", "+", "#", "", "x" * 257, "\u00e9" * 129])
def test_io_request_for_a_type_no_broker_takes_as_a_topic_is_malformed(ptype):
    codec = m.Codec("D", ["0"])
    payload = json.dumps({"type": "io-control-request", "periphery_type": ptype,
                          "ioctl_name": "set", "parameters": {}}).encode()
    with pytest.raises(ProtocolError) as e:
        codec.decode("ate/D/TestApp/io-control/site0/request", payload)
    assert e.value.field == "periphery_type" and e.value.site == "0"


@pytest.mark.parametrize("ptype", ["Temperature", "Magnetic_Field", "Temp\u00e9rature", "a b"])
def test_io_request_for_a_normal_type_is_decoded(ptype):
    codec = m.Codec("D", ["0"])
    payload = json.dumps({"type": "io-control-request", "periphery_type": ptype,
                          "ioctl_name": "set", "parameters": {}}).encode()
    msg = codec.decode("ate/D/TestApp/io-control/site0/request", payload)
    assert msg.periphery_type == ptype
