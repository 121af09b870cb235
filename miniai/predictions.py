"""Classifying new images and exporting a model, for any learner: `classify`, `export`, `read_export`.

These take a learner duck-typed (its `model`, `preprocess`, `dls`), so `Learner.classify` and `Learner.export` call
them, and `miniai.inference.load_learner` rebuilds a learner from what `read_export` checked.

An export is one file of state_dicts and plain values (no pickled code: it loads with `weights_only=True`): the
model's weights, its `Preprocess` and, for a model made by a registered builder (`miniai.models`), the builder's
name and arguments. Like a checkpoint, it has its SHA-256 beside it (`model.pt.sha256`, the format of `sha256sum`),
written so that a kill at any moment leaves a pair that loads. Reading one checks the digest, then that the weights
are finite and the preprocessing is sane, so a damaged or hostile file is refused with a sentence, never turned
into NaN predictions or a huge allocation. Explained in nbs/12_inference.ipynb.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from .datasets import fashion_preprocess
from .device import unwrap_model
from .errors import DataError
from .files import digest_path, read_regular, verify_digest, write_with_digest
from .models import architecture_of
from .preprocess import Preprocess

__all__ = ['Prediction', 'classify', 'export', 'read_export', 'preprocess_of', 'fashion_preprocess', 'EXPORT_FORMAT']

EXPORT_FORMAT = 'miniai-inference-1'


class Prediction(NamedTuple):
    """What `classify` says about one image: `label` (class name), its `index` and `prob`, and all `probs`."""
    label: str
    index: int
    prob: float
    probs: torch.Tensor


def preprocess_of(learn) -> Preprocess:
    """`learn.preprocess`, else `learn.dls.preprocess`; a ValueError saying how to set it when neither is."""
    pre = getattr(learn, 'preprocess', None)
    if pre is None: pre = getattr(getattr(learn, 'dls', None), 'preprocess', None)
    if pre is None:
        raise ValueError("this learner does not know how its training images were prepared: set "
                         "`learn.preprocess = Preprocess(mean=..., std=..., size=..., classes=...)` "
                         "(for get_dls' Fashion-MNIST: `fashion_preprocess()`)")
    return pre


def _model_device(model) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device('cpu')


def classify(learn, items, bs: int = 256) -> Prediction | list[Prediction]:
    """Classify `items` with `learn.model` after `learn.preprocess` (else `learn.dls.preprocess`).

    One image gives one `Prediction`, a batch a list of them. One image: a file path, a PIL image, or an array
    or tensor shaped `(H, W)` (grey), `(C, H, W)` or `(H, W, C)` with C = 1, 3 or 4, as `np.array(Image.open(f))`
    gives (`Preprocess.image` says how every kind is read and scaled: uint8, uint16, bool, float in [0, 1]).
    A batch: a list or tuple of images, or a 4-D `(N, C, H, W)` or `(N, H, W, C)` array or tensor. A 3-D array is
    never a batch: grey images stacked as `(N, H, W)` are refused with a message, pass `x.unsqueeze(1)` or a list.
    Probabilities are the softmax of the model's outputs. The model runs in eval mode under `torch.no_grad()`, on
    its own device, at most `bs` images at a time (fewer for large inputs); its mode is restored.
    """
    pre = preprocess_of(learn)
    single = pre.is_one(items)
    model, was_training = learn.model, learn.model.training
    device = _model_device(model)
    outs = []
    model.eval()
    try:
        with torch.no_grad():
            for x in pre.batches(items, bs): outs.append(model(pre.normalise(x).to(device)).float().cpu())
    finally: model.train(was_training)
    out = torch.cat(outs)
    if out.dim() != 2 or (pre.classes and out.shape[1] != len(pre.classes)):
        raise ValueError(f"the model's output has shape {tuple(out.shape)}, expected (N, {len(pre.classes) or 'C'}): "
                         "classify is for classifiers with one output per class")
    res = [_prediction(p, pre.classes) for p in out.softmax(1)]
    return res[0] if single else res


def _prediction(probs: torch.Tensor, classes: Sequence[str]) -> Prediction:
    i = int(probs.argmax())
    return Prediction(classes[i] if classes else str(i), i, float(probs[i]), probs)


# ---------------------------------------------------------------- export
def _non_finite(weights: dict) -> list[str]:
    return [k for k, v in weights.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def export(learn, path) -> Path:
    """Write `learn`'s model weights, preprocessing (with class names) and, for a built-in architecture, its name
    and arguments to the one file `path`, atomically, with its SHA-256 in `path.sha256`.

    Only state_dicts and plain values go in: `torch.load(path, weights_only=True)` reads it, and `load_learner`
    rebuilds a learner from it (with the model's constructor, for a model of your own).

    Raises:
        ValueError: the weights hold NaN or infinite values (nothing is written).
        OutputError: the file could not be written; a previous export at `path` is intact.
    """
    path = Path(path)
    model = unwrap_model(learn.model)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = _non_finite(weights)
    if bad:
        raise ValueError(f"the model's weights hold NaN or infinite values ({', '.join(bad[:5])}); nothing was "
                         "exported: load a checkpoint from before the loss diverged, or retrain with a lower lr")
    state = {'format': EXPORT_FORMAT, 'model': weights, 'preprocess': preprocess_of(learn).to_dict()}
    arch = architecture_of(model)
    if arch is not None: state['arch'] = arch
    buf = io.BytesIO()       # in memory first: the digest covers exactly the bytes that reach the disk
    torch.save(state, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_with_digest(path, bytes(buf.getbuffer()))
    return path


def _verify(path: Path, data: bytes):
    """Check `data`, the bytes read from the export `path`, against the digest file beside it."""
    verify_digest(path, data, 'exported model', error=DataError,
                  advice=f"delete it to load {path.name} unchecked, or restore the {digest_path(path).name} written "
                         "with the export",
                  remedy="Export it again, or restore both files from where they came from")


def read_export(path) -> dict:
    """The checked contents of the export at `path`: `{'format', 'model' (a state_dict), 'preprocess' (a
    `Preprocess`), 'arch' (the architecture record, or None)}`.

    The file is read once into memory, so the digest checks exactly the bytes that are loaded.

    Raises:
        FileNotFoundError: nothing at `path`.
        DataError: not a regular file, a digest mismatch, not an export, non-finite weights, invalid preprocessing.
    """
    path = Path(path)
    try:
        data = read_regular(path, what='exported model', error=DataError,
                            advice="give the path of a model file written by learn.export, e.g. RUN/model.pt")
    except FileNotFoundError: raise FileNotFoundError(f"no exported model at {path}") from None
    _verify(path, data)
    try: state = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except Exception as e:
        raise DataError(f"{path} cannot be read as an exported model: it is truncated or corrupt, or not a file "
                        f"that learn.export wrote ({type(e).__name__}); give the model.pt of a run, or export it "
                        "again with learn.export(path)") from e
    if not isinstance(state, dict) or state.get('format') != EXPORT_FORMAT:
        raise DataError(f"{path} is not a miniai export (format {EXPORT_FORMAT!r}): a training checkpoint such as "
                        "last.pt or best.pt loads with learn.load(path) (on the command line, give miniai predict the "
                        "run folder instead); an export is written by learn.export(path)")
    weights = state.get('model')
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise DataError(f"{path} holds no state_dict of weights under 'model'; export it again")
    bad = _non_finite(weights)
    if bad:
        raise DataError(f"{path} holds NaN or infinite weights ({', '.join(bad[:5])}): the file is damaged, or was "
                        "exported from a diverged model; export it again from a good checkpoint")
    try: pre = Preprocess.from_dict(state.get('preprocess'))
    except (TypeError, ValueError) as e:
        raise DataError(f"{path} holds invalid preprocessing values: {e}; export it again") from None
    return {**state, 'preprocess': pre, 'arch': state.get('arch')}

