"""Metadata: validation, file loading, fingerprint and table compilation."""

from __future__ import annotations

import itertools
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import SPACE_CHARS, WRAP_CHARS, reference_match
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_curate.errors import CurateError, MetadataError
from gpu_curate.match import match_texts
from gpu_curate.metadata import Metadata

# ----------------------------------------------------------------------------- validation


def test_valid_entries_kept_exactly():
    entries = ["dog", "new york", " leading", "trailing ", "a  b", "Café", "東京", "rock , paper"]
    md = Metadata(entries)
    assert list(md.entries) == entries
    assert len(md) == len(entries)
    assert md[1] == "new york"


def test_metadata_error_is_a_curate_error_and_value_error():
    assert issubclass(MetadataError, CurateError)
    assert issubclass(MetadataError, ValueError)


def test_duplicate_names_entry_and_both_ids():
    with pytest.raises(MetadataError) as info:
        Metadata(["dog", "cat", "bird", "dog"])
    msg = str(info.value)
    assert "'dog'" in msg
    assert re.search(r"\b0\b.*\b3\b", msg), msg
    assert "duplicate" in msg


def test_duplicates_are_exact_not_case_or_space_folded():
    # Different strings are different entries: no folding of case or spaces.
    Metadata(["dog", "Dog", "dog ", " dog", "new york", "new  york"])


def test_several_duplicates_all_named():
    with pytest.raises(MetadataError) as info:
        Metadata(["a", "b", "a", "c", "b"])
    msg = str(info.value)
    assert "'a' at ids 0 and 2" in msg
    assert "'b' at ids 1 and 4" in msg


@pytest.mark.parametrize(
    "entries, bad_ids",
    [
        ([""], [0]),
        (["dog", " "], [1]),
        (["dog", "\t", "cat", " \n \r "], [1, 3]),
    ],
)
def test_empty_or_whitespace_only_entries(entries, bad_ids):
    with pytest.raises(MetadataError) as info:
        Metadata(entries)
    msg = str(info.value)
    assert "empty or whitespace-only" in msg
    for i in bad_ids:
        assert re.search(rf"\b{i}\b", msg), msg


@pytest.mark.parametrize(
    "entries, bad_ids, kind",
    [
        (["dog", 1], [1], "int"),
        (["dog", None, "cat"], [1], "NoneType"),
        ([b"dog"], [0], "bytes"),
        (["a", ["b"], 2.5], [1, 2], "list"),
    ],
)
def test_non_string_entries(entries, bad_ids, kind):
    with pytest.raises(MetadataError) as info:
        Metadata(entries)
    msg = str(info.value)
    assert "not strings" in msg
    assert kind in msg
    for i in bad_ids:
        assert re.search(rf"\b{i}\b", msg), msg


def test_unicode_whitespace_only_entries_are_blank():
    # "\u3000" (ideographic space), "\xa0" (no-break space) and "\u2003" (em space) are
    # whitespace to str.strip, so these entries are blank.
    with pytest.raises(MetadataError, match=r"2 metadata entries are empty.* ids 1, 2$"):
        Metadata(["dog", "\u3000", "\xa0 \u2003", "caf\xe9 \u3000x"])


def test_lone_surrogates_are_named():
    # JSON's "\ud800" reads as a lone surrogate, which no UTF-8 text holds.
    with pytest.raises(MetadataError, match=r"2 metadata entries are not valid Unicode .* 1, 3$"):
        Metadata(["dog", "\ud800", "cat", "x\udc00y"])
    with pytest.raises(MetadataError, match=r": 1 metadata entry is not valid Unicode .* 3$"):
        Metadata(["dog", "cat", "bird", "x\udc00y"])


def test_texts_with_lone_surrogates_match_what_their_other_characters_match():
    import pandas as pd

    entries = ["dog", "cat", "\U0001f600", "\ufffd \ufffd"]
    # (Each surrogate reads as U+FFFD: "cat\ufffd" is no "cat". A high and a low one in a
    # row are two, not the emoji they would encode in UTF-16.)
    texts = ["a \ud800 dog", None, "cat\udfff cat", "a \ud83d\ude00 b", "\ud83d \ude00"]
    want = [[0], [], [1], [], [3]]
    assert match_texts(texts, entries, "cpu") == want
    assert match_texts(pd.Series(texts, dtype=object), entries, "cpu") == want


def test_numpy_strings_are_strings():
    md = Metadata(np.array(["dog", "new york"]))
    assert md.entries == ("dog", "new york")


_ENTRY = st.one_of(
    st.text(alphabet=["a", "b", " ", "\t", "\u3000", "\xa0"], max_size=3),
    st.integers(0, 2),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ENTRY, max_size=8))
def test_validation_agrees_with_its_plain_definition(entries):
    # The definition, written out: at least one, strings, none blank, all distinct.
    strings = all(isinstance(e, str) for e in entries)
    valid = strings and all(e.strip() for e in entries) and len(set(entries)) == len(entries)
    if valid and entries:
        assert Metadata(entries).entries == tuple(entries)
        return
    with pytest.raises(MetadataError) as info:
        Metadata(entries)
    msg = str(info.value)
    if not entries:
        assert "holds no entries" in msg
    elif not strings:
        assert "not strings" in msg
    elif not all(e.strip() for e in entries):
        ids = [i for i, e in enumerate(entries) if not e.strip()]
        said = "1 metadata entry is" if len(ids) == 1 else f"{len(ids):,} metadata entries are"
        assert f"{said} empty or whitespace-only" in msg
    else:
        assert "duplicate" in msg


@pytest.mark.parametrize("value", ["dog", b"dog", 42, {"dog": 0}, None])
def test_metadata_must_be_a_list(value):
    with pytest.raises(MetadataError):
        Metadata(value)


def test_source_named_in_errors():
    with pytest.raises(MetadataError, match="my-list"):
        Metadata(["a", "a"], source="my-list")


# ----------------------------------------------------------------------------- files


def test_json_file_roundtrip(tmp_path):
    entries = ["dog", "new york", " a  b ", "Café", "😀", "rock , paper"]
    p = tmp_path / "m.json"
    p.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    md = Metadata.from_file(p)
    assert list(md.entries) == entries
    assert str(p) in md.source
    assert Metadata.from_file(str(p)).entries == md.entries


@pytest.mark.parametrize(
    "content, word",
    [
        ('{"dog": 0}', "object"),
        ('"dog"', "str"),
        ("42", "int"),
        ("null", "NoneType"),
    ],
)
def test_json_value_not_a_list(tmp_path, content, word):
    p = tmp_path / "m.json"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(MetadataError) as info:
        Metadata.from_file(p)
    msg = str(info.value)
    assert "list" in msg and word in msg, msg
    assert str(p) in msg


def test_json_file_with_bad_entries_names_file(tmp_path):
    p = tmp_path / "m.json"
    p.write_text('["dog", "cat", "dog", 3]', encoding="utf-8")
    with pytest.raises(MetadataError) as info:
        Metadata.from_file(p)
    assert str(p) in str(info.value)


@pytest.mark.parametrize("content", ['["dog", "cat"', "dog\ncat\n", "", "[1,]"])
def test_not_json(tmp_path, content):
    p = tmp_path / "m.json"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(MetadataError) as info:
        Metadata.from_file(p)
    msg = str(info.value)
    assert "not valid JSON" in msg and str(p) in msg
    assert "line" in msg


def test_a_metadata_path_under_home(tmp_path, monkeypatch):
    # (--metadata '~/md.json' was "not found", where inputs and --out take "~".)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "md.json").write_text(json.dumps(["dog"]))
    md = Metadata.from_file("~/md.json")
    assert md.entries == ("dog",) and md.path == str(tmp_path / "md.json")


def test_a_metadata_file_at_a_url(tmp_path):
    # (As the inputs may be: Path folded "s3://b/m.json" into "s3:/b/m.json", not found.)
    import fsspec

    entries = ["dog", "new york"]
    (tmp_path / "m.json").write_text(json.dumps(entries))
    (tmp_path / "m.txt").write_bytes(b"\xef\xbb\xbfdog\r\nnew york\r\n\r\n")
    for name in ("m.json", "m.txt"):
        url = f"file://{tmp_path / name}"
        assert Metadata.from_file(url).entries == tuple(entries)
        assert Metadata.from_file(url).source == url
    fsspec.filesystem("memory").pipe("/md/m.json", json.dumps(entries).encode())
    assert Metadata.from_file("memory://md/m.json").entries == tuple(entries)
    for url, what in [
        ("memory://md/nope.json", "metadata file not found: memory://md/nope.json"),
        ("memory://md", "metadata path is a folder, not a file: memory://md"),
        (f"file://{tmp_path}", f"metadata path is a folder, not a file: file://{tmp_path}"),
    ]:
        with pytest.raises(MetadataError, match=f"^{re.escape(what)}$"):
            Metadata.from_file(url)
    (tmp_path / "bad.json").write_text('["dog", 3]')
    with pytest.raises(MetadataError, match=re.escape(f"file://{tmp_path / 'bad.json'}")):
        Metadata.from_file(f"file://{tmp_path / 'bad.json'}")


def test_json_nested_too_deeply_is_one_line(tmp_path):
    # (A RecursionError traceback before.)
    p = tmp_path / "m.json"
    p.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(MetadataError, match=r": nested too deeply to read; metadata is a JSON"):
        Metadata.from_file(p)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.json"
    with pytest.raises(MetadataError) as info:
        Metadata.from_file(p)
    assert "not found" in str(info.value) and str(p) in str(info.value)


def test_folder_is_not_a_file(tmp_path):
    with pytest.raises(MetadataError, match="folder"):
        Metadata.from_file(tmp_path)


def test_not_utf8(tmp_path):
    p = tmp_path / "m.json"
    p.write_bytes(b'["caf\xe9"]')
    with pytest.raises(MetadataError, match="UTF-8"):
        Metadata.from_file(p)


def test_txt_keeps_inner_and_trailing_spaces(tmp_path):
    p = tmp_path / "m.txt"
    p.write_bytes(" new york \nrock , paper\na  b\n\tdog\ncafé  \n".encode())
    md = Metadata.from_file(p)
    assert list(md.entries) == [" new york ", "rock , paper", "a  b", "\tdog", "café  "]


def test_txt_without_final_newline(tmp_path):
    p = tmp_path / "m.txt"
    p.write_bytes(b"dog\ncat")
    assert list(Metadata.from_file(p).entries) == ["dog", "cat"]


def test_txt_crlf(tmp_path):
    p = tmp_path / "m.TXT"
    p.write_bytes(b"dog\r\nnew york \r\ncat\r\n")
    assert list(Metadata.from_file(p).entries) == ["dog", "new york ", "cat"]


def test_txt_blank_line_is_an_error(tmp_path):
    # Between entries (the ids after it would not be line numbers less one); at the end of
    # the file blank lines are no entries.
    p = tmp_path / "m.txt"
    p.write_bytes(b"dog\n\ncat\n \t\nbird\n   \n\r\n\n")
    with pytest.raises(MetadataError) as info:
        Metadata.from_file(p)
    msg = str(info.value)
    assert "empty or whitespace-only" in msg and str(p) in msg
    assert msg.endswith("on lines 2, 4"), msg  # line numbers
    p.write_bytes(b"dog\ncat\n\n  \r\n\n")
    assert list(Metadata.from_file(p).entries) == ["dog", "cat"]


def test_a_byte_order_mark_is_not_part_of_the_first_entry(tmp_path):
    for name, data in (("m.txt", b"dog\ncat\n"), ("m.json", b'["dog", "cat"]')):
        p = tmp_path / name
        p.write_bytes(b"\xef\xbb\xbf" + data)  # (as Windows editors save UTF-8)
        assert list(Metadata.from_file(p).entries) == ["dog", "cat"]


@pytest.mark.parametrize("name, data", [("m.json", b"[]"), ("m.txt", b""), ("m.txt", b"\n\n")])
def test_metadata_without_entries_is_an_error(tmp_path, name, data):
    # A run on it would match nothing and look done.
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(
        MetadataError, match=f"^{re.escape(str(p))}: the metadata holds no entries$"
    ):
        Metadata.from_file(p)
    with pytest.raises(MetadataError, match="holds no entries"):
        Metadata([])


def test_txt_duplicates(tmp_path):
    p = tmp_path / "m.txt"
    p.write_bytes(b"dog\ncat\ndog\r\n")
    with pytest.raises(MetadataError, match=r"'dog' at ids 0 and 2"):
        Metadata.from_file(p)


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint_stable():
    entries = ["dog", "new york", "Café", "東京"]
    a, b = Metadata(entries), Metadata(list(entries), source="elsewhere")
    assert a.fingerprint == b.fingerprint
    assert re.fullmatch(r"[0-9a-f]{64}", a.fingerprint)
    assert pickle.loads(pickle.dumps(a)).fingerprint == a.fingerprint


def test_fingerprint_same_in_another_process():
    entries = ["dog", "new york", "Café", "東京"]
    code = (
        "import json, sys; from gpu_curate.metadata import Metadata; "
        "print(Metadata(json.loads(sys.argv[1])).fingerprint)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(entries)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == Metadata(entries).fingerprint


@pytest.mark.parametrize(
    "other",
    [
        ["new york", "dog"],  # order
        ["dog", "new  york"],  # content
        ["dog", "new york "],  # trailing space
        ["Dog", "new york"],  # case
        ["dog"],  # fewer
        ["dog", "new york", "cat"],  # more
        ["dognew", "york"],  # same characters, other split
        ["dog new york"],
    ],
)
def test_fingerprint_sensitive_to_order_and_content(other):
    assert Metadata(other).fingerprint != Metadata(["dog", "new york"]).fingerprint


# ----------------------------------------------------------------------------- tables


def _unmatchable(entry: str) -> bool:
    """DESIGN.md section 2: a token holding tab/LF/CR, or a wrap character next to other
    characters, never occurs in spacing(text), so such an entry can never match; neither
    can two wrap characters one space apart (spacing leaves at least two spaces between
    any two of them)."""
    tokens = entry.split(" ")
    for tok in tokens:
        if any(c in SPACE_CHARS for c in tok):
            return True
        if len(tok) > 1 and any(c in WRAP_CHARS for c in tok):
            return True
    wrap = [len(tok) == 1 and tok in WRAP_CHARS for tok in tokens]
    return any(a and b for a, b in itertools.pairwise(wrap))


def test_small_tables():
    entries = ["dog", "Washington, D.C.", "rock , paper", "a\tb", "new york", "e.g", "!"]
    entries += [", ,", "yes ! ?", "a , b , c"]
    t = Metadata(entries).tables
    assert t.n_entries == len(entries)
    assert sorted(t.unmatchable.tolist()) == [1, 3, 5, 7, 8]
    assert t.max_tokens == 5
    # The ones called unmatchable really match nothing, even texts made for them.
    texts = [", ,", ",,", ", , ", "yes!?", "yes ! ?", "a,b,c", "dog, rock,paper!"]
    got = match_texts(texts, entries, "cpu")
    assert got == [reference_match(x, entries) for x in texts]
    assert not {7, 8} & {e for row in got for e in row}
    assert got[5] == [9] and got[6] == [0, 2, 6]


def test_tables_compile_for_shared_proxy(proxy_entries, proxy_metadata):
    md = proxy_metadata
    assert len(md) == len(proxy_entries) == 374_565
    t = md.tables
    assert md.tables is t  # compiled once per process
    assert t.n_entries == len(md)
    assert t.max_tokens == max(len(e.split(" ")) for e in proxy_entries if not _unmatchable(e))
    expected = [i for i, e in enumerate(proxy_entries) if _unmatchable(e)]
    assert t.unmatchable.tolist() == expected
    assert t.nbytes > 0


# ----------------------------------------------------------------------------- table cache


def _fresh(entries):
    """A Metadata whose tables are not in this process's memory cache."""
    from gpu_curate import metadata as mdmod

    md = Metadata(entries)
    mdmod._TABLES.pop(md.fingerprint, None)
    return md


CACHE_ENTRIES = ["dog", "new york", "new york city", "a" * 20, "cat , dog"]
CACHE_TEXTS = ["a dog in new york city", "cat, dog", "x " + "a" * 20 + " y", None]


def test_tables_are_cached_on_disk_and_reused(tmp_path, monkeypatch):
    from gpu_curate import metadata as mdmod
    from gpu_curate.kernels import tables as tmod

    monkeypatch.setenv("GPU_CURATE_CACHE_DIR", str(tmp_path))
    expected = [reference_match(t, CACHE_ENTRIES) for t in CACHE_TEXTS]
    md = _fresh(CACHE_ENTRIES)
    assert match_texts(CACHE_TEXTS, md, "cpu") == expected
    files = list(tmp_path.glob("tables-*.npz"))
    assert len(files) == 1 and md.fingerprint[:32] in files[0].name
    assert not list(tmp_path.glob(".*tmp")), "a temporary file was left behind"

    # A new process would find the file: nothing is rebuilt, the results are the same.
    def no_build(entries):
        raise AssertionError("tables rebuilt although a cached copy exists")

    monkeypatch.setattr(tmod, "build_tables", no_build)
    md2 = _fresh(CACHE_ENTRIES)
    assert match_texts(CACHE_TEXTS, md2, "cpu") == expected
    assert mdmod.compiled_tables(md2).max_tokens == 3


def test_corrupt_or_foreign_cache_file_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CURATE_CACHE_DIR", str(tmp_path))
    expected = [reference_match(t, CACHE_ENTRIES) for t in CACHE_TEXTS]
    md = _fresh(CACHE_ENTRIES)
    match_texts(CACHE_TEXTS, md, "cpu")
    (path,) = tmp_path.glob("tables-*.npz")
    for damage in (b"not an npz file", path.read_bytes()[:100]):
        path.write_bytes(damage)
        assert match_texts(CACHE_TEXTS, _fresh(CACHE_ENTRIES), "cpu") == expected
        assert path.stat().st_size > 1000, "the damaged file was not replaced"
    # Another metadata's tables under this name (inconsistent fields) are not trusted.
    other = _fresh(["zebra", "giraffe"])
    match_texts(["zebra"], other, "cpu")
    (other_path,) = [p for p in tmp_path.glob("tables-*.npz") if p != path]
    path.write_bytes(other_path.read_bytes())
    assert match_texts(CACHE_TEXTS, _fresh(CACHE_ENTRIES), "cpu") == expected


def test_cache_drops_stale_layouts_and_keeps_the_most_recently_used(tmp_path, monkeypatch):
    from gpu_curate import metadata as mdmod

    monkeypatch.setenv("GPU_CURATE_CACHE_DIR", str(tmp_path))
    md = _fresh(CACHE_ENTRIES)
    key = md.fingerprint[:32]
    stale = tmp_path / f"tables-{key}-0123456789abcdef.npz"  # an older gpu-curate's layout
    stale.write_bytes(b"old")
    others = []
    for i in range(mdmod.CACHE_KEPT + 2):  # other metadata, used at times 1000, 1001, ...
        f = tmp_path / f"tables-{i:032x}-0123456789abcdef.npz"
        f.write_bytes(b"other")
        os.utime(f, (1000 + i, 1000 + i))
        others.append(f)
    match_texts(CACHE_TEXTS, md, "cpu")
    left = sorted(tmp_path.glob("tables-*.npz"))
    assert not stale.exists()
    assert len(left) == mdmod.CACHE_KEPT
    # The new file and the CACHE_KEPT - 1 most recently used others stay.
    assert set(left) == {*others[-(mdmod.CACHE_KEPT - 1) :], mdmod._cache_file(md)}
    # A hit marks the file as used: it outlives files used before it.
    old = mdmod._cache_file(md)
    os.utime(old, (1, 1))
    assert match_texts(CACHE_TEXTS, _fresh(CACHE_ENTRIES), "cpu") == [
        reference_match(t, CACHE_ENTRIES) for t in CACHE_TEXTS
    ]
    assert old.stat().st_mtime > 2000


@pytest.mark.parametrize("value", ["off", ""])
def test_cache_can_be_switched_off(tmp_path, monkeypatch, value):
    from gpu_curate.metadata import cache_dir

    monkeypatch.setenv("GPU_CURATE_CACHE_DIR", value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() is None
    md = _fresh(CACHE_ENTRIES)
    assert match_texts(CACHE_TEXTS, md, "cpu") == [
        reference_match(t, CACHE_ENTRIES) for t in CACHE_TEXTS
    ]
    assert not list(tmp_path.rglob("*.npz"))


def test_cache_folder_defaults(tmp_path, monkeypatch):
    from gpu_curate.metadata import cache_dir

    monkeypatch.delenv("GPU_CURATE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "gpu-curate"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "gpu-curate"


def test_unwritable_cache_folder_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("GPU_CURATE_CACHE_DIR", str(blocker / "sub"))
    md = _fresh(CACHE_ENTRIES)
    assert match_texts(CACHE_TEXTS, md, "cpu") == [
        reference_match(t, CACHE_ENTRIES) for t in CACHE_TEXTS
    ]


@pytest.mark.parametrize("kind", [set, frozenset])
def test_an_unordered_collection_of_entries_is_refused(kind):
    # (A set's order, so each entry's id, changed with PYTHONHASHSEED: the counts and the
    # curated set changed from one process to the next.)
    with pytest.raises(MetadataError) as caught:
        Metadata(kind(["dog", "cat", "bird"]))
    assert "must be an ordered list of strings (an entry's id is its position)" in str(caught.value)
    with pytest.raises(MetadataError):
        match_texts(["a dog"], kind(["dog", "cat"]), backend="cpu")
    assert Metadata(sorted({"dog", "cat"})).entries == ("cat", "dog")
    # (A dict's keys, entry_counts.json's say, keep their order.)
    assert Metadata({"dog": 3, "cat": 1}.keys()).entries == ("dog", "cat")
