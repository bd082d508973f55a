"""Crash-safe writes: a file or a folder appears under its final name complete, or not at all.

Used by the scout trainer (checkpoints, the log, the exported model), ``vista demo --save-models``,
the feature cache's disk layer and the video writer. A kill at any moment leaves the previous
version (or nothing) under the final name, plus at most a temporary sibling named
``<prefix><name>-<pid>`` (folders) or ``<prefix>*`` (files) that the owner cleans up later.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Callable, Optional

TMP_PREFIX = ".tmp-"  # something being written
OLD_PREFIX = ".old-"  # a folder being replaced or deleted


def fsync_dir(path: str) -> None:
    """Flush a folder's entries (names) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """Flush every file under ``root`` and the folders themselves to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def temporary_sibling(path: str, prefix: str = TMP_PREFIX) -> str:
    """``<folder of path>/<prefix><name>-<pid>``: a scratch name beside ``path``, unique per process."""
    parent, base = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f"{prefix}{base}-{os.getpid()}")


def remove_dir(path: str) -> None:
    """Delete a folder: first renamed out of the way (one atomic step), then removed."""
    if not os.path.isdir(path):
        return
    trash = temporary_sibling(path, OLD_PREFIX)
    try:
        if os.path.exists(trash):
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def write_dir_atomically(final: str, write: Callable[[str], None], mode: Optional[int] = None) -> None:
    """Call ``write(tmp)`` on an empty temporary sibling folder of ``final`` (created with
    permissions ``mode`` when given), fsync it, then rename it to ``final`` (a previous ``final`` is
    moved aside first and deleted afterwards)."""
    final = os.path.abspath(os.fspath(final))
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = temporary_sibling(final)
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        write(tmp)
        fsync_tree(tmp)
        old = None
        if os.path.exists(final):
            old = temporary_sibling(final, OLD_PREFIX)
            if os.path.exists(old):
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_file_atomically(path: str, data: bytes, prefix: str = TMP_PREFIX, keep_mode: bool = False) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file ``<prefix>*`` in the same folder,
    fsync, rename, fsync of the folder. A crash leaves the old file (or none), never a partial one.

    The new file is owner-only (0600, ``tempfile.mkstemp``), or with ``keep_mode`` has the
    permissions of the file it replaces (when there is one)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=folder)
    try:
        if keep_mode and os.path.exists(path):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(folder)
