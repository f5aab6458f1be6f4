"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from ate.broker import Mosquitto


@pytest.fixture
def broker():
    """A private mosquitto on 127.0.0.1 and a free port, stopped (by PID) after the test."""
    instance = Mosquitto()
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
        instance.cleanup()
