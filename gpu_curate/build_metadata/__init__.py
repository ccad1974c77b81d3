"""Build MetaCLIP metadata (the entry list) from its sources.

MetaCLIP's recipe (Xu et al. 2023, section 3.1): the numbers 0-99, WordNet synset names, Wikipedia
unigrams with count >= 100, bigrams with PMI >= 30, article titles with enough page views.
:func:`build_metadata` runs it from local files; ``gpu-curate metadata build`` is its CLI.

Modules, one job each:

``textio``    line-block reading of plain/gzip files, ``PATH:LINE`` errors
``wordnet``   synset names from WordNet's ``data.*`` files
``tables``    ``word<TAB>count``, ``title<TAB>views`` and MetaCLIP n-gram count files
``corpus``    corpus files (text / Parquet) as dataframe string Series, chunk by chunk
``ngrams``    tokenizing, unigram/bigram counting and PMI on pandas or cuDF (one code path)
``assemble``  ordering, filtering, deduplication, cap, atomic writing, sidecar
``build``     :func:`build_metadata`
``commands``  the ``metadata`` click group

Examples
--------
>>> from gpu_curate.build_metadata import build_metadata
>>> result = build_metadata("metadata.json", wordnet="/usr/share/wordnet")  # doctest: +SKIP
>>> len(result.entries)  # doctest: +SKIP
86633
"""

from .assemble import (
    Assembled,
    SourceTally,
    assemble,
    check_entries,
    encode_metadata,
    numbers,
    sources_path_for,
    write_atomic,
    write_metadata,
)
from .build import BuildResult, build_metadata
from .corpus import expand_corpus_paths, iter_corpus_texts, parquet_text_column
from .ngrams import (
    WRAP_CHARS,
    BigramSelection,
    NgramCounts,
    bigram_pmi,
    count_corpus,
    count_corpus_dask,
    count_texts,
    merge_counts,
    read_ngram_files,
    select_bigrams,
    select_unigrams,
    spacing,
)
from .tables import read_ngram_counts, read_title_views, read_word_counts
from .wordnet import lemma_to_entry, read_data_file, wordnet_synset_names

__all__ = [
    "WRAP_CHARS",
    "Assembled",
    "BigramSelection",
    "BuildResult",
    "NgramCounts",
    "SourceTally",
    "assemble",
    "bigram_pmi",
    "build_metadata",
    "check_entries",
    "count_corpus",
    "count_corpus_dask",
    "count_texts",
    "encode_metadata",
    "expand_corpus_paths",
    "iter_corpus_texts",
    "lemma_to_entry",
    "merge_counts",
    "numbers",
    "parquet_text_column",
    "read_data_file",
    "read_ngram_counts",
    "read_ngram_files",
    "read_title_views",
    "read_word_counts",
    "select_bigrams",
    "select_unigrams",
    "sources_path_for",
    "spacing",
    "wordnet_synset_names",
    "write_atomic",
    "write_metadata",
]
