"""`miniai train` (also `python -m miniai train`): the default Fashion-MNIST recipe from the command line.

The conv model with GeneralRelu and BatchNorm, AdamW, a one-cycle lr, batch size 1024, 5 epochs. Writes to `--out`
the files listed by `miniai train --help` (metrics, plots, checkpoints, the exported model); `--resume DIR`
continues a run from its last complete epoch (with a larger `--epochs`, extends it). Under
`torchrun --nproc_per_node N -m miniai train ...` it trains on N processes (DistributedDataParallel, one GPU each,
or gloo on CPU); rank 0 prints and writes the files. `miniai predict RUN_DIR IMAGE...` classifies image files with
a run's best model (`miniai.predict_cli`). Shown in nbs/12_inference.ipynb.

Parts: `parser` (flags and help), `run_dir` (run folders and their lock), `resume` (what --resume checks and
takes), `run` (`train`: one run), `outputs` (config.json, metrics.csv, the final files), `signals` (SIGINT, SIGTERM,
SIGHUP), `errors` (the one-line messages), and `recipe` (`build_learner`; its model is `miniai.models.recipe_model`).
"""
from __future__ import annotations

import sys

from .errors import one_line
from .parser import build_parser, given_flags
from .recipe import build_learner
from .run import train
from .signals import exit_code, say

__all__ = ['main', 'build_parser', 'train', 'build_learner']


def main(argv: list[str] | None = None) -> int:
    """`miniai ARGS...` (default: the command line's): 0 when done, 1 after a one-line error, 128 + N when stopped by
    signal N (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP); a bug raises with its traceback."""
    import warnings
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from ..distributed import destroy
    from ..predict_cli import predict
    try:
        with warnings.catch_warnings():   # what the commands filter stays inside this call
            if args.command == 'predict': predict(args)
            else: train(args, given_flags(argv))
    except KeyboardInterrupt as e: return exit_code(e)
    except Exception as e:
        msg = one_line(e, args)
        if msg is None: raise
        say(f"miniai: error: {msg}")
        return 1
    finally: destroy()  # the process group train joined under torchrun, if any
    return 0
