"""Building blocks of models that are not in torch: `GeneralRelu`, the course's shifted leaky ReLU.

Models (`miniai.conv`, `miniai.resnet`) build on it; `miniai.activations` and `miniai.init` re-export it, where
the course's users import it. Explained in nbs/03_activations.ipynb.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

__all__ = ['GeneralRelu']


class GeneralRelu(nn.Module):
    """ReLU (leaky with `leak`), shifted down by `sub` so the mean sits nearer 0, clamped at `maxv`."""
    def __init__(self, leak: float | None = None, sub: float | None = None, maxv: float | None = None):
        super().__init__()
        self.leak, self.sub, self.maxv = leak, sub, maxv

    def forward(self, x):
        x = F.leaky_relu(x, self.leak) if self.leak else F.relu(x)
        if self.sub is not None: x = x - self.sub
        if self.maxv is not None: x = x.clamp_max(self.maxv)
        return x
