"""Writing files so that a crash never leaves a half-written file under the real name."""

from __future__ import annotations

import errno
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["atomic_output", "ensure_writable_folder", "temp_sibling", "write_json", "write_text"]


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A fresh hidden name beside ``path`` (same folder, so a rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.{tag}")


# A place that cannot hold the file: the user's path, not the machine, is at fault.
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EEXIST}


def ensure_writable_folder(folder: str | Path, *, create: bool = True) -> None:
    """Check, before any work that writes there, that files can be written in ``folder``.

    With ``create`` the folder is made if missing and a file written and removed in it;
    without, nothing is made: the nearest existing parent must be a folder this process may
    write in. A place that cannot hold files (a file in the way, no permission, a read-only
    file system) raises :class:`~dust.errors.InputError` naming ``folder``.
    """
    folder = Path(folder)
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        shown = folder if existing == folder.absolute() else existing
        raise InputError(f"{folder}: cannot write there ({shown} is a file, not a folder)")
    if not create:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise InputError(f"{folder}: cannot write there ({os.strerror(errno.EACCES)})")
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_sibling(folder / "write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InputError(f"{folder}: cannot write there ({err.strerror})") from None


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds, else delete it.

    The parent folder is created when missing. A place the file cannot go (a folder in the
    way, no permission, a read-only file system) raises :class:`~dust.errors.InputError`
    naming ``path``, not the temporary name.
    """
    path = Path(path)
    temp = temp_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temp
        os.replace(temp, path)
    except OSError as err:
        if err.errno in _PATH_ERRNOS and err.filename is not None and _about(Path(err.filename), path, temp):
            raise InputError(f"{path}: cannot write there ({err.strerror})") from None
        raise
    finally:
        with suppress(NotADirectoryError):  # the parent is a file: there was never a temporary file
            temp.unlink(missing_ok=True)


def _about(failed: Path, path: Path, temp: Path) -> bool:
    """Whether an error on ``failed`` concerns writing ``path`` (through ``temp`` or a parent folder)."""
    return failed in (path, temp) or failed in path.parents


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2) + "\n")
