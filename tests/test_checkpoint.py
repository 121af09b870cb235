"""Checkpoints: exact resume, atomic writes, the best model, NaN stops, and errors that say what to do."""
import contextlib
import multiprocessing
import os
import random
import re
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import MulticlassAccuracy

from conftest import StopAfter, tiny_cnn, toy_images
from miniai.augment import get_preds
from miniai.checkpoint import (
    CheckpointError,
    NonFiniteLossError,
    NonFiniteWeightsError,
    SaveModelCB,
    TerminateOnNaNCB,
    digest_path,
    load_checkpoint,
    save_checkpoint,
)
from miniai.core import Callback
from miniai.gradients import GradientClipCB
from miniai.learner import MetricsCB, TrainLearner, set_seed
from miniai.predictions import fashion_preprocess
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
    assert [r['epoch'] for r in hist] == [r['epoch'] for r in want_hist] == [0, 1, 2, 3]
    assert [r['valid_loss'] for r in hist] == [r['valid_loss'] for r in want_hist]


def test_best_checkpoint_follows_the_monitor(tmp_path):
    learn = make_learner(tmp_path)
    learn.fit(3)
    best = max(learn.cbs[0].history, key=lambda r: r['valid_accuracy'])    # monitor='accuracy', the older name
    ck = torch.load(tmp_path / 'best.pt', weights_only=True)
    assert ck['epoch'] == best['epoch'] and learn.cbs[1].best == best['valid_accuracy']
    assert torch.load(tmp_path / 'last.pt', weights_only=True)['epoch'] == 2


def test_a_crash_while_saving_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    learn = make_learner(tmp_path)
    learn.fit(1)
    before = (tmp_path / 'last.pt').read_bytes()
    def dies(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(torch, 'save', dies)
    with pytest.raises(KeyboardInterrupt): learn.save(tmp_path / 'last.pt')
    assert (tmp_path / 'last.pt').read_bytes() == before
    # no temporary file left behind
    assert sorted(os.listdir(tmp_path)) == ['best.pt', 'best.pt.sha256', 'last.pt', 'last.pt.sha256']


@pytest.mark.filterwarnings('ignore:checkpoint .* has no digest')
def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    learn = make_learner(tmp_path)
    learn.fit(1)
    data = (tmp_path / 'last.pt').read_bytes()
    (tmp_path / 'cut.pt').write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupt'): learn.load(tmp_path / 'cut.pt')
    (tmp_path / 'empty.pt').write_bytes(b'')
    with pytest.raises(CheckpointError, match='not a file that miniai saved'): learn.load(tmp_path / 'empty.pt')
    (tmp_path / 'other.pt').write_bytes(b'not a checkpoint')           # text, an image...: no pickle at all
    with pytest.raises(CheckpointError, match='not a file that miniai saved') as ei: learn.load(tmp_path / 'other.pt')
    assert 'not allowed' not in str(ei.value)                          # not called hostile: simply not a checkpoint
    with pytest.raises(CheckpointError, match=r'is an exported model \(learn.export\).*load_learner\(path\)'):
        learn.preprocess = fashion_preprocess()
        learn.load(learn.export(tmp_path / 'model.pt'))
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
    assert [r['epoch'] for r in resumed.cbs[0].history] == [0, 1, 2]   # loaded 0-1, then epoch 2


def test_predictions_and_an_evaluation_between_load_and_resume_keep_the_resume_bitwise_identical(tmp_path):
    full = make_learner(tmp_path / 'full')
    full.fit_one_cycle(4, 1e-2)
    part = make_learner(tmp_path / 'part')
    part.fit_one_cycle(4, 1e-2, cbs=[StopAfter(1)])
    resumed = make_learner(tmp_path / 'other')
    resumed.load(tmp_path / 'part' / 'last.pt')
    get_preds(resumed)                           # each draws from torch's RNG (the loaders' base seeds)
    resumed.fit(1, train=False)
    resumed.fit_one_cycle(4, 1e-2)
    assert all(torch.equal(a, b) for a, b in zip(weights(full), weights(resumed)))


def test_an_evaluation_leaves_the_run_where_it_stood_and_fit_one_cycle_can_start_anew_after_load(tmp_path):
    from miniai.sgd import OneCycleSchedCB
    fresh = make_learner(tmp_path / 'fresh')     # never trained, so no optimizer yet
    fresh.fit(1, train=False, cbs=[OneCycleSchedCB(1e-2, wd=0.5)])
    learn = make_learner(tmp_path / 'run')
    learn.fit_one_cycle(2, 1e-2, wd=0.05)
    learn.fit(1, train=False, cbs=[OneCycleSchedCB(1e-2, wd=0.5)])   # an evaluation sets no hypers
    assert {g['weight_decay'] for g in learn.opt.param_groups} == {0.05}
    learn.save(tmp_path / 'after_eval.pt')       # still the run after its second epoch
    resumed = make_learner(tmp_path / 'resumed').load(tmp_path / 'after_eval.pt')
    assert resumed.resume_epoch == 2 and resumed.iter_count == learn.iter_count
    with pytest.raises(ValueError, match='nothing to train'): resumed.fit_one_cycle(2, 1e-2)
    resumed.fit_one_cycle(2, 1e-2, start_epoch=0)   # a new one-cycle fit from the loaded weights
    assert [r['epoch'] for r in resumed.cbs[0].history if 'train_loss' in r] == [0, 1, 2, 3]
    assert resumed.iter_count == 2 * learn.iter_count


def test_an_evaluation_after_load_leaves_the_resume_whole_and_a_new_fit_after_load_starts_afresh(tmp_path):
    from miniai.learner import ProgressCB
    from miniai.sgd import OneCycleSchedCB, RecorderCB
    def learner(name):
        learn = make_learner(tmp_path / name)
        learn.add_cbs([OneCycleSchedCB(1e-2), RecorderCB(lr=lambda cb: cb.pg['lr']), ProgressCB()])
        return learn
    def rec_and_curve(learn):
        rec, prog = (next(c for c in learn.cbs if isinstance(c, t)) for t in (RecorderCB, ProgressCB))
        return rec.recs['lr'], rec.steps, prog.losses
    full = learner('full')
    full.fit(4)
    lrs, steps, losses = rec_and_curve(full)
    part = learner('part')
    part.fit(4, cbs=[StopAfter(1)])
    done = part.iter_count
    resumed = learner('resumed')
    resumed.load(tmp_path / 'part' / 'last.pt')
    resumed.fit(1, train=False)                  # an evaluation: the resume waits for the next training fit
    r_lrs, r_steps, r_losses = rec_and_curve(resumed)
    assert (r_lrs, r_steps, r_losses) == (lrs[:done], steps[:done], losses[:done])
    resumed.fit(4)
    r_lrs, r_steps, r_losses = rec_and_curve(resumed)
    assert r_lrs == lrs and r_steps == steps and len(r_losses) == len(losses)   # one schedule, one curve
    new = learner('new')
    new.load(tmp_path / 'part' / 'last.pt')
    new.fit(4, start_epoch=0)                    # a new fit from the loaded weights: a schedule of its own
    n_lrs, n_steps, n_losses = rec_and_curve(new)
    assert n_lrs == lrs and n_steps == [s + done for s in steps] and len(n_losses) == len(losses)


# ---------------------------------------------------------------- digests, kills, interrupted epochs
N_FLIPS = 30      # docs/reliability.md quotes these counts
N_KILLS = 20


def test_corrupted_checkpoints_are_refused_naming_the_file(tmp_path):
    learn = make_learner(tmp_path)
    learn.fit(1)
    good = (tmp_path / 'last.pt').read_bytes()
    rng = random.Random(0)
    bad = tmp_path / 'bad.pt'
    digest_path(bad).write_bytes(digest_path(tmp_path / 'last.pt').read_bytes())
    refused = 0
    for _ in range(N_FLIPS):                               # 8 random bytes anywhere in the file, XORed with 1..255
        data = bytearray(good)
        for i in rng.sample(range(len(data)), 8): data[i] ^= rng.randrange(1, 256)
        bad.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=f'{bad}.*corrupt'): make_learner(tmp_path / 'x').load(bad)
        refused += 1
    w = learn.model.state_dict()['0.0.weight'].numpy().tobytes()   # 0xFF into a weight tensor: NaN weights
    assert good.count(w) == 1
    start = good.index(w)
    bad.write_bytes(good[:start] + b'\xff' * 16 + good[start + 16:])
    with pytest.raises(CheckpointError, match='do not match the SHA-256 digest'): make_learner(tmp_path / 'x').load(bad)
    refused += 1
    assert refused == N_FLIPS + 1
    with warnings.catch_warnings():
        warnings.simplefilter('error')                     # the intact file loads without a warning
        make_learner(tmp_path / 'x').load(tmp_path / 'last.pt')


def test_checkpoint_without_digest_loads_with_a_warning(tmp_path):
    learn = make_learner(tmp_path)
    learn.fit(1)
    digest_path(tmp_path / 'last.pt').unlink()
    with pytest.warns(UserWarning, match='no digest file last.pt.sha256'):
        make_learner(tmp_path / 'x').load(tmp_path / 'last.pt')


def _save_forever(learn, path):
    for i in range(10**9):
        with torch.no_grad(): next(learn.model.parameters()).add_(1.)   # every save writes new bytes
        save_checkpoint(learn, path)


def test_kill_9_while_saving_leaves_a_loadable_checkpoint_and_no_stale_temporaries(tmp_path):
    learn = make_learner(tmp_path)
    learn.fit(1)
    path, rng, ctx = tmp_path / 'last.pt', random.Random(0), multiprocessing.get_context('fork')
    loadable = 0
    for _ in range(N_KILLS):
        p = ctx.Process(target=_save_forever, args=(learn, path))
        p.start()
        time.sleep(rng.uniform(0.02, 0.3))
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        with warnings.catch_warnings():
            warnings.simplefilter('error')                 # digest present and matching: no "unchecked" warning
            load_checkpoint(make_learner(tmp_path / 'x'), path)
        loadable += 1
    assert loadable == N_KILLS
    learn.save(path)                                       # the next save removes what the killed writers left
    assert sorted(os.listdir(tmp_path)) == ['best.pt', 'best.pt.sha256', 'last.pt', 'last.pt.sha256']


def test_unsafe_pickle_says_the_objects_are_not_allowed(tmp_path):
    torch.save({'format': 'miniai-checkpoint-1', 'model': {}, 'hook': os.getcwd}, tmp_path / 'evil.pt')
    with pytest.warns(UserWarning, match='no digest'):
        with pytest.raises(CheckpointError) as ei: make_learner(tmp_path).load(tmp_path / 'evil.pt')
    msg = str(ei.value)
    assert 'not allowed' in msg and 'never unpickles code' in msg and 'getcwd' in msg and 'truncated' not in msg


def test_optimizer_class_mismatch_is_refused_at_load_naming_both(tmp_path):
    learn = make_learner(tmp_path, opt_func=torch.optim.AdamW)
    learn.fit(1)
    other = make_learner(tmp_path / 'x', opt_func=Adam)
    with pytest.raises(CheckpointError, match=r'torch\.optim\.adamw\.AdamW.*miniai\.sgd\.optimizers\.Adam'):
        other.load(tmp_path / 'last.pt')


class Interrupt(Callback):
    def __init__(self, epoch, it): self.epoch, self.it = epoch, it
    def after_batch(self, learn):
        if learn.training and learn.epoch == self.epoch and learn.iter == self.it: raise KeyboardInterrupt


def test_a_checkpoint_saved_inside_an_epoch_repeats_that_epoch(tmp_path):
    learn = make_learner(tmp_path)
    saver = learn.cbs[1]
    with pytest.raises(KeyboardInterrupt): learn.fit(4, cbs=[Interrupt(2, 3)])
    assert learn.epoch == 2 and saver.epoch_done == 1
    save_checkpoint(learn, tmp_path / 'interrupted.pt', epoch_done=saver.epoch_done == learn.epoch)
    resumed = make_learner(tmp_path / 'x')
    resumed.load(tmp_path / 'interrupted.pt')
    assert resumed.resume_epoch == 2
    resumed.fit(4)
    assert [r['epoch'] for r in resumed.cbs[0].history] == list(range(4))


def test_an_empty_validation_loader_warns_and_skips_validation_instead_of_nan(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset
    learn = make_learner(tmp_path)
    learn.dls.valid = DataLoader(TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)), 32)
    with pytest.warns(UserWarning, match='validation loader is empty'): learn.fit(2)
    hist = learn.cbs[0].history
    assert [list(r)[:2] for r in hist] == [['epoch', 'train_loss']] * 2 and 'valid_loss' not in hist[0]
    assert all(r['train_loss'] == r['train_loss'] for r in hist)  # no NaN
    assert torch.load(tmp_path / 'last.pt', weights_only=True)['epoch'] == 1       # still saved every epoch


# ---------------------------------------------------------------- non-finite state never reaches a checkpoint
def test_non_finite_weights_or_optimizer_state_are_refused_and_the_old_checkpoint_is_kept(tmp_path):
    learn = make_learner(tmp_path)
    learn.fit(1)
    last = tmp_path / 'last.pt'
    before = last.read_bytes(), digest_path(last).read_bytes()
    w = learn.model[0][0].weight
    with torch.no_grad(): w[0, 0, 0, 0] = float('nan')
    with pytest.raises(NonFiniteWeightsError, match=r'not saving checkpoint .*last\.pt.* model 0\.0\.weight\. '
                       r'.*the previous last\.pt on disk is kept, with its digest'):
        save_checkpoint(learn, last)
    with torch.no_grad(): w[0, 0, 0, 0] = 0.
    learn.opt.state[w]['exp_avg'][0, 0, 0, 0] = float('inf')
    with pytest.raises(NonFiniteWeightsError, match=r'optimizer\.state\.0\.exp_avg'): learn.save(last)
    assert (last.read_bytes(), digest_path(last).read_bytes()) == before
    with pytest.raises(NonFiniteWeightsError, match='nothing was written to'): learn.save(tmp_path / 'new.pt')
    assert not (tmp_path / 'new.pt').exists() and not digest_path(tmp_path / 'new.pt').exists()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert load_checkpoint(make_learner(tmp_path / 'x'), last)['epoch'] == 0


def test_weights_that_diverge_in_a_fit_never_replace_the_last_good_checkpoint(tmp_path):
    class Diverge(Callback):
        def after_step(self, learn):
            if learn.epoch == 1 and learn.iter == 2:
                with torch.no_grad(): learn.model[0][0].weight.fill_(float('inf'))
    learn = make_learner(tmp_path)
    with pytest.raises(NonFiniteWeightsError, match='not saving checkpoint'): learn.fit(3, cbs=[Diverge()])
    for name in ('last.pt', 'best.pt'):
        ck = load_checkpoint(make_learner(tmp_path / 'y'), tmp_path / name)
        assert ck['epoch'] == 0 and all(torch.isfinite(t).all() for t in ck['model'].values())


def test_nan_gradients_with_clipping_never_reach_last_pt(tmp_path):
    class NanGrad(Callback):
        def after_backward(self, learn):
            if learn.epoch == 1 and learn.iter == 1: learn.model[0][0].weight.grad.fill_(float('nan'))
    learn = make_learner(tmp_path)
    with pytest.warns(UserWarning, match='GradientClipCB skipped 1 of'):
        learn.fit(2, cbs=[GradientClipCB(1.0), NanGrad()])
    ck = load_checkpoint(make_learner(tmp_path / 'y'), tmp_path / 'last.pt')
    assert ck['epoch'] == 1 and all(torch.isfinite(t).all() for t in ck['model'].values())


# ---------------------------------------------------------------- only regular files are read
class Blocked(Exception):
    """Raised by `deadline`; not an OSError, so no `except OSError` in the code under test can swallow it."""


@contextlib.contextmanager
def deadline(seconds=10):
    """Fail (instead of hanging the suite) when the block is blocked for longer than `seconds`."""
    def stop(*_): raise Blocked(f"still blocked after {seconds} s")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try: yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _put(kind, path: Path, digest_line: bytes = b''):
    path.unlink(missing_ok=True)
    if kind == 'fifo': os.mkfifo(path)
    elif kind == 'devzero': os.symlink('/dev/zero', path)
    elif kind == 'dir': path.mkdir()
    elif kind == 'huge': path.write_bytes(digest_line + b'\n' * (1 << 20))   # the right digest, then 1 MiB more
    elif kind == 'dangling': os.symlink(path.parent / 'nowhere', path)


WHAT = {'fifo': r'is a named pipe \(FIFO\), not a regular file',                  # regexes of what the error says
        'devzero': r'is a character device \(such as /dev/zero\), not a regular file',
        'dir': 'is a directory, not a regular file', 'huge': r'is 1,048,6\d\d bytes, more than the 4,096',
        'dangling': 'is a symlink to a missing file'}


@pytest.mark.parametrize('kind', list(WHAT))
def test_a_digest_file_that_is_not_a_small_regular_file_is_refused_saying_what_it_is(tmp_path, kind):
    learn = make_learner(tmp_path)
    learn.save(tmp_path / 'last.pt')
    side = digest_path(tmp_path / 'last.pt')
    _put(kind, side, side.read_bytes())
    with deadline(), pytest.raises(CheckpointError) as ei: make_learner(tmp_path / 'x').load(tmp_path / 'last.pt')
    assert re.search(f'the digest file {re.escape(str(side))} {WHAT[kind]}', str(ei.value))
    assert 'delete it to load last.pt unchecked' in str(ei.value)


@pytest.mark.parametrize('kind', ['fifo', 'devzero', 'dir'])   # a dangling link is 'no checkpoint at'
def test_a_checkpoint_path_that_is_not_a_regular_file_is_refused_saying_what_it_is(tmp_path, kind):
    _put(kind, tmp_path / 'last.pt')
    path = re.escape(str(tmp_path / 'last.pt'))
    with deadline(), pytest.raises(CheckpointError, match=f'checkpoint {path} {WHAT[kind]}'):
        make_learner(tmp_path / 'x').load(tmp_path / 'last.pt')


@pytest.mark.parametrize('kind', ['fifo', 'devzero'])
def test_saving_where_the_digest_file_is_a_fifo_or_device_replaces_it_without_blocking(tmp_path, kind):
    learn = make_learner(tmp_path)
    learn.save(tmp_path / 'last.pt')
    side = digest_path(tmp_path / 'last.pt')
    _put(kind, side)
    with deadline(): learn.save(tmp_path / 'last.pt')
    assert side.is_file() and not side.is_symlink()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        make_learner(tmp_path / 'x').load(tmp_path / 'last.pt')


def test_a_finished_checkpoint_refuses_a_fit_with_nothing_left_and_a_new_fit_numbers_on(tmp_path):
    learn = make_learner(tmp_path)
    learn.fit(2)
    other = make_learner(tmp_path / 'o')
    other.load(tmp_path / 'last.pt')
    with pytest.raises(ValueError, match=r'fit\(3\)'): other.fit(2)            # nothing left of the saved fit ...
    assert other.resume_epoch == 2                                            # ... and the learner is as it was
    other.fit(1, start_epoch=0)                                               # a new fit, after the loaded run
    assert [r['epoch'] for r in other.cbs[0].history] == [0, 1, 2]
