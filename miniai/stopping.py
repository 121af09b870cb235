"""Early stopping: `EarlyStoppingCB` ends a fit when the monitored value stops improving. Explained in
nbs/11_callbacks.ipynb.
"""
from __future__ import annotations

from .callbacks import improved, monitor_mode, resolve_monitor
from .core import Callback, CancelFitException, Order
from .device import is_main_process, unwrap_model

__all__ = ['EarlyStoppingCB']

class EarlyStoppingCB(Callback):
    """Stop the fit once `monitor` has not improved by more than `min_delta` for `patience` epochs in a row.

    `monitor` is a column of the metrics rows (`valid_loss`, `valid_accuracy`, `train_loss`, ...; see
    `resolve_monitor` for the older names it still takes); it is checked when the fit starts, so a misspelt name
    or a learner without MetricsCB is refused before any training. The values come in MetricsCB's rows (the
    `after_log` event), merged over ranks, so every rank stops at the same epoch. `mode` 'min'/'max' says which
    way is better ('auto': min for names with 'loss'). A NaN value is never the best. With `restore_best`, the
    model ends the fit with the best epoch's weights (kept as a CPU copy of the state_dict). When it stops it says
    so in one line; after the fit, `best`, `best_epoch` and `stopped_epoch` (None if it ran to the end) say what
    happened. Epochs are the rows' `epoch` numbers.
    """
    order = Order.STOPPING  # before SaveModelCB, so the checkpoint of an epoch holds its count
    run_in_isolated_fits = False
    run_in_evaluations = False     # an evaluation is no epoch to count

    def __init__(self, monitor: str = 'valid_loss', mode: str = 'auto', patience: int = 3, min_delta: float = 0.,
                 restore_best: bool = True, verbose: bool = True):
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        if min_delta < 0: raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, patience, min_delta, restore_best
        self.mode, self.verbose = monitor_mode(mode, monitor), verbose
        self.best, self.best_epoch, self.stopped_epoch, self.wait, self.best_state = None, None, None, 0, None
        self.key, self._seen, self.active, self._ended = monitor, False, False, False

    def before_fit(self, learn):
        self.key = resolve_monitor(learn, self.monitor, type(self).__name__)
        if not getattr(learn, 'resuming', False):   # a new fit starts afresh; a resumed run counts on
            self.best, self.best_epoch, self.wait = None, None, 0
        self.stopped_epoch, self.best_state, self._seen, self._ended = None, None, False, False
        self.active = True   # this fit's before_fit ran to its end: cleanup_fit may act

    @property
    def patience_spent(self) -> bool:
        """Whether `wait` has reached `patience`: the fit stopped here, and a run resumed from this state would
        stop again after one more epoch without improvement (`miniai train --resume` treats such a run as
        complete)."""
        return self.wait >= self.patience

    def after_log(self, learn):
        """Count the epoch from its metrics row: done at the row (MetricsCB's after_epoch), so the checkpoint
        SaveModelCB writes for this epoch holds this epoch's best and wait."""
        row = learn.metrics_row
        v, self._seen = row[self.key], True
        if improved(v, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = v, row['epoch'], 0
            if self.restore_best:   # a copy on the CPU: the device keeps only the live weights
                self.best_state = {k: t.detach().to('cpu', copy=True)
                                   for k, t in unwrap_model(learn.model).state_dict().items()}
        else: self.wait += 1

    def after_epoch(self, learn):
        if not self._seen: return          # the row comes after the epoch's last phase
        self._seen = False
        if self.wait < self.patience: return
        self.stopped_epoch = learn.run_epoch
        raise CancelFitException()

    def after_fit(self, learn): self._ended = True

    def cleanup_fit(self, learn):
        """After everything else has ended its epoch (EMACB swaps its average out in cleanup_epoch): the best
        weights, when the fit stopped early or ran to its end (not after an error or Ctrl-C, whose checkpoint must
        hold the weights training reached), and the line that says so."""
        ran, self.active = getattr(self, 'active', False), False
        if not ran or not (self._ended or self.stopped_epoch is not None): return
        restored = self._restore(learn)
        if self.stopped_epoch is None or not (self.verbose and is_main_process()): return
        n = f"{self.wait} epoch{'s' if self.wait != 1 else ''}"
        what = (f"; restored the weights of epoch {self.best_epoch} ({self.key} {self.best:.4g})" if restored
                else f"; the best {self.key} was {self.best:.4g} at epoch {self.best_epoch}"
                if self.best is not None else f"; {self.key} was never finite")
        print(f"EarlyStoppingCB: stopped at epoch {self.stopped_epoch}: no improvement of {self.key} for {n}{what}",
              flush=True)

    def _restore(self, learn) -> bool:
        if not (self.restore_best and self.best_state is not None): return False
        unwrap_model(learn.model).load_state_dict(self.best_state)
        return True

    def state_dict(self) -> dict:
        """Best value, its epoch and the epochs waited since, to resume a run (the best weights are not kept)."""
        return {'best': self.best, 'best_epoch': self.best_epoch, 'wait': self.wait}

    def load_state_dict(self, state_dict: dict):
        """Continue counting from `state_dict` in the fit that resumes the run (`learn.resuming`)."""
        self.best, self.best_epoch, self.wait = state_dict['best'], state_dict['best_epoch'], state_dict['wait']
