"""Initialisation and inspection: `init_weights` (kaiming with a leak), `lsuv_init` and `summary`.

Explained in nbs/04_init.ipynb.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .activations import Hook

__all__ = ['init_weights', 'lsuv_init', 'summary', 'Summary']

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def init_weights(m: nn.Module, leaky: float = 0.):
    """Kaiming-normal weights for conv and linear layers, for a (leaky) ReLU of slope `leaky`; use with `.apply`."""
    if isinstance(m, _WEIGHTED): nn.init.kaiming_normal_(m.weight, a=leaky)


def _record(hook, mod, inp, outp):
    o = outp.detach().float()
    hook.mean, hook.std = o.mean().item(), o.std().item()


@torch.no_grad()
def lsuv_init(model: nn.Module, xb: torch.Tensor, mods=None, outs=None, tol: float = 1e-3, max_iters: int = 20):
    """Layer-sequential unit variance (Mishkin & Matas 2015) on one batch `xb`.

    Layer by layer in forward order, rescale each of `mods` (default: every conv and linear layer) until the
    output of its partner in `outs` (default: the layer itself) has std 1, and shift its bias until the mean is 0.
    Returns the (mean, std) seen at each layer afterwards.
    """
    mods = list(mods) if mods is not None else [m for m in model.modules() if isinstance(m, _WEIGHTED)]
    outs = list(outs) if outs is not None else mods
    if len(mods) != len(outs): raise ValueError(f"mods and outs must pair up: {len(mods)} vs {len(outs)}")
    res = []
    for m, o in zip(mods, outs):
        with Hook(o, _record) as h:
            for _ in range(max_iters):
                model(xb)
                if abs(h.std - 1) < tol and (m.bias is None or abs(h.mean) < tol): break
                if m.bias is not None: m.bias -= h.mean
                m.weight /= h.std
            model(xb)
            res.append((h.mean, h.std))
    return res


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
