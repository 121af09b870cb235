"""init_weights, LSUV and summary."""
from functools import partial

import pytest
import torch
from torch import nn

from conftest import tiny_cnn, toy_images
from miniai.activations import GeneralRelu
from miniai.conv import conv, get_model
from miniai.init import init_weights, lsuv_init, summary


def test_conv_bias_only_without_batchnorm():
    assert conv(1, 4, norm=nn.BatchNorm2d)[0].bias is None
    assert conv(1, 4)[0].bias is not None
    assert get_model()(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_init_weights_gives_kaiming_std():
    lin = nn.Linear(1000, 500)
    init_weights(lin, leaky=0.1, linear=True)
    want = (2 / (1 + 0.1 ** 2) / 1000) ** 0.5
    assert lin.weight.std().item() == pytest.approx(want, rel=0.02)
    cv = nn.Conv2d(100, 50, 3)
    init_weights(cv, leaky=0.1)
    assert cv.weight.std().item() == pytest.approx((2 / (1 + 0.1 ** 2) / 900) ** 0.5, rel=0.02)


def test_init_weights_leaves_linear_layers_alone_by_default():
    # the course initialises only convolutions; a linear layer keeps torch's own init
    lin = nn.Linear(1000, 500)
    before = lin.weight.clone()
    init_weights(lin, leaky=0.1)
    assert torch.equal(lin.weight, before)


def test_lsuv_gives_unit_variance_at_each_layer():
    torch.manual_seed(0)
    model = get_model(partial(GeneralRelu, leak=0.1, sub=0.4))
    xb = torch.randn(256, 1, 28, 28) * 3 + 1
    res = lsuv_init(model, xb)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(res) == len(convs)
    outs = []
    hooks = [c.register_forward_hook(lambda m, i, o: outs.append(o)) for c in convs]
    with torch.no_grad(): model(xb)
    for h in hooks: h.remove()
    for o in outs: assert abs(o.std().item() - 1) < 0.1 and abs(o.mean().item()) < 0.1


def test_summary_counts_params_and_flops():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
    s = summary(model, torch.randn(2, 1, 28, 28))
    assert [r['output'] for r in s.rows] == [(2, 4, 14, 14), (2, 4, 14, 14), (2, 784), (2, 10)]
    assert s.total_params == sum(p.numel() for p in model.parameters())
    assert s.rows[0]['mflops'] == pytest.approx(4 * 9 * 14 * 14 / 1e6)  # each weight once per output position
    assert s.rows[3]['mflops'] == pytest.approx(7840 / 1e6)
    text = str(s)
    assert text.splitlines()[0].split() == ['module', 'input', 'output', 'params', 'MFLOPS'] and 'Total' in text
    assert s._repr_markdown_().startswith('| module |')


def test_summary_of_a_learner_leaves_batchnorm_alone():
    from miniai.learner import TrainLearner
    model = get_model(norm=nn.BatchNorm2d)
    learn = TrainLearner(model, toy_images(), torch.nn.functional.cross_entropy)
    before = model[0][1].running_mean.clone()
    s = summary(learn)
    assert s.rows[0]['input'] == (64, 1, 28, 28) and torch.equal(before, model[0][1].running_mean)
