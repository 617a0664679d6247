"""Files bulkbatch writes: atomically, and private when they hold personal data.

Run directories, the campaign registry and the once-per ledger hold people's addresses and
data, so folders are created ``0700`` and files ``0600`` whatever the umask.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from bulkbatch.errors import StateError

__all__ = ["atomic_write_bytes", "make_private", "private_dir"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed, and make it ``0700``."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def make_private(*paths: Path) -> None:
    """Make existing files ``0600`` (folders ``0700``); missing ones are skipped."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)


def atomic_write_bytes(
    path: Path, data: bytes, *, then: str = "run the same command again"
) -> None:
    """Write ``data`` to ``path`` (mode ``0600``) so a reader sees the old or the new file,
    never half of one: a temporary file, ``fsync``, then ``os.replace``.

    :param then: what the user does once the disk or permissions are fixed (in the error)
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise StateError(
            f"Could not write {path}: {exc.strerror or exc}. Free disk space or fix the "
            f"permissions of {path.parent}, then {then}."
        ) from exc
