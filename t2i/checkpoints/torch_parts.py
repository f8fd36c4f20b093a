"""Rebuild a torch checkpoint published as several pickles, each holding some of its entries.

LayoutLLM-T2I publishes GLIGEN's ``{model, text_encoder, autoencoder, diffusion, opt,
scheduler, iters, config_dict}`` as three files: two each hold part of ``model``'s state
dict, the third the rest. ``read_part`` loads one file through the restricted unpickler,
``merge_parts`` joins the parts (no tensor may come from two files), and
``write_components`` writes each network as ``<component>/model.safetensors`` plus
``<component>/config.json`` and a ``checkpoint.json`` describing the whole.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from t2i.checkpoints.restricted_pickle import RefusedGlobalError, load_checkpoint, to_plain

log = logging.getLogger(__name__)

COMPONENTS = ("model", "autoencoder", "text_encoder")
# Keys a component's loader no longer accepts: transformers >= 4.31 made CLIP's position_ids
# a non-persistent buffer, so a strict load fails on them (gligen/GLIGEN#67).
DROPPED_SUFFIXES = {"text_encoder": ("position_ids",)}
_METADATA_KEYS = ("iters", "config_dict")  # kept in checkpoint.json, not dropped


class PartsError(ValueError):
    """Parts that are not, or do not together form, one checkpoint; the message names the files."""


def is_state_dict(value: Any) -> bool:
    """A mapping of names to tensors (possibly empty)."""
    return isinstance(value, Mapping) and all(isinstance(v, torch.Tensor) for v in value.values())


def read_part(path: str | os.PathLike, flat_key: str = "model", name: str | None = None) -> dict:
    """Load one part: a dict of top-level entries, or a flat state dict (taken as part of ``flat_key``).

    Raises ``RefusedGlobalError`` (a pickle that could run code), or ``PartsError`` for an
    unreadable file or one that is not a checkpoint part; both name the file as ``name``
    (default its file name).
    """
    path = Path(path)
    name = name or path.name
    try:
        obj = load_checkpoint(path, label=name)
    except RefusedGlobalError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file, ...: one line naming the file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PartsError(f"{name}: not a readable torch file ({type(e).__name__}: {reason})") from None
    if not isinstance(obj, dict):
        raise PartsError(f"{name}: not a checkpoint part (it holds a {type(obj).__name__}, not a dict)")
    if obj and is_state_dict(obj):
        return {flat_key: obj}
    if not any(is_state_dict(v) and v for v in obj.values()):
        raise PartsError(f"{name}: not a checkpoint part (a dict without tensors; keys: "
                         f"{', '.join(map(repr, list(obj)[:8]))})")
    return obj


def merge_parts(parts: Sequence[Mapping], names: Sequence[str], components: Sequence[str] = COMPONENTS) -> dict:
    """Join the parts' top-level entries; an entry in several parts must be a state dict in each.

    Raises ``PartsError`` naming both files when a tensor (or a non-state-dict entry)
    appears twice, or when a component is missing or empty.
    """
    if len(parts) != len(names):
        raise ValueError(f"{len(parts)} parts but {len(names)} names")
    merged: dict[str, Any] = {}
    sources: dict[str, list[tuple[str, Mapping]]] = {}
    for part, name in zip(parts, names):
        for key, value in part.items():
            if key not in merged:
                merged[key] = dict(value) if is_state_dict(value) else value
            elif is_state_dict(merged[key]) and is_state_dict(value):
                _merge_state_dict(merged[key], value, key, name, sources[key])
            else:
                raise PartsError(f"entry {key!r} is in both {sources[key][0][0]} and {name}, "
                                 "and is not a state dict in both")
            sources.setdefault(key, []).append((name, value))
    for component in components:
        if component not in merged:
            raise PartsError(f"no {component!r} in any part ({', '.join(names)})")
        if not is_state_dict(merged[component]) or not merged[component]:
            raise PartsError(f"{component!r} (from {', '.join(n for n, _ in sources[component])}) "
                             "is not a non-empty state dict of tensors")
    return merged


def _merge_state_dict(into: dict, new: Mapping, key: str, name: str, earlier: list[tuple[str, Mapping]]) -> None:
    for tensor_key, tensor in new.items():
        if tensor_key in into:
            owner = next(n for n, sd in earlier if tensor_key in sd)
            raise PartsError(f"{key}.{tensor_key} is in both {owner} and {name}")
        into[tensor_key] = tensor


def write_components(ckpt: Mapping, out_dir: str | os.PathLike, components: Sequence[str] = COMPONENTS, *,
                     parts: Sequence[Mapping] = ()) -> dict:
    """Write each component as ``<component>/model.safetensors`` + ``config.json``, then ``checkpoint.json``.

    A component's config is its section of ``config_dict`` as plain data (``{}`` if there
    is none). ``checkpoint.json`` records ``iters``, the whole config, ``parts`` (their
    file names and sha256) and the top-level entries that were dropped (``opt``, ...).
    Returns that record without the config.
    """
    out_dir = Path(out_dir)
    config = to_plain(ckpt["config_dict"]) if "config_dict" in ckpt else None
    written = {}
    for component in components:
        state, dropped = _drop_keys(component, ckpt[component])
        folder = out_dir / component
        folder.mkdir(parents=True, exist_ok=True)
        save_file(_standalone(state), folder / "model.safetensors")
        section = config.get(component) if isinstance(config, dict) else None
        _write_json(folder / "config.json", section if isinstance(section, dict) else {})
        written[component] = {"tensors": len(state), "dropped_keys": dropped}
    record = {"iters": ckpt.get("iters"), "components": written,
              "dropped": [k for k in ckpt if k not in components and k not in _METADATA_KEYS],
              "parts": [dict(p) for p in parts]}
    _write_json(out_dir / "checkpoint.json", {**record, "config": config})
    log.info("wrote %s to %s; dropped %s", ", ".join(components), out_dir, ", ".join(record["dropped"]) or "nothing")
    return record


def _drop_keys(component: str, state: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    suffixes = DROPPED_SUFFIXES.get(component, ())
    dropped = [k for k in state if k.rsplit(".", 1)[-1] in suffixes]
    if dropped:
        log.info("%s: dropped %s (a non-persistent buffer since transformers 4.31, gligen/GLIGEN#67)",
                 component, ", ".join(dropped))
    return {k: v for k, v in state.items() if k not in dropped}, dropped


def _standalone(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous copies that share no storage (safetensors refuses shared or strided tensors)."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in state.items()}


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
