"""``python -m gpu_curate``: the ``gpu-curate`` command line."""

from .cli import main

main(prog_name="gpu-curate")
