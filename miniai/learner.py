"""The `Learner` and its training loop; every step is an event that callbacks hook into.

Explained in nbs/02_learner.ipynb. The callbacks every fit uses live in `miniai.callbacks` and are re-exported
here, so the course's `from miniai.learner import *` gives them all.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .core import (EVENTS, STEPS, CancelBatchException, CancelEpochException, CancelFitException, Callback,
                   _cb_list, call_cb, check_callback, run_cbs)
from .callbacks import (DeviceCB, MetricsCB, ProgressCB, SingleBatchCB, TrainCB, def_device, loss_with_context,
                        set_seed, to_cpu, to_device)
from .lr_finder import LRFinderCB, lr_find

__all__ = ['EVENTS', 'CancelFitException', 'CancelEpochException', 'CancelBatchException', 'Callback', 'run_cbs',
           'Learner', 'TrainLearner', 'MomentumLearner',
           'TrainCB', 'DeviceCB', 'SingleBatchCB', 'MetricsCB', 'ProgressCB', 'def_device', 'to_device', 'to_cpu',
           'set_seed', 'LRFinderCB', 'lr_find', 'with_cbs']

_CANCELS = {'fit': CancelFitException, 'epoch': CancelEpochException, 'batch': CancelBatchException}


class with_cbs:
    """Decorator for a method of a learner-like object `o`: run `o.callback('before_<nm>')`, the method, then
    `after_<nm>`; `Cancel<Nm>Exception` skips the rest, `cleanup_<nm>` always runs (the course's loop builder)."""
    def __init__(self, nm: str):
        if nm not in _CANCELS: raise ValueError(f"with_cbs stage must be one of {', '.join(_CANCELS)}; got {nm!r}")
        self.nm = nm

    def __call__(self, f):
        nm, cancel = self.nm, _CANCELS[self.nm]

        def _f(o, *args, **kwargs):
            try:
                o.callback(f'before_{nm}')
                f(o, *args, **kwargs)
                o.callback(f'after_{nm}')
            except cancel: pass
            finally: o.callback(f'cleanup_{nm}')
        _f.__name__, _f.__qualname__, _f.__doc__ = f.__name__, f.__qualname__, f.__doc__
        return _f


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
        self.add_cbs(cbs)

    # --- callbacks -----------------------------------------------------------------------------------------
    def add_cbs(self, cbs):
        """Add callbacks (a list, or one) after checking each is a `Callback` with only real event names."""
        for cb in _cb_list(cbs): self.cbs.append(check_callback(cb))
        self._table = None
        return self

    def remove_cbs(self, cbs):
        """Remove callbacks (a list, or one) that the learner holds."""
        for cb in _cb_list(cbs):
            if cb in self.cbs: self.cbs.remove(cb)
        self._table = None
        return self

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
        if self.training:
            self.backward()
            self.callback('after_backward')
            self.step()
            self.callback('after_step')
            self.zero_grad()

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
        cbs = _cb_list(cbs)
        self.add_cbs(cbs)
        self.apply_pending_cb_states()
        try:
            self.n_epochs, self.epochs = n_epochs, range(start_epoch, n_epochs)
            self.do_valid = valid
            if train and self.opt_func is not None: self.make_opt(lr)
            self._with_events(lambda: self._fit(train, valid), 'fit', CancelFitException)
        finally:
            self.remove_cbs(cbs)
            self.training = False
            self.model.eval()

    def apply_pending_cb_states(self):
        """Give callbacks the states a loaded checkpoint holds for them (matched by class name and position)."""
        if not self.pending_cb_states: return
        from .checkpoint import _cb_keys
        for key, cb in zip(_cb_keys(self.cbs), self.cbs):
            if key in self.pending_cb_states and hasattr(cb, 'load_state_dict'):
                cb.load_state_dict(self.pending_cb_states.pop(key))

    def save(self, path):
        """Save a checkpoint of everything needed to resume exactly (see `miniai.checkpoint`)."""
        from .checkpoint import save_checkpoint
        return save_checkpoint(self, path)

    def load(self, path, weights_only: bool = False):
        """Load a checkpoint; unless `weights_only`, the next fit continues the saved run."""
        from .checkpoint import load_checkpoint
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
    def lr_find(self, gamma=None, max_mult=3, start_lr=None, max_epochs=None, **kwargs):
        """Sweep the lr exponentially over training batches and restore everything: the course's
        `(gamma=1.3, max_mult=3, start_lr=1e-5, max_epochs=10)` or `(start_lr=1e-7, end_lr=10, num_it=100)`;
        see `miniai.lr_finder.lr_find`."""
        return lr_find(self, gamma, max_mult, start_lr, max_epochs, **kwargs)

    def summary(self, xb=None, mods=None):
        """Input and output shapes, parameters and MFLOPS of each of the model's layers on a training batch (a
        markdown table in a notebook); see `miniai.init.summary`."""
        from .init import summary
        return summary(self, xb, mods)

    def show_image_batch(self, max_n: int = 9, cbs=None, **kwargs):
        """Show `max_n` images of the first training batch as the model gets it (after the callbacks and `cbs`
        have transformed it), without training; see `miniai.augment.show_image_batch`."""
        from .augment import show_image_batch
        return show_image_batch(self, max_n, cbs, **kwargs)

    def capture_preds(self, cbs=None, inps: bool = False):
        """`(preds, targs)` (and the inputs with `inps`) over the validation set; `cbs` join for this pass; see
        `miniai.augment.capture_preds`."""
        from .augment import capture_preds
        return capture_preds(self, cbs, inps)

    def fit_one_cycle(self, n_epochs: int, lr_max: float | None = None, pct_start: float = 0.25,
                      moms=(0.95, 0.85, 0.95), wd: float | None = None, cbs=None, **kwargs):
        """Fit with a one-cycle schedule of the lr (and of the momentum-like hyper); see `miniai.sgd.fit_one_cycle`."""
        from .sgd import fit_one_cycle
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
    def __init__(self, model, dls, loss_func, lr=None, cbs=None, opt_func=torch.optim.SGD, mom=0.85):
        self.mom = mom
        super().__init__(model, dls, loss_func, lr, cbs, opt_func)

    def zero_grad(self):
        with torch.no_grad():
            for p in self.model.parameters():
                if p.grad is not None: p.grad *= self.mom


