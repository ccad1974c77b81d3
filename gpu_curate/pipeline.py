"""The curation run as a Dask graph: read -> match -> count -> balance -> write.

Each part (a row range of one input file, or several small Parquet files packed together:
:func:`~gpu_curate.io.plan_parts`) is one task that reads, matches and writes its own
output file atomically, a table of bounded size at a time (a CSV, TSV or big JSON Lines
file is read as a stream); entry counts are summed by a Dask tree reduction; balancing
is a second map over the matched parts, whole row groups of about 1M rows at a time.
Nothing is marked complete (``_SUCCESS``, ``report.json``) before everything under it is
written, and ``resume`` reuses the parts a previous, interrupted run completed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import posixpath
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dask
import fsspec
import numpy as np

# (Imported here, by the main thread, not by pyarrow's first conversion to NumPy: pyarrow
# imports pandas lazily and swallows any error of the import, so a Ctrl-C or SIGTERM in
# it was lost (a balance ran on to its end) or left pandas half-imported (a traceback).)
import pandas  # noqa: F401
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .backend import check_name, resolved_name
from .balance import EXPECTED_UNITS_PER_ROW, check_seed, check_t, entry_probabilities
from .cluster import ClusterInfo, check_shared, gathered, graph_key, open_client
from .counts import (
    add_counts,
    counts_by_id,
    counts_json,
    counts_table,
    partition_counts,
    read_counts_table,
    tree_reduce,
)
from .errors import (
    OVERWRITE,
    RESUME,
    ArgumentError,
    CurateError,
    cannot_read,
    counted,
    option,
    path_argument,
    spelled_out,
    switch_argument,
    whole_number,
)
from .io import (
    COMPRESSIONS,
    FORMATS,
    PART_ROWS,
    InputFile,
    Part,
    atomic_parquet_writer,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    can_cut,
    discover,
    full_path,
    has_header,
    json_layout,
    json_range_types,
    json_ranges_schema,
    packs_text,
    piece_tables,
    plan_parts,
    read_piece,
    row_group_runs,
    sync_folder,
    text_schemas,
)
from .line_ranges import RANGE_ROWS, count_csv_rows, count_rows, csv_ranges, line_cuts
from .metadata import Metadata, MetadataLike, sources_path_for
from .outdir import (
    BALANCE_MANIFEST,
    MATCH_MANIFEST,
    balance_manifest,
    check_apart,
    check_balance_settings,
    check_out,
    claim,
    finished_parts,
    not_matched_why,
    prepare_out,
    reading,
    remove_temporaries,
    run_folder_why,
    success_parts,
    wrong_figure,
)
from .steps import BalanceStep, MatchStep, csr_of
from .unique import (
    UIDS,
    WORK,
    UidCheck,
    bucket_count,
    find_duplicate,
    uid_file,
    uid_file_ok,
    write_part_uids,
)

MATCHED = "matched"
CURATED = "curated"
SUCCESS = "_SUCCESS"


@dataclass
class Options:
    """Options of a run (the CLI's flags)."""

    text_column: str | None = None
    id_column: str | None = None
    backend: str = "auto"
    workers: int | None = None
    scheduler: str | None = None
    processes: bool = False
    quiet: bool = False
    overwrite: bool = False
    resume: bool = False
    keep_unmatched: bool = False
    partition_rows: int | None = None
    format: str | None = None
    compression: str = "zstd"
    echo: Callable[[str], None] = field(default=print, repr=False)

    def __post_init__(self) -> None:
        # (The CLI's click types check its flags; a notebook's Options are checked here,
        # so that partition_rows=-5 is no run of zero parts.)
        if self.compression not in COMPRESSIONS:
            raise CurateError(
                f"unknown compression {self.compression!r}: choose one of {', '.join(COMPRESSIONS)}"
            )
        check_name(self.backend)
        if self.format is not None and self.format not in FORMATS:
            raise CurateError(
                f"unknown {option('--format')} {self.format!r}: choose one of {', '.join(FORMATS)}"
            )
        for name in ("processes", "quiet", "overwrite", "resume", "keep_unmatched"):
            setattr(self, name, switch_argument(getattr(self, name), name))
        for name in ("text_column", "id_column"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ArgumentError(f"{name} must be a column's name (a str), got {value!r}")
        if self.scheduler is not None and not isinstance(self.scheduler, str):
            raise ArgumentError(
                f"scheduler must be a Dask scheduler's address (a str), got {self.scheduler!r}"
            )
        if self.scheduler is not None and not self.scheduler.strip():
            # (--scheduler "$UNSET" ran a local cluster without a word.)
            raise ArgumentError(f"{option('--scheduler')} is empty: give the scheduler's address")
        if not callable(self.echo):
            raise ArgumentError(f"echo must be a function of one str, got {self.echo!r}")
        for name in ("workers", "partition_rows"):
            value = getattr(self, name)
            if value is not None:
                flag = option("--" + name.replace("_", "-"))
                setattr(self, name, whole_number(value, flag, at_least=1))
        if self.overwrite and self.resume:
            raise CurateError(f"{OVERWRITE} and {RESUME} exclude each other")
        if self.scheduler and (self.workers is not None or self.processes):
            flags = option("--workers") if self.workers is not None else option("--processes")
            raise CurateError(
                f"{flags} shapes a local cluster, and {option('--scheduler')} runs on an existing "
                "one, whose workers are as they were started: leave out one of the two"
            )


def _inputs_argument(inputs) -> list[str]:
    """``inputs`` (one path, or several) as a list of str; an ArgumentError otherwise."""
    if isinstance(inputs, str | os.PathLike | bytes):
        return [path_argument(inputs, "inputs")]
    try:
        return [path_argument(i, "each of inputs") for i in inputs]
    except TypeError:  # (not iterable)
        raise ArgumentError(f"inputs must be a path or a list of paths, got {inputs!r}") from None


def _checked_options(options: Options | None) -> Options:
    if options is None:
        return Options()
    if not isinstance(options, Options):
        raise TypeError(
            f"options must be a gpu_curate.Options (Options(overwrite=True), ...), got "
            f"{type(options).__name__}"
        )
    return options


def _say(opts: Options, msg: str) -> None:
    if not opts.quiet:
        opts.echo(spelled_out(msg))


# --------------------------------------------------------------------------- tasks


def _numba_threads(threads: int) -> None:
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


def _finished_part(fs, data_path: str, stats_path: str, n_entries: int):
    """(stats, entry counts) of a part a previous run completed, or None.

    The stats file is written after the data file, so its presence means the part is
    whole; the counts are the bincount of the part's own ``entry_ids``, read a run of row
    groups at a time (a part of a big CSV file holds many).
    """
    if not (fs.exists(stats_path) and fs.exists(data_path)):
        return None
    try:
        with fs.open(stats_path, "rb") as fh:
            stats = json.load(fh)
        counts = np.zeros(n_entries, np.int64)
        rows = 0
        with fs.open(data_path, "rb") as fh:
            for table in _matched_tables(fh, data_path, ["entry_ids"]):
                rows += table.num_rows
                ids = table.column("entry_ids")
                counts += partition_counts(csr_of(ids, data_path)[1], n_entries)
    except (ValueError, OSError, CurateError, RecursionError):
        return None  # damaged since (ArrowInvalid is a ValueError): the part is redone
    if not isinstance(stats, dict) or rows != stats.get("rows_written", stats.get("curated_rows")):
        return None
    return stats, counts


def part_name(index: int, parts: int) -> str:
    """The name of part ``index`` of ``parts`` (its files' stem in matched/ and curated/):
    five digits, more past 100,000 parts, so that the names sort in the parts' order (the
    order of ``_SUCCESS`` and of the sampler's rows) for a reader that lists a folder.

    Examples
    --------
    >>> part_name(7, 20), part_name(7, 100_001)
    ('part-00007', 'part-000007')
    """
    return f"part-{index:0{max(5, len(str(parts - 1)))}d}"


def _match_task(
    part: Part,
    step: MatchStep,
    out: str,
    resume: bool,
    threads: int,
    uid_buckets: int = 0,
    compression: str = "zstd",
    parts: int = 1,
):
    """Match one part (of ``parts``); with ``uid_buckets``, also write its uid file
    (gpu_curate.unique)."""
    fs, _ = fsspec.core.url_to_fs(out)
    name = part_name(part.index, parts)
    data_path = f"{out}/{MATCHED}/{name}.parquet"
    stats_path = f"{out}/{MATCHED}/_parts/{name}.json"
    uids_path = uid_file(out, part.index) if uid_buckets else None
    if (
        resume
        and (uids_path is None or uid_file_ok(fs, uids_path, uid_buckets))
        and (done := _finished_part(fs, data_path, stats_path, len(step.metadata)))
    ):
        return done
    _numba_threads(threads)
    stats: dict = {}
    counts = None
    # (Kept for the pool-wide id check only: 8 bytes a row of the part.)
    all_uids: list[np.ndarray] | None = [] if uids_path is not None else None
    with atomic_parquet_writer(fs, data_path, compression) as write:
        for table, uids, where in _part_tables(part, step, all_uids):
            matched, batch_stats, batch_counts = step.match(table, uids, where)
            write(matched)
            stats = _add_stats(stats, {**batch_stats, "rows_written": matched.num_rows})
            # Summed in place (into the first batch's new array): not one array per batch.
            counts = batch_counts if counts is None else np.add(counts, batch_counts, out=counts)
            schema = matched.schema
    first = part.pieces[0]
    if len(part.pieces) == 1:
        where = {"file": first.file.relpath, "row_start": first.row_start}  # (as before packs)
    else:
        where = {"files": [p.file.relpath for p in part.pieces]}
    stats = {"part": name, **where, **stats}
    stats["columns"] = [f"{f.name}: {f.type}" for f in schema]  # (names and types)
    if all_uids is not None:
        write_part_uids(fs, uids_path, np.concatenate(all_uids), uid_buckets)
    atomic_write_json(fs, stats_path, stats)  # written last: marks the part complete
    return stats, counts


def _part_tables(part: Part, step: MatchStep, all_uids: list[np.ndarray] | None):
    """Yield (rows, their uids, where they come from) of a part, checked, to be matched.

    A pack's files are matched together, as one table: one kernel call (one device call
    on the gpu backend) and one count array for the part. A one-file part comes in tables
    of bounded size (a CSV/TSV file of any size is read as a stream). ``all_uids`` (unless
    None) gets the uids of every row, matched or not, for the pool-wide id check.
    """
    if len(part.pieces) == 1:
        piece = part.pieces[0]
        for row, table in piece_tables(piece, None, step.text_column, step.id_column):
            uids, sorted_uids = step.uids(table, piece.file.relpath, row, piece.file.path)
            if all_uids is not None:
                all_uids.append(sorted_uids)
            yield table, uids, piece.file.path
        return
    tables, uids = [], []
    for piece in part.pieces:
        table = read_piece(piece, text_column=step.text_column, id_column=step.id_column)
        if tables and not table.schema.equals(tables[0].schema):
            # (The files had one schema when the run packed them: one was replaced since.)
            raise CurateError(
                f"{piece.file.path} changed during the run: its columns are no longer those "
                f"of {part.pieces[0].file.path}, packed with it; run again on the files as "
                f"they are (with {OVERWRITE})"
            )
        u, sorted_u = step.uids(table, piece.file.relpath, piece.row_start, piece.file.path)
        tables.append(table)
        uids.append(u)
        if all_uids is not None:
            all_uids.append(sorted_u)
    yield pa.concat_tables(tables), np.concatenate(uids), part.pieces[0].file.path


def _add_stats(total: dict, more: dict) -> dict:
    """Stats of two batches of a part: the counts summed, the rest (the text column) kept."""
    if not total:
        return dict(more)
    return {k: total[k] + v if isinstance(v, int) else total[k] for k, v in more.items()}


def _balance_task(
    src: str, name: str, step: BalanceStep, out: str, resume: bool, compression: str = "zstd",
    rows: int | None = None,
):  # fmt: skip
    fs, _ = fsspec.core.url_to_fs(out)
    data_path = f"{out}/{CURATED}/{name}.parquet"
    stats_path = f"{out}/{CURATED}/_parts/{name}.json"
    if resume and (done := _finished_part(fs, data_path, stats_path, step.p.shape[0])):
        return done
    sfs, _ = fsspec.core.url_to_fs(src)
    stats: dict = {}
    counts = None
    with sfs.open(src, "rb") as fh, atomic_parquet_writer(fs, data_path, compression) as write:
        # Row groups of about a part's size at a time: memory stays bounded whatever the
        # size of the matched part (a CSV file of any size is one part).
        for table in _matched_tables(fh, src, rows=rows):
            try:
                kept, batch_stats, batch_counts = step.run(table)
            except ValueError as exc:  # (an entry id past the counts' end, for one)
                raise CurateError(f"the matched part {src}: {exc} (match again)") from None
            write(kept)
            stats = _add_stats(stats, batch_stats)
            counts = batch_counts if counts is None else np.add(counts, batch_counts, out=counts)
    # (From the summed units, so the float is the one a single table would give.)
    stats["expected"] = stats["expected_units"] / EXPECTED_UNITS_PER_ROW
    stats = {"part": name, **stats}
    atomic_write_json(fs, stats_path, stats)  # written last: marks the part complete
    return stats, counts


def _matched_file(fh, src: str, rows: int | None = None) -> tuple[pq.ParquetFile, list[int]]:
    """A matched (or curated) part's ParquetFile and the rows of its row groups; ``rows``:
    how many its ``_SUCCESS`` lists (a part replaced since, by a file that reads, is
    refused rather than balanced)."""
    try:
        pf = pq.ParquetFile(fh)
        groups = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
    except (pa.ArrowInvalid, OSError) as exc:
        raise cannot_read(f"the matched part {src}", exc, hint="match again") from None
    if rows is not None and sum(groups) != rows:
        raise CurateError(
            f"the matched part {src} holds {sum(groups):,} rows, {MATCHED}/{SUCCESS} says "
            f"{rows:,}: it changed since it was matched (match again)"
        )
    schema = pf.schema_arrow
    uid = schema.field("uid").type if "uid" in schema.names else None
    ids = schema.field("entry_ids").type if "entry_ids" in schema.names else None
    listed = pa.types.is_list(ids) or pa.types.is_large_list(ids)  # (large: 2^31 ids or more)
    if uid != pa.uint64() or not (listed and ids.value_type == pa.int32()):
        raise CurateError(
            f"the matched part {src} has no uid (uint64) and entry_ids (list<int32>) columns "
            "as gpu-curate match writes them (match again)"
        )
    return pf, groups


def _matched_tables(fh, src: str, columns: list[str] | None = None, rows: int | None = None):
    """A matched (or curated) part's rows, or ``columns`` of them, as tables of whole row
    groups of about PART_ROWS rows (``rows``: as :func:`_matched_file`)."""
    pf, groups = _matched_file(fh, src, rows)
    try:
        for run in row_group_runs(groups, PART_ROWS):
            yield pf.read_row_groups(run, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise cannot_read(f"the matched part {src}", exc, hint="match again") from None


def _check_matched_parts(client, parts: list[tuple[str, int]]) -> None:
    """Refuse, from their footers, matched parts ((path, rows its _SUCCESS lists) each) that
    do not read or hold other rows: read by tasks on the cluster."""
    _in_tasks(client, _parts_read, parts)


def _parts_read(parts: list[tuple[str, int]]) -> list[int]:
    """The rows of each matched part, checked (:func:`_matched_file`)."""
    found = []
    for src, rows in parts:
        fs, _ = fsspec.core.url_to_fs(src)
        with fs.open(src, "rb") as fh:
            found.append(sum(_matched_file(fh, src, rows)[1]))
    return found


# Files a task reads at planning (their layouts, their footers): a pool of 100k small files
# is some 400 tasks, not 100k.
_FILES_A_TASK = 256


# What a run stopped by its cluster (see cluster.gathered) leaves, and how to go on.
_BEFORE_WRITING = "nothing was written: run the same command again"
_PARTS_KEPT = f"the finished parts are kept; run the same command with {RESUME} to continue"


def _in_tasks(client, read: Callable[..., list], items: list, *args) -> list:
    """``read(batch, *args)`` of ``items``, :data:`_FILES_A_TASK` a task on the cluster,
    their results in the order of ``items``: on a cluster of many nodes the client alone
    would fetch every file."""
    n = _FILES_A_TASK
    batches = [items[i : i + n] for i in range(0, len(items), n)]
    tasks = [dask.delayed(read, pure=False)(batch, *args) for batch in batches]
    found = gathered(client, client.compute(tasks, optimize_graph=False), _BEFORE_WRITING)
    return [r for got in found for r in got]


def _merge(*results: tuple) -> tuple[list[dict], np.ndarray]:
    """(stats of every part in order, summed entry counts) of part results or earlier merges."""
    stats = [s for st, _ in results for s in (st if isinstance(st, list) else [st])]
    return stats, add_counts(*(c for _, c in results))


def _compute(client, results: list, n_entries: int, opts: Options):
    """Run the part tasks; return their stats and the tree-summed entry counts."""
    if not results:
        return [], np.zeros(n_entries, dtype=np.int64)
    # optimize_graph=False: graph optimization would fuse each part task into the tree's
    # first merge under a new key; kept apart, each part is one task of the progress bar.
    future = client.compute(tree_reduce(results, _merge), optimize_graph=False)
    if not opts.quiet and sys.stdout is not None:  # (None: a closed stdout, `>&-`)
        # (Redrawn ten times a second on a terminal; into a log file or a pipe, every 5 s:
        # each redraw is another line's worth of bytes there. The scheduler is still asked
        # ten times a second: asked every 5 s, a stage's end was seen only at the next tick,
        # and every stage took up to 5 s longer than its work.)
        _progress(future, 0.0 if _on_terminal() else _LOG_REDRAW_S)
        opts.echo("")
    stats, total = gathered(client, future, _PARTS_KEPT)
    stats = stats if isinstance(stats, list) else [stats]  # (a single part is no merge)
    return stats, np.asarray(total, dtype=np.int64)


# Seconds between two redraws of a stage's bar where stdout is no terminal.
_LOG_REDRAW_S = 5.0


def _progress(future, every: float) -> None:
    """Distributed's text progress bar of ``future`` (blocks until it is done), polled ten
    times a second but redrawn at most every ``every`` seconds (and at its end)."""
    from distributed.diagnostics.progressbar import TextProgressBar

    class Bar(TextProgressBar):
        _drawn = -math.inf

        def _draw_bar(self, remaining, all, **kwargs):
            now = time.monotonic()
            if kwargs.get("status") in ("finished", "error") or now - self._drawn >= every:
                self._drawn = now
                super()._draw_bar(remaining, all, **kwargs)

    try:
        Bar([future], interval="100ms")
    except KeyboardInterrupt:
        # (Ctrl-C leaves the bar's line unfinished: end it, so that the one line that
        # says so starts a line of its own rather than following the bar's.)
        try:
            sys.stdout.write("\n")
            sys.stdout.flush()
        except (AttributeError, ValueError, OSError):
            pass
        raise


def _on_terminal() -> bool:
    """Whether stdout redraws a line in place: a terminal, or a Jupyter notebook's cell."""
    from distributed.utils import is_kernel

    try:
        return sys.stdout.isatty() or is_kernel()
    except (AttributeError, ValueError):  # (a replaced or closed stdout)
        return False


def _plan(
    client, files: list[InputFile], opts: Options, step: MatchStep | None = None
) -> list[Part]:
    """The run's parts (:func:`~gpu_curate.io.plan_parts`).

    A big TSV, CSV or JSON Lines file is cut into ranges of about ``partition_rows`` rows
    (:mod:`~gpu_curate.line_ranges`), whose rows are counted by tasks on the cluster: a
    row's uid needs its row number. Those of a JSON Lines file also type its columns,
    which must be typed as its whole read types them: where they cannot be, the file is
    one part, read as before (:func:`~gpu_curate.io.json_ranges_schema`). Small CSV/TSV
    files are packed by their columns, read from their heads, and small JSON Lines files
    by their columns and types, read whole by tasks on the cluster. The columns of these,
    of every CSV/TSV file (from its head), of the JSON Lines files cut into ranges and of
    the Parquet files (from their footers) are checked (``step``'s
    :meth:`~gpu_curate.steps.MatchStep.check_columns`); a big JSON Lines file read whole is
    checked by its task."""
    target = opts.partition_rows or RANGE_ROWS
    by_path = {f.path: f for f in files}
    cuts = {
        f.path: list(itertools.pairwise(c))
        for f in files
        if can_cut(f) and len(c := line_cuts(f.path, f.size, target)) > 2
    }
    ranges = _cut(client, by_path, cuts, opts) if cuts else {}
    small = [f for f in files if f.path not in ranges and packs_text(f, opts.partition_rows)]
    # (The head of every CSV/TSV file, big or compressed too: its columns are checked before
    # any part is matched, and the small ones are packed by them.)
    schemas = text_schemas(files, opts.text_column, opts.id_column)
    schemas.update(_json_layouts(client, [f for f in small if f.format == "jsonl"], opts))
    check = step.check_columns if step is not None else None
    if check is not None:
        for path, (_, schema) in ranges.items():
            if schema is not None:  # (a JSON Lines file cut into ranges: its typed columns)
                check(schema, path)
    return plan_parts(files, opts.partition_rows, ranges, schemas, check)


def _json_layouts(client, files: list[InputFile], opts: Options) -> dict:
    """{path: (columns, rows)} of small JSON Lines files (:func:`~gpu_curate.io.json_layout`),
    read whole by tasks on the cluster (each is read again by its part's task: on many
    nodes the client alone would fetch them all, twice the pool's bytes)."""
    if not files:
        return {}
    _say(opts, f"reading the columns of {counted(len(files), 'small JSON Lines file')}")
    found = _in_tasks(client, _layouts_of, files, opts.text_column, opts.id_column)
    return {f.path: layout for f, layout in zip(files, found, strict=True)}


def _layouts_of(files: list[InputFile], text_column: str | None, id_column: str | None):
    return [json_layout(f, text_column, id_column) for f in files]


def _cut(client, by_path: dict[str, InputFile], cuts: dict, opts: Options) -> dict:
    """{path: (ranges of (byte_start, byte_end, rows), schema)} of the files cut at
    ``cuts`` ({path: spans}), their rows counted by tasks on the cluster."""
    jobs = [(path, a, b) for path, spans in cuts.items() for a, b in spans]
    files_cut = counted(len(cuts), "big text file")
    _say(opts, f"counting the rows of {files_cut}, in {len(jobs)} ranges")
    count = {"tsv": count_rows, "csv": count_csv_rows, "jsonl": json_range_types}
    tasks = [dask.delayed(count[by_path[p].format], pure=False)(p, a, b) for p, a, b in jobs]
    found = iter(gathered(client, client.compute(tasks, optimize_graph=False), _BEFORE_WRITING))
    ranges = {}
    for path, spans in cuts.items():
        f, layouts = by_path[path], [next(found) for _ in spans]
        schema = None
        if f.format == "jsonl":
            schema = json_ranges_schema([types for _, types in layouts], opts.text_column)
            if schema is None:
                continue  # (read whole, or as one stream that finds it so again)
            cut = [(a, b, n) for (a, b), (n, _) in zip(spans, layouts, strict=True)]
        else:
            if f.format == "csv":
                cut = csv_ranges(spans, layouts)
            else:
                cut = [(a, b, n) for (a, b), n in zip(spans, layouts, strict=True)]
            if has_header(f, opts.text_column, opts.id_column):
                cut[0] = (cut[0][0], cut[0][1], cut[0][2] - 1)  # (the header is no row)
        ranges[path] = (_rows_in_each(cut), schema)
    return ranges


def _rows_in_each(ranges: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """``ranges`` (byte_start, byte_end, rows) with each range of no row (empty lines only)
    joined to the range before it (the first: to the one after it): Arrow cannot read a
    header-less TSV range of no row (it finds no columns).

    Examples
    --------
    >>> _rows_in_each([(0, 10, 0), (10, 20, 3), (20, 30, 0), (30, 40, 2)])
    [(0, 30, 3), (30, 40, 2)]
    >>> _rows_in_each([(0, 10, 0), (10, 20, 0)])
    [(0, 20, 0)]
    """
    joined: list[tuple[int, int, int]] = []
    start = None  # (the start of the leading ranges of no row)
    for a, b, rows in ranges:
        if rows == 0 and joined:
            joined[-1] = (joined[-1][0], b, joined[-1][2])
        elif rows == 0:
            start = a if start is None else start
        else:
            joined.append((a if start is None else start, b, rows))
            start = None
    return joined or [(ranges[0][0], ranges[-1][1], 0)]


def _resumed(fs, folder: str, opts: Options) -> str:
    """What a resume finds of a stage: ", N finished earlier" (a finished part whose file
    no longer reads is redone all the same)."""
    if not opts.resume:
        return ""
    n = finished_parts(fs, folder)
    return f", {n:,} finished earlier" if n else ""


def _plan_digest(parts: list[Part]) -> str:
    # (A one-piece part is written as earlier versions wrote a part: their runs resume.)
    plan = [
        [[x.file.relpath, x.row_start, x.row_end] for x in p.pieces]
        if len(p.pieces) > 1
        else [p.pieces[0].file.relpath, p.pieces[0].row_start, p.pieces[0].row_end]
        for p in parts
    ]
    return hashlib.sha256(json.dumps(plan).encode()).hexdigest()


def _success(fs, folder: str, stats: list[dict], rows_key: str) -> None:
    parts = [{"file": f"{s['part']}.parquet", "rows": s[rows_key]} for s in stats]
    # (A worker lost mid-part, its part done again by another, left its temporary file.)
    remove_temporaries(fs, folder)
    # The parts' renames reach the disk before the mark that lists them: after a crash of
    # the machine, a _SUCCESS never names a part that is missing (each part's bytes were
    # on the disk before its rename).
    sync_folder(fs, f"{folder}/_parts")
    sync_folder(fs, folder)
    atomic_write_json(
        fs, f"{folder}/{SUCCESS}", {"parts": parts, "rows": sum(p["rows"] for p in parts)}
    )
    sync_folder(fs, folder)


def _sum(stats: list[dict], key: str) -> int:
    return int(sum(s[key] for s in stats))


def _expected_rows(stats: list[dict]) -> float:
    """The expected curated size: exact sums of the parts' units, the same for any cut of
    the pool (the curated parts of a balance begun by an earlier version, then resumed,
    carry only their float)."""
    if all("expected_units" in s for s in stats):
        return sum(s["expected_units"] for s in stats) / EXPECTED_UNITS_PER_ROW
    return float(sum(s["expected"] for s in stats))


def _text_columns(stats: list[dict]) -> dict[str, int]:
    """{text column: number of input files matched on it}, most used first."""
    files: dict[str, set] = {}
    for s in stats:
        if "text_column" in s:  # (a part a resumed run's earlier version wrote may lack it)
            files.setdefault(s["text_column"], set()).update(s.get("files", [s.get("file")]))
    return dict(sorted(((c, len(f)) for c, f in files.items()), key=lambda cf: -cf[1]))


# --------------------------------------------------------------------------- stages


def match_stage(
    client, info: ClusterInfo, step: MatchStep, parts: list[Part], files: list[InputFile], fs,
    out, opts,
) -> dict:  # fmt: skip
    """Match ``parts`` (:func:`_plan` of ``files``, from :func:`~gpu_curate.io.discover`) with
    ``step``; write matched/ and the entry counts. Returns report figures."""
    t0 = time.perf_counter()
    metadata = step.metadata
    manifest = {
        "inputs": [f.path for f in files],
        "metadata_sha256": metadata.fingerprint,
        "text_column": opts.text_column,
        "id_column": opts.id_column,
        "keep_unmatched": opts.keep_unmatched,
        "partition_rows": opts.partition_rows,
        # The parts' codec: a resume with another would mix two in one dataset.
        "compression": opts.compression,
        # A file changed under the same path (or read in another format) would leave its
        # finished parts stale.
        "files": [[f.relpath, f.size, f.stamp, f.format] for f in files],
        # Finished parts are found by number: a resume must cut the files the same way
        # (a run begun by a version that cut them otherwise is refused, not mixed).
        "parts_sha256": _plan_digest(parts),
    }
    claim(fs, out, MATCH_MANIFEST, manifest, resume=opts.resume)
    _say(
        opts,
        f"matching {counted(len(parts), 'part')} of {counted(len(files), 'file')}"
        + _resumed(fs, f"{out}/{MATCHED}", opts),
    )
    fs.makedirs(f"{out}/{MATCHED}/_parts", exist_ok=True)
    # --id-column: the ids must be unique over the pool. Unless a previous run already
    # checked them (its matched/_SUCCESS is written after the check), each part writes
    # its uids for the cross-part check below.
    checked = opts.resume and fs.exists(f"{out}/{MATCHED}/{SUCCESS}")
    buckets = bucket_count(parts) if opts.id_column is not None and not checked else 0
    if buckets:
        fs.makedirs(f"{out}/{UIDS}", exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(info.threads, 1))
    shared = graph_key(step)
    run = uuid.uuid4().hex[:12]  # (keys of their own: other runs may share the cluster)
    results = [
        dask.delayed(_match_task, pure=False)(
            p,
            shared,
            out,
            opts.resume,
            threads,
            buckets,
            opts.compression,
            len(parts),
            dask_key_name=f"match-{part_name(p.index, len(parts))}-{run}",
        )  # fmt: skip
        for p in parts
    ]
    stats, counts = _compute(client, results, len(metadata), opts)
    text_columns = _text_columns(stats)
    if len(text_columns) > 1 or opts.text_column is None:
        used = ", ".join(f"{c} ({n:,} file{'s' if n > 1 else ''})" for c, n in text_columns.items())
        _say(opts, f"text column{'s' if len(text_columns) > 1 else ''}: {used or '-'}")
    if _sum(stats, "pool_rows") and not _sum(stats, "matched_rows"):
        # (A run that looks like any other: a wrong column, or metadata of another
        # language, is said where it shows.)
        nulls = _sum(stats, "null_texts") + _sum(stats, "empty_texts")
        _say(
            opts,
            f"note: no text matched an entry ({nulls:,} of {_sum(stats, 'pool_rows'):,} rows "
            f"null or empty; texts from {', '.join(text_columns) or '-'}): check "
            f"{option('--text-column')} and the metadata",
        )
    column_sets = list(dict.fromkeys(tuple(s["columns"]) for s in stats if "columns" in s))
    if len(column_sets) > 1:
        # (A reader of the folder that takes one part's schema, as pyarrow's and pandas'
        # do, leaves the other parts' columns null.)
        shown = " and ".join(f"[{', '.join(c)}]" for c in column_sets[:2])
        _say(
            opts,
            f"note: the parts have {len(column_sets)} different sets of columns or column "
            f"types ({shown}"
            f"{', ...' if len(column_sets) > 2 else ''}): read matched/ and curated/ with "
            "a unified schema (README, Output layout)",
        )
    seconds_ids = None
    if buckets:
        t1 = time.perf_counter()
        _say(
            opts,
            f"checking that {opts.id_column!r} is unique over the pool "
            f"({counted(buckets, 'bucket')})",
        )
        check = UidCheck(tuple(parts), out, opts.id_column, opts.text_column, buckets)
        duplicate = find_duplicate(client, check)
        if duplicate is not None:
            raise CurateError(duplicate.message(opts.id_column))
        seconds_ids = round(time.perf_counter() - t1, 3)
    _success(fs, f"{out}/{MATCHED}", stats, "rows_written")
    if opts.id_column is not None and fs.exists(f"{out}/{WORK}"):
        fs.rm(f"{out}/{WORK}", recursive=True)  # the uid files are not needed any more
    atomic_write_parquet(fs, f"{out}/entry_counts.parquet", counts_table(metadata, counts))
    atomic_write_bytes(fs, f"{out}/entry_counts.json", counts_json(metadata, counts))
    return {
        "pool_rows": _sum(stats, "pool_rows"),
        "matched_rows": _sum(stats, "matched_rows"),
        "null_texts": _sum(stats, "null_texts"),
        "empty_texts": _sum(stats, "empty_texts"),
        "matches": _sum(stats, "matches"),
        "input_files": len(files),
        "parts": len(parts),
        "metadata_entries": len(metadata),
        "metadata_sha256": metadata.fingerprint,
        "entries_matched": int((counts > 0).sum()),
        "text_columns": text_columns,
        "column_sets": len(column_sets),
        "seconds_match": round(time.perf_counter() - t0, 3),
        **({"seconds_id_check": seconds_ids} if seconds_ids is not None else {}),
        "_counts": counts,
    }


def balance_stage(
    client, info: ClusterInfo, matched_dir: str, counts: np.ndarray, t: float, seed: int, fs, out,
    opts,
):  # fmt: skip
    """Balance every matched part into curated/; returns report figures."""
    t0 = time.perf_counter()
    mfs, mpath = fsspec.core.url_to_fs(matched_dir)
    success = f"{mpath.rstrip('/')}/{MATCHED}/{SUCCESS}"
    if not mfs.exists(success):
        raise CurateError(
            f"{matched_dir} has no complete matched dataset ({MATCHED}/{SUCCESS} missing)"
        )
    parts = success_parts(mfs, f"{mpath.rstrip('/')}/{MATCHED}")
    fs.makedirs(f"{out}/{CURATED}/_parts", exist_ok=True)
    step = BalanceStep(entry_probabilities(counts, t), seed, info.backend)
    shared = graph_key(step)
    run = uuid.uuid4().hex[:12]  # (keys of their own: other runs may share the cluster)
    # Absolute (or a full URL): the tasks may run on workers with another working directory.
    prefix = full_path(mfs, mpath)
    results = [
        dask.delayed(_balance_task, pure=False)(
            f"{prefix}/{MATCHED}/{file}",
            file[: -len(".parquet")],
            shared,
            out,
            opts.resume,
            opts.compression,
            rows,
            dask_key_name=f"balance-{file[: -len('.parquet')]}-{run}",
        )  # fmt: skip
        for file, rows in parts
    ]
    _say(
        opts,
        f"balancing {counted(len(parts), 'part')} (t={t:g}, seed={seed})"
        + _resumed(fs, f"{out}/{CURATED}", opts),
    )
    stats, kept_counts = _compute(client, results, len(counts), opts)
    _success(fs, f"{out}/{CURATED}", stats, "curated_rows")
    return {
        "curated_rows": _sum(stats, "curated_rows"),
        "expected_curated_rows": _expected_rows(stats),
        "head_entries": int((counts >= t).sum()),
        "seconds_balance": round(time.perf_counter() - t0, 3),
        "_kept_counts": kept_counts,
    }


def _finish(fs, out, metadata: Metadata, report: dict, kept_counts, opts: Options) -> dict:
    atomic_write_parquet(
        fs, f"{out}/curated_entry_counts.parquet", counts_table(metadata, kept_counts)
    )
    report = _write_report(fs, out, report)
    _say(
        opts,
        f"pool {report.get('pool_rows', 0):,} rows -> matched {report.get('matched_rows', 0):,}"
        f" -> curated {report['curated_rows']:,} (expected {report['expected_curated_rows']:,.1f})"
        f"; wrote {out}",
    )
    return report


def _write_report(fs, out: str, report: dict) -> dict:
    """Write report.json (its public keys and the version): last, it marks the run complete."""
    report = {k: v for k, v in report.items() if not k.startswith("_")}
    report["version"] = __version__
    sync_folder(fs, out)  # (the count files' renames before the mark of completion)
    atomic_write_json(fs, f"{out}/report.json", report)
    sync_folder(fs, out)
    return report


def _check_local_backend(opts: Options) -> None:
    """Fail before anything is written where the backend cannot run on this machine; a
    ``scheduler``'s workers choose it where they run (:func:`~gpu_curate.cluster.open_client`)."""
    if opts.scheduler is None:
        resolved_name(opts.backend)


def _header(opts: Options, info: ClusterInfo) -> dict:
    why = f" ({info.note})" if info.note else ""
    _say(opts, f"gpu-curate {__version__}: backend {info.backend}{why}, {info.describe()}")
    return {
        "backend": info.backend,
        "workers": info.workers,
        "threads": info.threads,
        "cluster": info.kind,
    }


def _metadata_files(path: str | None) -> list[str]:
    """The metadata file ``path`` (None: the entries came from no file) and its sidecar
    (``metadata build`` writes both), which a folder of the pool may hold: not pool files."""
    if path is None:
        return []
    if "://" in path:  # (a URL: Path would fold its '//')
        head, _, name = path.rpartition("/")
        return [path, f"{head}/{sources_path_for(name).name}"]
    return [path, str(sources_path_for(path))]


def curate(
    inputs: Sequence[str],
    metadata: MetadataLike,
    out: str,
    t: float = 20_000,
    seed: int = 0,
    options: Options | None = None,
    match_only: bool = False,
) -> dict:
    """Run the whole recipe on a pool and write the output layout (README) under ``out``.

    Parameters
    ----------
    inputs
        Files, folders, globs or fsspec URLs of Parquet / JSONL / CSV / TSV files.
    metadata
        A :class:`Metadata`, its entries, or the path of a metadata file.
    out
        Output folder (must be new or empty unless ``options.overwrite``/``resume``).
    t, seed
        Balancing threshold and seed (README, Semantics).
    match_only
        Stop after matching and counting (``gpu-curate match``).

    Returns
    -------
    dict
        The figures written to ``report.json``.

    Examples
    --------
    >>> report = curate(["pool/"], "metadata.json", "out/", t=20_000)  # doctest: +SKIP
    >>> report["curated_rows"]  # doctest: +SKIP
    """
    opts = _checked_options(options)
    t = check_t(t)
    seed = check_seed(seed)
    inputs = _inputs_argument(inputs)
    out = path_argument(out, "out")
    match_only = switch_argument(match_only, "match_only")
    md = Metadata.coerce(metadata)
    _check_local_backend(opts)
    # (Fails on missing inputs before the output is touched.)
    # (Given as a path, or as a Metadata read from one.)
    files = discover(inputs, opts.format, _metadata_files(md.path))
    check_apart(out, [*inputs, *([md.path] if md.path is not None else [])])
    # Refused before the slow start (the cluster, reading every input's columns), and
    # emptied with --overwrite only once the inputs have passed that planning: a mistyped
    # column must not cost the previous result.
    check_out(out, opts.overwrite, opts.resume, MATCH_MANIFEST)
    if opts.resume:  # (--overwrite replaces a run of any t and seed)
        _check_resumable(*fsspec.core.url_to_fs(out), out, t, seed, match_only)
    cluster = open_client(opts.backend, opts.workers, opts.scheduler, opts.processes)
    with cluster as (client, info):
        report = _header(opts, info)
        check_shared(client, info, [f.path for f in files[:1]] + [_existing(out)])
        step = MatchStep(md, opts.text_column, opts.id_column, opts.keep_unmatched, info.backend)
        t0 = time.perf_counter()
        parts = _plan(client, files, opts, step)
        planned = time.perf_counter() - t0
        # (Held until the run ends: no other run resumes or overwrites it meanwhile.)
        with prepare_out(out, opts.overwrite, opts.resume, MATCH_MANIFEST) as (fs, path):
            # (Again, now that it exists: a folder above it may be one that each machine
            # has of its own, as /tmp.)
            check_shared(client, info, [full_path(fs, path)])
            _check_resumable(fs, path, out, t, seed, match_only)  # (again, under the lock)
            report.update(match_stage(client, info, step, parts, files, fs, path, opts))
            # (The match stage's time includes its plan, as it did before the plan moved.)
            report["seconds_match"] = round(report["seconds_match"] + planned, 3)
            counts = report["_counts"]
            if match_only:
                report = _write_report(fs, path, report)
                _say(
                    opts,
                    f"pool {report['pool_rows']:,} rows -> matched "
                    f"{report['matched_rows']:,}; wrote {out}",
                )
                return report
            report.update({"t": t, "seed": seed})
            manifest = balance_manifest(fs, path, counts, t, seed, opts.compression)
            claim(fs, path, BALANCE_MANIFEST, manifest, "balance", resume=opts.resume)
            report.update(balance_stage(client, info, out, counts, t, seed, fs, path, opts))
            return _finish(fs, path, md, report, report["_kept_counts"], opts)


def _existing(path: str) -> str:
    """``path``, or its nearest folder above that exists (a new output folder's)."""
    fs, key = fsspec.core.url_to_fs(path)
    while not fs.exists(key) and key not in ("", "/") and posixpath.dirname(key) != key:
        key = posixpath.dirname(key)
    return full_path(fs, key)


def _check_resumable(fs, path: str, out: str, t: float, seed: int, match_only: bool) -> None:
    """Refuse a resume that would mix runs: a curate with another t or seed, or a match
    in a curate run's folder."""
    path = path.rstrip("/") or "/"
    if not match_only:
        check_balance_settings(fs, path, t, seed)
    elif fs.exists(f"{path}/{BALANCE_MANIFEST}") or fs.exists(f"{path}/{CURATED}"):
        # (A match would rewrite report.json beside a curated/ it does not describe.)
        raise CurateError(
            f"{RESUME}: {out} holds a curate run, which a match (`gpu-curate match`, "
            "match_only=True) would leave half described: continue it as a curate "
            "(`gpu-curate curate --resume`, or curate(..., resume=True))"
        )


def balance_matched(
    matched_dir: str, out: str, t: float, seed: int = 0, options: Options | None = None
) -> dict:
    """Balance an existing matched dataset (``gpu-curate match`` output) with another t or seed.

    Writes the same layout as :func:`curate` without ``matched/``; the pool's entry counts
    are copied from ``matched_dir``.

    Examples
    --------
    >>> balance_matched("out/", "out_t5000/", t=5_000, seed=1)  # doctest: +SKIP
    """
    opts = _checked_options(options)
    t = check_t(t)
    seed = check_seed(seed)
    matched_dir, out = path_argument(matched_dir, "matched_dir"), path_argument(out, "out")
    _check_local_backend(opts)
    # (Held until the run ends: no other run overwrites the matched dataset while it is read.)
    with reading(matched_dir, writes=out):
        return _balance_matched(matched_dir, out, t, seed, opts)


# What a balance copies from its matched dataset's report.json.
_POOL_FIGURES = ("pool_rows", "matched_rows", "null_texts", "empty_texts", "matches",
                 "input_files", "metadata_entries", "metadata_sha256", "entries_matched",
                 "text_columns", "column_sets", "seconds_match")  # fmt: skip


def _balance_matched(matched_dir: str, out: str, t: float, seed: int, opts: Options) -> dict:
    """:func:`balance_matched` once its arguments are checked and its input is locked."""
    mfs, mpath = fsspec.core.url_to_fs(matched_dir)
    mpath = mpath.rstrip("/")
    for check in (run_folder_why, not_matched_why):
        if (why := check(mfs, mpath, matched_dir)) is not None:
            raise CurateError(why)
    if not mfs.exists(f"{mpath}/entry_counts.parquet"):
        raise CurateError(
            f"{matched_dir} is not a complete matched dataset (entry_counts.parquet missing)"
        )
    # (Checked as plan checks them: a balance by counts of other ids would keep rows by
    # other entries' counts, without a word.)
    where = f"{full_path(mfs, mpath)}/entry_counts.parquet"
    counts, entries = counts_by_id(read_counts_table(where, fs=mfs), where)
    md = Metadata(entries.tolist(), source=where)
    table = counts_table(md, counts)
    pool = {}
    if not mfs.exists(f"{mpath}/report.json") and mfs.exists(f"{mpath}/{MATCH_MANIFEST}"):
        # (A curate stopped in its balance stage, or an --overwrite in its emptying: its
        # report's pool figures, which this balance's report copies, are not there.)
        raise CurateError(
            f"{matched_dir} is an interrupted run (report.json missing): finish it with "
            f"{RESUME}, then balance it"
        )
    if mfs.exists(f"{mpath}/report.json"):
        try:
            with mfs.open(f"{mpath}/report.json", "rb") as fh:
                prev = json.load(fh)
            if not isinstance(prev, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as exc:
            raise CurateError(
                f"{full_path(mfs, mpath)}/report.json is damaged ({exc}): run the match again"
            ) from None
        # (Copied into this balance's report and printed. An older run's lacks some.)
        kinds = {"metadata_sha256": str, "text_columns": dict, "seconds_match": (int, float)}
        if wrong := wrong_figure(prev, {k: kinds.get(k, int) for k in _POOL_FIGURES}):
            raise CurateError(
                f"{full_path(mfs, mpath)}/report.json is damaged ({wrong}): run the match again"
            )
        if prev.get("metadata_entries", len(counts)) != len(counts):
            raise CurateError(
                f"{where} holds {len(counts):,} entries, the run's report.json says "
                f"{prev['metadata_entries']:,}: it changed since it was written (match again)"
            )
        pool = {k: prev[k] for k in _POOL_FIGURES if k in prev}
    replaces = check_out(out, opts.overwrite, opts.resume, BALANCE_MANIFEST, keep=matched_dir)
    manifest = balance_manifest(mfs, mpath, counts, t, seed, opts.compression)
    ofs, opath = fsspec.core.url_to_fs(out)
    if opts.resume and ofs.exists(f"{opath.rstrip('/')}/{BALANCE_MANIFEST}"):
        # (Read only, where the manifest is there: a resume of another balance is refused
        # before the cluster starts; again under the lock below.)
        claim(ofs, opath.rstrip("/"), BALANCE_MANIFEST, manifest, "balance", resume=True)
    cluster = open_client(opts.backend, opts.workers, opts.scheduler, opts.processes)
    with cluster as (client, info):
        report = _header(opts, info)
        check_shared(client, info, [full_path(mfs, mpath), _existing(out)])
        if opts.overwrite and replaces:
            # (What --overwrite would replace stays until the matched parts have been seen
            # to read, each with the rows matched/_SUCCESS lists.)
            prefix = f"{full_path(mfs, mpath)}/{MATCHED}"
            parts = success_parts(mfs, f"{mpath}/{MATCHED}")
            _check_matched_parts(client, [(f"{prefix}/{f}", rows) for f, rows in parts])
        folder = prepare_out(out, opts.overwrite, opts.resume, BALANCE_MANIFEST, keep=matched_dir)
        with folder as (fs, path):  # (held until the run ends)
            check_shared(client, info, [full_path(fs, path)])  # (as curate's)
            # Claimed before anything is written: a resume with another t, seed, matched
            # dataset or codec is refused before it replaces the counts beside the finished
            # parts.
            claim(fs, path, BALANCE_MANIFEST, manifest, "balance", resume=opts.resume)
            report.update(pool)
            report.update({"t": t, "seed": seed, "matched_dir": full_path(mfs, mpath)})
            atomic_write_parquet(fs, f"{path}/entry_counts.parquet", table)
            atomic_write_bytes(fs, f"{path}/entry_counts.json", counts_json(md, counts))
            report.update(balance_stage(client, info, matched_dir, counts, t, seed, fs, path, opts))
            return _finish(fs, path, md, report, report["_kept_counts"], opts)
