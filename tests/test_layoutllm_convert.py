"""LayoutLLM-T2I's published checkpoint -> the drawer folder: three parts assembled (``torch_parts``) and
converted (``convert: layoutllm-gligen``) into a StableDiffusionGLIGENPipeline-layout folder whose U-Net keeps
the relation module; a tiny random GLIGEN in the original's LDM key names stands in for the 7 GB release."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from gligen_ldm_tiny import UNET, ldm_checkpoint, networks, reference_clip, split_model
from http_server import LoopbackServer
from omegaconf_pickles import save_parts

from t2i.checkpoints.assemble import AssetError, assemble_asset
from t2i.checkpoints.hashing import verify_sha256sums, write_sha256sums
from t2i.config import ConfigError, validate_config

ROOT = Path(__file__).resolve().parents[1]
NAMES = tuple(f"checkpoints_00335001_{n}.pth" for n in ("model_chunk0", "model_chunk1", "others"))


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A results/ tree holding the reference CLIP asset, the original networks and their checkpoint."""
    monkeypatch.chdir(tmp_path)
    clip = reference_clip(tmp_path / "results" / "pretrained" / "clip-l")
    write_sha256sums(clip)
    nets = networks(clip)
    return {"clip": clip, "nets": nets, "ckpt": ldm_checkpoint(nets), "tmp": tmp_path}


def asset_cfg(srv: LoopbackServer, folder: Path, parts: dict[str, object]) -> dict:
    files = save_parts(folder, parts)
    for name, data in files.items():
        srv.add(f"/files/{name}", data)
    return {"source": "torch_parts", "convert": "layoutllm-gligen", "clip": "clip-l",
            "parts": [{"filename": n, "sha256": hashlib.sha256(d).hexdigest(), "url": srv.url(f"/files/{n}")}
                      for n, d in files.items()]}


def test_converted_folder_is_the_original_networks_as_a_gligen_pipeline(world):
    from diffusers import UNet2DConditionModel

    from t2i.latent.gligen import GLIGENDrawer, draw, unconditional

    out = world["tmp"] / "results" / "pretrained" / "layoutllm"
    with LoopbackServer() as srv:
        assemble_asset("layoutllm", asset_cfg(srv, world["tmp"] / "published", split_model(world["ckpt"], NAMES)), out)

    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "checkpoint.json", "model_index.json",
                                                     "provenance.json", "scheduler", "text_encoder", "tokenizer",
                                                     "unet", "vae"]
    verify_sha256sums(out)
    assert json.loads((out / "checkpoint.json").read_text())["iters"] == 335001
    details = json.loads((out / "provenance.json").read_text())["source"]["converted"]
    assert details["relation_parameters"] == sum(
        p.numel() for n, p in world["nets"]["unet"].named_parameters() if ".rela_fuse." in n) > 0

    drawer = GLIGENDrawer.load(out)
    for name, module in (("unet", drawer.unet), ("vae", drawer.vae), ("text_encoder", drawer.text.model)):
        want, got = world["nets"][name].state_dict(), module.state_dict()
        assert got.keys() == want.keys(), name
        assert all(torch.equal(got[k], want[k]) for k in want), name
    # settings no tensor shape shows (heads, sinusoid order, ...) also match: the same function
    assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in drawer.unet.config.items() if k in UNET} == UNET
    assert drawer.vae.config.sample_size == 16
    assert drawer.vae.config.scaling_factor == 0.18215
    assert drawer.text.tokenizer("a red circle").input_ids == \
        type(drawer.text.tokenizer).from_pretrained(world["clip"])("a red circle").input_ids

    sched = drawer.scheduler()  # PLMS at 50 steps visits the original's timesteps 1, 21, ..., 981
    sched.set_timesteps(50)
    assert sorted(set(sched.timesteps.tolist())) == list(range(1, 1000, 20))
    betas = world["ckpt"]["diffusion"]["betas"]
    assert torch.allclose(sched.betas.double(), betas.double(), rtol=1e-5, atol=0)

    # without the relation module the rest is diffusers' plain GLIGEN U-Net, key for key
    plain = {k: v for k, v in drawer.unet.state_dict().items() if ".rela_fuse." not in k}
    config = {k: v for k, v in UNET.items() if k != "relation_dim"}
    UNet2DConditionModel(attention_type="gated", **config).load_state_dict(plain, strict=True)

    layout = [{"name": "red circle", "box": [0.1, 0.1, 0.5, 0.6]}, {"name": "blue square", "box": [0.5, 0.4, 0.9, 0.9]}]
    relations = [["red circle left of blue square"]]
    cond = drawer.conditions(["a red circle left of a blue square"], [layout], relations, "cpu")
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([500])
    original_unet = world["nets"]["unet"].eval().requires_grad_(False)
    with torch.no_grad():
        converted = drawer(x, t, cond)
        original = GLIGENDrawer(original_unet, drawer.text, drawer.scheduler_config, drawer.vae)(x, t, cond)
        precomputed = drawer(x, t, {**cond, "relation": drawer.relation(cond, (8, 8), levels=3)})  # as draw() does
    # the same float32 network, possibly through other kernels: sums reordered at the 1e-6 level; a wrong head
    # count or weight differs at order 1
    assert torch.allclose(converted, original, rtol=1e-5, atol=1e-5), (converted - original).abs().max()
    assert torch.allclose(precomputed, converted, rtol=1e-5, atol=1e-5), (precomputed - converted).abs().max()
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    images = drawer.decode(draw(drawer, noise, cond, unconditional(drawer, relations, "cpu"), steps=3, cfg=7.5,
                                beta=0.3))
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    drawer.cast(torch.bfloat16)  # sample.dtype bf16: all three networks, images still float32 in [-1, 1]
    assert {p.dtype for m in (drawer.unet, drawer.text.model, drawer.vae) for p in m.parameters()} == {torch.bfloat16}
    low = drawer.decode(draw(drawer, noise, cond, unconditional(drawer, relations, "cpu"), steps=3, cfg=7.5, beta=0.3))
    # bf16 keeps 8 bits of mantissa: through three steps and the decoder the images move by a few percent of
    # their range, far below a broken cast (order 1)
    assert low.dtype == torch.float32 and (low - images).abs().mean() < 0.1, (low - images).abs().mean()


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("input_blocks.1.1.transformer_blocks.0.rela_fuse.alpha_attn"),
     r"unet: the checkpoint does not match the network its config describes: missing "
     r"\['down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.rela_fuse\.alpha_attn'\]"),
    (lambda m: m.update({"label_emb.0.weight": torch.zeros(2, 2)}),
     r"unet: \d+ tensors in the checkpoint became \d+; 1 fit no unet tensor, e\.g\. \['label_emb\.0\.weight'\]"),
    (lambda m: m.update({"input_blocks.1.1.proj_in.weight": torch.zeros(3, 3, 1, 1)}),
     r"unet: .*shape differs \['down_blocks\.0\.attentions\.0\.proj_in\.weight'\]"),
])
def test_a_checkpoint_that_does_not_fit_fails_naming_the_tensor(world, edit, message):
    edit(world["ckpt"]["model"])
    out = world["tmp"] / "results" / "pretrained" / "layoutllm"
    with LoopbackServer() as srv:
        cfg = asset_cfg(srv, world["tmp"] / "published", split_model(world["ckpt"], NAMES))
        with pytest.raises(AssetError, match=rf"^pretrained\.layoutllm\.convert: {message}"):
            assemble_asset("layoutllm", cfg, out)
    assert not out.exists()


def test_a_relation_count_other_than_the_drawers_is_named(world):
    world["ckpt"]["config_dict"]["_content"]["max_relations"]._val = 12
    out = world["tmp"] / "results" / "pretrained" / "layoutllm"
    with LoopbackServer() as srv:
        cfg = asset_cfg(srv, world["tmp"] / "published", split_model(world["ckpt"], NAMES))
        with pytest.raises(AssetError, match=r"^pretrained\.layoutllm\.convert: max_relations is 12; the drawer "
                                             r"feeds 10 relation slots$"):
            assemble_asset("layoutllm", cfg, out)


def test_sd14_config_gives_sds_unet():
    from t2i.checkpoints.gligen_ldm import ConversionError, unet_config

    params = {"image_size": 64, "in_channels": 4, "out_channels": 4, "model_channels": 320,  # coco2014.yaml
              "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_heads": 8,
              "transformer_depth": 1, "context_dim": 768, "fuser_type": "gatedSA",
              "grounding_tokenizer": {"params": {"in_dim": 768, "out_dim": 768}}}
    config = unet_config({"params": params}, relation_dim=768)
    assert config["block_out_channels"] == [320, 640, 1280, 1280] and config["attention_head_dim"] == 8
    assert config["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert config["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    del params["context_dim"]
    with pytest.raises(ConversionError, match=r"^the checkpoint's config has no model\.params\.context_dim$"):
        unet_config({"params": params}, relation_dim=768)


def test_the_converter_needs_a_clip_asset_and_depends_on_it():
    from t2i import workflow as wf

    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["pretrained"]["layoutllm"] = {"source": "torch_parts", "repo_id": "leigangqu/LayoutLLM-T2I",
                                      "parts": [{"filename": NAMES[0], "sha256": "1" * 64}],
                                      "convert": "layoutllm-gligen"}
    with pytest.raises(ConfigError, match=r"^pretrained\.layoutllm\.clip: converter layoutllm-gligen needs this asset"):
        validate_config(raw)
    raw["pretrained"]["layoutllm"]["clip"] = "nowhere"
    with pytest.raises(ConfigError, match=r"^pretrained\.layoutllm\.clip: no pretrained asset named 'nowhere'"):
        validate_config(raw)
    raw["pretrained"]["clip-l"] = {"source": "huggingface", "repo_id": "openai/clip-vit-large-patch14"}
    raw["pretrained"]["layoutllm"]["clip"] = "clip-l"
    config = validate_config(raw)
    assert wf.asset_dependencies(config, "layoutllm") == {"clip": f"{wf.RESULTS}/pretrained/clip-l"}
