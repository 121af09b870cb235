"""What `miniai` prints for an error that is not a bug: one line `miniai: error: ...` (exit code 1), naming what is
wrong and what to do; any other exception (a bug) keeps its traceback (`one_line`).

A failed write names the file and the real cause (a full disk, a quota, a read-only file system, a denied
permission: each with its own advice), also when torch reports a full disk as a `RuntimeError` of its zip writer
(`write_error`). Described in docs/reliability.md.
"""
from __future__ import annotations

import errno
from contextlib import contextmanager
from pathlib import Path

from ..errors import MiniaiError, OutputError

__all__ = ['WriteError', 'write_error', 'writing', 'one_line', 'lost_peer']

_PERMISSION = "give yourself write permission on the folder (`ls -ld` shows who may write), or choose another --out"
# the causes of a failed write that are the machine's, not miniai's, and what to do about each
_CAUSES = {errno.ENOSPC: ('no space left on device', 'Free some space, or choose another --out'),
           errno.EDQUOT: ('disk quota exceeded', 'Free some space within your quota, or choose another --out'),
           errno.EROFS: ('read-only file system', 'Choose an --out on a writable file system'),
           errno.EACCES: ('permission denied', _PERMISSION[0].upper() + _PERMISSION[1:]),
           errno.EPERM: ('operation not permitted', _PERMISSION[0].upper() + _PERMISSION[1:])}


class WriteError(OutputError):
    """A file of the run could not be written; the message names it, the cause, what is kept and what to do."""


def _os_cause(e: BaseException | None) -> OSError | None:
    """The OSError behind `e`: `e` itself, or one it was raised from or while handling (torch's zip writer turns a
    failed write of its file object into a RuntimeError raised while handling the OSError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno is not None: return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _torch_write_failure(e: BaseException) -> bool:
    return isinstance(e, RuntimeError) and any(w in str(e) for w in ('inline_container', 'PytorchStreamWriter'))


def write_error(e: BaseException, path) -> WriteError | None:
    """`e`, raised while writing `path`, as a `WriteError` that names the file and the real cause; None when `e` is
    no failed write (a bug, which keeps its traceback)."""
    cause = _os_cause(e)
    if cause is None and not _torch_write_failure(e): return None
    path = Path(path)
    if cause is not None and cause.errno in _CAUSES: what, todo = _CAUSES[cause.errno]
    elif cause is not None:
        what, todo = (cause.strerror or str(cause)).lower(), 'Check the disk, or choose another --out'
    else: what, todo = (f"torch's writer failed ({str(e).splitlines()[0][:120]})",
                        'Check that the disk has space, or choose another --out')
    return WriteError(cause.errno if cause is not None else errno.EIO,
                      f"could not write {path}: {what}; the previous {path.name}, if any, is intact. {todo}", str(path))


@contextmanager
def writing(path):
    """Within the block `path` is written: a failed write leaves it as a `WriteError` naming `path`."""
    try: yield
    except (OSError, RuntimeError) as e:
        err = None if isinstance(e, WriteError) else write_error(e, path)
        if err is None: raise
        raise err from e


def lost_peer(e: BaseException) -> bool:
    """Whether `e` is a collective that timed out or lost a process (torch raises RuntimeErrors for both)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()): return False
    msg = str(e).lower()
    return isinstance(e, getattr(dist, 'DistError', ())) or (isinstance(e, RuntimeError) and any(
        w in msg for w in ('timed out', 'timeout', 'connection closed by peer', 'connection reset by peer')))


def one_line(e: BaseException, args) -> str | None:
    """The `miniai: error:` line for `e`, or None for a bug, which keeps its traceback."""
    from .parser import DIST_TIMEOUT
    if isinstance(e, WriteError): return str(e)
    if isinstance(e, OutputError) and e.filename and e.errno in _CAUSES:
        return str(write_error(e, e.filename))          # a file written atomically: the advice that fits the cause
    if isinstance(e, MiniaiError): return str(e)
    if lost_peer(e):
        from ..distributed import rank
        return (f"process {rank()} waited more than --dist-timeout {getattr(args, 'dist_timeout', DIST_TIMEOUT):g} s "
                "for the other processes, or lost one: a process stalled or died (see its output). The run "
                "stopped; once the cause is fixed, `miniai train --resume DIR` continues from the last complete "
                f"epoch, or raise --dist-timeout if a step really takes that long ({str(e).splitlines()[0][:120]})")
    if isinstance(e, FileNotFoundError): return str(e)   # a missing data folder or file named on the command line
    if isinstance(e, OSError) and e.errno in _CAUSES:
        what, todo = _CAUSES[e.errno]
        where = e.filename or (f"a file in {args.out}" if getattr(args, 'out', None) else 'a file')
        if e.errno in (errno.EACCES, errno.EPERM): return f"cannot access {where}: {what}. Check its permissions"
        return f"could not write {where}: {what}. {todo}"
    return None
