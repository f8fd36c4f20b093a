"""Fidelity metrics: identical to torch_fidelity.calculate_metrics, and meaningful on Shapes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from PIL import Image
from torch_fidelity.defaults import DEFAULTS
from torch_fidelity.metric_kid import kid_features_to_metric

from t2i.data.shapes import generate
from t2i.eval import extractors, fidelity
from t2i.eval.shapes_classifier import train_shapes_classifier

ALL = dict(fid=True, kid=True, isc=True, prc=True)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate(out, {"seed": 1, "image_size": 32, "num_train": 400, "num_test": 50, "max_objects": 3,
                   "holdout_pairs": ["red triangle"], "num_holdout": 50})
    return out


def split_folders(images: list[Path], root: Path) -> tuple[Path, Path]:
    """Copy alternate images into root/a (the 'samples', with an index.jsonl) and root/b (the reference)."""
    a, b = root / "a", root / "b"
    a.mkdir(parents=True)
    b.mkdir()
    for i, p in enumerate(images):
        shutil.copy(p, (a if i % 2 else b) / p.name)
    rows = [{"id": i, "prompt": "x", "seed": i, "file": p.name} for i, p in enumerate(sorted(a.glob("*.png")))]
    (a / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return a, b


def float32_kid_error(x: torch.Tensor, y: torch.Tensor, subset_size: int) -> tuple[float, float]:
    """Bounds on the rounding error of torch-fidelity's KID (mean, std) on float32 features ``x``, ``y``.

    torch-fidelity computes the kernels k = (x.y / d + 1)^3 (its defaults) and their sums in
    float32. First-order error analysis: a float32 dot product of d terms is off by at most
    about sqrt(d) eps sum_i |x_i y_i| (the probabilistic bound, rounding errors adding up as a
    random walk; d eps is the worst case), which the cube turns into
    3 (x.y / d + 1)^2 sqrt(d) eps |x|.|y| / d; the +1, the cube, the pairwise float32 sums of
    m^2 entries and the final subtraction add at most (log2 m^2 + 6) eps |k|. Each subset's MMD is
    a weighted sum of entries (1/(m(m-1)) within a set, -2/m^2 across), so its error is at most
    the same sum of entry errors with the weights' absolute values: an error relative to |k|,
    while the cancellation k_xx + k_yy - 2 k_xy leaves a KID far smaller than |k| (3e-4 against
    |k| ~ 8 in the Inception test below). The mean's error is at most the subsets' mean error,
    the std's at most their root mean square. A bound, so loose (the errors seen are a few
    hundred times smaller); the tight check is the float64 one.
    """
    assert [DEFAULTS[f"kid_kernel_poly_{k}"] for k in ("degree", "gamma", "coef0")] == [3, None, 1]
    x, y = x.double().numpy(), y.double().numpy()
    d, m, eps = x.shape[1], subset_size, np.finfo(np.float32).eps

    def entry_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        base = a @ b.T / d + 1
        dot_error = np.sqrt(d) * eps * (np.abs(a) @ np.abs(b).T)
        return 3 * base ** 2 * dot_error / d + (np.log2(m * m) + 6) * eps * np.abs(base) ** 3

    rng = np.random.RandomState(fidelity.RNG_SEED)  # torch-fidelity's subset draws
    errors = []
    for _ in range(fidelity.KID_SUBSETS):
        a, b = x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)]
        e_xx, e_yy, e_xy = entry_errors(a, a), entry_errors(b, b), entry_errors(a, b)
        errors.append((e_xx.sum() - e_xx.trace() + e_yy.sum() - e_yy.trace()) / (m * (m - 1)) + 2 * e_xy.sum() / m ** 2)
    return float(np.mean(errors)), float(np.sqrt(np.mean(np.square(errors))))


def assert_same_as_torch_fidelity(ours: dict, theirs: dict, samples: Path, reference_stats: Path, extractor,
                                  batch_size: int = fidelity.BATCH_SIZE) -> None:
    """``ours`` (fidelity.compute) against ``theirs`` (torch_fidelity.calculate_metrics) on the same images.

    KID equals torch-fidelity's estimator on float64 features (our features: the samples
    extracted again, the reference from its cache) to float64 rounding, and torch-fidelity's
    float32 KID within that one's rounding error (``float32_kid_error``); the rest to rel 1e-3.
    ``batch_size``: the one ``ours`` was extracted with.
    """
    layer = ours["feature_layers"]["kid"]
    x = fidelity.extract_features(fidelity.sample_files(samples), extractor, batch_size=batch_size)[layer]
    y = torch.from_numpy(fidelity.load_reference_stats(reference_stats)[1][f"features.{layer}"])
    exact = kid_features_to_metric(x.double(), y.double(), kid_subsets=fidelity.KID_SUBSETS, rng_seed=fidelity.RNG_SEED,
                                   kid_subset_size=ours["kid_subset_size"], verbose=False)
    errors = float32_kid_error(x, y, ours["kid_subset_size"])
    for key, error in zip(("kid_mean", "kid_std"), errors):
        tf_key = fidelity.TORCH_FIDELITY_KEYS[key]
        assert ours[key] == pytest.approx(exact[tf_key], rel=1e-9, abs=1e-15), key
        assert abs(ours[key] - theirs[tf_key]) <= error, (key, ours[key], theirs[tf_key], error)
    for key, tf_key in fidelity.TORCH_FIDELITY_KEYS.items():
        if not key.startswith("kid"):
            assert ours[key] == pytest.approx(theirs[tf_key], rel=1e-3, abs=1e-7), key


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory) -> Path:
    """torch-fidelity's InceptionV3 with random weights, saved where the download rule would put the real ones."""
    cls = tf_inception.FeatureExtractorInceptionV3
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as m:  # build the architecture without loading any weights
        m.setattr(cls, "load_state_dict", lambda self, state_dict: None)
        m.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
        m.setattr(tf_inception.torch, "load", lambda *a, **k: None)
        net = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    for module in net.modules():  # keep activations O(1) through the depth
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    out = tmp_path_factory.mktemp("pretrained") / "inception"
    out.mkdir()
    torch.save(net.state_dict(), out / extractors.INCEPTION_FILENAME)
    return out


def test_inception_metrics_equal_torch_fidelity(shapes, random_inception, tmp_path):
    # Inception runs at 299 px whatever the input size: a dozen images a side keeps this test short on a CPU
    samples, reference = split_folders(sorted((shapes / "images").glob("*.png"))[:24], tmp_path)
    fe = extractors.create_extractor("inception-v3-compat", random_inception)
    meta = fidelity.reference_stats(reference, fe, tmp_path / "ref.npz", batch_size=6)
    assert meta["num_images"] == 12 and meta["extractor"] == "inception-v3-compat"
    ours = fidelity.compute(samples, tmp_path / "ref.npz", fe, batch_size=6, kid_subset_size=6, device="cpu")

    theirs = torch_fidelity.calculate_metrics(
        input1=str(samples), input2=str(reference), **ALL, cuda=False, batch_size=6, kid_subset_size=6,
        feature_extractor="inception-v3-compat", verbose=False, save_cpu_ram=True,
        feature_extractor_weights_path=str(random_inception / extractors.INCEPTION_FILENAME))
    assert_same_as_torch_fidelity(ours, theirs, samples, tmp_path / "ref.npz", fe, batch_size=6)
    assert ours["fid"] > 0.01 and ours["num_samples"] == 12 and ours["num_reference"] == 12
    assert ours["kid_subset_size"] == 6 and ours["feature_layers"]["fid"] == "2048"


@pytest.fixture(scope="module")
def shapes_cnn(shapes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cnn")
    train_shapes_classifier(shapes, out, seed=0, steps=200)
    return out / "model.safetensors"


def test_shapes_cnn_metrics_equal_torch_fidelity(shapes, shapes_cnn, tmp_path):
    samples, reference = split_folders(sorted((shapes / "images").glob("*.png"))[:300], tmp_path)
    fe = extractors.create_extractor("shapes-cnn", shapes_cnn)
    fidelity.reference_stats(reference, fe, tmp_path / "ref.npz", batch_size=64)
    ours = fidelity.compute(samples, tmp_path / "ref.npz", fe, kid_subset_size=100, num_workers=2)
    theirs = torch_fidelity.calculate_metrics(  # by its registered name
        input1=str(samples), input2=str(reference), **ALL, cuda=False, kid_subset_size=100, verbose=False,
        feature_extractor="shapes-cnn", feature_extractor_weights_path=str(shapes_cnn), save_cpu_ram=True)
    assert_same_as_torch_fidelity(ours, theirs, samples, tmp_path / "ref.npz", fe)
    assert ours["isc_mean"] > 2  # confident, varied class logits: IS and its splits are a real comparison
    assert 0 < ours["kid_std"] and ours["kid_subset_size"] == 100


def test_fid_separates_ground_truth_from_noise(shapes, shapes_cnn, tmp_path):
    images = sorted((shapes / "images").glob("*.png"))
    half_a, half_b = split_folders(images, tmp_path / "gt")
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(250):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(noise / f"{i:05d}.png")

    fe = extractors.create_extractor("shapes-cnn", shapes_cnn)
    fidelity.reference_stats(half_b, fe, tmp_path / "ref.npz")
    same = fidelity.compute(half_a, tmp_path / "ref.npz", fe, metrics=("fid", "kid", "prc"))
    other = fidelity.compute(noise, tmp_path / "ref.npz", fe, metrics=("fid", "kid", "prc"))
    assert same["fid"] * 20 < other["fid"]
    assert abs(same["kid_mean"]) * 20 < other["kid_mean"]
    assert same["precision"] > 0.5 > other["precision"]
    assert "isc_mean" not in same


def test_reference_stats_are_tied_to_their_extractor(shapes, shapes_cnn, random_inception, tmp_path):
    samples, reference = split_folders(sorted((shapes / "images").glob("*.png"))[:40], tmp_path)
    fidelity.reference_stats(reference, extractors.create_extractor("shapes-cnn", shapes_cnn), tmp_path / "ref.npz")
    inception = extractors.create_extractor("inception-v3-compat", random_inception)
    with pytest.raises(ValueError, match="computed with extractor shapes-cnn, not inception-v3-compat"):
        fidelity.compute(samples, tmp_path / "ref.npz", inception)

    other_weights = tmp_path / "other" / "model.safetensors"
    train_shapes_classifier(shapes, other_weights.parent, seed=1, steps=2)
    with pytest.raises(ValueError, match="other shapes-cnn weights"):
        fidelity.compute(samples, tmp_path / "ref.npz", extractors.create_extractor("shapes-cnn", other_weights))
    with pytest.raises(FileNotFoundError, match="reference statistics not found"):
        fidelity.compute(samples, tmp_path / "missing.npz", inception)


def test_samples_come_from_the_index(shapes, tmp_path):
    samples, _ = split_folders(sorted((shapes / "images").glob("*.png"))[:10], tmp_path)
    listed = sorted(samples.glob("*.png"))
    shutil.copy(listed[0], samples / "stray.png")
    assert fidelity.sample_files(samples) == listed
    listed[1].unlink()
    with pytest.raises(FileNotFoundError, match=listed[1].name):
        fidelity.sample_files(samples)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A random CLIP saved with save_pretrained, with a real CLIP byte-level BPE tokenizer (no merges)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"], **tiny),
        vision_config=dict(image_size=32, patch_size=8, **tiny), projection_dim=16)
    torch.manual_seed(2)  # a seed whose image/prompt cosines are positive, so the clamp at 0 hides nothing
    out = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def test_clip_score_pairs_each_image_with_its_prompt(shapes, tiny_clip, tmp_path):
    from t2i.eval.clip_score import clip_score_folder, load_clip

    prompts = ["a red circle", "two blue squares", "a green triangle left of a cyan circle", "a yellow square"]
    rows = [{"id": i, "prompt": p, "seed": i, "file": f"{i:05d}.png"} for i, p in enumerate(prompts)]
    for r, image in zip(rows, sorted((shapes / "images").glob("*.png"))):
        shutil.copy(image, tmp_path / r["file"])
    (tmp_path / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    result = clip_score_folder(tmp_path, tiny_clip, batch_size=3, device="cpu")  # 2 batches: pairing across them
    model, processor = load_clip(tiny_clip)
    expected = []
    with torch.no_grad():
        for r in rows:
            out = model(**processor(text=[r["prompt"]], images=[Image.open(tmp_path / r["file"])], return_tensors="pt"))
            expected.append(100 * max(torch.cosine_similarity(out.image_embeds, out.text_embeds).item(), 0))
    assert result["num_images"] == 4 and len(set(expected)) == 4 and max(expected) > 0, expected
    assert result["clip_score"] == pytest.approx(np.mean(expected), abs=1e-3)
    assert result["clip_score_std"] == pytest.approx(np.std(expected), abs=1e-3)

    with pytest.raises(FileNotFoundError, match="CLIP model not found"):
        clip_score_folder(tmp_path, tmp_path / "nowhere")


def test_distances_equal_torch_fidelity_estimators():
    """FID via the cached symmetric square root and KID on torch equal torch-fidelity's NumPy versions."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    from t2i.eval.distances import frechet_distance, gaussian_statistics, kernel_distance, psd_sqrt

    g = torch.Generator().manual_seed(0)
    a = torch.randn(600, 64, generator=g) @ torch.randn(64, 64, generator=g) / 8
    b = torch.randn(500, 64, generator=g) * 1.3 + 0.2
    stats_a, stats_b = gaussian_statistics(a), gaussian_statistics(b)
    ours = frechet_distance(stats_a["mu"], stats_a["sigma"], stats_b["mu"], stats_b["sigma"],
                            psd_sqrt(stats_b["sigma"]))
    theirs = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)
    assert ours == pytest.approx(theirs[torch_fidelity.KEY_METRIC_FID], rel=1e-6)
    assert frechet_distance(stats_a["mu"], stats_a["sigma"], stats_a["mu"], stats_a["sigma"]) == pytest.approx(0, abs=1e-8)

    kid = kernel_distance(a, b, subsets=20, subset_size=100, seed=2020)  # float32 features, float64 kernels
    tf_kid = kid_features_to_metric(a.double(), b.double(), kid_subsets=20, kid_subset_size=100, rng_seed=2020,
                                    verbose=False)  # on float64 features its NumPy kernels are float64 too
    assert kid["mean"] == pytest.approx(tf_kid[torch_fidelity.KEY_METRIC_KID_MEAN], rel=1e-9)
    assert kid["std"] == pytest.approx(tf_kid[torch_fidelity.KEY_METRIC_KID_STD], rel=1e-9)
    with pytest.raises(ValueError, match="subset size"):
        kernel_distance(a, b, subsets=1, subset_size=501, seed=0)
