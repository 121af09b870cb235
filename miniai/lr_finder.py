"""The learning-rate finder: `LRFinderCB`, `lr_find` (also `Learner.lr_find`) and its suggestions.

An exponential lr sweep over training batches with a bias-corrected smoothed loss. `lr_find` puts the model, the
optimizer, the lr and torch's RNG back exactly as they were, so finding an lr never changes the training that
follows. Explained in nbs/03_activations.ipynb.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .core import Callback, CancelEpochException, CancelFitException, Order, as_cb_list
from .device import all_reduce_mean, is_main_process

__all__ = ['LRFinderCB', 'LRFinderResult', 'lr_find', 'valley', 'steep', 'minimum']


class LRFinderCB(Callback):
    """Multiply the lr by `gamma` after each training batch; stop once the loss passes `max_mult` × its minimum
    (with `stop_div`), turns non-finite, or after `num_it` batches. Skips validation; `show_plot` draws loss against
    lr when the fit ends (as the course's does). The loss compared is smoothed with `beta` (0: the raw loss, as
    in the course; `lr_find` uses 0.98). Under torch.distributed it sees the mean loss over the ranks, so every
    rank stops at the same batch."""
    order = Order.LR_FINDER  # after TrainCB has computed the loss

    def __init__(self, gamma: float = 1.3, max_mult: float = 3, num_it: int | None = None, stop_div: bool = True,
                 beta: float = 0., show_plot: bool = True):
        if gamma <= 1: raise ValueError(f"gamma must be > 1 for a rising sweep, got {gamma}")
        if not 0 <= beta < 1: raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.gamma, self.max_mult, self.num_it, self.stop_div, self.beta = gamma, max_mult, num_it, stop_div, beta
        self.show_plot = show_plot

    def before_fit(self, learn):
        self.lrs, self.losses, self.smoothed, self._avg, self.min = [], [], [], 0., math.inf

    def before_epoch(self, learn):
        if not learn.training: raise CancelEpochException()

    def after_batch(self, learn):
        # one sync per batch: the sweep has to see every loss to stop in time (all ranks' mean, so all stop together)
        loss = float(all_reduce_mean(learn.loss.detach()))
        self.lrs.append(learn.opt.param_groups[0]['lr'])
        self.losses.append(loss)
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        smooth = self._avg / (1 - self.beta ** len(self.losses))
        self.smoothed.append(smooth)
        self.min = min(self.min, smooth)
        if not math.isfinite(loss): raise CancelFitException()
        if self.stop_div and smooth > self.max_mult * self.min: raise CancelFitException()
        if self.num_it is not None and len(self.losses) >= self.num_it: raise CancelFitException()
        for g in learn.opt.param_groups: g['lr'] *= self.gamma

    def cleanup_fit(self, learn):
        if not (self.show_plot and self.lrs and is_main_process()): return
        import matplotlib.pyplot as plt
        plt.plot(self.lrs, self.losses)
        plt.xscale('log')


def _finite(lrs, losses):
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    ok = np.isfinite(losses)
    return lrs[ok], losses[ok]


def minimum(lrs, losses) -> float:
    """A tenth of the lr at the lowest loss: the lowest point is already too far."""
    lrs, losses = _finite(lrs, losses)
    return float(lrs[np.argmin(losses)] / 10)


def _falling(losses, min_drop=0.05):
    """Indices (first, lowest): from where the loss has fallen by `min_drop` of its total fall to its minimum.

    Before `first` a sweep is flat and noisy; suggestions taken there would be orders of magnitude too small.
    """
    lowest = int(np.argmin(losses))
    fall = losses[0] - losses[lowest]
    begun = np.nonzero(losses[:lowest + 1] <= losses[0] - min_drop * fall)[0]
    return (int(begun[0]) if fall > 0 and len(begun) else 0), lowest


def steep(lrs, losses) -> float:
    """The lr where the loss falls fastest against log(lr), within the falling part of the curve."""
    lrs, losses = _finite(lrs, losses)
    first, lowest = _falling(losses)
    if lowest - first < 2: return float(lrs[first])
    seg = slice(first, lowest + 1)
    return float(lrs[seg][np.argmin(np.gradient(losses[seg], np.log(lrs[seg])))])


def valley(lrs, losses) -> float:
    """The lr halfway (in log space) along the longest descending stretch of the falling part of the curve."""
    lrs, losses = _finite(lrs, losses)
    first, lowest = _falling(losses)
    seg = losses[first:lowest + 1]
    n = len(seg)
    run, prev = np.ones(n, dtype=int), np.full(n, -1)  # run[i]: longest decreasing subsequence ending at i
    for i in range(1, n):
        higher = np.nonzero(seg[:i] > seg[i])[0]
        if len(higher):
            j = higher[np.argmax(run[higher])]
            run[i], prev[i] = run[j] + 1, j
    end = int(np.argmax(run))
    start = end
    while prev[start] >= 0: start = prev[start]
    return float(lrs[first + start + (end - start) // 2])


@dataclass
class LRFinderResult:
    """What `lr_find` saw (`lrs`, raw `losses`, `smoothed` losses) and its suggestions; none is applied."""
    lrs: list
    losses: list
    smoothed: list
    valley: float
    steep: float
    minimum: float
    fig: object = field(default=None, repr=False)

    def __repr__(self):
        return (f"LRFinderResult(valley={self.valley:.2e}, steep={self.steep:.2e}, minimum={self.minimum:.2e}, "
                f"points={len(self.lrs)})")

    def plot(self):
        """Smoothed loss against lr on a log axis, the suggestions marked; returns the figure."""
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.lrs, self.smoothed)
        for name, marker in (('valley', 'o'), ('steep', 's'), ('minimum', '^')):
            lr = getattr(self, name)
            ax.plot([lr], [np.interp(np.log(lr), np.log(self.lrs), self.smoothed)], marker, label=f'{name}: {lr:.2e}')
        ax.set(xscale='log', xlabel='learning rate', ylabel='loss (smoothed)')
        ax.legend()
        return fig


def lr_find(learn, gamma: float | None = None, max_mult: float = 3, start_lr: float | None = None,
            max_epochs: int | None = None, *, end_lr: float | None = None, num_it: int | None = None,
            stop_div: bool = True, show_plot: bool = True, cbs=None) -> LRFinderResult:
    """Sweep the lr exponentially over training batches, then put everything back; returns what it saw.

    Two ways to call it:
    - the course's `lr_find(gamma=1.3, max_mult=3, start_lr=1e-5, max_epochs=10)`: from `start_lr`, multiply the
      lr by `gamma` after each batch until the loss passes `max_mult` × its minimum (or `max_epochs` end);
    - `lr_find(start_lr=1e-7, end_lr=10, num_it=100)`: from `start_lr` to `end_lr` in `num_it` batches.
    Giving `end_lr` or `num_it` picks the second. `cbs` (one callback or a list) join the learner's for the sweep.
    The loss is smoothed before it is compared (and the suggestions read); the model, the optimizer, the lr and
    torch's RNG are restored exactly, so finding an lr never changes the training that follows.
    """
    if end_lr is not None or num_it is not None:
        if gamma is not None or max_epochs is not None:
            raise ValueError("give either gamma/max_epochs (the course's sweep) or end_lr/num_it, not both")
        start_lr = 1e-7 if start_lr is None else start_lr
        end_lr, num_it = (10 if end_lr is None else end_lr), (100 if num_it is None else num_it)
        if not 0 < start_lr < end_lr: raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
        if num_it < 2: raise ValueError(f"num_it must be >= 2, got {num_it}")
        gamma, n_epochs = (end_lr / start_lr) ** (1 / (num_it - 1)), num_it
    else:
        gamma, start_lr = (1.3 if gamma is None else gamma), (1e-5 if start_lr is None else start_lr)
        n_epochs = 10 if max_epochs is None else max_epochs
        if not start_lr > 0: raise ValueError(f"start_lr must be > 0, got {start_lr}")
    cb = LRFinderCB(gamma=gamma, max_mult=max_mult, num_it=num_it, stop_div=stop_div, beta=0.98, show_plot=False)
    learn.check_train_loader()
    # callbacks that keep records (metrics, loggers, checkpoints) sit the sweep out, and everything it changes
    # (weights, optimizer, lr, RNG, counters) is put back
    with learn.isolated(weights=True):
        # with num_it, num_it epochs: a bound however short DDPCB's shards make them (LRFinderCB stops after
        # num_it batches); start_epoch=0 leaves a loaded checkpoint's resume epoch pending for the real fit
        learn.fit(n_epochs, valid=False, lr=start_lr, cbs=[cb] + as_cb_list(cbs), start_epoch=0)
    if not cb.losses: raise RuntimeError("lr_find saw no training batch")
    res = LRFinderResult(cb.lrs, cb.losses, cb.smoothed, valley(cb.lrs, cb.smoothed), steep(cb.lrs, cb.smoothed),
                         minimum(cb.lrs, cb.smoothed))
    if show_plot and is_main_process(): res.fig = res.plot()
    return res
