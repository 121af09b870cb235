"""The `Learner` and its training loop; every step is an event that callbacks hook into.

Explained in nbs/02_learner.ipynb. The callbacks every fit uses live in `miniai.callbacks` and are re-exported
here, so the course's `from miniai.learner import *` gives them all.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .core import (EVENTS, STEPS, CancelBatchException, CancelEpochException, CancelFitException, CancelStepException,
                   Callback, call_cb, check_callback, run_cbs)
from .callbacks import (DeviceCB, MetricsCB, ProgressCB, SingleBatchCB, TrainCB, def_device, loss_with_context,
                        set_seed, to_cpu, to_device)
from .checkpoint import _cb_keys, load_checkpoint, save_checkpoint
from .lr_finder import LRFinderCB, lr_find
from .sgd.callbacks import fit_one_cycle

__all__ = ['EVENTS', 'CancelFitException', 'CancelEpochException', 'CancelBatchException', 'CancelStepException',
           'Callback', 'run_cbs',
           'Learner', 'TrainLearner', 'MomentumLearner',
           'TrainCB', 'DeviceCB', 'SingleBatchCB', 'MetricsCB', 'ProgressCB', 'def_device', 'to_device', 'to_cpu',
           'set_seed', 'LRFinderCB']


def _check_dls(dls):
    if isinstance(dls, (tuple, list)) and all(isinstance(o, int) for o in dls): return dls  # the `(0,)` placeholder
    train = getattr(dls, 'train', None)
    if train is None or not isinstance(train, Iterable):
        raise TypeError(f"dls must have a `.train` loader (and `.valid`), e.g. DataLoaders(train_dl, valid_dl); "
                        f"got {type(dls).__name__}")
    return dls


class Learner:
    """Trains `model` on `dls` with `loss_func`; `opt_func(params, lr=lr)` makes the optimizer, `cbs` do the rest."""
    def __init__(self, model: nn.Module, dls=(0,), loss_func=F.mse_loss, lr: float = 0.1, cbs=None,
                 opt_func=torch.optim.SGD):
        if not callable(opt_func):
            raise TypeError(f"opt_func must be callable as opt_func(params, lr=lr), e.g. torch.optim.SGD or "
                            f"partial(torch.optim.AdamW, wd=0.01); got {opt_func!r}")
        self.model, self.dls, self.loss_func, self.lr, self.opt_func = model, _check_dls(dls), loss_func, lr, opt_func
        self.cbs, self.opt, self.training, self.epoch, self.iter_count = [], None, False, 0, 0
        self.pending_cb_states, self.resume_epoch = {}, None  # set by `load`, used by the next fit
        self.add_cbs(cbs or [])

    # --- callbacks -----------------------------------------------------------------------------------------
    def add_cbs(self, cbs):
        """Add callbacks after checking each is a `Callback` with only real event names."""
        for cb in cbs: self.cbs.append(check_callback(cb))
        self._table = None
        return self

    def remove_cbs(self, cbs):
        """Remove each of `cbs` that the learner has (the others are ignored)."""
        for cb in cbs:
            if cb in self.cbs: self.cbs.remove(cb)
        self._table = None
        return self

    @contextmanager
    def added_cbs(self, cbs):
        """Add `cbs` for the `with` block only; they are removed however the block ends."""
        cbs = list(cbs)
        self.add_cbs(cbs)
        try: yield self
        finally: self.remove_cbs(cbs)

    @contextmanager
    def removed_cbs(self, cbs):
        """Take `cbs` out for the `with` block only; they come back at their old places however it ends."""
        before, out = list(self.cbs), {id(cb) for cb in cbs}
        self.remove_cbs([cb for cb in before if id(cb) in out])
        try: yield self
        finally:  # the old list, less what the block removed itself, plus what it added and left
            now, old = {id(cb) for cb in self.cbs}, {id(cb) for cb in before}
            self.cbs[:] = ([cb for cb in before if id(cb) in out or id(cb) in now]
                           + [cb for cb in self.cbs if id(cb) not in old])
            self._table = None

    def _build_table(self):
        # One list of bound methods per event, built once per change of `cbs`: an event nobody listens to is an
        # empty loop, which keeps the loop as cheap as a hand-written one.
        cbs = sorted(enumerate(self.cbs), key=lambda ic: (ic[1].order, ic[0]))
        self._table = {name: [(cb, getattr(cb, name)) for _, cb in cbs if hasattr(cb, name)]
                       for name in EVENTS + STEPS}
        self._table_key = list(self.cbs)

    def callback(self, name: str):
        """Run event `name` on every callback that has it."""
        if self._table is None or self._table_key != self.cbs: self._build_table()
        for cb, method in self._table[name]: call_cb(cb, method, name, self)

    # --- the loop ------------------------------------------------------------------------------------------
    def _with_events(self, body, stage: str, cancel):
        try:
            self.callback(f'before_{stage}')
            body()
            self.callback(f'after_{stage}')
        except cancel: pass
        finally: self.callback(f'cleanup_{stage}')

    def one_batch(self):
        self.predict()
        self.callback('after_predict')
        self.get_loss()
        self.callback('after_loss')
        if not self.training: return
        self.backward_done = False  # a callback that backprops the loss itself sets it (see miniai.core)
        self.callback('before_backward')
        if not self.backward_done: self.backward()
        self.callback('after_backward')
        try:
            self.callback('before_step')
            self.step()
            self.callback('after_step')
            self.zero_grad()
        except CancelStepException: pass  # no step: the gradients accumulate into the next batch

    def _one_batch(self):
        self.one_batch()
        if self.training: self.iter_count += 1

    def _all_batches(self):
        self.n_iter = len(self.dl) if hasattr(self.dl, '__len__') else None
        for self.iter, self.batch in enumerate(self.dl):
            self._with_events(self._one_batch, 'batch', CancelBatchException)

    def one_epoch(self, training: bool):
        self.training = training
        self.model.train(training)
        self.dl = self.dls.train if training else self.dls.valid
        self._with_events(self._all_batches, 'epoch', CancelEpochException)

    def _fit(self, train, valid):
        for self.epoch in self.epochs:
            if train: self.one_epoch(True)
            if valid:
                with torch.no_grad(): self.one_epoch(False)

    def make_opt(self, lr=None):
        """Create `self.opt` with `opt_func(params, lr=lr)` if there is none yet; else set its groups' `lr`."""
        lr = self.lr if lr is None else lr
        if self.opt is None: self.opt = self.opt_func(self.model.parameters(), lr=lr)
        elif hasattr(self.opt, 'param_groups'):
            for g in self.opt.param_groups: g['lr'] = lr
        else: self.opt.lr = lr
        return self.opt

    def fit(self, n_epochs: int = 1, train: bool = True, valid: bool = True, cbs=None, lr: float | None = None,
            start_epoch: int | None = None):
        """Train for `n_epochs` (validating after each unless `valid=False`); `cbs` are only added for this fit.

        After `load` of a checkpoint, the fit starts at the epoch after the saved one (or at `start_epoch`).
        """
        if not isinstance(n_epochs, int) or isinstance(n_epochs, bool) or n_epochs < 1:
            raise ValueError(f"n_epochs must be an integer >= 1, got {n_epochs!r}")
        if train: self._check_train_loader()
        # only a training fit continues a loaded checkpoint (get_preds' validation-only fit leaves it for the next)
        if start_epoch is None:
            start_epoch = (self.resume_epoch or 0) if train else 0
            if train: self.resume_epoch = None
        if start_epoch >= n_epochs:
            raise ValueError(f"nothing to train: starting at epoch {start_epoch} of a {n_epochs}-epoch fit (a loaded "
                             "checkpoint continues after its epoch; pass start_epoch=0 to train from the start)")
        with self.added_cbs(cbs or []):
            try:
                self.apply_pending_cb_states()
                self.n_epochs, self.epochs = n_epochs, range(start_epoch, n_epochs)
                self.do_valid = valid
                if train and self.opt_func is not None: self.make_opt(lr)
                self._with_events(lambda: self._fit(train, valid), 'fit', CancelFitException)
            finally:
                self.training = False
                self.model.eval()

    def apply_pending_cb_states(self):
        """Give callbacks the states a loaded checkpoint holds for them (matched by class name and position)."""
        if not self.pending_cb_states: return
        for key, cb in zip(_cb_keys(self.cbs), self.cbs):
            if key in self.pending_cb_states and hasattr(cb, 'load_state_dict'):
                cb.load_state_dict(self.pending_cb_states.pop(key))

    def save(self, path):
        """Save a checkpoint of everything needed to resume exactly (see `miniai.checkpoint`)."""
        return save_checkpoint(self, path)

    def load(self, path, weights_only: bool = False):
        """Load a checkpoint; unless `weights_only`, the next fit continues the saved run."""
        load_checkpoint(self, path, weights_only=weights_only)
        return self

    def _check_train_loader(self):
        dl = getattr(self.dls, 'train', None)
        if dl is None: raise TypeError("fit needs dls with a `.train` loader; this Learner was made without dls")
        if hasattr(dl, '__len__') and len(dl) == 0:
            raise ValueError("the train loader is empty (0 batches): check the dataset's length, and batch_size "
                             "with drop_last=True")

    # --- the steps of a batch: callbacks named after them (TrainCB) or subclasses (TrainLearner) do the work --
    def predict(self): self.callback('predict')
    def get_loss(self): self.callback('get_loss')
    def backward(self): self.callback('backward')
    def step(self): self.callback('step')
    def zero_grad(self): self.callback('zero_grad')

    # --- conveniences built on fit -------------------------------------------------------------------------
    def lr_find(self, start_lr=1e-7, end_lr=10, num_it=100, stop_div=True, show_plot=True, **kwargs):
        """Sweep the lr exponentially over training batches; see `miniai.lr_finder.lr_find`."""
        return lr_find(self, start_lr=start_lr, end_lr=end_lr, num_it=num_it, stop_div=stop_div,
                       show_plot=show_plot, **kwargs)

    def fit_one_cycle(self, n_epochs: int, lr_max: float | None = None, pct_start: float = 0.25,
                      moms=(0.95, 0.85, 0.95), wd: float | None = None, cbs=None, **kwargs):
        """Fit with a one-cycle schedule of the lr (and of the momentum-like hyper); see `miniai.sgd.fit_one_cycle`."""
        return fit_one_cycle(self, n_epochs, lr_max=lr_max, pct_start=pct_start, moms=moms, wd=wd, cbs=cbs,
                             **kwargs)


class TrainLearner(Learner):
    """A `Learner` that does the usual predict / loss / backward / step itself (one input, the rest targets)."""
    def predict(self): self.preds = self.model(self.batch[0])
    def get_loss(self): self.loss = loss_with_context(self.loss_func, self.preds, self.batch[1:])
    def backward(self): self.loss.backward()
    def step(self): self.opt.step()
    def zero_grad(self): self.opt.zero_grad()


class MomentumLearner(TrainLearner):
    """Keeps `mom` of each gradient instead of zeroing it: momentum done by the learner, as in the course."""
    def __init__(self, model, dls, loss_func, lr: float = 0.1, cbs=None, opt_func=torch.optim.SGD, mom: float = 0.85):
        self.mom = mom
        super().__init__(model, dls, loss_func, lr, cbs, opt_func)

    def zero_grad(self):
        with torch.no_grad():
            for p in self.model.parameters():
                if p.grad is not None: p.grad *= self.mom


