"""``python -m gpu_curate`` and the ``gpu-curate`` command: the launcher of :mod:`.cli`."""

import sys


def run() -> None:
    """Import the command line and run it; a Ctrl-C during the imports (a second or so of
    NumPy, Arrow and click) ends in one line, as it does once the command runs."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write("gpu-curate: interrupted\n")
        sys.exit(130)
    main(prog_name="gpu-curate")


if __name__ == "__main__":
    run()
