"""The ``gpu-curate`` command line.

Each subcommand is a thin shell over the Python API: it parses options, calls one
function and prints a summary. Errors derived from :class:`CurateError` (and click's own)
become one line on stderr and exit code 2 (1 for unexpected errors; 130 for Ctrl-C), unless
``--debug``.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import signal
import sys
import threading

import click
from pyarrow import ArrowException

from .cli_options import backend_option, compression_option, seed_number, seed_option, threshold
from .errors import CurateError, Interrupted, spelled


class _Group(click.Group):
    # Subcommands defined in their own modules, imported only when named (or listed by
    # --help): the `metadata` group's package imports pandas (~0.2 s), which the other
    # commands' start does not need.
    lazy_commands = {
        "plan": "gpu_curate.planning:plan_command",
        "metadata": "gpu_curate.build_metadata.commands:metadata",
        "report": "gpu_curate.report:report_command",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands:
            # An unknown name loads them all: click's "Did you mean" hint for a mistyped
            # command is drawn from self.commands.
            wanted = [name] if name in self.lazy_commands else list(self.lazy_commands)
            for lazy in wanted:
                module, attr = self.lazy_commands[lazy].split(":")
                self.add_command(getattr(importlib.import_module(module), attr), name=lazy)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        logging.getLogger("asyncio").addFilter(_asyncio_noise)
        if not getattr(sys.unraisablehook, "quiet_interrupts", False):
            sys.unraisablehook = _quiet_interrupts(sys.unraisablehook)
        signals: list[int] = []
        _STOPPED.clear()  # (a run before this one in the process, a notebook's, stopped)
        flags = list(ctx.args)  # (the subcommand's: ctx holds them until it runs)
        with _signals_as_interrupts(signals), spelled("cli"):
            return self._invoke(ctx, signals, flags)

    def _invoke(self, ctx: click.Context, signals: list[int], flags: list[str]):
        try:
            return super().invoke(ctx)
        except (CurateError, OSError, ImportError, ArrowException) as exc:
            # (ImportError: an optional package a URL needs, e.g. fsspec's "Install s3fs to
            # access S3". ArrowException: a damaged file a reader did not name, as a line
            # rather than a traceback.)
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if signals:
                # (The stop's consequence: a Ctrl-C inside NumPy's import is its
                # "numpy._core.multiarray failed to import".)
                self._stopped(signals, KeyboardInterrupt())
            message = str(exc)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                message = _full_disk(exc, ctx.invoked_subcommand, flags)
            click.echo(f"gpu-curate: error: {message}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            self._stopped(signals, exc)

    @staticmethod
    def _stopped(signals: list[int], exc: KeyboardInterrupt):
        _STOPPED.set()  # (what Dask and asyncio say of the run's remains is noise now)
        # (A plain one came before the run wrote anything, or after it was done.)
        hint = f"; {exc.hint}" if isinstance(exc, Interrupted) else ""
        signum = signals[0] if signals else signal.SIGINT
        word = "terminated" if signum == signal.SIGTERM else "interrupted"
        click.echo(f"gpu-curate: {word}{hint}", err=True)
        sys.exit(128 + signum)


def _full_disk(exc: OSError, command: str | None, flags: list[str]) -> str:
    """The line for a full disk or quota (``exc``): the file, and how to go on (a curate,
    match or balance where it stopped, with --resume)."""
    what = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
    if exc.filename:
        what += f" ({exc.filename})"
    if command not in ("curate", "match", "balance") or getattr(exc, "run_folder_undone", False):
        # (Not a run, or one that finished no part: its folder was left as it was found.)
        return f"{what}: free some space, then run the same command again"
    instead = " in place of --overwrite" if "--overwrite" in flags else ""
    return (
        f"{what}: free some space, then run the same command with --resume{instead} (the "
        "parts finished so far are kept)"
    )


@contextlib.contextmanager
def _signals_as_interrupts(signals: list[int]):
    """SIGTERM (a batch scheduler's stop, ``kill``) raised as Ctrl-C is, in the main thread:
    the run stops the same way and says how to go on (it died with Python's default, with
    no word); ``signals`` records it and each Ctrl-C (SIGINT), for the message, the exit
    status (143 or 130), and an error that a stop caused."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signals.append(signum)
        _STOPPED.set()  # (the run's remains may be collected before it says it stopped)
        raise KeyboardInterrupt

    # (Ctrl-C's handler replaced only where it is Python's own: an ignored SIGINT, a
    # process started with `nohup ... &`, stays ignored.)
    caught = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        caught.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, stop) for signum in caught}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# Set once a run is stopped (Ctrl-C, SIGTERM) and has said so: a cluster cut short in its
# start or its first scatter leaves tasks whose errors asyncio reports when they are
# collected ("Task exception was never retrieved ... Nanny failed to start"), and
# distributed's exit callback fails on it ("Exception ignored in atexit callback").
_STOPPED = threading.Event()


def _quiet_interrupts(hook):
    """``hook`` (a :data:`sys.unraisablehook`), but silent on a KeyboardInterrupt.

    Ctrl-C as a run ends may land in a finalizer (Dask's ``Future.__del__``), where Python
    cannot raise it: it printed "Exception ignored in ..." and a piece of traceback after
    the run's own lines, and the run went on to its end all the same. Once a run has said
    that it stopped (:data:`_STOPPED`), nothing more is printed.
    """

    def quiet(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) or _STOPPED.is_set()):
            hook(unraisable)

    quiet.quiet_interrupts = True
    return quiet


def _asyncio_noise(record: logging.LogRecord) -> bool:
    """False for any of the asyncio logger's records once a run has said that it stopped
    (:data:`_STOPPED`): they are its remains (the cluster's own noise at any time is
    dropped by ``cluster.dask_noise``)."""
    return not _STOPPED.is_set()


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="gpu-curate")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """MetaCLIP-style curation of image-text pools on GPU or CPU dataframes."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# Where and how a run goes: options of curate, match and balance alike.
_RUN_OPTIONS = [
    click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help="CPU: threads of the local worker, or worker processes with --processes; "
        "GPU: workers, one per GPU (default: one per core / per visible GPU). A local "
        "cluster's: not with --scheduler.",
    ),
    click.option(
        "--processes",
        "use_processes",
        is_flag=True,
        help="CPU: worker processes instead of threads in one process (a local cluster's: "
        "not with --scheduler).",
    ),
    click.option(
        "--scheduler",
        default=None,
        help="Address of an existing Dask scheduler (multi-node runs).",
    ),
]
_QUIET = click.option("--quiet", is_flag=True, help="Print nothing but errors.")
_FOLDER_OPTIONS = [
    _QUIET,
    click.option(
        "--overwrite",
        is_flag=True,
        help="Replace an earlier run's output folder (never one holding other files).",
    ),
    click.option("--resume", is_flag=True, help="Continue an interrupted run in --out."),
]


def _with(options):
    def apply(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return apply


def _common(f):
    """Options shared by curate and match."""
    opts = [
        click.option(
            "--metadata",
            "metadata_path",
            required=True,
            type=click.Path(dir_okay=False),
            help="MetaCLIP metadata: a JSON list of strings (or .txt, one per line).",
        ),
        click.option("--out", required=True, help="Output folder (local path or fsspec URL)."),
        click.option(
            "--text-column",
            default=None,
            help="Text column (default: the first of TEXT, text, caption, alt_text; f0 in a "
            "CSV/TSV file without a header).",
        ),
        click.option(
            "--id-column",
            default=None,
            help="Unique id column; uids are its hashed values (default: file + row).",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["parquet", "jsonl", "csv", "tsv"]),
            default=None,
            help="Format of the input files whose extension names none (default: by "
            "extension; a file named on its own is read in it).",
        ),
        backend_option(),
        *_RUN_OPTIONS,
        click.option(
            "--partition-rows",
            type=click.IntRange(min=1),
            default=None,
            help="Rows per part: larger Parquet files are cut every this many rows, "
            "smaller ones of one schema packed up to it, and uncompressed CSV and TSV files "
            "(JSON Lines files of more than 512 MiB) cut into ranges of about this many rows "
            "(default: about 1M rows in whole row groups or lines; files of up to 250k rows "
            "packed up to 250k).",
        ),
        compression_option(),
        click.option(
            "--keep-unmatched",
            is_flag=True,
            help="Keep texts that match no entry in matched/ (with empty entry_ids); "
            "balancing never keeps them.",
        ),
        *_FOLDER_OPTIONS,
    ]
    return _with(opts)(f)


def _options(kw: dict):
    from .pipeline import Options

    return Options(
        text_column=kw["text_column"], id_column=kw["id_column"], backend=kw["backend"],
        workers=kw["workers"], scheduler=kw["scheduler"], processes=kw["use_processes"],
        quiet=kw["quiet"], overwrite=kw["overwrite"], resume=kw["resume"],
        keep_unmatched=kw["keep_unmatched"], partition_rows=kw["partition_rows"],
        format=kw["fmt"], compression=kw["compression"], echo=click.echo,
    )  # fmt: skip


def _check_flags(kw: dict) -> None:
    if kw["overwrite"] and kw["resume"]:
        raise click.UsageError("--overwrite and --resume exclude each other")


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@_common
@click.option("--t", "t", default="20000", show_default=True, help="Balancing threshold t > 0.")
@seed_option()
def curate(inputs, metadata_path, out, t, seed, **kw):
    """Match INPUT... against the metadata, count entries and balance: the whole recipe."""
    from .pipeline import curate as run

    _check_flags(kw)
    run(inputs, metadata_path, out, threshold(t), seed_number(seed), _options(kw))


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@_common
def match(inputs, metadata_path, out, **kw):
    """Match INPUT... and count entries; write the matched dataset for `balance` and `plan`."""
    from .pipeline import curate as run

    _check_flags(kw)
    run(inputs, metadata_path, out, options=_options(kw), match_only=True)


@main.command()
@click.argument("matched_dir")
@click.option("--t", "t", required=True, help="Balancing threshold t > 0.")
@seed_option()
@click.option("--out", required=True, help="Output folder (local path or fsspec URL).")
@backend_option()
@_with(_RUN_OPTIONS)
@_with(_FOLDER_OPTIONS)
@compression_option()
def balance(matched_dir, t, seed, out, **kw):
    """Balance MATCHED_DIR (a `match` or `curate` output) with a threshold t and a seed."""
    from .pipeline import Options, balance_matched

    _check_flags(kw)
    opts = Options(
        backend=kw["backend"], workers=kw["workers"], scheduler=kw["scheduler"],
        processes=kw["use_processes"], quiet=kw["quiet"], overwrite=kw["overwrite"],
        resume=kw["resume"], compression=kw["compression"], echo=click.echo,
    )  # fmt: skip
    balance_matched(matched_dir, out, threshold(t), seed_number(seed), opts)


@main.command()
@click.option("--out", default="gpu-curate-demo", show_default=True, help="Output folder.")
@click.option(
    "--rows",
    default=200_000,
    show_default=True,
    type=click.IntRange(min=100),
    help="Rows of the synthetic pool.",
)
@click.option("--t", "t", default=None, help="Threshold (default: rows // 1000, at least 1).")
@seed_option(help="Integer seed of the synthetic pool and of the draws.")
@backend_option()
@click.option("--overwrite", is_flag=True, help="Replace the output folder's contents.")
@_QUIET
def demo(out, rows, t, seed, backend, overwrite, quiet):
    """Generate a synthetic long-tailed pool and its metadata, curate it, print a summary."""
    from .demo import run_demo

    t = threshold(t if t is not None else max(1, rows // 1000))
    run_demo(out, rows, t, seed_number(seed), backend, overwrite, quiet, click.echo)


if __name__ == "__main__":  # python -m gpu_curate.cli
    main(prog_name="gpu-curate")
