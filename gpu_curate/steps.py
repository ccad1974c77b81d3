"""The per-partition steps: match a part's rows (a table of one file's, or of a pack's files
together), balance them (with stats).

A step takes one partition and returns the transformed partition plus a small stats dict,
so the pipeline can write parts independently and sum their stats. CPU partitions are
Arrow tables (zero-copy to and from pandas with Arrow dtypes); on the gpu backend the
kernel and the draws run on the device (``match_arrow`` / CuPy), the columns stay Arrow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import balance as bal
from .backend import resolve
from .counts import partition_counts
from .errors import CurateError
from .io import RESERVED_COLUMNS, check_names, check_text_type, text_column
from .match import match_arrow
from .metadata import Metadata
from .uid import position_uids, value_uids
from .unique import first_duplicate


@dataclass(frozen=True)
class MatchStep:
    """Match a partition's texts; add ``uid`` and ``entry_ids`` (list<int32>).

    Accepts the ``cpu`` and ``gpu`` backends (the gpu one runs the kernel on the device).
    """

    metadata: Metadata
    text_column: str | None = None
    id_column: str | None = None
    keep_unmatched: bool = False
    backend: str = "cpu"

    accepts = ("cpu", "gpu")

    def run(self, table: pa.Table, relpath: str, row_start: int, where: str):
        """Return (matched table, stats dict, per-entry counts of this partition)."""
        return self.run_with_uids(table, relpath, row_start, where)[:3]

    def run_with_uids(
        self, table: pa.Table, relpath: str, row_start: int, where: str
    ) -> tuple[pa.Table, dict, np.ndarray, np.ndarray]:
        """Like :meth:`run`, plus the uids of *all* the partition's rows (matched or not).

        Parameters
        ----------
        table : pyarrow.Table
            The partition's rows.
        relpath : str
            The input file's path relative to the input root (for position uids).
        row_start : int
            Row number of the partition's first row within that file.
        where : str
            Where the rows come from, for error messages (the file's path).

        Returns
        -------
        tuple
            (matched table, stats dict, per-entry counts, the uids (uint64) of every row of
            the partition in no particular order: sorted with an id column).

        Examples
        --------
        >>> import pyarrow as pa
        >>> step = MatchStep(Metadata(["dog", "new york"]))
        >>> out, stats, counts, uids = step.run_with_uids(
        ...     pa.table({"TEXT": ["a dog", "a cat"]}), "pool.parquet", 0, "pool.parquet")
        >>> out.column("entry_ids").to_pylist(), stats["matched_rows"], counts.tolist()
        ([[0]], 1, [1, 0])
        """
        uids, all_uids = self.uids(table, relpath, row_start, where)
        out, stats, counts = self.match(table, uids, where)
        return out, stats, counts, all_uids

    def check_columns(self, schema: pa.Schema, where: str) -> None:
        """Whether rows of this schema can be matched: a :class:`CurateError` naming
        ``where`` if they name a column twice, have a column gpu-curate adds, no text
        column of strings, or not the id column.

        The tasks check each part's rows; a run checks the schemas it reads to plan (the
        Parquet files' footers, every CSV/TSV file's head, the small JSON Lines files it
        packs and those it cuts into ranges) before it starts, so that a pool whose 900th
        file lacks the column fails at once, not after hours of matching.

        Examples
        --------
        >>> step = MatchStep(Metadata(["dog"]), text_column="caption")
        >>> step.check_columns(pa.schema({"TEXT": pa.string()}), "a.parquet")
        Traceback (most recent call last):
        ...
        gpu_curate.errors.CurateError: a.parquet: text column 'caption' not found; columns are: TEXT
        """
        check_names(schema.names, where)
        clash = [c for c in RESERVED_COLUMNS if c in schema.names]
        if clash:
            raise CurateError(
                f"{where}: the input has a column named {clash[0]!r}, which gpu-curate adds; "
                "rename it"
            )
        check_text_type(schema, text_column(schema, self.text_column, where), where)
        if self.id_column is not None and self.id_column not in schema.names:
            raise CurateError(
                f"{where}: id column {self.id_column!r} not found; columns are: "
                f"{', '.join(schema.names)}"
            )

    def uids(
        self, table: pa.Table, relpath: str, row_start: int, where: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Check one file's rows (columns, ids unique within them) and give their uids.

        Returns (uids in row order, the same uids in no particular order: sorted with an id
        column). The checks read the schema and the ids only, so the rows of several files
        can be checked one by one and then matched together (:meth:`match`).
        """
        self.check_columns(table.schema, where)
        if self.id_column is None:
            uids = position_uids(relpath, row_start, table.num_rows)
            return uids, uids
        uids = value_uids(table.column(self.id_column), self.id_column, where, row_start)
        all_uids = np.sort(uids)  # for the check here and the pool-wide one, once
        _check_unique(uids, all_uids, table.column(self.id_column), self.id_column, where,
                      row_start)  # fmt: skip
        return uids, all_uids

    def match(
        self, table: pa.Table, uids: np.ndarray, where: str
    ) -> tuple[pa.Table, dict, np.ndarray]:
        """Match rows that :meth:`uids` checked (one file's, or several files' of one schema
        concatenated): (matched table with ``uid`` and ``entry_ids``, stats, counts)."""
        be = resolve(self.backend)
        if be.name not in self.accepts:  # pragma: no cover - defensive
            raise CurateError(f"MatchStep does not accept backend {be.name}")
        n = table.num_rows
        col = text_column(table.schema, self.text_column, where)
        texts = table.column(col)
        if pa.types.is_null(texts.type):
            texts = texts.cast(pa.string())
        elif pa.types.is_dictionary(texts.type):
            texts = texts.cast(texts.type.value_type)  # matched as the strings it stands for
        row_offsets, ids = match_arrow(texts, self.metadata, be)
        counts = partition_counts(ids, len(self.metadata), be.xp)
        row_offsets = be.asnumpy(row_offsets)
        ids = be.asnumpy(ids)
        matched = np.diff(row_offsets) > 0
        kept_uids = uids
        if not self.keep_unmatched and not matched.all():
            # Unmatched rows own no ids: dropping them keeps the ids as they are and only
            # drops their offsets, so only the input columns need filtering.
            table = table.filter(pa.array(matched))
            kept_uids = uids[matched]
            row_offsets = np.append(row_offsets[:-1][matched], row_offsets[-1])
        list_type = pa.ListArray if ids.size < 2**31 else pa.LargeListArray
        offset_type = np.int32 if ids.size < 2**31 else np.int64
        entry_ids = list_type.from_arrays(pa.array(row_offsets.astype(offset_type)), pa.array(ids))
        out = table.append_column("uid", pa.array(kept_uids, pa.uint64())).append_column(
            "entry_ids", entry_ids
        )
        nulls = texts.null_count
        empty = int(pc.sum(pc.equal(pc.binary_length(texts), 0)).as_py() or 0)
        stats = {
            "pool_rows": n,
            "matched_rows": int(matched.sum()),
            "null_texts": int(nulls),
            "empty_texts": empty,
            "matches": int(ids.size),
            "text_column": col,  # (the default is chosen per file: a report shows which)
        }
        return out, stats, counts


def _check_unique(
    uids: np.ndarray, sorted_uids: np.ndarray, column, name: str, where: str, row_start: int
) -> None:
    # Within one table of one file's rows (a part, a file of a pack, or a table of a
    # streamed file), where it is cheap and fails before the rest of the match stage; the
    # pipeline checks across them afterwards (gpu_curate.unique).
    found = first_duplicate(uids, column, where, row_start, sorted_uids)
    if found is not None:
        raise CurateError(found.message(name))


def list_chunk_csr(chunk: pa.Array, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(row lengths, values) of one list chunk, honouring its slice offset and nulls."""
    if not (pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type)):
        raise CurateError(f"{where}: entry_ids must be a list of integers, got {chunk.type}")
    if not pa.types.is_integer(chunk.type.value_type):
        raise CurateError(f"{where}: entry_ids must be a list of integers, got {chunk.type}")
    if chunk.null_count:
        # A null list may own a non-empty child segment: go through flatten(), which
        # skips it, and count it as a row without entries.
        lengths = pc.list_value_length(chunk).fill_null(0).to_numpy().astype(np.int64)
        values = chunk.flatten()
    else:
        offs = chunk.offsets.to_numpy().astype(np.int64)
        lengths = np.diff(offs)
        values = chunk.values.slice(int(offs[0]), int(offs[-1] - offs[0]))
    if values.null_count:
        raise CurateError(f"{where}: entry_ids contains null ids")
    return lengths, values.to_numpy(zero_copy_only=False)


def csr_of(
    entry_ids: pa.ChunkedArray | pa.Array, where: str = "entry_ids"
) -> tuple[np.ndarray, np.ndarray]:
    """(row_offsets int64 from 0, values int32) of a list column, without Python loops."""
    chunks = entry_ids.chunks if isinstance(entry_ids, pa.ChunkedArray) else [entry_ids]
    parts = [list_chunk_csr(c, where) for c in chunks]
    lengths = [ln for ln, _ in parts]
    offsets = np.zeros(sum(ln.size for ln in lengths) + 1, np.int64)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
    values = np.concatenate([v for _, v in parts]) if parts else np.zeros(0, np.int32)
    return offsets, values.astype(np.int32, copy=False)


@dataclass(frozen=True)
class BalanceStep:
    """Keep a text iff U(seed, uid, e) < p[e] for one of its entries (:mod:`gpu_curate.balance`).

    Accepts the ``cpu`` and ``gpu`` backends (draws on NumPy or CuPy, bit-identical).
    """

    p: np.ndarray
    seed: int
    backend: str = "cpu"

    accepts = ("cpu", "gpu")

    def run(self, table: pa.Table):
        """Return (kept rows, stats dict, per-entry counts over the kept rows)."""
        mask, stats, kept_counts = self.decide(table)
        return table.filter(pa.array(mask)), stats, kept_counts

    def decide(self, table: pa.Table):
        """Return (keep mask, stats dict, per-entry counts over the kept rows)."""
        be = resolve(self.backend)
        xp = be.xp
        offsets, values = csr_of(table.column("entry_ids"))
        uids = table.column("uid").to_numpy()
        d_off, d_val, d_uid = xp.asarray(offsets), xp.asarray(values), xp.asarray(uids)
        d_p = xp.asarray(self.p)
        mask, units, kept_counts = bal.balance_partition(
            d_off, d_val, d_uid, d_p, self.seed, units=True
        )
        kept_counts = be.asnumpy(kept_counts)
        mask = be.asnumpy(mask)
        stats = {
            "rows": table.num_rows,
            "curated_rows": int(mask.sum()),
            "expected": units / bal.EXPECTED_UNITS_PER_ROW,
            "expected_units": units,  # (exact: sums over parts do not depend on the cut)
        }
        return mask, stats, np.asarray(kept_counts, dtype=np.int64)
