"""A master cell with fake peers: a recording publisher, a Clock, fake sites driven by hand.

Used by the table-driven machine tests.  Messages go in as raw MQTT payloads through the
real router and codec, so these tests exercise the same path as production.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from ate.config import master_config_from_dict
from ate.jobs.source import job_source_from_config
from ate.master.cell import Cell
from ate.master.lothistory import LotHistory
from ate.master.router import Router
from ate.master.settings import UserSettings

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "jobs", "le306426001.xml")
DEVICE = "SCT-81-1F"
HANDLER = "HTO92-20F"
LOT = "306426.001"


class RecordingPublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 2):
        self.sent.append((topic, json.loads(payload)))
        return succeed(None)

    def take(self) -> list[tuple[str, Any]]:
        out, self.sent = self.sent, []
        return out


def make_config(tmp_path, sites=("0", "1", "2", "3"), **extra) -> Any:
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    shutil.copy(FIXTURE, jobs / "le306426001.xml")
    (tmp_path / "stdf").mkdir(exist_ok=True)
    data = {
        "device_id": DEVICE,
        "sites": list(sites),
        "Handler": HANDLER,
        "environment": "F1",
        "jobsource": "filesystem",
        "jobformat": "xml.semi-ate",
        "filesystemdatasource_path": str(jobs),
        "filesystemdatasource_jobpattern": "le#jobname#.xml",
        "stdf_directory": str(tmp_path / "stdf"),
        "site_layout": [[i, 0] for i in range(len(sites))],
        "log_directory": str(tmp_path / "log"),
    }
    data.update(extra)
    return master_config_from_dict(data, source="test")


def prr(site: str, part_id: str, soft_bin: int = 1, hard_bin: int = 1, fail: bool = False) -> dict:
    return {"type": "PRR", "HEAD_NUM": 0, "SITE_NUM": int(site), "PART_FLG": 8 if fail else 0,
            "NUM_TEST": 1, "HARD_BIN": hard_bin, "SOFT_BIN": soft_bin, "X_COORD": 1,
            "Y_COORD": 2, "TEST_T": 12, "PART_ID": part_id, "PART_TXT": "", "PART_FIX": None}


def result_payload(site: str, part_id: str, soft_bin: int = 1, hard_bin: int = 1) -> dict:
    return {"type": "testresult", "payload": [
        {"type": "PIR", "HEAD_NUM": 0, "SITE_NUM": int(site)},
        {"type": "PTR", "TEST_NUM": 1000, "HEAD_NUM": 0, "SITE_NUM": int(site), "TEST_FLG": 0,
         "PARM_FLG": 0, "RESULT": 0.5, "TEST_TXT": "offset", "ALARM_ID": "", "OPT_FLAG": 2,
         "RES_SCAL": 0, "LLM_SCAL": 0, "HLM_SCAL": 0, "LO_LIMIT": 0.0, "HI_LIMIT": 1.0,
         "UNITS": "V", "C_RESFMT": "%7.3f", "C_LLMFMT": "%7.3f", "C_HLMFMT": "%7.3f",
         "LO_SPEC": -1.0, "HI_SPEC": 2.0},
        prr(site, part_id, soft_bin, hard_bin, fail=soft_bin > 9),
    ]}


class Harness:
    """One cell, its router, a Clock and a recording publisher."""

    def __init__(self, tmp_path, sites=("0", "1", "2", "3"), *, history: bool = False,
                 **extra) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.pub = RecordingPublisher()
        self.config = make_config(tmp_path, sites, **extra)
        self.sites = tuple(self.config.sites)
        self.history = LotHistory.open(self.config) if history else None
        self.cell = Cell(
            self.config, self.clock, self.pub,
            job_source=job_source_from_config(self.config),
            settings=UserSettings(None),
            wallclock=lambda: 1_795_544_990.0,
            history=self.history,
        )
        self.router = Router(self.cell)
        self.events: list[tuple[str, Any]] = []
        self.cell.subscribe(lambda kind, data: self.events.append((kind, data)))

    # -- raw input --------------------------------------------------------------------

    def mqtt(self, topic_suffix: str, obj: Any) -> None:
        payload = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.router.received(f"ate/{DEVICE}/{topic_suffix}", payload)

    def handler(self, type_: str, payload: Any = None) -> None:
        msg = {"type": type_}
        if payload is not None:
            msg["payload"] = payload
        self.mqtt("Master/cmd", msg)

    def control(self, site: str, state: str, version: Any = 1) -> None:
        self.mqtt(f"Control/status/site{site}", {
            "type": "status", "interface_version": version, "software_version": 1,
            "payload": {"state": state, "error_message": ""}})

    def testapp(self, site: str, state: str) -> None:
        self.mqtt(f"TestApp/status/site{site}", {
            "type": "status", "framework_version": 1, "test_version": "N/A",
            "payload": {"state": state, "message": ""}, "state": state})

    def result(self, site: str, part_id: str, soft_bin: int = 1, hard_bin: int = 1) -> None:
        self.mqtt(f"TestApp/testresult/site{site}",
                  result_payload(site, part_id, soft_bin, hard_bin))

    # -- observations -------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.cell.state

    def statuses(self, sent=None) -> list[str]:
        sent = self.pub.sent if sent is None else sent
        return [p["state"] for t, p in sent if t.endswith("/Master/status")]

    def responses(self, sent=None) -> list[dict]:
        sent = self.pub.sent if sent is None else sent
        return [p for t, p in sent if t.endswith("/Master/response")]

    # -- driving to a state -------------------------------------------------------------

    def to_initialized(self) -> None:
        self.cell.mqtt_connected()
        for s in self.sites:
            self.control(s, "idle")
        assert self.state == "initialized", self.state

    def to_ready(self) -> None:
        self.to_initialized()
        self.handler("load", {"lot_number": LOT})
        assert self.state == "loading", (self.state, self.cell.error_message_text)
        for s in self.sites:
            self.control(s, "loading")
            self.control(s, "busy")
            self.testapp(s, "idle")
        assert self.state == "ready", (self.state, self.cell.error_message_text)

    def to_testing(self, sites=None) -> None:
        self.to_ready()
        self.next(sites)
        assert self.state == "testing"

    def next(self, sites=None) -> None:
        if sites is None:
            self.handler("next", {"sites": [{"siteid": s, "partid": f"P{s}", "binning": -1}
                                            for s in self.sites]})
        else:
            self.handler("next", {"sites": [{"siteid": s, "partid": f"P{s}", "binning": -1}
                                            for s in sites]})

    def run_part(self, sites=None, part_prefix="P", bins=None) -> None:
        sites = self.sites if sites is None else sites
        self.handler("next", {"sites": [{"siteid": s, "partid": f"{part_prefix}{s}",
                                         "binning": -1} for s in sites]})
        for s in sites:
            self.testapp(s, "testing")
        for s in sites:
            self.testapp(s, "idle")
            sb, hb = (bins or {}).get(s, (1, 1))
            self.result(s, f"{part_prefix}{s}", sb, hb)

    def to_softerror(self) -> None:
        self.to_ready()
        self.testapp("1", "crash")
        assert self.state == "softerror"

    def to_unloading(self) -> None:
        self.to_ready()
        self.handler("unload")
        assert self.state == "unloading"

    def to_loading(self) -> None:
        self.to_initialized()
        self.handler("load", {"lot_number": LOT})
        assert self.state == "loading"

    def to_connecting(self) -> None:
        self.cell.mqtt_connected()
        assert self.state == "connecting"

    def to_error(self) -> None:
        self.cell.mqtt_connected()
        self.control("0", "idle", version=2)
        assert self.state == "error"
