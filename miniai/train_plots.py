"""The figures `miniai train` writes beside metrics.csv: `plot_training` (loss, accuracy, lr) and `save_figure`.

Matplotlib figures made outside pyplot: they need no display and leave the backend alone.
Shown in nbs/12_inference.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ['plot_training', 'save_figure', 'PHASE_COLORS']

# one colour per phase in every panel, so train in one panel is never valid's colour in the next
PHASE_COLORS = {'train': 'C0', 'valid': 'C1'}


def plot_training(history: Sequence[dict], losses: Sequence[float] = (), lrs: Sequence[float] = (),
                  steps_per_epoch: int = 1, first_step: int = 0, metric: str = 'accuracy',
                  lr_steps: Sequence[int] | None = None):
    """One figure, three panels, in the names of the metrics rows: `train_loss` per step and `train_loss`,
    `valid_loss` per epoch; `train_<metric>` and `valid_<metric>` per epoch; `lr` per optimizer step. Each
    phase keeps its colour in every panel (train blue, valid orange).

    `history` holds MetricsCB rows (epochs 0-based, placed at the step that ends them: `(epoch + 1) *
    steps_per_epoch`); `losses` are per-step values from step `first_step + 1` on; `lrs` are per optimizer step,
    at the steps `lr_steps` (default: one a step from `first_step + 1`), so that under gradient accumulation and
    after a resume every panel shares one step axis covering the whole run.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    # a Figure outside pyplot: no backend is chosen or changed (a notebook calling this keeps its inline plots)
    fig = Figure(figsize=(15, 4))
    ax_loss, ax_metric, ax_lr = fig.subplots(1, 3)
    if len(losses):
        ax_loss.plot(range(first_step + 1, first_step + len(losses) + 1), losses, lw=0.8, alpha=0.4,
                     color=PHASE_COLORS['train'], label='train_loss (per step)')
    for phase, style in (('train', 's-'), ('valid', 'o-')):
        rows = [r for r in history if f'{phase}_loss' in r]
        ax_loss.plot([(r['epoch'] + 1) * steps_per_epoch for r in rows], [r[f'{phase}_loss'] for r in rows], style,
                     color=PHASE_COLORS[phase], label=f'{phase}_loss (per epoch)')
        rows = [r for r in history if f'{phase}_{metric}' in r]
        if rows:
            ax_metric.plot([r['epoch'] for r in rows], [r[f'{phase}_{metric}'] for r in rows], style,
                           color=PHASE_COLORS[phase], label=f'{phase}_{metric}')
    ax_loss.set(xlabel='step', ylabel='loss', title='loss')
    ax_metric.set(xlabel='epoch', ylabel=metric, title=metric)
    ax_metric.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(lrs):
        xs = list(lr_steps)[:len(lrs)] if lr_steps is not None else range(first_step + 1, first_step + len(lrs) + 1)
        ax_lr.plot(xs, lrs)
    ax_lr.set(xlabel='step', ylabel='lr', title='lr')
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
