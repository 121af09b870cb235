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

Metrics rows: `MetricsCB` computes one row per epoch phase (merged over ranks under torch.distributed) and hands it
to every callback that defines `log_row(learn, row)`, in callback order. `row` is a dict: each metric, `loss`,
`epoch`, `phase` ('train' or 'eval') and `seconds`. A consumer that shows the row to the user (ProgressCB) returns
True; when none does, MetricsCB prints it. Under torch.distributed every rank gets the same rows: a consumer that
writes files writes on rank 0 only (`is_main_process`). Consumers: ProgressCB, CSVLoggerCB, SaveModelCB,
EarlyStoppingCB, TensorBoardCB.

Built-in `order` values (lower runs first): DeviceCB -20, BatchTransformCB -10, GradientAccumulationCB -6,
MixedPrecisionCB / ChannelsLastCB / CompileCB -5, GradientClipCB -4, DDPCB -2, TrainCB and schedulers 0,
SingleBatchCB and TerminateOnNaNCB 1, LRFinderCB 5, MetricsCB 10, ProgressCB 11, CSVLoggerCB 12, TensorBoardCB 13,
SaveModelCB 20, EarlyStoppingCB 25. Ties keep the order in which callbacks were added.
"""
from __future__ import annotations

__all__ = ['EVENTS', 'STEPS', 'CancelFitException', 'CancelEpochException', 'CancelBatchException',
           'CancelStepException', 'Callback', 'run_cbs', 'call_cb', 'check_callback']

# The one source of truth for events: the dispatcher, the docs and the tests read this tuple.
EVENTS = ('before_fit', 'after_fit', 'cleanup_fit',
          'before_epoch', 'after_epoch', 'cleanup_epoch',
          'before_batch', 'after_batch', 'cleanup_batch',
          'after_predict', 'after_loss', 'before_backward', 'after_backward', 'before_step', 'after_step')
# The steps of a batch that a callback (TrainCB) or a Learner subclass (TrainLearner) implements.
STEPS = ('predict', 'get_loss', 'backward', 'step', 'zero_grad')


class CancelFitException(Exception):
    """Raise in a callback to stop `fit`: `after_fit` is skipped, `cleanup_fit` still runs."""


class CancelEpochException(Exception):
    """Raise in a callback to end the current epoch phase: `after_epoch` is skipped."""


class CancelBatchException(Exception):
    """Raise in a callback to skip the rest of the batch: `after_batch` is skipped."""


class CancelStepException(Exception):
    """Raise in `before_step` to skip the optimizer step, `after_step` and `zero_grad`: gradients accumulate."""


class Callback:
    """Base class of everything a `Learner` calls at its events; methods take the learner as `learn`."""
    order = 0

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


def _cb_list(cbs) -> list:
    """`cbs` as a list: `None` gives `[]` and a single callback `[cb]`, as the course accepts wherever it takes cbs."""
    return [] if cbs is None else [cbs] if isinstance(cbs, Callback) else list(cbs)
