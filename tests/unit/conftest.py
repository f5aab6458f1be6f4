"""Fixtures of the unit tests.

Most cell tests (``cellharness.Harness``) drive a real :class:`ate.master.cell.Cell` to
some state and leave it there, a lot loaded and its STDF file open. In the program the
master service stops the cell on shutdown, which finalises and closes the datalog;
:func:`cells_stopped` does the same after every test, so no test leaves a file open
(the suite turns a ``ResourceWarning`` into an error, see setup.cfg). A file that is
still open after the cell's own stop is a leak of the product and still fails the test.
"""

from __future__ import annotations

import pytest

from ate.master.cell import Cell


@pytest.fixture(autouse=True)
def cells_stopped(monkeypatch):
    """Stop (as the master service does on shutdown) every Cell made during the test.

    Yields the list of those cells. Stopping a cell that is already stopped changes
    nothing.
    """
    cells: list[Cell] = []
    init = Cell.__init__

    def tracking_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        cells.append(self)

    monkeypatch.setattr(Cell, "__init__", tracking_init)
    yield cells
    monkeypatch.undo()
    for cell in cells:
        cell.stop()
