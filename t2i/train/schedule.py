"""Learning rate: the peak value from the config and the per-step warmup schedule (pure math)."""
from __future__ import annotations


def peak_lr(cfg: dict) -> float:
    """``train.lr`` if set, else ``blr * batch_size / 256`` (the linear scaling rule on the global batch)."""
    if cfg.get("lr") is not None:
        return float(cfg["lr"])
    return cfg["blr"] * cfg["batch_size"] / 256


def lr_at(step: int, peak: float, warmup_steps: int) -> float:
    """The lr of optimizer step ``step`` (0-based): linear warmup, then constant.

    Step ``i < warmup_steps`` uses ``peak * (i + 1) / warmup_steps``, so no step runs at
    lr 0 and step ``warmup_steps - 1`` is the first at the peak.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak
