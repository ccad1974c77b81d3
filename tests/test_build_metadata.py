"""Tests of gpu_curate.build_metadata: MetaCLIP metadata built from its sources.

Expected values are written out by hand (hand-counted tokens, PMI as log2 expressions),
never taken from the code under test.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import reference_match

from gpu_curate.backend import resolve
from gpu_curate.build_metadata import (
    assemble,
    build_metadata,
    count_corpus,
    count_corpus_dask,
    expand_corpus_paths,
    read_data_file,
    read_ngram_files,
    read_title_views,
    read_word_counts,
    select_bigrams,
    select_unigrams,
    wordnet_synset_names,
)
from gpu_curate.cli import main
from gpu_curate.errors import CurateError

CPU = resolve("cpu")

# --- fixtures -------------------------------------------------------------------------------

LICENSE = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  By obtaining, using  \n"
    "  3   \n"
)

# Lines in WordNet's data.* syntax: offset lex_filenum ss_type w_cnt (hex) word lex_id ...
# p_cnt pointers [frames] | gloss. The trailing two spaces are WordNet's own.
WORDNET = {
    "data.noun": [
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04431553 n 0000 "
        "| that which is perceived or known or inferred to have its own distinct existence  ",
        "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 002 @ 02083346 n 0000 "
        "#m 02083863 n 0000 | a member of the genus Canis  ",
        "09044862 15 n 02 United_States 0 U.S. 0 001 @ 08544813 n 0000 "
        "| North American republic containing 50 states  ",
        "12290910 20 n 02 St._John's_wort 0 hypericum 0 000 | any of numerous plants  ",
    ],
    "data.verb": [
        "01168468 34 v 02 eat 0 feed 1 001 @ 01157517 v 0000 01 + 02 00 | take in solid food  ",
        "02005948 38 v 02 dog 0 chase 0 000 01 + 08 00 | go after with the intent to catch  ",
    ],
    "data.adj": [
        "00001740 00 a 01 able 0 001 ! 00002098 a 0101 | having the necessary means or skill  ",
        "01729819 00 a 01 former(a) 0 000 | referring to the first of two things  ",
        "00013887 00 s 02 ablaze(p) 0 afire 0 001 & 00013442 a 0000 | lighted up  ",
        "01385255 00 s 01 galore(ip) 0 001 & 01382086 a 0000 | in great numbers  ",
    ],
    "data.adv": [
        "00001740 02 r 01 a_cappella 0 000 | without musical accompaniment  ",
    ],
}

# First lemma of each synset, lowercased, "_" -> " ", marker removed, file order n v a r.
WORDNET_NAMES = [
    "entity",
    "dog",
    "united states",
    "st. john's wort",
    "eat",
    "dog",
    "able",
    "former",
    "ablaze",
    "galore",
    "a cappella",
]


def write_wordnet(folder: Path, files: dict[str, list[str]] = WORDNET) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (folder / name).write_text(LICENSE + "".join(line + "\n" for line in lines))
    return folder


# Hand tokenization (spacing, then split on " "):
#   "new york is big."   -> new york is big .        5 tokens
#   "I love new york!"   -> I love new york !        5 tokens
#   "the cat sat"        -> the cat sat              3 tokens
#   "new  york"          -> new "" york              2 non-empty tokens, no bigram
#   "dog, cat"           -> dog , cat                3 tokens, no bigram (comma)
CORPUS = ["new york is big.", "I love new york!", "the cat sat", "new  york", "dog, cat"]
N = 18
UNIGRAMS = {
    "new": 3, "york": 3, "is": 1, "big": 1, ".": 1, "I": 1, "love": 1, "!": 1,
    "the": 1, "cat": 2, "sat": 1, "dog": 1, ",": 1,
}  # fmt: skip
BIGRAMS = {
    ("new", "york"): 2, ("york", "is"): 1, ("is", "big"): 1, ("I", "love"): 1,
    ("love", "new"): 1, ("the", "cat"): 1, ("cat", "sat"): 1,
}  # fmt: skip
# PMI = log2(c(ab) * N) - log2(c(a) * c(b)), by hand:
PMI = {
    ("new", "york"): math.log2(2 * 18 / (3 * 3)),  # = 2
    ("york", "is"): math.log2(18 / 3),
    ("is", "big"): math.log2(18),
    ("I", "love"): math.log2(18),
    ("love", "new"): math.log2(18 / 3),
    ("the", "cat"): math.log2(18 / 2),
    ("cat", "sat"): math.log2(18 / 2),
}


def reference_spacing(text: str) -> str:
    """DESIGN section 2, written independently of the code under test."""
    text = " " + text + " "
    for ch in "\t\n\r":
        text = text.replace(ch, " ")
    for ch in ",.;:?!`":
        text = text.replace(ch, f" {ch} ")
    return text


def as_dicts(counts) -> tuple[dict, dict]:
    uni = dict(zip(counts.unigrams["word"], counts.unigrams["count"], strict=True))
    bi = {
        (a, b): c
        for a, b, c in zip(
            counts.bigrams["w1"], counts.bigrams["w2"], counts.bigrams["count"], strict=True
        )
    }
    return {k: int(v) for k, v in uni.items()}, {k: int(v) for k, v in bi.items()}


def load_checked(path: Path) -> list[str]:
    """Load with the project's loader when it exists, else check its rules here."""
    try:
        from gpu_curate.metadata import Metadata
    except ImportError:
        entries = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(entries, list)
        assert all(isinstance(e, str) and e.strip() for e in entries)
        assert len(set(entries)) == len(entries)
        return entries
    return list(Metadata.from_file(path).entries)


# --- WordNet --------------------------------------------------------------------------------


def test_wordnet_names_from_fixture(tmp_path):
    assert wordnet_synset_names(write_wordnet(tmp_path / "wn")) == WORDNET_NAMES


def test_wordnet_found_in_debian_layout(tmp_path):
    write_wordnet(tmp_path / "deb" / "usr" / "share" / "wordnet")
    assert wordnet_synset_names(tmp_path / "deb") == WORDNET_NAMES


def test_wordnet_gzipped_data_files_are_found(tmp_path):
    import gzip

    folder = write_wordnet(tmp_path / "wn")
    for name in ("data.noun", "data.adj"):
        (folder / f"{name}.gz").write_bytes(gzip.compress((folder / name).read_bytes()))
        (folder / name).unlink()
    assert wordnet_synset_names(tmp_path / "wn") == WORDNET_NAMES


def test_wordnet_missing_file_is_named(tmp_path):
    folder = write_wordnet(tmp_path / "wn")
    (folder / "data.adv").unlink()
    with pytest.raises(CurateError, match=r"data\.adv.*missing"):
        wordnet_synset_names(folder)


def test_wordnet_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "data.noun"
    path.write_text(LICENSE + WORDNET["data.noun"][0] + "\n" + "garbage line\n")
    # 3 licence lines, the good line on 4, the bad one on 5.
    with pytest.raises(CurateError, match=rf"^{path}:5: not a WordNet data line"):
        read_data_file(path, "n")


def test_wordnet_wrong_synset_type_for_file(tmp_path):
    path = tmp_path / "data.noun"
    path.write_text(WORDNET["data.verb"][0] + "\n")
    with pytest.raises(CurateError, match=rf"^{path}:1: synset type 'v'"):
        read_data_file(path, "n")


def _real_wordnet_dir() -> Path | None:
    for candidate in (
        os.environ.get("GPU_CURATE_WORDNET"),
        "/tmp/wn/root/usr/share/wordnet",
        "/usr/share/wordnet",
    ):
        if candidate and (Path(candidate) / "data.noun").is_file():
            return Path(candidate)
    return None


def test_real_wordnet_30():
    folder = _real_wordnet_dir()
    if folder is None:
        pytest.skip(
            "real WordNet files absent: set GPU_CURATE_WORDNET to a folder with data.noun ... "
            "(e.g. `apt-get download wordnet-base && dpkg -x wordnet-base_*.deb /tmp/wn/root`)"
        )
    if "WordNet 3.0 Copyright" not in (folder / "data.noun").read_text(errors="replace")[:3000]:
        pytest.skip(f"{folder} is not WordNet 3.0; the counts below are WordNet 3.0's")
    names = wordnet_synset_names(folder)
    # WordNet 3.0 has 117,659 synsets; NLTK's names give 86,571 distinct strings.
    assert len(names) == 117_659
    assert len(set(names)) == 86_571
    assert names[:2] == ["entity", "physical entity"]
    assert {"dog", "galore", "st. andrew's cross", "united states"} <= set(names)
    assert not [n for n in names if n.endswith(("(a)", "(p)", "(ip)")) or "_" in n]
    assert all(n == n.lower() for n in names)


# --- unigram counts and titles ------------------------------------------------------------


def test_unigram_counts_thresholds_and_formats(tmp_path):
    path = tmp_path / "unigrams.txt"
    path.write_text(
        "dog\t100\n"  # exactly the threshold: kept
        "cat;99\n"  # one below: dropped
        "\n"  # blank line: skipped
        "bird 250\n"  # MetaCLIP's 'word count'
        "a;b\t101\n"  # the last tab separates, so the word is 'a;b'
        ";500\n"  # empty word (pywordfreq has one): dropped
        "fish\t60\n"
        "fish\t40\n"  # repeated: summed to 100, kept
        "owl 120 \r\n"  # MetaCLIP's line.strip().split(): trailing blanks are fine
        "rock;roll 500\n"  # no count after the ';': the space separates
    )
    table = read_word_counts(path)
    assert dict(zip(table["word"], table["count"], strict=True)) == {
        "dog": 100, "cat": 99, "bird": 250, "a;b": 101, "fish": 100, "owl": 120, "rock;roll": 500,
    }  # fmt: skip
    # count descending, then word
    assert select_unigrams(table, 100)["word"].tolist() == [
        "rock;roll", "bird", "owl", "a;b", "dog", "fish",
    ]  # fmt: skip
    assert select_unigrams(table, 101)["word"].tolist() == ["rock;roll", "bird", "owl", "a;b"]


def test_sources_with_a_byte_order_mark_or_an_upper_case_gz(tmp_path):
    import gzip

    path = tmp_path / "u.tsv"
    path.write_bytes(b"\xef\xbb\xbfdog\t150\ncat\t100\n")
    assert read_word_counts(path)["word"].tolist() == ["dog", "cat"]
    titles = tmp_path / "t.tsv"
    titles.write_bytes(b"\xef\xbb\xbfParis\t80\n")
    assert read_title_views(titles)["title"].tolist() == ["Paris"]
    corpus = tmp_path / "CORPUS.TXT.GZ"
    corpus.write_bytes(gzip.compress(b"\xef\xbb\xbfzebra crossing\n"))
    assert as_dicts(count_corpus([corpus], CPU))[0] == {"zebra": 1, "crossing": 1}


def test_summed_counts_past_int64_are_an_error(tmp_path):
    path = tmp_path / "u.tsv"
    path.write_text("big\t900000000000000000\n" * 11)
    with pytest.raises(CurateError, match=r"the counts of 'big' add up past 2\*\*63"):
        read_word_counts(path)


def test_unigram_counts_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "unigrams.tsv"
    path.write_text("dog\t100\ncat\t12\n\nhorse\tmany\n")
    with pytest.raises(CurateError, match=rf"^{path}:4: expected 'word<TAB>count'.*'horse\\tmany'"):
        read_word_counts(path)


def test_titles_underscores_sum_and_threshold(tmp_path):
    path = tmp_path / "titles.tsv"
    path.write_text("New_York_City\t50\nNew York City\t30\nParis\t80\nZ\t79\nTiny\t3\n")
    table = read_title_views(path)
    views = dict(zip(table["title"], table["views"], strict=True))
    assert views == {"New York City": 80, "Paris": 80, "Z": 79, "Tiny": 3}
    result = build_metadata(titles=path, min_views=79)
    assert result.entries[100:] == ["New York City", "Paris", "Z"]


def test_titles_bad_line(tmp_path):
    path = tmp_path / "titles.tsv"
    path.write_text("Paris\t80\nLondon 70\n")
    with pytest.raises(CurateError, match=rf"^{path}:2: expected 'title<TAB>views'"):
        read_title_views(path)


# --- n-gram counts and PMI ------------------------------------------------------------------


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n")
    return path


def test_corpus_counts_match_hand_count(corpus_file):
    counts = count_corpus([corpus_file], CPU)
    assert as_dicts(counts) == (UNIGRAMS, BIGRAMS)
    assert counts.total == N


def test_pmi_equals_hand_computation(corpus_file):
    counts = count_corpus([corpus_file], CPU)
    chosen = select_bigrams(counts, CPU, min_pmi=-100.0)
    got = dict(zip(chosen.table["text"], chosen.table["pmi"], strict=True))
    assert got.keys() == {f"{a} {b}" for a, b in PMI}
    for (a, b), value in PMI.items():
        assert got[f"{a} {b}"] == pytest.approx(value, rel=1e-12, abs=1e-12)
    assert got["new york"] == pytest.approx(2.0)


def test_pmi_is_the_same_whichever_array_module_counted(corpus_file):
    # CuPy's log2 may differ from NumPy's in the last bit, which would move a bigram at
    # min_pmi or at the max_entries cut: the PMI is taken on the host. Here a stand-in
    # device module whose log2 is off by a little must not change it.
    import types

    import numpy as np

    from gpu_curate.backend import Backend
    from gpu_curate.build_metadata import bigram_pmi

    counts = count_corpus([corpus_file], CPU)
    off = types.SimpleNamespace(
        float64=np.float64, asnumpy=np.asarray, log2=lambda a: np.log2(a) * (1 + 1e-15)
    )
    host = bigram_pmi(counts, CPU)["pmi"].to_numpy()
    device = bigram_pmi(counts, Backend("gpu", off))["pmi"].to_numpy()
    assert np.array_equal(host, device)


def test_bigram_thresholds_order_and_matching(corpus_file):
    counts = count_corpus([corpus_file], CPU)
    # PMI >= 3: log2(18) twice, log2(9) twice; ties sorted by text (code point order).
    texts = select_bigrams(counts, CPU, min_pmi=3.0).table["text"].tolist()
    assert texts == ["I love", "is big", "cat sat", "the cat"]
    assert select_bigrams(counts, CPU, min_pmi=2.0, min_count=2).table["text"].tolist() == [
        "new york"
    ]
    assert select_bigrams(counts, CPU, min_pmi=2.0 + 1e-9).table["text"].tolist()[-1] != (
        "new york"
    )
    # Every bigram entry matches where it occurs, by the reference rule of DESIGN section 2.
    for text in select_bigrams(counts, CPU, min_pmi=-100.0).table["text"]:
        assert any(f" {text} " in reference_spacing(line) for line in CORPUS), text


def test_chunked_parquet_and_dask_counts_agree(tmp_path, corpus_file):
    pq_path = tmp_path / "corpus.parquet"
    pd.DataFrame({"id": range(3), "caption": ["the cat sat", None, "new york!"]}).to_parquet(
        pq_path
    )
    whole = as_dicts(count_corpus([corpus_file], CPU))
    # 7-byte blocks put every line (and some parts) in its own block.
    assert as_dicts(count_corpus([corpus_file], CPU, block_bytes=7)) == whole
    both = as_dicts(count_corpus([corpus_file, pq_path], CPU, block_bytes=7))
    assert both[0]["cat"] == UNIGRAMS["cat"] + 1
    assert both[1][("new", "york")] == BIGRAMS[("new", "york")] + 1
    assert both[1][("the", "cat")] == 2
    dask = as_dicts(count_corpus_dask([corpus_file, pq_path], CPU, scheduler="synchronous"))
    assert dask == both


def test_precomputed_ngram_files(tmp_path):
    uni = tmp_path / "1gram.txt"
    bi = tmp_path / "2gram.txt"
    uni.write_text("10\tnew\n10\tyork\n5\tU.S.\n975\tthe\n")  # N = 1000
    bi.write_text("8\tnew\tyork\n3\tU.S.\tarmy\n2\tthe\tgone\n4\tU.S.\tnew\n")
    counts = read_ngram_files(uni, bi, CPU)
    assert counts.total == 1000
    chosen = select_bigrams(counts, CPU, min_pmi=0.0)
    # 'U.S. army' and 'the gone': 'army' / 'gone' have no unigram count -> dropped (2);
    # 'U.S. new' has PMI log2(4*1000/(5*10)) but holds '.', so it cannot match -> dropped.
    assert chosen.table["text"].tolist() == ["new york"]
    assert chosen.table["pmi"][0] == pytest.approx(math.log2(8 * 1000 / (10 * 10)))
    assert (chosen.missing_unigram, chosen.unmatchable) == (2, 1)


def test_precomputed_ngram_zero_counts_are_dropped(tmp_path):
    uni = tmp_path / "1gram.txt"
    bi = tmp_path / "2gram.txt"
    uni.write_text("0\tfoo\n1\tbar\n1073741824\tthe\n")
    bi.write_text("5\tfoo\tbar\n0\tthe\tbar\n")
    counts = read_ngram_files(uni, bi, CPU)
    assert as_dicts(counts)[0] == {"bar": 1, "the": 1073741824}
    chosen = select_bigrams(counts, CPU, min_pmi=-1000.0)
    # 'foo' has no (non-zero) count: its PMI would be infinite, so the bigram is dropped.
    assert chosen.table["text"].tolist() == [] and chosen.missing_unigram == 1


def test_precomputed_ngram_bad_line(tmp_path):
    uni = tmp_path / "1gram.txt"
    uni.write_text("10\tnew\n7\tyork\textra\n")
    with pytest.raises(CurateError, match=rf"^{uni}:2: expected 'count<TAB>word'"):
        read_ngram_files(uni, None, CPU)


def test_corpus_folders_skip_hidden_files_and_tsv_lines_give_their_first_field(tmp_path):
    folder = tmp_path / "corpus"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    (folder / "a.txt").write_text("new york\n")
    (folder / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("new york\n")
    (folder / "_tmp.txt").write_text("new york\n")
    (folder / "cc.tsv").write_text("a red dog\thttps://x.jpg\n")
    assert [p.name for p in expand_corpus_paths([folder])] == ["a.txt", "cc.tsv"]
    unigrams, bigrams = as_dicts(count_corpus([folder], CPU))
    assert unigrams == {"new": 1, "york": 1, "a": 1, "red": 1, "dog": 1}
    assert ("dog", "https") not in bigrams
    with pytest.raises(CurateError, match=r"corpus file given twice"):
        expand_corpus_paths([folder, folder / "a.txt"])


def test_corpus_not_utf8_names_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(CurateError, match=rf"^{path}:3: not valid UTF-8"):
        count_corpus([path], CPU)


def test_parquet_without_text_column(tmp_path):
    path = tmp_path / "pool.parquet"
    pd.DataFrame({"url": ["http://x"]}).to_parquet(path)
    with pytest.raises(CurateError, match=rf"^{path}: none of the text columns"):
        count_corpus([path], CPU)
    with pytest.raises(CurateError, match=r"no column 'TEXT'"):
        count_corpus([path], CPU, column="TEXT")


# --- assembly -------------------------------------------------------------------------------


def test_assemble_order_filters_dedupe_and_cap():
    sources = [
        ("numbers", ["0", "1"]),
        ("wordnet", ["dog", "cat", "dog"]),
        ("unigrams", ["the", "1", "-", "  ", "", "cat"]),
        ("bigrams", ["new york"]),
        ("titles", ["Paris", "new york", "Rome", "Foo\tBar", "A\r\nB"]),
    ]
    full = assemble(sources, None)
    assert full.entries == ["0", "1", "dog", "cat", "the", "new york", "Paris", "Rome"]
    assert full.tallies["unigrams"].as_dict() == {
        "candidates": 6, "kept": 1, "duplicate": 2, "punctuation": 1, "blank": 2,
        "unmatchable": 0, "cut": 0,
    }  # fmt: skip
    # A tab or a line break: no text can match it (the matcher reads them as spaces).
    assert full.tallies["titles"].unmatchable == 2
    capped = assemble(sources, 6)
    assert capped.entries == full.entries[:6]  # the last in order are the ones cut
    assert capped.tallies["titles"].as_dict() == {
        "candidates": 5, "kept": 0, "duplicate": 1, "punctuation": 0, "blank": 0,
        "unmatchable": 2, "cut": 2,
    }  # fmt: skip


# --- end to end -----------------------------------------------------------------------------


def test_cli_end_to_end(tmp_path, corpus_file):
    wn = write_wordnet(tmp_path / "wn")
    unigrams = tmp_path / "unigrams.tsv"
    unigrams.write_text("york\t500\ndog\t400\nzebra\t150\nrare\t99\n.\t1000\ne.g.\t700\n")
    titles = tmp_path / "titles.tsv"
    titles.write_text(
        "Eiffel_Tower\t90\nDog\t75\nWashington,_D.C.\t80\nSt_._Louis\t71\nObscure_page\t12\n"
    )
    out = tmp_path / "out" / "metadata.json"
    args = [
        "metadata", "build", "--out", str(out), "--wordnet", str(wn),
        "--unigram-counts", str(unigrams), "--min-count", "100",
        "--corpus", str(corpus_file), "--min-pmi", "3", "--min-bigram-count", "1",
        "--titles", str(titles), "--min-views", "70", "--backend", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output

    entries = load_checked(out)
    # 'dog' once, where it first is; "st. john's wort" can match no text (MetaCLIP's
    # spacing puts a space before every "."): dropped as unmatchable.
    wordnet_unique = [n for n in dict.fromkeys(WORDNET_NAMES) if n != "st. john's wort"]
    assert entries == [
        *[str(i) for i in range(100)],
        *wordnet_unique,
        "york", "zebra",  # 'dog' is a WordNet name already; '.' is punctuation; 'rare' < 100
        "I love", "is big", "cat sat", "the cat",
        "Eiffel Tower", "Dog", "St . Louis",  # (which "St.Louis" holds, spaced)
    ]  # fmt: skip
    assert json.loads(out.read_text(encoding="utf-8")) == entries

    sidecar = json.loads((tmp_path / "out" / "metadata.sources.json").read_text())
    assert sidecar["entries"] == len(entries)
    assert sidecar["metadata_file"] == "metadata.json"
    assert sidecar["gpu_curate_version"]
    assert sidecar["order"] == ["numbers", "wordnet", "unigrams", "bigrams", "titles"]
    kept = {name: s["kept"] for name, s in sidecar["sources"].items()}
    assert kept == {
        "numbers": 100, "wordnet": len(wordnet_unique), "unigrams": 2, "bigrams": 4, "titles": 3,
    }  # fmt: skip
    assert sidecar["sources"]["wordnet"]["duplicate"] == 1
    dropped = ["st. john's wort", "e.g.", "Washington, D.C."]
    texts = ["st. john's wort tea", "e.g. this", "Washington, D.C. at night", "e.g.  Washington"]
    assert [reference_match(t, dropped) for t in texts] == [[], [], [], []]
    assert reference_match("St.Louis at night", ["St . Louis"]) == [0]
    unmatchable = {name: s["unmatchable"] for name, s in sidecar["sources"].items()}
    assert unmatchable == {"numbers": 0, "wordnet": 1, "unigrams": 1, "bigrams": 0, "titles": 1}
    assert sidecar["sources"]["bigrams"]["total_unigram_count"] == N
    assert sidecar["parameters"]["min_pmi"] == 3.0
    assert sidecar["parameters"]["backend"] == "cpu"
    # Only the two outputs: no temporary file left behind.
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "metadata.json",
        "metadata.sources.json",
    ]


def test_an_interrupted_build_leaves_no_stale_sidecar(tmp_path, monkeypatch):
    import importlib

    assemble_mod = importlib.import_module("gpu_curate.build_metadata.assemble")

    titles = tmp_path / "t.tsv"
    titles.write_text("Paris\t80\n")
    out = tmp_path / "m.json"
    build_metadata(out, titles=titles)
    before = out.read_bytes()
    titles.write_text("Paris\t80\nRome\t90\n")

    def interrupted(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(assemble_mod, "write_atomic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_metadata(out, titles=titles, overwrite=True)
    # The old metadata is whole; no sidecar describes anything but a file that is there.
    assert out.read_bytes() == before and not (tmp_path / "m.sources.json").exists()
    monkeypatch.undo()
    (tmp_path / "m.sources.json").mkdir()
    with pytest.raises(CurateError, match=r"m.sources.json is a folder"):
        build_metadata(out, titles=titles, overwrite=True)
    assert out.read_bytes() == before


def test_an_existing_metadata_file_is_replaced_only_with_overwrite(tmp_path):
    # As every command's output: a metadata file that a run used, replaced without a
    # word, would change what a --resume of that run matches against.
    titles = tmp_path / "t.tsv"
    titles.write_text("Paris\t80\n")
    out = tmp_path / "m.json"
    args = ["metadata", "build", "--out", str(out), "--titles", str(titles)]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = out.read_bytes()
    titles.write_text("Paris\t80\nRome\t90\n")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and f"{out} exists (use --overwrite to replace it)" in r.stderr
    assert out.read_bytes() == before
    out.unlink()  # (the sidecar alone is refused too: it would describe another file)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "m.sources.json exists" in r.stderr
    r = CliRunner().invoke(main, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())[-2:] == ["Rome", "Paris"]


def test_cli_max_entries_cuts_the_end(tmp_path):
    wn = write_wordnet(tmp_path / "wn")
    out = tmp_path / "md.json"
    result = CliRunner().invoke(
        main, ["metadata", "build", "--out", str(out), "--wordnet", str(wn), "--max-entries", "103"]
    )
    assert result.exit_code == 0, result.output
    assert load_checked(out)[100:] == ["entity", "dog", "united states"]
    sidecar = json.loads((tmp_path / "md.sources.json").read_text())
    # (Not "st. john's wort", which can match nothing and takes no place.)
    assert sidecar["sources"]["wordnet"]["cut"] == len(set(WORDNET_NAMES)) - 4


def test_cli_error_names_file_and_line(tmp_path):
    bad = tmp_path / "unigrams.tsv"
    bad.write_text("dog\t100\ncat\n")
    out = tmp_path / "md.json"
    result = CliRunner().invoke(
        main, ["metadata", "build", "--out", str(out), "--unigram-counts", str(bad)]
    )
    assert result.exit_code == 2
    assert f"{bad}:2: expected 'word<TAB>count'" in result.output
    assert not out.exists()


def test_cli_missing_source_file(tmp_path):
    missing = tmp_path / "nope.tsv"
    result = CliRunner().invoke(
        main, ["metadata", "build", "--out", str(tmp_path / "m.json"), "--titles", str(missing)]
    )
    assert result.exit_code == 2
    assert f"{missing}: no such file" in result.output


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "no metadata source given"),
        ({"corpus": ["c.txt"], "unigram_ngrams": "1gram.txt"}, "either --corpus or"),
        ({"bigram_ngrams": "2gram.txt"}, "--bigram-ngrams needs --unigram-ngrams"),
        ({"unigram_counts": "u.tsv", "unigram_ngrams": "1gram.txt"}, "read for nothing"),
        ({"titles": "t.tsv", "min_pmi": float("nan")}, "min_pmi must be a finite number"),
        ({"titles": "t.tsv", "out": "metadata.txt"}, "--out must name a .json file"),
    ],
)
def test_option_conflicts(kwargs, message):
    with pytest.raises(CurateError, match=message):
        build_metadata(**{"out": None, **kwargs})


@pytest.mark.parametrize(
    "out, source, flag",
    [("c.json", "c.json", "unigram_counts"), ("e.json", "e.sources.json", "titles"),
     ("k.json", "k.json", "corpus")],
)  # fmt: skip
def test_the_metadata_may_not_replace_a_source(tmp_path, out, source, flag):
    # (With --overwrite, the build replaced the file it had read.)
    src = tmp_path / source
    src.write_text("dog\t500\n")
    with pytest.raises(CurateError) as caught:
        build_metadata(tmp_path / out, **{flag: src}, overwrite=True, min_count=1)
    assert str(caught.value) == (
        f"{src} is the build's --{flag.replace('_', '-')} source, which writing the metadata "
        "would replace: choose another --out"
    )
    assert src.read_text() == "dog\t500\n"


def test_auto_backend_runs_here(corpus_file):
    # "auto" must work on a machine without cuDF (falls back to pandas); one corpus path
    # needs no list.
    result = build_metadata(None, corpus=corpus_file, min_count=2, min_pmi=4.0)
    assert result.entries[100:] == ["new", "york", "cat", "I love", "is big"]
    assert result.report["parameters"]["backend"] in ("cpu", "gpu")
