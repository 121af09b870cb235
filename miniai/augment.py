"""Batch augmentation on the device, and predictions with test-time augmentation.

`BatchTransformCB` applies a transform to each batch's inputs. The transforms (`RandCrop`, `RandHFlip`,
`RandErase`, and the functions under them) draw their randomness per image from torch's global RNG on the batch's
device: vectorised, with no host sync, and repeatable with `set_seed`. torchvision's v2 transforms draw one set of
parameters per call, i.e. one crop for a whole batch, which is why these are hand-written. `CapturePreds` and
`get_preds` collect a loader's predictions (with `tta=True`, averaged with those on flipped images).
Explained in nbs/07_augment.ipynb.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from .callbacks import to_cpu
from .core import Callback

__all__ = ['BatchTransformCB', 'random_crop', 'hflip', 'random_hflip', 'random_erase', 'RandCrop', 'RandHFlip',
           'RandErase', 'default_tfms', 'show_image_batch', 'CapturePreds', 'get_preds']


class BatchTransformCB(Callback):
    """Replace the batch's inputs `learn.batch[0]` by `tfm(inputs)` on training (`on_train`) and/or validation
    (`on_val`) batches, after `DeviceCB` has moved them."""
    order = -10  # after DeviceCB (-20): the transform runs on the batch's device

    def __init__(self, tfm: Callable, on_train: bool = True, on_val: bool = False):
        if not callable(tfm): raise TypeError(f"tfm must be callable on a batch of inputs, got {tfm!r}")
        self.tfm, self.on_train, self.on_val = tfm, on_train, on_val

    def before_batch(self, learn):
        if (self.on_train and learn.training) or (self.on_val and not learn.training):
            learn.batch = (self.tfm(learn.batch[0]), *learn.batch[1:])


# ---------------------------------------------------------------- per-image random transforms
def _images(x: torch.Tensor) -> torch.Tensor:
    """`x` as `(N, C, H, W)`: a `(N, H, W)` batch gets a channel axis (as a view)."""
    if x.dim() == 3: return x.unsqueeze(1)
    if x.dim() == 4: return x
    raise ValueError(f"expected a batch of images (N, C, H, W) or (N, H, W), got shape {tuple(x.shape)}")


def _pair(v) -> tuple[int, int]: return (v, v) if isinstance(v, int) else tuple(v)


def random_crop(x: torch.Tensor, size: int | tuple[int, int] | None = None, padding: int = 1,
                mode: str = 'reflect') -> torch.Tensor:
    """Pad `x` by `padding` on each side (`mode`: an `F.pad` mode), then cut a `size` window (default: the input's
    size) at a random offset drawn for each image."""
    xi = _images(x)
    n, c, h, w = xi.shape
    th, tw = _pair(size) if size is not None else (h, w)
    # reflect (default): the border continues the image; a constant 0 is mid-grey once the data is normalised
    if padding: xi = F.pad(xi, (padding,) * 4, mode=mode)
    ph, pw = xi.shape[-2:]
    if th > ph or tw > pw: raise ValueError(f"crop size {(th, tw)} is larger than the padded image {(ph, pw)}")
    # rows, then columns, gathered at per-image offsets: one kernel each, no loop over images
    dy = torch.randint(0, ph - th + 1, (n, 1), device=x.device) + torch.arange(th, device=x.device)
    dx = torch.randint(0, pw - tw + 1, (n, 1), device=x.device) + torch.arange(tw, device=x.device)
    xi = xi.gather(2, dy[:, None, :, None].expand(n, c, th, pw))
    xi = xi.gather(3, dx[:, None, None, :].expand(n, c, th, tw))
    return xi if x.dim() == 4 else xi.squeeze(1)


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Every image of `x` mirrored left to right (the last axis): the usual test-time augmentation."""
    return x.flip(-1)


def random_hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror each image of `x` left to right with probability `p`, drawn per image."""
    flip = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)


def random_erase(x: torch.Tensor, pct: float = 0.2, max_num: int = 4) -> torch.Tensor:
    """Replace 0 to `max_num` rectangles (each `pct` of the height and width) per image by Gaussian noise with the
    batch's mean and std, clamped to the batch's range (the course's `RandErase`, drawn per image)."""
    if not x.is_floating_point(): raise TypeError(f"random_erase needs float images, got {x.dtype}")
    xi = _images(x)
    n, h, w, dev = xi.shape[0], *xi.shape[-2:], x.device
    eh, ew = max(int(pct * h), 1), max(int(pct * w), 1)
    active = torch.arange(max_num, device=dev) < torch.randint(0, max_num + 1, (n, 1), device=dev)  # (n, k)
    top = (torch.rand(n, max_num, 1, device=dev) * (h - eh + 1)).long()
    left = (torch.rand(n, max_num, 1, device=dev) * (w - ew + 1)).long()
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_r = (rows >= top) & (rows < top + eh)                                                  # (n, k, h)
    in_c = (cols >= left) & (cols < left + ew)                                                # (n, k, w)
    mask = (in_r[..., :, None] & in_c[..., None, :] & active[..., None, None]).any(1)        # (n, h, w)
    # statistics stay 0-d tensors on the device: reading them on the host would sync every batch
    mean, std, lo, hi = xi.mean(), xi.std(), xi.min(), xi.max()
    noise = (torch.randn_like(xi) * std + mean).clamp(lo, hi)
    out = torch.where(mask[:, None], noise, xi)
    return out if x.dim() == 4 else out.squeeze(1)


class RandCrop(nn.Module):
    """`random_crop(x, size, padding, mode)` as a module, to compose with `nn.Sequential`."""
    def __init__(self, size: int | tuple[int, int] | None = None, padding: int = 1, mode: str = 'reflect'):
        super().__init__()
        if padding < 0: raise ValueError(f"padding must be >= 0, got {padding}")
        if mode not in ('constant', 'reflect', 'replicate', 'circular'):
            raise ValueError(f"mode must be one of 'constant', 'reflect', 'replicate', 'circular'; got {mode!r}")
        self.size, self.padding, self.mode = size, padding, mode

    def forward(self, x): return random_crop(x, self.size, self.padding, self.mode)
    def extra_repr(self): return f'size={self.size}, padding={self.padding}, mode={self.mode!r}'


class RandHFlip(nn.Module):
    """`random_hflip(x, p)` as a module: each image mirrored with probability `p`."""
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p <= 1: raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x): return random_hflip(x, self.p)
    def extra_repr(self): return f'p={self.p}'


class RandErase(nn.Module):
    """`random_erase(x, pct, max_num)` as a module: up to `max_num` noise rectangles of side `pct` per image."""
    def __init__(self, pct: float = 0.2, max_num: int = 4):
        super().__init__()
        if not 0 < pct <= 1: raise ValueError(f"pct must be in (0, 1], got {pct}")
        if max_num < 0: raise ValueError(f"max_num must be >= 0, got {max_num}")
        self.pct, self.max_num = pct, max_num

    def forward(self, x): return random_erase(x, self.pct, self.max_num)
    def extra_repr(self): return f'pct={self.pct}, max_num={self.max_num}'


def default_tfms(padding: int = 1, flip: bool = True, erase: bool = False) -> nn.Sequential:
    """Fashion-MNIST training augmentation: `RandCrop(padding=padding)`, `RandHFlip()` if `flip`, `RandErase()`
    if `erase`.

    The course's choice (its 14_augment notebook: a 1-pixel crop and flips). Its items sit near the centre, so 1
    pixel of shift is already a real change. In short runs, where the ResNet trained with crops barely fits its
    training set, flips alone (`padding=0`) do better (docs/benchmarks.md). Erasing is for longer runs still.
    """
    tfms = [RandCrop(padding=padding)] if padding else []
    if flip: tfms.append(RandHFlip())
    if erase: tfms.append(RandErase())
    return nn.Sequential(*tfms)


def show_image_batch(x: torch.Tensor, n: int = 16, nrows: int | None = None, titles=None, imsize: float = 1.5,
                     cmap: str = 'gray'):
    """The first `n` images of the batch `x` (`(N, C, H, W)` or `(N, H, W)`) in a grid; returns the figure."""
    import matplotlib.pyplot as plt
    x = to_cpu(_images(x[:n])).float()
    n = len(x)
    nrows = nrows or max(int(n ** 0.5), 1)
    ncols = -(-n // nrows)
    fig, axs = plt.subplots(nrows, ncols, figsize=(imsize * ncols, imsize * nrows), squeeze=False)
    for i, ax in enumerate(axs.flat):
        ax.set_axis_off()
        if i >= n: continue
        im = x[i].permute(1, 2, 0).numpy()
        ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap=cmap)
        if titles is not None: ax.set_title(str(titles[i]), fontsize=8)
    return fig


# ---------------------------------------------------------------- predictions
class CapturePreds(Callback):
    """Keep the validation phase's predictions `preds`, targets `targs` (and inputs `inputs` with `with_input`).

    Batches stay on the device until the epoch ends, then are concatenated and copied to the CPU once. With
    `tta_tfm`, `preds` holds softmax probabilities averaged over the inputs and `tta_tfm(inputs)`.
    """
    def __init__(self, with_input: bool = False, tta_tfm: Callable | None = None):
        self.with_input, self.tta_tfm = with_input, tta_tfm
        self.preds = self.targs = self.inputs = None

    def before_epoch(self, learn): self._preds, self._targs, self._inputs = [], [], []

    def after_batch(self, learn):
        if learn.training: return
        x, preds = learn.batch[0], learn.preds.detach()
        if self.tta_tfm is not None:
            with torch.no_grad(): preds2 = learn.model(self.tta_tfm(x))
            preds = (preds.float().softmax(1) + preds2.float().softmax(1)) / 2
        self._preds.append(preds)
        self._targs.append(learn.batch[-1])
        if self.with_input: self._inputs.append(x)

    def after_epoch(self, learn):
        if learn.training or not self._preds: return
        self.preds, self.targs = to_cpu(torch.cat(self._preds)), to_cpu(torch.cat(self._targs))
        self.inputs = to_cpu(torch.cat(self._inputs)) if self.with_input else None

    def cleanup_fit(self, learn): self._preds, self._targs, self._inputs = [], [], []


# what `fit` leaves on the learner; get_preds puts it back as it was
_FIT_STATE = ('epoch', 'epochs', 'n_epochs', 'dl', 'iter', 'n_iter', 'batch', 'preds', 'loss', 'training')


def _with_valid(dls, dl):
    """A shallow copy of `dls` whose `valid` is `dl`: the learner's own `dls` object is never modified."""
    res = copy.copy(dls) if hasattr(dls, '__dict__') else SimpleNamespace(train=getattr(dls, 'train', None))
    res.valid = dl
    return res


def get_preds(learn, dl=None, with_input: bool = False, tta: bool = False,
              tfm: Callable = hflip) -> tuple[torch.Tensor, ...]:
    """Predictions and targets over `dl` (default: `learn.dls.valid`) as CPU tensors, one row per item:
    `(preds, targs)`, or `(inputs, preds, targs)` with `with_input`.

    `preds` are the model's outputs; with `tta`, the mean of the softmax probabilities on the images and on
    `tfm(images)` (default: flipped). The learner's callbacks run (DeviceCB, a `BatchTransformCB` with `on_val`),
    except those marked `lr_find_excluded` (MetricsCB, ProgressCB): no history row is added. The model's weights,
    mode, the optimizer, `learn.cbs`, `learn.dls` and the batch state are as before.
    """
    cb = CapturePreds(with_input=with_input, tta_tfm=tfm if tta else None)
    all_cbs, dls, was_training = list(learn.cbs), learn.dls, learn.model.training
    state = {k: vars(learn)[k] for k in _FIT_STATE if k in vars(learn)}
    if dl is not None: learn.dls = _with_valid(dls, dl)
    learn.cbs[:] = [c for c in all_cbs if not getattr(c, 'lr_find_excluded', False)]
    try: learn.fit(1, train=False, cbs=[cb])
    finally:
        learn.cbs[:] = all_cbs
        learn.dls = dls
        learn.model.train(was_training)
        for k in _FIT_STATE:
            if k in state: setattr(learn, k, state[k])
            else: vars(learn).pop(k, None)
    if cb.preds is None: raise ValueError("get_preds saw no complete validation epoch: is the loader empty?")
    return (cb.inputs, cb.preds, cb.targs) if with_input else (cb.preds, cb.targs)
