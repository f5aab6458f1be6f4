"""Tests for ate.master.partindex: the lot's retest index, bounded in memory, exact."""

from __future__ import annotations

import gc
import os
import random

import pytest

from ate.master.lot import Lot
from ate.master.partindex import PartIndex, pack, unpack
from tests.unit.test_lot import BINS, SITES, make_job, result

V = (1, 0, 12, 5, 8, 0)


def value(n: int) -> tuple[int, int, int, int, int, int]:
    """A distinct value per n, every field used."""
    return (n % 4, n % 3, n % 65536, (n * 7) % 65536, n % 256, n % 5)


@pytest.fixture
def index(tmp_path):
    ix = PartIndex(bound=10, batch=4, directory=tmp_path)
    yield ix
    ix.close()


# -- pack ---------------------------------------------------------------------------------

def test_pack_round_trips_the_extremes_and_fits_one_sqlite_integer_with_the_retests() -> None:
    for v in [(0, 0, 0, 0, 0, 0), (0x7FFF, 0xFF, 0xFFFF, 0xFFFF, 0xFF, 0),
              (3, 1, 60000, 0, 8, 1), (0x7FFF, 0xFF, 0xFFFF, 0xFFFF, 0xFF, (1 << 63) - 1)]:
        packed = pack(v)
        assert unpack(packed) == v
        # a row holds bits 0..62 (one signed 64-bit integer, <= 8 bytes) and the retests
        assert (packed & ((1 << 63) - 1)).bit_length() <= 63
        assert packed >> 63 == v[5]


@pytest.mark.parametrize("bad, named", [
    ((0, 0, 65536, 0, 0, 0), "soft bin"), ((0, 0, 0, -1, 0, 0), "hard bin"),
    ((0, 256, 0, 0, 0, 0), "head"), ((0, 0, 0, 0, 256, 0), "part flag"),
    ((0x8000, 0, 0, 0, 0, 0), "site index"), ((0, 0, 0, 0, 0, 1 << 63), "retest count"),
    ((0, 0, 1.5, 0, 0, 0), "soft bin"), ((0, 0, "1", 0, 0, 0), "soft bin"),
    ((0, 0, 0), "6 ints"), ("abcdef", "6 ints"), (None, "6 ints"),
])
def test_a_bad_value_is_refused_naming_the_field(bad, named, index: PartIndex) -> None:
    with pytest.raises(ValueError, match=named):
        pack(bad)
    with pytest.raises(ValueError, match=named):
        index.put("P1", bad)
    assert len(index) == 0 and index.get("P1") is None


@pytest.mark.parametrize("kwargs, named", [
    ({"bound": 0}, "bound"), ({"bound": True}, "bound"), ({"bound": "10"}, "bound"),
    ({"batch": 0}, "batch"), ({"filter_bits": 1000}, "filter_bits"),
    ({"filter_bits": 4}, "filter_bits"), ({"filter_bits": -8}, "filter_bits"),
])
def test_bad_settings_are_refused_naming_them(kwargs, named) -> None:
    with pytest.raises(ValueError, match=named):
        PartIndex(**kwargs)


def test_a_part_id_must_be_a_string(index: PartIndex) -> None:
    with pytest.raises(ValueError, match="part id must be a string"):
        index.put(17, V)  # type: ignore[arg-type]


# -- the bound ----------------------------------------------------------------------------

def test_the_dict_never_exceeds_the_bound_and_the_rest_is_in_the_file(index: PartIndex) -> None:
    assert index.path is None  # nothing moved yet: no file
    for n in range(1000):
        index.put(f"P{n}", value(n))
        assert index.in_memory <= 10
        assert len(index) == n + 1
    assert index.spilled == 1000 - index.in_memory
    assert index.path is not None and os.path.isfile(index.path)
    for n in range(1000):
        assert index.get(f"P{n}") == value(n)
    assert index.get("P1000") is None and "P999" in index and "Q" not in index


def test_a_spilled_row_is_small(tmp_path) -> None:
    ix = PartIndex(bound=100, batch=100, directory=tmp_path)
    for n in range(20_000):
        ix.put(f"P{n}", value(n))
    assert ix.spilled == 19_900
    assert ix.path is not None
    # part id, one integer of at most 8 bytes, the retests: ~23 bytes a row with the
    # B-tree's own overhead (a dict entry with a 6-tuple was ~190 bytes of memory)
    assert os.path.getsize(ix.path) / ix.spilled < 40
    ix.close()


@pytest.mark.parametrize("filter_bits", [0, 8, 1 << 16])
def test_random_gets_and_puts_match_a_plain_dict(tmp_path, filter_bits: int) -> None:
    """Puts without a get first, gets without a put, retests of parts long moved out and
    a filter so small that every id 'may be' in the file: the index is the dict."""
    rng = random.Random(filter_bits)
    ix = PartIndex(bound=50, batch=7, directory=tmp_path, filter_bits=filter_bits)
    model: dict[str, tuple[int, ...]] = {}
    for step in range(20_000):
        pid = f"P{rng.randrange(step + 1) if rng.random() < 0.3 else step}"
        if rng.random() < 0.8:
            assert ix.get(pid) == model.get(pid)
        if rng.random() < 0.9:
            model[pid] = value(step)
            ix.put(pid, value(step))
        assert ix.in_memory <= 50
        assert len(ix) == len(model)
    assert ix.spilled > 1000
    assert all(ix.get(pid) == v for pid, v in model.items())
    ix.close()


def test_a_part_moved_out_and_put_again_lives_in_the_dict_once(index: PartIndex) -> None:
    for n in range(40):
        index.put(f"P{n}", value(n))
    spilled = index.spilled
    assert index.get("P0") == value(0)      # from the file
    index.put("P0", (2, 0, 1, 1, 0, 1))     # a retest: back into the dict, row deleted
    assert index.spilled == spilled - 1 and len(index) == 40
    index.put("P1", (2, 0, 1, 1, 0, 1))     # no get first: still no double
    assert index.spilled == spilled - 2 and len(index) == 40
    for n in range(40, 80):                 # both move out again, with their new values
        index.put(f"P{n}", value(n))
    assert index.get("P0") == index.get("P1") == (2, 0, 1, 1, 0, 1)
    assert len(index) == 80


def test_a_new_part_costs_no_query_and_a_retest_of_a_moved_part_two(index: PartIndex) -> None:
    for n in range(40):
        index.put(f"P{n}", value(n))
    statements: list[str] = []
    assert index._conn is not None
    index._conn.set_trace_callback(statements.append)

    def lookups() -> list[str]:  # the statements but the batches moved out
        return [s.split()[0] for s in statements
                if not s.startswith(("BEGIN", "INSERT", "COMMIT"))]

    for n in range(40, 60):
        assert index.get(f"P{n}") is None
        index.put(f"P{n}", value(n))
    assert any(s.startswith("INSERT") for s in statements)  # batches did move
    # the filter (2**23 bits, 60 ids) answers "never seen" without a select or delete
    assert lookups() == []
    statements.clear()
    assert index.get("P0") == value(0)
    index.put("P0", value(1))
    assert lookups() == ["SELECT", "DELETE"]
    index._conn.set_trace_callback(None)


def test_a_new_part_the_filter_cannot_rule_out_costs_one_select(tmp_path) -> None:
    ix = PartIndex(bound=10, batch=10, directory=tmp_path, filter_bits=0)  # no filter
    for n in range(15):  # 10 moved out, 5 in the dict: one more moves none
        ix.put(f"P{n}", value(n))
    statements: list[str] = []
    assert ix._conn is not None and ix.spilled == 10
    ix._conn.set_trace_callback(statements.append)
    assert ix.get("NEW") is None
    ix.put("NEW", V)  # the get found it nowhere: no delete
    assert [s.split()[0] for s in statements] == ["SELECT"]
    ix._conn.set_trace_callback(None)
    ix.close()


def test_bound_none_keeps_everything_in_memory_and_never_makes_a_file() -> None:
    ix = PartIndex(bound=None)
    for n in range(5000):
        ix.put(f"P{n}", value(n))
    assert ix.in_memory == len(ix) == 5000 and ix.spilled == 0 and ix.path is None
    ix.close()


def test_a_file_that_cannot_be_made_keeps_every_part_in_memory_exactly(
        tmp_path, warnings_logged) -> None:
    ix = PartIndex(bound=5, batch=2, directory=tmp_path / "missing")
    for n in range(30):
        ix.put(f"P{n}", value(n))
    assert ix.problem is not None and "cannot move parts" in ix.problem
    assert warnings_logged == [f"part index: {ix.problem}"]  # once, not per part
    assert ix.in_memory == len(ix) == 30 and ix.spilled == 0
    assert [ix.get(f"P{n}") for n in range(30)] == [value(n) for n in range(30)]
    ix.close()


# -- close --------------------------------------------------------------------------------

def test_close_removes_the_file_and_keeps_the_count(tmp_path, index: PartIndex) -> None:
    for n in range(100):
        index.put(f"P{n}", value(n))
    path = index.path
    assert path is not None and os.path.exists(path)
    index.close()
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))
    assert list(tmp_path.iterdir()) == []
    assert len(index) == 100 and index.closed and index.path is None
    with pytest.raises(RuntimeError, match="closed"):
        index.get("P1")
    with pytest.raises(RuntimeError, match="closed"):
        index.put("P1", V)
    index.close()  # twice: a no-op
    assert len(index) == 100


def test_an_index_never_closed_removes_its_file_when_collected(tmp_path) -> None:
    ix = PartIndex(bound=3, batch=3, directory=tmp_path)
    for n in range(10):
        ix.put(f"P{n}", V)
    path = ix.path
    assert path is not None and os.path.exists(path)
    del ix
    gc.collect()
    assert not os.path.exists(path) and list(tmp_path.iterdir()) == []


# -- in the lot ---------------------------------------------------------------------------

def test_a_part_first_seen_before_the_spill_and_retested_after_counts_once(tmp_path) -> None:
    index = PartIndex(bound=100, batch=10, directory=tmp_path)
    lot = Lot(make_job(), SITES, "D", part_index=index)
    assert not lot.add_result("0", result("0", 12, "FIRST")).retest
    for n in range(500):
        site = SITES[n % 4]
        lot.add_result(site, result(site, 1, f"P{n}"))
    assert index.spilled > 0 and "FIRST" not in index._recent  # it is in the file

    out = lot.add_result("3", result("3", 2, "FIRST"))
    assert out.retest and out.previous == ("0", 12)
    assert lot.parts_tested == 502 and lot.parts_distinct == 501
    assert lot.tally.sbin.get(("0", 12), 0) == 0 and lot.tally.sbin[("3", 2)] == 1
    assert lot.tally.retests == {"3": 1}
    pcr = {(r["HEAD_NUM"], r["SITE_NUM"]): r for r in lot.summary_records()
           if r["type"] == "PCR"}
    assert pcr[(255, 255)]["PART_CNT"] == 501 and pcr[(255, 255)]["RTST_CNT"] == 1
    lot.close()


def test_a_lot_of_100_000_parts_at_bound_1000_counts_as_the_dict_only_index(tmp_path) -> None:
    spill = PartIndex(bound=1000, directory=tmp_path)
    lots = [Lot(make_job(), SITES, "D", part_index=spill),
            Lot(make_job(), SITES, "D", part_index=PartIndex(bound=None))]
    rng = random.Random(100_000)
    sbins = [b.sbin for b in BINS]
    new = 0
    for n in range(100_000):
        if new and rng.random() < 0.05:
            pid = f"P{rng.randrange(new)}"  # a retest, mostly of a part moved out
        else:
            pid = f"P{new}"
            new += 1
        site, sbin = rng.choice(SITES), rng.choice(sbins)
        outcomes = [lot.add_result(site, result(site, sbin, pid, test_t=n % 50))
                    for lot in lots]
        assert outcomes[0] == outcomes[1]
        assert spill.in_memory <= 1000
    assert spill.spilled > 90_000
    a, b = lots
    assert a.parts_distinct == b.parts_distinct == new
    assert a.tally == b.tally
    assert a.summary() == b.summary() and a.summary()["retests"] > 4000
    assert a.summary_records() == b.summary_records()
    assert a.yields() == b.yields() and a.bintable() == b.bintable()
    for lot in lots:
        lot.close()
    assert list(tmp_path.iterdir()) == []


def test_a_closed_lot_refuses_results_and_still_reports(tmp_path) -> None:
    lot = Lot(make_job(), SITES, "D", part_index=PartIndex(bound=2, directory=tmp_path))
    for n in range(5):
        lot.add_result("1", result("1", 1, f"P{n}"))
    lot.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="closed"):
        lot.add_result("1", result("1", 1, "P9"))
    assert lot.parts_tested == 5 and lot.parts_distinct == 5
    assert lot.summary()["parts_distinct"] == 5


def test_a_small_lot_never_touches_the_disk() -> None:
    lot = Lot(make_job(), SITES, "D")
    for n in range(100):
        lot.add_result("2", result("2", 1, f"P{n}"))
    assert lot._parts.path is None and lot.parts_distinct == 100
    lot.close()
