"""Cut a big CSV, TSV or JSON Lines file into byte ranges of whole rows; count their rows.

A TSV file is one row a line (its fields hold no line breaks: Arrow reads it without
quoting), and so is a JSON Lines file; a CSV row ends at a line break outside quotes. So
a range that begins and ends at row ends is read by itself exactly as those rows of the
whole file are (a JSON Lines range with the column types found over the whole file).
CC3M and CC12M come as one TSV file each (CC12M: 2.6 GB, 12M rows): cut into ranges, it
is matched by every worker at once rather than by one. A row's uid needs its row number
in the file, so the rows of each range are counted before the run is planned (in
parallel, on the cluster): for a TSV file, a pass over the bytes at about 800 MB/s a
core, against ~170 MB/s a core for reading and matching them; for a CSV file, Arrow's
parser's states replayed byte by byte (:func:`count_csv_rows`); for a JSON Lines file,
the pass that also finds its column types (:func:`gpu_curate.io.json_range_types`).

TSV rows are counted as Arrow's CSV reader makes them: a line ends at ``\\n``, ``\\r\\n`` or
``\\r``, an empty line is no row, and the BOM that begins the file is dropped (Arrow drops
one that begins any bytes it reads, so no range after the first begins with one). The
match task checks that it reads as many rows from its range as were counted
(:func:`gpu_curate.io.read_piece_batches`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import fsspec
import numba
import numpy as np

from .errors import cannot_read

# Rows a range of a CSV, TSV or JSON Lines file is cut to hold, about (--partition-rows
# sets it for a run): the size of a Parquet part (gpu_curate.io.PART_ROWS).
RANGE_ROWS = 1_000_000
# The head of the file that gives its bytes per row.
_SAMPLE = 1 << 20
# Bytes read at a time when looking for a line end or counting lines.
_WINDOW = 1 << 16
_CHUNK = 1 << 24
# A UTF-8 byte-order mark: Arrow's readers drop one that begins the bytes they read.
UTF8_BOM = b"\xef\xbb\xbf"


class _ByteRange(io.RawIOBase):
    """The bytes [start, end) of an open file, as a file of their own."""

    def __init__(self, fh, start: int, end: int):
        super().__init__()
        fh.seek(start)
        self._fh, self._left = fh, end - start

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        # (Overridden so that Arrow's block-sized reads return the file's bytes as read,
        # with no copy into a buffer.)
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._fh.read(size) if size > 0 else b""
        self._left -= len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@contextlib.contextmanager
def open_range(path: str, start: int, end: int) -> Iterator[io.RawIOBase]:
    """The bytes [start, end) of an uncompressed file, opened for reading.

    Examples
    --------
    >>> with open_range("pool/cc12m.tsv", 0, 1 << 20) as fh:  # doctest: +SKIP
    ...     head = fh.read()
    """
    with fsspec.open(path, "rb") as fh, _ByteRange(fh, start, end) as part:
        yield part


def line_cuts(path: str, size: int | None, rows: int) -> list[int]:
    """Byte offsets that cut a file into ranges of about ``rows`` lines each, right after
    a ``\\n``: ``[0, ..., size]``, just ``[0, size]`` where the file is one range.

    The bytes per line are taken from the file's first MB; the cuts are found by reading
    a few kB at each, so this costs a few reads whatever the file's size.

    Examples
    --------
    >>> line_cuts("pool/cc12m.tsv", None, 1_000_000)  # doctest: +SKIP
    [0, 218133504, 436266883, ..., 2609623345]
    """
    if size is not None and size < 3 * rows:
        # (Too small for two ranges of 2-byte lines, the shortest rows: not opened, so a
        # pool of many small files costs no read each.)
        return [0, size]
    try:
        with fsspec.open(path, "rb") as fh:
            size = fh.size if size is None else size
            head = fh.read(_SAMPLE)
            lines = count_lines(head)
            if not lines:
                return [0, size]
            ranges = round(size / (len(head) / lines * rows))
            cuts = [0]
            for i in range(1, ranges):
                at = i * size // ranges
                if at < cuts[-1]:
                    continue  # (a line longer than a range: the last cut is past this one)
                cut = _next_line(fh, at)
                if cut >= size:
                    break  # (no line feed after this one: nor after the next ones)
                if cuts[-1] < cut:
                    cuts.append(cut)
    except OSError as exc:
        raise cannot_read(path, exc) from None
    return cuts + [size]


def _next_line(fh, at: int) -> int:
    """The offset just after the first ``\\n`` at or after ``at`` that no BOM follows (the
    end of the file where there is none): Arrow drops a BOM that begins the bytes it
    reads, so a range that began with one would not read its line as the whole file does."""
    fh.seek(at)
    while window := fh.read(_WINDOW):
        found = window.find(b"\n")
        if found < 0:
            at += len(window)
            continue
        at += found + 1
        fh.seek(at)
        if fh.read(len(UTF8_BOM)) != UTF8_BOM:
            return at
        fh.seek(at)
    return at


def count_lines(data: bytes, after_break: bool = True) -> int:
    """The non-empty lines that begin in ``data`` (the rows Arrow's reader makes of it): a
    line ends at ``\\n``, ``\\r\\n`` or ``\\r``. ``after_break``: whether the byte before
    ``data`` ended a line (or there is none), so that its first byte begins one.

    Examples
    --------
    >>> count_lines(b"a dog\\tx\\r\\n\\r\\na cat\\tx\\n")
    2
    """
    a = np.frombuffer(data, np.uint8)
    if not a.size:
        return 0
    brk = (a == 10) | (a == 13)
    # A line begins at each byte that is no break and follows one.
    begins = np.count_nonzero(brk[:-1] & ~brk[1:])
    return int(begins) + int(after_break and not brk[0])


def count_rows(path: str, start: int, end: int) -> int:
    """The rows in bytes [start, end) of an uncompressed TSV file, a range of
    :func:`line_cuts` (its first line included, even where it is a header).

    Examples
    --------
    >>> count_rows("pool/cc12m.tsv", 0, 218133504)  # doctest: +SKIP
    1003276
    """
    rows, after_break = 0, True
    for data in _chunks(path, start, end):
        rows += count_lines(data, after_break)
        after_break = data[-1] in b"\r\n"
    return rows


def _chunks(path: str, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of a file, :data:`_CHUNK` at a time (none empty), without the
    BOM that begins the file (Arrow drops it)."""
    try:
        with open_range(path, start, end) as fh:
            first = start == 0
            while chunk := fh.read(_CHUNK):
                if first and chunk.startswith(UTF8_BOM):
                    chunk = chunk[len(UTF8_BOM) :]
                first = False
                if chunk:
                    yield chunk
    except OSError as exc:
        raise cannot_read(path, exc) from None


# States of Arrow's CSV parser (its quoting mode, with doubled quotes and no escape
# character: gpu-curate's options) at a byte: the start of a line, of a field, inside an
# unquoted field, inside a quoted one, after a quote inside a quoted one (a second quote
# is a quote, anything else ends the quoting), after a CR (a LF there ends no new line).
LINE, FIELD, UNQUOTED, QUOTED, QUOTE, CR = range(6)
# gpu-curate's CSV delimiter and quote character (gpu_curate.io._delimited_options).
_COMMA, _QUOTE = ord(","), ord('"')


@numba.njit(nogil=True, cache=True, inline="always")
def _in_field(c: int, delimiter: int) -> tuple[int, int]:
    """(state, rows ended) after byte ``c`` read in an unquoted field."""
    if c == delimiter:
        return FIELD, 0
    if c == 10:
        return LINE, 1
    if c == 13:
        return CR, 1
    return UNQUOTED, 0


@numba.njit(nogil=True, cache=True, inline="always")
def _csv_step(c: int, state: int, delimiter: int, quote: int) -> tuple[int, int]:
    """(state, rows ended) after byte ``c`` read in ``state``."""
    if state == UNQUOTED:  # (the most bytes first)
        return _in_field(c, delimiter)
    if state == QUOTED:
        return (QUOTE if c == quote else QUOTED), 0
    if state == QUOTE:  # a doubled quote is a quote; anything else ends the quoting
        return (QUOTED, 0) if c == quote else _in_field(c, delimiter)
    if state == CR:
        if c == 10:
            return LINE, 0  # (CR LF: one line end)
        state = LINE
    if state == LINE:  # an empty line is no row
        if c == 13:
            return CR, 0
        if c == 10:
            return LINE, 0
    # The start of a field: quoting is recognised there only.
    return (QUOTED, 0) if c == quote else _in_field(c, delimiter)


@numba.njit(nogil=True, cache=True)
def _csv_rows(data, state: int, delimiter: int, quote: int) -> tuple[int, int]:
    """(rows that end in ``data``, the state after it), ``data`` read from ``state``."""
    rows = 0
    for c in data:
        state, ended = _csv_step(c, state, delimiter, quote)
        rows += ended
    return rows, state


@numba.njit(nogil=True, cache=True)
def _csv_meet(data, a: int, b: int, delimiter: int, quote: int):
    """``data`` read from two states at once until they meet (from there on, the two
    reads are one): (bytes read, rows ended in each read, their states)."""
    rows_a = rows_b = 0
    i = 0
    while i < data.size and a != b:
        a, ended_a = _csv_step(data[i], a, delimiter, quote)
        b, ended_b = _csv_step(data[i], b, delimiter, quote)
        rows_a += ended_a
        rows_b += ended_b
        i += 1
    return i, rows_a, rows_b, a, b


def count_csv_rows(path: str, start: int, end: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The rows that end in bytes [start, end) of an uncompressed CSV file and Arrow's
    parser's state at ``end``, as (rows, state) read from a row's start, and as read from
    inside a quoted field: a row whose line break is in a quoted field goes on past it, so
    a range cut after a line break may begin inside a row (:func:`csv_ranges`).

    The second read waits for the range's first quote (nothing else changes its state)
    and follows the first once they meet, usually at the end of that quoted field, so it
    costs a few bytes. The last row of the file may end unended (:data:`MID_ROW`).

    Examples
    --------
    >>> count_csv_rows("pool/captions.csv", 0, 1 << 28)  # doctest: +SKIP
    ((1210329, 0), (1210328, 0))
    """
    rows, states = [0, 0], [LINE, QUOTED]
    for chunk in _chunks(path, start, end):
        data = np.frombuffer(chunk, np.uint8)
        if states[0] != states[1] and states[1] == QUOTED:
            # Inside a quoted field only a quote changes the state: up to the chunk's first
            # quote the first read goes on alone (a range without quotes, where the two
            # reads never meet, is read once, not twice in step).
            q = chunk.find(b'"')
            q = len(chunk) if q < 0 else q
            n, state = _csv_rows(data[:q], states[0], _COMMA, _QUOTE)
            rows[0], states[0], data = rows[0] + n, int(state), data[q:]
        if states[0] != states[1] and data.size:
            i, ra, rb, sa, sb = _csv_meet(data, states[0], states[1], _COMMA, _QUOTE)
            rows, states, data = [rows[0] + ra, rows[1] + rb], [int(sa), int(sb)], data[i:]
        if states[0] == states[1]:
            n, state = _csv_rows(data, states[0], _COMMA, _QUOTE)
            rows, states = [rows[0] + n, rows[1] + n], [int(state)] * 2
    return (rows[0], states[0]), (rows[1], states[1])


# States in which the file's last row has no line break: Arrow's reader ends it there.
MID_ROW = (FIELD, UNQUOTED, QUOTED, QUOTE)


def csv_ranges(
    spans: list[tuple[int, int]], counted: list[tuple[tuple[int, int], tuple[int, int]]]
) -> list[tuple[int, int, int]]:
    """(byte_start, byte_end, rows) of a CSV file's ranges of whole rows, from ``spans``
    (from :func:`line_cuts`) and their :func:`count_csv_rows`: a range that begins inside
    a quoted field (a cut fell in a caption of several lines) is joined to the one before
    it, its rows those read from inside a quoted field.

    Examples
    --------
    >>> csv_ranges([(0, 10), (10, 20)], [((2, QUOTED), (1, LINE)), ((1, LINE), (0, LINE))])
    [(0, 20, 2)]
    """
    ranges: list[tuple[int, int, int]] = []
    state = LINE
    for (a, b), (from_row, from_quoted) in zip(spans, counted, strict=True):
        # (A cut follows a line feed: there a row begins, or a quoted field goes on.)
        rows, end = from_row if state == LINE else from_quoted
        if state == LINE:
            ranges.append((a, b, rows))
        else:
            ranges[-1] = (ranges[-1][0], b, ranges[-1][2] + rows)
        state = end
    if state in MID_ROW:
        ranges[-1] = (*ranges[-1][:2], ranges[-1][2] + 1)
    return ranges
