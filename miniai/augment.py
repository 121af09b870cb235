"""Batch augmentation on the device, and predictions with test-time augmentation.

`InputTransformCB` applies a transform to each training batch's inputs (`BatchTransformCB`, re-exported from
`miniai.init`, to the whole batch). The transforms (`RandCrop`, `RandHFlip`,
`RandErase`, and the functions under them) draw their randomness per image from torch's global RNG on the batch's
device: vectorised, with no host sync, and repeatable with `set_seed`. torchvision's v2 transforms draw one set of
parameters per call, i.e. one crop for a whole batch, which is why these are hand-written. The course's
`rand_erase`/`rand_copy` (one set of rectangles for the whole batch, in place) are here too. `CapturePreds`,
`capture_preds` and `get_preds` collect a loader's predictions (`get_preds`: probabilities for a cross-entropy
learner, as fastai's; with `tta=True`, averaged with those on flipped images); `summary` and `show_image_batch`
also work on a learner, as the course's `Learner` methods do.
Explained in nbs/07_augment.ipynb.
"""
from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from .callbacks import to_cpu
from .core import Callback, CancelFitException, Order, as_cb_list
from .init import BatchTransformCB, summary

__all__ = ['summary', 'show_image_batch', 'CapturePreds', 'capture_preds', '_rand_erase1', 'rand_erase', 'RandErase',
           '_rand_copy1', 'rand_copy', 'RandCopy', 'BatchTransformCB', 'InputTransformCB', 'random_crop', 'hflip',
           'random_hflip', 'random_erase', 'RandCrop', 'RandHFlip', 'default_tfms', 'get_preds', 'loss_activation',
           'class_probs']


class InputTransformCB(Callback):
    """Replace the batch's inputs `learn.batch[0]` by `tfm(inputs)` on training (`on_train`) and/or validation
    (`on_val`) batches, after `DeviceCB` has moved them: the usual way to augment (targets are left alone)."""
    order = Order.TRANSFORM  # after DeviceCB: the transform runs on the batch's device

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


def _check_pct_num(pct, max_num):
    if not 0 < pct <= 1: raise ValueError(f"pct must be in (0, 1], got {pct}")
    if max_num < 0: raise ValueError(f"max_num must be >= 0, got {max_num}")


class RandErase(nn.Module):
    """Up to `max_num` noise rectangles of side `pct`: `rand_erase` (the course's: the same rectangles in every
    image of the batch, in place), or with `per_image=True` `random_erase` (drawn per image, on the device)."""
    def __init__(self, pct: float = 0.2, max_num: int = 4, per_image: bool = False):
        super().__init__()
        _check_pct_num(pct, max_num)
        self.pct, self.max_num, self.per_image = pct, max_num, per_image

    def forward(self, x):
        return (random_erase if self.per_image else rand_erase)(x, self.pct, self.max_num)

    def extra_repr(self): return f'pct={self.pct}, max_num={self.max_num}, per_image={self.per_image}'


# ---------------------------------------------------------------- the course's whole-batch erase and copy
def _patch(x: torch.Tensor, pct: float) -> tuple[slice, slice]:
    """A random window of `pct` of the height and width of the images in `x` (the last two axes)."""
    h, w = x.shape[-2:]
    sh, sw = int(pct * h), int(pct * w)
    top, left = int(random.random() * (1 - pct) * h), int(random.random() * (1 - pct) * w)
    return slice(top, top + sh), slice(left, left + sw)


def _rand_erase1(x: torch.Tensor, pct: float, xm, xs, mn, mx):
    """Fill one random `pct` window of every image of `x` with noise of mean `xm` and std `xs`, then clamp `x` to
    [`mn`, `mx`]; in place."""
    rows, cols = _patch(x, pct)
    x[..., rows, cols] = torch.randn_like(x[..., rows, cols]) * xs + xm
    x.clamp_(mn, mx)


def rand_erase(x: torch.Tensor, pct: float = 0.2, max_num: int = 4) -> torch.Tensor:
    """Erase 0 to `max_num` random `pct` windows (the same ones in every image of the batch `x`) with noise of the
    batch's mean and std, kept in the batch's range; `x` is changed in place and returned."""
    if not x.is_floating_point(): raise TypeError(f"rand_erase needs float images, got {x.dtype}")
    xm, xs, mn, mx = x.mean(), x.std(), x.min(), x.max()
    for _ in range(random.randint(0, max_num)): _rand_erase1(x, pct, xm, xs, mn, mx)
    return x


def _rand_copy1(x: torch.Tensor, pct: float):
    """Copy one random `pct` window of every image of `x` onto another random window of the same size; in place."""
    dst, src = _patch(x, pct), _patch(x, pct)
    x[..., dst[0], dst[1]] = x[..., src[0], src[1]].clone()  # the windows may overlap


def rand_copy(x: torch.Tensor, pct: float = 0.2, max_num: int = 4) -> torch.Tensor:
    """Copy 0 to `max_num` random `pct` windows of the batch `x` elsewhere in the images (the same in every image),
    so the images keep their own texture instead of noise; `x` is changed in place and returned."""
    for _ in range(random.randint(0, max_num)): _rand_copy1(x, pct)
    return x


class RandCopy(nn.Module):
    """`rand_copy(x, pct, max_num)` as a module."""
    def __init__(self, pct: float = 0.2, max_num: int = 4):
        super().__init__()
        _check_pct_num(pct, max_num)
        self.pct, self.max_num = pct, max_num

    def forward(self, x): return rand_copy(x, self.pct, self.max_num)
    def extra_repr(self): return f'pct={self.pct}, max_num={self.max_num}'


def default_tfms(padding: int = 1, flip: bool = True, erase: bool = False) -> nn.Sequential:
    """Fashion-MNIST training augmentation: `RandCrop(padding=padding)`, `RandHFlip()` if `flip`,
    `RandErase(per_image=True)` if `erase`.

    The course's choice (its 14_augment notebook: a 1-pixel crop and flips). Its items sit near the centre, so 1
    pixel of shift is already a real change. In short runs, where the ResNet trained with crops barely fits its
    training set, flips alone (`padding=0`) do better (docs/benchmarks.md). Erasing is for longer runs still.
    """
    tfms = [RandCrop(padding=padding)] if padding else []
    if flip: tfms.append(RandHFlip())
    if erase: tfms.append(RandErase(per_image=True))
    return nn.Sequential(*tfms)


def _flops(x: torch.Tensor, h: int, w: int) -> int:
    """Multiply-adds per item of the parameter `x` in a layer whose output is `h`×`w`: a conv kernel (4-d) is used
    at every output position, a weight matrix or bias once."""
    return x.numel() * h * w if x.dim() == 4 else x.numel()


def _show_tensors(x: torch.Tensor, n: int = 16, nrows: int | None = None, titles=None, imsize: float = 1.5,
                  cmap: str = 'gray'):
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


class _GrabBatch(Callback):
    """Keep the first training batch as the model would get it (after every `before_batch`), then stop the fit
    before anything is computed: showing a batch never trains."""
    order = Order.LAST

    def before_batch(self, learn):
        self.batch = learn.batch
        raise CancelFitException()


def show_image_batch(x, max_n: int | None = None, cbs=None, **kwargs):
    """Show the first images of a batch in a grid; returns the figure.

    `x` is a learner (the course's `learn.show_image_batch(max_n=9, cbs=None, **kwargs)`): its first training
    batch, after the learner's callbacks and `cbs` have transformed it, `max_n` images, `kwargs` to
    `miniai.datasets.show_images` (`nrows`, `ncols`, `titles`, `imsize`, ...). No step is taken.
    Or `x` is a batch of images `(N, C, H, W)` or `(N, H, W)`: `kwargs` are `n` (default 16), `nrows`, `titles`,
    `imsize` (1.5), `cmap` ('gray').
    """
    if isinstance(x, torch.Tensor):
        if max_n is not None: kwargs.setdefault('n', max_n)
        if cbs is not None: raise TypeError("cbs only apply when showing a learner's batch, not a tensor")
        return _show_tensors(x, **kwargs)
    if not hasattr(x, 'fit'):
        raise TypeError(f"show_image_batch needs a Learner or a tensor of images, got {type(x).__name__}")
    import matplotlib.pyplot as plt

    from .datasets import show_images
    grab = _GrabBatch()
    # a look at a batch: no trace in the logs, counters, optimizer or weights (a learner of the user's own that has
    # no `isolated` runs the fit as it is)
    with (x.isolated(weights=True) if hasattr(x, 'isolated') else contextlib.nullcontext()):
        x.fit(1, valid=False, cbs=[grab] + as_cb_list(cbs), start_epoch=0)
    if not hasattr(grab, 'batch'): raise ValueError("the learner's training loader gave no batch")
    show_images(to_cpu(grab.batch[0][:9 if max_n is None else max_n]), **kwargs)
    return plt.gcf()


# ---------------------------------------------------------------- predictions
class CapturePreds(Callback):
    """Keep the validation phase's predictions `preds`, targets `targs` and inputs `inputs` (unless
    `with_input=False`); `all_preds`, `all_targs`, `all_inps` are the course's names for them.

    `preds` are `act(outputs)` (the model's outputs when `act` is None); with `tta_tfm`, the mean of that on the
    inputs and on `tta_tfm(inputs)`. Batches stay on the device until the epoch ends, then are concatenated and
    copied to the CPU once.
    """
    def __init__(self, with_input: bool = True, tta_tfm: Callable | None = None, act: Callable | None = None):
        self.with_input, self.tta_tfm, self.act = with_input, tta_tfm, act
        self.preds = self.targs = self.inputs = None

    def before_epoch(self, learn): self._preds, self._targs, self._inputs = [], [], []

    def after_batch(self, learn):
        if learn.training: return
        x, act = learn.batch[0], self.act or (lambda o: o)
        preds = act(learn.preds.detach())
        if self.tta_tfm is not None:
            with torch.no_grad(): preds = (preds.float() + act(learn.model(self.tta_tfm(x))).float()) / 2
        self._preds.append(preds)
        self._targs.append(learn.batch[-1])
        if self.with_input: self._inputs.append(x)

    def after_epoch(self, learn):
        if learn.training or not self._preds: return
        self.preds, self.targs = to_cpu(torch.cat(self._preds)), to_cpu(torch.cat(self._targs))
        self.inputs = to_cpu(torch.cat(self._inputs)) if self.with_input else None

    def cleanup_fit(self, learn): self._preds, self._targs, self._inputs = [], [], []

    all_preds = property(lambda self: self.preds)
    all_targs = property(lambda self: self.targs)
    all_inps = property(lambda self: self.inputs)


# what `fit` leaves on the learner; get_preds puts it back as it was
def _with_valid(dls, dl):
    """A shallow copy of `dls` whose `valid` is `dl`: the learner's own `dls` object is never modified."""
    res = copy.copy(dls) if hasattr(dls, '__dict__') else SimpleNamespace(train=getattr(dls, 'train', None))
    res.valid = dl
    return res


def class_probs(outputs: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis (1) in float32: a classifier's outputs as probabilities."""
    return outputs.float().softmax(1)


def loss_activation(loss_func) -> Callable | None:
    """What turns a model's outputs into the predictions `get_preds` returns for a learner trained with
    `loss_func`: `class_probs` (softmax) for cross entropy (`F.cross_entropy`, `nn.CrossEntropyLoss`, or a
    `functools.partial` of either); the loss's own `activation` where it has one (as fastai's losses do); else
    None, the raw outputs."""
    act = getattr(loss_func, 'activation', None)
    if callable(act): return act
    f = loss_func.func if isinstance(loss_func, partial) else loss_func
    return class_probs if f is F.cross_entropy or isinstance(f, nn.CrossEntropyLoss) else None


def get_preds(learn, dl=None, with_input: bool = False, tta: bool = False, tfm: Callable = hflip,
              act: Callable | str | None = 'auto') -> tuple[torch.Tensor, ...]:
    """Predictions and targets over `dl` (default: `learn.dls.valid`) as CPU tensors, one row per item:
    `(preds, targs)`, or `(inputs, preds, targs)` with `with_input`.

    `preds` are, as in fastai, the outputs after the loss's activation: probabilities (softmax) for a learner
    trained with cross entropy, the raw outputs for any other loss (`loss_activation` decides). `act` overrides
    that: a function of the outputs, or None for the raw outputs. With `tta`, `preds` is the mean of those same
    values on the images and on `tfm(images)` (default: flipped), so both paths return the same kind of values.
    The learner's callbacks run (DeviceCB, a `BatchTransformCB` with `on_val`), except those with
    `run_in_isolated_fits = False` (MetricsCB, ProgressCB): no history row is added. It runs in `learn.isolated()`:
    the model's weights and mode, the optimizer, `learn.cbs`, `learn.dls`, the counters and the batch state are as
    before.

    Raises:
        ValueError: no `dl` and the learner has no validation loader (a learner from `load_learner` has no data).
    """
    if isinstance(act, str):
        if act != 'auto': raise ValueError(f"act must be 'auto', None or a function of the outputs, got {act!r}")
        act = loss_activation(getattr(learn, 'loss_func', None))
    if dl is None and getattr(learn.dls, 'valid', None) is None:
        raise ValueError("this learner has no validation loader to predict on (a learner from load_learner has no "
                         "data): pass one, e.g. learn.get_preds(dl=DataLoader(...)) or "
                         "Interpretation.from_learner(learn, dl), with the inputs normalised as in training")
    cb = CapturePreds(with_input=with_input, tta_tfm=tfm if tta else None, act=act)
    with learn.isolated():
        if dl is not None: learn.dls = _with_valid(learn.dls, dl)
        learn.fit(1, train=False, cbs=[cb])
    if cb.preds is None: raise ValueError("get_preds saw no complete validation epoch: is the loader empty?")
    return (cb.inputs, cb.preds, cb.targs) if with_input else (cb.preds, cb.targs)


def capture_preds(learn, cbs=None, inps: bool = False) -> tuple[torch.Tensor, ...]:
    """The course's `learn.capture_preds()`: `(preds, targs)` over the validation set, or `(preds, targs, inputs)`
    with `inps`, as CPU tensors; `cbs` (one callback or a list) join the learner's for this pass, e.g. a
    `BatchTransformCB` that flips the validation images for test-time augmentation. See `get_preds`.
    """
    extra = as_cb_list(cbs)
    learn.add_cbs(extra)
    try: res = get_preds(learn, with_input=inps, act=None)   # the model's outputs, as in the course
    finally: learn.remove_cbs(extra)
    return (*res[1:], res[0]) if inps else res
