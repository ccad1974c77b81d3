"""Compile a list of metadata entries into the lookup tables the matchers take.

The tables are plain NumPy arrays (described in ``rowlogic.py``), so the same tables feed
the CPU kernel directly and the CUDA kernel after one copy to the device.
"""

from dataclasses import dataclass, fields

import numba
import numpy as np

from .cpu import _rl

WRAP_CHARS = frozenset(",.;:?!`")
SPECIAL_CHARS = frozenset(",.;:?!`\t\n\r")


@dataclass(frozen=True)
class MatchTables:
    """Lookup tables of one metadata, ready for the kernels (see rowlogic.py)."""

    vt: np.ndarray  # uint64 (vslots, 4): key0, key1, info, long_offset
    vmask: np.uint64
    vbloom: np.ndarray  # uint64 bitmap: bit (hash >> 32) & bmask set for every vocab token
    bmask: np.uint64
    long_data: np.ndarray  # uint8: bytes of the tokens longer than 15 bytes
    et: np.ndarray  # uint64 (eslots, 2): edge key + 1, child info
    emask: np.uint64
    n_entries: int
    unmatchable: np.ndarray  # int64 ids of entries that can never match (see below)
    max_tokens: int

    @property
    def nbytes(self) -> int:
        return self.vt.nbytes + self.long_data.nbytes + self.et.nbytes

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every field as a NumPy array (for ``np.savez``)."""
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "MatchTables":
        """Inverse of :meth:`to_arrays`; checks the types, so a stale file fails loudly."""
        t = cls(
            vt=np.ascontiguousarray(arrays["vt"], np.uint64),
            vmask=np.uint64(arrays["vmask"]),
            vbloom=np.ascontiguousarray(arrays["vbloom"], np.uint64),
            bmask=np.uint64(arrays["bmask"]),
            long_data=np.ascontiguousarray(arrays["long_data"], np.uint8),
            et=np.ascontiguousarray(arrays["et"], np.uint64),
            emask=np.uint64(arrays["emask"]),
            n_entries=int(arrays["n_entries"]),
            unmatchable=np.asarray(arrays["unmatchable"], np.int64),
            max_tokens=int(arrays["max_tokens"]),
        )
        ok = (
            t.vt.ndim == 2 and t.vt.shape[1] == 4 and t.et.ndim == 2 and t.et.shape[1] == 2
            and int(t.vmask) == t.vt.shape[0] - 1 and int(t.emask) == t.et.shape[0] - 1
            and int(t.bmask) == t.vbloom.shape[0] * 64 - 1
        )  # fmt: skip
        if not ok:
            raise ValueError("inconsistent match tables")
        return t


def entry_tokens(entry: str) -> list[str] | None:
    """The entry's token sequence, or None when it can never match any text.

    ``spacing`` surrounds every wrap character by spaces and turns tab/LF/CR into spaces,
    so a text token is never a wrap character next to other characters and never holds
    tab/LF/CR. An entry with such a token (``"washington, d.c."``) can match nothing: that
    is the reference behaviour.
    """
    tokens = entry.split(" ")
    wrap_before = False
    for tok in tokens:
        if len(tok) == 1 and tok in WRAP_CHARS:
            # Two wrap characters in spaced text have two spaces or more between them (an
            # empty token), so an entry with two adjacent wrap tokens (", ,") never matches.
            if wrap_before:
                return None
            wrap_before = True
            continue
        wrap_before = False
        if not SPECIAL_CHARS.isdisjoint(tok):
            return None
    return tokens


def _capacity(n: int, load: float) -> int:
    cap = 16
    while cap * load < n:
        cap *= 2
    return cap


@numba.njit(cache=True)
def _token_keys(offsets, data):
    n = offsets.shape[0] - 1
    k0 = np.empty(n, np.uint64)
    k1 = np.empty(n, np.uint64)
    for i in range(n):
        a, b = _rl.token_key(data, offsets[i], offsets[i + 1])
        k0[i] = a
        k1[i] = b
    return k0, k1


@numba.njit(cache=True)
def _insert_vocab(k0, k1, info, long_off, vt, vbloom):
    mask = np.uint64(vt.shape[0] - 1)
    bmask = np.uint64(vbloom.shape[0] * 64 - 1)
    slots = np.empty(k0.shape[0], np.int64)
    for i in range(k0.shape[0]):
        h = _rl.vocab_hash(k0[i], k1[i])
        word, bit = _rl.bloom_position(bmask, h)
        vbloom[word] |= np.uint64(1) << bit
        slot = h & mask
        while vt[np.int64(slot), 1] != 0:
            slot = (slot + np.uint64(1)) & mask
        s = np.int64(slot)
        vt[s, 0] = k0[i]
        vt[s, 1] = k1[i]
        vt[s, 2] = info[i]
        vt[s, 3] = long_off[i]
        slots[i] = s
    return slots


@numba.njit(cache=True)
def _insert_edges(parents, token_slots, info, et, vbloom):
    mask = np.uint64(et.shape[0] - 1)
    bmask = np.uint64(vbloom.shape[0] * 64 - 1)
    for i in range(parents.shape[0]):
        key = ((np.uint64(parents[i]) << np.uint64(32)) | np.uint64(token_slots[i])) + np.uint64(1)
        h = _rl.edge_hash(key)
        word, bit = _rl.bloom_position(bmask, h)
        vbloom[word] |= np.uint64(1) << bit
        slot = h & mask
        while et[np.int64(slot), 0] != 0:
            slot = (slot + np.uint64(1)) & mask
        et[np.int64(slot), 0] = key
        et[np.int64(slot), 1] = info[i]
    return et


def _pack(entry: int, node: int) -> int:
    return (entry + 1) | ((node + 1) << 32)


def build_tables(entries: list[str]) -> MatchTables:
    """Compile validated, distinct entries into :class:`MatchTables`."""
    vocab: dict[str, int] = {}
    unigram_entry: list[int] = []  # per vocab token: the one-token entry or -1
    first_node: list[int] = []  # per vocab token: trie node when it starts longer entries
    # Trie below the first token: node ids, (parent node, vocab id) -> child node.
    children: dict[tuple[int, int], int] = {}
    node_entry: list[int] = []
    node_has_children: list[bool] = []
    unmatchable: list[int] = []
    max_tokens = 0

    def vocab_id(tok: str) -> int:
        v = vocab.get(tok)
        if v is None:
            v = vocab[tok] = len(vocab)
            unigram_entry.append(-1)
            first_node.append(-1)
        return v

    def new_node() -> int:
        node_entry.append(-1)
        node_has_children.append(False)
        return len(node_entry) - 1

    for eid, entry in enumerate(entries):
        tokens = entry_tokens(entry)
        if tokens is None:
            unmatchable.append(eid)
            continue
        max_tokens = max(max_tokens, len(tokens))
        v = vocab_id(tokens[0])
        if len(tokens) == 1:
            unigram_entry[v] = eid
            continue
        node = first_node[v]
        if node < 0:
            node = first_node[v] = new_node()
        for tok in tokens[1:]:
            w = vocab_id(tok)
            node_has_children[node] = True
            child = children.get((node, w))
            if child is None:
                child = children[(node, w)] = new_node()
            node = child
        node_entry[node] = eid

    # Vocabulary table.
    raw = [t.encode("utf-8") for t in vocab]
    lengths = np.fromiter((len(b) for b in raw), np.int64, len(raw))
    offsets = np.zeros(len(raw) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.frombuffer(b"".join(raw), np.uint8) if raw else np.zeros(0, np.uint8)
    k0, k1 = _token_keys(offsets, data)
    long_mask = lengths > 15
    long_data = np.frombuffer(b"".join(b for b in raw if len(b) > 15), np.uint8).copy()
    long_off = np.zeros(len(raw), np.uint64)
    long_off[long_mask] = np.concatenate([[0], np.cumsum(lengths[long_mask])[:-1]]).astype(
        np.uint64
    )
    ue = np.asarray(unigram_entry, np.int64)
    fn = np.asarray(first_node, np.int64)
    info = ((ue + 1) | ((fn + 1) << 32)).astype(np.uint64)
    # Tables are allocated by NumPy (which asks for huge pages) to spare TLB misses.
    vslots = _capacity(len(raw), 0.6)
    vt = np.zeros((vslots, 4), np.uint64)
    # ~8 bits per key; the bitmap holds the vocabulary tokens and the trie edges.
    vbloom = np.zeros(max(64, _capacity(8 * (len(raw) + len(children)), 1.0)) // 64, np.uint64)
    slot_of = _insert_vocab(k0, k1, info, long_off, vt, vbloom)

    # Edge table.
    ne = len(children)
    parents = np.empty(ne, np.int64)
    token_slots = np.empty(ne, np.int64)
    einfo = np.empty(ne, np.uint64)
    for i, ((parent, w), child) in enumerate(children.items()):
        parents[i] = parent
        token_slots[i] = slot_of[w]
        einfo[i] = _pack(node_entry[child], child if node_has_children[child] else -1)
    et = np.zeros((_capacity(ne, 0.5), 2), np.uint64)
    _insert_edges(parents, token_slots, einfo, et, vbloom)
    return MatchTables(
        vt=vt,
        vmask=np.uint64(vslots - 1),
        vbloom=vbloom,
        bmask=np.uint64(vbloom.shape[0] * 64 - 1),
        long_data=long_data if long_data.size else np.zeros(1, np.uint8),
        et=et,
        emask=np.uint64(et.shape[0] - 1),
        n_entries=len(entries),
        unmatchable=np.asarray(unmatchable, np.int64),
        max_tokens=max_tokens,
    )
