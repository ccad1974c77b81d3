"""Readers for the keyed count files that feed the metadata build.

=====================  ==============================  =================================
option                 one line                        example
=====================  ==============================  =================================
``--unigram-counts``   ``word<TAB>count``, ``word;count``  ``dog\\t51234`` / ``dog;51234``
                       or ``word count``
``--titles``           ``title<TAB>views``             ``New_York_City\\t48211``
``--unigram-ngrams``   ``count<TAB>word`` (MetaCLIP)    ``51234\\tdog``
``--bigram-ngrams``    ``count<TAB>w1<TAB>w2``          ``812\\tnew\\tyork``
=====================  ==============================  =================================

Counts are non-negative integers. Keys are stripped of surrounding whitespace (as MetaCLIP's
scripts did); lines that are empty or whitespace-only are skipped; a key that appears on
several lines gets the sum of its counts (page views aggregated over several days, say).
Any other deviation is a :class:`~gpu_curate.errors.CurateError` naming the file and line.

Parsing is vectorized with pandas on the host, one block of lines at a time; these tables
are small next to a corpus, and the results move to the compute backend afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pandas as pd

from ..errors import CurateError
from .textio import iter_line_blocks, shorten, source_error

# Longer digit strings would overflow int64.
_COUNT_RE = r"[0-9]{1,18}"


def _lines(first: int, lines: list[str]) -> pd.Series:
    s = pd.Series(lines, index=pd.RangeIndex(first, first + len(lines)), dtype=object)
    return s[s.str.strip() != ""]


def _blocks(path) -> Iterator[pd.Series]:
    """Non-blank lines of ``path`` as Series indexed by line number, block by block."""
    for first, block in iter_line_blocks(path):
        lines = _lines(first, block)
        if len(lines):
            yield lines


def _fail_first(bad: pd.Series, lines: pd.Series, path, expected: str) -> None:
    if bad.any():
        lineno = int(bad.idxmax())  # first True: idxmax returns the first maximum
        raise source_error(path, lineno, f"expected {expected}, got {shorten(lines[lineno])}")


def _sum_by_key(parts: list[pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    columns = [*keys, "count"]
    if not parts:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in keys}).assign(
            count=pd.Series([], dtype="int64")
        )[columns]
    table = pd.concat(parts, ignore_index=True)
    table = table[(table[keys] != "").all(axis=1)]
    summed = table.groupby(keys, sort=False, as_index=False)["count"].sum()[columns]
    # int64 sums wrap around silently; their float64 twins (same group order) show where.
    approx = table.assign(count=table["count"].astype("float64"))
    over = approx.groupby(keys, sort=False)["count"].sum().to_numpy() >= 2.0**63
    if over.any():
        key = summed.iloc[int(over.argmax())]
        raise CurateError(
            f"the counts of {' '.join(str(key[k]) for k in keys)!r} add up past 2**63"
        )
    return summed


def read_word_counts(path: str | os.PathLike) -> pd.DataFrame:
    """Read a unigram counts file: ``word<TAB>count``, ``word;count`` or ``word count``.

    The separator is the last tab on the line, else the last ``;`` that a count follows,
    else the last space (so a word may itself contain ``;`` when tabs separate). ``pywordfreq``'s
    ``word_frequencies.gz`` (``word;count``) and MetaCLIP's ``enwiki-unigram.txt``
    (``word count``) both read as they are.

    Returns
    -------
    pandas.DataFrame
        Columns ``word`` (str) and ``count`` (int64), one row per distinct non-empty word.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "u.tsv"
    >>> _ = p.write_text("dog\\t120\\ncat;7\\n")
    >>> read_word_counts(p).to_dict("list")
    {'word': ['dog', 'cat'], 'count': [120, 7]}
    """
    parts = []
    for lines in _blocks(path):
        stripped = lines.str.strip()  # ("dog 120 " is MetaCLIP's line.strip().split())
        word, count = stripped.copy(), pd.Series("", index=lines.index, dtype=object)
        # Later separators win where found: the last space, then the last ';' if a count
        # follows it ("rock;roll 500" is a space-separated line), then the last tab.
        for sep in (" ", ";", "\t"):
            split = stripped.str.rpartition(sep)
            found = split[1] == sep
            if sep == ";":
                found &= split[2].str.strip().str.fullmatch(_COUNT_RE).fillna(False)
            word = word.where(~found, split[0])
            count = count.where(~found, split[2])
        count = count.str.strip()
        _fail_first(
            ~count.str.fullmatch(_COUNT_RE),
            lines,
            path,
            "'word<TAB>count', 'word;count' or 'word count' with a whole-number count",
        )
        parts.append(pd.DataFrame({"word": word.str.strip(), "count": count.astype("int64")}))
    return _sum_by_key(parts, ["word"])


def read_title_views(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``title<TAB>views`` file of Wikipedia article titles.

    ``_`` becomes a space, as MetaCLIP did with page-view dumps (MediaWiki treats the two
    as the same character in titles, and pageview dumps write ``_``); views of titles that
    are then equal are summed.

    Returns
    -------
    pandas.DataFrame
        Columns ``title`` (str) and ``views`` (int64).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.tsv"
    >>> _ = p.write_text("New_York\\t90\\nNew York\\t10\\n")
    >>> read_title_views(p).to_dict("list")
    {'title': ['New York'], 'views': [100]}
    """
    parts = []
    for lines in _blocks(path):
        split = lines.str.rpartition("\t")
        views = split[2].str.strip()
        _fail_first(
            (split[1] != "\t") | ~views.str.fullmatch(_COUNT_RE),
            lines,
            path,
            "'title<TAB>views' with a whole number of views",
        )
        title = split[0].str.replace("_", " ", regex=False).str.strip()
        parts.append(pd.DataFrame({"title": title, "count": views.astype("int64")}))
    return _sum_by_key(parts, ["title"]).rename(columns={"count": "views"})


def read_ngram_counts(path: str | os.PathLike, n: int) -> pd.DataFrame:
    """Read a MetaCLIP n-gram count file: ``count<TAB>word`` (n=1) or ``count<TAB>w1<TAB>w2``.

    Returns
    -------
    pandas.DataFrame
        n=1: columns ``word``, ``count``; n=2: columns ``w1``, ``w2``, ``count``. Rows with
        an empty word (after stripping) or a count of 0 are dropped, as MetaCLIP's script
        dropped them.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "2gram.txt"
    >>> _ = p.write_text("12\\tnew\\tyork\\n")
    >>> read_ngram_counts(p, 2).to_dict("list")
    {'w1': ['new'], 'w2': ['york'], 'count': [12]}
    """
    if n not in (1, 2):
        raise ValueError(f"n must be 1 or 2, not {n}")
    keys = ["word"] if n == 1 else ["w1", "w2"]
    expected = "'count<TAB>word'" if n == 1 else "'count<TAB>word1<TAB>word2'"
    parts = []
    for lines in _blocks(path):
        right_shape = lines.str.count("\t") == n
        fields = lines.where(right_shape, "0" + "\t" * n).str.split("\t", n=n, expand=True)
        count = fields[0].str.strip()
        _fail_first(
            ~right_shape | ~count.str.fullmatch(_COUNT_RE),
            lines,
            path,
            f"{expected} with a whole-number count",
        )
        table = {key: fields[i + 1].str.strip() for i, key in enumerate(keys)}
        frame = pd.DataFrame({**table, "count": count.astype("int64")})
        # MetaCLIP's script keeps rows with count > 0: a 0 unigram count would make a
        # bigram's PMI infinite.
        parts.append(frame[frame["count"] > 0])
    return _sum_by_key(parts, keys)
