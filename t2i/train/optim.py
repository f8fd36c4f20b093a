"""The conventional optimizer and EMA of a ``train:`` block, as :class:`OptimizerSpec` / :class:`EMASpec`."""
from __future__ import annotations

import torch

from t2i.train.schedule import peak_lr
from t2i.train.task import EMASpec, OptimizerSpec

# What a train block that leaves these keys out gets.
DEFAULTS = {"blr": 5e-5, "lr": None, "betas": [0.9, 0.95], "weight_decay": 0.0, "warmup_steps": 0,
            "grad_clip": 1.0, "ema_decays": [0.9999, 0.9996]}


def decay_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and kernels only, not on biases and norm scales (1-d parameters)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def adamw_from_train_config(module: torch.nn.Module, cfg: dict) -> OptimizerSpec:
    """AdamW over ``module`` from ``blr``/``lr`` (:func:`peak_lr`), ``betas``, ``weight_decay``,
    ``warmup_steps`` and ``grad_clip``: linear warmup, then a constant lr."""
    cfg = {**DEFAULTS, **cfg}
    return OptimizerSpec(groups=decay_groups(module, cfg["weight_decay"]), lr=peak_lr(cfg), betas=tuple(cfg["betas"]),
                         weight_decay=cfg["weight_decay"], warmup_steps=cfg["warmup_steps"], grad_clip=cfg["grad_clip"])


def ema_from_train_config(module_name: str, cfg: dict) -> EMASpec:
    """An EMA of ``module_name`` per decay in ``ema_decays`` (the first one is exported)."""
    return EMASpec(module=module_name, decays=list(cfg.get("ema_decays", DEFAULTS["ema_decays"])))


def adamw_spec(groups: list[dict], lr: float, train: dict):
    """An :class:`~t2i.train.task.OptimizerSpec` over ``groups`` at ``lr`` with the train block's AdamW settings."""
    return OptimizerSpec(groups=groups, lr=lr, betas=tuple(train["betas"]), eps=train["eps"],
                         weight_decay=train["weight_decay"], warmup_steps=train["warmup_steps"],
                         grad_clip=train["grad_clip"], kind=train["optimizer"])


def micro_batches(n: int, accumulate: int):
    """``(rows, weight)`` of each of ``accumulate`` micro-batches of ``n`` items: their losses times ``weight``
    add up to the whole batch's mean, so each backward adds its share of the whole batch's gradient."""
    size = -(-n // accumulate)
    for start in range(0, n, size):
        rows = slice(start, start + size)
        yield rows, (min(n, start + size) - start) / n
