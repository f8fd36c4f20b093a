"""LAFITE's generator and discriminator (Zhou et al., CVPR 2022; code drboog/Lafite) in pure PyTorch.

A StyleGAN2 (skip generator, resnet discriminator) conditioned on a CLIP feature ``fts``:

- Mapping: z -> normalize_2nd_moment -> ``map_num`` lrelu FC layers (lr multiplier 0.01) -> w,
  with ``w_avg`` tracked (beta ``w_avg_beta``) for truncation. The text does not enter it.
- Synthesis: the text enters every modulated conv and every ToRGB through the layer's own
  style network. For blocks at resolution <= ``change`` ("structure 2"):
  ``style = affine_0(cat[pre_1(pre_0(fts)), w])`` with ``pre_0``: f_dim -> (f_dim+text_hidden)//2 and
  ``pre_1``: -> text_hidden (both lrelu, lr multiplier 0.01) and ``affine_0``: w_dim+text_hidden -> in
  channels (bias init 1). Above ``change`` ("structure 1"): ``style = b(fts) + affine(w) * s(fts)``
  with three-layer ``scale_layer_*``/``bias_layer_*`` MLPs. ToRGB styles are further scaled by
  1/sqrt(in_channels) and not demodulated. The original hard-codes ``text_hidden`` = 512.
- Discriminator: resnet StyleGAN2 D whose epilogue adds a semantic head ``fts`` (C -> f_dim) on the
  ``fc`` features; the logit is ``out(fc) + <d_fts, fts>``. ``projection='batch_sum'`` is the released
  code (``(d_fts * fts).sum()`` over the whole batch, one scalar added to every sample; it produced
  the published numbers), ``'per_sample'`` the paper's per-sample inner product.

Module and buffer names follow the original, so the original's ``G``/``G_ema``/``D`` state dicts load
with ``strict=True`` (see tests/test_lafite_model.py). Everything runs in float32: ``num_fp16_res`` is
kept in the config for parity only, while ``conv_clamp`` clamps as in the original.
"""
from __future__ import annotations

import inspect
import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from t2i.models.stylegan_ops import (ACTIVATIONS, Conv2dLayer, FullyConnectedLayer, MinibatchStdLayer, bias_act,
                                     modulated_conv2d, normalize_2nd_moment, setup_filter, upsample2d)

_PAPER = dict(resolution=256, img_channels=3, channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256,
              z_dim=512, w_dim=512, map_num=8, text_hidden=512, change=256, mbstd_group_size=4)
LAFITE_PRESETS: dict[str, dict] = {
    # drboog/Lafite train.py --cfg=auto at 256 px (fmap 1): channels 512 up to 64 px, 256 at 128, 128 at 256.
    "paper256": _PAPER,
    # CPU preset for 32 px Shapes: channels 32/32/32/16 at 4/8/16/32 px, no clamping (fp32). One G step plus one
    # D step at batch 32 (no R1) took about 130 ms on 2 CPU threads (median of 10; an R1 pass adds about 80 ms);
    # channel_base=256 (channels 32/32/16/8) took about 100 ms.
    "shapes32": dict(_PAPER, resolution=32, channel_base=512, channel_max=32, num_fp16_res=0, conv_clamp=None,
                     z_dim=64, w_dim=64, map_num=2, text_hidden=64, change=32),
}
PROJECTIONS = ("batch_sum", "per_sample")


class _TextStyled(nn.Module):
    """A layer whose style vector comes from ``w`` and the text feature ``fts`` (LAFITE's structures 1 and 2)."""

    def _build_styles(self, structure: int, w_dim: int, f_dim: int, text_hidden: int, in_channels: int) -> None:
        self.structure = structure
        mid = (f_dim + text_hidden) // 2
        if structure == 2:
            self.pre_0 = FullyConnectedLayer(f_dim, mid, activation="lrelu", lr_multiplier=0.01)
            self.pre_1 = FullyConnectedLayer(mid, text_hidden, activation="lrelu", lr_multiplier=0.01)
            self.affine_0 = FullyConnectedLayer(w_dim + text_hidden, in_channels, bias_init=1)
        else:
            self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
            for kind in ("scale", "bias"):
                for idx, (i, o) in enumerate([(f_dim, mid), (mid, text_hidden)]):
                    setattr(self, f"{kind}_layer_{idx}",
                            FullyConnectedLayer(i, o, activation="lrelu", lr_multiplier=0.01))
                setattr(self, f"{kind}_layer_2", FullyConnectedLayer(text_hidden, in_channels))

    def styles(self, w: torch.Tensor, fts: torch.Tensor) -> torch.Tensor:
        if self.structure == 2:
            return self.affine_0(torch.cat([self.pre_1(self.pre_0(fts)), w], dim=1))
        scales = self.scale_layer_2(self.scale_layer_1(self.scale_layer_0(fts)))
        biases = self.bias_layer_2(self.bias_layer_1(self.bias_layer_0(fts)))
        return biases + self.affine(w) * scales


class SynthesisLayer(_TextStyled):
    """Modulated 3x3 conv (optionally upsampling by 2), per-pixel noise, bias, lrelu, clamp."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, structure: int, w_dim: int, f_dim: int,
                 text_hidden: int, up: int = 1, conv_clamp: float | None = None, kernel_size: int = 3):
        super().__init__()
        self.resolution, self.up, self.conv_clamp, self.padding = resolution, up, conv_clamp, kernel_size // 2
        self._build_styles(structure, w_dim, f_dim, text_hidden, in_channels)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x, w, fts, noise_mode="random", fused_modconv=True, gain=1):
        styles = self.styles(w, fts)
        noise = None
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device) * self.noise_strength
        elif noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=self.up == 1,
                             fused_modconv=fused_modconv)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias, act="lrelu", gain=ACTIVATIONS["lrelu"][2] * gain, clamp=clamp), styles


class ToRGBLayer(_TextStyled):
    """Modulated 1x1 conv to ``img_channels`` without demodulation; styles scaled by 1/sqrt(fan-in)."""

    def __init__(self, in_channels: int, out_channels: int, structure: int, w_dim: int, f_dim: int, text_hidden: int,
                 conv_clamp: float | None = None, kernel_size: int = 1):
        super().__init__()
        self.conv_clamp = conv_clamp
        self._build_styles(structure, w_dim, f_dim, text_hidden, in_channels)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x, w, fts, fused_modconv=True):
        styles = self.styles(w, fts) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias, clamp=self.conv_clamp), styles


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: [const 4x4 | conv0 (up 2)], conv1, torgb added to the
    upsampled image of the previous block. Takes ``num_conv + 1`` ws; the last is the ToRGB's."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, img_channels: int, **layer_kwargs):
        super().__init__()
        self.in_channels = in_channels
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, resolution, up=2, **layer_kwargs)
        self.conv1 = SynthesisLayer(out_channels, out_channels, resolution, **layer_kwargs)
        self.torgb = ToRGBLayer(out_channels, img_channels, **layer_kwargs)
        self.num_conv = 1 if in_channels == 0 else 2

    def forward(self, x, img, ws, fts, noise_mode="random", fused_modconv=True):
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
        convs = [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]
        styles = []
        for i, conv in enumerate(convs):
            x, s = conv(x, ws[:, i], fts, noise_mode=noise_mode, fused_modconv=fused_modconv)
            styles.append(s)
        y, s = self.torgb(x, ws[:, -1], fts, fused_modconv=fused_modconv)
        styles.append(s)
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img, styles


class SynthesisNetwork(nn.Module):
    """Blocks ``b4 .. b{resolution}``; block ``bR`` has min(channel_base // R, channel_max) channels
    and uses structure 2 when R <= ``change``, else structure 1."""

    def __init__(self, w_dim: int, f_dim: int, text_hidden: int, resolution: int, img_channels: int,
                 channel_base: int, channel_max: int, change: int, conv_clamp: float | None):
        super().__init__()
        self.block_resolutions = [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], res, img_channels,
                                   structure=2 if res <= change else 1, w_dim=w_dim, f_dim=f_dim,
                                   text_hidden=text_hidden, conv_clamp=conv_clamp)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last ToRGB; every other ToRGB shares its w with the next block's conv0

    def forward(self, ws, fts, noise_mode="random", fused_modconv=None):
        """``ws`` ``[N, num_ws, w_dim]`` -> (image ``[N, C, R, R]``, list of per-layer styles).
        ``fused_modconv`` defaults to ``not self.training``, as in the original."""
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be random, const or none, not {noise_mode!r}")
        if fused_modconv is None:
            fused_modconv = not self.training
        x = img = None
        styles, w_idx = [], 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur = ws.narrow(1, w_idx, block.num_conv + 1)
            x, img, block_styles = block(x, img, cur, fts, noise_mode=noise_mode, fused_modconv=fused_modconv)
            styles += block_styles
            w_idx += block.num_conv
        return img, styles


class MappingNetwork(nn.Module):
    """z -> normalize_2nd_moment -> ``num_layers`` lrelu FC layers -> w broadcast to ``num_ws``,
    with the moving average ``w_avg`` updated in training mode and truncation toward it."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8, lr_multiplier: float = 0.01,
                 w_avg_beta: float = 0.995):
        super().__init__()
        self.num_ws, self.num_layers, self.w_avg_beta = num_ws, num_layers, w_avg_beta
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(z_dim if idx == 0 else w_dim, w_dim, activation="lrelu",
                                                          lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False):
        x = normalize_2nd_moment(z.float())
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if self.training and not skip_w_avg_update:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x = torch.cat([self.w_avg.lerp(x[:, :cut], truncation_psi), x[:, cut:]], dim=1)
        return x


class LafiteGenerator(ModelMixin, ConfigMixin):
    """LAFITE generator: ``forward(z [N, z_dim], fts [N, f_dim])`` -> images ``[N, img_channels, R, R]``,
    nominally in [-1, 1] (not clamped). For style mixing call ``mapping`` and ``synthesis`` directly."""

    @register_to_config
    def __init__(self, resolution: int = 256, img_channels: int = 3, z_dim: int = 512, w_dim: int = 512,
                 f_dim: int = 512, map_num: int = 8, text_hidden: int = 512, channel_base: int = 32768,
                 channel_max: int = 512, change: int = 256, num_fp16_res: int = 4, conv_clamp: float | None = 256,
                 w_avg_beta: float = 0.995):
        super().__init__()
        if resolution < 4 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 4, not {resolution}")
        self.synthesis = SynthesisNetwork(w_dim, f_dim, text_hidden, resolution, img_channels, channel_base,
                                          channel_max, change, conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, map_num, w_avg_beta=w_avg_beta)

    def forward(self, z, fts, truncation_psi=1, truncation_cutoff=None, noise_mode="random", fused_modconv=None,
                return_styles=False):
        """Images, or (images, per-layer styles) with ``return_styles``. ``noise_mode``: random, const, none."""
        ws = self.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        img, styles = self.synthesis(ws, fts, noise_mode=noise_mode, fused_modconv=fused_modconv)
        return (img, styles) if return_styles else img


class DiscriminatorBlock(nn.Module):
    """Resnet D block: [fromrgb at the top resolution], conv0, conv1 (down 2), 1x1 skip (down 2), each
    branch times sqrt(0.5)."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
                 conv_clamp: float | None):
        super().__init__()
        self.in_channels = in_channels
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x, img):
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        return y + self.conv1(self.conv0(x), gain=math.sqrt(0.5))


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: mbstd -> conv -> fc (C*16 -> C, lrelu) -> out (C -> 1), and the semantic head fts (C -> f_dim)."""

    def __init__(self, in_channels: int, f_dim: int, mbstd_group_size: int, mbstd_num_channels: int,
                 conv_clamp: float | None):
        super().__init__()
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, activation="lrelu")
        self.fts = FullyConnectedLayer(in_channels, f_dim)
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x):
        fc = self.fc(self.conv(self.mbstd(x)).flatten(1))
        return self.out(fc), self.fts(fc)


class LafiteDiscriminator(ModelMixin, ConfigMixin):
    """LAFITE discriminator: ``forward(img, fts)`` -> (logit ``[N, 1]``, semantic feature ``[N, f_dim]``).

    ``projection``: ``batch_sum`` (the released code: every logit gets ``sum_ij d_fts_ij * fts_ij`` over
    the whole batch) or ``per_sample`` (the paper: ``<d_fts_i, fts_i>``). ``use_norm`` L2-normalises
    ``d_fts`` first (the original's ``--d_use_norm``, off by default)."""

    @register_to_config
    def __init__(self, resolution: int = 256, img_channels: int = 3, f_dim: int = 512, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 4, conv_clamp: float | None = 256,
                 mbstd_group_size: int = 4, mbstd_num_channels: int = 1, projection: str = "batch_sum",
                 use_norm: bool = False):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, not {resolution}")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, not {projection!r}")
        self.block_resolutions = [2 ** i for i in range(int(math.log2(resolution)), 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        for res in self.block_resolutions:
            setattr(self, f"b{res}", DiscriminatorBlock(channels[res] if res < resolution else 0, channels[res],
                                                        channels[res // 2], img_channels, conv_clamp))
        self.b4 = DiscriminatorEpilogue(channels[4], f_dim, mbstd_group_size, mbstd_num_channels, conv_clamp)

    def forward(self, img, fts):
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        logit, d_fts = self.b4(x)
        if self.config.use_norm:
            d_fts = d_fts / d_fts.norm(dim=-1, keepdim=True)
        if self.config.projection == "batch_sum":
            return logit + (d_fts * fts).sum(), d_fts
        return logit + (d_fts * fts).sum(dim=1, keepdim=True), d_fts


def lafite_from_preset(name: str, *, f_dim: int, **overrides) -> tuple[LafiteGenerator, LafiteDiscriminator]:
    """``(G, D)`` from a :data:`LAFITE_PRESETS` entry; ``overrides`` replace or add G/D config keys."""
    if name not in LAFITE_PRESETS:
        raise KeyError(f"unknown LAFITE preset {name!r}; known: {', '.join(LAFITE_PRESETS)}")
    config = {**LAFITE_PRESETS[name], **overrides, "f_dim": f_dim}
    keys = [set(inspect.signature(cls.__init__).parameters) - {"self"}
            for cls in (LafiteGenerator, LafiteDiscriminator)]
    unknown = set(config) - keys[0] - keys[1]
    if unknown:
        raise ValueError(f"unknown LAFITE config key(s) {sorted(unknown)} for {name}")
    return tuple(cls(**{k: v for k, v in config.items() if k in ks})
                 for cls, ks in zip((LafiteGenerator, LafiteDiscriminator), keys))
