"""Time one `step()` of each miniai optimizer against the closest torch.optim algorithm (foreach implementation).

The model is a stack of big Linear layers (~10M parameters) with fixed random grads, so only the update is timed.
Each optimizer is warmed up, then stepped in `--reps` rounds of `--steps` steps, ours and torch's interleaved,
and the median ms/step is reported. Usage: `python benchmarks/bench_optimizers.py [--width 1800 --layers 3]`.
"""
from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from common import cpu_name, sync
from miniai.sgd import SGD, Adagrad, Adam, Lamb, Momentum, Nesterov, RMSProp

# (name, ours, torch's closest algorithm, how they relate)
PAIRS = [
    ('SGD', partial(SGD, lr=1e-3), partial(torch.optim.SGD, lr=1e-3, foreach=True), 'same update'),
    ('Momentum', partial(Momentum, lr=1e-3, mom=0.9),
     partial(torch.optim.SGD, lr=1e-3, momentum=0.9, dampening=0.9, foreach=True), 'same after buffer init'),
    ('Nesterov', partial(Nesterov, lr=1e-3, mom=0.9),
     partial(torch.optim.SGD, lr=1e-3, momentum=0.9, nesterov=True, foreach=True), 'same update'),
    ('RMSProp', partial(RMSProp, lr=1e-3), partial(torch.optim.RMSprop, lr=1e-3, alpha=0.99, eps=1e-5, foreach=True),
     'same after sqr init'),
    ('Adam', partial(Adam, lr=1e-3), partial(torch.optim.Adam, lr=1e-3, foreach=True), 'eps inside the sqrt'),
    ('Adagrad', partial(Adagrad, lr=1e-3), partial(torch.optim.Adagrad, lr=1e-3, foreach=True), 'same update'),
    ('Lamb', partial(Lamb, lr=1e-3), partial(torch.optim.Adam, lr=1e-3, foreach=True), 'Adam + 2 norms, trust ratio'),
]


def make_params(width: int, layers: int, device):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]).to(device)
    for p in model.parameters(): p.grad = torch.randn_like(p) * 1e-2
    return list(model.parameters())


def time_steps(opt, steps: int, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps): opt.step()
    sync(device)
    return (time.perf_counter() - t0) / steps * 1e3


def bench(width: int, layers: int, steps: int, reps: int, warmup: int, device):
    params = make_params(width, layers, device)
    n = sum(p.numel() for p in params)
    print(f"{n/1e6:.1f}M parameters ({layers} x Linear({width}, {width})), {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {cpu_name()}")
    print(f"medians of {reps} rounds of {steps} steps after {warmup} warm-up steps; ratio: median of per-round "
          "ours/torch\n")
    print(f"{'optimizer':<10} {'ours ms':>9} {'torch ms':>9} {'ratio':>6}  torch counterpart")
    rows = []
    for name, ours_f, torch_f, note in PAIRS:
        ours, theirs = ours_f(params), torch_f(params)
        time_steps(ours, warmup, device); time_steps(theirs, warmup, device)
        t_ours, t_torch = [], []
        for r in range(reps):                    # interleaved, alternating who goes first: load drifts hit both
            for opt, ts in ([(ours, t_ours), (theirs, t_torch)][::1 if r % 2 else -1]):
                ts.append(time_steps(opt, steps, device))
        mo, mt = statistics.median(t_ours), statistics.median(t_torch)
        ratio = statistics.median(a / b for a, b in zip(t_ours, t_torch))   # paired per round: robust to load
        tname = type(theirs).__name__ + ('' if name not in ('Momentum', 'Nesterov') else
                                         ' nesterov' if name == 'Nesterov' else ' momentum')
        print(f"{name:<10} {mo:9.2f} {mt:9.2f} {ratio:6.2f}  {tname} (foreach; {note})")
        rows.append((name, mo, mt, ratio))
        del ours, theirs
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--width', type=int, default=1800)
    ap.add_argument('--layers', type=int, default=3)
    ap.add_argument('--steps', type=int, default=5)
    ap.add_argument('--reps', type=int, default=15)
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    bench(a.width, a.layers, a.steps, a.reps, a.warmup, torch.device(a.device))


if __name__ == '__main__':
    main()
