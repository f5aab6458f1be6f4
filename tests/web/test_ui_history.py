"""The operator UI's history page (/history, protocol §15.3) in headless Chromium against a
LIVE master (mosquitto, build_master, simulated sites; the child of test_ui_charts.py), and
every page of the UI free of JavaScript errors.

A lot of 12 parts on 4 sites (site 3 bins every part 12, so a ``bin_limit`` alarm fires)
is loaded, tested and unloaded through the UI.  The history page then lists it as
``GET /api/v1/lots`` does; a click shows its summary as ``GET /api/v1/lots/{id}`` has it
(per-site yields, bins, the alarm), and its Download STDF link yields the datalog, which
pystdf reads back: the lot's MIR and its 12 PRRs.
"""

from __future__ import annotations

import pytest

from tests.stdfread import pystdf_records
from tests.web.test_ui_charts import (
    LOT,
    SITES,
    T,
    api,
    browser_page,
    live_master,
    load_lot,
    run_cycles,
)

HISTORY_SPEC = {
    "sites": SITES, "seed": 3, "test_time": 0.05,
    "faults": {"bin_storm": {"site": "3", "after": 0, "sbin": 12}},
    "alarms": [{"kind": "bin_limit", "name": "opens", "sbin": 12, "max_count": 1,
                "min_parts": 1}],
}
#: the UI's routes (protocol §11.1 and /history) and an element each must show
PAGES = {"/": "#charts", "/control": "#control", "/information": "#lotdata-card",
         "/records": "#parts-card", "/logging": "#logging", "/bin": "#bin-card",
         "/history": "#lots-table"}


@pytest.fixture(scope="module")
def live():
    yield from live_master(HISTORY_SPEC)


@pytest.fixture
def ui():
    yield from browser_page()


def _pct(value: float) -> str:
    return f"{value:.1f}%"


def test_history_lists_the_lot_and_downloads_its_stdf(live, ui):
    page, expect, errors = ui
    page.goto(live + "/")
    expect(page.locator("#conn")).to_have_text("online", timeout=T)
    expect(page.locator("#state")).to_have_text("initialized", timeout=T)
    load_lot(page, expect)
    run_cycles(page, 3)
    page.click("#btn-unload")
    expect(page.locator("#state")).to_have_text("initialized", timeout=T)

    # the History link: the page changes without a reload, the feed stays up
    page.click("#nav-history")
    page.wait_for_url("**/history")
    expect(page.locator("#history")).to_be_visible()
    expect(page.locator("#live")).to_be_hidden()
    expect(page.locator("#nav-history")).to_have_class("active")
    lots = api(live, "/api/v1/lots")["lots"]
    assert lots and lots[0]["lot"] == LOT, lots
    lot = lots[0]
    assert lot["parts"] == 12 and lot["alarms"] >= 1
    rows = page.locator("#lots-table tbody tr")
    expect(rows).to_have_count(len(lots), timeout=T)
    row = page.locator(f'#lots-table tr[data-id="{lot["id"]}"]')
    for col, text in (("lot", LOT), ("part_type", lot["part_type"]),
                      ("program", lot["program"]), ("parts", "12"),
                      ("yield", _pct(lot["yield_percent"])), ("end_reason", lot["end_reason"])):
        expect(row.locator(f'[data-col="{col}"]')).to_have_text(text)
    expect(row.locator('[data-col="alarms"]')).to_have_text(str(lot["alarms"]))
    expect(page.locator("#lots-more")).to_be_hidden()

    # a click: the lot's summary
    row.click()
    detail = page.locator("#lot-detail")
    expect(detail).to_have_attribute("data-loaded", "1", timeout=T)
    expect(row).to_have_class("selected")
    full = api(live, f"/api/v1/lots/{lot['id']}")
    per_site = full.get("site_yields") or full["summary"]["per_site"]
    expect(page.locator("#lot-sites tbody tr")).to_have_count(len(SITES))
    for s in per_site:
        expect(page.locator(f'#lot-sites tr[data-site="{s["site"]}"] [data-col="yield"]')
               ).to_have_text(_pct(s["yield_percent"]))
    expect(page.locator('#lot-sites tr[data-site="3"] [data-col="yield"]')).to_have_text("0.0%")
    bins = [b for b in (full.get("soft_bins") or full["summary"]["bins"]) if b["total"]]
    expect(page.locator("#lot-bins tbody tr")).to_have_count(len(bins))
    assert sum(b["total"] for b in bins) == 12
    expect(page.locator('#lot-bins tr[data-sbin="12"] [data-col="total"]')).to_have_text(
        str(next(b["total"] for b in bins if b["sbin"] == 12)))
    expect(page.locator("#lot-alarms")).to_contain_text("opens")

    # Download STDF: the datalog, as pystdf reads it
    link = page.locator("#lot-stdf")
    expect(link).to_be_visible()
    with page.expect_download(timeout=T) as info:
        link.click()
    download = info.value
    assert download.suggested_filename == lot["datalog"]
    with open(download.path(), "rb") as fh:
        records = pystdf_records(fh.read())
    mir = [f for name, f in records if name == "MIR"]
    assert len(mir) == 1 and mir[0]["LOT_ID"] == LOT
    assert sum(1 for name, _ in records if name == "PRR") == 12
    assert any(name == "DTR" and f["TEXT_DAT"].startswith("ALARM opens") for name, f in records)

    # back to the live page with the browser's back button
    page.go_back()
    expect(page.locator("#live")).to_be_visible()
    expect(page.locator("#history")).to_be_hidden()
    assert errors == [], errors


def test_no_javascript_error_on_any_page(live, ui):
    """Every UI route, opened directly: its page shows, and no page error or console error
    (a failed request of the page included) happens."""
    page, expect, errors = ui
    for path, selector in PAGES.items():
        response = page.goto(live + path)
        assert response is not None and response.status == 200, (
            f"GET {path}: HTTP {response.status if response else None} (a UI route serves "
            "index.html, protocol §11.1; /history: ate.web.site.UI_ROUTES)")
        expect(page.locator("#conn")).to_have_text("online", timeout=T)
        expect(page.locator(selector)).to_be_visible()
        if path == "/history":
            page.wait_for_function("() => /^[0-9]+$/.test("
                                   "document.getElementById('lots').dataset.loaded || '')")
        else:
            # the production figures came (a frame or GET /api/v1/production)
            page.wait_for_function("() => document.querySelector("
                                   "'#production-figures dd[data-key=\"parts\"]') !== null")
        assert errors == [], f"{path}: {errors}"
