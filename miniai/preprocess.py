"""How raw images become model inputs: `Preprocess` (plain data, saved in exported models) and `read_image`.

`Preprocess` holds the steps `get_dls` applies to its uint8 batches (scale to [0, 1], then `(x - mean) / std`), the
model's input size and channels, and the class names. Everything a user may hand to `learn.classify` passes
through it: image files, PIL images, numpy arrays and tensors, one image or a batch, 8-bit, 16-bit or float
pixels, grey, RGB or RGBA. Each is read in one documented way (`Preprocess.image`), and whatever could be read
two ways is refused with a message saying how to pass it.

`read_image` reads an image file within bounds: it refuses a file that is not a regular file, one it may not
read, a decompression bomb (more pixels than `MAX_PIXELS`), a PNG whose text chunks inflate past Pillow's limit,
and 32-bit integer images whose white level cannot be known, each with one sentence saying what to do.
Explained in nbs/12_inference.ipynb.
"""
from __future__ import annotations

import math
import os
import stat
import struct
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError
from .files import open_regular

__all__ = ['Preprocess', 'read_image', 'MAX_SIDE', 'MAX_PIXELS']

MAX_SIDE = 4096            # the largest input side a model may declare: larger is a corrupt or hostile file
MAX_PIXELS = 89_478_485    # Pillow's decompression-bomb limit (a 1 GiB RGB image / 4 / 3); a larger file is refused
_CHANNELS = (1, 3, 4)      # what an image's channel axis may hold: grey, RGB, RGBA (alpha is dropped)
_BATCH_BYTES = 256 << 20   # at most this much float32 model input is built at once, whatever the batch size


def _bad(msg: str): raise ValueError(msg)


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model inputs: resize to `size` (H, W), `channels` (1 grey, 3 RGB), scale to [0, 1],
    then `(x - mean) / std` per channel; `classes` names the model's outputs in order.

    Plain data (`to_dict`/`from_dict`), so an exported model carries it, and checked when made: finite means,
    finite positive stds, a size of at most `MAX_SIDE` a side, class names that are strings. Calling it on
    images gives a float32 `(N, C, H, W)` batch, identical to what `get_dls` feeds the model for the same uint8
    pixels.
    """
    mean: tuple[float, ...] = (0.,)
    std: tuple[float, ...] = (1.,)
    size: tuple[int, int] = (28, 28)
    channels: int = 1
    classes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        # stored as python tuples of python numbers and strings: what torch.load(weights_only=True) reads back
        for k in ('mean', 'std', 'size', 'classes'):
            v = getattr(self, k)
            if _is_real(v): v = (v, v) if k == 'size' else (v,)
            if not isinstance(v, (tuple, list)): _bad(f"{k} must be a tuple, got {type(v).__name__}")
            object.__setattr__(self, k, tuple(v))
        self._check()
        for k, kind in (('mean', float), ('std', float), ('size', int), ('classes', str)):
            object.__setattr__(self, k, tuple(kind(o) for o in getattr(self, k)))
        object.__setattr__(self, 'channels', int(self.channels))

    def _check(self):
        if not _is_int(self.channels) or self.channels not in (1, 3):
            _bad(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        for k in ('mean', 'std'):
            v = getattr(self, k)
            if len(v) not in (1, self.channels) or not all(_is_real(o) and math.isfinite(o) for o in v):
                _bad(f"{k} needs {'1' if self.channels == 1 else '1 or 3'} finite number(s), got {v}")
        if any(s <= 0 for s in self.std): _bad(f"std must be > 0, got {self.std}")
        if len(self.size) != 2 or not all(_is_int(s) and 1 <= s <= MAX_SIDE for s in self.size):
            _bad(f"size must be (height, width), each 1 to {MAX_SIDE} pixels, got {self.size}")
        if not all(isinstance(c, str) for c in self.classes):
            _bad(f"classes must be strings, got {[type(c).__name__ for c in self.classes][:5]}")

    def to_dict(self) -> dict: return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """The `Preprocess` that `to_dict` gave `d`; unknown keys and invalid values raise ValueError."""
        if not isinstance(d, dict): _bad(f"a Preprocess is stored as a dict, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)}, key=str)
        if unknown: _bad(f"unknown preprocessing keys {unknown}")
        return cls(**d)

    def __call__(self, items) -> torch.Tensor:
        """`items` (one image or a batch, see `image` and `batches`) as a normalised float32 `(N, C, H, W)` batch."""
        return self.normalise(self.images(items)[0])

    # ------------------------------------------------------------ reading what users pass
    def is_one(self, items) -> bool:
        """Whether `items` is one image (a path, a PIL image, a 2-D or 3-D array or tensor), not a batch (a list or
        tuple of images, a 4-D array or tensor)."""
        if isinstance(items, (list, tuple)): return False
        return not (isinstance(items, (torch.Tensor, np.ndarray)) and items.ndim == 4)

    def batches(self, items, n: int = 256) -> Iterator[torch.Tensor]:
        """`items` (one image or a batch) as `(N, C, H, W)` batches of at most `n` images at the model's size:
        uint8 pixels, or float32 in [0, 1] where any image of the batch is not 8-bit."""
        n = max(1, min(n, _BATCH_BYTES // (4 * self.channels * self.size[0] * self.size[1])))
        if self.is_one(items): items = [items]
        if isinstance(items, (torch.Tensor, np.ndarray)):         # 4-D: its layout is read once for the batch
            x = _pixels(items)
            if _layout(x.shape[1:], self.size, 'a batch') == 'hwc': x = x.permute(0, 3, 1, 2)
            for i in range(0, len(x), n): yield _stack([self._fit(o) for o in x[i:i + n]])
            return
        if not items: _bad("classify got an empty list of images")
        for i in range(0, len(items), n): yield _stack([self.image(o) for o in items[i:i + n]])

    def images(self, items) -> tuple[torch.Tensor, bool]:
        """`items` as one `(N, C, H, W)` batch (see `batches`), and whether it was one image."""
        return torch.cat(_same_kind(list(self.batches(items)))), self.is_one(items)

    def image(self, im) -> torch.Tensor:
        """One image as `(C, H, W)` at the model's size and channels: uint8, or float32 in [0, 1].

        How `im` is read: a path is an image file (`read_image`); a PIL image keeps its mode's scale (16-bit
        modes are divided by 65535); an array or tensor is `(H, W)` grey, or `(C, H, W)` or `(H, W, C)` with C =
        1, 3 or 4 (RGBA: alpha is dropped). uint8 holds 0..255, uint16 0..65535, bool 0/1 and floats [0, 1].
        A 3-D shape that fits both layouts is read as the one whose (H, W) is the model's size, else refused.
        RGB becomes grey with Pillow's weights (so an array and the file it came from give the same input), grey
        becomes RGB by repetition, and the size changes by antialiased bilinear resampling.
        """
        if isinstance(im, (str, os.PathLike)): x = read_image(im)
        elif _is_pil(im): x = _pil_pixels(im, getattr(im, 'format', None))
        elif isinstance(im, (torch.Tensor, np.ndarray)):
            x = _pixels(im)
            if x.dim() == 2: x = x[None]
            elif x.dim() != 3:
                _bad(f"an image must be (H, W), (C, H, W) or (H, W, C), got shape {tuple(x.shape)}; a batch is "
                     "(N, C, H, W) or a list of images")
            elif _layout(x.shape, self.size, 'an image') == 'hwc': x = x.permute(2, 0, 1)
        else:
            raise TypeError(f"classify takes PIL images, image file paths, tensors or arrays (or a list of them); "
                            f"got {type(im).__name__}")
        return self._fit(x)

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        """A `(C, H, W)` image (C 1, 3 or 4) with the model's channels and size."""
        if x.shape[0] == 4: x = x[:3]
        if x.shape[0] not in (1, 3):
            _bad(f"an image has 1 (grey), 3 (RGB) or 4 (RGBA) channels, got {x.shape[0]} (shape {tuple(x.shape)})")
        if x.shape[0] == 3 and self.channels == 1: x = _grey(x)
        elif x.shape[0] == 1 and self.channels == 3: x = x.expand(3, -1, -1)
        if tuple(x.shape[-2:]) != self.size:
            y = F.interpolate(x[None].float(), size=self.size, mode='bilinear', antialias=True, align_corners=False)[0]
            x = y if x.is_floating_point() else y.round().clamp(0, 255).to(torch.uint8)
        return x.contiguous()

    # ------------------------------------------------------------ the normalisation
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Scale a `(N, C, H, W)` batch to [0, 1] if uint8, then `(x - mean) / std`: the ops of `get_dls`."""
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        mean, std = (torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return (x - mean) / std

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Undo `normalise`: model inputs back to [0, 1] images, for showing them."""
        mean, std = (torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return (x.float() * std + mean).clamp(0, 1)


def _is_int(v) -> bool: return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
def _is_real(v) -> bool: return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _layout(shape, size, what: str) -> str:
    """'chw' or 'hwc' for the 3 axes `shape` of one image; refused when neither or both fit (unless the model's
    `size` tells which)."""
    first, last = shape[0] in _CHANNELS, shape[-1] in _CHANNELS
    if first and last:
        if tuple(shape[1:]) == tuple(size) != tuple(shape[:2]): return 'chw'
        if tuple(shape[:2]) == tuple(size) != tuple(shape[1:]): return 'hwc'
        _bad(f"{what} of shape {tuple(shape)} could be (C, H, W) or (H, W, C): resize it to the model's size "
             f"{tuple(size)} first (that decides), or pass a PIL image")
    if first: return 'chw'
    if last: return 'hwc'
    if what == 'an image':
        _bad(f"an image of shape {tuple(shape)} is neither (C, H, W) nor (H, W, C) with C = 1, 3 or 4. A batch of "
             "grey images is (N, 1, H, W), e.g. x.unsqueeze(1), or a list of images")
    _bad(f"a batch of shape (N, {', '.join(map(str, shape))}) is neither (N, C, H, W) nor (N, H, W, C) with "
         "C = 1, 3 or 4")


def _pixels(a) -> torch.Tensor:
    """An array or tensor as a CPU tensor of uint8 pixels or float32 values in [0, 1]: uint16 is divided by 65535,
    bool is 0/1; NaN, infinity, an empty shape, a float outside [0, 1] and other integer types are refused."""
    if isinstance(a, np.ndarray):
        if a.dtype.kind == 'u' and a.dtype.itemsize == 2: a = a.astype(np.float32) / 65535
        elif a.dtype == np.bool_: a = a.astype(np.float32)
        elif not a.flags.writeable: a = a.copy()            # torch warns about (and may write into) read-only memory
        try: x = torch.from_numpy(np.ascontiguousarray(a))
        except TypeError: raise TypeError(f"an image array must hold numbers, got dtype {a.dtype}") from None
    else:
        x = a.detach().cpu()
        if x.dtype == torch.bool: x = x.float()
        elif x.dtype == getattr(torch, 'uint16', None): x = x.to(torch.int32).float() / 65535
    if x.numel() == 0: _bad(f"an empty image (shape {tuple(x.shape)}): every axis needs at least one pixel")
    if x.is_floating_point():
        x = x.float()
        if not bool(torch.isfinite(x).all()):
            _bad("the image holds NaN or infinite values: pass finite pixels (uint8 0..255, or floats in [0, 1])")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            _bad(f"float images must hold values in [0, 1] (as torchvision's to_tensor gives), got {lo:.3g}..{hi:.3g}; "
                 "pass uint8 pixels 0..255, or already-normalised inputs straight to learn.model")
        return x.clamp(0, 1)
    if x.dtype != torch.uint8:
        raise TypeError(f"integer images must be uint8 (0..255) or uint16 (0..65535), got {x.dtype}: convert it to "
                        "the one its values fill (e.g. x.astype(np.uint8)), or to floats in [0, 1]")
    return x


def _grey(x: torch.Tensor) -> torch.Tensor:
    """RGB `(3, H, W)` to grey `(1, H, W)` with Pillow's weights (its rounding too, for uint8)."""
    w = torch.tensor([19595, 38470, 7471]).view(3, 1, 1)          # 0.299, 0.587, 0.114 in 16-bit fixed point
    if x.dtype == torch.uint8: return (((x.int() * w).sum(0, keepdim=True) + 0x8000) >> 16).to(torch.uint8)
    return (x * w / 65536).sum(0, keepdim=True)


def _same_kind(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """`xs` all uint8, or all float32 in [0, 1] (uint8 ones divided by 255) when any is float."""
    if all(x.dtype == torch.uint8 for x in xs): return xs
    return [x.float() / 255 if x.dtype == torch.uint8 else x for x in xs]


def _stack(ims: list[torch.Tensor]) -> torch.Tensor: return torch.stack(_same_kind(ims))


# ---------------------------------------------------------------- image files and PIL images
def _is_pil(o) -> bool:
    try:
        from PIL import Image
    except ImportError: return False
    return isinstance(o, Image.Image)


def _pil_pixels(im, fmt: str | None = None) -> torch.Tensor:
    """A PIL image as `(C, H, W)` (C 1 or 3): uint8 for 8-bit modes; float32 in [0, 1] for 16-bit modes (divided by
    65535), mode I from a PNG (16-bit there) and mode F (which must hold [0, 1])."""
    mode = im.mode
    if mode.startswith('I;16'): return _pixels(np.asarray(im).astype(np.float32) / 65535)[None]
    if mode == 'I':
        a = np.asarray(im)
        if fmt != 'PNG' or a.min() < 0 or a.max() > 65535:
            raise DataError("a 32-bit integer image (mode I) has no known white level: save it as an 8- or 16-bit "
                            "image, or pass a float array in [0, 1]")
        return _pixels(a.astype(np.float32) / 65535)[None]
    if mode == 'F': return _pixels(np.asarray(im, np.float32))[None]
    im = im.convert('L' if mode in ('1', 'L', 'LA', 'La') else 'RGB')
    a = torch.from_numpy(np.asarray(im, np.uint8).copy())
    return a[None] if a.dim() == 2 else a.permute(2, 0, 1)


def _open_binary(path: Path):
    """`path` opened for reading, if it is still a regular file once open (`miniai.files.open_regular`)."""
    return open_regular(path, what='image', error=DataError,
                        advice="make it readable (chmod +r) or copy it somewhere you can read")


def read_image(path) -> torch.Tensor:
    """The image file at `path` as `(C, H, W)` at its own size (C 1 or 3; uint8, or float32 in [0, 1] for 16-bit).

    Raises:
        FileNotFoundError: nothing at `path`.
        DataError: not a regular file, not readable (permissions), not an image Pillow reads, more than
            `MAX_PIXELS` pixels, PNG text chunks past Pillow's limits, or a 32-bit integer image.
    """
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    try: st = path.stat()
    except FileNotFoundError: raise FileNotFoundError(f"no image file at {path}") from None
    except PermissionError: raise DataError(f"{path}: permission denied on a folder of its path") from None
    if stat.S_ISDIR(st.st_mode): raise DataError(f"{path} is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path} is not a regular file (a pipe, socket or device): copy the image into a file")
    try: f = _open_binary(path)
    except FileNotFoundError: raise FileNotFoundError(f"no image file at {path}") from None
    w = h = None
    with f, warnings.catch_warnings():
        warnings.simplefilter('error', Image.DecompressionBombWarning)
        try:
            im = Image.open(f)
            w, h = im.size
            if w * h > MAX_PIXELS: raise Image.DecompressionBombError(f"{w * h} pixels")
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            size = f"a {w}x{h} image" if w else "an image"
            raise DataError(f"{path} is {size} of more than the {MAX_PIXELS:,} pixels miniai decodes (a "
                            "decompression bomb, or a very large photo): shrink it first") from None
        except UnidentifiedImageError:
            raise DataError(f"{path} is not an image file Pillow can read; use PNG, JPEG, ...") from None
        except ValueError as e:
            if 'text' in str(e).lower():
                raise DataError(f"{path}: a PNG text chunk inflates past Pillow's limit (a decompression bomb?); "
                                "save the image again without its text metadata") from None
            raise DataError(f"{path} cannot be decoded ({e}); save it again as PNG or JPEG") from None
        except (OSError, SyntaxError, EOFError, struct.error) as e:
            raise DataError(f"{path} is a damaged or unsupported image file ({type(e).__name__}: "
                            f"{str(e)[:100]}); save it again as PNG or JPEG") from None
        return _pil_pixels(im, im.format)
