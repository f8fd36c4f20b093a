"""Exponential moving averages of a model's weights, one copy per decay."""
from __future__ import annotations

import torch


class EMA:
    """``average = decay * average + (1 - decay) * current`` after every optimizer step.

    Tracks every entry of ``model.state_dict()``: floating-point entries are averaged,
    the others (e.g. integer counters) are copied. Averages live on the model's device
    in the model's dtypes, start from the model's current weights, and are saved with
    the training state as a flat tensor dict (safetensors: resuming unpickles nothing).
    """

    def __init__(self, model: torch.nn.Module, decays: list[float]):
        if not decays:
            raise ValueError("train.ema_decays must list at least one decay")
        self.decays = [float(d) for d in decays]
        current = model.state_dict()
        self.averages = {d: {k: v.detach().clone() for k, v in current.items()} for d in self.decays}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        current = model.state_dict()
        floats = [k for k, v in current.items() if v.is_floating_point()]
        others = [k for k, v in current.items() if not v.is_floating_point()]
        for decay, avg in self.averages.items():
            if floats:
                torch._foreach_lerp_([avg[k] for k in floats], [current[k] for k in floats], 1.0 - decay)
            for k in others:
                avg[k].copy_(current[k])

    def weights(self, decay: float) -> dict[str, torch.Tensor]:
        """The averaged state dict for ``decay`` (loadable with ``model.load_state_dict``)."""
        return self.averages[float(decay)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"<decay>/<parameter>": tensor}`` for every decay."""
        return {f"{d}/{k}": v for d, avg in self.averages.items() for k, v in avg.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        saved = sorted({float(key.split("/", 1)[0]) for key in state})
        if saved != sorted(self.decays):
            raise ValueError(f"saved EMA decays {saved} differ from train.ema_decays {self.decays}")
        for d, avg in self.averages.items():
            for k in avg:
                avg[k].copy_(state[f"{d}/{k}"])
