"""The loop's contract: event order, cancel semantics, cleanup on error, temporary callbacks, typo rejection."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import DLs
from miniai.core import EVENTS
from miniai.learner import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
    Learner,
    MomentumLearner,
    TrainCB,
    TrainLearner,
)


class Recorder(Callback):
    """Appends the name of every event it sees (fastai's VerboseCallback)."""
    def __init__(self): self.seen = []


for _name in EVENTS:
    setattr(Recorder, _name, (lambda n: lambda self, learn: self.seen.append(n))(_name))


def loaders(n_train=4, n_valid=2, bs=2):
    x = torch.randn(max(n_train, n_valid), 1)
    mk = lambda n: DataLoader(TensorDataset(x[:n], 2 * x[:n]), batch_size=bs)
    return DLs(mk(n_train), mk(n_valid))


# The events inside a batch come in EVENTS in the order they run: after_predict ... after_step.
INNER = list(EVENTS[EVENTS.index('after_predict'):])


def expected_epoch(n_batches, training):
    batch = ['before_batch'] + (INNER if training else INNER[:INNER.index('after_loss') + 1])
    return ['before_epoch'] + (batch + ['after_batch', 'cleanup_batch']) * n_batches + ['after_epoch', 'cleanup_epoch']


def test_event_order_follows_events():
    rec = Recorder()
    TrainLearner(nn.Linear(1, 1), loaders(), F.mse_loss, cbs=[rec]).fit(2)
    epoch = expected_epoch(2, True) + expected_epoch(1, False)
    assert rec.seen == ['before_fit'] + epoch * 2 + ['after_fit', 'cleanup_fit']


def test_callbacks_run_by_order_then_insertion():
    calls = []
    mk = lambda tag, o: type(f'CB{tag}', (Callback,), {'order': o, 'before_fit': lambda s, l: calls.append(tag)})()
    learn = TrainLearner(nn.Linear(1, 1), loaders(), F.mse_loss, cbs=[mk('a', 5), mk('b', -1), mk('c', 5)])
    learn.fit(1)
    assert calls == ['b', 'a', 'c']


class CancelAt(Callback):
    def __init__(self, event, exc): self.event, self.exc = event, exc


@pytest.mark.parametrize('event,exc,skipped,still', [
    ('after_predict', CancelBatchException, 'after_batch', 'cleanup_batch'),
    ('before_epoch', CancelEpochException, 'after_epoch', 'cleanup_epoch'),
    ('before_fit', CancelFitException, 'after_fit', 'cleanup_fit'),
])
def test_cancel_skips_after_but_runs_cleanup(event, exc, skipped, still):
    rec = Recorder()
    canceller = CancelAt(event, exc)
    setattr(canceller, event, lambda learn: (_ for _ in ()).throw(exc()))
    TrainLearner(nn.Linear(1, 1), loaders(), F.mse_loss, cbs=[rec, canceller]).fit(1)
    assert skipped not in rec.seen and still in rec.seen
    if exc is CancelBatchException: assert 'after_backward' not in rec.seen  # the step is skipped too
    if exc is CancelEpochException: assert rec.seen.count('before_epoch') == 2  # valid phase still runs


def test_cancel_batch_skips_the_optimizer_step():
    class SkipAll(Callback):
        def after_loss(self, learn): raise CancelBatchException()
    model = nn.Linear(1, 1)
    before = [p.clone() for p in model.parameters()]
    TrainLearner(model, loaders(), F.mse_loss, cbs=[SkipAll()]).fit(1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


class Boom(Callback):
    def after_loss(self, learn):
        if learn.training: raise RuntimeError('boom')


def test_error_in_callback_names_it_and_removes_fit_cbs():
    rec = Recorder()
    learn = TrainLearner(nn.Linear(1, 1), loaders(), F.mse_loss)
    with pytest.raises(RuntimeError, match='boom') as ei:
        learn.fit(1, cbs=[rec, Boom()])
    assert 'raised in Boom.after_loss' in ei.value.__notes__
    assert learn.cbs == []
    assert rec.seen[-3:] == ['cleanup_batch', 'cleanup_epoch', 'cleanup_fit']
    assert not learn.model.training


def test_keyboard_interrupt_still_cleans_up():
    class Interrupt(Callback):
        def after_backward(self, learn): raise KeyboardInterrupt
    rec = Recorder()
    learn = TrainLearner(nn.Linear(1, 1), loaders(), F.mse_loss, cbs=[rec])
    with pytest.raises(KeyboardInterrupt): learn.fit(1, cbs=[Interrupt()])
    assert rec.seen[-1] == 'cleanup_fit' and len(learn.cbs) == 1


def test_fit_cbs_are_temporary_and_opt_is_kept():
    learn = TrainLearner(nn.Linear(1, 1), loaders(), F.mse_loss, lr=0.05)
    rec = Recorder()
    learn.fit(1, cbs=[rec])
    assert rec not in learn.cbs and rec.seen
    opt = learn.opt
    learn.fit(1, lr=0.01)
    assert learn.opt is opt and opt.param_groups[0]['lr'] == 0.01


def test_opt_func_gets_lr_as_keyword():
    got = {}
    def opt_func(params, **kw):
        got.update(kw)
        return torch.optim.SGD(params, **kw)
    TrainLearner(nn.Linear(1, 1), loaders(), F.mse_loss, lr=0.3, opt_func=opt_func).fit(1)
    assert got == {'lr': 0.3}


def test_train_and_eval_modes_and_no_grad():
    seen = []
    class Look(Callback):
        def after_predict(self, learn):
            seen.append((learn.training, learn.model.training, torch.is_grad_enabled()))
    TrainLearner(nn.Linear(1, 1), loaders(2, 2), F.mse_loss, cbs=[Look()]).fit(1)
    assert seen == [(True, True, True), (False, False, False)]


def test_plain_learner_with_traincb_learns():
    dls = loaders(64, 16, bs=16)
    learn = Learner(nn.Linear(1, 1), dls, F.mse_loss, lr=0.1, cbs=[TrainCB()])
    learn.fit(20)
    assert abs(learn.model.weight.item() - 2) < 0.05


def test_typo_in_event_name_is_rejected():
    class Typo(Callback):
        def after_bach(self, learn): pass
    with pytest.raises(ValueError, match='after_bach is not an event'):
        TrainLearner(nn.Linear(1, 1), loaders(), F.mse_loss, cbs=[Typo()])


@pytest.mark.parametrize('bad,msg', [(TrainCB, 'instead of an instance'), ('x', 'Callback instances')])
def test_non_callbacks_are_rejected(bad, msg):
    with pytest.raises(TypeError, match=msg): TrainLearner(nn.Linear(1, 1), loaders(), F.mse_loss, cbs=[bad])


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match='opt_func must be callable'):
        TrainLearner(nn.Linear(1, 1), loaders(), F.mse_loss, opt_func=0.1)
    with pytest.raises(TypeError, match=r'dls must have a `\.train`'):
        TrainLearner(nn.Linear(1, 1), [torch.randn(3)], F.mse_loss)
    learn = TrainLearner(nn.Linear(1, 1), loaders(), F.mse_loss)
    for n in (0, -1, 1.5):
        with pytest.raises(ValueError, match='n_epochs must be an integer >= 1'): learn.fit(n)
    empty = DLs(DataLoader(TensorDataset(torch.randn(0, 1), torch.randn(0, 1)), batch_size=2), None)
    with pytest.raises(ValueError, match='train loader is empty'):
        TrainLearner(nn.Linear(1, 1), empty, F.mse_loss).fit(1)


def test_loss_shape_mismatch_shows_both_shapes():
    dls = loaders()
    with pytest.raises(ValueError, match=r'output \(2, 3\).*target \(2, 1\)'):
        TrainLearner(nn.Linear(1, 3), dls, F.mse_loss).fit(1)
    x = torch.randn(8, 4)
    bad = DLs(DataLoader(TensorDataset(x, torch.randint(0, 5, (8,))), batch_size=4), None)
    with pytest.raises(IndexError) as ei: TrainLearner(nn.Linear(4, 3), bad, F.cross_entropy).fit(1, valid=False)
    assert any('(4, 3)' in n and '(4,)' in n for n in ei.value.__notes__)


def test_float_target_for_cross_entropy_gets_a_hint():
    x = torch.randn(8, 4)
    dls = DLs(DataLoader(TensorDataset(x, torch.zeros(8)), batch_size=4), None)
    with pytest.raises(RuntimeError) as ei:
        TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy).fit(1, valid=False)
    assert any('int64' in n and '(4, 3)' in n for n in ei.value.__notes__)


def test_batch_events_are_in_the_documented_order():
    assert INNER == ['after_predict', 'after_loss', 'before_backward', 'after_backward', 'before_step', 'after_step']


def test_cancel_step_skips_step_after_step_and_zero_grad_so_grads_accumulate():
    class SkipFirst(Callback):
        def before_step(self, learn):
            if learn.iter == 0: raise CancelStepException()
    rec, model = Recorder(), nn.Linear(1, 1)
    x, y = torch.randn(4, 1), torch.randn(4, 1)
    dls = DLs(DataLoader(TensorDataset(x, y), batch_size=2), None)
    grads = []
    class Grads(Callback):
        order = -1  # before SkipFirst
        def before_step(self, learn): grads.append(model.weight.grad.clone())
    w0 = model.weight.detach().clone()
    TrainLearner(model, dls, F.mse_loss, lr=0., cbs=[rec, Grads(), SkipFirst()]).fit(1, valid=False)
    assert rec.seen.count('after_step') == 1 and rec.seen.count('after_batch') == 2
    ref = nn.Linear(1, 1)
    ref.load_state_dict({'weight': w0, 'bias': model.bias.detach().clone()})
    for sl in (slice(0, 2), slice(2, 4)): F.mse_loss(ref(x[sl]), y[sl]).backward()
    torch.testing.assert_close(grads[1], ref.weight.grad)  # the second batch's grads added to the first's


def test_a_callback_that_backprops_the_loss_itself_replaces_the_backward_step():
    class OwnBackward(Callback):
        def before_backward(self, learn):
            (learn.loss * 0).backward()
            learn.backward_done = True
    model = nn.Linear(1, 1)
    before = [p.detach().clone() for p in model.parameters()]
    learn = TrainLearner(model, loaders(), F.mse_loss, lr=0.5, cbs=[OwnBackward()])
    learn.fit(1, valid=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # zero grads: the plain one never ran


def test_added_and_removed_cbs_last_for_the_block_only():
    a, b, c, d = Recorder(), Recorder(), Recorder(), Recorder()
    learn = TrainLearner(nn.Linear(1, 1), loaders(), F.mse_loss, cbs=[a, b, c])
    with learn.added_cbs([d]):
        assert learn.cbs == [a, b, c, d]
    assert learn.cbs == [a, b, c]
    with pytest.raises(RuntimeError):
        with learn.removed_cbs([b]):
            assert learn.cbs == [a, c]
            learn.fit(1)
            learn.add_cbs([d])
            raise RuntimeError
    assert learn.cbs == [a, b, c, d] and b.seen == [] and a.seen   # b back at its place, d kept


def test_momentum_learner_without_lr_typeerror():
    learn = MomentumLearner(nn.Linear(1, 1), loaders(), F.mse_loss)
    learn.fit(1)
    assert learn.opt.param_groups[0]['lr'] == 0.1


def test_a_learner_without_an_optimizer_evaluates_and_says_why_it_cannot_train():
    learn = TrainLearner(nn.Linear(1, 1), loaders(), F.mse_loss, opt_func=None)   # as the course's ImageEval makes
    rec = Recorder()
    learn.fit(1, train=False, cbs=[rec])
    assert rec.seen.count('after_loss') == 1 and learn.opt is None
    with pytest.raises(ValueError, match='opt_func=None'): learn.fit(1)

