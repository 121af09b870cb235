"""EMACB: the average follows its closed form, validation sees it, training continues from the live weights, and
checkpoints hold the trained weights, so a resume with EMA is exact."""
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import StopAfter, tiny_cnn, toy_images
from miniai.augment import get_preds
from miniai.checkpoint import SaveModelCB
from miniai.core import Callback
from miniai.ema import EMACB
from miniai.learner import MetricsCB, TrainLearner, set_seed


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
    assert torch.allclose(preds, direct.softmax(1), atol=1e-5)        # get_preds: probabilities for cross entropy


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


class Trained(Callback):
    """Copies of the model's weights at the end of each training epoch: the trained (live) weights."""
    def __init__(self): self.seen = []
    def after_epoch(self, learn):
        if learn.training: self.seen.append({k: v.clone() for k, v in learn.model.state_dict().items()})


def _ema_learner(folder, apply_at_end):
    set_seed(1, deterministic=True)
    ema = EMACB(0.9, apply_at_end=apply_at_end)
    learn = TrainLearner(nn.Sequential(tiny_cnn(), nn.BatchNorm1d(10)), toy_images(n=200, bs=32), F.cross_entropy,
                         lr=0.05, opt_func=partial(torch.optim.SGD, momentum=0.9),
                         cbs=[MetricsCB(), ema, SaveModelCB(folder)])
    return learn, ema


def _tensors(o, where=''):
    """(name, tensor) of every tensor in nested dicts/lists `o`."""
    if isinstance(o, torch.Tensor): yield where, o
    elif isinstance(o, dict):
        for k, v in o.items(): yield from _tensors(v, f'{where}/{k}')
    elif isinstance(o, (list, tuple)):
        for i, v in enumerate(o): yield from _tensors(v, f'{where}/{i}')


def assert_bitwise_equal(a, b):
    ta, tb = dict(_tensors(a)), dict(_tensors(b))
    assert ta.keys() == tb.keys() and ta
    for k in ta: assert torch.equal(ta[k], tb[k]), k


def _ema_state(ckpt): return next(v for k, v in ckpt['callbacks'].items() if k.startswith('EMACB'))


@pytest.mark.parametrize('apply_at_end', [False, True])
def test_resume_with_ema_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, apply_at_end):
    full, full_ema = _ema_learner(tmp_path / 'full', apply_at_end)
    full.fit(2)

    part, part_ema = _ema_learner(tmp_path / 'part', apply_at_end)
    trained = Trained()
    part.fit(2, cbs=[trained, StopAfter(0)])      # last.pt is written after epoch 0's validation, then it stops
    saved = torch.load(tmp_path / 'part' / 'last.pt', weights_only=True)
    assert_bitwise_equal(saved['model'], trained.seen[0])    # the weights training goes on from, not the average...
    assert not torch.equal(saved['model']['0.0.weight'], _ema_state(saved)['ema']['0.0.weight'])   # ...which is here

    torch.manual_seed(123)  # a new process: whatever the RNG holds now must not matter
    resumed, resumed_ema = _ema_learner(tmp_path / 'resumed', apply_at_end)
    resumed.load(tmp_path / 'part' / 'last.pt')
    resumed.fit(2)
    assert_bitwise_equal(resumed.model.state_dict(), full.model.state_dict())
    assert_bitwise_equal(resumed_ema.state_dict(), full_ema.state_dict())
    assert resumed_ema.n_updates == full_ema.n_updates
    assert_bitwise_equal(resumed.opt.state_dict(), full.opt.state_dict())
    a, b = (torch.load(tmp_path / d / 'last.pt', weights_only=True) for d in ('full', 'resumed'))   # after epoch 1
    for get in (lambda c: c['model'], lambda c: c['opt'], _ema_state): assert_bitwise_equal(get(a), get(b))


def test_ctrl_c_during_validation_leaves_the_trained_weights_not_the_average(tmp_path):
    class CtrlC(Callback):
        def after_batch(self, learn):
            if not learn.training and learn.epoch == 1 and learn.iter == 1: raise KeyboardInterrupt
    learn, ema = _ema_learner(tmp_path, apply_at_end=True)
    trained = Trained()
    with pytest.raises(KeyboardInterrupt): learn.fit(3, cbs=[trained, CtrlC()])
    assert_bitwise_equal(learn.model.state_dict(), trained.seen[-1])   # what an interrupted.pt must hold
    assert not torch.equal(learn.model[0][0].weight, ema.ema['0.0.weight'])


def test_lr_find_leaves_the_average_and_its_count_alone():
    ema = EMACB(0.9, apply_at_end=False)
    learn = _learner([ema])
    learn.fit(1)
    before, n = {k: v.clone() for k, v in ema.ema.items()}, ema.n_updates
    learn.lr_find(num_it=5, show_plot=False)
    assert ema.n_updates == n and all(torch.equal(before[k], ema.ema[k]) for k in before)
