"""``torch.compile`` as a config switch: ``true``, ``false`` or ``auto`` (on CUDA only)."""
from __future__ import annotations

import torch


def wants_compile(setting: bool | str, device: torch.device | str) -> bool:
    """Whether ``setting`` (``true``/``false``/``"auto"``) compiles on ``device``: ``auto`` compiles on CUDA,
    where it pays back its start-up time (JiT-B/16: about 2x training and 2.5x sampling throughput,
    ``benchmarks/jit_speed.py``), and not on a CPU, where short runs would spend their time compiling."""
    if setting == "auto":
        return torch.device(device).type == "cuda"
    return bool(setting)


def compile_if_wanted(model: torch.nn.Module, setting: bool | str, device: torch.device | str) -> torch.nn.Module:
    """Compile ``model``'s forward in place (``nn.Module.compile``): the same module, the same state-dict keys."""
    if wants_compile(setting, device):
        model.compile()
    return model
