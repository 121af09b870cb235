"""The `miniai` command line: `build_parser` (the `train` and `predict` subcommands, their flags and help) and
`given_flags` (which flags a command line names, as opposed to their defaults).

`train --help` lists examples, the files a run writes and the resume rule (`RESUME_FLAGS`).
Shown in nbs/12_inference.ipynb.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = ['build_parser', 'given_flags', 'flag_name', 'RESUME_FLAGS', 'DIST_TIMEOUT', 'SEED_RANGE']

DIST_TIMEOUT = 600.  # seconds; torch's own default (30 min for gloo) leaves a cluster idle for long
SEED_RANGE = (-2**63, 2**64 - 1)   # what torch.manual_seed takes (it stores the seed as a 64-bit integer)
# the flags that `--resume` accepts: none of them changes what the run computes
RESUME_FLAGS = ('resume', 'epochs', 'device', 'data', 'dist_timeout')


def _positive(kind):
    def parse(s):
        try: v = kind(s)
        except ValueError: raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {s!r}")
        if not math.isfinite(v): raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
        if v <= 0: raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v
    return parse


def _seed(s: str) -> int:
    """A seed torch accepts, checked here: torch.manual_seed would fail on a larger one after the data loaded."""
    try: v = int(s)
    except ValueError: raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}")
    lo, hi = SEED_RANGE
    if not lo <= v <= hi: raise argparse.ArgumentTypeError(f"must be an integer from {lo} to {hi}, got {s}")
    return v


_EXAMPLES = """\
examples:
  miniai train --limit 2000 --epochs 1          # a quick check on a subset of the data
  miniai train --epochs 3 --lr 0.03 --out runs/first
  miniai train --resume runs/first --epochs 5   # continue that run, extended to 5 epochs
  torchrun --nproc_per_node 2 -m miniai train   # data-parallel, one process per GPU (or CPU with gloo)
"""

_OUTPUTS = """\
files written to --out:
  config.json     the flags of the run and its data (absolute path; images and SHA-256 per split), read by --resume
  metrics.csv     one row per epoch: epoch, train_loss, valid_loss, train_accuracy, valid_accuracy, lr,
                  time (seconds); the validation set is Fashion-MNIST's 10,000 test images
  training.png    three panels: train_loss and valid_loss, train_accuracy and valid_accuracy, lr
  confusion.png   the validation set's confusion matrix, with the best epoch's weights
  last.pt         a checkpoint after every epoch (what --resume continues from), with last.pt.sha256
  best.pt         the checkpoint with the best valid_accuracy
  model.pt        the best weights, class names and preprocessing, for `miniai predict RUN_DIR IMAGE...`
                  and miniai.inference.load_learner (plain data: torch.load(weights_only=True) reads it)
  interrupted.pt  written on Ctrl-C, SIGTERM or SIGHUP (the run exits with code 130, 143 or 129)
  run.lock        who trains in the folder (pid, host, start time); locked while a run holds it, so a second
                  one is refused; a finished run's file is no longer locked
  tensorboard/    event files, with --tensorboard
  wandb/          the Weights & Biases run's local files, with --wandb
"""

_RESUME_HELP = ("continue the run in DIR from its last complete epoch, with the run's own flags from DIR/config.json. "
                "Only --epochs (a larger number extends the run), --device, --data (the run's data moved: the files "
                "are checked to be the same) and --dist-timeout may be given with it; any other flag with a value "
                "other than the run's would change the run and is refused. A run whose epochs are all trained, or that "
                "--early-stop ended, is complete; if its final files are missing (stopped while writing them) the "
                "resume writes them, and trains nothing")


def build_parser() -> argparse.ArgumentParser:
    """The parser of `miniai train ...` and `miniai predict ...`."""
    return _parsers()[0]


def _parsers(given_only: bool = False) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The `miniai` parser and its `train` subparser; `given_only`: whose flags have no defaults, so that a parsed
    Namespace holds only the flags given."""
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        """The epilog as written; "(default: X)" only where the help doesn't say it already and X is a value."""
        def _get_help_string(self, action):
            if '(default' in (action.help or '') or action.default in (None, False): return action.help
            return super()._get_help_string(action)

    p = argparse.ArgumentParser(prog='miniai', description="miniai's command line: train a model, classify images")
    sub = p.add_subparsers(dest='command', required=True)
    t = sub.add_parser('train', help="train the default recipe on Fashion-MNIST", formatter_class=Formatter,
                       description="Train the default recipe on Fashion-MNIST: the course's CNN, AdamW, one-cycle.",
                       epilog=_EXAMPLES + '\n' + _OUTPUTS)

    def arg(*names, **kw):
        t.add_argument(*names, **{**kw, 'default': argparse.SUPPRESS} if given_only else kw)
    arg('--epochs', type=_positive(int), default=None,
        help="epochs to train (default: 5); with --resume, a number larger than the run's extends it (unless "
             "--early-stop ended the run)")
    arg('--lr', type=_positive(float), default=6e-2, help="peak learning rate of the one-cycle schedule")
    arg('--bs', type=_positive(int), default=1024,
        help="global batch size: under torchrun each of the N processes takes bs/N per step")
    arg('--device', default=None,
        help="cuda, mps or cpu (default: the first available); under torchrun cuda (process i takes "
             "cuda:LOCAL_RANK) or cpu")
    arg('--seed', type=_seed, default=42, help="random seed")
    arg('--deterministic', action='store_true', help="ask torch for deterministic kernels")
    arg('--data', type=Path, default=None,
        help="folder with the four Fashion-MNIST IDX .gz files (default: $MINIAI_DATA, then "
             "/usr/share/datasets/fashion-mnist, then the Hugging Face hub)")
    arg('--out', type=Path, default=None, help="folder for the results (default: a new one under ./runs)")
    arg('--limit', type=_positive(int), default=None,
        help="use only the first N training and N/6 test images (a quick check)")
    arg('--resume', type=Path, default=None, metavar='DIR', help=_RESUME_HELP)
    arg('--dist-timeout', type=_positive(float), default=DIST_TIMEOUT, metavar='SECONDS',
        help="under torchrun, how long a process waits for the others before the run stops with an error "
             "(a stalled or dead process would otherwise block the rest forever)")
    _add_callback_flags(arg)
    from ..predict_cli import add_predict_parser
    add_predict_parser(sub)
    return p, t


def _add_callback_flags(arg):
    arg('--early-stop', type=_positive(int), default=None, metavar='PATIENCE',
        help="stop when valid_accuracy (what best.pt and model.pt are chosen by) has not improved for PATIENCE epochs "
             "(miniai.stopping.EarlyStoppingCB)")
    arg('--clip', type=_positive(float), default=None, metavar='MAX_NORM',
        help="clip the gradients' total norm to MAX_NORM (miniai.gradients.GradientClipCB)")
    arg('--accumulate', type=_positive(int), default=1, metavar='N',
        help="step the optimizer every N batches, on the mean of their gradients: as one batch of N x --bs "
             "(miniai.gradients.GradientAccumulationCB)")
    arg('--tensorboard', action='store_true',
        help="also log to OUT/tensorboard (miniai.tensorboard.TensorBoardCB; "
             "pip install 'miniai-learner[tensorboard]')")
    arg('--wandb', action='store_true',
        help="also log to Weights & Biases, project $WANDB_PROJECT or miniai, the run's flags as its config "
             "(miniai.wandb.WandBCB; pip install 'miniai-learner[wandb]'); WANDB_MODE=offline keeps the run in "
             "OUT/wandb for a later `wandb sync`")


def given_flags(argv: list[str]) -> set[str]:
    """The destinations of the flags that `argv` (a `train` command line) names, whatever their values: a flag given
    with its default value is given all the same, which a comparison with the defaults could not tell."""
    return set(vars(_parsers(given_only=True)[0].parse_args(argv))) - {'command'}


def flag_name(dest: str) -> str:
    """The option string of the `train` flag stored in `dest` ('dist_timeout' -> '--dist-timeout')."""
    return f"--{dest.replace('_', '-')}"   # argparse's rule for the dest of a long option
