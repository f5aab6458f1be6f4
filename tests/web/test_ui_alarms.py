"""The operator UI's alarms panel, hold banner and Release form (protocol §15.2) in headless
Chromium against a LIVE master (mosquitto, build_master, simulated sites; the child of
test_ui_charts.py).

Site 1 gets a bin storm (soft bin 12, a fail) from its second part on: a ``bin_limit``
rule (notify) and a ``consecutive_fails`` rule (hold) fire.  The alarms show up live from
the ``alarm`` frames and again from ``GET /api/v1/alarms`` after a reload; the hold shows
the banner and disables Next; a Release without a comment sends nothing; a Release with
operator and comment releases the alarm (``GET /api/v1/alarms`` shows it released, by that
operator), the banner goes and the next part runs.
"""

from __future__ import annotations

import pytest

from tests.web.test_ui_charts import (
    T,
    api,
    browser_page,
    live_master,
    load_lot,
    run_cycles,
    wait_ready,
)

ALARMS_SPEC = {
    "sites": ["0", "1", "2", "3"], "seed": 7, "test_time": 0.05,
    "faults": {"bin_storm": {"site": "1", "after": 1, "sbin": 12}},
    "alarms": [
        {"kind": "bin_limit", "name": "opens", "sbin": 12, "max_count": 1, "min_parts": 1},
        {"kind": "consecutive_fails", "name": "contact", "count": 3, "action": "hold"},
    ],
}


@pytest.fixture
def live():
    yield from live_master(ALARMS_SPEC)


@pytest.fixture
def ui():
    yield from browser_page()


def test_alarm_hold_and_release_in_the_ui(live, ui):
    page, expect, errors = ui
    releases: list[str] = []
    page.on("request", lambda r: releases.append(r.url) if "/release" in r.url else None)
    page.goto(live + "/")
    expect(page.locator("#conn")).to_have_text("online", timeout=T)
    expect(page.locator("#state")).to_have_text("initialized", timeout=T)
    expect(page.locator("#alarms-none")).to_be_visible()
    expect(page.locator("#hold-banner")).to_be_hidden()
    load_lot(page, expect)

    # parts until the hold: at most 5 (site 1 fails from its second part on)
    parts = 0
    for _ in range(5):
        parts = run_cycles(page, 1, start=parts)
        if page.locator("#hold-banner").is_visible():
            break
    banner = page.locator("#hold-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Lot held by alarm contact:")
    expect(page.locator("#btn-next")).to_be_disabled()
    listed = api(live, "/api/v1/alarms")
    held = listed["held"]
    by_name = {a["name"]: a for a in listed["alarms"]}
    assert by_name["contact"]["id"] == held and by_name["contact"]["site"] == "1"
    assert by_name["opens"]["action"] == "notify" and by_name["opens"]["sbin"] == 12
    expect(banner).to_have_attribute("data-alarm", str(held))
    expect(page.locator("#errors")).to_contain_text("alarm contact:")

    # both alarms in the panel, live from the alarm frames, newest first
    rows = page.locator("#alarms-table tbody tr")
    expect(rows).to_have_count(len(listed["alarms"]))
    hold_row = page.locator(f'#alarms-table tr[data-id="{held}"]')
    expect(hold_row).to_have_attribute("data-state", "raised")
    expect(hold_row).to_have_attribute("data-action", "hold")
    expect(hold_row.locator('[data-col="where"]')).to_have_text("site 1")
    expect(hold_row.locator('[data-col="message"]')).to_have_text(by_name["contact"]["message"])
    notify_row = page.locator(f'#alarms-table tr[data-id="{by_name["opens"]["id"]}"]')
    expect(notify_row.locator('[data-col="where"]')).to_have_text("sbin 12")
    expect(notify_row.locator('[data-col="kind"]')).to_have_text("bin_limit")
    ids = [int(i) for i in rows.evaluate_all("rs => rs.map((r) => r.dataset.id)")]
    assert ids == sorted(ids, reverse=True)

    # ... and the same after a reload, from GET /api/v1/alarms
    page.reload()
    expect(page.locator("#conn")).to_have_text("online", timeout=T)
    expect(rows).to_have_count(len(listed["alarms"]))
    expect(hold_row).to_have_attribute("data-state", "raised")
    expect(banner).to_be_visible()

    # the banner's button leads to the form; without a comment nothing is sent
    page.click("#hold-release")
    form = hold_row.locator("form.release")
    expect(form.locator('input[name="operator"]')).to_be_focused()
    form.locator('input[name="operator"]').fill("alice")
    form.locator("button").click()
    assert form.evaluate("f => f.checkValidity()") is False
    assert form.locator('input[name="comment"]').evaluate("i => i.validity.valueMissing")
    assert releases == []
    assert api(live, "/api/v1/alarms")["held"] == held

    # operator and comment: released
    form.locator('input[name="comment"]').fill("probe card cleaned")
    form.locator("button").click()
    expect(hold_row).to_have_attribute("data-state", "released", timeout=T)
    expect(hold_row.locator('[data-col="state"]')).to_have_text("released by alice")
    expect(banner).to_be_hidden(timeout=T)
    expect(page.locator("#btn-next")).to_be_enabled(timeout=T)
    assert len(releases) == 1 and releases[0].endswith(f"/api/v1/alarms/{held}/release")
    after = {a["id"]: a for a in api(live, "/api/v1/alarms")["alarms"]}
    assert after[held]["state"] == "released"
    assert after[held]["released_by"] == "alice"
    assert after[held]["comment"] == "probe card cleaned"
    assert api(live, "/api/v1/alarms")["held"] is None
    expect(notify_row).to_have_attribute("data-state", "raised")

    # the lot goes on
    page.locator("#btn-next").click()
    wait_ready(page, parts + 4)
    assert errors == [], errors
