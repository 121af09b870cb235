"""`TensorBoardCB`: losses, metrics, lr and momentum as TensorBoard scalars, with torch's own
`torch.utils.tensorboard.SummaryWriter`. Needs the optional `tensorboard` package (`pip install
'miniai-learner[tensorboard]'`). Explained in nbs/11_callbacks.ipynb.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .core import Callback
from .device import is_main_process
from .sgd.schedules import get_mom

__all__ = ['TensorBoardCB']

_INSTALL = ("TensorBoardCB needs the tensorboard package: pip install 'miniai-learner[tensorboard]' (or pip install "
            "tensorboard)")


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e: raise ImportError(_INSTALL) from e
    return SummaryWriter


class TensorBoardCB(Callback):
    """Write TensorBoard scalars to `log_dir` (view them with `tensorboard --logdir LOG_DIR`).

    Per optimizer step (x axis: training batches done, `learn.iter_count`): `train/loss`, and for each param group
    i `lr/group{i}` and `mom/group{i}` (its momentum or Adam's beta1, where it has one). Per epoch (x axis: the
    epoch), each value of MetricsCB's rows (received through `log_row`) as `epoch/{phase}_{name}`, e.g.
    `epoch/train_loss`, `epoch/eval_loss`, `epoch/eval_accuracy`. Losses are read from the device once per epoch,
    not per batch. Only rank 0 writes under torch.distributed.
    """
    order = 13  # after MetricsCB (10): its rows arrive through log_row
    lr_find_excluded = True

    def __init__(self, log_dir='runs'):
        self._writer_cls = _summary_writer()    # fail now, with how to install it, rather than after a first epoch
        self.log_dir, self.writer, self._losses = Path(log_dir), None, []

    def before_fit(self, learn):
        if is_main_process() and self.writer is None: self.writer = self._writer_cls(log_dir=str(self.log_dir))

    def before_step(self, learn):  # the hypers this step uses (schedulers change them in after_step)
        if self.writer is None or not hasattr(learn.opt, 'param_groups'): return
        step = learn.iter_count + 1
        for i, g in enumerate(learn.opt.param_groups):
            self.writer.add_scalar(f'lr/group{i}', g['lr'], step)
            mom = get_mom(g)
            if mom is not None: self.writer.add_scalar(f'mom/group{i}', mom, step)

    def after_batch(self, learn):
        if self.writer is not None and learn.training: self._losses.append((learn.iter_count, learn.loss.detach()))

    def _flush_losses(self):
        if self._losses and self.writer is not None:
            vals = torch.stack([v for _, v in self._losses]).float().cpu().tolist()   # one sync for the epoch
            for (step, _), v in zip(self._losses, vals): self.writer.add_scalar('train/loss', v, step)
        self._losses = []

    def cleanup_epoch(self, learn): self._flush_losses()

    def log_row(self, learn, row: dict):
        """Write MetricsCB's epoch-phase `row` as `epoch/{phase}_{name}` scalars at step `row['epoch']`."""
        if self.writer is None: return
        for k, v in row.items():
            if k not in ('epoch', 'phase') and isinstance(v, (int, float)):
                self.writer.add_scalar(f"epoch/{row['phase']}_{k}", v, row['epoch'])

    def cleanup_fit(self, learn):
        self._flush_losses()
        if self.writer is not None: self.writer.close(); self.writer = None
