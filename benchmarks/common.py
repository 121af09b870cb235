"""Pieces the benchmark scripts share: a device sync, a per-phase timer callback, the course's CNN, and what the CPU
is (its name for the record, whether it has bfloat16 units)."""
import platform
import time
from functools import partial

import torch
from torch import nn

from miniai.activations import GeneralRelu
from miniai.conv import get_model
from miniai.core import Callback
from miniai.init import init_weights

__all__ = ['sync', 'PhaseTimerCB', 'course_cnn', 'cpu_name', 'cpu_has_bf16']


def sync(device):
    """Wait for the device's queued work, so wall-clock readings include it (CUDA runs asynchronously)."""
    device = torch.device(device)
    if device.type == 'cuda': torch.cuda.synchronize(device)


class PhaseTimerCB(Callback):
    """Seconds of each train and eval phase, synchronised; last, so it includes the metrics' once-an-epoch sync."""
    order = 100

    def __init__(self, device): self.device, self.times = device, {True: [], False: []}

    def before_epoch(self, learn):
        sync(self.device)
        self.t0 = time.perf_counter()

    def after_epoch(self, learn):
        sync(self.device)
        self.times[learn.training].append(time.perf_counter() - self.t0)


def course_cnn() -> nn.Module:
    """The course's `get_model` with GeneralRelu(leak=0.1, sub=0.4), BatchNorm and kaiming init."""
    act = partial(GeneralRelu, leak=0.1, sub=0.4)
    return get_model(act, norm=nn.BatchNorm2d).apply(partial(init_weights, leaky=0.1))


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 units (AMX or AVX512-BF16), where bf16 autocast speeds convolutions up."""
    try:
        with open('/proc/cpuinfo') as f: flags = f.read()
    except OSError: return False
    return ' amx_bf16' in flags or ' avx512_bf16' in flags


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for the record of where a run was timed."""
    try:
        with open('/proc/cpuinfo') as f:
            name = next((ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')), '')
    except OSError: name = ''
    return name or platform.processor() or platform.machine()
