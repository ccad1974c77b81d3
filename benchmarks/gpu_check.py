#!/usr/bin/env python
"""GPU check without cuDF: the CUDA kernel against the CPU kernel, plus GPU speed.

For a CUDA machine with CuPy, Numba and numba-cuda (cuDF not needed; DESIGN.md section 7).
In about 2 minutes it:

1. builds ``--rows`` real texts (the LAION alt-texts replicated, default 1,000,000);
2. matches them on the CPU (all threads) and on the GPU, and compares the CSR arrays
   (row_offsets and entry_ids) exactly; also the device string hash ``hash_rows``;
3. times the GPU kernel alone (data already on the device, after a warm-up) and
   including the host-to-device copy, beside the CPU of the same machine;
4. checks ``gpu_curate.balance`` (``keep_mask``, ``keep_probabilities`` and
   ``balance_partition``) on the device against the host, bit for bit;
5. with ``--pipeline-rows N``, runs the whole pipeline (``gpu_curate.curate``) on an
   N-row Parquet pool with the cpu backend (local threads) and the gpu backend (the
   pipeline's own ``LocalCUDACluster``, then clusters of ``--gpu-threads`` threads per GPU,
   each run twice: new worker, warm worker), checks that every run writes the same curated
   uids and entry counts, and reports rows/s end to end. Needs dask, distributed and
   dask-cuda (no cuDF: partitions are read with pyarrow on the host).

Prints a compact summary ending in ``RESULT: PASS`` or ``RESULT: FAIL`` (exit 0 / 1;
exit 2 when it cannot run).

Data: ``--data DIR`` (default ../shared/data next to the repository), or explicit
``--laion PATH --metadata PATH`` (a machine that only has the repository copy).

Without a GPU, ``--simulate`` runs the same code under the Numba CUDA simulator with NumPy
standing in for CuPy (slow: use a few hundred rows)::

    python benchmarks/gpu_check.py --simulate --rows 200
    python benchmarks/gpu_check.py --laion laion.parquet --metadata metadata.json
    python benchmarks/gpu_check.py --data DATA --rows 4000000 --pipeline-rows 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
LAION = "captions/laion_alt_text_10k.parquet"
METADATA = "metadata/metadata_proxy_en.json"
NO_CUPY = "cupy not installed: run this on a CUDA machine (or try --simulate --rows 200)"


class CheckError(Exception):
    """The check cannot run here (one line says why)."""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    ap.add_argument("--laion", type=Path, help=f"LAION parquet, or a tsv (default DATA/{LAION})")
    ap.add_argument("--metadata", type=Path, help=f"metadata .json/.txt (default DATA/{METADATA})")
    ap.add_argument("--rows", type=int, default=1_000_000, help="texts (default 1,000,000)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (best is reported)")
    ap.add_argument("--t", type=float, default=None, help="balancing threshold (default: auto)")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    ap.add_argument(
        "--pipeline-rows",
        type=int,
        default=0,
        help="also run the pipeline end to end on a pool of this many rows (default: no)",
    )
    ap.add_argument("--pipeline-files", type=int, default=20, help="files of that pool")
    ap.add_argument(
        "--gpu-threads",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[4],
        help="also time the pipeline with these threads per GPU worker (default: 4)",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/gpu-curate-check"),
        help="where the pipeline's pool and outputs go",
    )
    ap.add_argument(
        "--kernel-split",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=None,
        metavar="MB,MB",
        help="also time each kernel launch (CUDA events), and whole calls with these tile "
        "sizes in MB (e.g. 32,64,128)",
    )
    ap.add_argument(
        "--simulate",
        action="store_true",
        help="no GPU: run the CUDA kernels under the Numba CUDA simulator with NumPy",
    )
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- device


class Device:
    """The array module (CuPy, or NumPy under the simulator) and how to wait for it."""

    def __init__(self, simulate: bool) -> None:
        self.simulate = simulate
        if simulate:
            if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
                if "numba" in sys.modules:
                    raise CheckError("--simulate needs NUMBA_ENABLE_CUDASIM=1 before numba loads")
                os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
            import warnings

            import numpy

            # uint64 hashing wraps around on purpose; the simulator does it as NumPy scalars.
            warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
            self.xp = numpy
            self.name = "Numba CUDA simulator (NumPy stands in for CuPy)"
            return
        try:
            import cupy
        except ImportError:
            raise CheckError(NO_CUPY) from None
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # no driver, no device
            raise CheckError(f"CuPy sees no CUDA device ({type(exc).__name__}: {exc})") from None
        if n < 1:
            raise CheckError("CuPy sees no CUDA device")
        from numba import cuda

        if not cuda.is_available():
            raise CheckError("numba.cuda sees no CUDA device (is numba-cuda installed?)")
        import warnings

        # Small warm-up grids trigger Numba's under-utilisation warning; it is expected.
        warnings.filterwarnings("ignore", message=".*[Gg]rid size.*")
        self.xp = cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self.name += f", {props['totalGlobalMem'] / 2**30:.0f} GiB, CuPy {cupy.__version__}"

    def sync(self) -> None:
        if not self.simulate:
            self.xp.cuda.Device().synchronize()

    def host(self, a):
        import numpy as np

        return a.get() if hasattr(a, "get") else np.asarray(a)


def timed(dev: Device, reps: int, fn):
    """(best seconds over reps, last result), synchronising the device around each call."""
    best = float("inf")
    out = None
    for _ in range(max(1, reps)):
        dev.sync()
        t0 = time.perf_counter()
        out = fn()
        dev.sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


# ----------------------------------------------------------------------------- data


def read_texts(path: Path) -> list[str]:
    """The ``TEXT`` column of a parquet file, or the first column of a tsv/txt file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [t for t in pq.read_table(path, columns=["TEXT"]).column("TEXT").to_pylist() if t]
    lines = path.read_text(encoding="utf-8").split("\n")
    return [ln.split("\t", 1)[0] for ln in lines if ln]


def load_inputs(args):
    import pyarrow as pa

    from gpu_curate.metadata import Metadata

    laion = args.laion or args.data / LAION
    meta = args.metadata or args.data / METADATA
    for p, flag in ((laion, "--laion"), (meta, "--metadata")):
        if not p.is_file():
            raise CheckError(f"not found: {p} (pass --data DIR, or {flag} PATH)")
    base = read_texts(laion)
    if not base:
        raise CheckError(f"no texts in {laion}")
    texts = (base * (args.rows // len(base) + 1))[: args.rows]
    # Some nulls, so that the validity bitmap is exercised too.
    texts = [None if i % 997 == 13 else t for i, t in enumerate(texts)]
    nbytes = sum(len(t.encode()) for t in texts if t is not None)
    arr = pa.array(texts, pa.string() if nbytes < 2**31 - 1 else pa.large_string())
    return arr, nbytes, Metadata.from_file(meta), laion, meta


# ----------------------------------------------------------------------------- checks


def compare_csr(arr, cpu, gpu) -> tuple[bool, str]:
    """Exact equality of two CSRs; on a difference, the first differing row."""
    import numpy as np

    (c_ro, c_ids), (g_ro, g_ids) = cpu, gpu
    if g_ro.dtype != np.int64 or g_ids.dtype != np.int32:
        return False, f"GPU dtypes {g_ro.dtype}/{g_ids.dtype}, expected int64/int32"
    if np.array_equal(c_ro, g_ro) and np.array_equal(c_ids, g_ids):
        return True, f"{len(c_ids):,} ids in {len(c_ro) - 1:,} rows identical"
    n = min(len(c_ro), len(g_ro)) - 1
    for i in range(n):
        a = c_ids[c_ro[i] : c_ro[i + 1]]
        b = g_ids[g_ro[i] : g_ro[i + 1]]
        if not np.array_equal(a, b):
            text = arr[i].as_py()
            return False, (
                f"row {i} differs: text={text!r:.200} cpu={a.tolist()[:20]} gpu={b.tolist()[:20]}"
            )
    return False, f"row counts differ: cpu {len(c_ro) - 1}, gpu {len(g_ro) - 1}"


def check_balance(dev: Device, ro, ids, n_entries: int, t: float | None = None):
    """Device vs host balancing: a dict with ``ok`` and a ``detail`` line.

    Checks that the device (CuPy) entry probabilities, keep mask, keep probabilities and
    ``balance_partition`` (mask and kept entry counts) equal the host (NumPy) ones bit for
    bit (DESIGN.md section 3); the expected row count, a sum, to rounding.
    """
    import numpy as np

    from gpu_curate import balance

    xp = dev.xp
    try:
        counts = np.bincount(ids, minlength=n_entries).astype(np.int64)
        if t is None:  # a threshold that puts some entries in the head
            t = float(max(1.0, np.quantile(counts[counts > 0], 0.99))) if counts.any() else 1.0
        uids = np.arange(len(ro) - 1, dtype=np.uint64) * np.uint64(2654435761)
        seed = 20230926
        p_h = balance.entry_probabilities(counts, t)
        keep_h = balance.keep_mask(ro, ids, uids, p_h, seed)
        prob_h = balance.keep_probabilities(ro, ids, p_h)
        d_ro, d_ids, d_uids = xp.asarray(ro), xp.asarray(ids), xp.asarray(uids)
        p_d = balance.entry_probabilities(xp.asarray(counts), t)
        secs, keep_d = timed(dev, 2, lambda: balance.keep_mask(d_ro, d_ids, d_uids, p_d, seed))
        prob_d = balance.keep_probabilities(d_ro, d_ids, p_d)
        problems = []
        if not np.array_equal(p_h, dev.host(p_d)):
            problems.append("entry_probabilities differ")
        if not np.array_equal(keep_h, dev.host(keep_d)):
            problems.append(f"keep_mask differs in {int((keep_h != dev.host(keep_d)).sum())} rows")
        if not np.array_equal(prob_h, dev.host(prob_d)):
            problems.append("keep_probabilities differ")
        mask_h, exp_h, kept_h = balance.balance_partition(ro, ids, uids, p_h, seed)
        mask_d, exp_d, kept_d = balance.balance_partition(d_ro, d_ids, d_uids, p_d, seed)
        if not (np.array_equal(mask_h, keep_h) and np.array_equal(mask_h, dev.host(mask_d))):
            problems.append("balance_partition's mask differs")
        if not np.array_equal(kept_h, dev.host(kept_d)):
            problems.append("balance_partition's kept entry counts differ")
        if not np.isclose(exp_h, exp_d, rtol=1e-9):
            problems.append(f"expected rows differ: host {exp_h!r}, device {exp_d!r}")
        kept, expected = int(keep_h.sum()), float(prob_h.sum())
        detail = (
            f"t={t:g}: kept {kept:,} of {len(keep_h):,} (expected {expected:,.0f}); "
            f"device keep_mask {secs * 1e3:.1f} ms"
        )
        if problems:
            return {"ok": False, "detail": "; ".join(problems) + " | " + detail}
        return {"ok": True, "detail": "device == host; " + detail}
    except Exception as exc:  # report, do not crash the whole check
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}


# ----------------------------------------------------------------------------- main


def run(args) -> dict:
    if args.simulate and args.rows > 5000:
        raise CheckError(
            f"--simulate runs every GPU thread in Python: use --rows 5000 or fewer, not {args.rows}"
        )
    dev = Device(args.simulate)  # before numba is imported (simulator switch)
    import numba
    import numpy as np

    from gpu_curate.kernels import cpu as cpu_kernels
    from gpu_curate.kernels import gpu as gpu_kernels
    from gpu_curate.match import _host_buffers, _match_on_device, device_tables, match_arrow

    res: dict = {"device": dev.name, "rows": args.rows, "simulate": args.simulate}
    t0 = time.perf_counter()
    arr, nbytes, md, laion, meta = load_inputs(args)
    res.update(
        texts_mb=nbytes / 1e6,
        entries=len(md),
        laion=str(laion),
        metadata=str(meta),
        load_s=time.perf_counter() - t0,
    )
    t0 = time.perf_counter()
    tables = md.tables
    res["tables_build_s"] = time.perf_counter() - t0
    res["tables_mb"] = tables.nbytes / 1e6

    # CPU, all threads.
    match_arrow(arr[:1000], md, "cpu")  # JIT / cache load
    threads = numba.config.NUMBA_NUM_THREADS
    cpu_s, cpu_csr = timed(dev, args.reps, lambda: match_arrow(arr, md, "cpu"))
    res.update(cpu_threads=threads, cpu_s=cpu_s, cpu_texts_per_s=len(arr) / cpu_s)

    # GPU: tables to the device once, warm-up (JIT), then timed runs.
    xp = dev.xp
    offsets, data, validity, bit_offset = _host_buffers(arr)
    t0 = time.perf_counter()
    dtables = device_tables(md, xp)
    dev.sync()
    res["tables_to_device_s"] = time.perf_counter() - t0
    warm = arr[: min(len(arr), 256)]
    t0 = time.perf_counter()
    _match_on_device(*_host_buffers(warm), md, xp)
    dev.sync()
    res["gpu_first_call_s"] = time.perf_counter() - t0
    if not args.simulate:
        res["gpu_first_call_new_process_s"] = first_call_in_new_process(meta)

    reps = 1 if args.simulate else args.reps
    copy_s, gpu_csr = timed(
        dev, reps, lambda: _match_on_device(offsets, data, validity, bit_offset, md, xp)
    )
    lo, hi = int(offsets[0]), int(offsets[-1])
    # xp.array copies (to the device; under the simulator off Arrow's read-only memory).
    d_offsets = xp.array(offsets.astype(np.int64) - lo)
    d_data = xp.array(data[lo:hi] if hi > lo else np.zeros(1, np.uint8))
    d_validity = xp.array(validity[bit_offset // 8 :]) if validity.size else xp.zeros(0, np.uint8)
    kernel_s, kernel_csr = timed(
        dev,
        reps,
        lambda: gpu_kernels.match_rows(d_offsets, d_data, d_validity, bit_offset % 8, dtables, xp),
    )
    res.update(
        gpu_incl_copy_s=copy_s,
        gpu_incl_copy_texts_per_s=len(arr) / copy_s,
        gpu_kernel_s=kernel_s,
        gpu_kernel_texts_per_s=len(arr) / kernel_s,
        gpu_kernel_gb_per_s=nbytes / kernel_s / 1e9,
    )

    # Correctness: both GPU runs against the CPU CSR.
    host_gpu = (dev.host(gpu_csr[0]), dev.host(gpu_csr[1]))
    ok, detail = compare_csr(arr, cpu_csr, host_gpu)
    ok2, detail2 = compare_csr(arr, cpu_csr, (dev.host(kernel_csr[0]), dev.host(kernel_csr[1])))
    res.update(csr_ok=ok and ok2, csr_detail=detail if not ok else detail2)

    seed = np.uint64(0x5EED)
    h_cpu = cpu_kernels.hash_rows(offsets, data, seed)
    h_gpu = dev.host(gpu_kernels.hash_rows(d_offsets, d_data, seed, xp))
    res["hash_ok"] = bool(np.array_equal(h_cpu, h_gpu))

    if args.kernel_split:
        res["kernel_split"] = kernel_split(
            dev, reps, args.kernel_split, lambda: _match_on_device(*_host_buffers(arr), md, xp)
        )

    bal = check_balance(dev, cpu_csr[0], cpu_csr[1], len(md), args.t)
    res["balance"] = bal
    res["ok"] = res["csr_ok"] and res["hash_ok"] and bal["ok"]
    if args.pipeline_rows:
        res["pipeline"] = pipeline_check(args, laion, meta)
        res["ok"] = res["ok"] and res["pipeline"]["ok"]
    return res


def kernel_split(dev: Device, reps: int, tiles_mb: list[int], call) -> dict:
    """Milliseconds of each kernel in one call (summed over its tiles, best of ``reps``),
    then of the whole call (host-to-device copy included) at each tile size."""
    from gpu_curate.kernels import gpu as gpu_kernels

    launch = gpu_kernels._launch
    spent: dict[str, float] = {}

    def timed_launch(kernel, n, *args):
        # Events around each launch, then a sync: the split adds those syncs to the call.
        if dev.simulate:
            ms = 1e3 * timed(dev, 1, lambda: launch(kernel, n, *args))[0]
        else:
            start, stop = dev.xp.cuda.Event(), dev.xp.cuda.Event()
            start.record()
            launch(kernel, n, *args)
            stop.record()
            stop.synchronize()
            ms = dev.xp.cuda.get_elapsed_time(start, stop)
        name = getattr(kernel, "__name__", None) or getattr(kernel.py_func, "__name__", "?")
        spent[name] = spent.get(name, 0.0) + ms

    best: dict[str, float] = {}
    gpu_kernels._launch = timed_launch
    try:
        for _ in range(max(1, reps)):
            spent.clear()
            call()
            dev.sync()
            for k, v in spent.items():
                best[k] = min(best.get(k, float("inf")), v)
    finally:
        gpu_kernels._launch = launch
    tile = gpu_kernels.TILE_BYTES
    calls = {}
    try:
        for mb in tiles_mb:
            gpu_kernels.TILE_BYTES = mb << 20
            calls[mb] = 1e3 * timed(dev, reps, call)[0]
    finally:
        gpu_kernels.TILE_BYTES = tile
    return {"kernel_ms": best, "call_ms_by_tile_mb": calls, "tile_mb": tile >> 20}


def first_call_in_new_process(meta: Path) -> float | str:
    """Seconds of the first device match in a fresh process (a new Dask GPU worker's case).

    The kernels were compiled by this process, so this measures Numba's on-disk cache.
    """
    import subprocess

    code = (
        "import time, pyarrow as pa\n"
        "from gpu_curate.metadata import Metadata\n"
        "from gpu_curate.match import match_arrow\n"
        f"md = Metadata.from_file({str(meta)!r}); md.tables\n"
        "import cupy; cupy.zeros(1)\n"
        "t0 = time.perf_counter()\n"
        "match_arrow(pa.array(['a photo of a dog'] * 256), md, 'gpu')\n"
        "cupy.cuda.Device().synchronize()\n"
        "print(time.perf_counter() - t0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        return "error: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
    return float(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- pipeline


def _counts(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["count"]).column("count").to_numpy()


def _device_pool_bytes() -> int:
    """Bytes held by CuPy's memory pool in this process: its peak, as freed blocks stay."""
    import cupy

    return int(cupy.get_default_memory_pool().total_bytes())


def _task_seconds(stream: list[dict]) -> dict:
    """Count and summed compute seconds of the match and balance part tasks."""
    from dask.utils import key_split

    out: dict = {}
    for task in stream:
        # (Part tasks are keyed match-part-NNNNN-RUN and balance-part-NNNNN-RUN.)
        name = key_split(task["key"]).lstrip("_").replace("_task", "").split("-")[0]
        if name not in ("match", "balance"):
            continue
        secs = sum(s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute")
        n, total = out.get(name, (0, 0.0))
        out[name] = (n + 1, total + secs)
    return {k: {"tasks": n, "compute_s": round(total, 2)} for k, (n, total) in out.items()}


def pipeline_check(args, laion: Path, meta: Path) -> dict:
    """``curate`` on the cpu and gpu backends: identical outputs, and rows/s of each run."""
    import traceback

    import numpy as np
    from bench_pipeline import build_pool, curated_uids

    from gpu_curate.metadata import Metadata
    from gpu_curate.pipeline import Options, curate

    rows, files = args.pipeline_rows, args.pipeline_files
    pool = args.workdir / "pool"
    t0 = time.perf_counter()
    build_pool(laion, pool, rows, files)
    res: dict = {"rows": rows, "files": files, "pool_build_s": time.perf_counter() - t0}
    md = Metadata.from_file(meta)
    runs: list[dict] = []
    res["runs"] = runs

    def one(label: str, out: Path, **options) -> Path | None:
        print(f"  pipeline: {label} ...", flush=True)
        t0 = time.perf_counter()
        try:
            rep = curate(
                [str(pool)], md, str(out), t=20_000, seed=0,
                options=Options(quiet=True, overwrite=True, **options),
            )  # fmt: skip
        except Exception as exc:  # report it and go on with the other runs
            traceback.print_exc()
            runs.append({"label": label, "error": f"{type(exc).__name__}: {exc}"[:500]})
            return None
        wall = time.perf_counter() - t0
        runs.append(
            {
                "label": label,
                "wall_s": wall,
                "rows_per_s": rep["pool_rows"] / wall,
                "seconds_match": rep["seconds_match"],
                "seconds_balance": rep["seconds_balance"],
                "curated_rows": rep["curated_rows"],
                "backend": rep["backend"],
                "cluster": f"{rep['cluster']}, {rep['workers']} workers, {rep['threads']} threads",
            }
        )
        return out

    w = args.workdir
    outs = [one("cpu, local threads (first: Numba JIT)", w / "out-cpu-1", backend="cpu")]
    outs.append(one("cpu, local threads", w / "out-cpu-2", backend="cpu"))
    outs.append(one("gpu, LocalCUDACluster default", w / "out-gpu", backend="gpu"))
    # Clusters of --gpu-threads threads per GPU worker, each run twice (the second run finds
    # the worker warm), with the busy seconds of the part tasks: time inside the tasks, told
    # apart from time between them.
    for threads in args.gpu_threads:
        label = f"gpu, LocalCUDACluster {threads} threads/GPU"
        try:
            from dask_cuda import LocalCUDACluster
            from distributed import Client, get_task_stream

            cluster = LocalCUDACluster(threads_per_worker=threads)
            with cluster, Client(cluster) as c:
                address = cluster.scheduler_address
                for run_no in (1, 2):
                    out = w / f"out-gpu{threads}-{run_no}"
                    name = label + (" (warm)" if run_no == 2 else "")
                    with get_task_stream(client=c) as stream:
                        outs.append(one(name, out, backend="gpu", scheduler=address))
                    if "error" not in runs[-1]:
                        runs[-1]["tasks"] = _task_seconds(stream.data)
                        pools = c.run(_device_pool_bytes)
                        runs[-1]["device_pool_gb"] = max(pools.values()) / 1e9
        except Exception as exc:
            traceback.print_exc()
            runs.append({"label": label, "error": f"{type(exc).__name__}: {exc}"})

    # Every run that finished must have written the cpu run's outputs.
    ref = outs[1] or outs[0]
    problems = [f"{r['label']}: {r['error']}" for r in runs if "error" in r]
    compared = 0
    if ref is not None:
        ref_uids = curated_uids(ref)
        ref_counts = _counts(ref / "entry_counts.parquet")
        ref_kept = _counts(ref / "curated_entry_counts.parquet")
        for out in [o for o in outs if o is not None and o != ref]:
            if not np.array_equal(curated_uids(out), ref_uids):
                problems.append(f"{out.name}: curated uids differ from {ref.name}")
            if not np.array_equal(_counts(out / "entry_counts.parquet"), ref_counts):
                problems.append(f"{out.name}: entry counts differ from {ref.name}")
            if not np.array_equal(_counts(out / "curated_entry_counts.parquet"), ref_kept):
                problems.append(f"{out.name}: curated entry counts differ from {ref.name}")
            compared += 1
        res["curated_rows"] = int(ref_uids.size)
    res["compared_outputs"] = compared
    res["problems"] = problems
    res["ok"] = ref is not None and not problems and compared > 0
    return res


def _secs(v) -> str:
    return f"{v:.1f} s" if isinstance(v, float) else str(v)


def summary(res: dict) -> str:
    def pf(ok):
        return "PASS" if ok else "FAIL"

    bal = res["balance"]
    lines = [
        f"gpu_check on {res['device']}",
        f"  input            {res['rows']:,} texts ({res['texts_mb']:.1f} MB) x "
        f"{res['entries']:,} entries",
        f"  tables           build {res['tables_build_s']:.2f} s ({res['tables_mb']:.0f} MB), "
        f"to device {res['tables_to_device_s']:.2f} s, GPU first call (JIT) "
        f"{res['gpu_first_call_s']:.1f} s"
        + (
            f", in a new process (kernel cache) {_secs(res['gpu_first_call_new_process_s'])}"
            if "gpu_first_call_new_process_s" in res
            else ""
        ),
        f"  CPU              {res['cpu_texts_per_s']:>14,.0f} texts/s  ({res['cpu_threads']} "
        f"threads, {res['cpu_s']:.3f} s)",
        f"  GPU kernel only  {res['gpu_kernel_texts_per_s']:>14,.0f} texts/s  "
        f"({res['gpu_kernel_s']:.3f} s, {res['gpu_kernel_gb_per_s']:.2f} GB/s of text)",
        f"  GPU incl. H2D    {res['gpu_incl_copy_texts_per_s']:>14,.0f} texts/s  "
        f"({res['gpu_incl_copy_s']:.3f} s)",
        f"  GPU vs CPU       {res['gpu_kernel_texts_per_s'] / res['cpu_texts_per_s']:.1f}x "
        f"(kernel only), {res['gpu_incl_copy_texts_per_s'] / res['cpu_texts_per_s']:.1f}x "
        "(incl. copy)",
        f"  CSR GPU == CPU   {pf(res['csr_ok'])}: {res['csr_detail']}",
        f"  hash_rows        {pf(res['hash_ok'])}",
        f"  balance          {pf(bal['ok'])}: {bal['detail']}",
    ]
    split = res.get("kernel_split")
    if split is not None:
        kernels = ", ".join(f"{k} {v:.2f}" for k, v in split["kernel_ms"].items())
        lines.append(f"  kernels (ms)     {kernels}  (tile {split['tile_mb']} MB)")
        total = sum(split["kernel_ms"].values())
        lines.append(
            f"  kernels sum      {total:.2f} ms, of a {1e3 * res['gpu_kernel_s']:.2f} ms call "
            "with the texts on the device (the rest: array ops between launches, host syncs)"
        )
        calls = ", ".join(f"{mb} MB {ms:.1f}" for mb, ms in split["call_ms_by_tile_mb"].items())
        lines.append(f"  call by tile     {calls} ms (host-to-device copy included)")
    pipe = res.get("pipeline")
    if pipe is not None:
        lines.append(
            f"  pipeline         {pipe['rows']:,} rows in {pipe['files']} Parquet files "
            f"(built in {pipe['pool_build_s']:.0f} s); t=20000, seed=0"
        )
        for r in pipe["runs"]:
            if "error" in r:
                lines.append(f"    {r['label']:<46} ERROR {r['error']}")
            else:
                lines.append(
                    f"    {r['label']:<46} {r['rows_per_s']:>12,.0f} rows/s  "
                    f"({r['wall_s']:.1f} s: match {r['seconds_match']:.1f}, balance "
                    f"{r['seconds_balance']:.1f}; {r['cluster']}; curated {r['curated_rows']:,}"
                    + (
                        f"; device pool {r['device_pool_gb']:.1f} GB"
                        if "device_pool_gb" in r
                        else ""
                    )
                    + ")"
                )
                if r.get("tasks"):
                    busy = [
                        f"{k} {v['tasks']} tasks {v['compute_s']:.1f} s"
                        for k, v in r["tasks"].items()
                    ]
                    lines.append("      busy in tasks: " + ", ".join(busy))
        lines.append(
            f"    same outputs   {pf(pipe['ok'])}: {pipe['compared_outputs']} outputs compared "
            f"with the cpu run" + ("; " + "; ".join(pipe["problems"]) if pipe["problems"] else "")
        )
    lines.append(f"RESULT: {pf(res['ok'])}")
    if res["simulate"]:
        lines.insert(1, "  (simulator: timings are not GPU timings)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        res = run(args)
    except CheckError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    res["total_s"] = time.perf_counter() - t0
    print(summary(res))
    print(f"  total            {res['total_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
