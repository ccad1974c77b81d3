"""Online balancing for training data loaders (MetaCLIP's "online curation").

Instead of writing one curated subset, a :class:`BalancedSampler` draws a fresh balanced
subset of a matched dataset every epoch: epoch ``k`` keeps text ``r`` iff
``U(seed, uid_r, e) < p[e]`` for one of its entries, with the draws of stream ``k`` (see
:func:`gpu_curate.balance.pair_uniforms`). Each epoch is a pure function of
(matched dataset, t, seed, k); epoch 0 is exactly the offline curated set of the same
``seed`` (which uses stream 0).

No PyTorch dependency: the sampler is an iterable of row indices with ``len()`` and
``set_epoch()``, the protocol ``torch.utils.data.DataLoader(sampler=...)`` expects. For
distributed training, ``num_replicas`` and ``rank`` give each process its share of the
epoch, as ``torch.utils.data.DistributedSampler`` does: every process draws the same
epoch, and takes every ``num_replicas``-th index from position ``rank``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import balance
from .backend import Backend, resolve

__all__ = ["BalancedSampler"]

# Streams [0, 2**63) are the epochs' keep draws; the shuffle order of epoch k uses
# stream 2**63 + k so that it is independent of which entry kept a row.
_SHUFFLE_STREAM = 1 << 63


class BalancedSampler:
    """Per-epoch balanced subsets of a matched dataset, drawn with counter-based hashes.

    Parameters
    ----------
    row_offsets : array of int64, shape (n + 1,)
        CSR offsets of the matched entry ids of each row.
    entry_ids : array of int32
        Matched entry ids, concatenated.
    uids : array of uint64, shape (n,)
        Row uids (the pipeline's ``uid`` column).
    counts : array of int64, shape (n_entries,)
        Pool entry counts.
    t : float
        Balancing threshold (> 0).
    seed : int
        In [0, 2**64).
    shuffle : bool, default False
        Iterate each epoch's indices in a seeded, counter-based random order (a pure
        function of (seed, epoch, uid)) instead of ascending order.
    backend : {"cpu", "gpu", "auto"} or Backend, default "cpu"
        Where the draws are computed; indices always come back as NumPy arrays.
    num_replicas, rank : int, default 1 and 0
        Distributed training: the number of processes and this one's rank. Each process
        iterates ``ceil(size / num_replicas)`` indices of the epoch (the epoch's first
        indices repeated to make the shares equal, as DistributedSampler pads), or
        ``floor(...)`` with ``drop_last``; the shares are disjoint otherwise.
    drop_last : bool, default False
        With ``num_replicas > 1``: drop the epoch's last indices instead of padding.

    Examples
    --------
    >>> import numpy as np
    >>> offs = np.array([0, 1, 2, 4]); ids = np.array([0, 1, 0, 1], np.int32)
    >>> s = BalancedSampler(offs, ids, np.arange(3, dtype=np.uint64), np.array([1, 9]), 1, 0)
    >>> s.epoch(0).dtype, len(s) == s.epoch(0).size
    (dtype('int64'), True)
    >>> s.set_epoch(3); list(s) == s.epoch(3).tolist()
    True
    """

    def __init__(
        self,
        row_offsets: Any,
        entry_ids: Any,
        uids: Any,
        counts: Any,
        t: float,
        seed: int,
        *,
        shuffle: bool = False,
        backend: str | Backend = "cpu",
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        for name, value in (("num_replicas", num_replicas), ("rank", rank)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}"
            )
        self._replicas, self._rank = int(num_replicas), int(rank)
        self._drop_last = bool(drop_last)
        self._be = resolve(backend)
        xp = self._be.xp
        offsets, values = balance._csr(xp.asarray(row_offsets), xp.asarray(entry_ids), xp)
        uids = balance._check_uids(uids, offsets.size - 1, xp)
        self._p = balance._check_p(balance.entry_probabilities(xp.asarray(counts), t), values, xp)
        self._seed = balance._as_u64_scalar(seed, "seed")
        self._offsets = offsets
        self._values = values
        self._uids = uids.astype(np.uint64, copy=False)
        self._t = float(t)
        self._shuffle = bool(shuffle)
        self._epoch = 0
        self._sizes: dict[int, int] = {}  # epoch -> its number of rows (len())
        self._expected: float | None = None

    @classmethod
    def from_matched_dir(
        cls,
        matched_dir: str | Path,
        t: float,
        seed: int,
        *,
        shuffle: bool = False,
        backend: str | Backend = "cpu",
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> BalancedSampler:
        """Build a sampler from a matched dataset directory (``matched/`` + counts).

        Row indices refer to the rows of the parts ``matched/_SUCCESS`` lists, in its order
        (the order ``gpu-curate balance`` reads them in); an incomplete matched dataset is
        refused.

        Examples
        --------
        >>> sampler = BalancedSampler.from_matched_dir("out/", t=20_000, seed=0)  # doctest: +SKIP
        """
        from .outdir import reading
        from .planning import load_entry_counts, load_matched_csr

        with reading(str(matched_dir)):  # (no run overwrites it while it is read)
            counts, _ = load_entry_counts(matched_dir)
            offsets, values, uids = load_matched_csr(matched_dir, with_uids=True)
        return cls(
            offsets, values, uids, counts, t, seed, shuffle=shuffle, backend=backend,
            num_replicas=num_replicas, rank=rank, drop_last=drop_last,
        )  # fmt: skip

    # ----------------------------------------------------------------- properties

    @property
    def t(self) -> float:
        """The balancing threshold."""
        return self._t

    @property
    def seed(self) -> int:
        """The seed of all epochs' draws."""
        return self._seed

    @property
    def n_rows(self) -> int:
        """Number of rows of the matched dataset."""
        return int(self._offsets.size - 1)

    @property
    def p(self) -> np.ndarray:
        """Per-entry keep probabilities ``t / max(count, t)`` (host copy)."""
        return self._be.asnumpy(self._p)

    @property
    def expected_rows(self) -> float:
        """Expected rows per epoch: ``sum(1 - prod(1 - p[e]))`` (exact, computed once)."""
        if self._expected is None:
            xp = self._be.xp
            kp = balance._keep_probabilities_core(self._offsets, self._values, self._p, xp)
            self._expected = balance.expected_units(kp, xp) / balance.EXPECTED_UNITS_PER_ROW
        return self._expected

    # ----------------------------------------------------------------- epochs

    @staticmethod
    def _stream(epoch: int) -> int:
        k = operator.index(epoch)
        if not 0 <= k < _SHUFFLE_STREAM:
            raise ValueError(f"epoch must be in [0, 2**63), got {k}")
        return k

    def keep_mask(self, epoch: int) -> np.ndarray:
        """Boolean keep mask (one per row) of ``epoch``, as a host array.

        Examples
        --------
        >>> import numpy as np
        >>> s = BalancedSampler(np.array([0, 1]), np.array([0], np.int32),
        ...                     np.array([5], np.uint64), np.array([1]), 10, 0)
        >>> s.keep_mask(0).tolist()
        [True]
        """
        mask = balance.keep_mask(
            self._offsets, self._values, self._uids, self._p, self._seed, self._stream(epoch)
        )
        return self._be.asnumpy(mask)

    def epoch(self, k: int) -> np.ndarray:
        """Kept row indices of epoch ``k`` (int64, ascending).

        Draws are fresh per epoch (stream ``k``) and reproducible: the same
        (data, t, seed, k) always give the same indices; epoch 0 equals the offline
        curated set of the same seed.

        Examples
        --------
        >>> import numpy as np
        >>> s = BalancedSampler(np.array([0, 1, 1]), np.array([0], np.int32),
        ...                     np.arange(2, dtype=np.uint64), np.array([1]), 10, 0)
        >>> s.epoch(5).tolist()
        [0]
        """
        xp = self._be.xp
        mask = balance.keep_mask(
            self._offsets, self._values, self._uids, self._p, self._seed, self._stream(k)
        )
        return np.asarray(self._be.asnumpy(xp.flatnonzero(mask)), dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch that ``iter(sampler)`` yields (call before each epoch)."""
        self._stream(epoch)
        self._epoch = operator.index(epoch)

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """The indices ``iter()`` yields for ``epoch`` (default: the current one).

        Ascending, or in the seeded counter-based order when ``shuffle=True``; with
        ``num_replicas > 1``, this process's share of them.
        """
        k = self._epoch if epoch is None else epoch
        order = self._ordered(k)
        if self._replicas == 1:
            return order
        n, r = order.size, self._replicas
        if self._drop_last:
            order = order[: n - n % r]
        elif n % r:
            # Pad with the epoch's first indices (cycled: an epoch may have fewer rows
            # than there are processes), as DistributedSampler does.
            order = np.concatenate([order, np.resize(order, r - n % r)]) if n else order
        return order[self._rank :: r]

    def _ordered(self, k: int) -> np.ndarray:
        """All of epoch ``k``'s indices, in the order the processes share them out."""
        idx = self.epoch(k)
        if not self._shuffle or idx.size == 0:
            return idx
        xp = self._be.xp
        kept = xp.asarray(idx)
        keys = balance.pair_hashes(
            self._seed,
            self._uids[kept],
            xp.zeros(idx.size, dtype=np.int32),
            _SHUFFLE_STREAM + self._stream(k),
        )
        # Ties (equal 64-bit keys) fall back to row order: NumPy's stable sort and CuPy's
        # (thrust's stable radix sort) agree, so the order is the same on both.
        order = np.argsort(keys, kind="stable") if xp is np else xp.argsort(keys)
        return idx[np.asarray(self._be.asnumpy(order))]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        """The number of rows the current epoch (:meth:`set_epoch`) yields (this process's
        share of them, with ``num_replicas``).

        Exact, as a data loader's length must be (a learning-rate schedule sized from it
        must not run short): an epoch's size varies around :attr:`expected_rows`. The
        first call for an epoch draws it once.
        """
        if self._epoch not in self._sizes:
            if len(self._sizes) > 64:
                self._sizes.clear()
            self._sizes[self._epoch] = int(np.count_nonzero(self.keep_mask(self._epoch)))
        n, r = self._sizes[self._epoch], self._replicas
        return n // r if self._drop_last else -(-n // r)

    def __getstate__(self) -> dict:
        # The backend holds modules (NumPy / CuPy), which do not pickle: its name does
        # (a DataLoader's worker processes, torch.multiprocessing.spawn, checkpoints).
        state = dict(self.__dict__)
        state["_be"] = self._be.name
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._be = resolve(state["_be"])

    def __repr__(self) -> str:
        return (
            f"BalancedSampler(n_rows={self.n_rows}, t={self._t:g}, seed={self._seed}, "
            f"epoch={self._epoch}, shuffle={self._shuffle}, backend={self._be.name!r}"
            + (f", rank={self._rank} of {self._replicas}" if self._replicas > 1 else "")
            + ")"
        )
