"""The latent SDXL teacher's noise schedule and its features at pixel-SDXL's cut; the Shapes VAE's KL; the
config rules of trained assets that name other assets."""
import copy

import pytest
import torch
import yaml

from pixel_sdxl_tiny import CONTEXT, POOLED, TINY_UNET, randomized
from t2i.config import ConfigError, validate_config
from workflow_harness import ROOT


@pytest.fixture(scope="module")
def teacher():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from t2i.latent.sdxl import SDXL_SCHEDULER_CONFIG, LatentSDXLTeacher

    torch.manual_seed(0)
    unet = randomized(UNet2DConditionModel(**{**TINY_UNET, "sample_size": 16})).eval()
    vae = AutoencoderKL(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=8, layers_per_block=1).eval()
    return LatentSDXLTeacher(unet, vae, SDXL_SCHEDULER_CONFIG)


def _cond(batch: int):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 5, CONTEXT, generator=g), torch.randn(batch, POOLED, generator=g),
            torch.tensor([[32.0, 32, 0, 0, 32, 32]]).expand(batch, -1))


def test_schedule_is_sdxl_scaled_linear(teacher):
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1 - betas, 0)
    assert teacher.num_timesteps == 1000
    torch.testing.assert_close(teacher.alphas_cumprod.double(), expected, rtol=1e-5, atol=0)
    z0, noise = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    ts = torch.tensor([0, 999])
    z_t = teacher.add_noise(z0, noise, ts)
    a = expected[ts].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(z_t, a.sqrt() * z0 + (1 - a).sqrt() * noise)


def test_cut_features_are_the_unets_own_at_the_cut(teacher):
    """Encoder target: down_blocks[r-1]'s output (after its downsampler); decoder input: what up_blocks[L-r-1]'s
    upsampler receives. Checked against the U-Net's blocks run by hand, for both cuts."""
    unet = teacher.unet
    context, pooled, time_ids = _cond(2)
    z, ts = torch.randn(2, 4, 16, 16), torch.tensor([10, 700])
    with torch.no_grad():
        emb = unet.time_embedding(unet.time_proj(ts).to(z.dtype))
        emb = emb + unet.get_aug_embed(emb, context, {"text_embeds": pooled, "time_ids": time_ids})
        h = unet.conv_in(z)
        down = []
        for block in unet.down_blocks:
            kw = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            h, _ = block(h, emb, **kw)
            down.append(h)
        seen = []
        handle = unet.up_blocks[1].upsamplers[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        unet(z, ts, encoder_hidden_states=context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})
        handle.remove()
    for r in (1, 2):
        got = teacher.cut_features(z, ts, context, pooled, time_ids, r, "encoder")
        torch.testing.assert_close(got, down[r - 1], rtol=1e-5, atol=1e-5)
    assert teacher.cut_features(z, ts, context, pooled, time_ids, 1, "decoder").shape == (2, 64, 8, 8)
    torch.testing.assert_close(teacher.cut_features(z, ts, context, pooled, time_ids, 1, "decoder"), seen[0])
    with pytest.raises(ValueError, match="cannot remove 3"):
        teacher.cut_features(z, ts, context, pooled, time_ids, 3, "encoder")
    # hooks are removed after each call
    assert not unet.down_blocks[0]._forward_hooks and not unet.up_blocks[1].upsamplers[0]._forward_pre_hooks


class _Encoders(torch.nn.Module):
    """Stands in for SDXLTextEncoders: fixed-width random conditioning."""
    context_dim, pooled_dim, max_length = CONTEXT, POOLED, 5

    def forward(self, captions):
        return torch.randn(len(captions), 5, CONTEXT), torch.randn(len(captions), POOLED)


class _Ctx:
    """The loop's StepContext, reduced to what a distillation step uses."""

    def __init__(self, modules):
        import contextlib

        self.modules = modules
        self.accelerator = type("Acc", (), {"autocast": staticmethod(contextlib.nullcontext)})()

    def module(self, name):
        return self.modules[name]

    def backward(self, loss):
        loss.backward()

    def optimizer_step(self, name):
        pass


def _distill_exp(part: str) -> dict:
    return {"distill": {"part": part}, "data": {},
            "loss": {"objective": "x0", "timesteps": "uniform", "logit_mean": 0.8, "logit_std": 0.8,
                     "noise_scale": 1.0, "lpips_weight": 0.0},
            "train": {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "warmup_steps": 0,
                      "grad_clip": 1.0, "optimizer": "adamw", "accumulate": 2, "lr_text_encoder1": 0.0,
                      "lr_text_encoder2": 0.0, "ema_decays": []}}


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_a_distillation_step_feeds_the_teacher_noisy_latents_at_the_students_timestep(teacher, part, monkeypatch,
                                                                                        tmp_path):
    """The original's bug: its teacher saw clean latents. Here the teacher's features come from its own
    add_noise of the batch's latents at tau = round(t * 999), t the student's; only the pass's part learns."""
    import t2i.diffusion.pixel_sdxl as flow
    from pixel_sdxl_tiny import tiny
    from t2i.systems.pixel_sdxl import PixelSDXLDistillTask

    seen = {}
    for obj, name in ((flow, "sample_timesteps"), (teacher, "latents"), (teacher, "add_noise"),
                      (teacher, "cut_features")):
        original = getattr(obj, name)

        def record(*args, _name=name, _fn=original, **kwargs):
            out = _fn(*args, **kwargs)
            seen[_name] = (args, out)
            return out
        monkeypatch.setattr(obj, name, record)
    model = tiny(64)
    task = PixelSDXLDistillTask(model, _Encoders(), teacher, _distill_exp(part), meta={})
    x0 = torch.rand(4, 3, 32, 32) * 2 - 1
    batch = {"image": x0, "caption": ["a red circle"] * 4, "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 4)}
    ctx = _Ctx({**task.modules, **task.frozen})
    out = task.step(batch, 0, ctx)
    (_, t), (_, z0), ((z0_in, _, tau), z_t) = seen["sample_timesteps"], seen["latents"], seen["add_noise"]
    (z_t_in, tau_in, *_), features = seen["cut_features"]
    assert torch.equal(z0_in, z0) and torch.equal(z_t_in, z_t) and torch.equal(tau_in, tau)
    assert torch.equal(tau, (t * 999).round().long()) and not torch.allclose(z_t, z0)
    assert out["loss"] > 0
    trained = model.patch_encoder if part == "encoder" else model.patch_decoder
    other = model.patch_decoder if part == "encoder" else model.patch_encoder
    assert all(p.grad is not None for p in trained.parameters())
    assert all(p.grad is None for p in [*other.parameters(), *model.body.parameters()])
    with pytest.raises(ValueError, match="remove train.ema_decays, loss.lpips_weight"):
        exp = _distill_exp(part)
        exp["train"]["ema_decays"], exp["loss"]["lpips_weight"] = [0.9], 0.1
        PixelSDXLDistillTask(model, _Encoders(), teacher, exp, meta={})


def test_latents_are_scaled_posterior_samples(teacher):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.manual_seed(3)
    z = teacher.latents(x)
    torch.manual_seed(3)
    expected = teacher.vae.encode(x).latent_dist.sample() * teacher.vae.config.scaling_factor
    assert z.shape == (2, 4, 16, 16) and teacher.vae_factor == 2
    torch.testing.assert_close(z, expected)


def test_kl_divergence_matches_torch_distributions():
    from t2i.latent.vae import kl_divergence

    mean, logvar = torch.randn(3, 4, 2, 2, dtype=torch.float64), torch.randn(3, 4, 2, 2, dtype=torch.float64)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1).mean()
    torch.testing.assert_close(kl_divergence(mean, logvar), expected)
    assert kl_divergence(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0


def _chain_raw() -> dict:
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    chain = yaml.safe_load((ROOT / "configs" / "shapes_pixel_sdxl_chain.yaml").read_text())
    return {**base, "run": chain["run"], "experiments": chain["experiments"],
            "pretrained": {**base["pretrained"], **chain["pretrained"]}}


def test_chain_config_validates_and_names_its_teacher():
    from t2i import workflow as wf

    cfg = validate_config(_chain_raw())
    deps = wf.asset_dependencies(cfg, "shapes-sdxl")
    assert deps == {"dataset": wf.dataset_done("shapes32"), "vae": "results/pretrained/shapes-vae",
                    "text_encoder": "results/pretrained/shapes-clip"}
    assert wf.asset_dependencies(cfg, "minilm") == {}
    assert "distill" in wf.stage_params(cfg, "shapes_px_distill_enc", "train")
    assert "distill" not in wf.stage_params(cfg, "shapes_px_full", "train")  # no teacher: not its trigger


def test_trained_asset_refs_are_checked():
    raw = _chain_raw()
    bad = copy.deepcopy(raw)
    bad["pretrained"]["shapes-sdxl"]["vae"] = "no-such-vae"
    with pytest.raises(ConfigError, match=r"pretrained.shapes-sdxl.vae: no pretrained asset named 'no-such-vae'"):
        validate_config(bad)
    cyclic = copy.deepcopy(raw)
    cyclic["pretrained"]["other-sdxl"] = {**cyclic["pretrained"]["shapes-sdxl"], "vae": "shapes-sdxl"}
    cyclic["pretrained"]["shapes-sdxl"]["vae"] = "other-sdxl"
    with pytest.raises(ConfigError, match="in a cycle"):
        validate_config(cyclic)
    missing = copy.deepcopy(raw)
    del missing["pretrained"]["shapes-sdxl"]["text_encoder"]
    with pytest.raises(ConfigError, match="text_encoder"):
        validate_config(missing)
