"""Putting the sources together into one metadata list, and writing it.

Order of the entries (entry id = list index), which is what makes a build reproducible:

1. the numbers ``"0"`` .. ``"99"``;
2. WordNet synset names, in file order (noun, verb, adj, adv; offset order inside a file);
3. unigrams by count (descending), then word;
4. bigrams by PMI (descending), then text;
5. Wikipedia titles by views (descending), then title.

Ties are broken by comparing the strings by Unicode code point. On the way, single
punctuation characters (``string.punctuation``, as MetaCLIP's ``forbidden`` set), empty or
whitespace-only strings and strings that no text can match (``unmatchable``: one holding a
tab or a line break, which the matcher reads as spaces, or one of ``, . ; : ? ! ``` next to
another character, as in ``"washington, d.c."``, since MetaCLIP's ``spacing`` puts a space
on each side of those in every text) are dropped, and every later copy of an entry (within
or across sources) is dropped: an entry keeps the earliest position it has. When more than
``max_entries`` are left, the list is cut after the first ``max_entries``: the entries cut
are the *last* in this order (the lowest-viewed titles first, then the lowest-PMI bigrams,
and so on).
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CurateError
from ..io import write_atomic
from ..kernels.tables import entry_tokens
from ..metadata import sources_path_for

#: MetaCLIP's ``forbidden`` set: an entry that is one of these characters is dropped.
PUNCTUATION = frozenset(string.punctuation)

#: Source names, in the order their entries are listed.
SOURCE_ORDER = ("numbers", "wordnet", "unigrams", "bigrams", "titles")


def numbers() -> list[str]:
    """The entries ``"0"`` .. ``"99"`` that MetaCLIP's metadata starts from.

    Examples
    --------
    >>> numbers()[:3], len(numbers())
    (['0', '1', '2'], 100)
    """
    return [str(i) for i in range(100)]


@dataclass
class SourceTally:
    """What became of one source's candidates (all counts are of strings).

    ``candidates`` = ``kept`` + ``duplicate`` + ``punctuation`` + ``blank`` +
    ``unmatchable`` + ``cut``.
    """

    candidates: int = 0
    kept: int = 0
    duplicate: int = 0
    punctuation: int = 0
    blank: int = 0
    unmatchable: int = 0
    cut: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Assembled:
    """The assembled entries and, per source, a :class:`SourceTally`."""

    entries: list[str]
    tallies: dict[str, SourceTally] = field(default_factory=dict)


def assemble(
    sources: Iterable[tuple[str, Iterable[str]]], max_entries: int | None = 500_000
) -> Assembled:
    """Merge ordered sources into one entry list: filter, dedupe, cap.

    Parameters
    ----------
    sources
        ``(name, strings)`` pairs, each already in its own order, in list order.
    max_entries
        Keep at most this many entries (the first ones); None keeps all.

    Returns
    -------
    Assembled

    Examples
    --------
    >>> unigrams = ["dog", "1", ".", " ", "a\\tb", "e.g.", "cat"]
    >>> a = assemble([("numbers", ["0", "1"]), ("unigrams", unigrams)], 3)
    >>> a.entries
    ['0', '1', 'dog']
    >>> t = a.tallies["unigrams"]
    >>> t.candidates, t.kept, t.duplicate, t.punctuation, t.blank, t.unmatchable, t.cut
    (7, 1, 1, 1, 1, 2, 1)
    """
    if max_entries is not None and max_entries < 1:
        raise CurateError(f"max_entries must be at least 1, not {max_entries}")
    seen: set[str] = set()
    entries: list[str] = []
    tallies: dict[str, SourceTally] = {}
    for name, strings in sources:
        tally = tallies.setdefault(name, SourceTally())
        for entry in strings:
            tally.candidates += 1
            if not isinstance(entry, str):
                raise CurateError(f"source {name!r} gave a non-string entry {entry!r}")
            if not entry.strip():
                tally.blank += 1
            elif entry in PUNCTUATION:
                tally.punctuation += 1
            elif entry_tokens(entry) is None:
                # (A tab, or a wrap character next to another character: "washington,
                # d.c." can match no text under MetaCLIP's rule, and would take a place
                # under max_entries.)
                tally.unmatchable += 1
            elif entry in seen:
                tally.duplicate += 1
            elif max_entries is not None and len(entries) >= max_entries:
                # Counted as cut, and remembered, so that a later copy is a duplicate.
                seen.add(entry)
                tally.cut += 1
            else:
                seen.add(entry)
                entries.append(entry)
                tally.kept += 1
    return Assembled(entries, tallies)


def check_entries(entries: Sequence[str]) -> None:
    """Raise :class:`CurateError` unless ``entries`` is valid MetaCLIP metadata.

    The rules of ``gpu_curate.metadata``: distinct strings, none empty or whitespace-only.

    Examples
    --------
    >>> check_entries(["dog", "cat"])
    >>> check_entries(["dog", "dog"])
    Traceback (most recent call last):
    ...
    gpu_curate.errors.CurateError: entry 'dog' appears twice (ids 0 and 1)
    """
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, str) or not entry.strip():
            raise CurateError(f"entry {entry!r} (id {i}) is not a non-blank string")
        if entry in first:
            raise CurateError(f"entry {entry!r} appears twice (ids {first[entry]} and {i})")
        first[entry] = i


def encode_metadata(entries: Sequence[str]) -> bytes:
    """MetaCLIP's file format: one JSON list of strings, UTF-8, non-ASCII kept as is.

    Examples
    --------
    >>> encode_metadata(["dog", "café"]).decode()
    '["dog", "café"]'
    """
    return json.dumps(list(entries), ensure_ascii=False).encode("utf-8")


def write_metadata(
    entries: Sequence[str], out: str | os.PathLike, report: dict[str, Any]
) -> tuple[Path, Path]:
    """Write the metadata file and its ``.sources.json`` sidecar, each atomically.

    The sidecar is ``report`` with the output's file name, entry count and SHA-256 added
    after its first two keys; an earlier sidecar is removed before the metadata file is
    written, and the new one written after it.

    Returns
    -------
    (Path, Path)
        The metadata file and the sidecar.

    Examples
    --------
    >>> write_metadata(["dog"], "metadata.json", {"sources": {}})  # doctest: +SKIP
    (PosixPath('metadata.json'), PosixPath('metadata.sources.json'))
    """
    check_entries(entries)
    data = encode_metadata(entries)
    out_path = Path(out)
    sidecar = sources_path_for(out_path)
    # The report's own leading keys (format, version) stay first; the file facts follow.
    full = {key: report[key] for key in list(report)[:2]}
    full.update(
        metadata_file=out_path.name,
        entries=len(entries),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    full.update(report)
    # An interrupted build must not leave an earlier build's sidecar describing the new
    # metadata file: it goes first (no sidecar until the new one is written).
    if sidecar.is_dir():
        raise CurateError(f"{sidecar} is a folder: the metadata's sidecar goes there")
    sidecar.unlink(missing_ok=True)
    write_atomic(out_path, data)
    text = json.dumps(full, ensure_ascii=False, indent=2) + "\n"
    write_atomic(sidecar, text.encode("utf-8"))
    return out_path, sidecar
