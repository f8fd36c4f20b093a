"""Asset converters (``convert:`` on an asset): turn a downloaded, assembled or local checkpoint into
a t2i model folder that an experiment's role can use instead of training.

``CONVERTERS[name].convert(source, out_dir, **assets) -> details`` writes the folder's content from ``source``
(the asset's one file, or for ``takes="folder"`` everything its source wrote) and the finished assets the
block names (``t2i.config.CONVERTER_ASSET_KEYS``); the asset rule then drops the original, so the asset
holds only the converted, safely loadable weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


def lafite_snapshot(path: Path, out_dir: Path) -> dict:
    """drboog/Lafite's ``network-snapshot-*.pkl`` -> a ``lafite`` model folder holding G_ema as ``generator``.

    The pickle is read by :func:`t2i.checkpoints.stylegan_pkl.read_snapshot` (never executing its
    embedded source); the generator's config comes from the snapshot's own ``init_kwargs`` (the
    original's text MLPs are always 512 wide), and every tensor must land on ours by name and shape.
    """
    from t2i.checkpoints.safe_load import state_dict_mismatch
    from t2i.checkpoints.stylegan_pkl import read_snapshot
    from t2i.models.folder import save_model_folder
    from t2i.models.lafite import LafiteGenerator
    from t2i.systems.lafite import GENERATOR

    state, info = read_snapshot(path, network="G_ema")
    kw = info["init_kwargs"] or {}
    synthesis, mapping = kw.get("synthesis_kwargs") or {}, kw.get("mapping_kwargs") or {}
    config = {"resolution": kw.get("img_resolution", info["resolution"]), "img_channels": kw.get("img_channels", 3),
              "z_dim": kw.get("z_dim", 512), "w_dim": kw.get("w_dim", 512), "f_dim": info["f_dim"] or 512,
              "map_num": mapping.get("num_layers", 8), "text_hidden": 512,
              "channel_base": synthesis.get("channel_base", 32768), "channel_max": synthesis.get("channel_max", 512),
              "change": synthesis.get("change", 256), "num_fp16_res": synthesis.get("num_fp16_res", 0),
              "conv_clamp": synthesis.get("conv_clamp")}
    if config["resolution"] is None:
        raise ValueError(f"{path}: the snapshot records no resolution (img_resolution)")
    G = LafiteGenerator(**config)
    ours = G.state_dict()
    problem = state_dict_mismatch(ours, state)
    if problem:
        raise ValueError(f"{path}: G_ema does not match a LAFITE generator of config {config}: {problem}")
    G.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()})
    save_model_folder(out_dir, "lafite", {GENERATOR: G},
                      {"resolution": config["resolution"], "f_dim": config["f_dim"], "imported_from": path.name})
    return {"converter": "lafite-snapshot", "file": path.name, "generator_config": config,
            "snapshot_args": info["args"]}


# What a kohya-ss/pixel-space-sdxl checkpoint implies but does not record: inference.py's 1024 px, its unit noise,
# and CLIP's 77 tokens.
PIXEL_SDXL_ORIGINAL_META = {"image_size": [1024, 1024], "noise_scale": 1.0, "text_max_length": 77}


def pixel_sdxl_checkpoint(path: Path, out_dir: Path) -> dict:
    """kohya-ss/pixel-space-sdxl's ``.pth``/``.pt`` (``{"model", "optimizer_state"}``, read with
    ``weights_only=True``) or flat ``.safetensors`` -> a ``pixel_sdxl`` model folder holding the U-Net.

    The architecture is the file's own where t2i wrote it, else inferred from its tensors
    (:func:`t2i.checkpoints.pixel_sdxl_original.infer_config`); every U-Net tensor must land on ours by
    name and shape. The text encoders' tensors are counted, not kept: the text-encoder roles are folders.
    """
    import torch

    from t2i.checkpoints.pixel_sdxl_original import infer_config, load_original, read_original
    from t2i.models.folder import save_model_folder
    from t2i.models.pixel_sdxl import PixelSDXL
    from t2i.systems.pixel_sdxl import SYSTEM, UNET

    checkpoint = read_original(path)
    ours = checkpoint.t2i or {}
    config = ours.get("config") or infer_config(checkpoint.state_dict)
    try:
        with torch.device("meta"):  # the weights come from the file: no 10 GB of throw-away initialisation
            model = PixelSDXL(**config)
        text = load_original(model, checkpoint.state_dict, assign=True)
    except ValueError as e:
        if "config" in ours:
            raise
        raise ValueError(f"the architecture inferred from the tensors (base_resolution {config['base_resolution']}, "
                         f"patch {config['patch_size']}, width {config['patch_hidden']}, "
                         f"{config['patch_num_res_blocks']} residual blocks) is not an SDXL pixel U-Net: {e}") from None
    save_model_folder(out_dir, SYSTEM, {UNET: model},
                      {**PIXEL_SDXL_ORIGINAL_META, **ours.get("meta", {}), "imported_from": path.name})
    return {"converter": "pixel-sdxl-checkpoint", "file": path.name,
            "config_from": "t2i metadata" if "config" in ours else "inferred from the tensors",
            "base_resolution": config["base_resolution"], "patch_size": config["patch_size"],
            "text_encoder_tensors_not_kept": len(text)}


def layoutllm_gligen(folder: Path, out_dir: Path, clip: Path) -> dict:
    """LayoutLLM-T2I's GLIGEN checkpoint as a ``torch_parts`` asset assembled it -> a drawer folder
    (``StableDiffusionGLIGENPipeline`` layout with the relation module; :mod:`t2i.checkpoints.gligen_ldm`),
    with ``clip``'s tokenizer and text config (``openai/clip-vit-large-patch14``)."""
    from t2i.checkpoints.gligen_ldm import convert_layoutllm_gligen

    return convert_layoutllm_gligen(folder, out_dir, clip)


@dataclass(frozen=True)
class Converter:
    convert: Callable[..., dict]
    takes: str = "file"  # "file": the asset's one file; "folder": everything its source wrote


CONVERTERS: dict[str, Converter] = {
    "lafite-snapshot": Converter(lafite_snapshot),
    "pixel-sdxl-checkpoint": Converter(pixel_sdxl_checkpoint),
    "layoutllm-gligen": Converter(layoutllm_gligen, takes="folder"),
}
