"""GradientClipCB bounds the total norm (also under float16) and never steps on NaN/inf gradients;
GradientAccumulationCB matches one big batch."""
import math
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import DLs
from miniai.accel import MixedPrecisionCB
from miniai.core import Callback
from miniai.gradients import GradientAccumulationCB, GradientClipCB, NonFiniteGradientError
from miniai.learner import TrainLearner
from miniai.sgd import BatchSchedCB, RecorderCB


def total_norm(model, norm_type=2.0):
    return torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]), norm_type).item()


class Norms(Callback):
    """The total gradient norm at before_step, at its `order` (-3: after GradientClipCB, -100: before anything)."""
    def __init__(self, order, norm_type=2.0): self.order, self.norm_type, self.seen = order, norm_type, []
    def before_step(self, learn): self.seen.append(total_norm(learn.model, self.norm_type))


def data(n=64, bs=16, scale=10.):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = scale * (x @ torch.randn(4, 2, generator=g))
    return DLs(DataLoader(TensorDataset(x, y), batch_size=bs), None)


@pytest.mark.parametrize('norm_type', [2.0, 1.0, math.inf])
def test_clip_bounds_the_total_norm(norm_type):
    before, after = Norms(-100, norm_type), Norms(-3, norm_type)
    clip = GradientClipCB(1.0, norm_type=norm_type)
    learn = TrainLearner(nn.Linear(4, 2), data(), F.mse_loss, lr=0.01, cbs=[clip, before, after])
    learn.fit(1, valid=False)
    assert len(before.seen) == 4 and all(b > 1.0 for b in before.seen)   # every step needed clipping...
    assert after.seen == pytest.approx([1.0] * 4, rel=1e-4)               # ...and ends at the bound
    assert clip.norms == pytest.approx(before.seen, rel=1e-5)            # the norms before clipping


def test_clip_sees_true_gradients_under_fp16():
    after = Norms(-3)
    cbs = [MixedPrecisionCB(torch.float16), GradientClipCB(1.0), after]
    TrainLearner(nn.Linear(4, 2), data(), F.mse_loss, lr=0.01, cbs=cbs).fit(1, valid=False)
    # clipping scaled gradients (x65536) and unscaling after would leave norms near 1/65536
    assert all(a == pytest.approx(1.0, rel=1e-2) for a in after.seen)


def test_clip_rejects_bad_arguments():
    with pytest.raises(ValueError, match='max_norm must be > 0'): GradientClipCB(0)
    with pytest.raises(ValueError, match='norm_type'): GradientClipCB(1, norm_type=-1)


def fit_weights(bs, cbs=(), n=64, epochs=1, lr=0.1):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    TrainLearner(model, data(n, bs, scale=1.), F.mse_loss, lr=lr, cbs=list(cbs)).fit(epochs, valid=False)
    return model.state_dict()


@pytest.mark.parametrize('n,k,b', [(64, 4, 8), (40, 4, 8), (48, 3, 16)])   # 40: the epoch ends on a group of one
def test_accumulating_k_batches_of_b_equals_one_batch_of_k_times_b(n, k, b):
    big = fit_weights(k * b, n=n, epochs=2)
    acc = fit_weights(b, [GradientAccumulationCB(k)], n=n, epochs=2)
    small = fit_weights(b, n=n, epochs=2)
    for key in big:
        torch.testing.assert_close(acc[key], big[key], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(small[key], big[key], atol=1e-4)  # without accumulation it would differ


def test_accumulation_under_fp16_matches_the_big_batch_too():
    big = fit_weights(32, [MixedPrecisionCB(torch.float16)])
    acc = fit_weights(8, [GradientAccumulationCB(4), MixedPrecisionCB(torch.float16)])
    for key in big: torch.testing.assert_close(acc[key], big[key], rtol=1e-3, atol=1e-3)


def test_schedulers_and_recorders_advance_once_per_real_step():
    sched = BatchSchedCB(partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda i: 1 / (i + 1)))
    rec, steps = RecorderCB(lr=lambda cb: cb.pg['lr']), []
    class Steps(Callback):
        def after_step(self, learn): steps.append(learn.iter)
    learn = TrainLearner(nn.Linear(4, 2), data(80, 8), F.mse_loss, lr=0.1,
                         cbs=[GradientAccumulationCB(4), sched, rec, Steps()])
    learn.fit(2, valid=False)
    assert steps == [3, 7, 9] * 2 and sched.schedo.last_epoch == 6
    assert rec.recs['lr'] == pytest.approx([0.1 / (i + 2) for i in range(6)])  # recorded after the sched step


def test_accumulation_rejects_bad_arguments():
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match='n_batches must be an integer >= 1'): GradientAccumulationCB(bad)


class Poison(Callback):
    """Writes `value` into one gradient at training batch (`epoch`, `it`), before clipping; `before`/`after` keep
    copies of the weights at the start and the end of every training batch."""
    def __init__(self, value, epoch, it):
        self.value, self.epoch, self.it, self.before, self.after = value, epoch, it, {}, {}
    def _w(self, learn): return [p.detach().clone() for p in learn.model.parameters()]
    def before_batch(self, learn):
        if learn.training: self.before[learn.epoch, learn.iter] = self._w(learn)
    def after_backward(self, learn):
        if (learn.epoch, learn.iter) == (self.epoch, self.it): learn.model.weight.grad[0, 0] = self.value
    def after_batch(self, learn):
        if learn.training: self.after[learn.epoch, learn.iter] = self._w(learn)


def momentum_learner(cbs):
    torch.manual_seed(0)
    return TrainLearner(nn.Linear(4, 2), data(), F.mse_loss, lr=0.01, cbs=cbs,
                        opt_func=partial(torch.optim.SGD, momentum=0.9))


@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf])
def test_a_non_finite_gradient_skips_its_step_and_the_fit_says_so_once(value):
    sched = BatchSchedCB(partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda i: 1 / (i + 1)))
    clip, poison = GradientClipCB(1.0), Poison(value, 0, 1)
    learn = momentum_learner([clip, poison, sched])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn.fit(2, valid=False)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))
    assert same(poison.before[0, 1], poison.after[0, 1])            # the poisoned batch did not step...
    assert not same(poison.before[0, 2], poison.after[0, 2])        # ...and its gradient did not spoil the next one
    assert clip.skipped == 1 and sched.schedo.last_epoch == 7       # 8 batches, 7 scheduler steps
    msgs = [str(w.message) for w in caught if 'GradientClipCB' in str(w.message)]
    assert len(msgs) == 1 and 'skipped 1 of 8 optimizer steps' in msgs[0] and 'the first at epoch 0, batch 1' in msgs[0]


def test_a_fit_without_non_finite_gradients_warns_nothing():
    clip = GradientClipCB(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        momentum_learner([clip]).fit(2, valid=False)
    assert clip.skipped == 0


def test_error_if_nonfinite_stops_before_the_step_naming_epoch_and_batch():
    poison = Poison(math.nan, 1, 2)
    learn = momentum_learner([GradientClipCB(1.0, error_if_nonfinite=True), poison])
    with pytest.raises(NonFiniteGradientError, match=r'NaN or inf at epoch 1, batch 2 .*the weights are intact'):
        learn.fit(2, valid=False)
    assert all(torch.equal(w, p) for w, p in zip(poison.before[1, 2], learn.model.parameters()))
