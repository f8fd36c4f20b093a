"""LAFITE's objective and its system: pseudo text features, the contrastive terms, R1, the G_ema ramp,
the dataset zip from a Shapes dataset, training with bit-identical resume, and sampling from text."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from t2i.gan.lafite import contrastive, ema_beta, lazy_regularization, path_length, perturb, r1_penalty, unit


def test_pseudo_text_feature_formula_and_its_cosine_to_the_image_feature():
    g = torch.Generator().manual_seed(0)
    h, t = unit(torch.randn(4096, 512, generator=g)), unit(torch.randn(4096, 512, generator=g))
    torch.manual_seed(1)
    pseudo = perturb(h, None, mixing_prob=1.0)
    torch.manual_seed(1)
    u = unit(torch.randn(h.shape))
    assert torch.allclose(pseudo, unit(0.25 * h + 0.75 * u), atol=1e-6)
    assert torch.allclose(pseudo.norm(dim=-1), torch.ones(4096), atol=1e-5)
    # cos(h', h) = 0.25 / |0.25 h + 0.75 u| ~ 0.25 / sqrt(0.25^2 + 0.75^2) = 0.316 in high dimension (research note)
    assert (pseudo * h).sum(-1).mean().item() == pytest.approx(0.25 / math.hypot(0.25, 0.75), abs=0.01)
    truth = perturb(h, t, mixing_prob=0.0)
    assert (truth * t).sum(-1).mean().item() == pytest.approx(0.9 / math.hypot(0.9, 0.1), abs=0.002)  # ~0.994
    mixed = perturb(h, t, mixing_prob=0.5)
    from_image = ((mixed * h).sum(-1) > 0.2).float().mean().item()
    assert 0.4 < from_image < 0.6  # about half the samples took the pseudo feature
    with pytest.raises(ValueError, match="no text features"):
        perturb(h, None, mixing_prob=0.5)


def test_contrastive_term_is_the_originals_sharpened_log_softmax():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    temp = 0.5
    cos = torch.nn.functional.cosine_similarity(a[:, None], b[None], dim=-1)
    sim = torch.exp(cos / temp)
    # by hand: log(temp * exp(S_jj) / sum_i exp(S_ij)), over the a's for each b (lam = 0)
    by_hand = torch.stack([torch.log(temp * torch.exp(sim[j, j]) / torch.exp(sim[:, j]).sum()) for j in range(6)])
    assert torch.allclose(contrastive(a, b, temp=temp, lam=0.0), by_hand, atol=1e-6)
    other = torch.stack([torch.log(temp * torch.exp(sim[j, j]) / torch.exp(sim[j, :]).sum()) for j in range(6)])
    assert torch.allclose(contrastive(a, b, temp=temp, lam=1.0), other, atol=1e-6)
    assert torch.allclose(contrastive(a, b, temp=temp, lam=0.25), 0.25 * other + 0.75 * by_hand, atol=1e-6)
    assert torch.allclose(contrastive(a, b, temp=0, lam=0), cos.diagonal())
    # matched pairs score higher than shuffled ones: the losses subtract it, so matching lowers the loss
    assert contrastive(a, a + 0.01 * b, temp=temp, lam=0).mean() > contrastive(a, b.roll(1, 0), temp=temp, lam=0).mean()


def test_r1_and_path_length_on_closed_forms():
    w = torch.randn(3, 4, 4, requires_grad=True)  # D's weight
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (x * w).sum(dim=[1, 2, 3])[:, None]
    penalty = r1_penalty(logits, x)  # grad of a linear D is its weight
    assert torch.allclose(penalty.detach(), torch.full((5,), w.square().sum().item()), rtol=1e-5)
    assert penalty.requires_grad  # create_graph: the penalty trains D
    ws = torch.randn(2, 3, 8, requires_grad=True)
    images = torch.zeros(2, 3, 4, 4) + ws.square().sum(dim=[1, 2])[:, None, None, None]  # image n from ws[n]
    lengths = path_length(images, ws, generator=torch.Generator().manual_seed(0))
    y = torch.randn(images.shape, generator=torch.Generator().manual_seed(0)) / 4  # / sqrt(H W)
    grads = 2 * ws.detach() * y.sum(dim=[1, 2, 3])[:, None, None]  # J^T y of image n = 2 ws[n] * sum(y[n])
    assert torch.allclose(lengths.detach(), grads.square().sum(2).mean(1).sqrt(), rtol=1e-5)
    assert lengths.requires_grad


def test_g_ema_ramp_and_lazy_regularisation_scaling():
    assert ema_beta(32, 0, ema_kimg=10, rampup=0.05) == 0.0  # first step: G_ema = G
    assert ema_beta(32, 10 ** 9, ema_kimg=10, rampup=0.05) == pytest.approx(0.5 ** (32 / 10000))
    assert ema_beta(32, 64_000, ema_kimg=10, rampup=0.05) == pytest.approx(0.5 ** (32 / 3200))
    assert ema_beta(32, 0, ema_kimg=10, rampup=None) == pytest.approx(0.5 ** (32 / 10000))
    lr, betas = lazy_regularization(0.0025, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.0025 * 16 / 17) and betas == pytest.approx((0.0, 0.99 ** (16 / 17)))


# ---- the system on a small Shapes dataset --------------------------------------------------------------

EXP = {
    "name": "lafite_tiny", "system": "lafite",
    "prepare": {"seed": 0, "batch_size": 32},
    "model": {"preset": "shapes32", "overrides": {"channel_base": 128, "channel_max": 16, "map_num": 1}, "projection": "batch_sum"},
    "loss": {"mixing_prob": 1.0, "image_noise": 0.75, "text_noise": 0.1, "temp": 0.5, "lam": 0.0, "itd": 10.0,
             "itc": 10.0, "iid": 0.0, "iic": 0.0, "gamma": 10.0, "pl_weight": 2.0, "style_mixing": 0.9,
             "mirror": True, "clip_crop": 0.5},
    "train": {"kimg": 0.096, "batch": 8, "lr": 0.0025, "betas": [0.0, 0.99], "ema_kimg": None, "ema_rampup": 0.05,
              "G_reg_interval": 4, "D_reg_interval": 16, "kimg_per_tick": 0.032, "snap": 1, "seed": 0, "workers": 0,
              "mixed_precision": "no", "compile": False, "grid_prompts": 2},
    "sample": {"seed": 0, "num_images": None, "gen_bsz": 4, "compile": False, "truncation_psi": 1.0,
               "noise_mode": "const"},
}


@pytest.fixture(scope="module")
def prepared(shapes32, tmp_path_factory):
    """A tiny Shapes CLIP (the real recipe, few steps) and the dataset zip LAFITE's prepare writes."""
    from t2i.checkpoints.hashing import write_sha256sums
    from t2i.systems.lafite import LafiteSystem
    from t2i.text.shapes_clip import train_shapes_clip

    root = tmp_path_factory.mktemp("lafite")
    dataset, clip, prepared = root / "dataset", root / "clip", root / "prepared"
    shutil.copytree(shapes32, dataset)
    write_sha256sums(dataset)  # as every input folder of a stage has
    train_shapes_clip(dataset, clip, {"steps": 5, "batch_size": 32, "width": 32, "layers": 2, "projection_dim": 16})
    LafiteSystem().prepare(EXP, {"dataset": dataset, "clip": clip}, prepared)
    write_sha256sums(prepared)
    return {"dataset": dataset, "clip": clip, "prepared": prepared}


def _train(inputs, out_dir, **train):
    from t2i.systems.lafite import LafiteSystem

    exp = json.loads(json.dumps(EXP))
    exp["train"].update(train)
    LafiteSystem().train(exp, inputs, out_dir)
    return out_dir


def test_prepare_writes_the_dataset_zip_of_the_train_split(prepared):
    from t2i.data.lafite_zip import LafiteZipDataset

    data = LafiteZipDataset(prepared["prepared"] / "dataset.zip", require_captions=True)
    train_names = (prepared["dataset"] / "splits" / "train.txt").read_text().split()
    assert data.names == train_names and data.image_size == 32 and data.feature_dim == 16
    summary = json.loads((prepared["prepared"] / "zip_summary.json").read_text())
    cosines = [float(unit(torch.from_numpy(data.img_features[i])) @ unit(torch.from_numpy(t)))
               for i in range(len(data)) for t in data.caption_features(i)]
    assert summary["images"] == len(data) and summary["captions"] == len(cosines)
    assert summary["matched_cosine"] == pytest.approx(sum(cosines) / len(cosines), abs=1e-5)


def test_training_resumes_bit_identically_and_logs_every_phase(prepared, tmp_path, one_thread):
    straight = _train(prepared, tmp_path / "straight")  # 12 steps, R1 at step 0, path length every 4
    _train(prepared, tmp_path / "resumed", kimg=0.048)  # 6 steps, then continued to 12
    _train(prepared, tmp_path / "resumed")
    assert "resumed_from" in (tmp_path / "resumed/model/provenance.json").read_text()
    for name in ("G.raw", "D.raw", "G.ema-ramp"):
        a = load_file(straight / "weights" / f"{name}.safetensors")
        b = load_file(tmp_path / "resumed" / "weights" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = [json.loads(line) for line in (straight / "model/train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12]  # a tick is 32 images = 4 steps
    assert {"loss_G", "loss_D", "scores_real", "scores_fake", "pl_penalty", "r1_penalty", "lr/G", "lr/D"} <= set(rows[0])
    stats = [json.loads(line) for line in (straight / "stats.jsonl").read_text().splitlines()]
    assert [(r["tick"], r["kimg"]) for r in stats] == [(1, 0.032), (2, 0.064), (3, 0.096)]
    index = json.loads((straight / "model/t2i_model.json").read_text())
    assert set(index["components"]) == {"generator", "discriminator"}
    # The fakes grid: 2 prompt rows x 8 latents of 32 px with 1-px gaps, from G_ema, named by kimg.
    test_prompts = [json.loads(line)["prompt"] for line in (prepared["dataset"] / "prompts/test.jsonl").open()]
    assert (straight / "grids/prompts.txt").read_text().splitlines() == list(dict.fromkeys(test_prompts))[:2]
    grid = np.asarray(Image.open(straight / "grids/fakes000000.png"))
    assert grid.shape == (2 * 33 + 1, 8 * 33 + 1, 3) and grid[1:33, 1:33].std() > 0


def test_sampling_conditions_on_the_prompts_text(prepared, tmp_path, one_thread):
    from t2i.systems.lafite import LafiteSystem

    model = _train(prepared, tmp_path / "train") / "model"
    prompts = [{"id": "a", "prompt": "a small red circle"}, {"id": "b", "prompt": "a large blue square"}]
    out = tmp_path / "samples"
    out.mkdir()
    inputs = {"model": model, "clip": prepared["clip"], "dataset": prepared["dataset"]}
    LafiteSystem().sample(EXP, inputs, prompts * 2, out)
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == [f"{i:06d}.png" for i in range(4)] and all((out / r["file"]).is_file() for r in rows)


@pytest.mark.parametrize("cosine", [0.32, 0.6, 0.87])
def test_calibrated_image_noise_keeps_the_matched_cosine(cosine):
    """In CLIP-like dimensions the pseudo feature's cosine to its image feature is the asked one."""
    from t2i.gan.lafite import calibrated_image_noise

    a = calibrated_image_noise(cosine)
    h = unit(torch.randn(4096, 512, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    pseudo = perturb(h, None, mixing_prob=1.0, image_noise=a, generator=torch.Generator().manual_seed(1))
    # mean over 4096 pairs of a cosine whose spread is ~a/sqrt(512): a tolerance of 0.01 is > 10 sigma
    assert abs((pseudo * h).sum(-1).mean().item() - cosine) < 0.01
    assert abs(calibrated_image_noise(0.316) - 0.75) < 0.01  # the original's 0.75 for ViT-B/32's ~0.3
