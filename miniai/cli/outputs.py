"""The files of a `miniai train` run besides its checkpoints: config.json (`write_config`, `mark_final_files`),
metrics.csv after a resume (`rewrite_csv`), and the final files written after the last epoch (`write_plots`,
`finish`: training.png, confusion.png, model.pt).

Every one is written atomically (`miniai.files.atomic_write`): a reader never sees half a file and a failed write
leaves the previous file as it was. Described in docs/reliability.md.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from ..files import atomic_write
from .errors import writing

__all__ = ['write_config', 'mark_final_files', 'write_plots', 'finish', 'rewrite_csv', 'final_message',
           'FINAL_FILES']

FINAL_FILES = ('training.png', 'confusion.png', 'model.pt')   # written after the last epoch, in this order


def write_config(args, out: Path, device, world: int, facts: dict):
    """config.json: the run's flags (`--data` as the absolute path it was read from) and `facts` (what identifies its
    data, ...), read back by --resume."""
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != 'resume'}
    atomic_write(out / 'config.json', json.dumps({**config, 'device': str(device), 'world_size': world, **facts},
                                                 indent=2))


def mark_final_files(out: Path):
    """Record in config.json that the final files were written from the present last.pt (by its SHA-256), so that a
    resume can tell a complete run from one stopped while writing them."""
    from ..files import sha256_file
    if not (out / 'last.pt').is_file(): return
    cfg = json.loads((out / 'config.json').read_text())
    cfg['final_files_from'] = sha256_file(out / 'last.pt')
    atomic_write(out / 'config.json', json.dumps(cfg, indent=2))


def write_plots(learn, out: Path, n_batches: int):
    """training.png from the metrics history, the per-step losses and lrs (the whole run's: ProgressCB and
    RecorderCB keep theirs in the checkpoints), on one step axis."""
    from ..callbacks import MetricsCB, ProgressCB
    from ..sgd import RecorderCB
    from ..train_plots import plot_training, save_figure
    metrics = next(cb for cb in learn.cbs if isinstance(cb, MetricsCB))
    progress = next(cb for cb in learn.cbs if isinstance(cb, ProgressCB))
    rec = next(cb for cb in learn.cbs if isinstance(cb, RecorderCB))
    save_figure(plot_training(metrics.history, progress.losses, rec.recs['lr'], n_batches,
                              first_step=progress.first_step, lr_steps=rec.steps), out / 'training.png')
    return metrics


def finish(learn, valid_dl, out: Path, device):
    """With the best epoch's weights (best.pt): confusion.png on the validation set and model.pt for
    `miniai predict`."""
    import torch.nn.functional as F

    from ..callbacks import DeviceCB
    from ..device import unwrap_model
    from ..interpret import Interpretation
    from ..learner import TrainLearner
    from ..predictions import fashion_preprocess
    from ..train_plots import save_figure
    # a plain learner around the same model: none of the run's callbacks (DDP, logging, checkpoints) take part
    best = TrainLearner(unwrap_model(learn.model), loss_func=F.cross_entropy, cbs=[DeviceCB(device)])
    if (out / 'best.pt').is_file(): best.load(out / 'best.pt', weights_only=True)
    best.preprocess = fashion_preprocess()
    interp = Interpretation.from_learner(best, valid_dl)
    save_figure(interp.plot_confusion_matrix(title='validation set (the test images), best epoch'),
                out / 'confusion.png')
    with writing(out / 'model.pt'): best.export(out / 'model.pt')   # torch reports some full disks as RuntimeError


def final_message(metrics, out: Path) -> str:
    """The run's last line: the last epoch's valid_accuracy, in the rows' names, and where the files are."""
    final = metrics.history[-1]
    best = max(metrics.history, key=lambda r: r['valid_accuracy'])    # the first of equals, as best.pt keeps it
    kept = '' if best is final else (f"; model.pt has epoch {best['epoch']}'s weights (valid_accuracy "
                                     f"{best['valid_accuracy']:.4f})")
    return f"epoch {final['epoch']}: valid_accuracy {final['valid_accuracy']:.4f}{kept}; results in {out}"


def rewrite_csv(path: Path, history: list[dict]):
    """metrics.csv rewritten from the checkpoint's rows, so that a resumed run's file holds each epoch once (rows
    written after the checkpoint, by a run that was stopped, are dropped)."""
    import csv
    buf = io.StringIO()
    if history:
        w = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator='\r\n', restval='')
        w.writeheader()
        w.writerows(history)
    atomic_write(path, buf.getvalue())
