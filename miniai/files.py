"""Crash-safe output files (`atomic_write`: temporary file, fsync, rename; `clean_stale_temps`) and guarded input
files (`read_regular`, `open_regular`, `sha256_file`).

A file is written beside its destination and renamed over it, so a reader (or a process killed mid-write) sees the
old file or the new one, never half of one; the rename also replaces a symlink planted at the destination instead
of writing through it to wherever it points. Temporary names hold the writer's process id, so the next save of the
same file can remove what a killed writer left behind without touching a live writer's file.

A file that miniai reads back (a checkpoint, its digest, an export) is input like any other: the path may hold a
named pipe that blocks the reader forever, a link to `/dev/zero` that never ends, a directory, or a regular file far
larger than such a file can be. `read_regular` reads only regular files, with a size bound, and says what it found
instead; nothing else is opened (opening a device can have effects of its own).
Described in docs/reliability.md.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from .errors import MiniaiError, OutputError

__all__ = ['atomic_write', 'write_with_digest', 'read_digests', 'verify_digest', 'digest_path', 'MAX_DIGEST_BYTES',
           'sha256_file', 'clean_stale_temps', 'read_regular', 'open_regular', 'file_kind', 'InputFileError']


class InputFileError(MiniaiError, OSError):
    """A file miniai reads is not a regular file (a named pipe, a device, a directory...), is larger than such a file
    can be, or cannot be opened; the message names the file, what was found and what to do."""
    def __str__(self): return self.strerror or super().__str__()


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


_ADVICE = {errno.ENOSPC: 'free some space, or write to another disk',
           errno.EDQUOT: 'free some space within your quota, or write to another disk',
           errno.EACCES: 'write to a folder you may write to, or change its permissions',
           errno.EPERM: 'write to a folder you may write to, or change its permissions',
           errno.EROFS: 'write to a disk that is not mounted read-only'}


def _describe(e: OSError, path: Path) -> str:
    """The one-line message for a failed write of `path`: its real cause and advice that fits that cause."""
    what = 'no space left on device' if e.errno == errno.ENOSPC else (e.strerror or str(e)).lower()
    advice = _ADVICE.get(e.errno, 'check the folder and the disk')
    return f"could not write {path}: {what}; the previous {path.name}, if any, is intact. To fix it: {advice}"


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


_KINDS = ((stat.S_ISDIR, 'a directory'), (stat.S_ISFIFO, 'a named pipe (FIFO)'),
          (stat.S_ISCHR, 'a character device (such as /dev/zero)'), (stat.S_ISBLK, 'a block device'),
          (stat.S_ISSOCK, 'a socket'), (stat.S_ISREG, 'a regular file'))


def file_kind(mode: int) -> str:
    """What an `os.stat` mode is, in words: 'a regular file', 'a named pipe (FIFO)', 'a directory', ..."""
    return next((name for test, name in _KINDS if test(mode)), 'not a regular file')


def _fail(error, path, problem: str, what: str, advice: str, errno_: int = errno.EINVAL):
    msg = f"{what} {path} {problem}" + (f"; {advice}" if advice else '')
    if isinstance(error, type) and issubclass(error, OSError): return error(errno_, msg, str(path))
    return error(msg)


def _check_regular(st, path, max_bytes, what, advice, error):
    if not stat.S_ISREG(st.st_mode):
        raise _fail(error, path, f"is {file_kind(st.st_mode)}, not a regular file, so miniai does not read it", what,
                    advice)
    if max_bytes is not None and st.st_size > max_bytes:
        raise _fail(error, path, f"is {st.st_size:,} bytes, more than the {max_bytes:,} such a file can hold", what,
                    advice, errno.EFBIG)


def open_regular(path, max_bytes: int | None = None, what: str = 'file', advice: str = '', error=InputFileError):
    """`path` opened for reading in binary mode, if it is a regular file (symlinks to one are followed) of at most
    `max_bytes` bytes; else `error` (a class taking the message) saying what was found and `advice`.

    The kind is checked with `os.stat` before anything is opened, and again on the open descriptor (opened with
    O_NONBLOCK, so a named pipe swapped in between cannot block), so no path is ever opened as a pipe or device.
    A missing file raises FileNotFoundError as `open` does; any other failure to open (permissions, a symlink loop)
    raises `error` with the system's reason.
    """
    path = Path(path)
    try:
        _check_regular(os.stat(path), path, max_bytes, what, advice, error)
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_BINARY', 0))
    except FileNotFoundError: raise
    except OSError as e:
        if isinstance(e, error): raise
        raise _fail(error, path, f"cannot be read: {(e.strerror or str(e)).lower()}", what, advice,
                    e.errno or errno.EIO) from e
    try:
        _check_regular(os.fstat(fd), path, max_bytes, what, advice, error)
        if hasattr(os, 'set_blocking'): os.set_blocking(fd, True)
        return os.fdopen(fd, 'rb')
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, max_bytes: int | None = None, what: str = 'file', advice: str = '',
                 error=InputFileError) -> bytes:
    """The bytes of `path`, read only if it is a regular file of at most `max_bytes` bytes (see `open_regular`).

    Without `max_bytes` the read still stops at the size the file had when opened: a file that grows while it is
    read (or claims a size it does not have) is refused, so the read is always bounded.

    Raises:
        FileNotFoundError: nothing at `path`.
        error: (`InputFileError` unless given) `path` is not a regular file, is too large, changed while it was read
            or cannot be opened; the message names the file, what was found and `advice`.
    """
    with open_regular(path, max_bytes, what, advice, error) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(size + 1)
    if len(data) != size:
        raise _fail(error, path, f"changed while it was read ({size:,} bytes when opened, {len(data):,} read)", what,
                    advice, errno.EIO)
    return data


def sha256_file(path, what: str = 'file', error=InputFileError) -> str:
    """The SHA-256 of the regular file at `path`, as hex (anything else is refused, as in `open_regular`)."""
    h = hashlib.sha256()
    with open_regular(path, what=what, error=error) as f:
        for block in iter(lambda: f.read(1 << 20), b''): h.update(block)
    return h.hexdigest()


MAX_DIGEST_BYTES = 4096   # a digest file holds one or two lines of 64 hex digits and a file name


def digest_path(path) -> Path:
    """Where the SHA-256 of `path` (a checkpoint, an export) is kept: `path` + '.sha256', as `sha256sum` writes it."""
    path = Path(path)
    return path.with_name(path.name + '.sha256')


def read_digests(path, advice: str = '', error=InputFileError) -> list[str]:
    """The hex digests listed in the digest file of `path` (lines `HEX  NAME`, as sha256sum writes them).

    Raises:
        FileNotFoundError: there is no digest file.
        error: it is not a regular file of at most MAX_DIGEST_BYTES bytes (a named pipe would block the reader, a
            link to /dev/zero never ends), or cannot be read; the message says what was found and `advice`.
    """
    data = read_regular(digest_path(path), MAX_DIGEST_BYTES, what='the digest file', advice=advice, error=error)
    words = (ln.split() for ln in data.decode('utf-8', errors='replace').splitlines())
    return [w[0].lower() for w in words if w and re.fullmatch(r'[0-9a-fA-F]{64}', w[0])]


def write_with_digest(path, data: bytes) -> Path:
    """`data` to `path` and its SHA-256 to `path.sha256`, both atomically, so that a kill at any moment leaves a
    pair that matches: the digest file lists the new digest before the file is replaced, and drops the old one
    after. A digest file that is missing or unreadable (not a regular file) is simply replaced."""
    path = Path(path)
    new, side = hashlib.sha256(data).hexdigest(), digest_path(path)
    try: old = [d for d in read_digests(path) if d != new] if path.exists() else []
    except (FileNotFoundError, InputFileError): old = []
    if old: atomic_write(side, ''.join(f'{d}  {path.name}\n' for d in [new, *old]))
    atomic_write(path, data)
    atomic_write(side, f'{new}  {path.name}\n')
    return path


def verify_digest(path, data: bytes, what: str, advice: str, remedy: str, error=InputFileError) -> bool:
    """Check `data`, the bytes read from `path` (`what` names it: 'checkpoint', 'exported model'), against the digest
    file beside it; True when they match, False (with a warning) when there is no digest file (written by an older
    miniai, or copied without it).

    Raises `error` for a digest file that is not a small regular file, a dangling link, one without a digest
    (`advice` says what to do with the digest file), or bytes that do not match (`remedy` says what to do then).
    """
    import warnings
    path, side = Path(path), digest_path(path)
    try: want = read_digests(path, advice, error=error)
    except FileNotFoundError:
        if side.is_symlink():
            raise error(f"the digest file {side} is a symlink to a missing file ({os.readlink(side)}); {advice}") \
                from None
        warnings.warn(f"{what} {path} has no digest file {side.name} (written by an older miniai, or copied without "
                      "it): it is loaded without checking that its bytes are intact", stacklevel=4)
        return False
    if not want:
        raise error(f"the digest file {side} of {what} {path} holds no SHA-256 digest; restore it, or delete it to "
                    f"load the {what} unchecked")
    if hashlib.sha256(data).hexdigest() not in want:
        raise error(f"{what} {path} is corrupt: its bytes do not match the SHA-256 digest saved with it in "
                    f"{side.name} (changed on disk or by a copy since it was written). {remedy}")
    return True
