"""Unit tests of the simulated sites core (ate.sim.sites), with a Clock and a recording send."""

from __future__ import annotations

import json

import pytest
from twisted.application.service import Service
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from ate.config import ConfigError, SimBin, SimFaults, sim_config_from_dict
from ate.sim.sites import (
    ControlCommand,
    MasterStatusSeen,
    SimInputError,
    SimSites,
    SimSitesService,
    TestAppCommand,
    decode,
)

D = "SCT-81-1F"
SITES = ("0", "1", "2", "3")
BIN_TABLE = {"1": ["1"], "2": ["2"], "5": ["12", "13"], "6": ["20", "21"], "0": ["60000"]}


class Recorder:
    def __init__(self):
        self.out = []

    def __call__(self, out):
        # every publication must be encodable JSON, and what goes on the wire is its payload
        assert json.loads(out.encode()) == json.loads(json.dumps(out.payload))
        self.out.append(out)

    def take(self):
        got, self.out = self.out, []
        return got

    @staticmethod
    def summary(outs):
        """(topic-suffix, state-or-type) tuples for compact assertions."""
        res = []
        for o in outs:
            sub = o.topic.split("/", 2)[2]
            p = o.payload
            if p.get("type") == "status":
                res.append((sub, p["payload"]["state"]))
            else:
                res.append((sub, p.get("type")))
        return res


def make(sites=SITES, **kw):
    clock = Clock()
    rec = Recorder()
    kw.setdefault("ptr_count", 2)
    kw.setdefault("strategy_delay", 0.0)  # at once; the config's 50 ms is tested alone
    sim = SimSites(D, sites, clock, rec, **kw)
    return sim, clock, rec


def raw(sub, obj):
    return f"ate/{D}/{sub}", json.dumps(obj).encode()


def load_cmd(sites=SITES, bin_table=BIN_TABLE):
    return ControlCommand("loadTest", tuple(sites), {"testapp_params": {
        "testapp_script_path": "hallsens2_ft1.py", "testapp_script_args": ["--verbose"],
        "cwd": "programs", "bin_table": bin_table}})


def next_cmd(sites=SITES, partids=None):
    partids = partids or {s: f"P{100 + int(s)}" for s in sites}
    return TestAppCommand("next", tuple(sites), {"job_data": {"sites_info": [
        {"siteid": s, "partid": partids[s], "binning": -1, "logflag": 0, "additionalinfo": "0"}
        for s in sites]}})


def loaded(**kw):
    sim, clock, rec = make(**kw)
    sim.handle(load_cmd(sim.sites))
    clock.advance(sim.load_time + 100)
    rec.take()
    return sim, clock, rec


# ---------------------------------------------------------------------------------------
# decoding


def test_decode_commands_and_status():
    msg = decode(D, *raw("Control/cmd", {"type": "cmd", "command": "loadTest", "sites": ["0", 1],
                                         "testapp_params": {"x": 1}}))
    assert msg == ControlCommand("loadTest", ("0", "1"))
    assert msg.fields["testapp_params"] == {"x": 1}
    msg = decode(D, *raw("TestApp/cmd", {"type": "cmd", "command": "sethbin", "sites": ["0"],
                                         "sbin": "12", "hbin": "7"}))
    assert isinstance(msg, TestAppCommand) and msg.fields["sbin"] == "12"
    assert decode(D, *raw("Master/status", {"type": "status", "state": "ready",
                                            "payload": {"state": "ready"}})) == \
        MasterStatusSeen("ready")
    assert decode(D, *raw("Master/status", {"payload": {"state": "crash"}})) == \
        MasterStatusSeen("crash")
    # not ours
    assert decode(D, "ate/OTHER/Control/cmd", b"{}") is None
    assert decode(D, f"ate/{D}/Control/status/site0", b"{}") is None


@pytest.mark.parametrize("sub,payload,needle", [
    ("Control/cmd", b"\xff\xfe", "not UTF-8"),
    ("Control/cmd", b"{nope", "not JSON"),
    # an integer beyond Python's digit limit: a plain ValueError, not a JSONDecodeError
    ("Control/cmd", b'{"n": ' + b"1" * 5000 + b"}", "not JSON"),
    ("TestApp/cmd", b"[1, 2]", "expected a JSON object"),
    ("TestApp/cmd", b'{"type": "cmd", "command": "fly", "sites": ["0"]}', "unknown command 'fly'"),
    ("TestApp/cmd", b'{"type": "cmd", "command": "next"}', "sites missing"),
    ("TestApp/cmd", b'{"type": "cmd", "command": "next", "sites": [null]}', "site id None"),
    ("Control/cmd", b'{"type": "status", "command": "reset", "sites": []}', "expected 'cmd'"),
    ("Control/cmd", b'{"type": "cmd", "sites": []}', "command missing"),
])
def test_decode_errors_name_the_problem(sub, payload, needle):
    with pytest.raises(SimInputError) as e:
        decode(D, f"ate/{D}/{sub}", payload)
    assert needle in str(e.value)
    assert f"ate/{D}/{sub}" in str(e.value)


def test_garbage_is_ignored_without_output():
    sim, clock, rec = make()
    sim.received(f"ate/{D}/TestApp/cmd", b"garbage")
    sim.received(*raw("Control/cmd", {"type": "cmd", "command": "explode", "sites": ["0"]}))
    clock.advance(10)
    assert rec.out == []
    assert all(s.control_state == "idle" for s in sim.site.values())


# ---------------------------------------------------------------------------------------
# Control app


def test_connect_and_master_status_echo():
    sim, clock, rec = make(sites=("0", "1"))
    sim.connected()
    assert rec.summary(rec.take()) == [("Control/status/site0", "idle"),
                                       ("Control/status/site1", "idle")]
    sim.received(*raw("Master/status", {"type": "status", "state": "initialized"}))
    outs = rec.take()
    assert [o.qos for o in outs] == [2, 2]
    assert outs[0].payload == {"type": "status", "interface_version": 1, "software_version": 1,
                               "payload": {"state": "idle", "error_message": ""}}
    # the echo is encoded once per state, and compact
    assert outs[0].encode() is outs[1].encode() == (
        b'{"type":"status","interface_version":1,"software_version":1,'
        b'"payload":{"state":"idle","error_message":""}}')


def test_a_reconnect_re_announces_a_running_testapp_as_the_semi_ate_one_does():
    sim, clock, rec = make(sites=("0", "1"), load_time=0.0)
    sim.handle(load_cmd(("0", "1")))
    clock.advance(0)
    rec.take()
    sim.connected()
    assert rec.summary(rec.take()) == [
        ("Control/status/site0", "busy"), ("TestApp/status/site0", "idle"),
        ("Control/status/site1", "busy"), ("TestApp/status/site1", "idle")]
    # per-site clients: the TestApp client's reconnect announces only the TestApp
    sim.connected("1", ("TestApp",))
    assert rec.summary(rec.take()) == [("TestApp/status/site1", "idle")]


def test_load_sequence_and_timing():
    sim, clock, rec = make(sites=("0", "1"), load_time=2.0)
    sim.handle(load_cmd(("0", "1")))
    assert rec.summary(rec.take()) == [("Control/status/site0", "loading"),
                                       ("Control/status/site1", "loading")]
    clock.advance(1.9)
    assert rec.out == []
    clock.advance(0.1)
    assert rec.summary(rec.take()) == [
        ("Control/status/site0", "busy"), ("TestApp/status/site0", "idle"),
        ("Control/status/site1", "busy"), ("TestApp/status/site1", "idle")]
    ta = [o for o in rec.out]
    assert ta == []
    # a second loadTest while busy is ignored
    sim.handle(load_cmd(("0", "1")))
    clock.advance(5)
    assert rec.out == []


def test_zero_load_time_still_goes_through_the_clock():
    sim, clock, rec = make(sites=("0",))
    sim.handle(load_cmd(("0",)))
    assert rec.summary(rec.take()) == [("Control/status/site0", "loading")]
    clock.advance(0)
    assert rec.summary(rec.take()) == [("Control/status/site0", "busy"),
                                       ("TestApp/status/site0", "idle")]


def test_load_ignores_sites_not_listed():
    sim, clock, rec = make(sites=("0", "1"))
    sim.handle(load_cmd(("1",)))
    clock.advance(1)
    assert sim.site["0"].control_state == "idle"
    assert sim.site["1"].control_state == "busy"


def test_load_with_incomplete_bin_table_goes_error():
    sim, clock, rec = make(sites=("0",))
    sim.handle(load_cmd(("0",), bin_table={"1": ["1"]}))
    clock.advance(1)
    outs = rec.take()
    assert rec.summary(outs) == [("Control/status/site0", "loading"),
                                 ("Control/status/site0", "error")]
    assert "soft bin 2" in outs[-1].payload["payload"]["error_message"]
    assert sim.site["0"].testapp_state is None


def test_load_without_params_goes_error():
    sim, clock, rec = make(sites=("0",))
    sim.handle(ControlCommand("loadTest", ("0",), {}))
    outs = rec.take()
    assert rec.summary(outs)[-1] == ("Control/status/site0", "error")
    assert "testapp_params missing" in outs[-1].payload["payload"]["error_message"]


def test_load_with_only_a_bin_table_still_loads():
    sim, clock, rec = make(sites=("0",))
    table: dict = {}
    for b in sim.bins:
        table.setdefault(str(b.hbin), []).append(str(b.sbin))
    sim.handle(ControlCommand("loadTest", ("0",), {"testapp_params": {"bin_table": table}}))
    clock.advance(0)
    assert ("TestApp/status/site0", "idle") in rec.summary(rec.take())


def test_reset_kills_testapp_and_cancels_pending_work():
    sim, clock, rec = make(sites=("0",), load_time=5.0)
    sim.handle(load_cmd(("0",)))
    rec.take()
    sim.handle(ControlCommand("reset", ("0",)))
    assert rec.summary(rec.take()) == [("Control/status/site0", "resetting")]
    clock.advance(0)
    assert rec.summary(rec.take()) == [("Control/status/site0", "idle")]
    clock.advance(10)  # the cancelled load must not complete
    assert rec.out == []
    # a TestApp command now finds no TestApp
    sim.handle(next_cmd(("0",)))
    clock.advance(1)
    assert rec.out == []


def test_reset_while_testing_drops_the_part():
    sim, clock, rec = loaded(sites=("0",), test_time=1.0)
    sim.handle(next_cmd(("0",)))
    sim.handle(ControlCommand("reset", ("0",)))
    clock.advance(5)
    assert rec.summary(rec.take()) == [("TestApp/status/site0", "testing"),
                                       ("Control/status/site0", "resetting"),
                                       ("Control/status/site0", "idle")]
    assert sim.truth.part_count == 0


# ---------------------------------------------------------------------------------------
# TestApp


def test_next_publishes_testing_idle_then_result():
    sim, clock, rec = loaded(sites=("0", "1", "2"), test_time=0.5, ptr_count=3)
    sim.handle(next_cmd(("0", "2"), {"0": "P100", "2": "P102"}))
    assert rec.summary(rec.take()) == [("TestApp/status/site0", "testing"),
                                       ("TestApp/status/site2", "testing")]
    clock.advance(0.4)
    assert rec.out == []
    clock.advance(0.1)
    outs = rec.take()
    assert rec.summary(outs) == [
        ("TestApp/status/site0", "idle"), ("TestApp/testresult/site0", "testresult"),
        ("TestApp/status/site2", "idle"), ("TestApp/testresult/site2", "testresult")]
    result = outs[3].payload["payload"]
    assert [r["type"] for r in result] == ["PIR", "PTR", "PTR", "PTR", "PRR"]
    prr = result[-1]
    assert prr["PART_ID"] == "P102" and prr["SITE_NUM"] == 2 and prr["NUM_TEST"] == 3
    assert prr["TEST_T"] == 500
    assert prr["PART_FLG"] == (0 if 1 <= prr["SOFT_BIN"] <= 9 else 8)
    assert all(r["SITE_NUM"] == 2 for r in result)
    assert outs[1].qos == 2
    assert sim.site["1"].testapp_state == "idle"
    assert sim.truth.part_count == 2
    assert sim.truth.by_site == {"0": 1, "2": 1}
    assert [p.part_id for p in sim.truth.parts] == ["P100", "P102"]


def test_status_payload_shape():
    sim, clock, rec = loaded(sites=("0",))
    sim.handle(next_cmd(("0",)))
    out = rec.take()[0]
    assert out.payload == {"type": "status", "framework_version": 1, "test_version": "N/A",
                           "payload": {"state": "testing", "message": ""}, "state": "testing"}


def test_next_while_testing_goes_error():
    sim, clock, rec = loaded(sites=("0",), test_time=1.0)
    sim.handle(next_cmd(("0",)))
    sim.handle(next_cmd(("0",)))
    assert rec.summary(rec.take()) == [("TestApp/status/site0", "testing"),
                                       ("TestApp/status/site0", "error")]


def test_bins_follow_weights_and_bin_table_and_are_deterministic():
    bins = (SimBin(1, 1, 1.0), SimBin(12, 99, 1.0), SimBin(20, 6, 0.0))

    def run(seed):
        sim, clock, rec = loaded(sites=("0", "1"), bins=bins, seed=seed)
        for i in range(200):
            sim.handle(next_cmd(("0", "1"), {"0": f"A{i}", "1": f"B{i}"}))
            clock.advance(0)
        return sim

    a, b = run(7), run(7)
    assert [p.soft_bin for p in a.truth.parts] == [p.soft_bin for p in b.truth.parts]
    assert a.truth.by_soft_bin[20] == 0
    assert 140 < a.truth.by_soft_bin[1] < 260 and a.truth.by_soft_bin[12] > 140
    # the bin table maps soft bin 12 to hard bin 5 (not the configured 99)
    assert a.truth.by_hard_bin[99] == 0
    assert a.truth.by_hard_bin[5] == a.truth.by_soft_bin[12]
    assert sum(a.truth.by_site_soft_bin.values()) == 400
    assert a.truth.passed["0"] + a.truth.passed["1"] == a.truth.by_soft_bin[1]
    c = run(8)
    assert [p.soft_bin for p in c.truth.parts] != [p.soft_bin for p in a.truth.parts]


def test_sethbin_remaps_hard_bin():
    sim, clock, rec = loaded(sites=("0",), bins=(SimBin(12, 5, 1.0),), test_time=0)
    sim.handle(TestAppCommand("sethbin", ("0",), {"sbin": "12", "hbin": "7"}))
    sim.handle(TestAppCommand("sethbin", ("0",), {"sbin": "x", "hbin": "7"}))  # ignored
    sim.handle(next_cmd(("0",)))
    clock.advance(0)
    prr = rec.take()[-1].payload["payload"][-1]
    assert (prr["SOFT_BIN"], prr["HARD_BIN"], prr["PART_FLG"]) == (12, 7, 8)
    assert sim.truth.by_hard_bin == {7: 1}


def test_terminate_summary_then_terminated_then_control_idle():
    sim, clock, rec = loaded(sites=("0", "1"), ptr_count=2, bins=(SimBin(12, 5, 1.0),))
    for i in range(3):
        sim.handle(next_cmd(("0",), {"0": f"P{i}"}))
        clock.advance(0)
    rec.take()
    sim.handle(TestAppCommand("terminate", ("0", "1")))
    outs = rec.take()
    assert rec.summary(outs) == [
        ("TestApp/testsummary/site0", "testresult"), ("TestApp/status/site0", "terminated"),
        ("TestApp/testsummary/site1", "testresult"), ("TestApp/status/site1", "terminated")]
    tsrs = outs[0].payload["payload"]
    assert [t["TEST_NUM"] for t in tsrs] == [1000, 1001]
    assert [t["EXEC_CNT"] for t in tsrs] == [3, 3]
    # every part failed (soft bin 12): exactly one failing PTR per part
    assert sum(t["FAIL_CNT"] for t in tsrs) == 3
    assert all(t["type"] == "TSR" and t["SITE_NUM"] == 0 for t in tsrs)
    assert [t["EXEC_CNT"] for t in outs[2].payload["payload"]] == [0, 0]
    clock.advance(0)
    assert rec.summary(rec.take()) == [("Control/status/site0", "idle"),
                                       ("Control/status/site1", "idle")]


def test_testapp_reset_terminates_without_summary():
    sim, clock, rec = loaded(sites=("0",))
    sim.handle(TestAppCommand("reset", ("0",)))
    clock.advance(0)
    assert rec.summary(rec.take()) == [("TestApp/status/site0", "terminated"),
                                       ("Control/status/site0", "idle")]


def test_execution_strategy_covers_all_sites_per_test():
    sim, clock, rec = loaded(ptr_count=3)
    sim.handle(TestAppCommand("getexecutionstrategy", SITES,
                              {"layout": [[0, 0], [1, 0], [0, 1], [1, 1]]}))
    outs = rec.take()
    assert [o.topic for o in outs] == [f"ate/{D}/TestApp/execution_strategy/site{s}"
                                       for s in SITES]
    assert outs[0].payload == {"type": "execution_strategy",
                               "payload": [[list(SITES)]] * 3}


def test_execution_strategy_answer_can_come_late():
    # as real TestApps do: about 50 ms after the request
    sim, clock, rec = loaded(ptr_count=1, strategy_delay=0.05)
    sim.handle(TestAppCommand("getexecutionstrategy", SITES, {"layout": []}))
    assert rec.take() == []
    clock.advance(0.049)
    assert rec.take() == []
    clock.advance(0.001)
    assert len(rec.take()) == len(SITES)


def test_sim_config_strategy_delay_default_and_check():
    base = {"device_id": D, "sites": list(SITES)}
    assert sim_config_from_dict(base, source="t").strategy_delay == 0.05
    assert sim_config_from_dict({**base, "strategy_delay": 0}, source="t").strategy_delay == 0
    with pytest.raises(ConfigError, match="strategy_delay: must not be negative"):
        sim_config_from_dict({**base, "strategy_delay": -1}, source="t")


def test_setloglevel_and_logs():
    sim, clock, rec = make(sites=("0",), publish_logs=True)
    sim.handle(ControlCommand("setloglevel", ("0",), {"level": 10}))
    sim.handle(ControlCommand("setloglevel", ("0",), {"level": 11}))  # refused
    assert sim.site["0"].control_loglevel == 10
    sim.handle(load_cmd(("0",)))
    outs = rec.take()
    logs = [o for o in outs if o.kind == "log"]
    assert logs and logs[0].qos == 0
    line = logs[0].payload["payload"]
    parts = line.split("|")
    assert parts[0] == "control 0" and parts[2] == "INFO    "
    assert parts[3] == "control state is: loading"
    sim.handle(ControlCommand("setloglevel", ("0",), {"level": 30}))
    sim.handle(ControlCommand("reset", ("0",)))
    assert [o.kind for o in rec.take()] == ["status"]



@pytest.mark.parametrize("level", [[], {}, [10], "20", 20.5, None, True])
@pytest.mark.parametrize("sub", ["Control/cmd", "TestApp/cmd"])
def test_setloglevel_with_a_level_that_is_no_level_is_refused_with_a_warning(sub, level):
    """A JSON list or object as the level used to raise TypeError (unhashable) out of the
    message callback; now every non-level is refused and logged, nothing changes."""
    from twisted.logger import LogLevel, capturedLogs

    sim, clock, rec = loaded(sites=("0",))
    with capturedLogs() as logged:
        sim.received(*raw(sub, {"type": "cmd", "command": "setloglevel", "sites": ["0"],
                                "level": level}))
    site = sim.site["0"]
    assert (site.control_loglevel, site.testapp_loglevel) == (20, 20)
    assert [e["log_format"] for e in logged if e["log_level"] >= LogLevel.warn] == [
        f"site {{site}}: {'control' if sub == 'Control/cmd' else 'testapp'} setloglevel: "
        "bad level {value!r}"]
    assert rec.take() == []

# ---------------------------------------------------------------------------------------
# Faults


def test_crash_on_part_publishes_will_and_stops_answering():
    sim, clock, rec = loaded(sites=("0", "1"), faults=SimFaults(crash_on_part=2,
                                                                   fault_site="1"))
    for _ in range(2):
        sim.handle(next_cmd(("0", "1")))
        clock.advance(0)
    outs = rec.take()
    will = [o for o in outs if o.topic.endswith("TestApp/status/site1")][-1]
    assert will.payload == {"type": "status", "framework_version": 1, "test_version": "N/A",
                            "payload": {"state": 0}, "state": "crash"}
    assert not any(o.topic.endswith("testresult/site1") for o in outs[-4:])
    assert sim.truth.crashes == 1 and sim.truth.by_site == {"0": 2, "1": 1}
    # the Control app notices the TestApp's exit
    assert sim.site["1"].control_state == "error"
    # a crashed TestApp answers nothing
    sim.handle(next_cmd(("1",)))
    sim.handle(TestAppCommand("terminate", ("1",)))
    clock.advance(1)
    assert rec.out == []
    # reset brings it back; the fault fires only once
    sim.handle(ControlCommand("reset", ("0", "1")))
    clock.advance(0)
    sim.handle(load_cmd(("0", "1")))
    clock.advance(0)
    for _ in range(3):
        sim.handle(next_cmd(("0", "1")))
        clock.advance(0)
    assert sim.truth.by_site == {"0": 5, "1": 4}


def test_drop_result():
    sim, clock, rec = loaded(sites=("0",), faults=SimFaults(drop_result_on_part=1))
    sim.handle(next_cmd(("0",)))
    clock.advance(0)
    assert rec.summary(rec.take()) == [("TestApp/status/site0", "testing"),
                                       ("TestApp/status/site0", "idle")]
    assert sim.truth.dropped == 1 and sim.truth.part_count == 0
    sim.handle(next_cmd(("0",)))
    clock.advance(0)
    assert rec.summary(rec.take())[-1] == ("TestApp/testresult/site0", "testresult")


def test_wrong_site():
    sim, clock, rec = loaded(sites=("0", "1", "2"),
                             faults=SimFaults(wrong_site_on_part=1, fault_site="2"))
    sim.handle(next_cmd(("2",)))
    clock.advance(0)
    outs = rec.take()
    assert outs[-1].topic == f"ate/{D}/TestApp/testresult/site0"  # wraps to the first site
    assert outs[-1].payload["payload"][-1]["SITE_NUM"] == 2
    assert sim.truth.parts[0].site == "0" and sim.truth.parts[0].origin_site == "2"
    assert sim.truth.faults == [("wrong_site", "2", 1)]


def test_duplicate_result():
    sim, clock, rec = loaded(sites=("0",), faults=SimFaults(duplicate_result_on_part=1))
    sim.handle(next_cmd(("0",)))
    clock.advance(0)
    outs = rec.take()
    assert rec.summary(outs)[-2:] == [("TestApp/testresult/site0", "testresult")] * 2
    assert outs[-1].payload == outs[-2].payload
    assert sim.truth.part_count == 1 and sim.truth.messages == 2


def test_slow_load_only_on_fault_site():
    sim, clock, rec = make(sites=("0", "1"), load_time=1.0,
                           faults=SimFaults(slow_load=4.0, fault_site="1"))
    sim.handle(load_cmd(("0", "1")))
    clock.advance(1.0)
    assert sim.site["0"].control_state == "busy" and sim.site["1"].control_state == "loading"
    clock.advance(4.0)
    assert sim.site["1"].control_state == "busy"


@pytest.mark.parametrize("kw,needle", [
    ({"sites": ()}, "no site ids"),
    ({"sites": ("0", "0")}, "duplicate"),
    ({"bins": ()}, "no bins"),
    ({"bins": (SimBin(1, 1, 0.0),)}, "weights"),
    ({"ptr_count": -1}, "ptr_count"),
    ({"faults": SimFaults(fault_site="9")}, "fault_site '9'"),
])
def test_bad_construction(kw, needle):
    kw.setdefault("sites", SITES)
    with pytest.raises(ValueError) as e:
        SimSites(D, kw.pop("sites"), Clock(), lambda o: None, **kw)
    assert needle in str(e.value)


def test_send_failure_is_contained(no_logged_errors):
    def boom(out):
        raise RuntimeError("broker gone")
    sim = SimSites(D, ("0",), Clock(), boom)
    sim.connected()  # must not raise
    assert no_logged_errors and all(e.get("log_failure") is not None for e in no_logged_errors)
    no_logged_errors.clear()  # logged as a failure, on purpose


# ---------------------------------------------------------------------------------------
# Service wiring (fake MQTT)


class FakeMqtt(Service):
    """Records the MqttService arguments and publications."""

    def __init__(self, reactor, options, client_id, **kw):
        self.args = (reactor, options, client_id)
        self.kw = kw
        self.published = []

    def publish(self, topic, payload, qos=2):
        self.published.append((topic, payload, qos))
        return succeed(None)


def test_service_wiring():
    from ate.config import sim_config_from_dict

    cfg = sim_config_from_dict({"device_id": D, "sites": ["0", "1"], "broker_host": "127.0.0.1",
                                "broker_port": 1883})
    clock = Clock()
    svc = SimSitesService(clock, cfg, mqtt_factory=FakeMqtt)
    mqtt = svc.mqtt
    _reactor, _opts, client_id = mqtt.args
    assert client_id.startswith(f"simsites.{D}.")
    assert sorted(mqtt.kw["subscriptions"]) == sorted([
        (f"ate/{D}/Control/cmd", 0), (f"ate/{D}/TestApp/cmd", 2), (f"ate/{D}/Master/status", 0)])
    topic, payload, qos = mqtt.kw["will"]
    assert topic == f"ate/{D}/Control/status/site0" and qos == 2
    assert json.loads(payload)["payload"]["state"] == "crash"
    svc.startService()
    mqtt.kw["on_connected"]()
    mqtt.kw["on_message"](*raw("Control/cmd", {"type": "cmd", "command": "loadTest",
                                               "sites": ["0", "1"],
                                               "testapp_params": {"testapp_script_path": "x.py"}}))
    clock.advance(cfg.load_time)
    states = [(t, json.loads(p)["payload"]["state"], q) for t, p, q in mqtt.published]
    assert states[:4] == [(f"ate/{D}/Control/status/site0", "idle", 2),
                          (f"ate/{D}/Control/status/site1", "idle", 2),
                          (f"ate/{D}/Control/status/site0", "loading", 2),
                          (f"ate/{D}/Control/status/site1", "loading", 2)]
    assert (f"ate/{D}/TestApp/status/site1", "idle", 2) in states
    svc.stopService()


def test_service_per_site_clients():
    from ate.config import sim_config_from_dict

    cfg = sim_config_from_dict({"device_id": D, "sites": ["0", "1"], "broker_host": "127.0.0.1",
                                "broker_port": 1883})
    clock = Clock()
    svc = SimSitesService(clock, cfg, mqtt_factory=FakeMqtt, per_site_clients=True)
    ids = sorted(c.args[2] for c in svc.clients.values())
    assert ids == [f"controlapp.{D}.0", f"controlapp.{D}.1", f"testapp.{D}.0", f"testapp.{D}.1"]
    c1, t1 = svc.clients[("Control", "1")], svc.clients[("TestApp", "1")]
    assert json.loads(c1.kw["will"][1])["payload"]["state"] == "crash"
    assert c1.kw["will"][0] == f"ate/{D}/Control/status/site1"
    assert json.loads(t1.kw["will"][1]) == {"type": "status", "framework_version": 1,
                                            "test_version": "N/A", "payload": {"state": 0},
                                            "state": "crash"}
    assert t1.kw["subscriptions"] == [(f"ate/{D}/TestApp/cmd", 2)]
    # the Semi-ATE Control app subscribes with paho's default QoS 0
    assert c1.kw["subscriptions"] == [(f"ate/{D}/Control/cmd", 0), (f"ate/{D}/Master/status", 0)]
    svc.startService()
    c1.kw["on_connected"]()
    assert [t for t, _p, _q in c1.published] == [f"ate/{D}/Control/status/site1"]
    # every Control client receives the broadcast command but acts for its own site only
    load = raw("Control/cmd", {"type": "cmd", "command": "loadTest", "sites": ["0", "1"],
                               "testapp_params": {"testapp_script_path": "x.py"}})
    svc.clients[("Control", "0")].kw["on_message"](*load)
    c1.kw["on_message"](*load)
    clock.advance(0)
    assert [t for t, _p, _q in t1.published] == [f"ate/{D}/TestApp/status/site1"]
    assert svc.sites.site["1"].control_state == "busy"
    t1.kw["on_message"](*raw("TestApp/cmd", {"type": "cmd", "command": "next", "sites": ["1"]}))
    clock.advance(0)
    assert [t.split("/", 2)[2] for t, _p, _q in t1.published[1:]] == [
        "TestApp/status/site1", "TestApp/status/site1", "TestApp/testresult/site1"]
    t0 = svc.clients[("TestApp", "0")]
    assert [t for t, _p, _q in t0.published] == [f"ate/{D}/TestApp/status/site0"]
    svc.stopService()


# ---------------------------------------------------------------------------------------
# twistd plugin options


def _write_config(tmp_path, **extra):
    cfg = {"device_id": D, "sites": ["0", "1"], "broker_host": "127.0.0.1",
           "broker_port": 1883, **extra}
    path = tmp_path / "sim.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_tap_options_overrides(tmp_path):
    from ate.sim.tap import Options

    opts = Options()
    opts.parseOptions(["--config", _write_config(tmp_path), "--broker", "localhost:2883",
                       "--device-id", "DEV-2", "--sites", "0,1,2"])
    cfg = opts["sim_config"]
    assert (cfg.broker.host, cfg.broker.port) == ("localhost", 2883)
    assert cfg.device_id == "DEV-2" and cfg.sites == ("0", "1", "2")


@pytest.mark.parametrize("argv,needle", [
    ([], "--config FILE is required"),
    (["--broker", "nohost"], "expected HOST:PORT"),
    (["--broker", "h:x"], "is not a number"),
    (["--broker", "h:70000"], "out of range"),
])
def test_tap_options_errors(tmp_path, argv, needle):
    from twisted.python.usage import UsageError

    from ate.sim.tap import Options

    if argv:
        argv = ["--config", _write_config(tmp_path)] + argv
    with pytest.raises(UsageError) as e:
        Options().parseOptions(argv)
    assert needle in str(e.value)


@pytest.mark.parametrize("argv,needle", [
    (["--sites", "0,0"], ": sites: "),
    (["--device-id", "a/b"], ": device_id: "),
])
def test_tap_config_errors_are_one_line_exit_2(tmp_path, capsys, argv, needle):
    from ate.sim.tap import Options

    with pytest.raises(SystemExit) as e:
        Options().parseOptions(["--config", _write_config(tmp_path)] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ate-sim-sites: ") and err.count("\n") == 1 and needle in err


def test_tap_missing_config_file_names_it(tmp_path, capsys):
    from ate.sim.tap import Options

    missing = str(tmp_path / "nope.json")
    with pytest.raises(SystemExit) as e:
        Options().parseOptions(["--config", missing])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nope.json" in err and err.count("\n") == 1
