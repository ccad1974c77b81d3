"""entry_counts.json: the same bytes as json.dumps of the {entry: count} dict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_curate.counts import counts_json, counts_table, sum_counts, tree_reduce
from gpu_curate.metadata import Metadata


def reference(entries, counts) -> bytes:
    return json.dumps(dict(zip(entries, counts.tolist(), strict=True)), ensure_ascii=False).encode()


TRICKY = [
    "dog",
    'a "quoted" word',
    "back\\slash",
    "\\",
    '"',
    "ends with \\",
    "tab\there",
    "line\nbreak",
    "a\rb",
    "\x01 control",
    "x\x1f",
    "del\x7f",
    "line\u2028separator",
    "café",
    "東京",
    "😀",
    " spaced ",
    "slash/ok",
]


def test_tricky_entries():
    md = Metadata(TRICKY)
    counts = np.arange(len(TRICKY), dtype=np.int64) * 1_000_003
    assert counts_json(md, counts) == reference(TRICKY, counts)
    assert json.loads(counts_json(md, counts)) == dict(zip(TRICKY, counts.tolist(), strict=True))
    again = counts + 1  # the cached keys serve new counts
    assert counts_json(md, again) == reference(TRICKY, again)


@settings(max_examples=60, deadline=None)
@given(
    entries=st.lists(
        st.text(min_size=1, max_size=12).filter(lambda s: s.strip()),
        unique=True,
        min_size=1,  # (metadata of no entries is refused)
        max_size=30,
    ),
    data=st.data(),
)
def test_any_entries(entries, data):
    counts = np.array(
        data.draw(st.lists(st.integers(0, 2**62), min_size=len(entries), max_size=len(entries))),
        dtype=np.int64,
    )
    assert counts_json(Metadata(entries), counts) == reference(entries, counts)


def test_wrong_number_of_counts_raises():
    with pytest.raises(ValueError, match="one value per entry"):
        counts_json(Metadata(["a", "b"]), np.array([1]))


def test_counts_table_columns():
    md = Metadata(TRICKY)
    table = counts_table(md, np.ones(len(TRICKY), np.int64))
    assert table.column("entry").to_pylist() == TRICKY
    assert table.column("entry_id").to_pylist() == list(range(len(TRICKY)))


class _CupyLikeBincount:
    """NumPy, but with CuPy's bincount, which takes max(x) first: an empty x raises."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def bincount(x, weights=None, minlength=0):
        if x.size == 0:
            raise ValueError("zero-size array to reduction operation maximum")
        return np.bincount(x, weights=weights, minlength=minlength)


def test_counts_of_an_empty_part_on_a_cupy_like_module():
    # A part where no text matches, or a balance that keeps no row: the counts are zeros,
    # not CuPy's error (cupy/cupy#8116).
    from gpu_curate import balance
    from gpu_curate.counts import partition_counts

    xp = _CupyLikeBincount()
    empty = np.zeros(0, np.int32)
    assert partition_counts(empty, 3, xp).tolist() == [0, 0, 0]
    assert partition_counts(np.array([2, 0, 2], np.int32), 3, xp).tolist() == [1, 0, 2]
    got = balance._kept_counts(empty, np.zeros(0, bool), np.zeros(0, np.int64), 4, xp)
    assert got.tolist() == [0, 0, 0, 0]
    weighted = balance.bincount(empty, 2, xp, weights=np.zeros(0))
    assert weighted.dtype == np.float64 and weighted.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 64, 65, 200])
def test_sum_counts_tree_adds_every_partition_once(n):
    import dask

    rng = np.random.default_rng(n)
    parts = [rng.integers(0, 1000, 5) for _ in range(n)]
    total = sum_counts([dask.delayed(p) for p in parts], 5).compute()
    assert total.dtype == np.int64
    np.testing.assert_array_equal(total, np.sum(parts, axis=0))
    assert parts[0].sum() > 0  # (the leaves are summed into a new array, not in place)
    np.testing.assert_array_equal(parts[0], np.random.default_rng(n).integers(0, 1000, 5))


def test_sum_counts_of_no_partition_is_zeros():
    np.testing.assert_array_equal(sum_counts([], 3).compute(), [0, 0, 0])


@pytest.mark.parametrize("n", [1, 3, 17])
def test_tree_reduce_keeps_the_order_of_its_leaves(n):
    import dask

    leaves = [dask.delayed([i]) for i in range(n)]
    assert tree_reduce(leaves, lambda *xs: sum(xs, []), split_every=4).compute() == list(range(n))
