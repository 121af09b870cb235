"""Using a trained classifier on new images: `Preprocess`, `classify`, `export` and `load_learner`.

`Preprocess` is the recipe that turns raw images into model inputs (the normalisation `get_dls` applies to its
uint8 batches), plus the class names; it is plain data, so it travels inside an exported file. `classify` takes
one image (PIL image, file path, uint8 or float tensor, numpy array) or a batch of them and returns class names and
probabilities; `learn.classify` calls it. It is not named `predict` because `predict` is already the loop step that
runs the model on `learn.batch` (the course's name, which callbacks and `TrainLearner` subclasses override).
`export` writes one file of state_dicts and plain values (no pickled code: it loads with `weights_only=True`);
`load_learner` rebuilds a learner ready to classify from it and the model (or its constructor).
Explained in nbs/12_inference.ipynb.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import unwrap_model
from .errors import DataError
from .files import atomic_write

__all__ = ['Preprocess', 'Prediction', 'classify', 'export', 'load_learner', 'fashion_preprocess']

_FORMAT = 'miniai-inference-1'


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model inputs: resize to `size` (H, W), `channels` (1 grey, 3 RGB), scale to [0, 1],
    then `(x - mean) / std` per channel; `classes` names the model's outputs in order.

    Plain data (`to_dict`/`from_dict`), so an exported model carries it. Calling it on images gives a float32
    `(N, C, H, W)` batch, identical to what `get_dls` feeds the model for the same uint8 pixels.
    """
    mean: tuple[float, ...] = (0.,)
    std: tuple[float, ...] = (1.,)
    size: tuple[int, int] = (28, 28)
    channels: int = 1
    classes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        for k in ('mean', 'std', 'classes'): object.__setattr__(self, k, tuple(getattr(self, k)))
        object.__setattr__(self, 'size', (self.size, self.size) if isinstance(self.size, int) else tuple(self.size))
        if self.channels not in (1, 3): raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if len(self.mean) not in (1, self.channels) or len(self.std) not in (1, self.channels):
            raise ValueError(f"mean and std need 1 or {self.channels} values, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std): raise ValueError(f"std must be > 0, got {self.std}")

    def to_dict(self) -> dict: return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess: return cls(**d)

    def __call__(self, items) -> torch.Tensor:
        """`items` (one image or a batch, see `classify`) as a normalised float32 `(N, C, H, W)` CPU batch."""
        return self.normalise(self.images(items)[0])

    def images(self, items) -> tuple[torch.Tensor, bool]:
        """`items` as a `(N, C, H, W)` batch in [0, 1] (float32) or 0..255 (uint8), and whether it was one image."""
        if isinstance(items, (list, tuple)):
            if not items: raise ValueError("classify got an empty list of images")
            return torch.stack([self._one(o) for o in items]), False
        if isinstance(items, (torch.Tensor, np.ndarray)):
            x = torch.as_tensor(items)
            if x.dim() == 4 or (x.dim() == 3 and x.shape[0] != self.channels and self.channels == 1):
                return torch.stack([self._one(o) for o in (x if x.dim() == 4 else x[:, None])]), False
        return self._one(items)[None], True

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Scale a `(N, C, H, W)` batch to [0, 1] if uint8, then `(x - mean) / std`: the ops of `get_dls`."""
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return (x - mean) / std

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Undo `normalise`: model inputs back to [0, 1] images, for showing them."""
        mean, std = (torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return (x.float() * std + mean).clamp(0, 1)

    def _one(self, im) -> torch.Tensor:
        """One image as `(C, H, W)`: uint8 (from a file, PIL or uint8 input) or float in [0, 1]."""
        if isinstance(im, (str, os.PathLike)): im = _open(Path(im))
        if _is_pil(im): return self._from_pil(im)
        if not isinstance(im, (torch.Tensor, np.ndarray)):
            raise TypeError(f"classify takes PIL images, image file paths, tensors or arrays (or a list of them); "
                            f"got {type(im).__name__}")
        x = torch.as_tensor(im).detach().cpu()
        if x.dim() == 2: x = x[None]
        if x.dim() != 3: raise ValueError(f"an image must be (H, W) or (C, H, W), got shape {tuple(x.shape)}")
        if x.shape[0] != self.channels:
            raise ValueError(f"the model takes {self.channels}-channel images, got shape {tuple(x.shape)}")
        if x.is_floating_point():
            lo, hi = float(x.min()), float(x.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ValueError(f"float images must hold values in [0, 1] (as torchvision's to_tensor gives), got "
                                 f"{lo:.3g}..{hi:.3g}; pass uint8 pixels 0..255, or already-normalised inputs "
                                 "straight to learn.model")
        elif x.dtype != torch.uint8: raise TypeError(f"integer images must be uint8 (0..255), got {x.dtype}")
        if tuple(x.shape[-2:]) != self.size:
            y = F.interpolate(x[None].float(), size=self.size, mode='bilinear', antialias=True, align_corners=False)[0]
            x = y if x.is_floating_point() else y.round().clamp(0, 255).to(torch.uint8)
        return x

    def _from_pil(self, im) -> torch.Tensor:
        im = im.convert('L' if self.channels == 1 else 'RGB')
        if im.size != self.size[::-1]: im = im.resize(self.size[::-1])       # PIL sizes are (W, H)
        a = torch.from_numpy(np.asarray(im, np.uint8).copy())
        return a[None] if a.dim() == 2 else a.permute(2, 0, 1)


def _is_pil(o) -> bool:
    try:
        from PIL import Image
    except ImportError: return False
    return isinstance(o, Image.Image)


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError
    if not path.is_file(): raise FileNotFoundError(f"no image file at {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path} is not an image file PIL can read ({type(e).__name__}); use PNG, JPEG, ...") from e


def fashion_preprocess() -> Preprocess:
    """The preprocessing of `get_dls`' Fashion-MNIST batches: 28x28 grey, the course's mean/std, its 10 classes."""
    from .datasets import FASHION_CLASSES, XMEAN, XSTD
    return Preprocess(mean=(XMEAN,), std=(XSTD,), size=(28, 28), channels=1, classes=FASHION_CLASSES)


class Prediction(NamedTuple):
    """What `classify` says about one image: `label` (class name), its `index` and `prob`, and all `probs`."""
    label: str
    index: int
    prob: float
    probs: torch.Tensor


def _preprocess_of(learn) -> Preprocess:
    pre = learn.preprocess if learn.preprocess is not None else getattr(learn.dls, 'preprocess', None)
    if pre is None:
        raise ValueError("this learner does not know how its training images were prepared: set "
                         "`learn.preprocess = Preprocess(mean=..., std=..., size=..., classes=...)` "
                         "(for get_dls' Fashion-MNIST: `fashion_preprocess()`)")
    return pre


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device('cpu')


def classify(learn, items, bs: int = 256) -> Prediction | list[Prediction]:
    """Classify `items` with `learn.model` after `learn.preprocess` (else `learn.dls.preprocess`).

    `items`: one image (a PIL image, a file path, a uint8 tensor 0..255 or float tensor in [0, 1] shaped (H, W)
    or (C, H, W), or a numpy array) gives one `Prediction`; a batch (a list of those, an `(N, C, H, W)` tensor or,
    for grey images, `(N, H, W)`) gives a list. Probabilities are the softmax of the model's outputs. The model
    runs in eval mode under `torch.no_grad()`, on its own device, `bs` images at a time; its mode is restored.
    """
    pre = _preprocess_of(learn)
    x, single = pre.images(items)
    model, was_training = learn.model, learn.model.training
    device = _model_device(model)
    model.eval()
    try:
        with torch.no_grad():
            out = torch.cat([model(pre.normalise(x[i:i + bs]).to(device)).float().cpu() for i in range(0, len(x), bs)])
    finally: model.train(was_training)
    if out.dim() != 2 or (pre.classes and out.shape[1] != len(pre.classes)):
        raise ValueError(f"the model's output has shape {tuple(out.shape)}, expected (N, {len(pre.classes) or 'C'}): "
                         "classify is for classifiers with one output per class")
    probs = out.softmax(1)
    res = [_prediction(p, pre.classes) for p in probs]
    return res[0] if single else res


def _prediction(probs: torch.Tensor, classes: Sequence[str]) -> Prediction:
    i = int(probs.argmax())
    return Prediction(classes[i] if classes else str(i), i, float(probs[i]), probs)


def export(learn, path) -> Path:
    """Write `learn`'s model weights and preprocessing (with class names) to the one file `path`, atomically.

    Only state_dicts and plain values go in: `torch.load(path, weights_only=True)` reads it, and `load_learner`
    rebuilds a learner from it given the model.
    """
    path = Path(path)
    weights = {k: v.detach().cpu() for k, v in unwrap_model(learn.model).state_dict().items()}
    state = {'format': _FORMAT, 'model': weights, 'preprocess': _preprocess_of(learn).to_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: torch.save(state, f))


def _read_export(path: Path) -> dict:
    if not path.is_file(): raise FileNotFoundError(f"no exported model at {path}")
    try: state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise DataError(f"{path} cannot be read as an exported model ({type(e).__name__}); export it again with "
                         "learn.export(path)") from e
    if not isinstance(state, dict) or state.get('format') != _FORMAT:
        raise DataError(f"{path} is not a miniai export (format {_FORMAT!r}); a training checkpoint loads with "
                         "learn.load(path), an export is written by learn.export(path)")
    return state


def load_learner(path, model: nn.Module | Callable[[], nn.Module], device: str | torch.device | None = None,
                 loss_func: Callable = F.cross_entropy):
    """A `TrainLearner` ready to `classify` (and `get_preds(dl)`): `model` (a module, or a function that builds
    one) with the weights and preprocessing exported to `path`, in eval mode on `device` (default: CPU).

    Raises:
        FileNotFoundError, ValueError: `path` is missing, unreadable, or not written by `export`.
        ValueError: `model` is not the architecture that was exported (the message lists the differing keys).
    """
    from .learner import TrainLearner
    path = Path(path)
    state = _read_export(path)
    if not isinstance(model, nn.Module): model = model()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or a function returning one, got {type(model).__name__}")
    try: model.load_state_dict(state['model'])
    except RuntimeError as e:
        raise DataError(f"{path} was exported from another model; build the same architecture. "
                         f"{str(e).splitlines()[0]} {' '.join(str(e).splitlines()[1:])[:600]}") from e
    learn = TrainLearner(model.to(device or 'cpu').eval(), loss_func=loss_func, opt_func=torch.optim.SGD)
    learn.preprocess = Preprocess.from_dict(state['preprocess'])
    return learn
