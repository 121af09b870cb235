"""The callbacks almost every fit uses: TrainCB, DeviceCB, SingleBatchCB, MetricsCB, ProgressCB; device helpers.

Re-exported by `miniai.learner`; explained in nbs/02_learner.ipynb.
"""
from __future__ import annotations

import csv
import os
import random
import sys
import time
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .core import CancelFitException, Callback
from .distributed import is_main_process

__all__ = ['def_device', 'to_device', 'to_cpu', 'set_seed', 'loss_with_context', 'TrainCB', 'DeviceCB',
           'SingleBatchCB', 'MetricsCB', 'CSVLoggerCB', 'ProgressCB', 'in_notebook']

def_device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'


def to_device(x, device=def_device, non_blocking: bool = False):
    """Move a tensor, or the tensors inside nested dicts, lists and tuples, to `device`."""
    if isinstance(x, torch.Tensor): return x.to(device, non_blocking=non_blocking)
    if isinstance(x, Mapping): return {k: to_device(v, device, non_blocking) for k, v in x.items()}
    if isinstance(x, (list, tuple)): return type(x)(to_device(o, device, non_blocking) for o in x)
    return x


def to_cpu(x):
    """Detached CPU copies of the tensors in `x` (float16/bfloat16 become float32, so numpy can read them)."""
    if isinstance(x, Mapping): return {k: to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)): return type(x)(to_cpu(o) for o in x)
    if not isinstance(x, torch.Tensor): return x
    res = x.detach().cpu()
    return res.float() if res.dtype in (torch.float16, torch.bfloat16) else res


def set_seed(seed: int, deterministic: bool = False):
    """Seed python, numpy and torch (CPU and CUDA); `deterministic=True` also asks torch for deterministic kernels.

    DataLoader workers are seeded from torch's generator; `miniai.datasets` gives them a `worker_init_fn` that
    seeds numpy and random too.
    """
    if deterministic: os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # cuBLAS needs it to be exact
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
    """The usual batch steps for a plain `Learner`: the first `n_inp` items of the batch are inputs, the rest targets."""
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


class MetricsCB(Callback):
    """torcheval metrics and the loss, weighted by batch size, one row per epoch and phase.

    Metrics and the loss accumulate on the batch's device; the host reads them once per epoch phase, never per
    batch. `history` keeps every row as numbers (metrics, loss, epoch, phase, seconds). Under `DDPCB`, `reducer`
    merges all ranks' sums before each row, so every rank holds the global numbers; only rank 0 prints them.
    """
    order = 10
    lr_find_excluded = True  # an lr sweep is not training worth a row in the history

    def __init__(self, *ms, **metrics):
        for m in ms: metrics[type(m).__name__] = m
        self.metrics, self.history, self.logger, self.reducer = metrics, [], None, None

    def _log(self, row):
        if self.logger is not None: return self.logger(row)
        if not is_main_process(): return
        if not self._printed_header: print(*self._header(row)); self._printed_header = True
        print(*self.format_row(row))

    def _header(self, row): return [k for k in row if k != 'seconds'] + ['time']

    def format_row(self, row):
        """The row as display strings: metrics and loss to 3 decimals, then epoch, phase, mm:ss."""
        vals = [f'{v:.3f}' if isinstance(v, float) else str(v) for k, v in row.items() if k != 'seconds']
        return vals + [_fmt_time(row['seconds'])]

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

    def after_epoch(self, learn):
        if self.reducer is not None:  # DDPCB: the sums over all ranks
            self._loss_sum, self._count = self.reducer(self.metrics, self._loss_sum, self._count)
        row = {k: float(m.compute()) for k, m in self.metrics.items()}
        row['loss'] = float(self._loss_sum) / self._count if self._count else float('nan')
        row.update(epoch=learn.epoch, phase='train' if learn.model.training else 'eval',
                   seconds=time.perf_counter() - self._start)
        self.history.append(row)
        self._log(row)

    def state_dict(self): return {'history': list(self.history)}
    def load_state_dict(self, sd): self.history = list(sd['history'])


class CSVLoggerCB(Callback):
    """Append each row of `metrics` (a `MetricsCB`; default: the learner's) to the CSV file `path` as it comes.

    Columns: epoch, phase, loss, the metrics, seconds. Rows are flushed at once, so a crash keeps them.
    """
    order = MetricsCB.order + 2

    def __init__(self, path, metrics: MetricsCB | None = None): self.path, self.metrics = path, metrics

    def before_fit(self, learn):
        if self.metrics is None: self.metrics = next((c for c in learn.cbs if isinstance(c, MetricsCB)), None)
        if self.metrics is None: raise ValueError("CSVLoggerCB needs a MetricsCB in the learner's callbacks")
        self._done = len(self.metrics.history)

    def after_epoch(self, learn):
        rows = self.metrics.history[self._done:]
        self._done = len(self.metrics.history)
        if not rows or not is_main_process(): return
        cols = ['epoch', 'phase', 'loss'] + [k for k in rows[0] if k not in ('epoch', 'phase', 'loss', 'seconds')]
        cols.append('seconds')
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, 'a', newline='') as f:
            w = csv.DictWriter(f, fieldnames=cols)
            if new: w.writeheader()
            w.writerows(rows)


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

    def before_fit(self, learn):
        from fastprogress import master_bar
        self.main = is_main_process()  # the other ranks draw and print nothing
        self.live = self.main and (self.interactive if self.interactive is not None else
                                   (in_notebook() or sys.stdout.isatty()))
        self.notebook = in_notebook()
        self.losses, self.val_losses, self._pending, self._last, self._first = [], [], [], 0., True
        self.metrics = next((cb for cb in learn.cbs if isinstance(cb, MetricsCB)), None)
        if self.metrics is not None: self.metrics.logger = self._log
        if self.live: learn.epochs = self.mbar = master_bar(learn.epochs)

    def _write(self, vals, table=True):
        if not self.main: return
        if self.live: self.mbar.write(vals, table=table)
        else: print(*vals, flush=True)

    def _log(self, row):
        if self._first: self._write(self.metrics._header(row)); self._first = False
        self._write(self.metrics.format_row(row))
        if row['phase'] == 'eval': self.val_losses.append(row['loss'])

    def before_epoch(self, learn):
        if self.live:
            from fastprogress import progress_bar
            learn.dl = progress_bar(learn.dl, leave=False, parent=self.mbar)
        if not self.metrics and not self.live: self._t0 = time.perf_counter()

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
        if not self.metrics and not self.live and self.main:
            self._flush()
            phase = 'train' if learn.training else 'eval'
            last = f", last loss {self.losses[-1]:.3f}" if learn.training and self.losses else ''
            print(f"epoch {learn.epoch} {phase}: {_fmt_time(time.perf_counter() - self._t0)}{last}", flush=True)

    def cleanup_fit(self, learn):
        self._flush()
        if self.live and self.plot and self.notebook and self.losses: self._draw()
        if self.metrics is not None: self.metrics.logger = None
