"""``gpu-curate demo``: a synthetic long-tailed pool, its metadata, and a curation of it.

No network and no third-party data: entries are made-up pseudo-words (and some two-word
entries), and each text mentions entries drawn from a Zipf law, so a few head entries
appear in a large share of texts, as in a web pool.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import CurateError
from .outdir import RUN_FOLDER

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
_FILLER = ["photo", "of", "the", "a", "with", "in", "on", "for", "and", "image", "stock",
           "new", "best", "free", "view", "from", "by", "at", "my", "our"]  # fmt: skip


# What a demo folder holds (make_pool's pool and metadata, and the run, whose own files are
# checked as a run folder's): --overwrite replaces a folder that holds nothing else.
DEMO_NAMES = frozenset({"pool", "metadata.json", "result" + RUN_FOLDER})


def _words(rng: np.random.Generator, n: int) -> list[str]:
    seen: set[str] = set(_FILLER)
    out: list[str] = []
    while len(out) < n:
        k = int(rng.integers(2, 4))
        w = "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), k))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def make_pool(folder: Path, rows: int, entries: int = 5_000, files: int = 4, seed: int = 0):
    """Write ``metadata.json`` and ``pool/part-*.parquet`` (column ``TEXT``, ``url``)."""
    rng = np.random.default_rng(seed)
    words = _words(rng, entries)
    heads = words[: entries // 10]
    bigrams = [f"{a} {b}" for a, b in zip(heads, words[1 : len(heads) + 1], strict=True)]
    metadata = words + bigrams
    # Zipf-like popularity: rank r gets weight 1 / (r + 10) ** 1.1.
    weights = 1.0 / (np.arange(len(metadata)) + 10.0) ** 1.1
    weights /= weights.sum()
    order = rng.permutation(len(metadata))
    k_per_text = rng.choice([0, 1, 1, 2, 2, 3], size=rows)
    picks = rng.choice(len(metadata), size=int(k_per_text.sum()), p=weights)
    fill = rng.integers(0, len(_FILLER), size=(rows, 3))
    texts: list[str] = []
    pos = 0
    for i in range(rows):
        k = int(k_per_text[i])
        parts = [_FILLER[j] for j in fill[i]]
        for e in picks[pos : pos + k]:
            parts.insert(int(rng.integers(0, len(parts) + 1)), metadata[order[e]])
        pos += k
        texts.append(" ".join(parts).capitalize() if i % 7 == 0 else " ".join(parts))
    (folder / "pool").mkdir(parents=True, exist_ok=True)
    per = -(-rows // files)
    for f in range(files):
        chunk = texts[f * per : (f + 1) * per]
        urls = [f"https://example.org/img/{f}/{j}.jpg" for j in range(len(chunk))]
        pq.write_table(
            pa.table({"TEXT": chunk, "url": urls}), folder / "pool" / f"part-{f}.parquet",
            row_group_size=max(1, per // 4),
        )  # fmt: skip
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder / "pool", folder / "metadata.json"


def run_demo(out, rows, t, seed, backend, overwrite, quiet, echo=print) -> dict:
    """Generate the demo pool under ``out`` and curate it into ``out/result``."""
    from .backend import resolve
    from .outdir import MATCH_MANIFEST, ignored_name, prepare_out
    from .pipeline import Options, curate

    resolve(backend)  # a backend that cannot run here fails before anything is written
    folder = Path(out)
    # (A lock file that a killed demo left is no content: the lock itself is the kernel's.)
    content = folder.exists() and any(not ignored_name(str(p)) for p in folder.iterdir())
    if content and not overwrite:
        raise CurateError(f"demo folder {folder} exists and is not empty (use --overwrite)")
    # (The output folder's own guards: --overwrite never deletes the current directory.)
    folder_out = prepare_out(
        str(folder), overwrite, False, MATCH_MANIFEST, owned=DEMO_NAMES, resumable=False
    )
    with folder_out:
        pool, metadata = make_pool(folder, rows, seed=seed)
        if not quiet:
            echo(f"demo: wrote a {rows:,}-row synthetic pool to {pool} and its metadata")
        opts = Options(backend=backend, quiet=quiet, echo=echo, processes=False)
        report = curate([str(pool)], metadata, str(folder / "result"), t, seed, opts)
        if not quiet:
            counts = pq.read_table(folder / "result" / "entry_counts.parquet").to_pandas()
            kept = pq.read_table(folder / "result" / "curated_entry_counts.parquet").to_pandas()
            top = counts.sort_values("count", ascending=False).head(5)
            echo(f"head entries (count >= t={t:g}): {report['head_entries']}")
            echo("top entries, pool count -> curated count:")
            for _, r in top.iterrows():
                n = int(kept["count"][r["entry_id"]])
                echo(f"  {r['entry']:<16} {r['count']:>8,} -> {n:>6,}")
            echo(
                "  (more than t: a text is kept if any of its entries draws it, and these "
                "texts also hold rarer entries, which keep theirs)"
            )
            echo(
                f"next: gpu-curate plan {folder / 'result'} --t {max(1, t // 10):g} --t {t * 10:g}"
            )
        return report
