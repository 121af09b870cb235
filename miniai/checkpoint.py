"""Checkpoints that resume a run exactly: `save_checkpoint`/`load_checkpoint` (also `learn.save`/`learn.load`),
`SaveModelCB` and `TerminateOnNaNCB`.

A checkpoint is one file of state_dicts and plain values (loaded with `weights_only=True`, so no pickled objects):
the model, the optimizer, every callback that has a `state_dict` (schedules, metrics history, ...), the epoch and
step counters and the RNG states of python, numpy and torch (CPU and CUDA). It is written to a temporary file and
renamed over the old one, so a process killed while saving never leaves a broken checkpoint where a good one stood.

Beside `NAME.pt` lies `NAME.pt.sha256` (the format of `sha256sum`, so `sha256sum -c` checks it too): the SHA-256 of
the checkpoint's bytes. Loading refuses a checkpoint whose bytes do not match it (a flipped bit on disk, a copy cut
short, an edited file); a checkpoint without one (older miniai, or copied alone) loads with a warning. While a save
replaces the file, the digest file lists both the old and the new digest, so a kill at any moment leaves a pair that
loads. Both files are read only when they are regular files (a digest file of at most `MAX_DIGEST_BYTES`), so a named
pipe or a link to a device in their place is refused, never waited on or read without end.

What a checkpoint holds can be trusted: `save_checkpoint` refuses weights or optimizer state holding NaN or inf
(`NonFiniteWeightsError`), keeping the previous checkpoint, and the model's weights in it are always the ones training
goes on from, even while a callback has swapped others in for validation (EMACB's average: see `trained_weights`).
Explained in nbs/09_checkpoint.ipynb.
"""
from __future__ import annotations

import io
import math
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from .callbacks import improved, monitor_mode, resolve_monitor
from .core import Callback, Order
from .device import barrier, broadcast_object, is_main_process, unwrap_model
from .errors import MiniaiError
from .files import MAX_DIGEST_BYTES, digest_path, read_regular, verify_digest, write_with_digest

__all__ = ['save_checkpoint', 'load_checkpoint', 'SaveModelCB', 'TerminateOnNaNCB', 'NonFiniteLossError',
           'NonFiniteWeightsError', 'CheckpointError', 'digest_path', 'is_main_process', 'unwrap_model',
           'non_finite_state', 'MAX_DIGEST_BYTES', 'callback_keys', 'rng_state', 'set_rng_state']

_FORMAT = 'miniai-checkpoint-1'


class CheckpointError(MiniaiError, ValueError):
    """A checkpoint that is truncated, corrupt, not a miniai checkpoint, or saved from another model or optimizer."""


class NonFiniteLossError(MiniaiError, FloatingPointError):
    """The loss became NaN or infinite; raised by `TerminateOnNaNCB` before the step could spoil the weights."""


class NonFiniteWeightsError(MiniaiError, FloatingPointError):
    """The model's weights or the optimizer's state hold NaN or inf, so `save_checkpoint` refused to write them: a
    checkpoint that cannot train on must never replace one that can. The previous checkpoint on disk is kept."""


def callback_keys(cbs) -> list[str]:
    """The name each callback's state is kept under in a checkpoint: its `state_key` (the class name unless the
    callback sets one), with `.1`, `.2`, ... for the second and later callbacks of one name."""
    seen, keys = {}, []
    for cb in cbs:
        name = getattr(cb, 'state_key', type(cb).__name__)
        n = seen.get(name, 0)
        keys.append(name if n == 0 else f'{name}.{n}')
        seen[name] = n + 1
    return keys


def _new_key(key: str) -> str:
    """A callback key as `callback_keys` makes it, from one that miniai 0.1 wrote (`Name.0` for the first)."""
    return key[:-2] if key.endswith('.0') else key


def rng_state() -> dict:
    """The random state of Python, NumPy, torch and CUDA: what a checkpoint saves so a resumed run draws the same."""
    np_state = np.random.get_state()
    return {'python': random.getstate(),
            'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(st: dict):
    """Put back a random state taken by `rng_state`."""
    random.setstate((st['python'][0], tuple(st['python'][1]), st['python'][2]))
    kind, keys, pos, has_gauss, gauss = st['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(st['torch'])
    if st['cuda'] and torch.cuda.is_available(): torch.cuda.set_rng_state_all(st['cuda'])


def _class_name(o) -> str: return f'{type(o).__module__}.{type(o).__qualname__}'


def _model_state(learn) -> dict:
    """The model's state_dict, with the weights training goes on from where a callback has swapped others in.

    A callback that puts other weights into the model for a while (EMACB validates with the average) defines
    `trained_weights()`: None when the model holds its own weights, else the tensors training continues from, keyed
    as in the (unwrapped) model's state_dict. A checkpoint taken at any moment, whichever callback order saved it,
    then holds the run's own weights and resumes it exactly.
    """
    sd = unwrap_model(learn.model).state_dict()
    for cb in learn.cbs:
        trained = cb.trained_weights() if callable(getattr(cb, 'trained_weights', None)) else None
        if trained: sd.update({k: v for k, v in trained.items() if k in sd})
    return sd


def _floats(o, where: str):
    """(name, tensor) for every floating-point tensor in nested dicts/lists/tuples `o`."""
    if isinstance(o, torch.Tensor):
        if o.is_floating_point() or o.is_complex(): yield where, o
    elif isinstance(o, dict):
        for k, v in o.items(): yield from _floats(v, f'{where}.{k}' if where else str(k))
    elif isinstance(o, (list, tuple)):
        for i, v in enumerate(o): yield from _floats(v, f'{where}[{i}]')


def non_finite_state(learn) -> list[str]:
    """The names of the model's weights and buffers, and of the optimizer's state tensors, that hold NaN or inf.

    One host sync per device for all of them (a stacked `isfinite(...).all()`), so it costs little beside a save.
    """
    named = [(f'model {k}', t) for k, t in _floats(_model_state(learn), '')]
    if learn.opt is not None and hasattr(learn.opt, 'state_dict'):
        named += list(_floats(learn.opt.state_dict(), 'optimizer'))
    flags = [torch.isfinite(t).all() for _, t in named]
    by_device: dict = {}
    for i, f in enumerate(flags): by_device.setdefault(f.device, []).append(i)
    ok = [True] * len(named)
    for idx in by_device.values():
        for i, good in zip(idx, torch.stack([flags[i] for i in idx]).cpu().tolist()): ok[i] = good
    return [k for (k, _), good in zip(named, ok) if not good]


def learner_state(learn, epoch_done: bool = True) -> dict:
    """Everything needed to continue `learn` exactly where it stands, as state_dicts and plain values.

    `epoch_done=False` marks a checkpoint taken inside `learn.epoch` (e.g. at Ctrl-C): loading it repeats that epoch.
    """
    opt = learn.opt
    return {'format': _FORMAT,
            'model': _model_state(learn),
            'opt': opt.state_dict() if opt is not None and hasattr(opt, 'state_dict') else None,
            'opt_class': _class_name(opt) if opt is not None else None,
            'callbacks': {k: cb.state_dict() for k, cb in zip(callback_keys(learn.cbs), learn.cbs)
                          if hasattr(cb, 'state_dict')},
            'epoch': learn.epoch, 'epoch_offset': getattr(learn, 'epoch_offset', 0), 'epoch_done': epoch_done,
            'iter_count': learn.iter_count, 'rng': rng_state()}


def save_checkpoint(learn, path, epoch_done: bool = True, wait: bool = True) -> Path | None:
    """Write `learn`'s state to `path` atomically (temporary file, then rename) with its digest in `path.sha256`;
    only the main process writes. `epoch_done=False`: saved inside an epoch, which a resume then repeats.

    Under torch.distributed call it on every rank: the others wait at a barrier until rank 0 has written the file.
    `wait=False` skips that barrier, for a save after Ctrl-C: the ranks were interrupted at different points of
    the loop, and a collective there could wait for one that never comes.

    Weights or optimizer state holding NaN or inf are never written: every rank checks its own (identical under
    DistributedDataParallel) before anything is written, so all of them raise and none waits at the barrier.

    Raises:
        NonFiniteWeightsError: the weights or the optimizer state hold NaN or inf; nothing was written, and the
            checkpoint already at `path` (if any) and its digest file are as they were.
        OutputError: the file could not be written (e.g. no space left on device); the old checkpoint is intact.
    """
    path = Path(path)
    bad = non_finite_state(learn)
    if bad:
        show = ', '.join(bad[:6]) + (f' ... ({len(bad)} in all)' if len(bad) > 6 else '')
        kept = (f"the previous {path.name} on disk is kept, with its digest" if path.exists() else
                f"nothing was written to {path}")
        raise NonFiniteWeightsError(
            f"not saving checkpoint {path}: the training diverged and these hold NaN or inf: {show}. A checkpoint "
            f"must be able to train on, so {kept}. Lower the lr, add GradientClipCB or TerminateOnNaNCB, and "
            "resume from the last good checkpoint")
    try:
        if is_main_process(): _write(learn, path, epoch_done)
    finally:
        if wait: barrier()
    return path if is_main_process() else None


def _digest_advice(path: Path) -> str:
    return (f"delete it to load {path.name} unchecked, or replace it with the output of `sha256sum {path.name}` run "
            "where the checkpoint was saved")


def _write(learn, path: Path, epoch_done: bool = True):
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()  # in memory first: the digest covers exactly the bytes that reach the disk
    torch.save(learner_state(learn, epoch_done), buf)
    write_with_digest(path, bytes(buf.getbuffer()))


def _verify(path: Path, data: bytes):
    """Check `data`, the bytes read from checkpoint `path`, against the digest file beside it."""
    verify_digest(path, data, 'checkpoint', _digest_advice(path), error=CheckpointError,
                  remedy="Use an earlier checkpoint (e.g. best.pt or another run's), or restore this file from a "
                         "backup")


def _unsafe(e: Exception) -> str | None:
    """The objects torch's weights-only unpickler refused, when that is why `e` was raised (None for a file that
    is simply not a pickle torch can read: a damaged file, an image, text)."""
    msg = str(e)
    if not isinstance(e, pickle.UnpicklingError) and 'Weights only load failed' not in msg: return None
    m = re.search(r'Unsupported global: GLOBAL ([\w.]+)', msg) or re.search(r'(?:global|GLOBAL) ([\w.]+)', msg)
    return m.group(1) if m else None


def _read(path: Path) -> dict:
    """The checkpoint at `path`, read once into memory (so the digest checks exactly the bytes that are loaded), only
    if it is a regular file: a named pipe or a device in its place is refused, never waited on."""
    try:
        data = read_regular(path, what='checkpoint', error=CheckpointError,
                            advice='give the path of a checkpoint file that miniai saved (e.g. last.pt or best.pt)')
    except FileNotFoundError: raise FileNotFoundError(f"no checkpoint at {path}") from None
    _verify(path, data)
    try: ckpt = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except Exception as e:
        bad = _unsafe(e)
        if bad is not None:
            raise CheckpointError(f"{path} holds Python objects that are not allowed in a checkpoint ({bad}): "
                                  "miniai checkpoints hold only tensors and plain values, and miniai never unpickles "
                                  "code, so it refuses this file. Load only checkpoints from sources you trust") from e
        lines = str(e).splitlines() or ['']   # an empty file's EOFError has no message
        detail = next((ln.strip() for ln in lines if 'Unsupported' in ln), lines[0])
        raise CheckpointError(f"checkpoint {path} cannot be read: it is truncated or corrupt, or not a file that "
                              f"miniai saved ({type(e).__name__}: {detail[:200]}); give a checkpoint that learn.save "
                              "or miniai train wrote (e.g. last.pt or best.pt), or use an earlier one") from e
    if isinstance(ckpt, dict) and {'format', 'model', 'preprocess'} <= ckpt.keys():
        raise CheckpointError(f"{path} is an exported model (learn.export), not a training checkpoint: load it with "
                              "miniai.inference.load_learner(path) to predict, or load the run's last.pt or best.pt "
                              "to train on")
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
    training fit, `learn.fit(n)`, continues the saved run at the epoch after the saved one (with its schedule and
    RNG)."""
    path = Path(path)
    ckpt = _read(path)
    _load_model(unwrap_model(learn.model), ckpt['model'], path)
    if weights_only: return ckpt
    if ckpt['opt'] is not None: _load_opt(learn, ckpt, path)
    done = ckpt.get('epoch_done', True)
    # each callback gets its own state back, and decides itself what of it a repeated epoch drops
    learn.pending_cb_states = {_new_key(k): v for k, v in ckpt['callbacks'].items()}
    learn.apply_pending_cb_states()
    learn.epoch, learn.iter_count = ckpt['epoch'], ckpt['iter_count']
    learn.epoch_offset = ckpt.get('epoch_offset', 0)
    last = ckpt['epoch'] if done else ckpt['epoch'] - 1      # a new fit (not a resume) numbers its rows after it
    learn.last_train_epoch = last if last >= 0 else None
    learn.resume_epoch = ckpt['epoch'] + 1 if done else ckpt['epoch']  # an interrupted epoch runs again from its start
    # set now, and again when the resuming fit starts: an evaluation or prediction in between draws from it too
    learn.resume_rng = ckpt['rng']
    set_rng_state(ckpt['rng'])
    return ckpt


def _load_opt(learn, ckpt, path):
    opt = learn.make_opt()
    saved = ckpt.get('opt_class')
    if saved is not None and saved != _class_name(opt):
        raise CheckpointError(f"checkpoint {path} holds the state of a {saved} optimizer but this learner makes a "
                              f"{_class_name(opt)}: use the same opt_func as the run that saved it, or load only the "
                              "weights with weights_only=True")
    if not hasattr(opt, 'load_state_dict'):
        raise CheckpointError(f"{path} holds optimizer state but {type(opt).__name__} has no load_state_dict")
    try: opt.load_state_dict(ckpt['opt'])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path}: its optimizer state does not fit {_class_name(opt)} ({e}); use the "
                              "same optimizer and param groups as the run that saved it") from e


class SaveModelCB(Callback):
    """Save `dir/last.pt` after every epoch (with `every_epoch`), and `dir/best.pt` whenever `monitor` improves.

    `monitor` is a column of the metrics rows (`valid_loss`, `valid_accuracy`, ...; checked when the fit starts,
    see `resolve_monitor`); `mode` 'auto' means lower is better for names with 'loss'. A NaN value is never the
    best. The checkpoints are written when the epoch's row comes (`after_log`), so they hold that row in the
    metrics history. `epoch_done` is the last epoch this fit completed (None before the first): a checkpoint saved
    after an interrupt is a mid-epoch one (`save_checkpoint(..., epoch_done=False)`) unless
    `epoch_done == learn.epoch`.

    Each new fit starts its own best, as `EarlyStoppingCB` does (fastai's `reset_on_fit`): a second `fit` writes
    `best.pt` at its first epoch even if an earlier fit did better. `reset_on_fit=False` keeps the best of all the
    fits instead. A fit that resumes a loaded checkpoint's run (`learn.resuming`) carries on with the best it
    saved; after `learn.load`, `fit(n, start_epoch=0)` is a new fit and starts its own.
    """
    order = Order.CHECKPOINT  # after the loggers have the epoch's row
    run_in_isolated_fits = False
    run_in_evaluations = False     # an evaluation logs no row, so it saves nothing

    def __init__(self, dir='.', every_epoch: bool = True, monitor: str | None = None, mode: str = 'auto',
                 reset_on_fit: bool = True):
        self.dir, self.every_epoch, self.monitor, self.reset_on_fit = Path(dir), every_epoch, monitor, reset_on_fit
        self.mode = monitor_mode(mode, monitor or '')
        self.best, self.key, self.epoch_done = None, monitor, None   # `epoch_done`: the last epoch this fit completed

    def before_fit(self, learn):
        if self.reset_on_fit and not getattr(learn, 'resuming', False): self.best = None
        self.epoch_done = None
        if self.monitor: self.key = resolve_monitor(learn, self.monitor, f"SaveModelCB(monitor={self.monitor!r})")

    def after_log(self, learn):
        """The epoch is complete: best.pt if `monitor` improved, then last.pt."""
        self.epoch_done = learn.epoch
        if self.monitor:
            v = broadcast_object(learn.metrics_row[self.key])  # rank 0's value decides: all reach the same barriers
            if improved(v, self.best, self.mode):
                self.best = v
                save_checkpoint(learn, self.dir / 'best.pt')
        if self.every_epoch: save_checkpoint(learn, self.dir / 'last.pt')

    def state_dict(self): return {'best': self.best}
    def load_state_dict(self, sd):
        """Carry on from a checkpoint's best in the fit that resumes the run (`learn.resuming`)."""
        self.best = sd['best']


class TerminateOnNaNCB(Callback):
    """Stop fit when the training loss is NaN or infinite, naming the epoch and batch, before the step runs.

    Reading the loss costs one host sync per `every` batches; on a GPU, `every=10` lets the device run ahead.
    """
    order = Order.GUARD
    run_in_isolated_fits = False  # an lr sweep ends at a non-finite loss by design (LRFinderCB stops there)

    def __init__(self, every: int = 1):
        if every < 1: raise ValueError(f"every must be >= 1, got {every}")
        self.every = every

    def after_loss(self, learn):
        if not learn.training or learn.iter % self.every: return
        v = float(learn.loss.detach())
        if not math.isfinite(v):
            epoch = getattr(learn, 'run_epoch', learn.epoch)
            raise NonFiniteLossError(f"the training loss is {v} at epoch {epoch}, batch {learn.iter}; fit "
                                     "stopped before the optimizer step. Lower the lr, check the inputs for NaNs, or "
                                     "use gradient clipping; the last checkpoint saved before this is intact")
