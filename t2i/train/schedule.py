"""Learning rate: the peak value from the config and the per-step schedule (pure math)."""
from __future__ import annotations

import math


def peak_lr(cfg: dict) -> float:
    """``train.lr`` if set, else ``blr * batch_size / 256`` (the linear scaling rule on the global batch)."""
    if cfg.get("lr") is not None:
        return float(cfg["lr"])
    return cfg["blr"] * cfg["batch_size"] / 256


def lr_at(step: int, peak: float, warmup_steps: int, decay: str = "constant", total_steps: int = 0) -> float:
    """The lr of optimizer step ``step`` (0-based): linear warmup, then constant or a cosine decay.

    Step ``i < warmup_steps`` uses ``peak * (i + 1) / warmup_steps``, so no step runs at
    lr 0 and step ``warmup_steps - 1`` is the first at the peak. ``decay="cosine"`` then
    falls along half a cosine from the peak to 0 at step ``total_steps`` (and stays there).
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if decay == "constant":
        return peak
    if decay == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr decay {decay!r} (constant | cosine)")
