"""Feature extractors: the shapes-cnn classifier (training, registration) and weights resolution."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from t2i.checkpoints.hashing import sha256_file
from t2i.data.shapes import generate, render
from t2i.eval import extractors
from t2i.eval.shapes_classifier import PAIRS, load_shapes_classifier, train_shapes_classifier


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate(out, {"seed": 0, "image_size": 32, "num_train": 700, "num_test": 100, "max_objects": 3,
                   "holdout_pairs": ["red triangle", "blue circle"], "num_holdout": 50})
    return out


def test_classifier_is_deterministic(dataset, tmp_path):
    for run in ("a", "b"):
        train_shapes_classifier(dataset, tmp_path / run, seed=3, steps=15)
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    train_shapes_classifier(dataset, tmp_path / "c", seed=4, steps=15)
    assert (tmp_path / "a/model.safetensors").read_bytes() != (tmp_path / "c/model.safetensors").read_bytes()


def test_classifier_learns_and_writes_its_outputs(dataset, tmp_path):
    metrics = train_shapes_classifier(dataset, tmp_path, seed=0, steps=400)
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {"model.safetensors", "config.json", "metrics.json", "provenance.json", "SHA256SUMS"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    held = metrics["heldout"]
    assert held["num_images"] > 40
    # an all-absent guess scores ~0.89 per label and 0 on whole sets; chance count accuracy is ~1/3
    assert held["pairs_label_acc"] > 0.95 and held["pairs_exact_acc"] > 0.4 and held["count_acc"] > 0.8
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["pairs"] == list(PAIRS) and cfg["train"]["steps"] == 400
    assert json.loads((tmp_path / "provenance.json").read_text())["seeds"] == {"train": 0}

    net = load_shapes_classifier(tmp_path / "model.safetensors")
    red_square = render([{"shape": "square", "color": "red", "size": "large", "box": [4, 4, 15, 15]}], 32)
    x = torch.from_numpy(np.array(red_square)).permute(2, 0, 1)[None]
    logits = net(x)["logits"][0]
    assert PAIRS[logits.argmax()] == "red square"


@pytest.fixture(scope="module")
def shapes_weights(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cnn")
    train_shapes_classifier(dataset, out, seed=0, steps=30)
    return out / "model.safetensors"


def test_shapes_cnn_is_registered_with_torch_fidelity(shapes_weights):
    assert FEATURE_EXTRACTORS_REGISTRY["shapes-cnn"] is extractors.FeatureExtractorShapesCNN
    fe = extractors.create_extractor("shapes-cnn", shapes_weights.parent)  # a directory resolves to its weights
    assert fe.features_list == ["feat", "logits_unbiased"]
    assert extractors.feature_layers("shapes-cnn") == {"fid": "feat", "kid": "feat", "isc": "logits_unbiased",
                                                       "prc": "feat"}
    x = torch.randint(0, 256, (5, 3, 64, 48), dtype=torch.uint8)  # any size: resized inside
    feat, logits = fe(x)
    assert feat.shape == (5, 64) and logits.shape == (5, len(PAIRS))
    assert fe.weights_sha256 == sha256_file(shapes_weights)


def test_missing_weights_fail_with_one_clear_error(tmp_path):
    with pytest.raises(extractors.ExtractorWeightsMissing) as err:
        extractors.create_extractor("inception-v3-compat", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / extractors.INCEPTION_FILENAME) in msg
    assert extractors.INCEPTION_URL in msg and extractors.INCEPTION_SHA256 in msg
    with pytest.raises(extractors.ExtractorWeightsMissing, match="never downloaded"):
        extractors.create_extractor("inception-v3-compat", None)
    with pytest.raises(extractors.ExtractorWeightsMissing, match="recipe: shapes-cnn"):
        extractors.create_extractor("shapes-cnn", tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="evaluate.extractor"):
        extractors.create_extractor("vgg16", tmp_path)


def test_inception_constants_are_torch_fidelitys_file():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert extractors.INCEPTION_URL == URL_INCEPTION_V3
    assert extractors.INCEPTION_URL.endswith("/" + extractors.INCEPTION_FILENAME)
    # torch.hub's convention: the file name carries the first hex digits of its SHA-256
    assert extractors.INCEPTION_SHA256.startswith(extractors.INCEPTION_FILENAME.split("-")[-1].split(".")[0])
    assert len(extractors.INCEPTION_SHA256) == 64
