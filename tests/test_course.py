"""Code written for the fast.ai course's miniai runs on miniai: each test makes the course-style call and checks
the behaviour the course gives (the whole batch reaches BatchTransformCB, hook.stats holds histograms, ...)."""
import random
import sys
from types import SimpleNamespace

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import DLs, tiny_cnn, toy_images

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close('all')


def _ordered(n=96, bs=32):
    x, y = torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))
    ds = TensorDataset(x, y)
    return DLs(DataLoader(ds, bs), DataLoader(ds, bs)), x, y


class Record(nn.Module):
    """A model that remembers what it was given and returns logits."""
    def __init__(self):
        super().__init__()
        self.seen, self.lin = [], nn.Linear(28 * 28, 10)

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


# ---------------------------------------------------------------- conv
def test_conv_gives_the_course_device_helpers():
    from miniai.conv import collate_device, conv, def_device, to_device
    b = collate_device([(torch.ones(2), torch.tensor(1)), (torch.zeros(2), torch.tensor(0))])
    assert isinstance(b, list) and b[0].shape == (2, 2) and b[0].device.type == torch.device(def_device).type
    d = to_device({'x': torch.ones(1), 'y': [torch.zeros(1)]}, 'cpu')
    assert d['x'].device.type == 'cpu' and d['y'][0].device.type == 'cpu'
    layer = conv(1, 4, act=True)  # the course's 07 notebook: act=True means a ReLU
    assert isinstance(layer[-1], nn.ReLU) and len(conv(1, 4, act=False)) == 1


# ---------------------------------------------------------------- BatchTransformCB (course: miniai.init)
def test_batch_transform_cb_gets_the_whole_batch_in_both_phases():
    from miniai.augment import BatchTransformCB as FromAugment
    from miniai.init import BatchTransformCB
    from miniai.learner import TrainLearner
    assert FromAugment is BatchTransformCB
    dls, x, y = _ordered()
    seen = []

    def tfm(b):  # the course's `_norm(b)` style: a function of the batch tuple
        seen.append(len(b))
        xb, yb = b
        return xb * 2, yb
    model = Record()
    learn = TrainLearner(model, dls, F.cross_entropy, lr=0.01, cbs=BatchTransformCB(tfm))
    learn.fit(1)
    assert seen == [2] * 6  # three training and three validation batches, each the (x, y) tuple
    torch.testing.assert_close(torch.cat(model.seen[3:]), x * 2)  # validation batches too


def test_batch_transform_cb_can_change_the_targets():
    from miniai.init import BatchTransformCB
    from miniai.learner import TrainLearner
    dls, x, y = _ordered()
    targets = []

    class Spy(BatchTransformCB.__mro__[1]):  # a Callback running after the transform
        order = 0
        def before_batch(self, learn): targets.append(learn.batch[1].clone())
    learn = TrainLearner(Record(), dls, F.cross_entropy, lr=0.01,
                         cbs=[Spy(), BatchTransformCB(lambda b: (b[0], 9 - b[1]), on_val=False)])
    learn.fit(1)
    assert torch.equal(torch.cat(targets[:3]), 9 - y) and torch.equal(torch.cat(targets[3:]), y)


# ---------------------------------------------------------------- callbacks given one at a time, or None
def test_a_single_callback_or_none_is_accepted_everywhere():
    from miniai.learner import DeviceCB, Learner, SingleBatchCB, TrainCB
    dls = toy_images()
    model = tiny_cnn()
    w0 = model[0].weight.detach().clone()
    learn = Learner(model, dls, F.cross_entropy, lr=0.1, cbs=TrainCB())
    learn.fit(1, cbs=DeviceCB('cpu'))
    assert not torch.equal(model[0].weight, w0)  # it trained
    assert len(learn.cbs) == 1  # the fit's callback is gone again
    counter = SimpleNamespace(n=0)

    class Count(TrainCB.__mro__[1]):
        def after_batch(self, learn): counter.n += 1
    learn.fit(1, cbs=[SingleBatchCB(), Count()])
    assert counter.n == 1
    learn.fit(1, cbs=None, valid=False)
    learn.add_cbs(SingleBatchCB())
    learn.remove_cbs(learn.cbs[-1])
    assert len(learn.cbs) == 1


# ---------------------------------------------------------------- with_cbs
class _Logged:
    """A loop of one's own, as the course writes them: its `callback` records each event's name."""
    def __init__(self): self.log = []
    def callback(self, nm): self.log.append(nm)


def test_with_cbs_runs_before_after_cleanup_and_swallows_its_cancel():
    from miniai.learner import CancelEpochException, CancelFitException, with_cbs

    class Loop(_Logged):
        @with_cbs('fit')
        def fit(self, cancel=None):
            self.log.append('body')
            if cancel: raise cancel()
    loop = Loop()
    loop.fit()
    assert loop.log == ['before_fit', 'body', 'after_fit', 'cleanup_fit']
    loop.log = []
    loop.fit(CancelFitException)
    assert loop.log == ['before_fit', 'body', 'cleanup_fit']
    loop.log = []
    with pytest.raises(CancelEpochException): loop.fit(CancelEpochException)  # not this stage's: it goes up
    assert loop.log == ['before_fit', 'body', 'cleanup_fit']


def test_with_cbs_makes_a_stage_of_any_method_as_the_course_does():
    from miniai.learner import CancelBatchException, CancelStepException, with_cbs

    class Loop(_Logged):
        @with_cbs('backward')
        def backward(self, error=None):
            self.log.append('body')
            if error: raise error()

        @with_cbs('step')
        def step(self): raise CancelStepException()
    loop = Loop()
    loop.backward()
    assert loop.log == ['before_backward', 'body', 'after_backward', 'cleanup_backward']
    loop.log = []
    with pytest.raises(CancelBatchException): loop.backward(CancelBatchException)   # a stage without its own
    assert loop.log == ['before_backward', 'body', 'cleanup_backward']                 # cancel swallows none
    loop.log = []
    loop.step()
    assert loop.log == ['before_step', 'cleanup_step']
    with pytest.raises(ValueError, match=r"stage's name.*got 'after backward'"): with_cbs('after backward')


def test_a_learner_says_which_events_it_has_when_a_stage_of_its_own_has_none():
    from miniai.learner import TrainLearner, with_cbs

    class OwnStage(TrainLearner):
        @with_cbs('get_loss')
        def get_loss(self): super().get_loss()
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    learn = OwnStage(model, _ordered()[0], F.cross_entropy, lr=0.1, opt_func=torch.optim.SGD)
    with pytest.raises(ValueError, match=r"_get_loss' is not an event of OwnStage.*stage: fit, epoch or batch"):
        learn.fit(1)


# ---------------------------------------------------------------- MetricsCB reads the model's mode
def test_metrics_cb_phase_comes_from_the_model_mode():
    from torcheval.metrics import MulticlassAccuracy

    from miniai.learner import MetricsCB
    cb = MetricsCB(MulticlassAccuracy())
    model = nn.Linear(2, 3)
    learn = SimpleNamespace(model=model, epoch=0)  # a learner written in a notebook: no `training` attribute
    cb.before_fit(learn)
    for mode in (True, False):
        model.train(mode)
        cb.before_epoch(learn)
        learn.batch, learn.preds = (torch.randn(4, 2), torch.tensor([0, 1, 2, 0])), torch.eye(3)[[0, 1, 2, 1]]
        learn.loss = torch.tensor(0.5)
        cb.after_batch(learn)
        cb.after_epoch(learn)
    rows = cb.history          # one row for the epoch: the train phase's values, then the validation's
    assert len(rows) == 1 and rows[0]['train_MulticlassAccuracy'] == rows[0]['valid_MulticlassAccuracy'] == 0.75


# ---------------------------------------------------------------- lr_find, both ways
def _lin_learner(**kw):
    from miniai.learner import TrainLearner
    dls = toy_images(n=640, bs=16)
    return TrainLearner(tiny_cnn(), dls, F.cross_entropy, lr=0.1, **kw)


def test_lr_find_course_signature_sweeps_by_gamma_and_restores():
    learn = _lin_learner()
    w0 = {k: v.clone() for k, v in learn.model.state_dict().items()}
    res = learn.lr_find(gamma=1.5, max_mult=3, start_lr=1e-4, max_epochs=1)
    assert res.lrs[0] == pytest.approx(1e-4)
    assert all(b / a == pytest.approx(1.5) for a, b in zip(res.lrs, res.lrs[1:]))
    assert len(res.lrs) < 40  # stopped when the loss blew up, before the epoch's 40 batches
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in w0.items())
    assert learn.opt is None


def test_lr_find_default_is_the_course_sweep_and_accepts_cbs():
    from miniai.lr_finder import lr_find
    seen = []

    class Spy(__import__('miniai.core', fromlist=['Callback']).Callback):
        def after_batch(self, learn): seen.append(learn.opt.param_groups[0]['lr'])
    learn = _lin_learner()
    res = lr_find(learn, show_plot=False, cbs=Spy())
    assert res.lrs[0] == pytest.approx(1e-5) and res.lrs[1] == pytest.approx(1.3e-5)
    assert seen == pytest.approx(res.lrs) and len(learn.cbs) == 0


def test_lr_find_miniai_signature_still_sweeps_to_end_lr():
    learn = _lin_learner()
    res = learn.lr_find(start_lr=1e-4, end_lr=1e-1, num_it=10, stop_div=False, show_plot=False)
    assert len(res.lrs) == 10 and res.lrs[-1] == pytest.approx(1e-1) and res.lrs[0] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match='not both'): learn.lr_find(gamma=1.3, num_it=10)


def test_lr_finder_cb_in_a_plain_fit_plots_raw_losses():
    from miniai.learner import LRFinderCB
    learn = _lin_learner()
    cb = LRFinderCB()
    learn.fit(1, cbs=cb)
    assert cb.lrs[0] == pytest.approx(0.1) and cb.lrs[1] == pytest.approx(0.13)
    assert cb.smoothed == cb.losses  # the course compares the raw loss
    line = plt.gca().lines[-1]
    assert list(line.get_xdata()) == cb.lrs and plt.gca().get_xscale() == 'log'


# ---------------------------------------------------------------- activations: append_stats on its own
def test_hooks_callback_with_append_stats_fills_hook_stats():
    from miniai.activations import HooksCallback, append_stats, get_hist, get_min
    from miniai.learner import TrainLearner
    model = tiny_cnn()
    relus = [m for m in model if isinstance(m, nn.ReLU)]
    hc = HooksCallback(append_stats, mods=relus)
    learn = TrainLearner(model, toy_images(n=128, bs=32), F.cross_entropy, lr=0.1, cbs=hc)
    learn.fit(1)
    for h in hc:
        means, stds, hists = h.stats
        assert len(means) == len(stds) == len(hists) == 4  # training batches only
        assert hists[0].shape == (40,) and hists[0].sum() > 0
    assert get_hist(hc.hooks[0]).shape == (40, 4)
    dead = get_min(hc.hooks[0])
    assert dead.shape == (4,) and ((dead >= 0) & (dead <= 1)).all() and dead.max() > 0.3  # ReLU zeros land in bin 0


def test_append_stats_on_a_plain_hook_records_this_batch():
    from miniai.activations import Hook, append_stats
    lin = nn.Linear(5, 50)
    x = torch.randn(64, 5)
    with Hook(lin, append_stats) as h:
        out = lin(x).detach()
        lin(x)
    assert h.stats[0][0] == pytest.approx(out.mean().item(), rel=1e-5) and len(h.stats[1]) == 2
    assert h.stats[2][0].sum() == (out.abs() <= 10).sum()


def test_activations_gives_set_seed():
    from miniai.activations import set_seed
    set_seed(3)
    a = torch.rand(3), random.random()
    set_seed(3)
    assert torch.equal(a[0], torch.rand(3)) and a[1] == random.random()


# ---------------------------------------------------------------- init
def test_lsuv_init_course_signature_gives_unit_variance():
    from miniai.conv import get_model
    from miniai.init import lsuv_init
    from miniai.resnet import act_gr
    torch.manual_seed(0)
    model = get_model(act_gr)
    xb = torch.randn(128, 1, 28, 28) * 3 + 1
    for block in model[:-2]:  # the course: each conv block (conv + activation) and the conv inside it
        lsuv_init(model, block, block[0], xb)
    acts = []
    with torch.no_grad():
        h = xb
        for block in model[:-2]:
            h = block(h)
            acts.append(h)
    for a in acts:
        assert a.mean().item() == pytest.approx(0, abs=1e-2) and a.std().item() == pytest.approx(1, abs=1e-2)


def test_lsuv_init_miniai_signature_positional_and_keyword():
    from miniai.conv import get_model
    from miniai.init import lsuv_init
    torch.manual_seed(0)
    model = get_model()
    xb = torch.randn(64, 1, 28, 28)
    convs = [m[0] for m in model[:-2]]
    res = lsuv_init(model, xb, convs, convs)
    assert len(res) == 4 and all(s == pytest.approx(1, abs=1e-2) for _, s in res)
    with pytest.raises(TypeError, match='lsuv_init'): lsuv_init(model, model[0], xb=xb)  # m_in missing


def test_init_notebook_helpers():
    from miniai.init import GeneralRelu, clean_ipython_hist, clean_mem, clean_tb, plot_func
    try: raise ValueError('x')
    except ValueError: sys.last_type, sys.last_value, sys.last_traceback = sys.exc_info()
    clean_tb()
    assert not hasattr(sys, 'last_traceback') and not hasattr(sys, 'last_value')
    clean_ipython_hist()  # outside IPython: nothing to do, and no error
    clean_mem()
    plt.figure()
    plot_func(GeneralRelu(leak=0.1, sub=0.4), steps=50)
    line = plt.gca().lines[0]
    assert len(line.get_xdata()) == 50 and line.get_ydata()[0] == pytest.approx(-5 * 0.1 - 0.4)


# ---------------------------------------------------------------- sgd
def test_has_learn_cb_holds_the_learner_during_fit_only():
    from miniai.learner import TrainLearner
    from miniai.sgd import HasLearnCB, RecorderCB
    seen = []

    class Rec(HasLearnCB):
        def after_batch(self, learn): seen.append(self.learn is learn)
    cb = Rec()
    learn = TrainLearner(tiny_cnn(), toy_images(n=64, bs=32), F.cross_entropy, cbs=[cb, RecorderCB(lr=lambda r: 1)])
    learn.fit(1)
    assert seen == [True] * 4 and cb.learn is None


# ---------------------------------------------------------------- augment: the course's Learner methods
def _img_learner(**kw):
    from miniai.learner import DeviceCB, TrainLearner
    dls, x, y = _ordered()
    return TrainLearner(Record(), dls, F.cross_entropy, lr=0.1, cbs=[DeviceCB('cpu')], **kw), x, y


def test_learner_summary_lists_each_layer():
    from miniai.learner import TrainLearner
    learn = TrainLearner(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 28 * 28, 10)),
                         _ordered()[0], F.cross_entropy)
    s = learn.summary()
    assert [r['module'] for r in s.rows] == ['Conv2d', 'Flatten', 'Linear']
    assert s.rows[0]['input'] == (32, 1, 28, 28) and s.rows[2]['output'] == (32, 10)
    assert s.total_params == 40 + 4 * 28 * 28 * 10 + 10
    assert '| Conv2d |' in s._repr_markdown_()


def test_show_image_batch_shows_the_transformed_batch_without_training():
    from miniai.init import BatchTransformCB
    learn, x, y = _img_learner()
    w0 = learn.model.lin.weight.detach().clone()
    fig = learn.show_image_batch(max_n=4, cbs=BatchTransformCB(lambda b: (-b[0], b[1])))
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 4
    assert shown[0].images[0].get_array()[0, 0] == pytest.approx(-x[0, 0, 0, 0].item())  # after the transform
    assert torch.equal(learn.model.lin.weight, w0) and learn.model.seen == []  # nothing was predicted or trained


def test_capture_preds_returns_preds_targets_and_inputs():
    from miniai.init import BatchTransformCB
    learn, x, y = _img_learner()
    preds, targs = learn.capture_preds()
    with torch.no_grad(): want = learn.model.lin(x.flatten(1))
    torch.testing.assert_close(preds, want)
    assert torch.equal(targs, y)
    flip = BatchTransformCB(lambda b: (b[0].flip(-1), b[1]), on_train=False)
    p2, t2, inps = learn.capture_preds(cbs=flip, inps=True)
    assert torch.equal(inps, x.flip(-1)) and torch.equal(t2, y) and flip not in learn.cbs
    with torch.no_grad(): torch.testing.assert_close(p2, learn.model.lin(x.flip(-1).flatten(1)))


def test_capture_preds_callback_has_the_course_attributes():
    from miniai.augment import CapturePreds
    learn, x, y = _img_learner()
    cp = CapturePreds()
    learn.fit(1, train=False, cbs=[cp])
    assert cp.all_preds.shape == (96, 10) and torch.equal(cp.all_targs, y) and torch.equal(cp.all_inps, x)


# ---------------------------------------------------------------- augment: the course's erase and copy
def _fixed_random(monkeypatch, values):
    it = iter(values)
    monkeypatch.setattr(random, 'random', lambda: next(it))


def test_rand_erase1_fills_one_window_in_every_image_in_place(monkeypatch):
    from miniai.augment import _rand_erase1
    x = torch.rand(4, 1, 10, 10) - 0.5
    orig = x.clone()
    _fixed_random(monkeypatch, [0.5, 0.0])  # top = int(0.5 * 0.8 * 10) = 4, left = 0
    _rand_erase1(x, 0.2, 0., 1., -0.5, 0.5)
    changed = x != orig
    assert changed[..., 4:6, 0:2].all()  # the same 2x2 window in every image
    changed[..., 4:6, 0:2] = False
    assert not changed.any()
    assert x.min() >= -0.5 and x.max() <= 0.5  # noise clamped to the given range


def test_rand_erase_modifies_and_returns_its_input():
    from miniai.augment import RandErase, rand_erase
    random.seed(0)
    x = torch.randn(8, 1, 28, 28)
    lo, hi = x.min(), x.max()
    out = rand_erase(x, pct=0.3, max_num=4)
    assert out is x and x.min() >= lo and x.max() <= hi
    random.seed(1)
    outs = [RandErase(pct=0.2, max_num=2)(torch.zeros(2, 1, 8, 8) + torch.arange(8.)) for _ in range(20)]
    assert any(not torch.equal(o, torch.zeros(2, 1, 8, 8) + torch.arange(8.)) for o in outs)
    assert RandErase(per_image=True)(torch.randn(4, 1, 8, 8)).shape == (4, 1, 8, 8)


def test_rand_copy1_copies_a_window_of_the_image(monkeypatch):
    from miniai.augment import RandCopy, _rand_copy1, rand_copy
    x = torch.arange(2 * 100.).view(2, 1, 10, 10)
    orig = x.clone()
    _fixed_random(monkeypatch, [0.0, 0.0, 1.0, 1.0])  # destination (0, 0), source (8, 8)
    _rand_copy1(x, 0.2)
    assert torch.equal(x[..., 0:2, 0:2], orig[..., 8:10, 8:10])
    x[..., 0:2, 0:2] = orig[..., 0:2, 0:2]
    assert torch.equal(x, orig)  # nothing else moved
    monkeypatch.undo()
    random.seed(0)
    y = torch.randn(3, 1, 12, 12)
    assert rand_copy(y, 0.25, 3) is y and RandCopy(0.25, 3)(y).shape == (3, 1, 12, 12)


# ---------------------------------------------------------------- accel
def test_mixed_precision_is_a_train_cb():
    from miniai.accel import MixedPrecision
    from miniai.learner import Learner
    dtypes = []

    class Spy(__import__('miniai.core', fromlist=['Callback']).Callback):
        def after_predict(self, learn): dtypes.append(learn.preds.dtype)
    model = tiny_cnn()
    w0 = model[0].weight.detach().clone()
    learn = Learner(model, toy_images(n=64, bs=32), F.cross_entropy, lr=0.1,
                    cbs=[MixedPrecision(dtype=torch.bfloat16, device_type='cpu'), Spy()])
    learn.fit(1)
    assert dtypes and all(d == torch.bfloat16 for d in dtypes) and not torch.equal(model[0].weight, w0)
    assert not torch.is_autocast_enabled('cpu')


def test_accelerate_cb_explains_what_it_needs():
    import importlib.util

    from miniai.accel import AccelerateCB
    if importlib.util.find_spec('accelerate') is None:
        with pytest.raises(ImportError, match='pip install accelerate'): AccelerateCB()
    else:
        assert AccelerateCB(mixed_precision='no').n_inp == 1


def test_progress_and_metrics_work_with_a_learner_written_in_a_notebook(capsys):
    """The course's notebooks build their own small learners (no step counter, no `run_epoch`) and give them miniai's
    ProgressCB and MetricsCB: those must not assume miniai's Learner."""
    from torcheval.metrics import MulticlassAccuracy

    from miniai.learner import MetricsCB, ProgressCB, run_cbs

    class NotebookLearner:
        def __init__(self, model, dls, cbs): self.model, self.dls, self.cbs = model, dls, cbs
        def callback(self, name): run_cbs(self.cbs, name, self)
        def fit(self, n):
            self.epochs = range(n)
            self.callback('before_fit')
            for self.epoch in self.epochs:
                for train in (True, False):
                    self.model.train(train); self.training = train
                    self.dl = self.dls.train if train else self.dls.valid
                    self.callback('before_epoch')
                    for self.iter, self.batch in enumerate(self.dl):
                        self.preds = self.model(self.batch[0]); self.loss = F.cross_entropy(self.preds, self.batch[1])
                        self.callback('after_batch')
                    self.callback('after_epoch')
            self.callback('cleanup_fit')
    metrics, prog = MetricsCB(accuracy=MulticlassAccuracy()), ProgressCB()
    dls = toy_images(n=64, bs=16)
    NotebookLearner(tiny_cnn(), dls, [metrics, prog]).fit(2)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ['epoch', 'train_loss', 'valid_loss'] and len(out) == 3
    assert [r['epoch'] for r in metrics.history] == [0, 1] and len(prog.losses) == 2 * len(dls.train)
