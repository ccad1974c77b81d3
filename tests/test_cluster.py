"""The local Dask clusters that gpu-curate starts for a run."""

from __future__ import annotations

from pathlib import Path

import dask
import pytest
from distributed import Worker

from gpu_curate.backend import resolve
from gpu_curate.cluster import open_client


def _has_profiler(dask_worker: Worker) -> bool:
    return "profile" in dask_worker.periodic_callbacks


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_local_clusters_run_without_the_worker_profiler(processes):
    # Dask's default is a profiler on every worker (it costs ~3% of a run on 2 cores).
    assert dask.config.get("distributed.worker.profile.enabled") is True
    with open_client(resolve("cpu"), workers=1, processes=processes) as (client, info):
        assert info.kind == ("local-processes" if processes else "local-threads")
        assert list(client.run(_has_profiler).values()) == [False]
    # The setting is scoped to the cluster: the caller's configuration is as it was.
    assert dask.config.get("distributed.worker.profile.enabled") is True


def _sigint_handler(dask_worker: Worker):
    import signal

    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_worker_processes_leave_ctrl_c_to_the_run_and_threads_keep_it():
    with open_client(resolve("cpu"), workers=1, processes=True) as (client, _):
        assert list(client.run(_sigint_handler).values()) == [True]
    with open_client(resolve("cpu"), workers=1) as (client, _):
        assert list(client.run(_sigint_handler).values()) == [False]  # (this very process)


def test_more_gpu_workers_than_gpus_is_a_one_line_error(monkeypatch):
    # dask-cuda itself would raise a bare ValueError ("Can not scale beyond visible
    # devices"); no GPU here, so its module and the GPU count are stand-ins.
    import sys
    import types

    import numpy as np

    from gpu_curate import cluster
    from gpu_curate.backend import Backend
    from gpu_curate.errors import CurateError

    started = []
    fake = types.ModuleType("dask_cuda")
    fake.LocalCUDACluster = lambda **kw: started.append(kw)
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    monkeypatch.setattr(cluster, "_visible_gpus", lambda: 2)
    with pytest.raises(CurateError, match=r"^workers 3: only 2 GPU\(s\) visible"):
        with open_client(Backend("gpu", np), workers=3):
            pass
    assert started == []


def test_gpu_workers_get_the_ctrl_c_preload(monkeypatch):
    # dask-cuda builds the workers' preload list itself (the one passed, plus
    # dask_cuda.initialize), so the setting must be passed, not configured.
    import sys
    import types

    import numpy as np

    from gpu_curate import cluster
    from gpu_curate.backend import Backend

    started = []

    class FakeCluster:
        def __init__(self, **kw):
            started.append(kw)
            self.workers = {0: None}
            self.scheduler_address = "inproc://fake"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake = types.ModuleType("dask_cuda")
    fake.LocalCUDACluster = FakeCluster
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    monkeypatch.setattr(cluster, "_visible_gpus", lambda: 1)
    import distributed

    monkeypatch.setattr(distributed, "Client", lambda c: FakeCluster.__new__(FakeCluster))
    with open_client(Backend("gpu", np)) as (_, info):
        assert info.kind == "local-cuda"
    assert started[0]["preload"] == ["gpu_curate.worker_setup"]
    # Started as the cpu cluster is: no dashboard (two runs at once on one machine: no
    # "port 8787 is already in use"), and distributed's logs quiet.
    import logging

    assert started[0]["dashboard_address"] == ":0"
    assert started[0]["scheduler_kwargs"] == {"dashboard": False}
    assert started[0]["silence_logs"] == logging.CRITICAL


def test_auto_on_a_gpu_without_dask_cuda_runs_the_cpu_backend(monkeypatch):
    # (CuPy and a GPU, from another package's install, without gpu-curate's GPU extra:
    # "auto" chose the gpu backend and failed for want of dask-cuda, where the cpu backend
    # gives the same result.) No GPU here: the GPU is a stand-in, dask-cuda absent.
    import sys

    from gpu_curate import backend
    from gpu_curate.errors import CurateError

    monkeypatch.setattr(backend, "gpu_unavailable_reason", lambda: None)
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # (import raises ImportError)
    with open_client("auto", workers=1) as (_, info):
        assert (info.kind, info.backend) == ("local-threads", "cpu")
        assert info.note == "auto: a GPU is visible, but dask-cuda is not installed"
    with pytest.raises(CurateError, match="^the gpu backend needs dask-cuda"):
        with open_client("gpu", workers=1):
            pass


def test_a_local_cluster_leaves_the_environment_and_dask_config_as_they_were():
    # Worker processes' nannies wrote OMP_NUM_THREADS=1, PYTHONHASHSEED, ... into this
    # process's environment, which a notebook kept for every later subprocess; each start
    # without bokeh added a dashboard route to Dask's configuration.
    import os

    environ, routes = dict(os.environ), list(dask.config.get("distributed.scheduler.http.routes"))
    with open_client(resolve("cpu"), workers=2, processes=True) as (client, info):
        assert client.run(lambda: os.environ.get("OMP_NUM_THREADS")) != {}
    assert dict(os.environ) == environ
    with open_client(resolve("cpu"), workers=1):
        # (The step, one key of the graph, is the metadata: past Dask's 10 MB "Sending
        # large graph" warning for a million entries, in every run.)
        assert dask.config.get("distributed.admin.large-graph-warning-threshold") == "1GiB"
    assert dask.config.get("distributed.scheduler.http.routes") == routes


# ------------------------------------------------------- the backend of a --scheduler run


@pytest.fixture
def fake_scheduler():
    """A TCP server on 127.0.0.1 that is no Dask scheduler: ``answer`` (bytes) is what it
    sends each connection, None for nothing at all (it holds the connection)."""
    import socket
    import threading

    servers = []

    def start(answer: bytes | None) -> str:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        servers.append(server)

        def serve():
            held = []
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                held.append(conn)
                if answer is not None:
                    conn.sendall(answer)

        threading.Thread(target=serve, daemon=True).start()
        return f"tcp://127.0.0.1:{server.getsockname()[1]}"

    yield start
    for server in servers:
        server.close()


def test_an_address_that_is_no_scheduler_is_one_line_in_bounded_time(fake_scheduler, monkeypatch):
    # An address that accepts and never answers (a dashboard's port, an HTTP server) made
    # the run wait for ever; one that speaks first (an SSH banner) failed with a traceback
    # ("Unable to allocate 2.82 EiB").
    import time

    from gpu_curate import cluster
    from gpu_curate.errors import CurateError

    monkeypatch.setattr(cluster, "CONNECT_SECONDS", 2)
    silent = fake_scheduler(None)
    began = time.monotonic()
    with pytest.raises(CurateError) as caught:
        with open_client("cpu", scheduler=silent):
            pass
    assert time.monotonic() - began < 15
    assert str(caught.value) == (
        f"no Dask scheduler answered at {silent} in 2 s: is it a Dask scheduler's address, "
        "as tcp://HOST:8786 (not its dashboard's)?"
    )
    banner = fake_scheduler(b"SSH-2.0-OpenSSH_9.6\r\n")
    with pytest.raises(CurateError) as caught:
        with open_client("cpu", scheduler=banner):
            pass
    message = str(caught.value)
    assert message.startswith(f"cannot reach the Dask scheduler at {banner}: ")
    assert message.endswith("is it a Dask scheduler's address, as tcp://HOST:8786 (not its "
                            "dashboard's)?") and "\n" not in message  # fmt: skip


@pytest.fixture
def cpu_only_client(monkeypatch):
    """No GPU in this process; the workers of an in-process cluster (their event loop runs
    outside the main thread) see one."""
    import threading

    from gpu_curate import backend

    def reason():
        return (
            "no GPU on the client"
            if threading.current_thread() is threading.main_thread()
            else None
        )

    monkeypatch.setattr(backend, "gpu_unavailable_reason", reason)


def test_auto_is_chosen_by_the_workers_of_a_scheduler(cpu_only_client):
    # A client without a GPU drives GPU workers (the README's multi-node setup): resolved
    # on the client, "auto" would have had them run the cpu kernel without a word.
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as lc:
        with open_client("auto", scheduler=lc.scheduler_address) as (_, info):
            assert (info.kind, info.backend) == ("scheduler", "gpu")
        with open_client("cpu", scheduler=lc.scheduler_address) as (_, info):
            assert info.backend == "cpu"
    # (And on a local cluster this process chooses.)
    with open_client("auto", workers=1) as (_, info):
        assert (info.kind, info.backend) == ("local-threads", "cpu")


class _FakeClient:
    def __init__(self, answers):
        self.answers = answers

    def run(self, function, *args, on_error="raise"):
        assert on_error == "return"
        return self.answers


def test_workers_backend_names_a_worker_that_cannot_run_it():
    from gpu_curate.backend import BackendError
    from gpu_curate.cluster import _workers_backend, code_identity
    from gpu_curate.errors import CurateError

    ours = code_identity()
    no = BackendError("the gpu backend cannot run here: CuPy is not installed")
    client = _FakeClient({"tcp://b:2": no, "tcp://a:1": no, "tcp://c:3": ("gpu", ours)})
    with pytest.raises(
        CurateError,
        match=r"^the Dask cluster at tcp://s:8786: worker tcp://a:1: the gpu backend cannot run "
        r"here: CuPy is not installed \(2 of 3 workers\)$",
    ):
        _workers_backend(client, "gpu", "tcp://s:8786")
    # "auto" on workers with and without a GPU: the backend every one of them can run.
    mixed = _FakeClient({"a": ("gpu", ours), "b": ("cpu", ours)})
    assert _workers_backend(mixed, "auto", "s") == "cpu"
    both = _FakeClient({"a": ("gpu", ours), "b": ("gpu", ours)})
    assert _workers_backend(both, "auto", "s") == "gpu"


def test_a_worker_of_a_version_before_the_check_is_named():
    # (A gpu-curate from before the check cannot unpickle the question: it was reported
    # as a bare AttributeError of Dask's.)
    from gpu_curate.cluster import _workers_backend, code_identity
    from gpu_curate.errors import CurateError

    old = AttributeError("Can't get attribute 'worker_state' on <module 'gpu_curate.cluster'>")
    none = ModuleNotFoundError("No module named 'gpu_curate'", name="gpu_curate")
    ours = ("cpu", code_identity())
    for answers, tail in [
        ({"tcp://a:1": ours, "tcp://b:2": old}, ""),
        ({"tcp://b:2": none, "tcp://c:3": old}, " (2 of 2 workers)"),
    ]:
        with pytest.raises(CurateError) as caught:
            _workers_backend(_FakeClient(answers), "cpu", "tcp://s:8786")
        assert str(caught.value) == (
            "the Dask cluster at tcp://s:8786: worker tcp://b:2 runs another gpu-curate (an "
            f"older version, or none){tail}: install the same gpu-curate on every node"
        )


def test_the_scheduler_probe_connects_with_dasks_security_settings(monkeypatch):
    # (The probe connected without them: every tls:// cluster was refused, its settings
    # configured or not.)
    import distributed.comm

    from gpu_curate import cluster
    from gpu_curate.errors import CurateError

    seen = {}

    async def connect(address, timeout=None, **kwargs):
        seen.update(kwargs)
        raise OSError("stand-in: no scheduler")

    monkeypatch.setattr(distributed.comm, "connect", connect)
    with dask.config.set({"distributed.comm.require-encryption": False}):
        with pytest.raises(CurateError, match="stand-in: no scheduler"):
            with cluster._connected("tls://127.0.0.1:1", 2):
                pass
    assert "ssl_context" in seen and "require_encryption" in seen


def test_a_worker_running_other_gpu_curate_code_is_refused():
    # (A node left on another version, or a patched copy, would mix its parts into the
    # curated set without a word.)
    from gpu_curate.cluster import _workers_backend, code_identity
    from gpu_curate.errors import CurateError

    version, digest = code_identity()
    older = ("cpu", ("0.0.1", "0" * 16))
    patched = ("cpu", (version, "f" * 16))
    client = _FakeClient({"tcp://a:1": ("cpu", (version, digest)), "tcp://c:3": older})
    with pytest.raises(CurateError) as caught:
        _workers_backend(client, "cpu", "tcp://s:8786")
    assert str(caught.value) == (
        f"the Dask cluster at tcp://s:8786: worker tcp://c:3 runs gpu-curate 0.0.1, this "
        f"process {version}: install the same gpu-curate on every node"
    )
    client = _FakeClient({"tcp://b:2": patched, "tcp://c:3": older})
    with pytest.raises(CurateError) as caught:
        _workers_backend(client, "cpu", "tcp://s:8786")
    assert str(caught.value) == (
        f"the Dask cluster at tcp://s:8786: worker tcp://b:2 runs another copy of gpu-curate "
        f"{version} (its source files differ) (2 of 2 workers): install the same gpu-curate "
        "on every node"
    )


def test_code_identity_follows_the_source_files(tmp_path):
    # The digest is the package's .py files and the kernels': a copy of them gives the same
    # one (wherever the kernels lie: beside the package or in it), an edit another.
    import shutil

    import gpu_curate
    import gpu_curate.kernels
    from gpu_curate.cluster import _source_digest, code_identity

    ignored = shutil.ignore_patterns("__pycache__", "kernels")
    package = tmp_path / "gpu_curate"
    shutil.copytree(Path(gpu_curate.__file__).parent, package, ignore=ignored)
    kernels = tmp_path / "kernels"
    shutil.copytree(gpu_curate.kernels.__path__[0], kernels, ignore=ignored)
    assert _source_digest(str(package), str(kernels)) == code_identity()[1]
    (package / "kernels").symlink_to(kernels)  # (a source checkout's link)
    (package / "__pycache__").mkdir(exist_ok=True)
    (package / "__pycache__" / "x.py").write_text("# not source")
    assert _source_digest(str(package), str(package / "kernels")) == code_identity()[1]
    with open(kernels / "rowlogic.py", "a") as fh:
        fh.write("\n# a local change\n")
    assert _source_digest(str(package), str(kernels)) != code_identity()[1]


def test_more_worker_processes_than_four_a_core_is_refused(monkeypatch):
    # (--workers 500 --processes on 2 cores started 500 processes: no run within minutes.)
    import os

    from gpu_curate.errors import CurateError

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(CurateError) as caught:
        with open_client(resolve("cpu"), workers=9, processes=True):
            pass
    assert str(caught.value) == (
        "workers 9 processes=True: 9 worker processes on 2 cores; at most 8 (threads, without "
        "processes=True, may be more)"
    )
    with open_client(resolve("cpu"), workers=9) as (client, info):  # (threads)
        assert info.threads == 9


def test_paths_the_workers_of_a_scheduler_cannot_see_are_named(tmp_path):
    # (A path on one machine's own disk failed at the first part: "[Errno 2] No such file
    # or directory", naming no worker.) Workers on other machines are stand-ins here.
    from gpu_curate.cluster import ClusterInfo, check_shared
    from gpu_curate.errors import CurateError

    class Cluster:
        def __init__(self, sees):
            self.sees, self.asked = sees, []

        def run(self, function, path, on_error="raise"):
            self.asked.append(path)
            return {w: function(path) if w in self.sees else False for w in ("tcp://a", "tcp://b")}

    info = ClusterInfo("scheduler", 2, 2, "tcp://s:8786", "cpu")
    (tmp_path / "pool.parquet").write_bytes(b"")
    paths = [f"file://{tmp_path / 'pool.parquet'}", str(tmp_path), "s3://bucket/out"]
    both = Cluster({"tcp://a", "tcp://b"})
    check_shared(both, info, paths)
    assert both.asked == [str(tmp_path / "pool.parquet"), str(tmp_path)]  # (not the URL)
    with pytest.raises(CurateError) as caught:
        check_shared(Cluster({"tcp://a"}), info, paths)
    assert str(caught.value) == (
        f"the Dask worker tcp://b cannot see {tmp_path / 'pool.parquet'}: the workers of a "
        "cluster read the inputs and write the output themselves, so these must be on "
        "storage that every worker shares (a shared file system, or an fsspec URL such as "
        "s3://)"
    )
    local = ClusterInfo("local-threads", 1, 2, "inproc://x", "cpu")
    check_shared(Cluster(set()), local, paths)  # (a local cluster sees what this process sees)
