"""MetaCLIP balancing maths: entry probabilities, counter-based draws, keep masks, sizes.

Every function takes NumPy or CuPy arrays and computes with the array module of its
inputs (see :func:`array_module`), so the same code runs on the host and on a GPU.

Reproducibility contract (README, Semantics): the curated set is a pure function of
(pool, metadata, t, seed). Each (text, entry) pair gets its own uniform
``U(seed, uid, entry_id)`` from a counter-based hash (:func:`pair_uniforms`), so a text's
fate depends only on its uid, its entry ids, the entry counts, ``t`` and ``seed``: not on
partitioning, row order, worker count or device. To keep NumPy and CuPy bit-identical:

- hashing uses uint64 integer arithmetic only (wrap-around is exact on both);
- probabilities use float64 with correctly rounded operations only (``/``, ``*``, ``-``,
  comparisons; no ``log``/``exp``, whose last bit differs between libms), and each row's
  product is formed left to right in entry order on both backends.

Sums over many rows (:func:`expected_rows`, :func:`expected_entry_counts`) are reductions
whose summation order differs between NumPy and CuPy; they agree to rounding only.

A CSR here is ``row_offsets`` (int64, ``n + 1`` values, non-decreasing) and ``entry_ids``
(int32, the sorted matched entry ids of each row, concatenated). ``row_offsets[0]`` may
be non-zero (a slice of a larger CSR); only ``entry_ids[row_offsets[0]:row_offsets[-1]]``
is read.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from types import ModuleType
from typing import Any

import numpy as np

from .errors import ArgumentError

__all__ = [
    "array_module",
    "entry_probabilities",
    "fmix64",
    "fmix64_array",
    "pair_hashes",
    "pair_uniforms",
    "keep_mask",
    "balance_partition",
    "expected_units",
    "keep_probabilities",
    "expected_rows",
    "expected_entry_counts",
    "kept_entry_counts",
]

_MASK64 = (1 << 64) - 1
_FMIX_C1 = 0xFF51AFD7ED558CCD
_FMIX_C2 = 0xC4CEB9FE1A85EC53
# 2**64 / golden ratio (odd, so multiplying by it is a bijection of uint64).
_GOLDEN = 0x9E3779B97F4A7C15
_TWO_M53 = 2.0**-53


# --------------------------------------------------------------------------- helpers


@functools.cache
def _cupy() -> ModuleType | None:
    try:
        import cupy
    except Exception:  # not installed, or installed without a usable CUDA runtime
        return None
    return cupy


def array_module(*arrays: Any) -> ModuleType:
    """Return the array module (``numpy`` or ``cupy``) of the given arrays.

    CuPy wins when any argument is a CuPy array; without CuPy installed this is always
    NumPy. Python scalars and ``None`` are ignored.

    Parameters
    ----------
    *arrays
        Arrays (or scalars) whose module is wanted.

    Returns
    -------
    module
        ``numpy`` or ``cupy``.

    Examples
    --------
    >>> import numpy as np
    >>> array_module(np.zeros(3)).__name__
    'numpy'
    """
    cp = _cupy()
    if cp is None:
        return np
    return cp.get_array_module(*[a for a in arrays if a is not None])


def _is_numpy(xp: ModuleType) -> bool:
    return xp is np


def _to_host(x: Any) -> np.ndarray:
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


def _wrap_ok(xp: ModuleType):
    # uint64 multiplication wraps on purpose; NumPy would warn about it on scalars.
    return np.errstate(over="ignore") if _is_numpy(xp) else contextlib.nullcontext()


def _as_u64_scalar(value: Any, name: str) -> int:
    if isinstance(value, bool | np.bool_):  # (operator.index takes True as 1: a slip)
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if not 0 <= v <= _MASK64:
        raise ValueError(f"{name} must be in [0, 2**64), got {v}")
    return v


def check_t(t: Any) -> float:
    """``t`` as a float, or an :class:`~gpu_curate.errors.ArgumentError` (a ValueError)
    unless it is a positive finite number: the one rule for t, wherever it is given.

    Examples
    --------
    >>> check_t(20_000)
    20000.0
    """
    if isinstance(t, bool | np.bool_ | str | bytes):  # (float() takes True and "5")
        raise ArgumentError(f"t must be a number, got {t!r}")
    try:
        tf = float(t)
    except OverflowError:
        raise ArgumentError("t must be a positive finite number, got one too large") from None
    except (TypeError, ValueError):
        raise ArgumentError(f"t must be a number, got {t!r}") from None
    if not (math.isfinite(tf) and tf > 0):
        raise ArgumentError(f"t must be a positive finite number, got {t!r}")
    return tf


def check_seed(seed: Any) -> int:
    """``seed`` as an int, or an :class:`~gpu_curate.errors.ArgumentError` (a ValueError)
    unless it is an integer in [0, 2**64): the one rule for a run's seed, wherever it is
    given (a string is refused, as it is for ``t``: the command line parses its text first).

    Examples
    --------
    >>> check_seed(7)
    7
    """
    try:
        return _as_u64_scalar(seed, "seed")
    except (TypeError, ValueError) as exc:
        raise ArgumentError(str(exc)) from None


def _csr(row_offsets: Any, entry_ids: Any, xp: ModuleType) -> tuple[Any, Any]:
    """Validate a CSR and return it with offsets starting at 0 and exactly covering values."""
    offsets = xp.asarray(row_offsets)
    values = xp.asarray(entry_ids)
    if offsets.ndim != 1 or offsets.size < 1:
        raise ValueError("row_offsets must be a 1-D array of n + 1 offsets")
    if values.ndim != 1:
        raise ValueError("entry_ids must be a 1-D array")
    if offsets.dtype.kind not in "iu":
        raise TypeError(f"row_offsets must be integers, got {offsets.dtype}")
    if values.dtype.kind not in "iu":
        raise TypeError(f"entry_ids must be integers, got {values.dtype}")
    offsets = offsets.astype(np.int64, copy=False)
    start, end = (int(v) for v in _to_host(offsets[xp.asarray([0, -1])]))
    if start < 0 or end > values.size:
        raise ValueError(
            f"row_offsets span [{start}, {end}) does not fit in {values.size} entry_ids"
        )
    if offsets.size > 1 and bool(xp.any(offsets[1:] < offsets[:-1])):
        raise ValueError("row_offsets must be non-decreasing")
    if start != 0 or end != values.size:
        values = values[start:end]
        offsets = offsets - start
    if values.size and int(values.min()) < 0:
        raise ValueError("entry_ids must be non-negative")
    return offsets, values


def _check_p(p: Any, values: Any, xp: ModuleType) -> Any:
    p = xp.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError("p must be a 1-D array with one probability per entry")
    # CuPy does not bounds-check fancy indexing: an id past p would read garbage.
    if values.size and int(values.max()) >= p.size:
        raise ValueError(f"entry id {int(values.max())} is out of range for {p.size} entries")
    return p


def _pair_rows(offsets: Any, xp: ModuleType, *, generic: bool = False) -> Any:
    """Row index of each (row, entry) pair: row r repeated row_length(r) times."""
    n = offsets.size - 1
    nnz = int(offsets[-1])
    if _is_numpy(xp) and not generic:
        return np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
    # cupy.repeat wants host repeat counts; a binary search over row ends is one kernel
    # and gives the same answer (rows with an end <= i come before pair i's row).
    return xp.searchsorted(offsets[1:], xp.arange(nnz, dtype=np.int64), side="right").astype(
        np.int64, copy=False
    )


def _row_products(offsets: Any, q: Any, xp: ModuleType, *, generic: bool = False) -> Any:
    """Per-row product of q over the row's pairs, multiplied left to right (1 if empty).

    Both paths multiply in the same order with the same correctly rounded float64
    operation, so they agree bit for bit (tested on NumPy via ``generic=True``).
    """
    n = offsets.size - 1
    lengths = offsets[1:] - offsets[:-1]
    out = xp.ones(n, dtype=np.float64)
    if q.size == 0:
        return out
    if _is_numpy(xp) and not generic:
        nonempty = lengths > 0
        # reduceat over the starts of non-empty rows: each segment runs to the next
        # non-empty start, i.e. exactly that row's pairs.
        out[nonempty] = np.multiply.reduceat(q, offsets[:-1][nonempty])
        return out
    # Generic (CuPy) path: rows sorted by length, longest first, so the rows that still
    # have a j-th pair are a prefix; one vectorized step per position j, not per row.
    order = xp.argsort(-lengths)
    starts = offsets[:-1][order]
    max_len = int(lengths[order[0]])
    hist = _to_host(xp.bincount(lengths, minlength=max_len + 1))
    still = hist[::-1].cumsum()[::-1]  # still[j] = rows with length >= j
    acc = xp.ones(n, dtype=np.float64)
    for j in range(max_len):
        m = int(still[j + 1])
        acc[:m] = acc[:m] * q[starts[:m] + j]
    out[order] = acc
    return out


def _keep_probabilities_core(
    offsets: Any, values: Any, p: Any, xp: ModuleType, p_values: Any = None
) -> Any:
    """Per-row keep probability; ``p_values`` is ``p[values]`` when the caller has it."""
    q = 1.0 - (p[values] if p_values is None else p_values)
    # An empty row has product 1 -> probability 0; a pair with p == 1 makes the product
    # exactly 0 -> probability exactly 1.
    return 1.0 - _row_products(offsets, q, xp)


# --------------------------------------------------------------------------- public API


def entry_probabilities(counts: Any, t: float) -> Any:
    """Per-entry keep probability ``p[e] = t / max(count[e], t)`` in float64.

    Parameters
    ----------
    counts : array of int, shape (n_entries,)
        Number of pool texts that matched each entry (non-negative).
    t : float
        The balancing threshold, > 0.

    Returns
    -------
    array of float64, shape (n_entries,)
        1 where count <= t (the tail, count < t, and an entry of exactly t, which the
        reports count among the head entries, count >= t), ``t / count`` above t.

    Raises
    ------
    ValueError
        If ``t <= 0`` (or not finite) or a count is negative.

    Examples
    --------
    >>> import numpy as np
    >>> entry_probabilities(np.array([0, 5, 10, 40]), 10).tolist()
    [1.0, 1.0, 1.0, 0.25]
    """
    tf = check_t(t)
    xp = array_module(counts)
    c = xp.asarray(counts)
    if c.ndim != 1:
        raise ValueError("counts must be a 1-D array")
    c = c.astype(np.float64)
    if c.size and bool(xp.any(c < 0)):
        raise ValueError("counts must be non-negative")
    return tf / xp.maximum(c, tf)


def fmix64(k: int) -> int:
    """Murmur3's 64-bit finalizer on a Python int (a bijection of [0, 2**64)).

    Examples
    --------
    >>> fmix64(0)
    0
    >>> hex(fmix64(1))
    '0xb456bcfc34c2cb2c'
    """
    k &= _MASK64
    k ^= k >> 33
    k = (k * _FMIX_C1) & _MASK64
    k ^= k >> 33
    k = (k * _FMIX_C2) & _MASK64
    k ^= k >> 33
    return k


def _fmix64_inplace(h: Any, xp: ModuleType) -> Any:
    s33 = xp.uint64(33)
    h ^= h >> s33
    h *= xp.uint64(_FMIX_C1)
    h ^= h >> s33
    h *= xp.uint64(_FMIX_C2)
    h ^= h >> s33
    return h


def fmix64_array(h: Any) -> Any:
    """Murmur3's 64-bit finalizer applied in place to a uint64 NumPy or CuPy array.

    Examples
    --------
    >>> import numpy as np
    >>> hex(int(fmix64_array(np.array([1], np.uint64))[0]))
    '0xb456bcfc34c2cb2c'
    """
    xp = array_module(h)
    with _wrap_ok(xp):
        return _fmix64_inplace(h, xp)


def _stream_key(seed: int, stream: int) -> int:
    return fmix64(seed ^ fmix64(_GOLDEN * (stream + 1)))


def pair_hashes(seed: int, uids: Any, entry_ids: Any, stream: int = 0) -> Any:
    """The 64-bit counter-based hash ``H(seed, stream, uid, entry_id)`` of each pair.

    With ``fmix64`` Murmur3's finalizer and all arithmetic modulo 2**64::

        key = fmix64(seed ^ fmix64(0x9E3779B97F4A7C15 * (stream + 1)))
        H   = fmix64(fmix64(key ^ uid) ^ entry_id)

    For fixed other inputs, ``H`` is a bijection of each of ``seed``, ``stream``, ``uid``
    and ``entry_id``, so every input bit matters. See :func:`pair_uniforms`.

    Parameters
    ----------
    seed : int
        In [0, 2**64).
    uids : array of uint64
        The text uid of each pair (signed integers are taken modulo 2**64).
    entry_ids : array of int
        The entry id of each pair (non-negative); broadcast against ``uids``.
    stream : int, default 0
        In [0, 2**64): an independent family of draws for the same seed.

    Returns
    -------
    array of uint64

    Examples
    --------
    >>> import numpy as np
    >>> pair_hashes(0, np.array([0], np.uint64), np.array([0])).dtype
    dtype('uint64')
    """
    seed = _as_u64_scalar(seed, "seed")
    stream = _as_u64_scalar(stream, "stream")
    xp = array_module(uids, entry_ids)
    u = xp.asarray(uids)
    e = xp.asarray(entry_ids)
    if u.dtype.kind not in "iu":
        raise TypeError(f"uids must be integers, got {u.dtype}")
    if e.dtype.kind not in "iu":
        raise TypeError(f"entry_ids must be integers, got {e.dtype}")
    if e.size and e.dtype.kind == "i" and int(e.min()) < 0:
        raise ValueError("entry_ids must be non-negative")
    with _wrap_ok(xp):
        return _entry_hashes(_uid_hashes(u, _stream_key(seed, stream), xp), e, xp)


def _uid_hashes(uids: Any, key: int, xp: ModuleType) -> Any:
    """fmix64(key ^ uid), in a fresh array: the first half of the pair hash."""
    h = uids.astype(np.uint64) ^ xp.uint64(key)
    return _fmix64_inplace(h, xp)


def _entry_hashes(uid_hashes: Any, entry_ids: Any, xp: ModuleType) -> Any:
    """fmix64(uid_hash ^ entry_id), in a fresh array: the pair hash H."""
    h = uid_hashes ^ entry_ids.astype(np.uint64, copy=False)
    return _fmix64_inplace(h, xp)


def _uniforms(h: Any, xp: ModuleType) -> Any:
    """U = (h >> 11) * 2**-53: the top 53 bits of each hash as a float64 in [0, 1)."""
    return (h >> xp.uint64(11)).astype(np.float64) * _TWO_M53


def pair_uniforms(seed: int, uids: Any, entry_ids: Any, stream: int = 0) -> Any:
    """Counter-based uniform draw ``U(seed, uid, entry_id)`` in [0, 1) for each pair.

    The exact formula (part of the reproducibility contract; all arithmetic on uint64
    modulo 2**64)::

        fmix64(k): k ^= k >> 33; k *= 0xff51afd7ed558ccd; k ^= k >> 33;
                   k *= 0xc4ceb9fe1a85ec53; k ^= k >> 33
        key = fmix64(seed ^ fmix64(0x9E3779B97F4A7C15 * (stream + 1)))
        h   = fmix64(fmix64(key ^ uid) ^ entry_id)
        U   = (h >> 11) * 2**-53          # float64, exact: the top 53 bits of h

    NumPy and CuPy give bit-identical results.

    Parameters
    ----------
    seed : int
        In [0, 2**64); negative seeds raise ValueError.
    uids : array of uint64
        The text uid of each pair.
    entry_ids : array of int
        The entry id of each pair (non-negative).
    stream : int, default 0
        In [0, 2**64): independent draws for the same seed (e.g. one per epoch).

    Returns
    -------
    array of float64 in [0, 1)

    Examples
    --------
    >>> import numpy as np
    >>> u = pair_uniforms(7, np.array([1, 2], np.uint64), np.array([3, 3], np.int32))
    >>> bool(((u >= 0) & (u < 1)).all())
    True
    """
    h = pair_hashes(seed, uids, entry_ids, stream)
    return _uniforms(h, array_module(h))


def keep_mask(
    row_offsets: Any, entry_ids: Any, uids: Any, p: Any, seed: int, stream: int = 0
) -> Any:
    """The balancing decision: keep a text iff ``U(seed, uid, e) < p[e]`` for some entry e.

    Rows without entries are never kept; a row with an entry whose ``p == 1`` (count <= t)
    is always kept. Each row's outcome depends only on its own uid and entry ids, so the
    mask is the same for any partitioning or order of the rows.

    Parameters
    ----------
    row_offsets : array of int64, shape (n + 1,)
        CSR offsets into ``entry_ids``.
    entry_ids : array of int32
        Matched entry ids of each row, concatenated.
    uids : array of uint64, shape (n,)
        One uid per row.
    p : array of float64, shape (n_entries,)
        Per-entry keep probabilities (:func:`entry_probabilities`).
    seed : int
        In [0, 2**64).
    stream : int, default 0
        Draw family; the offline curation uses 0.

    Returns
    -------
    array of bool, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> offs = np.array([0, 1, 1, 3]); ids = np.array([0, 0, 1], np.int32)
    >>> keep_mask(offs, ids, np.arange(3, dtype=np.uint64), np.array([1.0, 0.0]), 0).tolist()
    [True, False, True]
    """
    xp = array_module(row_offsets, entry_ids, uids, p)
    offsets, values = _csr(row_offsets, entry_ids, xp)
    p = _check_p(p, values, xp)
    uids = _check_uids(uids, offsets.size - 1, xp)
    return _keep_mask_core(offsets, values, uids, p, seed, stream, _pair_rows(offsets, xp), xp)


def _check_uids(uids: Any, n: int, xp: ModuleType) -> Any:
    uids = xp.asarray(uids)
    if uids.shape != (n,):
        raise ValueError(f"uids must have one value per row ({n}), got shape {uids.shape}")
    if uids.dtype.kind not in "iu":
        raise TypeError(f"uids must be integers, got {uids.dtype}")
    return uids


def _keep_mask_core(
    offsets, values, uids, p, seed: int, stream: int, rows, xp, p_values=None
) -> Any:
    """keep_mask on validated inputs; ``rows`` is the row of each pair, ``p_values`` is
    ``p[values]`` when the caller has it."""
    key = _stream_key(_as_u64_scalar(seed, "seed"), _as_u64_scalar(stream, "stream"))
    with _wrap_ok(xp):
        # pair_hashes, with its first half done once per row rather than once per pair.
        h = _entry_hashes(_uid_hashes(uids, key, xp)[rows], values, xp)
    u = _uniforms(h, xp)
    kept = xp.zeros(offsets.size - 1, dtype=bool)
    if p_values is None:
        p_values = p[values]
    kept[rows[u < p_values]] = True  # every write stores True, so duplicates are harmless
    return kept


# The unit of exact expected sizes: 2**-52 of a row (rounding each row's keep probability
# to it errs by at most 2**-53 of a row).
EXPECTED_UNITS_PER_ROW = 2**52


def expected_units(keep_prob: Any, xp: ModuleType = np) -> int:
    """Sum of keep probabilities in units of 2**-52 rows, exact: the same integer for any
    split of the rows into partitions and in any order, on NumPy and CuPy alike.

    Examples
    --------
    >>> import numpy as np
    >>> expected_units(np.array([0.75, 0.5])) / EXPECTED_UNITS_PER_ROW
    1.25
    """
    # x * 2**52 is exact and rint correctly rounded: each row's integer is
    # device-independent. Chunks of 1024 rows (each <= 2**52) sum below 2**62 in int64;
    # Python adds the chunks' sums without overflow.
    q = xp.rint(xp.asarray(keep_prob, dtype=xp.float64) * float(EXPECTED_UNITS_PER_ROW))
    q = q.astype(xp.int64)
    pad = (-q.size) % 1024
    if pad:
        q = xp.concatenate([q, xp.zeros(pad, xp.int64)])
    return sum(int(c) for c in q.reshape(-1, 1024).sum(axis=1).tolist())


def balance_partition(
    row_offsets: Any,
    entry_ids: Any,
    uids: Any,
    p: Any,
    seed: int,
    stream: int = 0,
    units: bool = False,
) -> tuple[Any, float | int, Any]:
    """One partition's balancing in one pass over its pairs.

    Returns ``(keep_mask(...), expected_rows(...), kept_entry_counts(...))`` for the same
    arguments, validating the CSR once. With ``units``, the expected size comes as
    :func:`expected_units` (an int whose sums over partitions do not depend on them).

    Examples
    --------
    >>> import numpy as np
    >>> offs = np.array([0, 1, 1, 3]); ids = np.array([0, 0, 1], np.int32)
    >>> mask, expected, kept = balance_partition(
    ...     offs, ids, np.arange(3, dtype=np.uint64), np.array([1.0, 0.0]), 0)
    >>> mask.tolist(), expected, kept.tolist()
    ([True, False, True], 2.0, [2, 1])
    """
    xp = array_module(row_offsets, entry_ids, uids, p)
    offsets, values = _csr(row_offsets, entry_ids, xp)
    p = _check_p(p, values, xp)
    uids = _check_uids(uids, offsets.size - 1, xp)
    rows = _pair_rows(offsets, xp)
    p_values = p[values]  # gathered once for the draws and the expected size
    mask = _keep_mask_core(offsets, values, uids, p, seed, stream, rows, xp, p_values)
    keep_prob = _keep_probabilities_core(offsets, values, p, xp, p_values)
    expected = expected_units(keep_prob, xp) if units else float(xp.sum(keep_prob))
    return mask, expected, _kept_counts(values, mask, rows, p.size, xp)


def keep_probabilities(row_offsets: Any, entry_ids: Any, p: Any) -> Any:
    """Per-row keep probability ``1 - prod(1 - p[e])`` over the row's entries.

    0 for rows without entries; exactly 1 when any of the row's entries has ``p == 1``.
    The product is formed left to right in entry order with float64 multiplications, so
    NumPy and CuPy agree bit for bit.

    Parameters
    ----------
    row_offsets : array of int64, shape (n + 1,)
    entry_ids : array of int32
    p : array of float64, shape (n_entries,)

    Returns
    -------
    array of float64, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> offs = np.array([0, 2, 2, 3]); ids = np.array([0, 1, 1], np.int32)
    >>> keep_probabilities(offs, ids, np.array([0.5, 0.5])).tolist()
    [0.75, 0.0, 0.5]
    """
    xp = array_module(row_offsets, entry_ids, p)
    offsets, values = _csr(row_offsets, entry_ids, xp)
    p = _check_p(p, values, xp)
    return _keep_probabilities_core(offsets, values, p, xp)


def expected_rows(row_offsets: Any, entry_ids: Any, p: Any) -> float:
    """Expected number of kept rows: the sum of :func:`keep_probabilities`.

    Examples
    --------
    >>> import numpy as np
    >>> expected_rows(np.array([0, 2, 3]), np.array([0, 1, 1], np.int32), np.array([0.5, 0.5]))
    1.25
    """
    xp = array_module(row_offsets, entry_ids, p)
    return float(xp.sum(keep_probabilities(row_offsets, entry_ids, p)))


def expected_entry_counts(
    row_offsets: Any, entry_ids: Any, p: Any, keep_prob: Any | None = None
) -> Any:
    """Expected number of kept texts containing each entry after balancing.

    ``E[count'(e)] = sum over texts r containing e of P(keep r)``. A head entry ends
    above ``t`` because its texts are also kept through their other entries.

    Parameters
    ----------
    row_offsets, entry_ids : CSR
    p : array of float64, shape (n_entries,)
    keep_prob : array of float64, shape (n,), optional
        :func:`keep_probabilities` if already computed.

    Returns
    -------
    array of float64, shape (n_entries,)

    Examples
    --------
    >>> import numpy as np
    >>> offs = np.array([0, 2, 3]); ids = np.array([0, 1, 1], np.int32)
    >>> expected_entry_counts(offs, ids, np.array([0.5, 0.5])).tolist()
    [0.75, 1.25]
    """
    xp = array_module(row_offsets, entry_ids, p, keep_prob)
    offsets, values = _csr(row_offsets, entry_ids, xp)
    p = _check_p(p, values, xp)
    if keep_prob is None:
        keep_prob = _keep_probabilities_core(offsets, values, p, xp)
    else:
        keep_prob = xp.asarray(keep_prob, dtype=np.float64)
        if keep_prob.shape != (offsets.size - 1,):
            raise ValueError("keep_prob must have one value per row")
    if _is_numpy(xp):
        weights = np.repeat(keep_prob, np.diff(offsets))  # streams; a gather would not
    else:
        weights = keep_prob[_pair_rows(offsets, xp)]
    return bincount(values, p.size, xp, weights).astype(np.float64)


def kept_entry_counts(row_offsets: Any, entry_ids: Any, mask: Any, n_entries: int) -> Any:
    """Number of kept texts containing each entry, for a realised keep mask.

    Examples
    --------
    >>> import numpy as np
    >>> offs = np.array([0, 2, 3]); ids = np.array([0, 1, 1], np.int32)
    >>> kept_entry_counts(offs, ids, np.array([True, False]), 3).tolist()
    [1, 1, 0]
    """
    xp = array_module(row_offsets, entry_ids, mask)
    offsets, values = _csr(row_offsets, entry_ids, xp)
    mask = xp.asarray(mask, dtype=bool)
    if mask.shape != (offsets.size - 1,):
        raise ValueError("mask must have one value per row")
    if values.size and int(values.max()) >= n_entries:
        raise ValueError(f"entry id {int(values.max())} is out of range for {n_entries} entries")
    return _kept_counts(values, mask, _pair_rows(offsets, xp), n_entries, xp)


def _kept_counts(values: Any, mask: Any, rows: Any, n_entries: int, xp: ModuleType) -> Any:
    return bincount(values[mask[rows]], n_entries, xp).astype(np.int64)


def bincount(x: Any, minlength: int, xp: ModuleType = np, weights: Any = None) -> Any:
    """``xp.bincount(x, weights, minlength)``, also for an empty ``x``: CuPy's takes
    ``max(x)`` first and raises on an empty array (cupy/cupy#8116), which a part without
    a match (or a balance that keeps no row) would hand it.

    Examples
    --------
    >>> import numpy as np
    >>> bincount(np.array([], np.int32), 3).tolist()
    [0, 0, 0]
    """
    if x.size == 0:
        return xp.zeros(minlength, dtype=np.int64 if weights is None else np.float64)
    return xp.bincount(x, weights=weights, minlength=minlength)
