"""`miniai predict` against get_preds on the same PNG files, its errors; extending a run with `--resume --epochs`."""
import csv
import json
import shutil

import pytest
import torch
from PIL import Image
from test_cli import data, run  # noqa: F401 (data is a fixture)
from test_datasets import NAMES
from torch.utils.data import DataLoader, TensorDataset

from conftest import REAL_DATA
from miniai import cli
from miniai.cli import main, recipe_model
from miniai.datasets import FASHION_CLASSES, _normalise, fashion_mnist_tensors, read_idx
from miniai.inference import load_learner
from miniai.sgd import OneCycleSchedCB


def rows(path): return list(csv.DictReader(open(path)))


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp('runs') / 'r'
    assert run(data, out, '--epochs', '2') == 0
    return out


@pytest.fixture
def pngs(data, tmp_path):  # noqa: F811
    """The first 6 test images of the data, saved as PNG files; and their uint8 pixels."""
    x = torch.from_numpy(read_idx(data / NAMES['test'][0]).copy())[:6]
    paths = []
    for i, im in enumerate(x):
        paths.append(tmp_path / f'im{i}.png')
        Image.fromarray(im.numpy()).save(paths[-1])
    return paths, x


def printed(out):
    return [(path, label, float(p)) for path, label, p in (line.split('\t') for line in out.strip().splitlines())]


def test_predict_gives_the_classes_and_probabilities_of_get_preds(trained, pngs, capsys):
    paths, x = pngs
    capsys.readouterr()
    assert main(['predict', str(trained), *map(str, paths)]) == 0
    got = printed(capsys.readouterr().out)
    learn = load_learner(trained / 'model.pt', recipe_model)
    preds, _ = learn.get_preds(DataLoader(TensorDataset(_normalise(x), torch.zeros(len(x), dtype=torch.long)), 4))
    probs = preds.softmax(1)
    assert [g[0] for g in got] == list(map(str, paths))
    assert [g[1] for g in got] == [FASHION_CLASSES[i] for i in probs.argmax(1)]
    assert [g[2] for g in got] == pytest.approx(probs.max(1).values.tolist(), abs=1e-6)


def test_model_pt_holds_the_best_checkpoint_and_predict_falls_back_to_it(trained, pngs, tmp_path, capsys):
    exported = torch.load(trained / 'model.pt', weights_only=True)['model']
    best = torch.load(trained / 'best.pt', weights_only=True)['model']
    assert exported.keys() == best.keys() and all(torch.equal(exported[k], best[k]) for k in best)
    paths = list(map(str, pngs[0]))
    capsys.readouterr()
    assert main(['predict', str(trained), *paths]) == 0
    want = capsys.readouterr().out
    shutil.copytree(trained, tmp_path / 'stopped')
    (tmp_path / 'stopped' / 'model.pt').unlink()  # as a run stopped before its end
    assert main(['predict', str(tmp_path / 'stopped'), *paths]) == 0
    assert capsys.readouterr().out == want


@pytest.mark.parametrize('case,msg', [('missing', 'no image file at'), ('text', 'is not an image file'),
                                      ('no_run', 'no run folder at'), ('empty_run', 'neither model.pt nor best.pt')])
def test_predict_bad_paths_are_one_line_errors(trained, pngs, tmp_path, capsys, case, msg):
    good = str(pngs[0][0])
    (tmp_path / 'notes.png').write_text('not an image')
    (tmp_path / 'empty').mkdir()
    argv = {'missing': [str(trained), good, str(tmp_path / 'nope.png')],
            'text': [str(trained), str(tmp_path / 'notes.png')],
            'no_run': [str(tmp_path / 'nope'), good], 'empty_run': [str(tmp_path / 'empty'), good]}[case]
    capsys.readouterr()
    assert main(['predict', *argv]) == 1
    out, err = capsys.readouterr()
    assert out == '' and err.startswith('miniai: error:') and msg in err and len(err.strip().splitlines()) == 1


def test_predict_without_images_is_an_argparse_error(trained, capsys):
    with pytest.raises(SystemExit) as e: main(['predict', str(trained)])
    assert e.value.code == 2 and 'IMAGE' in capsys.readouterr().err


@pytest.mark.slow
def test_resume_with_more_epochs_extends_the_run_on_a_rebuilt_one_cycle(data, tmp_path, monkeypatch):  # noqa: F811
    r = tmp_path / 'r'
    assert run(data, r, '--epochs', '1') == 0
    seen = []
    orig = cli.build_learner
    monkeypatch.setattr(cli, 'build_learner', lambda *a, **k: seen.append(orig(*a, **k)) or seen[-1])
    assert main(['train', '--resume', str(r), '--epochs', '3']) == 0
    assert [(x['epoch'], x['phase']) for x in rows(r / 'metrics.csv')] == \
        [(str(e), p) for e in range(3) for p in ('train', 'eval')]
    assert torch.load(r / 'last.pt', weights_only=True)['epoch'] == 2
    assert json.loads((r / 'config.json').read_text())['epochs'] == 3
    rec = next(cb for cb in seen[0].cbs if type(cb).__name__ == 'RecorderCB')
    n = len(rec.recs['lr']) // 2                       # batches per epoch: the extension trained epochs 1 and 2
    assert n == 10                                     # 600 images, bs 64
    sched = OneCycleSchedCB(0.01).scheds['lr']          # the 3-epoch schedule, at the steps the extension took
    assert rec.recs['lr'] == pytest.approx([sched((n + i) / (3 * n)) for i in range(2 * n)])


@pytest.mark.slow
@pytest.mark.parametrize('extra', [[], ['--epochs', '1']])
def test_resuming_a_finished_run_says_which_flag_extends_it(data, tmp_path, capsys, extra):  # noqa: F811
    assert run(data, tmp_path / 'r', '--epochs', '2') == 0
    before = (tmp_path / 'r' / 'metrics.csv').read_text()
    capsys.readouterr()
    assert main(['train', '--resume', str(tmp_path / 'r'), *extra]) == 1
    err = capsys.readouterr().err
    assert 'already trained 2 epochs' in err and f"miniai train --resume {tmp_path / 'r'} --epochs 4" in err
    assert 'start_epoch' not in err and (tmp_path / 'r' / 'metrics.csv').read_text() == before


@pytest.mark.slow
@pytest.mark.skipif(REAL_DATA is None, reason="needs the Fashion-MNIST IDX files (dataset-fashion-mnist)")
def test_predict_on_real_fashion_mnist_images_matches_get_preds(tmp_path, capsys):
    r = tmp_path / 'r'
    assert main(['train', '--data', REAL_DATA, '--limit', '2000', '--epochs', '1', '--out', str(r), '--device',
                 'cpu']) == 0
    x, y = (t[-20:] for t in fashion_mnist_tensors(REAL_DATA)['test'])   # not in the run's 333 test images
    paths = [tmp_path / f'{i}.png' for i in range(len(x))]
    for p, im in zip(paths, x): Image.fromarray(im.numpy()).save(p)
    capsys.readouterr()
    assert main(['predict', str(r), *map(str, paths)]) == 0
    got = printed(capsys.readouterr().out)
    preds, _ = load_learner(r / 'model.pt', recipe_model).get_preds(DataLoader(TensorDataset(_normalise(x), y), 8))
    probs = preds.softmax(1)
    assert [g[1] for g in got] == [FASHION_CLASSES[i] for i in probs.argmax(1)]
    assert [g[2] for g in got] == pytest.approx(probs.max(1).values.tolist(), abs=1e-6)
    assert sum(g[1] == FASHION_CLASSES[t] for g, t in zip(got, y)) >= 12   # one epoch on 2000 images: ~75%
