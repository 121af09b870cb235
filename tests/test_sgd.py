"""The optimizer contract of miniai.sgd: formulas by hand, torch as oracle, steppers, foreach vs per-param, resume."""
import io
import math
from functools import partial

import pytest
import torch
from torch.optim.lr_scheduler import OneCycleLR

import miniai.sgd as sgd_mod
from miniai.sgd import (
    SGD,
    Adagrad,
    Adam,
    Lamb,
    Momentum,
    Nesterov,
    Optimizer,
    RMSProp,
    adagrad_step,
    adam_step,
    average_grad,
    average_sqr_grad,
    get_mom,
    lamb_step,
    momentum_step,
    nesterov_step,
    rms_prop_step,
    rms_sqr_grad,
    sgd_step,
    step_stat,
    sum_sqr_grad,
    weight_decay,
)

CLASSES = [SGD, Momentum, Nesterov, RMSProp, Adam, Adagrad, Lamb]
HP = dict(lr=0.05, wd=0.1)

# name -> (the class, the same algorithm from steppers), same hypers
CASES = {
    'SGD': (partial(SGD, **HP), partial(Optimizer, cbs=[weight_decay, sgd_step], **HP)),
    'Momentum': (partial(Momentum, mom=0.8, **HP),
                 partial(Optimizer, cbs=[weight_decay, average_grad, momentum_step], mom=0.8, **HP)),
    'Nesterov': (partial(Nesterov, mom=0.8, **HP),
                 partial(Optimizer, cbs=[weight_decay, partial(average_grad, dampening=False), nesterov_step],
                         mom=0.8, **HP)),
    'RMSProp': (partial(RMSProp, sqr_mom=0.9, eps=1e-4, **HP),
                partial(Optimizer, cbs=[weight_decay, rms_sqr_grad, rms_prop_step], sqr_mom=0.9, eps=1e-4, **HP)),
    'Adam': (partial(Adam, beta1=0.8, beta2=0.9, eps=1e-5, **HP),
             partial(Optimizer, cbs=[weight_decay, step_stat, average_grad, average_sqr_grad, adam_step],
                     mom=0.8, sqr_mom=0.9, eps=1e-5, **HP)),
    'Adagrad': (partial(Adagrad, eps=1e-10, **HP),
                partial(Optimizer, cbs=[weight_decay, sum_sqr_grad, adagrad_step], eps=1e-10, **HP)),
    'Lamb': (partial(Lamb, beta1=0.8, beta2=0.9, eps=1e-6, **HP),
             partial(Optimizer, cbs=[step_stat, average_grad, average_sqr_grad, lamb_step],
                     mom=0.8, sqr_mom=0.9, eps=1e-6, **HP)),
}
ALL_OPT_FUNCS = {**{k: v[0] for k, v in CASES.items()}, **{f'{k}-steppers': v[1] for k, v in CASES.items()}}


def toy_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def train(model, opt, n, seed=1):
    """`n` steps of full-batch MSE on fixed data; returns all parameters flattened."""
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    x, y = torch.randn(16, 3, generator=g).to(dev), torch.randn(16, 2, generator=g).to(dev)
    for _ in range(n):
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return flat(model)


def flat(model): return torch.cat([p.detach().cpu().flatten() for p in model.parameters()])


def run(opt_func, n=5, seed=0):
    model = toy_model(seed)
    return train(model, opt_func(model.parameters()), n)


# --- the formulas, by hand on python floats ----------------------------------------------------------------------
P0 = [0.5, -1.0, 2.0]
GRADS = [[0.3, 0.0, -1.2], [-0.1, 0.4, 0.5], [0.2, -0.3, 0.0]]
LR, WD, MOM, SQR, B1, B2, EPS = 0.1, 0.2, 0.8, 0.9, 0.7, 0.95, 1e-3


def by_hand(name):
    """The parameter after each of 3 steps, computed element by element from the documented update rule."""
    p, out = list(P0), []
    avg, sqr, tot = [0.] * 3, [0.] * 3, [0.] * 3
    for t, g in enumerate(GRADS, 1):
        if name == 'Lamb':
            avg = [B1 * a + (1 - B1) * gi for a, gi in zip(avg, g)]
            sqr = [B2 * s + (1 - B2) * gi * gi for s, gi in zip(sqr, g)]
            r = [a / (1 - B1**t) / (math.sqrt(s / (1 - B2**t)) + EPS) + WD * pi for a, s, pi in zip(avg, sqr, p)]
            wn, rn = math.sqrt(sum(x * x for x in p)), math.sqrt(sum(x * x for x in r))
            trust = wn / rn if wn > 0 and rn > 0 else 1.
            p = [pi - LR * trust * ri for pi, ri in zip(p, r)]
            out.append(p); continue
        p = [pi * (1 - LR * WD) for pi in p]
        for i, gi in enumerate(g):
            if name == 'SGD': p[i] -= LR * gi
            elif name == 'Momentum':
                avg[i] = MOM * avg[i] + (1 - MOM) * gi
                p[i] -= LR * avg[i]
            elif name == 'Nesterov':
                avg[i] = MOM * avg[i] + gi
                p[i] -= LR * (gi + MOM * avg[i])
            elif name == 'RMSProp':
                if t == 1: sqr[i] = gi * gi
                sqr[i] = SQR * sqr[i] + (1 - SQR) * gi * gi
                p[i] -= LR * gi / (math.sqrt(sqr[i]) + EPS)
            elif name == 'Adam':
                avg[i] = B1 * avg[i] + (1 - B1) * gi
                sqr[i] = B2 * sqr[i] + (1 - B2) * gi * gi
                p[i] -= LR * (avg[i] / (1 - B1**t)) / math.sqrt(sqr[i] / (1 - B2**t) + EPS)
            elif name == 'Adagrad':
                tot[i] += gi * gi
                p[i] -= LR * gi / (math.sqrt(tot[i]) + EPS)
        out.append(p)
    return out


HAND_KW = {'SGD': {}, 'Momentum': dict(mom=MOM), 'Nesterov': dict(mom=MOM), 'RMSProp': dict(sqr_mom=SQR, eps=EPS),
           'Adam': dict(beta1=B1, beta2=B2, eps=EPS), 'Adagrad': dict(eps=EPS),
           'Lamb': dict(beta1=B1, beta2=B2, eps=EPS)}


@pytest.mark.parametrize('foreach', [None, False])
@pytest.mark.parametrize('cls', CLASSES, ids=lambda c: c.__name__)
def test_first_three_steps_match_the_formula(cls, foreach):
    p = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float64))
    opt = cls([p], lr=LR, wd=WD, foreach=foreach, **HAND_KW[cls.__name__])
    for g, expected in zip(GRADS, by_hand(cls.__name__)):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert opt.i == 3 and opt.state[p]['step'] == 3


# --- torch as the oracle where the algorithms coincide ---------------------------------------------------------
@pytest.mark.parametrize('foreach', [False, True])
@pytest.mark.parametrize('ours, theirs', [
    (partial(SGD, lr=0.1), partial(torch.optim.SGD, lr=0.1)),
    (partial(Nesterov, lr=0.1, mom=0.9), partial(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True)),
    (partial(Adagrad, lr=0.1), partial(torch.optim.Adagrad, lr=0.1)),
], ids=['SGD', 'Nesterov', 'Adagrad'])
def test_equals_torch(ours, theirs, foreach):
    torch.testing.assert_close(run(ours, 8), run(partial(theirs, foreach=foreach), 8), rtol=1e-6, atol=1e-7)


def test_adam_eps0_matches_torch_adam():
    """Course Adam (eps inside the sqrt) and torch Adam differ only in rounding when eps=0."""
    ours = run(partial(Adam, lr=0.01, beta1=0.9, beta2=0.999, eps=0.), 20)
    theirs = run(partial(torch.optim.Adam, lr=0.01, betas=(0.9, 0.999), eps=0.), 20)
    assert (ours - theirs).abs().max() < 1e-6
    assert (ours - run(partial(torch.optim.Adam, lr=0.01, eps=1e-3), 20)).abs().max() > 1e-4   # eps does matter


def test_adam_with_wd_matches_torch_adamw_when_eps0():
    ours = run(partial(Adam, lr=0.01, wd=0.1, beta1=0.9, beta2=0.999, eps=0.), 10)
    theirs = run(partial(torch.optim.AdamW, lr=0.01, weight_decay=0.1, eps=0.), 10)
    assert (ours - theirs).abs().max() < 1e-6


def _preset_state(torch_opt, model, **state):
    for p in model.parameters(): torch_opt.state[p].update({k: f(p) for k, f in state.items()})


def test_momentum_is_torch_sgd_dampened_with_buffer_starting_at_zeros():
    """torch SGD(momentum=m, dampening=m) starts its buffer at the first grad, ours at zeros: preset, they agree."""
    ours = run(partial(Momentum, lr=0.1, mom=0.9), 6)
    model = toy_model()
    t_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.9)
    _preset_state(t_opt, model, momentum_buffer=torch.zeros_like)
    torch.testing.assert_close(ours, train(model, t_opt, 6), rtol=1e-6, atol=1e-7)
    assert (ours - run(partial(torch.optim.SGD, lr=0.1, momentum=0.9, dampening=0.9), 6)).abs().max() > 1e-3


def test_rmsprop_is_torch_rmsprop_with_square_avg_starting_at_grad_squared():
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    res = []
    for make in (lambda m: RMSProp(m.parameters(), lr=0.01, sqr_mom=0.9, eps=1e-5),
                 lambda m: torch.optim.RMSprop(m.parameters(), lr=0.01, alpha=0.9, eps=1e-5)):
        model = toy_model()
        opt = make(model)
        for i in range(4):
            torch.nn.functional.mse_loss(model(x), y).backward()
            if i == 0 and isinstance(opt, torch.optim.RMSprop):
                _preset_state(opt, model, step=lambda p: torch.tensor(0.), square_avg=lambda p: p.grad * p.grad)
            opt.step(); opt.zero_grad()
        res.append(flat(model))
    torch.testing.assert_close(res[0], res[1], rtol=1e-6, atol=1e-7)


# --- the steppers of the post "Gradient descent with Adam", verbatim, on our Optimizer ----------------------------
def sgd_cb(p, lr, **kwargs):
    p.data.add_(p.grad.data, alpha=-lr)

def average_grad_post(p, mom, grad_avg=None, **kwargs):
    # mom is short for momentum
    if grad_avg is None:
        grad_avg = torch.zeros_like(p.grad.data)
    return {'grad_avg': mom * grad_avg + (1 - mom) * p.grad.data}

def momentum_step_post(p, lr, grad_avg, **kwargs):
    p.data.add_(grad_avg, alpha=-lr)

def average_square_grad(p, square_mom, square_avg=None, **kwargs):
    if square_avg is None:
        square_avg = torch.zeros_like(p.grad.data)
    return {'square_avg': square_mom * square_avg + (1 - square_mom) * p.grad.data ** 2}

def rms_prop_step_post(p, lr, square_avg, eps, grad_avg=None, **kwargs):
    denom = square_avg.sqrt().add_(eps)
    p.data.addcdiv_(p.grad, denom, value=-lr)


def test_the_adam_posts_steppers_run_on_optimizer():
    torch.testing.assert_close(run(partial(Optimizer, cbs=[sgd_cb], lr=0.1)), run(partial(SGD, lr=0.1)))
    torch.testing.assert_close(run(partial(Optimizer, cbs=[average_grad_post, momentum_step_post], lr=0.1, mom=0.9)),
                               run(partial(Momentum, lr=0.1, mom=0.9)), rtol=1e-5, atol=1e-6)
    # the post's RMSProp starts square_avg at zeros: that is torch's RMSprop
    torch.testing.assert_close(
        run(partial(Optimizer, cbs=[average_square_grad, rms_prop_step_post], lr=0.01, square_mom=0.99, eps=1e-8)),
        run(partial(torch.optim.RMSprop, lr=0.01, alpha=0.99, eps=1e-8)), rtol=1e-5, atol=1e-6)


def test_stepper_optimizer_is_a_torch_optimizer_with_state_and_hypers_in_groups():
    model = toy_model()
    opt = Optimizer(model.parameters(), [average_grad_post, momentum_step_post], lr=0.1, mom=0.9)
    train(model, opt, 2)
    p = next(model.parameters())
    assert isinstance(opt, torch.optim.Optimizer) and set(opt.state[p]) == {'grad_avg'}
    assert opt.param_groups[0]['mom'] == 0.9 and get_mom(opt.param_groups[0]) == 0.9


@pytest.mark.parametrize('name', CASES)
def test_steppers_give_the_same_numbers_as_the_class(name):
    cls_f, steppers_f = CASES[name]
    torch.testing.assert_close(run(cls_f, 6), run(steppers_f, 6), rtol=1e-6, atol=1e-7)


# --- foreach path == per-parameter path ------------------------------------------------------------------------
@pytest.mark.parametrize('name', CASES)
def test_foreach_matches_per_param(name):
    """Two groups, mixed dtypes (so the foreach path splits by dtype), a param that skips steps (its own `step`)."""
    res = []
    for foreach in (None, False):
        torch.manual_seed(0)
        ts = torch.randn(4, 3), torch.randn(5, dtype=torch.float64), torch.randn(2), torch.randn(3)
        ps = [torch.nn.Parameter(t.clone()) for t in ts]
        opt = CASES[name][0]([{'params': ps[:3]}, {'params': ps[3:], 'lr': 0.01}], foreach=foreach)
        for i in range(4):
            for p in ps: p.grad = torch.randn_like(p)
            if i % 2: ps[2].grad = None
            opt.step()
        res.append([p.detach() for p in ps])
    for x, y in zip(*res): torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('name', CASES)
def test_foreach_and_hook_paths_are_chosen(name, monkeypatch):
    calls = []
    cls = CASES[name][0].func
    monkeypatch.setattr(cls, '_foreach_update', lambda self, ps: calls.append('foreach'))
    p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.ones(2)
    CASES[name][0]([p]).step()
    assert calls == ['foreach']
    class Sub(cls):
        def opt_step(self, p): calls.append('hook')
    Sub([p], **CASES[name][0].keywords).step()
    assert calls == ['foreach', 'hook']
    with pytest.raises(ValueError, match='foreach'): Sub([p], foreach=True, **CASES[name][0].keywords)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('name', ALL_OPT_FUNCS)
def test_cuda_matches_cpu(name):
    """On CUDA, both paths (the foreach ops run fused kernels there) agree with the CPU run."""
    cpu = run(ALL_OPT_FUNCS[name], 6)
    for kw in ({}, {'foreach': False}) if 'steppers' not in name else ({},):
        model = toy_model().cuda()
        opt = ALL_OPT_FUNCS[name](model.parameters(), **kw)
        got = train(model, opt, 6)
        torch.testing.assert_close(got, cpu, rtol=1e-5, atol=1e-6)
        assert all(t.device.type == 'cuda' for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


# --- the torch.optim contract ------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ALL_OPT_FUNCS)
def test_state_dict_resumes_exactly(name):
    opt_func = ALL_OPT_FUNCS[name]
    expected = run(opt_func, 6)
    model = toy_model()
    opt = opt_func(model.parameters())
    train(model, opt, 3)
    buf = io.BytesIO()
    torch.save({'model': model.state_dict(), 'opt': opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = toy_model(seed=123)
    model2.load_state_dict(ckpt['model'])
    opt2 = opt_func(model2.parameters(), lr=99.)      # the checkpoint's lr wins
    opt2.load_state_dict(ckpt['opt'])
    assert opt2.param_groups[0]['lr'] == HP['lr']
    if isinstance(opt2, SGD): assert opt2.i == 3 and opt2.lr == HP['lr']
    assert torch.equal(train(model2, opt2, 3), expected)


@pytest.mark.parametrize('cls', CLASSES, ids=lambda c: c.__name__)
def test_state_lives_in_self_state_with_step(cls):
    model = toy_model()
    opt = cls(model.parameters(), lr=0.01)
    train(model, opt, 2)
    for p in model.parameters(): assert opt.state[p]['step'] == 2
    assert not hasattr(next(model.parameters()), 'grad_avg')


def test_lamb_state():
    p = torch.nn.Parameter(torch.tensor([3., 4.]))
    opt = Lamb([p], lr=0.1)
    p.grad = torch.tensor([1., -1.])
    opt.step()
    st = opt.state[p]
    assert set(st) == {'step', 'exp_avg', 'exp_avg_sq', 'weight_norm', 'adam_norm', 'trust_ratio'}
    assert st['weight_norm'].item() == pytest.approx(5.)      # the norm before the update
    assert st['trust_ratio'].item() == pytest.approx(5. / st['adam_norm'].item())
    z = torch.nn.Parameter(torch.zeros(2))                    # ||p|| = 0: trust ratio 1
    opt = Lamb([z], lr=0.1)
    z.grad = torch.tensor([1., -1.])
    opt.step()
    assert opt.state[z]['trust_ratio'].item() == 1.
    torch.testing.assert_close(z.detach(), torch.tensor([-0.1, 0.1]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('name', ALL_OPT_FUNCS)
def test_param_without_grad_is_untouched(name):
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = ALL_OPT_FUNCS[name]([a, b])
    for _ in range(2):
        a.grad = torch.full((3,), 0.5)
        opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and b not in opt.state
    assert not torch.equal(a.detach(), torch.ones(3))


@pytest.mark.parametrize('name', ALL_OPT_FUNCS)
def test_per_group_lr_and_wd(name):
    """Two groups with their own lr (and wd, by its course name) == two optimizers, one per group."""
    opt_func = ALL_OPT_FUNCS[name]
    m1 = toy_model()
    opt = opt_func([{'params': m1[0].parameters(), 'lr': 0.2},
                    {'params': m1[2].parameters(), 'lr': 0.01, 'wd': 0.3}])
    m2 = toy_model()
    o1, o2 = opt_func(m2[0].parameters(), lr=0.2), opt_func(m2[2].parameters(), lr=0.01, wd=0.3)
    class Both:
        def step(self): o1.step(); o2.step()
        def zero_grad(self): o1.zero_grad(); o2.zero_grad()
    assert torch.equal(train(m1, opt, 4), train(m2, Both(), 4))
    assert not torch.equal(flat(m1), flat(toy_model()))


def test_hypers_are_read_from_the_group_being_stepped():
    seen = []
    class Spy(SGD):
        def opt_step(self, p): seen.append((self.lr, self.wd)); super().opt_step(p)
    a, b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    opt = Spy([{'params': [a]}, {'params': [b], 'lr': 0.5, 'weight_decay': 0.2}], lr=0.1)
    a.grad, b.grad = torch.ones(1), torch.ones(1)
    opt.step()
    opt.param_groups[0]['lr'] = 0.3              # what a scheduler does: the next step uses it
    opt.step()
    assert seen == [(0.1, 0.), (0.5, 0.2), (0.3, 0.), (0.5, 0.2)]
    assert opt.lr == 0.3                          # outside step: the first group


@pytest.mark.parametrize('cls, torch_cls', [(Momentum, partial(torch.optim.SGD, momentum=0.9)),
                                            (Nesterov, partial(torch.optim.SGD, momentum=0.9, nesterov=True)),
                                            (Adam, torch.optim.AdamW), (Lamb, torch.optim.AdamW)],
                         ids=['Momentum', 'Nesterov', 'Adam', 'Lamb'])
def test_torch_onecycle_cycles_our_momentum(cls, torch_cls):
    seqs = []
    for make in (cls, torch_cls):
        p = torch.nn.Parameter(torch.ones(2))
        opt = make([p], lr=0.1)
        sched = OneCycleLR(opt, max_lr=0.1, total_steps=20)
        seq = []
        for _ in range(19):
            p.grad = torch.ones(2)
            opt.step(); sched.step()
            seq.append((opt.param_groups[0]['lr'], get_mom(opt.param_groups[0])))
        seqs.append(seq)
    assert seqs[0] == seqs[1]
    assert min(m for _, m in seqs[0]) < 0.86 and max(m for _, m in seqs[0]) > 0.94


def test_recorder_style_getters_work_on_adam_groups():
    opt = Adam([torch.nn.Parameter(torch.ones(1))], lr=0.1, beta1=0.85)
    pg = opt.param_groups[0]
    assert pg['lr'] == 0.1 and pg['betas'][0] == 0.85 and pg['betas'][1] == 0.99 and pg['eps'] == 1e-5
    assert (opt.lr, opt.beta1, opt.beta2, opt.eps) == (0.1, 0.85, 0.99, 1e-5)
    opt.beta2 = 0.9
    assert pg['betas'] == (0.85, 0.9) and opt.defaults['betas'] == (0.85, 0.9)


def test_closure_and_zero_grad():
    model = toy_model()
    opt = Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 3), torch.randn(4, 2)
    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss
    before = flat(model)
    assert isinstance(opt.step(closure), torch.Tensor)
    assert not torch.equal(before, flat(model))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


# --- "Accelerated SGD"'s classes, verbatim bodies, as subclasses of our SGD ------------------------------------
class CourseMomentum(SGD):
    def __init__(self, params, lr, wd=0., mom=0.9):
        super().__init__(params, lr=lr, wd=wd)
        self.mom=mom

    def opt_step(self, p):
        if not hasattr(p, 'grad_avg'): p.grad_avg = torch.zeros_like(p.grad)
        p.grad_avg = p.grad_avg*self.mom + p.grad*(1-self.mom)
        p -= self.lr * p.grad_avg


class CourseRMSProp(SGD):
    def __init__(self, params, lr, wd=0., sqr_mom=0.99, eps=1e-5):
        super().__init__(params, lr=lr, wd=wd)
        self.sqr_mom,self.eps = sqr_mom,eps

    def opt_step(self, p):
        if not hasattr(p, 'sqr_avg'): p.sqr_avg = p.grad**2
        p.sqr_avg = p.sqr_avg*self.sqr_mom + p.grad**2*(1-self.sqr_mom)
        p -= self.lr * p.grad/(p.sqr_avg.sqrt() + self.eps)


class CourseAdam(SGD):
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


@pytest.mark.parametrize('course_cls, ours, kw', [(CourseMomentum, Momentum, dict(lr=0.1, wd=0.1, mom=0.8)),
                                                (CourseRMSProp, RMSProp, dict(lr=0.01, wd=0.1, sqr_mom=0.9)),
                                                (CourseAdam, Adam, dict(lr=0.01, wd=0.1, beta1=0.8, beta2=0.9))],
                         ids=['Momentum', 'RMSProp', 'Adam'])
def test_course_subclasses_match_ours(course_cls, ours, kw):
    model = toy_model()
    opt = course_cls(model.parameters(), **kw)
    got = train(model, opt, 6)
    torch.testing.assert_close(got, run(partial(ours, **kw), 6), rtol=1e-5, atol=1e-6)
    assert opt.i == 6 and not torch.equal(got, flat(toy_model()))


def test_course_subclass_sees_scheduler_writes():
    p = torch.nn.Parameter(torch.ones(2))
    opt = CourseMomentum([p], lr=0.1, mom=0.9)
    assert opt.defaults['momentum'] == 0.9         # `self.mom = mom` went into the groups
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=10)
    assert opt.mom == 0.95 and opt.lr == pytest.approx(0.1 / 25)
    p.grad = torch.ones(2)
    opt.step(); sched.step()
    assert opt.mom < 0.95


# --- bad arguments -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('cls, kw, name', [
    (SGD, dict(lr=-0.1), 'lr'), (SGD, dict(lr=0.1, wd=-1.), 'wd'), (Momentum, dict(lr=0.1, mom=1.), 'mom'),
    (Nesterov, dict(lr=0.1, mom=-0.5), 'mom'), (RMSProp, dict(lr=0.1, sqr_mom=1.5), 'sqr_mom'),
    (RMSProp, dict(lr=0.1, eps=-1e-8), 'eps'), (Adam, dict(lr=0.1, beta1=1.), 'beta1'),
    (Adam, dict(lr=0.1, beta2=-0.1), 'beta2'), (Adam, dict(lr=0.1, eps=-1.), 'eps'),
    (Adagrad, dict(lr=-1.), 'lr'), (Lamb, dict(lr=0.1, beta2=1.), 'beta2'), (Lamb, dict(lr=0.1, eps=-1e-6), 'eps'),
])
def test_bad_arguments_raise(cls, kw, name):
    with pytest.raises(ValueError, match=name):
        cls([torch.nn.Parameter(torch.ones(1))], **kw)


def test_bad_group_and_setter_values_raise_and_eps0_is_allowed():
    p = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match='lr'): SGD([{'params': [p], 'lr': -1.}], lr=0.1)
    with pytest.raises(ValueError, match='mom'): Momentum([p], lr=0.1).mom = 1.2
    with pytest.raises(ValueError, match='lr'): Optimizer([p], [sgd_step], lr=-1.)
    for cls in (RMSProp, Adam, Adagrad, Lamb): cls([p], lr=0.1, eps=0.)
    with pytest.raises(AttributeError, match='momentum'): SGD([p], lr=0.1).mom


def test_star_import_surface():
    ns = {}
    exec('from miniai.sgd import *', ns)
    assert all(n in ns for n in sgd_mod.__all__)
    assert not [n for n in sgd_mod.__all__ if n.startswith('_')]
    parts = [sgd_mod.optimizers, sgd_mod.steppers, sgd_mod.schedules, sgd_mod.callbacks]
    assert sorted(sgd_mod.__all__) == sorted(n for m in parts for n in m.__all__)     # the parts, all re-exported
    for n in ['SGD', 'Momentum', 'RMSProp', 'Adam', 'Nesterov', 'Adagrad', 'Lamb', 'Optimizer', 'BatchSchedCB',
              'EpochSchedCB', 'RecorderCB', 'fit_one_cycle', 'CosineAnnealing', 'OneCycle', 'sched_lrs']:
        assert n in ns



@pytest.mark.parametrize('bad', [float('nan'), float('inf')], ids=['nan', 'inf'])
@pytest.mark.parametrize('name, hyper', [(n, h) for n, f in ALL_OPT_FUNCS.items() for h in ('lr', 'wd', 'eps')
                                         if h in f.keywords])
def test_non_finite_hypers_are_refused(name, hyper, bad):
    """`lr=nan` used to be accepted and turn every weight into NaN at the first step."""
    with pytest.raises(ValueError, match=f'{hyper}.*finite'):
        ALL_OPT_FUNCS[name]([torch.nn.Parameter(torch.ones(1))], **{hyper: bad})


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -1.])
def test_learner_refuses_a_non_finite_lr(bad):
    """Torch's AdamW accepts lr=inf, and `fit(lr=nan)` reached the optimizer unchecked."""
    from miniai.learner import Learner
    model = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match='lr must be a finite number'): Learner(model, lr=bad)
    learn = Learner(model, lr=0.1, opt_func=torch.optim.AdamW)
    with pytest.raises(ValueError, match='lr must be a finite number'): learn.make_opt(bad)
