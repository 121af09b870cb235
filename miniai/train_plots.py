"""The figures `miniai train` writes beside metrics.csv: `plot_training` (loss, accuracy, lr) and `save_figure`.

Matplotlib figures made outside pyplot: they need no display and leave the backend alone.
Shown in nbs/12_inference.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ['plot_training', 'save_figure']


def plot_training(history: Sequence[dict], losses: Sequence[float] = (), lrs: Sequence[float] = (),
                  n_batches: int = 1, first_batch: int = 0, metric: str = 'accuracy',
                  lr_first_batch: int | None = None):
    """One figure, three panels: the loss (per training batch, and per epoch for train and eval), `metric` per epoch
    (train and eval), the lr per training batch.

    `history` holds MetricsCB rows; `losses` and `lrs` are per-batch values that start at batch `first_batch`
    (`lr_first_batch` for `lrs`, default `first_batch`: a resumed run may record only its own batches); `n_batches`
    per epoch places the epoch points on the batch axis.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    # a Figure outside pyplot: no backend is chosen or changed (a notebook calling this keeps its inline plots)
    fig = Figure(figsize=(15, 4))
    ax_loss, ax_metric, ax_lr = fig.subplots(1, 3)
    batches = range(first_batch + 1, first_batch + len(losses) + 1)
    if len(losses): ax_loss.plot(batches, losses, lw=0.8, alpha=0.6, label='train (per batch)')
    for phase, style in (('train', 's-'), ('eval', 'o-')):
        rows = [r for r in history if r['phase'] == phase]
        ends = [(r['epoch'] + 1) * n_batches for r in rows]
        ax_loss.plot(ends, [r['loss'] for r in rows], style, label=f'{phase} (per epoch)')
        if rows and metric in rows[0]:
            ax_metric.plot([r['epoch'] + 1 for r in rows], [r[metric] for r in rows], style, label=phase)
    ax_loss.set(xlabel='batch', ylabel='loss', title='loss')
    ax_metric.set(xlabel='epoch', ylabel=metric, title=metric)
    ax_metric.xaxis.set_major_locator(MaxNLocator(integer=True))
    lr0 = first_batch if lr_first_batch is None else lr_first_batch
    if len(lrs): ax_lr.plot(range(lr0 + 1, lr0 + len(lrs) + 1), lrs)
    ax_lr.set(xlabel='batch', ylabel='lr', title='learning rate')
    for ax in (ax_loss, ax_metric):
        if ax.get_legend_handles_labels()[0]: ax.legend()
    fig.tight_layout()
    return fig


def save_figure(fig, path) -> Path:
    """Save `fig` as a PNG at `path` through a temporary file and a rename (never a half-written image), then close
    it."""
    import matplotlib.pyplot as plt

    from .files import atomic_write
    try: return atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=100, bbox_inches='tight'))
    finally: plt.close(fig)
