"""gpu-curate: MetaCLIP metadata matching and balancing on GPU (or CPU) dataframes.

The public API, in the order data flows (read -> match -> count -> balance -> write):

>>> from gpu_curate import Metadata, match_texts
>>> match_texts(["a photo of a dog in new york"], ["dog", "new york"], backend="cpu")
[[0, 1]]
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gpu-curate")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

from .backend import BackendError, gpu_available, resolve  # noqa: E402
from .errors import CurateError, MetadataError  # noqa: E402
from .match import match_arrow, match_texts  # noqa: E402
from .metadata import Metadata  # noqa: E402


def __getattr__(name: str):
    # Heavier pieces (Dask, the pipeline) load on first use, so `import gpu_curate` is quick.
    lazy = {
        "curate": ("pipeline", "curate"),
        "balance_matched": ("pipeline", "balance_matched"),
        "Options": ("pipeline", "Options"),
        "BalancedSampler": ("sampler", "BalancedSampler"),
        "plan": ("planning", "plan"),
        "dataframe": ("dataframe", None),
    }
    if name in lazy:
        import importlib

        module, attr = lazy[name]
        mod = importlib.import_module(f".{module}", __name__)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'gpu_curate' has no attribute {name!r}")


__all__ = [
    "__version__",
    "BackendError",
    "BalancedSampler",
    "CurateError",
    "Metadata",
    "MetadataError",
    "Options",
    "balance_matched",
    "curate",
    "dataframe",
    "gpu_available",
    "match_arrow",
    "match_texts",
    "plan",
    "resolve",
]
