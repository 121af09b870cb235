"""Callbacks on the gradients between backward and the optimizer step: `GradientClipCB` and
`GradientAccumulationCB`. Explained in nbs/11_callbacks.ipynb.

Both act in `before_step` (see the backward/step protocol in `miniai.core`): accumulation first (order -6), so a
step it cancels is never unscaled nor clipped; then MixedPrecisionCB unscales float16 gradients (-5); then clipping
(-4) sees the true, accumulated gradients.

Clipping never turns a non-finite gradient into a step: scaling NaN or inf by `max_norm / norm` gives NaN, which
the step would write into every weight. GradientClipCB skips such a step instead (or stops the fit, with
`error_if_nonfinite=True`, as torch's `clip_grad_norm_` and Lightning's `gradient_clip_val` offer).
"""
from __future__ import annotations

import warnings

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from .core import Callback, CancelStepException, Order
from .errors import MiniaiError

__all__ = ['GradientClipCB', 'GradientAccumulationCB', 'NonFiniteGradientError']


class NonFiniteGradientError(MiniaiError, FloatingPointError):
    """The gradients hold NaN or inf; raised by `GradientClipCB(error_if_nonfinite=True)` before the step."""


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

    A step whose gradients hold NaN or inf (a non-finite total norm) is never taken: clipping cannot repair it,
    and the step would spoil every weight. By default the step is skipped, as GradScaler skips one: the gradients
    are dropped (so they do not add up into the next batch), `CancelStepException` skips the optimizer step,
    `after_step` (so per-step schedulers do not advance) and `zero_grad`; `skipped` counts these steps, and one
    warning at the end of the fit gives their number. With `error_if_nonfinite=True` the fit stops instead with
    `NonFiniteGradientError`, naming the epoch and batch. Either way the check reads the norm on the host once
    per step (a device sync, as GradScaler makes).
    """
    order = Order.CLIP  # after MixedPrecisionCB unscaled the gradients

    def __init__(self, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False):
        if not max_norm > 0: raise ValueError(f"max_norm must be > 0, got {max_norm}")
        if not (norm_type == float('inf') or norm_type > 0):
            raise ValueError(f"norm_type must be > 0 or float('inf'), got {norm_type}")
        self.max_norm, self.norm_type, self.error_if_nonfinite = max_norm, norm_type, error_if_nonfinite
        self.norms, self._pending, self.skipped = [], [], 0
        self._fit_skipped, self._fit_steps, self._first = 0, 0, None

    def before_fit(self, learn):
        self.norms, self._pending = [], []
        self._fit_skipped, self._fit_steps, self._first = 0, 0, None

    def before_step(self, learn):
        params = _params(learn)
        grads = [p.grad for p in params if p.grad is not None]
        norm = get_total_norm(grads, norm_type=self.norm_type)
        self._pending.append(norm.detach())  # the device keeps the norms; `norms` reads them once per epoch
        self._fit_steps += 1
        if bool(torch.isfinite(norm)):
            clip_grads_with_norm_(params, self.max_norm, norm)
            return
        where = f"epoch {getattr(learn, 'run_epoch', learn.epoch)}, batch {learn.iter}"
        if self.error_if_nonfinite:
            raise NonFiniteGradientError(
                f"the gradients hold NaN or inf at {where} (total {self.norm_type:g}-norm {norm.item()}); the fit "
                "stopped before the optimizer step, so the weights are intact. Lower the lr, check the inputs and "
                "the loss for NaNs, or drop error_if_nonfinite=True to skip such steps")
        for p in params: p.grad = None           # dropped, not carried into the next batch's gradients
        self.skipped += 1
        self._fit_skipped += 1
        self._first = self._first or where
        raise CancelStepException()

    def cleanup_epoch(self, learn):
        if self._pending: self.norms += torch.stack(self._pending).float().cpu().tolist()
        self._pending = []

    def cleanup_fit(self, learn):
        if not self._fit_skipped: return
        n, steps = self._fit_skipped, self._fit_steps
        warnings.warn(f"GradientClipCB skipped {n} of {steps} optimizer step{'s' * (steps != 1)} because the "
                      f"gradients held NaN or inf (the first at {self._first}); those steps did not change the "
                      "weights. If it happens often, lower the lr or check the inputs and the loss for NaNs; "
                      "GradientClipCB(error_if_nonfinite=True) stops at the first one instead", stacklevel=2)

    def state_dict(self) -> dict:
        """`skipped`: the steps skipped for non-finite gradients over the whole run."""
        return {'skipped': self.skipped}

    def load_state_dict(self, state_dict: dict): self.skipped = state_dict.get('skipped', 0)


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
