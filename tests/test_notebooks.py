"""Every notebook in nbs/ (the module notebooks and the tutorials) runs top to bottom in quick mode.

Each runs in a fresh kernel of this Python, forked from a parent that has imported torch and miniai once
(`tools/warm_python.py`: a fresh interpreter's imports would cost about 4 CPU seconds a notebook), with
MINIAI_QUICK=1 (a subset of the data, fewer epochs), a time limit per cell, and in a temp copy of nbs/ so the
committed outputs are never touched. Each notebook is a test of its own, so `pytest -n 2` (as `make test` runs it)
keeps two kernels busy beside the other tests; a failure shows the failing cell and its traceback. The notebooks
keep their files in temp folders of their own, so they don't depend on each other or on the order they run in.
"""
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import load_tool

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / 'nbs').glob('*.ipynb'))
CELL_TIMEOUT = 300   # seconds; a quick-mode cell takes a few
WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))   # kernels at the same time: one per test worker


@pytest.fixture(scope='module')
def runner(tmp_path_factory, warm):
    """tools/run_notebooks.py as a module, and a copy of nbs/ to run the notebooks in."""
    for mod in ('nbclient', 'ipykernel', 'nbformat'):
        if importlib.util.find_spec(mod) is None:        # in CI a missing runner is a failure, not a skip
            msg = f"{mod} is not installed: pip install -e '.[dev]'"
            (pytest.fail if os.environ.get('CI') else pytest.skip)(msg)
    work = tmp_path_factory.mktemp('nbs-run')
    shutil.copytree(ROOT / 'nbs', work / 'nbs')
    rn = load_tool('run_notebooks')
    # kernels forked from the warm parent, and so the Pythons they start with sys.executable (10_distributed's
    # torchrun and its workers)
    env = {**rn.kernel_env(quick=True, workers=WORKERS), warm.EXECUTABLE_VAR: str(warm.executable(work))}
    return rn, work / 'nbs', rn.write_kernelspec(work / 'kernel', env, python=warm.command())


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert 'index.ipynb' in names and len(names) > 10, sorted(names)


@pytest.mark.slow
@pytest.mark.parametrize('name', [p.name for p in NOTEBOOKS])
def test_notebook_runs(runner, name):
    rn, nbs, kernel_dir = runner
    (nb, err, secs), = rn.run_all([nbs / name], quick=True, timeout=CELL_TIMEOUT, kernel_dir=kernel_dir).values()
    print(f"{name}: {'FAILED' if err else 'ok'} in {secs:.1f}s", file=sys.stderr)
    assert err is None, f"{name} failed after {secs:.0f}s:\n{rn.plain(str(err))[-6000:]}"
    assert nb is not None and any(c.get('outputs') for c in nb.cells if c.cell_type == 'code')
