"""`miniai predict RUN_DIR IMAGE...`: classify image files with the model a `miniai train` run saved.

The run's `model.pt` (its best epoch's weights and the preprocessing, written by `learn.export` at the end of
training) is loaded with `load_learner`; a run that stopped before its end has no model.pt, and then the weights of
its `best.pt` checkpoint are used with the Fashion-MNIST preprocessing. Prints one line per image:
`path<TAB>class<TAB>probability`. Shown in nbs/12_inference.ipynb.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ['add_predict_parser', 'predict', 'run_learner']


def add_predict_parser(sub) -> argparse.ArgumentParser:
    """Add the `predict` subcommand to the subparsers `sub` of `miniai`'s parser."""
    p = sub.add_parser('predict', help="classify image files with a trained run's best model",
                       description="Classify image files with the best model of a `miniai train` run: its model.pt "
                                   "(written at the end of training), else the weights of its best.pt. Prints one "
                                   "line per image: path, class, probability (tab-separated).")
    p.add_argument('run', type=Path, metavar='RUN_DIR', help="folder of a `miniai train` run")
    p.add_argument('images', type=Path, nargs='+', metavar='IMAGE', help="image files (PNG, JPEG, ...)")
    p.add_argument('--device', default='cpu', help="where the model runs")
    return p


def run_learner(run: Path, device='cpu'):
    """A learner ready to `classify` from the run folder `run`: its model.pt, else its best.pt checkpoint."""
    import torch

    from .cli import recipe_model
    from .inference import fashion_preprocess, load_learner
    from .learner import TrainLearner
    if not run.is_dir(): raise FileNotFoundError(f"no run folder at {run}")
    if (run / 'model.pt').is_file(): return load_learner(run / 'model.pt', recipe_model, device=device)
    if not (run / 'best.pt').is_file():
        raise FileNotFoundError(f"{run} holds neither model.pt nor best.pt: is it the --out folder of a "
                                "`miniai train` run that finished at least one epoch?")
    learn = TrainLearner(recipe_model(), loss_func=torch.nn.functional.cross_entropy)
    learn.load(run / 'best.pt', weights_only=True)
    learn.model.to(device).eval()
    learn.preprocess = fashion_preprocess()
    return learn


def predict(args) -> list:
    """Classify `args.images` with the run in `args.run`, print `path<TAB>class<TAB>probability` for each, and
    return the predictions. Every image is read before anything is printed, so a bad one fails the whole call."""
    import warnings
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')
    learn = run_learner(args.run, args.device)
    preds = learn.classify(list(args.images))
    for path, p in zip(args.images, preds): print(f"{path}\t{p.label}\t{p.prob:.6f}")
    return preds
