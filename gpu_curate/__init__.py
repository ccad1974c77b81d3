"""gpu-curate: MetaCLIP metadata matching and balancing on GPU (or CPU) dataframes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gpu-curate")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
