"""`miniai train` (also `python -m miniai train`): the default Fashion-MNIST recipe from the command line.

The conv model with GeneralRelu and BatchNorm, AdamW, a one-cycle lr, batch size 1024, 5 epochs. Writes to `--out`
the files listed by `miniai train --help` (metrics, plots, checkpoints, the exported model); `--resume DIR`
continues a run from its last complete epoch (with a larger `--epochs`, extends it). Under
`torchrun --nproc_per_node N -m miniai train ...` it trains on N processes (DistributedDataParallel, one GPU each,
or gloo on CPU); rank 0 prints and writes the files. `miniai predict RUN_DIR IMAGE...` classifies image files with
a run's best model (`miniai.predict_cli`).
"""
from __future__ import annotations

import argparse
import errno
import importlib.util
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

__all__ = ['main', 'build_parser', 'train', 'recipe_model']

def _positive(kind):
    def parse(s):
        try: v = kind(s)
        except ValueError: raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {s!r}")
        if not math.isfinite(v): raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
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
  config.json     the flags of the run (what --resume reads)
  metrics.csv     one row per epoch and phase: epoch, phase, loss, accuracy, lr, seconds
  training.png    three panels: loss, accuracy and learning rate
  confusion.png   the test set's confusion matrix, with the best epoch's weights
  last.pt         a checkpoint after every epoch (what --resume continues from), with last.pt.sha256
  best.pt         the checkpoint with the best test accuracy
  model.pt        the best weights, class names and preprocessing, for `miniai predict RUN_DIR IMAGE...`
                  and miniai.inference.load_learner (plain data: torch.load(weights_only=True) reads it)
  interrupted.pt  written on Ctrl-C (the run exits with code 130)
  tensorboard/    event files, with --tensorboard
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
    t.add_argument('--epochs', type=_positive(int), default=None,
                   help="epochs to train (default: 5); with --resume, a number larger than the run's extends it")
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
                   help="continue the run in DIR from its last complete epoch (its saved flags are used, except "
                        "--epochs and --device)")
    t.add_argument('--dist-timeout', type=_positive(float), default=DIST_TIMEOUT, metavar='SECONDS',
                   help="under torchrun, how long a process waits for the others before the run stops with an error "
                        "(a stalled or dead process would otherwise block the rest forever)")
    _add_callback_flags(t)
    from .predict_cli import add_predict_parser
    add_predict_parser(sub)
    return p


def _add_callback_flags(t):
    t.add_argument('--early-stop', type=_positive(int), default=None, metavar='PATIENCE',
                   help="stop when the test loss has not improved for PATIENCE epochs "
                        "(miniai.stopping.EarlyStoppingCB)")
    t.add_argument('--clip', type=_positive(float), default=None, metavar='MAX_NORM',
                   help="clip the gradients' total norm to MAX_NORM (miniai.gradients.GradientClipCB)")
    t.add_argument('--accumulate', type=_positive(int), default=1, metavar='N',
                   help="step the optimizer every N batches, on their summed gradients "
                        "(miniai.gradients.GradientAccumulationCB)")
    t.add_argument('--tensorboard', action='store_true',
                   help="also log to OUT/tensorboard (miniai.tensorboard.TensorBoardCB; "
                        "pip install 'miniai-learner[tensorboard]')")


def _build_callbacks(args, out: Path) -> list:
    """The optional callbacks the flags ask for, imported only when asked for."""
    cbs = []
    if args.early_stop:
        from .stopping import EarlyStoppingCB
        cbs.append(EarlyStoppingCB(patience=args.early_stop))
    if args.clip:
        from .gradients import GradientClipCB
        cbs.append(GradientClipCB(args.clip))
    if args.accumulate > 1:
        from .gradients import GradientAccumulationCB
        cbs.append(GradientAccumulationCB(args.accumulate))
    if args.tensorboard:
        if importlib.util.find_spec('tensorboard') is None:   # say so now, not after the data has loaded
            raise UsageError("--tensorboard needs the tensorboard package: pip install 'miniai-learner[tensorboard]' "
                              "(or pip install tensorboard)")
        from .tensorboard import TensorBoardCB
        cbs.append(TensorBoardCB(out / 'tensorboard'))
    return cbs


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


def _write_config(args, out: Path, device, world: int):
    """config.json: the run's flags, read back by --resume."""
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != 'resume'}
    atomic_write(out / 'config.json', json.dumps({**config, 'device': str(device), 'world_size': world}, indent=2))


def _write_plots(learn, out: Path, n_batches: int, lr_first_batch: int):
    """training.png from the metrics history, the per-batch losses (the whole run's: ProgressCB's are checkpointed)
    and the lrs of this fit (from batch `lr_first_batch` on)."""
    from .callbacks import MetricsCB, ProgressCB
    from .sgd import RecorderCB
    from .train_plots import plot_training, save_figure
    metrics = next(cb for cb in learn.cbs if isinstance(cb, MetricsCB))
    progress = next(cb for cb in learn.cbs if isinstance(cb, ProgressCB))
    rec = next(cb for cb in learn.cbs if isinstance(cb, RecorderCB))
    save_figure(plot_training(metrics.history, progress.losses, rec.recs['lr'], n_batches,
                              lr_first_batch=lr_first_batch), out / 'training.png')
    return metrics


def _finish(learn, valid_dl, out: Path, device):
    """With the best epoch's weights (best.pt): confusion.png on the test set and model.pt for `miniai predict`."""
    import torch.nn.functional as F

    from .callbacks import DeviceCB
    from .checkpoint import unwrap_model
    from .inference import fashion_preprocess
    from .interpret import Interpretation
    from .learner import TrainLearner
    from .train_plots import save_figure
    # a plain learner around the same model: none of the run's callbacks (DDP, logging, checkpoints) take part
    best = TrainLearner(unwrap_model(learn.model), loss_func=F.cross_entropy, cbs=[DeviceCB(device)])
    if (out / 'best.pt').is_file(): best.load(out / 'best.pt', weights_only=True)
    best.preprocess = fashion_preprocess()
    interp = Interpretation.from_learner(best, valid_dl)
    save_figure(interp.plot_confusion_matrix(title='test set, best epoch'), out / 'confusion.png')
    best.export(out / 'model.pt')


def _banner(args, dls, model, device, world: int) -> str:
    """What the run trains on: device(s), data source and size, model size."""
    from .datasets import _source
    src = _source(args.data)
    n_train, n_valid = (len(getattr(dl, 'dataset', ())) for dl in (dls.train, dls.valid))
    procs = f" x {world} processes" if world > 1 else ''
    return (f"miniai train: {device}{procs}; Fashion-MNIST from {src or 'the Hugging Face hub'}: {n_train:,} "
            f"training and {n_valid:,} test images; model: {sum(p.numel() for p in model.parameters()):,} "
            f"parameters; {args.epochs} epoch{'s' if args.epochs != 1 else ''}, bs {args.bs}, lr {args.lr:g}")


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


_SAVED = {'epochs': int, 'lr': float, 'bs': int, 'seed': int}   # config.json keys a resume cannot do without


def _resume_args(args):
    """The saved run's config, so a resumed run is the same run (a new --epochs or --device aside); the folder must
    hold last.pt. Flags added to miniai since the run was saved take their defaults."""
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
    for k in ('data', 'out'): saved[k] = Path(saved[k]) if saved.get(k) else None
    return argparse.Namespace(**{**defaults, **saved, 'resume': run, 'out': run,
                                 'epochs': getattr(args, 'epochs', None) or saved['epochs'],
                                 'device': getattr(args, 'device', None) or saved.get('device')})


def _check_resume(learn, args, saved_epochs: int):
    """Refuse a resume with nothing left to train, naming the flag that extends the run."""
    done = learn.resume_epoch
    if done < args.epochs: return
    more = f"--epochs {done + saved_epochs}" if saved_epochs else "--epochs N"
    raise UsageError(f"the run in {args.out} has already trained {done} epochs (of {saved_epochs}); to train it "
                     f"longer pass a larger total, e.g. `miniai train --resume {args.out} {more}`")


def _resume_note(learn, args, saved_epochs: int) -> str:
    note = f"resuming {args.out} at epoch {learn.resume_epoch} of {args.epochs}"
    if args.epochs <= saved_epochs: return note
    # OneCycleSchedCB keeps its step count and recomputes the total from the fit's n_epochs: the schedule of an
    # `epochs`-long run, picked up at the step reached (the lr goes back up to that schedule's value)
    return (f"{note} (extended from {saved_epochs}: the one-cycle schedule is rebuilt for {args.epochs} epochs and "
            "goes on from the step reached, so the lr rises to that schedule's value)")


def recipe_model():
    """The recipe's model, freshly initialised: the course's conv net with GeneralRelu(0.1, -0.4) and BatchNorm."""
    from torch import nn

    from .activations import GeneralRelu
    from .conv import get_model
    from .init import init_weights
    return get_model(partial(GeneralRelu, leak=0.1, sub=0.4), norm=nn.BatchNorm2d).apply(
        partial(init_weights, leaky=0.1))


def _rewrite_csv(path: Path, history: list[dict]):
    """metrics.csv rewritten from the checkpoint's rows, so that a resumed run's file holds each row once; the lr
    column (CSVLoggerCB's, not in the rows) is taken from the file's line of the same epoch and phase."""
    import csv
    lrs = {}
    if path.is_file() and not path.is_symlink():   # a planted link is replaced, never read
        try:
            with open(path, newline='') as f:
                for r in csv.DictReader(f): lrs.setdefault((r.get('epoch'), r.get('phase')), r.get('lr') or '')
        except (OSError, UnicodeDecodeError, csv.Error): pass
    buf = io.StringIO()
    if history:
        cols = ['epoch', 'phase', 'loss'] + [k for k in history[0] if k not in ('epoch', 'phase', 'loss', 'seconds')]
        w = csv.DictWriter(buf, fieldnames=cols + ['lr', 'seconds'], lineterminator='\r\n')
        w.writeheader()
        w.writerows({**r, 'lr': lrs.get((str(r['epoch']), r['phase']), '')} for r in history)
    atomic_write(path, buf.getvalue())


def build_learner(args, dls, out: Path, device):
    """The default recipe: conv model with GeneralRelu and BatchNorm, AdamW, cross entropy, and the run's callbacks."""
    import torch.nn.functional as F
    from torch import optim
    from torcheval.metrics import MulticlassAccuracy

    from .callbacks import CSVLoggerCB, DeviceCB, MetricsCB, ProgressCB
    from .checkpoint import SaveModelCB, TerminateOnNaNCB
    from .distributed import DDPCB, is_distributed
    from .learner import TrainLearner
    from .sgd import RecorderCB

    model = recipe_model()
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    cbs = [DeviceCB(device), metrics, ProgressCB(), CSVLoggerCB(out / 'metrics.csv'),
           SaveModelCB(out, monitor='accuracy'), TerminateOnNaNCB(), RecorderCB(lr=lambda cb: cb.pg['lr'])]
    cbs += _build_callbacks(args, out)
    if is_distributed(): cbs.append(DDPCB(device, seed=args.seed))
    return TrainLearner(model, dls, F.cross_entropy, lr=args.lr, cbs=cbs, opt_func=optim.AdamW)


def train(args) -> Path:
    """Run the recipe with parsed `args` (or resume the run in `args.resume`); returns the output folder."""
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')  # raised by torcheval's import
    import torch

    from .callbacks import def_device
    from .distributed import init_from_env, is_main_process

    saved_epochs = None
    if args.resume:
        args = _resume_args(args)
        saved_epochs = json.loads((args.resume / 'config.json').read_text())['epochs']
    else: args.epochs = args.epochs or 5
    world = int(os.environ.get('WORLD_SIZE', 1))  # set by torchrun
    if args.bs % world: raise UsageError(f"--bs {args.bs} (global) must be a multiple of the {world} processes")
    _check_device(args.device)
    timeout = timedelta(seconds=getattr(args, 'dist_timeout', DIST_TIMEOUT))
    device = init_from_env(args.device, timeout=timeout) if world > 1 else torch.device(args.device or def_device)
    out, created = (args.out, False) if args.resume else _out_dir(args)
    try: return _run(args, out, device, world, saved_epochs)
    except BaseException:
        if not args.resume and is_main_process(): _remove_if_unused(out, created)
        raise


def _save_interrupted(learn, out: Path):
    """interrupted.pt after Ctrl-C, and what the user can do with it."""
    from .checkpoint import SaveModelCB, save_checkpoint
    from .distributed import is_main_process
    saver = next(cb for cb in learn.cbs if isinstance(cb, SaveModelCB))
    done = saver.epoch_done == learn.epoch
    save_checkpoint(learn, out / 'interrupted.pt', epoch_done=done, wait=False)   # no collective after Ctrl-C
    if not is_main_process(): return
    part = '' if done else (f" (inside epoch {learn.epoch}: loading it trains epoch {learn.epoch} again from "
                            "its start)")
    resumable = (out / 'last.pt').is_file()
    how = (f"`miniai train --resume {out}` continues from the last complete epoch" if resumable else
           f"no epoch was complete, so there is nothing to resume: start a new run (delete {out} first to "
           "reuse its name)")
    print(f"interrupted: state saved to {out / 'interrupted.pt'}{part}; {how}", file=sys.stderr)


def _run(args, out: Path, device, world: int, saved_epochs: int | None = None) -> Path:
    from .callbacks import MetricsCB, set_seed
    from .datasets import get_dls
    from .distributed import distributed_dls, is_main_process
    from .sgd import OneCycleSchedCB

    set_seed(args.seed, deterministic=args.deterministic)
    full_dls = dls = get_dls(args.bs // world, path=args.data, device=device, limit=args.limit)
    if world > 1: dls = distributed_dls(dls, seed=args.seed)
    if not args.resume and is_main_process(): _write_config(args, out, device, world)
    learn = build_learner(args, dls, out, device)
    metrics = next(cb for cb in learn.cbs if isinstance(cb, MetricsCB))
    if args.resume:
        learn.load(out / 'last.pt')
        _check_resume(learn, args, saved_epochs)
        if is_main_process(): _rewrite_csv(out / 'metrics.csv', metrics.history)  # drops rows written after last.pt
    lr_first_batch = (learn.resume_epoch or 0) * len(dls.train)   # RecorderCB holds this fit's lrs only
    if is_main_process():
        print(_banner(args, full_dls, learn.model, device, world))
        if args.resume: print(_resume_note(learn, args, saved_epochs))
        if args.resume and args.epochs != saved_epochs: _write_config(args, out, device, world)
    # what fit_one_cycle adds, held here so that interrupted.pt (saved after the fit ends) has its position too
    with learn.added_cbs(OneCycleSchedCB(args.lr)):
        try: learn.fit(args.epochs)
        except KeyboardInterrupt: _save_interrupted(learn, out); raise
    if not is_main_process(): return out
    metrics = _write_plots(learn, out, len(dls.train), lr_first_batch)
    _finish(learn, full_dls.valid, out, device)
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
    from .predict_cli import predict
    try: (predict if args.command == 'predict' else train)(args)
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
