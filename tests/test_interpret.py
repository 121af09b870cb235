"""`Interpretation`: confusion matrix against a direct count, most confused pairs, top losses, the plots, and the
probabilities it takes from `get_preds`."""
import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_cnn
from miniai.inference import fashion_preprocess
from miniai.interpret import Interpretation
from miniai.learner import DeviceCB, TrainLearner


@pytest.fixture
def learn(img_dls):
    learn = TrainLearner(tiny_cnn(), img_dls, F.cross_entropy, lr=0.02, cbs=[DeviceCB('cpu')],
                         opt_func=torch.optim.Adam)
    learn.fit(1)
    learn.preprocess = fashion_preprocess()
    return learn


@pytest.fixture
def interp(learn): return Interpretation.from_learner(learn)


def test_confusion_matrix_equals_a_direct_count(interp):
    cm = interp.confusion_matrix()
    direct = torch.zeros(10, 10, dtype=torch.long)
    for a, p in zip(interp.targs.tolist(), interp.preds.argmax(1).tolist()): direct[a, p] += 1
    assert torch.equal(cm, direct) and cm.sum() == len(interp.targs)
    assert 0 < cm.diag().sum() < len(interp.targs)  # partly trained: some right, some wrong


def test_most_confused_lists_the_off_diagonal_counts_largest_first(interp):
    cm, names = interp.confusion_matrix(), interp.classes
    pairs = interp.most_confused()
    counts = [c for *_, c in pairs]
    assert counts == sorted(counts, reverse=True) and sum(counts) == int(cm.sum() - cm.diag().sum())
    for a, p, c in pairs: assert a != p and cm[names.index(a), names.index(p)] == c
    assert all(c >= 3 for *_, c in interp.most_confused(min_val=3))


def test_top_losses_are_sorted_per_item_cross_entropy(learn, interp):
    logits, targs = learn.get_preds(act=None)
    losses, idx = interp.top_losses(5)
    assert torch.all(losses[:-1] >= losses[1:]) and len(idx) == 5
    every = F.cross_entropy(logits, targs, reduction='none')
    assert torch.allclose(losses, every[idx], atol=1e-5)
    assert torch.allclose(losses[0], every.max(), atol=1e-5)
    assert torch.allclose(interp.top_losses()[0].sum(), every.sum())


def test_from_learner_keeps_the_probabilities_get_preds_gives(learn, interp):
    probs, targs = learn.get_preds()                      # a cross-entropy learner: probabilities
    assert torch.equal(interp.probs, probs) and torch.equal(interp.targs, targs)
    assert torch.equal(interp.decoded, probs.argmax(1))
    # a loss get_preds does not recognise gives raw outputs there; the interpretation still holds probabilities
    learn.loss_func = lambda p, y: F.cross_entropy(p, y)
    logits, _ = learn.get_preds()
    assert torch.allclose(Interpretation.from_learner(learn).probs, logits.softmax(1), atol=1e-6)


def test_raw_outputs_are_refused_with_what_to_pass():
    logits = torch.tensor([[2., -1., 0.5], [0.1, 0.2, 3.]])
    with pytest.raises(ValueError, match=r'for raw model outputs \(logits\) pass preds.softmax\(1\)'):
        Interpretation(logits, torch.tensor([0, 2]))
    interp = Interpretation(logits.softmax(1), torch.tensor([0, 2]))
    assert torch.allclose(interp.losses, F.cross_entropy(logits, torch.tensor([0, 2]), reduction='none'))


def test_plots_show_the_right_titles(interp):
    fig = interp.plot_top_losses(4)
    _, idx = interp.top_losses(4)
    i = int(idx[0])
    title = fig.axes[0].get_title()
    assert title.startswith(f"{interp.classes[interp.decoded[i]]} / {interp.classes[interp.targs[i]]}")
    assert f"{float(interp.losses[i]):.2f}" in title
    fig2 = interp.show_results(6)
    right = (interp.decoded[:6] == interp.targs[:6]).tolist()
    assert [ax.title.get_color() for ax in fig2.axes[:6]] == ['green' if r else 'red' for r in right]
    fig3 = interp.plot_confusion_matrix(normalize=True)
    assert [t.get_text() for t in fig3.axes[0].get_xticklabels()] == interp.classes
    plt.close('all')


def test_bad_shapes_are_clear_errors():
    p = torch.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=r'targs must be \(N,\)'): Interpretation(p, torch.zeros(5))
    with pytest.raises(ValueError, match='2 class names for 3'): Interpretation(p, torch.zeros(4), classes=['a', 'b'])
