"""The nesting check that keeps a JSON Lines line too deep for Arrow's reader (whose
recursion overflows the thread's stack, killing the process) from reaching it."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest
from click.testing import CliRunner

from gpu_curate.cli import main
from gpu_curate.json_nesting import LONG_LINE, MAX_DEPTH, line_too_deep, long_line_too_deep


def deeper(line: bytes) -> bool:
    """Reference: the line's bytes walked one by one, brackets counted outside strings."""
    depth, in_string, escaped = 0, False, False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                in_string = False
        elif byte == ord('"'):
            in_string = True
        elif byte in b"[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif byte in b"]}":
            depth -= 1
    return False


@pytest.mark.parametrize("seed", range(6))
def test_deep_lines_are_found_as_a_walk_finds_them(seed):
    rng = random.Random(seed)
    # Tokens weighted so that lines nest around MAX_DEPTH, with brackets inside strings,
    # escaped quotes and long stretches between brackets.
    tokens = [b"[", b"{", b"]", b"}", b'"', b"\\", b"a", b",", b" " * 300, b'"[[[[[["']
    weights = [30, 10, 26, 8, 3, 2, 10, 5, 1, 2]
    deep = long_deep = 0
    for _ in range(40):
        lines = []
        for _ in range(rng.randint(1, 6)):
            n = rng.choice([10, 100, 400, 1_500])
            lines.append(b"".join(rng.choices(tokens, weights, k=n)))
        for line in lines:
            assert line_too_deep(line) == deeper(line)
            deep += deeper(line)
        data = b"\n".join(lines) + rng.choice([b"", b"\n"])
        long_ones = [i for i, line in enumerate(lines) if len(line) > LONG_LINE and deeper(line)]
        long_deep += bool(long_ones)
        got = long_line_too_deep(data)
        # (A shorter deep line may be found first: any deep line is an error.)
        if got is None:
            assert not long_ones
        else:
            assert deeper(lines[got]) and len(lines[got]) > LONG_LINE // 2
            assert not long_ones or got <= long_ones[0]
    assert deep > 20 and 5 < long_deep < 35, (deep, long_deep)  # (both outcomes tried)


def test_depth_at_the_limit_is_fine_one_more_is_not():
    at = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert not line_too_deep(at) and line_too_deep(b"[" + at + b"]")
    padded = b" " * LONG_LINE
    assert long_line_too_deep(b'{"x": 1}\n' + at + padded + b"\n") is None
    assert long_line_too_deep(b'{"x": 1}\n[' + at + padded + b"]\n") == 1
    # (Brackets in a string, escaped quotes in it, do not nest.)
    assert long_line_too_deep(b'["\\"' + b"[" * 5_000 + b'"]') is None
    assert long_line_too_deep(b"[" * 5_000 + b"]" * 5_000) == 0
    # (CR line ends: a CR-only file is one line, its depth carried across them.)
    lines = b'{"x": [[1]]}\r' * 500
    assert long_line_too_deep(lines + b"[\r" * 5_000 + b"]" * 5_000) == 0
    assert long_line_too_deep(lines * 10) is None


def _match(pool, md, out, *extra):
    args = ["match", str(pool), "--metadata", str(md), "--out", str(out), "--quiet"]
    return CliRunner().invoke(main, [*args, "--backend", "cpu", *extra])


@pytest.mark.parametrize("read", ["arrow", "python", "streamed", "ranges"])
def test_a_line_nested_too_deep_is_an_error_naming_it(tmp_path, monkeypatch, read):
    # (20,000 levels: Arrow's reader crashed the process with a segmentation fault.)
    import gpu_curate.io as gio

    md = tmp_path / "md.json"
    md.write_text(json.dumps(["dog"]))
    mixed = ', "n": "x"' if read == "python" else ""  # (a column of two JSON types)
    rows = [b'{"text": "a dog", "n": 1}'] * 3
    # (The object is a level: MAX_DEPTH - 1 lists in it are MAX_DEPTH levels. 600 levels
    # on a short line show in the types Arrow's reader infers.)
    for depth, bad in ((MAX_DEPTH - 1, False), (600, True), (20_000, True)):
        nest = b"[" * depth + b"]" * depth
        line = b'{"text": "a dog"%s, "x": %s}' % (mixed.encode(), nest)
        pool = tmp_path / f"pool{depth}" / "a.jsonl"
        pool.parent.mkdir()
        pool.write_bytes(b"\n".join([*rows, line, *rows]) + b"\n")
        extra = []
        if read in ("streamed", "ranges"):
            monkeypatch.setattr(gio, "JSON_STREAM_BYTES", 10)
        if read == "ranges":
            extra = ["--partition-rows", "2"]
        r = _match(pool.parent, md, tmp_path / f"out{depth}", *extra)
        if bad:
            assert r.exit_code == 2, r.output
            assert r.stderr == (
                f"gpu-curate: error: cannot read {pool}: line 4 is nested more than "
                f"{MAX_DEPTH} levels deep\n"
            )
            assert not (tmp_path / f"out{depth}").exists()
        else:
            assert r.exit_code == 0, (r.output, r.stderr)


def test_a_deep_value_with_cr_inside_is_refused_not_a_crash(tmp_path):
    # (A CR is whitespace to pyarrow's reader: taken for a line end, it reset the depth
    # counted, and a value 20,000 deep with a CR after each bracket crashed the process.)
    import subprocess
    import sys

    md = tmp_path / "md.json"
    md.write_text(json.dumps(["dog"]))
    pool = tmp_path / "a.jsonl"
    pool.write_bytes(b'{"text": "x", "v": ' + b"[\r" * 20_000 + b"]" * 20_000 + b"}")
    done = subprocess.run(
        [sys.executable, "-m", "gpu_curate", "match", str(pool), "--metadata", str(md),
         "--out", str(tmp_path / "out"), "--workers", "1", "--quiet", "--backend", "cpu"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr == (
        f"gpu-curate: error: cannot read {pool}: line 1 is nested more than {MAX_DEPTH} "
        "levels deep\n"
    )
    from gpu_curate.io import _read_json_chunk

    with pytest.raises(pa.ArrowInvalid, match="nested more than"):
        _read_json_chunk(b'{"v": ' + b"[\r" * 3_000 + b"]" * 3_000 + b"}\r")
