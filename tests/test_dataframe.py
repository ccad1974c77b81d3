"""The Dask DataFrame API (``gpu_curate.dataframe``): results, and uids unique over the frame.

The expectations are computed here: matches with conftest's literal ``reference_match``
(DESIGN.md section 2), counts by counting them, the kept rows with the documented building
blocks ``value_uids`` and ``keep_mask`` (DESIGN.md section 3).
"""

from __future__ import annotations

import pickle

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LAION_PARQUET, read_laion_texts, reference_match, shared_data

from gpu_curate import dataframe as gdf
from gpu_curate.balance import keep_mask
from gpu_curate.errors import ArgumentError, CurateError, NullIdError
from gpu_curate.uid import value_uids

ENTRIES = ["dog", "cat", "photo", "new york", "red", "white", "black", "the", "of", "and",
           "with", "for", "in", "on", "a", "blue", "green", "shirt", "women", "men"]  # fmt: skip
T = 5
SEED = 3


@pytest.fixture(autouse=True)
def _sync_scheduler():
    # One thread: small graphs, and the other tests' CPU left alone.
    with dask.config.set(scheduler="sync"):
        yield


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return read_laion_texts(shared_data(LAION_PARQUET))[:400]


@pytest.fixture(scope="module")
def pdf(texts) -> pd.DataFrame:
    return pd.DataFrame({"TEXT": texts, "id": [f"row-{i}" for i in range(len(texts))]})


def partition_ids(ddf: dd.DataFrame, column: str | None) -> list[list]:
    """The id values (or index values) of each partition."""
    parts = [ddf.partitions[i].compute() for i in range(ddf.npartitions)]
    return [(p[column] if column else p.index).tolist() for p in parts]


def with_repeat(pdf: pd.DataFrame, npartitions: int) -> dd.DataFrame:
    """pdf's rows with the last row's id set to the first's: in two different partitions."""
    ids = pdf["id"].tolist()
    ids[-1] = ids[0]
    ddf = dd.from_pandas(pdf.assign(id=ids), npartitions=npartitions)
    parts = partition_ids(ddf, "id")
    # What the old, per-partition check could not see: each partition is unique.
    assert all(len(set(p)) == len(p) for p in parts)
    assert ids[0] in parts[0] and ids[0] in parts[-1]
    return ddf


# ----------------------------------------------------------------------------- duplicates


def _compute_match(m, _entries):
    return m.compute()


def _compute_counts(m, entries):
    return gdf.entry_counts(m, entries)


def _compute_balance(m, entries):
    return gdf.balance(m, np.full(len(entries), 10), t=T, seed=SEED).compute()


def _compute_head(m, _entries):
    return m.head(3)


CONSUMERS = {
    "compute": _compute_match,
    "entry_counts": _compute_counts,
    "balance": _compute_balance,
    "head": _compute_head,
}


@pytest.mark.parametrize("consumer", list(CONSUMERS))
def test_duplicate_id_in_two_partitions_raises(consumer, pdf):
    ddf = with_repeat(pdf, npartitions=4)
    matched = gdf.match(ddf, ENTRIES, id_column="id")  # lazy: nothing checked yet
    with pytest.raises(CurateError) as info:
        CONSUMERS[consumer](matched, ENTRIES)
    message = str(info.value)
    assert "\n" not in message
    assert "id column 'id'" in message and "'row-0'" in message and "2 rows" in message


def test_duplicate_id_under_distributed(pdf):
    # The error comes back from a worker as the same one-line CurateError.
    import logging

    from distributed import Client, LocalCluster

    ddf = with_repeat(pdf, npartitions=3)
    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address=":0",
        silence_logs=logging.CRITICAL,
    )
    want = r"^id column 'id' has duplicate value 'row-0' in 2 rows"
    with cluster, Client(cluster) as client, dask.config.set(scheduler=None):
        assert dask.base.get_scheduler() == client.get
        with pytest.raises(CurateError, match=want):
            gdf.entry_counts(gdf.match(ddf, ENTRIES, id_column="id"), ENTRIES)


def test_several_duplicates_report_the_smallest_and_the_total(pdf):
    ids = pdf["id"].tolist()
    ids[-1], ids[-2], ids[150] = ids[7], ids[3], ids[3]  # row-3 three times, row-7 twice
    ddf = dd.from_pandas(pdf.assign(id=ids), npartitions=5)
    assert all(len(set(p)) == len(p) for p in partition_ids(ddf, "id"))
    want = r"value 'row-3' in 3 rows \(2 duplicated values in all\)"
    with pytest.raises(CurateError, match=want):
        gdf.match(ddf, ENTRIES, id_column="id").compute()


def test_duplicate_id_within_a_partition_still_raises(pdf):
    ids = pdf["id"].tolist()
    ids[1] = ids[0]
    ddf = dd.from_pandas(pdf.assign(id=ids), npartitions=1)
    with pytest.raises(CurateError, match=r"id column 'id' has duplicate value 'row-0'"):
        gdf.match(ddf, ENTRIES, id_column="id").compute()


def test_duplicate_index_within_a_partition_raises(pdf):
    # Sorted divisions keep a value in one partition: the per-partition check finds it.
    ddf = dd.from_pandas(pdf.set_index(pd.Index([0, *range(len(pdf) - 1)])), npartitions=3)
    assert ddf.known_divisions
    with pytest.raises(CurateError, match=r"^the index has duplicate value 0: ") as info:
        gdf.match(ddf, ENTRIES).compute()
    assert "__" not in str(info.value)  # no internal column name in the message
    assert str(info.value).endswith("pass id_column=, or give the DataFrame a unique index)")
    with pytest.raises(CurateError, match=r"ids must be unique over the DataFrame$"):
        gdf.match(
            dd.from_pandas(pdf.assign(id=1), npartitions=1), ENTRIES, id_column="id"
        ).compute()


def test_duplicate_index_across_files_raises(pdf, tmp_path):
    # Without id_column the uids come from the index, and dd.read_parquet numbers each
    # file's rows from 0: the same uids in every file.
    for i, half in enumerate((pdf.iloc[:200], pdf.iloc[200:])):
        pq.write_table(pa.Table.from_pandas(half, preserve_index=False), tmp_path / f"{i}.parquet")
    ddf = dd.read_parquet(str(tmp_path))
    parts = partition_ids(ddf, None)
    assert len(parts) == 2 and parts[0][:3] == parts[1][:3] == [0, 1, 2]
    want = r"^the DataFrame's index has duplicate value 0 in 2 rows"
    with pytest.raises(CurateError, match=want):
        gdf.entry_counts(gdf.match(ddf, ENTRIES), ENTRIES)
    # With the id column the same files are fine.
    counts = gdf.entry_counts(gdf.match(ddf, ENTRIES, id_column="id"), ENTRIES)
    want = np.zeros(len(ENTRIES), np.int64)
    for text in pdf["TEXT"]:
        want[reference_match(text, ENTRIES)] += 1
    assert counts["count"].tolist() == want.tolist()


def test_duplicate_index_unsorted_partitions_raises(pdf):
    index = list(range(len(pdf)))
    index[-1] = 0
    ddf = dd.from_pandas(pdf.set_index(pd.Index(index)), npartitions=3, sort=False)
    assert not ddf.known_divisions
    with pytest.raises(CurateError, match=r"index has duplicate value 0 in 2 rows"):
        gdf.match(ddf, ENTRIES).compute()


@pytest.mark.parametrize(
    "index, as_values",
    [
        (pd.array(range(400), dtype="Int64"), list(range(400))),
        (pd.CategoricalIndex([f"k{i}" for i in range(400)]), [f"k{i}" for i in range(400)]),
    ],
    ids=["nullable Int64", "categorical"],
)
def test_index_types_give_the_uids_of_their_values(pdf, index, as_values):
    ddf = dd.from_pandas(pdf.set_index(pd.Index(index)), npartitions=3, sort=False)
    got = gdf.match(ddf, ENTRIES, keep_unmatched=True).compute()
    assert got["uid"].tolist() == value_uids(pa.array(as_values)).tolist()


def test_null_in_a_nullable_index_is_named(pdf):
    index = pd.array([*range(399), None], dtype="Int64")
    ddf = dd.from_pandas(pdf.set_index(pd.Index(index)), npartitions=2, sort=False)
    with pytest.raises(CurateError, match=r"the index has 1 null value, the first at row 199"):
        gdf.match(ddf, ENTRIES).compute()


def test_input_columns_keep_their_dtypes_as_the_meta_says(pdf, tmp_path):
    df = pdf.iloc[:40].assign(
        n=range(40),
        f=[np.nan if i % 7 == 0 else i / 2 for i in range(40)],
        cat=pd.Categorical(["a", "b"] * 20),
    )
    ddf = dd.from_pandas(df, npartitions=3)
    m = gdf.match(ddf, ENTRIES)
    got = m.compute()
    assert got.dtypes.to_dict() == m.dtypes.to_dict()
    assert got.dtypes["cat"] == df.dtypes["cat"] and got.dtypes["f"] == np.float64
    kept = np.array([bool(reference_match(t, ENTRIES)) for t in df["TEXT"]])
    # (Compared with the frame as Dask holds it: Dask may store strings as string[pyarrow].)
    pd.testing.assert_frame_equal(got[df.columns], ddf.compute()[kept])  # NaN stays NaN
    b = gdf.balance(m, gdf.entry_counts(m, ENTRIES), t=T, seed=SEED)
    assert b.compute().dtypes.to_dict() == b.dtypes.to_dict() == m.dtypes.to_dict()
    # Written and read back as the match docstring says.
    m.to_parquet(tmp_path / "m")
    back = dd.read_parquet(tmp_path / "m", dtype_backend="pyarrow").compute()
    assert back["entry_ids"].tolist() == got["entry_ids"].tolist()


def test_integer_column_labels(pdf):
    df = pd.DataFrame({0: pdf["TEXT"].iloc[:30], 1: pdf["id"].iloc[:30]})
    ddf = dd.from_pandas(df, npartitions=2)
    for text, id_ in ((0, 1), ("0", "1")):
        got = gdf.match(ddf, ENTRIES, text_column=text, id_column=id_).compute()
        want = [reference_match(t, ENTRIES) for t in df[0]]
        assert got["entry_ids"].tolist() == [w for w in want if w]
        assert got["uid"].tolist() == value_uids(pa.array(got[1].tolist())).tolist()
        assert list(got.columns) == [0, 1, "uid", "entry_ids"]


def test_texts_that_are_not_strings_and_unknown_backends_are_clear_errors(pdf):
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(pd.DataFrame({"TEXT": ["a dog", 2, "x"]}), npartitions=1)
        with pytest.raises(CurateError, match=r"column 'TEXT' cannot be read as one Arrow type"):
            gdf.match(ddf, ENTRIES).compute()
    with pytest.raises(CurateError, match=r"unknown backend 'tpu'"):
        gdf.match(dd.from_pandas(pdf, npartitions=1), ENTRIES, backend="tpu")
    # The GPU is the workers': a client without one builds a gpu graph.
    gdf.match(dd.from_pandas(pdf, npartitions=1), ENTRIES, backend="gpu")


def test_missing_columns_fail_at_once(pdf):
    ddf = dd.from_pandas(pdf, npartitions=2)
    with pytest.raises(CurateError, match=r"id column 'nope' not found; columns are: TEXT, id"):
        gdf.match(ddf, ENTRIES, id_column="nope")
    with pytest.raises(CurateError, match=r"text column 'nope' not found"):
        gdf.match(ddf, ENTRIES, text_column="nope")
    with pytest.raises(CurateError, match=r"column named 'uid'"):
        gdf.match(ddf.assign(uid=1), ENTRIES)
    # The API's argument is named, not the command line's flag.
    with pytest.raises(CurateError, match=r"no text column .*; name one with text_column=$"):
        gdf.match(ddf.rename(columns={"TEXT": "desc"}), ENTRIES)


def test_index_uids_computed_once(pdf, monkeypatch):
    # Without id_column the uids are the index's: no position uids computed and dropped.
    import gpu_curate.steps as steps_mod

    def no_position_uids(*args, **kwargs):
        raise AssertionError("position uids computed for a DataFrame partition")

    monkeypatch.setattr(steps_mod, "position_uids", no_position_uids)
    got = gdf.match(dd.from_pandas(pdf, npartitions=3), ENTRIES).compute()
    assert got["uid"].tolist() == value_uids(pa.array(got.index.to_numpy())).tolist()


# ----------------------------------------------------------------------------- results


@pytest.fixture(scope="module")
def reference(pdf):
    """(matches, uids by id, uids by index, counts, p) computed without the DataFrame API."""
    matches = [reference_match(text, ENTRIES) for text in pdf["TEXT"]]
    counts = np.zeros(len(ENTRIES), np.int64)
    for m in matches:
        counts[m] += 1
    p = T / np.maximum(counts.astype(np.float64), T)
    by_id = value_uids(pa.array(pdf["id"].tolist()), "id")
    by_index = value_uids(pa.array(np.arange(len(pdf))), "index")
    return matches, by_id, by_index, counts, p


def direct_kept(matches, uids, p) -> np.ndarray:
    offsets = np.zeros(len(matches) + 1, np.int64)
    offsets[1:] = np.cumsum([len(m) for m in matches])
    values = np.array([e for m in matches for e in m], np.int32)
    return keep_mask(offsets, values, uids, p, SEED)


@pytest.mark.parametrize("id_column", [None, "id"])
@pytest.mark.parametrize("npartitions", [1, 3, 7])
def test_results_equal_reference(id_column, npartitions, pdf, reference):
    matches, by_id, by_index, counts, p = reference
    uids = by_id if id_column else by_index
    matched_rows = [i for i, m in enumerate(matches) if m]
    assert 0 < len(matched_rows) < len(pdf)  # some texts match nothing

    ddf = dd.from_pandas(pdf, npartitions=npartitions)
    matched = gdf.match(ddf, ENTRIES, id_column=id_column)
    got = matched.compute()
    assert got.index.tolist() == matched_rows
    assert got["id"].tolist() == pdf["id"].iloc[matched_rows].tolist()
    assert got["entry_ids"].tolist() == [matches[i] for i in matched_rows]
    assert got["uid"].to_numpy(np.uint64).tolist() == uids[matched_rows].tolist()

    table = gdf.entry_counts(matched, ENTRIES)
    assert table["entry"].tolist() == ENTRIES
    assert table["count"].tolist() == counts.tolist()

    kept = gdf.balance(matched, table, t=T, seed=SEED).compute()
    want = np.flatnonzero(direct_kept(matches, uids, p))
    assert 0 < len(want) < len(matched_rows)  # balancing drops some rows, keeps some
    assert kept.index.tolist() == want.tolist()
    assert kept["TEXT"].tolist() == pdf["TEXT"].iloc[want].tolist()


def test_keep_unmatched_keeps_every_row(pdf, reference):
    matches, by_id, *_ = reference
    got = gdf.match(dd.from_pandas(pdf, npartitions=3), ENTRIES, id_column="id",
                    keep_unmatched=True).compute()  # fmt: skip
    assert got["entry_ids"].tolist() == matches
    assert got["uid"].to_numpy(np.uint64).tolist() == by_id.tolist()


def test_balance_places_counts_by_entry_id():
    pdf = pd.DataFrame({"TEXT": ["a dog"] * 50 + ["a cat"] * 2 + ["a bird"] * 3})
    entries = ["dog", "cat", "bird"]
    m = gdf.match(dd.from_pandas(pdf, npartitions=2), entries)
    counts = gdf.entry_counts(m, entries)
    assert counts["count"].tolist() == [50, 2, 3]
    kept = gdf.balance(m, counts, t=3, seed=3).compute()
    shuffled = gdf.balance(m, counts.sort_values("count"), t=3, seed=3).compute()
    assert kept.index.tolist() == shuffled.index.tolist()
    # cat and bird have count <= t: all 5 kept; 50 dogs at p = 3/50 keep a few.
    assert (kept["TEXT"] != "a dog").sum() == 5 and (kept["TEXT"] == "a dog").sum() < 15
    with pytest.raises(CurateError, match="entry_id"):
        gdf.balance(m, counts.iloc[1:], t=2)
    with pytest.raises(CurateError, match="seed"):
        gdf.balance(m, counts, t=2, seed=1.7)
    with pytest.raises(CurateError, match="t must be"):
        gdf.balance(m, counts, t=0)


def test_counts_and_balance_name_a_wrong_input():
    pdf = pd.DataFrame({"TEXT": ["a dog", "a cat"]})
    ddf = dd.from_pandas(pdf, npartitions=1)
    m = gdf.match(ddf, ["dog", "cat"])
    with pytest.raises(CurateError, match="metadata that match used"):
        gdf.entry_counts(m, ["dog"])
    with pytest.raises(CurateError, match="result of match"):
        gdf.balance(ddf, np.array([1, 1]), t=1).compute()


def test_counts_of_other_metadata_are_refused(tmp_path):
    # Counts are placed by entry id: counts of other metadata would balance each text by
    # another entry's count, without a word.
    pdf = pd.DataFrame({"TEXT": ["a dog", "a cat", "a dog and a cat"]})
    ddf = dd.from_pandas(pdf, npartitions=2)
    m = gdf.match(ddf, ["dog", "cat"])
    other = gdf.match(ddf, ["cat", "dog"])  # same length, other entries
    with pytest.raises(CurateError, match="matched against other metadata .* than the metadata"):
        gdf.entry_counts(m, ["cat", "dog"])
    other_counts = gdf.entry_counts(other, ["cat", "dog"])
    with pytest.raises(CurateError, match="matched against other metadata .* than the counts"):
        gdf.balance(m, other_counts, t=1)
    # Kept through what a notebook does between the steps.
    with pytest.raises(CurateError, match="than the counts"):
        gdf.balance(m[m["TEXT"] != "x"].repartition(npartitions=1), other_counts, t=1)
    # Counts as a bare array have no metadata: an id past their end is still refused.
    with pytest.raises(CurateError, match="entry id 1 is past the 1 entries of the counts"):
        gdf.balance(m, np.array([5]), t=1).compute()
    kept = gdf.balance(m, gdf.entry_counts(m, ["dog", "cat"]), t=5).compute()
    assert kept["TEXT"].tolist() == pdf["TEXT"].tolist()


def test_wrong_types_and_a_metadata_path():
    pdf = pd.DataFrame({"TEXT": ["a dog", "a cat"]})
    with pytest.raises(TypeError, match=r"match takes a Dask DataFrame, got pandas.*from_pandas"):
        gdf.match(pdf, ["dog"])
    ddf = dd.from_pandas(pdf, npartitions=1)
    m = gdf.match(ddf, ["dog", "cat"])
    from gpu_curate.metadata import Metadata

    with pytest.raises(TypeError, match="counts must be the DataFrame entry_counts"):
        gdf.balance(m, Metadata(["dog", "cat"]), t=1)


def test_metadata_given_by_its_path(tmp_path):
    import json

    from gpu_curate.errors import MetadataError

    path = tmp_path / "md.json"
    path.write_text(json.dumps(["dog", "cat"]))
    ddf = dd.from_pandas(pd.DataFrame({"TEXT": ["a dog", "a cat"]}), npartitions=1)
    by_path = gdf.match(ddf, str(path)).compute()["entry_ids"].tolist()
    assert by_path == gdf.match(ddf, path).compute()["entry_ids"].tolist() == [[0], [1]]
    assert gdf.entry_counts(gdf.match(ddf, path), path)["count"].tolist() == [1, 1]
    pq.write_table(pa.table({"x": [1]}), tmp_path / "md.parquet")
    with pytest.raises(MetadataError, match="not UTF-8 text .*; metadata is a JSON list"):
        gdf.match(ddf, tmp_path / "md.parquet")


def test_an_index_that_left_its_divisions_is_refused():
    # map_partitions keeps the divisions even where it renumbers each partition's index:
    # the index check trusted them, and 8 rows of 2 uids were matched without a word.
    ddf = dd.from_pandas(pd.DataFrame({"TEXT": ["a dog"] * 8}), npartitions=4)
    renumbered = ddf.map_partitions(lambda p: p.reset_index(drop=True))
    assert renumbered.known_divisions
    for consumer in (_compute_match, _compute_counts, _compute_balance):
        with pytest.raises(
            CurateError, match=r"partition [1-3]: its index values \(0 to 1\) are not within"
        ):
            consumer(gdf.match(renumbered, ["dog"]), ["dog"])
    # Moved up past the frame's end, or renumbered from 0 where every division is below 0.
    moved = ddf.map_partitions(lambda p: p.set_axis(pd.RangeIndex(1000, 1000 + len(p))))
    negative = dd.from_pandas(pd.DataFrame({"TEXT": ["a dog"] * 8}, index=range(-8, 0)), 4)
    for frame in (moved, negative.map_partitions(lambda p: p.reset_index(drop=True))):
        with pytest.raises(CurateError, match=r"are not within its division and the frame"):
            gdf.match(frame, ["dog"]).compute()
    # A null index value is the step's to name.
    nulls = ddf.map_partitions(lambda p: p.set_axis(pd.Index(pd.array([None] * len(p), "Int64"))))
    with pytest.raises(CurateError, match="the index has 2 null values"):
        gdf.match(nulls, ["dog"]).compute()
    # Without the divisions, the index is checked across partitions.
    cleared = renumbered.clear_divisions()
    with pytest.raises(CurateError, match="index has duplicate value 0 in 4 rows"):
        gdf.match(cleared, ["dog"]).compute()
    # Divisions that hold: the rows' uids are those of their index values.
    kept = gdf.match(ddf, ["dog"]).compute()
    assert kept.index.tolist() == list(range(8))
    assert kept["uid"].tolist() == value_uids(pa.array(range(8)), "index", "").tolist()


def test_divisions_that_hold_pass_whatever_is_computed():
    # The first check of the divisions ran in each partition against the full frame's
    # divisions: a selection of partitions (numbered within it), a one-partition frame
    # whose index a map_partitions moved, an unordered categorical index: all refused.
    pdf = pd.DataFrame({"TEXT": [f"a dog {i}" for i in range(200)]})
    ddf = dd.from_pandas(pdf, npartitions=4)
    whole = gdf.match(ddf, ["dog"]).compute()
    assert whole["uid"].tolist() == value_uids(pa.array(range(200))).tolist()
    m = gdf.match(ddf, ["dog"])
    assert m.partitions[2].compute().equals(whole.iloc[100:150])
    assert m.get_partition(3).compute().equals(whole.iloc[150:])
    assert m.loc[120:180].compute().equals(whole.loc[120:180])
    assert m.tail(3).equals(whole.tail(3))
    one = dd.from_pandas(pdf, npartitions=1).map_partitions(lambda p: p.set_axis(p.index + 1000))
    got = gdf.match(one, ["dog"]).compute()
    assert got["uid"].tolist() == value_uids(pa.array(range(1000, 1200))).tolist()
    keys = pd.CategoricalIndex([f"k{i:04d}" for i in range(200)][::-1])
    by_key = dd.from_pandas(pdf.set_index(keys), npartitions=3)
    got = gdf.match(by_key, ["dog"]).compute().sort_index()
    want = value_uids(pa.array([f"k{i:04d}" for i in range(200)])).tolist()
    assert got["uid"].tolist() == want


def test_divisions_of_parquet_files_read_together(tmp_path):
    # Dask reads the files of a column selection together when it runs the graph: each
    # partition then spans several of the divisions seen when match was called, and
    # checking it against the next of those refused a correct frame.
    for f in range(4):
        ids = np.arange(f * 50, f * 50 + 50)
        pdf = pd.DataFrame({"id": ids, "TEXT": ["a dog"] * 50, "big": ["x" * 2000] * 50})
        pdf.to_parquet(tmp_path / f"{f}.parquet", index=False)
    frame = dd.read_parquet(tmp_path, index="id", calculate_divisions=True)
    assert frame.divisions == (0, 50, 100, 150, 199)
    got = gdf.match(frame[["TEXT"]], ["dog"]).compute()
    assert got["uid"].tolist() == value_uids(pa.array(np.arange(200))).tolist()


def test_the_divisions_check_computes_nothing_twice():
    # A pass over the index for its partitions' ranges (a Delayed of its own, optimised
    # apart) computed the frame's whole graph a second time: a user's map_partitions, a
    # read_csv, a shuffle.
    calls = []

    def step(p):
        calls.append(len(p))
        return p

    pdf = pd.DataFrame({"TEXT": [f"a dog {i}" for i in range(40)]})
    ddf = dd.from_pandas(pdf, npartitions=4).map_partitions(step, meta=pdf.iloc[:0])
    assert ddf.known_divisions
    got = gdf.match(ddf, ["dog"]).compute()
    assert len(calls) == 4 and len(got) == 40


def test_one_copy_of_a_step_goes_to_all_the_tasks():
    # A step holds its metadata (MBs for real metadata): in each task's arguments, a
    # distributed scheduler shipped and unpickled it once a partition (64 partitions of a
    # 3,000-row frame took 34-44 s, 9-11 s with one copy).
    import pickle

    entries = [f"entry {i}" for i in range(20_000)]
    ddf = dd.from_pandas(pd.DataFrame({"TEXT": ["an entry 7"] * 16}), npartitions=8)
    m = gdf.match(ddf, entries)
    b = gdf.balance(m, np.ones(len(entries), np.int64), t=1)
    for result, big in ((m, 100_000), (b, 100_000)):
        graph = dict(result.__dask_graph__())
        sizes = sorted(len(pickle.dumps(v)) for v in graph.values())
        assert sum(s > big for s in sizes) == 1 if result is m else 2, sizes[-3:]
    assert m.compute()["entry_ids"].tolist() == [[7]] * 16
    assert len(b.compute()) == 16


def test_balance_names_wrong_counts_and_columns():
    pdf = pd.DataFrame({"TEXT": ["a dog", "a cat"]})
    ddf = dd.from_pandas(pdf, npartitions=1)
    m = gdf.match(ddf, ["dog", "cat"])
    counts = gdf.entry_counts(m, ["dog", "cat"])
    with pytest.raises(CurateError, match="counts: no 'count' column"):
        gdf.balance(m, counts.drop(columns="count"), t=1)
    with pytest.raises(CurateError, match="counts: 'entry_id' must hold integers, got float64"):
        gdf.balance(m, counts.assign(entry_id=[0.5, 1.0]), t=1)
    # (Floats without a fraction, as a merge or a CSV round trip may leave them, are taken.)
    as_floats = counts.astype({"entry_id": float, "count": float})
    kept = gdf.balance(m, as_floats, t=1, seed=4).compute()
    assert kept.equals(gdf.balance(m, counts, t=1, seed=4).compute())
    with pytest.raises(CurateError, match="counts: 'count' must hold integers"):
        gdf.balance(m, counts.assign(count=[1.0, np.nan]), t=1)
    with pytest.raises(CurateError, match="counts must be a 1-D array of integers, got float64"):
        gdf.balance(m, np.array([1.0, 2.5]), t=1)
    with pytest.raises(CurateError, match="counts must be a 1-D array of integers, got float64"):
        gdf.balance(m, np.array([1e19, 1.0]), t=1)  # (past int64)
    with pytest.raises(CurateError, match="counts: counts must be non-negative"):
        gdf.balance(m, np.array([1, -2]), t=1)
    for wrong in (dd.from_pandas(counts, npartitions=1), {"dog": 1, "cat": 1}):
        with pytest.raises(TypeError, match="counts must be the DataFrame entry_counts"):
            gdf.balance(m, wrong, t=1)
    with pytest.raises(CurateError, match="t must be a positive finite number"):
        gdf.balance(m, counts, t=10**400)
    for t in (True, "5"):
        with pytest.raises(CurateError, match="t must be a number"):
            gdf.balance(m, counts, t=t)
    for seed in (True, "5"):
        with pytest.raises(ArgumentError, match="seed must be an integer"):
            gdf.balance(m, counts, t=1, seed=seed)
    with pytest.raises(CurateError, match="balance needs the result of match .no uid column"):
        gdf.balance(m.drop(columns="uid"), counts, t=1).compute()
    with pytest.raises(CurateError, match="unknown backend 'cuda'"):
        gdf.balance(m, counts, t=1, backend="cuda")  # (at once, not at compute)
    with pytest.raises(TypeError, match="match takes a Dask DataFrame, got a Dask Series"):
        gdf.match(ddf["TEXT"], ["dog"])


def test_lone_surrogates_in_object_columns_read_as_u_fffd():
    # (pandas holds them where it was given them; Arrow, which holds UTF-8, refused them
    # with a UnicodeEncodeError traceback, where match_texts and the readers take them as
    # U+FFFD.) The id's uid is that of the replaced text.
    texts = ["a \ud800 dog", "cat\udfff cat", "a \ud83d\ude00 cat"]
    ids = ["x\ud800", "y", "z"]
    for dtype in ("object", "string[python]"):
        with dask.config.set({"dataframe.convert-string": False}):
            pdf = pd.DataFrame({"TEXT": texts, "id": ids}, dtype=dtype)
            ddf = dd.from_pandas(pdf, npartitions=1)
            got = gdf.match(ddf, ENTRIES, id_column="id").compute()
        fixed = ["a \ufffd dog", "cat\ufffd cat", "a \ufffd\ufffd cat"]
        assert [list(e) for e in got["entry_ids"]] == [reference_match(t, ENTRIES) for t in fixed]
        assert [list(e) for e in got["entry_ids"]] == [[0, 14], [1], [1, 14]]
        assert got["uid"].tolist() == value_uids(pa.array(["x\ufffd", "y", "z"])).tolist()


def test_lone_surrogates_in_the_index_and_in_categories():
    # (A string index, the uids' source, raised UnicodeEncodeError; categories "x\ud800"
    # and "x\ufffd" became two equal ones: "categories must be unique".)
    with dask.config.set({"dataframe.convert-string": False}):
        pdf = pd.DataFrame(
            {"TEXT": ["a dog", "cat"]}, index=pd.Index(["i\ud800", "j"], dtype=object)
        )
        got = gdf.match(dd.from_pandas(pdf, npartitions=1), ENTRIES).compute()
        assert got["uid"].tolist() == value_uids(pa.array(["i\ufffd", "j"])).tolist()
        with pd.option_context("future.infer_string", False):  # (categories as Python str)
            texts = pd.Categorical(["a \ud800 dog", "a \ufffd dog", "cat"])
            pdf = pd.DataFrame({"TEXT": texts})
        got = gdf.match(dd.from_pandas(pdf, npartitions=1), ENTRIES).compute()
    assert [list(e) for e in got["entry_ids"]] == [[0, 14], [0, 14], [1]]


def test_lone_surrogates_in_ids_of_several_partitions():
    # (The check across partitions shuffled the raw values: Arrow refused the lone
    # surrogate with a UnicodeEncodeError traceback, and "x\ud800" and "x\ufffd", one
    # uid, were two ids.)
    with (
        dask.config.set({"dataframe.convert-string": False}),
        pd.option_context("future.infer_string", False),  # (Python str, as categories)
    ):
        for dtype in ("object", "string[python]", "category"):
            pdf = pd.DataFrame(
                {"TEXT": ["a dog", "cat", "dog"], "id": ["x\ud800", "y", "z"]}, dtype=object
            ).astype({"id": dtype})
            got = gdf.match(dd.from_pandas(pdf, npartitions=2), ENTRIES, id_column="id")
            assert (
                got["uid"].compute().tolist()
                == value_uids(pa.array(["x\ufffd", "y", "z"])).tolist()
            )
            twice = pdf.assign(id=pd.Series(["x\ud800", "y", "x\ufffd"], dtype=dtype))
            with pytest.raises(CurateError, match="id column 'id' has duplicate value"):
                gdf.match(dd.from_pandas(twice, npartitions=2), ENTRIES, id_column="id").compute()


def test_string_ids_of_cudf_partitions_stay_on_the_device(monkeypatch):
    # The check across partitions replaced lone surrogates through the host's tolist(),
    # which a cuDF Series refuses (and its strings, UTF-8, hold none). No cuDF here: the
    # frame's partitions are taken for cuDF's, and the host route would fail the check.
    from gpu_curate import dataframe

    def host_route(series):
        raise AssertionError("cuDF does not support conversion to host memory via tolist()")

    ids = pd.DataFrame({"TEXT": ["a dog", "cat", "dog"], "id": ["x", "y", "x"]}, dtype=object)
    monkeypatch.setattr(dataframe, "_without_surrogates_series", host_route)
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(ids, npartitions=2)  # (object ids, as cuDF's string dtype)
        with pytest.raises(AssertionError, match="tolist"):  # (pandas: the host route)
            dataframe._unique_check(ddf, "id").compute()
        monkeypatch.setattr(dataframe, "_is_cudf", lambda df: True)
        monkeypatch.setattr(pd.Series, "to_pandas", lambda self: self, raising=False)
        with pytest.raises(CurateError, match="id column 'id' has duplicate value 'x'"):
            dataframe._unique_check(ddf, "id").compute()


def test_column_labels_that_are_one_name_are_refused(pdf):
    # (A duplicated label gave pandas' "Duplicate column names" at compute, or a Dask
    # AttributeError; labels 0 and "0" silently took the integer-labelled column.)
    texts = pdf["TEXT"].iloc[:4].tolist()
    cases = [
        (pd.DataFrame([[t, t] for t in texts], columns=["TEXT", "TEXT"]), {}, "'TEXT'"),
        (pd.DataFrame({0: texts, "0": texts}), {"text_column": "0"}, "'0'"),
        (pd.DataFrame([[t, 1, 2] for t in texts], columns=["TEXT", "id", "id"]),
         {"id_column": "id"}, "'id'"),
    ]  # fmt: skip
    for df, kwargs, name in cases:
        with pytest.raises(CurateError) as caught:
            gdf.match(dd.from_pandas(df, npartitions=2), ENTRIES, **kwargs)
        assert str(caught.value) == (
            f"the DataFrame has 2 columns named {name} (labels are taken as text: 0 and '0' "
            "are one name): rename them"
        )
    # (Repeated labels of other columns do not matter.)
    df = pd.DataFrame([[t, 1, 2] for t in texts], columns=["TEXT", "x", "x"])
    got = gdf.match(dd.from_pandas(df, npartitions=2), ENTRIES, keep_unmatched=True)
    assert len(got.compute()) == 4


def test_the_readmes_tsv_recipe_gives_the_clis_rows_and_uids(tmp_path):
    # (pandas' default quoting stripped the quotes the CLI keeps: another text, another
    # match; a caption beginning with an unclosed quote failed.)
    import csv
    import json

    from click.testing import CliRunner

    from gpu_curate.cli import main

    tsv = tmp_path / "a.tsv"
    tsv.write_text('"a dog" on the beach\tid1\n"unclosed dog\tid2\nplain cat\tid3\nNA\tid4\n')
    md = tmp_path / "md.json"
    md.write_text(json.dumps(["dog", '"a', "cat", "NA"]))
    args = ["match", str(tsv), "--metadata", str(md), "--out", str(tmp_path / "out")]
    assert CliRunner().invoke(main, [*args, "--id-column", "f1", "--quiet"]).exit_code == 0
    cli = pq.read_table(tmp_path / "out" / "matched").to_pydict()
    ddf = dd.read_csv(tsv, sep="\t", quoting=csv.QUOTE_NONE, header=None, dtype=str,
                      keep_default_na=False)  # fmt: skip
    got = gdf.match(ddf, str(md), text_column=0, id_column=1).compute()
    assert (
        got[0].tolist() == cli["f0"] == ['"a dog" on the beach', '"unclosed dog', "plain cat", "NA"]
    )
    assert got["uid"].tolist() == cli["uid"]
    assert [list(e) for e in got["entry_ids"]] == cli["entry_ids"] == [[1], [0], [2], [3]]


def test_api_errors_say_what_and_where_in_the_frames_terms():
    def error(call) -> str:
        with pytest.raises(CurateError) as caught:
            call()
        return str(caught.value)

    with dask.config.set({"dataframe.convert-string": False}):
        mixed = pd.DataFrame({"TEXT": pd.Series(["a dog", 2, "x"], dtype=object)})
        # (It printed the tuple of pyarrow's two messages.)
        got = error(lambda: gdf.match(dd.from_pandas(mixed, npartitions=1), ENTRIES).compute())
    assert got == (
        "DataFrame partition 0: column 'TEXT' cannot be read as one Arrow type: Expected "
        "bytes, got a 'int' object"
    )
    dated = pd.DataFrame({"TEXT": ["a dog"] * 4}, index=pd.date_range("2020", periods=4, unit="us"))
    assert error(lambda: gdf.match(dd.from_pandas(dated, npartitions=2), ENTRIES).compute()) == (
        "DataFrame partition 1: the index is timestamp[us]; use an integer or string index, "
        "or give id_column"
    )
    ids = pd.array([1, 2, 3, 4, None, 6], dtype="Int64")
    null = pd.DataFrame({"TEXT": ["a dog"] * 6, "id": ids}, index=np.arange(100, 106))
    got = error(lambda: gdf.match(dd.from_pandas(null, npartitions=2), ENTRIES, id_column="id")
                .compute())  # fmt: skip
    assert got.startswith(
        "DataFrame partition 1: id column 'id' has 1 null value, the first at row 1 of the "
        "partition (index label 104)"
    )
    # Raised in a worker process, the error and its row travel pickled.
    again = pickle.loads(pickle.dumps(NullIdError("id column 'id' has 1 null value", 7)))
    assert (type(again), str(again), again.row) == (
        NullIdError,
        "id column 'id' has 1 null value",
        7,
    )
    matched = gdf.match(dd.from_pandas(pd.DataFrame({"TEXT": ["a dog"]}), npartitions=1), ENTRIES)
    nulls = [3] + [None] * (len(ENTRIES) - 1)
    counts = pd.DataFrame({"entry": ENTRIES, "count": pd.array(nulls, dtype="Int64")})
    assert error(lambda: gdf.balance(matched, counts, t=1, seed=0)) == (
        f"counts: 'count' must hold integers, and holds {len(ENTRIES) - 1} nulls"
    )


def test_match_texts_takes_nan_as_a_missing_text():
    # (pandas' Series.tolist() gives NaN for a missing caption: "item 1 is float".)
    from gpu_curate.match import match_texts

    assert match_texts(["a dog", float("nan"), None, "cat"], ["dog", "cat"], "cpu") == [
        [0], [], [], [1]
    ]  # fmt: skip
