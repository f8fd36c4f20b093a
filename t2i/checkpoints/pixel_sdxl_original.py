"""kohya-ss/pixel-space-sdxl's checkpoint layout, both ways, for :class:`t2i.models.pixel_sdxl.PixelSDXL`.

The original saves ``torch.save({"model": sd, "optimizer_state": ...})`` (``.pth``), and its post-hoc EMA a
flat ``.safetensors`` of ``sd``. ``sd`` is in SDXL's single-file layout: the pixel U-Net under
``model.diffusion_model.`` with SGM names (``input_blocks.N.M``, ``middle_block``, ``output_blocks``,
``time_embed``, ``label_emb``; the cut's removed blocks absent), the patch encoder/decoder as
``patch_encoder.net.*`` / ``patch_decoder.net.*`` (an ``nn.Sequential``: 1x1 conv, GroupNorm, SiLU, the
residual blocks, 1x1 conv), and the text encoders under ``conditioner.embedders.``.

Names are translated by rule (:func:`ldm_unet_name`, checked against diffusers' own converter in the
tests), so both directions cover exactly our model's tensors: a checkpoint loads strictly, and one
whose architecture differs (another ``base_resolution``, patch size or block count) is refused with
the names that do not match. Files are read with ``torch.load(weights_only=True)`` or safetensors.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

UNET_PREFIX = "model.diffusion_model."
TEXT_PREFIX = "conditioner.embedders."
T2I_KEY = "t2i"  # our config and meta in files t2i writes (safetensors metadata / a .pth entry)

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
          "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
          "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(prefix: str, rest: str) -> str:
    layer, _, leaf = rest.partition(".")
    if layer not in _RESNET:
        raise KeyError(f"no SGM name for resnet tensor {rest!r}")
    return f"{prefix}.{_RESNET[layer]}.{leaf}"


def ldm_unet_name(name: str, layers_per_block: int, up_block_has_attention: dict[int, bool]) -> str:
    """The SGM (single-file) name of a diffusers ``UNet2DConditionModel`` tensor name.

    Level ``i`` of ``L = layers_per_block`` resnets is ``input_blocks[i*(L+1)+1 ..]`` (its downsampler the
    next index's ``0.op``); up level ``i`` is ``output_blocks[i*(L+1) ..]`` with ``L+1`` resnets, its
    upsampler after the attention where the level has one.
    """
    step = layers_per_block + 1
    for ours, theirs in _FIXED.items():
        if name.startswith(ours + "."):
            return theirs + name[len(ours):]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        block = int(m[1]) * step + int(m[3]) + 1
        return _resnet(f"input_blocks.{block}.0", m[4]) if m[2] == "resnets" else f"input_blocks.{block}.1.{m[4]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name):
        return f"input_blocks.{(int(m[1]) + 1) * step}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", name):
        return _resnet(f"middle_block.{2 * int(m[1])}", m[2])
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
        block = int(m[1]) * step + int(m[3])
        return _resnet(f"output_blocks.{block}.0", m[4]) if m[2] == "resnets" else f"output_blocks.{block}.1.{m[4]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name):
        level = int(m[1])
        return f"output_blocks.{level * step + layers_per_block}.{2 if up_block_has_attention[level] else 1}.conv.{m[2]}"
    raise KeyError(f"no SGM name for U-Net tensor {name!r}")


def _patch_name(name: str, num_blocks: int) -> str:
    """``patch_encoder.proj_in.weight`` -> ``patch_encoder.net.0.weight`` and so on (the original's Sequential)."""
    stack, _, rest = name.partition(".")
    layer, _, leaf = rest.partition(".")
    if layer == "blocks":
        index, _, leaf = leaf.partition(".")
        return f"{stack}.net.{3 + int(index)}.{leaf}"
    return f"{stack}.net.{ {'proj_in': 0, 'norm_in': 1, 'proj_out': 3 + num_blocks}[layer]}.{leaf}"


def original_names(model) -> dict[str, str]:
    """Our state-dict name -> the original's checkpoint key, for every tensor of ``model`` (a PixelSDXL)."""
    config = model.body.unet_config
    has_attention = {i: getattr(block, "attentions", None) is not None for i, block in enumerate(model.body.up_blocks)}
    names = {}
    for name in model.state_dict():
        if name.startswith("body."):
            names[name] = UNET_PREFIX + ldm_unet_name(name[len("body."):], config["layers_per_block"], has_attention)
        else:
            names[name] = UNET_PREFIX + _patch_name(name, model.config.patch_num_res_blocks)
    return names


def to_original(model) -> dict[str, torch.Tensor]:
    """``model``'s weights under the original's checkpoint keys (contiguous copies, ready for safetensors)."""
    state = model.state_dict()
    return {theirs: state[ours].detach().contiguous().clone() for ours, theirs in original_names(model).items()}


def load_original(model, state_dict: dict[str, torch.Tensor], assign: bool = False) -> dict[str, torch.Tensor]:
    """Load the original's U-Net tensors into ``model`` strictly (``assign``: take them as the parameters,
    for a model built on the meta device); returns the text encoders' tensors (``conditioner.embedders.*``),
    which belong to the text-encoder roles, not the U-Net."""
    names = original_names(model)
    unet = {k: v for k, v in state_dict.items() if k.startswith(UNET_PREFIX)}
    text = {k: v for k, v in state_dict.items() if k.startswith(TEXT_PREFIX)}
    other = sorted(set(state_dict) - set(unet) - set(text))
    missing = sorted(theirs for theirs in names.values() if theirs not in unet)
    unexpected = sorted(set(unet) - set(names.values()))
    ours = model.state_dict()
    wrong = sorted(theirs for name, theirs in names.items()
                   if theirs in unet and tuple(unet[theirs].shape) != tuple(ours[name].shape))
    if missing or unexpected or wrong or other:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong),
                                     ("neither U-Net nor text encoder", other)) if keys]
        raise ValueError(f"checkpoint does not match this pixel-SDXL (base_resolution {model.config.base_resolution}, "
                         f"patch {model.config.patch_size}, {model.config.patch_num_res_blocks} residual blocks): "
                         + "; ".join(parts))
    model.load_state_dict({name: unet[theirs].to(ours[name].dtype) for name, theirs in names.items()}, strict=True,
                          assign=assign)
    return text


class OriginalCheckpoint(NamedTuple):
    state_dict: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    t2i: dict | None  # {"config", "meta"} where t2i wrote the file (:func:`write_original`); the original records none


def read_original(path: Path) -> OriginalCheckpoint:
    """A file the original wrote: ``{"model", "optimizer_state"}`` in a ``.pth``/``.pt`` (read with
    ``weights_only=True``), or a flat state dict (``.safetensors``, its post-hoc EMA)."""
    from safetensors import safe_open

    from t2i.checkpoints.safe_load import load_state_dict

    path = Path(path)
    content = load_state_dict(path)
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a dict, found {type(content).__name__}")
    if "model" in content:
        return OriginalCheckpoint(content["model"], content.get("optimizer_state"), content.get(T2I_KEY))
    if not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise ValueError(f"{path}: neither the original's {{'model', 'optimizer_state'}} nor a flat state dict "
                         f"(top-level keys {sorted(content)[:5]})")
    extra = None
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get(T2I_KEY)
        extra = json.loads(stored) if stored else None
    return OriginalCheckpoint(content, None, extra)


def infer_config(state_dict: dict[str, torch.Tensor]) -> dict:
    """The :class:`PixelSDXL` config of an original checkpoint, which records none: SDXL's U-Net (the only one
    the original builds), the cut from which ``input_blocks`` exist (level 1's block 4: base 64), the patch
    size, width and block count from the patch encoder's tensors, GroupNorm of 32 groups as the original's."""
    from t2i.models.pixel_sdxl import SDXL_UNET_CONFIG

    first = state_dict.get(UNET_PREFIX + "patch_encoder.net.0.weight")
    if first is None or first.ndim != 4:
        raise ValueError(f"no patch encoder ({UNET_PREFIX}patch_encoder.net.0.weight): not a pixel-SDXL checkpoint "
                         f"of the default encoder/decoder architecture")
    patch = round((first.shape[1] / 3) ** 0.5)
    blocks = {int(m[1]) for k in state_dict if (m := re.fullmatch(re.escape(UNET_PREFIX) +
                                                                   r"patch_encoder\.net\.(\d+)\.conv1\.weight", k))}
    base = 64 if any(k.startswith(UNET_PREFIX + "input_blocks.4.") for k in state_dict) else 32
    return dict(unet_config=dict(SDXL_UNET_CONFIG), base_resolution=base, patch_size=patch,
                patch_hidden=int(first.shape[0]), patch_num_res_blocks=len(blocks), patch_norm_num_groups=32)


def write_original(path: Path, model, text_encoders: dict[str, torch.Tensor] | None = None,
                   meta: dict | None = None) -> None:
    """Write ``model`` (plus any ``conditioner.embedders.*`` tensors) as the original does: a flat
    ``.safetensors`` (what its post-hoc EMA writes and ``inference.py`` reads) or ``{"model": sd}`` in a
    ``.pth``/``.pt`` (its training checkpoint, without optimizer state). The model's config and ``meta``
    ride along (safetensors metadata, or a ``t2i`` entry), which the original ignores and
    :func:`read_original` returns."""
    from safetensors.torch import save_file

    from t2i.models import public_config
    from t2i.utils.atomic import atomic_path

    path = Path(path)
    if path.suffix not in (".safetensors", ".pth", ".pt"):
        raise ValueError(f"{path}: the original's formats are .safetensors and .pth/.pt")
    state = {**to_original(model), **(text_encoders or {})}
    extra = {"config": public_config(model), "meta": meta or {}}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(state, str(tmp), metadata={T2I_KEY: json.dumps(extra)})
        else:
            torch.save({"model": state, T2I_KEY: extra}, tmp)
