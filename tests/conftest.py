"""Seeded factories for fast tests: synthetic data, tiny models, a synthetic learner (as fastai's synth_learner).

Under pytest-xdist (`make test` runs `pytest -n 2`) each worker gets its share of the cores for torch's threads,
so two workers don't each spin two threads on a 2-core machine; the child processes the tests start inherit it.
Each test goes to whichever worker is free, the slow ones first, except that the tests of a file in `ONE_WORKER`
run together on one worker (`pytest_xdist_make_scheduler` below).
"""
import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path

if (_workers := int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))) > 1:     # before torch reads it
    os.environ.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // _workers)))

import matplotlib  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from miniai.core import Callback, CancelFitException  # noqa: E402

matplotlib.use('Agg')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')  # tests never reach the network
os.environ.setdefault('HF_HUB_OFFLINE', '1')

ROOT = Path(__file__).resolve().parent.parent
# the real Fashion-MNIST IDX files, where this machine has them (`apt-get install dataset-fashion-mnist`)
REAL_DATA = os.environ.get('MINIAI_DATA') or ('/usr/share/datasets/fashion-mnist'
                                              if Path('/usr/share/datasets/fashion-mnist').is_dir() else None)


class StopAfter(Callback):
    """Simulates a run killed after epoch `n` (0-based) has been checkpointed: cancels the fit after its eval."""
    order = 30
    def __init__(self, n): self.n = n
    def after_epoch(self, learn):
        if not learn.training and learn.epoch == self.n: raise CancelFitException()


class DLs:
    """The smallest thing a Learner accepts as dls."""
    def __init__(self, train, valid): self.train, self.valid = train, valid


def linear_data(n=200, a=2., b=1., bs=32, seed=0):
    """y = a*x + b + noise, as loaders of (x, y) with x and y shaped (bs, 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g)
    y = a * x + b + 0.1 * torch.randn(n, 1, generator=g)
    return DLs(DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True),
               DataLoader(TensorDataset(x, y), batch_size=bs))


def toy_images(n=230, bs=64, seed=0, n_classes=10):
    """A learnable 10-class set of 1×28×28 images (class k brightens row band k); n not a multiple of bs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    for k in range(n_classes): x[y == k, :, 2 * k + 4:2 * k + 7, :] += 1.
    return DLs(DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True),
               DataLoader(TensorDataset(x, y), batch_size=bs))


def tiny_cnn(n_classes=10):
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_classes))


@pytest.fixture
def lin_dls(): return linear_data()


@pytest.fixture
def img_dls(): return toy_images()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    # only when a test turned it on: the switch's first call imports torch._inductor, seconds per process
    if torch.are_deterministic_algorithms_enabled(): torch.use_deterministic_algorithms(False)


# The files whose tests run `miniai train` in-process: their runs draw blank final plots (`blank_run_plots`)
BLANK_PLOTS_IN = {'test_cli.py', 'test_predict_cli.py', 'test_wandb.py'}


@contextmanager
def blank_run_plots():
    """While it lasts, `miniai train` draws its final plots as blank figures: drawing training.png and confusion.png
    costs most of a tiny run's second, and most tests read neither. The files are still written, through the same
    atomic path, and each call is checked against the real function's signature. The plots themselves are tested
    in test_callbacks, test_interpret and the tests marked `real_plots` (a new run and a resumed one)."""
    import inspect

    from matplotlib.figure import Figure

    from miniai import interpret, train_plots

    def blank_of(real):
        def blank(*args, **kwargs):
            inspect.signature(real).bind(*args, **kwargs)      # a call the real function would refuse fails here too
            return Figure(figsize=(1, 1))
        return blank

    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_plots, 'plot_training', blank_of(train_plots.plot_training))
        m.setattr(interpret.Interpretation, 'plot_confusion_matrix',
                  blank_of(interpret.Interpretation.plot_confusion_matrix))
        yield


@pytest.fixture(autouse=True)
def _blank_run_plots(request):
    """`blank_run_plots` for every test of the files in BLANK_PLOTS_IN, unless marked `real_plots`."""
    if request.node.path.name not in BLANK_PLOTS_IN or request.node.get_closest_marker('real_plots'):
        yield
        return
    with blank_run_plots(): yield


@pytest.fixture(scope='session')
def warm():
    """A warm Python parent for this worker (tools/warm_python.py): `warm.popen(['-m', 'miniai', 'train', ...])`
    and `warm.command(...)` start a process of their own, as `python ...` would, without paying torch's imports
    again. Its environment is a notebook kernel's (no MPLBACKEND: matplotlib reads it at import); each process
    gets the environment it is started with."""
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p])}
    for name in ('MPLBACKEND', 'MINIAI_QUICK'): env.pop(name, None)
    with load_tool('warm_python').warm_python(env) as w: yield w


@pytest.fixture
def warm_course_kernels(warm, monkeypatch):
    """tools/run_course_notebooks.py as a module, its kernels forked from the warm parent."""
    rc = load_tool('run_course_notebooks')
    write = rc.write_kernelspec
    monkeypatch.setattr(rc, 'write_kernelspec', lambda folder: write(folder, python=warm.command()))
    return rc


def load_tool(name, folder: str = 'tools'):
    """The script `folder`/`name`.py as a module (tools/ and benchmarks/ are not packages); `folder` goes on
    sys.path while it loads, for the script's imports of its neighbours (benchmarks' `common`)."""
    folder = Path(__file__).resolve().parent.parent / folder
    path = folder / f'{name}.py'
    sys.path.insert(0, str(folder))
    before = set(sys.modules)
    try: return _exec_module(name, path)
    finally:
        sys.path.remove(str(folder))
        # forget the neighbours it imported (benchmarks' `common`), so they can't shadow a same-named module later
        for m in set(sys.modules) - before:
            if str(getattr(sys.modules[m], '__file__', None) or '').startswith(str(folder)): del sys.modules[m]


def _exec_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# Files whose tests share a module fixture that must be made once: under `pytest -n N` they run whole on one worker.
ONE_WORKER = {
    'test_docs.py': "the site is built into _docs/ (two builds at once would overwrite each other's files)",
    'test_distributed.py': 'one torchrun of two processes (`ddp_run`) serves most of its tests',
    'test_metrics.py': 'one interpreter start-up serves every case',
}


def pytest_xdist_make_scheduler(config, log):
    """xdist's `load` schedule (each test to the first free worker), but the tests of a file in ONE_WORKER form one
    unit of work. (Its `loadgroup` mode does not group on this pytest: the group goes in a node id pytest no longer
    lets a plugin change.) Another `--dist` mode given on the command line is left as it is."""
    if config.getoption('dist') != 'load': return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerFiles(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split('::', 1)[0]
            return path if Path(path).name in ONE_WORKER else nodeid

    return OneWorkerFiles(config, log)


def pytest_collection_modifyitems(config, items):
    """The tests marked slow first, each group in its file order: under `pytest -n 2` (`make test`) the quick tests
    then fill the gaps at the end, instead of one long test running alone while the other worker waits."""
    items.sort(key=lambda item: item.get_closest_marker('slow') is None)
