"""`miniai train` (also `python -m miniai train`): the seeds' Fashion-MNIST recipe from the command line.

The conv model with GeneralRelu and BatchNorm, AdamW, a one-cycle lr, batch size 1024, 5 epochs. Writes
`metrics.csv`, `loss.png` and `config.json` to `--out`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

__all__ = ['main', 'build_parser', 'train']


def _positive(kind):
    def parse(s):
        try: v = kind(s)
        except ValueError: raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {s!r}")
        if v <= 0: raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='miniai', description=__doc__.split('\n')[0])
    sub = p.add_subparsers(dest='command', required=True)
    t = sub.add_parser('train', help="train the seed recipe on Fashion-MNIST",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument('--epochs', type=_positive(int), default=5, help="epochs to train")
    t.add_argument('--lr', type=_positive(float), default=6e-2, help="peak learning rate of the one-cycle schedule")
    t.add_argument('--bs', type=_positive(int), default=1024, help="batch size")
    t.add_argument('--device', default=None, help="cuda, mps or cpu (default: the first available)")
    t.add_argument('--seed', type=int, default=42, help="random seed")
    t.add_argument('--deterministic', action='store_true', help="ask torch for deterministic kernels")
    t.add_argument('--data', type=Path, default=None,
                   help="folder with the four Fashion-MNIST IDX .gz files (default: $MINIAI_DATA, then "
                        "/usr/share/datasets/fashion-mnist, then the Hugging Face hub)")
    t.add_argument('--out', type=Path, default=None, help="folder for the results (default: a new one under ./runs)")
    t.add_argument('--limit', type=_positive(int), default=None,
                   help="use only the first N training and N/6 test images (a quick check)")
    return p


def _new_out_dir(out: Path | None) -> Path:
    if out is None:
        base = Path('runs') / time.strftime('%Y%m%d-%H%M%S')
        out, i = base, 1
        while out.exists(): out, i = base.with_name(f'{base.name}-{i}'), i + 1
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} already holds files; choose a new folder so no earlier run is "
                              "overwritten")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _loss_png(progress, metrics, path: Path, n_batches: int):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(progress.losses) + 1), progress.losses, label='train (per batch)')
    ev = [r for r in metrics.history if r['phase'] == 'eval']
    ax.plot([(r['epoch'] + 1) * n_batches for r in ev], [r['loss'] for r in ev], 'o-', label='eval (per epoch)')
    ax.set(xlabel='batch', ylabel='loss', title='miniai train')
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches='tight')
    plt.close(fig)


def train(args) -> Path:
    """Run the recipe with parsed `args`; returns the output folder."""
    import torch
    import torch.nn.functional as F
    from torch import nn, optim
    from torch.optim import lr_scheduler
    from torcheval.metrics import MulticlassAccuracy

    from .activations import GeneralRelu
    from .callbacks import CSVLoggerCB, DeviceCB, MetricsCB, ProgressCB, def_device, set_seed
    from .conv import get_model
    from .datasets import get_dls
    from .init import init_weights
    from .learner import TrainLearner
    from .sgd import BatchSchedCB

    out = _new_out_dir(args.out)
    device = torch.device(args.device or def_device)
    set_seed(args.seed, deterministic=args.deterministic)
    dls = get_dls(args.bs, path=args.data, device=device, limit=args.limit)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (out / 'config.json').write_text(json.dumps({**config, 'device': str(device)}, indent=2))

    model = get_model(partial(GeneralRelu, leak=0.1, sub=0.4), norm=nn.BatchNorm2d).apply(
        partial(init_weights, leaky=0.1))
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    progress = ProgressCB()
    sched = partial(lr_scheduler.OneCycleLR, max_lr=args.lr, total_steps=args.epochs * len(dls.train))
    cbs = [DeviceCB(device), metrics, progress, CSVLoggerCB(out / 'metrics.csv', metrics), BatchSchedCB(sched)]
    learn = TrainLearner(model, dls, F.cross_entropy, lr=args.lr, cbs=cbs, opt_func=optim.AdamW)
    learn.fit(args.epochs)
    _loss_png(progress, metrics, out / 'loss.png', len(dls.train))
    final = [r for r in metrics.history if r['phase'] == 'eval'][-1]
    print(f"test accuracy {final['accuracy']:.4f}; results in {out}")
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try: train(args)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"miniai: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
