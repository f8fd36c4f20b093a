"""The pixel_sdxl system on a small Shapes dataset: prepare (metadata + buckets), full training with two
learning-rate groups and bit-identical resume, sampling with CFG, and its config schema."""
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from t2i.config import ConfigError, validate_config

ROOT = Path(__file__).resolve().parents[1]
TINY = {"patch_hidden": 16, "patch_num_res_blocks": 1,
        "unet_config": {"block_out_channels": [16, 32, 32], "layers_per_block": 1}}
EXP = {
    "name": "pixel_sdxl_tiny", "system": "pixel_sdxl",
    "prepare": {"bucket_multiple": 8, "max_pixels": 32 * 32, "min_pixels": 16 * 16},
    "data": {"caption_drop": 0.1, "tag_drop": 0.5, "min_tags": 3, "flip": True},
    "text": {"max_length": 24},
    "model": {"preset": "shapes32", "overrides": TINY},
    "loss": {"objective": "velocity", "timesteps": "logit_normal", "logit_mean": 0.8, "logit_std": 0.8, "lpips_weight": 0.0,
             "noise_scale": 1.0},
    "train": {"steps": 6, "batch_size": 8, "accumulate": 1, "lr": 1e-3, "lr_sdxl_unet_body": 1e-4,
              "lr_text_encoder1": 0.0, "lr_text_encoder2": 0.0, "optimizer": "adamw",
              "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "warmup_steps": 0, "grad_clip": 1.0,
              "ema_decays": [0.9], "snapshot_every": 0, "gradient_checkpointing": False, "save_every": 3,
              "log_every": 3, "seed": 0, "mixed_precision": "no", "compile": False, "num_workers": 0},
    "sample": {"seed": 0, "num_images": 4, "gen_bsz": 4, "compile": False, "steps": 3, "cfg": 3.0,
               "schedule": "flow_shift", "flow_shift": 3.0, "size": None},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _exp(**blocks) -> dict:
    exp = copy.deepcopy(EXP)
    for block, values in blocks.items():
        exp[block].update(values)
    return exp


@pytest.fixture(scope="module")
def inputs(shapes32, tmp_path_factory):
    """A tiny Shapes CLIP (both text encoder roles) and the prepared metadata."""
    from t2i.checkpoints.hashing import write_sha256sums
    from t2i.systems.pixel_sdxl import PixelSDXLSystem
    from t2i.text.shapes_clip import train_shapes_clip

    root = tmp_path_factory.mktemp("pixel_sdxl")
    dataset, clip, prepared = root / "dataset", root / "clip", root / "prepared"
    shutil.copytree(shapes32, dataset)
    write_sha256sums(dataset)
    train_shapes_clip(dataset, clip, {"steps": 2, "batch_size": 32, "width": 32, "layers": 2, "projection_dim": 16})
    prepared.mkdir()
    PixelSDXLSystem().prepare(EXP, {"dataset": dataset}, prepared)
    write_sha256sums(prepared)
    return {"dataset": dataset, "text_encoder_1": clip, "text_encoder_2": clip, "prepared": prepared}


def _train(inputs, out_dir, **train):
    from t2i.systems.pixel_sdxl import PixelSDXLSystem

    PixelSDXLSystem().train(_exp(train=train), inputs, out_dir)
    return out_dir


def test_prepare_writes_the_train_splits_metadata_and_buckets(inputs):
    from t2i.data.pixel_sdxl_meta import BucketRule, read_metadata

    summary = json.loads((inputs["prepared"] / "summary.json").read_text())
    assert summary["tags_from"] == "shapes annotations" and summary["items"] == 120
    assert summary["buckets"] == {"32x32": 120} and summary["rule"] == {"multiple": 8, "max_pixels": 1024,
                                                                        "min_pixels": 256}
    written = json.loads((inputs["prepared"] / "metadata.json").read_text())
    assert all(not Path(k).is_absolute() for k in written)
    meta = read_metadata(inputs["prepared"] / "metadata.json", rule=BucketRule(**summary["rule"]))
    train_names = (inputs["dataset"] / "splits" / "train.txt").read_text().split()
    assert sorted(it.path.stem for it in meta.items) == sorted(train_names)
    assert all(it.tags[-2:] == ("best quality", "general") for it in meta.items)


def test_caption_dir_metadata_splits_the_caption_line_into_tags(tmp_path):
    from t2i.data.pixel_sdxl_meta import write_caption_metadata

    for name, caption in {"a": "a cat, sitting, grass", "b": "a dog"}.items():
        (tmp_path / "data" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "captions").mkdir(exist_ok=True)
        Image.new("RGB", (40, 24)).save(tmp_path / "data" / "images" / f"{name}.png")
        (tmp_path / "data" / "captions" / f"{name}.txt").write_text(caption + "\n")
    out = tmp_path / "prepared" / "metadata.json"
    assert write_caption_metadata(tmp_path / "data", out) == 2
    meta = json.loads(out.read_text())
    assert meta["../data/images/a.png"] == {"tags": "a cat, sitting, grass, best quality, general",
                                            "image_size": [40, 24]}
    (tmp_path / "data" / "captions" / "b.txt").write_text("a dog\na cat\n")
    with pytest.raises(ValueError, match=r"b\.txt: 2 caption lines"):
        write_caption_metadata(tmp_path / "data", out)


def test_training_resumes_bit_identically_and_exports_the_model(inputs, tmp_path):
    straight = _train(inputs, tmp_path / "straight")
    _train(inputs, tmp_path / "resumed", steps=3)
    _train(inputs, tmp_path / "resumed")
    assert json.loads((tmp_path / "resumed/model/provenance.json").read_text())["resumed_from"] == 3
    for name in ("unet.raw", "unet.ema-0.9"):
        a = load_file(straight / "weights" / f"{name}.safetensors")
        b = load_file(tmp_path / "resumed" / "weights" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = [json.loads(line) for line in (straight / "model/train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and all(r["loss"] > 0 and r["lr"] == 1e-3 for r in rows)
    index = json.loads((straight / "model/t2i_model.json").read_text())
    assert index["system"] == "pixel_sdxl" and list(index["components"]) == ["unet"]
    assert index["meta"] == {"image_size": [32, 32], "noise_scale": 1.0, "text_max_length": 24}


def test_a_group_at_lr_0_is_frozen_and_micro_batches_add_up(inputs, tmp_path):
    from t2i.models.pixel_sdxl import pixel_sdxl_from_preset

    torch.manual_seed(0)
    initial = pixel_sdxl_from_preset("shapes32", context_dim=64, pooled_dim=16, **TINY).state_dict()
    whole, split = (load_file(_train(inputs, tmp_path / name, steps=2, lr_sdxl_unet_body=0.0, accumulate=accumulate)
                              / "weights/unet.raw.safetensors") for name, accumulate in (("whole", 1), ("split", 3)))
    assert all(torch.equal(whole[k], initial[k]) for k in initial if k.startswith("body."))
    optimizer = torch.load(tmp_path / "whole/state/optimizer.bin", weights_only=True)
    patch = [k for k in initial if not k.startswith("body.")]
    assert len(optimizer["param_groups"]) == 1 and len(optimizer["state"]) == len(patch)  # the body is left out
    assert not torch.equal(whole["patch_encoder.proj_in.weight"], initial["patch_encoder.proj_in.weight"])
    assert all(torch.allclose(whole[k], split[k], atol=1e-6) for k in whole)  # 3 + 3 + 2 items, one step


def test_text_encoders_come_from_clip_folders_or_a_pipeline_folder(inputs, tmp_path):
    """A diffusers SDXL folder (model_index.json, text_encoder[_2]/, tokenizer[_2]/) fills both roles with
    the encoder each role names; the encodings equal those of the same CLIP folders given directly."""
    from t2i.text.sdxl_encoders import SDXLTextEncoders

    clip, pipe = inputs["text_encoder_1"], tmp_path / "sdxl"
    for part in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        shutil.copytree(clip, pipe / part)
    (pipe / "model_index.json").write_text("{}")
    captions = ["a red circle", "two blue squares"]
    direct, piped = (SDXLTextEncoders.load(d, d, 24)(captions) for d in (clip, pipe))
    assert all(torch.equal(a, b) for a, b in zip(direct, piped))
    shutil.rmtree(pipe / "tokenizer_2")
    with pytest.raises(OSError, match="tokenizer_2"):
        SDXLTextEncoders.load(pipe, pipe, 24)


def test_a_clip_model_folder_loads_its_text_towers_quietly_and_a_vision_only_one_fails(inputs, tmp_path, capfd):
    """The Shapes CLIP is a whole CLIPModel: its vision tensors are left out without a per-tensor report;
    a folder without the text tensors is refused with one line instead of loading random weights."""
    from safetensors.torch import load_file, save_file

    from t2i.text.sdxl_encoders import SDXLTextEncoders

    capfd.readouterr()
    SDXLTextEncoders.load(inputs["text_encoder_1"], inputs["text_encoder_2"], 24)
    out = capfd.readouterr()
    assert "UNEXPECTED" not in out.out + out.err
    vision_only = tmp_path / "vision_only"
    shutil.copytree(inputs["text_encoder_1"], vision_only)
    weights = load_file(vision_only / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith(("text_model.", "text_projection."))},
              str(vision_only / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"vision_only: no CLIPTextModel weights for \d+ tensors"):
        SDXLTextEncoders.load(vision_only, inputs["text_encoder_2"], 24)


def test_a_text_encoder_with_a_learning_rate_trains_and_is_sampled_with(inputs, tmp_path):
    """lr_text_encoder1 > 0: TE1 joins the U-Net's AdamW as a third group (TE2 at 0 stays frozen and out of the
    optimizer), micro-batches each encode their own captions, and the model folder carries both encoders
    with their tokenizers, which sampling then uses instead of the roles' folders; post-hoc EMA averages them
    with the U-Net's weights, as the original averages every key."""
    from transformers import CLIPTextModel

    from t2i.models.folder import read_index
    from t2i.systems.pixel_sdxl import PixelSDXLSystem, encoder_folders

    out = _train(inputs, tmp_path / "te", steps=2, accumulate=2, lr_text_encoder1=1e-3, snapshot_every=1)
    model = out / "model"
    assert {"unet", "text_encoder_1", "text_encoder_2"} <= set(read_index(model)["components"])
    base = CLIPTextModel.from_pretrained(inputs["text_encoder_1"]).state_dict()
    te1, te2 = (CLIPTextModel.from_pretrained(model / n).state_dict() for n in ("text_encoder_1", "text_encoder_2"))
    assert any(not torch.equal(te1[k], base[k]) for k in base)
    assert all(torch.equal(te2[k], base[k]) for k in base)
    optimizer = torch.load(out / "state/optimizer.bin", weights_only=True)
    assert len(optimizer["param_groups"]) == 3
    assert encoder_folders({**inputs, "model": model}) == [model / "text_encoder_1", model / "text_encoder_2"]
    PixelSDXLSystem().train({**_exp(), "posthoc_ema": {"mode": "geometric", "mu": 0.5, "sigma_rel": 0.05}},
                            {**inputs, "snapshots": model}, tmp_path / "ema")
    assert encoder_folders({**inputs, "model": tmp_path / "ema/model"})[0] == tmp_path / "ema/model/text_encoder_1"
    # the original averages the text encoders too: here 1/3 and 2/3 of TE1 after steps 1 and 2
    snapshots = [load_file(out / f"snapshots/text_encoders-{s:08d}.safetensors") for s in (1, 2)]
    averaged = CLIPTextModel.from_pretrained(tmp_path / "ema/model/text_encoder_1").state_dict()
    key = next(k for k in averaged if k.endswith("fc1.weight"))
    expected = (snapshots[0]["te1." + key].double() + 2 * snapshots[1]["te1." + key].double()) / 3
    torch.testing.assert_close(averaged[key].double(), expected, rtol=1e-6, atol=1e-7)
    (tmp_path / "samples").mkdir()
    PixelSDXLSystem().sample(_exp(sample={"num_images": 1, "gen_bsz": 1}), {**inputs, "model": tmp_path / "ema/model"},
                             [{"id": "a", "prompt": "a red circle"}], tmp_path / "samples")
    assert len(list((tmp_path / "samples").rglob("*.png"))) == 1


def test_the_lpips_term_is_the_originals_and_needs_its_two_weight_files(inputs, tmp_path):
    import torch.nn.functional as F

    from t2i.checkpoints.hashing import write_sha256sums
    from t2i.models.lpips import LPIPS
    from t2i.systems.pixel_sdxl import PixelSDXLSystem, lpips_term
    from test_lpips import lin_state_dict, torchvision_layout_state_dict

    torch.manual_seed(1)
    source = LPIPS()
    pred, x0, t = torch.rand(3, 3, 32, 32) * 2.4 - 1.2, torch.rand(3, 3, 32, 32) * 2 - 1, torch.tensor([0.1, 0.5, 1.0])
    halve = lambda x: F.avg_pool2d(x.clamp(-1, 1), 2)  # bilinear halving of an even size = 2x2 mean
    expected = ((1 - t) * source(halve(pred), halve(x0))).mean()
    torch.testing.assert_close(lpips_term(source, pred, x0, t), expected, rtol=1e-5, atol=1e-7)
    assert lpips_term(source, x0, x0, t).item() == 0

    exp = _exp(loss={"lpips_weight": 0.05}, train={"steps": 2})
    with pytest.raises(ValueError, match="needs inputs.lpips_backbone and inputs.lpips_heads"):
        PixelSDXLSystem().train(exp, inputs, tmp_path / "none")
    (tmp_path / "trunk").mkdir(), (tmp_path / "heads").mkdir()
    torch.save(torchvision_layout_state_dict(source), tmp_path / "trunk" / "vgg16-397923af.pth")
    torch.save(lin_state_dict(source), tmp_path / "heads" / "vgg.pth")
    write_sha256sums(tmp_path / "trunk"), write_sha256sums(tmp_path / "heads")
    out = tmp_path / "lpips"
    PixelSDXLSystem().train(exp, {**inputs, "lpips_backbone": tmp_path / "trunk", "lpips_heads": tmp_path / "heads"},
                            out)
    rows = [json.loads(line) for line in (out / "model/train_log.jsonl").read_text().splitlines()]
    assert rows and all(r["loss_lpips"] > 0 for r in rows)


def test_compiled_training_with_checkpointing_gives_the_eager_losses(inputs, tmp_path):
    """train.compile (the original's README: "loss became strange with compile"): the network compiled, with
    gradient checkpointing, trains on the eager run's losses step by step (same data, noise and initial
    weights: only the kernels differ, so the first loss agrees to float rounding and later ones within 1e-3)."""
    import torch._dynamo

    runs = {}
    for name, compile in (("eager", False), ("compiled", True)):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        out = _train(inputs, tmp_path / name, steps=4, log_every=1, compile=compile, gradient_checkpointing=True)
        if compile:
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really went through dynamo
        runs[name] = [json.loads(line)["loss"] for line in (out / "model/train_log.jsonl").read_text().splitlines()]
    assert len(runs["eager"]) == 4
    assert runs["compiled"][0] == pytest.approx(runs["eager"][0], rel=1e-5)
    assert runs["compiled"] == pytest.approx(runs["eager"], rel=1e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's refusal; on CUDA adamw8bit may run")
def test_adamw8bit_without_cuda_stops_with_one_message_before_any_step(inputs, tmp_path):
    with pytest.raises(RuntimeError, match="adamw8bit"):
        _train(inputs, tmp_path / "bnb", optimizer="adamw8bit")
    assert not (tmp_path / "bnb" / "model").exists()


def test_a_stage_starts_from_the_init_roles_weights(inputs, tmp_path):
    """`init` = an earlier experiment's model folder: one AdamW step at lr 1e-4 from it stays within ~lr of
    those weights (a fresh initialisation would differ by orders of magnitude more), and the provenance
    names the input."""
    first = _train(inputs, tmp_path / "first", steps=3)
    second = tmp_path / "second"
    from t2i.systems.pixel_sdxl import PixelSDXLSystem

    PixelSDXLSystem().train(_exp(train={"steps": 1, "lr": 1e-4, "lr_sdxl_unet_body": 1e-4, "ema_decays": []}),
                            {**inputs, "init": first / "model"}, second)
    start, end = load_file(first / "weights/unet.ema-0.9.safetensors"), load_file(second / "weights/unet.raw.safetensors")
    assert max((start[k] - end[k]).abs().max().item() for k in start) < 5e-4
    assert "init" in json.loads((second / "model/provenance.json").read_text())["config"]["inputs"]


def test_posthoc_ema_averages_another_experiments_snapshots(inputs, tmp_path):
    """An experiment with a `snapshots` role trains nothing: its model is the average of the source's raw
    snapshots (geometric: mu^(N-i), normalised; power: EDM2's profile), with the source's meta; a source
    that kept no snapshots gets one error saying what to set."""
    from t2i.diffusion.posthoc_ema import posthoc_ema_weights
    from t2i.models.folder import load_component, read_index
    from t2i.systems.pixel_sdxl import PixelSDXLSystem

    source = _train(inputs, tmp_path / "source", snapshot_every=2)
    files = sorted((source / "snapshots").glob("unet-*.safetensors"))
    assert [int(f.stem.split("-")[1]) for f in files] == [2, 4, 6]
    snapshots = [load_file(f) for f in files]
    for settings, weights in (({"mode": "geometric", "mu": 0.5, "sigma_rel": 0.05}, [1 / 7, 2 / 7, 4 / 7]),
                              ({"mode": "power", "mu": 0.9, "sigma_rel": 0.2},
                               posthoc_ema_weights([2, 4, 6], "power", 0.2))):
        out = tmp_path / settings["mode"]
        PixelSDXLSystem().train({**_exp(), "posthoc_ema": settings}, {**inputs, "snapshots": source / "model"}, out)
        got = load_component(out / "model", "unet", system="pixel_sdxl").state_dict()
        for key in ("patch_encoder.proj_in.weight", "body.mid_block.resnets.0.conv1.weight"):
            expected = sum(w * s[key].double() for w, s in zip(weights, snapshots))
            torch.testing.assert_close(got[key].double(), expected, rtol=1e-6, atol=1e-7)
        meta = read_index(out / "model")["meta"]
        assert meta["image_size"] == [32, 32] and meta["posthoc_ema"]["snapshot_steps"] == [2, 4, 6]
        assert (out / "model" / "SHA256SUMS").is_file()
    shutil.copytree(source / "model", tmp_path / "bare" / "model")
    with pytest.raises(ValueError, match=r"holds no unet-<step>\.safetensors .*train\.snapshot_every > 0"):
        PixelSDXLSystem().train({**_exp(), "posthoc_ema": {"mode": "geometric", "mu": 0.9, "sigma_rel": 0.05}},
                                {**inputs, "snapshots": tmp_path / "bare" / "model"}, tmp_path / "none")


def test_sampling_draws_each_row_from_its_seed(inputs, tmp_path):
    from t2i.systems.pixel_sdxl import PixelSDXLSystem

    model = _train(inputs, tmp_path / "train", steps=1) / "model"
    prompts = [{"id": "a", "prompt": "a small red circle"}, {"id": "b", "prompt": "a large blue square"}]
    run = {"model": model, "text_encoder_1": inputs["text_encoder_1"], "text_encoder_2": inputs["text_encoder_2"],
           "dataset": inputs["dataset"]}
    for gen_bsz in (4, 3):
        (tmp_path / f"s{gen_bsz}").mkdir()
        PixelSDXLSystem().sample(_exp(sample={"gen_bsz": gen_bsz}), run, prompts, tmp_path / f"s{gen_bsz}")
    rows = [json.loads(line) for line in (tmp_path / "s4/index.jsonl").read_text().splitlines()]
    assert [(r["id"], r["seed"]) for r in rows] == [("a", 0), ("b", 1), ("a", 2), ("b", 3)]
    for r in rows:
        a, b = (np.asarray(Image.open(tmp_path / d / r["file"]), dtype=int) for d in ("s4", "s3"))
        assert a.shape == (32, 32, 3) and np.abs(a - b).max() <= 1  # batch size changes at most a rounding
    with pytest.raises(ValueError, match="multiples of 8"):
        PixelSDXLSystem().sample(_exp(sample={"size": [30, 32]}), run, prompts, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# ---- config ------------------------------------------------------------------------------------------

@pytest.fixture
def raw():
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["experiments"]["shapes_pixel_sdxl"] = {
        "system": "pixel_sdxl", "dataset": "shapes32",
        "inputs": {"text_encoder_1": {"asset": "shapes-clip"}, "text_encoder_2": {"asset": "shapes-clip"}},
        "prepare": {"min_pixels": 0, "bucket_multiple": 8}, "model": {"preset": "shapes32"},
        "train": {"steps": 100, "batch_size": 64}, "sample": {"schedule": "flow_shift"}}
    return raw


def test_a_pixel_sdxl_experiment_validates_with_defaults(raw):
    from t2i import workflow as wf

    cfg = validate_config(raw)
    exp = cfg["experiments"]["shapes_pixel_sdxl"]
    assert exp["loss"]["objective"] == "x0" and exp["train"]["lr_sdxl_unet_body"] == 1e-5
    assert exp["sample"]["steps"] == 30 and exp["data"]["caption_drop"] == 0.1
    assert wf.stage_inputs(cfg, "shapes_pixel_sdxl", "train") == {
        "dataset": "results/datasets/shapes32/SHA256SUMS", "text_encoder_1": "results/pretrained/shapes-clip",
        "text_encoder_2": "results/pretrained/shapes-clip", "prepared": "results/shapes_pixel_sdxl/prepared"}
    assert set(wf.stage_experiment(cfg, "shapes_pixel_sdxl", "train")) == {
        "name", "system", "data", "text", "model", "loss", "train"}  # posthoc_ema: only with a snapshots role
    params = json.loads(wf.stage_params(cfg, "shapes_pixel_sdxl", "train"))["train"]
    assert "accumulate" not in params and "gradient_checkpointing" not in params and "lr" in params


def test_a_posthoc_ema_experiment_reads_the_trained_experiments_model_folder(raw):
    """The average is its own experiment: its train job reads the source's model folder (so the snapshots
    beside it are complete), and its settings are in its own train parameters, not the source's (where
    the block does nothing, so editing it there retrains nothing)."""
    from t2i import workflow as wf

    source = raw["experiments"]["shapes_pixel_sdxl"]
    source["train"]["snapshot_every"] = 10
    raw["experiments"]["shapes_pixel_sdxl_ema"] = {**copy.deepcopy(source), "posthoc_ema": {"mode": "power"}}
    raw["experiments"]["shapes_pixel_sdxl_ema"]["inputs"]["snapshots"] = {"experiment": "shapes_pixel_sdxl"}
    cfg = validate_config(raw)
    assert wf.stage_inputs(cfg, "shapes_pixel_sdxl_ema", "train")["snapshots"] == "results/shapes_pixel_sdxl/train/model"
    assert cfg["experiments"]["shapes_pixel_sdxl_ema"]["posthoc_ema"] == {"mode": "power", "mu": 0.9, "sigma_rel": 0.05}
    ema = json.loads(wf.stage_params(cfg, "shapes_pixel_sdxl_ema", "train"))
    assert ema["posthoc_ema"]["mode"] == "power"
    source_params = wf.stage_params(cfg, "shapes_pixel_sdxl", "train")
    assert "posthoc_ema" not in json.loads(source_params)
    raw["experiments"]["shapes_pixel_sdxl"]["posthoc_ema"] = {"mu": 0.5}
    assert wf.stage_params(validate_config(raw), "shapes_pixel_sdxl", "train") == source_params


@pytest.mark.parametrize("edit, message", [
    (lambda e: e.setdefault("loss", {}).update(objectiv="x0"), "shapes_pixel_sdxl.loss: unknown key(s) 'objectiv'"),
    (lambda e: e["sample"].update(schedule="cosine"), "shapes_pixel_sdxl.sample.schedule: 'cosine' is not one of"),
    (lambda e: e["sample"].update(sizes=[32, 32]), "shapes_pixel_sdxl.sample: unknown key(s) 'sizes'"),
    (lambda e: e["train"].update(lr=-1), "shapes_pixel_sdxl.train.lr"),
    (lambda e: e["inputs"].pop("text_encoder_2"), "shapes_pixel_sdxl.inputs: 'text_encoder_2' is a required"),
    (lambda e: e["inputs"].update(text_encoder_1={"asset": "nope"}),
     "shapes_pixel_sdxl.inputs.text_encoder_1.asset: no asset named 'nope'"),
    (lambda e: e["inputs"].update(clip={"asset": "shapes-clip"}), "shapes_pixel_sdxl.inputs: unknown key(s) 'clip'"),
])
def test_bad_pixel_sdxl_keys_fail(raw, edit, message):
    edit(raw["experiments"]["shapes_pixel_sdxl"])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(raw)
