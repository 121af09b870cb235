"""Noise schedules and noising: the cosine schedule on continuous time (`abar`, `inv_abar`, `noisify`) with its
collate function and loader, the discrete DDPM schedules (`linear_sched`, `cos_sched`), and the Karras et al.
noise levels and scalings. Part of `miniai.diffusion`.
docs/course.md lists where they differ from the course's notebooks."""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, default_collate

__all__ = ['abar', 'inv_abar', 'noisify', 'collate_ddpm', 'dl_ddpm', 'linear_sched', 'cos_sched', 'sigmas_karras',
           'scalings', 'noisify_karras']


def abar(t):
    """ᾱ(t) = cos²(πt/2): the share of the signal's variance left at time `t` in [0, 1] (1 at t=0, 0 at t=1).

    The cosine schedule of Nichol and Dhariwal (2021, "Improved Denoising Diffusion Probabilistic Models") on
    continuous time, so a model can be trained and sampled with any number of steps."""
    return (t * math.pi / 2).cos() ** 2


def inv_abar(x):
    """The `t` at which `abar(t) == x`: 2·acos(√x)/π."""
    return x.sqrt().acos() * 2 / math.pi


def noisify(x0, t=None):
    """`((x_t, t), ε)` for a batch of clean images `x0`: `x_t = √ᾱ(t)·x0 + √(1-ᾱ(t))·ε` with ε ~ N(0, 1).

    The model's input is `(x_t, t)` and its target the noise ε. Each image gets its own `t`, uniform in
    [0, 0.999] (not quite 1, where no signal is left to find). `t` may also be given (a number or one per image),
    to look at a chosen noise level."""
    n = len(x0)
    if t is None: t = torch.rand(n, device=x0.device, dtype=x0.dtype).clamp(0, 0.999)
    else: t = torch.as_tensor(t, device=x0.device, dtype=x0.dtype).expand(n).clone()
    eps = torch.randn_like(x0)
    abar_t = abar(t).reshape(-1, *([1] * (x0.dim() - 1)))
    return (abar_t.sqrt() * x0 + (1 - abar_t).sqrt() * eps, t), eps


def collate_ddpm(b, xl='image'):
    """A `collate_fn` that collates `b` and noises its images (`noisify`): batches come out as `((x_t, t), ε)`.

    `xl` picks the images out of the collated batch: a column name for dict rows (the course's `'image'`), or 0
    for `(image, label)` tuples."""
    return noisify(default_collate(b)[xl])


def dl_ddpm(ds, bs=512, collate_fn=collate_ddpm, num_workers=4, **kwargs):
    """A `DataLoader` of noised batches of `ds` (see `collate_ddpm`), `bs` rows at a time, in the dataset's order.

    The noise is drawn anew each time a batch is made, so no two epochs see the same noised images."""
    return DataLoader(ds, batch_size=bs, collate_fn=collate_fn, num_workers=num_workers, **kwargs)


def linear_sched(betamin=0.0001, betamax=0.02, n_steps=1000):
    """The DDPM schedule of Ho et al. (2020, "Denoising Diffusion Probabilistic Models"): β rises linearly from
    `betamin` to `betamax` over `n_steps`; returns `a` (α = 1-β), `abar` (ᾱ, the running product of α) and
    `sig` (σ = √β, the noise added back at each sampling step)."""
    beta = torch.linspace(betamin, betamax, n_steps)
    return SimpleNamespace(a=1. - beta, abar=(1. - beta).cumprod(dim=0), sig=beta.sqrt())


def cos_sched(n_steps=1000):
    """The cosine schedule on `n_steps` discrete steps: ᾱ_t = `abar(t/n_steps)`, α_t = ᾱ_t/ᾱ_{t-1} (1 at t=0),
    σ_t = √(1-α_t); the same fields as `linear_sched`, so `sample_ddpm` takes either."""
    ab = abar(torch.arange(n_steps) / n_steps)
    a = ab / torch.cat([ab.new_ones(1), ab[:-1]])
    return SimpleNamespace(a=a, abar=ab, sig=(1 - a).clamp(min=0).sqrt())


def sigmas_karras(n, sigma_min=0.01, sigma_max=80., rho=7., device='cpu'):
    """`n` noise levels from `sigma_max` down to `sigma_min`, evenly spaced in σ^(1/rho) (so most steps are spent
    at low noise), then a final 0: `n+1` values."""
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1)]).to(device)


def scalings(sig, sig_data=0.66):
    """`(c_skip, c_out, c_in)` at noise level `sig` for data of standard deviation `sig_data`: the model sees
    `c_in·x` (unit variance) and predicts a target that makes `c_skip·x + c_out·output` the denoised image."""
    totvar = sig ** 2 + sig_data ** 2
    return sig_data ** 2 / totvar, sig * sig_data / totvar.sqrt(), 1 / totvar.sqrt()


def noisify_karras(x0, sig_data=0.66):
    """`((c_in·x, σ), target)` for clean images `x0`: x = x0 + σ·ε with log σ ~ N(-1.2, 1.2²) per image, and the
    target `(x0 - c_skip·x)/c_out` that the model learns (unit variance at every noise level)."""
    sig = (torch.randn(len(x0)) * 1.2 - 1.2).exp().to(x0).reshape(-1, *([1] * (x0.dim() - 1)))
    c_skip, c_out, c_in = scalings(sig, sig_data)
    x = x0 + torch.randn_like(x0) * sig
    return (x * c_in, sig.reshape(-1)), (x0 - c_skip * x) / c_out
