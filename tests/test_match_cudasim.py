"""The CUDA kernels under the Numba CUDA simulator: GPU CSR == CPU CSR, exactly.

Run with ``NUMBA_ENABLE_CUDASIM=1 pytest -m cudasim tests/test_match_cudasim.py`` (the
variable must be set before numba is imported). A normal test run does that in a
subprocess (tests/test_cudasim_subprocess.py); in-process without the variable these tests
skip. The simulator runs every GPU thread as Python, so inputs stay small.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pyarrow as pa
import pytest
from conftest import MATCH_KERNELS, reference_match
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip(
        "needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported "
        "(tests/test_cudasim_subprocess.py runs this file that way)",
        allow_module_level=True,
    )

pytestmark = [
    pytest.mark.cudasim,
    # uint64 hashing wraps around on purpose; under the simulator that is NumPy scalar maths.
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]

LONG = "abcdefghijklmnop"  # 16 bytes: stored as hash + length, confirmed byte by byte


def gpu_csr(arr: pa.Array, md):
    """The CUDA build's CSR of one Arrow string array, under the simulator."""
    from gpu_curate.match import _host_buffers, _match_on_device

    ro, ids = _match_on_device(*_host_buffers(arr), md, np)
    return np.asarray(ro), np.asarray(ids)


def cpu_csr(arr: pa.Array, md):
    from gpu_curate.match import match_arrow

    return match_arrow(arr, md, "cpu")


def assert_same_csr(arr: pa.Array, md) -> tuple[np.ndarray, np.ndarray]:
    g_ro, g_ids = gpu_csr(arr, md)
    c_ro, c_ids = cpu_csr(arr, md)
    assert g_ro.dtype == np.int64 and g_ids.dtype == np.int32
    assert g_ro.shape == (len(arr) + 1,)
    np.testing.assert_array_equal(g_ro, c_ro)
    np.testing.assert_array_equal(g_ids, c_ids)
    return g_ro, g_ids


def lists(ro, ids) -> list[list[int]]:
    return [ids[ro[i] : ro[i + 1]].tolist() for i in range(len(ro) - 1)]


def test_simulator_is_active():
    from numba import config

    assert config.ENABLE_CUDASIM


# ----------------------------------------------------------------------------- built texts

ENTRIES = [
    "dog",
    "new york",
    "new york city",
    "york",
    "café",
    "東京",
    "😀",
    "a b a",
    "rock , paper",
    ",",
    " leading",
    "trailing ",
    "(dog)",
    "dog's",
    LONG,
    "abcdefghijklmnoq",
    LONG + " abcdefghijklmnoq",
    "ñ" * 8,
    "Washington, D.C.",
    "x  y",
]
WORDS = [
    "dog",
    "Dog",
    "new",
    "york",
    "city",
    "café",
    "東京",
    "😀",
    "a",
    "b",
    "rock",
    "paper",
    "(dog)",
    "dog's",
    "leading",
    "trailing",
    LONG,
    "abcdefghijklmnoq",
    "abcdefghijklmnoX",
    "ñ" * 8,
    "Washington",
    "x",
    "y",
]
SEPS = [" "] * 10 + ["  ", ",", ", ", ".", "\t", "\n", "\r\n", "!", "`", ";", ":", "?"]


def built_texts(n: int, seed: int) -> list[str | None]:
    rng = random.Random(seed)
    out: list[str | None] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.05:
            out.append(None)
        elif r < 0.08:
            out.append("")
        else:
            k = rng.randint(1, 10)
            text = "".join(rng.choice(WORDS) + rng.choice(SEPS) for _ in range(k))
            out.append(rng.choice(["", " ", ","]) + text[: rng.randint(len(text) - 2, len(text))])
    return out


def test_built_texts_gpu_equals_cpu():
    from gpu_curate.metadata import Metadata

    md = Metadata(ENTRIES)
    texts = built_texts(300, seed=1)
    ro, ids = assert_same_csr(pa.array(texts), md)
    # And both equal the spec, computed independently.
    assert lists(ro, ids) == [reference_match(t, ENTRIES) for t in texts]
    assert ids.size > 300  # not vacuous


def test_long_tokens():
    from gpu_curate.metadata import Metadata

    entries = ["abcdefghijklmno", LONG, "abcdefghijklmnoq", LONG + "q", "x" * 40, "日本語日本語"]
    texts = [
        LONG,
        "abcdefghijklmnoq",
        "abcdefghijklmnoX",  # same length, other bytes
        LONG + "q",
        "abcdefghijklmno",
        "x" * 40,
        "x" * 39 + "y",
        f"({LONG}) {LONG}, 日本語日本語.",
        "日本語日本",
    ]
    ro, ids = assert_same_csr(pa.array(texts, pa.large_string()), Metadata(entries))
    assert lists(ro, ids) == [reference_match(t, entries) for t in texts]


def test_rows_of_more_occurrences_than_the_insertion_sort_takes():
    # sort_unique sorts up to 24 occurrences by insertion and more with a heap: rows of
    # 23 to 80 occurrences (repeats among them), in shuffled order, cross both paths.
    from gpu_curate.metadata import Metadata

    words = [f"w{i:02d}" for i in range(40)]
    rng = random.Random(7)
    texts = []
    for n in (23, 24, 25, 26, 40, 80):
        drawn = [rng.choice(words) for _ in range(n)]
        texts.append(" ".join(drawn))
    ro, ids = assert_same_csr(pa.array(texts), Metadata(words))
    assert lists(ro, ids) == [reference_match(t, words) for t in texts]
    assert max(len(t.split()) for t in texts) == 80


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()], ids=["int32", "int64"])
def test_sliced_arrays_with_nulls(typ):
    from gpu_curate.metadata import Metadata

    md = Metadata(ENTRIES)
    texts = built_texts(60, seed=2)
    texts[3] = texts[11] = texts[17] = texts[40] = None
    base = pa.array(texts, typ)
    for start, length in [(3, 10), (1, 16), (9, 30), (17, 1), (0, 60), (59, 1), (20, 0)]:
        arr = base.slice(start, length)
        ro, ids = assert_same_csr(arr, md)
        expected = [reference_match(t, ENTRIES) for t in texts[start : start + length]]
        assert lists(ro, ids) == expected, (start, length)


def _array_with_bytes_under_a_null(buffer):
    """["dog", None, "dog"] where the null slot spans the bytes "cat"."""
    offsets = np.array([0, 3, 6, 9], np.int32).tobytes()
    parts = [buffer(bytes([0b101])), buffer(offsets), buffer(b"dogcatdog")]
    arr = pa.Array.from_buffers(pa.string(), 3, parts, 1)
    assert arr.to_pylist() == ["dog", None, "dog"]
    return arr


def test_bytes_under_a_null_and_wrap_only_rows():
    from gpu_curate.metadata import Metadata

    arr = _array_with_bytes_under_a_null(lambda b: pa.py_buffer(bytearray(b)))
    ro, ids = assert_same_csr(arr, Metadata(["dog", "cat"]))
    assert lists(ro, ids) == [[0], [], [0]]
    texts = [",,,", "", ".", ",.;:?!`", "!!", None, "?", "``` `", ",", ", ,"] * 3
    entries = [",", ".", " , ", "! !", "!  !", "` `", "`  `", " ` ", "? ", " ?"]
    ro, ids = assert_same_csr(pa.array(texts), Metadata(entries))
    assert lists(ro, ids) == [reference_match(t, entries) for t in texts]


def test_read_only_arrow_buffers(tmp_path):
    """Immutable Arrow buffers (a memory-mapped IPC file, bytes) must match too.

    Under the simulator ``_match_on_device(..., numpy)`` hands the caller's read-only
    views to the kernels, and the simulator's copy-back then raises
    "assignment destination is read-only".
    """
    import pyarrow.ipc as ipc

    from gpu_curate.metadata import Metadata

    md = Metadata(["dog", "cat"])
    arr = _array_with_bytes_under_a_null(pa.py_buffer)  # bytes: immutable
    ro, ids = assert_same_csr(arr, md)
    assert lists(ro, ids) == [[0], [], [0]]
    path = tmp_path / "texts.arrow"
    with ipc.new_file(path, pa.schema([("t", pa.string())])) as w:
        w.write_table(pa.table({"t": ["a dog", None, "cat"]}))
    with pa.memory_map(str(path)) as source:
        mapped = ipc.open_file(source).read_all().column("t").chunk(0)
        assert not mapped.buffers()[2].is_mutable
        ro, ids = assert_same_csr(mapped, md)
        assert lists(ro, ids) == [[0], [], [1]]


def test_empty_and_all_null_arrays():
    from gpu_curate.metadata import Metadata

    md = Metadata(ENTRIES)
    for arr in [pa.array([], pa.string()), pa.array([None, None], pa.string()), pa.array([""])]:
        ro, ids = assert_same_csr(arr, md)
        assert ids.size == 0


@pytest.mark.parametrize("tile_bytes", [1, 7, 64])
def test_rows_split_over_many_tiles(monkeypatch, tile_bytes):
    # Tiny tiles: rows longer than a tile (a tile of one row), empty and null rows at tile
    # edges, bytes under a null, and a slice that starts mid-buffer.
    from gpu_curate.kernels import gpu
    from gpu_curate.metadata import Metadata

    monkeypatch.setattr(gpu, "TILE_BYTES", tile_bytes)
    md = Metadata(ENTRIES)
    texts = ["", None, "new york city dog", "", "", "dog", None, "a b a, new york"]
    texts += built_texts(30, seed=5) + ["", None]
    arr = pa.array(texts, pa.large_string()).slice(1)
    ro, ids = assert_same_csr(arr, md)
    assert lists(ro, ids) == [reference_match(t, ENTRIES) for t in texts[1:]]
    assert lists(ro, ids)[1] == [0, 1, 2, 3]  # "new york city dog", by hand
    arr = _array_with_bytes_under_a_null(lambda b: pa.py_buffer(bytearray(b)))
    ro, ids = assert_same_csr(arr, Metadata(["dog", "cat"]))
    assert lists(ro, ids) == [[0], [], [0]]


@pytest.mark.parametrize("tile_bytes", [32 << 20, 40])
def test_many_small_chunks_join_into_few_device_calls(monkeypatch, tile_bytes):
    # A pack of small files reaches match_arrow as a chunked column, one chunk per file:
    # sliced chunks with nulls, an empty chunk, a dictionary chunk (its own dictionary).
    from gpu_curate.backend import Backend
    from gpu_curate.kernels import gpu
    from gpu_curate.match import match_arrow
    from gpu_curate.metadata import Metadata

    monkeypatch.setattr(gpu, "TILE_BYTES", tile_bytes)
    calls = []
    real = gpu.match_rows
    monkeypatch.setattr(gpu, "match_rows", lambda *a: calls.append(len(a[0]) - 1) or real(*a))
    md = Metadata(ENTRIES)
    texts = built_texts(60, seed=7)
    base = pa.array(texts, pa.string())
    chunks = [base.slice(i, 6) for i in range(0, 30, 6)] + [base.slice(30, 0)]
    chunks += [pa.array(texts[30:45], pa.string()).dictionary_encode().dictionary_decode()]
    chunks += [base.slice(45, 15)]
    column = pa.chunked_array(chunks, pa.string())
    dictionary = pa.chunked_array(
        [pa.array(texts[i : i + 20]).dictionary_encode() for i in range(0, 60, 20)]
    )
    for arr in (column, dictionary):
        ro, ids = match_arrow(arr, md, Backend("gpu", np))
        assert lists(ro, ids) == [reference_match(t, ENTRIES) for t in texts]
        cpu_ro, cpu_ids = match_arrow(arr, md, "cpu")
        np.testing.assert_array_equal(ro, cpu_ro)
        np.testing.assert_array_equal(ids, cpu_ids)
    if tile_bytes > 1000:
        assert calls == [60, 60]  # one device call per column, not one per chunk
    else:
        assert len(calls) > 2 and sum(calls) == 120  # split by text bytes, every row once


def _null_row_over_token_ends():
    """["dog", None, "", "new york, dog"] where the null slot spans "cat, dog. new york"."""
    body = b"dog" + b"cat, dog. new york" + b"" + b"new york, dog"
    offsets = np.array([0, 3, 21, 21, 34], np.int32).tobytes()
    validity = bytes([0b1101])
    parts = [pa.py_buffer(validity), pa.py_buffer(offsets), pa.py_buffer(bytearray(body))]
    arr = pa.Array.from_buffers(pa.string(), 4, parts, 1)
    assert arr.to_pylist() == ["dog", None, "", "new york, dog"]
    return arr


def test_null_rows_over_separators_and_wrap_bytes():
    # The null slot's bytes end tokens (", " and "."); they must neither match nor shift
    # the tokens of the rows after them.
    from gpu_curate.metadata import Metadata

    ro, ids = assert_same_csr(_null_row_over_token_ends(), Metadata(["dog", "new york", "cat"]))
    assert lists(ro, ids) == [[0], [], [], [0, 1]]


def test_int64_token_indices(monkeypatch):
    # Tiles with a row over ~1 GB index their tokens in int64; force that path here.
    from gpu_curate.kernels import gpu
    from gpu_curate.metadata import Metadata

    monkeypatch.setattr(gpu, "_index_type", lambda nb, m: np.int64)
    dtypes = set()
    launch = gpu._launch

    def spy(kernel, n, *args):
        if kernel is gpu._split_tokens:
            dtypes.update(a.dtype for a in args[-2:])  # tstart, tend
        launch(kernel, n, *args)

    monkeypatch.setattr(gpu, "_launch", spy)
    texts = built_texts(60, seed=11)
    ro, ids = assert_same_csr(pa.array(texts).slice(2), Metadata(ENTRIES))
    assert lists(ro, ids) == [reference_match(t, ENTRIES) for t in texts[2:]]
    assert dtypes == {np.dtype(np.int64)}


class _PoisonedNumpy:
    """NumPy, except that ``empty`` fills with the dtype's largest value: scratch that a
    kernel should have written, but did not, shows up (or indexes out of bounds)."""

    __name__ = "numpy"

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float):
        return np.full(shape, np.iinfo(dtype).max, dtype)


@pytest.mark.parametrize("tile_bytes", [7, 1 << 20])
def test_every_token_bound_is_written(monkeypatch, tile_bytes):
    from gpu_curate.kernels import gpu
    from gpu_curate.match import _host_buffers, _match_on_device
    from gpu_curate.metadata import Metadata

    monkeypatch.setattr(gpu, "TILE_BYTES", tile_bytes)
    checked = []
    launch = gpu._launch

    def spy(kernel, n, *args):
        launch(kernel, n, *args)
        if kernel is gpu._split_tokens:
            tstart, tend = args[-2], args[-1]
            assert (tstart != np.iinfo(tstart.dtype).max).all()
            assert (tend != np.iinfo(tend.dtype).max).all()
            checked.append(tstart.size)

    monkeypatch.setattr(gpu, "_launch", spy)
    md = Metadata(ENTRIES)
    texts = built_texts(40, seed=7)
    for arr in [_null_row_over_token_ends(), pa.array(texts).slice(3)]:
        ro, ids = _match_on_device(*_host_buffers(arr), md, _PoisonedNumpy())
        c_ro, c_ids = cpu_csr(arr, md)
        np.testing.assert_array_equal(ro, c_ro)
        np.testing.assert_array_equal(ids, c_ids)
    assert len(checked) >= 2 and sum(checked) > 100


# ----------------------------------------------------------------------------- hypothesis

TOKENS = ["a", "b", "dog", "new", "york", "café", "日本", LONG, "abcdefghijklmnoq", "(x)"]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", "\r", *",.;:?!`", ", "]


@st.composite
def texts_and_entries(draw):
    runs = draw(
        st.lists(
            st.lists(st.sampled_from(TOKENS), min_size=1, max_size=10), min_size=1, max_size=14
        )
    )
    texts = []
    for r in runs:
        seps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(r), max_size=len(r)))
        texts.append("".join(t + s for t, s in zip(r, seps, strict=True)))
    texts += draw(st.lists(st.sampled_from([None, ""]), max_size=2))
    raw = []
    for _ in range(draw(st.integers(1, 8))):
        r = draw(st.sampled_from(runs))
        i = draw(st.integers(0, len(r) - 1))
        raw.append(" ".join(r[i : i + draw(st.integers(1, 3))]))
    raw += draw(st.lists(st.sampled_from(TOKENS + [",", "a , b", " a", "b "]), max_size=3))
    entries = list(dict.fromkeys(e for e in raw if e.strip()))
    return texts, entries


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=texts_and_entries())
def test_hypothesis_gpu_equals_cpu(case):
    from gpu_curate.metadata import Metadata

    texts, entries = case
    ro, ids = assert_same_csr(pa.array(texts), Metadata(entries))
    assert lists(ro, ids) == [reference_match(t, entries) for t in texts]


# ----------------------------------------------------------------------------- real data


def test_real_laion_and_cc3m_sample(laion_texts, cc3m_texts, proxy_metadata, proxy_reference):
    rng = random.Random(0)
    texts = rng.sample(laion_texts, 64) + rng.sample(cc3m_texts, 24)
    texts.sort(key=len)
    texts.insert(5, None)
    ro, ids = assert_same_csr(pa.array(texts), proxy_metadata)
    assert lists(ro, ids) == [proxy_reference(t) for t in texts]
    assert ids.size > 100


# ----------------------------------------------------------------------------- hashing


@pytest.mark.parametrize("seed", [0, 7, 2**63 + 5, 2**64 - 1])
def test_device_hash_rows_equals_cpu(seed):
    from gpu_curate.kernels import cpu, gpu
    from gpu_curate.match import _host_buffers

    texts = ["", "a", "dog", "café 東京 😀", LONG, LONG + "q", "x" * 300, "dog "] + [
        t for t in built_texts(50, seed=3) if t is not None
    ]
    arr = pa.array(texts, pa.large_string()).slice(2)
    offsets, data, _, _ = _host_buffers(arr)
    want = cpu.hash_rows(offsets, data, np.uint64(seed))
    got = np.asarray(gpu.hash_rows(offsets, data, np.uint64(seed), np))
    assert got.dtype == np.uint64 and want.dtype == np.uint64
    np.testing.assert_array_equal(got, want)
    # Same bytes, same hash; different bytes (here) different hashes.
    by_text = dict(zip(texts[2:], want.tolist(), strict=True))
    assert len(set(by_text.values())) == len(by_text)


# ----------------------------------------------------------------------------- threads


class _LaunchSpy:
    """Stands in for a CUDA kernel: records whether each launch held the launch lock."""

    def __init__(self, kernel, lock, seen: list) -> None:
        self.kernel, self.lock, self.seen = kernel, lock, seen

    def __getitem__(self, config):
        launch = self.kernel[config]

        def call(*args):
            self.seen.append(self.lock.locked())
            return launch(*args)

        return call


def test_threads_matching_at_once_launch_under_the_lock(monkeypatch):
    # A Dask GPU worker runs several parts at once. On an H100, numba-cuda 0.30.4 failed
    # when two threads launched a kernel for the first time together, so every launch
    # holds gpu._LAUNCH; and the threads' results must be each their own.
    import threading

    from gpu_curate.kernels import gpu
    from gpu_curate.metadata import Metadata

    seen: list[bool] = []
    for name in MATCH_KERNELS:
        monkeypatch.setattr(gpu, name, _LaunchSpy(getattr(gpu, name), gpu._LAUNCH, seen))
    md = Metadata(ENTRIES)
    arrays = [pa.array(built_texts(40, seed=s)) for s in range(4)]
    got: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            got[k] = gpu_csr(arrays[k], md)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == 4 * len(MATCH_KERNELS) and all(seen)
    for k, arr in enumerate(arrays):
        want = cpu_csr(arr, md)
        np.testing.assert_array_equal(got[k][0], want[0])
        np.testing.assert_array_equal(got[k][1], want[1])


def test_small_launches_do_not_warn():
    # numba-cuda's low-occupancy warning (which the simulator does not raise) would print
    # once per grid size on every small part; other warnings still show.
    import warnings

    from gpu_curate.metadata import Metadata

    msg = "Grid size 3 will likely result in GPU under-utilization due to low occupancy."
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()  # (as though the module had been imported elsewhere)
        warnings.simplefilter("always")
        gpu_csr(pa.array(["a dog"]), Metadata(["dog"]))  # (launches)
        warnings.warn(msg, RuntimeWarning, stacklevel=1)
        warnings.warn("something else", RuntimeWarning, stacklevel=1)
    said = [str(w.message) for w in seen]  # (the simulator's own overflow warnings too)
    assert msg not in said and "something else" in said
