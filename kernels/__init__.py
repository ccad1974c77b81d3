"""Numba kernels of gpu-curate (installed as ``gpu_curate.kernels``).

``rowlogic.py`` holds the per-row token / hash / lookup logic as plain Python;
``compile.py`` compiles it for a target; ``cpu.py`` and ``gpu.py`` are the two builds with
their row-parallel drivers; ``tables.py`` compiles metadata into the lookup tables.
"""
