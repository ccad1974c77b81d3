"""Unigram and bigram counts, and bigram PMI, on pandas or cuDF dataframes.

One implementation serves both backends. The backend-specific steps are choosing the
dataframe module (``resolve(name).df``: pandas for "cpu", cuDF for "gpu"), moving small host
tables across (``from_pandas`` / ``to_pandas``; the PMI's three columns too, whose ``log2``
runs on the host so that both builds choose the same bigrams) and, on pandas only, holding
texts as Arrow strings (a dtype choice that makes pandas' own calls fast). Everything else
uses calls that pandas and cuDF share; the ones relied on, all of which cuDF's ``Series`` /
``DataFrame`` API has (believed from its docs; not yet run on a GPU): ``str.replace(pat,
repl, regex=False)``, ``str.split(" ")`` to a list column and ``explode()``, ``rename``,
``reset_index`` (also ``name=``), ``shift(-1, fill_value=...)`` on bool, int and string
columns, ``isin``, boolean masks, ``groupby([...], sort=False).size()`` /
``["count"].sum()``, ``concat(ignore_index=True)``, ``merge(on=..., how="inner")``,
``str.contains(regex=True)`` with a character class, ``astype("int64")``, ``.values`` (NumPy
/ CuPy array) and column assignment from it.

Tokenization is the matcher's (README, Semantics): MetaCLIP's ``spacing`` (each of the
seven characters ``, . ; : ? !`` and backtick gets a space on both sides; tab, newline and
carriage return become spaces), then a split on the single space character. Unigrams are
the non-empty tokens (the seven characters included: they are tokens of the text, and the
total ``N`` counts them). Bigrams are pairs of *adjacent* tokens that are both non-empty
and neither one of the seven characters, so that ``"w1 w2"`` is an entry that matches
exactly where the pair occurs (``"new  york"`` with two spaces has tokens ``new``, ``""``,
``york`` and holds no bigram).

PMI is NLTK's ``BigramAssocMeasures.pmi`` (what MetaCLIP used), in bits:
``log2(c(ab) * N) - log2(c(a) * c(b))`` with ``N`` the total unigram count.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import Backend
from .corpus import iter_corpus_texts
from .tables import read_ngram_counts
from .textio import BLOCK_BYTES

#: The characters MetaCLIP's ``spacing`` surrounds with spaces (README, Semantics).
WRAP_CHARS: tuple[str, ...] = (",", ".", ";", ":", "?", "!", "`")

# A bigram word from a precomputed file that holds one of these can never match as a
# token (spacing would split it, or it is a separator itself).
_UNMATCHABLE = "[ \t\r\n,.;:?!`]"

#: Partial count tables are merged after this many chunks, bounding the memory they take.
MERGE_EVERY = 8


@dataclass
class NgramCounts:
    """Unigram and bigram count tables on one backend.

    Attributes
    ----------
    unigrams
        DataFrame with columns ``word`` (str) and ``count`` (int64), one row per word.
    bigrams
        DataFrame with columns ``w1``, ``w2`` (str) and ``count`` (int64).
    """

    unigrams: Any
    bigrams: Any

    @property
    def total(self) -> int:
        """``N``: the sum of all unigram counts."""
        return int(self.unigrams["count"].sum()) if len(self.unigrams) else 0


def spacing(texts):
    """MetaCLIP's ``spacing`` of a string Series, without its two padding spaces.

    Examples
    --------
    >>> import pandas as pd
    >>> spacing(pd.Series(["Hi, you.\\tok"])).tolist()
    ['Hi ,  you .  ok']
    """
    for ch in ("\t", "\n", "\r"):
        texts = texts.str.replace(ch, " ", regex=False)
    for ch in WRAP_CHARS:
        texts = texts.str.replace(ch, f" {ch} ", regex=False)
    return texts


def count_texts(texts, df) -> NgramCounts:
    """Count the unigrams and bigrams of one chunk of texts.

    Parameters
    ----------
    texts
        A string Series (pandas or cuDF) without nulls.
    df
        Its dataframe module (``pandas`` or ``cudf``).

    Examples
    --------
    >>> import pandas as pd
    >>> c = count_texts(pd.Series(["new york.", "new  york"]), pd)
    >>> sorted(zip(c.unigrams.word, c.unigrams["count"]))
    [('.', 1), ('new', 2), ('york', 2)]
    >>> c.bigrams.values.tolist()
    [['new', 'york', 1]]
    """
    texts = _arrow_strings(texts.reset_index(drop=True), df)
    tokens = spacing(texts).str.split(" ").explode()
    # The exploded index repeats the text's row number: it tells which tokens are adjacent.
    frame = tokens.rename("tok").reset_index().rename(columns={"index": "row"})
    nonempty = frame["tok"] != ""
    # A token can start a bigram if it is non-empty and no wrap character; the pair is
    # (token, next token) when the next token is in the same text and can too.
    ok = nonempty & ~frame["tok"].isin(list(WRAP_CHARS))
    pair = (
        ok
        & ok.shift(-1, fill_value=False)
        & (frame["row"] == frame["row"].shift(-1, fill_value=-1))
    )
    following = frame["tok"].shift(-1, fill_value="")
    unigrams = (
        frame[nonempty]
        .groupby("tok", sort=False)
        .size()
        .reset_index(name="count")
        .rename(columns={"tok": "word"})
    )
    bigrams = (
        df.DataFrame({"w1": frame["tok"][pair], "w2": following[pair]})
        .groupby(["w1", "w2"], sort=False)
        .size()
        .reset_index(name="count")
    )
    return NgramCounts(_int64(unigrams), _int64(bigrams))


def _arrow_strings(texts, df):
    """On pandas, hold the texts as Arrow strings; cuDF's strings are Arrow-layout already.

    With Arrow strings, pandas runs ``str.split`` and ``explode`` as Arrow kernels (list
    columns, no Python objects): about 10x faster than with its default string dtype. The
    calls stay the same; only the pandas dtype is chosen here.
    """
    if df.__name__ != "pandas":
        return texts
    import pyarrow as pa

    # large_string: 64-bit offsets, so a chunk over 2 GiB of text after spacing still fits.
    return texts.astype(df.ArrowDtype(pa.large_string()))


def _int64(table):
    table["count"] = table["count"].astype("int64")
    return table


def merge_counts(parts: Sequence[NgramCounts], df) -> NgramCounts:
    """Sum count tables (of chunks, files or partitions) into one.

    Examples
    --------
    >>> import pandas as pd
    >>> a, b = count_texts(pd.Series(["a b"]), pd), count_texts(pd.Series(["a b c"]), pd)
    >>> merge_counts([a, b], pd).bigrams.values.tolist()
    [['a', 'b', 2], ['b', 'c', 1]]
    """
    if len(parts) == 1:
        return parts[0]

    def total(tables, keys):
        merged = df.concat(list(tables), ignore_index=True)
        return _int64(merged.groupby(keys, sort=False)["count"].sum().reset_index())

    return NgramCounts(
        total((p.unigrams for p in parts), ["word"]),
        total((p.bigrams for p in parts), ["w1", "w2"]),
    )


def count_corpus(
    paths: Sequence[str | os.PathLike],
    backend: Backend,
    column: str | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> NgramCounts:
    """Count unigrams and bigrams of a whole corpus, chunk by chunk.

    Memory holds one chunk's tokens plus the count tables: each chunk is counted on its
    own and the partial tables are summed (a groupby-sum) every :data:`MERGE_EVERY` chunks,
    so a corpus larger than memory works as long as its vocabulary fits.

    Parameters
    ----------
    paths
        Text / Parquet files and folders (see :func:`~.corpus.expand_corpus_paths`).
    backend
        Where to count (``gpu_curate.backend.resolve("cpu")`` or ``("gpu")``).
    column
        Text column of Parquet files.
    block_bytes
        Block size for plain text files.

    Examples
    --------
    >>> from gpu_curate.backend import resolve
    >>> counts = count_corpus(["captions.txt"], resolve("cpu"))  # doctest: +SKIP
    """
    df = backend.df
    parts: list[NgramCounts] = []
    for texts in iter_corpus_texts(paths, df, column=column, block_bytes=block_bytes):
        parts.append(count_texts(texts, df))
        if len(parts) >= MERGE_EVERY:
            parts = [merge_counts(parts, df)]
    if not parts:
        # One empty text has no tokens: empty tables with the right columns and dtypes.
        return count_texts(df.Series([""]), df)
    return merge_counts(parts, df)


def count_corpus_dask(
    paths: Sequence[str | os.PathLike],
    backend: Backend,
    column: str | None = None,
    block_bytes: int = BLOCK_BYTES,
    scheduler: str | None = None,
) -> NgramCounts:
    """:func:`count_corpus` with the files counted in parallel by Dask, then summed.

    Each corpus file is one task (counted chunk by chunk, as :func:`count_corpus` does);
    the per-file tables become the partitions of two Dask dataframes (dask-cuDF ones on
    the gpu backend, as Dask follows the partitions' type), which a Dask groupby-sum
    reduces as a tree. Gives the same counts as :func:`count_corpus`.

    Parameters
    ----------
    paths, backend, column, block_bytes
        As for :func:`count_corpus`.
    scheduler
        Dask scheduler name ("threads", "processes", "synchronous"); None uses Dask's
        default, which is a ``distributed.Client`` when one is active.

    Examples
    --------
    >>> from gpu_curate.backend import resolve
    >>> counts = count_corpus_dask(["shards/"], resolve("cpu"))  # doctest: +SKIP
    """
    import dask
    import dask.dataframe as dd

    from .corpus import expand_corpus_paths

    df = backend.df
    # Tasks get the backend's name, not the Backend (its modules do not pickle).
    name = backend.name
    files = [os.fspath(p) for p in expand_corpus_paths(paths)]
    per_file = [dask.delayed(_count_file)(path, name, column, block_bytes) for path in files]
    empty = count_texts(df.Series([""]), df)
    if not per_file:
        return empty
    unigrams = dd.from_delayed([part[0] for part in per_file], meta=empty.unigrams)
    bigrams = dd.from_delayed([part[1] for part in per_file], meta=empty.bigrams)
    unigrams = unigrams.groupby("word", sort=False)["count"].sum()
    bigrams = bigrams.groupby(["w1", "w2"], sort=False)["count"].sum()
    unigrams, bigrams = dask.compute(unigrams, bigrams, scheduler=scheduler)
    return NgramCounts(
        _int64(unigrams.reset_index()[["word", "count"]]),
        _int64(bigrams.reset_index()[["w1", "w2", "count"]]),
    )


def _count_file(path: str, backend_name: str, column: str | None, block_bytes: int):
    from ..backend import resolve

    counts = count_corpus([path], resolve(backend_name), column, block_bytes)
    return counts.unigrams, counts.bigrams


def read_ngram_files(
    unigram_path: str | os.PathLike,
    bigram_path: str | os.PathLike | None,
    backend: Backend,
) -> NgramCounts:
    """Load MetaCLIP's precomputed n-gram count files onto ``backend``.

    ``unigram_path`` holds ``count<TAB>word`` lines and ``bigram_path`` (optional)
    ``count<TAB>w1<TAB>w2`` lines, as MetaCLIP's ``1gram.txt.gz`` / ``2gram.txt.gz``.

    Examples
    --------
    >>> from gpu_curate.backend import resolve
    >>> counts = read_ngram_files("1gram.txt.gz", "2gram.txt.gz", resolve("cpu"))  # doctest: +SKIP
    """
    unigrams = read_ngram_counts(unigram_path, 1)
    if bigram_path is not None:
        bigrams = read_ngram_counts(bigram_path, 2)
    else:
        bigrams = unigrams.iloc[:0].rename(columns={"word": "w1"}).assign(w2="")
        bigrams = bigrams[["w1", "w2", "count"]]
    return NgramCounts(to_backend(unigrams, backend), to_backend(bigrams, backend))


def to_backend(table, backend: Backend):
    """Move a host pandas DataFrame to ``backend`` (a no-op on cpu)."""
    return table if not backend.is_gpu else backend.df.from_pandas(table)


def to_host(table):
    """A pandas copy of a pandas or cuDF DataFrame (no copy for pandas)."""
    return table.to_pandas() if hasattr(table, "to_pandas") else table


@dataclass
class BigramSelection:
    """Bigrams kept as entries, and what was dropped on the way.

    Attributes
    ----------
    table
        pandas DataFrame with columns ``text`` (``"w1 w2"``), ``pmi`` (float64) and
        ``count`` (int64), sorted by PMI (descending), then text.
    total_unigrams
        ``N`` of the PMI.
    bigrams_counted
        Distinct bigrams in the counts.
    missing_unigram
        Bigrams dropped because a word has no unigram count (only possible with
        precomputed files; MetaCLIP's script dropped them too).
    unmatchable
        Bigrams above the thresholds dropped because a word holds a space, tab, newline or
        one of the seven wrap characters, so the entry could never match.
    """

    table: Any
    total_unigrams: int
    bigrams_counted: int
    missing_unigram: int
    unmatchable: int


def bigram_pmi(counts: NgramCounts, backend: Backend):
    """Add ``c1``, ``c2`` (unigram counts of both words) and ``pmi`` to the bigram table.

    Bigrams with a word missing from the unigram table are left out (inner joins).

    Examples
    --------
    >>> import pandas as pd
    >>> from gpu_curate.backend import resolve
    >>> c = count_texts(pd.Series(["a b", "a c"]), pd)
    >>> bigram_pmi(c, resolve("cpu")).sort_values("w2").pmi.round(6).tolist()
    [1.0, 1.0]
    """
    unigrams = counts.unigrams
    table = counts.bigrams.merge(
        unigrams.rename(columns={"word": "w1", "count": "c1"}), on="w1", how="inner"
    ).merge(unigrams.rename(columns={"word": "w2", "count": "c2"}), on="w2", how="inner")
    n = float(counts.total)
    # On the host whichever backend counted: CuPy's log2 and NumPy's may differ in the last
    # bit, and a bigram at min_pmi or at the max_entries cut would then be kept by one build
    # and not by the other.
    joint, c1, c2 = (
        backend.asnumpy(table[c].values).astype(np.float64) for c in ("count", "c1", "c2")
    )
    table["pmi"] = np.log2(joint * n) - np.log2(c1 * c2)
    return table


def select_bigrams(
    counts: NgramCounts, backend: Backend, min_pmi: float = 30.0, min_count: int = 1
) -> BigramSelection:
    """Bigrams with ``pmi >= min_pmi`` and ``count >= min_count``, as entry texts.

    Examples
    --------
    >>> import pandas as pd
    >>> from gpu_curate.backend import resolve
    >>> c = count_texts(pd.Series(["new york", "a b", "a c", "b c"]), pd)
    >>> select_bigrams(c, resolve("cpu"), min_pmi=1.5).table.text.tolist()
    ['new york']
    """
    scored = bigram_pmi(counts, backend)
    kept = scored[(scored["pmi"] >= min_pmi) & (scored["count"] >= min_count)]
    matchable = ~(
        kept["w1"].str.contains(_UNMATCHABLE, regex=True)
        | kept["w2"].str.contains(_UNMATCHABLE, regex=True)
    )
    good = kept[matchable]
    host = to_host(good[["w1", "w2", "pmi", "count"]])
    host = host.assign(text=host["w1"].str.cat(host["w2"], sep=" "))
    host = host.sort_values(["pmi", "text"], ascending=[False, True], kind="stable")
    return BigramSelection(
        table=host[["text", "pmi", "count"]].reset_index(drop=True),
        total_unigrams=counts.total,
        bigrams_counted=len(counts.bigrams),
        missing_unigram=len(counts.bigrams) - len(scored),
        unmatchable=len(kept) - len(good),
    )


def select_unigrams(counts_table, min_count: int = 100):
    """Words with ``count >= min_count``, as a pandas table sorted by count desc, then word.

    ``counts_table`` has columns ``word`` and ``count`` (pandas or cuDF).

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"word": ["b", "a", "c"], "count": [5, 5, 1]})
    >>> select_unigrams(t, 2).word.tolist()
    ['a', 'b']
    """
    host = to_host(counts_table[counts_table["count"] >= min_count])
    host = host.sort_values(["count", "word"], ascending=[False, True], kind="stable")
    return host[["word", "count"]].reset_index(drop=True)
