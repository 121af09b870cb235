"""The callbacks every fit uses: DeviceCB, MetricsCB, ProgressCB, SingleBatchCB, CSVLoggerCB; set_seed; learners."""
import csv
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torcheval.metrics import MulticlassAccuracy

from conftest import DLs, tiny_cnn, toy_images
from miniai.callbacks import CSVLoggerCB
from miniai.core import Callback
from miniai.learner import (
    DeviceCB,
    MetricsCB,
    MomentumLearner,
    ProgressCB,
    SingleBatchCB,
    TrainLearner,
    set_seed,
    to_cpu,
    to_device,
)
from miniai.sgd import BatchSchedCB


def test_to_device_and_to_cpu_walk_nested_structures():
    b = {'x': torch.ones(2, dtype=torch.float16), 'ys': [torch.zeros(1), (torch.ones(1),)], 'n': 3}
    moved = to_device(b, 'meta')
    assert moved['x'].device.type == 'meta' and moved['ys'][1][0].device.type == 'meta' and moved['n'] == 3
    back = to_cpu({'x': b['x'].requires_grad_(False)})
    assert back['x'].dtype == torch.float32 and back['x'].device.type == 'cpu'


def test_devicecb_moves_model_and_batch():
    class FakeLearn: pass
    learn = FakeLearn()
    learn.model, learn.batch = nn.Linear(2, 2), (torch.ones(1, 2), [torch.zeros(1)])
    cb = DeviceCB('meta')
    cb.before_fit(learn)
    cb.before_batch(learn)
    assert learn.model.weight.device.type == 'meta'
    assert learn.batch[0].device.type == 'meta' and learn.batch[1][0].device.type == 'meta'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_fit_on_cuda_keeps_everything_on_device():
    dls = toy_images(n=128)
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    learn = TrainLearner(tiny_cnn(), dls, F.cross_entropy, lr=0.01, cbs=[DeviceCB('cuda'), metrics],
                         opt_func=torch.optim.Adam)
    learn.fit(1)
    assert next(learn.model.parameters()).is_cuda and metrics.history[-1]['accuracy'] > 0


def test_metrics_are_weighted_by_batch_size_and_reset_each_epoch(capsys):
    dls = toy_images(n=230, bs=64)  # 64, 64, 64, 38: the short last batch must count for 38 items
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    learn = TrainLearner(tiny_cnn(), dls, F.cross_entropy, lr=0.01, cbs=[metrics], opt_func=torch.optim.Adam)
    learn.fit(2)
    model = learn.model.eval()
    with torch.no_grad():
        x, y = dls.valid.dataset.tensors
        preds = model(x)
        want_acc = (preds.argmax(1) == y).float().mean().item()
        want_loss = F.cross_entropy(preds, y).item()
    last = metrics.history[-1]
    assert last['phase'] == 'eval' and last['epoch'] == 1
    assert last['accuracy'] == pytest.approx(want_acc, abs=1e-6)
    assert last['loss'] == pytest.approx(want_loss, rel=1e-5)
    assert [r['phase'] for r in metrics.history] == ['train', 'eval'] * 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ['accuracy', 'loss', 'epoch', 'phase', 'time'] and len(out) == 5


@pytest.mark.parametrize('with_metrics,lines', [(True, 1 + 3 * 2), (False, 3 * 2)])
def test_progress_prints_plain_lines_when_not_a_terminal(capsys, with_metrics, lines):
    cbs = [ProgressCB()] + ([MetricsCB(accuracy=MulticlassAccuracy())] if with_metrics else [])
    learn = TrainLearner(tiny_cnn(), toy_images(n=200, bs=8), F.cross_entropy, lr=0.01, cbs=cbs)
    learn.fit(3)
    out = capsys.readouterr().out
    assert '\r' not in out and len(out.splitlines()) == lines  # 25 batches an epoch, and not one line per batch


def test_progress_records_every_training_loss():
    prog = ProgressCB(min_interval=0)
    learn = TrainLearner(tiny_cnn(), toy_images(n=100, bs=10), F.cross_entropy, lr=0.01, cbs=[prog])
    learn.fit(2)
    assert len(prog.losses) == 20 and all(isinstance(v, float) for v in prog.losses)


def test_single_batch_cb_stops_after_one_batch():
    seen = []
    learn = TrainLearner(tiny_cnn(), toy_images(), F.cross_entropy, cbs=[SingleBatchCB()])
    learn.model.register_forward_hook(lambda *a: seen.append(1))
    learn.fit(3)
    assert len(seen) == 1 and learn.opt is not None


def test_set_seed_makes_runs_identical():
    def run():
        set_seed(7)
        learn = TrainLearner(tiny_cnn(), toy_images(), F.cross_entropy, lr=0.05)
        learn.fit(1, valid=False)
        return torch.cat([p.flatten() for p in learn.model.parameters()])
    assert torch.equal(run(), run())


def test_set_seed_switches_deterministic_kernels_without_importing_the_compiler_for_nothing(monkeypatch):
    """torch's switch imports torch._inductor on its first call (seconds of start-up in every script): set_seed
    calls it only to turn determinism on, to turn it off again, or where the compiler's flag is already loaded."""
    import sys
    import types
    calls, state = [], {'on': False}
    monkeypatch.setattr(torch, 'use_deterministic_algorithms', lambda mode, **kw: calls.append(mode) or
                        state.update(on=mode))
    monkeypatch.setattr(torch, 'are_deterministic_algorithms_enabled', lambda: state['on'])
    monkeypatch.delitem(sys.modules, 'torch._inductor.config', raising=False)
    monkeypatch.delenv('TORCHINDUCTOR_DETERMINISTIC', raising=False)
    set_seed(3)
    assert calls == []
    set_seed(3, deterministic=True)
    set_seed(3)
    assert calls == [True, False] and not state['on']
    monkeypatch.setitem(sys.modules, 'torch._inductor.config', types.ModuleType('torch._inductor.config'))
    set_seed(3)                                           # loaded already: its flag follows, as torch sets it
    assert calls == [True, False, False]


def test_momentum_learner_keeps_a_share_of_the_gradient():
    x = torch.ones(4, 1)
    dls = DLs(DataLoader(TensorDataset(x, x), batch_size=4), None)
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    learn = MomentumLearner(model, dls, F.mse_loss, lr=0.1, mom=0.5)
    learn.fit(1, valid=False)
    # one step: grad = 2*(0-1) = -2, w = 0.2; then zero_grad keeps half of the gradient
    assert model.weight.item() == pytest.approx(0.2) and model.weight.grad.item() == pytest.approx(-1.0)


def test_csv_logger_appends_rows_as_they_come(tmp_path):
    path = tmp_path / 'm.csv'
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    sched = BatchSchedCB(partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda i: 1 / (i + 1)))
    lrs = []
    class LRs(Callback):
        def before_step(self, learn): lrs.append(learn.opt.param_groups[0]['lr'])
    learn = TrainLearner(tiny_cnn(), toy_images(n=64, bs=16), F.cross_entropy, lr=0.1,
                         cbs=[metrics, CSVLoggerCB(path), sched, LRs()])
    learn.fit(2)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ['epoch', 'phase', 'loss', 'accuracy', 'lr', 'seconds']
    assert [float(r['lr']) for r in rows] == pytest.approx([lrs[3]] * 2 + [lrs[7]] * 2)  # each epoch's last step
    assert [(r['epoch'], r['phase']) for r in rows] == [('0', 'train'), ('0', 'eval'), ('1', 'train'), ('1', 'eval')]
    assert float(rows[-1]['loss']) == pytest.approx(metrics.history[-1]['loss'])


class Rows(Callback):
    """A row consumer: keeps what MetricsCB hands it; `shows` says whether it displays rows."""
    def __init__(self, shows=False): self.rows, self.shows = [], shows
    def log_row(self, learn, row): self.rows.append(row); return self.shows


@pytest.mark.parametrize('shows', [False, True])
def test_metrics_rows_go_to_every_consumer_and_are_printed_unless_one_shows_them(capsys, shows):
    metrics, a, b = MetricsCB(accuracy=MulticlassAccuracy()), Rows(), Rows(shows)
    TrainLearner(tiny_cnn(), toy_images(n=64), F.cross_entropy, cbs=[a, metrics, b]).fit(2)
    assert a.rows == b.rows == metrics.history and len(a.rows) == 4
    out = capsys.readouterr().out.splitlines()
    assert len(out) == (0 if shows else 5)


def test_lr_find_with_csv_logger_raised_needs_a_metricscb(tmp_path):
    path = tmp_path / 'm.csv'
    learn = TrainLearner(tiny_cnn(), toy_images(n=128, bs=16), F.cross_entropy,
                         cbs=[MetricsCB(), CSVLoggerCB(path)])
    res = learn.lr_find(num_it=5, show_plot=False)
    assert len(res.lrs) == 5 and not path.exists()           # the sweep writes no row
    learn.fit(1)
    assert len(list(csv.DictReader(path.open()))) == 2


def test_csv_logger_appending_to_an_older_file_keeps_its_columns(tmp_path):
    path = tmp_path / 'm.csv'
    path.write_text('epoch,phase,loss,seconds\n0,train,2.5,1.0\n')   # written before the lr column existed
    TrainLearner(tiny_cnn(), toy_images(n=64), F.cross_entropy, cbs=[MetricsCB(), CSVLoggerCB(path)]).fit(1)
    rows = list(csv.DictReader(path.open()))
    assert [list(r) for r in rows] == [['epoch', 'phase', 'loss', 'seconds']] * 3
    assert [r['phase'] for r in rows] == ['train', 'train', 'eval'] and float(rows[2]['loss']) > 0
