"""Post-hoc EMA: a weighted average of raw weight snapshots saved during training, chosen after training.

Two weightings of snapshots ``theta_1 .. theta_N`` saved at steps ``t_1 < .. < t_N = T``:

- ``geometric`` (kohya-ss/pixel-space-sdxl's ``post_hoc_ema.py``), ``value = mu``: ``w_i = mu^(N-i) / sum_j mu^(N-j)``.
  Depends only on the snapshots' order, not on their steps.
- ``power`` (EDM2, Karras et al. 2024), ``value = sigma_rel``: the power-function EMA at ``T``, the average of the
  weights over training with density ``p(tau) = (gamma+1) tau^gamma / T^(gamma+1)`` on ``[0, T]``, ``gamma`` from
  :func:`sigma_rel_to_gamma`. EDM2 fits it by least squares over saved *EMA* profiles; these snapshots are raw,
  so each stands for the weights over the training interval up to it, ``(t_{i-1}, t_i]`` with ``t_0 = 0``: the
  reconstructed profile is ``sum_i w_i 1_(t_{i-1}, t_i] / (t_i - t_{i-1})``. Those boxes are orthogonal, so the
  least-squares fit to ``p`` is in closed form,
  ``w_i = int_(t_{i-1})^(t_i) p = (t_i/T)^(gamma+1) - (t_{i-1}/T)^(gamma+1)`` (positive, summing to 1).
  With a snapshot after every step this is exactly EDM2's running power EMA
  ``avg_t = beta_t avg_{t-1} + (1 - beta_t) theta_t``, ``beta_t = (1 - 1/t)^(gamma+1)``; with sparser snapshots
  it is that EMA of the weights held piecewise constant, which lags the continuous profile by about half a
  snapshot interval.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

MODES = ("geometric", "power")


def gamma_to_sigma_rel(gamma: float) -> float:
    """Relative standard deviation of the power-function EMA profile: ``sqrt((g+1) / ((g+2)^2 (g+3)))``."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


SIGMA_REL_MAX = gamma_to_sigma_rel((5 ** 0.5 - 3) / 2)  # ~0.3003, the widest profile (at gamma ~ -0.382)


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent with relative width ``sigma_rel``: the largest real root of
    ``g^3 + 7 g^2 + (16 - sigma_rel^-2) g + (12 - sigma_rel^-2)`` (EDM2)."""
    if not 0 < sigma_rel <= SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel must be in (0, {SIGMA_REL_MAX:.4f}], got {sigma_rel}")
    c = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - c, 12.0 - c])
    return float(roots.real[np.abs(roots.imag) < 1e-7].max())


def _power_increment(a: float, b: float, p: float) -> float:
    """``a^p - b^p`` for ``0 <= b <= a``, as ``a^p * -expm1(p log(b/a))`` so close ``a``, ``b`` lose nothing."""
    if b == 0:
        return a ** p
    return a ** p * -math.expm1(p * math.log(b / a))


def posthoc_ema_weights(steps: Sequence[int], mode: str, value: float) -> list[float]:
    """The weight of each snapshot, for strictly increasing ``steps`` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown post-hoc EMA mode {mode!r} (one of {', '.join(MODES)})")
    if not steps:
        raise ValueError("post-hoc EMA needs at least one snapshot")
    if steps[0] < 0 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"snapshot steps must be distinct and >= 0, got {sorted(steps)}")
    n = len(steps)
    if mode == "geometric":
        if not 0 <= value <= 1:
            raise ValueError(f"mu must be in [0, 1], got {value}")
        raw = [float(value) ** (n - 1 - i) for i in range(n)]
        total = math.fsum(raw)
        return [w / total for w in raw]
    if steps[-1] == 0:
        raise ValueError("a power-function EMA needs a snapshot after step 0")
    p = sigma_rel_to_gamma(value) + 1
    edges = [0.0, *(s / steps[-1] for s in steps)]
    return [_power_increment(a, b, p) for b, a in zip(edges, edges[1:])]


def weighted_average(state_dicts: Iterable[Mapping[str, torch.Tensor]],
                     weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * state_dicts[i]``, accumulated in float64 and returned in the last state dict's dtypes.

    Entries that are not floating point (e.g. integer counters) are copied from the last state dict.
    ``state_dicts`` may be a generator, so only one snapshot need be in memory at a time.
    """
    acc: dict[str, torch.Tensor] = {}
    last: Mapping[str, torch.Tensor] | None = None
    count = 0
    for count, (sd, w) in enumerate(zip(state_dicts, weights), start=1):
        if last is not None and set(sd) != set(last):
            raise ValueError(f"snapshot {count} has different keys: {sorted(set(sd) ^ set(last))[:5]}")
        for k, v in sd.items():
            if not v.is_floating_point():
                continue
            if k not in acc:
                acc[k] = torch.zeros(v.shape, dtype=torch.float64, device=v.device)
            elif acc[k].shape != v.shape:
                raise ValueError(f"snapshot {count}: {k} has shape {tuple(v.shape)}, earlier {tuple(acc[k].shape)}")
            acc[k].add_(v.detach().to(acc[k].device, torch.float64), alpha=float(w))
        last = sd
    if last is None or count != len(weights):
        raise ValueError(f"{count} snapshots for {len(weights)} weights")
    return {k: acc[k].to(v.dtype) if v.is_floating_point() else v.detach().clone() for k, v in last.items()}


def posthoc_ema(snapshots: Sequence[tuple[int, Mapping[str, torch.Tensor]]], mode: str,
                value: float) -> dict[str, torch.Tensor]:
    """Average raw snapshots ``[(step, state_dict), ...]`` (any order) by ``mode``: ``geometric`` with
    ``value = mu`` (the original's default 0.9), or ``power`` with ``value = sigma_rel`` (EDM2 uses 0.05-0.10)."""
    ordered = sorted(snapshots, key=lambda s: s[0])
    weights = posthoc_ema_weights([step for step, _ in ordered], mode, value)
    return weighted_average((sd for _, sd in ordered), weights)
