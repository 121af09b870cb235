"""Residual networks for 28×28 single-channel images: `ResBlock`, `get_resnet` and the course's `act_gr`.

Explained in nbs/06_resnet.ipynb (the course's Fashion-MNIST ResNet, with a global
average pooling head so any input size and any `nfs` work).
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import nn

from .conv import conv
from .layers import GeneralRelu

__all__ = ['act_gr', '_conv_block', 'ResBlock', 'get_resnet']

act_gr = partial(GeneralRelu, leak=0.1, sub=0.4)
act_gr.__doc__ = "The course's activation: `GeneralRelu(leak=0.1, sub=0.4)`, a leaky ReLU shifted down by 0.4."


def _conv_block(ni: int, nf: int, stride: int, act=act_gr, norm=None, ks: int = 3) -> nn.Sequential:
    """A `ks` conv `ni`→`nf` with `act`, then a `ks` conv `nf`→`nf` with `stride` and no activation: the
    residual branch of a `ResBlock` (the first conv keeps the resolution, the second one strides)."""
    return nn.Sequential(conv(ni, nf, ks=ks, stride=1, act=act, norm=norm),
                         conv(nf, nf, ks=ks, stride=stride, act=None, norm=norm))


class ResBlock(nn.Module):
    """`act(convs(x) + idconv(pool(x)))`: two `ks` convs (`ni`→`nf`, the second with `stride`) beside a shortcut.

    The defaults are the course's: `act=act_gr` and no norm (`get_resnet` passes `nn.ReLU` and `nn.BatchNorm2d`).
    The shortcut is the identity, or a 1×1 conv when `ni != nf`, after a 2×2 average pool when `stride == 2`.
    `zero_bn=True` starts the second conv's norm at weight 0, so a new block computes `act(shortcut(x))` (Goyal
    et al. 2017, fastai's `NormType.BatchZero`): it steadies very deep stacks, but it is off by default, as in the
    course, because on this six-block network it slows short runs (docs/benchmarks.md has the measurements).
    """
    def __init__(self, ni: int, nf: int, stride: int = 1, ks: int = 3, act=act_gr, norm=None,
                 zero_bn: bool = False):
        super().__init__()
        if stride not in (1, 2): raise ValueError(f"stride must be 1 or 2, got {stride}")
        if zero_bn and not norm: raise ValueError("zero_bn=True needs a norm layer, e.g. norm=nn.BatchNorm2d")
        self.convs = _conv_block(ni, nf, stride, act=act, norm=norm, ks=ks)
        last_norm = self.convs[-1][-1] if norm else None
        if zero_bn and getattr(last_norm, 'weight', None) is not None: nn.init.zeros_(last_norm.weight)
        self.idconv = nn.Identity() if ni == nf else conv(ni, nf, ks=1, stride=1, act=None)
        # ceil_mode: an odd side (7) halves to 4, as the strided conv with padding does
        self.pool = nn.Identity() if stride == 1 else nn.AvgPool2d(2, ceil_mode=True)
        self.act = act() if act else nn.Identity()

    def forward(self, x): return self.act(self.convs(x) + self.idconv(self.pool(x)))


def get_resnet(act=nn.ReLU, nfs: Sequence[int] = (16, 32, 64, 128, 256, 512), norm=nn.BatchNorm2d,
               n_classes: int = 10, zero_bn: bool = False) -> nn.Sequential:
    """The course's Fashion-MNIST ResNet: `ResBlock(1, nfs[0], ks=5)`, stride-2 `ResBlock`s through `nfs`, then
    global average pooling, `Linear(nfs[-1], n_classes)` and `BatchNorm1d(n_classes)`.

    With the default `nfs` a 28×28 image shrinks to 1×1 (28, 14, 7, 4, 2, 1). `act` is a class or a
    `partial` (e.g. `partial(GeneralRelu, leak=0.1, sub=0.4)`, then `.apply(partial(init_weights, leaky=0.1))`).
    `zero_bn` is passed to every `ResBlock`.
    """
    if len(nfs) < 1: raise ValueError("nfs needs at least one width, e.g. (16, 32, 64, 128, 256, 512)")
    layers = [ResBlock(1, nfs[0], stride=1, ks=5, act=act, norm=norm, zero_bn=zero_bn)]
    layers += [ResBlock(nfs[i], nfs[i + 1], stride=2, act=act, norm=norm, zero_bn=zero_bn)
               for i in range(len(nfs) - 1)]
    # the BatchNorm1d after the (bias-free) linear layer scales the logits, as in the course
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(nfs[-1], n_classes, bias=False),
               nn.BatchNorm1d(n_classes)]
    return nn.Sequential(*layers)
