"""`miniai train` end to end on a tiny synthetic Fashion-MNIST: outputs, flags, errors, resume, reproducibility."""
import argparse
import csv
import importlib.util
import json
import os
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

from conftest import StopAfter
from miniai.cli import main, recipe_model
from miniai.core import Callback, CancelFitException

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


@pytest.mark.slow
def test_train_writes_metrics_png_config_and_checkpoints(data, tmp_path, capsys):
    assert run(data, tmp_path / 'r', '--epochs', '2') == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ['accuracy', 'loss', 'epoch', 'phase', 'time'] and 'test accuracy' in out
    r = rows(tmp_path / 'r' / 'metrics.csv')
    assert list(r[0]) == ['epoch', 'phase', 'loss', 'accuracy', 'lr', 'seconds']
    assert [(x['epoch'], x['phase']) for x in r] == [('0', 'train'), ('0', 'eval'), ('1', 'train'), ('1', 'eval')]
    assert float(r[-1]['accuracy']) > 0.5  # the synthetic classes are easy
    for png in ('training.png', 'confusion.png'): assert (tmp_path / 'r' / png).read_bytes()[:4] == b'\x89PNG'
    cfg = json.loads((tmp_path / 'r' / 'config.json').read_text())
    assert cfg['epochs'] == 2 and cfg['bs'] == 64 and cfg['device'] == 'cpu'
    assert {'last.pt', 'best.pt', 'model.pt'} <= set(os.listdir(tmp_path / 'r'))


def test_train_says_what_it_trains_on(data, tmp_path, capsys):
    assert run(data, tmp_path / 'r', '--epochs', '1') == 0
    first = capsys.readouterr().out.splitlines()[0]
    n_params = sum(p.numel() for p in recipe_model().parameters())
    for part in ('cpu', str(data), '600 training', '120 test', f'{n_params:,} parameters', '1 epoch, bs 64'):
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
    assert made == [('EarlyStoppingCB', (), {'patience': 3}), ('GradientClipCB', (0.5,), {}),
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
    from miniai.gradients import GradientAccumulationCB, GradientClipCB
    from miniai.stopping import EarlyStoppingCB
    args = cli.build_parser().parse_args(['train', '--early-stop', '2', '--clip', '1.5', '--accumulate', '3'])
    cbs = cli._build_callbacks(args, tmp_path)
    assert [type(c) for c in cbs] == [EarlyStoppingCB, GradientClipCB, GradientAccumulationCB]
    assert 2 in vars(cbs[0]).values() and 1.5 in vars(cbs[1]).values() and 3 in vars(cbs[2]).values()
    assert run(data, tmp_path / 'r', '--epochs', '2', '--early-stop', '1', '--clip', '1', '--accumulate', '2') == 0
    assert len(rows(tmp_path / 'r' / 'metrics.csv')) >= 2


@pytest.mark.slow
def test_tensorboard_flag_writes_event_files(data, tmp_path):
    """Needs the tensorboard package (`--tensorboard` uses miniai.tensorboard.TensorBoardCB)."""
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
    assert main(['train', '--data', str(tmp_path / 'nope'), '--out', str(tmp_path / 'r')]) == 1
    assert 'lacks the Fashion-MNIST file' in capsys.readouterr().err


@pytest.mark.slow
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
    # training.png's curve: the resumed run holds every batch's loss since epoch 0, as the uninterrupted one does
    assert part['callbacks']['ProgressCB.0']['losses'] == full['callbacks']['ProgressCB.0']['losses']
    assert len(full['callbacks']['ProgressCB.0']['losses']) == 3 * 10      # 600 images, batches of 64
    a, b = rows(tmp_path / 'full' / 'metrics.csv'), rows(tmp_path / 'part' / 'metrics.csv')
    assert [(x['epoch'], x['phase'], x['loss'], x['accuracy']) for x in a] == \
        [(x['epoch'], x['phase'], x['loss'], x['accuracy']) for x in b]


@pytest.mark.slow
def test_two_deterministic_runs_give_identical_metrics(data, tmp_path):
    for d in ('a', 'b'): assert run(data, tmp_path / d, '--epochs', '2', '--deterministic', '--seed', '3') == 0
    a, b = rows(tmp_path / 'a' / 'metrics.csv'), rows(tmp_path / 'b' / 'metrics.csv')
    drop = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'} for r in rs]  # wall-clock time differs
    assert drop(a) == drop(b) and len(a) == 4


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(data, tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1'}
    out = tmp_path / 'r'
    p = subprocess.Popen([sys.executable, '-m', 'miniai', 'train', '--data', str(data), '--out', str(out), '--bs',
                          '8', '--epochs', '50', '--device', 'cpu'], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
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
    from miniai import cli
    gate = threading.Barrier(n)
    def pick():
        gate.wait()
        try: results.append(cli._new_out_dir(out)[0])
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
    from miniai import cli
    gate.wait()
    q.put(str(cli._new_out_dir(None)[0]))


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
    assert all('--out' in str(e) and ('already holds files' in str(e) or 'just taken' in str(e))
               for e in got if not isinstance(e, Path))


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
    from miniai import cli
    def bug(*a, **k): raise ValueError("a bug in miniai")
    monkeypatch.setattr(cli, 'build_learner', bug)
    with pytest.raises(ValueError, match='a bug in miniai'): run(data, tmp_path / 'r', '--epochs', '1')


def test_a_failed_start_leaves_no_empty_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(['train', '--data', str(tmp_path / 'nope'), '--device', 'cpu']) == 1
    assert 'lacks the Fashion-MNIST file' in capsys.readouterr().err
    assert list((tmp_path / 'runs').iterdir()) == []
    (tmp_path / 'mine').mkdir()                       # a folder the user made stays, empty as it was
    assert main(['train', '--data', str(tmp_path / 'nope'), '--out', str(tmp_path / 'mine'), '--device', 'cpu']) == 1
    assert (tmp_path / 'mine').is_dir() and list((tmp_path / 'mine').iterdir()) == []


class CrashInEval(Callback):
    """Simulates a crash in epoch `n`'s eval phase: the train row of that epoch is already in metrics.csv."""
    order = 30
    def __init__(self, n): self.n = n
    def after_batch(self, learn):
        if not learn.training and learn.epoch == self.n: raise CancelFitException()


def _with_cb(monkeypatch, cb):
    from miniai import cli
    orig = cli.build_learner
    def adding(*a, **k):
        learn = orig(*a, **k)
        learn.add_cbs([cb])
        return learn
    monkeypatch.setattr(cli, 'build_learner', adding)


@pytest.mark.slow
def test_metrics_csv_holds_each_row_once_after_a_crash_and_resume(data, tmp_path, monkeypatch):
    assert run(data, tmp_path / 'full', '--epochs', '3', '--deterministic') == 0
    with monkeypatch.context() as m:
        _with_cb(m, CrashInEval(1))
        assert run(data, tmp_path / 'part', '--epochs', '3', '--deterministic') == 0
    assert [(x['epoch'], x['phase']) for x in rows(tmp_path / 'part' / 'metrics.csv')][-1] == ('1', 'train')
    assert main(['train', '--resume', str(tmp_path / 'part')]) == 0
    key = lambda rs: [(x['epoch'], x['phase'], x['loss'], x['accuracy']) for x in rs]
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
    from miniai import cli
    from miniai.datasets import get_dls
    args = cli._resume_args(argparse.Namespace(resume=tmp_path / 'r', device='cpu'))
    learn = cli.build_learner(args, get_dls(64, path=data, limit=None), tmp_path / 'x', 'cpu')
    learn.load(tmp_path / 'r' / 'interrupted.pt')
    assert learn.resume_epoch == 1
    assert [(r['epoch'], r['phase']) for r in learn.cbs[1].history] == [(0, 'train'), (0, 'eval')]


@pytest.mark.slow
def test_resumed_metrics_csv_keeps_the_lr_column(data, tmp_path, monkeypatch):
    """Regression: the resume's rewrite of metrics.csv (from the checkpoint's rows) dropped CSVLoggerCB's lr column,
    for the rows before the resume and, since the logger keeps an existing file's header, for every row after."""
    assert run(data, tmp_path / 'full', '--epochs', '3', '--deterministic') == 0
    with monkeypatch.context() as m:
        _with_cb(m, StopAfter(1))
        assert run(data, tmp_path / 'part', '--epochs', '3', '--deterministic') == 0
    assert main(['train', '--resume', str(tmp_path / 'part')]) == 0
    drop = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'} for r in rs]  # wall-clock time differs
    full, part = rows(tmp_path / 'full' / 'metrics.csv'), rows(tmp_path / 'part' / 'metrics.csv')
    assert list(part[0]) == ['epoch', 'phase', 'loss', 'accuracy', 'lr', 'seconds']
    assert drop(part) == drop(full) and all(float(r['lr']) > 0 for r in part)


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
    assert last['OneCycleSchedCB.0']['i'] == 10               # 600 images, batches of 64: epoch 0's 10 steps
    assert intr['OneCycleSchedCB.0']['i'] == 10 + 3           # and the 3 batches of epoch 1 before the interrupt
