"""Speed callbacks: `MixedPrecisionCB` (autocast, plus a GradScaler for float16), `CompileCB`, `ChannelsLastCB`.

Explained in nbs/08_accel.ipynb. Each one warns once and steps aside where the platform can't do what it
asks (no bfloat16 on an old GPU, no C compiler for `torch.compile`, ...): the fit goes on in float32 / eagerly.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch

from .callbacks import TrainCB
from .core import Callback, CancelStepException

__all__ = ['MixedPrecisionCB', 'CompileCB', 'ChannelsLastCB', 'MixedPrecision', 'AccelerateCB']

# After DeviceCB (-20), BatchTransformCB (-10) and GradientAccumulationCB (-6), so the batch is on its device
# and augmented in float32 and a cancelled accumulation step never unscales; before GradientClipCB (-4), TrainCB (0),
# schedulers (0) and MetricsCB (10).
_ORDER = -5
_DTYPES = {'bfloat16': torch.bfloat16, 'bf16': torch.bfloat16, 'float16': torch.float16, 'fp16': torch.float16,
           'half': torch.float16}


def _first_tensor(x):
    if isinstance(x, torch.Tensor): return x
    for o in (x.values() if isinstance(x, Mapping) else x if isinstance(x, (list, tuple)) else ()):
        t = _first_tensor(o)
        if t is not None: return t
    return None


def _device_type(learn) -> str:
    """The device type of the model's first parameter, else of the batch's first tensor, else 'cpu'."""
    p = next(iter(learn.model.parameters()), None) if hasattr(learn.model, 'parameters') else None
    t = p if p is not None else _first_tensor(getattr(learn, 'batch', None))
    return t.device.type if t is not None else 'cpu'


def _amp_problem(device_type: str, dtype: torch.dtype) -> str | None:
    """Why autocast to `dtype` can't run on `device_type`, or None when it can."""
    if device_type == 'cuda' and dtype == torch.bfloat16:
        # pre-Ampere GPUs "support" bfloat16 only by emulating it, which is slower than float32
        try: ok = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError: ok = torch.cuda.is_bf16_supported()
        if not ok: return "this GPU has no native bfloat16 (use dtype=torch.float16)"
    with warnings.catch_warnings(record=True) as caught:  # for unsupported dtypes torch warns and disables itself
        warnings.simplefilter('always')
        try: torch.autocast(device_type, dtype=dtype)
        except (RuntimeError, AssertionError, ValueError) as e: return str(e).splitlines()[0]
    return str(caught[0].message).splitlines()[0] if caught else None


class MixedPrecisionCB(Callback):
    """Runs predict and the loss under `torch.autocast(device_type, dtype)`; float16 adds a `GradScaler`.

    `device_type=None` follows the model's parameters (else the batch). bfloat16 needs no scaling. With float16,
    on the events of `miniai.core`'s backward/step protocol: in `before_backward` it backprops
    `scaler.scale(learn.loss)` and sets `learn.backward_done` (so the learner's own backward step is skipped and
    `learn.loss` stays the true loss for every callback); in `before_step` it unscales the gradients (so
    callbacks ordered after it, such as GradientClipCB, see true gradients) and, when they hold inf or nan,
    zeroes them, counts the step in `skipped`, lowers the scale and raises `CancelStepException`: no optimizer
    step, no `after_step` (per-step schedulers don't advance). Otherwise the learner's own step runs (what
    `scaler.step` does for finite gradients) and `after_step` updates the scale. Gradient accumulation works:
    the scale only changes at a real step. A learner whose own `backward` does more than backprop `learn.loss`
    has it skipped under float16; float16 also assumes gradients start from zero after each step (not
    `MomentumLearner`, which keeps part of the last ones). Where the device can't autocast to `dtype`, it warns
    once and does nothing.
    """
    order = _ORDER

    def __init__(self, dtype: torch.dtype | str = torch.bfloat16, device_type: str | None = None):
        dtype = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.bfloat16 or torch.float16 (or 'bf16'/'fp16'), got {dtype!r}")
        self.dtype, self.device_type = dtype, device_type
        self.scaler, self.skipped, self.active = None, 0, False
        self._ac, self._in_ac, self._unscaled, self._warned = None, False, False, False
        self._scaler_sd, self._scaler_device = None, None

    # --- setup, at the first batch of each fit (the model is on its device by then) --------------------------
    def before_fit(self, learn): self._ac = None

    def _setup(self, learn):
        device_type = self.device_type or _device_type(learn)
        problem = _amp_problem(device_type, self.dtype)
        if problem is None and self.dtype == torch.float16: problem = self._make_scaler(device_type)
        self.active, self._ac = problem is None, False
        if problem is not None:
            if not self._warned:
                warnings.warn(f"MixedPrecisionCB: no {self.dtype} autocast on {device_type} ({problem}); "
                              "training in full precision", stacklevel=2)
                self._warned = True
            return
        self._ac = torch.autocast(device_type, dtype=self.dtype)

    def _make_scaler(self, device_type) -> str | None:
        if self.scaler is None or self._scaler_device != device_type:
            try: self.scaler = torch.amp.GradScaler(device_type)
            except (RuntimeError, AssertionError, ValueError) as e: return f"no GradScaler: {e}"
            self._scaler_device = device_type
            if self._scaler_sd is not None: self.scaler.load_state_dict(self._scaler_sd); self._scaler_sd = None
        return None if self.scaler.is_enabled() else "GradScaler disabled itself"

    @property
    def _scaling(self): return self.active and self.scaler is not None

    # --- the batch --------------------------------------------------------------------------------------------
    def before_batch(self, learn):
        if self._ac is None: self._setup(learn)
        if self._ac: self._ac.__enter__(); self._in_ac = True

    def _exit_autocast(self):
        if self._in_ac: self._in_ac = False; self._ac.__exit__(None, None, None)

    def after_loss(self, learn): self._exit_autocast()   # backward runs outside autocast, as torch recommends

    def before_backward(self, learn):
        if not self._scaling or learn.backward_done: return
        self.scaler.scale(learn.loss).backward()       # small float16 gradients would flush to zero unscaled
        learn.backward_done = True

    def before_step(self, learn):
        if not self._scaling: return
        self.scaler.unscale_(learn.opt)                # once per step, however many batches accumulated
        self._unscaled = True
        if _grads_finite(learn.opt): return            # the learner's own step runs, as scaler.step would
        self.skipped += 1
        learn.opt.zero_grad()                          # don't carry inf/nan into the next step
        self._update()                                 # lowers the scale
        raise CancelStepException()

    def _update(self):
        if self._unscaled: self._unscaled = False; self.scaler.update()

    def after_step(self, learn): self._update()

    def cleanup_batch(self, learn):
        self._exit_autocast()
        self._update()  # unscaled but not stepped (a later callback cancelled): close the scaler's step

    def cleanup_fit(self, learn):
        self._exit_autocast()
        self._ac = None

    def state_dict(self) -> dict:
        """The GradScaler's state (float16 only) and `skipped`."""
        sd = self.scaler.state_dict() if self.scaler is not None else self._scaler_sd
        return {'scaler': sd or {}, 'skipped': self.skipped}

    def load_state_dict(self, state_dict: dict):
        """Restore `skipped` and the GradScaler's state (now, or when the next fit makes the scaler)."""
        self.skipped = state_dict.get('skipped', 0)
        sd = state_dict.get('scaler') or None
        if sd and self.scaler is not None: self.scaler.load_state_dict(sd)
        else: self._scaler_sd = sd


def _grads_finite(opt) -> bool:
    """Whether every gradient the optimizer holds is finite (one host sync, as `GradScaler.step` makes)."""
    gs = [p.grad for g in opt.param_groups for p in g['params'] if p.grad is not None]
    return not gs or bool(torch.stack([torch.isfinite(g).all() for g in gs]).all())


_MODES = (None, 'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


class CompileCB(Callback):
    """`learn.model.compile(mode=mode, **kwargs)` (torch's `nn.Module.compile`) at the first fit: the module is
    compiled in place, so it stays the same object with the same state_dict keys, and stays compiled afterwards.

    Compiling happens at the first call of each new input shape or mode. If torch can't compile the model here
    (no C compiler, unsupported platform), torch's compiler falls back to eager during the fit and logs why
    (dynamo's `suppress_errors`); if `compile` itself fails, this warns once and the fit goes on eagerly.
    """
    order = _ORDER

    def __init__(self, mode: str | None = None, **kwargs):
        if mode not in _MODES: raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.mode, self.kwargs, self.failed, self._warned = mode, kwargs, False, False
        self._compiled, self._suppress = None, None

    def _warn(self, e: Exception):
        why = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        if not self._warned:
            warnings.warn(f"CompileCB: torch.compile failed ({why}); running eagerly", stacklevel=3)
        self._warned = self.failed = True

    def before_fit(self, learn):
        import torch._dynamo
        model = learn.model
        if self.failed or not hasattr(model, 'compile'): return
        self._suppress, torch._dynamo.config.suppress_errors = torch._dynamo.config.suppress_errors, True
        if self._compiled is model: return              # already compiled by us: a later fit doesn't retrace
        try: model.compile(mode=self.mode, **self.kwargs)
        except Exception as e: return self._warn(e)
        self._compiled = model

    def cleanup_fit(self, learn):
        import torch._dynamo
        if self._suppress is not None: torch._dynamo.config.suppress_errors, self._suppress = self._suppress, None


def _channels_last(x):
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point():
        return x.contiguous(memory_format=torch.channels_last)
    if isinstance(x, (list, tuple)): return type(x)(_channels_last(o) for o in x)
    if isinstance(x, Mapping): return {k: _channels_last(v) for k, v in x.items()}
    return x


class ChannelsLastCB(Callback):
    """Model weights and 4-D float inputs in `torch.channels_last` (NHWC) memory format: faster convolutions on
    tensor cores, above all with `MixedPrecisionCB`. Values are unchanged; the model stays NHWC after the fit.

    Warns once and does nothing for a model without 4-D (conv) weights or on devices other than cuda and cpu.
    """
    order = _ORDER

    def __init__(self): self.active, self._warned = False, False

    def before_fit(self, learn):
        ps = list(learn.model.parameters()) if hasattr(learn.model, 'parameters') else []
        device_type = ps[0].device.type if ps else 'cpu'
        problem = ("the model has no 4-D (conv) weights" if not any(p.dim() == 4 for p in ps) else
                   None if device_type in ('cuda', 'cpu') else f"not supported on {device_type}")
        self.active = problem is None
        if self.active: learn.model.to(memory_format=torch.channels_last)
        elif not self._warned:
            warnings.warn(f"ChannelsLastCB: {problem}; keeping the default memory format", stacklevel=2)
            self._warned = True

    def before_batch(self, learn):
        if self.active: learn.batch = _channels_last(learn.batch)


# ---------------------------------------------------------------- the course's accelerated TrainCBs
_SAID: set[str] = set()


def _say_once(key: str, msg: str):
    """Warn `msg` the first time `key` comes up in this process (a notebook builds many learners)."""
    if key not in _SAID:
        _SAID.add(key)
        warnings.warn(msg, stacklevel=2)


class MixedPrecision(TrainCB):
    """The course's mixed precision: a `TrainCB` (use it instead of one) whose predict and loss run under
    `torch.autocast(device_type, dtype)`, with a `GradScaler` for float16 (the course's float16 on CUDA by
    default). `MixedPrecisionCB` is the one that works beside any learner and checks the device first.

    Without CUDA, the default `device_type='cuda'` trains in plain float32 (no autocast, no scaler: the same
    numbers as `TrainCB`) and says so once per process. float32 is exact, and on a CPU without bfloat16 or
    float16 units it is also the fastest; for bfloat16 autocast on a CPU that has them, pass
    `dtype=torch.bfloat16, device_type='cpu'` or use `MixedPrecisionCB()`.
    """
    order = -10  # after DeviceCB (-20)

    def __init__(self, n_inp: int = 1, dtype: torch.dtype = torch.float16, device_type: str = 'cuda'):
        super().__init__(n_inp=n_inp)
        self.dtype, self.device_type, self.active = dtype, device_type, True
        self._in_autocast = False  # cleanup_batch also runs for a batch an earlier before_batch cancelled

    def before_fit(self, learn):
        self.active = self.device_type != 'cuda' or torch.cuda.is_available()
        if not self.active:
            _say_once('MixedPrecision', "MixedPrecision: CUDA is not available, so this trains in float32 (no "
                      "autocast, no GradScaler). For bfloat16 on a CPU with bfloat16 units use MixedPrecisionCB().")
        # a disabled scaler passes the loss through and steps the optimizer plainly
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.active and self.dtype == torch.float16)

    def before_batch(self, learn):
        if not self.active: return
        self.autocast = torch.autocast(self.device_type, dtype=self.dtype)
        self.autocast.__enter__()
        self._in_autocast = True

    def after_loss(self, learn):
        if self._in_autocast: self._in_autocast = False; self.autocast.__exit__(None, None, None)

    def cleanup_batch(self, learn): self.after_loss(learn)  # a batch cancelled before its loss leaves autocast too

    def backward(self, learn): self.scaler.scale(learn.loss).backward()

    def step(self, learn):
        self.scaler.step(learn.opt)
        self.scaler.update()


class AccelerateCB(TrainCB):
    """The course's Hugging Face Accelerate `TrainCB`: `Accelerator(mixed_precision=...)` prepares the model, the
    optimizer and both loaders at `before_fit` and does the backward pass. Needs `pip install accelerate`.

    Accelerate picks the device. On a CPU it runs `'bf16'` under bfloat16 autocast and `'fp16'` (the default) in
    plain float32; in that second case this says so once per process.
    """
    order = -10

    def __init__(self, n_inp: int = 1, mixed_precision: str = "fp16"):
        super().__init__(n_inp=n_inp)
        try:
            from accelerate import Accelerator
        except ImportError as e:
            raise ImportError("AccelerateCB needs Hugging Face Accelerate: pip install accelerate") from e
        self.acc = Accelerator(mixed_precision=mixed_precision)

    def before_fit(self, learn):
        acc = self.acc
        if acc.device.type == 'cpu' and acc.mixed_precision == 'fp16' and not getattr(acc, 'native_amp', True):
            _say_once('AccelerateCB', "AccelerateCB: Accelerate runs mixed_precision='fp16' in float32 on a CPU "
                      "(no CUDA here); mixed_precision='bf16' would use bfloat16 autocast.")
        learn.model, learn.opt, learn.dls.train, learn.dls.valid = acc.prepare(
            learn.model, learn.opt, learn.dls.train, learn.dls.valid)

    def backward(self, learn): self.acc.backward(learn.loss)
