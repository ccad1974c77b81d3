"""How deeply JSON Lines values nest: no value deeper than :data:`MAX_DEPTH` is read.

A value nested deeper than a Parquet file can hold makes a run fail after its matching:
the parts it wrote cannot be read back (pyarrow reads Parquet schemas nested at most 100
levels: about 49 lists, each two levels). Deeper still, pyarrow's JSON reader, which
recurses once a level, crashes the process (~10,000 levels, a 20 KB line of ``[``), and
Python's stops at its recursion limit (~1,000). So both readers are held to
:data:`MAX_DEPTH`, and a deeper line is an error naming it:

- Python's reader checks each line before parsing it (:func:`line_too_deep`);
- pyarrow's reader gets no line longer than :data:`LONG_LINE` bytes that nests deeper
  (:func:`long_line_too_deep`): a shorter one cannot nest deep enough to harm it, and its
  depth shows in the column types it infers (:func:`type_depth`).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

# JSON levels, the row's object the first: 47 lists in it are 94 Parquet levels, and a
# part holding them reads back (far beyond any real record).
MAX_DEPTH = 48
# Lines of at most this many bytes (so at most as many levels) pyarrow's reader parses
# safely (it parsed 5,000 levels, and crashed at 10,000, on an 8 MiB thread stack).
LONG_LINE = 2048

# A JSON string (maybe cut short by the line's end).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?')


def line_too_deep(line: bytes) -> bool:
    """Whether the JSON on ``line`` nests more than :data:`MAX_DEPTH` levels deep.

    Two ``bytes.count`` calls where the line holds at most :data:`MAX_DEPTH` brackets that
    open; else its strings are dropped and its brackets counted (vectorized).

    Examples
    --------
    >>> line_too_deep(b"[" * 60 + b"]" * 60), line_too_deep(b'["' + b"[" * 60 + b'"]')
    (True, False)
    """
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return False
    bare = np.frombuffer(_STRING.sub(b"", line), np.uint8)
    # ("[" is 0x5B, "{" 0x7B, "]" 0x5D, "}" 0x7D: one OR makes each pair one value.)
    folded = bare | 0x20
    steps = (folded == ord("{")).astype(np.int32) - (folded == ord("}"))
    return bool(steps.size) and int(np.cumsum(steps).max()) > MAX_DEPTH


def long_line_too_deep(data: bytes, start: int = 0, end: int | None = None) -> int | None:
    """The index (from 0) of a line of ``data[start:end]`` that nests more than
    :data:`MAX_DEPTH` levels deep, among those longer than :data:`LONG_LINE` bytes (the
    first of them), or None where none of them does. Lines end at LF only (a CR is
    whitespace inside a value to pyarrow's reader).

    Long lines are found without reading every byte: one of them holds a whole window of
    ``LONG_LINE // 2 + 1`` bytes, of those that ``data`` is cut into, with no line end.
    (So may a shorter line: a deep one found so is named first.)

    Examples
    --------
    >>> deep = b"[" * 3_000 + b"]" * 3_000
    >>> long_line_too_deep(b'{"a": 1}\\n' + deep), long_line_too_deep(b"[1]\\n" * 9_000)
    (1, None)
    """
    end = len(data) if end is None else end
    window = LONG_LINE // 2 + 1
    past = start  # (where the last line checked ends: a long line holds many windows)
    for at in range(start, end - window + 1, window):
        if at < past or data.find(b"\n", at, at + window) != -1:
            continue
        first = data.rfind(b"\n", start, at) + 1 or start
        past = data.find(b"\n", at + window, end)
        past = end if past == -1 else past
        if line_too_deep(data[first:past]):
            return data.count(b"\n", start, first)
    return None


def type_depth(schema: pa.Schema) -> int:
    """How deeply the rows of a table of this ``schema`` nest, as JSON: the row's object
    is one level, each list or struct in it one more.

    Examples
    --------
    >>> type_depth(pa.schema({"text": pa.string(), "x": pa.list_(pa.list_(pa.int64()))}))
    3
    """
    # (A walk, not a recursion: the types may nest thousands deep.)
    deepest, todo = 1, [(field.type, 1) for field in schema]
    while todo:
        t, depth = todo.pop()
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_struct(t):
            deepest = max(deepest, depth + 1)
            todo.extend((t.field(i).type, depth + 1) for i in range(t.num_fields))
    return deepest
