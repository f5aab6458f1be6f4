"""ate-master's collector thresholds (ate.tap.tune_gc, called by the twistd plugin)."""

from __future__ import annotations

import gc

import pytest

from ate.tap import GC_THRESHOLD0, tune_gc


@pytest.fixture
def thresholds():
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_the_first_threshold_is_raised_and_the_others_kept(thresholds):
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (GC_THRESHOLD0, 10, 10)
    gc.set_threshold(GC_THRESHOLD0 * 2, 5, 3)  # a higher one set by someone else stays
    tune_gc()
    assert gc.get_threshold() == (GC_THRESHOLD0 * 2, 5, 3)


def test_cyclic_garbage_is_still_collected(thresholds):
    tune_gc()
    gc.collect()

    class Node:
        pass

    start = gc.get_stats()[0]["collections"]
    for _ in range(3 * GC_THRESHOLD0):  # each pair is a cycle nobody references
        a, b = Node(), Node()
        a.other, b.other = b, a
    assert gc.get_stats()[0]["collections"] > start
