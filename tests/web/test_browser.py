"""The operator UI in headless Chromium (Playwright) against a served site.

The site runs in a child process (this file run as a script) with a scripted fake cell:
a load goes through ``loading`` to ``ready``; the third ``next`` ends in softerror with a
site error.  The child listens on a free port of 127.0.0.1, reports it on stdout and is
stopped by its PID.  The live test (real master, simulated sites) takes a screenshot
mid-lot; with ATE_UPDATE_SCREENSHOT=1 it is saved as docs/ui-screenshot.png.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:  # run as a script (the served child)
    sys.path.insert(0, REPO)
from tests.web.chromium import ARGS, CHROMIUM, browser_page, served_by  # noqa: E402,F401

SCREENSHOT = os.path.join(REPO, "docs", "ui-screenshot.png")
LOT = "306426.001"


def _serve() -> None:  # pragma: no cover - runs in the child process
    """Serve make_site() with a scripted fake cell on a free port; print the port."""
    sys.path[:0] = [HERE, REPO]
    from twisted.internet import reactor
    from twisted.logger import globalLogPublisher

    from ate.master.logs import LogBuffer
    from ate.web.site import make_site
    from conftest import FakeCell  # the fake cell of these tests

    logs = LogBuffer(level=20)
    globalLogPublisher.addObserver(logs)

    class ScriptedCell(FakeCell):
        def command(self, msg, origin="handler"):
            from ate.protocol import messages as m

            if isinstance(msg, m.Load) and self.state == "initialized":
                self.hold_loading = True
                result = super().command(msg, origin)
                if result is None:
                    reactor.callLater(0.3, self._loaded)
                return result
            if isinstance(msg, m.Next) and self.state == "ready" and self.part_counter == 2:
                self.next_bins = {"2": 12}
                super().command(msg, origin)
                self.set_site("2", "error", "crash", "TestApp exited with code 1")
                self.log.error("site 2: TestApp crashed during the test")
                self.set_state("softerror", "site 2: TestApp crashed")
                return None
            return super().command(msg, origin)

        def _loaded(self):
            for s in self.sites:
                self.set_site(s, "busy", "idle")
            self.set_state("ready")

    cell = ScriptedCell(logs=logs)
    site = make_site(cell, reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


def _child(command: str, what: str):
    """Run this file as ``command`` in a child process; yield the URL of its port."""
    yield from served_by([os.path.abspath(__file__), command], what)


@pytest.fixture
def ui():
    """A headless Chromium page; yields (page, expect, errors); errors collects uncaught
    page errors for the test to check."""
    yield from browser_page(1400, 1100)


@pytest.fixture
def served():
    yield from _child("serve", "site")


def test_operator_ui(served, ui, tmp_path):
    page, expect, errors = ui
    page.goto(served + "/control")
    expect(page.locator("#conn")).to_have_text("online")
    expect(page.locator("#state")).to_have_text("initialized")
    expect(page.locator("#device-id")).to_have_text("SCT-81-1F")
    expect(page.locator("#sites .site")).to_have_count(4)
    expect(page.locator("#settings-table tbody tr")).to_have_count(6)

    # a load through the UI: loading, then ready
    page.fill("#lot-input", LOT)
    page.click("#btn-load")
    expect(page.locator("#state")).to_have_text("loading")
    expect(page.locator("#state")).to_have_text("ready")
    expect(page.locator("#lot-number")).to_have_text(LOT)
    expect(page.locator("#program")).to_have_text("hallsens2_ft1.py")
    expect(page.locator("#site-0 [data-role=control]")).to_have_text("busy")

    # two parts: results, yield and bins appear
    page.click("#btn-next")
    expect(page.locator("#parts-table tbody tr")).to_have_count(4)
    expect(page.locator("#btn-next")).to_be_enabled()
    page.click("#btn-next")
    expect(page.locator("#parts-table tbody tr")).to_have_count(8)
    expect(page.locator('#yield-table tr[data-group="BT_PASS"] td[data-site="-1"]')
           ).to_have_text("8 (100.0%)")
    expect(page.locator('#bin-table tr[data-sbin="1"] td').last).to_have_text("8")
    expect(page.locator("#lotdata")).to_contain_text(LOT)
    shot = str(tmp_path / "ui.png")
    page.screenshot(path=shot, full_page=True)
    assert os.path.getsize(shot) > 10_000

    # a refused command shows as a warning with its reason
    page.fill("#lot-input", LOT)
    # (the Load button is disabled in ready; submit the form directly)
    page.locator("#load-form").evaluate("f => f.requestSubmit()")
    expect(page.locator("#errors")).to_contain_text("load refused")

    # the third part fails on site 2: the error shows its site and reason
    page.click("#btn-next")
    expect(page.locator("#state")).to_have_text("softerror")
    expect(page.locator('#errors li[data-site="2"]')).to_contain_text(
        "TestApp exited with code 1")
    expect(page.locator("#errors")).to_contain_text("site 2: TestApp crashed")
    expect(page.locator("#site-2")).to_have_class("site has-error")
    expect(page.locator("#parts-table tbody tr.fail")).to_have_count(1)
    expect(page.locator("#btn-reset")).to_be_enabled()

    # reset back to initialized; log level change reaches the master
    page.click("#btn-reset")
    expect(page.locator("#state")).to_have_text("initialized")
    page.select_option("#loglevel", "10")
    expect(page.locator("#logs tbody")).to_contain_text("TestApp crashed")
    assert errors == [], errors


def _serve_live() -> None:  # pragma: no cover - runs in the child process
    """A live cell: private mosquitto, the real master (build_master) and simulated sites
    whose site 2 TestApp crashes on its third part.  Prints the web port."""
    import atexit
    import tempfile

    sys.path[:0] = [REPO]
    from twisted.internet import reactor

    from ate.config import master_config_from_dict, sim_config_from_dict
    from ate.sim.sites import SimSitesService
    from ate.tap import build_master
    from ate.testing.broker import Mosquitto, free_port

    broker = Mosquitto().start()
    atexit.register(broker.stop)
    work = tempfile.mkdtemp(prefix="ate-ui-live-")
    jobs = os.path.join(work, "jobs")
    os.makedirs(jobs)
    shutil.copy(os.path.join(REPO, "tests", "fixtures", "jobs", "le306426001.xml"), jobs)
    web_port = free_port()
    cfg = master_config_from_dict({
        "broker_host": broker.host, "broker_port": broker.port, "device_id": "SCT-81-1F",
        "sites": ["0", "1", "2", "3"], "Handler": "HTO92-20F", "environment": "F1",
        "webui_host": "127.0.0.1", "webui_port": web_port, "jobsource": "filesystem",
        "jobformat": "xml.semi-ate", "filesystemdatasource_path": jobs,
        "filesystemdatasource_jobpattern": "le#jobname#.xml", "stdf_directory": work,
        "log_directory": os.path.join(work, "log"), "loglevel": 20,
    }, source="ui-live")
    top, _cell = build_master(cfg, reactor)
    sim = SimSitesService(reactor, sim_config_from_dict({
        "broker_host": broker.host, "broker_port": broker.port, "device_id": "SCT-81-1F",
        "sites": ["0", "1", "2", "3"], "test_time": 0.05, "seed": 5,
        "faults": {"crash_on_part": 3, "fault_site": "2"}}, source="ui-live"))
    top.startService()
    sim.startService()
    reactor.addSystemEventTrigger("before", "shutdown", sim.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    print(web_port, flush=True)
    reactor.run()


@pytest.fixture
def live():
    yield from _child("serve-live", "live cell")


def test_operator_ui_live_master(live, ui, tmp_path):
    """The UI against the real master and simulated sites: a load through the UI, states
    changing on screen during the lot, and a site crash shown with its site and reason."""
    page, expect, errors = ui
    page.goto(live + "/")
    expect(page.locator("#conn")).to_have_text("online", timeout=20_000)
    expect(page.locator("#state")).to_have_text("initialized", timeout=20_000)
    page.fill("#lot-input", LOT)
    page.click("#btn-load")
    expect(page.locator("#state")).to_have_text("ready", timeout=20_000)
    expect(page.locator("#lot-number")).to_have_text(LOT)
    expect(page.locator("#site-1 [data-role=control]")).to_have_text("busy")
    seen = set()
    page.click("#btn-next")
    for _ in range(50):  # testing shows on screen while the part runs (50 ms)
        seen.add(page.locator("#state").text_content())
        if "ready" in seen and len(seen) > 1:
            break
        page.wait_for_timeout(10)
    expect(page.locator("#state")).to_have_text("ready")
    expect(page.locator("#parts-table tbody tr")).to_have_count(4)
    page.click("#btn-next")
    expect(page.locator("#parts-table tbody tr")).to_have_count(8)
    expect(page.locator('#yield-table tr[data-group="sum"] td[data-site="-1"]')
           ).to_contain_text("8")
    # the UI mid-lot, with the real master (ATE_UPDATE_SCREENSHOT=1 keeps it in docs/)
    shot = (SCREENSHOT if os.environ.get("ATE_UPDATE_SCREENSHOT") == "1"
            else str(tmp_path / "ui-live.png"))
    page.screenshot(path=shot, full_page=True)
    assert os.path.getsize(shot) > 10_000
    # the third part: site 2's TestApp crashes
    page.click("#btn-next")
    expect(page.locator("#state")).to_have_text("softerror", timeout=20_000)
    expect(page.locator("#errors")).to_contain_text("testapp 2 crashed")
    expect(page.locator("#site-2")).to_have_class("site has-error")
    page.click("#btn-reset")
    expect(page.locator("#state")).to_have_text("initialized", timeout=20_000)
    assert errors == [], errors


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    _serve()
if __name__ == "__main__" and sys.argv[1:] == ["serve-live"]:
    _serve_live()
