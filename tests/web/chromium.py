"""What the browser tests share: Debian's Chromium driven by Playwright, and a child
process that serves a site on a free loopback port and prints it (stopped by its PID)."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
from typing import Any, Iterator, Sequence

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def served_by(argv: Sequence[str], what: str) -> Iterator[str]:
    """Run ``python argv...`` (it prints the port it serves on); yield its URL; stop it by
    its PID."""
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else b""  # type: ignore[union-attr]
        if not line.strip().isdigit():
            proc.kill()
            raise AssertionError(f"{what} did not start: {line!r} "
                                 f"{proc.stderr.read()!r}")  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def browser_page(width: int = 1280, height: int = 900, *, console: bool = False,
                 timeout_ms: float | None = None,
                 downloads: bool = False) -> Iterator[tuple[Any, Any, list[str]]]:
    """A headless Chromium page; yields (page, expect, errors): errors collects uncaught
    page errors (and, with ``console``, console errors: a failed request shows there)."""
    if not os.path.exists(CHROMIUM) or shutil.which(CHROMIUM) is None:
        pytest.skip(f"Chromium not installed at {CHROMIUM} (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="playwright for Python not installed")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height},
                                    accept_downloads=downloads)
            if timeout_ms is not None:
                page.set_default_timeout(timeout_ms)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            if console:
                page.on("console", lambda msg: errors.append(
                    f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
            yield page, playwright.expect, errors
        finally:
            browser.close()
