#!/usr/bin/env python
"""Compile every CUDA kernel of gpu-curate to PTX, on a machine without a GPU.

The CUDA simulator runs the kernels as Python, so it never types or compiles them: a
typing error in a kernel would first show on a lent GPU, whose time is scarce. This
script closes that gap before a device call:

1. it runs a small match (int32 and int64 token indices) and ``hash_rows`` under the
   Numba CUDA simulator, in a subprocess, and records the argument types of every kernel
   launch as Numba types them;
2. it compiles each kernel with each recorded signature to PTX for ``--cc`` (default
   9.0, an H100) with ``numba.cuda.compile_ptx``. That needs NVIDIA's NVRTC and NVVM
   libraries, not a GPU or a driver: the ``ptx`` extra (``pip install -e '.[ptx]'``).

Prints one line per kernel and signature and ends in ``RESULT: PASS`` or ``RESULT: FAIL``
(exit 0 / 1; exit 2 when it cannot run here)::

    python benchmarks/gpu_compile_check.py [--cc 9.0]
    python benchmarks/gpu_compile_check.py --record-only   # step 1 only, as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
NO_NVRTC = "NVRTC/NVVM not found: pip install -e '.[ptx]' (NVIDIA's wheels; no GPU needed)"


def record(path: str) -> None:
    """Under the simulator: run the kernels once and pickle {kernel: [signatures]} to path."""
    import numpy as np
    import pyarrow as pa
    from numba import typeof

    from gpu_curate.kernels import gpu
    from gpu_curate.match import _host_buffers, _match_on_device
    from gpu_curate.metadata import Metadata

    warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
    seen: dict[str, list] = {}
    launch = gpu._launch

    def spy(kernel, n, *args):
        sig = tuple(typeof(a) for a in args)
        name = kernel.py_func.__name__ if hasattr(kernel, "py_func") else kernel.__name__
        if sig not in seen.setdefault(name, []):
            seen[name].append(sig)
        launch(kernel, n, *args)

    gpu._launch = spy
    md = Metadata(["dog", "new york", "new york city", "abcdefghijklmnopq"])
    texts = pa.array(["a dog, new york city!", None, "", "abcdefghijklmnopq dog"] * 3)
    _match_on_device(*_host_buffers(texts), md, np)
    index_type = gpu._index_type
    gpu._index_type = lambda nb, m: np.int64  # the >1 GB-row path, on a small input
    try:
        _match_on_device(*_host_buffers(texts), md, np)
    finally:
        gpu._index_type = index_type
    offsets, data, _, _ = _host_buffers(texts.fill_null(""))
    gpu.hash_rows(offsets.astype(np.int64), data, np.uint64(7), np)
    with open(path, "wb") as fh:
        pickle.dump(seen, fh)


def recorded_signatures() -> dict[str, list]:
    """Run :func:`record` in a simulator subprocess and return what it recorded."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "signatures.pkl")
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        code = f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); "
        code += f"import gpu_compile_check as g; g.record({out!r})"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"recording under the simulator failed:\n{proc.stderr[-3000:]}")
        with open(out, "rb") as fh:
            return pickle.load(fh)


def compile_all(signatures: dict[str, list], cc: tuple[int, int]) -> list[tuple[str, str, str]]:
    """(kernel, signature, "ok ..." or the error's first line) for every recorded signature."""
    from numba import cuda

    if not cuda.is_available():
        # numba-cuda compiles device functions for the current device's compute capability;
        # with no device there is none to ask, so it is told the target's.
        import numba.cuda.dispatcher as dispatcher

        dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    from gpu_curate.kernels import gpu

    rows = []
    for name, sigs in sorted(signatures.items()):
        for sig in sigs:
            label = ", ".join(str(t) for t in sig)
            try:
                ptx, _ = cuda.compile_ptx(getattr(gpu, name).py_func, sig, cc=cc)
            except Exception as exc:  # every failure is reported, then the next kernel
                text = str(exc)
                if "nvrtc" in text.lower() or "nvvm" in text.lower():
                    print(NO_NVRTC, file=sys.stderr)
                    raise SystemExit(2) from None
                rows.append((name, label, f"FAIL {type(exc).__name__}: {text.splitlines()[0]}"))
                continue
            local = " (uses local memory)" if ".local" in ptx else ""
            rows.append((name, label, f"ok, {len(ptx):,} bytes of PTX{local}"))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cc", default="9.0", help="compute capability to compile for (9.0)")
    ap.add_argument("--record-only", action="store_true", help="print the signatures as JSON")
    args = ap.parse_args(argv)
    signatures = recorded_signatures()
    if args.record_only:
        print(json.dumps({k: [[str(t) for t in s] for s in v] for k, v in signatures.items()}))
        return 0
    major, minor = (int(x) for x in args.cc.split("."))
    rows = compile_all(signatures, (major, minor))
    for name, label, result in rows:
        print(f"{name:<16} {result}\n    ({label})")
    ok = all(r.startswith("ok") for _, _, r in rows)
    print(f"{len(rows)} kernel signatures compiled for sm_{major}{minor}")
    print(f"RESULT: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
