"""miniai.distributed: shards, no-ops outside torchrun, and one real 2-process gloo run under torchrun.

The run (this file, launched as a script by `torchrun --standalone --nproc_per_node 2`) must match a 1-process run
with the same global batch size: 2 ranks x 16 items see the same 32 items per step as 1 x 32 when nothing is shuffled
(each rank takes every other item), DDP averages the gradients, and the model has no BatchNorm.
"""
import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torcheval.metrics import MulticlassAccuracy

from miniai.callbacks import CSVLoggerCB, MetricsCB, ProgressCB
from miniai.checkpoint import SaveModelCB
from miniai.core import Callback
from miniai.datasets import DataLoaders, InMemoryLoader
from miniai.distributed import (
    DDPCB,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    distributed_dls,
    is_distributed,
    is_main_process,
    rank,
    world_size,
)
from miniai.gradients import GradientAccumulationCB, GradientClipCB
from miniai.learner import TrainLearner
from miniai.stopping import EarlyStoppingCB

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_VALID, BS = 192, 67, 32  # BS is the global batch; the 67 validation items split 34 + 33


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_VALID, 8, generator=g)
    y = (x @ torch.randn(8, 4, generator=g)).argmax(1)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def make_dls(bs, kind, shuffle=False):
    (xt, yt), (xv, yv) = data()
    if kind == 'memory': return DataLoaders(InMemoryLoader((xt, yt), bs, shuffle=shuffle), InMemoryLoader((xv, yv), bs))
    return DataLoaders(DataLoader(TensorDataset(xt, yt), bs, shuffle=shuffle), DataLoader(TensorDataset(xv, yv), bs))


def learner(bs, kind='memory', cbs=(), shuffle=False):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return TrainLearner(model, make_dls(bs, kind, shuffle), F.cross_entropy, lr=0.2,
                        cbs=[MetricsCB(accuracy=MulticlassAccuracy()), *cbs])


def rows(learn):
    metrics = next(cb for cb in learn.cbs if isinstance(cb, MetricsCB))
    return [{k: v for k, v in r.items() if k != 'time'} for r in metrics.history]


def weights(learn): return {k: v.clone() for k, v in learn.model.state_dict().items()}


class SeenCB(Callback):
    """The first feature of every training item, per epoch: which items a rank trained on, in which order."""
    def __init__(self): self.seen = {}
    def after_batch(self, learn):
        if learn.training: self.seen.setdefault(learn.epoch, []).extend(learn.batch[0][:, 0].tolist())


class SyncCB(Callback):
    """Whether DistributedDataParallel all-reduces each training batch's gradients (False inside `no_sync`)."""
    def __init__(self): self.seen = []
    def after_predict(self, learn):
        if learn.training and learn.epoch == 0: self.seen.append(learn.model.require_backward_grad_sync)


# ---------------------------------------------------------------- the worker: run by torchrun, one per rank
def worker(out: Path, fm: Path):
    torch.set_num_threads(1)
    ddp = DDPCB('cpu', seed=3)                    # joins the gloo group torchrun describes
    res, buf = {'world_size': world_size()}, io.StringIO()
    with contextlib.redirect_stdout(buf):
        for kind in ('memory', 'plain'):
            learn = learner(BS // 2, kind, [ddp, ProgressCB(interactive=False), CSVLoggerCB(out / f'{kind}.csv'),
                                            SaveModelCB(out / kind, monitor='accuracy')])
            learn.fit(2)
            res[kind] = {'rows': rows(learn), 'weights': weights(learn),
                         'unwrapped': type(learn.model) is nn.Sequential}
        learn = learner(BS // 2, 'memory', [ddp])
        before = weights(learn)
        sweep = learn.lr_find(num_it=30, show_plot=False)
        res['lr_find'] = {'losses': sweep.losses, 'restored': all(torch.equal(before[k], v)
                                                                  for k, v in weights(learn).items())}
        seen = SeenCB()
        learn = learner(BS // 2, 'memory', [ddp, seen], shuffle=True)
        learn.fit_one_cycle(2, 0.2)
        res['one_cycle'] = {'rows': rows(learn), 'seen': seen.seen}
        es, sync = EarlyStoppingCB(patience=1), SyncCB()
        learn = learner(BS // 4, 'memory', [ddp, GradientAccumulationCB(2), GradientClipCB(0.5), es, sync])
        learn.fit(3)
        res['grads'] = {'rows': rows(learn), 'weights': weights(learn), 'best_epoch': es.best_epoch,
                        'sync': sync.seen}
        from miniai.cli import main  # last: it leaves the process group when done
        res['cli_rc'] = main(['train', '--data', str(fm), '--out', str(out / 'cli'), '--bs', '64', '--epochs', '1',
                              '--device', 'cpu'])
    res['stdout'] = buf.getvalue()
    torch.save(res, out / f"rank{os.environ['RANK']}.pt")


def torchrun(warm, *args) -> list[str]:
    """The arguments of `python -m torch.distributed.run --standalone --nproc_per_node 2 ARGS...`, its two workers
    forked from the warm parent too (torchrun's `--no-python` starts the command it is given as it is).
    `--standalone`: a rendezvous on localhost with a free port, so parallel test runs don't collide."""
    return ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '--no-python',
            *warm.command(*args)]


@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory, warm):
    from test_datasets import make_source
    out, fm = tmp_path_factory.mktemp('ddp'), tmp_path_factory.mktemp('fm')
    make_source(fm, n_train=256, n_test=64)
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', 'HF_DATASETS_OFFLINE': '1',
           'HF_HUB_OFFLINE': '1'}
    log = out / 'log.txt'                         # a file, not a pipe: the workers may outlive torchrun
    with open(log, 'w') as f:
        p = warm.popen(torchrun(warm, __file__, str(out), str(fm)), env=env, stdout=f, stderr=subprocess.STDOUT)
        try: p.wait(timeout=120)
        except subprocess.TimeoutExpired:         # ranks waiting for each other: torchrun stops its workers on SIGTERM
            p.terminate()
            p.wait(timeout=60)
            pytest.fail(f"the 2-process run hung (a collective one rank never reached?):\n{log.read_text()[-4000:]}")
    assert p.returncode == 0, log.read_text()[-4000:]
    return out, [torch.load(out / f'rank{r}.pt', weights_only=False) for r in (0, 1)]


def close(a, b, tol=1e-5):
    assert [r['epoch'] for r in a] == [r['epoch'] for r in b]
    for ra, rb in zip(a, b):
        for k in ('train_loss', 'valid_loss', 'train_accuracy', 'valid_accuracy'):
            assert ra[k] == pytest.approx(rb[k], abs=tol), (k, ra, rb)


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['memory', 'plain'])
def test_two_ranks_match_one_process_with_the_same_global_batch(ddp_run, kind):
    _, (r0, r1) = ddp_run
    ref = learner(BS, kind)
    with contextlib.redirect_stdout(io.StringIO()): ref.fit(2)
    assert r0['world_size'] == 2 and r0[kind]['rows'] == r1[kind]['rows']  # every rank holds the global numbers
    close(r0[kind]['rows'], rows(ref))
    assert r0[kind]['unwrapped'] and r1[kind]['unwrapped']           # learn.model is yours again after the fit
    for k, v in weights(ref).items():
        torch.testing.assert_close(r0[kind]['weights'][k], v, atol=1e-5, rtol=1e-5)
        assert torch.equal(r0[kind]['weights'][k], r1[kind]['weights'][k])


@pytest.mark.slow
def test_checkpoint_saved_under_ddp_loads_in_one_process_and_files_are_written_once(ddp_run):
    out, (r0, _) = ddp_run
    sd = torch.load(out / 'memory' / 'last.pt', weights_only=True)['model']
    assert not [k for k in sd if k.startswith('module.')] and (out / 'memory' / 'best.pt').is_file()
    learn = learner(BS).load(out / 'memory' / 'last.pt')
    assert all(torch.equal(v, r0['memory']['weights'][k]) for k, v in weights(learn).items())
    assert len((out / 'memory.csv').read_text().splitlines()) == 1 + 2  # a header and 2 epochs, once


@pytest.mark.slow
def test_only_rank_0_prints(ddp_run):
    _, (r0, r1) = ddp_run
    assert r0['stdout'].splitlines()[0].split() == ['epoch', 'train_loss', 'valid_loss', 'train_accuracy',
                                                    'valid_accuracy', 'lr', 'time']
    assert 'valid_accuracy' in r0['stdout'] and r1['stdout'] == ''


@pytest.mark.slow
def test_lr_find_stops_at_the_same_batch_on_every_rank_and_restores_the_model(ddp_run):
    _, (r0, r1) = ddp_run
    assert r0['lr_find']['losses'] == r1['lr_find']['losses'] and 2 <= len(r0['lr_find']['losses']) <= 30
    assert r0['lr_find']['restored'] and r1['lr_find']['restored']


@pytest.mark.slow
def test_shuffled_shards_split_each_epoch_and_are_reseeded_every_epoch(ddp_run):
    _, (r0, r1) = ddp_run
    (xt, _), _ = data()
    everything = sorted(xt[:, 0].tolist())
    for epoch in (0, 1):
        a, b = r0['one_cycle']['seen'][epoch], r1['one_cycle']['seen'][epoch]
        assert len(a) == len(b) == N_TRAIN // 2 and sorted(a + b) == everything
    assert r0['one_cycle']['seen'][0] != r0['one_cycle']['seen'][1]
    assert r0['one_cycle']['rows'] == r1['one_cycle']['rows']


@pytest.mark.slow
def test_clipping_accumulation_and_early_stopping_under_ddp_match_one_process(ddp_run):
    _, (r0, r1) = ddp_run
    es = EarlyStoppingCB(patience=1)
    ref = learner(BS, 'memory', [GradientClipCB(0.5), es])   # 2 ranks x 2 accumulated x BS/4: the same global batch
    with contextlib.redirect_stdout(io.StringIO()): ref.fit(3)
    assert r0['grads']['rows'] == r1['grads']['rows'] and r0['grads']['best_epoch'] == es.best_epoch
    assert r0['grads']['sync'] == [False, True] * (N_TRAIN // BS)     # one all-reduce per 2 accumulated batches
    close(r0['grads']['rows'], rows(ref))
    for k, v in weights(ref).items():
        torch.testing.assert_close(r0['grads']['weights'][k], v, atol=1e-5, rtol=1e-5)
        assert torch.equal(r0['grads']['weights'][k], r1['grads']['weights'][k])


@pytest.mark.slow
def test_miniai_train_under_torchrun_writes_its_files_once(ddp_run):
    out, (r0, r1) = ddp_run
    import json
    assert r0['cli_rc'] == r1['cli_rc'] == 0
    assert {'metrics.csv', 'training.png', 'config.json', 'last.pt', 'best.pt'} <= set(os.listdir(out / 'cli'))
    assert json.loads((out / 'cli' / 'config.json').read_text())['world_size'] == 2
    assert len((out / 'cli' / 'metrics.csv').read_text().splitlines()) == 1 + 1     # a header and the one epoch, once


# ---------------------------------------------------------------- in this process: no group
def test_outside_torchrun_everything_is_a_no_op(monkeypatch):
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    t = torch.ones(3)
    assert not is_distributed() and rank() == 0 and world_size() == 1 and is_main_process()
    assert all_reduce_sum(t) is t and all_reduce_mean(t) is t and broadcast_object(t) is t and barrier() is None
    ddp = DDPCB('cpu')
    learn = learner(BS, cbs=[ddp])
    model, dls = learn.model, learn.dls
    learn.fit(1)
    assert ddp.device == torch.device('cpu') and learn.model is model and learn.dls is dls
    assert len(rows(learn)) == 1                                     # one row an epoch


def items(dl, epoch=0):
    if hasattr(dl, 'set_epoch'): dl.set_epoch(epoch)
    elif hasattr(dl.sampler, 'set_epoch'): dl.sampler.set_epoch(epoch)
    return torch.cat([b[1] for b in dl]).tolist()


def index_dls(kind, n_train=37, n_valid=23, bs=4):
    xt, xv = torch.arange(n_train), torch.arange(n_valid)
    if kind == 'memory': return DataLoaders(InMemoryLoader((xt, xt), bs, shuffle=True), InMemoryLoader((xv, xv), bs))
    return DataLoaders(DataLoader(TensorDataset(xt, xt), bs, shuffle=True), DataLoader(TensorDataset(xv, xv), bs))


@pytest.mark.parametrize('kind', ['memory', 'plain'])
def test_shards_step_together_in_training_and_count_each_item_once_in_validation(kind):
    shards = [distributed_dls(index_dls(kind), 2, r, seed=5) for r in (0, 1)]
    assert len(shards[0].train) == len(shards[1].train)                 # DDP's all-reduce needs equal steps
    v0, v1 = (items(s.valid) for s in shards)
    assert sorted(v0 + v1) == list(range(23)) and v0 == list(range(0, 23, 2))
    t0, t1 = (items(s.train) for s in shards)
    assert set(t0 + t1) == set(range(37)) and items(shards[0].train, 1) != t0   # reseeded by set_epoch


def test_in_memory_and_plain_loaders_get_the_same_shards():
    for r in (0, 1):
        mem, plain = (items(distributed_dls(index_dls(k), 2, r, seed=5).train, 3) for k in ('memory', 'plain'))
        assert plain[:len(mem)] == mem  # DistributedSampler pads the shorter shard with a repeat; that's all


def test_uneven_in_memory_shards_are_cut_to_the_same_number_of_batches():
    x = torch.arange(33)
    shards = [distributed_dls(DataLoaders(InMemoryLoader((x, x), 16), InMemoryLoader((x, x), 16)), 2, r)
              for r in (0, 1)]  # 17 and 16 items: 2 and 1 batches of 16
    assert [len(s.train) for s in shards] == [1, 1] and [len(list(s.train)) for s in shards] == [1, 1]
    assert [len(s.valid) for s in shards] == [2, 1]                      # validation keeps every item


def test_a_loader_it_cannot_shard_is_a_clear_error():
    with pytest.raises(TypeError, match='DDPCB\\(shard=False\\)'): distributed_dls(DataLoaders([1, 2], [3]), 2, 0)


@pytest.mark.slow
def test_device_and_rank_helpers_are_the_ground_floor():
    code = ("import sys, miniai.device; print(sorted(m for m in sys.modules if m.startswith('miniai.')));"
            "import miniai.distributed; print('miniai.callbacks' in sys.modules)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split('\n')
    assert out[0] == "['miniai.device']" and out[1] == 'False'   # distributed no longer imports callbacks
    import miniai.callbacks as cbs
    import miniai.device as dev
    import miniai.distributed as d
    assert cbs.to_device is dev.to_device and cbs.def_device == dev.def_device
    assert d.rank is dev.rank and d.is_main_process is dev.is_main_process and d.barrier is dev.barrier


if __name__ == '__main__': worker(Path(sys.argv[1]), Path(sys.argv[2]))


# ---------------------------------------------------------------- a stalled rank
STALL = """
import os, sys, time
from pathlib import Path
from miniai import cli
from miniai.cli import run as cli_run
if os.environ['RANK'] == '1':                     # this rank stops answering once both have joined
    def stall(*a, **k):
        Path(sys.argv[1], 'stalled').write_text(str(time.time()))
        time.sleep(300)
    cli_run.build_learner = stall
sys.exit(cli.main(['train', '--data', sys.argv[2], '--out', sys.argv[1] + '/run', '--bs', '64', '--epochs', '1',
                   '--device', 'cpu', '--dist-timeout', sys.argv[3]]))
"""
TIMEOUT = 3


def _torchrun_setup(tmp_path, name, script):
    """Tiny Fashion-MNIST files in tmp_path/fm, `script` saved as tmp_path/name, and the workers' environment."""
    from test_datasets import make_source
    fm = tmp_path / 'fm'
    fm.mkdir()
    make_source(fm, n_train=256, n_test=64)
    (tmp_path / name).write_text(script)
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', 'HF_DATASETS_OFFLINE': '1',
           'HF_HUB_OFFLINE': '1'}
    return fm, env


@pytest.mark.slow
def test_a_stalled_rank_ends_the_run_with_a_clear_error_within_the_timeout(tmp_path, warm):
    fm, env = _torchrun_setup(tmp_path, 'stall.py', STALL)
    log = tmp_path / 'log.txt'
    with open(log, 'w') as f:
        p = warm.popen(torchrun(warm, str(tmp_path / 'stall.py'), str(tmp_path), str(fm), str(TIMEOUT)), env=env,
                       stdout=f, stderr=subprocess.STDOUT)
        try: p.wait(timeout=200)
        except subprocess.TimeoutExpired:
            p.kill()
            pytest.fail(f"the run with a stalled rank did not end:\n{log.read_text()[-3000:]}")
    ended, text = time.time(), log.read_text()
    assert p.returncode != 0
    assert f'miniai: error: process 0 waited more than --dist-timeout {TIMEOUT} s' in text, text[-3000:]
    # the stall began before the timeout could run; everything after it (timeout, exit, torchrun's cleanup) is short
    assert ended - float((tmp_path / 'stalled').read_text()) < TIMEOUT + 60


RECORD_RC = """
import os, sys
from pathlib import Path
from miniai import cli
rc = cli.main(['train', '--data', sys.argv[2], '--out', sys.argv[1] + '/run', '--bs', '8', '--epochs', '50',
               '--device', 'cpu'])
Path(sys.argv[1], f"rc{os.environ['RANK']}").write_text(str(rc))
sys.exit(rc)
"""


@pytest.mark.slow
@pytest.mark.parametrize('launcher', ['torch.distributed.run', 'miniai.launch'])
def test_ctrl_c_under_torchrun_saves_once_and_every_process_exits_130(tmp_path, launcher, warm):
    """The launcher is a process of its own in a new session, as in a terminal; its workers start from the warm
    parent (torchrun puts each in a session of its own and passes the signal on to it, as to any worker). They end
    without tearing their modules down, so what an interpreter could print while doing that is not checked here."""
    import signal

    fm, env = _torchrun_setup(tmp_path, 'rc.py', RECORD_RC)
    run = tmp_path / 'run'
    log = tmp_path / 'log.txt'
    with open(log, 'w') as f:
        p = subprocess.Popen([sys.executable, '-m', launcher, '--standalone', '--nproc_per_node', '2', '--no-python',
                              *warm.command(str(tmp_path / 'rc.py'), str(tmp_path), str(fm))], env=env, stdout=f,
                             stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while not (run / 'last.pt').exists() and time.time() < deadline: time.sleep(0.2)   # an epoch is done
        os.killpg(p.pid, signal.SIGINT)                   # what Ctrl-C in a terminal does: the whole group gets it
        try: p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            pytest.fail(f"Ctrl-C under torchrun did not end the run:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert [(tmp_path / f'rc{r}').read_text() for r in (0, 1)] == ['130', '130'], text[-3000:]
    assert '[rank0]: Traceback' not in text and '[rank1]: Traceback' not in text
    assert text.count('interrupted: state saved to') == 1           # rank 0 writes and says it, once
    assert torch.load(run / 'interrupted.pt', weights_only=True)['format'] == 'miniai-checkpoint-1'
    if launcher == 'miniai.launch':                       # torchrun itself exits 1 with its own traceback
        assert p.returncode == 130 and 'SignalException' not in text, text[-3000:]
