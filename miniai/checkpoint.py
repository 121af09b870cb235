"""Checkpoints that resume a run exactly: `save_checkpoint`/`load_checkpoint` (also `learn.save`/`learn.load`),
`SaveModelCB` and `TerminateOnNaNCB`.

A checkpoint is one file of state_dicts and plain values (loaded with `weights_only=True`, so no pickled objects):
the model, the optimizer, every callback that has a `state_dict` (schedules, metrics history, ...), the epoch and
step counters and the RNG states of python, numpy and torch (CPU and CUDA). It is written to a temporary file and
renamed over the old one, so a process killed while saving never leaves a broken checkpoint where a good one stood.
Explained in nbs/09_checkpoint.ipynb.
"""
from __future__ import annotations

import math
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from .core import Callback
from .distributed import barrier, broadcast_object, is_main_process

__all__ = ['save_checkpoint', 'load_checkpoint', 'SaveModelCB', 'TerminateOnNaNCB', 'NonFiniteLossError',
           'CheckpointError', 'is_main_process', 'unwrap_model']

_FORMAT = 'miniai-checkpoint-1'


class CheckpointError(ValueError):
    """A checkpoint that is truncated, corrupt, not a miniai checkpoint, or saved from another model."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; raised by `TerminateOnNaNCB` before the step could spoil the weights."""


def unwrap_model(model):
    """The module inside a DistributedDataParallel (or compiled) wrapper, so state_dict keys never change."""
    while hasattr(model, 'module') and isinstance(model.module, torch.nn.Module): model = model.module
    return getattr(model, '_orig_mod', model)


def _cb_keys(cbs):
    """A stable name per callback with state: its class name, numbered when several share it."""
    seen, keys = {}, []
    for cb in cbs:
        name = type(cb).__name__
        keys.append(f'{name}.{seen.get(name, 0)}')
        seen[name] = seen.get(name, 0) + 1
    return keys


def _rng_state():
    np_state = np.random.get_state()
    return {'python': random.getstate(),
            'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(st):
    random.setstate((st['python'][0], tuple(st['python'][1]), st['python'][2]))
    kind, keys, pos, has_gauss, gauss = st['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(st['torch'])
    if st['cuda'] and torch.cuda.is_available(): torch.cuda.set_rng_state_all(st['cuda'])


def learner_state(learn) -> dict:
    """Everything needed to continue `learn` exactly where it stands, as state_dicts and plain values."""
    opt = learn.opt
    return {'format': _FORMAT,
            'model': unwrap_model(learn.model).state_dict(),
            'opt': opt.state_dict() if opt is not None and hasattr(opt, 'state_dict') else None,
            'callbacks': {k: cb.state_dict() for k, cb in zip(_cb_keys(learn.cbs), learn.cbs)
                          if hasattr(cb, 'state_dict')},
            'epoch': learn.epoch, 'iter_count': learn.iter_count, 'rng': _rng_state()}


def save_checkpoint(learn, path) -> Path | None:
    """Write `learn`'s state to `path` atomically (temporary file, then rename); only the main process writes.

    Under torch.distributed call it on every rank: the others wait at a barrier until rank 0 has written the file.
    """
    path = Path(path)
    try:
        if is_main_process(): _write(learn, path)
    finally: barrier()
    return path if is_main_process() else None


def _write(learn, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(learner_state(learn), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp): os.unlink(tmp)
        raise


def _read(path: Path) -> dict:
    if not path.is_file(): raise FileNotFoundError(f"no checkpoint at {path}")
    try: ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be read ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); use an earlier checkpoint") from e
    if not isinstance(ckpt, dict) or ckpt.get('format') != _FORMAT:
        raise CheckpointError(f"{path} is not a miniai checkpoint (expected format {_FORMAT!r}); "
                              "for a bare state_dict use model.load_state_dict(torch.load(path))")
    return ckpt


def _load_model(model, sd, path):
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong:
        show = lambda ks: ', '.join(ks[:8]) + (f' ... ({len(ks)} in all)' if len(ks) > 8 else '') or 'none'
        shapes = '; '.join(f'{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}' for k in wrong[:5])
        raise CheckpointError(f"checkpoint {path} was saved from another model. Missing keys: {show(missing)}. "
                              f"Unexpected keys: {show(unexpected)}." + (f" Shape mismatches: {shapes}." if wrong
                              else '') + " Build the same model as the run that saved it.")
    model.load_state_dict(sd)


def load_checkpoint(learn, path, weights_only: bool = False) -> dict:
    """Restore `learn` from `path`: the weights only with `weights_only`, else everything, so that the next
    `learn.fit(n)` continues the saved run at the epoch after the saved one (with its schedule and RNG)."""
    path = Path(path)
    ckpt = _read(path)
    _load_model(unwrap_model(learn.model), ckpt['model'], path)
    if weights_only: return ckpt
    if ckpt['opt'] is not None:
        opt = learn.make_opt()
        if not hasattr(opt, 'load_state_dict'):
            raise CheckpointError(f"{path} holds optimizer state but {type(opt).__name__} has no load_state_dict")
        opt.load_state_dict(ckpt['opt'])
    learn.pending_cb_states = dict(ckpt['callbacks'])
    learn.apply_pending_cb_states()
    learn.epoch, learn.iter_count = ckpt['epoch'], ckpt['iter_count']
    learn.resume_epoch = ckpt['epoch'] + 1
    _set_rng_state(ckpt['rng'])
    return ckpt


class SaveModelCB(Callback):
    """Save `dir/last.pt` after every epoch (with `every_epoch`), and `dir/best.pt` whenever the eval value of
    `monitor` (a MetricsCB column such as 'loss' or 'accuracy') improves: lower for names with 'loss', else higher.
    """
    order = 20  # after MetricsCB has its row for the epoch
    lr_find_excluded = True

    def __init__(self, dir='.', every_epoch: bool = True, monitor: str | None = None, mode: str = 'auto'):
        if mode not in ('auto', 'min', 'max'): raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.dir, self.every_epoch, self.monitor = Path(dir), every_epoch, monitor
        self.mode = ('min' if monitor and 'loss' in monitor else 'max') if mode == 'auto' else mode
        self.best, self.row = None, None

    def before_epoch(self, learn): self.row = None

    def log_row(self, learn, row: dict):
        """Keep the epoch phase's metrics row (from MetricsCB) that `monitor` is read from."""
        self.row = row

    def after_epoch(self, learn):
        # an epoch is complete after its eval phase, or after training when there is no validation
        if learn.training and learn.do_valid: return
        if self.monitor: self._maybe_best(learn)
        if self.every_epoch: save_checkpoint(learn, self.dir / 'last.pt')

    def _maybe_best(self, learn):
        if self.row is None:
            raise ValueError(f"SaveModelCB(monitor={self.monitor!r}) needs a MetricsCB in the learner's callbacks")
        row = self.row
        if self.monitor not in row:
            raise ValueError(f"SaveModelCB: monitor {self.monitor!r} is not a metric; have {sorted(row)}")
        v = broadcast_object(row[self.monitor])  # rank 0's value decides on every rank: all reach the same barriers
        if math.isfinite(v) and (self.best is None or (v < self.best if self.mode == 'min' else v > self.best)):
            self.best = v
            save_checkpoint(learn, self.dir / 'best.pt')

    def cleanup_fit(self, learn): self.row = None
    def state_dict(self): return {'best': self.best}
    def load_state_dict(self, sd): self.best = sd['best']


class TerminateOnNaNCB(Callback):
    """Stop fit when the training loss is NaN or infinite, naming the epoch and batch, before the step runs.

    Reading the loss costs one host sync per `every` batches; on a GPU, `every=10` lets the device run ahead.
    """
    order = 1

    def __init__(self, every: int = 1):
        if every < 1: raise ValueError(f"every must be >= 1, got {every}")
        self.every = every

    def after_loss(self, learn):
        if not learn.training or learn.iter % self.every: return
        v = float(learn.loss.detach())
        if not math.isfinite(v):
            raise NonFiniteLossError(f"the training loss is {v} at epoch {learn.epoch}, batch {learn.iter}; fit "
                                     "stopped before the optimizer step. Lower the lr, check the inputs for NaNs, or "
                                     "use gradient clipping; the last checkpoint saved before this is intact")
