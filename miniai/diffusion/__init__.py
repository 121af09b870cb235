"""Denoising diffusion on small images: noise schedules, noising and its loaders, a timestep-conditioned U-Net with
self-attention, and DDPM, DDIM and Karras samplers.

These are the helpers of the course's diffusion lessons ("Practical Deep Learning for Coders, part 2", 2022, by
Jeremy Howard et al.). A diffusion model here is an ordinary model that takes a tuple `(noised images, t)` and
predicts the noise (or, for the Karras recipe, a scaled target), so it trains with a plain `Learner`, MSE loss and
the usual callbacks: the collate function (`collate_ddpm`) does the noising, batch by batch.

The main names are the course's (`from miniai.diffusion import *` gives the same ones, with the same signatures):

- the cosine schedule on continuous time `t` in [0, 1]: `abar`, `inv_abar`; `noisify`, `collate_ddpm`, `dl_ddpm`;
- the U-Net: `timestep_embedding`, `pre_conv`, `upsample`, `lin`, `SelfAttention`, `SelfAttention2D`,
  `EmbResBlock`, `saved`, `DownBlock`, `UpBlock`, `EmbUNetModel`;
- DDIM sampling: `ddim_step`, `sample`, `cond_sample`.

Besides those, the schedules and samplers the course's notebooks write for themselves, under their own names:
`linear_sched` and `cos_sched` (discrete DDPM schedules, and `sample_ddpm` for them), and the Karras et al. (2022,
"Elucidating the Design Space of Diffusion-Based Generative Models") recipe: `sigmas_karras`, `scalings`,
`noisify_karras`, `denoise_karras`, `sample_euler`, `sample_euler_ancestral`, `sample_heun`, `sample_lms` and
`sample_karras`.

How the course's diffusion notebooks use these, and where they differ from them: docs/course.md.
"""
from __future__ import annotations

from .sampling import (
    cond_sample,
    ddim_step,
    denoise_karras,
    get_ancestral_step,
    linear_multistep_coeff,
    sample,
    sample_ddpm,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_karras,
    sample_lms,
)
from .schedules import (
    abar,
    collate_ddpm,
    cos_sched,
    dl_ddpm,
    inv_abar,
    linear_sched,
    noisify,
    noisify_karras,
    scalings,
    sigmas_karras,
)
from .unet import (
    DownBlock,
    EmbResBlock,
    EmbUNetModel,
    SelfAttention,
    SelfAttention2D,
    UpBlock,
    lin,
    pre_conv,
    saved,
    timestep_embedding,
    upsample,
)

__all__ = ['abar', 'inv_abar', 'noisify', 'collate_ddpm', 'dl_ddpm', 'timestep_embedding', 'pre_conv', 'upsample',
           'lin', 'SelfAttention', 'SelfAttention2D', 'EmbResBlock', 'saved', 'DownBlock', 'UpBlock', 'EmbUNetModel',
           'ddim_step', 'sample', 'cond_sample',
           'linear_sched', 'cos_sched', 'sample_ddpm',
           'sigmas_karras', 'scalings', 'noisify_karras', 'denoise_karras', 'get_ancestral_step', 'sample_euler',
           'sample_euler_ancestral', 'sample_heun', 'linear_multistep_coeff', 'sample_lms', 'sample_karras']
