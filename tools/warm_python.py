#!/usr/bin/env python
"""Python processes forked from a warm parent, so that running many of them does not pay torch's start-up each time.

A fresh interpreter spends 3 to 5 CPU seconds importing torch, torcheval (which imports torchvision and
torch._dynamo) and miniai before it runs its first line, and the test suite starts dozens: a Jupyter kernel per
notebook, a `python -m miniai train` for every test that needs a process of its own (Ctrl-C, SIGTERM, runs racing
for a folder). `warm_python(env)` starts one parent process (the "zygote") that imports those modules once,
without running anything, and yields a `WarmPython` whose `command(...)` stands for `[sys.executable, ...]`:

    with warm_python(env) as warm:
        subprocess.run(warm.command('-m', 'miniai', 'train', '--epochs', '1'), env=env)

The command is a small client (this file, run with `-S`: no torch import) that hands the zygote its standard
streams, environment, folder and arguments. The zygote forks; the child takes those streams, that environment and
folder, and runs the module or script as `python` would (`runpy`, `__name__ == '__main__'`, its own exit status
and interpreter shutdown). The client stands for the child: it passes SIGINT, SIGTERM and SIGHUP on to it and exits
as the child did (with the same signal, if a signal ended it); if the client itself is killed (SIGKILL), the zygote
sees its connection close and kills the child. So a test's `Popen` of the command behaves as a `Popen` of Python,
with one difference: `Popen.pid` is the client's; `warm.popen(args)` also gives the child's as `.child_pid`.

Forking is safe because the zygote only imports: no torch op has run, so no thread pool exists. The zygote's
environment should match the children's in what is read at import time (the tests start it with theirs);
OMP_NUM_THREADS, read when torch's thread pool starts, is applied in each child. The children also share the
zygote's hash seed and the state its imports left in global random generators, and they end without tearing the
modules down (what a fresh interpreter could print while doing that does not appear). Only `-m MODULE` and a script path
(after an optional `-u`) are understood: anything else is refused with a message. A child gets the standard streams
and no other file descriptor.

`WarmPython.executable(folder)` writes a stand-in `python` that forks what it can and runs the rest in a real
interpreter; a child started with `EXECUTABLE_VAR` naming it takes it as its `sys.executable` (a shell script, then),
so that the Pythons it starts are forked too. `tools/run_notebooks.py` makes kernels of the command
(`write_kernelspec(..., python=warm.command())`), and the tests use it through tests/conftest.py.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

# what the children import, imported once in the zygote (matplotlib without pyplot: a kernel picks its backend;
# miniai.metrics before torcheval, as miniai imports them, so torcheval's import warning is silenced as there)
WARM_IMPORTS = ['torch', 'torch.nn.functional', 'numpy', 'pandas', 'PIL.Image', 'matplotlib', 'IPython',
                'IPython.display', 'ipykernel.ipkernel', 'fastcore.all', 'fastprogress', 'nbdev.showdoc',
                'miniai.core', 'miniai.learner', 'miniai.callbacks', 'miniai.metrics', 'torcheval.metrics',
                'miniai.datasets', 'miniai.conv', 'miniai.sgd', 'miniai.activations', 'miniai.init', 'miniai.augment',
                'miniai.accel', 'miniai.checkpoint', 'miniai.cli', 'miniai.predict_cli', 'miniai.distributed',
                'miniai.train_plots', 'matplotlib.figure', 'matplotlib.backends.backend_agg']
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXECUTABLE_VAR = 'WARM_PYTHON_EXECUTABLE'    # a child's sys.executable, where set: `WarmPython.executable`
_HEADER = struct.Struct('!Q')                # the request's length, sent with the client's three standard streams


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    buf = b''
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk: raise ConnectionError("the client went away in the middle of its request")
        buf += chunk
    return buf


def _recv_line(conn: socket.socket) -> bytes:
    buf = b''
    while not buf.endswith(b'\n'):
        chunk = conn.recv(4096)
        if not chunk: break
        buf += chunk
    return buf


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """A client's request (argv, cwd, env) and its standard streams, as file descriptors of this process (closed
    again if the rest of the request does not come)."""
    head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    try:
        head += _recv_exactly(conn, _HEADER.size - len(head))
        return json.loads(_recv_exactly(conn, _HEADER.unpack(head)[0])), fds
    except BaseException:
        for fd in fds: os.close(fd)
        raise


def serve(sock_path: str, imports: list[str]) -> tuple[dict, list[int]] | None:
    """The zygote: import `imports`, then fork a child for each client that connects and report its exit status.

    Returns, in a child, its request and standard streams (the caller runs it: `run_request`); in the zygote,
    None once the parent closes the zygote's stdin."""
    import gc
    import importlib
    for name in imports:
        with contextlib.suppress(ImportError): importlib.import_module(name)
    gc.freeze()       # what was imported is never collected: a child's collections leave those pages shared
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(64)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C on the test run is for the tests; the parent stops us
    print('ready', flush=True)                     # the parent waits for this line
    children: dict[socket.socket, int] = {}        # client connection -> the pid of its child
    zygote = os.getpid()

    def gone(conn: socket.socket):                 # a client went away: its child too
        with contextlib.suppress(ProcessLookupError): os.kill(children[conn], signal.SIGKILL)

    try:
        while True:
            ready, _, _ = select.select([srv, sys.stdin, *children], [], [], 0.1)
            if sys.stdin in ready and not sys.stdin.buffer.read1(1): break     # our parent closed our stdin: stop
            if srv in ready:
                conn, _ = srv.accept()
                conn.settimeout(10)                # a client that stops mid-request must not stall the rest for long
                try: request, fds = _recv_request(conn)
                except (ConnectionError, ValueError, OSError):
                    conn.close()
                    continue
                conn.settimeout(None)
                pid = os.fork()
                if pid == 0:                                               # the child
                    srv.close()
                    for c in [conn, *children]: c.close()
                    return request, fds
                for fd in fds: os.close(fd)
                children[conn] = pid
                try: conn.sendall(f'{pid}\n'.encode())
                except OSError: gone(conn)
            for conn in [c for c in children if c in ready]:
                try: alive = conn.recv(1)
                except OSError: alive = b''
                if not alive: gone(conn)
            for conn, pid in list(children.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done: continue
                with contextlib.suppress(OSError): conn.sendall(f'{os.waitstatus_to_exitcode(status)}\n'.encode())
                conn.close()
                del children[conn]
    finally:
        if os.getpid() == zygote:                  # not in a child returning from the loop
            for pid in children.values():
                with contextlib.suppress(ProcessLookupError): os.kill(pid, signal.SIGKILL)
    return None


def _streams(unbuffered: bool):
    """sys.stdin/stdout/stderr anew on file descriptors 0-2 (now the client's), buffered as a fresh `python` would
    buffer them (line by line on a terminal, in blocks otherwise; not at all with -u or PYTHONUNBUFFERED)."""
    def text(fd: int, mode: str, line: bool):
        raw = open(fd, mode + 'b', buffering=0, closefd=False)
        buffered = raw if unbuffered and mode == 'w' else (io.BufferedWriter(raw) if mode == 'w' else
                                                             io.BufferedReader(raw))
        return io.TextIOWrapper(buffered, encoding='utf-8', errors='backslashreplace' if fd == 2 else 'strict',
                                line_buffering=line, write_through=unbuffered and mode == 'w')
    sys.stdin = sys.__stdin__ = text(0, 'r', False)
    sys.stdout = sys.__stdout__ = text(1, 'w', os.isatty(1))
    sys.stderr = sys.__stderr__ = text(2, 'w', True)


def run_request(request: dict, fds: list[int]):
    """In a forked child: become `python ARGV...` with the client's streams, folder and environment."""
    os.setsid()                                    # not in the zygote's process group: its signals are its own
    for target, fd in enumerate(fds):
        if fd != target: os.dup2(fd, target)
    for fd in fds:
        if fd > 2: os.close(fd)
    os.environ.clear()
    os.environ.update(request['env'])
    os.chdir(request['cwd'])
    if exe := request['env'].get(EXECUTABLE_VAR): sys.executable = exe
    for sig in FORWARDED[1:]: signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    argv, unbuffered = list(request['argv']), bool(request['env'].get('PYTHONUNBUFFERED'))
    if argv[:1] == ['-u']: argv, unbuffered = argv[1:], True
    _streams(unbuffered)
    if (threads := request['env'].get('OMP_NUM_THREADS', '')).isdigit() and 'torch' in sys.modules:
        sys.modules['torch'].set_num_threads(int(threads))
    extra = [p for p in request['env'].get('PYTHONPATH', '').split(os.pathsep) if p and p not in sys.path]
    import runpy
    if argv[:1] == ['-m'] and len(argv) > 1:
        sys.path[:1] = [os.getcwd(), *extra]
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
    elif argv and not argv[0].startswith('-'):
        script = os.path.abspath(argv[0])
        sys.path[:1] = [os.path.dirname(script), *extra]
        sys.argv = [argv[0], *argv[1:]]
        runpy.run_path(script, run_name='__main__')
    else:
        sys.exit(f"warm_python: runs `-m MODULE ARGS...` or `SCRIPT ARGS...` (after an optional -u), not {argv}")


def client(sock_path: str, argv: list[str], pid_fd: int | None = None) -> int:
    """The command that stands for a child: ask the zygote for one, pass it signals, exit as it exited."""
    pid, pending = None, []                        # a signal that comes before the child's pid is passed on after
    def forward(sig, _frame):
        if pid is None: pending.append(sig)
        else:
            with contextlib.suppress(ProcessLookupError): os.kill(pid, sig)
    for sig in FORWARDED: signal.signal(sig, forward)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(sock_path)
    request = json.dumps({'argv': argv, 'cwd': os.getcwd(), 'env': dict(os.environ)}).encode()
    socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2])
    conn.sendall(request)
    line = _recv_line(conn)
    if not line: return 1
    pid = int(line)
    for sig in pending: forward(sig, None)
    if pid_fd is not None:
        os.write(pid_fd, f'{pid}\n'.encode())
        os.close(pid_fd)
    status = _recv_line(conn).strip()
    if not status: return 1                        # the zygote ended first
    code = int(status)
    if code < 0:                                   # a signal ended the child: end the same way
        with contextlib.suppress(OSError): signal.signal(-code, signal.SIG_DFL)   # SIGKILL's can't be set
        os.kill(os.getpid(), -code)
    return code


class WarmPython:
    """A running zygote: `command(*args)` is the command line that runs `python *args` as a child of it."""
    EXECUTABLE_VAR = EXECUTABLE_VAR

    def __init__(self, sock: str): self.sock = sock

    def command(self, *args: str, pid_fd: int | None = None) -> list[str]:
        """`[sys.executable, *args]`, forked from the zygote. With `pid_fd` (pass it in `pass_fds`), the client
        writes the child's pid to that file descriptor (`popen` does)."""
        pid = ['--pid-fd', str(pid_fd)] if pid_fd is not None else []
        return [sys.executable, '-S', str(Path(__file__).resolve()), 'client', self.sock, *pid, '--', *args]

    def executable(self, folder: Path) -> Path:
        """A stand-in for `sys.executable` at `folder`/python, for programs that take an interpreter's path (e.g.
        a script's PYTHON variable): it runs `-m MODULE ...` and `SCRIPT ...` (after an optional `-u`) forked from
        the zygote. Anything else (`-c CODE`, other options, no arguments), and any start that passes a file
        descriptor beyond 0-2 (torch.compile's workers, multiprocessing: a forked child gets only the standard
        streams), runs in the interpreter that wrote the stand-in.

        A child whose environment has `EXECUTABLE_VAR` set to such a stand-in takes it as its `sys.executable`,
        so that the Pythons it starts that way (torchrun's launcher, and then its workers) are forked too."""
        path = Path(folder) / 'python'
        warm, real = ' '.join(map(shlex.quote, self.command())), shlex.quote(sys.executable)
        path.write_text(f'''#!/bin/sh
# python, forked from a warm parent (tools/warm_python.py) for `-m MODULE` and `SCRIPT`, after an optional -u;
# anything else, or a start that passes other file descriptors than 0-2, runs in {real}
a=$1; b=$2; [ "$a" = -u ] && {{ a=$2; b=$3; }}
case "$a" in
  -m) [ -n "$b" ] || exec {real} "$@" ;;
  -*|'') exec {real} "$@" ;;
esac
for fd in /proc/$$/fd/*; do
  case ${{fd##*/}} in 0|1|2) continue ;; esac
  [ -e "$fd" ] || continue                           # the listing's own, closed by now
  [ "$(readlink "$fd")" = "$(readlink -f "$0")" ] && continue   # this script, as the shell reads it
  exec {real} "$@"
done
exec {warm} "$@"
''')
        path.chmod(0o755)
        return path

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        """`subprocess.Popen([sys.executable, *args], **kwargs)` forked from the zygote, with `.child_pid`: the pid
        of the process that runs `args` (`.pid` is its client's)."""
        r, w = os.pipe()
        try: p = subprocess.Popen(self.command(*args, pid_fd=w), pass_fds=(w,), **kwargs)
        except BaseException:
            os.close(r)
            raise
        finally: os.close(w)
        with os.fdopen(r) as f: line = f.readline()
        p.child_pid = int(line) if line.strip() else None
        return p


@contextlib.contextmanager
def warm_python(env: dict | None = None, imports: list[str] | None = None):
    """A zygote started with `env` (default: this process's environment) that has imported `imports` (default:
    WARM_IMPORTS); yields a `WarmPython`. The zygote and its children end when the block does."""
    env = dict(os.environ if env is None else env)
    env.pop('OMP_NUM_THREADS', None)               # applied per child: libgomp would fix it at the zygote's import
    with tempfile.TemporaryDirectory(prefix='miniai-warm-') as d:
        sock = str(Path(d) / 'zygote.sock')
        z = subprocess.Popen([sys.executable, __file__, 'serve', sock, json.dumps(imports or WARM_IMPORTS)],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if z.stdout.readline().strip() != 'ready':
                raise RuntimeError(f"the warm Python parent did not start (exit code {z.wait()})")
            yield WarmPython(sock)
        finally:
            z.stdin.close()
            try: z.wait(timeout=10)
            except subprocess.TimeoutExpired:
                z.kill()
                z.wait()


def _end_child(run) -> None:
    """Call `run()` and end this process as `python` ends after running a script: the same exit status (or signal),
    threads joined, atexit functions run and streams flushed, but without tearing down the modules (which would
    touch, and so copy, every page shared with the zygote)."""
    import atexit
    import threading
    code, sig = 0, None
    try: run()
    except SystemExit as e:
        if e.code is None: code = 0
        elif isinstance(e.code, int): code = e.code
        else: print(e.code, file=sys.stderr); code = 1
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        sig = signal.SIGINT                        # python ends on an uncaught Ctrl-C by SIGINT, for the shell
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):        # as python: a failed last flush is reported, and the status is 120
        if stream is None or stream.closed: continue
        try: stream.flush()
        except Exception as e:
            with contextlib.suppress(Exception): print(f"Exception ignored in: {stream!r}\n{type(e).__name__}: {e}",
                                                       file=sys.__stderr__, flush=True)
            code = 120
    if sig is not None:
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(code & 0xFF)


def _main(argv: list[str]) -> int:
    if argv[:1] == ['serve'] and len(argv) == 3:
        job = serve(argv[1], json.loads(argv[2]))
        if job is not None: _end_child(lambda: run_request(*job))     # the child: exits as its script does
        return 0
    if argv[:1] == ['client'] and '--' in argv:
        head, args = argv[1:argv.index('--')], argv[argv.index('--') + 1:]
        pid_fd = int(head[2]) if head[1:2] == ['--pid-fd'] else None
        return client(head[0], args, pid_fd)
    print(f"usage: {sys.argv[0]} serve SOCKET IMPORTS_JSON | client SOCKET [--pid-fd N] -- ARGS...", file=sys.stderr)
    return 2


if __name__ == '__main__': sys.exit(_main(sys.argv[1:]))
