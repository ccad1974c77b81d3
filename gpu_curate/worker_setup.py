"""Dask preload of the worker processes that gpu-curate's local clusters start.

Ctrl-C in a terminal reaches the whole process group: the worker processes ignore it and
leave it to the gpu-curate process, which reports it in one line and closes the cluster.
"""

from __future__ import annotations

import signal
import threading


def dask_setup(worker) -> None:
    """Called by Dask in each worker process at start (the ``preload`` cluster.py passes)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
