"""`miniai train` (also `python -m miniai train`): the seeds' Fashion-MNIST recipe from the command line.

The conv model with GeneralRelu and BatchNorm, AdamW, a one-cycle lr, batch size 1024, 5 epochs. Writes to `--out`
the files listed by `miniai train --help` (metrics, plots, checkpoints, the exported model); `--resume DIR`
continues a run from its last complete epoch (with a larger `--epochs`, extends it). Under
`torchrun --nproc_per_node N -m miniai train ...` it trains on N processes (DistributedDataParallel, one GPU each,
or gloo on CPU); rank 0 prints and writes the files. `miniai predict RUN_DIR IMAGE...` classifies image files with
a run's best model (`miniai.predict_cli`).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import warnings
from functools import partial
from pathlib import Path

__all__ = ['main', 'build_parser', 'train', 'recipe_model']

_OUTPUTS = '''files written to --out:
  config.json     the run's flags (read by --resume)
  metrics.csv     one row per epoch and phase: loss, accuracy, seconds
  training.png    three panels: loss, accuracy and learning rate
  confusion.png   the test set's confusion matrix, with the best epoch's weights
  last.pt         checkpoint after every epoch (for --resume)
  best.pt         checkpoint of the epoch with the best test accuracy
  model.pt        the best weights, class names and preprocessing, for `miniai predict RUN_DIR IMAGE...`
                  and miniai.inference.load_learner (plain data: torch.load(weights_only=True) reads it)
  tensorboard/    event files, with --tensorboard'''


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except None ones (their help says what happens), and keeps the epilog's layout."""
    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


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
    t = sub.add_parser('train', help="train the seed recipe on Fashion-MNIST", formatter_class=_Help, epilog=_OUTPUTS)
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
                        "pip install 'miniai[tensorboard]')")


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
            raise ImportError("--tensorboard needs the tensorboard package: pip install 'miniai[tensorboard]' "
                              "(or pip install tensorboard)")
        from .tensorboard import TensorBoardCB
        cbs.append(TensorBoardCB(out / 'tensorboard'))
    return cbs


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


def _write_plots(learn, out: Path, n_batches: int, first_batch: int):
    """training.png from the metrics history, the per-batch losses and lrs of this process's fit."""
    from .callbacks import MetricsCB, ProgressCB
    from .sgd import RecorderCB
    from .train_plots import plot_training, save_figure
    metrics = next(cb for cb in learn.cbs if isinstance(cb, MetricsCB))
    progress = next(cb for cb in learn.cbs if isinstance(cb, ProgressCB))
    rec = next(cb for cb in learn.cbs if isinstance(cb, RecorderCB))
    save_figure(plot_training(metrics.history, progress.losses, rec.recs['lr'], n_batches, first_batch),
                out / 'training.png')
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


def _resume_args(args):
    """The saved run's config, so a resumed run is the same run (a new --epochs or --device aside); the folder must
    hold last.pt. Flags added to miniai since the run was saved take their defaults."""
    run = args.resume
    if not (run / 'config.json').is_file() or not (run / 'last.pt').is_file():
        raise FileNotFoundError(f"--resume {run}: expected a run folder of `miniai train` holding config.json and "
                                "last.pt (written after each epoch)")
    saved = json.loads((run / 'config.json').read_text())
    for k in ('data', 'out'): saved[k] = Path(saved[k]) if saved.get(k) else None
    defaults = vars(build_parser().parse_args(['train']))
    return argparse.Namespace(**{**defaults, **saved, 'resume': run, 'out': run,
                                 'epochs': args.epochs or saved['epochs'], 'device': args.device or saved['device']})


def _check_resume(learn, args, saved_epochs: int):
    """Refuse a resume with nothing left to train, naming the flag that extends the run."""
    done = learn.resume_epoch
    if done < args.epochs: return
    more = f"--epochs {done + saved_epochs}" if saved_epochs else "--epochs N"
    raise ValueError(f"the run in {args.out} has already trained {done} epochs (of {saved_epochs}); to train it "
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


def build_learner(args, dls, out: Path, device):
    """The seed recipe: conv model with GeneralRelu and BatchNorm, AdamW, cross entropy, and the run's callbacks."""
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
    cbs = [DeviceCB(device), metrics, ProgressCB(), CSVLoggerCB(out / 'metrics.csv', metrics),
           SaveModelCB(out, monitor='accuracy'), TerminateOnNaNCB(), RecorderCB(lr=lambda cb: cb.pg['lr'])]
    cbs += _build_callbacks(args, out)
    if is_distributed(): cbs.append(DDPCB(device, seed=args.seed))
    return TrainLearner(model, dls, F.cross_entropy, lr=args.lr, cbs=cbs, opt_func=optim.AdamW)


def train(args) -> Path:
    """Run the recipe with parsed `args` (or resume the run in `args.resume`); returns the output folder."""
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')  # raised by torcheval's import
    import torch

    from .callbacks import def_device, set_seed
    from .datasets import get_dls
    from .distributed import distributed_dls, init_from_env, is_main_process

    saved_epochs = None
    if args.resume:
        args = _resume_args(args)
        saved_epochs = json.loads((args.resume / 'config.json').read_text())['epochs']
    else: args.epochs = args.epochs or 5
    world = int(os.environ.get('WORLD_SIZE', 1))  # set by torchrun
    if args.bs % world: raise ValueError(f"--bs {args.bs} (global) must be a multiple of the {world} processes")
    device = init_from_env(args.device) if world > 1 else torch.device(args.device or def_device)
    out = args.out if args.resume else _out_dir(args)
    set_seed(args.seed, deterministic=args.deterministic)
    full_dls = dls = get_dls(args.bs // world, path=args.data, device=device, limit=args.limit)
    if world > 1: dls = distributed_dls(dls, seed=args.seed)
    learn = build_learner(args, dls, out, device)
    if args.resume:
        learn.load(out / 'last.pt')
        _check_resume(learn, args, saved_epochs)
    first_batch = (learn.resume_epoch or 0) * len(dls.train)
    if is_main_process():
        print(_banner(args, full_dls, learn.model, device, world))
        if args.resume: print(_resume_note(learn, args, saved_epochs))
    if is_main_process() and (not args.resume or args.epochs != saved_epochs):
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != 'resume'}
        (out / 'config.json').write_text(json.dumps({**config, 'device': str(device), 'world_size': world}, indent=2))
    try: learn.fit_one_cycle(args.epochs, args.lr)
    except KeyboardInterrupt:
        learn.save(out / 'interrupted.pt')
        if is_main_process():
            print(f"interrupted: state saved to {out / 'interrupted.pt'}; `miniai train --resume {out}` continues "
                  "from the last complete epoch", file=sys.stderr)
        raise
    if not is_main_process(): return out
    metrics = _write_plots(learn, out, len(dls.train), first_batch)
    _finish(learn, full_dls.valid, out, device)
    final = [r for r in metrics.history if r['phase'] == 'eval'][-1]
    print(f"test accuracy {final['accuracy']:.4f}; results in {out}")
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError, NonFiniteLossError
    from .distributed import destroy
    from .predict_cli import predict
    try: (predict if args.command == 'predict' else train)(args)
    except KeyboardInterrupt: return 130
    except (FileExistsError, FileNotFoundError, ValueError, ImportError, NonFiniteLossError,
            CheckpointError) as e:
        print(f"miniai: error: {e}", file=sys.stderr)
        return 1
    finally: destroy()  # the process group train joined under torchrun, if any
    return 0


if __name__ == '__main__':
    sys.exit(main())
