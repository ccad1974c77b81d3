"""Click options that several ``gpu-curate`` commands share, each defined once.

They live outside ``cli.py`` because ``plan``, ``report`` and ``metadata build`` define
their commands in their own modules, which ``cli.py`` imports.
"""

from __future__ import annotations

import math

import click

from .backend import BACKENDS
from .balance import check_seed, check_t
from .errors import CurateError
from .io import COMPRESSIONS


def backend_option(default: str = "auto", help: str | None = None):
    """The ``--backend auto|cpu|gpu`` option, with a command's own default and help.

    Examples
    --------
    >>> @click.command()
    ... @backend_option(default="cpu")
    ... def f(backend): ...
    >>> f.params[0].default
    'cpu'
    """
    return click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default=default,
        show_default=True,
        help=help
        or "gpu: the CUDA kernel and CuPy draws; cpu: the CPU kernel and NumPy; "
        "auto: gpu if usable.",
    )


def compression_option():
    """The ``--compression`` option: the codec of the Parquet parts a command writes."""
    return click.option(
        "--compression",
        type=click.Choice(COMPRESSIONS),
        default="zstd",
        show_default=True,
        help="Codec of the Parquet parts written (lz4/none: faster, bigger files); "
        "a --resume must give the run's codec.",
    )


def seed_option(help: str = "Integer seed of the draws."):
    """The ``--seed`` option (default ``"0"``), with a command's own help.

    The seed is taken as text, for :func:`seed_number` to check (an
    integer in 0 .. 2**64 - 1): every command refuses a bad seed with the same message.

    Examples
    --------
    >>> @click.command()
    ... @seed_option()
    ... def f(seed): ...
    >>> f.params[0].default
    '0'
    """
    return click.option("--seed", default="0", show_default=True, help=help)


def threshold(t: str | float) -> float:
    """``--t`` (text on the command line) as the number the API takes; a one-line
    :class:`~gpu_curate.errors.CurateError` for anything else.

    Examples
    --------
    >>> threshold("2e4")
    20000.0
    """
    try:
        value = float(t)
    except ValueError:
        raise CurateError(f"t must be a number, got {t!r}") from None
    except OverflowError:  # (an int of more digits than a float holds)
        value = math.inf
    try:
        return check_t(value)
    except CurateError:
        raise CurateError(f"t must be a positive finite number, got {t}") from None


def seed_number(seed: str | int) -> int:
    """``--seed`` (text on the command line) as the integer the API takes; a one-line
    :class:`~gpu_curate.errors.CurateError` for anything else (in base 10, 0 .. 2**64 - 1).

    Examples
    --------
    >>> seed_number("7")
    7
    """
    try:
        value = int(str(seed), 10)
    except ValueError:
        raise CurateError(f"seed must be an integer, got {seed!r}") from None
    return check_seed(value)
