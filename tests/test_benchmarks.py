"""The ResNet scripts of benchmarks/ in their tiny versions, on the first 2000 real Fashion-MNIST images: they run
end to end, learn, and report what they say they report (the full runs are in the README)."""
import json
import re

from conftest import load_tool


def test_resnet_script_tiny_run_learns_and_reports_tta(capsys):
    load_tool('resnet_fashion_mnist', 'benchmarks').main(
        ['--limit', '2000', '--epochs', '2', '--bs', '128', '--nfs', '8', '16', '32', '--tta', '--bf16',
         '--channels-last'])
    out = capsys.readouterr().out
    acc = float(re.search(r'test accuracy: ([\d.]+)', out).group(1))
    tta, gain = re.search(r'TTA \(flip\) accuracy: ([\d.]+) \(gain ([-+][\d.]+)\)', out).groups()
    assert acc > 0.5                                   # 10 classes: chance is 0.1
    assert abs(float(tta) - acc - float(gain)) < 1e-3  # the gain is what it says
    assert '2000 training, 2000 test images' in out


def test_time_to_accuracy_tiny_run_reports_first_epoch_past_each_bar(tmp_path, capsys):
    out_json = tmp_path / 'tta.json'
    load_tool('time_to_accuracy', 'benchmarks').main(
        ['--limit', '2000', '--epochs', '2', '--bs', '256', '--nfs', '8', '16', '32', '--targets', '0.3', '0.999', '--json', str(out_json)])
    res = json.loads(out_json.read_text())
    accs = [r['accuracy'] for r in res['epochs']]
    assert len(accs) == 2 and max(accs) > 0.3
    first = next(i for i, a in enumerate(accs) if a >= 0.3)
    assert res['reached']['0.30'] == {'epoch': first, 'seconds': res['epochs'][first]['cum_s']}
    assert res['reached']['1.00'] is None and 'not reached in 2 epochs' in capsys.readouterr().out
    cum = [r['cum_s'] for r in res['epochs']]
    assert cum == sorted(cum) and abs(cum[-1] - sum(r['train_s'] + r['eval_s'] for r in res['epochs'])) < 1e-6
