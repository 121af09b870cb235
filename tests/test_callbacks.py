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
from miniai.device import detached
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
    from collections import namedtuple
    Out = namedtuple('Out', 'recon mu')
    out = Out(torch.ones(2, requires_grad=True) * 2, [torch.zeros(1, requires_grad=True)])
    moved, back, kept = to_device(out, 'meta'), to_cpu(out), detached(out)
    assert isinstance(moved, Out) and moved.recon.device.type == 'meta' and moved.mu[0].device.type == 'meta'
    assert isinstance(back, Out) and not back.recon.requires_grad and torch.equal(back.recon, torch.full((2,), 2.))
    assert isinstance(kept, Out) and not kept.mu[0].requires_grad and kept.recon.data_ptr() == out.recon.data_ptr()


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
    assert last['epoch'] == 1 and len(metrics.history) == 2   # one row per epoch, both phases in it
    assert last['valid_accuracy'] == pytest.approx(want_acc, abs=1e-6)
    assert last['valid_loss'] == pytest.approx(want_loss, rel=1e-5)
    assert 0 <= last['train_accuracy'] <= 1 and last['train_loss'] > 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ['epoch', 'train_loss', 'valid_loss', 'train_accuracy', 'valid_accuracy', 'lr', 'time']
    assert len(out) == 3 and out[2].split()[0] == '1'


def test_metrics_take_the_tuple_a_model_with_several_outputs_returns():
    # the course's VAE lesson: the model returns (reconstruction, mu, logvar) and its metrics read all three
    from torcheval.metrics import Mean

    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
        def forward(self, x): return self.lin(x), self.lin.weight.sum().expand(len(x))

    class SecondOutputMean(Mean):
        def update(self, preds, targets):
            assert isinstance(preds, tuple) and not any(p.requires_grad for p in preds)
            return super().update(preds[1])

    x = torch.randn(32, 4)
    dls = DLs(DataLoader(TensorDataset(x, x), batch_size=8), DataLoader(TensorDataset(x, x), batch_size=8))
    def loss(preds, y): return F.mse_loss(preds[0], y)
    metrics = MetricsCB(second=SecondOutputMean())
    learn = TrainLearner(TwoOutputs(), dls, loss, lr=0.01, cbs=[metrics], opt_func=torch.optim.SGD)
    learn.fit(1)
    assert metrics.history[-1]['valid_second'] == pytest.approx(learn.model.lin.weight.sum().item(), rel=1e-5)


@pytest.mark.parametrize('with_metrics,lines', [(True, 1 + 3), (False, 3 * 2)])
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


def test_callbacks_that_sit_out_evaluations_see_none_of_their_events_and_keep_their_place():
    class TrainingOnly(Callback):
        run_in_evaluations = False
        def __init__(self): self.events = []
        def before_fit(self, learn): self.events.append('before_fit')
        def after_batch(self, learn): self.events.append('after_batch')
    class Any(TrainingOnly): run_in_evaluations = True
    kept, added, other = TrainingOnly(), TrainingOnly(), Any()
    learn = TrainLearner(tiny_cnn(), toy_images(n=32, bs=16), F.cross_entropy, lr=0.01, cbs=[kept, other])
    learn.fit(1, train=False, cbs=[added])
    assert kept.events == added.events == [] and other.events == ['before_fit', 'after_batch', 'after_batch']
    assert learn.cbs == [kept, other]                                          # back at its place, the fit's one gone
    learn.fit(1)
    assert kept.events[0] == 'before_fit' and kept.events.count('after_batch') == 4   # 2 train + 2 valid batches


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
    assert list(rows[0]) == ['epoch', 'train_loss', 'valid_loss', 'train_accuracy', 'valid_accuracy', 'lr', 'time']
    assert [float(r['lr']) for r in rows] == pytest.approx([lrs[3], lrs[7]])  # each epoch's last step
    assert [r['epoch'] for r in rows] == ['0', '1']
    assert float(rows[-1]['valid_loss']) == pytest.approx(metrics.history[-1]['valid_loss'])


def test_a_second_fit_logs_on_from_the_first_epochs(tmp_path):
    path = tmp_path / 'm.csv'
    metrics = MetricsCB()
    learn = TrainLearner(tiny_cnn(), toy_images(n=64, bs=16), F.cross_entropy, lr=0.1,
                         cbs=[metrics, CSVLoggerCB(path)])
    learn.fit(2)
    learn.fit(1)
    assert [r['epoch'] for r in csv.DictReader(path.open())] == ['0', '1', '2']
    assert [r['epoch'] for r in metrics.history] == [0, 1, 2] and learn.iter_count == 3 * 4
    learn.fit(1, valid=False)                       # a train-only fit: its row has no valid_ values
    last = list(csv.DictReader(path.open()))[-1]
    assert last['epoch'] == '3' and last['valid_loss'] == '' and float(last['train_loss']) > 0


class Rows(Callback):
    """A row consumer: keeps what the `after_log` event brings; `shows_metrics` says whether it displays rows."""
    def __init__(self, shows=False): self.rows, self.shows_metrics = [], shows
    def after_log(self, learn): self.rows.append(learn.metrics_row)


@pytest.mark.parametrize('shows', [False, True])
def test_metrics_rows_go_to_every_consumer_and_are_printed_unless_one_shows_them(capsys, shows):
    metrics, a, b = MetricsCB(accuracy=MulticlassAccuracy()), Rows(), Rows(shows)
    TrainLearner(tiny_cnn(), toy_images(n=64), F.cross_entropy, cbs=[a, metrics, b]).fit(2)
    assert a.rows == b.rows == metrics.history and len(a.rows) == 2
    out = capsys.readouterr().out.splitlines()
    assert len(out) == (0 if shows else 3)


def test_a_failing_row_consumer_is_named_by_the_dispatcher():
    class Broken(Callback):
        def after_log(self, learn): raise KeyError('no such column')
    learn = TrainLearner(tiny_cnn(), toy_images(n=64), F.cross_entropy, cbs=[MetricsCB(), Broken()])
    with pytest.raises(KeyError) as e: learn.fit(1)
    assert 'raised in Broken.after_log' in e.value.__notes__


def test_lr_find_with_csv_logger_raised_needs_a_metricscb(tmp_path):
    path = tmp_path / 'm.csv'
    learn = TrainLearner(tiny_cnn(), toy_images(n=128, bs=16), F.cross_entropy,
                         cbs=[MetricsCB(), CSVLoggerCB(path)])
    res = learn.lr_find(num_it=5, show_plot=False)
    assert len(res.lrs) == 5 and not path.exists()           # the sweep writes no row
    learn.fit(1)
    assert [r['epoch'] for r in csv.DictReader(path.open())] == ['0']   # nor counts as an epoch


def test_csv_logger_refuses_a_file_of_another_layout_before_training(tmp_path):
    path = tmp_path / 'm.csv'
    old = 'epoch,phase,loss,seconds\n0,train,2.5,1.0\n'     # one row per phase, as miniai 0.1 wrote
    path.write_text(old)
    learn = TrainLearner(tiny_cnn(), toy_images(n=64), F.cross_entropy, cbs=[MetricsCB(), CSVLoggerCB(path)])
    with pytest.raises(ValueError, match='new path'): learn.fit(1)
    assert path.read_text() == old and learn.iter_count == 0


def test_progress_plot_in_a_script_is_saved_to_a_file_it_names(tmp_path, capsys):
    path = tmp_path / 'curve.png'
    learn = TrainLearner(tiny_cnn(), toy_images(n=64, bs=16), F.cross_entropy, lr=0.01,
                         cbs=[MetricsCB(), ProgressCB(plot=True, plot_path=path)])
    learn.fit(2)
    out = capsys.readouterr().out
    assert path.read_bytes()[:4] == b'\x89PNG' and f'saved to {path}' in out


def test_save_model_cb_takes_row_names_and_refuses_a_misspelt_monitor_before_training(tmp_path):
    from miniai.checkpoint import SaveModelCB
    saver = SaveModelCB(tmp_path, monitor='valid_loss')
    learn = TrainLearner(tiny_cnn(), toy_images(n=64, bs=16), F.cross_entropy, lr=0.01, cbs=[MetricsCB(), saver])
    learn.fit(2)
    assert saver.mode == 'min' and saver.best == min(r['valid_loss'] for r in learn.cbs[0].history)
    bad = TrainLearner(tiny_cnn(), toy_images(n=64, bs=16), F.cross_entropy,
                       cbs=[MetricsCB(), SaveModelCB(tmp_path / 'b', monitor='valid_acuracy')])
    with pytest.raises(ValueError, match=r"'valid_acuracy' is not a column.*valid_loss"): bad.fit(1)
    assert bad.iter_count == 0 and not (tmp_path / 'b').exists()


def test_save_model_cb_starts_a_new_best_with_each_fit_unless_told_to_keep_it(tmp_path):
    from miniai.checkpoint import SaveModelCB
    def two_fits(saver):
        learn = TrainLearner(tiny_cnn(), toy_images(n=64, bs=16), F.cross_entropy, lr=0.05, cbs=[MetricsCB(), saver])
        learn.fit(3)
        first = min(r['valid_loss'] for r in learn.cbs[0].history)
        with torch.no_grad():
            for p in learn.model.parameters(): p.add_(torch.randn_like(p))   # far from where the first fit ended
        learn.fit(1, lr=0.)
        saved = torch.load(saver.dir / 'best.pt', weights_only=True)['iter_count']
        return first, learn.cbs[0].history[-1]['valid_loss'], saved == learn.iter_count
    fresh = SaveModelCB(tmp_path / 'a', every_epoch=False, monitor='valid_loss')
    first, second, saved_by_second = two_fits(fresh)
    assert second > first, "the setup needs a second fit that does worse than the first one's best"
    assert fresh.best == second and saved_by_second
    kept = SaveModelCB(tmp_path / 'b', every_epoch=False, monitor='valid_loss', reset_on_fit=False)
    first, second, saved_by_second = two_fits(kept)
    assert kept.best == first < second and not saved_by_second


class ResumingSeen(Callback):
    """Records `learn.resuming` at each fit's start."""
    def __init__(self): self.seen = []
    def before_fit(self, learn): self.seen.append(learn.resuming)


def test_save_model_cb_of_a_resumed_run_keeps_the_best_it_saved_and_a_new_fit_after_load_starts_its_own(tmp_path):
    from conftest import StopAfter
    from miniai.checkpoint import SaveModelCB
    from miniai.stopping import EarlyStoppingCB
    def learner(): return TrainLearner(tiny_cnn(), toy_images(n=64, bs=16), F.cross_entropy, lr=0.05,
                                       cbs=[MetricsCB(), SaveModelCB(tmp_path, monitor='valid_loss'),
                                            EarlyStoppingCB(patience=9), ResumingSeen()])
    part = learner()
    part.fit(3, cbs=[StopAfter(1)])                  # a run that died after epoch 1
    best, saved = part.cbs[1].best, torch.load(tmp_path / 'best.pt', weights_only=True)['iter_count']
    worse_fits = {}
    for how, kw in [('resumed', {}), ('new fit', dict(start_epoch=0))]:
        learn = worse_fits[how] = learner()
        learn.load(tmp_path / 'last.pt')
        with torch.no_grad():
            for p in learn.model.parameters(): p.add_(torch.randn_like(p))   # its next epoch: far worse
        learn.fit(3, lr=0., **kw)
        assert learn.cbs[0].history[-1]['valid_loss'] > best and not learn.resuming   # only set while it runs
    resumed, new = worse_fits['resumed'], worse_fits['new fit']
    assert resumed.cbs[3].seen == [True] and new.cbs[3].seen == [False] and part.cbs[3].seen == [False]
    assert resumed.cbs[1].best == best == resumed.cbs[2].best and resumed.cbs[2].wait == part.cbs[2].wait + 1
    # the new fit ran after the resumed one: its best is its own, and so is best.pt
    assert new.cbs[1].best == min(r['valid_loss'] for r in new.cbs[0].history[-3:]) == new.cbs[2].best
    assert torch.load(tmp_path / 'best.pt', weights_only=True)['iter_count'] != saved


def test_training_plot_puts_the_lr_at_its_steps_and_epochs_at_their_last_step():
    from miniai.train_plots import plot_training
    hist = [{'epoch': e, 'train_loss': 1. / (e + 1), 'valid_loss': 2. / (e + 1), 'valid_accuracy': 0.5 + e / 10}
            for e in range(3)]
    fig = plot_training(hist, losses=[1.] * 24, lrs=[0.1, 0.2, 0.3], steps_per_epoch=8, first_step=0,
                        lr_steps=[4, 8, 12])          # an optimizer step every 4 batches (gradient accumulation)
    loss_ax, metric_ax, lr_ax = fig.axes
    assert list(lr_ax.lines[0].get_xdata()) == [4, 8, 12] and lr_ax.get_xlabel() == 'step'
    by_label = {ln.get_label(): ln for ln in loss_ax.lines}
    assert list(by_label['valid_loss (per epoch)'].get_xdata()) == [8, 16, 24]
    assert list(metric_ax.lines[0].get_xdata()) == [0, 1, 2] and metric_ax.lines[0].get_label() == 'valid_accuracy'
    from matplotlib.colors import to_hex
    colour = {ln.get_label(): to_hex(ln.get_color()) for ax in (loss_ax, metric_ax) for ln in ax.lines}
    assert colour['valid_loss (per epoch)'] == colour['valid_accuracy'] != colour['train_loss (per step)']
