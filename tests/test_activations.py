"""GeneralRelu, hooks that always go away, and ActivationStats' numbers and plots."""

import fastcore.all as fc
import matplotlib.figure
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_cnn, toy_images
from miniai.activations import ActivationStats, GeneralRelu, Hook, Hooks
from miniai.core import Callback
from miniai.learner import TrainLearner


def test_general_relu_leak_sub_and_clamp():
    x = torch.tensor([-2., 0., 1., 5.])
    got = GeneralRelu(leak=0.1, sub=0.4, maxv=3.)(x)
    assert torch.allclose(got, torch.tensor([-0.6, -0.4, 0.6, 3.]))
    assert torch.equal(GeneralRelu()(x), F.relu(x))


@pytest.mark.parametrize('leak', [0.1, None])
def test_general_relu_gradients_match_the_formula_and_leave_the_input_alone(leak):
    x = torch.linspace(-3, 3, 13, requires_grad=True)
    kept = x.detach().clone()
    GeneralRelu(leak=leak, sub=0.4)(x).pow(2).sum().backward()
    want_x = x.detach().clone().requires_grad_()
    ((F.leaky_relu(want_x, leak) if leak else F.relu(want_x)) - 0.4).pow(2).sum().backward()
    assert torch.allclose(x.grad, want_x.grad)
    assert torch.equal(x.detach(), kept)


def hooked_modules(model): return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_context_removes_hooks_even_on_error():
    model = tiny_cnn()
    seen = []
    with pytest.raises(ValueError):
        with Hooks(list(model.children())[:2], lambda h, m, i, o: seen.append(o.shape)):
            model(torch.randn(2, 1, 28, 28))
            assert hooked_modules(model) == 2
            raise ValueError
    assert hooked_modules(model) == 0 and len(seen) == 2
    with Hook(model[0], lambda h, m, i, o: None): pass
    assert hooked_modules(model) == 0


class Fail(Callback):
    def __init__(self, exc): self.exc = exc
    def after_batch(self, learn): raise self.exc


@pytest.mark.parametrize('exc', [RuntimeError('x'), KeyboardInterrupt()])
def test_activation_stats_hooks_are_gone_after_a_raising_fit(exc):
    astats = ActivationStats(fc.risinstance(nn.ReLU))
    learn = TrainLearner(tiny_cnn(), toy_images(), F.cross_entropy, cbs=[astats])
    with pytest.raises(type(exc)): learn.fit(1, cbs=[Fail(exc)])
    assert hooked_modules(learn.model) == 0


def test_stats_shapes_are_layers_by_training_batches():
    astats = ActivationStats(fc.risinstance(nn.ReLU))
    dls = toy_images(n=230, bs=64)  # 4 training batches an epoch
    TrainLearner(tiny_cnn(), dls, F.cross_entropy, lr=0.01, cbs=[astats]).fit(2)
    assert len(astats.hooks) == 2
    for h in astats.hooks:
        assert len(h.means) == len(h.stds) == len(h.hists) == 8 and h.hists[0].shape == (40,)
        assert all(isinstance(v, float) for v in h.means) and h.hists[0].device.type == 'cpu'


def test_stats_match_a_direct_computation():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    astats = ActivationStats(fc.risinstance(nn.ReLU))
    x = torch.randn(16, 4)
    from torch.utils.data import DataLoader, TensorDataset

    from conftest import DLs
    dls = DLs(DataLoader(TensorDataset(x, torch.randn(16, 3)), batch_size=16), None)
    learn = TrainLearner(model, dls, F.mse_loss, lr=0., cbs=[astats])
    learn.fit(1, valid=False)
    acts = F.relu(model[0](x))
    h = astats.hooks[0]
    assert h.means[0] == pytest.approx(acts.mean().item(), rel=1e-5)
    assert h.stds[0] == pytest.approx(acts.std().item(), rel=1e-5)
    assert h.hists[0].sum().item() == acts.numel()  # every activation of this batch is in [0, 10]


def test_plots_return_figures_headless():
    astats = ActivationStats(fc.risinstance(nn.ReLU))
    TrainLearner(tiny_cnn(), toy_images(), F.cross_entropy, cbs=[astats]).fit(1)
    for fig in (astats.color_dim(), astats.dead_chart(), astats.plot_stats()):
        assert isinstance(fig, matplotlib.figure.Figure) and fig.axes


def test_filter_matching_nothing_warns():
    astats = ActivationStats(fc.risinstance(GeneralRelu))
    with pytest.warns(UserWarning, match='matched no module'):
        TrainLearner(tiny_cnn(), toy_images(), F.cross_entropy, cbs=[astats]).fit(1)


def test_with_hist_false_still_computed_histograms():
    calls = []
    histc = torch.Tensor.histc
    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.Tensor, 'histc', lambda *a, **k: calls.append(1) or histc(*a, **k))
        stats = ActivationStats(lambda mod: isinstance(mod, nn.Conv2d), with_hist=False)
        TrainLearner(tiny_cnn(), toy_images(n=64, bs=32), F.cross_entropy, cbs=[stats]).fit(1)
    assert calls == [] and all(len(h.means) == 2 and h.hists == [] for h in stats)
    with pytest.raises(ValueError, match='with_hist=True'): stats.color_dim()
