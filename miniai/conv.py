"""The course's CNN: `conv` blocks and `get_model`, a small all-convolutional Fashion-MNIST classifier; the device
helpers `def_device`, `to_device` and `collate_device` (where the course's users import them).

Explained in nbs/02_learner.ipynb.
"""
from __future__ import annotations

from torch import nn
from torch.utils.data import default_collate

from .device import def_device, to_device

__all__ = ['def_device', 'conv', 'to_device', 'collate_device', 'get_model']

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def conv(ni: int, nf: int, ks: int = 3, stride: int = 2, act=nn.ReLU, norm=None, bias: bool | None = None):
    """Conv2d(`ni`→`nf`, `ks`, `stride`, same padding), then `norm(nf)` and `act()` when given.

    `act` is an activation class (or `partial`); `True` means `nn.ReLU` and `False`/`None` none. The conv has no
    bias by default when a BatchNorm follows it: the norm's own shift makes it redundant.
    """
    if act is True: act = nn.ReLU
    if bias is None: bias = not (isinstance(norm, type) and issubclass(norm, _BATCHNORMS))
    layers = [nn.Conv2d(ni, nf, kernel_size=ks, stride=stride, padding=ks // 2, bias=bias)]
    if norm: layers.append(norm(nf))
    if act: layers.append(act())
    return nn.Sequential(*layers)


def collate_device(b):
    """`default_collate(b)` moved to `def_device`: a `collate_fn` for loaders that feed the device directly."""
    return to_device(default_collate(b))


def get_model(act=nn.ReLU, nfs=None, norm=None) -> nn.Sequential:
    """Stride-2 `conv`s through `nfs` (default 1, 8, 16, 32, 64: 28×28 down to 2×2), then a conv to 10 logits."""
    nfs = nfs or [1, 8, 16, 32, 64]
    layers = [conv(nfs[i], nfs[i + 1], act=act, norm=norm) for i in range(len(nfs) - 1)]
    return nn.Sequential(*layers, conv(nfs[-1], 10, act=None, norm=None, bias=True), nn.Flatten())
