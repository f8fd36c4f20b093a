"""Layout metrics (t2i.layout.metrics) on hand-computed cases, and the ``layout`` metric family end to end."""
from __future__ import annotations

import json
import math

import pytest

from t2i.data.shapes import render
from t2i.eval.layout import layout_metric_family
from t2i.eval.registry import METRIC_FAMILIES, MetricContext
from t2i.layout.metrics import box_iou, layout_similarity, max_iou
from t2i.utils.atomic import atomic_write_jsonl


def obj(name, box):
    return {"name": name, "box": box}


# ------------------------------------------------------------------------------------------------ box_iou

def test_box_iou_hand_computed():
    assert box_iou([0, 0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]) == pytest.approx(0.0625 / 0.4375)  # 1/7
    assert box_iou([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert box_iou([0, 0, 0.5, 1], [0, 0, 1, 1]) == pytest.approx(0.5)
    assert box_iou([0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5]) == 0.0  # touching edges
    assert box_iou([0, 0, 0.2, 0.2], [0.6, 0.6, 0.9, 0.9]) == 0.0
    assert box_iou([0.3, 0.3, 0.3, 0.3], [0.3, 0.3, 0.3, 0.3]) == 0.0  # no area: defined, not NaN


# ------------------------------------------------------------------------------------------------ max_iou

def test_max_iou_needs_the_hungarian_assignment():
    # full-height boxes, so IoU is the IoU of the x intervals: A=[0,1], B=[0,.4], p=[0,.6], q=[.5,1]
    gt = [obj("red circle", [0, 0, 1, 1]), obj("red circle", [0, 0, 0.4, 1]), obj("blue square", [0, 0, 0.5, 0.5])]
    pred = [obj("red circle", [0, 0, 0.6, 1]), obj("red circle", [0.5, 0, 1, 1]), obj("blue square", [0, 0, 0.5, 0.25])]
    # greedy (A-p 0.6, then B-q 0) would give 0.6 for the red circles; the best assignment is A-q 0.5 + B-p 2/3
    assert max_iou(pred, gt) == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert max_iou(pred[::-1], gt[::-1]) == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)  # order does not matter


def test_max_iou_missing_and_extra_labels():
    gt = [obj("red circle", [0, 0, 0.5, 0.5]), obj("green triangle", [0.5, 0.5, 1, 1])]
    pred = [obj("Red  Circle", [0, 0, 0.5, 0.5]), obj("yellow square", [0.5, 0.5, 1, 1])]
    assert max_iou(pred, gt) == pytest.approx(0.5)  # the missing green triangle counts 0 over len(gt) = 2
    extra = pred + [obj("red circle", [0.6, 0.6, 0.9, 0.9]), obj("blue circle", [0, 0, 1, 1])]
    assert max_iou(extra, gt) == pytest.approx(0.5)  # extra predictions cost nothing
    assert max_iou(gt, pred) == pytest.approx(0.5)


def test_max_iou_empty_layouts():
    gt = [obj("red circle", [0, 0, 0.5, 0.5])]
    assert max_iou([], gt) == 0.0
    assert max_iou(gt, []) == 0.0
    assert max_iou([], []) == 0.0


# ------------------------------------------------------------------------------------------------ layout_similarity

def test_layout_similarity_identical_is_the_mean_sqrt_area():
    layout = [obj("a", [0, 0, 0.5, 0.5]), obj("a", [0.5, 0.5, 1, 0.75]), obj("b", [0.2, 0.6, 0.4, 0.8])]
    best = (math.sqrt(0.25) + math.sqrt(0.125) + math.sqrt(0.04)) / 3
    assert layout_similarity(layout, layout) == pytest.approx(best)
    assert layout_similarity(layout[::-1], layout) == pytest.approx(best)  # the assignment undoes the permutation


def test_layout_similarity_shifted_and_resized_boxes_score_lower():
    gt = [obj("a", [0, 0, 0.5, 0.5])]
    shifted = [obj("a", [0.1, 0, 0.6, 0.5])]
    wider = [obj("a", [0, 0, 0.6, 0.5])]
    assert layout_similarity(gt, gt) == pytest.approx(0.5)
    assert layout_similarity(shifted, gt) == pytest.approx(0.5 * 2 ** -0.1)  # centre moves 0.1
    assert layout_similarity(wider, gt) == pytest.approx(0.5 * 2 ** (-0.05 - 2 * 0.1))  # centre 0.05, size 0.1
    assert layout_similarity(wider, gt) == pytest.approx(layout_similarity(gt, wider))
    assert layout_similarity([obj("b", [0, 0, 0.5, 0.5])], gt) == 0.0  # other names never match


def test_layout_similarity_counts_and_empty_layouts():
    gt = [obj("a", [0, 0, 0.5, 0.5]), obj("b", [0.5, 0.5, 1, 1])]
    assert layout_similarity(gt[:1], gt) == pytest.approx(0.5)  # mean over min(1, 2) assigned pairs
    far = gt + [obj("c", [0, 0, 0.1, 0.1])] * 3
    assert layout_similarity(far, gt[:2]) == 0.0  # counts differ by 3
    assert layout_similarity([], gt) == 0.0
    assert layout_similarity(gt, []) == 0.0
    assert layout_similarity([], []) == 0.0


# ------------------------------------------------------------------------------------------------ the layout family

SIZE = 64
TRUTH = {  # reference image name -> objects (pixel boxes, x1/y1 exclusive)
    "img_a": [{"shape": "circle", "color": "red", "size": "large", "box": [4, 4, 26, 26]},
              {"shape": "square", "color": "cyan", "size": "small", "box": [36, 8, 50, 22]}],
    "img_b": [{"shape": "triangle", "color": "yellow", "size": "large", "box": [20, 36, 44, 60]},
              {"shape": "square", "color": "blue", "size": "small", "box": [4, 40, 16, 52]}],
}
SAMPLES = [("p_a", "img_a", 0), ("p_a", "img_a", 1), ("p_b", "img_b", 0)]  # prompt id, reference, seed


def plan_of(objects, reflect=False):
    """The normalised layout of ``objects``; ``reflect``: through the image centre (every box moves off itself)."""
    out = []
    for o in objects:
        x0, y0, x1, y1 = (v / SIZE for v in o["box"])
        out.append(obj(f"{o['color']} {o['shape']}", [1 - x1, 1 - y1, 1 - x0, 1 - y0] if reflect else [x0, y0, x1, y1]))
    return out


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "dataset"
    atomic_write_jsonl(root / "annotations.jsonl", [{"name": n, "objects": objs} for n, objs in TRUTH.items()])
    (root / "provenance.json").write_text(json.dumps({"config": {"image_size": SIZE}}))
    atomic_write_jsonl(root / "prompts" / "test.jsonl",
                       [{"id": "p_a", "prompt": "a red circle and a cyan square", "reference": "img_a"},
                        {"id": "p_b", "prompt": "a yellow triangle and a blue square", "reference": "img_b"}])
    return root


def make_samples(root, layout_of):
    """Ground-truth renders as samples; ``layout_of(objects)`` is each row's ``layout`` (None: no field)."""
    rows = []
    for pid, ref, seed in SAMPLES:
        file = f"{pid}_{seed}.png"
        root.mkdir(parents=True, exist_ok=True)
        render(TRUTH[ref], SIZE).save(root / file)
        row = {"id": pid, "prompt": "", "seed": seed, "file": file}
        if layout_of is not None:
            row["layout"] = layout_of(TRUTH[ref])
        rows.append(row)
    atomic_write_jsonl(root / "index.jsonl", rows)
    return root


def best_plan_similarity():
    """Mean over prompts of the identical-layout LaySim: the mean sqrt(area) of each image's objects."""
    sims = [sum(math.sqrt((o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1])) / SIZE for o in objs) / len(objs)
            for objs in TRUTH.values()]
    return sum(sims) / len(sims)


def run_family(samples, dataset):
    ctx = MetricContext(exp={}, prompt_set="test", inputs={"samples": samples, "dataset": dataset})
    return layout_metric_family(ctx)


def test_layout_family_is_registered():
    assert METRIC_FAMILIES["layout"].compute == "t2i.eval.layout:layout_metric_family"


def test_true_boxes_score_near_one(tmp_path, dataset):
    out = run_family(make_samples(tmp_path / "true", plan_of), dataset)
    # circles and squares are drawn on whole pixels and detected exactly; the detector's opening trims a
    # triangle's thin tips: about 1 px off each base corner and 2 px off the apex, so IoU >= (s - 2)^2 / s^2
    triangle = (24 - 2) ** 2 / 24 ** 2
    floor = (2 + 2 + (1 + triangle)) / 6  # mean over the 6 planned objects of the 3 samples
    assert floor - 1e-9 <= out["layout_iou"] <= 1.0 + 1e-9, out
    assert out["layout_hit"] == 1.0 and out["layout_inside"] == 1.0
    assert out["layout_objects"] == 2.0 and out["n"] == 3
    # plan == ground truth, scored once per prompt (2 prompts, not 3 samples)
    assert out["n_plans"] == 2 and out["plan_miou"] == pytest.approx(1.0)
    assert out["plan_layout_sim"] == pytest.approx(best_plan_similarity())


def test_shifted_boxes_miss(tmp_path, dataset):
    out = run_family(make_samples(tmp_path / "shifted", lambda objs: plan_of(objs, reflect=True)), dataset)
    assert out["layout_iou"] == 0.0 and out["layout_hit"] == 0.0 and out["layout_inside"] == 0.0
    assert out["plan_miou"] == 0.0 and 0.0 < out["plan_layout_sim"] < 0.7 * best_plan_similarity()


def test_wrong_names_and_empty_plans(tmp_path, dataset):
    renamed = lambda objs: [obj("green circle", o["box"]) for o in plan_of(objs)]  # noqa: E731
    assert run_family(make_samples(tmp_path / "renamed", renamed), dataset)["layout_iou"] == 0.0
    out = run_family(make_samples(tmp_path / "empty", lambda objs: []), dataset)
    assert out["layout_iou"] is None and out["layout_objects"] == 0.0
    assert out["plan_miou"] == 0.0 and out["plan_layout_sim"] == 0.0


def test_without_layouts_the_family_does_not_apply(tmp_path, dataset):
    assert run_family(make_samples(tmp_path / "plain", None), dataset) is None


def test_without_annotations_plan_metrics_are_none(tmp_path, dataset):
    (dataset / "annotations.jsonl").unlink()
    out = run_family(make_samples(tmp_path / "true", plan_of), dataset)
    assert out["layout_hit"] == 1.0 and out["plan_miou"] is None and out["n_plans"] == 0


def test_bad_index_rows_raise_naming_the_file(tmp_path, dataset):
    samples = make_samples(tmp_path / "mixed", plan_of)
    rows = [json.loads(line) for line in (samples / "index.jsonl").read_text().splitlines()]
    del rows[1]["layout"]
    atomic_write_jsonl(samples / "index.jsonl", rows)
    with pytest.raises(ValueError, match="index.jsonl.*have no layout"):
        run_family(samples, dataset)
    rows[1]["layout"] = [{"name": "red circle", "box": [0, 0, 1]}]
    atomic_write_jsonl(samples / "index.jsonl", rows)
    with pytest.raises(ValueError, match="index.jsonl line 2"):
        run_family(samples, dataset)
