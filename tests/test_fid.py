"""FID and KID: against direct numpy computations and closed forms, and through ImageEval on a fixed feature model."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import DLs
from miniai.datasets import DataLoaders
from miniai.fid import (
    ImageEval,
    _calc_fid,
    _calc_kid,
    _calc_stats,
    _sqrtm_newton_schulz,
    _squared_mmd,
    fid_from_features,
    kid_from_features,
)
from miniai.learner import DeviceCB


def feats(n=400, d=8, seed=0, scale=1., shift=0.):
    """Correlated, non-centred features: rows of `z @ A * scale + 3 + shift`."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g) / math.sqrt(d)
    return (torch.randn(n, d, generator=torch.Generator().manual_seed(seed + 100)) @ a) * scale + 3 + shift


def numpy_fid(x, y):
    """The Fréchet distance written out in numpy: `|m1-m2|² + tr C1 + tr C2 - 2 tr (C1^½ C2 C1^½)^½`."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(c1)
    s1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(s1 @ c2 @ s1), 0, None)).sum()
    return ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * cross


def numpy_mmd2(x, y):
    """Unbiased MMD² with the kernel (a·b/d + 1)³, as explicit sums over pairs of distinct items."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


# ------------------------------------------------------------------------------------------------------ FID
def test_fid_of_a_set_with_itself_is_zero():
    x = feats()
    assert abs(fid_from_features(x, x)) < 1e-8
    assert abs(_calc_fid(*_calc_stats(x), *_calc_stats(x))) < 1e-8


def test_a_shift_of_the_features_adds_its_squared_length():
    # same covariance, means apart by c: the distance is exactly |c|²
    x, c = feats().double(), torch.linspace(-1, 1, 8, dtype=torch.float64)
    for k in (0.5, 1, 2):
        assert fid_from_features(x, x + k * c) == pytest.approx(k * k * c.square().sum().item(), rel=1e-9)


def test_fid_grows_as_the_spread_moves_away():
    x = feats(seed=0)
    fids = [fid_from_features(x, feats(seed=0, scale=s)) for s in (1., 1.2, 1.5, 2.)]
    assert fids[0] < 1e-8 and fids == sorted(fids) and fids[-1] > 1


def test_fid_agrees_with_a_direct_numpy_computation():
    x, y = feats(n=500, seed=1), feats(n=300, seed=2, scale=1.3, shift=0.2)
    want = numpy_fid(x, y)
    assert want > 0.5
    assert fid_from_features(x, y) == pytest.approx(want, rel=1e-9)
    assert _calc_fid(*_calc_stats(x), *_calc_stats(y)) == pytest.approx(want, rel=1e-9)


def test_fid_keeps_its_digits_for_features_far_from_zero():
    # torcheval's float32 sums of x xᵀ would lose the covariance of features near 1000 with a spread of 1
    x, y = feats(seed=1, shift=1000), feats(seed=2, scale=1.1, shift=1000)
    assert fid_from_features(x, y) == pytest.approx(numpy_fid(x, y), rel=1e-6)


def test_newton_schulz_square_root_squares_back():
    c = _calc_stats(feats())[1]
    r = _sqrtm_newton_schulz(c)
    assert r.dtype == torch.float64 and torch.allclose(r @ r, c.double(), atol=1e-5)


# ------------------------------------------------------------------------------------------------------ KID
def test_squared_mmd_agrees_with_the_sum_over_pairs():
    x, y = feats(n=12, d=4, seed=3).double(), feats(n=9, d=4, seed=4, shift=0.5).double()
    assert _squared_mmd(x, y).item() == pytest.approx(numpy_mmd2(x.numpy(), y.numpy()), rel=1e-10)


def test_kid_is_the_mean_mmd_over_matching_blocks():
    # 40 and 32 items, at most 50 per block: 4 blocks of 10 and of 8
    x, y = feats(n=40, d=4, seed=5), feats(n=32, d=4, seed=6, scale=1.2)
    xd, yd = x.double().numpy(), y.double().numpy()
    want = np.mean([numpy_mmd2(xd[10 * i:10 * i + 10], yd[8 * i:8 * i + 8]) for i in range(4)])
    assert kid_from_features(x, y) == pytest.approx(want, rel=1e-10)
    assert _calc_kid(x, y) == pytest.approx(want, rel=1e-10)
    # 200 items each, 20 per block: 10 blocks
    x, y = feats(n=200, d=4, seed=5), feats(n=200, d=4, seed=6)
    want = np.mean([numpy_mmd2(x[20 * i:20 * i + 20].double().numpy(), y[20 * i:20 * i + 20].double().numpy())
                    for i in range(10)])
    assert kid_from_features(x, y, maxs=20) == pytest.approx(want, rel=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    x, y = feats(n=2000, shift=-3).split(1000)        # two independent draws of one centred distribution
    same = kid_from_features(x, y)
    shifted = [kid_from_features(x, y + s) for s in (0.5, 1., 2.)]
    assert abs(same) < 0.1 * shifted[0] and shifted == sorted(shifted)


def test_bad_feature_sets_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match='same feature model'): fid_from_features(feats(d=8), feats(d=4))
    with pytest.raises(ValueError, match='at least 2 items'): fid_from_features(feats(n=1), feats())
    with pytest.raises(ValueError, match='give at least 8'): kid_from_features(feats(n=7), feats(n=100))


# ------------------------------------------------------------------------------------------------ ImageEval
def feature_model():
    """A fixed feature model with a BatchNorm (features must not depend on how samples are batched)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(36, 6), nn.BatchNorm1d(6), nn.Tanh())
    m[2].running_mean.normal_(); m[2].running_var.uniform_(0.5, 2)
    return m


def images(n, seed, shift=0.):
    return torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed)) + shift


@pytest.fixture
def ie():
    ref = images(300, 0)
    dl = DataLoader(TensorDataset(ref, torch.zeros(300, dtype=torch.long)), batch_size=64)
    return ImageEval(feature_model(), DataLoaders(dl, dl), cbs=[DeviceCB('cpu')])


def test_image_eval_scores_samples_against_the_reference_features(ie):
    model = feature_model().eval()
    with torch.no_grad(): ref = model(images(300, 0))
    assert torch.allclose(ie.feats, ref, atol=1e-6) and ie.feats.dtype == torch.float32
    assert torch.allclose(ie.stats[0], ref.double().mean(0), atol=1e-6)
    samp = images(130, 1, shift=0.3)
    with torch.no_grad(): fake = model(samp)
    assert torch.allclose(ie.get_feats(samp), fake, atol=1e-6)     # batched in 64s, BatchNorm in eval mode
    assert ie.fid(samp) == pytest.approx(numpy_fid(ref, fake), rel=1e-5)
    assert ie.kid(samp) == pytest.approx(kid_from_features(ref, fake), rel=1e-5)


def test_image_eval_ranks_closer_samples_lower(ie):
    fids = [ie.fid(images(200, 1, shift=s)) for s in (0., 0.5, 1.5)]
    kids = [ie.kid(images(200, 1, shift=s)) for s in (0., 0.5, 1.5)]
    assert fids == sorted(fids) and kids == sorted(kids) and fids[0] < 0.1 * fids[1]
    assert ie.fid(images(300, 0)) == pytest.approx(0, abs=1e-6)       # the reference set itself


def test_image_eval_leaves_its_learner_as_it_found_it(ie):
    dls, w = ie.learn.dls, [p.detach().clone() for p in ie.learn.model.parameters()]
    ie.fid(images(50, 2)); ie.kid(images(50, 2))
    assert ie.learn.dls is dls and all(torch.equal(a, b) for a, b in zip(w, ie.learn.model.parameters()))
    with pytest.raises(ValueError, match='at least 2 images'): ie.fid(images(1, 2))


def test_image_eval_takes_any_loaders_with_a_valid_set():
    ref = images(100, 0)
    dls = DLs([], [(ref[:50], torch.zeros(50)), (ref[50:], torch.zeros(50))])   # plain lists of batches
    ie = ImageEval(feature_model(), dls)
    assert ie.feats.shape == (100, 6) and ie.fid(ref) == pytest.approx(0, abs=1e-6)
