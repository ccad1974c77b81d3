"""Match texts against metadata: one string column in, CSR of matched entry ids out.

The kernels read the Arrow string layout (offsets, UTF-8 bytes, validity bitmap), which
pyarrow (host) and cuDF (device) share; this module only gets those buffers in and out.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from .backend import Backend, resolve
from .errors import CurateError
from .metadata import Metadata, MetadataLike
from .surrogates import without_surrogates

__all__ = ["match_arrow", "match_texts", "csr_to_lists"]


def _plain_strings(array: pa.Array) -> pa.Array:
    """The array in the offsets layout the kernels read: dictionaries decoded (to the strings
    they stand for), string views cast to large strings."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_string_view(array.type):
        array = array.cast(pa.large_string())
    return array


def _host_buffers(array: pa.Array):
    """(offsets n+1 absolute, data uint8, validity uint8 or empty, bit offset) of a string array."""
    array = _plain_strings(array)
    if pa.types.is_string(array.type):
        off_type = np.int32
    elif pa.types.is_large_string(array.type):
        off_type = np.int64
    else:
        raise CurateError(f"texts must be strings, got an Arrow column of type {array.type}")
    n = len(array)
    validity_buf, offsets_buf, data_buf = array.buffers()[:3]
    if offsets_buf is None or n == 0:
        offsets = np.zeros(n + 1, off_type)
    else:
        offsets = np.frombuffer(offsets_buf, off_type)[array.offset : array.offset + n + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    if array.null_count and validity_buf is not None:
        validity = np.frombuffer(validity_buf, np.uint8)
    else:
        validity = np.zeros(0, np.uint8)
    return offsets, data, validity, array.offset


def _chunks(array) -> list[pa.Array]:
    if isinstance(array, pa.ChunkedArray):
        return list(array.chunks) or [pa.array([], array.type)]
    if isinstance(array, pa.Array):
        return [array]
    raise CurateError(f"expected a pyarrow string array, got {type(array).__name__}")


def _concat_csr(xp, parts):
    if len(parts) == 1:
        return parts[0]
    offsets = [parts[0][0]]
    total = int(parts[0][0][-1])
    for ro, _ in parts[1:]:
        offsets.append(ro[1:] + total)
        total += int(ro[-1])
    return xp.concatenate(offsets), xp.concatenate([ids for _, ids in parts])


def match_arrow(array, metadata: MetadataLike, backend: str | Backend = "auto"):
    """Match each text of a pyarrow string column against the metadata.

    Parameters
    ----------
    array
        ``pa.StringArray``, ``pa.LargeStringArray`` (or string view) or a ``ChunkedArray``
        of those; nulls allowed (they match nothing).
    metadata
        A :class:`Metadata`, a list of entry strings, or a metadata file's path.
    backend
        "auto", "cpu" or "gpu". On gpu the buffers are copied to the device.

    Returns
    -------
    (row_offsets, entry_ids)
        CSR: the ids matched by text ``i`` are ``entry_ids[row_offsets[i]:row_offsets[i+1]]``,
        distinct and ascending. ``row_offsets`` is int64 (n + 1), ``entry_ids`` int32;
        NumPy arrays on cpu, CuPy arrays on gpu.

    Examples
    --------
    >>> import pyarrow as pa
    >>> ro, ids = match_arrow(pa.array(["a new york dog", None]), ["dog", "new york"], "cpu")
    >>> ro.tolist(), ids.tolist()
    ([0, 2, 2], [0, 1])
    """
    md = Metadata.coerce(metadata)
    be = resolve(backend)
    chunks = _chunks(array)
    if be.is_gpu and len(chunks) > 1:
        from .kernels.gpu import TILE_BYTES

        chunks = _joined(chunks, TILE_BYTES)
    parts = [_match_chunk(chunk, md, be) for chunk in chunks]
    return _concat_csr(be.xp, parts)


def _text_bytes(array: pa.Array) -> int:
    """Bytes of text that the rows of a plain string array span (0 for other types, which
    the kernels refuse)."""
    if pa.types.is_string(array.type):
        off_type = np.int32
    elif pa.types.is_large_string(array.type):
        off_type = np.int64
    else:
        return 0
    if len(array) == 0 or array.buffers()[1] is None:
        return 0
    offsets = np.frombuffer(array.buffers()[1], off_type)
    return int(offsets[array.offset + len(array)] - offsets[array.offset])


def _joined(chunks: list[pa.Array], limit: int) -> list[pa.Array]:
    """Consecutive chunks joined (a host copy) into arrays of up to about ``limit`` text
    bytes.

    A device call costs a host-to-device copy, several launches and a synchronisation, and
    a part often arrives as many small chunks: a pack of small files, or a file written in
    small row groups. Joined, it takes one call per tile of the kernel (``limit``) instead
    of one per chunk. A chunk larger than ``limit`` stays as it is (the kernel tiles it).
    """
    out: list[pa.Array] = []
    group: list[pa.Array] = []
    size = 0
    for chunk in map(_plain_strings, chunks):
        nbytes = _text_bytes(chunk)
        if group and size + nbytes > limit:
            out.append(pa.concat_arrays(group) if len(group) > 1 else group[0])
            group, size = [], 0
        group.append(chunk)
        size += nbytes
    out.append(pa.concat_arrays(group) if len(group) > 1 else group[0])
    return out


def _match_chunk(chunk: pa.Array, md: Metadata, be: Backend):
    offsets, data, validity, bit_offset = _host_buffers(chunk)
    if be.is_gpu:
        return _match_on_device(offsets, data, validity, bit_offset, md, be.xp)
    from .kernels import cpu

    return cpu.match_rows(offsets, data, validity, bit_offset, md.tables)


def _match_on_device(offsets, data, validity, bit_offset, md, xp):
    """Copy host Arrow buffers to the device (only the rows' bytes) and match there."""
    from .kernels import gpu

    lo = int(offsets[0]) if len(offsets) else 0
    hi = int(offsets[-1]) if len(offsets) else 0
    # xp.array copies: to the device with CuPy, and off Arrow's read-only memory under the
    # simulator (NumPy), whose kernels write their arguments back.
    d_offsets = xp.array(offsets.astype(np.int64) - lo)
    d_data = xp.array(data[lo:hi] if hi > lo else np.zeros(1, np.uint8))
    if validity.size:
        d_validity = xp.array(validity[bit_offset // 8 :])
        bit_offset = bit_offset % 8
    else:
        d_validity = xp.zeros(0, np.uint8)
    return gpu.match_rows(d_offsets, d_data, d_validity, bit_offset, device_tables(md, xp), xp)


class DeviceTables:
    """The metadata's lookup tables copied to the device once."""

    def __init__(self, tables, xp) -> None:
        self.vt = xp.asarray(tables.vt)
        self.vmask = tables.vmask
        self.vbloom = xp.asarray(tables.vbloom)
        self.bmask = tables.bmask
        self.long_data = xp.asarray(tables.long_data)
        self.et = xp.asarray(tables.et)
        self.emask = tables.emask


_DEVICE_TABLES: dict[tuple[str, str, int], DeviceTables] = {}
_DEVICE_LOCK = threading.Lock()


def device_tables(md: Metadata, xp) -> DeviceTables:
    """Device copy of ``md``'s tables, cached per process, metadata, array module and
    device (a notebook may switch with ``cupy.cuda.Device(1)``)."""
    device = xp.cuda.runtime.getDevice() if hasattr(xp, "cuda") else -1
    key = (md.fingerprint, xp.__name__, device)
    with _DEVICE_LOCK:
        if key not in _DEVICE_TABLES:
            _DEVICE_TABLES.clear()  # one metadata at a time on a device is the normal case
            _DEVICE_TABLES[key] = DeviceTables(md.tables, xp)
        return _DEVICE_TABLES[key]


def match_cudf(series, metadata: MetadataLike):
    """Match a cuDF string Series on the device, without leaving it.

    Returns CuPy ``(row_offsets, entry_ids)``, or None for a Series that is not a string
    column (a categorical one: its column holds the codes). Reads the column's device
    buffers through pylibcudf (cuDF 26.x: ``Series.to_pylibcudf()``).
    """
    import cupy

    from .kernels import gpu

    md = Metadata.coerce(metadata)
    buffers = cudf_string_buffers(series)
    if buffers is None:
        return None
    offsets, data, validity, bit_offset = buffers
    return gpu.match_rows(offsets, data, validity, bit_offset, device_tables(md, cupy), cupy)


def cudf_string_buffers(series):
    """Device (offsets: the n+1 absolute int64 offsets of the column's rows, chars uint8,
    validity uint8, bit offset) of a cuDF string Series, or None if its column is not
    strings: the only place that knows cuDF's column internals."""
    import cupy
    import pylibcudf as plc

    col = series.to_pylibcudf()
    if isinstance(col, tuple):  # some versions return (column, metadata)
        col = col[0]
    if col.type().id() != plc.TypeId.STRING:
        return None
    n = col.size()
    if n == 0 or not col.children():
        # (pylibcudf makes an empty or all-null string column without an offsets child.)
        mask = col.null_mask() if n and col.null_count() else None
        validity = cupy.zeros(0, np.uint8) if mask is None else cupy.asarray(mask).view(np.uint8)
        return cupy.zeros(n + 1, np.int64), cupy.zeros(1, np.uint8), validity, col.offset()
    off_col = col.children()[0]
    # (Compared as the enum: TypeId is an IntEnum, whose str() is its number on Python >=
    # 3.11, so a test on the name's text would take large strings' INT64 offsets for INT32.)
    off_dtype = np.int64 if off_col.type().id() == plc.TypeId.INT64 else np.int32
    all_offsets = cupy.asarray(off_col.data()).view(off_dtype)
    first = off_col.offset() + col.offset()
    offsets = all_offsets[first : first + n + 1].astype(np.int64)
    chars = col.data()
    data = cupy.asarray(chars).view(np.uint8) if chars is not None else cupy.zeros(1, np.uint8)
    mask = col.null_mask()
    if mask is not None and col.null_count() > 0:
        validity = cupy.asarray(mask).view(np.uint8)
    else:
        validity = cupy.zeros(0, np.uint8)
    return offsets, data, validity, col.offset()


def csr_to_lists(row_offsets, entry_ids) -> list[list[int]]:
    """CSR (host or device) to a list of lists of ints."""
    ro = row_offsets.get() if hasattr(row_offsets, "get") else np.asarray(row_offsets)
    ids = (entry_ids.get() if hasattr(entry_ids, "get") else np.asarray(entry_ids)).tolist()
    return [ids[ro[i] : ro[i + 1]] for i in range(len(ro) - 1)]


def _to_arrow(texts) -> pa.Array | pa.ChunkedArray:
    if isinstance(texts, pa.Array | pa.ChunkedArray):
        return texts
    module = type(texts).__module__
    if module.startswith("pandas"):
        try:
            return pa.array(texts, from_pandas=True, type=pa.large_string())
        except UnicodeEncodeError:
            fixed = without_surrogates(texts.tolist())
            return pa.array(fixed, from_pandas=True, type=pa.large_string())
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise CurateError(f"texts must be strings (or null): {exc}") from None
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        raise CurateError("texts must be a list of strings, a Series or an Arrow array")
    # (A float NaN is pandas' missing value: what Series.tolist() gives for one.)
    texts = [None if isinstance(t, float) and t != t else t for t in texts]
    bad = [i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)]
    if bad:
        raise CurateError(
            f"texts must be strings or None; item {bad[0]} is {type(texts[bad[0]]).__name__}"
        )
    try:
        return pa.array(texts, type=pa.large_string())
    except UnicodeEncodeError:
        return pa.array(without_surrogates(texts), type=pa.large_string())


def match_texts(texts, metadata: MetadataLike, backend: str | Backend = "auto"):
    """Matched entry ids of each text, as a list of lists (for notebooks and tests).

    Parameters
    ----------
    texts
        A list of str (None allowed), a pandas Series, a pyarrow array, or a cuDF Series.
    metadata
        A :class:`Metadata`, a list of entry strings, or a metadata file's path.
    backend
        "auto", "cpu" or "gpu".

    Examples
    --------
    >>> match_texts(["New York, new york!", "a dog's life", None], ["new york", "dog"], "cpu")
    [[0], [], []]
    """
    if type(texts).__module__.startswith("cudf"):
        be = resolve(backend if backend != "auto" else "gpu")
        if be.is_gpu and (found := match_cudf(texts, metadata)) is not None:
            return csr_to_lists(*found)
        # (Through Arrow, on the host: a categorical Series' strings are its dictionary.)
        texts, backend = texts.to_arrow(), be
    return csr_to_lists(*match_arrow(_to_arrow(texts), metadata, backend))
