"""Plan the balancing threshold ``t`` before sampling: exact expected sizes per ``t``.

Reads a matched dataset (``DIR/matched/*.parquet`` with an ``entry_ids`` list column and
``DIR/entry_counts.parquet``) and, for each candidate ``t``, reports the exact expected
number of curated rows ``sum(1 - prod(1 - p[e]))``, the head entries (count >= t), the
tail share of matches and the largest expected entry count after balancing. It can also
solve for the ``t`` whose expected size is a target number of rows.

Examples
--------
>>> from gpu_curate.planning import plan  # doctest: +SKIP
>>> plan("out/", [20_000])[0]["expected_curated_rows"]  # doctest: +SKIP
400123456.7
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import click
import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from . import balance
from .backend import BackendError, resolve
from .cli_options import backend_option, threshold
from .counts import counts_by_id, read_counts_table
from .errors import RESUME, CurateError, option, path_argument, whole_number
from .io import read_parquet_columns
from .outdir import not_matched_why, reading, run_folder_why, success_parts
from .steps import list_chunk_csr

__all__ = [
    "TargetT",
    "load_matched_csr",
    "load_entry_counts",
    "plan_for_t",
    "t_for_target_rows",
    "plan",
    "plan_command",
]


# --------------------------------------------------------------------------- loading


def local_folder(matched_dir: str | Path) -> Path:
    """A run folder given as a path or a ``file://`` URL, as a local path (another URL is
    a :class:`CurateError`: these readers take local folders).

    Examples
    --------
    >>> local_folder("file:///data/out").as_posix()
    '/data/out'
    """
    text = str(matched_dir)
    if "://" in text:  # (Path would fold the URL's '//' into a local path that is not there)
        protocol, _, rest = text.partition("://")
        if protocol != "file":
            raise CurateError(
                f"{text}: a {protocol}:// URL, but plan, report and the sampler read a local "
                "run folder: copy or mount it here"
            )
        return Path(rest)
    return Path(matched_dir)


def _dataset_root(matched_dir: str | Path) -> Path:
    root = local_folder(matched_dir)
    if (why := run_folder_why(LocalFileSystem(), str(root.absolute()), str(root))) is not None:
        raise CurateError(why)
    return root


def _matched_files(matched_dir: str | Path) -> list[tuple[Path, int]]:
    """(part, rows) of a complete matched dataset: the parts its ``_SUCCESS`` lists, in
    that order (the order ``balance`` reads them in), and nothing else in the folder."""
    root = _dataset_root(matched_dir)
    sub = root / "matched"
    if (why := not_matched_why(LocalFileSystem(), str(root), str(root))) is not None:
        raise CurateError(why)
    parts = [(sub / f, rows) for f, rows in success_parts(LocalFileSystem(), str(sub))]
    missing = [str(f) for f, _ in parts if not f.is_file()]
    if missing:
        raise CurateError(f"{missing[0]}, a part that matched/_SUCCESS lists, is missing")
    return parts


def load_matched_csr(
    matched_dir: str | Path, *, with_uids: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read a matched dataset's ``entry_ids`` (and ``uid``) columns as a host CSR.

    The parts that ``matched/_SUCCESS`` lists are read in its order (the order
    ``balance`` reads them in), rows in file order; only the needed columns are read and
    no Python loop over rows is run.

    Parameters
    ----------
    matched_dir : str or Path
        The pipeline's output directory (holding ``matched/``).
    with_uids : bool, default True
        Also read the ``uid`` column (the planner does not need it).

    Returns
    -------
    row_offsets : ndarray of int64, shape (n + 1,)
    entry_ids : ndarray of int32
    uids : ndarray of uint64, shape (n,), or None when ``with_uids`` is False

    Raises
    ------
    CurateError
        Missing directory, ``_SUCCESS`` or parts, unreadable or damaged parts, or columns
        of the wrong type.

    Examples
    --------
    >>> offs, ids, uids = load_matched_csr("out/")  # doctest: +SKIP
    """
    files = _matched_files(matched_dir)
    columns = ["entry_ids", "uid"] if with_uids else ["entry_ids"]
    lengths: list[np.ndarray] = []
    values: list[np.ndarray] = []
    uid_parts: list[np.ndarray] = []
    for f, rows in files:
        table = read_parquet_columns(f, columns)
        if table.num_rows != rows:
            raise CurateError(f"{f} holds {table.num_rows} rows, matched/_SUCCESS says {rows}")
        for chunk in table.column("entry_ids").chunks:
            ln, vals = list_chunk_csr(chunk, str(f))
            lengths.append(ln)
            values.append(vals)
        if with_uids:
            col = table.column("uid")
            if not pa.types.is_integer(col.type):
                raise CurateError(f"{f}: uid must be an integer column, got {col.type}")
            if col.null_count:
                raise CurateError(f"{f}: uid contains nulls")
            uid_parts.append(col.to_numpy().astype(np.uint64, copy=False))
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    row_offsets = np.zeros(all_lengths.size + 1, dtype=np.int64)
    np.cumsum(all_lengths, out=row_offsets[1:])
    entry_ids = np.concatenate(values).astype(np.int32) if values else np.zeros(0, np.int32)
    if entry_ids.size and int(entry_ids.min()) < 0:
        raise CurateError(f"{matched_dir}: entry_ids holds negative ids")
    uids = None
    if with_uids:
        uids = np.concatenate(uid_parts) if uid_parts else np.zeros(0, np.uint64)
    return row_offsets, entry_ids, uids


def load_entry_counts(matched_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``entry_counts.parquet``: per-entry counts and names, in entry-id order.

    Returns
    -------
    counts : ndarray of int64, shape (n_entries,)
    entries : ndarray of object (str), shape (n_entries,)

    Raises
    ------
    CurateError
        Missing file or columns, or entry ids that are not 0 .. n_entries - 1.

    Examples
    --------
    >>> counts, entries = load_entry_counts("out/")  # doctest: +SKIP
    """
    root = _dataset_root(matched_dir)
    path = root / "entry_counts.parquet"
    if not path.is_file():
        if (root / "_run.json").is_file():
            # (The counts are written once every part is matched.)
            raise CurateError(
                f"{root} is an interrupted run (no entry_counts.parquet yet): finish it with "
                f"{RESUME}"
            )
        raise CurateError(
            f"{root} is not a matched dataset (no entry_counts.parquet): give the output "
            "folder of gpu-curate match or curate"
        )
    counts, entries = counts_by_id(read_counts_table(path, need_entry=False), str(path))
    if entries is None:
        entries = np.asarray([str(i) for i in range(counts.size)], dtype=object)
    return counts, entries


# --------------------------------------------------------------------------- maths


class TargetT(NamedTuple):
    """The solution of :func:`t_for_target_rows`."""

    t: float
    """The threshold found (``max count`` when the target is not reachable)."""
    expected_rows: float
    """The exact expected curated size at ``t``."""
    reachable: bool
    """False when the target exceeds the number of matched rows (the size at max count)."""


def _expected(offsets: Any, values: Any, counts: Any, t: float, xp: Any) -> float:
    p = balance.entry_probabilities(counts, t)
    return float(xp.sum(balance._keep_probabilities_core(offsets, values, p, xp)))


class _SizeCurve:
    """f(t) = expected curated rows as a function of t, with its right derivative.

    Precomputes each pair's count once, so an evaluation is a few streaming passes over
    the pairs. ``1 - t / max(c, t)`` is formed exactly as in :func:`balance.keep_mask`'s
    probabilities, so f(t) equals ``expected_rows`` bit for bit before the final sum.
    """

    def __init__(self, offsets: Any, values: Any, counts: Any, xp: Any) -> None:
        self.xp = xp
        self.offsets = offsets
        self.cp = xp.asarray(counts).astype(np.float64)[values]
        self.lengths = offsets[1:] - offsets[:-1]
        self.rows = None if xp is np else balance._pair_rows(offsets, xp)

    def __call__(self, t: float) -> tuple[float, float]:
        xp = self.xp
        q = t / xp.maximum(self.cp, t)
        xp.subtract(1.0, q, out=q)
        prod = balance._row_products(self.offsets, q, xp)
        f = float(xp.sum(1.0 - prod))
        # dP_r/dt = sum over the row's pairs with count c > t of (1 / c) times the other
        # pairs' product of (1 - p), i.e. prod_r / (c * (1 - t/c)) = prod_r / (c - t).
        # Pairs with c <= t have prod_r == 0 (their own factor is 0): the clamp turns
        # them into 0 without a mask.
        d = self.cp - t
        xp.maximum(d, 1e-300, out=d)
        pp = np.repeat(prod, self.lengths) if self.rows is None else prod[self.rows]
        pp /= d
        return f, float(xp.sum(pp))


def t_for_target_rows(
    row_offsets: Any,
    entry_ids: Any,
    counts: Any,
    target_rows: int,
    *,
    max_iter: int = 200,
) -> TargetT:
    """Find ``t`` whose exact expected curated size is within one row of ``target_rows``.

    The expected size is continuous and non-decreasing in ``t`` (each ``p[e]`` is), from
    0 as ``t -> 0`` to the number of matched rows at ``t = max count``. The search runs
    Newton steps on ``log f`` against ``log t`` (nearly linear) from a start left of the
    root, guarded by a bisection bracket on ``(0, max count]``: typically 3 to 7
    evaluations of the exact expected size.

    Parameters
    ----------
    row_offsets, entry_ids : CSR (NumPy or CuPy)
    counts : array of int64, shape (n_entries,)
    target_rows : int
        Desired expected number of curated rows (> 0).
    max_iter : int, default 200

    Returns
    -------
    TargetT
        ``(t, expected_rows, reachable)``; when the target is above the number of matched
        rows, ``t = max count``, ``expected_rows`` = matched rows and ``reachable=False``.

    Raises
    ------
    ValueError
        If ``target_rows <= 0``.

    Examples
    --------
    >>> import numpy as np
    >>> offs = np.array([0, 1, 2, 3, 4]); ids = np.array([0, 0, 0, 1], np.int32)
    >>> sol = t_for_target_rows(offs, ids, np.array([3, 1]), 2)
    >>> abs(sol.expected_rows - 2) <= 1, sol.reachable
    (True, True)
    """
    if target_rows <= 0:
        raise ValueError(f"target_rows must be positive, got {target_rows}")
    xp = balance.array_module(row_offsets, entry_ids, counts)
    offsets, values = balance._csr(row_offsets, entry_ids, xp)
    counts = xp.asarray(counts)
    balance._check_p(xp.zeros(counts.size), values, xp)
    hi = max(float(counts.max()) if counts.size else 0.0, 1.0)
    target = float(target_rows)

    f_hi = _expected(offsets, values, counts, hi, xp)  # all p == 1: the matched rows
    if target >= f_hi - 1.0:
        return TargetT(hi, f_hi, target <= f_hi)
    best = TargetT(hi, f_hi, True)
    curve = _SizeCurve(offsets, values, counts, xp)
    # f is concave with f(0) = 0 (each 1 - p[e] = max(1 - t/c, 0) is convex, non-negative
    # and non-increasing, so their product is convex), hence f(t) <= t * f'(0): the
    # start t = target / f'(0) lies at or left of the root. log f is close to linear in
    # log t, so Newton steps on that scale converge in a handful of evaluations; the
    # bracket [a, b] falls back to bisection if a step leaves it.
    a, b = 0.0, hi
    slope0 = float(xp.sum(1.0 / xp.maximum(curve.cp, 1.0)))
    c = min(target / slope0, hi) if slope0 > 0 else 0.5 * hi
    for _ in range(max_iter):
        fc, dc = curve(c)
        if abs(fc - target) < abs(best.expected_rows - target):
            best = TargetT(c, fc, True)
        if abs(fc - target) <= 1.0 or b - a <= 1e-15 * b:
            break
        if fc < target:
            a = c
        else:
            b = c
        nxt = math.nan
        if fc > 0 and dc > 0:
            nxt = c * math.exp((math.log(target) - math.log(fc)) * fc / (c * dc))
        c = nxt if a < nxt < b else (0.5 * (a + b) if a == 0 else math.sqrt(a * b))
    return best


def plan_for_t(
    row_offsets: Any,
    entry_ids: Any,
    counts: Any,
    t: float,
    entries: np.ndarray | None = None,
) -> dict[str, Any]:
    """The planning figures of one ``t`` on an in-memory CSR (NumPy or CuPy).

    Returns
    -------
    dict
        ``t``, ``expected_curated_rows``, ``matched_rows``, ``expected_share`` (of
        matched rows), ``head_entries`` (count >= t), ``tail_share`` (matches in entries
        with count < t over all matches), ``max_expected_entry_count`` (largest expected
        number of kept texts containing one entry), ``max_expected_entry_id`` and
        ``max_expected_entry`` (its name, when ``entries`` is given).

    Examples
    --------
    >>> import numpy as np
    >>> offs = np.array([0, 1, 2, 3, 4]); ids = np.array([0, 0, 0, 1], np.int32)
    >>> round(plan_for_t(offs, ids, np.array([3, 1]), 1)["expected_curated_rows"], 9)
    2.0
    """
    xp = balance.array_module(row_offsets, entry_ids, counts)
    offsets, values = balance._csr(row_offsets, entry_ids, xp)
    counts = xp.asarray(counts).astype(np.int64, copy=False)
    p = balance._check_p(balance.entry_probabilities(counts, t), values, xp)
    keep_prob = balance._keep_probabilities_core(offsets, values, p, xp)
    per_entry = balance.expected_entry_counts(offsets, values, p, keep_prob=keep_prob)
    lengths = offsets[1:] - offsets[:-1]
    matched_rows = int(xp.count_nonzero(lengths))
    total = int(counts.sum())
    tf = float(t)
    tail = int(counts[counts.astype(np.float64) < tf].sum())
    # (Exact, as balance's report figure: the same number for the same t.)
    expected = balance.expected_units(keep_prob, xp) / balance.EXPECTED_UNITS_PER_ROW
    # (-1 when no entry is expected in any kept text: there is no largest one to name.)
    top = int(xp.argmax(per_entry)) if per_entry.size and float(per_entry.max()) > 0 else -1
    return {
        "t": tf,
        "expected_curated_rows": expected,
        "matched_rows": matched_rows,
        "expected_share": expected / matched_rows if matched_rows else 0.0,
        "head_entries": int(xp.count_nonzero(counts.astype(np.float64) >= tf)),
        "tail_share": tail / total if total else 0.0,
        "max_expected_entry_count": float(per_entry[top]) if top >= 0 else 0.0,
        "max_expected_entry_id": top,
        "max_expected_entry": (str(entries[top]) if entries is not None and top >= 0 else None),
    }


def plan(
    matched_dir: str | Path,
    ts: float | list[float] | tuple[float, ...] = (),
    target_rows: int | None = None,
    backend: str = "cpu",
) -> list[dict[str, Any]]:
    """Planning figures of a matched dataset for each ``t`` (and for a target size).

    Parameters
    ----------
    matched_dir : str or Path
        The pipeline's output directory.
    ts : float or sequence of float
        Threshold(s) to evaluate (each > 0).
    target_rows : int, optional
        Also solve for the ``t`` whose expected size is ``target_rows``
        (:func:`t_for_target_rows`); its row comes last, with the extra keys
        ``target_rows`` and ``target_reachable``.
    backend : {"cpu", "gpu", "auto"}
        Where to compute (see :func:`gpu_curate.backend.resolve`).

    Returns
    -------
    list of dict
        One dict per ``t`` (see :func:`plan_for_t`), in the order given, then the
        target row.

    Raises
    ------
    CurateError
        Bad input: missing directory or files, ``t <= 0``, ``target_rows <= 0``.

    Examples
    --------
    >>> rows = plan("out/", [20_000, 170_000], target_rows=1_000_000)  # doctest: +SKIP
    """
    ts = [ts] if isinstance(ts, int | float | np.number) else list(ts)
    ts = [balance.check_t(t) for t in ts]
    if target_rows is not None:
        target_rows = whole_number(target_rows, option("--target-rows"), at_least=1)
    if not ts and target_rows is None:
        raise CurateError(
            f"give at least one t ({option('--t')}) or a target size ({option('--target-rows')})"
        )
    matched_dir = local_folder(path_argument(matched_dir, "matched_dir"))
    with reading(str(matched_dir)):  # (no run overwrites it while it is read)
        counts_h, entries = load_entry_counts(matched_dir)
        offsets_h, values_h, _ = load_matched_csr(matched_dir, with_uids=False)
    if values_h.size and int(values_h.max()) >= counts_h.size:
        raise CurateError(
            f"{matched_dir}: entry id {int(values_h.max())} is out of range for the "
            f"{counts_h.size} entries of entry_counts.parquet"
        )
    be = resolve(backend)
    xp = be.xp
    offsets, values, counts = xp.asarray(offsets_h), xp.asarray(values_h), xp.asarray(counts_h)
    rows = [plan_for_t(offsets, values, counts, t, entries) for t in ts]
    if target_rows is not None:
        sol = t_for_target_rows(offsets, values, counts, target_rows)
        row = plan_for_t(offsets, values, counts, sol.t, entries)
        row["target_rows"] = int(target_rows)
        row["target_reachable"] = sol.reachable
        rows.append(row)
    for row in rows:
        row["rows"] = int(offsets_h.size - 1)
        row["total_matches"] = int(counts_h.sum())
    return rows


# --------------------------------------------------------------------------- CLI


def _fmt_t(t: float) -> str:
    return f"{t:,.0f}" if t == int(t) else f"{t:,.6g}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Render :func:`plan` rows as a terminal table (plus a line on the target, if any)."""
    header = (
        f"{'t':>12}  {'expected rows':>15}  {'% matched':>9}  {'head entries':>12}  "
        f"{'tail share':>10}  {'max E[entry count]':>18}  entry"
    )
    lines = []
    if rows:
        r0 = rows[0]
        lines.append(
            f"rows in matched/: {r0['rows']:,}  with a match: {r0['matched_rows']:,}  "
            f"matches: {r0['total_matches']:,}"
        )
    lines += [header, "-" * len(header)]
    for r in rows:
        name = r["max_expected_entry"]
        lines.append(
            f"{_fmt_t(r['t']):>12}  {r['expected_curated_rows']:>15,.1f}  "
            f"{100 * r['expected_share']:>8.2f}%  {r['head_entries']:>12,}  "
            f"{100 * r['tail_share']:>9.2f}%  {r['max_expected_entry_count']:>18,.1f}  "
            f"{json.dumps(name, ensure_ascii=False) if name is not None else ''}"
        )
    for r in rows:
        if "target_rows" not in r:
            continue
        if r["target_reachable"]:
            lines.append(
                f"target {r['target_rows']:,} rows: t = {r['t']:.6g} gives "
                f"{r['expected_curated_rows']:,.1f} expected rows (last line)"
            )
        elif r["matched_rows"] == 0:
            lines.append(f"target {r['target_rows']:,} rows: no text matched, no t keeps any")
        else:
            lines.append(
                f"target {r['target_rows']:,} rows is above the {r['matched_rows']:,} matched "
                f"rows, the most any t keeps (t = max count {_fmt_t(r['t'])} keeps them all)"
            )
    return "\n".join(lines)


@click.command("plan")
@click.argument("matched_dir")
@click.option(
    "--t",
    "ts",
    multiple=True,
    help="Balancing threshold to evaluate (repeatable).",
)
@click.option(
    "--target-rows",
    type=int,
    default=None,
    help="Also find the t whose expected curated size is this many rows.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@backend_option(help="Compute on cpu (NumPy) or gpu (CuPy).")
def plan_command(
    matched_dir: str,
    ts: tuple[str, ...],
    target_rows: int | None,
    as_json: bool,
    backend: str,
) -> None:
    """Expected curated size, head entries and tail share for each t of a matched dataset."""
    try:
        rows = plan(matched_dir, [threshold(t) for t in ts], target_rows=target_rows,
                    backend=backend)  # fmt: skip
    except BackendError as exc:
        raise CurateError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        click.echo(format_table(rows))
