"""Using a trained classifier on new images: `Preprocess`, `classify`, `export` and `load_learner`.

`Preprocess` (from `miniai.preprocess`) is the recipe that turns raw images into model inputs (the normalisation
`get_dls` applies to its uint8 batches), plus the class names; it is plain data, so it travels inside an exported
file. `classify` takes one image (file path, PIL image, array or tensor) or a batch of them and returns class names
and probabilities; `learn.classify` calls it. It is not named `predict` because `predict` is already the loop step
that runs the model on `learn.batch` (the course's name, which callbacks and `TrainLearner` subclasses override).
`export` writes one file of state_dicts and plain values with its SHA-256 beside it (`miniai.predictions`);
`load_learner` rebuilds a learner ready to classify from it: by itself for a built-in architecture (a `miniai
train` run's model.pt), with the model's constructor for a model of your own. Explained in nbs/12_inference.ipynb.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .callbacks import DeviceCB
from .errors import DataError
from .learner import TrainLearner
from .models import ArchitectureError, build_model
from .predictions import Prediction, classify, export, fashion_preprocess, read_export
from .preprocess import Preprocess

__all__ = ['Preprocess', 'Prediction', 'classify', 'export', 'load_learner', 'fashion_preprocess']


def _model_for(state: dict, model, path: Path) -> nn.Module:
    """`model` (a module or a constructor), else the built-in architecture the export records."""
    if model is None:
        if state['arch'] is None:
            raise ArchitectureError(f"{path} holds a model of your own (no built-in architecture is recorded in it): "
                                    "pass its constructor, load_learner(path, MyModel), or a module built like it")
        try: return build_model(state['arch'])
        except ArchitectureError as e: raise ArchitectureError(f"{path}: {e}") from None
    if not isinstance(model, nn.Module): model = model()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or a function returning one, got {type(model).__name__}")
    return model


def load_learner(path, model: nn.Module | Callable[[], nn.Module] | None = None,
                 device: str | torch.device | None = None, loss_func: Callable = F.cross_entropy) -> TrainLearner:
    """A `TrainLearner` ready to `classify` (and `get_preds(dl)`) from the export at `path`, in eval mode on
    `device` (default: CPU).

    `model`: a module or a function that builds one; leave it out for an export of a built-in architecture
    (`miniai.models`, e.g. any `miniai train` run's model.pt), which is rebuilt from the name and arguments the
    file records. The learner has no data: give `get_preds` and `Interpretation.from_learner` a loader (`dl=`).

    Raises:
        FileNotFoundError, DataError: `path` is missing, damaged (digest, NaN weights, invalid preprocessing), or
            not written by `export`.
        ArchitectureError: no `model` given and the file records no known architecture (a model of your own).
        DataError: `model` is not the architecture that was exported (the message lists the differing keys).
    """
    path = Path(path)
    state = read_export(path)
    model = _model_for(state, model, path)
    try: model.load_state_dict(state['model'])
    except RuntimeError as e:
        raise DataError(f"{path} was exported from another model; build the same architecture. "
                        f"{str(e).splitlines()[0]} {' '.join(str(e).splitlines()[1:])[:600]}") from e
    device = torch.device(device or 'cpu')
    learn = TrainLearner(model.to(device).eval(), loss_func=loss_func, opt_func=torch.optim.SGD,
                         cbs=[DeviceCB(device)])
    learn.preprocess = state['preprocess']
    return learn
