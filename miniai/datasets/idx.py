"""IDX files to arrays: `read_idx` for any uint8 IDX file, `read_split` for one split of Fashion-MNIST, checked.

Explained in nbs/01_datasets.ipynb. IDX is the format Fashion-MNIST ships in (a magic number, the dimensions, then
the bytes), described on the page "The MNIST database of handwritten digits" by LeCun, Cortes and Burges. Every check
here turns a damaged or unsuitable file into a `DataError` that names the file, never into a silently different dataset.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ['FASHION_CLASSES', 'FASHION_FILES', 'IMAGE_SIZE', 'read_idx', 'read_split']

# The hub's ClassLabel names for fashion_mnist, spaces included.
FASHION_CLASSES = ('T - shirt / top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                   'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
# The four files of Fashion-MNIST by split: (images, labels). The 'test' split is miniai's validation set.
FASHION_FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
                 'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
# (height, width) of every Fashion-MNIST image: the built-in models and the saved preprocessing assume it.
IMAGE_SIZE = (28, 28)
_IMAGES, _LABELS = 2051, 2049                                 # IDX magic numbers: uint8, 3 dims / 1 dim
_SPLIT_WORDS = {'train': 'the training set', 'test': 'the validation set (the test images)'}


def read_idx(fn: str | os.PathLike, magic: int | None = None) -> np.ndarray:
    """Read the uint8 IDX file `fn` (gzipped when it ends in .gz), checking its `magic` number (2051, 2049) if given.

    Raises:
        DataError (a ValueError): naming `fn`, for a corrupt or truncated gzip stream, a wrong magic number, or a data
            size that disagrees with the header (so a damaged file never turns into a silently short dataset).
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


def read_split(folder: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images `(N,28,28)` and labels `(N,)` of `split` ('train' or 'test') from the IDX files in `folder`.

    Beyond `read_idx`'s checks, the two files must agree, hold at least one image, images of 28x28 pixels (the size
    the built-in models and the saved preprocessing assume: other sizes are refused, not trained on by accident) and
    labels that are class indices 0..9.

    Raises:
        DataError (a ValueError): naming the file and what to do.
    """
    fx, fy = (Path(folder) / n for n in FASHION_FILES[split])
    x, y = read_idx(fx, _IMAGES), read_idx(fy, _LABELS)
    if len(x) == 0:
        raise DataError(f"{fx} holds no images, but {_SPLIT_WORDS[split]} needs at least one: restore the file "
                        f"(Fashion-MNIST's holds {'60,000' if split == 'train' else '10,000'} images), or point path=, "
                        "$MINIAI_DATA or --data at a complete copy")
    if x.shape[1:] != IMAGE_SIZE:
        raise DataError(f"{fx} holds {'x'.join(map(str, x.shape[1:]))} images, but Fashion-MNIST images are "
                        f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} and miniai's models and preprocessing assume that size: "
                        "resize the images to 28x28 before writing the files, or build your own DataLoaders")
    if len(x) != len(y): raise DataError(f"{fx} holds {len(x)} images but {fy} holds {len(y)} labels")
    if y.max() >= len(FASHION_CLASSES):
        i = int(y.argmax())
        raise DataError(f"{fy}: label {y[i]} at index {i} is not a class index 0..{len(FASHION_CLASSES) - 1}")
    return x, y
