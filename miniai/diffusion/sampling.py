"""Samplers: DDIM (`ddim_step`, `sample`, `cond_sample`), ancestral DDPM on a discrete schedule (`sample_ddpm`) and
the Karras et al. samplers (Euler, Euler ancestral, Heun, linear multistep). Part of `miniai.diffusion`.
docs/course.md lists where they differ from the course's notebooks."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..device import def_device
from .schedules import abar, scalings, sigmas_karras

__all__ = ['ddim_step', 'sample', 'cond_sample', 'sample_ddpm', 'denoise_karras', 'get_ancestral_step', 'sample_euler',
           'sample_euler_ancestral', 'sample_heun', 'linear_multistep_coeff', 'sample_lms', 'sample_karras']


def _device(model):
    """Where `model` computes: its first parameter's device (the default device for a model without any)."""
    p = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    return p.device if p is not None else torch.device(def_device)


def _progress(it, show=True):
    if not show: return it
    from fastprogress import progress_bar
    return progress_bar(it)


def ddim_step(x_t, noise, abar_t, abar_t1, bbar_t, bbar_t1, eta, sig, clamp=True):
    """One DDIM step (Song et al. 2021, "Denoising Diffusion Implicit Models") from ᾱ_t to ᾱ_{t-1}: returns
    `(x̂_0, x_{t-1})`, the denoised estimate and the next, less noisy, image.

    `bbar` is 1-ᾱ. The fresh noise's size is σ = `eta`·√(bbar_t1/bbar_t)·√(1-ᾱ_t/ᾱ_{t-1}) (eta=0: deterministic
    DDIM, eta=1: DDPM-like), set to 0 where it would leave no room for the predicted noise; the `sig` argument
    is not used (the course's samplers pass one; σ always comes from `eta`). `clamp` keeps x̂_0 in [-1, 1]."""
    sig = (bbar_t1 / bbar_t).sqrt() * (1 - abar_t / abar_t1).sqrt() * eta
    x_0_hat = (x_t - (1 - abar_t).sqrt() * noise) / abar_t.sqrt()
    if clamp: x_0_hat = x_0_hat.clamp(-1, 1)
    if not bool(bbar_t1 > sig ** 2 + 0.01): sig = 0.     # too small to matter, or NaN
    x_t = abar_t1.sqrt() * x_0_hat + (bbar_t1 - sig ** 2).sqrt() * noise
    return x_0_hat, x_t + sig * torch.randn_like(x_t)


def _timesteps(steps):
    if steps < 1: raise ValueError(f"steps must be at least 1, got {steps}")
    return torch.linspace(1 - 1 / steps, 0, steps)


@torch.no_grad()
def _sample_abar(f, model, sz, steps, eta, inp, show_progress=True, **kwargs):
    was_training = model.training
    model.eval()
    try:
        dev = _device(model)
        x_t = torch.randn(sz).to(dev)
        ts, preds = _timesteps(steps), []
        for i, t in enumerate(_progress(ts, show_progress)):
            t = t[None].to(dev)
            abar_t = abar(t)
            noise = model(inp(x_t, t))
            abar_t1 = abar(ts[i + 1:i + 2].to(dev)) if i + 1 < steps else torch.ones_like(abar_t)
            x_0_hat, x_t = f(x_t, noise, abar_t, abar_t1, 1 - abar_t, 1 - abar_t1, eta, 1 - ((i + 1) / 100), **kwargs)
            preds.append(x_0_hat.float().cpu())
        return preds
    finally: model.train(was_training)


def sample(f, model, sz, steps, eta=1., clamp=True):
    """Images of shape `sz` from pure noise in `steps` steps of the cosine schedule, each a call of the step
    function `f` (`ddim_step`); returns the list of denoised estimates x̂_0, the last one the result.

    `model` takes `(x_t, t)` (the `EmbUNetModel` way) and runs in eval mode on its own device; its mode is put
    back afterwards."""
    return _sample_abar(f, model, sz, steps, eta, lambda x, t: (x, t), clamp=clamp)


def cond_sample(c, f, model, sz, steps, eta=1.):
    """`sample` for a class-conditional model, which takes `(x_t, t, c)`: every image is of class `c`."""
    def inp(x, t): return x, t, x.new_full((sz[0],), c, dtype=torch.int32)
    return _sample_abar(f, model, sz, steps, eta, inp)


@torch.no_grad()
def sample_ddpm(model, sz, sched, show_progress=True):
    """Ancestral DDPM sampling (Ho et al. 2020) over every step of a discrete schedule `sched` (`linear_sched`,
    `cos_sched`); `model` takes `(x_t, t)` with integer `t` and predicts the noise. Each step adds fresh noise of
    size `sched.sig[t]`, except the step into a clean level (ᾱ = 1). Returns the image after each step, on the CPU."""
    a, ab, sig = sched.a, sched.abar, sched.sig
    dev = _device(model)
    x_t, preds = torch.randn(sz).to(dev), []
    for t in _progress(reversed(range(len(ab))), show_progress):
        t_batch = torch.full((x_t.shape[0],), t, device=dev, dtype=torch.long)
        ab_t1 = ab[t - 1] if t > 0 else torch.tensor(1.)
        bb_t, bb_t1 = 1 - ab[t], 1 - ab_t1
        z = torch.randn_like(x_t) if bb_t1 > 0 else torch.zeros_like(x_t)    # no fresh noise into a clean level
        x_0_hat = (x_t - bb_t.sqrt() * model((x_t, t_batch))) / ab[t].sqrt()
        if bb_t > 0: x_t = x_0_hat * ab_t1.sqrt() * (1 - a[t]) / bb_t + x_t * a[t].sqrt() * bb_t1 / bb_t + sig[t] * z
        else: x_t = x_0_hat                              # ᾱ_t = 1 (cos_sched's t=0): x_t is already clean
        preds.append(x_t.float().cpu())
    return preds


# ----------------------------------------------------------------------------------------------- Karras et al.
def denoise_karras(model, x, sig, sig_data=0.66):
    """The denoised image at noise level `sig` (one per image, or one for the batch) from a model trained on
    `noisify_karras`'s pairs; the model gets one σ per image."""
    sig = torch.as_tensor(sig, dtype=x.dtype, device=x.device)
    sig = sig.expand(len(x)) if sig.dim() == 0 else sig.reshape(-1)
    c_skip, c_out, c_in = scalings(sig.reshape(-1, *([1] * (x.dim() - 1))), sig_data)
    return model((x * c_in, sig)) * c_out + x * c_skip


def get_ancestral_step(sigma_from, sigma_to, eta=1.):
    """`(sigma_down, sigma_up)` for an ancestral step: go deterministically down to `sigma_down`, then add fresh
    noise of size `sigma_up`, landing at `sigma_to` overall (`eta=0`: no fresh noise)."""
    if not eta: return sigma_to, 0.
    var_to, var_from = sigma_to ** 2, sigma_from ** 2
    sigma_up = min(sigma_to, eta * (var_to * (var_from - var_to) / var_from) ** 0.5)
    return (var_to - sigma_up ** 2) ** 0.5, sigma_up


@torch.no_grad()
def sample_euler(x, sigs, i, model, sig_data=0.66):
    """One Euler step of the probability-flow ODE from `sigs[i]` to `sigs[i+1]`."""
    sig, sig2 = sigs[i], sigs[i + 1]
    return x + (x - denoise_karras(model, x, sig, sig_data)) / sig * (sig2 - sig)


@torch.no_grad()
def sample_euler_ancestral(x, sigs, i, model, eta=1., sig_data=0.66):
    """An Euler step down to `sigma_down`, then fresh noise of size `sigma_up` (`get_ancestral_step`)."""
    sig, sig2 = sigs[i], sigs[i + 1]
    denoised = denoise_karras(model, x, sig, sig_data)
    sigma_down, sigma_up = get_ancestral_step(sig, sig2, eta=eta)
    x = x + (x - denoised) / sig * (sigma_down - sig)
    return x + torch.randn_like(x) * sigma_up


@torch.no_grad()
def sample_heun(x, sigs, i, model, s_churn=0., s_tmin=0., s_tmax=float('inf'), s_noise=1., sig_data=0.66):
    """One Heun (second-order) step, Karras et al.'s Algorithm 2: with `s_churn`, noise is first added to raise
    σ by a factor up to √2 for levels in [`s_tmin`, `s_tmax`], and the step starts from that raised level (as in
    the paper; the course's notebook denoises at the level before the raise). The last step (to σ=0) is Euler's."""
    sig, sig2 = sigs[i], sigs[i + 1]
    gamma = min(s_churn / (len(sigs) - 1), 2 ** 0.5 - 1) if s_tmin <= sig <= s_tmax else 0.
    sigma_hat = sig * (gamma + 1)
    if gamma > 0: x = x + torch.randn_like(x) * s_noise * (sigma_hat ** 2 - sig ** 2) ** 0.5
    d = (x - denoise_karras(model, x, sigma_hat, sig_data)) / sigma_hat    # x is now at level sigma_hat
    dt = sig2 - sigma_hat
    x_2 = x + d * dt
    if sig2 == 0: return x_2
    d_2 = (x_2 - denoise_karras(model, x_2, sig2, sig_data)) / sig2
    return x + (d + d_2) / 2 * dt


def linear_multistep_coeff(order, t, i, j):
    """The weight of the derivative `j` steps back in an `order`-step linear multistep update from `t[i]` to
    `t[i+1]`: the integral over that interval of the Lagrange polynomial that is 1 at `t[i-j]` and 0 at the
    other `order-1` points (computed exactly, as a polynomial)."""
    if order - 1 > i: raise ValueError(f'Order {order} too high for step {i}')
    pts = [float(t[i - k]) for k in range(order)]
    poly = np.polynomial.Polynomial([1.])
    for k in range(order):
        if k != j: poly *= np.polynomial.Polynomial([-pts[k], 1.]) / (pts[j] - pts[k])
    integral = poly.integ()
    return float(integral(float(t[i + 1])) - integral(float(t[i])))


def _karras_start(model, sz, steps, sigma_max):
    dev = _device(model)
    return torch.randn(sz).to(dev) * sigma_max, sigmas_karras(steps, sigma_max=sigma_max, device=dev)


@torch.no_grad()
def sample_lms(model, sz, steps=100, order=4, sigma_max=80., sig_data=0.66, show_progress=True):
    """Images of shape `sz` by the linear multistep method on Karras noise levels (`steps` model calls, each step
    using up to `order` past derivatives); returns the image after each step."""
    x, sigs = _karras_start(model, sz, steps, sigma_max)
    ds, preds = [], []
    for i in _progress(range(len(sigs) - 1), show_progress):
        sig = sigs[i]
        ds = (ds + [(x - denoise_karras(model, x, sig, sig_data)) / sig])[-order:]
        cur = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur, sigs, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
        preds.append(x)
    return preds


def sample_karras(sampler, model, sz, steps=100, sigma_max=80., show_progress=True, **kwargs):
    """Images of shape `sz` from noise of size `sigma_max` down `sigmas_karras(steps)`, one `sampler` step
    (`sample_euler`, `sample_euler_ancestral`, `sample_heun`) per level; returns the image after each step."""
    x, sigs = _karras_start(model, sz, steps, sigma_max)
    preds = []
    for i in _progress(range(len(sigs) - 1), show_progress):
        x = sampler(x, sigs, i, model, **kwargs)
        preds.append(x)
    return preds
