"""Building blocks of models that are not in torch: `GeneralRelu`, the course's shifted leaky ReLU, and
`init_weights`, the Kaiming initialisation for it.

Models (`miniai.conv`, `miniai.resnet`) build on it; `miniai.activations` and `miniai.init` re-export it, where
the course's users import it. Explained in nbs/03_activations.ipynb.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

__all__ = ['GeneralRelu', 'init_weights', 'CONV_LAYERS', 'WEIGHTED_LAYERS']

CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
WEIGHTED_LAYERS = CONV_LAYERS + (nn.Linear,)


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


def init_weights(m: nn.Module, leaky: float = 0., linear: bool = False):
    """Kaiming-normal weights for conv layers (and linear ones with `linear=True`), for a (leaky) ReLU of slope
    `leaky`; use with `.apply`. Linear layers keep torch's default unless asked, as in the course."""
    if isinstance(m, WEIGHTED_LAYERS if linear else CONV_LAYERS): nn.init.kaiming_normal_(m.weight, a=leaky)
