"""The dataframe API (``gpu_curate.dataframe.match``) under a distributed Client with many
small partitions: does per-task overhead (shipping the step, its metadata) dominate?

    python benchmarks/bench_dataframe.py --rows 3000 --partitions 64 --id-column id

Matches ``--rows`` LAION texts of ../shared/data in ``--partitions`` partitions
(``dd.from_pandas``) against the 374,565-entry proxy metadata on a ``LocalCluster`` of 2
single-threaded worker processes, ``--rounds`` times, and prints each round's wall time.
To compare two versions, run it with ``PYTHONPATH`` set to each tree in turn (a ``git
archive`` of another commit's ``gpu_curate``, with ``kernels`` moved under it).
"""

from __future__ import annotations

import argparse
import logging
import time

import dask.dataframe as dd
import pandas as pd
import pyarrow.parquet as pq
from bench_pipeline import SHARED
from distributed import Client, LocalCluster

import gpu_curate
from gpu_curate import dataframe as gdf
from gpu_curate.metadata import Metadata


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--partitions", type=int, default=64)
    ap.add_argument("--id-column", default=None, help="id (a column of ints); default: the index")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    texts = pq.read_table(SHARED / "captions/laion_alt_text_10k.parquet").column("TEXT")
    texts = texts.to_pylist()[: args.rows]
    md = Metadata.from_file(SHARED / "metadata/metadata_proxy_en.json")
    pdf = pd.DataFrame({"text": texts, "id": range(len(texts))})
    ddf = dd.from_pandas(pdf, npartitions=args.partitions)
    print(f"gpu_curate from {gpu_curate.__file__}")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, silence_logs=logging.ERROR) as cluster,
        Client(cluster),
    ):
        for i in range(args.rounds):
            t0 = time.perf_counter()
            rows = len(gdf.match(ddf, md, id_column=args.id_column).compute())
            print(f"round {i}: {rows:,} matched rows, {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
