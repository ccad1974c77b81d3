"""Tests of gpu_curate.balance against independent pure-Python references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import M64, keep_rule_rejected, ref_fmix64, ref_uniform

from gpu_curate import balance
from gpu_curate.balance import (
    entry_probabilities,
    expected_entry_counts,
    expected_rows,
    keep_mask,
    keep_probabilities,
    kept_entry_counts,
    pair_hashes,
    pair_uniforms,
)

# --------------------------------------------------------------------------- references
# Written from the documented formula, with Python ints (ref_fmix64 and ref_uniform are in
# conftest): independent of the NumPy code.


def ref_rows(offsets, ids) -> list[list[int]]:
    return [[int(e) for e in ids[offsets[r] : offsets[r + 1]]] for r in range(len(offsets) - 1)]


def ref_keep_prob(rows: list[list[int]], p) -> list[float]:
    out = []
    for ents in rows:
        q = 1.0
        for e in ents:
            q *= 1.0 - float(p[e])
        out.append(1.0 - q)
    return out


def ref_keep_mask(rows, uids, p, seed, stream=0) -> list[bool]:
    return [
        any(ref_uniform(seed, int(u), e, stream) < float(p[e]) for e in ents)
        for ents, u in zip(rows, uids, strict=True)
    ]


def make_csr(rng, n_rows, n_entries, max_len, empty_frac=0.1):
    rows = []
    for _ in range(n_rows):
        k = 0 if rng.random() < empty_frac else int(rng.integers(1, max_len + 1))
        rows.append(sorted(rng.choice(n_entries, size=min(k, n_entries), replace=False)))
    offsets = np.zeros(n_rows + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    ids = np.array([e for r in rows for e in r], dtype=np.int32)
    return offsets, ids, [list(map(int, r)) for r in rows]


@pytest.fixture
def small():
    rng = np.random.default_rng(12345)
    offsets, ids, rows = make_csr(rng, 200, 30, 5)
    counts = rng.integers(1, 400, size=30)
    uids = rng.integers(0, 2**63, size=200, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return offsets, ids, rows, counts, uids


# --------------------------------------------------------------------------- probabilities


def test_entry_probabilities_by_hand():
    counts = np.array([0, 1, 5, 10, 11, 40, 1000, 3])
    p = entry_probabilities(counts, 10)
    assert p.dtype == np.float64
    assert p.tolist() == [1.0, 1.0, 1.0, 1.0, 10 / 11, 0.25, 0.01, 1.0]
    # Non-integer t, big counts.
    p = entry_probabilities(np.array([7, 2_000_000_000]), 2.5)
    assert p.tolist() == [2.5 / 7, 2.5 / 2_000_000_000]


@pytest.mark.parametrize("t", [0, -1, float("nan"), float("inf"), "x"])
def test_entry_probabilities_rejects_bad_t(t):
    with pytest.raises(ValueError):
        entry_probabilities(np.array([1, 2]), t)


def test_entry_probabilities_rejects_negative_counts():
    with pytest.raises(ValueError):
        entry_probabilities(np.array([1, -2]), 1)


# --------------------------------------------------------------------------- uniforms


def test_fmix64_reference_values():
    # Murmur3 fmix64 of 1 and of 2**64 - 1, computed by the reference above.
    assert balance.fmix64(1) == ref_fmix64(1) == 0xB456BCFC34C2CB2C
    assert balance.fmix64(M64) == ref_fmix64(M64)
    assert balance.fmix64(0) == 0


PINNED = [
    (0, 0, 0, 0),
    (0, 1, 0, 0),
    (1, 0, 0, 0),
    (0, 0, 1, 0),
    (0, 0, 0, 1),
    (12345, 987654321, 42, 0),
    (M64, M64, 2**31 - 1, M64),
    (2**63, 2**63 + 5, 499_999, 7),
]


@pytest.mark.parametrize("seed,uid,entry,stream", PINNED)
def test_pair_uniforms_pinned(seed, uid, entry, stream):
    got = pair_uniforms(seed, np.array([uid], np.uint64), np.array([entry], np.int32), stream)
    assert got.dtype == np.float64
    assert got[0] == ref_uniform(seed, uid, entry, stream)
    h = pair_hashes(seed, np.array([uid], np.uint64), np.array([entry], np.int32), stream)
    key = ref_fmix64(seed ^ ref_fmix64((0x9E3779B97F4A7C15 * (stream + 1)) & M64))
    assert int(h[0]) == ref_fmix64(ref_fmix64(key ^ uid) ^ entry)


def test_pair_uniforms_vector_matches_reference():
    rng = np.random.default_rng(7)
    uids = rng.integers(0, 2**64 - 1, size=300, dtype=np.uint64, endpoint=True)
    ents = rng.integers(0, 2**31 - 1, size=300).astype(np.int32)
    for seed in (0, 3, 2**64 - 1):
        got = pair_uniforms(seed, uids, ents, stream=11)
        ref = [ref_uniform(seed, int(u), int(e), 11) for u, e in zip(uids, ents, strict=True)]
        assert got.tolist() == ref


def test_pair_uniforms_no_overflow_warnings():
    with np.errstate(all="raise"):
        pair_uniforms(2**64 - 1, np.array([2**64 - 1], np.uint64), np.array([5]))
        pair_uniforms(7, np.uint64(2**64 - 1), np.int32(5))  # scalars too


def test_pair_uniforms_argument_checks():
    u, e = np.array([1], np.uint64), np.array([1], np.int32)
    with pytest.raises(ValueError):
        pair_uniforms(-1, u, e)
    with pytest.raises(ValueError):
        pair_uniforms(2**64, u, e)
    with pytest.raises(ValueError):
        pair_uniforms(0, u, e, stream=-1)
    with pytest.raises(TypeError):
        pair_uniforms(1.5, u, e)
    with pytest.raises(ValueError):
        pair_uniforms(0, u, np.array([-1], np.int32))
    with pytest.raises(TypeError):
        pair_uniforms(0, np.array([1.0]), e)


def test_uniforms_range_and_ks():
    # Structured inputs (consecutive uids, few entries) are the hard case for a hash.
    n = 200_000
    uids = np.arange(n, dtype=np.uint64) // np.uint64(4)
    ents = (np.arange(n) % 4).astype(np.int32)
    u = pair_uniforms(0, uids, ents)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert np.unique(u).size == n
    s = np.sort(u)
    i = np.arange(1, n + 1)
    d = max(np.max(i / n - s), np.max(s - (i - 1) / n))
    # Kolmogorov critical value at alpha = 0.001: 1.95 / sqrt(n).
    assert d < 1.95 / math.sqrt(n), d
    # 64-bin chi-square: df = 63, mean 63, sd sqrt(126) ~ 11.2; 5 sd is p < 1e-6.
    hist = np.bincount((u * 64).astype(np.int64), minlength=64)
    chi2 = float(((hist - n / 64) ** 2 / (n / 64)).sum())
    assert chi2 < 63 + 5 * math.sqrt(126), chi2
    # And a uniform set of the lowest mantissa bit.
    low = ((u * 2.0**53).astype(np.int64) & 1).mean()
    assert abs(low - 0.5) < 5 * 0.5 / math.sqrt(n)


def test_uniforms_pairwise_independent():
    # Joint histogram of the draws of neighbouring entries of the same uid, and of the
    # same pair under neighbouring seeds / streams: chi-square on 16 x 16 cells.
    n = 100_000
    uids = np.arange(n, dtype=np.uint64)
    for a, b in [
        (
            pair_uniforms(1, uids, np.zeros(n, np.int32)),
            pair_uniforms(1, uids, np.ones(n, np.int32)),
        ),
        (
            pair_uniforms(1, uids, np.zeros(n, np.int32)),
            pair_uniforms(2, uids, np.zeros(n, np.int32)),
        ),
        (
            pair_uniforms(1, uids, np.zeros(n, np.int32), 0),
            pair_uniforms(1, uids, np.zeros(n, np.int32), 1),
        ),
    ]:
        cells = (a * 16).astype(np.int64) * 16 + (b * 16).astype(np.int64)
        hist = np.bincount(cells, minlength=256)
        chi2 = float(((hist - n / 256) ** 2 / (n / 256)).sum())
        assert chi2 < 255 + 5 * math.sqrt(510), chi2


def test_every_input_bit_matters():
    # Avalanche: flipping any single input bit (seed, stream, uid or entry id) flips
    # about half of the 64 output bits.
    rng = np.random.default_rng(3)
    m = 256
    uids = rng.integers(0, 2**64 - 1, size=m, dtype=np.uint64, endpoint=True)
    ents = rng.integers(0, 2**31 - 1, size=m).astype(np.int32)
    seed, stream = 0x0123456789ABCDEF, 5
    base = pair_hashes(seed, uids, ents, stream)

    def mean_flips(h):
        x = base ^ h
        return float(np.unpackbits(x.view(np.uint8)).sum() / m)

    for bit in range(64):
        for h in (
            pair_hashes(seed ^ (1 << bit), uids, ents, stream),
            pair_hashes(seed, uids, ents, stream ^ (1 << bit)),
            pair_hashes(seed, uids ^ np.uint64(1 << bit), ents, stream),
        ):
            assert 28 < mean_flips(h) < 36, bit
    for bit in range(31):
        h = pair_hashes(seed, uids, ents ^ np.int32(1 << bit), stream)
        assert 28 < mean_flips(h) < 36, bit


# --------------------------------------------------------------------------- keep rule


def test_keep_probabilities_match_python_loop(small):
    offsets, ids, rows, counts, _ = small
    p = entry_probabilities(counts, 120)
    got = keep_probabilities(offsets, ids, p)
    ref = ref_keep_prob(rows, p)
    # Same operations in the same order: bit-identical.
    assert got.tolist() == ref
    # And, as a check of the formula itself, close to the log-space form.
    for g, ents in zip(got, rows, strict=True):
        if ents and all(p[e] < 1 for e in ents):
            assert g == pytest.approx(-math.expm1(sum(math.log1p(-p[e]) for e in ents)))
    assert expected_rows(offsets, ids, p) == pytest.approx(math.fsum(ref), rel=1e-14)


def test_keep_probabilities_edge_rows():
    offsets = np.array([0, 0, 2, 3, 3, 6, 6], np.int64)
    ids = np.array([0, 1, 2, 0, 1, 2], np.int32)
    p = np.array([0.5, 0.25, 1.0])
    got = keep_probabilities(offsets, ids, p)
    assert got[0] == 0.0 and got[3] == 0.0 and got[5] == 0.0  # empty rows
    assert got[2] == 1.0 and got[4] == 1.0  # a p == 1 entry: exactly 1
    assert got[1] == 1 - 0.5 * 0.75


def test_keep_mask_matches_python_reference(small):
    offsets, ids, rows, counts, uids = small
    p = entry_probabilities(counts, 80)
    for seed, stream in [(0, 0), (99, 0), (2**64 - 1, 3)]:
        got = keep_mask(offsets, ids, uids, p, seed, stream)
        assert got.dtype == bool
        assert got.tolist() == ref_keep_mask(rows, uids, p, seed, stream)


def test_tail_entries_always_kept_and_empty_rows_never(small):
    offsets, ids, rows, counts, uids = small
    t = 150
    p = entry_probabilities(counts, t)
    has_tail = np.array([any(counts[e] <= t for e in r) for r in rows])
    empty = np.array([not r for r in rows])
    assert has_tail.sum() > 20 and empty.sum() > 5 and (~has_tail & ~empty).sum() > 20
    for seed in range(50):
        m = keep_mask(offsets, ids, uids, p, seed)
        assert m[has_tail].all()
        assert not m[empty].any()


def test_keep_rule_is_one_minus_prod_statistically():
    # A few hundred texts with 1..4 entries of varied p (including p = 1), 400 seeds.
    rng = np.random.default_rng(2024)
    t = 100
    counts = np.array([50, 100, 125, 200, 250, 333, 400, 500, 1000, 2000, 4000, 10_000])
    p = entry_probabilities(counts, t)
    rows = []
    for _ in range(300):
        k = int(rng.integers(1, 5))
        rows.append(sorted(map(int, rng.choice(len(counts), size=k, replace=False))))
    offsets = np.zeros(len(rows) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    ids = np.array([e for r in rows for e in r], np.int32)
    uids = rng.integers(0, 2**64 - 1, size=len(rows), dtype=np.uint64, endpoint=True)

    n_seeds = 400
    masks = np.stack([keep_mask(offsets, ids, uids, p, seed) for seed in range(n_seeds)])
    freq = masks.sum(axis=0)

    # The probabilities under test, from the reference loop (not from the library).
    true_prob = np.array(ref_keep_prob(rows, p))
    assert not keep_rule_rejected(freq, n_seeds, true_prob)

    # Power: the same test on the same draws rejects the usual wrong rules.
    sum_rule = np.array([min(sum(p[e] for e in r), 1.0) for r in rows])
    max_rule = np.array([max(p[e] for e in r) for r in rows])
    assert keep_rule_rejected(freq, n_seeds, sum_rule)
    assert keep_rule_rejected(freq, n_seeds, max_rule)

    # The expected entry counts after balancing follow from the same draws.
    kept = np.stack([kept_entry_counts(offsets, ids, m, len(counts)) for m in masks[:100]]).mean(
        axis=0
    )
    exp_counts = expected_entry_counts(offsets, ids, p)
    ref_counts = np.zeros(len(counts))
    for r, pr in zip(rows, true_prob, strict=True):
        for e in r:
            ref_counts[e] += pr
    np.testing.assert_allclose(exp_counts, ref_counts, rtol=1e-12)
    sd = np.sqrt(np.maximum(ref_counts, 1.0) / 100)  # Poisson-ish bound on the mean's sd
    assert np.all(np.abs(kept - ref_counts) < 5 * sd)


def test_kept_and_expected_entry_counts_by_loop(small):
    offsets, ids, rows, counts, uids = small
    p = entry_probabilities(counts, 60)
    mask = keep_mask(offsets, ids, uids, p, 5)
    ref = np.zeros(30, np.int64)
    for r, keep in zip(rows, mask, strict=True):
        if keep:
            for e in r:
                ref[e] += 1
    got = kept_entry_counts(offsets, ids, mask, 30)
    assert got.dtype == np.int64 and got.tolist() == ref.tolist()
    kp = keep_probabilities(offsets, ids, p)
    np.testing.assert_array_equal(
        expected_entry_counts(offsets, ids, p), expected_entry_counts(offsets, ids, p, kp)
    )


def test_balance_partition_against_python_references(small):
    from gpu_curate.balance import balance_partition

    offsets, ids, rows, counts, uids = small
    # A sliced CSR (offsets not starting at 0) and signed uids go through the same checks.
    sl_offsets = offsets[50:] + 0
    sl_rows = rows[50:]
    for seed, stream, t in [(0, 0, 60), (7, 2, 150), (2**64 - 1, 0, 1)]:
        p = entry_probabilities(counts, t)
        mask, expected, kept = balance_partition(sl_offsets, ids, uids[50:], p, seed, stream)
        ref_mask = ref_keep_mask(sl_rows, uids[50:], p, seed, stream)
        assert mask.tolist() == ref_mask
        assert expected == pytest.approx(sum(ref_keep_prob(sl_rows, p)), rel=1e-12)
        ref_kept = np.zeros(len(p), np.int64)
        for r, keep in zip(sl_rows, ref_mask, strict=True):
            for e in r if keep else ():
                ref_kept[e] += 1
        assert kept.dtype == np.int64 and kept.tolist() == ref_kept.tolist()
    with pytest.raises(ValueError, match="one value per row"):
        balance_partition(offsets, ids, uids[1:], p, 0)
    with pytest.raises(TypeError, match="uids must be integers"):
        balance_partition(offsets, ids, uids.astype(np.float64), p, 0)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_mask_different_seed_different(small):
    offsets, ids, rows, counts, uids = small
    p = entry_probabilities(counts, 40)
    a = keep_mask(offsets, ids, uids, p, 17)
    b = keep_mask(offsets.copy(), ids.copy(), uids.copy(), p.copy(), 17)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, keep_mask(offsets, ids, uids, p, 18))
    assert not np.array_equal(a, keep_mask(offsets, ids, uids, p, 17, stream=1))


def test_partitioning_and_order_do_not_change_the_mask(small):
    offsets, ids, rows, counts, uids = small
    p = entry_probabilities(counts, 40)
    full = keep_mask(offsets, ids, uids, p, 2**40 + 3)
    n = len(rows)
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, n), size=7, replace=False))
    bounds = [0, *cuts.tolist(), n]
    parts_sliced, parts_rebased = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        # A slice of the big CSR (offsets not starting at 0)...
        parts_sliced.append(keep_mask(offsets[lo : hi + 1], ids, uids[lo:hi], p, 2**40 + 3))
        # ...and an independent copy of the chunk, as another worker would hold it.
        sub_ids = ids[offsets[lo] : offsets[hi]].copy()
        sub_off = offsets[lo : hi + 1] - offsets[lo]
        parts_rebased.append(keep_mask(sub_off, sub_ids, uids[lo:hi].copy(), p, 2**40 + 3))
    assert np.array_equal(np.concatenate(parts_sliced), full)
    assert np.array_equal(np.concatenate(parts_rebased), full)

    perm = rng.permutation(n)
    prow = [rows[i] for i in perm]
    poff = np.zeros(n + 1, np.int64)
    poff[1:] = np.cumsum([len(r) for r in prow])
    pids = np.array([e for r in prow for e in r], np.int32)
    pm = keep_mask(poff, pids, uids[perm], p, 2**40 + 3)
    assert np.array_equal(pm, full[perm])


# --------------------------------------------------------------------------- backends


def test_generic_paths_equal_numpy_paths():
    # The CuPy code paths (searchsorted row index, per-position products) run on NumPy
    # here and must agree bit for bit with the NumPy fast paths.
    rng = np.random.default_rng(5)
    lens = rng.integers(0, 9, size=5000)
    lens[:3] = 0
    lens[-4:] = 0
    lens[100] = 40
    offsets = np.zeros(lens.size + 1, np.int64)
    offsets[1:] = np.cumsum(lens)
    q = 1.0 - rng.random(int(offsets[-1])) ** 3
    q[::17] = 0.0
    assert np.array_equal(
        balance._pair_rows(offsets, np), balance._pair_rows(offsets, np, generic=True)
    )
    a = balance._row_products(offsets, q, np)
    b = balance._row_products(offsets, q, np, generic=True)
    assert a.tobytes() == b.tobytes()
    ref = [math.prod(q[offsets[i] : offsets[i + 1]].tolist()) for i in range(lens.size)]
    assert np.allclose(a, ref, rtol=1e-15, atol=0)


def test_empty_inputs():
    offsets = np.zeros(1, np.int64)
    ids = np.zeros(0, np.int32)
    p = np.array([0.5])
    assert keep_mask(offsets, ids, np.zeros(0, np.uint64), p, 0).shape == (0,)
    assert keep_probabilities(offsets, ids, p).shape == (0,)
    assert expected_rows(offsets, ids, p) == 0.0
    three_empty = np.zeros(4, np.int64)
    assert not keep_mask(three_empty, ids, np.arange(3, dtype=np.uint64), p, 0).any()


def test_input_validation():
    p = np.array([0.5, 0.5])
    u = np.arange(2, dtype=np.uint64)
    with pytest.raises(ValueError, match="non-decreasing"):
        keep_mask(np.array([0, 2, 1]), np.array([0, 1], np.int32), u, p, 0)
    with pytest.raises(ValueError, match="out of range"):
        keep_mask(np.array([0, 1, 2]), np.array([0, 2], np.int32), u, p, 0)
    with pytest.raises(ValueError, match="one value per row"):
        keep_mask(np.array([0, 1, 2]), np.array([0, 1], np.int32), u[:1], p, 0)
    with pytest.raises(ValueError, match="does not fit"):
        keep_probabilities(np.array([0, 5]), np.array([0, 1], np.int32), p)


def _cupy_or_skip():
    cp = pytest.importorskip(
        "cupy", reason="CuPy is not installed: the NumPy/CuPy equality checks need a GPU stack"
    )
    from gpu_curate.backend import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")
    return cp


def test_cupy_matches_numpy_bit_for_bit():
    cp = _cupy_or_skip()
    rng = np.random.default_rng(8)
    offsets, ids, _ = make_csr(rng, 3000, 500, 12)
    counts = rng.integers(0, 5000, size=500)
    uids = rng.integers(0, 2**64 - 1, size=3000, dtype=np.uint64, endpoint=True)
    p = entry_probabilities(counts, 700)
    pg = entry_probabilities(cp.asarray(counts), 700)
    assert p.tobytes() == pg.get().tobytes()
    g = [cp.asarray(a) for a in (offsets, ids, uids)]
    for seed, stream in [(0, 0), (2**64 - 1, 9)]:
        assert np.array_equal(
            keep_mask(offsets, ids, uids, p, seed, stream),
            keep_mask(*g, pg, seed, stream).get(),
        )
    pairs_u = np.repeat(uids, np.diff(offsets))
    assert (
        pair_uniforms(5, pairs_u, ids).tobytes()
        == pair_uniforms(5, cp.asarray(pairs_u), g[1]).get().tobytes()
    )
    assert (
        keep_probabilities(offsets, ids, p).tobytes()
        == keep_probabilities(g[0], g[1], pg).get().tobytes()
    )
    assert expected_rows(offsets, ids, p) == pytest.approx(expected_rows(g[0], g[1], pg), rel=1e-12)
    np.testing.assert_allclose(
        expected_entry_counts(offsets, ids, p),
        expected_entry_counts(g[0], g[1], pg).get(),
        rtol=1e-12,
    )
