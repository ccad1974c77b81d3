"""The output folder: create it, refuse one that would lose or mix data, claim it for a run.

A run may write only into a new or empty folder, a folder it replaces (``--overwrite``),
or a folder that the same run began (``--resume``). "The same run" is checked with
manifests written before the first part: ``_run.json`` for the match stage (inputs, each
input file's size and modification stamp, metadata, options) and ``_balance.json`` for the
balance stage (the matched dataset, its entry counts, ``t`` and ``seed``). A resume that
differs in any of them is refused, so finished parts are never mixed with parts of
another run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import PurePosixPath

import fsspec
import numpy as np

from .errors import CurateError
from .io import _glob_root, atomic_write_json

MATCH_MANIFEST = "_run.json"
BALANCE_MANIFEST = "_balance.json"
# Temporary names of io.atomic_write_* (and the visible ones of earlier versions).
_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{32}$")


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    return fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol


def _key(fs, path: str) -> str:
    path = path.rstrip("/") or "/"
    return os.path.realpath(path) if _protocol(fs) in ("file", "local") else path


def _within(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _hidden_below(child: str, parent: str) -> bool:
    rel = PurePosixPath(child).relative_to(parent).parts
    return any(c.startswith((".", "_")) for c in rel)


def check_apart(out: str, inputs: Sequence[str]) -> None:
    """Refuse an output folder that holds an input, or that a folder input would read back.

    ``--overwrite`` would delete such an input, and outputs written inside a scanned input
    folder would be read as input by the next run (or by a resume). An output folder whose
    name (below the input folder) starts with ``.`` or ``_`` is skipped by the scan, so it
    may live there.

    Examples
    --------
    >>> check_apart("pool/out", ["pool/"])  # doctest: +SKIP
    Traceback (most recent call last):
    gpu_curate.errors.CurateError: output folder pool/out is inside the input folder ...
    """
    ofs, opath = fsspec.core.url_to_fs(out)
    o = _key(ofs, opath)
    for spec in inputs:
        fs, _, paths = fsspec.get_fs_token_paths(spec)
        if _protocol(fs) != _protocol(ofs):
            continue
        is_glob = any(ch in spec for ch in "*?[")
        root = _glob_root(fs._strip_protocol(spec)) if is_glob else (paths[0] if paths else "")
        if not root:
            continue
        r = _key(fs, root)
        if _within(r, o):
            raise CurateError(
                f"output folder {out} is or holds the input {spec} (--overwrite would delete "
                "it): choose another --out"
            )
        scanned = ("**" in spec) if is_glob else fs.isdir(root)
        if scanned and _within(o, r) and not _hidden_below(o, r):
            raise CurateError(
                f"output folder {out} is inside the input folder {spec}, which would read "
                "it back as input: choose another --out (or a name starting with _)"
            )


def prepare_out(out: str, overwrite: bool, resume: bool, keep: str | None = None):
    """Create (or, with ``overwrite``, empty) the output folder; refuse a non-empty one.

    ``keep``: a folder (the matched dataset a ``balance`` reads) that ``overwrite`` must not
    delete. With ``resume``, the folder must be empty or hold a gpu-curate run, and the
    temporary files of an interrupted write are removed.

    Returns
    -------
    (fs, path)
        The folder's file system and path (no trailing slash).
    """
    fs, path = fsspec.core.url_to_fs(out)
    path = path.rstrip("/")
    if fs.exists(path):
        if not fs.isdir(path):
            raise CurateError(f"output {out} exists and is not a folder")
        if fs.ls(path):
            if overwrite:
                if keep is not None:
                    kfs, kpath = fsspec.core.url_to_fs(keep)
                    same = _protocol(kfs) == _protocol(fs)
                    if same and _within(_key(kfs, kpath), _key(fs, path)):
                        raise CurateError(
                            f"output folder {out} holds the matched dataset {keep}: "
                            "--overwrite would delete it; choose another --out"
                        )
                fs.rm(path, recursive=True)
            elif not resume:
                raise CurateError(
                    f"output folder {out} exists and is not empty (use --overwrite to replace "
                    "it or --resume to continue an interrupted run)"
                )
            else:
                if not any(fs.exists(f"{path}/{m}") for m in (MATCH_MANIFEST, BALANCE_MANIFEST)):
                    raise CurateError(
                        f"--resume: {out} holds no gpu-curate run (no {MATCH_MANIFEST} or "
                        f"{BALANCE_MANIFEST}); use a new folder or --overwrite"
                    )
                _remove_temporaries(fs, path)
    fs.makedirs(path, exist_ok=True)
    return fs, path


def _remove_temporaries(fs, path: str) -> None:
    for p in fs.find(path):
        if _TEMPORARY.search(p):
            fs.rm(p)


def claim(fs, out: str, name: str, manifest: dict, what: str = "run") -> None:
    """Write the manifest ``name`` of a new run, or check that a resumed run is the same."""
    path = f"{out}/{name}"
    if not fs.exists(path):
        atomic_write_json(fs, path, manifest)
        return
    with fs.open(path, "rb") as fh:
        previous = json.load(fh)
    if previous == manifest:
        return
    if "files" in manifest and previous.get("inputs") == manifest.get("inputs"):
        before = {f[0]: f[1:] for f in previous.get("files", [])}
        for rel, *now in manifest["files"]:
            if before.get(rel) != now:
                raise CurateError(
                    f"--resume: input file {rel} changed since {out} was begun (size or "
                    "modification time); its finished parts would be stale: use --overwrite"
                )
    changed = sorted(k for k in manifest if previous.get(k) != manifest.get(k))
    raise CurateError(
        f"--resume: {out} was written by a different {what} (differs in: "
        f"{', '.join(changed)}); use --overwrite to start again"
    )


def balance_manifest(fs, matched: str, counts: np.ndarray, t: float, seed: int) -> dict:
    """What a balance stage's result depends on: the matched parts, the counts, t, seed."""
    with fs.open(f"{matched}/_SUCCESS", "rb") as fh:
        parts = hashlib.sha256(fh.read()).hexdigest()
    counts_sha = hashlib.sha256(np.ascontiguousarray(counts, "<i8").tobytes()).hexdigest()
    return {"matched_parts": parts, "entry_counts": counts_sha, "t": t, "seed": seed}
