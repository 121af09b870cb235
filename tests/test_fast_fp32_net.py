"""The float32 route's net options in benchmarks/time_to_accuracy.py (LeakyReLU in place, no norm after the stem)
and benchmarks/step_time.py, which times them. No data needed: random images and tiny widths."""
import pytest
import torch
from torch import nn

from conftest import load_tool
from miniai.layers import GeneralRelu


@pytest.fixture(scope='module')
def tta(): return load_tool('time_to_accuracy', 'benchmarks')


def acts(model): return [m for m in model.modules() if isinstance(m, (nn.LeakyReLU, GeneralRelu))]


def test_the_stem_loses_its_norm_and_gains_a_bias(tta):
    general = tta.make_model('net', [8, 16, 32])
    lean = tta.make_model('net', [8, 16, 32], act='leaky', stem_norm=False)
    assert isinstance(general[0][1], nn.BatchNorm2d) and general[0][0].bias is None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in lean[0]) and lean[0][0].bias is not None
    # only the stem's norm goes: every later conv keeps its own
    n_norms = [sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) for net in (general, lean)]
    assert n_norms[1] == n_norms[0] - 1


def test_leaky_keeps_the_slope_without_the_shift_and_works_in_place(tta):
    general, lean = tta.make_model('net', [8, 16, 32]), tta.make_model('net', [8, 16, 32], act='leaky')
    assert len(acts(lean)) == len(acts(general)) > 0
    assert all(type(a) is nn.LeakyReLU and a.inplace and a.negative_slope == 0.1 for a in acts(lean))
    x = torch.tensor([-2., 0.5])
    assert torch.allclose(acts(lean)[0](x.clone()), torch.tensor([-0.2, 0.5]))
    assert torch.allclose(acts(general)[0](x), torch.tensor([-0.6, 0.1]))   # GeneralRelu(0.1, sub=0.4)


def test_in_place_activations_give_the_gradients_of_out_of_place_ones(tta):
    torch.manual_seed(0)
    net, x = tta.make_model('net', [8, 16, 32], act='leaky', stem_norm=False), torch.randn(4, 1, 28, 28)
    def outputs_and_grads():
        net.zero_grad()
        out = net(x)
        out.sum().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters()]
    out, grads = outputs_and_grads()
    for a in acts(net): a.inplace = False
    out2, grads2 = outputs_and_grads()
    assert torch.allclose(out, out2)
    assert all(torch.allclose(g, g2, atol=1e-6) for g, g2 in zip(grads, grads2))


def test_recipes_and_flags_set_the_net_options(tta):
    fp32, bf16 = tta.parse_args(['--recipe', 'fast-fp32']), tta.parse_args(['--recipe', 'fast-bf16'])
    assert (fp32.act, fp32.stem_norm, fp32.epochs) == ('leaky', False, 6)
    assert (bf16.act, bf16.stem_norm, bf16.epochs) == ('general', True, 5)
    assert tta.parse_args(['--recipe', 'fast-fp32', '--stem-norm', '--act', 'general']).stem_norm is True
    with pytest.raises(SystemExit): tta.parse_args(['--recipe', 'resnet', '--no-stem-norm'])
    with pytest.raises(SystemExit): tta.parse_args(['--act', 'swish'])


def test_step_time_goes_from_the_bf16_net_to_the_fp32_route_one_change_a_row(tta, capsys):
    rows = load_tool('step_time', 'benchmarks').main(['--rounds', '2', '--steps', '1', '--bs', '4'])
    cfgs = [r['config'] for r in rows]
    bf16, fp32 = tta.RECIPES['fast-bf16'], tta.RECIPES['fast-fp32']
    assert cfgs[0] == dict(channels_last=False, nfs=bf16['nfs'], act='general', stem_norm=True)
    assert cfgs[-1] == {k: fp32[k] for k in cfgs[-1]}
    assert all(sum(a[k] != b[k] for k in a) == 1 for a, b in zip(cfgs, cfgs[1:]))   # one change a row
    for r in rows:   # each row times the net its settings describe
        model, cfg = r['model'], r['config']
        want = tta.make_model('net', cfg['nfs'], cfg['act'], cfg['stem_norm'])
        assert [type(m) for m in model.modules()] == [type(m) for m in want.modules()]
        assert [p.shape for p in model.parameters()] == [p.shape for p in want.parameters()]
        w = model[1][0].weight   # the first stride-2 conv's: more than one input channel, so the layout shows
        assert w.is_contiguous(memory_format=torch.channels_last) is cfg['channels_last']
    assert rows[0]['ratio'] == rows[0]['ratio_to_above'] == 1
    out = capsys.readouterr().out
    assert '--recipe fast-bf16 --no-amp --no-channels-last' in out and '(--recipe fast-fp32)' in out


def test_step_time_refuses_recipes_that_differ_where_it_has_no_row(monkeypatch):
    step_time = load_tool('step_time', 'benchmarks')
    monkeypatch.setitem(step_time.RECIPES, 'fast-fp32', {**step_time.RECIPES['fast-fp32'], 'bs': 512})
    with pytest.raises(ValueError, match=r"differ in \['bs'\]"): step_time.variants()
