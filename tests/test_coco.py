"""COCO captions -> caption-dir conversion on a tiny COCO-format split written by the test."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from t2i.data.coco import CocoFormatError, coco_captions_to_caption_dir
from t2i.utils.atomic import read_jsonl


def three_band_image(width: int, height: int) -> Image.Image:
    """Red | blue | green vertical bands; a centered square crop of a wide image is all blue."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 4] = (255, 0, 0)
    a[:, width // 4: 3 * width // 4] = (0, 0, 255)
    a[:, 3 * width // 4:] = (0, 255, 0)
    return Image.fromarray(a)


@pytest.fixture
def coco(tmp_path):
    """Three images with captions (ids 3, 1, 2 in file order) and one without."""
    images_dir = tmp_path / "train2014"
    images_dir.mkdir()
    names = {1: "COCO_train2014_000000000001", 2: "COCO_train2014_000000000002",
             3: "COCO_train2014_000000000003", 4: "COCO_train2014_000000000004"}
    for i, name in names.items():
        three_band_image(96 + 16 * i, 48).save(images_dir / f"{name}.jpg", quality=95)
    ann = {
        "info": {}, "licenses": [],
        "images": [{"id": i, "file_name": f"{names[i]}.jpg", "width": 96 + 16 * i, "height": 48} for i in (3, 1, 2, 4)],
        "annotations": [
            {"id": 12, "image_id": 1, "caption": "A cat on a much longer red sofa near a window."},
            {"id": 10, "image_id": 1, "caption": "A cat  sitting\non a sofa. "},
            {"id": 20, "image_id": 2, "caption": "Two dogs."},
            {"id": 30, "image_id": 3, "caption": "A bus."},
            {"id": 31, "image_id": 3, "caption": "A red bus on a street."},
        ],
    }
    path = tmp_path / "captions_train2014.json"
    path.write_text(json.dumps(ann))
    return path, images_dir, names


def test_converts_to_caption_dir_with_resized_pngs(coco, tmp_path):
    ann, images_dir, names = coco
    out = tmp_path / "out"
    rows = coco_captions_to_caption_dir(ann, images_dir, out, image_size=32)

    expected_names = [names[1], names[2], names[3]]  # id order; image 4 has no caption
    assert [r["name"] for r in rows] == expected_names
    assert rows[0] == {"name": names[1], "split": "train", "caption": "A cat sitting on a sofa.",
                       "captions": ["A cat sitting on a sofa.", "A cat on a much longer red sofa near a window."]}
    assert read_jsonl(out / "annotations.jsonl") == rows
    assert (out / "captions" / f"{names[1]}.txt").read_text() == "A cat sitting on a sofa.\n"
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{n}.png" for n in expected_names]
    for name in expected_names:
        img = np.asarray(Image.open(out / "images" / f"{name}.png"))
        assert img.shape == (32, 32, 3)
        assert np.abs(img.astype(int) - (0, 0, 255)).max() < 40  # center crop: only the blue band
    assert (out / "splits" / "train.txt").read_text().split() == expected_names
    assert read_jsonl(out / "prompts" / "train.jsonl")[1] == {
        "id": names[2], "prompt": "Two dogs.", "reference": names[2], "spec": None}


def test_without_image_size_copies_files_and_max_images_caps(coco, tmp_path):
    ann, images_dir, names = coco
    out = tmp_path / "out"
    rows = coco_captions_to_caption_dir(ann, images_dir, out, max_images=2, caption_policy="longest")
    assert [r["name"] for r in rows] == [names[1], names[2]]
    assert rows[0]["caption"] == "A cat on a much longer red sofa near a window."
    copied = out / "images" / f"{names[1]}.jpg"
    assert copied.read_bytes() == (images_dir / f"{names[1]}.jpg").read_bytes()


def test_second_split_is_added_with_its_own_prompt_set(coco, tmp_path):
    ann, images_dir, names = coco
    out = tmp_path / "out"
    coco_captions_to_caption_dir(ann, images_dir, out, image_size=32, max_images=2)
    coco_captions_to_caption_dir(ann, images_dir, out, image_size=32, split="test",
                                 prompts_out=out / "prompts" / "val.jsonl", caption_policy="random")
    rows = read_jsonl(out / "annotations.jsonl")
    assert [(r["split"], r["name"]) for r in rows] == [("train", names[1]), ("train", names[2]),
                                                       ("test", names[1]), ("test", names[2]), ("test", names[3])]
    assert len(read_jsonl(out / "prompts" / "val.jsonl")) == 3
    assert (out / "splits" / "train.txt").read_text().split() == [names[1], names[2]]
    again = coco_captions_to_caption_dir(ann, images_dir, tmp_path / "again", split="test", caption_policy="random")
    assert [r["caption"] for r in again] == [r["caption"] for r in rows[2:]]  # "random" is reproducible


def test_missing_image_names_the_file(coco, tmp_path):
    ann, images_dir, names = coco
    (images_dir / f"{names[2]}.jpg").unlink()
    with pytest.raises(CocoFormatError, match=rf"{names[2]}\.jpg: image file missing \(1 of the 3 images"):
        coco_captions_to_caption_dir(ann, images_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ('{"images": [', "not valid JSON"),
    ('{"images": []}', "needs 'images' and 'annotations' lists"),
    ('{"images": [{"id": 1}], "annotations": []}', "malformed image or annotation entry"),
    ('{"images": [], "annotations": [{"id": 5, "image_id": 9, "caption": "x"}]}',
     "annotation 5 refers to image_id 9"),
])
def test_malformed_annotations_name_the_file(tmp_path, content, message):
    bad = tmp_path / "captions.json"
    bad.write_text(content)
    with pytest.raises(CocoFormatError, match=rf"^{bad}: .*{message}"):
        coco_captions_to_caption_dir(bad, tmp_path, tmp_path / "out")
