"""The simulated sites' per-part faults (``drift``, ``bin_storm``): what the sites send with
a Clock and a recording send, the config keys, the ``--fault KIND:...`` specs and their
options in ``twistd ate-sim-sites`` and ``twistd ate-demo``."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from twisted.internet.task import Clock
from twisted.python.usage import UsageError

from ate.checks import check_sim
from ate.config import ConfigError, SimBin, SimFaults, load_sim_config, sim_config_from_dict
from ate.config.sim import FaultSpecError, SimBinStorm, SimDrift, parse_fault_spec
from ate.sim.sites import ControlCommand, SimSites, TestAppCommand

D = "SCT-81-1F"
SITES = ("0", "1", "2", "3")
BIN_TABLE = {"1": ["1"], "2": ["2"], "5": ["12", "13"], "6": ["20", "21"], "0": ["60000"]}
FAIL_BINS = {(12, 5), (13, 5), (20, 6), (21, 6)}
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def start(faults=None, sites=SITES, bin_table=BIN_TABLE, **kw):
    clock = Clock()
    out: list = []
    sim = SimSites(D, sites, clock, out.append, ptr_count=2, strategy_delay=0.0,
                   faults=faults, **kw)
    load(sim, clock, bin_table)
    return sim, clock, out


def load(sim, clock, bin_table=BIN_TABLE):
    params = {"testapp_script_path": "p.py", "bin_table": bin_table}
    sim.handle(ControlCommand("loadTest", sim.sites, {"testapp_params": params}))
    clock.advance(1)
    assert all(s.control_state == "busy" for s in sim.site.values())


def run_parts(sim, clock, count, first=0):
    for i in range(first, first + count):
        infos = [{"siteid": s, "partid": f"{s}-{i}"} for s in sim.sites]
        sim.handle(TestAppCommand("next", sim.sites, {"job_data": {"sites_info": infos}}))
        clock.advance(0)


def of_site(sim, site):
    return [p for p in sim.truth.parts if p.origin_site == site]


# ---------------------------------------------------------------------------------------
# drift


def test_drift_lowers_the_yield_of_its_site_only_from_part_after_plus_one():
    sim, clock, _ = start(SimFaults(drift=(SimDrift("2", 300, 50.0),)))
    normal, nclock, _ = start()
    run_parts(sim, clock, 600)
    run_parts(normal, nclock, 600)
    # every other site, and site 2 up to its part 300, send what they send without fault
    for site in ("0", "1", "3"):
        assert of_site(sim, site) == of_site(normal, site)
    drifted = of_site(sim, "2")
    assert drifted[:300] == of_site(normal, "2")[:300]
    assert sum(p.passed for p in drifted[:300]) == 258          # the normal mix, 86 %
    # from part 301 on: 50 % (141 of 300 with seed 1); without drift 257 of them pass
    assert sum(p.passed for p in drifted[300:]) == 141
    assert sum(p.passed for p in of_site(normal, "2")[300:]) == 257
    # the failing parts get the failing bins of the mix, hard bins from the job's table
    bins = Counter((p.soft_bin, p.hard_bin) for p in drifted[300:] if not p.passed)
    assert set(bins) == FAIL_BINS and sum(bins.values()) == 159
    assert all((p.soft_bin, p.hard_bin) in {(1, 1), (2, 2)} for p in drifted[300:] if p.passed)
    # the truth names every drifted part, and only those
    assert sim.truth.faults == [("drift", "2", n) for n in range(301, 601)]


@pytest.mark.parametrize("percent,passing", [(0.0, 0), (100.0, 20)])
def test_drift_yield_zero_and_hundred(percent, passing):
    sim, clock, _ = start(SimFaults(drift=(SimDrift("1", 0, percent),)), sites=("0", "1"))
    run_parts(sim, clock, 20)
    assert sum(p.passed for p in of_site(sim, "1")) == passing
    assert len(of_site(sim, "1")) == 20


def test_drift_counts_the_site_lifetime_over_loads():
    sim, clock, _ = start(SimFaults(drift=(SimDrift("0", 3, 0.0),)), sites=("0",))
    run_parts(sim, clock, 2)
    sim.handle(TestAppCommand("terminate", ("0",)))
    clock.advance(1)
    load(sim, clock)
    run_parts(sim, clock, 3, first=2)
    assert [p.number for p in sim.truth.parts] == [1, 2, 3, 4, 5]
    assert sim.truth.faults == [("drift", "0", 4), ("drift", "0", 5)]
    assert not any(p.passed for p in sim.truth.parts[3:])


def test_drift_results_are_deterministic_for_the_seed():
    faults = SimFaults(drift=(SimDrift("1", 10, 30.0),))
    runs = []
    for seed in (5, 5, 6):
        sim, clock, _ = start(faults, sites=("0", "1"), seed=seed)
        run_parts(sim, clock, 100)
        runs.append([(p.soft_bin, p.passed) for p in of_site(sim, "1")])
    assert runs[0] == runs[1] and runs[0] != runs[2]


# ---------------------------------------------------------------------------------------
# bin storm


def test_bin_storm_gives_exactly_its_soft_bin_after_part_k():
    sim, clock, out = start(SimFaults(bin_storm=(SimBinStorm("1", 200, 21),)))
    normal, nclock, _ = start()
    run_parts(sim, clock, 260)
    run_parts(normal, nclock, 260)
    stormed = of_site(sim, "1")
    assert stormed[:200] == of_site(normal, "1")[:200]
    assert {(p.soft_bin, p.hard_bin, p.passed) for p in stormed[200:]} == {(21, 6, False)}
    assert len(stormed) == 260
    for site in ("0", "2", "3"):
        assert of_site(sim, site) == of_site(normal, site)
    assert sim.truth.faults == [("bin_storm", "1", n) for n in range(201, 261)]
    # the wire says so too: the PRR of site 1's last result
    last = [o for o in out if o.topic.endswith("testresult/site1")][-1]
    prr = last.payload["payload"][-1]
    assert (prr["SOFT_BIN"], prr["HARD_BIN"], prr["PART_FLG"]) == (21, 6, 8)


def test_bin_storm_with_a_soft_bin_the_job_lacks_sends_it_as_it_is():
    sim, clock, _ = start(SimFaults(bin_storm=(SimBinStorm("0", 0, 77),)), sites=("0",))
    run_parts(sim, clock, 3)
    assert [(p.soft_bin, p.hard_bin) for p in sim.truth.parts] == [(77, 0)] * 3


def test_bin_storm_follows_sethbin_and_wins_over_a_drift_of_its_site():
    faults = SimFaults(drift=(SimDrift("0", 0, 100.0),),
                       bin_storm=(SimBinStorm("0", 2, 13),))
    sim, clock, _ = start(faults, sites=("0",))
    sim.handle(TestAppCommand("sethbin", ("0",), {"sbin": "13", "hbin": "9"}))
    run_parts(sim, clock, 4)
    assert [(p.soft_bin, p.hard_bin) for p in sim.truth.parts[2:]] == [(13, 9)] * 2
    assert all(p.passed for p in sim.truth.parts[:2])
    assert sim.truth.faults == [("drift", "0", 1), ("drift", "0", 2),
                                ("bin_storm", "0", 3), ("bin_storm", "0", 4)]


@pytest.mark.parametrize("faults,needle", [
    (SimFaults(drift=(SimDrift("9", 1, 50.0),)), "drift site '9' is not one of"),
    (SimFaults(bin_storm=(SimBinStorm("9", 1, 12),)), "bin_storm site '9'"),
    (SimFaults(drift=(SimDrift("0", 1, 5.0), SimDrift("0", 2, 6.0))), "two drift faults"),
    (SimFaults(drift=(SimDrift("0", 1, 101.0),)), "not a percentage"),
])
def test_bad_faults_at_construction(faults, needle):
    with pytest.raises(ValueError, match=needle):
        SimSites(D, ("0", "1"), Clock(), lambda o: None, faults=faults)


def test_drift_needs_failing_and_passing_bins_of_weight():
    only_pass = (SimBin(1, 1, 1.0), SimBin(12, 5, 0.0))
    with pytest.raises(ValueError, match="needs passing"):
        SimSites(D, ("0",), Clock(), lambda o: None, bins=only_pass,
                 faults=SimFaults(drift=(SimDrift("0", 1, 50.0),)))
    # yield 100 needs no failing bin
    SimSites(D, ("0",), Clock(), lambda o: None, bins=only_pass,
             faults=SimFaults(drift=(SimDrift("0", 1, 100.0),)))


# ---------------------------------------------------------------------------------------
# config


def sim_data(**faults):
    return {"device_id": D, "sites": list(SITES), "faults": faults}


def test_config_keys_and_defaults():
    cfg = sim_config_from_dict(sim_data(
        drift={"site": "2", "after": 300, "yield": 50},
        bin_storm=[{"site": "1", "after": 200, "sbin": 12}, {"sbin": 13}]))
    assert cfg.faults.drift == (SimDrift("2", 300, 50.0),)
    # site defaults to fault_site (the first site), after to 0
    assert cfg.faults.bin_storm == (SimBinStorm("1", 200, 12), SimBinStorm("0", 0, 13))
    assert sim_config_from_dict(sim_data()).faults == SimFaults(fault_site="0")
    cfg = sim_config_from_dict(sim_data(fault_site="3", drift={"yield": 12.5}))
    assert cfg.faults.drift == (SimDrift("3", 0, 12.5),)


def test_check_names_the_faults():
    cfg = sim_config_from_dict(sim_data(crash_on_part=5, drift={"site": "2", "yield": 50},
                                        bin_storm={"site": "1", "after": 200, "sbin": 12}))
    line = dict(check_sim(cfg).items)["faults"]
    assert line == ("crash_on_part=5 on site 0; drift:site=2,after=0,yield=50; "
                    "bin_storm:site=1,after=200,sbin=12")
    assert dict(check_sim(sim_config_from_dict(sim_data())).items)["faults"] == "none"


@pytest.mark.parametrize("faults,key,fragment", [
    ({"drift": "x"}, "faults.drift", "or a list of them"),
    ({"drift": [1]}, "faults.drift[0]", "object"),
    ({"drift": {"site": "2"}}, "faults.drift.yield", "missing required key"),
    ({"drift": {"yield": 101}}, "faults.drift.yield", "percentage 0..100"),
    ({"drift": {"yield": -1}}, "faults.drift.yield", "negative"),
    ({"drift": {"yield": "50"}}, "faults.drift.yield", "number"),
    ({"drift": {"yield": 5, "after": -1}}, "faults.drift.after", "at least 0"),
    ({"drift": {"yield": 5, "after": 1.5}}, "faults.drift.after", "integer"),
    ({"drift": {"yield": 5, "site": 2}}, "faults.drift.site", "strings"),
    ({"drift": {"yield": 5, "site": "9"}}, "faults.drift.site", "not in sites"),
    ({"drift": {"yield": 5, "rate": 1}}, "faults.drift.rate", "unknown name"),
    ({"drift": [{"yield": 5}, {"yield": 6, "site": "0"}]}, "faults.drift[1].site",
     "has a drift fault already"),
    ({"bin_storm": {"site": "1"}}, "faults.bin_storm.sbin", "missing required key"),
    ({"bin_storm": {"sbin": 65536}}, "faults.bin_storm.sbin", "between 0 and 65535"),
    ({"bin_storm": {"sbin": True}}, "faults.bin_storm.sbin", "integer"),
    ({"bin_storm": {"sbin": 1, "yield": 3}}, "faults.bin_storm.yield", "unknown name"),
])
def test_config_errors_name_the_key(faults, key, fragment):
    with pytest.raises(ConfigError) as e:
        sim_config_from_dict(sim_data(**faults), source="sim.toml")
    assert e.value.file == "sim.toml" and e.value.key == key and fragment in e.value.problem


def test_config_drift_needs_a_failing_bin():
    data = dict(sim_data(drift={"yield": 50}), bins=[{"sbin": 1, "hbin": 1, "weight": 1}])
    with pytest.raises(ConfigError, match=r"faults\.drift\.yield: yield 50 needs a failing"):
        sim_config_from_dict(data)


def test_the_commented_examples_of_etc_sim_sites_load(tmp_path):
    with open(os.path.join(ROOT, "etc", "sim-sites.toml")) as f:
        text = f.read()
    lines = [line[2:] if line.startswith(("# drift =", "# bin_storm =")) else line
             for line in text.splitlines()]
    path = tmp_path / "sim.toml"
    path.write_text("\n".join(lines) + "\n")
    cfg = load_sim_config(path)
    assert cfg.faults.drift == (SimDrift("2", 300, 50.0),)
    assert cfg.faults.bin_storm == (SimBinStorm("1", 200, 12),)
    assert cfg.warnings == ()


# ---------------------------------------------------------------------------------------
# --fault specs


@pytest.mark.parametrize("spec,expected", [
    ("drift:site=2,after=300,yield=50", ("drift", {"site": "2", "after": 300, "yield": 50})),
    ("bin_storm:site=1,after=200,sbin=12",
     ("bin_storm", {"site": "1", "after": 200, "sbin": 12})),
    ("bin-storm: sbin = 12 ,", ("bin_storm", {"sbin": 12})),
    ("drift:yield=2.5", ("drift", {"yield": 2.5})),
    ("drift:", ("drift", {})),
])
def test_parse_fault_spec(spec, expected):
    assert parse_fault_spec(spec) == expected


@pytest.mark.parametrize("spec,key,fragment", [
    ("drift", "-", "expected KIND:NAME=VALUE"),
    ("storm:site=1", "kind", "unknown fault kind 'storm'"),
    ("drift:yield", "drift.yield", "expected NAME=VALUE"),
    ("drift:=3", "drift.=3", "expected NAME=VALUE"),
    ("drift:yield=1,yield=2", "drift.yield", "given twice"),
])
def test_parse_fault_spec_errors(spec, key, fragment):
    with pytest.raises(FaultSpecError) as e:
        parse_fault_spec(spec)
    assert e.value.file == f"--fault {spec}" and e.value.key == key
    assert fragment in e.value.problem


def test_specs_replace_the_file_faults_of_their_kind():
    data = sim_data(drift={"site": "2", "yield": 50}, bin_storm={"site": "1", "sbin": 12})
    cfg = sim_config_from_dict(data, fault_specs=["drift:site=3,after=7,yield=10",
                                                  "drift:site=0,yield=20"])
    assert cfg.faults.drift == (SimDrift("3", 7, 10.0), SimDrift("0", 0, 20.0))
    assert cfg.faults.bin_storm == (SimBinStorm("1", 0, 12),)


@pytest.mark.parametrize("spec,key,fragment", [
    ("drift:site=9,yield=50", "drift.site", "not in sites"),
    ("drift:yield=x", "drift.yield", "must be a number, got string \"x\""),
    ("drift:yield=150", "drift.yield", "percentage"),
    ("drift:after=2", "drift.yield", "missing required key"),
    ("drift:yield=5,speed=2", "drift.speed", "unknown name; allowed: site, after, yield"),
    ("bin_storm:sbin=-1", "bin_storm.sbin", "between 0 and 65535"),
    ("bin_storm:sbin=12,after=1.5", "bin_storm.after", "integer"),
])
def test_spec_errors_name_the_spec_and_the_name(spec, key, fragment):
    with pytest.raises(FaultSpecError) as e:
        sim_config_from_dict(sim_data(), fault_specs=[spec])
    assert e.value.file == f"--fault {spec}" and e.value.key == key
    assert fragment in e.value.problem


def test_two_specs_of_a_kind_for_one_site_are_refused():
    with pytest.raises(FaultSpecError) as e:
        sim_config_from_dict(sim_data(), fault_specs=["drift:site=1,yield=5",
                                                      "drift:site=1,yield=6"])
    assert str(e.value) == ('--fault drift:site=1,yield=6: drift.site: site "1" has a drift '
                            'fault already')


# ---------------------------------------------------------------------------------------
# twistd ate-sim-sites --fault


def sim_sites_options(tmp_path, *argv):
    from ate.sim.tap import Options

    path = tmp_path / "sim.json"
    path.write_text(json.dumps({"device_id": D, "sites": ["0", "1", "2"],
                                "faults": {"bin_storm": {"site": "0", "sbin": 20}}}))
    opts = Options()
    opts.parseOptions(["--config", str(path), *argv])
    return opts


def test_sim_sites_fault_option(tmp_path):
    opts = sim_sites_options(tmp_path, "--fault", "drift:site=2,after=300,yield=50",
                             "--fault", "drift:site=1,yield=40")
    faults = opts["sim_config"].faults
    assert faults.drift == (SimDrift("2", 300, 50.0), SimDrift("1", 0, 40.0))
    assert faults.bin_storm == (SimBinStorm("0", 0, 20),)     # from the file
    opts = sim_sites_options(tmp_path, "--fault", "bin_storm:site=1,after=200,sbin=12")
    assert opts["sim_config"].faults.bin_storm == (SimBinStorm("1", 200, 12),)
    assert sim_sites_options(tmp_path)["fault_specs"] == []


@pytest.mark.parametrize("spec,needle", [
    ("drift", "--fault drift: -: expected KIND:NAME=VALUE"),
    ("explode:site=1", "unknown fault kind 'explode'"),
    ("drift:site=3,yield=50", "--fault drift:site=3,yield=50: drift.site: site \"3\" is not in"),
    ("bin_storm:sbin=big", "bin_storm.sbin: must be an integer"),
])
def test_sim_sites_bad_fault_is_a_usage_error(tmp_path, spec, needle):
    with pytest.raises(UsageError) as e:
        sim_sites_options(tmp_path, "--fault", spec)
    assert needle in str(e.value)


# ---------------------------------------------------------------------------------------
# twistd ate-demo --fault


def demo_options(*argv):
    from ate.demo import Options

    opts = Options()
    opts.parseOptions(list(argv))
    return opts


def test_demo_fault_option():
    from ate.demo import sim_config

    opts = demo_options("--fault", "drift:site=2,after=300,yield=50",
                        "--fault", "crash_on_part=9,fault_site=3",
                        "--fault", "bin_storm:site=1,after=200,sbin=12")
    assert opts["faults"] == {"crash_on_part": 9, "fault_site": "3"}
    faults = sim_config(opts, 1883).faults
    assert (faults.crash_on_part, faults.fault_site) == (9, "3")
    assert faults.drift == (SimDrift("2", 300, 50.0),)
    assert faults.bin_storm == (SimBinStorm("1", 200, 12),)
    # with --healthy: none; without --fault the demo's own drift of its last site
    assert sim_config(demo_options("--healthy"), 1883).faults == SimFaults(fault_site="0")
    assert sim_config(demo_options(), 1883).faults.drift == (SimDrift("3", 50, 40.0),)


@pytest.mark.parametrize("argv,needle", [
    (["--fault", "drift:yield"], "--fault drift:yield: drift.yield: expected NAME=VALUE"),
    (["--fault", "drift:site=4,yield=5"], "drift.site: site \"4\" is not in sites"),
    (["--sites", "8", "--fault", "drift:site=8,yield=5"], "site \"8\" is not in sites"),
    (["--fault", "storm:sbin=3"], "unknown fault kind 'storm'"),
    (["--fault", "bin_storm:sbin=70000"], "bin_storm.sbin: must be between 0 and 65535"),
    (["--fault", "explode=3"], "or KIND:NAME=VALUE,... with KIND one of drift, bin_storm"),
])
def test_demo_bad_fault_is_a_usage_error(argv, needle):
    with pytest.raises(UsageError) as e:
        demo_options(*argv)
    assert needle in str(e.value)
