"""Data-parallel training on torch.distributed: `DDPCB`, `distributed_dls`, `ShardSampler` and the rank helpers.

Launch a script (or `miniai train`) with `torchrun --nproc_per_node N ...`: each process trains a replica of the model
on its shard of every epoch, DistributedDataParallel averages the gradients in backward, MetricsCB merges every
rank's sums once per epoch phase, and only rank 0 prints, plots and saves (the others wait at a barrier).
Outside torchrun every helper is a no-op and `DDPCB` does nothing, so single-process training pays nothing.
Explained in nbs/10_distributed.ipynb.
"""
from __future__ import annotations

import copy
import math
import os
from datetime import timedelta
from itertools import islice

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler

from .core import Callback, Order
from .device import (
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    def_device,
    is_distributed,
    is_main_process,
    local_rank,
    rank,
    world_size,
)

__all__ = ['is_distributed', 'rank', 'local_rank', 'world_size', 'is_main_process', 'barrier', 'all_reduce_sum',
           'all_reduce_mean', 'broadcast_object', 'init_from_env', 'destroy', 'ShardSampler', 'distributed_dls',
           'reduce_metrics', 'DDPCB', 'DEFAULT_TIMEOUT']

DEFAULT_TIMEOUT = timedelta(minutes=10)  # how long a collective waits for a stalled rank before the run fails
_rank, _world_size = rank, world_size  # for functions whose arguments take these names
_joined = False  # whether `init_from_env` made the process group, so `destroy` leaves a caller's own group alone


def init_from_env(device=None, backend: str | None = None, timeout: timedelta | None = None) -> torch.device:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) once, and
    return this process's device: `cuda:LOCAL_RANK`, made current (backend nccl), or `cpu` (backend gloo).

    `device` picks the kind, 'cuda' or 'cpu' (an index is ignored: each process takes its LOCAL_RANK's GPU);
    default cuda when available. Outside torchrun (WORLD_SIZE unset or 1) it joins nothing and returns `device`
    (default: `def_device`). `timeout` (default `DEFAULT_TIMEOUT`, 10 minutes) bounds how long a collective waits
    for the other processes: when one stalls or dies, the others stop with an error instead of waiting forever.
    """
    if int(os.environ.get('WORLD_SIZE', 1)) <= 1: return torch.device(device or def_device)
    kind = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu')).type
    if kind not in ('cuda', 'cpu'): raise ValueError(f"distributed training runs on 'cuda' or 'cpu', not {kind!r}")
    dev = torch.device('cuda', local_rank()) if kind == 'cuda' else torch.device('cpu')
    if kind == 'cuda': torch.cuda.set_device(dev)  # so 'cuda', NCCL and object collectives mean this process's GPU
    if not dist.is_initialized():
        global _joined
        dist.init_process_group(backend or ('nccl' if kind == 'cuda' else 'gloo'), timeout=timeout or DEFAULT_TIMEOUT,
                                device_id=dev if kind == 'cuda' else None)
        _joined = True
    return dev


def destroy():
    """Leave the process group that `init_from_env` joined (a group made elsewhere is left alone)."""
    global _joined
    if _joined and dist.is_initialized(): dist.destroy_process_group()
    _joined = False


# ---------------------------------------------------------------- sharding the loaders
class ShardSampler(Sampler):
    """Indices `rank, rank + num_replicas, ...` of `range(n)`, in order and unpadded: the ranks together see each
    item exactly once (for validation, where `DistributedSampler`'s padding would count some items twice)."""
    def __init__(self, n: int, num_replicas: int, rank: int):
        if not 0 <= rank < num_replicas: raise ValueError(f"need 0 <= rank < num_replicas, got {rank}, {num_replicas}")
        self.n, self.num_replicas, self.rank = n, num_replicas, rank

    def __iter__(self): return iter(range(self.rank, self.n, self.num_replicas))
    def __len__(self): return len(range(self.rank, self.n, self.num_replicas))


class _FirstBatches:
    """The first `n` batches of loader `dl`: a longer shard cut so that every rank steps the same number of times."""
    def __init__(self, dl, n: int): self.dl, self.n, self.dataset, self.batch_size = dl, n, dl.dataset, dl.batch_size
    def __len__(self): return self.n
    def __iter__(self): return islice(iter(self.dl), self.n)
    def set_epoch(self, epoch: int): self.dl.set_epoch(epoch)


def _with_sampler(dl: DataLoader, sampler) -> DataLoader:
    """A `DataLoader` like `dl` (batch size, collate, workers, ...) drawing its indices from `sampler`."""
    names = ('batch_size', 'drop_last', 'num_workers', 'collate_fn', 'pin_memory', 'timeout', 'worker_init_fn',
             'multiprocessing_context', 'generator', 'prefetch_factor', 'persistent_workers', 'pin_memory_device',
             'in_order')                                   # the last ones only where this torch has them
    return DataLoader(dl.dataset, sampler=sampler, **{k: getattr(dl, k) for k in names if hasattr(dl, k)})


def _shard(dl, num_replicas: int, rank: int, seed: int, train: bool):
    from .datasets import InMemoryLoader
    if dl is None: return None
    if isinstance(dl, InMemoryLoader):
        res = copy.copy(dl)                                 # shares the tensors
        res.num_replicas, res.rank, res.seed, res.epoch = num_replicas, rank, seed, 0
        if not train: return res
        # ranks' shards differ by at most one item, which can make one more batch: DDP's all-reduce would wait for
        # it forever, so the longer shards stop where the shortest does (at most one batch an epoch, reshuffled)
        n = min(_len_on(res, r) for r in range(num_replicas))
        return _FirstBatches(res, n) if n < len(res) else res
    if isinstance(dl, DataLoader) and dl.batch_size is not None and not isinstance(dl.dataset, IterableDataset):
        # DistributedSampler pads every shard to the same length: the ranks step together
        sampler = (DistributedSampler(dl.dataset, num_replicas, rank, shuffle=isinstance(dl.sampler, RandomSampler),
                                      seed=seed) if train else ShardSampler(len(dl.dataset), num_replicas, rank))
        return _with_sampler(dl, sampler)
    raise TypeError(f"distributed_dls shards InMemoryLoader and DataLoader (map-style dataset, batch_size set); got "
                    f"{type(dl).__name__}: shard it yourself and pass DDPCB(shard=False)")


def _len_on(dl, r: int) -> int:
    """How many batches sharded `dl` gives on rank `r`."""
    other = copy.copy(dl)
    other.rank = r
    return len(other)


def _is_sharded(dl) -> bool:
    return (isinstance(dl, _FirstBatches) or getattr(dl, 'num_replicas', 1) > 1
            or isinstance(getattr(dl, 'sampler', None), (DistributedSampler, ShardSampler)))


def _loaders(dls): return getattr(dls, 'dls', None) or (dls.train, dls.valid)


def distributed_dls(dls, num_replicas: int | None = None, rank: int | None = None, seed: int = 0):
    """`dls` (a DataLoaders, or anything with `.train` and `.valid`) as this process's shards: a new `DataLoaders`.

    The train loader (the first) draws one permutation from `seed + epoch` on every rank (call its `set_epoch`, or
    its sampler's; `DDPCB` does) and each rank takes every `num_replicas`-th item of it; every rank gets the same
    number of batches, as DDP's gradient all-reduce needs. The other loaders are split in order and unpadded, so
    metrics merged over the ranks count each item once. `InMemoryLoader`s use their own sharding; a `DataLoader`
    gets a `DistributedSampler` (train) or a `ShardSampler`. Defaults: this process group's size and rank.
    """
    from .datasets import DataLoaders
    num_replicas = _world_size() if num_replicas is None else num_replicas
    rank = _rank() if rank is None else rank
    if not 0 <= rank < num_replicas: raise ValueError(f"need 0 <= rank < num_replicas, got {rank}, {num_replicas}")
    return DataLoaders(*(_shard(dl, num_replicas, rank, seed, train=i == 0) for i, dl in enumerate(_loaders(dls))))


def _set_epoch(dl, epoch: int):
    for o in (dl, getattr(dl, 'sampler', None)):
        if hasattr(o, 'set_epoch'): return o.set_epoch(epoch)


# ---------------------------------------------------------------- metrics
def _cpu(x):
    if isinstance(x, torch.Tensor): return x.detach().cpu()
    if isinstance(x, dict): return {k: _cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)): return type(x)(_cpu(o) for o in x)
    return x


def reduce_metrics(metrics: dict, loss_sum, count: int) -> tuple[float, int]:
    """Merge every rank's torcheval `metrics` into each of them and sum `loss_sum` and `count` over the ranks;
    returns the global `(loss_sum, count)`. One object all-gather: MetricsCB calls it once per epoch phase.

    Every rank merges the states in rank order, so all compute the same numbers (and agree on a new best checkpoint).
    """
    mine = {'states': {k: _cpu(m.state_dict()) for k, m in metrics.items()},
            'loss': 0. if loss_sum is None else float(loss_sum), 'count': count}
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    for k, m in metrics.items():
        ms = [copy.deepcopy(m) for _ in parts]
        for o, p in zip(ms, parts):
            o.load_state_dict(p['states'][k])
            o.to(m.device)
        m.load_state_dict(ms[0].merge_state(ms[1:]).state_dict())
    return math.fsum(p['loss'] for p in parts), sum(p['count'] for p in parts)


# ---------------------------------------------------------------- the callback
def _param_device(model) -> torch.device:
    p = next(iter(model.parameters()), None)
    if p is None: raise ValueError("DDPCB: the model has no parameters to train")
    return p.device


class DDPCB(Callback):
    """Data-parallel training in each process torchrun starts: for each fit, the model is wrapped in
    `DistributedDataParallel` (so `learn.model` is the wrapper during the fit and yours again after it), the loaders
    are sharded (`distributed_dls`, unless already sharded; reseeded with `seed + epoch` every epoch), and every
    `MetricsCB` merges all ranks' metrics and loss sums once per epoch phase (`reduce_metrics`).

    Making it joins the process group (`init_from_env(device, backend)`), so `self.device` (cuda:LOCAL_RANK or cpu)
    is known before the data and the model are put there (`DeviceCB(ddp.device)`); outside torchrun it does
    nothing. `ddp_kwargs` go to DistributedDataParallel (e.g. `find_unused_parameters=True`). BatchNorm layers keep
    per-rank batch statistics (running statistics come from rank 0); for synced ones, make the model with
    `nn.SyncBatchNorm.convert_sync_batchnorm(model)` (CUDA).
    """
    order = Order.DISTRIBUTED  # after DeviceCB and the callbacks that change the model; before schedulers count

    def __init__(self, device=None, backend: str | None = None, seed: int = 0, shard: bool = True, **ddp_kwargs):
        self.device = init_from_env(device, backend)
        self.seed, self.shard, self.ddp_kwargs = seed, shard, ddp_kwargs
        self._model, self._dls = None, None

    def before_fit(self, learn):
        if not is_distributed(): return
        dev = _param_device(learn.model)
        if dist.get_backend() == 'nccl' and dev.type != 'cuda':
            raise ValueError(f"DDPCB: the model is on {dev} but NCCL needs it on the GPU; add DeviceCB(ddp.device)")
        train = getattr(learn.dls, 'train', None)
        if self.shard and train is not None and not _is_sharded(train):
            self._dls, learn.dls = learn.dls, distributed_dls(learn.dls, seed=self.seed)
        self._model = learn.model
        learn.model = DistributedDataParallel(learn.model, device_ids=[dev.index] if dev.type == 'cuda' else None,
                                              **self.ddp_kwargs)

    def before_epoch(self, learn):
        if self._model is not None and learn.training: _set_epoch(learn.dls.train, learn.epoch)

    def cleanup_fit(self, learn):
        if self._model is not None: learn.model, self._model = self._model, None
        if self._dls is not None: learn.dls, self._dls = self._dls, None
