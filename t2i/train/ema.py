"""Exponential moving averages of modules' weights: fixed decays or a decay ramp."""
from __future__ import annotations

from typing import Callable

import torch

from t2i.train.task import EMASpec

RAMP = "ramp"


class EMA:
    """``average = decay * average + (1 - decay) * current`` after every optimizer step.

    One average per decay in ``decays``, or one (labelled ``"ramp"``) whose decay is
    ``ramp(step)`` at each update. Tracks every entry of ``module.state_dict()``:
    floating-point entries are averaged, the others (e.g. integer counters) are copied.
    Averages live on the module's device in its dtypes and start from its current weights.
    """

    def __init__(self, module: torch.nn.Module, decays: list[float] = (), ramp: Callable[[int], float] | None = None):
        if bool(decays) == (ramp is not None):
            raise ValueError("an EMA takes a list of decays or a ramp, not both or neither")
        self.decays = {str(float(d)): float(d) for d in decays} if decays else {RAMP: None}
        self.ramp = ramp
        current = module.state_dict()
        self.averages = {label: {k: v.detach().clone() for k, v in current.items()} for label in self.decays}

    @property
    def labels(self) -> list[str]:
        """``"<decay>"`` per decay (in the given order), or ``["ramp"]``."""
        return list(self.decays)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int = 0) -> None:
        current = module.state_dict()
        floats = [k for k, v in current.items() if v.is_floating_point()]
        others = [k for k, v in current.items() if not v.is_floating_point()]
        for label, avg in self.averages.items():
            decay = self.ramp(step) if self.ramp is not None else self.decays[label]
            if floats:
                torch._foreach_lerp_([avg[k] for k in floats], [current[k] for k in floats], 1.0 - decay)
            for k in others:
                avg[k].copy_(current[k])

    def weights(self, label: str | float) -> dict[str, torch.Tensor]:
        """The averaged state dict of a decay (or ``"ramp"``), loadable with ``module.load_state_dict``."""
        return self.averages[label if label == RAMP else str(float(label))]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"<label>/<parameter>": tensor}`` for every average."""
        return {f"{label}/{k}": v for label, avg in self.averages.items() for k, v in avg.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.state_dict()):
            saved = sorted({key.split("/", 1)[0] for key in state})
            raise ValueError(f"saved EMA averages {saved} (and their parameters) differ from {self.labels}")
        for label, avg in self.averages.items():
            for k in avg:
                avg[k].copy_(state[f"{label}/{k}"])


class EMASet:
    """The EMAs of a task's :class:`EMASpec` list, saved as one flat tensor dict ``<module>/<label>/<parameter>``
    (safetensors in the training state: resuming unpickles nothing)."""

    def __init__(self, specs: list[EMASpec], modules: dict[str, torch.nn.Module]):
        self.emas = [(spec.module, EMA(modules[spec.module], spec.decays, spec.ramp)) for spec in specs]
        labels = [(name, label) for name, ema in self.emas for label in ema.labels]
        if len(labels) != len(set(labels)):
            raise ValueError(f"two EMAs of one module with the same decay: {labels}")

    def update(self, modules: dict[str, torch.nn.Module], step: int) -> None:
        for name, ema in self.emas:
            ema.update(modules[name], step)

    def variants(self, name: str) -> dict[str, dict[str, torch.Tensor]]:
        """``{label: averaged state dict}`` of module ``name``, its first EMA's first average first."""
        return {label: ema.weights(label) for module, ema in self.emas if module == name for label in ema.labels}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}/{k}": v for name, ema in self.emas for k, v in ema.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.state_dict()):
            raise ValueError("the saved EMAs differ from the task's (modules, decays or parameters)")
        for name, ema in self.emas:
            labels = set(ema.labels)
            ema.load_state_dict({k.split("/", 1)[1]: v for k, v in state.items()
                                 if k.startswith(f"{name}/") and k.split("/", 2)[1] in labels})
