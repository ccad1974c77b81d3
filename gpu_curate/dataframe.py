"""The recipe on Dask DataFrames, for notebooks: ``match``, ``entry_counts``, ``balance``.

These mirror the CLI on data already in a Dask DataFrame (pandas partitions on cpu, cuDF
partitions on gpu). They run the same per-partition steps as the pipeline
(:mod:`gpu_curate.steps`). uids come from ``id_column`` when given, else from the
DataFrame's index values (which ``dd.from_pandas`` keeps the same for any number of
partitions), so results do not depend on partitioning.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from . import balance as bal
from .counts import counts_table, partition_counts, sum_counts
from .metadata import Metadata
from .steps import BalanceStep, MatchStep, csr_of
from .uid import value_uids

__all__ = ["match", "entry_counts", "balance"]


def _is_cudf(df) -> bool:
    return type(df).__module__.startswith("cudf")


def _to_arrow(df) -> pa.Table:
    # The index is carried separately: steps see plain columns only.
    if _is_cudf(df):
        return df.to_arrow(preserve_index=False)
    return pa.Table.from_pandas(df, preserve_index=False)


def _from_arrow(table: pa.Table, template, index):
    if _is_cudf(template):
        import cudf

        out = cudf.DataFrame.from_arrow(table)
    else:
        out = table.to_pandas(types_mapper=pd.ArrowDtype)
    out.index = index
    return out


def _match_one(df, step: MatchStep, keep_unmatched: bool):
    table = _to_arrow(df)
    matched, _, _ = step.run(table, "", 0, "DataFrame partition")
    if step.id_column is None:
        index = df.index.to_arrow() if _is_cudf(df) else pa.array(np.asarray(df.index))
        uids = pa.array(value_uids(index, "index"), pa.uint64())
        matched = matched.set_column(matched.schema.get_field_index("uid"), "uid", uids)
    index = df.index
    if not keep_unmatched:
        keep = np.diff(csr_of(matched.column("entry_ids"))[0]) > 0
        matched = matched.filter(pa.array(keep))
        index = index[keep]
    return _from_arrow(matched, df, index)


def _match_meta(meta_df):
    out = meta_df.copy()
    if _is_cudf(meta_df):
        import cudf

        out["uid"] = cudf.Series([], dtype="uint64")
        out["entry_ids"] = cudf.Series([], dtype=cudf.ListDtype("int32"))
        return out
    out["uid"] = pd.Series([], dtype=pd.ArrowDtype(pa.uint64()))
    out["entry_ids"] = pd.Series([], dtype=pd.ArrowDtype(pa.list_(pa.int32())))
    return out


def match(
    ddf,
    metadata: Metadata | Sequence[str],
    text_column: str | None = None,
    id_column: str | None = None,
    keep_unmatched: bool = False,
    backend: str = "cpu",
):
    """Add ``uid`` and ``entry_ids`` (list<int32>) to a Dask DataFrame of texts (lazy).

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd
    >>> pdf = pd.DataFrame({"TEXT": ["a dog", "a cat", "nothing"]})
    >>> m = match(dd.from_pandas(pdf, npartitions=2), ["dog", "cat"])
    >>> m.compute()["entry_ids"].tolist()
    [[0], [1]]
    """
    md = Metadata.coerce(metadata)
    # Rows are filtered after uids are set from the index, so the step keeps everything.
    step = MatchStep(md, text_column, id_column, True, backend)
    return ddf.map_partitions(_match_one, step, keep_unmatched, meta=_match_meta(ddf._meta))


def _partition_counts(df, n_entries: int):
    _, values = csr_of(_to_arrow(df[["entry_ids"]]).column("entry_ids"))
    return partition_counts(values, n_entries)


def entry_counts(matched, metadata: Metadata | Sequence[str]) -> pd.DataFrame:
    """Count each entry over a matched Dask DataFrame: ``entry_id``, ``entry``, ``count``.

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd
    >>> pdf = pd.DataFrame({"TEXT": ["a dog", "a cat", "a dog and a cat"]})
    >>> m = match(dd.from_pandas(pdf, npartitions=2), ["dog", "cat"])
    >>> entry_counts(m, ["dog", "cat"])["count"].tolist()
    [2, 2]
    """
    import dask

    md = Metadata.coerce(metadata)
    per = [dask.delayed(_partition_counts)(p, len(md)) for p in matched.to_delayed()]
    (total,) = dask.compute(sum_counts(per, len(md)))
    return counts_table(md, total).to_pandas()


def _balance_one(df, step: BalanceStep):
    table = _to_arrow(df)
    mask, _, _ = step.decide(table)
    return _from_arrow(table.filter(pa.array(mask)), df, df.index[mask])


def balance(matched, counts, t: float, seed: int = 0, backend: str = "cpu"):
    """Keep the rows of a matched Dask DataFrame that pass the balancing draw (lazy).

    ``counts`` is an int array of pool entry counts or the DataFrame from
    :func:`entry_counts`.

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd
    >>> pdf = pd.DataFrame({"TEXT": ["a dog", "a cat", "nothing"]})
    >>> m = match(dd.from_pandas(pdf, npartitions=2), ["dog", "cat"])
    >>> balance(m, entry_counts(m, ["dog", "cat"]), t=1).compute()["TEXT"].tolist()
    ['a dog', 'a cat']
    """
    c = counts["count"].to_numpy() if hasattr(counts, "columns") else np.asarray(counts)
    step = BalanceStep(bal.entry_probabilities(c.astype(np.int64), t), int(seed), backend)
    return matched.map_partitions(_balance_one, step, meta=matched._meta)
