"""Tests for ate.master.peripherals (protocol.md section 9)."""

from __future__ import annotations

import pytest

from ate.master.peripherals import Forward, PeripheralMismatch, PeripheralSync

T25 = {"temperature": [25], "timeout": 5}
T30 = {"temperature": [30], "timeout": 5}
FWD25 = Forward("Temperature", "set_temperature", T25)


def started(*sites: str, peripherals=("Temperature",)) -> PeripheralSync:
    sync = PeripheralSync(peripherals)
    sync.start_part(sites)
    return sync


def ask(sync, site, params=T25, ptype="Temperature", name="set_temperature"):
    return sync.request(site, ptype, name, params)


# -- synchronisation ---------------------------------------------------------------------


def test_forward_once_when_all_sites_asked_the_same():
    sync = started("0", "1", "2")
    assert ask(sync, "1") is None
    assert ask(sync, "0") is None
    assert sync.pending is None
    assert ask(sync, "2") == FWD25
    assert sync.pending == FWD25
    assert sync.asked == frozenset()
    # a repeat of the forwarded request while it runs is not forwarded again
    assert ask(sync, "2") is None
    assert sync.pending == FWD25


def test_single_site_forwards_at_once():
    sync = started("3")
    assert ask(sync, "3") == FWD25


def test_parameter_key_order_does_not_matter():
    sync = started("0", "1")
    ask(sync, "0", {"temperature": [25], "timeout": 5})
    assert ask(sync, "1", {"timeout": 5, "temperature": [25]}) == FWD25


def test_finished_site_is_not_waited_for():
    sync = started("0", "1", "2")
    assert sync.site_done("2") is None
    ask(sync, "0")
    assert ask(sync, "1") == FWD25


def test_site_done_completes_a_gathered_request():
    sync = started("0", "1", "2")
    ask(sync, "0")
    ask(sync, "1")
    assert sync.site_done("2") == FWD25
    assert sync.pending == FWD25
    assert sync.testing == frozenset({"0", "1"})


def test_site_done_drops_its_own_request():
    sync = started("0", "1")
    ask(sync, "0")
    assert sync.site_done("0") is None
    assert sync.asked == frozenset()
    assert sync.site_done("1") is None
    assert sync.pending is None


def test_request_from_site_not_testing_is_ignored():
    sync = started("0", "1")
    assert ask(sync, "7") is None
    sync.site_done("1")
    assert ask(sync, "1") is None          # already delivered its result
    assert sync.asked == frozenset()
    assert ask(sync, "0") == FWD25


def test_duplicate_request_while_gathering_is_harmless():
    sync = started("0", "1")
    ask(sync, "0")
    assert ask(sync, "0") is None
    assert ask(sync, "1") == FWD25


# -- mismatch ----------------------------------------------------------------------------


def test_mismatch_message_and_nothing_changed():
    sync = started("0", "1", "2")
    ask(sync, "0")
    with pytest.raises(PeripheralMismatch) as info:
        ask(sync, "1", T30)
    assert str(info.value) == (
        'io-control mismatch: site 1 asked Temperature set_temperature '
        '{"temperature":[30],"timeout":5}, '
        'site 0 asked Temperature set_temperature {"temperature":[25],"timeout":5}')
    assert sync.asked == frozenset({"0"})
    assert sync.pending is None


@pytest.mark.parametrize(
    "ptype, name, params",
    [("Magfield", "set_temperature", T25), ("Temperature", "get_temperature", T25),
     ("Temperature", "set_temperature", T30)],
)
def test_any_difference_is_a_mismatch(ptype, name, params):
    sync = started("0", "1")
    ask(sync, "0")
    with pytest.raises(PeripheralMismatch, match="^io-control mismatch: site 1 asked"):
        sync.request("1", ptype, name, params)


def test_mismatch_against_forwarded_request():
    sync = started("0", "1")
    ask(sync, "0")
    ask(sync, "1")
    with pytest.raises(PeripheralMismatch, match="site 1 asked .*30.*, site 0 asked .*25"):
        ask(sync, "1", T30)
    assert sync.pending == FWD25


def test_mismatch_is_a_value_error():
    assert issubclass(PeripheralMismatch, ValueError)


# -- response ----------------------------------------------------------------------------


def forwarded() -> PeripheralSync:
    sync = started("0")
    ask(sync, "0")
    return sync


def test_response_matches_pending_and_clears_it():
    sync = forwarded()
    payload = {"type": "io-control-response", "ioctl_name": "set_temperature",
               "result": {"status": "ok"}}
    assert sync.response("Temperature", payload) is True
    assert sync.pending is None
    assert sync.response("Temperature", payload) is False


@pytest.mark.parametrize(
    "ptype, payload",
    [("Magfield", {"ioctl_name": "set_temperature"}),
     ("Temperature", {"ioctl_name": "other"})],
)
def test_response_not_matching(ptype, payload):
    sync = forwarded()
    assert sync.response(ptype, payload) is False
    assert sync.pending == FWD25


def test_response_without_ioctl_name_matches_on_type():
    sync = forwarded()
    assert sync.response("Temperature", {"result": "ok"}) is True


def test_response_without_pending():
    assert started("0").response("Temperature", {"ioctl_name": "x"}) is False


def test_next_request_after_response():
    sync = started("0", "1")
    ask(sync, "0"), ask(sync, "1")
    assert sync.response("Temperature", {"ioctl_name": "set_temperature"})
    ask(sync, "1", T30)
    assert ask(sync, "0", T30) == Forward("Temperature", "set_temperature", T30)


def test_cancel_pending_and_reset():
    sync = forwarded()
    assert sync.cancel_pending() == FWD25
    assert sync.pending is None
    assert sync.cancel_pending() is None
    sync = started("0", "1")
    ask(sync, "0")
    sync.reset()
    assert sync.testing == frozenset() and sync.asked == frozenset()
    assert ask(sync, "0") is None


def test_start_part_forgets_previous_part():
    sync = started("0", "1")
    ask(sync, "0")
    sync.start_part(["1"])
    assert sync.asked == frozenset()
    assert ask(sync, "1", T30) == Forward("Temperature", "set_temperature", T30)


# -- availability ------------------------------------------------------------------------


def test_unknown_status_counts_as_unavailable():
    sync = PeripheralSync(["Temperature", "Magfield"])
    assert sync.unavailable() == ["Temperature", "Magfield"]
    sync.set_status("Magfield", "available")
    assert sync.unavailable() == ["Temperature"]
    sync.set_status("Temperature", "available")
    assert sync.unavailable() == []
    sync.set_status("Temperature", "crashed")
    assert sync.unavailable() == ["Temperature"]
    sync.set_status("Temperature", "terminated")
    assert sync.status("Temperature") == "terminated"


def test_unwatched_status_ignored_and_reset_keeps_status():
    sync = PeripheralSync(["Temperature"])
    sync.set_status("Other", "crashed")
    sync.set_status("Temperature", "available")
    sync.reset()
    assert sync.unavailable() == []


def test_no_peripherals():
    sync = PeripheralSync([])
    assert sync.unavailable() == []
    assert sync.watched == ()


def test_string_instead_of_list_refused():
    with pytest.raises(TypeError, match="'Temperature'"):
        PeripheralSync("Temperature")
