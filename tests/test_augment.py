"""Batch augmentation (per-image, on the device, seeded), InputTransformCB, CapturePreds and get_preds with TTA."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torcheval.metrics import MulticlassAccuracy

import miniai.augment
from conftest import DLs, tiny_cnn, toy_images
from miniai.augment import (
    CapturePreds,
    InputTransformCB,
    RandCrop,
    RandErase,
    RandHFlip,
    default_tfms,
    get_preds,
    hflip,
    random_crop,
    random_erase,
    random_hflip,
    show_image_batch,
)
from miniai.learner import Callback, DeviceCB, MetricsCB, ProgressCB, TrainLearner, set_seed


def test_all_names_resolve():
    ns = {}
    exec('from miniai.augment import *', ns)
    assert set(miniai.augment.__all__) <= set(ns)


# ---------------------------------------------------------------- the transforms
def _windows(img, padding, mode='reflect'):
    """Every crop of `img` (C,H,W) that a padded random crop can produce."""
    h, w = img.shape[-2:]
    p = F.pad(img[None], (padding,) * 4, mode=mode)[0]
    return [p[:, i:i + h, j:j + w] for i in range(2 * padding + 1) for j in range(2 * padding + 1)]


@pytest.mark.parametrize('mode', ['reflect', 'constant'])
def test_random_crop_gives_a_window_of_the_padded_image(mode):
    x = torch.randn(8, 2, 12, 10)
    out = random_crop(x, padding=2, mode=mode)
    assert out.shape == x.shape and out.dtype == x.dtype
    for img, o in zip(x, out): assert any(torch.equal(o, w) for w in _windows(img, 2, mode))


def test_random_crop_is_per_image():
    x = torch.randn(1, 1, 28, 28).expand(8, 1, 28, 28).contiguous()  # 8 identical images
    for seed in range(5):
        torch.manual_seed(seed)
        out = random_crop(x, padding=1)
        assert len({tuple(o.flatten().tolist()) for o in out}) > 1


def test_random_crop_size_and_3d_input():
    x = torch.arange(2 * 6 * 6, dtype=torch.float32).view(2, 6, 6)
    assert random_crop(x, size=4, padding=0).shape == (2, 4, 4)
    assert random_crop(x, padding=1).shape == (2, 6, 6)
    assert random_crop(x.to(torch.uint8)[:, None], padding=1, mode='constant').dtype == torch.uint8
    with pytest.raises(ValueError, match='larger'): random_crop(x, size=9, padding=1)
    with pytest.raises(ValueError, match='mode'): RandCrop(mode='wrap')


def test_random_hflip_flips_each_image_or_not():
    x = torch.randn(64, 1, 5, 5)
    out = random_hflip(x)
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert (flipped | kept).all() and flipped.any() and kept.any()
    assert torch.equal(random_hflip(x, p=0.), x) and torch.equal(random_hflip(x, p=1.), hflip(x))


def test_random_erase_fills_rectangles_with_in_range_noise():
    x = torch.randn(32, 1, 28, 28)
    out = random_erase(x, pct=0.2, max_num=1)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= x.min() and out.max() <= x.max()
    changed = out != x
    assert changed.any() and not changed.all(1).all(-1).all(-1).any()
    for c in changed[:, 0]:  # with max_num=1, what changed fits in one 5×5 rectangle
        if c.any():
            rows, cols = c.any(1).nonzero(), c.any(0).nonzero()
            assert rows.max() - rows.min() < 5 and cols.max() - cols.min() < 5
    assert torch.equal(random_erase(x, max_num=0), x)
    with pytest.raises(TypeError, match='float'): random_erase(x.to(torch.uint8))


def test_transforms_compose_keep_shape_dtype_and_change_inputs():
    x = torch.randn(16, 1, 28, 28)
    tfm = nn.Sequential(RandCrop(padding=2), RandHFlip(), RandErase(per_image=True))
    out = tfm(x)
    assert out.shape == x.shape and out.dtype == x.dtype and not torch.equal(out, x)
    assert [type(m) for m in default_tfms()] == [RandCrop, RandHFlip]
    erase, = default_tfms(padding=0, flip=False, erase=True)
    assert type(erase) is RandErase and erase.per_image


def test_transforms_repeat_under_set_seed_and_differ_across_seeds():
    x, tfm = torch.randn(16, 1, 28, 28), default_tfms(padding=2, erase=True)
    outs = []
    for seed in (0, 0, 1):
        set_seed(seed)
        outs.append(tfm(x))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_show_image_batch_draws_n_images():
    import matplotlib.pyplot as plt
    fig = show_image_batch(torch.randn(20, 1, 8, 8), n=6, titles=list('abcdef'))
    assert sum(ax.has_data() for ax in fig.axes) == 6
    fig2 = show_image_batch(torch.randn(3, 8, 8))
    assert sum(ax.has_data() for ax in fig2.axes) == 3
    plt.close(fig)
    plt.close(fig2)


# ---------------------------------------------------------------- InputTransformCB
class RecordInputs(Callback):
    order = -5  # after InputTransformCB: sees what the model sees

    def __init__(self): self.train, self.valid = [], []
    def before_batch(self, learn): (self.train if learn.training else self.valid).append(learn.batch[0].clone())


def _ordered_dls(n=100, bs=32):
    x, y = torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))
    ds = TensorDataset(x, y)
    return DLs(DataLoader(ds, bs), DataLoader(ds, bs)), x


@pytest.mark.parametrize('on_train,on_val', [(True, False), (False, True), (True, True)])
def test_input_transform_cb_phases(on_train, on_val):
    dls, x = _ordered_dls()
    rec = RecordInputs()
    learn = TrainLearner(tiny_cnn(), dls, F.cross_entropy, lr=0.01,
                         cbs=[rec, InputTransformCB(RandCrop(padding=2), on_train, on_val)])
    learn.fit(1)
    assert DeviceCB.order < InputTransformCB.order < RecordInputs.order
    assert torch.equal(torch.cat(rec.train), x) != on_train
    assert torch.equal(torch.cat(rec.valid), x) != on_val
    assert all(b.shape[1:] == x.shape[1:] and b.dtype == x.dtype for b in rec.train + rec.valid)


def test_input_transform_cb_defaults_to_training_batches_only():
    dls, x = _ordered_dls()
    rec = RecordInputs()
    learn = TrainLearner(tiny_cnn(), dls, F.cross_entropy, lr=0.01, cbs=[rec, InputTransformCB(lambda b: b + 1)])
    learn.fit(1)
    assert torch.equal(torch.cat(rec.train), x + 1) and torch.equal(torch.cat(rec.valid), x)


def test_input_transform_cb_is_seeded_and_rejects_non_callables():
    def run(seed):
        torch.manual_seed(0)
        dls, _ = _ordered_dls()
        rec = RecordInputs()
        learn = TrainLearner(tiny_cnn(), dls, F.cross_entropy, lr=0.01, cbs=[rec, InputTransformCB(default_tfms())])
        set_seed(seed)
        learn.fit(1, valid=False)
        return torch.cat(rec.train)
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(TypeError, match='callable'): InputTransformCB(3)


# ---------------------------------------------------------------- predictions
def _learner(train=False, **kw):
    dls = toy_images(n=230, bs=64)  # 230 is not a multiple of 64
    model = nn.Sequential(*tiny_cnn(), nn.BatchNorm1d(10))  # BatchNorm: eval and train modes differ
    learn = TrainLearner(model, dls, F.cross_entropy, lr=0.01, opt_func=torch.optim.Adam, **kw)
    if train: learn.fit(1, valid=False)
    else:  # running statistics that differ from the batch's
        with torch.no_grad(): model.train()(dls.train.dataset.tensors[0][:64] * 2 + 1)
    return learn, dls


def _direct(model, x):
    with torch.no_grad(): return model.eval()(x)


def test_get_preds_matches_the_model_one_row_per_item():
    learn, dls = _learner()
    x, y = dls.valid.dataset.tensors
    preds, targs = get_preds(learn)
    assert preds.shape == (230, 10) and preds.device.type == 'cpu'
    assert torch.equal(targs, y)
    torch.testing.assert_close(preds, _direct(learn.model, x).softmax(1))   # cross entropy: probabilities
    inputs, preds2, targs2 = get_preds(learn, with_input=True)
    assert torch.equal(inputs, x) and torch.equal(preds2, preds) and torch.equal(targs2, y)


def test_get_preds_tta_averages_probabilities_on_flipped_images():
    learn, dls = _learner()
    x = dls.valid.dataset.tensors[0]
    probs, _ = get_preds(learn, tta=True)
    want = (_direct(learn.model, x).softmax(1) + _direct(learn.model, x.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(probs, want)
    torch.testing.assert_close(probs.sum(1), torch.ones(230))


def test_get_preds_changes_nothing():
    metrics, progress = MetricsCB(acc=MulticlassAccuracy()), ProgressCB(interactive=False)
    learn, dls = _learner(train=True, cbs=[DeviceCB('cpu'), metrics, progress])
    weights, opt_state = copy.deepcopy(learn.model.state_dict()), copy.deepcopy(learn.opt.state_dict())
    cbs, opt, hist, batch = list(learn.cbs), learn.opt, list(metrics.history), learn.batch
    learn.model.train()
    get_preds(learn, tta=True, with_input=True)
    assert learn.model.training and learn.cbs == cbs and learn.opt is opt and learn.dls is dls
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in weights.items())
    after = learn.opt.state_dict()['state']
    assert all(torch.equal(v, after[i][k]) for i, st in opt_state['state'].items() for k, v in st.items())
    assert metrics.history == hist and learn.batch is batch


def test_get_preds_on_another_loader_puts_the_original_back():
    learn, dls = _learner()
    x, y = torch.randn(50, 1, 28, 28), torch.randint(0, 10, (50,))
    preds, targs = get_preds(learn, dl=DataLoader(TensorDataset(x, y), batch_size=16))
    assert preds.shape == (50, 10) and torch.equal(targs, y) and learn.dls is dls
    torch.testing.assert_close(preds, _direct(learn.model, x).softmax(1))
    with pytest.raises(ValueError, match='empty'):
        get_preds(learn, dl=DataLoader(TensorDataset(x[:0], y[:0]), batch_size=16))
    assert learn.dls is dls


def test_capture_preds_keeps_the_last_validation_epoch_only():
    learn, dls = _learner()
    cap = CapturePreds(with_input=True)
    learn.fit(2, cbs=[cap])
    assert cap.preds.shape == (230, 10) and cap.inputs.shape == (230, 1, 28, 28) and len(cap.targs) == 230
    assert cap not in learn.cbs and cap._preds == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_augment_and_get_preds_on_cuda():
    x = torch.randn(8, 1, 28, 28, device='cuda')
    out = default_tfms(erase=True)(x)
    assert out.device == x.device and out.shape == x.shape
    learn, dls = _learner(cbs=[DeviceCB('cuda'), InputTransformCB(default_tfms())])
    probs, targs = get_preds(learn, tta=True)
    assert probs.device.type == 'cpu' and probs.shape == (230, 10) and next(learn.model.parameters()).is_cuda
    x = dls.valid.dataset.tensors[0].cuda()
    want = (_direct(learn.model, x).softmax(1) + _direct(learn.model, x.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(probs, want.cpu())
