"""Dask preload of the worker processes that gpu-curate's local clusters start.

Ctrl-C in a terminal reaches the whole process group: the worker processes ignore it and
leave it to the gpu-curate process, which reports it in one line and closes the cluster.
"""

from __future__ import annotations

import signal
import threading

from .errors import keep_marks


def dask_setup(worker) -> None:
    """Called by Dask in each worker process at start (the ``preload`` cluster.py passes)."""
    # (In the main thread: a worker process of its own, not a worker of this process's
    # in-process cluster.)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # What a task raises is shown by the process that started the run, in its spelling
        # of the options (the command line's or the Python API's).
        keep_marks()
