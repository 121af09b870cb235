"""Every notebook in nbs/ (the module notebooks and the tutorials) runs top to bottom in quick mode.

Each runs in a fresh kernel of this Python (`tools/run_notebooks.py` makes the kernelspec), with MINIAI_QUICK=1
(a subset of the data, fewer epochs), a time limit per cell, and in a temp copy of nbs/ so the committed outputs
are never touched. Two notebooks run at a time; a failure shows the failing cell and its traceback. The
copy of nbs/ is under the pytest tmp dir.
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


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    """Run all notebooks once (two at a time) in a copy of nbs/; {name: (error, seconds, plain-text message)}."""
    for mod in ('nbclient', 'ipykernel', 'nbformat'):
        if importlib.util.find_spec(mod) is None:        # in CI a missing runner is a failure, not a skip
            msg = f"{mod} is not installed: pip install -e '.[dev]'"
            (pytest.fail if os.environ.get('CI') else pytest.skip)(msg)
    rn = load_tool('run_notebooks')
    work = tmp_path_factory.mktemp('nbs-run')
    shutil.copytree(ROOT / 'nbs', work / 'nbs')
    res = rn.run_all([work / 'nbs' / p.name for p in NOTEBOOKS], quick=True, workers=2, timeout=CELL_TIMEOUT)
    out = {}
    for path, (nb, err, secs) in res.items():
        out[path.name] = (err, secs, rn.plain(str(err)) if err else '')
        print(f"{path.name}: {'FAILED' if err else 'ok'} in {secs:.1f}s", file=sys.stderr)
    return out


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert 'index.ipynb' in names and len(names) > 10, sorted(names)


@pytest.mark.parametrize('name', [p.name for p in NOTEBOOKS])
def test_notebook_runs(results, name):
    err, secs, msg = results[name]
    assert err is None, f"{name} failed after {secs:.0f}s:\n{msg[-6000:]}"
