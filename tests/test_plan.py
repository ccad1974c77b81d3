"""Tests of gpu_curate.planning (loading, planning figures, t search) and `gpu-curate plan`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import write_entry_counts, write_success

from gpu_curate.cli import main
from gpu_curate.errors import CurateError
from gpu_curate.planning import (
    load_entry_counts,
    load_matched_csr,
    plan,
    plan_for_t,
    t_for_target_rows,
)

N_ENTRIES = 40

# --------------------------------------------------------------------------- fixture


def _random_rows(rng, n_rows: int, n_entries: int) -> list[list[int]]:
    # Zipf-like popularity so that some entries are head and some tail.
    weights = 1.0 / np.arange(1, n_entries + 1) ** 1.1
    weights /= weights.sum()
    rows = []
    for _ in range(n_rows):
        k = int(rng.integers(1, 5))
        rows.append(sorted(map(int, rng.choice(n_entries, size=k, replace=False, p=weights))))
    return rows


def write_matched(
    root: Path, file_rows: dict[str, list[list[int] | None]], counts: list[int]
) -> None:
    """A matched dataset as the pipeline writes it, from explicit per-file rows."""
    (root / "matched").mkdir(parents=True)
    uid = 1000  # uids run 1000, 1001, ... in read order (sorted file names)
    for name, rows in sorted(file_rows.items()):
        uids = list(range(uid, uid + len(rows)))
        uid += len(rows)
        table = pa.table(
            {
                "text": pa.array([f"text {u}" for u in uids]),
                "uid": pa.array(uids, pa.uint64()),
                "entry_ids": pa.array(rows, pa.list_(pa.int32())),
            }
        )
        # Small row groups: the column arrives as several chunks.
        pq.write_table(table, root / "matched" / name, row_group_size=64)
    write_success(root / "matched", sorted(file_rows))
    write_entry_counts(root / "entry_counts.parquet", counts)


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(77)
    rows_b = _random_rows(rng, 230, N_ENTRIES)
    rows_a = _random_rows(rng, 170, N_ENTRIES)
    rows_a[5] = []  # a run that kept unmatched rows
    rows_b[7] = None  # and a null list, read as "no entries"
    # Written out of order: files are read in _SUCCESS's order (a, then b).
    files = {"part-b.parquet": rows_b, "part-a.parquet": rows_a}
    ordered = [r or [] for r in rows_a + rows_b]
    counts = [0] * N_ENTRIES
    for r in ordered:
        for e in r:
            counts[e] += 1
    write_matched(tmp_path, files, counts)
    return tmp_path, ordered, counts


# --------------------------------------------------------------------------- references


def ref_keep_probs(rows, counts, t) -> list[float]:
    out = []
    for r in rows:
        q = 1.0
        for e in r:
            q *= 1.0 - t / max(counts[e], t)
        out.append(1.0 - q)
    return out


def ref_expected(rows, counts, t) -> float:
    return math.fsum(ref_keep_probs(rows, counts, t))


# --------------------------------------------------------------------------- loading


def test_load_matched_csr(dataset):
    root, rows, _ = dataset
    offsets, ids, uids = load_matched_csr(root)
    assert offsets.dtype == np.int64 and ids.dtype == np.int32 and uids.dtype == np.uint64
    got = [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]
    assert got == rows
    assert uids.tolist() == list(range(1000, 1000 + len(rows)))
    o2, i2, u2 = load_matched_csr(root, with_uids=False)
    assert u2 is None and np.array_equal(o2, offsets) and np.array_equal(i2, ids)


def test_load_sliced_and_large_list_chunks(tmp_path):
    # A column whose chunk is a slice (non-zero offsets) of a large_list array.
    full = pa.array([[9], [1, 2], [], [3], [4, 5, 6]], pa.large_list(pa.int64()))
    chunk = full.slice(1, 4)
    (tmp_path / "matched").mkdir()
    pq.write_table(
        pa.table({"uid": pa.array([1, 2, 3, 4], pa.uint64()), "entry_ids": chunk}),
        tmp_path / "matched" / "x.parquet",
    )
    write_success(tmp_path / "matched", ["x.parquet"])
    offsets, ids, _ = load_matched_csr(tmp_path)
    assert offsets.tolist() == [0, 2, 2, 3, 6] and ids.tolist() == [1, 2, 3, 4, 5, 6]
    # In memory, the sliced chunk itself goes through the same conversion.
    from gpu_curate.steps import list_chunk_csr

    lengths, values = list_chunk_csr(chunk, "mem")
    assert lengths.tolist() == [2, 0, 1, 3] and values.tolist() == [1, 2, 3, 4, 5, 6]


def test_load_entry_counts(dataset):
    root, _, counts = dataset
    c, names = load_entry_counts(root)
    assert c.tolist() == counts and names[3] == "entry3"


def test_only_a_complete_dataset_and_its_listed_parts_are_read(dataset):
    root, rows, counts = dataset
    matched = root / "matched"
    # A stray copy beside the parts is not read (it sorts first: every row would shift).
    (matched / "_old.parquet").write_bytes((matched / "part-b.parquet").read_bytes())
    offsets, _, _ = load_matched_csr(root)
    assert offsets.size - 1 == len(rows)
    (matched / "part-b.parquet").write_bytes((matched / "part-b.parquet").read_bytes()[:500])
    with pytest.raises(CurateError, match=r"cannot read .*part-b.parquet"):
        load_matched_csr(root)
    (matched / "part-b.parquet").unlink()
    with pytest.raises(CurateError, match=r"part-b.parquet, a part that matched/_SUCCESS lists"):
        load_matched_csr(root)
    (matched / "_SUCCESS").unlink()
    with pytest.raises(CurateError, match=r"not a complete matched dataset"):
        load_matched_csr(root)
    res = CliRunner().invoke(main, ["plan", str(root), "--t", "5"])
    assert res.exit_code == 2 and "not a complete matched dataset" in res.stderr
    (root / "entry_counts.parquet").write_bytes(b"junk")
    with pytest.raises(CurateError, match=r"cannot read .*entry_counts.parquet"):
        load_entry_counts(root)


def test_load_errors(tmp_path, dataset):
    with pytest.raises(CurateError, match="not found"):
        load_matched_csr(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurateError, match="no matched/"):
        load_matched_csr(tmp_path / "empty")
    (tmp_path / "empty" / "matched").mkdir()
    with pytest.raises(CurateError, match="_SUCCESS missing"):
        load_matched_csr(tmp_path / "empty")
    with pytest.raises(CurateError, match="entry_counts.parquet"):
        load_entry_counts(tmp_path / "empty")
    bad = tmp_path / "bad"
    (bad / "matched").mkdir(parents=True)
    pq.write_table(pa.table({"uid": pa.array([1], pa.uint64())}), bad / "matched" / "a.parquet")
    write_success(bad / "matched", ["a.parquet"])
    with pytest.raises(CurateError, match="missing column"):
        load_matched_csr(bad)


def test_an_interrupted_run_or_its_parts_folder_says_what_to_give(tmp_path, dataset):
    # Both said "not a matched dataset: no entry_counts.parquet".
    root, _, _ = dataset
    with pytest.raises(CurateError, match=f"{root / 'matched'} is a folder of parts: give its "
                       f"run folder, {root}$"):  # fmt: skip
        load_entry_counts(root / "matched")
    res = CliRunner().invoke(main, ["plan", str(root / "matched"), "--t", "5"])
    assert res.exit_code == 2 and "is a folder of parts: give its run folder" in res.stderr
    res = CliRunner().invoke(main, ["balance", str(root / "matched"), "--t", "5", "--out",
                                    str(tmp_path / "b")])  # fmt: skip
    assert res.exit_code == 2 and "is a folder of parts: give its run folder" in res.stderr
    run = tmp_path / "run"
    (run / "matched" / "_parts").mkdir(parents=True)
    (run / "_run.json").write_text("{}")
    with pytest.raises(CurateError, match="is an interrupted run .*: finish it with resume=True$"):
        load_entry_counts(run)
    with pytest.raises(CurateError, match="is an interrupted run .*: finish it with resume=True$"):
        load_matched_csr(run)
    res = CliRunner().invoke(main, ["balance", str(run), "--t", "5", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "is an interrupted run" in res.stderr, res.stderr
    assert "finish it with --resume" in res.stderr
    # A balance's output holds no matched/: the matched dataset it balanced is named.
    res = CliRunner().invoke(main, ["balance", str(root), "--t", "5", "--out",
                                    str(tmp_path / "b"), "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    b = str(tmp_path / "b")
    for argv in (["plan", f"{b}/curated", "--t", "5"], ["plan", b, "--t", "5"],
                 ["balance", b, "--t", "5", "--out", str(tmp_path / "d")]):  # fmt: skip
        res = CliRunner().invoke(main, argv)
        assert res.exit_code == 2, (argv, res.output)
        if argv[1].endswith("curated"):
            assert f"give its run folder, {tmp_path / 'b'}" in res.stderr, res.stderr
        else:
            assert (
                "is the output of a balance, without matched/: give the matched dataset it "
                f"balanced, {root}" in res.stderr
            ), res.stderr


# --------------------------------------------------------------------------- figures


@pytest.mark.parametrize("t", [1, 7, 25.5, 60, 10_000])
def test_plan_figures_match_direct_computation(dataset, t):
    root, rows, counts = dataset
    (got,) = plan(root, [t])
    assert got["t"] == t
    assert got["expected_curated_rows"] == pytest.approx(ref_expected(rows, counts, t), rel=1e-13)
    assert got["head_entries"] == sum(1 for c in counts if c >= t)
    assert got["tail_share"] == pytest.approx(sum(c for c in counts if c < t) / sum(counts))
    assert got["matched_rows"] == sum(1 for r in rows if r)
    assert got["rows"] == len(rows)
    assert got["total_matches"] == sum(counts)
    per_entry = [0.0] * N_ENTRIES
    for r, kp in zip(rows, ref_keep_probs(rows, counts, t), strict=True):
        for e in r:
            per_entry[e] += kp
    assert got["max_expected_entry_count"] == pytest.approx(max(per_entry), rel=1e-12)
    assert got["max_expected_entry_id"] == int(np.argmax(per_entry))
    assert got["max_expected_entry"] == f"entry{int(np.argmax(per_entry))}"


def test_plan_at_max_count_keeps_every_matched_row(dataset):
    root, rows, counts = dataset
    (got,) = plan(root, [max(counts)])
    assert got["expected_curated_rows"] == sum(1 for r in rows if r)
    assert got["head_entries"] == 1
    assert got["tail_share"] == pytest.approx((sum(counts) - max(counts)) / sum(counts))


def test_expected_size_monotone_in_t(dataset):
    root, rows, counts = dataset
    ts = np.linspace(0.5, max(counts), 40)
    sizes = [r["expected_curated_rows"] for r in plan(root, list(ts))]
    assert all(b >= a - 1e-9 for a, b in zip(sizes[:-1], sizes[1:], strict=True))


# --------------------------------------------------------------------------- target rows


@pytest.mark.parametrize("target", [1, 2, 17, 150, 300, 396])
def test_target_rows_lands_within_one_row(dataset, target):
    root, rows, counts = dataset
    res = plan(root, [], target_rows=target)
    assert len(res) == 1
    row = res[0]
    assert row["target_rows"] == target and row["target_reachable"] is True
    # Checked with the independent loop at the t that was found.
    assert abs(ref_expected(rows, counts, row["t"]) - target) <= 1.0
    assert 0 < row["t"] <= max(counts)


def test_target_rows_above_matched_rows(dataset):
    root, rows, counts = dataset
    matched = sum(1 for r in rows if r)
    row = plan(root, [5], target_rows=matched + 10)[-1]
    assert row["target_reachable"] is False
    assert row["t"] == max(counts)
    assert row["expected_curated_rows"] == matched
    exact = plan(root, [], target_rows=matched)[-1]
    assert exact["target_reachable"] is True


def test_t_for_target_rows_larger_in_memory():
    # 20,000 rows with a heavy-tailed count distribution; checked by the Python loop.
    rng = np.random.default_rng(3)
    n, n_entries = 20_000, 3000
    lens = rng.integers(0, 6, size=n)
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum(lens)
    ids = (rng.zipf(1.4, size=int(offsets[-1])) % n_entries).astype(np.int32)
    counts = np.bincount(ids, minlength=n_entries)
    rows = [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(n)]
    matched = int((lens > 0).sum())
    for target in (10, 3000, matched - 50):
        sol = t_for_target_rows(offsets, ids, counts, target)
        assert sol.reachable
        assert abs(ref_expected(rows, counts.tolist(), sol.t) - target) <= 1.0
    with pytest.raises(ValueError):
        t_for_target_rows(offsets, ids, counts, 0)


def test_plan_for_t_in_memory_by_hand():
    # Rows {0}, {0}, {0}, {1}; counts 3 and 1; t = 1: p = [1/3, 1].
    offs = np.array([0, 1, 2, 3, 4])
    ids = np.array([0, 0, 0, 1], np.int32)
    got = plan_for_t(offs, ids, np.array([3, 1]), 1)
    assert got["expected_curated_rows"] == pytest.approx(2.0)
    assert got["head_entries"] == 2  # count >= t
    assert got["tail_share"] == 0.0
    assert got["max_expected_entry_count"] == pytest.approx(1.0)


def test_plan_of_a_pool_without_matches_names_no_entry(tmp_path):
    root = tmp_path / "m"
    write_matched(root, {"a.parquet": [[], []]}, [0, 0, 0])
    (got,) = plan(root, [5])
    assert got["expected_curated_rows"] == 0 and got["matched_rows"] == 0
    assert got["max_expected_entry_id"] == -1 and got["max_expected_entry"] is None
    res = CliRunner().invoke(main, ["plan", str(root), "--target-rows", "10"])
    assert res.exit_code == 0, res.output
    assert "rows in matched/: 2  with a match: 0" in res.stdout
    assert "no text matched, no t keeps any" in res.stdout
    assert '"entry' not in res.stdout  # (the entries are named entry0, entry1, ...)


def test_plan_is_the_function_at_the_top_level_and_takes_one_t(dataset):
    import importlib

    import gpu_curate

    importlib.import_module("gpu_curate.planning")  # (a submodule named plan hid it)
    root, rows, counts = dataset
    for _ in range(2):
        (got,) = gpu_curate.plan(root, 60)
        assert got["expected_curated_rows"] == pytest.approx(ref_expected(rows, counts, 60))
    for bad in (True, "5"):
        with pytest.raises(CurateError, match="t must be a number"):
            gpu_curate.plan(root, [bad])


def test_plan_argument_errors(dataset):
    root, _, _ = dataset
    with pytest.raises(CurateError):
        plan(root, [0])
    with pytest.raises(CurateError):
        plan(root, [-2.0])
    with pytest.raises(CurateError):
        plan(root, [], target_rows=0)
    with pytest.raises(CurateError):
        plan(root, [])
    for bad in (True, "1500", 1500.5):
        with pytest.raises(CurateError, match="^target_rows must be a whole number of at least 1"):
            plan(root, [], target_rows=bad)


def test_plan_takes_a_file_url_and_names_a_remote_one(dataset):
    # Path folded "file:///abs/out" into "file:/abs/out": "folder not found".
    root, rows, counts = dataset
    (got,) = plan(f"file://{Path(root).absolute()}", [60])
    assert got["expected_curated_rows"] == pytest.approx(ref_expected(rows, counts, 60))
    with pytest.raises(CurateError, match="s3://b/out: a s3:// URL, but plan, report"):
        plan("s3://b/out", [60])


# --------------------------------------------------------------------------- CLI


def test_cli_json(dataset):
    root, rows, counts = dataset
    res = CliRunner().invoke(
        main, ["plan", str(root), "--t", "7", "--t", "60", "--target-rows", "200", "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert isinstance(data, list) and len(data) == 3
    for obj in data:
        for key in (
            "t",
            "expected_curated_rows",
            "head_entries",
            "tail_share",
            "max_expected_entry_count",
        ):
            assert key in obj
    assert data[0]["t"] == 7 and data[1]["t"] == 60
    assert data[0]["expected_curated_rows"] == pytest.approx(ref_expected(rows, counts, 7))
    assert abs(ref_expected(rows, counts, data[2]["t"]) - 200) <= 1.0


def test_cli_table(dataset):
    root, rows, counts = dataset
    res = CliRunner().invoke(main, ["plan", str(root), "--t", "60", "--backend", "cpu"])
    assert res.exit_code == 0, res.output
    assert "expected rows" in res.stdout and "head entries" in res.stdout
    assert f"{ref_expected(rows, counts, 60):,.1f}" in res.stdout
    res = CliRunner().invoke(main, ["plan", str(root), "--target-rows", "100000"])
    assert res.exit_code == 0, res.output
    assert "above" in res.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--t", "0"],
        ["--t", "-3"],
        ["--target-rows", "0"],
        [],
    ],
)
def test_cli_bad_arguments_exit_2(dataset, args):
    root, _, _ = dataset
    res = CliRunner().invoke(main, ["plan", str(root), *args])
    assert res.exit_code == 2
    assert res.stderr.strip().count("\n") == 0 and "error" in res.stderr


@pytest.mark.parametrize(
    "t, message",
    [
        ("abc", "t must be a number, got 'abc'"),
        ("1e400", "t must be a positive finite number, got 1e400"),
        ("nan", "t must be a positive finite number, got nan"),
    ],
)
def test_cli_t_is_checked_as_balance_checks_it(dataset, t, message):
    # (A click FLOAT: "Error: Invalid value for '--t'" for abc, and "got inf" for 1e400.)
    root, _, _ = dataset
    for command in (["plan", str(root)], ["balance", str(root), "--out", str(root / "b")]):
        res = CliRunner().invoke(main, [*command, "--t", t])
        assert res.exit_code == 2
        assert res.stderr.strip() == f"gpu-curate: error: {message}"


def test_cli_missing_inputs_exit_2(tmp_path, dataset):
    res = CliRunner().invoke(main, ["plan", str(tmp_path / "missing"), "--t", "5"])
    assert res.exit_code == 2
    assert res.stderr.startswith("gpu-curate: error:") and "not found" in res.stderr
    (tmp_path / "report.json").write_text("{}")
    res = CliRunner().invoke(main, ["plan", str(tmp_path / "report.json"), "--t", "5"])
    assert res.exit_code == 2 and "is a file: give the output folder" in res.stderr
    root, _, _ = dataset
    (root / "entry_counts.parquet").unlink()
    res = CliRunner().invoke(main, ["plan", str(root), "--t", "5"])
    assert res.exit_code == 2 and "entry_counts.parquet" in res.stderr


def test_cli_gpu_backend_unavailable_is_one_line(dataset):
    from gpu_curate.backend import gpu_available

    if gpu_available():
        pytest.skip("a GPU is available here")
    root, _, _ = dataset
    res = CliRunner().invoke(main, ["plan", str(root), "--t", "5", "--backend", "gpu"])
    assert res.exit_code == 2
    assert res.stderr.startswith("gpu-curate: error:") and res.stderr.count("\n") == 1


def test_plan_gpu_matches_cpu(dataset):
    pytest.importorskip("cupy", reason="CuPy is not installed: no GPU planning check")
    from gpu_curate.backend import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")
    root, _, _ = dataset
    cpu = plan(root, [7, 60], target_rows=200, backend="cpu")
    gpu = plan(root, [7, 60], target_rows=200, backend="gpu")
    for a, b in zip(cpu, gpu, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-9)
            else:
                assert a[k] == b[k]


def test_cli_takes_a_file_url_as_report_and_balance_do(dataset):
    # (click.Path folded file:///x into file:/x: "matched dataset folder not found".)
    root, _, _ = dataset
    by_path = CliRunner().invoke(main, ["plan", str(root), "--t", "5", "--json"])
    by_url = CliRunner().invoke(main, ["plan", f"file://{root}", "--t", "5", "--json"])
    assert by_url.exit_code == 0, by_url.output
    assert json.loads(by_url.output) == json.loads(by_path.output)
