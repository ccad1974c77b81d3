"""Unit checks of the uid files and the in-part duplicate search (gpu_curate.unique)."""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from gpu_curate.errors import CurateError
from gpu_curate.unique import first_duplicate, read_bucket, write_part_uids

TOP = 2**63


@pytest.mark.parametrize("order", ["unsorted", "sorted"])
def test_uid_file_layout(tmp_path, order):
    uids = np.array([5, TOP + 1, 3, TOP], np.uint64)
    if order == "sorted":
        uids = np.sort(uids)
    path = str(tmp_path / "part-00000.npy")
    fs = fsspec.filesystem("file")
    write_part_uids(fs, path, uids, 2)
    # [B, off_0, off_1, off_2, sorted uids]: bucket 0 holds the uids below 2**63.
    want = [2, 0, 2, 4, 3, 5, TOP, TOP + 1]
    assert np.load(path).tolist() == want
    assert read_bucket(fs, path, 0, 2).tolist() == [3, 5]
    assert read_bucket(fs, path, 1, 2).tolist() == [TOP, TOP + 1]


def test_first_duplicate_with_a_given_sort():
    uids = np.array([9, 4, 9, 7], np.uint64)
    values = pa.array(["a", "b", "a", "c"])
    for given in (None, np.sort(uids)):
        found = first_duplicate(uids, values, "f.parquet", 10, given)
        assert (found.value, found.first, found.second) == (
            "a",
            ("f.parquet", 10),
            ("f.parquet", 12),
        )
    assert first_duplicate(np.array([1, 2], np.uint64), pa.array([1, 2]), "f", 0) is None


def test_an_integer_id_has_one_uid_whatever_its_columns_type():
    # A uint64 id past int64's range had the bits, and so the uid, of a negative int64
    # id: 2**64 - 1 and -1 shared every draw, and the pool-wide check took the two equal
    # uids of different values for a hash collision.
    from gpu_curate.uid import value_uids

    big = [2**64 - 1, 2**63, 2**63 + 5]
    signed = value_uids(pa.array([-1, -(2**63), -(2**63) + 5], pa.int64()))
    unsigned = value_uids(pa.array(big, pa.uint64()))
    assert len(set(signed.tolist()) | set(unsigned.tolist())) == 6
    # Below 2**63 an integer is the same id in any integer column, as before.
    small = [0, 5, 2**63 - 1]
    want = value_uids(pa.array(small, pa.int64()))
    for t in (pa.uint64(), pa.uint32(), pa.int32(), pa.uint8()):
        values = [v for v in small if v < 2 ** (t.bit_width - (0 if "u" in str(t) else 1))]
        got = value_uids(pa.array(values, t))
        assert got.tolist() == want[: len(values)].tolist(), t
    # A dictionary column (a pandas Categorical) gives the uids of its values.
    words = pa.array(["a", "b", "a", "c"])
    assert value_uids(words.dictionary_encode()).tolist() == value_uids(words).tolist()
    with pytest.raises(CurateError, match="x.parquet: id column 'id' is double"):
        value_uids(pa.array([1.5]), "id", "x.parquet")
