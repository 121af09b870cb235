"""Seconds of training + evaluation to 0.90, 0.93 and 0.95 Fashion-MNIST test accuracy, for a named recipe.

`--recipe fast` is the quickest route to 0.93 found on a 2-core CPU; `--recipe best` aims at 0.95;
`--recipe resnet` is the course's 4.9M-parameter ResNet for 5 epochs (the earlier record). Every flag a recipe
sets can be overridden (`--recipe fast --epochs 8`). The pieces are miniai's: `get_resnet` or a small net built
from `conv` and `ResBlock`, kaiming init, on-device augmentation (random flips, `--padding` for random crops),
AdamW under `fit_one_cycle`, `EMACB` (an exponential moving average of the weights, which the evaluation uses),
flip TTA, bfloat16 autocast and channels_last (`--amp --channels-last`: on by default on CUDA and on a CPU with
bfloat16 units, AMX or AVX512-BF16, the only CPUs where they pay), `torch.compile` (`--compile`), the in-memory
loader (uint8 on the device, normalised per batch; the short last training batch is dropped so shapes stay fixed).

Timing: one warm-up of a few batches (on the same model, whose weights, optimizer and RNG are then put back) takes
the first-call costs (cuDNN autotuning, allocator growth) out of the timed run; with `--compile` the warm-up
compiles, and its seconds are counted. The timed run counts each training epoch and each evaluation
(synchronised). By default the test set is evaluated once, after the last epoch (`--eval end`):
evaluating is part of the time. `--eval epoch` evaluates after every epoch, which costs time but shows when each
bar is first passed. The test set is only evaluated, never used to choose anything in the run.
Usage: `python benchmarks/time_to_accuracy.py --recipe fast --seeds 0 1 2 [--device cuda --json out.json]`;
a quick check: `--recipe fast --limit 2000 --epochs 1`.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from functools import partial
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from common import PhaseTimerCB, sync
from miniai.accel import ChannelsLastCB, CompileCB, MixedPrecisionCB
from miniai.activations import GeneralRelu
from miniai.augment import InputTransformCB, default_tfms, hflip
from miniai.callbacks import def_device, set_seed
from miniai.conv import conv
from miniai.core import Callback, CancelEpochException
from miniai.datasets import DataLoaders, InMemoryLoader, fashion_mnist_tensors, get_dls
from miniai.ema import EMACB
from miniai.init import init_weights
from miniai.learner import DeviceCB, TrainLearner
from miniai.resnet import ResBlock, get_resnet

XMEAN, XSTD = 0.28, 0.35
BARS = (0.90, 0.93, 0.95)

# What each recipe sets; `None` leaves a flag to its device default (amp, channels_last: on for CUDA).
RECIPES = {
    'resnet': dict(arch='resnet', nfs=[16, 32, 64, 128, 256, 512], epochs=5, bs=256, lr=1e-2, wd=1e-2, padding=0,
                   label_smoothing=0., ema=0., tta=False, eval='epoch'),
    'fast': dict(arch='net', nfs=[16, 32, 64, 128], epochs=5, bs=256, lr=1e-2, wd=1e-2, padding=0,
                 label_smoothing=0.1, ema=0.99, tta=True, eval='end'),
    'best': dict(arch='resnet', nfs=[16, 32, 64, 128, 256, 512], epochs=25, bs=256, lr=1e-2, wd=1e-2, padding=1,
                 label_smoothing=0.1, ema=0.999, tta=True, eval='end'),
}


class Limited:
    """The first `n` batches of loader `dl` (for the warm-up)."""
    def __init__(self, dl, n): self.dl, self.n = dl, n
    def __len__(self): return min(self.n, len(self.dl))
    def __iter__(self): return islice(iter(self.dl), self.n)


def make_dls(bs, device, limit):
    if not limit: return get_dls(bs, device=device, drop_last=True)
    def norm(b): return (b[0].float().div(255).sub(XMEAN).div(XSTD).unsqueeze(1), b[1])
    t = {k: tuple(x[:limit].to(device) for x in v) for k, v in fashion_mnist_tensors().items()}
    train = InMemoryLoader(t['train'], bs, shuffle=True, drop_last=len(t['train'][0]) > bs, batch_tfm=norm)
    return DataLoaders(train, InMemoryLoader(t['test'], bs, batch_tfm=norm))


def small_net(act, nfs, norm=nn.BatchNorm2d, stem_stride=1):
    """A 3×3 stem (at full resolution; with `stem_stride=2` at half, followed by a `ResBlock`), then per further
    width a stride-2 conv followed by a `ResBlock(w, w)`.

    Unlike `get_resnet`, whose blocks run their first conv before downsampling, every conv after the stem works
    at the reduced resolution, which makes it about 4× cheaper per image at the same widths.
    """
    layers, ni = [conv(1, nfs[0], ks=3, stride=stem_stride, act=act, norm=norm)], nfs[0]
    if stem_stride > 1: layers.append(ResBlock(ni, ni, act=act, norm=norm))
    for w in nfs[1:]:
        layers += [conv(ni, w, ks=3, stride=2, act=act, norm=norm), ResBlock(w, w, act=act, norm=norm)]
        ni = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ni, 10, bias=False),
                         nn.BatchNorm1d(10))


def make_model(arch='resnet', nfs=(16, 32, 64, 128, 256, 512)):
    act = partial(GeneralRelu, leak=0.1, sub=0.4)
    if arch == 'resnet': model = get_resnet(act, nfs=nfs, norm=nn.BatchNorm2d)
    else: model = small_net(act, nfs, stem_stride=2 if arch == 'net-s2' else 1)
    return model.apply(partial(init_weights, leaky=0.1, linear=True))


def accel_cbs(args):
    cbs = []
    if args.amp: cbs.append(MixedPrecisionCB(torch.bfloat16))
    if args.channels_last: cbs.append(ChannelsLastCB())
    if args.compile: cbs.append(CompileCB())
    return cbs


class EvalCB(Callback):
    """Test accuracy (with `tta`: of the softmax averaged over each image and its mirror image) after the
    epochs in `when` ('end': only the last; 'epoch': every one); other evaluations are skipped before they
    start."""
    order = -30   # first, so a skipped evaluation runs no other callback's before_epoch

    def __init__(self, when='end', tta=False, amp=False): self.when, self.tta, self.amp, self.accs = when, tta, amp, {}

    def before_epoch(self, learn):
        if learn.training: return
        if self.when == 'end' and learn.epoch != learn.n_epochs - 1: raise CancelEpochException()
        self.correct, self.n = torch.zeros((), dtype=torch.long, device=next(learn.model.parameters()).device), 0

    def after_batch(self, learn):
        if learn.training: return
        x, y, p = learn.batch[0], learn.batch[1], learn.preds.float()
        if self.tta:
            # MixedPrecisionCB's autocast ended with the loss: the flipped pass gets its own, as the first had
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
                p = p.softmax(1) + learn.model(hflip(x)).float().softmax(1)
        self.correct += (p.argmax(1) == y).sum()   # stays on the device: no sync per batch
        self.n += len(y)

    def after_epoch(self, learn):
        if not learn.training: self.accs[learn.epoch] = self.correct.item() / self.n


class ProgressLine(Callback):
    """One line per epoch as it ends (the table comes at the end): seconds so far and, if evaluated, accuracy."""
    order = PhaseTimerCB.order + 1

    def __init__(self, timer, ev): self.timer, self.ev = timer, ev

    def after_epoch(self, learn):   # after a training epoch that will not be evaluated, or after an evaluation
        if learn.training and (self.ev.when == 'epoch' or learn.epoch == learn.n_epochs - 1): return
        s = sum(self.timer.times[True]) + sum(self.timer.times[False])
        acc = '' if learn.training else f", accuracy {self.ev.accs[learn.epoch]:.4f}"
        print(f"  epoch {learn.epoch + 1}/{learn.n_epochs}: {s:.1f} s{acc}", flush=True)


def warm_up(learn, dls, device, seed):
    """3 train batches and the eval set on `learn.model`, then its weights, optimizer and RNG as before; returns
    the seconds it took."""
    state = copy.deepcopy(learn.model.state_dict())
    learn.dls = DataLoaders(Limited(dls.train, 3), dls.valid)   # all of valid: its short last batch too
    t0 = time.perf_counter()
    learn.fit(1, cbs=[EvalCB("epoch", tta=True, amp=any(isinstance(c, MixedPrecisionCB) for c in learn.cbs))])
    sync(device)
    learn.model.load_state_dict(state)
    learn.dls, learn.opt = dls, None                 # a fresh optimizer for the timed fit
    set_seed(seed)
    return time.perf_counter() - t0


def run(args, seed, device, dls):
    """One timed fit with `seed`: a dict with the config, per-epoch rows and the first time past each bar."""
    set_seed(seed)
    timer, ev = PhaseTimerCB(device), EvalCB(args.eval, args.tta, amp=args.amp)
    aug = [InputTransformCB(default_tfms(padding=args.padding))] if args.aug else []
    cbs = [DeviceCB(device)] + aug + accel_cbs(args) + ([EMACB(args.ema)] if args.ema else [])
    loss = partial(F.cross_entropy, label_smoothing=args.label_smoothing)
    learn = TrainLearner(make_model(args.arch, args.nfs), dls, loss, lr=args.lr, cbs=cbs,
                         opt_func=partial(torch.optim.AdamW, weight_decay=args.wd))
    warm = warm_up(learn, dls, device, seed)
    learn.fit_one_cycle(args.epochs, args.lr, cbs=[ev, timer, ProgressLine(timer, ev)])
    evals = iter(timer.times[False])
    rows, cum = [], warm if args.compile else 0.        # compiling is part of the cost of --compile
    for e, tr in enumerate(timer.times[True]):
        evs = next(evals) if e in ev.accs else 0.
        cum += tr + evs
        rows.append(dict(epoch=e + 1, train_s=tr, eval_s=evs, cum_s=cum, accuracy=ev.accs.get(e)))
    reached = {}
    for b in args.targets:
        first = next((r for r in rows if r['accuracy'] is not None and r['accuracy'] >= b), None)
        reached[f'{b:g}'] = first and dict(epoch=first['epoch'], seconds=first['cum_s'])
    return dict(seed=seed, warm_up_s=warm, epochs=rows, reached=reached, accuracy=rows[-1]['accuracy'],
                total_s=cum, n_params=sum(p.numel() for p in learn.model.parameters()))


def report(res, args):
    warm = 'counted' if args.compile else 'not counted'
    print(f"\nseed {res['seed']} ({res['n_params'] / 1e6:.2f}M parameters; "
          f"warm-up {res['warm_up_s']:.1f} s, {warm})")
    print(f"{'epoch':>5}{'train s':>9}{'eval s':>8}{'cum s':>8}{'accuracy':>10}")
    for r in res['epochs']:
        acc = '-' if r['accuracy'] is None else f"{r['accuracy']:.4f}"
        print(f"{r['epoch']:>5}{r['train_s']:>9.2f}{r['eval_s']:>8.2f}{r['cum_s']:>8.2f}{acc:>10}")
    for b, first in res['reached'].items():
        print(f"{b}: " + (f"passed at epoch {first['epoch']}, {first['seconds']:.2f} s" if first else
                          f"not passed in {args.epochs} epochs"))
    print(f"seed {res['seed']}: accuracy {res['accuracy']:.4f} in {res['total_s']:.2f} s of training + evaluation",
          flush=True)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 units (AMX or AVX512-BF16), where bf16 autocast speeds convolutions up."""
    try:
        with open('/proc/cpuinfo') as f: flags = f.read()
    except OSError: return False
    return ' amx_bf16' in flags or ' avx512_bf16' in flags


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--recipe', choices=sorted(RECIPES), default='fast', help='the defaults of the flags below')
    ap.add_argument('--arch', choices=['resnet', 'net', 'net-s2'],
                    help="'resnet': get_resnet; 'net': the cheaper small net; 'net-s2': the same, strided "
                         "from the start")
    ap.add_argument('--nfs', type=int, nargs='+', help='widths of the stages')
    ap.add_argument('--epochs', type=int)
    ap.add_argument('--bs', type=int)
    ap.add_argument('--lr', type=float, help='peak lr of the one-cycle schedule')
    ap.add_argument('--wd', type=float, help='AdamW weight decay')
    ap.add_argument('--padding', type=int, help='random-crop padding (0: no crop)')
    ap.add_argument('--aug', action=argparse.BooleanOptionalAction, default=True, help='random flips (and crops)')
    ap.add_argument('--label-smoothing', type=float)
    ap.add_argument('--ema', type=float, help='EMACB decay (0: no weight averaging)')
    ap.add_argument('--tta', action=argparse.BooleanOptionalAction, help='evaluate with flip TTA')
    ap.add_argument('--eval', choices=['end', 'epoch'], help='evaluate after the last epoch only, or after each')
    ap.add_argument('--device', default=def_device)
    ap.add_argument('--amp', action=argparse.BooleanOptionalAction,
                    help='bfloat16 autocast (default: on for CUDA, and on a CPU with AMX or AVX512-BF16)')
    ap.add_argument('--channels-last', action=argparse.BooleanOptionalAction,
                    help='channels_last memory format (default: as --amp)')
    ap.add_argument('--compile', action='store_true', help='torch.compile the model (see the warm-up seconds)')
    ap.add_argument('--limit', type=int, default=0, help='use only the first N train and test items (quick check)')
    ap.add_argument('--targets', type=float, nargs='+', default=list(BARS), help='accuracy bars')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs='+', help='several runs, one per random seed (overrides --seed)')
    ap.add_argument('--json', help='write the config and every run to this file')
    args = ap.parse_args(argv)
    for k, v in RECIPES[args.recipe].items():
        if getattr(args, k) is None: setattr(args, k, v)
    dev = torch.device(args.device).type
    fast_bf16 = dev == 'cuda' or (dev == 'cpu' and cpu_has_bf16())
    if args.amp is None: args.amp = fast_bf16
    if args.channels_last is None: args.channels_last = fast_bf16
    if args.epochs < 1: ap.error(f"--epochs must be >= 1, got {args.epochs}")
    if not 0 <= args.ema < 1: ap.error(f"--ema must be a decay in [0, 1), got {args.ema}")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True                 # fixed shapes: autotune each conv once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dls = make_dls(args.bs, device, args.limit)
    cpu_name = platform.processor() or platform.machine()
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name
    cfg = {k: v for k, v in vars(args).items() if k not in ("seeds", 'json')}
    print(f"torch {torch.__version__}, {device} ({name}), {torch.get_num_threads()} threads; {len(dls.train)} "
          f"batches an epoch; {cfg}", flush=True)
    runs = []
    for seed in args.seeds or [args.seed]:
        runs.append(run(args, seed, device, dls))
        report(runs[-1], args)
    accs, secs = [r['accuracy'] for r in runs], [r['total_s'] for r in runs]
    passed = {b: [r['reached'][f'{b:g}'] for r in runs] for b in args.targets}
    summary = (f"SUMMARY recipe {args.recipe}, {len(runs)} run(s): accuracy " + ' '.join(f'{a:.4f}' for a in accs)
               + f" (mean {statistics.mean(accs):.4f}); train + eval {statistics.mean(secs):.1f} s mean")
    for b, ps in passed.items():
        summary += f"; {b:g}: " + (f"passed by all, mean {statistics.mean(p['seconds'] for p in ps):.1f} s"
                                   if all(ps) else f"passed by {sum(map(bool, ps))} of {len(ps)}")
    print(summary)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(config=cfg, device=str(device), device_name=name, torch=torch.__version__,
                           threads=torch.get_num_threads(), runs=runs), f, indent=1)
        print(f"wrote {args.json}")
    return runs


if __name__ == '__main__': main()
