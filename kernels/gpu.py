"""CUDA build of the matcher: ``rowlogic`` under ``numba.cuda.jit(device=True)``.

One thread per row, running the same per-row functions as the CPU build. Most rows take
one kernel (``_match_short``): a row of at most ``LOCAL_TOKENS`` tokens keeps them in
per-thread local arrays, which the hardware interleaves across a warp and caches in L1,
and writes its sorted, distinct ids into a room guessed from its length. The few rows
that have more tokens or overflow their room are matched again with the token scratch
in global memory (tokens + count, write + sort/unique), and one compaction gathers every
row's ids into the CSR. Runs on a GPU with CuPy arrays, or under the Numba CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) with NumPy arrays, which is how CI checks it
against the CPU build.
"""

import threading

import numpy as np
from numba import cuda

from .compile import invalidate_stale_cache, load_rowlogic

invalidate_stale_cache()
_rl = load_rowlogic(cuda.jit(device=True), "gpu_curate.kernels._rowlogic_cuda")
count_tokens = _rl.count_tokens
tokenize_row = _rl.tokenize_row
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
# Rows are matched in tiles of about this many text bytes.
TILE_BYTES = 32 << 20
# Tokens a row may have to be matched in local memory (24 bytes each, per thread); a
# LAION alt-text has about 11.
LOCAL_TOKENS = 32


def _room(lengths):
    """Ids room guessed for each row of ``lengths`` bytes (real text: ~1 id per 20 bytes)."""
    return lengths // 4 + 4


@cuda.jit(cache=True)
def _match_short(
    offsets, data, validity, bit_offset, r0, vt, vmask, vbloom, bmask, long_data, et, emask,
    room_off, occ, uniq,
):  # fmt: skip
    """Rows of at most LOCAL_TOKENS tokens, tokens in local memory; uniq = -1 for the rest."""
    ii = cuda.grid(1)
    if ii < uniq.shape[0]:
        i = r0 + ii
        uniq[ii] = 0
        if is_valid(validity, bit_offset, i):
            s = offsets[i]
            e = offsets[i + 1]
            tslot = cuda.local.array(LOCAL_TOKENS, np.int64)
            tinfo = cuda.local.array(LOCAL_TOKENS, np.uint64)
            tstart = cuda.local.array(LOCAL_TOKENS, np.int64)
            if count_tokens(data, s, e) > LOCAL_TOKENS:
                uniq[ii] = -1
            else:
                t = tokenize_row(
                    data, s, e, vt, vmask, vbloom, bmask, long_data, tslot, tinfo, tstart, 0
                )
                lo = room_off[ii]
                c = walk_row(tslot, tinfo, 0, t, et, emask, vbloom, bmask, occ, lo, False)
                if c > room_off[ii + 1] - lo:
                    uniq[ii] = -1
                elif c > 0:
                    walk_row(tslot, tinfo, 0, t, et, emask, vbloom, bmask, occ, lo, True)
                    uniq[ii] = sort_unique(occ, lo, c)


@cuda.jit(cache=True)
def _tokens_count(
    offsets, data, validity, bit_offset, r0, rows, sbase, vt, vmask, vbloom, bmask, long_data,
    et, emask, tslot, tinfo, tstart, ntok, counts, dummy,
):  # fmt: skip
    """Rows ``rows`` of the tile, token scratch in global memory from ``sbase``."""
    jj = cuda.grid(1)
    if jj < counts.shape[0]:
        i = r0 + rows[jj]
        ntok[jj] = 0
        counts[jj] = 0
        if is_valid(validity, bit_offset, i):
            base = sbase[jj]
            t = tokenize_row(
                data, offsets[i], offsets[i + 1], vt, vmask, vbloom, bmask, long_data,
                tslot, tinfo, tstart, base,
            )  # fmt: skip
            ntok[jj] = t
            counts[jj] = walk_row(tslot, tinfo, base, t, et, emask, vbloom, bmask, dummy, 0, False)


@cuda.jit(cache=True)
def _write_unique(sbase, et, emask, vbloom, bmask, tslot, tinfo, ntok, counts, occ_off, occ, uniq):
    jj = cuda.grid(1)
    if jj < counts.shape[0]:
        uniq[jj] = 0
        c = counts[jj]
        if c > 0:
            base = sbase[jj]
            walk_row(tslot, tinfo, base, ntok[jj], et, emask, vbloom, bmask, occ, occ_off[jj], True)
            uniq[jj] = sort_unique(occ, occ_off[jj], c)


@cuda.jit(cache=True)
def _compact(occ, occ_off, uniq, dsts, ids):
    ii = cuda.grid(1)
    if ii < uniq.shape[0]:
        lo = occ_off[ii]
        dst = dsts[ii]
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


def _exclusive_cumsum(xp, counts):
    out = xp.zeros(counts.shape[0] + 1, np.int64)
    xp.cumsum(counts, out=out[1:])
    return out


def _match_long(offsets, data, validity, bit_offset, r0, rows, lengths, t, xp, dummy):
    """Rows ``rows`` of the tile (the ones _match_short left), token scratch in global
    memory: (distinct ids in a buffer, their offsets in it, their counts)."""
    n = int(rows.shape[0])
    # A row of b bytes has at most 2b + 1 tokens: each row's scratch starts at the running
    # sum of that bound over the rows before it.
    sbase = _exclusive_cumsum(xp, 2 * lengths[rows] + 1)
    ntok_max = int(sbase[-1])
    tslot = xp.empty(ntok_max, np.int64)
    tinfo = xp.empty(ntok_max, np.uint64)
    tstart = xp.empty(ntok_max, np.int64)
    ntok = xp.empty(n, np.int64)
    counts = xp.empty(n, np.int64)
    _launch(
        _tokens_count, n, offsets, data, validity, bit_offset, r0, rows, sbase, t.vt, t.vmask,
        t.vbloom, t.bmask, t.long_data, t.et, t.emask, tslot, tinfo, tstart, ntok, counts,
        dummy,
    )  # fmt: skip
    del tstart
    occ_off = _exclusive_cumsum(xp, counts)
    occ = xp.empty(int(occ_off[-1]), np.int32)
    uniq = xp.empty(n, np.int64)
    _launch(
        _write_unique, n, sbase, t.et, t.emask, t.vbloom, t.bmask, tslot, tinfo, ntok, counts,
        occ_off, occ, uniq,
    )  # fmt: skip
    return occ, occ_off[:-1], uniq


def match_rows(offsets, data, validity, bit_offset, tables, xp):
    """Match every row of a device Arrow string array; CSR (row_offsets, ids) on the device.

    ``offsets`` (host NumPy, for tiling) and its device twin are both accepted: pass the
    device arrays of ``offsets``, ``data``, ``validity`` and ``tables`` (a DeviceTables),
    and ``xp`` the array module that owns them (CuPy, or NumPy under the simulator).
    """
    host_offsets = offsets.get() if hasattr(offsets, "get") else np.asarray(offsets)
    n = host_offsets.shape[0] - 1
    dummy = xp.zeros(1, np.int32)
    t = tables
    counts_all = []
    parts = []
    r0 = 0
    while r0 < n:
        r1 = int(np.searchsorted(host_offsets, host_offsets[r0] + TILE_BYTES, side="right")) - 1
        r1 = min(max(r1, r0 + 1), n)
        m = r1 - r0
        lengths = (offsets[r0 + 1 : r1 + 1] - offsets[r0:r1]).astype(np.int64)
        room_off = _exclusive_cumsum(xp, _room(lengths))
        occ = xp.empty(int(room_off[-1]), np.int32)
        uniq = xp.empty(m, np.int64)
        _launch(
            _match_short, m, offsets, data, validity, bit_offset, r0, t.vt, t.vmask, t.vbloom,
            t.bmask, t.long_data, t.et, t.emask, room_off, occ, uniq,
        )  # fmt: skip
        src = room_off[:-1]
        rows = xp.nonzero(uniq < 0)[0].astype(np.int64)
        if rows.shape[0]:
            occ2, off2, uniq2 = _match_long(
                offsets, data, validity, bit_offset, r0, rows, lengths, t, xp, dummy
            )
            uniq[rows] = uniq2
            src = src.copy()
            src[rows] = off2 + occ.shape[0]
            occ = xp.concatenate([occ, occ2])
        row_off = _exclusive_cumsum(xp, uniq)
        ids = xp.empty(int(row_off[-1]), np.int32)
        _launch(_compact, m, occ, src, uniq, row_off, ids)
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
