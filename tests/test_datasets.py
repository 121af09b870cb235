"""miniai.datasets: offline Fashion-MNIST (schema, sources, cache, corrupt files), loaders and show_images.

Synthetic IDX files in tmp_path for everything but one integration test on the real data.
"""
import gzip
import os
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

os.environ.setdefault('HF_DATASETS_OFFLINE', '1')  # before `datasets` is imported: tests never reach the hub
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import datasets as hf
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

import miniai.datasets.cache as mcache
import miniai.datasets.loaders as mloaders
import miniai.datasets.source as msource
from conftest import REAL_DATA as REAL
from miniai.datasets import (
    FASHION_CLASSES,
    DataLoaders,
    InMemoryLoader,
    collate_dict,
    fashion_mnist_tensors,
    get_dls,
    get_grid,
    inplace,
    load_fashion_mnist,
    read_idx,
    show_images,
    subplots,
)
from miniai.errors import DataError

NAMES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
         'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}


def write_idx(fn, arr, magic=None, count=None, payload=None, raw=None):
    """Write `arr` as a gzipped uint8 IDX file; `magic`, `count` (first dim) and `payload` can lie about it."""
    arr = np.asarray(arr, np.uint8)
    shape = [count if count is not None else len(arr), *arr.shape[1:]]
    head = struct.pack(f'>I{arr.ndim}I', magic or 2048 + arr.ndim, *shape)
    data = head + (arr.tobytes() if payload is None else payload)
    Path(fn).write_bytes(raw if raw is not None else gzip.compress(data, compresslevel=0, mtime=0))  # size = f(shape)


def make_source(folder, n_train=50, n_test=20, seed=0):
    """Four IDX .gz files of random images and labels in `folder`; returns {split: (x, y)}."""
    rng, out = np.random.default_rng(seed), {}
    Path(folder).mkdir(parents=True, exist_ok=True)
    for split, n in (('train', n_train), ('test', n_test)):
        x, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(Path(folder) / NAMES[split][0], x)
        write_idx(Path(folder) / NAMES[split][1], y)
        out[split] = x, y
    return out


class NoHub:
    """Stands in for the hub: records calls and fails as an offline `load_dataset` does."""
    def __init__(self): self.calls = 0
    def __call__(self):
        self.calls += 1
        raise ConnectionError("Couldn't reach 'fashion_mnist' on the Hub (OfflineModeIsEnabled)")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real source, hub, or ~/.cache: each test decides which sources exist."""
    monkeypatch.setenv('MINIAI_CACHE', str(tmp_path / 'cache'))
    monkeypatch.delenv('MINIAI_DATA', raising=False)
    monkeypatch.setattr(msource, '_DEBIAN_DIR', tmp_path / 'no-debian')
    hub = NoHub()
    monkeypatch.setattr(msource, '_load_hub', hub)
    return hub


@pytest.fixture
def src(tmp_path): return tmp_path / 'src', make_source(tmp_path / 'src')


def pixels(ds): return np.stack([np.asarray(im) for im in ds['image']])


def test_schema_rows_names_and_pixels_round_trip(src, tmp_path):
    folder, arrs = src
    dd = load_fashion_mnist(folder, cache_dir=tmp_path / 'c')
    assert list(dd) == ['train', 'test'] and dd.num_rows == {'train': 50, 'test': 20}
    feats = hf.Features({'image': hf.Image(), 'label': hf.ClassLabel(names=list(FASHION_CLASSES))})
    assert dd['train'].features == feats and dd['test'].features == feats
    assert dd['train'].features['label'].names[0] == 'T - shirt / top' and len(FASHION_CLASSES) == 10
    im = dd['train'][0]['image']
    assert im.mode == 'L' and im.size == (28, 28)
    for split, (x, y) in arrs.items():
        np.testing.assert_array_equal(pixels(dd[split]), x)
        np.testing.assert_array_equal(dd[split]['label'], y)


def test_source_order_path_then_env_then_debian(tmp_path, monkeypatch, isolated):
    for name, n in (('a', 11), ('b', 12), ('debian', 13)): make_source(tmp_path / name, n_train=n, n_test=3)
    monkeypatch.setattr(msource, '_DEBIAN_DIR', tmp_path / 'debian')
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path / 'b'))
    assert len(load_fashion_mnist(tmp_path / 'a')['train']) == 11
    assert len(load_fashion_mnist()['train']) == 12
    monkeypatch.delenv('MINIAI_DATA')
    assert len(load_fashion_mnist()['train']) == 13
    assert len(fashion_mnist_tensors()['train'][0]) == 13
    assert isolated.calls == 0


def test_hub_is_the_last_resort(monkeypatch, isolated, src, tmp_path):
    hub = load_fashion_mnist(src[0], tmp_path / 'c')       # stands in for the hub's DatasetDict
    monkeypatch.setattr(msource, '_load_hub', lambda: hub)
    assert load_fashion_mnist() is hub
    t = fashion_mnist_tensors()                            # decoded from the hub's images
    assert t['train'][0].dtype == torch.uint8 and torch.equal(t['train'][0], torch.from_numpy(src[1]['train'][0]))
    assert torch.equal(t['test'][1], torch.from_numpy(src[1]['test'][1]).long())


def test_no_source_error_names_every_way(isolated):
    with pytest.raises(FileNotFoundError) as e: load_fashion_mnist()
    msg = str(e.value)
    assert 'path=' in msg and 'MINIAI_DATA' in msg and 'apt-get install dataset-fashion-mnist' in msg
    assert 'online' in msg and 'hub' in msg and isinstance(e.value.__cause__, ConnectionError)
    assert isolated.calls == 1


@pytest.mark.parametrize('how', ['path', 'env'])
def test_explicit_source_missing_a_file_is_an_error(src, monkeypatch, how, isolated):
    folder = src[0]
    (folder / NAMES['test'][1]).unlink()
    if how == 'env': monkeypatch.setenv('MINIAI_DATA', str(folder))
    with pytest.raises(FileNotFoundError, match=NAMES['test'][1]):
        load_fashion_mnist(folder if how == 'path' else None)
    assert isolated.calls == 0                             # a wrong explicit source never falls back silently


def edit_pixel(folder, x, i, keep_mtime_of=None):
    """Rewrite `folder`'s train images as `x` with pixel `i` inverted: same size; mtime copied or bumped by 1 s."""
    x = x.copy()
    x[i] = 255 - x[i]
    fn, ref = folder / NAMES['train'][0], (keep_mtime_of or folder) / NAMES['train'][0]
    st = ref.stat()
    write_idx(fn, x)
    os.utime(fn, ns=(st.st_atime_ns, st.st_mtime_ns + (0 if keep_mtime_of else 10**9)))
    return x


def test_cache_is_reused_and_keyed_by_source(src, tmp_path, monkeypatch):
    a, arrs = src
    b, cache, i = tmp_path / 'b', tmp_path / 'cache', (3, 5, 7)
    shutil.copytree(a, b)                                  # same names, sizes and mtimes: only the folder differs
    xb = edit_pixel(b, arrs['train'][0], i, keep_mtime_of=a)
    assert (a / NAMES['train'][0]).stat().st_size == (b / NAMES['train'][0]).stat().st_size
    px = lambda folder: np.asarray(load_fashion_mnist(folder, cache)['train'][i[0]]['image'])[i[1:]]
    assert px(a) == arrs['train'][0][i] and px(b) == xb[i] != arrs['train'][0][i]
    assert len([p for p in cache.iterdir() if not p.name.startswith('.')]) == 2
    build = mcache._build
    monkeypatch.setattr(mcache, '_build', lambda folder: pytest.fail('cache not used'))
    assert px(a) == arrs['train'][0][i] and px(b) == xb[i]
    monkeypatch.setattr(mcache, '_build', build)
    xb = edit_pixel(b, xb, i)                              # an edited file (new mtime) is rebuilt, not served stale
    dd, w = load_warned(b, cache)
    assert np.asarray(dd['train'][i[0]]['image'])[i[1:]] == xb[i] == arrs['train'][0][i]
    assert len(w) == 1 and f"{NAMES['train'][0]} changed since the cache was built" in w[0]
    assert len([p for p in cache.iterdir() if not p.name.startswith('.')]) == 2      # replaced, not one more


def test_interrupted_build_leaves_no_cache(src, tmp_path, monkeypatch):
    def killed(self, path, **kw):
        Path(path, 'partial.arrow').write_bytes(b'half')
        raise KeyboardInterrupt
    save = hf.DatasetDict.save_to_disk
    monkeypatch.setattr(hf.DatasetDict, 'save_to_disk', killed)
    with pytest.raises(KeyboardInterrupt): load_fashion_mnist(src[0], tmp_path / 'cache')
    assert list((tmp_path / 'cache').iterdir()) == []
    monkeypatch.setattr(hf.DatasetDict, 'save_to_disk', save)
    assert len(load_fashion_mnist(src[0], tmp_path / 'cache')['test']) == 20


@pytest.mark.parametrize('kind', ['symlink-to-a-folder', 'symlink-inside', 'file'])
def test_a_foreign_cache_entry_is_rebuilt_and_what_it_points_to_is_kept(kind, src, tmp_path):
    """A symlink in the cache must neither make every load fail nor lead a rebuild to delete what it points to."""
    cache = tmp_path / 'cache'
    load_fashion_mnist(src[0], cache)
    entry = next(p for p in cache.iterdir() if not p.name.startswith('.'))
    victim = tmp_path / 'elsewhere'
    victim.mkdir()
    (victim / 'precious.txt').write_text('keep me')
    if kind == 'symlink-to-a-folder':
        shutil.rmtree(entry)
        entry.symlink_to(victim, target_is_directory=True)
    elif kind == 'symlink-inside':
        inner = next(entry.rglob('*.arrow'))
        inner.unlink()
        inner.symlink_to(victim / 'precious.txt')
    else:
        shutil.rmtree(entry)
        entry.write_text('not a cache')
    for _ in range(2):                                     # rebuilt once, then served from the cache again
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            assert len(load_fashion_mnist(src[0], cache)['test']) == 20
    assert [str(x.message) for x in w] == []
    assert entry.is_dir() and not entry.is_symlink() and not any(p.is_symlink() for p in entry.rglob('*'))
    assert (victim / 'precious.txt').read_text() == 'keep me' and os.listdir(victim) == ['precious.txt']


def entry_of(cache):
    """The one cache entry under `cache`."""
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith('.')]
    return entry


def load_warned(folder, cache):
    """`load_fashion_mnist(folder, cache)` and the messages of the warnings it gave."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        dd = load_fashion_mnist(folder, cache)
    return dd, [str(x.message) for x in w]


def flip_pixel(arrow_file, k):
    """Invert byte `k` of the first image stored in `arrow_file` (its pixels follow the PGM header): a valid file
    that holds other data."""
    raw = bytearray(arrow_file.read_bytes())
    at = raw.index(b'P5\n28 28\n255\n') + len(b'P5\n28 28\n255\n') + k
    raw[at] ^= 0xFF
    arrow_file.write_bytes(bytes(raw))


def swap(a, b):
    tmp = a.with_name(a.name + '.swap')
    a.rename(tmp); b.rename(a); tmp.rename(b)


def assert_serves(dd, arrs):
    for split, (x, y) in arrs.items():
        np.testing.assert_array_equal(pixels(dd[split]), x)
        np.testing.assert_array_equal(dd[split]['label'], y)


def rebuilt_once(folder, cache, arrs, *words):
    """The next load rebuilds with one warning line holding `words` and serves `arrs`; the load after it is quiet."""
    dd, w = load_warned(folder, cache)
    assert len(w) == 1 and '\n' not in w[0] and 'rebuilding the Fashion-MNIST cache' in w[0], w
    assert all(word in w[0] for word in words), w
    assert_serves(dd, arrs)
    dd, w = load_warned(folder, cache)
    assert w == []
    assert_serves(dd, arrs)


@pytest.mark.parametrize('split', ['train', 'test'])
def test_a_flipped_byte_in_the_cache_is_caught_and_rebuilt(src, tmp_path, split):
    folder, arrs = src
    cache = tmp_path / 'cache'
    load_fashion_mnist(folder, cache)
    (arrow,) = (entry_of(cache) / split).glob('data-*.arrow')
    flip_pixel(arrow, 100)
    rebuilt_once(folder, cache, arrs, f'{split}/{arrow.name}', 'SHA-256')


def test_swapped_split_folders_in_the_cache_are_caught_and_rebuilt(src, tmp_path):
    folder, arrs = src
    cache = tmp_path / 'cache'
    load_fashion_mnist(folder, cache)
    swap(entry_of(cache) / 'train', entry_of(cache) / 'test')
    rebuilt_once(folder, cache, arrs, 'SHA-256')


def test_swapped_source_files_are_caught_and_rebuilt(tmp_path):
    """Train and test files of equal sizes and equal mtimes swapped by renaming: the cache serves what the files hold
    now (what was the test split is now the training split)."""
    folder = tmp_path / 'src'
    arrs = make_source(folder, n_train=20, n_test=20)
    for n in (n for names in NAMES.values() for n in names): os.utime(folder / n, ns=(10**18, 10**18))
    cache = tmp_path / 'cache'
    assert_serves(load_fashion_mnist(folder, cache), arrs)
    for i in 0, 1: swap(folder / NAMES['train'][i], folder / NAMES['test'][i])
    rebuilt_once(folder, cache, {'train': arrs['test'], 'test': arrs['train']}, 'changed', NAMES['train'][0])


@pytest.mark.parametrize('how', ['cut short', 'a FIFO', 'removed'])
def test_a_cache_without_its_checksums_is_rebuilt(src, tmp_path, how):
    folder, arrs = src
    cache = tmp_path / 'cache'
    load_fashion_mnist(folder, cache)
    manifest = entry_of(cache) / 'miniai-cache.json'
    manifest.unlink()
    if how == 'cut short': manifest.write_text('{"version": 2, "sour')
    if how == 'a FIFO': os.mkfifo(manifest)                                # reading it would block for ever
    rebuilt_once(folder, cache, arrs, 'miniai-cache.json is missing or unreadable')


def test_a_file_missing_from_the_cache_is_caught_and_rebuilt(src, tmp_path):
    folder, arrs = src
    cache = tmp_path / 'cache'
    load_fashion_mnist(folder, cache)
    (entry_of(cache) / 'test' / 'state.json').unlink()
    rebuilt_once(folder, cache, arrs, 'it lacks test/state.json')


def test_a_touched_source_file_is_rehashed_not_rebuilt(src, tmp_path, monkeypatch):
    """New times, same bytes: the cache stays (its SHA-256 still matches), without a warning."""
    folder, arrs = src
    cache = tmp_path / 'cache'
    load_fashion_mnist(folder, cache)
    os.utime(folder / NAMES['train'][0], ns=(10**18, 10**18))
    monkeypatch.setattr(mcache, '_build', lambda folder: pytest.fail('rebuilt though the files are the same'))
    dd, w = load_warned(folder, cache)
    assert w == []
    assert_serves(dd, arrs)


def test_files_that_dataset_map_adds_to_the_cache_are_not_a_mismatch(src, tmp_path, monkeypatch):
    folder, arrs = src
    cache = tmp_path / 'cache'
    load_fashion_mnist(folder, cache)['train'].map(lambda b: {'label': b['label']}, batched=True)
    assert list((entry_of(cache) / 'train').glob('cache-*.arrow'))          # what map wrote beside the data
    monkeypatch.setattr(mcache, '_build', lambda folder: pytest.fail('rebuilt for a file map wrote'))
    assert load_warned(folder, cache)[1] == []


def unsuitable(folder, case):
    """IDX files in `folder` that are well formed but unsuitable as `case` says; returns the file to be named."""
    n = {'train': 0 if case == 'no training images' else 12, 'test': 0 if case == 'no test images' else 4}
    size = 32 if case == '32x32 images' else 28
    for split in NAMES:
        write_idx(folder / NAMES[split][0], np.zeros((n[split], size, size)))
        write_idx(folder / NAMES[split][1], np.zeros(n[split]))
    return folder / NAMES['test' if case == 'no test images' else 'train'][0]


UNSUITABLE = {'no training images': 'holds no images, but the training set needs at least one',
              'no test images': 'holds no images, but the validation set (the test images) needs at least one',
              '32x32 images': 'holds 32x32 images, but Fashion-MNIST images are 28x28'}


@pytest.mark.parametrize('case', UNSUITABLE)
def test_unsuitable_files_are_refused_with_what_to_do(case, tmp_path):
    bad = unsuitable(tmp_path, case)
    calls = [lambda: load_fashion_mnist(tmp_path, tmp_path / 'cache'), lambda: fashion_mnist_tensors(tmp_path),
             lambda: get_dls(4, path=tmp_path), lambda: get_dls(4, path=tmp_path, in_memory=False)]
    for call in calls:
        with pytest.raises(DataError) as e: call()
        msg = str(e.value)
        assert msg.startswith(str(bad)) and UNSUITABLE[case] in msg and '\n' not in msg
        assert ('resize' if case == '32x32 images' else 'restore the file') in msg


@pytest.mark.parametrize('case', UNSUITABLE)
def test_miniai_train_refuses_unsuitable_files_in_one_line(case, tmp_path, capsys):
    from miniai.cli import main
    (tmp_path / 'data').mkdir()
    unsuitable(tmp_path / 'data', case)
    assert main(['train', '--data', str(tmp_path / 'data'), '--out', str(tmp_path / 'r'), '--device', 'cpu']) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('miniai: error: ') and UNSUITABLE[case] in err, err
    assert not (tmp_path / 'r').exists()


def corrupt(folder, case):
    """Damage the IDX files in `folder` as `case` says; return the file that the error must name."""
    fx, fy = folder / NAMES['train'][0], folder / NAMES['train'][1]
    x, y = np.zeros((50, 28, 28), np.uint8), np.zeros(50, np.uint8)
    if case == 'not gzip': write_idx(fx, x, raw=b'certainly not gzip data')
    elif case == 'truncated gzip': fx.write_bytes(fx.read_bytes()[:200])
    elif case == 'wrong magic': write_idx(fx, x, magic=2049)
    elif case == 'extra data': write_idx(fx, x, payload=x.tobytes() + b'\0')
    elif case == 'count lies': write_idx(fx, x[:49], count=50)
    elif case == 'label magic': write_idx(fy, y, magic=2051)
    elif case == 'images vs labels': write_idx(fy, y[:40]); return fx
    elif case == 'label > 9': y[17] = 10; write_idx(fy, y); return fy
    return fx if 'label' not in case else fy


SHAPE_LIE = r'header says shape \(50, 28, 28\)'


@pytest.mark.parametrize('case, why', [('not gzip', 'gzip'), ('truncated gzip', 'gzip'), ('wrong magic', 'magic'),
                                       ('extra data', SHAPE_LIE), ('count lies', SHAPE_LIE),
                                       ('label magic', 'magic'), ('images vs labels', '40 labels'),
                                       ('label > 9', 'label 10 at index 17')])
def test_corrupt_files_raise_naming_the_file(src, tmp_path, case, why):
    bad = corrupt(src[0], case)
    with pytest.raises(ValueError, match=why) as e: load_fashion_mnist(src[0], tmp_path / 'cache')
    assert str(bad) in str(e.value)
    with pytest.raises(ValueError): fashion_mnist_tensors(src[0])
    assert not (tmp_path / 'cache').exists() or list((tmp_path / 'cache').iterdir()) == []


def test_read_idx_checks_generic_files(tmp_path):
    write_idx(tmp_path / 'x.gz', np.arange(6).reshape(2, 3), magic=0x0802)
    np.testing.assert_array_equal(read_idx(tmp_path / 'x.gz'), np.arange(6).reshape(2, 3))
    write_idx(tmp_path / 'f.gz', np.arange(6), magic=0x0D01)          # float IDX: not ours to misread
    with pytest.raises(ValueError, match='not a uint8 IDX'): read_idx(tmp_path / 'f.gz')


def test_fashion_mnist_tensors_match_the_files(src):
    t = fashion_mnist_tensors(src[0])
    for split, (x, y) in src[1].items():
        tx, ty = t[split]
        assert tx.dtype == torch.uint8 and tx.shape == (len(x), 28, 28) and ty.dtype == torch.int64
        assert torch.equal(tx, torch.from_numpy(x)) and torch.equal(ty, torch.from_numpy(y).long())


def test_inplace_returns_the_mutated_batch():
    @inplace
    def f(b): b['a'] = b['a'] * 2
    b = {'a': 3}
    assert f(b) is b and b['a'] == 6


def test_collate_dict_follows_feature_order():
    rows = [{'y': 1, 'x': torch.tensor([1., 2.])}, {'y': 0, 'x': torch.tensor([3., 4.])}]
    xy = hf.Dataset.from_dict({'x': [[1., 2.], [3., 4.]], 'y': [1, 0]})
    x, y = collate_dict(xy)(rows)
    assert torch.equal(x, torch.tensor([[1., 2.], [3., 4.]])) and torch.equal(y, torch.tensor([1, 0]))
    yx = hf.Dataset.from_dict({'y': [1, 0], 'x': [[1., 2.], [3., 4.]]})
    assert torch.equal(collate_dict(yx)(rows)[0], torch.tensor([1, 0]))


@inplace
def transformi(b): b['image'] = [(TF.to_tensor(o) - 0.28) / 0.35 for o in b['image']]   # the tutorials' transform


def batches(dl): return [tuple(t.clone() for t in b) for b in dl]


def test_from_dd_in_memory_matches_plain_loader(src, tmp_path):
    tds = load_fashion_mnist(src[0], tmp_path / 'cache').with_transform(transformi)
    plain, mem = DataLoaders.from_dd(tds, 16), DataLoaders.from_dd(tds, 16, in_memory=True)
    pv, mv = batches(plain.valid), batches(mem.valid)
    assert [len(b[0]) for b in mv] == [16, 4] and len(mem.valid) == 2 == len(plain.valid)
    for (px, py), (mx, my) in zip(pv, mv, strict=True):
        assert mx.dtype == px.dtype == torch.float32 and my.dtype == py.dtype == torch.int64
        assert torch.equal(px, mx) and torch.equal(py, my)
    for dls in plain, mem:
        tb = batches(dls.train)
        assert [len(b[0]) for b in tb] == [16, 16, 16, 2] and len(dls.train) == 4
        assert sorted(torch.cat([b[1] for b in tb]).tolist()) == sorted(src[1]['train'][1].tolist())
        torch.manual_seed(3); one = batches(dls.train)
        torch.manual_seed(3); two = batches(dls.train)
        assert all(torch.equal(a, b) for p, q in zip(one, two) for a, b in zip(p, q))
        assert not torch.equal(one[0][1], torch.from_numpy(src[1]['train'][1][:16]).long())   # shuffled
    torch.manual_seed(7); pt = batches(plain.train)        # a seeded run visits the same batches either way
    torch.manual_seed(7); mt = batches(mem.train)
    assert all(torch.equal(a, b) for p, m in zip(pt, mt, strict=True) for a, b in zip(p, m, strict=True))


def test_from_dd_options(src, tmp_path):
    tds = load_fashion_mnist(src[0], tmp_path / 'cache').with_transform(transformi)
    for im in False, True:
        dls = DataLoaders.from_dd(tds, 16, in_memory=im, drop_last=True, num_workers=2)
        assert [len(b[0]) for b in dls.train] == [16] * 3 and len(dls.train) == 3
        assert [len(b[0]) for b in dls.valid] == [16, 4]                 # validation never drops data
        b = next(iter(DataLoaders.from_dd(tds, 4, as_tuple=False, in_memory=im).valid))
        assert set(b) == {'image', 'label'} and b['image'].shape == (4, 1, 28, 28)
    plain = DataLoaders.from_dd(tds, 16, num_workers=2)
    assert plain.train.num_workers == 2 and plain.train.worker_init_fn is mloaders._seed_worker
    assert plain.train.pin_memory == torch.cuda.is_available()
    with pytest.raises(TypeError, match='shufle'): DataLoaders.from_dd(tds, 16, in_memory=True, shufle=False)


def test_in_memory_loader_shards_cover_every_index_once():
    xs = (torch.arange(11), torch.arange(11) * 10)
    for shuffle in False, True:
        seen = []
        for rank in 0, 1:
            dl = InMemoryLoader(xs, 3, shuffle=shuffle, num_replicas=2, rank=rank, seed=5)
            dl.set_epoch(1)
            got = [b for b in dl]
            assert len(got) == len(dl) == 2 and all(torch.equal(b[1], b[0] * 10) for b in got)
            seen += torch.cat([b[0] for b in got]).tolist()
        assert sorted(seen) == list(range(11))
    dl = InMemoryLoader(xs, 11, shuffle=True, num_replicas=2, rank=0)
    orders = []
    for epoch in 0, 0, 1:
        dl.set_epoch(epoch)
        orders.append(next(iter(dl))[0].tolist())
    assert orders[0] == orders[1] != orders[2]
    with pytest.raises(ValueError, match='rank'): InMemoryLoader(xs, 3, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match='equal-length'): InMemoryLoader((torch.arange(3), torch.arange(4)), 2)


def test_in_memory_loader_batches():
    x = torch.arange(10)
    dl = InMemoryLoader((x,), 4)
    assert [b[0].tolist() for b in dl] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and len(dl) == 3
    assert len(InMemoryLoader((x,), 4, drop_last=True)) == 2 == len(list(InMemoryLoader((x,), 4, drop_last=True)))
    dl = InMemoryLoader((x,), 4, shuffle=True, batch_tfm=lambda b: (b[0] * 2,))
    torch.manual_seed(0); a = torch.cat([b[0] for b in dl])
    torch.manual_seed(0); b = torch.cat([b[0] for b in dl])
    torch.manual_seed(1); c = torch.cat([b[0] for b in dl])
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x * 2)
    assert sorted(a.tolist()) == list(range(0, 20, 2))
    assert len(dl.dataset) == 10 and dl.batch_size == 4


def test_get_dls_in_memory_equals_the_seeds_way(src):
    mem, plain = get_dls(16, path=src[0]), get_dls(16, path=src[0], in_memory=False)
    assert isinstance(mem.train, InMemoryLoader) and isinstance(plain.train, torch.utils.data.DataLoader)
    for (mx, my), (px, py) in zip(mem.valid, plain.valid, strict=True):
        assert mx.shape[1:] == (1, 28, 28) and mx.dtype == torch.float32 and my.dtype == torch.int64
        assert torch.equal(mx, px) and torch.equal(my, py)
    x, y = src[1]['test']
    want = (torch.from_numpy(x[:16]).double() / 255 - 0.28) / 0.35
    assert torch.allclose(next(iter(mem.valid))[0][:, 0].double(), want, atol=1e-6)
    tut = DataLoaders.from_dd(load_fashion_mnist(src[0]).with_transform(transformi), 16)
    assert torch.equal(next(iter(tut.valid))[0], next(iter(mem.valid))[0])
    torch.manual_seed(1); a = next(iter(mem.train))
    torch.manual_seed(1); b = next(iter(plain.train))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(get_dls(16, path=src[0], drop_last=True).train) == 3


def test_show_images_headless():
    import matplotlib.pyplot as plt
    plt.close('all')
    ims = [torch.rand(1, 28, 28), torch.rand(3, 8, 8), np.zeros((5, 6), np.uint8), torch.rand(28, 28),
           torch.rand(2, 2)]
    fig = show_images(ims, titles=['a', 'b'])
    axs = [ax for ax in fig.axes if ax.images]
    assert len(axs) == 5 and len(fig.axes) >= 5 and plt.get_fignums() == [fig.number]  # one figure, no strays
    assert [ax.images[0].get_array().shape for ax in axs[:3]] == [(28, 28), (8, 8, 3), (5, 6)]
    assert [ax.get_title() for ax in axs[:3]] == ['a', 'b', '']
    plt.close('all')


def test_import_is_light_and_all_resolves():
    code = ("import sys, miniai.datasets as m; assert 'matplotlib.pyplot' not in sys.modules; "
            "assert all(hasattr(m, n) and not n.startswith('_') for n in m.__all__)")
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, '-c', code], check=True, env=env)


@pytest.mark.slow
@pytest.mark.skipif(REAL is None, reason='MINIAI_DATA unset and no /usr/share/datasets/fashion-mnist '
                                         '(apt-get install dataset-fashion-mnist)')
def test_real_fashion_mnist(tmp_path):
    dd = load_fashion_mnist(REAL, tmp_path / 'cache')
    assert dd.num_rows == {'train': 60000, 'test': 10000}
    assert dd['train'].features['label'].names == list(FASHION_CLASSES)
    dls = get_dls(path=REAL)
    xb, yb = next(iter(dls.train))
    assert xb.shape == (1024, 1, 28, 28) and yb.shape == (1024,) and yb.dtype == torch.int64
    assert abs(xb.mean().item()) < 0.1 and abs(xb.std().item() - 1) < 0.1
    assert len(dls.train) == 59 and len(dls.valid) == 10
    tut = DataLoaders.from_dd(dd.with_transform(transformi), 1024)      # the tutorials' way, same batches
    assert all(torch.equal(a, b) for a, b in zip(next(iter(tut.valid)), next(iter(dls.valid)), strict=True))
    torch.manual_seed(42); a = next(iter(tut.train))
    torch.manual_seed(42); b = next(iter(dls.train))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_subplots_shapes_axes_as_matplotlib_does():
    # a row of axes indexes as a row (`axs[0]` is an Axes), a grid as a grid, one axes as an array of one
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    fig, axs = subplots(1, 3, imsize=1)
    assert axs.shape == (3,) and isinstance(axs[0], Axes) and tuple(fig.get_size_inches()) == (3, 1)
    assert subplots(2, 2)[1].shape == (2, 2) and subplots(2, 3, squeeze=False)[1].shape == (2, 3)
    assert subplots()[1].shape == (1,) and subplots(1, 1, squeeze=False)[1].shape == (1, 1)
    fig, axs = get_grid(3, ncols=3)
    assert axs.shape == (3,) and isinstance(axs[2], Axes)
    plt.close('all')
