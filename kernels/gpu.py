"""CUDA build of the matcher: ``rowlogic`` under ``numba.cuda.jit(device=True)``.

The CPU build gives each thread a run of rows. Here that would leave most lanes of a warp
idle (rows differ in length) and scatter every thread's reads and writes, so the work is
cut by token instead, with the same per-token functions:

1. ``_token_ends`` (one thread per text byte): how many tokens the byte ends
   (``token_bytes``); two prefix sums over the tile's bytes (rows started, tokens ended)
   then give every token its index, and ``_row_tokens`` / ``_split_tokens`` write each
   token's bounds. Each row's tokens are followed by one empty *barrier* token that no
   entry uses, so a trie walk stops at the end of its row by itself.
2. ``_lookup_tokens`` (one thread per token): ``lookup_token``.
3. ``_walk_count`` / ``_walk_write`` (one thread per token): ``walk_from``, the entry
   occurrences that start at that token, counted, then written in token order, so a row's
   occurrences are contiguous.
4. ``_row_unique`` (one thread per row): ``sort_unique``; ``_compact`` packs the CSR.

Runs on a GPU with CuPy arrays, or under the Numba CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) with NumPy arrays, which is how CI checks it against the CPU
build.
"""

import threading

import numpy as np
from numba import cuda

from .compile import invalidate_stale_cache, load_rowlogic

invalidate_stale_cache()
_rl = load_rowlogic(cuda.jit(device=True), "gpu_curate.kernels._rowlogic_cuda")
token_bytes = _rl.token_bytes
lookup_token = _rl.lookup_token
walk_from = _rl.walk_from
sort_unique = _rl.sort_unique
is_valid = _rl.is_valid
hash_bytes = _rl.hash_bytes

THREADS = 128
# numba-cuda loads a kernel's module into the context on its first launch, and two threads
# doing that at once fail ("key already in dictionary: <CUlibrary ...>"; numba-cuda 0.30.4
# on an H100, four Dask threads of one GPU worker). Launches are asynchronous, so holding
# this lock around them costs no device time.
_LAUNCH = threading.Lock()
# Kernels are cached on disk (cache=True): each Dask GPU worker is a new process, which
# would otherwise compile them again on its first part.
# Rows are matched in tiles of about this many text bytes. A tile's scratch is ~13 bytes
# per text byte plus ~32 per token (one token per 5 bytes in alt-texts; at most 2 per byte).
TILE_BYTES = 32 << 20


@cuda.jit(cache=True)
def _token_ends(data, byte0, rows_to, validity, bit_offset, r0, ends):
    """ends[q]: the tokens that text byte q of the tile ends (none in a null row)."""
    q = cuda.grid(1)
    if q < ends.shape[0]:
        k = 0
        if is_valid(validity, bit_offset, r0 + rows_to[q] - 1):
            k = token_bytes(data[byte0 + q])
        ends[q] = k


@cuda.jit(cache=True)
def _row_tokens(offsets, validity, bit_offset, r0, m, byte0, ends_before, tstart, tend):
    """A row's first token starts at the row (a null row's is dead), its last ends there;
    the barrier token after it is dead too.

    Row ii's tokens start at 2 * ii + ends_before[its first byte]: each row before it
    owns one token more than the tokens its bytes end, plus its barrier.
    """
    ii = cuda.grid(1)
    if ii < m:
        i = r0 + ii
        s = offsets[i] - byte0
        e = offsets[i + 1] - byte0
        first = 2 * ii + ends_before[s]
        barrier = 2 * (ii + 1) + ends_before[e] - 1
        tstart[first] = s if is_valid(validity, bit_offset, i) else -1
        tend[barrier - 1] = e
        tstart[barrier] = -1
        tend[barrier] = e


@cuda.jit(cache=True)
def _split_tokens(rows_to, ends_before, ends, tstart, tend):
    """Bounds of the tokens around each token-ending byte q."""
    q = cuda.grid(1)
    if q < ends.shape[0]:
        k = ends[q]
        if k > 0:
            t = 2 * (rows_to[q] - 1) + ends_before[q]
            tend[t] = q
            if k == 2:  # a wrap byte is a token of its own
                tstart[t + 1] = q
                tend[t + 1] = q + 1
            tstart[t + k] = q + 1


@cuda.jit(cache=True)
def _lookup_tokens(data, byte0, tstart, tend, vt, vmask, vbloom, bmask, long_data, tslot, tinfo):
    t = cuda.grid(1)
    if t < tslot.shape[0]:
        s = tstart[t]
        if s < 0:
            tslot[t] = -1
            tinfo[t] = 0
        else:
            slot, info = lookup_token(
                data, byte0 + s, byte0 + tend[t], vt, vmask, vbloom, bmask, long_data
            )
            tslot[t] = slot
            tinfo[t] = info


@cuda.jit(cache=True)
def _walk_count(tslot, tinfo, et, emask, vbloom, bmask, counts, dummy):
    t = cuda.grid(1)
    n = tslot.shape[0]
    if t < n:
        counts[t] = walk_from(tslot, tinfo, t, n, et, emask, vbloom, bmask, dummy, 0, False)


@cuda.jit(cache=True)
def _walk_write(tslot, tinfo, et, emask, vbloom, bmask, occ_off, occ):
    t = cuda.grid(1)
    n = tslot.shape[0]
    if t < n and occ_off[t + 1] > occ_off[t]:
        walk_from(tslot, tinfo, t, n, et, emask, vbloom, bmask, occ, occ_off[t], True)


@cuda.jit(cache=True)
def _row_unique(offsets, r0, byte0, ends_before, occ_off, occ, row_lo, uniq):
    ii = cuda.grid(1)
    if ii < uniq.shape[0]:
        i = r0 + ii
        first = 2 * ii + ends_before[offsets[i] - byte0]
        after = 2 * (ii + 1) + ends_before[offsets[i + 1] - byte0]
        lo = occ_off[first]
        row_lo[ii] = lo
        uniq[ii] = sort_unique(occ, lo, occ_off[after] - lo)


@cuda.jit(cache=True)
def _compact(occ, occ_off, uniq, row_off, ids):
    ii = cuda.grid(1)
    if ii < uniq.shape[0]:
        lo = occ_off[ii]
        dst = row_off[ii]
        for j in range(uniq[ii]):
            ids[dst + j] = occ[lo + j]


@cuda.jit(cache=True)
def _hash_rows(offsets, data, seed, out):
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = hash_bytes(data, offsets[i], offsets[i + 1], seed)


def _launch(kernel, n: int, *args) -> None:
    """Launch ``kernel`` with one thread per item of ``n``, holding the launch lock."""
    with _LAUNCH:
        kernel[max(1, (n + THREADS - 1) // THREADS), THREADS](*args)


def _exclusive_cumsum(xp, counts, dtype=np.int64):
    out = xp.zeros(counts.shape[0] + 1, dtype)
    xp.cumsum(counts, dtype=dtype, out=out[1:])
    return out


def _match_tile(offsets, data, validity, bit_offset, r0, r1, byte0, nb, t, xp):
    """(uniq per row, ids) of rows r0..r1, whose text is data[byte0:byte0 + nb]."""
    m = r1 - r0
    # Token indices and positions fit in int32 unless a single row is over ~1 GB.
    idx = np.int32 if 2 * (nb + m) < 2**31 else np.int64
    # rows_to[q]: rows that start at or before byte q, so byte q is in row rows_to[q] - 1.
    starts = offsets[r0:r1] - byte0
    rows_to = xp.cumsum(xp.bincount(starts, minlength=nb + 1)[:nb], dtype=idx)
    del starts
    ends = xp.empty(nb, np.int8)
    _launch(_token_ends, nb, data, byte0, rows_to, validity, bit_offset, r0, ends)
    ends_before = _exclusive_cumsum(xp, ends, idx)
    ntok = 2 * m + int(ends_before[-1])
    tstart = xp.empty(ntok, idx)
    tend = xp.empty(ntok, idx)
    _launch(_row_tokens, m, offsets, validity, bit_offset, r0, m, byte0, ends_before, tstart, tend)
    _launch(_split_tokens, nb, rows_to, ends_before, ends, tstart, tend)
    del rows_to, ends
    tslot = xp.empty(ntok, np.int32)
    tinfo = xp.empty(ntok, np.uint64)
    _launch(
        _lookup_tokens, ntok, data, byte0, tstart, tend, t.vt, t.vmask, t.vbloom, t.bmask,
        t.long_data, tslot, tinfo,
    )  # fmt: skip
    del tstart, tend
    counts = xp.empty(ntok, np.int32)
    _launch(_walk_count, ntok, tslot, tinfo, t.et, t.emask, t.vbloom, t.bmask, counts,
            xp.zeros(1, np.int32))  # fmt: skip
    occ_off = _exclusive_cumsum(xp, counts)
    del counts
    occ = xp.empty(int(occ_off[-1]), np.int32)
    _launch(_walk_write, ntok, tslot, tinfo, t.et, t.emask, t.vbloom, t.bmask, occ_off, occ)
    del tslot, tinfo
    row_lo = xp.empty(m, np.int64)
    uniq = xp.empty(m, np.int64)
    _launch(_row_unique, m, offsets, r0, byte0, ends_before, occ_off, occ, row_lo, uniq)
    del ends_before, occ_off
    row_off = _exclusive_cumsum(xp, uniq)
    ids = xp.empty(int(row_off[-1]), np.int32)
    _launch(_compact, m, occ, row_lo, uniq, row_off, ids)
    return uniq, ids


def match_rows(offsets, data, validity, bit_offset, tables, xp):
    """Match every row of a device Arrow string array; CSR (row_offsets, ids) on the device.

    ``offsets`` (host NumPy, for tiling) and its device twin are both accepted: pass the
    device arrays of ``offsets``, ``data``, ``validity`` and ``tables`` (a DeviceTables),
    and ``xp`` the array module that owns them (CuPy, or NumPy under the simulator).
    """
    host_offsets = offsets.get() if hasattr(offsets, "get") else np.asarray(offsets)
    n = host_offsets.shape[0] - 1
    counts_all = []
    parts = []
    r0 = 0
    while r0 < n:
        r1 = int(np.searchsorted(host_offsets, host_offsets[r0] + TILE_BYTES, side="right")) - 1
        r1 = min(max(r1, r0 + 1), n)
        byte0 = int(host_offsets[r0])
        nb = int(host_offsets[r1]) - byte0
        uniq, ids = _match_tile(offsets, data, validity, bit_offset, r0, r1, byte0, nb, tables, xp)
        counts_all.append(uniq)
        parts.append(ids)
        r0 = r1
    if not parts:
        return xp.zeros(1, np.int64), xp.zeros(0, np.int32)
    row_offsets = _exclusive_cumsum(xp, xp.concatenate(counts_all))
    return row_offsets, xp.concatenate(parts)


def hash_rows(offsets, data, seed, xp):
    """64-bit hash of each row's bytes, on the device (same values as the CPU build)."""
    n = offsets.shape[0] - 1
    out = xp.empty(n, np.uint64)
    _launch(_hash_rows, n, offsets, data, np.uint64(seed), out)
    return out
