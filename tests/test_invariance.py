"""Property tests: the curated set is a pure function of (pool, metadata, t, seed).

Random small pools (a few files, a few dozen rows, texts from a small word alphabet with
punctuation, tabs, double spaces, null and empty texts) and random small metadata go
through the Python API in several layouts: one file or several, whole files or
``partition_rows`` slices, one or two workers, ``curate`` or ``match`` + ``balance``. Each
run must give exactly the curated set computed here from first principles (DESIGN.md
sections 2 and 3), with plain Python ints and floats and none of the project's functions:

* matches: ``" " + e + " "`` in ``spacing(text)`` (conftest's literal definition);
* ``count[e]``: texts containing ``e``; ``p[e] = t / max(count[e], t)``;
* keep iff ``U(seed, uid, e) < p[e]`` for one of the text's entries, with the draw of
  ``gpu_curate/balance.py``'s contract: ``key = fmix64(seed ^ fmix64(0x9E3779B97F4A7C15))``,
  ``h = fmix64(fmix64(key ^ uid) ^ e)``, ``U = (h >> 11) * 2**-53``;
* uids: an integer id ``i`` hashes to ``fmix64((i mod 2**64) ^ 0x5851F42D4C957F2D)``; row
  ``r`` of file ``f`` to ``fmix64(blake2b8(f) ^ fmix64(r + 0x9E3779B97F4A7C15))``
  (``gpu_curate/uid.py``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import ref_fmix64, ref_uniform, reference_match
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from gpu_curate.pipeline import Options, balance_matched, curate

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
INT_DOMAIN = 0x5851F42D4C957F2D

WORDS = ["dog", "cat", "red", "car", "new", "york", "the", "a", "(dog)", "dog's", "Dog"]
SEPARATORS = [" ", " ", " ", " ", "  ", ", ", ",", ".", "!", "? ", ";", ":", "`", "\t", "\n",
              "\r\n", " - "]  # fmt: skip
# entry words: the text words, plus ones that can never match (unspaced wrap characters)
ENTRY_WORDS = ["dog", "cat", "red", "car", "new", "york", "the", "(dog)", "dog's", "st.", "a,b"]


# ----------------------------------------------------------------------------- reference


fmix64 = ref_fmix64


def uniform(seed: int, uid: int, entry: int) -> float:
    return ref_uniform(seed, uid, entry)  # stream 0


def id_uid(value: int) -> int:
    return fmix64((value & MASK) ^ INT_DOMAIN)


def position_uid(relpath: str, row: int) -> int:
    key = int.from_bytes(hashlib.blake2b(relpath.encode(), digest_size=8).digest(), "little")
    return fmix64(key ^ fmix64((row + GOLDEN) & MASK))


def reference_keep(texts, entries, uids, t: float, seed: int) -> list[bool]:
    """Which rows the curation keeps (DESIGN.md sections 2 and 3, written out)."""
    matches = [reference_match(x, entries) for x in texts]
    counts = [0] * len(entries)
    for m in matches:
        for e in m:
            counts[e] += 1
    p = [t / max(float(c), t) for c in counts]
    return [any(uniform(seed, u, e) < p[e] for e in m) for m, u in zip(matches, uids, strict=True)]


def test_reference_draw_known_values():
    assert fmix64(0) == 0 and fmix64(1) == 0xB456BCFC34C2CB2C  # Murmur3 fmix64
    # two texts containing "dog" (count 2 > t = 1): p = 0.5, one keeps, one drops
    keep = reference_keep(["dog", "a dog", "cat"], ["dog", "cow"], [1, 2, 3], 1.0, 0)
    assert keep == [uniform(0, 1, 0) < 0.5, uniform(0, 2, 0) < 0.5, False]


# ----------------------------------------------------------------------------- strategies


def _text(kind: int, words: list[tuple[str, str]], lead: str) -> str | None:
    # one text in ten is null, one in ten empty
    if kind == 0:
        return None
    return "" if kind == 1 else lead + "".join(w + s for w, s in words)


texts_st = st.builds(
    _text,
    st.integers(0, 9),
    st.lists(
        st.tuples(st.sampled_from(WORDS), st.sampled_from(SEPARATORS)), min_size=1, max_size=7
    ),
    st.sampled_from(["", "", " ", ",", "\t"]),
)
entries_st = st.lists(
    st.one_of(
        st.sampled_from(ENTRY_WORDS),
        st.lists(st.sampled_from(ENTRY_WORDS), min_size=2, max_size=3).map(" ".join),
    ),
    min_size=1,
    max_size=10,
    unique=True,
)


@st.composite
def cases(draw):
    texts = draw(st.lists(texts_st, min_size=8, max_size=40))
    n = len(texts)
    ids = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n, unique=True))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=2)))
    bounds = [0, *cuts, n]
    files = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
    return {
        "texts": texts,
        "ids": ids,
        "entries": draw(entries_st),
        "files": files,
        "partition_rows": draw(st.integers(1, 8)),
        "t": draw(st.sampled_from([0.5, 1, 1.5, 2, 3])),
        "seed": draw(st.integers(0, MASK)),
    }


EXAMPLE = {
    "texts": [
        "dog",
        "a dog, red car",
        None,
        "",
        "new york!",
        "new  york",
        "the (dog)",
        "dog's cat\tdog",
        "dog.",
        "cat",
        "red car",
        "DOG",
    ]
    * 2,  # fmt: skip
    "ids": list(range(-12, 12)),
    "entries": ["dog", "cat", "red car", "new york", "(dog)", "st.", "york"],
    "files": [(0, 5), (5, 5), (5, 24)],  # an empty file in the middle
    "partition_rows": 2,
    "t": 2,
    "seed": 12345,
}


# ----------------------------------------------------------------------------- runs


def _write(folder: Path, texts, ids, files) -> list[str]:
    folder.mkdir(parents=True)
    names = []
    for k, (a, b) in enumerate(files):
        name = f"f{k}.parquet"
        table = pa.table(
            {"TEXT": pa.array(texts[a:b], pa.string()), "id": pa.array(ids[a:b], pa.int64())}
        )
        pq.write_table(table, folder / name, row_group_size=3)
        names.append(name)
    return names


def _curated(out: Path, column: str) -> list[int]:
    files = sorted((out / "curated").glob("part-*.parquet"))
    assert files and (out / "curated" / "_SUCCESS").exists() and (out / "report.json").exists()
    values = []
    for f in files:
        values += pq.read_table(f, columns=[column]).column(column).to_pylist()
    return sorted(values)


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases())
@example(EXAMPLE)
def test_curated_set_is_invariant_and_exact(case):
    texts, ids, entries = case["texts"], case["ids"], case["entries"]
    t, seed, rows = case["t"], case["seed"], case["partition_rows"]
    # references: with the id column, and with (file, row) uids for the file layout
    by_id = reference_keep(texts, entries, [id_uid(i) for i in ids], t, seed)
    want_ids = sorted(i for i, k in zip(ids, by_id, strict=True) if k)
    pos = [position_uid(f"f{k}.parquet", r - a) for k, (a, b) in enumerate(case["files"])
           for r in range(a, b)]  # fmt: skip
    by_pos = reference_keep(texts, entries, pos, t, seed)
    want_uids = sorted(u for u, k in zip(pos, by_pos, strict=True) if k)
    n_matched = sum(bool(reference_match(x, entries)) for x in texts)
    event(f"kept {'none' if not want_ids else 'all' if len(want_ids) == n_matched else 'some'}")
    event(f"{len(case['files'])} files")
    counts = [sum(e in reference_match(x, entries) for x in texts) for e in range(len(entries))]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(root / "one", texts, ids, [(0, len(texts))])
        _write(root / "split", texts, ids, case["files"])
        md = root / "metadata.json"
        md.write_text(json.dumps(entries), encoding="utf-8")

        def run(name, pool, workers, partition_rows=None, id_column=None, match_only=False):
            opts = Options(quiet=True, backend="cpu", workers=workers, id_column=id_column,
                           partition_rows=partition_rows)  # fmt: skip
            out = root / name
            report = curate([str(root / pool)], md, str(out), t, seed, opts, match_only)
            assert report["pool_rows"] == len(texts), name
            got = pq.read_table(out / "entry_counts.parquet").column("count").to_pylist()
            assert got == counts, name
            return out

        # id column: the same ids whatever the files, partitions and workers
        out = run("id-one-file", "one", 1, id_column="id")
        assert _curated(out, "id") == want_ids, "one file, 1 worker"
        out = run("id-split", "split", 2, rows, id_column="id")
        assert _curated(out, "id") == want_ids, f"{len(case['files'])} files, {rows}-row parts"
        # (file, row) uids: the same uids whatever the partitions, workers and stages
        out = run("pos-whole", "split", 1)
        assert _curated(out, "uid") == want_uids, "whole files, 1 worker"
        matched = run("pos-match", "split", 2, rows, match_only=True)
        out = root / "pos-balance"
        opts = Options(quiet=True, backend="cpu", workers=2)
        balance_matched(str(matched), str(out), t, seed, opts)
        assert _curated(out, "uid") == want_uids, f"match + balance, {rows}-row parts"
