"""Compile ``rowlogic.py`` for a target: the one place where the shared source is jitted.

``load_rowlogic(decorator, name)`` executes rowlogic.py as a fresh module named ``name``
and replaces each of its functions with ``decorator(function)``. Calls between those
functions go through the module's globals, so they resolve to the compiled twins of the
same target: the CPU build calls CPU functions, the CUDA build CUDA device functions.
"""

import hashlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path

SOURCE = Path(__file__).with_name("rowlogic.py")

FUNCTIONS = (
    "fmix64",
    "is_wrap",
    "is_special",
    "token_key",
    "vocab_hash",
    "edge_hash",
    "bloom_position",
    "bloom_bit",
    "bloom_has",
    "vocab_probe",
    "edge_find",
    "lookup_token",
    "token_bytes",
    "tokenize_row",
    "walk_row",
    "sort_unique",
    "_sift_down",
    "_dedupe",
    "is_valid",
    "hash_bytes",
)


def invalidate_stale_cache() -> None:
    """Drop Numba's on-disk cache of this folder when rowlogic.py has changed.

    Numba keys a cached function on its own file's timestamp only; the CPU drivers inline
    rowlogic's functions, so an edit of rowlogic.py alone would leave them stale.
    """
    cache = SOURCE.parent / "__pycache__"
    stamp = cache / "rowlogic.sha256"
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    try:
        for f in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
            f.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:
        pass  # read-only install: Numba then caches elsewhere or not at all


def load_rowlogic(decorator: Callable, name: str) -> types.ModuleType:
    """Return rowlogic.py compiled with ``decorator``, registered as ``sys.modules[name]``."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for fname in FUNCTIONS:
        setattr(module, fname, decorator(getattr(module, fname)))
    sys.modules[name] = module
    return module
