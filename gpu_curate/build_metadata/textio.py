"""Reading line-oriented source files (plain or gzip) in large blocks of whole lines.

Every source reader goes through :func:`iter_line_blocks`, so all of them report problems
the same way: ``PATH:LINE: what is wrong`` as a :class:`~gpu_curate.errors.CurateError`.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import CurateError

#: Bytes read per block. Big enough that per-block overhead vanishes, small enough that a
#: block of decoded Python strings (about 3x its size) stays far below a machine's memory.
BLOCK_BYTES = 1 << 24

_BOM = b"\xef\xbb\xbf"


def source_error(path: str | os.PathLike, line: int | None, message: str) -> CurateError:
    """Build the one-line error every source reader raises: ``PATH:LINE: message``.

    Examples
    --------
    >>> str(source_error("words.tsv", 3, "expected 'word<TAB>count'"))
    "words.tsv:3: expected 'word<TAB>count'"
    """
    where = f"{path}:{line}" if line is not None else f"{path}"
    return CurateError(f"{where}: {message}")


def shorten(text: str, limit: int = 80) -> str:
    """``repr`` of ``text``, cut to ``limit`` characters, for error messages."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


@contextmanager
def open_binary(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``path`` for binary reading, transparently un-gzipping ``*.gz``.

    Raises :class:`CurateError` naming the file when it is missing or unreadable.
    """
    p = Path(path)
    if not p.is_file():
        raise source_error(path, None, "no such file" if not p.exists() else "not a file")
    opener = gzip.open if p.suffix.lower() == ".gz" else open
    try:
        with opener(p, "rb") as handle:
            yield handle
    except (gzip.BadGzipFile, EOFError) as exc:
        # A truncated or corrupt .gz only shows up while reading, not at open().
        raise source_error(path, None, f"cannot read gzip data ({exc})") from exc


def _decode(block: bytes, path: str | os.PathLike, first_line: int) -> str:
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + block.count(b"\n", 0, exc.start)
        bad = block[exc.start : exc.start + 1].hex()
        raise source_error(path, line, f"not valid UTF-8 (byte 0x{bad})") from exc


def iter_line_blocks(
    path: str | os.PathLike, block_bytes: int = BLOCK_BYTES
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(first_line_number, lines)`` blocks of a UTF-8 text file (``.gz`` allowed).

    Lines are split on ``"\\n"`` only (a ``"\\r"`` before it stays on the line: callers that
    care strip it), so line numbers agree with ``sed -n Np``. A final newline does not make
    an extra empty line. Line numbers start at 1.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.txt"
    >>> _ = p.write_text("a\\nb\\n")
    >>> list(iter_line_blocks(p))
    [(1, ['a', 'b'])]
    """
    next_line = 1
    with open_binary(path) as handle:
        # A UTF-8 byte-order mark (Windows tools write one) is no part of the first line.
        carry = handle.read(len(_BOM))
        if carry == _BOM:
            carry = b""
        while True:
            data = handle.read(block_bytes)
            if not data:
                break
            data = carry + data
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            block, carry = data[:cut], data[cut + 1 :]
            lines = _decode(block, path, next_line).split("\n")
            yield next_line, lines
            next_line += len(lines)
    if carry:
        yield next_line, [_decode(carry, path, next_line)]
