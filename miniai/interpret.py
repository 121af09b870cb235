"""Where a classifier goes wrong: `Interpretation` (confusion matrix, most confused pairs, top losses, results).

As fastai's `ClassificationInterpretation`: build it with `Interpretation.from_learner(learn)` (one pass over the
validation set), then look at counts and images. The confusion matrix is torcheval's; plots are matplotlib figures.
Explained in nbs/12_inference.ipynb.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .augment import class_probs
from .predictions import preprocess_of
from .preprocess import Preprocess

__all__ = ['Interpretation']


class Interpretation:
    """Probabilities `preds` (`(N, C)`, each row >= 0 summing to 1: what `learn.get_preds()` returns for a
    cross-entropy learner) of a classifier against targets `targs` (`(N,)` class indices), with the `inputs`
    (model inputs, for showing) and `classes` (names; default `'0'..'C-1'`); `preprocess` (a `Preprocess`) turns
    inputs back into images for the plots. Raw outputs (logits) are refused: pass `preds.softmax(1)`.

    `probs` (the same probabilities), `decoded` (argmax) and `losses` (per-item cross entropy, `-log p[target]`)
    are computed once here.
    """
    def __init__(self, preds: torch.Tensor, targs: torch.Tensor, inputs: torch.Tensor | None = None,
                 classes: Sequence[str] | None = None, preprocess: Preprocess | None = None):
        if preds.dim() != 2:
            raise ValueError(f"preds must be (N, n_classes) probabilities, got shape {tuple(preds.shape)}")
        if targs.shape != preds.shape[:1]:
            raise ValueError(f"targs must be (N,) class indices for preds of shape {tuple(preds.shape)}, got "
                             f"{tuple(targs.shape)}")
        if classes is not None and len(classes) != preds.shape[1]:
            raise ValueError(f"{len(classes)} class names for {preds.shape[1]} model outputs")
        preds = preds.float()
        sums = preds.sum(1)
        if len(preds) and (not bool(torch.isfinite(preds).all()) or bool((preds < 0).any())
                           or not torch.allclose(sums, torch.ones_like(sums), atol=1e-3)):
            raise ValueError("preds must be probabilities (rows of values >= 0 summing to 1, as learn.get_preds() "
                             "gives for a cross-entropy learner); for raw model outputs (logits) pass "
                             "preds.softmax(1), or build it with Interpretation.from_learner(learn)")
        self.preds, self.targs, self.inputs, self.preprocess = preds, targs.long(), inputs, preprocess
        self.classes = list(classes) if classes is not None else [str(i) for i in range(preds.shape[1])]
        self.probs, self.decoded = self.preds, self.preds.argmax(1)
        p_target = self.probs.gather(1, self.targs[:, None]).squeeze(1)
        self.losses = -p_target.clamp_min(torch.finfo(torch.float32).tiny).log()

    @classmethod
    def from_learner(cls, learn, dl=None) -> Interpretation:
        """Run `learn.get_preds(dl)` (default: the validation set; a learner from `load_learner` needs `dl`) for
        the softmax probabilities, whatever the learner's loss, and keep inputs, probabilities and targets; class
        names and the preprocessing come from `learn.preprocess` or `learn.dls.preprocess` when set."""
        inputs, probs, targs = learn.get_preds(dl, with_input=True, act=class_probs)
        try: pre = preprocess_of(learn)
        except ValueError: pre = None
        return cls(probs, targs, inputs, classes=(pre.classes or None) if pre is not None else None, preprocess=pre)

    def confusion_matrix(self) -> torch.Tensor:
        """Counts `(C, C)`: row = actual class, column = predicted class (torcheval's convention)."""
        from .metrics import torcheval_metrics
        torcheval_metrics()   # torcheval imported without torch's jit deprecation warning, before its functional part
        from torcheval.metrics.functional import multiclass_confusion_matrix
        return multiclass_confusion_matrix(self.decoded, self.targs, len(self.classes)).long()

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """`(actual, predicted, count)` for every pair of different classes seen at least `min_val` times, most
        frequent first."""
        cm = self.confusion_matrix()
        pairs = [(self.classes[a], self.classes[p], int(cm[a, p])) for a in range(len(cm)) for p in range(len(cm))
                 if a != p and cm[a, p] >= min_val]
        return sorted(pairs, key=lambda t: -t[2])

    def top_losses(self, k: int | None = None, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The `k` (default: all) largest per-item losses (smallest with `largest=False`) and their indices."""
        k = len(self.losses) if k is None else min(k, len(self.losses))
        return self.losses.topk(k, largest=largest)

    def plot_confusion_matrix(self, normalize: bool = False, figsize=None, cmap: str = 'Blues', title: str = ''):
        """The confusion matrix as a heat map with the counts (or row fractions with `normalize`); returns the
        figure."""
        import matplotlib.pyplot as plt
        cm = self.confusion_matrix().float()
        if normalize: cm = cm / cm.sum(1, keepdim=True).clamp_min(1)
        n = len(self.classes)
        fig, ax = plt.subplots(figsize=figsize or (max(4, 0.6 * n + 2),) * 2)
        ax.imshow(cm.numpy(), cmap=cmap)
        ax.set(xticks=range(n), yticks=range(n), xlabel='predicted', ylabel='actual', title=title or
               ('confusion matrix (fraction of each actual class)' if normalize else 'confusion matrix'))
        ax.set_xticklabels(self.classes, rotation=90)
        ax.set_yticklabels(self.classes)
        thresh = float(cm.max()) / 2
        for a in range(n):
            for p in range(n):
                v = float(cm[a, p])
                ax.text(p, a, f'{v:.2f}' if normalize else f'{int(v)}', ha='center', va='center', fontsize=7,
                        color='white' if v > thresh else 'black')
        fig.tight_layout()
        return fig

    def plot_top_losses(self, k: int = 9, nrows: int | None = None, imsize: float = 2):
        """The `k` worst-predicted images, titled predicted / actual / loss / probability of the predicted class;
        returns the figure."""
        _, idx = self.top_losses(k)
        titles = [f"{self.classes[self.decoded[i]]} / {self.classes[self.targs[i]]}\n"
                  f"{float(self.losses[i]):.2f} / {float(self.probs[i, self.decoded[i]]):.2f}" for i in idx]
        return self._grid(idx, titles, nrows, imsize, 'predicted / actual / loss / probability')

    def show_results(self, n: int = 9, nrows: int | None = None, imsize: float = 2):
        """The first `n` images titled predicted / actual (green when right, red when wrong); returns the figure."""
        idx = torch.arange(min(n, len(self.targs)))
        titles = [f"{self.classes[self.decoded[i]]} / {self.classes[self.targs[i]]}" for i in idx]
        fig = self._grid(idx, titles, nrows, imsize, 'predicted / actual')
        for ax, i in zip(fig.axes, idx.tolist()):
            ax.title.set_color('green' if self.decoded[i] == self.targs[i] else 'red')
        return fig

    def _grid(self, idx, titles, nrows, imsize, suptitle):
        from .datasets import get_grid, show_image
        if self.inputs is None: raise ValueError("no inputs to show: build with Interpretation.from_learner(learn)")
        ims = self.inputs[idx]
        if self.preprocess is not None: ims = self.preprocess.decode(ims)
        fig, axs = get_grid(len(ims), nrows=nrows, imsize=imsize)
        for im, t, ax in zip(ims, titles, axs.flat): show_image(im, ax=ax, title=t, cmap='gray')
        for ax in axs.flat: ax.title.set_fontsize(8)
        fig.suptitle(suptitle)
        fig.tight_layout()
        return fig
