"""The analytic Shapes detector and scorer (t2i.eval.shapes) on ground-truth renders."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from t2i.data.shapes import generate, render
from t2i.eval.shapes import detect, score, score_folder
from t2i.utils.atomic import read_jsonl


@pytest.fixture(scope="module")
def shapes64(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes64")
    generate(out, {"seed": 11, "image_size": 64, "num_train": 1, "num_test": 300, "max_objects": 3,
                   "holdout_pairs": ["green square"], "num_holdout": 60})
    return out


def reference_set(dataset, prompt_set="test"):
    prompts = read_jsonl(dataset / "prompts" / f"{prompt_set}.jsonl")
    return [dataset / "images" / f"{p['reference']}.png" for p in prompts], [p["spec"] for p in prompts]


def degrade(path, blur_px: float, noise: float, seed: int) -> np.ndarray:
    img = Image.open(path).convert("RGB").filter(ImageFilter.GaussianBlur(blur_px))
    noisy = np.asarray(img, np.float32) + np.random.default_rng(seed).normal(0, noise, (*img.size[::-1], 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("dataset", ["shapes32", "shapes64"])
@pytest.mark.parametrize("prompt_set", ["test", "holdout"])
def test_ground_truth_renders_score_near_perfect(request, dataset, prompt_set):
    images, specs = reference_set(request.getfixturevalue(dataset), prompt_set)
    agg = score(images, specs)["aggregate"]
    assert agg["prompt_acc"] >= 0.99, agg
    assert agg["object_acc"] >= 0.99 and agg["count_acc"] >= 0.99 and agg["relation_acc"] >= 0.99
    if prompt_set == "test":
        assert set(agg["by_type"]) == {"single", "count", "relation", "multi"}
        assert all(v["prompt_acc"] >= 0.97 for v in agg["by_type"].values())


@pytest.mark.parametrize("dataset", ["shapes32", "shapes64"])
def test_mismatched_prompts_score_low(request, dataset):
    images, specs = reference_set(request.getfixturevalue(dataset))
    deranged = specs[1:] + specs[:1]  # every image gets its neighbour's prompt
    agg = score(images, deranged)["aggregate"]
    assert agg["prompt_acc"] <= 0.2, agg
    assert agg["object_acc"] <= 0.6, agg


@pytest.mark.parametrize("dataset", ["shapes32", "shapes64"])
def test_robust_to_blur_and_noise(request, dataset):
    images, specs = reference_set(request.getfixturevalue(dataset))
    size = Image.open(images[0]).size[0]
    degraded = [degrade(p, blur_px=0.6 * size / 32, noise=10, seed=i) for i, p in enumerate(images)]
    assert score(degraded, specs)["aggregate"]["prompt_acc"] >= 0.97


def test_detect_finds_each_object():
    objects = [{"shape": "circle", "color": "red", "size": "large", "box": [4, 4, 26, 26]},
               {"shape": "square", "color": "cyan", "size": "small", "box": [36, 8, 50, 22]},
               {"shape": "triangle", "color": "yellow", "size": "small", "box": [20, 40, 34, 54]}]
    found = sorted(detect(render(objects, 64)), key=lambda d: d["color"])
    assert [(d["color"], d["shape"], d["size"]) for d in found] == \
           [("cyan", "square", "small"), ("red", "circle", "large"), ("yellow", "triangle", "small")]
    for d, o in zip(found, [objects[1], objects[0], objects[2]]):
        assert np.abs(np.subtract(d["box"], o["box"])).max() <= 2  # opening trims a triangle's apex
    assert detect(Image.new("RGB", (32, 32), "white")) == []
    assert detect(np.full((32, 32, 3), 128, np.uint8)) == []  # grey is background


def test_image_types_give_the_same_result(shapes32):
    path = shapes32 / "images" / "test_00000.png"
    as_pil = Image.open(path)
    assert detect(path) == detect(str(path)) == detect(as_pil) == detect(np.asarray(as_pil.convert("RGB")))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        detect(np.zeros((8, 8), np.uint8))


def spec(*objects, relation=None, kind="multi"):
    return {"type": kind, "relation": relation,
            "objects": [{"color": c, "shape": s, "count": n} for c, s, n in objects]}


def obj(color, shape, x, y, side=10):
    return {"shape": shape, "color": color, "size": "small", "box": [x, y, x + side, y + side]}


def test_score_checks_counts_relations_and_extras():
    red_circle = obj("red", "circle", 4, 4)
    blue_square = obj("blue", "square", 40, 8)
    cases = [  # (objects drawn, spec, expected per-prompt accuracies)
        ([red_circle], spec(("red", "circle", 1), kind="single"), (1, 1, None, 1)),
        ([red_circle, obj("green", "triangle", 40, 40)], spec(("red", "circle", 1), kind="single"), (1, 1, None, 1)),
        ([red_circle, obj("red", "square", 40, 40)], spec(("red", "circle", 1), kind="single"), (1, 1, None, 0)),
        ([red_circle, obj("blue", "circle", 40, 40)], spec(("red", "circle", 1), kind="single"), (1, 1, None, 0)),
        ([blue_square], spec(("blue", "square", 2), kind="count"), (1, 0, None, 0)),
        ([blue_square, obj("blue", "square", 40, 40)], spec(("blue", "square", 2), kind="count"), (1, 1, None, 1)),
        ([red_circle, blue_square], spec(("red", "circle", 1), ("blue", "square", 1),
                                         relation={"type": "left_of", "a": 0, "b": 1}, kind="relation"), (1, 1, 1, 1)),
        ([red_circle, blue_square], spec(("red", "circle", 1), ("blue", "square", 1),
                                         relation={"type": "right_of", "a": 0, "b": 1}, kind="relation"), (1, 1, 0, 0)),
        ([red_circle], spec(("red", "circle", 1), ("blue", "square", 1),
                            relation={"type": "left_of", "a": 0, "b": 1}, kind="relation"), (0.5, 0.5, 0, 0)),
    ]
    result = score([render(objects, 64) for objects, _, _ in cases], [s for _, s, _ in cases])
    for (objects, s, expected), got in zip(cases, result["per_prompt"]):
        assert (got["object_acc"], got["count_acc"], got["relation_acc"], got["prompt_acc"]) == expected, (objects, s)
    agg = result["aggregate"]
    assert agg["n"] == len(cases)
    assert agg["relation_acc"] == pytest.approx(1 / 3)
    assert agg["by_type"]["count"] == {"prompt_acc": 0.5, "object_acc": 1.0, "n": 2}
    with pytest.raises(ValueError, match="2 images but 1 specs"):
        score([render([], 32)] * 2, [spec(("red", "circle", 1))])


def pairs_of(spec_: dict) -> set:
    return {(o["color"], o["shape"]) for o in spec_["objects"]}


def test_score_folder_matches_samples_to_specs_by_id(tmp_path, shapes32):
    all_prompts = read_jsonl(shapes32 / "prompts" / "test.jsonl")
    first = all_prompts[0]
    other = next(p for p in all_prompts if not pairs_of(p["spec"]) & pairs_of(first["spec"]))
    prompts_file = tmp_path / "prompts.jsonl"
    free = {"id": "free", "prompt": "no spec", "reference": None, "spec": None}
    prompts_file.write_text("".join(json.dumps(p) + "\n" for p in (first, other, free)))
    samples = tmp_path / "samples"
    samples.mkdir()
    # (prompt id, image shown): a right sample, a wrong one, another right one, one of a prompt without spec
    index = [(first["id"], first["reference"]), (first["id"], other["reference"]),
             (other["id"], other["reference"]), ("free", other["reference"])]
    rows = []
    for i, (pid, ref) in enumerate(index):
        Image.open(shapes32 / "images" / f"{ref}.png").save(samples / f"{i:06d}.png")
        rows.append({"id": pid, "prompt": "", "seed": i, "file": f"{i:06d}.png"})
    (samples / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    result = score_folder(samples, prompts_file)
    assert [(p["id"], p["file"], p["prompt_acc"]) for p in result["per_prompt"]] == [
        (first["id"], "000000.png", 1.0), (first["id"], "000001.png", 0.0), (other["id"], "000002.png", 1.0)]
    assert result["aggregate"]["n"] == 3

    rows.append({"id": "nope", "prompt": "", "seed": 9, "file": "000000.png"})
    (samples / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="id 'nope' is not in"):
        score_folder(samples, prompts_file)
