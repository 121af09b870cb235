"""The course's optimizers as `torch.optim.Optimizer`s: `SGD`, `Momentum`, `RMSProp`, `Adam`, `Nesterov`,
`Adagrad`, `Lamb`. Explained in nbs/05_sgd.ipynb.

Each keeps the course's hooks: `step` calls `reg_step(p)` (decoupled weight decay) then `opt_step(p)` for every
parameter with a grad, and `opt_step` reads `self.lr`, `self.wd`, `self.mom`, ... from the param group being
stepped, so a scheduler's write is what the next step uses. Subclass and override `opt_step` as the course does.

Param groups hold torch's keys (`lr`, `weight_decay`, `momentum` or `betas`, `alpha` for RMSProp's `sqr_mom`,
`eps`), so torch schedulers (`OneCycleLR(cycle_momentum=True)`) and `RecorderCB(mom=lambda cb: cb.pg['betas'][0])`
work as on torch's optimizers. Group dicts may also use the course names (`wd`, `mom`, `sqr_mom`, `beta1`, `beta2`).
Built-in state lives in `self.state[p]` with its own `step` (completed steps of that parameter), so
`state_dict()`/`load_state_dict()` resume exactly. The built-ins step each group with `torch._foreach_*` ops unless
`foreach=False` or a subclass overrides `reg_step`/`opt_step`; both paths run the same ops in the same order.

`eps` must be >= 0, as in torch: 0 is allowed (course Adam with eps=0 is torch Adam with eps=0), negative raises.
"""
from __future__ import annotations

import math

import torch

__all__ = ['SGD', 'Momentum', 'RMSProp', 'Adam', 'Nesterov', 'Adagrad', 'Lamb']

# course name -> param-group key (torch's name where torch has one)
_COURSE_KEYS = {'wd': 'weight_decay', 'mom': 'momentum', 'sqr_mom': 'alpha'}


def _torch_keys(g: dict, betas=(0.9, 0.999)) -> dict:
    """A copy of `g` with the course's hyper names (`wd`, `mom`, `sqr_mom`, `beta1`, `beta2`) renamed to torch's."""
    g = {_COURSE_KEYS.get(k, k): v for k, v in g.items()}
    if 'beta1' in g or 'beta2' in g: g['betas'] = (g.pop('beta1', betas[0]), g.pop('beta2', betas[1]))
    return g


def _check_group(g: dict, cls: str):
    """Raise a ValueError naming the argument of `g` (a param group) that is out of range."""
    def bad(name, v, rule): raise ValueError(f"{cls}: invalid {name}: {v!r} (must be {rule})")
    # written as `not ok` so that NaN, which fails every comparison, is refused too
    if not 0 <= g['lr'] < math.inf: bad('learning rate lr', g['lr'], 'a finite number >= 0')
    if not 0 <= g['weight_decay'] < math.inf:
        bad('weight decay wd (weight_decay)', g['weight_decay'], 'a finite number >= 0')
    if 'momentum' in g and not 0 <= g['momentum'] < 1: bad('momentum mom', g['momentum'], 'in [0, 1)')
    if 'alpha' in g and not 0 <= g['alpha'] < 1: bad('sqr_mom (alpha)', g['alpha'], 'in [0, 1)')
    if 'betas' in g:
        for i, b in enumerate(g['betas']):
            if not 0 <= b < 1: bad(f'beta{i+1} (betas[{i}])', b, 'in [0, 1)')
    if 'eps' in g and not 0 <= g['eps'] < math.inf: bad('epsilon eps', g['eps'], 'a finite number >= 0')


def _hyper(key: str, idx: int | None = None, doc: str = ''):
    """A property reading `key` (item `idx` of it) in the group being stepped; its setter writes every group."""
    def fget(self):
        try: v = self._group[key]
        except KeyError: raise AttributeError(f"{type(self).__name__} has no '{key}' in its param groups") from None
        return v if idx is None else v[idx]
    def fset(self, v):
        for g in [self.defaults, *self.param_groups]:
            if idx is None: g[key] = v
            else:
                old = list(g.get(key, (0.9, 0.999)))
                old[idx] = v
                g[key] = tuple(old)
        for g in self.param_groups: _check_group(g, type(self).__name__)
    return property(fget, fset, doc=doc)


def _by_device_dtype(params: list) -> list[list]:
    """Split `params` into lists sharing device and dtype, as `_foreach_*` ops need."""
    out = {}
    for p in params: out.setdefault((p.device, p.dtype), []).append(p)
    return list(out.values())


class SGD(torch.optim.Optimizer):
    """`p <- p*(1 - lr*wd)` (decoupled, unlike torch SGD's L2 penalty), then `p <- p - lr*grad`.

    `lr`: learning rate; `wd`: decoupled weight decay; `foreach`: None picks the `_foreach_` path when the hooks
    are the built-in ones, False forces the per-parameter `reg_step`/`opt_step` path.
    Stepper form: `partial(Optimizer, cbs=[weight_decay, sgd_step], wd=wd)`.
    """
    lr = _hyper('lr', doc="learning rate of the group being stepped")
    wd = _hyper('weight_decay', doc="decoupled weight decay of the group being stepped")
    mom = _hyper('momentum')
    sqr_mom = _hyper('alpha')
    beta1 = _hyper('betas', 0)
    beta2 = _hyper('betas', 1)
    eps = _hyper('eps')

    def __init__(self, params, lr: float, wd: float = 0., foreach: bool | None = None, **hypers):
        super().__init__(params, _torch_keys(dict(lr=lr, weight_decay=wd, foreach=foreach, **hypers)))
        if foreach and not self._builtin_hooks():
            raise ValueError(f"foreach=True: {type(self).__name__} overrides reg_step/opt_step, which only the "
                             "per-parameter path runs; use foreach=None or False")
        self._group, self.i = self.param_groups[0], 0   # `i`: completed step() calls (the course's Adam reads it)

    def add_param_group(self, param_group: dict):
        """Add `param_group` (torch keys, or the course's `wd`, `mom`, `sqr_mom`, `beta1`, `beta2`) and check it."""
        super().add_param_group(_torch_keys(param_group, self.defaults.get('betas', (0.9, 0.999))))
        _check_group(self.param_groups[-1], type(self).__name__)

    def __getstate__(self): return {**super().__getstate__(), 'i': self.i}
    def __setstate__(self, state):
        super().__setstate__(state)          # load_state_dict replaces the group dicts: `_group` must follow
        self._group = self.param_groups[0]
        self.__dict__.setdefault('i', 0)

    def load_state_dict(self, state_dict):
        """Load `state_dict` (from `state_dict()`); `i` resumes from the largest per-parameter `step`."""
        super().load_state_dict(state_dict)
        self.i = max((s.get('step', 0) for s in self.state.values()), default=0)

    def _builtin_hooks(self) -> bool:
        cls = type(self)
        owner = next(c for c in cls.__mro__ if '_foreach_update' in c.__dict__)
        return cls.opt_step is owner.opt_step and cls.reg_step is owner.reg_step

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a grad; `closure` re-evaluates the loss (torch's contract)."""
        loss = None
        if closure is not None:
            with torch.enable_grad(): loss = closure()
        fast = self._builtin_hooks()
        for self._group in self.param_groups:
            ps = [p for p in self._group['params'] if p.grad is not None]
            for p in ps:
                st = self.state[p]
                if not st: self._init_state(p, st)
                st['step'] += 1
            if fast and self._group.get('foreach') is not False:
                for sub in _by_device_dtype(ps): self._foreach_reg(sub); self._foreach_update(sub)
            else:
                for p in ps: self.reg_step(p); self.opt_step(p)
        self._group = self.param_groups[0]
        self.i += 1
        return loss

    def _init_state(self, p, state): state['step'] = 0
    def reg_step(self, p):
        if self.wd: p.mul_(1 - self.lr*self.wd)
    def opt_step(self, p): p.add_(p.grad, alpha=-self.lr)

    def _foreach_reg(self, ps):
        if self.wd: torch._foreach_mul_(ps, 1 - self.lr*self.wd)
    def _foreach_update(self, ps): torch._foreach_add_(ps, [p.grad for p in ps], alpha=-self.lr)

    def _states(self, ps, *keys):
        """The lists of `self.state[p][key]` for `keys`, the per-tensor operands of the `_foreach_` ops."""
        sts = [self.state[p] for p in ps]
        return [[s[k] for s in sts] for k in keys]


class Momentum(SGD):
    """`avg <- mom*avg + (1-mom)*grad` from zeros (course: dampened), then `p <- p - lr*avg`, after decoupled wd.

    Torch's SGD(momentum=mom, dampening=mom) starts its buffer at the first grad instead of zeros, so it matches
    only when that buffer is preset to zeros. Stepper form: `[weight_decay, average_grad, momentum_step]`.
    """
    def __init__(self, params, lr: float, wd: float = 0., mom: float = 0.9, foreach: bool | None = None):
        super().__init__(params, lr=lr, wd=wd, foreach=foreach, momentum=mom)

    def _init_state(self, p, state):
        state['step'], state['momentum_buffer'] = 0, torch.zeros_like(p, memory_format=torch.preserve_format)
    def opt_step(self, p):
        avg = self.state[p]['momentum_buffer']
        avg.lerp_(p.grad, 1 - self.mom)          # == mom*avg + (1-mom)*grad, one pass instead of two
        p.add_(avg, alpha=-self.lr)
    def _foreach_update(self, ps):
        avgs, = self._states(ps, 'momentum_buffer')
        torch._foreach_lerp_(avgs, [p.grad for p in ps], 1 - self.mom)
        torch._foreach_add_(ps, avgs, alpha=-self.lr)


class Nesterov(SGD):
    """`buf <- mom*buf + grad` (buf starts at 0), `p <- p - lr*(grad + mom*buf)`, after decoupled wd.

    The same trajectory as torch `SGD(momentum=mom, nesterov=True)` when wd=0. Stepper form:
    `[weight_decay, partial(average_grad, dampening=False), nesterov_step]`.
    """
    def __init__(self, params, lr: float, wd: float = 0., mom: float = 0.9, foreach: bool | None = None):
        super().__init__(params, lr=lr, wd=wd, foreach=foreach, momentum=mom)

    _init_state = Momentum._init_state
    def opt_step(self, p):
        buf = self.state[p]['momentum_buffer']
        buf.mul_(self.mom).add_(p.grad)          # 0*mom + grad == grad exactly: torch's first-step buf
        # p - lr*(grad + mom*buf) in two in-place passes: no temporary, and p.grad is left as it was
        p.add_(p.grad, alpha=-self.lr).add_(buf, alpha=-self.lr * self.mom)
    def _foreach_update(self, ps):
        bufs, = self._states(ps, 'momentum_buffer')
        grads = [p.grad for p in ps]
        torch._foreach_mul_(bufs, self.mom)
        torch._foreach_add_(bufs, grads)
        torch._foreach_add_(ps, grads, alpha=-self.lr)
        torch._foreach_add_(ps, bufs, alpha=-self.lr * self.mom)


class RMSProp(SGD):
    """`sqr <- sqr_mom*sqr + (1-sqr_mom)*grad**2` starting from `sqr = grad**2` (course), then
    `p <- p - lr*grad/(sqrt(sqr) + eps)`, after decoupled wd.

    Torch's RMSprop(alpha=sqr_mom) is the same with `square_avg` starting at zeros. The group key of `sqr_mom` is
    torch's `alpha`. Stepper form: `[weight_decay, rms_sqr_grad, rms_prop_step]`.
    """
    def __init__(self, params, lr: float, wd: float = 0., sqr_mom: float = 0.99, eps: float = 1e-5,
                 foreach: bool | None = None):
        super().__init__(params, lr=lr, wd=wd, foreach=foreach, alpha=sqr_mom, eps=eps)

    def _init_state(self, p, state): state['step'], state['square_avg'] = 0, p.grad * p.grad
    def opt_step(self, p):
        sqr = self.state[p]['square_avg']
        sqr.mul_(self.sqr_mom).addcmul_(p.grad, p.grad, value=1 - self.sqr_mom)
        p.addcdiv_(p.grad, sqr.sqrt().add_(self.eps), value=-self.lr)
    def _foreach_update(self, ps):
        sqrs, = self._states(ps, 'square_avg')
        grads = [p.grad for p in ps]
        torch._foreach_mul_(sqrs, self.sqr_mom)
        torch._foreach_addcmul_(sqrs, grads, grads, value=1 - self.sqr_mom)
        denom = torch._foreach_sqrt(sqrs)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(ps, grads, denom, value=-self.lr)


class Adam(SGD):
    """`avg`, `sqr`: exponential averages of grad and grad**2 (from zeros), unbiased by `1 - beta**step`;
    `p <- p - lr * avg_hat / sqrt(sqr_hat + eps)`, after decoupled wd (so AdamW-like).

    Course Adam puts `eps` inside the square root (torch: `sqrt(sqr_hat) + eps`); with eps=0 both agree.
    Group keys: `betas=(beta1, beta2)`, `eps`. Stepper form:
    `[weight_decay, step_stat, average_grad, average_sqr_grad, adam_step]` with `mom=beta1, sqr_mom=beta2`.
    """
    def __init__(self, params, lr: float, wd: float = 0., beta1: float = 0.9, beta2: float = 0.99,
                 eps: float = 1e-5, foreach: bool | None = None):
        super().__init__(params, lr=lr, wd=wd, foreach=foreach, betas=(beta1, beta2), eps=eps)

    def _init_state(self, p, state):
        state['step'] = 0
        state['exp_avg'] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state['exp_avg_sq'] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _bias(self, step): return 1 - self.beta1**step, 1 - self.beta2**step

    def opt_step(self, p):
        st = self.state[p]
        avg, sqr, (bc1, bc2) = st['exp_avg'], st['exp_avg_sq'], self._bias(st['step'])
        avg.lerp_(p.grad, 1 - self.beta1)
        sqr.mul_(self.beta2).addcmul_(p.grad, p.grad, value=1 - self.beta2)
        # avg/bc1 / sqrt(sqr/bc2 + eps) == (sqrt(bc2)/bc1) * avg / sqrt(sqr + eps*bc2): one pass fewer
        p.addcdiv_(avg, sqr.add(self.eps*bc2).sqrt_(), value=-self.lr * bc2**0.5 / bc1)

    def _foreach_moments(self, ps):
        """Update the averages of grad and grad² of `ps`; return them with each param's bias corrections."""
        avgs, sqrs, steps = self._states(ps, 'exp_avg', 'exp_avg_sq', 'step')
        grads = [p.grad for p in ps]
        torch._foreach_lerp_(avgs, grads, 1 - self.beta1)
        torch._foreach_mul_(sqrs, self.beta2)
        torch._foreach_addcmul_(sqrs, grads, grads, value=1 - self.beta2)
        return avgs, sqrs, [self._bias(s) for s in steps]

    def _foreach_update(self, ps):
        avgs, sqrs, bcs = self._foreach_moments(ps)
        denom = torch._foreach_add(sqrs, [self.eps*bc2 for _, bc2 in bcs])
        torch._foreach_sqrt_(denom)
        torch._foreach_addcdiv_(ps, avgs, denom, [-self.lr * bc2**0.5 / bc1 for bc1, bc2 in bcs])


class Adagrad(SGD):
    """`sum <- sum + grad**2` (from zeros), `p <- p - lr*grad/(sqrt(sum) + eps)`, after decoupled wd.

    Equals torch `Adagrad` with its defaults (lr_decay=0, initial_accumulator_value=0) when wd=0.
    Stepper form: `[weight_decay, sum_sqr_grad, adagrad_step]`.
    """
    def __init__(self, params, lr: float, wd: float = 0., eps: float = 1e-10, foreach: bool | None = None):
        super().__init__(params, lr=lr, wd=wd, foreach=foreach, eps=eps)

    def _init_state(self, p, state): state['step'], state['sum'] = 0, torch.zeros_like(p)
    def opt_step(self, p):
        s = self.state[p]['sum']
        s.addcmul_(p.grad, p.grad)
        p.addcdiv_(p.grad, s.sqrt().add_(self.eps), value=-self.lr)
    def _foreach_update(self, ps):
        sums, = self._states(ps, 'sum')
        grads = [p.grad for p in ps]
        torch._foreach_addcmul_(sums, grads, grads)
        denom = torch._foreach_sqrt(sums)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(ps, grads, denom, value=-self.lr)


def _trust(w_norm, r_norm):
    """`||p|| / ||r||`, or 1 where either norm is 0 (LAMB's convention)."""
    return torch.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm, torch.ones_like(w_norm))


class Lamb(SGD):
    """LAMB (You et al. 2019): Adam's unbiased `m_hat`, `v_hat` (from zeros), `r = m_hat/(sqrt(v_hat) + eps) + wd*p`,
    `p <- p - lr * trust * r` with `trust = ||p||/||r||` (1 where either norm is 0).

    `wd` is inside `r`, so `reg_step` does nothing. Per-param state: `step, exp_avg, exp_avg_sq, weight_norm,
    adam_norm` (`||r||`), `trust_ratio`. Stepper form: `[step_stat, average_grad, average_sqr_grad, lamb_step]`
    with `mom=beta1, sqr_mom=beta2`.
    """
    def __init__(self, params, lr: float, wd: float = 0., beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-6, foreach: bool | None = None):
        super().__init__(params, lr=lr, wd=wd, foreach=foreach, betas=(beta1, beta2), eps=eps)

    _init_state, _bias, _foreach_moments = Adam._init_state, Adam._bias, Adam._foreach_moments
    def reg_step(self, p): pass
    def _foreach_reg(self, ps): pass

    def opt_step(self, p):
        st = self.state[p]
        avg, sqr, (bc1, bc2) = st['exp_avg'], st['exp_avg_sq'], self._bias(st['step'])
        avg.lerp_(p.grad, 1 - self.beta1)
        sqr.mul_(self.beta2).addcmul_(p.grad, p.grad, value=1 - self.beta2)
        # m_hat/(sqrt(v_hat) + eps) == (sqrt(bc2)/bc1) * m/(sqrt(v) + eps*sqrt(bc2)): one pass fewer
        r = p.mul(self.wd).addcdiv_(avg, sqr.sqrt().add_(self.eps * bc2**0.5), value=bc2**0.5 / bc1)
        st['weight_norm'], st['adam_norm'] = torch.linalg.vector_norm(p), torch.linalg.vector_norm(r)
        st['trust_ratio'] = _trust(st['weight_norm'], st['adam_norm'])
        p.addcmul_(r, st['trust_ratio'], value=-self.lr)

    def _foreach_update(self, ps):
        avgs, sqrs, bcs = self._foreach_moments(ps)
        denom = torch._foreach_sqrt(sqrs)
        torch._foreach_add_(denom, [self.eps * bc2**0.5 for _, bc2 in bcs])
        rs = torch._foreach_mul(ps, self.wd)
        torch._foreach_addcdiv_(rs, avgs, denom, [bc2**0.5 / bc1 for bc1, bc2 in bcs])
        w_norms, r_norms = torch._foreach_norm(ps), torch._foreach_norm(rs)
        trusts = [_trust(w, r) for w, r in zip(w_norms, r_norms)]     # 0-d tensors: no host sync on GPU
        for p, w, r, t in zip(ps, w_norms, r_norms, trusts):
            self.state[p].update(weight_norm=w, adam_norm=r, trust_ratio=t)
        torch._foreach_addcmul_(ps, rs, trusts, value=-self.lr)
