"""The callbacks almost every fit uses: TrainCB, DeviceCB, SingleBatchCB, MetricsCB, ProgressCB, CSVLoggerCB.

The device helpers (`def_device`, `to_device`, `to_cpu`) live in `miniai.device` and are re-exported here.

Re-exported by `miniai.learner`; explained in nbs/02_learner.ipynb.
"""
from __future__ import annotations

import csv
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .core import Callback, CancelFitException
from .device import def_device, is_distributed, is_main_process, to_cpu, to_device
from .distributed import reduce_metrics

__all__ = ['def_device', 'to_device', 'to_cpu', 'set_seed', 'loss_with_context', 'TrainCB', 'DeviceCB',
           'SingleBatchCB', 'MetricsCB', 'CSVLoggerCB', 'ProgressCB', 'in_notebook', 'row_header', 'format_row']


def set_seed(seed: int, deterministic: bool = False):
    """Seed python, numpy and torch (CPU and CUDA); `deterministic=True` also asks torch for deterministic kernels.

    DataLoader workers are seeded from torch's generator; `miniai.datasets` gives them a `worker_init_fn` that
    seeds numpy and random too.
    """
    if deterministic: os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # cuBLAS needs it to be exact
    # torch's setter imports torch._inductor (about 2 s of CPU) to set its flag too: skip it when it changes nothing
    if deterministic or torch.are_deterministic_algorithms_enabled() or 'torch._inductor.config' in sys.modules \
            or os.environ.get('TORCHINDUCTOR_DETERMINISTIC') == '1':
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = False if deterministic else torch.backends.cudnn.benchmark
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# Element-wise losses broadcast a (N, 3) output against a (N, 1) target with only a warning: almost always a bug.
_ELEMENTWISE = {F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.binary_cross_entropy,
                F.binary_cross_entropy_with_logits}
_ELEMENTWISE_MODULES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss, nn.BCELoss, nn.BCEWithLogitsLoss)


def _desc(t): return f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__


def loss_with_context(loss_func, preds, targets):
    """`loss_func(preds, *targets)`, with the shapes and dtypes in the message when they don't fit."""
    elementwise = loss_func in _ELEMENTWISE or isinstance(loss_func, _ELEMENTWISE_MODULES)
    if elementwise and len(targets) == 1 and getattr(preds, 'shape', None) != getattr(targets[0], 'shape', None):
        raise ValueError(f"model output {_desc(preds)} and target {_desc(targets[0])} have different shapes, "
                         f"which {getattr(loss_func, '__name__', type(loss_func).__name__)} would silently "
                         "broadcast: make the model's last layer produce the target's shape")
    try: return loss_func(preds, *targets)
    except (RuntimeError, ValueError, IndexError) as e:
        hint = ''
        if targets and isinstance(targets[0], torch.Tensor) and targets[0].is_floating_point() \
                and isinstance(preds, torch.Tensor) and targets[0].dim() == preds.dim() - 1:
            hint = "; for cross entropy the target must be class indices of dtype int64 (e.g. `y.long()`)"
        name = getattr(loss_func, '__name__', type(loss_func).__name__)
        e.add_note(f"{name} got preds {_desc(preds)} and target {', '.join(_desc(t) for t in targets)}: "
                   f"the model's output and the target must fit the loss{hint}")
        raise


class TrainCB(Callback):
    """The usual batch steps for a plain `Learner`: the first `n_inp` items of the batch are inputs, the rest
    targets."""
    def __init__(self, n_inp: int = 1): self.n_inp = n_inp
    def predict(self, learn): learn.preds = learn.model(*learn.batch[:self.n_inp])
    def get_loss(self, learn): learn.loss = loss_with_context(learn.loss_func, learn.preds, learn.batch[self.n_inp:])
    def backward(self, learn): learn.loss.backward()
    def step(self, learn): learn.opt.step()
    def zero_grad(self, learn): learn.opt.zero_grad()


class DeviceCB(Callback):
    """Put the model on `device` (default: cuda, then mps, then cpu) before fit and every batch on it."""
    order = -20  # before anything that looks at the batch
    def __init__(self, device=None): self.device = torch.device(device or def_device)

    def before_fit(self, learn):
        if hasattr(learn.model, 'to'): learn.model.to(self.device)

    def before_batch(self, learn):
        # non_blocking only overlaps when the loader pins its memory; it is a plain copy otherwise
        learn.batch = to_device(learn.batch, self.device, non_blocking=self.device.type == 'cuda')


class SingleBatchCB(Callback):
    """Stop the fit after one batch: a quick check that every part of the loop runs."""
    order = 1
    def after_batch(self, learn): raise CancelFitException()


def _fmt_time(secs): return f"{int(secs // 60):02d}:{int(secs % 60):02d}"


def row_header(row: dict) -> list[str]:
    """The column names a metrics `row` is shown under: its keys, with `time` for `seconds`."""
    return [k for k in row if k != 'seconds'] + ['time']


def format_row(row: dict) -> list[str]:
    """A metrics `row` as display strings: metrics and loss to 3 decimals, then epoch, phase, mm:ss."""
    vals = [f'{v:.3f}' if isinstance(v, float) else str(v) for k, v in row.items() if k != 'seconds']
    return vals + [_fmt_time(row['seconds'])]


class MetricsCB(Callback):
    """torcheval metrics and the loss, weighted by batch size, one row per epoch and phase, handed to consumers.

    Metrics and the loss accumulate on the batch's device; the host reads them once per epoch phase, never per
    batch. Under torch.distributed the row merges every rank's sums first (`reduce_metrics`), so every rank holds
    the global numbers. `history` keeps every row: `{metric: value, ..., 'loss', 'epoch', 'phase', 'seconds'}`.

    Each row goes to every callback of the learner that defines `log_row(learn, row)`, in callback order (this is
    how ProgressCB, CSVLoggerCB, SaveModelCB, EarlyStoppingCB and TensorBoardCB get it). A consumer that shows the
    row returns True; if none does, MetricsCB prints it as a plain table line (rank 0 only), unless its `show` is
    set to False (`metrics.show = False`: rows are kept and handed on, nothing is printed).
    """
    order = 10
    lr_find_excluded = True  # an lr sweep is not training worth a row in the history

    def __init__(self, *ms, **metrics):
        for m in ms: metrics[type(m).__name__] = m
        self.metrics, self.history, self.show = metrics, [], True

    def format_row(self, row): return format_row(row)

    def before_fit(self, learn): self._printed_header = False

    def before_epoch(self, learn):
        for m in self.metrics.values(): m.reset()
        self._loss_sum, self._count, self._start = None, 0, time.perf_counter()

    def after_batch(self, learn):
        y = learn.batch[-1]
        n = len(y)
        for m in self.metrics.values():
            if m.device != y.device: m.to(y.device)
            m.update(learn.preds.detach(), y)
        loss = learn.loss.detach().float() * n  # weighted, so a short last batch counts for what it holds
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._count += n

    def compute_row(self, learn) -> dict:
        """This epoch phase's row, over all ranks under torch.distributed (every rank must call it)."""
        if is_distributed(): self._loss_sum, self._count = reduce_metrics(self.metrics, self._loss_sum, self._count)
        row = {k: float(m.compute()) for k, m in self.metrics.items()}
        row['loss'] = float(self._loss_sum) / self._count if self._count else float('nan')
        row.update(epoch=learn.epoch, phase='train' if learn.model.training else 'eval',
                   seconds=time.perf_counter() - self._start)
        return row

    def after_epoch(self, learn):
        row = self.compute_row(learn)
        self.history.append(row)
        # a learner written in a notebook may keep its callbacks elsewhere: then there are no consumers
        shown = [cb.log_row(learn, row) for cb in sorted(getattr(learn, 'cbs', ()), key=lambda c: c.order)
                 if cb is not self and callable(getattr(cb, 'log_row', None))]
        if self.show and not any(shown): self._print(row)

    def _print(self, row):
        if not is_main_process(): return
        if not self._printed_header: print(*row_header(row)); self._printed_header = True
        print(*format_row(row))

    def state_dict(self): return {'history': list(self.history)}
    def load_state_dict(self, sd): self.history = list(sd['history'])


class CSVLoggerCB(Callback):
    """Append each metrics row (from a `MetricsCB`, see `log_row`) to the CSV file `path` as it comes.

    Columns: epoch, phase, loss, the metrics, lr (the first param group's lr at the epoch's last optimizer step),
    seconds. Rows are flushed at once, so a crash keeps them. Only rank 0 writes.
    """
    order = MetricsCB.order + 2
    lr_find_excluded = True

    def __init__(self, path): self.path, self.lr = path, float('nan')

    def before_step(self, learn):  # the lr this step uses (schedulers change it in after_step)
        groups = getattr(learn.opt, 'param_groups', None)
        self.lr = groups[0]['lr'] if groups else getattr(learn.opt, 'lr', float('nan'))

    def log_row(self, learn, row: dict):
        """Write `row` (with the lr of the last step) as one line of the CSV file."""
        if not is_main_process(): return
        row = {**row, 'lr': self.lr}
        cols = ['epoch', 'phase', 'loss'] + [k for k in row if k not in ('epoch', 'phase', 'loss', 'lr', 'seconds')]
        cols += ['lr', 'seconds']
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        if not new:  # appending to a file that has a header already (a resumed run): keep its columns
            with open(self.path, newline='') as f: cols = next(csv.reader(f), None) or cols
        with open(self.path, 'a', newline='') as f:
            w = csv.DictWriter(f, fieldnames=cols, restval='', extrasaction='ignore')
            if new: w.writeheader()
            w.writerow(row)


def in_notebook() -> bool:
    """True inside a Jupyter kernel, where fastprogress draws HTML bars."""
    try:
        from IPython import get_ipython
        return get_ipython() is not None and 'IPKernelApp' in get_ipython().config
    except Exception: return False


class ProgressCB(Callback):
    """fastprogress bars in a notebook or terminal (`plot=True`: live loss curve in a notebook).

    When output is not a terminal (CI, a log file) it draws no bars: the log gets the metrics table, one line per
    epoch phase, and nothing per batch. Losses are read from the device at most every `min_interval` seconds.
    Under torch.distributed only rank 0 draws and prints; every rank keeps its own `losses`.
    """
    order = MetricsCB.order + 1
    lr_find_excluded = True

    def __init__(self, plot: bool = False, min_interval: float = 0.25, interactive: bool | None = None):
        self.plot, self.min_interval, self.interactive = plot, min_interval, interactive
        self.losses, self.val_losses, self.main = [], [], True
        # what cleanup_fit reads, so it also runs when an earlier callback's before_fit raised
        self._pending, self.live, self.metrics, self._resumed = [], False, None, None

    def before_fit(self, learn):
        from fastprogress import master_bar
        self.main = is_main_process()  # the other ranks draw and print nothing
        self.live = self.main and (self.interactive if self.interactive is not None else
                                   (in_notebook() or sys.stdout.isatty()))
        self.notebook = in_notebook()
        r, self._resumed = self._resumed, None        # a loaded checkpoint's curve continues; a new fit starts anew
        self.losses, self.val_losses = (list(r['losses']), list(r['val_losses'])) if r else ([], [])
        self._pending, self._last, self._first = [], 0., True
        if self.live: learn.epochs = self.mbar = master_bar(learn.epochs)

    def _write(self, vals, table=True):
        if not self.main: return
        if self.live: self.mbar.write(vals, table=table)
        else: print(*vals, flush=True)

    def log_row(self, learn, row: dict) -> bool:
        """Show a MetricsCB row in the bar's table (or as a printed line); True: MetricsCB need not print it."""
        if self._first: self._write(row_header(row)); self._first = False
        self._write(format_row(row))
        if row['phase'] == 'eval': self.val_losses.append(row['loss'])
        self._got_row = True
        return True

    def before_epoch(self, learn):
        if self.live:
            from fastprogress import progress_bar
            learn.dl = progress_bar(learn.dl, leave=False, parent=self.mbar)
        self._t0, self._got_row = time.perf_counter(), False

    def _flush(self):
        if self._pending: self.losses += torch.stack(self._pending).float().cpu().tolist()  # one sync for many
        self._pending = []

    def after_batch(self, learn):
        if not learn.training: return
        self._pending.append(learn.loss.detach())
        now = time.perf_counter()
        if now - self._last < self.min_interval: return
        self._last = now
        self._flush()
        if self.live: self.mbar.child.comment = f'{self.losses[-1]:.3f}'
        if self.live and self.plot and self.notebook: self._draw()

    def _draw(self):
        graphs = [[list(range(len(self.losses))), self.losses]]
        if self.val_losses:
            n = max(len(self.losses) // max(len(self.val_losses), 1), 1)
            graphs.append([[n * (i + 1) for i in range(len(self.val_losses))], self.val_losses])
        self.mbar.update_graph(graphs)

    def after_epoch(self, learn):
        if not self._got_row and not self.live and self.main:  # no MetricsCB: a line of our own
            self._flush()
            phase = 'train' if learn.training else 'eval'
            last = f", last loss {self.losses[-1]:.3f}" if learn.training and self.losses else ''
            print(f"epoch {learn.epoch} {phase}: {_fmt_time(time.perf_counter() - self._t0)}{last}", flush=True)

    def cleanup_fit(self, learn):
        self._flush()
        if self.live and self.plot and self.notebook and self.losses: self._draw()

    def state_dict(self):
        """The losses so far, so that a resumed run's curve (e.g. `miniai train`'s training.png) shows the whole run."""
        self._flush()
        return {'losses': list(self.losses), 'val_losses': list(self.val_losses)}

    def load_state_dict(self, sd): self._resumed = sd
