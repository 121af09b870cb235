"""Showing images: `show_image`, `subplots`, `get_grid`, `show_images` (matplotlib is imported only when they run).

Explained in nbs/01_datasets.ipynb. They take PIL images, arrays or tensors (CHW or HWC), as the course's do.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import zip_longest

import numpy as np
import torch

__all__ = ['show_image', 'subplots', 'get_grid', 'show_images']


def show_image(im, ax=None, figsize: tuple | None = None, title: str | None = None, noframe: bool = True, **kwargs):
    """Show PIL image, array or tensor `im` on `ax` (CHW tensors become HWC, one channel is squeezed); returns `ax`."""
    import matplotlib.pyplot as plt
    if isinstance(im, torch.Tensor):
        im = im.detach().cpu()
        if im.ndim == 3 and im.shape[0] < 5: im = im.permute(1, 2, 0)
        im = (im.float() if im.is_floating_point() else im).numpy()    # numpy has no bfloat16
    else: im = np.asarray(im)
    if im.ndim == 3 and im.shape[-1] == 1: im = im[..., 0]
    if ax is None: _, ax = plt.subplots(figsize=figsize)
    ax.imshow(im, **kwargs)
    if title is not None: ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if noframe: ax.axis('off')
    return ax


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple | None = None, imsize: float = 3,
             suptitle: str | None = None, **kwargs):
    """`plt.subplots` sized `imsize` inches per image; returns `(fig, axs)` with `axs` always an array: shaped as
    `plt.subplots` shapes it (one axis per row or column of 1 dropped, unless `squeeze=False`), and a single axes
    in an array of one. `kwargs` go to `plt.subplots`."""
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(nrows, ncols, figsize=figsize or (ncols * imsize, nrows * imsize), **kwargs)
    if suptitle is not None: fig.suptitle(suptitle)
    return fig, axs if isinstance(axs, np.ndarray) else np.array([axs])


def get_grid(n: int, nrows: int | None = None, ncols: int | None = None, title: str | None = None,
             weight: str = 'bold', size: int = 14, **kwargs):
    """A grid of at least `n` axes (about square unless `nrows`/`ncols` given), spare axes hidden; `(fig, axs)`."""
    if nrows is None and ncols is None: nrows = max(1, int(math.sqrt(n)))
    if ncols is None: ncols = max(1, math.ceil(n / nrows))
    if nrows is None: nrows = max(1, math.ceil(n / ncols))
    fig, axs = subplots(nrows, ncols, **kwargs)
    for ax in axs.flat[n:]: ax.set_axis_off()
    if title is not None: fig.suptitle(title, weight=weight, size=size)
    return fig, axs


def show_images(ims: Sequence, nrows: int | None = None, ncols: int | None = None, titles: Sequence | None = None,
                **kwargs):
    """Show `ims` in a grid (`kwargs` go to `get_grid`/`subplots`), with optional `titles`; returns the figure."""
    fig, axs = get_grid(len(ims), nrows, ncols, **kwargs)
    if len(ims) > axs.size: raise ValueError(f"{len(ims)} images do not fit a grid of {axs.size} (nrows={nrows}, "
                                             f"ncols={ncols}): leave one of them out to fit the grid to the images")
    for im, t, ax in zip_longest(ims, list(titles or [])[:len(ims)], axs.flat[:len(ims)]):
        show_image(im, ax=ax, title=t)
    return fig
