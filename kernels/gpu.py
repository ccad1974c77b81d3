"""CUDA build of the matcher: ``rowlogic`` under ``numba.cuda.jit(device=True)``.

One thread per row. The same per-row functions as the CPU build run in three kernels:
tokens + count, write + sort/unique, compact. Runs on a GPU with CuPy arrays, or under
the Numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) with NumPy arrays, which is how CI
checks it against the CPU build.
"""

import threading

import numpy as np
from numba import cuda

from .compile import invalidate_stale_cache, load_rowlogic

invalidate_stale_cache()
_rl = load_rowlogic(cuda.jit(device=True), "gpu_curate.kernels._rowlogic_cuda")
token_base = _rl.token_base
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
# Rows are matched in tiles of about this many text bytes; the per-token scratch is
# 24 bytes per possible token (2 per byte), so 1.5 GB of device memory per tile.
TILE_BYTES = 32 << 20


@cuda.jit(cache=True)
def _tokens_count(
    offsets, data, validity, bit_offset, r0, byte0, vt, vmask, vbloom, bmask, long_data,
    et, emask, tslot, tinfo, tstart, ntok, counts, dummy,
):  # fmt: skip
    ii = cuda.grid(1)
    if ii < counts.shape[0]:
        i = r0 + ii
        ntok[ii] = 0
        counts[ii] = 0
        if is_valid(validity, bit_offset, i):
            base = token_base(offsets[i], byte0, ii)
            t = tokenize_row(
                data, offsets[i], offsets[i + 1], vt, vmask, vbloom, bmask, long_data,
                tslot, tinfo, tstart, base,
            )  # fmt: skip
            ntok[ii] = t
            counts[ii] = walk_row(tslot, tinfo, base, t, et, emask, vbloom, bmask, dummy, 0, False)


@cuda.jit(cache=True)
def _write_unique(
    offsets, r0, byte0, et, emask, vbloom, bmask, tslot, tinfo, ntok, counts, occ_off, occ, uniq
):
    ii = cuda.grid(1)
    if ii < counts.shape[0]:
        uniq[ii] = 0
        c = counts[ii]
        if c > 0:
            i = r0 + ii
            base = token_base(offsets[i], byte0, ii)
            walk_row(tslot, tinfo, base, ntok[ii], et, emask, vbloom, bmask, occ, occ_off[ii], True)
            uniq[ii] = sort_unique(occ, occ_off[ii], c)


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


def _exclusive_cumsum(xp, counts):
    out = xp.zeros(counts.shape[0] + 1, np.int64)
    xp.cumsum(counts, out=out[1:])
    return out


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
        byte0 = int(host_offsets[r0])
        ntok_max = 2 * (int(host_offsets[r1]) - byte0) + m  # token_base(), on the host
        tslot = xp.empty(ntok_max, np.int64)
        tinfo = xp.empty(ntok_max, np.uint64)
        tstart = xp.empty(ntok_max, np.int64)
        ntok = xp.empty(m, np.int64)
        counts = xp.empty(m, np.int64)
        _launch(
            _tokens_count, m, offsets, data, validity, bit_offset, r0, byte0, t.vt, t.vmask,
            t.vbloom, t.bmask, t.long_data, t.et, t.emask, tslot, tinfo, tstart, ntok, counts,
            dummy,
        )  # fmt: skip
        del tstart
        occ_off = _exclusive_cumsum(xp, counts)
        occ = xp.empty(int(occ_off[-1]), np.int32)
        uniq = xp.empty(m, np.int64)
        _launch(
            _write_unique, m, offsets, r0, byte0, t.et, t.emask, t.vbloom, t.bmask, tslot,
            tinfo, ntok, counts, occ_off, occ, uniq,
        )  # fmt: skip
        del tslot, tinfo
        row_off = _exclusive_cumsum(xp, uniq)
        ids = xp.empty(int(row_off[-1]), np.int32)
        _launch(_compact, m, occ, occ_off, uniq, row_off, ids)
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
