"""Metadata: MetaCLIP's list of entries, validated, fingerprinted and compiled for the kernels."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, KeysView, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import MetadataError, counted

_SHOWN = 5  # how many offending entries an error message lists


def _entries_are(n: int) -> str:
    return f"{counted(n, 'metadata entry', 'metadata entries')} {'is' if n == 1 else 'are'}"


def _ids(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:_SHOWN])
    return shown + (f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else "")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_entries(entries: object, source: str = "metadata") -> tuple[str, ...]:
    """Check MetaCLIP metadata (a list of distinct, non-blank strings); return it as a tuple.

    Raises :class:`MetadataError` naming the offending entries and their ids.

    Examples
    --------
    >>> validate_entries(["dog", "new york"])
    ('dog', 'new york')
    """
    if isinstance(entries, str | bytes) or not isinstance(entries, Sequence | Iterable):
        raise MetadataError(
            f"{source}: metadata must be a JSON list of strings, got {type(entries).__name__}"
        )
    if isinstance(entries, dict):
        raise MetadataError(f"{source}: metadata must be a JSON list of strings, got an object")
    if isinstance(entries, AbstractSet) and not isinstance(entries, KeysView):
        # (Its order, so the entry ids, changes from one Python process to the next: with
        # them the counts and the curated set. A dict's keys keep their order.)
        raise MetadataError(
            f"{source}: metadata must be an ordered list of strings (an entry's id is its "
            f"position), got a {type(entries).__name__}: give sorted(entries) or the list"
        )
    entries = tuple(entries)
    if not entries:
        # (Every text would go unmatched: a run would look done and keep nothing.)
        raise MetadataError(f"{source}: the metadata holds no entries")
    # The checks run as C loops (map, set) over the ~500k entries of a real metadata; the
    # offending ids are listed only when one fails.
    bad = []
    if set(map(type, entries)) - {str}:  # (str subclasses, like NumPy's, are strings)
        bad = [i for i, e in enumerate(entries) if not isinstance(e, str)]
    if bad:
        kinds = sorted({type(entries[i]).__name__ for i in bad})
        raise MetadataError(
            f"{source}: {_entries_are(len(bad))} not strings ({', '.join(kinds)}) "
            f"at ids {_ids(bad)}"
        )
    try:
        "\n".join(entries).encode("utf-8")  # one C loop over all entries
    except UnicodeEncodeError:
        # A lone surrogate (JSON's "\ud800" reads as one): no UTF-8 text holds it.
        bad = [i for i, e in enumerate(entries) if not _is_utf8(e)]
        raise MetadataError(
            f"{source}: {_entries_are(len(bad))} not valid Unicode text (a lone "
            f"surrogate such as \\ud800) at ids {_ids(bad)}"
        ) from None
    distinct = set(entries)
    # (A blank entry is empty or all whitespace: str.strip and str.isspace agree on what
    # whitespace is.)
    if "" in distinct or any(map(str.isspace, entries)):
        blank = [i for i, e in enumerate(entries) if not e.strip()]
        raise MetadataError(
            f"{source}: {_entries_are(len(blank))} empty or whitespace-only at ids {_ids(blank)}"
        )
    if len(distinct) != len(entries):
        first: dict[str, int] = {}
        dups: list[str] = []
        for i, e in enumerate(entries):
            j = first.setdefault(e, i)
            if j != i:
                dups.append(f"{e!r} at ids {j} and {i}")
        dup = counted(len(dups), "duplicate metadata entry", "duplicate metadata entries")
        raise MetadataError(f"{source}: {dup}: " + "; ".join(dups[:_SHOWN]))
    if len(entries) >= 2**31 - 1:
        raise MetadataError(f"{source}: too many entries ({len(entries)}) for int32 entry ids")
    return entries


def _metadata_file(path: str | os.PathLike) -> tuple[str, str, Callable[[], bytes]]:
    """(the path as shown, its lowercased suffix, a reader of its bytes) of a metadata
    file on a local disk or at an fsspec URL (``s3://bucket/metadata.json``), as the
    inputs may be; a :class:`MetadataError` for one that is missing or a folder."""
    text = os.fspath(path)
    if "://" in text:  # (a URL, shown as given: Path would fold its '//')
        import fsspec  # (here: `import gpu_curate` stays quick)

        fs, key = fsspec.core.url_to_fs(text)
        shown, suffix = text, PurePosixPath(key).suffix.lower()
        exists, is_dir, read = fs.exists(key), fs.isdir(key), lambda: fs.cat_file(key)
    else:
        p = Path(text).expanduser()  # (inputs and --out take "~", as fsspec reads them)
        shown, suffix = str(p), p.suffix.lower()
        exists, is_dir, read = p.exists(), p.is_dir(), p.read_bytes
    if not exists:
        raise MetadataError(f"metadata file not found: {shown}")
    if is_dir:
        raise MetadataError(f"metadata path is a folder, not a file: {shown}")
    return shown, suffix, read


def _absolute(path: str | os.PathLike) -> str:
    """A local ``path`` made absolute (a URL as it is): where the file is, whatever the
    working folder later. (Joined, not normalised: ``link/..`` is where the link leads.)"""
    text = os.fspath(path)
    return text if "://" in text else os.path.join(os.getcwd(), os.path.expanduser(text))


def sources_path_for(out: str | os.PathLike) -> Path:
    """The sidecar of ``out``: ``<out stem>.sources.json`` in the same folder.

    Examples
    --------
    >>> sources_path_for("build/metadata.json").as_posix()
    'build/metadata.sources.json'
    """
    p = Path(out)
    return p.with_name(f"{p.stem}.sources.json")


class Metadata:
    """MetaCLIP metadata: a list of entries; the entry id is the list index.

    Parameters
    ----------
    entries
        Distinct, non-blank strings (validated; see :func:`validate_entries`).
    source
        Where the entries come from, used in error messages.
    path
        The file they were read from (:meth:`from_file` sets it): a run never reads it as
        a file of the pool that holds it.

    Examples
    --------
    >>> md = Metadata(["dog", "new york", "new york city"])
    >>> len(md), md[1]
    (3, 'new york')
    >>> len(md.fingerprint)
    64
    """

    def __init__(
        self, entries: Iterable[str], source: str = "metadata", path: str | None = None
    ) -> None:
        self.entries: tuple[str, ...] = validate_entries(entries, source)
        self.source = source
        self.path = path

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Metadata:
        """Load a JSON list of strings (MetaCLIP's ``metadata.json``) or a ``.txt`` file with
        one entry per line.

        Examples
        --------
        >>> Metadata.from_file("metadata.json")  # doctest: +SKIP
        """
        p, suffix, read = _metadata_file(path)
        try:
            # (utf-8-sig: a byte-order mark, as Windows editors write, is not part of the
            # first entry. Line ends read as Path.read_text reads them: \r\n and \r are \n.)
            text = io.TextIOWrapper(io.BytesIO(read()), encoding="utf-8-sig").read()
        except UnicodeDecodeError as exc:
            raise MetadataError(
                f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start}); metadata is a JSON "
                "list of strings or a .txt file of one entry per line"
            ) from None
        if suffix == ".txt":
            # One entry per line; only the line break is removed, spaces are kept (exact).
            lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
            # (Blank lines at the end are no entries; one between entries is refused, since
            # the entry ids after it would no longer be their line numbers less one.)
            while lines and not lines[-1].strip():
                lines.pop()
            entries = lines
            blank = [i + 1 for i, e in enumerate(entries) if not e.strip()]
            if blank:
                raise MetadataError(f"{p}: empty or whitespace-only entries on lines {_ids(blank)}")
            return cls(entries, source=str(p), path=_absolute(path))
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(
                f"{p}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            ) from None
        except RecursionError:
            raise MetadataError(
                f"{p}: nested too deeply to read; metadata is a JSON list of strings"
            ) from None
        if not isinstance(entries, list):
            raise MetadataError(
                f"{p}: metadata must be a JSON list of strings, got a JSON "
                f"{'object' if isinstance(entries, dict) else type(entries).__name__}"
            )
        return cls(entries, source=str(p), path=_absolute(path))

    @classmethod
    def coerce(cls, metadata: Metadata | Iterable[str] | str | os.PathLike) -> Metadata:
        """A :class:`Metadata` from itself, from a list of strings, or from a file's path
        (:meth:`from_file`)."""
        if isinstance(metadata, Metadata):
            return metadata
        if isinstance(metadata, str | os.PathLike):
            return cls.from_file(metadata)
        return cls(metadata, source="metadata list")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> str:
        return self.entries[i]

    def __repr__(self) -> str:
        return (
            f"Metadata({len(self)} entries, sha256={self.fingerprint[:12]}, source={self.source!r})"
        )

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the entries (as a JSON list): names the metadata in reports and caches."""
        blob = json.dumps(self.entries, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @property
    def tables(self):
        """The compiled lookup tables (:class:`gpu_curate.kernels.tables.MatchTables`).

        Compiled once per process and metadata (cached by fingerprint), so Dask workers
        that receive the same metadata compile it once.
        """
        return compiled_tables(self)

    def __getstate__(self):
        # Ship entries only; tables are rebuilt (once) where they are needed. The
        # fingerprint, once known, goes along: it keys the tables' cache, and hashing
        # 375k entries again costs ~50 ms wherever the metadata is unpickled.
        state = {"entries": self.entries, "source": self.source, "path": self.path}
        if "fingerprint" in self.__dict__:
            state["fingerprint"] = self.__dict__["fingerprint"]
        return state

    def __setstate__(self, state):
        self.entries = state["entries"]
        self.source = state["source"]
        self.path = state.get("path")
        if "fingerprint" in state:
            self.__dict__["fingerprint"] = state["fingerprint"]


# What the API takes for metadata: a Metadata, its entries, or a metadata file's path.
MetadataLike = Metadata | Sequence[str] | str | os.PathLike

_TABLES: OrderedDict[str, object] = OrderedDict()
_TABLES_KEPT = 4
_TABLES_LOCK = threading.Lock()

CACHE_ENV = "GPU_CURATE_CACHE_DIR"


def cache_dir() -> Path | None:
    """Where compiled tables are kept between runs, or None when caching is off.

    ``$GPU_CURATE_CACHE_DIR`` (``off`` or empty disables it), else
    ``$XDG_CACHE_HOME/gpu-curate``, else ``~/.cache/gpu-curate``.

    Examples
    --------
    >>> cache_dir()  # doctest: +SKIP
    PosixPath('/home/me/.cache/gpu-curate')
    """
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpu-curate"


@functools.cache
def _layout_version() -> str:
    # The tables' layout and hashing live in these two files: a change to either makes
    # every cached table stale.
    from .kernels import rowlogic, tables

    digest = hashlib.sha256()
    for mod in (rowlogic, tables):
        digest.update(Path(mod.__file__).read_bytes())
    return digest.hexdigest()[:16]


def _cache_file(metadata: Metadata) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    return folder / f"tables-{metadata.fingerprint[:32]}-{_layout_version()}.npz"


def _load_cached(path: Path | None):
    if path is None or not path.is_file():
        return None
    from .kernels.tables import MatchTables

    try:
        with np.load(path, allow_pickle=False) as z:
            tables = MatchTables.from_arrays({k: z[k] for k in z.files})
    except Exception:  # noqa: BLE001 - any unreadable, truncated or foreign file
        return None  # is only a cache miss: rebuild (and overwrite) it
    with contextlib.suppress(OSError):
        os.utime(path)  # its modification time says when it was last used (_prune_cache)
    return tables


def _store_cached(path: Path | None, tables) -> None:
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, **tables.to_arrays())
        os.replace(tmp, path)  # readers see a whole file or none
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return
    _prune_cache(path)


# Table files kept in the cache folder (tens of MB each for a full-size metadata).
CACHE_KEPT = 8


def _prune_cache(new: Path) -> None:
    """Remove the cached tables no run will read again, and keep the folder bounded.

    Tables of the same metadata under another layout version were written by another
    version of gpu-curate; of the rest, the :data:`CACHE_KEPT` most recently used stay.
    """
    metadata_key = new.name.split("-")[1]
    files = []
    for f in new.parent.glob("tables-*-*.npz"):
        with contextlib.suppress(OSError):
            if f != new and f.name.split("-")[1] == metadata_key:
                f.unlink()
            else:
                files.append((f.stat().st_mtime, f))
    files.sort(reverse=True)
    for _, f in files[CACHE_KEPT:]:
        if f != new:
            with contextlib.suppress(OSError):
                f.unlink()


def compiled_tables(metadata: Metadata):
    """The lookup tables of ``metadata``: compiled once per process, and kept on disk
    between runs (see :func:`cache_dir`), both keyed by the metadata's fingerprint."""
    key = metadata.fingerprint
    with _TABLES_LOCK:
        if key in _TABLES:
            _TABLES.move_to_end(key)
            return _TABLES[key]
        path = _cache_file(metadata)
        tables = _load_cached(path)
        if tables is None or tables.n_entries != len(metadata):
            from .kernels.tables import build_tables

            tables = build_tables(list(metadata.entries))
            _store_cached(path, tables)
        _TABLES[key] = tables
        while len(_TABLES) > _TABLES_KEPT:
            _TABLES.popitem(last=False)
        return tables
