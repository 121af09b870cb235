"""The recipe's model, `recipe_model`: the one architecture `miniai train` builds (and `miniai predict` rebuilds to
load a run's weights). Kept apart from the rest of the command line, which only imports it from here.
Shown in nbs/12_inference.ipynb.
"""
from __future__ import annotations

from functools import partial

__all__ = ['recipe_model']


def recipe_model():
    """The recipe's model, freshly initialised: the course's conv net with GeneralRelu(0.1, -0.4) and BatchNorm."""
    from torch import nn

    from ..activations import GeneralRelu
    from ..conv import get_model
    from ..init import init_weights
    return get_model(partial(GeneralRelu, leak=0.1, sub=0.4), norm=nn.BatchNorm2d).apply(
        partial(init_weights, leaky=0.1))
