"""The plain training loop of the course's minibatch lesson, before any Learner: `fit`, `accuracy`, `report`,
`Dataset` and `get_dls`.

These are the pieces a reader meets first (the course's notebooks 04 to 08 build on them): a loop that a single
screen shows whole, with nothing hidden behind callbacks. Everything here takes plain tensors, models and
loaders; `miniai.learner.Learner` is the same loop with events. Only torch and the standard library are used.
How the course's notebooks use it: docs/course.md.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

__all__ = ['accuracy', 'report', 'Dataset', 'fit', 'get_dls']


def accuracy(out: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """The fraction of rows of `out` (scores, one column per class) whose largest score is at the class `yb` gives,
    as a 0-d float tensor on `out`'s device (`.item()` for a number)."""
    return (out.argmax(dim=1) == yb).float().mean()


def report(loss, preds: torch.Tensor, yb: torch.Tensor):
    """Print `loss` and the accuracy of `preds` on `yb` as `'0.31, 0.91'`: two numbers to watch while training."""
    print(f'{float(loss):.2f}, {float(accuracy(preds, yb)):.2f}')


class Dataset:
    """Pairs `x[i], y[i]`: the smallest thing a `DataLoader` can draw batches from (any two indexable sequences
    of the same length, e.g. tensors of images and labels)."""
    def __init__(self, x: Sequence, y: Sequence):
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length (one label per item), got {len(x)} and {len(y)}")
        self.x, self.y = x, y

    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.x[i], self.y[i]


def _evaluate(model: nn.Module, loss_func: Callable, dl: Iterable) -> tuple[float, float]:
    """Mean loss and accuracy of `model` over `dl`, each batch weighted by its size (the last may be smaller)."""
    model.eval()
    tot_loss = tot_acc = 0.
    count = 0
    with torch.no_grad():
        for xb, yb in dl:
            pred, n = model(xb), len(xb)
            tot_loss += loss_func(pred, yb).item() * n
            tot_acc += accuracy(pred, yb).item() * n
            count += n
    if not count: raise ValueError("valid_dl gave no batches: fit needs at least one item to measure the model on")
    return tot_loss / count, tot_acc / count


def fit(epochs: int, model: nn.Module, loss_func: Callable, opt, train_dl: Iterable, valid_dl: Iterable):
    """Train `model` for `epochs` passes over `train_dl` with `opt`, measuring it on `valid_dl` after each.

    Each epoch prints `epoch valid_loss valid_accuracy` (epochs counted from 0) and the call returns the last
    epoch's `(valid_loss, valid_accuracy)` as floats. Batches are `(inputs, targets)` pairs on the model's device;
    `accuracy` assumes class-index targets. The model is left in eval mode.
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    for epoch in range(epochs):
        model.train()
        for xb, yb in train_dl:
            loss = loss_func(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
        res = _evaluate(model, loss_func, valid_dl)
        print(epoch, *res)
    return res


def get_dls(train_ds, valid_ds, bs: int, **kwargs) -> tuple[DataLoader, DataLoader]:
    """A shuffled `DataLoader` over `train_ds` with batches of `bs`, and one over `valid_ds` in order with batches of
    `2*bs` (no gradients to keep, so twice as many fit in memory); `kwargs` go to both (`collate_fn`,
    `num_workers`, ...)."""
    return (DataLoader(train_ds, batch_size=bs, shuffle=True, **kwargs),
            DataLoader(valid_ds, batch_size=bs * 2, **kwargs))
