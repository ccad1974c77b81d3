"""Matching on the CPU backend: exact against the DESIGN.md section 2 references.

The expected ids always come from ``conftest.reference_match`` (the literal definition) or
``conftest.AhoCorasickReference`` (the same rule with pyahocorasick), never from the kernel.
"""

from __future__ import annotations

import enum
import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import AhoCorasickReference, reference_match, spacing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpu_curate.backend import BackendError, gpu_available
from gpu_curate.errors import CurateError, MetadataError
from gpu_curate.match import csr_to_lists, match_arrow, match_texts
from gpu_curate.metadata import Metadata


def cpu_lists(texts, entries) -> list[list[int]]:
    return match_texts(texts, entries, "cpu")


def check_csr(ro, ids, n: int) -> None:
    """The CSR contract: int64 offsets (n + 1, from 0, non-decreasing), int32 ids, each
    row's ids strictly ascending."""
    assert isinstance(ro, np.ndarray) and isinstance(ids, np.ndarray)
    assert ro.dtype == np.int64 and ids.dtype == np.int32
    assert ro.shape == (n + 1,)
    assert ro[0] == 0 and ro[-1] == ids.shape[0]
    assert (np.diff(ro) >= 0).all()
    for i in range(n):
        row = ids[ro[i] : ro[i + 1]]
        assert (np.diff(row) > 0).all(), f"row {i} not strictly ascending: {row}"


def assert_rows_equal(texts, got, expected) -> None:
    bad = [i for i in range(len(texts)) if got[i] != expected[i]]
    if bad:
        lines = [f"row {i}: text={texts[i]!r} expected={expected[i]} got={got[i]}" for i in bad[:5]]
        raise AssertionError(f"{len(bad)} of {len(texts)} rows differ:\n" + "\n".join(lines))


def valid_entries(entries) -> list[str]:
    """Apply Metadata's rules (distinct, not blank) by dropping what they would reject."""
    seen: dict[str, None] = {}
    for e in entries:
        if e.strip() and e not in seen:
            seen[e] = None
    return list(seen)


# ----------------------------------------------------------------------------- real data


def test_every_shared_caption_matches_reference(
    laion_texts, cc3m_texts, proxy_metadata, proxy_reference
):
    texts = laion_texts + cc3m_texts
    assert len(texts) == 10_000 + 15_833
    expected = [proxy_reference(t) for t in texts]
    ro, ids = match_arrow(pa.array(texts), proxy_metadata, "cpu")
    check_csr(ro, ids, len(texts))
    got = csr_to_lists(ro, ids)
    assert_rows_equal(texts, got, expected)
    # The check is not vacuous: most real captions match many entries.
    assert sum(1 for e in expected if e) > 0.8 * len(texts)
    assert sum(len(e) for e in expected) > 100_000


def test_shared_captions_chunked_large_and_sliced(laion_texts, proxy_metadata, proxy_reference):
    texts = laion_texts[:3000]
    expected = [proxy_reference(t) for t in texts]
    chunked = pa.chunked_array(
        [pa.array(texts[:1000], pa.large_string()), pa.array(texts[1000:], pa.large_string())]
    )
    assert_rows_equal(texts, cpu_lists(chunked, proxy_metadata), expected)
    sliced = pa.array(texts).slice(1234, 777)
    assert_rows_equal(texts[1234:2011], cpu_lists(sliced, proxy_metadata), expected[1234:2011])


def test_references_agree(laion_texts, proxy_entries):
    """The Aho-Corasick reference equals the literal definition (checks the checker)."""
    entries = proxy_entries[:3000] + [e for e in proxy_entries if " " in e][:3000]
    entries += [",", " , ", "rock , paper", " dog", "dog ", "a  b", "Washington, D.C."]
    texts = laion_texts[:300] + [text for text, _, _ in HAND_CASES.values()]
    ac = AhoCorasickReference(entries)
    assert [ac(t) for t in texts] == [reference_match(t, entries) for t in texts]
    assert sum(len(ac(t)) for t in texts) > 100


# ----------------------------------------------------------------------------- hand cases

WASHINGTON = [
    "Washington, D.C.",
    "Washington",
    "D",
    "C",
    "D.C.",
    "Washington , D . C .",
    "Washington ,  D . C .",
]

# (text, entries, expected ids): worked out by hand from DESIGN.md section 2; the test
# also checks each against reference_match.
HAND_CASES = {
    "wrap chars at start and end": (
        ",dog.",
        ["dog", ",", ".", "dog .", ", dog", ",dog", "dog."],
        [0, 1, 2, 3, 4],
    ),
    "two spaces are not one": ("new  york", ["new york", "new  york", "new", "york"], [1, 2, 3]),
    "unspaced wrap chars never match": ("Washington, D.C.", WASHINGTON, [1, 2, 3, 6]),
    "parentheses stay attached": (
        "a (dog) and dog's bone",
        ["dog", "(dog)", "dog's", "dog's bone", "(dog", "bone"],
        [1, 2, 3, 5],
    ),
    "tab newline and CR are spaces": (
        "hot\tdog\nnew\r\nyork",
        ["hot dog", "new york", "new  york", "dog new", "hot\tdog", "york"],
        [0, 2, 3, 5],
    ),
    "lone wrap token without space": (
        "rock,paper,scissors",
        ["rock , paper", "paper , scissors", "rock paper", ",", "rock ,paper", "rock, paper"],
        [0, 1, 3],
    ),
    "lone wrap token after comma-space": (
        "rock, paper",
        ["rock , paper", "rock ,  paper", ",", "paper"],
        [1, 2, 3],
    ),
    "leading space entry at text start": (" dog", [" dog", "dog", "dog "], [0, 1]),
    "leading space entry after comma": ("a, dog", [" dog", "dog", "dog ", "a"], [0, 1, 3]),
    "trailing space entry before wrap at end": ("dog,", [" dog", "dog", "dog ", ","], [1, 3]),
    "trailing space entry before two spaces": ("dog  cat", ["dog ", " cat", "dog"], [0, 1, 2]),
    "leading spaces in text": ("  dog", ["dog", " dog", "  dog", "   dog"], [0, 1, 2]),
    "case sensitive": ("Dog", ["dog", "Dog", "DOG"], [1]),
    "utf-8": (
        "Café au lait à Paris, 東京タワー 😀!",
        ["café", "Café", "Café au lait", "Paris", "東京タワー", "東京", "😀", "lait à Paris"],
        [1, 2, 3, 4, 6, 7],
    ),
    "no unicode normalisation": ("cafe\u0301 crème", ["café", "cafe\u0301", "crème"], [1, 2]),
    "non-breaking space is not a space": ("new\u00a0york", ["new york", "new", "york"], []),
    "ideographic space is not a space": ("東京\u3000タワー", ["東京", "タワー"], []),
    "prefix entries": (
        "new york city",
        ["new", "new york", "new york city", "york city", "york", "new york city hall", "city h"],
        [0, 1, 2, 3, 4],
    ),
    "overlapping multi-token entries": (
        "a b a b a",
        ["a b a", "b a b", "a b a b a b", "a a", "b a b a"],
        [0, 1, 4],
    ),
    "repeated occurrences give one id": ("dog dog, dog. Dog", ["dog", "dog dog", "Dog"], [0, 1, 2]),
    "entry is the whole text": ("dog", ["dog", "do", "og", "dogs"], [0]),
    "entry at start and end": ("dog and cat", ["cat", "dog", "and"], [0, 1, 2]),
    "text is a lone comma": (",", [" , ", ",", "  ,  "], [0, 1]),
    "all seven wrap chars": (
        "`code`;x:y?z!",
        ["code", "x", "y", "z", "` code `", "x : y", "y ? z !", "` code ` ; x", "`code`"],
        [0, 1, 2, 3, 4, 5, 6],
    ),
    "other punctuation stays attached": (
        "well-known a/b 'quoted' [x] {y} \"z\" #tag @me 50% a+b",
        ["well", "known", "well-known", "a/b", "a", "'quoted'", "quoted", "[x]", "#tag", "a+b"],
        [2, 3, 5, 7, 8, 9],
    ),
    "entries with tab or newline never match": (
        "a\tb a\nb",
        ["a\tb", "a\nb", "a b", "b a"],
        [2, 3],
    ),
    "wrap chars inside tokens": (
        "e.g. 3.5 a;b",
        ["e.g.", "e . g .", "e . g", "3 . 5", "3.5", "a ; b", "g .  3"],
        [1, 2, 3, 5, 6],
    ),
    "NUL bytes are ordinary bytes": (
        "a\x00 a \x00 abcdefg\x00",
        ["a\x00", "a", "\x00", "abcdefg", "abcdefg\x00", "a\x00 a"],
        [0, 1, 2, 4, 5],
    ),
    "empty text": ("", ["dog", " , "], []),
    "only separators": (" \t\n\r ", ["dog", ","], []),
}


@pytest.mark.parametrize("text, entries, expected", HAND_CASES.values(), ids=HAND_CASES.keys())
def test_hand_case(text, entries, expected):
    assert reference_match(text, entries) == expected, "hand expectation disagrees with spec"
    assert cpu_lists([text], entries) == [expected]


def test_hand_cases_in_one_column():
    """All hand cases as one column against one metadata (their union)."""
    entries = valid_entries(e for _, ents, _ in HAND_CASES.values() for e in ents)
    texts = [text for text, _, _ in HAND_CASES.values()]
    expected = [reference_match(t, entries) for t in texts]
    assert_rows_equal(texts, cpu_lists(texts, entries), expected)


# ----------------------------------------------------------------------------- long tokens

LONG = "abcdefghijklmnop"  # 16 bytes: the first length stored as a hash


def test_long_token_boundaries():
    entries = [
        "abcdefghijklmno",  # 15 bytes: its own key
        LONG,  # 16
        "abcdefghijklmnoq",  # 16, same prefix and length as LONG
        "abcdefghijklmnopq",  # 17, LONG is its prefix
        "x" * 40,
        "ñ" * 8,  # 16 bytes in 8 characters
        "日本語日本語",  # 18 bytes in 6 characters
        LONG + " abcdefghijklmnoq",  # two long tokens of the same length
        "dog " + "x" * 40 + " cat",
    ]
    texts = [
        LONG,
        "abcdefghijklmnoq",
        "abcdefghijklmnoX",  # same length as two long entries, other bytes: no match
        "abcdefghijklmnopq",
        "abcdefghijklmnopqr",
        "abcdefghijklmno",
        "abcdefghijklmn",
        "x" * 40,
        "x" * 39 + "y",  # same length, last byte differs
        "y" + "x" * 39,  # first byte differs
        "x" * 41,
        "ñ" * 8 + " " + "ñ" * 7 + "n",
        "日本語日本語, 日本語日本",
        LONG + " abcdefghijklmnoq",
        "abcdefghijklmnoq " + LONG,
        f"({LONG})",
        f"{LONG}.{LONG}",
        "dog " + "x" * 40 + " cat",
        "dog " + "x" * 39 + "z cat",
    ]
    expected = [reference_match(t, entries) for t in texts]
    # Spot checks written by hand.
    assert expected[0] == [1] and expected[1] == [2] and expected[2] == []
    assert expected[8] == [] and expected[9] == [] and expected[13] == [1, 2, 7]
    assert expected[18] == []
    assert_rows_equal(texts, cpu_lists(texts, entries), expected)


def test_many_long_tokens_of_one_length():
    rng = random.Random(7)
    alphabet = "ab"
    vocab = sorted({"".join(rng.choice(alphabet) for _ in range(20)) for _ in range(3000)})
    entries = vocab[::2] + [f"{a} {b}" for a, b in zip(vocab[::7], vocab[1::7], strict=False)]
    texts = []
    for _ in range(300):
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 12))]
        texts.append(rng.choice([" ", ", ", " "]).join(words))
    ref = AhoCorasickReference(entries)
    expected = [ref(t) for t in texts]
    assert sum(map(len, expected)) > 500
    assert_rows_equal(texts, cpu_lists(texts, entries), expected)


# ----------------------------------------------------------------------------- sizes


def test_100k_character_texts():
    rng = random.Random(3)
    words = ["dog", "cat", "new", "york", "café", "東京", "a", "b", "the", "xyz", LONG]
    entries = ["dog", "new york", "café au", "東京", "a b a", LONG, "york dog", "zebra"]
    seps = [" ", " ", " ", ", ", ". ", "\n", "  "]
    texts = []
    for _ in range(3):
        parts = []
        size = 0
        while size < 100_000:
            w = rng.choice(words + ["au"]) + rng.choice(seps)
            parts.append(w)
            size += len(w)
        texts.append("".join(parts))
    texts.append("x" * 100_000 + " dog")
    texts.append("dog " + "é" * 100_000)
    expected = [reference_match(t, entries) for t in texts]
    assert_rows_equal(texts, cpu_lists(texts, entries), expected)


def test_text_longer_than_a_kernel_block():
    # One text over 256 KiB between small ones: a block then holds a single huge row.
    big = "new york " * 40_000 + "zebra"
    texts = ["dog", big, "cat", None, "zebra " * 10]
    entries = ["dog", "cat", "new york", "zebra", "york new"]
    expected = [reference_match(t, entries) for t in texts]
    assert expected[1] == [2, 3, 4]
    assert_rows_equal(texts, cpu_lists(texts, entries), expected)


@pytest.mark.parametrize("chunk_bytes, overflows", [(64, True), (512, True), (1 << 16, False)])
def test_rows_denser_than_the_output_guess(monkeypatch, chunk_bytes, overflows):
    # The CPU kernel guesses each chunk's output room from its bytes (one id per 4 bytes,
    # plus 256). A row's occurrences are written before they are made a set, and
    # "a b a b ..." starts up to three occurrences on every 2 bytes, so small chunks of it
    # overflow and go through the exact-room second round, while the sparse rows beside them
    # fit the guess. Big chunks have room for any of these rows.
    from gpu_curate.kernels import cpu

    calls = []

    def spying(build):
        def spy(*args):
            calls.append(args[5].size)
            return build(*args)

        return spy

    monkeypatch.setattr(cpu, "CHUNK_BYTES", chunk_bytes)
    # Both builds (parallel, and serial for one-thread callers) are watched.
    monkeypatch.setattr(cpu, "_exact_room", tuple(spying(b) for b in cpu._exact_room))
    entries = ["a", "b", "a b", "b a", "a b a", "dog"]
    rng = random.Random(11)
    texts = []
    for _ in range(300):
        kind = rng.randrange(4)
        if kind == 0:
            texts.append("a b " * rng.randrange(1, 400))
        elif kind == 1:
            texts.append(None)
        else:
            texts.append("the dog sat " * rng.randrange(0, 30))
    expected = [reference_match(t, entries) for t in texts]
    ro, ids = match_arrow(pa.array(texts), entries, "cpu")
    check_csr(ro, ids, len(texts))
    assert_rows_equal(texts, csr_to_lists(ro, ids), expected)
    assert (sum(calls) > 0) == overflows


def test_more_than_1000_distinct_matches_in_one_text():
    words = [f"w{i:04d}" for i in range(1500)]
    entries = ["zzz"] + words + ["w0001 w0002", "not there"]
    rng = random.Random(5)
    shuffled = words * 2
    rng.shuffle(shuffled)
    text = " ".join(shuffled)
    expected = reference_match(text, entries)
    assert len(expected) >= 1500
    ro, ids = match_arrow(pa.array([text, "w0000", text[:50]]), entries, "cpu")
    check_csr(ro, ids, 3)
    got = csr_to_lists(ro, ids)
    assert got[0] == expected
    assert got[1] == [1]
    assert got[2] == reference_match(text[:50], entries)


def test_rows_of_wrap_chars_only():
    # A wrap character makes two tokens (an empty one and itself): these rows fill the
    # kernel's per-row token scratch (2 * bytes + 1) exactly, back to back.
    texts = [",,,", "", ".", ",.;:?!`", "!!", None, "?", "``` `", ",", ", ,"] * 20
    entries = [",", ".", " , ", "! !", "!  !", "` `", "`  `", " ` ", "? ", " ?", ", ,"]
    expected = [reference_match(t, entries) for t in texts]
    assert any(expected)
    assert_rows_equal(texts, cpu_lists(texts, entries), expected)


def test_bytes_under_a_null_are_not_read():
    # Arrow lets a null slot span bytes; the row must still match nothing.
    data = b"dogcatdog"
    offsets = np.array([0, 3, 6, 9], np.int32).tobytes()
    validity = bytes([0b101])  # row 1 ("cat") is null
    arr = pa.Array.from_buffers(
        pa.string(), 3, [pa.py_buffer(validity), pa.py_buffer(offsets), pa.py_buffer(data)], 1
    )
    assert arr.to_pylist() == ["dog", None, "dog"]
    assert cpu_lists(arr, ["dog", "cat"]) == [[0], [], [0]]
    assert cpu_lists(arr.slice(1), ["dog", "cat"]) == [[], [0]]


def test_read_only_buffers(tmp_path):
    # Memory-mapped Arrow IPC files give immutable buffers (read-only NumPy views).
    import pyarrow.ipc as ipc

    path = tmp_path / "texts.arrow"
    with ipc.new_file(path, pa.schema([("t", pa.large_string())])) as w:
        w.write_table(pa.table({"t": pa.array(ROWS, pa.large_string())}))
    with pa.memory_map(str(path)) as source:
        col = ipc.open_file(source).read_all().column("t")
        assert not col.chunk(0).buffers()[2].is_mutable
        assert cpu_lists(col, ENTRIES) == ROWS_EXPECTED
        assert cpu_lists(col.slice(3, 11), ENTRIES) == ROWS_EXPECTED[3:14]


def test_many_rows():
    rng = random.Random(11)
    entries = ["dog", "cat", "new york", "a b", "café"]
    pool = ["dog", "cat", "new", "york", "a", "b", "café", ",", "x"]
    texts = [
        " ".join(rng.choice(pool) for _ in range(rng.randint(0, 8)))
        if rng.random() > 0.05
        else None
        for _ in range(50_000)
    ]
    expected = [reference_match(t, entries) for t in texts]
    assert_rows_equal(texts, cpu_lists(texts, entries), expected)


# ----------------------------------------------------------------------------- arrow inputs

ENTRIES = ["dog", "new york", "café", "a b", LONG]
ROWS = [
    "a dog",
    None,
    "new york, new york",
    "",
    "café!",
    None,
    None,
    "a b a b",
    LONG + ".",
    "dog",
    None,
    "nothing here",
    "new  york",
    "Dog",
    "a\tb",
    None,
    "dog new york",
    "",
    "x " + LONG,
    None,
    "café",
    "a b",
    "dog dog",
]
ROWS_EXPECTED = [reference_match(t, ENTRIES) for t in ROWS]


def test_null_and_empty_texts():
    texts = [None, "", "dog", None, "", " "]
    ro, ids = match_arrow(pa.array(texts, pa.string()), ENTRIES, "cpu")
    check_csr(ro, ids, len(texts))
    assert csr_to_lists(ro, ids) == [[], [], [0], [], [], []]
    assert cpu_lists([None, None], ENTRIES) == [[], []]
    assert cpu_lists(pa.array([None, None], pa.string()), ENTRIES) == [[], []]


def test_empty_input():
    for arr in [pa.array([], pa.string()), pa.array([], pa.large_string())]:
        ro, ids = match_arrow(arr, ENTRIES, "cpu")
        check_csr(ro, ids, 0)
    assert cpu_lists([], ENTRIES) == []
    assert cpu_lists(pa.chunked_array([], pa.string()), ENTRIES) == []


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()], ids=["int32", "int64"])
def test_offset_widths(typ):
    ro, ids = match_arrow(pa.array(ROWS, typ), ENTRIES, "cpu")
    check_csr(ro, ids, len(ROWS))
    assert csr_to_lists(ro, ids) == ROWS_EXPECTED


def test_string_view():
    if not hasattr(pa, "string_view"):
        pytest.skip("pyarrow has no string_view type")
    arr = pa.array(ROWS, pa.string_view())
    assert cpu_lists(arr, ENTRIES) == ROWS_EXPECTED


SLICES = [(3, 10), (0, 0), (1, 1), (5, 2), (0, len(ROWS)), (7, 9), (9, 14), (len(ROWS) - 1, 1)]


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()], ids=["int32", "int64"])
@pytest.mark.parametrize("start, length", SLICES)
def test_sliced_arrays_with_nulls(typ, start, length):
    arr = pa.array(ROWS, typ).slice(start, length)
    assert arr.offset == start
    ro, ids = match_arrow(arr, ENTRIES, "cpu")
    check_csr(ro, ids, length)
    assert csr_to_lists(ro, ids) == ROWS_EXPECTED[start : start + length]


def test_slice_of_a_slice_and_slices_without_nulls():
    arr = pa.array(ROWS).slice(2, 18).slice(5, 9)
    assert cpu_lists(arr, ENTRIES) == ROWS_EXPECTED[7:16]
    dense = [t for t in ROWS if t is not None]
    dense_expected = [reference_match(t, ENTRIES) for t in dense]
    arr = pa.array(dense)
    assert arr.buffers()[0] is None
    assert cpu_lists(arr.slice(3, 9), ENTRIES) == dense_expected[3:12]
    # A slice holding no nulls of an array that has some: the bitmap is still there.
    assert ROWS[20:23].count(None) == 0
    assert cpu_lists(pa.array(ROWS).slice(20, 3), ENTRIES) == ROWS_EXPECTED[20:23]


def test_chunked_array():
    chunks = [[], ROWS[:5], ROWS[5:6], ROWS[6:17], ROWS[17:], []]
    for typ in [pa.string(), pa.large_string()]:
        arr = pa.chunked_array([pa.array(c, typ) for c in chunks], typ)
        ro, ids = match_arrow(arr, ENTRIES, "cpu")
        check_csr(ro, ids, len(ROWS))
        assert csr_to_lists(ro, ids) == ROWS_EXPECTED
    # Chunks that are themselves slices.
    base = pa.array(ROWS)
    arr = pa.chunked_array([base.slice(3, 4), base.slice(9, 10), base.slice(0, 2)])
    assert cpu_lists(arr, ENTRIES) == ROWS_EXPECTED[3:7] + ROWS_EXPECTED[9:19] + ROWS_EXPECTED[:2]


def test_chunked_array_with_an_empty_chunk_in_the_middle():
    arr = pa.chunked_array([pa.array(["dog"]), pa.array([], pa.string()), pa.array(["a dog"])])
    ro, ids = match_arrow(arr, ["dog"], "cpu")
    assert ro.tolist() == [0, 1, 2]
    assert ids.tolist() == [0, 0]


def test_pandas_series():
    series = pd.Series([t if t is not None else np.nan for t in ROWS], dtype=object)
    assert cpu_lists(series, ENTRIES) == ROWS_EXPECTED
    assert cpu_lists(pd.Series(ROWS, dtype="string"), ENTRIES) == ROWS_EXPECTED
    sliced = pd.Series(ROWS, dtype=object).iloc[3:12]
    assert cpu_lists(sliced, ENTRIES) == ROWS_EXPECTED[3:12]


def test_list_input_with_none():
    assert cpu_lists(ROWS, ENTRIES) == ROWS_EXPECTED
    assert cpu_lists(tuple(ROWS), ENTRIES) == ROWS_EXPECTED
    assert cpu_lists(iter(ROWS), ENTRIES) == ROWS_EXPECTED


def test_metadata_object_and_list_agree():
    md = Metadata(ENTRIES)
    assert cpu_lists(ROWS, md) == cpu_lists(ROWS, list(ENTRIES)) == ROWS_EXPECTED


def test_invalid_metadata_list_is_rejected():
    with pytest.raises(MetadataError):
        match_texts(["dog"], ["dog", "dog"], "cpu")
    with pytest.raises(MetadataError):
        match_texts(["dog"], ["dog", " "], "cpu")


# ----------------------------------------------------------------------------- errors


@pytest.mark.skipif(gpu_available(), reason="a GPU is available here")
def test_gpu_backend_without_gpu_is_one_clear_sentence():
    for call in (
        lambda: match_texts(["dog"], ["dog"], "gpu"),
        lambda: match_arrow(pa.array(["dog"]), ["dog"], "gpu"),
    ):
        with pytest.raises(BackendError) as info:
            call()
        msg = str(info.value)
        assert "gpu" in msg.lower()
        assert "\n" not in msg and 20 < len(msg) < 250, msg


def test_unknown_backend():
    with pytest.raises(BackendError, match="unknown backend"):
        match_texts(["dog"], ["dog"], "tpu")


@pytest.mark.parametrize(
    "texts",
    [
        [1, 2],
        ["dog", 3],
        ["dog", b"dog"],
        "a dog",
        42,
        pd.Series([1, 2]),
        pa.array([1, 2]),
        pa.array([b"dog"], pa.binary()),
        pa.chunked_array([pa.array([1.5])]),
    ],
    ids=lambda t: type(t).__name__,
)
def test_match_texts_rejects_non_strings(texts):
    with pytest.raises(CurateError):
        match_texts(texts, ["dog"], "cpu")


def test_match_arrow_rejects_non_arrow():
    with pytest.raises(CurateError):
        match_arrow(["dog"], ["dog"], "cpu")


# ----------------------------------------------------------------------------- properties

TOKENS = [
    "a",
    "b",
    "ab",
    "new",
    "york",
    "dog",
    "Dog",
    "dog's",
    "(dog)",
    "x-y",
    "a/b",
    "café",
    "日本",
    "😀",
    LONG,
    "abcdefghijklmnoq",
    "ñññññññññ",
]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\u00a0", *",.;:?!`", ", ", " ,"]
# Text alphabet: the seven wrap characters, tab/LF/CR, spaces, attached punctuation and
# non-ASCII, over few letters so that substrings recur.
ALPHABET = "ab  " + ",.;:?!`" + "\t\n\r" + "'()-/" + "é日😀\u00a0"

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _join(tokens: list[str], seps: list[str]) -> str:
    return "".join(t + s for t, s in zip(tokens, seps, strict=False)) + tokens[-1]


# Texts: pool tokens with a separator between each two (mostly one space).
token_runs = st.lists(st.sampled_from(TOKENS + list(",.!")), min_size=1, max_size=16)
text_separators = st.lists(
    st.sampled_from([" "] * 12 + SEPARATORS + [""]), min_size=16, max_size=16
)
edge_separators = st.sampled_from(["", "", "", *SEPARATORS])
entry_joiners = st.lists(
    st.sampled_from([" "] * 10 + ["  ", ",", ", ", "\t"]), min_size=16, max_size=16
)


@PROPERTY
@given(data=st.data())
def test_property_token_pool(data):
    runs = data.draw(st.lists(token_runs, min_size=1, max_size=10))
    texts = [
        data.draw(edge_separators)
        + _join(r, data.draw(text_separators))
        + data.draw(edge_separators)
        for r in runs
    ]
    texts += data.draw(st.lists(st.none(), max_size=2))
    # Entries: runs of 1-4 tokens of the texts (so that they often match), some with one
    # token swapped or an odd joiner, plus a few from the pool.
    raw = []
    for _ in range(data.draw(st.integers(1, 12))):
        r = data.draw(st.sampled_from(runs))
        i = data.draw(st.integers(0, len(r) - 1))
        toks = list(r[i : i + data.draw(st.integers(1, 4))])
        if data.draw(st.booleans()) and data.draw(st.booleans()):
            toks[data.draw(st.integers(0, len(toks) - 1))] = data.draw(st.sampled_from(TOKENS))
        seps = data.draw(entry_joiners) if data.draw(st.booleans()) else [" "] * 16
        raw.append(data.draw(st.sampled_from(["", "", "", " "])) + _join(toks, seps))
    raw += data.draw(st.lists(st.sampled_from(TOKENS), max_size=3))
    entries = valid_entries(raw)
    expected = [reference_match(t, entries) for t in texts]
    assert cpu_lists(texts, entries) == expected


@PROPERTY
@given(data=st.data())
def test_property_raw_alphabet_with_substring_entries(data):
    texts = data.draw(st.lists(st.text(ALPHABET, max_size=30), min_size=1, max_size=8))
    # Entries cut from the texts and from their spaced form, so that they often match.
    sources = texts + [spacing(t)[1:-1] for t in texts]
    raw = []
    for _ in range(data.draw(st.integers(1, 10))):
        src = data.draw(st.sampled_from(sources))
        i = data.draw(st.integers(0, len(src)))
        j = data.draw(st.integers(i, min(len(src), i + 12)))
        raw.append(src[i:j])
    raw += data.draw(st.lists(st.text(ALPHABET, min_size=1, max_size=6), max_size=4))
    entries = valid_entries(raw)
    if not entries:
        entries = ["a"]
    expected = [reference_match(t, entries) for t in texts]
    assert cpu_lists(texts, entries) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_sliced_chunked_arrays(data):
    entries = ["a", "b a", "ab", "日本", LONG, ",", "new york"]
    rows = data.draw(
        st.lists(st.one_of(st.none(), st.builds(_join, token_runs, text_separators)), max_size=30)
    )
    expected = [reference_match(t, entries) for t in rows]
    typ = data.draw(st.sampled_from([pa.string(), pa.large_string()]))
    start = data.draw(st.integers(0, len(rows)))
    length = data.draw(st.integers(0, len(rows) - start))
    cut1 = data.draw(st.integers(0, length))
    cut2 = data.draw(st.integers(cut1, length))
    base = pa.array(rows, typ)
    pieces = [(0, cut1), (cut1, cut2), (cut2, length)]
    arr = pa.chunked_array([base.slice(start + a, b - a) for a, b in pieces], typ)
    ro, ids = match_arrow(arr, entries, "cpu")
    check_csr(ro, ids, length)
    assert csr_to_lists(ro, ids) == expected[start : start + length]


# ---------------------------------------------------------------- cuDF's device buffers


class _TypeId(enum.IntEnum):
    """pylibcudf.TypeId's shape (an IntEnum, libcudf's values): str() gives the number."""

    INT32 = 3
    INT64 = 4
    STRING = 23


class _PlcColumn:
    """The pylibcudf.Column calls cudf_string_buffers makes, over host arrays."""

    def __init__(self, tid, size, data, mask=None, null_count=0, offset=0, children=()):
        self._tid, self._size, self._data, self._mask = tid, size, data, mask
        self._null_count, self._offset, self._children = null_count, offset, list(children)

    def type(self):
        tid = self._tid
        return type("DataType", (), {"id": lambda self: tid})()

    def size(self):
        return self._size

    def data(self):
        return self._data

    def null_mask(self):
        return self._mask

    def null_count(self):
        return self._null_count

    def offset(self):
        return self._offset

    def children(self):
        return self._children


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("start", [0, 1])
def test_cudf_string_buffers_read_int32_and_int64_offsets(monkeypatch, large, start):
    # Without cuDF: NumPy stands in for CuPy and a pylibcudf-shaped column for the Series'
    # (libcudf gives large strings INT64 offsets). The device kernel reads the same CSR
    # inputs the CPU kernel gets here.
    import sys
    import types

    from gpu_curate.kernels import cpu
    from gpu_curate.match import cudf_string_buffers

    fake_cupy = types.SimpleNamespace(asarray=np.asarray, zeros=np.zeros)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setitem(sys.modules, "pylibcudf", types.SimpleNamespace(TypeId=_TypeId))
    texts = ["x", "a new york dog", "cat", None, "new york"]
    arr = pa.array(texts, pa.large_string())
    validity, offsets_buf, chars = (np.frombuffer(b, np.uint8).copy() for b in arr.buffers())
    offsets = np.frombuffer(offsets_buf, np.int64)
    if not large:
        offsets = offsets.astype(np.int32)
    tid = _TypeId.INT64 if large else _TypeId.INT32
    child = _PlcColumn(tid, offsets.size, offsets.view(np.uint8))
    n = len(texts) - start  # (a sliced Series: the column's offset, the whole buffers)
    column = _PlcColumn(_TypeId.STRING, n, chars, validity, 1, start, [child])
    series = types.SimpleNamespace(to_pylibcudf=lambda: (column, {}))
    md = Metadata(["dog", "new york", "cat"])
    got = csr_to_lists(*cpu.match_rows(*cudf_string_buffers(series), md.tables))
    assert got == cpu_lists(texts[start:], md) == [[], [0, 1], [2], [], [1]][start:]


def test_cudf_columns_without_strings_or_offsets(monkeypatch):
    # A categorical Series' column holds its codes (INT32, no children): read as strings,
    # a bare IndexError; it is left to the host route (None), which decodes it. An
    # all-null string column may come without an offsets child (pylibcudf).
    import sys
    import types

    from gpu_curate.kernels import cpu
    from gpu_curate.match import cudf_string_buffers

    monkeypatch.setitem(
        sys.modules, "cupy", types.SimpleNamespace(asarray=np.asarray, zeros=np.zeros)
    )
    monkeypatch.setitem(sys.modules, "pylibcudf", types.SimpleNamespace(TypeId=_TypeId))

    def series(column):
        return types.SimpleNamespace(to_pylibcudf=lambda: (column, {}))

    codes = _PlcColumn(_TypeId.INT32, 3, np.array([0, 1, 0], np.int32).view(np.uint8))
    assert cudf_string_buffers(series(codes)) is None
    md = Metadata(["dog"])
    nulls = _PlcColumn(_TypeId.STRING, 3, None, np.zeros(1, np.uint8), null_count=3)
    got = csr_to_lists(*cpu.match_rows(*cudf_string_buffers(series(nulls)), md.tables))
    assert got == [[], [], []]


def test_device_tables_are_kept_per_device():
    # (A notebook that switched to a second GPU got the tables on the first one.)
    import types

    from gpu_curate.match import device_tables

    current = [0]
    runtime = types.SimpleNamespace(getDevice=lambda: current[0])
    xp = types.SimpleNamespace(
        __name__="cupy", asarray=np.asarray, cuda=types.SimpleNamespace(runtime=runtime)
    )
    md = Metadata(["dog"])
    first = device_tables(md, xp)
    assert device_tables(md, xp) is first
    current[0] = 1
    second = device_tables(md, xp)
    assert second is not first and device_tables(md, xp) is second
