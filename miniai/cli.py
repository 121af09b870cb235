"""`miniai train` (also `python -m miniai train`): the default Fashion-MNIST recipe from the command line.

The conv model with GeneralRelu and BatchNorm, AdamW, a one-cycle lr, batch size 1024, 5 epochs. Writes
`metrics.csv`, `loss.png`, `config.json` and the checkpoints `last.pt` and `best.pt` to `--out`; `--resume DIR`
continues a run from its last complete epoch. Under `torchrun --nproc_per_node N -m miniai train ...` it trains on N
processes (DistributedDataParallel, one GPU each, or gloo on CPU); rank 0 prints and writes the files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
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


_EXAMPLES = """\
examples:
  miniai train --limit 2000 --epochs 1          # a quick check on a subset of the data
  miniai train --epochs 3 --lr 0.03 --out runs/first
  torchrun --nproc_per_node 2 -m miniai train   # data-parallel, one process per GPU (or CPU with gloo)
"""

_OUTPUTS = """\
files written to --out:
  metrics.csv     one row per epoch and phase: epoch, phase, loss, accuracy, seconds
  loss.png        the training loss per batch and the eval loss per epoch
  config.json     the flags of the run (what --resume reads)
  last.pt         a checkpoint after every epoch (what --resume continues from)
  best.pt         the checkpoint with the best test accuracy
  interrupted.pt  written on Ctrl-C (the run exits with code 130)
"""


def build_parser() -> argparse.ArgumentParser:
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        """The epilog as written; "(default: X)" only where the help doesn't say it already and X is a value."""
        def _get_help_string(self, action):
            if '(default' in (action.help or '') or action.default in (None, False): return action.help
            return super()._get_help_string(action)

    p = argparse.ArgumentParser(prog='miniai', description=__doc__.split('\n')[0])
    sub = p.add_subparsers(dest='command', required=True)
    t = sub.add_parser('train', help="train the default recipe on Fashion-MNIST", formatter_class=Formatter,
                       description="Train the default recipe on Fashion-MNIST: the course's CNN, AdamW, one-cycle.",
                       epilog=_EXAMPLES + '\n' + _OUTPUTS)
    t.add_argument('--epochs', type=_positive(int), default=5, help="epochs to train")
    t.add_argument('--lr', type=_positive(float), default=6e-2, help="peak learning rate of the one-cycle schedule")
    t.add_argument('--bs', type=_positive(int), default=1024,
                   help="global batch size: under torchrun each of the N processes takes bs/N per step")
    t.add_argument('--device', default=None, help="cuda, mps or cpu (default: the first available); under torchrun "
                   "cuda (process i takes cuda:LOCAL_RANK) or cpu")
    t.add_argument('--seed', type=int, default=42, help="random seed")
    t.add_argument('--deterministic', action='store_true', help="ask torch for deterministic kernels")
    t.add_argument('--data', type=Path, default=None,
                   help="folder with the four Fashion-MNIST IDX .gz files (default: $MINIAI_DATA, then "
                        "/usr/share/datasets/fashion-mnist, then the Hugging Face hub)")
    t.add_argument('--out', type=Path, default=None, help="folder for the results (default: a new one under ./runs)")
    t.add_argument('--limit', type=_positive(int), default=None,
                   help="use only the first N training and N/6 test images (a quick check)")
    t.add_argument('--resume', type=Path, default=None, metavar='DIR',
                   help="continue the run in DIR from its last complete epoch (its saved flags are used)")
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


def _out_dir(args) -> Path:
    """The run's folder: made by rank 0 and told to the others (a default name holds rank 0's clock)."""
    from .distributed import broadcast_object, is_main_process
    res = None
    if is_main_process():
        try: res = _new_out_dir(args.out)
        except FileExistsError as e: res = e
    res = broadcast_object(res)
    if isinstance(res, Exception): raise res
    return res


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


def _resume_args(args):
    """The saved run's config, so a resumed run is the same run; the folder must hold last.pt."""
    run = args.resume
    if not (run / 'config.json').is_file() or not (run / 'last.pt').is_file():
        raise FileNotFoundError(f"--resume {run}: expected a run folder of `miniai train` holding config.json and "
                                "last.pt (written after each epoch)")
    saved = json.loads((run / 'config.json').read_text())
    for k in ('data', 'out'): saved[k] = Path(saved[k]) if saved.get(k) else None
    return argparse.Namespace(**{**saved, 'resume': run, 'out': run, 'device': args.device or saved['device']})


def build_learner(args, dls, out: Path, device):
    """The default recipe: conv model with GeneralRelu and BatchNorm, AdamW, cross entropy, and the run's callbacks."""
    import torch.nn.functional as F
    from torch import nn, optim
    from torcheval.metrics import MulticlassAccuracy

    from .activations import GeneralRelu
    from .callbacks import CSVLoggerCB, DeviceCB, MetricsCB, ProgressCB
    from .checkpoint import SaveModelCB, TerminateOnNaNCB
    from .conv import get_model
    from .distributed import DDPCB, is_distributed
    from .init import init_weights
    from .learner import TrainLearner

    model = get_model(partial(GeneralRelu, leak=0.1, sub=0.4), norm=nn.BatchNorm2d).apply(
        partial(init_weights, leaky=0.1))
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    cbs = [DeviceCB(device), metrics, ProgressCB(), CSVLoggerCB(out / 'metrics.csv', metrics),
           SaveModelCB(out, monitor='accuracy'), TerminateOnNaNCB()]
    if is_distributed(): cbs.append(DDPCB(device, seed=args.seed))
    return TrainLearner(model, dls, F.cross_entropy, lr=args.lr, cbs=cbs, opt_func=optim.AdamW)


def train(args) -> Path:
    """Run the recipe with parsed `args` (or resume the run in `args.resume`); returns the output folder."""
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')  # raised by torcheval's import
    import torch

    from .callbacks import MetricsCB, ProgressCB, def_device, set_seed
    from .datasets import get_dls
    from .distributed import distributed_dls, init_from_env, is_main_process

    if args.resume: args = _resume_args(args)
    world = int(os.environ.get('WORLD_SIZE', 1))  # set by torchrun
    if args.bs % world: raise ValueError(f"--bs {args.bs} (global) must be a multiple of the {world} processes")
    device = init_from_env(args.device) if world > 1 else torch.device(args.device or def_device)
    out = args.out if args.resume else _out_dir(args)
    set_seed(args.seed, deterministic=args.deterministic)
    dls = get_dls(args.bs // world, path=args.data, device=device, limit=args.limit)
    if world > 1: dls = distributed_dls(dls, seed=args.seed)
    if not args.resume and is_main_process():
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != 'resume'}
        (out / 'config.json').write_text(json.dumps({**config, 'device': str(device), 'world_size': world}, indent=2))
    learn = build_learner(args, dls, out, device)
    if args.resume:
        learn.load(out / 'last.pt')
        if is_main_process(): print(f"resuming {out} at epoch {learn.resume_epoch} of {args.epochs}")
    try: learn.fit_one_cycle(args.epochs, args.lr)
    except KeyboardInterrupt:
        learn.save(out / 'interrupted.pt')
        if is_main_process():
            print(f"interrupted: state saved to {out / 'interrupted.pt'}; `miniai train --resume {out}` continues "
                  "from the last complete epoch", file=sys.stderr)
        raise
    if not is_main_process(): return out
    metrics = next(cb for cb in learn.cbs if isinstance(cb, MetricsCB))
    progress = next(cb for cb in learn.cbs if isinstance(cb, ProgressCB))
    _loss_png(progress, metrics, out / 'loss.png', len(dls.train))
    final = [r for r in metrics.history if r['phase'] == 'eval'][-1]
    print(f"test accuracy {final['accuracy']:.4f}; results in {out}")
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError, NonFiniteLossError
    from .distributed import destroy
    try: train(args)
    except KeyboardInterrupt: return 130
    except (FileExistsError, FileNotFoundError, ValueError, NonFiniteLossError, CheckpointError) as e:
        print(f"miniai: error: {e}", file=sys.stderr)
        return 1
    finally: destroy()  # the process group train joined under torchrun, if any
    return 0


if __name__ == '__main__':
    sys.exit(main())
