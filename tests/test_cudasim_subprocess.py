"""Run the CUDA-simulator tests from a normal test run.

``NUMBA_ENABLE_CUDASIM`` must be set before numba is imported, and this process has
imported numba already, so tests/test_match_cudasim.py runs in a child pytest with the
variable set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MATCH_KERNELS

TESTS = Path(__file__).resolve().parent
CUDASIM_FILE = TESTS / "test_match_cudasim.py"


@pytest.mark.skipif(
    os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
    reason="NUMBA_ENABLE_CUDASIM=1 here: the cudasim tests run in this process instead",
)
def test_cudasim_tests_pass_in_a_subprocess():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cudasim",
        str(CUDASIM_FILE),
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    try:
        proc = subprocess.run(
            cmd, cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=600
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"cudasim tests took over {exc.timeout} s: {' '.join(cmd)}")
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    assert proc.returncode == 0, f"cudasim tests failed ({' '.join(cmd)}):\n{out[-6000:]}"
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 0, f"no cudasim test ran:\n{out[-3000:]}"
    assert "failed" not in summary and "error" not in summary, summary


GPU_CHECK = TESTS.parent / "benchmarks" / "gpu_check.py"


def _cupy_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("cupy") is not None


@pytest.mark.skipif(_cupy_installed(), reason="cupy is installed here")
def test_gpu_check_without_cupy_says_so():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run(
        [sys.executable, str(GPU_CHECK), "--rows", "10"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cupy not installed: run this on a CUDA machine" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_gpu_check_runs_under_the_simulator(tmp_path):
    from conftest import LAION_PARQUET, PROXY_METADATA, shared_data

    laion, metadata = shared_data(LAION_PARQUET), shared_data(PROXY_METADATA)
    out = tmp_path / "gpu_check.json"
    cmd = [
        sys.executable,
        str(GPU_CHECK),
        "--simulate",
        "--rows",
        "200",
        "--reps",
        "1",
        "--laion",
        str(laion),
        "--metadata",
        str(metadata),
        "--json",
        str(out),
        "--kernel-split",
        "1",
    ]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "RESULT: PASS" in proc.stdout, text[-4000:]
    assert "kernels sum" in proc.stdout, text[-4000:]
    res = json.loads(out.read_text())
    assert res["csr_ok"] and res["hash_ok"] and res["rows"] == 200
    split = res["kernel_split"]
    assert sorted(split["kernel_ms"]) == sorted(MATCH_KERNELS)
    assert all(ms > 0 for ms in split["kernel_ms"].values())
    assert list(split["call_ms_by_tile_mb"]) == ["1"] and split["tile_mb"] == 32


COMPILE_CHECK = TESTS.parent / "benchmarks" / "gpu_compile_check.py"
KERNELS = {*MATCH_KERNELS, "_hash_rows"}
# Kernels whose arguments include the tile's token indices or byte positions.
INDEXED = {"_token_ends", "_row_starts", "_row_tokens", "_split_tokens", "_lookup_tokens"}


def test_gpu_compile_check_records_every_kernel_and_both_index_types():
    # Step 1 of benchmarks/gpu_compile_check.py runs everywhere (simulator); step 2, the
    # PTX compile, needs NVIDIA's NVRTC and runs only where it is installed.
    proc = subprocess.run(
        [sys.executable, str(COMPILE_CHECK), "--record-only"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sigs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(sigs) == KERNELS
    for name in INDEXED:
        kinds = {"int64" if "array(int64" in " ".join(s[2:]) else "int32" for s in sigs[name]}
        assert len(sigs[name]) == 2 and kinds == {"int32", "int64"}, (name, sigs[name])


def test_gpu_compile_check_compiles_for_sm90():
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        load_nvidia_dynamic_lib("nvrtc")
        load_nvidia_dynamic_lib("nvvm")
    except Exception as exc:
        pytest.skip(f"NVIDIA's NVRTC/NVVM are not installed here ({type(exc).__name__})")
    # (Not under the simulator, even where this session runs with NUMBA_ENABLE_CUDASIM=1:
    # the compile needs the real CUDA target.)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run(
        [sys.executable, str(COMPILE_CHECK), "--cc", "9.0"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0 and "RESULT: PASS" in proc.stdout, proc.stdout[-3000:]
