"""EarlyStoppingCB: stops at the expected epoch on a scripted plateau, restores the best epoch's weights."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import linear_data
from miniai.core import Callback
from miniai.learner import MetricsCB, TrainLearner
from miniai.stopping import EarlyStoppingCB


class Scripted:
    """A metric whose value for epoch e is `vals[e]` (MetricsCB computes it twice an epoch: train, then valid)."""
    device = torch.device('cpu')
    def __init__(self, vals): self.vals, self.n = vals, 0
    def reset(self): pass
    def to(self, device): return self
    def update(self, preds, y): pass
    def compute(self):
        self.n += 1
        return torch.tensor(self.vals[(self.n - 1) // 2])


class Weights(Callback):
    """The weights at the end of each epoch's validation, before EarlyStoppingCB may restore the best ones."""
    order = 12   # after MetricsCB, before EarlyStoppingCB
    def __init__(self): self.seen = []
    def after_epoch(self, learn):
        if not learn.training: self.seen.append([p.detach().clone() for p in learn.model.parameters()])


def test_stops_after_patience_epochs_without_improvement_and_restores_the_best():
    vals = [5, 4, 3, 3.0, 3.05, 2.999, 3.1, 1, 1, 1]   # best 3 at epoch 2; 2.999 is not better by min_delta
    es, w = EarlyStoppingCB('score', mode='min', patience=3, min_delta=0.01), Weights()
    metrics = MetricsCB(score=Scripted(vals))
    learn = TrainLearner(nn.Linear(1, 1), linear_data(n=64), F.mse_loss, lr=0.05, cbs=[metrics, es, w])
    learn.fit(10)
    assert es.stopped_epoch == 5 and es.best_epoch == 2 and es.best == 3
    assert [r['epoch'] for r in metrics.history] == list(range(6))
    assert not torch.equal(w.seen[2][0], w.seen[5][0])          # the weights moved after the best epoch...
    for p, best in zip(learn.model.parameters(), w.seen[2]): assert torch.equal(p, best)  # ...and came back


def test_valid_loss_plateau_stops_and_max_mode_counts_rises():
    es = EarlyStoppingCB(patience=2)                               # valid_loss; lr=0: a flat line from epoch 0
    TrainLearner(nn.Linear(1, 1), linear_data(n=64), F.mse_loss, lr=0., cbs=[MetricsCB(), es]).fit(10)
    assert es.mode == 'min' and es.best_epoch == 0 and es.stopped_epoch == 2
    es = EarlyStoppingCB('score', patience=1, restore_best=False)   # a metric: 'auto' means higher is better
    learn = TrainLearner(nn.Linear(1, 1), linear_data(n=64), F.mse_loss, lr=0.05,
                         cbs=[MetricsCB(score=Scripted([1, 2, 3, 2, 5])), es])
    learn.fit(5)
    assert es.mode == 'max' and es.best_epoch == 2 and es.stopped_epoch == 3 and es.best_state is None


def test_runs_to_the_end_when_it_keeps_improving_and_ends_on_the_best_weights():
    es, w = EarlyStoppingCB('score', mode='min', patience=2), Weights()
    learn = TrainLearner(nn.Linear(1, 1), linear_data(n=64), F.mse_loss, lr=0.05,
                         cbs=[MetricsCB(score=Scripted([3, 2, 1, 1.5])), es, w])
    learn.fit(4)
    assert es.stopped_epoch is None and es.best_epoch == 2
    for p, best in zip(learn.model.parameters(), w.seen[2]): assert torch.equal(p, best)


def test_bad_arguments_and_a_missing_metric_are_named():
    with pytest.raises(ValueError, match="'auto', 'min', 'max'"): EarlyStoppingCB(mode='down')
    with pytest.raises(ValueError, match='patience'): EarlyStoppingCB(patience=0)
    # refused when the fit starts, before a single batch is trained
    learn = TrainLearner(nn.Linear(1, 1), linear_data(n=64), F.mse_loss, cbs=[MetricsCB(), EarlyStoppingCB('acc')])
    with pytest.raises(ValueError, match=r"'valid_acc' is not a column.*valid_loss"): learn.fit(1)
    assert learn.iter_count == 0
    learn = TrainLearner(nn.Linear(1, 1), linear_data(n=64), F.mse_loss, cbs=[EarlyStoppingCB()])
    with pytest.raises(ValueError, match='has no MetricsCB'): learn.fit(1)
    assert learn.iter_count == 0
    learn = TrainLearner(nn.Linear(1, 1), linear_data(n=64), F.mse_loss, cbs=[MetricsCB(), EarlyStoppingCB()])
    with pytest.raises(ValueError, match="no validation.*'train_loss'"): learn.fit(1, valid=False)


@pytest.mark.parametrize('monitor,key', [('valid_loss', 'valid_loss'), ('loss', 'valid_loss'),
                                         ('eval_score', 'valid_score'), ('score', 'valid_score'),
                                         ('train_score', 'train_score')])
def test_monitor_takes_row_names_and_the_older_ones(monitor, key):
    es = EarlyStoppingCB(monitor, patience=5)
    TrainLearner(nn.Linear(1, 1), linear_data(n=64), F.mse_loss,
                 cbs=[MetricsCB(score=Scripted([1, 2])), es]).fit(2)
    assert es.key == key and es.best_epoch is not None


def test_says_in_one_line_where_it_stopped_and_what_it_restored(capsys):
    es = EarlyStoppingCB('score', mode='min', patience=1)
    learn = TrainLearner(nn.Linear(1, 1), linear_data(n=64), F.mse_loss, lr=0.05,
                         cbs=[MetricsCB(score=Scripted([1, 2, 3])), es])
    learn.fit(3)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('EarlyStoppingCB')]
    assert lines == ["EarlyStoppingCB: stopped at epoch 1: no improvement of valid_score for 1 epoch; restored the "
                     "weights of epoch 0 (valid_score 1)"]


def test_a_nan_value_is_never_the_best():
    es = EarlyStoppingCB('score', mode='min', patience=3)
    learn = TrainLearner(nn.Linear(1, 1), linear_data(n=64), F.mse_loss, lr=0.05,
                         cbs=[MetricsCB(score=Scripted([float('nan'), 2., float('nan'), 3.])), es])
    learn.fit(4)
    assert es.best == 2. and es.best_epoch == 1


def test_a_run_resumed_from_last_pt_stops_at_the_same_epoch_as_an_uninterrupted_one(tmp_path):
    """Regression: SaveModelCB (order 20) wrote last.pt before EarlyStoppingCB (25) counted the epoch, so the
    checkpoint's wait/best lagged one epoch and a resumed run stopped an epoch late (or against a stale best)."""
    from conftest import StopAfter
    from miniai.checkpoint import SaveModelCB
    vals = [5, 4, 3, 3.0, 3.05, 2.999, 3.1, 1, 1, 1]   # uninterrupted: best 3 at epoch 2, stops at epoch 5
    def learner(scripted, *cbs):
        torch.manual_seed(0)
        es = EarlyStoppingCB('score', mode='min', patience=3, min_delta=0.01)
        learn = TrainLearner(nn.Linear(1, 1), linear_data(n=64), F.mse_loss, lr=0.05,
                             cbs=[MetricsCB(score=Scripted(scripted)), SaveModelCB(tmp_path), es, *cbs])
        return learn, es
    learn, es = learner(vals, StopAfter(3))            # killed after epoch 3 was checkpointed
    learn.fit(10)
    learn, es = learner(vals[4:])                      # the resumed run sees epochs 4, 5, ...
    learn.load(tmp_path / 'last.pt')
    learn.fit(10)
    assert es.best_epoch == 2 and es.stopped_epoch == 5


def test_with_ema_the_best_weights_are_what_the_model_ends_with():
    """EMACB swaps its average out at the end of each validation; the restore must come after that."""
    from miniai.ema import EMACB
    es, w = EarlyStoppingCB('score', mode='min', patience=1), Weights()
    learn = TrainLearner(nn.Linear(1, 1), linear_data(n=64), F.mse_loss, lr=0.05,
                         cbs=[MetricsCB(score=Scripted([1, 2, 3])), EMACB(0.5), es, w])
    learn.fit(3)
    assert es.stopped_epoch == 1 and es.best_epoch == 0
    for p, best in zip(learn.model.parameters(), es.best_state.values()): assert torch.equal(p, best)


def test_an_evaluation_fit_counts_no_epoch_and_saves_nothing(tmp_path):
    from miniai.checkpoint import SaveModelCB
    es, saver = EarlyStoppingCB('score', mode='min', patience=2), SaveModelCB(tmp_path, monitor='valid_score')
    metrics = MetricsCB(score=Scripted([1, 1, 5, 5, 1, 1]))
    learn = TrainLearner(nn.Linear(1, 1), linear_data(n=64), F.mse_loss, lr=0.05, cbs=[metrics, es, saver])
    learn.fit(1)
    before = (tmp_path / 'last.pt').read_bytes()
    learn.fit(1, train=False)                       # an evaluation: shown, not logged, nothing saved or counted
    assert (tmp_path / 'last.pt').read_bytes() == before
    assert es.wait == 0 and es.best == 1 and [r['epoch'] for r in metrics.history] == [0]
    learn.fit(1)
    assert [r['epoch'] for r in metrics.history] == [0, 1]
