"""Initialisation and inspection: `init_weights` (kaiming with a leak), `lsuv_init` and `summary`; and the other
names the course's `from miniai.init import *` gives: `BatchTransformCB`, `GeneralRelu`, `plot_func`, `conv`,
`get_model` and the notebook memory helpers `clean_ipython_hist`, `clean_tb`, `clean_mem`.

Explained in nbs/04_init.ipynb.
"""
from __future__ import annotations

import gc
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .activations import Hook
from .conv import conv, get_model
from .core import Callback, Order
from .layers import WEIGHTED_LAYERS, GeneralRelu, init_weights

__all__ = ['clean_ipython_hist', 'clean_tb', 'clean_mem', 'BatchTransformCB', 'GeneralRelu', 'plot_func',
           'init_weights', 'lsuv_init', 'conv', 'get_model', 'summary', 'Summary']



def clean_ipython_hist():
    """Forget IPython's input history and `_i*` variables, which keep old cells' objects (and GPU memory) alive."""
    try:
        from IPython import get_ipython
    except ImportError: return
    ip = get_ipython()
    if ip is None: return
    ip.displayhook.flush()
    n = ip.displayhook.prompt_count + 1
    for i in range(1, n): ip.user_ns.pop(f'_i{i}', None)
    ip.user_ns.update(_i='', _ii='', _iii='')
    hm = ip.history_manager
    hm.input_hist_parsed[:] = [''] * n
    hm.input_hist_raw[:] = [''] * n
    hm._i = hm._ii = hm._iii = hm._i00 = ''


def clean_tb():
    """Drop the last exception's traceback, whose frames keep tensors alive after an error in a notebook."""
    if hasattr(sys, 'last_traceback'):
        traceback.clear_frames(sys.last_traceback)
        del sys.last_traceback
    for name in ('last_type', 'last_value', 'last_exc'):
        if hasattr(sys, name): delattr(sys, name)


def clean_mem():
    """Free what a notebook holds on to (last traceback, input history), collect garbage, empty the CUDA cache."""
    clean_tb()
    clean_ipython_hist()
    gc.collect()
    if torch.cuda.is_available(): torch.cuda.empty_cache()


class BatchTransformCB(Callback):
    """`learn.batch = tfm(learn.batch)`: `tfm` gets the whole batch (inputs and targets), on training (`on_train`)
    and validation (`on_val`) batches, after `DeviceCB` has moved it.

    To transform only the inputs (the usual augmentation, training batches only), use
    `miniai.augment.InputTransformCB(tfm)`.
    """
    order = Order.TRANSFORM  # after DeviceCB: the transform runs on the batch's device

    def __init__(self, tfm: Callable, on_train: bool = True, on_val: bool = True):
        if not callable(tfm): raise TypeError(f"tfm must be callable on a batch, got {tfm!r}")
        self.tfm, self.on_train, self.on_val = tfm, on_train, on_val

    def before_batch(self, learn):
        if (self.on_train and learn.training) or (self.on_val and not learn.training):
            learn.batch = self.tfm(learn.batch)


def plot_func(f: Callable, start: float = -5., end: float = 5., steps: int = 100):
    """Plot `f` on `steps` points from `start` to `end`, with a grid and the axes drawn (e.g. an activation)."""
    import matplotlib.pyplot as plt
    x = torch.linspace(start, end, steps)
    plt.plot(x, f(x))
    plt.grid(True, which='both', ls='--')
    plt.axhline(y=0, color='k', linewidth=0.7)
    plt.axvline(x=0, color='k', linewidth=0.7)


def _lsuv_stats(hook, mod, inp, outp):
    """Hook function: keep the mean and std of the output in `hook.mean`, `hook.std` (floats)."""
    o = outp.detach().float()
    hook.mean, hook.std = o.mean().item(), o.std().item()


@torch.no_grad()
def lsuv_init(model: nn.Module, *args, mods=None, outs=None, tol: float = 1e-3, max_iters: int = 20, **kwargs):
    """Layer-sequential unit variance (Mishkin & Matas 2015) on one batch `xb`.

    Two ways to call it:
    - `lsuv_init(model, m, m_in, xb)` (the course's): rescale the weights of `m_in` (and shift its bias) until the
      output of `m` (e.g. the conv block holding `m_in` and its activation) has mean 0 and std 1.
    - `lsuv_init(model, xb, mods=None, outs=None)`: layer by layer in forward order, the same for each of `mods`
      (default: every conv and linear layer) and its partner in `outs` (default: the layer itself).
    Returns the (mean, std) seen at each layer afterwards.
    """
    xb, mods, outs = _lsuv_args(args, kwargs, mods, outs)
    mods = list(mods) if mods is not None else [m for m in model.modules() if isinstance(m, WEIGHTED_LAYERS)]
    outs = list(outs) if outs is not None else mods
    if len(mods) != len(outs): raise ValueError(f"mods and outs must pair up: {len(mods)} vs {len(outs)}")
    res = []
    for m, o in zip(mods, outs):
        with Hook(o, _lsuv_stats) as h:
            for _ in range(max_iters):
                model(xb)
                if abs(h.std - 1) < tol and (m.bias is None or abs(h.mean) < tol): break
                if m.bias is not None: m.bias -= h.mean
                m.weight /= h.std
            model(xb)
            res.append((h.mean, h.std))
    return res


def _lsuv_args(args, kwargs, mods, outs):
    """Sort the two call forms of `lsuv_init` into `(xb, mods, outs)`."""
    usage = "call lsuv_init(model, m, m_in, xb) or lsuv_init(model, xb, mods=None, outs=None)"
    first = args[0] if args else kwargs.get('m', kwargs.get('xb'))
    if isinstance(first, nn.Module):                                            # the course's form
        got = dict(zip(('m', 'm_in', 'xb'), args), **kwargs)
        if set(got) != {'m', 'm_in', 'xb'} or len(args) > 3: raise TypeError(usage)
        return got['xb'], [got['m_in']], [got['m']]
    rest = list(args) + ([kwargs.pop('xb')] if 'xb' in kwargs else [])
    if kwargs or not 1 <= len(rest) <= 3 or not isinstance(rest[0], torch.Tensor): raise TypeError(usage)
    rest += [None] * (3 - len(rest))
    return rest[0], (rest[1] if mods is None else mods), (rest[2] if outs is None else outs)


def _flops(mod, outp):
    """Multiply-adds per item: each weight is used once per output position."""
    w = getattr(mod, 'weight', None)
    if not isinstance(w, torch.Tensor): return 0
    return w.numel() * (outp[0, 0].numel() if w.dim() > 2 and outp.dim() > 2 else 1)


@dataclass
class Summary:
    """One row per layer (module, input shape, output shape, params, MFLOPS); text with `str`, a table in Jupyter."""
    rows: list
    total_params: int
    total_mflops: float

    _cols = ('module', 'input', 'output', 'params', 'MFLOPS')

    def _cells(self):
        body = [[r['module'], str(r['input']), str(r['output']), f"{r['params']:,}", f"{r['mflops']:.2f}"]
                for r in self.rows]
        return body + [['Total', '', '', f'{self.total_params:,}', f'{self.total_mflops:.2f}']]

    def __str__(self):
        cells = [list(self._cols)] + self._cells()
        widths = [max(len(c[i]) for c in cells) for i in range(len(self._cols))]
        return '\n'.join('  '.join(c.ljust(w) for c, w in zip(row, widths)) for row in cells)

    __repr__ = __str__

    def _repr_markdown_(self):
        lines = ['| ' + ' | '.join(self._cols) + ' |', '|' + '---|' * len(self._cols)]
        return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in self._cells()])


@torch.no_grad()
def summary(obj, xb: torch.Tensor | None = None, mods=None) -> Summary:
    """Shapes, parameter counts and MFLOPS (multiply-adds per item) of `mods` (default: the model's children).

    `obj` is a model or a learner; for a learner, `xb` defaults to the first training batch's input.
    """
    model = getattr(obj, 'model', obj)
    if xb is None:
        if not hasattr(obj, 'dls'): raise ValueError("summary of a bare model needs an input batch `xb`")
        xb = next(iter(obj.dls.train))[0]
    p = next(model.parameters(), None)
    if p is not None: xb = xb.to(p.device)
    mods = list(mods) if mods is not None else list(model.children()) or [model]
    rows = [dict(module=type(m).__name__, params=sum(q.numel() for q in m.parameters()), mflops=0.) for m in mods]

    def shapes(i):
        def f(hook, mod, inp, outp): rows[i].update(input=tuple(inp[0].shape), output=tuple(outp.shape))
        return f

    def flops(i):
        def f(hook, mod, inp, outp): rows[i]['mflops'] += _flops(mod, outp) / 1e6
        return f

    hooks = [Hook(m, shapes(i)) for i, m in enumerate(mods)]
    hooks += [Hook(leaf, flops(i)) for i, m in enumerate(mods) for leaf in m.modules() if not list(leaf.children())]
    was_training = model.training
    model.eval()  # a summary must not move BatchNorm's running statistics
    try: model(xb)
    finally:
        model.train(was_training)
        for h in hooks: h.remove()
    return Summary(rows, sum(r['params'] for r in rows), sum(r['mflops'] for r in rows))
