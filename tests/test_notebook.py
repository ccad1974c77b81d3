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
