"""SD3's rectified flow, as its training scripts and its pipeline use it (pure math, no weights).

``x_sigma = (1 - sigma) z + sigma e`` with ``sigma`` in [0, 1] (1: noise), the transformer predicts the velocity
``e - z`` and takes ``timestep = sigma * 1000``. Training draws ``u = sigmoid(N(mean, std))`` and reads
``sigma`` off the 1000-entry table of the scheduler's *shifted* schedule at ``int(u * 1000)`` (diffusers'
SD3 scripts; ``shift`` 3 for SD3.5), with unit loss weights (``logit_normal`` weighting). Sampling is
diffusers' ``FlowMatchEulerDiscreteScheduler``, which applies the same shift.

LPD's objectives (``precondition_outputs`` of the seed's script) on the averaged velocity ``v``:
0 the velocity MSE to ``e - z``; 1 (the default) the MSE of ``x0 = x_sigma - sigma v`` to ``z`` (a
``sigma**2``-weighted velocity MSE); 2 the velocity MSE to the frozen model's own velocity given the full
prompt (distillation); 3 the sum of 2 and 1.
"""
from __future__ import annotations

from typing import Callable

import torch

LOSS_MODES = (0, 1, 2, 3)


def shifted_sigma_table(shift: float, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The training schedule's sigmas, high noise first: ``s t / (1 + (s - 1) t)`` at ``t = k / N``, k = N..1
    (``FlowMatchEulerDiscreteScheduler(shift=s).sigmas`` before ``set_timesteps``)."""
    t = torch.arange(num_train_timesteps, 0, -1, dtype=torch.float64) / num_train_timesteps
    return (shift * t / (1 + (shift - 1) * t)).float()


def sample_sigmas(n: int, shift: float, mean: float = 0.0, std: float = 1.0, device=None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``[n]`` training sigmas: logit-normal ``u``, then the shifted table at ``int(u * 1000)``."""
    table = shifted_sigma_table(shift)
    u = torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    idx = (u * table.shape[0]).long().clamp(max=table.shape[0] - 1)
    return table[idx].to(device)


def add_noise(z: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``(1 - sigma) z + sigma e`` with ``sigma`` ``[B]``."""
    s = sigma.view(-1, *([1] * (z.ndim - 1))).to(z.dtype)
    return (1 - s) * z + s * noise


def model_timesteps(sigma: torch.Tensor) -> torch.Tensor:
    return sigma * 1000


def losses(mode: int, velocity: torch.Tensor, x_t: torch.Tensor, z: torch.Tensor, noise: torch.Tensor,
           sigma: torch.Tensor, teacher_velocity: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The terms of loss ``mode`` (module docstring): ``diff`` for 0, 1 and 3, ``kd`` for 2 and 3, and their sum
    ``loss``. ``teacher_velocity`` is needed by 2 and 3 only."""
    if mode not in LOSS_MODES:
        raise ValueError(f"loss mode {mode} is not one of {LOSS_MODES}")
    v = velocity.float()
    out = {}
    if mode == 0:
        out["diff"] = (v - (noise - z).float()).square().mean()
    elif mode in (1, 3):
        s = sigma.view(-1, *([1] * (z.ndim - 1))).float()
        out["diff"] = ((x_t.float() - s * v) - z.float()).square().mean()
    if mode in (2, 3):
        if teacher_velocity is None:
            raise ValueError(f"loss mode {mode} distils from the base given the full prompt: no teacher velocity")
        out["kd"] = (v - teacher_velocity.float()).square().mean()
    out["loss"] = sum(out.values())
    return out


def sample(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor, scheduler,
           num_inference_steps: int) -> torch.Tensor:
    """Euler integration from ``noise`` (sigma 1) to data with a ``FlowMatchEulerDiscreteScheduler``:
    ``velocity(x, timesteps [B])`` is the guided model velocity at the scheduler's timesteps (sigma * 1000)."""
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    x = noise
    for t in scheduler.timesteps:
        v = velocity(x, t.expand(x.shape[0]).to(x.dtype))
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return x
