"""Pixel-space SDXL: SDXL's U-Net body between a patch encoder and a patch decoder (seed 004).

After kohya-ss/pixel-space-sdxl. The body is diffusers' ``UNet2DConditionModel`` (SDXL config) cut at
one of two points, named as in the original by ``base_resolution``, the token grid at 1024 px:

- **64** (patch 16): drops ``conv_in``, ``down_blocks.0`` (level 0, with its downsampler),
  ``up_blocks.2`` and the upsampler of ``up_blocks.1``, and ``conv_norm_out``/``conv_out``. The encoder
  gives what ``down_blocks.0``'s downsampler gives (320 channels at 1/16 of the pixels), the decoder
  takes what ``up_blocks.1`` gives before its upsampler (640 channels, same grid).
- **32** (patch 32): drops ``conv_in``, ``down_blocks.0-1``, ``up_blocks.1-2``, the upsampler of
  ``up_blocks.0`` and ``conv_norm_out``/``conv_out``; the encoder gives 640 channels at 1/32 of the
  pixels (``down_blocks.1``'s downsampler output), the decoder takes 1280.

The encoder output is the first skip connection, in place of the removed downsampler's output. Patch
encoder and decoder have the same shape: 1x1 conv -> GroupNorm -> SiLU -> ``patch_num_res_blocks``
post-norm residual 3x3 conv blocks -> 1x1 conv, on pixels patchified to ``3*P*P`` channels, channel
order (C, py, px). They take no timestep or text, and keep PyTorch's default initialisation, as in the
original. The network predicts x0 in pixels ([-1, 1]).

Conditioning is SDXL's: ``encoder_hidden_states`` (the two CLIP encoders' penultimate states,
concatenated), ``text_embeds`` (TE2's pooled projection) and ``time_ids`` (orig h, w, crop top, left,
target h, w), with ``timesteps`` on SDXL's scale (``t * 999``). Attention uses diffusers' default
processor (PyTorch SDPA).

Parameter names: ``body.<U-Net name>`` (e.g. ``body.down_blocks.1.attentions.0...``, the removed parts
absent), ``patch_encoder.*`` and ``patch_decoder.*``. SDXL weights load into the body by name with
:meth:`PixelSDXL.load_sdxl_unet`.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint
from torch import nn

from t2i.models import public_config

# base_resolution -> number of leading U-Net levels the cut removes
CUTS = {64: 1, 32: 2}

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (keys that differ from diffusers' defaults)
SDXL_UNET_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # pooled 1280 + 6 size numbers x 256
)
# An SDXL-shaped U-Net for 32 px Shapes on a CPU: a 96-d context (CLIP encoders of 32 + 64 dims), a 64-d pooled
# text vector, 8-d size features (64 + 6*8 = 112).
SHAPES_UNET_CONFIG = dict(
    SDXL_UNET_CONFIG, sample_size=8, block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 1, 1),
    attention_head_dim=(1, 2, 2), norm_num_groups=8, cross_attention_dim=96, addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=112,
)

PIXEL_SDXL_PRESETS: dict[str, dict] = {
    # The original's two default architectures (sdxl_pixel_unet.py:473-482).
    "paper64": dict(unet_config=SDXL_UNET_CONFIG, base_resolution=64, patch_size=16, patch_hidden=512,
                    patch_num_res_blocks=3, patch_norm_num_groups=32),
    "paper32": dict(unet_config=SDXL_UNET_CONFIG, base_resolution=32, patch_size=32, patch_hidden=768,
                    patch_num_res_blocks=4, patch_norm_num_groups=32),
    # CPU preset for 32 px images: patch 4 gives an 8x8 grid (4x4 after the body's one downsample); 2.7 M parameters.
    # A training step (AdamW) at batch 64 with 20 text tokens took about 0.8 s of one CPU core.
    "shapes32": dict(unet_config=SHAPES_UNET_CONFIG, base_resolution=64, patch_size=4, patch_hidden=64,
                     patch_num_res_blocks=2, patch_norm_num_groups=8),
}

# The body implements SDXL's conditioning path only; U-Net options that would change it are refused.
_SDXL_ONLY = dict(addition_embed_type="text_time", class_embed_type=None, num_class_embeds=None, encoder_hid_dim=None,
                  time_cond_proj_dim=None, center_input_sample=False, attention_type="default")


def text_widths(unet_config: dict) -> tuple[int, int]:
    """``(context, pooled)`` widths an SDXL-shaped ``UNet2DConditionModel`` config takes: its
    ``cross_attention_dim``, and its ``text_time`` input less the six size numbers' features."""
    c = unet_config
    return c["cross_attention_dim"], c["projection_class_embeddings_input_dim"] - 6 * c["addition_time_embed_dim"]


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C*P*P, H/P, W/P]``, channel index ``c*P*P + py*P + px``."""
    return F.pixel_unshuffle(x, patch_size)


def unpatchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The exact inverse of :func:`patchify`."""
    return F.pixel_shuffle(x, patch_size)


class ResidualConvBlock(nn.Module):
    """Post-norm residual block: ``silu(GN(conv3(silu(GN(conv3(x))))) + x)``."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        return F.silu(self.norm2(self.conv2(h)) + x)


class PatchConvStack(nn.Module):
    """Patch encoder/decoder at the patch grid: 1x1 conv to ``hidden`` -> GroupNorm -> SiLU ->
    ``num_blocks`` :class:`ResidualConvBlock` -> 1x1 conv to ``out_channels``."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, num_blocks: int, groups: int):
        super().__init__()
        self.proj_in = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.norm_in = nn.GroupNorm(groups, hidden)
        self.blocks = nn.ModuleList([ResidualConvBlock(hidden, groups) for _ in range(num_blocks)])
        self.proj_out = nn.Conv2d(hidden, out_channels, kernel_size=1)
        self.gradient_checkpointing = False  # set by ModelMixin.enable_gradient_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.norm_in(self.proj_in(x)))
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x)
            else:
                x = block(x)
        return self.proj_out(x)


class SDXLBody(nn.Module):
    """The part of a ``UNet2DConditionModel`` that the cut keeps, under the U-Net's own tensor names.

    Keeps the time and ``text_time`` embeddings, ``down_blocks`` from level ``removed_levels`` on (a
    ``ModuleDict`` keyed by the original index, so names stay ``down_blocks.<i>.*``), the mid block and
    the first ``levels - removed_levels`` up blocks, the last of them without its upsampler.
    ``forward(features, ...)`` maps the encoder's features to the decoder's.
    """

    def __init__(self, unet: UNet2DConditionModel, removed_levels: int):
        super().__init__()
        config = dict(unet.config)
        wrong = {k: config.get(k) for k, v in _SDXL_ONLY.items() if config.get(k) != v}
        if wrong:
            raise ValueError(f"the pixel-SDXL body supports SDXL's conditioning only; U-Net config has {wrong}, "
                             f"needs {dict((k, _SDXL_ONLY[k]) for k in wrong)}")
        levels = len(unet.down_blocks)
        if not 0 < removed_levels < levels:
            raise ValueError(f"cannot remove {removed_levels} of the U-Net's {levels} levels")
        self.unet_config = config
        self.time_proj, self.time_embedding = unet.time_proj, unet.time_embedding
        self.add_time_proj, self.add_embedding = unet.add_time_proj, unet.add_embedding
        self.time_embed_act = unet.time_embed_act
        self.down_blocks = nn.ModuleDict({str(i): unet.down_blocks[i] for i in range(removed_levels, levels)})
        self.mid_block = unet.mid_block
        kept_up = levels - removed_levels
        self.up_blocks = nn.ModuleList(unet.up_blocks[:kept_up])
        self.up_blocks[-1].upsamplers = None
        self.removed_prefixes = ("conv_in.", "conv_norm_out.", "conv_out.",
                                 *(f"down_blocks.{i}." for i in range(removed_levels)),
                                 *(f"up_blocks.{i}." for i in range(kept_up, levels)),
                                 f"up_blocks.{kept_up - 1}.upsamplers.")
        self.in_channels = self.down_blocks[str(removed_levels)].resnets[0].in_channels
        self.out_channels = self.up_blocks[-1].resnets[-1].out_channels
        self.downscale = 2 ** sum(block.downsamplers is not None for block in self.down_blocks.values())

    def state_dict_from_unet(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The body's tensors from a whole U-Net's: a diffusers ``UNet2DConditionModel`` state dict or an
        SDXL single-file checkpoint (``model.diffusion_model.*``, converted by diffusers). Only the tensors
        of the removed parts are dropped; anything else foreign stays, for a strict load to refuse."""
        if any(key.startswith(LDM_UNET_KEY) for key in state_dict):
            state_dict = convert_ldm_unet_checkpoint(state_dict, self.unet_config)
        return {k: v for k, v in state_dict.items() if not k.startswith(self.removed_prefixes)}

    def embed(self, timesteps: torch.Tensor, text_embeds: torch.Tensor, time_ids: torch.Tensor,
              dtype: torch.dtype) -> torch.Tensor:
        """SDXL's ``time_embedding(sin(timesteps)) + add_embedding([text_embeds, sin(time_ids)])``."""
        batch = text_embeds.shape[0]
        timesteps = torch.as_tensor(timesteps, device=text_embeds.device).reshape(-1).expand(batch)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype))
        time_embeds = self.add_time_proj(time_ids.flatten()).reshape(batch, -1)
        emb = emb + self.add_embedding(torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype))
        return emb if self.time_embed_act is None else self.time_embed_act(emb)

    def forward(self, features: torch.Tensor, timesteps: torch.Tensor, encoder_hidden_states: torch.Tensor,
                text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
        emb = self.embed(timesteps, text_embeds, time_ids, features.dtype)
        attn = dict(encoder_hidden_states=encoder_hidden_states)
        h, skips = features, (features,)
        for block in self.down_blocks.values():
            h, res = block(h, emb, **attn) if getattr(block, "has_cross_attention", False) else block(h, emb)
            skips += res
        if self.mid_block is not None:
            h = self.mid_block(h, emb, **attn) if getattr(self.mid_block, "has_cross_attention", False) \
                else self.mid_block(h, emb)
        for block in self.up_blocks:
            n = len(block.resnets)
            skips, res = skips[:-n], skips[-n:]
            kwargs = attn if getattr(block, "has_cross_attention", False) else {}
            h = block(hidden_states=h, res_hidden_states_tuple=res, temb=emb, **kwargs)
        return h


class PixelSDXL(ModelMixin, ConfigMixin):
    """Pixel-space SDXL: ``forward(pixels_noisy, timesteps, encoder_hidden_states, text_embeds, time_ids)``
    predicts x0, same shape as ``pixels_noisy`` ``[B, 3, H, W]`` in [-1, 1].

    ``unet_config``: a ``UNet2DConditionModel`` config of SDXL's shape (default: SDXL base); the saved config
    holds it in full. ``base_resolution``: the cut, 64 or 32 (see the module docstring). ``timesteps``:
    ``[B]`` or scalar, ``t * 999`` with t = 1 pure noise. ``encoder_hidden_states``: ``[B, L,
    cross_attention_dim]``; ``text_embeds``: ``[B, pooled]``; ``time_ids``: ``[B, 6]``. H and W must be
    multiples of :attr:`size_multiple`.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, unet_config: dict | None = None, base_resolution: int = 64, patch_size: int = 16,
                 patch_hidden: int = 512, patch_num_res_blocks: int = 3, patch_norm_num_groups: int = 32):
        super().__init__()
        if base_resolution not in CUTS:
            raise ValueError(f"base_resolution must be one of {sorted(CUTS)}, not {base_resolution}")
        unet = UNet2DConditionModel.from_config(SDXL_UNET_CONFIG if unet_config is None else unet_config)
        resolved = {k: list(v) if isinstance(v, tuple) else v for k, v in public_config(unet).items()}
        self.register_to_config(unet_config=resolved)
        self.body = SDXLBody(unet, CUTS[base_resolution])
        patch_channels = 3 * patch_size ** 2
        self.patch_encoder = PatchConvStack(patch_channels, patch_hidden, self.body.in_channels,
                                            patch_num_res_blocks, patch_norm_num_groups)
        self.patch_decoder = PatchConvStack(self.body.out_channels, patch_hidden, patch_channels,
                                            patch_num_res_blocks, patch_norm_num_groups)

    @property
    def context_dim(self) -> int:
        """Width of the text context it takes (``encoder_hidden_states``)."""
        return text_widths(self.body.unet_config)[0]

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled text vector it takes (:func:`text_widths`)."""
        return text_widths(self.body.unet_config)[1]

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this: the patch size times the body's downsampling."""
        return self.config.patch_size * self.body.downscale

    def check_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless ``height`` and ``width`` are multiples of :attr:`size_multiple`."""
        m = self.size_multiple
        if height % m or width % m:
            raise ValueError(
                f"pixel-SDXL (base_resolution {self.config.base_resolution}, patch {self.config.patch_size}) takes "
                f"heights and widths that are multiples of {m} (patch x {self.body.downscale} for the body's "
                f"downsampling), got {height}x{width}")

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, H, W]`` -> the body's input features ``[B, body.in_channels, H/P, W/P]``."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixel-SDXL takes images [B, 3, H, W], got shape {tuple(pixels.shape)}")
        self.check_size(*pixels.shape[-2:])
        return self.patch_encoder(patchify(pixels, self.config.patch_size))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """The body's output features ``[B, body.out_channels, h, w]`` -> pixels ``[B, 3, h*P, w*P]``."""
        return unpatchify(self.patch_decoder(features), self.config.patch_size)

    def forward(self, pixels_noisy: torch.Tensor, timesteps: torch.Tensor, encoder_hidden_states: torch.Tensor,
                text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
        features = self.body(self.encode(pixels_noisy), timesteps, encoder_hidden_states, text_embeds, time_ids)
        return self.decode(features)

    def load_sdxl_unet(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load SDXL U-Net weights (diffusers names, or a single-file checkpoint) into the body, strictly:
        every body tensor must be there, and nothing but the removed parts may be left over."""
        self.body.load_state_dict(self.body.state_dict_from_unet(state_dict), strict=True)


def _preset(name: str) -> dict:
    if name not in PIXEL_SDXL_PRESETS:
        raise KeyError(f"unknown pixel-SDXL preset {name!r}; known: {', '.join(PIXEL_SDXL_PRESETS)}")
    return PIXEL_SDXL_PRESETS[name]


def preset_unet_config(name: str, *, context_dim: int | None = None, pooled_dim: int | None = None,
                       overrides: dict | None = None) -> dict:
    """The ``UNet2DConditionModel`` config of a :data:`PIXEL_SDXL_PRESETS` entry, merged with ``overrides``,
    its ``cross_attention_dim`` set to ``context_dim`` and its ``text_time`` input to ``pooled_dim + 6 *
    addition_time_embed_dim`` (for other text encoders): the whole U-Net whose body the preset keeps (a latent
    SDXL teacher of that shape is built from it too)."""
    unet = {**_preset(name)["unet_config"], **(overrides or {})}
    if context_dim is not None:
        unet["cross_attention_dim"] = context_dim
    if pooled_dim is not None:
        unet["projection_class_embeddings_input_dim"] = pooled_dim + 6 * unet["addition_time_embed_dim"]
    return unet


def pixel_sdxl_from_preset(name: str, *, context_dim: int | None = None, pooled_dim: int | None = None,
                           **overrides) -> PixelSDXL:
    """A :class:`PixelSDXL` from a :data:`PIXEL_SDXL_PRESETS` entry: its U-Net from :func:`preset_unet_config`
    (a ``unet_config`` override is merged into the preset's); other ``overrides`` replace top-level keys."""
    preset = _preset(name)
    unknown = set(overrides) - set(inspect.signature(PixelSDXL.__init__).parameters)
    if unknown:
        raise ValueError(f"unknown pixel-SDXL config key(s) {sorted(unknown)} in overrides for {name}")
    unet = preset_unet_config(name, context_dim=context_dim, pooled_dim=pooled_dim,
                              overrides=overrides.pop("unet_config", {}))
    return PixelSDXL(**{**preset, **overrides, "unet_config": unet})
