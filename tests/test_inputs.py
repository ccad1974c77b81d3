"""Reading the pool: which files a folder or glob holds, and how CSV/TSV/JSONL/Parquet rows
come in (``gpu_curate.io``), checked through ``gpu-curate match``.

Expected matches are written out by hand from DESIGN.md section 2 (an entry matches when
``" " + entry + " "`` is in the spaced text) on a tiny metadata.
"""

from __future__ import annotations

import gzip
import io as io_module
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_curate.cli import main
from gpu_curate.errors import CurateError
from gpu_curate.io import discover

ENTRIES = ["dog", "new york", "cat", "1984"]  # ids 0, 1, 2, 3


@pytest.fixture
def md(tmp_path) -> Path:
    path = tmp_path / "md.json"
    path.write_text(json.dumps(ENTRIES))
    return path


# (pyarrow writes string and binary views to Parquet from version 21 on.)
PARQUET_WRITES_VIEWS = int(pa.__version__.split(".")[0]) >= 21


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def match(src, md: Path, out: Path, *extra: str):
    """``gpu-curate match`` keeping unmatched rows; the CliRunner result."""
    args = ["match", str(src), "--metadata", str(md), "--out", str(out), "--quiet"]
    args += ["--backend", "cpu", "--keep-unmatched", *extra]
    return CliRunner().invoke(main, args, catch_exceptions=True)


def matched(out: Path) -> dict:
    """matched/ as {column: values}, strings as bytes (a row need not be UTF-8)."""
    table = pq.read_table(out / "matched").drop(["uid"])
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = col.cast(pa.large_binary())
        cols[name] = col.to_pylist()
    return cols


def error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    err = result.stderr.strip()
    assert "\n" not in err and err.startswith("gpu-curate: error: "), err
    return err


# ------------------------------------------------------------------------ which files


def test_folder_skips_hidden_and_underscore_folders(tmp_path):
    pool = tmp_path / "pool"
    table = pa.table({"text": ["a dog"]})
    for rel in ["a.parquet", "_temporary/0/part-0.parquet", ".ipynb_checkpoints/a.parquet",
                "sub/b.parquet"]:  # fmt: skip
        (pool / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, pool / rel)
    assert [f.relpath for f in discover([str(pool)])] == ["a.parquet", "sub/b.parquet"]
    assert [f.relpath for f in discover([f"{pool}/*"])] == ["a.parquet"]


def test_glob_with_dot_components_gives_the_folder_scan(tmp_path):
    pool = tmp_path / "pool"
    for rel in ["a.parquet", "sub/b.parquet", "_out/y.parquet", ".hidden/x.parquet"]:
        (pool / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": ["a dog"]}), pool / rel)
    want = [f.relpath for f in discover([str(pool)])]
    assert want == ["a.parquet", "sub/b.parquet"]
    for spec in [f"{pool}/./**", f"{tmp_path}/./pool/../pool/**", f"{pool}/**/*.parquet"]:
        assert [f.relpath for f in discover([spec])] == want, spec


def test_the_text_column_is_chosen_per_file_and_reported(tmp_path, md):
    pool = tmp_path / "pool"
    pool.mkdir()
    # TEXT comes before caption in the default order; a file without it uses caption.
    pq.write_table(pa.table({"caption": ["a cat"], "TEXT": ["a dog"]}), pool / "a.parquet")
    write(pool / "b.jsonl", b'{"caption": "new york"}\n')
    write(pool / "c.tsv", b"a cat\thttp://x/1.jpg\n1984\thttp://x/2.jpg\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["match", str(pool), "--metadata", str(md), "--out",
                                  str(out), "--backend", "cpu"])  # fmt: skip
    assert r.exit_code == 0, (r.output, r.exception)
    assert "text columns: TEXT (1 file), caption (1 file), f0 (1 file)" in r.output
    report = json.loads((out / "report.json").read_text())
    assert report["text_columns"] == {"TEXT": 1, "caption": 1, "f0": 1}
    assert report["column_sets"] == 3
    assert (
        "note: the parts have 3 different sets of columns or column types ([caption: " in r.output
    )
    got = sorted(pq.read_table(out / "matched", columns=["entry_ids"])[0].to_pylist())
    assert got == [[0], [1], [2], [3]]  # dog (TEXT), new york (caption), cat and 1984 (f0)
    r = match(pool / "b.jsonl", md, tmp_path / "out2", "--text-column", "caption")
    assert r.exit_code == 0
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert report["text_columns"] == {"caption": 1} and report["column_sets"] == 1


def test_folder_scans_and_globs_follow_symbolic_links_alike(tmp_path):
    shards = tmp_path / "shards"
    for rel in ["a.parquet", "sub/b.parquet", "c.parquet"]:
        (shards / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": ["a dog"]}), shards / rel)
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "own.parquet").write_bytes((shards / "c.parquet").read_bytes())
    (pool / "la.parquet").symlink_to(shards / "a.parquet")  # a link to a file
    (pool / "linked").symlink_to(shards / "sub", target_is_directory=True)  # to a folder
    (pool / "linked" / "loop").symlink_to(pool, target_is_directory=True)  # back up: once
    want = ["la.parquet", "linked/b.parquet", "own.parquet"]
    assert [f.relpath for f in discover([str(pool)])] == want
    assert [f.relpath for f in discover([f"{pool}/**"])] == want
    assert [f.relpath for f in discover([f"{pool}/*.parquet"])] == ["la.parquet", "own.parquet"]
    assert [f.relpath for f in discover([f"{pool}/*/*.parquet"])] == ["linked/b.parquet"]
    (pool / "gone.parquet").symlink_to(tmp_path / "nowhere.parquet")
    with pytest.raises(CurateError, match=r"gone.parquet is a broken symbolic link"):
        discover([str(pool)])


def test_a_link_inside_the_pool_to_what_the_scan_does_not_read_is_read(tmp_path):
    # Links inside the pool were skipped as "read under the target's own name": rows lost
    # without a word where the target is hidden, has no data extension, or is deeper
    # than a glob reaches.
    pool = tmp_path / "pool"
    for rel in ["_v3/x.tsv", "_store/s.tsv", "raw", "d.tsv", "deep/e.tsv"]:
        write(pool / rel, b"a dog\n")
    (pool / "current").symlink_to(pool / "_v3", target_is_directory=True)  # a version
    (pool / "a.tsv").symlink_to(pool / "_store" / "s.tsv")
    (pool / "c.tsv").symlink_to(pool / "raw")
    (pool / "e.tsv").symlink_to(pool / "deep" / "e.tsv")  # read as deep/e.tsv in a scan
    (pool / "also-d.tsv").symlink_to(pool / "d.tsv")  # read as d.tsv
    scan = ["a.tsv", "c.tsv", "current/x.tsv", "d.tsv", "deep/e.tsv"]
    assert [f.relpath for f in discover([str(pool)])] == scan
    assert [f.relpath for f in discover([f"{pool}/**"])] == scan
    assert [f.relpath for f in discover([f"{pool}/*.tsv"])] == ["a.tsv", "c.tsv", "d.tsv", "e.tsv"]
    assert [f.relpath for f in discover([f"{pool}/*/*.tsv"])] == ["current/x.tsv", "deep/e.tsv"]
    # A link to a folder the walk lists, whose files the glob's pattern or depth leaves
    # out: read through the link, as the shell's glob reads it.
    tree = tmp_path / "tree"
    for rel in ["common/y.tsv", "v3/x.tsv", "a/b/c/deep.tsv", "x/y/z.tsv"]:
        write(tree / rel, b"a dog\n")
    (tree / "current").symlink_to(tree / "v3", target_is_directory=True)
    (tree / "s").symlink_to(tree / "a" / "b", target_is_directory=True)
    assert [f.relpath for f in discover([f"{tree}/c*/*.tsv"])] == ["common/y.tsv", "current/x.tsv"]
    want = ["s/c/deep.tsv", "x/y/z.tsv"]
    assert [f.relpath for f in discover([f"{tree}/*/*/*.tsv"])] == want
    # Two links to one hidden folder, or file: read once, under the first name.
    (pool / "latest").symlink_to(pool / "_v3", target_is_directory=True)
    (pool / "b.tsv").symlink_to(pool / "_store" / "s.tsv")
    assert [f.relpath for f in discover([str(pool)])] == scan


def test_a_link_inside_the_pool_is_skipped_and_globs_list_only_their_levels(tmp_path,
                                                                          monkeypatch):  # fmt: skip
    pool = tmp_path / "pool"
    (pool / "real").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a dog"]}), pool / "real" / "x.parquet")
    (pool / "alias").symlink_to(pool / "real", target_is_directory=True)  # sorts first
    (pool / "y.parquet").symlink_to(pool / "real" / "x.parquet")
    # The targets are in the pool: read once, under their own names.
    assert [f.relpath for f in discover([str(pool)])] == ["real/x.parquet"]
    assert [f.relpath for f in discover([f"{pool}/r*/*.parquet"])] == ["real/x.parquet"]
    # A one-level glob lists the root only: a folder below it that cannot be listed is
    # none of its business.
    (pool / "real" / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert [f.relpath for f in discover([f"{pool}/real/*.parquet"])] == ["x.parquet"]
    with pytest.raises(CurateError, match="cannot list input folder"):
        discover([f"{pool}/**"])


def test_a_folder_that_cannot_be_listed_is_an_error(tmp_path, monkeypatch):
    pool = tmp_path / "pool"
    (pool / "locked").mkdir(parents=True)
    for rel in ("a.parquet", "locked/b.parquet"):
        pq.write_table(pa.table({"text": ["a dog"]}), pool / rel)
    real_scandir = os.scandir

    def scandir(path="."):  # what a folder without read permission does (tests run as root)
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(CurateError, match=r"cannot list input folder .*locked: Permission denied"):
        discover([str(pool)])


def test_an_existing_path_with_wildcard_characters_is_taken_literally(tmp_path, md):
    pool = tmp_path / "pool [1]"
    pool.mkdir()
    pq.write_table(pa.table({"text": ["a dog"]}), pool / "a[b].parquet")
    assert [f.relpath for f in discover([str(pool)])] == ["a[b].parquet"]
    assert [f.relpath for f in discover([str(pool / "a[b].parquet")])] == ["a[b].parquet"]
    # (A pattern is still a pattern where no such path exists.)
    assert [f.relpath for f in discover([f"{tmp_path}/pool*/*.parquet"])] == [
        "pool [1]/a[b].parquet"
    ]
    r = match(pool, md, tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.stderr)


def test_a_parquet_file_naming_a_column_twice_is_an_error(tmp_path, md):
    table = pa.Table.from_arrays([pa.array(["a dog"]), pa.array([1]), pa.array([2])],
                                 names=["text", "a", "a"])  # fmt: skip
    pq.write_table(table, write(tmp_path / "pool" / "x.parquet", b""))
    assert "x.parquet: the file names the column 'a' twice" in error_line(
        match(tmp_path / "pool", md, tmp_path / "out")
    )


@pytest.mark.parametrize(
    ("last", "extra", "error"),
    [
        ({"desc": ["a dog"]}, [], "no text column (looked for TEXT, text, caption"),
        ({"text": ["a dog"]}, ["--text-column", "caption"], "text column 'caption' not found"),
        ({"text": [1]}, [], "text column 'text' is int64, not strings"),
        ({"text": ["a"], "uid": ["x"]}, [], "the input has a column named 'uid', which"),
        ({"text": ["a dog"], "id": [1]}, ["--id-column", "key"], "id column 'key' not found"),
    ],
)
def test_the_parquet_files_columns_are_checked_before_any_part_is_matched(
    tmp_path, md, last, extra, error
):
    # A pool of many files whose last one lacks the text column (or has one of the wrong
    # type) fails from the footers, before the tasks match the others: not hours later.
    pool = tmp_path / "pool"
    pool.mkdir()

    def good(key: int) -> pa.Table:
        return pa.table({"text": ["a dog", "a cat"], "caption": ["x", "y"], "id": [1, 2],
                         "key": [key, key + 1]})  # fmt: skip

    for i, name in enumerate("ab"):
        pq.write_table(good(2 * i), pool / f"{name}.parquet")
    pq.write_table(pa.table(last), pool / "c.parquet")
    args = ["match", str(pool), "--metadata", str(md), "--out", str(tmp_path / "out")]
    r = CliRunner().invoke(main, [*args, "--backend", "cpu", *extra])
    assert "c.parquet: " + error in error_line(r)
    assert "matching" not in r.stdout, r.stdout  # (the stage's first line)
    pq.write_table(good(4), pool / "c.parquet")
    r = CliRunner().invoke(main, [*args, "--backend", "cpu", "--overwrite", *extra])
    assert r.exit_code == 0, (r.output, r.stderr)


@pytest.mark.parametrize(
    ("last", "extra", "error"),
    [
        ('{"text": "a dog"}', ["--text-column", "caption"], "text column 'caption' not found"),
        ('{"text": "a", "uid": "x"}', [], "the input has a column named 'uid', which"),
        ('{"text": "a dog", "id": 9}', ["--id-column", "key"], "id column 'key' not found"),
    ],
)
def test_small_text_files_columns_are_checked_before_any_part_is_matched(
    tmp_path, md, last, extra, error
):
    # (Small JSON Lines files are read whole when the run is planned, to pack them.)
    pool = tmp_path / "pool"
    for i, name in enumerate("ab"):
        row = {"text": "a dog", "caption": "x", "id": i, "key": i}
        write(pool / f"{name}.jsonl", json.dumps(row).encode() + b"\n")
    write(pool / "c.jsonl", last.encode() + b"\n")
    args = ["match", str(pool), "--metadata", str(md), "--out", str(tmp_path / "out")]
    r = CliRunner().invoke(main, [*args, "--backend", "cpu", *extra])
    assert "c.jsonl: " + error in error_line(r)
    assert "matching" not in r.stdout, r.stdout


def test_a_jsonl_file_of_blank_lines_holds_no_rows(tmp_path, md):
    write(tmp_path / "pool" / "a.jsonl", b"\n  \n\n")
    write(tmp_path / "pool" / "b.jsonl", b'{"text": "a dog"}\n')
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.stderr)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["pool_rows"] == 1


def test_a_part_of_a_big_row_group_reads_only_its_rows(monkeypatch, tmp_path):
    from gpu_curate import io

    monkeypatch.setattr(io, "_BATCH_ROWS", 7)
    table = pa.table({"text": [f"t{i}" for i in range(100)], "n": list(range(100))})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=60)  # groups of 60, 40
    pf = pq.ParquetFile(tmp_path / "a.parquet")
    for start, end in [(0, 10), (3, 17), (55, 65), (59, 60), (60, 61), (90, 100), (0, 100)]:
        for columns in (None, ["n"]):
            got = io._parquet_range(pf, start, end, columns)
            want = table.slice(start, end - start)
            assert got.to_pylist() == (want.select(columns) if columns else want).to_pylist()


def test_a_file_reached_twice_is_an_error(tmp_path, md):
    pool = tmp_path / "pool"
    (pool / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["a dog"]}), pool / "sub" / "b.parquet")
    r = match(pool, md, tmp_path / "out", str(pool / "sub" / "b.parquet"))
    assert "is reached twice, as sub/b.parquet in input" in error_line(r)
    other = tmp_path / "other"
    other.mkdir()
    (other / "link.parquet").symlink_to(pool / "sub" / "b.parquet")
    with pytest.raises(CurateError, match=r"as link.parquet in input .*other"):
        discover([str(pool), str(other)])


def test_a_file_name_that_is_not_utf8(tmp_path, md):
    pool = tmp_path / "pool"
    pool.mkdir()
    name = os.fsencode(pool) + b"/caf\xe9.parquet"
    try:
        with open(name, "wb") as fh:
            pq.write_table(pa.table({"text": ["a dog", "x"]}), fh)
    except OSError:
        pytest.skip("this file system takes only UTF-8 file names")
    out = tmp_path / "out"
    for extra in ([], ["--resume"]):
        r = match(pool, md, out, *extra)
        assert r.exit_code == 0, (r.output, r.stderr, r.exception)
    # The name's own bytes key the uids, as a UTF-8 name's bytes do.
    from gpu_curate.uid import position_uids

    uids = pq.read_table(out / "matched").column("uid").to_pylist()
    assert uids == position_uids(os.fsdecode(b"caf\xe9.parquet"), 0, 2).tolist()
    assert position_uids("caf\udce9.parquet", 0, 1)[0] != position_uids("café.parquet", 0, 1)[0]


@pytest.mark.parametrize(
    "content, first",
    [
        (b"Sunset\na dog on the beach\n", [b"Sunset", b"a dog on the beach"]),
        (b"dog\timg_001.jpg\n", [b"dog"]),
        # One row without a line end: Arrow's reader found no whole row to count the
        # columns of ("Empty CSV file or block"), where a second row read fine.
        (b"a photo of a dog", [b"a photo of a dog"]),
        (b"a dog\timg_001.jpg", [b"a dog"]),
        (b'a dog,"in new\nyork"', [b"a dog"]),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_header_less_files_a_one_word_caption_or_one_row_without_line_end(
    tmp_path, md, content, first, gz
):
    name = "a.tsv" if b"\t" in content else "a.csv"
    if gz:
        name, content = name + ".gz", gzip.compress(content)
    write(tmp_path / "pool" / name, content)
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert matched(tmp_path / "out")["f0"] == first


def test_a_tsv_header_in_quotes_is_an_error(tmp_path, md):
    # R's write.table quotes names and values: read as written, the header was a row and
    # the id column (f0) was matched as the text; the rows' quotes stay in the texts.
    write(tmp_path / "pool" / "q.tsv", b'\xef\xbb\xbf"id"\t"TEXT"\n1\t"a dog"\n')
    for extra in ([], ["--text-column", "TEXT"]):
        err = error_line(match(tmp_path / "pool", md, tmp_path / "o", *extra))
        assert 'q.tsv: the first line\'s names are in double quotes ("id", "TEXT")' in err
    # Quoted captions are data: a first line in quotes that names no column is a row.
    write(tmp_path / "pool" / "q.tsv", b'"a dog"\t"a cat"\n')
    r = match(tmp_path / "pool", md, tmp_path / "o")
    assert r.exit_code == 0, (r.output, r.stderr)
    assert matched(tmp_path / "o") == {"f0": [b'"a dog"'], "f1": [b'"a cat"'], "entry_ids": [[]]}
    # A CSV file unquotes its header, as any CSV reader.
    write(tmp_path / "csv" / "q.csv", b'"id","TEXT"\n1,"a dog"\n')
    r = match(tmp_path / "csv", md, tmp_path / "o2")
    assert r.exit_code == 0, (r.output, r.stderr)
    assert matched(tmp_path / "o2") == {"id": [b"1"], "TEXT": [b"a dog"], "entry_ids": [[0]]}


def test_csv_header_naming_a_column_twice_is_an_error(tmp_path, md):
    write(tmp_path / "pool" / "a.csv", b"TEXT,TEXT\ndog,cat\n")
    assert "names the column 'TEXT' twice" in error_line(
        match(tmp_path / "pool", md, tmp_path / "o")
    )


def test_format_applies_to_unknown_extensions_and_skips_documentation(tmp_path, md):
    pool = tmp_path / "pool"
    write(pool / "captions.txt", b"a dog\thttp://x\n")
    write(pool / "README.md", b"This dataset: a dog and a cat.\n")
    write(pool / "LICENSE", b"cat\n")
    pq.write_table(pa.table({"text": ["a cat"]}), pool / "more.parquet")
    files = discover([str(pool)], "tsv")
    assert [(f.relpath, f.format) for f in files] == [
        ("captions.txt", "tsv"),
        ("more.parquet", "parquet"),
    ]
    # A file named on its own is read in the format given, whatever its name.
    assert discover([str(pool / "README.md")], "tsv")[0].format == "tsv"
    (pool / "more.parquet").unlink()
    r = match(pool, md, tmp_path / "out", "--format", "tsv")
    assert r.exit_code == 0, r.output
    assert matched(tmp_path / "out") == {"f0": [b"a dog"], "f1": [b"http://x"], "entry_ids": [[0]]}


def test_empty_text_files_hold_no_rows(tmp_path, md):
    pool = tmp_path / "pool"
    write(pool / "a.csv", b"")
    write(pool / "b.csv", b"text\na dog\n")
    write(pool / "c.jsonl", b"")
    assert [f.relpath for f in discover([str(pool)])] == ["b.csv"]
    r = match(pool, md, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert matched(tmp_path / "out") == {"text": [b"a dog"], "entry_ids": [[0]]}
    only = tmp_path / "only"
    write(only / "a.csv", b"")
    assert "every input file" in error_line(match(only, md, tmp_path / "out2"))


def test_compressed_parquet(tmp_path, md):
    from conftest import zstd

    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"text": ["a dog", "new york cat"]}), tmp_path / "p.parquet",
                   row_group_size=1)  # fmt: skip
    with open(tmp_path / "p.parquet", "rb") as src, gzip.open(pool / "p.parquet.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    data = (tmp_path / "p.parquet").read_bytes()
    (pool / "q.parquet.zst").write_bytes(zstd.compress(data))  # (no seeking in zstd)
    r = match(pool, md, tmp_path / "out", "--partition-rows", "1")
    assert r.exit_code == 0, (r.output, r.stderr)
    assert matched(tmp_path / "out")["entry_ids"] == [[0], [1, 2]] * 2
    # Decompressed whole to be read: one part a file, whatever the cut.
    assert json.loads((tmp_path / "out" / "report.json").read_text())["parts"] == 2


def _zip(name: str, *members: tuple[str, bytes]) -> bytes:
    buf = io_module.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members:
            archive.writestr(member, data)
    return buf.getvalue()


def test_every_compression_suffix_is_decompressed(tmp_path, md, monkeypatch):
    import bz2
    import lzma

    import fsspec.compression
    from conftest import zstd

    content = b"text\nzstd dog\nnew york\n"
    pool = tmp_path / "pool"
    pool.mkdir()
    codecs = ((".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress),
              (".lzma", lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE)),
              (".zst", zstd.compress), (".zip", lambda d: _zip("a.csv", ("a.csv", d))))  # fmt: skip
    for suffix, compress in codecs:
        (pool / f"a{suffix[1:]}.csv{suffix}").write_bytes(compress(content))
    r = match(pool, md, tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.stderr)
    assert sorted(matched(tmp_path / "out")["text"]) == [b"new york"] * 6 + [b"zstd dog"] * 6
    # Found by their suffixes: a .parquet.lzma or .parquet.zip file is Parquet.
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a dog", "new york cat"]}), table)
    parquets = tmp_path / "parquets"
    parquets.mkdir()
    (parquets / "p.parquet.lzma").write_bytes(
        lzma.compress(table.read_bytes(), format=lzma.FORMAT_ALONE)
    )
    (parquets / "q.parquet.zip").write_bytes(_zip("q", ("q.parquet", table.read_bytes())))
    assert [f.format for f in discover([str(parquets)])] == ["parquet", "parquet"]
    r = match(parquets, md, tmp_path / "out-parquet")
    assert r.exit_code == 0, (r.output, r.stderr)
    assert matched(tmp_path / "out-parquet")["entry_ids"] == [[0], [1, 2]] * 2
    # Without a codec, the compressed bytes would be read as text: an error instead.
    monkeypatch.delitem(fsspec.compression.compr, "bz2")
    err = error_line(match(pool, md, tmp_path / "out2"))
    assert "no codec for .bz2 files here" in err
    # (A Python built without zstd, and without the backport.)
    from gpu_curate import io

    monkeypatch.setattr(io, "_zstd", lambda: None)
    err = error_line(match(pool / "azst.csv.zst", md, tmp_path / "out3"))
    assert "no codec for .zst files here (pip install backports.zstd)" in err


def test_a_zip_file_must_hold_one_file(tmp_path, md):
    # fsspec's own zip codec reads the first file of the archive and no more: rows lost.
    content = b"text\na dog\n"
    pool = tmp_path / "pool"
    write(pool / "a.csv.zip", _zip("a", ("a.csv", content), ("b.csv", content)))
    out = tmp_path / "out"
    err = error_line(match(pool, md, out))
    assert (
        f"{pool / 'a.csv.zip'}: a .zip input must hold one file, this one holds 2 (a.csv, b.csv)"
        in err
    )
    assert not out.exists()  # found when the inputs are listed, before anything is written
    write(pool / "a.csv.zip", _zip("a"))
    assert "this one holds 0;" in error_line(match(pool, md, out))
    # Hidden names are skipped, as in a folder (macOS writes __MACOSX/._a.csv beside a.csv).
    write(pool / "a.csv.zip", _zip("a", ("a.csv", content), ("__MACOSX/._a.csv", b"\0\5"),
                                  (".DS_Store", b"\0")))  # fmt: skip
    r = match(pool, md, out)
    assert r.exit_code == 0, (r.output, r.stderr)
    assert matched(out)["text"] == [b"a dog"]
    shutil.rmtree(out)
    write(pool / "a.csv.zip", _zip("a", ("a.csv", content))[:40])
    assert f"cannot read {pool / 'a.csv.zip'}: File is not a zip file" in error_line(
        match(pool, md, out)
    )
    assert not out.exists()


def test_a_zip_file_given_by_url_is_checked_by_its_url(tmp_path, md):
    # The check opened the path fsspec strips of its protocol: no such local file (or,
    # worse, another one).
    import fsspec

    mem = fsspec.filesystem("memory")
    mem.pipe("/h19-pool/a.csv.zip", _zip("a", ("a.csv", b"text\na dog\n")))
    try:
        r = match("memory://h19-pool/a.csv.zip", md, tmp_path / "out")
        assert r.exit_code == 0, (r.output, r.stderr)
        assert matched(tmp_path / "out")["text"] == [b"a dog"]
        mem.pipe("/h19-pool/b.csv.zip", _zip("b", ("b.csv", b"x"), ("c.csv", b"y")))
        err = error_line(match("memory://h19-pool", md, tmp_path / "out2"))
        assert "memory:///h19-pool/b.csv.zip: a .zip input must hold one file" in err
    finally:
        mem.rm("/h19-pool", recursive=True)


def test_the_metadata_file_among_the_inputs_is_not_read_as_one(tmp_path, md):
    # MetaCLIP's metadata.json beside the pool was read as JSON Lines: "line 1 is not a
    # JSON object".
    pool = tmp_path / "pool"
    write(pool / "a.csv", b"text\na dog\n")
    shutil.copy(md, pool / "metadata.json")
    (pool / "link.json").symlink_to(pool / "metadata.json")  # the same file
    r = match(pool, pool / "metadata.json", tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.stderr)
    assert matched(tmp_path / "out")["text"] == [b"a dog"]
    err = error_line(match(pool / "metadata.json", pool / "metadata.json", tmp_path / "out2"))
    assert f"the inputs hold no pool file, only the metadata {pool / 'metadata.json'}" in err
    # Nor its sidecar, which `gpu-curate metadata build --out pool/metadata.json` writes.
    (pool / "metadata.sources.json").write_text(json.dumps({"sources": {}}, indent=1))
    r = match(pool, pool / "metadata.json", tmp_path / "out4")
    assert r.exit_code == 0, (r.output, r.stderr)
    assert matched(tmp_path / "out4")["text"] == [b"a dog"]
    # Another JSON file of the folder is still read (and here fails as no JSON Lines).
    shutil.copy(md, pool / "other.json")
    assert "other.json" in error_line(match(pool, pool / "metadata.json", tmp_path / "out3"))


def test_a_metadata_read_from_a_file_among_the_inputs_is_not_read_as_one(tmp_path, md, monkeypatch):
    # (Given to the API as a Metadata read from it, not as its path: the file was read
    # as a JSON Lines file of the pool.)
    from gpu_curate import Metadata, Options, curate

    pool = tmp_path / "pool"
    write(pool / "a.csv", b"text\na dog\n")
    shutil.copy(md, pool / "metadata.json")
    metadata = Metadata.from_file(pool / "metadata.json")
    assert metadata.path == str(pool / "metadata.json")
    # (Read by a relative path, it is found where it is after a change of folder; through
    # a link, `link/..` is where the link leads, not the folder that holds the link.)
    monkeypatch.chdir(tmp_path)
    assert Metadata.from_file("pool/metadata.json").path == str(tmp_path / "pool/metadata.json")
    (pool / "sub").mkdir()
    (tmp_path / "link").symlink_to(pool / "sub")
    through = Metadata.from_file("link/../metadata.json").path
    assert os.path.realpath(through) == os.path.realpath(pool / "metadata.json")
    opts = Options(backend="cpu", workers=1, quiet=True)
    report = curate([str(pool)], metadata, str(tmp_path / "out"), t=5, options=opts)
    assert report["pool_rows"] == 1
    # (It travels with the Metadata to the workers.)
    assert pickle.loads(pickle.dumps(metadata)).path == metadata.path


@pytest.mark.parametrize("name", ["a.csv", "a.tsv", "a.jsonl", "a.csv.gz"])
def test_a_small_file_that_grows_after_the_plan_stops_the_run(tmp_path, md, monkeypatch, name):
    # (A file read whole, or packed, was read as it was then: rows the run's manifest,
    # which holds its old size, does not describe; exit 0.)
    import gpu_curate.pipeline as pipeline

    rows = {"csv": b"text\na dog\n", "tsv": b"a dog\n", "jsonl": b'{"text": "a dog"}\n'}
    kind = name.split(".")[1]
    data = rows[kind] + rows[kind].split(b"\n", 1)[-1] * 3 if kind == "csv" else rows[kind] * 4
    path = tmp_path / "pool" / name
    write(path, gzip.compress(data) if name.endswith(".gz") else data)
    write(tmp_path / "pool" / "b.csv", b"text\ncat\n")
    real_plan = pipeline._plan

    def plan_then_grow(*args, **kwargs):
        parts = real_plan(*args, **kwargs)
        extra = b"".join(
            (b'{"text": "cat %d"}\n' if kind == "jsonl" else b"cat %d\n") % i for i in range(99)
        )
        more = data + extra
        path.write_bytes(gzip.compress(more) if name.endswith(".gz") else more)
        return parts

    monkeypatch.setattr(pipeline, "_plan", plan_then_grow)
    err = error_line(match(tmp_path / "pool", md, tmp_path / "out", "--workers", "1"))
    assert f"{path} changed during the run: it held " in err
    assert not (tmp_path / "out" / "report.json").exists()
    assert not (tmp_path / "out" / "matched" / "_SUCCESS").exists()


def test_a_chained_url_is_one_line(tmp_path, md):
    # The chain was dropped when the file's URL was rebuilt: a traceback in the workers.
    write(tmp_path / "a.csv", b"text\na dog\n")
    for spec in (f"simplecache::file://{tmp_path / 'a.csv'}", f"zip://*.csv::{tmp_path / 'a.zip'}"):
        err = error_line(match(spec, md, tmp_path / "out"))
        assert f"chained URLs are not read: {spec}; give the files' own URL" in err
    assert not (tmp_path / "out").exists()


def test_a_file_compressed_twice_is_an_error(tmp_path, md):
    # Only the last suffix is decompressed: the bytes below it were read as text (binary
    # rows matched, the real ones gone, and exit 0).
    tsv = b"a dog\nnew york\n"
    inner = gzip.compress(tsv, mtime=0)
    pool = tmp_path / "pool"
    write(pool / "a.tsv.zip", _zip("a", ("a.tsv.gz", inner)))
    err = error_line(match(pool, md, tmp_path / "out"))
    assert f"{pool / 'a.tsv.zip'}: the file it holds, a.tsv.gz, is itself compressed" in err
    shutil.rmtree(pool)
    for name in ("a.tsv.zip.gz", "a.tsv.gz.zip", "a.tsv.xz.gz", "a.tsv.gz.zst"):
        write(pool / name, gzip.compress(_zip("a", ("a.tsv", tsv))))
        err = error_line(match(pool, md, tmp_path / "out"))
        assert f"{pool / name}: compressed twice" in err, name
        shutil.rmtree(pool)
    # A .zip file that holds a file of another format than its name says.
    write(pool / "a.csv.zip", _zip("a", ("a.tsv", tsv)))
    err = error_line(match(pool, md, tmp_path / "out"))
    assert "read as csv, but the file it holds is a.tsv, a tsv file" in err
    assert not (tmp_path / "out").exists()


def test_a_damaged_zip_directory_is_one_line(tmp_path, md):
    good = _zip("a", ("\u00e9.csv", b"text\na dog\n"))
    central = good.index(b"PK\x01\x02")
    pool = tmp_path / "pool"
    damaged = []
    data = bytearray(good)
    data[central + 6] = 0xFF  # the version needed to extract: NotImplementedError
    damaged.append(bytes(data))
    data = bytearray(good)
    at = data.index("\u00e9".encode(), central)
    data[at] = 0xFF  # a name flagged UTF-8 that is not: UnicodeDecodeError
    damaged.append(bytes(data))
    for data in damaged:
        write(pool / "a.csv.zip", data)
        err = error_line(match(pool, md, tmp_path / "out"))
        assert f"cannot read {pool / 'a.csv.zip'}: " in err
        assert not (tmp_path / "out").exists()


def test_two_zip_files_one_after_the_other_are_an_error(tmp_path, md):
    # zipfile reads the last archive of a file: the rows of the first were dropped.
    first = _zip("a", ("a.csv", b"text\na dog\n"))
    second = _zip("b", ("b.csv", b"text\nnew york\n"))
    write(tmp_path / "pool" / "a.csv.zip", first + second)
    err = error_line(match(tmp_path / "pool", md, tmp_path / "out"))
    assert "this .zip file holds bytes before its archive" in err


# ------------------------------------------------------------------------ CSV / TSV


@pytest.mark.parametrize(
    "content, columns, id_column",
    [
        # a UTF-8 byte-order mark before the header
        (b"\xef\xbb\xbftext,id\na dog,1\ncat,2\n", ["text", "id"], None),
        # spaces after the commas of the header
        (b"id, text\n1,a dog\n2,cat\n", ["id", "text"], None),
        # the id column named by --id-column marks the header too
        (b"key,caption text\n1,a dog\n2,cat\n", ["key", "caption text"], "key"),
    ],
)
def test_csv_header_is_recognised(tmp_path, md, content, columns, id_column):
    write(tmp_path / "pool" / "a.csv", content)
    extra = ["--text-column", columns[1]] if id_column else []
    extra += ["--id-column", id_column] if id_column else []
    r = match(tmp_path / "pool", md, tmp_path / "out", *extra)
    assert r.exit_code == 0, r.output
    got = matched(tmp_path / "out")
    assert list(got) == [*columns, "entry_ids"]
    text = "text" if "text" in columns else columns[1]
    assert got[text] == [b"a dog", b"cat"]
    assert got["entry_ids"] == [[0], [2]]


@pytest.mark.parametrize(
    "name, content",
    [
        ("a.tsv", b"text\tid\ra dog\t1\rcat\t2\r"),
        ("a.csv", b"text,id\ra dog,1\r\rcat,2"),
        ("a.tsv", b"a dog\t1\rcat\t2\r"),
    ],
)
def test_lines_ended_by_a_lone_cr_are_rows(tmp_path, md, name, content):
    # (Old Mac line ends. The header check split the first line at \n only, and Python's
    # csv module failed on the \r inside it, with a traceback.)
    write(tmp_path / "pool" / name, content)
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, r.output
    got = matched(tmp_path / "out")
    text = "text" if b"text" in content else "f0"
    assert got[text] == [b"a dog", b"cat"]
    assert got["entry_ids"] == [[0], [2]]


@pytest.mark.parametrize("first", [b"Caption,url", b"url,title", b"id,description"])
def test_csv_first_line_like_a_header_naming_no_text_column_is_an_error(tmp_path, md, first):
    write(tmp_path / "pool" / "a.csv", first + b"\ndog,http://x\n")
    err = error_line(match(tmp_path / "pool", md, tmp_path / "out"))
    assert "a.csv" in err and "looks like a header" in err and "--text-column" in err
    assert not (tmp_path / "out" / "report.json").exists()


def test_csv_named_text_column_or_f0_resolves_it(tmp_path, md):
    write(tmp_path / "pool" / "a.csv", b"url,title\nhttp://x,a dog\n")
    r = match(tmp_path / "pool", md, tmp_path / "out", "--text-column", "title")
    assert r.exit_code == 0, r.output
    assert matched(tmp_path / "out") == {
        "url": [b"http://x"], "title": [b"a dog"], "entry_ids": [[0]]
    }  # fmt: skip
    r = match(tmp_path / "pool", md, tmp_path / "out2", "--text-column", "f0")
    assert r.exit_code == 0, r.output
    assert matched(tmp_path / "out2")["f0"] == [b"url", b"http://x"]


def test_csv_header_less_with_urls_reads_f0(tmp_path, md):
    write(tmp_path / "pool" / "a.csv", b"a dog,http://x\nnew york cat,http://y\n")
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert matched(tmp_path / "out") == {
        "f0": [b"a dog", b"new york cat"],
        "f1": [b"http://x", b"http://y"],
        "entry_ids": [[0], [1, 2]],
    }


@pytest.mark.parametrize("ext, sep", [("tsv", b"\t"), ("csv", b",")])
def test_header_less_urls_first_is_an_error_unless_the_column_is_named(tmp_path, md, ext, sep):
    # CC12M's url<TAB>caption: matched on f0, the captions' addresses were curated.
    rows = [(b"https://img.example/1.jpg", b"a dog"), (b"HTTP://x/2", b"new york cat")]
    write(tmp_path / "pool" / f"a.{ext}", b"".join(u + sep + c + b"\r\n" for u, c in rows))
    err = error_line(match(tmp_path / "pool", md, tmp_path / "out"))
    assert err.endswith(
        f"a.{ext}: its first column holds URLs (https://img.example/1.jpg, ...), and a file "
        "without a header is matched on its first column: name the caption column with "
        "--text-column (f1 for the second; f0 matches the URLs all the same)"
    ), err
    assert not (tmp_path / "out").exists()
    for column, ids in (("f1", [[0], [1, 2]]), ("f0", [[], []])):
        r = match(tmp_path / "pool", md, tmp_path / column, "--text-column", column)
        assert r.exit_code == 0, r.output
        assert matched(tmp_path / column)["entry_ids"] == ids
    # (A byte-order mark before the first URL changes nothing.)
    write(
        tmp_path / "bom" / f"a.{ext}",
        b"\xef\xbb\xbf" + b"".join(u + sep + c + b"\n" for u, c in rows),
    )
    assert "its first column holds URLs" in error_line(match(tmp_path / "bom", md, tmp_path / "b"))
    # One line of the head that is no URL, and the first column is taken for captions.
    write(tmp_path / "pool" / f"a.{ext}", b"a dog" + sep + b"https://img.example/1.jpg\n"
          + b"".join(u + sep + c + b"\n" for u, c in rows))  # fmt: skip
    assert match(tmp_path / "pool", md, tmp_path / "mixed").exit_code == 0


def test_a_first_caption_that_is_a_default_name_is_a_row_under_text_column_f0(tmp_path, md):
    # Placeholder alt-texts ("text", "caption") are common: by default such a first line is
    # a header (the documented rule); naming f0 reads the file as one without a header.
    write(tmp_path / "pool" / "a.tsv", b"caption\thttp://c\na dog\thttp://x\n")
    r = match(tmp_path / "pool", md, tmp_path / "f0", "--text-column", "f0")
    assert r.exit_code == 0, r.output
    got = matched(tmp_path / "f0")
    assert got["f0"] == [b"caption", b"a dog"] and got["entry_ids"] == [[], [0]]
    r = match(tmp_path / "pool", md, tmp_path / "default")
    assert r.exit_code == 0, r.output
    assert matched(tmp_path / "default")["caption"] == [b"a dog"]


def test_a_header_that_does_not_name_the_text_column_is_said(tmp_path, md):
    # --text-column TEXT on a file whose header is in other names (or cases): the message
    # names that header, not the f0, f1 of a file without one.
    for header in (b"url\tcaption", b"ID\tText"):
        write(tmp_path / "pool" / "s0.tsv", header + b"\nhttp://x/0\ta dog\n")
        err = error_line(match(tmp_path / "pool", md, tmp_path / "T", "--text-column", "text"))
        names = header.decode().replace("\t", ", ")
        assert err.endswith(
            f"s0.tsv: text column 'text' not found; its first line names {names} (a file "
            "without a header has columns f0, f1, ...)"
        )
        assert not (tmp_path / "T").exists()
    # Under --text-column fN the first line is a row, whatever it holds (a one-word caption
    # beside a key that looks like a name).
    write(tmp_path / "pool" / "s0.tsv", b"caption\timg_0001\na dog on a beach\timg_0002\n")
    r = match(tmp_path / "pool", md, tmp_path / "f0", "--text-column", "f0")
    assert r.exit_code == 0, r.output
    assert matched(tmp_path / "f0")["f0"] == [b"caption", b"a dog on a beach"]


def test_a_json_lines_file_of_blank_lines_holds_no_rows_and_no_columns(tmp_path, md):
    # Beside files with an id column: its made-up text column (no id) stopped the run.
    write(tmp_path / "pool" / "a.jsonl", b'{"TEXT": "a dog", "id": 3}\n')
    write(tmp_path / "pool" / "b.jsonl", b"\n \r\n")
    r = match(tmp_path / "pool", md, tmp_path / "out", "--id-column", "id")
    assert r.exit_code == 0, (r.output, r.stderr)
    assert matched(tmp_path / "out") == {"TEXT": [b"a dog"], "id": [3], "entry_ids": [[0]]}
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (rep["pool_rows"], rep["column_sets"], rep["input_files"]) == (1, 1, 2)


def test_csv_columns_are_strings_as_written(tmp_path, md):
    # No type guessing: "001" and "1" are two ids, and a caption "1984" is a text.
    write(tmp_path / "pool" / "a.csv", b"id,text\n001,1984\n1,a dog\n2001,2001\n")
    r = match(tmp_path / "pool", md, tmp_path / "out", "--id-column", "id")
    assert r.exit_code == 0, r.output
    assert matched(tmp_path / "out") == {
        "id": [b"001", b"1", b"2001"],
        "text": [b"1984", b"a dog", b"2001"],
        "entry_ids": [[3], [0], []],
    }


def test_csv_row_that_is_not_utf8_is_data(tmp_path, md):
    import pandas as pd

    write(tmp_path / "pool" / "a.csv", b"text,url\ncaf\xe9 dog,http://x/\xff\ncat,http://y\n")
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, r.output
    # The invalid bytes become U+FFFD, as Python's errors="replace" decodes them, so the
    # parts are valid Parquet strings that pandas (and any reader) takes.
    assert matched(tmp_path / "out") == {
        "text": ["caf\ufffd dog".encode(), b"cat"],
        "url": ["http://x/\ufffd".encode(), b"http://y"],
        "entry_ids": [[0], [2]],
    }
    back = pd.read_parquet(tmp_path / "out" / "matched")
    assert back["text"].tolist() == ["caf\ufffd dog", "cat"]


def jsonl_read_as(monkeypatch, read: str) -> list[str]:
    """Make a JSON Lines file be read ``read`` ("whole", "streamed" or cut into "ranges");
    the options of the run that reads it so."""
    import gpu_curate.io as gio

    if read != "whole":
        monkeypatch.setattr(gio, "JSON_STREAM_BYTES", 10)  # (a file above it is cut)
    return ["--partition-rows", "2"] if read == "ranges" else []


@pytest.mark.parametrize("read", ["whole", "streamed", "ranges"])
def test_jsonl_row_that_is_not_utf8_is_data(tmp_path, md, monkeypatch, read):
    # Arrow's JSON reader keeps invalid bytes in a string column: the parts were written,
    # exit 0, and pandas could not read them. They become U+FFFD, as a CSV's do.
    import pandas as pd

    rows = [b'{"text": "caf\xe9 dog", "url": "http://x/\xff"}', b'{"text": "cat", "url": "y"}']
    write(tmp_path / "pool" / "a.jsonl", b"\n".join(rows * 3) + b"\n")
    extra = jsonl_read_as(monkeypatch, read)
    r = match(tmp_path / "pool", md, tmp_path / "out", *extra)
    assert r.exit_code == 0, (r.output, r.stderr)
    assert matched(tmp_path / "out") == {
        "text": ["caf\ufffd dog".encode(), b"cat"] * 3,
        "url": ["http://x/\ufffd".encode(), b"y"] * 3,
        "entry_ids": [[0], [2]] * 3,
    }
    back = pd.read_parquet(tmp_path / "out" / "matched")
    assert back["text"].tolist() == ["caf\ufffd dog", "cat"] * 3
    parts = json.loads((tmp_path / "out" / "report.json").read_text())["parts"]
    assert parts == (3 if read == "ranges" else 1)


@pytest.mark.parametrize("read", ["whole", "streamed", "ranges"])
def test_jsonl_escaped_lone_surrogate_is_data(tmp_path, md, monkeypatch, read):
    # ("\ud83d", half an emoji, escaped: Arrow's reader refused the file, "The surrogate
    # pair in string is invalid", and the run stopped.) Each lone one is U+FFFD, as an
    # invalid UTF-8 byte is: the rows are those of the file with U+FFFD written there.
    # (Read by Python's reader, the file's lists, objects and times became JSON text: its
    # parts had another schema than its neighbours'.)
    more = b', "tags": ["p"], "meta": {"w": 1}, "d": "2020-01-01 00:00:00"}'
    escaped = [
        rb'{"text": "a dog \ud83d", "url": "x"' + more,
        rb'{"text": "cat \ud83d\ude00 \ude00\ud83d", "url": "y\udfff"' + more,
        b'{"text": "new york", "url": "z"' + more,
    ]
    write(tmp_path / "pool" / "a.jsonl", b"\n".join(escaped * 3) + b"\n")
    fffd = "\ufffd".encode()
    written = b"\n".join(escaped * 3).replace(rb"\ud83d\ude00", "\U0001f600".encode())
    for half in (rb"\ud83d", rb"\ude00", rb"\udfff"):
        written = written.replace(half, fffd)
    write(tmp_path / "ref" / "a.jsonl", written + b"\n")
    extra = jsonl_read_as(monkeypatch, read)
    for name in ("pool", "ref"):
        r = match(tmp_path / name, md, tmp_path / f"out-{name}", *extra)
        assert r.exit_code == 0, (r.output, r.stderr)
    got = matched(tmp_path / "out-pool")
    assert {k: got[k] for k in ("text", "url", "entry_ids")} == {
        "text": ["a dog \ufffd".encode(), "cat \U0001f600 \ufffd\ufffd".encode(), b"new york"] * 3,
        "url": [b"x", "y\ufffd".encode(), b"z"] * 3,
        "entry_ids": [[0], [2], [1]] * 3,
    }
    types = pq.read_schema(next((tmp_path / "out-pool" / "matched").glob("*.parquet"))).types
    assert [str(t) for t in types[2:5]] == ["list<element: string>", "struct<w: int64>", "string"]
    assert pq.read_table(tmp_path / "out-pool" / "matched").equals(
        pq.read_table(tmp_path / "out-ref" / "matched")
    )


def test_jsonl_escaped_lone_surrogate_in_a_key(tmp_path, md):
    write(tmp_path / "pool" / "a.jsonl", b'{"text": "a dog", "k\\ud800": 1}\n')
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.stderr)
    assert matched(tmp_path / "out") == {"text": [b"a dog"], "k\ufffd": [1], "entry_ids": [[0]]}


@pytest.mark.parametrize("read", ["whole", "streamed", "ranges"])
@pytest.mark.parametrize(
    "line, key",
    [
        (b'{"text": "a cat", "x": 1, "x": 2}', "'x'"),
        (b'{"text": 1984, "m": [{"a": 1, "a": 2}]}', "'a'"),  # (mixed types: Python's reader)
        (b'{"text": "x", "a\\ud800": 1, "a\\udfff": 2}', "'a\ufffd'"),  # (one name, twice)
    ],
    ids=["top", "nested", "surrogates"],
)
def test_a_jsonl_key_twice_in_an_object_names_its_line(tmp_path, md, monkeypatch, read, line, key):
    # (Arrow's reader: "Column(/x) was specified twice in row 1", counted within a block;
    # Python's reader kept the last value, so the same row was data there.)
    rows = [b'{"text": "a dog"}', b"", b'{"text": "new york"}', line, b'{"text": "cat"}']
    write(tmp_path / "pool" / "a.jsonl", b"\n".join(rows) + b"\n")
    err = error_line(
        match(tmp_path / "pool", md, tmp_path / "out", *jsonl_read_as(monkeypatch, read))
    )
    assert err.endswith(f"a.jsonl: line 4 holds the key {key} twice in one object"), err


# ------------------------------------------------------------------------ JSONL / Parquet


def test_jsonl_of_mixed_types_with_a_line_longer_than_a_block(tmp_path, md):
    # Read again with larger blocks for the long line, Arrow's reader says "Failed to
    # convert JSON to double" rather than "changed from": the file was refused.
    rows = [json.dumps({"text": "a dog", "x": 1.5})] * 3
    rows += [json.dumps({"text": "dog " + "y" * 5_000_000, "x": "s"}), '{"text": "cat", "x": "s"}']
    write(tmp_path / "pool" / "a.jsonl", ("\n".join(rows) + "\n").encode())
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.stderr)
    got = pq.read_table(tmp_path / "out" / "matched", columns=["x", "entry_ids"]).to_pydict()
    assert got == {"x": ["1.5"] * 3 + ["s", "s"], "entry_ids": [[0]] * 4 + [[2]]}


def test_jsonl_line_longer_than_a_read_block(tmp_path, md):
    long_text = "dog " + "x " * 3_000_000  # ~6 MB, past Arrow's default block
    lines = [json.dumps({"text": long_text}), json.dumps({"text": "new york"})]
    write(tmp_path / "pool" / "a.jsonl", ("\n".join(lines) + "\n").encode())
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert matched(tmp_path / "out")["entry_ids"] == [[0], [1]]


@pytest.mark.parametrize(
    "content, texts, n",
    [
        # other columns keep their types
        (b'{"text": 1984, "n": 1}\n{"text": 1.50, "n": 2}\n', [b"1984", b"1.50"], [1, 2]),
        # another column of mixed JSON types sends the file to the mixed-types reader,
        # which must read the numbers-only text column as text too
        (b'{"text": 1984, "n": 1}\n{"text": 5, "n": "x"}\n', [b"1984", b"5"], [b"1", b"x"]),
    ],
    ids=["numbers-only", "beside-a-mixed-column"],
)
def test_jsonl_text_column_of_numbers_only_is_text_as_written(tmp_path, md, content, texts, n):
    write(tmp_path / "pool" / "a.jsonl", content)
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.stderr)
    got = matched(tmp_path / "out")
    assert got["text"] == texts and got["entry_ids"] == [[3], []]
    assert got["n"] == n


def test_parts_whose_columns_differ_only_in_type_are_reported(tmp_path, md):
    write(tmp_path / "pool" / "a.jsonl", b'{"text": "a dog", "meta": {"k": 1}}\n')
    write(
        tmp_path / "pool" / "b.jsonl", b'{"text": "a cat", "meta": 1}\n{"text": "x", "meta": "y"}\n'
    )
    r = CliRunner().invoke(main, ["match", str(tmp_path / "pool"), "--metadata", str(md),
                                  "--out", str(tmp_path / "out"), "--backend", "cpu"])  # fmt: skip
    assert r.exit_code == 0, (r.output, r.exception)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["column_sets"] == 2
    assert "2 different sets of columns or column types" in r.output


def test_a_jsonl_file_of_cr_line_ends_is_streamed_in_chunks(tmp_path, monkeypatch):
    from gpu_curate import io

    lines = [json.dumps({"text": f"a dog {i}", "n": i}) for i in range(200)]
    path = write(tmp_path / "a.jsonl", ("\r".join(lines) + "\r").encode())
    piece = io.Piece(io.InputFile(str(path), "a.jsonl", "jsonl", path.stat().st_size), 0, None)
    whole = io.read_piece(piece)
    assert whole.num_rows == 200
    monkeypatch.setattr(io, "JSON_STREAM_BYTES", 0)
    monkeypatch.setattr(io, "_JSON_CHUNK", 512)
    tables = list(io.read_piece_batches(piece, rows=20))
    assert len(tables) >= 5 and max(t.num_rows for t in tables) < 40, [len(t) for t in tables]
    assert pa.concat_tables(tables).equals(whole)


def test_jsonl_number_too_long_for_int(tmp_path, md):
    long = "9" * 5000  # (Python's int() takes at most 4,300 digits)
    write(tmp_path / "pool" / "a.jsonl", f'{{"text": {long}}}\n{{"text": "a dog"}}\n'.encode())
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.stderr)
    assert matched(tmp_path / "out")["text"] == [long.encode(), b"a dog"]


def test_jsonl_ids_and_times_are_kept_as_written(tmp_path, md):
    # uint64 hash ids were read as doubles (three ids one value, and refused as an id
    # column); strings that read as times became timestamps without their zone's offset.
    ids = [2**64 - 1, 2**64 - 2, 2**63, 5]
    times = ["2020-01-02T03:04:05+02:00", "2021-06-01", "2021-06-01 10:00", "2022-01-01T00:00Z"]
    rows = [{"id": i, "text": "a dog", "taken": t} for i, t in zip(ids, times, strict=True)]
    write(tmp_path / "pool" / "a.jsonl", "\n".join(map(json.dumps, rows)).encode())
    r = match(tmp_path / "pool", md, tmp_path / "out", "--id-column", "id")
    assert r.exit_code == 0, (r.output, r.stderr)
    table = pq.read_table(tmp_path / "out" / "matched")
    assert table.schema.field("id").type == pa.uint64()
    assert table.column("id").to_pylist() == ids
    assert table.column("taken").to_pylist() == times
    from gpu_curate.uid import value_uids

    expected = value_uids(pa.array(ids, pa.uint64()), "id")
    assert table.column("uid").to_pylist() == expected.tolist()
    assert len(set(expected.tolist())) == 4


_BIG = "1" + "0" * 5000  # (an integer of 5,001 digits)


@pytest.mark.parametrize("read", ["whole", "streamed", "ranges"])
@pytest.mark.parametrize(
    "values, kind, want",
    [
        # Integers a double holds exactly, beside fractions or negatives: doubles (these
        # files failed: pyarrow takes no int past 2**53 into a double column).
        (["1609459200000000000", "1.6094592e18"], pa.float64(), [1.6094592e18] * 2),
        (["0.5", "9007199254740994"], pa.float64(), [0.5, 9007199254740994.0]),
        (["-1", "9223372036854775808"], pa.float64(), [-1.0, 2.0**63]),
        # Large float literals are doubles as written (no integer a double rounded): they
        # stay doubles, in lists and objects too (these were read as JSON text).
        (["1.5e16", "2.5"], pa.float64(), [1.5e16, 2.5]),
        (["[0.5, 1.5e16]", "[2e16]"], pa.list_(pa.float64()), [[0.5, 1.5e16], [2e16]]),
        # In a list's JSON text, numbers are as written (not Infinity, 1.5 or 100000.0).
        ([f"[{_BIG}, 1.50, 1E5, -0]", "[1]"], pa.string(), [f"[{_BIG},1.50,1E5,-0]", "[1]"]),
    ],
    ids=["ns-times", "exact-beside-fraction", "exact-beside-negative", "large-floats",
         "large-floats-in-lists", "list-text"],
)  # fmt: skip
def test_jsonl_numbers_are_read_as_written(tmp_path, md, monkeypatch, read, values, kind, want):
    rows = [f'{{"text": "a dog {i}", "x": {v}}}' for i, v in enumerate(values * 3)]
    write(tmp_path / "pool" / "a.jsonl", ("\n".join(rows) + "\n").encode())
    r = match(tmp_path / "pool", md, tmp_path / "out", *jsonl_read_as(monkeypatch, read))
    assert r.exit_code == 0, (r.output, r.stderr)
    column = pq.read_table(tmp_path / "out" / "matched").column("x")
    assert (column.type, column.to_pylist()) == (kind, want * 3)


def test_jsonl_values_of_several_types_are_data(tmp_path, md, monkeypatch):
    from gpu_curate import io

    monkeypatch.setattr(io, "_JSON_BATCH", 2)  # several batches from a small file
    rows = [
        b'{"text": "a dog", "id": 1, "score": 0.5}',
        b'{"text": 1984, "id": 2, "score": 1}',  # Arrow's reader fails the whole file
        b"",
        b'{"text": null, "id": 3}',
        b'{"text": ["a new york dog", 1.50], "id": 4, "tags": {"a": true}}',
        b'{"text": true, "id": -5, "score": 12345678901234567890}',
        b'{"text": "caf\\u00e9 cat", "id": 6}',
    ]
    write(tmp_path / "pool" / "a.jsonl", b"\n".join(rows) + b"\n")
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.exception)
    got = matched(tmp_path / "out")
    # A non-string text is its JSON text: 1984 matches the entry "1984", the list's text
    # ["a new york dog",1.50] (its numbers as written) matches "new york" (but not dog":
    # " is no space character).
    assert got["text"] == [
        b"a dog",
        b"1984",
        None,
        b'["a new york dog",1.50]',
        b"true",
        "café cat".encode(),
    ]
    assert got["entry_ids"] == [[0], [3], [], [1], [], [2]]
    assert got["id"] == [1, 2, 3, 4, -5, 6]
    # (A double would round 12345678901234567890: the column is kept as written, as text.)
    assert got["score"] == [b"0.5", b"1", None, None, b"12345678901234567890", None]
    assert got["tags"] == [None, None, None, b'{"a":true}', None, None]
    for content, why in ((b'{"text": "a"}\n{"text": 1}\n{"text": \n', "line 3 is not valid JSON"),
                         (b'{"text": "a"}\n["b"]\n', "line 2 is not a JSON object")):  # fmt: skip
        write(tmp_path / "bad" / "b.jsonl", content)
        assert why in error_line(match(tmp_path / "bad", md, tmp_path / "out2", "--overwrite"))


@pytest.mark.parametrize("read", ["whole", "streamed", "ranges"])
def test_invalid_utf8_in_nested_jsonl_values(tmp_path, md, monkeypatch, read):
    # In lists and structs too: a streamed read wrote them as they were (pandas could not
    # read the part), and a whole read took them for Arrow's invalid lists and turned the
    # columns into JSON text.
    import pandas as pd

    import gpu_curate.io as gio

    rows = [b'{"text": "a dog", "tags": ["x\xff"], "meta": {"k": "y\xfe"}}',
            b'{"text": "a cat", "tags": [], "meta": {"k": "z"}}']  # fmt: skip
    write(tmp_path / "pool" / "a.jsonl", b"\n".join(rows * 2) + b"\n")
    extra = []
    if read != "whole":
        monkeypatch.setattr(gio, "JSON_STREAM_BYTES", 10)
    if read == "ranges":
        extra = ["--partition-rows", "1"]
    r = match(tmp_path / "pool", md, tmp_path / "out", *extra)
    assert r.exit_code == 0, (r.output, r.stderr)
    back = pd.read_parquet(tmp_path / "out" / "matched", dtype_backend="pyarrow")
    assert back["tags"].tolist() == [["x\ufffd"], []] * 2
    assert back["meta"].tolist() == [{"k": "y\ufffd"}, {"k": "z"}] * 2
    assert back["entry_ids"].tolist() == [[0], [2]] * 2


def test_invalid_utf8_in_a_list_that_begins_with_null(tmp_path, md):
    # Arrow drops the nulls that begin a list (its offsets then outrun its values): the
    # UTF-8 repair could not rebuild such a column and the file was refused.
    import pandas as pd

    rows = b'{"text": "a dog", "tags": [null, "x\xff"]}\n{"text": "a cat", "tags": ["o\xff"]}\n'
    write(tmp_path / "pool" / "a.jsonl", rows)
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.stderr)
    back = pd.read_parquet(tmp_path / "out" / "matched", dtype_backend="pyarrow")
    assert back["tags"].tolist() == [[None, "x\ufffd"], ["o\ufffd"]]


@pytest.mark.parametrize("read", ["whole", "streamed", "ranges"])
def test_a_jsonl_key_that_is_not_utf8(tmp_path, md, monkeypatch, read):
    # Arrow's field names are decoded when read: a traceback (UnicodeDecodeError). The
    # key gets U+FFFD, as values do, by the reader of mixed types.
    import gpu_curate.io as gio

    rows = b'{"text": "a dog", "k\xff": 1, "s": {"j\xfe": "v"}}\n' * 2
    write(tmp_path / "pool" / "a.jsonl", rows)
    if read != "whole":
        monkeypatch.setattr(gio, "JSON_STREAM_BYTES", 10)
    extra = ["--partition-rows", "1"] if read == "ranges" else []
    r = match(tmp_path / "pool", md, tmp_path / "out", *extra)
    assert r.exit_code == 0, (r.output, r.stderr)
    got = pq.read_table(tmp_path / "out" / "matched").drop(["uid"]).to_pylist()
    assert got == [{"text": "a dog", "k\ufffd": 1, "s": '{"j\ufffd":"v"}', "entry_ids": [0]}] * 2


def test_a_jsonl_value_nested_too_deeply_is_one_line(tmp_path, md):
    # (Python's parser, which reads a file of mixed types, raised RecursionError.)
    deep = b"[" * 3000 + b"]" * 3000
    write(
        tmp_path / "pool" / "a.jsonl",
        b'{"text": "cat", "x": 1}\n{"text": "dog", "x": ' + deep + b"}\n",
    )
    err = error_line(match(tmp_path / "pool", md, tmp_path / "out"))
    assert "a.jsonl: line 2 is nested more than 48 levels deep" in err


def test_jsonl_as_arrow_reads_it_a_bom_and_objects_on_one_line(tmp_path, md):
    # Python's parser (the reader of mixed types, and the search for a bad line) took
    # neither: a file Arrow reads was refused, or its error named the wrong line.
    bom = b"\xef\xbb\xbf"
    write(
        tmp_path / "a" / "a.jsonl",
        bom + b'{"text": "a dog", "x": 1}\n{"text": "a cat", "x": "s"}\n',
    )
    r = match(tmp_path / "a", md, tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.stderr)
    assert matched(tmp_path / "out")["x"] == [b"1", b"s"]
    for content, line in [
        (bom + b'{"text": "a"}\n{"text": "b"}\n\n{"text": "c", oops}\n', 4),
        (b'{"text": "a"} {"text": "b"}{"text": "c"}\n\n{"text": "d", oops}\n', 3),
    ]:
        write(tmp_path / "b" / "b.jsonl", content)
        err = error_line(match(tmp_path / "b", md, tmp_path / "out2", "--overwrite"))
        assert f"b.jsonl: line {line} is not valid JSON (Expecting property name" in err


def test_a_jsonl_file_of_mixed_types_that_is_not_utf8_is_data(tmp_path, md):
    # (Read by Python's parser, which refused the file as "not UTF-8".)
    write(tmp_path / "pool" / "a.jsonl", b'{"text": "caf\xe9 dog"}\n{"text": 1984}\n')
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.stderr)
    got = matched(tmp_path / "out")
    assert got == {"text": ["caf\ufffd dog".encode(), b"1984"], "entry_ids": [[0], [3]]}


@pytest.mark.parametrize("read", ["whole", "streamed", "ranges"])
def test_a_jsonl_syntax_error_names_its_line(tmp_path, md, monkeypatch, read):
    # Arrow's reader said "in row 2": counted from 0, within a block, blank lines not
    # counted. The error names the line of the file, as a line that is no object does.
    import gpu_curate.io as gio

    lines = [f'{{"text": "a dog {i}", "id": {i}}}' for i in range(60)]
    lines[4:4] = ["", ""]  # (blank lines: not rows)
    lines[50] = '{"text": "a dog", oops}'
    write(tmp_path / "pool" / "a.jsonl", ("\n".join(lines) + "\n").encode())
    extra = []
    if read != "whole":
        monkeypatch.setattr(gio, "JSON_STREAM_BYTES", 10)
        monkeypatch.setattr(gio, "_JSON_CHUNK", 300)  # (the bad line in a later chunk)
    if read == "ranges":
        extra = ["--partition-rows", "10"]
    r = match(tmp_path / "pool", md, tmp_path / "out", *extra)
    assert (
        "a.jsonl: line 51 is not valid JSON (Expecting property name enclosed in double quotes)"
        in error_line(r)
    )


def _jsonl_lines(kind: str) -> list[str]:
    """40 JSON lines of a kind; "typed" ones have one type a column all through."""
    rows = []
    for i in range(40):
        row: dict = {"text": f"caf\u00e9 dog {i}" if i % 7 else None, "id": i}
        if i % 3:
            row["score"] = i + 0.25  # (always a fraction: double in every chunk)
        if i >= 25:
            row["late"] = f"only in later chunks {i}"  # (absent, then strings)
        row["maybe"] = None if i < 30 else [f"t{i}", "u"]  # (null, then lists)
        row["meta"] = {"w": i, "h": 2 * i}
        row["when"] = f"2020-01-{1 + i % 28:02d}"  # (Arrow's reader infers timestamps)
        if kind in ("uint64", "uint64-then-negative"):
            row["id"] = 2**64 - 1 - 7919 * i  # (a double would round them)
        if kind == "uint64-then-negative" and i == 37:
            row["id"] = -1  # (no integer type holds both: text as written)
        if kind == "uint64-nested":
            row["meta"]["w"] = 2**64 - 1 - i
        if kind == "int-then-double" and i == 37:
            row["id"] = 37.5  # (a whole read makes the column double)
        if kind == "mixed" and i == 33:
            row["id"] = "thirty-three"  # (read by the mixed-types reader)
        if kind == "numbers":
            row["text"] = i
        rows.append(json.dumps(row))
        if i % 11 == 0:
            rows.append("")  # (blank lines are skipped)
    return rows


_WIDE_KINDS = [("uint64", True), ("uint64-then-negative", False), ("uint64-nested", False)]


@pytest.mark.parametrize(
    "kind, streamed",
    [("typed", True), ("int-then-double", False), ("mixed", False), ("numbers", False),
     *_WIDE_KINDS],
)  # fmt: skip
def test_a_big_jsonl_file_read_as_a_stream_equals_a_whole_read(
    tmp_path, monkeypatch, kind, streamed
):
    from gpu_curate import io

    path = write(tmp_path / "a.jsonl", ("\n".join(_jsonl_lines(kind)) + "\n").encode())
    piece = io.Piece(io.InputFile(str(path), "a.jsonl", "jsonl", path.stat().st_size), 0, None)
    whole = io.read_piece(piece)
    monkeypatch.setattr(io, "JSON_STREAM_BYTES", 0, raising=False)
    monkeypatch.setattr(io, "_JSON_CHUNK", 300, raising=False)  # (a few lines a chunk)
    tables = list(io.read_piece_batches(piece, rows=8))
    assert len(tables) > 1 if streamed else len(tables) == 1
    joined = pa.concat_tables(tables)
    assert joined.schema.equals(whole.schema), (joined.schema, whole.schema)
    assert joined.equals(whole)
    assert whole.num_rows == 40
    if kind == "typed":  # (the whole read, by hand)
        assert whole.column_names == ["text", "id", "maybe", "meta", "when", "score", "late"]
        assert whole.column("late").to_pylist()[24:26] == [None, "only in later chunks 25"]
        assert whole.column("maybe").type == pa.list_(pa.string())
        assert whole.column("text").to_pylist()[:2] == [None, "café dog 1"]
        # (Strings that read as times stay strings: Arrow's reader made them timestamps.)
        assert whole.column("when").to_pylist()[:2] == ["2020-01-01", "2020-01-02"]
    if kind == "int-then-double":
        assert whole.column("id").type == pa.float64()
    # Integers a double cannot hold are kept as written: uint64 where they all fit it,
    # else their JSON text (a double rounded 2**64 - 1 and 2**64 - 2 to one value).
    ids = [2**64 - 1 - 7919 * i for i in range(40)]
    if kind == "uint64":
        assert whole.column("id").type == pa.uint64()
        assert whole.column("id").to_pylist() == ids
    if kind == "uint64-then-negative":
        assert whole.column("id").to_pylist() == [str(i) for i in ids[:37]] + [
            "-1",
            *map(str, ids[38:]),
        ]
    if kind == "uint64-nested":
        assert whole.column("meta").to_pylist()[1] == f'{{"w":{2**64 - 2},"h":2}}'


@pytest.mark.parametrize(
    "kind, cut",
    [("typed", True), ("int-then-double", False), ("mixed", False), ("numbers", False),
     *_WIDE_KINDS],
)  # fmt: skip
def test_a_big_jsonl_file_cut_into_ranges_equals_a_whole_read(
    tmp_path, monkeypatch, local_client, kind, cut
):
    # Cut into ranges of lines, matched apart: each range's rows typed as the whole read
    # types the file (the types found in every range joined when the run is planned),
    # with the row numbers of the whole file. A file that its ranges would type otherwise
    # is one part, read as before.
    from gpu_curate import io
    from gpu_curate.pipeline import Options, _plan

    path = write(tmp_path / "a.jsonl", ("\n".join(_jsonl_lines(kind)) + "\n").encode())
    f = io.InputFile(str(path), "a.jsonl", "jsonl", path.stat().st_size)
    whole = io.read_piece(io.Piece(f, 0, None))
    monkeypatch.setattr(io, "JSON_STREAM_BYTES", 0, raising=False)
    monkeypatch.setattr(io, "_JSON_CHUNK", 300, raising=False)  # (a few lines a chunk)
    parts = _plan(local_client, [f], Options(partition_rows=8, quiet=True))
    assert len(parts) >= 4 if cut else len(parts) == 1
    tables, row = [], 0
    for part in parts:
        (piece,) = part.pieces
        assert piece.row_start == row
        for start, table in io.piece_tables(piece):
            assert start == row
            tables.append(table)
            row += table.num_rows
    joined = pa.concat_tables(tables)
    assert joined.schema.equals(whole.schema), (joined.schema, whole.schema)
    assert joined.equals(whole)
    assert whole.num_rows == 40


def _jsonl_piece(path: Path):
    from gpu_curate import io

    return io.Piece(io.InputFile(str(path), path.name, "jsonl", path.stat().st_size), 0, None)


@pytest.mark.parametrize("kind", ["leading-nulls", "nulls-only"])
def test_jsonl_lists_that_begin_with_nulls_are_read_whole_and_streamed_alike(
    tmp_path, monkeypatch, kind
):
    from gpu_curate import io

    # Arrow's reader, inferring a list's type, drops the nulls that begin it ([null, "a"]:
    # apache/arrow#51305): an invalid column, its values shifted (["a", <next row's>]).
    rows = []
    for i in range(40):
        row: dict = {"text": f"a dog {i}", "tags": [None, f"t{i}"] if i % 5 == 0 else [f"t{i}"]}
        row["m"] = {"l": [None, None, i] if i % 7 == 3 else [i]}
        if kind == "nulls-only":
            row["e"] = [None, None] if i % 2 else []  # (list<null>: invalid however read)
        rows.append(json.dumps(row))
    path = write(tmp_path / "a.jsonl", ("\n".join(rows) + "\n").encode())
    piece = _jsonl_piece(path)
    whole = io.read_piece(piece)
    whole.validate(full=True)
    if kind == "leading-nulls":
        assert whole.column("tags").to_pylist()[:2] == [[None, "t0"], ["t1"]]
        assert whole.column("m").to_pylist()[3] == {"l": [None, None, 3]}
    else:  # (read as the mixed-types reader reads: lists as JSON text)
        assert whole.column("e").to_pylist()[:2] == ["[]", "[null,null]"]
        assert whole.column("tags").to_pylist()[0] == '[null,"t0"]'
        numbers = write(tmp_path / "n.jsonl", b'{"text": 1984, "e": [null, null]}\n')
        assert io.read_piece(_jsonl_piece(numbers)).column("text").to_pylist() == ["1984"]
    monkeypatch.setattr(io, "JSON_STREAM_BYTES", 0, raising=False)
    for chunk in (7, 300):
        monkeypatch.setattr(io, "_JSON_CHUNK", chunk, raising=False)
        tables = list(io.read_piece_batches(piece, rows=8))
        assert len(tables) > 1 if kind == "leading-nulls" else len(tables) == 1
        joined = pa.concat_tables(tables)
        joined.validate(full=True)
        assert joined.schema.equals(whole.schema) and joined.equals(whole)


def test_a_jsonl_bom_past_the_first_line_fails_streamed_as_whole(tmp_path, monkeypatch):
    from gpu_curate import io

    # Arrow's reader skips a BOM that begins its input: one that begins a streamed chunk
    # would be skipped where the whole read fails on it.
    bom = b"\xef\xbb\xbf"
    lines = [bom + b'{"text": "a dog"}', b'{"text": "a cat"}', bom + b'{"text": "x"}']
    path = write(tmp_path / "a.jsonl", b"\n".join(lines) + b"\n")
    piece = _jsonl_piece(path)
    with pytest.raises(CurateError) as whole:
        io.read_piece(piece)
    monkeypatch.setattr(io, "JSON_STREAM_BYTES", 0, raising=False)
    for chunk in (1, 7, 64):  # (a line a chunk: the BOM begins the third)
        monkeypatch.setattr(io, "_JSON_CHUNK", chunk, raising=False)
        with pytest.raises(CurateError) as streamed:
            list(io.read_piece_batches(piece, rows=1))
        assert str(streamed.value) == str(whole.value)
    write(path, b"\n".join(lines[:2]) + b"\n")  # (a BOM that begins the file is skipped)
    monkeypatch.setattr(io, "_JSON_CHUNK", 1, raising=False)
    tables = list(io.read_piece_batches(_jsonl_piece(path), rows=1))
    assert len(tables) == 2  # (streamed)
    assert pa.concat_tables(tables).column("text").to_pylist() == ["a dog", "a cat"]


def test_a_big_jsonl_file_is_matched_in_bounded_tables(tmp_path, md, monkeypatch):
    from gpu_curate import io

    lines = [json.dumps({"text": f"a dog {i}" if i % 2 else f"new york {i}", "n": i})
             for i in range(3000)]  # fmt: skip
    write(tmp_path / "pool" / "a.jsonl", ("\n".join(lines) + "\n").encode())
    r = match(tmp_path / "pool", md, tmp_path / "whole")
    assert r.exit_code == 0, r.output
    seen = []
    real = io.read_piece_batches

    def recorded(*args, **kw):
        for table in real(*args, **kw):
            seen.append(table.num_rows)
            yield table

    monkeypatch.setattr(io, "read_piece_batches", recorded)
    monkeypatch.setattr(io, "JSON_STREAM_BYTES", 0, raising=False)
    monkeypatch.setattr(io, "_JSON_CHUNK", 1 << 12, raising=False)
    monkeypatch.setattr(io, "PART_ROWS", 500)
    r = match(tmp_path / "pool", md, tmp_path / "streamed")
    assert r.exit_code == 0, r.output
    assert sum(seen) == 3000 and len(seen) >= 5 and max(seen) < 1000, seen
    assert matched(tmp_path / "streamed") == matched(tmp_path / "whole")


@pytest.mark.parametrize(
    "texts",
    [
        pa.array(["a dog", "x", None, "1984 new york"], pa.string_view()),
        pa.array(["a dog", "x", None, "1984 new york"]).dictionary_encode(),
    ],
    ids=["string_view", "dictionary"],
)
@pytest.mark.parametrize("keep", [True, False], ids=["keep-unmatched", "drop-unmatched"])
def test_parquet_text_column_types(tmp_path, md, texts, keep):
    if pa.types.is_string_view(texts.type) and not PARQUET_WRITES_VIEWS:
        pytest.skip("pyarrow < 21 cannot write a string_view column to Parquet")
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"text": texts, "k": [1, 2, 3, 4]}), pool / "a.parquet")
    args = ["match", str(pool), "--metadata", str(md), "--out", str(tmp_path / "out")]
    args += ["--quiet", "--backend", "cpu"] + (["--keep-unmatched"] if keep else [])
    r = CliRunner().invoke(main, args, catch_exceptions=True)
    assert r.exit_code == 0, (r.output, r.exception)
    table = pq.read_table(tmp_path / "out" / "matched")
    want = {1: [0], 2: [], 3: [], 4: [1, 3]}
    keys = [1, 2, 3, 4] if keep else [1, 4]
    assert table.column("k").to_pylist() == keys
    assert table.column("entry_ids").to_pylist() == [want[k] for k in keys]
    assert table.column("text").cast(pa.string()).to_pylist() == [
        {1: "a dog", 2: "x", 3: None, 4: "1984 new york"}[k] for k in keys
    ]


@pytest.mark.skipif(not PARQUET_WRITES_VIEWS, reason="pyarrow < 21 writes no views to Parquet")
def test_parquet_views_inside_lists_objects_and_maps_are_read(tmp_path, md):
    # ("Function 'array_take' has no kernel matching input types (string_view, int32)",
    # naming no file: only a column's own views were read as large strings.)
    tags = pa.array([["a", "b"], [], None, ["c"]], pa.list_(pa.string_view()))
    box = pa.array(
        [{"k": "v"}, None, {"k": None}, {"k": "w"}], pa.struct([("k", pa.string_view())])
    )
    kv = pa.array(
        [[("x", b"1")], [], None, [("y", b"2")]], pa.map_(pa.string_view(), pa.binary_view())
    )
    texts = ["a dog", "x", "a cat", "new york"]
    write_table = pa.table({"text": texts, "tags": tags, "box": box, "kv": kv})
    (tmp_path / "pool").mkdir()
    pq.write_table(write_table, tmp_path / "pool" / "a.parquet")
    r = match(tmp_path / "pool", md, tmp_path / "out")
    r2 = CliRunner().invoke(main, ["match", str(tmp_path / "pool"), "--metadata", str(md),
                                   "--out", str(tmp_path / "dropped"), "--quiet"])  # fmt: skip
    assert (r.exit_code, r2.exit_code) == (0, 0), (r.stderr, r2.stderr)
    for out, rows in (("out", [0, 1, 2, 3]), ("dropped", [0, 2, 3])):
        table = pq.read_table(tmp_path / out / "matched")
        for name in ("tags", "box", "kv"):
            values = write_table.column(name).to_pylist()
            assert table.column(name).to_pylist() == [values[i] for i in rows]


def _pieces(parts) -> list[list[tuple]]:
    return [[(x.file.relpath, x.row_start, x.row_end) for x in p.pieces] for p in parts]


def test_small_parquet_files_of_one_schema_are_packed_into_parts(tmp_path):
    from gpu_curate.io import plan_parts

    pool = tmp_path / "pool"
    pool.mkdir()
    text = {"TEXT": ["a dog"] * 30}
    for name in "abdfhij":
        pq.write_table(pa.table(text), pool / f"{name}.parquet")
    pq.write_table(pa.table({**text, "x": list(range(30))}), pool / "c.parquet")
    pq.write_table(pa.table({"TEXT": ["a cat"] * 200}), pool / "e.parquet")
    (pool / "g.jsonl").write_text('{"TEXT": "a dog"}\n')
    parts = plan_parts(discover([str(pool)]), 70)
    assert _pieces(parts) == [
        [("a.parquet", 0, 30), ("b.parquet", 0, 30)],  # (a third file would pass 70 rows)
        [("c.parquet", 0, 30)],  # another schema
        [("d.parquet", 0, 30)],  # the next file is cut: a part of its own
        [("e.parquet", 0, 70)],
        [("e.parquet", 70, 140)],
        [("e.parquet", 140, 200)],
        [("f.parquet", 0, 30)],  # a JSON Lines file comes between
        [("g.jsonl", 0, None)],
        [("h.parquet", 0, 30), ("i.parquet", 0, 30)],
        [("j.parquet", 0, 30)],
    ]
    assert [p.index for p in parts] == list(range(len(parts)))


def test_a_pool_of_small_files_is_read_in_few_parts_by_default(tmp_path, monkeypatch):
    from gpu_curate import io
    from gpu_curate.io import plan_parts

    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(5):
        pq.write_table(pa.table({"TEXT": ["a dog"] * (i + 1)}), pool / f"s{i}.parquet")
    pq.write_table(pa.table({"TEXT": pa.array([], pa.string())}), pool / "s5.parquet")
    files = discover([str(pool)])
    everything = [(f"s{i}.parquet", 0, i + 1) for i in range(5)] + [("s5.parquet", 0, 0)]
    assert _pieces(plan_parts(files)) == [everything]
    # Without --partition-rows, packs hold up to PACK_ROWS rows.
    monkeypatch.setattr(io, "PACK_ROWS", 6)
    assert _pieces(plan_parts(files)) == [everything[:3], everything[3:4], everything[4:]]


def test_plan_parts_reads_the_footers_together_and_names_the_first_bad_file(tmp_path):
    # The footers are read by a pool of threads: the parts are those of reading them one
    # by one, in the files' order, and of two unreadable files the first is named.
    from gpu_curate import io as gio

    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(12):
        t = pa.table({"text": [f"t{j}" for j in range(i + 1)]})
        pq.write_table(t, pool / f"{i:02d}.parquet", row_group_size=max(1, i // 2))
    parts = gio.plan_parts(discover([str(pool)]), partition_rows=4)
    # Files of 1 to 4 rows are packed up to 4 rows; the larger ones are cut every 4 rows.
    want = [[("00.parquet", 0, 1), ("01.parquet", 0, 2)], [("02.parquet", 0, 3)],
            [("03.parquet", 0, 4)]]  # fmt: skip
    for i in range(4, 12):
        cuts = [*range(0, i + 1, 4), i + 1]
        want += [[(f"{i:02d}.parquet", a, b)] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    assert _pieces(parts) == want
    assert [p.index for p in parts] == list(range(len(parts)))
    for name in ("04.parquet", "09.parquet"):
        (pool / name).write_bytes(b"not parquet")
    with pytest.raises(CurateError, match=r"cannot read Parquet file .*04\.parquet"):
        gio.plan_parts(discover([str(pool)]))


def test_a_glob_reads_a_folder_through_every_link_its_pattern_or_depth_keeps(tmp_path):
    # Links to one hidden folder: the first walked ('aa', or 's' at a lesser depth) was
    # the only one, though the glob's pattern or depth kept none of its files there.
    pool = tmp_path / "pool"
    for rel in ["_h/x.tsv", "cat/y.tsv", "a/keep.tsv", "b/c/z.tsv"]:
        write(pool / rel, b"a dog\n")
    (pool / "aa").symlink_to(pool / "_h", target_is_directory=True)
    (pool / "current").symlink_to(pool / "_h", target_is_directory=True)
    (pool / "a" / "deep").symlink_to(pool / "_h", target_is_directory=True)
    assert [f.relpath for f in discover([f"{pool}/c*/*.tsv"])] == ["cat/y.tsv", "current/x.tsv"]
    assert [f.relpath for f in discover([f"{pool}/*/*/*.tsv"])] == ["a/deep/x.tsv", "b/c/z.tsv"]
    # Links to each other: a glob goes round as far as its depth.
    loop = tmp_path / "loop"
    for rel in ["_a/x.tsv", "_b/y.tsv"]:
        write(loop / rel, b"a dog\n")
    (loop / "_a" / "tob").symlink_to(loop / "_b", target_is_directory=True)
    (loop / "_b" / "toa").symlink_to(loop / "_a", target_is_directory=True)
    (loop / "l").symlink_to(loop / "_a", target_is_directory=True)
    assert [f.relpath for f in discover([f"{loop}/*/*/*/*.tsv"])] == ["l/tob/toa/x.tsv"]
    assert [f.relpath for f in discover([str(loop)])] == ["l/tob/y.tsv", "l/x.tsv"]


def test_the_metadata_and_its_sidecar_at_a_url_are_left_out_of_the_pool():
    # The sidecar's URL lost a '/' (memory:/pool/...), and a URL was compared as written
    # (memory://pool/ is listed as memory:///pool/): both were read as pool files.
    import fsspec

    from gpu_curate.pipeline import _metadata_files

    fs = fsspec.filesystem("memory")
    fs.pipe("/mdpool/a.jsonl", b'{"text": "a dog"}\n')
    fs.pipe("/mdpool/metadata.json", b'["dog"]')
    fs.pipe("/mdpool/metadata.sources.json", b'{"dog": ["wordnet"]}')
    try:
        files = discover(
            ["memory://mdpool/"], None, _metadata_files("memory://mdpool/metadata.json")
        )
        assert [f.relpath for f in files] == ["a.jsonl"]
    finally:
        fs.rm("/mdpool", recursive=True)


@pytest.mark.parametrize("cut", [False, True])
@pytest.mark.parametrize("name", ["a.tsv", "a.csv", "a.tsv.gz"])
def test_a_row_of_another_field_count_is_named_by_its_line(tmp_path, md, name, cut):
    # (Arrow quotes the row but not where it is: in a file of millions of lines, the
    # line number is what finds it. JSON Lines errors named it already.)
    sep = "," if ".csv" in name else "\t"
    lines = ["text" + sep + "id"]
    if ".csv" in name:
        lines.append('"a dog\nin two lines",x')  # (a row of two lines: physical lines count)
    # (Past the head that planning reads, 64 KiB: found by the task that reads its part.)
    lines += [f"a dog {i}{sep}{i}" for i in range(30000)]
    bad = lines.index(f"a dog 24999{sep}24999")
    lines[bad] += f"{sep}x"
    data = ("\n".join(lines) + "\n").encode()
    write(tmp_path / "pool" / name, gzip.compress(data) if name.endswith(".gz") else data)
    extra = ["--partition-rows", "100"] if cut else []
    err = error_line(match(tmp_path / "pool", md, tmp_path / "out", *extra))
    line = data[: data.index(f"a dog 24999{sep}24999{sep}x".encode())].count(b"\n") + 1
    assert line == bad + 1 + (".csv" in name)
    assert err == (
        f"gpu-curate: error: cannot read {tmp_path / 'pool' / name}: line {line}: CSV parse "
        f"error: Expected 2 columns, got 3: a dog 24999{sep}24999{sep}x"
    )


def _parquet_bytes() -> bytes:
    sink = io_module.BytesIO()
    pq.write_table(pa.table({"TEXT": ["a dog"] * 50}), sink)
    return sink.getvalue()


@pytest.mark.parametrize(
    "name, data, extra, says",
    [
        ("caps.tsv", gzip.compress(b"TEXT\na dog\n"), [],
         "it holds gzip-compressed data, not TSV text: name it with its codec's suffix: "
         "caps.tsv.gz"),
        ("caps.csv", _parquet_bytes(), [],
         "it holds a Parquet file, not CSV text: name it .parquet"),
        ("caps.parquet", _parquet_bytes(), ["--format", "csv"],
         "it holds a Parquet file, not CSV text: leave out --format csv"),
        ("caps.tsv.gz", gzip.compress(gzip.compress(b"TEXT\na dog\n")), [],
         "it holds gzip-compressed data once decompressed: it was compressed twice, and is "
         "read only if compressed once"),
    ],
)  # fmt: skip
def test_compressed_or_parquet_bytes_in_a_text_file_are_an_error(tmp_path, md, name, data,
                                                                  extra, says):  # fmt: skip
    # (A gzipped .tsv was read as text: 7 rows of garbage, no match, exit 0. A Parquet
    # file read as CSV put its control bytes into the error line.)
    path = write(tmp_path / "pool" / name, data)
    src = path if extra else tmp_path / "pool"
    err = error_line(match(src, md, tmp_path / "out", *extra))
    assert err == f"gpu-curate: error: {path}: {says}"


def test_a_caption_that_begins_as_a_magic_number_is_text(tmp_path, md):
    write(tmp_path / "pool" / "a.tsv", b"BZh91AY&SY dog\nPAR1 dog\nPK\x03\x04 dog\n")
    r = match(tmp_path / "pool", md, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert matched(tmp_path / "out")["entry_ids"] == [[0], [0], [0]]


@pytest.mark.parametrize("name", ["long.tsv", "long.csv"])
@pytest.mark.parametrize("word", ["a photo of a dog", "été"])
def test_a_long_row_of_another_field_count_is_named_by_its_line(tmp_path, md, name, word):
    # (Arrow quotes a row of more than 100 bytes as its first 96 and " ...", perhaps
    # inside a character: the line was looked for whole, found nowhere, and not named.)
    sep = "," if name.endswith(".csv") else "\t"
    lines = [f"{word} {i} " + "é" * 50 + f"{sep}http://example.com/{i}.jpg" for i in range(3000)]
    lines[2000] += f"{sep}x"
    lines[1000] = lines[2000][:-1] + "y"  # (the same first 100 bytes, the right fields)
    lines[1000] = lines[1000].rsplit(sep, 1)[0]
    write(tmp_path / "pool" / name, ("\n".join(lines) + "\n").encode())
    err = error_line(match(tmp_path / "pool", md, tmp_path / "out"))
    assert err.startswith(
        f"gpu-curate: error: cannot read {tmp_path / 'pool' / name}: line 2001: CSV parse "
        f"error: Expected 2 columns, got 3: {word} 2000 "
    ), err


@pytest.mark.parametrize("nested", ['{"a": ' * 600 + "1" + "}" * 600, "[" * 2000 + "]" * 2000])
def test_a_json_value_nested_thousands_deep_is_one_line(tmp_path, md, nested):
    # (Its Arrow type is walked by recursion: a RecursionError came back from the task as
    # a bare Exception, a traceback; the second hung the run.)
    rows = "".join(f'{{"text": "a dog {i}"}}\n' for i in range(100))
    path = write(
        tmp_path / "pool" / "d.jsonl", (rows + f'{{"text": "cat", "m": {nested}}}\n').encode()
    )
    err = error_line(match(tmp_path / "pool", md, tmp_path / "out", "--workers", "1"))
    assert (
        err == f"gpu-curate: error: cannot read {path}: line 101 is nested more than 48 levels deep"
    )


def test_the_line_named_is_the_bad_rows_not_one_like_it(tmp_path, md):
    # (Lines were compared one by one with the row Arrow quotes: a quoted caption's first
    # line '"a' matched an earlier record's first line, and a valid record's second line
    # matched the bad row's text: both named a wrong line, worse than none.)
    long = "long second line of a caption " * 4
    write(tmp_path / "a" / "p.csv",
          f'caption,url\n"a dog\nin the park",http://x/1.jpg\na cat,http://x/2.jpg\n"a\n{long}"\n'
          .encode())  # fmt: skip
    err = error_line(match(tmp_path / "a", md, tmp_path / "out-a"))
    assert ": line 5: CSV parse error: Expected 2 columns, got 1: " in err, err
    p1 = "A photo of a dog sitting on the grass in the park on a sunny day, seen from far away"
    p2 = "Second paragraph of the same caption that is long enough to be cut, with a comma, and"
    lines = ["caption,url"] + [f"a dog {i},http://x/{i}.jpg" for i in range(20)]
    lines.append(f'"{p1}\n{p2}",http://x/good.jpg')  # (lines 22-23: one valid row)
    lines += [f"a cat {i},http://x/c{i}.jpg" for i in range(20)]
    lines += [p1, f"{p2},http://x/bad.jpg"]  # (line 45: 4 fields)
    write(tmp_path / "b" / "q.csv", ("\n".join(lines) + "\n").encode())
    err = error_line(match(tmp_path / "b", md, tmp_path / "out-b"))
    assert ": line 45: CSV parse error: Expected 2 columns, got 4: Second paragraph" in err, err


def test_an_input_that_is_a_pipe_is_named(tmp_path, md):
    # (`gpu-curate curate <(zcat a.tsv.gz)`: "every input file in /dev/fd/63 is empty".)
    fifo = tmp_path / "pipe.tsv"
    os.mkfifo(fifo)
    err = error_line(match(fifo, md, tmp_path / "out"))
    assert err == (
        f"gpu-curate: error: input {fifo} is a pipe, not a file: a run reads its inputs more "
        "than once (their columns, then their rows); write it to a file first"
    )
    assert "a device or socket, not a file" in error_line(match("/dev/null", md, tmp_path / "o"))
    # Inside a scanned folder (or a glob's reach) it was passed over without a word; one
    # that is hidden or named like no data still is, as a regular file so named would be.
    pool = tmp_path / "pool"
    write(pool / "a.tsv", b"a dog\thttp://x/1.jpg\n")
    os.mkfifo(pool / "b.tsv")
    for spec in (pool, f"{pool}/*.tsv"):
        err = error_line(match(spec, md, tmp_path / "out-pool"))
        assert err.startswith(f"gpu-curate: error: input {pool / 'b.tsv'} is a pipe, not a file")
    os.rename(pool / "b.tsv", pool / "_b.tsv")
    os.mkfifo(pool / "notes")
    assert match(pool, md, tmp_path / "out-skipped").exit_code == 0


_SURROGATE_TEXT = st.lists(
    st.one_of(
        st.sampled_from(
            ["\ud83d", "\ude00", "\ud800", "\udfff", "\\", "\\ud83d", '"', "a", "é", "😀"]
        ),
        st.characters(),
    ),
    max_size=8,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_SURROGATE_TEXT, min_size=1, max_size=4))
def test_escaped_surrogates_read_as_pythons_reader_reads_them(texts):
    # Python's reader takes any escape (a pair as its character, a lone one as itself);
    # the bytes given to Arrow's reader, once lone ones are escaped as U+FFFD, must read as
    # Python's do with each lone one as U+FFFD: pairs kept, escaped backslashes kept.
    import json as json_module

    import pyarrow.json as pajson

    from gpu_curate.io import _lone_surrogates_replaced
    from gpu_curate.surrogates import without_surrogate

    lines = [json_module.dumps({"text": t}, ensure_ascii=True).encode() for t in texts]
    data = _lone_surrogates_replaced(b"\n".join(lines) + b"\n")
    assert len(data) == sum(len(line) + 1 for line in lines)
    got = pajson.read_json(io_module.BytesIO(data)).column("text").to_pylist()
    assert got == [without_surrogate(json_module.loads(line)["text"]) for line in lines]
