"""Pixel-SDXL's data layer (t2i.data.pixel_sdxl_meta): metadata, buckets, tag dropout, bucket sampler."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data.pixel_sdxl_meta import (BucketBatchSampler, BucketRule, PixelSDXLDataset, drop_tags, item_rng,
                                      make_caption, read_metadata, resolve_path, write_shapes_metadata)
from t2i.utils.atomic import read_jsonl

QUALITY, RATING = "best quality", "general"


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def entry(w: int = 1024, h: int = 1024, tags: str = "a, b, best quality, general") -> dict:
    return {"tags": tags, "image_size": [w, h]}


# ---------------------------------------------------------------------------- metadata

def test_merge_sorts_keeps_duplicates_and_maps_paths(tmp_path):
    one = write(tmp_path / "one.json", {"C:\\data\\imgs\\b.png": entry(tags="x, y"),
                                        "rel/a.png": entry(), "/abs/c.png": entry()})
    sub = tmp_path / "sub"
    sub.mkdir()
    two = write(sub / "two.json", {"/abs/c.png": entry(tags="second"), "d:/z.png": entry()})
    meta = read_metadata([one, two])
    assert [str(it.path) for it in meta.items] == [
        "/abs/c.png", "/abs/c.png", "/mnt/c/data/imgs/b.png", "/mnt/d/z.png", str(tmp_path / "rel/a.png")]
    assert [it.tags for it in meta.items[:3]] == [("a", "b", QUALITY, RATING), ("second",), ("x", "y")]
    with_root = read_metadata([one], root=tmp_path / "r", drive_root="/win")
    assert [str(it.path) for it in with_root.items] == sorted(["/abs/c.png", "/win/c/data/imgs/b.png",
                                                              str(tmp_path / "r/rel/a.png")])
    assert read_metadata(str(one)).items == read_metadata([one]).items
    assert resolve_path("E:\\x\\y.jpg", Path("/root")) == Path("/mnt/e/x/y.jpg")


@pytest.mark.parametrize("value, why", [
    ([1024, 1024], "expected"),
    ({"tags": "a"}, '"image_size"'),
    ({"tags": "a", "image_size": [1024]}, '"image_size"'),
    ({"tags": "a", "image_size": [1024, -5]}, '"image_size"'),
    ({"tags": "a", "image_size": [True, 1024]}, '"image_size"'),
    ({"tags": "a", "image_size": [1024.0, 1024]}, '"image_size"'),
    ({"tags": ["a", "b"], "image_size": [1024, 1024]}, '"tags"'),
])
def test_malformed_entry_names_file_and_key(tmp_path, value, why):
    path = write(tmp_path / "meta.json", {"ok.png": entry(), "bad.png": value})
    with pytest.raises(ValueError, match=rf"meta\.json: entry 'bad\.png': {why}"):
        read_metadata([path])


def test_unreadable_or_empty_metadata(tmp_path):
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: not a readable metadata JSON"):
        read_metadata([tmp_path / "broken.json"])
    with pytest.raises(ValueError, match=r"list\.json: expected an object"):
        read_metadata([write(tmp_path / "list.json", [])])
    with pytest.raises(ValueError, match=r"small\.json: no usable image \(1 smaller"):
        read_metadata([write(tmp_path / "small.json", {"a.png": entry(100, 100)})])


@pytest.mark.parametrize("size, bucket", [
    ((1000, 800), (992, 800)),  # under the limit: snapped down
    ((1024, 1024), (1024, 1024)),
    ((1536, 1536), (1024, 1024)),  # scaled by 2/3 exactly
    ((2048, 1024), (1472, 736)),  # scaled to 1448.2 x 724.1: ceil/ceil matches the 2:1 aspect exactly
    ((1030, 1020), (1024, 992)),  # the closest aspect (1024, 1024) would upscale 1020: snapped down instead
    ((4000, 1000), (2048, 512)),
])
def test_bucket_closed_form(size, bucket):
    assert BucketRule().bucket(*size) == bucket


def test_small_rule_buckets():
    rule = BucketRule(multiple=8, max_pixels=32 * 32, min_pixels=16 * 16)
    assert rule.bucket(37, 30) == (32, 24)  # 1110 px > 1024: scaled to 35.5 x 28.8 -> (40, 32) upscales
    assert rule.bucket(64, 16) == (64, 16)
    assert rule.too_small(16, 16) is False and rule.too_small(23, 15) is True and rule.too_small(100, 7) is True


def test_too_small_are_skipped_counted_and_logged_once(tmp_path, caplog):
    path = write(tmp_path / "m.json", {"keep_768.png": entry(768, 768), "keep_790.png": entry(790, 780),
                                       "drop_799.png": entry(799, 767), "drop_800.png": entry(800, 700),
                                       "wide.png": entry(2048, 1024)})
    with caplog.at_level(logging.INFO, logger="t2i.data.pixel_sdxl_meta"):
        meta = read_metadata([path])
    assert meta.skipped_too_small == 2
    assert [it.path.name for it in meta.items] == ["keep_768.png", "keep_790.png", "wide.png"]
    assert meta.buckets == [(768, 768), (1472, 736)]
    assert meta.bucket_of == [0, 0, 1]
    assert meta.summary() == {"items": 3, "skipped_too_small": 2, "buckets": {"768x768": 2, "1472x736": 1}}
    lines = [r.getMessage() for r in caplog.records if r.name == "t2i.data.pixel_sdxl_meta"]
    assert len(lines) == 1 and "2 skipped" in lines[0]


# ---------------------------------------------------------------------------- tag dropout

def test_drop_tags_rules():
    tags = [f"t{i}" for i in range(40)] + [QUALITY, RATING]
    positions = set()
    for step in range(300):
        out = drop_tags(tags, item_rng(0, step, 7, 0))
        assert len(out) == len(set(out)) and set(out) <= set(tags)
        assert QUALITY in out and RATING in out
        assert len(out) - 2 >= 15
        positions.add(out.index(QUALITY))
    assert len(positions) > 10  # shuffled together with the others, not pinned at the end
    few = [f"t{i}" for i in range(10)] + [QUALITY, RATING]
    for step in range(50):  # at most 15 droppable tags: all come back
        assert sorted(drop_tags(few, item_rng(0, step, 0, 0))) == sorted(few)
    assert drop_tags(["only"], np.random.default_rng(0)) == ["only"]
    assert drop_tags([], np.random.default_rng(0)) == []


def test_drop_tags_deterministic_per_key():
    tags = [f"t{i}" for i in range(40)] + [QUALITY, RATING]
    assert drop_tags(tags, item_rng(3, 10, 5, 0)) == drop_tags(tags, item_rng(3, 10, 5, 0))
    draws = {tuple(drop_tags(tags, item_rng(3, s, 5, 0))) for s in range(20)}
    assert len(draws) == 20


def test_drop_distribution():
    """p ~ U(0, 0.5) per image: without the refill the kept fraction is ~U(0.5, 1)."""
    tags = [f"t{i}" for i in range(400)] + [QUALITY, RATING]
    kept = np.array([(len(drop_tags(tags, item_rng(1, s, 0, 0), min_tags=0)) - 2) / 400 for s in range(1000)])
    assert abs(kept.mean() - 0.75) < 0.01
    assert 0.42 < kept.min() < 0.55 and kept.max() > 0.97
    assert abs(np.quantile(kept, 0.5) - 0.75) < 0.03
    with_refill = [len(drop_tags(tags[:22] + tags[-2:], item_rng(1, s, 0, 0))) - 2 for s in range(500)]
    assert min(with_refill) == 15 and max(with_refill) == 22


def test_caption_drop_rate():
    tags = [f"t{i}" for i in range(5)] + [QUALITY, RATING]
    captions = [make_caption(tags, item_rng(2, s, 0, 0)) for s in range(4000)]
    assert abs(sum(c == "" for c in captions) / 4000 - 0.1) < 0.015
    assert all(sorted(c.split(", ")) == sorted(tags) for c in captions if c)


# ---------------------------------------------------------------------------- sampler

BUCKET_OF = [0, 1, 0, 2, 0, 1, 0, 0, 1]  # bucket sizes 5, 3, 1


def sampler(start=0, stop=40, rank=0, world=1, global_batch=2, seed=5):
    factory = BucketBatchSampler.factory(BUCKET_OF)  # the loop's keyword call
    return factory(dataset_size=len(BUCKET_OF), global_batch=global_batch, rank=rank, world=world, seed=seed,
                   start=start, stop=stop)


def test_batches_come_from_one_bucket_and_cover_an_epoch():
    s = sampler()
    assert s.per_epoch == 3 + 2 + 1 and len(s) == 40
    batches = list(s)
    assert all(len(b) == 2 and len({BUCKET_OF[i] for i, _ in b}) == 1 for b in batches)
    assert [b[0][1] for b in batches] == list(range(40)) and all(b[0][1] == b[1][1] for b in batches)
    for e in range(3):
        epoch = [i for b in batches[6 * e:6 * e + 6] for i, _ in b]
        assert set(epoch) == set(range(len(BUCKET_OF)))
    assert batches[:6] != batches[6:12]


def test_restart_at_step_k_is_bit_identical():
    full = list(sampler())
    for k in (1, 5, 6, 13, 39):
        assert list(sampler(start=k)) == full[k:]
    assert list(sampler(seed=6)) != full


def test_ranks_split_one_global_batch():
    whole = list(sampler(global_batch=4))
    parts = [list(sampler(global_batch=4, rank=r, world=2)) for r in range(2)]
    assert [a + b for a, b in zip(*parts)] == whole


def test_sampler_checks_sizes():
    with pytest.raises(ValueError, match="bucket assignment has 9 items, the dataset 10"):
        BucketBatchSampler(BUCKET_OF, 10, 2, rank=0, world=1, seed=0, start=0, stop=1)
    with pytest.raises(ValueError, match="divisible"):
        sampler(global_batch=3, world=2)


# ---------------------------------------------------------------------------- dataset

def test_dataset_items_and_loader(tmp_path):
    rng = np.random.default_rng(0)
    meta = {}
    for name, (w, h) in {"a": (37, 30), "b": (33, 25), "c": (64, 16), "d": (70, 17), "e": (10, 10)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
        meta[f"{name}.png"] = entry(w, h, tags=f"{name}, x, y, best quality, general")
    rule = BucketRule(multiple=8, max_pixels=32 * 32, min_pixels=16 * 16)
    data = PixelSDXLDataset(read_metadata([write(tmp_path / "m.json", meta)], rule=rule), seed=1)
    assert len(data) == 4 and data.meta.skipped_too_small == 1
    assert data.meta.buckets == [(32, 24), (64, 16)]
    item = data[(0, 3)]
    assert item["image"].shape == (3, 24, 32) and -1 <= item["image"].min() and item["image"].max() <= 1
    top, left = item["time_ids"][2:4].tolist()
    assert item["time_ids"][[0, 1, 4, 5]].tolist() == [30, 37, 24, 32] and 0 <= top <= 6 and 0 <= left <= 8
    assert torch.equal(data[(0, 3)]["image"], item["image"]) and data[(0, 3)]["caption"] == item["caption"]
    assert any(not torch.equal(data[(0, s)]["image"], item["image"]) for s in range(4, 10))
    assert data[(2, 0)]["image"].shape == (3, 16, 64)
    loader = torch.utils.data.DataLoader(data, batch_sampler=data.batch_sampler(
        dataset_size=len(data), global_batch=2, rank=0, world=1, seed=1, start=0, stop=4))
    for batch in loader:
        assert batch["image"].shape[:2] == (2, 3) and batch["time_ids"].shape == (2, 6) and len(batch["caption"]) == 2


# ---------------------------------------------------------------------------- Shapes

def test_shapes_metadata_round_trip(shapes32, tmp_path):
    out = tmp_path / "prepared" / "metadata.json"
    assert write_shapes_metadata(shapes32, out) == 120
    meta = read_metadata([out], rule=BucketRule(multiple=8, max_pixels=32 * 32, min_pixels=0))
    rows = {r["name"]: r for r in read_jsonl(shapes32 / "annotations.jsonl") if r["split"] == "train"}
    assert meta.buckets == [(32, 32)] and meta.skipped_too_small == 0
    assert [it.path.resolve() for it in meta.items] == [(shapes32 / "images" / f"{n}.png").resolve()
                                                        for n in sorted(rows)]
    for it in meta.items:
        row = rows[it.path.stem]
        assert it.tags[-2:] == (QUALITY, RATING) and it.size == (32, 32)
        assert set(it.tags[:len(row["tags"])]) == set(row["tags"])
        assert {o[k] for o in row["objects"] for k in ("color", "shape", "size")} <= set(it.tags)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert all(k.startswith("../../") and v["image_size"] == [32, 32] for k, v in written.items())  # relative
    with pytest.raises(ValueError, match="no rows of split 'nope'"):
        write_shapes_metadata(shapes32, tmp_path / "x.json", split="nope")
