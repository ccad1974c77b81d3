"""A text pool: `gpu-curate curate` on one TSV, CSV or JSON Lines file of millions of rows
(is memory bounded by the part size? is the file matched by every core?), or on the
same rows in many small files (``--files``: are they packed?), its wall time and peak RSS.

    python benchmarks/bench_text_pool.py --rows 5000000 --format tsv,csv,jsonl
    python benchmarks/bench_text_pool.py --rows 1000000 --files 1000 --format tsv

Builds (once, cached in --workdir) the pool from the CC3M validation captions of
../shared/data, row n's caption suffixed with `` #n`` so that no two rows are equal: a
TSV (``caption<TAB>url``, no header, as CC3M and CC12M are published), a CSV
(``caption,url`` with a header, Python's csv module quoting where needed; every 100th
caption holds a line break, in quotes) or JSON Lines (``{"caption": ..., "url": ...,
"id": n}``). Each ``--tree LABEL=PATH`` runs the CLI with
PATH first on PYTHONPATH (a ``git archive`` of another commit's ``gpu_curate``, with
``kernels`` moved under it), so that two versions alternate on the same file in one run;
their curated uids and entry counts must be identical. Without ``--tree`` the checkout
itself runs. Read the file into the page cache before comparing (`cat FILE > /dev/null`):
this machine reads an evicted file at about 70 MB/s.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sys
from pathlib import Path

from bench_pipeline import SHARED, add_tree_options, report_same, run_cli, tree_rounds

CC3M = "captions/cc3m_validation_alt_text.tsv"


def build_pool(cc3m: Path, folder: Path, rows: int, fmt: str, files: int = 1) -> Path:
    """The pool folder: ``rows`` rows (CC3M's captions and URLs, repeated, suffixed) in one
    file, or in ``files`` files of equal rows (a CSV file: each with its header)."""
    pool = folder / (f"pool-{fmt}-{rows}" + (f"-x{files}" if files > 1 else ""))
    if pool.exists():
        return pool
    lines = [line.split("\t", 1) for line in cc3m.read_text(encoding="utf-8").splitlines()]
    tmp = pool.with_name(f".{pool.name}.tmp")
    tmp.mkdir(parents=True)
    n = 0
    for f in range(files):
        name = f"cc.{fmt}" if files == 1 else f"cc-{f:05d}.{fmt}"
        end = rows * (f + 1) // files
        with open(tmp / name, "w", encoding="utf-8", newline="") as fh:
            if fmt == "csv":
                fh.write("caption,url\r\n")
            while n < end:
                out = []
                for caption, url in lines[: end - n]:
                    if fmt == "tsv":
                        out.append(f"{caption} #{n}\t{url}\n")
                    elif fmt == "csv":
                        text = f"{caption} #{n}" if n % 100 else f"{caption}\nline two #{n}"
                        out.append(_csv_line(text, url))
                    else:
                        out.append(json.dumps({"caption": f"{caption} #{n}", "url": url, "id": n}))
                        out.append("\n")
                    n += 1
                fh.write("".join(out))
    tmp.rename(pool)
    return pool


def _csv_line(*fields: str) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(fields)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--format", default="tsv,csv,jsonl", help="tsv, csv, jsonl (comma-separated)")
    ap.add_argument("--files", type=int, default=1, help="the rows in this many files")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gpu-curate-text-bench"))
    ap.add_argument("--data", type=Path, default=SHARED)
    add_tree_options(ap)
    args = ap.parse_args()
    cc3m, metadata = args.data / CC3M, args.data / "metadata" / "metadata_proxy_en.json"
    if not cc3m.exists():
        sys.exit(f"shared data not found under {args.data}")
    os.environ["GPU_CURATE_CACHE_DIR"] = str(args.workdir / "table-cache")
    cpu = platform.processor() or platform.machine()
    print(f"# bench_text_pool: {args.rows:,} rows in {args.files:,} file(s); {cpu}, "
          f"{os.cpu_count()} cores")  # fmt: skip
    print(f"command: {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
    print("\n| file | MB | tree | wall s | peak RSS GB | match s | balance s | curated rows |")
    print("|---|---|---|---|---|---|---|---|")
    for fmt in [f for f in args.format.split(",") if f]:
        pool = build_pool(cc3m, args.workdir, args.rows, fmt, args.files)
        mb = sum(f.stat().st_size for f in pool.iterdir()) / 1e6
        outs: dict[str, Path] = {}
        for label, _ in tree_rounds(args):
            out = args.workdir / f"out-{fmt}-{label}"
            wall, rss_gb, rep = run_cli(pool, metadata, out, ["--backend", "cpu"])
            m, b = rep["seconds_match"], rep["seconds_balance"]
            print(f"| {fmt} | {mb:,.0f} | {label} | {wall:.2f} | {rss_gb:.2f} | {m:.1f} | "
                  f"{b:.1f} | {rep['curated_rows']:,} |", flush=True)  # fmt: skip
            outs[label] = out
        report_same(fmt, outs)


if __name__ == "__main__":
    main()
