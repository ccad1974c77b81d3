"""The one place where gpu-curate chooses between the CPU and the GPU stack.

A :class:`Backend` bundles the array module (NumPy or CuPy) and the dataframe module
(pandas or cuDF) of one side. Every other module asks for ``resolve(name)`` and uses the
bundle, so no ``if gpu:`` is scattered through the code.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from types import ModuleType

from .errors import CurateError

BACKENDS = ("auto", "cpu", "gpu")


class BackendError(CurateError, RuntimeError):
    """The requested backend cannot run here (one sentence says why).

    A :class:`CurateError` (the CLI reports it in one line) and, as before, a RuntimeError.
    """


@dataclass(frozen=True)
class Backend:
    """A compute side: ``name`` is "cpu" or "gpu"; ``xp`` its array module."""

    name: str
    xp: ModuleType

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"

    @property
    def df(self) -> ModuleType:
        """The dataframe module: pandas on cpu, cudf on gpu (imported on first use)."""
        if self.name == "cpu":
            import pandas

            return pandas
        try:
            return importlib.import_module("cudf")
        except ImportError as exc:  # pragma: no cover - needs a GPU machine
            raise BackendError(
                "the gpu backend's dataframe step needs cuDF: pip install 'gpu-curate[cuda12]'"
            ) from exc

    def asnumpy(self, array):
        """Copy an array of this backend to host NumPy (no copy on cpu)."""
        return self.xp.asnumpy(array) if self.is_gpu else array


@functools.cache
def gpu_unavailable_reason() -> str | None:
    """Why the GPU backend cannot run here, or None when it can."""
    try:
        import cupy  # noqa: F401
    except Exception:
        return "CuPy is not installed (pip install 'gpu-curate[cuda12]' or '[cuda13]')"
    try:
        from numba import cuda
    except Exception as exc:  # pragma: no cover
        return f"numba.cuda cannot be imported ({exc})"
    try:
        if not cuda.is_available():
            return "no CUDA device is visible (numba.cuda.is_available() is False)"
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device is visible"
    except Exception as exc:
        return f"the CUDA driver does not answer ({type(exc).__name__}: {exc})"
    return None


def gpu_available() -> bool:
    """True when a CUDA device is visible and CuPy and numba.cuda import."""
    return gpu_unavailable_reason() is None


def check_name(backend: str | Backend) -> None:
    """Refuse a backend name other than "auto", "cpu" and "gpu", without resolving it (a
    graph built on a client without a GPU may run on GPU workers).

    Examples
    --------
    >>> check_name("gpu")
    """
    if not isinstance(backend, Backend) and backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def resolved_name(backend: str | Backend = "auto") -> str:
    """The backend "auto" | "cpu" | "gpu" stands for on this machine ("cpu" or "gpu"), without
    importing its modules; a :class:`BackendError` if it cannot run here.

    Examples
    --------
    >>> resolved_name("cpu")
    'cpu'
    """
    check_name(backend)
    if isinstance(backend, Backend):
        return backend.name
    if backend == "auto":
        return "gpu" if gpu_available() else "cpu"
    if backend == "gpu" and (reason := gpu_unavailable_reason()) is not None:
        raise BackendError(f"the gpu backend cannot run here: {reason}")
    return backend


def resolve(backend: str | Backend = "auto") -> Backend:
    """Turn "auto" | "cpu" | "gpu" (or a Backend) into a :class:`Backend`.

    Examples
    --------
    >>> resolve("cpu").name
    'cpu'
    """
    if isinstance(backend, Backend):
        return backend
    if resolved_name(backend) == "cpu":
        import numpy

        return Backend("cpu", numpy)
    import cupy

    return Backend("gpu", cupy)
