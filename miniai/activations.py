"""Looking inside a model while it trains: `GeneralRelu`, `Hook`/`Hooks`, `HooksCallback` and `ActivationStats`.

Explained in nbs/03_activations.ipynb.
"""
from __future__ import annotations

import warnings
from functools import partial

import fastcore.all as fc
import torch
from torch import nn

from .callbacks import set_seed
from .core import Callback
from .layers import GeneralRelu

__all__ = ['set_seed', 'GeneralRelu', 'Hook', 'Hooks', 'HooksCallback', 'ActivationStats', 'append_stats',
           'get_hist', 'get_min']


class Hook:
    """A forward hook on module `m` calling `f(hook, module, input, output)`; remove it, or use it as a context."""
    def __init__(self, m: nn.Module, f):
        self.module, self.handle = m, m.register_forward_hook(partial(f, self))

    def remove(self):
        if self.handle is not None: self.handle.remove(); self.handle = None

    def __enter__(self): return self
    def __exit__(self, *args): self.remove()
    def __del__(self): self.remove()


class Hooks(list):
    """A `Hook` on each of `ms`; a context manager that removes them all on exit, whatever ended the block."""
    def __init__(self, ms, f): super().__init__(Hook(m, f) for m in ms)
    def __enter__(self): return self
    def __exit__(self, *args): self.remove()
    def __del__(self): self.remove()

    def __delitem__(self, i):
        self[i].remove()
        super().__delitem__(i)

    def remove(self):
        for h in self: h.remove()


N_BINS, HIST_MAX = 40, 10.


def _init_stats(hook):
    # `stats` is the course's view (means, stds, histograms) of the same three lists
    hook.means, hook.stds, hook.hists, hook.pending = [], [], [], []
    hook.stats = (hook.means, hook.stds, hook.hists)


def append_stats(hook, mod, inp, outp, with_hist: bool = True):
    """Record the mean, std and (with `with_hist`) a 40-bin histogram of |activation| over [0, 10] of this batch in
    `hook.stats` (the lists `hook.means`, `hook.stds`, `hook.hists`), created on the first call; use with
    `Hook`/`Hooks`/`HooksCallback`.

    Under `ActivationStats` the numbers stay on the device until the epoch ends (copying 42 numbers to the host
    per layer per batch would sync); elsewhere they are copied at once, so `hook.stats` is always up to date.
    """
    if not hasattr(hook, 'pending'): _init_stats(hook)
    acts = outp.detach().float()
    summary = torch.stack([acts.mean(), acts.std()])
    if with_hist: summary = torch.cat([summary, acts.abs().histc(N_BINS, 0, HIST_MAX)])
    hook.pending.append(summary)
    if not getattr(hook, 'deferred', False): _flush(hook)


def _flush(hook):
    if getattr(hook, 'pending', None):
        rows = torch.stack(hook.pending).cpu()
        hook.means += rows[:, 0].tolist()   # `+=` extends in place: `hook.stats` sees the new numbers
        hook.stds += rows[:, 1].tolist()
        if rows.shape[1] > 2: hook.hists += list(rows[:, 2:])
        hook.pending = []


def _hists(h):
    if not getattr(h, 'stats', None) or not len(h.stats[2]):
        raise ValueError("this hook has no histograms yet: record some with append_stats during a forward pass")
    return torch.stack(list(h.stats[2])).t().float()


def get_hist(h) -> torch.Tensor:
    """Bins × batches, log(1 + count) of the histograms in `h.stats[2]`: the picture `color_dim` draws."""
    return _hists(h).log1p()


def get_min(h) -> torch.Tensor:
    """Per batch, the share of activations in the lowest bin (|a| < 0.25): how much of the layer is dead."""
    hist = _hists(h)
    return hist[0] / hist.sum(0).clamp_min(1)


class HooksCallback(Callback):
    """Hook `hookfunc` on the modules `mod_filter` picks (or `mods`) for the fit; the hooks go in `cleanup_fit`."""
    def __init__(self, hookfunc, mod_filter=fc.noop, on_train: bool = True, on_valid: bool = False, mods=None):
        self.hookfunc, self.mod_filter, self.on_train, self.on_valid, self.mods = \
            hookfunc, mod_filter, on_train, on_valid, mods
        self.hooks = Hooks([], None)

    def before_fit(self, learn):
        mods = self.mods if self.mods is not None else [m for m in learn.model.modules() if self.mod_filter(m)]
        if not mods: warnings.warn(f"{type(self).__name__}: mod_filter matched no module of the model; "
                                   "nothing will be recorded", stacklevel=2)
        self._learn = learn
        self.hooks = Hooks(mods, self._hookfunc)
        for h in self.hooks: self.init_hook(h)

    def init_hook(self, h): pass

    def _hookfunc(self, hook, *args):
        training = self._learn.training
        if (self.on_train and training) or (self.on_valid and not training): self.hookfunc(hook, *args)

    def cleanup_fit(self, learn):
        self.hooks.remove()
        self._learn = None

    def __iter__(self): return iter(self.hooks)
    def __len__(self): return len(self.hooks)


class ActivationStats(HooksCallback):
    """Per-layer means, stds and histograms of activations on training batches, with plots to read them."""
    def __init__(self, mod_filter=fc.noop, with_hist: bool = True):
        super().__init__(partial(append_stats, with_hist=with_hist), mod_filter)
        self.with_hist = with_hist

    def init_hook(self, h):
        _init_stats(h)
        h.deferred = True  # flushed once per epoch, not per batch

    def after_epoch(self, learn):
        for h in self.hooks: _flush(h)

    def cleanup_fit(self, learn):
        for h in self.hooks: _flush(h)
        super().cleanup_fit(learn)

    def _grid(self, n, figsize):
        import matplotlib.pyplot as plt
        ncols = min(n, 4)
        nrows = -(-n // ncols)
        fig, axs = plt.subplots(nrows, ncols, figsize=(figsize[0] * ncols, figsize[1] * nrows), squeeze=False)
        for ax in axs.flat[n:]: ax.set_axis_off()
        return fig, axs.flat

    def color_dim(self, figsize=(3, 3)):
        """Each layer's log-histogram of |activations|, batch by batch: a healthy layer spreads out smoothly."""
        if not self.with_hist: raise ValueError("color_dim needs ActivationStats(with_hist=True)")
        fig, axs = self._grid(len(self.hooks), figsize)
        for i, (ax, h) in enumerate(zip(axs, self.hooks)):
            ax.imshow(get_hist(h), origin='lower', aspect='auto')
            ax.set(title=f'layer {i}', xlabel='batch')
            ax.set_yticks([])
        return fig

    def dead_chart(self, figsize=(3, 2.5)):
        """Share of near-zero activations per layer over batches: near 1 means a dead layer."""
        if not self.with_hist: raise ValueError("dead_chart needs ActivationStats(with_hist=True)")
        fig, axs = self._grid(len(self.hooks), figsize)
        for i, (ax, h) in enumerate(zip(axs, self.hooks)):
            ax.plot(get_min(h))
            ax.set(ylim=(0, 1), title=f'layer {i}', xlabel='batch')
        return fig

    def plot_stats(self, figsize=(10, 4)):
        """Means and standard deviations of each layer's activations over batches."""
        import matplotlib.pyplot as plt
        fig, axs = plt.subplots(1, 2, figsize=figsize)
        for i, h in enumerate(self.hooks):
            axs[0].plot(h.means, label=f'layer {i}')
            axs[1].plot(h.stds)
        axs[0].set_title('means')
        axs[1].set_title('stds')
        axs[0].legend(fontsize='small')
        return fig
