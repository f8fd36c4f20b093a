"""JiT-Text: a plain pixel-space diffusion transformer that predicts the clean image.

After "Back to Basics: Let Denoising Generative Models Denoise" (Li & He, 2025) and its
text-conditioned fork (seed 001): bottleneck patch embedding, fixed 2-D sin-cos position
embedding plus 2-D RoPE on the image tokens, RMSNorm with qk-norm, SwiGLU MLPs, adaLN-Zero
conditioned on time + text, and ``in_context_len`` copies of the text embedding prepended
as tokens from block ``in_context_start`` on.

The network owns only its trainable parts. The frozen text encoder lives outside it
(:class:`t2i.text.encoder.FrozenTextEncoder`); the network receives its pooled feature
vector (``text_dim``) and projects it to ``hidden_size``.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

_PAPER = dict(in_context_len=32, mlp_ratio=4.0)
_B = dict(depth=12, hidden_size=768, num_heads=12, bottleneck_dim=128, in_context_start=4, **_PAPER)
_L = dict(depth=24, hidden_size=1024, num_heads=16, bottleneck_dim=128, in_context_start=8, **_PAPER)
_H = dict(depth=32, hidden_size=1280, num_heads=16, bottleneck_dim=256, in_context_start=10, **_PAPER)
# CPU presets for 32 px images: /4 gives an 8x8 grid of 48-d patches, /8 a 4x4 grid of 192-d
# patches. A training step at batch 64 costs about 75 ms (T/8), 180 ms (S/8), 260 ms (T/4)
# and 600 ms (S/4) of one CPU core; two cores take roughly 0.7 of that in wall time.
_T = dict(depth=4, hidden_size=64, num_heads=2, bottleneck_dim=32, in_context_len=4, in_context_start=1, mlp_ratio=4.0)
_S = dict(depth=6, hidden_size=96, num_heads=2, bottleneck_dim=32, in_context_len=4, in_context_start=2, mlp_ratio=4.0)

JIT_PRESETS: dict[str, dict] = {
    "JiT-B/16-Text": dict(_B, patch_size=16),
    "JiT-B/32-Text": dict(_B, patch_size=32),
    "JiT-L/16-Text": dict(_L, patch_size=16),
    "JiT-L/32-Text": dict(_L, patch_size=32),
    "JiT-H/16-Text": dict(_H, patch_size=16),
    "JiT-H/32-Text": dict(_H, patch_size=32),
    "JiT-T/4-Text": dict(_T, patch_size=4),
    "JiT-T/8-Text": dict(_T, patch_size=8),
    "JiT-S/4-Text": dict(_S, patch_size=4),
    "JiT-S/8-Text": dict(_S, patch_size=8),
}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with per-sample ``shift``/``scale`` broadcast over tokens."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


class RMSNorm(nn.Module):
    """RMS normalisation computed in float32, with a learned per-channel scale."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding, ``[grid*grid, dim]``: half the channels per axis."""
    if dim % 4:
        raise ValueError(f"hidden_size {dim} must be divisible by 4 for the 2-D sin-cos embedding")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    axes = [torch.outer(pos.flatten(), omega) for pos in (cols, rows)]
    return torch.cat([f(a) for a in axes for f in (torch.sin, torch.cos)], dim=1).float()


class Rope2D(nn.Module):
    """2-D rotary embedding of the image tokens; the ``num_prefix`` in-context tokens in front stay unrotated.

    The first half of each head's channels rotates with the token's row, the second half
    with its column; channels rotate in adjacent pairs. Accepts sequences with or without
    the prefix (the image tokens are always last).
    """

    def __init__(self, head_dim: int, grid: int, num_prefix: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"head dim {head_dim} must be divisible by 4 for 2-D RoPE")
        axis_dim = head_dim // 2
        freqs = 1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float32) / axis_dim)
        per_axis = torch.outer(torch.arange(grid, dtype=torch.float32), freqs).repeat_interleave(2, dim=-1)
        angles = torch.cat([per_axis[:, None, :].expand(grid, grid, axis_dim),
                            per_axis[None, :, :].expand(grid, grid, axis_dim)], dim=-1).reshape(grid * grid, head_dim)
        angles = torch.cat([torch.zeros(num_prefix, head_dim), angles])  # angle 0: identity on the prefix
        # rotate pair (a, b) to (a cos - b sin, b cos + a sin) = x * cos + swap(x) * signed_sin
        signed_sin = angles.sin() * torch.tensor([-1.0, 1.0]).repeat(head_dim // 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("signed_sin", signed_sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, heads, L, head_dim]``, ``L`` = image tokens, optionally after the prefix."""
        L = x.shape[-2]
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        return torch.addcmul(x * self.cos[-L:].to(x.dtype), swapped, self.signed_sin[-L:].to(x.dtype))


class BottleneckPatchEmbed(nn.Module):
    """Patchify with a low-rank linear map: ``p*p*C -> bottleneck_dim -> hidden``.

    The weights are the seed's convolutions (a ``p``-strided ``p x p`` one, then a ``1 x 1`` one); they run
    as matrix products on the patches, which is the same map (cuDNN has no tensor-core kernel for a
    16-strided bf16 convolution: it took 2% of a JiT-B/16 forward on an H200).
    """

    def __init__(self, patch_size: int, in_channels: int, bottleneck_dim: int, hidden_size: int):
        super().__init__()
        self.proj1 = nn.Conv2d(in_channels, bottleneck_dim, kernel_size=patch_size, stride=patch_size, bias=False)
        self.proj2 = nn.Conv2d(bottleneck_dim, hidden_size, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.proj1.kernel_size[0]
        patches = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, -1, c * p * p)
        return F.linear(F.linear(patches, self.proj1.weight.flatten(1)), self.proj2.weight.flatten(1), self.proj2.bias)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of ``t`` (used as is, ``t`` in [0, 1]) followed by an MLP."""

    def __init__(self, hidden_size: int, freq_dim: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = RMSNorm(head_dim), RMSNorm(head_dim)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, rope: Rope2D) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = rope(self.q_norm(q)), rope(self.k_norm(k))
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, L, C)))


class SwiGLU(nn.Module):
    """SwiGLU MLP; the hidden width is 2/3 of ``hidden`` so the parameter count matches a GELU MLP."""

    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        hidden = int(hidden * 2 / 3)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.drop(F.silu(x1) * x2))


class JiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation (shift, scale, gate for attention and MLP)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, attn_drop: float, proj_drop: float):
        super().__init__()
        self.norm1 = RMSNorm(hidden_size)
        self.attn = Attention(hidden_size, num_heads, attn_drop, proj_drop)
        self.norm2 = RMSNorm(hidden_size)
        self.mlp = SwiGLU(hidden_size, int(hidden_size * mlp_ratio), proj_drop)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: Rope2D) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = torch.addcmul(x, gate1.unsqueeze(1), self.attn(modulate(self.norm1(x), shift1, scale1), rope))
        return torch.addcmul(x, gate2.unsqueeze(1), self.mlp(modulate(self.norm2(x), shift2, scale2)))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = RMSNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class JiT(ModelMixin, ConfigMixin):
    """JiT-Text network: ``forward(x_t, t, text_emb)`` predicts the clean image ``x``.

    ``x_t``: ``[N, in_channels, input_size, input_size]``; ``t``: ``[N]`` in [0, 1]
    (0 = noise, 1 = data); ``text_emb``: ``[N, text_dim]`` pooled text features.
    Dropout (``attn_dropout``, ``proj_dropout``) acts only in the middle half of the blocks.
    """

    @register_to_config
    def __init__(self, input_size: int = 32, patch_size: int = 4, in_channels: int = 3, hidden_size: int = 64,
                 depth: int = 4, num_heads: int = 2, mlp_ratio: float = 4.0, bottleneck_dim: int = 32,
                 text_dim: int = 384, in_context_len: int = 4, in_context_start: int = 1,
                 proj_dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        if in_context_len > 0 and not 0 <= in_context_start < depth:
            raise ValueError(f"in_context_start {in_context_start} must lie in [0, depth={depth})")
        grid = input_size // patch_size

        self.t_embedder = TimestepEmbedder(hidden_size)
        self.text_proj = nn.Linear(text_dim, hidden_size)
        self.x_embedder = BottleneckPatchEmbed(patch_size, in_channels, bottleneck_dim, hidden_size)
        self.register_buffer("pos_embed", sincos_2d(hidden_size, grid)[None], persistent=False)
        self.in_context_posemb = nn.Parameter(torch.zeros(1, in_context_len, hidden_size))
        self.rope = Rope2D(hidden_size // num_heads, grid, in_context_len)

        middle = range(depth // 4, depth // 4 * 3)
        self.blocks = nn.ModuleList([
            JiTBlock(hidden_size, num_heads, mlp_ratio,
                     attn_drop=attn_dropout if i in middle else 0.0, proj_drop=proj_dropout if i in middle else 0.0)
            for i in range(depth)
        ])
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Xavier-uniform linears and patch embedding, small-normal time MLP, zero adaLN and output layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for conv in (self.x_embedder.proj1, self.x_embedder.proj2):
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj2.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.in_context_posemb, std=0.02)
        for mod in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                     self.final_layer.linear]:
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, grid*grid, p*p*C] -> [N, C, grid*p, grid*p]``."""
        p, c = self.config.patch_size, self.config.in_channels
        g = self.config.input_size // p
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        size = self.config.input_size
        if x_t.shape[-2:] != (size, size):
            raise ValueError(f"expected {size}x{size} images, got {tuple(x_t.shape[-2:])}")
        y = self.text_proj(text_emb)
        c = self.t_embedder(t) + y

        x = self.x_embedder(x_t) + self.pos_embed
        n_ctx = self.config.in_context_len
        for i, block in enumerate(self.blocks):
            if n_ctx and i == self.config.in_context_start:
                x = torch.cat([y.unsqueeze(1) + self.in_context_posemb, x], dim=1)
            x = block(x, c, self.rope)
        x = self.final_layer(x[:, n_ctx:], c)
        return self.unpatchify(x)


def jit_from_preset(name: str, *, input_size: int, text_dim: int, **overrides) -> JiT:
    """Build a :class:`JiT` from a :data:`JIT_PRESETS` entry; ``overrides`` replace preset keys."""
    if name not in JIT_PRESETS:
        raise KeyError(f"unknown JiT preset {name!r}; known: {', '.join(JIT_PRESETS)}")
    config = {**JIT_PRESETS[name], **overrides, "input_size": input_size, "text_dim": text_dim}
    unknown = set(config) - set(inspect.signature(JiT.__init__).parameters)
    if unknown:
        raise ValueError(f"unknown JiT config key(s) {sorted(unknown)} in overrides for {name}")
    return JiT(**config)
