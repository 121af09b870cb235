"""Everything a course notebook uses, in one line: `from miniai.imports import *`.

The course's later notebooks start with this star import instead of twenty lines of imports. It gives the
standard library, torch, torchvision, fastcore, matplotlib and Hugging Face `datasets` names those notebooks use
(`torch`, `nn`, `F`, `optim`, `tensor`, `DataLoader`, `partial`, `Path`, `plt`, `load_dataset`, ...) and every name
of the course's modules, imported in the course's order, so that where two modules give the same name the later
one wins as it does there (`miniai.training`'s `get_dls(train_ds, valid_ds, bs)` over `miniai.datasets`'
Fashion-MNIST `get_dls`). `miniai.fid` is not included, as in the course: `from miniai.fid import ImageEval`.

Meant for notebooks and quick experiments; library code imports the names it needs from their modules.
The names it gives: docs/course.md.
"""
import math
import random
from functools import partial, wraps
from operator import attrgetter, itemgetter
from pathlib import Path

import datasets
import fastcore.all as fc
import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from datasets import load_dataset
from fastcore.foundation import L
from torch import nn, optim, tensor
from torch.nn import init
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, default_collate
from torchvision.io import ImageReadMode, read_image

from .datasets import *
from .conv import *
from .learner import *
from .activations import *
from .init import *
from .sgd import *
from .resnet import *
from .augment import *
from .accel import *
from .training import *

# every name above: the modules and names imported here and each module's `__all__`
__all__ = sorted(n for n in dir() if not n.startswith('_'))
