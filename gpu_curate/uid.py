"""Stable 64-bit row ids (uids): the key of every counter-based draw (README, Semantics).

* With an id column: a hash of each id value (integers, or the UTF-8 bytes of strings).
* Without: a hash of (input file's path relative to the input root, row number in the file).

Either way a row's uid does not depend on partitioning, worker count, device or resume.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .balance import fmix64_array
from .errors import CurateError, NullIdError, counted

_GOLDEN = 0x9E3779B97F4A7C15
# Distinct domains, so an integer id and a row position never hash alike by construction.
_INT_DOMAIN = 0x5851F42D4C957F2D
_STR_SEED = 0x14057B7EF767814F
# Integers of a uint64 column past int64's range (their bits are those of negative ints).
_BIG_INT_DOMAIN = 0xD6E8FEB86659FD93


def path_key(relpath: str) -> int:
    """64-bit key of a relative input path (blake2b of its UTF-8 bytes; a local file name
    that is not UTF-8 keeps its own bytes, which Python holds as surrogates)."""
    digest = hashlib.blake2b(relpath.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def position_uids(relpath: str, row_start: int, n: int) -> np.ndarray:
    """uids of rows row_start .. row_start + n - 1 of the file ``relpath``.

    ``uid = fmix64(path_key(relpath) ^ fmix64(row + 0x9E3779B97F4A7C15))`` (mod 2**64).

    Examples
    --------
    >>> position_uids("a.parquet", 0, 2).dtype
    dtype('uint64')
    """
    rows = np.arange(row_start, row_start + n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        rows += np.uint64(_GOLDEN)
    h = fmix64_array(rows)
    h ^= np.uint64(path_key(relpath))
    return fmix64_array(h)


def value_uids(
    column: pa.Array | pa.ChunkedArray, name: str = "id", where: str = "", row_start: int = 0
) -> np.ndarray:
    """uids from an id column: integers or strings; nulls are an error.

    ``where`` (the file) and ``row_start`` (the column's first row in it) place a null,
    or a column of another type, in the error message.
    """
    at = f"{where}: " if where else ""  # (the messages' prefix)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        first = row_start + int(pc.index(column.is_null(), True).as_py())
        raise NullIdError(
            f"{at}id column {name!r} has "
            f"{counted(column.null_count, 'null value')}, the first at row {first} "
            "(uids must be unique)",
            first,
        )
    t = column.type
    if pa.types.is_dictionary(t):  # (a pandas Categorical): the values it stands for
        column = column.cast(t.value_type)
        t = column.type
    if len(column) == 0:
        # An empty file's id column may have type null (pandas writes an empty object
        # column so): it holds no ids, so nothing to hash and nothing to reject.
        return np.zeros(0, np.uint64)
    if pa.types.is_integer(t):
        raw = column.to_numpy(zero_copy_only=False)
        values = raw.astype(np.int64).view(np.uint64).copy()
        values ^= np.uint64(_INT_DOMAIN)
        uids = fmix64_array(values)
        if raw.dtype == np.uint64 and (big := raw >= np.uint64(1 << 63)).any():
            # Past int64's range: 2**64 - 1 has the bits of -1, and took its uid. (An integer
            # keeps one uid whatever its column's type; these get their own.)
            uids[big] = fmix64_array(uids[big] ^ np.uint64(_BIG_INT_DOMAIN))
        return uids
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        from .kernels import cpu
        from .match import _host_buffers

        offsets, data, _, _ = _host_buffers(column)
        return cpu.hash_rows(offsets, data, np.uint64(_STR_SEED))
    raise CurateError(f"{at}id column {name!r} is {t}; use an integer or string column")


__all__ = ["path_key", "position_uids", "value_uids"]
