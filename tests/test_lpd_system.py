"""LPD around a frozen SD3: the flow schedule and the four loss modes against their formulas, the composed
velocity and per-component guidance against a hand computation, one training step against N separate
forwards, the decomposer's checkpoint forms, and the workflow (base -> decomposer -> composed and component
images -> accuracy by prompt length)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from t2i.diffusion.sd3 import add_noise, losses, sample_sigmas, shifted_sigma_table
from t2i.models.lpd import ORIGINAL_PREFIX, PromptDecomposer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_sigma_table_is_diffusers_shifted_schedule():
    for shift in (1.0, 3.0):
        expected = FlowMatchEulerDiscreteScheduler(shift=shift).sigmas
        torch.testing.assert_close(shifted_sigma_table(shift), expected.float(), rtol=1e-6, atol=1e-7)
    sigmas = sample_sigmas(20000, 3.0, generator=torch.Generator().manual_seed(0))
    # logit-normal u, then shifted: the median of u is 1/2, so the median sigma is 3 * 0.5 / (1 + 2 * 0.5) = 0.75
    assert abs(sigmas.median().item() - 0.75) < 0.01 and 0 < sigmas.min() and sigmas.max() <= 1


def test_each_loss_mode_is_its_formula():
    g = torch.Generator().manual_seed(0)
    z, noise, v, teacher = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(4))
    sigma = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    x_t = add_noise(z, noise, sigma)
    s = sigma.view(-1, 1, 1, 1)
    velocity_mse = ((v - (noise - z)) ** 2).mean()
    x0_mse = ((x_t - s * v - z) ** 2).mean()
    kd = ((v - teacher) ** 2).mean()
    out = [losses(m, v, x_t, z, noise, sigma, teacher) for m in range(4)]
    torch.testing.assert_close(out[0]["loss"], velocity_mse.float())
    torch.testing.assert_close(out[1]["loss"], x0_mse.float())
    # mode 1 is the sigma^2-weighted velocity MSE (x_t - sigma v - z = sigma ((e - z) - v))
    torch.testing.assert_close(out[1]["diff"], (s ** 2 * (v - (noise - z)) ** 2).mean().float())
    assert set(out[2]) == {"kd", "loss"} and torch.allclose(out[2]["loss"], kd.float())
    torch.testing.assert_close(out[3]["loss"], (kd + x0_mse).float())
    assert set(out[3]) == {"diff", "kd", "loss"}
    with pytest.raises(ValueError, match="no teacher velocity"):
        losses(2, v, x_t, z, noise, sigma)


class _FakeEncoders:
    """Deterministic 'text features': CLIP [B, 2, 3], T5 [B, 5, 6] and pooled [B, 4] from the prompt's length."""

    t5_dim = 6

    def __call__(self, prompts):
        n = torch.tensor([float(len(p)) for p in prompts])
        clip = n.view(-1, 1, 1) * torch.arange(1, 7.0).view(1, 2, 3) / 50
        t5 = torch.sin(n.view(-1, 1, 1) + torch.arange(30.0).view(1, 5, 6))
        return clip, t5, torch.cos(n.view(-1, 1) + torch.arange(4.0))

    @staticmethod
    def joint(clip, t5):
        from t2i.text.sd3_encoders import SD3TextEncoders

        return SD3TextEncoders.joint(clip, t5)

    def t5_mask(self, prompts):
        return torch.ones(len(prompts), 5, dtype=torch.bool)


class _FakeBase(torch.nn.Module):
    """A 'transformer' whose velocity depends on x, t and the conditions in a known way."""

    encoders = _FakeEncoders()

    def forward(self, x, t, tokens, pooled):
        return 0.5 * x + tokens.mean((1, 2)).view(-1, 1, 1, 1) + pooled.sum(1).view(-1, 1, 1, 1) * 1e-3 * t.view(-1, 1, 1, 1)

    def scheduler(self):
        return FlowMatchEulerDiscreteScheduler(shift=3.0)


def test_composition_and_per_component_guidance_match_a_hand_computation():
    from t2i.diffusion.lpd import component_conditions
    from t2i.systems.lpd import Composer

    torch.manual_seed(0)
    base, n = _FakeBase(), 3
    decomposer = PromptDecomposer(width=6, num_components=n, num_tokens=2, heads=2, layers=1).eval()
    composer = Composer(base, decomposer, "decomposer", text_mask=False)
    prompts, negative, w = ["a red circle. a blue square.", "one green triangle"], "", 4.5
    noise = torch.randn(2, 3, 4, 4)
    s = {"cfg": w, "steps": 1}
    cond = composer.conditions(prompts)
    uncond = composer.conditions([negative] * 2)
    out = composer.sample(noise, cond, uncond, s)

    # by hand: every (prompt, component) separately, guided, then the mean; one Euler step from sigma 1
    with torch.no_grad():
        clip, t5, pooled = base.encoders(prompts)
        uclip, ut5, upooled = base.encoders([negative] * 2)
        comps, ucomps = decomposer(t5), decomposer(ut5)
        sched = base.scheduler()
        sched.set_timesteps(1)
        t = sched.timesteps[0]
        for b in range(2):
            vs = []
            for i in range(n):
                c_tok = torch.cat([torch.nn.functional.pad(clip[b], (0, 3)), comps[b, i]])[None]
                u_tok = torch.cat([torch.nn.functional.pad(uclip[b], (0, 3)), ucomps[b, i]])[None]
                c = base(noise[b:b + 1], t.view(1), c_tok, pooled[b:b + 1])
                u = base(noise[b:b + 1], t.view(1), u_tok, upooled[b:b + 1])
                vs.append(u + w * (c - u))
            v = torch.stack(vs).mean(0)
            expected = noise[b:b + 1] + (sched.sigmas[1] - sched.sigmas[0]) * v
            torch.testing.assert_close(out[b:b + 1], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(cond["tokens"], component_conditions(clip, comps))

    # guidance off: one branch; a batch of one gives the same image as in the batch of two
    alone = composer.sample(noise[1:], composer.conditions(prompts[1:]), None, {"cfg": 1.0, "steps": 3})
    both = composer.sample(noise, cond, None, {"cfg": 1.0, "steps": 3})
    torch.testing.assert_close(alone, both[1:], rtol=1e-5, atol=1e-6)

    # components: component i's own trajectory from the same noise, guided by component i alone
    pictures = composer.components(noise, cond, uncond, s)
    assert len(pictures) == n
    single = Composer(base, None, "prompt", False)
    for i in range(n):
        rows = {k: v[i * 2:(i + 1) * 2] for k, v in cond.items() if k != "group"}
        urows = {k: v[i * 2:(i + 1) * 2] for k, v in uncond.items() if k != "group"}
        own = single.sample(noise, {**rows, "group": torch.arange(2)}, {**urows, "group": torch.arange(2)}, s)
        torch.testing.assert_close(pictures[i], own)


def test_sentence_split_composes_each_sentence_natively():
    from t2i.systems.lpd import Composer, split_sentences

    assert split_sentences("A red circle. The circle is left!  Done?") == ["A red circle.", "The circle is left!",
                                                                            "Done?"]
    assert split_sentences("no full stop") == ["no full stop"]
    base = _FakeBase()
    composer = Composer(base, None, "sentences", text_mask=False)
    prompts = ["One. Two words.", "Three here. And four. Five."]
    cond = composer.conditions(prompts)
    assert cond["group"].tolist() == [0, 0, 1, 1, 1]
    x, t = torch.randn(2, 3, 4, 4), torch.full((2,), 500.0)
    v = composer._velocity(x, t, cond)
    for b, sentences in enumerate(split_sentences(p) for p in prompts):
        clip, t5, pooled = base.encoders(sentences)
        rows = base(x[b:b + 1].expand(len(sentences), -1, -1, -1), t[:1].expand(len(sentences)),
                    base.encoders.joint(clip, t5), pooled)
        torch.testing.assert_close(v[b], rows.mean(0))


# ---------------------------------------------------------------------------- with a real tiny SD3 base

@pytest.fixture(scope="module")
def tiny(shapes32, tmp_path_factory):
    """A tiny Shapes CLIP, MiniLM in the T5 role, and an SD3 base from the sd3 recipe (2 steps)."""
    from t2i.checkpoints.hashing import write_sha256sums
    from t2i.latent.sd3 import train_shapes_sd3
    from t2i.text.encoder import packaged_minilm_path
    from t2i.text.shapes_clip import train_shapes_clip

    root = tmp_path_factory.mktemp("lpd")
    dataset, clip, minilm, base = root / "dataset", root / "clip", root / "minilm", root / "base"
    shutil.copytree(shapes32, dataset)
    write_sha256sums(dataset)
    train_shapes_clip(dataset, clip, {"steps": 2, "batch_size": 32, "width": 32, "layers": 2, "projection_dim": 16})
    shutil.copytree(packaged_minilm_path(), minilm)
    write_sha256sums(minilm)
    metrics = train_shapes_sd3(dataset, base, {"steps": 2, "batch_size": 8, "layers": 1, "heads": 2, "head_dim": 16,
                                               "t5_max_length": 8}, {"text_encoder": clip, "text_encoder_3": minilm})
    return {"dataset": dataset, "base": base, "metrics": metrics}


def _exp(**blocks) -> dict:
    """A validated lpd experiment (defaults filled) from the tiny workflow config."""
    from lpd_tiny import lpd_config

    from t2i.config import validate_config

    config = lpd_config()
    for block, values in blocks.items():
        config["experiments"]["lpd"].setdefault(block, {}).update(values)
    return {"name": "lpd", **validate_config(config)["experiments"]["lpd"]}


def test_the_sd3_recipe_writes_a_pipeline_folder_the_base_reads(tiny):
    from t2i.latent.sd3 import SD3Base

    base = SD3Base.load(tiny["base"], None, 8)
    index = json.loads((tiny["base"] / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline" and not (tiny["base"] / "vae").exists()
    assert base.shift == 3.0 and base.vae is None and base.encoders.t5_dim == 384
    assert base.transformer.config.joint_attention_dim == 384 and base.encoders.pooled_dim == 32
    clip, t5, pooled = base.encoders(["a red circle", ""])
    assert clip.shape[-1] == 64 and t5.shape == (2, 8, 384) and pooled.shape == (2, 32)
    assert set(tiny["metrics"]["velocity_mse"]) == set(tiny["metrics"]["velocity_mse_untrained"])


def test_a_training_step_is_the_mean_of_n_separate_forwards_and_trains_only_the_decomposer(tiny):
    from test_latent import _Ctx

    from t2i.diffusion.sd3 import model_timesteps
    from t2i.latent.sd3 import SD3Base
    from t2i.systems.lpd import LPDTask

    exp = _exp(loss={"precondition_outputs": 3})
    base = SD3Base.load(tiny["base"], 8, 48)
    torch.manual_seed(0)
    decomposer = PromptDecomposer(width=384, num_components=2, num_tokens=4, heads=2, layers=1)
    task = LPDTask(decomposer, base, exp)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    batch = {"image": torch.rand(3, 3, 32, 32) * 2 - 1, "caption": ["a red circle. a blue square.", "", "one"]}
    torch.manual_seed(1)
    terms = task.step(batch, 0, _Ctx({"decomposer": decomposer, "base": base}))
    assert set(terms) == {"diff", "kd", "loss"}
    assert all(p.grad is None for p in base.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decomposer.parameters())
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())

    # the same draws, each component through its own forward
    torch.manual_seed(1)
    with torch.no_grad():
        z = batch["image"]
        clip, t5, pooled = base.encoders(batch["caption"])
        from t2i.diffusion.sd3 import sample_sigmas
        sigma = sample_sigmas(3, base.shift, 0.0, 1.0)
        noise = torch.randn_like(z)
        x_t = add_noise(z, noise, sigma)
        comps = decomposer(t5)
        pad = torch.nn.functional.pad(clip, (0, 384 - clip.shape[-1]))
        v = torch.stack([base(x_t, model_timesteps(sigma), torch.cat([pad, comps[:, i]], 1), pooled)
                         for i in range(2)]).mean(0)
        teacher = base(x_t, model_timesteps(sigma), base.encoders.joint(clip, t5), pooled)
        expected = losses(3, v, x_t, z, noise, sigma, teacher)
    for k in expected:
        torch.testing.assert_close(terms[k], expected[k], rtol=1e-4, atol=1e-6)

    # every validation_every steps (3 in the tiny config): the validation prompt, composed and per component
    class Ctx(_Ctx):
        logged = {}

        def log_images(self, tag, images):
            self.logged[tag] = images

    ctx = Ctx({"decomposer": decomposer, "base": base})
    ctx.accelerator.is_main_process = True
    task.step(batch, 2, ctx)
    assert ctx.logged["validation/compose"].shape == (1, 3, 32, 32)
    assert ctx.logged["validation/decompose"].shape == (2, 3, 32, 32)
    assert decomposer.training


def test_bf16_weights_sample_on_a_cpu(tiny):
    """sample.dtype bf16 without autocast: the inputs follow the weights, the velocity comes back float32."""
    from t2i.latent.sd3 import SD3Base
    from t2i.systems.lpd import Composer

    base = SD3Base.load(tiny["base"], 8, 16).cast_frozen(torch.bfloat16)
    torch.manual_seed(0)
    decomposer = PromptDecomposer(width=384, num_components=2, num_tokens=4, heads=2, layers=1).eval()
    composer = Composer(base, decomposer, "decomposer", text_mask=True)
    with torch.no_grad():
        cond, uncond = composer.conditions(["a red circle. a blue square."]), composer.conditions([""])
        out = composer.sample(torch.randn(1, 3, 32, 32), cond, uncond, {"steps": 2, "cfg": 3.0})
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_checkpoint_forms_load_and_a_mismatch_is_refused(tmp_path):
    from safetensors.torch import save_file

    from t2i.models.folder import save_model_folder
    from t2i.systems.lpd import load_decomposer

    torch.manual_seed(0)
    model = PromptDecomposer(width=8, num_components=2, num_tokens=3, heads=2, layers=1)
    cfg = {"width": 8, "num_components": 2, "num_tokens": 3, "heads": 2, "layers": 1}
    text = torch.randn(1, 4, 8)
    save_model_folder(tmp_path / "folder", "lpd", {"decomposer": model})
    model.save_pretrained(tmp_path / "checkpoint-200")
    (tmp_path / "asset").mkdir()
    save_file({ORIGINAL_PREFIX + ("latents" if k == "queries" else k.replace("blocks.", "perceiver_blocks.", 1)): v
               for k, v in model.state_dict().items()}, str(tmp_path / "asset" / "original.safetensors"))
    for source in (tmp_path / "folder", tmp_path / "checkpoint-200", tmp_path / "checkpoint-200" / "model.safetensors",
                   tmp_path / "asset"):
        loaded = load_decomposer(source, cfg)
        with torch.no_grad():
            torch.testing.assert_close(loaded(text), model(text))
    for source in (tmp_path / "folder", tmp_path / "checkpoint-200"):
        with pytest.raises(ValueError, match="saved with heads=2 where this experiment says heads=4"):
            load_decomposer(source, {**cfg, "heads": 4})
    with pytest.raises(ValueError, match="num_tokens=3 where this experiment says num_tokens=5"):
        load_decomposer(tmp_path / "asset", {**cfg, "num_tokens": 5})
    with pytest.raises(ValueError, match="no decomposer weights"):
        load_decomposer(tmp_path / "checkpoint-200" / "missing.safetensors", cfg)
    save_model_folder(tmp_path / "masked", "lpd", {"decomposer": model}, {"text_mask": True})
    assert load_decomposer(tmp_path / "masked", cfg, text_mask=True).config.heads == 2
    with pytest.raises(ValueError, match="trained with decomposer.text_mask True, this experiment says False"):
        load_decomposer(tmp_path / "masked", cfg, text_mask=False)


@pytest.mark.slow
def test_workflow_runs_the_base_the_decomposer_and_its_ablations(tmp_path):
    from lpd_tiny import lpd_config
    from workflow_harness import snakemake, write_config

    write_config(tmp_path, lpd_config())
    snakemake(tmp_path, "--cores", "2", "--configfile", str(tmp_path / "config.yaml"))
    results = tmp_path / "results"
    assert (results / "lpd" / "train" / "model" / "decomposer" / "model.safetensors").is_file()
    # save_every 3 of 6 steps: one checkpoint before the end, a folder the sampler takes as it is
    checkpoints = sorted(p.name for p in (results / "lpd" / "train" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-3"]
    from t2i.systems.lpd import load_decomposer
    model = load_decomposer(results / "lpd" / "train" / "checkpoints" / "checkpoint-3",
                            {"width": 384, "num_components": 2, "num_tokens": 4, "heads": 2, "layers": 1})
    assert model.config.num_tokens == 4
    assert sorted(p.name for p in (results / "lpd" / "train" / "images" / "validation").iterdir()) == ["compose",
                                                                                                     "decompose"]
    assert not (results / "lpd_base" / "train").exists() and not (results / "lpd_sentences" / "train").exists()
    rows = [json.loads(line) for line in open(results / "lpd" / "samples" / "long" / "index.jsonl")]
    assert all(set(r["extras"]) == {"component_0", "component_1"} for r in rows)
    assert all((results / "lpd" / "samples" / "long" / f).is_file() for r in rows for f in r["extras"].values())
    for exp in ("lpd", "lpd_one", "lpd_base", "lpd_sentences"):
        metrics = json.loads((results / exp / "metrics" / "long.json").read_text())
        bins = metrics["shapes"]["by_length"]
        assert bins and sum(b["n"] for b in bins.values()) == metrics["shapes"]["n"]
    page = (results / "report" / "index.html").read_text()
    assert "Shapes accuracy by prompt length: long" in page and "lpd_sentences" in page
