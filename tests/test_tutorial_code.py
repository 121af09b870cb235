"""The code of the write-ups the tutorials follow is the contract: the set-up, optimizer, scheduler and callback code
of "Accelerated SGD" (the fast.ai course's notebook, as written up by Benedict Thekkel) and of galopy's "Scheduler"
post, copied as written, runs on the package (on a tiny synthetic Fashion-MNIST in the hub's schema instead of
`load_dataset("fashion_mnist")`).

Each test checks what the write-up's code should have done (trained, recorded, plotted), not only that it ran.
"""
import math
import pickle  # noqa
from functools import partial
from pathlib import Path

import fastcore.all as fc
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from test_datasets import NAMES, write_idx
from torch import nn, optim, tensor
from torch.optim import lr_scheduler
from torcheval.metrics import MulticlassAccuracy

from miniai.activations import *
from miniai.conv import *
from miniai.datasets import *
from miniai.init import *
from miniai.learner import *
from miniai.sgd import *


def learnable_source(folder, n_train=640, n_test=192, seed=0):
    """IDX files of noisy images where class k lights up row band k: learnable in a few dozen steps."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('test', n_test)):
        y = rng.integers(0, 10, n)
        x = rng.normal(60, 30, (n, 28, 28))
        for k in range(10): x[y == k, 2 * k + 4:2 * k + 7, :] += 150
        write_idx(folder / NAMES[split][0], x.clip(0, 255))
        write_idx(folder / NAMES[split][1], y)


@pytest.fixture(scope='module')
def dsd(tmp_path_factory):
    folder = tmp_path_factory.mktemp('fmnist')
    learnable_source(folder)
    with pytest.MonkeyPatch.context() as m:
        m.setenv('MINIAI_CACHE', str(folder / 'cache'))
        return load_fashion_mnist(folder)  # the data line: `dsd = load_dataset(name)` in the write-ups


@pytest.fixture(autouse=True)
def _in_a_folder_of_its_own(tmp_path, monkeypatch):
    """The code writes where it runs (ProgressCB(plot=True) saves progress.png outside a notebook): not into the
    checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope='module')
def accel_sgd(dsd):
    """The set-up cell of "Accelerated SGD", unchanged but for the data line."""
    set_seed(42)
    xl,yl = 'image','label'  # noqa: F841 (the cell as it is)
    bs = 1024
    xmean,xstd = 0.28, 0.35

    @inplace
    def transformi(b): b[xl] = [(TF.to_tensor(o)-xmean)/xstd for o in b[xl]]

    tds = dsd.with_transform(transformi)
    dls = DataLoaders.from_dd(tds, bs, num_workers=4)
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    astats = ActivationStats(fc.risinstance(GeneralRelu))
    cbs = [DeviceCB(), metrics, ProgressCB(plot=True), astats]
    act_gr = partial(GeneralRelu, leak=0.1, sub=0.4)
    iw = partial(init_weights, leaky=0.1)
    lrf_cbs = [DeviceCB(), LRFinderCB()]
    xb, yb = next(iter(dls.train))
    assert xb.shape == (640, 1, 28, 28) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert abs(xb.mean().item()) < 1 and len(dls.valid) == 1
    # The training tests below reuse this set-up with 64-image batches and no worker processes: 4 workers start
    # per epoch, which costs seconds on 2 cores, and 1024-image batches are one step an epoch on this tiny set.
    dls = DataLoaders.from_dd(tds, 64)
    return fc.NS(dls=dls, metrics=metrics, astats=astats, cbs=cbs, act_gr=act_gr, iw=iw, lrf_cbs=lrf_cbs)


# "Accelerated SGD"'s own optimizer classes, as written there (plain classes, not torch optimizers).
class SGD:
    def __init__(self, params, lr, wd=0.):
        params = list(params)
        fc.store_attr()
        self.i = 0

    def step(self):
        with torch.no_grad():
            for p in self.params:
                self.reg_step(p)
                self.opt_step(p)
        self.i +=1

    def opt_step(self, p): p -= p.grad * self.lr
    def reg_step(self, p):
        if self.wd != 0: p *= 1 - self.lr*self.wd

    def zero_grad(self):
        for p in self.params: p.grad.data.zero_()


class Momentum(SGD):
    def __init__(self, params, lr, wd=0., mom=0.9):
        super().__init__(params, lr=lr, wd=wd)
        self.mom=mom

    def opt_step(self, p):
        if not hasattr(p, 'grad_avg'): p.grad_avg = torch.zeros_like(p.grad)
        p.grad_avg = p.grad_avg*self.mom + p.grad*(1-self.mom)
        p -= self.lr * p.grad_avg


class Adam(SGD):
    def __init__(self, params, lr, wd=0., beta1=0.9, beta2=0.99, eps=1e-5):
        super().__init__(params, lr=lr, wd=wd)
        self.beta1,self.beta2,self.eps = beta1,beta2,eps

    def opt_step(self, p):
        if not hasattr(p, 'avg'): p.avg = torch.zeros_like(p.grad.data)
        if not hasattr(p, 'sqr_avg'): p.sqr_avg = torch.zeros_like(p.grad.data)
        p.avg = self.beta1*p.avg + (1-self.beta1)*p.grad
        unbias_avg = p.avg / (1 - (self.beta1**(self.i+1)))
        p.sqr_avg = self.beta2*p.sqr_avg + (1-self.beta2)*(p.grad**2)
        unbias_sqr_avg = p.sqr_avg / (1 - (self.beta2**(self.i+1)))
        p -= self.lr * unbias_avg / (unbias_sqr_avg + self.eps).sqrt()


@pytest.mark.slow
@pytest.mark.parametrize('opt_func,lr', [(SGD, 0.4), (Momentum, 1.5), (Adam, 6e-3)])
def test_accel_sgd_optimizer_classes_train(accel_sgd, opt_func, lr):
    s = accel_sgd
    set_seed(42)
    model = get_model(s.act_gr, norm=nn.BatchNorm2d).apply(s.iw)
    learn = TrainLearner(model, s.dls, F.cross_entropy, lr=lr, cbs=s.cbs, opt_func=opt_func)
    learn.fit(3)
    hist = s.metrics.history[-3:]
    assert [r['epoch'] for r in hist] == [0, 1, 2]
    assert hist[-1]['train_loss'] < hist[0]['train_loss'] and hist[-1]['valid_accuracy'] > 0.5  # it learns
    assert learn.opt.i == 3 * len(s.dls.train)
    assert s.astats.color_dim().axes  # the write-up looks at the activations after each run
    # ProgressCB(plot=True) outside a notebook saves its curve where the code runs (this test's own folder)
    assert Path('progress.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.slow
def test_accel_sgd_schedulers_and_recorder(accel_sgd):
    s = accel_sgd
    def _lr(cb): return cb.pg['lr']
    tmax = 3 * len(s.dls.train)
    sched = partial(lr_scheduler.CosineAnnealingLR, T_max=tmax)
    set_seed(42)
    model = get_model(s.act_gr, norm=nn.BatchNorm2d).apply(s.iw)
    rec = RecorderCB(lr=_lr)
    xtra = [BatchSchedCB(sched),rec]
    learn = TrainLearner(model, s.dls, F.cross_entropy, lr=2e-2, cbs=s.cbs+xtra, opt_func=optim.AdamW)
    learn.fit(3)
    # RecorderCB runs after BatchSchedCB (same order, added later), so it sees the lr of the next batch
    want = [2e-2 * (1 + math.cos(math.pi * i / tmax)) / 2 for i in range(1, tmax + 1)]
    assert rec.recs['lr'] == pytest.approx(want, abs=1e-9)
    assert rec.plot() is not None

    class EpochSchedCB(BaseSchedCB):
        def after_epoch(self, learn): self._step(learn)
    sched = partial(lr_scheduler.CosineAnnealingLR, T_max=3)
    set_seed(42)
    xtra = [EpochSchedCB(sched),rec]
    model = get_model(s.act_gr, norm=nn.BatchNorm2d).apply(s.iw)
    learn = TrainLearner(model, s.dls, F.cross_entropy, lr=2e-2, cbs=s.cbs+xtra, opt_func=optim.AdamW)
    learn.fit(3)
    assert rec.recs['lr'] == pytest.approx([2e-2] * 10 + [1.5e-2] * 10 + [0.5e-2] * 10, abs=1e-9)  # per epoch

    def _beta1(cb): return cb.pg['betas'][0]
    rec = RecorderCB(lr=_lr, mom=_beta1)
    set_seed(42)
    lr,epochs = 6e-2,5
    model = get_model(s.act_gr, norm=nn.BatchNorm2d).apply(s.iw)
    tmax = epochs * len(s.dls.train)
    sched = partial(lr_scheduler.OneCycleLR, max_lr=lr, total_steps=tmax)
    xtra = [BatchSchedCB(sched), rec]
    learn = TrainLearner(model, s.dls, F.cross_entropy, lr=lr, cbs=s.cbs+xtra, opt_func=optim.AdamW)
    learn.fit(epochs)
    mom = rec.recs['mom']  # beta1 cycles 0.95 -> 0.85 -> 0.95 as the lr rises and falls
    assert mom[0] > 0.94 and min(mom) == pytest.approx(0.85, abs=1e-3) and mom[-1] == pytest.approx(0.95, abs=1e-3)


def test_accel_sgd_single_batch_peek_at_the_optimizer(accel_sgd):
    learn = TrainLearner(get_model(), accel_sgd.dls, F.cross_entropy, lr=6e-3, cbs=[DeviceCB(), SingleBatchCB()])
    learn.fit(1)
    opt = learn.opt
    sched = lr_scheduler.CosineAnnealingLR(opt, 100)
    assert sched.base_lrs == [0.006] and len(opt.param_groups) == 1


# galopy's "Scheduler" post: its schedulers and callbacks, as written there.
class Scheduler:
    def __init__(self, opt, T_max):
        self.opt = opt
        self.T_max = T_max
        self.cur_T = 1
        self.max_lr = opt.param_groups[0]['lr']


class CosineAnnealingPost(Scheduler):
    def __init__(self, opt, T_max):
        super().__init__(opt, T_max)

    def step(self):
        new_lr = .5*(self.max_lr)*(1+torch.cos(tensor(self.cur_T/self.T_max*torch.pi)))
        self.opt.param_groups[0]['lr'] = new_lr
        self.cur_T += 1

    def get_last_lr(self): return self.opt.param_groups[0]['lr']


class BaseSchedCBPost(Callback):
    def __init__(self, sched): self.sched = sched
    def before_fit(self, learn): self.schedo = self.sched(learn.opt)
    def _step(self, learn):
        if learn.training: self.schedo.step()


class BatchSchedCBPost(BaseSchedCBPost):
    def after_batch(self, learn): self._step(learn)


class RecorderCBPost(Callback):
    def __init__(self, **d): self.d = d
    def before_fit(self, learn):
        self.recs = {k:[] for k in self.d}
        self.pg = learn.opt.param_groups[0]

    def after_batch(self, learn):
        if not learn.training: return
        for k,v in self.d.items():
            self.recs[k].append(v(self))

    def plot(self):
        for k,v in self.recs.items():
            plt.plot(v, label=k)
            plt.legend()
            plt.show()


@pytest.mark.slow
def test_scheduler_post_learner_and_callback_code(accel_sgd):
    dls = accel_sgd.dls
    learn = TrainLearner(get_model(), dls, F.cross_entropy, cbs=[DeviceCB(), SingleBatchCB()])
    learn.fit()
    opt = learn.opt
    assert opt.param_groups[0]['lr'] == 0.1  # the Learner's default lr
    def _lr(cb): return cb.pg['lr']
    act_gr = partial(GeneralRelu, leak=0.1, sub=0.4)
    iw = partial(init_weights, leaky=0.1)
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    astats = ActivationStats(fc.risinstance(GeneralRelu))
    cbs = [DeviceCB(), metrics, ProgressCB(plot=False), astats]
    T_max = len(dls.train) * 3
    sched = partial(CosineAnnealingPost, T_max=T_max)
    set_seed(42)
    model = get_model(act_gr, norm=nn.BatchNorm2d).apply(iw)
    rec = RecorderCBPost(lr=_lr)
    xtra = [BatchSchedCBPost(sched),rec]
    learn = TrainLearner(model, dls, F.cross_entropy, lr=2e-2, cbs=cbs+xtra, opt_func=optim.AdamW)
    learn.fit(3)
    want = [2e-2 * (1 + math.cos(math.pi * i / T_max)) / 2 for i in range(1, T_max + 1)]
    assert [float(v) for v in rec.recs['lr']] == pytest.approx(want, abs=1e-7)
    assert len(metrics.history) == 3 and all('time' in r for r in metrics.history)   # one row an epoch
    rec.plot()


def test_scheduler_post_scheduler_works_with_our_sched_lrs():
    opt = optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    lrs = sched_lrs(CosineAnnealingPost(opt, T_max=4), 4)
    assert [float(v) if not isinstance(v, list) else v[0] for v in lrs] == pytest.approx(
        [0.1] + [0.05 * (1 + math.cos(math.pi * t / 4)) for t in range(1, 5)], abs=1e-7)
