"""Shared test helpers: the shared data folder and reference matchers.

The references below are written from DESIGN.md section 2, independently of the kernels:
``reference_match`` is the literal definition (``" " + e + " " in spacing(text)``) and
``AhoCorasickReference`` is the same rule run with pyahocorasick, fast enough for the
374,565-entry proxy metadata. Import them with ``from conftest import ...``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# The shared test data (real alt-texts, a 375k-entry metadata): ../shared/data beside the
# repository, or the folder $GPU_CURATE_TEST_DATA names.
SHARED = Path(os.environ.get("GPU_CURATE_TEST_DATA") or REPO.parent / "shared" / "data")
SHARED_MISSING = (
    f"{SHARED} not found: the shared test data is not present (set GPU_CURATE_TEST_DATA to "
    "its folder)"
)

LAION_PARQUET = "captions/laion_alt_text_10k.parquet"
CC3M_TSV = "captions/cc3m_validation_alt_text.tsv"
PROXY_METADATA = "metadata/metadata_proxy_en.json"

# The seven characters that spacing() surrounds by spaces, and the three it turns into one.
WRAP_CHARS = ",.;:?!`"
SPACE_CHARS = "\t\n\r"

try:  # Python's zstd module (3.14), or its backport (a dependency of gpu-curate before)
    from compression import zstd  # noqa: F401 (for the tests to import)
except ImportError:
    from backports import zstd  # noqa: F401 (for the tests to import)


def pytest_configure(config):
    # Compiled metadata tables are cached on disk between runs; tests (and the CLI runs they
    # start, which inherit the environment) use a private folder, not the user's cache.
    if "GPU_CURATE_CACHE_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="gpu-curate-test-cache-")
        os.environ["GPU_CURATE_CACHE_DIR"] = folder
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


def shared_data(relpath: str) -> Path:
    """Path of a file under ../shared/data, or skip the test when it is absent."""
    path = SHARED / relpath
    if not path.is_file():
        pytest.skip(f"{SHARED_MISSING} (missing {relpath})")
    return path


# ----------------------------------------------------------------------------- references


def spacing(text: str) -> str:
    """MetaCLIP's text normalisation (DESIGN.md section 2).

    Pad with one space on each side, surround each of the seven wrap characters by spaces
    and turn tab, LF and CR into a space. Nothing else changes.
    """
    out = [" "]
    for ch in text:
        if ch in WRAP_CHARS:
            out.append(" " + ch + " ")
        elif ch in SPACE_CHARS:
            out.append(" ")
        else:
            out.append(ch)
    out.append(" ")
    return "".join(out)


# The kernels the CUDA matcher launches for each tile, in order (kernels/gpu.py).
MATCH_KERNELS = (
    "_token_ends",
    "_row_starts",
    "_row_tokens",
    "_split_tokens",
    "_lookup_tokens",
    "_walk_count",
    "_walk_write",
    "_row_unique",
    "_compact",
)


def reference_match(text: str | None, entries: Sequence[str]) -> list[int]:
    """Sorted ids of the entries e with ``" " + e + " "`` in ``spacing(text)`` (None: [])."""
    if text is None:
        return []
    spaced = spacing(text)
    return [i for i, e in enumerate(entries) if " " + e + " " in spaced]


M64 = (1 << 64) - 1


def ref_fmix64(k: int) -> int:
    """Murmur3's 64-bit finalizer on Python ints, written from the documented formula
    (independent of the NumPy code in gpu_curate/balance.py)."""
    k &= M64
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M64
    k ^= k >> 33
    return k


def ref_uniform(seed: int, uid: int, entry: int, stream: int = 0) -> float:
    """The documented draw U(seed, uid, entry) in [0, 1) (DESIGN section 3, balance.py)."""
    key = ref_fmix64(seed ^ ref_fmix64((0x9E3779B97F4A7C15 * (stream + 1)) & M64))
    h = ref_fmix64(ref_fmix64(key ^ uid) ^ entry)
    return (h >> 11) / float(1 << 53)


def binom_two_sided_pvalue(k: int, n: int, prob: float) -> float:
    """Exact two-sided binomial p-value (doubling the smaller tail)."""
    if prob <= 0.0:
        return 1.0 if k == 0 else 0.0
    if prob >= 1.0:
        return 1.0 if k == n else 0.0
    logs = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(prob)
        + (n - i) * math.log1p(-prob)
        for i in range(n + 1)
    ]
    pmf = [math.exp(v) for v in logs]
    lower = math.fsum(pmf[: k + 1])
    upper = math.fsum(pmf[k:])
    return min(1.0, 2.0 * min(lower, upper))


def keep_rule_rejected(freq: np.ndarray, n_draws: int, prob: np.ndarray) -> list[str]:
    """Reasons to reject 'each text is kept with probability prob' (empty: accepted).

    Per text: exact binomial test, Bonferroni-corrected at family level 1e-3.
    Aggregate: chi-square sum of z^2 over texts with 0 < prob < 1 (df = their number,
    5 sd), and the total number kept (z within 4).
    """
    reasons = []
    m = len(freq)
    pvals = [
        binom_two_sided_pvalue(int(k), n_draws, float(q)) for k, q in zip(freq, prob, strict=True)
    ]
    if min(pvals) * m < 1e-3:
        reasons.append(f"per-text binomial: min p-value {min(pvals):.2g} over {m} texts")
    inner = (prob > 0) & (prob < 1)
    var = n_draws * prob[inner] * (1 - prob[inner])
    chi2 = float((((freq[inner] - n_draws * prob[inner]) ** 2) / var).sum())
    df = int(inner.sum())
    if chi2 > df + 5 * math.sqrt(2 * df):
        reasons.append(f"chi-square {chi2:.1f} on {df} df")
    total_var = float((n_draws * prob * (1 - prob)).sum())
    z = (freq.sum() - n_draws * prob.sum()) / math.sqrt(max(total_var, 1e-12))
    if abs(z) > 4:
        reasons.append(f"total kept z = {z:.1f}")
    return reasons


class AhoCorasickReference:
    """The same rule as :func:`reference_match` with pyahocorasick, for big metadata."""

    def __init__(self, entries: Iterable[str]) -> None:
        import ahocorasick

        self.automaton = ahocorasick.Automaton()
        for i, e in enumerate(entries):
            self.automaton.add_word(" " + e + " ", i)
        self.automaton.make_automaton()

    def __call__(self, text: str | None) -> list[int]:
        if text is None:
            return []
        # iter() reports every occurrence, overlapping ones included.
        return sorted({i for _, i in self.automaton.iter(spacing(text))})


# ----------------------------------------------------------------------------- shared data


def write_success(matched: Path, names: Sequence[str]) -> None:
    """``matched/_SUCCESS`` as the pipeline writes it, listing the parts ``names`` (in
    that order) with their row counts."""
    import json

    import pyarrow.parquet as pq

    parts = [{"file": n, "rows": pq.ParquetFile(matched / n).metadata.num_rows} for n in names]
    total = sum(p["rows"] for p in parts)
    (matched / "_SUCCESS").write_text(json.dumps({"parts": parts, "rows": total}))


def write_entry_counts(path: Path, counts: Sequence[int]) -> None:
    """An ``entry_counts.parquet`` as the pipeline writes it: entry ``i`` is named entry{i}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(counts)
    table = pa.table(
        {
            "entry_id": pa.array(range(n), pa.int32()),
            "entry": pa.array([f"entry{i}" for i in range(n)]),
            "count": pa.array(counts, pa.int64()),
        }
    )
    pq.write_table(table, path)


def read_laion_texts(path: Path) -> list[str]:
    """The ``TEXT`` column of the LAION parquet sample."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["TEXT"]).column("TEXT").to_pylist()


def read_cc3m_texts(path: Path) -> list[str]:
    """The captions (first column) of the CC3M tsv (``caption<TAB>url``, no header)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.split("\t", 1)[0] for line in lines]


@pytest.fixture(scope="module")
def local_client():
    """An in-process Dask client (threads) for the pipeline's planning functions."""
    import dask
    from distributed import Client

    with (
        Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c,
        dask.config.set(scheduler=None),
    ):
        yield c


@pytest.fixture(scope="session")
def laion_texts() -> list[str]:
    return read_laion_texts(shared_data(LAION_PARQUET))


@pytest.fixture(scope="session")
def cc3m_texts() -> list[str]:
    return read_cc3m_texts(shared_data(CC3M_TSV))


@pytest.fixture(scope="session")
def proxy_entries() -> list[str]:
    """The 374,565 entries of the shared proxy metadata (a JSON list of strings)."""
    return json.loads(shared_data(PROXY_METADATA).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def proxy_metadata(proxy_entries):
    from gpu_curate.metadata import Metadata

    return Metadata(proxy_entries, source=PROXY_METADATA)


@pytest.fixture(scope="session")
def proxy_reference(proxy_entries) -> AhoCorasickReference:
    return AhoCorasickReference(proxy_entries)


def parquet_codecs(folder: Path) -> set[str]:
    """The compression codecs of every column chunk of the Parquet parts in ``folder``."""
    import pyarrow.parquet as pq

    found = set()
    for path in folder.glob("*.parquet"):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            found |= {rg.column(c).compression for c in range(rg.num_columns)}
    return found
