"""CPU build of the matcher: ``rowlogic`` under ``numba.njit``, parallel over chunks of rows."""

import types

import numba
import numpy as np

from .compile import invalidate_stale_cache, load_rowlogic

invalidate_stale_cache()
_rl = load_rowlogic(numba.njit(cache=True, nogil=True), "gpu_curate.kernels._rowlogic_cpu")
tokenize_row = _rl.tokenize_row
walk_row = _rl.walk_row
sort_unique = _rl.sort_unique
is_valid = _rl.is_valid
hash_bytes = _rl.hash_bytes

# A thread matches a chunk of consecutive rows (about this many text bytes) on its own:
# the token scratch is one row's worth and stays in L1, and each row's ids go straight to
# the chunk's stretch of the output.
CHUNK_BYTES = 1 << 16


@numba.njit(cache=True, nogil=True)
def _match_chunk(
    offsets, data, validity, bit_offset, r0, r1, vt, vmask, vbloom, bmask, long_data, et,
    emask, depth, counts, out, lo, hi,
):  # fmt: skip
    """Match rows r0..r1 into out[lo:hi]; return the first row that did not fit (r1: all did)."""
    maxlen = 0
    for i in range(r0, r1):
        maxlen = max(maxlen, np.int64(offsets[i + 1] - offsets[i]))
    m = 2 * maxlen + 1  # a row of b bytes has at most 2b + 1 tokens
    # (Allocated here, not in a shared helper: arrays returned from another function
    # measured 3-7% slower in this loop.)
    tslot = np.empty(m, np.int64)
    tinfo = np.empty(m, np.uint64)
    tstart = np.empty(m, np.int64)
    pos = lo
    for i in range(r0, r1):
        c = 0
        if is_valid(validity, bit_offset, i):
            s = offsets[i]
            e = offsets[i + 1]
            k = tokenize_row(data, s, e, vt, vmask, vbloom, bmask, long_data, tslot, tinfo, tstart)
            # Each token starts at most ``depth`` occurrences (the longest entry's tokens),
            # so most rows need no counting walk before writing.
            if pos + k * depth > hi:
                need = walk_row(tslot, tinfo, 0, k, k, et, emask, vbloom, bmask, out, pos, False)
                if pos + need > hi:
                    return i
            occ = walk_row(tslot, tinfo, 0, k, k, et, emask, vbloom, bmask, out, pos, True)
            c = sort_unique(out, pos, occ)
        counts[i] = c
        pos += c
    return r1


@numba.njit(cache=True, nogil=True)
def _chunk_occurrences(
    offsets, data, validity, bit_offset, r0, r1, vt, vmask, vbloom, bmask, long_data, et, emask
):  # fmt: skip
    """Occurrences (repeats included) of rows r0..r1: the exact room they need."""
    maxlen = 0
    for i in range(r0, r1):
        maxlen = max(maxlen, np.int64(offsets[i + 1] - offsets[i]))
    m = 2 * maxlen + 1
    tslot = np.empty(m, np.int64)
    tinfo = np.empty(m, np.uint64)
    tstart = np.empty(m, np.int64)
    dummy = np.empty(1, np.int32)
    total = 0
    for i in range(r0, r1):
        if is_valid(validity, bit_offset, i):
            k = tokenize_row(
                data, offsets[i], offsets[i + 1], vt, vmask, vbloom, bmask, long_data,
                tslot, tinfo, tstart,
            )  # fmt: skip
            total += walk_row(tslot, tinfo, 0, k, k, et, emask, vbloom, bmask, dummy, 0, False)
    return total


def _twins(fn):
    """``fn`` compiled twice: parallel over its prange, and serial (prange runs as range).

    A caller on one Numba thread (a Dask worker thread, which already runs one task per
    core) gets the serial build: no OpenMP team to start, and no idle team spinning on
    the cores the other tasks need. The serial twin is a renamed copy, so the two builds
    keep separate entries in Numba's cache.
    """
    serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial")
    serial.__qualname__ = fn.__qualname__ + "_serial"
    jit = numba.njit(cache=True, nogil=True)
    return numba.njit(cache=True, nogil=True, parallel=True)(fn), jit(serial)


def _pick(twins):
    return twins[0] if numba.get_num_threads() > 1 else twins[1]


def _match_chunks(
    offsets, data, validity, bit_offset, bounds, todo, room, vt, vmask, vbloom, bmask,
    long_data, et, emask, depth, counts, out, fits,
):  # fmt: skip
    for j in numba.prange(todo.shape[0]):
        c = todo[j]
        stop = _match_chunk(
            offsets, data, validity, bit_offset, bounds[c], bounds[c + 1], vt, vmask, vbloom,
            bmask, long_data, et, emask, depth, counts, out, room[j], room[j + 1],
        )  # fmt: skip
        fits[j] = stop == bounds[c + 1]


_match_chunks = _twins(_match_chunks)


def _exact_room(
    offsets, data, validity, bit_offset, bounds, todo, vt, vmask, vbloom, bmask, long_data,
    et, emask,
):  # fmt: skip
    need = np.empty(todo.shape[0], np.int64)
    for j in numba.prange(todo.shape[0]):
        c = todo[j]
        need[j] = _chunk_occurrences(
            offsets, data, validity, bit_offset, bounds[c], bounds[c + 1], vt, vmask, vbloom,
            bmask, long_data, et, emask,
        )  # fmt: skip
    return need


_exact_room = _twins(_exact_room)


def _gather(out, starts, todo, bounds, row_offsets, ids):
    for j in numba.prange(todo.shape[0]):
        c = todo[j]
        lo = row_offsets[bounds[c]]
        src = starts[j]
        for q in range(row_offsets[bounds[c + 1]] - lo):
            ids[lo + q] = out[src + q]


_gather = _twins(_gather)


def _chunk_bounds(offsets: np.ndarray) -> np.ndarray:
    """Row bounds of chunks of about CHUNK_BYTES text bytes (a huge row is a chunk alone)."""
    n = offsets.shape[0] - 1
    marks = np.arange(int(offsets[0]) + CHUNK_BYTES, int(offsets[-1]), CHUNK_BYTES)
    cuts = np.searchsorted(offsets, marks, side="left")
    return np.unique(np.concatenate([[0], cuts, [n]]).clip(0, n)).astype(np.int64)


def match_rows(offsets, data, validity, bit_offset, tables):
    """Match every row of an Arrow string array; return CSR (row_offsets int64, ids int32).

    ``offsets`` are the n + 1 absolute offsets of the rows (int32 or int64), ``data`` the
    uint8 character buffer, ``validity`` the Arrow bitmap (empty when every row is valid)
    and ``bit_offset`` the array's slice offset into that bitmap.
    """
    n = offsets.shape[0] - 1
    counts = np.zeros(n, np.int64)
    if n == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.int32)
    bounds = _chunk_bounds(offsets)
    depth = max(1, tables.max_tokens)
    args = (tables.vt, tables.vmask, tables.vbloom, tables.bmask, tables.long_data,
            tables.et, tables.emask)  # fmt: skip
    # Round one guesses each chunk's room from its bytes (real text has ~1 id per 20 bytes);
    # a chunk that overflows is matched again with the exact room its occurrences need.
    todo = np.arange(bounds.size - 1, dtype=np.int64)
    nbytes = (offsets[bounds[1:]] - offsets[bounds[:-1]]).astype(np.int64)
    guess = nbytes // 4 + 256
    rounds = []
    while todo.size:
        room = np.zeros(todo.size + 1, np.int64)
        np.cumsum(guess, out=room[1:])
        out = np.empty(room[-1], np.int32)
        fits = np.zeros(todo.size, np.bool_)
        _pick(_match_chunks)(offsets, data, validity, bit_offset, bounds, todo, room, *args,
                             depth, counts, out, fits)  # fmt: skip
        rounds.append((out, room[:-1][fits], todo[fits]))
        todo = todo[~fits]
        if todo.size:
            guess = _pick(_exact_room)(offsets, data, validity, bit_offset, bounds, todo, *args)
    row_offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=row_offsets[1:])
    ids = np.empty(row_offsets[-1], np.int32)
    for out, starts, done in rounds:
        _pick(_gather)(out, starts, done, bounds, row_offsets, ids)
    return row_offsets, ids


def _hash_rows(offsets, data, seed):
    n = offsets.shape[0] - 1
    out = np.empty(n, np.uint64)
    for i in numba.prange(n):
        out[i] = hash_bytes(data, offsets[i], offsets[i + 1], seed)
    return out


_hash_rows = _twins(_hash_rows)


def hash_rows(offsets, data, seed):
    """64-bit hash of each row's bytes (for string id columns)."""
    return _pick(_hash_rows)(offsets, data, seed)
