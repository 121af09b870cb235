"""Milliseconds per training step of the fast recipe's net, from the bfloat16 recipe's net run in float32 to the
float32 route's, one change a row, timed interleaved in one process.

A step is what the training loop does per batch, without the loop: forward, label-smoothed cross entropy, backward
and an AdamW step, on one fixed batch of random images. The first row is the net of `--recipe fast-bf16 --no-amp
--no-channels-last`, the last the net of `--recipe fast-fp32`, and each row between adds one of the settings in
which they differ (the layout, the widths, the activation, the stem's norm), so each row's ratio to the one above is
what that setting saves. Each round takes every row in turn, starting one row later than the round before, so a
machine whose speed drifts (other jobs, a slower spell) weighs on all rows alike; each row gives its median over the
rounds and the medians of its per-round ratios to the first row and to the row above. This is a lower bound on the
time per batch of a run, which adds augmentation, the weight average and the loop. Usage: `python
benchmarks/step_time.py [--rounds 12 --steps 4 --bs 256]`.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from common import cpu_name
from time_to_accuracy import NET_DEFAULTS, RECIPES, make_model

BASE, ROUTE = 'fast-bf16', 'fast-fp32'
# the settings in which the two recipes' nets differ, in the order the rows add them
CHANGES = ('channels_last', 'nfs', 'act', 'stem_norm')
# the other settings that shape a step: the rows assume the two recipes share them
SHARED = ('arch', 'bs', 'label_smoothing', 'wd')


def variants() -> list[tuple[str, dict]]:
    """(row name, settings) from the bfloat16 recipe's net in float32 to the float32 route's, a change a row."""
    base, route = ({**NET_DEFAULTS, **RECIPES[name]} for name in (BASE, ROUTE))
    differ = [k for k in SHARED if base[k] != route[k]]
    if differ: raise ValueError(f"the recipes {BASE} and {ROUTE} differ in {differ}, which the rows do not add")
    cfg = {**{k: base[k] for k in CHANGES}, 'channels_last': False}
    rows = [(f'--recipe {BASE} --no-amp --no-channels-last', dict(cfg))]
    for k in CHANGES:
        if cfg[k] == route[k]: continue
        cfg[k] = route[k]
        rows.append((f'+ {k}={route[k]}', dict(cfg)))
    rows[-1] = (f'{rows[-1][0]}  (--recipe {ROUTE})', rows[-1][1])
    return rows


def make_step(cfg: dict, bs: int, label_smoothing: float, wd: float):
    """A function that runs one training step of `cfg`'s net on a fixed random batch of `bs` images, and the net."""
    model = make_model(RECIPES[ROUTE]['arch'], cfg['nfs'], cfg['act'], cfg['stem_norm'])
    fmt = torch.channels_last if cfg['channels_last'] else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=wd)
    x = torch.randn(bs, 1, 28, 28).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (bs,))

    def step():
        F.cross_entropy(model(x), y, label_smoothing=label_smoothing).backward()
        opt.step()
        opt.zero_grad()
    return step, model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rounds', type=int, default=12, help='rounds over every row')
    ap.add_argument('--steps', type=int, default=4, help='timed steps per row and round (after one untimed)')
    ap.add_argument('--bs', type=int, default=RECIPES[ROUTE]['bs'], help="batch size (default: the recipes')")
    ap.add_argument('--seed', type=int, default=0, help='random seed of the weights and the batch')
    args = ap.parse_args(argv)
    if min(args.rounds, args.steps, args.bs) < 1: ap.error("--rounds, --steps and --bs must be at least 1")
    torch.manual_seed(args.seed)
    rows = variants()
    steps, models = zip(*[make_step(cfg, args.bs, RECIPES[ROUTE]['label_smoothing'], RECIPES[ROUTE]['wd'])
                          for _, cfg in rows])
    print(f"torch {torch.__version__}, cpu ({cpu_name()}), {torch.get_num_threads()} threads; batch size {args.bs}, "
          f"{args.rounds} rounds of {args.steps} timed steps per row", flush=True)
    times = [[] for _ in rows]
    order = list(range(len(rows)))
    for r in range(args.rounds):
        for i in order[r % len(rows):] + order[:r % len(rows)]:
            steps[i]()
            t0 = time.perf_counter()
            for _ in range(args.steps): steps[i]()
            times[i].append((time.perf_counter() - t0) / args.steps)
    def ratio(a, b): return statistics.median(x / y for x, y in zip(a, b))
    width = max(len(name) for name, _ in rows)
    print(f"{'net':<{width}}  {'ms/step':>8}  {'to first':>8}  {'to above':>8}")
    result = []
    for i, ((name, cfg), ts) in enumerate(zip(rows, times)):
        ms, first, above = statistics.median(ts) * 1e3, ratio(ts, times[0]), ratio(ts, times[max(i - 1, 0)])
        print(f"{name:<{width}}  {ms:>8.1f}  {first:>8.3f}  {above:>8.3f}")
        result.append(dict(name=name, config=cfg, model=models[i], ms_per_step=ms, ratio=first, ratio_to_above=above))
    return result


if __name__ == '__main__': main()
