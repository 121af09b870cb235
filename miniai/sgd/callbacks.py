"""Scheduling callbacks: `BaseSchedCB`, `BatchSchedCB`, `EpochSchedCB`, `RecorderCB`, `ParamSchedCB`,
`OneCycleSchedCB` and `fit_one_cycle`. Explained in nbs/05_sgd.ipynb.

A scheduler steps only after a real training step: in `after_step` (skipped when the step is cancelled: gradient
accumulation, a float16 step with inf gradients, a cancelled batch) or `after_epoch`, and only while `learn.training`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from ..core import Callback
from .schedules import combine_scheds, sched_cos, set_mom

__all__ = ['BaseSchedCB', 'BatchSchedCB', 'EpochSchedCB', 'HasLearnCB', 'RecorderCB', 'ParamSchedCB',
           'OneCycleSchedCB', 'fit_one_cycle']

_HYPER_KEYS = ('lr', 'momentum', 'betas', 'mom', 'weight_decay', 'wd')


class BaseSchedCB(Callback):
    """Makes `sched(learn.opt)` as each training fit starts (torch's or ours); subclasses call `_step` at their event.

    `state_dict()` holds the scheduler's state and the groups' scheduled hypers; after `load_state_dict(sd)` the
    fit that resumes the run (`learn.resuming`) continues from there. A new fit starts its schedule afresh, and an
    evaluation (`fit(train=False)`) leaves it alone.
    """
    run_in_isolated_fits = False   # an lr sweep or a prediction pass must not move it, nor be moved by it
    run_in_evaluations = False     # nor an evaluation
    def __init__(self, sched: Callable): self.sched, self.schedo, self._pending = sched, None, None

    def before_fit(self, learn):
        self.schedo = self.sched(learn.opt)
        if self._pending is not None and getattr(learn, 'resuming', False): self._restore(self._pending)
        self._pending = None

    def _step(self, learn):
        if learn.training: self.schedo.step()

    def state_dict(self) -> dict:
        """The scheduler's `state_dict()` and the lr/momentum/wd of each param group."""
        if self.schedo is None: return {} if self._pending is None else self._pending
        groups = self.schedo.optimizer.param_groups
        return {'sched': self.schedo.state_dict(),
                'hypers': [{k: g[k] for k in _HYPER_KEYS if k in g} for g in groups]}

    def load_state_dict(self, state_dict: dict):
        """Restore `state_dict` now if a scheduler exists, and when the fit that resumes the run starts."""
        if not state_dict: return
        if self.schedo is not None: self._restore(state_dict)
        self._pending = state_dict

    def _restore(self, sd):
        self.schedo.load_state_dict(sd['sched'])
        for g, h in zip(self.schedo.optimizer.param_groups, sd['hypers']): g.update(h)


class BatchSchedCB(BaseSchedCB):
    """Steps the scheduler after each optimizer step (once per real step under gradient accumulation)."""
    def after_step(self, learn): self._step(learn)


class EpochSchedCB(BaseSchedCB):
    """Steps the scheduler after each training epoch."""
    def after_epoch(self, learn): self._step(learn)


class HasLearnCB(Callback):
    """Keeps the learner in `self.learn` during a fit (for code that reads it outside the event methods, such as a
    `RecorderCB` getter); `None` again once the fit ends, however it ends."""
    learn = None
    def before_fit(self, learn): self.learn = learn
    def cleanup_fit(self, learn): self.learn = None


class RecorderCB(Callback):
    """Records `getter(self)` for each of `getters` after every optimizer step; `self.pg` is the first param group.

    `RecorderCB(lr=lambda cb: cb.pg['lr'], mom=lambda cb: cb.pg['betas'][0])`; `plot()` draws one subplot each.
    `steps` holds the training step (`learn.iter_count`) of each record, so values line up with per-step losses
    even when steps are skipped (gradient accumulation). A new fit records anew; the fit that resumes the run
    (`learn.resuming`) goes on from the records a checkpoint gave it (`state_dict`); an evaluation keeps them.
    """
    run_in_isolated_fits = False   # an lr sweep or a prediction pass must not move it, nor be moved by it
    run_in_evaluations = False     # nor an evaluation
    def __init__(self, **getters: Callable):
        self.getters, self.recs, self.steps, self.pg = getters, {k: [] for k in getters}, [], None

    def before_fit(self, learn):
        if getattr(learn, 'resuming', False):   # the records of the steps done before the checkpoint, no more
            keep = sum(s <= learn.iter_count for s in self.steps)
            self.recs, self.steps = {k: v[:keep] for k, v in self.recs.items()}, self.steps[:keep]
        else: self.recs, self.steps = {k: [] for k in self.getters}, []
        self.pg = learn.opt.param_groups[0]

    def after_step(self, learn):
        for k, get in self.getters.items(): self.recs[k].append(get(self))
        # the step counter moves on after the batch (a learner without one: the records' own count)
        self.steps.append(getattr(learn, 'iter_count', len(self.steps)) + 1)

    def cleanup_fit(self, learn):                   # keep the hypers, drop the live params
        if self.pg is not None: self.pg = {k: v for k, v in self.pg.items() if k != 'params'}

    def state_dict(self) -> dict:
        """The records and their steps, so that a resumed run's plots show the whole run."""
        return {'recs': {k: [float(v) for v in vs] for k, vs in self.recs.items()}, 'steps': list(self.steps)}

    def load_state_dict(self, sd: dict):
        """Take a checkpoint's records: the fit that resumes the run (`learn.resuming`) goes on from them."""
        self.recs, self.steps = {k: list(v) for k, v in sd['recs'].items()}, list(sd['steps'])

    def plot(self, figsize=None):
        """One subplot per getter against the training step; returns the matplotlib figure."""
        import matplotlib.pyplot as plt
        n = max(len(self.recs), 1)
        fig, axs = plt.subplots(1, n, figsize=figsize or (4 * n, 3), squeeze=False)
        for ax, (k, v) in zip(axs[0], self.recs.items()):
            ax.plot(self.steps[:len(v)] if len(self.steps) >= len(v) else range(1, len(v) + 1), v)
            ax.set_title(k); ax.set_xlabel('step')
        return fig


def _set_hyper(g: dict, name: str, v: float):
    if name == 'mom': set_mom(g, v)
    elif name == 'wd': g['weight_decay' if 'weight_decay' in g else 'wd'] = v
    else: g[name] = v


class ParamSchedCB(Callback):
    """Sets hypers from schedules `f(pos)`, pos = training steps done / `n_epochs*len(dls.train)`, before each
    training batch; `scheds` maps a hyper (`lr`, `mom`: the momentum-like one, `wd`, or any group key) to one
    schedule or a list of one per param group. Groups without a momentum-like hyper are left alone for `mom`.
    Each training fit starts its schedule afresh, but the fit that resumes the run (`learn.resuming`) goes on from
    the position a checkpoint gave it (`state_dict`); an evaluation sets nothing.
    """
    run_in_isolated_fits = False   # an lr sweep or a prediction pass must not move it, nor be moved by it
    run_in_evaluations = False     # nor an evaluation
    def __init__(self, **scheds):
        self.scheds, self.i, self.total, self._pending = scheds, 0, None, None

    def before_fit(self, learn):
        self.total = learn.n_epochs * len(learn.dls.train)
        if self.total == 0: raise ValueError("ParamSchedCB: the train loader is empty (0 batches)")
        self.opt, self.i = learn.opt, 0
        if self._pending is not None and getattr(learn, 'resuming', False): self.i = self._pending['i']
        self._pending = None
        self._set()

    def _set(self):
        pos = min(self.i / self.total, 1.)
        for name, fs in self.scheds.items():
            if not isinstance(fs, (list, tuple)): fs = [fs] * len(self.opt.param_groups)
            for g, f in zip(self.opt.param_groups, fs, strict=True): _set_hyper(g, name, f(pos))

    def before_batch(self, learn):
        if learn.training: self._set()

    def after_batch(self, learn):
        if learn.training: self.i += 1

    def cleanup_fit(self, learn): self.opt = None

    def state_dict(self) -> dict:
        """Training steps done and the total, enough to resume the schedule mid-run."""
        return {'i': self.i, 'total': self.total}

    def load_state_dict(self, state_dict: dict):
        """Resume at `state_dict['i']` in the fit that resumes the run (`learn.resuming`)."""
        self.i, self._pending = state_dict['i'], dict(state_dict)


class OneCycleSchedCB(ParamSchedCB):
    """fastai's 1cycle: lr cosine from `lr_max/div` up to `lr_max` over `pct_start`, then down to `lr_max/div_final`;
    the momentum-like hyper `moms[0] -> moms[1] -> moms[2]` (None: untouched); `wd` (if given) set as a training
    fit starts.
    `lr_max` may be a list, one per param group.
    """
    def __init__(self, lr_max, pct_start: float = 0.25, moms: Sequence[float] | None = (0.95, 0.85, 0.95),
                 wd: float | None = None, div: float = 25., div_final: float = 1e5):
        if not 0 <= pct_start <= 1: raise ValueError(f"pct_start must be in [0, 1], got {pct_start}")
        if moms is not None and len(moms) != 3: raise ValueError(f"moms must be 3 values, got {moms!r}")
        if div <= 0 or div_final <= 0: raise ValueError(f"div and div_final must be > 0, got {div}, {div_final}")
        def cyc(a, b, c):                             # a -> b over pct_start, then b -> c, both half cosines
            return combine_scheds((pct_start, 1 - pct_start), [partial(sched_cos, a, b), partial(sched_cos, b, c)])
        per_group = isinstance(lr_max, (list, tuple))
        lr_scheds = [cyc(lr / div, lr, lr / div_final) for lr in (lr_max if per_group else [lr_max])]
        scheds = {'lr': lr_scheds if per_group else lr_scheds[0]}
        if moms is not None: scheds['mom'] = cyc(*moms)
        super().__init__(**scheds)
        self.lr_max, self.wd = lr_max, wd

    def before_fit(self, learn):
        if self.wd is not None:
            for g in learn.opt.param_groups:
                if 'weight_decay' not in g and 'wd' not in g:
                    raise ValueError(f"wd={self.wd}: the optimizer's param groups have no 'weight_decay' or 'wd'")
                _set_hyper(g, 'wd', self.wd)
        super().before_fit(learn)


def fit_one_cycle(learn, n_epochs: int, lr_max: float | None = None, pct_start: float = 0.25,
                  moms: Sequence[float] | None = (0.95, 0.85, 0.95), wd: float | None = None, cbs=None,
                  div: float = 25., div_final: float = 1e5, start_epoch: int | None = None):
    """`learn.fit(n_epochs)` under a `OneCycleSchedCB` (fastai's `fit_one_cycle`); `lr_max=None` uses `learn.lr`.

    `start_epoch` is `Learner.fit`'s: after `learn.load`, `start_epoch=0` makes this a new one-cycle fit from the
    loaded weights instead of the rest of the saved run.

    Raises:
        ValueError: the train loader is empty, or `lr_max` is None and so is `learn.lr`.
    """
    if len(learn.dls.train) == 0: raise ValueError("fit_one_cycle: the train loader is empty (0 batches)")
    lr_max = learn.lr if lr_max is None else lr_max
    if lr_max is None: raise ValueError("fit_one_cycle needs lr_max (or a Learner made with lr)")
    cb = OneCycleSchedCB(lr_max, pct_start=pct_start, moms=moms, wd=wd, div=div, div_final=div_final)
    kw = {} if start_epoch is None else dict(start_epoch=start_epoch)   # a learner of the course's has no start_epoch
    return learn.fit(n_epochs, cbs=[cb] + list(cbs or []), **kw)
