"""``build_metadata``: MetaCLIP metadata from its sources, end to end."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..backend import Backend, BackendError, resolve
from ..errors import CurateError
from .assemble import SOURCE_ORDER, assemble, numbers, sources_path_for, write_metadata
from .ngrams import (
    NgramCounts,
    count_corpus,
    count_corpus_dask,
    read_ngram_files,
    select_bigrams,
    select_unigrams,
)
from .tables import read_title_views, read_word_counts
from .wordnet import wordnet_synset_names

PathLike = str | os.PathLike

#: Written into the sidecar so that readers can tell its layout.
SIDECAR_FORMAT = "gpu-curate metadata sources, version 1"


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build_metadata` built.

    Attributes
    ----------
    entries
        The metadata: distinct entries, entry id = list index.
    report
        The content of the sidecar (per-source tallies, parameters, version).
    path, sources_path
        The metadata file and its ``.sources.json`` sidecar, or None when not written.
    """

    entries: list[str]
    report: dict[str, Any]
    path: Path | None = None
    sources_path: Path | None = None

    @property
    def kept(self) -> dict[str, int]:
        """Entries contributed by each source, in list order.

        Examples
        --------
        >>> build_metadata(None, titles="titles.tsv", min_views=1).kept  # doctest: +SKIP
        {'numbers': 100, 'titles': 2}
        """
        return {name: tally["kept"] for name, tally in self.report["sources"].items()}


def _package_version() -> str:
    # Asked of the installed distribution rather than imported from gpu_curate/__init__.py,
    # which an editable install made before that file existed does not run.
    try:
        return version("gpu-curate")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "0.0.0"


def _backend(name: str | Backend) -> Backend:
    """Resolve the backend for n-gram counting; "auto" falls back to cpu without cuDF."""
    try:
        chosen = resolve(name)
        if chosen.is_gpu:
            chosen.df  # noqa: B018 - imports cuDF now, so a missing cuDF shows here
        return chosen
    except BackendError as exc:
        if name == "auto":
            return resolve("cpu")
        raise CurateError(str(exc)) from exc


def _refuse_input_as_output(out: PathLike, sources: dict[str, Sequence]) -> None:
    """A :class:`CurateError` where the metadata file ``out`` or its sidecar is one of the
    build's source files (``sources``: the paths of each option): the build would replace
    what it reads."""
    outputs = {os.path.realpath(p): p for p in (Path(out), sources_path_for(out))}
    for flag, paths in sources.items():
        for src in paths:
            if src is not None and (shown := outputs.get(os.path.realpath(src))) is not None:
                raise CurateError(
                    f"{shown} is the build's {flag} source, which writing the metadata would "
                    "replace: choose another --out"
                )


def build_metadata(
    out: PathLike | None = None,
    *,
    wordnet: PathLike | None = None,
    unigram_counts: PathLike | None = None,
    min_count: int = 100,
    corpus: PathLike | Sequence[PathLike] = (),
    corpus_column: str | None = None,
    min_pmi: float = 30.0,
    min_bigram_count: int = 1,
    unigram_ngrams: PathLike | None = None,
    bigram_ngrams: PathLike | None = None,
    titles: PathLike | None = None,
    min_views: int = 70,
    max_entries: int | None = 500_000,
    backend: str | Backend = "auto",
    use_dask: bool = False,
    overwrite: bool = False,
) -> BuildResult:
    """Build MetaCLIP metadata (a list of entry strings) from its sources.

    The recipe of MetaCLIP (Xu et al. 2023, section 3.1): the numbers 0-99, WordNet synset
    names, unigrams with ``count >= min_count``, bigrams with ``PMI >= min_pmi``, article
    titles with ``views >= min_views``. Every source is optional; give at least one.
    The order of the list and which entries a ``max_entries`` cap removes are described in
    :mod:`gpu_curate.build_metadata.assemble`.

    Parameters
    ----------
    out
        Where to write the JSON list (atomically), plus ``<stem>.sources.json`` beside it;
        None builds without writing.
    wordnet
        Folder with WordNet's ``data.noun``, ``data.verb``, ``data.adj``, ``data.adv``
        (each plain or gzipped, ``data.noun.gz``).
    unigram_counts
        ``word<TAB>count`` (or ``word;count``) file: the unigram source. Without it,
        unigrams come from the n-gram counts (``corpus`` or ``unigram_ngrams``), if any.
    min_count
        Keep unigrams with at least this count (MetaCLIP: 100).
    corpus
        Text files (one text per line) / Parquet files / folders to count unigrams and
        bigrams in, tokenized as the matcher tokenizes (one path or several).
    corpus_column
        Text column of Parquet corpus files (default: first of TEXT, text, caption,
        alt_text).
    min_pmi
        Keep bigrams with PMI (bits) at least this (MetaCLIP: 30).
    min_bigram_count
        Keep bigrams seen at least this often (MetaCLIP: 1, i.e. no limit; PMI favours
        rare pairs, so a small corpus wants more).
    unigram_ngrams, bigram_ngrams
        MetaCLIP's precomputed n-gram counts (``count<TAB>word``,
        ``count<TAB>w1<TAB>w2``), instead of a corpus. Bigrams need the unigram file.
    titles
        ``title<TAB>views`` file of Wikipedia article titles.
    min_views
        Keep titles with at least this many views (MetaCLIP: 70).
    max_entries
        Keep at most this many entries (MetaCLIP: 500,000); None keeps all.
    backend
        "cpu" (pandas), "gpu" (cuDF) or "auto" (gpu when usable) for n-gram counting.
    use_dask
        Count the corpus files in parallel with Dask (:func:`~.ngrams.count_corpus_dask`;
        same result) instead of one after the other.
    overwrite
        Replace an existing ``out`` (and its sidecar); without it, one is an error (before
        anything is built), as every command's output is.

    Returns
    -------
    BuildResult

    Raises
    ------
    CurateError
        A missing or malformed source (the message names the file and line), or
        conflicting options.

    Examples
    --------
    >>> result = build_metadata(
    ...     "metadata.json", wordnet="/usr/share/wordnet", unigram_counts="enwiki-unigram.txt",
    ...     corpus=["enwiki.txt"], titles="titles.tsv", backend="cpu",
    ... )  # doctest: +SKIP
    >>> result.kept  # doctest: +SKIP
    {'numbers': 100, 'wordnet': 86471, 'unigrams': 251465, 'bigrams': 100203, 'titles': 61761}
    """
    if isinstance(corpus, str | os.PathLike):
        corpus = [corpus]
    if out is not None and not os.fspath(out).lower().endswith(".json"):
        # (Metadata.from_file reads any other name as one entry a line: the JSON list
        # would come back as one entry.)
        raise CurateError(f"--out must name a .json file (MetaCLIP's format), not {out}")
    if out is not None:
        _refuse_input_as_output(out, {
            "--wordnet": [wordnet], "--unigram-counts": [unigram_counts], "--corpus": corpus,
            "--unigram-ngrams": [unigram_ngrams], "--bigram-ngrams": [bigram_ngrams],
            "--titles": [titles],
        })  # fmt: skip
    if out is not None and not overwrite:
        # (A metadata file a run used, replaced without a word, would change what a
        # --resume of that run matches against: the resume refuses it, late.)
        for existing in (Path(out), sources_path_for(out)):
            if existing.exists():
                raise CurateError(f"{existing} exists (use --overwrite to replace it)")
    if not math.isfinite(min_pmi):
        raise CurateError(f"min_pmi must be a finite number, not {min_pmi}")
    if unigram_ngrams is not None and unigram_counts is not None and bigram_ngrams is None:
        raise CurateError(
            "--unigram-ngrams would be read for nothing: the unigrams come from "
            "--unigram-counts, and there are no --bigram-ngrams for a PMI"
        )
    if corpus and (unigram_ngrams is not None or bigram_ngrams is not None):
        raise CurateError(
            "give either --corpus or --unigram-ngrams/--bigram-ngrams, not both "
            "(both are n-gram counts for the PMI)"
        )
    if bigram_ngrams is not None and unigram_ngrams is None:
        raise CurateError("--bigram-ngrams needs --unigram-ngrams (PMI needs unigram counts)")
    if not any([wordnet, unigram_counts, corpus, unigram_ngrams, titles]):
        raise CurateError(
            "no metadata source given: use at least one of --wordnet, --unigram-counts, "
            "--corpus, --unigram-ngrams, --titles"
        )
    if min_bigram_count < 1:
        raise CurateError(f"min_bigram_count must be at least 1, not {min_bigram_count}")

    sources: list[tuple[str, list[str]]] = [("numbers", numbers())]
    details: dict[str, dict[str, Any]] = {"numbers": {}}

    if wordnet is not None:
        sources.append(("wordnet", wordnet_synset_names(wordnet)))
        details["wordnet"] = {}

    compute: Backend | None = None
    counts: NgramCounts | None = None
    if corpus:
        compute = _backend(backend)
        counter = count_corpus_dask if use_dask else count_corpus
        counts = counter(list(corpus), compute, column=corpus_column)
    elif unigram_ngrams is not None:
        compute = _backend(backend)
        counts = read_ngram_files(unigram_ngrams, bigram_ngrams, compute)

    if unigram_counts is not None:
        words = select_unigrams(read_word_counts(unigram_counts), min_count)
        unigram_from = "unigram_counts"
    elif counts is not None:
        words = select_unigrams(counts.unigrams, min_count)
        unigram_from = "corpus" if corpus else "unigram_ngrams"
    else:
        words = None
    if words is not None:
        sources.append(("unigrams", words["word"].tolist()))
        details["unigrams"] = {"from": unigram_from}

    if counts is not None and (corpus or bigram_ngrams is not None):
        assert compute is not None
        chosen = select_bigrams(counts, compute, min_pmi=min_pmi, min_count=min_bigram_count)
        sources.append(("bigrams", chosen.table["text"].tolist()))
        details["bigrams"] = {
            "from": "corpus" if corpus else "bigram_ngrams",
            "total_unigram_count": chosen.total_unigrams,
            "distinct_bigrams": chosen.bigrams_counted,
            "dropped_missing_unigram": chosen.missing_unigram,
            "dropped_unmatchable": chosen.unmatchable,
        }

    if titles is not None:
        table = read_title_views(titles)
        table = table[table["views"] >= min_views].sort_values(
            ["views", "title"], ascending=[False, True], kind="stable"
        )
        sources.append(("titles", table["title"].tolist()))
        details["titles"] = {}

    assembled = assemble(sources, max_entries)
    report: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "gpu_curate_version": _package_version(),
        "order": [name for name in SOURCE_ORDER if name in details],
        "sources": {
            name: {**assembled.tallies[name].as_dict(), **details[name]} for name, _ in sources
        },
        "parameters": {
            "wordnet": _str(wordnet),
            "unigram_counts": _str(unigram_counts),
            "min_count": min_count,
            "corpus": [os.fspath(p) for p in corpus],
            "corpus_column": corpus_column,
            "min_pmi": min_pmi,
            "min_bigram_count": min_bigram_count,
            "unigram_ngrams": _str(unigram_ngrams),
            "bigram_ngrams": _str(bigram_ngrams),
            "titles": _str(titles),
            "min_views": min_views,
            "max_entries": max_entries,
            "backend": compute.name if compute is not None else None,
            "dask": use_dask,
        },
    }
    if out is None:
        return BuildResult(assembled.entries, report)
    path, sidecar = write_metadata(assembled.entries, out, report)
    return BuildResult(assembled.entries, report, path, sidecar)


def _str(path: PathLike | None) -> str | None:
    return None if path is None else os.fspath(path)
