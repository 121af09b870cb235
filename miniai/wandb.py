"""`WandBCB`: a fit's config, losses, metrics, lr and momentum, and (if asked) sample predictions, in a Weights &
Biases run. Needs the optional `wandb` package (`pip install 'miniai-learner[wandb]'`). `WANDB_MODE=offline` writes
the run to disk only (upload it later with `wandb sync`). Explained in nbs/11_callbacks.ipynb.
"""
from __future__ import annotations

import importlib
import math
import sys
import time

import torch

from .callbacks import step_scalars
from .core import Callback, CancelFitException, Order
from .device import is_main_process, unwrap_model, world_size
from .errors import MiniaiError

__all__ = ['WandBCB', 'fit_config']

_INSTALL = "WandBCB needs the wandb package: pip install 'miniai-learner[wandb]' (or pip install wandb)"
# optimizer defaults that choose an implementation, not a hyper a run is compared by
_IMPL_KEYS = {'foreach', 'fused', 'capturable', 'differentiable'}


def _import_wandb():
    try: return importlib.import_module('wandb')
    except ImportError as e: raise ImportError(_INSTALL) from e


def _name(o) -> str: return getattr(o, '__name__', None) or type(o).__name__


def _plain(v) -> bool:
    """Whether `v` is a value a run's config shows as it is (a number, a flag, a name or a tuple of numbers)."""
    if isinstance(v, (bool, int, float, str)): return True
    return isinstance(v, (tuple, list)) and all(isinstance(x, (int, float)) for x in v)


def fit_config(learn) -> dict:
    """What a fit of `learn` is run with, as plain values: `learner`, `model`, `n_params`, `loss_func`, `lr`,
    `n_epochs`, `batch_size` (of the training loader, times the processes under torch.distributed: the global
    one), `optimizer` and its constructor's hypers under `opt` (`lr`, `weight_decay`, `betas`, `eps`, ...)."""
    model, opt = unwrap_model(learn.model), getattr(learn, 'opt', None)   # the model inside a DDP wrapper
    cfg = {'learner': type(learn).__name__, 'model': type(model).__name__,
           'n_params': sum(p.numel() for p in model.parameters()), 'loss_func': _name(learn.loss_func),
           'lr': learn.lr, 'n_epochs': getattr(learn, 'n_epochs', None)}
    bs = getattr(getattr(learn.dls, 'train', None), 'batch_size', None)
    if isinstance(bs, int): cfg['batch_size'] = bs * world_size()
    if opt is not None:
        cfg['optimizer'] = type(opt).__name__
        hypers = getattr(opt, 'defaults', {})
        cfg['opt'] = {k: list(v) if isinstance(v, tuple) else v for k, v in hypers.items()
                      if k not in _IMPL_KEYS and _plain(v)}
    return {k: v for k, v in cfg.items() if v is not None}


class WandBCB(Callback):
    """Log a fit to a Weights & Biases run (`wandb.init(project=project, **init_kwargs)`, e.g. `entity`, `name`,
    `tags`, `dir`, `mode='offline'`).

    - Config: `fit_config(learn)` (model, loss, optimizer and its hypers, lr, n_epochs, batch_size), then `config`
      (yours wins where names meet); a run you started keeps the values it already had for the derived names.
    - Per optimizer step (x axis `step` = `learn.iter_count`, the training batches this learner has done in all its
      fits): `step/train_loss`, `step/lr`, `step/mom` and `step/lr_group{i}`, `step/mom_group{i}` for further
      param groups, the names TensorBoardCB uses. Losses are read from the device once per epoch, not per batch,
      so these steps reach W&B at the end of each training epoch.
    - Per epoch (x axis `epoch`, which goes on across fits): every value of the metrics rows under its own name
      (`train_loss`, `valid_loss`, `valid_accuracy`, `lr`, `time`, ...), received through the `after_log` event
      (a learner without MetricsCB has none).
    - `samples=n`: a `wandb.Table` `samples` each epoch of the first n validation items with `image` (scaled back
      with the learner's preprocessing mean/std when it has one), `predicted` and `actual` (class names from
      `classes`, else the preprocessing's, else indices). They come from the validation pass itself, no extra one.

    If a run is active (`wandb.run`, e.g. from your own `wandb.init`), it is used and left open. Otherwise the
    callback starts one and finishes it at the end of the fit (marked failed when the fit raised); the next fit
    resumes that run by its id, its steps and epochs counting on, and so does a run continued from a checkpoint,
    which holds the id. Offline, each fit writes its own local folder under that run id (upload them with
    `wandb sync`). Only rank 0 logs under torch.distributed.
    """
    order = Order.LOGGER
    run_in_isolated_fits = False

    def __init__(self, config: dict | None = None, project: str | None = None, samples: int = 0,
                 classes=None, **init_kwargs):
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            raise ValueError(f"samples must be an integer >= 0 (how many validation items to show), got {samples!r}")
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"config must be a dict of the run's settings, got {type(config).__name__}")
        self._wandb = _import_wandb()   # fail now, with how to install it, rather than after a first epoch
        self.config, self.project, self.samples = dict(config or {}), project, samples
        self.classes, self.init_kwargs = classes, init_kwargs
        self.run, self.run_id, self._owns, self._ours, self._started = None, None, False, set(), None
        self._reset()

    def _reset(self): self._losses, self._hypers, self._samples, self._defined = [], [], [], set()

    # --- the run ---------------------------------------------------------------------------------------------
    def _start(self):
        wandb = self._wandb
        if wandb.run is not None:
            self.run, self._owns = wandb.run, False
            return
        kw = {**self.init_kwargs, **({'project': self.project} if self.project is not None else {})}
        if self.run_id is not None:
            kw.update(id=self.run_id, resume='allow')
            # W&B names a run's local folder by its start time, to the second, and its id: a part of the run started
            # in the same second as the previous part would write into that part's folder
            wait = math.floor(self._started) + 1 - time.time() if self._started is not None else 0
            if wait > 0: time.sleep(wait)
        try: self.run = wandb.init(**kw)
        except wandb.errors.Error as e:
            raise MiniaiError(f"WandBCB could not start a W&B run: {e}. Log in with `wandb login` (or set "
                              "WANDB_API_KEY), or set WANDB_MODE=offline to write the run to disk and upload it "
                              "later with `wandb sync`") from e
        self._owns, self.run_id, self._started = True, self.run.id, getattr(self.run, 'start_time', time.time())

    def _log_config(self, learn):
        cfg = fit_config(learn)
        cfg = {k: v for k, v in cfg.items() if k not in self.run.config or k in self._ours}
        self._ours |= set(cfg)
        self.run.config.update({**cfg, **self.config}, allow_val_change=True)

    def before_fit(self, learn):
        if not is_main_process(): return
        self._reset()
        self._start()
        self.run.define_metric('step')
        self.run.define_metric('step/*', step_metric='step')
        self.run.define_metric('epoch')
        self._log_config(learn)

    # --- per step ----------------------------------------------------------------------------------------------
    def before_step(self, learn):  # the hypers this step uses (schedulers change them in after_step)
        if self.run is not None: self._hypers.append((learn.iter_count + 1, step_scalars(learn)))

    def after_batch(self, learn):
        if self.run is None: return
        if learn.training: self._losses.append((learn.iter_count, learn.loss.detach()))
        elif self.samples and isinstance(learn.preds, torch.Tensor) and isinstance(learn.batch, (tuple, list)):
            self._keep_samples(learn)

    def _flush_steps(self):
        """Log the pending steps, one W&B row each, after one read of their losses from the device."""
        rows = {}
        for step, hypers in self._hypers: rows.setdefault(step, {}).update({f'step/{k}': v for k, v in hypers.items()})
        if self._losses:
            vals = torch.stack([v for _, v in self._losses]).float().cpu().tolist()
            for (step, _), v in zip(self._losses, vals): rows.setdefault(step, {})['step/train_loss'] = v
        for step in sorted(rows): self.run.log({**rows[step], 'step': step})
        self._losses, self._hypers = [], []

    def cleanup_epoch(self, learn):
        if self.run is not None: self._flush_steps()

    # --- per epoch ---------------------------------------------------------------------------------------------
    def before_epoch(self, learn):
        if not learn.training: self._samples = []

    def after_log(self, learn):
        """Log the epoch's metrics row, each value under its own name at x = the row's `epoch`."""
        if self.run is None: return
        self._flush_steps()   # a fit without validation makes its row before the training epoch's cleanup
        row = learn.metrics_row
        data = {k: v for k, v in row.items() if k != 'epoch' and isinstance(v, (int, float))}
        if self._samples: data['samples'] = self._table(learn, row['epoch'])
        for k in data.keys() - self._defined: self.run.define_metric(k, step_metric='epoch')
        self._defined |= set(data)
        self.run.log({**data, 'epoch': row['epoch']})

    def cleanup_fit(self, learn):
        if self.run is None: return
        exc = sys.exc_info()[0]   # the exception this cleanup runs for, if any (a cancelled fit ended normally)
        failed = exc is not None and not issubclass(exc, CancelFitException)
        try: self._flush_steps()   # a fit stopped inside an epoch
        finally:
            if self._owns: self.run.finish(exit_code=1 if failed else 0)
            self.run, self._owns = None, False
            self._reset()

    # --- sample predictions ----------------------------------------------------------------------------------
    def _keep_samples(self, learn):
        have = sum(len(p) for _, p, _ in self._samples)
        if have >= self.samples: return
        k = self.samples - have   # kept on the device: read once, with the row
        self._samples.append((learn.batch[0][:k].detach(), learn.preds[:k].detach(), learn.batch[-1][:k].detach()))

    def _table(self, learn, epoch: int):
        x, preds, targs = (torch.cat([s[i] for s in self._samples]).cpu() for i in range(3))
        self._samples = []
        pre = getattr(learn, 'preprocess', None) or getattr(learn.dls, 'preprocess', None)
        classes = self.classes or getattr(pre, 'classes', None) or None
        decoded = preds.argmax(1) if preds.dim() == 2 and preds.shape[1] > 1 else preds
        def label(v):
            v = v.tolist()
            return classes[v] if classes and isinstance(v, int) and 0 <= v < len(classes) else v
        images = x.dim() == 3 or (x.dim() == 4 and x.shape[1] in (1, 3))
        table = self._wandb.Table(columns=['epoch'] + (['image'] if images else []) + ['predicted', 'actual'])
        for xi, p, t in zip(x, decoded, targs):
            p, t = label(p), label(t)
            img = [self._wandb.Image(_display(xi, pre), caption=f'{p} / {t}')] if images else []
            table.add_data(epoch, *img, p, t)
        return table

    # --- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self):
        """The id of the run this callback started, so a fit continued from a checkpoint logs on in that run."""
        return {'run_id': self.run_id}

    def load_state_dict(self, sd): self.run_id = sd.get('run_id')


def _display(x: torch.Tensor, pre=None):
    """An input image `(H, W)` or `(C, H, W)` as uint8 `(H, W)` or `(H, W, C)`: un-normalised with `pre`'s
    mean/std when there are some, else stretched to its own range."""
    x = x.float()
    if x.dim() == 2: x = x[None]
    mean, std = getattr(pre, 'mean', None), getattr(pre, 'std', None)
    if mean is not None and std is not None:
        x = x * torch.tensor(std, dtype=x.dtype)[:, None, None] + torch.tensor(mean, dtype=x.dtype)[:, None, None]
    else: x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    img = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    return img[..., 0].numpy() if img.shape[-1] == 1 else img.numpy()
