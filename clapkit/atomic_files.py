"""Atomic file writes: every file clapkit writes as a whole goes through here.

Why: a crash, a kill or a full disk in the middle of a write must leave either the old file or the new one, never
half a file that a later stage (or a resumed run, or a cache lookup) would read as whole.  So the content goes to a
temporary file *in the target's own folder* (``os.replace`` is atomic only within one file system, and the same
folder is the one place sure to be on it), which is renamed over the target once complete; on an exception the
temporary file is removed and the target is left as it was.

The temporary file is created with ``os.open(..., 0o666)``, as ``open()`` creates a file, so the final file's mode
is ``0o666 & ~umask`` (0644 under the usual umask 022) -- not the 0600 of ``tempfile.mkstemp``, which made outputs
private.  Parent folders are created.

- ``write_bytes`` / ``write_text`` / ``write_json``: content already in memory (flushed and fsynced before the
  rename, so a power cut cannot leave an empty file under the final name);
- ``replacing(path)``: a context manager yielding a temporary path beside ``path``, for writers that need a file
  name (``torch.save``, ``np.save``, safetensors' ``save_file``, soundfile, tarfile, an external tool ...).

Temporary names are ``.<name>.<random>.tmp`` (plus ``suffix`` if a writer needs an extension); ``leftovers(path)``
finds those of a killed earlier run.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["write_bytes", "write_text", "write_json", "replacing", "leftovers"]


def _create_temp(path: Path, suffix: str) -> Path:
    """A new, empty file beside ``path``, created as ``open()`` would create it (mode 0o666 & ~umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str | Path, *, suffix: str = "", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception it becomes ``path``
    (``os.replace``), on an exception it is removed and ``path`` is untouched.

    The writer may overwrite or recreate the temporary file; it gets the mode a file created by ``open()`` has
    either way.  ``suffix``: an extension for writers that choose the format by it.  ``fsync``: flush the file to
    disk before the rename."""
    path = Path(path)
    tmp = _create_temp(path, suffix)
    mode = os.stat(tmp).st_mode & 0o777
    try:
        yield tmp
        if os.stat(tmp).st_mode & 0o777 != mode:  # a writer that recreated the file with its own mode
            os.chmod(tmp, mode)
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """``data`` to ``path``, atomically (flushed and fsynced before the rename)."""
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    """``text`` (UTF-8, newlines as given) to ``path``, atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, **json_kwargs: Any) -> None:
    """``json.dumps(obj, **json_kwargs)`` and a newline to ``path``, atomically; ``indent`` defaults to 2."""
    json_kwargs.setdefault("indent", 2)
    write_text(path, json.dumps(obj, **json_kwargs) + "\n")


def leftovers(path: str | Path) -> list[Path]:
    """The temporary files of ``path`` that a killed writer left behind (safe to delete when no writer of
    ``path`` is running)."""
    path = Path(path)
    return sorted(p for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*") if p.is_file())
