"""``gpu-curate report``: plots and one HTML page that explain a curate or balance run.

Reads an output folder (``report.json``, ``entry_counts.parquet``,
``curated_entry_counts.parquet`` and, when reachable, the matched dataset) and writes to
``DIR/report/``:

- ``rank_frequency.png``: entry counts by rank, before and after balancing (log-log),
  with ``t`` as a horizontal line;
- ``head_tail.png``: entries and share of matches in head vs tail, before vs after;
- ``t_sweep.png``: exact expected curated size against ``t`` (:func:`gpu_curate.planning.plan`
  on the matched dataset), skipped with a note when no matched dataset is reachable;
- ``top_entries.png``: the top entries by pool count, with their curated counts;
- ``index.html``: the plots, the ``report.json`` figures and a plain-words explanation.

Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot, so importing
this module never changes the global backend (notebooks keep their inline one).

Examples
--------
>>> from gpu_curate.report import write_report  # doctest: +SKIP
>>> files = write_report("gpu-curate-demo/result")  # doctest: +SKIP
>>> files.html  # doctest: +SKIP
PosixPath('gpu-curate-demo/result/report/index.html')
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import click
import numpy as np

from .backend import BackendError
from .cli_options import backend_option
from .counts import read_counts_table
from .errors import CurateError
from .io import write_atomic
from .outdir import REPORT_PAGE_TAG, reading, wrong_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "RunData",
    "ReportFiles",
    "load_run",
    "head_tail_summary",
    "default_sweep",
    "t_sweep",
    "fig_rank_frequency",
    "fig_head_tail",
    "fig_t_sweep",
    "fig_top_entries",
    "render_html",
    "write_report",
    "report_command",
]

REPORT_FOLDER = "report"
PLOT_NAMES = ("rank_frequency", "head_tail", "t_sweep", "top_entries")
_BEFORE, _AFTER = "#4c72b0", "#dd8452"
_HEAD, _TAIL = "#c44e52", "#55a868"
# Rank-frequency curves of ~500k entries are thinned to this many log-spaced ranks: the
# picture is the same and the PNG renders in a fraction of the time.
_MAX_CURVE_POINTS = 4000


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class RunData:
    """What a report needs from an output folder (see :func:`load_run`)."""

    folder: Path
    """The curate or balance output folder."""
    report: dict[str, Any]
    """The parsed ``report.json``."""
    entries: np.ndarray
    """Entry strings in entry-id order (object array)."""
    pool_counts: np.ndarray
    """Pool count per entry (int64), from ``entry_counts.parquet``."""
    curated_counts: np.ndarray
    """Count per entry over the kept rows (int64), from ``curated_entry_counts.parquet``."""
    matched_dir: Path | None
    """A folder holding ``matched/`` and the same entry counts, or None."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Why something is missing (e.g. no reachable matched dataset)."""

    @property
    def t(self) -> float:
        """The run's balancing threshold."""
        return float(self.report["t"])


def _read_report_json(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise CurateError(f"report: output folder not found: {folder}")
    path = folder / "report.json"
    if not path.is_file():
        hint = " (for a demo folder, pass DIR/result)" if (folder / "result").is_dir() else ""
        raise CurateError(
            f"report: {folder} has no report.json: not a finished curate or balance output{hint}"
        )
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CurateError(f"report: {path} is not valid JSON ({exc})") from None
    if not isinstance(report, dict):
        raise CurateError(f"report: {path} must hold a JSON object")
    if "t" not in report or "curated_rows" not in report:
        raise CurateError(
            f"report: {folder} is a match-only output (no t in report.json): balance it first"
        )
    # (The page prints them as numbers: another value is a damaged file, not a traceback.)
    kinds = dict.fromkeys(("t", "expected_curated_rows"), (int, float)) | dict.fromkeys(
        ("curated_rows", "pool_rows", "matched_rows", "matches", "metadata_entries"), int
    )
    if wrong := wrong_figure(report, kinds):
        raise CurateError(f"report: {path} is damaged ({wrong})")
    return report


def _read_counts(path: Path, n_entries: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(counts, entries) of a counts table, placed by entry_id (dense, id order)."""
    if not path.is_file():
        raise CurateError(f"report: {path} not found")
    try:
        table = read_counts_table(path)
    except CurateError as exc:
        # (Every error of `gpu-curate report` begins "report: ", as its own checks' do.)
        raise CurateError(f"report: {exc}") from None
    ids = table.column("entry_id").to_numpy().astype(np.int64)
    n = int(ids.max()) + 1 if n_entries is None and ids.size else (n_entries or 0)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n or np.unique(ids).size != ids.size):
        raise CurateError(f"report: {path}: entry_id must hold distinct ids in 0 .. {n - 1}")
    counts = np.zeros(n, dtype=np.int64)
    counts[ids] = table.column("count").to_numpy()
    entries = np.full(n, "", dtype=object)
    entries[ids] = np.asarray(table.column("entry").to_pylist(), dtype=object)
    return counts, entries


def _same_counts(candidate: Path, pool_counts: np.ndarray) -> bool:
    try:
        counts, _ = _read_counts(candidate / "entry_counts.parquet")
    except (CurateError, OSError, ValueError):
        return False
    return np.array_equal(counts, pool_counts)


def _find_matched_dir(
    folder: Path, report: dict, pool_counts: np.ndarray
) -> tuple[Path | None, str]:
    """The matched dataset behind an output, or (None, why not)."""
    if (folder / "matched").is_dir():
        return folder, ""
    given = report.get("matched_dir")
    if not given:
        return None, "no matched/ folder and no matched_dir in report.json"
    if "://" in str(given):
        return None, f"the matched dataset {given} is not a local path"
    # balance records matched_dir as an absolute path (earlier versions: as typed). Where
    # it is not found (the two folders moved together, say), look for it by the same
    # relative path, or by its last name, below the output folder's ancestors; accept a
    # candidate only if its entry counts are this run's (balance copies them), so a lucky
    # name cannot match.
    path = Path(given)
    tail = Path(path.name) if path.is_absolute() else path
    candidates = [path, folder / tail] + [parent / tail for parent in folder.resolve().parents]
    for cand in candidates:
        if (cand / "matched").is_dir() and _same_counts(cand, pool_counts):
            return cand, ""
    return None, f"the matched dataset {given} (report.json's matched_dir) was not found"


def load_run(folder: str | os.PathLike) -> RunData:
    """Read a curate or balance output folder for a report.

    Parameters
    ----------
    folder : str or path-like
        The ``--out`` folder of ``gpu-curate curate`` or ``gpu-curate balance``.

    Returns
    -------
    RunData

    Raises
    ------
    CurateError
        Missing folder, ``report.json`` or counts files, or malformed files.

    Examples
    --------
    >>> run = load_run("gpu-curate-demo/result")  # doctest: +SKIP
    >>> run.t, int(run.pool_counts.sum()) == run.report["matches"]  # doctest: +SKIP
    (200.0, True)
    """
    from .planning import local_folder

    root = local_folder(folder)
    report = _read_report_json(root)
    pool, entries = _read_counts(root / "entry_counts.parquet")
    curated, _ = _read_counts(root / "curated_entry_counts.parquet", n_entries=pool.size)
    matched, why = _find_matched_dir(root, report, pool)
    notes = (f"expected size against t skipped: {why}",) if matched is None else ()
    return RunData(root, report, entries, pool, curated, matched, notes)


# --------------------------------------------------------------------------- figures


def head_tail_summary(run: RunData) -> dict[str, float]:
    """Entries and matches in head (pool count >= t) vs tail, before and after balancing.

    An entry is head or tail by its *pool* count, before and after, so the two columns
    compare the same entries. Only entries with a non-zero count are counted.

    Examples
    --------
    >>> s = head_tail_summary(load_run("gpu-curate-demo/result"))  # doctest: +SKIP
    >>> s["tail_share_before"] <= s["tail_share_after"]  # doctest: +SKIP
    True
    """
    head = run.pool_counts.astype(np.float64) >= run.t
    out: dict[str, float] = {}
    for when, counts in (("before", run.pool_counts), ("after", run.curated_counts)):
        present = counts > 0
        total = int(counts.sum())
        out[f"head_entries_{when}"] = int(np.count_nonzero(present & head))
        out[f"tail_entries_{when}"] = int(np.count_nonzero(present & ~head))
        out[f"head_matches_{when}"] = int(counts[head].sum())
        out[f"tail_matches_{when}"] = int(counts[~head].sum())
        out[f"tail_share_{when}"] = int(counts[~head].sum()) / total if total else 0.0
    return out


def default_sweep(t: float, max_count: int) -> list[float]:
    """Thresholds around ``t``: 17 log-spaced values over ``t / 100 .. t * 100``.

    Values above ``max(2 * max_count, t)`` are dropped: there every entry keeps all its
    texts and the curve is flat. So are values below ``min(1, t)``: every count is at
    least 1, so there ``p[e] = t`` for all entries, a regime nobody curates in. ``t``
    itself is always included.

    Examples
    --------
    >>> ts = default_sweep(200.0, 10**6)
    >>> len(ts), ts[0], ts[8], ts[-1]
    (17, 2.0, 200.0, 20000.0)
    """
    grid = [float(t) * 10.0 ** float(e) for e in np.linspace(-2.0, 2.0, 17)]
    cap = max(2.0 * float(max_count), float(t))
    floor = min(1.0, float(t))
    return sorted({v for v in grid if floor <= v <= cap} | {float(t)})


def t_sweep(
    run: RunData, ts: list[float] | None = None, backend: str = "cpu"
) -> list[dict[str, Any]] | None:
    """Planning figures (:func:`gpu_curate.planning.plan`) for thresholds around the run's t.

    Returns None when the run has no reachable matched dataset.

    Examples
    --------
    >>> rows = t_sweep(load_run("gpu-curate-demo/result"), [50, 200])  # doctest: +SKIP
    >>> [round(r["expected_curated_rows"]) for r in rows]  # doctest: +SKIP
    [88348, 121767]
    """
    from .planning import plan

    if run.matched_dir is None:
        return None
    max_count = int(run.pool_counts.max()) if run.pool_counts.size else 1
    return plan(run.matched_dir, ts or default_sweep(run.t, max_count), backend=backend)


def _figure(width: float = 7.5, height: float = 4.5) -> Figure:
    # matplotlib loads here, not at import: every `gpu-curate` command imports this module.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _thin_ranks(n: int) -> np.ndarray:
    if n <= _MAX_CURVE_POINTS:
        return np.arange(n)
    return np.unique(np.geomspace(1, n, _MAX_CURVE_POINTS).astype(np.int64)) - 1


def fig_rank_frequency(run: RunData) -> Figure:
    """Entry counts by pool rank, before and after balancing, log-log, ``t`` marked.

    The "after" curve follows the same entries in pool-rank order, so head entries drop
    to about ``t`` while tail entries (all their texts kept) stay on the pool curve.

    Examples
    --------
    >>> fig_rank_frequency(load_run("gpu-curate-demo/result")).savefig("rf.png")  # doctest: +SKIP
    """
    fig = _figure()
    ax = fig.subplots()
    order = np.argsort(-run.pool_counts, kind="stable")
    order = order[run.pool_counts[order] > 0]
    idx = _thin_ranks(order.size)
    ranks = idx + 1
    before = run.pool_counts[order][idx].astype(np.float64)
    after = run.curated_counts[order][idx].astype(np.float64)
    after[after <= 0] = np.nan  # log axes cannot show zero counts
    if order.size:
        ax.loglog(ranks, before, color=_BEFORE, lw=1.8, label="pool (before balancing)")
        ax.loglog(ranks, after, color=_AFTER, lw=1.0, label="curated (after), same entries")
    ax.axhline(run.t, color="black", ls="--", lw=1, label=f"t = {run.t:,g}")
    ax.set_xlabel("entry rank by pool count")
    ax.set_ylabel("texts containing the entry")
    ax.set_title(f"Entry counts before and after balancing ({order.size:,} matched entries)")
    ax.legend(loc="lower left")
    ax.grid(True, which="major", alpha=0.3)
    return fig


def _annotate_stack(ax, x: float, low: float, high: float, top: float, text: str) -> None:
    """Label a bar segment inside it, or beside the bar when it is too thin to hold text."""
    if high <= 0:
        return
    if high >= 0.06 * top:
        ax.text(x, low + high / 2, text, ha="center", va="center", fontsize=8, color="white")
    else:
        ax.text(x + 0.42, low + high / 2, text, ha="left", va="center", fontsize=8)


def fig_head_tail(run: RunData) -> Figure:
    """Stacked bars: entries and share of matches in head vs tail, before vs after.

    Examples
    --------
    >>> fig_head_tail(load_run("gpu-curate-demo/result")).savefig("ht.png")  # doctest: +SKIP
    """
    s = head_tail_summary(run)
    fig = _figure(8.5, 4.2)
    ax_e, ax_m = fig.subplots(1, 2)
    x = np.arange(2)
    labels = ["before (pool)", "after (curated)"]
    head_e = [s["head_entries_before"], s["head_entries_after"]]
    tail_e = [s["tail_entries_before"], s["tail_entries_after"]]
    tot = [max(s[f"head_matches_{w}"] + s[f"tail_matches_{w}"], 1) for w in ("before", "after")]
    head_m = [
        100 * s[f"head_matches_{w}"] / n for w, n in zip(("before", "after"), tot, strict=True)
    ]
    tail_m = [
        100 * s[f"tail_matches_{w}"] / n for w, n in zip(("before", "after"), tot, strict=True)
    ]
    for ax, head, tail, fmt in (
        (ax_e, head_e, tail_e, "{:,.0f}"),
        (ax_m, head_m, tail_m, "{:.1f}%"),
    ):
        ax.bar(x, head, color=_HEAD, label=f"head (pool count >= t = {run.t:,g})")
        ax.bar(x, tail, bottom=head, color=_TAIL, label="tail (pool count < t)")
        top = max(max(h + t for h, t in zip(head, tail, strict=True)), 1e-9)
        for i in range(2):
            _annotate_stack(ax, x[i], 0, head[i], top, fmt.format(head[i]))
            _annotate_stack(ax, x[i], head[i], tail[i], top, fmt.format(tail[i]))
        ax.set_xlim(-0.6, 1.9)  # room for labels beside the second bar
        ax.set_xticks(x, labels)
    ax_e.set_ylabel("entries with at least one text")
    ax_e.set_title("Entries")
    ax_m.set_ylabel("% of (text, entry) matches")
    ax_m.set_ylim(0, 100)
    ax_m.set_title("Share of matches")
    ax_m.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8)
    fig.suptitle("Head vs tail, before and after balancing")
    return fig


def fig_t_sweep(run: RunData, rows: list[dict[str, Any]]) -> Figure:
    """Exact expected curated size against ``t`` (log x), the run's ``t`` and result marked.

    Examples
    --------
    >>> run = load_run("gpu-curate-demo/result")  # doctest: +SKIP
    >>> fig_t_sweep(run, t_sweep(run)).savefig("sweep.png")  # doctest: +SKIP
    """
    rows = sorted(rows, key=lambda r: r["t"])
    ts = [r["t"] for r in rows]
    fig = _figure()
    ax = fig.subplots()
    ax.semilogx(ts, [r["expected_curated_rows"] for r in rows], "o-", color=_BEFORE, ms=4,
                label="expected curated rows")  # fmt: skip
    if rows:
        ax.axhline(rows[0]["matched_rows"], color="grey", ls=":", label="matched rows")
    ax.axvline(run.t, color="black", ls="--", lw=1, label=f"this run: t = {run.t:,g}")
    ax.plot([run.t], [run.report["curated_rows"]], "*", color=_AFTER, ms=12,
            label=f"this run: {run.report['curated_rows']:,} curated rows")  # fmt: skip
    ax.set_xlabel("t (balancing threshold)")
    ax.set_ylabel("rows")
    ax.set_ylim(bottom=0)
    ax.set_title("Expected curated size against t")
    ax.legend(loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def fig_top_entries(run: RunData, n: int = 20) -> Figure:
    """Horizontal bars: the top ``n`` entries by pool count, curated count beside.

    Examples
    --------
    >>> fig_top_entries(load_run("gpu-curate-demo/result")).savefig("top.png")  # doctest: +SKIP
    """
    order = np.argsort(-run.pool_counts, kind="stable")[:n]
    order = order[run.pool_counts[order] > 0]
    fig = _figure(7.5, max(3.0, 0.3 * order.size + 1.4))
    ax = fig.subplots()
    y = np.arange(order.size)
    ax.barh(y - 0.2, run.pool_counts[order], height=0.4, color=_BEFORE, label="pool count")
    ax.barh(y + 0.2, run.curated_counts[order], height=0.4, color=_AFTER, label="curated count")
    ax.set_yticks(y, [_short(str(e)) for e in run.entries[order]])
    ax.invert_yaxis()  # largest on top
    top = int(run.pool_counts[order].max()) if order.size else 0
    # Drawing t far right of every bar would squash them: mark it only when in range.
    if run.t <= 1.1 * top:
        ax.axvline(run.t, color="black", ls="--", lw=1, label=f"t = {run.t:,g}")
    ax.set_xlabel("texts containing the entry")
    ax.set_title(f"Top {order.size} entries by pool count")
    ax.legend(loc="lower right")
    return fig


# --------------------------------------------------------------------------- HTML


def _display(value: Any) -> str:
    """A report.json value as shown in the table (numbers keep 3 decimals at most)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return f"{value:,.0f}"
        return f"{value:,.3f}" if math.isfinite(value) and abs(value) >= 1e-3 else repr(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _table(rows: list[tuple[str, Any]], table_id: str) -> str:
    # (A seed is shown as it is typed back into --seed: without thousands separators.)
    cells = "\n".join(
        f'<tr><th>{html.escape(k)}</th><td data-key="{html.escape(k)}" '
        f'data-value="{html.escape(json.dumps(v, ensure_ascii=False))}">'
        f"{html.escape(str(v) if k == 'seed' else _display(v))}</td></tr>"
        for k, v in rows
    )
    return f'<table id="{table_id}">\n{cells}\n</table>'


def _head_tail_table(s: dict[str, float]) -> str:
    rows = [
        ("head entries (pool count &ge; t)", "head_entries", "{:,}"),
        ("tail entries (pool count &lt; t)", "tail_entries", "{:,}"),
        ("matches in head entries", "head_matches", "{:,}"),
        ("matches in tail entries", "tail_matches", "{:,}"),
        ("tail share of matches", "tail_share", "{:.2%}"),
    ]
    body = "\n".join(
        f"<tr><th>{label}</th>"
        + "".join(
            f'<td data-key="{key}_{w}" data-value="{s[f"{key}_{w}"]!r}">'
            f"{fmt.format(s[f'{key}_{w}'])}</td>"
            for w in ("before", "after")
        )
        + "</tr>"
        for label, key, fmt in rows
    )
    head = "<tr><th></th><th>before (pool)</th><th>after (curated)</th></tr>"
    return f'<table id="head-tail">\n{head}\n{body}\n</table>'


def _sweep_table(rows: list[dict[str, Any]]) -> str:
    head = "<tr><th>t</th><th>expected rows</th><th>head entries</th><th>tail share</th></tr>"
    body = "\n".join(
        f"<tr><td>{r['t']:,.6g}</td><td>{r['expected_curated_rows']:,.1f}</td>"
        f"<td>{r['head_entries']:,}</td><td>{100 * r['tail_share']:.2f}%</td></tr>"
        for r in sorted(rows, key=lambda r: r["t"])
    )
    return f'<table id="t-sweep">\n{head}\n{body}\n</table>'


def _explanation(run: RunData, s: dict[str, float]) -> str:
    r = run.report
    t = run.t
    return (
        f"Every text of the pool ({r.get('pool_rows', 0):,} rows) was matched against "
        f"{r.get('metadata_entries', run.entries.size):,} metadata entries (visual concepts); "
        f"the {r.get('matched_rows', 0):,} texts that contain at least one entry go on to "
        f"balancing. The threshold t = {t:,g} caps how many texts any one concept may "
        f"bring: an entry found in t texts or more (a <em>head</em> entry; "
        f"{s['head_entries_before']:,} here) draws each of its texts with probability "
        f"t / count, about t in all, while an entry found in fewer texts (the "
        f"<em>tail</em>, {s['tail_entries_before']:,} entries) keeps all of them. A text "
        f"survives when any of its entries draws it, so a head entry also keeps the texts it "
        f"shares with other entries and can end above t. The result is flatter and more "
        f"diverse: tail entries held {100 * s['tail_share_before']:.1f}% of the matches "
        f"before and {100 * s['tail_share_after']:.1f}% after, in "
        f"{r['curated_rows']:,} curated rows (expected {r['expected_curated_rows']:,.1f}). "
        f"A smaller t gives a smaller, more balanced set; a t above the largest count keeps "
        f"every matched text. The draws depend only on (seed, text uid, entry), so the same "
        f"pool, metadata, t and seed always give the same set."
    )


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.6rem; text-align: left; }
td { font-variant-numeric: tabular-nums; }
figure { margin: 1.5rem 0; } img { max-width: 100%; border: 1px solid #eee; }
.note { color: #8a5a00; }
"""

_CAPTIONS = {
    "rank_frequency": "Entry counts by rank, before and after balancing; the dashed line is t.",
    "head_tail": "Entries and share of matches in head vs tail entries, before and after.",
    "t_sweep": "Exact expected curated size for thresholds around this run's t.",
    "top_entries": "The most frequent entries: pool count and curated count.",
}


def render_html(
    run: RunData,
    images: dict[str, str],
    sweep: list[dict[str, Any]] | None = None,
    notes: list[str] | tuple[str, ...] = (),
) -> str:
    """The report page: explanation, report.json table, head/tail figures, plots, notes.

    Parameters
    ----------
    run : RunData
    images : dict of str to str
        Plot name -> ``src`` of its ``<img>`` (a relative path or a ``data:`` URI).
    sweep : list of dict, optional
        :func:`t_sweep` rows, shown as a table under the plots.
    notes : sequence of str
        Lines shown as notes (e.g. a skipped plot).

    Examples
    --------
    >>> page = render_html(load_run("out/"), {"head_tail": "head_tail.png"})  # doctest: +SKIP
    """
    s = head_tail_summary(run)
    figures = "\n".join(
        f'<figure><img src="{html.escape(src)}" alt="{name}">'
        f"<figcaption>{html.escape(_CAPTIONS.get(name, name))}</figcaption></figure>"
        for name, src in images.items()
    )
    notes_html = "\n".join(f'<p class="note">Note: {html.escape(n)}</p>' for n in notes)
    title = f"gpu-curate report: {run.folder.name or run.folder}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # (--overwrite of a run folder takes a page with it as gpu-curate's.)
        REPORT_PAGE_TAG.decode(),
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(str(run.folder.resolve()))}</p>",
        "<h2>What this curation did</h2>",
        f'<p id="explanation">{_explanation(run, s)}</p>',
        notes_html,
        "<h2>Run figures (report.json)</h2>",
        _table(list(run.report.items()), "report-json"),
        "<h2>Head vs tail</h2>",
        _head_tail_table(s),
        "<h2>Plots</h2>",
        figures,
    ]
    if sweep:
        parts += ["<h2>Expected size against t</h2>", _sweep_table(sweep)]
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote."""

    html: Path
    """The HTML page."""
    images: dict[str, Path]
    """Plot name -> PNG path (plots that were skipped are absent; with ``embed``, the
    plots are in the page only and this is empty)."""
    notes: tuple[str, ...]
    """Why plots were skipped, if any."""


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _img_src(png: Path, html_path: Path, data: bytes, embed: bool) -> str:
    if not embed:
        try:
            rel = os.path.relpath(png.resolve(), html_path.resolve().parent)
            return quote(Path(rel).as_posix())
        except ValueError:  # another drive (Windows): no relative path exists
            pass
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _check_html_target(path: Path, run_folder: Path) -> None:
    # The page may replace an earlier page, never a file of the run or anything else.
    if path.exists() and (path.is_dir() or path.suffix.lower() not in (".html", ".htm")):
        raise CurateError(f"report: --out-html {path} exists and is not an HTML page")
    inside = path.resolve().is_relative_to(run_folder.resolve())
    if inside and not path.resolve().is_relative_to((run_folder / REPORT_FOLDER).resolve()):
        if path.suffix.lower() not in (".html", ".htm"):
            raise CurateError(f"report: --out-html {path} is in the run folder: name an .html")
        if path.resolve().parent != run_folder.resolve():
            # (A folder of its own in the run would be no run's: --overwrite refuses it.)
            raise CurateError(
                f"report: --out-html {path} is in a folder of the run: write it in the run "
                f"folder itself, in its {REPORT_FOLDER}/, or outside the run"
            )


def write_report(
    folder: str | os.PathLike,
    out_html: str | os.PathLike | None = None,
    *,
    embed: bool = False,
    sweep: bool = True,
    backend: str = "cpu",
) -> ReportFiles:
    """Write the plots to ``folder/report/`` and the HTML page (default ``report/index.html``).

    Parameters
    ----------
    folder : str or path-like
        A ``gpu-curate curate`` or ``balance`` output folder.
    out_html : str or path-like, optional
        Where to write the HTML page; images are referenced relative to it.
    embed : bool, default False
        Embed the PNGs in the page as base64 (a single file to share); no PNG file is
        written then, so with ``out_html`` elsewhere the run's folder is only read.
    sweep : bool, default True
        Draw the expected-size-against-t plot (it reads the whole matched dataset).
    backend : {"cpu", "gpu", "auto"}, default "cpu"
        Where :func:`gpu_curate.planning.plan` computes the sweep.

    Returns
    -------
    ReportFiles

    Raises
    ------
    CurateError
        Missing folder or ``report.json``, malformed outputs, or an unusable backend.

    Examples
    --------
    >>> files = write_report("gpu-curate-demo/result")  # doctest: +SKIP
    >>> sorted(files.images)  # doctest: +SKIP
    ['head_tail', 'rank_frequency', 't_sweep', 'top_entries']
    """
    # (Held while the page is made: no run overwrites the folder under it, which would
    # leave this run's page beside another's report.json.)
    from .planning import local_folder

    with reading(str(local_folder(folder))):
        return _write_report(folder, out_html, embed, sweep, backend)


def _write_report(folder, out_html, embed: bool, sweep: bool, backend: str) -> ReportFiles:
    run = load_run(folder)
    out_dir = run.folder / REPORT_FOLDER
    html_path = Path(out_html) if out_html is not None else out_dir / "index.html"
    _check_html_target(html_path, run.folder)
    notes = list(run.notes)
    rows = None
    if not sweep:
        notes = ["expected size against t skipped (--no-sweep)"]
    elif run.matched_dir is not None:
        try:
            rows = t_sweep(run, backend=backend)
        except BackendError as exc:
            raise CurateError(f"report: {exc}") from exc
    figures = {
        "rank_frequency": lambda: fig_rank_frequency(run),
        "head_tail": lambda: fig_head_tail(run),
        "t_sweep": (lambda: fig_t_sweep(run, rows)) if rows else None,
        "top_entries": lambda: fig_top_entries(run),
    }
    images: dict[str, Path] = {}
    srcs: dict[str, str] = {}
    for name, make in figures.items():
        png = out_dir / f"{name}.png"
        if make is None:
            # An earlier report's plot would outlive the default page it belonged to
            # (which this report replaces; a page written elsewhere leaves it be).
            if out_html is None and not embed and png.is_file():
                png.unlink()
            continue
        data = _png_bytes(make())
        if not embed:
            images[name] = png
            write_atomic(png, data)
        srcs[name] = _img_src(png, html_path, data, embed)
    page = render_html(run, srcs, rows, notes)
    write_atomic(html_path, page.encode("utf-8"))
    return ReportFiles(html_path, images, tuple(notes))


# --------------------------------------------------------------------------- CLI


@click.command("report")
@click.argument("folder")
@click.option(
    "--out-html",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the HTML page here (default: DIR/report/index.html).",
)
@click.option("--embed", is_flag=True, help="Embed the PNGs in the HTML page (base64).")
@click.option(
    "--no-sweep",
    is_flag=True,
    help="Skip the expected-size-against-t plot (it reads the whole matched dataset).",
)
@backend_option(default="cpu", help="Where the t sweep is computed.")
def report_command(
    folder: str, out_html: Path | None, embed: bool, no_sweep: bool, backend: str
) -> None:
    """Plots and an HTML page explaining the curate or balance output FOLDER."""
    files = write_report(folder, out_html, embed=embed, sweep=not no_sweep, backend=backend)
    for note in files.notes:
        click.echo(f"note: {note}")
    if embed:
        click.echo(f"wrote {files.html} (the plots embedded)")
    else:
        from .planning import local_folder

        plots = local_folder(folder) / REPORT_FOLDER
        click.echo(f"wrote {len(files.images)} plots to {plots} and {files.html}")
