"""Per-row matching logic, written once and compiled twice.

This module is plain Python on purpose: it carries no decorator. ``kernels/compile.py``
loads it twice, once wrapping each function in ``numba.njit`` (CPU) and once in
``numba.cuda.jit(device=True)`` (GPU, or the CUDA simulator), so the CPU and GPU matchers
run literally the same token / hash / lookup code.

Semantics (README, Semantics): a text is split into tokens as MetaCLIP's ``spacing``
would leave it: space, tab, LF and CR end a token (two separators in a row give an empty
token); each of the seven wrap characters ``, . ; : ? ! ` `` ends the current token and is a
token of its own. An entry matches when its tokens occur as a contiguous run.

Two steps, the same on both backends; the CPU build runs them row by row, the GPU build
token by token (``kernels/gpu.py``):

1. look every token up in the vocabulary table: ``tokenize_row`` for a whole row (one
   pass over the text; the keys are made first and probed in a separate tight loop so
   the CPU overlaps the probes' cache misses), ``lookup_token`` for one token, whose
   bounds the GPU finds from ``token_bytes`` and a prefix sum;
2. ``walk_row`` finds the entry occurrences that start at a run of those looked-up tokens
   (a whole row on the CPU, one token on the GPU): a one-token entry straight from the
   token's info, longer entries by walking the trie of entry token sequences;
   ``sort_unique`` then makes each row's ids a sorted set.

Lookup tables (built by ``kernels/tables.py``):

* ``vt`` (uint64, shape (vslots, 4)): open-addressing table of every token that occurs in a
  matchable entry. Columns: key0, key1, info, long_offset. A token of at most 15 bytes is
  its own key (bytes + length), so equal keys mean equal bytes; a longer token's key is a
  hash plus its length, and a key hit is confirmed against the stored bytes
  (``long_data[long_offset:]``). No hash collision can produce a wrong match.
  ``info`` packs ``entry + 1`` (the one-token entry, or 0) and ``node + 1`` (the trie node
  reached by this token when it starts a longer entry, or 0). The token id is the slot.
* ``vbloom`` (uint64 bitmap, ~8 bits per key): one Bloom bitmap over the vocabulary tokens
  and the trie edges. Most text tokens are in no entry and most pairs of adjacent tokens
  are no edge: one bit test in this small, cache-resident bitmap turns most of them away
  before a big table is touched (a set bit only means "look in the table").
* ``et`` (uint64, shape (eslots, 2)): the trie's edges, key ``(node << 32 | token_slot) + 1``
  (exact integer keys) and the child's ``info`` packed the same way.
"""

import numpy as np

U0 = np.uint64(0)
U1 = np.uint64(1)
U8 = np.uint64(8)
U32 = np.uint64(32)
U33 = np.uint64(33)
U56 = np.uint64(56)
U64 = np.uint64(64)
U120 = np.uint64(120)
LOW32 = np.uint64(0xFFFFFFFF)
FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
MIX1 = np.uint64(0xFF51AFD7ED558CCD)
MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
SHORT_FLAG = np.uint64(0x20)
LONG_FLAG = np.uint64(0x40)
MAX_SHORT = 15
# Bits of the bytes below 64 that end a token: \t \n \r space ! , . : ; ?
SPECIAL_MASK = np.uint64(
    (1 << 9)
    | (1 << 10)
    | (1 << 13)
    | (1 << 32)
    | (1 << 33)
    | (1 << 44)
    | (1 << 46)
    | (1 << 58)
    | (1 << 59)
    | (1 << 63)
)


def fmix64(k):
    """MurmurHash3's 64-bit finalizer: a bijection on uint64 with full avalanche."""
    k = k ^ (k >> U33)
    k = k * MIX1
    k = k ^ (k >> U33)
    k = k * MIX2
    k = k ^ (k >> U33)
    return k


def is_wrap(b):
    return b == 44 or b == 46 or b == 59 or b == 58 or b == 63 or b == 33 or b == 96


def token_key(data, s, e):
    """Key of the token data[s:e]: its own bytes when at most 15 long, else hash + length."""
    length = e - s
    if length <= MAX_SHORT:
        k0 = U0
        k1 = U0
        for j in range(length):
            b = np.uint64(data[s + j])
            if j < 8:
                k0 = k0 | (b << (U8 * np.uint64(j)))
            else:
                k1 = k1 | (b << (U8 * np.uint64(j - 8)))
        return k0, k1 | ((SHORT_FLAG | np.uint64(length)) << U56)
    h = FNV_OFFSET
    for q in range(s, e):
        h = (h ^ np.uint64(data[q])) * FNV_PRIME
    return fmix64(h), (LONG_FLAG << U56) | np.uint64(length)


def is_special(c):
    """Whether byte c ends a token (a separator or a wrap byte); letters exit on one test."""
    if c > 96:
        return False
    if c == 96:
        return True
    if c >= 64:
        return False
    return (SPECIAL_MASK >> np.uint64(c)) & U1 == U1


def vocab_hash(key0, key1):
    """Hash of a token key: the table slot is its low bits, the Bloom bit its high bits."""
    return fmix64(key0 ^ (key1 * GOLDEN))


def edge_hash(key):
    """Hash of a trie edge key."""
    return fmix64(key)


def bloom_position(bmask, h):
    """(word, bit) of hash h in a Bloom bitmap of bmask + 1 bits (tables.py sets them)."""
    b = (h >> U32) & bmask
    return np.int64(b >> np.uint64(6)), b & np.uint64(63)


def bloom_bit(bloom, bmask, h):
    """The Bloom bitmap's bit of hash h, as 0 or 1 (0: the key is surely absent)."""
    word, bit = bloom_position(bmask, h)
    return (bloom[word] >> bit) & U1


def bloom_has(bloom, bmask, h):
    """Whether the Bloom bitmap has the bit of hash h (False: the key is surely absent)."""
    return bloom_bit(bloom, bmask, h) == U1


def vocab_probe(vt, vmask, long_data, data, start, length, key0, key1):
    """Slot of the token with key (key0, key1) in the vocabulary table, or -1.

    ``length`` is the token's byte length when it is longer than 15 bytes (its key is then
    a hash, and a key hit is confirmed against the bytes data[start:start+length]), else 0.
    The caller has done the Bloom test.
    """
    slot = vocab_hash(key0, key1) & vmask
    while True:
        s = np.int64(slot)
        k1 = vt[s, 1]
        if k1 == U0:
            return -1
        if k1 == key1 and vt[s, 0] == key0:
            if length <= MAX_SHORT:
                return s
            off = np.int64(vt[s, 3])
            same = True
            for j in range(length):
                if long_data[off + j] != data[start + j]:
                    same = False
                    break
            if same:
                return s
        slot = (slot + U1) & vmask


def edge_find(et, emask, vbloom, bmask, node, token_slot):
    """Packed info of the trie child (node, token_slot), or 0 when there is none."""
    key = ((np.uint64(node) << U32) | np.uint64(token_slot)) + U1
    h = edge_hash(key)
    # Most token pairs are no edge; the bitmap that filters tokens holds the edges too.
    if not bloom_has(vbloom, bmask, h):
        return U0
    slot = h & emask
    while True:
        s = np.int64(slot)
        k = et[s, 0]
        if k == U0:
            return U0
        if k == key:
            return et[s, 1]
        slot = (slot + U1) & emask


def lookup_token(data, s, e, vt, vmask, vbloom, bmask, long_data):
    """(slot, info) of the token data[s:e] in the vocabulary table; (-1, 0) when no entry
    uses it. ``tokenize_row`` does the same for a whole row, with its probes batched."""
    key0, key1 = token_key(data, s, e)
    if not bloom_has(vbloom, bmask, vocab_hash(key0, key1)):
        return -1, U0
    length = e - s
    if length <= MAX_SHORT:
        length = 0
    slot = vocab_probe(vt, vmask, long_data, data, s, length, key0, key1)
    if slot < 0:
        return -1, U0
    return slot, vt[slot, 2]


def token_bytes(c):
    """How many tokens byte c ends: 0 for a token byte, 1 for a separator, 2 for a wrap
    byte (it ends the current token and is a token of its own)."""
    if is_wrap(c):
        return 2
    if is_special(c):
        return 1
    return 0


def tokenize_row(data, s, e, vt, vmask, vbloom, bmask, long_data, tslot, tinfo, tstart):
    """Look up every token of the row data[s:e] in the vocabulary table.

    Writes the token's table slot (-1 when no entry uses it) to tslot[k] and its packed
    info to tinfo[k]; returns the number of tokens, at most
    2 * (e - s) + 1 (a wrap byte makes two).
    ``tstart`` is scratch of the same size (token starts, then the tokens to probe).
    """
    # First cut the row into token keys (one pass over the bytes), then probe the table in
    # a separate tight loop: the probes are independent, so the CPU overlaps their misses.
    k = 0
    p = s
    while True:
        # Scan one token, building a short token's key on the way.
        q = p
        key0 = U0
        key1 = U0
        sh = U0
        while q < e:
            c = data[q]
            if is_special(c):
                break
            if sh < U64:
                key0 = key0 | (np.uint64(c) << sh)
            elif sh < U120:
                key1 = key1 | (np.uint64(c) << (sh - U64))
            sh += U8
            q += 1
        length = q - p
        if length <= MAX_SHORT:
            key1 = key1 | ((SHORT_FLAG | np.uint64(length)) << U56)
        else:
            key0, key1 = token_key(data, p, q)
        tinfo[k] = key0
        tslot[k] = np.int64(key1)
        tstart[k] = p
        k += 1
        if q >= e:
            break
        c = data[q]
        if is_wrap(c):
            # A wrap byte is a token of its own.
            tinfo[k] = np.uint64(c)
            tslot[k] = np.int64((SHORT_FLAG | U1) << U56)
            tstart[k] = q
            k += 1
        p = q + 1
    # The Bloom test is done without a branch (it goes either way at random): the tokens
    # that pass are listed in tstart (a token's start is spent once it is tested, and the
    # list never overtakes the loop), then only they probe the table.
    c = 0
    for j in range(k):
        key0 = tinfo[j]
        key1 = np.uint64(tslot[j])
        maybe = np.int64(bloom_bit(vbloom, bmask, vocab_hash(key0, key1)))
        if (key1 >> U56) == LONG_FLAG:
            # Long tokens (rare) are looked up here, with their bytes.
            slot = -1
            if maybe == 1:
                length = np.int64(key1 & LOW32)
                slot = vocab_probe(vt, vmask, long_data, data, tstart[j], length, key0, key1)
            tslot[j] = slot
            tinfo[j] = vt[slot, 2] if slot >= 0 else U0
            maybe = 0
        else:
            tslot[j] = tslot[j] if maybe == 1 else -1
            tinfo[j] = key0 if maybe == 1 else U0
        tstart[c] = j
        c += maybe
    for q in range(c):
        j = tstart[q]
        slot = vocab_probe(vt, vmask, long_data, data, 0, 0, tinfo[j], np.uint64(tslot[j]))
        tslot[j] = slot
        tinfo[j] = vt[slot, 2] if slot >= 0 else U0
    return k


def walk_row(tslot, tinfo, start, stop, end, et, emask, vbloom, bmask, out, out_pos, write):
    """Every entry occurrence that starts at a token in [start, stop), in text order.

    The row's tokens end before ``end``: the CPU build passes a whole row (``stop`` =
    ``end``), the GPU build one token (``stop`` = ``start + 1``). A one-token entry comes
    straight from the token's info, longer entries from walking the trie over the next
    tokens. Writes the entry ids to out[out_pos:] when ``write`` is true; returns their
    number (repeats included: ``sort_unique`` makes the set).
    """
    # (One loop, no helper per start token: a call per token here ran the CPU build 45%
    # slower under numba 0.68, though it was inlined.)
    n = 0
    for k in range(start, stop):
        info = tinfo[k]
        if info == U0:
            continue
        entry = np.int64(info & LOW32) - 1
        if entry >= 0:
            if write:
                out[out_pos + n] = entry
            n += 1
        node = np.int64(info >> U32) - 1
        j = k + 1
        while node >= 0 and j < end:
            slot = tslot[j]
            if slot < 0:
                break
            child = edge_find(et, emask, vbloom, bmask, node, slot)
            if child == U0:
                break
            entry = np.int64(child & LOW32) - 1
            if entry >= 0:
                if write:
                    out[out_pos + n] = entry
                n += 1
            node = np.int64(child >> U32) - 1
            j += 1
    return n


def sort_unique(a, lo, n):
    """Sort a[lo:lo+n] in place (heapsort: no scratch memory) and drop repeats.

    Returns the number of distinct values, now in a[lo:lo+count], ascending.
    """
    if n <= 1:
        return n
    if n <= 24:
        # Most rows have a handful of ids: insertion sort beats the heap there.
        for j in range(lo + 1, lo + n):
            v = a[j]
            q = j
            while q > lo:
                w = a[q - 1]
                if w <= v:
                    break
                a[q] = w
                q -= 1
            a[q] = v
        return _dedupe(a, lo, n)
    start = n // 2 - 1
    while start >= 0:
        _sift_down(a, lo, start, n)
        start -= 1
    end = n - 1
    while end > 0:
        tmp = a[lo]
        a[lo] = a[lo + end]
        a[lo + end] = tmp
        _sift_down(a, lo, 0, end)
        end -= 1
    return _dedupe(a, lo, n)


def _sift_down(a, lo, root, n):
    """Move a[lo+root] down the max-heap a[lo:lo+n] to its place."""
    while True:
        child = 2 * root + 1
        if child >= n:
            return
        if child + 1 < n and a[lo + child] < a[lo + child + 1]:
            child += 1
        if a[lo + root] >= a[lo + child]:
            return
        tmp = a[lo + root]
        a[lo + root] = a[lo + child]
        a[lo + child] = tmp
        root = child


def _dedupe(a, lo, n):
    """Drop repeats from the sorted a[lo:lo+n]; return the number left."""
    m = lo + 1
    for j in range(lo + 1, lo + n):
        v = a[j]
        if v != a[m - 1]:
            a[m] = v
            m += 1
    return m - lo


def is_valid(validity, bit_offset, i):
    """Arrow validity bit of row i; an empty bitmap means every row is valid."""
    if validity.shape[0] == 0:
        return True
    k = bit_offset + i
    return (validity[k >> 3] >> (k & 7)) & 1 == 1


def hash_bytes(data, s, e, seed):
    """A 64-bit hash of data[s:e] (FNV-1a, then fmix64 with the length and a seed)."""
    h = FNV_OFFSET ^ seed
    for q in range(s, e):
        h = (h ^ np.uint64(data[q])) * FNV_PRIME
    return fmix64(h ^ fmix64(np.uint64(e - s) + GOLDEN))
