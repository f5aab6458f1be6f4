"""The alarms end to end (protocol §15.2) on a private mosquitto: the real master (Cell,
Router, MQTT, the web API on a free loopback port), four simulated sites of which site 2
drifts to 40% yield after its part K, and the real handler application ``ate-handler``
driving the simulated handler device in process.

The ``site_divergence`` hold rule names site 2; the hold refuses the next ``next`` with the
§15.2 error, which ate-handler passes to the device as ``TS|-1|next refused: …|``; the
operator takes site 2 out and releases the alarm over HTTP, and the lot goes on to its
unload on the other three sites.  The datalog holds the ``ALARM`` and ``RELEASE`` DTRs at
their points of the part stream, the lot summary lists the alarms, the release and the
production block, and ``~/Master/alarm`` carried the alarm raised, then released.

How a held lot resumes (what an operator does).  ate-handler itself never stops: the
refused ``next`` takes it back to ``ready`` (protocol 13.3: an error response returns the
handler to the state before the command) and it answers the device ``TS|-1|<message>|``.
It is the handler machine that stops on ``TS|-1``: a real one raises its own alarm and
waits for its operator, who clears it and presses start, and the machine sends the ``ST``
again.  The simulated device stands for machine and operator: after a ``TS|-1`` it sends
the ``ST`` again (the same part ids) every ``retry_time`` seconds, built anew so that a site
the operator disabled meanwhile is left out.  While the master's alarm is raised every such
``ST`` is refused and no part is tested.  The operator here does what the alarm asks for:
takes site 2 out on the handler (``disable_site``, the handler's site switch) and releases
the alarm (``POST /api/v1/alarms/{id}/release``); the next ``ST`` goes through without site 2.
No new lot and no reset: the lot, its datalog and its part numbering go on.

Why site 2 is taken out rather than left in: in the simulation it drifts for good (a
released alarm does not mend the probe card).  Left in, the rule re-alarms it within a few
parts, because after a release the rule re-arms on the first evaluation whose |z| is below
``z`` and site 2's z hovers at the threshold for a while (the monitor fed with 4 000 seeded
lots of this mix: a second hold on site 2 within 10 parts of the release in 24% of them);
and as site 2 drags the pooled yield of "the other sites" down, a healthy site later
diverges upwards (z >= 4 on a healthy site by its part 200 in 74%).  With site 2 out, its
frozen counts weigh less and less in the pool: a healthy site fires in about 1% of such
lots by part 200 (and the seeded run here is the same every time).
"""

from __future__ import annotations

import json
import os
import re

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred, DeferredList
from twisted.web.client import HTTPConnectionPool

from ate.broker import free_port
from ate.config import (
    MqttOptions,
    handler_config_from_dict,
    master_config_from_dict,
    sim_config_from_dict,
)
from ate.handler import lineproto as lp
from ate.handler.drivers.simulated import SimulatedHandler
from ate.handler.service import HandlerService
from ate.mqtt.service import MqttService
from ate.protocol import messages as m
from ate.sim.sites import SimSitesService
from ate.tap import build_master
from tests.stdfread import read_stdf
from tests.waiting import Waiter as _Waiter

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "jobs", "le306426001.xml")

TIMEOUT = 30
D, H = "SCT-81-1F", "HTO92-20F"
LOT = "306426.001"
SITES = ("0", "1", "2", "3")
OPERATOR, COMMENT = "ana", "site 2 taken out on the handler, probe card to clean"

# The simulated mix passes 85% of the parts (soft bins 1 and 2 of DEFAULT_SIM_BINS, weights
# 80 + 5 of 100, are the job's BT_PASS group); from its part K + 1 on, site 2 passes 40%.
K = 40
DRIFT_YIELD = 40
MIN_PARTS = 30
Z = 4.0
# Detection bound, in parts of site 2 after K.  After m drifted parts site 2 has n1 = K + m
# parts with an expected yield p1 = (0.85 K + 0.40 m) / n1, the other three sites n2 = 3 n1
# at 0.85, and z = (p1 - 0.85) / sqrt(p (1 - p) (1/n1 + 1/n2)) with p the lot's yield.  The
# expected |z| reaches 4 at m = 36 (p1 = 0.64, p = 0.80, z = -4.0).  The same monitor fed
# with 20 000 seeded lots of this mix (4 sites, results in a random order within the part)
# detected site 2 after a median of 36 drifted parts, 90% within 54, 99% within 71, 99.9%
# within 83 (the slowest of the 20 000: 119).  BOUND = 100 leaves room beyond the 99.9%.
# The simulator is seeded (one random stream per site), so this run is the same every time
# but for the order in which the four results of a part arrive.
BOUND = 100
# 800 parts, 200 per site while all four test: the alarm comes by site 2's part
# K + BOUND = 140 at the latest, so at least 240 parts are tested after the release.
CYCLES = 200
RETRY = 0.3  # the simulated device sends a refused ST again after this many seconds

ALARMS = [
    {"kind": "site_divergence", "name": "divergence", "action": "hold", "z": Z,
     "min_parts": MIN_PARTS},
    # a notify rule alongside: it never holds the lot
    {"kind": "consecutive_fails", "name": "fail_run", "action": "notify", "count": 6},
]
# The simulator's seed: one random stream per site (seed:site), so what each site tests is
# the same every run.  With seed 2, site 2 tests 6 failing parts in a row (fail_run, at lot
# part 171) well before the divergence is found (at its part 65, lot part 259), and no
# healthy site does.
SEED = 2


class Watcher(_Waiter):
    """Every message of the master's status, response and alarm topics and the handler's
    status, decoded by the protocol codec."""

    timeout = TIMEOUT

    def __init__(self, reactor, broker):
        super().__init__()
        self.codec = m.Codec(D, SITES, H)
        t = self.codec.topics
        self.alarms: list[dict] = []          # ~/Master/alarm payloads
        self.status: list[m.MasterStatus] = []
        self.responses: list[object] = []     # ~/Master/response
        self.handler: list[tuple[str, str]] = []
        self.order: list[tuple[str, str]] = []  # ("master" or "handler", state)
        self.mqtt = MqttService(
            reactor, MqttOptions(host=broker.host, port=broker.port), "it.alarms.watcher",
            subscriptions=[(t.master_alarm, 2), (t.master_status, 2), (t.master_response, 2),
                           (f"ate/{H}/Handler/status", 2)],
            on_message=self._message)

    def handler_answered(self) -> bool:
        """The master has answered the handler's ``connecting`` with its status.

        ate-handler publishes its status with QoS 2 and its commands with QoS 0, so a
        ``load`` sent at once may reach the master before that ``connecting``; the status
        the master then re-publishes looks to the handler like a master that did not get
        the load: it sends it again, the master refuses the copy (busy: loading), and the
        handler goes back to ``initialized`` while the master loads the lot (every later
        ``LL`` is refused ``havelot``).  An operator starts the lot once the handler is up;
        so does this test.
        """
        order = self.order
        if ("handler", "connecting") not in order:
            return False
        return any(who == "master" for who, _ in order[order.index(("handler", "connecting")):])

    def _message(self, topic, payload):
        if topic.endswith("/Handler/status"):
            msg = json.loads(payload)["payload"]
            self.handler.append((msg["state"], msg["message"]))
            self.order.append(("handler", msg["state"]))
        else:
            msg = self.codec.decode(topic, payload)
            if isinstance(msg, m.MasterAlarm):
                self.alarms.append(dict(msg.payload))
            elif isinstance(msg, m.MasterStatus):
                self.status.append(msg)
                self.order.append(("master", msg.state))
            else:
                self.responses.append(msg)
        self.poke()


class Cell:
    """Master (with the web API), simulated sites and ate-handler on one broker."""

    def __init__(self, reactor, broker, tmp_path):
        self.reactor = reactor
        jobs = tmp_path / "jobs"
        jobs.mkdir()
        with open(FIXTURE, encoding="utf-8") as f:
            (jobs / "le306426001.xml").write_text(f.read(), encoding="utf-8")
        self.stdf = tmp_path / "stdf"
        self.stdf.mkdir()
        self.web_port = free_port()
        self.base = f"http://127.0.0.1:{self.web_port}"
        config = master_config_from_dict({
            "broker_host": broker.host, "broker_port": broker.port,
            "device_id": D, "sites": list(SITES), "Handler": H,
            "environment": "F1", "jobsource": "filesystem", "jobformat": "xml.semi-ate",
            "filesystemdatasource_path": str(jobs),
            "filesystemdatasource_jobpattern": "le#jobname#.xml",
            "stdf_directory": str(self.stdf), "log_directory": str(tmp_path / "log"),
            "webui_host": "127.0.0.1", "webui_port": self.web_port,
            "site_layout": [[i, 0] for i in range(len(SITES))],
            "timeouts": {"startup": 30, "load": 10, "next_ack": 5, "test": 10, "unload": 10},
            "alarms": ALARMS,
        }, source="test-alarms-master")
        self.watcher = Watcher(reactor, broker)
        self.master, self.cell = build_master(config, reactor, observe_logs=False,
                                              announce=False)
        self.finalised: Deferred = Deferred()
        self.cell.subscribe(self._event)
        self.sim = SimSitesService(reactor, sim_config_from_dict({
            "broker_host": broker.host, "broker_port": broker.port, "device_id": D,
            "sites": list(SITES), "test_time": 0.0, "seed": SEED, "ptr_count": 3,
            "faults": {"drift": {"site": "2", "after": K, "yield": DRIFT_YIELD}},
        }, source="test-alarms-sim"), client_id="simsites.it.alarms")
        self.device = SimulatedHandler(reactor, lots=(), parts_per_lot=CYCLES * len(SITES),
                                       sites=len(SITES), index_time=0, retry_time=RETRY)
        self.handler = HandlerService(reactor, handler_config_from_dict({
            "broker_host": broker.host, "broker_port": broker.port,
            "handler_type": "simulated", "handler_id": H, "device_ids": [D],
            "site_layout": [[i, 0] for i in range(len(SITES))],
            "timeouts": {"load": 15, "next": 15, "unload": 15, "startup": 30},
        }, source="test-alarms-handler"), device=self.device)
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def _event(self, kind, data):
        if kind == "finalised" and not self.finalised.called:
            self.finalised.callback(data)
        self.watcher.poke()  # the waits also look at the cell's state

    async def start(self):
        self.watcher.mqtt.startService()
        await self.watcher.mqtt.whenConnected().addTimeout(TIMEOUT, self.reactor)
        # the tester first, then the handler application, then the lot (see Watcher)
        self.master.startService()
        self.sim.startService()
        await self.watcher.until(
            lambda: self.cell.status()["state"] == "initialized"
            and not self.cell.tracker.unavailable(), self.reactor)
        self.handler.startService()
        await self.watcher.until(
            lambda: self.watcher.handler_answered()
            and self.handler.controller.status().state == "initialized", self.reactor)
        self.device.lots = [LOT]
        self.device.start()

    async def stop(self):
        self.device.stop()
        if self.handler.running:
            await self.handler.stopService()
        await DeferredList([s.stopService() for s in (self.sim, self.master) if s.running])
        if self.watcher.mqtt.running:
            await self.watcher.mqtt.stopService()

    async def get(self, path):
        resp = await treq.get(self.base + path, pool=self.pool)
        return resp.code, await treq.content(resp)

    async def post(self, path, body):
        resp = await treq.post(self.base + path, data=json.dumps(body).encode(),
                               headers={"Content-Type": "application/json"}, pool=self.pool)
        return resp.code, json.loads(await treq.content(resp))


@pytest.fixture
def cell(reactor, broker, tmp_path):
    c = Cell(reactor, broker, tmp_path)
    yield c
    pytest_twisted.blockon(Deferred.fromCoroutine(c.stop()))


def raised(watcher, name):
    return [a for a in watcher.alarms if a["name"] == name and a["state"] == "raised"]


@pytest_twisted.ensureDeferred
async def test_divergence_holds_the_lot_until_the_operator_releases_it(reactor, cell,
                                                                      warnings_logged):
    c = cell
    await c.start()

    # -- the divergence alarm names site 2, after its drift began and within the bound
    await c.watcher.until(lambda: raised(c.watcher, "divergence"), reactor)
    [alarm] = raised(c.watcher, "divergence")
    assert alarm["site"] == "2" and alarm["kind"] == "site_divergence", alarm
    assert alarm["action"] == "hold" and alarm["lot_number"] == LOT and alarm["sbin"] is None
    found = re.fullmatch(r"site 2 yield (\d+\.\d)% differs from the other sites' (\d+\.\d)% "
                         r"\(z = (-?\d+\.\d); (\d+) parts on site 2, (\d+) on the others\)",
                         alarm["message"])
    assert found, alarm["message"]
    site_parts, z = int(found.group(4)), float(found.group(3))
    assert K < site_parts <= K + BOUND, alarm["message"]
    assert z <= -Z and float(found.group(1)) < float(found.group(2))
    assert alarm["parts"] == site_parts + int(found.group(5))
    # the simulator's ground truth: site 2 drifted from its part K + 1 on, the others never
    drifted = [(site, n) for kind, site, n in c.sim.sites.truth.faults if kind == "drift"]
    assert {site for site, _ in drifted} == {"2"} and min(n for _, n in drifted) == K + 1

    # -- held: the next ST is refused with the §15.2 error, TS|-1|…| on the device's line
    refusal = f"next refused: held by alarm divergence: {alarm['message']}"
    # the device's first ST after the alarm is refused, and so is its retry RETRY s later:
    # the second refusal shows that the hold outlasts a retry and nothing was tested between
    await c.watcher.until(lambda: len(c.device.errors) >= 2, reactor)
    assert [lp.format_line(ts) for ts in c.device.errors[:2]] == [
        lp.format_line(lp.error_status(refusal))] * 2
    assert lp.format_line(c.device.errors[0]).startswith(
        "TS|-1|next refused: held by alarm divergence: site 2 yield ")
    held_at = c.device.parts_tested
    assert held_at == c.cell.lot.parts_tested and held_at % len(SITES) == 0
    # the part that fired it was the last one tested: the alarm came with its results
    assert held_at - len(SITES) < alarm["parts"] <= held_at
    refused = [r for r in c.watcher.responses if isinstance(r, m.ErrorResponse)]
    assert refused and all((r.command_type, r.response_type, r.state, r.message)
                           == ("next", "error", "ready", refusal) for r in refused)
    held_text = f"held: divergence: {alarm['message']}"
    assert c.watcher.status[-1] == m.MasterStatus(state="ready", message=held_text)
    assert c.cell.status()["state"] == "ready"
    assert (c.handler.controller.status().state == "ready"
            and (f"master {D} refused next: {refusal}") in {t for _, t in c.watcher.handler})

    # -- the API lists it raised; the status and /metrics show the hold
    code, body = await c.get("/api/v1/alarms")
    listing = json.loads(body)
    assert code == 200 and listing["lot_number"] == LOT and listing["held"] == alarm["id"]
    [listed] = [a for a in listing["alarms"] if a["id"] == alarm["id"]]
    assert listed == alarm | {"released_by": "", "comment": ""}
    code, body = await c.get("/api/v1/status")
    assert code == 200 and json.loads(body)["error_message"] == held_text
    code, body = await c.get("/metrics")
    metrics = body.decode()
    assert 'ate_alarms_total{kind="site_divergence",action="hold"} 1\n' in metrics
    assert "ate_lot_held 1\n" in metrics

    # -- the operator takes site 2 out on the handler, then releases the alarm; a request
    # without a comment is refused and changes nothing
    c.device.disable_site(SITES.index("2"))
    code, error = await c.post(f"/api/v1/alarms/{alarm['id']}/release", {"operator": OPERATOR})
    assert code == 400 and "comment" in json.dumps(error), error
    assert c.cell.alarms.held() is not None
    code, released = await c.post(f"/api/v1/alarms/{alarm['id']}/release",
                                  {"operator": OPERATOR, "comment": COMMENT})
    assert code == 200, released
    assert released == alarm | {"state": "released", "released_by": OPERATOR,
                                "comment": COMMENT}

    # -- the lot goes on: the device's next retry (without site 2) is tested, and the lot
    # ends with its unload
    await c.device.wait_lots(1).addTimeout(TIMEOUT, reactor)
    path = await c.finalised.addTimeout(TIMEOUT, reactor)
    await c.watcher.until(lambda: c.handler.controller.status().state == "initialized",
                          reactor)
    assert c.device.parts_tested == CYCLES * len(SITES) > held_at
    assert c.device.errors[2:] == [lp.error_status(refusal)] * (len(c.device.errors) - 2)
    assert c.cell.status()["state"] == "initialized"
    # ~/Master/alarm: raised, then released, the same alarm
    assert [a for a in c.watcher.alarms if a["id"] == alarm["id"]] == [
        alarm, alarm | {"state": "released"}]
    # while held the status said so; after the release it no longer does
    held_states = [s for s in c.watcher.status if s.message == held_text]
    assert held_states and all(s.state == "ready" for s in held_states)
    assert c.watcher.status[-1].message != held_text
    # the notify rule fired on site 2 before the divergence, and the lot went on after it
    [fail_run] = raised(c.watcher, "fail_run")
    assert (fail_run["site"], fail_run["action"], fail_run["kind"]) == (
        "2", "notify", "consecutive_fails")
    assert fail_run["message"].startswith("site 2: 6 failing parts in a row (last soft bin ")
    assert fail_run["parts"] < alarm["parts"] and fail_run["id"] < alarm["id"]
    assert [a["id"] for a in c.watcher.alarms] == [fail_run["id"], alarm["id"], alarm["id"]]

    # -- the datalog: ALARM after the PRRs of the part that fired it, RELEASE before the first
    # PRR after the release, every part once
    records = read_stdf(path)
    stream = [(name, r.get("PART_ID") if name == "PRR" else r["TEXT_DAT"])
              for name, r in records if name in ("PRR", "DTR")]
    texts = [text for name, text in stream if name == "DTR"]
    alarm_dtr = f"ALARM divergence: {alarm['message']}"
    release_dtr = f"RELEASE divergence by {OPERATOR}: {COMMENT}"
    assert texts.count(alarm_dtr) == 1 and texts.count(release_dtr) == 1, texts
    at, back = stream.index(("DTR", alarm_dtr)), stream.index(("DTR", release_dtr))
    assert [name for name, _ in stream[at - len(SITES):at]] == ["PRR"] * len(SITES)
    assert len([x for name, x in stream[:at] if name == "PRR"]) == held_at
    assert back == at + 1 and stream[back + 1][0] == "PRR"   # nothing tested while held
    prrs = [x for name, x in stream if name == "PRR"]
    assert len(prrs) == len(set(prrs)) == CYCLES * len(SITES)
    # after the release the lot went on without site 2
    prr_sites = [r["SITE_NUM"] for name, r in records if name == "PRR"]
    assert 2 in prr_sites[:held_at] and 2 not in prr_sites[held_at:]
    # the notify alarm's DTR after the PRRs of its part too, and parts were tested after it
    notify_at = stream.index(("DTR", f"ALARM fail_run: {fail_run['message']}"))
    assert len([x for name, x in stream[:notify_at] if name == "PRR"]) == (
        -(-fail_run["parts"] // len(SITES)) * len(SITES))
    assert texts == [stream[notify_at][1], alarm_dtr, release_dtr]

    # -- the lot summary lists the alarms, the release and the production block
    base = os.path.splitext(path)[0]
    with open(base + ".summary.json", encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["ended_held"] is False
    by_id = {a["id"]: a for a in summary["alarms"]}
    assert by_id[alarm["id"]] == alarm | {"state": "released", "released_by": OPERATOR,
                                          "comment": COMMENT}
    assert list(by_id) == [fail_run["id"], alarm["id"]]
    assert by_id[fail_run["id"]] == fail_run | {"released_by": "", "comment": ""}
    production = summary["production"]
    rest = CYCLES * len(SITES) - held_at          # tested on three sites after the release
    assert production["parts"] == CYCLES * len(SITES)
    assert production["cycles"] == held_at // len(SITES) + -(-rest // 3)
    assert production["e10_seconds"]["unscheduled_down"] > 0   # the hold
    with open(base + ".summary.txt", encoding="utf-8") as f:
        text = f.read()
    assert (f"  #{alarm['id']} divergence (site_divergence, hold) site 2 at part "
            f"{alarm['parts']}: {alarm['message']}\n"
            f"     released by {OPERATOR}: {COMMENT}\n") in text
    assert "Production:" in text and "the lot ended held" not in text

    # -- the WARNINGs: one per alarm, nothing else (a refused next while held is expected:
    # the cell logs it at INFO)
    assert warnings_logged == [f"alarm fail_run: {fail_run['message']}",
                               f"alarm divergence: {alarm['message']}"], warnings_logged
