"""Array files: safe loading, atomic saving and streaming writes."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from dust.data import ArrayFileError, ArrayWriter, load_array, save_array

SUFFIXES = (".npy", ".npz", ".pkl")


class _Exploit:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return os.system, (f"touch {self.marker}",)


def _assert_names(error: pytest.ExceptionInfo[ArrayFileError], path: Path) -> None:
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message


@pytest.mark.parametrize("protocol", range(6))
def test_unsafe_pickle_is_refused_without_running_code(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "video_train.pkl"
    path.write_bytes(pickle.dumps(_Exploit(marker), protocol=protocol))
    with pytest.raises(ArrayFileError, match="refused global") as error:
        load_array(path)
    _assert_names(error, path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_float64_pickle_loads(tmp_path: Path, protocol: int) -> None:
    data = np.random.default_rng(0).random((3, 3, 5, 8, 8))  # what the seed's gen_data.py wrote
    path = tmp_path / "video.pkl"
    with open(path, "wb") as stream:
        pickle.dump(data, stream, protocol=protocol)
    loaded = load_array(path)
    assert loaded.dtype == np.float64
    np.testing.assert_array_equal(loaded, data)


def test_object_array_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.pkl"
    path.write_bytes(pickle.dumps(np.array([1, "two", None], dtype=object)))
    with pytest.raises(ArrayFileError, match="object") as error:
        load_array(path)
    _assert_names(error, path)


def test_pickle_of_a_non_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ArrayFileError, match="list"):
        load_array(path)


def test_npy_is_memory_mapped_on_request(tmp_path: Path) -> None:
    path = tmp_path / "kine.npy"
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.save(path, data)
    mapped = load_array(path)
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, data)
    assert not isinstance(load_array(path, mmap=False), np.memmap)


def test_npz_with_a_single_array_loads(tmp_path: Path) -> None:
    path = tmp_path / "labels.npz"
    np.savez(path, labels=np.arange(5))
    np.testing.assert_array_equal(load_array(path), np.arange(5))


def test_npz_with_several_arrays_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.npz"
    np.savez(path, first=np.arange(5), second=np.arange(3))
    with pytest.raises(ArrayFileError, match="first.*second") as error:
        load_array(path)
    _assert_names(error, path)


def _truncated_npy(path: Path) -> None:
    np.save(path, np.zeros((10, 10)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _truncated_pkl(path: Path) -> None:
    raw = pickle.dumps(np.zeros((10, 10)), protocol=4)
    path.write_bytes(raw[: len(raw) // 2])


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [
        ("half.npy", _truncated_npy),
        ("half.pkl", _truncated_pkl),
        ("garbage.pkl", lambda p: p.write_bytes(bytes(range(256)) * 4)),
        ("garbage.npy", lambda p: p.write_bytes(b"\x00garbage" * 50)),
        ("garbage.npz", lambda p: p.write_bytes(b"PK\x03\x04garbage" * 50)),
        ("empty.npy", lambda p: p.write_bytes(b"")),
        ("empty.pkl", lambda p: p.write_bytes(b"")),
    ],
)
@pytest.mark.parametrize("mmap", [True, False])
def test_corrupt_files_raise_array_file_error(tmp_path: Path, name: str, corrupt, mmap: bool) -> None:
    path = tmp_path / name
    corrupt(path)
    with pytest.raises(ArrayFileError) as error:
        load_array(path, mmap=mmap)
    _assert_names(error, path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "data" / "video_train.pkl"
    with pytest.raises(ArrayFileError, match="no such file") as error:
        load_array(path)
    _assert_names(error, path)


def test_error_pickles_for_worker_processes(tmp_path: Path) -> None:
    with pytest.raises(ArrayFileError) as error:
        load_array(tmp_path / "missing.npy")
    copy = pickle.loads(pickle.dumps(error.value))
    assert str(copy) == str(error.value)
    assert copy.path == str(tmp_path / "missing.npy")


def test_unknown_suffix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "video.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(ArrayFileError, match="unknown array file type"):
        load_array(path)
    with pytest.raises(ArrayFileError, match="unknown array file type"):
        save_array(path, np.zeros(3))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_save_array_roundtrip_creates_folders_atomically(tmp_path: Path, suffix: str) -> None:
    data = np.random.default_rng(1).normal(size=(4, 3, 5)).astype(np.float32)
    path = tmp_path / "new" / "folder" / f"kine{suffix}"
    save_array(path, data)
    loaded = load_array(path)
    assert loaded.dtype == data.dtype
    np.testing.assert_array_equal(loaded, data)
    assert os.listdir(path.parent) == [path.name]


def test_saved_pickle_loads_with_plain_pickle(tmp_path: Path) -> None:
    data = np.arange(12, dtype=np.int64).reshape(3, 4)
    path = tmp_path / "label.pkl"
    save_array(path, data[:, ::2])  # non-contiguous input
    with open(path, "rb") as stream:
        np.testing.assert_array_equal(pickle.load(stream), data[:, ::2])


def test_object_arrays_are_not_saved(tmp_path: Path) -> None:
    with pytest.raises(ArrayFileError, match="object"):
        save_array(tmp_path / "x.npy", np.array([None, 1], dtype=object))
    assert not list(tmp_path.iterdir())


def _write_in_blocks(path: Path, data: np.ndarray) -> None:
    with ArrayWriter(path, data.shape, data.dtype) as writer:
        writer.write(3, data[3:])  # any order
        writer.write(0, data[:1])
        writer.write(1, data[1:3])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_array_writer_roundtrip(tmp_path: Path, suffix: str) -> None:
    data = np.random.default_rng(2).integers(0, 256, (7, 3, 4, 6, 5), dtype=np.uint8)
    path = tmp_path / "out" / f"video{suffix}"
    _write_in_blocks(path, data)
    np.testing.assert_array_equal(load_array(path), data)
    assert os.listdir(path.parent) == [path.name]
    reference = tmp_path / f"reference{suffix}"
    save_array(reference, data)
    assert path.read_bytes() == reference.read_bytes()


def test_array_writer_pickle_loads_with_plain_pickle(tmp_path: Path) -> None:
    data = np.random.default_rng(3).random((5, 2, 3))
    path = tmp_path / "video.pkl"
    _write_in_blocks(path, data)
    with open(path, "rb") as stream:
        loaded = pickle.load(stream)
    np.testing.assert_array_equal(loaded, data)
    assert loaded.flags.writeable


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_array_writer_leaves_nothing_on_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"video{suffix}"
    with pytest.raises(RuntimeError, match="boom"), ArrayWriter(path, (4, 2), np.float32) as writer:
        writer.write(0, np.ones((2, 2), np.float32))
        raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_array_writer_keeps_the_old_file_until_complete(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"video{suffix}"
    save_array(path, np.zeros(3))
    with pytest.raises(ValueError, match="never written"), ArrayWriter(path, (4, 2), np.float32) as writer:
        writer.write(0, np.ones((3, 2), np.float32))
    np.testing.assert_array_equal(load_array(path), np.zeros(3))
    assert os.listdir(tmp_path) == [path.name]


def test_array_writer_rejects_misfit_blocks(tmp_path: Path) -> None:
    with ArrayWriter(tmp_path / "x.npy", (4, 2), np.uint8) as writer:
        writer.write(0, np.zeros((4, 2), np.uint8))
        with pytest.raises(ValueError, match="cannot write"):
            writer.write(3, np.zeros((2, 2), np.uint8))
        with pytest.raises(ValueError, match="cannot write"):
            writer.write(0, np.zeros((1, 3), np.uint8))
        with pytest.raises(TypeError):
            writer.write(0, np.zeros((1, 2), np.float64))  # would silently truncate


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile line")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
def test_rows_read_from_a_memory_mapped_file_do_not_stay_resident(tmp_path):
    from dust.data.arrays import release_row
    from dust.data.datasets import ArrayRows, as_float32

    rows = np.random.default_rng(0).integers(0, 255, (48, 1024 * 1024), dtype=np.uint8)  # 48 MiB, 1 MiB a row
    np.save(tmp_path / "big.npy", rows)
    kept, released = load_array(tmp_path / "big.npy"), load_array(tmp_path / "big.npy")
    before = _rss_file_kib()
    total = sum(int(kept[i][::4096].sum()) for i in range(len(kept)))  # touches every page of every row
    grown = _rss_file_kib() - before
    assert grown > 40 * 1024  # plain memory-mapped reading keeps the file resident
    dataset = ArrayRows([released], [as_float32])
    before = _rss_file_kib()
    assert sum(int(dataset[i][0][::4096].sum()) for i in range(len(dataset))) == total
    assert _rss_file_kib() - before < 8 * 1024  # each row is let go once copied
    np.testing.assert_array_equal(released[7], rows[7])  # and reads the same afterwards
    release_row(rows, 3)  # an array in memory: nothing happens
    np.testing.assert_array_equal(rows[3], released[3])
