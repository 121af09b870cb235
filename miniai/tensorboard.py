"""`TensorBoardCB`: losses, metrics, lr and momentum as TensorBoard scalars, with torch's own
`torch.utils.tensorboard.SummaryWriter`. Needs the optional `tensorboard` package (`pip install
'miniai-learner[tensorboard]'`). Explained in nbs/11_callbacks.ipynb.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .callbacks import step_scalars
from .core import Callback, Order
from .device import is_main_process

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

    Per optimizer step (x axis: `learn.iter_count`, the training batches this learner has done in all its fits):
    `step/train_loss`, `step/lr`, `step/mom` (and `step/lr_group{i}`... for further param groups). Per epoch (x
    axis: the row's `epoch`, which goes on across fits), every value of the metrics rows under its own name:
    `train_loss`, `valid_loss`, `valid_accuracy`, `lr`, `time`, ... (received through the `after_log` event). A
    second fit of the same learner writes on in the same log; a fit that resumes a checkpoint (`learn.resuming`)
    hides the per-step values logged past it before the run stopped (per-epoch values of an epoch trained again, after
    a resume from an older checkpoint, show twice). Losses are read from the device once per epoch, not per batch.
    Only rank 0 writes under torch.distributed.
    """
    order = Order.LOGGER
    run_in_isolated_fits = False

    def __init__(self, log_dir='runs'):
        self._writer_cls = _summary_writer()    # fail now, with how to install it, rather than after a first epoch
        self.log_dir, self.writer, self._losses = Path(log_dir), None, []

    def before_fit(self, learn):
        if not is_main_process() or self.writer is not None: return
        # a resumed run hides the steps its log holds past the checkpoint (written before a crash or Ctrl-C, then
        # trained again), as metrics.csv drops their rows: TensorBoard's purge_step
        purge = learn.iter_count + 1 if getattr(learn, 'resuming', False) else None
        self.writer = self._writer_cls(log_dir=str(self.log_dir), purge_step=purge)

    def before_step(self, learn):  # the hypers this step uses (schedulers change them in after_step)
        if self.writer is None: return
        for k, v in step_scalars(learn).items(): self.writer.add_scalar(f'step/{k}', v, learn.iter_count + 1)

    def after_batch(self, learn):
        if self.writer is not None and learn.training: self._losses.append((learn.iter_count, learn.loss.detach()))

    def _flush_losses(self):
        if self._losses and self.writer is not None:
            vals = torch.stack([v for _, v in self._losses]).float().cpu().tolist()   # one sync for the epoch
            for (step, _), v in zip(self._losses, vals): self.writer.add_scalar('step/train_loss', v, step)
        self._losses = []

    def cleanup_epoch(self, learn): self._flush_losses()

    def after_log(self, learn):
        """Write the epoch's metrics row, each value under its own name at x = the row's `epoch`."""
        if self.writer is None: return
        row = learn.metrics_row
        for k, v in row.items():
            if k != 'epoch' and isinstance(v, (int, float)): self.writer.add_scalar(k, v, row['epoch'])

    def cleanup_fit(self, learn):
        self._flush_losses()
        if self.writer is not None: self.writer.close(); self.writer = None
