"""Tests of gpu_curate.sampler.BalancedSampler (online, per-epoch balancing)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import keep_rule_rejected, write_entry_counts, write_success

from gpu_curate.balance import entry_probabilities, keep_mask
from gpu_curate.sampler import BalancedSampler

# --------------------------------------------------------------------------- data


def build(n_rows: int = 300, seed: int = 11):
    """Rows with 0..4 entries of varied p; counts fixed by hand; returns CSR + ref probs."""
    rng = np.random.default_rng(seed)
    counts = np.array([40, 80, 100, 150, 250, 400, 800, 2000, 5000, 90])
    t = 80
    rows = []
    for i in range(n_rows):
        k = 0 if i % 25 == 0 else int(rng.integers(1, 5))
        rows.append(sorted(map(int, rng.choice(len(counts), size=k, replace=False))))
    offsets = np.zeros(n_rows + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    ids = np.array([e for r in rows for e in r], np.int32)
    uids = rng.integers(0, 2**64 - 1, size=n_rows, dtype=np.uint64, endpoint=True)
    # Reference keep probabilities by hand: p = t / max(count, t), 1 - prod(1 - p).
    ref = []
    for r in rows:
        q = 1.0
        for e in r:
            q *= 1.0 - t / max(int(counts[e]), t)
        ref.append(1.0 - q)
    return offsets, ids, uids, counts, t, rows, np.array(ref)


@pytest.fixture
def data():
    return build()


# --------------------------------------------------------------------------- tests


def test_epoch_indices_are_sorted_int64_and_reproducible(data):
    offsets, ids, uids, counts, t, rows, ref = data
    s = BalancedSampler(offsets, ids, uids, counts, t, seed=123)
    a = s.epoch(4)
    assert a.dtype == np.int64 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, s.epoch(4))
    s2 = BalancedSampler(offsets.copy(), ids.copy(), uids.copy(), counts.copy(), t, seed=123)
    assert np.array_equal(a, s2.epoch(4))
    # Other seed: different subset.
    s3 = BalancedSampler(offsets, ids, uids, counts, t, seed=124)
    assert not np.array_equal(a, s3.epoch(4))


def test_epochs_differ_and_epoch_0_is_the_offline_set(data):
    offsets, ids, uids, counts, t, rows, ref = data
    s = BalancedSampler(offsets, ids, uids, counts, t, seed=9)
    epochs = [s.epoch(k) for k in range(6)]
    for i in range(6):
        for j in range(i + 1, 6):
            assert not np.array_equal(epochs[i], epochs[j])
    offline = keep_mask(offsets, ids, uids, entry_probabilities(counts, t), 9, stream=0)
    assert np.array_equal(epochs[0], np.flatnonzero(offline))
    assert np.array_equal(s.keep_mask(3), np.isin(np.arange(len(rows)), epochs[3]))


def test_always_kept_and_never_kept_rows(data):
    offsets, ids, uids, counts, t, rows, ref = data
    s = BalancedSampler(offsets, ids, uids, counts, t, seed=1)
    always = [i for i, r in enumerate(rows) if any(counts[e] <= t for e in r)]
    never = [i for i, r in enumerate(rows) if not r]
    assert always and never
    for k in range(30):
        kept = set(s.epoch(k).tolist())
        assert set(always) <= kept
        assert not kept & set(never)


def test_per_epoch_keep_frequencies_follow_one_minus_prod(data):
    offsets, ids, uids, counts, t, rows, ref = data
    s = BalancedSampler(offsets, ids, uids, counts, t, seed=2**63 + 77)
    n_epochs = 400
    freq = np.zeros(len(rows), np.int64)
    for k in range(n_epochs):
        freq[s.epoch(k)] += 1
    assert not keep_rule_rejected(freq, n_epochs, ref)
    # The same test has power against the usual wrong rules.
    p = [t / max(int(c), t) for c in counts]
    sum_rule = np.array([min(sum(p[e] for e in r), 1.0) for r in rows])
    max_rule = np.array([max((p[e] for e in r), default=0.0) for r in rows])
    assert keep_rule_rejected(freq, n_epochs, sum_rule)
    assert keep_rule_rejected(freq, n_epochs, max_rule)


def test_len_and_expected_rows(data):
    offsets, ids, uids, counts, t, rows, ref = data
    s = BalancedSampler(offsets, ids, uids, counts, t, seed=0)
    assert s.expected_rows == pytest.approx(math.fsum(ref), rel=1e-13)
    # len() is the current epoch's own size, which a DataLoader's length must be.
    sizes = []
    for k in range(200):
        s.set_epoch(k)
        sizes.append(s.epoch(k).size)
        assert len(s) == sizes[-1] == len(list(s))
    assert len(set(sizes)) > 1  # (so the test tells an epoch's size from the mean)
    sd = math.sqrt(float((ref * (1 - ref)).sum()) / 200)
    assert abs(np.mean(sizes) - math.fsum(ref)) < 5 * sd


def test_pickles_and_takes_no_bool_or_str_arguments(data):
    import copy
    import pickle

    offsets, ids, uids, counts, t, rows, ref = data
    s = BalancedSampler(offsets, ids, uids, counts, t, seed=7, shuffle=True)
    s.set_epoch(3)
    for clone in (pickle.loads(pickle.dumps(s)), copy.deepcopy(s)):
        assert list(clone) == list(s) and len(clone) == len(s)
        assert np.array_equal(clone.epoch(9), s.epoch(9))
    with pytest.raises(TypeError, match="seed must be an integer, got bool"):
        BalancedSampler(offsets, ids, uids, counts, t, seed=True)
    for bad in ("5", True):
        with pytest.raises(ValueError, match="t must be a number"):
            BalancedSampler(offsets, ids, uids, counts, bad, seed=1)


@pytest.mark.parametrize("shuffle", [False, True])
def test_distributed_shares(data, shuffle):
    offsets, ids, uids, counts, t, rows, ref = data
    whole = BalancedSampler(offsets, ids, uids, counts, t, seed=4, shuffle=shuffle)
    sizes = [whole.epoch(k).size % 3 for k in (0, 1, 2)]
    assert sizes.count(0) < 3  # (some epoch needs padding)
    for epoch in (0, 1, 2):
        whole.set_epoch(epoch)
        order = list(whole)
        n = len(order)
        for drop_last in (False, True):
            shares = []
            for rank in range(3):
                s = BalancedSampler(offsets, ids, uids, counts, t, seed=4, shuffle=shuffle,
                                    num_replicas=3, rank=rank, drop_last=drop_last)  # fmt: skip
                s.set_epoch(epoch)
                shares.append(list(s))
                assert len(s) == len(shares[-1]) == (n // 3 if drop_last else -(-n // 3))
            # Every rank gets every third index of the same epoch, in the epoch's order.
            merged = [i for group in zip(*shares, strict=True) for i in group]
            if drop_last:
                assert merged == order[: n - n % 3]
            else:  # padded with the epoch's first indices
                assert merged == (order + order)[: len(merged)] and len(merged) - n < 3
    with pytest.raises(ValueError, match="0 <= rank < num_replicas"):
        BalancedSampler(offsets, ids, uids, counts, t, seed=4, num_replicas=2, rank=2)


def test_iteration_follows_set_epoch(data):
    offsets, ids, uids, counts, t, rows, ref = data
    s = BalancedSampler(offsets, ids, uids, counts, t, seed=5)
    assert list(s) == s.epoch(0).tolist()
    s.set_epoch(7)
    assert list(s) == s.epoch(7).tolist()
    with pytest.raises(ValueError):
        s.set_epoch(-1)
    with pytest.raises(ValueError):
        s.epoch(2**63)


def test_shuffle_is_a_seeded_permutation(data):
    offsets, ids, uids, counts, t, rows, ref = data
    s = BalancedSampler(offsets, ids, uids, counts, t, seed=5, shuffle=True)
    s.set_epoch(2)
    order = list(s)
    assert sorted(order) == s.epoch(2).tolist()
    assert order != sorted(order)
    assert order == list(
        BalancedSampler(offsets, ids, uids, counts, t, seed=5, shuffle=True).indices(2)
    )
    s.set_epoch(3)
    assert sorted(list(s)) == s.epoch(3).tolist()


def test_from_matched_dir(tmp_path, data):
    offsets, ids, uids, counts, t, rows, ref = data
    (tmp_path / "matched").mkdir()
    half = len(rows) // 2
    for name, lo, hi in (("part-0.parquet", 0, half), ("part-1.parquet", half, len(rows))):
        pq.write_table(
            pa.table(
                {
                    "uid": pa.array(uids[lo:hi]),
                    "entry_ids": pa.array(rows[lo:hi], pa.list_(pa.int32())),
                }
            ),
            tmp_path / "matched" / name,
        )
    write_success(tmp_path / "matched", ["part-0.parquet", "part-1.parquet"])
    # A file beside the parts that _SUCCESS does not list (a copy, say) is not read.
    (tmp_path / "matched" / "_old.parquet").write_bytes(
        (tmp_path / "matched" / "part-1.parquet").read_bytes()
    )
    write_entry_counts(tmp_path / "entry_counts.parquet", counts)
    from_dir = BalancedSampler.from_matched_dir(tmp_path, t, seed=31)
    in_mem = BalancedSampler(offsets, ids, uids, counts, t, seed=31)
    assert from_dir.n_rows == len(rows)
    for k in (0, 1, 5):
        assert np.array_equal(from_dir.epoch(k), in_mem.epoch(k))


def test_constructor_validation(data):
    offsets, ids, uids, counts, t, rows, ref = data
    with pytest.raises(ValueError):
        BalancedSampler(offsets, ids, uids, counts, 0, seed=1)
    with pytest.raises(ValueError):
        BalancedSampler(offsets, ids, uids, counts, t, seed=-1)
    with pytest.raises(ValueError):
        BalancedSampler(offsets, ids, uids[:-1], counts, t, seed=1)
    with pytest.raises(ValueError):
        BalancedSampler(offsets, ids, uids, counts[:3], t, seed=1)


def test_gpu_sampler_matches_cpu(data):
    pytest.importorskip("cupy", reason="CuPy is not installed: no GPU sampler check")
    from gpu_curate.backend import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")
    offsets, ids, uids, counts, t, rows, ref = data
    cpu = BalancedSampler(offsets, ids, uids, counts, t, seed=3, shuffle=True)
    gpu = BalancedSampler(offsets, ids, uids, counts, t, seed=3, shuffle=True, backend="gpu")
    for k in range(4):
        assert np.array_equal(cpu.epoch(k), gpu.epoch(k))
        assert np.array_equal(cpu.indices(k), gpu.indices(k))
    assert cpu.expected_rows == pytest.approx(gpu.expected_rows, rel=1e-12)
