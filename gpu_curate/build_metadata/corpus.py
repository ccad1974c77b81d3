"""Reading a text corpus (for n-gram counting) as dataframe string Series, chunk by chunk.

A corpus is any mix of

* plain text files, one text per line (``.gz`` allowed), read in blocks of whole lines;
  of a ``.tsv`` line only the first field (the text before the first tab) is the text, as
  the pool reader takes column ``f0`` of a header-less TSV such as CC3M's;
* Parquet files, of which one string column is read (``--corpus-column``; by default the
  first of ``TEXT``, ``text``, ``caption``, ``alt_text`` that the file has);
* folders, standing for the files with those suffixes below them (sorted, recursive).

Each chunk becomes a Series of the backend's dataframe module (pandas or cuDF) so that the
counting code after it is the same for both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

from ..io import is_hidden, reached_twice
from .textio import BLOCK_BYTES, iter_line_blocks, source_error

#: Column names tried, in this order, when a Parquet corpus file names no column.
DEFAULT_TEXT_COLUMNS = ("TEXT", "text", "caption", "alt_text")

PARQUET_SUFFIXES = (".parquet", ".pq")
TEXT_SUFFIXES = (".txt", ".txt.gz", ".text", ".tsv", ".tsv.gz")


def is_parquet(path: str | os.PathLike) -> bool:
    """True for a ``.parquet`` / ``.pq`` file name."""
    return str(path).lower().endswith(PARQUET_SUFFIXES)


def expand_corpus_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Turn files and folders into the list of corpus files, in a stable order.

    A folder contributes its files ending in one of :data:`PARQUET_SUFFIXES` or
    :data:`TEXT_SUFFIXES` (found recursively, sorted by path; symbolic links to folders
    are not followed), skipping names that start with ``.`` or ``_`` at any level below
    it (``.ipynb_checkpoints/``, ``_SUCCESS``), as the pool reader skips them; a file is
    taken as it is, whatever its name. A file reached twice would be counted twice: that
    is an error.

    Examples
    --------
    >>> expand_corpus_paths(["shard-0.txt"])  # doctest: +SKIP
    [PosixPath('shard-0.txt')]
    """
    files: list[Path] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            found = sorted(
                q
                for q in p.rglob("*")
                if q.is_file()
                and q.name.lower().endswith(PARQUET_SUFFIXES + TEXT_SUFFIXES)
                and not is_hidden(q.relative_to(p).as_posix())
            )
            if not found:
                raise source_error(path, None, "corpus folder holds no .txt/.parquet files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise source_error(path, None, "no such corpus file or folder")
    if (twice := reached_twice(files)) is not None:
        _, first, again = twice
        raise source_error(files[again], None, f"corpus file given twice (also as {files[first]})")
    return files


def parquet_text_column(path: str | os.PathLike, requested: str | None = None) -> str:
    """The text column to read from a Parquet corpus file.

    Examples
    --------
    >>> parquet_text_column("laion_alt_text_10k.parquet")  # doctest: +SKIP
    'TEXT'
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise source_error(path, None, f"cannot read Parquet file ({exc})") from exc
    names = list(schema.names)
    if requested is not None:
        if requested not in names:
            raise source_error(path, None, f"no column {requested!r} (columns: {', '.join(names)})")
        column = requested
    else:
        column = next((c for c in DEFAULT_TEXT_COLUMNS if c in names), None)
        if column is None:
            raise source_error(
                path,
                None,
                f"none of the text columns {', '.join(DEFAULT_TEXT_COLUMNS)} is present "
                f"(columns: {', '.join(names)}); name one with --corpus-column",
            )
    field_type = schema.field(column).type
    if not (pa.types.is_string(field_type) or pa.types.is_large_string(field_type)):
        raise source_error(path, None, f"column {column!r} holds {field_type}, not strings")
    return column


def iter_corpus_texts(
    paths: Sequence[str | os.PathLike],
    df: ModuleType,
    column: str | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator:
    """Yield the corpus texts as Series of the dataframe module ``df``, chunk by chunk.

    Parameters
    ----------
    paths
        Corpus files and folders (see :func:`expand_corpus_paths`).
    df
        The dataframe module: ``pandas`` or ``cudf`` (``resolve(name).df``).
    column
        Text column of Parquet files; default: the first of :data:`DEFAULT_TEXT_COLUMNS`.
    block_bytes
        Size of the blocks plain text files are read in. A Parquet file is one chunk.

    Yields
    ------
    Series
        Non-null texts of one chunk, with a fresh 0..n-1 index.

    Examples
    --------
    >>> import pandas
    >>> chunks = iter_corpus_texts(["captions.txt"], pandas)  # doctest: +SKIP
    """
    for path in expand_corpus_paths(paths):
        if is_parquet(path):
            name = parquet_text_column(path, column)
            try:
                texts = df.read_parquet(path, columns=[name])[name]
            except Exception as exc:  # the reader's own errors differ between backends
                raise source_error(path, None, f"cannot read Parquet file ({exc})") from exc
            texts = texts.dropna().reset_index(drop=True)
            if len(texts):
                yield texts
        else:
            tsv = path.name.lower().endswith((".tsv", ".tsv.gz"))
            for _, lines in iter_line_blocks(path, block_bytes):
                yield df.Series([line.split("\t", 1)[0] for line in lines] if tsv else lines)
