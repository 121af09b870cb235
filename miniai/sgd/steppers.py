"""fastai's stepper-callback `Optimizer` and the steppers that build every optimizer of `optimizers.py` from parts.

Explained in nbs/05_sgd.ipynb. A stepper is called as `cb(p, **state, **hypers)` for each parameter with a
grad, in the order given, and may return a dict of updates to that parameter's state (the `sgd_cb`,
`average_grad`, ... of the post Gradient descent with Adam run unchanged). Hypers use the course's names:
`lr, wd, mom, sqr_mom, eps`.

| class | stepper form (`partial(Optimizer, cbs=..., **hypers)`) |
| --- | --- |
| `SGD` | `[weight_decay, sgd_step]` |
| `Momentum` | `[weight_decay, average_grad, momentum_step]`, `mom` |
| `Nesterov` | `[weight_decay, partial(average_grad, dampening=False), nesterov_step]`, `mom` |
| `RMSProp` | `[weight_decay, rms_sqr_grad, rms_prop_step]`, `sqr_mom, eps` |
| `Adam` | `[weight_decay, step_stat, average_grad, average_sqr_grad, adam_step]`, `mom=beta1, sqr_mom=beta2, eps` |
| `Adagrad` | `[weight_decay, sum_sqr_grad, adagrad_step]`, `eps` |
| `Lamb` | `[step_stat, average_grad, average_sqr_grad, lamb_step]`, `mom=beta1, sqr_mom=beta2, eps` (wd inside) |

Each gives the same numbers as its class (the steppers run the same ops in the same order).
"""
from __future__ import annotations

import math

import torch

from .optimizers import _trust

__all__ = ['Optimizer', 'weight_decay', 'l2_reg', 'sgd_step', 'step_stat', 'average_grad', 'average_sqr_grad',
           'rms_sqr_grad', 'sum_sqr_grad', 'momentum_step', 'nesterov_step', 'rms_prop_step', 'adam_step',
           'adagrad_step', 'lamb_step']


class Optimizer(torch.optim.Optimizer):
    """Runs the steppers `cbs` on each parameter with a grad; `defaults` are the hypers (`lr`, `mom`, `wd`, ...).

    A `torch.optim.Optimizer`: hypers live in `param_groups` (so schedulers can write `lr`), per-parameter state
    in `self.state[p]`, and `state_dict()`/`load_state_dict()`/`zero_grad()` are torch's.
    """
    def __init__(self, params, cbs, **defaults):
        if callable(cbs): cbs = [cbs]
        if not all(callable(cb) for cb in cbs): raise TypeError(f"cbs must be a list of callables, got {cbs!r}")
        for k in ('lr', 'wd', 'eps'):   # `not 0 <= v`: NaN fails every comparison
            if k in defaults and not 0 <= defaults[k] < math.inf:
                raise ValueError(f"Optimizer: invalid {k}: {defaults[k]!r} (must be a finite number >= 0)")
        for k in ('mom', 'sqr_mom'):
            if k in defaults and not math.isfinite(defaults[k]):
                raise ValueError(f"Optimizer: invalid {k}: {defaults[k]!r} (must be a finite number)")
        self.cbs = list(cbs)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """Run every stepper on every parameter that has a grad, merging the dicts they return into its state."""
        loss = None
        if closure is not None:
            with torch.enable_grad(): loss = closure()
        for g in self.param_groups:
            hypers = {k: v for k, v in g.items() if k != 'params'}
            for p in g['params']:
                if p.grad is None: continue
                state = self.state[p]
                for cb in self.cbs:
                    new = cb(p, **{**state, **hypers})
                    if new: state.update(new)
        return loss


def weight_decay(p, lr, wd, **kwargs):
    """Decoupled weight decay: `p <- p*(1 - lr*wd)`."""
    if wd: p.mul_(1 - lr*wd)

def l2_reg(p, wd, **kwargs):
    """L2 regularisation: `grad <- grad + wd*p` (torch's `weight_decay`; not `weight_decay` once momentum is on)."""
    if wd: p.grad.add_(p, alpha=wd)

def sgd_step(p, lr, **kwargs):
    """`p <- p - lr*grad`."""
    p.add_(p.grad, alpha=-lr)

def step_stat(p, step=0, **kwargs):
    """Count this parameter's steps in `state['step']` (1 during the first step)."""
    return {'step': step + 1}

def average_grad(p, mom, grad_avg=None, dampening=True, **kwargs):
    """`grad_avg <- mom*grad_avg + (1-mom)*grad` from zeros; `(1-mom)` becomes 1 with `dampening=False`."""
    if grad_avg is None: grad_avg = torch.zeros_like(p, memory_format=torch.preserve_format)
    if dampening: grad_avg.lerp_(p.grad, 1 - mom)
    else: grad_avg.mul_(mom).add_(p.grad)
    return {'grad_avg': grad_avg}

def average_sqr_grad(p, sqr_mom, sqr_avg=None, **kwargs):
    """`sqr_avg <- sqr_mom*sqr_avg + (1-sqr_mom)*grad**2` from zeros (Adam, Lamb)."""
    if sqr_avg is None: sqr_avg = torch.zeros_like(p, memory_format=torch.preserve_format)
    sqr_avg.mul_(sqr_mom).addcmul_(p.grad, p.grad, value=1 - sqr_mom)
    return {'sqr_avg': sqr_avg}

def rms_sqr_grad(p, sqr_mom, sqr_avg=None, **kwargs):
    """`average_sqr_grad` starting from `grad**2` instead of zeros, as course RMSProp does."""
    return average_sqr_grad(p, sqr_mom, p.grad * p.grad if sqr_avg is None else sqr_avg)

def sum_sqr_grad(p, sqr_sum=None, **kwargs):
    """`sqr_sum <- sqr_sum + grad**2` from zeros (Adagrad)."""
    if sqr_sum is None: sqr_sum = torch.zeros_like(p)
    sqr_sum.addcmul_(p.grad, p.grad)
    return {'sqr_sum': sqr_sum}

def momentum_step(p, lr, grad_avg, **kwargs):
    """`p <- p - lr*grad_avg`."""
    p.add_(grad_avg, alpha=-lr)

def nesterov_step(p, lr, mom, grad_avg, **kwargs):
    """`p <- p - lr*(grad + mom*grad_avg)` (with the undampened `grad_avg`)."""
    p.add_(p.grad, alpha=-lr).add_(grad_avg, alpha=-lr * mom)

def rms_prop_step(p, lr, sqr_avg, eps, grad_avg=None, **kwargs):
    """`p <- p - lr*g/(sqrt(sqr_avg) + eps)`, `g` being `grad_avg` when a momentum stepper made one, else the grad."""
    p.addcdiv_(p.grad if grad_avg is None else grad_avg, sqr_avg.sqrt().add_(eps), value=-lr)

def adam_step(p, lr, mom, sqr_mom, step, grad_avg, sqr_avg, eps, **kwargs):
    """Course Adam: `p <- p - lr * (grad_avg/(1-mom**step)) / sqrt(sqr_avg/(1-sqr_mom**step) + eps)`."""
    bc1, bc2 = 1 - mom**step, 1 - sqr_mom**step
    p.addcdiv_(grad_avg, sqr_avg.add(eps*bc2).sqrt_(), value=-lr * bc2**0.5 / bc1)   # the same, one pass fewer

def adagrad_step(p, lr, sqr_sum, eps, **kwargs):
    """`p <- p - lr*grad/(sqrt(sqr_sum) + eps)`."""
    p.addcdiv_(p.grad, sqr_sum.sqrt().add_(eps), value=-lr)

def lamb_step(p, lr, mom, sqr_mom, step, grad_avg, sqr_avg, eps, wd=0., **kwargs):
    """LAMB: `r = avg_hat/(sqrt(sqr_hat) + eps) + wd*p`, `p <- p - lr*trust*r`, `trust = ||p||/||r||` (or 1)."""
    bc1, bc2 = 1 - mom**step, 1 - sqr_mom**step
    r = p.mul(wd).addcdiv_(grad_avg, sqr_avg.sqrt().add_(eps * bc2**0.5), value=bc2**0.5 / bc1)
    w_norm, r_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(r)
    trust = _trust(w_norm, r_norm)
    p.addcmul_(r, trust, value=-lr)
    return {'weight_norm': w_norm, 'adam_norm': r_norm, 'trust_ratio': trust}
