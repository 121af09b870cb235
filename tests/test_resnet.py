"""ResBlock and get_resnet: shapes, the zero-initialised identity start (`zero_bn`), and that the network learns."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import toy_images
import miniai.resnet
from miniai.activations import GeneralRelu
from miniai.learner import TrainLearner
from miniai.resnet import ResBlock, get_resnet


def test_all_names_resolve():
    ns = {}
    exec('from miniai.resnet import *', ns)
    assert set(miniai.resnet.__all__) <= set(ns)


@pytest.mark.parametrize('ni,nf,stride,out_hw', [(8, 8, 1, 28), (8, 16, 1, 28), (8, 16, 2, 14), (8, 8, 2, 14)])
def test_resblock_shapes(ni, nf, stride, out_hw):
    assert ResBlock(ni, nf, stride=stride)(torch.randn(2, ni, 28, 28)).shape == (2, nf, out_hw, out_hw)


def test_resblock_stride2_on_odd_size_matches_conv_path():
    assert ResBlock(4, 8, stride=2)(torch.randn(2, 4, 7, 7)).shape == (2, 8, 4, 4)


def test_resblock_shortcut_kinds():
    same, wider, strided = ResBlock(8, 8), ResBlock(8, 16), ResBlock(8, 8, stride=2)
    assert isinstance(same.idconv, nn.Identity) and isinstance(same.pool, nn.Identity)
    conv1x1 = wider.idconv[0]
    assert isinstance(conv1x1, nn.Conv2d) and conv1x1.kernel_size == (1, 1)
    assert isinstance(strided.pool, nn.AvgPool2d) and isinstance(strided.idconv, nn.Identity)


@pytest.mark.parametrize('ni,nf,stride', [(8, 8, 1), (8, 16, 1), (8, 16, 2)])
@pytest.mark.parametrize('train', [True, False])
def test_zero_bn_resblock_is_act_of_shortcut(ni, nf, stride, train):
    blk = ResBlock(ni, nf, stride=stride, act=nn.ReLU, norm=nn.BatchNorm2d, zero_bn=True).train(train)
    assert torch.count_nonzero(blk.convs[-1][-1].weight) == 0
    x = torch.randn(4, ni, 12, 12)
    with torch.no_grad(): want = F.relu(blk.idconv(blk.pool(x)))
    assert torch.equal(blk(x), want)
    if ni == nf and stride == 1: assert torch.equal(blk(x), F.relu(x))


def test_resblock_default_residual_branch_is_live():
    blk = ResBlock(8, 8, act=nn.ReLU, norm=nn.BatchNorm2d)
    assert torch.equal(blk.convs[-1][-1].weight, torch.ones(8))
    x = torch.randn(4, 8, 12, 12)
    assert not torch.allclose(blk(x), F.relu(x))


def test_get_resnet_passes_zero_bn_to_every_block():
    for zero_bn in (False, True):
        blocks = [m for m in get_resnet(nfs=(8, 16, 32), zero_bn=zero_bn) if isinstance(m, ResBlock)]
        assert len(blocks) == 3
        assert all(bool(b.convs[-1][-1].weight.eq(0).all()) == zero_bn for b in blocks)


def test_resblock_without_norm_and_custom_act():
    blk = ResBlock(4, 8, stride=2, act=partial(GeneralRelu, leak=0.1, sub=0.4), norm=None)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in blk.modules())
    assert blk(torch.randn(2, 4, 8, 8)).shape == (2, 8, 4, 4)


def test_resblock_rejects_bad_stride():
    with pytest.raises(ValueError, match='stride'): ResBlock(4, 4, stride=3)


def test_zero_bn_without_norm_is_refused():
    with pytest.raises(ValueError, match='norm'): ResBlock(4, 4, zero_bn=True)


def test_resblock_course_defaults_are_act_gr_and_no_norm():
    from miniai.resnet import _conv_block, act_gr
    blk = ResBlock(4, 8)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in blk.modules())
    acts = [m for m in blk.modules() if isinstance(m, GeneralRelu)]
    assert len(acts) == 2 and all((a.leak, a.sub) == (0.1, 0.4) for a in acts)  # in the branch and after the sum
    assert all(c.bias is not None for c in blk.convs.modules() if isinstance(c, nn.Conv2d))
    x = torch.randn(2, 4, 8, 8)
    s = blk.convs(x) + blk.idconv(x)
    torch.testing.assert_close(blk(x), F.leaky_relu(s, 0.1) - 0.4)  # leaky and shifted after the sum
    assert isinstance(act_gr(), GeneralRelu)
    branch = _conv_block(4, 8, stride=2)
    assert branch(x).shape == (2, 8, 4, 4) and isinstance(branch[0][-1], GeneralRelu) and len(branch[1]) == 1


def test_get_resnet_output_shape_and_layout():
    model = get_resnet()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    blocks = [m for m in model if isinstance(m, ResBlock)]
    assert len(blocks) == 6 and blocks[0].convs[0][0].kernel_size == (5, 5)
    assert isinstance(model[-1], nn.BatchNorm1d) and model[-2].in_features == 512
    assert get_resnet(nfs=(8, 16), n_classes=3)(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_get_resnet_learns_toy_images():
    torch.manual_seed(0)
    dls = toy_images(n=64, bs=32)
    learn = TrainLearner(get_resnet(nfs=(8, 16)), dls, F.cross_entropy, lr=3e-2, opt_func=torch.optim.Adam)
    x, y = dls.valid.dataset.tensors

    def loss():  # batch statistics: 6 steps are too few for BatchNorm's running averages to settle
        with torch.no_grad(): return F.cross_entropy(learn.model.train()(x), y).item()
    before = loss()
    learn.fit(3, valid=False)
    assert loss() < 0.85 * before
