"""A big TSV file cut into byte ranges (gpu_curate.line_ranges): each range's rows are
the whole file's rows, in order, with the row numbers (so the uids) of the whole file."""

from __future__ import annotations

import random
import re

import pyarrow as pa
import pytest

from gpu_curate.errors import CurateError
from gpu_curate.io import InputFile, Piece, can_cut, piece_tables, plan_parts, read_piece
from gpu_curate.line_ranges import count_lines, count_rows, line_cuts
from gpu_curate.pipeline import Options, _plan


def _lines_reference(data: bytes) -> int:
    # The rows of a TSV file, by hand: lines end at \r\n, \r or \n; empty lines are none.
    return sum(1 for line in re.split(rb"\r\n|\r|\n", data) if line)


@pytest.mark.parametrize("seed", range(40))
def test_count_lines_counts_the_rows_arrow_makes(seed):
    rng = random.Random(seed)
    data = bytes(rng.choice(b"ab \t\r\n\n") for _ in range(rng.randrange(0, 300)))
    assert count_lines(data) == _lines_reference(data)
    # Counted in two pieces, the second told whether the first ended a line.
    cut = rng.randrange(0, len(data) + 1)
    after = cut == 0 or data[cut - 1] in b"\r\n"
    assert count_lines(data[:cut]) + count_lines(data[cut:], after) == _lines_reference(data)


def _text_file(rng: random.Random, rows: int, head: bytes | None, bom: bool, row) -> bytes:
    """``rows`` rows ``row(i)``, with empty lines between them (no rows), lines ended by
    \\n, \\r\\n or \\r, the last one perhaps unended; a header line and a BOM."""
    ends = [b"\n", b"\r\n", b"\r"]
    out = [b"\xef\xbb\xbf" if bom else b""]
    if head:
        out.append(head + rng.choice(ends[:2]))
    for i in range(rows):
        if rng.random() < 0.15:
            out.append(rng.choice(ends))
        out.append(row(i))
        if i < rows - 1 or rng.random() < 0.7:
            out.append(rng.choice(ends) if rng.random() < 0.3 else b"\n")
    return b"".join(out)


def _tsv(rng: random.Random, rows: int, header: bool, bom: bool) -> bytes:
    words = ["a dog", "new york", 'a "quoted" cat', "caf\u00e9", "", "x,y", " lead", "trail "]

    def row(i: int) -> bytes:
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 4)))
        return f"{text} {i}\tid{i}".encode()

    return _text_file(rng, rows, b"caption\tid" if header else None, bom, row)


def _cut_vs_whole(client, path, rows: int, min_parts: int = 2):
    """(rows of the file read whole, rows of its ranges read one by one, the parts),
    checking each range's row numbers on the way."""
    f = InputFile(str(path), path.name, path.suffix[1:], path.stat().st_size)
    whole = read_piece(Piece(f, 0, None)).to_pylist()
    parts = _plan(client, [f], Options(partition_rows=rows, quiet=True))
    assert len(parts) >= min_parts, "the file was not cut"
    got = []
    for part in parts:
        (piece,) = part.pieces
        assert piece.row_start == len(got) and piece.file_rows == len(whole)
        for row, table in piece_tables(piece):
            assert row == len(got)
            got.extend(table.to_pylist())
        assert len(got) == piece.row_end
    return whole, got, parts


@pytest.mark.parametrize("seed", range(12))
def test_the_ranges_of_a_tsv_file_hold_its_rows_with_their_row_numbers(
    tmp_path, local_client, seed
):
    rng = random.Random(seed)
    header, bom = seed % 2 == 0, seed % 3 == 0
    path = tmp_path / "pool.tsv"
    path.write_bytes(_tsv(rng, rng.randrange(150, 400), header, bom))
    whole, got, parts = _cut_vs_whole(local_client, path, rng.randrange(7, 40), 3)
    assert got == whole
    data = path.read_bytes()
    cuts = [p.pieces[0].byte_start for p in parts] + [len(data)]
    assert all(data[c - 1 : c] == b"\n" for c in cuts[1:-1]), "a cut inside a line"


def test_line_cuts_cut_after_a_line_end_into_ranges_of_about_the_rows_asked(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes(b"".join(f"caption {i:04d}\tu\n".encode() for i in range(1000)))
    cuts = line_cuts(str(path), None, 100)
    data = path.read_bytes()
    assert cuts[0] == 0 and cuts[-1] == len(data) and len(cuts) == 11
    ranges = [count_rows(str(path), a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    assert sum(ranges) == 1000 and all(90 <= r <= 110 for r in ranges), ranges
    # Too few rows for two ranges, or no line end to cut at: one range.
    assert line_cuts(str(path), None, 700) == [0, len(data)]
    path.write_bytes(b"one long line\r" * 500)
    assert line_cuts(str(path), None, 10) == [0, 7000]


def test_a_row_with_more_fields_is_an_error_in_any_range(tmp_path):
    # A header-less file's columns are its first row's. A range that begins with rows of
    # three fields took three columns of its own, and the file was read without an error
    # where a whole read fails.
    path = tmp_path / "pool.tsv"
    path.write_bytes(b"a dog\tu\n" * 200 + b"a cat\tu\tx\n" * 200)
    f = InputFile(str(path), "pool.tsv", "tsv", path.stat().st_size)
    with pytest.raises(CurateError, match="Expected 2 columns, got 3"):
        read_piece(Piece(f, 0, None))
    # (Cut where the rows of three fields begin.)
    parts = plan_parts([f], None, {str(path): ([(0, 1600, 200), (1600, 3600, 200)], None)})
    assert [p.pieces[0].row_start for p in parts] == [0, 200]
    assert read_piece(parts[0].pieces[0]).num_rows == 200
    with pytest.raises(CurateError, match="Expected 2 columns, got 3"):
        for part in parts:
            list(piece_tables(part.pieces[0]))


def test_a_bom_alone_on_the_first_line_is_no_row(tmp_path, local_client):
    # Arrow drops the BOM at the start of the file: "\ufeff\n" is an empty line, no row.
    path = tmp_path / "pool.tsv"
    path.write_bytes(b"\xef\xbb\xbf\n" + b"".join(b"a dog %d\tu\n" % i for i in range(60)))
    whole, got, _ = _cut_vs_whole(local_client, path, 10)
    assert got == whole and len(whole) == 60


def test_a_range_never_begins_with_a_bom(tmp_path, local_client):
    # Arrow drops a BOM at the start of every stream it reads: a range that began with a
    # line "\ufeffdog" (files joined with cat) would read "dog", the whole file "\ufeffdog".
    bom = b"\xef\xbb\xbf"
    path = tmp_path / "pool.tsv"
    path.write_bytes(b"".join(bom[: 3 * (i % 2)] + b"a dog %d\tu\n" % i for i in range(60)))
    whole, got, parts = _cut_vs_whole(local_client, path, 10)
    assert got == whole
    data = path.read_bytes()
    assert all(not data[p.pieces[0].byte_start :].startswith(bom) for p in parts[1:])


def test_a_range_of_empty_lines_only_is_no_part(tmp_path, local_client):
    # A header-less range with no row: Arrow cannot infer its columns ("Empty CSV file").
    path = tmp_path / "pool.tsv"
    path.write_bytes(b"a dog\tu\nthe cat\tv\na man\tw\n" + b"\n" * 3000 + b"dog\tx\n")
    whole, got, parts = _cut_vs_whole(local_client, path, 1)
    assert got == whole and len(whole) == 4
    assert all(p.pieces[0].row_end > p.pieces[0].row_start for p in parts)


def test_line_cuts_read_a_file_with_no_line_feed_once(tmp_path, monkeypatch):
    # Lines ended by \r only: no cut; each would otherwise read on to the end of the file.
    import gpu_curate.line_ranges as lr

    path = tmp_path / "t.tsv"
    path.write_bytes(b"caption\tu\r" * 20_000)
    calls = []
    real = lr._next_line
    monkeypatch.setattr(lr, "_next_line", lambda fh, at: calls.append(at) or real(fh, at))
    assert line_cuts(str(path), None, 10) == [0, path.stat().st_size]
    assert len(calls) == 1


@pytest.mark.parametrize(
    "name", ["pool.tsv.lzma", "pool.tsv.zip", "pool.tsv.zst", "pool.TSV.GZ", "memory://pool.tsv"]
)
def test_a_file_that_is_read_decompressed_or_from_memory_is_not_cut(name):
    # open_input decompresses a file by its suffix (.lzma, .zip too): its bytes are no
    # lines. (memory://: one file object for every reader of the file.)
    assert not can_cut(InputFile(name, name, "tsv", 1 << 30))
    assert can_cut(InputFile("pool.tsv", "pool.tsv", "tsv", 1 << 30))


def _csv(rng: random.Random, rows: int, header: bool, bom: bool) -> bytes:
    # Fields as Arrow's parser takes them: quoted ones that hold commas, line breaks and
    # doubled quotes, unquoted ones with quotes inside (kept as they are), text after a
    # closing quote.
    fields = [b"a dog", b'"a, b"', b'"new\nyork"', b'"say ""hi"""', b'5" screen', b"",
              b'"x"y', b'"two\r\n\r\nbreaks"', b'""', b"caf\xc3\xa9", b'"\n"',
              b'"say ""hi""\nthere"', b'"""\n"""']  # fmt: skip
    head = b"text,id" if header else None
    return _text_file(rng, rows, head, bom, lambda i: rng.choice(fields) + b",%d" % i)


@pytest.mark.parametrize("seed", range(16))
def test_the_ranges_of_a_csv_file_hold_its_rows_with_their_row_numbers(
    tmp_path, local_client, seed
):
    # A CSV row may hold line breaks (in quotes): a cut after one that falls inside a
    # quoted field is no row boundary, and its range is joined to the one before it.
    from gpu_curate.line_ranges import MID_ROW, count_csv_rows

    rng = random.Random(seed)
    path = tmp_path / "pool.csv"
    path.write_bytes(_csv(rng, rng.randrange(150, 400), seed % 2 == 0, seed % 3 == 0))
    whole, got, _ = _cut_vs_whole(local_client, path, rng.randrange(5, 30), 3)
    assert got == whole
    (rows, state), _ = count_csv_rows(str(path), 0, path.stat().st_size)
    assert rows + (state in MID_ROW) - (seed % 2 == 0) == len(whole)


def test_a_cut_inside_a_quoted_field_is_joined_to_the_range_before(tmp_path, local_client):
    # A caption of 400 lines: the cuts that fall inside it are no row boundaries.
    long = b'"' + b"line\n" * 400 + b'"'
    path = tmp_path / "pool.csv"
    path.write_bytes(b"".join(b"a dog %d,u\n" % i for i in range(50)) + long + b",v\n"
                     + b"".join(b"a cat %d,w\n" % i for i in range(50)))  # fmt: skip
    f = InputFile(str(path), "pool.csv", "csv", path.stat().st_size)
    whole = read_piece(Piece(f, 0, None)).to_pylist()
    assert len(whole) == 101
    inside = range(path.read_bytes().index(long) + 1, path.read_bytes().index(long) + len(long))
    assert any(c in inside for c in line_cuts(str(path), f.size, 20))
    parts = _plan(local_client, [f], Options(partition_rows=20, quiet=True))
    assert len(parts) >= 3
    assert not any(p.pieces[0].byte_start in inside for p in parts)
    got = [row for p in parts for row in read_piece(p.pieces[0]).to_pylist()]
    assert got == whole


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
@pytest.mark.parametrize("before", [0, 40, 77])
def test_a_row_longer_than_a_block_reads_alike_from_a_range_and_the_whole_file(
    tmp_path, monkeypatch, fmt, before
):
    # Arrow's reader fails on a row that straddles two of its blocks, so whether it failed
    # hung on where the read began (the file's start or a range's): a 35 MB CSV with a
    # 20 MB caption after 15.5 MB of rows failed whole and read cut (16 MB blocks).
    from gpu_curate import io as gio

    monkeypatch.setattr(gio, "_CSV_BLOCK", 100)
    sep = "," if fmt == "csv" else "\t"
    value = '"' + "x\n" * 85 + '"' if fmt == "csv" else "x" * 170
    rows = [f"a dog{sep}" + "p" * before, *(f"s{i}{sep}u" for i in range(4))]
    rows += [f"the man{sep}{value}", *(f"r{i}{sep}u" for i in range(8))]
    path = tmp_path / f"long.{fmt}"
    path.write_text("\n".join(rows) + "\n")
    f = gio.InputFile(str(path), path.name, fmt, path.stat().st_size)
    whole = pa.concat_tables(gio.read_piece_batches(gio.Piece(f, 0, None), rows=1))
    assert whole.num_rows == 14
    assert whole.column(1).to_pylist()[5] == value.strip('"')
    # Ranges that begin at each row: the long row at a range's start, or inside one.
    ends = [0]
    for row in rows:
        ends.append(ends[-1] + len(row) + 1)
    for i, j in [(1, 14), (3, 8), (5, 14), (0, 7)]:
        piece = gio.Piece(f, i, j, 14, ends[i], ends[j])
        cut = pa.concat_tables(gio.read_piece_batches(piece, rows=1))
        assert cut.equals(whole.slice(i, j - i)), (i, j)


@pytest.mark.parametrize("seed", range(6))
def test_csv_rows_are_counted_from_a_rows_start_and_from_inside_quotes(tmp_path, monkeypatch, seed):
    # The second count follows the first from where the two reads meet: it must equal a
    # read of the range from inside a quoted field, byte by byte, across chunks.
    import numpy as np

    import gpu_curate.line_ranges as lr

    monkeypatch.setattr(lr, "_CHUNK", 7)
    rng = random.Random(seed)
    data = bytes(rng.choice(b'ab,"\r\n\n') for _ in range(400))
    path = tmp_path / "x.csv"
    path.write_bytes(data)
    for _ in range(30):
        a = rng.randrange(1, 400)
        b = rng.randrange(a, 401)
        from_row, from_quoted = lr.count_csv_rows(str(path), a, b)
        raw = np.frombuffer(data[a:b], np.uint8)
        for got, state in ((from_row, lr.LINE), (from_quoted, lr.QUOTED)):
            want = lr._csv_rows(raw, state, ord(","), ord('"'))
            assert got == (want[0], want[1]), (a, b, state)


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_a_first_row_longer_than_a_block_reads_without_a_header(tmp_path, monkeypatch, fmt):
    # Without a header the columns are counted from the first row: a first block that ends
    # inside it is "Empty CSV file or block: cannot infer number of columns" to Arrow, not
    # a straddling row, and was not read again with larger blocks: the file failed (in the
    # whole read, the packing probe and the column probe of a range).
    from gpu_curate import io as gio

    sep = "," if fmt == "csv" else "\t"
    rows = [f"a dog{sep}" + "p" * 300, *(f"s{i}{sep}u" for i in range(6))]
    path = tmp_path / f"long.{fmt}"
    path.write_text("\n".join(rows) + "\n")
    f = gio.InputFile(str(path), path.name, fmt, path.stat().st_size)
    want = read_piece(Piece(f, 0, None))
    monkeypatch.setattr(gio, "_CSV_BLOCK", 100)
    assert read_piece(Piece(f, 0, None)).equals(want)
    assert gio.text_schemas([f], None, None)[str(path)] == (want.schema, None)
    start = len(rows[0]) + len(rows[1]) + 2
    cut = read_piece(Piece(f, 2, 7, 7, start, f.size))
    assert cut.equals(want.slice(2))


def test_a_parse_error_that_quotes_straddling_is_not_read_again(tmp_path, monkeypatch):
    # Only Arrow's own message (its prefix) grows the blocks: a parse error quotes the
    # row, whatever its text.
    import pyarrow.csv as pacsv

    from gpu_curate import io as gio

    opened = []
    open_csv = pacsv.open_csv
    monkeypatch.setattr(
        gio.pacsv, "open_csv", lambda fh, read, *a: opened.append(1) or open_csv(fh, read, *a)
    )
    path = tmp_path / "bad.csv"
    path.write_text("text,url\n" + "a dog,u\n" * 5 + "the straddling man,u,extra\n")
    f = InputFile(str(path), path.name, "csv", path.stat().st_size)
    with pytest.raises(CurateError, match="Expected 2 columns, got 3"):
        read_piece(Piece(f, 0, None))
    assert len(opened) == 1


def test_a_range_without_quotes_is_read_once(tmp_path, monkeypatch):
    # The count from inside a quoted field waits for a quote: where there is none, the two
    # counts never meet, and reading both in step read the whole range at half the speed.
    import gpu_curate.line_ranges as lr

    read = []  # (bytes read in step)
    meet = lr._csv_meet
    monkeypatch.setattr(lr, "_csv_meet", lambda *a: read.append((got := meet(*a))[0]) or got)
    path = tmp_path / "x.csv"
    path.write_bytes(b"a dog,u\n" * 1000 + b'"the, man",u\n' + b"a dog,u\n" * 10)
    from_row, from_quoted = lr.count_csv_rows(str(path), 3, path.stat().st_size)
    assert from_row == (1011, lr.LINE) and from_quoted == (11, lr.LINE)
    assert sum(read) < 20, read


def test_planning_reads_a_small_text_files_head_only(tmp_path, monkeypatch):
    # text_schemas read each small file's columns in Arrow's 16 MiB blocks: the
    # whole of a file of up to 32 MB (and readahead), on the client, for every file of
    # the pool (a remote pool was downloaded to plan it). A small block (grown where the
    # first row is longer) gives the same columns.
    import pyarrow.csv as pacsv

    from gpu_curate import io as gio

    blocks = []
    open_csv = pacsv.open_csv
    monkeypatch.setattr(
        gio.pacsv,
        "open_csv",
        lambda fh, read, *a: blocks.append(read.block_size) or open_csv(fh, read, *a),
    )
    short, long_ = tmp_path / "a.tsv", tmp_path / "b.tsv"
    short.write_text("a dog\tu\n" * 10)
    long_.write_text("a dog\t" + "u" * 200_000 + "\n" + "the man\tu\n")
    files = [InputFile(str(p), p.name, "tsv", p.stat().st_size) for p in (short, long_)]
    schemas = gio.text_schemas(files, None, None)
    assert [(s.names, rows) for s, rows in schemas.values()] == [(["f0", "f1"], None)] * 2
    assert min(blocks) <= 1 << 16 and max(blocks) < 1 << 24, blocks
