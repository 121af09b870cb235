"""EMACB: the average follows its closed form, validation sees it, training continues from the live weights."""
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_cnn, toy_images
from miniai.augment import get_preds
from miniai.core import Callback
from miniai.ema import EMACB
from miniai.learner import TrainLearner


def _scalar_model(v=0.):
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad(): m.weight.fill_(v)
    return m


def _step_to(cb, model, v):
    with torch.no_grad(): model.weight.fill_(v)
    cb.after_step(SimpleNamespace(model=model))


def test_average_follows_the_closed_form_without_warmup():
    m, cb, d = _scalar_model(1.), EMACB(0.9, warmup=False), 0.9
    cb.before_fit(SimpleNamespace(model=m))
    ws, ema = [2., -3., 5., 0.5], 1.
    for w in ws:
        _step_to(cb, m, w)
        ema = d * ema + (1 - d) * w
        assert cb.ema['weight'].item() == pytest.approx(ema, rel=1e-6)
    assert cb.n_updates == len(ws)


def test_warmup_lowers_the_decay_of_the_first_steps():
    m, cb = _scalar_model(0.), EMACB(0.999)
    cb.before_fit(SimpleNamespace(model=m))
    assert cb.current_decay() == pytest.approx(0.1)            # (1+0)/(10+0): mostly the new weights
    _step_to(cb, m, 10.)
    assert cb.ema['weight'].item() == pytest.approx(9.)         # 0.1*0 + 0.9*10
    cb.n_updates = 10_000
    assert cb.current_decay() == 0.999


@pytest.mark.parametrize('decay', [-0.1, 1.0, 2.0])
def test_decay_outside_0_1_is_rejected(decay):
    with pytest.raises(ValueError, match=r'decay must be in \[0, 1\)'): EMACB(decay)


class Snap(Callback):
    """Copies of the first conv's weight at the start of each phase."""
    order = 5
    def __init__(self): self.seen = []
    def before_epoch(self, learn): self.seen.append((learn.training, learn.model[0].weight.detach().clone()))


def _learner(cbs):
    torch.manual_seed(0)
    return TrainLearner(tiny_cnn(), toy_images(), F.cross_entropy, lr=0.05, cbs=cbs,
                        opt_func=partial(torch.optim.SGD, momentum=0.9))


def test_validation_uses_the_average_and_training_resumes_from_the_live_weights():
    ema, snap, seen_ema = EMACB(0.9, apply_at_end=False), Snap(), []
    class GrabEMA(Callback):
        order = 6
        def before_epoch(self, learn):
            if not learn.training: seen_ema.append(ema.ema['0.weight'].clone())
        def after_epoch(self, learn):
            if not learn.training: assert torch.equal(learn.model[0].weight, seen_ema[-1])  # all along
    lives = []
    class Live(Callback):
        order = 7
        def after_epoch(self, learn):
            if learn.training: lives.append(learn.model[0].weight.detach().clone())
    learn = _learner([ema, snap, GrabEMA(), Live()])
    learn.fit(2)
    (t0, _), (v0, w_v0), (t1, w_t1), (v1, w_v1) = snap.seen
    assert [t0, v0, t1, v1] == [True, False, True, False]
    assert torch.equal(w_v0, seen_ema[0]) and torch.equal(w_v1, seen_ema[1])     # validation: the average
    assert not torch.equal(w_v0, lives[0])                                          # ... which is not the live one
    assert torch.equal(w_t1, lives[0])                      # the second epoch trains on from the live weights
    assert torch.equal(learn.model[0].weight, lives[1])     # apply_at_end=False: the live weights stay


def test_apply_at_end_leaves_the_average_in_the_model_for_get_preds():
    ema = EMACB(0.9)
    learn = _learner([ema])
    learn.fit(1)
    assert torch.equal(learn.model[0].weight, ema.ema['0.weight'])
    w = learn.model[0].weight.detach().clone()
    preds, _ = get_preds(learn)                                         # a fit that does not train ...
    assert torch.equal(learn.model[0].weight, w)                        # ... changes nothing
    with torch.no_grad(): direct = learn.model.eval()(learn.dls.valid.dataset.tensors[0])
    assert torch.allclose(preds, direct, atol=1e-5)


def test_batchnorm_statistics_are_averaged_and_counts_copied():
    m = nn.Sequential(nn.BatchNorm1d(2))
    cb = EMACB(0.5, warmup=False)
    cb.before_fit(SimpleNamespace(model=m))
    m.train()(torch.tensor([[1., 2.], [3., 6.]]))                   # running_mean -> 0.9*0 + 0.1*[2, 4]
    cb.after_step(SimpleNamespace(model=m))
    assert torch.allclose(cb.ema['0.running_mean'], 0.5 * m[0].running_mean)
    assert cb.ema['0.num_batches_tracked'].item() == 1


def test_state_dict_round_trip_continues_the_same_average():
    m, a = _scalar_model(1.), EMACB(0.8, warmup=False)
    a.before_fit(SimpleNamespace(model=m))
    _step_to(a, m, 3.)
    b = EMACB(0.8, warmup=False)
    b.load_state_dict(a.state_dict())
    b.before_fit(SimpleNamespace(model=m))
    for cb in (a, b): _step_to(cb, m, -1.)
    assert b.ema['weight'].item() == pytest.approx(a.ema['weight'].item()) and b.n_updates == a.n_updates == 2
