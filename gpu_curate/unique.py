"""Uniqueness of ``--id-column`` values over the whole pool, without gathering all uids.

A part sees only its own rows, so duplicates in different parts (files, packs of small
files, or row ranges of one file) need a pool-wide check. It runs in two steps:

1. Each match task writes the uids of *all* its part's rows (matched or not: uniqueness is
   over the pool) to ``OUT/_work/uids/part-NNNNN.npy``, sorted, as one little-endian
   uint64 array ``[B, off_0, ..., off_B, uid_0, ..., uid_{n-1}]``: bucket ``k`` (the uids
   whose top ``log2(B)`` bits equal ``k``) is ``uid[off_k:off_{k+1}]``. The file is
   written atomically before the part's stats file, so ``--resume`` reuses it.
2. After the match stage, one Dask task per bucket reads that bucket of every part (a
   ranged read per part), sorts it and looks for equal neighbours. Equal uids are confirmed
   by reading the id values of those rows back, so a 64-bit hash collision between
   different values (likely somewhere in a pool of ~2**32 rows) is not reported.

``B`` is a power of two chosen from the planned pool size so that a bucket holds about
:data:`BUCKET_ROWS` uids (128 MiB); a bucket task holds twice that. The working folder
``OUT/_work`` is removed once ``matched/_SUCCESS`` is written.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa

from .cluster import gathered, graph_key
from .errors import OVERWRITE, RESUME, CurateError
from .io import Part, atomic_write_bytes, piece_tables
from .uid import value_uids

WORK = "_work"
UIDS = f"{WORK}/uids"
BUCKET_ROWS = 1 << 24  # uids per bucket the bucket count aims at (128 MiB of uint64)
MAX_BUCKETS = 4096
EST_BYTES_PER_ROW = 32  # row estimate for files without a row count (CSV, TSV, JSONL)
_U64 = np.dtype("<u8")

__all__ = [
    "BUCKET_ROWS",
    "UIDS",
    "WORK",
    "Duplicate",
    "UidCheck",
    "bucket_count",
    "find_duplicate",
    "first_duplicate",
    "read_bucket",
    "uid_file",
    "uid_file_ok",
    "write_part_uids",
]


@dataclass(frozen=True)
class Duplicate:
    """Two rows with the same id value: ``(path, row)`` of each, rows counted from 0."""

    value: object
    first: tuple[str, int]
    second: tuple[str, int]

    def message(self, column: str) -> str:
        """The one-line error naming the column, the value and both rows."""
        value = repr(self.value)
        if len(value) > 80:
            value = value[:77] + "..."
        (pa_, ra), (pb, rb) = self.first, self.second
        where = f"{pa_} rows {ra} and {rb}" if pa_ == pb else f"{pa_} row {ra} and {pb} row {rb}"
        return (
            f"id column {column!r} has duplicate value {value}: {where} (rows counted from 0); "
            "ids must be unique over the pool"
        )


def first_duplicate(
    uids: np.ndarray,
    values: pa.Array | pa.ChunkedArray,
    path: str,
    row_start: int = 0,
    sorted_uids: np.ndarray | None = None,
) -> Duplicate | None:
    """The first pair of rows with equal id values among rows with equal uids, or None.

    Rows whose uids are equal but whose values differ (a hash collision) are not a
    duplicate.

    Parameters
    ----------
    uids : ndarray of uint64, shape (n,)
        The uids of the rows (:func:`gpu_curate.uid.value_uids` of ``values``).
    values : pyarrow Array or ChunkedArray, length n
        The id values.
    path : str
        The file the rows come from (named in the result).
    row_start : int, default 0
        Row number of ``values[0]`` within the file.
    sorted_uids : ndarray of uint64, optional
        ``np.sort(uids)``, when the caller has it already.

    Returns
    -------
    Duplicate or None

    Examples
    --------
    >>> import numpy as np, pyarrow as pa
    >>> first_duplicate(np.array([5, 7, 5], np.uint64), pa.array([1, 2, 1]), "a.parquet")
    Duplicate(value=1, first=('a.parquet', 0), second=('a.parquet', 2))
    """
    s = np.sort(uids) if sorted_uids is None else sorted_uids
    if not (s[1:] == s[:-1]).any():
        return None  # the common case, without an argsort
    order = np.argsort(uids, kind="stable")
    s = uids[order]
    starts = np.flatnonzero(s[1:] == s[:-1])
    for u in np.unique(s[starts + 1]):
        rows = np.sort(order[np.searchsorted(s, u, "left") : np.searchsorted(s, u, "right")])
        found = _equal_values([(values[int(r)].as_py(), path, row_start + int(r)) for r in rows])
        if found is not None:
            return found
    return None


def _equal_values(rows: list[tuple[object, str, int]]) -> Duplicate | None:
    seen: dict[object, tuple[str, int]] = {}
    for value, path, row in rows:
        key = (type(value), value)
        if key in seen:
            return Duplicate(value, seen[key], (path, row))
        seen[key] = (path, row)
    return None


# --------------------------------------------------------------------------- uid files


def uid_file(out: str, part_index: int) -> str:
    """Path of a part's uid file under the output folder ``out``.

    Parameters
    ----------
    out : str
        The run's output folder (path or URL, without a trailing slash).
    part_index : int
        The part's index in the run's plan.

    Returns
    -------
    str

    Examples
    --------
    >>> uid_file("out", 3)
    'out/_work/uids/part-00003.npy'
    """
    return f"{out}/{UIDS}/part-{part_index:05d}.npy"


def bucket_count(parts: Sequence[Part]) -> int:
    """Number of uid buckets B (a power of two) for a pool: about BUCKET_ROWS uids each.

    Parquet parts have exact row counts; other files are estimated from their size
    (``EST_BYTES_PER_ROW`` bytes a row). B depends only on the inputs, so a resumed run
    uses the same B.

    Parameters
    ----------
    parts : sequence of Part
        The run's plan (:func:`gpu_curate.io.plan_parts`).

    Returns
    -------
    int
        A power of two in [1, MAX_BUCKETS].
    """
    rows = 0
    sizes: dict[str, int] = {}
    for p in (piece for part in parts for piece in part.pieces):
        if p.row_end is not None:
            rows += p.row_end - p.row_start
        elif p.file.path not in sizes:
            fs, path = fsspec.core.url_to_fs(p.file.path)
            sizes[p.file.path] = int(fs.size(path) or 0)
            rows += sizes[p.file.path] // EST_BYTES_PER_ROW + 1
    b = 1
    while b < MAX_BUCKETS and rows > b * BUCKET_ROWS:
        b *= 2
    return b


def _bucket_offsets(sorted_uids: np.ndarray, n_buckets: int) -> np.ndarray:
    n = sorted_uids.size
    if n_buckets == 1:
        return np.array([0, n], np.int64)
    shift = np.uint64(64 - (n_buckets.bit_length() - 1))
    edges = np.arange(1, n_buckets, dtype=np.uint64) << shift
    inner = np.searchsorted(sorted_uids, edges, side="left")
    return np.concatenate([[0], inner, [n]]).astype(np.int64)


def write_part_uids(
    fs: fsspec.AbstractFileSystem, path: str, uids: np.ndarray, n_buckets: int
) -> None:
    """Write a part's uids (all its rows), sorted and bucketed, atomically to ``path``.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The output's file system.
    path : str
        The uid file (:func:`uid_file`).
    uids : ndarray of uint64
        The uids of every row of the part, in any order (already sorted ones are not
        sorted again).
    n_buckets : int
        B, a power of two (:func:`bucket_count`).
    """
    if n_buckets < 1 or n_buckets & (n_buckets - 1):
        raise ValueError(f"n_buckets must be a power of two, got {n_buckets}")
    s = np.asarray(uids, dtype=np.uint64)
    if s.size > 1 and not (s[1:] >= s[:-1]).all():
        s = np.sort(s)
    offsets = _bucket_offsets(s, n_buckets)
    blob = np.concatenate([np.array([n_buckets], np.uint64), offsets.astype(np.uint64), s])
    buf = io.BytesIO()
    np.save(buf, blob.astype(_U64, copy=False), allow_pickle=False)
    atomic_write_bytes(fs, path, buf.getvalue())


def _open_header(fh, path: str) -> int:
    """Read the .npy header of a uid file; return the byte position of its first value."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except ValueError as exc:
        raise CurateError(f"{path}: not a uid file ({exc}); use {OVERWRITE}") from None
    if dtype != _U64 or fortran or len(shape) != 1:
        raise CurateError(f"{path}: not a uid file ({dtype}, {shape}); use {OVERWRITE}")
    return fh.tell()


def _read_u64(fh, pos: int, count: int, path: str) -> np.ndarray:
    fh.seek(pos)
    data = fh.read(8 * count)
    if len(data) != 8 * count:
        raise CurateError(f"{path}: truncated uid file; use {OVERWRITE}")
    return np.frombuffer(data, dtype=_U64).astype(np.uint64)


def uid_file_ok(fs: fsspec.AbstractFileSystem, path: str, n_buckets: int) -> bool:
    """Whether ``path`` is a whole uid file written with ``n_buckets`` buckets.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
    path : str
    n_buckets : int

    Returns
    -------
    bool
        False for a missing, truncated or foreign file, or one with another B.
    """
    if not fs.exists(path):
        return False
    try:
        with fs.open(path, "rb") as fh:
            base = _open_header(fh, path)
            head = _read_u64(fh, base, 1, path)
            if int(head[0]) != n_buckets:
                return False
            last = _read_u64(fh, base + 8 * (1 + n_buckets), 1, path)
            return fs.size(path) == base + 8 * (2 + n_buckets + int(last[0]))
    except CurateError:
        return False


def read_bucket(fs: fsspec.AbstractFileSystem, path: str, k: int, n_buckets: int) -> np.ndarray:
    """The sorted uids of bucket ``k`` in one part's uid file (two small ranged reads).

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
    path : str
        The uid file.
    k : int
        The bucket, in [0, n_buckets).
    n_buckets : int
        B; a file written with another B is an error.

    Returns
    -------
    ndarray of uint64

    Raises
    ------
    CurateError
        If the file is missing, truncated, not a uid file or written with another B.

    Examples
    --------
    >>> fs = fsspec.filesystem("memory")
    >>> write_part_uids(fs, "/u.npy", np.array([3, 2**63 + 1, 1], np.uint64), 2)
    >>> read_bucket(fs, "/u.npy", 0, 2).tolist(), read_bucket(fs, "/u.npy", 1, 2).tolist()
    ([1, 3], [9223372036854775809])
    """
    try:
        with fs.open(path, "rb") as fh:
            base = _open_header(fh, path)
            b = int(_read_u64(fh, base, 1, path)[0])
            if b != n_buckets:
                raise CurateError(
                    f"{path}: written with {b} uid buckets, this run uses {n_buckets} "
                    f"(the inputs changed?); use {OVERWRITE}"
                )
            lo, hi = (int(v) for v in _read_u64(fh, base + 8 * (1 + k), 2, path))
            return _read_u64(fh, base + 8 * (2 + n_buckets + lo), hi - lo, path)
    except FileNotFoundError:
        raise CurateError(f"uid file {path} is missing; use {OVERWRITE}") from None


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class UidCheck:
    """What a bucket task needs (one key of the graph, which every bucket task reads)."""

    parts: tuple[Part, ...]
    out: str
    id_column: str
    text_column: str | None
    n_buckets: int

    def bucket(self, k: int) -> Duplicate | None:
        """Find a duplicate id among the uids of bucket ``k`` of every part (or None)."""
        fs, _ = fsspec.core.url_to_fs(self.out)
        arrays: list[np.ndarray] = []
        owners: list[Part] = []
        for part in self.parts:
            a = read_bucket(fs, uid_file(self.out, part.index), k, self.n_buckets)
            if a.size:
                arrays.append(a)
                owners.append(part)
        if not arrays:
            return None
        merged = np.concatenate(arrays)
        merged.sort()
        candidates = np.unique(merged[1:][merged[1:] == merged[:-1]])
        del merged
        cache: dict[int, tuple[pa.Array, np.ndarray]] = {}
        for u in candidates:
            rows: list[tuple[object, str, int]] = []
            for a, part in zip(arrays, owners, strict=True):
                j = int(np.searchsorted(a, u))
                if j < a.size and a[j] == u:
                    for values, uids, path, row_start in self._ids(part, cache):
                        for r in np.flatnonzero(uids == u).tolist():
                            rows.append((values[r].as_py(), path, row_start + r))
            found = _equal_values(rows)
            if found is not None:
                return found
        return None

    def _ids(self, part: Part, cache: dict) -> list[tuple[pa.Array, np.ndarray, str, int]]:
        """(id values, their uids, file path, first row) of each piece of ``part``."""
        if part.index not in cache:
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            found = []
            for piece in part.pieces:
                path, ids = piece.file.path, [self.id_column]
                # (Table by table: a CSV file (or compressed TSV file) of any size is
                # one part; only its ids are kept.)
                for row, table in piece_tables(piece, ids, self.text_column, self.id_column):
                    column = table.column(self.id_column).combine_chunks()
                    found.append((column, value_uids(column, self.id_column, path, row), path, row))
            cache[part.index] = found
        return cache[part.index]


def _bucket_task(check: UidCheck, k: int) -> Duplicate | None:
    return check.bucket(k)


def find_duplicate(client, check: UidCheck) -> Duplicate | None:
    """Run one task per bucket on ``client``; the first duplicate (in bucket order) or None.

    Parameters
    ----------
    client : distributed.Client
        The run's client.
    check : UidCheck
        The parts (whose uid files are all written), the output folder and the id column.

    Returns
    -------
    Duplicate or None
    """
    import dask

    if not check.parts:
        return None
    shared = graph_key(check)
    tasks = [dask.delayed(_bucket_task, pure=False)(shared, k) for k in range(check.n_buckets)]
    then = f"the matched parts are kept; run the same command with {RESUME} to continue"
    for found in gathered(client, client.compute(tasks), then):
        if found is not None:
            return found
    return None
