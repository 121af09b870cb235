"""The event system every `Learner` runs on: `EVENTS`, the cancel exceptions, `Callback` and the dispatcher.

Explained in nbs/02_learner.ipynb.

A training batch runs, in this order (`*` marks a step, done by `TrainCB` or a `TrainLearner` subclass; the rest are
events): before_batch, *predict, after_predict, *get_loss, after_loss, before_backward, *backward, after_backward,
before_step, *step, after_step, *zero_grad, after_batch, cleanup_batch. A validation batch stops after after_loss.

Callbacks receive the learner as their one argument and may read (and, where it makes sense, write):
`model, dls, dl, batch, preds, loss, opt, lr, epoch, epochs, n_epochs, iter, n_iter, iter_count, training`,
`do_valid` and, in a training batch, `backward_done`.

The backward and step protocol (how a callback changes what happens between the loss and the weights):
- `before_backward`: the loss is final. A callback that backprops the loss itself (MixedPrecisionCB under
  float16 backprops the scaled loss) sets `learn.backward_done = True`; the learner then skips its own backward
  step for this batch. `backward_done` is False again at every batch, and `learn.loss` always stays the true loss.
- `after_backward`: gradients exist (still multiplied by the GradScaler's scale under float16).
- `before_step`: raise `CancelStepException` to skip the optimizer step, `after_step` and `zero_grad`, so the
  gradients accumulate into the next batch (GradientAccumulationCB); the batch then ends normally (after_batch
  runs). MixedPrecisionCB unscales the gradients here (order -5), so callbacks ordered after it (GradientClipCB)
  see true gradients, and it cancels the step when they hold inf/nan. A callback that reads the hypers a step
  uses (the lr for a logger) reads them here: schedulers change them in `after_step`.
- `after_step`: runs only after a real optimizer step: per-step schedulers (BatchSchedCB) and recorders act here.

Metrics rows (one vocabulary, used by every table, file, plot and logger): `MetricsCB` makes one row per epoch,
after the epoch's last phase, merged over ranks under torch.distributed, puts it in `learn.metrics_row` and
dispatches the event `after_log`; every consumer (ProgressCB, CSVLoggerCB, SaveModelCB, EarlyStoppingCB,
TensorBoardCB, WandBCB, yours) defines `after_log(self, learn)` and reads `learn.metrics_row`, a dict:
`epoch` (0-based, counting on across fits of one learner), `train_loss`, `valid_loss`, `train_<metric>` and
`valid_<metric>` for each metric, `lr` (the first param group's lr at the epoch's last optimizer step) and `time`
(seconds). A phase that did not run has no keys. Tables show `time` as mm:ss.

Callback order (`order`, lower runs first; ties keep the order in which callbacks were added), as the named
constants of `Order`:

| constant | value | callbacks |
|---|---|---|
| `Order.DEVICE` | -20 | DeviceCB |
| `Order.TRANSFORM` | -10 | BatchTransformCB, InputTransformCB, the course's MixedPrecision and AccelerateCB |
| `Order.ACCUMULATE` | -6 | GradientAccumulationCB |
| `Order.PRECISION` | -5 | MixedPrecisionCB, ChannelsLastCB, CompileCB |
| `Order.CLIP` | -4 | GradientClipCB |
| `Order.DISTRIBUTED` | -2 | DDPCB |
| `Order.TRAIN` | 0 | TrainCB, schedulers, recorders, your callbacks by default |
| `Order.GUARD` | 1 | SingleBatchCB, TerminateOnNaNCB, EMACB |
| `Order.LR_FINDER` | 5 | LRFinderCB |
| `Order.METRICS` | 10 | MetricsCB |
| `Order.PROGRESS` | 11 | ProgressCB |
| `Order.LOGGER` | 12 | CSVLoggerCB, TensorBoardCB, WandBCB |
| `Order.STOPPING` | 15 | EarlyStoppingCB |
| `Order.CHECKPOINT` | 20 | SaveModelCB |
| `Order.LAST` | 1000 | callbacks that look at the batch as the model finally gets it (show_image_batch) |

Isolated passes (`Learner.isolated`, used by `lr_find` and `get_preds`) leave out the callbacks whose
`run_in_isolated_fits` is False: the ones that record or act on real training (metrics, progress, loggers,
checkpoints, early stopping, NaN guards, schedulers, recorders, weight averaging). Evaluations (`fit(train=False)`)
leave out those whose `run_in_evaluations` is False: schedulers, recorders, checkpoints and early stopping, which
act on training epochs only.
"""
from __future__ import annotations

__all__ = ['EVENTS', 'STEPS', 'Order', 'CancelFitException', 'CancelEpochException', 'CancelBatchException',
           'CancelStepException', 'Callback', 'run_cbs', 'call_cb', 'check_callback', 'run_stage', 'as_cb_list']

# The one source of truth for events: the dispatcher, the docs and the tests read this tuple.
EVENTS = ('before_fit', 'after_fit', 'cleanup_fit',
          'before_epoch', 'after_epoch', 'cleanup_epoch', 'after_log',
          'before_batch', 'after_batch', 'cleanup_batch',
          'after_predict', 'after_loss', 'before_backward', 'after_backward', 'before_step', 'after_step')
# The steps of a batch that a callback (TrainCB) or a Learner subclass (TrainLearner) implements.
STEPS = ('predict', 'get_loss', 'backward', 'step', 'zero_grad')


class Order:
    """The named `order` values of the built-in callbacks (the table in this module's docstring)."""
    DEVICE = -20          # moves the batch first: everything after sees it on the device
    TRANSFORM = -10       # batch transforms, on the device
    ACCUMULATE = -6       # cancels the step before it is unscaled
    PRECISION = -5        # autocast and gradient unscaling
    CLIP = -4             # sees unscaled gradients
    DISTRIBUTED = -2      # wraps the model after the callbacks that change it
    TRAIN = 0
    GUARD = 1             # after the loss and the step
    LR_FINDER = 5
    METRICS = 10          # makes the epoch's row and dispatches `after_log`
    PROGRESS = 11
    LOGGER = 12
    STOPPING = 15         # counts the row before the checkpoint saves its state
    CHECKPOINT = 20       # saves last: every other consumer of the row has updated its state
    LAST = 1000


class CancelFitException(Exception):
    """Raise in a callback to stop `fit`: `after_fit` is skipped, `cleanup_fit` still runs."""


class CancelEpochException(Exception):
    """Raise in a callback to end the current epoch phase: `after_epoch` is skipped."""


class CancelBatchException(Exception):
    """Raise in a callback to skip the rest of the batch: `after_batch` is skipped."""


class CancelStepException(Exception):
    """Raise in `before_step` to skip the optimizer step, `after_step` and `zero_grad`: gradients accumulate."""


class Callback:
    """Base class of everything a `Learner` calls at its events; methods take the learner as `learn`.

    `order` places it among the others (see `Order`); `run_in_isolated_fits = False` keeps it out of `lr_find`
    and `get_preds`; `shows_metrics = True` says it shows the metrics rows, so MetricsCB does not print them.
    A callback with state worth resuming defines `state_dict()`/`load_state_dict(sd)`; checkpoints key that
    state by `state_key` (the class name unless set); in `before_fit`, `learn.resuming` says whether the fit
    continues a loaded checkpoint's run (keep that state) or is a new fit (start afresh). `run_in_evaluations =
    False` keeps a callback out of evaluations (`fit(train=False)`), which then leave its state alone.
    """
    order = Order.TRAIN
    run_in_isolated_fits = True
    run_in_evaluations = True
    shows_metrics = False

    @property
    def state_key(self) -> str: return type(self).__name__

    def __repr__(self): return f'{type(self).__name__}()'


_PREFIXES = ('before_', 'after_', 'cleanup_')


def check_callback(cb) -> Callback:
    """Reject `cb` unless it is a `Callback` whose event methods are all real events (a typo never runs silently)."""
    if not isinstance(cb, Callback):
        raise TypeError(f"cbs must hold Callback instances, got {cb!r} of type {type(cb).__name__}; "
                        "did you pass the class instead of an instance, e.g. DeviceCB instead of DeviceCB()?")
    for name in dir(type(cb)):
        if name.startswith(_PREFIXES) and name not in EVENTS and callable(getattr(cb, name, None)):
            raise ValueError(f"{type(cb).__name__}.{name} is not an event; the events are: {', '.join(EVENTS)}")
    return cb


def run_stage(obj, stage: str, body, cancel: type[BaseException]):
    """`before_<stage>`, `body()`, `after_<stage>` through `obj.callback`; `cancel` skips the rest of them, and
    `cleanup_<stage>` always runs. The one implementation of a stage: `Learner` and `with_cbs` both use it."""
    try:
        obj.callback(f'before_{stage}')
        body()
        obj.callback(f'after_{stage}')
    except cancel: pass
    finally: obj.callback(f'cleanup_{stage}')


def _sorted(cbs): return [cb for _, _, cb in sorted((cb.order, i, cb) for i, cb in enumerate(cbs))]


def call_cb(cb, method, name, learn):
    """Call `method(learn)`; a failure gets a note naming the callback and the event (cancels pass untouched)."""
    try: return method(learn)
    except (CancelFitException, CancelEpochException, CancelBatchException, CancelStepException): raise
    except BaseException as e:
        note = f"raised in {type(cb).__name__}.{name}"
        if note not in getattr(e, '__notes__', ()): e.add_note(note)
        raise


def run_cbs(cbs, method_nm: str, learn=None):
    """Call `method_nm(learn)` on each of `cbs` that has it, sorted by `(order, position)`."""
    for cb in _sorted(cbs):
        method = getattr(cb, method_nm, None)
        if method is not None: call_cb(cb, method, method_nm, learn)


def as_cb_list(cbs) -> list:
    """`cbs` as a list: `None` gives `[]` and a single callback `[cb]`, as the course accepts wherever it takes cbs."""
    return [] if cbs is None else [cbs] if isinstance(cbs, Callback) else list(cbs)
