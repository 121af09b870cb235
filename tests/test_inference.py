"""Classifying new images, export/load_learner and `Learner.get_preds` on a tiny CNN and synthetic images."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from conftest import DLs, tiny_cnn
from miniai.augment import get_preds as get_preds_fn
from miniai.datasets import _normalise
from miniai.inference import Prediction, Preprocess, classify, export, fashion_preprocess, load_learner
from miniai.learner import DeviceCB, TrainLearner

CLASSES = tuple(f'class {k}' for k in range(10))


def raw_images(n=40, seed=0):
    """uint8 (n, 28, 28) images (class k brightens row band k) and their labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randint(0, 90, (n, 28, 28), generator=g)
    for k in range(10): x[y == k, 2 * k + 4:2 * k + 7, :] += 150
    return x.to(torch.uint8), y


@pytest.fixture
def learn():
    """A CNN trained one epoch on normalised raw images, with the Fashion-MNIST preprocessing and our classes."""
    x, y = raw_images(200)
    ds = TensorDataset(_normalise(x), y)
    dls = DLs(DataLoader(ds, batch_size=32, shuffle=True), DataLoader(ds, batch_size=32))
    learn = TrainLearner(tiny_cnn(), dls, F.cross_entropy, lr=0.05, cbs=[DeviceCB('cpu')], opt_func=torch.optim.Adam)
    learn.fit(1)
    learn.preprocess = Preprocess(mean=(0.28,), std=(0.35,), size=(28, 28), classes=CLASSES)
    return learn


def batch_preds(learn, x):
    """The learner's probabilities on uint8 images `x` through get_preds on a loader of normalised images."""
    dl = DataLoader(TensorDataset(_normalise(x), torch.zeros(len(x), dtype=torch.long)), batch_size=16)
    preds, _ = learn.get_preds(dl)
    return preds.softmax(1)


def test_preprocess_matches_get_dls_normalisation_and_roundtrips_as_plain_data():
    x, _ = raw_images(8)
    pre = fashion_preprocess()
    assert torch.equal(pre(x), _normalise(x))
    assert Preprocess.from_dict(pre.to_dict()) == pre
    assert all(isinstance(v, (tuple, int)) for v in pre.to_dict().values())
    assert torch.allclose(pre.decode(pre(x)), x[:, None].float() / 255, atol=1e-6)


def test_classify_single_image_equals_batch_and_get_preds(learn, tmp_path):
    x, _ = raw_images(6, seed=1)
    probs = batch_preds(learn, x)
    batch = learn.classify(x)
    assert [p.index for p in batch] == probs.argmax(1).tolist()
    assert [p.label for p in batch] == [CLASSES[i] for i in probs.argmax(1)]
    assert torch.allclose(torch.stack([p.probs for p in batch]), probs, atol=1e-6)
    path = tmp_path / 'im.png'
    Image.fromarray(x[2].numpy()).save(path)
    for one in (x[2], x[2][None], x[2].numpy(), x[2].float() / 255, Image.open(path), path, str(path)):
        p = learn.classify(one)
        assert isinstance(p, Prediction) and p.label == batch[2].label
        assert torch.allclose(p.probs, batch[2].probs, atol=1e-5) and p.prob == pytest.approx(float(p.probs.max()))
    assert [p.label for p in learn.classify([path, x[3]])] == [batch[2].label, batch[3].label]


def test_classify_resizes_and_converts_pil_images(learn):
    x, _ = raw_images(1)
    big = Image.fromarray(x[0].numpy()).resize((56, 56)).convert('RGB')
    want = learn.classify(torch.from_numpy(np.asarray(big.convert('L').resize((28, 28))).copy()))
    got = learn.classify(big)
    assert got.label == want.label and torch.allclose(got.probs, want.probs)


def test_classify_keeps_the_model_mode(learn):
    learn.model.train()
    learn.classify(raw_images(2)[0])
    assert learn.model.training


@pytest.mark.parametrize('bad,err,msg', [
    ('nope.png', FileNotFoundError, 'no image file'),
    (torch.rand(28, 28) * 255, ValueError, 'must hold values in [0, 1]'),
    (torch.zeros(2, 3, 28, 28, dtype=torch.uint8), ValueError, '1-channel'),
    (torch.zeros(28, dtype=torch.uint8), ValueError, 'must be (H, W) or (C, H, W)'),
    (torch.zeros(28, 28, dtype=torch.int32), TypeError, 'uint8'),
    (42, TypeError, 'PIL images, image file paths'),
    ([], ValueError, 'empty list')])
def test_bad_inputs_give_clear_errors(learn, tmp_path, bad, err, msg):
    if isinstance(bad, str): bad = tmp_path / bad
    with pytest.raises(err, match=msg.replace('[', r'\[').replace('(', r'\(').replace(')', r'\)')):
        learn.classify(bad)


def test_a_file_that_is_not_an_image_is_a_clear_error(learn, tmp_path):
    (tmp_path / 'notes.png').write_text('not an image')
    with pytest.raises(ValueError, match='not an image file'): learn.classify(tmp_path / 'notes.png')


def test_classify_without_preprocessing_says_how_to_set_it(learn):
    learn.preprocess = None
    with pytest.raises(ValueError, match='learn.preprocess = Preprocess'): learn.classify(raw_images(1)[0])


def test_export_then_load_learner_gives_identical_predictions(learn, tmp_path):
    x, _ = raw_images(12, seed=3)
    path = export(learn, tmp_path / 'model.pt')
    state = torch.load(path, weights_only=True)  # plain data only
    assert state['preprocess']['classes'] == CLASSES
    new = load_learner(path, tiny_cnn)
    assert new.preprocess == learn.preprocess and not new.model.training
    a, b = learn.classify(x), new.classify(x)
    assert [p.label for p in a] == [p.label for p in b]
    assert torch.equal(torch.stack([p.probs for p in a]), torch.stack([p.probs for p in b]))
    assert torch.equal(batch_preds(learn, x), batch_preds(new, x))


def test_load_learner_rejects_another_model_and_other_files(learn, tmp_path):
    path = learn.export(tmp_path / 'model.pt')
    with pytest.raises(ValueError, match='exported from another model'): load_learner(path, lambda: tiny_cnn(5))
    learn.save(tmp_path / 'ckpt.pt')
    with pytest.raises(ValueError, match='not a miniai export'): load_learner(tmp_path / 'ckpt.pt', tiny_cnn)
    with pytest.raises(FileNotFoundError): load_learner(tmp_path / 'nope.pt', tiny_cnn)


def test_get_preds_method_matches_the_function_and_decodes(learn):
    p, t = get_preds_fn(learn)
    inp, p2, t2, dec = learn.get_preds(with_input=True, with_decoded=True)
    assert torch.equal(p, p2) and torch.equal(t, t2) and torch.equal(dec, p.argmax(1)) and len(inp) == len(t)
    tp, tt = learn.get_preds(tta=True)
    assert torch.allclose(tp.sum(1), torch.ones(len(tp))) and torch.equal(tt, t)


def test_classify_rejects_a_model_whose_outputs_are_not_one_per_class(learn):
    learn.preprocess = Preprocess(mean=(0.28,), std=(0.35,), classes=CLASSES[:4])
    with pytest.raises(ValueError, match='one output per class'): classify(learn, raw_images(2)[0])
