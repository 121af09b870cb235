"""The course's diffusion U-Net and its parts, from the timestep embedding to `EmbUNetModel`. Part of
`miniai.diffusion`.
docs/course.md lists where they differ from the course's notebooks."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['timestep_embedding', 'pre_conv', 'upsample', 'lin', 'SelfAttention', 'SelfAttention2D', 'EmbResBlock',
           'saved', 'DownBlock', 'UpBlock', 'EmbUNetModel']


def timestep_embedding(tsteps, emb_dim, max_period=10000):
    """Sines and cosines of `tsteps` (one value per image) at `emb_dim//2` frequencies, geometrically spaced from 1
    down to 1/`max_period`: a `(len(tsteps), emb_dim)` code in which nearby times look alike (the transformer's
    position encoding, used for the noise level). An odd `emb_dim` gets a zero last column."""
    exponent = -math.log(max_period) * torch.linspace(0, 1, emb_dim // 2, device=tsteps.device)
    emb = tsteps[:, None].float() * exponent.exp()[None, :]
    emb = torch.cat([emb.sin(), emb.cos()], dim=-1)
    return F.pad(emb, (0, 1)) if emb_dim % 2 else emb


def pre_conv(ni, nf, ks=3, stride=1, act=nn.SiLU, norm=None, bias=True):
    """`norm(ni)`, `act()`, then a `ks` Conv2d `ni`→`nf` with same padding: the pre-activation order of the
    diffusion U-Net's blocks (each layer given only when set)."""
    layers = nn.Sequential()
    if norm: layers.append(norm(ni))
    if act: layers.append(act())
    layers.append(nn.Conv2d(ni, nf, kernel_size=ks, stride=stride, padding=ks // 2, bias=bias))
    return layers


def upsample(nf):
    """Nearest-neighbour ×2 upsampling then a 3×3 conv (`nf` channels): the U-Net's way up."""
    return nn.Sequential(nn.Upsample(scale_factor=2.), nn.Conv2d(nf, nf, 3, padding=1))


def lin(ni, nf, act=nn.SiLU, norm=None, bias=True):
    """`norm(ni)`, `act()`, then `Linear(ni, nf)`: `pre_conv`'s order for the timestep MLP."""
    layers = nn.Sequential()
    if norm: layers.append(norm(ni))
    if act: layers.append(act())
    layers.append(nn.Linear(ni, nf, bias=bias))
    return layers


class SelfAttention(nn.Module):
    """Multi-head self-attention over a sequence, with a pre-LayerNorm; returns only the attention's output (the
    caller adds the residual).

    Input `(n, ni, s)` (channels first, as a flattened feature map) with `transpose=True`, else `(n, s, ni)`.
    `ni//attn_chans` heads of `attn_chans` channels each. The query, key and value of a head sit side by side
    in `qkv`'s output, so weights trained with the course's class load into this one."""
    def __init__(self, ni, attn_chans, transpose=True):
        super().__init__()
        if ni % attn_chans: raise ValueError(f"ni ({ni}) must be a multiple of attn_chans ({attn_chans})")
        self.nheads = ni // attn_chans
        self.scale = math.sqrt(ni / self.nheads)
        self.norm = nn.LayerNorm(ni)
        self.qkv = nn.Linear(ni, ni * 3)
        self.proj = nn.Linear(ni, ni)
        self.t = transpose

    def forward(self, x):
        if self.t: x = x.transpose(1, 2)
        n, s, c = x.shape
        x = self.qkv(self.norm(x)).reshape(n, s, self.nheads, -1).transpose(1, 2)   # n, heads, s, 3*head_dim
        q, k, v = x.chunk(3, dim=-1)
        x = F.scaled_dot_product_attention(q, k, v, scale=1 / self.scale)            # softmax(q·kᵀ/√d)·v
        x = self.proj(x.transpose(1, 2).reshape(n, s, c))
        return x.transpose(1, 2) if self.t else x


class SelfAttention2D(SelfAttention):
    """`SelfAttention` over the pixels of a feature map `(n, c, h, w)`; returns the same shape."""
    def forward(self, x):
        n, c, h, w = x.shape
        return super().forward(x.reshape(n, c, -1)).reshape(n, c, h, w)


class EmbResBlock(nn.Module):
    """A residual block that takes the timestep embedding: `conv1`, then a per-channel scale and shift computed from
    the embedding (`x*(1+scale) + shift`), `conv2`, plus the input (a 1×1 conv when `ni != nf`); then, with
    `attn_chans`, self-attention over the pixels added as a second residual."""
    def __init__(self, n_emb, ni, nf=None, ks=3, act=nn.SiLU, norm=nn.BatchNorm2d, attn_chans=0):
        super().__init__()
        if nf is None: nf = ni
        self.emb_proj = nn.Linear(n_emb, nf * 2)
        self.conv1 = pre_conv(ni, nf, ks, act=act, norm=norm)
        self.conv2 = pre_conv(nf, nf, ks, act=act, norm=norm)
        self.idconv = nn.Identity() if ni == nf else nn.Conv2d(ni, nf, 1)
        self.attn = SelfAttention2D(nf, attn_chans) if attn_chans else None

    def forward(self, x, t):
        inp = x
        x = self.conv1(x)
        scale, shift = self.emb_proj(F.silu(t))[:, :, None, None].chunk(2, dim=1)
        x = self.conv2(x * (1 + scale) + shift)
        x = x + self.idconv(inp)
        return x + self.attn(x) if self.attn is not None else x


class _AppendOutput:
    """A forward hook that appends a module's output to `blk.saved` (a class, not a closure, so models pickle)."""
    def __init__(self, blk): self.blk = blk
    def __call__(self, module, args, out): self.blk.saved.append(out)


def saved(m, blk):
    """`m`, made to append each output to `blk.saved` (a list `blk` resets each forward): how a `DownBlock`
    collects the activations its `UpBlock` concatenates back in."""
    m.register_forward_hook(_AppendOutput(blk))
    return m


class DownBlock(nn.Module):
    """`num_layers` `EmbResBlock`s then, with `add_down`, a stride-2 conv; every output is kept in `self.saved`
    for the U-Net's skip connections."""
    def __init__(self, n_emb, ni, nf, add_down=True, num_layers=1, attn_chans=0):
        super().__init__()
        self.resnets = nn.ModuleList([saved(EmbResBlock(n_emb, ni if i == 0 else nf, nf, attn_chans=attn_chans), self)
                                      for i in range(num_layers)])
        self.down = saved(nn.Conv2d(nf, nf, 3, stride=2, padding=1), self) if add_down else nn.Identity()

    def forward(self, x, t):
        self.saved = []
        for resnet in self.resnets: x = resnet(x, t)
        return self.down(x)


class UpBlock(nn.Module):
    """`num_layers` `EmbResBlock`s, each fed its input concatenated with the last activation popped from `ups`
    (the down path's, in reverse), then, with `add_up`, `upsample`. `prev_nf` is the incoming channel count and
    `ni` that of the skip for the block's last layer."""
    def __init__(self, n_emb, ni, prev_nf, nf, add_up=True, num_layers=2, attn_chans=0):
        super().__init__()
        self.resnets = nn.ModuleList(
            [EmbResBlock(n_emb, (prev_nf if i == 0 else nf) + (ni if i == num_layers - 1 else nf), nf,
                         attn_chans=attn_chans) for i in range(num_layers)])
        self.up = upsample(nf) if add_up else nn.Identity()

    def forward(self, x, t, ups):
        for resnet in self.resnets: x = resnet(torch.cat([x, ups.pop()], dim=1), t)
        return self.up(x)


class EmbUNetModel(nn.Module):
    """The course's diffusion U-Net: takes `(x, t)` and returns a tensor shaped like `x` (the predicted noise).

    `t` (one value per image, or a single one for the batch) goes through `timestep_embedding` and an MLP into every
    block. The down path has one `DownBlock` per entry of `nfs` (all but the last halve the resolution, so the
    image side must be divisible by 2**(len(nfs)-1)), a middle `EmbResBlock`, and an up path of `UpBlock`s with
    `num_layers+1` blocks each. Blocks from the `attn_start`-th level down (and their mirror images) add
    self-attention with heads of `attn_chans` channels (`attn_chans=0`: none)."""
    def __init__(self, in_channels=3, out_channels=3, nfs=(224, 448, 672, 896), num_layers=1, attn_chans=8,
                 attn_start=1):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, nfs[0], kernel_size=3, padding=1)
        self.n_temb = nf = nfs[0]
        n_emb = nf * 4
        self.emb_mlp = nn.Sequential(lin(self.n_temb, n_emb, norm=nn.BatchNorm1d), lin(n_emb, n_emb))
        n = len(nfs)
        self.downs = nn.ModuleList()
        for i in range(n):
            ni, nf = nf, nfs[i]
            self.downs.append(DownBlock(n_emb, ni, nf, add_down=i != n - 1, num_layers=num_layers,
                                        attn_chans=0 if i < attn_start else attn_chans))
        self.mid_block = EmbResBlock(n_emb, nfs[-1])
        rev = list(reversed(nfs))
        nf = rev[0]
        self.ups = nn.ModuleList()
        for i in range(n):
            prev_nf, nf = nf, rev[i]
            self.ups.append(UpBlock(n_emb, rev[min(i + 1, n - 1)], prev_nf, nf, add_up=i != n - 1,
                                    num_layers=num_layers + 1, attn_chans=0 if i >= n - attn_start else attn_chans))
        self.conv_out = pre_conv(nfs[0], out_channels, act=nn.SiLU, norm=nn.BatchNorm2d, bias=False)

    def forward(self, inp):
        x, t = inp
        emb = self.emb_mlp(timestep_embedding(t, self.n_temb))
        x = self.conv_in(x)
        skips = [x]
        for block in self.downs: x = block(x, emb)
        skips += [o for block in self.downs for o in block.saved]
        for block in self.downs: block.saved = []     # hold no activations between calls (and pickle cleanly)
        x = self.mid_block(x, emb)
        for block in self.ups: x = block(x, emb, skips)
        return self.conv_out(x)
