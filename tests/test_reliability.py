"""Reliability of the ``gpu-curate`` CLI: bad input, bad rows, interruption and resume.

* Bad input fails fast with one line on stderr (no traceback) and marks nothing complete.
* Bad rows (null, empty, huge, invalid UTF-8 texts) are data: the run completes and counts them.
* A run killed with SIGKILL leaves no completion marker and no half-written part under a
  final name; ``--resume`` then gives the same curated set as an uninterrupted run.
* A Dask worker killed mid-run does not change the result (its tasks run elsewhere).

Pools are small generated Parquet files; runs are CPU-only (``--backend cpu``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import parquet_codecs

from gpu_curate.cli import main
from gpu_curate.uid import position_uids

BIN = Path(sys.executable).parent
GPU_CURATE = str(BIN / "gpu-curate")
DASK = str(BIN / "dask")

WORDS = ["dog", "cat", "red car", "new york", "tree", "blue sky", "house", "bird"]
FILLER = ["xx", "yy", "zz", "the", "a"]
ENTRIES = WORDS
DONE_MARKERS = ("report.json", "_SUCCESS")

# The interrupted / distributed runs: many small parts so that the match stage lasts a while.
N_FILES = 30
ROWS_PER_FILE = 2000
PARTITION_ROWS = 1000
RUN_FLAGS = ["--t", "150", "--seed", "7", "--backend", "cpu", "--quiet"]
RUN_FLAGS += ["--partition-rows", str(PARTITION_ROWS)]


# ----------------------------------------------------------------------------- helpers


def _texts(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    vocab = WORDS + FILLER
    return [" ".join(rnd.choice(vocab) for _ in range(4)) for _ in range(n)]


def write_pool(folder: Path, n_files: int = 2, rows: int = 1500, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(n_files):
        texts = _texts(rows, seed * 1000 + f)
        ids = np.arange(f * rows, (f + 1) * rows, dtype=np.int64)
        pq.write_table(pa.table({"TEXT": texts, "id": ids}), folder / f"part{f:03d}.parquet")
    return folder


def write_metadata(path: Path, entries=ENTRIES) -> Path:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def run_cli(*args: str):
    """Run the CLI in-process; return the click Result (stdout and stderr kept apart)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def completion_markers(out: Path) -> list[str]:
    if not out.exists():
        return []
    return sorted(str(p.relative_to(out)) for n in DONE_MARKERS for p in out.rglob(n))


def assert_clean_error(result, out: Path, *needles: str) -> str:
    """Exit 2, one line ``gpu-curate: error: ...`` naming the problem, nothing complete."""
    everything = result.output + (result.stderr or "")
    assert result.exit_code == 2, (result.exit_code, everything, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in everything
    err = result.stderr.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("gpu-curate: error: "), err
    assert len(err) < 600, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert completion_markers(out) == []
    return err


def assert_usage_error(result, *needles: str) -> None:
    """click's own errors (bad option values): exit 2, no traceback, the message names it."""
    everything = result.output + (result.stderr or "")
    assert result.exit_code == 2, (result.exit_code, everything)
    assert "Traceback" not in everything
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def curated_uids(out: Path) -> np.ndarray:
    files = sorted((out / "curated").glob("part-*.parquet"))
    assert files
    uids = np.concatenate(
        [pq.read_table(f, columns=["uid"]).column("uid").to_numpy() for f in files]
    )
    return np.sort(uids)


def entry_counts(out: Path) -> list:
    return pq.read_table(out / "entry_counts.parquet").to_pylist()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started here (in its own session) and its children; reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, poll=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(poll)
    return False


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small pool (2 files x 1500 rows) and valid metadata."""
    root = tmp_path_factory.mktemp("small")
    return write_pool(root / "pool"), write_metadata(root / "md.json")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """30 files x 2000 rows, cut into 60 parts; plus an uninterrupted reference run."""
    root = tmp_path_factory.mktemp("big")
    pool = write_pool(root / "pool", N_FILES, ROWS_PER_FILE, seed=1)
    md = write_metadata(root / "md.json")
    ref = root / "ref"
    proc = subprocess.run(
        [GPU_CURATE, "curate", str(pool), "--metadata", str(md), "--out", str(ref)]
        + ["--workers", "1", *RUN_FLAGS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return pool, md, ref


# ----------------------------------------------------------------------------- 1. bad input


def test_input_missing(small, tmp_path):
    _, md = small
    out = tmp_path / "out"
    r = run_cli("curate", tmp_path / "nope", "--metadata", md, "--out", out)
    assert_clean_error(r, out, "input not found", "nope")
    assert not out.exists()  # nothing created before the inputs are checked


def test_input_empty_folder(small, tmp_path):
    _, md = small
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    r = run_cli("curate", tmp_path / "empty", "--metadata", md, "--out", out)
    assert_clean_error(r, out, f"no file in {tmp_path / 'empty'}")
    # A glob that matches nothing, a file whose name gives no format, a folder of others.
    r = run_cli("curate", f"{tmp_path}/nowhere/*.parquet", "--metadata", md, "--out", out)
    assert_clean_error(r, out, f"no file matches {tmp_path}/nowhere/*.parquet")
    (tmp_path / "cc3m").write_text("a dog\thttps://x/1.jpg\n")
    r = run_cli("curate", tmp_path / "cc3m", "--metadata", md, "--out", out)
    assert_clean_error(r, out, f"{tmp_path / 'cc3m'}: its name does not say its format", "--format")
    (tmp_path / "empty" / "notes.txt").write_text("x")
    r = run_cli("curate", tmp_path / "empty", "--metadata", md, "--out", out)
    assert_clean_error(r, out, "no readable input files in", "use --format")


def test_an_img2dataset_folder_is_read_without_its_shard_stats_and_tars(small, tmp_path):
    # img2dataset writes 00000.parquet, 00000.tar and 00000_stats.json per shard.
    pool, md = small
    plain, shards = tmp_path / "plain", tmp_path / "shards"
    plain.mkdir()
    shards.mkdir()
    for i, p in enumerate(sorted(pool.glob("*.parquet"))):
        (plain / f"{i:05d}.parquet").write_bytes(p.read_bytes())
        (shards / f"{i:05d}.parquet").write_bytes(p.read_bytes())
        (shards / f"{i:05d}.tar").write_bytes(b"\0" * 1024)
        (shards / f"{i:05d}_stats.json").write_text(json.dumps({"count": 3}, indent=4))
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--workers", "1", "--t", "5"]
    for src, out in ((plain, tmp_path / "a"), (shards, tmp_path / "b")):
        assert run_cli("curate", src, "--out", out, *common).exit_code == 0
    assert np.array_equal(curated_uids(tmp_path / "a"), curated_uids(tmp_path / "b"))
    # (The same with --format, which applies to files whose extension names none.)
    r = run_cli("curate", shards, "--out", tmp_path / "c", "--format", "parquet", *common)
    assert r.exit_code == 0, r.stderr
    # A folder of sidecars alone: --format would not make them data, so it is not offered.
    sidecars = tmp_path / "sidecars"
    sidecars.mkdir()
    for p in shards.glob("0*.[tj]*"):
        (sidecars / p.name).write_bytes(p.read_bytes())
    r = run_cli("curate", sidecars, "--out", tmp_path / "e", *common)
    err = assert_clean_error(r, tmp_path / "e", f"no pool files in {sidecars}: 00000.tar")
    assert "--format" not in err
    # Only img2dataset's shard stats (NNNNN_stats.json): another *_stats.json is a pool file.
    (shards / "train_stats.json").write_text('{"TEXT": "a dog"}\n')
    r = run_cli("curate", shards, "--out", tmp_path / "d", *common)
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "d" / "report.json").read_text())["input_files"] == 3


def test_input_glob_matches_nothing(small, tmp_path):
    pool, md = small
    out = tmp_path / "out"
    r = run_cli("curate", f"{pool}/*.nomatch", "--metadata", md, "--out", out)
    err = assert_clean_error(r, out)
    assert err == f"gpu-curate: error: no file matches {pool}/*.nomatch", err


def test_text_column_missing_lists_columns(small, tmp_path):
    _, md = small
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"caption_x": ["dog"], "url": ["u"]}), pool / "a.parquet")
    out = tmp_path / "out"
    r = run_cli("curate", pool, "--metadata", md, "--out", out, "--backend", "cpu", "--quiet")
    assert_clean_error(r, out, "a.parquet", "caption_x", "url")
    r = run_cli(
        "curate", pool, "--metadata", md, "--out", tmp_path / "out2", "--text-column", "TXT",
        "--backend", "cpu", "--quiet",
    )  # fmt: skip
    assert_clean_error(r, tmp_path / "out2", "'TXT'", "caption_x", "url")


def test_text_column_not_strings(small, tmp_path):
    _, md = small
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"TEXT": pa.array([1, 2, 3], pa.int64())}), pool / "a.parquet")
    out = tmp_path / "out"
    r = run_cli("curate", pool, "--metadata", md, "--out", out, "--backend", "cpu", "--quiet")
    assert_clean_error(r, out, "'TEXT'", "int64", "not strings")


def test_corrupt_parquet_names_the_file(small, tmp_path):
    pool, md = small
    bad = tmp_path / "pool"
    bad.mkdir()
    for f in pool.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "zz_corrupt.parquet").write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp_path / "out"
    r = run_cli("curate", bad, "--metadata", md, "--out", out, "--backend", "cpu", "--quiet")
    assert_clean_error(r, out, "zz_corrupt.parquet")


def test_truncated_parquet_names_the_file(small, tmp_path):
    pool, md = small
    data = sorted(pool.iterdir())[0].read_bytes()
    bad = tmp_path / "pool"
    bad.mkdir()
    (bad / "half.parquet").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    r = run_cli("curate", bad, "--metadata", md, "--out", out, "--backend", "cpu", "--quiet")
    assert_clean_error(r, out, "half.parquet")


def test_real_cli_process_error_is_one_line(small, tmp_path):
    """The installed script (not CliRunner): stderr is the one error line, exit status 2."""
    _, md = small
    bad = tmp_path / "pool"
    bad.mkdir()
    (bad / "junk.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 8)
    out = tmp_path / "out"
    proc = subprocess.run(
        [GPU_CURATE, "curate", str(bad), "--metadata", str(md), "--out", str(out)]
        + ["--backend", "cpu", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-curate: error: "), proc.stderr
    assert "junk.parquet" in lines[0]
    assert completion_markers(out) == []


@pytest.mark.parametrize(
    "name, content, needles",
    [
        ("missing.json", None, ["not found", "missing.json"]),
        ("md.json", '["dog", ', ["not valid JSON"]),
        ("md.json", '{"dog": 1}', ["list", "object"]),
        ("md.json", '["dog", 3, null]', ["not strings", "1, 2"]),
        ("md.json", '["dog", "cat", "dog"]', ["duplicate", "'dog'", "0", "2"]),
        ("md.json", '["dog", ""]', ["empty or whitespace-only", "1"]),
        ("md.json", '["dog", "   "]', ["empty or whitespace-only", "1"]),
    ],
    ids=["missing", "not-json", "object", "non-strings", "duplicates", "empty", "whitespace"],
)
def test_bad_metadata(small, tmp_path, name, content, needles):
    pool, _ = small
    md = tmp_path / name
    if content is not None:
        md.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    r = run_cli("curate", pool, "--metadata", md, "--out", out)
    assert_clean_error(r, out, *needles)
    assert not out.exists()


def test_duplicate_metadata_names_both_ids(small, tmp_path):
    pool, _ = small
    md = write_metadata(tmp_path / "md.json", ["a", "dog", "b", "c", "dog"])
    out = tmp_path / "out"
    r = run_cli("curate", pool, "--metadata", md, "--out", out)
    assert_clean_error(r, out, "'dog' at ids 1 and 4")


@pytest.mark.parametrize(
    "flag, value, needle",
    [
        ("--t", "0", "t must be a positive finite number"),
        ("--t", "-5", "t must be a positive finite number"),
        ("--t", "abc", "t must be a number"),
        ("--t", "nan", "t must be a positive finite number"),
        ("--seed", "1.5", "seed must be an integer"),
        ("--seed", "abc", "seed must be an integer"),
        ("--seed", "-1", "seed must be in"),
    ],
)
def test_bad_t_and_seed(small, tmp_path, flag, value, needle):
    pool, md = small
    out = tmp_path / "out"
    r = run_cli("curate", pool, "--metadata", md, "--out", out, flag, value)
    assert_clean_error(r, out, needle, value)
    assert not out.exists()


def test_bad_t_and_seed_balance(small, tmp_path):
    out = tmp_path / "out"
    r = run_cli("balance", tmp_path, "--out", out, "--t", "0")
    assert_clean_error(r, out, "t must be a positive finite number")
    r = run_cli("balance", tmp_path, "--out", out, "--t", "5", "--seed", "x")
    assert_clean_error(r, out, "seed must be an integer")


def test_bad_workers_is_a_usage_error(small, tmp_path):
    pool, md = small
    r = run_cli("curate", pool, "--metadata", md, "--out", tmp_path / "o", "--workers", "0")
    assert_usage_error(r, "--workers")


def test_id_column_with_nulls(small, tmp_path):
    _, md = small
    pool = tmp_path / "pool"
    pool.mkdir()
    ids = pa.array([1, None, 3, 4], pa.int64())
    pq.write_table(
        pa.table({"TEXT": ["dog", "cat", "tree", "bird"], "id": ids}), pool / "a.parquet"
    )
    out = tmp_path / "out"
    r = run_cli(
        "curate", pool, "--metadata", md, "--out", out, "--id-column", "id",
        "--backend", "cpu", "--quiet",
    )  # fmt: skip
    assert_clean_error(r, out, "'id'", "null", "a.parquet", "the first at row 1")


def test_empty_file_with_a_null_typed_id_column(small, tmp_path):
    # pandas writes an empty object column as type null; an empty file has no ids to check.
    _, md = small
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"TEXT": ["dog", "cat", "tree"], "id": [7, 8, 9]}), pool / "a.parquet")
    empty = pa.table({"TEXT": pa.array([], pa.string()), "id": pa.array([], pa.null())})
    pq.write_table(empty, pool / "b.parquet")
    out = tmp_path / "out"
    r = run_cli(
        "curate", pool, "--metadata", md, "--out", out, "--id-column", "id", "--t", "1000",
        "--backend", "cpu", "--quiet",
    )  # fmt: skip
    assert r.exit_code == 0, (r.output, r.exception)
    report = json.loads((out / "report.json").read_text())
    assert report["pool_rows"] == 3 and report["input_files"] == 2
    # The same as without the empty file.
    alone = tmp_path / "alone"
    alone.mkdir()
    (pool / "a.parquet").rename(alone / "a.parquet")
    r = run_cli(
        "curate", alone, "--metadata", md, "--out", tmp_path / "out-alone", "--id-column", "id",
        "--t", "1000", "--backend", "cpu", "--quiet",
    )  # fmt: skip
    assert r.exit_code == 0, (r.output, r.exception)
    got = pq.read_table(out / "curated", columns=["id", "uid"]).sort_by("id")
    want = pq.read_table(tmp_path / "out-alone" / "curated", columns=["id", "uid"]).sort_by("id")
    assert got.num_rows > 0 and got.equals(want)
    (alone / "a.parquet").rename(pool / "a.parquet")
    # A non-empty null-typed id column is all nulls: still an error.
    pq.write_table(
        pa.table({"TEXT": ["dog"], "id": pa.array([None], pa.null())}), pool / "b.parquet"
    )
    r = run_cli(
        "curate", pool, "--metadata", md, "--out", tmp_path / "bad", "--id-column", "id",
        "--backend", "cpu", "--quiet",
    )  # fmt: skip
    assert_clean_error(r, tmp_path / "bad", "'id'", "null")


def _id_pool(folder: Path, files: dict[str, tuple[list, list]], fmt: str = "parquet") -> Path:
    """Write {name: (texts, ids)} as Parquet, CSV or TSV files with the columns TEXT and id."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (texts, ids) in files.items():
        table = pa.table({"TEXT": texts, "id": ids})
        if fmt == "csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, folder / f"{name}.csv")
        elif fmt == "tsv":
            rows = ["TEXT\tid", *(f"{t}\t{i}" for t, i in zip(texts, ids, strict=True))]
            (folder / f"{name}.tsv").write_text("\n".join(rows) + "\n")
        else:
            pq.write_table(table, folder / f"{name}.parquet", row_group_size=2)
    return folder


TEXTS4 = ["dog", "cat", "tree", "bird"]
NO_MATCH4 = ["xx", "yy zz", "", "the a"]

# layout: (files {name: (texts, ids)}, format, extra flags, the error's value and rows)
DUPLICATE_LAYOUTS = {
    "same-part": ({"a": (TEXTS4, [1, 2, 2, 4])}, "parquet", [], "2: {a} rows 1 and 2"),
    "across-files": (
        {"a": (TEXTS4, [1, 2, 3, 4]), "b": (TEXTS4, [5, 6, 3, 7])},
        "parquet",
        [],
        "3: {a} row 2 and {b} row 2",
    ),
    "across-parts": (
        {"a": (TEXTS4, [1, 2, 3, 1])},
        "parquet",
        ["--partition-rows", "2"],
        "1: {a} rows 0 and 3",
    ),
    # the uniqueness is over the pool: rows that match nothing count too
    "unmatched-rows": (
        {"a": (TEXTS4 + NO_MATCH4, list(range(8))), "b": (NO_MATCH4, [10, 11, 5, 12])},
        "parquet",
        ["--partition-rows", "3"],
        "5: {a} row 5 and {b} row 2",
    ),
    "strings-csv": (
        {"a": (TEXTS4, ["k1", "k2", "k3", "k4"]), "b": (TEXTS4, ["k5", "k6", "k7", "k2"])},
        "csv",
        [],
        "'k2': {a} row 1 and {b} row 3",
    ),
}


@pytest.mark.parametrize("layout", list(DUPLICATE_LAYOUTS))
def test_id_column_with_duplicates(small, tmp_path, layout):
    _, md = small
    files, fmt, extra, where = DUPLICATE_LAYOUTS[layout]
    pool = _id_pool(tmp_path / "pool", files, fmt)
    out = tmp_path / "out"
    r = run_cli(
        "curate", pool, "--metadata", md, "--out", out, "--id-column", "id",
        "--backend", "cpu", "--quiet", *extra,
    )  # fmt: skip
    paths = {name: str(pool / f"{name}.{fmt}") for name in files}
    assert_clean_error(r, out, "id column 'id' has duplicate value", where.format(**paths))


@pytest.mark.parametrize("fmt, extra", [("csv", []), ("tsv", ["--partition-rows", "500"])])
def test_duplicate_ids_far_apart_in_a_streamed_csv(small, tmp_path, monkeypatch, fmt, extra):
    # A CSV file is matched table by table, a TSV file cut into ranges of rows; ids repeated
    # in two of its tables (parts) are found by the pool-wide check, and the message counts
    # rows over the whole file.
    import gpu_curate.io as io_mod

    monkeypatch.setattr(io_mod, "_CSV_BLOCK", 1 << 12, raising=False)
    monkeypatch.setattr(io_mod, "PART_ROWS", 500)
    _, md = small
    ids = [f"k{i}" for i in range(3000)]
    ids[2600] = "k10"
    pool = _id_pool(tmp_path / "pool", {"a": (_texts(3000, 4), ids)}, fmt)
    out = tmp_path / "out"
    r = run_cli("curate", pool, "--metadata", md, "--out", out, "--id-column", "id",
                "--backend", "cpu", *extra)  # fmt: skip
    if fmt == "tsv":
        assert "counting the rows of 1 big text file, in 6 ranges" in r.output, r.output
    where = f"'k10': {pool / f'a.{fmt}'} rows 10 and 2600"
    assert_clean_error(r, out, "id column 'id' has duplicate value", where)


def _damaged(suffix: str, head: bytes, tail: bytes) -> bytes:
    """``head + tail`` compressed, damaged after ``head``'s bytes: decompressing raises the
    codec's own error (zlib.error, LZMAError, ZstdError, BadZipFile: none an OSError)."""
    import gzip
    import lzma

    from conftest import zstd

    if suffix == ".gz":  # a second member whose first block has the reserved type 11
        member = bytearray(gzip.compress(tail, mtime=0))
        member[10] = 0b111
        return gzip.compress(head, mtime=0) + bytes(member)
    if suffix == ".xz":  # the stream footer's magic bytes
        return lzma.compress(head + tail)[:-2] + b"ZZ"
    if suffix == ".zip":  # a stored file, a letter of its tail in the other case: bad CRC
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("a.csv", head + tail)
        data = bytearray(buf.getvalue())
        at = data.index(tail) + next(i for i, b in enumerate(tail) if chr(b).isalpha())
        data[at] ^= 0x20
        return bytes(data)
    data = zstd.compress(head + tail, options={zstd.CompressionParameter.checksum_flag: 1})
    return data[:-4] + bytes(b ^ 0xFF for b in data[-4:])  # the frame's checksum


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".zst", ".zip"])
def test_a_damaged_compressed_csv_is_one_line(small, tmp_path, monkeypatch, suffix):
    # The decompressor fails deep in the file, after tables of it were matched and
    # written: one line naming the file, and no part left, as for an unreadable row.
    import gpu_curate.io as io_mod

    monkeypatch.setattr(io_mod, "_CSV_BLOCK", 1 << 12, raising=False)
    monkeypatch.setattr(io_mod, "PART_ROWS", 500)
    _, md = small
    rows = [f"{t},{i}\n" for i, t in enumerate(_texts(4000, 5))]
    head, tail = ("TEXT,id\n" + "".join(rows[:3000])).encode(), "".join(rows[3000:]).encode()
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / f"a.csv{suffix}").write_bytes(_damaged(suffix, head, tail))
    out = tmp_path / "out"
    r = run_cli("curate", pool, "--metadata", md, "--out", out, "--backend", "cpu", "--quiet")
    assert_clean_error(r, out, f"cannot read {pool / f'a.csv{suffix}'}")
    assert not out.exists()  # (no part finished: the run took back its folder)


def test_a_zst_file_cut_short_is_one_line_and_every_frame_is_read(small, tmp_path, monkeypatch):
    # A .zst file of two frames (as `zstd -T` or `cat a.zst b.zst` writes): whole, every
    # row of both is read; cut short in its second frame, the run stops, rather than end
    # the file early with rows lost and no word. That is Python's zstd module; fsspec
    # may read .zst through the zstandard package, which ends a cut file early, silently.
    import fsspec.compression
    from conftest import zstd

    def not_this(*args, **kwargs):
        raise AssertionError("a .zst input was read through fsspec's zstd codec")

    monkeypatch.setitem(fsspec.compression.compr, "zstd", not_this)
    _, md = small
    rows = [f"{t},{i}\n" for i, t in enumerate(_texts(2000, 6))]
    frames = [zstd.compress(("TEXT,id\n" + "".join(rows[:1000])).encode()),
              zstd.compress("".join(rows[1000:]).encode())]  # fmt: skip
    pool = tmp_path / "pool"
    pool.mkdir()
    common = ["--metadata", md, "--backend", "cpu", "--quiet"]
    (pool / "a.csv.zst").write_bytes(frames[0] + frames[1])
    r = run_cli("match", pool, "--out", tmp_path / "whole", *common)
    assert r.exit_code == 0, (r.output, r.stderr, r.exception)
    assert json.loads((tmp_path / "whole" / "report.json").read_text())["pool_rows"] == 2000
    (pool / "a.csv.zst").write_bytes(frames[0] + frames[1][: len(frames[1]) // 2])
    out = tmp_path / "cut"
    r = run_cli("match", pool, "--out", out, *common)
    assert_clean_error(r, out, f"cannot read {pool / 'a.csv.zst'}")


def _weak_uids(column, name="id", where="", row_start=0):
    """A 2-bit "hash" of integer ids: distinct values collide all the time."""
    values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)
    return (values % 4).astype(np.uint64)


def test_id_hash_collisions_are_not_duplicates(small, tmp_path, monkeypatch):
    """Equal uids of different id values (a 64-bit collision, here forced) are no error."""
    import gpu_curate.steps
    import gpu_curate.unique

    monkeypatch.setattr(gpu_curate.steps, "value_uids", _weak_uids)
    monkeypatch.setattr(gpu_curate.unique, "value_uids", _weak_uids)
    _, md = small
    texts = _texts(40, 3)
    files = {"a": (texts[:20], list(range(20))), "b": (texts[20:], list(range(20, 40)))}
    pool = _id_pool(tmp_path / "pool", files)
    common = ["--metadata", md, "--id-column", "id", "--backend", "cpu", "--quiet",
              "--workers", "1", "--partition-rows", "7", "--t", "3"]  # fmt: skip
    r = run_cli("curate", pool, "--out", tmp_path / "out", *common)
    assert r.exit_code == 0, (r.output, r.stderr, r.exception)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["pool_rows"] == 40
    # ... while a real duplicate among the colliding uids still is one.
    files["b"] = (texts[20:], list(range(20, 39)) + [13])
    pool = _id_pool(tmp_path / "pool2", files)
    r = run_cli("curate", pool, "--out", tmp_path / "out2", *common)
    a, b = pool / "a.parquet", pool / "b.parquet"
    assert_clean_error(r, tmp_path / "out2", f"duplicate value 13: {a} row 13 and {b} row 19")
    # within one part too
    files["b"] = (texts[20:], list(range(20, 26)) + [21] + list(range(27, 40)))
    pool = _id_pool(tmp_path / "pool3", files)
    r = run_cli("curate", pool, "--out", tmp_path / "out3", *common)
    b = pool / "b.parquet"
    assert_clean_error(r, tmp_path / "out3", f"duplicate value 21: {b} rows 1 and 6")


def test_id_check_with_many_buckets(small, tmp_path, monkeypatch):
    """Small buckets (so a pool has many): the check finds a duplicate in any bucket, and
    a unique pool passes, with the working folder removed afterwards."""
    import gpu_curate.unique

    monkeypatch.setattr(gpu_curate.unique, "BUCKET_ROWS", 4)
    _, md = small
    texts = _texts(300, 4)
    ids = [f"id-{i}" for i in range(300)]
    files = {"a": (texts[:150], ids[:150]), "b": (texts[150:], ids[150:])}
    pool = _id_pool(tmp_path / "pool", files)
    common = ["--metadata", md, "--id-column", "id", "--backend", "cpu", "--quiet",
              "--partition-rows", "40", "--t", "20"]  # fmt: skip
    out = tmp_path / "out"
    r = run_cli("curate", pool, "--out", out, *common)
    assert r.exit_code == 0, (r.output, r.stderr, r.exception)
    assert not (out / "_work").exists()
    assert "seconds_id_check" in json.loads((out / "report.json").read_text())
    # every row duplicated once somewhere else: bucket order decides which one is named
    from gpu_curate.uid import value_uids

    uids = value_uids(pa.array(ids), "id")
    assert len(np.unique(uids >> np.uint64(58))) > 16  # the ids spread over the buckets
    for i in (0, 77, 149):
        dup = dict(files)
        dup["b"] = (texts[150:], ids[150:299] + [ids[i]])
        pool = _id_pool(tmp_path / f"pool{i}", dup)
        r = run_cli("curate", pool, "--out", tmp_path / f"out{i}", *common)
        a, b = pool / "a.parquet", pool / "b.parquet"
        assert_clean_error(
            r, tmp_path / f"out{i}", f"duplicate value 'id-{i}': {a} row {i} and {b} row 149"
        )


def test_id_check_resume(small, tmp_path):
    """Finished parts keep their uid files for --resume; the check runs over them again."""
    _, md = small
    texts = _texts(60, 5)
    files = {"a": (texts[:30], list(range(30))), "b": (texts[30:], list(range(29, 59)))}
    pool = _id_pool(tmp_path / "pool", files)
    out = tmp_path / "out"
    common = ["--metadata", md, "--out", out, "--id-column", "id", "--backend", "cpu",
              "--quiet", "--partition-rows", "10", "--t", "5"]  # fmt: skip
    needle = f"duplicate value 29: {pool / 'a.parquet'} row 29 and {pool / 'b.parquet'} row 0"
    assert_clean_error(run_cli("curate", pool, *common), out, needle)
    uid_files = sorted((out / "_work" / "uids").glob("part-*.npy"))
    assert len(uid_files) == 6
    stamps = {p: p.stat().st_mtime_ns for p in (out / "matched").rglob("*") if p.is_file()}
    stamps.update({p: p.stat().st_mtime_ns for p in uid_files})
    assert_clean_error(run_cli("curate", pool, *common, "--resume"), out, needle)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing matched again

    # A complete run with unique ids; then an interrupted state after it (markers gone,
    # the uid files removed with the working folder): --resume re-matches and re-checks.
    files["b"] = (texts[30:], list(range(30, 60)))
    pool = _id_pool(tmp_path / "pool2", files)
    common[3] = out2 = tmp_path / "out2"
    r = run_cli("curate", pool, *common)
    assert r.exit_code == 0, (r.output, r.stderr, r.exception)
    assert not (out2 / "_work").exists()
    want = curated_uids(out2)
    for name in ("report.json", "matched/_SUCCESS", "curated/_SUCCESS"):
        (out2 / name).unlink()
    r = run_cli("curate", pool, *common, "--resume")
    assert r.exit_code == 0, (r.output, r.stderr, r.exception)
    assert not (out2 / "_work").exists()
    assert np.array_equal(curated_uids(out2), want)
    assert "seconds_id_check" in json.loads((out2 / "report.json").read_text())
    # resuming a complete run does not need the uid files: the check passed before it
    r = run_cli("curate", pool, *common, "--resume")
    assert r.exit_code == 0, (r.output, r.stderr, r.exception)
    assert "seconds_id_check" not in json.loads((out2 / "report.json").read_text())


def test_output_not_empty_is_refused(small, tmp_path):
    pool, md = small
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "precious.txt"
    keep.write_text("x")
    r = run_cli("curate", pool, "--metadata", md, "--out", out, "--backend", "cpu")
    assert_clean_error(r, out, "not empty", "--overwrite", "--resume")
    assert keep.read_text() == "x"
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    r = run_cli("curate", pool, "--metadata", md, "--out", out, "--overwrite", "--resume")
    assert_usage_error(r, "--overwrite and --resume")
    assert keep.exists()
    # --overwrite refuses it too (gpu-curate did not write it), and replaces a run's folder.
    argv = ["curate", pool, "--metadata", md, "--out", out, "--overwrite", "--backend", "cpu",
            "--quiet", "--workers", "1"]  # fmt: skip
    assert_clean_error(run_cli(*argv), out, "what gpu-curate does not write (precious.txt)")
    assert keep.read_text() == "x"
    keep.unlink()
    assert run_cli(*argv).exit_code == 0
    (out / "report.json").write_text("{}")
    r = run_cli(*argv)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "report.json").read_text())["pool_rows"] > 0


# ----------------------------------------------------------------------------- 2. bad rows


def _invalid_utf8_strings(values: list[bytes]) -> pa.Array:
    """A ``string`` array holding the raw bytes (pyarrow refuses invalid UTF-8 otherwise)."""
    b = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(b), b.buffers(), null_count=b.null_count)


def test_bad_rows_are_data(small, tmp_path):
    _, md = small
    pool = tmp_path / "pool"
    pool.mkdir()
    texts = _texts(1000, 5)
    texts[10] = None
    texts[11] = None
    texts[12] = ""
    texts[13] = ""
    texts[14] = ""
    texts[15] = ("dog " + "x" * 1000 + " ") * 1000 + "cat"  # ~1 MB
    pq.write_table(pa.table({"TEXT": texts}), pool / "a.parquet")
    raw = [b"red car \xff\xfe dog", b"\xc3\x28 tree", b"new york \xed\xa0\x80", None, b""]
    arr = _invalid_utf8_strings(raw * 10)
    with pytest.raises(pa.ArrowInvalid):
        arr.validate(full=True)
    pq.write_table(pa.table({"TEXT": arr}), pool / "b_invalid_utf8.parquet")
    out = tmp_path / "out"
    r = run_cli(
        "curate", pool, "--metadata", md, "--out", out, "--backend", "cpu", "--quiet",
        "--t", "50", "--workers", "1",
    )  # fmt: skip
    assert r.exit_code == 0, (r.output, r.stderr, r.exception)
    report = json.loads((out / "report.json").read_text())
    assert report["pool_rows"] == 1050
    assert report["null_texts"] == 2 + 10
    assert report["empty_texts"] == 3 + 10
    assert (out / "matched" / "_SUCCESS").exists()
    # (The two small files are one part; its texts are read as bytes: some are not UTF-8.)
    matched = pq.read_table(out / "matched" / "part-00000.parquet")
    texts = matched.column("TEXT").cast(pa.binary()).to_pylist()
    big_row = [t for t in texts if t and len(t) > 100_000]
    assert len(big_row) == 1
    # the invalid-UTF-8 rows are matched on their valid words
    ids = dict(zip(matched.column("uid").to_pylist(), matched.column("entry_ids").to_pylist(),
                   strict=True))  # fmt: skip
    first = position_uids("b_invalid_utf8.parquet", 0, 3).tolist()
    assert [ids[u] for u in first] == [[ENTRIES.index("dog"), ENTRIES.index("red car")], [4], [3]]


def test_binary_text_column(small, tmp_path):
    """Texts in a ``binary`` column (how invalid UTF-8 often arrives): today a clear error."""
    _, md = small
    pool = tmp_path / "pool"
    pool.mkdir()
    col = pa.array([b"dog \xff", b"cat", None, b""], pa.binary())
    pq.write_table(pa.table({"raw": col}), pool / "a.parquet")
    out = tmp_path / "out"
    r = run_cli(
        "curate", pool, "--metadata", md, "--out", out, "--text-column", "raw",
        "--backend", "cpu", "--quiet",
    )  # fmt: skip
    assert_clean_error(r, out, "'raw'", "binary", "not strings")


# ----------------------------------------------------------------------------- 3. SIGKILL + resume


def _start_curate(big, out: Path, *flags: str) -> tuple[list[str], subprocess.Popen]:
    """Start ``gpu-curate curate`` on the big pool in its own session, as a terminal would."""
    pool, md, _ = big
    cmd = [GPU_CURATE, "curate", str(pool), "--metadata", str(md), "--out", str(out)]
    cmd += [*RUN_FLAGS, *flags]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    return cmd, proc


def test_sigkill_during_match_then_resume(big, tmp_path):
    ref = big[2]
    out = tmp_path / "out"
    parts = out / "matched" / "_parts"
    cmd, proc = _start_curate(big, out, "--workers", "1")
    try:
        caught = wait_for(
            lambda: any(parts.glob("*.json")) and not (out / "matched" / "_SUCCESS").exists(),
            timeout=60,
            proc=proc,
        )
        still_matching = not (out / "matched" / "_SUCCESS").exists()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        kill_group(proc)
    assert caught and still_matching, "the run finished before it could be killed: make it bigger"
    assert proc.returncode == -signal.SIGKILL

    # Nothing marked complete; every final-named part is whole; every stats file has its part.
    assert completion_markers(out) == []
    n_stats = len(list(parts.glob("*.json")))
    assert 0 < n_stats < N_FILES * ROWS_PER_FILE // PARTITION_ROWS
    for f in (out / "matched").glob("part-*.parquet"):
        pq.read_table(f)
    for s in parts.glob("*.json"):
        assert (out / "matched" / (s.stem + ".parquet")).exists(), s
        json.loads(s.read_text())

    # Without --resume the folder is refused; with it the run completes like the reference.
    again = run_cli(*cmd[1:])
    assert again.exit_code == 2 and "not empty" in again.stderr, again.output
    assert completion_markers(out) == []
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert np.array_equal(curated_uids(out), curated_uids(ref))
    assert entry_counts(out) == entry_counts(ref)
    a = pq.read_table(out / "curated_entry_counts.parquet").to_pylist()
    assert a == pq.read_table(ref / "curated_entry_counts.parquet").to_pylist()
    rep, ref_rep = (json.loads((d / "report.json").read_text()) for d in (out, ref))
    for key in ("pool_rows", "matched_rows", "matches", "curated_rows", "null_texts"):
        assert rep[key] == ref_rep[key], key


def test_a_folder_being_written_is_neither_overwritten_nor_resumed(big, tmp_path):
    # A run holds .gpu-curate.lock in its folder while it writes: --overwrite (which would
    # empty the folder under it) and --resume are refused, naming its pid and host. The
    # lock goes with the process: a folder whose run was killed resumes.
    ref = big[2]
    out = tmp_path / "out"
    parts = out / "matched" / "_parts"
    cmd, proc = _start_curate(big, out, "--workers", "1")
    try:
        caught = wait_for(lambda: any(parts.glob("*.json")), timeout=60, proc=proc)
        for flag in ("--overwrite", "--resume"):
            r = run_cli(*cmd[1:], flag)
            assert_clean_error(
                r, tmp_path / "nothing", f"another gpu-curate run (pid {proc.pid} on "
                f"{socket.gethostname()}", str(out / ".gpu-curate.lock"),
            )  # fmt: skip
        running = proc.poll() is None
        _, err = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    assert caught and running, "the run finished before the others began: make it bigger"
    assert proc.returncode == 0, err.decode()
    assert np.array_equal(curated_uids(out), curated_uids(ref))
    assert not (out / ".gpu-curate.lock").exists()  # removed at the end

    out = tmp_path / "killed"
    lock, parts = out / ".gpu-curate.lock", out / "matched" / "_parts"
    cmd, proc = _start_curate(big, out, "--workers", "1")
    try:
        caught = wait_for(lambda: any(parts.glob("*.json")), timeout=60, proc=proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        kill_group(proc)
    assert caught and lock.exists()  # left by the killed run
    assert completion_markers(out) == []
    r = run_cli(*cmd[1:], "--resume")
    assert r.exit_code == 0, (r.output, r.stderr)
    assert np.array_equal(curated_uids(out), curated_uids(ref))
    assert not lock.exists()


@pytest.mark.parametrize(
    "mode, sig",
    [([], signal.SIGINT), (["--processes"], signal.SIGINT), ([], signal.SIGTERM)],
    ids=["threads", "processes", "sigterm"],
)
def test_ctrl_c_is_one_line_then_resume(big, tmp_path, mode, sig):
    ref = big[2]
    out = tmp_path / "out"
    parts = out / "matched" / "_parts"
    cmd, proc = _start_curate(big, out, "--workers", "2", *mode)
    try:
        caught = wait_for(lambda: len(list(parts.glob("*.json"))) >= 2, timeout=60, proc=proc)
        finished = (out / "report.json").exists()
        if sig == signal.SIGINT:
            # Ctrl-C in a terminal: SIGINT to the whole process group, workers included.
            os.killpg(proc.pid, signal.SIGINT)
        else:
            # A batch scheduler's stop (or kill PID): SIGTERM to the run. (It died without
            # a word, by Python's default.)
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc)
    assert caught and not finished, "the run finished before it could be interrupted"
    err = err.decode()
    assert proc.returncode == 128 + sig, err
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    assert err.strip().count("\n") == 0 and f"gpu-curate: {word};" in err and "--resume" in err, err
    assert completion_markers(out) == []
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert np.array_equal(curated_uids(out), curated_uids(ref))
    assert entry_counts(out) == entry_counts(ref)


# A fresh interpreter runs the command line with a stop (``sig``) sent to itself at the
# moment ``module`` is first imported, as a Ctrl-C or a scheduler's SIGTERM may come.
_STOP_AT_IMPORT = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # (a test runner may ignore it)
module, sig, raised, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]

class StopAtImport:
    def find_spec(self, name, path=None, target=None):
        if name == module:
            sys.meta_path.remove(self)
            try:
                os.kill(os.getpid(), sig)
                time.sleep(30)
            except KeyboardInterrupt:
                if raised == "ImportError":  # (NumPy's import turns Ctrl-C into one)
                    raise ImportError("numpy._core.multiarray failed to import") from None
                raise

sys.meta_path.insert(0, StopAtImport())
sys.argv = ["gpu-curate", *args]
from gpu_curate.__main__ import run
run()
"""


@pytest.mark.parametrize(
    "module, sig, raised, word",
    [
        # In the launcher's imports: SIGTERM killed the process without a word.
        ("gpu_curate.cli", signal.SIGTERM, "KeyboardInterrupt", "terminated"),
        # pyarrow's first conversion to NumPy imported pandas and swallowed the stop: the
        # balance ran on to its end (or failed later with a half-imported pandas).
        ("pandas", signal.SIGTERM, "KeyboardInterrupt", "terminated"),
        ("pandas", signal.SIGINT, "KeyboardInterrupt", "interrupted"),
        # A Ctrl-C that an import turned into another error is said as a Ctrl-C.
        ("gpu_curate.pipeline", signal.SIGINT, "ImportError", "interrupted"),
    ],
    ids=["sigterm-launcher", "sigterm-pandas", "sigint-pandas", "sigint-as-import-error"],
)
def test_a_stop_during_start_up_imports_is_one_line(small, tmp_path, module, sig, raised, word):
    pool, md = small
    m = tmp_path / "m"
    common = ["--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("match", pool, "--metadata", md, "--out", m, *common).exit_code == 0
    args = ["balance", str(m), "--t", "30", "--out", str(tmp_path / "b"), *common]
    done = subprocess.run(
        [sys.executable, "-c", _STOP_AT_IMPORT, module, str(int(sig)), raised, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (128 + sig, f"gpu-curate: {word}\n")
    assert completion_markers(tmp_path / "b") == []


def test_noise_after_a_stop_is_not_printed():
    # A cluster cut short in its start leaves tasks whose errors asyncio logs when they are
    # collected, and distributed's exit callback fails on it: 16-120 lines of tracebacks
    # after the run's one line. Before a stop, they are printed as ever.
    import logging

    from gpu_curate import cli

    record = logging.LogRecord("asyncio", logging.ERROR, "", 0, "Task exception was never "
                               "retrieved", None, (RuntimeError, RuntimeError("Nanny failed "
                               "to start."), None))  # fmt: skip
    seen = []
    hook = cli._quiet_interrupts(seen.append)
    unraisable = type("U", (), {"exc_value": AssertionError("Status.init")})()
    try:
        cli._STOPPED.clear()
        assert cli._asyncio_noise(record)
        hook(unraisable)
        assert seen == [unraisable]
        cli._STOPPED.set()
        assert not cli._asyncio_noise(record)
        hook(unraisable)
        assert seen == [unraisable]
    finally:
        cli._STOPPED.clear()


def test_resume_with_other_metadata_is_refused(small, tmp_path):
    pool, md = small
    out = tmp_path / "out"
    r = run_cli(
        "match", pool, "--metadata", md, "--out", out, "--backend", "cpu", "--quiet",
        "--workers", "1",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    report = (out / "report.json").read_bytes()
    other = write_metadata(tmp_path / "other.json", ENTRIES + ["green"])
    r = run_cli(
        "curate", pool, "--metadata", other, "--out", out, "--resume", "--backend", "cpu",
        "--quiet", "--workers", "1",
    )  # fmt: skip
    everything = r.output + r.stderr
    assert r.exit_code == 2, everything
    assert "Traceback" not in everything
    assert r.stderr.strip().count("\n") == 0
    assert "--resume" in r.stderr and "metadata" in r.stderr, r.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "report.json").read_bytes() == report
    # Another cut: the option is named, not the digest of the cut that follows from it.
    r = run_cli(
        "match", pool, "--metadata", md, "--out", out, "--resume", "--backend", "cpu",
        "--quiet", "--workers", "1", "--partition-rows", "700",
    )  # fmt: skip
    assert_clean_error(r, tmp_path / "nothing", "(differs in: partition_rows); use --overwrite")


# ------------------------------------------------------------------------ 3b. the output folder


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _copy_pool(small, folder: Path) -> Path:
    pool, _ = small
    folder.mkdir(parents=True)
    for f in pool.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.mark.parametrize(
    "pool_rel, out_rel, needle",
    [
        ("pool", "pool", "holds the input"),
        ("nest/pool", "nest", "holds the input"),
        ("pool", "pool/out", "inside the input folder"),
    ],
)
@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_output_that_holds_or_lies_in_the_input_is_refused(small, tmp_path, pool_rel, out_rel,
                                                           needle, flag):  # fmt: skip
    _, md = small
    pool = _copy_pool(small, tmp_path / pool_rel)
    before = _files(pool)
    out = tmp_path / out_rel
    r = run_cli("curate", pool, "--metadata", md, "--out", out, flag, "--backend", "cpu")
    assert_clean_error(r, out, needle)
    assert _files(pool) == before  # nothing deleted, nothing written


def test_output_in_an_underscore_folder_of_the_input_is_allowed(small, tmp_path):
    _, md = small
    pool = _copy_pool(small, tmp_path / "pool")
    out = pool / "_curated"
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--workers", "1"]
    r = run_cli("curate", pool, "--out", out, *common)
    assert r.exit_code == 0, (r.output, r.stderr)
    ref = tmp_path / "ref"
    assert (
        run_cli("curate", _copy_pool(small, tmp_path / "p2"), "--out", ref, *common).exit_code == 0
    )
    assert np.array_equal(curated_uids(out), curated_uids(ref))
    r = run_cli("curate", pool, "--out", out, "--resume", *common)  # the scan skips it
    assert r.exit_code == 0, (r.output, r.stderr)


def test_balance_never_deletes_or_writes_into_the_matched_dataset(small, tmp_path):
    pool, md = small
    m = tmp_path / "m"
    common = ["--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("match", pool, "--metadata", md, "--out", m, *common).exit_code == 0
    before = _files(m)
    inside = [m / "matched", m / "matched" / "_parts", m / "matched" / "x"]
    cases = [(out, ["--overwrite"]) for out in (m, tmp_path, *inside)]  # would delete it
    cases += [(out, []) for out in inside]  # would mix curated parts into it
    for out, flag in cases:
        r = run_cli("balance", m, "--t", "5", "--out", out, *flag, *common)
        needle = "lies in the matched/ folder of the run" if out in inside else "matched dataset"
        assert_clean_error(r, tmp_path / "nothing", needle)
        assert _files(m) == before


@pytest.mark.parametrize("change", [["--t", "50"], ["--seed", "8"]])
def test_resume_with_other_t_or_seed_is_refused(small, tmp_path, change):
    pool, md = small
    out = tmp_path / "out"
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--workers", "1"]
    r = run_cli("curate", pool, "--out", out, "--t", "30", "--seed", "7", *common)
    assert r.exit_code == 0, r.output
    before = _files(out)
    args = {"--t": "30", "--seed": "7"} | dict([change])
    flat = [x for kv in args.items() for x in kv]
    r = run_cli("curate", pool, "--out", out, "--resume", *flat, *common)
    assert r.exit_code == 2, (r.output, r.stderr)
    assert "different balance" in r.stderr and change[0][2:] in r.stderr, r.stderr
    assert f"run `gpu-curate balance {out} --out NEW` with the new {change[0][2:]}" in r.stderr
    assert _files(out) == before
    # The same through `balance`, and with another matched dataset.
    m, m2, b = tmp_path / "m", tmp_path / "m2", tmp_path / "b"
    assert run_cli("match", pool, "--out", m, *common).exit_code == 0
    other = write_metadata(tmp_path / "other.json", ENTRIES[:-1])
    assert run_cli("match", pool, "--out", m2, *common[2:], "--metadata", other).exit_code == 0
    bal = ["--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("balance", m, "--out", b, "--t", "30", "--seed", "7", *bal).exit_code == 0
    before = _files(b)
    name = change[0][2:]
    for src, extra, says in ((m, flat, f"was balanced with another {name}: write this balance "
                              "into another --out"),
                             (m2, ["--t", "30", "--seed", "7"], "different balance")):  # fmt: skip
        r = run_cli("balance", src, "--out", b, "--resume", *extra, *bal)
        assert r.exit_code == 2 and says in r.stderr, (r.output, r.stderr)
        assert _files(b) == before  # the counts beside the finished parts are untouched
    # In the matched dataset's own folder, where --overwrite would delete it: the message
    # names the way that works.
    assert run_cli("balance", m, "--out", m, "--t", "30", "--seed", "7", "--resume",
                   *bal).exit_code == 0  # fmt: skip
    r = run_cli("balance", m, "--out", m, "--resume", *flat, *bal)
    assert_clean_error(r, tmp_path / "nothing", "write this balance into another --out")
    r = run_cli("balance", m, "--out", tmp_path / "b2", *flat, *bal)
    assert r.exit_code == 0, (r.output, r.stderr)


def test_resume_after_an_input_file_changed_is_refused(small, tmp_path):
    _, md = small
    pool = _copy_pool(small, tmp_path / "pool")
    out = tmp_path / "out"
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("match", pool, "--out", out, *common).exit_code == 0
    table = pq.read_table(pool / "part001.parquet")
    pq.write_table(pa.concat_tables([table, table.slice(0, 10)]), pool / "part001.parquet")
    r = run_cli("match", pool, "--out", out, "--resume", *common)
    assert r.exit_code == 2, (r.output, r.stderr)
    assert "input file part001.parquet changed" in r.stderr, r.stderr


def _two_finished_runs(small, tmp_path: Path):
    """The same curate run twice: ``out`` (to damage) and ``ref``; (pool, out, ref, flags)."""
    pool, md = small
    out, ref = tmp_path / "out", tmp_path / "ref"
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--workers", "1", "--t", "30"]
    assert run_cli("curate", pool, "--out", ref, *common).exit_code == 0
    assert run_cli("curate", pool, "--out", out, *common).exit_code == 0
    return pool, out, ref, common


def test_default_parts_are_whole_row_groups_and_resume_needs_the_same_cut(tmp_path, monkeypatch):
    from gpu_curate import io

    pool = tmp_path / "pool"
    pool.mkdir()
    texts = _texts(1000, 5)
    pq.write_table(pa.table({"TEXT": texts}), pool / "a.parquet", row_group_size=100)
    pq.write_table(pa.table({"TEXT": texts[:150]}), pool / "b.parquet", row_group_size=150)
    md = write_metadata(tmp_path / "md.json")
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--workers", "2", "--t", "30"]
    monkeypatch.setattr(io, "PART_ROWS", 250)
    out = tmp_path / "out"
    assert run_cli("curate", pool, "--out", out, *common).exit_code == 0
    # a.parquet: groups of 100 rows, two a part (a third would pass 250); b.parquet: its
    # one group of 150.
    stats = [json.loads(f.read_text()) for f in (out / "matched" / "_parts").glob("*.json")]
    assert sorted((s["file"], s["row_start"], s["pool_rows"]) for s in stats) == [
        ("a.parquet", 0, 200), ("a.parquet", 200, 200), ("a.parquet", 400, 200),
        ("a.parquet", 600, 200), ("a.parquet", 800, 200), ("b.parquet", 0, 150),
    ]  # fmt: skip
    one = tmp_path / "one"
    assert run_cli("curate", pool, "--out", one, "--partition-rows", "5000", *common).exit_code == 0
    assert json.loads((one / "report.json").read_text())["parts"] == 1  # (both files, packed)
    assert np.array_equal(curated_uids(out), curated_uids(one))
    # An interrupted run resumed by a version that cuts the files otherwise is refused:
    # its finished part-00001 covers other rows.
    (out / "report.json").unlink()
    (out / "curated" / "_SUCCESS").unlink()
    monkeypatch.setattr(io, "PART_ROWS", 400)
    r = run_cli("curate", pool, "--out", out, "--resume", *common)
    assert_clean_error(r, tmp_path / "nothing", "cuts the input files into other parts")
    monkeypatch.setattr(io, "PART_ROWS", 250)
    assert run_cli("curate", pool, "--out", out, "--resume", *common).exit_code == 0
    assert np.array_equal(curated_uids(out), curated_uids(one))


def test_small_files_packed_into_one_part_curate_as_when_cut(small, tmp_path):
    """Nine small files, packed into one part by default, give what the same files cut
    into 25-row parts give: the same uids, counts and figures; a resume reuses the pack."""
    _, md = small
    pool = tmp_path / "pool"
    pool.mkdir()
    for f in range(9):
        texts = _texts(40 + 10 * f, 100 + f)
        pq.write_table(pa.table({"TEXT": texts}), pool / f"shard-{f:05d}.parquet")
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--workers", "2", "--t", "9"]
    packed, cut = tmp_path / "packed", tmp_path / "cut"
    assert run_cli("curate", pool, "--out", packed, *common).exit_code == 0
    assert run_cli("curate", pool, "--out", cut, "--partition-rows", 25, *common).exit_code == 0
    reports = [json.loads((o / "report.json").read_text()) for o in (packed, cut)]
    assert [r["parts"] for r in reports] == [1, sum(-(-(40 + 10 * f) // 25) for f in range(9))]
    for key in ("pool_rows", "matched_rows", "curated_rows", "expected_curated_rows", "matches",
                "text_columns"):  # fmt: skip
        assert reports[0][key] == reports[1][key], key
    assert reports[0]["text_columns"] == {"TEXT": 9}
    assert reports[0]["pool_rows"] == sum(40 + 10 * f for f in range(9))
    assert np.array_equal(curated_uids(packed), curated_uids(cut))
    assert entry_counts(packed) == entry_counts(cut)
    (stats,) = [json.loads(f.read_text()) for f in (packed / "matched" / "_parts").glob("*.json")]
    assert stats["files"] == [f"shard-{f:05d}.parquet" for f in range(9)]
    # The matched part holds the files' rows in order, each with its own position uid.
    matched = pq.read_table(packed / "matched" / "part-00000.parquet")
    texts = [t for f in range(9) for t in _texts(40 + 10 * f, 100 + f)]
    uids = np.concatenate(
        [position_uids(f"shard-{f:05d}.parquet", 0, 40 + 10 * f) for f in range(9)]
    )
    keep = np.isin(uids, matched.column("uid").to_numpy())
    assert matched.column("TEXT").to_pylist() == [t for t, k in zip(texts, keep, strict=True) if k]
    assert matched.column("uid").to_numpy().tolist() == uids[keep].tolist()
    (packed / "report.json").unlink()
    (packed / "curated" / "_SUCCESS").unlink()
    before = (packed / "matched" / "part-00000.parquet").stat().st_mtime_ns
    assert run_cli("curate", pool, "--out", packed, "--resume", *common).exit_code == 0
    assert (packed / "matched" / "part-00000.parquet").stat().st_mtime_ns == before
    assert np.array_equal(curated_uids(packed), curated_uids(cut))


@pytest.mark.parametrize(
    ("rows", "columns", "needle"),
    [(30, {}, "held 20 rows when the run began and holds 30 now"),
     (5, {}, "held 20 rows when the run began and holds 5 now"),
     (20, {"x": [1] * 20}, "bytes when the run began and holds"),
     # (Rewritten to the same size, here as if: it is its columns that tell.)
     (20, {"x": [1] * 20, "size": "same"}, "its columns are no longer those of")],
    ids=["grew", "shrank", "new-column", "new-column-same-size"],
)  # fmt: skip
def test_a_file_replaced_after_the_plan_is_one_line(small, tmp_path, monkeypatch, rows, columns,
                                                    needle):  # fmt: skip
    # A packed (or cut) Parquet file replaced between planning and reading: its planned rows
    # were read silently (10 of 30, or 5 of 20), and a new column failed the pack's
    # concatenation in a multi-line Arrow message that named no file.
    from gpu_curate import io, pipeline

    if columns.pop("size", None) == "same":
        monkeypatch.setattr(io, "_check_size", lambda f, local_only=False: None)

    _, md = small
    pool = tmp_path / "pool"
    pool.mkdir()
    for f in range(3):
        pq.write_table(pa.table({"TEXT": _texts(20, f)}), pool / f"s{f}.parquet")
    real_plan = pipeline.plan_parts

    def plan_then_replace(*args, **kwargs):
        parts = real_plan(*args, **kwargs)
        assert len(parts) == 1 and len(parts[0].pieces) == 3  # (one pack)
        pq.write_table(pa.table({"TEXT": _texts(rows, 9), **columns}), pool / "s1.parquet")
        return parts

    monkeypatch.setattr(pipeline, "plan_parts", plan_then_replace)
    out = tmp_path / "out"
    r = run_cli("curate", pool, "--metadata", md, "--out", out, "--t", "5", "--backend", "cpu",
                "--quiet", "--workers", "1")  # fmt: skip
    assert_clean_error(r, out, str(pool / "s1.parquet"), "changed during the run", needle)


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda data: data + b"one more dog\tx\n", "bytes when the run began and holds"),
        # (The same size: the first line made empty lines, one row fewer.)
        (
            lambda data: b"\n" * data.index(b"\n") + data[data.index(b"\n") :],
            "rows when the run began and hold",
        ),  # fmt: skip
    ],
)
def test_a_tsv_file_changed_after_its_rows_were_counted_is_one_line(
    small, tmp_path, monkeypatch, change, needle
):
    # A TSV file cut into ranges: each range's uids number on from the rows counted in the
    # ranges before it, which a file changed since no longer holds.
    from gpu_curate import pipeline

    _, md = small
    pool = tmp_path / "pool"
    pool.mkdir()
    path = pool / "a.tsv"
    path.write_text("".join(f"{t}\tu{i}\n" for i, t in enumerate(_texts(600, 1))))
    real_plan = pipeline.plan_parts

    def plan_then_change(*args, **kwargs):
        parts = real_plan(*args, **kwargs)
        assert len(parts) > 2 and parts[0].pieces[0].byte_end is not None
        path.write_bytes(change(path.read_bytes()))
        return parts

    monkeypatch.setattr(pipeline, "plan_parts", plan_then_change)
    out = tmp_path / "out"
    r = run_cli("curate", pool, "--metadata", md, "--out", out, "--t", "5", "--backend", "cpu",
                "--quiet", "--workers", "1", "--partition-rows", "100")  # fmt: skip
    assert_clean_error(r, out, str(path), "changed during the run", needle)


def test_expected_size_is_the_same_number_for_any_cut(small, tmp_path):
    # A float sum per part, then over parts, changed in its last digits with the cut.
    pool, md = small
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--workers", "2", "--t", "7"]
    got = set()
    for rows in (97, 401, 1500):
        out = tmp_path / f"p{rows}"
        assert (
            run_cli("curate", pool, "--out", out, "--partition-rows", rows, *common).exit_code == 0
        )
        got.add(json.loads((out / "report.json").read_text())["expected_curated_rows"])
    assert len(got) == 1, got


def test_resume_removes_temporaries_and_redoes_a_damaged_part(small, tmp_path):
    pool, out, ref, common = _two_finished_runs(small, tmp_path)
    # What a kill can leave: temporaries (hidden now, visible in earlier versions) ...
    hidden = out / "curated" / f".part-00000.parquet.tmp-{'a' * 32}"
    visible = out / "matched" / f"part-00001.parquet.tmp-{'b' * 32}"
    hidden.write_bytes(b"PAR1 half a file")
    visible.write_bytes(b"PAR1 half a file")
    # ... and a part damaged since it was finished.
    part = out / "matched" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:100])
    r = run_cli("curate", pool, "--out", out, "--resume", *common)
    assert r.exit_code == 0, (r.output, r.stderr, r.exception)
    assert not hidden.exists() and not visible.exists()
    assert pq.read_table(part).num_rows == pq.read_table(ref / "matched" / part.name).num_rows
    assert np.array_equal(curated_uids(out), curated_uids(ref))
    assert entry_counts(out) == entry_counts(ref)


def test_resume_of_the_other_kind_of_run_is_refused(small, tmp_path):
    pool, md = small
    common = ["--backend", "cpu", "--quiet", "--workers", "1"]
    m, mc, b = tmp_path / "m", tmp_path / "mc", tmp_path / "b"
    assert run_cli("match", pool, "--metadata", md, "--out", m, *common).exit_code == 0
    assert run_cli("match", pool, "--metadata", md, "--out", mc, *common).exit_code == 0
    assert run_cli("balance", m, "--t", "30", "--out", b, *common).exit_code == 0
    before_mc, before_b = _files(mc), _files(b)
    # a balance resumed in another match output, a match resumed in a balance output
    r = run_cli("balance", m, "--t", "30", "--out", mc, "--resume", *common)
    assert_clean_error(r, tmp_path / "nothing", "holds no interrupted balance run")
    r = run_cli("match", pool, "--metadata", md, "--out", b, "--resume", *common)
    assert_clean_error(r, tmp_path / "nothing", "holds no interrupted match or curate run")
    assert _files(mc) == before_mc and _files(b) == before_b
    # ... while a balance may continue in its own matched dataset
    r = run_cli("balance", m, "--t", "30", "--out", m, "--resume", *common)
    assert r.exit_code == 0, (r.output, r.stderr)
    assert np.array_equal(curated_uids(m), curated_uids(b))
    # ... and a match may not continue a curate run: its report.json would describe the
    # matched data only, beside a curated/ (whole or interrupted).
    before_m = _files(m)
    r = run_cli("match", pool, "--metadata", md, "--out", m, "--resume", *common)
    assert_clean_error(r, tmp_path / "nothing", "holds a curate run", "curate --resume")
    assert _files(m) == before_m


def test_balance_resume_with_another_matched_dataset_of_the_same_shape_is_refused(tmp_path):
    # Same texts and parts (so the same _SUCCESS and counts), other uids (an id column).
    pool = tmp_path / "pool"
    pool.mkdir()
    texts = _texts(400, 5)
    ids = [f"u{i}" for i in range(400)]
    pq.write_table(pa.table({"TEXT": texts, "url": ids}), pool / "a.parquet")
    md = write_metadata(tmp_path / "md.json")
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--workers", "1"]
    u1, u2, b = tmp_path / "u1", tmp_path / "u2", tmp_path / "b"
    assert run_cli("match", pool, "--out", u1, *common).exit_code == 0
    assert run_cli("match", pool, "--out", u2, "--id-column", "url", *common).exit_code == 0
    assert (u1 / "matched" / "_SUCCESS").read_bytes() == (u2 / "matched" / "_SUCCESS").read_bytes()
    bal = ["--t", "30", "--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("balance", u1, "--out", b, *bal).exit_code == 0
    (b / "report.json").unlink()  # as if interrupted
    r = run_cli("balance", u2, "--out", b, "--resume", *bal)
    assert r.exit_code == 2 and "matched_run" in r.stderr, (r.output, r.stderr)


def test_resume_with_another_format_is_refused(small, tmp_path):
    _, md = small
    pool = tmp_path / "pool"
    write_csv = "text\n" + "\n".join(f'"{t}"' for t in _texts(50, 2)) + "\n"
    pool.mkdir()
    (pool / "1.txt").write_text(write_csv)
    out = tmp_path / "out"
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("match", pool, "--out", out, "--format", "csv", *common).exit_code == 0
    r = run_cli("match", pool, "--out", out, "--format", "tsv", "--resume", *common)
    assert r.exit_code == 2, (r.output, r.stderr)
    assert "format" in r.stderr, r.stderr


def test_output_inside_a_glob_that_reaches_into_folders_is_refused(small, tmp_path):
    _, md = small
    pool = _copy_pool(small, tmp_path / "pool" / "d")
    r = run_cli("curate", f"{pool.parent}/*/*.parquet", "--metadata", md, "--out",
                pool.parent / "out", "--backend", "cpu")  # fmt: skip
    assert_clean_error(r, pool.parent / "out", "inside the input folder")


def test_overwrite_never_deletes_the_metadata_or_the_current_directory(small, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    pool, md = small
    out = tmp_path / "out"
    out.mkdir()
    inner = write_metadata(out / "md.json")
    r = run_cli("curate", pool, "--metadata", inner, "--out", out, "--overwrite", "--backend",
                "cpu")  # fmt: skip
    assert_clean_error(r, tmp_path / "nothing", "holds the input")
    assert inner.exists()
    here = tmp_path / "here"
    here.mkdir()
    (here / "keep.txt").write_text("x")
    monkeypatch.chdir(here)
    for cmd in (["curate", pool, "--metadata", md], ["demo", "--rows", "200"]):
        r = run_cli(*cmd, "--out", ".", "--overwrite", "--backend", "cpu")
        assert_clean_error(r, tmp_path / "nothing", "current directory")
        assert (here / "keep.txt").read_text() == "x"
    r = run_cli("curate", pool, "--metadata", md, "--out", "", "--backend", "cpu")
    assert_clean_error(r, tmp_path / "nothing", "--out is empty")


def test_overwrite_keeps_a_linked_output_folder_a_link(small, tmp_path):
    # --out on another disk through a symbolic link: --overwrite must empty the folder it
    # points to, not replace the link by a new folder here.
    pool, md = small
    target = tmp_path / "big_disk" / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("x")
    link = tmp_path / "out"
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--workers", "1"]
    target.mkdir(parents=True)
    link.symlink_to(target, target_is_directory=True)
    assert run_cli("curate", pool, "--out", link, *common).exit_code == 0
    (target / "report.json").write_text("old")
    (target / "report").symlink_to(elsewhere, target_is_directory=True)  # (a linked report/)
    r = run_cli("curate", pool, "--out", link, "--overwrite", *common)
    assert r.exit_code == 0, (r.output, r.stderr, r.exception)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (target / "report.json").read_text() != "old"
    assert (target / "curated" / "_SUCCESS").exists() and not (target / "report").exists()
    assert (elsewhere / "keep.txt").read_text() == "x"  # a link inside: removed as a link


def test_gpu_backend_without_a_gpu_is_one_line(small, tmp_path):
    from gpu_curate.backend import gpu_unavailable_reason

    if gpu_unavailable_reason() is None:
        pytest.skip("this machine has a GPU")
    pool, md = small
    r = run_cli("curate", pool, "--metadata", md, "--out", tmp_path / "o", "--backend", "gpu")
    assert_clean_error(r, tmp_path / "o", "gpu backend")
    r = run_cli("demo", "--out", tmp_path / "d", "--rows", "200", "--backend", "gpu")
    assert_clean_error(r, tmp_path / "d", "gpu backend")
    assert not (tmp_path / "d").exists()  # nothing generated before the backend check


def test_damaged_stats_and_manifests(small, tmp_path):
    pool, out, ref, common = _two_finished_runs(small, tmp_path)
    (out / "matched" / "_parts" / "part-00000.json").write_text("[]")
    (out / "report.json").unlink()
    r = run_cli("curate", pool, "--out", out, "--resume", *common)
    assert r.exit_code == 0, (r.output, r.stderr, r.exception)
    assert np.array_equal(curated_uids(out), curated_uids(ref))
    for name, content in (("_run.json", "{"), ("_balance.json", "[]")):
        (out / name).write_text(content)
        r = run_cli("curate", pool, "--out", out, "--resume", *common)
        assert_clean_error(r, tmp_path / "nothing", name)
        (out / name).write_bytes((ref / name).read_bytes())


def test_balance_of_a_damaged_matched_part_is_one_line(small, tmp_path):
    pool, md = small
    m = tmp_path / "m"
    common = ["--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("match", pool, "--metadata", md, "--out", m, *common).exit_code == 0
    part = m / "matched" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:1000])
    r = run_cli("balance", m, "--t", "30", "--out", tmp_path / "b", *common)
    err = assert_clean_error(r, tmp_path / "b", "cannot read the matched part")
    assert "part-00000.parquet" in err


def test_balance_of_a_run_stopped_before_its_report_is_refused(small, tmp_path):
    # (A curate killed in its balance stage, or an --overwrite killed while it emptied a
    # finished run: matched/ is whole, report.json is not there. A balance of it wrote a
    # report without the pool's figures and said "pool 0 rows -> matched 0".)
    pool, md = small
    m = tmp_path / "m"
    common = ["--backend", "cpu", "--quiet", "--workers", "1"]
    assert (
        run_cli("curate", pool, "--metadata", md, "--out", m, "--t", "30", *common).exit_code == 0
    )
    (m / "report.json").unlink()
    r = run_cli("balance", m, "--t", "30", "--out", tmp_path / "b", *common)
    err = assert_clean_error(r, tmp_path / "b", "is an interrupted run (report.json missing)")
    assert err.endswith("finish it with --resume, then balance it"), err
    resumed = run_cli(
        "curate", pool, "--metadata", md, "--out", m, "--t", "30", "--resume", *common
    )
    assert resumed.exit_code == 0, resumed.stderr
    assert run_cli("balance", m, "--t", "30", "--out", tmp_path / "b", *common).exit_code == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["pool_rows"] == 3000 and report["curated_rows"] == curated_uids(m).size


def test_balance_of_a_matched_part_replaced_since_is_one_line(small, tmp_path):
    # A part that reads, but holds other rows than matched/_SUCCESS lists (5 of its rows
    # written back): balanced, it gave a smaller curated set without a word.
    pool, md = small
    m = tmp_path / "m"
    common = ["--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("match", pool, "--metadata", md, "--out", m, *common).exit_code == 0
    part = m / "matched" / "part-00000.parquet"
    rows = pq.read_table(part).num_rows
    pq.write_table(pq.read_table(part).slice(0, 5), part)
    r = run_cli("balance", m, "--t", "30", "--out", tmp_path / "b", *common)
    assert_clean_error(
        r, tmp_path / "b", f"the matched part {part} holds 5 rows, matched/_SUCCESS says {rows:,}"
    )


def test_balance_overwrite_keeps_the_old_result_when_a_matched_part_is_damaged(small, tmp_path):
    # The matched parts' footers are read before --overwrite empties the folder: a damaged
    # or replaced part is refused with the previous balance still there, whole.
    pool, md = small
    m = tmp_path / "m"
    common = ["--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("match", pool, "--metadata", md, "--out", m, *common).exit_code == 0
    old = tmp_path / "old"
    assert run_cli("balance", m, "--t", "30", "--out", old, *common).exit_code == 0
    before = {p: p.read_bytes() for p in sorted(old.rglob("*")) if p.is_file()}
    part = sorted((m / "matched").glob("part-*.parquet"))[-1]
    good = part.read_bytes()
    for damage, needle in ((good[:1000], "cannot read the matched part"),
                           (None, "holds 5 rows, matched/_SUCCESS says")):  # fmt: skip
        if damage is None:
            pq.write_table(pq.read_table(io.BytesIO(good)).slice(0, 5), part)
        else:
            part.write_bytes(damage)
        r = run_cli("balance", m, "--t", "20", "--out", old, "--overwrite", *common)
        assert r.exit_code == 2 and needle in r.stderr and str(part) in r.stderr, r.stderr
        assert {p: p.read_bytes() for p in sorted(old.rglob("*")) if p.is_file()} == before


def test_balance_of_a_damaged_matched_success_is_one_line(small, tmp_path):
    # (plan and balance read matched/_SUCCESS through one reader: both say it is damaged.)
    pool, md = small
    m = tmp_path / "m"
    common = ["--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("match", pool, "--metadata", md, "--out", m, *common).exit_code == 0
    (m / "matched" / "_SUCCESS").write_text('{"parts": [{"rows": 1}]}')
    r = run_cli("balance", m, "--t", "30", "--out", tmp_path / "b", *common)
    assert_clean_error(r, tmp_path / "b", "_SUCCESS is damaged")
    # A part's name is joined into the paths a balance reads and writes: one that leaves
    # the folder replaced a file outside it with its curated rows.
    victim = tmp_path / "victim" / "precious.parquet"
    victim.parent.mkdir()
    shutil.copy(sorted((m / "matched").glob("part-*.parquet"))[0], victim)
    before = victim.read_bytes()
    rows = pq.ParquetFile(victim).metadata.num_rows
    for name, what in [
        ("../../victim/precious.parquet", "a part named '../../victim/precious.parquet'"),
        ("x", "a part named 'x'"),
        ("part-00000.parquet", "a part twice"),
    ]:
        parts = [{"file": name, "rows": rows}, {"file": "part-00000.parquet", "rows": rows}]
        (m / "matched" / "_SUCCESS").write_text(json.dumps({"parts": parts, "rows": 2 * rows}))
        for command in (
            ["balance", m, "--t", "30", "--out", tmp_path / "b"],
            ["plan", m, "--t", "3"],
        ):
            r = run_cli(*command, *(common if command[0] == "balance" else []))
            assert r.exit_code == 2, r.output
            assert f"_SUCCESS is damaged (it lists {what}): run the match again" in r.stderr
        assert victim.read_bytes() == before
        assert not (tmp_path / "b").exists()


def test_a_run_that_fails_before_any_part_leaves_the_folder_as_it_found_it(small, tmp_path):
    # Its manifest alone refused the corrected run: "not empty" without --resume, "a
    # different run (differs in: text_column)" with it; two retries for nothing kept.
    pool, md = small
    base = ["--metadata", md, "--backend", "cpu", "--quiet"]
    out = tmp_path / "new"
    r = run_cli("curate", pool, *base, "--out", out, "--text-column", "nope")
    assert_clean_error(r, out, "'nope'")
    assert not out.exists()
    r = run_cli("curate", pool, *base, "--out", out)
    assert r.exit_code == 0, r.output
    # An empty folder stays, empty; a run's folder that --overwrite would replace keeps
    # the previous result (the columns are checked before it is emptied).
    empty = tmp_path / "empty"
    empty.mkdir()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = run_cli("curate", pool, *base, "--out", empty, "--text-column", "nope")
    assert_clean_error(r, empty, "'nope'")
    assert list(empty.iterdir()) == []
    r = run_cli("curate", pool, *base, "--out", out, "--text-column", "nope", "--overwrite")
    assert r.exit_code == 2 and "'nope'" in r.stderr and "\n" not in r.stderr.strip()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # Once a part is finished it is kept, with the manifest that a --resume checks: here
    # every part, then a duplicate id over the pool.
    dup = write_pool(tmp_path / "dup")
    (dup / "part001.parquet").write_bytes((dup / "part000.parquet").read_bytes())  # same ids
    r = run_cli("curate", dup, *base, "--out", out, "--id-column", "id", "--overwrite")
    assert_clean_error(r, out, "duplicate value")
    assert (out / "_run.json").exists() and list((out / "matched" / "_parts").glob("*.json"))
    # A resume fails on the same rows: what it found stays.
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    r = run_cli("curate", dup, *base, "--out", out, "--id-column", "id", "--resume")
    assert_clean_error(r, out, "duplicate value")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_two_runs_begun_in_one_folder_do_not_both_go_on(small, tmp_path, monkeypatch):
    # Both find the folder empty; the one that claims it second stops at once, instead
    # of matching everything and failing later with a '--resume' message it never asked
    # for (or mixing its parts with the other's).
    from gpu_curate import outdir, pipeline
    from gpu_curate.errors import CurateError
    from gpu_curate.outdir import claim

    pool, md = small
    out = tmp_path / "out"
    # (Where there are locks, the other run waits for this one's: no locks, as on an
    # object store, where a run that fails also leaves the folder's files as they are.)
    monkeypatch.setattr(outdir, "fcntl", None)
    real_prepare = pipeline.prepare_out

    @contextlib.contextmanager
    def prepare_then_the_other_run_claims(*args, **kwargs):
        with real_prepare(*args, **kwargs) as (fs, path):
            claim(fs, path, "_run.json", {"another": "run"}, resume=False)
            yield fs, path

    monkeypatch.setattr(pipeline, "prepare_out", prepare_then_the_other_run_claims)
    r = run_cli("curate", pool, "--metadata", md, "--out", out, "--backend", "cpu", "--quiet")
    err = assert_clean_error(r, out, "another gpu-curate run is writing to")
    assert "_run.json" in err and not (out / "matched").exists()
    assert json.loads((out / "_run.json").read_text()) == {"another": "run"}
    with pytest.raises(CurateError, match="another gpu-curate run"):
        import fsspec

        claim(fsspec.filesystem("file"), str(out), "_run.json", {"x": 1}, resume=False)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_the_claim_works_where_hard_links_do_not(tmp_path, monkeypatch):
    import fsspec

    from gpu_curate.errors import CurateError
    from gpu_curate.outdir import claim

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")  # (FAT, some FUSE mounts)

    monkeypatch.setattr(os, "link", no_links)
    fs = fsspec.filesystem("file")
    claim(fs, str(tmp_path), "_run.json", {"a": 1}, resume=False)
    assert json.loads((tmp_path / "_run.json").read_text()) == {"a": 1}
    with pytest.raises(CurateError, match="another gpu-curate run"):
        claim(fs, str(tmp_path), "_run.json", {"b": 2}, resume=False)
    assert [p.name for p in tmp_path.iterdir()] == ["_run.json"]


def test_resume_with_another_t_is_refused_before_matching(small, tmp_path):
    pool, md = small
    out = tmp_path / "out"
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("curate", pool, "--out", out, "--t", "30", *common).exit_code == 0
    for f in (out / "matched" / "_parts").iterdir():
        f.unlink()  # a resume that matched again would have to redo every part
    r = run_cli("curate", pool, "--out", out, "--t", "31", "--resume", *common)
    assert_clean_error(r, tmp_path / "nothing", "differs in: t")
    assert not any((out / "matched" / "_parts").iterdir())


def _interrupt(out: Path, stage: str) -> None:
    """Make ``out`` look like a run killed in ``stage`` with part 1 unfinished."""
    (out / "report.json").unlink()
    (out / stage / "_SUCCESS").unlink()
    (out / stage / "_parts" / "part-00001.json").unlink()
    (out / stage / "part-00001.parquet").unlink()


def test_resume_with_another_compression_is_refused(small, tmp_path):
    # The finished parts keep the first run's codec: a resume with another would mix two
    # codecs in one dataset. A manifest of an earlier version (no "compression": it wrote
    # zstd only) resumes with zstd.
    from gpu_curate.io import json_bytes

    pool, md = small
    out, b = tmp_path / "out", tmp_path / "b"
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--workers", "1", "--t", "30",
              "--partition-rows", "1000"]  # fmt: skip
    assert run_cli("curate", pool, "--out", out, *common).exit_code == 0  # zstd: the default
    ref = curated_uids(out)
    _interrupt(out, "matched")
    r = run_cli("curate", pool, "--out", out, "--resume", "--compression", "lz4", *common)
    assert_clean_error(r, tmp_path / "nothing", "--compression zstd, not lz4")
    assert not (out / "matched" / "part-00001.parquet").exists()

    # An earlier version's manifests: without the key (_balance.json names _run.json's hash).
    run = json.loads((out / "_run.json").read_text())
    assert run.pop("compression") == "zstd"
    (out / "_run.json").write_bytes(json_bytes(run))
    bal = json.loads((out / "_balance.json").read_text())
    assert bal.pop("compression") == "zstd"
    bal["matched_run"] = hashlib.sha256((out / "_run.json").read_bytes()).hexdigest()
    (out / "_balance.json").write_bytes(json_bytes(bal))
    r = run_cli("curate", pool, "--out", out, "--resume", "--compression", "snappy", *common)
    assert_clean_error(r, tmp_path / "nothing", "--compression zstd, not snappy")
    r = run_cli("curate", pool, "--out", out, "--resume", *common)
    assert r.exit_code == 0, (r.output, r.stderr)
    assert np.array_equal(curated_uids(out), ref)
    assert parquet_codecs(out / "matched") == parquet_codecs(out / "curated") == {"ZSTD"}

    # balance: its own --compression, recorded in _balance.json.
    flags = ["--t", "30", "--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("balance", out, "--out", b, "--compression", "lz4", *flags).exit_code == 0
    _interrupt(b, "curated")
    r = run_cli("balance", out, "--out", b, "--resume", *flags)
    assert_clean_error(r, tmp_path / "nothing", "--compression lz4, not zstd")
    r = run_cli("balance", out, "--out", b, "--resume", "--compression", "lz4", *flags)
    assert r.exit_code == 0, (r.output, r.stderr)
    assert parquet_codecs(b / "curated") <= {"LZ4", "LZ4_RAW"}
    assert np.array_equal(curated_uids(b), ref)


def test_temporary_files_are_hidden_from_folder_readers(tmp_path):
    from gpu_curate.io import temporary_name

    tmp = temporary_name(f"{tmp_path}/curated/part-00003.parquet")
    assert tmp.startswith(f"{tmp_path}/curated/.part-00003.parquet.tmp-")
    (tmp_path / "curated").mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "curated" / "part-00000.parquet")
    Path(tmp).write_bytes(b"PAR1 half a file")
    assert pq.read_table(tmp_path / "curated").column("x").to_pylist() == [1, 2]


def test_resume_into_a_folder_of_something_else_is_refused(small, tmp_path):
    pool, md = small
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = run_cli("curate", pool, "--metadata", md, "--out", out, "--resume", "--backend", "cpu")
    assert_clean_error(r, out, "holds no interrupted match or curate run")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ----------------------------------------------------------------------------- 4. worker killed


@pytest.fixture
def dask_cluster():
    """A real scheduler and two single-threaded workers (no nanny) on 127.0.0.1."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        p = subprocess.Popen(
            [DASK, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(p)
        return p

    try:
        start("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
        workers = [
            start(
                "worker",
                address,
                "--nthreads",
                "1",
                "--no-dashboard",
                "--no-nanny",
                "--host",
                "127.0.0.1",
            )  # fmt: skip
            for _ in range(2)
        ]
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, workers
    finally:
        for p in reversed(procs):
            kill_group(p)


def test_relative_paths_on_a_cluster(small, dask_cluster, tmp_path, monkeypatch):
    # The workers run in another working directory than the CLI: every path a task gets
    # must be absolute (the balance stage got the relative --out and failed).
    address, _ = dask_cluster
    here = tmp_path / "cli"
    _copy_pool(small, here / "pool")
    md = small[1]
    common = ["--metadata", md, "--backend", "cpu", "--quiet", "--t", "30"]
    assert run_cli("curate", small[0], "--out", tmp_path / "ref", *common).exit_code == 0
    monkeypatch.chdir(here)
    r = run_cli("curate", "pool", "--out", "rel", "--scheduler", address, *common)
    assert r.exit_code == 0, (r.output, r.stderr)
    r = run_cli("balance", "rel", "--t", "30", "--out", "bal", "--scheduler", address,
                "--backend", "cpu", "--quiet")  # fmt: skip
    assert r.exit_code == 0, (r.output, r.stderr)
    want = curated_uids(tmp_path / "ref")
    assert np.array_equal(curated_uids(here / "rel"), want)
    assert np.array_equal(curated_uids(here / "bal"), want)


def test_worker_killed_mid_run(big, dask_cluster, tmp_path):
    pool, md, ref = big
    address, workers = dask_cluster
    out = tmp_path / "out"
    cmd = [GPU_CURATE, "curate", str(pool), "--metadata", str(md), "--out", str(out)]
    cmd += ["--scheduler", address, *RUN_FLAGS]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        caught = wait_for(
            lambda: any((out / "matched" / "_parts").glob("*.json")), timeout=60, proc=proc
        )
        finished_early = (out / "matched" / "_SUCCESS").exists()
        assert workers[0].poll() is None and workers[1].poll() is None
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].wait(timeout=10)
        _, stderr = proc.communicate(timeout=180)
    finally:
        kill_group(proc)
    assert caught and not finished_early, "the match stage ended before a worker was killed"
    assert proc.returncode == 0, stderr.decode(errors="replace")[-3000:]
    assert workers[0].returncode == -signal.SIGKILL and workers[1].poll() is None
    assert np.array_equal(curated_uids(out), curated_uids(ref))
    assert entry_counts(out) == entry_counts(ref)
    report = json.loads((out / "report.json").read_text())
    assert report["cluster"] == "scheduler"
    assert report["pool_rows"] == N_FILES * ROWS_PER_FILE


def test_an_overwrite_cut_short_never_lends_its_parts_to_a_resume(small, tmp_path, monkeypatch):
    # Ctrl-C while --overwrite empties a finished run, then the --resume the message
    # suggests, with another t: once _balance.json was gone and _run.json was not, the old
    # run's curated parts were taken as the new run's (its t, under the new t's report).
    from fsspec.implementations.local import LocalFileSystem

    pool, md = small
    argv = ["curate", pool, "--metadata", md, "--backend", "cpu", "--quiet", "--workers", "1"]
    fresh = tmp_path / "fresh"
    assert run_cli(*argv, "--out", fresh, "--t", 30).exit_code == 0
    old = tmp_path / "old"
    assert run_cli(*argv, "--out", old, "--t", 20).exit_code == 0
    n_children = len(list(old.iterdir()))
    real_rm, real_rm_file = LocalFileSystem.rm, LocalFileSystem.rm_file
    for cut in range(1, n_children):
        out = tmp_path / f"cut{cut}"
        shutil.copytree(old, out)

        def rm(self, *args, real=real_rm, calls=[], cut=cut, **kwargs):  # noqa: B006
            calls.append(args)
            if len(calls) == cut:
                raise KeyboardInterrupt
            return real(self, *args, **kwargs)

        monkeypatch.setattr(LocalFileSystem, "rm", rm)
        monkeypatch.setattr(
            LocalFileSystem, "rm_file", lambda self, p, real=real_rm_file: rm(self, p, real=real)
        )
        r = run_cli(*argv, "--out", out, "--t", 30, "--overwrite")
        monkeypatch.undo()
        assert r.exit_code == 130, (cut, r.output, r.stderr)
        r = run_cli(*argv, "--out", out, "--t", 30, "--resume")
        if r.exit_code == 0:
            assert np.array_equal(curated_uids(out), curated_uids(fresh)), cut
        else:
            assert r.exit_code == 2 and "--overwrite" in r.stderr, (cut, r.stderr)
            assert completion_markers(out) == [] or (out / "curated" / "_SUCCESS").exists()


def test_overwrite_of_a_run_holding_its_balance_cut_short_can_be_run_again(
    small, tmp_path, monkeypatch
):
    # A balance of the run inside it (RUN/t3) is gpu-curate's, emptied manifests last: an
    # --overwrite cut short anywhere leaves a folder the next --overwrite replaces. Another
    # run inside is no part of this one, and is refused.
    from fsspec.implementations.local import LocalFileSystem

    pool, md = small
    argv = ["curate", pool, "--metadata", md, "--backend", "cpu", "--quiet", "--workers", "1"]
    run = tmp_path / "run"
    assert run_cli(*argv, "--out", run, "--t", 20).exit_code == 0
    assert run_cli("balance", run, "--out", run / "t3", "--t", 3, "--quiet").exit_code == 0
    # (And a balance of the run inside that balance, as `balance RUN --out RUN/t3/t2`
    # writes it.)
    assert run_cli("balance", run, "--out", run / "t3" / "t2", "--t", 2, "--quiet").exit_code == 0
    n = sum(1 for _ in run.rglob("*"))
    real_rm = LocalFileSystem.rm
    for cut in range(1, n):
        out = tmp_path / f"cut{cut}"
        shutil.copytree(run, out)

        def rm(self, *args, calls=[], cut=cut, **kwargs):  # noqa: B006
            calls.append(args)
            if len(calls) == cut:
                raise KeyboardInterrupt
            return real_rm(self, *args, **kwargs)

        monkeypatch.setattr(LocalFileSystem, "rm", rm)
        run_cli(*argv, "--out", out, "--t", 30, "--overwrite")
        monkeypatch.undo()
        r = run_cli(*argv, "--out", out, "--t", 30, "--overwrite")
        assert r.exit_code == 0, (cut, r.stderr)
    # Another run inside is named and kept, under a name of the layout's too; a manifest
    # that is a FIFO is no balance of the run (reading it would block).
    for name in ("other", "report"):
        other = run / name
        # (Written beside it and moved in: an --out in a folder of the run's layout, as
        # run/report, is refused.)
        assert run_cli(*argv, "--out", tmp_path / name, "--t", 5).exit_code == 0
        shutil.move(tmp_path / name, other)
        r = run_cli(*argv, "--out", run, "--t", 30, "--overwrite")
        assert r.exit_code == 2, r.stderr
        assert f"does not write ({name} (another run's output))" in r.stderr, r.stderr
        assert (other / "report.json").exists()
        shutil.rmtree(other)
    (run / "fifo").mkdir()
    os.mkfifo(run / "fifo" / "_balance.json")
    r = run_cli(*argv, "--out", run, "--t", 30, "--overwrite")
    assert r.exit_code == 2 and "(fifo (another run's output))" in r.stderr, r.stderr


def _no_uid(m: Path) -> None:
    part = m / "matched" / "part-00000.parquet"
    pq.write_table(pq.read_table(part).drop(["uid"]), part)


def _ids_past_the_counts(m: Path) -> None:
    part = m / "matched" / "part-00000.parquet"
    table = pq.read_table(part)
    ids = pa.array([[99]] * table.num_rows, pa.list_(pa.int32()))
    pq.write_table(
        table.set_column(table.schema.get_field_index("entry_ids"), "entry_ids", ids), part
    )


def _counts_as(m: Path, change) -> None:
    counts = m / "entry_counts.parquet"
    table = pq.read_table(counts)
    pq.write_table(change(table), counts)


TAMPERED = {
    "no uid": (_no_uid, "has no uid (uint64) and entry_ids (list<int32>) columns"),
    "entry ids past the counts": (_ids_past_the_counts, "entry id 99 is out of range for"),
    "counts as text": (
        lambda m: _counts_as(m, lambda t: t.set_column(2, "count", t["count"].cast(pa.string()))),
        "entry_counts.parquet: count must be integers, not string",
    ),
    "negative counts": (
        lambda m: _counts_as(m, lambda t: t.set_column(2, "count", pa.array([-1] * t.num_rows))),
        "entry_counts.parquet: negative counts",
    ),
    "counts cut short": (
        lambda m: _counts_as(m, lambda t: t.slice(0, 3)),
        "entry_counts.parquet holds 3 entries, the run's report.json says",
    ),
    "report.json damaged": (
        lambda m: (m / "report.json").write_text("{"),
        "report.json is damaged (Expecting property name",
    ),
    "pool_rows null": (
        lambda m: (m / "report.json").write_text(json.dumps({"pool_rows": None})),
        "report.json is damaged (pool_rows is None)",
    ),
    "metadata_entries as text": (
        lambda m: (m / "report.json").write_text(json.dumps({"metadata_entries": "5"})),
        "report.json is damaged (metadata_entries is '5')",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_balance_of_a_tampered_matched_dataset_is_one_line(small, tmp_path, case):
    # (Each was a traceback, or, counts as text, taken without a word; plan checked the
    # counts, balance read them raw.)
    pool, md = small
    m = tmp_path / "m"
    common = ["--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("match", pool, "--metadata", md, "--out", m, *common).exit_code == 0
    tamper, needle = TAMPERED[case]
    tamper(m)
    r = run_cli("balance", m, "--t", "30", "--out", tmp_path / "b", *common)
    assert_clean_error(r, tmp_path / "b", needle)


def _matched_and_balanced(small, tmp_path) -> tuple[Path, list[str]]:
    """tmp_path/m matched from the small pool and balanced (t=30) into tmp_path/want; the
    flags of both."""
    pool, md = small
    m = tmp_path / "m"
    common = ["--backend", "cpu", "--quiet", "--workers", "1"]
    assert run_cli("match", pool, "--metadata", md, "--out", m, *common).exit_code == 0
    assert run_cli("balance", m, "--t", "30", "--out", tmp_path / "want", *common).exit_code == 0
    return m, common


def test_balance_takes_entry_ids_as_a_large_list(small, tmp_path):
    # (What a part of 2^31 ids or more holds, as MatchStep writes it: refused as "not as
    # gpu-curate match writes them" by the schema check.)
    m, common = _matched_and_balanced(small, tmp_path)
    for part in (m / "matched").glob("part-*.parquet"):
        table = pq.read_table(part)
        i = table.schema.get_field_index("entry_ids")
        large = table.column(i).cast(pa.large_list(pa.int32()))
        pq.write_table(table.set_column(i, "entry_ids", large), part)
    assert run_cli("balance", m, "--t", "30", "--out", tmp_path / "got", *common).exit_code == 0
    got, want = (
        pq.read_table(tmp_path / "got" / "curated"),
        pq.read_table(tmp_path / "want" / "curated"),
    )
    assert got.column("uid").to_pylist() == want.column("uid").to_pylist()


def test_balance_reads_the_counts_by_their_entry_ids(small, tmp_path):
    # (Rows of entry_counts.parquet in another order are the same counts: balanced as
    # the counts in their order.)
    m, common = _matched_and_balanced(small, tmp_path)
    _counts_as(m, lambda t: t.take(np.arange(t.num_rows)[::-1]))
    assert run_cli("balance", m, "--t", "30", "--out", tmp_path / "got", *common).exit_code == 0
    for name in ("curated", "entry_counts.parquet", "curated_entry_counts.parquet"):
        assert pq.read_table(tmp_path / "got" / name).equals(
            pq.read_table(tmp_path / "want" / name)
        )


def test_a_full_disk_says_to_free_space_and_resume(small, tmp_path, monkeypatch):
    # (It said "[Errno 28] No space left on device": no file, nothing to do.)
    import gpu_curate.pipeline as pipeline

    pool, md = small
    out = tmp_path / "out"
    args = ["curate", pool, "--metadata", md, "--out", out, "--backend", "cpu", "--quiet",
            "--workers", "1", "--t", "30"]  # fmt: skip
    write_report = pipeline._write_report

    def full(fs, path, report):
        raise OSError(28, "No space left on device", f"{path}/report.json")

    monkeypatch.setattr(pipeline, "_write_report", full)
    r = run_cli(*args)
    assert r.exit_code == 2
    assert r.stderr.strip() == (
        f"gpu-curate: error: no space left on device ({out}/report.json): free some space, "
        "then run the same command with --resume (the parts finished so far are kept)"
    )
    assert not (out / "report.json").exists()
    # With --overwrite, which --resume excludes, the hint says to give it in its place; a
    # full quota says so.
    monkeypatch.setattr(
        pipeline, "_write_report", lambda *a: (_ for _ in ()).throw(OSError(122, "Quota"))
    )
    r = run_cli(*args, "--overwrite")
    assert r.stderr.strip() == (
        "gpu-curate: error: disk quota exceeded: free some space, then run the same command "
        "with --resume in place of --overwrite (the parts finished so far are kept)"
    )
    monkeypatch.setattr(pipeline, "_write_report", write_report)
    assert run_cli(*args, "--resume").exit_code == 0
    assert (out / "report.json").is_file()


@pytest.mark.parametrize("fails", ["write", "rename"])
def test_a_write_cut_short_leaves_no_temporary_file(tmp_path, monkeypatch, fails):
    # (A Ctrl-C in the rename, or a full disk in the write, left .NAME.tmp-... behind.)
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    from gpu_curate.io import atomic_parquet_writer, atomic_write_bytes

    fs = fsspec.filesystem("file")
    real_open = LocalFileSystem.open

    def cut(*args, **kwargs):
        raise KeyboardInterrupt

    def full(self, path, mode="rb", **kwargs):
        fh = real_open(self, path, mode, **kwargs)
        fh.write = cut  # (the file is there: its bytes are not)
        return fh

    for name, write in [
        ("a.json", lambda path: atomic_write_bytes(fs, path, b"{}")),
        ("a.parquet", lambda path: _write_parquet(atomic_parquet_writer, fs, path)),
    ]:
        with monkeypatch.context() as m:
            if fails == "rename":
                m.setattr(LocalFileSystem, "mv", cut)
            else:
                m.setattr(LocalFileSystem, "open", full)
            with pytest.raises(KeyboardInterrupt):
                write(str(tmp_path / name))
        assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_a_write_names_the_file(tmp_path, monkeypatch):
    # (fsspec's and Arrow's writes raise ENOSPC without a file name: the CLI's line named
    # none.)
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    from gpu_curate.io import atomic_parquet_writer, atomic_write_bytes, write_atomic

    fs = fsspec.filesystem("file")
    real_open = LocalFileSystem.open

    def full(self, path, mode="rb", **kwargs):
        fh = real_open(self, path, mode, **kwargs)

        def write(data):
            raise OSError(28, "No space left on device")

        fh.write = write
        return fh

    monkeypatch.setattr(LocalFileSystem, "open", full)

    def fsync(fd):  # (write_atomic's, for the report's pages: a full disk shows here)
        raise OSError(28, "No space left on device")

    for name, write in [
        ("a.json", lambda path: atomic_write_bytes(fs, path, b"{}")),
        ("a.parquet", lambda path: _write_parquet(atomic_parquet_writer, fs, path)),
        ("index.html", lambda path: _with(monkeypatch, os, "fsync", fsync,
                                           lambda: write_atomic(path, b"<html>"))),
    ]:  # fmt: skip
        with pytest.raises(OSError) as caught:
            write(str(tmp_path / name))
        assert (caught.value.errno, caught.value.filename) == (28, str(tmp_path / name))
    assert list(tmp_path.iterdir()) == []


def _with(monkeypatch, owner, name, value, call):
    with monkeypatch.context() as m:
        m.setattr(owner, name, value)
        return call()


def _write_parquet(writer, fs, path: str) -> None:
    with writer(fs, path) as write:
        write(pa.table({"a": [1]}))


def test_a_full_disk_before_any_part_says_to_run_again(small, tmp_path, monkeypatch):
    # (A run in a new folder that finished no part removes the folder; the line said "the
    # parts finished so far are kept" and advised --resume.)
    import gpu_curate.pipeline as pipeline

    pool, md = small
    out = tmp_path / "new" / "out"

    @contextlib.contextmanager
    def full(fs, path, compression):
        raise OSError(28, "No space left on device", path)
        yield

    monkeypatch.setattr(pipeline, "atomic_parquet_writer", full)
    r = run_cli("curate", pool, "--metadata", md, "--out", out, "--backend", "cpu",
                "--quiet", "--workers", "1", "--t", "30")  # fmt: skip
    assert r.exit_code == 2
    assert r.stderr.startswith("gpu-curate: error: no space left on device (")
    assert r.stderr.endswith(": free some space, then run the same command again\n")
    assert not (tmp_path / "new").exists()


def test_a_run_with_stdout_closed_runs(small, tmp_path):
    # (`gpu-curate curate ... >&-`: Python's sys.stdout is None, and the progress bar
    # failed with a traceback, AttributeError: 'NoneType' object has no attribute 'write'.)
    pool, md = small
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "gpu_curate", "curate", str(pool), "--metadata", str(md),
         "--out", str(out), "--t", "30", "--workers", "1", "--backend", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads((out / "report.json").read_text())["pool_rows"] == 3000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_every_file_is_on_the_disk_before_the_mark_that_lists_it(small, tmp_path, monkeypatch):
    """A crash of the machine must not leave a _SUCCESS or report.json naming a part that
    is empty or missing: each file's bytes are fsync'ed before its rename, and the folder's
    renames before the mark of completion is written (and the mark's own after)."""
    events: list[tuple] = []
    fsync, rename = os.fsync, os.rename

    def logged_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def logged_rename(src, dst, *args, **kwargs):
        events.append(("rename", os.path.abspath(src), os.path.abspath(dst)))
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "rename", logged_rename)
    pool, md = small
    out = (tmp_path / "out").resolve()
    flags = ["--t", "50", "--workers", "2", "--partition-rows", "500", "--quiet"]
    result = run_cli("curate", pool, "--metadata", md, "--out", out, *flags)
    assert result.exit_code == 0, result.output + result.stderr
    renames = [(i, e[1], e[2]) for i, e in enumerate(events) if e[0] == "rename"]
    into_out = [r for r in renames if r[2].startswith(str(out) + os.sep)]
    synced = {e[1]: i for i, e in enumerate(events) if e[0] == "fsync"}
    assert len(into_out) > 10  # the parts, their stats, the marks, the counts
    for i, src, dst in into_out:
        assert src in synced and synced[src] < i, f"{dst} renamed before its bytes were synced"
    marks = [out / "matched" / "_SUCCESS", out / "curated" / "_SUCCESS", out / "report.json"]
    for mark in marks:
        (at,) = [i for i, _, dst in into_out if dst == str(mark)]
        folders = {str(mark.parent)}
        if mark.name == "_SUCCESS":
            folders.add(str(mark.parent / "_parts"))
            listed = {str(mark.parent / p["file"]) for p in json.loads(mark.read_text())["parts"]}
            assert listed and listed <= {dst for i, _, dst in into_out if i < at}
        for folder in folders:
            before = [r[0] for r in into_out if os.path.dirname(r[2]) == folder and r[0] < at]
            assert before, folder
            syncs = [i for i, e in enumerate(events) if e == ("fsync", folder)]
            assert any(max(before) < i < at for i in syncs), f"{folder} not synced before {mark}"
        assert any(i > at for i, e in enumerate(events) if e == ("fsync", str(mark.parent)))
    # The run's manifests (created through a hard link, not a rename) too: a resume reads
    # them.
    manifests = [p.name for p in out.glob("_*.json")]
    assert "_run.json" in manifests
    for name in manifests:
        assert any(e[0] == "fsync" and e[1].startswith(f"{out}/.{name}.tmp") for e in events), name


def test_a_file_system_that_syncs_no_folder_still_runs(tmp_path, monkeypatch):
    # (Some network and FUSE file systems answer a folder's fsync with EINVAL: the run
    # failed at its end. An I/O error still stops it.)
    import errno

    import fsspec

    from gpu_curate.io import sync_folder

    fs = fsspec.filesystem("file")
    for code, fails in ((errno.EINVAL, False), (errno.ENOTSUP, False), (errno.EIO, True)):

        def refused(fd, code=code):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "fsync", refused)
        if fails:
            with pytest.raises(OSError, match=os.strerror(code)):
                sync_folder(fs, str(tmp_path))
        else:
            sync_folder(fs, str(tmp_path))
