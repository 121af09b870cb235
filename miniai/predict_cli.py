"""`miniai predict MODEL IMAGE...`: classify image files with the model a `miniai train` run saved.

MODEL is a run folder or an exported model file. A run folder's `model.pt` (its best epoch's weights, the
preprocessing and the architecture, written by `learn.export` at the end of training) is loaded with
`load_learner`; a run that stopped before its end has no model.pt, and then the weights of its `best.pt`
checkpoint are used with the Fashion-MNIST preprocessing. An IMAGE that is a folder stands for the image files in it.

Prints one line per image, `path<TAB>class<TAB>probability`, as soon as its batch is classified; a backslash,
tab, newline or carriage return in a name or class is written `\\\\`, `\\t`, `\\n`, `\\r`, so that every result is
one line of three fields. An image that cannot be read is reported on stderr and the rest are still classified;
the exit code is then 1. Shown in nbs/12_inference.ipynb.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from .errors import DataError, OutputError, UsageError

__all__ = ['add_predict_parser', 'predict', 'run_learner', 'image_files', 'IMAGE_SUFFIXES']

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pbm', '.pnm')
_CHUNK = 64   # images read and classified at a time: results appear while a long list is still being read


def add_predict_parser(sub) -> argparse.ArgumentParser:
    """Add the `predict` subcommand to the subparsers `sub` of `miniai`'s parser."""
    p = sub.add_parser('predict', help="classify image files with a trained run's best model",
                       description="Classify image files with the best model of a `miniai train` run: its model.pt "
                                   "(written at the end of training), else the weights of its best.pt; or with an "
                                   "exported model file. Prints one line per image: path, class, probability "
                                   "(tab-separated; tabs, newlines and backslashes in names escaped as \\t, \\n, "
                                   "\\\\). Unreadable images are reported on stderr, the others classified; the "
                                   "exit code is then 1.")
    p.add_argument('run', type=Path, metavar='MODEL',
                   help="folder of a `miniai train` run, or an exported model file (RUN/model.pt)")
    p.add_argument('images', type=Path, nargs='+', metavar='IMAGE',
                   help=f"image files, or folders of them ({', '.join(IMAGE_SUFFIXES)})")
    p.add_argument('--device', default='cpu', help="where the model runs: cpu, cuda, cuda:N or mps")
    return p


def _looks_like_an_image(path: Path) -> bool:
    """A file named like an image that is not a torch file (those are zip archives): the arguments swapped."""
    if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file(): return False
    try:
        with open(path, 'rb') as f: return f.read(4) != b'PK\x03\x04'
    except OSError: return False


def run_learner(run: Path, device='cpu'):
    """A learner ready to `classify` from `run`: an exported model file, or a run folder (its model.pt, else its
    best.pt checkpoint with the recipe's model and the Fashion-MNIST preprocessing)."""
    import torch

    from .inference import fashion_preprocess, load_learner
    from .learner import TrainLearner
    from .models import ArchitectureError, recipe_model
    run = Path(run)
    if _looks_like_an_image(run):
        raise UsageError(f"{run} is an image, not a model: miniai predict takes the MODEL first (a run folder or its "
                         "model.pt), then the images: miniai predict MODEL IMAGE ...")
    if run.is_file() or (run.is_dir() and (run / 'model.pt').is_file()):
        path = run if run.is_file() else run / 'model.pt'
        try: return load_learner(path, device=device)
        except ArchitectureError as e:
            if run.is_file():
                raise UsageError(f"{e}. miniai predict runs built-in architectures only (miniai.models); for a model "
                                 "of your own, use load_learner(path, MyModel).classify(...) in Python") from None
            # a run folder written before exports recorded their architecture: its model is the recipe's
            return load_learner(path, recipe_model, device=device)
    if not run.exists(): raise FileNotFoundError(f"no run folder or model file at {run}")
    if not run.is_dir(): raise DataError(f"{run} is not a run folder or a model file (a pipe or device?)")
    if not (run / 'best.pt').is_file():
        raise FileNotFoundError(f"{run} holds neither model.pt nor best.pt: is it the --out folder of a "
                                "`miniai train` run that finished at least one epoch?")
    learn = TrainLearner(recipe_model(), loss_func=torch.nn.functional.cross_entropy)
    learn.load(run / 'best.pt', weights_only=True)
    learn.model.to(device).eval()
    learn.preprocess = fashion_preprocess()
    return learn


def image_files(paths) -> tuple[list[Path], list[tuple[Path, str]]]:
    """`paths` with each folder replaced by the image files in it (by name, hidden ones skipped), and the
    `(path, reason)` of each folder that has none or cannot be listed."""
    files, bad = [], []
    for p in map(Path, paths):
        if not p.is_dir():
            files.append(p)
            continue
        try: found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith('.')
                            and not q.is_dir())
        except OSError as e:
            bad.append((p, f"cannot list the folder {p}: {(e.strerror or str(e)).lower()}"))
            continue
        if not found: bad.append((p, f"no image files in the folder {p} (looked for {', '.join(IMAGE_SUFFIXES)})"))
        files += found
    return files, bad


def _escape(s: str) -> str:
    """`s` as one TSV field: backslash, tab, newline and carriage return escaped; undecodable bytes of a file name
    (which Python holds as surrogates) as `\\udcXX`."""
    s = s.replace('\\', '\\\\').replace('\t', '\\t').replace('\n', '\\n').replace('\r', '\\r')
    return s.encode('utf-8', 'backslashreplace').decode('utf-8')


class _Out:
    """Result lines to stdout, flushed one by one; a closed pipe (`| head -1`) ends the run with one line."""
    def __init__(self, total: int): self.total, self.written = total, 0

    def write(self, line: str):
        try:
            sys.stdout.write(line + '\n')
            sys.stdout.flush()
        except BrokenPipeError:
            try:     # the interpreter flushes stdout once more at exit: let that go nowhere instead of failing
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError): pass
            raise OutputError(errno.EPIPE, f"the output was closed after {self.written} of {self.total} results "
                                           "(by head, or another reader that stopped), so the rest were not "
                                           "classified; to keep every result, write them to a file: "
                                           "miniai predict ... > results.tsv") from None
        self.written += 1


def _with_path(path: Path, msg: str) -> str: return msg if str(path) in msg else f"{path}: {msg}"


def _report(path: Path, e: Exception):
    print(f"miniai: error: {_escape(_with_path(path, str(e)))}", file=sys.stderr, flush=True)


def predict(args) -> list:
    """Classify the images `args.images` (files, or folders of them) with the model in `args.run`, print
    `path<TAB>class<TAB>probability` for each (fields escaped), and return the predictions.

    Raises:
        UsageError, FileNotFoundError, DataError: a bad `--device` or model, before any image is read.
        DataError: after the rest were classified, when any image could not be read (each was reported on
            stderr; a single image's error is raised as it is).
        OutputError: stdout was closed before every result was written.
    """
    import warnings

    import torch

    from .device import check_device
    device = check_device(args.device)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')   # torcheval's import
        learn = run_learner(args.run, device)
    files, bad = image_files(args.images)
    total = len(files) + len(bad)
    errors = list(bad)
    if total > 1:
        for p, msg in bad: _report(p, DataError(msg))
    out, preds = _Out(total), []
    pre = learn.preprocess
    for i in range(0, len(files), _CHUNK):
        ok, ims = [], []
        for p in files[i:i + _CHUNK]:
            try: ims.append(pre.image(p))
            except (OSError, ValueError, TypeError) as e:    # unreadable, not an image, a bomb, bad pixel values
                errors.append((p, str(e)))
                if total > 1: _report(p, e)
                continue
            ok.append(p)
        if not ims: continue
        res = learn.classify(torch.stack([x.float() / 255 if x.dtype == torch.uint8 else x for x in ims]))
        for p, r in zip(ok, res): out.write(f"{_escape(str(p))}\t{_escape(r.label)}\t{r.prob:.6f}")
        preds += res
    if errors:
        if total == 1: raise DataError(_escape(_with_path(*errors[0])))
        raise DataError(f"{len(errors)} of {total} images could not be classified (each is reported above); the "
                        f"other {total - len(errors)} were")
    return preds
