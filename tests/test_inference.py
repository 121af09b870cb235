"""Classifying new images (every input kind and shape, 16-bit, bombs), export/load_learner (architectures by name,
digests, checked contents) and `Learner.get_preds`' one convention, on a tiny CNN and synthetic images."""
import hashlib
import io
import os
import struct
import zlib
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import DLs, linear_data, tiny_cnn
from miniai.augment import get_preds as get_preds_fn
from miniai.datasets import DataLoaders, normalise_images
from miniai.datasets.loaders import _with_preprocess
from miniai.errors import DataError
from miniai.inference import Prediction, Preprocess, classify, export, fashion_preprocess, load_learner
from miniai.interpret import Interpretation
from miniai.learner import DeviceCB, TrainLearner
from miniai.models import ARCHITECTURES, ArchitectureError, recipe_model, register_model

CLASSES = tuple(f'class {k}' for k in range(10))


def raw_images(n=40, seed=0):
    """uint8 (n, 28, 28) images (class k brightens row band k) and their labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randint(0, 90, (n, 28, 28), generator=g)
    for k in range(10): x[y == k, 2 * k + 4:2 * k + 7, :] += 150
    return x.to(torch.uint8), y


def fit_on_raw_images(model, loss_func=F.cross_entropy):
    x, y = raw_images(200)
    ds = TensorDataset(normalise_images(x), y)
    dls = DLs(DataLoader(ds, batch_size=32, shuffle=True), DataLoader(ds, batch_size=32))
    learn = TrainLearner(model, dls, loss_func, lr=0.05, cbs=[DeviceCB('cpu')], opt_func=torch.optim.Adam)
    learn.fit(1)
    learn.preprocess = Preprocess(mean=(0.28,), std=(0.35,), size=(28, 28), classes=CLASSES)
    return learn


@pytest.fixture
def learn():
    """A CNN trained one epoch on normalised raw images, with the Fashion-MNIST preprocessing and our classes."""
    return fit_on_raw_images(tiny_cnn())


def loader(x, y=None, bs=16):
    """A loader of uint8 images `x` (N, H, W), normalised as in training, with labels `y` (default zeros)."""
    return DataLoader(TensorDataset(normalise_images(x), torch.zeros(len(x), dtype=torch.long) if y is None else y), bs)


def raw_outputs(learn, x):
    with torch.no_grad(): return learn.model.eval()(normalise_images(x))


def probs_of(preds): return torch.stack([p.probs for p in preds])


# ---------------------------------------------------------------- Preprocess
def test_preprocess_matches_get_dls_normalisation_and_roundtrips_as_plain_data():
    x, _ = raw_images(8)
    pre = fashion_preprocess()
    assert torch.equal(pre(x[:, None]), normalise_images(x)) and torch.equal(pre(list(x)), normalise_images(x))
    assert Preprocess.from_dict(pre.to_dict()) == pre
    assert _with_preprocess(DataLoaders([], [])).preprocess == pre      # what get_dls attaches
    d = pre.to_dict()
    assert all(type(v) in (tuple, int) for v in d.values())
    assert all(type(o) in (float, int, str) for k in ('mean', 'std', 'size', 'classes') for o in d[k])
    assert torch.allclose(pre.decode(pre(x[:, None])), x[:, None].float() / 255, atol=1e-6)


@pytest.mark.parametrize('kw,msg', [
    (dict(mean=(float('nan'),)), 'finite'), (dict(std=(0.,)), 'std must be > 0'),
    (dict(std=(float('inf'),)), 'finite'), (dict(size=(30000, 30000)), 'each 1 to 4096'),
    (dict(size=(0, 28)), 'each 1 to 4096'), (dict(channels=2), '1 (grey)'),
    (dict(classes=(1, 2)), 'classes must be strings'), (dict(mean=(0., 0.)), 'mean needs 1 finite number(s)')])
def test_invalid_preprocessing_values_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg.replace('(', r'\(').replace(')', r'\)')): Preprocess(**kw)
    with pytest.raises(ValueError, match='unknown preprocessing keys'): Preprocess.from_dict({'sizes': (28, 28)})


# ---------------------------------------------------------------- classify: what one image is
def test_classify_single_image_equals_batch_and_get_preds(learn, tmp_path):
    x, _ = raw_images(6, seed=1)
    probs, _ = learn.get_preds(loader(x))
    batch = learn.classify(x[:, None])
    assert [p.index for p in batch] == probs.argmax(1).tolist()
    assert [p.label for p in batch] == [CLASSES[i] for i in probs.argmax(1)]
    assert torch.allclose(probs_of(batch), probs, atol=1e-6)
    path = tmp_path / 'im.png'
    Image.fromarray(x[2].numpy()).save(path)
    for one in (x[2], x[2][None], x[2].numpy(), x[2][..., None].numpy(), x[2].float() / 255, Image.open(path), path,
                str(path)):
        p = learn.classify(one)
        assert isinstance(p, Prediction) and p.label == batch[2].label
        assert torch.allclose(p.probs, batch[2].probs, atol=1e-5) and p.prob == pytest.approx(float(p.probs.max()))
    assert [p.label for p in learn.classify([path, x[3]])] == [batch[2].label, batch[3].label]
    assert torch.equal(probs_of(learn.classify(x[:, None])), probs_of(learn.classify(x[:, :, :, None].numpy())))


def test_a_colour_image_is_one_image_in_every_layout(learn, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / 'photo.png')
    want = learn.classify(Image.open(tmp_path / 'photo.png'))
    rgba = np.concatenate([rgb, np.full((64, 64, 1), 7, np.uint8)], -1)
    for one in (rgb, torch.from_numpy(rgb).permute(2, 0, 1), tmp_path / 'photo.png', np.array(Image.fromarray(rgb)),
                rgba, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255):
        p = learn.classify(one)
        assert isinstance(p, Prediction), type(p)
        # floats are not rounded to 8 bits after the grey conversion: nearly the same input
        float_in = isinstance(one, torch.Tensor) and one.is_floating_point()
        assert torch.allclose(p.probs, want.probs, atol=1e-3 if float_in else 1e-5)
    # the grey conversion is Pillow's, so an array and its file give the same input
    assert torch.equal(fashion_preprocess().image(rgb), fashion_preprocess().image(Image.fromarray(rgb).convert('L')))
    batch = learn.classify(np.stack([rgb, rgb]))                            # (N, H, W, C)
    assert len(batch) == 2 and torch.allclose(batch[1].probs, want.probs, atol=1e-5)


@pytest.mark.parametrize('shape,msg', [
    ((8, 28, 28), 'x.unsqueeze(1)'), ((3, 28, 3), 'could be (C, H, W) or (H, W, C)'),
    ((2, 5, 28, 28), 'neither (N, C, H, W) nor (N, H, W, C)'), ((28,), 'must be (H, W)')])
def test_shapes_that_are_not_one_image_are_refused_never_a_silent_batch(learn, shape, msg):
    with pytest.raises(ValueError, match=msg.replace('(', r'\(').replace(')', r'\)')):
        learn.classify(torch.zeros(shape, dtype=torch.uint8))


def test_an_ambiguous_shape_at_the_models_size_is_read_by_that_size():
    pre = Preprocess(size=(3, 5), channels=3)
    x = torch.arange(45, dtype=torch.uint8).view(3, 3, 5)       # (C, H, W) = (3, 3, 5): the model's size is (3, 5)
    assert torch.equal(pre.image(x), x) and torch.equal(pre.image(x.permute(1, 2, 0)), x)


def test_classify_resizes_and_reads_pil_images_as_their_arrays(learn):
    x, _ = raw_images(1)
    big = Image.fromarray(x[0].numpy()).resize((56, 56)).convert('RGB')
    got = learn.classify(big)
    assert torch.equal(got.probs, learn.classify(np.asarray(big)).probs)
    assert got.label == learn.classify(x[0]).label


def test_classify_keeps_the_model_mode(learn):
    learn.model.train()
    learn.classify(raw_images(2)[0][:, None])
    assert learn.model.training


# ---------------------------------------------------------------- classify: pixel values
def test_16_bit_and_other_integer_modes_are_scaled_not_clipped(learn, tmp_path):
    x = raw_images(1)[0][0]
    want = learn.classify(x)
    x16 = x.numpy().astype(np.uint16) * 257                     # the same picture at 16 bits
    Image.fromarray(x16).save(tmp_path / 'deep.png')
    assert Image.open(tmp_path / 'deep.png').mode.startswith('I;16')
    big_endian = Image.frombytes('I;16B', (28, 28), x16.astype('>u2').tobytes())
    for one in (tmp_path / 'deep.png', x16, big_endian, Image.fromarray(x.numpy().astype(np.float32) / 255)):
        p = learn.classify(one)
        assert p.label == want.label and torch.allclose(p.probs, want.probs, atol=1e-5), one
    white = learn.classify(np.ones((28, 28), bool))
    assert torch.allclose(white.probs, learn.classify(torch.full((28, 28), 255, dtype=torch.uint8)).probs)
    with pytest.raises(DataError, match='no known white level'):
        learn.classify(Image.fromarray(x16.astype(np.int32)))      # mode I: 16 or 32 bits? refused, not guessed


@pytest.mark.parametrize('bad,err,msg', [
    ('nope.png', FileNotFoundError, 'no image file'),
    (torch.rand(28, 28) * 255, ValueError, 'must hold values in [0, 1]'),
    (torch.full((28, 28), float('nan')), ValueError, 'NaN or infinite'),
    (np.full((28, 28), np.inf, np.float32), ValueError, 'NaN or infinite'),
    (torch.zeros(0, 28, 28, dtype=torch.uint8), ValueError, 'an empty image'),
    (np.zeros((28, 0), np.uint8), ValueError, 'an empty image'),
    (torch.zeros(0, 1, 28, 28), ValueError, 'an empty image'),
    (torch.zeros(28, 28, dtype=torch.int32), TypeError, 'uint8 (0..255) or uint16'),
    (torch.zeros(2, 28, 28, dtype=torch.uint8), ValueError, 'neither (C, H, W)'),
    (42, TypeError, 'PIL images, image file paths'),
    ([], ValueError, 'empty list')])
def test_bad_inputs_give_clear_errors(learn, tmp_path, bad, err, msg):
    if isinstance(bad, str): bad = tmp_path / bad
    with pytest.raises(err, match=msg.replace('[', r'\[').replace('(', r'\(').replace(')', r'\)')):
        learn.classify(bad)


# ---------------------------------------------------------------- image files that are input too
def _chunk(kind, data): return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def png_claiming(w, h) -> bytes:
    """A small PNG file whose header claims a `w`x`h` image: what a decompression bomb looks like to a reader."""
    ihdr = struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', ihdr) + _chunk(b'IDAT', zlib.compress(b'\0' * 1000)) + \
        _chunk(b'IEND', b'')


def png_with_text_bomb() -> bytes:
    """A valid 28x28 PNG with a 50 KB zTXt chunk that inflates to 50 MB."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buf, 'PNG')
    png = buf.getvalue()
    return png[:33] + _chunk(b'zTXt', b'comment\0\0' + zlib.compress(b'A' * (50 << 20), 9)) + png[33:]


def make_unreadable(path, monkeypatch):
    """Take read permission away from `path`; as root (which reads anything) the system's open is refused."""
    os.chmod(path, 0)
    if os.geteuid() == 0:
        real = os.open
        def denied(p, *args, **kwargs):
            if str(p) == str(path): raise PermissionError(13, 'Permission denied', str(p))
            return real(p, *args, **kwargs)
        monkeypatch.setattr(os, 'open', denied)


@pytest.mark.parametrize('case,msg', [
    ('bomb', 'image of more than the 89,478,485 pixels miniai decodes'),    # Pillow refuses it
    ('big', 'image of more than the 89,478,485 pixels miniai decodes'),     # Pillow only warns
    ('text', 'a PNG text chunk inflates past'), ('denied', 'cannot be read: permission denied; make it readable'),
    ('fifo', 'not a regular file'), ('folder', 'is a folder'), ('text_file', 'not an image file Pillow can read'),
    ('truncated', 'damaged or unsupported image file')])
def test_image_files_that_cannot_be_read_safely_are_refused(learn, tmp_path, monkeypatch, case, msg):
    path = tmp_path / 'im.png'
    if case == 'bomb': path.write_bytes(png_claiming(20000, 20000))
    elif case == 'big': path.write_bytes(png_claiming(10000, 10000))
    elif case == 'text': path.write_bytes(png_with_text_bomb())
    elif case == 'fifo': os.mkfifo(path)
    elif case == 'folder': path.mkdir()
    elif case == 'text_file': path.write_text('not an image')
    else:
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(path)
        if case == 'truncated': path.write_bytes(path.read_bytes()[:45])
        else: make_unreadable(path, monkeypatch)
    with pytest.raises(DataError, match=msg): learn.classify(path)


def test_classify_without_preprocessing_says_how_to_set_it(learn):
    learn.preprocess = None
    with pytest.raises(ValueError, match='learn.preprocess = Preprocess'): learn.classify(raw_images(1)[0][0])


def test_classify_rejects_a_model_whose_outputs_are_not_one_per_class(learn):
    learn.preprocess = Preprocess(mean=(0.28,), std=(0.35,), classes=CLASSES[:4])
    with pytest.raises(ValueError, match='one output per class'): classify(learn, raw_images(2)[0][:, None])


# ---------------------------------------------------------------- export and load_learner
def test_export_then_load_learner_gives_identical_predictions(learn, tmp_path):
    x, _ = raw_images(12, seed=3)
    path = export(learn, tmp_path / 'model.pt')
    state = torch.load(path, weights_only=True)  # plain data only
    assert state['preprocess']['classes'] == CLASSES and 'arch' not in state
    new = load_learner(path, tiny_cnn)
    assert new.preprocess == learn.preprocess and not new.model.training
    a, b = learn.classify(x[:, None]), new.classify(x[:, None])
    assert [p.label for p in a] == [p.label for p in b] and torch.equal(probs_of(a), probs_of(b))
    assert torch.equal(learn.get_preds(loader(x))[0], new.get_preds(loader(x))[0])


def test_an_export_of_a_built_in_architecture_loads_with_the_path_alone(tmp_path):
    learn = fit_on_raw_images(recipe_model(nfs=(1, 4, 8, 8, 16)))
    path = learn.export(tmp_path / 'model.pt')
    arch = torch.load(path, weights_only=True)['arch']
    assert arch == {'name': 'recipe', 'kwargs': {'nfs': (1, 4, 8, 8, 16), 'leak': 0.1, 'sub': 0.4}}
    new = load_learner(path)
    x = raw_images(8, seed=4)[0][:, None]
    assert torch.equal(probs_of(new.classify(x)), probs_of(learn.classify(x)))


def test_a_model_of_your_own_needs_its_constructor_and_a_file_never_names_code(learn, tmp_path):
    path = learn.export(tmp_path / 'model.pt')
    with pytest.raises(ArchitectureError, match=r'a model of your own .* pass its constructor, load_learner\(path, '):
        load_learner(path)
    state = torch.load(path, weights_only=True)
    for arch, msg in (({'name': 'os.system', 'kwargs': {}}, "'os.system' is not registered here"),
                      ({'name': 'recipe', 'kwargs': {'no_such_arg': 1}}, 'refuses the recorded arguments')):
        _save_export({**state, 'arch': arch}, tmp_path / 'forged.pt')
        with pytest.raises(ArchitectureError, match=msg): load_learner(tmp_path / 'forged.pt')
    with pytest.raises(TypeError, match='must be plain data'): recipe_model(nfs=torch.tensor([1, 8]))


def test_a_registered_builder_of_your_own_loads_by_name(learn, tmp_path):
    @register_model('test-tiny-cnn')
    def tiny(n_classes: int = 10): return tiny_cnn(n_classes)
    try:
        own = fit_on_raw_images(tiny(n_classes=10))
        path = own.export(tmp_path / 'model.pt')
        x = raw_images(4, seed=5)[0][:, None]
        assert torch.equal(probs_of(load_learner(path).classify(x)), probs_of(own.classify(x)))
    finally: ARCHITECTURES.pop('test-tiny-cnn')


def test_load_learner_rejects_another_model_and_other_files(learn, tmp_path):
    path = learn.export(tmp_path / 'model.pt')
    with pytest.raises(ValueError, match='exported from another model'): load_learner(path, lambda: tiny_cnn(5))
    learn.save(tmp_path / 'ckpt.pt')
    with pytest.raises(ValueError, match='not a miniai export'): load_learner(tmp_path / 'ckpt.pt', tiny_cnn)
    with pytest.raises(FileNotFoundError): load_learner(tmp_path / 'nope.pt', tiny_cnn)


def _save_export(state, path):
    """`state` written as an export with a matching digest file: only the checks of the contents can refuse it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes(buf.getvalue())
    path.with_name(path.name + '.sha256').write_text(f"{hashlib.sha256(buf.getvalue()).hexdigest()}  {path.name}\n")


def test_an_export_carries_a_digest_and_a_damaged_one_is_refused(learn, tmp_path):
    path = learn.export(tmp_path / 'model.pt')
    side = tmp_path / 'model.pt.sha256'
    assert side.read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  model.pt\n"   # sha256sum -c reads it
    data = bytearray(path.read_bytes())
    w = learn.model[0].weight.detach().numpy().tobytes()[:4]
    i = bytes(data).index(w)
    data[i:i + 4] = struct.pack('<f', float('nan'))             # four bytes of one weight set to NaN
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match='is corrupt: its bytes do not match the SHA-256'): load_learner(path, tiny_cnn)
    side.unlink()                                               # copied without its digest: the contents are checked
    with pytest.warns(UserWarning, match='no digest file'), pytest.raises(DataError, match='NaN or infinite weights'):
        load_learner(path, tiny_cnn)
    os.mkfifo(side)                                             # a pipe in place of the digest: refused, never read
    with pytest.raises(DataError, match=r'is a named pipe \(FIFO\), not a regular file'): load_learner(path, tiny_cnn)


@pytest.mark.parametrize('pre,msg', [
    (dict(mean=(float('nan'),)), 'mean needs 1 finite number'), (dict(std=(0.,)), 'std must be > 0'),
    (dict(size=(30000, 30000)), 'each 1 to 4096 pixels'), (dict(classes=(3,)), 'classes must be strings'),
    (dict(scale=2), 'unknown preprocessing keys')])
def test_an_export_with_invalid_preprocessing_is_refused_before_any_allocation(learn, tmp_path, pre, msg):
    path = learn.export(tmp_path / 'model.pt')
    state = torch.load(path, weights_only=True)
    _save_export({**state, 'preprocess': {**state['preprocess'], **pre}}, path)
    with pytest.raises(DataError, match=f'invalid preprocessing values: .*{msg}'.replace('(', r'\(')):
        load_learner(path, tiny_cnn)


def test_export_refuses_non_finite_weights_and_writes_nothing(learn, tmp_path):
    with torch.no_grad(): learn.model[0].weight[0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match=r'NaN or infinite values \(0.weight\); nothing was exported'):
        learn.export(tmp_path / 'model.pt')
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- get_preds: one convention on every path
def test_get_preds_method_matches_the_function_and_decodes(learn):
    p, t = get_preds_fn(learn)
    inp, p2, t2, dec = learn.get_preds(with_input=True, with_decoded=True)
    assert torch.equal(p, p2) and torch.equal(t, t2) and torch.equal(dec, p.argmax(1)) and len(inp) == len(t)


@pytest.mark.parametrize('loss', [F.cross_entropy, nn.CrossEntropyLoss(), partial(F.cross_entropy, label_smoothing=.1)])
def test_get_preds_gives_probabilities_for_cross_entropy_with_and_without_tta(loss):
    learn = fit_on_raw_images(tiny_cnn(), loss)
    x, y = raw_images(20, seed=6)
    dl = loader(x, y)
    raw = raw_outputs(learn, x)
    probs, targs = learn.get_preds(dl)
    torch.testing.assert_close(probs, raw.softmax(1))
    torch.testing.assert_close(probs.sum(1), torch.ones(20))
    assert torch.equal(targs, y)
    torch.testing.assert_close(learn.get_preds(dl, act=None)[0], raw)
    tta, _ = learn.get_preds(dl, tta=True)
    flipped = raw_outputs(learn, x.flip(-1))
    torch.testing.assert_close(tta, (raw.softmax(1) + flipped.softmax(1)) / 2)
    torch.testing.assert_close(learn.get_preds(dl, tta=True, act=None)[0], (raw + flipped) / 2)
    learn.dls.valid = dl
    torch.testing.assert_close(learn.capture_preds()[0], raw)   # the course's capture_preds: the model's outputs


def test_get_preds_gives_raw_outputs_for_other_losses_with_and_without_tta():
    dls = linear_data()
    learn = TrainLearner(nn.Linear(1, 1), dls, F.mse_loss, lr=0.1, cbs=[DeviceCB('cpu')])
    learn.fit(1)
    x = dls.valid.dataset.tensors[0]
    with torch.no_grad(): out, out_neg = learn.model(x), learn.model(-x)
    torch.testing.assert_close(learn.get_preds()[0], out)
    torch.testing.assert_close(learn.get_preds(tta=True, tfm=torch.neg)[0], (out + out_neg) / 2)
    torch.testing.assert_close(learn.get_preds(act=torch.sigmoid)[0], out.sigmoid())
    with pytest.raises(ValueError, match="act must be 'auto', None or a function"): learn.get_preds(act='softmax')


# ---------------------------------------------------------------- a loaded learner has no data
def test_a_loaded_learner_predicts_on_a_loader_it_is_given_and_says_so_without_one(learn, tmp_path):
    loaded = load_learner(learn.export(tmp_path / 'model.pt'), tiny_cnn)
    x, y = raw_images(30, seed=7)
    for call in (loaded.get_preds, lambda: Interpretation.from_learner(loaded)):
        with pytest.raises(ValueError, match=r'no validation loader .* pass one, e.g. learn.get_preds\(dl='): call()
    probs, targs = loaded.get_preds(loader(x, y))
    assert torch.equal(probs, learn.get_preds(loader(x, y))[0]) and torch.equal(targs, y)
    interp = Interpretation.from_learner(loaded, loader(x, y))
    assert torch.equal(interp.probs, probs) and interp.classes == list(CLASSES)
    assert int(interp.confusion_matrix().sum()) == 30
