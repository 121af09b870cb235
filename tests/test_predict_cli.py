"""`miniai predict` against get_preds on the same PNG files, its inputs (run folder or model.pt, folders of images)
and its errors (one line each, the good images still classified); extending a run with `--resume --epochs`."""
import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_cli import data, run  # noqa: F401 (data is a fixture)
from test_datasets import NAMES
from test_inference import make_unreadable, png_claiming, png_with_text_bomb
from torch.utils.data import DataLoader, TensorDataset

from conftest import REAL_DATA, blank_run_plots
from miniai.cli import main
from miniai.datasets import FASHION_CLASSES, fashion_mnist_tensors, normalise_images, read_idx
from miniai.inference import load_learner
from miniai.sgd import OneCycleSchedCB

ROOT = Path(__file__).resolve().parents[1]


def rows(path): return list(csv.DictReader(open(path)))


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp('runs') / 'r'
    with blank_run_plots(): assert run(data, out, '--epochs', '2') == 0
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


def predict(capsys, *argv):
    """`miniai predict *argv`: exit code, stdout lines split on tabs, stderr lines."""
    capsys.readouterr()
    code = main(['predict', *map(str, argv)])
    out, err = capsys.readouterr()
    return code, [line.split('\t') for line in out.splitlines()], err.splitlines()


def test_predict_gives_the_classes_and_probabilities_of_get_preds(trained, pngs, capsys):
    paths, x = pngs
    capsys.readouterr()
    assert main(['predict', str(trained), *map(str, paths)]) == 0
    got = printed(capsys.readouterr().out)
    learn = load_learner(trained / 'model.pt')        # a miniai train run's export loads by itself
    probs, _ = learn.get_preds(DataLoader(TensorDataset(normalise_images(x), torch.zeros(len(x), dtype=torch.long)), 4))
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


def test_a_model_file_and_a_folder_of_images_are_accepted(trained, pngs, tmp_path, capsys):
    paths, _ = pngs
    code, want, _ = predict(capsys, trained, *paths)
    assert code == 0 and len(want) == 6
    folder = paths[0].parent
    (folder / 'notes.txt').write_text('not an image')               # not an image suffix: not taken
    (folder / 'sub').mkdir()
    code, got, err = predict(capsys, trained / 'model.pt', folder)
    assert code == 0 and err == [] and got == want                   # the folder's images, by name
    code, got, err = predict(capsys, trained / 'model.pt', folder / 'sub')
    assert code == 1 and got == [] and len(err) == 1 and 'no image files in the folder' in err[0]
    (tmp_path / 'run.png').mkdir()                  # a run folder, and a model file, named like an image
    shutil.copy(trained / 'model.pt', tmp_path / 'run.png' / 'model.pt')
    shutil.copy(trained / 'model.pt', tmp_path / 'model.jpg')
    for model in (tmp_path / 'run.png', tmp_path / 'model.jpg'):
        code, got, err = predict(capsys, model, *paths)
        assert code == 0 and got == want


def test_one_unreadable_image_among_many_is_reported_and_the_rest_classified(trained, pngs, tmp_path, capsys):
    paths, _ = pngs
    code, want, _ = predict(capsys, trained, *paths)
    (tmp_path / 'notes.png').write_text('not an image')
    code, got, err = predict(capsys, trained, paths[0], tmp_path / 'nope.png', *paths[1:3], tmp_path / 'notes.png',
                             *paths[3:])
    assert code == 1 and got == want
    assert len(err) == 3 and all(e.startswith('miniai: error: ') for e in err)
    assert f"no image file at {tmp_path / 'nope.png'}" in err[0] and 'notes.png is not an image file' in err[1]
    assert '2 of 8 images could not be classified' in err[2] and 'the other 6 were' in err[2]


@pytest.mark.parametrize('case,msg', [
    ('missing', 'no image file at'), ('text', 'is not an image file'), ('no_run', 'no run folder or model file at'),
    ('empty_run', 'neither model.pt nor best.pt'), ('bomb', 'pixels miniai decodes (a decompression bomb'),
    ('text_bomb', 'a PNG text chunk inflates past'), ('denied', 'permission denied; make it readable (chmod +r)'),
    ('gpu', "--device 'gpu' is not a device: use cpu, cuda, cuda:N or mps"),
    ('cuda', '--device cuda: cuda is not available on this machine; available here: cpu'),
    ('cuda:99', '--device cuda:99: '), ('own_model', 'runs built-in architectures only'),
    ('swapped', 'is an image, not a model: miniai predict takes the MODEL first')])
def test_predict_errors_are_one_line_each(trained, pngs, tmp_path, capsys, monkeypatch, case, msg):
    good, bad = str(pngs[0][0]), tmp_path / 'bad.png'
    (tmp_path / 'empty').mkdir()
    model, flags = str(trained), []
    if case == 'text': bad.write_text('not an image')
    elif case == 'bomb': bad.write_bytes(png_claiming(20000, 20000))
    elif case == 'text_bomb': bad.write_bytes(png_with_text_bomb())
    elif case == 'denied': shutil.copy(good, bad); make_unreadable(bad, monkeypatch)
    elif case == 'no_run': model = str(tmp_path / 'nope')
    elif case == 'empty_run': model = str(tmp_path / 'empty')
    elif case in ('gpu', 'cuda', 'cuda:99'): flags = ['--device', case]
    elif case == 'own_model':
        learn = load_learner(trained / 'model.pt')
        del learn.model.miniai_arch                                  # as a model of one's own
        model = str(learn.export(tmp_path / 'own.pt'))
    elif case == 'swapped': model, good = good, str(trained)                  # the image first, then the run
    if case == 'cuda': monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)   # the same on a GPU machine
    image = good if case in ('no_run', 'empty_run', 'gpu', 'cuda', 'cuda:99', 'own_model', 'swapped') else str(bad)
    capsys.readouterr()
    assert main(['predict', model, image, *flags]) == 1
    out, err = capsys.readouterr()
    assert out == '' and err.startswith('miniai: error:') and msg in err and len(err.strip().splitlines()) == 1


def test_names_with_tabs_and_newlines_cannot_forge_result_lines(trained, pngs, tmp_path, capsys):
    src = pngs[0][0]
    names = ['a\tb.png', 'c\nfake.png\tTrouser\t1.000000', 'back\\slash.png']
    for n in names: shutil.copy(src, tmp_path / n)
    code, got, _ = predict(capsys, trained, *(tmp_path / n for n in names))
    assert code == 0 and len(got) == 3 and all(len(g) == 3 for g in got)
    assert [g[0] for g in got] == [str(tmp_path / n).replace('\\', '\\\\').replace('\t', '\\t').replace('\n', '\\n')
                                   for n in names]


def test_a_closed_output_pipe_ends_with_one_line_not_a_traceback(trained, pngs, warm):
    # stdout buffered, as in most shells: the interpreter's last flush at exit must not fail either
    env = {**{k: v for k, v in os.environ.items() if k != 'PYTHONUNBUFFERED'}, 'PYTHONPATH': str(ROOT),
           'OMP_NUM_THREADS': '1'}
    p = warm.popen(['-m', 'miniai', 'predict', str(trained), *map(str, pngs[0])], env=env, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, cwd=ROOT)
    p.stdout.close()                                  # as `| head -0`: the reader is gone before the first result
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 1
    assert err.startswith('miniai: error: the output was closed after 0 of 6 results') and '> results.tsv' in err
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err


def test_predict_without_images_is_an_argparse_error(trained, capsys):
    with pytest.raises(SystemExit) as e: main(['predict', str(trained)])
    assert e.value.code == 2 and 'IMAGE' in capsys.readouterr().err


@pytest.mark.slow
def test_resume_with_more_epochs_extends_the_run_on_a_rebuilt_one_cycle(data, tmp_path, monkeypatch):  # noqa: F811
    r = tmp_path / 'r'
    assert run(data, r, '--epochs', '1') == 0
    seen = []
    from miniai.cli import run as cli_run
    orig = cli_run.build_learner
    monkeypatch.setattr(cli_run, 'build_learner', lambda *a, **k: seen.append(orig(*a, **k)) or seen[-1])
    assert main(['train', '--resume', str(r), '--epochs', '3']) == 0
    assert [x['epoch'] for x in rows(r / 'metrics.csv')] == ['0', '1', '2']
    assert torch.load(r / 'last.pt', weights_only=True)['epoch'] == 2
    assert json.loads((r / 'config.json').read_text())['epochs'] == 3
    rec = next(cb for cb in seen[0].cbs if type(cb).__name__ == 'RecorderCB')
    n = 10                                             # batches per epoch: 600 images, bs 64
    assert rec.steps == list(range(1, 3 * n + 1))      # the whole run's steps, the resumed ones after the first
    sched = OneCycleSchedCB(0.01).scheds['lr']          # the 3-epoch schedule, at the steps the extension took
    assert rec.recs['lr'][n:] == pytest.approx([sched((n + i) / (3 * n)) for i in range(2 * n)])


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
    probs, _ = load_learner(r / 'model.pt').get_preds(DataLoader(TensorDataset(normalise_images(x), y), 8))
    assert [g[1] for g in got] == [FASHION_CLASSES[i] for i in probs.argmax(1)]
    assert [g[2] for g in got] == pytest.approx(probs.max(1).values.tolist(), abs=1e-6)
    assert sum(g[1] == FASHION_CLASSES[t] for g, t in zip(got, y)) >= 12   # one epoch on 2000 images: ~75%
