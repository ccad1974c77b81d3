"""CPU build of the matcher: ``rowlogic`` under ``numba.njit``, parallel over rows."""

import numba
import numpy as np

from .compile import invalidate_stale_cache, load_rowlogic

invalidate_stale_cache()
_rl = load_rowlogic(numba.njit(cache=True, nogil=True), "gpu_curate.kernels._rowlogic_cpu")
token_base = _rl.token_base
tokenize_row = _rl.tokenize_row
walk_row = _rl.walk_row
sort_unique = _rl.sort_unique
is_valid = _rl.is_valid
hash_bytes = _rl.hash_bytes

# Rows are matched in blocks of about this many text bytes, so the per-token scratch
# (24 bytes per possible token) stays a few tens of MB whatever the partition size.
BLOCK_BYTES = 1 << 18


@numba.njit(cache=True, nogil=True, parallel=True)
def _match_block(
    offsets, data, validity, bit_offset, r0, r1, vt, vmask, vbloom, bmask, long_data, et, emask
):
    n = r1 - r0
    byte0 = offsets[r0]
    ntok_max = token_base(offsets[r1], byte0, n)
    tslot = np.empty(ntok_max, np.int64)
    tinfo = np.empty(ntok_max, np.uint64)
    tstart = np.empty(ntok_max, np.int64)
    ntok = np.zeros(n, np.int64)
    counts = np.zeros(n + 1, np.int64)
    dummy = np.empty(1, np.int32)
    # Pass 1: one read of the text: tokens -> table slots, then count occurrences.
    for ii in numba.prange(n):
        i = r0 + ii
        if is_valid(validity, bit_offset, i):
            base = token_base(offsets[i], byte0, ii)
            t = tokenize_row(
                data,
                offsets[i],
                offsets[i + 1],
                vt,
                vmask,
                vbloom,
                bmask,
                long_data,
                tslot,
                tinfo,
                tstart,
                base,
            )
            ntok[ii] = t
            counts[ii + 1] = walk_row(tslot, tinfo, base, t, et, emask, dummy, 0, False)
    occ_off = np.cumsum(counts)
    occ = np.empty(occ_off[n], np.int32)
    uniq = np.zeros(n + 1, np.int64)
    # Pass 2: write the occurrences (from the cached slots) and make each row a sorted set.
    for ii in numba.prange(n):
        c = counts[ii + 1]
        if c > 0:
            i = r0 + ii
            base = token_base(offsets[i], byte0, ii)
            walk_row(tslot, tinfo, base, ntok[ii], et, emask, occ, occ_off[ii], True)
            uniq[ii + 1] = sort_unique(occ, occ_off[ii], c)
    row_off = np.cumsum(uniq)
    ids = np.empty(row_off[n], np.int32)
    for ii in numba.prange(n):
        lo = occ_off[ii]
        dst = row_off[ii]
        for j in range(uniq[ii + 1]):
            ids[dst + j] = occ[lo + j]
    return uniq[1:], ids


def match_rows(offsets, data, validity, bit_offset, tables):
    """Match every row of an Arrow string array; return CSR (row_offsets int64, ids int32).

    ``offsets`` are the n + 1 absolute offsets of the rows (int32 or int64), ``data`` the
    uint8 character buffer, ``validity`` the Arrow bitmap (empty when every row is valid)
    and ``bit_offset`` the array's slice offset into that bitmap.
    """
    n = offsets.shape[0] - 1
    counts = np.zeros(n + 1, np.int64)
    parts = []
    r0 = 0
    while r0 < n:
        # Rows up to BLOCK_BYTES of text (at least one row, so huge texts still go).
        r1 = int(np.searchsorted(offsets, offsets[r0] + BLOCK_BYTES, side="right")) - 1
        r1 = min(max(r1, r0 + 1), n)
        c, ids = _match_block(
            offsets, data, validity, bit_offset, r0, r1,
            tables.vt, tables.vmask, tables.vbloom, tables.bmask, tables.long_data,
            tables.et, tables.emask,
        )  # fmt: skip
        counts[r0 + 1 : r1 + 1] = c
        parts.append(ids)
        r0 = r1
    row_offsets = np.cumsum(counts)
    entry_ids = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return row_offsets, entry_ids


@numba.njit(cache=True, nogil=True, parallel=True)
def hash_rows(offsets, data, seed):
    """64-bit hash of each row's bytes (for string id columns)."""
    n = offsets.shape[0] - 1
    out = np.empty(n, np.uint64)
    for i in numba.prange(n):
        out[i] = hash_bytes(data, offsets[i], offsets[i + 1], seed)
    return out
