"""`miniai train` (also `python -m miniai train`): the seeds' Fashion-MNIST recipe from the command line.

The conv model with GeneralRelu and BatchNorm, AdamW, a one-cycle lr, batch size 1024, 5 epochs. Writes
`metrics.csv`, `loss.png`, `config.json` and the checkpoints `last.pt` and `best.pt` to `--out`; `--resume DIR`
continues a run from its last complete epoch. Under `torchrun --nproc_per_node N -m miniai train ...` it trains on N
processes (DistributedDataParallel, one GPU each, or gloo on CPU); rank 0 prints and writes the files.
"""
from __future__ import annotations

import argparse
import errno
import io
import itertools
import json
import math
import os
import sys
import time
import warnings
from datetime import timedelta
from functools import partial
from pathlib import Path

from .errors import MiniaiError, UsageError
from .files import atomic_write

__all__ = ['main', 'build_parser', 'train']


def _positive(kind):
    def parse(s):
        try: v = kind(s)
        except ValueError: raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {s!r}")
        if not math.isfinite(v): raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
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
    t.add_argument('--dist-timeout', type=_positive(float), default=DIST_TIMEOUT, metavar='SECONDS',
                   help="under torchrun, how long a process waits for the others before the run stops with an error "
                        "(a stalled or dead process would otherwise block the rest forever)")
    return p


DIST_TIMEOUT = 600.  # seconds; torch's own default (30 min for gloo) leaves a cluster idle for long


def _claim(out: Path) -> bool:
    """Create `out`/config.json exclusively: of two runs starting in `out` at the same instant, one gets it."""
    try: os.close(os.open(out / 'config.json', os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError: return False
    return True


def _new_out_dir(out: Path | None) -> tuple[Path, bool]:
    """A new run folder, claimed for this run (its config.json exists), and whether this call created the folder.

    The default name `runs/<time>` gets `-1`, `-2`, ... when taken; an explicit `out` must be empty (or missing).
    """
    if out is None:
        base = Path('runs') / time.strftime('%Y%m%d-%H%M%S')
        base.parent.mkdir(parents=True, exist_ok=True)
        for i in itertools.count():
            cand = base.with_name(f'{base.name}-{i}') if i else base
            try: cand.mkdir()             # exclusive: runs starting at the same instant each get their own name
            except FileExistsError: continue
            _claim(cand)
            return cand, True
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder: give the path of a new folder (it is created)")
    created = not out.exists()
    try: out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"--out {out}: a part of this path is a file, not a folder; give the path of a new "
                         "folder") from None
    if any(out.iterdir()):
        raise UsageError(f"--out {out} already holds files; choose a new folder so no earlier run is overwritten")
    if not _claim(out):
        raise UsageError(f"--out {out} was just taken by another run starting at the same time; choose another folder")
    return out, created


def _out_dir(args) -> tuple[Path, bool]:
    """The run's folder: made by rank 0 and told to the others (a default name holds rank 0's clock)."""
    from .distributed import broadcast_object, is_main_process
    res = None
    if is_main_process():
        try: res = _new_out_dir(args.out)
        except MiniaiError as e: res = e
    res = broadcast_object(res)
    if isinstance(res, Exception): raise res
    return res


def _remove_if_unused(out: Path, created: bool):
    """After a run failed before its first epoch: remove what it wrote (config.json) and, if it made the folder and
    nothing else is in it, the folder; anything else in it stays."""
    if any(p.name != 'config.json' for p in out.iterdir()): return
    (out / 'config.json').unlink(missing_ok=True)
    if created: out.rmdir()


def _check_device(name: str | None):
    """The `--device` as a torch.device, refused with a one-line reason when unknown or not on this machine."""
    import torch

    from .callbacks import def_device
    try: dev = torch.device(name or def_device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    avail = ['cpu'] + (['cuda'] if torch.cuda.is_available() else []) + \
        (['mps'] if torch.backends.mps.is_available() else [])
    if dev.type not in avail:
        why = 'is not available on this machine' if dev.type in ('cuda', 'mps') else 'is not supported by miniai train'
        raise UsageError(f"--device {name}: {dev.type} {why}; available here: {', '.join(avail)} (leave --device out "
                         "to take the first of them)")
    if dev.type == 'cuda' and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1}")
    return dev


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
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=100, bbox_inches='tight')
    plt.close(fig)
    atomic_write(path, buf.getvalue())         # replaces a symlink planted at `path` instead of following it


_SAVED = {'epochs': int, 'lr': float, 'bs': int, 'seed': int}   # config.json keys a resume cannot do without


def _resume_args(args):
    """The saved run's config, so a resumed run is the same run; the folder must hold last.pt."""
    run = args.resume
    if not (run / 'config.json').is_file() or not (run / 'last.pt').is_file():
        raise UsageError(f"--resume {run}: expected a run folder of `miniai train` holding config.json and last.pt "
                         "(written after each epoch)")
    cfg = run / 'config.json'
    try: saved = json.loads(cfg.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"--resume {run}: {cfg} is not valid JSON ({e}); restore it, or start a new run") from None
    if not isinstance(saved, dict): raise UsageError(f"--resume {run}: {cfg} must hold an object of the run's flags")
    missing = [k for k in _SAVED if k not in saved]
    wrong = [k for k, kind in _SAVED.items() if k in saved and (isinstance(saved[k], bool) or not
             isinstance(saved[k], (int, float) if kind is float else int) or not 0 < saved[k] < math.inf)]
    if missing or wrong:
        raise UsageError(f"--resume {run}: {cfg} " + (f"lacks the key(s) {', '.join(missing)}" if missing else
                         f"has invalid value(s) for {', '.join(f'{k}={saved[k]!r}' for k in wrong)}") +
                         "; it must hold the flags of the run that wrote it: restore it, or start a new run")
    defaults = vars(build_parser().parse_args(['train']))  # keys added to miniai after the run was made
    saved = {**defaults, **saved}
    for k in ('data', 'out'): saved[k] = Path(saved[k]) if saved.get(k) else None
    return argparse.Namespace(**{**saved, 'resume': run, 'out': run, 'device': args.device or saved['device']})


def _rewrite_csv(path: Path, history: list[dict]):
    """metrics.csv rewritten from the checkpoint's rows, so that a resumed run's file holds each row once."""
    import csv
    buf = io.StringIO()
    if history:
        cols = ['epoch', 'phase', 'loss'] + [k for k in history[0] if k not in ('epoch', 'phase', 'loss', 'seconds')]
        w = csv.DictWriter(buf, fieldnames=cols + ['seconds'], lineterminator='\r\n')
        w.writeheader()
        w.writerows(history)
    atomic_write(path, buf.getvalue())


def build_learner(args, dls, out: Path, device):
    """The seed recipe: conv model with GeneralRelu and BatchNorm, AdamW, cross entropy, and the run's callbacks."""
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

    from .callbacks import def_device
    from .distributed import init_from_env, is_main_process

    if args.resume: args = _resume_args(args)
    world = int(os.environ.get('WORLD_SIZE', 1))  # set by torchrun
    if args.bs % world: raise UsageError(f"--bs {args.bs} (global) must be a multiple of the {world} processes")
    _check_device(args.device)
    timeout = timedelta(seconds=getattr(args, 'dist_timeout', DIST_TIMEOUT))
    device = init_from_env(args.device, timeout=timeout) if world > 1 else torch.device(args.device or def_device)
    out, created = (args.out, False) if args.resume else _out_dir(args)
    try: return _run(args, out, device, world)
    except BaseException:
        if not args.resume and is_main_process(): _remove_if_unused(out, created)
        raise


def _run(args, out: Path, device, world: int) -> Path:
    from .callbacks import MetricsCB, ProgressCB, set_seed
    from .checkpoint import SaveModelCB, save_checkpoint
    from .datasets import get_dls
    from .distributed import distributed_dls, is_main_process

    set_seed(args.seed, deterministic=args.deterministic)
    dls = get_dls(args.bs // world, path=args.data, device=device, limit=args.limit)
    if world > 1: dls = distributed_dls(dls, seed=args.seed)
    if not args.resume and is_main_process():
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != 'resume'}
        atomic_write(out / 'config.json', json.dumps({**config, 'device': str(device), 'world_size': world},
                                                     indent=2))
    learn = build_learner(args, dls, out, device)
    metrics = next(cb for cb in learn.cbs if isinstance(cb, MetricsCB))
    if args.resume:
        learn.load(out / 'last.pt')
        if learn.resume_epoch >= args.epochs:
            raise UsageError(f"--resume {out}: the run already trained all its {args.epochs} epochs; start a new run")
        if is_main_process():
            _rewrite_csv(out / 'metrics.csv', metrics.history)   # drops rows written after last.pt was saved
            print(f"resuming {out} at epoch {learn.resume_epoch} of {args.epochs}")
    try: learn.fit_one_cycle(args.epochs, args.lr)
    except KeyboardInterrupt:
        saver = next(cb for cb in learn.cbs if isinstance(cb, SaveModelCB))
        done = saver.epoch_done == learn.epoch
        save_checkpoint(learn, out / 'interrupted.pt', epoch_done=done)
        if is_main_process():
            part = '' if done else (f" (inside epoch {learn.epoch}: loading it trains epoch {learn.epoch} again from "
                                    "its start)")
            print(f"interrupted: state saved to {out / 'interrupted.pt'}{part}; `miniai train --resume {out}` "
                  "continues from the last complete epoch", file=sys.stderr)
        raise
    if not is_main_process(): return out
    progress = next(cb for cb in learn.cbs if isinstance(cb, ProgressCB))
    _loss_png(progress, metrics, out / 'loss.png', len(dls.train))
    final = [r for r in metrics.history if r['phase'] == 'eval'][-1]
    print(f"test accuracy {final['accuracy']:.4f}; results in {out}")
    return out


# errors of the machine rather than of miniai: one line, like MiniaiError (other OSErrors keep their traceback)
_MACHINE = {errno.ENOSPC: 'no space left on device', errno.EDQUOT: 'disk quota exceeded',
            errno.EROFS: 'read-only file system', errno.EACCES: 'permission denied'}


def _lost_peer(e: BaseException) -> bool:
    """Whether `e` is a collective that timed out or lost a process (torch raises RuntimeErrors for both)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()): return False
    msg = str(e).lower()
    return isinstance(e, getattr(dist, 'DistError', ())) or (isinstance(e, RuntimeError) and any(
        w in msg for w in ('timed out', 'timeout', 'connection closed by peer', 'connection reset by peer')))


def _one_line(e: BaseException, args) -> str | None:
    """The `miniai: error:` line for `e`, or None for a bug, which keeps its traceback."""
    if isinstance(e, MiniaiError): return str(e)
    if _lost_peer(e):
        from .distributed import rank
        return (f"process {rank()} waited more than --dist-timeout {getattr(args, 'dist_timeout', DIST_TIMEOUT):g} s "
                "for the other processes, or lost one: a process stalled or died (see its output). The run "
                "stopped; once the cause is fixed, `miniai train --resume DIR` continues from the last complete "
                f"epoch, or raise --dist-timeout if a step really takes that long ({str(e).splitlines()[0][:120]})")
    if isinstance(e, FileNotFoundError): return str(e)   # a missing data folder or file named on the command line
    if isinstance(e, OSError) and e.errno in _MACHINE:
        return f"{_MACHINE[e.errno]}: could not write {e.filename or 'a file'}; free some space or choose another --out"
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .distributed import destroy
    try: train(args)
    except KeyboardInterrupt: return 130
    except Exception as e:
        msg = _one_line(e, args)
        if msg is None: raise
        print(f"miniai: error: {msg}", file=sys.stderr)
        return 1
    finally: destroy()  # the process group train joined under torchrun, if any
    return 0


if __name__ == '__main__':
    sys.exit(main())
