"""``python -m gpu_curate`` and the ``gpu-curate`` command: the launcher of :mod:`.cli`."""

import signal
import sys


def run() -> None:
    """Import the command line and run it; a Ctrl-C or SIGTERM during the imports (a
    second or so of NumPy, Arrow and click) ends in one line, as it does once the command
    runs (a SIGTERM there killed the process without a word)."""
    terminated: list[int] = []

    def stop(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write(f"gpu-curate: {'terminated' if terminated else 'interrupted'}\n")
        sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
    finally:
        signal.signal(signal.SIGTERM, previous)
    main(prog_name="gpu-curate")


if __name__ == "__main__":
    run()
