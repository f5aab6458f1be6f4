"""255 sites, the most one STDF head holds (SDR SITE_CNT and SITE_NUM are U1): a whole lot
against a real mosquitto, the master (in-process, on the reactor) and 255 simulated sites
with T = 0 test time, driven by a handler client over MQTT; the datalog read back by
pystdf, the independent reader."""

from __future__ import annotations

import collections
import time

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from ate.config import ConfigError, master_config_from_dict, parse_sites, sim_config_from_dict
from ate.master.lot import Lot
from ate.stdf.sink import Datalog
from tests.integration.test_master import DEVICE, LOT, Cell
from tests.stdfread import read_stdf
from tests.unit.test_lot import make_job, result

N_SITES = 255
CYCLES = 50
SITES = tuple(str(i) for i in range(N_SITES))


def _by_type(records: list[tuple[str, dict]]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = collections.defaultdict(list)
    for name, fields in records:
        out[name].append(fields)
    return out


@pytest_twisted.ensureDeferred
async def test_a_lot_on_255_sites(reactor, broker, tmp_path, warnings_logged):
    t0 = time.perf_counter()
    c = Cell(reactor, broker, tmp_path, sites=SITES, master_extra={
        "timeouts": {"startup": 60, "load": 60, "next_ack": 30, "test": 30, "unload": 60}})
    try:
        await c.start_all()
        await c.handler.command("load", {"lot_number": LOT}, expect="ready", timeout=60)
        t_loaded = time.perf_counter()
        responses = []
        for i in range(CYCLES):
            d = c.handler.wait_response("next", timeout=30)
            await c.handler.send("next", {"sites": [
                {"siteid": s, "partid": f"P{i}-{s}", "binning": -1} for s in SITES]})
            _, msg = await d
            responses.append(msg)
        t_cycles = time.perf_counter()
        await c.handler.command("unload", {}, expect="initialized", timeout=60)
        t_unloaded = time.perf_counter()
    finally:
        await c.stop()
    print(f"255 sites: start+load {t_loaded - t0:.1f} s, {CYCLES} cycles "
          f"{t_cycles - t_loaded:.1f} s, unload {t_unloaded - t_cycles:.1f} s")

    # the handler's responses carry every site, in the order asked, with its part id
    for i, msg in enumerate(responses):
        entries = msg["payload"]["sites"]
        assert [e["siteid"] for e in entries] == list(SITES)
        assert [e["partid"] for e in entries] == [f"P{i}-{s}" for s in SITES]
        assert all(isinstance(e["binning"], int) and e["binning"] >= 0 for e in entries)

    truth = c.sim.sites.truth
    assert c.cell.lot.parts_tested == truth.part_count == N_SITES * CYCLES
    datalog = c.cell.datalog
    assert datalog.finalised
    recs = _by_type(read_stdf(datalog.path))

    [sdr] = recs["SDR"]
    assert sdr["SITE_CNT"] == N_SITES
    assert list(sdr["SITE_NUM"]) == list(range(N_SITES))

    prrs = recs["PRR"]
    assert len(prrs) == N_SITES * CYCLES
    per_site = collections.Counter(p["SITE_NUM"] for p in prrs)
    assert per_site == {n: CYCLES for n in range(N_SITES)}
    assert {p["PART_ID"] for p in prrs} == {f"P{i}-{s}" for i in range(CYCLES) for s in SITES}
    assert len(recs["PIR"]) == N_SITES * CYCLES

    # summaries: one per site and one over all (HEAD_NUM 255)
    pcrs = {(p["HEAD_NUM"], p["SITE_NUM"]): p for p in recs["PCR"]}
    assert set(pcrs) == {(0, n) for n in range(N_SITES)} | {(255, 255)}
    assert all(pcrs[(0, n)]["PART_CNT"] == CYCLES for n in range(N_SITES))
    assert pcrs[(255, 255)]["PART_CNT"] == N_SITES * CYCLES

    for kind, num in (("SBR", "SBIN_NUM"), ("HBR", "HBIN_NUM")):
        per = [r for r in recs[kind] if r["HEAD_NUM"] == 0]
        assert {r["SITE_NUM"] for r in per} == set(range(N_SITES)), kind
        counts = collections.Counter()
        for r in per:
            counts[r["SITE_NUM"]] += r[f"{kind[0]}BIN_CNT"]
        assert counts == {n: CYCLES for n in range(N_SITES)}, kind
        overall = [r for r in recs[kind] if r["HEAD_NUM"] == 255]
        assert sum(r[f"{kind[0]}BIN_CNT"] for r in overall) == N_SITES * CYCLES, kind
        by_bin = collections.Counter()
        for r in per:
            by_bin[r[num]] += r[f"{kind[0]}BIN_CNT"]
        assert by_bin == {r[num]: r[f"{kind[0]}BIN_CNT"] for r in overall}, kind
    # soft bins per site agree with the simulator's ground truth (every bin of the job is
    # listed for every site, the ones it never got with count 0)
    sbr = {(r["SITE_NUM"], r["SBIN_NUM"]): r["SBIN_CNT"] for r in recs["SBR"]
           if r["HEAD_NUM"] == 0 and r["SBIN_CNT"]}
    assert sbr == {(int(s), sb): n for (s, sb), n in truth.by_site_soft_bin.items()}

    tsr_sites = collections.Counter(r["SITE_NUM"] for r in recs["TSR"] if r["HEAD_NUM"] == 0)
    tests_per_part = len({r["TEST_NUM"] for r in recs["TSR"] if r["HEAD_NUM"] == 255})
    assert tests_per_part > 0
    assert tsr_sites == {n: tests_per_part for n in range(N_SITES)}
    assert all(r["EXEC_CNT"] == CYCLES for r in recs["TSR"] if r["HEAD_NUM"] == 0)
    assert warnings_logged == []


# -- the limit: 255 sites, site ids up to 255 ----------------------------------------------


def test_the_top_site_id_255_in_the_datalog(tmp_path):
    """Sites "1".."255": 255 is a site number like any other (only HEAD_NUM 255 means
    "all sites"); every per-site record carries it."""
    sites = tuple(str(i) for i in range(1, 256))
    lot = Lot(make_job(), sites, DEVICE)
    log = Datalog.create(str(tmp_path), make_job(), DEVICE, sites, 1795544990.0,
                         clock=Clock(), fsync_interval=0)
    parts = [(s, result(s, 1, f"P{s}")) for s in sites]
    assert log.write_parts(parts, 1795545000.0) == []
    for s, recs in parts:
        lot.add_result(s, recs)
    log.finalise(lot, finish_t=1795545010.0)
    recs = _by_type(read_stdf(log.path))
    [sdr] = recs["SDR"]
    assert sdr["SITE_CNT"] == 255 and list(sdr["SITE_NUM"]) == list(range(1, 256))
    assert [p["SITE_NUM"] for p in recs["PRR"]] == list(range(1, 256))
    assert {(p["HEAD_NUM"], p["SITE_NUM"]) for p in recs["PCR"]} == (
        {(0, n) for n in range(1, 256)} | {(255, 255)})
    assert {r["SITE_NUM"] for r in recs["SBR"] if r["HEAD_NUM"] == 0} == set(range(1, 256))
    assert log.problems == []


SITES_256 = [str(i) for i in range(256)]


@pytest.mark.parametrize("load", [
    lambda: parse_sites(SITES_256),
    lambda: master_config_from_dict({"device_id": DEVICE, "sites": SITES_256,
                                     "Handler": "HTO92-20F"}, source="test"),
    lambda: sim_config_from_dict({"device_id": DEVICE, "sites": SITES_256}, source="test"),
], ids=["command line", "master config", "sim config"])
def test_more_than_255_sites_is_a_config_error_naming_the_limit(load):
    with pytest.raises(ConfigError) as e:
        load()
    assert "sites: lists 256 sites, at most 255" in str(e.value)
    assert "SITE_CNT" in str(e.value)


def test_a_datalog_refuses_more_than_255_sites(tmp_path):
    with pytest.raises(ValueError, match="256 sites, an STDF head holds at most 255"):
        Datalog.create(str(tmp_path), make_job(), DEVICE, SITES_256, 1795544990.0,
                       clock=Clock())
    assert list(tmp_path.iterdir()) == []
