"""The built-in architectures, by name: what `miniai train` builds and what `load_learner(path)` rebuilds.

A builder registered with `register_model(name)` tags every module it returns with `model.miniai_arch`, the
builder's name and the arguments it was called with, as plain data. `learn.export` writes that record into the
exported file, and `build_model(record)` makes the same architecture again by looking the name up in
`ARCHITECTURES`: an exported file names code that this process already has, it never carries code, so loading
one runs nothing that came from the file. A model of your own (not made by a registered builder) is exported
without a record and needs its constructor at load time: `load_learner(path, MyModel)`, or register its builder.

Built in: `recipe_model` ('recipe', the model of `miniai train`) and `resnet_model` ('resnet', the course's
ResNet). Explained in nbs/12_inference.ipynb.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

from torch import nn

from .conv import get_model
from .errors import MiniaiError
from .layers import GeneralRelu, init_weights
from .resnet import get_resnet

__all__ = ['ARCHITECTURES', 'ArchitectureError', 'register_model', 'build_model', 'architecture_of',
           'recipe_model', 'resnet_model']

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


class ArchitectureError(MiniaiError, ValueError):
    """A model that cannot be rebuilt by name: no architecture recorded (a model of the user's own), a name this
    process does not know, or arguments its builder refuses."""


def _plain(v) -> bool:
    """Whether `v` is plain data: what `torch.load(weights_only=True)` reads back and no code can hide in."""
    if v is None or isinstance(v, (bool, int, float, str)): return True
    if isinstance(v, (list, tuple)): return all(_plain(o) for o in v)
    if isinstance(v, dict): return all(isinstance(k, str) and _plain(o) for k, o in v.items())
    return False


def register_model(name: str):
    """Decorator: register the model builder it wraps as `name` in `ARCHITECTURES`. The builder's arguments
    must be plain data (numbers, strings, bools, None, and lists, tuples and dicts of them), so that the
    modules it returns can be tagged with `{'name': name, 'kwargs': {...}}` and exported by name."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_model needs a non-empty name, got {name!r}")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def build(*args, **kwargs) -> nn.Module:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()          # the whole recipe: a later change of a default does not change it
            given = dict(bound.arguments)
            bad = sorted(k for k, v in given.items() if not _plain(v))
            if bad:
                raise TypeError(f"{name} model: argument(s) {', '.join(bad)} must be plain data (numbers, strings, "
                                "bools, None, lists/tuples/dicts of them), so that an export can record them")
            model = fn(*args, **kwargs)
            model.miniai_arch = {'name': name, 'kwargs': given}
            return model
        ARCHITECTURES[name] = build
        return build
    return deco


def architecture_of(model: nn.Module) -> dict | None:
    """The record a registered builder left on `model` (`{'name': ..., 'kwargs': {...}}`), or None."""
    arch = getattr(model, 'miniai_arch', None)
    return arch if isinstance(arch, dict) and _plain(arch) else None


def build_model(arch: dict) -> nn.Module:
    """A new model of the architecture `arch` records (`{'name': ..., 'kwargs': {...}}`), from `ARCHITECTURES`.

    Raises:
        ArchitectureError: `arch` is not such a record, names no registered builder, or holds arguments that
            builder refuses.
    """
    if not (isinstance(arch, dict) and isinstance(arch.get('name'), str) and isinstance(arch.get('kwargs', {}), dict)
            and _plain(arch)):
        raise ArchitectureError(f"not an architecture record ({{'name': str, 'kwargs': dict}} of plain data): "
                                f"{str(arch)[:200]}")
    name, kwargs = arch['name'], arch.get('kwargs', {})
    if name not in ARCHITECTURES:
        raise ArchitectureError(f"the architecture {name!r} is not registered here (built in: "
                                f"{', '.join(sorted(ARCHITECTURES))}): import the module that registers it with "
                                "register_model, or pass the model's constructor")
    try: return ARCHITECTURES[name](**kwargs)
    except TypeError as e:
        raise ArchitectureError(f"the {name!r} builder refuses the recorded arguments {kwargs}: {e}") from e


@register_model('recipe')
def recipe_model(nfs: Sequence[int] = (1, 8, 16, 32, 64), leak: float = 0.1, sub: float = 0.4) -> nn.Sequential:
    """The model of `miniai train`, freshly initialised: the course's conv net (`get_model` with `nfs`),
    `GeneralRelu(leak, sub)` and BatchNorm, Kaiming-normal weights for that leak."""
    act = functools.partial(GeneralRelu, leak=leak, sub=sub)
    return get_model(act, list(nfs), norm=nn.BatchNorm2d).apply(functools.partial(init_weights, leaky=leak))


@register_model('resnet')
def resnet_model(nfs: Sequence[int] = (16, 32, 64, 128, 256, 512), n_classes: int = 10, leak: float = 0.1,
                 sub: float = 0.4, zero_bn: bool = False) -> nn.Sequential:
    """The course's Fashion-MNIST ResNet (`get_resnet` with `nfs`, `n_classes`, `zero_bn`), `GeneralRelu(leak,
    sub)` and BatchNorm, Kaiming-normal weights for that leak."""
    act = functools.partial(GeneralRelu, leak=leak, sub=sub)
    return get_resnet(act, tuple(nfs), norm=nn.BatchNorm2d, n_classes=n_classes, zero_bn=zero_bn).apply(
        functools.partial(init_weights, leaky=leak))
