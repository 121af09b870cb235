"""Checkpoints: exact resume, atomic writes, the best model, NaN stops, and errors that say what to do."""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import MulticlassAccuracy

from conftest import StopAfter, tiny_cnn, toy_images
from miniai.augment import get_preds
from miniai.checkpoint import CheckpointError, NonFiniteLossError, SaveModelCB, TerminateOnNaNCB, load_checkpoint
from miniai.core import Callback
from miniai.learner import MetricsCB, TrainLearner, set_seed
from miniai.sgd import Adam


def make_learner(tmp, opt_func=torch.optim.AdamW):
    set_seed(1, deterministic=True)
    model = nn.Sequential(tiny_cnn(), nn.BatchNorm1d(10))
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    return TrainLearner(model, toy_images(n=200, bs=32), F.cross_entropy, lr=1e-2, opt_func=opt_func,
                        cbs=[metrics, SaveModelCB(tmp, monitor='accuracy')])


def weights(learn): return [t.clone() for t in learn.model.state_dict().values()]


@pytest.mark.parametrize('opt_func', [torch.optim.AdamW, Adam])
def test_resume_after_epoch_2_is_bitwise_identical(tmp_path, opt_func):
    full = make_learner(tmp_path / 'full', opt_func)
    full.fit_one_cycle(4, 1e-2)
    want, want_hist = weights(full), full.cbs[0].history

    part = make_learner(tmp_path / 'part', opt_func)
    part.fit_one_cycle(4, 1e-2, cbs=[StopAfter(1)])
    torch.manual_seed(123)  # a new process: whatever the RNG holds now must not matter
    resumed = make_learner(tmp_path / 'other', opt_func)
    resumed.load(tmp_path / 'part' / 'last.pt')
    resumed.fit_one_cycle(4, 1e-2)
    assert all(torch.equal(a, b) for a, b in zip(want, weights(resumed)))
    hist = resumed.cbs[0].history
    assert [(r['epoch'], r['phase']) for r in hist] == [(r['epoch'], r['phase']) for r in want_hist]
    assert [r['loss'] for r in hist] == [r['loss'] for r in want_hist]


def test_best_checkpoint_follows_the_monitor(tmp_path):
    learn = make_learner(tmp_path)
    learn.fit(3)
    evals = [r for r in learn.cbs[0].history if r['phase'] == 'eval']
    best = max(evals, key=lambda r: r['accuracy'])
    ck = torch.load(tmp_path / 'best.pt', weights_only=True)
    assert ck['epoch'] == best['epoch'] and learn.cbs[1].best == best['accuracy']
    assert torch.load(tmp_path / 'last.pt', weights_only=True)['epoch'] == 2


def test_a_crash_while_saving_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    learn = make_learner(tmp_path)
    learn.fit(1)
    before = (tmp_path / 'last.pt').read_bytes()
    def dies(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(torch, 'save', dies)
    with pytest.raises(KeyboardInterrupt): learn.save(tmp_path / 'last.pt')
    assert (tmp_path / 'last.pt').read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ['best.pt', 'last.pt']  # no temporary file left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    learn = make_learner(tmp_path)
    learn.fit(1)
    data = (tmp_path / 'last.pt').read_bytes()
    (tmp_path / 'cut.pt').write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupt'): learn.load(tmp_path / 'cut.pt')
    (tmp_path / 'other.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError): learn.load(tmp_path / 'other.pt')
    with pytest.raises(FileNotFoundError): learn.load(tmp_path / 'missing.pt')


def test_checkpoint_from_another_model_names_the_keys(tmp_path):
    learn = make_learner(tmp_path)
    learn.save(tmp_path / 'a.pt')
    other = TrainLearner(nn.Sequential(tiny_cnn(), nn.Dropout(), nn.Linear(10, 3)), toy_images(), F.cross_entropy)
    with pytest.raises(CheckpointError) as ei: other.load(tmp_path / 'a.pt')
    msg = str(ei.value)
    assert 'Missing keys: 2.bias, 2.weight.' in msg and 'Unexpected keys: 1.bias' in msg and '1.running_mean' in msg


def test_weights_only_load_leaves_the_run_state(tmp_path):
    learn = make_learner(tmp_path)
    learn.fit(1)
    fresh = make_learner(tmp_path / 'x')
    fresh.load(tmp_path / 'last.pt', weights_only=True)
    assert fresh.opt is None and fresh.resume_epoch is None
    assert all(torch.equal(a, b) for a, b in zip(weights(learn), weights(fresh)))


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_the_good_checkpoint(tmp_path):
    class Poison(Callback):
        def after_predict(self, learn):
            if learn.epoch == 1 and learn.iter == 3 and learn.training: learn.preds = learn.preds * float('nan')
    learn = make_learner(tmp_path)
    with pytest.raises(NonFiniteLossError, match='epoch 1, batch 3'):
        learn.fit(3, cbs=[TerminateOnNaNCB(), Poison()])
    ck = load_checkpoint(make_learner(tmp_path / 'y'), tmp_path / 'last.pt')
    assert ck['epoch'] == 0 and all(torch.isfinite(t).all() for t in ck['model'].values())
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())  # stopped before the step


def test_predictions_and_lr_find_after_load_leave_the_resume_to_the_next_fit(tmp_path):
    part = make_learner(tmp_path / 'part')
    part.fit(4, cbs=[StopAfter(1)])
    resumed = make_learner(tmp_path / 'other')
    resumed.load(tmp_path / 'part' / 'last.pt')
    preds, targs = get_preds(resumed)            # a validation-only fit: must not start "at epoch 2"
    assert len(preds) == len(targs) == len(resumed.dls.valid.dataset)
    resumed.lr_find(num_it=5, show_plot=False)
    assert resumed.resume_epoch == 2
    resumed.fit(4, cbs=[StopAfter(2)])
    assert [r['epoch'] for r in resumed.cbs[0].history] == [0, 0, 1, 1, 2, 2]   # loaded 0-1, then epoch 2
