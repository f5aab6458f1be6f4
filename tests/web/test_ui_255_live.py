"""The operator UI keeps up with a 255-site lot: headless Chromium on the live page of a
LIVE master (mosquitto, the real master, 255 simulated sites at test time 0, in a child
process stopped by its PID; see ``live_master`` in test_ui_charts.py).

The cycles are driven through the REST API as fast as the master goes, not by the page:
a page that falls behind cannot slow the lot down, so it either keeps up with the feed
(about 650 KB a cycle: 255 ``testresult`` frames, a 75 KB ``yield``, a 48 KB ``bintable``)
or the feed drops it ("output backlog above ... bytes", a WARNING of the master) and the
page reconnects.  The page must never be dropped (one websocket open, no such log line),
must draw the feed's frames coalesced (fewer drawings than frames), and must end showing
the lot's final counts, cell by cell as the master has them.

What the lot cost the page is printed (``pytest -s``): its own figures (``window.ateUi``:
milliseconds per message type, per card and chart drawn, per frame) and Chromium's
(CDP ``Performance.getMetrics``: the CPU time of the page's main thread, layout, style).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any, Callable

import pytest

from tests.web.test_browser import LOT
from tests.web.test_ui_charts import api, browser_page, live_master

N_SITES = 255
CYCLES = 30
SPEC = {"sites": [str(i) for i in range(N_SITES)], "seed": 7, "test_time": 0.0}
#: a cycle of 255 sites at test time 0 takes about half a second; allow busy cores
CYCLE_TIMEOUT = 20.0
#: Playwright timeout (ms) for what crosses processes
T = 30_000
#: Chromium's page metrics (seconds) printed, in ms: the CPU time of the page's main
#: thread and of its renderer process; the main thread's time in tasks, script, layout
#: and style (wall clock)
METRICS = ("ThreadTime", "ProcessTime", "TaskDuration", "ScriptDuration", "LayoutDuration",
           "RecalcStyleDuration")


@pytest.fixture
def live():
    yield from live_master(SPEC)


@pytest.fixture
def ui():
    yield from browser_page(1280, 900)


def post(base: str, path: str, body: Any) -> tuple[int, Any]:
    """POST ``body``; (HTTP status, JSON reply), a refusal (4xx) included."""
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_status(base: str, what: str, done: Callable[[dict], bool], timeout: float) -> dict:
    """Poll GET /api/v1/status until ``done(status)``; the status."""
    deadline = time.monotonic() + timeout
    while True:
        status = api(base, "/api/v1/status")
        if done(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"the master did not get {what} in {timeout} s: {status}")
        time.sleep(0.02)  # another process: nothing to wait on but its answers


def page_metrics_ms(cdp: Any) -> dict[str, float]:
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return {k: metrics.get(k, 0.0) * 1000 for k in METRICS}


_YIELD_CELLS = """() => [...document.querySelectorAll('#yield-table tbody td[data-site]')]
  .map((td) => [td.parentElement.dataset.group, td.dataset.site, td.textContent])"""
_BIN_ROWS = """() => [...document.querySelectorAll('#bin-table tbody tr')]
  .map((tr) => [tr.dataset.sbin, [...tr.cells].map((td) => td.textContent)])"""


def check_tables(page: Any, lot: dict) -> None:
    """The yield and bin tables as the master has them, cell by cell."""
    want = {(r["name"], r["siteid"]): r for r in lot["yields"]}
    cells = page.evaluate(_YIELD_CELLS)
    assert len(cells) == len(want) == (N_SITES + 1) * len({r["name"] for r in lot["yields"]})
    for group, site, text in cells:
        r = want[(group, site)]
        m = re.fullmatch(r"(\d+) \((\d+\.\d)%\)", text)
        assert m, (group, site, text)
        assert int(m[1]) == r["count"], (group, site, text, r)
        assert float(m[2]) == pytest.approx(r["value"], abs=0.051), (group, site, text, r)
    rows = page.evaluate(_BIN_ROWS)
    assert [int(sbin) for sbin, _ in rows] == [r["sBin"] for r in lot["bintable"]]
    for (_, texts), r in zip(rows, lot["bintable"], strict=True):
        counts = [c["count"] for c in r["siteCounts"]]
        head = ["" if r[k] is None else str(r[k]) for k in ("name", "sBin", "hBin", "type")]
        assert texts == [*head, *map(str, counts), str(sum(counts))], r["sBin"]


def test_ui_keeps_up_with_255_sites(live, ui):
    page, expect, errors = ui
    page.goto(live + "/")
    expect(page.locator("#conn")).to_have_text("online", timeout=T)
    expect(page.locator("#state")).to_have_text("initialized", timeout=T)
    expect(page.locator("#sites .site")).to_have_count(N_SITES, timeout=T)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")

    code, reply = post(live, "/api/v1/commands/load", {"lot_number": LOT})
    assert code == 202, reply
    wait_status(live, "ready", lambda s: s["state"] == "ready", CYCLE_TIMEOUT)
    expect(page.locator("#state")).to_have_text("ready", timeout=T)
    before = page_metrics_ms(cdp)
    started = time.monotonic()
    for cycle in range(1, CYCLES + 1):
        code, reply = post(live, "/api/v1/commands/next", {})
        assert code == 202, (cycle, reply)
        wait_status(live, f"{cycle * N_SITES} parts",
                    lambda s, n=cycle * N_SITES: s["state"] == "ready" and s["parts"] == n,
                    CYCLE_TIMEOUT)
    elapsed = time.monotonic() - started
    parts = CYCLES * N_SITES

    # the page ends showing the lot: the parts count, every site ready, the newest part
    # on top of the recent parts, the yield and bin tables as the master has them
    expect(page.locator("#parts")).to_have_text(str(parts), timeout=T)
    expect(page.locator("#sites-legend")).to_have_text(f"R ready {N_SITES}", timeout=T)
    expect(page.locator('#yield-table tr[data-group="sum"] td[data-site="-1"]')
           ).to_have_text(f"{parts} (100.0%)", timeout=T)
    rows = page.locator("#parts-table tbody tr")
    expect(rows).to_have_count(50)
    expect(rows.first.locator("td").first).to_have_text(str(parts))
    lot = api(live, "/api/v1/lot")
    assert lot["parts_tested"] == parts
    check_tables(page, lot)
    after = page_metrics_ms(cdp)
    figures = page.evaluate("() => window.ateUi")
    logs = api(live, "/api/v1/logs")["logs"]
    report(elapsed, before, after, figures)

    # never dropped: one websocket connection all along, and the master logged no drop
    drops = [e for e in logs if "dropped" in e.get("description", "")]
    assert drops == [], drops[:3]
    assert (figures["opens"], figures["closes"]) == (1, 0), figures
    # every part's frame arrived; yields and bin tables were drawn coalesced, fewer times
    # than they came, and the page kept drawing (a frame waits a second at most)
    messages, renders = figures["messages"], figures["renders"]
    assert messages["testresult"]["n"] == parts
    assert renders["yield"]["n"] < messages["yield"]["n"], (renders, messages)
    assert renders["bins"]["n"] < messages["bintable"]["n"], (renders, messages)
    assert renders["parts"]["n"] < messages["testresult"]["n"] / 10, (renders, messages)
    assert figures["frames"]["n"] >= elapsed / 2, (figures["frames"], elapsed)
    assert errors == [], errors


def report(elapsed: float, before: dict, after: dict, figures: dict) -> None:
    """Print what the lot cost the page (``pytest -s`` shows it)."""
    used = {k: after[k] - before[k] for k in after}
    print(f"\n{CYCLES} cycles of {N_SITES} sites in {elapsed:.1f} s "
          f"({CYCLES / elapsed:.2f} cycles/s); websocket opens {figures.get('opens')}")
    print("page ms: " + ", ".join(f"{k} {v:.0f}" for k, v in used.items())
          + f" (main thread CPU {used['ThreadTime'] / elapsed / 10:.0f}% of the lot's time)")
    for title, table in (("message", figures.get("messages", {})),
                         ("card", figures.get("renders", {})),
                         ("chart", figures.get("charts", {}))):
        for kind, c in sorted(table.items()):
            n = max(c["n"], 1)
            size = f"  {c['bytes'] / n / 1024:7.1f} KB" if c.get("bytes") else ""
            print(f"  {title:7} {kind:20} n={c['n']:6}  {c['ms'] / n:8.3f} ms each  "
                  f"{c['ms']:8.0f} ms in all{size}")
    frames = figures.get("frames")
    if frames:
        n = max(frames["n"], 1)
        print(f"  frames drawn {frames['n']}: {frames['ms'] / n:.2f} ms each in the page's "
              f"code, {frames['cost'] / n:.2f} ms with the browser's style, layout and "
              f"paint; the longest {frames['max']:.1f} ms")
