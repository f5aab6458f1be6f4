"""The operator UI's site grid at 255 sites (the most one STDF head holds), in headless
Chromium at 1280 px width against a served site with a scripted fake cell of 255 sites.

The child process (this file run as a script) serves make_site() on a free port of
127.0.0.1, prints it and is stopped by its PID.  The second ``next`` crashes site 200's
TestApp.  With ATE_UI_SCREENSHOT=<path> the screenshot is also kept there.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:  # run as a script (the served child)
    sys.path.insert(0, REPO)
from tests.web.chromium import browser_page, served_by  # noqa: E402
from tests.web.test_browser import LOT  # noqa: E402

N_SITES = 255
WIDTH = 1280
CRASH_SITE = "200"


def _serve() -> None:  # pragma: no cover - runs in the child process
    """Serve make_site() with a scripted fake cell of 255 sites; print the port."""
    sys.path[:0] = [HERE, REPO]
    from twisted.internet import reactor
    from twisted.logger import globalLogPublisher

    from ate.master.logs import LogBuffer
    from ate.protocol import messages as m
    from ate.web.site import make_site
    from conftest import FakeCell, make_config  # the fake cell of the web tests

    logs = LogBuffer(level=20)
    globalLogPublisher.addObserver(logs)

    class ScriptedCell(FakeCell):
        def command(self, msg, origin="handler"):
            if isinstance(msg, m.Next) and self.state == "ready" and self.part_counter == 1:
                self.next_bins = {CRASH_SITE: 12}
                super().command(msg, origin)
                self.set_site(CRASH_SITE, "error", "crash", "TestApp exited with code 1")
                self.set_state("softerror", f"site {CRASH_SITE}: TestApp crashed")
                return None
            return super().command(msg, origin)

    sites = tuple(str(i) for i in range(N_SITES))
    cell = ScriptedCell(config=make_config(sites=sites), logs=logs)
    site = make_site(cell, reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


@pytest.fixture
def served():
    yield from served_by([os.path.abspath(__file__), "serve"], "site")


@pytest.fixture
def ui():
    """A headless Chromium page 1280 px wide; yields (page, expect, errors)."""
    yield from browser_page(WIDTH, 900)


# every tile's box, the page's scroll width and the viewport width
_GEOMETRY = """() => {
  const tiles = [...document.querySelectorAll('#sites .site')].map((t) => {
    const r = t.getBoundingClientRect();
    return [t.id, r.left, r.right, r.width, r.height];
  });
  return { tiles, innerWidth: window.innerWidth,
           scrollWidth: document.documentElement.scrollWidth };
}"""


def _check_geometry(page) -> None:
    g = page.evaluate(_GEOMETRY)
    assert len(g["tiles"]) == N_SITES
    assert [t[0] for t in g["tiles"]] == [f"site-{i}" for i in range(N_SITES)]
    outside = [t for t in g["tiles"] if t[1] < 0 or t[2] > g["innerWidth"]]
    assert outside == [], outside[:5]
    # small, not illegible: at least 28 px square
    assert min(t[3] for t in g["tiles"]) >= 28 and min(t[4] for t in g["tiles"]) >= 28
    # the page itself never scrolls sideways (wide tables scroll inside their cards)
    assert g["scrollWidth"] <= g["innerWidth"], g["scrollWidth"]


def test_site_grid_at_255_sites(served, ui, tmp_path):
    page, expect, errors = ui
    page.goto(served + "/")
    expect(page.locator("#conn")).to_have_text("online")
    expect(page.locator("#state")).to_have_text("initialized")
    tiles = page.locator("#sites .site")
    expect(tiles).to_have_count(N_SITES)
    expect(page.locator("#sites")).to_have_class(re.compile(r"\bcompact\b"))
    # before a lot: Control idle, no TestApp
    expect(page.locator("#sites .tile-idle")).to_have_count(N_SITES)
    expect(page.locator("#site-17 .lbl")).to_have_text("I")
    expect(page.locator("#site-17")).to_have_attribute(
        "title", "Site 17\nControl: idle\nTestApp: terminated")
    _check_geometry(page)

    # a load through the UI: every site ready, counted in the legend
    page.fill("#lot-input", LOT)
    page.click("#btn-load")
    expect(page.locator("#state")).to_have_text("ready")
    expect(page.locator("#sites .tile-ready")).to_have_count(N_SITES)
    expect(page.locator("#site-254 .lbl")).to_have_text("R")
    expect(page.locator("#sites-legend")).to_have_text(f"R ready {N_SITES}")

    # a part on every site: yield and bins get a column per site, the page stays 1280 wide
    page.click("#btn-next")
    expect(page.locator('#yield-table tr[data-group="sum"] td[data-site="-1"]')
           ).to_have_text(f"{N_SITES} (100.0%)")
    expect(page.locator('#yield-table tr[data-group="sum"] td')).to_have_count(N_SITES + 2)
    expect(page.locator('#bin-table tr[data-sbin="1"] td').last).to_have_text(str(N_SITES))
    _check_geometry(page)

    # the second part crashes site 200: a red tile, its reason in the tooltip
    page.click("#btn-next")
    expect(page.locator("#state")).to_have_text("softerror")
    crashed = page.locator(f"#site-{CRASH_SITE}")
    expect(crashed).to_have_class("site tile tile-crash")
    expect(crashed.locator(".lbl")).to_have_text("X")
    expect(crashed).to_have_attribute(
        "title", f"Site {CRASH_SITE}\nControl: error\nTestApp: crash\n"
                 "TestApp exited with code 1")
    expect(page.locator("#sites .tile-ready")).to_have_count(N_SITES - 1)
    expect(page.locator('#sites-legend [data-state="crash"]')).to_have_text("X crash 1")
    expect(page.locator('#errors li[data-site="200"]')).to_contain_text(
        "TestApp exited with code 1")
    _check_geometry(page)

    shot = str(tmp_path / "ui-sites-255.png")
    page.screenshot(path=shot, full_page=True)
    assert os.path.getsize(shot) > 10_000
    keep = os.environ.get("ATE_UI_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
        page.locator("#sites-card").screenshot(path=os.path.splitext(keep)[0] + "-grid.png")
    # reset back: the tiles follow
    page.click("#btn-reset")
    expect(page.locator("#state")).to_have_text("initialized")
    assert errors == [], errors


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    _serve()
