"""MixedPrecisionCB (bf16 autocast; fp16 with GradScaler: true loss, true grads, skipped steps), CompileCB,
ChannelsLastCB, all on CPU."""
import copy
import os
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torcheval.metrics import MulticlassAccuracy

import miniai.accel as accel
from conftest import DLs, linear_data, tiny_cnn, toy_images
from miniai.accel import ChannelsLastCB, CompileCB, MixedPrecisionCB
from miniai.core import Callback, CancelBatchException
from miniai.learner import Learner, MetricsCB, TrainCB, TrainLearner
from miniai.sgd import BatchSchedCB

CL = torch.channels_last


class Rec(Callback):
    """Records what the other callbacks leave behind, at each event it is given a function for."""
    order = 50

    def __init__(self, **fs):
        self.fs, self.seen = fs, {k: [] for k in fs}
        for name in fs: setattr(self, name, partial(self._rec, name))

    def _rec(self, name, learn): self.seen[name].append(self.fs[name](learn))


def conv_net():
    """A conv that keeps where things are (the toy classes are row bands), so a couple of epochs learn them."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 14 * 14, 10))


def fit(model, dls, cbs, n=1, lr=0.1, loss=F.cross_entropy, cls=TrainLearner, opt=torch.optim.Adam):
    learn = cls(model, dls, loss, lr=lr, cbs=cbs, opt_func=opt)
    learn.fit(n)
    return learn


def test_all_names_resolve():
    assert set(accel.__all__) == {'MixedPrecisionCB', 'CompileCB', 'ChannelsLastCB', 'MixedPrecision', 'AccelerateCB'}
    assert all(hasattr(accel, n) for n in accel.__all__)


def test_bad_dtype_names_the_allowed_ones():
    with pytest.raises(ValueError, match='bfloat16 or torch.float16'): MixedPrecisionCB(torch.float32)
    assert MixedPrecisionCB('fp16').dtype == torch.float16 and MixedPrecisionCB('bf16').dtype == torch.bfloat16


def test_bf16_forward_runs_in_bf16_and_the_model_still_learns():
    dls, metrics = toy_images(n=128, bs=32), MetricsCB()
    rec = Rec(after_predict=lambda l: (l.preds.dtype, torch.is_autocast_enabled('cpu')),
              after_loss=lambda l: (l.loss.dtype, torch.is_autocast_enabled('cpu')))
    learn = TrainLearner(conv_net(), dls, F.cross_entropy, lr=0.01, cbs=[MixedPrecisionCB(), rec, metrics],
                         opt_func=torch.optim.Adam)
    learn.fit(1, train=False)
    learn.fit(2)
    assert set(rec.seen['after_predict']) == {(torch.bfloat16, True)}
    assert set(rec.seen['after_loss']) == {(torch.float32, False)}  # autocast ends with the loss
    assert next(learn.model.parameters()).dtype == torch.float32
    evals = [r['loss'] for r in metrics.history if r['phase'] == 'eval']
    assert evals[-1] < evals[0] / 2


def test_autocast_is_left_even_when_the_batch_raises():
    class Boom(Callback):
        def after_predict(self, learn): raise RuntimeError('boom')
    with pytest.raises(RuntimeError, match='boom'): fit(tiny_cnn(), toy_images(n=64), [MixedPrecisionCB(), Boom()])
    assert not torch.is_autocast_enabled('cpu')


class LossLearner(TrainLearner):
    """Records each call of its own backward step (which MixedPrecisionCB's scaled backward replaces)."""
    def backward(self):
        self.backward_losses = getattr(self, 'backward_losses', []) + [self.loss.item()]
        super().backward()


def test_fp16_backprops_the_scaled_loss_but_callbacks_and_metrics_see_the_true_one():
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    true = lambda l: F.cross_entropy(l.preds.float(), l.batch[1]).item()
    grad = lambda l: l.model[-1].weight.grad.clone()
    rec = Rec(after_loss=lambda l: (l.loss.item(), true(l)), after_backward=lambda l: (l.loss.item(), grad(l)),
              before_step=grad, after_batch=lambda l: l.loss.item())
    mp = MixedPrecisionCB(torch.float16)
    learn = fit(tiny_cnn(), toy_images(n=96, bs=32), [mp, rec, metrics], lr=0.01, cls=LossLearner)
    scale = mp.scaler.get_scale()
    assert mp.skipped == 0 and scale == 65536.
    assert not hasattr(learn, 'backward_losses')      # the learner's own (unscaled) backward never ran
    seen = zip(rec.seen['after_loss'], rec.seen['after_backward'], rec.seen['before_step'])
    for (loss, want), (after_bwd, scaled), unscaled in seen:
        assert loss == pytest.approx(want, rel=1e-3) and 1 < loss < 5 and after_bwd == loss
        torch.testing.assert_close(scaled, unscaled * scale)   # scaled in backward, unscaled before the step
    assert all(1 < v < 5 for v in rec.seen['after_batch'])
    assert all(1 < r['loss'] < 5 for r in metrics.history)
    assert 'backward' not in learn.__dict__ and 'step' not in learn.__dict__  # no method of the learner replaced


@pytest.mark.parametrize('cls', ['TrainLearner', 'Learner+TrainCB'])
def test_fp16_before_step_sees_true_gradients(cls):
    model = nn.Linear(1, 1)
    with torch.no_grad(): model.weight.fill_(1.8); model.bias.fill_(1.1)  # near y = 2x + 1: no float16 overflow
    ref = copy.deepcopy(model)
    dls = linear_data(n=64, bs=64)
    x, y = dls.train.dataset.tensors
    F.mse_loss(ref(x), y).backward()                         # float32 gradients of the one (whole-data) batch
    grads = Rec(before_step=lambda l: [p.grad.clone() for p in l.model.parameters()])
    grads.order = MixedPrecisionCB.order + 1                 # as GradientClipCB: after the unscaling
    learner, cbs = (TrainLearner, []) if cls == 'TrainLearner' else (Learner, [TrainCB()])
    fit(model, dls, cbs + [MixedPrecisionCB(torch.float16), grads], loss=F.mse_loss, cls=learner,
        opt=torch.optim.SGD)
    for g, want in zip(grads.seen['before_step'][0], (p.grad for p in ref.parameters())):
        torch.testing.assert_close(g, want, rtol=2e-2, atol=1e-3)  # float16 forward: ~1e-3; scaled: x65536


def test_fp16_inf_gradient_skips_the_step_and_the_scheduler():
    model = tiny_cnn()
    poison = {'on': False}
    model[0].weight.register_hook(lambda g: g * float('inf') if poison['on'] else g)
    class Poison(Callback):
        def before_batch(self, learn):
            poison['on'] = learn.training and learn.iter == 1
            self.w = model[0].weight.detach().clone()
        def cleanup_batch(self, learn):
            if poison['on']: self.unchanged = torch.equal(self.w, model[0].weight)
    mp, p = MixedPrecisionCB(torch.float16), Poison()
    sched = BatchSchedCB(partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda i: 1 / (i + 1)))
    rec = Rec(after_step=lambda l: l.iter, after_batch=lambda l: (l.training, l.iter),
              after_backward=lambda l: (l.iter, all(q.grad.isfinite().all() for q in l.model.parameters())))
    learn = fit(model, toy_images(n=128, bs=32), [mp, p, sched, rec], lr=0.01)
    assert mp.skipped == 1 and p.unchanged and mp.scaler.get_scale() == 32768.
    assert rec.seen['after_step'] == [0, 2, 3]
    assert [i for t, i in rec.seen['after_batch'] if t] == [0, 1, 2, 3]  # the batch ends normally (metrics see it)
    assert sched.schedo.last_epoch == 3 and learn.iter_count == 4       # but the scheduler steps 3 times
    assert [i for i, finite in rec.seen['after_backward'] if not finite] == [1]  # no inf carried into batch 2
    assert all(q.isfinite().all() for q in model.parameters())


def test_fp16_a_batch_cancelled_after_backward_does_not_break_the_next_step():
    class CancelOne(Callback):
        def after_backward(self, learn):
            if learn.iter == 0: raise CancelBatchException()
    mp, rec = MixedPrecisionCB(torch.float16), Rec(after_step=lambda l: l.iter)
    fit(tiny_cnn(), toy_images(n=96, bs=32), [mp, CancelOne(), rec], lr=0.01)
    assert rec.seen['after_step'] == [1, 2] and mp.skipped == 0


def test_no_support_warns_once_and_trains_in_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: False)  # as on a pre-Ampere GPU
    mp, rec = MixedPrecisionCB(torch.bfloat16, device_type='cuda'), Rec(after_predict=lambda l: l.preds.dtype)
    learn = TrainLearner(tiny_cnn(), toy_images(n=64), F.cross_entropy, lr=0.01, cbs=[mp, rec])
    with pytest.warns(UserWarning, match='no native bfloat16') as ws:
        learn.fit(1)
        learn.fit(1)
    assert len([w for w in ws if 'MixedPrecisionCB' in str(w.message)]) == 1
    assert not mp.active and set(rec.seen['after_predict']) == {torch.float32} and learn.iter_count == 2


def test_fp16_without_a_grad_scaler_warns_and_trains(monkeypatch):
    def no_scaler(*a, **k): raise RuntimeError('no GradScaler for this device')
    monkeypatch.setattr(torch.amp, 'GradScaler', no_scaler)
    mp = MixedPrecisionCB(torch.float16)
    with pytest.warns(UserWarning, match='no GradScaler'): learn = fit(tiny_cnn(), toy_images(n=64), [mp])
    assert not mp.active and learn.iter_count == 1 and 'step' not in learn.__dict__


def test_mixed_precision_state_dict_round_trip():
    mp = MixedPrecisionCB(torch.float16)
    fit(tiny_cnn(), toy_images(n=64), [mp], lr=0.01)
    sd = mp.state_dict()
    mp2 = MixedPrecisionCB(torch.float16)
    mp2.load_state_dict({**sd, 'scaler': {**sd['scaler'], 'scale': 1024.}})
    fit(tiny_cnn(), toy_images(n=64), [mp2], lr=0.01)
    assert mp2.scaler.get_scale() == 1024.


# --- CompileCB: the real inductor compile takes 6-30 s on CPU (C++ build), so the fast test uses dynamo's
# 'eager' backend, which still traces the forward through torch.compile; inductor runs with MINIAI_SLOW_TESTS=1.
def _two_runs(cb):
    torch.manual_seed(0)
    model = tiny_cnn()
    ref = copy.deepcopy(model)
    keys = list(model.state_dict())
    torch.manual_seed(1)
    fit(ref, toy_images(n=64, bs=32), [], lr=0.01)
    torch.manual_seed(1)
    fit(model, toy_images(n=64, bs=32), [cb], lr=0.01)
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # inductor fuses, so sums may round differently
    return model, ref, keys


@pytest.mark.parametrize('backend', [
    'eager',
    pytest.param('inductor', marks=pytest.mark.skipif(not os.environ.get('MINIAI_SLOW_TESTS'), reason=
                 'inductor builds C++ kernels: 6 s warm, 30 s cold on CPU, over the suite budget; '
                 'set MINIAI_SLOW_TESTS=1 to run it'))])
def test_compile_keeps_the_module_and_matches_eager(backend, monkeypatch):
    compiles, compile = [], torch.compile
    monkeypatch.setattr(torch, 'compile', lambda fn, **kw: compiles.append(fn) or compile(fn, **kw))
    cb = CompileCB(backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)       # a silent fallback to eager would pass otherwise
        model, ref, keys = _two_runs(cb)
        fit(model, toy_images(n=32, bs=32), [cb], lr=0.01)
    assert not cb.failed and list(model.state_dict()) == keys and 'forward' not in model.__dict__
    assert len(compiles) == 1                              # the second fit reused the compiled forward


def test_compile_unavailable_warns_once_and_runs_eagerly(monkeypatch):
    def broken(*a, **k): raise RuntimeError('torch.compile is not supported on this platform')
    monkeypatch.setattr(torch, 'compile', broken)
    cb = CompileCB()
    with pytest.warns(UserWarning, match='not supported on this platform') as ws: model, ref, keys = _two_runs(cb)
    assert cb.failed and len(ws) == 1 and 'forward' not in model.__dict__


def test_compile_failing_at_first_call_falls_back_to_eager():
    def no_compiler(gm, example_inputs): raise RuntimeError('InductorError: no working C compiler found')
    cb = CompileCB(backend=no_compiler)                      # fails where inductor would: at the first forward
    model, ref, keys = _two_runs(cb)                         # ... and the fit goes on eagerly, to the same weights
    assert list(model.state_dict()) == keys and 'forward' not in model.__dict__
    import torch._dynamo
    assert torch._dynamo.config.suppress_errors is False     # only for the fit
    with pytest.raises(ValueError, match='reduce-overhead'): CompileCB(mode='fast')


def test_channels_last_inputs_and_weights_give_the_default_layouts_results():
    torch.manual_seed(0)
    model, dls = tiny_cnn(), toy_images(n=64, bs=32)
    ref = copy.deepcopy(model).eval()
    rec = Rec(after_predict=lambda l: (l.batch[0].is_contiguous(memory_format=CL),
                                       l.model[0].weight.is_contiguous(memory_format=CL),
                                       l.preds.detach().clone(), l.batch[0].contiguous()))
    TrainLearner(model, dls, F.cross_entropy, cbs=[ChannelsLastCB(), rec]).fit(1, train=False)
    assert rec.seen['after_predict']
    for x_cl, w_cl, preds, x in rec.seen['after_predict']:
        assert x_cl and w_cl
        with torch.no_grad(): torch.testing.assert_close(preds, ref(x), rtol=1e-4, atol=1e-5)


def test_channels_last_without_conv_weights_warns_once_and_does_nothing():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    cb, rec = ChannelsLastCB(), Rec(after_predict=lambda l: l.batch[0].is_contiguous())
    learn = TrainLearner(mlp, toy_images(n=64, bs=16), F.cross_entropy, lr=0.01, cbs=[cb, rec])
    with pytest.warns(UserWarning, match='no 4-D') as ws:
        learn.fit(1)
        learn.fit(1)
    assert len(ws) == 1 and not cb.active and all(rec.seen['after_predict'])


def test_course_mixed_precision_survives_a_batch_cancelled_before_its_before_batch():
    """Regression: a batch cancelled by an earlier callback's before_batch reached MixedPrecision.cleanup_batch
    before `_in_autocast` existed (AttributeError)."""
    from torch.utils.data import DataLoader, TensorDataset

    from conftest import DLs
    from miniai.accel import MixedPrecision

    class SkipFirst(Callback):
        order = -15  # before MixedPrecision (-10)
        def before_batch(self, learn):
            if learn.iter == 0: raise CancelBatchException()
    x = torch.randn(64, 4)
    dl = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)
    learn = Learner(nn.Linear(4, 1), DLs(dl, dl), F.mse_loss, lr=0.01,
                    cbs=[MixedPrecision(dtype=torch.bfloat16, device_type='cpu'), SkipFirst()])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # GradScaler('cpu') may warn where it is unavailable
        learn.fit(1)
    assert learn.iter == 3 and not torch.is_autocast_enabled('cpu')


# ---------------------------------------------------------------- the course's MixedPrecision and AccelerateCB off CUDA
def _train_cb_twin(cb, monkeypatch=None):
    """Weights after one epoch with `cb` as the TrainCB, and after the same epoch with a plain TrainCB."""
    ws = []
    for c in (cb, TrainCB()):
        torch.manual_seed(0)
        learn = Learner(tiny_cnn(), toy_images(n=96, bs=32), F.cross_entropy, lr=0.1, cbs=[c])
        learn.fit(1)
        ws.append([p.detach().clone() for p in learn.model.parameters()])
    return ws, learn


def test_course_mixed_precision_without_cuda_trains_in_float32_and_says_so_once(monkeypatch):
    from miniai.accel import MixedPrecision
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(accel, '_SAID', set())
    dtypes = []

    class Spy(Callback):
        def after_predict(self, learn): dtypes.append((learn.preds.dtype, torch.is_autocast_enabled('cpu')))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        (mixed, plain), _ = _train_cb_twin(MixedPrecision())
        learn = Learner(tiny_cnn(), toy_images(n=64, bs=32), F.cross_entropy, lr=0.1, cbs=[MixedPrecision(), Spy()])
        learn.fit(2)
    assert all(torch.equal(a, b) for a, b in zip(mixed, plain))     # exactly the float32 steps of a TrainCB
    assert set(dtypes) == {(torch.float32, False)}
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and 'CUDA is not available' in said[0] and 'float32' in said[0]


class _StubAccelerator:
    """What AccelerateCB uses of Accelerate's `Accelerator`, as Accelerate sets it up on a CPU."""
    def __init__(self, mixed_precision='fp16'):
        self.mixed_precision, self.device = mixed_precision, torch.device('cpu')
        self.native_amp = mixed_precision == 'bf16'     # Accelerate has no float16 autocast on a CPU
    def prepare(self, *objs): return objs
    def backward(self, loss): loss.backward()


@pytest.mark.parametrize('precision,warns', [('fp16', True), ('bf16', False)])
def test_accelerate_cb_on_a_cpu_says_once_when_fp16_runs_in_float32(monkeypatch, precision, warns):
    import sys
    import types

    from miniai.accel import AccelerateCB
    monkeypatch.setitem(sys.modules, 'accelerate', types.SimpleNamespace(Accelerator=_StubAccelerator))
    monkeypatch.setattr(accel, '_SAID', set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        (acc, plain), learn = _train_cb_twin(AccelerateCB(mixed_precision=precision))
        _train_cb_twin(AccelerateCB(mixed_precision=precision))
    assert all(torch.equal(a, b) for a, b in zip(acc, plain))
    said = [str(w.message) for w in caught]
    assert said == (["AccelerateCB: Accelerate runs mixed_precision='fp16' in float32 on a CPU (no CUDA here); "
                     "mixed_precision='bf16' would use bfloat16 autocast."] if warns else [])


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one precision per process; each test that makes an Accelerator starts and ends afresh."""
    state = pytest.importorskip('accelerate.state', reason='AccelerateCB needs the course extra (accelerate)')
    state.AcceleratorState._reset_state(True)
    yield
    state.AcceleratorState._reset_state(True)


def test_accelerate_cb_trains_with_the_real_accelerate_on_this_machine(fresh_accelerate_state, monkeypatch):
    from miniai.accel import AccelerateCB
    monkeypatch.setattr(accel, '_SAID', set())
    x = torch.randn(96, 4)
    dls = DLs(DataLoader(TensorDataset(x, x @ torch.ones(4, 1)), batch_size=32),
              DataLoader(TensorDataset(x, x @ torch.ones(4, 1)), batch_size=32))
    model = nn.Linear(4, 1)
    def loss():
        with torch.no_grad(): return F.mse_loss(model(x), x @ torch.ones(4, 1)).item()
    before, learn = loss(), Learner(model, dls, F.mse_loss, lr=0.1, cbs=[AccelerateCB()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn.fit(3)
    assert loss() < before / 10
    cpu_fp16 = not torch.cuda.is_available()
    assert any('AccelerateCB: Accelerate runs' in str(w.message) for w in caught) == cpu_fp16
