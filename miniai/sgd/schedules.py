"""Schedules: pure functions `f(start, end, pct)`, `combine_scheds`, and the schedulers `CosineAnnealing` and
`OneCycle` written from scratch (same numbers as torch's `CosineAnnealingLR` and `OneCycleLR`).
Explained in nbs/05_sgd.ipynb.

The schedulers follow torch's protocol: `sched = CosineAnnealing(opt, T_max)` sets the first lr at once, each
`sched.step()` (after `opt.step()`) writes the next into every param group, and `get_last_lr()`, `state_dict()`,
`load_state_dict()` behave as torch's, so `BatchSchedCB(partial(CosineAnnealing, T_max=T))` works.
"""
from __future__ import annotations

import bisect
import itertools
import math
import numbers
from collections.abc import Callable, Sequence

__all__ = ['sched_lin', 'sched_cos', 'sched_no', 'sched_exp', 'combine_scheds', 'Scheduler', 'CosineAnnealing',
           'OneCycle', 'get_mom', 'set_mom', 'sched_lrs', 'plot_lrs']


def sched_lin(start: float, end: float, pct: float) -> float:
    """Linear from `start` (pct=0) to `end` (pct=1)."""
    return (end - start) * pct + start

def sched_cos(start: float, end: float, pct: float) -> float:
    """Half a cosine from `start` (pct=0) to `end` (pct=1); beyond 1 it turns back, like torch's."""
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)

def sched_no(start: float, end: float, pct: float) -> float:
    """Constant `start`."""
    return start

def sched_exp(start: float, end: float, pct: float) -> float:
    """Exponential from `start` to `end` (both > 0)."""
    return start * (end / start) ** pct


def combine_scheds(pcts: Sequence[float], scheds: Sequence[Callable[[float], float]]) -> Callable[[float], float]:
    """One schedule `f(pos)` over pos in [0, 1] running `scheds[i](pct)` for the `pcts[i]` fraction of the run."""
    if len(pcts) != len(scheds): raise ValueError(f"pcts and scheds differ in length: {len(pcts)} vs {len(scheds)}")
    if any(p < 0 for p in pcts) or not math.isclose(sum(pcts), 1):
        raise ValueError(f"pcts must be >= 0 and sum to 1, got {list(pcts)}")
    ends = list(itertools.accumulate(pcts))
    def _inner(pos: float) -> float:
        i = min(bisect.bisect_right(ends, pos), len(scheds) - 1)
        start = ends[i - 1] if i else 0.
        return scheds[i]((pos - start) / (ends[i] - start) if ends[i] > start else 1.)
    return _inner


# The momentum-like hyper of a param group: torch's `momentum`, `betas[0]`, or the stepper Optimizer's `mom`.
_MOM_KEYS = ('momentum', 'betas', 'mom')

def get_mom(group: dict):
    """The momentum-like hyper of `group` (`momentum`, `betas[0]` or `mom`), None if it has none."""
    for k in _MOM_KEYS:
        if k in group: return group[k][0] if k == 'betas' else group[k]
    return None

def set_mom(group: dict, v: float) -> bool:
    """Write `v` into `group`'s momentum-like hyper; False if it has none."""
    for k in _MOM_KEYS:
        if k in group:
            group[k] = (v, *group[k][1:]) if k == 'betas' else v
            return True
    return False


class Scheduler:
    """Base of our schedulers: `_values(t)` gives per group `(lr, mom or None)` at step `t`, written at once."""
    def __init__(self, opt):
        self.optimizer = opt
        self.last_epoch = 0                   # torch's name for the number of `step()` calls so far
        self._apply()

    opt = property(lambda self: self.optimizer, doc="the optimizer (the name galopy's Scheduler post uses)")

    def _apply(self):
        self._last_lr = []
        for g, (lr, mom) in zip(self.optimizer.param_groups, self._values(self.last_epoch)):
            g['lr'] = lr
            if mom is not None: set_mom(g, mom)
            self._last_lr.append(lr)

    def step(self):
        """Advance one step and write the next lr (and momentum) into the optimizer's param groups."""
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The lr of each param group, as last written."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """Everything but the optimizer, as torch's schedulers do."""
        return {k: v for k, v in self.__dict__.items() if k != 'optimizer'}

    def load_state_dict(self, state_dict: dict):
        """Restore `state_dict` and write its current lr (and momentum) back into the optimizer's groups."""
        self.__dict__.update(state_dict)
        self._apply()

    def __repr__(self): return f"{type(self).__name__}(last_epoch={self.last_epoch})"


def _per_group(name, v, opt) -> list:
    n = len(opt.param_groups)
    if isinstance(v, (list, tuple)):
        if len(v) != n: raise ValueError(f"{name} has {len(v)} values for {n} param groups")
        return list(v)
    return [v] * n


class CosineAnnealing(Scheduler):
    """`lr = eta_min + (base_lr - eta_min)*(1 + cos(pi*t/T_max))/2` at step t, `base_lr` the group's lr at start.

    The same numbers as torch's `CosineAnnealingLR(opt, T_max, eta_min)` (past T_max it turns back up as torch's).
    """
    def __init__(self, opt, T_max: int, eta_min: float = 0.):
        if T_max < 1: raise ValueError(f"T_max must be >= 1, got {T_max}")
        self.T_max, self.eta_min = T_max, eta_min
        self.base_lrs = [g['lr'] for g in opt.param_groups]
        super().__init__(opt)

    def _values(self, t):
        return [(sched_cos(lr, self.eta_min, t / self.T_max), None) for lr in self.base_lrs]


class OneCycle(Scheduler):
    """1cycle: lr from `max_lr/div_factor` up to `max_lr` over `pct_start` of `total_steps`, then down to
    `max_lr/div_factor/final_div_factor`; momentum the other way between `max_momentum` and `base_momentum`.

    The same numbers as torch's `OneCycleLR` for the same arguments (`anneal_strategy` 'cos' or 'linear',
    `three_phase`). Differences: `max_lr=None` takes each group's current lr; `cycle_momentum=None` (default)
    cycles the momentum-like hyper (`momentum`, `betas[0]`, or a stepper Optimizer's `mom`) where there is one,
    while True requires it as torch does. galopy's `OneCycle(opt, T_max, min_lr=0.)` is accepted: `T_max` is
    `total_steps`, and `min_lr` replaces both the starting and the final lr (the shape stays this class's; add
    `pct_start=0.5, anneal_strategy='linear'` for that post's triangle).
    """
    def __init__(self, opt, total_steps: int | None = None, max_lr=None, pct_start: float = 0.3,
                 anneal_strategy: str = 'cos', div_factor: float = 25., final_div_factor: float = 1e4,
                 three_phase: bool = False, cycle_momentum: bool | None = None, base_momentum=0.85,
                 max_momentum=0.95, *, T_max: int | None = None, min_lr: float | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None):
        total_steps = self._total(total_steps, T_max, epochs, steps_per_epoch)
        if not 0 <= pct_start <= 1: raise ValueError(f"pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ('cos', 'linear'):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        has_mom = all(get_mom(g) is not None for g in opt.param_groups)
        if cycle_momentum and not has_mom:
            raise ValueError("cycle_momentum=True: the optimizer's param groups have no 'momentum', 'betas' or 'mom'")
        self.total_steps, self.anneal_strategy = total_steps, anneal_strategy
        self.cycle_momentum = has_mom if cycle_momentum is None else cycle_momentum
        max_lrs = _per_group('max_lr', [g['lr'] for g in opt.param_groups] if max_lr is None else max_lr, opt)
        start = [lr / div_factor if min_lr is None else min_lr for lr in max_lrs]
        end = [lr / final_div_factor if min_lr is None else min_lr for lr in start]
        lo, hi = _per_group('base_momentum', base_momentum, opt), _per_group('max_momentum', max_momentum, opt)
        n = total_steps
        # (end_step, lr from, lr to, mom from, mom to) per group, the phase boundaries as torch's
        if three_phase: phases = [(pct_start*n - 1, 0, 1, 1, 0), (2*pct_start*n - 2, 1, 0, 0, 1), (n - 1, 0, 2, 1, 1)]
        else: phases = [(pct_start*n - 1, 0, 1, 1, 0), (n - 1, 1, 2, 0, 1)]
        self.phases = phases
        self.lrs = list(zip(start, max_lrs, end))
        self.moms = list(zip(lo, hi))
        super().__init__(opt)

    @staticmethod
    def _total(total_steps, T_max, epochs, steps_per_epoch):
        if total_steps is not None and T_max is not None:
            raise ValueError(f"give total_steps or T_max (galopy's name for it), not both: {total_steps}, {T_max}")
        n = T_max if total_steps is None else total_steps
        if n is None and epochs is not None and steps_per_epoch is not None: n = epochs * steps_per_epoch
        if n is None: raise ValueError("OneCycle needs total_steps (or T_max, or epochs and steps_per_epoch)")
        if not isinstance(n, numbers.Integral) or n < 2:
            raise ValueError(f"total_steps must be an integer >= 2, got {n!r}")
        return n

    def _values(self, t):
        if t > self.total_steps:
            raise ValueError(f"Tried to step {t} times; total_steps is {self.total_steps}")
        f = sched_cos if self.anneal_strategy == 'cos' else sched_lin
        start = 0.
        for i, (end, l0, l1, m0, m1) in enumerate(self.phases):
            if t <= end or i == len(self.phases) - 1: break
            start = end
        pct = (t - start) / (end - start) if end > start else 1.
        return [(f(lrs[l0], lrs[l1], pct), f(moms[m0], moms[m1], pct) if self.cycle_momentum else None)
                for lrs, moms in zip(self.lrs, self.moms)]


def sched_lrs(sched, steps: int) -> list[list[float]]:
    """The lrs `sched` gives: its first, then after each of `steps` optimizer and scheduler steps (no plot)."""
    opt = getattr(sched, 'optimizer', None) or sched.opt  # torch's and ours say `optimizer`; galopy's post's, `opt`
    lrs = [sched.get_last_lr()]
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr())
    return lrs


def plot_lrs(sched, opt=None, n_steps: int = 100, **kwargs):
    """Plot `n_steps` lrs of `sched` (a scheduler, or a scheduler class/partial called as `sched(opt, **kwargs)`,
    as in galopy's Scheduler post); returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    if opt is not None: sched = sched(opt, **kwargs)
    lrs = sched_lrs(sched, n_steps - 1)
    fig, ax = plt.subplots()
    ax.plot(lrs)
    ax.set_xlabel('step'); ax.set_ylabel('lr')
    return fig
