"""Array files (.npy, .npz, .pkl): safe loading and atomic, streaming writing.

Pickles are read with a restricted unpickler that can only rebuild plain numpy
arrays, so a hostile file cannot run code.  Every writer goes through a hidden
temporary file in the destination folder that is renamed into place only once
it is complete: readers never see a half-written file.
"""

from __future__ import annotations

import mmap as mmap_module
import os
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from numpy.lib.format import MAGIC_PREFIX, open_memmap, write_array

from ..atomic import atomic_output, temp_sibling
from ..errors import InputError

__all__ = ["ArrayFileError", "ArrayWriter", "load_array", "release_row", "save_array"]

PathLike = str | os.PathLike[str]

PICKLE_SUFFIXES = (".pkl", ".pickle")
SUFFIXES = (".npy", ".npz", *PICKLE_SUFFIXES)

# The member name np.savez gives a single positional array.
_NPZ_MEMBER = "arr_0.npy"
# A fixed timestamp keeps .npz files byte-identical between runs.
_NPZ_DATE = (1980, 1, 1, 0, 0, 0)


class ArrayFileError(InputError):
    """An array file is missing, malformed, unsafe or of an unsupported kind (an :class:`InputError`).

    Its message is one line: ``<path>: <problem>``.
    """

    def __init__(self, path: PathLike, problem: str) -> None:
        super().__init__(path, problem)  # both in args, so the error pickles (worker processes)
        self.path = os.fspath(path)
        self.problem = _one_line(problem)

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _suffix(path: PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ArrayFileError(
            path, f"unknown array file type {suffix or '(none)'!r} (expected one of {', '.join(SUFFIXES)})"
        )
    return suffix


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- loading


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """Every (module, name) a plain-ndarray pickle may reference, old and new spellings."""
    reconstruct = np.empty(0).__reduce_ex__(4)[0]
    frombuffer = np.empty(0).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocol 0-2 pickles spell bytes as _codecs.encode(str, 'latin1'),
        # and empty bytes as bytes() under its Python 2 module name.
        ("_codecs", "encode"): _latin1_encode,
        ("__builtin__", "bytes"): _empty_bytes,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


def _latin1_encode(text: str, encoding: str) -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes() -> bytes:
    return b""


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals numpy needs to rebuild an ndarray."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"refused global '{module}.{name}'") from None


def _load_pickle(path: Path) -> Any:
    with open(path, "rb") as stream:
        try:
            # latin1 lets Python 2 era pickles of numpy arrays load as well.
            return _ArrayUnpickler(stream, encoding="latin1").load()
        except _RefusedGlobal as exc:
            raise ArrayFileError(path, f"not a numpy array pickle ({exc})") from None


def _load_npz(path: Path) -> np.ndarray:
    # Opening the file here closes it even when numpy fails to parse the archive.
    with open(path, "rb") as stream, np.load(stream, allow_pickle=False) as archive:
        keys = list(archive.files)
        if len(keys) != 1:
            raise ArrayFileError(path, f"expected exactly one array in the .npz, found {len(keys)}: {keys}")
        return archive[keys[0]]


_RELEASE_MIN_BYTES = 64 << 10


def release_row(array: np.ndarray, row: int) -> None:
    """Unmap row ``row`` of a memory-mapped array (from :func:`load_array`) from this process once read.

    Reading a memory-mapped file makes its pages part of the process's resident set, so an
    epoch over a large ``.npy`` file would show the file's size as memory. Releasing each row
    after it is copied keeps the resident set to what the process holds; the pages stay in
    the kernel's page cache, so reading them again costs no disk access. Rows under 64 KiB
    (series, features) and arrays not memory-mapped are left alone.
    """
    mapping = getattr(array, "_mmap", None)  # np.memmap keeps its mmap.mmap here
    advice = getattr(mmap_module, "MADV_DONTNEED", None)
    if mapping is None or advice is None or getattr(array, "mode", None) != "r" or not array.flags.c_contiguous:
        return
    if array.strides[0] < _RELEASE_MIN_BYTES:  # rows of a few pages share them: a syscall per row buys nothing
        return
    lead = array.offset % mmap_module.ALLOCATIONGRANULARITY  # the mapping starts this far before the data
    if lead + array.nbytes != len(mapping):  # a view of part of the file: leave it alone
        return
    start = lead + row * array.strides[0]
    end = start + array.strides[0]
    start -= start % mmap_module.PAGESIZE
    try:
        mapping.madvise(advice, start, end - start)
    except (OSError, ValueError):  # advice only: never fail a read over it
        pass


def load_array(path: PathLike, *, mmap: bool = True) -> np.ndarray:
    """Load the array stored in a .npy, .npz or .pkl/.pickle file.

    `.npy` files are memory-mapped read-only when `mmap` is true; `.npz` and
    pickles are read into memory.  Pickles may contain nothing but a plain
    (non-object) numpy array.  Every failure raises `ArrayFileError`.
    """
    suffix = _suffix(path)
    file = Path(path)
    try:
        _check_magic(file, suffix)
        if suffix == ".npy":
            array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
        elif suffix == ".npz":
            array = _load_npz(file)
        else:
            array = _load_pickle(file)
    except ArrayFileError:
        raise
    except OSError as exc:
        raise ArrayFileError(path, _describe(exc)) from exc
    except Exception as exc:  # any other failure means the file is corrupt
        raise ArrayFileError(path, f"cannot read array ({_describe(exc)})") from exc
    return _checked(path, array)


def _check_magic(path: Path, suffix: str) -> None:
    """Reject empty files and files whose first bytes do not match their suffix."""
    magic = {".npy": MAGIC_PREFIX, ".npz": b"PK"}.get(suffix, b"")
    with open(path, "rb") as stream:
        start = stream.read(max(len(magic), 1))
    if not start:
        raise ArrayFileError(path, "empty file")
    if not start.startswith(magic):
        raise ArrayFileError(path, f"not a {suffix} file (wrong leading bytes)")


def _checked(path: PathLike, array: Any) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise ArrayFileError(path, f"holds a {type(array).__name__}, not a numpy array")
    if array.dtype.hasobject:
        raise ArrayFileError(path, "holds an object-dtype array (only plain numeric arrays are allowed)")
    return array


# --------------------------------------------------------------------------- writing


def _raw_bytes(array: np.ndarray) -> np.ndarray:
    """The array's C-order bytes as a flat uint8 view (a copy only if not C-contiguous)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _pickle_frame(shape: tuple[int, ...], dtype: np.dtype) -> tuple[bytes, bytes]:
    """Pickle bytes that go before and after an array's raw C-order payload.

    The result is what `pickle.dump(array, f, protocol=5)` writes for a
    C-contiguous array, minus the optional framing: numpy's `_frombuffer`
    applied to an in-band BYTEARRAY8 payload, so loading needs no extra copy.
    """
    frombuffer = np.empty(0, dtype).__reduce_ex__(5)[0]

    class _Stub:
        def __reduce__(self) -> tuple[Any, ...]:
            return frombuffer, (bytearray(), dtype, shape, "C")

    stub = pickle.dumps(_Stub(), protocol=5)
    frames = [pos for op, _, pos in pickletools.genops(stub) if op.name == "FRAME"]
    payloads = [pos for op, arg, pos in pickletools.genops(stub) if op.name == "BYTEARRAY8"]
    if len(frames) > 1 or len(payloads) != 1 or (frames and frames[0] != 2):
        raise RuntimeError("unexpected pickle layout for a numpy array")
    if frames:  # drop the single FRAME opcode (1 byte + 8-byte length): framing is optional
        stub = stub[:2] + stub[11:]
        payload_pos = payloads[0] - 9
    else:
        payload_pos = payloads[0]
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    head = stub[:payload_pos] + pickle.BYTEARRAY8 + struct.pack("<Q", nbytes)
    return head, stub[payload_pos + 9 :]


def _write_pickle(stream: BinaryIO, array: np.ndarray) -> None:
    head, tail = _pickle_frame(array.shape, array.dtype)
    stream.write(head)
    stream.write(_raw_bytes(array))
    stream.write(tail)


def _write_npz(path: Path, array: np.ndarray) -> None:
    """Write `array` as the single member of an uncompressed, reproducible .npz."""
    member = zipfile.ZipInfo(_NPZ_MEMBER, date_time=_NPZ_DATE)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open(member, "w", force_zip64=True) as stream:
            write_array(stream, array, allow_pickle=False)


def _storable(path: PathLike, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise ArrayFileError(path, "cannot store an object-dtype array")


def save_array(path: PathLike, array: np.ndarray) -> None:
    """Atomically write `array` to a .npy, .npz or .pkl/.pickle file, creating folders.

    Pickles can be read back with plain `pickle.load` as well as `load_array`.
    """
    suffix = _suffix(path)
    array = np.asarray(array)
    _storable(path, array.dtype)
    with atomic_output(Path(path)) as temp:
        if suffix == ".npz":
            _write_npz(temp, array)
            return
        with open(temp, "wb") as stream:
            if suffix == ".npy":
                write_array(stream, array, allow_pickle=False)
            else:
                _write_pickle(stream, array)


class _NpySink:
    """Rows written straight into a memory-mapped .npy file."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.array: np.memmap | None = open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    def write(self, start: int, block: np.ndarray) -> None:
        assert self.array is not None
        self.array[start : start + len(block)] = block

    def finish(self) -> None:
        assert self.array is not None
        self.array.flush()

    def close(self) -> None:
        self.array = None  # dropping the last reference unmaps the file


class _PickleSink:
    """Rows written at their offsets inside a pickle's payload."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        head, tail = _pickle_frame(shape, dtype)
        self._offset = len(head)
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._stream: BinaryIO = open(path, "wb")
        self._stream.write(head)
        self._stream.seek(self._offset + shape[0] * self._row_bytes)
        self._stream.write(tail)

    def write(self, start: int, block: np.ndarray) -> None:
        self._stream.seek(self._offset + start * self._row_bytes)
        self._stream.write(_raw_bytes(block))

    def finish(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


class ArrayWriter:
    """Stream an array of known shape to a file row block by row block.

    Use as a context manager; every row must be written with `write` before
    the block ends.  The file appears under `path` only on a clean exit; on an
    exception nothing is left behind.  `.npz` output is staged in a temporary
    `.npy` first.

    >>> with ArrayWriter("video.pkl", (n, 3, 16, 64, 64), np.uint8) as out:
    ...     for i in range(n):
    ...         out.write(i, clip(i)[None])
    """

    def __init__(self, path: PathLike, shape: tuple[int, ...], dtype: npt.DTypeLike) -> None:
        self.path = Path(path)
        self._suffix = _suffix(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        if not self.shape or min(self.shape) < 0:
            raise ValueError(f"{path}: ArrayWriter needs a shape with at least one axis, got {self.shape}")
        _storable(path, self.dtype)
        self._temps: list[Path] = []
        self._sink: _NpySink | _PickleSink | None = None
        self._written = np.zeros(0, dtype=bool)

    def __enter__(self) -> ArrayWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._temps = [temp_sibling(self.path)]
        if self._suffix == ".npz":
            self._temps.append(temp_sibling(self.path, "stage.npy"))
        sink_type = _PickleSink if self._suffix in PICKLE_SUFFIXES else _NpySink
        try:
            self._sink = sink_type(self._temps[-1], self.shape, self.dtype)
        except BaseException:
            self._discard()
            raise
        self._written = np.zeros(self.shape[0], dtype=bool)
        return self

    def write(self, start_row: int, block: npt.ArrayLike) -> None:
        """Write `block` (rows of the full array) starting at row `start_row`."""
        if self._sink is None:
            raise RuntimeError("ArrayWriter.write called outside its `with` block")
        block = np.asarray(block).astype(self.dtype, casting="same_kind", copy=False)
        fits = block.ndim == len(self.shape) and block.shape[1:] == self.shape[1:]
        if not fits or not 0 <= start_row <= start_row + len(block) <= self.shape[0]:
            raise ValueError(
                f"{self.path}: cannot write a block of shape {block.shape} at row {start_row} "
                f"into an array of shape {self.shape}"
            )
        self._sink.write(start_row, block)
        self._written[start_row : start_row + len(block)] = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            self._discard()

    def _commit(self) -> None:
        assert self._sink is not None
        missing = np.flatnonzero(~self._written)
        if missing.size:
            raise ValueError(f"{self.path}: {missing.size} rows never written (first: row {missing[0]})")
        self._sink.finish()
        if self._suffix == ".npz":
            assert isinstance(self._sink, _NpySink) and self._sink.array is not None
            _write_npz(self._temps[0], self._sink.array)
        self._sink.close()
        os.replace(self._temps[0], self.path)

    def _discard(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        for temp in self._temps:
            temp.unlink(missing_ok=True)
