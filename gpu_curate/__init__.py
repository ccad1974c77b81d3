"""gpu-curate: MetaCLIP metadata matching and balancing on GPU (or CPU) dataframes.

The public API, in the order data flows (read -> match -> count -> balance -> write):

>>> from gpu_curate import Metadata, match_texts
>>> match_texts(["a photo of a dog in new york"], ["dog", "new york"], backend="cpu")
[[0, 1]]
"""

# Every name loads on first use: `import gpu_curate` stays cheap (the command line's
# launcher in __main__ relies on it to catch a Ctrl-C during the heavy imports), and Dask
# and the pipeline load only for what needs them.
_LAZY = {
    "__version__": (None, None),
    "BackendError": ("backend", "BackendError"),
    "gpu_available": ("backend", "gpu_available"),
    "resolve": ("backend", "resolve"),
    "CurateError": ("errors", "CurateError"),
    "MetadataError": ("errors", "MetadataError"),
    "match_arrow": ("match", "match_arrow"),
    "match_texts": ("match", "match_texts"),
    "Metadata": ("metadata", "Metadata"),
    "curate": ("pipeline", "curate"),
    "balance_matched": ("pipeline", "balance_matched"),
    "Options": ("pipeline", "Options"),
    "BalancedSampler": ("sampler", "BalancedSampler"),
    "plan": ("planning", "plan"),
    "dataframe": ("dataframe", None),
}


def __getattr__(name: str):
    import importlib

    if name not in _LAZY:
        # (A submodule, as `import gpu_curate; gpu_curate.errors` found it when the
        # package imported it.)
        missing = AttributeError(f"module 'gpu_curate' has no attribute {name!r}")
        if name.startswith("__") or not name.isidentifier():
            raise missing
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise  # (one the submodule itself imports)
            raise missing from None
    module, attr = _LAZY[name]
    if module is None:
        value = _version()
    else:
        mod = importlib.import_module(f".{module}", __name__)
        value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value  # (later lookups skip this function)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gpu-curate")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


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
