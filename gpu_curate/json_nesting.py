"""How deeply JSON Lines values nest: no value deeper than :data:`MAX_DEPTH` is read.

Arrow's JSON reader recurses once a level: a value nested ~10,000 levels deep (a 20 KB
line of ``[``) overflows the thread's stack and kills the process, with no word. Python's
reader stops at its recursion limit (~1,000 levels, less the stack in use). Both readers
are held to :data:`MAX_DEPTH`, so that a file reads the same by either, and a deeper line
is an error naming it:

- Python's reader checks each line before parsing it (:func:`line_too_deep`);
- Arrow's reader gets no line longer than :data:`LONG_LINE` bytes that nests deeper
  (:func:`long_line_too_deep`): a shorter one cannot nest deep enough to harm it, and its
  depth shows in the column types it infers (:func:`type_depth`).
"""

from __future__ import annotations

import re

import pyarrow as pa

# Far beyond any real record; well within both readers' reach.
MAX_DEPTH = 512
# Lines of at most this many bytes (so at most as many levels) Arrow's reader parses
# safely (it parsed 5,000 levels, and crashed at 10,000, on an 8 MiB thread stack).
LONG_LINE = 2048

# A JSON string (maybe cut short by the line's end), or a bracket outside one.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def line_too_deep(line: bytes) -> bool:
    """Whether the JSON on ``line`` nests more than :data:`MAX_DEPTH` levels deep.

    Two ``bytes.count`` calls where the line holds at most :data:`MAX_DEPTH` brackets that
    open; else its brackets outside strings are counted.

    Examples
    --------
    >>> line_too_deep(b"[" * 600 + b"]" * 600), line_too_deep(b'["' + b"[" * 600 + b'"]')
    (True, False)
    """
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return False
    depth = 0
    for token in _TOKEN.finditer(line):
        first = token.group()[0]
        if first == ord('"'):
            continue
        depth += 1 if first in (ord("["), ord("{")) else -1
        if depth > MAX_DEPTH:
            return True
    return False


def long_line_too_deep(data: bytes, start: int = 0, end: int | None = None) -> int | None:
    """The index (from 0) of the first line of ``data[start:end]`` longer than
    :data:`LONG_LINE` bytes that nests more than :data:`MAX_DEPTH` levels deep, or None.

    Long lines are found without reading every byte: one of them holds a whole window of
    ``LONG_LINE // 2 + 1`` bytes, of those that ``data`` is cut into, with no line end.

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
