"""``gpu-curate metadata build``: the command line of :func:`build_metadata`."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_options import backend_option
from .build import build_metadata

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.group()
def metadata() -> None:
    """Work with MetaCLIP metadata (the list of entries texts are matched against)."""


@metadata.command("build")
@click.option(
    "--out", required=True, type=_FILE, help="Metadata JSON to write (plus <stem>.sources.json)."
)
@click.option(
    "--wordnet",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with WordNet's data.noun, data.verb, data.adj, data.adv (each plain or .gz).",
)
@click.option(
    "--unigram-counts",
    type=_FILE,
    help="Unigram counts: 'word<TAB>count', 'word;count' or 'word count' lines.",
)
@click.option("--min-count", type=int, default=100, show_default=True, help="Unigram threshold.")
@click.option(
    "--corpus",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Text file (one text per line), Parquet file or folder to count n-grams in "
    "(repeat for more).",
)
@click.option(
    "--corpus-column",
    help="Text column of Parquet corpus files [default: first of TEXT, text, caption, alt_text].",
)
@click.option(
    "--min-pmi", type=float, default=30.0, show_default=True, help="Bigram PMI threshold (bits)."
)
@click.option(
    "--min-bigram-count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Bigrams must occur at least this often.",
)
@click.option(
    "--unigram-ngrams", type=_FILE, help="MetaCLIP 1-gram counts ('count<TAB>word'), for PMI."
)
@click.option("--bigram-ngrams", type=_FILE, help="MetaCLIP 2-gram counts ('count<TAB>w1<TAB>w2').")
@click.option("--titles", type=_FILE, help="Wikipedia titles: 'title<TAB>views' lines.")
@click.option("--min-views", type=int, default=70, show_default=True, help="Title threshold.")
@click.option(
    "--max-entries",
    type=click.IntRange(min=1),
    default=500_000,
    show_default=True,
    help="Keep at most this many entries (the last in list order are cut).",
)
@backend_option(help="Dataframe backend for n-gram counting: pandas (cpu) or cuDF (gpu).")
@click.option(
    "--dask",
    "use_dask",
    is_flag=True,
    help="Count the corpus files in parallel with Dask (same result).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def build(
    out: Path,
    wordnet: Path | None,
    unigram_counts: Path | None,
    min_count: int,
    corpus: tuple[Path, ...],
    corpus_column: str | None,
    min_pmi: float,
    min_bigram_count: int,
    unigram_ngrams: Path | None,
    bigram_ngrams: Path | None,
    titles: Path | None,
    min_views: int,
    max_entries: int,
    backend: str,
    use_dask: bool,
    overwrite: bool,
) -> None:
    """Build MetaCLIP metadata from WordNet, unigram counts, bigram PMI and titles.

    Entries are listed as: the numbers 0-99, WordNet synset names, unigrams (by count),
    bigrams (by PMI), titles (by views); duplicates, single punctuation characters and
    entries no text can match (a comma, period, colon, semicolon, ? or ! next to another
    character, as in "Washington, D.C.") are dropped, counted in the sidecar, and
    --max-entries cuts the end of that list.
    """
    result = build_metadata(
        out,
        wordnet=wordnet,
        unigram_counts=unigram_counts,
        min_count=min_count,
        corpus=corpus,
        corpus_column=corpus_column,
        min_pmi=min_pmi,
        min_bigram_count=min_bigram_count,
        unigram_ngrams=unigram_ngrams,
        bigram_ngrams=bigram_ngrams,
        titles=titles,
        min_views=min_views,
        max_entries=max_entries,
        backend=backend,
        use_dask=use_dask,
        overwrite=overwrite,
    )
    parts = ", ".join(f"{name} {count:,}" for name, count in result.kept.items())
    click.echo(f"wrote {len(result.entries):,} entries to {result.path} ({parts})")
    click.echo(f"sources and parameters: {result.sources_path}")
