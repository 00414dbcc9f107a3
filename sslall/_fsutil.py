"""Files on disk: writing so that a reader (or a crash) sees all of a file or none of it, the
one sha256 of a file's bytes (sample ids, checkpoint and weights digests), and opening only regular
files (a fifo would block a reader forever, a symlink would lead a writer outside the
workspace)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 20
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class NotRegularFile(OSError):
    """`open_regular` refused a path that is a fifo, socket, device or directory, or a
    symbolic link where links are refused; an OSError so that every reader's handler sees it."""


def open_regular(path: str | Path, mode: str = "rb", *, follow_symlinks: bool = True,
                 create: bool = False, encoding: str | None = None,
                 newline: str | None = None) -> IO[Any]:
    """Open `path` only if it is a regular file (and not a symlink when `follow_symlinks` is
    False), without ever blocking: it is opened with O_NONBLOCK (a fifo answers at once),
    `fstat`ed, refused unless regular, then switched back to blocking.

    `mode` is "rb", "r", "ab" or "a" ("a": created 0644 when `create`).

    Raises:
        NotRegularFile: not a regular file, or a symlink when `follow_symlinks` is False.
        OSError: the file cannot be opened (missing, permission denied ...).
    """
    if mode not in ("rb", "r", "ab", "a"):
        raise ValueError(f"open_regular: unsupported mode {mode!r}")
    flags = os.O_RDONLY if mode.startswith("r") else os.O_WRONLY | os.O_APPEND
    flags |= _O_NONBLOCK | (os.O_CREAT if create else 0) | (0 if follow_symlinks else _O_NOFOLLOW)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks and os.path.islink(path):
            raise NotRegularFile(errno.ELOOP, "is a symbolic link, which sslall does not "
                                 "follow here", str(path)) from None
        raise
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind:
            raise NotRegularFile(errno.EINVAL, f"is {kind}, not a file", str(path))
        if _O_NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, mode, encoding=encoding, newline=newline)
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    """'' for a regular file, else what it is, in words."""
    if stat.S_ISREG(mode):
        return ""
    return "a directory" if stat.S_ISDIR(mode) else "a fifo, socket or device"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file's bytes, read in 1 MiB chunks (sample ids are this digest).

    Raises:
        NotRegularFile: `path` is a fifo, socket, device or directory (never blocks).
        OSError: the file cannot be read.
    """
    with open_regular(path) as fh:
        return sha256_handle(fh)


def sha256_handle(fh: IO[bytes]) -> str:
    """Hex sha256 of what is left to read from an open binary file."""
    digest = hashlib.sha256()
    while block := fh.read(_CHUNK):
        digest.update(block)
    return digest.hexdigest()


def temp_path(path: Path) -> Path:
    """A fresh hidden name beside `path`, for writing before the rename."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temporary sibling, fsync, rename over `path`, fsync the folder.

    The temporary file is created exclusively ("xb", O_EXCL), so a symlink planted under its
    name is refused rather than followed; the rename replaces a link at `path`, never its target.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (a no-op where the filesystem cannot)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
