"""The recipe on Dask DataFrames, for notebooks: ``match``, ``entry_counts``, ``balance``.

These mirror the CLI on data already in a Dask DataFrame (pandas partitions on cpu, cuDF
partitions on gpu). They run the same per-partition steps as the pipeline
(:mod:`gpu_curate.steps`). uids come from ``id_column`` when given, else from the
DataFrame's index values (which ``dd.from_pandas`` keeps the same for any number of
partitions), so results do not depend on partitioning.

uids must be unique (they are the key of the balancing draws, :mod:`gpu_curate.uid`): the
result of :func:`match` carries a lazy check of its id values (or index values) over the
*whole* DataFrame, which runs when the result, or anything computed from it
(:func:`entry_counts`, :func:`balance`), is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from . import balance as bal
from .backend import check_name
from .counts import counts_table, partition_counts, sum_counts
from .errors import CurateError, NullIdError, counted, first_line
from .io import RESERVED_COLUMNS
from .io import text_column as _text_column
from .metadata import Metadata, MetadataLike
from .steps import BalanceStep, MatchStep, csr_of
from .surrogates import without_surrogates

if TYPE_CHECKING:
    import dask.dataframe as dd
    from dask.delayed import Delayed

__all__ = ["match", "entry_counts", "balance"]

# Without id_column, the index travels through MatchStep as this (temporary) id column, so
# its uids are computed once, from the index values, and checked within the partition.
_INDEX = "__gpu_curate_index__"
# The metadata a result was matched against (its fingerprint), carried in the DataFrame's
# attrs (pandas keeps them through filters, selections and repartitions), so that counts
# of other metadata are refused rather than applied to the wrong entries.
_METADATA_ATTR = "gpu_curate_metadata"


def _is_cudf(df) -> bool:
    return type(df).__module__.startswith("cudf")


def _to_arrow(df, columns: Sequence | None = None) -> pa.Table:
    """The ``columns`` (labels; default all) of a partition as Arrow, named by ``str``.

    The index is carried separately: steps see plain columns only.
    """
    labels = list(df.columns) if columns is None else list(columns)
    part = df[labels]
    try:
        if _is_cudf(df):
            table = part.to_arrow(preserve_index=False)
        else:
            try:
                table = pa.Table.from_pandas(part, preserve_index=False)
            except UnicodeEncodeError:
                # Lone surrogates in a column of Python strings, which no UTF-8 holds:
                # U+FFFD, as match_texts and the readers take them (an id's uid is the
                # replaced text's).
                try:
                    table = pa.Table.from_pandas(_surrogates_replaced(part), preserve_index=False)
                except UnicodeEncodeError as exc:  # (a column kind not replaced above)
                    raise CurateError(
                        f"a column holds text that is not valid Unicode ({exc.reason}): "
                        "replace its lone surrogates, or give it as object or string dtype"
                    ) from None
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        # (An object column mixing strings and other values, for one.)
        bad = next((c for c in labels if _arrow_fails(part[c])), labels[0])
        # (pyarrow's conversion error holds two messages: the first says what it met.)
        why = exc.args[0] if exc.args and isinstance(exc.args[0], str) else first_line(exc)
        raise CurateError(
            f"column {str(bad)!r} cannot be read as one Arrow type: {first_line(Exception(why))}"
        ) from None
    return table.rename_columns([str(c) for c in labels])


def _surrogates_replaced(part):
    """A pandas partition with each lone surrogate of its columns of Python strings
    (object, ``string[python]``, categorical) as U+FFFD."""
    part = part.copy()
    for i, dtype in enumerate(part.dtypes):
        if _holds_python_strings(dtype):
            # (A categorical one as values, not categories: "x\ud800" and "x\ufffd"
            # become one value.)
            values = _without_surrogates_series(part.iloc[:, i])
            part.isetitem(i, values.astype("category" if dtype == "category" else dtype))
    return part


def _holds_python_strings(dtype) -> bool:
    """Whether a pandas column of this dtype holds Python strings, which may hold lone
    surrogates (object, ``string[python]``, categorical)."""
    return (
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_object_dtype(dtype)
        or (isinstance(dtype, pd.StringDtype) and dtype.storage == "python")
    )


def _without_surrogates_series(series):
    """An object Series of ``series``' values, each lone surrogate as U+FFFD."""
    values = without_surrogates(series.astype(object).tolist())
    return pd.Series(values, index=series.index, dtype=object, name=series.name)


def _arrow_fails(column) -> bool:
    try:
        pa.Array.from_pandas(column)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return True
    return False


def _with_results(df, results: pa.Table, keep: np.ndarray | None):
    """``df`` with the columns of ``results`` (one row per row of ``df``) added, and only
    the rows of ``keep`` (all when None). A pandas partition keeps its columns' dtypes;
    the new columns are Arrow-backed (``uid`` uint64, ``entry_ids`` list<int32>)."""
    if _is_cudf(df):
        import cudf

        table = _to_arrow(df)
        for name in results.column_names:
            table = table.append_column(name, results.column(name))
        index = df.index
        if keep is not None:
            table, index = table.filter(pa.array(keep)), index[keep]
        out = cudf.DataFrame.from_arrow(table)
        # (Arrow names the columns str(label): the partition's own labels, as the meta has
        # them, come back.)
        out.columns = [*df.columns, *results.column_names]
        out.index = index
        return out
    # Positional (arrays, not Series): an index with repeated labels cannot misalign.
    out = df.assign(
        **{n: pd.arrays.ArrowExtensionArray(results.column(n)) for n in results.column_names}
    )
    return out if keep is None else out[keep]


def _index_arrow(df) -> pa.Array:
    if _is_cudf(df):
        return df.index.to_arrow()
    # (from_pandas, not via NumPy: a nullable Int64 index with a missing value stays
    # integers with a null, which the id check names, instead of becoming doubles.)
    try:
        index = pa.Array.from_pandas(df.index)
    except UnicodeEncodeError:  # (lone surrogates, as in the columns: U+FFFD)
        index = pa.array(without_surrogates(df.index.astype(object).tolist()), pa.string())
    if pa.types.is_dictionary(index.type):  # a CategoricalIndex: its values
        index = index.cast(index.type.value_type)
    return index


def _match_one(
    df,
    step: MatchStep,
    columns: list,
    keep_unmatched: bool,
    checked=None,
    divisions_end=None,
    partition_info=None,
):
    # ``columns``: the labels of the text (and id) column, which alone go to the step.
    # ``checked`` is the result of the pool-wide id check: this task runs after it.
    # ``divisions_end``: the frame's last division, where the index's uniqueness across
    # partitions rests on the divisions (a 1-tuple: the value may be None).
    where = "DataFrame partition"
    if partition_info is not None:
        where = f"{where} {partition_info['number']}"
        if divisions_end is not None and partition_info.get("division") is not None:
            _check_in_divisions(df.index, partition_info["division"], divisions_end[0], where)
    try:
        table = _to_arrow(df, columns)
    except CurateError as exc:
        raise CurateError(f"{where}: {exc}") from None
    from_index = step.id_column == _INDEX
    if from_index:
        table = table.append_column(_INDEX, _index_arrow(df))
    try:
        matched, _, _ = step.run(table, "", 0, where)
    except CurateError as exc:
        # The step speaks of a pool and its id column; here they are a DataFrame and,
        # without id_column, its index.
        msg = str(exc).replace(_UNIQUE_OVER_POOL, "ids must be unique over the DataFrame")
        if from_index:
            msg = (
                msg.replace(f"id column {_INDEX!r}", "the index")
                .replace("ids must be unique over the DataFrame", _INDEX_HINT)
                .replace("; use an integer or string column", "; use an integer or string "
                         "index, or give id_column")
            )  # fmt: skip
        if isinstance(exc, NullIdError) and exc.row < len(df):
            # (A row of the partition: its index label finds it in the frame.)
            label = df.index[exc.row]
            label = label.item() if isinstance(label, np.generic) else label  # (not np.int64(12))
            row = f"the first at row {exc.row}"
            msg = msg.replace(row, f"{row} of the partition (index label {label!r})")
        raise CurateError(msg) from None
    keep = None
    if not keep_unmatched:
        keep = np.diff(csr_of(matched.column("entry_ids"))[0]) > 0
    return _with_results(df, matched.select(["uid", "entry_ids"]), keep)


def _match_meta(meta_df, md: Metadata):
    out = meta_df.copy()
    if hasattr(out, "attrs"):  # (pandas; a cuDF DataFrame has none)
        out.attrs[_METADATA_ATTR] = md.fingerprint
    if _is_cudf(meta_df):
        import cudf

        out["uid"] = cudf.Series([], dtype="uint64")
        out["entry_ids"] = cudf.Series([], dtype=cudf.ListDtype("int32"))
        return out
    out["uid"] = pd.Series([], dtype=pd.ArrowDtype(pa.uint64()))
    out["entry_ids"] = pd.Series([], dtype=pd.ArrowDtype(pa.list_(pa.int32())))
    return out


def _index_partitions_disjoint(ddf) -> bool:
    """Whether known, strictly increasing divisions should put each index value in one
    partition, and the index's values can be ordered (:func:`_check_in_divisions` then
    checks that each partition keeps to them)."""
    if not ddf.known_divisions:
        return False
    index = ddf._meta.index
    if isinstance(index.dtype, pd.CategoricalDtype) and not index.dtype.ordered:
        return False
    divisions = list(ddf.divisions)
    return all(a < b for a, b in zip(divisions[:-1], divisions[1:], strict=True))


def _check_in_divisions(index, lower, last, where: str) -> None:
    """A :class:`CurateError` unless a partition's index values lie between its division's
    lower bound (``partition_info["division"]``, that of the partition Dask runs) and the
    frame's last division ``last``.

    Dask keeps the divisions through ``map_partitions`` even where the function changed
    the index (its own rule is that such a function clears them): ``reset_index(drop=True)``
    in each partition numbers each from 0, a new ``RangeIndex`` moves every partition past
    the end, and equal index values in two partitions would share their draws. These
    bounds hold however Dask regroups the partitions when it runs them (a selection such as
    ``.partitions[2]``, or Parquet files read together), which the next division does not:
    a partition's own upper bound is not known there.
    """
    if len(index) == 0:
        return
    first, end = index.min(), index.max()
    if pd.isna(first) or pd.isna(end):
        return  # (a null index value: the step names it)
    try:
        inside = bool(lower <= first and end <= last)
    except TypeError:  # (values that do not compare)
        inside = False
    if not inside:
        raise CurateError(
            f"{where}: its index values ({first!r} to {end!r}) are not within its division "
            f"and the frame's end ({lower!r} to {last!r}): a map_partitions that changed the "
            "index keeps the old divisions, so the index's uids cannot be checked unique; "
            "call .clear_divisions() first, or pass id_column="
        )


_UNIQUE_OVER_POOL = "ids must be unique over the pool"  # (gpu_curate.unique's wording)
_INDEX_HINT = (
    "uids come from the index without id_column, so it must be unique (pass id_column=, or "
    "give the DataFrame a unique index)"
)


def _duplicate_message(name: str | None, value, rows: int, n_values: int) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    more = f" ({n_values} duplicated values in all)" if n_values > 1 else ""
    if name is None:
        return (
            f"the DataFrame's index has duplicate value {shown} in {rows} rows{more}; {_INDEX_HINT}"
        )
    return (
        f"id column {name!r} has duplicate value {shown} in {rows} rows{more}; ids must be "
        "unique over the DataFrame"
    )


def _raise_on_duplicate(name: str | None, *parts) -> bool:
    """Reduce the partitions of ``value_counts()[counts > 1]``: raise on the smallest value."""
    parts = [p.to_pandas() if _is_cudf(p) else p for p in parts]
    parts = [p for p in parts if len(p)]
    if not parts:
        return True
    found = pd.concat(parts)
    try:
        value = found.index.min()
    except TypeError:  # values that do not compare (an object column of mixed types)
        value = found.index[0]
    raise CurateError(_duplicate_message(name, value, int(found[value]), len(found)))


def _unique_check(ddf, id_column: str | None) -> Delayed | None:
    """A lazy task that raises CurateError if ids (or index values) repeat across partitions.

    None where no such check is needed: one partition (MatchStep checks within a
    partition), or an index whose divisions keep each value in one partition (each
    partition checks that it keeps within its division and the frame's end:
    :func:`_check_in_divisions`).
    """
    import dask

    if ddf.npartitions == 1 or (id_column is None and _index_partitions_disjoint(ddf)):
        return None
    values = ddf[id_column] if id_column is not None else ddf.index.to_series()
    # (cuDF's strings are UTF-8, without lone surrogates; and its string dtype is object,
    # but its Series have no host tolist().)
    if not _is_cudf(values._meta) and _holds_python_strings(values.dtype):
        # (As the uids see them: "x\ud800" is "x\ufffd", and Arrow, which the shuffle
        # uses, refuses a lone surrogate.)
        meta = pd.Series([], dtype=object, name=values.name)
        values = values.map_partitions(_without_surrogates_series, meta=meta)
    counts = values.value_counts(sort=False)  # Dask's default split_out: a shuffle, not a gather
    repeated = counts[counts > 1]
    return dask.delayed(_raise_on_duplicate, pure=True)(id_column, *repeated.to_delayed())


def match(
    ddf: dd.DataFrame,
    metadata: MetadataLike,
    text_column: str | None = None,
    id_column: str | None = None,
    keep_unmatched: bool = False,
    backend: str = "cpu",
) -> dd.DataFrame:
    """Add ``uid`` and ``entry_ids`` (list<int32>) to a Dask DataFrame of texts (lazy).

    The uids must be unique over the whole DataFrame: they are the key
    of the balancing draws. The result carries a lazy check of the ``id_column`` values
    (without ``id_column``: of the index values) across all partitions, which runs when
    the result or anything derived from it (``.compute()``, ``.to_parquet()``,
    :func:`entry_counts`, :func:`balance`) is computed, before any partition is matched.
    So even ``.head()`` reads every id once. A repeated value raises :class:`CurateError`
    at that compute.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        The texts, one per row (pandas or cuDF partitions).
    metadata : Metadata, sequence of str, or path
        The metadata entries; entry id = position.
    text_column : str, optional
        The text column (default: the first of ``TEXT``, ``text``, ``caption``,
        ``alt_text``). Columns with integer labels may be named as ``0`` or ``"0"``.
    id_column : str, optional
        A column of unique integer or string ids; uids are its hashed values, by type: the
        integer 123 and the string "123" give different uids. (The CLI reads CSV/TSV
        columns as strings: to curate the same rows as ``gpu-curate curate --id-column``
        on a CSV, read it with ``dd.read_csv(..., dtype=str, keep_default_na=False)``:
        pandas would else read ``NA``, ``null`` and empty fields as missing. A TSV, which
        the CLI reads with no quoting, needs ``sep="\\t", quoting=csv.QUOTE_NONE`` too.)
        Without it, uids are the hashed index values (``dd.read_parquet`` gives each
        file's rows the index 0, 1, ..., which is not unique: pass ``id_column`` there).
    keep_unmatched : bool, default False
        Keep rows that match no entry (with an empty ``entry_ids``).
    backend : {"cpu", "gpu"}, default "cpu"
        Where the matching kernel runs.

    Returns
    -------
    dask.dataframe.DataFrame
        The rows (matched ones only, unless ``keep_unmatched``) with ``uid`` (uint64) and
        ``entry_ids`` added as Arrow-backed columns; the other columns and the index are
        kept as they are. Written with ``.to_parquet(path)``, it reads back with
        ``dd.read_parquet(path, dtype_backend="pyarrow")`` (pandas' default NumPy
        dtypes have no list type).

    Raises
    ------
    CurateError
        At once: no text column, or no such ``id_column``, or a column named ``uid`` or
        ``entry_ids``. When computed: a duplicate id (or index value), null ids, texts that
        are not strings.

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd
    >>> pdf = pd.DataFrame({"TEXT": ["a dog", "a cat", "nothing"], "id": [10, 11, 12]})
    >>> m = match(dd.from_pandas(pdf, npartitions=2), ["dog", "cat"], id_column="id")
    >>> m.compute()["entry_ids"].tolist()
    [[0], [1]]
    >>> twice = dd.from_pandas(pdf.assign(id=[10, 11, 10]), npartitions=2)
    >>> match(twice, ["dog", "cat"], id_column="id").compute()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gpu_curate.errors.CurateError: id column 'id' has duplicate value 10 in 2 rows; ...
    """
    _check_dask(ddf, "match")
    md = Metadata.coerce(metadata)
    check_name(backend)  # (fails now, not at compute; the GPU may be the workers' only)
    # Columns are named by str(label) for Arrow: an integer label (dd.read_csv(...,
    # header=None)) may be given as 0 or "0".
    label = {str(c): c for c in ddf.columns}
    names = list(label)
    clash = [c for c in RESERVED_COLUMNS if c in names]
    if clash:
        raise CurateError(
            f"the DataFrame has a column named {clash[0]!r}, which gpu-curate adds; rename it"
        )
    # Resolved here so that a missing column fails now, and the steps never guess.
    schema = pa.schema([pa.field(n, pa.null()) for n in names])
    requested = None if text_column is None else str(text_column)
    text = _text_column(schema, requested, "DataFrame", named_by="text_column=")
    id_name = None if id_column is None else str(id_column)
    if id_name is not None and id_name not in names:
        raise CurateError(f"id column {id_name!r} not found; columns are: {', '.join(names)}")
    for used in (text, id_name):
        if used is not None and (same := [c for c in ddf.columns if str(c) == used][1:]):
            raise CurateError(
                f"the DataFrame has {len(same) + 1} columns named {used!r} (labels are "
                "taken as text: 0 and '0' are one name): rename them"
            )
    columns = [label[text]] + ([label[id_name]] if id_name not in (None, text) else [])
    # Rows are filtered after the step (which keeps everything) so the index stays aligned.
    step = MatchStep(md, text, id_name if id_name is not None else _INDEX, True, backend)
    checked = _unique_check(ddf, None if id_name is None else label[id_name])
    trusted = ddf.npartitions > 1 and id_name is None and checked is None
    return ddf.map_partitions(
        _match_one,
        _shared(step, md.fingerprint, text, id_name, backend),
        columns,
        keep_unmatched,
        checked,
        (ddf.divisions[-1],) if trusted else None,
        meta=_match_meta(ddf._meta, md),
    )


def _shared(step, *key) -> Delayed:
    """``step`` as one Dask key that every task reads, not a copy in each task's arguments:
    a MatchStep carries its metadata (~4 MB for 375k entries), which a distributed
    scheduler would otherwise ship and unpickle once a partition. Named from ``key`` (its
    metadata's fingerprint and settings) so that Dask need not hash its contents."""
    import dask
    from dask.base import tokenize

    name = f"gpu-curate-{type(step).__name__}-{tokenize(*key)}"
    return dask.delayed(step, name=name, traverse=False)


def _matched_ids(df, columns: list[str], n_entries: int, step: str, given: str):
    """(``columns`` of a matched partition as Arrow, its entry ids), checked to be the
    result of match and to fit ``n_entries`` (the entries of the ``given`` metadata or
    counts, which ``step`` is called with)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CurateError(f"{step} needs the result of match (no {missing[0]} column)")
    table = _to_arrow(df, columns)
    _, values = csr_of(table.column("entry_ids"))
    if values.size and int(values.max()) >= n_entries:
        raise CurateError(
            f"matched entry id {int(values.max())} is past the {n_entries} entries of the "
            f"{given} given: pass the {given if given == 'metadata' else 'counts of the metadata'}"
            " that match used"
        )
    return table, values


def _partition_counts(df, n_entries: int):
    _, values = _matched_ids(df, ["entry_ids"], n_entries, "entry_counts", "metadata")
    return partition_counts(values, n_entries)


def entry_counts(matched: dd.DataFrame, metadata: MetadataLike) -> pd.DataFrame:
    """Count each entry over a matched Dask DataFrame (computes it).

    Parameters
    ----------
    matched : dask.dataframe.DataFrame
        The result of :func:`match` (its id check runs here too).
    metadata : Metadata, sequence of str, or path
        The metadata ``matched`` was matched against.

    Returns
    -------
    pandas.DataFrame
        ``entry_id``, ``entry``, ``count``: every entry, in entry id order.

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd
    >>> pdf = pd.DataFrame({"TEXT": ["a dog", "a cat", "a dog and a cat"]})
    >>> m = match(dd.from_pandas(pdf, npartitions=2), ["dog", "cat"])
    >>> entry_counts(m, ["dog", "cat"])["count"].tolist()
    [2, 2]
    """
    import dask

    _check_dask(matched, "entry_counts")
    md = Metadata.coerce(metadata)
    _check_same_metadata(_matched_against(matched), md.fingerprint, "the metadata given")
    per = [dask.delayed(_partition_counts)(p, len(md)) for p in matched.to_delayed()]
    (total,) = dask.compute(sum_counts(per, len(md)))
    counts = counts_table(md, total).to_pandas()
    counts.attrs[_METADATA_ATTR] = md.fingerprint
    return counts


def _check_dask(ddf, name: str) -> None:
    if not hasattr(ddf, "map_partitions"):
        raise TypeError(
            f"{name} takes a Dask DataFrame, got {type(ddf).__module__}.{type(ddf).__name__} "
            "(dd.from_pandas(df, npartitions=N) makes one)"
        )
    if getattr(ddf, "ndim", 2) != 2:  # (a Dask Series)
        raise TypeError(
            f"{name} takes a Dask DataFrame, got a Dask {type(ddf).__name__} "
            "(series.to_frame() makes one)"
        )


def _integers(values: np.ndarray) -> np.ndarray | None:
    """``values`` as int64 if they are integers (or floats without a fraction, as a
    ``count`` column through a merge or a CSV may be), else None."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if (
        values.dtype.kind == "f"
        and np.all(np.abs(values) < 2.0**63)  # (also False for NaN and inf)
        and np.all(values % 1 == 0)
    ):
        return values.astype(np.int64)
    return None


def _column_integers(counts: pd.DataFrame, name: str) -> np.ndarray:
    column = counts[name]
    values = None
    if pd.api.types.is_numeric_dtype(column.dtype) and not column.isna().any():
        values = _integers(np.asarray(column.to_numpy()))
    if values is None:
        if nulls := int(column.isna().sum()):
            raise CurateError(
                f"counts: {name!r} must hold integers, and holds {counted(nulls, 'null')}"
            )
        raise CurateError(f"counts: {name!r} must hold integers, got {column.dtype}")
    return values


def _counts_array(counts) -> np.ndarray:
    """The entry counts given to :func:`balance` as an int64 array in entry-id order."""
    if isinstance(counts, Metadata | str | bytes | dict) or hasattr(counts, "dask"):
        raise TypeError(
            f"balance: counts must be the DataFrame entry_counts(matched, metadata) returns, "
            f"or an array of ints; got {type(counts).__name__}"
        )
    if not hasattr(counts, "columns"):
        given = np.asarray(counts)
        c = _integers(given)
        if c is None or c.ndim != 1:
            raise CurateError(
                f"counts must be a 1-D array of integers, got {given.dtype} {given.shape}"
            )
        return c
    # Placed by entry_id, so a sorted or filtered copy of the table cannot shift them.
    ids = _column_integers(counts, "entry_id") if "entry_id" in counts.columns else None
    if "count" not in counts.columns:
        raise CurateError("counts: no 'count' column (give the table entry_counts returns)")
    values = _column_integers(counts, "count")
    if ids is None:
        ids = np.arange(len(values))
    if not np.array_equal(np.sort(ids), np.arange(len(ids))):
        raise CurateError(
            "counts: entry_id must hold every id 0..n-1 once (the table entry_counts "
            "returns, whole)"
        )
    c = np.empty(len(values), np.int64)
    c[ids] = values
    return c


def _matched_against(ddf) -> str | None:
    """The fingerprint of the metadata ``ddf`` was matched against, where it is known."""
    return getattr(ddf._meta, "attrs", {}).get(_METADATA_ATTR)


def _check_same_metadata(matched: str | None, other: str | None, what: str) -> None:
    if matched is not None and other is not None and matched != other:
        raise CurateError(
            f"the DataFrame was matched against other metadata (sha256 {matched[:12]}) than "
            f"{what} (sha256 {other[:12]}): pass the metadata that match used"
        )


def _balance_one(df, step: BalanceStep):
    table, _ = _matched_ids(df, ["entry_ids", "uid"], step.p.shape[0], "balance", "counts")
    mask, _, _ = step.decide(table)
    return _with_results(df, pa.table({}), mask)


def balance(
    matched: dd.DataFrame,
    counts: pd.DataFrame | np.ndarray,
    t: float,
    seed: int = 0,
    backend: str = "cpu",
) -> dd.DataFrame:
    """Keep the rows of a matched Dask DataFrame that pass the balancing draw (lazy).

    Parameters
    ----------
    matched : dask.dataframe.DataFrame
        The result of :func:`match` (its id check runs when this result is computed).
    counts : pandas.DataFrame or ndarray of int
        The pool's entry counts: the DataFrame from :func:`entry_counts` or an int array.
    t : float
        The balancing threshold: ``p[e] = t / max(count[e], t)``.
    seed : int, default 0
        Seed of the counter-based draws.
    backend : {"cpu", "gpu"}, default "cpu"
        Where the draws run (bit-identical results).

    Returns
    -------
    dask.dataframe.DataFrame
        The kept rows, same columns and index.

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd
    >>> pdf = pd.DataFrame({"TEXT": ["a dog", "a cat", "nothing"]})
    >>> m = match(dd.from_pandas(pdf, npartitions=2), ["dog", "cat"])
    >>> balance(m, entry_counts(m, ["dog", "cat"]), t=1).compute()["TEXT"].tolist()
    ['a dog', 'a cat']
    """
    from .balance import check_seed, check_t

    _check_dask(matched, "balance")
    t, seed = check_t(t), check_seed(seed)
    check_name(backend)  # (now, not when computed)
    c = _counts_array(counts)
    if hasattr(counts, "attrs"):
        _check_same_metadata(
            _matched_against(matched), counts.attrs.get(_METADATA_ATTR), "the counts given"
        )
    try:
        p = bal.entry_probabilities(c, t)
    except ValueError as exc:  # (negative counts)
        raise CurateError(f"counts: {exc}") from None
    step = BalanceStep(p, seed, backend)
    shared = _shared(step, p, seed, backend)  # (p: 8 bytes an entry, hashed quickly)
    return matched.map_partitions(_balance_one, shared, meta=matched._meta)
