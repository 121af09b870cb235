"""Where Fashion-MNIST comes from: `data_source` finds the IDX folder, `fashion_mnist_tensors` reads it as tensors,
`load_from_hub` is the last resort.

Explained in nbs/01_datasets.ipynb. Sources, first found wins: the `path` given, $MINIAI_DATA, the folder of Debian's
`dataset-fashion-mnist` package, the Hugging Face hub. A source named explicitly but incomplete is an error, never a
silent fall back to another source.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .idx import FASHION_FILES, read_split

__all__ = ['data_source', 'load_from_hub', 'fashion_mnist_tensors']

_DEBIAN_DIR = Path('/usr/share/datasets/fashion-mnist')       # `apt-get install dataset-fashion-mnist`
_NO_SOURCE = ("Fashion-MNIST not found. Either pass `path=` (or set MINIAI_DATA) to a folder holding {files}; "
              "or `apt-get install dataset-fashion-mnist` (provides {debian}); "
              "or be online so `datasets.load_dataset('fashion_mnist')` can fetch it from the Hugging Face hub.")


def _all_files(): return [n for names in FASHION_FILES.values() for n in names]


def data_source(path: str | os.PathLike | None = None) -> Path | None:
    """The folder of Fashion-MNIST IDX files that miniai reads: `path`, else $MINIAI_DATA, else the Debian package's;
    None means that none is there and the hub is the source. `miniai train` prints it, so a run says what it read.

    Raises:
        FileNotFoundError: `path` or $MINIAI_DATA is given but does not exist, is not a folder, or lacks one of the
            four files (named).
    """
    for p_given, what in ((path, 'path'), (os.environ.get('MINIAI_DATA'), 'MINIAI_DATA')):
        if not p_given: continue
        p = Path(p_given).expanduser().resolve()
        missing = [n for n in _all_files() if not (p / n).is_file()]
        if missing:
            where, fix = ((f"the data path {p}", "point it (--data in miniai train)") if what == 'path' else
                          (f"$MINIAI_DATA ({p})", "point $MINIAI_DATA"))
            given = Path(p_given).expanduser()
            if given.is_symlink() and not p.exists(): where += f" (where the link {given} points)"
            fault = ('does not exist' if not p.exists() else 'is a file, not a folder' if not p.is_dir() else
                     f"lacks the Fashion-MNIST file(s) {', '.join(missing)}")
            raise FileNotFoundError(f"{where} {fault}: {fix} at the folder holding the four IDX .gz files, or leave "
                                    "it out to use Debian's dataset-fashion-mnist or the Hugging Face hub")
        return p
    return _DEBIAN_DIR if all((_DEBIAN_DIR / n).is_file() for n in _all_files()) else None


def _load_hub():
    from datasets import load_dataset
    return load_dataset('fashion_mnist')


def load_from_hub():
    """The hub's Fashion-MNIST `DatasetDict`, or, when it cannot be reached, the one error that names every way to
    get the data (so an offline machine is told about the local sources rather than shown a network error).

    Raises:
        FileNotFoundError: the hub could not be reached; the cause is chained.
    """
    try: return _load_hub()
    except Exception as e:
        raise FileNotFoundError(_NO_SOURCE.format(files=', '.join(_all_files()), debian=_DEBIAN_DIR)) from e


def fashion_mnist_tensors(path: str | os.PathLike | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{'train': (x, y), 'test': (x, y)}` with x uint8 `(N,28,28)` and y int64, straight from the IDX files, no PIL.

    Same sources as `load_fashion_mnist`; only when the hub is the source are images decoded (about 2 s). The files
    are checked as `read_split` says (a damaged file, an empty split or images of another size raise `DataError`).
    """
    src = data_source(path)
    if src is not None:
        return {s: (torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64)))
                for s in FASHION_FILES for x, y in [read_split(src, s)]}
    dd = load_from_hub()
    return {s: (torch.from_numpy(np.stack([np.asarray(im, np.uint8) for im in dd[s]['image']])),
                torch.tensor(list(dd[s]['label']), dtype=torch.int64)) for s in FASHION_FILES}
