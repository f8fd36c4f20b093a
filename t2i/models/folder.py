"""Checkpoint folders: how a trained experiment hands its model to a later stage.

A model folder holds one ``save_pretrained`` sub-folder per component (config + safetensors,
loadable with the component class's ``from_pretrained``) and ``t2i_model.json``, which names
each component's class and carries the system's metadata (image size, noise scale, ...) —
the role ``model_index.json`` plays for a diffusers pipeline. Classes are resolved only
within packages this project trusts; nothing in the folder is executed.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from t2i.utils.atomic import atomic_write_json

INDEX = "t2i_model.json"
TRUSTED_MODULES = ("t2i.models.", "diffusers", "transformers")


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete, or names a class outside the trusted packages."""


def save_model_folder(out_dir: str | Path, system: str, components: dict[str, Any], meta: dict | None = None,
                      saved_components: dict[str, str] | None = None) -> None:
    """``component.save_pretrained(out_dir/name)`` for each component, then ``t2i_model.json``;
    ``saved_components`` (name -> ``module:Class``) are folders already written there by their own
    ``save_pretrained`` (e.g. a transformers model with its tokenizer)."""
    out_dir = Path(out_dir)
    for name, module in components.items():
        module.save_pretrained(out_dir / name)
    atomic_write_json(out_dir / INDEX, {
        "system": system,
        "components": {**{name: f"{type(m).__module__}:{type(m).__qualname__}" for name, m in components.items()},
                       **(saved_components or {})},
        "meta": meta or {},
    })


def read_index(model_dir: str | Path) -> dict:
    """The ``t2i_model.json`` of a model folder."""
    path = Path(model_dir) / INDEX
    if not path.is_file():
        raise ModelFolderError(f"{model_dir}: not a t2i model folder (no {INDEX}; made by `rule train`)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_component(model_dir: str | Path, name: str, *, system: str | None = None):
    """Component ``name`` of a model folder, loaded with its class's ``from_pretrained``.

    ``system``: refuse a folder trained by another system (e.g. an ``init`` role pointing at the
    wrong experiment), with a message naming both.
    """
    index = read_index(model_dir)
    if system is not None and index["system"] != system:
        raise ModelFolderError(f"{model_dir}: trained by system {index['system']!r}, not {system!r}")
    target = index["components"].get(name)
    if target is None:
        raise ModelFolderError(f"{model_dir}: no component {name!r} (has {', '.join(index['components'])})")
    module, qualname = target.split(":")
    if not module.startswith(TRUSTED_MODULES):
        raise ModelFolderError(f"{model_dir}: component {name!r} names class {target}, outside {TRUSTED_MODULES}")
    cls = getattr(importlib.import_module(module), qualname)
    return cls.from_pretrained(Path(model_dir) / name)
