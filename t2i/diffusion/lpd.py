"""LPD's conditioning and composition around a frozen SD3 (seed 003, wishhyt/long-prompt-decomposer-sd35).

Component i's condition replaces the T5 part of SD3's token sequence: ``[CLIP tokens zero-padded to the
width ; D_i]``; every component shares the CLIP tokens and the pooled vector. The N conditions run as one
batch, component-major (rows ``c0 b0, c0 b1, ..., c1 b0, ...``), and the N velocities are averaged (the
code's mean, not the paper's sum: its guidance scales assume the mean). Classifier-free guidance per
component on ``[negative, prompt]`` and then the mean equals guidance on the two means (it is linear).
Pure functions, no weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def component_conditions(clip_context: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """``clip_context [B, Lc, Dc]`` and the decomposer's ``components [B, N, T, W]`` -> ``[N * B, Lc + T, W]``,
    component-major. ``Dc`` (CLIP-L + CLIP-G widths) may not exceed ``W``: a negative pad would crop silently."""
    batch, n, _, width = components.shape
    if clip_context.shape[0] != batch:
        raise ValueError(f"{clip_context.shape[0]} CLIP contexts for {batch} decomposed prompts")
    if clip_context.shape[-1] > width:
        raise ValueError(f"the CLIP context is {clip_context.shape[-1]} wide, more than the decomposer's width "
                         f"{width} (= the transformer's joint_attention_dim) it is padded to")
    clip = F.pad(clip_context, (0, width - clip_context.shape[-1])).to(components.dtype)
    rows = [torch.cat([clip, components[:, i]], dim=1) for i in range(n)]
    return torch.cat(rows, dim=0)


def repeat_for_components(x: torch.Tensor, n: int) -> torch.Tensor:
    """A per-prompt tensor (latents, timesteps, pooled vectors) repeated for the component-major rows."""
    return torch.cat([x] * n, dim=0)


def mean_over_components(pred: torch.Tensor, n: int) -> torch.Tensor:
    """``[N * B, ...]`` component-major predictions -> their mean per prompt ``[B, ...]``."""
    if pred.shape[0] % n:
        raise ValueError(f"{pred.shape[0]} rows are not {n} components of one batch")
    return pred.reshape(n, pred.shape[0] // n, *pred.shape[1:]).mean(dim=0)


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ``u + scale (c - u)``."""
    return uncond + scale * (cond - uncond)
