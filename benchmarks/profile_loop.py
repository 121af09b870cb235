"""Where the Learner's own time goes: cProfile over a fit of the default recipe, split into miniai's code and the rest.

The loop should cost nothing next to the model: an event nobody listens to is an empty loop over a cached list,
MetricsCB syncs with the host once per epoch, ProgressCB at most every 0.25 s. This prints the share of wall time
spent in miniai's own Python (excluding the torch calls it makes) and the top miniai functions by own time.
Usage: `python benchmarks/profile_loop.py [--epochs 2 --limit 20000]`.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch
import torch.nn.functional as F
from torcheval.metrics import MulticlassAccuracy

from common import course_cnn
from miniai.callbacks import DeviceCB, MetricsCB, ProgressCB, set_seed
from miniai.datasets import get_dls
from miniai.learner import TrainLearner


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--limit', type=int, default=None, help='first N training images only')
    ap.add_argument('--bs', type=int, default=1024)
    ap.add_argument('--top', type=int, default=12)
    args = ap.parse_args()
    set_seed(42)
    dls = get_dls(args.bs, limit=args.limit)
    model = course_cnn()
    cbs = [DeviceCB(), MetricsCB(accuracy=MulticlassAccuracy()), ProgressCB()]
    learn = TrainLearner(model, dls, F.cross_entropy, lr=6e-2, cbs=cbs, opt_func=torch.optim.AdamW)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    learn.fit_one_cycle(args.epochs)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    ours = {k: v for k, v in stats.stats.items() if '/miniai/' in k[0]}
    own = sum(v[2] for v in ours.values())  # tottime: time in the function itself, not in what it calls
    n_batches = args.epochs * (len(dls.train) + len(dls.valid))
    print(f"{args.epochs} epochs, {n_batches} batches, {wall:.2f} s wall")
    print(f"miniai's own Python: {own:.3f} s = {100 * own / wall:.2f}% of wall, {1e6 * own / n_batches:.0f} µs a batch")
    print(f"\n{'own s':>8} {'calls':>8}  function")
    for k, v in sorted(ours.items(), key=lambda kv: -kv[1][2])[:args.top]:
        print(f"{v[2]:8.4f} {v[1]:8d}  {k[0].split('/miniai/')[-1]}:{k[1]} {k[2]}")


if __name__ == '__main__': main()
