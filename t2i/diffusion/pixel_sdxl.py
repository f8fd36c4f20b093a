"""Pixel-space SDXL's rectified-flow objective and its x0 Euler sampler (after kohya-ss/pixel-space-sdxl).

Convention (kohya, the reverse of JiT's): ``t = 0`` is data and ``t = 1`` is noise,
``x_t = (1 - t) * x0 + t * e`` on pixels in [-1, 1] with ``e ~ N(0, noise_scale^2)``. The network
predicts ``x0`` and is called with SDXL-scale timesteps ``t * 999``. Pure functions, no weights.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from t2i.diffusion.flow import sample_t

NUM_TRAIN_TIMESTEPS = 1000
T_CLIP = 0.05
SCHEDULES = ("linear", "flow_shift")

X0Model = Callable[..., torch.Tensor]
"""``model_fn(x_t, timesteps, **cond) -> predicted x0``; ``timesteps`` is ``[B]`` on the ``t * 999`` scale."""


def model_timesteps(t: torch.Tensor) -> torch.Tensor:
    """The network's timestep input: ``t * (NUM_TRAIN_TIMESTEPS - 1)``, a float in [0, 999]."""
    return t * (NUM_TRAIN_TIMESTEPS - 1)


def sample_timesteps(n: int, *, uniform: bool = False, mean: float = 0.8, std: float = 0.8,
                     generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` training times: ``sigmoid(N(mean, std^2))`` (biased toward noise), or ``U[0, 1)``."""
    if uniform:
        return torch.rand(n, generator=generator, device=device)
    return sample_t(n, mean, std, generator=generator, device=device)


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, noise_scale: float = 1.0) -> torch.Tensor:
    """``x_t = (1 - t) * x0 + t * noise_scale * noise``; ``noise`` standard normal, ``t``: ``[B]``."""
    t = _per_sample(t, x0)
    return (1 - t) * x0 + t * (noise_scale * noise)


def _at_least_f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def x0_loss(x0_pred: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The default objective: ``mean((x0_pred - x0)^2)``, in float32 or wider (as is the velocity loss)."""
    return (_at_least_f32(x0_pred) - _at_least_f32(x0)).pow(2).mean()


def velocity_loss(x0_pred: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, t_clip: float = T_CLIP) -> torch.Tensor:
    """``mean((x0_pred - x0)^2 / max(t, t_clip)^2)``.

    Equal to the MSE between the velocities ``(x_t - x0) / d`` and ``(x_t - x0_pred) / d``, ``d = max(t, t_clip)``,
    written without ``x_t`` so nothing cancels.
    """
    x0_pred, x0 = _at_least_f32(x0_pred), _at_least_f32(x0)
    return ((x0_pred - x0) / _per_sample(t.clamp_min(t_clip), x0_pred)).pow(2).mean()


def flow_shift_times(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift ``shift * s / (1 + (shift - 1) * s)``: increasing in ``s``, fixes 0 and 1, identity at 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class FlowX0EulerScheduler:
    """Deterministic Euler sampler for the x0-predicting rectified flow, from ``t = 1`` to ``t = 0``.

    ``set_timesteps(N)`` makes ``sigmas``: ``N + 1`` float64 times from 1 to 0, ``linspace(1, 0, N + 1)``
    (``linear``) or that shifted by :func:`flow_shift_times` (``flow_shift``); and ``timesteps``, the ``N``
    network inputs ``sigmas[:-1] * 999``. ``step`` turns an x0 prediction at ``sigmas[i]`` into the sample at
    ``sigmas[i + 1]``; the last step returns the prediction itself.
    """

    def __init__(self, schedule: str = "linear", flow_shift: float = 3.0, t_clip: float = T_CLIP):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown timestep schedule {schedule!r} (one of {', '.join(SCHEDULES)})")
        if flow_shift <= 0:
            raise ValueError(f"flow_shift must be > 0, got {flow_shift}")
        self.schedule, self.flow_shift, self.t_clip = schedule, float(flow_shift), float(t_clip)
        self.sigmas = self.timesteps = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        sigmas = torch.linspace(1.0, 0.0, num_inference_steps + 1, dtype=torch.float64)
        if self.schedule == "flow_shift":
            sigmas = flow_shift_times(sigmas, self.flow_shift)
        self.sigmas = sigmas
        self.timesteps = model_timesteps(sigmas[:-1])

    def step(self, x0_pred: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """From ``t = sigmas[index]`` to ``s = sigmas[index + 1]``: with ``d = max(t, t_clip)``, the implied noise
        ``e = (x - (1 - d) * x0_pred) / d``, then ``(1 - s) * x0_pred + s * e`` (``x0_pred`` when ``s = 0``).

        For ``t >= t_clip`` this is Euler on ``v = (x - x0_pred) / t``: ``x0_pred + s * (x - x0_pred) / t``.
        """
        t, s = float(self.sigmas[index]), float(self.sigmas[index + 1])
        if s == 0.0:
            return x0_pred
        d = max(t, self.t_clip)
        noise = (sample - (1 - d) * x0_pred) / d
        return (1 - s) * x0_pred + s * noise


@torch.no_grad()
def sample(model_fn: X0Model, noise: torch.Tensor, cond: Mapping[str, torch.Tensor],
           uncond: Mapping[str, torch.Tensor] | None = None, *, scheduler: FlowX0EulerScheduler,
           num_inference_steps: int = 30, cfg_scale: float = 7.0, noise_scale: float = 1.0) -> torch.Tensor:
    """Generate from ``x_1 = noise_scale * noise`` (``noise`` standard normal ``[N, C, H, W]``); returns x0.

    ``cond``/``uncond``: keyword inputs of ``model_fn`` (for :class:`~t2i.models.pixel_sdxl.PixelSDXL`:
    ``encoder_hidden_states``, ``text_embeds``, ``time_ids``), batch ``N``; ``uncond`` entries may have batch 1.
    Guidance acts on x0, ``x0_u + cfg_scale * (x0_c - x0_u)``, with conditional and unconditional inputs in one
    batched call per step (``[cond, uncond]``); without ``uncond``, or at ``cfg_scale == 1``, one unguided call.
    """
    n = noise.shape[0]
    guided = uncond is not None and cfg_scale != 1.0
    if guided:
        if set(uncond) != set(cond):
            raise ValueError(f"cond and uncond inputs differ: {sorted(cond)} vs {sorted(uncond)}")
        inputs = {k: torch.cat([v, uncond[k].expand(n, *v.shape[1:])]) for k, v in cond.items()}
    else:
        inputs = dict(cond)
    scheduler.set_timesteps(num_inference_steps)
    x = _at_least_f32(noise) * noise_scale
    for i, timestep in enumerate(scheduler.timesteps):
        if guided:
            ts = torch.full((2 * n,), float(timestep), device=x.device)
            x0_c, x0_u = _at_least_f32(model_fn(torch.cat([x, x]), ts, **inputs)).chunk(2)
            x0_pred = x0_u + cfg_scale * (x0_c - x0_u)
        else:
            x0_pred = _at_least_f32(model_fn(x, torch.full((n,), float(timestep), device=x.device), **inputs))
        x = scheduler.step(x0_pred, i, x)
    return x
