"""The callbacks almost every fit uses: TrainCB, DeviceCB, SingleBatchCB, MetricsCB, ProgressCB, CSVLoggerCB.

The device helpers (`def_device`, `to_device`, `to_cpu`) live in `miniai.device` and are re-exported here.

Re-exported by `miniai.learner`; explained in nbs/02_learner.ipynb.
"""
from __future__ import annotations

import csv
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .core import Callback, CancelFitException, Order
from .device import def_device, detached, is_distributed, is_main_process, to_cpu, to_device
from .distributed import reduce_metrics
from .sgd.schedules import get_mom

__all__ = ['def_device', 'to_device', 'to_cpu', 'set_seed', 'loss_with_context', 'TrainCB', 'DeviceCB',
           'SingleBatchCB', 'MetricsCB', 'CSVLoggerCB', 'ProgressCB', 'in_notebook', 'row_header', 'format_row',
           'resolve_monitor', 'monitor_mode', 'improved', 'PHASES', 'step_scalars']


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
    order = Order.DEVICE  # before anything that looks at the batch
    def __init__(self, device=None): self.device = torch.device(device or def_device)

    def before_fit(self, learn):
        if hasattr(learn.model, 'to'): learn.model.to(self.device)

    def before_batch(self, learn):
        # non_blocking only overlaps when the loader pins its memory; it is a plain copy otherwise
        learn.batch = to_device(learn.batch, self.device, non_blocking=self.device.type == 'cuda')


class SingleBatchCB(Callback):
    """Stop the fit after one batch: a quick check that every part of the loop runs."""
    order = Order.GUARD
    def after_batch(self, learn): raise CancelFitException()


def _fmt_time(secs): return f"{int(secs // 60):02d}:{int(secs % 60):02d}"


def row_header(row: dict) -> list[str]:
    """The column names a metrics `row` is shown under: its keys, as they are named everywhere."""
    return list(row)


def format_row(row: dict) -> list[str]:
    """A metrics `row` as display strings: losses and metrics to 3 decimals, the lr to 3 significant digits, the
    epoch as it is and `time` as mm:ss."""
    def fmt(k, v):
        if k == 'time': return _fmt_time(v)
        if k == 'lr': return f'{v:.3g}'
        return f'{v:.3f}' if isinstance(v, float) else str(v)
    return [fmt(k, v) for k, v in row.items()]


PHASES = ('train', 'valid')


class MetricsCB(Callback):
    """torcheval metrics and the loss, weighted by batch size, as one row per epoch for every logger.

    The row (see `miniai.core`): `epoch`, `train_loss`, `valid_loss`, `train_<name>` and `valid_<name>` for each
    metric, `lr` and `time`; it is appended to `history`, put in `learn.metrics_row`, and handed to every callback
    through the `after_log` event. `epoch` counts on across fits of one learner. Metrics and the loss accumulate on
    the batch's device; the host reads them once per epoch phase, never per batch. Under torch.distributed each
    phase merges every rank's sums first (`reduce_metrics`), so every rank holds the global numbers. Unless a
    callback that shows rows (`shows_metrics`, e.g. ProgressCB) is there, MetricsCB prints each row (rank 0 only;
    `metrics.show = False` turns that off). A validation-only fit (`fit(train=False)`, an evaluation) prints its row
    but does not log it: no history entry, no `after_log`, so no CSV line, checkpoint or early-stopping count; its
    `epoch` is the last epoch trained, the one whose weights it evaluates.
    """
    order = Order.METRICS
    run_in_isolated_fits = False  # an lr sweep or a prediction pass is not training worth a row in the history

    def __init__(self, *ms, **metrics):
        for m in ms: metrics[type(m).__name__] = m
        self.metrics, self.history, self.show = metrics, [], True
        self._row, self._lr = None, None

    def columns(self, train: bool = True, valid: bool = True) -> list[str]:
        """The keys of the rows a fit with these phases makes, in their order."""
        phases = [ph for ph, on in zip(PHASES, (train, valid)) if on]
        cols = ['epoch'] + [f'{ph}_loss' for ph in phases]
        cols += [f'{ph}_{name}' for name in self.metrics for ph in phases]
        return cols + (['lr'] if train else []) + ['time']

    def format_row(self, row): return format_row(row)

    def before_fit(self, learn):
        self._printed_header, self._row = False, None
        if getattr(learn, 'resuming', False):   # a checkpoint taken inside an epoch repeats it: the rows of the
            start = getattr(learn, 'run_epoch', getattr(learn, 'epoch', 0))   # epochs to come go
            self.history = [r for r in self.history if r.get('epoch', -1) < start]

    def before_epoch(self, learn):
        for m in self.metrics.values(): m.reset()
        self._loss_sum, self._count = None, 0
        epoch = getattr(learn, 'run_epoch', learn.epoch)
        if self._row is None or self._row['epoch'] != epoch:
            self._row, self._lr, self._start = {'epoch': epoch}, None, time.perf_counter()

    def before_step(self, learn):  # the lr this step uses (schedulers change it in after_step)
        groups = getattr(learn.opt, 'param_groups', None)
        self._lr = groups[0]['lr'] if groups else getattr(learn.opt, 'lr', None)

    def after_batch(self, learn):
        y = learn.batch[-1]
        n = len(y)
        for m in self.metrics.values():
            if m.device != y.device: m.to(y.device)
            m.update(detached(learn.preds), y)   # a tuple for a model with several outputs (a VAE's)
        loss = learn.loss.detach().float() * n  # weighted, so a short last batch counts for what it holds
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._count += n

    def compute_row(self, learn) -> dict:
        """This epoch phase's values, named `<phase>_loss` and `<phase>_<metric>`, over all ranks under
        torch.distributed (every rank must call it)."""
        if is_distributed(): self._loss_sum, self._count = reduce_metrics(self.metrics, self._loss_sum, self._count)
        phase = 'train' if learn.model.training else 'valid'
        vals = {f'{phase}_loss': float(self._loss_sum) / self._count if self._count else float('nan')}
        vals.update({f'{phase}_{k}': float(m.compute()) for k, m in self.metrics.items()})
        return vals

    def after_epoch(self, learn):
        if self._row is None: return
        self._row.update(self.compute_row(learn))
        # the row is complete after the epoch's last phase: validation, or training in a fit without it
        if learn.model.training and getattr(learn, 'do_valid', True): return
        row, self._row = self._row, None
        order = self.columns()
        row = {k: row[k] for k in sorted(row, key=lambda k: order.index(k) if k in order else len(order))}
        if self._lr is not None: row['lr'] = float(self._lr)
        row['time'] = time.perf_counter() - self._start
        if not getattr(learn, 'do_train', True):   # an evaluation: shown, but not an epoch of the run's logs
            if self.show: self._print(row)
            return
        self.history.append(row)
        learn.metrics_row = row
        shown = any(getattr(cb, 'shows_metrics', False) for cb in getattr(learn, 'cbs', ()))
        if self.show and not shown: self._print(row)   # first: what consumers print comes after the row
        if hasattr(learn, 'callback'): learn.callback('after_log')

    def _print(self, row):
        if not is_main_process(): return
        if not self._printed_header: print(*row_header(row)); self._printed_header = True
        print(*format_row(row))

    def state_dict(self): return {'history': list(self.history)}
    def load_state_dict(self, sd): self.history = list(sd['history'])


def resolve_monitor(learn, monitor: str, who: str) -> str:
    """The metrics-row key `monitor` names for a callback `who`, checked before the fit trains.

    Any row key (`valid_loss`, `valid_accuracy`, `train_loss`, ...) is taken as it is; the older names still work:
    a bare metric or `loss` means its `valid_` value (its `train_` value in a fit without validation), and
    `eval_<name>` means `valid_<name>`. Raises ValueError when the learner has no MetricsCB, or the name is not
    one of the columns its rows will have, listing them.
    """
    metrics = next((cb for cb in learn.cbs if isinstance(cb, MetricsCB)), None)
    if metrics is None:
        raise ValueError(f"{who} reads the metrics rows that MetricsCB makes, but the learner has no MetricsCB: add "
                         "one, e.g. cbs=[MetricsCB(accuracy=MulticlassAccuracy()), ...]")
    valid = getattr(learn, 'do_valid', True)
    cols = metrics.columns(train=getattr(learn, 'do_train', True), valid=valid)
    cols = [c for c in cols if c not in ('epoch', 'time')]
    if monitor.startswith('eval_'): monitor = 'valid_' + monitor[len('eval_'):]
    key = monitor if monitor.startswith(PHASES) else f"{'valid' if valid else 'train'}_{monitor}"
    if key in cols: return key
    why = (f" (this fit has no validation, valid=False: use 'train_{key[len('valid_'):]}')"
           if key.startswith('valid_') and not valid else '')
    raise ValueError(f"{who}: monitor {key!r} is not a column of the metrics rows{why}; the columns are "
                     f"{', '.join(cols)}")


def monitor_mode(mode: str, monitor: str) -> str:
    """'min' or 'max' for a monitor's `mode`: 'auto' gives min for names with 'loss', else max."""
    modes = ('auto', 'min', 'max')
    if mode not in modes: raise ValueError(f"mode must be one of {modes}, got {mode!r}")
    return ('min' if 'loss' in monitor else 'max') if mode == 'auto' else mode


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.) -> bool:
    """Whether `value` beats `best` by more than `min_delta` (`mode` 'min': lower is better, 'max': higher).
    A NaN or infinite value never does, so it is never taken as the best."""
    if not math.isfinite(value): return False
    if best is None: return True
    return value < best - min_delta if mode == 'min' else value > best + min_delta


def step_scalars(learn) -> dict[str, float]:
    """The hypers the coming optimizer step uses, under their logged names: `lr` and `mom` (group 0's; `mom` is
    the momentum or Adam's beta1, where there is one) and `lr_group{i}`, `mom_group{i}` for the other groups."""
    out = {}
    for i, g in enumerate(getattr(learn.opt, 'param_groups', ())):
        sfx = '' if i == 0 else f'_group{i}'
        out[f'lr{sfx}'] = g['lr']
        mom = get_mom(g)
        if mom is not None: out[f'mom{sfx}'] = mom
    return out


class CSVLoggerCB(Callback):
    """Append each metrics row (see `MetricsCB`: epoch, train_loss, valid_loss, the metrics, lr, time in seconds)
    to the CSV file `path` as it comes.

    Rows are flushed at once, so a crash keeps them. A second fit of the same learner appends, its epochs going on
    from the first's; a file that has a header already keeps its columns. Only rank 0 writes.
    """
    order = Order.LOGGER
    run_in_isolated_fits = False

    def __init__(self, path): self.path = path

    def before_fit(self, learn):
        """The columns this log keeps: every column the rows can have (a train-only fit leaves valid_ cells empty,
        and a later fit with validation fills them). A file whose header lacks some is refused before training."""
        metrics = next((cb for cb in learn.cbs if isinstance(cb, MetricsCB)), None)
        self.columns = metrics.columns() if metrics is not None else None
        if not is_main_process() or not os.path.isfile(self.path) or os.path.getsize(self.path) == 0: return
        with open(self.path, newline='') as f: header = next(csv.reader(f), None) or []
        missing = [c for c in self.columns or [] if c not in header]
        if missing:
            raise ValueError(f"CSVLoggerCB: {self.path} has the columns {', '.join(header)}, which lack this fit's "
                             f"{', '.join(missing)} (a file of another learner, or of an older miniai): give "
                             "CSVLoggerCB a new path; the file is left as it is")

    def after_log(self, learn):
        """Write `learn.metrics_row` as one line of the CSV file."""
        if not is_main_process(): return
        row = learn.metrics_row
        cols = getattr(self, 'columns', None) or list(row)
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        if not new:  # appending to a file that has a header already (a resumed run, a second fit): keep its columns
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
    """fastprogress bars in a notebook or terminal, the metrics rows as a table, and (`plot=True`) the loss curve.

    When output is not a terminal (CI, a log file) it draws no bars: the log gets the metrics table, one line per
    epoch, and nothing per batch. Losses are read from the device at most every `min_interval` seconds. With
    `plot=True` the curve of `train_loss` per step and `valid_loss` per epoch is drawn live in a notebook; where
    no notebook can show it (a script, a terminal) it is saved at the end of a training fit to `plot_path`
    (default `progress.png`) and a line says where. An evaluation (`fit(train=False)`) leaves the curve as it was
    and saves no plot. Under torch.distributed only rank 0 draws and prints.
    """
    order = Order.PROGRESS
    run_in_isolated_fits = False
    shows_metrics = True

    def __init__(self, plot: bool = False, min_interval: float = 0.25, interactive: bool | None = None,
                 plot_path='progress.png'):
        self.plot, self.min_interval, self.interactive, self.plot_path = plot, min_interval, interactive, plot_path
        self.losses, self.val_losses, self.main, self.first_step = [], [], True, 0
        # what cleanup_fit reads, so it also runs when an earlier callback's before_fit raised
        self._pending, self.live, self.notebook = [], False, False

    def before_fit(self, learn):
        from fastprogress import master_bar
        self.main = is_main_process()  # the other ranks draw and print nothing
        self.notebook = in_notebook()
        self.live = self.main and (self.interactive if self.interactive is not None else
                                   (self.notebook or sys.stdout.isatty()))
        # a loaded checkpoint's curve continues, with the losses of the steps done before it and no more (an
        # interrupted epoch runs again); a new fit starts anew; an evaluation (fit(train=False)) leaves it alone
        step = getattr(learn, 'iter_count', 0)   # (a learner written in a notebook may not count steps)
        if getattr(learn, 'resuming', False): self.losses = self.losses[:max(step - self.first_step, 0)]
        elif getattr(learn, 'do_train', True): self.losses, self.val_losses, self.first_step = [], [], step
        self._pending, self._last, self._first = [], 0., True
        self._has_rows = any(isinstance(cb, MetricsCB) for cb in getattr(learn, 'cbs', ()))
        if self.live: learn.epochs = self.mbar = master_bar(learn.epochs)

    def _write(self, vals, table=True):
        if not self.main: return
        if self.live: self.mbar.write(vals, table=table)
        else: print(*vals, flush=True)

    def after_log(self, learn):
        """Show the epoch's metrics row (`learn.metrics_row`) in the bar's table, or as a printed line."""
        row = learn.metrics_row
        if self._first: self._write(row_header(row)); self._first = False
        self._write(format_row(row))
        if 'valid_loss' in row: self.val_losses.append(row['valid_loss'])

    def before_epoch(self, learn):
        if self.live:
            from fastprogress import progress_bar
            learn.dl = progress_bar(learn.dl, leave=False, parent=self.mbar)
        self._t0 = time.perf_counter()

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

    def _curves(self):
        graphs = [[list(range(self.first_step + 1, self.first_step + len(self.losses) + 1)), self.losses]]
        if self.val_losses:
            n = max(len(self.losses) // max(len(self.val_losses), 1), 1)
            graphs.append([[self.first_step + n * (i + 1) for i in range(len(self.val_losses))], self.val_losses])
        return graphs

    def _draw(self):
        self.mbar.names = ['train_loss', 'valid_loss']   # the legend in the rows' names (fastprogress: train, valid)
        self.mbar.update_graph(self._curves())

    def after_epoch(self, learn):
        if not self._has_rows and not self.live and self.main:  # no MetricsCB: a line of our own
            self._flush()
            phase = 'train' if learn.training else 'valid'
            last = f", last train_loss {self.losses[-1]:.3f}" if learn.training and self.losses else ''
            epoch = getattr(learn, 'run_epoch', learn.epoch)
            print(f"epoch {epoch} {phase}: {_fmt_time(time.perf_counter() - self._t0)}{last}", flush=True)

    def cleanup_fit(self, learn):
        self._flush()
        if not (self.plot and self.main and self.losses and getattr(learn, 'do_train', True)): return
        if self.live and self.notebook: self._draw()
        elif not self.notebook: self._save_plot()

    def _save_plot(self):
        """No notebook to draw in: the curve goes to `plot_path`, and a line says so."""
        from matplotlib.figure import Figure

        from .files import atomic_write
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for (xs, ys), label in zip(self._curves(), ('train_loss', 'valid_loss')):
            ax.plot(xs, ys, 'o-' if label == 'valid_loss' else '-', label=label)
        ax.set(xlabel='step', ylabel='loss')
        ax.legend()
        path = atomic_write(self.plot_path, lambda f: fig.savefig(f, format='png', dpi=100, bbox_inches='tight'))
        print(f"ProgressCB(plot=True): no notebook to draw in, so the loss curve is saved to {path}", flush=True)

    def state_dict(self):
        """The losses so far, so that a resumed run's curve (e.g. `miniai train`'s training.png) shows the whole run."""
        self._flush()
        return {'losses': list(self.losses), 'val_losses': list(self.val_losses), 'first_step': self.first_step}

    def load_state_dict(self, sd):
        """Take the losses of a checkpoint: the fit that resumes the run (`learn.resuming`) goes on from them."""
        self.losses, self.val_losses = list(sd['losses']), list(sd['val_losses'])
        self.first_step = sd.get('first_step', 0)
