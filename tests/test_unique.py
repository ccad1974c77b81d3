"""Unit checks of the uid files and the in-part duplicate search (gpu_curate.unique)."""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa
import pytest

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
