"""Session-wide test fixtures.

pytest-twisted (a plugin loaded through its entry point) installs and runs
the reactor itself; tests use ``@pytest_twisted.ensureDeferred`` or
``@pytest_twisted.inlineCallbacks``. Subdirectories add their own fixtures
in their own conftest.py files.
"""

from __future__ import annotations

import pytest

from ate.broker import Mosquitto


@pytest.fixture(scope="session")
def reactor():
    """The running reactor installed by pytest-twisted (as magic-wormhole does)."""
    from twisted.internet import reactor as _reactor

    return _reactor


@pytest.fixture
def mosquitto():
    """A private mosquitto on 127.0.0.1 and a free port, for one test.

    Function scope, because tests kill and restart it. Stopped by PID and its
    temporary directory removed afterwards; its log is attached to the
    report of a failing test.
    """
    broker = Mosquitto()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        log = broker.log_text()
        broker.cleanup()
        if log:
            print(f"--- mosquitto log ({broker.host}:{broker.port}) ---\n{log}")


@pytest.fixture(autouse=True)
def no_logged_errors():
    """Every test fails if anything logs a critical event or a failure (as trial does).

    Yields the list of offending events so a test that expects one can
    request this fixture, inspect and clear it (``events.clear()``) before it checks.
    """
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    bad: list[dict] = []

    def observer(event: dict) -> None:
        if event.get("log_failure") is not None or event.get("log_level") == LogLevel.critical:
            bad.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield bad
    finally:
        globalLogPublisher.removeObserver(observer)
    if bad:
        lines = []
        for event in bad:
            text = formatEvent(event)
            f = event.get("log_failure")
            if f is not None:
                text += "\n" + f.getTraceback()
            lines.append(text)
        pytest.fail("unexpected logged errors:\n" + "\n".join(lines), pytrace=False)


@pytest.fixture
def warnings_logged():
    """Every event at WARNING or above logged during the test, formatted (a healthy cell
    logs none)."""
    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    seen: list[str] = []

    def observer(event: dict) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.warn:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observer)
