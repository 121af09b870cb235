"""TensorBoardCB: the event files read back hold the losses, metrics, lr and momentum; a clear error without
tensorboard installed."""
import sys
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torcheval.metrics import MulticlassAccuracy

from conftest import tiny_cnn, toy_images
from miniai.core import Callback
from miniai.learner import MetricsCB, TrainLearner
from miniai.sgd import BatchSchedCB
from miniai.tensorboard import TensorBoardCB


def scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def test_event_files_read_back(tmp_path):
    pytest.importorskip('tensorboard')
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    sched = BatchSchedCB(partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda i: 1 / (i + 1)))
    opt = partial(torch.optim.SGD, momentum=0.9)
    losses = []
    class Losses(Callback):
        def after_batch(self, learn):
            if learn.training: losses.append(learn.loss.item())
    learn = TrainLearner(tiny_cnn(), toy_images(n=64, bs=16), F.cross_entropy, lr=0.1, opt_func=opt,
                         cbs=[metrics, TensorBoardCB(tmp_path), sched, Losses()])
    learn.fit(2)
    learn.fit(1)                                    # a second fit writes on, epochs and steps counting on
    got = scalars(tmp_path)
    assert [s for s, _ in got['step/train_loss']] == list(range(1, 13))
    assert [v for _, v in got['step/train_loss']] == pytest.approx(losses, rel=1e-6)
    assert [v for _, v in got['step/lr']][:8] == pytest.approx([0.1 / (i + 1) for i in range(8)])
    assert [v for _, v in got['step/mom']] == pytest.approx([0.9] * 12)
    assert len(metrics.history) == 3
    for k in ('train_loss', 'valid_loss', 'train_accuracy', 'valid_accuracy', 'lr'):
        assert got[k] == [(r['epoch'], pytest.approx(r[k], rel=1e-6)) for r in metrics.history]
    assert [s for s, _ in got['valid_loss']] == [0, 1, 2]


def test_a_resumed_run_hides_the_steps_logged_after_its_checkpoint(tmp_path):
    pytest.importorskip('tensorboard')
    from miniai.checkpoint import SaveModelCB
    class DiesInEpoch1(Callback):                    # a crash 2 steps into epoch 1, after epoch 0's last.pt
        def after_batch(self, learn):
            if learn.training and learn.iter_count == 6: raise RuntimeError("killed")
    def learner(*cbs):
        return TrainLearner(tiny_cnn(), toy_images(n=64, bs=16), F.cross_entropy, lr=0.1,
                            cbs=[MetricsCB(), TensorBoardCB(tmp_path / 'tb'), SaveModelCB(tmp_path), *cbs])
    with pytest.raises(RuntimeError, match='killed'): learner(DiesInEpoch1()).fit(3)
    assert [s for s, _ in scalars(tmp_path / 'tb')['step/train_loss']] == list(range(1, 6))   # 5: past last.pt
    resumed = learner()
    resumed.load(tmp_path / 'last.pt')
    resumed.fit(3)
    got = scalars(tmp_path / 'tb')
    assert [s for s, _ in got['step/train_loss']] == [s for s, _ in got['step/lr']] == list(range(1, 13))
    assert [s for s, _ in got['valid_loss']] == [0, 1, 2]


def test_without_tensorboard_it_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)   # as if tensorboard were not installed
    with pytest.raises(ImportError, match=r"pip install 'miniai-learner\[tensorboard\]'"): TensorBoardCB('runs')
