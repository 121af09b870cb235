"""WandBCB: offline W&B runs read back from their `.wandb` files hold the config, the per-step and per-epoch values
that MetricsCB and the optimizer had, and sample predictions; CSV, TensorBoard and W&B get the same rows; a user's
run is left open; `miniai train --wandb`; a clear error without wandb installed. No network: WANDB_MODE=offline."""
import csv
import importlib.util
import json
import struct
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torcheval.metrics import MulticlassAccuracy

from conftest import tiny_cnn, toy_images
from miniai.callbacks import CSVLoggerCB
from miniai.core import Callback
from miniai.learner import MetricsCB, TrainLearner
from miniai.sgd import BatchSchedCB
from miniai.wandb import WandBCB

try:
    import wandb
except ImportError:   # then only the tests of the messages that say how to install it run
    wandb = None
needs_wandb = pytest.mark.skipif(wandb is None, reason="needs wandb: pip install 'miniai-learner[wandb]'")


@pytest.fixture(scope='module')
def wandb_dir(tmp_path_factory):
    """Offline W&B with every folder it writes (runs, artifacts, cache, settings) in a temporary one."""
    if wandb is None: pytest.skip("needs wandb: pip install 'miniai-learner[wandb]'")
    root = tmp_path_factory.mktemp('wandb')
    env = {'WANDB_MODE': 'offline', 'WANDB_DIR': str(root), 'WANDB_DATA_DIR': str(root / 'data'),
           'WANDB_CACHE_DIR': str(root / 'cache'), 'WANDB_CONFIG_DIR': str(root / 'config'), 'WANDB_SILENT': 'true',
           'WANDB_CONSOLE': 'off', 'WANDB_DISABLE_GIT': 'true', 'WANDB_X_DISABLE_STATS': 'true'}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items(): mp.setenv(k, v)
        wandb.teardown()   # wandb reads its environment once per process: make it read this one
        yield root
        wandb.teardown()


# --- reading an offline run back --------------------------------------------------------------------------------
def records(path: Path):
    """The records of a `.wandb` file: a header (':W&B', magic 0xBEE1, version 0), then LevelDB's log format (32 KiB
    blocks of chunks, each with a 7-byte header: crc, length, type full/first/middle/last), each record a
    `wandb.proto.wandb_internal_pb2.Record`."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert struct.unpack('<4sHB', data[:7]) == (b':W&B', 0xBEE1, 0), f"{path} is not a W&B transaction log"
    pos, buf, block = 7, b'', 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7: pos += block - pos % block; continue   # a block's unusable tail
        _, n, kind = struct.unpack('<IHB', data[pos:pos + 7])
        if kind == 0: pos += block - pos % block; continue                  # zero padding
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            yield r


def read_run(folder: Path, timeout: float = 20.) -> dict:
    """An offline run folder as {'id', 'start', 'config', 'history' (rows without W&B's own `_` keys), 'tables' (the
    logged tables' JSON, with their images' files), 'exit_code'}, once its log ends with the run's exit record
    (`finish()` returns before W&B's service has written it all)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            run = _read_run(folder)
            if run['exit_code'] is not None: return run
        except Exception:   # a record half written
            if time.monotonic() > deadline: raise
        if time.monotonic() > deadline: raise AssertionError(f"{folder}: no exit record after {timeout} s")
        time.sleep(0.1)


def _read_run(folder: Path) -> dict:
    def item_key(i): return '/'.join(i.nested_key) if i.nested_key else i.key
    run = {'config': {}, 'history': [], 'tables': [], 'exit_code': None}
    for r in records(next(folder.glob('run-*.wandb'))):
        kind = r.WhichOneof('record_type')
        if kind == 'run':
            run['id'], run['start'] = r.run.run_id, r.run.start_time.ToNanoseconds()
            run['config'].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == 'config': run['config'].update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == 'history':
            row = {item_key(i): json.loads(i.value_json) for i in r.history.item}
            run['history'].append({k: v for k, v in row.items() if not k.startswith('_')})
        elif kind == 'artifact':
            files = {e.path: Path(e.local_path) for e in r.artifact.manifest.contents}
            table = json.loads(files.pop(next(p for p in files if p.endswith('.table.json'))).read_text())
            run['tables'].append({**table, 'files': files})
        elif kind == 'exit': run['exit_code'] = r.exit.exit_code
    run['config'].pop('_wandb', None)
    return run


def read_runs(root: Path) -> list[dict]:
    """Every offline run folder under `root`/wandb, oldest first (the `latest-run` link left out)."""
    folders = [p for p in (root / 'wandb').glob('offline-run-*') if p.is_dir() and not p.is_symlink()]
    return sorted((read_run(p) for p in folders), key=lambda r: r['start'])


def tb_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


# --- one learner, two fits, three loggers ----------------------------------------------------------------------
class Record(Callback):
    """What the loop had: each training loss, each step's lr, and the first validation batch of each epoch."""
    def __init__(self): self.losses, self.lrs, self.valid = [], [], []
    def before_step(self, learn): self.lrs.append(learn.opt.param_groups[0]['lr'])
    def before_epoch(self, learn): self.first = True
    def after_batch(self, learn):
        if learn.training: self.losses.append(learn.loss.item())
        elif self.first: self.valid.append((learn.batch[0].clone(), learn.preds.clone(), learn.batch[1].clone()))
        self.first = False


@pytest.fixture(scope='module')
def fitted(wandb_dir, tmp_path_factory):
    """A learner with MetricsCB, CSVLoggerCB, TensorBoardCB and WandBCB(samples=3), fitted twice (2 epochs, then 1)."""
    pytest.importorskip('tensorboard')
    from miniai.tensorboard import TensorBoardCB
    out = tmp_path_factory.mktemp('loggers')
    metrics, rec = MetricsCB(accuracy=MulticlassAccuracy()), Record()
    sched = BatchSchedCB(partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda i: 1 / (i + 1)))
    cb = WandBCB({'note': 'first try', 'lr': 0.5}, project='miniai-tests', samples=3, classes=list('abcdefghij'))
    learn = TrainLearner(tiny_cnn(), toy_images(n=64, bs=16), F.cross_entropy, lr=0.1,
                         opt_func=partial(torch.optim.SGD, momentum=0.9, weight_decay=0.01),
                         cbs=[metrics, CSVLoggerCB(out / 'metrics.csv'), TensorBoardCB(out / 'tb'), cb, sched, rec])
    learn.fit(2)
    learn.fit(1)                  # a second fit logs on, epochs and steps counting on
    return dict(learn=learn, metrics=metrics, rec=rec, out=out, cb=cb, runs=read_runs(wandb_dir))


def test_each_fit_is_one_offline_folder_of_the_same_finished_run(fitted):
    runs = fitted['runs']
    assert len(runs) == 2 and runs[0]['id'] == runs[1]['id'] == fitted['cb'].run_id
    assert [r['exit_code'] for r in runs] == [0, 0]
    assert wandb.run is None and fitted['cb'].run is None   # the callback finished what it started


def test_config_has_the_fit_hypers_and_what_the_user_passed(fitted):
    learn = fitted['learn']
    for run, n_epochs in zip(fitted['runs'], (2, 1)):
        cfg = run['config']
        assert cfg['n_epochs'] == n_epochs and cfg['batch_size'] == 16 and cfg['optimizer'] == 'SGD'
        assert cfg['opt']['momentum'] == 0.9 and cfg['opt']['weight_decay'] == 0.01 and cfg['opt']['lr'] == 0.1
        assert cfg['loss_func'] == 'cross_entropy' and cfg['learner'] == 'TrainLearner'
        assert cfg['n_params'] == sum(p.numel() for p in learn.model.parameters())
        assert cfg['note'] == 'first try' and cfg['lr'] == 0.5    # the user's value wins over the derived one
        assert 'foreach' not in cfg['opt']


def test_per_step_values_are_the_losses_and_hypers_the_steps_had(fitted):
    rec = fitted['rec']
    steps = [row for run in fitted['runs'] for row in run['history'] if 'step' in row]
    assert [row['step'] for row in steps] == list(range(1, 13))         # x = learn.iter_count, on across fits
    assert [row['step/train_loss'] for row in steps] == pytest.approx(rec.losses, rel=1e-6)
    assert [row['step/lr'] for row in steps] == pytest.approx(rec.lrs, rel=1e-9)
    assert [row['step/lr'] for row in steps][:8] == pytest.approx([0.1 / (i + 1) for i in range(8)])
    assert [row['step/mom'] for row in steps] == [0.9] * 12
    assert all(set(row) == {'step', 'step/train_loss', 'step/lr', 'step/mom'} for row in steps)


def test_per_epoch_values_are_the_metrics_rows(fitted):
    history = fitted['metrics'].history
    epochs = [row for run in fitted['runs'] for row in run['history'] if 'epoch' in row]
    assert [row['epoch'] for row in epochs] == [0, 1, 2]
    for got, want in zip(epochs, history):
        assert {k: v for k, v in got.items() if not k.startswith('samples')} == pytest.approx(want, rel=1e-9)


def test_sample_predictions_are_the_first_validation_items(fitted):
    tables = [t for run in fitted['runs'] for t in run['tables']]
    assert len(tables) == 3
    for epoch, (table, (x, preds, y)) in enumerate(zip(tables, fitted['rec'].valid)):
        assert table['columns'] == ['epoch', 'image', 'predicted', 'actual']
        assert [r[0] for r in table['data']] == [epoch] * 3
        assert [r[2] for r in table['data']] == ['abcdefghij'[i] for i in preds[:3].argmax(1)]
        assert [r[3] for r in table['data']] == ['abcdefghij'[i] for i in y[:3]]
        from PIL import Image
        for row in table['data']:
            img = Image.open(table['files'][row[1]['path']])
            assert img.size == (28, 28) and row[1]['caption'] == f'{row[2]} / {row[3]}'
        # no preprocessing to undo: each image is stretched to its own range, so it is the input up to that
        first = np.asarray(Image.open(table['files'][table['data'][0][1]['path']]).convert('L'), np.float32)
        want = (x[0, 0] - x[0, 0].min()) / (x[0, 0].max() - x[0, 0].min()) * 255
        assert np.abs(first - want.numpy()).max() <= 1


def test_csv_tensorboard_and_wandb_get_the_same_rows_under_the_same_names(fitted):
    history = fitted['metrics'].history
    with open(fitted['out'] / 'metrics.csv') as f: csv_rows = list(csv.DictReader(f))
    tb = tb_scalars(fitted['out'] / 'tb')
    wb = [row for run in fitted['runs'] for row in run['history'] if 'epoch' in row]
    names = [k for k in history[0] if k != 'epoch']
    assert list(csv_rows[0]) == ['epoch'] + names
    assert {t for t in tb if not t.startswith('step/')} == set(names)
    assert all({k for k in row if not k.startswith('samples')} == {'epoch', *names} for row in wb)
    for k in names:   # TensorBoard keeps float32
        want = [(r['epoch'], pytest.approx(r[k], rel=1e-6)) for r in history]
        assert [(int(r['epoch']), float(r[k])) for r in csv_rows] == want, k
        assert tb[k] == want, k
        assert [(r['epoch'], r[k]) for r in wb] == want, k
    assert [int(r['epoch']) for r in csv_rows] == [s for s, _ in tb['valid_loss']] == [0, 1, 2]
    steps = [r for run in fitted['runs'] for r in run['history'] if 'step' in r]
    assert [(s, v) for s, v in tb['step/train_loss']] == [
        (r['step'], pytest.approx(r['step/train_loss'], rel=1e-6)) for r in steps]


# --- whose run -------------------------------------------------------------------------------------------------
def small_learner(*cbs):
    return TrainLearner(tiny_cnn(), toy_images(n=32, bs=16), F.cross_entropy, lr=0.1,
                        opt_func=partial(torch.optim.SGD, momentum=0.9), cbs=[MetricsCB(), *cbs])


def test_a_run_the_user_started_is_used_and_left_open(wandb_dir, tmp_path):
    run = wandb.init(project='mine', config={'lr': 123, 'mine': 1}, dir=str(tmp_path))
    try:
        small_learner(WandBCB({'note': 'x'})).fit(1, valid=False)
        assert wandb.run is run                                  # still open: the user finishes it
        run.log({'after': 1})
    finally: run.finish()
    (got,) = read_runs(tmp_path)
    assert got['id'] == run.id and got['exit_code'] == 0
    assert got['config']['lr'] == 123 and got['config']['mine'] == 1     # the user's own values stay
    assert got['config']['note'] == 'x' and got['config']['n_epochs'] == 1
    assert [r['step'] for r in got['history'] if 'step' in r] == [1, 2]
    (row,) = [r for r in got['history'] if 'epoch' in r]                 # a fit without validation: train_ only
    assert row['epoch'] == 0 and 'train_loss' in row and 'valid_loss' not in row
    assert got['history'][-1] == {'after': 1}


def test_a_failed_fit_finishes_its_run_as_failed(wandb_dir, tmp_path):
    class Boom(Callback):
        def after_batch(self, learn):
            if learn.iter_count == 2: raise RuntimeError('boom')
    learn = small_learner(WandBCB(dir=str(tmp_path)), Boom())
    with pytest.raises(RuntimeError, match='boom'): learn.fit(1)
    assert wandb.run is None
    (got,) = read_runs(tmp_path)
    assert got['exit_code'] == 1
    assert [r['step'] for r in got['history'] if 'step' in r] == [1, 2]   # the steps before the error are kept


def test_only_rank_0_logs(wandb_dir, tmp_path, monkeypatch):
    import miniai.wandb as mw
    monkeypatch.setattr(mw, 'is_main_process', lambda: False)
    cb = WandBCB(dir=str(tmp_path), samples=2)
    small_learner(cb).fit(1)
    assert cb.run is None and wandb.run is None and not (tmp_path / 'wandb').exists()


def test_a_checkpoint_carries_the_run_id(wandb_dir, tmp_path):
    from miniai.checkpoint import load_checkpoint, save_checkpoint
    cb = WandBCB(dir=str(tmp_path))
    learn = small_learner(cb)
    learn.fit(1)
    save_checkpoint(learn, tmp_path / 'last.pt')
    cb2 = WandBCB(dir=str(tmp_path))
    learn2 = small_learner(cb2)
    load_checkpoint(learn2, tmp_path / 'last.pt')
    learn2.fit(2)                                                 # continues at epoch 1, in the same run
    first, second = read_runs(tmp_path)
    assert first['id'] == second['id'] == cb.run_id == cb2.run_id
    assert [r['epoch'] for run in (first, second) for r in run['history'] if 'epoch' in r] == [0, 1]
    assert [r['step'] for run in (first, second) for r in run['history'] if 'step' in r] == [1, 2, 3, 4]


def test_sample_images_undo_the_preprocessing_and_take_its_class_names(wandb_dir, tmp_path):
    rec = Record()
    learn = small_learner(WandBCB(dir=str(tmp_path), samples=2), rec)
    learn.preprocess = SimpleNamespace(mean=(0.5,), std=(0.25,), classes=tuple(f'c{i}' for i in range(10)))
    learn.fit(1)
    (run,) = read_runs(tmp_path)
    (table,) = run['tables']
    x, preds, y = rec.valid[0]
    assert [r[2] for r in table['data']] == [f'c{i}' for i in preds[:2].argmax(1)]
    assert [r[3] for r in table['data']] == [f'c{i}' for i in y[:2]]
    from PIL import Image
    for row, xi in zip(table['data'], x):
        got = np.asarray(Image.open(table['files'][row[1]['path']]).convert('L'), np.float32)
        assert np.abs(got - (xi[0] * 0.25 + 0.5).clamp(0, 1).numpy() * 255).max() <= 1


def test_fit_config_names_the_model_inside_a_wrapper_and_the_global_batch_size(monkeypatch):
    import miniai.wandb as mw
    learn = small_learner()
    learn.model, learn.n_epochs = torch.nn.DataParallel(learn.model), 3     # a wrapper with .module, as DDP
    learn.make_opt()
    monkeypatch.setattr(mw, 'world_size', lambda: 4)
    cfg = mw.fit_config(learn)
    assert cfg['model'] == 'Sequential' and cfg['batch_size'] == 64 and cfg['n_epochs'] == 3


# --- errors ----------------------------------------------------------------------------------------------------
def test_without_wandb_it_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, 'wandb', None)   # as if wandb were not installed
    with pytest.raises(ImportError, match=r"pip install 'miniai-learner\[wandb\]'"): WandBCB()


@needs_wandb
@pytest.mark.parametrize('bad', [-1, 1.5, True])
def test_samples_must_be_a_count(bad):
    with pytest.raises(ValueError, match='samples must be an integer >= 0'): WandBCB(samples=bad)


# --- miniai train --wandb --------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from test_datasets import make_source
    folder = tmp_path_factory.mktemp('fm')
    make_source(folder, n_train=64, n_test=32)
    return folder


def train(data, out, *extra):
    from miniai.cli import main
    return main(['train', '--data', str(data), '--out', str(out), '--bs', '32', '--device', 'cpu', *extra])


def test_cli_wandb_flag_logs_the_run_in_the_out_folder(wandb_dir, data, tmp_path, monkeypatch):
    monkeypatch.delenv('WANDB_PROJECT', raising=False)
    assert train(data, tmp_path / 'r', '--epochs', '2', '--wandb') == 0
    (run,) = read_runs(tmp_path / 'r')
    cfg = run['config']
    assert cfg['bs'] == 32 and cfg['epochs'] == 2 and cfg['wandb'] is True and cfg['batch_size'] == 32
    assert cfg['optimizer'] == 'AdamW' and cfg['n_epochs'] == 2
    with open(tmp_path / 'r' / 'metrics.csv') as f: csv_rows = list(csv.DictReader(f))
    wb = [r for r in run['history'] if 'epoch' in r]
    assert [r['epoch'] for r in wb] == [0, 1]
    assert [r['valid_accuracy'] for r in wb] == pytest.approx([float(r['valid_accuracy']) for r in csv_rows])
    assert [r['step'] for r in run['history'] if 'step' in r] == list(range(1, 5))   # 64 images, bs 32


def test_cli_wandb_without_the_package_says_how_to_install_it(data, tmp_path, monkeypatch, capsys):
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'wandb' else find(name, *a))
    assert train(data, tmp_path / 'r', '--epochs', '1', '--wandb') == 1
    err = capsys.readouterr().err
    assert err.startswith('miniai: error:') and "pip install 'miniai-learner[wandb]'" in err


def test_cli_help_names_the_flag_and_its_folder():
    from miniai.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == 'command')
    text = sub.choices['train'].format_help()
    assert '--wandb' in text and 'WandBCB' in text
    assert any(line.split()[:1] == ['wandb/'] for line in text.split('files written to --out:')[1].splitlines())

