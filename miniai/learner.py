"""The `Learner` and its training loop; every step is an event that callbacks hook into.

Explained in nbs/02_learner.ipynb. The callbacks every fit uses live in `miniai.callbacks` and are re-exported
here, so the course's `from miniai.learner import *` gives them all.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .callbacks import (
    DeviceCB,
    MetricsCB,
    ProgressCB,
    SingleBatchCB,
    TrainCB,
    def_device,
    loss_with_context,
    set_seed,
    to_cpu,
    to_device,
)
from .checkpoint import callback_keys, load_checkpoint, save_checkpoint, set_rng_state
from .core import (
    EVENTS,
    STEPS,
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
    as_cb_list,
    call_cb,
    check_callback,
    run_cbs,
    run_stage,
)
from .lr_finder import LRFinderCB, lr_find
from .sgd.callbacks import fit_one_cycle

__all__ = ['EVENTS', 'CancelFitException', 'CancelEpochException', 'CancelBatchException', 'CancelStepException',
           'Callback', 'run_cbs',
           'Learner', 'TrainLearner', 'MomentumLearner',
           'TrainCB', 'DeviceCB', 'SingleBatchCB', 'MetricsCB', 'ProgressCB', 'def_device', 'to_device', 'to_cpu',
           'set_seed', 'LRFinderCB', 'lr_find', 'with_cbs']

# the stages that have a cancel exception of their own (`with_cbs`)
_CANCELS = {'fit': CancelFitException, 'epoch': CancelEpochException, 'batch': CancelBatchException,
            'step': CancelStepException}
# what a fit changes on the learner, which `Learner.isolated` puts back
_FIT_STATE = ('epoch', 'epochs', 'n_epochs', 'epoch_offset', 'last_train_epoch', 'iter_count', 'dls', 'dl',
              'iter', 'n_iter', 'batch', 'preds', 'loss', 'training', 'do_train', 'do_valid', 'metrics_row',
              'resume_epoch', 'resume_rng', 'resuming')


class _NeverRaised(Exception):
    """The cancel exception of a `with_cbs` stage that has none: nothing raises it, so nothing is swallowed."""


class with_cbs:
    """Decorator for a method of a learner-like object `o`: run `o.callback('before_<nm>')`, the method, then
    `after_<nm>`; `cleanup_<nm>` always runs (the course's loop builder).

    Any name is a stage, as in the course (its draft notebook `_learner_cb_chain` wraps each method of a callback
    this way). For `fit`, `epoch`, `batch` and `step`, raising `Cancel<Nm>Exception` skips the rest of the stage;
    other stages have no cancel exception, so every exception goes up.
    """
    def __init__(self, nm: str):
        if not isinstance(nm, str) or not nm.isidentifier():
            raise ValueError(f"with_cbs takes the stage's name, which becomes the events before_<name> and "
                             f"after_<name>, e.g. with_cbs('batch'); got {nm!r}")
        self.nm = nm

    def __call__(self, f):
        nm, cancel = self.nm, _CANCELS.get(self.nm, _NeverRaised)

        def _f(o, *args, **kwargs): run_stage(o, nm, lambda: f(o, *args, **kwargs), cancel)
        _f.__name__, _f.__qualname__, _f.__doc__ = f.__name__, f.__qualname__, f.__doc__
        return _f


def _check_dls(dls):
    if isinstance(dls, (tuple, list)) and all(isinstance(o, int) for o in dls): return dls  # the `(0,)` placeholder
    train = getattr(dls, 'train', None)
    if train is None or not isinstance(train, Iterable):
        raise TypeError(f"dls must have a `.train` loader (and `.valid`), e.g. DataLoaders(train_dl, valid_dl); "
                        f"got {type(dls).__name__}")
    return dls


def _empty(dl) -> bool:
    return dl is not None and hasattr(dl, '__len__') and len(dl) == 0


def _check_lr(lr):
    try: ok = lr is None or 0 <= float(lr) < math.inf         # written so that NaN fails
    except (TypeError, ValueError): return lr                  # not one number (e.g. per-group): the optimizer checks
    if not ok:
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}: a NaN or infinite learning rate turns every "
                         "weight into NaN at the first step (try lr=1e-3, or find one with learn.lr_find())")
    return lr


class Learner:
    """Trains `model` on `dls` with `loss_func`; `opt_func(params, lr=lr)` makes the optimizer, `cbs` do the rest.

    `opt_func=None` makes no optimizer (as in the course): a learner that only evaluates or extracts features.
    """
    preprocess = None  # a `miniai.preprocess.Preprocess`: how raw images become inputs (else `dls.preprocess`)

    def __init__(self, model: nn.Module, dls=(0,), loss_func=F.mse_loss, lr: float = 0.1, cbs=None,
                 opt_func=torch.optim.SGD):
        if opt_func is not None and not callable(opt_func):
            raise TypeError(f"opt_func must be callable as opt_func(params, lr=lr), e.g. torch.optim.SGD or "
                            f"partial(torch.optim.AdamW, wd=0.01), or None for no optimizer; got {opt_func!r}")
        self.model, self.dls, self.loss_func, self.opt_func = model, _check_dls(dls), loss_func, opt_func
        self.lr = _check_lr(lr)
        self.cbs, self.opt, self.training, self.epoch, self.iter_count = [], None, False, 0, 0
        self.epoch_offset = 0  # epochs of this learner's earlier fits: logs go on counting from there
        self.last_train_epoch = None  # the last epoch (of its own) the latest training fit reached
        # set by `load`, used by the next training fit
        self.pending_cb_states, self.resume_epoch, self.resume_rng = {}, None, None
        # True during a training fit that continues a loaded checkpoint's run: callbacks keep the state it gave
        # them (a best so far, a history) instead of starting afresh, as they do in a new fit
        self.resuming = False
        self.add_cbs(cbs)

    # --- callbacks -----------------------------------------------------------------------------------------
    def add_cbs(self, cbs):
        """Add callbacks (a list, or one) after checking each is a `Callback` with only real event names."""
        for cb in as_cb_list(cbs): self.cbs.append(check_callback(cb))
        self._table = None
        return self

    def remove_cbs(self, cbs):
        """Remove callbacks (a list, or one) that the learner holds (the others are ignored)."""
        for cb in as_cb_list(cbs):
            if cb in self.cbs: self.cbs.remove(cb)
        self._table = None
        return self

    @contextmanager
    def added_cbs(self, cbs):
        """Add `cbs` (a list, one callback or None) for the `with` block only; they are removed however it ends."""
        cbs = as_cb_list(cbs)
        self.add_cbs(cbs)
        try: yield self
        finally: self.remove_cbs(cbs)

    @contextmanager
    def removed_cbs(self, cbs):
        """Take `cbs` out for the `with` block only; they come back at their old places however it ends."""
        before, out = list(self.cbs), {id(cb) for cb in as_cb_list(cbs)}
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
        methods = self._table.get(name)
        if methods is None:
            raise ValueError(f"{name!r} is not an event of {type(self).__name__}, so no callback can have it; the "
                             f"events are: {', '.join(EVENTS)} (and the steps {', '.join(STEPS)}). A method "
                             "decorated with with_cbs(stage) needs before_, after_ and cleanup_ events of its stage: "
                             "fit, epoch or batch")
        for cb, method in methods: call_cb(cb, method, name, self)

    # --- the loop ------------------------------------------------------------------------------------------
    def _with_events(self, body, stage: str, cancel): run_stage(self, stage, body, cancel)

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
            if train: self.last_train_epoch = self.epoch
            if train: self.one_epoch(True)
            if valid:
                with torch.no_grad(): self.one_epoch(False)

    def make_opt(self, lr=None):
        """Create `self.opt` with `opt_func(params, lr=lr)` if there is none yet; else set its groups' `lr`."""
        lr = self.lr if lr is None else _check_lr(lr)
        if self.opt is None: self.opt = self.opt_func(self.model.parameters(), lr=lr)
        elif hasattr(self.opt, 'param_groups'):
            for g in self.opt.param_groups: g['lr'] = lr
        else: self.opt.lr = lr
        return self.opt

    def fit(self, n_epochs: int = 1, train: bool = True, valid: bool = True, cbs=None, lr: float | None = None,
            start_epoch: int | None = None):
        """Train for `n_epochs` (validating after each unless `valid=False`); `cbs` are only added for this fit.

        After `load` of a checkpoint, the next training fit starts at the epoch after the saved one (or repeats the
        epoch a checkpoint saved inside one was in) and continues its run: `resuming` is True while it runs, so
        callbacks carry on with the state the checkpoint gave them (a best so far, an early-stopping count, a
        schedule, a loss curve). With `start_epoch` given it is a new fit instead, and those start afresh as in any
        new fit. An evaluation (`train=False`) leaves the resume to the next training fit.
        """
        if not isinstance(n_epochs, int) or isinstance(n_epochs, bool) or n_epochs < 1:
            raise ValueError(f"n_epochs must be an integer >= 1, got {n_epochs!r}")
        if train: self.check_train_loader()
        if train and self.opt_func is None and self.opt is None:
            raise ValueError("this learner has no optimizer (it was made with opt_func=None), so it cannot train: "
                             "pass train=False to only evaluate, or make it with an opt_func such as torch.optim.SGD")
        # only a training fit continues a loaded checkpoint (a validation-only fit leaves it for the next)
        resuming = train and start_epoch is None and self.resume_epoch is not None
        if start_epoch is None: start_epoch = (self.resume_epoch or 0) if train else 0
        if start_epoch >= n_epochs:   # checked before anything changes: the learner stays as it was
            raise ValueError(f"nothing to train: this {n_epochs}-epoch fit would start at epoch {start_epoch}, "
                             "after the epochs the loaded checkpoint finished; fit more epochs to continue its run "
                             f"(e.g. fit({start_epoch + 1})), or fit(n, start_epoch=0) for n more epochs as a new fit, "
                             "from the loaded weights")
        rng = self.resume_rng if resuming else None
        kept_epoch = None if train else self.epoch   # an evaluation leaves the run's epoch where it stood
        if train:
            self.resume_epoch = self.resume_rng = None
            # a new training fit's rows go on from the epoch after the last one the previous fit reached (a resumed
            # one continues the loaded fit's numbering)
            if not resuming and self.last_train_epoch is not None:
                self.epoch_offset += self.last_train_epoch + 1
            self.last_train_epoch = None
        if valid and _empty(getattr(self.dls, 'valid', None)):
            warnings.warn("the validation loader is empty (0 batches): fit skips validation, so there is no "
                          "valid_loss or valid_ metric; give dls a non-empty `.valid` loader, or pass valid=False",
                          stacklevel=2)
            valid = False
        # an evaluation is no training epoch: schedulers, recorders, checkpoints and early stopping sit it out
        resting = [] if train else [cb for cb in self.cbs + as_cb_list(cbs)
                                    if not getattr(cb, 'run_in_evaluations', True)]
        with self.added_cbs(cbs), self.removed_cbs(resting):
            try:
                self.resuming = resuming
                if rng is not None: set_rng_state(rng)   # the checkpoint's draws, whatever ran since the load
                self.apply_pending_cb_states()
                self.n_epochs, self.epochs = n_epochs, range(start_epoch, n_epochs)
                self.epoch, self.do_train, self.do_valid = start_epoch, train, valid
                if train and self.opt_func is not None: self.make_opt(lr)
                self._with_events(lambda: self._fit(train, valid), 'fit', CancelFitException)
            finally:
                self.training = self.resuming = False
                if kept_epoch is not None: self.epoch = kept_epoch   # so a checkpoint saved next is the run's
                self.model.eval()

    @property
    def run_epoch(self) -> int:
        """The epoch's number in this learner's whole run: `epoch` plus the epochs of earlier fits (what logs show).
        In a validation-only fit, the number of the last epoch trained: the one whose weights it evaluates."""
        if not getattr(self, 'do_train', True) and self.last_train_epoch is not None:
            return self.epoch_offset + self.last_train_epoch
        return self.epoch_offset + self.epoch

    def apply_pending_cb_states(self):
        """Give callbacks the states a loaded checkpoint holds for them (matched by `state_key`)."""
        if not self.pending_cb_states: return
        for key, cb in zip(callback_keys(self.cbs), self.cbs):
            if key in self.pending_cb_states and hasattr(cb, 'load_state_dict'):
                cb.load_state_dict(self.pending_cb_states.pop(key))

    @contextmanager
    def isolated(self, weights: bool = False):
        """A `with` block whose fits leave no trace: the callbacks with `run_in_isolated_fits = False` (metrics,
        progress, loggers, checkpoints, early stopping) sit it out, and the learner's fit state (epoch and step
        counters, `dls`, the batch, the model's mode) is put back after it. With `weights`, so are the model's
        weights, the optimizer's state and torch's RNG (`lr_find` trains inside the block; `get_preds` does not)."""
        saved = {k: vars(self)[k] for k in _FIT_STATE if k in vars(self)}
        was_training = self.model.training
        if weights:
            import copy
            model_state, opt = copy.deepcopy(self.model.state_dict()), self.opt
            opt_state = copy.deepcopy(opt.state_dict()) if hasattr(opt, 'state_dict') else None
            rng = torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        out = [cb for cb in self.cbs if not getattr(cb, 'run_in_isolated_fits', True)]
        try:
            with self.removed_cbs(out): yield self
        finally:
            for k in _FIT_STATE:
                if k in saved: setattr(self, k, saved[k])
                else: vars(self).pop(k, None)
            self.model.train(was_training)
            if weights:
                self.model.load_state_dict(model_state)
                self.opt = opt
                if opt_state is not None: opt.load_state_dict(opt_state)
                torch.set_rng_state(rng[0])
                if rng[1] is not None: torch.cuda.set_rng_state_all(rng[1])

    def save(self, path):
        """Save a checkpoint of everything needed to resume exactly (see `miniai.checkpoint`)."""
        return save_checkpoint(self, path)

    def load(self, path, weights_only: bool = False):
        """Load a checkpoint; unless `weights_only`, the next training fit continues the saved run."""
        load_checkpoint(self, path, weights_only=weights_only)
        return self

    def check_train_loader(self):
        """Raise a clear error before any callback runs if there is nothing to train on: no `dls.train`, or an
        empty one. `fit` and `lr_find` call it first, so a mistake in the data never reaches the loop."""
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

    def get_preds(self, dl=None, with_input: bool = False, with_decoded: bool = False, tta: bool = False,
                  tfm: Callable | None = None, act: Callable | str | None = 'auto') -> tuple[torch.Tensor, ...]:
        """`(preds, targs)` over `dl` (default `dls.valid`) as CPU tensors; `(inputs, ...)` first with `with_input`,
        the argmax classes last with `with_decoded`. `preds` are probabilities when the loss is cross entropy, the
        raw outputs otherwise (`act` overrides: a function, or None for raw); `tta` averages the same values with
        those on `tfm(inputs)` (default: flips). See `miniai.augment.get_preds`."""
        from .augment import get_preds, hflip
        res = get_preds(self, dl, with_input=with_input, tta=tta, tfm=tfm or hflip, act=act)
        return (*res, res[-2].argmax(-1)) if with_decoded else res

    def classify(self, items, bs: int = 256):
        """Class names and probabilities for one new image or a batch; see `miniai.predictions.classify` for how
        shapes are read.

        Not named `predict`: that is the loop step running the model on `self.batch`, which subclasses override."""
        from .predictions import classify
        return classify(self, items, bs=bs)

    def export(self, path):
        """Write the weights, preprocessing and (for a built-in architecture) its name and arguments to one file with
        its SHA-256 beside it; see `miniai.predictions.export`."""
        from .predictions import export
        return export(self, path)

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
    def __init__(self, model, dls, loss_func, lr: float | None = None, cbs=None, opt_func=torch.optim.SGD,
                 mom: float = 0.85):
        self.mom = mom
        # the course's signature has lr=None; without an lr the learner's own default (0.1) trains
        super().__init__(model, dls, loss_func, 0.1 if lr is None else lr, cbs, opt_func)

    def zero_grad(self):
        with torch.no_grad():
            for p in self.model.parameters():
                if p.grad is not None: p.grad *= self.mom


