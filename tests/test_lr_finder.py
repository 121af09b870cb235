"""The LR finder: everything bitwise as before, a sensible valley, and a sweep that stops when the loss blows up."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import DLs, tiny_cnn, toy_images
from miniai.learner import LRFinderCB, MetricsCB, TrainLearner
from miniai.lr_finder import minimum, steep, valley


def snapshot(learn):
    return ([t.clone() for t in learn.model.state_dict().values()],
            {k: v.clone() for k, v in learn.opt.state[next(learn.model.parameters())].items()},
            [g['lr'] for g in learn.opt.param_groups])


def test_lr_find_restores_model_optimizer_lr_and_rng_bitwise():
    model = nn.Sequential(tiny_cnn(), nn.BatchNorm1d(10))
    learn = TrainLearner(model, toy_images(), F.cross_entropy, lr=3e-3, opt_func=torch.optim.Adam)
    learn.fit(1)  # so the optimizer has state worth breaking
    w, st, lrs = snapshot(learn)
    rng = torch.get_rng_state()
    res = learn.lr_find(num_it=20, show_plot=False)
    w2, st2, lrs2 = snapshot(learn)
    assert all(torch.equal(a, b) for a, b in zip(w, w2))
    assert st.keys() == st2.keys() and all(torch.equal(st[k], st2[k]) for k in st)
    assert lrs == lrs2 == [3e-3] and torch.equal(rng, torch.get_rng_state())
    assert res.lrs[0] == pytest.approx(1e-7) and len(res.lrs) == len(res.losses) <= 20


def test_lr_find_without_an_optimizer_leaves_none():
    learn = TrainLearner(tiny_cnn(), toy_images(), F.cross_entropy)
    learn.lr_find(num_it=5, show_plot=False)
    assert learn.opt is None


def linear_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 10, generator=g)
    y = x @ torch.randn(10, 1, generator=g)
    return DLs(DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True), None)


def test_valley_is_near_a_known_good_lr():
    # One epoch of SGD on this problem ends lowest for lr 0.3 to 0.5 (0.15 vs 0.34 at 0.1, 1.0 at 0.03) and
    # diverges at 1: the valley must land within a factor of 10 of 0.3, and so must steep.
    learn = TrainLearner(nn.Linear(10, 1), linear_problem(), F.mse_loss, cbs=[MetricsCB()])
    res = learn.lr_find(start_lr=1e-5, end_lr=10, num_it=100, show_plot=True)
    assert 0.03 <= res.valley <= 3 and 0.03 <= res.steep <= 3
    assert res.fig is not None and res.fig.axes[0].get_xscale() == 'log'
    assert learn.cbs[0].history == []  # metrics sat the sweep out


def test_a_diverging_loss_stops_the_sweep():
    learn = TrainLearner(nn.Linear(10, 1), linear_problem(), F.mse_loss)
    res = learn.lr_find(start_lr=1e-3, end_lr=1e3, num_it=100, show_plot=False)
    assert len(res.losses) < 100
    assert not math.isfinite(res.losses[-1]) or res.smoothed[-1] > 3 * min(res.smoothed)


def test_no_stop_div_runs_every_iteration_until_non_finite():
    learn = TrainLearner(nn.Linear(10, 1), linear_problem(), F.mse_loss)
    res = learn.lr_find(start_lr=1e-4, end_lr=1e-1, num_it=40, stop_div=False, show_plot=False)
    assert len(res.losses) == 40 and res.lrs[-1] == pytest.approx(1e-1)


def test_suggestions_on_a_known_curve():
    lrs = np.logspace(-5, 1, 61)
    losses = 1 / (1 + np.exp(5 * (np.log10(lrs) + 2))) + np.where(lrs > 1, (np.log10(lrs)) ** 2, 0)
    assert 1e-3 <= steep(lrs, losses) <= 1e-1     # the sigmoid's steepest point is at 1e-2
    assert minimum(lrs, losses) == pytest.approx(lrs[np.argmin(losses)] / 10)
    assert 1e-4 <= valley(lrs, losses) <= 1


def test_lrfinder_callback_alone_multiplies_by_gamma():
    cb = LRFinderCB(gamma=2, max_mult=100)
    learn = TrainLearner(nn.Linear(10, 1), linear_problem(), F.mse_loss, lr=1e-6)
    learn.fit(1, cbs=[cb])
    assert cb.lrs[:3] == pytest.approx([1e-6, 2e-6, 4e-6])
    with pytest.raises(ValueError, match='gamma'): LRFinderCB(gamma=1)


def test_lr_finder_result_repr_dumped_hundreds_of_floats():
    learn = TrainLearner(nn.Linear(10, 1), linear_problem(), F.mse_loss)
    res = learn.lr_find(num_it=300, show_plot=False, stop_div=False)
    r = repr(res)
    assert len(r) < 120 and f'points={len(res.lrs)}' in r and f'{res.valley:.2e}' in r


def test_lr_find_with_terminate_on_nan_ends_the_sweep_at_the_non_finite_loss():
    """Regression: TerminateOnNaNCB took part in the sweep and raised NonFiniteLossError where the sweep ends."""
    from miniai.checkpoint import TerminateOnNaNCB
    learn = TrainLearner(nn.Linear(10, 1), linear_problem(), F.mse_loss, cbs=[TerminateOnNaNCB()])
    res = learn.lr_find(start_lr=1e-3, end_lr=1e12, num_it=60, stop_div=False, show_plot=False)
    assert not math.isfinite(res.losses[-1]) and len(res.losses) < 60
    assert isinstance(learn.cbs[0], TerminateOnNaNCB)  # back in place for the real fit
