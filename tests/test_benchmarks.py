"""The scripts of benchmarks/ in their tiny versions, on the first 200 to 1000 real Fashion-MNIST images: they run end
to end, learn, and report what they measured (the full runs are in docs/benchmarks.md); the fast recipe takes the
route of the hardware it finds; float32_check.sh alternates its two recipes and reports their ratio."""
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import REAL_DATA, load_tool
from miniai.accel import ChannelsLastCB, MixedPrecisionCB
from miniai.augment import get_preds

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(REAL_DATA is None, reason='needs the real Fashion-MNIST: '
                                'apt-get install dataset-fashion-mnist, or set MINIAI_DATA')


@pytest.mark.slow
def test_resnet_script_tiny_run_learns_with_the_flags_it_was_given(capsys):
    learn = load_tool('resnet_fashion_mnist', 'benchmarks').main(
        ['--limit', '200', '--epochs', '1', '--bs', '8', '--nfs', '8', '16', '32', '--tta',
         '--bf16', '--channels-last'])     # bf16 on a CPU without bf16 units is slow: a small set
    out = capsys.readouterr().out
    acc = float(re.search(r'test accuracy: ([\d.]+)', out).group(1))
    assert acc > 0.3                                   # 10 classes: chance is 0.1
    assert re.search(r'TTA \(flip\) accuracy: [\d.]+ \(gain [-+][\d.]+\)', out)
    assert '200 training, 200 test images' in out
    # the reported accuracy is the learner's on the test images
    preds, targs = get_preds(learn)
    assert len(targs) == 200 and abs((preds.argmax(1) == targs).float().mean().item() - acc) < 1e-4
    # the flags reached the learner and the model
    assert [type(c) for c in learn.cbs if isinstance(c, (MixedPrecisionCB, ChannelsLastCB)) and c.active] == \
        [MixedPrecisionCB, ChannelsLastCB]
    assert learn.model[1].convs[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert [m.out_channels for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d)][:2] == [8, 8]


@pytest.mark.slow
def test_fast_recipe_tiny_run_says_its_route_and_reports_first_epoch_past_each_bar(tmp_path, monkeypatch, capsys):
    """One tiny `--recipe fast` run, 2 epochs evaluated after each, on a CPU said to have no bfloat16 units."""
    tta = load_tool('time_to_accuracy', 'benchmarks')
    monkeypatch.setattr(tta, 'cpu_has_bf16', lambda: False)
    out_json = tmp_path / 'tta.json'
    run, = tta.main(['--recipe', 'fast', '--device', 'cpu', '--limit', '1000', '--bs', '128', '--epochs', '2',
                     '--eval', 'epoch', '--targets', '0.3', '0.999', '--json', str(out_json)])
    res, out = json.loads(out_json.read_text()), capsys.readouterr().out
    # the route: said first, and its settings taken, but for the flags given
    assert out.startswith('no bfloat16 units on this CPU') and '--recipe fast-fp32' in out.splitlines()[0]
    assert res['config']['recipe'] == 'fast-fp32' and not res['config']['amp']
    given = ('epochs', 'bs', 'eval')
    assert {k: res['config'][k] for k in tta.RECIPES['fast-fp32'] if k not in given} == \
        {k: v for k, v in tta.RECIPES['fast-fp32'].items() if k not in given}
    assert (res['config']['epochs'], res['config']['bs'], res['config']['eval']) == (2, 128, 'epoch')
    # the report: the first epoch past each bar, and the seconds up to it
    assert res['runs'] == [run]
    accs = [r['accuracy'] for r in run['epochs']]
    assert len(accs) == 2 and max(accs) > 0.3
    first = next(i for i, a in enumerate(accs) if a >= 0.3)
    assert run['reached']['0.3'] == {'epoch': first + 1, 'seconds': run['epochs'][first]['cum_s']}
    assert run['reached']['0.999'] is None and '0.999: not passed in 2 epochs' in out
    assert all(r['train_s'] > 0 and r['eval_s'] > 0 for r in run['epochs'])
    assert run['total_s'] == pytest.approx(sum(r['train_s'] + r['eval_s'] for r in run['epochs']))
    assert re.search(r'SUMMARY recipe fast-fp32, 1 run\(s\): accuracy [\d.]+ .*0.3: passed by all', out)


@pytest.mark.slow
def test_fast_bf16_recipe_runs_end_to_end_in_bfloat16_wherever_it_is_named(tmp_path, capsys):
    """`--recipe fast-bf16` named in full runs its bfloat16 route on any CPU (slowly where there are no bfloat16
    units: a small set), TTA evaluation included, and learns."""
    out_json = tmp_path / 'tta.json'
    run, = load_tool('time_to_accuracy', 'benchmarks').main(
        ['--recipe', 'fast-bf16', '--device', 'cpu', '--limit', '160', '--bs', '16', '--epochs', '2',
         '--targets', '0.3', '--json', str(out_json)])
    res, out = json.loads(out_json.read_text()), capsys.readouterr().out
    assert not out.startswith('no bfloat16 units')            # a recipe named in full is not re-chosen
    cfg = res['config']
    assert (cfg['recipe'], cfg['amp'], cfg['channels_last'], cfg['tta']) == ('fast-bf16', True, True, True)
    assert run['accuracy'] > 0.3 and run['reached']['0.3'] is not None
    assert re.search(r'SUMMARY recipe fast-bf16, 1 run\(s\): accuracy [\d.]+ .*0.3: passed by all', out)


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
    accs = re.search(r'SUMMARY recipe fast-(?:bf16|fp32), 2 run\(s\): accuracy ([\d.]+) ([\d.]+)',
                     capsys.readouterr().out)
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


@pytest.mark.parametrize('bf16_units, device, route, amp', [(True, 'cpu', 'fast-bf16', True),
                                                            (False, 'cpu', 'fast-fp32', False),
                                                            (False, 'cuda', 'fast-bf16', True)])
def test_fast_recipe_takes_the_route_of_the_hardware_it_finds(monkeypatch, bf16_units, device, route, amp):
    tta = load_tool('time_to_accuracy', 'benchmarks')
    monkeypatch.setattr(tta, 'cpu_has_bf16', lambda: bf16_units)
    args = tta.parse_args(['--recipe', 'fast', '--device', device])
    assert args.recipe == route and args.amp is amp
    assert {k: getattr(args, k) for k in tta.RECIPES[route]} == tta.RECIPES[route]
    assert ('no bfloat16 units' in args.chosen) is (route == 'fast-fp32') and f'--recipe {route}' in args.chosen
    # a route named in full is taken as named, whatever the hardware, and says nothing about it
    other = 'fast-bf16' if route == 'fast-fp32' else 'fast-fp32'
    args = tta.parse_args(['--recipe', other, '--device', device])
    assert (args.recipe, args.amp, args.chosen) == (other, tta.RECIPES[other]['amp'], None)


def test_holdout_evaluates_the_last_training_images_and_trains_on_the_rest():
    tta = load_tool('time_to_accuracy', 'benchmarks')
    dls = tta.make_dls(100, 'cpu', limit=1000, holdout=300)
    train_x, valid_x = dls.train.xs[0], dls.valid.xs[0]
    full = tta.make_dls(100, 'cpu', limit=1000)
    assert len(train_x) == 700 and len(valid_x) == 300
    assert torch.equal(torch.cat([train_x, valid_x]), full.train.xs[0])      # the training images, split
    assert not torch.equal(valid_x, full.valid.xs[0][:300])                  # not the test images
    with pytest.raises(ValueError, match='--holdout must be between 1 and 999'):
        tta.make_dls(100, 'cpu', limit=1000, holdout=1000)
    with pytest.raises(SystemExit): tta.parse_args(['--holdout', '-1'])


def test_keep_hard_trains_later_epochs_on_the_hardest_images_of_each_first_epoch_batch():
    tta = load_tool('time_to_accuracy', 'benchmarks')
    from miniai.core import Callback
    from miniai.datasets import DataLoaders, InMemoryLoader
    from miniai.learner import TrainLearner
    x, y = torch.randn(64, 1, 4, 4), torch.arange(64) % 4
    hard = tta.KeepHardCB(0.25, InMemoryLoader((x, y), 16, shuffle=True, drop_last=True))

    class Seen(Callback):
        def before_fit(self, learn): self.epochs, self.losses, self.lrs = [], [], []
        def before_epoch(self, learn):
            if learn.training: self.epochs.append([])
        def after_loss(self, learn):
            if not learn.training: return
            self.epochs[-1].append(learn.batch[0].flatten(1))
            self.lrs.append(learn.opt.param_groups[0]['lr'])
            if learn.epoch == 0:
                loss = torch.nn.functional.cross_entropy(learn.preds, learn.batch[1], reduction='none').detach()
                self.losses.append((learn.batch[0].flatten(1), loss))

    seen, sched = Seen(), tta.OneCycleStepsCB(hard.steps(3), 0.1)
    learn = TrainLearner(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)),
                         DataLoaders(hard.loader, hard.loader), torch.nn.functional.cross_entropy, lr=0.1,
                         cbs=[hard, seen])
    learn.fit(3, valid=False, cbs=[sched])
    first, *later = seen.epochs
    assert sum(len(b) for b in first) == 64 and hard.steps(3) == 4 + 2 * 1
    # each first-epoch batch of 16 gives its 4 images of highest loss, and the later epochs see only those
    expected = torch.cat([xb[loss.topk(4).indices] for xb, loss in seen.losses])
    for epoch in later:
        got = torch.cat(epoch)
        assert len(got) == 16 and sorted(map(tuple, got.tolist())) == sorted(map(tuple, expected.tolist()))
    # the one-cycle schedule spans the fit's 6 real steps (not 3 epochs of 4), so it ends on its lowest lrs
    assert sched.i == sched.total == 6
    assert seen.lrs == pytest.approx([sched.scheds['lr'](i / 6) for i in range(6)])


FAKE_PYTHON = r'''#!/usr/bin/env bash
# stands in for the interpreter: records each time_to_accuracy.py call, writes its JSON; runs anything else
if [ "$1" = benchmarks/time_to_accuracy.py ]; then
  exec python3 - "$@" <<'PY'
import json, sys, os
a = sys.argv[2:]
recipe, seed, out = a[a.index('--recipe') + 1], int(a[a.index('--seed') + 1]), a[a.index('--json') + 1]
with open(os.environ['CALLS'], 'a') as f: f.write(f"{recipe} {' '.join(a[2:a.index('--seed')])} {seed}\n")
secs = {'fast-bf16': 100. + seed, 'fast-fp32': 40. + seed}[recipe]
json.dump({'config': {'recipe': recipe, 'amp': False, 'channels_last': recipe == 'fast-fp32'}, 'device_name': 'cpu x',
           'threads': 2, 'torch': 't', 'runs': [{'total_s': secs, 'accuracy': 0.931 + seed / 1000}]}, open(out, 'w'))
PY
fi
exec python3 "$@"
'''


def test_float32_check_alternates_the_two_recipes_and_reports_their_ratio(tmp_path):
    import os
    import subprocess
    fake = tmp_path / 'python'
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls, out = tmp_path / 'calls.txt', tmp_path / 'out'
    r = subprocess.run(['bash', 'benchmarks/float32_check.sh', '--force', '--out', str(out)], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, 'PYTHON': str(fake), 'CALLS': str(calls)})
    assert r.returncode == 0, r.stderr
    assert calls.read_text().splitlines() == [
        line for s in (0, 1, 2) for line in (f'fast-bf16 --no-amp --no-channels-last {s}', f'fast-fp32  {s}')]
    summary = (out / 'summary.txt').read_text()
    assert 'ratio route / baseline (mean seconds of training + evaluation): 0.406' in summary      # 41 / 101
    assert 'route: --recipe fast-fp32 (amp=False, channels_last=True); seconds 40.0 41.0 42.0' in summary
    assert summary.count('past 0.93: 3 of 3') == 2
    assert subprocess.run(['bash', 'benchmarks/float32_check.sh', '--bogus'], cwd=ROOT, capture_output=True,
                          text=True).returncode == 64

