"""End-to-end benchmark: `gpu-curate curate` on a Parquet pool built from the LAION texts.

    python benchmarks/bench_pipeline.py --rows 10000000 --files 20

Builds (once, cached in --workdir) a pool of --rows rows in --files Parquet files by
replicating ../shared/data/captions/laion_alt_text_10k.parquet, runs the CLI end to end
(read -> match -> count -> balance -> write) in a subprocess, and reports rows/s and the
peak RSS of the run. For a baseline in the same run it also times the MetaCLIP-style
reference matcher (pyahocorasick, per-text calls) on 20,000 of the texts.

    python benchmarks/bench_pipeline.py --rows 10000000 --files 1000 --unique \
        --workdir /tmp/gcb-shards

is the layout of img2dataset's shards (1,000 files of 10k rows), which gpu-curate packs
into parts of up to 250k rows. A pool that is not in the page cache reads at disk speed
(about 70 MB/s on the CI machine): `cat` it to /dev/null first when comparing runs.

    python benchmarks/bench_pipeline.py --unique --tree old=/tmp/old --tree new=/tmp/new \
        --repeat 3

alternates two versions (each a `git archive` of a commit's ``gpu_curate``, with
``kernels`` moved under it) on the same pools and checks that they curate the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def build_pool(laion: Path, folder: Path, rows: int, files: int, unique: bool = False) -> None:
    """Write the pool: the LAION rows replicated (each text 1,000 times in 10M rows).

    With ``unique``, row i's URL and text get the suffix `` #i``, so that no two rows are
    equal, as in a real pool. Replicated texts let Parquet's dictionary encoding shrink
    the files, which makes reading and writing them much cheaper than a real pool's;
    the suffix adds no match to the LAION texts (checked on all 10k of them).
    """
    marker = folder / f".built-{rows}-{files}{'-unique' if unique else ''}"
    if marker.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    for old in folder.glob(".built-*"):
        old.unlink()
    base = pq.read_table(laion, columns=["URL", "TEXT"])
    per = -(-rows // files)
    for f in range(files):
        n = min(per, rows - f * per)
        reps = -(-n // base.num_rows)
        table = pa.concat_tables([base] * reps).slice(0, n)
        if unique:
            suffix = pa.array([f" #{f * per + i}" for i in range(n)])
            table = pa.table(
                {c: pc.binary_join_element_wise(table[c], suffix, "") for c in ("URL", "TEXT")}
            )
        pq.write_table(table, folder / f"pool-{f:04d}.parquet", row_group_size=100_000)
    marker.touch()


def curated_uids(out: Path):
    """The sorted uids of a run's curated rows (``OUT/curated``), to compare runs by."""
    import numpy as np

    return np.sort(pq.read_table(out / "curated", columns=["uid"]).column("uid").to_numpy())


def same_outputs(a: Path, b: Path) -> bool:
    """Whether two runs curated the same rows (by uid) with the same entry counts."""
    import numpy as np

    names = ("entry_counts.parquet", "curated_entry_counts.parquet")
    return np.array_equal(curated_uids(a), curated_uids(b)) and all(
        pq.read_table(a / n).equals(pq.read_table(b / n)) for n in names
    )


def add_tree_options(ap: argparse.ArgumentParser) -> None:
    """``--tree LABEL=PATH`` (repeatable) and ``--repeat N``: versions alternating in one run."""
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH", type=_tree,
                    help="run the CLI with PATH first on PYTHONPATH (a `git archive` of a "
                         "commit's gpu_curate, kernels moved under it); repeatable")  # fmt: skip
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the trees, alternating")


def _tree(value: str) -> tuple[str, str]:
    label, sep, path = value.partition("=")
    if not (sep and label and path):
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {value!r}")
    return label, path


def tree_rounds(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(label, out-folder suffix) of each run, in order: the trees alternating, ``--repeat``
    rounds; PYTHONPATH names the tree's folder while its run goes (restored after)."""
    trees = args.tree or [("checkout", "")]
    python_path = os.environ.get("PYTHONPATH", "")
    try:
        for _ in range(args.repeat):
            for label, path in trees:
                os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (path, python_path) if p)
                yield label, "" if label == "checkout" else f"-{label}"
    finally:
        os.environ["PYTHONPATH"] = python_path


def report_same(name: str, outs: dict[str, Path]) -> None:
    """Print whether every tree's run wrote the first tree's curated rows and counts."""
    first, *rest = outs
    for label in rest:
        same = same_outputs(outs[first], outs[label])
        print(f"\n{name}: {label} {'writes the same' if same else 'DIFFERS from'} "
              f"curated uids and entry counts as {first}")  # fmt: skip


def reference_rate(laion: Path, metadata: Path, n: int = 20_000) -> float:
    """MetaCLIP's pyahocorasick matcher (bench_match.MetaClipReference), texts/s on 1 core."""
    from bench_match import MetaClipReference

    texts = [t for t in pq.read_table(laion, columns=["TEXT"]).column(0).to_pylist() if t]
    texts = (texts * (n // len(texts) + 1))[:n]
    reference = MetaClipReference(json.loads(metadata.read_text()))
    t0 = time.perf_counter()
    for text in texts:
        reference.match(text)
    return n / (time.perf_counter() - t0)


# The CLI runs under this small Python process, which reports the CLI's own peak RSS.
# Measured here, ru_maxrss would also count this process's memory (the pool builder, the
# reference matcher): Linux records a child's RSS before its exec, and a vforked child
# shares this process's memory until then.
_PEAK_RSS_WRAPPER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


def run_cli(pool: Path, metadata: Path, out: Path, extra: list[str]) -> tuple[float, float, dict]:
    entry = "from gpu_curate.cli import main; main()"
    # -P: no current directory first on sys.path, where a run from the checkout would
    # import its gpu_curate before the one PYTHONPATH names (bench_text_pool's --tree).
    cmd = [sys.executable, "-P", "-c", entry, "curate", str(pool), "--metadata", str(metadata),
           "--out", str(out), "--t", "20000", "--quiet", "--overwrite", *extra]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS_WRAPPER, *cmd], check=True,
                          stdout=subprocess.PIPE, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    peak_kb = int(done.stdout.split()[-1])  # (--quiet: the CLI prints nothing)
    report = json.loads((out / "report.json").read_text())
    return wall, peak_kb / 1024**2, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gpu-curate-bench"))
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--processes", action="store_true", help="also time --processes")
    ap.add_argument(
        "--unique",
        action="store_true",
        help="also run on a pool whose rows are all distinct (a suffix ' #i' on each)",
    )
    ap.add_argument(
        "--compression",
        default="zstd",
        help="codecs of the written parts to time, comma-separated (default: zstd)",
    )
    add_tree_options(ap)
    args = ap.parse_args()
    laion = args.data / "captions" / "laion_alt_text_10k.parquet"
    metadata = args.data / "metadata" / "metadata_proxy_en.json"
    if not laion.exists():
        sys.exit(f"shared data not found under {args.data}")
    pools = [("replicated", args.workdir / "pool")]
    build_pool(laion, pools[0][1], args.rows, args.files)
    if args.unique:
        pools.append(("unique", args.workdir / "pool-unique"))
        build_pool(laion, pools[1][1], args.rows, args.files, unique=True)
    # The compiled metadata tables come from a cache of the bench's own (built here once),
    # as on any machine after its first run with this metadata.
    os.environ["GPU_CURATE_CACHE_DIR"] = str(args.workdir / "table-cache")
    from gpu_curate.metadata import Metadata

    _ = Metadata.from_file(metadata).tables
    cpu = platform.processor() or platform.machine()
    print(
        f"# bench_pipeline: {args.rows:,} rows, {args.files} files; {cpu}, {os.cpu_count()} cores"
    )
    print(f"command: {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
    ref = reference_rate(laion, metadata)
    modes = [("threads", [])] + ([("processes", ["--processes"])] if args.processes else [])
    codecs = [c for c in args.compression.split(",") if c]
    print(
        "\n| pool | mode | compression | tree | wall s | rows/s end to end | peak RSS GB "
        "| match s | balance s | curated rows | output MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for pool_name, pool in pools:
        for name, extra in modes:
            for codec in codecs:
                outs: dict[str, Path] = {}
                for label, suffix in tree_rounds(args):
                    out = args.workdir / f"out-{pool_name}-{name}-{codec}{suffix}"
                    flags = [*extra, "--compression", codec]
                    wall, rss_gb, rep = run_cli(pool, metadata, out, flags)
                    rate = rep["pool_rows"] / wall
                    m, b = rep["seconds_match"], rep["seconds_balance"]
                    mb = sum(f.stat().st_size for f in out.rglob("*.parquet")) / 1e6
                    print(f"| {pool_name} | {name} | {codec} | {label} | {wall:.1f} | "
                          f"{rate:,.0f} | {rss_gb:.2f} | {m:.1f} | {b:.1f} | "
                          f"{rep['curated_rows']:,} | {mb:,.0f} |", flush=True)  # fmt: skip
                    outs[label] = out
                report_same(f"{pool_name}, {name}, {codec}", outs)
    print(
        f"\nreference (MetaCLIP's pyahocorasick matcher, matching only, 1 core): {ref:,.0f} texts/s"
    )  # noqa: E501


if __name__ == "__main__":
    main()
