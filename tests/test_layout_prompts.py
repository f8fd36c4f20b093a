"""The ``layout_prompts`` dataset kind (COCO-NSS1K files in LayoutLLM-T2I's structure) and its layout metrics."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import yaml
from http_server import LoopbackServer

from t2i.config import ConfigError, validate_config
from t2i.data.build import PARTS, build_dataset
from t2i.data.download import DownloadError
from t2i.eval.layout import layout_metric_family
from t2i.eval.registry import MetricContext
from t2i.utils.atomic import atomic_write_jsonl, read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def entry(img_id, caption, boxes, labels):
    return {"img_id": img_id, "name": f"COCO_val2014_{img_id:012d}.jpg", "width": 640.0, "height": 480.0,
            "bbox": boxes, "label": labels, "captions": caption}


SPATIAL = [  # served over HTTP; 86839 appears twice, as in five_category.json
    entry(86839, " A cat to the left of a dog. ", [[0.25, 0.5, 0.3, 0.4], [0.75, 0.5, 0.3, 0.4]], ["cat", "dog"]),
    entry(8665, "A man walking a dog.", [[0.5, 0.5, 0.2, 0.6]], ["person"]),
    entry(86839, "Two animals on the grass.", [[0.5, 0.5, 0.5, 0.5]], ["cat"]),
]
NUMERAL = [  # a local file; shares image 8665 with SPATIAL; its box pokes out of the image and is clipped
    entry(8665, "One man and one dog.", [[0.95, 0.1, 0.2, 0.4]], ["dog"]),
    entry(42, "Three bananas.", [[0.2, 0.3, 0.2, 0.2], [0.5, 0.3, 0.2, 0.2], [0.8, 0.3, 0.2, 0.2]], ["banana"] * 3),
]


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def dataset_cfg(raw, block):
    """``block`` as a validated ``datasets`` entry (defaults filled by the config loader)."""
    cfg = copy.deepcopy(raw)
    cfg["datasets"]["nss"] = {"kind": "layout_prompts", **block}
    return validate_config(cfg)["datasets"]["nss"]


@pytest.fixture
def srv():
    with LoopbackServer() as server:
        yield server


@pytest.fixture
def sources(srv, tmp_path):
    """(served URL, its sha256, local path) of the two prompt files."""
    body = json.dumps(SPATIAL).encode()
    srv.add("/data/sampled_only_spatial.json", body)
    local = tmp_path / "only_numeral.json"
    local.write_text(json.dumps(NUMERAL))
    return srv.url("/data/sampled_only_spatial.json"), hashlib.sha256(body).hexdigest(), local


def test_builds_prompt_sets_annotations_and_splits(raw, sources, tmp_path):
    url, sha, local = sources
    cfg = dataset_cfg(raw, {"sets": {"spatial": {"url": url, "sha256": sha}, "numeral": {"path": str(local)}}})
    out = build_dataset(cfg, tmp_path / "nss")
    assert all((out / part).exists() for part in PARTS) and not any((out / "images").iterdir())

    spatial = read_jsonl(out / "prompts" / "spatial.jsonl")
    assert [p["id"] for p in spatial] == ["86839", "8665", "86839-1"]
    assert spatial[0]["prompt"] == "A cat to the left of a dog."
    assert spatial[0]["reference"] == "COCO_val2014_000000086839.jpg" and spatial[0]["spec"] is None
    assert [o["name"] for o in spatial[0]["layout"]] == ["cat", "dog"]
    assert spatial[0]["layout"][0]["box"] == pytest.approx([0.1, 0.3, 0.4, 0.7])
    assert spatial[0]["layout"][1]["box"] == pytest.approx([0.6, 0.3, 0.9, 0.7])
    assert spatial[1]["layout"][0]["box"] == pytest.approx([0.4, 0.2, 0.6, 0.8])
    numeral = read_jsonl(out / "prompts" / "numeral.jsonl")
    assert [p["id"] for p in numeral] == ["8665", "42"]
    assert numeral[0]["layout"] == [{"name": "dog", "box": pytest.approx([0.85, 0.0, 1.0, 0.3])}]  # clipped
    assert len(numeral[1]["layout"]) == 3

    annotations = read_jsonl(out / "annotations.jsonl")  # one row per image, its first caption and layout
    names = ["COCO_val2014_000000086839.jpg", "COCO_val2014_000000008665.jpg", "COCO_val2014_000000000042.jpg"]
    assert [a["name"] for a in annotations] == names and {a["split"] for a in annotations} == {"test"}
    assert annotations[0]["caption"] == "A cat to the left of a dog."
    assert annotations[1]["layout"] == spatial[1]["layout"]
    assert (out / "splits" / "test.txt").read_text().splitlines() == names

    capped = build_dataset(dataset_cfg(raw, {"sets": {"numeral": {"path": str(local)}}, "max_prompts": 1}),
                           tmp_path / "capped")
    assert [p["id"] for p in read_jsonl(capped / "prompts" / "numeral.jsonl")] == ["8665"]


def test_wrong_sha256_fails_naming_the_url(raw, sources, tmp_path):
    url, _, _ = sources
    cfg = dataset_cfg(raw, {"sets": {"spatial": {"url": url, "sha256": "0" * 64}}})
    with pytest.raises(DownloadError, match=r"sampled_only_spatial\.json: checksum mismatch"):
        build_dataset(cfg, tmp_path / "nss")
    assert not (tmp_path / "nss" / "prompts").exists()


def test_malformed_entry_fails_naming_the_file_and_entry(raw, tmp_path):
    bad = copy.deepcopy(NUMERAL)
    bad[1]["label"] = ["banana"]
    path = tmp_path / "only_numeral.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"only_numeral\.json: entry 1: .*equal length"):
        build_dataset(dataset_cfg(raw, {"sets": {"numeral": {"path": str(path)}}}), tmp_path / "nss")


def test_config_defaults_and_one_source_per_set(raw):
    cfg = dataset_cfg(raw, {"sets": {"a": {"url": "http://x/a.json"}, "b": {"path": "b.json"}}})
    assert cfg["max_prompts"] is None
    assert cfg["sets"] == {"a": {"url": "http://x/a.json", "sha256": None}, "b": {"path": "b.json"}}
    with pytest.raises(ConfigError, match=r"datasets\.nss\.sets\.a: .*is valid under each of"):
        dataset_cfg(raw, {"sets": {"a": {"url": "http://x/a.json", "path": "a.json"}}})
    for block in ({"sets": {}}, {"sets": {"a b": {"path": "a.json"}}},
                  {"sets": {"a": {"path": "a.json"}}, "max_prompts": 0},
                  {"sets": {"a": {"path": "a.json", "sha256": None}}}):  # sha256 goes with url only
        with pytest.raises(ConfigError, match=r"datasets\.nss"):
            dataset_cfg(raw, block)


def test_plan_scores_use_the_prompts_own_layout(raw, sources, tmp_path):
    _, _, local = sources
    dataset = build_dataset(dataset_cfg(raw, {"sets": {"numeral": {"path": str(local)}}}), tmp_path / "nss")
    truth = {p["id"]: p["layout"] for p in read_jsonl(dataset / "prompts" / "numeral.jsonl")}
    samples = tmp_path / "samples"  # plan == ground truth for 8665, no object of the right name for 42
    atomic_write_jsonl(samples / "index.jsonl", [
        {"id": "8665", "prompt": "", "seed": 0, "file": "a.png", "layout": truth["8665"]},
        {"id": "8665", "prompt": "", "seed": 1, "file": "b.png", "layout": []},  # not its prompt's first plan
        {"id": "42", "prompt": "", "seed": 0, "file": "c.png", "layout": [{"name": "apple", "box": [0, 0, 1, 1]}]}])
    out = layout_metric_family(MetricContext(exp={}, prompt_set="numeral",
                                             inputs={"samples": samples, "dataset": dataset}))
    assert out["layout_iou"] is None and out["layout_hit"] is None and out["layout_inside"] is None
    assert out["n"] == 3 and out["n_plans"] == 2
    assert out["plan_miou"] == pytest.approx(0.5)  # 1 for 8665, 0 for 42
    assert out["plan_layout_sim"] == pytest.approx((0.15 * 0.3) ** 0.5 / 2)
