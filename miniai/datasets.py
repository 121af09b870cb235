"""Fashion-MNIST offline, `DataLoaders`, `collate_dict`, `inplace`, the in-memory loader and `show_images`.

Explained in nbs/01_datasets.ipynb. `load_fashion_mnist` returns what `datasets.load_dataset('fashion_mnist')` returns
(splits, features, label names), built from the four IDX files and cached as Arrow: course code runs without the hub.
`get_dls` skips PIL and Arrow entirely: uint8 tensors sliced by index and normalised per batch (airbench style).
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import random
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from functools import partial
from itertools import zip_longest
from operator import itemgetter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate

from .errors import DataError

__all__ = ['FASHION_CLASSES', 'read_idx', 'load_fashion_mnist', 'fashion_mnist_tensors', 'inplace', 'collate_dict',
           'InMemoryLoader', 'DataLoaders', 'get_dls', 'show_image', 'subplots', 'get_grid', 'show_images']

# The hub's ClassLabel names for fashion_mnist, spaces included.
FASHION_CLASSES = ('T - shirt / top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                   'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
_DEBIAN_DIR = Path('/usr/share/datasets/fashion-mnist')       # `apt-get install dataset-fashion-mnist`
_IDX = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
        'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
_IMAGES, _LABELS = 2051, 2049                                 # IDX magic numbers: uint8, 3 dims / 1 dim
_CACHE_VERSION = 1                                            # bump when the Arrow layout changes
XMEAN, XSTD = 0.28, 0.35                                      # the course's Fashion-MNIST statistics
_NO_SOURCE = ("Fashion-MNIST not found. Either pass `path=` (or set MINIAI_DATA) to a folder holding {files}; "
              "or `apt-get install dataset-fashion-mnist` (provides {debian}); "
              "or be online so `datasets.load_dataset('fashion_mnist')` can fetch it from the Hugging Face hub.")


# ---------------------------------------------------------------- IDX files -> arrays
def read_idx(fn: str | os.PathLike, magic: int | None = None) -> np.ndarray:
    """Read the uint8 IDX file `fn` (gzipped when it ends in .gz), checking its `magic` number (2051, 2049) if given.

    Raises:
        ValueError: naming `fn`, for a corrupt or truncated gzip stream, a wrong magic number, or a data size that
            disagrees with the header (so a damaged file never turns into a silently short dataset).
    """
    fn = Path(fn)
    try: data = gzip.decompress(fn.read_bytes()) if fn.suffix == '.gz' else fn.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{fn}: corrupt or truncated gzip file ({e})") from e
    got = int.from_bytes(data[:4], 'big') if len(data) >= 4 else None
    if magic is not None and got != magic:
        raise DataError(f"{fn}: magic number {got}, expected {magic} ({'images' if magic == _IMAGES else 'labels'})")
    if got is None or data[:3] != b'\0\0\x08':
        raise DataError(f"{fn}: not a uint8 IDX file (magic number {got})")
    start = 4 + 4 * data[3]
    if len(data) < start: raise DataError(f"{fn}: header truncated ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, '>u4', data[3], 4))
    if len(data) - start != math.prod(shape):
        raise DataError(f"{fn}: header says shape {shape} ({math.prod(shape)} bytes) "
                         f"but the file holds {len(data) - start} bytes of data")
    return np.frombuffer(data, np.uint8, offset=start).reshape(shape)


def _read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images `(N,H,W)` and labels `(N,)` of `split` from the IDX files in `folder`, cross-checked."""
    fx, fy = (folder / n for n in _IDX[split])
    x, y = read_idx(fx, _IMAGES), read_idx(fy, _LABELS)
    if len(x) != len(y): raise DataError(f"{fx} holds {len(x)} images but {fy} holds {len(y)} labels")
    if len(y) and y.max() >= len(FASHION_CLASSES):
        i = int(y.argmax())
        raise DataError(f"{fy}: label {y[i]} at index {i} is not a class index 0..{len(FASHION_CLASSES) - 1}")
    return x, y


def _source(path=None) -> Path | None:
    """The IDX folder to read: `path`, else $MINIAI_DATA, else the Debian package's; None means: try the hub."""
    for p, what in ((path, 'path'), (os.environ.get('MINIAI_DATA'), 'MINIAI_DATA')):
        if not p: continue
        p = Path(p).expanduser().resolve()
        missing = [n for names in _IDX.values() for n in names if not (p / n).is_file()]
        if missing: raise FileNotFoundError(f"{what}={str(p)!r} lacks the Fashion-MNIST file(s) {', '.join(missing)}")
        return p
    return _DEBIAN_DIR if all((_DEBIAN_DIR / n).is_file() for ns in _IDX.values() for n in ns) else None


def _load_hub():
    from datasets import load_dataset
    return load_dataset('fashion_mnist')


def _from_hub():
    """The hub's DatasetDict, or the one error that names every way to get the data."""
    try: return _load_hub()
    except Exception as e:
        files = ', '.join(n for ns in _IDX.values() for n in ns)
        raise FileNotFoundError(_NO_SOURCE.format(files=files, debian=_DEBIAN_DIR)) from e


# ---------------------------------------------------------------- arrays -> Arrow, cached
def _arrow_table(x: np.ndarray, y: np.ndarray):
    """A pyarrow table in the hub's layout: `image` as {bytes, path} structs, `label` as int64."""
    import pyarrow as pa
    n, h, w = x.shape
    # Each image is stored as a binary PGM: PIL opens it as mode 'L' like the hub's PNGs, but it needs no encoder, so
    # all 70k rows are built by one numpy copy (0.03 s vs 4 s for PIL PNGs) and decode ~1.5x faster than PNG.
    head = np.frombuffer(f'P5\n{w} {h}\n255\n'.encode(), np.uint8)
    rows = np.empty((n, len(head) + h * w), np.uint8)
    rows[:, :len(head)], rows[:, len(head):] = head, x.reshape(n, -1)
    offsets = np.arange(n + 1, dtype=np.int32) * rows.shape[1]
    data = pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(rows)])
    image = pa.StructArray.from_arrays([data, pa.nulls(n, pa.string())], names=['bytes', 'path'])
    return pa.table({'image': image, 'label': pa.array(y.astype(np.int64))})


def _build(folder: Path):
    """The DatasetDict of the IDX files in `folder`, in memory."""
    import datasets as hf
    info = hf.DatasetInfo(features=hf.Features({'image': hf.Image(), 'label': hf.ClassLabel(names=FASHION_CLASSES)}))
    return hf.DatasetDict({s: hf.Dataset(_arrow_table(*_read_split(folder, s)), info=info.copy(),
                                         split=hf.NamedSplit(s)) for s in _IDX})


def _cache_key(folder: Path) -> str:
    """Hash of `folder` and its files' sizes and mtimes: another folder, or an edited file, gets its own cache."""
    h = hashlib.sha256(f'{_CACHE_VERSION}|{folder}'.encode())
    for n in (n for ns in _IDX.values() for n in ns):
        st = (folder / n).stat()
        h.update(f'|{n}:{st.st_size}:{st.st_mtime_ns}'.encode())
    return h.hexdigest()[:16]


@contextmanager
def _quiet():
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    was_off = are_progress_bars_disabled()
    disable_progress_bars()
    try: yield
    finally:
        if not was_off: enable_progress_bars()


def _save_atomic(dd, dest: Path):
    """Save `dd` to a temp dir beside `dest`, then rename it: a killed build never leaves a half cache at `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{dest.name}-', dir=dest.parent))
    try:
        with _quiet(): dd.save_to_disk(str(tmp))
        try: tmp.rename(dest)
        except OSError:
            if not dest.is_dir(): raise          # otherwise another process finished first: keep its copy
    finally: shutil.rmtree(tmp, ignore_errors=True)


def _foreign(cache: Path) -> bool:
    """Whether the cache entry exists but is not a plain folder of plain files, as `_save_atomic` writes them."""
    if cache.is_symlink(): return True
    if not cache.exists(): return False
    return not cache.is_dir() or any(p.is_symlink() for p in cache.rglob('*'))


def _set_aside(cache: Path):
    """Remove a foreign cache entry without losing anything outside the cache: links are unlinked (never followed),
    a file is renamed aside (`.NAME.foreign-PID`)."""
    if cache.is_symlink(): cache.unlink()
    elif cache.is_dir(): shutil.rmtree(cache)               # unlinks the links inside, never what they point to
    else: cache.rename(cache.with_name(f'.{cache.name}.foreign-{os.getpid()}'))


def load_fashion_mnist(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None):
    """Fashion-MNIST as the hub's `DatasetDict` ('train' 60k, 'test' 10k; `image`, `label`), from IDX files if any.

    Sources, first found wins: `path`, $MINIAI_DATA, /usr/share/datasets/fashion-mnist, the hub. IDX files are turned
    into Arrow once and cached under `cache_dir` (default $MINIAI_CACHE or ~/.cache/miniai), keyed by the source.

    Raises:
        FileNotFoundError: no source (the message lists all three ways), or `path`/$MINIAI_DATA lacks a file.
        ValueError: an IDX file is corrupt (see `read_idx`), labels and images disagree, or a label exceeds 9.
    """
    import datasets as hf
    src = _source(path)
    if src is None: return _from_hub()
    root = Path(cache_dir or os.environ.get('MINIAI_CACHE') or '~/.cache/miniai').expanduser()
    cache = root / f'fashion_mnist-{_cache_key(src)}'
    if _foreign(cache):
        warnings.warn(f"rebuilding the cache entry {cache}: it is a symlink, a file, or a folder holding symlinks, "
                      "which miniai never writes; the entry is replaced (what a symlink points to is left alone)")
        _set_aside(cache)
    if cache.is_dir():
        try: return hf.load_from_disk(str(cache))
        except Exception as e:
            warnings.warn(f"rebuilding the unreadable cache {cache}: {e}")
            shutil.rmtree(cache, ignore_errors=True)
    dd = _build(src)
    try: _save_atomic(dd, cache)
    except OSError as e:
        warnings.warn(f"could not cache Fashion-MNIST in {root} ({e}); it will be rebuilt next time")
        return dd
    return hf.load_from_disk(str(cache))     # memory-mapped, so the first and later loads behave alike


def fashion_mnist_tensors(path: str | os.PathLike | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{'train': (x, y), 'test': (x, y)}` with x uint8 `(N,28,28)` and y int64, straight from the IDX files, no PIL.

    Same sources as `load_fashion_mnist`; only when the hub is the source are images decoded (about 2 s).
    """
    src = _source(path)
    if src is not None:
        return {s: (torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64)))
                for s in _IDX for x, y in [_read_split(src, s)]}
    dd = _from_hub()
    return {s: (torch.from_numpy(np.stack([np.asarray(im, np.uint8) for im in dd[s]['image']])),
                torch.tensor(list(dd[s]['label']), dtype=torch.int64)) for s in _IDX}


# ---------------------------------------------------------------- batching
def inplace(f: Callable) -> Callable:
    """Wrap `f`, which mutates a batch `b`, so that it returns `b` (what `with_transform` expects)."""
    def _f(b):
        f(b)
        return b
    return _f


def collate_dict(ds) -> Callable:
    """A collate function that `default_collate`s dict rows of `ds`, returning the columns in `ds.features` order."""
    get = itemgetter(*ds.features)
    def _f(b): return get(default_collate(b))
    return _f


class InMemoryLoader:
    """Batches of `xs` (equal-length tensors) by index slicing; `shuffle` draws a `torch.randperm` per epoch.

    The permutation comes from torch's global RNG, drawn as `DataLoader(shuffle=True)` draws it, so `set_seed` repeats
    runs and gives the same batches as a plain loader over the same rows. With `num_replicas > 1` it comes from
    `seed + epoch` instead (the same on every rank; call `set_epoch`) and rank `rank` takes every `num_replicas`-th
    index, so the ranks together see each item exactly once (their lengths may differ by one item).
    `batch_tfm`, if given, maps each batch tuple (e.g. normalises uint8 images on the device).
    """
    def __init__(self, xs: Sequence[torch.Tensor], batch_size: int, shuffle: bool = False, drop_last: bool = False,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0, batch_tfm: Callable | None = None):
        xs = tuple(xs)
        if not xs or len({len(x) for x in xs}) != 1:
            raise ValueError(f"xs must be a non-empty tuple of equal-length tensors, got {[len(x) for x in xs]}")
        if batch_size < 1: raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas: raise ValueError(f"need 0 <= rank < num_replicas, got {rank}, {num_replicas}")
        self.xs, self.batch_size, self.shuffle, self.drop_last = xs, batch_size, shuffle, drop_last
        self.num_replicas, self.rank, self.seed, self.batch_tfm, self.epoch = num_replicas, rank, seed, batch_tfm, 0
        self.dataset = TensorDataset(*xs)

    def set_epoch(self, epoch: int):
        """Select the permutation of epoch `epoch` when sharded (as `DistributedSampler.set_epoch`)."""
        self.epoch = epoch

    def __len__(self):
        n = len(range(self.rank, len(self.dataset), self.num_replicas))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _indices(self) -> torch.Tensor | None:
        n = len(self.dataset)
        if self.shuffle and self.num_replicas > 1:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        elif self.shuffle: idx = torch.randperm(n, generator=_dataloader_generator())
        elif self.num_replicas > 1: idx = torch.arange(n)
        else: return None                                   # plain slices: views, no gather
        return idx[self.rank::self.num_replicas].to(self.xs[0].device)

    def __iter__(self):
        idx, bs = self._indices(), self.batch_size
        for i in range(len(self)):
            sel = slice(i * bs, (i + 1) * bs) if idx is None else idx[i * bs:(i + 1) * bs]
            b = tuple(x[sel] for x in self.xs)
            yield self.batch_tfm(b) if self.batch_tfm else b


def _dataloader_generator() -> torch.Generator:
    """The generator a shuffling `DataLoader` draws from the global RNG: its iterator takes a base seed, then
    `RandomSampler` a seed for its own generator. Drawing the same way gives a seeded run the same batch order
    in memory as through a plain `DataLoader` (tested, so a change in torch shows up)."""
    torch.empty((), dtype=torch.int64).random_()
    return torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))


def _seed_worker(worker_id: int):
    seed = torch.initial_seed() % 2**32   # torch gives each worker base_seed + id, base_seed drawn from the parent RNG
    np.random.seed(seed)
    random.seed(seed)


def _as_tensor(col) -> torch.Tensor:
    return col if isinstance(col, torch.Tensor) else default_collate(list(col))


def _materialise(ds, device=None, chunk: int = 4096) -> tuple[torch.Tensor, ...]:
    """Apply `ds`'s transform once, `chunk` rows at a time, and collate each column as a `DataLoader` would."""
    cols = list(ds.features)
    parts = {c: [] for c in cols}
    for i in range(0, len(ds), chunk):
        b = ds[i:i + chunk]
        for c in cols: parts[c].append(_as_tensor(b[c]))
    return tuple(torch.cat(parts[c]).to(device) if device is not None else torch.cat(parts[c]) for c in cols)


# DataLoader options that mean nothing for an in-memory loader (the course passes num_workers=4).
_WORKER_KWARGS = {'num_workers', 'pin_memory', 'persistent_workers', 'prefetch_factor', 'worker_init_fn',
                  'timeout', 'multiprocessing_context'}


def _in_memory_kwargs(kwargs: dict) -> bool:
    """Return `drop_last`; reject anything else that is not a (meaningless here) worker option."""
    bad = set(kwargs) - _WORKER_KWARGS - {'drop_last'}
    if bad: raise TypeError(f"in-memory loaders accept drop_last (worker options are ignored), got {sorted(bad)}")
    return kwargs.get('drop_last', False)


class DataLoaders:
    """Holds loaders `dls`; `train` and `valid` are the first two (course style)."""
    def __init__(self, *dls):
        if len(dls) < 2: raise ValueError(f"DataLoaders needs at least a train and a valid loader, got {len(dls)}")
        self.dls = dls
        self.train, self.valid = dls[:2]

    @classmethod
    def from_dd(cls, dd, batch_size: int, as_tuple: bool = True, in_memory: bool = False, device=None, **kwargs):
        """Loaders over each split of `dd`: the first shuffled, the rest in order; `drop_last` applies to the first.

        Plain path: torch `DataLoader`s with `collate_dict` (dicts if not `as_tuple`); `kwargs` go to `DataLoader`
        (`pin_memory` defaults to CUDA availability; `device` is unused, `DeviceCB` moves batches). `in_memory=True`
        applies each split's (deterministic!) transform once, keeps the columns as tensors (on `device`) and yields
        the same batches from `InMemoryLoader`s.
        """
        dss = list(dd.values())
        if in_memory:
            drop_last = _in_memory_kwargs(kwargs)
            tfm = None if as_tuple else partial(_to_dict, list(dss[0].features))
            return cls(*(InMemoryLoader(_materialise(ds, device), batch_size, shuffle=i == 0,
                                        drop_last=drop_last and i == 0, batch_tfm=tfm) for i, ds in enumerate(dss)))
        drop_last = kwargs.pop('drop_last', False)
        kwargs.setdefault('pin_memory', torch.cuda.is_available())
        kwargs.setdefault('worker_init_fn', _seed_worker)
        return cls(*(DataLoader(ds, batch_size, shuffle=i == 0, drop_last=drop_last and i == 0,
                                collate_fn=collate_dict(ds) if as_tuple else default_collate, **kwargs)
                     for i, ds in enumerate(dss)))


def _to_dict(keys, b): return dict(zip(keys, b))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 `(N,H,W)` -> float32 `(N,1,H,W)` `(x/255 - XMEAN)/XSTD`: `TF.to_tensor`'s ops, then the course's.

    `miniai.inference.fashion_preprocess()` describes the same steps as data, for new images and exported models.
    """
    return x.float().div_(255).sub_(XMEAN).div_(XSTD).unsqueeze(1)


def _norm_batch(b): return (_normalise(b[0]),) + b[1:]


@inplace
def _hf_tfm(b): b['image'] = _normalise(torch.from_numpy(np.stack([np.asarray(o, np.uint8) for o in b['image']])))


def get_dls(bs: int = 1024, path: str | os.PathLike | None = None, in_memory: bool = True, device=None,
            limit: int | None = None, **kwargs) -> DataLoaders:
    """Normalised Fashion-MNIST loaders: `(bs,1,28,28)` float32 and int64 labels; train shuffled, valid = 'test'.

    `in_memory` keeps uint8 tensors (on `device`) and normalises per batch; `in_memory=False` is the course's way
    (`load_fashion_mnist(path).with_transform(...)` + `DataLoaders.from_dd(..., **kwargs)`), with identical batches.
    `limit` keeps the first `limit` training and `limit // 6` test images (for quick runs; 60k:10k as in the data).
    `dls.preprocess` describes the normalisation and class names, for `learn.classify` and `learn.export`.
    """
    if limit is not None and limit < 1: raise ValueError(f"limit must be >= 1, got {limit}")
    n = {'train': limit, 'test': None if limit is None else max(1, limit // 6)}
    if not in_memory:
        dd = load_fashion_mnist(path)
        if limit is not None: dd = type(dd)({s: ds.select(range(min(n[s], len(ds)))) for s, ds in dd.items()})
        return _with_preprocess(DataLoaders.from_dd(dd.with_transform(_hf_tfm), bs, **kwargs))
    drop_last, t = _in_memory_kwargs(kwargs), fashion_mnist_tensors(path)
    t = {s: tuple(v[:n[s]] for v in xy) for s, xy in t.items()}
    if device is not None: t = {s: tuple(v.to(device) for v in xy) for s, xy in t.items()}
    return _with_preprocess(DataLoaders(*(InMemoryLoader(t[s], bs, shuffle=s == 'train',
                                                         drop_last=drop_last and s == 'train', batch_tfm=_norm_batch)
                                          for s in ('train', 'test'))))


def _with_preprocess(dls: DataLoaders) -> DataLoaders:
    """`dls` with `preprocess`: the normalisation above and the class names as plain data, which `learn.classify`
    applies to new images and `learn.export` saves (see `miniai.inference.Preprocess`)."""
    from .inference import fashion_preprocess
    dls.preprocess = fashion_preprocess()
    return dls


# ---------------------------------------------------------------- showing images (matplotlib imported lazily)
def show_image(im, ax=None, figsize: tuple | None = None, title: str | None = None, noframe: bool = True, **kwargs):
    """Show PIL image, array or tensor `im` on `ax` (CHW tensors become HWC, one channel is squeezed); returns `ax`."""
    import matplotlib.pyplot as plt
    if isinstance(im, torch.Tensor):
        im = im.detach().cpu()
        if im.ndim == 3 and im.shape[0] < 5: im = im.permute(1, 2, 0)
        im = (im.float() if im.is_floating_point() else im).numpy()    # numpy has no bfloat16
    else: im = np.asarray(im)
    if im.ndim == 3 and im.shape[-1] == 1: im = im[..., 0]
    if ax is None: _, ax = plt.subplots(figsize=figsize)
    ax.imshow(im, **kwargs)
    if title is not None: ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if noframe: ax.axis('off')
    return ax


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple | None = None, imsize: float = 3,
             suptitle: str | None = None, **kwargs):
    """`plt.subplots` sized `imsize` inches per image; returns `(fig, axs)` with `axs` always an array: shaped as
    `plt.subplots` shapes it (one axis per row or column of 1 dropped, unless `squeeze=False`), and a single axes
    in an array of one. `kwargs` go to `plt.subplots`."""
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(nrows, ncols, figsize=figsize or (ncols * imsize, nrows * imsize), **kwargs)
    if suptitle is not None: fig.suptitle(suptitle)
    return fig, axs if isinstance(axs, np.ndarray) else np.array([axs])


def get_grid(n: int, nrows: int | None = None, ncols: int | None = None, title: str | None = None,
             weight: str = 'bold', size: int = 14, **kwargs):
    """A grid of at least `n` axes (about square unless `nrows`/`ncols` given), spare axes hidden; `(fig, axs)`."""
    if nrows is None and ncols is None: nrows = max(1, int(math.sqrt(n)))
    if ncols is None: ncols = max(1, math.ceil(n / nrows))
    if nrows is None: nrows = max(1, math.ceil(n / ncols))
    fig, axs = subplots(nrows, ncols, **kwargs)
    for ax in axs.flat[n:]: ax.set_axis_off()
    if title is not None: fig.suptitle(title, weight=weight, size=size)
    return fig, axs


def show_images(ims: Sequence, nrows: int | None = None, ncols: int | None = None, titles: Sequence | None = None,
                **kwargs):
    """Show `ims` in a grid (`kwargs` go to `get_grid`/`subplots`), with optional `titles`; returns the figure."""
    fig, axs = get_grid(len(ims), nrows, ncols, **kwargs)
    if len(ims) > axs.size: raise ValueError(f"{len(ims)} images do not fit a grid of {axs.size} (nrows={nrows}, "
                                             f"ncols={ncols}): leave one of them out to fit the grid to the images")
    for im, t, ax in zip_longest(ims, list(titles or [])[:len(ims)], axs.flat[:len(ims)]):
        show_image(im, ax=ax, title=t)
    return fig
