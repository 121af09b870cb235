"""Run folders of `miniai train`: a new one for each run (`new_out_dir`), and one writer per folder (`RunLock`).

A folder is claimed by creating its `config.json` exclusively, so of two runs starting in it at the same instant one
gets it. While a process trains in a folder it holds `run.lock` (an `fcntl.flock` lock, which the OS releases when
the process ends, however it ends: a crashed run leaves no stale lock); the file names the holder (pid, host, start
time) so that a second `miniai train` into the folder, or a `--resume` of it, is refused with a message saying who
has it. Described in docs/reliability.md.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import time
from pathlib import Path

from ..errors import MiniaiError, UsageError

__all__ = ['RunLock', 'RunInUseError', 'hold_run', 'new_out_dir', 'out_dir', 'remove_if_unused', 'LOCK_NAME']

LOCK_NAME = 'run.lock'


class RunInUseError(UsageError):
    """The run folder is held by another live `miniai train` process; the message names it."""


def _holder(fd: int) -> str:
    """What the lock file open as `fd` says about its holder, in words (the holder writes it just after locking)."""
    for _ in range(20):                 # a holder that has just locked writes within milliseconds
        try: info = json.loads(os.pread(fd, 4096, 0) or b'null')
        except (OSError, ValueError): info = None
        if isinstance(info, dict): break
        time.sleep(0.025)
    else: return "a process that has not written its details yet"
    started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.get('started', 0)))
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {started}"


def _flock_soon(fd: int, patience: float = 0.2):
    """Lock `fd` exclusively, trying again for `patience` seconds: `held_by_other` takes the lock for an instant to
    see whether anyone holds it, and such a look must not make the run that is taking it give up. A run that holds
    it keeps it for longer: BlockingIOError then."""
    import fcntl
    deadline = time.monotonic() + patience
    while True:
        try: return fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline: raise
            time.sleep(0.005)


class RunLock:
    """An exclusive hold on a run folder for this process, until `release` (or the process ends).

    `RunLock(folder)` takes it or raises `RunInUseError` naming the holder. On a file system without locks (some
    network mounts) it holds nothing and says so in `held`, rather than refusing to train.
    """
    def __init__(self, folder):
        self.path, self.held, self.fd = Path(folder) / LOCK_NAME, False, None
        try: self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise UsageError(f"cannot hold the run folder {folder}: {self.path} cannot be opened "
                             f"({(e.strerror or str(e)).lower()}); if it is a symlink, delete it") from None
        try: _flock_soon(self.fd)
        except BlockingIOError:
            who = _holder(self.fd)
            self.release()
            raise RunInUseError(f"the run folder {folder} is in use by another `miniai train` ({who}): one process "
                                "at a time trains in a run folder. Wait for it to end, or stop it (Ctrl-C or kill "
                                "saves its state), then try again") from None
        except OSError: return            # no locks on this file system: hold nothing
        self.held = True
        info = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time()}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(info).encode(), 0)

    def __del__(self): self.release()   # a hold dropped without release (e.g. by a test) closes its file

    def release(self, remove: bool = False):
        """Give the folder up (idempotent); `remove` deletes the lock file first (the folder is being removed)."""
        if getattr(self, 'fd', None) is None: return
        if remove: self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def held_by_other(folder: Path) -> str | None:
    """The holder of `folder`'s lock in words, if another live process holds it; else None (nothing is created)."""
    import fcntl
    try: fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError: return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError: return _holder(fd)
    except OSError: return None
    finally: os.close(fd)


def hold_run(folder: Path) -> RunLock | None:
    """`RunLock(folder)` taken by the main process, its refusal raised on every process (None on the others)."""
    from ..distributed import broadcast_object, is_main_process
    res = None
    if is_main_process():
        try: res = RunLock(folder)
        except MiniaiError as e: res = e
    err = broadcast_object(res if isinstance(res, Exception) else None)
    if err is not None: raise err
    return res


def _claim(out: Path) -> bool:
    """Create `out`/config.json exclusively: of two runs starting in `out` at the same instant, one gets it."""
    try: os.close(os.open(out / 'config.json', os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError: return False
    return True


def _in_use(out: Path) -> RunInUseError | None:
    who = held_by_other(out)
    return None if who is None else RunInUseError(
        f"--out {out} is in use by another `miniai train` ({who}); choose another folder")


def new_out_dir(out: Path | None) -> tuple[Path, bool, RunLock]:
    """A new run folder, claimed and held for this run (its config.json and run.lock exist), whether this call
    created the folder, and the hold.

    The default name `runs/<time>` gets `-1`, `-2`, ... when taken; an explicit `out` must be empty (or missing).
    """
    if out is None:
        base = Path('runs') / time.strftime('%Y%m%d-%H%M%S')
        base.parent.mkdir(parents=True, exist_ok=True)
        for i in itertools.count():
            cand = base.with_name(f'{base.name}-{i}') if i else base
            try: cand.mkdir()             # exclusive: runs starting at the same instant each get their own name
            except FileExistsError: continue
            lock = RunLock(cand)
            _claim(cand)
            return cand, True, lock
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder: give the path of a new folder (it is created)")
    created = not out.exists()
    try: out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"--out {out}: a part of this path is a file, not a folder; give the path of a new "
                         "folder") from None
    if any(out.iterdir()):
        raise _in_use(out) or UsageError(f"--out {out} already holds files; choose a new folder so no earlier run "
                                         "is overwritten")
    just_taken = UsageError(f"--out {out} was just taken by another run starting at the same time; choose another "
                            "folder")
    try: lock = RunLock(out)
    except RunInUseError: raise _in_use(out) or just_taken from None    # its holder may have let go since
    if any(p.name != LOCK_NAME for p in out.iterdir()) or not _claim(out):
        lock.release()
        raise just_taken
    return out, created, lock


def out_dir(args) -> tuple[Path, bool, RunLock | None]:
    """The run's folder: made and held by the main process and told to the others (a default name holds its clock);
    the others get None for the hold."""
    from ..distributed import broadcast_object, is_main_process
    res, lock = None, None
    if is_main_process():
        try: *res, lock = new_out_dir(args.out)
        except MiniaiError as e: res = e
    res = broadcast_object(res)
    if isinstance(res, Exception): raise res
    return res[0], res[1], lock


def remove_if_unused(out: Path, created: bool, lock: RunLock | None):
    """After a run failed before its first epoch: remove what it wrote (config.json, run.lock) and, if it made the
    folder and nothing else is in it, the folder; anything else in it stays."""
    if any(p.name not in ('config.json', LOCK_NAME) for p in out.iterdir()): return
    (out / 'config.json').unlink(missing_ok=True)
    if lock is not None: lock.release(remove=True)
    if created and not any(out.iterdir()): out.rmdir()
