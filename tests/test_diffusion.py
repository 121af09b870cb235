"""Diffusion helpers: noising, schedules against their formulas, the U-Net's shapes and training, and samplers that
recover the data when the model is perfect."""
import copy
import io
import math
import warnings
from functools import partial

import pytest
import torch
from torch import nn, optim
from torch.optim import lr_scheduler

from miniai.diffusion import (
    DownBlock,
    EmbResBlock,
    EmbUNetModel,
    SelfAttention,
    SelfAttention2D,
    UpBlock,
    abar,
    collate_ddpm,
    cond_sample,
    cos_sched,
    ddim_step,
    denoise_karras,
    dl_ddpm,
    inv_abar,
    lin,
    linear_multistep_coeff,
    linear_sched,
    noisify,
    noisify_karras,
    pre_conv,
    sample,
    sample_ddpm,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_karras,
    sample_lms,
    saved,
    scalings,
    sigmas_karras,
    timestep_embedding,
    upsample,
)


# ------------------------------------------------------------------------------------------------------ noising
def test_noisify_at_t0_returns_the_input_and_at_t1_the_noise():
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    (xt, t), eps = noisify(x0, t=0.)
    assert torch.equal(xt, x0) and torch.equal(t, torch.zeros(6))
    (xt, t), eps = noisify(x0, t=1.)
    assert torch.allclose(xt, eps, atol=1e-6) and eps.std() > 0.5


def test_noisify_mixes_signal_and_noise_by_abar_at_random_times():
    torch.manual_seed(0)
    x0 = torch.rand(512, 1, 4, 4)
    (xt, t), eps = noisify(x0)
    assert t.shape == (512,) and 0 <= t.min() and t.max() <= 0.999 and t.std() > 0.2   # uniform-ish, per image
    a = abar(t)[:, None, None, None]
    assert torch.allclose(xt, a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-6)
    assert abs(eps.mean()) < 0.05 and abs(eps.std() - 1) < 0.05


def test_collate_ddpm_and_dl_ddpm_give_noised_batches():
    rows = [{'image': torch.full((1, 4, 4), float(i)), 'label': i} for i in range(10)]
    (xt, t), eps = collate_ddpm(rows)
    assert xt.shape == eps.shape == (10, 1, 4, 4) and t.shape == (10,)
    (xt, t), eps = collate_ddpm([(r['image'], r['label']) for r in rows], xl=0)     # tuple rows
    assert xt.shape == (10, 1, 4, 4)
    batches = list(dl_ddpm(rows, bs=4, num_workers=0))
    assert [len(b[1]) for b in batches] == [4, 4, 2]


# ---------------------------------------------------------------------------------------------------- schedules
def test_cosine_abar_and_its_inverse():
    t = torch.linspace(0, 1, 11)
    assert torch.allclose(abar(t), torch.cos(t * math.pi / 2) ** 2)
    assert torch.allclose(inv_abar(abar(t[:-1])), t[:-1], atol=1e-3)


def test_linear_schedule_is_the_running_product_of_one_minus_beta():
    s = linear_sched(betamin=0.001, betamax=0.02, n_steps=50)
    beta = [0.001 + (0.02 - 0.001) * i / 49 for i in range(50)]
    prod, want = 1., []
    for b in beta: prod *= 1 - b; want.append(prod)
    assert torch.allclose(s.a, 1 - torch.tensor(beta), atol=1e-6)
    assert torch.allclose(s.abar, torch.tensor(want), atol=1e-5)
    assert torch.allclose(s.sig ** 2, torch.tensor(beta), atol=1e-6)


def test_discrete_cosine_schedule_matches_the_closed_form():
    T = 40
    s = cos_sched(T)
    assert torch.allclose(s.abar, torch.cos(torch.arange(T) / T * math.pi / 2) ** 2, atol=1e-6)
    assert torch.allclose(s.a.cumprod(0), s.abar, atol=1e-5)          # α_t = ᾱ_t/ᾱ_{t-1}
    assert s.a[0] == 1 and s.sig[0] == 0 and not s.sig.isnan().any()


def test_karras_sigmas_are_evenly_spaced_in_sigma_to_the_one_over_rho():
    s = sigmas_karras(10, sigma_min=0.02, sigma_max=50., rho=7.)
    assert len(s) == 11 and s[-1] == 0
    assert torch.isclose(s[0], torch.tensor(50.)) and torch.isclose(s[-2], torch.tensor(0.02))
    steps = (s[:-1] ** (1 / 7)).diff()
    assert torch.allclose(steps, steps[0].expand(9), atol=1e-5) and (steps < 0).all()


def test_karras_scalings_give_unit_input_and_recover_the_image():
    sig = torch.tensor([0.01, 0.5, 3., 80.])
    c_skip, c_out, c_in = scalings(sig, sig_data=0.5)
    assert torch.allclose(c_in ** 2 * (sig ** 2 + 0.25), torch.ones(4))
    torch.manual_seed(0)
    x0 = torch.rand(16, 1, 4, 4) * 2 - 1
    (inp, sig), target = noisify_karras(x0, sig_data=0.5)
    sig4 = sig[:, None, None, None]
    c_skip, c_out, c_in = scalings(sig4, 0.5)
    assert torch.allclose(c_skip * inp / c_in + c_out * target, x0, atol=1e-4)    # denoised = c_skip·x + c_out·F


def test_linear_multistep_coefficients_integrate_the_lagrange_basis():
    t = torch.tensor([10., 6., 3., 1.5, 0.5])
    assert math.isclose(linear_multistep_coeff(1, t, 2, 0), float(t[3] - t[2]), rel_tol=1e-9)
    coeffs = [linear_multistep_coeff(3, t, 3, j) for j in range(3)]
    assert math.isclose(sum(coeffs), float(t[4] - t[3]), rel_tol=1e-9)   # the basis polynomials sum to 1
    # against a numerical integral of the basis polynomial for the point one step back
    pts = [float(t[3]), float(t[2]), float(t[1])]
    xs = torch.linspace(float(t[3]), float(t[4]), 20001, dtype=torch.float64)
    basis = (xs - pts[0]) * (xs - pts[2]) / ((pts[1] - pts[0]) * (pts[1] - pts[2]))
    assert math.isclose(coeffs[1], float(torch.trapezoid(basis, xs)), rel_tol=1e-6)
    with pytest.raises(ValueError, match='Order 3 too high'): linear_multistep_coeff(3, t, 1, 0)


# ---------------------------------------------------------------------------------------------------- the U-Net
def test_timestep_embedding_is_sines_then_cosines():
    t = torch.tensor([0., 1., 2.5])
    e = timestep_embedding(t, 8)
    assert e.shape == (3, 8)
    assert torch.allclose(e[0], torch.tensor([0.] * 4 + [1.] * 4))
    assert torch.allclose(e[:, 0], t.sin()) and torch.allclose(e[:, 4], t.cos())    # the first frequency is 1
    assert torch.allclose(e[:, 3], (t / 10000).sin(), atol=1e-7)                    # the last is 1/max_period
    odd = timestep_embedding(t, 9)
    assert odd.shape == (3, 9) and (odd[:, -1] == 0).all()


def test_layer_helpers_put_norm_and_activation_first():
    c = pre_conv(4, 8, norm=nn.BatchNorm2d)
    assert [type(m) for m in c] == [nn.BatchNorm2d, nn.SiLU, nn.Conv2d] and c[-1].stride == (1, 1)
    assert [type(m) for m in pre_conv(4, 8, act=None)] == [nn.Conv2d]
    assert [type(m) for m in lin(4, 8, norm=nn.BatchNorm1d)] == [nn.BatchNorm1d, nn.SiLU, nn.Linear]
    assert upsample(3)(torch.zeros(1, 3, 4, 4)).shape == (1, 3, 8, 8)


def _attention_by_hand(a, x):
    """Multi-head attention written out: head h uses columns [3·d·h, 3·d·(h+1)) of qkv, split into q, k, v."""
    n, c, s = x.shape
    z = a.qkv(a.norm(x.transpose(1, 2)))
    d = c // a.nheads
    heads = []
    for h in range(a.nheads):
        q, k, v = z[..., 3 * d * h:3 * d * (h + 1)].chunk(3, dim=-1)
        heads.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1) @ v)
    return a.proj(torch.cat(heads, dim=-1)).transpose(1, 2)


def test_self_attention_matches_a_direct_computation():
    torch.manual_seed(0)
    a = SelfAttention(8, attn_chans=2)
    x = torch.randn(3, 8, 5)
    assert a.nheads == 4
    assert torch.allclose(a(x), _attention_by_hand(a, x), atol=1e-5)
    a2 = SelfAttention2D(8, 4)
    img = torch.randn(2, 8, 3, 3)
    assert torch.allclose(a2(img), _attention_by_hand(a2, img.reshape(2, 8, 9)).reshape(2, 8, 3, 3), atol=1e-5)
    with pytest.raises(ValueError, match='multiple of attn_chans'): SelfAttention(10, 4)


def test_emb_res_block_uses_the_embedding_and_attention():
    torch.manual_seed(0)
    blk = EmbResBlock(n_emb=6, ni=4, nf=8, attn_chans=4).eval()
    x = torch.randn(2, 4, 6, 6)
    e1, e2 = torch.randn(2, 6), torch.randn(2, 6)
    assert blk(x, e1).shape == (2, 8, 6, 6)
    assert not torch.allclose(blk(x, e1), blk(x, e2))          # the timestep changes the output
    assert isinstance(blk.attn, SelfAttention2D) and EmbResBlock(6, 4).attn is None


def test_down_block_saves_every_output_for_the_up_block():
    down = DownBlock(n_emb=6, ni=4, nf=8, num_layers=2)
    out = down(torch.randn(2, 4, 8, 8), torch.randn(2, 6))
    assert out.shape == (2, 8, 4, 4)
    assert [tuple(o.shape) for o in down.saved] == [(2, 8, 8, 8), (2, 8, 8, 8), (2, 8, 4, 4)]
    up = UpBlock(n_emb=6, ni=4, prev_nf=8, nf=8, num_layers=2)
    skips = [torch.randn(2, 4, 4, 4), torch.randn(2, 8, 4, 4)]
    assert up(torch.randn(2, 8, 4, 4), torch.randn(2, 6), skips).shape == (2, 8, 8, 8) and skips == []
    m = saved(nn.Identity(), down)
    down.saved = []
    m(torch.ones(1))
    assert len(down.saved) == 1


def _tiny_unet(**kw):
    return EmbUNetModel(in_channels=1, out_channels=1, nfs=(8, 16, 16), num_layers=1, attn_chans=4, **kw)


def test_unet_maps_images_to_images_and_pickles_whole():
    torch.manual_seed(0)
    model = _tiny_unet().eval()
    x, t = torch.randn(3, 1, 16, 16), torch.rand(3)
    out = model((x, t))
    assert out.shape == x.shape
    assert any(isinstance(m, SelfAttention2D) for m in model.modules())
    assert model((x, torch.rand(1))).shape == x.shape                     # one t for the whole batch
    buf = io.BytesIO()
    torch.save(model, buf)                                                # torch.save(learn.model, ...) works
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert torch.allclose(again((x, t)), out) and torch.allclose(copy.deepcopy(model)((x, t)), out)


def test_a_tiny_diffusion_unet_trains_with_the_learner_and_course_callbacks():
    from miniai.accel import MixedPrecision
    from miniai.datasets import DataLoaders
    from miniai.learner import DeviceCB, Learner, MetricsCB
    from miniai.sgd import BatchSchedCB
    torch.manual_seed(0)
    rows = [{'image': torch.rand(1, 16, 16) * 2 - 1, 'label': 0} for _ in range(16)]
    dls = DataLoaders(dl_ddpm(rows, bs=8, num_workers=0), dl_ddpm(rows[:8], bs=8, num_workers=0))
    model = _tiny_unet()
    before = [p.detach().clone() for p in model.parameters()]
    lr, epochs = 1e-2, 1
    sched = partial(lr_scheduler.OneCycleLR, max_lr=lr, total_steps=epochs * len(dls.train))
    cbs = [DeviceCB(), MixedPrecision(), MetricsCB(), BatchSchedCB(sched)]
    learn = Learner(model, dls, nn.MSELoss(), lr=lr, cbs=cbs, opt_func=partial(optim.Adam, eps=1e-5))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')      # off CUDA, torch warns that it turns float16 autocast off
        learn.fit(epochs)
    assert torch.isfinite(learn.loss)
    changed = [not torch.equal(b, p.detach().cpu()) for b, p in zip(before, model.parameters())]
    assert sum(changed) > len(changed) // 2


# ----------------------------------------------------------------------------------------------------- sampling
X_STAR = torch.linspace(-0.8, 0.8, 16).reshape(1, 1, 4, 4)     # the whole "data set": one image


class OracleNoise(nn.Module):
    """The exact noise predictor for data that is always X_STAR, on the cosine schedule (t in [0, 1])."""
    def __init__(self, ab=abar): super().__init__(); self.ab = ab; self.w = nn.Parameter(torch.zeros(1))

    def forward(self, inp):
        x, t = inp[0], inp[1]
        a = self.ab(t).reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * X_STAR) / (1 - a).clamp(min=1e-12).sqrt()    # (t=0 has no noise to find)


def test_ddim_sampling_with_a_perfect_model_returns_the_data():
    torch.manual_seed(0)
    model = OracleNoise().train()
    for eta in (0., 1.):
        preds = sample(ddim_step, model, (5, 1, 4, 4), steps=6, eta=eta)
        assert len(preds) == 6 and preds[-1].shape == (5, 1, 4, 4)
        assert torch.allclose(preds[-1], X_STAR.expand(5, 1, 4, 4), atol=1e-4)
    assert model.training                                      # sampling puts the model's mode back


def test_ddim_step_without_eta_is_deterministic_and_clamps():
    x_t, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    ab, ab1 = torch.tensor([0.3]), torch.tensor([0.6])
    x0a, xa = ddim_step(x_t, noise, ab, ab1, 1 - ab, 1 - ab1, eta=0., sig=0.5)
    x0b, xb = ddim_step(x_t, noise, ab, ab1, 1 - ab, 1 - ab1, eta=0., sig=0.5)
    assert torch.equal(xa, xb) and x0a.abs().max() <= 1
    assert x0a.abs().max() < ddim_step(x_t, noise, ab, ab1, 1 - ab, 1 - ab1, 0., 0., clamp=False)[0].abs().max()


def test_cond_sample_passes_the_class_to_the_model():
    seen = []

    class Cond(OracleNoise):
        def forward(self, inp): seen.append(inp[2]); return super().forward(inp[:2])

    preds = cond_sample(3, ddim_step, Cond(), (4, 1, 4, 4), steps=3)
    assert len(preds) == 3 and all(torch.equal(c, torch.full((4,), 3, dtype=torch.int32)) for c in seen)


def test_ddpm_sampling_over_a_discrete_schedule_returns_the_data():
    torch.manual_seed(0)
    for sched in (linear_sched(betamax=0.05, n_steps=30), cos_sched(30)):
        model = OracleNoise(ab=lambda t, s=sched: s.abar[t])
        preds = sample_ddpm(model, (3, 1, 4, 4), sched, show_progress=False)
        assert len(preds) == 30 and torch.allclose(preds[-1], X_STAR.expand(3, 1, 4, 4), atol=1e-3)


class OracleKarras(nn.Module):
    """The exact Karras-recipe model for data that is always X_STAR: it outputs the target (X* - c_skip·x)/c_out."""
    def __init__(self): super().__init__(); self.w = nn.Parameter(torch.zeros(1))

    def forward(self, inp):
        xin, sig = inp
        sig = sig.reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in = scalings(sig)
        return (X_STAR - c_skip * xin / c_in) / c_out


@pytest.mark.parametrize('sampler,kw', [(sample_euler, {}), (sample_euler_ancestral, {'eta': 1.}),
                                        (sample_heun, {}), (sample_heun, {'s_churn': 0.5})])
def test_karras_samplers_with_a_perfect_model_return_the_data(sampler, kw):
    torch.manual_seed(0)
    preds = sample_karras(sampler, OracleKarras(), (3, 1, 4, 4), steps=8, show_progress=False, **kw)
    assert len(preds) == 8 and torch.allclose(preds[-1], X_STAR.expand(3, 1, 4, 4), atol=1e-3)


def test_lms_sampler_with_a_perfect_model_returns_the_data():
    torch.manual_seed(0)
    preds = sample_lms(OracleKarras(), (2, 1, 4, 4), steps=8, order=3, show_progress=False)
    assert len(preds) == 8 and torch.allclose(preds[-1], X_STAR.expand(2, 1, 4, 4), atol=1e-3)


def test_denoise_karras_accepts_one_sigma_for_the_batch():
    x = torch.randn(3, 1, 4, 4) * 2
    out = denoise_karras(OracleKarras(), x, torch.tensor(2.))
    assert torch.allclose(out, X_STAR.expand(3, 1, 4, 4), atol=1e-5)


def test_a_trained_unet_samples_the_right_shape():
    model = _tiny_unet()
    model((torch.randn(4, 1, 16, 16), torch.rand(4)))            # a training-mode pass: BatchNorm statistics
    preds = sample(ddim_step, model, (2, 1, 16, 16), steps=2)
    assert [p.shape for p in preds] == [(2, 1, 16, 16)] * 2 and torch.isfinite(preds[-1]).all()
