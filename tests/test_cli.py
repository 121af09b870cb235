"""`miniai train` end to end on a tiny synthetic Fashion-MNIST: outputs, flags, errors, resume, reproducibility."""
import argparse
import csv
import errno
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from test_datasets import NAMES, write_idx

from conftest import StopAfter, blank_run_plots
from miniai.cli import main
from miniai.core import Callback, CancelFitException
from miniai.models import recipe_model

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


COLUMNS = ['epoch', 'train_loss', 'valid_loss', 'train_accuracy', 'valid_accuracy', 'lr', 'time']


@pytest.mark.slow
@pytest.mark.real_plots
def test_train_writes_metrics_png_config_and_checkpoints(data, tmp_path, capsys):
    assert run(data, tmp_path / 'r', '--epochs', '2') == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == COLUMNS
    assert 'epoch 1: valid_accuracy' in out                  # the same names in the table, the file and the message
    r = rows(tmp_path / 'r' / 'metrics.csv')
    assert list(r[0]) == COLUMNS
    assert [x['epoch'] for x in r] == ['0', '1']
    assert float(r[-1]['valid_accuracy']) > 0.5  # the synthetic classes are easy
    for png in ('training.png', 'confusion.png'): assert (tmp_path / 'r' / png).read_bytes()[:4] == b'\x89PNG'
    cfg = json.loads((tmp_path / 'r' / 'config.json').read_text())
    assert cfg['epochs'] == 2 and cfg['bs'] == 64 and cfg['device'] == 'cpu'
    assert {'last.pt', 'best.pt', 'model.pt'} <= set(os.listdir(tmp_path / 'r'))


def test_train_says_what_it_trains_on(data, tmp_path, capsys):
    assert run(data, tmp_path / 'r', '--epochs', '1') == 0
    first = capsys.readouterr().out.splitlines()[0]
    n_params = sum(p.numel() for p in recipe_model().parameters())
    for part in ('cpu', str(data), '600 training', '120 validation', f'{n_params:,} parameters', '1 epoch, bs 64'):
        assert part in first, (part, first)


def test_flags_build_the_everyday_callbacks_from_their_modules(data, tmp_path, monkeypatch):
    """The wiring, with stand-ins for miniai.stopping/gradients/tensorboard (the real ones: the next test)."""
    made = []

    def stand_in(name):
        class CB(Callback):
            def __init__(self, *a, **k): made.append((name, a, k))
        CB.__name__ = name
        return CB
    for mod, names in (('stopping', ['EarlyStoppingCB']), ('gradients', ['GradientClipCB', 'GradientAccumulationCB']),
                       ('tensorboard', ['TensorBoardCB'])):
        fake = types.ModuleType(f'miniai.{mod}')
        for n in names: setattr(fake, n, stand_in(n))
        monkeypatch.setitem(sys.modules, f'miniai.{mod}', fake)
    find = importlib.util.find_spec  # the tensorboard package need not be installed for the stand-in
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: True if name == 'tensorboard' else find(name, *a))
    assert run(data, tmp_path / 'r', '--epochs', '1', '--limit', '100', '--early-stop', '3', '--clip', '0.5',
               '--accumulate', '4', '--tensorboard') == 0
    assert made == [('EarlyStoppingCB', ('valid_accuracy',), {'patience': 3, 'restore_best': False}),
                    ('GradientClipCB', (0.5,), {}),
                    ('GradientAccumulationCB', (4,), {}), ('TensorBoardCB', (tmp_path / 'r' / 'tensorboard',), {})]
    made.clear()
    assert run(data, tmp_path / 'plain', '--epochs', '1', '--limit', '100') == 0 and made == []


def test_tensorboard_without_the_package_says_how_to_install_it(data, tmp_path, monkeypatch, capsys):
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'tensorboard' else find(name, *a))
    assert run(data, tmp_path / 'r', '--epochs', '1', '--limit', '100', '--tensorboard') == 1
    err = capsys.readouterr().err
    assert err.startswith('miniai: error:') and "pip install 'miniai-learner[tensorboard]'" in err


@pytest.mark.slow
def test_flags_with_the_real_everyday_callbacks(data, tmp_path):
    """The flags build the real callbacks of miniai.stopping and miniai.gradients, and a run with them trains."""
    from miniai import cli
    from miniai.cli.recipe import build_callbacks
    from miniai.gradients import GradientAccumulationCB, GradientClipCB
    from miniai.stopping import EarlyStoppingCB
    args = cli.build_parser().parse_args(['train', '--early-stop', '2', '--clip', '1.5', '--accumulate', '3'])
    cbs = build_callbacks(args, tmp_path)
    assert [type(c) for c in cbs] == [EarlyStoppingCB, GradientClipCB, GradientAccumulationCB]
    assert 2 in vars(cbs[0]).values() and 1.5 in vars(cbs[1]).values() and 3 in vars(cbs[2]).values()
    # early stopping watches what best.pt (and so model.pt) is chosen by, and leaves the last weights to last.pt
    assert cbs[0].monitor == 'valid_accuracy' and not cbs[0].restore_best
    assert run(data, tmp_path / 'r', '--epochs', '2', '--early-stop', '1', '--clip', '1', '--accumulate', '2') == 0
    assert len(rows(tmp_path / 'r' / 'metrics.csv')) >= 2


@pytest.mark.slow
def test_tensorboard_flag_writes_event_files(data, tmp_path):
    """Needs the tensorboard package."""
    pytest.importorskip('tensorboard')
    assert run(data, tmp_path / 'r', '--epochs', '1', '--tensorboard') == 0
    assert any(p.name.startswith('events.out.tfevents') for p in (tmp_path / 'r' / 'tensorboard').rglob('*'))


def test_existing_output_folder_is_never_overwritten(data, tmp_path, capsys):
    (tmp_path / 'r').mkdir()
    (tmp_path / 'r' / 'metrics.csv').write_text('precious')
    assert run(data, tmp_path / 'r', '--epochs', '1') == 1
    assert 'already holds files' in capsys.readouterr().err
    assert (tmp_path / 'r' / 'metrics.csv').read_text() == 'precious'


@pytest.mark.parametrize('argv,msg', [(['--epochs', '0'], 'must be > 0'), (['--bogus'], 'unrecognized arguments'),
                                      (['--lr', 'fast'], 'expected a float'), (['--lr', 'nan'], 'finite'),
                                      (['--lr', 'inf'], 'finite'), (['--lr=-inf'], 'finite')])
def test_bad_flags_exit_2_with_argparse_message(argv, msg, capsys):
    with pytest.raises(SystemExit) as e: main(['train', *argv])
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'a_file').write_text('')
    for name, fault in [('nope', 'does not exist'), ('a_file', 'is a file, not a folder'),
                        ('empty', 'lacks the Fashion-MNIST file(s) train-images-idx3-ubyte.gz')]:
        assert main(['train', '--data', str(tmp_path / name), '--out', str(tmp_path / 'r')]) == 1
        assert f"the data path {tmp_path / name} {fault}" in capsys.readouterr().err
    (tmp_path / 'link').symlink_to(tmp_path / 'gone')                  # a dangling link: both names are given
    assert main(['train', '--data', str(tmp_path / 'link'), '--out', str(tmp_path / 'r')]) == 1
    assert f"{tmp_path / 'gone'} (where the link {tmp_path / 'link'} points) does not exist" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.real_plots
def test_resume_continues_to_the_same_weights(data, tmp_path, monkeypatch):
    assert run(data, tmp_path / 'full', '--epochs', '3', '--deterministic') == 0
    # a run that died after epoch 2: keep its folder as it was then, by training 3 epochs and stopping early
    with monkeypatch.context() as m:
        _with_cb(m, StopAfter(1))
        assert run(data, tmp_path / 'part', '--epochs', '3', '--deterministic') == 0
    assert len(rows(tmp_path / 'part' / 'metrics.csv')) == 2
    assert main(['train', '--resume', str(tmp_path / 'part')]) == 0
    full, part = (torch.load(tmp_path / d / 'last.pt', weights_only=True) for d in ('full', 'part'))
    assert part['epoch'] == 2 and all(torch.equal(full['model'][k], part['model'][k]) for k in full['model'])
    # training.png's curve: the resumed run holds every batch's loss since epoch 0, as the uninterrupted one does
    assert part['callbacks']['ProgressCB']['losses'] == full['callbacks']['ProgressCB']['losses']
    assert len(full['callbacks']['ProgressCB']['losses']) == 3 * 10      # 600 images, batches of 64
    # and the lr panel: every step's lr since step 1, on the same step axis
    assert part['callbacks']['RecorderCB']['steps'] == full['callbacks']['RecorderCB']['steps'] == list(range(1, 31))
    assert part['callbacks']['RecorderCB']['recs'] == full['callbacks']['RecorderCB']['recs']
    a, b = rows(tmp_path / 'full' / 'metrics.csv'), rows(tmp_path / 'part' / 'metrics.csv')
    drop = lambda rs: [{k: v for k, v in r.items() if k != 'time'} for r in rs]  # wall-clock time differs
    assert drop(a) == drop(b) and len(a) == 3


def test_a_run_that_early_stopping_ended_is_complete_and_resume_says_so(data, tmp_path, capsys):
    r = tmp_path / 'r'
    # with an lr too small to learn, valid_accuracy only wanders (BatchNorm's statistics): patience 1 is soon spent
    assert run(data, r, '--epochs', '8', '--early-stop', '1', '--lr', '1e-9', '--deterministic') == 0
    n = len(rows(r / 'metrics.csv'))
    assert n < 8
    before = {f: (r / f).read_bytes() for f in ('metrics.csv', 'config.json', 'last.pt', 'best.pt', 'model.pt')}
    capsys.readouterr()
    for extra in ([], ['--epochs', '10']):
        assert main(['train', '--resume', str(r), *extra]) == 1
        err = capsys.readouterr().err
        assert f'early stopping ended the run in {r} after {n} epochs' in err, err
        assert 'had not improved for 1 epoch (--early-stop 1;' in err
    assert {f: (r / f).read_bytes() for f in before} == before
    # stopped while writing its final files: the resume writes them, and trains nothing
    (r / 'model.pt').unlink()
    assert main(['train', '--resume', str(r)]) == 0
    assert (r / 'model.pt').is_file() and len(rows(r / 'metrics.csv')) == n
    assert main(['train', '--resume', str(r)]) == 1 and 'early stopping ended' in capsys.readouterr().err


@pytest.mark.slow
def test_two_deterministic_runs_give_identical_metrics(data, tmp_path):
    for d in ('a', 'b'): assert run(data, tmp_path / d, '--epochs', '2', '--deterministic', '--seed', '3') == 0
    a, b = rows(tmp_path / 'a' / 'metrics.csv'), rows(tmp_path / 'b' / 'metrics.csv')
    drop = lambda rs: [{k: v for k, v in r.items() if k != 'time'} for r in rs]  # wall-clock time differs
    assert drop(a) == drop(b) and len(a) == 2
    assert not torch.are_deterministic_algorithms_enabled()     # the run's setting ended with the run


def test_train_leaves_warning_filters_and_signal_handlers_as_they_were(tmp_path):
    import warnings
    filters, handlers = list(warnings.filters), [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    assert main(['train', '--resume', str(tmp_path)]) == 1         # fails after the filters were set
    assert warnings.filters == filters
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(data, tmp_path, warm):
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1'}
    out = tmp_path / 'r'
    p = warm.popen(['-m', 'miniai', 'train', '--data', str(data), '--out', str(out), '--bs', '8', '--epochs', '50',
                    '--device', 'cpu'], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300                  # generous: the start-up alone is slow on a loaded machine
    while not (out / 'last.pt').exists() and time.time() < deadline: time.sleep(0.2)  # a first epoch is done
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert (out / 'interrupted.pt').exists() and '--resume' in err
    ck = torch.load(out / 'interrupted.pt', weights_only=True)
    assert ck['format'] == 'miniai-checkpoint-1'


# ---------------------------------------------------------------- run folders, errors, crash-consistent files
N_THREADS, N_PROCS = 16, 4           # docs/reliability.md quotes these counts


def _pick_together(n, out, results):
    """`n` threads that pick a run folder at the same instant (one clock second: the default names collide)."""
    from miniai.cli.run_dir import new_out_dir
    gate = threading.Barrier(n)
    def pick():
        gate.wait()
        try: results.append(new_out_dir(out)[0])
        except Exception as e: results.append(e)
    ts = [threading.Thread(target=pick) for _ in range(n)]
    for t in ts: t.start()
    for t in ts: t.join()


def test_runs_started_at_the_same_instant_get_distinct_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, 'strftime', lambda fmt: '20260101-000000')
    got = []
    _pick_together(N_THREADS, None, got)
    assert all(isinstance(p, Path) for p in got) and len(set(got)) == N_THREADS
    assert all((p / 'config.json').exists() for p in got)      # each claimed by its run


def _pick_in_process(gate, q):
    from miniai.cli.run_dir import new_out_dir
    gate.wait()
    q.put(str(new_out_dir(None)[0]))


def test_processes_started_at_the_same_instant_get_distinct_folders(tmp_path, monkeypatch):
    import multiprocessing
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, 'strftime', lambda fmt: '20260101-000000')   # inherited by the forked processes
    ctx = multiprocessing.get_context('fork')
    gate, q = ctx.Barrier(N_PROCS), ctx.Queue()
    ps = [ctx.Process(target=_pick_in_process, args=(gate, q)) for _ in range(N_PROCS)]
    for p in ps: p.start()
    got = [q.get(timeout=60) for _ in ps]
    for p in ps: p.join()
    assert len(set(got)) == N_PROCS


def test_an_explicit_out_taken_by_another_run_is_refused(tmp_path):
    got = []
    _pick_together(N_THREADS, tmp_path / 'r', got)
    ok = [p for p in got if isinstance(p, Path)]
    assert len(ok) == 1 and len(got) == N_THREADS
    refusals = [str(e) for e in got if not isinstance(e, Path)]
    assert all(m.startswith(f'--out {tmp_path / "r"} ') for m in refusals), refusals
    assert all(any(why in m for why in ('already holds files', 'just taken', 'in use by another')) for m in refusals)


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert 'Traceback' not in err and len(err.strip().splitlines()) == 1 and err.startswith('miniai: error: '), err
    return err


def _write_run(tmp_path, data, config):
    run = tmp_path / 'run'
    assert main(['train', '--data', str(data), '--out', str(run), '--bs', '64', '--epochs', '1',
                 '--device', 'cpu']) == 0
    (run / 'config.json').write_text(config)
    return run


BAD_INPUTS = {   # name: (argv builder, words of the message); docs/reliability.md counts them
    'out-is-a-file': (lambda t, d: ['--data', str(d), '--out', str(t / 'f.txt')], 'is a file, not a folder'),
    'unknown-device': (lambda t, d: ['--data', str(d), '--out', str(t / 'r'), '--device', 'gpu'],
                       'is not a device'),
    'cuda-without-gpu': (lambda t, d: ['--data', str(d), '--out', str(t / 'r'), '--device', 'cuda'],
                         'not available on this machine'),
    'config-not-json': (lambda t, d: ['--resume', str(_write_run(t, d, '{"epochs": 2,'))], 'is not valid JSON'),
    'config-missing-keys': (lambda t, d: ['--resume', str(_write_run(t, d, '{"epochs": 2}'))],
                            'lacks the key(s) lr, bs, seed'),
    'config-bad-value': (lambda t, d: ['--resume', str(_write_run(
        t, d, '{"epochs": 2, "lr": "fast", "bs": 64, "seed": 1}'))], "invalid value(s) for lr='fast'"),
    'resume-not-a-run': (lambda t, d: ['--resume', str(t)], 'expected a run folder'),
}


@pytest.mark.parametrize('name', BAD_INPUTS)
def test_bad_inputs_are_one_line_errors(name, data, tmp_path, capsys):
    if name == 'cuda-without-gpu' and torch.cuda.is_available(): pytest.skip("this machine has a GPU")
    (tmp_path / 'f.txt').write_text('a file')
    argv, words = BAD_INPUTS[name]
    argv = argv(tmp_path, data)
    capsys.readouterr()
    assert main(['train', *argv]) == 1
    assert words in _one_line_error(capsys)
    assert (tmp_path / 'f.txt').read_text() == 'a file' and not (tmp_path / 'r').exists()


def test_a_full_disk_while_saving_names_the_file_and_keeps_the_old_one(data, tmp_path, capsys, monkeypatch):
    import errno
    real = os.fsync
    def full(fd):
        if os.readlink(f'/proc/self/fd/{fd}').endswith('.tmp') and 'last.pt' in os.readlink(f'/proc/self/fd/{fd}'):
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real(fd)
    monkeypatch.setattr(os, 'fsync', full)
    assert run(data, tmp_path / 'r', '--epochs', '1') == 1
    err = _one_line_error(capsys)
    assert 'no space left on device' in err and str(tmp_path / 'r' / 'last.pt') in err
    assert not [p for p in os.listdir(tmp_path / 'r') if p.endswith('.tmp')]


def test_internal_bugs_keep_their_traceback(data, tmp_path, monkeypatch):
    from miniai.cli import run as cli_run
    def bug(*a, **k): raise ValueError("a bug in miniai")
    monkeypatch.setattr(cli_run, 'build_learner', bug)
    with pytest.raises(ValueError, match='a bug in miniai'): run(data, tmp_path / 'r', '--epochs', '1')


def test_a_failed_start_leaves_no_empty_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(['train', '--data', str(tmp_path / 'nope'), '--device', 'cpu']) == 1
    assert 'nope does not exist' in capsys.readouterr().err
    assert list((tmp_path / 'runs').iterdir()) == []
    (tmp_path / 'mine').mkdir()                       # a folder the user made stays, empty as it was
    assert main(['train', '--data', str(tmp_path / 'nope'), '--out', str(tmp_path / 'mine'), '--device', 'cpu']) == 1
    assert (tmp_path / 'mine').is_dir() and list((tmp_path / 'mine').iterdir()) == []


class CrashInEval(Callback):
    """Simulates a crash in epoch `n`'s validation phase, after epoch `n - 1`'s checkpoint."""
    order = 30
    def __init__(self, n): self.n = n
    def after_batch(self, learn):
        if not learn.training and learn.epoch == self.n: raise CancelFitException()


def _with_cb(monkeypatch, cb):
    """`miniai train` with `cb` added to the recipe's learner."""
    from miniai.cli import run as cli_run
    orig = cli_run.build_learner
    def adding(*a, **k):
        learn = orig(*a, **k)
        learn.add_cbs([cb])
        return learn
    monkeypatch.setattr(cli_run, 'build_learner', adding)


@pytest.mark.slow
def test_metrics_csv_holds_each_row_once_after_a_crash_and_resume(data, tmp_path, monkeypatch):
    assert run(data, tmp_path / 'full', '--epochs', '3', '--deterministic') == 0
    with monkeypatch.context() as m:
        _with_cb(m, CrashInEval(1))
        assert run(data, tmp_path / 'part', '--epochs', '3', '--deterministic') == 0
    assert [x['epoch'] for x in rows(tmp_path / 'part' / 'metrics.csv')] == ['0']
    assert main(['train', '--resume', str(tmp_path / 'part')]) == 0
    key = lambda rs: [(x['epoch'], x['train_loss'], x['valid_loss'], x['valid_accuracy']) for x in rs]
    assert key(rows(tmp_path / 'part' / 'metrics.csv')) == key(rows(tmp_path / 'full' / 'metrics.csv'))


@pytest.mark.slow
def test_resume_replaces_planted_symlinks_instead_of_writing_outside_the_run(data, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _with_cb(m, StopAfter(0))
        assert run(data, tmp_path / 'r', '--epochs', '2') == 0
    victims = {}
    for name in ('training.png', 'metrics.csv'):
        victim = tmp_path / f'outside-{name}'
        victim.write_text('precious')
        (tmp_path / 'r' / name).unlink()
        (tmp_path / 'r' / name).symlink_to(victim)
        victims[name] = victim
    assert main(['train', '--resume', str(tmp_path / 'r')]) == 0
    for name, victim in victims.items():
        assert victim.read_bytes() == b'precious'
        assert not (tmp_path / 'r' / name).is_symlink()
    assert (tmp_path / 'r' / 'training.png').read_bytes()[:4] == b'\x89PNG'


def test_ctrl_c_inside_an_epoch_saves_a_checkpoint_that_repeats_the_epoch(data, tmp_path, monkeypatch, capsys):
    class Interrupt(Callback):
        def after_batch(self, learn):
            if learn.training and learn.epoch == 1 and learn.iter == 2: raise KeyboardInterrupt
    _with_cb(monkeypatch, Interrupt())
    assert run(data, tmp_path / 'r', '--epochs', '3') == 130
    assert 'inside epoch 1' in capsys.readouterr().err
    from miniai.cli import build_learner
    from miniai.cli.resume import resume_args
    from miniai.datasets import get_dls
    args, _ = resume_args(argparse.Namespace(resume=tmp_path / 'r', device='cpu'))
    learn = build_learner(args, get_dls(64, path=data, limit=None), tmp_path / 'x', 'cpu')
    learn.load(tmp_path / 'r' / 'interrupted.pt')
    assert learn.resume_epoch == 1
    assert [r['epoch'] for r in learn.cbs[1].history] == [0]


@pytest.mark.slow
def test_resumed_metrics_csv_keeps_the_lr_column(data, tmp_path, monkeypatch):
    """Regression: the resume's rewrite of metrics.csv (from the checkpoint's rows) dropped CSVLoggerCB's lr column,
    for the rows before the resume and, since the logger keeps an existing file's header, for every row after."""
    assert run(data, tmp_path / 'full', '--epochs', '3', '--deterministic') == 0
    with monkeypatch.context() as m:
        _with_cb(m, StopAfter(1))
        assert run(data, tmp_path / 'part', '--epochs', '3', '--deterministic') == 0
    assert main(['train', '--resume', str(tmp_path / 'part')]) == 0
    drop = lambda rs: [{k: v for k, v in r.items() if k != 'time'} for r in rs]  # wall-clock time differs
    full, part = rows(tmp_path / 'full' / 'metrics.csv'), rows(tmp_path / 'part' / 'metrics.csv')
    assert list(part[0]) == COLUMNS
    assert drop(part) == drop(full) and all(float(r['lr']) > 0 for r in part)


def test_a_damaged_last_pt_refuses_the_resume_with_a_way_to_go_on_from_best_pt(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'r'
    with monkeypatch.context() as m:
        _with_cb(m, StopAfter(1))
        assert run(data, out, '--epochs', '3') == 0
    blob = bytearray((out / 'last.pt').read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (out / 'last.pt').write_bytes(bytes(blob))
    capsys.readouterr()
    assert main(['train', '--resume', str(out)]) == 1
    err = capsys.readouterr().err
    assert 'copy best.pt and best.pt.sha256 over last.pt and last.pt.sha256' in err and len(err.splitlines()) == 1
    assert 'last.pt' in err and 'is corrupt' in err
    assert (out / 'last.pt').read_bytes() == bytes(blob)                # nothing on disk changed
    for name in ('best.pt', 'best.pt.sha256'):                           # doing what it says
        shutil.copy(out / name, out / name.replace('best', 'last'))
    assert main(['train', '--resume', str(out)]) == 0
    assert [r['epoch'] for r in rows(out / 'metrics.csv')] == ['0', '1', '2']   # each epoch once, from best's on


def test_ctrl_c_in_the_first_epoch_does_not_advise_a_resume_that_is_refused(data, tmp_path, monkeypatch, capsys):
    """Regression: Ctrl-C before any epoch was complete said `--resume` continues, but without last.pt it is refused."""
    class Interrupt(Callback):
        def after_batch(self, learn):
            if learn.training and learn.epoch == 0 and learn.iter == 2: raise KeyboardInterrupt
    with monkeypatch.context() as m:
        _with_cb(m, Interrupt())
        assert run(data, tmp_path / 'r', '--epochs', '2') == 130
    err = capsys.readouterr().err
    assert main(['train', '--resume', str(tmp_path / 'r')]) == 1      # what the old message advised
    assert '--resume' not in err and 'no epoch' in err


def test_interrupted_pt_holds_the_one_cycle_schedule(data, tmp_path, monkeypatch):
    """Regression: interrupted.pt was saved after fit_one_cycle had removed its OneCycleSchedCB, so the checkpoint
    lacked the schedule's position and loading it started the one-cycle schedule over."""
    class Interrupt(Callback):
        def before_batch(self, learn):   # batches 0-2 of epoch 1 complete, then Ctrl-C
            if learn.training and learn.epoch == 1 and learn.iter == 3: raise KeyboardInterrupt
    with monkeypatch.context() as m:
        _with_cb(m, Interrupt())
        assert run(data, tmp_path / 'r', '--epochs', '3') == 130
    last, intr = (torch.load(tmp_path / 'r' / f, weights_only=True)['callbacks'] for f in ('last.pt', 'interrupted.pt'))
    assert last['OneCycleSchedCB']['i'] == 10               # 600 images, batches of 64: epoch 0's 10 steps
    assert intr['OneCycleSchedCB']['i'] == 10 + 3           # and the 3 batches of epoch 1 before the interrupt


# ---------------------------------------------------------------- signals, one writer per run folder, resume rules
ENV = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}


def _training(warm, data, out, *extra):
    """`python -m miniai train` into `out` in a process of its own, long enough to be stopped after an epoch."""
    return warm.popen(['-m', 'miniai', 'train', '--data', str(data), '--out', str(out), '--bs', '8', '--epochs', '50',
                       '--device', 'cpu', *extra], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, p, timeout=90):
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline and p.poll() is None: time.sleep(0.1)
    assert path.exists(), p.communicate(timeout=30)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_save_like_ctrl_c_and_a_second_writer_is_refused(sig, data, tmp_path, capsys, warm):
    out = tmp_path / 'r'
    p = _training(warm, data, out)
    try:
        _wait_for(out / 'last.pt', p)                   # an epoch is done; the run is still training
        before = (out / 'metrics.csv').read_text()
        capsys.readouterr()
        assert main(['train', '--resume', str(out)]) == 1
        err = _one_line_error(capsys)
        assert f'pid {p.child_pid} on host' in err and 'in use by another' in err and str(out) in err
        assert (out / 'metrics.csv').read_text().startswith(before)     # the refused resume wrote nothing
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally: p.kill()
    assert p.returncode == 128 + sig, err
    assert f'interrupted by {signal.Signals(sig).name}: state saved to {out / "interrupted.pt"}' in err
    assert f'miniai train --resume {out}' in err and 'Traceback' not in err
    assert torch.load(out / 'interrupted.pt', weights_only=True)['format'] == 'miniai-checkpoint-1'


LOCK_HOLDER = """
import sys, time
from miniai.cli.run_dir import RunLock
lock = RunLock(sys.argv[1])
print('held', flush=True)
time.sleep(120)
"""


def test_a_look_at_the_lock_does_not_make_the_run_taking_it_give_up(tmp_path):
    """`held_by_other` takes the lock for an instant to see whether a run holds it; a run taking the lock in that
    instant (16 runs racing for one --out, as above) waits the look out instead of refusing."""
    import fcntl

    from miniai.cli.run_dir import LOCK_NAME, RunLock
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)                 # a look, let go of 50 ms later
    threading.Timer(0.05, os.close, (fd,)).start()
    lock = RunLock(tmp_path)
    assert lock.held
    lock.release()


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    from miniai.cli.run_dir import RunInUseError, RunLock
    p = subprocess.Popen([sys.executable, '-c', LOCK_HOLDER, str(tmp_path)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == 'held'
        with pytest.raises(RunInUseError, match=f'pid {p.pid} on host .*, started 20'): RunLock(tmp_path)
        p.kill()                                         # kill -9: no cleanup runs in the holder
        p.wait(timeout=30)
    finally: p.kill()
    lock = RunLock(tmp_path)                             # the OS released the dead holder's lock
    assert lock.held
    lock.release()


def _on_write(monkeypatch, name: str, act):
    """Run `act(open_it)` in place of opening the temporary file that `miniai.files.atomic_write` writes `name` to."""
    import miniai.files as files
    real = open
    def fake(path, mode='r', *a, **k):
        if os.path.basename(str(path)).startswith(f'.{name}.{os.getpid()}.') and 'x' in mode:
            return act(lambda: real(path, mode, *a, **k))
        return real(path, mode, *a, **k)
    monkeypatch.setattr(files, 'open', fake, raising=False)


def _ctrl_c(times: int):
    """An action for `_on_write`: `times` Ctrl-Cs a fraction of a second apart, then the file is opened."""
    def act(open_it):
        for _ in range(times): os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)
        return open_it()
    return act


class CtrlC(Callback):
    """Ctrl-C (a real SIGINT to this process) at batch `i` of epoch `n`."""
    def __init__(self, n, i=2): self.n, self.i = n, i
    def after_batch(self, learn):
        if learn.training and learn.epoch == self.n and learn.iter == self.i: os.kill(os.getpid(), signal.SIGINT)


def test_a_second_ctrl_c_while_saving_is_held_until_the_save_is_done(data, tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as m:
        _with_cb(m, CtrlC(1))
        _on_write(m, 'interrupted.pt', _ctrl_c(1))
        assert run(data, tmp_path / 'r', '--epochs', '3') == 130
    err = capsys.readouterr().err
    assert 'interrupted: state saved to' in err and 'SIGINT received meanwhile: held until this save was done' in err
    assert torch.load(tmp_path / 'r' / 'interrupted.pt', weights_only=True)['epoch_done'] is False
    assert main(['train', '--resume', str(tmp_path / 'r')]) == 0                      # and the run goes on


def test_a_third_ctrl_c_stops_at_once_and_keeps_the_last_epoch(data, tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as m:
        _with_cb(m, CtrlC(1))
        _on_write(m, 'interrupted.pt', _ctrl_c(2))
        assert run(data, tmp_path / 'r', '--epochs', '3') == 130
    err = capsys.readouterr().err
    assert 'again while saving' in err and 'it was not written' in err and f'--resume {tmp_path / "r"}' in err
    assert not (tmp_path / 'r' / 'interrupted.pt').exists()
    assert not [p for p in os.listdir(tmp_path / 'r') if p.endswith('.tmp')]
    assert main(['train', '--resume', str(tmp_path / 'r')]) == 0


def _final_files_are_whole(run_dir):
    from miniai.inference import load_learner
    for png in ('training.png', 'confusion.png'): assert (run_dir / png).read_bytes()[:4] == b'\x89PNG'
    assert load_learner(run_dir / 'model.pt').preprocess is not None
    assert not [p for p in os.listdir(run_dir) if p.endswith('.tmp')]


@pytest.mark.parametrize('name', ['training.png', 'model.pt'])
def test_ctrl_c_while_writing_the_final_files_leaves_a_run_that_resume_finishes(name, data, tmp_path, monkeypatch,
                                                                             capsys):
    with monkeypatch.context() as m:
        _on_write(m, name, _ctrl_c(1))
        assert run(data, tmp_path / 'r', '--epochs', '2') == 130
    err = capsys.readouterr().err
    assert 'interrupted while writing the final files' in err and 'without training again' in err, err
    csv_before = (tmp_path / 'r' / 'metrics.csv').read_text()
    assert main(['train', '--resume', str(tmp_path / 'r')]) == 0
    std = capsys.readouterr()
    assert 'writing them now' in std.err and 'valid_accuracy' in std.out
    _final_files_are_whole(tmp_path / 'r')
    assert (tmp_path / 'r' / 'metrics.csv').read_text() == csv_before          # nothing was trained again
    assert main(['train', '--resume', str(tmp_path / 'r')]) == 1                  # now it is complete
    assert 'already trained 2 epochs' in capsys.readouterr().err


class _FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does."""
    def __init__(self, f, room): self.f, self.room = f, room
    def write(self, b):
        n = memoryview(b).nbytes
        if n > self.room: raise OSError(errno.ENOSPC, 'No space left on device')
        self.room -= n
        return self.f.write(b)
    def flush(self): self.f.flush()
    def fileno(self): return self.f.fileno()
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()


def _full_after(room):
    return lambda open_it: _FullDisk(open_it(), room)


def _denied(open_it): raise PermissionError(errno.EACCES, 'Permission denied')


# a full disk at any fill level (nothing written; a few bytes: torch's zip writer raises RuntimeError
# "[enforce fail at inline_container.cc]"; most of the file), and a denied permission
WRITE_FAILURES = {'full-at-0': (_full_after(0), 'no space left on device'),
                  'full-at-200': (_full_after(200), 'no space left on device'),
                  'full-at-20000': (_full_after(20000), 'no space left on device'),
                  'permission': (_denied, 'permission denied')}


@pytest.fixture(scope='module')
def one_epoch_run(data, tmp_path_factory):
    """A finished one-epoch run, for tests that copy it and go on from there."""
    r = tmp_path_factory.mktemp('one-epoch') / 'r'
    with blank_run_plots(): assert run(data, r, '--epochs', '1') == 0
    return r


@pytest.mark.parametrize('case', WRITE_FAILURES)
def test_a_failed_write_of_model_pt_names_file_and_cause_and_loses_nothing(case, one_epoch_run, tmp_path, monkeypatch,
                                                                           capsys):
    act, cause = WRITE_FAILURES[case]
    r = tmp_path / 'r'
    shutil.copytree(one_epoch_run, r)
    model_before, csv_before = (r / 'model.pt').read_bytes(), (r / 'metrics.csv').read_text()
    capsys.readouterr()
    with monkeypatch.context() as m:                        # extend the run; writing the new model.pt fails
        _on_write(m, 'model.pt', act)
        assert main(['train', '--resume', str(r), '--epochs', '2']) == 1
    err = _one_line_error(capsys)
    assert f'could not write {r / "model.pt"}: {cause}' in err and 'without training again' in err
    if case == 'permission': assert 'free some space' not in err.lower() and 'permission' in err
    assert (r / 'model.pt').read_bytes() == model_before                 # the previous model.pt is intact
    assert (r / 'metrics.csv').read_text().startswith(csv_before.rstrip('\r\n'))
    assert torch.load(r / 'last.pt', weights_only=True)['epoch'] == 1     # epoch 1 is trained and kept
    assert main(['train', '--resume', str(r)]) == 0                        # writes the final files, trains nothing
    assert 'writing them now' in capsys.readouterr().err
    _final_files_are_whole(r)
    assert main(['train', '--resume', str(r)]) == 1 and 'already trained 2 epochs' in capsys.readouterr().err


def test_a_run_with_seed_0_resumes(data, tmp_path):
    with pytest.MonkeyPatch.context() as m:
        _with_cb(m, StopAfter(0))
        assert run(data, tmp_path / 'r', '--epochs', '2', '--seed', '0') == 0
    assert main(['train', '--resume', str(tmp_path / 'r')]) == 0
    assert torch.load(tmp_path / 'r' / 'last.pt', weights_only=True)['epoch'] == 1


def test_seed_out_of_torchs_range_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e: main(['train', '--seed', str(10**23)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'Traceback' not in err
    assert err.strip().splitlines()[-1] == (f"miniai train: error: argument --seed: must be an integer from {-2**63} "
                                            f"to {2**64 - 1}, got {10**23}")


def test_resume_reads_the_runs_data_by_absolute_path_and_refuses_other_data(data, tmp_path, monkeypatch, capsys):
    import shutil
    (tmp_path / 'a').mkdir()
    shutil.copytree(data, tmp_path / 'a' / 'fm')
    monkeypatch.chdir(tmp_path / 'a')
    with monkeypatch.context() as m:
        _with_cb(m, StopAfter(0))
        assert main(['train', '--data', 'fm', '--out', 'r', '--bs', '64', '--epochs', '3', '--device', 'cpu']) == 0
    r = tmp_path / 'a' / 'r'
    assert json.loads((r / 'config.json').read_text())['data'] == str(tmp_path / 'a' / 'fm')
    # another folder holding other files under the same relative name: the run's own data are still the ones read
    (tmp_path / 'b' / 'fm').mkdir(parents=True)
    for name in NAMES['train'] + NAMES['test']: (tmp_path / 'b' / 'fm' / name).write_bytes((data / name).read_bytes())
    rng = np.random.default_rng(1)
    write_idx(tmp_path / 'b' / 'fm' / NAMES['train'][0], rng.integers(0, 255, (600, 28, 28)))
    monkeypatch.chdir(tmp_path / 'b')
    capsys.readouterr()
    assert main(['train', '--resume', str(r), '--data', 'fm']) == 1
    err = _one_line_error(capsys)
    assert "are not the run's: its training set had 600 images" in err and str(tmp_path / 'a' / 'fm') in err
    assert torch.load(r / 'last.pt', weights_only=True)['epoch'] == 0        # nothing was trained
    shutil.move(tmp_path / 'a' / 'fm', tmp_path / 'moved')                   # the run's data moved: say where
    assert main(['train', '--resume', str(r), '--epochs', '2']) == 1
    assert 'pass --data with the folder that holds them now' in _one_line_error(capsys)
    assert main(['train', '--resume', str(r), '--epochs', '2', '--data', str(tmp_path / 'moved')]) == 0
    assert json.loads((r / 'config.json').read_text())['data'] == str(tmp_path / 'moved')
    assert main(['train', '--resume', str(r), '--epochs', '3']) == 0         # the new place is remembered


def test_flags_that_would_change_a_resumed_run_are_refused(data, tmp_path, capsys):
    with pytest.MonkeyPatch.context() as m:
        _with_cb(m, StopAfter(0))
        assert run(data, tmp_path / 'r', '--epochs', '2', '--seed', '3') == 0
    csv_before = (tmp_path / 'r' / 'metrics.csv').read_text()
    capsys.readouterr()
    for flags, named in ((['--lr', '0.06'], '--lr'), (['--bs', '32', '--clip', '1', '--accumulate', '2'],
                                                     '--accumulate, --bs, --clip'), (['--seed', '42'], '--seed')):
        assert main(['train', '--resume', str(tmp_path / 'r'), *flags]) == 1    # 0.06 and 42: miniai's defaults
        err = _one_line_error(capsys)
        assert f'{named} would change the run' in err and 'give only --epochs, --device, --data' in err, err
    assert "its own flags from" in err and '(--seed 3)' in err                  # the run's value, shown
    assert (tmp_path / 'r' / 'metrics.csv').read_text() == csv_before
    # the run's own command line with --resume added is the same run
    assert run(data, tmp_path / 'r', '--seed', '3', '--resume', str(tmp_path / 'r')) == 0


def _concurrent(warm, data, outs):
    ps = [warm.popen(['-m', 'miniai', 'train', '--data', str(data), '--out', str(o), '--limit', '120', '--bs', '40',
                      '--epochs', '1', '--device', 'cpu'], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True) for o in outs]
    return [(p.returncode, err) for p in ps for _, err in [p.communicate(timeout=300)]]


def _intact(run_dir):
    assert [x['epoch'] for x in rows(run_dir / 'metrics.csv')] == ['0']
    assert torch.load(run_dir / 'last.pt', weights_only=True)['epoch'] == 0
    _final_files_are_whole(run_dir)


N_CONCURRENT = 3                     # docs/reliability.md quotes this count


def test_concurrent_runs_into_distinct_folders_all_finish_intact(data, tmp_path, warm):
    outs = [tmp_path / f'r{i}' for i in range(N_CONCURRENT)]
    got = _concurrent(warm, data, outs)
    assert [rc for rc, _ in got] == [0] * N_CONCURRENT, got
    for o in outs: _intact(o)


def test_concurrent_runs_into_the_same_folder_give_one_run_and_one_line_refusals(data, tmp_path, warm):
    got = _concurrent(warm, data, [tmp_path / 'r'] * N_CONCURRENT)
    assert sorted(rc for rc, _ in got) == [0] + [1] * (N_CONCURRENT - 1), got
    for rc, err in got:
        if rc == 0: continue
        assert len(err.strip().splitlines()) == 1 and err.startswith(f'miniai: error: --out {tmp_path / "r"}'), err
        assert any(w in err for w in ('is in use by another', 'already holds files', 'just taken')), err
    _intact(tmp_path / 'r')
