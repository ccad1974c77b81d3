"""Scale: a 1M-row pool through the ``gpu-curate`` CLI in a subprocess, with a memory bound.

The pool is the 10,000 shared LAION alt-texts replicated 100 times into 8 Parquet files,
with a unique integer ``id`` column (so the pool-wide id check runs too), matched against
the 374,565-entry proxy metadata. Checked independently of the pipeline:

* the CLI process's peak RSS (``ru_maxrss``, measured by a small wrapper process; see
  ``run_measured``) stays under :data:`MAX_RSS_BYTES`;
* ``report.json`` counts the whole pool, and the entry counts are 100 times those of the
  10,000 texts under conftest's Aho-Corasick reference (DESIGN.md section 2);
* the uids are the documented hash of the ids, and the curated uids are exactly those that
  the draw of DESIGN.md section 3 keeps, recomputed here with NumPy from the matched output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LAION_PARQUET, PROXY_METADATA, shared_data

from gpu_curate.io import PACK_ROWS

COPIES = 100
FILES = 8
T = 2000
SEED = 11
# Peak RSS measured here with 2 workers: 0.62-0.77 GB (the compiled 374,565-entry metadata,
# the Dask cluster, two 125k-row parts in flight with their Arrow buffers; the same with or
# without the id check). The bound is twice that: headroom for allocator and library
# versions, still low enough to catch a run that keeps parts or the matched pool in memory.
# ``--workers 2`` keeps the number of parts in flight (and so the bound) machine-independent.
MAX_RSS_BYTES = 1.5e9
GPU_CURATE = Path(sys.executable).with_name("gpu-curate")

MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
GOLDEN = 0x9E3779B97F4A7C15
INT_DOMAIN = 0x5851F42D4C957F2D


def fmix64(h: np.ndarray) -> np.ndarray:
    """Murmur3's 64-bit finalizer on a uint64 array (a new array; wraps modulo 2**64)."""
    h = h.copy()
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return h


def fmix64_int(k: int) -> int:
    return int(fmix64(np.array([k], np.uint64))[0])


# The command runs under this small Python process, which reports the command's own peak
# RSS. Measured from here (os.wait4 on the command), ru_maxrss would also count this test
# process's memory: Linux records a child's RSS before its exec, and a vforked child
# shares this process's memory until then.
_PEAK_RSS_WRAPPER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stderr.write(f"\\npeak-rss-kb {peak}\\n")
sys.exit(code)
"""


def run_measured(cmd: list[str], timeout: float) -> tuple[int, int, str]:
    """Run cmd; return (exit code, its peak RSS in bytes, stderr)."""
    wrapped = [sys.executable, "-c", _PEAK_RSS_WRAPPER, *cmd]
    proc = subprocess.Popen(wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the wrapper and the command under it
        proc.communicate()
        pytest.fail(f"{' '.join(cmd)} ran over {timeout} s")
    stderr, _, last = err.decode(errors="replace").rstrip().rpartition("\n")
    assert last.startswith("peak-rss-kb "), last
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return proc.returncode, int(last.split()[1]) * scale, stderr


@pytest.mark.slow
def test_one_million_rows(tmp_path, proxy_entries, proxy_reference):
    laion = pq.read_table(shared_data(LAION_PARQUET), columns=["URL", "TEXT"])
    metadata = shared_data(PROXY_METADATA)
    n0 = laion.num_rows
    n = n0 * COPIES
    pool = tmp_path / "pool"
    pool.mkdir()
    per = n // FILES
    for f in range(FILES):
        rows = np.arange(f * per, (f + 1) * per)
        part = laion.take(pa.array(rows % n0))
        part = part.append_column("id", pa.array(rows * 7 - 3_000_000, pa.int64()))
        pq.write_table(part, pool / f"laion-{f}.parquet", row_group_size=50_000)

    out = tmp_path / "out"
    cmd = [str(GPU_CURATE), "curate", str(pool), "--metadata", str(metadata), "--out", str(out),
           "--t", str(T), "--seed", str(SEED), "--id-column", "id", "--backend", "cpu",
           "--workers", "2", "--quiet"]  # fmt: skip
    t0 = time.monotonic()
    code, rss, stderr = run_measured(cmd, timeout=300)
    seconds = time.monotonic() - t0
    assert code == 0, stderr[-3000:]
    assert rss < MAX_RSS_BYTES, f"peak RSS {rss / 1e9:.2f} GB >= {MAX_RSS_BYTES / 1e9:.1f} GB"

    report = json.loads((out / "report.json").read_text())
    assert report["pool_rows"] == n
    # (The 125k-row files are packed, two a part: PACK_ROWS is 250k.)
    assert report["input_files"] == FILES and report["parts"] == n // PACK_ROWS
    assert not (out / "_work").exists()

    # entry counts: COPIES times the reference counts of the 10,000 distinct rows
    ref = np.zeros(len(proxy_entries), np.int64)
    matched0 = 0
    for text in laion.column("TEXT").to_pylist():
        m = proxy_reference(text)
        ref[m] += 1
        matched0 += bool(m)
    counts = pq.read_table(out / "entry_counts.parquet").column("count").to_numpy()
    assert np.array_equal(counts, COPIES * ref)
    assert report["matched_rows"] == COPIES * matched0

    # the matched rows: uids are the hash of the ids; their entries give the counts again
    matched = pa.concat_tables(
        pq.read_table(p, columns=["id", "uid", "entry_ids"])
        for p in sorted((out / "matched").glob("part-*.parquet"))
    )
    assert matched.num_rows == report["matched_rows"]
    ids = matched.column("id").to_numpy().astype(np.int64).view(np.uint64)
    uids = matched.column("uid").to_numpy()
    assert np.array_equal(uids, fmix64(ids ^ np.uint64(INT_DOMAIN)))
    entry_ids = matched.column("entry_ids").combine_chunks()
    lengths = np.diff(entry_ids.offsets.to_numpy())
    values = entry_ids.values.to_numpy().astype(np.int64)
    assert np.array_equal(np.bincount(values, minlength=len(counts)), counts)

    # the curated set: keep a row iff U(seed, uid, e) < t / max(count[e], t) for an entry e
    p = T / np.maximum(counts.astype(np.float64), T)
    assert (p < 1).sum() >= 100, "no head entries: balancing would not be tested"
    key = np.uint64(fmix64_int(SEED ^ fmix64_int(GOLDEN)))
    pair_uid = np.repeat(uids, lengths)
    h = fmix64(fmix64(pair_uid ^ key) ^ values.astype(np.uint64))
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    rows = np.repeat(np.arange(matched.num_rows), lengths)
    keep = np.zeros(matched.num_rows, bool)
    keep[rows[u < p[values]]] = True
    want = np.sort(uids[keep])
    got = np.sort(
        np.concatenate(
            [
                pq.read_table(f, columns=["uid"]).column("uid").to_numpy()
                for f in sorted((out / "curated").glob("part-*.parquet"))
            ]
        )
    )
    assert report["curated_rows"] == len(want)
    assert 0.1 * len(uids) < len(want) < 0.9 * len(uids), "balancing kept too much or too little"
    assert np.array_equal(got, want)
    print(f"1M rows: {seconds:.1f} s, peak RSS {rss / 1e9:.2f} GB, report {report}")
