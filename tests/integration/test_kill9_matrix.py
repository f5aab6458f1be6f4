"""kill -9 of ``twistd -n ate-master`` in each state of a lot, then a restart: the datalog
is repaired with every part whose ``next`` was answered (and at most the part that was in
flight besides), both pystdf and our strict reader read it whole, and a new lot runs.

The simulated sites run in this process behind gates, so the master stays in the state
for as long as it takes to kill it (protocol.md §3, §7.4).
"""

from __future__ import annotations

import json
import os

import pytest
import pytest_twisted

from ate.stdf.recover import RECOVERED
from fuzzharness import LiveCell, prrs, stdf_files, stdf_problems
from tests.stdfread import read_stdf


async def _kill_in(cell: LiveCell, state: str) -> tuple[dict[str, int], set[str]]:
    """Bring the cell's lot into ``state`` and kill the master there; return the answered
    parts (id -> bin) and the ids of the part in flight."""
    answered: dict[str, int] = {}
    in_flight: set[str] = set()
    if state == "loading":
        await cell.enter("loading")
    else:
        await cell.enter("ready")
        for _ in range(3):
            answered.update(await cell.next_answered())
        if state == "unloading":
            cell.sites.inbound.close()
            await cell.command_until("unload", None, ("unloading",))
        elif state in ("testing", "softerror"):
            # site 0 answers, site 1 stays silent: a part half done
            cell.sites.outbound.close(lambda out: out.site == "1")
            payload = cell.next_payload()
            in_flight = {info["partid"] for info in payload["sites"]}
            await cell.command_until("next", payload, ("testing",))
            await cell.results_at_master(len(answered) + 1)
            if state == "softerror":
                await cell.command_until_published(
                    "TestApp/status/site1", {"type": "status", "framework_version": 1,
                                             "test_version": "N/A", "state": "error",
                                             "payload": {"state": "error", "message": ""}},
                    ("softerror",))
    assert await cell.get_state() == state
    cell.master.signal("KILL")
    cell.master.ended.addTimeout(10, cell.reactor)
    await cell.master.ended
    cell.sites.inbound.discard()
    cell.sites.outbound.discard()
    return answered, in_flight


@pytest.mark.parametrize("state", ["loading", "ready", "testing", "unloading", "softerror"])
@pytest_twisted.ensureDeferred
async def test_kill9_then_restart_repairs_the_datalog_and_runs_a_new_lot(
        reactor, broker, tmp_path, state):
    cell = LiveCell(reactor, broker, str(tmp_path))
    await cell.start()
    try:
        truth_start = len(cell.sites.truth.parts)
        answered, in_flight = await _kill_in(cell, state)
        [path] = stdf_files(cell.master.stdf_directory)
        with open(path, "rb") as f:
            assert RECOVERED.encode() not in f.read()
        truth = {p.part_id: p for p in cell.sites.truth.parts[truth_start:]}

        await cell.start_master()  # repairs the datalog before it connects
        assert stdf_problems(path) == []
        records = read_stdf(path)
        assert records[-1][0] == "MRR" and records[-1][1]["EXC_DESC"] == RECOVERED
        got = {p["PART_ID"]: (p["SOFT_BIN"], p["HARD_BIN"]) for p in prrs(path)}
        assert set(answered) <= set(got) <= set(answered) | in_flight
        for pid, (soft, hard) in got.items():
            assert (soft, hard) == (truth[pid].soft_bin, truth[pid].hard_bin), pid
            if pid in answered:
                assert answered[pid] == hard
        pcr = [f for n, f in records if n == "PCR" and f["SITE_NUM"] == 255]
        assert pcr[0]["PART_CNT"] == len(got)

        lot = await cell.run_lot(2)
        assert lot.problems == []
        assert lot.path != path
        assert cell.master.new_log_problems() == []
    finally:
        code = await cell.stop()
    assert code == 0, cell.master.output.decode("utf-8", "replace")[-3000:]


@pytest_twisted.ensureDeferred
async def test_a_repaired_datalog_gets_its_summary_files(reactor, broker, tmp_path):
    cell = LiveCell(reactor, broker, str(tmp_path))
    await cell.start()
    try:
        answered, _ = await _kill_in(cell, "ready")
        [path] = stdf_files(cell.master.stdf_directory)
        await cell.start_master()
    finally:
        await cell.stop()
    base = path[:-len(".stdf")]
    with open(base + ".summary.json", encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["datalog"] == os.path.basename(path)
    assert summary["parts_distinct"] == len(answered) == 6
    assert os.path.getsize(base + ".summary.txt") > 0
