"""Pixel-space SDXL: the cut of the U-Net at both base resolutions, patchify, SDXL weight loading, save/load."""
import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from t2i.models import public_config
from t2i.models.pixel_sdxl import (SDXL_UNET_CONFIG, PatchConvStack, PixelSDXL, patchify, pixel_sdxl_from_preset,
                                   unpatchify)
from pixel_sdxl_tiny import CONTEXT, CUT, POOLED, SIZE, TIME_DIM, TINY_UNET, randomized, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def inputs(batch: int = 2, size: int = SIZE, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    t = torch.rand(batch, generator=g) * 999
    ctx = torch.randn(batch, 5, CONTEXT, generator=g)
    pooled = torch.randn(batch, POOLED, generator=g)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * batch, dtype=torch.float32)
    return pixels, t, ctx, pooled, time_ids


def test_patchify_round_trip_and_channel_order():
    x = torch.randn(2, 3, 12, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 48, 3, 2)
    assert torch.equal(unpatchify(p, 4), x)
    c, py, px, gy, gx = 2, 1, 3, 2, 1  # channel order (C, py, px), as the original's Patchify
    assert p[0, c * 16 + py * 4 + px, gy, gx] == x[0, c, gy * 4 + py, gx * 4 + px]


@pytest.mark.parametrize("base_resolution", [64, 32])
def test_shapes_through_the_cut(base_resolution):
    patch, enc_ch, dec_ch, removed = CUT[base_resolution]
    model = tiny(base_resolution)
    assert list(model.body.down_blocks) == [str(i) for i in range(removed, 3)]
    assert len(model.body.up_blocks) == 3 - removed
    assert model.body.up_blocks[-1].upsamplers is None
    assert (model.body.in_channels, model.body.out_channels) == (enc_ch, dec_ch)
    seen = {}
    model.body.register_forward_hook(lambda mod, args, out: seen.update(body_in=args[0].shape, body_out=out.shape))
    pixels, *cond = inputs()
    out = model(pixels, *cond)
    grid = SIZE // patch
    assert seen == {"body_in": (2, enc_ch, grid, grid), "body_out": (2, dec_ch, grid, grid)}
    assert out.shape == pixels.shape and torch.isfinite(out).all()
    assert model.size_multiple == patch * (2 if base_resolution == 64 else 1)


@pytest.mark.parametrize("base_resolution", [64, 32])
def test_sdxl_weights_load_strictly_and_the_body_equals_the_unet_between_the_cuts(base_resolution):
    torch.manual_seed(3)
    unet = randomized(UNet2DConditionModel(**TINY_UNET)).eval()
    model = tiny(base_resolution)
    model.load_sdxl_unet(unet.state_dict())
    removed = CUT[base_resolution][3]
    cut_in, cut_out = {}, {}
    unet.down_blocks[removed - 1].downsamplers[0].register_forward_hook(lambda mod, args, out: cut_in.update(x=out))
    unet.up_blocks[2 - removed].upsamplers[0].register_forward_pre_hook(lambda mod, args: cut_out.update(x=args[0]))
    _, t, ctx, pooled, time_ids = inputs()
    latents = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        unet(latents, t, ctx, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})
        body_out = model.body(cut_in["x"], t, ctx, pooled, time_ids)
    assert cut_out["x"].abs().mean() > 0.1
    torch.testing.assert_close(body_out, cut_out["x"], rtol=0, atol=0)

    # strict: a missing body tensor or a foreign one is refused; the removed parts are not
    state = unet.state_dict()
    missing = {k: v for k, v in state.items() if k != "mid_block.resnets.0.conv1.weight"}
    with pytest.raises(RuntimeError, match="mid_block.resnets.0.conv1.weight"):
        model.load_sdxl_unet(missing)
    with pytest.raises(RuntimeError, match="extra.weight"):
        model.load_sdxl_unet({**state, "extra.weight": torch.zeros(1)})
    dropped = set(state) - set(model.body.state_dict())
    assert {key.split(".")[0] for key in dropped} == {"conv_in", "conv_norm_out", "conv_out", "down_blocks",
                                                       "up_blocks"}
    assert {k for k in dropped if k.startswith("down_blocks")} == \
        {k for k in state if k.startswith(tuple(f"down_blocks.{i}." for i in range(removed)))}
    assert {k for k in dropped if k.startswith("up_blocks")} == \
        {k for k in state if k.startswith(tuple(f"up_blocks.{i}." for i in range(3 - removed, 3)))
         or k.startswith(f"up_blocks.{2 - removed}.upsamplers.")}


_RESNET_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_FIXED_LDM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def to_single_file(state: dict, layers: int = 2) -> dict:
    """An SDXL single-file (SGM) layout of a diffusers U-Net state dict, as in sd_xl_base_1.0.safetensors."""
    def resnet(rest):
        return ".".join([_RESNET_LDM[rest[0]], *rest[1:]])

    def ldm(key):
        for new, old in _FIXED_LDM.items():
            if key.startswith(new + "."):
                return old + key[len(new):]
        top, *parts = key.split(".")
        if top == "mid_block":
            kind, j, *rest = parts
            if kind == "resnets":
                return f"middle_block.{2 * int(j)}.{resnet(rest)}"
            return f"middle_block.1.{'.'.join(rest)}"
        b, kind, j, *rest = parts
        b, j = int(b), int(j)
        if kind == "downsamplers":
            return f"input_blocks.{(b + 1) * (layers + 1)}.0.op.{rest[1]}"
        if kind == "upsamplers":
            has_attn = any(k.startswith(f"up_blocks.{b}.attentions.") for k in state)
            return f"output_blocks.{b * (layers + 1) + layers}.{2 if has_attn else 1}.{'.'.join(rest)}"
        idx = 1 + b * (layers + 1) + j if top == "down_blocks" else b * (layers + 1) + j
        name = "input_blocks" if top == "down_blocks" else "output_blocks"
        return f"{name}.{idx}.0.{resnet(rest)}" if kind == "resnets" else f"{name}.{idx}.1.{'.'.join(rest)}"

    return {"model.diffusion_model." + ldm(k): v for k, v in state.items()}


@pytest.mark.parametrize("base_resolution", [64, 32])
def test_sdxl_single_file_checkpoint_loads_like_the_diffusers_state_dict(base_resolution):
    torch.manual_seed(4)
    state = randomized(UNet2DConditionModel(**TINY_UNET)).state_dict()
    single = to_single_file(state)
    sgm = r"model\.diffusion_model\.(input_blocks|middle_block|output_blocks|time_embed|label_emb|out)\..+"
    assert all(re.fullmatch(sgm, k) for k in single)
    single["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] = torch.ones(4)  # ignored
    from_diffusers, from_single = tiny(base_resolution), tiny(base_resolution, seed=9)
    from_diffusers.load_sdxl_unet(state)
    from_single.load_sdxl_unet(single)
    a, b = from_diffusers.body.state_dict(), from_single.body.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_pretrained_round_trip(tmp_path):
    model = randomized(tiny(64))
    model.save_pretrained(tmp_path)
    loaded = PixelSDXL.from_pretrained(tmp_path).eval()
    assert public_config(loaded) == public_config(model)
    assert loaded.config.unet_config["block_out_channels"] == [32, 64, 64]  # the U-Net config is saved in full
    args = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(*args), model(*args), rtol=0, atol=0)


@pytest.mark.parametrize("base_resolution,size", [(64, 36), (64, 28), (32, 36)])
def test_bad_height_or_width_fails_before_any_compute(base_resolution, size):
    model = tiny(base_resolution)
    calls = []
    model.patch_encoder.register_forward_pre_hook(lambda mod, args: calls.append(1))
    pixels, *cond = inputs(size=SIZE)
    bad = torch.randn(2, 3, SIZE, size)
    with pytest.raises(ValueError, match=rf"multiples of {model.size_multiple}.*got {SIZE}x{size}"):
        model(bad, *cond)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(pixels[:, :1], *cond)
    assert calls == []


def test_conditioning_reaches_the_output_and_samples_are_independent():
    model = randomized(tiny(64))
    pixels, t, ctx, pooled, time_ids = inputs(batch=3)
    with torch.no_grad():
        out = model(pixels, t, ctx, pooled, time_ids)
        assert not torch.allclose(out, model(pixels, t.flip(0), ctx, pooled, time_ids))
        assert not torch.allclose(out, model(pixels, t, ctx.flip(0), pooled, time_ids))
        assert not torch.allclose(out, model(pixels, t, ctx, pooled.flip(0), time_ids))
        assert not torch.allclose(out, model(pixels, t, ctx, pooled, time_ids * 2))
        alone = torch.cat([model(pixels[i:i + 1], t[i:i + 1], ctx[i:i + 1], pooled[i:i + 1], time_ids[i:i + 1])
                           for i in range(3)])
        torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(pixels[:1], t[0], ctx[:1], pooled[:1], time_ids[:1]), out[:1])  # scalar t


def test_attention_is_sdpa_and_gradient_checkpointing_changes_nothing():
    model = randomized(tiny(64)).train()
    assert {type(m.processor) for m in model.modules() if isinstance(m, Attention)} == {AttnProcessor2_0}
    args = inputs()

    def grads():
        model.zero_grad()
        model(*args).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.enable_gradient_checkpointing()
    assert all(m.gradient_checkpointing for m in model.modules() if isinstance(m, PatchConvStack))
    checkpointed = grads()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


# name: (removed down levels, encoder ch, decoder ch, patch, encoder M params, decoder M params, removed M params)
# The removed parts: conv_in, level 0 and out (5.4 + 11.2 + 0.02 M) plus the upsampler of up_blocks.1 (3.7 M) for
# paper64; for paper32 also level 1 (60.1 + 106.3 M) and the upsampler of up_blocks.0 (14.7 M) instead.
PAPER = {"paper64": (["1", "2"], 320, 640, 16, 14.7, 14.9, 20.3),
         "paper32": (["2"], 640, 1280, 32, 45.3, 45.8, 197.8)}


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_presets_cut_sdxl_as_the_original(name):
    down, enc_ch, dec_ch, patch, enc_m, dec_m, removed_m = PAPER[name]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        model = pixel_sdxl_from_preset(name)
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    assert abs(count(unet) / 2567 - 1) < 0.01  # SDXL base U-Net: 2.567 B parameters
    assert list(model.body.down_blocks) == down and model.size_multiple == 32
    assert (model.body.in_channels, model.body.out_channels, model.config.patch_size) == (enc_ch, dec_ch, patch)
    assert abs(count(model.patch_encoder) - enc_m) < 0.1 and abs(count(model.patch_decoder) - dec_m) < 0.1
    assert abs(count(unet) - count(model.body) - removed_m) < 0.1
    level2 = model.body.down_blocks["2"].attentions[0]
    assert len(level2.transformer_blocks) == 10 and level2.transformer_blocks[0].attn2.heads == 20
    assert set(model.body.state_dict()) < set(unet.state_dict())


def test_shapes_preset_and_text_dims():
    model = pixel_sdxl_from_preset("shapes32", context_dim=CONTEXT, pooled_dim=POOLED).eval()
    assert model.config.unet_config["projection_class_embeddings_input_dim"] == POOLED + 6 * 8
    pixels, *cond = inputs()
    with torch.no_grad():
        assert model(pixels, *cond).shape == pixels.shape
    with pytest.raises(ValueError, match="patch_sise"):
        pixel_sdxl_from_preset("shapes32", patch_sise=8)
    with pytest.raises(ValueError, match="base_resolution"):
        pixel_sdxl_from_preset("shapes32", base_resolution=128)
    with pytest.raises(ValueError, match="SDXL's conditioning only.*addition_embed_type"):
        pixel_sdxl_from_preset("shapes32", unet_config={"addition_embed_type": None})
