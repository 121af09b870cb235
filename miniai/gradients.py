"""Callbacks on the gradients between backward and the optimizer step: `GradientClipCB` and
`GradientAccumulationCB`. Explained in nbs/11_callbacks.ipynb.

Both act in `before_step` (see the backward/step protocol in `miniai.core`): accumulation first (order -6), so a
step it cancels is never unscaled nor clipped; then MixedPrecisionCB unscales float16 gradients (-5); then clipping
(-4) sees the true, accumulated gradients.
"""
from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from .core import Callback, CancelStepException, Order

__all__ = ['GradientClipCB', 'GradientAccumulationCB']


def _params(learn):
    opt = learn.opt
    if opt is not None and hasattr(opt, 'param_groups'): return [p for g in opt.param_groups for p in g['params']]
    return list(learn.model.parameters())


class GradientClipCB(Callback):
    """Scale all gradients down so that their total `norm_type`-norm is at most `max_norm`, before each step.

    Under float16 MixedPrecisionCB has unscaled the gradients by then (the course's `MixedPrecision` callback
    does not unscale before the step: use MixedPrecisionCB with clipping); under DistributedDataParallel the
    gradients are already averaged over the ranks in backward, so every rank clips the same way. `norms` keeps
    the total norm before clipping of each step (as CPU floats, read once per epoch).
    """
    order = Order.CLIP  # after MixedPrecisionCB unscaled the gradients

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        if not max_norm > 0: raise ValueError(f"max_norm must be > 0, got {max_norm}")
        if not (norm_type == float('inf') or norm_type > 0):
            raise ValueError(f"norm_type must be > 0 or float('inf'), got {norm_type}")
        self.max_norm, self.norm_type, self.norms, self._pending = max_norm, norm_type, [], []

    def before_fit(self, learn): self.norms, self._pending = [], []

    def before_step(self, learn):
        norm = torch.nn.utils.clip_grad_norm_(_params(learn), self.max_norm, norm_type=self.norm_type)
        self._pending.append(norm.detach())  # stays on the device: reading it now would sync every step

    def cleanup_epoch(self, learn):
        if self._pending: self.norms += torch.stack(self._pending).float().cpu().tolist()
        self._pending = []


class GradientAccumulationCB(Callback):
    """Step the optimizer every `n_batches` training batches (and at each epoch's last batch), with the mean of
    their gradients: for a model without BatchNorm, k accumulated batches of size b give the same step as one
    batch of k*b.

    The other batches raise `CancelStepException` in `before_step`, so their gradients add up (no step, no
    `zero_grad`, no `after_step`: per-step schedulers and recorders advance once per real step). At the real step
    the summed gradients are divided by the number of batches summed; this is the same as scaling each batch's
    loss by 1/k, and stays right for a shorter last group of the epoch. A BatchSchedCB's torch scheduler then
    needs `total_steps = epochs * ceil(len(dls.train) / n_batches)`; `fit_one_cycle` needs nothing. Under
    DistributedDataParallel the batches that won't step run in its `no_sync()`: the ranks all-reduce the summed
    gradients once, at the batch that steps.
    """
    order = Order.ACCUMULATE  # before MixedPrecisionCB: a cancelled step is never unscaled

    def __init__(self, n_batches: int):
        if not isinstance(n_batches, int) or isinstance(n_batches, bool) or n_batches < 1:
            raise ValueError(f"n_batches must be an integer >= 1, got {n_batches!r}")
        self.n_batches, self.count, self._no_sync = n_batches, 0, None

    def before_fit(self, learn): self.count = 0

    def _steps(self, learn) -> bool:
        """Whether this batch ends a group: the n-th since the last step, or the epoch's last."""
        return self.count + 1 >= self.n_batches or (learn.n_iter is not None and learn.iter == learn.n_iter - 1)

    def before_batch(self, learn):
        if learn.training and isinstance(learn.model, DistributedDataParallel) and not self._steps(learn):
            self._no_sync = learn.model.no_sync()   # forward and backward of this batch: no all-reduce
            self._no_sync.__enter__()

    def _sync_again(self):
        if self._no_sync is not None: self._no_sync.__exit__(None, None, None); self._no_sync = None

    def after_backward(self, learn): self._sync_again()
    def cleanup_batch(self, learn): self._sync_again()

    def before_step(self, learn):
        steps = self._steps(learn)
        self.count += 1
        if not steps: raise CancelStepException()
        if self.count > 1:
            with torch.no_grad():
                for p in _params(learn):
                    if p.grad is not None: p.grad.div_(self.count)
        self.count = 0
