"""The ResNet scripts of benchmarks/ in their tiny versions, on the first 2000 real Fashion-MNIST images: they run
end to end, learn, and report what they measured (the full runs are in the README)."""
import json
import re

import pytest
import torch

from conftest import REAL_DATA, load_tool
from miniai.accel import ChannelsLastCB, MixedPrecisionCB
from miniai.augment import get_preds

pytestmark = pytest.mark.skipif(REAL_DATA is None, reason='needs the real Fashion-MNIST: '
                                'apt-get install dataset-fashion-mnist, or set MINIAI_DATA')


def test_resnet_script_tiny_run_learns_with_the_flags_it_was_given(capsys):
    learn = load_tool('resnet_fashion_mnist', 'benchmarks').main(
        ['--limit', '2000', '--epochs', '2', '--bs', '128', '--nfs', '8', '16', '32', '--tta',
         '--bf16', '--channels-last'])
    out = capsys.readouterr().out
    acc = float(re.search(r'test accuracy: ([\d.]+)', out).group(1))
    assert acc > 0.5                                   # 10 classes: chance is 0.1
    assert re.search(r'TTA \(flip\) accuracy: [\d.]+ \(gain [-+][\d.]+\)', out)
    assert '2000 training, 2000 test images' in out
    # the reported accuracy is the learner's on the test images
    preds, targs = get_preds(learn)
    assert len(targs) == 2000 and abs((preds.argmax(1) == targs).float().mean().item() - acc) < 1e-4
    # the flags reached the learner and the model
    assert [type(c) for c in learn.cbs if isinstance(c, (MixedPrecisionCB, ChannelsLastCB)) and c.active] == \
        [MixedPrecisionCB, ChannelsLastCB]
    assert learn.model[1].convs[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert [m.out_channels for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d)][:2] == [8, 8]


def test_time_to_accuracy_tiny_run_reports_first_epoch_past_each_bar(tmp_path, capsys):
    out_json = tmp_path / 'tta.json'
    load_tool('time_to_accuracy', 'benchmarks').main(
        ['--limit', '2000', '--epochs', '2', '--bs', '256', '--nfs', '8', '16', '32', '--targets', '0.3', '0.999',
         '--json', str(out_json)])
    res = json.loads(out_json.read_text())
    accs = [r['accuracy'] for r in res['epochs']]
    assert len(accs) == 2 and max(accs) > 0.3
    first = next(i for i, a in enumerate(accs) if a >= 0.3)
    assert res['reached']['0.3'] == {'epoch': first, 'seconds': res['epochs'][first]['cum_s']}
    assert res['reached']['0.999'] is None and '0.999: not reached in 2 epochs' in capsys.readouterr().out
    assert all(r['train_s'] > 0 and r['eval_s'] > 0 for r in res['epochs'])
