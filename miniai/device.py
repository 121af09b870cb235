"""The ground floor: where tensors live and which process this is. Imports nothing of miniai but its errors.

Device helpers (`def_device`, `to_device`, `to_cpu`; and `detached`, `map_tensors`) and the torch.distributed
rank helpers (`rank`, `world_size`, `is_main_process`, `barrier`, ...), which are no-ops outside a process group.
`miniai.callbacks` re-exports the first three, `miniai.distributed` the rank helpers, so both keep their import
paths. Explained in nbs/02_learner.ipynb (devices) and nbs/10_distributed.ipynb (ranks).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.distributed as dist

__all__ = ['def_device', 'map_tensors', 'to_device', 'to_cpu', 'detached', 'is_distributed', 'rank', 'local_rank',
           'world_size', 'is_main_process', 'barrier', 'all_reduce_sum', 'all_reduce_mean', 'broadcast_object',
           'unwrap_model', 'check_device']

def_device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'


def map_tensors(fn, x):
    """`fn(t)` for each tensor `t` in `x`, through nested dicts, lists, tuples and namedtuples (kept as the types they
    are); any other value as it is. The one walk of a batch or of `learn.preds` that the helpers below share."""
    if isinstance(x, torch.Tensor): return fn(x)
    if isinstance(x, Mapping): return {k: map_tensors(fn, v) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, '_fields'): return type(x)(*(map_tensors(fn, o) for o in x))
    if isinstance(x, (list, tuple)): return type(x)(map_tensors(fn, o) for o in x)
    return x


def to_device(x, device=def_device, non_blocking: bool = False):
    """Move a tensor, or the tensors inside nested dicts, lists and tuples, to `device`."""
    return map_tensors(lambda t: t.to(device, non_blocking=non_blocking), x)


def unwrap_model(model):
    """The module inside a DistributedDataParallel (or compiled) wrapper, so state_dict keys never change."""
    while hasattr(model, 'module') and isinstance(model.module, torch.nn.Module): model = model.module
    return getattr(model, '_orig_mod', model)


def detached(x):
    """`x` with each tensor inside it (nested dicts, lists and tuples too) detached from the autograd graph, on its
    own device: what a callback keeps of `learn.preds`, which is a tuple for a model with several outputs."""
    return map_tensors(torch.Tensor.detach, x)


def to_cpu(x):
    """Detached CPU copies of the tensors in `x` (float16/bfloat16 become float32, so numpy can read them)."""
    def cpu(t):
        t = t.detach().cpu()
        return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    return map_tensors(cpu, x)


# ---------------------------------------------------------------- ranks and collectives (no-ops outside a group)
def _initialized() -> bool: return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """True in a torch.distributed process group of more than one process."""
    return _initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if _initialized() else 0


def world_size() -> int:
    """The number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if _initialized() else 1


def local_rank() -> int:
    """This process's rank on its machine, from torchrun's LOCAL_RANK (0 when not set): its GPU's index."""
    return int(os.environ.get('LOCAL_RANK', 0))


def is_main_process() -> bool:
    """True unless this is a torch.distributed process of rank > 0 (only rank 0 prints, plots and saves)."""
    return rank() == 0


def barrier():
    """Wait until every process gets here (a no-op when not distributed)."""
    if is_distributed(): dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of tensor `t` over all processes, as a new tensor (`t` itself when not distributed)."""
    if not is_distributed(): return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of tensor `t` over all processes (`t` itself when not distributed)."""
    return all_reduce_sum(t) / dist.get_world_size() if is_distributed() else t


def broadcast_object(obj, src: int = 0):
    """Picklable `obj` as process `src` holds it, on every process (`obj` itself when not distributed)."""
    if not is_distributed(): return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def check_device(name: str | None, flag: str = '--device') -> torch.device:
    """`name` (None: `def_device`) as a torch.device available on this machine, else a `UsageError` naming `flag`
    and the devices there are (what the command line prints as one line)."""
    from .errors import UsageError
    try: dev = torch.device(name or def_device)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag} {name!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    avail = ['cpu'] + (['cuda'] if torch.cuda.is_available() else []) + \
        (['mps'] if torch.backends.mps.is_available() else [])
    if dev.type not in avail:
        why = 'is not available on this machine' if dev.type in ('cuda', 'mps') else 'is not supported'
        raise UsageError(f"{flag} {name}: {dev.type} {why}; available here: {', '.join(avail)} (leave {flag} out "
                         "to take the first of them)")
    if dev.type == 'cuda' and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"{flag} {name}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1}")
    return dev
