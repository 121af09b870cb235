"""Batches: `DataLoaders`, `collate_dict`, `inplace`, the in-memory loader `InMemoryLoader` and `get_dls`.

Explained in nbs/01_datasets.ipynb. `DataLoaders.from_dd` is the course's way (a `DatasetDict`, a transform, torch
`DataLoader`s); `get_dls` skips PIL and Arrow entirely: uint8 tensors sliced by index and normalised per batch
(as in "airbench" by Keller Jordan), with the same batches.
"""
from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from functools import partial
from operator import itemgetter

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate

from .cache import load_fashion_mnist
from .source import fashion_mnist_tensors

__all__ = ['XMEAN', 'XSTD', 'normalise_images', 'inplace', 'collate_dict', 'InMemoryLoader', 'DataLoaders', 'get_dls',
           'fashion_preprocess']

XMEAN = 0.28          # the course's mean of Fashion-MNIST's pixels (scaled to 0..1), used by `get_dls` to normalise
XSTD = 0.35           # the course's standard deviation of them


# ---------------------------------------------------------------- batching
def inplace(f: Callable) -> Callable:
    """Wrap `f`, which mutates a batch `b`, so that it returns `b` (what `with_transform` expects)."""
    def _f(b):
        f(b)
        return b
    return _f


def collate_dict(ds) -> Callable:
    """A collate function that `default_collate`s dict rows of `ds`, returning the columns in `ds.features` order."""
    get = itemgetter(*ds.features)
    def _f(b): return get(default_collate(b))
    return _f


class InMemoryLoader:
    """Batches of `xs` (equal-length tensors) by index slicing; `shuffle` draws a `torch.randperm` per epoch.

    The permutation comes from torch's global RNG, drawn as `DataLoader(shuffle=True)` draws it, so `set_seed` repeats
    runs and gives the same batches as a plain loader over the same rows. With `num_replicas > 1` it comes from
    `seed + epoch` instead (the same on every rank; call `set_epoch`) and rank `rank` takes every `num_replicas`-th
    index, so the ranks together see each item exactly once (their lengths may differ by one item).
    `batch_tfm`, if given, maps each batch tuple (e.g. normalises uint8 images on the device).
    """
    def __init__(self, xs: Sequence[torch.Tensor], batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0, batch_tfm: Callable | None = None):
        xs = tuple(xs)
        if not xs or len({len(x) for x in xs}) != 1:
            raise ValueError(f"xs must be a non-empty tuple of equal-length tensors, got {[len(x) for x in xs]}")
        if batch_size < 1: raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas: raise ValueError(f"need 0 <= rank < num_replicas, got {rank}, {num_replicas}")
        self.xs, self.batch_size, self.shuffle, self.drop_last = xs, batch_size, shuffle, drop_last
        self.num_replicas, self.rank, self.seed, self.batch_tfm, self.epoch = num_replicas, rank, seed, batch_tfm, 0
        self.dataset = TensorDataset(*xs)

    def set_epoch(self, epoch: int):
        """Select the permutation of epoch `epoch` when sharded (as `DistributedSampler.set_epoch`)."""
        self.epoch = epoch

    def __len__(self):
        n = len(range(self.rank, len(self.dataset), self.num_replicas))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _indices(self) -> torch.Tensor | None:
        n = len(self.dataset)
        if self.shuffle and self.num_replicas > 1:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        elif self.shuffle: idx = torch.randperm(n, generator=_dataloader_generator())
        elif self.num_replicas > 1: idx = torch.arange(n)
        else: return None                                   # plain slices: views, no gather
        return idx[self.rank::self.num_replicas].to(self.xs[0].device)

    def __iter__(self):
        idx, bs = self._indices(), self.batch_size
        for i in range(len(self)):
            sel = slice(i * bs, (i + 1) * bs) if idx is None else idx[i * bs:(i + 1) * bs]
            b = tuple(x[sel] for x in self.xs)
            yield self.batch_tfm(b) if self.batch_tfm else b


def _dataloader_generator() -> torch.Generator:
    """The generator a shuffling `DataLoader` draws from the global RNG: its iterator takes a base seed, then
    `RandomSampler` a seed for its own generator. Drawing the same way gives a seeded run the same batch order
    in memory as through a plain `DataLoader` (tested, so a change in torch shows up)."""
    torch.empty((), dtype=torch.int64).random_()
    return torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))


def _seed_worker(worker_id: int):
    seed = torch.initial_seed() % 2**32   # torch gives each worker base_seed + id, base_seed drawn from the parent RNG
    np.random.seed(seed)
    random.seed(seed)


def _as_tensor(col) -> torch.Tensor:
    return col if isinstance(col, torch.Tensor) else default_collate(list(col))


def _materialise(ds, device=None, chunk: int = 4096) -> tuple[torch.Tensor, ...]:
    """Apply `ds`'s transform once, `chunk` rows at a time, and collate each column as a `DataLoader` would."""
    cols = list(ds.features)
    parts = {c: [] for c in cols}
    for i in range(0, len(ds), chunk):
        b = ds[i:i + chunk]
        for c in cols: parts[c].append(_as_tensor(b[c]))
    return tuple(torch.cat(parts[c]).to(device) if device is not None else torch.cat(parts[c]) for c in cols)


# DataLoader options that mean nothing for an in-memory loader (the course passes num_workers=4).
_WORKER_KWARGS = {'num_workers', 'pin_memory', 'persistent_workers', 'prefetch_factor', 'worker_init_fn',
                  'timeout', 'multiprocessing_context'}


def _in_memory_kwargs(kwargs: dict) -> bool:
    """Return `drop_last`; reject anything else that is not a (meaningless here) worker option."""
    bad = set(kwargs) - _WORKER_KWARGS - {'drop_last'}
    if bad: raise TypeError(f"in-memory loaders accept drop_last (worker options are ignored), got {sorted(bad)}")
    return kwargs.get('drop_last', False)


class DataLoaders:
    """Holds loaders `dls`; `train` and `valid` are the first two (course style)."""
    def __init__(self, *dls):
        if len(dls) < 2: raise ValueError(f"DataLoaders needs at least a train and a valid loader, got {len(dls)}")
        self.dls = dls
        self.train, self.valid = dls[:2]

    @classmethod
    def from_dd(cls, dd, batch_size: int, as_tuple: bool = True, in_memory: bool = False, device=None, **kwargs):
        """Loaders over each split of `dd`: the first shuffled, the rest in order; `drop_last` applies to the first.

        Plain path: torch `DataLoader`s with `collate_dict` (dicts if not `as_tuple`); `kwargs` go to `DataLoader`
        (`pin_memory` defaults to CUDA availability; `device` is unused, `DeviceCB` moves batches). `in_memory=True`
        applies each split's (deterministic!) transform once, keeps the columns as tensors (on `device`) and yields
        the same batches from `InMemoryLoader`s.
        """
        dss = list(dd.values())
        if in_memory:
            drop_last = _in_memory_kwargs(kwargs)
            tfm = None if as_tuple else partial(_to_dict, list(dss[0].features))
            return cls(*(InMemoryLoader(_materialise(ds, device), batch_size, shuffle=i == 0,
                                        drop_last=drop_last and i == 0, batch_tfm=tfm) for i, ds in enumerate(dss)))
        drop_last = kwargs.pop('drop_last', False)
        kwargs.setdefault('pin_memory', torch.cuda.is_available())
        kwargs.setdefault('worker_init_fn', _seed_worker)
        return cls(*(DataLoader(ds, batch_size, shuffle=i == 0, drop_last=drop_last and i == 0,
                                collate_fn=collate_dict(ds) if as_tuple else default_collate, **kwargs)
                     for i, ds in enumerate(dss)))


def _to_dict(keys, b): return dict(zip(keys, b))


def normalise_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 `(N,H,W)` -> float32 `(N,1,H,W)` `(x/255 - XMEAN)/XSTD`: `TF.to_tensor`'s ops, then the course's.

    What `get_dls` does to each batch, for tensors of your own that a model trained on it should see the same way.
    `fashion_preprocess()` describes the same steps as data, for new images and exported models.
    """
    return x.float().div_(255).sub_(XMEAN).div_(XSTD).unsqueeze(1)


def _norm_batch(b): return (normalise_images(b[0]),) + b[1:]


@inplace
def _hf_tfm(b): b['image'] = normalise_images(torch.from_numpy(np.stack([np.asarray(o, np.uint8) for o in b['image']])))


def get_dls(bs: int = 1024, path: str | os.PathLike | None = None, in_memory: bool = True, device=None,
            limit: int | None = None, **kwargs) -> DataLoaders:
    """Normalised Fashion-MNIST loaders: `(bs,1,28,28)` float32 and int64 labels; train shuffled, valid = 'test'.

    `in_memory` keeps uint8 tensors (on `device`) and normalises per batch; `in_memory=False` is the course's way
    (`load_fashion_mnist(path).with_transform(...)` + `DataLoaders.from_dd(..., **kwargs)`), with identical batches.
    `limit` keeps the first `limit` training and `limit // 6` test images (for quick runs; 60k:10k as in the data).
    `dls.preprocess` describes the normalisation and class names, for `learn.classify` and `learn.export`.
    """
    if limit is not None and limit < 1: raise ValueError(f"limit must be >= 1, got {limit}")
    n = {'train': limit, 'test': None if limit is None else max(1, limit // 6)}
    if not in_memory:
        dd = load_fashion_mnist(path)
        if limit is not None: dd = type(dd)({s: ds.select(range(min(n[s], len(ds)))) for s, ds in dd.items()})
        return _with_preprocess(DataLoaders.from_dd(dd.with_transform(_hf_tfm), bs, **kwargs))
    drop_last, t = _in_memory_kwargs(kwargs), fashion_mnist_tensors(path)
    t = {s: tuple(v[:n[s]] for v in xy) for s, xy in t.items()}
    if device is not None: t = {s: tuple(v.to(device) for v in xy) for s, xy in t.items()}
    return _with_preprocess(DataLoaders(*(InMemoryLoader(t[s], bs, shuffle=s == 'train',
                                                         drop_last=drop_last and s == 'train', batch_tfm=_norm_batch)
                                          for s in ('train', 'test'))))


def fashion_preprocess():
    """The preprocessing of `get_dls`' Fashion-MNIST batches as plain data (a `miniai.preprocess.Preprocess`): 28x28
    grey, the course's mean and std, its 10 class names; what `learn.classify` applies to new images and
    `learn.export` saves."""
    from ..preprocess import Preprocess
    from .idx import FASHION_CLASSES, IMAGE_SIZE
    return Preprocess(mean=(XMEAN,), std=(XSTD,), size=IMAGE_SIZE, channels=1, classes=FASHION_CLASSES)


def _with_preprocess(dls: DataLoaders) -> DataLoaders:
    """`dls` with `preprocess`, `fashion_preprocess()`: how its batches were made, for new images."""
    dls.preprocess = fashion_preprocess()
    return dls
