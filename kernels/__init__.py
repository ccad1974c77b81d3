"""Numba kernels of gpu-curate (installed as ``gpu_curate.kernels``).

``rowlogic.py`` holds the per-row token / hash / lookup logic as plain Python;
``compile.py`` compiles it for a target; ``cpu.py`` (rows in parallel) and ``gpu.py``
(tokens in parallel) are the two builds with their drivers; ``tables.py`` compiles
metadata into the lookup tables.
"""
