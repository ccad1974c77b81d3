"""The local Dask clusters that gpu-curate starts for a run."""

from __future__ import annotations

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
