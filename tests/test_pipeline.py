"""End-to-end tests of the curation pipeline, through the ``gpu-curate`` command line.

The pool is built in a temporary folder from the shared real alt-texts: the LAION sample
rewritten as Parquet with 1,000-row row groups and the CC3M validation captions converted
to Parquet, both with the columns ``URL``, ``TEXT`` and a unique string ``id``. It is
matched against the 374,565-entry proxy metadata with a small ``t`` so that balancing
really drops rows.

Every expectation is computed here, independently of the pipeline: the matches with
conftest's Aho-Corasick reference (DESIGN.md section 2), the counts by counting them,
``p = t / max(count, t)`` directly, ``1 - prod(1 - p)`` with a Python product. Only the
documented building blocks (``position_uids``, ``value_uids``, ``keep_mask``) are
imported from the package: the pipeline must equal that direct array computation.

CLI runs cost seconds each, so the runs are shared through module-scoped fixtures.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import json
import logging
import math
import re
import shutil
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import (
    CC3M_TSV,
    LAION_PARQUET,
    PROXY_METADATA,
    parquet_codecs,
    read_cc3m_texts,
    reference_match,
    shared_data,
)

import gpu_curate
from gpu_curate.balance import keep_mask
from gpu_curate.cli import main
from gpu_curate.errors import ArgumentError, CurateError
from gpu_curate.metadata import Metadata
from gpu_curate.pipeline import Options
from gpu_curate.steps import BalanceStep
from gpu_curate.uid import position_uids, value_uids

T = 30  # small enough that many texts have only head entries (so balancing drops rows)
SEED = 7
LAION = "laion.parquet"
CC3M = "cc3m.parquet"
REPORT_KEYS = {
    "pool_rows", "matched_rows", "curated_rows", "expected_curated_rows", "t", "seed",
    "metadata_entries", "metadata_sha256", "backend", "workers", "seconds_match",
    "seconds_balance", "version",
}  # fmt: skip
LAYOUT = (
    "matched/_SUCCESS",
    "curated/_SUCCESS",
    "entry_counts.parquet",
    "entry_counts.json",
    "curated_entry_counts.parquet",
    "report.json",
)


# ----------------------------------------------------------------------------- helpers


def cli(*args, ok: bool = True):
    """Invoke ``gpu-curate ARGS`` in-process; with ok, require exit code 0."""
    argv = [str(a) for a in args]
    result = CliRunner().invoke(main, argv)
    if ok and result.exit_code != 0:
        tb = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(
            f"gpu-curate {' '.join(argv)} exited {result.exit_code}:\n{result.output}\n{tb}"
        )
    return result


def read_parts(folder: Path, columns: list[str] | None = None) -> pa.Table:
    """The parts a ``_SUCCESS`` file lists, checked against it, concatenated."""
    success = json.loads((folder / "_SUCCESS").read_text())
    listed = [p["file"] for p in success["parts"]]
    on_disk = sorted(p.name for p in folder.glob("*.parquet"))
    assert sorted(listed) == on_disk, f"{folder}: _SUCCESS lists {listed}, folder has {on_disk}"
    tables = []
    for part in success["parts"]:
        table = pq.read_table(folder / part["file"], columns=columns)
        assert table.num_rows == part["rows"], f"{folder / part['file']}: row count"
        tables.append(table.replace_schema_metadata(None))
    assert sum(t.num_rows for t in tables) == success["rows"]
    return pa.concat_tables(tables)


def curated_uids(out: Path) -> np.ndarray:
    return np.sort(read_parts(out / "curated", ["uid"]).column("uid").to_numpy())


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def csr(matches: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(matches) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(m) for m in matches])
    values = np.fromiter(chain.from_iterable(matches), dtype=np.int32, count=int(offsets[-1]))
    return offsets, values


def keep_prob(matches: list[list[int]], p: np.ndarray) -> np.ndarray:
    """1 - prod(1 - p[e]) per text, with a plain Python product (0 without entries)."""
    return np.array([1.0 - math.prod(1.0 - float(p[e]) for e in m) if m else 0.0 for m in matches])


def direct_curated(matches: list[list[int]], uids: np.ndarray, p: np.ndarray, seed: int):
    """The curated uids (sorted) by the direct array computation of DESIGN.md section 3."""
    offsets, values = csr(matches)
    mask = keep_mask(offsets, values, uids, p, seed)
    return np.sort(uids[mask])


def probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    return t / np.maximum(counts.astype(np.float64), float(t))


def chi2_sf(x: float, df: int) -> float:
    """Upper tail of the chi-square distribution (Wilson-Hilferty; no scipy here)."""
    if not math.isfinite(x):
        return 0.0
    z = ((x / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


# ----------------------------------------------------------------------------- the pool


@dataclass
class Pool:
    root: Path  # the folder given to the CLI
    metadata: Path
    entries: list[str]
    laion_rows: int
    cc3m_rows: int


@dataclass
class Reference:
    """Everything about the pool, computed without the pipeline (rows of both files)."""

    texts: list[str]
    ids: list[str]
    pos_uids: np.ndarray  # uid from (relative path, row)
    id_uids: np.ndarray  # uid from the id column
    matches: list[list[int]]
    counts: np.ndarray
    p: np.ndarray

    @property
    def matched(self) -> np.ndarray:
        return np.array([bool(m) for m in self.matches])


@pytest.fixture(scope="module")
def pool(tmp_path_factory, proxy_entries) -> Pool:
    laion = pq.read_table(shared_data(LAION_PARQUET), columns=["URL", "TEXT"])
    cc3m_path = shared_data(CC3M_TSV)
    metadata = shared_data(PROXY_METADATA)
    root = tmp_path_factory.mktemp("pool")
    # LAION's URLs are not unique (so not an id column): build one.
    urls = laion.column("URL").to_pylist()
    assert len(set(urls)) < len(urls), "LAION URLs became unique: the id column may use them"
    laion = pa.table(
        {
            "URL": laion.column("URL"),
            "TEXT": laion.column("TEXT"),
            "id": [f"laion-{i}" for i in range(laion.num_rows)],
        }
    )
    pq.write_table(laion, root / LAION, row_group_size=1000)
    assert pq.ParquetFile(root / LAION).metadata.num_row_groups == -(-laion.num_rows // 1000)
    lines = cc3m_path.read_text(encoding="utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    captions = read_cc3m_texts(cc3m_path)
    cc3m = pa.table(
        {
            "URL": [line.split("\t", 1)[1] for line in lines],
            "TEXT": captions,
            "id": [f"cc3m-{i}" for i in range(len(captions))],
        }
    )
    pq.write_table(cc3m, root / CC3M, row_group_size=1000)
    return Pool(root, metadata, proxy_entries, laion.num_rows, cc3m.num_rows)


@pytest.fixture(scope="module")
def ref(pool, proxy_reference) -> Reference:
    texts, ids, pos = [], [], []
    for rel in (CC3M, LAION):
        table = pq.read_table(pool.root / rel)
        texts += table.column("TEXT").to_pylist()
        ids += table.column("id").to_pylist()
        pos.append(position_uids(rel, 0, table.num_rows))
    matches = [proxy_reference(text) for text in texts]
    counts = np.zeros(len(pool.entries), dtype=np.int64)
    for m in matches:
        counts[m] += 1  # m holds distinct ids: a text counts once per entry
    pos_uids = np.concatenate(pos)
    id_uids = value_uids(pa.array(ids), "id")
    assert len(np.unique(pos_uids)) == len(texts) == len(np.unique(id_uids))
    return Reference(texts, ids, pos_uids, id_uids, matches, counts, probabilities(counts, T))


@pytest.fixture(scope="module")
def expected(ref) -> np.ndarray:
    """The reference curated uids (sorted) for (pool, proxy metadata, T, SEED)."""
    got = direct_curated(ref.matches, ref.pos_uids, ref.p, SEED)
    # The test is only meaningful if balancing drops a fair share of the matched texts.
    n_matched = int(ref.matched.sum())
    assert 0.5 * n_matched < len(got) < n_matched - 1000
    return got


def curate_args(pool: Pool, out: Path, *extra) -> list:
    return ["curate", pool.root, "--metadata", pool.metadata, "--out", out,
            "--t", T, "--seed", SEED, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def baseline(pool, tmp_path_factory) -> Path:
    """One default run (not quiet: the progress output runs too)."""
    out = tmp_path_factory.mktemp("runs") / "baseline"
    result = cli(*curate_args(pool, out))
    assert "curated" in result.output
    return out


# ----------------------------------------------------------------------------- 1. matching


def test_entry_counts_equal_reference(baseline, pool, ref):
    table = pq.read_table(baseline / "entry_counts.parquet")
    assert table.column_names == ["entry_id", "entry", "count"]
    assert np.array_equal(table.column("entry_id").to_numpy(), np.arange(len(pool.entries)))
    assert table.column("entry").to_pylist() == pool.entries
    counts = table.column("count").to_numpy()
    diff = np.flatnonzero(counts != ref.counts)
    assert diff.size == 0, [(pool.entries[i], int(counts[i]), int(ref.counts[i])) for i in diff[:5]]

    as_json = json.loads((baseline / "entry_counts.json").read_text(encoding="utf-8"))
    assert list(as_json) == pool.entries  # entry-id order
    assert np.array_equal(np.array(list(as_json.values())), ref.counts)

    rep = report(baseline)
    assert rep["pool_rows"] == pool.laion_rows + pool.cc3m_rows == len(ref.texts)
    assert rep["matched_rows"] == int(ref.matched.sum())
    assert rep["matches"] == int(ref.counts.sum())
    assert rep["entries_matched"] == int((ref.counts > 0).sum())
    assert rep["parts"] == 1  # two small files of one schema, packed


def test_matched_rows_are_the_reference_matches(baseline, ref):
    table = read_parts(baseline / "matched")
    assert table.schema.field("uid").type == pa.uint64()
    assert table.schema.field("entry_ids").type == pa.list_(pa.int32())
    assert table.column_names == ["URL", "TEXT", "id", "uid", "entry_ids"]
    row_of = {int(u): i for i, u in enumerate(ref.pos_uids)}
    uids = table.column("uid").to_numpy()
    assert len(np.unique(uids)) == len(uids), "duplicate uids in matched/"
    rows = [row_of.get(int(u)) for u in uids]
    assert None not in rows, "matched/ has uids that are not (file, row) uids of the pool"
    assert sorted(rows) == list(np.flatnonzero(ref.matched)), "matched rows != texts with a match"
    bad = []
    for i, text, id_, ids in zip(
        rows,
        table.column("TEXT").to_pylist(),
        table.column("id").to_pylist(),
        table.column("entry_ids").to_pylist(),
        strict=True,
    ):
        if text != ref.texts[i] or id_ != ref.ids[i] or ids != sorted(set(ids)):
            bad.append((i, text, id_, ids))
        elif ids != ref.matches[i]:
            bad.append((i, text, ids, ref.matches[i]))
    assert not bad, f"{len(bad)} matched rows differ from the reference, e.g. {bad[:3]}"


# ----------------------------------------------------------------------------- 2. curated set


def test_curated_equals_direct_computation(baseline, ref, expected):
    got = curated_uids(baseline)
    assert np.array_equal(got, expected), (
        f"curated {len(got)} rows, reference {len(expected)}; only in run: "
        f"{len(np.setdiff1d(got, expected))}, only in reference: "
        f"{len(np.setdiff1d(expected, got))}"
    )
    rep = report(baseline)
    assert rep["curated_rows"] == len(expected)
    curated = read_parts(baseline / "curated")
    assert curated.schema == read_parts(baseline / "matched").schema
    # curated_entry_counts: entry counts over the kept texts.
    kept = np.isin(ref.pos_uids, expected)
    want = np.zeros(len(ref.counts), dtype=np.int64)
    for m, k in zip(ref.matches, kept, strict=True):
        if k:
            want[m] += 1
    table = pq.read_table(baseline / "curated_entry_counts.parquet")
    assert np.array_equal(table.column("count").to_numpy(), want)


VARIANTS = {
    # name: (LAION partitions or None, extra flags)
    "4-partitions-2-workers": (4, ["--workers", 2]),
    "16-partitions": (16, []),
    "1-worker": (4, ["--workers", 1]),
    "2-processes": (16, ["--processes", "--workers", 2]),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_curated_set_invariant(variant, pool, ref, expected, baseline, tmp_path):
    k, extra = VARIANTS[variant]
    rows = -(-pool.laion_rows // k)
    assert -(-pool.laion_rows // rows) == k  # the LAION file really is cut into k parts
    out = tmp_path / "out"
    cli(*curate_args(pool, out, "--partition-rows", rows, "--quiet", *extra))
    got = curated_uids(out)
    assert np.array_equal(got, expected), (
        f"{variant}: {len(got)} curated rows vs {len(expected)} in the reference"
    )
    assert np.array_equal(got, curated_uids(baseline))
    rep = report(out)
    assert rep["parts"] == k + -(-pool.cc3m_rows // rows)
    assert rep["matched_rows"] == int(ref.matched.sum())
    # The expected size is an exact sum: the same float for any cut, not just close.
    assert rep["expected_curated_rows"] == report(baseline)["expected_curated_rows"]
    counts = pq.read_table(out / "entry_counts.parquet").column("count").to_numpy()
    assert np.array_equal(counts, ref.counts)
    if "--processes" in extra:
        assert rep["cluster"] == "local-processes" and rep["workers"] == 2
    elif "--workers" in extra:
        assert rep["threads"] == extra[extra.index("--workers") + 1]


def test_match_then_balance(pool, ref, expected, tmp_path):
    matched = tmp_path / "matched_run"
    cli("match", pool.root, "--metadata", pool.metadata, "--out", matched,
        "--partition-rows", 2500, "--quiet")  # fmt: skip
    assert not (matched / "curated").exists()
    assert (matched / "matched" / "_SUCCESS").is_file()
    counts = pq.read_table(matched / "entry_counts.parquet").column("count").to_numpy()
    assert np.array_equal(counts, ref.counts)
    assert report(matched)["matched_rows"] == int(ref.matched.sum())

    out = tmp_path / "balanced"
    cli("balance", matched, "--t", T, "--seed", SEED, "--out", out, "--workers", 1, "--quiet")
    assert not (out / "matched").exists()
    for name in LAYOUT[1:]:
        assert (out / name).is_file(), name
    assert np.array_equal(curated_uids(out), expected)
    rep = report(out)
    assert rep["pool_rows"] == len(ref.texts) and rep["t"] == T and rep["seed"] == SEED
    assert rep["curated_rows"] == len(expected)
    assert rep["text_columns"] == {"TEXT": 2}  # the matched dataset's, carried over


# ----------------------------------------------------------------------------- 3. scheduler


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the dask scheduler exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"the dask scheduler did not listen on port {port} in {timeout}s")


@pytest.fixture
def dask_cluster(tmp_path):
    """A real scheduler and two single-threaded worker processes on 127.0.0.1."""
    with _real_cluster(tmp_path, 2) as address:
        yield address


@contextlib.contextmanager
def _real_cluster(tmp_path: Path, n_workers: int):
    """``dask scheduler`` and ``n_workers`` ``dask worker`` processes (each a nanny and the
    single-threaded worker process it restarts) on 127.0.0.1; yields the address."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    logs = []

    def start(module: str, *args, name: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed in the finalizer
        logs.append(log)
        cmd = [sys.executable, "-m", f"distributed.cli.{module}", *map(str, args)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        procs.append(proc)
        return proc

    try:
        scheduler = start("dask_scheduler", "--host", "127.0.0.1", "--port", port,
                          "--no-dashboard", name="scheduler")  # fmt: skip
        _wait_port(port, scheduler, timeout=60)
        for i in range(n_workers):
            start("dask_worker", address, "--nthreads", 1, "--nworkers", 1, "--no-dashboard",
                  "--host", "127.0.0.1", "--name", f"w{i}", name=f"worker{i}")  # fmt: skip
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(n_workers, timeout=90)
        yield address
    finally:
        # Workers first: a scheduler stopped before its workers makes them wait to reconnect.
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in logs:
            log.close()


def test_scheduler_run_equals_local(dask_cluster, pool, expected, baseline, tmp_path):
    exe = Path(sys.executable).with_name("gpu-curate")
    if not exe.is_file():
        pytest.skip(f"no gpu-curate entry point next to {sys.executable}")
    out = tmp_path / "out"
    args = curate_args(pool, out, "--scheduler", dask_cluster, "--partition-rows", 2500, "--quiet")
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(out)
    assert rep["cluster"] == "scheduler" and rep["workers"] == 2
    got = curated_uids(out)
    assert np.array_equal(got, curated_uids(baseline))
    assert np.array_equal(got, expected)


def test_a_worker_restarted_mid_run_is_recovered(pool, expected, baseline, tmp_path):
    # The one worker's process is killed mid-match (as an out-of-memory kill would) and
    # its nanny starts another. The step that every part task reads was scattered, and the
    # scheduler cannot recompute scattered data: the run failed ("the Dask cluster went
    # away"). As a key of the graph it is computed again, and the run ends as any other.
    import os
    import signal

    from distributed import Client

    exe = Path(sys.executable).with_name("gpu-curate")
    if not exe.is_file():
        pytest.skip(f"no gpu-curate entry point next to {sys.executable}")
    out = tmp_path / "out"
    with _real_cluster(tmp_path, 1) as address:
        with Client(address, timeout="30s") as client:
            (pid,) = client.run(os.getpid).values()
        args = curate_args(pool, out, "--scheduler", address, "--partition-rows", 500, "--quiet")
        run = subprocess.Popen([str(exe), *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not list((out / "matched").glob("part-*.parquet")):
                assert run.poll() is None and time.monotonic() < deadline, run.stdout.read()
                time.sleep(0.01)
            os.kill(pid, signal.SIGKILL)
            at_kill = len(list((out / "matched").glob("part-*.parquet")))
            output, _ = run.communicate(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == 0, output
        with Client(address, timeout="30s") as client:
            assert list(client.run(os.getpid).values()) != [pid]  # (it was restarted)
    assert at_kill < len(list((out / "matched").glob("part-*.parquet")))  # (mid-stage)
    assert np.array_equal(curated_uids(out), curated_uids(baseline))
    assert np.array_equal(curated_uids(out), expected)


def test_a_finished_run_holds_no_temporary_file_of_a_lost_worker(tiny, tmp_path, monkeypatch):
    # A worker killed while it wrote a part leaves the part's temporary file; another
    # worker does the part again. The run finished with the file in its folder (hidden,
    # the size of a part), which only a --resume removed.
    from gpu_curate import pipeline
    from gpu_curate.io import temporary_name

    root, md = tiny
    task = pipeline._match_task

    def lost_worker_then_task(part, step, out, *args, **kwargs):
        name = pipeline.part_name(part.index, args[-1] if args else 1)
        for folder in ("matched", "matched/_parts"):
            Path(temporary_name(f"{out}/{folder}/{name}.x")).write_bytes(b"half a part")
        return task(part, step, out, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_match_task", lost_worker_then_task)
    out = tmp_path / "out"
    cli("curate", root / "pool", "--metadata", md, "--out", out, "--t", 5, "--partition-rows",
        10, "--workers", 1, "--quiet")  # fmt: skip
    assert (out / "report.json").is_file()
    assert [p.name for p in out.rglob("*") if ".tmp-" in p.name] == []


# ----------------------------------------------------------------------------- 4. statistics

N_SEEDS = 40


def _bin_chi2(freq, prob, bins, n_seeds):
    """Aggregate chi-square of kept counts against a rule's per-text probabilities."""
    chi2, worst = 0.0, 0.0
    for b in np.unique(bins):
        sel = bins == b
        exp = n_seeds * prob[sel].sum()
        var = n_seeds * (prob[sel] * (1 - prob[sel])).sum()
        z2 = (freq[sel].sum() - exp) ** 2 / max(var, 1e-12)
        chi2 += z2
        worst = max(worst, math.sqrt(z2))
    return chi2, len(np.unique(bins)), worst


def test_keep_frequency_follows_one_minus_prod(baseline, ref):
    table = read_parts(baseline / "matched", ["uid", "entry_ids"])
    uids = table.column("uid").to_numpy()
    matches = table.column("entry_ids").to_pylist()
    p = ref.p  # t / max(count, t) from the reference counts (equal to the run's, test 1)
    prob = keep_prob(matches, p)  # the rule under test
    wrong = np.array([min(sum(float(p[e]) for e in m), 1.0) for m in matches])  # min(sum p, 1)

    freq = np.zeros(len(uids), dtype=np.int64)
    masks = set()
    for seed in range(N_SEEDS):
        kept, stats, _ = BalanceStep(p, seed, "cpu").run(table)
        mask = np.isin(uids, kept.column("uid").to_numpy())
        assert stats["curated_rows"] == int(mask.sum())
        masks.add(mask.tobytes())
        freq += mask
    assert len(masks) == N_SEEDS, "different seeds gave identical curated sets"

    sure = prob == 1.0  # a text with an entry of count <= t
    assert np.array_equal(sure, np.array([any(ref.counts[e] <= T for e in m) for m in matches]))
    assert (freq[sure] == N_SEEDS).all(), "a text with a tail entry was dropped"

    unsure = ~sure
    f, q, w = freq[unsure], prob[unsure], wrong[unsure]
    assert unsure.sum() >= 1000, "too few texts with only head entries for a real test"
    edges = np.quantile(q, np.linspace(0, 1, 11)[1:-1])
    bins = np.searchsorted(edges, q, side="right")  # ~10 equally populated bins of P(keep)

    chi2, df, worst = _bin_chi2(f, q, bins, N_SEEDS)
    assert chi2_sf(chi2, df) > 1e-4, f"1 - prod(1 - p) rejected: chi2={chi2:.1f}, df={df}"
    total_z = (f.sum() - N_SEEDS * q.sum()) / math.sqrt(N_SEEDS * (q * (1 - q)).sum())
    assert abs(total_z) < 4, f"overall kept count off by z={total_z:.2f}"

    # Per text: the two-sided binomial p-value of its keep count, Bonferroni over texts.
    k = np.arange(N_SEEDS + 1)
    comb = np.array([math.comb(N_SEEDS, int(i)) for i in k], dtype=np.float64)
    pmf = comb * q[:, None] ** k * (1 - q[:, None]) ** (N_SEEDS - k)
    observed = pmf[np.arange(len(f)), f]
    pvals = np.where(pmf <= observed[:, None] * (1 + 1e-9), pmf, 0.0).sum(axis=1)
    assert pvals.min() > 1e-3 / len(f), f"a text's keep count is off (p={pvals.min():.2e})"

    # Power: the same test rejects the wrong rule min(sum p, 1) on the same draws ...
    chi2_w, df_w, _ = _bin_chi2(f, w, bins, N_SEEDS)
    assert chi2_sf(chi2_w, df_w) < 1e-6, f"min(sum p, 1) not rejected: chi2={chi2_w:.1f}"
    # ... and rejects draws that follow that rule, while accepting draws of the right one.
    rng = np.random.default_rng(0)
    chi2_sim_w, _, _ = _bin_chi2(rng.binomial(N_SEEDS, w), q, bins, N_SEEDS)
    chi2_sim_q, _, _ = _bin_chi2(rng.binomial(N_SEEDS, q), q, bins, N_SEEDS)
    assert chi2_sf(chi2_sim_w, df) < 1e-6, f"no power against min(sum p, 1): {chi2_sim_w:.1f}"
    assert chi2_sf(chi2_sim_q, df) > 1e-4, f"simulated true rule rejected: {chi2_sim_q:.1f}"


# ----------------------------------------------------------------------------- 5. always/never


def test_tail_texts_kept_unmatched_never(baseline, ref, expected):
    got = curated_uids(baseline)
    tail = np.array([any(ref.counts[e] <= T for e in m) for m in ref.matches])
    assert tail.sum() > 0
    assert np.isin(ref.pos_uids[tail], got).all(), "texts with an entry of count <= t dropped"
    assert not np.isin(ref.pos_uids[~ref.matched], got).any(), "unmatched texts curated"


def test_keep_unmatched(pool, ref, expected, tmp_path):
    out = tmp_path / "out"
    cli(*curate_args(pool, out, "--keep-unmatched", "--quiet"))
    matched = read_parts(out / "matched", ["uid", "entry_ids"])
    assert matched.num_rows == len(ref.texts)
    assert matched.column("entry_ids").null_count == 0
    lengths = np.array([len(x) for x in matched.column("entry_ids").to_pylist()])
    uids = matched.column("uid").to_numpy()
    assert np.array_equal(np.sort(uids[lengths == 0]), np.sort(ref.pos_uids[~ref.matched]))
    got = curated_uids(out)
    assert not np.isin(ref.pos_uids[~ref.matched], got).any(), "unmatched texts curated"
    assert np.array_equal(got, expected)
    rep = report(out)
    assert rep["matched_rows"] == int(ref.matched.sum())
    assert rep["pool_rows"] == len(ref.texts)


# ----------------------------------------------------------------------------- 6. CLI basics


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["curate"],
        ["match"],
        ["balance"],
        ["demo"],
        ["plan"],
        ["metadata"],
        ["metadata", "build"],
    ],  # fmt: skip
    ids=lambda c: " ".join(c) or "main",
)
def test_help(command):
    result = cli(*command, "--help")
    assert result.output.startswith("Usage: ")
    assert "--help" in result.output


def test_demo(tmp_path):
    out = tmp_path / "demo"
    result = cli("demo", "--out", out, "--rows", 2000)
    assert "head entries" in result.output
    for name in LAYOUT:
        assert (out / "result" / name).is_file(), name
    rep = report(out / "result")
    assert REPORT_KEYS <= rep.keys()
    assert rep["pool_rows"] == 2000
    assert 0 < rep["curated_rows"] <= rep["matched_rows"] <= 2000
    # demo refuses its own non-empty folder too
    again = cli("demo", "--out", out, "--rows", 2000, ok=False)
    assert again.exit_code != 0
    # ... but not one that holds only the lock file of a demo killed at its start
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / ".gpu-curate.lock").write_text("pid 1 on elsewhere since 2026-11-27\n")
    assert cli("demo", "--out", killed, "--rows", 2000).exit_code == 0
    assert not (killed / ".gpu-curate.lock").exists()
    # --overwrite replaces a demo folder, and no folder that holds anything else
    (out / "result" / "report.json").write_text("{}")
    cli("demo", "--out", out, "--rows", 1000, "--overwrite", "--quiet")
    assert report(out / "result")["pool_rows"] == 1000
    for name in ("notes.md", "result/notes.md"):
        (out / name).write_text("mine")
        mine = cli("demo", "--out", out, "--rows", 1000, "--overwrite", ok=False)
        assert f"holds what gpu-curate does not write ({name})" in mine.output
        assert (out / name).read_text() == "mine" and (out / "result" / "report.json").exists()
        (out / name).unlink()


def test_report(baseline, pool, ref, expected):
    rep = report(baseline)
    missing = REPORT_KEYS - rep.keys()
    assert not missing, f"report.json lacks {sorted(missing)}"
    assert rep["t"] == T and rep["seed"] == SEED
    assert rep["metadata_entries"] == len(pool.entries)
    blob = json.dumps(pool.entries, ensure_ascii=False, separators=(",", ":")).encode()
    assert rep["metadata_sha256"] == hashlib.sha256(blob).hexdigest()
    assert rep["backend"] == "cpu"
    assert rep["version"] == gpu_curate.__version__
    assert rep["seconds_match"] >= 0 and rep["seconds_balance"] >= 0
    assert isinstance(rep["workers"], int) and rep["workers"] >= 1
    assert rep["curated_rows"] == len(expected)
    want = math.fsum(keep_prob(ref.matches, ref.p))
    assert rep["expected_curated_rows"] == pytest.approx(want, rel=1e-12, abs=0)
    # gpu-curate plan gives the very same number for the run's t.
    from gpu_curate.planning import plan

    assert plan(baseline, T)[0]["expected_curated_rows"] == rep["expected_curated_rows"]
    # the realised size is close to the expected one (a loose sanity bound: 6 sigma)
    pk = keep_prob(ref.matches, ref.p)
    assert abs(rep["curated_rows"] - want) < 6 * math.sqrt((pk * (1 - pk)).sum()) + 1


def test_resume_completed_run(baseline, pool, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(baseline, out)
    before = report(out)
    cli(*curate_args(pool, out, "--resume", "--quiet"))
    after = report(out)
    drop = {"seconds_match", "seconds_balance"}
    assert {k: v for k, v in after.items() if k not in drop} == {
        k: v for k, v in before.items() if k not in drop
    }
    assert np.array_equal(curated_uids(out), curated_uids(baseline))
    assert read_parts(out / "matched").equals(read_parts(baseline / "matched"))
    for name in ("entry_counts.parquet", "curated_entry_counts.parquet"):
        assert pq.read_table(out / name).equals(pq.read_table(baseline / name)), name
    # a resume with other settings is refused rather than mixed in
    other = cli(*curate_args(pool, out, "--resume", "--quiet", "--keep-unmatched"), ok=False)
    assert other.exit_code != 0


def test_id_column(pool, ref, tmp_path):
    want = direct_curated(ref.matches, ref.id_uids, ref.p, SEED)
    assert not np.array_equal(want, direct_curated(ref.matches, ref.pos_uids, ref.p, SEED))
    runs = {}
    for name, extra in {"whole": [], "16-parts": ["--partition-rows", 625]}.items():
        out = tmp_path / name
        cli(*curate_args(pool, out, "--id-column", "id", "--quiet", *extra))
        matched = read_parts(out / "matched", ["id", "uid"])
        uids = matched.column("uid").to_numpy()
        assert np.array_equal(uids, value_uids(matched.column("id"), "id"))
        id_to_uid = dict(zip(ref.ids, ref.id_uids.tolist(), strict=True))
        assert uids.tolist() == [id_to_uid[i] for i in matched.column("id").to_pylist()]
        assert not np.isin(uids, ref.pos_uids).any()
        got = curated_uids(out)
        assert np.array_equal(got, want), f"--id-column id ({name}): curated set differs"
        runs[name] = got
    assert np.array_equal(runs["whole"], runs["16-parts"])


# ----------------------------------------------------------------------------- small pools


@pytest.fixture(scope="module")
def small(pool, ref, tmp_path_factory):
    """300 real texts (LAION then CC3M) and the proxy entries they match (a small metadata)."""
    laion_first = list(range(len(ref.texts) - pool.laion_rows, len(ref.texts)))[:150]
    rows = laion_first + list(range(150))  # ref rows: CC3M first, then LAION
    texts = [ref.texts[i] for i in rows]
    entries = sorted({pool.entries[e] for i in rows for e in ref.matches[i]})
    texts.append("no entry here: zzzqqq")  # an unmatched text
    texts.append(f'"{texts[0]}",\r\n{texts[1]}')  # quotes, comma, line break (CSV quoting)
    folder = tmp_path_factory.mktemp("small")
    md = folder / "metadata.json"
    md.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return texts, entries, md


def _write(folder: Path, fmt: str, texts: list[str]) -> tuple[Path, str]:
    """Write texts in a format; returns (file, name of the text column)."""
    folder.mkdir(parents=True, exist_ok=True)
    urls = [f"https://example.org/{i}.jpg" for i in range(len(texts))]
    if fmt == "jsonl":
        path = folder / "pool.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for t, u in zip(texts, urls, strict=True):
                fh.write(json.dumps({"url": u, "text": t}, ensure_ascii=False) + "\n")
        return path, "text"
    if fmt == "csv":
        path = folder / "pool.csv"
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["url", "caption"])
            writer.writerows(zip(urls, texts, strict=True))
        return path, "caption"
    if fmt == "tsv":  # CC3M's layout: caption<TAB>url, no header
        path = folder / "pool.tsv"
        clean = [" ".join(t.split("\t")).replace("\r", " ").replace("\n", " ") for t in texts]
        path.write_text("".join(f"{t}\t{u}\n" for t, u in zip(clean, urls, strict=True)))
        return path, "f0"
    path = folder / "pool.parquet"
    pq.write_table(pa.table({"url": urls, "TEXT": texts, "title": texts[::-1]}), path)
    return path, "TEXT"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_other_formats(fmt, small, tmp_path):
    texts, entries, md = small
    path, column = _write(tmp_path / "in", fmt, texts)
    if fmt == "tsv":  # a TSV line holds no tab, CR or LF inside a field
        texts = [" ".join(t.split("\t")).replace("\r", " ").replace("\n", " ") for t in texts]
    t = 2
    out = tmp_path / "out"
    cli("curate", path, "--metadata", md, "--out", out, "--t", t, "--seed", SEED, "--quiet")
    matches = [reference_match(text, entries) for text in texts]  # the literal definition
    counts = np.zeros(len(entries), dtype=np.int64)
    for m in matches:
        counts[m] += 1
    got_counts = pq.read_table(out / "entry_counts.parquet").column("count").to_numpy()
    assert np.array_equal(got_counts, counts)
    uids = position_uids(path.name, 0, len(texts))
    matched = read_parts(out / "matched")
    assert column in matched.column_names
    row_of = {int(u): i for i, u in enumerate(uids)}
    rows = [row_of[int(u)] for u in matched.column("uid").to_numpy()]
    assert rows == [i for i, m in enumerate(matches) if m]
    assert matched.column(column).to_pylist() == [texts[i] for i in rows]
    assert matched.column("entry_ids").to_pylist() == [matches[i] for i in rows]
    want = direct_curated(matches, uids, probabilities(counts, t), SEED)
    assert np.array_equal(curated_uids(out), want)
    assert 0 < len(want) < len(rows)
    assert report(out)["pool_rows"] == len(texts)


def test_text_column_selection(small, tmp_path):
    texts, entries, md = small
    path, _ = _write(tmp_path / "in", "parquet", texts)
    base = ["curate", path, "--metadata", md, "--seed", SEED, "--t", 2, "--quiet"]
    # --text-column names another column: the matches are those of that column.
    out = tmp_path / "title"
    cli(*base, "--out", out, "--text-column", "title")
    titles = texts[::-1]
    want = [x for x in titles if reference_match(x, entries)]
    matched = read_parts(out / "matched")
    assert matched.column("title").to_pylist() == want
    assert matched.column("entry_ids").to_pylist() == [reference_match(x, entries) for x in want]
    assert report(out)["matched_rows"] == len(want)
    # a missing --text-column: one-line error listing the columns, nothing curated
    bad = cli(*base, "--out", tmp_path / "bad", "--text-column", "nope", ok=False)
    assert bad.exit_code == 2, bad.output
    message = bad.output.strip()
    assert "\n" not in message and "nope" in message, message
    for column in ("url", "TEXT", "title"):
        assert column in message, message
    assert not (tmp_path / "bad" / "report.json").exists()
    # no known text column: the error names the columns and --text-column
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"desc": texts, "url": texts}), other)
    bad = cli("curate", other, "--metadata", md, "--out", tmp_path / "bad2", "--quiet", ok=False)
    assert bad.exit_code == 2
    assert "desc" in bad.output and "--text-column" in bad.output, bad.output


def test_compression_option(small, tmp_path):
    texts, entries, md = small
    path, _ = _write(tmp_path / "in", "parquet", texts)
    base = ["--metadata", md, "--t", 2, "--seed", SEED, "--quiet"]
    cli("curate", path, *base, "--out", tmp_path / "zstd")
    assert parquet_codecs(tmp_path / "zstd" / "matched") == {"ZSTD"}
    want = curated_uids(tmp_path / "zstd")
    assert 0 < len(want)
    for codec, stored in (("lz4", {"LZ4", "LZ4_RAW"}), ("none", {"UNCOMPRESSED"})):
        out = tmp_path / codec
        cli("curate", path, *base, "--out", out, "--compression", codec)
        for folder in ("matched", "curated"):
            codecs = parquet_codecs(out / folder)
            assert codecs and codecs <= stored, (codec, folder)
        assert np.array_equal(curated_uids(out), want)
        assert read_parts(out / "matched").equals(read_parts(tmp_path / "zstd" / "matched"))
    # balance writes its curated parts with its own --compression
    out = tmp_path / "rebalanced"
    cli("balance", tmp_path / "lz4", "--t", 2, "--seed", SEED, "--out", out,
        "--compression", "snappy", "--quiet")  # fmt: skip
    assert parquet_codecs(out / "curated") == {"SNAPPY"}
    assert np.array_equal(curated_uids(out), want)
    bad = cli("curate", path, *base, "--out", tmp_path / "bad", "--compression", "brotli", ok=False)
    assert bad.exit_code == 2 and "brotli" in bad.output
    with pytest.raises(CurateError, match="unknown compression 'gzip'"):
        Options(compression="gzip")


def test_errors_name_options_as_the_caller_spells_them(small, tmp_path):
    # (A notebook was told "use --overwrite" where it passes overwrite=True.)
    texts, entries, md = small
    path, _ = _write(tmp_path / "in", "jsonl", texts)
    out = tmp_path / "full"
    out.mkdir()
    (out / "x").write_text("not a run")
    said = f"output folder {out} exists and is not empty (use %s to replace it or %s to continue"
    with pytest.raises(CurateError) as caught:
        gpu_curate.curate([str(path)], md, str(out))
    assert str(caught.value).startswith(said % ("overwrite=True", "resume=True"))
    r = cli("curate", path, "--metadata", md, "--out", out, ok=False)
    assert r.exit_code == 2
    assert r.output.startswith("gpu-curate: error: " + said % ("--overwrite", "--resume")), r.output


def test_a_worker_process_leaves_the_spelling_to_the_process_that_shows_it():
    # A local cluster's worker process keeps the marks (its preload says so), so what it
    # raises reads as the CLI's flags in the CLI and as arguments in a notebook.
    import pickle

    from gpu_curate.errors import OVERWRITE, cannot_read, first_line, spelled

    with spelled("kept"):
        raised = CurateError(f"uid file u.npy is missing; use {OVERWRITE}")
        wrapped = cannot_read("part 3", raised)  # (first_line keeps the marks)
        sent = pickle.dumps([raised, wrapped])
    with spelled("cli"):
        assert [str(e) for e in pickle.loads(sent)] == [
            "uid file u.npy is missing; use --overwrite",
            "cannot read part 3: uid file u.npy is missing; use --overwrite",
        ]
    assert str(pickle.loads(sent)[1]) == (
        "cannot read part 3: uid file u.npy is missing; use overwrite=True"
    )
    assert first_line(pickle.loads(sent)[0]) == "uid file u.npy is missing; use overwrite=True"


def test_the_api_checks_its_options_as_the_cli_checks_its_flags(small, tmp_path):
    # Options(partition_rows=-5) curated a pool of zero parts and reported success, and
    # overwrite=True with resume=True deleted the run that was to be resumed.
    texts, entries, md = small
    path, _ = _write(tmp_path / "in", "jsonl", texts)
    for kw, message in [
        # (Named as a Python caller passes them; the CLI names its flags: see
        # test_errors_name_options_as_the_caller_spells_them.)
        ({"partition_rows": -5}, "partition_rows must be a whole number of at least 1, got -5"),
        ({"partition_rows": 0}, "partition_rows must be a whole number of at least 1, got 0"),
        ({"partition_rows": "100"}, "partition_rows must be a whole number"),
        ({"workers": "2"}, "workers must be a whole number of at least 1, got '2'"),
        ({"workers": True}, "workers must be a whole number"),
        ({"overwrite": True, "resume": True}, "overwrite=True and resume=True exclude each other"),
        ({"format": "txt"}, "unknown format 'txt'"),
        ({"backend": "cuda"}, "unknown backend 'cuda'"),
        # (Both were ignored: the run went on the scheduler's workers, as they were.)
        ({"scheduler": "tcp://h:8786", "workers": 3}, "workers shapes a local cluster"),
        ({"scheduler": "tcp://h:8786", "processes": True}, "processes=True shapes a local cluster"),
        # (Any truthy value was True: overwrite="False" replaced a finished run.)
        ({"overwrite": "False"}, "overwrite must be True or False, got 'False'"),
        ({"quiet": 1}, "quiet must be True or False, got 1"),
        ({"processes": "no"}, "processes must be True or False, got 'no'"),
        ({"text_column": 3}, "text_column must be a column's name (a str), got 3"),
        ({"scheduler": 8786}, "scheduler must be a Dask scheduler's address (a str), got 8786"),
        ({"echo": None}, "echo must be a function of one str, got None"),
        ({"scheduler": " "}, "scheduler is empty: give the scheduler's address"),
    ]:
        with pytest.raises(CurateError, match=re.escape(message)):
            Options(**kw)
    assert Options(overwrite=np.True_).overwrite is True
    # Paths and flags of the functions themselves (a path of None failed inside fsspec;
    # bytes were read as a list of numbers: "input not found: 47").
    o = str(tmp_path / "o")
    for call, message in [
        (lambda: gpu_curate.curate(None, md, o), "inputs must be a path or a list of paths"),
        (lambda: gpu_curate.curate(b"pool", md, o), "inputs must be a path (a str or os.Path"),
        (lambda: gpu_curate.curate([str(path)], md, None), "out must be a path (a str or os.P"),
        (lambda: gpu_curate.curate([str(path)], md, o, t=np.True_), "t must be a number"),
        (lambda: gpu_curate.curate([str(path)], md, o, match_only="no"), "match_only must be "),
        (lambda: gpu_curate.balance_matched(None, o, 5), "matched_dir must be a path"),
        (lambda: gpu_curate.plan(5, [2.0]), "matched_dir must be a path"),
    ]:
        with pytest.raises(ArgumentError, match=re.escape(message)):
            call()
    assert not (tmp_path / "o").exists()
    assert Options(workers=np.int64(2), partition_rows=np.int32(7)).partition_rows == 7
    assert Options(partition_rows=5e3).partition_rows == 5000  # (a float without fraction)
    for bad in (2.5, float("inf")):
        with pytest.raises(CurateError, match="^partition_rows must be a whole number"):
            Options(partition_rows=bad)
    with pytest.raises(TypeError, match=r"options must be a gpu_curate.Options .*got dict"):
        gpu_curate.curate([str(path)], md, str(tmp_path / "o"), options={"overwrite": True})
    for t in (True, "20000"):
        with pytest.raises(CurateError, match="t must be a number"):
            gpu_curate.curate([str(path)], md, str(tmp_path / "o"), t=t)
    # A seed is refused as text as t is (the CLI parses its own), and with the same class.
    for seed, message in ((True, "got bool"), ("5", "got str"), (1.0, "got float")):
        with pytest.raises(ArgumentError, match=f"seed must be an integer, {message}"):
            gpu_curate.curate([str(path)], md, str(tmp_path / "o"), seed=seed)
        with pytest.raises(ArgumentError, match=f"seed must be an integer, {message}"):
            gpu_curate.balance_matched(str(tmp_path / "none"), str(tmp_path / "o"), 5, seed)
    for seed in (-1, 2**64):
        with pytest.raises(ArgumentError, match=r"seed must be in \[0, 2\*\*64\)"):
            gpu_curate.curate([str(path)], md, str(tmp_path / "o"), seed=seed)
    assert not (tmp_path / "o").exists()
    # The metadata as a list of entries, as the dataframe API takes it.
    opts = Options(quiet=True, backend="cpu")
    by_list = gpu_curate.curate([str(path)], entries, str(tmp_path / "list"), 2, SEED, opts)
    by_path = gpu_curate.curate([str(path)], md, str(tmp_path / "path"), 2, SEED, opts)
    assert by_list["metadata_sha256"] == by_path["metadata_sha256"]
    assert np.array_equal(curated_uids(tmp_path / "list"), curated_uids(tmp_path / "path"))


def test_non_empty_out_refused_unless_overwrite(small, tmp_path):
    texts, entries, md = small
    path, _ = _write(tmp_path / "in", "jsonl", texts)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("do not delete")
    base = ["curate", path, "--metadata", md, "--out", out, "--t", 2, "--quiet"]
    for command in (base, ["match", *base[1:-3], "--quiet"]):
        refused = cli(*command, ok=False)
        assert refused.exit_code != 0
        message = refused.output.strip()
        assert message and "\n" not in message, f"not one line: {message!r}"
        assert "--overwrite" in message
        assert (out / "precious.txt").read_text() == "do not delete"
        assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    both = cli(*base, "--overwrite", "--resume", ok=False)
    assert both.exit_code != 0
    # --overwrite replaces what gpu-curate wrote, never a file of someone else's.
    foreign = cli(*base, "--overwrite", ok=False)
    assert foreign.output.strip() == (
        f"gpu-curate: error: --overwrite would delete {out}, which holds what gpu-curate does "
        "not write (precious.txt): move that away or choose another --out"
    )
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    (out / "precious.txt").unlink()
    cli(*base)  # (then report/ of `gpu-curate report` beside the run)
    cli("report", out)
    cli("report", out, "--out-html", out / "page.html", "--no-sweep")
    (out / "report.json").write_text("{}")  # (so that the new run's is seen to replace it)
    # What gpu-curate writes into a run folder too: a balance of it (a run of its own), the
    # temporary of a report page a killed `report` left.
    cli("balance", out, "--out", out / "t3", "--t", 3, "--quiet")
    (out / ".r.html.4242.0123abcd.tmp").write_text("<html")
    # ... but not a file of someone else's in that inner run, nor a page of theirs.
    for mine in (out / "t3" / "notes.txt", out / "notes.htm"):
        mine.write_text("<html>mine")
        refused = cli(*base, "--overwrite", ok=False)
        assert f"does not write ({mine.relative_to(out)})" in refused.output, refused.output
        mine.unlink()
    cli(*base, "--overwrite")
    for name in LAYOUT:
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text())["t"] == 2
    assert not (out / "report").exists() and not (out / "t3").exists()
    assert not (out / "page.html").exists()


def test_overwrite_keeps_the_old_result_when_the_inputs_are_refused(small, tmp_path):
    # The columns of every input are checked before --overwrite empties the folder: a
    # mistyped column (or format) is refused with the previous result still there.
    texts, entries, md = small
    path, _ = _write(tmp_path / "in", "jsonl", texts)
    out = tmp_path / "out"
    base = ["curate", path, "--metadata", md, "--out", out, "--t", 2, "--quiet"]
    cli(*base)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    refused = cli(*base, "--overwrite", "--text-column", "txet", ok=False)
    assert refused.exit_code == 2
    assert "text column 'txet'" in refused.output, refused.output
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    # The same for a compressed TSV file, and for one cut into ranges of rows.
    tsv = tmp_path / "tsv"
    tsv.mkdir()
    clean = [" ".join(t.split()) or "a dog" for t in texts]  # (one TSV line each)
    lines = "".join(f"{t}\thttps://x/{i}.jpg\n" for i, t in enumerate(clean)).encode()
    (tsv / "a.tsv.gz").write_bytes(gzip.compress(lines))
    (tsv / "b.tsv").write_bytes(lines)
    for extra in (["--text-column", "txet"], ["--text-column", "txet", "--partition-rows", 3]):
        refused = cli(*base[:1], tsv, *base[2:], "--overwrite", *extra, ok=False)
        assert refused.exit_code == 2 and "text column 'txet'" in refused.output, refused.output
        assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    # (And a new folder is not even created.)
    fresh = tmp_path / "fresh"
    cli("curate", path, "--metadata", md, "--out", fresh, "--text-column", "txet", ok=False)
    assert not fresh.exists()


def test_csv_header_with_custom_text_column(small, tmp_path):
    """A CSV whose header names the text column ``description`` (not a default name)."""
    texts, entries, md = small
    path = tmp_path / "in" / "pool.csv"
    path.parent.mkdir()
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "description"])
        writer.writerows((f"u{i}", t) for i, t in enumerate(texts))
    out = tmp_path / "out"
    cli("curate", path, "--metadata", md, "--out", out, "--t", 2, "--quiet",
        "--text-column", "description")  # fmt: skip
    matched = read_parts(out / "matched")
    assert matched.column_names[:2] == ["url", "description"]
    want = [t for t in texts if reference_match(t, entries)]
    assert matched.column("description").to_pylist() == want
    assert report(out)["pool_rows"] == len(texts)


def test_large_csv_with_line_breaks_in_captions(tmp_path):
    """A valid CSV bigger than one 16 MiB read block, every caption quoted over two lines."""
    entries = ["red dog", "mat", "dog"]
    md = tmp_path / "metadata.json"
    md.write_text(json.dumps(entries))
    n = 280_000  # ~18 MB
    captions = [f'a red dog,\non a "mat" {i}' for i in range(n)]
    path = tmp_path / "pool.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "caption"])
        writer.writerows((f"https://example.org/{i}.jpg", c) for i, c in enumerate(captions))
    assert path.stat().st_size > 17 * 2**20
    out = tmp_path / "out"
    cli("curate", path, "--metadata", md, "--out", out, "--t", n // 2, "--quiet")
    rep = report(out)
    assert rep["pool_rows"] == rep["matched_rows"] == n
    counts = pq.read_table(out / "entry_counts.parquet").column("count").to_pylist()
    # '"mat"' keeps its quotes, so " mat " is in no caption: the reference says so too.
    want = [0] * len(entries)
    for c in captions:
        for e in reference_match(c, entries):
            want[e] += 1
    assert want == [n, 0, n]
    assert counts == want
    matched = read_parts(out / "matched", ["caption"])
    assert matched.column("caption").to_pylist() == captions


def test_each_part_is_matched_and_balanced_once(tmp_path, monkeypatch):
    # A graph optimisation once fused every part task into the counts array's chunks under
    # new keys, so each part was matched and written twice (right result, double work).
    import gpu_curate.pipeline as pipeline_mod
    import gpu_curate.steps as steps_mod
    from gpu_curate.pipeline import Options, curate

    pool = tmp_path / "pool"
    pool.mkdir()
    for f in range(3):
        pq.write_table(
            pa.table({"TEXT": [f"a dog {i}" if i % 3 else f"cat {i}" for i in range(50)]}),
            pool / f"p{f}.parquet",
        )
    matched_calls, balanced_calls = [], []
    real_match = steps_mod.match_arrow
    real_balance = pipeline_mod.BalanceStep.run

    def count_match(texts, *args, **kw):
        matched_calls.append(len(texts))
        return real_match(texts, *args, **kw)

    def count_balance(self, table):
        balanced_calls.append(table.num_rows)
        return real_balance(self, table)

    monkeypatch.setattr(steps_mod, "match_arrow", count_match)
    monkeypatch.setattr(pipeline_mod.BalanceStep, "run", count_balance)
    opts = Options(quiet=True, backend="cpu", workers=2, partition_rows=20)
    report = curate([str(pool)], Metadata(["dog", "cat"]), str(tmp_path / "out"), 5, 0, opts)
    assert report["parts"] == 9  # 3 files x ceil(50 / 20)
    assert sorted(matched_calls) == sorted([20, 20, 10] * 3)
    assert len(balanced_calls) == 9 and sum(balanced_calls) == report["matched_rows"]
    # Packed (the three files in one part of up to 200 rows): one match for the part, not
    # one per file (on the gpu backend, one device call).
    matched_calls.clear()
    opts = Options(quiet=True, backend="cpu", workers=2, partition_rows=200)
    packed = curate([str(pool)], Metadata(["dog", "cat"]), str(tmp_path / "packed"), 5, 0, opts)
    assert packed["parts"] == 1
    assert matched_calls == [150]
    for key in ("pool_rows", "matched_rows", "curated_rows"):
        assert packed[key] == report[key], key
    counts = [pq.read_table(tmp_path / d / "entry_counts.parquet") for d in ("out", "packed")]
    assert counts[0].equals(counts[1])


def _largest_tables(monkeypatch) -> dict[str, list[int]]:
    """Record the rows of every table that the match and balance steps get."""
    import gpu_curate.steps as steps_mod

    seen: dict[str, list[int]] = {"match": [], "balance": []}
    match, run = steps_mod.MatchStep.match, steps_mod.BalanceStep.run

    def counted_match(self, table, *args):
        seen["match"].append(table.num_rows)
        return match(self, table, *args)

    def counted_run(self, table):
        seen["balance"].append(table.num_rows)
        return run(self, table)

    monkeypatch.setattr(steps_mod.MatchStep, "match", counted_match)
    monkeypatch.setattr(steps_mod.BalanceStep, "run", counted_run)
    return seen


def test_a_big_tsv_file_is_matched_and_balanced_in_bounded_tables(
    tmp_path, monkeypatch, cc3m_texts
):
    # A CSV file is one part whatever its size, and so is a compressed TSV file (or here,
    # one below the size to cut it at): it must be read as a stream, and its matched part
    # balanced a few row groups at a time, or memory grows with the file. Here 15,833
    # CC3M rows in tables of ~1,500.
    from collections import Counter

    from conftest import AhoCorasickReference

    import gpu_curate.io as io_mod
    import gpu_curate.pipeline as pipeline_mod

    pool = tmp_path / "pool"
    pool.mkdir()
    shutil.copy(shared_data(CC3M_TSV), pool / "cc3m.tsv")
    words = Counter(w for t in cc3m_texts for w in t.split() if w.isalpha())
    entries = [w for w, _ in words.most_common(300)] + ["the sun", "a man", "on the beach"]
    (tmp_path / "md.json").write_text(json.dumps(entries))
    args = ["--metadata", tmp_path / "md.json", "--t", 40, "--seed", 3, "--backend", "cpu",
            "--quiet"]  # fmt: skip
    cli("curate", pool, "--out", tmp_path / "whole", *args)
    seen = _largest_tables(monkeypatch)
    monkeypatch.setattr(io_mod, "_CSV_BLOCK", 1 << 16, raising=False)
    monkeypatch.setattr(io_mod, "PART_ROWS", 1500)
    monkeypatch.setattr(pipeline_mod, "PART_ROWS", 1500, raising=False)
    cli("curate", pool, "--out", tmp_path / "batched", *args)

    n = len(cc3m_texts)
    assert sum(seen["match"]) == n and len(seen["match"]) >= 8, seen["match"]
    # (A table grows by the reader's 64 kB blocks, ~400 rows, past 1,500.)
    assert max(seen["match"]) <= 2500, seen["match"]
    part = tmp_path / "batched" / "matched" / "part-00000.parquet"
    assert pq.ParquetFile(part).metadata.num_row_groups == len(seen["match"])
    assert len(seen["balance"]) >= 8 and max(seen["balance"]) <= 2500, seen["balance"]

    reference = AhoCorasickReference(entries)
    want = np.zeros(len(entries), np.int64)
    for text in cc3m_texts:
        want[reference(text)] += 1
    reports = {}
    for run in ("whole", "batched"):
        out = tmp_path / run
        counts = pq.read_table(out / "entry_counts.parquet").column("count").to_numpy()
        np.testing.assert_array_equal(counts, want, err_msg=run)
        reports[run] = json.loads((out / "report.json").read_text())
    for key in ("pool_rows", "matched_rows", "curated_rows", "expected_curated_rows"):
        assert reports["batched"][key] == reports["whole"][key], key
    assert reports["whole"]["pool_rows"] == n
    whole, batched = (read_parts(tmp_path / r / "curated") for r in ("whole", "batched"))
    assert batched.sort_by("uid").equals(whole.sort_by("uid"))
    for name in ("entry_counts.parquet", "curated_entry_counts.parquet"):
        a, b = (pq.read_table(tmp_path / r / name) for r in ("whole", "batched"))
        assert a.equals(b), name


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_a_big_text_file_is_cut_into_ranges_with_the_whole_files_uids(
    tmp_path, monkeypatch, cc3m_texts, fmt
):
    # CC12M is one 2.6 GB TSV file: one part, matched by one core. Cut into ranges of
    # about --partition-rows rows, matched in parallel, its rows keep their numbers in the
    # file: the matched rows and uids (in order), the counts and the curated set are those
    # of the file read whole. (A JSON Lines file is cut where it would be streamed: above
    # 512 MiB, here 0.)
    from conftest import AhoCorasickReference

    import gpu_curate.io as io_mod

    pool = tmp_path / "pool"
    pool.mkdir()
    name, column = f"cc3m.{fmt}", "f0" if fmt == "tsv" else "caption"
    if fmt == "tsv":
        shutil.copy(shared_data(CC3M_TSV), pool / name)
    elif fmt == "csv":  # (captions with commas or quotes quoted, some with a line break)
        with open(pool / name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["caption", "n"])
            writer.writerows([t if i % 97 else f"{t}\nsecond line", i]
                             for i, t in enumerate(cc3m_texts))  # fmt: skip
        cc3m_texts = [t if i % 97 else f"{t}\nsecond line" for i, t in enumerate(cc3m_texts)]
    else:
        rows = ({"caption": t, "n": i, "score": i / 4} for i, t in enumerate(cc3m_texts))
        (pool / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    entries = ["dog", "a man", "the beach", "city", "on the", "of"]
    (tmp_path / "md.json").write_text(json.dumps(entries))
    args = ["--metadata", tmp_path / "md.json", "--t", 30, "--seed", 5, "--backend", "cpu",
            "--workers", 2]  # fmt: skip
    cli("curate", pool, "--out", tmp_path / "whole", "--quiet", *args)
    monkeypatch.setattr(io_mod, "JSON_STREAM_BYTES", 0)
    r = cli("curate", pool, "--out", tmp_path / "cut", "--partition-rows", 2000, *args)
    reports = {run: json.loads((tmp_path / run / "report.json").read_text()) for run in
               ("whole", "cut")}  # fmt: skip
    parts = reports["cut"]["parts"]
    assert reports["whole"]["parts"] == 1 and 7 <= parts <= 9, parts
    assert f"counting the rows of 1 big text file, in {parts} ranges" in r.output
    for key in ("pool_rows", "matched_rows", "curated_rows", "expected_curated_rows"):
        assert reports["cut"][key] == reports["whole"][key], key
    n = len(cc3m_texts)
    reference = AhoCorasickReference(entries)
    matched_rows = [i for i, text in enumerate(cc3m_texts) if reference(text)]
    want_uids = position_uids(name, 0, n)[matched_rows]
    for run in ("whole", "cut"):
        matched = read_parts(tmp_path / run / "matched", [column, "uid"])
        assert matched.column(column).to_pylist() == [cc3m_texts[i] for i in matched_rows], run
        np.testing.assert_array_equal(matched.column("uid").to_numpy(), want_uids, err_msg=run)
    whole, cut = (read_parts(tmp_path / r / "curated") for r in ("whole", "cut"))
    assert cut.equals(whole)
    for name in ("entry_counts.parquet", "curated_entry_counts.parquet"):
        a, b = (pq.read_table(tmp_path / r / name) for r in ("whole", "cut"))
        assert a.equals(b), name

    # A resume counts the rows again, finds the same ranges and keeps the finished parts.
    part = tmp_path / "cut" / "matched" / "part-00003.parquet"
    written = part.stat().st_mtime_ns
    (tmp_path / "cut" / "report.json").unlink()
    cli("curate", pool, "--out", tmp_path / "cut", "--partition-rows", 2000, "--resume",
        "--quiet", *args)  # fmt: skip
    assert part.stat().st_mtime_ns == written
    assert read_parts(tmp_path / "cut" / "curated").equals(whole)


def test_small_csv_and_tsv_files_are_packed_by_their_columns(tmp_path, monkeypatch):
    # A pool of small text shards was one part (one task, one output file a stage) a
    # file. Files of one set of columns that follow each other share a part now; the
    # rows, their uids and the curated set are those of one part a file.
    pool = tmp_path / "pool"
    pool.mkdir()
    texts = ["a dog", "new york cat", "the cat", "dog and cat", "a tree"]

    def rows(f: int, sep: str) -> str:
        return "".join(f"{texts[(f + i) % 5]} {f}-{i}{sep}{f * 10 + i}\n" for i in range(10))

    for f in range(6):
        (pool / f"a{f}.csv").write_text("text,id\n" + rows(f, ","))
    for f in range(6, 9):
        (pool / f"b{f}.tsv").write_text(rows(f, "\t"))  # (no header: f0, f1)
    (pool / "c9.csv").write_text("caption\n" + "".join(f"a dog {i}\n" for i in range(10)))
    for f in range(10, 12):
        (pool / f"d{f}.csv").write_text("text,id\n" + rows(f, ","))
    (tmp_path / "md.json").write_text(json.dumps(["dog", "cat", "new york"]))
    args = ["curate", pool, "--metadata", tmp_path / "md.json", "--t", 4, "--seed", 1,
            "--backend", "cpu", "--quiet"]  # fmt: skip
    runs = packed_and_apart(monkeypatch, tmp_path, args)
    # a0-a5 | b6-b8 | c9 | d10-d11 (c9's columns end the pack of a*)
    assert runs["packed"]["parts"] == 4, runs["packed"]
    assert runs["apart"]["parts"] == 12
    assert runs["packed"]["pool_rows"] == 120
    packed = read_parts(tmp_path / "packed" / "matched", ["uid"])
    # By hand: every row matches but those of "a tree"; the uids of (file, row number).
    names = [f"a{f}.csv" for f in range(6)] + [f"b{f}.tsv" for f in range(6, 9)]
    names += ["c9.csv", "d10.csv", "d11.csv"]
    want = []
    for name in names:
        f = int(name[1:].split(".")[0])
        kept = [i for i in range(10) if name == "c9.csv" or texts[(f + i) % 5] != "a tree"]
        want.extend(position_uids(name, 0, 10)[kept].tolist())
    assert packed.column("uid").to_pylist() == want


def packed_and_apart(monkeypatch, tmp_path: Path, args: list) -> dict:
    """report.json of ``gpu-curate ARGS --out DIR`` run twice: packing small text files
    (DIR ``packed``) and making a part of each (``apart``, as before packing), checked to
    agree in their figures, matched and curated rows (uids and entry ids: the parts'
    columns may differ) and entry counts."""
    import gpu_curate.io as io_mod
    import gpu_curate.pipeline as pipeline_mod

    runs = {}
    with monkeypatch.context() as m:
        for name in ("packed", "apart"):
            if name == "apart":
                for module in (pipeline_mod, io_mod):
                    m.setattr(module, "packs_text", lambda f, rows: False)
            cli(*args, "--out", tmp_path / name)
            runs[name] = json.loads((tmp_path / name / "report.json").read_text())
    for key in ("pool_rows", "matched_rows", "curated_rows", "expected_curated_rows"):
        assert runs["packed"][key] == runs["apart"][key], key
    for folder in ("matched", "curated"):
        a, b = (read_parts(tmp_path / r / folder, ["uid", "entry_ids"]) for r in runs)
        assert a.equals(b), folder
    for name in ("entry_counts.parquet", "curated_entry_counts.parquet"):
        a, b = (pq.read_table(tmp_path / r / name) for r in runs)
        assert a.equals(b), name
    return runs


def test_small_jsonl_files_are_packed_by_their_column_types(tmp_path, monkeypatch):
    # A JSON Lines file's column types are known once it is read whole: small ones are
    # read when the run is planned, and those of one schema that follow each other share a
    # part. Each file keeps the types of its own read (j4's ids are doubles), and the rows,
    # uids and curated set are those of one part a file.
    import gzip

    import gpu_curate.pipeline as pipeline_mod

    pool = tmp_path / "pool"
    pool.mkdir()
    texts = ["a dog", "new york cat", "the cat", "a tree"]

    def lines(f: int, ids=True) -> str:
        rows = []
        for i in range(5):
            row = {"text": f"{texts[(f + i) % 4]} {f}-{i}"}
            if ids:
                row["id"] = 1.5 + f * 10 + i if f == 4 else f * 10 + i
            rows.append(json.dumps(row) + "\n")
        return "".join(rows)

    for f in (0, 1, 2, 3, 4, 5, 6):
        (pool / f"j{f}.jsonl").write_text(lines(f))
    (pool / "j7.jsonl").write_text(lines(7, ids=False))
    (pool / "j7b.jsonl").write_text("\n\n")  # (blank lines: no rows, a text column)
    (pool / "j8.jsonl.gz").write_bytes(gzip.compress(lines(8).encode()))
    (tmp_path / "md.json").write_text(json.dumps(["dog", "cat", "new york"]))
    args = ["curate", pool, "--metadata", tmp_path / "md.json", "--t", 3, "--seed", 2,
            "--backend", "cpu", "--quiet"]  # fmt: skip
    runs = packed_and_apart(monkeypatch, tmp_path, args)
    # j0-j3 | j4 (double ids) | j5-j6 | j7, j7b (text only) | j8 (after them)
    assert runs["packed"]["parts"] == 5, runs["packed"]
    assert runs["apart"]["parts"] == 10
    assert runs["packed"]["pool_rows"] == 45
    for name in runs:
        matched = read_parts(tmp_path / name / "matched", ["uid", "entry_ids"])
        # (By hand: each row but those of "a tree"; uids of (file, row number).)
        want = []
        for f in ("j0", "j1", "j2", "j3", "j4", "j5", "j6", "j7", "j8"):
            rel = f"{f}.jsonl.gz" if f == "j8" else f"{f}.jsonl"
            n = int(f[1:])
            kept = [i for i in range(5) if texts[(n + i) % 4] != "a tree"]
            want.extend(position_uids(rel, 0, 5)[kept].tolist())
        assert matched.column("uid").to_pylist() == want, name
        parts = sorted((tmp_path / name / "matched").glob("part-*.parquet"))
        schemas = [pq.read_schema(p) for p in parts]
        types = [str(s.field("id").type) if "id" in s.names else "-" for s in schemas]
        if name == "packed":
            assert types == ["int64", "double", "int64", "-", "int64"], types
        else:
            assert types == ["int64"] * 4 + ["double", "int64", "int64", "-", "-", "int64"]
    assert read_parts(tmp_path / "packed" / "curated", ["uid"]).num_rows > 0

    # A file of a pack whose types change after the run was planned stops the run.
    real = pipeline_mod._json_layouts

    def then_changed(*a, **k):
        layouts = real(*a, **k)
        (pool / "j1.jsonl").write_text(lines(4))  # (ids now doubles)
        return layouts

    monkeypatch.setattr(pipeline_mod, "_json_layouts", then_changed)
    bad = cli(*args, "--out", tmp_path / "changed", ok=False)
    assert bad.exit_code == 2, bad.output
    assert "j1.jsonl changed during the run: it held 177 bytes when the run" in bad.output
    # (Rewritten to the same size, it is its columns that tell.)
    import gpu_curate.io as io_mod

    monkeypatch.setattr(io_mod, "_check_size", lambda f, local_only=False: None)
    (pool / "j1.jsonl").write_text(lines(1))
    bad = cli(*args, "--out", tmp_path / "changed2", ok=False)
    assert bad.exit_code == 2, bad.output
    assert "j1.jsonl changed during the run: its columns are no longer those of" in bad.output


def test_small_jsonl_files_are_read_for_their_columns_by_tasks(tmp_path, monkeypatch):
    # Read on the client, a remote pool's small files would all be fetched there (and
    # again by their parts' tasks): tasks on the cluster read them, some 256 a task.
    import threading

    import gpu_curate.pipeline as pipeline_mod

    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(300):
        (pool / f"s{i:03d}.jsonl").write_text(f'{{"text": "a dog {i}"}}\n')
    (tmp_path / "md.json").write_text(json.dumps(["dog"]))
    log = tmp_path / "calls.txt"  # (the task is pickled, with a copy of any list here)
    real = pipeline_mod._layouts_of

    def layouts_of(files, *a):
        with open(log, "a") as fh:
            fh.write(f"{len(files)} {threading.current_thread() is threading.main_thread()}\n")
        return real(files, *a)

    monkeypatch.setattr(pipeline_mod, "_layouts_of", layouts_of)
    r = cli("match", pool, "--metadata", tmp_path / "md.json", "--out", tmp_path / "out",
            "--backend", "cpu")  # fmt: skip
    assert sorted(log.read_text().splitlines()) == ["256 False", "44 False"]
    assert "reading the columns of 300 small JSON Lines files" in r.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["parts"] == 1


def test_packs_of_compressed_jsonl_files_hold_their_rows_not_an_estimate(tmp_path):
    # A pack of .jsonl.gz files was sized by 4x their compressed bytes: 10 files of 50k
    # rows (2 KB each) made one part of 500k rows where --partition-rows asked for 5k.
    # Planning reads each file whole, so it packs by the rows it counted.
    import gzip

    from gpu_curate import io as gio

    files = []
    for i in range(6):
        path = tmp_path / f"s{i}.jsonl.gz"
        path.write_bytes(gzip.compress(b'{"text": "a dog"}\n' * (2000 + i)))
        files.append(gio.InputFile(str(path), path.name, "jsonl", path.stat().st_size))
    schemas = {f.path: gio.json_layout(f, None, None) for f in files}
    assert [rows for _, rows in schemas.values()] == [2000 + i for i in range(6)]
    parts = gio.plan_parts(files, 4100, text_schemas=schemas)
    assert [[p.file.relpath for p in part.pieces] for part in parts] == [
        ["s0.jsonl.gz", "s1.jsonl.gz"],
        ["s2.jsonl.gz", "s3.jsonl.gz"],
        ["s4.jsonl.gz", "s5.jsonl.gz"],
    ]  # (4,001, 4,005 and 4,009 rows: a third file would pass 4,100)


def test_a_resume_counts_a_finished_part_of_many_row_groups(tmp_path, monkeypatch):
    # A finished part's counts are read back from its entry_ids, a run of row groups at a
    # time: a streamed file's part holds many.
    import gpu_curate.io as io_mod
    import gpu_curate.pipeline as pipeline_mod

    monkeypatch.setattr(io_mod, "_CSV_BLOCK", 1 << 12, raising=False)
    monkeypatch.setattr(io_mod, "PART_ROWS", 300)
    monkeypatch.setattr(pipeline_mod, "PART_ROWS", 300, raising=False)
    pool = tmp_path / "pool"
    pool.mkdir()
    rows = [f"a dog {i}\tu{i}" if i % 3 else f"new york cat {i}\tu{i}" for i in range(3000)]
    (pool / "texts.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "md.json").write_text(json.dumps(["dog", "cat", "new york", "york cat"]))
    out = tmp_path / "out"
    args = ["curate", pool, "--metadata", tmp_path / "md.json", "--out", out, "--t", 500,
            "--backend", "cpu", "--quiet"]  # fmt: skip
    cli(*args)
    parts = [out / d / "part-00000.parquet" for d in ("matched", "curated")]
    assert pq.ParquetFile(parts[0]).metadata.num_row_groups >= 5
    written = [p.stat().st_mtime_ns for p in parts]
    names = ("entry_counts.json", "curated_entry_counts.parquet")
    before = {n: (out / n).read_bytes() for n in names}
    cli(*args, "--resume")
    assert [p.stat().st_mtime_ns for p in parts] == written  # (finished: not redone)
    for name, data in before.items():
        assert (out / name).read_bytes() == data, name
    counts = json.loads((out / "entry_counts.json").read_text())
    assert counts == {"dog": 2000, "cat": 1000, "new york": 1000, "york cat": 1000}


def test_a_bad_row_deep_in_a_streamed_csv_leaves_no_part(tmp_path, monkeypatch):
    # The rows before the bad one were matched and written when the reader meets it: the
    # run stops with one line, and no part (not even a hidden temporary one) is left.
    import gpu_curate.io as io_mod

    pool = tmp_path / "pool"
    pool.mkdir()
    lines = ["TEXT,id"] + [f"a dog number {i},{i}" for i in range(5000)]
    lines[4000] = "a cat,4000,surplus"
    (pool / "texts.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "md.json").write_text(json.dumps(["dog", "cat"]))
    seen = _largest_tables(monkeypatch)
    monkeypatch.setattr(io_mod, "_CSV_BLOCK", 1 << 12, raising=False)
    monkeypatch.setattr(io_mod, "PART_ROWS", 500)
    out = tmp_path / "out"
    result = cli("match", pool, "--metadata", tmp_path / "md.json", "--out", out, "--backend",
                 "cpu", "--quiet", ok=False)  # fmt: skip
    assert result.exit_code != 0
    message = result.output.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert f"cannot read {pool / 'texts.csv'}" in message and "columns" in message, message
    assert sum(seen["match"]) >= 3000  # (the rows before it were matched, in tables)
    assert not out.exists()  # (no part finished: the run took back its folder)


# ----------------------------------------------------------------------------- 7. progress

# distributed's TextProgressBar redraws "[###   ] | 42% Completed |  0.1s" after a carriage
# return, and erases the line (ESC [2K) when done; the pipeline then ends the line.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = re.compile(r"\[(#*) *\] \| +(\d+)% Completed \| ")
STAGES = ("matching", "balancing")


def stage_bars(stdout: str) -> dict[str, list[int]]:
    """{stage line: the percentages of the bars drawn after it, in order} of a CLI output."""
    stages: dict[str, list[int]] = {}
    current = None
    for segment in re.split(r"[\r\n]", ANSI.sub("", stdout)):
        if segment.split(" ", 1)[0] in STAGES:
            current = segment
            stages[current] = []
        elif found := BAR.search(segment):
            assert current is not None, f"a progress bar before any stage line:\n{stdout!r}"
            assert found.start() == 0, f"bar not at the start of its segment: {segment!r}"
            stages[current].append(int(found.group(2)))
    return stages


def assert_progress(stdout: str, want: list[str]) -> None:
    """One finished bar under each stage line of ``want`` (their start), and nothing else."""
    stages = stage_bars(stdout)
    assert len(stages) == len(want), f"stage lines {list(stages)}, expected {want}"
    for (line, bars), start in zip(stages.items(), want, strict=True):
        assert line.startswith(start), f"stage line {line!r}, expected {start!r}"
        assert bars, f"no progress bar under {line!r}:\n{stdout!r}"
        assert all(0 <= b <= 100 for b in bars), bars
        assert bars[-1] == 100, f"the bar under {line!r} did not reach 100%: {bars}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """3 Parquet files of 20 texts (6 parts with --partition-rows 10) and 2 entries."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "pool").mkdir()
    for f in range(3):
        texts = [f"a dog {i}" if i % 3 else f"a cat {i}" for i in range(20)]
        pq.write_table(pa.table({"TEXT": texts}), root / "pool" / f"p{f}.parquet")
    md = root / "metadata.json"
    md.write_text(json.dumps(["dog", "cat"]))
    return root, md


@pytest.fixture(scope="module")
def tiny_matched(tiny, tmp_path_factory) -> Path:
    root, md = tiny
    out = tmp_path_factory.mktemp("tiny-runs") / "matched"
    cli("match", root / "pool", "--metadata", md, "--out", out, "--partition-rows", 10, "--quiet")
    return out


def tiny_args(command: str, tiny, tiny_matched, out: Path) -> tuple[list, list[str]]:
    """(argv, the stage lines it prints) of a run of ``command`` on the tiny pool."""
    root, md = tiny
    pool = [root / "pool", "--metadata", md, "--partition-rows", 10]
    if command == "curate":
        return ["curate", *pool, "--out", out, "--t", 5], ["matching 6 parts", "balancing 6 parts"]
    if command == "match":
        return ["match", *pool, "--out", out], ["matching 6 parts"]
    return ["balance", tiny_matched, "--out", out, "--t", 5], ["balancing 6 parts"]


@pytest.mark.parametrize("command", ["curate", "match", "balance"])
def test_progress_bar_on_each_stage(command, tiny, tiny_matched, tmp_path):
    argv, want = tiny_args(command, tiny, tiny_matched, tmp_path / "out")
    result = cli(*argv)
    assert_progress(result.stdout, want)
    assert result.stdout.rstrip("\n").split("\n")[-1].startswith("pool 60 rows -> matched 60")


@pytest.mark.parametrize("command", ["curate", "match", "balance"])
def test_quiet_prints_no_progress(command, tiny, tiny_matched, tmp_path):
    argv, _ = tiny_args(command, tiny, tiny_matched, tmp_path / "out")
    result = cli(*argv, "--quiet")
    assert result.stdout == ""
    assert "Completed" not in result.output and "\r" not in result.output
    assert (tmp_path / "out" / "report.json").is_file()  # it did run


def test_progress_bar_with_scheduler(dask_cluster, tiny, tmp_path):
    # The bar polls the scheduler the client is connected to: a remote one too.
    root, md = tiny
    result = cli("curate", root / "pool", "--metadata", md, "--out", tmp_path / "out",
                 "--t", 5, "--partition-rows", 10, "--scheduler", dask_cluster)  # fmt: skip
    assert "Dask cluster at" in result.stdout
    assert_progress(result.stdout, ["matching 6 parts", "balancing 6 parts"])


def test_the_workers_of_a_scheduler_choose_the_backend(dask_cluster, tiny, tmp_path):
    # Not this client: a worker that cannot run the gpu backend is named.
    from gpu_curate.backend import gpu_available

    if gpu_available():
        pytest.skip("a GPU is visible here, so the local workers can run the gpu backend")
    root, md = tiny
    out = tmp_path / "out"
    result = cli("curate", root / "pool", "--metadata", md, "--out", out, "--t", 5,
                 "--scheduler", dask_cluster, "--backend", "gpu", ok=False)  # fmt: skip
    assert result.exit_code == 2
    assert re.search(
        rf"^gpu-curate: error: the Dask cluster at {dask_cluster}: worker "
        r"tcp://127\.0\.0\.1:\d+: the gpu backend cannot run here: CuPy is not "
        r"installed .*\(2 of 2 workers\)$",
        result.output,
        re.M,
    ), result.output
    assert not out.exists() or list(out.iterdir()) == []
    # balance too, and before --overwrite empties anything.
    cli("match", root / "pool", "--metadata", md, "--out", out, "--quiet")
    old = tmp_path / "old"
    cli("balance", out, "--out", old, "--t", 5, "--quiet")
    before = sorted(p.relative_to(old) for p in old.rglob("*"))
    result = cli("balance", out, "--out", old, "--t", 6, "--scheduler", dask_cluster,
                 "--backend", "gpu", "--overwrite", ok=False)  # fmt: skip
    assert result.exit_code == 2 and "the gpu backend cannot run here" in result.output
    assert sorted(p.relative_to(old) for p in old.rglob("*")) == before


def test_a_resume_says_what_it_found_finished(tiny, tmp_path):
    root, md = tiny
    out = tmp_path / "out"
    argv = ["curate", root / "pool", "--metadata", md, "--partition-rows", 10, "--t", 5,
            "--out", out, "--workers", 1]  # fmt: skip
    first = cli(*argv, "--quiet")
    for name in ("matched/_parts/part-00002.json", "curated/_parts/part-00000.json",
                 "curated/_parts/part-00004.json", "curated/_SUCCESS", "report.json"):  # fmt: skip
        (out / name).unlink()
    result = cli(*argv, "--resume")
    lines = [ln for ln in re.split(r"[\r\n]", ANSI.sub("", result.stdout)) if ln.strip()]
    assert "(1 worker x " in lines[0], lines[0]  # (not "1 workers")
    assert "matching 6 parts of 3 files, 5 finished earlier" in lines, lines
    assert "balancing 6 parts (t=5, seed=0), 4 finished earlier" in lines, lines
    assert first.exit_code == 0 and (out / "report.json").is_file()


def _slow_match_task(*args, **kwargs):
    time.sleep(0.5)
    return _REAL_MATCH_TASK(*args, **kwargs)


_REAL_MATCH_TASK = None


def test_progress_into_a_file_is_redrawn_seldom(tiny, tmp_path, monkeypatch):
    # Redrawn ten times a second, a bar wrote a line's worth of bytes to a log every
    # 0.1 s of a run of hours; not on a terminal it is redrawn every 5 s (and at the end).
    global _REAL_MATCH_TASK
    from gpu_curate import pipeline

    _REAL_MATCH_TASK = pipeline._match_task
    monkeypatch.setattr(pipeline, "_match_task", _slow_match_task)
    root, md = tiny
    result = cli("match", root / "pool", "--metadata", md, "--out", tmp_path / "out",
                 "--partition-rows", 10, "--workers", 1)  # fmt: skip
    bars = stage_bars(result.stdout)
    (line,) = bars
    # 6 parts of 0.5 s each on one thread: 3 s, 30 redraws at 0.1 s.
    assert line.startswith("matching 6 parts") and bars[line][-1] == 100
    assert len(bars[line]) <= 3, bars
    # (On a terminal the bar moves as before.)
    monkeypatch.setattr(pipeline, "_on_terminal", lambda: True)
    result = cli("match", root / "pool", "--metadata", md, "--out", tmp_path / "out2",
                 "--partition-rows", 10, "--workers", 1)  # fmt: skip
    assert len(stage_bars(result.stdout)[line]) >= 10


def test_progress_into_a_file_does_not_hold_up_a_stage(tiny, tmp_path, monkeypatch):
    # Polled every 5 s where stdout is no terminal, a bar saw its stage's end only at the
    # next tick: a stage of 0.1 s took 5 s (a tiny curate, 2 s on a terminal, took 11 s
    # into a log). Drawn seldom, it must still see the end at once.
    from gpu_curate import pipeline

    monkeypatch.setattr(pipeline, "_LOG_REDRAW_S", 60.0, raising=False)
    monkeypatch.setattr(pipeline, "_on_terminal", lambda: False)
    root, md = tiny
    began = time.monotonic()
    result = cli("curate", root / "pool", "--metadata", md, "--out", tmp_path / "out",
                 "--t", 5, "--workers", 1)  # fmt: skip
    took = time.monotonic() - began
    bars = stage_bars(result.stdout)
    assert [b[-1] for b in bars.values()] == [100, 100], bars
    elapsed = [float(x) for x in re.findall(r"Completed \|\s*([0-9.]+)s", result.stdout)]
    assert elapsed and max(elapsed) < 4.5, (elapsed, result.stdout)
    assert took < 30, took  # (not a 60 s tick per stage)


def test_stage_bars_parser():
    # The parser itself, on a captured output: it must see bars, and miss none.
    out = (
        "gpu-curate 0.1.0: backend cpu\nmatching 2 parts of 1 file\n"
        "\r[#    ] | 2% Completed |  0.0s\r[#####] | 100% Completed |  0.1s\x1b[2K\r\n"
        "balancing 2 parts (t=5, seed=0)\n\r[#####] | 100% Completed |  0.0s\x1b[2K\r\npool ..."
    )
    assert stage_bars(out) == {
        "matching 2 parts of 1 file": [2, 100],
        "balancing 2 parts (t=5, seed=0)": [100],
    }
    assert stage_bars("matching 2 parts\nbalancing 2 parts\n") == {
        "matching 2 parts": [],
        "balancing 2 parts": [],
    }
    with pytest.raises(AssertionError, match="did not reach 100%"):
        assert_progress(out.replace("100%", "50%"), ["matching", "balancing"])


def test_dasks_shutdown_timeouts_are_not_reported_after_a_run(caplog):
    # A worker's close that outlasted its wait, under load, left tornado's
    # TimeoutError("Timeout") unretrieved: asyncio printed its traceback after a run that
    # had finished. It is dropped (and any other record kept).
    import asyncio
    import gc

    from gpu_curate.cluster import dask_noise

    def unretrieved(exc):
        caplog.clear()
        loop = asyncio.new_event_loop()
        loop.create_future().set_exception(exc)
        gc.collect()
        loop.close()
        # (Only this future's: the collection may find others, such as an earlier run's.)
        (record,) = [r for r in caplog.records if r.exc_info and r.exc_info[1] is exc]
        return record

    # (The records themselves: an in-process CLI run earlier installed the filter.)
    logger = logging.getLogger("asyncio")
    installed = logger.filters[:]
    logger.filters.clear()
    try:
        with caplog.at_level("ERROR", logger="asyncio"):
            assert dask_noise(unretrieved(TimeoutError("Timeout"))) is False
            assert dask_noise(unretrieved(TimeoutError("timed out after 5 s"))) is True
            assert dask_noise(unretrieved(ValueError("Timeout"))) is True
    finally:
        logger.filters[:] = installed


def test_dasks_noise_is_dropped_for_python_callers_too():
    # The filter was the CLI's: a notebook interrupted mid-run saw asyncio's "Task
    # exception was never retrieved ... AllExit" traceback, and a lost scheduler printed
    # the client's cancelled reconnection (30 lines) before the run's one-line error.
    import asyncio

    from distributed.client import AllExit

    from gpu_curate.cluster import dask_noise, open_client

    def record(logger, exc):
        return logging.LogRecord(logger, logging.ERROR, "", 0, "", None, (type(exc), exc, None))

    assert dask_noise(record("asyncio", AllExit())) is False
    assert dask_noise(record("distributed.client", asyncio.CancelledError())) is False
    assert dask_noise(record("distributed.client", OSError("refused"))) is True
    given_up = logging.LogRecord(
        "distributed.client",
        logging.ERROR,
        "",
        0,
        "Failed to reconnect to scheduler after %.2f seconds, closing client",
        (20.0,),
        None,
    )
    assert dask_noise(given_up) is False
    assert dask_noise(record("asyncio", asyncio.CancelledError())) is True
    for name in ("asyncio", "distributed.client"):
        logging.getLogger(name).removeFilter(dask_noise)
    with open_client("cpu", workers=1):
        for name in ("asyncio", "distributed.client"):
            assert dask_noise in logging.getLogger(name).filters


def test_progress_ends_its_line_on_ctrl_c(monkeypatch, capsys):
    # Ctrl-C during a stage: the bar's unfinished line is ended, so that the CLI's one
    # line "gpu-curate: interrupted; ..." is not glued onto "[###  ] | 7% Completed | 1.3s".
    from distributed.diagnostics import progressbar

    def interrupted(self, *args, **kwargs):
        sys.stdout.write("\r[###     ] | 7% Completed |  1.3s")
        raise KeyboardInterrupt

    from gpu_curate import pipeline

    monkeypatch.setattr(progressbar.TextProgressBar, "__init__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline._progress(None, 0.0)
    assert capsys.readouterr().out.endswith("\n")


def test_ctrl_c_says_resume_only_where_a_run_began(tiny, tmp_path, monkeypatch):
    from gpu_curate import pipeline

    root, md = tiny
    out = tmp_path / "out"
    argv = ["curate", root / "pool", "--metadata", md, "--out", out, "--t", 5, "--quiet"]

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    # Before the folder was written (reading the inputs' columns): nothing to resume.
    monkeypatch.setattr(pipeline, "_plan", ctrl_c)
    r = cli(*argv, ok=False)
    assert (r.exit_code, r.output) == (130, "gpu-curate: interrupted\n")
    assert not out.exists()
    monkeypatch.undo()
    cli(*argv)
    # Once it was: --resume, which excludes --overwrite.
    monkeypatch.setattr(pipeline, "match_stage", ctrl_c)
    new = [*argv[:5], tmp_path / "new", *argv[6:]]
    for args, instead in ((new, ""), ([*argv, "--overwrite"], " instead of --overwrite")):
        r = cli(*args, ok=False)
        assert r.exit_code == 130
        assert r.output == (
            "gpu-curate: interrupted; finished parts are kept: run the same command with "
            f"--resume{instead} to continue\n"
        )
    # The demo has no --resume.
    r = cli("demo", "--out", tmp_path / "demo", "--rows", 300, "--quiet", ok=False)
    assert (r.exit_code, r.output) == (
        130,
        "gpu-curate: interrupted; run it again with --overwrite\n",
    )


def test_a_lost_scheduler_is_one_line(monkeypatch):
    # Killing the --scheduler mid-stage made distributed cancel the run's futures: a
    # traceback ending in FutureCancelledError and exit 1, where the finished parts are
    # kept and a --resume continues.
    from distributed.client import FutureCancelledError

    from gpu_curate import pipeline

    class Client:
        def compute(self, graph, optimize_graph=True):
            return "future"

        def gather(self, future):
            raise FutureCancelledError("_merge-abc", reason="scheduler-connection-lost")

    import dask

    opts = pipeline.Options(quiet=True)
    delayed = [dask.delayed(lambda: None)()]
    with pytest.raises(CurateError, match=r"the Dask cluster went away during the run \(.*"
                       r"scheduler-connection-lost.*\): the finished parts are kept; run the "
                       r"same command with resume=True to continue$"):  # fmt: skip
        pipeline._compute(Client(), delayed, 3, opts)
    # (Also while planning, before anything is written: the row counts of big text files,
    # the footers and layouts read in tasks.)
    with pytest.raises(CurateError, match=r"the Dask cluster went away during the run \(.*"
                       r"scheduler-connection-lost.*\): nothing was written: run the same "
                       r"command again$"):  # fmt: skip
        pipeline._in_tasks(Client(), len, ["a.parquet"])


def test_a_task_that_kills_its_workers_is_one_line():
    # (Dask's KilledWorker: a traceback, where the part, too big for a worker's memory or
    # crashing a library, is to be named.)
    from distributed import KilledWorker

    from gpu_curate import pipeline

    class Client:
        def compute(self, graph, optimize_graph=True):
            return "future"

        def gather(self, future):
            raise KilledWorker("match-part-00007-0123456789ab", None, 3)

    import dask

    with pytest.raises(CurateError) as caught:
        pipeline._compute(Client(), [dask.delayed(len)([])], 3, pipeline.Options(quiet=True))
    assert str(caught.value) == (
        "the task match-part-00007-0123456789ab killed each Dask worker that ran it (4 tries: "
        "out of memory? the workers' logs say more): the finished parts are kept; run the "
        "same command with resume=True to continue"
    )


def test_the_progress_bar_hook_is_distributeds():
    # pipeline._progress overrides TextProgressBar._draw_bar, a private method: a
    # distributed that renames it or its parameters would leave the bar unthrottled or
    # broken. (pyproject caps distributed; raising the cap must pass this.)
    import inspect

    from distributed.diagnostics.progressbar import TextProgressBar

    params = list(inspect.signature(TextProgressBar._draw_bar).parameters)
    assert params[:3] == ["self", "remaining", "all"] and params[-1] == "kwargs", params


def test_a_run_where_no_text_matched_says_so(tiny, tmp_path):
    # (It looked like any other run: "matched 0" in its last line, nothing more.)
    root, _ = tiny
    md = tmp_path / "md.json"
    md.write_text(json.dumps(["zebra"]))
    pq.write_table(pa.table({"TEXT": [None, "", "a cow"]}), tmp_path / "nulls.parquet")
    r = cli("match", root / "pool", tmp_path / "nulls.parquet", "--metadata", md,
            "--out", tmp_path / "o", "--workers", 1)  # fmt: skip
    assert (
        "note: no text matched an entry (2 of 63 rows null or empty; texts from TEXT): check "
        "--text-column and the metadata"
    ) in r.output
    r = cli("match", root / "pool", "--metadata", root / "metadata.json", "--out",
            tmp_path / "o2", "--workers", 1)  # fmt: skip
    assert "no text matched" not in r.output


@pytest.mark.parametrize("parts", [1, 20, 100_000, 100_001, 1_234_567])
def test_part_names_sort_in_the_order_of_the_parts(parts):
    # A folder reader (pyarrow, DuckDB, polars) lists parts by name: past 100,000 parts,
    # 'part-100000' sorted between 'part-10000' and 'part-10001', away from _SUCCESS's order.
    from gpu_curate.pipeline import part_name

    indices = sorted({0, 1, 9, 10_000, 10_001, 99_999, 100_000, parts - 1} & set(range(parts)))
    names = [part_name(i, parts) for i in indices]
    assert sorted(names) == names
    assert all(
        n.startswith("part-") and int(n[5:]) == i for n, i in zip(names, indices, strict=True)
    )
    if parts <= 100_000:  # (as before: an older run's parts resume under their names)
        assert names[:2] == ["part-00000", "part-00001"][: len(names[:2])]
