"""How close generated images are to real ones: FID and KID in the feature space of a trained classifier.

`ImageEval(model, dls)` runs `model` (typically a Fashion-MNIST classifier with its last layers removed) over the
validation set of `dls` once, keeps those features as the reference, and then scores any batch of samples:
`ie.fid(samples)` and `ie.kid(samples)`. Lower is closer; the same images score about 0.

- FID (Fréchet Inception Distance; Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
  Nash Equilibrium") fits a Gaussian to each set of features and measures the Fréchet distance between them:
  `|m1 - m2|² + tr(C1) + tr(C2) - 2 tr((C1 C2)^½)`. It is computed by torcheval's `FrechetInceptionDistance`
  with the classifier's features in place of Inception's, accumulated in float64.
- KID (Kernel Inception Distance; Bińkowski et al., "Demystifying MMD GANs") is the unbiased squared maximum mean
  discrepancy with the kernel `(a·b/d + 1)³`, averaged over blocks of the two sets. It has no bias from the
  number of samples, so small sample sets compare fairly; it is computed here directly.

The figures depend on the feature model: they compare runs scored with the same classifier, not with published
Inception-based numbers. `fid_from_features` and `kid_from_features` score two feature tensors directly.
How the course's notebooks use it, and how it differs from the course's module: docs/course.md.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .augment import capture_preds
from .datasets import DataLoaders
from .learner import TrainLearner
from .metrics import torcheval_metrics

__all__ = ['ImageEval', 'fid_from_features', 'kid_from_features']


# ---------------------------------------------------------------------------------------------------- FID
class _FeatureRows(nn.Module):
    """The feature model torcheval's FID runs: it only accepts 4-d, 3-channel "images", so features of shape
    `(N, d)` go in as an `(N, 3, 1, d)` view (see `_as_images`) and this reads them back."""
    def forward(self, x): return x[:, 0, 0]


def _as_images(feats: torch.Tensor) -> torch.Tensor:
    return feats.double()[:, None, None].expand(-1, 3, 1, -1)


class _FID64(torcheval_metrics().FrechetInceptionDistance):
    """torcheval's `FrechetInceptionDistance` over `d` features read by `_FeatureRows`, with float64 sums.

    torcheval derives the covariance from sums of `x xᵀ`; in its default float32 that loses digits when the
    features' means are large against their spread, so the states are declared again in float64 (the metric's own
    way of declaring state). The figure is then that of a direct float64 computation to about 12 digits.
    """
    def __init__(self, d: int):
        super().__init__(model=_FeatureRows(), feature_dim=d, device=torch.device('cpu'))
        for name in ('real_sum', 'fake_sum'): self._add_state(name, torch.zeros(d, dtype=torch.float64))
        for name in ('real_cov_sum', 'fake_cov_sum'): self._add_state(name, torch.zeros(d, d, dtype=torch.float64))


def _features(x, what: str) -> torch.Tensor:
    """`x` as a 2-d float tensor on the CPU, one row of features per item, at least two rows."""
    x = torch.as_tensor(x).detach().cpu()
    x = x.flatten(1) if x.dim() > 2 else x[:, None] if x.dim() == 1 else x
    if len(x) < 2: raise ValueError(f"{what} has {len(x)} rows of features: a covariance needs at least 2 items")
    return x


def _check_dims(real: torch.Tensor, fake: torch.Tensor):
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"the two sets have {real.shape[1]} and {fake.shape[1]} features per item: score both with "
                         "the same feature model")


def fid_from_features(real, fake) -> float:
    """The FID between two sets of features, `(N, d)` and `(M, d)` tensors (more dimensions are flattened)."""
    real, fake = _features(real, 'real'), _features(fake, 'fake')
    _check_dims(real, fake)
    m = _FID64(real.shape[1])
    m.update(_as_images(real), is_real=True).update(_as_images(fake), is_real=False)
    return m.compute().item()


# ---------------------------------------------------------------------------------------------------- KID
def _squared_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The unbiased estimate of MMD² between the rows of `x` `(..., m, d)` and of `y` `(..., n, d)` with the kernel
    `k(a, b) = (a·b/d + 1)³`; leading dimensions are batch dimensions."""
    def kernel(a, b): return (a @ b.transpose(-2, -1) / a.shape[-1] + 1) ** 3
    def off_diagonal_sum(k): return k.sum((-2, -1)) - k.diagonal(0, -2, -1).sum(-1)
    m, n = x.shape[-2], y.shape[-2]
    return (off_diagonal_sum(kernel(x, x)) / (m * (m - 1)) + off_diagonal_sum(kernel(y, y)) / (n * (n - 1))
            - 2 * kernel(x, y).sum((-2, -1)) / (m * n))


def _blocks(n_items: int, n_blocks: int) -> list[slice]:
    """`n_blocks` consecutive slices covering `range(n_items)`, their sizes differing by at most one."""
    bounds = [round(i * n_items / n_blocks) for i in range(n_blocks + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def kid_from_features(real, fake, maxs: int = 50) -> float:
    """The KID between two sets of features: the mean of `_squared_mmd` over matching blocks of both sets, with
    about `maxs` items per block of the smaller set and at least 4 blocks (so each block needs 2 items of each)."""
    real, fake = _features(real, 'real').double(), _features(fake, 'fake').double()
    _check_dims(real, fake)
    n = max(math.ceil(min(len(real), len(fake)) / maxs), 4)
    if min(len(real), len(fake)) < 2 * n:
        raise ValueError(f"KID splits each set into {n} blocks of at least 2 items: got {len(real)} real and "
                         f"{len(fake)} generated items; give at least {2 * n} of each")
    return sum(_squared_mmd(real[a], fake[b]) for a, b in zip(_blocks(len(real), n), _blocks(len(fake), n))).item() / n


# ------------------------------------------------------------------------- the course's helpers on statistics
def _sqrtm_newton_schulz(mat: torch.Tensor, num_iters: int = 100) -> torch.Tensor:
    """A square root of the matrix `mat` (with eigenvalues of positive real part) by the coupled Newton-Schulz
    iteration, in float64; it stops when `res @ res` matches `mat` to a relative 1e-6."""
    mat = mat.double()
    norm = mat.norm()
    eye = torch.eye(len(mat), dtype=mat.dtype, device=mat.device)
    y, z = mat / norm, eye.clone()            # y -> sqrt(mat/norm), z -> its inverse
    for _ in range(num_iters):
        t = (3 * eye - z @ y) / 2
        y, z = y @ t, t @ z
        res = y * norm.sqrt()
        if (mat - res @ res).norm() / norm <= 1e-6: break
    return res


def _calc_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and covariance of the rows of `feats` (the Gaussian that FID fits), in float64."""
    feats = _features(feats, 'feats').double()
    return feats.mean(0), feats.T.cov()


def _calc_fid(m1: torch.Tensor, c1: torch.Tensor, m2: torch.Tensor, c2: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians `(m1, c1)` and `(m2, c2)`, in float64.

    `tr((C1 C2)^½)` is computed as `tr((S C2 S)^½)` with `S = C1^½`: the same eigenvalues, but of a symmetric
    matrix, whose square root numerical noise cannot make complex.
    """
    m1, c1, m2, c2 = (t.double() for t in (m1, c1, m2, c2))
    w, v = torch.linalg.eigh(c1)
    s = (v * w.clamp(min=0).sqrt()) @ v.T
    tr_sqrt = torch.linalg.eigvalsh(s @ c2 @ s).clamp(min=0).sqrt().sum()
    return ((m1 - m2).square().sum() + c1.trace() + c2.trace() - 2 * tr_sqrt).item()


def _calc_kid(x: torch.Tensor, y: torch.Tensor, maxs: int = 50) -> float:
    """The KID between feature sets `x` and `y` (see `kid_from_features`)."""
    return kid_from_features(x, y, maxs)


# ----------------------------------------------------------------------------------------------- ImageEval
def _noop_loss(preds, *targets):
    """No loss: the evaluation learner only runs the model forward."""
    return preds


class ImageEval:
    """Scores generated images against the validation set of `dls` by FID and KID in the features of `model`.

    `model` maps a batch of images (as the loaders give them, and as the samples will be) to one feature vector
    per image; the course takes its Fashion-MNIST classifier and deletes the last layers. The reference features
    are computed once here, with a `TrainLearner` over `dls.valid` and the callbacks `cbs` (e.g. `DeviceCB()`
    to run on the GPU). `ie.learn`, `ie.feats` (reference features, float32 on the CPU) and `ie.stats` (their
    mean and covariance) are kept; `fid(samp)` and `kid(samp)` return floats.
    """
    def __init__(self, model: nn.Module, dls, cbs=None):
        self.learn = TrainLearner(model, dls, loss_func=_noop_loss, cbs=cbs)
        self.feats = self._run_model()
        self.stats = _calc_stats(self.feats)
        self._real = _FID64(self.feats.shape[1]).update(_as_images(self.feats), is_real=True)

    def _run_model(self) -> torch.Tensor:
        return _features(capture_preds(self.learn)[0].float(), 'the model output')

    def get_feats(self, samp: torch.Tensor) -> torch.Tensor:
        """The features of images `samp` (a batch shaped as the model's input), float32 on the CPU. The samples
        go through in batches the size of `dls.valid`'s, with the learner's callbacks."""
        if not isinstance(samp, torch.Tensor) or samp.dim() < 2 or len(samp) < 2:
            raise ValueError(f"samp must be a batch of at least 2 images as one tensor, got "
                             f"{tuple(samp.shape) if isinstance(samp, torch.Tensor) else type(samp).__name__}")
        bs = getattr(self.learn.dls.valid, 'batch_size', None) or len(samp)
        batches = [(b, torch.zeros(len(b), dtype=torch.long)) for b in samp.split(bs)]
        dls = self.learn.dls
        self.learn.dls = DataLoaders([], batches)
        try: return self._run_model()
        finally: self.learn.dls = dls

    def fid(self, samp: torch.Tensor) -> float:
        """FID of images `samp` against the reference set (computed by torcheval, see the module's docstring)."""
        fake = self.get_feats(samp)
        _check_dims(self.feats, fake)
        m = _FID64(fake.shape[1]).merge_state([self._real])
        return m.update(_as_images(fake), is_real=False).compute().item()

    def kid(self, samp: torch.Tensor) -> float:
        """KID of images `samp` against the reference set."""
        return kid_from_features(self.feats, self.get_feats(samp))
