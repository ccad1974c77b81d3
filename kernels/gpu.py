"""CUDA build of the matcher: ``rowlogic`` under ``numba.cuda.jit(device=True)``.

The CPU build gives each thread a run of rows. Here that would leave most lanes of a warp
idle (rows differ in length) and scatter every thread's reads and writes, so the work is
cut by token instead, with the same per-token functions:

1. ``_token_ends`` (threads striding over the text bytes): how many tokens each byte ends
   (``token_bytes``); ``_row_starts`` adds two per row at the row's first byte (its first
   token and one empty *barrier* token after its last, which no entry uses, so a trie
   walk stops at the end of its row by itself). One prefix sum then gives every token
   its index, and ``_row_tokens`` / ``_split_tokens`` write each token's bounds.
2. ``_lookup_tokens`` (one thread per token): ``lookup_token``.
3. ``_walk_count`` / ``_walk_write`` (one thread per token): ``walk_row`` over that token
   alone, the entry occurrences that start there, counted, then written in token order,
   so a row's occurrences are contiguous.
4. ``_row_unique`` (one thread per row): ``sort_unique``; ``_compact`` packs the CSR.
   (Handing the rows out in order of their number of occurrences kept more lanes busy
   but cost locality: 7.1-7.3 ms instead of 4.8-5.0 per 4M texts on an H100.)

Runs on a GPU with CuPy arrays, or under the Numba CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) with NumPy arrays, which is how CI checks it against the CPU
build.
"""

import threading
import warnings

import numpy as np
from numba import cuda

from .compile import invalidate_stale_cache, load_rowlogic

invalidate_stale_cache()
# numba-cuda warns on every launch of under 128 blocks (a tile of under 16,384 rows or
# tokens: every small part, every notebook call), once per grid size and process. Those
# launches are small because the work is; the warning says nothing a user can act on.
# (By message: the warning's class moved between numba and numba-cuda.)
_SMALL_GRID = r"Grid size \d+ will likely result in GPU under-utilization"
_rl = load_rowlogic(cuda.jit(device=True), "gpu_curate.kernels._rowlogic_cuda")
token_bytes = _rl.token_bytes
lookup_token = _rl.lookup_token
walk_row = _rl.walk_row
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
# The per-byte kernels loop over the tile's bytes with this many threads (about as many as
# an H100 holds at once): a thread per byte spent its time starting and ending threads.
STRIDED_THREADS = 1 << 18


@cuda.jit(cache=True)
def _token_ends(data, byte0, nb, v, ends):
    """ends[q] = v[q]: the tokens that text byte q of the tile ends (v gets rows later)."""
    q = cuda.grid(1)
    if q == 0:
        v[nb] = 0
    step = cuda.gridsize(1)
    while q < nb:
        k = token_bytes(data[byte0 + q])
        ends[q] = k
        v[q] = k
        q += step


@cuda.jit(cache=True)
def _row_starts(offsets, validity, bit_offset, r0, m, byte0, v, ends, group):
    """Each row adds 2 to v at its first byte (its first token and its barrier); the
    first row of the rows starting at a byte (empty rows share it) is noted in ``group``;
    a null row's bytes end no tokens."""
    ii = cuda.grid(1)
    if ii < m:
        i = r0 + ii
        s = offsets[i] - byte0
        cuda.atomic.add(v, s, 2)
        if ii == 0 or offsets[i - 1] != offsets[i]:
            group[s] = ii
        if not is_valid(validity, bit_offset, i):
            for j in range(s, offsets[i + 1] - byte0):
                k = ends[j]
                if k > 0:
                    ends[j] = 0
                    cuda.atomic.add(v, j, -k)


@cuda.jit(cache=True)
def _row_tokens(offsets, validity, bit_offset, r0, m, byte0, before, group, tstart, tend, first):
    """A row's first token starts at the row (a null row's is dead), its last ends there;
    the barrier token after it is dead too.

    ``before[q]`` counts 2 per row that starts before byte q plus the tokens that the bytes
    before q end, so row ii's first token is 2 * ii + before[s] - 2 * (first row at s).
    """
    ii = cuda.grid(1)
    if ii < m:
        i = r0 + ii
        s = offsets[i] - byte0
        e = offsets[i + 1] - byte0
        g = group[s]
        f = 2 * ii + before[s] - 2 * g
        ntok = 1
        if e > s:
            # Rows starting in [s, e) are this row and the empty ones before it at s.
            ntok = 1 + before[e] - before[s] - 2 * (ii - g + 1)
        barrier = f + ntok
        tstart[f] = s if is_valid(validity, bit_offset, i) else -1
        tend[barrier - 1] = e
        tstart[barrier] = -1
        tend[barrier] = e
        first[ii] = f
        if ii == m - 1:
            first[m] = barrier + 1


@cuda.jit(cache=True)
def _split_tokens(nb, before, v, ends, tstart, tend):
    """Bounds of the tokens around each token-ending byte q."""
    q = cuda.grid(1)
    step = cuda.gridsize(1)
    while q < nb:
        k = ends[q]
        if k > 0:
            # v[q] - k is 2 per row starting at q: the row holding q and the empty ones.
            t = before[q] + v[q] - k - 2
            tend[t] = q
            if k == 2:  # a wrap byte is a token of its own
                tstart[t + 1] = q
                tend[t + 1] = q + 1
            tstart[t + k] = q + 1
        q += step


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
        counts[t] = walk_row(tslot, tinfo, t, t + 1, n, et, emask, vbloom, bmask, dummy, 0, False)


@cuda.jit(cache=True)
def _walk_write(tslot, tinfo, et, emask, vbloom, bmask, occ_off, occ):
    t = cuda.grid(1)
    n = tslot.shape[0]
    if t < n and occ_off[t + 1] > occ_off[t]:
        walk_row(tslot, tinfo, t, t + 1, n, et, emask, vbloom, bmask, occ, occ_off[t], True)


@cuda.jit(cache=True)
def _row_unique(lo, n, occ, uniq):
    r = cuda.grid(1)
    if r < uniq.shape[0]:
        uniq[r] = sort_unique(occ, lo[r], n[r])


@cuda.jit(cache=True)
def _compact(occ, row_lo, uniq, row_off, ids):
    ii = cuda.grid(1)
    if ii < uniq.shape[0]:
        lo = row_lo[ii]
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
        _quiet_small_grids()
        kernel[max(1, (n + THREADS - 1) // THREADS), THREADS](*args)


def _quiet_small_grids() -> None:
    # At each launch, not once at import: a filter added while the module was imported
    # inside a warnings.catch_warnings() block (a test's, a library's) went with the block.
    if not any(f[1] is not None and f[1].pattern == _SMALL_GRID for f in warnings.filters):
        warnings.filterwarnings("ignore", message=_SMALL_GRID)


def _exclusive_cumsum(xp, counts, dtype=np.int64):
    out = xp.zeros(counts.shape[0] + 1, dtype)
    xp.cumsum(counts, dtype=dtype, out=out[1:])
    return out


def _index_type(nb: int, m: int):
    """Dtype of a tile's token indices and byte positions: int32 unless a single row is over
    ~1 GB (the tile's tokens, at most 2 per byte plus 2 per row, must fit)."""
    return np.int32 if 2 * (nb + m) + 2 < 2**31 else np.int64


def _match_tile(offsets, data, validity, bit_offset, r0, r1, byte0, nb, t, xp):
    """(uniq per row, ids) of rows r0..r1, whose text is data[byte0:byte0 + nb]."""
    m = r1 - r0
    idx = _index_type(nb, m)
    strided = min(nb + 1, STRIDED_THREADS)
    v = xp.empty(nb + 1, idx)
    ends = xp.empty(nb, np.int8)
    group = xp.empty(nb + 1, idx)
    _launch(_token_ends, strided, data, byte0, nb, v, ends)
    _launch(_row_starts, m, offsets, validity, bit_offset, r0, m, byte0, v, ends, group)
    before = _exclusive_cumsum(xp, v, idx)
    ntok = int(before[-1])
    tstart = xp.empty(ntok, idx)
    tend = xp.empty(ntok, idx)
    first = xp.empty(m + 1, idx)
    _launch(
        _row_tokens, m, offsets, validity, bit_offset, r0, m, byte0, before, group, tstart,
        tend, first,
    )  # fmt: skip
    _launch(_split_tokens, strided, nb, before, v, ends, tstart, tend)
    del v, ends, group, before
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
    row_lo = occ_off[first[:-1]]
    row_n = occ_off[first[1:]] - row_lo
    del occ_off, first
    uniq = xp.empty(m, np.int64)
    _launch(_row_unique, m, row_lo, row_n, occ, uniq)
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
