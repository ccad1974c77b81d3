"""Tests of gpu_curate.report and `gpu-curate report` on a small demo run."""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gpu_curate.cli import main
from gpu_curate.errors import CurateError
from gpu_curate.report import (
    PLOT_NAMES,
    default_sweep,
    head_tail_summary,
    load_run,
    t_sweep,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# t = 50 gives a few dozen head entries on the 5,000-row demo (its default t = 200 none).
DEMO_T = "50"


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A `gpu-curate demo --rows 5000` folder (pool, metadata.json, result/)."""
    out = tmp_path_factory.mktemp("report") / "demo"
    res = _invoke(
        ["demo", "--rows", "5000", "--out", str(out), "--t", DEMO_T, "--backend", "cpu", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def reported(demo) -> Path:
    """The demo's result folder after `gpu-curate report`."""
    res = _invoke(["report", str(demo / "result")])
    assert res.exit_code == 0, res.output
    assert "index.html" in res.output
    return demo / "result"


# --------------------------------------------------------------------------- HTML parsing


class _Page(HTMLParser):
    """Collects <img> sources and the cells of every table, keyed by table id."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.tables: dict[str, list[dict]] = {}
        self._table: str | None = None
        self._cell: dict | None = None
        self._row_head: str | None = None
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr":
            self._row_head = None
        elif tag == "th":
            self._in_th = True
            self._row_head = ""
        elif tag == "td" and self._table is not None:
            self._cell = {"row": self._row_head, "attrs": a, "text": ""}

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_th = False
        elif tag == "td" and self._cell is not None:
            self.tables[self._table].append(self._cell)
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        elif self._in_th:
            self._row_head += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _number(text: str) -> float:
    """A number as the table shows it: thousands separators, maybe a % sign."""
    return float(text.replace(",", "").rstrip("%"))


# --------------------------------------------------------------------------- files


def test_report_writes_every_plot_and_the_page(reported):
    folder = reported / "report"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{n}.png" for n in PLOT_NAMES] + ["index.html"]
    )  # also: no temporary files left behind


@pytest.mark.parametrize("name", PLOT_NAMES)
def test_each_png_is_a_real_image(reported, name):
    from matplotlib.image import imread

    path = reported / "report" / f"{name}.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    colours = np.unique(img.reshape(-1, img.shape[2]), axis=0)
    assert len(colours) > 1


def test_html_table_equals_report_json(reported):
    report = json.loads((reported / "report.json").read_text())
    cells = _parse(reported / "report" / "index.html").tables["report-json"]
    shown = {c["row"]: c for c in cells}
    assert set(shown) == set(report)
    for key, value in report.items():
        cell = shown[key]
        assert cell["attrs"]["data-key"] == key
        assert json.loads(cell["attrs"]["data-value"]) == value, key
        if isinstance(value, dict | list):  # (text_columns) shown as JSON
            assert cell["text"] == json.dumps(value, ensure_ascii=False), key
        elif isinstance(value, bool) or not isinstance(value, int | float):
            assert cell["text"] == str(value), key
        elif isinstance(value, int):
            assert _number(cell["text"]) == value, key
        else:  # floats are shown with at most 3 decimals
            assert math.isclose(_number(cell["text"]), value, rel_tol=1e-12, abs_tol=5e-4), key


def test_html_head_tail_table_matches_counts(reported):
    run = load_run(reported)
    report = run.report
    cells = {
        c["attrs"]["data-key"]: c
        for c in _parse(reported / "report" / "index.html").tables["head-tail"]
    }
    assert _number(cells["head_entries_before"]["text"]) == report["head_entries"]
    head = _number(cells["head_matches_before"]["text"])
    tail = _number(cells["tail_matches_before"]["text"])
    assert head + tail == report["matches"]
    share = tail / (head + tail)
    assert math.isclose(_number(cells["tail_share_before"]["text"]), 100 * share, abs_tol=5e-3)
    assert report["head_entries"] > 0  # the demo run has a head: the plots show both parts


def test_html_references_every_png(reported):
    html_path = reported / "report" / "index.html"
    page = _parse(html_path)
    pngs = sorted(p.name for p in (reported / "report").glob("*.png"))
    assert sorted(page.imgs) == pngs
    for src in page.imgs:
        assert (html_path.parent / src).is_file()
    text = html_path.read_text(encoding="utf-8")
    assert 'id="explanation"' in text and "head" in text and "tail" in text


def test_out_html_elsewhere_links_relative_to_it(reported, tmp_path):
    html_path = tmp_path / "pages" / "run.html"
    res = _invoke(["report", str(reported), "--out-html", str(html_path), "--no-sweep"])
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output
    page = _parse(html_path)
    assert len(page.imgs) == len(PLOT_NAMES) - 1  # no t sweep
    for src in page.imgs:
        assert (html_path.parent / src).resolve().is_file()
    assert "--no-sweep" in html_path.read_text(encoding="utf-8")


@pytest.mark.parametrize("target", ["report.json", "curated/part-00000.parquet", "curated"])
def test_out_html_never_replaces_a_file_of_the_run(reported, target):
    path = Path(reported) / target
    before = path.read_bytes() if path.is_file() else None
    res = _invoke(["report", str(reported), "--out-html", str(path), "--no-sweep"])
    assert res.exit_code == 2, res.output
    assert "--out-html" in res.stderr and "Traceback" not in res.output + res.stderr
    if before is not None:
        assert path.read_bytes() == before


def test_out_html_in_a_new_folder_of_the_run_is_refused(reported):
    # A folder of its own in the run would be no run's: --overwrite would refuse the run.
    path = Path(reported) / "pages" / "r.html"
    res = _invoke(["report", str(reported), "--out-html", str(path), "--no-sweep"])
    assert res.exit_code == 2 and "is in a folder of the run" in res.stderr, res.stderr
    assert not path.parent.exists()


def test_embed_puts_the_pngs_in_the_page(reported, tmp_path):
    write_report(reported)  # the PNG files, as a page without --embed has them
    html_path = tmp_path / "embedded.html"
    res = _invoke(["report", str(reported), "--out-html", str(html_path), "--embed"])
    assert res.exit_code == 0, res.output
    page = _parse(html_path)
    prefix = "data:image/png;base64,"
    pngs = {p.read_bytes() for p in (reported / "report").glob("*.png")}
    assert len(page.imgs) == len(PLOT_NAMES)
    for src in page.imgs:
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :]) in pngs


def test_embedded_page_elsewhere_writes_nothing_into_the_run(demo, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo / "result", run, ignore=shutil.ignore_patterns("report"))
    res = _invoke(["report", str(run), "--out-html", str(tmp_path / "p.html"), "--embed"])
    assert res.exit_code == 0, res.output
    assert not (run / "report").exists()  # (a read-only run folder works)
    assert len(_parse(tmp_path / "p.html").imgs) == len(PLOT_NAMES)


def test_a_run_given_as_a_file_url(demo, tmp_path):
    # click's Path folded "file:///abs/run" into "file:/abs/run": "folder not found".
    run = tmp_path / "run"
    shutil.copytree(demo / "result", run, ignore=shutil.ignore_patterns("report"))
    res = _invoke(["report", f"file://{run.absolute()}", "--no-sweep"])
    assert res.exit_code == 0, res.output
    assert f"plots to {run.absolute() / 'report'} and" in res.output
    assert (run / "report" / "index.html").is_file()
    res = _invoke(["report", "gs://bucket/run"])
    assert res.exit_code == 2 and "a gs:// URL, but plan, report and the sampler" in res.output


def test_a_report_without_the_sweep_removes_an_earlier_sweep_plot(demo, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo / "result", run, ignore=shutil.ignore_patterns("report"))
    assert "t_sweep" in write_report(run).images
    assert (run / "report" / "t_sweep.png").is_file()
    files = write_report(run, sweep=False)
    assert "t_sweep" not in files.images and not (run / "report" / "t_sweep.png").exists()


def test_a_page_elsewhere_or_embedded_deletes_no_plot_of_the_run(demo, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo / "result", run, ignore=shutil.ignore_patterns("report"))
    write_report(run)  # the default page, which links to t_sweep.png
    for kw in ({"out_html": tmp_path / "p.html"}, {"embed": True, "out_html": tmp_path / "e.html"}):
        write_report(run, sweep=False, **kw)
        assert (run / "report" / "t_sweep.png").is_file()


def test_the_seed_is_shown_as_typed(demo, tmp_path):
    bal = tmp_path / "bal"
    res = _invoke(["balance", str(demo / "result"), "--t", "20", "--seed", "12345678901",
                   "--out", str(bal), "--backend", "cpu", "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    files = write_report(bal, sweep=False)
    cells = {c["row"]: c for c in _parse(files.html).tables["report-json"]}
    assert cells["seed"]["text"] == "12345678901"


# --------------------------------------------------------------------------- figures


def test_sweep_at_the_run_t_gives_its_expected_size(reported):
    run = load_run(reported)
    (row,) = t_sweep(run, [run.t])
    assert math.isclose(
        row["expected_curated_rows"], run.report["expected_curated_rows"], rel_tol=1e-9
    )
    assert row["head_entries"] == run.report["head_entries"]


def test_head_tail_summary_after_balancing(reported):
    run = load_run(reported)
    s = head_tail_summary(run)
    head = run.pool_counts >= run.t
    # Tail entries keep every text (p = 1), head entries lose some.
    assert np.array_equal(run.curated_counts[~head], run.pool_counts[~head])
    assert s["tail_matches_after"] == s["tail_matches_before"]
    assert s["head_matches_after"] < s["head_matches_before"]
    assert s["tail_share_after"] > s["tail_share_before"]


def test_default_sweep_brackets_t():
    ts = default_sweep(200.0, 10**6)
    assert 200.0 in ts and ts == sorted(ts) and ts[0] == 2.0 and ts[-1] == 20_000.0
    # Above twice the largest count the curve is flat: those points are dropped.
    assert max(default_sweep(200.0, 149)) <= 298.0
    assert 5.0 in default_sweep(5.0, 1)


# --------------------------------------------------------------------------- balance outputs


def test_balance_output_finds_its_relative_matched_dir(demo, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(
        demo / "result", work / "demo" / "result", ignore=shutil.ignore_patterns("report")
    )
    monkeypatch.chdir(work)
    res = _invoke(
        ["balance", "demo/result", "--t", "20", "--out", "bal", "--backend", "cpu", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    bal = work / "bal"
    # The matched dataset is recorded as an absolute path, so any cwd finds it.
    recorded = json.loads((bal / "report.json").read_text())["matched_dir"]
    assert recorded == str((work / "demo" / "result").resolve())
    monkeypatch.chdir(tmp_path)
    files = write_report(bal)
    assert sorted(files.images) == sorted(PLOT_NAMES) and not files.notes

    # Without its matched dataset the sweep is skipped, with a note in the page.
    shutil.rmtree(work / "demo")
    files = write_report(bal)
    assert "t_sweep" not in files.images and len(files.images) == len(PLOT_NAMES) - 1
    assert files.notes and "matched" in files.notes[0]
    text = files.html.read_text(encoding="utf-8")
    assert "Note:" in text and "t_sweep.png" not in text


def test_balance_output_and_matched_dir_moved_together(demo, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(demo / "result", tree / "m", ignore=shutil.ignore_patterns("report"))
    res = _invoke(["balance", str(tree / "m"), "--t", "20", "--out", str(tree / "b"),
                   "--backend", "cpu", "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    tree.rename(tmp_path / "moved")
    run = load_run(tmp_path / "moved" / "b")
    assert run.matched_dir == tmp_path / "moved" / "m" and not run.notes


def test_damaged_counts_file_is_a_one_line_error(demo, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo / "result", run, ignore=shutil.ignore_patterns("report"))
    (run / "curated_entry_counts.parquet").write_bytes(b"junk")
    res = _invoke(["report", str(run)])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("gpu-curate: error: report: cannot read ")
    assert "curated_entry_counts.parquet" in res.stderr and res.stderr.count("\n") == 1


@pytest.mark.parametrize("key, value", [("pool_rows", None), ("curated_rows", "3000"),
                                        ("t", True)])  # fmt: skip
def test_a_damaged_report_json_figure_is_a_one_line_error(demo, tmp_path, key, value):
    # (pool_rows: null gave a TypeError traceback where the page formats it.)
    run = tmp_path / "run"
    shutil.copytree(demo / "result", run, ignore=shutil.ignore_patterns("report"))
    report = json.loads((run / "report.json").read_text())
    (run / "report.json").write_text(json.dumps({**report, key: value}))
    res = _invoke(["report", str(run)])
    assert res.exit_code == 2, res.output
    assert res.stderr == (
        f"gpu-curate: error: report: {run / 'report.json'} is damaged ({key} is {value!r})\n"
    )


def test_matched_dir_with_other_counts_is_not_used(demo, tmp_path):
    bal = tmp_path / "bal"
    res = _invoke(
        ["balance", str(demo / "result"), "--t", "20", "--out", str(bal), "--backend", "cpu",
         "--quiet"]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((bal / "report.json").read_text())
    # Point matched_dir at a matched dataset of another pool: same layout, other counts.
    other = tmp_path / "other"
    shutil.copytree(demo / "result", other, ignore=shutil.ignore_patterns("report"))
    counts_path = other / "entry_counts.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(counts_path)
    counts = pa.array(table.column("count").to_numpy() + 1, pa.int64())
    pq.write_table(table.set_column(2, "count", counts), counts_path)
    report["matched_dir"] = str(other)
    (bal / "report.json").write_text(json.dumps(report))
    assert load_run(bal).matched_dir is None


# --------------------------------------------------------------------------- errors


def test_missing_folder_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CurateError, match="not found"):
        write_report(missing)
    res = _invoke(["report", str(missing)])
    assert res.exit_code == 2
    assert res.stderr.startswith("gpu-curate: error:") and res.stderr.count("\n") == 1
    assert not missing.exists()


def test_folder_without_report_json_is_an_error(tmp_path):
    with pytest.raises(CurateError, match="no report.json"):
        write_report(tmp_path)
    (tmp_path / "result").mkdir()
    with pytest.raises(CurateError, match="DIR/result"):
        load_run(tmp_path)
    assert not (tmp_path / "report").exists()


def test_match_only_output_is_an_error(demo, tmp_path):
    out = tmp_path / "m"
    res = _invoke(
        ["match", str(demo / "pool"), "--metadata", str(demo / "metadata.json"), "--out",
         str(out), "--backend", "cpu", "--quiet"]
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with pytest.raises(CurateError, match="match-only"):
        write_report(out)


def test_a_failed_write_leaves_no_temporary_file(reported, tmp_path, monkeypatch):
    from gpu_curate import report as report_mod

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    target = tmp_path / "x.html"
    with pytest.raises(OSError, match="disk full"):
        report_mod.write_atomic(target, b"<html>")
    assert list(tmp_path.iterdir()) == []
