"""Where the Dask graph runs: local threads or processes, all local GPUs, or a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError
from dataclasses import dataclass

from .backend import Backend, resolved_name
from .errors import CurateError, counted, first_line, option

# Threads per GPU worker of the local GPU cluster (see open_client).
GPU_THREADS = 4

# Dask's statistical profiler snapshots every worker thread's stack every 10 ms for the
# dashboard's Profile page, which a curate run does not show. On 2 cores turning it off
# saved at most ~2-3% of a run, within the machine's noise (docs/benchmarks.md); the
# clusters gpu-curate starts run without it, a cluster passed with ``scheduler`` runs as
# its owner configured it.
LOCAL_CLUSTER_CONFIG = {"distributed.worker.profile.enabled": False}
# The preload of a local cluster's worker processes: they leave Ctrl-C to this process
# (which then closes the cluster and so stops them) instead of each printing its own
# KeyboardInterrupt traceback. It is passed to the cluster, not configured: dask-cuda sets
# its workers' preload list itself (the one passed, plus dask_cuda.initialize), so Dask's
# configuration of it would not be read there.
WORKER_SETUP = "gpu_curate.worker_setup"


@dataclass(frozen=True)
class ClusterInfo:
    kind: str  # "local-processes" | "local-threads" | "local-cuda" | "scheduler"
    workers: int
    threads: int
    address: str
    backend: str  # "cpu" | "gpu": what the workers run (chosen where they are)
    note: str = ""  # why "auto" chose it, where that is not plain

    def describe(self) -> str:
        workers, threads = counted(self.workers, "worker"), counted(self.threads, "thread")
        if self.kind == "scheduler":
            return f"Dask cluster at {self.address} ({workers}, {threads})"
        per = counted(self.threads // max(self.workers, 1), "thread")
        if self.kind == "local-cuda":
            return f"LocalCUDACluster ({counted(self.workers, 'GPU worker')} x {per})"
        return f"local {self.kind.split('-')[1]} ({workers} x {per})"


@contextlib.contextmanager
def open_client(
    backend: str | Backend,
    workers: int | None = None,
    scheduler: str | None = None,
    processes: bool = False,
) -> Iterator[tuple[object, ClusterInfo]]:
    """A ``distributed.Client`` for the run, closed (with its local cluster) at the end.

    * ``scheduler``: connect to an existing cluster (multi-node) at that address; its
      workers, not this process, resolve ``backend`` (a client without a GPU may drive GPU
      workers, and "auto" on a client without one must not make them run the CPU kernel);
    * gpu backend: ``dask_cuda.LocalCUDACluster``, one worker per visible GPU (or
      ``workers``), each running ``GPU_THREADS`` parts at once (fewer if cores are few);
    * cpu backend: ``LocalCluster`` with one process of ``workers`` threads (default: one
      per core; the kernels release the GIL), or ``workers`` single-threaded worker
      processes when ``processes`` is True.

    The local clusters run with :data:`LOCAL_CLUSTER_CONFIG` (no worker profiler).

    Examples
    --------
    >>> with open_client("cpu", workers=1) as (client, info):  # doctest: +SKIP
    ...     info.backend
    'cpu'
    """
    import dask

    if workers is not None and workers < 1:
        raise CurateError(f"{option('--workers')} must be at least 1, got {workers}")
    _quiet_dask_noise()
    import distributed  # noqa: F401  (its defaults first: set before, a key hid them)

    # The step that every part task reads is one key of the graph (graph_key): the
    # metadata's entries, 4.4 MB pickled for 375k and past Dask's 10 MB warning ("Sending
    # large graph") for a million, as a MetaCLIP 2-size one is. Sent once, as intended.
    # (_environ_kept: a local cluster's nannies write into this process's environment.)
    threshold = {"distributed.admin.large-graph-warning-threshold": "1GiB"}
    with _environ_kept(), dask.config.set(threshold):
        yield from _open_client(backend, workers, scheduler, processes)


def _open_client(backend, workers, scheduler, processes) -> Iterator[tuple[object, ClusterInfo]]:
    """:func:`open_client`'s clusters, once its arguments are checked."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        with _connected(scheduler, CONNECT_SECONDS) as client:
            info = client.scheduler_info(n_workers=-1)
            ws = info.get("workers", {})
            threads = sum(w.get("nthreads", 1) for w in ws.values())
            if not ws:
                raise CurateError(f"the Dask scheduler at {scheduler} has no workers")
            name = _workers_backend(client, backend, scheduler)
            yield client, ClusterInfo("scheduler", len(ws), threads, scheduler, name)
        return
    gpu, note = resolved_name(backend) == "gpu", ""
    if gpu:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            if backend != "auto":
                raise CurateError(
                    "the gpu backend needs dask-cuda for a local cluster: pip install "
                    f"'gpu-curate[cuda12]' (or pass {option('--scheduler')})"
                ) from None
            # (A GPU whose CuPy came with another package: the run it can make is the
            # cpu backend's, with the same result.)
            gpu, note = False, "auto: a GPU is visible, but dask-cuda is not installed"
    if gpu:
        visible = _visible_gpus()
        if workers is not None and workers > visible:
            # (dask-cuda would raise "Can not scale beyond visible devices".)
            raise CurateError(
                f"{option('--workers')} {workers}: only {visible} GPU(s) visible (a GPU worker "
                "is one GPU)"
            )
        n_gpus = workers or visible
        # The device work of a part is milliseconds and its host Parquet I/O most of the
        # time, so a GPU worker runs a few parts at once. On an H100 with 16 cores, 4
        # threads gave 1.42M rows/s, 1 thread 0.56M and 8 threads 1.37M with twice the
        # device memory (docs/benchmarks.md); each thread holds one tile's scratch (a 4-thread
        # worker's device pool was 1.1 GB in a 4M-row run).
        per = max(1, min(GPU_THREADS, (os.cpu_count() or 1) // n_gpus))
        with dask.config.set(LOCAL_CLUSTER_CONFIG):
            cluster = LocalCUDACluster(
                n_workers=n_gpus,
                threads_per_worker=per,
                preload=[WORKER_SETUP],
                **_NO_DASHBOARD,  # (see the cpu cluster's)
                silence_logs=logging.CRITICAL,
            )
        n = len(cluster.workers)
        with cluster, Client(cluster) as client:
            yield client, ClusterInfo("local-cuda", n, n * per, cluster.scheduler_address, "gpu")
        return
    n = workers or os.cpu_count() or 1
    cores = os.cpu_count() or 1
    if processes and n > _PROCESSES_PER_CORE * cores:
        # (Each loads Python, Dask and the metadata tables: 500 on 2 cores did not start
        # within minutes, and would take ~100 GB.)
        procs = option("--processes")
        raise CurateError(
            f"{option('--workers')} {n} {procs}: {n} worker processes on {cores} cores; "
            f"at most {_PROCESSES_PER_CORE * cores} (threads, without {procs}, may be more)"
        )
    with dask.config.set(LOCAL_CLUSTER_CONFIG):
        cluster = LocalCluster(
            n_workers=n if processes else 1,
            threads_per_worker=1 if processes else n,
            processes=processes,
            **_NO_DASHBOARD,
            silence_logs=logging.CRITICAL,
            # (Worker processes only: in-process workers share this process's Ctrl-C.)
            **({"preload": [WORKER_SETUP]} if processes else {}),
        )
    kind = "local-processes" if processes else "local-threads"
    with cluster, Client(cluster) as client:
        address = cluster.scheduler_address
        yield client, ClusterInfo(kind, n if processes else 1, n, address, "cpu", note)


@contextlib.contextmanager
def _environ_kept() -> Iterator[None]:
    """This process's environment as it was, once the block ends.

    A nanny writes its worker processes' settings (Dask's ``nanny.pre-spawn-environ``:
    OMP_NUM_THREADS=1, PYTHONHASHSEED, ...) into the environment of the process that
    starts (or restarts) them: a notebook kept them, and each later subprocess (a
    ``!gpu-curate`` run, pyarrow's thread count) inherited them.
    """
    before = dict(os.environ)
    try:
        yield
    finally:
        if dict(os.environ) != before:
            os.environ.clear()
            os.environ.update(before)


# No dashboard: nobody is shown its address. Without bokeh, each start tried to import
# distributed's dashboard again (two runs started at once from threads failed: "Cluster
# failed to start") and added a route to Dask's configuration. The scheduler's HTTP server
# (its health and metrics) takes any free port: 8787 may be another cluster's.
_NO_DASHBOARD = {"dashboard_address": ":0", "scheduler_kwargs": {"dashboard": False}}


# Local worker processes a core, at most: beyond, they only wait for it (and take memory).
_PROCESSES_PER_CORE = 4


# How long a --scheduler run waits for the scheduler to answer.
CONNECT_SECONDS = 20


@contextlib.contextmanager
def _connected(scheduler: str, seconds: float = CONNECT_SECONDS):
    """A ``distributed.Client`` of the scheduler at ``scheduler``, or a CurateError within
    about ``seconds``.

    Client's own timeout covers the connection, not the handshake after it: at an address
    that accepts and never answers (the dashboard's port, an HTTP server) it waited for
    ever, and one that speaks another protocol first (SSH's banner) or a scheme without
    its settings (tls://) failed with a traceback. So the address is first tried with a
    handshake of its own, on an event loop of its own (a notebook's runs already), given
    up after that long.
    """
    from distributed import Client

    hint = "is it a Dask scheduler's address, as tcp://HOST:8786 (not its dashboard's)?"
    silent = f"no Dask scheduler answered at {scheduler} in {seconds:g} s: {hint}"
    found: list = []

    def probe() -> None:
        from distributed.comm import connect
        from distributed.security import Security

        # (As Client connects: with Dask's TLS settings, for a tls:// scheduler.)
        args = Security().get_connection_args("client")

        async def handshake():
            comm = await asyncio.wait_for(connect(scheduler, timeout=seconds, **args), seconds)
            await comm.close()

        try:
            asyncio.run(handshake())
            found.append(None)
        except TimeoutError:
            found.append(silent)
        except Exception as exc:  # (any: reported in one line)
            found.append(_unreachable(scheduler, exc, hint))

    thread = threading.Thread(target=probe, name="gpu-curate-connect", daemon=True)
    thread.start()
    thread.join(seconds + 5)
    if not found:  # (the probe's own deadline did not hold: not to be waited for further)
        raise CurateError(silent)
    if found[0] is not None:
        raise CurateError(found[0])
    try:
        client = Client(scheduler, timeout=f"{seconds}s")
    except Exception as exc:
        raise CurateError(_unreachable(scheduler, exc, hint)) from None
    with client:
        yield client


def _unreachable(scheduler: str, exc: Exception, hint: str) -> str:
    why = first_line(exc)
    if scheduler.startswith("tls://") and isinstance(exc, TypeError):
        why += "; a tls:// scheduler needs Dask's TLS settings (distributed.comm.tls)"
    elif not isinstance(exc, OSError | ValueError):  # (refused, unreachable; no address)
        why += f"; {hint}"
    return f"cannot reach the Dask scheduler at {scheduler}: {why}"


def check_shared(client, info: ClusterInfo, paths: list[str]) -> None:
    """On a cluster of its own (``--scheduler``), a CurateError unless every worker sees
    each local path of ``paths`` (an input file; the folder that will hold the output).

    The workers of a cluster on several machines read the inputs and write the output
    themselves: a path on one machine's own disk failed at the first part with a bare
    "[Errno 2] No such file or directory", naming no worker.
    """
    if info.kind != "scheduler":
        return
    for path in paths:
        if "://" in path and not path.startswith("file://"):
            continue  # (an object store's URL reads alike everywhere)
        local = path.removeprefix("file://")
        seen = client.run(os.path.exists, local, on_error="return")
        blind = sorted(w for w, ok in seen.items() if ok is not True)
        if blind:
            more = f" (and {len(blind) - 1} more)" if len(blind) > 1 else ""
            raise CurateError(
                f"the Dask worker {blind[0]}{more} cannot see {local}: the workers of a "
                "cluster read the inputs and write the output themselves, so these must be on "
                "storage that every worker shares (a shared file system, or an fsspec URL "
                "such as s3://)"
            )


def dask_noise(record: logging.LogRecord) -> bool:
    """False for the log records of Dask's that are noise, not a run's news (a filter of
    the ``asyncio`` and ``distributed.client`` loggers, which :func:`open_client` installs).

    - Ctrl-C during client.gather leaves Dask's waiting tasks with AllExit, which asyncio
      reports as "Task exception was never retrieved" when they are collected; the
      interruption itself is reported (the CLI: in one line).
    - Under load, a local worker's close can outlast the wait for it, and the timeout of
      the close it abandoned (tornado's ``with_timeout``: TimeoutError("Timeout")) is
      reported as "Future exception was never retrieved" after a run that had finished.
    - A scheduler lost mid-run: the client's reconnection, cancelled as the client closes,
      is logged with a 30-line traceback (or, given up, in a line of its own); the run's
      error says that the cluster went away.
    """
    exc = record.exc_info[1] if record.exc_info else None
    if type(exc).__name__ == "AllExit":
        return False
    if record.name == "distributed.client" and (
        isinstance(exc, asyncio.CancelledError)
        or str(record.msg).startswith("Failed to reconnect to scheduler")
    ):
        return False
    timed_out = isinstance(exc, TimeoutError) and exc.args == ("Timeout",)
    return not (timed_out and str(record.msg).startswith("Future exception was never retrieved"))


def _quiet_dask_noise() -> None:
    # (addFilter adds a filter once, however often it is called.)
    for name in ("asyncio", "distributed.client"):
        logging.getLogger(name).addFilter(dask_noise)


def graph_key(value):
    """``value`` (a step) as one key of the Dask graph, which every task of a stage reads.

    Not scattered: the scheduler cannot recompute scattered data, so a worker lost with
    the only copies (an out-of-memory kill, a node going down) failed the whole run, where
    Dask re-runs a lost key and the tasks that needed it. Named at random: a key derived
    from the contents would tokenize every entry (~0.2 s for 375k).

    Examples
    --------
    >>> graph_key([1, 2]).compute()
    [1, 2]
    """
    import uuid

    import dask

    name = f"gpu-curate-{type(value).__name__}-{uuid.uuid4().hex}"
    return dask.delayed(value, name=name, traverse=False)


def gathered(client, futures, then: str):
    """``client.gather(futures)``, where a cluster that stopped the run is one line, which
    ends with ``then`` (what was kept, how to go on).

    Dask cancels the tasks of a scheduler lost or shut down mid-stage, and gives up a task
    that killed every worker that ran it (a part too big for a worker's memory, a crash
    in a library): its own errors say so in a traceback.
    """
    from distributed import KilledWorker

    try:
        return client.gather(futures)
    except KilledWorker as exc:
        raise CurateError(
            f"the task {exc.task} killed each Dask worker that ran it ({exc.allowed_failures + 1}"
            f" tries: out of memory? the workers' logs say more): {then}"
        ) from None
    except CancelledError as exc:
        why = first_line(exc)
        raise CurateError(f"the Dask cluster went away during the run ({why}): {then}") from None


def _workers_backend(client, backend: str | Backend, scheduler: str) -> str:
    """The backend that every worker of the cluster can run, as the workers resolve it.

    Each worker must also run this process's gpu-curate: the curated set is a function of
    the code, and a node left on another version would mix its parts into the result.
    """
    name = backend.name if isinstance(backend, Backend) else backend
    found = client.run(worker_state, name, on_error="return")
    failed = sorted((w, r) for w, r in found.items() if isinstance(r, BaseException))
    same = ": install the same gpu-curate on every node"

    def refused(workers: list, says: str, then: str = "") -> CurateError:
        share = f" ({len(workers)} of {len(found)} workers)" if len(workers) > 1 else ""
        return CurateError(
            f"the Dask cluster at {scheduler}: worker {workers[0]}{says}{share}{then}"
        )

    older = [w for w, r in failed if _lacks_worker_state(r)]
    if older:
        # (A gpu-curate from before this check cannot unpickle the question itself.)
        raise refused(older, " runs another gpu-curate (an older version, or none)", same)
    if failed:
        raise refused([w for w, _ in failed], f": {failed[0][1]}")
    ours = code_identity()
    other = sorted((w, code) for w, (_, code) in found.items() if code != ours)
    if other:
        version = other[0][1][0]
        what = (
            f"gpu-curate {version}, this process {ours[0]}"
            if version != ours[0]
            else f"another copy of gpu-curate {version} (its source files differ)"
        )
        raise refused([w for w, _ in other], f" runs {what}", same)
    # ("auto" on workers with and without a GPU: the cpu backend is the one all can run,
    # and both give the same result.)
    return "gpu" if {b for b, _ in found.values()} == {"gpu"} else "cpu"


def _lacks_worker_state(exc: BaseException) -> bool:
    """Whether a worker failed to unpickle :func:`worker_state`: no gpu_curate, or one
    without it."""
    if isinstance(exc, ModuleNotFoundError):
        return (exc.name or "").split(".")[0] == "gpu_curate"
    return isinstance(exc, AttributeError) and "worker_state" in str(exc)


def worker_state(backend: str) -> tuple[str, tuple[str, str]]:
    """What a worker of a ``--scheduler`` cluster runs: its backend and :func:`code_identity`."""
    return resolved_name(backend), code_identity()


@functools.cache
def code_identity() -> tuple[str, str]:
    """gpu-curate's version and a digest of its source files (the kernels included).

    Examples
    --------
    >>> version, digest = code_identity()
    >>> len(digest)
    16
    """
    from . import __version__, kernels

    package = os.path.dirname(os.path.abspath(__file__))
    return __version__, _source_digest(package, kernels.__path__[0])


def _source_digest(package: str, kernels: str) -> str:
    digest = hashlib.sha256()
    # (An editable install finds the kernels outside the package folder, a source
    # checkout through a link in it: they are walked on their own, under one name.)
    for prefix, root in (("", package), ("kernels/", kernels)):
        for folder, dirs, files in os.walk(root, followlinks=True):
            skip = {"__pycache__", "kernels"} if folder == package else {"__pycache__"}
            dirs[:] = sorted(d for d in dirs if d not in skip)  # (walked in this order)
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                rel = prefix + os.path.relpath(path, root).replace(os.sep, "/")
                digest.update(rel.encode() + b"\0")
                with open(path, "rb") as fh:
                    digest.update(fh.read() + b"\0")
    return digest.hexdigest()[:16]


def _visible_gpus() -> int:
    import cupy

    return max(1, cupy.cuda.runtime.getDeviceCount())
