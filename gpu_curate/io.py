"""Inputs and outputs: find the pool's files, read one partition, write parts atomically.

A *part* is a contiguous row range of one input file, or several small Parquet files
packed together (each a *piece*). Its rows keep their identity (the file's path relative
to the input root and the row number within the file) whatever the partitioning, which is
what makes uids, and so the curated set, partition-independent.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import errno
import functools
import importlib
import io
import json
import lzma
import os
import posixpath
import re
import stat
import struct
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from fsspec.utils import glob_translate

from .errors import OVERWRITE, CurateError, cannot_read, first_line, option
from .json_nesting import MAX_DEPTH, line_too_deep, long_line_too_deep, type_depth
from .line_ranges import UTF8_BOM, open_range
from .surrogates import without_surrogate

FORMATS = ("parquet", "jsonl", "csv", "tsv")
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
}
TEXT_COLUMN_CANDIDATES = ("TEXT", "text", "caption", "alt_text")
# Parquet codecs of the written parts: zstd (the default) gives the smallest files; lz4
# and none trade size for speed (docs/benchmarks.md measures them on a real-like pool).
COMPRESSIONS = ("zstd", "lz4", "snappy", "none")
RESERVED_COLUMNS = ("uid", "entry_ids")


@dataclass(frozen=True)
class InputFile:
    """One file of the pool: its URL/path, its path relative to the input root, its format,
    and its size and modification stamp as listed (a resume checks they are unchanged)."""

    path: str
    relpath: str
    format: str
    size: int | None = None
    stamp: str | None = None


# Where a file system's listing says when (or in which version) a file was written.
_STAMP_KEYS = ("mtime", "LastModified", "last_modified", "ETag", "etag", "generation", "updated")


def _stamp(info: dict) -> str | None:
    for key in _STAMP_KEYS:
        if info.get(key) is not None:
            return str(info[key])
    return None


@dataclass(frozen=True)
class Piece:
    """Rows [row_start, row_end) of one input file (row_end None: to the end of the file).

    ``file_rows``: the file's row count when the run planned its parts (None where
    unknown). A file that holds another count when read was replaced during the run.
    ``byte_start``, ``byte_end``: the bytes that hold the rows, for a range of a TSV, CSV
    or JSON Lines file (:mod:`gpu_curate.line_ranges`; byte_end None: the whole file), and
    ``schema`` the types of a JSON Lines file's columns (the whole file's).
    """

    file: InputFile
    row_start: int
    row_end: int | None
    file_rows: int | None = None
    byte_start: int = 0
    byte_end: int | None = None
    schema: pa.Schema | None = None


@dataclass(frozen=True)
class Part:
    """The rows one task reads, matches and writes as one output file: a row range of one
    input file, or several whole small Parquet files of one schema (:func:`plan_parts`)."""

    index: int
    pieces: tuple[Piece, ...]


# Compression suffixes and the codecs that read them: fsspec's, except .zst and .zip,
# which open_input reads with Python's zstd and zipfile modules.
_CODECS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".lzma": "lzma", ".zst": "zstd",
           ".zip": "zip"}  # fmt: skip
_COMPRESSIONS = tuple(_CODECS)


def _codec(path: str) -> str | None:
    """The codec that decompresses ``path`` (by its suffix), or None: read as it is."""
    return _CODECS.get(posixpath.splitext(path.lower())[1])


def _is_compressed(path: str) -> bool:
    return _codec(path) is not None


def _uncompressed_name(path: str) -> tuple[str, int]:
    """``path`` without its compression suffixes (any number, in any order), and how many
    there were: only the last is decompressed, so a name of two is an error."""
    name, n = path, 0
    while _codec(name) is not None:
        name, n = posixpath.splitext(name)[0], n + 1
    return name, n


@functools.cache
def _zstd() -> ModuleType | None:
    """Python's ``compression.zstd`` (3.14), or its backport (a dependency before 3.14);
    None in a Python built without it and without the backport."""
    for name in ("compression.zstd", "backports.zstd"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


# What a damaged compressed file raises that is no OSError: gzip's zlib.error, xz's
# LZMAError, zstd's ZstdError, zipfile's BadZipFile (a file cut short raises EOFError).
_CODEC_ERRORS = (
    zlib.error,
    lzma.LZMAError,
    zipfile.BadZipFile,
    *((_zstd().ZstdError,) if _zstd() else ()),
)


@contextlib.contextmanager
def open_input(path: str) -> Iterator[io.BufferedIOBase]:
    """An input file opened for reading, decompressed by its suffix (.gz, .bz2, .xz,
    .lzma, .zst, or .zip holding one file).

    A .zst file is read with Python's zstd module rather than whatever fsspec picks: it
    reads every frame of the file and raises EOFError on one cut short, where the
    ``zstandard`` package's stream reader ends early without a word (rows lost). A .zip
    file is read with Python's zipfile module, which checks its file's CRC; one holding
    several files is an error, where fsspec would read the first of them and no more.

    Examples
    --------
    >>> with open_input("pool/captions.jsonl.zst") as fh:  # doctest: +SKIP
    ...     first = fh.readline()
    """
    codec = _codec(path)
    if codec == "zstd":
        _check_codec(path)
        with fsspec.open(path, "rb") as raw, _zstd().ZstdFile(raw) as fh:
            yield fh
    elif codec == "zip":
        with fsspec.open(path, "rb") as raw, _zip_member(path, raw) as fh:
            yield fh
    else:
        with fsspec.open(path, "rb", compression=codec) as fh:
            yield fh


# What zipfile raises, beside BadZipFile, on a damaged archive's directory or headers: a
# version or method it lacks (NotImplementedError), a name that is no UTF-8 where its flag
# says it is (UnicodeDecodeError, a ValueError), an extra field cut short (IndexError,
# struct.error). Turned into BadZipFile: one line, as for any damaged compressed file.
_ZIP_DAMAGE = (NotImplementedError, ValueError, IndexError, struct.error)


@contextlib.contextmanager
def _zip_member(path: str, raw: io.BufferedIOBase) -> Iterator[io.BufferedIOBase]:
    """The one file a .zip file holds, opened for reading."""
    try:
        archive = zipfile.ZipFile(raw)
    except _ZIP_DAMAGE as exc:
        raise zipfile.BadZipFile(first_line(exc)) from None
    with archive:
        # (Hidden names are skipped as in a folder: macOS's __MACOSX/._a.csv beside a.csv.)
        members = [m for m in archive.infolist() if not m.is_dir() and not is_hidden(m.filename)]
        if archive.infolist() and min(m.header_offset for m in archive.infolist()) != 0:
            # (zipfile reads the last archive of a file and takes what comes before it
            # for a prefix: of two archives one after the other, the first is dropped.)
            raise CurateError(
                f"{path}: this .zip file holds bytes before its archive (two .zip files "
                "one after the other, or a self-extracting one): unzip it and give the folder"
            )
        if len(members) != 1:
            names = ", ".join([m.filename for m in members[:3]] + ["..."] * (len(members) > 3))
            raise CurateError(
                f"{path}: a .zip input must hold one file, this one holds {len(members)}"
                + (f" ({names})" if members else "")
                + "; unzip it and give the folder"
            )
        name = members[0].filename
        if _codec(name) is not None:
            # (Only the .zip is decompressed: its file's bytes would be read as text.)
            raise CurateError(
                f"{path}: the file it holds, {name}, is itself compressed: "
                "unzip it and give the file"
            )
        try:
            fh = archive.open(members[0])
        except NotImplementedError as exc:  # a method zipfile lacks (Deflate64, PPMd)
            raise CurateError(f"{path}: cannot read {name} in it: {exc}") from None
        except RuntimeError:  # (a password: zipfile's message is the ZipInfo's repr)
            raise CurateError(f"{path}: cannot read {name} in it: it is encrypted") from None
        except _ZIP_DAMAGE as exc:
            raise zipfile.BadZipFile(first_line(exc)) from None
        with fh:
            yield fh


@contextlib.contextmanager
def _parquet_file(path: str) -> Iterator[pq.ParquetFile]:
    """``path`` opened as a ParquetFile; a compressed one is decompressed into memory
    (Parquet wants random access: its footer is at the end, and a zstd stream cannot seek)."""
    with open_input(path) as fh:
        yield pq.ParquetFile(io.BytesIO(fh.read()) if _is_compressed(path) else fh)


def _format_of(path: str) -> str | None:
    """The format its extension names (compression suffixes aside), or None."""
    return _EXTENSIONS.get(os.path.splitext(_uncompressed_name(path.lower())[0])[1])


# Files a folder or glob may hold beside the data: never read, even under --format.
_NOT_DATA_NAMES = ("readme", "license", "licence", "notice", "changelog", "citation")
_NOT_DATA_EXTENSIONS = frozenset(
    ".md .rst .html .htm .pdf .crc .yaml .yml .toml .py .ipynb .sh .log .png .jpg .jpeg .tar"
    .split()
)  # fmt: skip
# img2dataset writes each shard's statistics beside it (00000_stats.json, one indented JSON
# object), in the very folders of shards that a pool is.
_SHARD_STATS = re.compile(r"^\d+_stats\.json$")


def _scanned_format(path: str, fmt: str | None) -> str | None:
    """The format of a file found in a folder or by a glob, or None to skip it.

    A known extension names the format; ``--format`` applies to the other files, except
    documentation and other files that are never data (README, LICENSE, ``.md``, an
    img2dataset shard's ``.tar`` and ``_stats.json``, ...).
    """
    name = PurePosixPath(path).name.lower()
    if _SHARD_STATS.search(name):
        return None
    known = _format_of(path)
    if known is not None or fmt is None:
        return known
    if name.startswith(_NOT_DATA_NAMES) or os.path.splitext(name)[1] in _NOT_DATA_EXTENSIONS:
        return None
    return fmt


def is_hidden(relpath: str) -> bool:
    # Any component, not only the file name: Spark's _temporary/, .ipynb_checkpoints/ and
    # _SUCCESS are not part of the pool.
    return any(c.startswith((".", "_")) for c in PurePosixPath(relpath).parts)


def protocol_of(fs: fsspec.AbstractFileSystem) -> str:
    """The file system's protocol ("file" for a local disk, "s3", ...)."""
    return fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return protocol_of(fs) in ("file", "local")


def full_path(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """``path`` (as fsspec strips it: absolute) as any process can open it: the path on a
    local disk, else the URL with its protocol."""
    path = path.rstrip("/")
    return path if is_local(fs) else fs.unstrip_protocol(path)


def is_glob(spec: str, fs: fsspec.AbstractFileSystem) -> bool:
    """Whether an input (on the file system ``fs``) is a glob pattern: it has a wildcard
    (``*?[``) and names no existing file or folder (``pool [1]/`` is a folder)."""
    return any(ch in spec for ch in "*?[") and not fs.exists(fs._strip_protocol(spec))


def glob_pattern(fs: fsspec.AbstractFileSystem, spec: str) -> tuple[str, str]:
    """(pattern, root) of a glob: the pattern without its protocol and normalised (a "./"
    or "x/.." would else differ from the paths the glob returns, and the relative paths,
    so the uids, would change), and the folder above its first wildcard."""
    pattern = posixpath.normpath(fs._strip_protocol(spec))
    return pattern, _glob_root(pattern)


def discover(
    inputs: Sequence[str], fmt: str | None = None, exclude: Sequence[str] = ()
) -> list[InputFile]:
    """Expand files, folders, globs and fsspec URLs into the pool's files, in sorted order.

    A folder is scanned recursively, skipping names that start with ``.`` or ``_`` (in
    any folder below it). Files found in a folder or by a glob are read by extension;
    ``fmt`` (``--format``) applies to those without a known one (documentation such as
    README or ``.md`` files is still skipped) and to every file named on its own. The
    files of ``exclude`` (paths or URLs: the metadata file and its sidecar), where the
    inputs reach them, are left out: MetaCLIP's ``metadata.json`` beside the pool would
    be read as JSON Lines.

    Examples
    --------
    >>> discover(["pool/"])  # doctest: +SKIP
    [InputFile(path='pool/a.parquet', relpath='a.parquet', format='parquet'), ...]
    """
    if fmt is not None and fmt not in FORMATS:
        raise CurateError(
            f"unknown {option('--format')} {fmt!r}: choose one of {', '.join(FORMATS)}"
        )
    if not inputs:
        raise CurateError("no input given")
    files: list[InputFile] = []
    origin: dict[int, str] = {}  # id(file) -> the input it was found through
    for spec in inputs:
        if "::" in spec:
            # (A file's URL is rebuilt as protocol + path: the rest of a chain, and with it
            # the file, would be lost by the time a worker opens it.)
            raise CurateError(
                f"chained URLs are not read: {spec}; give the files' own URL or path "
                "(a .zip of several files: unzip it)"
            )
        fs, path = fsspec.core.url_to_fs(spec)
        prefix = "" if is_local(fs) else f"{protocol_of(fs)}://"
        # (path, listing info, relative path, format) of each candidate file.
        if is_glob(spec, fs):
            pattern, root = glob_pattern(fs, spec)
            if is_local(fs):
                # (Only the levels the pattern reaches are listed: '/data/*.parquet' is
                # no walk of everything below /data.)
                depth = _glob_depth(pattern, root)
                listing = _local_files(root or "/", re.compile(glob_translate(pattern)), depth)
            else:
                listing = fs.glob(pattern, detail=True)
            found = [(p, i, _rel(p, root)) for p, i in sorted(listing.items())]
            kept = [(p, i, r, _scanned_format(p, fmt)) for p, i, r in found
                    if i["type"] == "file" and not is_hidden(r)]  # fmt: skip
        elif fs.isdir(path):
            root = path.rstrip("/")
            listing = _local_files(root) if is_local(fs) else fs.find(root, detail=True)
            found = [(p, i, _rel(p, root)) for p, i in sorted(listing.items())]
            kept = [(p, i, r, _scanned_format(p, fmt)) for p, i, r in found if not is_hidden(r)]
        elif fs.exists(path):
            if is_local(fs) and not stat.S_ISREG(mode := os.stat(path).st_mode):
                # (`<(zcat a.tsv.gz)`: it was taken for an empty file.)
                raise _not_a_file(spec, mode)
            found = [(path, fs.info(path), PurePosixPath(path).name)]
            kept = [(path, found[0][1], found[0][2], fmt or _format_of(path))]
        else:
            raise CurateError(f"input not found: {spec}")
        kept = [(p, i, r, f) for p, i, r, f in kept if f is not None]
        if any("link_to" in i for _, i, _, _ in kept):
            # A file reached through a link inside the scanned folder is read under its
            # own name where the scan keeps it so, else under the first link's name.
            taken = {os.path.realpath(p) for p, i, _, _ in kept if "link_to" not in i}
            through_links = kept
            kept = []
            for k in through_links:
                target = k[1].get("link_to")
                if target not in taken:
                    kept.append(k)
                if target is not None:
                    taken.add(target)
        for p, *_ in kept:
            _check_codec(p)
        # An empty CSV/TSV/JSONL file holds no rows (an empty Parquet file is no Parquet).
        empty = [i.get("size") == 0 and f != "parquet" for _, i, _, f in kept]
        if kept and all(empty):
            raise CurateError(f"every input file in {spec} is empty (0 bytes)")
        kept = [k for k, e in zip(kept, empty, strict=True) if not e]
        if not kept:
            known = ", ".join(sorted(set(_EXTENSIONS)))
            if not [f for f in found if f[1].get("type", "file") == "file"]:
                raise CurateError(f"no file {'matches' if is_glob(spec, fs) else 'in'} {spec}")
            if len(found) == 1 and found[0][0] == path:
                raise CurateError(
                    f"{spec}: its name does not say its format (known: {known}): give it with "
                    f"{option('--format')}"
                )
            shown = [f[2] for f in found if not is_hidden(f[2])]
            if shown and all(_scanned_format(p, "jsonl") is None for p in shown):
                # (--format would not make them data either.)
                raise CurateError(
                    f"no pool files in {spec}: {', '.join(shown[:3])}"
                    f"{', ...' if len(shown) > 3 else ''} are never read as data (documentation, "
                    "img2dataset's .tar and NNNNN_stats.json files)"
                )
            raise CurateError(
                f"no readable input files in {spec} (looked for {known}; use "
                f"{option('--format')} to force one)"
            )
        new = [InputFile(prefix + p if prefix else p, r, f, i.get("size"), _stamp(i))
               for p, i, r, f in kept]  # fmt: skip
        files.extend(new)
        origin.update((id(f), spec) for f in new)
    if exclude and files:
        files = _without(files, exclude)
        if not files:
            raise CurateError(f"the inputs hold no pool file, only the metadata {exclude[0]}")
    # A .zip file of several files is an error before anything is written: each is opened
    # by its URL (not the path fsspec strips), by a pool of threads (on an object store
    # each is a few round trips).
    zips = {f.path: f.format for f in files if _codec(f.path) == "zip"}
    _per_file(lambda path: _check_zip(path, zips[path]), list(zips))
    # One file reached twice (overlapping inputs, or two links to it) would be read twice,
    # under two relative paths and so two sets of uids: its rows counted and kept twice.
    if (twice := reached_twice([f.path for f in files])) is not None:
        key, first, again = twice
        a, b = files[first], files[again]
        raise CurateError(
            f"the file {key} is reached twice, as {a.relpath} in input {origin[id(a)]} "
            f"and as {b.relpath} in input {origin[id(b)]}: give each file once"
        )
    rels = [f.relpath for f in files]
    if len(set(rels)) != len(rels):
        dup = sorted({r for r in rels if rels.count(r) > 1})[0]
        raise CurateError(
            f"two inputs share the relative path {dup!r} (uids would collide): "
            f"give one folder or glob, or use {option('--id-column')}"
        )
    return files


def _file_key(path: str) -> str:
    """What names the file ``path`` reaches: a local path's real path, a URL as written."""
    return path if "://" in path else os.path.realpath(path)


def _without(files: list[InputFile], paths: Sequence[str]) -> list[InputFile]:
    """``files`` (as :func:`discover` lists them) less those that reach one of ``paths``."""

    def key(path: str) -> str:
        # (A URL in the form discover writes a file's: memory://pool/m.json is listed as
        # memory:///pool/m.json.)
        if "://" not in path:
            return _file_key(path)
        fs, stripped = fsspec.core.url_to_fs(path)
        return f"{protocol_of(fs)}://{stripped}"

    drop = {key(p) for p in paths}
    return [f for f in files if _file_key(f.path) not in drop]


def reached_twice(paths: Sequence[str | os.PathLike]) -> tuple[str, int, int] | None:
    """The first file that two of ``paths`` reach, or None when each names another file.

    A local path is compared by its real path: two links to one file, or a file named
    both on its own and through its folder, are the same file. A URL is compared as written.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        Files (local paths or fsspec URLs), in the order they were found.

    Returns
    -------
    (str, int, int) or None
        The file (its real path, or its URL), and the positions in ``paths`` of the first
        and of the second path that reach it.

    Examples
    --------
    >>> reached_twice(["/pool/a.txt", "/pool/b.txt", "/pool/sub/../a.txt"])
    ('/pool/a.txt', 0, 2)
    >>> reached_twice(["s3://bucket/a.txt", "/pool/a.txt"]) is None
    True
    """
    first: dict[str, int] = {}
    for i, path in enumerate(map(os.fspath, paths)):
        key = _file_key(path)
        if key in first:
            return key, first[key], i
        first[key] = i
    return None


def _local_files(
    root: str, pattern: re.Pattern | None = None, depth: int | None = None
) -> dict[str, dict]:
    """The files below a local folder (those whose path ``pattern`` matches, in folders at
    most ``depth`` levels below ``root``), as ``{path: listing info}``, following symbolic
    links to files and to folders.

    A pool is often a folder of links into shards: a folder scan and a glob must find
    the same files through them (fsspec lists a link as neither file nor folder). A file
    reached through a link whose target is inside ``root`` (a link to it, or to a folder
    above it) is listed under the link's name with its real path (``link_to``), for
    :func:`discover` to keep only where the scan does not keep the target under its own
    name (a hidden folder such as ``current -> _v3/``, a name without a data extension,
    a target outside a glob's pattern or depth). Links to folders inside are walked after
    the rest, each real folder once. A folder reached twice from outside is read once;
    names starting with ``.`` or ``_`` are not entered (:func:`is_hidden`); a broken link
    to a data file, and a folder that cannot be listed, are errors, not files left out.
    """
    found: dict[str, dict] = {}
    if not os.path.isdir(root):
        return found
    real_root = os.path.realpath(root)
    seen: set[str] = set()  # real folders walked, by the walk of the root
    seen_linked: set[str] = set()  # and through links inside it
    folder_links: list[tuple[str, int]] = []  # (path, level) of links to folders inside

    def inside(path: str) -> bool:
        real = os.path.realpath(path)
        return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)

    def unreadable(exc: OSError):
        # (os.walk skips a folder it cannot list: its files would be left out unsaid.)
        raise CurateError(f"cannot list input folder {exc.filename}: {exc.strerror}")

    def walk(top: str, top_level: int, linked: bool) -> None:
        # A glob with a depth (no '**') may keep a file under one link's name and not
        # another's ('c*/*.tsv' keeps current/x.tsv, not aa/x.tsv): each link is walked,
        # the depth bounds the walks; without a depth, each real folder once.
        walked = (seen_linked if depth is None else set()) if linked else seen
        for folder, subfolders, names in os.walk(top, onerror=unreadable, followlinks=True):
            real = os.path.realpath(folder)
            if real in walked:
                subfolders.clear()
                continue
            walked.add(real)
            level = top_level + (
                0 if folder == top else os.path.relpath(folder, top).count(os.sep) + 1
            )
            entered = []
            for d in sorted(subfolders):
                if d.startswith((".", "_")) or (depth is not None and level >= depth):
                    continue
                path = os.path.join(folder, d)
                if os.path.islink(path) and inside(path):
                    folder_links.append((path, level + 1))
                else:
                    entered.append(d)
            subfolders[:] = entered
            for name in names:
                path = os.path.join(folder, name)
                key = path.replace(os.sep, "/") if os.sep != "/" else path  # (fsspec's form)
                if pattern is not None and not pattern.match(key):
                    continue
                try:
                    st = os.stat(path)  # (follows a link)
                except OSError:
                    if _format_of(name) is not None and not name.startswith((".", "_")):
                        raise CurateError(f"input {path} is a broken symbolic link") from None
                    continue
                if not stat.S_ISREG(st.st_mode):
                    if _format_of(name) is not None and not name.startswith((".", "_")):
                        # (A pipe named like data: not passed over without a word.)
                        raise _not_a_file(path, st.st_mode)
                    continue
                found[key] = {"type": "file", "size": st.st_size, "mtime": st.st_mtime}
                is_link = os.path.islink(path)
                if linked or (is_link and inside(path)):
                    # (The folder's real path once, not each file's: a link's walk may list
                    # many files.)
                    target = os.path.realpath(path) if is_link else os.path.join(real, name)
                    found[key]["link_to"] = target

    walk(root, 0, False)
    while folder_links:  # (the links found in these walks come after them)
        path, level = folder_links.pop(0)
        walk(path, level, True)
    return found


def _not_a_file(path: str, mode: int) -> CurateError:
    """The error for an input (named, or found in a folder) that is not a regular file."""
    kind = "a pipe" if stat.S_ISFIFO(mode) else "a device or socket"
    return CurateError(
        f"input {path} is {kind}, not a file: a run reads its inputs more than once (their "
        "columns, then their rows); write it to a file first"
    )


def _glob_depth(pattern: str, root: str) -> int | None:
    """How many folder levels below ``root`` a glob reaches (None: any, with ``**``)."""
    below = pattern[len(root) :].strip("/")
    return None if "**" in below else below.count("/")


def _check_zip(path: str, fmt: str) -> None:
    """Whether a .zip input (a URL or local path) holds one file, of no other format than
    ``fmt``; a :class:`CurateError` if not."""
    try:
        with open_input(path) as fh:
            name = fh.name
    except (OSError, EOFError, *_CODEC_ERRORS) as exc:
        raise cannot_read(path, exc) from None
    held = _format_of(name)
    if held is not None and held != fmt:
        raise CurateError(f"{path}: read as {fmt}, but the file it holds is {name}, a {held} file")


def _check_codec(path: str) -> None:
    # Without its codec, fsspec would read a compressed file as it is: its bytes would be
    # matched as text, silently. (.zst and .zip files are opened by open_input itself.)
    codec = _codec(path)
    if _uncompressed_name(path)[1] > 1:
        # (Only the last suffix is decompressed: the rest would be read as text.)
        raise CurateError(
            f"{path}: compressed twice ({''.join(PurePosixPath(path).suffixes[-2:])}): "
            "decompress it once and give the result"
        )
    if codec is None or codec == "zip":
        return
    if (_zstd() is None) if codec == "zstd" else (codec not in fsspec.available_compressions()):
        raise CurateError(
            f"{path}: no codec for {posixpath.splitext(path)[1]} files here"
            + (" (pip install backports.zstd)" if codec == "zstd" else "")
        )


def _glob_root(pattern: str) -> str:
    parts = PurePosixPath(pattern).parts
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return str(PurePosixPath(*fixed)) if fixed else ""


def _rel(path: str, root: str) -> str:
    if root and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1 :]
    return PurePosixPath(path).name


# Without --partition-rows, a Parquet file is cut into parts of whole row groups, about
# this many rows each: a part's memory (a 4M-row part took 2.2 GB where 500k-row parts
# took 1.16 GB in all, docs/benchmarks.md) and the parallelism no longer depend on how
# big the pool's files are (LAION-400M's metadata files hold ~13M rows each).
PART_ROWS = 1_000_000
# Smaller Parquet files are packed into parts of up to this many rows: enough that the
# ~10-25 ms a part costs in each stage is a few percent of its work, few enough that a
# pool of a few million rows still has a part for every core.
PACK_ROWS = 250_000
# A small CSV/TSV file's rows, for packing, are estimated from its size at this many bytes
# a row (CC3M's captions and URLs: 165; LAION's: ~120).
TEXT_BYTES_PER_ROW = 128


def plan_parts(
    files: Sequence[InputFile],
    partition_rows: int | None = None,
    line_ranges: Mapping[str, tuple[Sequence[tuple[int, int, int]], pa.Schema | None]]
    | None = None,
    text_schemas: Mapping[str, tuple[pa.Schema, int | None]] | None = None,
    check_schema: Callable[[pa.Schema, str], None] | None = None,
) -> list[Part]:
    """Cut the files into parts; pack small Parquet (and CSV/TSV/JSON Lines) files together.

    With ``partition_rows``, a Parquet file is cut every ``partition_rows`` rows; without
    it, into runs of whole row groups of about :data:`PART_ROWS` rows (a larger row group
    is a part of its own). Uncompressed Parquet files of at most ``partition_rows``
    (default :data:`PACK_ROWS`) rows that follow each other in ``files`` and have one Arrow
    schema (names in order, types, nullability) are packed into one part of up to that many
    rows: a pool of 10k-row shards (img2dataset's layout) is then matched in tasks big
    enough that the ~10-25 ms a task and an output file cost is small. A compressed Parquet
    file is one part, and other formats are one part per file (a row number needs the rows
    before it, and their schema is known only once read), except a TSV, CSV or JSON Lines
    file that ``line_ranges`` cuts: ``{path: ([(byte_start, byte_end, rows), ...],
    schema)}`` (the schema of a JSON Lines file's columns, None for CSV/TSV), a part a range
    (:mod:`gpu_curate.line_ranges`). CSV, TSV and small JSON Lines files of
    ``text_schemas`` (``{path: (columns, rows)}``: :func:`text_schemas` for CSV/TSV, whose
    rows None are estimated from the size, :data:`TEXT_BYTES_PER_ROW`, and
    :func:`json_layout` for JSON Lines) are packed as Parquet files are; never with
    Parquet files.
    ``check_schema(schema, path)``, if given, is called on the schema of each Parquet
    file (from its footer) and of ``text_schemas`` before any part is planned: a run's
    column checks.

    Examples
    --------
    >>> parts = plan_parts([])
    >>> parts
    []
    """
    pack_target = _pack_target(partition_rows)
    parts: list[Part] = []
    pack: list[Piece] = []
    pack_rows, pack_schema = 0, None

    def add_to_pack(piece: Piece, rows: int, schema) -> None:
        nonlocal pack_rows, pack_schema
        if pack and (pack_rows + rows > pack_target or not _same(schema, pack_schema)):
            close_pack()
        pack.append(piece)
        pack_rows, pack_schema = pack_rows + rows, schema

    def close_pack() -> None:
        nonlocal pack_rows
        if pack:
            parts.append(Part(len(parts), tuple(pack)))
            pack.clear()
            pack_rows = 0

    layouts = _parquet_layouts(files)
    if check_schema is not None:
        for path, (_, schema) in layouts.items():
            check_schema(schema, path)
        for path, (schema, rows) in (text_schemas or {}).items():
            if rows != 0:  # (a JSON Lines file of blank lines: no rows, and no columns)
                check_schema(schema, path)
    for f in files:
        cut = f.path in (line_ranges or {})
        if f.path in (text_schemas or {}) and not cut and packs_text(f, partition_rows):
            schema, rows = text_schemas[f.path]
            if rows == 0:
                continue  # (no part, as for an empty file: its made-up columns are no pool's)
            rows = _text_rows(f) if rows is None else rows
            add_to_pack(Piece(f, 0, None), rows, ("text", schema))
            continue
        if f.format != "parquet":
            close_pack()
            if f.path not in (line_ranges or {}):
                parts.append(Part(len(parts), (Piece(f, 0, None),)))
                continue
            ranges, schema = line_ranges[f.path]
            n, row = sum(r for _, _, r in ranges), 0
            for start, end, rows in ranges:
                piece = Piece(f, row, row + rows, n, start, end, schema)
                parts.append(Part(len(parts), (piece,)))
                row += rows
            continue
        groups, schema = layouts[f.path]
        n = sum(groups)
        if _is_compressed(f.path):
            # A compressed Parquet file is decompressed whole to be read: one part,
            # not one decompression of the whole file per part.
            cuts = [0, n]
        elif n <= pack_target:
            add_to_pack(Piece(f, 0, n, n), n, ("parquet", schema))
            continue
        elif partition_rows:
            cuts = list(range(0, n, partition_rows)) + [n]
        else:
            cuts = _row_group_cuts(groups, PART_ROWS)
        close_pack()
        for start, end in zip(cuts[:-1], cuts[1:], strict=True):
            parts.append(Part(len(parts), (Piece(f, start, end, n),)))
    close_pack()
    return parts


def _pack_target(partition_rows: int | None) -> int:
    return partition_rows or min(PACK_ROWS, PART_ROWS)


def _text_bytes(f: InputFile) -> int:
    # (A compressed JSON Lines file's text taken as 4x its size, as for streaming it.)
    return f.size * (4 if _is_compressed(f.path) else 1)


def _text_rows(f: InputFile) -> int:
    return _text_bytes(f) // TEXT_BYTES_PER_ROW + 1


def packs_text(f: InputFile, partition_rows: int | None) -> bool:
    """Whether a CSV/TSV or JSON Lines file is small enough to share a part with others
    (about ``partition_rows`` rows, default :data:`PACK_ROWS`, from its size).

    A compressed CSV/TSV file is not packed: its size says little of its text. A JSON
    Lines file is packed up to :data:`JSON_PACK_BYTES` (compressed or not), since its
    column types are known only once it is read whole, which planning then does.

    Examples
    --------
    >>> packs_text(InputFile("shard-00001.tsv", "shard-00001.tsv", "tsv", 1_300_000), None)
    True
    """
    if f.size is None or f.format not in ("csv", "tsv", "jsonl"):
        return False
    if f.format == "jsonl":
        small = _text_bytes(f) <= JSON_PACK_BYTES
    else:
        small = not _is_compressed(f.path)
    return small and _text_rows(f) <= _pack_target(partition_rows)


def json_layout(
    f: InputFile, text_column: str | None, id_column: str | None
) -> tuple[pa.Schema, int]:
    """(columns, rows) of a small JSON Lines file, read whole as a pack's task reads it
    (the same types, or the pack is refused), for :func:`plan_parts` to pack it.

    Examples
    --------
    >>> json_layout(InputFile("a.jsonl", "a.jsonl", "jsonl", 40), None, None)  # doctest: +SKIP
    (text: string, 2)
    """
    table = read_piece(Piece(f, 0, None), None, text_column, id_column)
    return table.schema, table.num_rows


def _same(a: tuple[str, pa.Schema], b: tuple[str, pa.Schema]) -> bool:
    """Whether two files of these (kind, schema) may share a pack."""
    return a[0] == b[0] and a[1].equals(b[1])


def text_schemas(
    files: Sequence[InputFile], text_column: str | None, id_column: str | None
) -> dict[str, tuple[pa.Schema, None]]:
    """{path: (columns, None)} of the CSV/TSV ``files`` as the readers read them (their
    header, or f0, f1, ... as many as their first row has), their heads read by a pool of
    threads, for :func:`plan_parts` to pack them (their rows estimated from their sizes;
    a small JSON Lines file's layout, rows counted, is :func:`json_layout`'s).

    Examples
    --------
    >>> text_schemas([], None, None)
    {}
    """
    by_path = {f.path: f for f in files if f.format in ("csv", "tsv")}

    def schema(path: str) -> tuple[pa.Schema, None]:
        f = by_path[path]
        try:
            open_ = functools.partial(open_input, f.path)
            options = _delimited_options(open_, f.format, text_column, id_column, f.path)
            return _csv_schema(open_, *options), None
        except _READ_ERRORS as exc:
            raise _read_error(f, exc, 0, None) from None

    return _per_file(schema, list(by_path))


def row_group_runs(groups: Sequence[int], target: int) -> list[list[int]]:
    """Consecutive row groups (their numbers) in runs of at most ``target`` rows each,
    unless one group is larger (a run of its own); one empty run where there are none.

    Examples
    --------
    >>> row_group_runs([400, 400, 400, 2000, 10], 1000)
    [[0, 1], [2], [3], [4]]
    """
    runs: list[list[int]] = []
    run: list[int] = []
    size = 0
    for i, g in enumerate(groups):
        if size and size + g > target:
            runs.append(run)
            run, size = [], 0
        run.append(i)
        size += g
    runs.append(run)
    return runs


def _row_group_cuts(groups: Sequence[int], target: int) -> list[int]:
    """Row numbers where parts of whole row groups, each of at most ``target`` rows unless
    one group is larger, begin (and the total, last). An empty file is one empty part."""
    cuts = [0]
    for run in row_group_runs(groups, target):
        cuts.append(cuts[-1] + sum(groups[i] for i in run))
    return cuts if len(cuts) > 1 and cuts[-1] > 0 else [0, 0]


# Footers read at once when planning: on an object store each footer is a request or two
# (tens of ms), so 100k small files read one after another would wait for 100k round
# trips (35 min at 20 ms); a local disk gains little from threads (a footer is ~0.1 ms).
_FOOTER_THREADS = 32
_FOOTER_THREADS_LOCAL = 4


def _parquet_layouts(files: Sequence[InputFile]) -> dict[str, tuple[list[int], pa.Schema]]:
    """{path: :func:`parquet_layout`} of the Parquet files, their footers read by a pool of
    threads; of several unreadable files, the first in ``files``' order is the error."""
    paths = list(dict.fromkeys(f.path for f in files if f.format == "parquet"))
    return _per_file(parquet_layout, paths)


def _per_file(read: Callable[[str], object], paths: Sequence[str]) -> dict:
    """{path: read(path)} of ``paths``, read by a pool of threads (more for remote files,
    where each read waits for a round trip); of several that fail, the first in
    ``paths``' order is the error."""
    remote = any("://" in p for p in paths)
    threads = min(len(paths), _FOOTER_THREADS if remote else _FOOTER_THREADS_LOCAL)
    if threads <= 1:
        return {p: read(p) for p in paths}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="gpu-curate-heads") as pool:
        return dict(zip(paths, pool.map(read, paths), strict=True))


def _utf8(path: str) -> bool:
    # (Arrow takes UTF-8 paths only: a name that is not UTF-8 is held as surrogates.)
    try:
        path.encode()
    except UnicodeEncodeError:
        return False
    return True


def parquet_layout(path: str) -> tuple[list[int], pa.Schema]:
    """The row counts of a Parquet file's row groups and its Arrow schema (its footer)."""
    try:
        if "://" in path or _is_compressed(path) or not _utf8(path):
            with _parquet_file(path) as pf:
                md, schema = pf.metadata, pf.schema_arrow
        else:
            # A local file: Arrow reads the footer itself, without fsspec's Python file
            # object (0.1 ms a file where that took 0.2-0.4 ms).
            md = pq.read_metadata(path)
            schema = md.schema.to_arrow_schema()
        return [md.row_group(i).num_rows for i in range(md.num_row_groups)], schema
    except (pa.ArrowInvalid, OSError, *_CODEC_ERRORS) as exc:
        raise cannot_read(f"Parquet file {path}", exc) from None


def read_piece(
    piece: Piece,
    columns: Sequence[str] | None = None,
    text_column: str | None = None,
    id_column: str | None = None,
) -> pa.Table:
    """Read the rows of one piece of a part as an Arrow table (host memory).

    ``text_column`` and ``id_column`` are the columns the run names (None: the default):
    on a CSV/TSV file's first line they mark it as a header. CSV/TSV columns are read as
    strings, as written (``001`` stays ``001``).
    """
    f = piece.file
    if piece.byte_end is not None or f.format in ("csv", "tsv"):
        # (As a stream of one table: the same reader, and its checks, as a stream's.)
        (table,) = read_piece_batches(piece, columns, text_column, id_column, rows=1 << 62)
        return table
    # (The readers open the file again rather than seek back: a zstd stream cannot.)
    open_ = functools.partial(open_input, f.path)
    error = None
    try:
        if f.format == "parquet":
            with _parquet_file(f.path) as pf:
                _check_unchanged(piece, pf.metadata.num_rows)
                table = _parquet_range(pf, piece.row_start, piece.row_end, columns)
        else:
            table = _read_json_lines(open_, text_column)
    except _READ_ERRORS as exc:
        error = _read_error(f, exc, piece.byte_start, piece.byte_end)
    if error is not None:
        raise _unchained(error)
    _check_size(f, local_only=True)
    check_names(table.column_names, f.path)
    if f.format == "jsonl" and not table.column_names:
        # Blank lines only: no rows, as an empty (0-byte) file has.
        table = pa.table({text_column or TEXT_COLUMN_CANDIDATES[1]: pa.array([], pa.string())})
    if f.format != "parquet":
        table = _select_columns(table, columns, f.path)
    return _without_views(table)


def _select_columns(table: pa.Table, columns: Sequence[str] | None, path: str) -> pa.Table:
    if columns is None:
        return table
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise CurateError(f"{path}: no column {missing[0]!r}")
    return table.select(list(columns))


def read_piece_batches(
    piece: Piece,
    columns: Sequence[str] | None = None,
    text_column: str | None = None,
    id_column: str | None = None,
    rows: int | None = None,
) -> Iterator[pa.Table]:
    """The rows of one piece as tables of about ``rows`` rows each, read as they are needed.

    A CSV or TSV file is read as a stream (its columns are all text, known from the first
    line), so a file of any size is matched in bounded memory. A JSON Lines file of more
    than :data:`JSON_STREAM_BYTES` (a compressed one: a quarter of that) is read as a
    stream twice: for its column types, then for its rows. Where a column's type is not the
    same all through it (beyond null), or a column is read as text (a text column of
    numbers, lists of nulls only: :func:`_json_schema`), it is read whole, as a smaller one
    is, so that it is typed as a whole read types it. A Parquet piece comes whole: it is
    cut to size when the run is planned. At least one table comes, with the file's columns
    (or only ``columns``), even where the piece holds no rows.
    ``rows`` defaults to :data:`PART_ROWS`; tables grow by the reader's blocks (16 MB), so
    they may hold more.

    Examples
    --------
    >>> for table in read_piece_batches(part.pieces[0]):  # doctest: +SKIP
    ...     print(table.num_rows)
    """
    f = piece.file
    open_ = functools.partial(open_input, f.path)
    rows = rows or PART_ROWS
    try:
        if piece.byte_end is not None:
            _check_size(f)
            open_ = functools.partial(open_range, f.path, piece.byte_start, piece.byte_end)
        if f.format in ("csv", "tsv"):
            tables = _delimited_tables(piece, text_column, id_column, rows)
        elif piece.schema is not None:
            tables = _json_tables(open_, piece.schema, rows)
        elif (
            f.format == "jsonl"
            and _json_streamed(f)
            and (schema := _json_schema(open_, text_column))
        ):
            tables = _json_tables(open_, schema, rows)
        else:
            yield read_piece(piece, columns, text_column, id_column)  # (it checks the size)
            return
        held = 0
        for table in tables:
            check_names(table.column_names, f.path)
            held += table.num_rows
            yield _select_columns(table, columns, f.path)
        _check_size(f, local_only=True)
        error = None
    except _READ_ERRORS as exc:
        error = _read_error(f, exc, piece.byte_start, piece.byte_end)
    if error is not None:
        raise _unchained(error)
    if piece.byte_end is not None and held != piece.row_end - piece.row_start:
        # (The rows of each range were counted when the run was planned: its uids number
        # on from the rows counted before it.)
        raise CurateError(
            f"{f.path} changed during the run: its bytes {piece.byte_start:,} to "
            f"{piece.byte_end:,} held {piece.row_end - piece.row_start:,} rows when the run "
            f"began and hold {held:,} now; run again on the files as they are (with "
            f"{OVERWRITE})"
        )


def piece_tables(
    piece: Piece,
    columns: Sequence[str] | None = None,
    text_column: str | None = None,
    id_column: str | None = None,
) -> Iterator[tuple[int, pa.Table]]:
    """(row number in the file of its first row, table) of each of
    :func:`read_piece_batches`' tables: the rows' positions, for uids and error messages.

    Examples
    --------
    >>> for row, table in piece_tables(part.pieces[0]):  # doctest: +SKIP
    ...     print(row, table.num_rows)
    """
    row = piece.row_start
    for table in read_piece_batches(piece, columns, text_column, id_column):
        yield row, table
        row += table.num_rows


_READ_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OSError, EOFError, *_CODEC_ERRORS)


def check_names(names: Sequence[str], path: str) -> None:
    """A :class:`CurateError` if a file names one column twice."""
    if len(set(names)) != len(names):
        # (Matching would pass; the parts written could not be read back by name.)
        dup = next(c for c in names if names.count(c) > 1)
        raise CurateError(f"{path}: the file names the column {dup!r} twice")


def _check_unchanged(piece: Piece, rows: int) -> None:
    # A file replaced since the parts were planned: its planned row range would read some
    # of its rows, or none, silently (and a pack could no longer be joined).
    if piece.file_rows is not None and rows != piece.file_rows:
        raise CurateError(
            f"{piece.file.path} changed during the run: it held {piece.file_rows:,} rows when "
            f"the run began and holds {rows:,} now; run again on the files as they are "
            f"(with {OVERWRITE})"
        )


def _without_views(table: pa.Table) -> pa.Table:
    # Arrow's filter and length kernels (pyarrow 26) take no string_view / binary_view
    # values, which a Parquet file written from Arrow may restore (in a list, an object or
    # a map too): read them as large_*.
    schema = pa.schema(
        [f.with_type(_retyped(f.type, _view_free)) for f in table.schema], table.schema.metadata
    )
    return table if schema.equals(table.schema) else table.cast(schema)


def _view_free(t: pa.DataType) -> pa.DataType:
    if pa.types.is_string_view(t):
        return pa.large_string()
    return pa.large_binary() if pa.types.is_binary_view(t) else t


def _retyped(t: pa.DataType, leaf: Callable[[pa.DataType], pa.DataType]) -> pa.DataType:
    """``t`` with ``leaf`` applied to each type in it that holds no other (at any depth of
    its lists, objects and maps)."""

    def inner(field: pa.Field) -> pa.Field:
        return field.with_type(_retyped(field.type, leaf))

    if pa.types.is_map(t):
        return pa.map_(inner(t.key_field), inner(t.item_field), t.keys_sorted)
    if pa.types.is_list(t):
        return pa.list_(inner(t.value_field))
    if pa.types.is_large_list(t):
        return pa.large_list(inner(t.value_field))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(inner(t.value_field), t.list_size)
    if pa.types.is_struct(t):
        return pa.struct([inner(f) for f in t])
    return leaf(t)


def _read_json_lines(open_, text_column: str | None = None) -> pa.Table:
    """A JSON Lines file (``open_()`` opens it) as a table; ``text_column``: the run's
    text column (None: the default), which must come back as text."""
    # Arrow's reader needs each line inside one block: a block that a (rare) long line
    # straddles is read again with blocks 8x larger, up to the whole file.
    block, null_lists, surrogates = 1 << 22, False, False

    def checked(fh):
        # (Lone surrogates, once Arrow's reader has refused one, escaped as U+FFFD.)
        return _NestingChecked(_SurrogatesReplaced(fh) if surrogates else fh)

    def again(schema: pa.Schema, behavior: str = "infer") -> pa.Table:
        # (The file read again with types given: those of ``schema``, the others'.)
        parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior=behavior)
        with open_() as fh:
            read = pajson.ReadOptions(block_size=block)
            return _valid_utf8(
                pajson.read_json(checked(fh), read_options=read, parse_options=parse)
            )

    while True:
        try:
            with open_() as fh:
                table = pajson.read_json(
                    checked(fh), read_options=pajson.ReadOptions(block_size=block)
                )
            _check_depth(table)
            if not _keys_utf8(table.schema):
                # A key that is not UTF-8: Python's reader takes it with U+FFFD, as
                # the values.
                return _read_json_lines_mixed(open_, text_column)
            # (Invalid UTF-8 in a list would else look like the invalid lists below.)
            table = _valid_utf8(table)
            wide, nested_wide = _floats_past_exact(table, _json_chunks(open_))
            if nested_wide:
                # (A list's or object's number that a double may not hold: Python's
                # reader keeps such values as their JSON text, as written.)
                return _read_json_lines_mixed(open_, text_column)
            kept = _types_as_written(table.schema, uint64=wide)
            if _json_lists_invalid(table):
                # Arrow's reader drops the nulls that begin a list while it infers the
                # list's type ([null, 1]: apache/arrow#51305), leaving a column whose
                # offsets outrun its values; read again with the types it inferred
                # (as a streamed file's rows are), which keeps them.
                table = again(kept)
                null_lists = _json_lists_invalid(table)
            elif not kept.equals(table.schema):
                # A type it inferred would change values (_types_as_written): those
                # columns read again (the others' values skipped); one that then fails
                # (-1 as uint64) sends the file to Python's reader (below).
                changed = [f for f in kept if not f.equals(table.schema.field(f.name))]
                columns = again(pa.schema(changed), "ignore")
                for f in changed:
                    at = table.schema.get_field_index(f.name)
                    table = table.set_column(at, f, columns.column(f.name))
            break
        except pa.ArrowInvalid as exc:
            if _LONE_SURROGATE_ERROR in str(exc) and not surrogates:
                surrogates = True  # (read again, each escaped as U+FFFD)
                continue
            if any(words in str(exc) for words in _JSON_READ_BY_PYTHON):
                # A column holds values of several JSON types ({"text": 1984} among
                # strings): Arrow's reader takes one type a column. (Where a long line
                # grew the blocks, it says so as a value it cannot convert.)
                return _read_json_lines_mixed(open_, text_column)
            if "straddl" not in str(exc) or block >= 1 << 31:
                raise
            block *= 8
    names = table.column_names
    text = text_column or next((c for c in TEXT_COLUMN_CANDIDATES if c in names), None)
    if null_lists or (text in names and _json_types_not_text(table.schema.field(text).type)):
        # Every caption a number (or true/false): read them as written, as text. (Lists
        # of nulls only, two or more ([null, null]: list<null>), are invalid however
        # Arrow's reader reads them: read as JSON text, as lists of mixed types are.)
        return _read_json_lines_mixed(open_, text_column)
    return table


# Arrow's errors for JSON Lines that Python's reader (:func:`_read_json_lines_mixed`) reads.
_JSON_READ_BY_PYTHON = ("changed from", "Failed to convert JSON")
# Arrow's error for an escaped lone surrogate ("\ud83d", half an emoji).
_LONE_SURROGATE_ERROR = "The surrogate pair in string is invalid"
# An escaped UTF-16 surrogate, its backslash the last of an odd run (an escaped backslash
# and then "ud83d" is text): a high one with the low one that may follow it, or a low one.
# (A backslash first: Python's re then looks for backslashes, not at every byte.)
_SURROGATE_ESCAPE = re.compile(
    rb"\\(?<!\\\\)((?:\\\\)*)u[dD][89abAB][0-9a-fA-F]{2}(\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
    rb"|\\(?<!\\\\)((?:\\\\)*)u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _lone_surrogates_replaced(chunk: bytes) -> bytes:
    """Whole lines of JSON with each escaped lone surrogate escaped as U+FFFD, as an invalid
    byte is read (the same length: a line's bytes stay where they were); pairs are kept.

    Examples
    --------
    >>> _lone_surrogates_replaced(rb'{"t": "a \\ud83d b \\ud83d\\ude00 \\\\ud83d"}')
    b'{"t": "a \\\\ufffd b \\\\ud83d\\\\ude00 \\\\\\\\ud83d"}'
    """

    def replaced(found: re.Match) -> bytes:
        if found[2] is not None:
            return found[0]  # (a pair)
        return b"\\" + (found[1] if found[1] is not None else found[3]) + b"ufffd"

    return _SURROGATE_ESCAPE.sub(replaced, chunk)


def _keys_utf8(schema: pa.Schema) -> bool:
    """Whether every column name, nested ones too, is UTF-8 (Arrow's JSON reader keeps a
    key's bytes, which Python cannot decode into a name)."""

    def named(field: pa.Field) -> bool:
        field.name  # noqa: B018 (decoded here: raises if not UTF-8)
        t = field.type
        if pa.types.is_struct(t):
            return all(named(t.field(i)) for i in range(t.num_fields))
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return named(t.value_field)
        return True

    try:
        return all(named(schema.field(i)) for i in range(len(schema)))
    except UnicodeDecodeError:
        return False


def _json_lists_invalid(table: pa.Table) -> bool:
    """Whether a column holding lists (at any depth) is invalid (checked in full)."""
    for column in table.columns:
        if any(True for _ in _list_items(column.type)):
            try:
                column.validate(full=True)
            except pa.ArrowInvalid:
                return True
    return False


def _list_items(t: pa.DataType) -> Iterator[pa.DataType]:
    """The item types of the lists in a type (at any depth)."""
    if pa.types.is_list(t):
        yield t.value_type
    for i in range(t.num_fields):
        yield from _list_items(t.field(i).type)


# The least magnitude of a double that may stand for another integer (2**53 + 1 is read
# as 2**53): a JSON number that large in a column Arrow's reader makes double may have
# been an integer that the double does not hold.
_EXACT_DOUBLES = 2.0**53


# An integer literal of 16 digits or more (2**53 has 16), not part of a fraction, an
# exponent or a word: where a JSON text holds none, Arrow's doubles are the numbers as
# written (a float literal is a double however large). (One inside a string makes the
# file be typed as if it were a number: slower, the same result.)
_LONG_INTEGER = re.compile(rb"(?<![\w.+-])-?[0-9]{16,}(?![\w.])")


def _floats_past_exact(table: pa.Table, chunks: Iterable[bytes] = ()) -> tuple[list[str], bool]:
    """(columns of doubles, the table's own, holding a value of magnitude 2**53 or more;
    whether such a double sits in a list or object): those values may be integers that
    Arrow's reader rounded (18446744073709551615, a uint64 hash id, as 1.8e19). None are,
    and ([], False) comes, where the JSON text ``chunks`` (read only if needed) holds no
    integer literal long enough (``1.5e16`` is one double)."""
    wide, nested = [], False
    for name, column in zip(table.column_names, table.columns, strict=True):
        for depth, doubles in _double_leaves(column):
            if len(doubles) and (pc.max(pc.abs(doubles)).as_py() or 0.0) >= _EXACT_DOUBLES:
                if depth:
                    nested = True
                else:
                    wide.append(name)
    if (wide or nested) and not any(_LONG_INTEGER.search(c) for c in chunks):
        return [], False
    return wide, nested


def _double_leaves(array, depth: int = 0) -> Iterator[tuple[int, pa.Array]]:
    """(depth, array) of the double arrays at any depth of a column (0: the column)."""
    if isinstance(array, pa.ChunkedArray):
        for chunk in array.chunks:
            yield from _double_leaves(chunk, depth)
    elif pa.types.is_floating(array.type):
        yield depth, array
    elif pa.types.is_list(array.type):
        yield from _double_leaves(array.flatten(), depth + 1)
    elif pa.types.is_struct(array.type):
        for i in range(array.type.num_fields):
            yield from _double_leaves(array.field(i), depth + 1)


def _types_as_written(schema: pa.Schema, uint64: Sequence[str] = ()) -> pa.Schema:
    """``schema`` (the types Arrow's reader inferred for JSON Lines) with the types that
    keep every value as written: a string that reads as a time is a string, not a
    timestamp (which dropped its zone's offset, "2020-01-02T03:04:05+02:00" as 01:04:05,
    and typed a column of captions that are dates as no text); the columns ``uint64``
    names are uint64 (see :func:`_floats_past_exact`)."""
    return pa.schema(
        [
            f.with_type(pa.uint64() if f.name in uint64 else _retyped(f.type, _time_as_text))
            for f in schema
        ],
        metadata=schema.metadata,
    )


def _time_as_text(t: pa.DataType) -> pa.DataType:
    return pa.string() if pa.types.is_timestamp(t) else t


# JSON Lines files larger than this (compressed ones: a quarter of it) are read as streams.
JSON_STREAM_BYTES = 1 << 29
# A JSON Lines file of at most this many bytes (a compressed one: a quarter of that) is
# read whole when the run is planned, for its column types, so that small files of one
# schema share a part (a part costs ~10 ms a stage: 1,000 files of 2 rows took 17-21 s
# more than one file, docs/benchmarks.md). A bigger one is a part of its own: from about
# 1 MiB (~6k rows) its part's cost is no longer most of its work, and reading it twice
# would cost more than packing saves.
JSON_PACK_BYTES = 1 << 20
# Bytes of a streamed JSON Lines file parsed at a time (cut at a line end).
_JSON_CHUNK = 1 << 24


def _json_streamed(f: InputFile) -> bool:
    size = f.size if f.size is not None else 0
    return size * (4 if _is_compressed(f.path) else 1) > JSON_STREAM_BYTES


def _json_chunks(open_) -> Iterator[bytes]:
    """The file's bytes in pieces of about :data:`_JSON_CHUNK` bytes of whole lines."""
    with open_() as fh:
        yield from _whole_lines(fh)


def _whole_lines(fh) -> Iterator[bytes]:
    """The bytes of ``fh`` in pieces of about :data:`_JSON_CHUNK` bytes of whole lines."""
    rest = b""
    while block := fh.read(_JSON_CHUNK):
        data = rest + block
        # (At a CR where no LF ends a line: a file of CR line ends is not one chunk.)
        cut = data.rfind(b"\n") + 1 or data.rfind(b"\r") + 1
        if cut:
            yield data[:cut]
        rest = data[cut:]
    if rest:
        yield rest


def _check_nesting(chunk: bytes, start: int = 0, end: int | None = None) -> None:
    """Refuse whole lines of JSON (``chunk[start:end]``) where a long one nests too deeply
    (:mod:`~gpu_curate.json_nesting`); the error path names the line. (Lines end at LF
    only: a CR is whitespace to Arrow's reader, which may fall inside a value, so a file
    of CR line ends is checked as one line, its depth carried across its CRs.)"""
    if long_line_too_deep(chunk, start, end) is not None:
        raise _too_deep()


def _check_depth(table: pa.Table) -> pa.Table:
    """``table``, as Arrow's reader read it, unless its values nest too deeply (in lines
    too short to harm the reader: :mod:`~gpu_curate.json_nesting`)."""
    if type_depth(table.schema) > MAX_DEPTH:
        raise _too_deep()
    return table


def _too_deep() -> pa.ArrowInvalid:
    return pa.ArrowInvalid(f"JSON parse error: a value is nested more than {MAX_DEPTH} levels deep")


class _SurrogatesReplaced(io.RawIOBase):
    """A JSON Lines stream ``fh`` with its escaped lone surrogates escaped as U+FFFD
    (:func:`_lone_surrogates_replaced`), read a piece of whole lines at a time (a file
    that holds one: the others are read as they are)."""

    def __init__(self, fh):
        self._pieces = (_lone_surrogates_replaced(p) for p in _whole_lines(fh))
        self._held = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._held) < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._held += piece
        size = len(self._held) if size < 0 else size
        data, self._held = self._held[:size], self._held[size:]
        return data


class _NestingChecked(io.RawIOBase):
    """A JSON Lines stream ``fh`` for Arrow's reader: its bytes as they come (the same
    blocks, not copied), each line checked by :func:`_check_nesting` before the reader
    gets its end."""

    def __init__(self, fh):
        self._fh = fh
        self._open_line: list[bytes] = []  # (the line the bytes so far end inside)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        first_end = data.find(b"\n")  # (LF only: see _check_nesting)
        if first_end == -1:
            self._open_line.append(data)
            if not data:
                _check_nesting(b"".join(self._open_line))
            return data
        _check_nesting(b"".join([*self._open_line, data[: first_end + 1]]))
        last_end = data.rindex(b"\n")
        _check_nesting(data, first_end + 1, last_end)
        self._open_line = [data[last_end + 1 :]]
        return data


def _read_json_chunk(chunk: bytes, schema: pa.Schema | None = None) -> pa.Table:
    _check_nesting(chunk)
    try:
        return _read_json_bytes(chunk, schema)
    except pa.ArrowInvalid as exc:
        if _LONE_SURROGATE_ERROR not in str(exc):
            raise
    return _read_json_bytes(_lone_surrogates_replaced(chunk), schema)


def _read_json_bytes(chunk: bytes, schema: pa.Schema | None) -> pa.Table:
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    try:
        read = pajson.ReadOptions(block_size=1 << 22)  # (blocks parsed on Arrow's threads)
        table = pajson.read_json(io.BytesIO(chunk), read_options=read, parse_options=parse)
        return _check_depth(table)
    except pa.ArrowInvalid as exc:
        if "straddl" not in str(exc):
            raise
    # A line longer than a block: the chunk as one block (it holds whole lines).
    read = pajson.ReadOptions(block_size=min(len(chunk) + 1, (1 << 31) - 1))
    table = pajson.read_json(io.BytesIO(chunk), read_options=read, parse_options=parse)
    return _check_depth(table)


def _json_schema(open_, text_column: str | None) -> pa.Schema | None:
    """The column types of a JSON Lines file, read a chunk at a time; None where reading
    it whole is needed: a column typed otherwise in some chunk (beyond null: an integer
    column with a fraction further on, which a whole read makes double; a column of mixed
    JSON types, which :func:`_read_json_lines_mixed` reads), a text column of numbers, lists
    of nulls only, a chunk but the first that begins with a BOM, no columns at all."""
    _, fields = _json_fields(_json_chunks(open_), first=True)
    return json_ranges_schema([fields], text_column)


def _json_fields(chunks: Iterable[bytes], first: bool) -> tuple[int, dict | None]:
    """(rows, {column: type}) of a JSON Lines file's chunks (``first``: they begin the
    file); the types None where a chunk types a column otherwise than one before it
    (beyond null), or needs the whole read (:func:`_json_schema`)."""
    fields: dict[str, pa.DataType] = {}
    rows = 0
    for n, chunk in enumerate(chunks):
        if (n or not first) and chunk.startswith(UTF8_BOM):
            # (Arrow skips a BOM that begins its input only: the whole read fails.)
            return rows, None
        try:
            table = _read_json_chunk(chunk)
        except pa.ArrowInvalid:
            return rows, None  # (mixed types in the chunk, or a bad line: the whole read says)
        rows += table.num_rows
        if not _keys_utf8(table.schema):
            return rows, None  # (a key that is not UTF-8: the whole read takes it)
        wide, nested_wide = _floats_past_exact(table, [chunk])
        if nested_wide:
            return rows, None  # (the whole read reads them, with Python's reader)
        if wide:
            # (uint64 hash ids: typed as the whole read types them, if they all are such.)
            try:
                table = _read_json_chunk(chunk, _types_as_written(table.schema, uint64=wide))
            except pa.ArrowInvalid:
                return rows, None
        if not _add_fields(fields, ((f.name, f.type) for f in _types_as_written(table.schema))):
            return rows, None
    return rows, fields


def _add_fields(fields: dict, more: Iterable[tuple[str, pa.DataType]]) -> bool:
    """Add ``more`` column types to ``fields`` (in order of first appearance, as Arrow);
    False where one differs from a type already there, beyond null."""
    for name, t in more:
        known = fields.get(name)
        if known is None or pa.types.is_null(known):
            fields[name] = t
        elif not (pa.types.is_null(t) or t.equals(known)):
            return False
    return True


def json_range_types(path: str, start: int, end: int) -> tuple[int, dict | None]:
    """(rows, {column: type}) of bytes [start, end) of an uncompressed JSON Lines file, a
    range of :func:`~gpu_curate.line_ranges.line_cuts` (types None: it needs the file's
    whole read); :func:`json_ranges_schema` joins those of a file's ranges.

    Examples
    --------
    >>> rows, types = json_range_types("pool/big.jsonl", 0, 16_777_402)  # doctest: +SKIP
    """
    open_ = functools.partial(open_range, path, start, end)
    try:
        return _json_fields(_json_chunks(open_), first=start == 0)
    except _READ_ERRORS as exc:
        raise _json_parse_error(path, exc, start, end) from None


def json_ranges_schema(ranges: Sequence[dict | None], text_column: str | None) -> pa.Schema | None:
    """The schema that types a JSON Lines file's rows as a whole read does, from the
    column types of its ranges (or chunks) in order; None where the file must be read
    whole (:func:`_json_schema`)."""
    fields: dict[str, pa.DataType] = {}
    if any(r is None or not _add_fields(fields, r.items()) for r in ranges):
        return None
    text = text_column or next((c for c in TEXT_COLUMN_CANDIDATES if c in fields), None)
    if not fields or (text in fields and _json_types_not_text(fields[text])):
        return None
    if any(pa.types.is_null(i) for t in fields.values() for i in _list_items(t)):
        return None  # (lists of nulls only: see _read_json_lines)
    return pa.schema(list(fields.items()))


def _json_tables(open_, schema: pa.Schema, rows: int) -> Iterator[pa.Table]:
    """A JSON Lines file's rows, typed by ``schema``, in tables of about ``rows`` rows (at
    least one table), their strings valid UTF-8 (:func:`_valid_utf8`)."""
    tables = (_valid_utf8(_read_json_chunk(chunk, schema)) for chunk in _json_chunks(open_))
    yield from _gathered(
        tables, rows, lambda group: pa.concat_tables(group) if group else schema.empty_table()
    )


def _json_types_not_text(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


class _Number:
    """A JSON number as written (``1984``, ``1.50``): a text keeps its spelling."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def kind(self) -> str:
        """The smallest of gpu-curate's number kinds that holds it: "int" (0 .. 2**63 - 1),
        "-int" (-2**63 .. -1), "uint" (2**63 .. 2**64 - 1), "big" (an integer past
        those), "float" (a fraction or an exponent)."""
        digits = self.text.removeprefix("-")
        if not digits.isdigit():
            return "float"
        # (A long one is not parsed: Python refuses int() of more than 4,300 digits.)
        n = int(self.text) if len(digits) <= 20 else None
        if n is None or not -(2**63) <= n < 2**64:
            return "big"
        return "-int" if n < 0 else "int" if n < 2**63 else "uint"

    def exact(self) -> bool:
        """Whether a double holds the number as written, where it is an integer."""
        digits = self.text.removeprefix("-")
        if not digits.isdigit() or len(digits) <= 15:  # (below 2**53: every one is)
            return True
        return len(digits) <= 20 and float(n := int(self.text)) == n


def _json_kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, str):
        return "string"
    if isinstance(v, _Number):
        return v.kind()
    return "bool" if isinstance(v, bool) else "nested"


def _json_text(v) -> str | None:
    if v is None:
        return v
    if isinstance(v, str):
        return without_surrogate(v)
    if isinstance(v, _Number):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    return without_surrogate(_compact_json(v))


def _compact_json(v) -> str:
    """A list's or object's compact JSON text, its numbers as written (``1.50``, an
    integer of 5,000 digits: no double rounds or respells them)."""
    if isinstance(v, _Number):
        return v.text
    if isinstance(v, dict):
        items = (f"{json.dumps(k, ensure_ascii=False)}:{_compact_json(x)}" for k, x in v.items())
        return "{" + ",".join(items) + "}"
    if isinstance(v, list):
        return "[" + ",".join(map(_compact_json, v)) + "]"
    return json.dumps(v, ensure_ascii=False)  # (a string, true, false, null)


def _json_type(kinds: set[str]) -> pa.DataType:
    """The column type of a JSONL file read by :func:`_read_json_lines_mixed`, from the
    kinds of its values (:func:`_json_kind`; "inexact": an integer a double does not
    hold): one that holds every value as written, else a string (lists, objects and any
    other mix are their JSON text)."""
    ks = kinds - {"null"}
    if not ks:
        return pa.null()
    if ks == {"bool"}:
        return pa.bool_()
    if ks <= {"int", "-int", "inexact"}:
        return pa.int64()
    if ks <= {"int", "uint", "inexact"}:
        return pa.uint64()
    if ks <= {"int", "-int", "uint", "float"}:
        return pa.float64()
    return pa.string()


_JSON_BATCH = 1 << 16


_JSON_SPACE = re.compile(r"[ \t\r\n]*")


def _json_records(fh, first_line: int = 1):
    """The objects of a JSON Lines stream of bytes, its lines numbered from ``first_line``,
    taken as Arrow's reader takes them: a byte-order mark before the first, invalid UTF-8
    as U+FFFD, several objects on one line; an escaped lone surrogate in a key is U+FFFD
    (in a value, :func:`_json_text` makes it so)."""
    decoder = json.JSONDecoder(parse_int=_Number, parse_float=_Number, object_pairs_hook=_object)
    for n, line in enumerate(fh, first_line):
        raw = line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")
        if line_too_deep(raw):
            raise pa.ArrowInvalid(f"line {n} is nested more than {MAX_DEPTH} levels deep")
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        if n == 1:
            text = text.removeprefix("\ufeff")
        at = 0
        while (at := _JSON_SPACE.match(text, at).end()) < len(text):
            try:
                record, at = decoder.raw_decode(text, at)
            except _RepeatedKey as exc:
                raise pa.ArrowInvalid(_repeated(n, exc.args[0])) from None
            except json.JSONDecodeError as exc:
                raise pa.ArrowInvalid(f"line {n} is not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise pa.ArrowInvalid(f"line {n} is not a JSON object")
            if "\\u" in text and any(without_surrogate(k) != k for k in record):
                # (An escaped lone surrogate in a key: a column is named in UTF-8.)
                named = {without_surrogate(k): v for k, v in record.items()}
                if len(named) < len(record):  # ("a\ud800" and "a\ud801": one name twice)
                    repeated = [without_surrogate(k) for k in record]
                    raise pa.ArrowInvalid(
                        _repeated(n, next(k for k in named if repeated.count(k) > 1))
                    )
                record = named
            yield record


class _RepeatedKey(ValueError):
    """A key twice in one JSON object (its name the argument)."""


def _object(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, or :class:`_RepeatedKey`: Arrow's reader refuses a key that an
    object holds twice (at any depth), where Python's json would keep the last value."""
    record = dict(pairs)
    if len(record) < len(pairs):
        seen: set[str] = set()
        raise _RepeatedKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return record


def _repeated(line: int, key: str) -> str:
    return f"line {line} holds the key {key!r} twice in one object"


def _unchained(error: CurateError) -> CurateError:
    """``error``, raised outside the ``except`` of the reader's error it reports: a task's
    error goes back to the client with its chain, and one with a deep traceback in it did
    not (it came as a bare ``Exception``, a traceback)."""
    error.__context__ = error.__cause__ = None
    return error


def _read_error(f: InputFile, exc: BaseException, start: int, end: int | None) -> CurateError:
    """``cannot read`` the file ``f`` (its bytes [start, end) where ``end`` is given), for
    a reader's error ``exc``; a JSON Lines syntax error names its line."""
    if f.format == "jsonl":
        return _json_parse_error(f.path, exc, start, end)
    if f.format in ("csv", "tsv"):
        return _delimited_parse_error(f.path, f.format, exc, start, end)
    return cannot_read(f.path, exc)


# Arrow's error for a CSV/TSV row of another number of fields than the first row; it
# quotes the row, but says not where it is.
_FIELD_COUNT = re.compile(r"CSV parse error: Expected (\d+) columns?, got \d+: ")
# (It quotes a row of more than 100 bytes as its first 96 and " ...".)
_QUOTE_CUT = " ..."


def _delimited_parse_error(
    path: str, fmt: str, exc: BaseException, start: int = 0, end: int | None = None
) -> CurateError:
    """``cannot read``, naming the line of the CSV/TSV file (its bytes [start, end) where
    ``end`` is given) where ``exc`` is Arrow's error for a row of another number of
    fields: in a file of millions of lines, the row's text alone hardly finds it.

    On this (error) path the rows are read again with Python's csv module, which splits
    them as Arrow does, up to the first of another number of fields; its line is named
    where the row begins as Arrow quotes it (cut at 96 bytes, maybe inside a character).
    A line is named only so: where none is found, Arrow's words stay, without one.
    """
    message = str(exc)
    found = _FIELD_COUNT.match(message)
    if found is None:
        return cannot_read(path, exc)
    quoted = message[found.end() :]
    body = quoted.removesuffix(_QUOTE_CUT).rstrip("\ufffd")
    cut = quoted.endswith(_QUOTE_CUT) and 92 <= len(body.encode("utf-8", "surrogateescape")) <= 96
    try:
        first, opener = _read_again(path, start, end)
        with opener as fh:
            line, raw = _first_record_of_other_width(fh, fmt, int(found.group(1)))
    except (OSError, EOFError, csv.Error, *_CODEC_ERRORS):
        return cannot_read(path, exc)
    if line is None or not raw.startswith(body if cut else quoted):
        return cannot_read(path, exc)
    return cannot_read(path, pa.ArrowInvalid(f"line {first + line}: {message}"))


def _first_record_of_other_width(fh, fmt: str, fields: int) -> tuple[int | None, str]:
    """(line offset from the stream's first, text without its line end) of the first row
    of a CSV/TSV byte stream whose number of fields is not ``fields`` (blank lines are no
    rows, as for Arrow); (None, "") where every row has that many."""
    taken: list[str] = []

    def lines():
        for line in fh:
            taken.append(line.decode("utf-8", "replace"))
            yield taken[-1]

    limit = csv.field_size_limit()
    csv.field_size_limit(1 << 30)  # (a caption may be longer than its 128 KiB)
    try:
        before = 0
        for record in csv.reader(lines(), **_python_csv(fmt)):
            raw = "".join(taken).rstrip("\r\n")
            if record and len(record) != fields:
                return before, raw
            before += len(taken)
            taken.clear()
    finally:
        csv.field_size_limit(limit)
    return None, ""


def _read_again(path: str, start: int, end: int | None):
    """(number of its first line, an opener) of the bytes [start, end) of a file, where
    ``end`` is given, else of the whole file, for an error path to read them again."""
    if end is None:
        return 1, open_input(path)
    with open_input(path) as fh:  # (the lines before the range)
        return 1 + _newlines(fh, start), open_range(path, start, end)


def _json_parse_error(
    path: str, exc: BaseException, start: int = 0, end: int | None = None
) -> CurateError:
    """``cannot read``, naming the line of the file where a JSON Lines read (of its bytes
    [start, end) where ``end`` is given) failed, where ``exc`` is a syntax error.

    Arrow's reader says "in row 2": rows counted from 0 within a block, blank lines not
    counted. On this (error) path the bytes are read again with Python's parser, which
    names the first line it cannot parse; where it parses every line, Arrow's words stay.
    """
    if "JSON parse error" not in str(exc):
        return cannot_read(path, exc)
    try:
        first, opener = _read_again(path, start, end)
        with opener as fh:
            for _ in _json_records(fh, first):
                pass
    except pa.ArrowInvalid as found:
        return cannot_read(path, found)
    except (OSError, EOFError, *_CODEC_ERRORS):
        pass
    return cannot_read(path, exc)


def _newlines(fh, end: int) -> int:
    n = 0
    while end > 0 and (block := fh.read(min(end, 1 << 24))):
        n += block.count(b"\n")
        end -= len(block)
    return n


def _read_json_lines_mixed(open_, text_column: str | None = None) -> pa.Table:
    """JSON Lines whose columns may mix JSON types, in two passes of bounded memory.

    The first pass finds each column's JSON types; the second builds the columns in
    batches. A column of strings and other values is a string column in which the others
    are their JSON text (``1984``, ``true``, ``["a"]``): a caption written as a number is
    a row like any other, matched as the text it reads as. The text column
    (``text_column``, or the default one found) is read so whatever its values.
    """
    kinds: dict[str, set] = {}
    with open_() as fh:
        for record in _json_records(fh):
            for key, v in record.items():
                found = kinds.setdefault(key, set())
                found.add(_json_kind(v))
                if isinstance(v, _Number) and not v.exact():
                    found.add("inexact")
    as_text = text_column or next((c for c in TEXT_COLUMN_CANDIDATES if c in kinds), None)
    schema = pa.schema(
        [
            (
                k,
                pa.string() if k == as_text else _json_type(ks),
            )
            for k, ks in kinds.items()
        ]
    )
    batches, rows = [], []

    def flush():
        cols = []
        for field in schema:
            values = [r.get(field.name) for r in rows]
            if pa.types.is_string(field.type):
                values = [_json_text(v) for v in values]
            elif not pa.types.is_boolean(field.type):
                # (From the text: an exact integer past 2**53 is a double pyarrow takes
                # from no int. _json_type made a column double only where every integer
                # is exact, and int64 or uint64 where every number is an integer.)
                number = float if pa.types.is_floating(field.type) else int
                values = [None if v is None else number(v.text) for v in values]
            cols.append(pa.array(values, field.type))
        batches.append(pa.Table.from_arrays(cols, schema=schema))
        rows.clear()

    with open_() as fh:
        for record in _json_records(fh):
            rows.append(record)
            if len(rows) == _JSON_BATCH:
                flush()
    if rows or not batches:
        flush()
    return pa.concat_tables(batches)


def _parquet_range(pf: pq.ParquetFile, start: int, end: int | None, columns) -> pa.Table:
    md = pf.metadata
    end = md.num_rows if end is None else end
    groups, first, pos = [], None, 0
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        if pos + n > start and pos < end:
            groups.append(g)
            first = pos if first is None else first
        pos += n
    empty = pf.schema_arrow.empty_table()
    empty = empty.select(columns) if columns else empty
    if not groups:
        return empty
    if sum(md.row_group(g).num_rows for g in groups) <= 2 * (end - start):
        return pf.read_row_groups(groups, columns=columns).slice(start - first, end - start)
    # Row groups much larger than the part (--partition-rows below the group size): they
    # are streamed in batches and only the part's rows kept, so that a part holds its own
    # rows and one batch, not whole groups. (The rows before it are still decoded.)
    kept, pos = [], first
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=groups, columns=columns):
        lo, hi = max(start - pos, 0), min(end - pos, batch.num_rows)
        if hi > lo:
            kept.append(batch.slice(lo, hi - lo))
        pos += batch.num_rows
        if pos >= end:
            break
    return pa.Table.from_batches(kept) if kept else empty


_BATCH_ROWS = 1 << 16


# A first line whose fields are all like these is a header, not data: a caption has
# spaces, a URL has ":" and "/", a file name has ".".
_HEADER_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}")
# The names a file without a header gives its columns.
_AUTO_NAME = re.compile(r"f\d+")
# Bytes of a CSV/TSV file that Arrow's reader parses at a time (a streamed file's tables
# grow by this much).
_CSV_BLOCK = 1 << 24
# Header-less files get columns f0, f1, ...; all of them (up to a generous count) strings.
_AUTO_COLUMNS = 4096


def _delimited_tables(piece: Piece, text_column, id_column, rows: int) -> Iterator[pa.Table]:
    """A CSV/TSV file (or a byte range of one) as tables of about ``rows`` rows (at
    least one table), read as a stream: the reader's blocks are gathered until they hold
    ``rows`` rows."""
    f = piece.file
    open_ = functools.partial(open_input, f.path)
    read, parse, convert = _delimited_options(open_, f.format, text_column, id_column, f.path)
    if piece.byte_end is not None:
        if piece.byte_start and read.skip_rows:
            read.skip_rows = 0  # (a header is the first range's first line)
        elif piece.byte_start:
            # The file's columns are its first row's: a row of another count is an error
            # in any range, as in a whole read (not the columns of the range's first row).
            read.column_names = _csv_schema(open_, read, parse, convert).names
            read.autogenerate_column_names = False
        open_ = functools.partial(open_range, f.path, piece.byte_start, piece.byte_end)
    # Arrow's reader fails on a row that straddles two of its blocks (a row longer than a
    # block), so whether it fails would depend on where the read begins (a range's start
    # or the file's): such a read is begun again with blocks 8x larger (up to 1 GiB),
    # past the rows it has given.
    sent = 0
    while True:
        try:
            with open_() as fh, pacsv.open_csv(_LineEnded(fh), read, parse, convert) as reader:
                join = functools.partial(_joined_batches, schema=reader.schema)
                tables = _gathered(_past_rows(reader, sent), rows, join)
                for table in tables:
                    if table.num_rows or not sent:
                        sent += table.num_rows
                        yield table
            return
        except pa.ArrowInvalid as exc:
            _grow_blocks(read, exc)


# Arrow's errors for a row longer than its block: one that straddles two blocks, and (a
# file without a header, whose column count its first row gives) a first block that ends
# inside its first row. (A prefix: a parse error's message quotes the row, any text.)
_BLOCK_TOO_SMALL = (
    "straddling object straddles two block boundaries",
    "CSV parse error: Empty CSV file or block: cannot infer number of columns",
)


def _grow_blocks(read: pacsv.ReadOptions, exc: pa.ArrowInvalid) -> None:
    """Make Arrow's blocks 8x larger (up to 1 GiB) where ``exc`` is a row longer than a
    block (:data:`_BLOCK_TOO_SMALL`); raise ``exc`` otherwise."""
    if not str(exc).startswith(_BLOCK_TOO_SMALL) or read.block_size >= 1 << 30:
        raise exc
    read.block_size = min(read.block_size * 8, 1 << 30)


# Bytes of a CSV/TSV file's head read for its columns (grown where its first row is
# longer): a block of _CSV_BLOCK read the whole of a small file on the client when the
# run was planned (and 16-32 MB of a big one's for each of its ranges).
_PROBE_BLOCK = 1 << 16


def _csv_schema(open_, read, parse, convert) -> pa.Schema:
    """The columns Arrow's reader gives a CSV/TSV file with options ``read`` (from its
    first row or header, read in blocks of :data:`_PROBE_BLOCK` grown as
    :func:`_delimited_tables` grows them where that row is longer)."""
    probe = copy.copy(read)
    probe.block_size = min(read.block_size, _PROBE_BLOCK)
    while True:
        try:
            with open_() as fh, pacsv.open_csv(_LineEnded(fh), probe, parse, convert) as reader:
                return reader.schema
        except pa.ArrowInvalid as exc:
            _grow_blocks(probe, exc)


class _LineEnded(io.RawIOBase):
    """A binary stream read as ``fh`` with a line end after its last byte where it has
    none.

    Arrow's CSV reader takes a header-less file's column count from a whole row of its
    first block, and a file of one row without a line end (``a photo of a dog``) has
    none: "Empty CSV file or block". A file of more rows is read the same either way.
    The end is known only when a read comes back empty, so each read is one ahead.
    """

    def __init__(self, fh: io.BufferedIOBase) -> None:
        self._fh = fh
        self._ahead: bytes | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size) if self._ahead is None else self._ahead
        if not data:
            return data
        self._ahead = self._fh.read(size)
        if not self._ahead and not data.endswith((b"\n", b"\r")):
            data += b"\n"
        return data


def _joined_batches(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    return _valid_utf8(pa.Table.from_batches(batches, schema))


def _past_rows(batches: Iterable[pa.RecordBatch], skip: int) -> Iterator[pa.RecordBatch]:
    """``batches`` without their first ``skip`` rows."""
    for batch in batches:
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        yield batch.slice(skip) if skip else batch
        skip = 0


def _check_size(f: InputFile, local_only: bool = False) -> None:
    """Refuse the file ``f`` where its size is not the one the run was planned with.

    A range's rows are where they were only if the file is as it was: one appended to
    since would have rows past the last range, read by no part. A file read whole (checked
    once read) would give rows the run's manifest does not describe. ``local_only``: no
    check of a URL's file (a request per file).
    """
    if f.size is None:
        return
    fs, path = fsspec.core.url_to_fs(f.path)
    if local_only and not is_local(fs):
        return
    size = fs.size(path)
    if size != f.size:
        raise CurateError(
            f"{f.path} changed during the run: it held {f.size:,} bytes when the run began "
            f"and holds {size:,} now; run again on the files as they are (with {OVERWRITE})"
        )


def can_cut(f: InputFile) -> bool:
    """Whether the file can be cut into byte ranges of whole rows
    (:mod:`gpu_curate.line_ranges`): an uncompressed TSV or CSV file of known size, or
    JSON Lines file of more than :data:`JSON_STREAM_BYTES` (a smaller one is read whole,
    which types its columns at once).

    Examples
    --------
    >>> can_cut(InputFile("pool/cc12m.tsv", "cc12m.tsv", "tsv", 2_609_623_345))
    True
    >>> can_cut(InputFile("pool/cc12m.tsv.gz", "cc12m.tsv.gz", "tsv", 1_000_000_000))
    False
    """
    # (fsspec's memory file system hands one file object to every reader of a file, so
    # ranges read at once would move each other's position.)
    if f.size is None or _is_compressed(f.path) or f.path.startswith("memory://"):
        return False
    return f.format in ("tsv", "csv") or (f.format == "jsonl" and _json_streamed(f))


def has_header(f: InputFile, text_column: str | None, id_column: str | None) -> bool:
    """Whether a CSV/TSV file's first line is a header (it names the text or id column,
    or one of :data:`TEXT_COLUMN_CANDIDATES`), as the readers take it.

    Examples
    --------
    >>> has_header(InputFile("pool/cc3m.tsv", "cc3m.tsv", "tsv"), None, None)  # doctest: +SKIP
    False
    """
    try:
        open_ = functools.partial(open_input, f.path)
        read, _, _ = _delimited_options(open_, f.format, text_column, id_column, f.path)
    except _READ_ERRORS as exc:
        raise cannot_read(f.path, exc) from None
    return read.skip_rows == 1


def _gathered(items: Iterable, rows: int, join: Callable[[list], pa.Table]) -> Iterator[pa.Table]:
    """``items`` (record batches or tables, read as they come) joined by ``join`` into
    tables of about ``rows`` rows, the last one smaller; at least one (``join([])``)."""
    group: list = []
    held, sent = 0, False
    for item in items:
        group.append(item)
        held += item.num_rows
        if held >= rows:
            yield join(group)
            group, held, sent = [], 0, True
    if group or not sent:
        yield join(group)


def _delimited_options(open_, fmt: str, text_column, id_column, where: str):
    """Arrow's (read, parse, convert) options for a CSV/TSV file, from its first line."""
    # A header is recognised by a first line with a field that names the text column (the
    # requested one or one of TEXT_COLUMN_CANDIDATES) or the id column; otherwise the
    # columns are f0, f1, ... (CC3M's caption<TAB>url has no header).
    with open_() as fh:
        head = fh.read(1 << 16)
    _refuse_binary(head, fmt, where)
    dialect = _python_csv(fmt)
    # (A line ends at \n, \r\n or a lone \r, as Arrow's reader ends it.)
    line = re.split(rb"\r\n|\r|\n", head, maxsplit=1)[0]
    first_line = line.decode("utf-8", "replace").lstrip("\ufeff")
    fields = next(csv.reader([first_line], **dialect), [])
    names = [c.strip() for c in fields]
    # (A text column named on the command line is the only text name a header may show:
    # --text-column f0 reads a file whose first caption is "text" as a file without one.)
    known = {text_column} if text_column else set(TEXT_COLUMN_CANDIDATES)
    known |= {id_column} if id_column else set()
    has_header = any(c in known for c in names)
    quoted = [c[1:-1] for c in names if len(c) > 2 and c[0] == c[-1] == '"']
    if (
        fmt == "tsv"
        and not has_header
        and len(quoted) == len(names)
        and any(c in known for c in quoted)
    ):
        # (R's write.table quotes so by default. Its rows' quotes would be matched as
        # part of the text: '"a dog"' holds no token "dog".)
        raise CurateError(
            f"{where}: the first line's names are in double quotes ({', '.join(names)}), but "
            "a TSV file's fields are read as written, quotes and all: write it without "
            "quotes (R: write.table(..., quote = FALSE))"
        )
    looks_like_header = len(names) >= 2 and all(_HEADER_FIELD.fullmatch(c) for c in names)
    if not has_header and text_column and not _AUTO_NAME.fullmatch(text_column):
        # (A named column the first line does not name is not found either way: say what
        # the line names where it looks like a header, rather than "columns are: f0, f1".
        # Under an fN column the line is a row, as asked, whatever it holds.)
        known_lower = {c.lower() for c in (*TEXT_COLUMN_CANDIDATES, text_column)}
        if looks_like_header and any(c.lower() in known_lower for c in names):
            raise CurateError(
                f"{where}: text column {text_column!r} not found; its first line names "
                f"{', '.join(names)} (a file without a header has columns f0, f1, ...)"
            )
    # (Two fields at least: a one-column file of captions may start with a one-word one.)
    if not has_header and text_column is None and len(names) >= 2:
        if looks_like_header:
            raise CurateError(
                f"{where}: the first line ({', '.join(names)}) looks like a header but names "
                f"none of {', '.join(TEXT_COLUMN_CANDIDATES)}: name the text column with "
                f"{option('--text-column')} ({option('--text-column')} f0 if the file has no "
                "header)"
            )
        _refuse_urls_first(head, fmt, where)
    if has_header:
        read = pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=_CSV_BLOCK)
        convert = _text_convert(tuple(names))
    else:
        read = pacsv.ReadOptions(autogenerate_column_names=True, block_size=_CSV_BLOCK)
        convert = _text_convert(None)
    # Quoted captions may hold line breaks (valid CSV), which need the slower parser mode.
    parse = pacsv.ParseOptions(
        delimiter=dialect["delimiter"],
        quote_char=False if fmt == "tsv" else '"',
        newlines_in_values=fmt != "tsv",
    )
    return read, parse, convert


# The first bytes of files that are no text: (bytes, what the file holds, its suffix).
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed data", ".gz"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data", ".zst"),
    (b"\xfd7zXZ\x00", "xz-compressed data", ".xz"),
    (b"BZh", "bzip2-compressed data", ".bz2"),
    (b"PK\x03\x04", "a zip archive", ".zip"),
    (b"PAR1", "a Parquet file", ".parquet"),
)


def _refuse_binary(head: bytes, fmt: str, where: str) -> None:
    """A :class:`CurateError` when a CSV/TSV file's first bytes (``head``, decompressed as
    its name says) are those of compressed data or a Parquet file: read as text, such a
    file gave a few rows of garbage and no match, without a word."""
    for magic, what, suffix in _MAGIC:
        # (bzip2's and Parquet's are ASCII: also a NUL byte, which no caption holds.)
        if not (head.startswith(magic) and (magic[0] >= 0x80 or b"\x00" in head[:512])):
            continue
        name = posixpath.basename(where)
        if _codec(where) is not None:  # (decompressed once already)
            raise CurateError(
                f"{where}: it holds {what} once decompressed: it was compressed twice, "
                "and is read only if compressed once"
            )
        if name.lower().endswith(suffix):  # (read as text by --format)
            todo = f"leave out {option('--format')} {fmt}"
        elif suffix == ".parquet":
            todo = "name it .parquet"
        else:
            todo = f"name it with its codec's suffix: {name}{suffix}"
        raise CurateError(f"{where}: it holds {what}, not {fmt.upper()} text: {todo}")


_URL = re.compile(r"(?i)(https?|ftp|s3|gs)://\S*")


def _python_csv(fmt: str) -> dict:
    """Python's csv.reader options that split a CSV/TSV row as Arrow's reader does here
    (:func:`_delimited_options`): a TSV file's fields as written, quotes and all."""
    if fmt == "tsv":
        return {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    return {"delimiter": ",", "quotechar": '"'}


def _refuse_urls_first(head: bytes, fmt: str, where: str) -> None:
    """A :class:`CurateError` when the first column of a file without a header, which the
    run would match as its text (f0), holds URLs in every line of ``head`` (CC12M's
    ``url<TAB>caption``): the captions would be matched on their addresses, without a
    word. Naming the column (--text-column) goes past this check."""
    head = head.removeprefix(b"\xef\xbb\xbf")  # (a byte-order mark is no part of a field)
    lines = [ln for ln in re.split(rb"\r\n|\r|\n", head)[:-1] if ln.strip()][:20]
    fields = csv.reader((ln.decode("utf-8", "replace") for ln in lines), **_python_csv(fmt))
    firsts = [row[0].strip() for row in fields if len(row) >= 2]
    if firsts and len(firsts) == len(lines) and all(_URL.fullmatch(f) for f in firsts):
        raise CurateError(
            f"{where}: its first column holds URLs ({firsts[0][:60]}, ...), and a file without "
            "a header is matched on its first column: name the caption column with "
            f"{option('--text-column')} (f1 for the second; f0 matches the URLs all the same)"
        )


@functools.lru_cache(maxsize=64)
def _text_convert(names: tuple[str, ...] | None) -> pacsv.ConvertOptions:
    # Every column is text, kept byte for byte (no type guessing, and a row that is not
    # valid UTF-8 is a row like any other, as in a Parquet string column). (Made once for
    # a set of names: a header-less file's (None: f0, f1, ..., 4,096 of them) took 1-2 ms
    # a file. One object for every read, on any thread: never change it.)
    names = names or tuple(f"f{i}" for i in range(_AUTO_COLUMNS))
    return pacsv.ConvertOptions(
        column_types={c: pa.string() for c in names},
        strings_can_be_null=False,
        check_utf8=False,
    )


def _valid_utf8(table: pa.Table) -> pa.Table:
    """``table`` with the invalid UTF-8 of its strings (at any depth: in lists and structs
    too) replaced by U+FFFD.

    The CSV and JSON readers keep a row whatever its bytes (it is data, not a reason to
    fail the file), but a Parquet string column must hold UTF-8: pandas and other readers
    refuse the file otherwise. The bytes are decoded as Python's (and pandas')
    ``errors="replace"`` does, only in the chunks that need it.
    """
    for i, field in enumerate(table.schema):
        if not _holds_strings(field.type):
            continue
        chunks, changed = [], False
        for chunk in table.column(i).chunks:
            try:
                chunk.validate(full=True)
                chunks.append(chunk)
            except pa.ArrowInvalid as exc:
                try:
                    if "UTF8" not in str(exc):
                        raise exc
                    chunks.append(_utf8_fixed(chunk))
                    changed = True
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    # Not (only) a matter of UTF-8: left for the readers' own checks (a
                    # JSON list whose leading nulls Arrow dropped is read again, typed).
                    chunks.append(chunk)
        if changed:
            table = table.set_column(i, field, pa.chunked_array(chunks, field.type))
    return table


def _holds_strings(t: pa.DataType) -> bool:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _holds_strings(t.value_type)
    if pa.types.is_struct(t):
        return any(_holds_strings(t.field(k).type) for k in range(t.num_fields))
    return False


def _utf8_fixed(array: pa.Array) -> pa.Array:
    """``array`` (strings, or lists or structs of them) with valid UTF-8."""
    t = array.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        raw = array.view(pa.large_binary() if pa.types.is_large_string(t) else pa.binary())
        return pa.array([None if b is None else b.decode("utf-8", "replace")
                         for b in raw.to_pylist()], t)  # fmt: skip
    mask = array.is_null() if array.null_count else None
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        cls = pa.LargeListArray if pa.types.is_large_list(t) else pa.ListArray
        values = _utf8_fixed(array.values) if _holds_strings(t.value_type) else array.values
        return cls.from_arrays(array.offsets, values, type=t, mask=mask)
    if pa.types.is_struct(t):
        children = [
            _utf8_fixed(array.field(k)) if _holds_strings(t.field(k).type) else array.field(k)
            for k in range(t.num_fields)
        ]
        return pa.StructArray.from_arrays(children, fields=list(t), mask=mask)
    return array


def text_column(
    schema: pa.Schema, requested: str | None, where: str, named_by: str | None = None
) -> str:
    """The text column: the requested one, or the first of TEXT, text, caption, alt_text;
    for header-less CSV/TSV the first column (f0). ``named_by`` is how the caller names a
    column, for the error (by default the run's option: ``--text-column``/``text_column``)."""
    names = schema.names
    if requested is not None:
        if requested not in names:
            raise CurateError(
                f"{where}: text column {requested!r} not found; columns are: {', '.join(names)}"
            )
        return requested
    for c in TEXT_COLUMN_CANDIDATES:
        if c in names:
            return c
    if names and names[0] == "f0":
        return "f0"
    raise CurateError(
        f"{where}: no text column (looked for {', '.join(TEXT_COLUMN_CANDIDATES)}); columns "
        f"are: {', '.join(names)}; name one with {named_by or option('--text-column')}"
    )


def check_text_type(schema: pa.Schema, column: str, where: str) -> None:
    t = schema.field(column).type
    if pa.types.is_dictionary(t):  # (a pandas Categorical, for one)
        t = t.value_type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
        if pa.types.is_null(t):
            return
        raise CurateError(f"{where}: text column {column!r} is {t}, not strings")


# --------------------------------------------------------------------------- outputs


def temporary_name(path: str) -> str:
    # Hidden (a leading "."), so that a reader of the folder (pyarrow, pandas, Dask, a later
    # run's scan) skips the file a killed run may leave behind; a resume removes it.
    folder, slash, name = path.rpartition("/")
    return f"{folder}{slash}.{name}.tmp-{uuid.uuid4().hex}"


# Files of at least this many rows are decoded on Arrow's thread pool (a column a thread).
_THREADED_READ_ROWS = 1 << 16


def read_parquet_columns(
    path: str | os.PathLike,
    needed: Sequence[str],
    optional: Sequence[str] = (),
    fs: fsspec.AbstractFileSystem | None = None,
) -> pa.Table:
    """The ``needed`` columns of a Parquet file (local, or on the file system ``fs``), and
    those of ``optional`` it has.

    One open and one footer parse, and Arrow's thread pool only for files of 65k rows or
    more: the parts of a pool of many small files are a few KB each, where
    ``pq.read_schema`` + ``pq.read_table`` (a dataset, threads) took 0.8-1.1 ms a file and
    this 0.2-0.3 ms (2,000 parts of 100 rows, docs/benchmarks.md).

    Raises
    ------
    CurateError
        An unreadable file, or a needed column missing.

    Examples
    --------
    >>> table = read_parquet_columns("out/entry_counts.parquet", ["count"])  # doctest: +SKIP
    """
    try:
        source = fs.open(path, "rb") if fs is not None else contextlib.nullcontext(path)
        with source as fh, pq.ParquetFile(fh) as pf:
            names = pf.schema_arrow.names
            missing = [c for c in needed if c not in names]
            if missing:
                raise CurateError(f"{path}: missing column(s) {', '.join(missing)}")
            columns = [*needed, *(c for c in optional if c in names and c not in needed)]
            threads = pf.metadata.num_rows >= _THREADED_READ_ROWS
            return pf.read(columns=columns, use_threads=threads)
    except (pa.ArrowInvalid, OSError) as exc:
        raise cannot_read(path, exc) from None


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    ``path`` is a local file (the report's pages, a built metadata; see
    :func:`atomic_write_bytes` for an fsspec file system). The bytes go to a temporary file
    in the same folder (same file system, so the rename is atomic), are flushed to disk,
    and the file is renamed over ``path``.

    Examples
    --------
    >>> write_atomic("metadata.json", b"[]")  # doctest: +SKIP
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "xb") rather than tempfile.mkstemp: the file gets the umask's permissions
    # (mkstemp's are 0600), as a file written in place would.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _raise_naming(exc, str(target))
        raise


def to_disk(fs: fsspec.AbstractFileSystem, fh) -> None:
    """Flush the open file ``fh`` to the disk when ``fs`` is the local file system.

    Done before a temporary file is renamed into place: once the rename itself is on disk
    (:func:`sync_folder`), a crash of the machine leaves the whole file under its name, not
    an empty one (file systems may write a file's blocks after its rename). Object stores
    (``s3://`` and the like) make an object visible whole or not at all: nothing to do.
    """
    if is_local(fs):
        fh.flush()
        _fsync(fh.fileno())


def sync_folder(fs: fsspec.AbstractFileSystem, folder: str) -> None:
    """Put the names in the local folder ``folder`` (the renames into it) on the disk.

    A run calls it before it writes a mark of completion (a ``_SUCCESS``, ``report.json``)
    and after: a mark that survives a crash of the machine then never lists a part that
    did not. Does nothing on other file systems.

    Examples
    --------
    >>> sync_folder(fsspec.filesystem("file"), "out/matched")  # doctest: +SKIP
    """
    if not is_local(fs) or os.name == "nt":  # (Windows opens no folder as a file)
        return
    try:
        fd = os.open(fs._strip_protocol(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:
        return  # (no folder, no names to keep)
    except OSError as exc:
        if exc.errno in _NO_SYNC:
            return
        raise
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _fsync(fd: int) -> None:
    """``os.fsync(fd)``, where the file system syncs such a file or folder (:data:`_NO_SYNC`)."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_SYNC:
            raise


# A file system's word that it syncs no such file or folder (some network and FUSE file
# systems refuse a folder's fsync; a folder may be unreadable to its writer): nothing to
# do there, rather than a run that fails at its end. (An I/O error still stops the run.)
_NO_SYNC = frozenset(
    {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES, errno.EPERM}
)


def atomic_write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name and a rename (on a local disk,
    the bytes are on the disk before the rename: :func:`to_disk`)."""
    tmp = temporary_name(path)
    try:
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
            to_disk(fs, fh)
        fs.mv(tmp, path)
    except BaseException as exc:  # (a full disk, Ctrl-C: no temporary file left behind)
        with contextlib.suppress(OSError):
            if fs.exists(tmp):
                fs.rm(tmp)
        _raise_naming(exc, path)
        raise


def _raise_naming(exc: BaseException, path: str) -> None:
    """Raise ``exc`` again naming ``path`` where it is a full disk's or quota's error that
    names no file (a write's, through fsspec or Arrow); return otherwise."""
    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if full and not exc.filename:
        raise OSError(exc.errno, exc.strerror or str(exc), path) from exc


def json_bytes(obj) -> bytes:
    """``obj`` as the indented UTF-8 JSON of gpu-curate's manifests and stats."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        # A file name that is not UTF-8 (its bytes held as surrogates): escaped as \udcXX,
        # which json.load turns back into the same name.
        return json.dumps(obj, indent=2).encode() + b"\n"


def atomic_write_json(fs, path: str, obj) -> None:
    atomic_write_bytes(fs, path, json_bytes(obj))


# Columns whose values are (nearly) unique: a dictionary would only be built to be dropped.
_NO_DICTIONARY = frozenset({"uid", "entry_ids", "entry_id", "count"})


def _is_text(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def atomic_write_parquet(fs, path: str, table: pa.Table, compression: str = "zstd") -> None:
    """Write ``table`` as Parquet through a temporary name and a rename
    (:func:`atomic_parquet_writer` with one table)."""
    with atomic_parquet_writer(fs, path, compression) as write:
        write(table)


@contextlib.contextmanager
def atomic_parquet_writer(
    fs, path: str, compression: str = "zstd"
) -> Iterator[Callable[[pa.Table], None]]:
    """Write tables one after another into one Parquet file, which appears at ``path`` (a
    rename) only once all are written; on an error the temporary file is removed.

    Each table is a row group (or more, past 1M rows) and takes the first one's schema.
    On a local disk the file is flushed to the disk before its rename (:func:`to_disk`).
    Dictionary encoding is kept for the input's columns (repeated values compress well)
    and skipped for gpu-curate's near-unique ones; min/max statistics are written for the
    non-text columns only (those of alt-texts and URLs cost time and help no reader).
    ``compression`` is one of :data:`COMPRESSIONS`.

    Examples
    --------
    >>> with atomic_parquet_writer(fs, "out/part-00000.parquet") as write:  # doctest: +SKIP
    ...     for table in tables:
    ...         write(table)
    """
    tmp = temporary_name(path)
    fh = fs.open(tmp, "wb")
    writer: pq.ParquetWriter | None = None

    def write(table: pa.Table) -> None:
        nonlocal writer
        if writer is None:
            names = table.schema.names
            writer = pq.ParquetWriter(
                fh,
                table.schema,
                compression=compression,
                use_dictionary=[c for c in names if c not in _NO_DICTIONARY] or False,
                write_statistics=[f.name for f in table.schema if not _is_text(f.type)] or False,
            )
        elif not table.schema.equals(writer.schema):
            table = table.cast(writer.schema)
        writer.write_table(table)

    try:
        yield write
        if writer is None:
            raise ValueError(f"no table was written to {path}")
        writer.close()
        to_disk(fs, fh)
        fh.close()
        fs.mv(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            if writer is not None:
                writer.close()
            fh.close()
        with contextlib.suppress(OSError):
            if fs.exists(tmp):
                fs.rm(tmp)
        _raise_naming(exc, path)
        raise
