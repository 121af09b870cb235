"""The plain loop of the minibatch lesson: fit, accuracy, report, Dataset, get_dls."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, default_collate

from miniai.training import Dataset, accuracy, fit, get_dls, report


def blobs(n=600, d=2, n_classes=3, seed=0):
    """Three well separated Gaussian clusters in `d` dimensions, with their labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    centres = 6 * torch.eye(n_classes, d)               # 6 or more apart, noise 1: about 0.1% overlap
    return centres[y] + torch.randn(n, d, generator=g), y


def test_accuracy_is_the_fraction_of_argmax_hits():
    out = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert accuracy(out, torch.tensor([1, 0, 0, 1])).item() == 0.5
    assert accuracy(out, torch.tensor([1, 0, 1, 0])).item() == 1.0


def test_report_prints_loss_and_accuracy_to_two_places(capsys):
    report(torch.tensor(0.3149), torch.tensor([[0., 1.], [1., 0.], [1., 0.]]), torch.tensor([1, 0, 1]))
    assert capsys.readouterr().out == '0.31, 0.67\n'


def test_dataset_pairs_items_and_refuses_unequal_lengths():
    ds = Dataset(torch.arange(5) * 10, torch.arange(5))
    assert len(ds) == 5 and ds[3] == (30, 3)
    with pytest.raises(ValueError, match='same length'): Dataset(torch.zeros(4), torch.zeros(3))


def test_get_dls_shuffles_training_and_doubles_the_validation_batch():
    x, y = torch.arange(100.), torch.arange(100)
    calls = []
    def collate(b): calls.append(len(b)); return default_collate(b)
    train, valid = get_dls(Dataset(x, y), Dataset(x, y), 8, collate_fn=collate)
    assert isinstance(train, DataLoader) and train.batch_size == 8 and valid.batch_size == 16
    torch.manual_seed(0)
    order = torch.cat([xb for xb, _ in train])
    assert sorted(order.tolist()) == x.tolist() and not torch.equal(order, x)   # every item once, shuffled
    assert torch.equal(torch.cat([xb for xb, _ in valid]), x)                  # validation in order
    assert calls and set(calls) == {8, 4, 16}                                  # collate_fn reached both loaders


def test_fit_learns_separable_classes_and_reports_each_epoch(capsys):
    torch.manual_seed(0)
    (xt, yt), (xv, yv) = blobs(seed=0), blobs(n=300, seed=1)
    train, valid = get_dls(Dataset(xt, yt), Dataset(xv, yv), 32)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, acc = fit(5, model, F.cross_entropy, opt, train, valid)
    assert acc > 0.97 and loss < 0.2
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ['0', '1', '2', '3', '4']            # one line per epoch, from 0
    assert [float(v) for v in lines[-1].split()[1:]] == pytest.approx([loss, acc])
    assert not model.training


def test_fit_weights_each_validation_batch_by_its_size(capsys):
    # 10 items in batches of 4, 4, 2: the mean over items, not over batches
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.)                          # lr 0: the model stays as it is
    loss, acc = fit(1, model, F.cross_entropy, opt, [(x, y)], DataLoader(Dataset(x, y), batch_size=4))
    with torch.no_grad(): out = model(x)
    assert loss == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-6)
    assert acc == pytest.approx(accuracy(out, y).item())


def test_fit_explains_what_it_cannot_do():
    model, x, y = nn.Linear(2, 2), torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match='epochs must be an integer >= 1'): fit(0, model, F.cross_entropy, opt, [], [])
    with pytest.raises(ValueError, match='valid_dl gave no batches'):
        fit(1, model, F.cross_entropy, opt, [(x, y)], [])
