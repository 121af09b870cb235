#!/usr/bin/env python
"""Execute the notebooks in nbs/ top to bottom, with this Python as the kernel.

    .venv/bin/python tools/run_notebooks.py                   # full run: every nbs/*.ipynb, saved and cleaned
    .venv/bin/python tools/run_notebooks.py nbs/05_sgd.ipynb  # just these
    .venv/bin/python tools/run_notebooks.py --quick           # MINIAI_QUICK=1 in a temp copy: nothing saved

The full run writes each notebook's outputs back in place, then cleans it as `nbdev_clean` does (no execution
counts, timings or kernel metadata), so the committed notebooks carry outputs but no run-specific noise. Wall
times go too (`strip_wall_times`): the `time` column of the metrics tables that MetricsCB/ProgressCB show and
the elapsed/remaining times of progress bars, which say more about how loaded the machine was than about miniai
(the benchmarks page has measured times). Tables a notebook builds itself, e.g. a comparison with a `seconds`
column, are left as they are.

    .venv/bin/python tools/run_notebooks.py --strip-times nbs/*.ipynb   # only that, on saved notebooks
The kernel is a kernelspec made on the fly for `sys.executable` (whatever kernels the user has installed), with
the checkout first on PYTHONPATH: the notebooks always run this checkout's miniai. `tests/test_notebooks.py`
uses `run_all` from here.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
KERNEL_NAME = 'miniai-venv'


def plain(text: str) -> str:
    """`text` without ANSI colour codes (tracebacks from the kernel are coloured)."""
    return re.sub(r'\x1b\[[0-9;]*[A-Za-z]', '', text)


def notebooks(paths=None) -> list[Path]:
    """The notebooks named in `paths`, else every nbs/*.ipynb (index first, then by name)."""
    if paths: return [Path(p).resolve() for p in paths]
    return sorted(NBS.glob('*.ipynb'), key=lambda p: (p.name != 'index.ipynb', p.name))


def kernel_env(quick: bool, workers: int = 1) -> dict:
    """The kernel's environment: this checkout first on the path, quick mode on or off, the cores shared."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in [env.get('PYTHONPATH')] if p])
    if quick: env['MINIAI_QUICK'] = '1'
    else: env.pop('MINIAI_QUICK', None)
    env.pop('MPLBACKEND', None)            # an inherited Agg backend would leave the notebooks without plots
    if workers > 1:                        # two kernels each using every core would only fight over them
        env.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // workers)))
    return env


def write_kernelspec(folder: Path, env: dict, python: list[str] | None = None) -> Path:
    """A kernelspec under `folder` starting `python` (default: `sys.executable`; tools/warm_python.py's
    `WarmPython.command()` forks kernels from a warm parent) with `env`, as `jupyter kernelspec` would write it."""
    spec = folder / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    python = python or [sys.executable, '-Xfrozen_modules=off']
    argv = [*python, '-m', 'ipykernel_launcher', '-f', '{connection_file}']
    (spec / 'kernel.json').write_text(json.dumps(
        {'argv': argv, 'display_name': 'miniai (this Python)', 'language': 'python', 'env': env}, indent=1))
    return folder


async def execute(path: Path, kernel_dir: Path, timeout: int):
    """Run the notebook at `path` in a fresh kernel from `kernel_dir`, in its folder; returns the executed nb.

    Raises nbclient's `CellExecutionError` (the failing cell and its traceback) or `CellTimeoutError`.
    """
    import nbformat
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    ksm = KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)
    km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)
    client = NotebookClient(nb, km=km, timeout=timeout, startup_timeout=120, record_timing=False,
                            resources={'metadata': {'path': str(path.parent)}})
    try: await client.async_execute()
    finally:                               # the kernel manager is ours, so nbclient leaves the cleaning up to us
        if client.kc is not None: client.kc.stop_channels()
        if km.has_kernel: await km.shutdown_kernel(now=True)
    return nb


_TABLE = re.compile(r'<table\b.*?</table>', re.S)
_CELL = re.compile(r'(\s*)<(t[hd])>(.*?)</t[hd]>', re.S)
_ROW = re.compile(r'<tr>(.*?)</tr>', re.S)
_TEXT_HEAD = re.compile(r'^(epoch\b.*) time$', re.M)                # MetricsCB's plain-text table
_TEXT_ROW = re.compile(r'^(\d+(?: \S+)+) \d+:\d\d$', re.M)           # epoch, the values, mm:ss
_BAR_TIME = re.compile(r'\[(\d+/\d+) \d+:\d\d(?::\d\d)?(?:(?:<|&lt;)\d+:\d\d(?::\d\d)?)?([^\]\n]*)\]')


def _drop_time_column(table: str) -> str:
    """`table` without its `time` column (a `<th>time</th>` header and the cell at that position in every row)."""
    rows = _ROW.findall(table)
    if not rows: return table
    heads = [m[3].strip() for m in _CELL.finditer(rows[0])]
    if 'time' not in heads: return table
    col = heads.index('time')

    def row(m):
        cells = list(_CELL.finditer(m[1]))
        if len(cells) <= col: return m[0]
        c = cells[col]
        return f'<tr>{m[1][:c.start()]}{m[1][c.end():]}</tr>'
    return _ROW.sub(row, table)


def strip_wall_times(text: str) -> str:
    """`text` (an output's HTML, markdown or plain text) without the training tables' `time` column (HTML, or
    MetricsCB's plain-text rows `0 0.739 0.732 0.0012 00:33`) and without progress bars' elapsed<remaining times
    (`[2/2 01:48<00:00]` -> `[2/2]`)."""
    text = _TABLE.sub(lambda m: _drop_time_column(m[0]), text)
    text = _TEXT_ROW.sub(r'\1', _TEXT_HEAD.sub(r'\1', text))
    return _BAR_TIME.sub(lambda m: f'[{m[1]}{m[2]}]', text)


def strip_nb_wall_times(nb) -> int:
    """Apply `strip_wall_times` to every output of the notebook `nb` (in place); returns how many changed."""
    n = 0
    for cell in nb.cells:
        for out in cell.get('outputs', []):
            fields = [(out, 'text')] + [(out.get('data', {}), k) for k in ('text/html', 'text/markdown', 'text/plain')]
            for holder, key in fields:
                if key not in holder: continue
                old = ''.join(holder[key]) if isinstance(holder[key], list) else holder[key]
                new = strip_wall_times(old)
                if new != old: holder[key], n = new, n + 1
    return n


def clean(path: Path):
    """Strip run-specific metadata with nbdev's own cleaner, written as `nbdev_clean` writes it (so running
    `nbdev_clean` afterwards changes nothing): no execution counts, kernel info or object ids."""
    from fastcore.nbio import read_nb, write_nb
    from nbdev.clean import clean_nb
    nb = read_nb(path)
    clean_nb(nb)
    write_nb(nb, path)


async def _run_all(paths, kernel_dir, timeout, workers, on_done):
    sem = asyncio.Semaphore(workers)

    async def one(p):
        async with sem:
            t0 = time.perf_counter()
            try:
                nb = await execute(p, kernel_dir, timeout)
                err = None
            except Exception as e:          # reported per notebook; the others still run
                nb, err = None, e
            on_done(p, nb, err, time.perf_counter() - t0)

    await asyncio.gather(*(one(p) for p in paths))


def run_all(paths, quick: bool, workers: int = 1, timeout: int = 600, on_done=None, kernel_dir: Path | None = None):
    """Execute `paths`, `workers` at a time; `on_done(path, executed nb or None, error or None, seconds)` each.

    `kernel_dir`: a kernelspec folder of one's own (`write_kernelspec` with tools/warm_python.py's command makes
    one whose kernels are forked from a warm parent); by default a fresh kernel of this Python with
    `kernel_env(quick, workers)`."""
    results = {}
    def record(p, nb, err, secs):
        results[p] = (nb, err, secs)
        if on_done: on_done(p, nb, err, secs)
    with tempfile.TemporaryDirectory(prefix='miniai-kernel-') as d:
        kernel_dir = kernel_dir or write_kernelspec(Path(d), kernel_env(quick, workers))
        asyncio.run(_run_all(list(paths), kernel_dir, timeout, workers, record))
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('notebooks', nargs='*', help="notebooks to run (default: every nbs/*.ipynb)")
    p.add_argument('--quick', action='store_true',
                   help="MINIAI_QUICK=1, in a temp copy of nbs/: checks that they run, writes nothing back")
    p.add_argument('--workers', type=int, default=1, help="notebooks run at the same time")
    p.add_argument('--timeout', type=int, default=1800, help="seconds allowed per cell")
    p.add_argument('--strip-times', action='store_true',
                   help="run nothing: remove wall times from the saved outputs of the notebooks (see above)")
    args = p.parse_args(argv)
    paths = notebooks(args.notebooks)
    if not paths: p.error(f"no notebooks found in {NBS}")
    if args.strip_times:
        import nbformat
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            if n := strip_nb_wall_times(nb):
                nbformat.write(nb, path)
                clean(path)
            print(f"{path.name}: {n} outputs without wall times")
        return 0
    tmp = None
    if args.quick:                          # run copies, beside copies of everything they might read
        tmp = Path(tempfile.mkdtemp(prefix='miniai-nbs-'))
        shutil.copytree(NBS, tmp / 'nbs')
        paths = [tmp / 'nbs' / q.name for q in paths]
    t0, failed = time.perf_counter(), []

    def done(path, nb, err, secs):
        if err is None and not args.quick:
            import nbformat
            strip_nb_wall_times(nb)
            nbformat.write(nb, path)
            clean(path)
        if err is not None: failed.append(path.name)
        print(f"{'FAIL' if err else 'ok  '} {path.name:32s} {secs:7.1f}s", flush=True)
        if err is not None: print(plain(str(err))[-4000:], file=sys.stderr, flush=True)

    try: run_all(paths, args.quick, args.workers, args.timeout, done)
    finally:
        if tmp is not None: shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(paths) - len(failed)}/{len(paths)} notebooks ran in {time.perf_counter() - t0:.0f}s"
          + (f"; failed: {', '.join(failed)}" if failed else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
