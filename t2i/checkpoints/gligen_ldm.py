"""LayoutLLM-T2I's assembled GLIGEN checkpoint (LDM key names) -> a drawer folder (diffusers layout).

Input: the folder a ``torch_parts`` asset writes (``model/``, ``autoencoder/``, ``text_encoder/``, each
``model.safetensors`` + its ``config.json`` section of the checkpoint's ``config_dict``, and ``checkpoint.json``
with the whole config), plus a reference CLIP folder (``openai/clip-vit-large-patch14``: the tokenizer and text
config that the original's ``FrozenCLIPEmbedder`` loads by name and the checkpoint does not hold).

Output: a ``StableDiffusionGLIGENPipeline``-layout folder that :class:`t2i.latent.gligen.GLIGENDrawer` loads:
``unet/`` (:class:`t2i.models.gligen.RelationUNet2DConditionModel`: the LDM U-Net's keys renamed by diffusers'
own single-file converter, ``position_net.*`` and the gated fusers' and relation modules' names carried over
as they are, since GLIGEN's and diffusers' agree), ``vae/`` (``AutoencoderKL``, scaling factor from the
config), ``text_encoder/`` + ``tokenizer/`` (``CLIPTextModel``) and ``scheduler/`` (PLMS on the checkpoint's
scaled-linear betas, the original's 1, 21, ..., 981 timesteps at 50 steps). Every tensor of the checkpoint must
land in a network (by name and shape), and every network tensor must come from the checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from t2i.latent.gligen import MAX_RELATIONS


class ConversionError(ValueError):
    """A checkpoint that is not LayoutLLM-T2I's GLIGEN, or does not fit the networks its config describes."""


def _section(config: dict, name: str) -> dict:
    section = config.get(name)
    if not isinstance(section, dict):
        raise ConversionError(f"the checkpoint's config_dict has no {name!r} section")
    return section


class _Params(dict):
    """A config section's ``params`` whose missing keys are a :class:`ConversionError` naming the key."""

    def __init__(self, section: dict, where: str):
        super().__init__(section.get("params") or {})
        self.where = where

    def __missing__(self, key: str):
        raise ConversionError(f"the checkpoint's config has no {self.where}.{key}")


def unet_config(model: dict, relation_dim: int) -> dict:
    """diffusers' ``UNet2DConditionModel`` config (plus ``relation_dim``) of GLIGEN's LDM ``UNetModel`` params
    (attention at the levels whose downsampling factor is in ``attention_resolutions``; ``num_heads`` heads, 8 by
    GLIGEN's default, which diffusers' ``attention_head_dim`` means for SD-1)."""
    params = _Params(model, "model.params")
    if params.get("fuser_type") != "gatedSA":
        raise ConversionError(f"model.params.fuser_type is {params.get('fuser_type')!r}: the drawer is GLIGEN's gatedSA")
    grounding = (params.get("grounding_tokenizer") or {}).get("params") or {}
    context = params["context_dim"]
    if grounding.get("in_dim", context) != context or grounding.get("out_dim", context) != context:
        raise ConversionError(f"the grounding net maps {grounding.get('in_dim')} -> {grounding.get('out_dim')}, "
                              f"diffusers' text-box projection {context} -> {context}")
    mult, ch = params["channel_mult"], params["model_channels"]
    attention = set(params["attention_resolutions"])
    down = ["CrossAttnDownBlock2D" if 2 ** level in attention else "DownBlock2D" for level in range(len(mult))]
    return dict(sample_size=params["image_size"], in_channels=params["in_channels"],
                out_channels=params["out_channels"], block_out_channels=[ch * m for m in mult],
                down_block_types=down, up_block_types=[b.replace("Down", "Up") for b in reversed(down)],
                layers_per_block=params["num_res_blocks"], attention_head_dim=params.get("num_heads", 8),
                transformer_layers_per_block=params.get("transformer_depth", 1), cross_attention_dim=context,
                relation_dim=relation_dim)


def vae_config(autoencoder: dict, latent_size: int) -> dict:
    """diffusers' ``AutoencoderKL`` config of LDM's ``AutoencoderKL`` params (GLIGEN keeps ``scale_factor`` there);
    its ``sample_size`` is the images the pipeline draws from ``latent_size`` latents."""
    params = _Params(autoencoder, "autoencoder.params")
    dd = _Params({"params": params["ddconfig"]}, "autoencoder.params.ddconfig")
    if dd.get("attn_resolutions"):
        raise ConversionError("autoencoder.params.ddconfig.attn_resolutions is not empty: not SD's VAE")
    n = len(dd["ch_mult"])
    return dict(sample_size=latent_size * 2 ** (n - 1), in_channels=dd["in_channels"], out_channels=dd["out_ch"],
                down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                block_out_channels=[dd["ch"] * m for m in dd["ch_mult"]], latent_channels=dd["z_channels"],
                layers_per_block=dd["num_res_blocks"], scaling_factor=params["scale_factor"])


def _check_consumed(name: str, source: dict[str, torch.Tensor], converted: dict[str, torch.Tensor]) -> None:
    """Every source tensor must be in ``converted`` once (the converters pass tensors or views of them on)."""
    empty = sorted(k for k, t in converted.items() if t is None)
    if empty:
        raise ConversionError(f"{name}: the checkpoint lacks the tensors for {empty[:3]}")
    used = {t.data_ptr() for t in converted.values()}
    left = sorted(k for k, t in source.items() if t.data_ptr() not in used)
    if left or len(converted) != len(source):
        raise ConversionError(f"{name}: {len(source)} tensors in the checkpoint became {len(converted)}; "
                              f"{len(left)} fit no {name} tensor, e.g. {left[:3]}")


def _load_strict(name: str, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from t2i.checkpoints.safe_load import state_dict_mismatch

    ours = module.state_dict()
    problem = state_dict_mismatch(ours, state)
    if problem:
        raise ConversionError(f"{name}: the checkpoint does not match the network its config describes: {problem}")
    module.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()}, assign=True)


def _network(name: str, cls, config: dict, source: dict[str, torch.Tensor], converted: dict[str, torch.Tensor]):
    """``cls(**config)`` holding ``converted`` (built on the meta device: the weights come from the checkpoint)."""
    _check_consumed(name, source, converted)
    with torch.device("meta"):
        module = cls(**config)
    _load_strict(name, module, converted)
    return module


def convert_unet(state: dict[str, torch.Tensor], config: dict):
    """GLIGEN's LDM U-Net state (``input_blocks.*``, ``position_net.*``, ...) -> a relation U-Net."""
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    from t2i.models.gligen import RelationUNet2DConditionModel

    converted = convert_ldm_unet_checkpoint({LDM_UNET_KEY + k: v for k, v in state.items()}, config)
    converted.update({k: v for k, v in state.items() if k.startswith("position_net.")})
    return _network("unet", RelationUNet2DConditionModel, config, state, converted)


def convert_vae(state: dict[str, torch.Tensor], config: dict):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return _network("vae", AutoencoderKL, config, state, convert_ldm_vae_checkpoint(dict(state), config))


def convert_text_encoder(state: dict[str, torch.Tensor], clip: Path):
    """``FrozenCLIPEmbedder``'s state (``transformer.text_model.*``, transformers 4 names) -> a ``CLIPTextModel``
    of ``clip``'s text config (transformers 5 names its tensors without ``text_model.``)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    converted = convert_ldm_clip_checkpoint(state, remove_prefix="transformer.")
    _check_consumed("text_encoder", state, converted)
    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig.from_pretrained(clip, local_files_only=True))
    if not any(k.startswith("text_model.") for k in model.state_dict()):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    _load_strict("text_encoder", model, converted)
    for name, buffer in model.named_buffers():  # non-persistent: not in the checkpoint, still on the meta device
        if name.endswith("position_ids") and buffer.is_meta:
            module = model.get_submodule(name.rpartition(".")[0])
            module.register_buffer("position_ids", torch.arange(buffer.shape[-1]).expand(buffer.shape),
                                   persistent=False)
    return model


def pndm_scheduler(diffusion: dict):
    """PLMS (diffusers' ``PNDMScheduler`` without Runge-Kutta steps) on LDM's scaled-linear betas."""
    from diffusers import PNDMScheduler

    params = diffusion.get("params") or {}
    return PNDMScheduler(num_train_timesteps=params.get("timesteps", 1000), beta_start=params.get("linear_start", 0.00085),
                         beta_end=params.get("linear_end", 0.012), beta_schedule="scaled_linear", skip_prk_steps=True,
                         set_alpha_to_one=False, steps_offset=1)


def _state(folder: Path, component: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = folder / component / "model.safetensors"
    if not path.is_file():
        raise ConversionError(f"no {component}/model.safetensors (the assembled checkpoint's {component!r} entry)")
    return load_file(path)


def convert_layoutllm_gligen(folder: Path, out_dir: Path, clip: Path) -> dict:
    """The assembled checkpoint in ``folder`` -> the drawer folder ``out_dir`` (module docstring)."""
    from transformers import AutoTokenizer

    from t2i.latent.gligen import ClipText, save_pipeline
    from t2i.utils.atomic import atomic_write_json

    record = json.loads((folder / "checkpoint.json").read_text(encoding="utf-8"))
    config = record.get("config")
    if not isinstance(config, dict):
        raise ConversionError("checkpoint.json holds no config (the checkpoint's config_dict)")
    relations = config.get("max_relations", MAX_RELATIONS)
    if relations != MAX_RELATIONS:
        raise ConversionError(f"max_relations is {relations}; the drawer feeds {MAX_RELATIONS} relation slots")
    text = ClipText(convert_text_encoder(_state(folder, "text_encoder"), clip).eval(),
                    AutoTokenizer.from_pretrained(clip, local_files_only=True))
    unet_cfg = unet_config(_section(config, "model"), relation_dim=text.dim)
    if unet_cfg["cross_attention_dim"] != text.dim:
        raise ConversionError(f"model.params.context_dim {unet_cfg['cross_attention_dim']} is not the text "
                              f"encoder's width {text.dim}")
    unet = convert_unet(_state(folder, "model"), unet_cfg)
    vae_cfg = vae_config(_section(config, "autoencoder"), latent_size=unet_cfg["sample_size"])
    vae = convert_vae(_state(folder, "autoencoder"), vae_cfg)
    save_pipeline(out_dir, unet, text, pndm_scheduler(config.get("diffusion") or {}), vae=vae)
    atomic_write_json(out_dir / "checkpoint.json", record)
    return {"converter": "layoutllm-gligen", "iters": record.get("iters"), "clip": str(clip),
            "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "relation_parameters": sum(p.numel() for n, p in unet.named_parameters() if ".rela_fuse." in n)}
