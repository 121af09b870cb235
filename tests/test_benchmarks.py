"""The ResNet scripts of benchmarks/ in their tiny versions, on the first 500 to 1000 real Fashion-MNIST images: they
run end to end, learn, and report what they measured (the full runs are in the README)."""
import json
import re

import pytest
import torch

from conftest import REAL_DATA, load_tool
from miniai.accel import ChannelsLastCB, MixedPrecisionCB
from miniai.augment import get_preds

pytestmark = pytest.mark.skipif(REAL_DATA is None, reason='needs the real Fashion-MNIST: '
                                'apt-get install dataset-fashion-mnist, or set MINIAI_DATA')


@pytest.mark.slow
def test_resnet_script_tiny_run_learns_with_the_flags_it_was_given(capsys):
    learn = load_tool('resnet_fashion_mnist', 'benchmarks').main(
        ['--limit', '1000', '--epochs', '2', '--bs', '32', '--nfs', '8', '16', '32', '--tta',
         '--bf16', '--channels-last'])     # bf16 on a CPU without bf16 units is slow: a small set, more steps
    out = capsys.readouterr().out
    acc = float(re.search(r'test accuracy: ([\d.]+)', out).group(1))
    assert acc > 0.5                                   # 10 classes: chance is 0.1
    assert re.search(r'TTA \(flip\) accuracy: [\d.]+ \(gain [-+][\d.]+\)', out)
    assert '1000 training, 1000 test images' in out
    # the reported accuracy is the learner's on the test images
    preds, targs = get_preds(learn)
    assert len(targs) == 1000 and abs((preds.argmax(1) == targs).float().mean().item() - acc) < 1e-4
    # the flags reached the learner and the model
    assert [type(c) for c in learn.cbs if isinstance(c, (MixedPrecisionCB, ChannelsLastCB)) and c.active] == \
        [MixedPrecisionCB, ChannelsLastCB]
    assert learn.model[1].convs[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert [m.out_channels for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d)][:2] == [8, 8]


@pytest.mark.slow
def test_time_to_accuracy_tiny_run_reports_first_epoch_past_each_bar(tmp_path, capsys):
    out_json = tmp_path / 'tta.json'
    load_tool('time_to_accuracy', 'benchmarks').main(
        ['--recipe', 'fast', '--limit', '1000', '--bs', '128', '--epochs', '2', '--eval', 'epoch',
         '--targets', '0.3', '0.999', '--json', str(out_json)])
    res = json.loads(out_json.read_text())
    run, = res['runs']
    accs = [r['accuracy'] for r in run['epochs']]
    assert len(accs) == 2 and max(accs) > 0.3
    first = next(i for i, a in enumerate(accs) if a >= 0.3)
    assert run['reached']['0.3'] == {'epoch': first + 1, 'seconds': run['epochs'][first]['cum_s']}
    out = capsys.readouterr().out
    assert run['reached']['0.999'] is None and '0.999: not passed in 2 epochs' in out
    assert all(r['train_s'] > 0 and r['eval_s'] > 0 for r in run['epochs'])
    assert run['total_s'] == pytest.approx(sum(r['train_s'] + r['eval_s'] for r in run['epochs']))
    assert re.search(r'SUMMARY recipe fast, 1 run\(s\): accuracy [\d.]+ .*0.3: passed by all', out)


@pytest.mark.slow
def test_time_to_accuracy_evaluates_only_at_the_end_by_default_and_runs_each_seed(tmp_path, capsys):
    out_json = tmp_path / 'tta.json'
    load_tool('time_to_accuracy', 'benchmarks').main(
        ['--recipe', 'fast', '--limit', '500', '--bs', '128', '--epochs', '2', '--seeds', '3', '4', '--json',
         str(out_json)])
    runs = json.loads(out_json.read_text())['runs']
    assert [r['seed'] for r in runs] == [3, 4]
    for run in runs:
        first, last = run['epochs']
        assert first['accuracy'] is None and first['eval_s'] == 0 and last['eval_s'] > 0   # one evaluation
        assert run['accuracy'] == last['accuracy'] > 0.1
    accs = re.search(r'SUMMARY recipe fast, 2 run\(s\): accuracy ([\d.]+) ([\d.]+)', capsys.readouterr().out)
    assert [float(a) for a in accs.groups()] == pytest.approx([r['accuracy'] for r in runs], abs=1e-4)


def test_time_to_accuracy_recipes_set_defaults_that_flags_override():
    tta = load_tool('time_to_accuracy', 'benchmarks')
    for name, recipe in tta.RECIPES.items():
        args = tta.parse_args(['--recipe', name])
        assert {k: getattr(args, k) for k in recipe} == recipe
    args = tta.parse_args(['--recipe', 'best', '--epochs', '3', '--no-tta', '--ema', '0'])
    assert (args.epochs, args.tta, args.ema, args.padding) == (3, False, 0, tta.RECIPES['best']['padding'])
    with pytest.raises(SystemExit): tta.parse_args(['--recipe', 'slowest'])
    with pytest.raises(SystemExit): tta.parse_args(['--ema', '1.5'])


@pytest.mark.parametrize('arch, first_side, last_side', [('net', 28, 7), ('net-s2', 14, 4)])
def test_time_to_accuracy_small_net_strides_where_its_arch_says(arch, first_side, last_side):
    model = load_tool('time_to_accuracy', 'benchmarks').make_model(arch, [8, 16, 32])
    sides = []
    hooks = [m.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    for h in hooks: h.remove()
    assert (sides[0], sides[-1]) == (first_side, last_side)   # a halving per further width (net-s2: at the first too)


def test_loop_benchmark_tiny_run_prints_its_table(capsys):
    load_tool('bench_loop', 'benchmarks').main(['--limit', '512', '--epochs', '1', '--bs', '128', '--skip-hf'])
    out = capsys.readouterr().out
    rows = {ln.split()[0] + ln.split()[1]: ln for ln in out.splitlines() if ln.startswith('(')}
    assert len(rows) == 2 and all(0 < float(ln.split()[-1]) <= 1 for ln in rows.values())   # the accuracy column
