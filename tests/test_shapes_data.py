"""Shapes-T2I generator (t2i.data.shapes) and the caption-dir dataset (t2i.data.captions)."""
from __future__ import annotations

import re
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data.captions import CaptionDirDataset
from t2i.data.shapes import COUNT_WORDS, PALETTE, RELATION_WORDS, SHAPES, generate, margins, object_side, spec_of
from t2i.utils.atomic import read_jsonl

PHRASE = re.compile(rf"\b(a (?:small|large)|one|two|three) ({'|'.join(PALETTE)}) ({'|'.join(SHAPES)})s?\b")
NUMBERS = {"one": 1, "two": 2, "three": 3}


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "provenance.json"}  # provenance records when it was written


def caption_counts(caption: str) -> Counter:
    """Objects per colour-shape pair that a short caption names, parsed independently of the generator."""
    counts = Counter()
    for number, color, shape in PHRASE.findall(caption):
        counts[(color, shape)] += 1 if number.startswith("a ") else NUMBERS[number]
    return counts


# ---------------------------------------------------------------------------- generator

def test_same_config_gives_byte_identical_files(tmp_path, shapes_cfg):
    cfg = {**shapes_cfg, "num_train": 40, "num_test": 20, "num_holdout": 10}
    generate(tmp_path / "a", cfg)
    generate(tmp_path / "b", cfg)
    generate(tmp_path / "c", {**cfg, "seed": cfg["seed"] + 1})
    a, b, c = (all_files(tmp_path / d) for d in "abc")
    assert len(a) == 2 * 70 + 7  # images + captions, annotations, 3 prompt sets, 3 splits
    assert a == b
    assert a["annotations.jsonl"] != c["annotations.jsonl"]
    assert (tmp_path / "a" / "provenance.json").is_file()


def test_test_images_do_not_depend_on_the_training_set_size(tmp_path, shapes_cfg):
    cfg = {**shapes_cfg, "num_train": 30, "num_test": 10, "num_holdout": 5}
    generate(tmp_path / "a", cfg)
    generate(tmp_path / "b", {**cfg, "num_train": 5})
    for name in (tmp_path / "a" / "splits" / "test.txt").read_text().split():
        assert (tmp_path / "a" / "images" / f"{name}.png").read_bytes() == \
               (tmp_path / "b" / "images" / f"{name}.png").read_bytes()


def test_holdout_pairs_never_appear_in_train_or_test(shapes32, shapes_cfg):
    held = set(shapes_cfg["holdout_pairs"])
    rows = read_jsonl(shapes32 / "annotations.jsonl")
    for row in rows:
        pairs = {f"{o['color']} {o['shape']}" for o in row["objects"]}
        text = " ".join([row["caption"], row["long_caption"], *row["tags"]])
        if row["split"] == "holdout":
            assert pairs & held, row["name"]
        else:
            assert not pairs & held, row["name"]
            assert not any(re.search(rf"\b{p}s?\b", text) for p in held), row["name"]
    assert Counter(r["split"] for r in rows) == {"train": 120, "test": 300, "holdout": 60}


def test_layout_and_annotations_are_consistent(shapes32, shapes_cfg):
    size = shapes_cfg["image_size"]
    margin, gap = margins(size)
    rows = read_jsonl(shapes32 / "annotations.jsonl")
    for split in ("train", "test", "holdout"):
        listed = (shapes32 / "splits" / f"{split}.txt").read_text().split()
        assert listed == [r["name"] for r in rows if r["split"] == split]
    for row in rows:
        name, objects = row["name"], row["objects"]
        assert (shapes32 / "captions" / f"{name}.txt").read_text() == row["caption"] + "\n"
        img = np.asarray(Image.open(shapes32 / "images" / f"{name}.png"))
        assert img.shape == (size, size, 3)
        assert 1 <= len(objects) <= shapes_cfg["max_objects"]
        covered = np.zeros((size, size), bool)
        for obj in objects:
            x0, y0, x1, y1 = obj["box"]
            assert margin <= x0 < x1 <= size - margin and margin <= y0 < y1 <= size - margin
            assert x1 - x0 == y1 - y0 == object_side(obj["size"], size)
            exact = (img[y0:y1, x0:x1] == PALETTE[obj["color"]]).all(axis=-1).mean()
            assert exact > 0.3, (name, obj)  # the object is drawn where its box says
            covered[y0:y1, x0:x1] = True
        assert (img[~covered] == 255).all(), name  # nothing outside the boxes
        for a, b in combinations([o["box"] for o in objects], 2):
            assert a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]
        # counts: the caption names every object, the long caption describes each one
        assert caption_counts(row["caption"]) == Counter((o["color"], o["shape"]) for o in objects), row["caption"]
        for obj in objects:
            assert f"A {obj['size']} {obj['color']} {obj['shape']} is" in row["long_caption"]
        n = len(objects)
        assert f"{COUNT_WORDS[n]} object{'s' if n > 1 else ''}" in row["tags"]
        assert f"{COUNT_WORDS[n]} object" in row["long_caption"]
        rel = row["relation"]
        if rel is not None:
            a, b = objects[rel["a"]]["box"], objects[rel["b"]]["box"]
            apart = {"left_of": a[2] <= b[0], "right_of": b[2] <= a[0], "above": a[3] <= b[1], "below": b[3] <= a[1]}
            assert apart[rel["type"]], row
            along, across = abs(a[0] + a[2] - b[0] - b[2]), abs(a[1] + a[3] - b[1] - b[3])
            if rel["type"] in ("above", "below"):
                along, across = across, along
            assert along >= 2 * across, row  # mostly along the relation's axis
            assert RELATION_WORDS[rel["type"]] in row["caption"]


def test_prompt_sets_match_the_annotations(shapes32):
    rows = {r["name"]: r for r in read_jsonl(shapes32 / "annotations.jsonl")}
    for prompt_set, split, field in (("test", "test", "caption"), ("holdout", "holdout", "caption"),
                                     ("long", "test", "long_caption")):
        prompts = read_jsonl(shapes32 / "prompts" / f"{prompt_set}.jsonl")
        assert [p["id"] for p in prompts] == (shapes32 / "splits" / f"{split}.txt").read_text().split()
        for p in prompts:
            row = rows[p["reference"]]
            assert p["prompt"] == row[field]
            assert p["spec"] == spec_of(row["objects"], row["relation"])
            assert sum(o["count"] for o in p["spec"]["objects"]) == len(row["objects"])
    long_prompts = [p["prompt"] for p in read_jsonl(shapes32 / "prompts" / "long.jsonl")]
    assert min(len(re.findall(r"\.", p)) for p in long_prompts) >= 2  # multi-sentence
    types = Counter(p["spec"]["type"] for p in read_jsonl(shapes32 / "prompts" / "test.jsonl"))
    assert set(types) == {"single", "count", "relation", "multi"}
    assert min(types.values()) >= 30


@pytest.mark.parametrize("image_size", [64, 256])
def test_larger_images_scale_the_objects(tmp_path, shapes_cfg, image_size):
    generate(tmp_path, {**shapes_cfg, "image_size": image_size, "num_train": 6, "num_test": 3, "num_holdout": 2})
    for row in read_jsonl(tmp_path / "annotations.jsonl"):
        assert Image.open(tmp_path / "images" / f"{row['name']}.png").size == (image_size, image_size)
        for obj in row["objects"]:
            assert obj["box"][2] - obj["box"][0] == round({"small": 0.22, "large": 0.34}[obj["size"]] * image_size)


@pytest.mark.parametrize("max_objects", [1, 2])
def test_max_objects_bounds_every_image(tmp_path, shapes_cfg, max_objects):
    generate(tmp_path, {**shapes_cfg, "max_objects": max_objects, "num_train": 60, "num_test": 5, "num_holdout": 5})
    counts = {len(r["objects"]) for r in read_jsonl(tmp_path / "annotations.jsonl")}
    assert counts == set(range(1, max_objects + 1))


@pytest.mark.parametrize("edit, key", [
    (lambda c: c.update(image_size=16), "image_size"),
    (lambda c: c.update(max_objects=4), "max_objects"),
    (lambda c: c.update(num_train="10"), "num_train"),
    (lambda c: c.update(seed=True), "seed"),
    (lambda c: c.pop("num_test"), "num_test"),
    (lambda c: c.update(num_tset=5), "num_tset"),
    (lambda c: c.update(holdout_pairs=["purple circle"]), "holdout_pairs"),
    (lambda c: c.update(holdout_pairs="red triangle"), "holdout_pairs"),
    (lambda c: c.update(holdout_pairs=[], num_holdout=5), "num_holdout"),
])
def test_bad_config_names_the_key(tmp_path, shapes_cfg, edit, key):
    edit(shapes_cfg)
    with pytest.raises(ValueError, match=key):
        generate(tmp_path / "out", shapes_cfg)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- CaptionDirDataset

def test_caption_dir_dataset_items(shapes32):
    ds = CaptionDirDataset(shapes32, split="train")
    assert len(ds) == 120 and ds.image_size == 32
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() == -1.0 and item["image"].max() == 1.0  # saturated colours on white
    assert item["caption"] == (shapes32 / "captions" / f"{item['name']}.txt").read_text().strip()
    assert ds.caption(0) == item["caption"]
    resized = CaptionDirDataset(shapes32, split="test", image_size=48)
    assert len(resized) == 300 and resized[5]["image"].shape == (3, 48, 48)
    assert resized.names == (shapes32 / "splits" / "test.txt").read_text().split()
    picked = CaptionDirDataset(shapes32, names=["test_00002", "train_00007"])
    assert [picked[i]["name"] for i in range(2)] == ["test_00002", "train_00007"]


def write_caption_dir(root: Path, images: dict[str, Image.Image], captions: dict[str, str]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "captions").mkdir()
    for file, img in images.items():
        img.save(root / "images" / file)
    for name, text in captions.items():
        (root / "captions" / f"{name}.txt").write_text(text)
    return root


def test_caption_dir_dataset_user_folder(tmp_path):
    root = write_caption_dir(tmp_path, {"a.jpg": Image.new("RGB", (80, 40), (0, 0, 0)),
                                        "b.png": Image.new("RGB", (40, 40), (255, 255, 255))},
                             {"a": "a black picture\n", "b": "a white one"})
    ds = CaptionDirDataset(root, split="train", image_size=32)  # no splits/: every image
    assert len(ds) == 2
    assert ds[0]["image"].shape == (3, 32, 32) and ds[0]["caption"] == "a black picture"
    assert torch.allclose(ds[1]["image"], torch.ones(3, 32, 32))


def test_caption_dir_dataset_missing_caption_names_the_file(tmp_path):
    root = write_caption_dir(tmp_path, {"a.png": Image.new("RGB", (8, 8)), "b.png": Image.new("RGB", (8, 8))},
                             {"a": "only a"})
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "captions" / "b.txt"))):
        CaptionDirDataset(root)


def test_caption_dir_dataset_empty_folder_names_it(tmp_path):
    root = write_caption_dir(tmp_path, {}, {})
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "images"))):
        CaptionDirDataset(root)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere" / "images"))):
        CaptionDirDataset(tmp_path / "nowhere")
