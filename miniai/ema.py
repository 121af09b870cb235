"""`EMACB`: an exponential moving average of the model's weights, used for validation (and, by default, kept).

The average of the weights over the last few hundred steps usually generalises better than the last weights,
most of all in short runs that end at a high lr or with noisy steps (Polyak averaging; timm's `ModelEmaV3`,
fastai's `EMACallback`). The average costs one `lerp` over the parameters per step and one copy of the weights.
Used by the time-to-accuracy recipes described in docs/benchmarks.md.

Checkpoints and the average: a checkpoint written during validation (SaveModelCB's, whatever its order) holds the
trained weights as the model's, and the average in EMACB's own state (`trained_weights`, read by
`miniai.checkpoint`), so a resumed run continues bit for bit as one that was never stopped.
"""
from __future__ import annotations

import torch

from .core import Callback, Order
from .device import unwrap_model

__all__ = ['EMACB']


class EMACB(Callback):
    """Keep `ema <- decay*ema + (1-decay)*weights` after each optimizer step; validate with the averaged weights.

    `decay` sets the memory: about `1/(1-decay)` steps (0.999: the last thousand). With `warmup=True` the decay
    used at step `t` is `min(decay, (1+t)/(10+t))`, so the first steps are not averaged with the random
    initialisation (as in TensorFlow's and timm's EMA). Floating-point buffers (BatchNorm running statistics) are
    averaged the same way; the others (`num_batches_tracked`) are copied. During each validation epoch the model
    holds the averaged weights, and the trained ones are put back for training; a checkpoint saved meanwhile still
    holds the trained weights as the model's (see `trained_weights`). With `apply_at_end=True` the model keeps the
    averaged weights after a fit that trained and ran to its end, so `get_preds`, `save` and export use them; a fit
    stopped by Ctrl-C or an error keeps the trained weights (a checkpoint saved then resumes the run), and one
    stopped early by EarlyStoppingCB keeps the weights that callback restores. A fit that does not train
    (`get_preds`, `fit(train=False)`) uses the model's weights as they are.
    """
    order = Order.GUARD   # after TrainCB has stepped, and before MetricsCB reads validation predictions
    # an lr sweep's steps (lr_find) are not training: they must not move the average or its step count
    run_in_isolated_fits = False

    def __init__(self, decay: float = 0.999, warmup: bool = True, apply_at_end: bool = True):
        if not 0 <= decay < 1: raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.apply_at_end = decay, warmup, apply_at_end
        self.ema: dict[str, torch.Tensor] | None = None
        self.n_updates, self._n0, self._live = 0, 0, None

    def _tensors(self, model) -> dict[str, torch.Tensor]:
        # keyed as the unwrapped model's state_dict: the same under DistributedDataParallel or compile, as checkpoints
        return {k: v for k, v in unwrap_model(model).state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)}

    def before_fit(self, learn):
        cur = self._tensors(learn.model)
        if self.ema is None or self.ema.keys() != cur.keys():   # a new model (or the first fit): start from it
            self.ema, self.n_updates = {k: v.detach().clone() for k, v in cur.items()}, 0
        else:   # a loaded state sits on the CPU: follow the model to its device
            self.ema = {k: v.to(device=cur[k].device, dtype=cur[k].dtype) for k, v in self.ema.items()}
        self._n0 = self.n_updates

    def _trained(self) -> bool: return self.n_updates > self._n0   # this fit has stepped at least once

    def current_decay(self) -> float:
        """The decay the next update uses (lower during the warm-up)."""
        t = self.n_updates
        return min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def after_step(self, learn):
        d, cur = self.current_decay(), self._tensors(learn.model)
        floats = [k for k, v in self.ema.items() if v.is_floating_point()]
        # one fused lerp over every float tensor: ema + (1-d)*(w - ema)
        torch._foreach_lerp_([self.ema[k] for k in floats], [cur[k].detach() for k in floats], 1 - d)
        for k, v in self.ema.items():
            if not v.is_floating_point(): v.copy_(cur[k])
        self.n_updates += 1

    def trained_weights(self) -> dict[str, torch.Tensor] | None:
        """The weights training goes on from while the model holds the average (during validation), else None.

        `miniai.checkpoint` saves these as the model's weights, so a checkpoint written during validation, by any
        callback in any order, resumes the run exactly; the average itself is in `state_dict()`.
        """
        return self._live

    @torch.no_grad()
    def _swap_in(self, model):
        cur = self._tensors(model)
        self._live = {k: v.detach().clone() for k, v in cur.items()}
        for k, v in cur.items(): v.data.copy_(self.ema[k])

    @torch.no_grad()
    def _swap_out(self, model):
        if self._live is None: return
        for k, v in self._tensors(model).items(): v.data.copy_(self._live[k])
        self._live = None

    def before_epoch(self, learn):
        if not learn.training and self._trained(): self._swap_in(learn.model)

    def cleanup_epoch(self, learn):
        if not learn.training: self._swap_out(learn.model)

    @torch.no_grad()
    def after_fit(self, learn):
        # after_fit runs only when the fit ran to its end: never after Ctrl-C, an error or CancelFitException
        self._swap_out(learn.model)
        if self.apply_at_end and self._trained():
            for k, v in self._tensors(learn.model).items(): v.data.copy_(self.ema[k])

    def cleanup_fit(self, learn): self._swap_out(learn.model)

    def state_dict(self) -> dict:
        return dict(ema=self.ema, n_updates=self.n_updates)

    def load_state_dict(self, state_dict: dict):
        self.ema, self.n_updates = state_dict['ema'], state_dict['n_updates']
