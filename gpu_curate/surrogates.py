"""Lone surrogates in Python strings, which no UTF-8 holds, made U+FFFD.

A Python string can hold them (a pandas column built from UTF-16 data, a JSON string
with an escaped ``"\\ud83d"``, half an emoji); Arrow's strings cannot. They are replaced
as the readers replace invalid UTF-8: the text stays a text and matches what its other
characters match.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def without_surrogate(text: str) -> str:
    """``text`` with each lone surrogate as U+FFFD.

    Examples
    --------
    >>> without_surrogate("a \\ud83d dog") == "a \\ufffd dog"
    True
    """
    # (Each on its own: a UTF-16 round trip would join a high and a low one into the
    # character they would encode, a text the string does not hold.)
    return _SURROGATE.sub("\ufffd", text)


def without_surrogates(texts: list) -> list:
    """The strings of ``texts`` with each lone surrogate as U+FFFD; items that are not
    strings (None) are kept as they are.

    Examples
    --------
    >>> without_surrogates(["a \\ud800 dog", None]) == ["a \\ufffd dog", None]
    True
    """
    return [_SURROGATE.sub("\ufffd", t) if isinstance(t, str) else t for t in texts]
