"""`miniai train` end to end on a tiny synthetic Fashion-MNIST: outputs, flags, errors, resume, reproducibility."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import StopAfter
from miniai.cli import main
from test_datasets import NAMES, write_idx

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """A learnable 600/120-image stand-in for Fashion-MNIST (class k lights up row band k)."""
    folder = tmp_path_factory.mktemp('fm')
    rng = np.random.default_rng(0)
    for split, n in (('train', 600), ('test', 120)):
        y = rng.integers(0, 10, n)
        x = rng.normal(60, 30, (n, 28, 28))
        for k in range(10): x[y == k, 2 * k + 4:2 * k + 7, :] += 150
        write_idx(folder / NAMES[split][0], x.clip(0, 255))
        write_idx(folder / NAMES[split][1], y)
    return folder


def run(data, out, *extra):
    return main(['train', '--data', str(data), '--out', str(out), '--bs', '64', '--lr', '0.01', '--device', 'cpu',
                 *extra])


def rows(path): return list(csv.DictReader(open(path)))


def test_train_writes_metrics_png_config_and_checkpoints(data, tmp_path, capsys):
    assert run(data, tmp_path / 'r', '--epochs', '2') == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ['accuracy', 'loss', 'epoch', 'phase', 'time'] and 'test accuracy' in out
    r = rows(tmp_path / 'r' / 'metrics.csv')
    assert list(r[0]) == ['epoch', 'phase', 'loss', 'accuracy', 'lr', 'seconds']
    assert [(x['epoch'], x['phase']) for x in r] == [('0', 'train'), ('0', 'eval'), ('1', 'train'), ('1', 'eval')]
    assert float(r[-1]['accuracy']) > 0.5  # the synthetic classes are easy
    assert (tmp_path / 'r' / 'loss.png').read_bytes()[:4] == b'\x89PNG'
    cfg = json.loads((tmp_path / 'r' / 'config.json').read_text())
    assert cfg['epochs'] == 2 and cfg['bs'] == 64 and cfg['device'] == 'cpu'
    assert {'last.pt', 'best.pt'} <= set(os.listdir(tmp_path / 'r'))


def test_existing_output_folder_is_never_overwritten(data, tmp_path, capsys):
    (tmp_path / 'r').mkdir()
    (tmp_path / 'r' / 'metrics.csv').write_text('precious')
    assert run(data, tmp_path / 'r', '--epochs', '1') == 1
    assert 'already holds files' in capsys.readouterr().err
    assert (tmp_path / 'r' / 'metrics.csv').read_text() == 'precious'


@pytest.mark.parametrize('argv,msg', [(['--epochs', '0'], 'must be > 0'), (['--bogus'], 'unrecognized arguments'),
                                      (['--lr', 'fast'], 'expected a float')])
def test_bad_flags_exit_2_with_argparse_message(argv, msg, capsys):
    with pytest.raises(SystemExit) as e: main(['train', *argv])
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    assert main(['train', '--data', str(tmp_path / 'nope'), '--out', str(tmp_path / 'r')]) == 1
    assert 'lacks the Fashion-MNIST file' in capsys.readouterr().err


def test_resume_continues_to_the_same_weights(data, tmp_path, monkeypatch):
    assert run(data, tmp_path / 'full', '--epochs', '3', '--deterministic') == 0
    # a run that died after epoch 2: keep its folder as it was then, by training 3 epochs and stopping early
    from miniai import cli
    orig = cli.build_learner

    def stopping(*a, **k):
        learn = orig(*a, **k)
        learn.add_cbs([StopAfter(1)])
        return learn
    with monkeypatch.context() as m:
        m.setattr(cli, 'build_learner', stopping)
        assert run(data, tmp_path / 'part', '--epochs', '3', '--deterministic') == 0
    assert len(rows(tmp_path / 'part' / 'metrics.csv')) == 4
    assert main(['train', '--resume', str(tmp_path / 'part')]) == 0
    full, part = (torch.load(tmp_path / d / 'last.pt', weights_only=True) for d in ('full', 'part'))
    assert part['epoch'] == 2 and all(torch.equal(full['model'][k], part['model'][k]) for k in full['model'])
    a, b = rows(tmp_path / 'full' / 'metrics.csv'), rows(tmp_path / 'part' / 'metrics.csv')
    assert [(x['epoch'], x['phase'], x['loss'], x['accuracy']) for x in a] == \
        [(x['epoch'], x['phase'], x['loss'], x['accuracy']) for x in b]


def test_two_deterministic_runs_give_identical_metrics(data, tmp_path):
    for d in ('a', 'b'): assert run(data, tmp_path / d, '--epochs', '2', '--deterministic', '--seed', '3') == 0
    a, b = rows(tmp_path / 'a' / 'metrics.csv'), rows(tmp_path / 'b' / 'metrics.csv')
    drop = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'} for r in rs]  # wall-clock time differs
    assert drop(a) == drop(b) and len(a) == 4


def test_ctrl_c_saves_a_checkpoint_and_exits_130(data, tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1'}
    out = tmp_path / 'r'
    p = subprocess.Popen([sys.executable, '-m', 'miniai', 'train', '--data', str(data), '--out', str(out), '--bs',
                          '8', '--epochs', '50', '--device', 'cpu'], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / 'last.pt').exists() and time.time() < deadline: time.sleep(0.2)  # a first epoch is done
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert (out / 'interrupted.pt').exists() and '--resume' in err
    ck = torch.load(out / 'interrupted.pt', weights_only=True)
    assert ck['format'] == 'miniai-checkpoint-1'
