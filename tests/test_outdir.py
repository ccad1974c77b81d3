"""The output folder's lock (``outdir``): runs reading a folder or writing below it.

A run writing into a folder holds an exclusive ``flock`` on its ``.gpu-curate.lock``, a
command reading a run folder (``balance``, ``plan``, the sampler) a shared one. The other
runs here are other processes, or a second open of the lock file in this process (a flock
lock belongs to an open file, not to a process: it conflicts the same way).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from gpu_curate import outdir, pipeline, planning
from gpu_curate.cli import main
from gpu_curate.errors import CurateError
from gpu_curate.outdir import LOCK, MATCH_MANIFEST, check_out, prepare_out
from gpu_curate.sampler import BalancedSampler

# Holds the lock of a folder in another process until its stdin closes: "writes" as a
# run that writes into it (a file inside, like a run's first part), "reads" as `balance`.
HOLDER = """
import sys
from gpu_curate import outdir
folder, kind = sys.argv[1:]
if kind in ("writes", "resumes"):
    lock = outdir.prepare_out(folder, False, kind == "resumes", outdir.MATCH_MANIFEST)
else:
    lock = outdir.reading(folder)
with lock:
    if kind == "writes":
        open(folder + "/part-00000.parquet", "w").close()
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def held(folder: Path, kind: str) -> Iterator[subprocess.Popen]:
    """Another process that holds ``folder``'s lock (``kind``: "writes", "resumes" (a run
    writing it again) or "reads")."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), kind],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        if proc.stdout.readline() != "held\n":
            proc.wait(timeout=60)
            pytest.fail(f"the holder of {folder} failed: {proc.stderr.read()}")
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def overwrite(folder: Path, manifest: str = MATCH_MANIFEST) -> None:
    with prepare_out(str(folder), True, False, manifest):
        pass


def refused(folder: Path, *needles: str, resume: bool = False) -> str:
    """The one-line error of an ``--overwrite`` (or ``--resume``) of ``folder``."""
    with (
        pytest.raises(CurateError) as caught,
        prepare_out(str(folder), not resume, resume, MATCH_MANIFEST),
    ):
        pass
    msg = str(caught.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def cli(*args) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exit_code != 0:
        tb = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(f"gpu-curate {args} exited {result.exit_code}:\n{result.output}\n{tb}")


@pytest.fixture
def matched(tmp_path) -> Path:
    """A `gpu-curate match` output at tmp_path/runs/matched (tmp_path/runs holds it)."""
    (tmp_path / "pool").mkdir()
    texts = [f"a dog {i}" if i % 3 else f"a cat {i}" for i in range(30)]
    pq.write_table(pa.table({"TEXT": texts}), tmp_path / "pool" / "p.parquet")
    (tmp_path / "metadata.json").write_text(json.dumps(["dog", "cat"]))
    out = tmp_path / "runs" / "matched"
    cli("match", tmp_path / "pool", "--metadata", tmp_path / "metadata.json", "--out", out,
        "--partition-rows", 10, "--workers", 1, "--quiet")  # fmt: skip
    return out


# ---------------------------------------------------------------- 1. a folder written below


def test_overwrite_refuses_a_folder_holding_one_another_run_writes(tmp_path):
    top = tmp_path / "top"
    nested = top / "a" / "run"
    nested.mkdir(parents=True)
    (top / "keep.txt").write_text("the old run's file")
    with held(nested, "writes") as proc:
        refused(
            top, f"overwrite=True would delete {top}/a/run, which another gpu-curate run (pid "
            f"{proc.pid} on {socket.gethostname()}", f"is writing (it holds {nested / LOCK})",
        )  # fmt: skip
        # Refused before anything was deleted.
        assert (top / "keep.txt").is_file() and (nested / "part-00000.parquet").is_file()
    # The lock goes with the process: a lock file left behind is no lock. What is left
    # stops --overwrite all the same: gpu-curate did not write it.
    (nested / LOCK).write_text("pid 1 on elsewhere since 2026-11-27 00:00:00\n")
    refused(top, f"overwrite=True would delete {top}, which holds what gpu-curate does not "
            "write (a, keep.txt): move that away or choose another out")  # fmt: skip
    assert (top / "keep.txt").is_file() and (nested / "part-00000.parquet").is_file()


def test_overwrite_of_the_folder_itself_is_refused_as_before(tmp_path):
    run = tmp_path / "run"
    with held(run, "writes") as proc:
        refused(run, f"another gpu-curate run (pid {proc.pid} on", f"is writing to {run}")
        assert (run / "part-00000.parquet").is_file()


# ---------------------------------------------------------------- 2. a folder being read


def test_balance_holds_its_matched_dataset_against_overwrite_and_resume(
    matched, tmp_path, monkeypatch
):
    # While balance reads MATCHED, no run may overwrite or resume it, nor overwrite the
    # folder that holds it: each is refused in one line naming the folder.
    seen = []
    real_stage = pipeline.balance_stage

    def stage(*args, **kwargs):
        seen.append(refused(matched, f"a gpu-curate run reads {matched} (it holds"))
        seen.append(refused(matched, "a gpu-curate run reads", resume=True))
        seen.append(
            refused(
                matched.parent,
                f"--overwrite would delete {matched.parent}/matched, which a gpu-curate run "
                f"reads (it holds {matched / LOCK})",
            )
        )
        assert (matched / "matched" / "_SUCCESS").is_file()
        return real_stage(*args, **kwargs)

    monkeypatch.setattr(pipeline, "balance_stage", stage)
    out = tmp_path / "balanced"
    cli("balance", matched, "--out", out, "--t", 5, "--workers", 1, "--quiet")
    assert len(seen) == 3
    assert (out / "curated" / "_SUCCESS").is_file()
    assert not (matched / LOCK).exists()  # (the reader's lock file goes with it)
    # No longer read: the run itself may be replaced (the folder holding it is no run, so
    # its --overwrite would delete another run's output, and is refused).
    refused(matched.parent, "does not write (matched (another run's output))")
    overwrite(matched)


def test_a_reader_in_another_process_blocks_overwrite(matched):
    with held(matched, "reads"):
        refused(matched.parent, f"{matched.parent}/matched, which a gpu-curate run reads")
        refused(matched, f"a gpu-curate run reads {matched}")
        with outdir.reading(str(matched)):  # readers share it
            pass
        assert (matched / "matched" / "_SUCCESS").is_file()
    assert not (matched / LOCK).exists()  # removed by the last reader
    overwrite(matched)


@pytest.mark.parametrize("reader", ["plan", "sampler"])
def test_plan_and_sampler_hold_the_matched_dataset(matched, monkeypatch, reader):
    seen = []
    real = planning.load_matched_csr

    def load(*args, **kwargs):
        seen.append(refused(matched, f"a gpu-curate run reads {matched}"))
        return real(*args, **kwargs)

    monkeypatch.setattr(planning, "load_matched_csr", load)
    if reader == "plan":
        planning.plan(matched, [5])
    else:
        BalancedSampler.from_matched_dir(matched, t=5, seed=0)
    assert len(seen) == 1
    assert not (matched / LOCK).exists()


@pytest.mark.parametrize("reader", ["plan", "balance", "report"])
def test_a_reader_refuses_a_folder_another_run_writes(matched, tmp_path, reader):
    # (It read on without a lock: an --overwrite of the folder after that run ended
    # deleted the parts under it, and a report's page landed beside the new run's
    # report.json.)
    from gpu_curate.report import write_report

    with held(matched, "resumes"):
        with pytest.raises(CurateError) as caught:
            if reader == "plan":
                planning.plan(matched, [5])
            elif reader == "balance":
                pipeline.balance_matched(str(matched), str(tmp_path / "b"), 5, 0)
            else:
                write_report(matched, sweep=False)
        assert str(caught.value).startswith("another gpu-curate run (pid ")
        assert str(caught.value).endswith(
            f"is writing {matched} (it holds {matched / LOCK}): wait for it to end, or stop it"
        )
    assert not (tmp_path / "b").exists()
    assert not (matched / "report").exists()


def test_a_report_holds_its_run_folder(matched, monkeypatch):
    import gpu_curate.report as report

    cli("balance", matched, "--out", matched, "--resume", "--t", 5, "--workers", 1, "--quiet")
    seen = []
    real = report.load_run

    def load(folder):
        seen.append(refused(matched, f"a gpu-curate run reads {matched}"))
        return real(folder)

    monkeypatch.setattr(report, "load_run", load)
    report.write_report(matched, sweep=False)
    assert len(seen) == 1 and (matched / "report" / "index.html").is_file()
    assert not (matched / LOCK).exists()


def test_a_reader_of_a_folder_it_cannot_write_reads_unlocked(matched, monkeypatch):
    # A read-only mount: the lock file can be neither created nor opened for writing.
    real_open = os.open

    def read_only_open(path, flags, *args):
        if os.path.basename(path) == LOCK and flags & (os.O_CREAT | os.O_RDWR | os.O_WRONLY):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(outdir.os, "open", read_only_open)
    rows = planning.plan(matched, [5])
    assert rows[0]["rows"] == 30
    assert not (matched / LOCK).exists()


def test_balance_in_place_still_resumes(matched):
    # Its own exclusive lock covers its reading (a shared one would conflict with it).
    cli("balance", matched, "--out", matched, "--resume", "--t", 5, "--workers", 1, "--quiet")
    assert (matched / "curated" / "_SUCCESS").is_file()
    assert not (matched / LOCK).exists()


# ---------------------------------------------------------------- 3. no locks here


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP], ids=["ENOLCK", "EOPNOTSUPP"])
def test_without_locks_no_lock_file_is_left(tmp_path, monkeypatch, code):
    def no_locks(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "out"
    with prepare_out(str(out), False, False, MATCH_MANIFEST) as (_, path):
        (out / "report.json").write_text("{}")
        assert not (out / LOCK).exists()  # (the run goes on unlocked)
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    with outdir.reading(str(out)):
        pass
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    overwrite(out)
    assert list(out.iterdir()) == []


# ------------------------------------------------ a failed run takes back its folder: not more


@pytest.mark.parametrize("name", ["run[1]", "run*", "run?"])
def test_a_failed_run_keeps_its_finished_parts_whatever_the_folder_is_named(tmp_path, name):
    # The finished parts were found by a glob of the folder's path: in a folder named
    # run[1] it matched nothing, and a run failing after 3 finished parts deleted them all.
    out = tmp_path / name
    with pytest.raises(CurateError), prepare_out(str(out), False, False, MATCH_MANIFEST):
        (out / MATCH_MANIFEST).write_text("{}")
        (out / "matched" / "_parts").mkdir(parents=True)
        (out / "matched" / "part-00000.parquet").write_bytes(b"finished")
        (out / "matched" / "_parts" / "part-00000.json").write_text("{}")
        raise CurateError("a bad row in the last file")
    assert (out / "matched" / "part-00000.parquet").read_bytes() == b"finished"
    assert (out / MATCH_MANIFEST).is_file()
    # (With no part finished, the folder goes, whatever its name.)
    other = tmp_path / "other[2]"
    with pytest.raises(CurateError), prepare_out(str(other), False, False, MATCH_MANIFEST):
        (other / MATCH_MANIFEST).write_text("{}")
        raise CurateError("no such --text-column")
    assert not other.exists()


def test_a_failed_run_removes_the_folders_it_made_and_only_those(tmp_path):
    # --out a/b/c where none existed: the whole chain goes, not c alone; and not on an
    # error of another kind (an OSError: the disk is full, say) either.
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("the user's")
    out = tmp_path / "a" / "b" / "c"
    with pytest.raises(OSError), prepare_out(str(out), False, False, MATCH_MANIFEST):
        (out / MATCH_MANIFEST).write_text("{}")
        raise OSError(28, "No space left on device")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["keep.txt"]
    # Ctrl-C says to --resume: what it began stays.
    with pytest.raises(KeyboardInterrupt), prepare_out(str(out), False, False, MATCH_MANIFEST):
        (out / MATCH_MANIFEST).write_text("{}")
        raise KeyboardInterrupt
    assert (out / MATCH_MANIFEST).is_file()


def test_a_cleanup_that_fails_leaves_the_run_s_own_error(tmp_path, monkeypatch):
    def cannot(fs, path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(outdir, "_empty", cannot)
    out = tmp_path / "out"
    with pytest.raises(CurateError, match="no such --text-column"):
        with prepare_out(str(out), False, False, MATCH_MANIFEST):
            (out / MATCH_MANIFEST).write_text("{}")
            raise CurateError("no such --text-column")
    assert (out / MATCH_MANIFEST).is_file()  # (what could not be removed stays)


def test_a_failed_run_does_not_remove_a_run_begun_below_it(tmp_path):
    # A run that began in a folder below this one's new folder meanwhile holds its lock:
    # its files are not this run's to take back.
    out = tmp_path / "out"
    with contextlib.ExitStack() as other_run:  # (held until the checks are done)
        with pytest.raises(CurateError), prepare_out(str(out), False, False, MATCH_MANIFEST):
            other_run.enter_context(held(out / "nested", "writes"))
            (out / MATCH_MANIFEST).write_text("{}")
            raise CurateError("no such --text-column")
        assert (out / "nested" / "part-00000.parquet").is_file()
        assert (out / "nested" / LOCK).is_file()


def test_balance_in_place_with_another_t_names_no_overwrite(matched):
    # In the matched dataset's own folder --overwrite is refused (it would delete the
    # matched dataset): the refusal of a resume with another t must not advise it.
    cli("balance", matched, "--out", matched, "--t", 5, "--resume", "--workers", 1, "--quiet")
    again = ["balance", matched, "--out", matched, "--t", 7, "--resume", "--workers", 1]
    result = CliRunner().invoke(main, [str(a) for a in [*again, "--quiet"]])
    assert result.exit_code == 2
    assert "write this balance into another --out" in result.stderr, result.stderr
    assert "--overwrite" not in result.stderr, result.stderr


def test_overwrite_of_a_folder_nested_very_deeply_is_one_line(tmp_path):
    # os.walk recurses (Python 3.11): a user's folder ~1,000 levels deep in the run gave a
    # RecursionError traceback; it is refused in one line (what it holds, or its depth).
    # (Here 300 levels under a lower recursion limit: a tree 1,000 deep would break
    # pytest's own clean-up of old temporary folders, shutil.rmtree recursing too.)
    import inspect

    run = tmp_path / "run"
    run.mkdir()
    (run / "_run.json").write_text("{}")
    folder = run / "u"
    folder.mkdir()
    for _ in range(300):
        folder = folder / "d"
        folder.mkdir()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 150)
    try:
        with pytest.raises(CurateError) as caught:
            check_out(str(run), overwrite=True, resume=False, manifest=MATCH_MANIFEST)
    finally:
        sys.setrecursionlimit(limit)
    assert str(run) in str(caught.value) and "\n" not in str(caught.value)
    assert folder.is_dir()


@pytest.mark.parametrize("command", ["curate", "match", "balance"])
def test_an_output_folder_in_memory_is_refused(matched, tmp_path, command):
    # (It failed in the first task, with a traceback's last line naming a temporary file.)
    if command == "balance":
        args = ["balance", matched, "--t", 5]
    else:
        args = [command, tmp_path / "pool", "--metadata", tmp_path / "metadata.json"]
    result = CliRunner().invoke(main, [str(a) for a in [*args, "--out", "memory://o", "--quiet"]])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        "gpu-curate: error: output folder memory://o is in memory, which a run's workers do "
        "not share and which ends with the process: name a folder on a disk or a shared file "
        "system"
    )


@pytest.mark.parametrize("sub", ["matched", "matched/x", "curated", "report/x", "_work"])
@pytest.mark.parametrize("command", ["balance", "curate"])
def test_an_output_folder_in_a_runs_layout_is_refused(matched, tmp_path, sub, command):
    # (balance M --out M/curated was taken: M/curated then held a balance's parts, counts
    # and report.json among M's parts, read as rows by any Parquet reader.)
    if command == "balance":
        args = ["balance", matched, "--t", 5]
    else:
        args = ["curate", tmp_path / "pool", "--metadata", tmp_path / "metadata.json"]
    before = sorted(p.relative_to(matched) for p in matched.rglob("*"))
    for extra in ([], ["--overwrite"]):
        result = CliRunner().invoke(
            main, [str(a) for a in [*args, "--out", matched / sub, "--quiet", *extra]]
        )
        assert result.exit_code == 2, result.output
        first = sub.split("/")[0]
        assert result.stderr.strip() == (
            f"gpu-curate: error: output folder {matched / sub} lies in the {first}/ folder of "
            f"the run {matched}, which it would mix with: choose another --out"
        )
    assert sorted(p.relative_to(matched) for p in matched.rglob("*")) == before


def test_an_output_folder_reached_through_a_link_into_a_runs_layout_is_refused(matched, tmp_path):
    # (The check walked the path as written: balance M --out L/x, L -> M/matched, wrote
    # its balance among M's parts.)
    (tmp_path / "L").symlink_to(matched / "matched")
    before = sorted(p.relative_to(matched) for p in matched.rglob("*"))
    result = CliRunner().invoke(
        main, ["balance", str(matched), "--t", "5", "--out", str(tmp_path / "L" / "x")]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"gpu-curate: error: output folder {tmp_path / 'L' / 'x'} lies in the matched/ folder "
        f"of the run {matched}, which it would mix with: choose another --out"
    )
    assert sorted(p.relative_to(matched) for p in matched.rglob("*")) == before


def test_a_balance_beside_or_around_its_matched_dataset(matched):
    cli("balance", matched, "--t", 5, "--out", matched / "t5", "--quiet")
    assert (matched / "t5" / "curated" / "_SUCCESS").exists()
    result = CliRunner().invoke(
        main, ["balance", str(matched), "--t", "5", "--out", str(matched.parent), "--overwrite"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"gpu-curate: error: output folder {matched.parent} holds the matched dataset "
        f"{matched}, which it would delete: choose another --out"
    )


def test_a_pool_with_a_success_file_is_no_folder_of_parts(tmp_path):
    # (Spark writes _SUCCESS into a pool's folder: "give its run folder" named the pool's
    # parent, which is no run.)
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(pa.table({"text": ["a dog"]}), pool / "part-00000.parquet")
    (pool / "_SUCCESS").write_text("")
    for args in (["plan", pool, "--t", 5], ["balance", pool, "--t", 5, "--out", tmp_path / "o"]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2
        assert result.stderr.strip().endswith(
            f"{pool} is not a matched dataset (no matched/ folder): give the output folder of "
            "gpu-curate match or curate"
        ) or result.stderr.strip().endswith(
            f"{pool} is not a matched dataset (no entry_counts.parquet): give the output "
            "folder of gpu-curate match or curate"
        ), result.stderr


def test_an_overwrite_cut_short_leaves_no_success_listing_parts_gone(tmp_path, monkeypatch):
    # (Ctrl-C while --overwrite emptied the folder left curated/_SUCCESS listing 1,000
    # parts of which 512 were gone: a folder that looked complete to any reader.)
    from fsspec.implementations.local import LocalFileSystem

    (tmp_path / "pool").mkdir()
    texts = [f"a dog {i}" if i % 3 else f"a cat {i}" for i in range(60)]
    pq.write_table(pa.table({"TEXT": texts}), tmp_path / "pool" / "p.parquet")
    (tmp_path / "metadata.json").write_text(json.dumps(["dog", "cat"]))
    out = tmp_path / "out"
    args = ["curate", tmp_path / "pool", "--metadata", tmp_path / "metadata.json", "--out", out,
            "--t", 5, "--partition-rows", 10, "--workers", 1, "--quiet"]  # fmt: skip
    cli(*args)
    want = pq.read_table(out / "curated").column("uid").to_pylist()
    rm = LocalFileSystem.rm

    def cut_short(self, path, *a, **kw):
        if str(path).rstrip("/").endswith(("matched", "curated")):
            raise KeyboardInterrupt
        return rm(self, path, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(LocalFileSystem, "rm", cut_short)
        result = CliRunner().invoke(main, [str(a) for a in [*args, "--overwrite"]])
    assert result.exit_code == 130
    assert result.stderr.strip() == (
        "gpu-curate: interrupted; the folder was being emptied: run the same command again"
    )
    assert not (out / "report.json").exists()
    assert not list(out.rglob("_SUCCESS"))
    assert list((out / "matched").glob("part-*.parquet"))  # (cut short: parts left)
    cli(*args, "--overwrite")
    assert pq.read_table(out / "curated").column("uid").to_pylist() == want


def test_an_out_that_is_a_link_to_nothing_is_named(tmp_path):
    # (fs.makedirs said "[Errno 17] File exists".)
    (tmp_path / "out").symlink_to(tmp_path / "missing")
    with pytest.raises(CurateError) as caught, prepare_out(str(tmp_path / "out"), False, False,
                                                           MATCH_MANIFEST):  # fmt: skip
        pass
    assert str(caught.value) == (
        f"output {tmp_path / 'out'} is a symbolic link to {tmp_path / 'missing'}, which does "
        "not exist: create that folder, or choose another out"
    )
    # (A folder below it: "[Errno 2] No such file or directory".)
    below = str(tmp_path / "out" / "sub")
    with pytest.raises(CurateError) as caught, prepare_out(below, False, False, MATCH_MANIFEST):
        pass
    assert str(caught.value) == (
        f"output {tmp_path / 'out' / 'sub'} lies in {tmp_path / 'out'}, a symbolic link to "
        f"{tmp_path / 'missing'}, which does not exist: create that folder, or choose another "
        "out"
    )
    (tmp_path / "missing").mkdir()  # (then it is written through)
    with prepare_out(str(tmp_path / "out"), False, False, MATCH_MANIFEST):
        pass
    assert (tmp_path / "out").is_symlink()
