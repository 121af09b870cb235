"""Fashion-MNIST offline, `DataLoaders`, `collate_dict`, `inplace`, the in-memory loader and `show_images`.

Explained in nbs/01_datasets.ipynb. `load_fashion_mnist` returns what `datasets.load_dataset('fashion_mnist')` returns
(splits, features, label names), built from the four IDX files and cached as Arrow: course code runs without the hub.
`get_dls` skips PIL and Arrow entirely: uint8 tensors sliced by index and normalised per batch.

Parts: `idx` (IDX files to checked arrays), `source` (where the files are; `data_source`, `fashion_mnist_tensors`),
`cache` (`load_fashion_mnist` and its checked Arrow cache), `loaders` (`DataLoaders`, `InMemoryLoader`, `get_dls`),
`plotting` (`show_images` and friends). `from miniai.datasets import *` gives the course's names and the loaders';
`data_source`, `normalise_images`, `XMEAN` and `XSTD` are imported from here by name, the parts' other names from
their part (`from miniai.datasets.idx import read_split`).
"""
# (`X as X`: names for import by name, kept out of `__all__`)
from .cache import load_fashion_mnist
from .idx import FASHION_CLASSES, read_idx
from .loaders import XMEAN as XMEAN
from .loaders import XSTD as XSTD
from .loaders import DataLoaders, InMemoryLoader, collate_dict, inplace
from .loaders import fashion_preprocess as fashion_preprocess
from .loaders import get_dls as get_dls
from .loaders import normalise_images as normalise_images
from .plotting import get_grid, show_image, show_images, subplots
from .source import data_source as data_source
from .source import fashion_mnist_tensors

# `get_dls` is imported by name, not by `*`: the course's `get_dls` (another function) comes from `miniai.training`, and
# its notebooks star-import both modules
__all__ = ['FASHION_CLASSES', 'read_idx', 'load_fashion_mnist', 'fashion_mnist_tensors', 'inplace', 'collate_dict',
           'InMemoryLoader', 'DataLoaders', 'show_image', 'subplots', 'get_grid', 'show_images']
