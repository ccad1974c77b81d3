"""Entry counts: how many texts match each metadata entry (a groupby-count over entry ids).

Per partition the count is a bincount of the matched ids (the dense form of a
groupby-size over ``entry_ids``); partitions are summed by a Dask tree reduction.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .balance import bincount
from .errors import CurateError
from .io import read_parquet_columns
from .metadata import Metadata


def partition_counts(entry_ids, n_entries: int, xp=np) -> np.ndarray:
    """int64 count of each entry among the (already per-row distinct) ids of a partition.

    Examples
    --------
    >>> partition_counts(np.array([0, 2, 2], np.int32), 4).tolist()
    [1, 0, 2, 0]
    """
    counts = bincount(entry_ids, n_entries, xp).astype(np.int64)
    return counts.get() if hasattr(counts, "get") else counts


def tree_reduce(leaves: Sequence, combine: Callable, split_every: int = 8):
    """``combine`` applied over ``leaves`` (delayed objects) as a tree of fan-in ``split_every``.

    One task per ``split_every`` results: a part costs one task and one scheduler round
    trip more, where a ``dask.array`` stack-and-sum of the parts' counts cost about five
    (11 ms a part on 2 cores, docs/benchmarks.md).

    Examples
    --------
    >>> import dask, operator
    >>> leaves = [dask.delayed(i) for i in range(20)]
    >>> tree_reduce(leaves, lambda *xs: sum(xs), split_every=4).compute()
    190
    """
    import dask

    level = list(leaves)
    if not level:
        raise ValueError("tree_reduce needs at least one leaf")
    while len(level) > 1:
        level = [
            dask.delayed(combine, pure=True)(*level[i : i + split_every])
            for i in range(0, len(level), split_every)
        ]
    return level[0]


def add_counts(*counts: np.ndarray) -> np.ndarray:
    """The int64 sum of count arrays of one length (a new array).

    Examples
    --------
    >>> add_counts(np.array([1, 0]), np.array([2, 3])).tolist()
    [3, 3]
    """
    total = np.array(counts[0], dtype=np.int64)  # (a copy: the leaves stay as they are)
    for c in counts[1:]:
        total += c
    return total


def sum_counts(per_partition: list, n_entries: int):
    """A lazy tree-sum (a Delayed) of per-partition count arrays (delayed objects).

    Examples
    --------
    >>> import dask
    >>> parts = [dask.delayed(np.array([1, 0, 2])), dask.delayed(np.array([0, 5, 1]))]
    >>> sum_counts(parts, 3).compute().tolist()
    [1, 5, 3]
    """
    import dask

    if not per_partition:
        return dask.delayed(np.zeros)(n_entries, dtype=np.int64)
    return tree_reduce(per_partition, add_counts)


def counts_table(metadata: Metadata, counts: np.ndarray) -> pa.Table:
    """``entry_id`` (int32), ``entry`` (string), ``count`` (int64), one row per entry."""
    return pa.table(
        {
            "entry_id": pa.array(np.arange(len(metadata), dtype=np.int32)),
            "entry": _entry_array(metadata),
            "count": pa.array(np.asarray(counts, dtype=np.int64)),
        }
    )


def read_counts_table(
    path: str | os.PathLike, *, need_entry: bool = True, fs: fsspec.AbstractFileSystem | None = None
) -> pa.Table:
    """Read a counts table as :func:`counts_table` writes it, its columns checked.

    ``plan`` and ``report`` both read ``entry_counts.parquet``; each checks the ids its own
    way (``report`` also reads ``curated_entry_counts.parquet``, of the same columns).

    Parameters
    ----------
    path : str or os.PathLike
        The Parquet file.
    need_entry : bool, default True
        Whether an ``entry`` column must be there; without it, one that is there is read.
    fs : fsspec.AbstractFileSystem, optional
        The file system of ``path`` (default: a local file).

    Returns
    -------
    pyarrow.Table
        Its ``entry_id`` and ``count`` columns (neither with nulls) and ``entry``.

    Raises
    ------
    CurateError
        An unreadable file, a missing column, or nulls in ``entry_id`` or ``count``.

    Examples
    --------
    >>> table = read_counts_table("out/entry_counts.parquet")  # doctest: +SKIP
    """
    needed = ["entry_id", "entry", "count"] if need_entry else ["entry_id", "count"]
    table = read_parquet_columns(path, needed, optional=["entry"], fs=fs)
    if table.column("entry_id").null_count or table.column("count").null_count:
        raise CurateError(f"{path}: entry_id and count must not be null")
    return table


def counts_by_id(table: pa.Table, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(counts, entries) of a counts table (:func:`read_counts_table`'s) in entry-id
    order, its ids checked to be each of 0 .. n - 1 once and its counts not negative;
    entries is None for a table without an ``entry`` column. ``where`` names the table in
    errors.

    Examples
    --------
    >>> t = pa.table({"entry_id": [1, 0], "entry": ["cat", "dog"], "count": [5, 7]})
    >>> counts, entries = counts_by_id(t, "counts.parquet")
    >>> counts.tolist(), entries.tolist()
    ([7, 5], ['dog', 'cat'])
    """
    for name in ("entry_id", "count"):
        if not pa.types.is_integer(table.column(name).type):
            raise CurateError(f"{where}: {name} must be integers, not {table.column(name).type}")
    ids = table.column("entry_id").to_numpy().astype(np.int64)
    counts = table.column("count").to_numpy().astype(np.int64)
    n = ids.size
    order = None
    if not np.array_equal(ids, np.arange(n)):
        order = np.argsort(ids, kind="stable")
        if not np.array_equal(ids[order], np.arange(n)):
            raise CurateError(f"{where}: entry_id must hold each of 0 .. {n - 1} once")
    if counts.size and int(counts.min()) < 0:
        raise CurateError(f"{where}: negative counts")
    entries = None
    if "entry" in table.column_names:
        entries = np.asarray(table.column("entry").to_pylist(), dtype=object)
    if order is not None:
        counts = counts[order]
        entries = None if entries is None else entries[order]
    return counts, entries


@functools.lru_cache(maxsize=4)
def _entry_array(metadata: Metadata) -> pa.Array:
    # A run writes two count tables (pool and curated) of the same entries.
    return pa.array(metadata.entries, pa.string())


# What json.dumps(..., ensure_ascii=False) escapes in a string: quote, backslash, controls.
_JSON_ESCAPED = r'["\\\x00-\x1f]'


@functools.lru_cache(maxsize=4)
def _json_keys(metadata: Metadata) -> pa.Array:
    """Each entry as a JSON object key, ``"entry": ``, exactly as :func:`json.dumps` writes it."""
    entries = _entry_array(metadata)
    keys = pc.binary_join_element_wise('"', entries, '": ', "")
    escaped = pc.match_substring_regex(entries, _JSON_ESCAPED).to_numpy(zero_copy_only=False)
    if escaped.any():
        ids = np.flatnonzero(escaped)
        fixed = [json.dumps(metadata.entries[i], ensure_ascii=False) + ": " for i in ids]
        keys = pc.replace_with_mask(keys, pa.array(escaped), pa.array(fixed, pa.string()))
    return keys


def counts_json(metadata: Metadata, counts: np.ndarray) -> bytes:
    """MetaCLIP's ``entry_counts.json``: {entry: count} in entry-id order.

    The same bytes as ``json.dumps(dict(zip(entries, counts)), ensure_ascii=False)``,
    built with Arrow string kernels rather than a 500k-item dict.

    Examples
    --------
    >>> counts_json(Metadata(["dog", 'say "hi"']), np.array([3, 0]))
    b'{"dog": 3, "say \\\\"hi\\\\"": 0}'
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (len(metadata),):
        raise ValueError(f"counts must have one value per entry ({len(metadata)})")
    items = pc.binary_join_element_wise(
        _json_keys(metadata), pc.cast(pa.array(counts), pa.string()), ""
    )
    one_list = pa.ListArray.from_arrays(pa.array([0, len(items)], pa.int32()), items)
    body = pc.binary_join(one_list, ", ")[0].as_buffer()
    return b"{" + (body.to_pybytes() if body is not None else b"") + b"}"
