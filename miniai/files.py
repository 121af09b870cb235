"""Crash-safe output files: `atomic_write` (temporary file, fsync, rename), `sha256_file`, `clean_stale_temps`.

A file is written beside its destination and renamed over it, so a reader (or a process killed mid-write) sees the
old file or the new one, never half of one; the rename also replaces a symlink planted at the destination instead
of writing through it to wherever it points. Temporary names hold the writer's process id, so the next save of the
same file can remove what a killed writer left behind without touching a live writer's file.
Described in docs/reliability.md.
"""
from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError

__all__ = ['atomic_write', 'sha256_file', 'clean_stale_temps']


def _pid_alive(pid: int) -> bool:
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    except PermissionError: return True         # someone else's live process
    return True


def clean_stale_temps(path) -> list[Path]:
    """Remove the temporary files that killed writers of `path` left beside it (`.NAME.PID.*.tmp` whose process
    is gone, or is this one); returns what was removed. A live writer's temporary file is left alone."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f'.{path.name}.*.tmp'):
        pid = tmp.name[len(path.name) + 2:].split('.')[0]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)): continue
        try: tmp.unlink(); removed.append(tmp)
        except FileNotFoundError: pass          # its writer finished or another cleaner was first
    return removed


def _describe(e: OSError, path: Path) -> str:
    what = 'no space left on device' if e.errno == errno.ENOSPC else (e.strerror or str(e)).lower()
    return (f"could not write {path}: {what}; the previous {path.name}, if any, is intact. Free some space or "
            "choose another folder (--out)")


def atomic_write(path, data: bytes | str | Callable, fsync: bool = True) -> Path:
    """Write `data` (bytes, text, or a function that writes to a binary file object) to `path` atomically.

    Raises:
        OutputError: the file could not be written (e.g. no space left on device); `path` is left as it was.
    """
    path = Path(path)
    if isinstance(data, str): data = data.encode()
    clean_stale_temps(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp')
    try:
        with open(tmp, 'xb') as f:
            if callable(data): data(f)
            else: f.write(data)
            f.flush()
            if fsync: os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(e.errno, _describe(e, path), str(path)) from e
    finally:
        if tmp.exists(): tmp.unlink()
    return path


def sha256_file(path) -> str:
    """The SHA-256 of the file at `path`, as hex."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''): h.update(block)
    return h.hexdigest()
