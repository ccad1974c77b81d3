"""Entry counts: how many texts match each metadata entry (a groupby-count over entry ids).

Per partition the count is a bincount of the matched ids (the dense form of a
groupby-size over ``entry_ids``); partitions are summed by a Dask tree reduction.
"""

from __future__ import annotations

import gc
import json

import numpy as np
import pyarrow as pa

from .metadata import Metadata


def partition_counts(entry_ids, n_entries: int, xp=np) -> np.ndarray:
    """int64 count of each entry among the (already per-row distinct) ids of a partition.

    Examples
    --------
    >>> partition_counts(np.array([0, 2, 2], np.int32), 4).tolist()
    [1, 0, 2, 0]
    """
    counts = xp.bincount(entry_ids, minlength=n_entries).astype(np.int64)
    return counts.get() if hasattr(counts, "get") else counts


def sum_counts(per_partition: list, n_entries: int):
    """A lazy tree-sum (dask.array) of per-partition count arrays (delayed objects)."""
    import dask.array as da

    if not per_partition:
        return da.zeros(n_entries, dtype=np.int64)
    stacked = da.stack(
        [da.from_delayed(c, shape=(n_entries,), dtype=np.int64) for c in per_partition]
    )
    return stacked.sum(axis=0, split_every=8)


def counts_table(metadata: Metadata, counts: np.ndarray) -> pa.Table:
    """``entry_id`` (int32), ``entry`` (string), ``count`` (int64), one row per entry."""
    return pa.table(
        {
            "entry_id": pa.array(np.arange(len(metadata), dtype=np.int32)),
            "entry": pa.array(metadata.entries, pa.string()),
            "count": pa.array(np.asarray(counts, dtype=np.int64)),
        }
    )


def counts_json(metadata: Metadata, counts: np.ndarray) -> bytes:
    """MetaCLIP's ``entry_counts.json``: {entry: count} in entry-id order."""
    # The collector would scan every live object of the run (Dask's included) several times
    # while the 500k-item dict is built; none of these objects can form a cycle.
    enabled = gc.isenabled()
    gc.disable()
    try:
        obj = dict(zip(metadata.entries, np.asarray(counts).tolist(), strict=True))
        return json.dumps(obj, ensure_ascii=False).encode("utf-8")
    finally:
        if enabled:
            gc.enable()
