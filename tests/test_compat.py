"""The course's star-import surface: each module's `__all__` is exactly what `import *` gives, and it resolves."""
import importlib
import pkgutil
import subprocess
import sys

import pytest

import miniai

MODULES = sorted(m.name for m in pkgutil.walk_packages(miniai.__path__, 'miniai.') if m.name != 'miniai.__main__')

# What the course's notebooks and the seeds import by name from each module.
COURSE = {
    'miniai.datasets': ['inplace', 'collate_dict', 'DataLoaders', 'show_image', 'show_images', 'get_grid', 'get_dls',
                        'load_fashion_mnist'],
    'miniai.learner': ['Learner', 'TrainLearner', 'MomentumLearner', 'Callback', 'run_cbs', 'CancelFitException',
                       'CancelEpochException', 'CancelBatchException', 'TrainCB', 'DeviceCB', 'SingleBatchCB',
                       'MetricsCB', 'ProgressCB', 'LRFinderCB', 'set_seed', 'to_device', 'to_cpu', 'def_device'],
    'miniai.conv': ['conv', 'get_model'],
    'miniai.activations': ['GeneralRelu', 'Hook', 'Hooks', 'HooksCallback', 'ActivationStats', 'append_stats',
                           'get_hist', 'get_min'],
    'miniai.init': ['init_weights', 'lsuv_init', 'summary'],
    'miniai.sgd': ['SGD', 'Momentum', 'RMSProp', 'Adam', 'Nesterov', 'Adagrad', 'Lamb', 'Optimizer', 'BaseSchedCB',
                   'BatchSchedCB', 'EpochSchedCB', 'RecorderCB', 'CosineAnnealing', 'OneCycle', 'sched_lrs',
                   'plot_lrs'],
    'miniai.resnet': ['ResBlock', 'get_resnet'],
    'miniai.augment': ['BatchTransformCB', 'show_image_batch', 'CapturePreds', 'get_preds'],
}


@pytest.mark.parametrize('name', MODULES)
def test_star_import_gives_exactly_all(name):
    mod = importlib.import_module(name)
    assert isinstance(mod.__all__, (list, tuple)) and len(set(mod.__all__)) == len(mod.__all__)
    ns = {}
    exec(f'from {name} import *', ns)
    got = {k for k in ns if k != '__builtins__'}
    assert got == set(mod.__all__)
    assert not [k for k in got if k.startswith('_') and k != '__version__']


@pytest.mark.parametrize('name,names', COURSE.items())
def test_course_names_are_where_course_users_look(name, names):
    mod = importlib.import_module(name)
    assert set(names) <= set(mod.__all__)


def test_import_miniai_stays_light():
    code = "import sys, miniai; print(sorted(m for m in ('matplotlib', 'datasets', 'fastprogress', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'
