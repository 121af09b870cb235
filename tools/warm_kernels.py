#!/usr/bin/env python
"""Jupyter kernels forked from a warm parent, so running many notebooks does not pay torch's start-up each time.

A fresh kernel of this Python spends about 4 CPU seconds importing torch, matplotlib, IPython and miniai before it
runs the first cell, and the test suite runs every notebook in a fresh kernel. `warm_kernels(env)` starts one
parent process (the "zygote") that imports those modules once, without running anything, and yields a kernelspec
folder whose kernel command asks the zygote for a kernel: the zygote forks, and the child becomes an ordinary
ipykernel on the connection file that jupyter_client wrote. Each notebook still gets its own process, its own
namespace and a clean exit; nbclient talks to it as to any kernel.

The kernel command is a small client (`python warm_kernels.py client SOCKET CONNECTION_FILE`, no torch import)
that stands for the forked kernel towards jupyter_client: it passes SIGINT (interrupt) and SIGTERM on to it and
exits with its exit status; if the client is killed (SIGKILL), the zygote sees its connection close and kills
the kernel. Forking is safe here because the zygote only imports: no torch op has run, so no thread pool exists.
`tools/run_notebooks.py` uses this for `run_all(..., kernel_dir=...)`; `tests/test_notebooks.py` keeps one zygote
per test worker.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = 'miniai-venv'                   # the name tools/run_notebooks.py asks for
# what the notebooks import, imported once in the zygote (matplotlib without pyplot: the kernel picks the backend;
# miniai.metrics before torcheval, as the notebooks import them, so torcheval's import warning is silenced as there)
WARM_IMPORTS = ['torch', 'torch.nn.functional', 'numpy', 'pandas', 'PIL.Image', 'matplotlib', 'IPython',
                'IPython.display', 'ipykernel.kernelapp', 'fastcore.all', 'fastprogress', 'nbdev.showdoc',
                'miniai.core', 'miniai.learner', 'miniai.callbacks', 'miniai.metrics', 'torcheval.metrics',
                'miniai.datasets', 'miniai.conv', 'miniai.sgd', 'miniai.activations', 'miniai.init', 'miniai.augment',
                'miniai.accel', 'miniai.checkpoint']


def _recv_line(conn: socket.socket) -> bytes:
    buf = b''
    while not buf.endswith(b'\n'):
        chunk = conn.recv(4096)
        if not chunk: break
        buf += chunk
    return buf


def serve(sock_path: str):
    """The zygote: import WARM_IMPORTS, then fork a kernel for each client that connects, and report its exit."""
    import importlib
    for name in WARM_IMPORTS:
        with contextlib.suppress(ImportError): importlib.import_module(name)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(16)
    print('ready', flush=True)                     # the parent waits for this line
    kernels: dict[socket.socket, int] = {}         # client connection -> the pid of its kernel
    while True:
        ready, _, _ = select.select([srv, sys.stdin, *kernels], [], [], 0.2)
        if sys.stdin in ready and not sys.stdin.buffer.read1(1): break     # our parent closed our stdin: stop
        if srv in ready:
            conn, _ = srv.accept()
            req = json.loads(_recv_line(conn))
            pid = os.fork()
            if pid == 0:                                                   # the kernel
                srv.close()
                conn.close()
                os.setsid()
                os.environ.clear()
                os.environ.update(req['env'])
                os.chdir(req['cwd'])
                sys.argv = ['ipykernel_launcher', '-f', req['connection_file']]
                code = 0
                try:
                    from ipykernel.kernelapp import IPKernelApp
                    IPKernelApp.launch_instance(argv=sys.argv[1:])
                except SystemExit as e: code = e.code if isinstance(e.code, int) else 0
                except BaseException: code = 1
                os._exit(code)
            conn.sendall(f'{pid}\n'.encode())
            kernels[conn] = pid
        for conn in [c for c in kernels if c in ready]:                    # a client went away: its kernel too
            if not conn.recv(1):
                with contextlib.suppress(ProcessLookupError): os.kill(kernels[conn], signal.SIGKILL)
        for conn, pid in list(kernels.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done: continue
            with contextlib.suppress(OSError): conn.sendall(f'{os.waitstatus_to_exitcode(status)}\n'.encode())
            conn.close()
            del kernels[conn]
    for pid in kernels.values():
        with contextlib.suppress(ProcessLookupError): os.kill(pid, signal.SIGKILL)


def client(sock_path: str, connection_file: str) -> int:
    """The kernel command: ask the zygote for a kernel, stand for it (signals in, exit status out)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(sock_path)
    conn.sendall(json.dumps({'connection_file': connection_file, 'cwd': os.getcwd(), 'env': dict(os.environ)})
                 .encode() + b'\n')
    pid = int(_recv_line(conn))
    def forward(sig, _frame):
        with contextlib.suppress(ProcessLookupError): os.kill(pid, sig)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP): signal.signal(sig, forward)
    status = _recv_line(conn).strip()
    return int(status) if status else 1


@contextlib.contextmanager
def warm_kernels(env: dict, folder: Path | None = None):
    """A zygote started with `env` (the kernels' environment) and a kernelspec folder whose kernel it forks;
    the zygote and its kernels end when the block does."""
    with tempfile.TemporaryDirectory(prefix='miniai-warm-') as d:
        folder = Path(folder or d)
        sock = str(Path(d) / 'zygote.sock')
        z = subprocess.Popen([sys.executable, __file__, 'serve', sock], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        try:
            if z.stdout.readline().strip() != 'ready':
                raise RuntimeError(f"the warm kernel parent did not start (exit code {z.wait()})")
            spec = folder / KERNEL_NAME
            spec.mkdir(parents=True, exist_ok=True)
            argv = [sys.executable, '-S', str(Path(__file__).resolve()), 'client', sock, '{connection_file}']
            (spec / 'kernel.json').write_text(json.dumps(
                {'argv': argv, 'display_name': 'miniai (warm)', 'language': 'python', 'env': env}, indent=1))
            yield folder
        finally:
            z.stdin.close()
            try: z.wait(timeout=10)
            except subprocess.TimeoutExpired:
                z.kill()
                z.wait()


if __name__ == '__main__':
    if sys.argv[1:2] == ['serve']: serve(sys.argv[2])
    elif sys.argv[1:2] == ['client']: sys.exit(client(sys.argv[2], sys.argv[3]))
    else: sys.exit(f"usage: {sys.argv[0]} serve SOCKET | client SOCKET CONNECTION_FILE")
