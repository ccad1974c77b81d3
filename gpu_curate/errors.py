"""Errors that the CLI reports as one clear line (no traceback unless --debug).

A message names an option through :func:`option`, as the command line spells it
(``--overwrite``); shown to a Python caller it names the argument (``overwrite=True``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# Marks an option's name in a message until the message is shown. The process that shows
# it chooses the spelling (the CLI sets its own in `spelled`); a local cluster's worker
# processes keep the marks ("kept"), so that what they raise is spelled by the process
# that reports it.
_MARK = "\x1f"
_spelling = "python"
# Flags without a value: a Python caller passes them as True.
_SWITCHES = frozenset(["--overwrite", "--resume", "--processes", "--keep-unmatched", "--quiet"])


def option(flag: str) -> str:
    """``flag`` (``"--overwrite"``) marked in a message: the CLI shows it as it is, a Python
    caller as the argument it stands for.

    Examples
    --------
    >>> str(CurateError(f"use {option('--overwrite')} to replace it"))
    'use overwrite=True to replace it'
    >>> with spelled("cli"):
    ...     str(CurateError(f"choose another {option('--out')}"))
    'choose another --out'
    """
    return f"{_MARK}{flag}{_MARK}"


def spelled_out(message: str) -> str:
    """``message`` with its marked options spelled for this process (see :func:`option`)."""
    if _MARK not in message or _spelling == "kept":
        return message
    pieces = message.split(_MARK)
    for i in range(1, len(pieces), 2):  # (the marked names)
        flag = pieces[i]
        if _spelling == "python":
            name = flag.removeprefix("--").replace("-", "_")
            pieces[i] = f"{name}=True" if flag in _SWITCHES else name
    return "".join(pieces)


# The options messages name most.
OVERWRITE, RESUME, OUT = option("--overwrite"), option("--resume"), option("--out")


@contextlib.contextmanager
def spelled(spelling: str) -> Iterator[None]:
    """Options in messages spelled ``"cli"`` (``--overwrite``), ``"python"``
    (``overwrite=True``) or ``"kept"`` (marked, for the process that shows them) inside."""
    global _spelling
    before, _spelling = _spelling, spelling
    try:
        yield
    finally:
        _spelling = before


def keep_marks() -> None:
    """For a worker process: leave the options marked (the client spells them)."""
    global _spelling
    _spelling = "kept"


class CurateError(Exception):
    """Bad input or a run that cannot go on; the message names the problem."""

    def __str__(self) -> str:
        return spelled_out(super().__str__())


class MetadataError(CurateError, ValueError):
    """A metadata file or list that is not valid MetaCLIP metadata."""


class ArgumentError(CurateError, ValueError):
    """An argument out of its range (``t``, for one): one line in the CLI, a ValueError
    to a library caller."""


class NullIdError(CurateError):
    """A null value in an id column; ``row`` is the first one's row in its file (or, in
    the dataframe API, its partition), for a caller to place it otherwise."""

    def __init__(self, message: str, row: int):
        super().__init__(message)
        self.row = row

    def __reduce__(self):  # (raised on a worker process, it travels pickled)
        return type(self), (self.args[0], self.row)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a run wrote its output folder: ``hint`` says what the user can do next
    (the CLI prints it). A KeyboardInterrupt, as Ctrl-C is to any caller."""

    @property
    def hint(self) -> str:
        return spelled_out(self.args[0])

    def __str__(self) -> str:
        return spelled_out(super().__str__())


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and its noun, in the singular for one: messages say "1 part", "3 parts".

    Examples
    --------
    >>> counted(1, "part"), counted(1200, "part"), counted(2, "entry", "entries")
    ('1 part', '1,200 parts', '2 entries')
    """
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def whole_number(value, name: str, at_least: int = 1) -> int:
    """``value`` as an int: an integer, or a float without a fraction (``5e3``), of at
    least ``at_least``; a :class:`CurateError` naming ``name`` if not (``True`` and
    ``"100"`` are slips, not numbers).

    Examples
    --------
    >>> whole_number(5e3, "--partition-rows")
    5000
    """
    import numbers

    if isinstance(value, bool):
        number = None
    elif isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, numbers.Real) and float(value).is_integer():
        number = int(value)
    else:
        number = None
    if number is None or number < at_least:
        raise CurateError(f"{name} must be a whole number of at least {at_least}, got {value!r}")
    return number


def path_argument(value, name: str) -> str:
    """``value`` (a str or an ``os.PathLike``) as a str, or an :class:`ArgumentError` naming
    the argument ``name`` (None, a number, bytes: a slip, which read as a path failed far
    from the call, or as bytes named "input not found: 47").

    Examples
    --------
    >>> from pathlib import Path
    >>> path_argument(Path("out"), "out")
    'out'
    """
    import os

    if isinstance(value, str | os.PathLike):
        text = os.fspath(value)
        if isinstance(text, str):
            return text
    raise ArgumentError(f"{name} must be a path (a str or os.PathLike), got {value!r}")


def switch_argument(value, name: str) -> bool:
    """``value`` as a bool, or an :class:`ArgumentError` naming the argument ``name`` unless
    it is True or False (NumPy's too): any truthy value taken for True made
    ``overwrite="False"`` replace a finished run.

    Examples
    --------
    >>> switch_argument(True, "overwrite")
    True
    """
    import numpy as np

    if not isinstance(value, bool | np.bool_):
        raise ArgumentError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty).

    Readers' errors (Arrow's, for one) may run over several lines; the CLI reports an error
    as one line.

    Parameters
    ----------
    exc : BaseException
        The error caught.

    Returns
    -------
    str
        Its message's first line.

    Examples
    --------
    >>> first_line(ValueError("bad magic number\\nfile footer: ..."))
    'bad magic number'
    >>> first_line(OSError())
    'OSError'
    >>> print(first_line(ValueError("got 2: \\x08\\x00,")))
    got 2: \\x08\\x00,
    """
    lines = str(exc).splitlines()
    if not lines:
        return type(exc).__name__
    # (A reader may quote the bytes of a binary file read as text: a terminal would take
    # its control characters as its own.)
    return "".join(c if c.isprintable() or c in ("\t", _MARK) else repr(c)[1:-1] for c in lines[0])


def cannot_read(what: object, exc: BaseException, hint: str | None = None) -> CurateError:
    """The error ``cannot read WHAT: <first line of exc>``, for a file a reader failed on.

    Raise it ``from None``: the reader's traceback says no more than its first line.

    Parameters
    ----------
    what : object
        The file (a path, or words that name it: ``"the matched part PATH"``).
    exc : BaseException
        The reader's error.
    hint : str, optional
        What to do about it, added in parentheses.

    Returns
    -------
    CurateError
        The error to raise.

    Examples
    --------
    >>> str(cannot_read("a.parquet", OSError("no such file"), hint="match again"))
    'cannot read a.parquet: no such file (match again)'
    """
    message = f"cannot read {what}: {first_line(exc)}"
    return CurateError(f"{message} ({hint})" if hint else message)
