"""The event system every `Learner` runs on: `EVENTS`, the cancel exceptions, `Callback` and the dispatcher.

Explained in nbs/02_learner.ipynb.

Callbacks receive the learner as their one argument and may read (and, where it makes sense, write):
`model, dls, dl, batch, preds, loss, opt, lr, epoch, epochs, n_epochs, iter, n_iter, iter_count, training`.

Built-in `order` values (lower runs first): DeviceCB -20, BatchTransformCB -10, MixedPrecisionCB / ChannelsLastCB /
CompileCB -5, DDPCB -2, TrainCB and schedulers 0, SingleBatchCB and TerminateOnNaNCB 1, LRFinderCB 5, MetricsCB 10,
ProgressCB 11, CSVLoggerCB 12, SaveModelCB 20. Ties keep the order in which callbacks were added.
"""
from __future__ import annotations

__all__ = ['EVENTS', 'STEPS', 'CancelFitException', 'CancelEpochException', 'CancelBatchException',
           'Callback', 'run_cbs', 'call_cb', 'check_callback']

# The one source of truth for events: the dispatcher, the docs and the tests read this tuple.
EVENTS = ('before_fit', 'after_fit', 'cleanup_fit',
          'before_epoch', 'after_epoch', 'cleanup_epoch',
          'before_batch', 'after_batch', 'cleanup_batch',
          'after_predict', 'after_loss', 'after_backward', 'after_step')
# The steps of a batch that a callback (TrainCB) or a Learner subclass (TrainLearner) implements.
STEPS = ('predict', 'get_loss', 'backward', 'step', 'zero_grad')


class CancelFitException(Exception):
    """Raise in a callback to stop `fit`: `after_fit` is skipped, `cleanup_fit` still runs."""


class CancelEpochException(Exception):
    """Raise in a callback to end the current epoch phase: `after_epoch` is skipped."""


class CancelBatchException(Exception):
    """Raise in a callback to skip the rest of the batch: `after_batch` is skipped."""


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
    except (CancelFitException, CancelEpochException, CancelBatchException): raise
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
