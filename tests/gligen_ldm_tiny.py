"""A tiny LayoutLLM-T2I checkpoint in the original's structure: GLIGEN's LDM key names, its trainer's top-level
entries, and a reference CLIP folder (tokenizer + text config) as ``openai/clip-vit-large-patch14`` would be.

The LDM names are written here from the layout of LDM's ``UNetModel`` (``input_blocks.{i}.{0 resnet, 1 spatial
transformer}``, ``middle_block.{0, 1, 2}``, ``output_blocks``, ``time_embed``, ``out``), its autoencoder
(``encoder.down.{i}.block.{j}``, ``mid.attn_1`` with 1x1-conv q/k/v) and ``FrozenCLIPEmbedder``
(``transformer.text_model.*``), independently of the converter under test, which uses diffusers' mapping.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

WIDTH = 32  # text width = cross-attention width = relation width

# LDM configs as GLIGEN's yaml writes them (coco2014.yaml's keys), scaled down; the U-Net keeps SD's shape:
# attention at the first two of three levels, none at the last.
LDM_CONFIG = {
    "model": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
              "params": {"image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32,
                         "attention_resolutions": [2, 1], "num_res_blocks": 1, "channel_mult": [1, 1, 2],
                         "num_heads": 2, "transformer_depth": 1, "context_dim": WIDTH, "fuser_type": "gatedSA",
                         "use_checkpoint": False,
                         "grounding_tokenizer": {"target": "ldm.modules.diffusionmodules.text_grounding_net.PositionNet",
                                                 "params": {"in_dim": WIDTH, "out_dim": WIDTH}}}},
    "autoencoder": {"target": "ldm.models.autoencoder.AutoencoderKL",
                    "params": {"scale_factor": 0.18215, "embed_dim": 4,
                               "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 16, "in_channels": 3,
                                            "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                                            "attn_resolutions": [], "dropout": 0.0}}},
    "text_encoder": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
    "diffusion": {"target": "ldm.models.diffusion.ldm.LatentDiffusion",
                  "params": {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}},
    "max_relations": 10, "inpaint_mode": False, "base_learning_rate": 5e-5,
}

# The same networks as diffusers configs, written out (not derived from LDM_CONFIG).
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 32, 64],
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1,
            attention_head_dim=2, cross_attention_dim=WIDTH, relation_dim=WIDTH)
VAE = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=[32, 64], latent_channels=4,
           down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1)
WORDS = ["a", "red", "blue", "circle", "square", "left", "of", "above", "right", "below"]


def reference_clip(out: Path) -> Path:
    """A random CLIP (``CLIPModel`` folder with a CLIP BPE tokenizer): the converter reads its tokenizer and
    text config only."""
    from transformers import CLIPConfig, CLIPModel

    from t2i.text.shapes_clip import build_tokenizer, save_tokenizer_files

    tokenizer = build_tokenizer([" ".join(WORDS)])
    tiny = dict(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=77,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id, **tiny),
                        vision_config=dict(image_size=32, patch_size=8, **tiny), projection_dim=16)
    CLIPModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_tokenizer_files(tokenizer, out)
    return out


def networks(clip: Path, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Random ``unet`` (with the relation module), ``vae`` and ``text_encoder``; non-zero gates, so every
    branch of the U-Net counts."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from t2i.models.gligen import RelationUNet2DConditionModel

    torch.manual_seed(seed)
    unet = RelationUNet2DConditionModel(**UNET)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                p.fill_(0.5)
    return {"unet": unet, "vae": AutoencoderKL(**VAE), "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(clip))}


_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]


def _resnet(rest: str) -> str:
    head, _, param = rest.rpartition(".")
    return dict(_RESNET).get(head, head) + "." + param


def ldm_unet_state(unet) -> dict[str, torch.Tensor]:
    """diffusers names -> LDM ``UNetModel`` names (``layers_per_block`` L: level b's layer l is input block
    1 + b(L+1) + l, its downsampler input block (b+1)(L+1); output block b(L+1) + l, the upsampler after the
    last layer, at index 2 when the layer has attention, else 1)."""
    L = unet.config.layers_per_block
    attended = {b for b, t in enumerate(unet.config.up_block_types) if t.startswith("CrossAttn")}
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, value in unet.state_dict().items():
        head, _, param = key.rpartition(".")
        if head in fixed:
            new = f"{fixed[head]}.{param}"
        elif key.startswith("position_net."):
            new = key
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = (f"input_blocks.{1 + b * (L + 1) + i}.0.{_resnet(rest)}" if kind == "resnets"
                   else f"input_blocks.{1 + b * (L + 1) + i}.1.{rest}")
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * (L + 1)}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = (f"output_blocks.{b * (L + 1) + i}.0.{_resnet(rest)}" if kind == "resnets"
                   else f"output_blocks.{b * (L + 1) + i}.1.{rest}")
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            b = int(m[1])
            new = f"output_blocks.{b * (L + 1) + L}.{2 if b in attended else 1}.conv.{m[2]}"
        else:
            raise KeyError(key)
        out[new] = value.clone()
    return out


_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ldm_vae_state(vae) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` names -> LDM's (decoder up levels numbered from the bottom; attention
    projections as 1x1 convolutions)."""
    n = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
            if value.ndim == 2 and m[2] != "group_norm":
                value = value[:, :, None, None]
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", new):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", new):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", new):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", new):
            new = f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", new):
            new = f"decoder.up.{n - 1 - int(m[1])}.upsample.conv.{m[2]}"
        out[new] = value.clone()
    return out


def ldm_checkpoint(nets: dict[str, torch.nn.Module]) -> dict:
    """The trainer's saved dict (``trainer_combined_layout.py``): model, text_encoder (with CLIP's
    ``position_ids``, persistent in transformers 4.30), autoencoder, diffusion, opt, scheduler, iters,
    config_dict."""
    from omegaconf_pickles import config_dict

    text = {f"transformer.text_model.{k.removeprefix('text_model.')}": v.clone()
            for k, v in nets["text_encoder"].state_dict().items()}
    text["transformer.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    relation = [k for k in nets["unet"].state_dict() if ".rela_fuse." in k]
    return {"model": ldm_unet_state(nets["unet"]), "text_encoder": text, "autoencoder": ldm_vae_state(nets["vae"]),
            "diffusion": {"betas": torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2},
            "opt": {"state": {i: {"step": torch.tensor(335001.0), "exp_avg": torch.zeros(1)} for i in range(len(relation))},
                    "param_groups": [{"lr": 5e-5, "params": list(range(len(relation)))}]},
            "scheduler": {"last_epoch": 335001}, "iters": 335001, "config_dict": config_dict(LDM_CONFIG)}


def split_model(ckpt: dict, names: tuple[str, str, str]) -> dict[str, object]:
    """The published split: the model's state dict in two halves (the first as ``{"model": ...}``, the second
    flat), everything else in the third file."""
    keys = list(ckpt["model"])
    half = len(keys) // 2
    return {names[0]: {"model": {k: ckpt["model"][k] for k in keys[:half]}},
            names[1]: {k: ckpt["model"][k] for k in keys[half:]},
            names[2]: {k: v for k, v in ckpt.items() if k != "model"}}
