"""JiT's flow-matching math: time sampling, the x-prediction/v-loss, and the ODE sampler.

Convention (JiT): ``t = 0`` is noise and ``t = 1`` is data, ``z_t = t * x + (1 - t) * e`` with
``e ~ N(0, noise_scale^2)``. The network predicts the clean image ``x``; the velocity
``v = (x - z_t) / (1 - t)`` is formed from it, with ``1 - t`` clamped below at ``t_eps``.
Pure functions: no weights, no state.
"""
from __future__ import annotations

from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``model(z_t, t, text_emb) -> predicted clean image``."""


def sample_t(n: int, P_mean: float, P_std: float, generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` logit-normal times: ``sigmoid(N(P_mean, P_std^2))``."""
    return torch.sigmoid(torch.randn(n, generator=generator, device=device) * P_std + P_mean)


def _velocity(x_pred: torch.Tensor, z: torch.Tensor, t: torch.Tensor, t_eps: float) -> torch.Tensor:
    return (x_pred.float() - z) / (1 - t).clamp_min(t_eps)


def jit_loss(model: Denoiser, x: torch.Tensor, text_emb: torch.Tensor, *, P_mean: float, P_std: float,
             noise_scale: float, t_eps: float) -> torch.Tensor:
    """Mean squared error between the target velocity and the one implied by the predicted ``x``.

    ``x``: clean images in [-1, 1]; randomness comes from torch's global RNG.
    """
    x = x.float()
    t = sample_t(x.shape[0], P_mean, P_std, device=x.device).view(-1, *([1] * (x.ndim - 1)))
    e = torch.randn_like(x) * noise_scale
    z = t * x + (1 - t) * e
    v = _velocity(x, z, t, t_eps)
    v_pred = _velocity(model(z, t.flatten(), text_emb), z, t, t_eps)
    return (v - v_pred).pow(2).mean()


def _guided(t: float | torch.Tensor, cfg: float, interval_min: float, interval_max: float) -> bool:
    """Whether CFG acts at time ``t``: ``interval_min < t < interval_max`` (``t >= 0`` when ``interval_min == 0``).

    The open interval follows JiT's sampler; ``cfg == 1`` is a no-op and never guided.
    """
    return bool(cfg != 1.0 and t < interval_max and (interval_min == 0 or t > interval_min))


@torch.no_grad()
def sample(model: Denoiser, noise: torch.Tensor, cond_emb: torch.Tensor, uncond_emb: torch.Tensor, *,
           steps: int, method: str = "heun", cfg: float = 1.0, interval_min: float = 0.0, interval_max: float = 1.0,
           t_eps: float = 0.05, noise_scale: float = 1.0) -> torch.Tensor:
    """Integrate the guided ODE from ``t = 0`` (``noise_scale * noise``) to ``t = 1``; returns images.

    ``noise``: standard normal ``[N, C, H, W]``; ``cond_emb``: ``[N, D]``; ``uncond_emb``:
    ``[D]`` or ``[N, D]`` (the empty-prompt features). ``steps`` uniform steps; ``heun``
    uses Euler for the last step (``2 * steps - 1`` evaluations), ``euler`` uses ``steps``.
    Inside the CFG interval the conditional and unconditional passes share one batched
    call; outside it the unconditional pass is skipped. Guidance is chosen from a host copy
    of the time grid (reading a device scalar every step made the host wait for the GPU);
    the arithmetic uses a device copy made once.
    """
    if method not in ("heun", "euler"):
        raise ValueError(f"unknown sampling method {method!r} (heun or euler)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = noise.shape[0]
    uncond_emb = uncond_emb.expand_as(cond_emb)

    def velocity(z: torch.Tensor, i: int) -> torch.Tensor:
        t = ts_device[i]
        if not _guided(ts[i], cfg, interval_min, interval_max):
            return _velocity(model(z, t.expand(n), cond_emb), z, t, t_eps)
        zz = torch.cat([z, z])
        x_pred = model(zz, t.expand(2 * n), torch.cat([cond_emb, uncond_emb]))
        v_cond, v_uncond = _velocity(x_pred, zz, t, t_eps).chunk(2)
        return v_uncond + cfg * (v_cond - v_uncond)

    z = noise.float() * noise_scale
    ts = torch.linspace(0.0, 1.0, steps + 1)
    ts_device = ts.to(noise.device)
    for i in range(steps):
        dt = ts_device[i + 1] - ts_device[i]
        v = velocity(z, i)
        if method == "heun" and i < steps - 1:
            v = 0.5 * (v + velocity(z + dt * v, i + 1))
        z = z + dt * v
    return z
