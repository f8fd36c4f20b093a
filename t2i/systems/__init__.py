"""Seed systems behind one interface (``t2i.systems.base.System``).

Rules are generic over ``{exp}``: they look a system up by the experiment's
``system`` key, so adding a system means adding a module here, a schema in
``t2i/schemas/systems/`` and an entry in ``SYSTEMS`` — never touching the rules.
"""
from __future__ import annotations

import importlib

from t2i.systems.base import System

# name -> "module:class"; imported lazily so that config validation needs no torch.
SYSTEMS: dict[str, str] = {
    "jit": "t2i.systems.jit:JiTSystem",
    "lafite": "t2i.systems.lafite:LafiteSystem",
    "pixel_sdxl": "t2i.systems.pixel_sdxl:PixelSDXLSystem",
    "lpd": "t2i.systems.lpd:LPDSystem",
    "layoutllm": "t2i.systems.layoutllm:LayoutLLMSystem",
}


def get_system(name: str) -> System:
    try:
        target = SYSTEMS[name]
    except KeyError:
        raise KeyError(f"unknown system {name!r} (known: {', '.join(sorted(SYSTEMS))})") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()
