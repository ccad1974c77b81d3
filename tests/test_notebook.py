"""The exploration notebook runs top to bottom, and is committed without outputs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_curation.ipynb"
CELL_TIMEOUT_S = 120
TOTAL_BUDGET_S = 120


def _kernel_name() -> str:
    """``python3``: ipykernel's native kernel, which runs this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 kernel spec (ipykernel not importable by jupyter_client)")
    # A spec whose argv[0] is "python" is started with sys.executable by jupyter_client,
    # so the kernel imports this environment's gpu_curate.
    return "python3"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], cell.source[:60]
        assert cell.execution_count is None, cell.source[:60]
    assert "widgets" not in nb.metadata
    assert nb.metadata["kernelspec"]["name"] == "python3"
    # The first code cell is where a user points the notebook at their data.
    assert "POOL = None" in code[0].source and "METADATA = None" in code[0].source


def test_notebook_runs_top_to_bottom(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=_kernel_name(),
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.monotonic()
    client.execute()  # raises CellExecutionError at the first failing cell
    elapsed = time.monotonic() - start

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # t sweep, rank-frequency, head/tail, top entries
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "epoch 0 == offline curated set: True" in text
    assert elapsed < TOTAL_BUDGET_S, f"notebook took {elapsed:.0f} s"


def test_notebook_reads_a_pool_folder_as_gpu_curate_does(tmp_path):
    # POOL set to an img2dataset output folder (shards' .parquet beside their .tar and
    # _stats.json files): the set-up cell reads the Parquet shards only. (Up to that cell.)
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = tmp_path / "shards"
    pool.mkdir()
    for i in range(2):
        texts = [f"a dog {i} {j}" for j in range(10)]
        pq.write_table(pa.table({"caption": texts}), pool / f"0000{i}.parquet")
        (pool / f"0000{i}.tar").write_bytes(b"\0" * 512)
        (pool / f"0000{i}_stats.json").write_text(json.dumps({"count": 10}, indent=4))
    # (Beside them a TSV file, which the notebook does not read, and the metadata: the
    # curation ran on these too, 1,500 rows where the notebook had said 1,000, or failed
    # reading the metadata as a pool file.)
    (pool / "b.tsv").write_text("a dog\n" * 5)
    (pool / "metadata.json").write_text(json.dumps(["dog", "cat"]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = nb.cells[1].source.replace("POOL = None", f"POOL = {str(pool)!r}", 1)
    nb.cells[1].source = params.replace(
        "METADATA = None", f"METADATA = {str(pool / 'metadata.json')!r}", 1
    )
    nb.cells = nb.cells[:7]  # (up to the curation)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name=_kernel_name(),
        resources={"metadata": {"path": str(tmp_path)}},
    )  # fmt: skip
    client.execute()
    text = "".join(o.get("text", "") for o in nb.cells[2].outputs if o.output_type == "stream")
    assert f"pool: {pool} (20 rows, text column 'caption')" in text, text
    assert f"(1 files of other formats in {pool} left out: the notebook reads Parquet)" in text
    (curated,) = [o for o in nb.cells[6].outputs if o.output_type == "execute_result"]
    assert "'pool_rows': 20," in curated["data"]["text/plain"]
