"""Early stopping: `EarlyStoppingCB` ends a fit when the monitored value stops improving. Explained in
nbs/11_callbacks.ipynb.
"""
from __future__ import annotations

import math

from .checkpoint import unwrap_model
from .core import Callback, CancelFitException

__all__ = ['EarlyStoppingCB']

_MODES = ('auto', 'min', 'max')


class EarlyStoppingCB(Callback):
    """Stop the fit once `monitor` has not improved by more than `min_delta` for `patience` epochs in a row.

    `monitor` is 'valid_loss', 'train_loss' or a metric name of the `MetricsCB` (its eval value, or its train value
    in a fit without validation); the values come as MetricsCB's rows (`log_row`), merged over ranks, so every
    rank stops at the same epoch. `mode` 'min'/'max' says which way is better ('auto': min for names with 'loss').
    With `restore_best`, the model ends the fit with the best epoch's weights (kept as a CPU copy of the state_dict).
    After the fit, `best`, `best_epoch` and `stopped_epoch` (None if it ran to the end) say what happened.
    """
    order = 25  # after MetricsCB (10) made the epoch's row and SaveModelCB (20) saved the epoch it ends on
    lr_find_excluded = True

    def __init__(self, monitor: str = 'valid_loss', mode: str = 'auto', patience: int = 3, min_delta: float = 0.,
                 restore_best: bool = True):
        if mode not in _MODES: raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        if min_delta < 0: raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, patience, min_delta, restore_best
        self.mode = ('min' if 'loss' in monitor else 'max') if mode == 'auto' else mode
        self.best, self.best_epoch, self.stopped_epoch, self.wait, self.best_state = None, None, None, 0, None
        self._value, self._resumed = None, False

    def before_fit(self, learn):
        if not self._resumed: self.best, self.best_epoch, self.wait = None, None, 0  # a new fit starts afresh
        self.stopped_epoch, self.best_state, self._value, self._resumed = None, None, None, False

    def log_row(self, learn, row: dict):
        """Count the epoch from MetricsCB's row of the phase `monitor` is read from: done here (MetricsCB, order 10),
        so the checkpoint SaveModelCB (20) writes at this epoch's end holds this epoch's best and wait."""
        key = 'loss' if self.monitor in ('valid_loss', 'train_loss') else self.monitor
        phase = 'train' if self.monitor == 'train_loss' or not learn.do_valid else 'eval'
        if row['phase'] != phase: return
        if key not in row:
            names = sorted(k for k in row if k not in ('epoch', 'phase', 'seconds', 'loss'))
            raise ValueError(f"EarlyStoppingCB: monitor {self.monitor!r} is not in the metrics; use 'valid_loss', "
                             f"'train_loss' or one of {names}")
        self._value = v = row[key]
        if self._improved(v):
            self.best, self.best_epoch, self.wait = v, learn.epoch, 0
            if self.restore_best:   # a copy on the CPU: the device keeps only the live weights
                self.best_state = {k: t.detach().to('cpu', copy=True)
                                   for k, t in unwrap_model(learn.model).state_dict().items()}
        else: self.wait += 1

    def _improved(self, v) -> bool:
        if not math.isfinite(v): return False
        if self.best is None: return True
        return v < self.best - self.min_delta if self.mode == 'min' else v > self.best + self.min_delta

    def after_epoch(self, learn):
        if learn.training and learn.do_valid: return       # an epoch is complete after its eval phase
        if self._value is None:
            raise ValueError("EarlyStoppingCB needs a MetricsCB in the learner's callbacks: it reads MetricsCB's rows")
        self._value = None
        if self.wait >= self.patience:
            self.stopped_epoch = learn.epoch
            self._restore(learn)
            raise CancelFitException()

    def after_fit(self, learn): self._restore(learn)

    def _restore(self, learn):
        if self.restore_best and self.best_state is not None:
            unwrap_model(learn.model).load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        """Best value, its epoch and the epochs waited since, to resume a run (the best weights are not kept)."""
        return {'best': self.best, 'best_epoch': self.best_epoch, 'wait': self.wait}

    def load_state_dict(self, state_dict: dict):
        """Continue counting from `state_dict` in the next fit (a checkpoint resuming mid-run)."""
        self.best, self.best_epoch, self.wait = state_dict['best'], state_dict['best_epoch'], state_dict['wait']
        self._resumed = True
