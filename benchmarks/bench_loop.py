"""What miniai's loop costs: the default Fashion-MNIST recipe run three ways in one process.

(a) a hand-written PyTorch loop over uint8 tensors on the device (randperm batches, normalised per batch);
(b) miniai's `TrainLearner` + DeviceCB, MetricsCB(accuracy), ProgressCB, BatchSchedCB over the in-memory `get_dls()`;
(c) the same Learner over the course's Hugging Face path: `load_fashion_mnist().with_transform(transformi)` (PIL
    `to_tensor` per image) and `DataLoaders.from_dd(tds, bs, num_workers=...)`.
The recipe: the course's `get_model` (GeneralRelu(0.1, 0.4), BatchNorm, kaiming init), AdamW, OneCycleLR(max_lr=6e-2)
over every step, batch size 1024, cross entropy; each run starts from the same seed. Every path is warmed up once,
untimed, on one full and one short batch of each split. Train and eval phases are timed separately (after
`torch.cuda.synchronize()` on CUDA); (a) and (b) alternate `--repeats` times and the medians are reported.
Usage: `python benchmarks/bench_loop.py [--epochs 5 --device cuda --repeats 3 --json out.json]`;
a quick check: `--limit 3000 --epochs 1`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from itertools import islice

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torcheval.metrics import MulticlassAccuracy

from common import PhaseTimerCB, course_cnn, cpu_name, sync
from miniai.callbacks import def_device, set_seed
from miniai.datasets import DataLoaders, InMemoryLoader, fashion_mnist_tensors, get_dls, inplace, load_fashion_mnist
from miniai.learner import DeviceCB, MetricsCB, ProgressCB, TrainLearner
from miniai.sgd import BatchSchedCB

XMEAN, XSTD = 0.28, 0.35          # the course's Fashion-MNIST statistics


def summarise(train_s, eval_s, total, acc):
    return dict(train_s_per_epoch=statistics.median(train_s), eval_s_per_epoch=statistics.median(eval_s),
                total_s=total, accuracy=acc, train_s=train_s, eval_s=eval_s)


# ---------------------------------------------------------------- (a) plain PyTorch
def normalise(x): return x.float().div(255).sub(XMEAN).div(XSTD).unsqueeze(1)


def run_plain(data, epochs, bs, lr, device, seed, quiet=False):
    """The recipe by hand; `data` = {'train': (x uint8, y), 'test': (x, y)} already on `device`."""
    (xtr, ytr), (xte, yte) = data['train'], data['test']
    set_seed(seed)
    model = course_cnn().to(device)
    n_batches = -(-len(xtr) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * n_batches)
    train_s, eval_s = [], []
    sync(device)
    start = time.perf_counter()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        idx, loss_sum = torch.randperm(len(xtr)).to(device), torch.zeros((), device=device)
        for i in range(n_batches):
            sel = idx[i * bs:(i + 1) * bs]
            xb, yb = normalise(xtr[sel]), ytr[sel]
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            loss_sum += loss.detach() * len(yb)
        train_loss = (loss_sum / len(xtr)).item()     # one sync per epoch, as MetricsCB does
        sync(device)
        t1 = time.perf_counter()
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=device)
        with torch.no_grad():
            for i in range(0, len(xte), bs):
                correct += (model(normalise(xte[i:i + bs])).argmax(1) == yte[i:i + bs]).sum()
        acc = correct.item() / len(xte)
        sync(device)
        t2 = time.perf_counter()
        train_s.append(t1 - t0); eval_s.append(t2 - t1)
        if not quiet: print(f"  plain epoch {epoch}: train loss {train_loss:.3f}, accuracy {acc:.4f}, "
                            f"train {t1 - t0:.2f}s, eval {t2 - t1:.2f}s", flush=True)
    return summarise(train_s, eval_s, time.perf_counter() - start, acc)


# ---------------------------------------------------------------- (b), (c) miniai
def run_miniai(dls, epochs, lr, device, seed, quiet=False):
    set_seed(seed)
    model = course_cnn()
    metrics, timer = MetricsCB(accuracy=MulticlassAccuracy()), PhaseTimerCB(device)
    sched = BatchSchedCB(partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=lr,
                                 total_steps=epochs * len(dls.train)))
    cbs = [DeviceCB(device), metrics, sched, timer] + ([] if quiet else [ProgressCB()])
    metrics.show = not quiet
    learn = TrainLearner(model, dls, F.cross_entropy, lr=lr, cbs=cbs, opt_func=torch.optim.AdamW)
    sync(device)
    start = time.perf_counter()
    learn.fit(epochs)
    sync(device)
    total = time.perf_counter() - start
    return summarise(timer.times[True], timer.times[False], total, metrics.history[-1]['valid_accuracy'])


class Limited:
    """The first `n` batches of loader `dl` (for the warm-up pass)."""
    def __init__(self, dl, n): self.dl, self.n = dl, n
    def __len__(self): return min(self.n, len(self.dl))
    def __iter__(self): return islice(iter(self.dl), self.n)


@inplace
def transformi(b): b['image'] = [(TF.to_tensor(o) - XMEAN) / XSTD for o in b['image']]   # the course's transform


def hf_dls(bs, limit, workers):
    """The course's path: Hugging Face rows, PIL `to_tensor` per image, a torch DataLoader with `workers` workers."""
    dd = load_fashion_mnist()
    if limit: dd = {k: ds.select(range(min(limit, len(ds)))) for k, ds in dd.items()}
    tds = {k: ds.with_transform(transformi) for k, ds in dd.items()}
    return DataLoaders.from_dd(tds, bs, num_workers=workers)


# ---------------------------------------------------------------- driver
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--epochs', type=int, default=5)
    ap.add_argument('--device', default=def_device)
    ap.add_argument('--bs', type=int, default=1024)
    ap.add_argument('--lr', type=float, default=6e-2, help='OneCycleLR max_lr')
    ap.add_argument('--limit', type=int, default=0, help='use only the first N train and test items (quick check)')
    ap.add_argument('--repeats', type=int, default=1, help='run (a) and (b) alternately R times; report medians')
    ap.add_argument('--workers', type=int, default=4, help="DataLoader workers on the Hugging Face path (c)")
    ap.add_argument('--seed', type=int, default=42)
    ap.add_argument('--skip-plain', action='store_true', help='skip (a), the hand-written loop')
    ap.add_argument('--skip-hf', action='store_true', help='skip (c), the Hugging Face path')
    ap.add_argument('--json', help='write the numbers (and the config) to this file')
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda': torch.backends.cudnn.benchmark = True   # both loops get the same autotuned kernels

    data = {k: tuple(t[:args.limit] if args.limit else t for t in v) for k, v in fashion_mnist_tensors().items()}
    data_dev = {k: tuple(t.to(device) for t in v) for k, v in data.items()}
    dls = get_dls(args.bs, device=device) if not args.limit else limited_dls(data_dev, args.bs)
    gpu = torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name()
    print(f"torch {torch.__version__}, {device} ({gpu}), {torch.get_num_threads()} threads; "
          f"{len(data['train'][0])} train / {len(data['test'][0])} test items, bs {args.bs}, {args.epochs} epochs, "
          f"seed {args.seed}", flush=True)

    # warm-up: a full and a last (short) batch of each split on each path, untimed, so that no side pays for
    # cuDNN autotuning (once per shape, process-wide) or other first-call costs
    warm = {k: tuple(t[:args.bs + len(t) % args.bs] for t in v) for k, v in data_dev.items()}
    if not args.skip_plain: run_plain(warm, 1, args.bs, args.lr, device, args.seed, quiet=True)
    run_miniai(limited_dls(warm, args.bs), 1, args.lr, device, args.seed, quiet=True)

    res = {'a': [], 'b': []}
    for r in range(args.repeats):       # alternated, so a drift in machine load hits both
        if not args.skip_plain:
            print(f"(a) plain PyTorch, repeat {r + 1}/{args.repeats}", flush=True)
            res['a'].append(run_plain(data_dev, args.epochs, args.bs, args.lr, device, args.seed))
        print(f"(b) miniai in memory, repeat {r + 1}/{args.repeats}", flush=True)
        res['b'].append(run_miniai(dls, args.epochs, args.lr, device, args.seed))
    if not args.skip_hf:
        hdls = hf_dls(args.bs, args.limit, args.workers)
        run_miniai(DataLoaders(Limited(hdls.train, 3), Limited(hdls.valid, 3)), 1, args.lr, device, args.seed,
                   quiet=True)
        print(f"(c) miniai over the Hugging Face path, {args.workers} workers", flush=True)
        res['c'] = [run_miniai(hdls, args.epochs, args.lr, device, args.seed)]
    report(res, args, gpu)


def limited_dls(data, bs):
    """What `get_dls(bs, device=...)` builds, over the (cut) tensors in `data`."""
    def norm(b): return (normalise(b[0]), b[1])
    return DataLoaders(InMemoryLoader(data['train'], bs, shuffle=True, batch_tfm=norm),
                       InMemoryLoader(data['test'], bs, batch_tfm=norm))


def med(rows, key): return statistics.median(r[key] for r in rows)


def report(res, args, gpu):
    names = {'a': 'plain PyTorch', 'b': 'miniai in memory', 'c': f'miniai HF ({args.workers} workers)'}
    print(f"\n{'':<24}{'train s/epoch':>14}{'eval s/epoch':>14}{'total s':>10}{'accuracy':>10}")
    summary = {}
    for k, rows in res.items():
        if not rows: continue
        summary[k] = {m: med(rows, m) for m in ('train_s_per_epoch', 'eval_s_per_epoch', 'total_s', 'accuracy')}
        s = summary[k]
        print(f"({k}) {names[k]:<20}{s['train_s_per_epoch']:>14.3f}{s['eval_s_per_epoch']:>14.3f}"
              f"{s['total_s']:>10.2f}{s['accuracy']:>10.4f}")
    ratios = {}
    for num, den in (('b', 'a'), ('c', 'b')):
        if num in summary and den in summary:
            ratios[f'{num}/{den}'] = {m: summary[num][m] / summary[den][m] for m in ('train_s_per_epoch', 'total_s')}
            print(f"{num}/{den}: train s/epoch x{ratios[f'{num}/{den}']['train_s_per_epoch']:.2f}, "
                  f"total x{ratios[f'{num}/{den}']['total_s']:.2f}")
    if args.json:
        out = dict(config=vars(args), device=str(args.device), device_name=gpu, torch=torch.__version__,
                   threads=torch.get_num_threads(), summary=summary, ratios=ratios, runs=res)
        with open(args.json, 'w') as f: json.dump(out, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == '__main__': main()
