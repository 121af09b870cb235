"""`Interpretation`: confusion matrix against a direct count, most confused pairs, top losses, the plots."""
import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_cnn
from miniai.inference import fashion_preprocess
from miniai.interpret import Interpretation
from miniai.learner import DeviceCB, TrainLearner


@pytest.fixture
def interp(img_dls):
    learn = TrainLearner(tiny_cnn(), img_dls, F.cross_entropy, lr=0.02, cbs=[DeviceCB('cpu')],
                         opt_func=torch.optim.Adam)
    learn.fit(1)
    learn.preprocess = fashion_preprocess()
    return Interpretation.from_learner(learn)


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


def test_top_losses_are_sorted_per_item_cross_entropy(interp):
    losses, idx = interp.top_losses(5)
    assert torch.all(losses[:-1] >= losses[1:]) and len(idx) == 5
    assert torch.allclose(losses, F.cross_entropy(interp.preds[idx], interp.targs[idx], reduction='none'))
    every = F.cross_entropy(interp.preds, interp.targs, reduction='none')
    assert losses[0] == every.max() and torch.allclose(interp.top_losses()[0].sum(), every.sum())


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
    with pytest.raises(ValueError, match=r'targs must be \(N,\)'): Interpretation(torch.zeros(4, 3), torch.zeros(5))
    with pytest.raises(ValueError, match='2 class names for 3'):
        Interpretation(torch.zeros(4, 3), torch.zeros(4), classes=['a', 'b'])
