"""torcheval's metrics for `MetricsCB`, imported without the FutureWarning that torcheval's import raises.

Explained in nbs/02_learner.ipynb. When torcheval is imported it calls `torch.jit.script`, which recent torch
deprecates with a `FutureWarning` that a user of miniai can do nothing about. `torcheval_metrics()` imports it with
that one warning ignored (only there, only that message); since a module is imported once, a later
`from torcheval.metrics import ...` anywhere in the process is silent too. Any other warning still shows.
"""
import warnings
from types import ModuleType

__all__ = ['torcheval_metrics', 'MulticlassAccuracy']

_JIT_DEPRECATED = r'`torch\.jit\.script` is deprecated'


def torcheval_metrics() -> ModuleType:
    """The `torcheval.metrics` module, imported with torch's `torch.jit.script` deprecation warning ignored."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=_JIT_DEPRECATED, category=FutureWarning)
        import torcheval.metrics
    return torcheval.metrics


MulticlassAccuracy = torcheval_metrics().MulticlassAccuracy
