"""The operator UI's production charts (protocol §15) in headless Chromium against a LIVE
master: a private mosquitto, the real master (build_master) and simulated sites on free
ports of 127.0.0.1, in a child process (this file run as a script) stopped by its PID.

The lot runs 40 parts on 4 sites; site 2 gets a bin storm (soft bin 21, a fail) from its
third part on, and a ``site_divergence`` rule names it.  Every chart is checked against
the master's own figures: the rolling yield per site against ``GET /api/v1/lot`` and the
PRRs of ``GET /api/v1/results``, the bin pareto against the bin table, the site bars and
their highlight against the yields and the alarms, the time histogram and the figures
against ``GET /api/v1/production``, the E10 timeline against its ``e10_timeline``.
With ATE_UPDATE_SCREENSHOT=1 the mid-lot screenshot is saved as docs/ui-screenshot.png.

The child machinery (``live_master``, ``browser_page``, ``run_cycles``, ``api``) is
shared with test_ui_alarms.py and test_ui_history.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:  # run as a script (the served child)
    sys.path.insert(0, REPO)
from tests.web import chromium  # noqa: E402
from tests.web.chromium import served_by  # noqa: E402
from tests.web.test_browser import LOT  # noqa: E402

SCREENSHOT = os.path.join(REPO, "docs", "ui-screenshot.png")
SITES = ["0", "1", "2", "3"]
#: Playwright timeout for what crosses processes (master, sites, broker) on busy cores
T = 20_000

CHARTS_SPEC = {
    "sites": SITES, "seed": 5, "test_time": 0.05,
    "faults": {"bin_storm": {"site": "2", "after": 2, "sbin": 21}},
    "alarms": [{"kind": "site_divergence", "name": "divergence", "z": 2.5, "min_parts": 6}],
}


# -- the live cell (child process) -------------------------------------------------------------


def _serve_live(spec: dict[str, Any]) -> None:  # pragma: no cover - runs in the child process
    """mosquitto + the real master + simulated sites as ``spec`` says; print the web port."""
    import atexit
    import tempfile

    from twisted.internet import reactor

    from ate.config import master_config_from_dict, sim_config_from_dict
    from ate.sim.sites import SimSitesService
    from ate.tap import build_master
    from ate.testing.broker import Mosquitto, free_port

    work = tempfile.mkdtemp(prefix="ate-ui-live-")
    atexit.register(shutil.rmtree, work, True)
    broker = Mosquitto().start()
    atexit.register(broker.stop)
    jobs = os.path.join(work, "jobs")
    os.makedirs(jobs)
    shutil.copy(os.path.join(REPO, "tests", "fixtures", "jobs", "le306426001.xml"), jobs)
    web_port = free_port()
    sites = spec.get("sites", SITES)
    cfg = master_config_from_dict({
        "broker_host": broker.host, "broker_port": broker.port, "device_id": "SCT-81-1F",
        "sites": sites, "Handler": "HTO92-20F", "environment": "F1",
        "webui_host": "127.0.0.1", "webui_port": web_port, "jobsource": "filesystem",
        "jobformat": "xml.semi-ate", "filesystemdatasource_path": jobs,
        "filesystemdatasource_jobpattern": "le#jobname#.xml", "stdf_directory": work,
        "log_directory": os.path.join(work, "log"), "loglevel": 20,
        "alarms": spec.get("alarms", []),
    }, source="ui-live")
    top, _cell = build_master(cfg, reactor)
    sim = SimSitesService(reactor, sim_config_from_dict({
        "broker_host": broker.host, "broker_port": broker.port, "device_id": "SCT-81-1F",
        "sites": sites, "test_time": spec.get("test_time", 0.05), "seed": spec.get("seed", 5),
        "faults": spec.get("faults", {})}, source="ui-live"))
    top.startService()
    sim.startService()
    reactor.addSystemEventTrigger("before", "shutdown", sim.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    print(web_port, flush=True)
    reactor.run()


def live_master(spec: dict[str, Any]) -> Iterator[str]:
    """Run the live cell of ``spec`` in a child process; yield its web URL; stop it by PID."""
    yield from served_by([os.path.abspath(__file__), "serve-live", json.dumps(spec)],
                         "live cell")


def api(base: str, path: str, body: Any = None) -> Any:
    """GET (or POST ``body``) a JSON route of the master."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def browser_page(width: int = 1280, height: int = 900) -> Iterator[tuple[Any, Any, list[str]]]:
    """A headless Chromium page; yields (page, expect, errors): errors collects uncaught page
    errors and console errors (a failed request of the page shows there too)."""
    yield from chromium.browser_page(width, height, console=True, timeout_ms=T, downloads=True)


def load_lot(page: Any, expect: Any) -> None:
    page.fill("#lot-input", LOT)
    page.click("#btn-load")
    expect(page.locator("#state")).to_have_text("ready", timeout=T)
    expect(page.locator("#lot-number")).to_have_text(LOT, timeout=T)


def wait_ready(page: Any, parts: int) -> None:
    """Until the status shows ``parts`` parts tested and the master ready again."""
    page.wait_for_function(
        "([n]) => document.getElementById('parts').textContent === String(n)"
        " && document.getElementById('state').dataset.state === 'ready'", arg=[parts],
        timeout=T)


def run_cycles(page: Any, cycles: int, sites: int = 4, start: int = 0) -> int:
    """Press Next ``cycles`` times, each once the previous part is done; the parts count."""
    parts = start
    for _ in range(cycles):
        page.locator("#btn-next").click()
        parts += sites
        wait_ready(page, parts)
    return parts


# -- the charts --------------------------------------------------------------------------------


@pytest.fixture
def live():
    yield from live_master(CHARTS_SPEC)


@pytest.fixture
def ui():
    yield from browser_page()


def _attrs(page: Any, selector: str, *names: str) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        selector, "(els, names) => els.map((e) => Object.fromEntries("
        "names.map((n) => [n, e.getAttribute(n)])))", list(names))


def _pass_yield(yields: list[dict], site: str) -> float:
    return next(r["value"] for r in yields if r["siteid"] == site and r["name"] == "BT_PASS")


def test_charts_follow_a_live_lot(live, ui, tmp_path):
    page, expect, errors = ui
    page.goto(live + "/")
    expect(page.locator("#conn")).to_have_text("online", timeout=T)
    expect(page.locator("#state")).to_have_text("initialized", timeout=T)
    expect(page.locator("#chart-trend text.empty")).to_have_text("no parts yet")
    load_lot(page, expect)
    parts = run_cycles(page, 10)
    assert parts == 40

    lot = api(live, "/api/v1/lot")
    assert lot["parts_tested"] == 40
    yields, bintable = lot["yields"], lot["bintable"]
    groups = {row["sBin"]: row["type"] for row in bintable}
    results = api(live, "/api/v1/results")["results"]
    prrs: dict[str, list[bool]] = {s: [] for s in SITES}
    for records in results:
        prr = records[-1]
        prrs[str(prr["SITE_NUM"])].append(groups[prr["SOFT_BIN"]] == "BT_PASS")
    assert all(len(v) == 10 for v in prrs.values()), {s: len(v) for s, v in prrs.items()}

    # yield per site over the lot: 10 points per site; the window (25) holds the whole lot
    page.wait_for_function("() => [...document.querySelectorAll('#chart-trend polyline')]"
                           ".map((e) => e.dataset.points).join() === '10,10,10,10'")
    lines = _attrs(page, "#chart-trend polyline", "data-site", "data-points", "data-last")
    assert [x["data-site"] for x in lines] == SITES
    for line in lines:
        assert float(line["data-last"]) == pytest.approx(_pass_yield(yields, line["data-site"]),
                                                         abs=0.01)
    assert float(lines[2]["data-last"]) < float(lines[0]["data-last"])  # the storm shows
    # a window of 4 parts: the last point is the yield of each site's last 4 PRRs
    page.fill("#trend-window", "4")
    page.dispatch_event("#trend-window", "change")
    expect(page.locator("#chart-trend svg")).to_have_attribute("data-window", "4")
    for line in _attrs(page, "#chart-trend polyline", "data-site", "data-last"):
        last4 = prrs[line["data-site"]][-4:]
        assert float(line["data-last"]) == pytest.approx(sum(last4) / 4 * 100, abs=0.01)
    assert float(_attrs(page, '#chart-trend polyline[data-site="2"]', "data-last")[0]
                 ["data-last"]) == 0.0

    # bin pareto: one bar per soft bin with parts, largest first, counts as the bin table
    totals = {row["sBin"]: sum(c["count"] for c in row["siteCounts"]) for row in bintable}
    expected = sorted(((n, sb) for sb, n in totals.items() if n), key=lambda x: (-x[0], x[1]))
    bars = _attrs(page, "#chart-pareto rect[data-sbin]", "data-sbin", "data-count", "data-cum")
    assert [(int(b["data-count"]), int(b["data-sbin"])) for b in bars] == expected
    assert float(bars[-1]["data-cum"]) == pytest.approx(100.0)
    assert int(page.get_attribute("#chart-pareto svg", "data-total")) == 40
    assert bars[0]["data-sbin"] in ("1", "21")  # the good bin or the storm's bin leads

    # yield by site: the yields frame's BT_PASS value; the divergent site is highlighted
    alarms = api(live, "/api/v1/alarms")["alarms"]
    diverged = {a["site"] for a in alarms if a["kind"] == "site_divergence"
                and a["state"] == "raised"}
    assert "2" in diverged, alarms
    page.wait_for_function("() => document.querySelector("
                           "'#chart-sites rect[data-site=\"2\"][data-diverged=\"1\"]') !== null")
    site_bars = _attrs(page, "#chart-sites rect[data-site]", "data-site", "data-yield",
                       "data-parts", "data-diverged")
    assert [b["data-site"] for b in site_bars] == SITES
    for b in site_bars:
        assert float(b["data-yield"]) == pytest.approx(_pass_yield(yields, b["data-site"]),
                                                       abs=0.01)
        assert int(b["data-parts"]) == 10
        assert (b["data-diverged"] == "1") == (b["data-site"] in diverged)
    assert float(page.get_attribute("#chart-sites line.total", "data-yield")) == pytest.approx(
        _pass_yield(yields, "-1"), abs=0.01)
    # ... and the alarm is in the panel, naming the site
    row = page.locator('#alarms-table tr[data-kind="site_divergence"]').first
    expect(row).to_contain_text("site 2")
    expect(row).to_have_attribute("data-state", "raised")

    # test and index time: every cycle of the lot counted, summing to count x mean
    prod = api(live, "/api/v1/production")
    block = prod["lot"]
    assert block["cycles"] == 10 and block["parts"] == 40
    test_n, index_n = block["test_time_s"]["count"], block["index_time_s"]["count"]
    assert test_n == 10 and index_n >= 8
    page.wait_for_function(
        "([t, i]) => { const s = document.querySelector('#chart-cycle svg');"
        " return s && s.dataset.testCount === String(t) && s.dataset.indexCount === String(i); }",
        arg=[test_n, index_n])
    cycle = page.locator("#chart-cycle svg")
    assert float(cycle.get_attribute("data-test-sum")) == pytest.approx(
        block["test_time_s"]["mean"] * test_n, rel=1e-6, abs=1e-6)
    assert float(cycle.get_attribute("data-index-sum")) == pytest.approx(
        block["index_time_s"]["mean"] * index_n, rel=1e-6, abs=1e-6)
    drawn = _attrs(page, "#chart-cycle rect[data-kind]", "data-kind", "data-count")
    assert sum(int(r["data-count"]) for r in drawn if r["data-kind"] == "test") == test_n
    assert sum(int(r["data-count"]) for r in drawn if r["data-kind"] == "index") == index_n
    # the figures as the master computes them
    for key in ("parts", "cycles"):
        expect(page.locator(f'#production-figures dd[data-key="{key}"]')).to_have_text(
            str(block[key]))
    assert float(page.get_attribute('#production-figures dd[data-key="site_utilisation"]',
                                    "data-value")) == pytest.approx(block["site_utilisation"])
    expect(page.locator("#production-scope")).to_have_text(f"lot {LOT}")

    # the E10 timeline of the day: one segment per state change, in order
    states = [s for _, s in api(live, "/api/v1/production")["e10_timeline"]]
    assert states[-1] == "productive" and "standby" in states
    page.wait_for_function(
        "([want]) => [...document.querySelectorAll('#chart-e10 rect[data-state]')]"
        ".map((e) => e.dataset.state).join() === want", arg=[",".join(states)])

    # at most 4 drawings a second, however many frames came (40 results, their yields,
    # bin tables, statuses ...): at least 250 ms between two
    renders, elapsed_ms = page.evaluate(
        "() => [+document.getElementById('charts').dataset.renders, performance.now()]")
    assert 1 <= renders <= elapsed_ms / 250 + 1, (renders, elapsed_ms)

    # the UI mid-lot (ATE_UPDATE_SCREENSHOT=1 keeps it in docs/)
    page.fill("#trend-window", "25")
    page.dispatch_event("#trend-window", "change")
    expect(page.locator("#chart-trend svg")).to_have_attribute("data-window", "25")
    page.evaluate("() => { document.activeElement.blur(); window.scrollTo(0, 0); }")
    shot = (SCREENSHOT if os.environ.get("ATE_UPDATE_SCREENSHOT") == "1"
            else str(tmp_path / "ui-charts.png"))
    page.screenshot(path=shot)
    assert os.path.getsize(shot) > 20_000
    assert errors == [], errors


if __name__ == "__main__" and sys.argv[1:2] == ["serve-live"]:
    _serve_live(json.loads(sys.argv[2]))
