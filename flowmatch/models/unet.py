"""A U-Net velocity model v_theta(x, t, y) for images.

flowmatch's data are flat (N, D) arrays everywhere, so the model is called like every other
velocity model, ``model(x, t, y=None)`` with x of shape (batch, C*H*W), and returns a tensor shaped
like x. Internally x is reshaped to (batch, C, H, W) with ``image_shape`` (C, H, W).

Architecture (a small DDPM/ADM-style U-Net)
-------------------------------------------
Conditioning vector, one per example, of width E = 4 * channels::

    e = MLP(sinusoidal(t)) + Embed(y)       MLP = Linear(channels, E), SiLU, Linear(E, E)

with the same sinusoidal features as the MLP model, [cos(1000 t w_k), sin(1000 t w_k)],
w_k = 10000^(-k / (channels / 2)). Labels y take values 0..num_classes-1; index ``num_classes`` is a
learned *null label*, used when y is None and for classifier-free guidance dropout (the class
embedding only exists when ``num_classes > 0``).

With ``times=2`` the model is MeanFlow's average velocity u(x, r, t) over [r, t], x at time r <= t
(see :mod:`flowmatch.models.mlp`), called as ``model(x, t, y, r=r)``; it embeds (r, t - r), the time of
x and the interval's length, through two time MLPs whose outputs add::

    e = MLP(sinusoidal(r)) + MLP'(sinusoidal(t - r)) + Embed(y)

with the features at time scale 1 (angles t w_k, not 1000 t w_k; ``time_scale``, as the MLP explains),
and with r left out (r = t) it is the velocity field u(x, t, t) = v(x, t).

Residual block ResBlock(c_in -> c_out), with GroupNorm GN (``norm_groups(c)`` = gcd(c, 8) groups)::

    h = Conv3x3(SiLU(GN(x)))
    h = h + Linear(SiLU(e))[:, :, None, None]
    h = Conv3x3(Dropout(SiLU(GN(h))))
    out = Skip(x) + h                      Skip = identity, or Conv1x1 when c_in != c_out

Self-attention block (at the resolutions listed in ``attention_resolutions``)::

    out = x + Conv1x1(MultiHeadAttention(GN(x) over the H*W positions))

Layout, with levels l = 0..L-1 of width channels * channel_mult[l] and resolution (H, W) / 2^l::

    Conv3x3(C -> channels)
    down:   at each level, num_res_blocks x [ResBlock (+ Attention)], then Downsample
            (Conv3x3 stride 2) except at the last level; every output is kept as a skip
    middle: ResBlock, Attention (if the lowest resolution is listed), ResBlock
    up:     at each level, from the last, (num_res_blocks + 1) x [concat skip, ResBlock (+ Attention)],
            then Upsample (nearest x2, Conv3x3) except at level 0
    out:    GN, SiLU, Conv3x3(channels -> C), initialised to zero so that v = 0 at initialisation

A resolution r is "listed" when r in attention_resolutions, where r = H / 2^l (the image height at
that level). H and W must be divisible by 2^(L-1).

Cost. The defaults (channels 16, channel_mult (1, 2), one residual block per level, no attention)
suit 8x8 digits on a CPU; channels = 32 quadruples the convolution cost, which is why the default is
16 (figures: bench/results/design-figures.md). For 3x32x32 images use more: e.g. channels 64, channel_mult (1, 2, 2),
num_res_blocks 2, attention_resolutions (16, 8), attention_heads 4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from flowmatch.errors import FlowmatchError


def norm_groups(channels: int) -> int:
    """GroupNorm group count for ``channels``: gcd(channels, 8) (8 groups for multiples of 8)."""
    return math.gcd(channels, 8)


def _time_features(t, x: torch.Tensor, dim: int, max_period: float = 10_000.0, scale: float = 1000.0) -> torch.Tensor:
    """(batch, dim) features [cos(s t w_k), sin(s t w_k)] (s = ``scale``) for a scalar, 0-d or (batch,) t.

    Same formula as ``flowmatch.models.sinusoidal_embedding`` (kept here so the two modules do not
    import each other).
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1)
    if t.shape[0] not in (1, x.shape[0]):
        raise FlowmatchError(f"t must be a scalar or have one time per example ({x.shape[0]}), got shape {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=x.dtype, device=x.device) / half)
    angles = scale * t * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).expand(x.shape[0], 2 * half)


class ResBlock(nn.Module):
    """x -> Skip(x) + Conv(Dropout(SiLU(GN(Conv(SiLU(GN(x))) + W e)))) (see the module docstring)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(norm_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(e))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """x + Conv1x1(MultiHeadSelfAttention(GN(x))) over the H*W positions."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(norm_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # (b, heads, positions, head_dim) for scaled dot-product attention
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Conv3x3 with stride 2: (H, W) -> (H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then Conv3x3: (H, W) -> (2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _int_tuple(value, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, str)) or not isinstance(value, Sequence):
        raise FlowmatchError(f"unet: {name} must be a list of integers, got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise FlowmatchError(f"unet: {name} must be a list of integers, got {list(value)!r}")
    return tuple(int(v) for v in value)


def _resolve_image_shape(dim: int, image_shape) -> tuple[int, int, int]:
    """(C, H, W) from the option, or (1, s, s) when dim = s^2 and no shape is given."""
    if image_shape is None:
        side = math.isqrt(dim) if dim > 0 else 0
        if side * side != dim or side == 0:
            raise FlowmatchError(f"unet: data of dimension {dim} is not a square single-channel image; give image_shape (C, H, W)")
        return (1, side, side)
    shape = _int_tuple(image_shape, "image_shape")
    if len(shape) != 3 or min(shape) < 1:
        raise FlowmatchError(f"unet: image_shape must be three positive integers (C, H, W), got {list(shape)}")
    if math.prod(shape) != dim:
        raise FlowmatchError(f"unet: image_shape {list(shape)} has {math.prod(shape)} values but the data have dimension {dim}")
    return shape


class UNet(nn.Module):
    """U-Net velocity model on flat images; see the module docstring for the architecture.

    Options (all stored in ``self.config``, so ``build_model("unet", dim, **options)`` rebuilds it):

    - ``image_shape``: (C, H, W) with C*H*W = dim; default (1, s, s) when dim = s^2.
    - ``channels``: width of the first level (default 16; see the timing note in the module docstring).
    - ``channel_mult``: width multiplier per level (default (1, 2): two levels, H and H/2).
    - ``num_res_blocks``: residual blocks per level on the way down (default 1; one more on the way up).
    - ``attention_resolutions``: image heights at which to add self-attention (default (): none).
    - ``attention_heads``: heads of each attention block (must divide the channels there; default 1).
    - ``dropout``: dropout rate inside the residual blocks (default 0).
    - ``num_classes``: number of labels (0 = unconditional); label ``num_classes`` is the null label.
    - ``times``: 1 for v(x, t), 2 for MeanFlow's u(x, r, t) (module docstring); kept in ``config``
      only when 2, so a one-time model's config is as before.
    - ``time_scale``: the factor of t in the sinusoidal features (default 1000 for one time, 1 for
      two); kept in ``config`` when it is not 1000.
    """

    def __init__(
        self,
        dim: int,
        image_shape: Sequence[int] | None = None,
        channels: int = 16,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (),
        attention_heads: int = 1,
        dropout: float = 0.0,
        num_classes: int = 0,
        times: int = 1,
        time_scale: float | None = None,
    ):
        super().__init__()
        if isinstance(times, bool) or times not in (1, 2):
            raise FlowmatchError(f"unet: times must be 1 (v(x, t)) or 2 (u(x, r, t)), got {times!r}")
        if time_scale is None:
            time_scale = 1000.0 if times == 1 else 1.0
        if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) or not (math.isfinite(time_scale) and time_scale > 0):
            raise FlowmatchError(f"unet: time_scale must be a positive number, got {time_scale!r}")
        time_scale = float(time_scale)
        shape = _resolve_image_shape(dim, image_shape)
        mult = _int_tuple(channel_mult, "channel_mult")
        attn_res = _int_tuple(attention_resolutions, "attention_resolutions")
        for name, value, low in (
            ("channels", channels, 1),
            ("num_res_blocks", num_res_blocks, 1),
            ("attention_heads", attention_heads, 1),
            ("num_classes", num_classes, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FlowmatchError(f"unet: {name} must be an integer >= {low}, got {value!r}")
        if channels % 2:
            raise FlowmatchError(f"unet: channels must be even (its time embedding pairs sines with cosines), got {channels}")
        if not mult or min(mult) < 1:
            raise FlowmatchError(f"unet: channel_mult must be a non-empty list of positive integers, got {list(mult)}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise FlowmatchError(f"unet: dropout must be a number in [0, 1), got {dropout!r}")
        c, h, w = shape
        factor = 2 ** (len(mult) - 1)
        if h % factor or w % factor:
            raise FlowmatchError(
                f"unet: {len(mult)} levels halve the image {len(mult) - 1} times, so H and W must be divisible "
                f"by {factor}; got image_shape {list(shape)}"
            )
        resolutions = [h // 2**level for level in range(len(mult))]
        unknown = sorted(set(attn_res) - set(resolutions))
        if unknown:
            raise FlowmatchError(f"unet: attention_resolutions {unknown} are not resolutions of this U-Net ({resolutions})")
        for level, r in enumerate(resolutions):
            if r in attn_res and (channels * mult[level]) % attention_heads:
                raise FlowmatchError(
                    f"unet: attention_heads ({attention_heads}) must divide the {channels * mult[level]} channels at resolution {r}"
                )

        self.config = {
            "name": "unet",
            "image_shape": list(shape),
            "channels": channels,
            "channel_mult": list(mult),
            "num_res_blocks": num_res_blocks,
            "attention_resolutions": list(attn_res),
            "attention_heads": attention_heads,
            "dropout": float(dropout),
            "num_classes": num_classes,
        }
        if times == 2:
            self.config["times"] = times
        if time_scale != 1000.0:
            self.config["time_scale"] = time_scale
        self.time_scale = time_scale
        self.image_shape = shape
        self.num_classes = num_classes
        self.channels = channels
        emb_dim = 4 * channels

        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.interval_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)) if times == 2 else None
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

        self.conv_in = nn.Conv2d(c, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [channels]
        ch = channels
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                block = nn.ModuleList([ResBlock(ch, channels * m, emb_dim, dropout)])
                ch = channels * m
                if resolutions[level] in attn_res:
                    block.append(Attention(ch, attention_heads))
                self.down.append(block)
                skip_channels.append(ch)
            if level < len(mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skip_channels.append(ch)

        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout)])
        if resolutions[-1] in attn_res:
            self.mid.append(Attention(ch, attention_heads))
        self.mid.append(ResBlock(ch, ch, emb_dim, dropout))

        self.up = nn.ModuleList()
        for level in reversed(range(len(mult))):
            for i in range(num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(ch + skip_channels.pop(), channels * mult[level], emb_dim, dropout)])
                ch = channels * mult[level]
                if resolutions[level] in attn_res:
                    block.append(Attention(ch, attention_heads))
                if level > 0 and i == num_res_blocks:
                    block.append(Upsample(ch))
                self.up.append(block)
        assert not skip_channels

        self.norm_out = nn.GroupNorm(norm_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, c, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        assert self.conv_out.bias is not None  # nn.Conv2d has a bias by default
        nn.init.zeros_(self.conv_out.bias)

    def embedding(self, x: torch.Tensor, t, y: torch.Tensor | None, r=None) -> torch.Tensor:
        """The conditioning vector e = MLP(sinusoidal(t)) [+ Embed(y)], shape (batch, 4 * channels);
        for ``times=2``, e = MLP(sinusoidal(r)) + MLP'(sinusoidal(t - r)) [+ Embed(y)] (r None: r = t)."""
        if self.interval_mlp is None:
            if r is not None:
                raise FlowmatchError("unet: this model takes one time, v(x, t); build it with times=2 for u(x, r, t)")
            e = self.time_mlp(_time_features(t, x, self.channels, scale=self.time_scale))
        else:
            t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
            r = t if r is None else torch.as_tensor(r, dtype=x.dtype, device=x.device)
            e = self.time_mlp(_time_features(r, x, self.channels, scale=self.time_scale))
            e = e + self.interval_mlp(_time_features(t - r, x, self.channels, scale=self.time_scale))
        if self.label_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            y = torch.as_tensor(y, device=x.device).reshape(-1)
            if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
                raise FlowmatchError(f"unet: labels must be integers, got dtype {y.dtype}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
                raise FlowmatchError(
                    f"unet: labels must lie in 0..{self.num_classes} ({self.num_classes} = the null label), "
                    f"got values from {int(y.min())} to {int(y.max())}"
                )
            e = e + self.label_emb(y.long().expand(x.shape[0]))
        return e

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None, *, r=None) -> torch.Tensor:
        """v(x, t), or for ``times=2`` u(x, r, t) with x at time r (r left out: r = t, u(x, t, t) = v(x, t))."""
        batch = x.shape[0]
        if x.ndim != 2 or x.shape[1] != math.prod(self.image_shape):
            raise FlowmatchError(f"unet: expected flat images of shape (batch, {math.prod(self.image_shape)}), got {tuple(x.shape)}")
        e = self.embedding(x, t, y, r)
        h = self.conv_in(x.reshape(batch, *self.image_shape))
        skips = [h]
        for block in self.down:
            for layer in cast(nn.ModuleList, block):
                h = layer(h, e) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, e) if isinstance(layer, ResBlock) else layer(h)
        for block in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in cast(nn.ModuleList, block):
                h = layer(h, e) if isinstance(layer, ResBlock) else layer(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h.reshape(batch, -1)
