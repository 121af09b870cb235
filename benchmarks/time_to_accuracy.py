"""Seconds of training + evaluation to 0.90, 0.93 and 0.95 Fashion-MNIST test accuracy, for a named recipe.

`--recipe fast` is the quickest route to 0.93 found on a 2-core CPU, in one of two versions chosen by the hardware
found (and said in the first line of output): `fast-bf16` on CUDA and on a CPU with bfloat16 units (AMX or
AVX512-BF16), `fast-fp32` on other CPUs, where bfloat16 arithmetic is slow. `fast-fp32` trains a cheaper net (last
width 96, `LeakyReLU` in place, no norm after the stem) in float32 and channels_last for six epochs, and after the
first epoch only on the hardest half of the training images (`KeepHardCB`). `--recipe best` aims at 0.95;
`--recipe resnet` is the course's 4.9M-parameter ResNet for 5 epochs (the earlier record). Every flag a recipe sets
can be overridden (`--recipe fast --epochs 8`); `--holdout N` evaluates on the last N training images instead of the
test set, for choosing settings. The pieces are miniai's: `get_resnet` or a small net built from `conv` and
`ResBlock`, kaiming init, on-device augmentation (random flips, `--padding` for random crops), AdamW under
`fit_one_cycle`, `EMACB` (an exponential moving average of the weights, which the evaluation uses), flip TTA,
bfloat16 autocast and channels_last (`--amp --channels-last`: on by default on CUDA and on a CPU with bfloat16
units, AMX or AVX512-BF16, the only CPUs where they pay), `torch.compile` (`--compile`), the in-memory loader (uint8
on the device, normalised per batch; the short last training batch is dropped so shapes stay fixed).

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
import math
import statistics
import time
from functools import partial
from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from common import PhaseTimerCB, cpu_has_bf16, cpu_name, sync
from miniai.accel import ChannelsLastCB, CompileCB, MixedPrecisionCB
from miniai.activations import GeneralRelu
from miniai.augment import InputTransformCB, default_tfms, hflip
from miniai.callbacks import def_device, set_seed
from miniai.conv import conv
from miniai.core import Callback, CancelEpochException
from miniai.datasets import DataLoaders, InMemoryLoader, fashion_mnist_tensors, get_dls, normalise_images
from miniai.ema import EMACB
from miniai.init import init_weights
from miniai.learner import DeviceCB, TrainLearner
from miniai.resnet import ResBlock, get_resnet
from miniai.sgd import OneCycleSchedCB

BARS = (0.90, 0.93, 0.95)

# What each recipe sets; a flag a recipe leaves out (amp, channels_last) takes its device default: on for CUDA and a
# CPU with bfloat16 units. `--recipe fast` is `fast-bf16` or `fast-fp32`, by the hardware found (`resolve_recipe`).
_FAST = dict(arch='net', nfs=[16, 32, 64, 128], epochs=5, bs=256, lr=1e-2, wd=1e-2, padding=0, label_smoothing=0.1,
             ema=0.99, tta=True, eval='end')
RECIPES = {
    'resnet': dict(arch='resnet', nfs=[16, 32, 64, 128, 256, 512], epochs=5, bs=256, lr=1e-2, wd=1e-2, padding=0,
                   label_smoothing=0., ema=0., tta=False, eval='epoch'),
    'fast-bf16': dict(_FAST, amp=True, channels_last=True),
    # float32 on a CPU without bfloat16 units: a cheaper net (last width 96, no norm after the stem, LeakyReLU in
    # place), after the first epoch only the hardest half of the images (KeepHardCB) for five more epochs,
    # channels_last for the convolutions
    'fast-fp32': dict(_FAST, nfs=[16, 32, 64, 96], act='leaky', stem_norm=False, epochs=6, keep=0.5, amp=False,
                      channels_last=True),
    'best': dict(arch='resnet', nfs=[16, 32, 64, 128, 256, 512], epochs=25, bs=256, lr=1e-2, wd=1e-2, padding=1,
                 label_smoothing=0.1, ema=0.999, tta=True, eval='end'),
}
FP32_SUMMARY = ('float32 and channels_last, widths 16-32-64-96 with LeakyReLU and no stem norm, 6 epochs, the '
                'hardest half of the images after the first')


def resolve_recipe(name: str, device_type: str) -> tuple[str, str | None]:
    """The recipe that `name` stands for on `device_type`, and a line saying why (None for a recipe named in full).

    `fast` is `fast-bf16` where bfloat16 arithmetic is fast (CUDA, or a CPU with AMX or AVX512-BF16 units) and
    `fast-fp32` elsewhere: without those units bfloat16 autocast runs slower than float32, and a recipe tuned for
    bfloat16 wastes float32 time on a larger net than it can afford.
    """
    if name != 'fast': return name, None
    if device_type == 'cuda': return 'fast-bf16', "CUDA: the bfloat16 route (--recipe fast-bf16)"
    if device_type == 'cpu' and cpu_has_bf16():
        return 'fast-bf16', "bfloat16 units on this CPU (AMX or AVX512-BF16): the bfloat16 route (--recipe fast-bf16)"
    return 'fast-fp32', (f"no bfloat16 units on this {device_type.upper()} (AMX or AVX512-BF16): the float32 route "
                         f"(--recipe fast-fp32: {FP32_SUMMARY})")


class Limited:
    """The first `n` batches of loader `dl` (for the warm-up)."""
    def __init__(self, dl, n): self.dl, self.n = dl, n
    def __len__(self): return min(self.n, len(self.dl))
    def __iter__(self): return islice(iter(self.dl), self.n)


def make_dls(bs, device, limit=0, holdout=0):
    """Training and evaluation loaders over the in-memory images: the test set is evaluated, or with `holdout`
    the last `holdout` training images (which are then not trained on), for choosing settings without looking at
    the test set. `limit` keeps only the first `limit` training and test images."""
    if not limit and not holdout: return get_dls(bs, device=device, drop_last=True)
    t = {k: tuple(x[:limit or None].to(device) for x in v) for k, v in fashion_mnist_tensors().items()}
    if holdout:
        n = len(t['train'][0])
        if not 0 < holdout < n:
            raise ValueError(f"--holdout must be between 1 and {n - 1} (the training images kept), got {holdout}")
        t = dict(train=tuple(x[:n - holdout] for x in t['train']), test=tuple(x[n - holdout:] for x in t['train']))
    def norm(b): return (normalise_images(b[0]), b[1])
    train = InMemoryLoader(t['train'], bs, shuffle=True, drop_last=len(t['train'][0]) > bs, batch_tfm=norm)
    return DataLoaders(train, InMemoryLoader(t['test'], bs, batch_tfm=norm))


def small_net(act, nfs, norm=nn.BatchNorm2d, stem_stride=1, stem_norm=True):
    """A 3×3 stem (at full resolution; with `stem_stride=2` at half, followed by a `ResBlock`), then per further
    width a stride-2 conv followed by a `ResBlock(w, w)`. `stem_norm=False` leaves out the stem's norm (its conv
    gets a bias): at full resolution that norm costs more than any other, and the next conv's norm follows anyway.

    Unlike `get_resnet`, whose blocks run their first conv before downsampling, every conv after the stem works
    at the reduced resolution, which makes it about 4× cheaper per image at the same widths.
    """
    layers, ni = [conv(1, nfs[0], ks=3, stride=stem_stride, act=act, norm=norm if stem_norm else None)], nfs[0]
    if stem_stride > 1: layers.append(ResBlock(ni, ni, act=act, norm=norm))
    for w in nfs[1:]:
        layers += [conv(ni, w, ks=3, stride=2, act=act, norm=norm), ResBlock(w, w, act=act, norm=norm)]
        ni = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ni, 10, bias=False),
                         nn.BatchNorm1d(10))


# 'leaky' may work in place: in these nets every activation follows a conv, a BatchNorm or a residual add, and none
# of their backward passes reads its output (GeneralRelu's shift after the leaky ReLU is what rules it out there)
ACTS = {'general': partial(GeneralRelu, leak=0.1, sub=0.4), 'leaky': partial(nn.LeakyReLU, 0.1, inplace=True)}
# what the net is when neither the recipe nor a flag says otherwise
NET_DEFAULTS = dict(act='general', stem_norm=True)


def make_model(arch='resnet', nfs=(16, 32, 64, 128, 256, 512), act=NET_DEFAULTS['act'],
               stem_norm=NET_DEFAULTS['stem_norm']):
    """`arch` with activation `act`: 'general' is the course's `GeneralRelu(leak=0.1, sub=0.4)`, 'leaky' the same
    slope without the shift, in place (one pass over each activation map instead of two, and no new tensor)."""
    act = ACTS[act]
    if arch == 'resnet': model = get_resnet(act, nfs=nfs, norm=nn.BatchNorm2d)
    else: model = small_net(act, nfs, stem_stride=2 if arch == 'net-s2' else 1, stem_norm=stem_norm)
    return model.apply(partial(init_weights, leaky=0.1, linear=True))


class KeepHardCB(Callback):
    """After the first epoch, trains only on the fraction `keep` of the training images that were hardest in it.

    In the first epoch each batch's images are ranked by their loss (on the weights of that moment, so images seen
    early and late are ranked fairly) and the top `keep` of each batch is kept; the later epochs shuffle only those
    (Paul, Ganguli and Dziugaite, "Deep Learning on a Data Diet", rank images by an early-training error score the
    same way). Most Fashion-MNIST images (trousers, bags, sandals) are learnt in one epoch; training goes on
    where the classes are confused. `loader` is the training loader to fit with: it is `train`'s images with their
    indices, so the ranking knows which images a batch held; `steps(n_epochs)` is the fit's number of steps.
    """
    def __init__(self, keep: float, train: InMemoryLoader):
        if not 0 < keep <= 1: raise ValueError(f"keep must be a fraction in (0, 1], got {keep}")
        self.keep, self.train, self.batch_idx, self.hard, self.kept = keep, train, None, None, None
        x = train.xs[0]
        self.loader = InMemoryLoader(train.xs + (torch.arange(len(x), device=x.device),), train.batch_size,
                                     shuffle=True, drop_last=train.drop_last, batch_tfm=self._note_indices)

    def _note_indices(self, b):
        self.batch_idx = b[-1]
        return self.train.batch_tfm(b[:-1]) if self.train.batch_tfm else b[:-1]

    def _per_batch(self): return math.ceil(self.keep * self.train.batch_size)

    def steps(self, n_epochs: int) -> int:
        n_kept = len(self.loader) * self._per_batch()
        later = n_kept // self.train.batch_size if self.train.drop_last else math.ceil(n_kept / self.train.batch_size)
        return len(self.loader) + (n_epochs - 1) * later

    def before_fit(self, learn):
        x = self.train.xs[0]
        self.hard, self.kept = torch.zeros(len(x), dtype=torch.bool, device=x.device), None

    def after_loss(self, learn):
        if not learn.training or learn.epoch > 0: return
        loss = F.cross_entropy(learn.preds.detach().float(), learn.batch[1], reduction='none')
        self.hard[self.batch_idx[loss.topk(min(self._per_batch(), len(loss))).indices]] = True

    def before_epoch(self, learn):
        if not learn.training or learn.epoch == 0: return
        if self.kept is None:
            rows = self.hard.nonzero().squeeze(1)
            self.kept = InMemoryLoader(tuple(x[rows] for x in self.train.xs), self.train.batch_size, shuffle=True,
                                       drop_last=self.train.drop_last, batch_tfm=self.train.batch_tfm)
        learn.dl = self.kept


class OneCycleStepsCB(OneCycleSchedCB):
    """`OneCycleSchedCB` over `steps` training steps in all: for a fit whose epochs differ in length."""
    def __init__(self, steps: int, lr_max):
        super().__init__(lr_max)
        self.steps = steps

    def before_fit(self, learn):
        super().before_fit(learn)
        self.total = self.steps


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


def make_learner(args, device, dls):
    """The learner of a run: `args`' model, loss, AdamW and callbacks (augmentation, precision, layout, average,
    hard-image selection)."""
    aug = [InputTransformCB(default_tfms(padding=args.padding))] if args.aug else []
    cbs = [DeviceCB(device)] + aug + accel_cbs(args) + ([EMACB(args.ema)] if args.ema else [])
    if args.keep < 1:
        cbs.append(KeepHardCB(args.keep, dls.train))
        dls = DataLoaders(cbs[-1].loader, dls.valid)
    loss = partial(F.cross_entropy, label_smoothing=args.label_smoothing)
    return TrainLearner(make_model(args.arch, args.nfs, args.act, args.stem_norm), dls, loss, lr=args.lr, cbs=cbs,
                        opt_func=partial(torch.optim.AdamW, weight_decay=args.wd))


def run(args, seed, device, dls):
    """One timed fit with `seed`: a dict with the config, per-epoch rows and the first time past each bar."""
    set_seed(seed)
    timer, ev = PhaseTimerCB(device), EvalCB(args.eval, args.tta, amp=args.amp)
    learn = make_learner(args, device, dls)
    warm = warm_up(learn, learn.dls, device, seed)
    cbs = [ev, timer, ProgressLine(timer, ev)]
    hard = next((c for c in learn.cbs if isinstance(c, KeepHardCB)), None)
    if hard: learn.fit(args.epochs, cbs=[OneCycleStepsCB(hard.steps(args.epochs), args.lr)] + cbs)
    else: learn.fit_one_cycle(args.epochs, args.lr, cbs=cbs)
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


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--recipe', choices=['fast'] + sorted(RECIPES), default='fast',
                    help="the defaults of the flags below; 'fast' is fast-bf16 or fast-fp32, by the hardware found")
    ap.add_argument('--arch', choices=['resnet', 'net', 'net-s2'],
                    help="'resnet': get_resnet; 'net': the cheaper small net; 'net-s2': the same, strided "
                         "from the start")
    ap.add_argument('--nfs', type=int, nargs='+', help='widths of the stages')
    ap.add_argument('--act', choices=sorted(ACTS),
                    help="'general': GeneralRelu(leak=0.1, sub=0.4); 'leaky': LeakyReLU(0.1), in place")
    ap.add_argument('--stem-norm', action=argparse.BooleanOptionalAction,
                    help="a BatchNorm after the small net's first conv (default: on; off in fast-fp32)")
    ap.add_argument('--epochs', type=int)
    ap.add_argument('--bs', type=int)
    ap.add_argument('--lr', type=float, help='peak lr of the one-cycle schedule')
    ap.add_argument('--wd', type=float, help='AdamW weight decay')
    ap.add_argument('--padding', type=int, help='random-crop padding (0: no crop)')
    ap.add_argument('--aug', action=argparse.BooleanOptionalAction, default=True, help='random flips (and crops)')
    ap.add_argument('--keep', type=float,
                    help='after the first epoch, train only on this fraction of the training images, the hardest '
                         'in it (1: all)')
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
    ap.add_argument('--holdout', type=int, default=0,
                    help='evaluate on the last N training images (not trained on) instead of the test set: for '
                         'choosing settings')
    ap.add_argument('--targets', type=float, nargs='+', default=list(BARS), help='accuracy bars')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs='+', help='several runs, one per random seed (overrides --seed)')
    ap.add_argument('--json', help='write the config and every run to this file')
    args = ap.parse_args(argv)
    dev = torch.device(args.device).type
    args.recipe, args.chosen = resolve_recipe(args.recipe, dev)
    stem_norm_given = args.stem_norm is not None
    for k, v in {**dict(keep=1.), **NET_DEFAULTS, **RECIPES[args.recipe]}.items():
        if getattr(args, k) is None: setattr(args, k, v)
    fast_bf16 = dev == 'cuda' or (dev == 'cpu' and cpu_has_bf16())
    if args.amp is None: args.amp = fast_bf16
    if args.channels_last is None: args.channels_last = fast_bf16
    if stem_norm_given and args.arch == 'resnet':
        ap.error("--stem-norm/--no-stem-norm is for the small nets (--arch net or net-s2): the ResNet's first block "
                 "keeps its norms")
    if args.epochs < 1: ap.error(f"--epochs must be >= 1, got {args.epochs}")
    if not 0 <= args.ema < 1: ap.error(f"--ema must be a decay in [0, 1), got {args.ema}")
    if not 0 < args.keep <= 1: ap.error(f"--keep must be a fraction in (0, 1], got {args.keep}")
    if args.holdout < 0: ap.error(f"--holdout must be a number of training images >= 0, got {args.holdout}")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True                 # fixed shapes: autotune each conv once
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dls = make_dls(args.bs, device, args.limit, args.holdout)
    if args.chosen: print(args.chosen, flush=True)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name()
    cfg = {k: v for k, v in vars(args).items() if k not in ("seeds", 'json', 'chosen')}
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
