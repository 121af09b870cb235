"""Schedules of miniai.sgd: closed forms, torch's schedulers as oracle, the scheduling callbacks and fit_one_cycle."""
import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from matplotlib.figure import Figure
from torch.optim import lr_scheduler

from miniai.core import check_callback, run_cbs
from miniai.sgd import (
    SGD,
    Adam,
    BaseSchedCB,
    BatchSchedCB,
    CosineAnnealing,
    EpochSchedCB,
    Momentum,
    OneCycle,
    OneCycleSchedCB,
    Optimizer,
    RecorderCB,
    combine_scheds,
    fit_one_cycle,
    get_mom,
    plot_lrs,
    sched_cos,
    sched_exp,
    sched_lin,
    sched_lrs,
    sched_no,
    sgd_step,
    weight_decay,
)


def params(n=2): return [torch.nn.Parameter(torch.ones(3)) for _ in range(n)]


def two_groups(opt_func, lrs=(0.1, 0.02)):
    a, b = params()
    return opt_func([{'params': [a], 'lr': lrs[0]}, {'params': [b], 'lr': lrs[1]}], lr=lrs[0])


def cos_anneal(a, b, x): return a + (b - a) * (1 - math.cos(math.pi * x)) / 2


# --- pure functions ----------------------------------------------------------------------------------------------
def test_pure_schedules_closed_form():
    for pct in (0., 0.25, 0.5, 1.):
        assert sched_lin(2., 4., pct) == pytest.approx(2. + 2. * pct)
        assert sched_cos(2., 4., pct) == pytest.approx(cos_anneal(2., 4., pct))
        assert sched_no(2., 4., pct) == 2.
        assert sched_exp(2., 8., pct) == pytest.approx(2. * 4. ** pct)
    assert sched_cos(1., 0., 0.5) == pytest.approx(0.5) and sched_cos(1., 0., 1.) == pytest.approx(0.)


def test_combine_scheds():
    f = combine_scheds([0.25, 0.75], [partial(sched_lin, 0., 1.), partial(sched_lin, 1., 0.)])
    assert [f(x) for x in (0., 0.125, 0.25, 0.625, 1.)] == pytest.approx([0., 0.5, 1., 0.5, 0.])
    g = combine_scheds([0., 1.], [partial(sched_no, 5., 5.), partial(sched_lin, 1., 3.)])
    assert g(0.) == 1. and g(1.) == 3.
    with pytest.raises(ValueError, match='sum to 1'): combine_scheds([0.5, 0.6], [sched_no, sched_no])


# --- our schedulers against torch's ------------------------------------------------------------------------------
def lrs_and_moms(sched, opt, steps):
    out = [([g['lr'] for g in opt.param_groups], [get_mom(g) for g in opt.param_groups])]
    for _ in range(steps):
        opt.step(); sched.step()
        out.append(([g['lr'] for g in opt.param_groups], [get_mom(g) for g in opt.param_groups]))
    return out


def assert_same_runs(a, b):
    assert len(a) == len(b)
    for (lr1, m1), (lr2, m2) in zip(a, b):
        assert lr1 == pytest.approx(lr2, abs=1e-6, rel=0) and [m is None for m in m1] == [m is None for m in m2]
        assert [m for m in m1 if m is not None] == pytest.approx([m for m in m2 if m is not None], abs=1e-6, rel=0)


@pytest.mark.parametrize('T_max, eta_min', [(10, 0.), (7, 0.005), (1, 0.)])
def test_cosine_annealing_matches_torch(T_max, eta_min):
    steps = 2 * T_max + 3                             # past T_max it turns back up, as torch's
    ours = lrs_and_moms(CosineAnnealing(o := two_groups(SGD), T_max, eta_min=eta_min), o, steps)
    theirs = lrs_and_moms(lr_scheduler.CosineAnnealingLR(o := two_groups(torch.optim.SGD), T_max, eta_min), o, steps)
    assert [lr for lr, _ in ours] == [pytest.approx(lr, abs=1e-6, rel=0) for lr, _ in theirs]
    assert ours[T_max][0] == pytest.approx([eta_min, eta_min]) and ours[1][0] != theirs[0][0]


@pytest.mark.parametrize('opt_funcs', [(partial(Momentum, mom=0.9), partial(torch.optim.SGD, momentum=0.9)),
                                       (Adam, torch.optim.AdamW)], ids=['momentum', 'betas'])
@pytest.mark.parametrize('strategy', ['cos', 'linear'])
@pytest.mark.parametrize('three_phase', [False, True])
@pytest.mark.parametrize('total, pct', [(100, 0.3), (37, 0.25), (10, 0.5)])
def test_onecycle_matches_torch(opt_funcs, strategy, three_phase, total, pct):
    kw = dict(max_lr=[0.1, 0.03], total_steps=total, pct_start=pct, anneal_strategy=strategy, three_phase=three_phase,
              div_factor=20., final_div_factor=1e3, base_momentum=0.8, max_momentum=0.9)
    ours = lrs_and_moms(OneCycle(o := two_groups(opt_funcs[0]), **kw), o, total)
    theirs = lrs_and_moms(lr_scheduler.OneCycleLR(o := two_groups(opt_funcs[1]), **kw), o, total)
    assert_same_runs(ours, theirs)
    assert ours[0][0] == pytest.approx([0.1 / 20, 0.03 / 20]) and ours[0][1] == pytest.approx([0.9, 0.9])


def test_onecycle_defaults_match_torch_and_max_lr_defaults_to_group_lr():
    ours = lrs_and_moms(OneCycle(o := two_groups(Adam), 50), o, 50)
    theirs = lrs_and_moms(lr_scheduler.OneCycleLR(o := two_groups(torch.optim.AdamW), [0.1, 0.02], 50), o, 50)
    assert_same_runs(ours, theirs)


def test_onecycle_signature_of_the_scheduler_post():
    """`OneCycle(opt, T_max, min_lr=0.)`: T_max is total_steps, min_lr the first and last lr, max_lr the group's."""
    opt = SGD(params(1), lr=0.2)
    sched = partial(OneCycle, T_max=100)(opt, min_lr=0., pct_start=0.5, anneal_strategy='linear')
    lrs = [lr for lr, in sched_lrs(sched, 99)]
    assert lrs[0] == 0. and lrs[-1] == pytest.approx(0.) and max(lrs) == pytest.approx(0.2)
    assert lrs[25] == pytest.approx(0.1, rel=0.03)                  # a triangle, as in galopy's post
    assert not sched.cycle_momentum                                 # our SGD has no momentum: left alone
    assert OneCycle(SGD(params(1), lr=0.2), 10, min_lr=1e-3).get_last_lr() == [pytest.approx(1e-3)]


def test_onecycle_cycles_mom_of_the_stepper_optimizer():
    opt = Optimizer(params(1), [sgd_step], lr=0.1, mom=0.9)
    sched = OneCycle(opt, 10)
    moms = [opt.param_groups[0]['mom']]
    for _ in range(9): sched.step(); moms.append(opt.param_groups[0]['mom'])
    assert moms[0] == 0.95 and min(moms) == pytest.approx(0.85, abs=0.01) and moms[-1] == pytest.approx(0.95)


@pytest.mark.parametrize('kw, name', [(dict(total_steps=1), 'total_steps'), (dict(T_max=0), 'total_steps'),
                                      (dict(), 'total_steps'), (dict(total_steps=10, T_max=10), 'T_max'),
                                      (dict(total_steps=10, pct_start=1.5), 'pct_start'),
                                      (dict(total_steps=10, anneal_strategy='exp'), 'anneal_strategy'),
                                      (dict(total_steps=10, cycle_momentum=True), 'cycle_momentum')])
def test_onecycle_bad_args(kw, name):
    with pytest.raises(ValueError, match=name): OneCycle(SGD(params(1), lr=0.1), **kw)


def test_bad_scheduler_args_and_overstepping():
    with pytest.raises(ValueError, match='T_max'): CosineAnnealing(SGD(params(1), lr=0.1), 0)
    sched = OneCycle(Adam(params(1), lr=0.1), 3)
    for _ in range(3): sched.step()
    with pytest.raises(ValueError, match='total_steps'): sched.step()


@pytest.mark.parametrize('make', [partial(OneCycle, total_steps=20), partial(CosineAnnealing, T_max=15)],
                         ids=['OneCycle', 'CosineAnnealing'])
def test_scheduler_state_dict_resumes(make):
    full = lrs_and_moms(make(o := two_groups(Adam)), o, 20)
    sched = make(o := two_groups(Adam))
    for _ in range(7): o.step(); sched.step()
    sd = sched.state_dict()
    assert 'optimizer' not in sd
    sched2 = make(o2 := two_groups(Adam, lrs=(9., 9.)))
    sched2.load_state_dict(sd)                        # writes the current lr (and momentum) back
    assert sched2.get_last_lr() == sched.get_last_lr() == [g['lr'] for g in o2.param_groups]
    assert_same_runs(lrs_and_moms(sched2, o2, 13), full[7:])


def test_sched_lrs_and_plot_lrs():
    lrs = sched_lrs(CosineAnnealing(SGD(params(1), lr=0.1), 10), 10)
    assert len(lrs) == 11 and lrs[0] == [0.1] and lrs[5] == [pytest.approx(0.05)] and lrs[10] == [pytest.approx(0.)]
    fig = plot_lrs(CosineAnnealing, SGD(params(1), lr=0.1), T_max=100, n_steps=120)   # galopy's call
    assert isinstance(fig, Figure) and len(fig.axes[0].lines[0].get_ydata()) == 120
    fig2 = plot_lrs(lr_scheduler.OneCycleLR(torch.optim.SGD(params(1), lr=0.1), 0.1, total_steps=30), n_steps=30)
    assert max(fig2.axes[0].lines[0].get_ydata()) == pytest.approx(0.1)


# --- the callbacks, on a fake learner ----------------------------------------------------------------------------
class FakeLearner:
    """Runs a fit's events by hand (no learner.py); each training batch steps `opt` on a grad of ones and records the
    (lr, momentum) of the first group as the step used them."""
    def __init__(self, opt, n_train=4, n_valid=2, lr=0.1):
        self.opt, self.lr, self.training, self.used = opt, lr, False, []
        self.dls = SimpleNamespace(train=range(n_train), valid=range(n_valid))

    def fit(self, n_epochs, cbs=(), lr=None, resuming=False):
        """`resuming`: this fit continues a run whose state the callbacks were given (as `Learner.fit` says after
        `load`)."""
        cbs = [check_callback(cb) for cb in cbs]
        self.n_epochs, self.resuming = n_epochs, resuming
        run_cbs(cbs, 'before_fit', self)
        for self.epoch in range(n_epochs):
            for self.training, dl in ((True, self.dls.train), (False, self.dls.valid)):
                run_cbs(cbs, 'before_epoch', self)
                for _ in dl:
                    run_cbs(cbs, 'before_batch', self)
                    if self.training:
                        self._step()
                        run_cbs(cbs, 'after_step', self)
                    run_cbs(cbs, 'after_batch', self)
                run_cbs(cbs, 'after_epoch', self)
        run_cbs(cbs, 'after_fit', self)
        run_cbs(cbs, 'cleanup_fit', self)

    def _step(self):
        g = self.opt.param_groups[0]
        self.used.append((g['lr'], get_mom(g)))
        for g in self.opt.param_groups:
            for p in g['params']: p.grad = torch.ones_like(p)
        self.opt.step()


def test_batch_sched_cb_as_the_scheduler_post_uses_it_steps_only_after_training_batches():
    learn = FakeLearner(Adam(params(1), lr=0.1))
    T = 2 * len(learn.dls.train)
    learn.fit(2, cbs=[BatchSchedCB(partial(CosineAnnealing, T_max=T))])
    assert [lr for lr, _ in learn.used] == pytest.approx([cos_anneal(0.1, 0., i / T) for i in range(T)])


class CourseEpochSchedCB(BaseSchedCB):           # "Accelerated SGD"'s, verbatim
    def after_epoch(self, learn): self._step(learn)


@pytest.mark.parametrize('cb_cls', [EpochSchedCB, CourseEpochSchedCB])
def test_epoch_sched_cb(cb_cls):
    learn = FakeLearner(torch.optim.AdamW(params(1), lr=0.1), n_train=2)
    learn.fit(3, cbs=[cb_cls(partial(lr_scheduler.CosineAnnealingLR, T_max=3))])
    expected = [cos_anneal(0.1, 0., e / 3) for e in range(3) for _ in range(2)]
    assert [lr for lr, _ in learn.used] == pytest.approx(expected)


def test_batch_sched_cb_state_dict_resumes_a_torch_onecycle_mid_run():
    make_cb = lambda: BatchSchedCB(partial(lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=12))
    full = FakeLearner(Adam(params(1), lr=0.1))
    full.fit(3, cbs=[make_cb()])
    first = FakeLearner(Adam(params(1), lr=0.1))
    cb = make_cb()
    first.fit(1, cbs=[cb])
    ckpt = {'cb': cb.state_dict(), 'opt': first.opt.state_dict()}
    second = FakeLearner(Adam(params(1), lr=0.1))
    second.opt.load_state_dict(ckpt['opt'])
    cb2 = make_cb()
    cb2.load_state_dict(ckpt['cb'])
    second.fit(2, cbs=[cb2], resuming=True)
    assert first.used + second.used == full.used
    assert len({m for _, m in full.used}) > 2                     # the momentum was cycled and resumed too


def test_recorder_cb():
    opt = Adam(params(1), lr=0.1)
    rec = RecorderCB(lr=lambda cb: cb.pg['lr'], mom=lambda cb: cb.pg['betas'][0])
    learn = FakeLearner(opt)
    learn.fit(2, cbs=[BatchSchedCB(partial(lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=8)), rec])
    assert len(rec.recs['lr']) == 8 and len(rec.recs['mom']) == 8    # training batches only
    assert rec.recs['lr'] == [lr for lr, _ in learn.used[1:]] + [rec.recs['lr'][-1]]   # read after the step
    assert 'params' not in rec.pg                                   # no live params kept after the fit
    fig = rec.plot()
    assert isinstance(fig, Figure) and [ax.get_title() for ax in fig.axes] == ['lr', 'mom']
    learn.fit(1, cbs=[rec])
    assert len(rec.recs['lr']) == 4                                 # fresh records each fit


# --- fit_one_cycle -----------------------------------------------------------------------------------------------
def one_cycle_expected(n, lr_max, pct=0.25, moms=(0.95, 0.85, 0.95), div=25., div_final=1e5):
    out = []
    for i in range(n):
        pos = i / n
        if pos < pct: x = pos / pct; lr, mom = cos_anneal(lr_max / div, lr_max, x), cos_anneal(moms[0], moms[1], x)
        else:
            x = (pos - pct) / (1 - pct)
            lr, mom = cos_anneal(lr_max, lr_max / div_final, x), cos_anneal(moms[1], moms[2], x)
        out.append((lr, mom))
    return out


@pytest.mark.parametrize('opt', [lambda: Adam(params(), lr=1.), lambda: Momentum(params(), lr=1.),
                                 lambda: Optimizer(params(), [weight_decay, sgd_step], lr=1., mom=0.9, wd=0.),
                                 lambda: torch.optim.SGD(params(), lr=1., momentum=0.9)],
                         ids=['Adam-betas', 'Momentum', 'steppers-mom', 'torch-SGD'])
def test_fit_one_cycle_lr_and_momentum_sequence(opt):
    learn = FakeLearner(opt(), lr=0.3)
    extra = RecorderCB(lr=lambda cb: cb.pg['lr'])
    fit_one_cycle(learn, 3, lr_max=0.2, cbs=[extra])
    expected = one_cycle_expected(12, 0.2)
    assert [lr for lr, _ in learn.used] == pytest.approx([lr for lr, _ in expected])
    assert [m for _, m in learn.used] == pytest.approx([m for _, m in expected])
    assert extra.recs['lr'] == pytest.approx([lr for lr, _ in expected])    # the lr each step used
    assert learn.used[0][0] == pytest.approx(0.2 / 25)
    assert max(lr for lr, _ in learn.used) == pytest.approx(0.2, rel=0.02)


def test_fit_one_cycle_lr_max_defaults_to_learn_lr_and_other_args():
    learn = FakeLearner(SGD(params(), lr=1.), lr=0.3, n_train=5)
    fit_one_cycle(learn, 2, pct_start=0.5, div=10., div_final=100.)
    assert [lr for lr, _ in learn.used] == pytest.approx([lr for lr, _ in one_cycle_expected(10, 0.3, 0.5, div=10.,
                                                                                               div_final=100.)])
    assert all(m is None for _, m in learn.used)                     # SGD has no momentum: not an error


def test_fit_one_cycle_moms_zero_with_a_stepper_optimizer():
    def sgd_cb(p, lr, **kwargs): p.data.add_(p.grad.data, alpha=-lr)
    ps = params(1)
    learn = FakeLearner(Optimizer(ps, cbs=[sgd_cb], lr=0.1))
    fit_one_cycle(learn, 1, 0.1, moms=(0, 0, 0))
    total = sum(lr for lr, _ in learn.used)
    torch.testing.assert_close(ps[0].detach(), torch.full((3,), 1 - total))
    m = Momentum(params(1), lr=0.1)
    fit_one_cycle(FakeLearner(m), 1, 0.1, moms=(0, 0, 0))
    assert m.param_groups[0]['momentum'] == 0


def test_fit_one_cycle_wd_and_per_group_lr_max():
    opt = Adam([{'params': params(1)}, {'params': params(1)}], lr=1.)
    learn = FakeLearner(opt)
    fit_one_cycle(learn, 1, lr_max=[0.1, 0.01], wd=0.05)
    assert [g['weight_decay'] for g in opt.param_groups] == [0.05, 0.05]
    assert opt.param_groups[1]['lr'] == pytest.approx(one_cycle_expected(4, 0.01)[-1][0])
    stepper = Optimizer(params(1), [weight_decay, sgd_step], lr=0.1, wd=0.)
    fit_one_cycle(FakeLearner(stepper), 1, 0.1, wd=0.2)
    assert stepper.param_groups[0]['wd'] == 0.2
    with pytest.raises(ValueError, match='wd'): fit_one_cycle(FakeLearner(Optimizer(params(1), [sgd_step], lr=.1)),
                                                              1, 0.1, wd=0.1)


def test_fit_one_cycle_empty_loader_and_bad_args():
    with pytest.raises(ValueError, match='empty'): fit_one_cycle(FakeLearner(SGD(params(), lr=.1), n_train=0), 1)
    with pytest.raises(ValueError, match='pct_start'): OneCycleSchedCB(0.1, pct_start=2.)
    with pytest.raises(ValueError, match='moms'): OneCycleSchedCB(0.1, moms=(0.9, 0.8))


def test_one_cycle_sched_cb_state_dict_resumes_mid_run():
    full = FakeLearner(Adam(params(1), lr=1.))
    full.fit(3, cbs=[OneCycleSchedCB(0.1)])
    cb = OneCycleSchedCB(0.1)
    learn = FakeLearner(Adam(params(1), lr=1.))
    learn.n_epochs = 3
    cb.before_fit(learn)
    learn.training = True
    for _ in range(5): cb.before_batch(learn); learn._step(); cb.after_batch(learn)
    sd = cb.state_dict()
    assert sd['i'] == 5
    cb2 = OneCycleSchedCB(0.1)
    cb2.load_state_dict(sd)
    learn2 = FakeLearner(Adam(params(1), lr=1.))
    learn2.n_epochs, learn2.resuming = 3, True        # a fit that continues the run the state came from
    cb2.before_fit(learn2)
    learn2.training = True
    for _ in range(7): cb2.before_batch(learn2); learn2._step(); cb2.after_batch(learn2)
    assert learn.used + learn2.used == full.used
