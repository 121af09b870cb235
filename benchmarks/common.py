"""Pieces both loop benchmarks use: a device sync and a per-phase timer callback."""
import time

import torch

from miniai.core import Callback

__all__ = ['sync', 'PhaseTimerCB']


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
