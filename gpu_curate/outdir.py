"""The output folder: create it, refuse one that would lose or mix data, claim it for a run.

A run may write only into a new or empty folder, a folder it replaces (``--overwrite``),
or a folder that the same run began (``--resume``). "The same run" is checked with
manifests written before the first part: ``_run.json`` for the match stage (inputs, each
input file's size and modification stamp, metadata, options) and ``_balance.json`` for the
balance stage (the matched dataset, its entry counts, ``t`` and ``seed``); both record
``--compression``, and ``_run.json`` the cut into parts. A resume that differs in any of
them is refused, so finished parts are never mixed with parts of another run. While a run
writes into a local folder it holds a ``flock`` on :data:`LOCK` in it, so that another
run (``--overwrite`` and ``--resume`` included) is refused rather than writing beside it; a
command that reads a run folder (``balance``, ``plan``, the sampler) holds a shared lock on
it (:func:`reading`), so that no run overwrites or writes it meanwhile, and ``--overwrite``
refuses a folder that holds such a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath

import fsspec
import numpy as np

from .errors import OUT, OVERWRITE, RESUME, CurateError, Interrupted, option
from .io import (
    atomic_write_json,
    glob_pattern,
    is_glob,
    is_hidden,
    is_local,
    json_bytes,
    protocol_of,
    temporary_name,
    to_disk,
)

try:
    import fcntl
except ImportError:  # (Windows: no lock)
    fcntl = None

MATCH_MANIFEST = "_run.json"
# What _run.json records of each input file after its relative path (pipeline.match_stage).
_FILE_FIELDS = ("size", "modification time", "format")
BALANCE_MANIFEST = "_balance.json"
# What a manifest key missing from an earlier version's manifest stood for (before
# --compression, every part was written with zstd).
_MANIFEST_DEFAULTS = {"compression": "zstd"}
# Held (flock) by the run writing into a local output folder; names its pid and host.
LOCK = ".gpu-curate.lock"
# Temporary names of io.atomic_write_* (and the visible ones of earlier versions).
_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{32}$")
# io.write_atomic's (the report's pages and plots): .NAME.PID.HEX8.tmp
_ATOMIC_TEMPORARY = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


def _key(fs, path: str) -> str:
    path = path.rstrip("/") or "/"
    return os.path.realpath(path) if is_local(fs) else path


def _within(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


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
        fs, path = fsspec.core.url_to_fs(spec)
        if protocol_of(fs) != protocol_of(ofs):
            continue
        pattern, root = glob_pattern(fs, spec) if is_glob(spec, fs) else ("", path)
        if not root:
            continue
        r = _key(fs, root)
        if _within(r, o):
            raise CurateError(
                f"output folder {out} is or holds the input {spec} ({OVERWRITE} would delete "
                f"it): choose another {OUT}"
            )
        if pattern:
            # A wildcard below the root's first level (pool/*/x.parquet, pool/**) reaches
            # into sub-folders, where the output would be.
            below = pattern[len(root) :].strip("/")
            scanned = "/" in below or "**" in below
        else:
            scanned = fs.isdir(root)
        # (A folder scan skips names starting with . or _ below its root: io.is_hidden.)
        if scanned and _within(o, r) and not is_hidden(str(PurePosixPath(o).relative_to(r))):
            raise CurateError(
                f"output folder {out} is inside the input folder {spec}, which would read "
                f"it back as input: choose another {OUT} (or a name starting with _)"
            )


# What a run writes at the top of its output folder (and ``gpu-curate report`` beside it):
# ``--overwrite`` empties a folder that holds nothing else, and refuses any other, which
# gpu-curate did not write. (Besides these: the lock, temporaries, a page of ``gpu-curate
# report``, a balance of the run in a folder of its own, and a folder browser's .DS_Store.)
RUN_NAMES = frozenset(
    {MATCH_MANIFEST, BALANCE_MANIFEST, "matched", "curated", "_work", "entry_counts.parquet",
     "entry_counts.json", "curated_entry_counts.parquet", "report.json", "report"}
)  # fmt: skip
# The folders of a run's layout, in which no other run may write.
_LAYOUT_FOLDERS = frozenset({"matched", "curated", "_work", "report"})
# A name of ``owned`` (prepare_out) that is a run folder of its own, whose contents are
# checked as a run's: the demo's ``result``.
RUN_FOLDER = "/run"

# In a page that ``gpu-curate report`` writes (its head).
REPORT_PAGE_TAG = b'<meta name="generator" content="gpu-curate report">'


def _foreign(fs, path: str, owned: frozenset[str], run: str | None = None) -> list[str]:
    """The names in the folder ``path`` that gpu-curate did not write (``owned``: it did;
    a name in it followed by :data:`RUN_FOLDER` is a run folder, checked as one), named
    from ``path`` (``t5000/notes.txt``). ``run``: the run folder whose balances ``path``
    may hold (default ``path``; inside a balance, still the run it balanced)."""
    run = path if run is None else run
    foreign = []
    for child in fs.ls(path, detail=True):
        name = PurePosixPath(str(child["name"])).name
        folder = str(child["name"]).rstrip("/")
        is_dir = child.get("type") == "directory" and not child.get("islink")
        if is_dir and name + RUN_FOLDER in owned:
            foreign += [f"{name}/{n}" for n in _foreign(fs, folder, RUN_NAMES)]
            continue
        if is_dir and _holds_run(fs, folder):  # (under a name of the layout's too: report/)
            if _balance_of(fs, folder, run):
                foreign += [f"{name}/{n}" for n in _foreign(fs, folder, RUN_NAMES, run)]
            else:
                foreign.append(f"{name} (another run's output)")
            continue
        if ignored_name(name) or name == ".DS_Store" or name in owned:
            continue
        if is_dir and not [n for n in fs.ls(folder, detail=False) if not ignored_name(n)]:
            continue  # (empty but for a lock or temporaries: an emptying cut short)
        is_file = child.get("type") == "file" and not child.get("islink")
        if is_file and name.lower().endswith((".html", ".htm")):
            with fs.open(child["name"], "rb") as fh:
                if REPORT_PAGE_TAG in fh.read(1024):  # (a page of gpu-curate report)
                    continue
        foreign.append(name)
    return sorted(foreign)


def _in_layout(fs, path: str) -> tuple[str, str] | None:
    """(run folder, name) where ``path`` is or lies in a folder of a run's layout
    (``RUN/curated``, ``RUN/report/x``) below the run folder, else None. (On a local disk
    the folders are the real ones: a link to RUN/matched is RUN/matched.)"""
    below = PurePosixPath(_key(fs, path))
    for folder in below.parents:
        name = below.relative_to(folder).parts[0]
        if name in _LAYOUT_FOLDERS and str(folder) != "." and _run_like(fs, str(folder)):
            return str(folder), name
    return None


def _holds_run(fs, folder: str) -> bool:
    """Whether ``folder`` holds a run's manifest (``_run.json`` or ``_balance.json``)."""
    return any(fs.exists(f"{folder}/{m}") for m in (MATCH_MANIFEST, BALANCE_MANIFEST))


def _balance_of(fs, folder: str, run: str) -> bool:
    """Whether ``folder`` is a balance of the run folder ``run`` (``balance RUN --out
    RUN/t5000``): its manifest names that run's; another run inside is no part of it."""
    try:
        names = (f"{folder}/{BALANCE_MANIFEST}", f"{run}/{MATCH_MANIFEST}")
        if any(fs.info(n).get("type") != "file" for n in names):
            return False  # (a FIFO or a device would block or never end)
        with fs.open(names[0], "rb") as fh:
            manifest = json.load(fh)
        with fs.open(names[1], "rb") as fh:
            run_sha = hashlib.sha256(fh.read()).hexdigest()
    except (OSError, ValueError, RecursionError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("matched_run") == run_sha
        and not fs.exists(f"{folder}/{MATCH_MANIFEST}")
    )


def check_out(
    out: str,
    overwrite: bool,
    resume: bool,
    manifest: str,
    keep: str | None = None,
    owned: frozenset[str] | None = None,
) -> bool:
    """Refuse an output folder as :func:`prepare_out` would, without touching it: a run
    checks it before its slow start (the cluster, reading every input's columns), and
    empties it with ``overwrite`` only once its inputs have passed those checks. Returns
    whether the folder holds anything (which ``overwrite`` would delete).

    Examples
    --------
    >>> check_out("out/", overwrite=False, resume=False, manifest=MATCH_MANIFEST)  # doctest: +SKIP
    Traceback (most recent call last):
    gpu_curate.errors.CurateError: output folder out/ exists and is not empty (use --overwrite ...
    """
    return not _checked_out(out, overwrite, resume, manifest, keep, owned)[3]


def _checked_out(out, overwrite, resume, manifest, keep, owned, locked=False):
    """(fs, path, whether it exists, whether it is empty) of an output folder the run may
    write; a :class:`CurateError` for one it may not."""
    if not str(out).strip():
        raise CurateError(f"{OUT} is empty: name an output folder")
    fs, path = fsspec.core.url_to_fs(out)
    if protocol_of(fs) == "memory":
        # (fsspec's memory:// lives in one process: worker processes would write theirs.)
        raise CurateError(
            f"output folder {out} is in memory, which a run's workers do not share and which "
            "ends with the process: name a folder on a disk or a shared file system"
        )
    path = path.rstrip("/") or "/"
    same_as_keep = False
    if keep is not None:
        kfs, kpath = fsspec.core.url_to_fs(keep)
        if protocol_of(kfs) == protocol_of(fs):
            k, o = _key(kfs, kpath), _key(fs, path)
            same_as_keep = k == o
            if overwrite and _within(k, o):
                raise CurateError(
                    f"output folder {out} holds the matched dataset {keep}, which it would "
                    f"delete: choose another {OUT}"
                )
    if layout := _in_layout(fs, path):
        # (Its parts would be read as the run's, and an --overwrite of the run would take
        # them for files it did not write.)
        raise CurateError(
            f"output folder {out} lies in the {layout[1]}/ folder of the run {layout[0]}, "
            f"which it would mix with: choose another {OUT}"
        )
    exists = fs.exists(path)
    if exists and not fs.isdir(path):
        raise CurateError(f"output {out} exists and is not a folder")
    if not exists and (link := _dangling_link(fs, path)) is not None:
        where = f"output {out} is" if link == path else f"output {out} lies in {link},"
        raise CurateError(
            f"{where} a symbolic link to {os.readlink(link)}, which does not exist: create "
            f"that folder, or choose another {OUT}"
        )
    # (A folder that holds only what a write cut off at its start left is empty.)
    fresh = not (exists and [p for p in fs.ls(path, detail=False) if not ignored_name(p)])
    if fresh:
        return fs, path, exists, fresh
    if not locked and is_local(fs) and fcntl is not None:
        # (Another run's lock says more than what its folder holds; under the lock, the
        # probe would find this run's own.)
        if (held := _probe(f"{path}/{LOCK}")) is not None:
            raise CurateError(_held_message(held, out, f"{path}/{LOCK}"))
    if overwrite:
        if is_local(fs) and _within(os.path.realpath(os.getcwd()), _key(fs, path)):
            raise CurateError(
                f"{OVERWRITE} would delete {out}, which holds the current directory: choose "
                f"another {OUT}"
            )
        try:
            if is_local(fs) and fcntl is not None:
                _check_nested(path, out)
            foreign = _foreign(fs, path, RUN_NAMES if owned is None else owned)
        except RecursionError:
            raise CurateError(
                f"{OVERWRITE}: {out} holds folders nested too deeply to be checked: empty it "
                f"yourself, or choose another {OUT}"
            ) from None
        if foreign:
            shown = ", ".join(foreign[:3]) + (
                f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            )
            raise CurateError(
                f"{OVERWRITE} would delete {out}, which holds what gpu-curate does not write "
                f"({shown}): move that away or choose another {OUT}"
            )
    elif not resume:
        raise CurateError(
            f"output folder {out} exists and is not empty (use {OVERWRITE} to replace it or "
            f"{RESUME} to continue an interrupted run)"
        )
    else:
        own = fs.exists(f"{path}/{manifest}")
        if not (own or (same_as_keep and fs.exists(f"{path}/{MATCH_MANIFEST}"))):
            kind = "match or curate" if manifest == MATCH_MANIFEST else "balance"
            raise CurateError(
                f"{RESUME}: {out} holds no interrupted {kind} run (no {manifest}); use a new "
                f"folder or {OVERWRITE}"
            )
    return fs, path, exists, fresh


@contextlib.contextmanager
def prepare_out(
    out: str,
    overwrite: bool,
    resume: bool,
    manifest: str,
    keep: str | None = None,
    owned: frozenset[str] | None = None,
    resumable: bool = True,
) -> Iterator[tuple[fsspec.AbstractFileSystem, str]]:
    """Create (or, with ``overwrite``, empty) the output folder; refuse a non-empty one.

    ``manifest`` is the run's kind (:data:`MATCH_MANIFEST` for ``match`` and ``curate``,
    :data:`BALANCE_MANIFEST` for ``balance``): with ``resume``, a non-empty folder must
    hold that manifest (a ``balance`` may also continue in its own matched dataset), and
    the temporary files of an interrupted write are removed. ``keep``: the matched dataset
    a ``balance`` reads, which the output may neither hold (``overwrite`` would delete it)
    nor lie in. ``owned``: the names a folder that ``overwrite`` empties may hold
    (default :data:`RUN_NAMES`); a folder holding anything else is refused, not emptied.
    :func:`check_out` makes the same checks without creating, locking or emptying anything.
    Ctrl-C inside the block is raised as :class:`~gpu_curate.errors.Interrupted`, whose
    hint is a ``--resume`` (or, not ``resumable``, an ``--overwrite``).

    A context manager: a local folder is locked (:data:`LOCK`) before anything in it is
    checked or deleted, until the ``with`` block ends; a folder another run holds (writing
    or reading it) is refused, and so, with ``overwrite``, is one holding a folder below
    whose lock a run holds.

    Yields
    ------
    (fs, path)
        The folder's file system and path (no trailing slash).
    """
    fs, path, exists, _ = _checked_out(out, overwrite, resume, manifest, keep, owned)
    made = [] if exists else _missing_folders(fs, path)  # (what makedirs creates, deepest first)
    fs.makedirs(path, exist_ok=True)
    undone = False
    try:
        with _locked(fs, path, out) as locked:
            # (Again under the lock: another run may have written there since.)
            _, _, _, fresh = _checked_out(out, overwrite, resume, manifest, keep, owned, True)
            if not fresh and overwrite:
                try:
                    _empty(fs, path)
                except KeyboardInterrupt:
                    raise Interrupted(
                        "the folder was being emptied: run the same command again"
                    ) from None
                fresh = True
            if exists:
                remove_temporaries(fs, path)
            try:
                yield fs, path
            except KeyboardInterrupt as exc:
                # (The folder and its manifests stay, for --resume, where the command has
                # one: a resume continues from the parts finished so far.)
                if not resumable:
                    raise Interrupted(f"run it again with {OVERWRITE}") from None
                if isinstance(exc, Interrupted):
                    raise  # (a run's, inside this folder)
                instead = f" instead of {OVERWRITE}" if overwrite else ""
                raise Interrupted(
                    f"finished parts are kept: run the same command with {RESUME}{instead} "
                    "to continue"
                ) from None
            except Exception:
                # A run in a new or empty folder that fails before it finishes a part
                # leaves the folder as it found it: its manifests alone would refuse the
                # corrected run that follows (not empty; --resume: another run). (Only
                # under the lock: elsewhere the files may be another run's. Not on Ctrl-C,
                # which says to --resume.)
                with contextlib.suppress(OSError):  # (the run's own error is the one to say)
                    if (
                        locked
                        and fresh
                        and not _finished_parts(fs, path)
                        and not _nested_run(path, out)
                    ):
                        _empty(fs, path)
                        undone = True
                raise
    except Exception as exc:
        if undone:
            for folder in made:  # (stops at the first that is not empty: another's)
                try:
                    fs.rmdir(folder)
                except OSError:
                    break
            # (For the command line's advice: nothing is kept, so nothing to resume.)
            with contextlib.suppress(AttributeError, TypeError):
                exc.run_folder_undone = True
        raise


def _dangling_link(fs, path: str) -> str | None:
    """The local ``path``, or the folder above it, that is a symbolic link to nothing (a
    folder cannot be made through it), or None."""
    return next((p for p in _missing_folders(fs, path) if os.path.islink(p)), None)


def _missing_folders(fs, path: str) -> list[str]:
    """The local folders ``fs.makedirs(path)`` would create, deepest first (none
    elsewhere: an object store has no folders to remove)."""
    if not is_local(fs):
        return []
    made = []
    while path and not fs.exists(path):
        made.append(path)
        parent = posixpath.dirname(path)
        if parent == path:
            break
        path = parent
    return made


def _finished_parts(fs, path: str) -> bool:
    """Whether the run folder ``path`` holds a finished part (matched/ or curated/)."""
    return any(
        finished_parts(fs, child["name"].rstrip("/"))
        for child in fs.ls(path, detail=True)
        if child.get("type") == "directory"
    )


def finished_parts(fs, stage: str) -> int:
    """How many parts a stage's folder (``matched/`` or ``curated/``) marks finished: the
    stats files in its ``_parts/``.

    Listed, not globbed: in a folder named ``run[1]`` or ``a*b`` a pattern would match
    nothing, and the finished parts would be taken for none.

    Examples
    --------
    >>> finished_parts(fsspec.filesystem("file"), "out/matched")  # doctest: +SKIP
    5
    """
    try:
        names = fs.ls(f"{stage}/_parts", detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return sum(str(n).endswith(".json") for n in names)


def _nested_run(path: str, out: str) -> bool:
    """Whether a run holds the lock of a folder below the local folder ``path`` (one that
    began there while this run ran): its files are not this run's to remove."""
    try:
        _check_nested(path, out)
    except CurateError:
        return True
    return False


def ignored_name(path: str) -> bool:
    """Whether ``path`` names what does not make a folder non-empty: a temporary of
    :func:`~gpu_curate.io.atomic_write_bytes` and its kin, or the lock a killed run left.

    Examples
    --------
    >>> ignored_name("out/.gpu-curate.lock"), ignored_name("out/report.json")
    (True, False)
    """
    name = PurePosixPath(path).name
    return bool(_TEMPORARY.search(path) or _ATOMIC_TEMPORARY.match(name)) or name == LOCK


@contextlib.contextmanager
def _locked(fs, path: str, out: str) -> Iterator[bool]:
    """Hold the lock of the local folder ``path`` (nothing elsewhere; yields whether it is
    held); the lock file, which names its holder for the message of a run refused, is
    removed at the end."""
    name = f"{path}/{LOCK}"
    fd = _lock(name, out) if is_local(fs) and fcntl is not None else None
    try:
        yield fd is not None
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(name)  # (while held: a run waiting on it takes a new file)
            os.close(fd)


def _lock(name: str, out: str) -> int | None:
    while True:
        opened = _open_lock(name)
        if opened is None:
            return None  # (a folder this process cannot write: the run's first write says so)
        fd, created = opened
        try:
            held = _held(fd)
        except OSError:
            _drop(fd, name, created)
            return None  # (a file system without locks, as some network mounts)
        if held is not None:
            os.close(fd)
            raise CurateError(_held_message(held, out, name))
        if _current(name, fd):
            os.ftruncate(fd, 0)
            since = time.strftime("%Y-%m-%d %H:%M:%S")
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode())
            return fd
        os.close(fd)  # its holder removed it between our open and lock: take a new one


def _open_lock(name: str, read_only: bool = False) -> tuple[int, bool] | None:
    """Open the lock file ``name``, creating it if need be: (its descriptor, whether this
    call created it), or None where it can be neither created nor opened for writing (nor,
    with ``read_only``, an existing one opened for reading)."""
    while True:
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        except OSError:
            return None  # (a folder this process cannot write, or none at all)
        try:
            fd = _open_existing(name, read_only)
        except FileNotFoundError:
            continue  # (its holder removed it meanwhile: create it again)
        return None if fd is None else (fd, False)


def _open_existing(name: str, read_only: bool = True) -> int | None:
    """Open the existing file ``name`` for writing (an exclusive ``flock`` on NFS needs it),
    else (``read_only``) for reading; None where neither is allowed."""
    for flags in (os.O_RDWR, os.O_RDONLY) if read_only else (os.O_RDWR,):
        try:
            return os.open(name, flags)
        except FileNotFoundError:
            raise
        except OSError:
            continue
    return None


def _held(fd: int) -> str | None:
    """Take the exclusive lock on ``fd`` without waiting; None once taken, else what holds
    it: ``"reads"`` (only runs reading the folder: shared locks) or the line of the run
    writing it (from the file; ``"starting"`` before it wrote one). Raises OSError where
    the file system has no locks."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        pass
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # (granted beside shared locks only)
    except BlockingIOError:
        return _holder(fd)
    fcntl.flock(fd, fcntl.LOCK_UN)
    return "reads"


def _holder(fd: int) -> str:
    """The line the run holding the lock file ``fd`` wrote in it (``"starting"`` before
    it wrote one)."""
    return os.pread(fd, 300, 0).decode(errors="replace").split("\n")[0].strip() or "starting"


def _current(name: str, fd: int) -> bool:
    """Whether ``name`` is still the file of ``fd`` (a holder removes it at its end)."""
    try:
        return os.stat(name).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _drop(fd: int, name: str, created: bool) -> None:
    # Where there are no locks the file is no lock either: one this call created would be
    # left behind in the folder as a stray empty file.
    os.close(fd)
    if created:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _check_nested(path: str, out: str) -> None:
    """Refuse to empty the local folder ``path`` while a run writes or reads a folder below
    it (it holds that folder's :data:`LOCK`): ``--overwrite`` would delete that run's
    output or input under it. Only the lock files are opened, each without waiting."""
    for root, _dirs, files in os.walk(path):  # (links not followed, as _empty removes them)
        if LOCK not in files or root == path:  # (path's own: this run holds it)
            continue
        name = os.path.join(root, LOCK)
        held = _probe(name)
        if held is None:
            continue
        nested = f"{out.rstrip('/')}/{os.path.relpath(root, path)}"
        if held == "reads":
            run, stop = "a gpu-curate run reads", ""
        else:
            run, stop = f"another gpu-curate run ({held}) is writing", " or stop it"
        raise CurateError(
            f"{OVERWRITE} would delete {nested}, which {run} (it holds {name}): wait for it "
            f"to end{stop}, or choose another {OUT}"
        )


def _held_message(held: str, out: str, name: str) -> str:
    """Why a run may not write to ``out``, whose lock ``name`` another holds (``held``)."""
    if held == "reads":
        return (
            f"a gpu-curate run reads {out} (it holds {name}, which is released when that "
            f"process ends): wait for it to end, or choose another {OUT}"
        )
    return (
        f"another gpu-curate run ({held}) is writing to {out} (it holds {name}, which is "
        "released when that process ends): wait for it to end or stop it, or choose another "
        f"{OUT}"
    )


def _probe(name: str) -> str | None:
    """What holds the existing lock file ``name`` (:func:`_held`), or None: no one, or it
    cannot be opened, or there are no locks there."""
    try:
        fd = _open_existing(name)
    except FileNotFoundError:
        return None
    if fd is None:
        return None
    try:
        return _held(fd)
    except OSError:
        return None
    finally:
        os.close(fd)  # (releases the lock _held took)


@contextlib.contextmanager
def reading(folder: str, writes: str | None = None) -> Iterator[None]:
    """Hold a shared lock on :data:`LOCK` of the local run folder ``folder`` while a
    command reads it (``balance``, ``plan``, ``report``, the sampler), so that no run
    writes into it meanwhile and ``--overwrite`` of it, or of a folder that holds it, is
    refused.

    Readers share the lock; the last one to end removes the file. A folder that another
    run is writing (it holds the lock) is refused: read meanwhile, it could change or be
    deleted under the reader. The folder is read without a lock where it has none: a
    folder this process cannot write (a read-only mount) and that holds no lock file, a
    file system without locks, a URL, and ``writes``, the folder this process itself
    writes into, whose exclusive lock covers the reading.
    """
    fs, path = fsspec.core.url_to_fs(folder)
    path = path.rstrip("/") or "/"
    if writes is not None:
        wfs, wpath = fsspec.core.url_to_fs(writes)
        if protocol_of(wfs) == protocol_of(fs) and _key(wfs, wpath) == _key(fs, path):
            yield  # (a shared lock would conflict with this process's exclusive one)
            return
    name = f"{path}/{LOCK}"
    fd = _share(name, folder) if is_local(fs) and fcntl is not None else None
    try:
        yield
    finally:
        if fd is not None:
            _unshare(fd, name)


def _share(name: str, folder: str) -> int | None:
    tries = 0
    while True:
        opened = _open_lock(name, read_only=True)
        if opened is None:
            return None  # (a folder this process can read only: nothing may delete it)
        fd, created = opened
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            # (The last reader at its end, or a run's look before it is refused, holds
            # the exclusive lock a moment: a run writing the folder holds it.)
            tries += 1
            if tries < _SHARE_TRIES:
                time.sleep(0.05)
                continue
            raise CurateError(
                f"another gpu-curate run ({holder}) is writing {folder} (it "
                f"holds {name}): wait for it to end, or stop it"
            ) from None
        except OSError:
            _drop(fd, name, created)
            return None  # (a file system without locks)
        if _current(name, fd):
            return fd
        os.close(fd)  # its holder removed it between our open and lock: take a new one


_SHARE_TRIES = 20


def _unshare(fd: int, name: str) -> None:
    # Only the last reader gets the exclusive lock, and removes the file as a writer does
    # at its end (while held: a run that opened it meanwhile takes a new file).
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with contextlib.suppress(OSError):
            os.unlink(name)
    except OSError:
        pass  # (another reader holds it still: it removes the file)
    finally:
        os.close(fd)


def _empty(fs, path: str) -> None:
    # The folder's contents, not the folder: an --out that is a symbolic link (or a mount
    # point) must stay one, so that the new run writes where the old one did.
    # (A link inside is removed as a link: the folder it points to is not the run's.)
    # The manifests go last, _run.json after _balance.json: cut short (Ctrl-C), the folder
    # is still a run whose manifests describe every part left, which a --resume checks,
    # never parts whose manifest is gone (a resume with another t took the old curated
    # parts as its own).
    # (report.json first, then each folder's _SUCCESS: a folder cut short in its emptying
    # must not look finished, nor list parts already gone.)
    last = {BALANCE_MANIFEST: 1, MATCH_MANIFEST: 2}
    children = fs.ls(path, detail=True)
    children.sort(key=lambda c: last.get(PurePosixPath(c["name"]).name, 0))
    firsts = [c["name"] for c in children if PurePosixPath(c["name"]).name == "report.json"]
    for child in children:
        success = f"{str(child['name']).rstrip('/')}/_SUCCESS"
        if child.get("type") == "directory" and not child.get("islink") and fs.exists(success):
            firsts.append(success)
    for name in firsts:
        fs.rm_file(name)
    for child in children:
        if child["name"] in firsts:
            continue
        if PurePosixPath(child["name"]).name == LOCK:
            continue  # (this run's own)
        folder = str(child["name"]).rstrip("/")
        if child.get("islink"):
            fs.rm_file(child["name"])
        elif child.get("type") == "directory" and _holds_run(fs, folder):
            # (A run inside, a balance of this one: emptied the same way, so that one cut
            # short is still a run, which the next --overwrite takes as gpu-curate's.)
            _empty(fs, folder)
            fs.rm(folder, recursive=True)
        else:
            fs.rm(child["name"], recursive=True)


def remove_temporaries(fs, path: str) -> None:
    """Remove the temporary files under ``path`` that writes cut short left (a killed
    process's, or a lost worker's)."""
    for p in fs.find(path):
        if _TEMPORARY.search(p):
            fs.rm(p)


def claim(fs, out: str, name: str, manifest: dict, what: str = "run", resume: bool = True) -> None:
    """Write the manifest ``name`` of a new run, or check that a resumed run is the same.

    A run that is not a resume (``resume=False``) must be the one to create it: a manifest
    already there was written by another run that began in the same folder meanwhile.
    """
    path = f"{out}/{name}"
    if not resume:
        if not _create(fs, path, manifest):
            raise CurateError(
                f"another gpu-curate run is writing to {out} (its {name} appeared after this "
                f"run began): wait for it to end, or choose another {OUT}"
            )
        return
    if not fs.exists(path):
        stage = {MATCH_MANIFEST: "matched", BALANCE_MANIFEST: "curated"}.get(name)
        if stage is not None and finished_parts(fs, f"{out}/{stage}"):
            raise CurateError(
                f"{RESUME}: {out}/{stage} holds finished parts but no {name} says which run "
                f"wrote them (an {OVERWRITE} cut short?): use {OVERWRITE} to start again"
            )
        atomic_write_json(fs, path, manifest)
        return
    try:
        with fs.open(path, "rb") as fh:
            previous = json.load(fh)
    except (ValueError, OSError, RecursionError) as exc:
        raise CurateError(f"{RESUME}: cannot read {path} ({exc}); use {OVERWRITE}") from None
    if not isinstance(previous, dict):
        raise CurateError(f"{RESUME}: {path} is not a gpu-curate manifest; use {OVERWRITE}")
    previous = {**{k: v for k, v in _MANIFEST_DEFAULTS.items() if k in manifest}, **previous}
    if previous == manifest:
        return
    if "files" in manifest and previous.get("inputs") == manifest.get("inputs"):
        before = {f[0]: f[1:] for f in previous.get("files", [])}
        for rel, *now in manifest["files"]:
            if before.get(rel) != now:
                was = before.get(rel) or [None] * len(now)
                what = [n for n, a, b in zip(_FILE_FIELDS, was, now, strict=False) if a != b]
                raise CurateError(
                    f"{RESUME}: input file {rel} changed since {out} was begun (its "
                    f"{', '.join(what) or 'entry'}); its finished parts would be stale: use "
                    f"{OVERWRITE}"
                )
    changed = sorted(k for k in manifest if previous.get(k) != manifest.get(k))
    if changed == ["parts_sha256"]:
        # (The same inputs and options: the cut itself changed, as between versions.)
        raise CurateError(
            f"{RESUME}: {out} was begun by a gpu-curate version that cuts the input files "
            f"into other parts; finish it with that version, or use {OVERWRITE} to start again"
        )
    if changed == ["compression"]:
        # (Its finished parts would keep the first codec, the new ones take the other.)
        codec = option("--compression")
        raise CurateError(
            f"{RESUME}: {out} was begun with {codec} {previous.get('compression')}, not "
            f"{manifest['compression']}: resume with {codec} {previous.get('compression')}, or "
            f"use {OVERWRITE} to start again"
        )
    if what == "balance" and changed and set(changed) <= {"t", "seed"}:
        # (In the matched dataset's own folder, --overwrite is refused: it would delete it.)
        in_matched = fs.exists(f"{out}/{MATCH_MANIFEST}")
        raise CurateError(
            f"{RESUME}: {out} was balanced with another {' and '.join(changed)}: write this "
            f"balance into another {OUT}"
            + ("" if in_matched else f", or use {OVERWRITE} to replace that one")
        )
    # (The cut into parts follows from the options and files: named only when alone.)
    shown = [k for k in changed if k != "parts_sha256"]
    raise CurateError(
        f"{RESUME}: {out} was written by a different {what} (differs in: "
        f"{', '.join(shown)}); use {OVERWRITE} to start again"
    )


def _create(fs, path: str, manifest: dict) -> bool:
    """Write ``path`` only if it does not exist; False if it does. Atomic on a local disk
    (a hard link fails on an existing name); elsewhere a check, then the write."""
    if not is_local(fs):
        if fs.exists(path):
            return False
        atomic_write_json(fs, path, manifest)
        return True
    tmp = temporary_name(path)  # (hidden; a resume removes one a kill left)
    with open(tmp, "wb") as fh:
        fh.write(json_bytes(manifest))
        to_disk(fs, fh)  # (a resume reads it after a crash of the machine too)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:
        # No hard links here (FAT, some FUSE and SMB mounts): a check, then a rename.
        if os.path.exists(path):
            return False
        os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def balance_manifest(
    fs, matched_dir: str, counts: np.ndarray, t: float, seed: int, compression: str = "zstd"
) -> dict:
    """What a balance stage's result depends on: the matched dataset (its run manifest:
    inputs, files, metadata, id column, ...; and its parts), the counts, t and seed; and
    the codec of its parts."""

    def sha(name: str) -> str | None:
        if not fs.exists(f"{matched_dir}/{name}"):
            return None  # (a matched dataset of an earlier version has no _run.json)
        with fs.open(f"{matched_dir}/{name}", "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()

    counts_sha = hashlib.sha256(np.ascontiguousarray(counts, "<i8").tobytes()).hexdigest()
    return {
        "matched_run": sha(MATCH_MANIFEST),
        "matched_parts": sha("matched/_SUCCESS"),
        "entry_counts": counts_sha,
        "t": t,
        "seed": seed,
        "compression": compression,
    }


def run_folder_why(fs, path: str, shown: str) -> str | None:
    """Why ``path`` (``shown`` to the user) is no run folder to read (missing, a file, or
    a run's ``matched/`` or ``curated/``), saying what to give; None when it may be one.

    Examples
    --------
    >>> run_folder_why(fsspec.filesystem("file"), "/nowhere", "out/")
    'matched dataset folder not found: out/'
    """
    if not fs.exists(path):
        return f"matched dataset folder not found: {shown}"
    if not fs.isdir(path):
        return f"{shown} is a file: give the output folder of gpu-curate match or curate"
    parts_folder = fs.isdir(f"{path}/_parts") or fs.exists(f"{path}/_SUCCESS")
    run = posixpath.dirname(path)
    if parts_folder and not fs.isdir(f"{path}/matched") and _run_like(fs, run):
        # (matched/ or curated/ of a run: its parts, without the counts beside them. Not
        # any folder with a _SUCCESS: Spark writes one into a pool's.)
        return f"{shown} is a folder of parts: give its run folder, {run}"
    return None


def _run_like(fs, folder: str) -> bool:
    """Whether ``folder`` holds a run's manifest or entry counts."""
    return _holds_run(fs, folder) or fs.exists(f"{folder}/entry_counts.parquet")


def wrong_figure(report: dict, kinds: dict[str, type | tuple[type, ...]]) -> str | None:
    """``KEY is VALUE`` for the first key of ``kinds`` that ``report`` (a run's
    report.json) holds with a value of another type than its kind (a bool is no number),
    else None: a figure that is printed or copied must be what a run writes.

    Examples
    --------
    >>> wrong_figure({"pool_rows": None, "t": 5.0}, {"t": float, "pool_rows": int})
    'pool_rows is None'
    """
    for key, kind in kinds.items():
        if key in report and (isinstance(report[key], bool) or not isinstance(report[key], kind)):
            return f"{key} is {report[key]!r}"
    return None


def not_matched_why(fs, path: str, shown: str) -> str | None:
    """Why the folder ``path`` (``shown`` to the user) is no complete matched dataset, and
    what to give instead; None when it holds one (``matched/_SUCCESS``).

    Examples
    --------
    >>> not_matched_why(fsspec.filesystem("file"), "/nowhere", "out/")  # doctest: +SKIP
    """
    if fs.exists(f"{path}/matched/_SUCCESS"):
        return None
    if fs.exists(f"{path}/{MATCH_MANIFEST}"):
        return f"{shown} is an interrupted run (matched/_SUCCESS missing): finish it with {RESUME}"
    if not fs.isdir(f"{path}/matched") and fs.exists(f"{path}/{BALANCE_MANIFEST}"):
        # (A balance's output: its report names the matched dataset it read.)
        try:
            with fs.open(f"{path}/report.json", "rb") as fh:
                source = json.load(fh).get("matched_dir")
        except (OSError, ValueError, AttributeError, RecursionError):
            source = None
        return f"{shown} is the output of a balance, without matched/: give the matched " + (
            f"dataset it balanced, {source}" if source else "dataset it balanced"
        )
    if not fs.isdir(f"{path}/matched"):
        return (
            f"{shown} is not a matched dataset (no matched/ folder): give the output folder of "
            "gpu-curate match or curate"
        )
    return f"{shown} is not a complete matched dataset (matched/_SUCCESS missing)"


def success_parts(fs: fsspec.AbstractFileSystem, folder: str) -> list[tuple[str, int]]:
    """The parts that ``folder/_SUCCESS`` lists: (file name, rows) of each, in its order.

    ``balance`` reads a matched dataset's parts in this order, and ``plan`` and the
    sampler number its rows in it; the parts beside them that it does not list are not
    part of the dataset.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The file system of ``folder``.
    folder : str
        A ``matched/`` (or ``curated/``) folder, whose ``_SUCCESS`` the caller found.

    Returns
    -------
    list of (str, int)
        Each part's file name within ``folder`` and its number of rows.

    Raises
    ------
    CurateError
        A ``_SUCCESS`` that is not the JSON a run writes.

    Examples
    --------
    >>> success_parts(fsspec.filesystem("file"), "out/matched")  # doctest: +SKIP
    [('part-00000.parquet', 1000000), ...]
    """
    path = f"{folder}/_SUCCESS"
    try:
        with fs.open(path, "rb") as fh:
            parts = [(p["file"], int(p["rows"])) for p in json.load(fh)["parts"]]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CurateError(f"{path} is damaged ({exc!r}): run the match again") from None
    # (A name is joined into the paths a balance reads and writes: "../../x.parquet"
    # would have it overwrite a file outside both folders.)
    bad = [name for name, _ in parts if not (isinstance(name, str) and _PART.fullmatch(name))]
    names = [name for name, _ in parts]
    if bad or len(set(names)) < len(names):
        what = f"a part named {bad[0]!r}" if bad else "a part twice"
        raise CurateError(f"{path} is damaged (it lists {what}): run the match again")
    return parts


# A part's name: a Parquet file's in the folder itself (a run writes part-NNNNN.parquet).
_PART = re.compile(r"[^/\\.][^/\\]*\.parquet")


def check_balance_settings(fs, out: str, t: float, seed: int) -> None:
    """Refuse, before a resumed curate matches anything, a t or seed other than the run's."""
    path = f"{out}/{BALANCE_MANIFEST}"
    if not fs.exists(path):
        return
    try:
        with fs.open(path, "rb") as fh:
            previous = json.load(fh)
    except (ValueError, OSError, RecursionError):
        return  # claim() says it when the balance stage begins
    if isinstance(previous, dict):
        changed = [k for k, v in (("t", t), ("seed", seed)) if previous.get(k) != v]
        if changed:
            raise CurateError(
                f"{RESUME}: {out} was written by a different balance (differs in: "
                f"{', '.join(changed)}); to balance its matched rows again, run `gpu-curate "
                f"balance {out} --out NEW` with the new {' and '.join(changed)}, or use "
                f"{OVERWRITE} to start again"
            )
