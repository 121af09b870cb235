"""The course's star-import surface: each module's `__all__` is exactly what `import *` gives, and it resolves."""
import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import miniai

MODULES = sorted(m.name for m in pkgutil.walk_packages(miniai.__path__, 'miniai.') if m.name != 'miniai.__main__')

# What the course's `from miniai.<module> import *` gives (fastai/course22p2), plus the names its notebooks import
# by name from each module.
COURSE = {
    'miniai.datasets': ['inplace', 'collate_dict', 'show_image', 'subplots', 'get_grid', 'show_images', 'DataLoaders',
                        'load_fashion_mnist'],
    'miniai.conv': ['def_device', 'conv', 'to_device', 'collate_device', 'get_model'],
    'miniai.learner': ['CancelFitException', 'CancelBatchException', 'CancelEpochException', 'Callback', 'run_cbs',
                       'SingleBatchCB', 'to_cpu', 'MetricsCB', 'DeviceCB', 'TrainCB', 'ProgressCB', 'with_cbs',
                       'Learner', 'TrainLearner', 'MomentumLearner', 'LRFinderCB', 'lr_find',
                       'set_seed', 'to_device', 'def_device'],
    'miniai.activations': ['set_seed', 'Hook', 'Hooks', 'HooksCallback', 'append_stats', 'get_hist', 'get_min',
                           'ActivationStats', 'GeneralRelu'],
    'miniai.init': ['clean_ipython_hist', 'clean_tb', 'clean_mem', 'BatchTransformCB', 'GeneralRelu', 'plot_func',
                    'init_weights', 'lsuv_init', 'conv', 'get_model', 'summary'],
    'miniai.sgd': ['BaseSchedCB', 'BatchSchedCB', 'HasLearnCB', 'RecorderCB', 'EpochSchedCB',
                   'SGD', 'Momentum', 'RMSProp', 'Adam', 'Nesterov', 'Adagrad', 'Lamb', 'Optimizer',
                   'CosineAnnealing', 'OneCycle', 'sched_lrs', 'plot_lrs'],
    'miniai.resnet': ['act_gr', '_conv_block', 'ResBlock', 'get_resnet'],
    'miniai.augment': ['summary', 'show_image_batch', 'CapturePreds', 'capture_preds', '_rand_erase1', 'rand_erase',
                       'RandErase', '_rand_copy1', 'rand_copy', 'RandCopy', 'BatchTransformCB', 'get_preds'],
    'miniai.accel': ['MixedPrecision', 'AccelerateCB'],
    'miniai.training': ['accuracy', 'report', 'Dataset', 'fit', 'get_dls'],
    'miniai.fid': ['ImageEval', '_sqrtm_newton_schulz', '_calc_stats', '_calc_fid', '_squared_mmd', '_calc_kid'],
    # the course's module has no `__all__`, so its star import gives every public name it imports
    'miniai.imports': [
        'AccelerateCB', 'ActivationStats', 'BaseSchedCB', 'BatchSchedCB', 'BatchTransformCB', 'Callback',
        'CancelBatchException', 'CancelEpochException', 'CancelFitException', 'CapturePreds', 'DataLoader',
        'DataLoaders', 'Dataset', 'DeviceCB', 'EpochSchedCB', 'F', 'GeneralRelu', 'HasLearnCB', 'Hook', 'Hooks',
        'HooksCallback', 'ImageReadMode', 'L', 'LRFinderCB', 'Learner', 'MetricsCB', 'MixedPrecision',
        'MomentumLearner', 'Path', 'ProgressCB', 'RandCopy', 'RandErase', 'RecorderCB', 'ResBlock', 'SingleBatchCB',
        'T', 'TF', 'TrainCB', 'TrainLearner', 'accuracy', 'act_gr', 'append_stats', 'attrgetter', 'capture_preds',
        'clean_ipython_hist', 'clean_mem', 'clean_tb', 'collate_device', 'collate_dict', 'conv', 'datasets',
        'def_device', 'default_collate', 'fc', 'fit', 'get_dls', 'get_grid', 'get_hist', 'get_min', 'get_model',
        'init', 'init_weights', 'inplace', 'itemgetter', 'load_dataset', 'lr_find', 'lr_scheduler', 'lsuv_init',
        'math', 'mpl', 'nn', 'np', 'optim', 'partial', 'plot_func', 'plt', 'rand_copy', 'rand_erase', 'random',
        'read_image', 'report', 'run_cbs', 'set_seed', 'show_image', 'show_image_batch', 'show_images', 'subplots',
        'summary', 'tensor', 'to_cpu', 'to_device', 'torch', 'with_cbs', 'wraps'],
    'miniai.diffusion': ['abar', 'inv_abar', 'noisify', 'collate_ddpm', 'dl_ddpm', 'timestep_embedding', 'pre_conv',
                         'upsample', 'lin', 'SelfAttention', 'SelfAttention2D', 'EmbResBlock', 'saved', 'DownBlock',
                         'UpBlock', 'EmbUNetModel', 'ddim_step', 'sample', 'cond_sample'],
}

# Private names that the course's notebooks define in exported cells and later use; the only `_` names a module may
# list in `__all__`.
COURSE_PRIVATE = {'miniai.resnet': {'_conv_block'}, 'miniai.augment': {'_rand_erase1', '_rand_copy1'},
                  'miniai.fid': {'_sqrtm_newton_schulz', '_calc_stats', '_calc_fid', '_squared_mmd', '_calc_kid'}}

# The course's signatures: every parameter with its default (inspect.Parameter.empty when it has none).
E = inspect.Parameter.empty


def _course_signatures():
    from miniai import accel, activations, augment, conv, diffusion, fid, init, learner, resnet, sgd, training
    D, silu = diffusion, torch.nn.SiLU
    return [
        (conv.conv, dict(ni=E, nf=E, ks=3, stride=2)),
        (learner.Learner, dict(model=E, dls=(0,), loss_func=F.mse_loss, lr=0.1, cbs=None, opt_func=torch.optim.SGD)),
        (learner.Learner.fit, dict(self=E, n_epochs=1, train=True, valid=True, cbs=None, lr=None)),
        (learner.MomentumLearner, dict(model=E, dls=E, loss_func=E, lr=None, cbs=None, opt_func=torch.optim.SGD,
                                       mom=0.85)),
        (learner.LRFinderCB, dict(gamma=1.3, max_mult=3)),
        (learner.lr_find, dict(learn=E, gamma=None, max_mult=3, start_lr=None, max_epochs=None)),
        (learner.Learner.lr_find, dict(self=E, gamma=None, max_mult=3, start_lr=None, max_epochs=None)),
        (learner.TrainCB, dict(n_inp=1)),
        (learner.ProgressCB, dict(plot=False)),
        (activations.set_seed, dict(seed=E, deterministic=False)),
        (activations.HooksCallback, dict(hookfunc=E, mod_filter=activations.fc.noop, on_train=True, on_valid=False,
                                         mods=None)),
        (init.BatchTransformCB, dict(tfm=E, on_train=True, on_val=True)),
        (init.GeneralRelu, dict(leak=None, sub=None, maxv=None)),
        (init.plot_func, dict(f=E, start=-5., end=5., steps=100)),
        (init.init_weights, dict(m=E, leaky=0.)),
        (init.get_model, dict(act=torch.nn.ReLU, nfs=None, norm=None)),
        (resnet.ResBlock, dict(ni=E, nf=E, stride=1, ks=3, act=resnet.act_gr, norm=None)),
        (resnet._conv_block, dict(ni=E, nf=E, stride=E, act=resnet.act_gr, norm=None, ks=3)),
        (augment.show_image_batch, dict(max_n=None, cbs=None)),
        (learner.Learner.show_image_batch, dict(self=E, max_n=9, cbs=None)),
        (learner.Learner.capture_preds, dict(self=E, cbs=None, inps=False)),
        (augment.capture_preds, dict(learn=E, cbs=None, inps=False)),
        (augment.rand_erase, dict(x=E, pct=0.2, max_num=4)),
        (augment.RandErase, dict(pct=0.2, max_num=4)),
        (augment.rand_copy, dict(x=E, pct=0.2, max_num=4)),
        (augment.RandCopy, dict(pct=0.2, max_num=4)),
        (augment._rand_erase1, dict(x=E, pct=E, xm=E, xs=E, mn=E, mx=E)),
        (augment._rand_copy1, dict(x=E, pct=E)),
        (accel.MixedPrecision, dict()),
        (accel.AccelerateCB, dict(n_inp=1, mixed_precision='fp16')),
        (sgd.RecorderCB, dict()),
        (sgd.BatchSchedCB, dict(sched=E)),
        (training.accuracy, dict(out=E, yb=E)),
        (training.report, dict(loss=E, preds=E, yb=E)),
        (training.Dataset, dict(x=E, y=E)),
        (training.fit, dict(epochs=E, model=E, loss_func=E, opt=E, train_dl=E, valid_dl=E)),
        (training.get_dls, dict(train_ds=E, valid_ds=E, bs=E)),
        (fid.ImageEval, dict(model=E, dls=E, cbs=None)),
        (fid.ImageEval.get_feats, dict(self=E, samp=E)),
        (fid.ImageEval.fid, dict(self=E, samp=E)),
        (fid.ImageEval.kid, dict(self=E, samp=E)),
        (fid._sqrtm_newton_schulz, dict(mat=E, num_iters=100)),
        (fid._calc_stats, dict(feats=E)),
        (fid._calc_fid, dict(m1=E, c1=E, m2=E, c2=E)),
        (fid._squared_mmd, dict(x=E, y=E)),
        (fid._calc_kid, dict(x=E, y=E, maxs=50)),
        (D.abar, dict(t=E)),
        (D.inv_abar, dict(x=E)),
        (D.noisify, dict(x0=E)),
        (D.collate_ddpm, dict(b=E)),
        (D.dl_ddpm, dict(ds=E)),
        (D.timestep_embedding, dict(tsteps=E, emb_dim=E, max_period=10000)),
        (D.pre_conv, dict(ni=E, nf=E, ks=3, stride=1, act=silu, norm=None, bias=True)),
        (D.upsample, dict(nf=E)),
        (D.lin, dict(ni=E, nf=E, act=silu, norm=None, bias=True)),
        (D.SelfAttention, dict(ni=E, attn_chans=E, transpose=True)),
        (D.SelfAttention2D, dict(ni=E, attn_chans=E, transpose=True)),
        (D.EmbResBlock, dict(n_emb=E, ni=E, nf=None, ks=3, act=silu, norm=torch.nn.BatchNorm2d, attn_chans=0)),
        (D.saved, dict(m=E, blk=E)),
        (D.DownBlock, dict(n_emb=E, ni=E, nf=E, add_down=True, num_layers=1, attn_chans=0)),
        (D.UpBlock, dict(n_emb=E, ni=E, prev_nf=E, nf=E, add_up=True, num_layers=2, attn_chans=0)),
        (D.EmbUNetModel, dict(in_channels=3, out_channels=3, nfs=(224, 448, 672, 896), num_layers=1, attn_chans=8,
                              attn_start=1)),
        (D.ddim_step, dict(x_t=E, noise=E, abar_t=E, abar_t1=E, bbar_t=E, bbar_t1=E, eta=E, sig=E, clamp=True)),
        (D.sample, dict(f=E, model=E, sz=E, steps=E, eta=1., clamp=True)),
        (D.cond_sample, dict(c=E, f=E, model=E, sz=E, steps=E, eta=1.)),
    ]


@pytest.mark.parametrize('name', MODULES)
def test_star_import_gives_exactly_all(name):
    mod = importlib.import_module(name)
    assert isinstance(mod.__all__, (list, tuple)) and len(set(mod.__all__)) == len(mod.__all__)
    ns = {}
    exec(f'from {name} import *', ns)
    got = {k for k in ns if k != '__builtins__'}
    assert got == set(mod.__all__)
    assert not [k for k in got if k.startswith('_') and k != '__version__' and k not in COURSE_PRIVATE.get(name, ())]


@pytest.mark.parametrize('name,names', COURSE.items())
def test_course_names_are_where_course_users_look(name, names):
    mod = importlib.import_module(name)
    assert {n for n in names if not n.startswith('_')} <= set(mod.__all__)
    assert all(hasattr(mod, n) for n in names)     # private helpers a notebook uses by name: there, if not exported


@pytest.mark.parametrize('i', range(len(_course_signatures())))
def test_course_signatures_and_defaults(i):
    f, want = _course_signatures()[i]
    params = inspect.signature(f).parameters
    for name, default in want.items():
        assert name in params, f"{f.__qualname__} lacks the course's parameter {name!r}"
        assert params[name].default == default, f"{f.__qualname__}({name}=...) default differs from the course's"
    names = [n for n in params if n in want]
    assert names == list(want), f"{f.__qualname__}: the course's parameters come in another order"


def test_import_miniai_stays_light():
    code = ("import sys, miniai; "
            "print(sorted(m for m in ('matplotlib', 'datasets', 'fastprogress', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'


def test_course_import_line_resolves_shared_names_as_the_course_does():
    # where two sources give one name, the course's import order decides: the later import wins
    import datasets
    from torch.nn import init as torch_init

    import miniai.init
    import miniai.training
    ns = {}
    exec('from miniai.imports import *', ns)
    assert ns['get_dls'] is miniai.training.get_dls       # not miniai.datasets' Fashion-MNIST loaders
    assert ns['init'] is torch_init                        # torch.nn.init, not the miniai.init module
    assert ns['conv'] is miniai.init.conv and ns['load_dataset'] is datasets.load_dataset
    assert ns['T'].__name__ == 'torchvision.transforms' and ns['fc'].__name__ == 'fastcore.all'


def test_star_imports_in_the_course_order_give_the_course_get_dls():
    """The course's notebooks star-import `training` and then `datasets`: miniai's Fashion-MNIST `get_dls` (imported
    by name) must not replace the course's `get_dls(train_ds, valid_ds, bs)`."""
    ns = {}
    exec('from miniai.training import *\nfrom miniai.datasets import *', ns)
    assert ns['get_dls'] is miniai.training.get_dls
    from miniai.datasets import get_dls
    assert get_dls is not miniai.training.get_dls

