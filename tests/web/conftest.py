"""Fixtures for the web tests: a scripted fake cell with the API of ate.master.cell.Cell.

The fake follows docs/internals.md and the acceptance matrix of protocol.md §4.3 closely
enough for the web layer: ``load`` of a known lot goes initialized → loading → ready,
``next`` produces one result per site and a ``part`` event, ``unload``/``reset`` go back
to initialized.  Refusals come back as ``ErrorResponse`` messages and are logged as
warnings, as the real cell does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.logger import Logger, globalLogPublisher

from ate.master.logs import LogBuffer
from ate.master.settings import SettingsError, UserSettings
from ate.protocol import messages as m

KNOWN_LOT = "306426.001"
GROUPS = ("BT_PASS", "BT_FAIL_CONT", "BT_FAIL_ELECTRIC", "BT_ALARM")
BINS = (  # sbin, hbin, name, group
    (1, 1, "SB_GOOD", "BT_PASS"),
    (12, 5, "SB_CONT_OPEN", "BT_FAIL_CONT"),
    (20, 6, "SB_ELEC", "BT_FAIL_ELECTRIC"),
    (60000, 0, "SB_ALARM", "BT_ALARM"),
)


@dataclass
class FakeMetrics:
    parts: int = 0
    cycles: int = 0
    commands_refused: int = 0
    protocol_errors: dict = field(default_factory=dict)
    unexpected_results: int = 0
    duplicate_results: int = 0
    bad_records: int = 0
    softerrors: int = 0
    mqtt_disconnects: int = 0


def make_config(**overrides: Any) -> SimpleNamespace:
    values = dict(
        device_id="SCT-81-1F", sites=("0", "1", "2", "3"), handler_id="HTO92-20F",
        environment="F1", jobsource="filesystem", jobformat="xml.semi-ate",
        webui_host="127.0.0.1", webui_port=8081, webui_token=None, webui_root_path=None,
        mqtt=SimpleNamespace(host="127.0.0.1", port=1883),
    )
    values.update(overrides)
    return SimpleNamespace(**values)


class FakeLot:
    """Counts per site and soft bin; yields and bin table in the shapes of §7.2/§7.3."""

    def __init__(self, sites: tuple[str, ...]) -> None:
        self.sites = sites
        self.counts: dict[tuple[str, int], int] = {}
        self.hbins = {sbin: hbin for sbin, hbin, _, _ in BINS}
        self.results: list[list[dict]] = []
        self.parts_tested = 0

    def add(self, site: str, records: list[dict]) -> None:
        prr = records[-1]
        key = (site, prr["SOFT_BIN"])
        self.counts[key] = self.counts.get(key, 0) + 1
        self.results.append(records)
        self.parts_tested += 1

    def yields(self) -> list[dict]:
        out = []
        for site in [s for s in self.sites if any(k[0] == s for k in self.counts)] + ["-1"]:
            per_group = {g: 0 for g in GROUPS}
            for (s, sbin), n in self.counts.items():
                if site in ("-1", s):
                    group = next(b[3] for b in BINS if b[0] == sbin)
                    per_group[group] += n
            total = sum(per_group.values())
            if not total:
                continue
            for g in GROUPS:
                out.append({"name": g, "siteid": site, "value": per_group[g] / total * 100.0,
                            "count": per_group[g]})
            out.append({"name": "sum", "siteid": site, "value": 100.0, "count": total})
        return out

    def bintable(self) -> list[dict]:
        return [
            {"name": name, "sBin": sbin, "hBin": self.hbins[sbin], "type": group,
             "siteCounts": [{"siteId": s, "count": self.counts.get((s, sbin), 0)}
                            for s in self.sites]}
            for sbin, _, name, group in BINS
        ]

    def last_results(self) -> list[list[dict]]:
        return list(self.results[-1000:])

    def summary(self) -> dict:
        return {"parts": self.parts_tested}

    def set_hbin(self, sbin: int, hbin: int) -> None:
        if sbin not in self.hbins:
            raise KeyError(f"soft bin {sbin} is not in the bin table")
        self.hbins[sbin] = hbin


def result_records(site: str, part: int, sbin: int = 1, result: float = 0.42) -> list[dict]:
    hbin = next(b[1] for b in BINS if b[0] == sbin)
    return [
        {"type": "PIR", "HEAD_NUM": 0, "SITE_NUM": int(site), "rec_id": "PIR"},
        {"type": "PTR", "TEST_NUM": 1000, "HEAD_NUM": 0, "SITE_NUM": int(site),
         "RESULT": result, "TEST_TXT": "offset.vout", "rec_id": "PTR"},
        {"type": "PRR", "HEAD_NUM": 0, "SITE_NUM": int(site), "PART_FLG": 0 if sbin == 1 else 8,
         "HARD_BIN": hbin, "SOFT_BIN": sbin, "PART_ID": f"P{part}", "TEST_T": 12,
         "rec_id": "PRR"},
    ]


class FakeAlarms:
    """What ate.web reads of the cell's LotAlarms (ate/master/alarming.py)."""

    def __init__(self) -> None:
        from collections import Counter
        self.counts: Counter = Counter()
        self.rows: list[dict] = []
        self.held_alarm: Any = None

    def held(self) -> Any:
        return self.held_alarm

    def alarms(self) -> list[dict]:
        return list(self.rows)


class FakeCell:
    """The cell API used by ate.web (see docs/internals.md and ate/master/cell.py)."""

    log = Logger(namespace="ate.master.cell")

    def __init__(self, config: Any = None, logs: LogBuffer | None = None) -> None:
        self.config = config or make_config()
        self.sites = tuple(self.config.sites)
        self.logs = logs
        self.metrics = FakeMetrics()
        self.settings = UserSettings(None)
        self.loglevel = 30
        self.state = "initialized"
        self.message = ""
        self.lot: FakeLot | None = None
        self.job: Any = None
        self.lot_number = ""
        self.site_states = {s: {"control": "idle", "testapp": "terminated", "error_message": ""}
                            for s in self.sites}
        self.listeners: list = []
        self.commands: list[tuple[Any, str]] = []
        self.part_counter = 0
        self.next_bins: dict[str, int] = {}
        self.next_result: float = 0.42
        self.hold_loading = False
        from twisted.internet.task import Clock

        from ate.master.production import Production
        self.alarms = FakeAlarms()
        self.production = Production(Clock())
        self.released: list[tuple[Any, Any, Any]] = []

    # -- events --------------------------------------------------------------------------

    def subscribe(self, listener: Any) -> None:
        self.listeners.append(listener)

    def unsubscribe(self, listener: Any) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def emit(self, kind: str, data: Any) -> None:
        for listener in list(self.listeners):
            listener(kind, data)

    def set_state(self, state: str, message: str = "") -> None:
        self.state, self.message = state, message
        self.emit("status", self.status())

    def set_site(self, site: str, control: str, testapp: str, error_message: str = "") -> None:
        self.site_states[site] = {"control": control, "testapp": testapp,
                                  "error_message": error_message}
        self.emit("sites", None)

    # -- queries -------------------------------------------------------------------------

    def status(self) -> dict:
        return {
            "device_id": self.config.device_id, "handler": self.config.handler_id,
            "environment": self.config.environment, "state": self.state,
            "error_message": self.message, "sites": list(self.sites),
            "site_states": copy.deepcopy(self.site_states), "lot_number": self.lot_number,
            "program": self.job.testapp_script_path if self.job else "",
            "parts": self.lot.parts_tested if self.lot else 0, "datalog": None,
            "connected": True,
        }

    def lotdata(self) -> dict | None:
        if self.lot is None:
            return None
        return {"REC_TYP": 1, "REC_SUB": 10, "LOT_ID": self.lot_number,
                "PART_TYP": "HS2CQFN16T7A_FT1A", "NODE_NAM": "SCT-81-1F.Master",
                "rec_id": "MIR"}

    def usersettings(self) -> dict:
        return {"testoptions": self.settings.testoptions(), "loglevel": self.loglevel}

    # -- commands ------------------------------------------------------------------------

    def _refuse(self, command: str, rtype: str, message: str, origin: str) -> m.ErrorResponse:
        self.metrics.commands_refused += 1
        self.log.warn("{origin} command {command} refused ({rtype}): {reason}",
                      origin=origin, command=command, rtype=rtype, reason=message)
        return m.ErrorResponse(command_type=command, response_type=rtype, state=self.state,
                               message=message)

    def command(self, msg: Any, origin: str = "handler") -> Any:
        self.commands.append((msg, origin))
        state = self.state
        busy = state in ("loading", "testing", "unloading")
        if isinstance(msg, m.Identify):
            return m.IdentifyResponse(name=self.config.device_id)
        if isinstance(msg, m.Load):
            if busy:
                return self._refuse("load", "busy", "load refused: busy", origin)
            if state == "ready":
                return self._refuse("load", "havelot",
                                    "load refused: a lot is already loaded (ready)", origin)
            if state != "initialized":
                return self._refuse("load", "error", f"load refused in {state}", origin)
            if msg.lot_number != KNOWN_LOT:
                return self._refuse("load", "error",
                                    f"load refused: no job for lot {msg.lot_number}", origin)
            self.lot = FakeLot(self.sites)
            self.lot_number = msg.lot_number
            self.job = SimpleNamespace(
                lot_number=msg.lot_number, sblot_id="001", part_typ="HS2C", pkg_typ="QF",
                tst_temp="25", user_txt="FT1 ROOM", testapp_script_path="hallsens2_ft1.py",
                cwd="programs", path="/jobs/le306426001.xml", testapp_script_args=("-v",),
                bins=tuple(SimpleNamespace(sbin=b[0], hbin=b[1], name=b[2], group=b[3],
                                           description="") for b in BINS))
            self.emit("usersettings", self.usersettings())
            self.emit("bintable", self.lot.bintable())
            self.emit("lot", None)
            self.set_state("loading")
            for s in self.sites:
                self.set_site(s, "busy", "idle")
            if not self.hold_loading:
                self.set_state("ready")
            return None
        if isinstance(msg, m.Next):
            if busy:
                return self._refuse("next", "busy", "next refused: busy", origin)
            if state in ("initialized",):
                return self._refuse("next", "notlot", "next refused: no lot is loaded", origin)
            if state != "ready":
                return self._refuse("next", "error", f"next refused in {state}", origin)
            sites = [s.siteid for s in msg.sites] if msg.sites else list(self.sites)
            for s in sites:
                if s not in self.sites:
                    return self._refuse("next", "error",
                                        f"next refused: site {s} is not configured", origin)
            self.run_part(sites)
            return None
        if isinstance(msg, m.Unload):
            if busy:
                return self._refuse("unload", "busy", "unload refused: busy", origin)
            if state == "initialized":
                return self._refuse("unload", "notlot", "unload refused: no lot is loaded",
                                    origin)
            if state != "ready":
                return self._refuse("unload", "error", f"unload refused in {state}", origin)
            self.set_state("unloading")
            self.emit("finalised", "/tmp/x.stdf")
            self.set_state("initialized")
            return None
        if isinstance(msg, m.Reset):
            if busy:
                return self._refuse("reset", "busy", "reset refused: busy", origin)
            if state == "ready":
                return self._refuse("reset", "havelot", "reset refused: a lot is loaded",
                                    origin)
            self.set_state("initialized")
            return None
        raise TypeError(f"not a handler command: {msg!r}")

    def run_part(self, sites: list[str], cycle: float = 0.2) -> None:
        assert self.lot is not None
        self.part_counter += 1
        self.set_state("testing")
        if not self.lot.results:
            self.emit("lotdata", self.lotdata())
        for s in sites:
            records = result_records(s, self.part_counter, self.next_bins.get(s, 1),
                                     self.next_result)
            self.lot.add(s, records)
            self.metrics.parts += 1
            self.emit("testresult", list(records))
        self.metrics.cycles += 1
        self.set_state("ready")
        self.emit("part", cycle)

    def update_settings(self, items: Any) -> None:
        if self.state not in ("initialized", "ready"):
            raise SettingsError(f"usersettings refused: not allowed in {self.state}")
        self.settings.update(items)
        self.emit("usersettings", self.usersettings())

    def set_loglevel(self, level: Any) -> None:
        if isinstance(level, bool) or level not in (10, 20, 30, 40):
            raise ValueError(f"setloglevel refused: level {level!r} is not one of 10, 20, 30, 40")
        self.loglevel = level
        if self.logs is not None:
            self.logs.set_level(level)
        self.emit("usersettings", self.usersettings())

    def release_alarm(self, alarm_id: Any, operator: Any, comment: Any) -> dict:
        from ate.master.alarming import AlarmError
        row = next((r for r in self.alarms.rows if r["id"] == alarm_id), None)
        if row is None:
            raise AlarmError(404, f"alarm {alarm_id}: no such alarm")
        self.released.append((alarm_id, operator, comment))
        row.update(state="released", released_by=operator, comment=comment)
        return dict(row)

    def bin_map(self, sbin: Any, hbin: Any) -> None:
        if self.state != "ready" or self.lot is None:
            raise ValueError(f"binMap refused: allowed in ready only (state {self.state})")
        for name, v in (("sBin", sbin), ("hBin", hbin)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
                raise ValueError(f"binMap refused: {name} {v!r} is not an integer 0..65535")
        try:
            self.lot.set_hbin(sbin, hbin)
        except KeyError as e:
            raise ValueError(f"binMap refused: {e}") from None
        self.emit("bintable", self.lot.bintable())


@pytest.fixture
def logbuffer():
    """A LogBuffer observing the global log publisher for the test's duration."""
    buf = LogBuffer(level=20)
    globalLogPublisher.addObserver(buf)
    try:
        yield buf
    finally:
        globalLogPublisher.removeObserver(buf)


@pytest.fixture
def cell(logbuffer):
    return FakeCell(logs=logbuffer)


@pytest.fixture
def fakes():
    """The fake cell's helpers (test modules cannot import conftest reliably)."""
    return SimpleNamespace(FakeCell=FakeCell, FakeLot=FakeLot, make_config=make_config,
                           KNOWN_LOT=KNOWN_LOT, result_records=result_records)
