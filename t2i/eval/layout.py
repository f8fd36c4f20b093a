"""The ``layout`` metric family: does an image follow the layout it was drawn from (LayoutLLM)?

It applies to samples whose ``index.jsonl`` rows carry ``layout``: the plan, a list of
``{"name": ..., "box": [x0, y0, x1, y1]}`` in normalised xyxy. On a Shapes dataset, per sample, the Shapes
detector (``t2i.eval.shapes.detect``) finds the drawn objects and each planned object (``"<color> <shape>"``)
is matched to a detection of the same name (Hungarian on IoU, ``t2i.layout.metrics.match_boxes``); an
unmatched one has IoU 0. Over all planned objects: ``layout_iou`` (mean IoU), ``layout_hit`` (IoU >=
``HIT_IOU``) and ``layout_inside`` (the matched detection's centre lies in the planned box). The detector
finds nothing meaningful in other images, so on other datasets these three are None. ``layout_objects`` is
the mean plan size per image.

Once per distinct prompt (its first sample's plan), against the prompt's ground truth: ``plan_miou``
(``max_iou``) and ``plan_layout_sim`` (``layout_similarity``); None where no prompt has ground truth. The
ground truth is the prompt record's own ``layout`` (normalised xyxy, e.g. a ``layout_prompts`` dataset's),
else its ``reference`` image's objects in a Shapes dataset's ``annotations.jsonl``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from t2i.data.shapes import image_size_of, is_shapes_dataset
from t2i.eval.shapes import detect
from t2i.layout.examples import shapes_layout
from t2i.layout.metrics import layout_similarity, match_boxes, max_iou
from t2i.utils.atomic import read_jsonl

HIT_IOU = 0.5


def _centre_inside(box, region) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return bool(region[0] <= cx <= region[2] and region[1] <= cy <= region[3])


def score_image(plan: list[dict], image) -> list[dict]:
    """``{"iou", "inside"}`` of each planned object against the detections in ``image`` (a path or PIL image)."""
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as img:
            image = img.convert("RGB")
    rgb = image.convert("RGB")
    found = shapes_layout(detect(rgb), *rgb.size)
    matched = match_boxes(found, plan)
    out = []
    for i, obj in enumerate(plan):
        j, iou = matched.get(i, (None, 0.0))
        out.append({"iou": iou, "inside": j is not None and _centre_inside(found[j]["box"], obj["box"])})
    return out


def _check_layout(layout, where: str) -> None:
    ok = isinstance(layout, list) and all(
        isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("box"), list)
        and len(o["box"]) == 4 for o in layout)
    if not ok:
        raise ValueError(f"{where}: layout must be a list of {{'name': str, 'box': [x0, y0, x1, y1]}}")


def planned_samples(samples_dir: Path) -> list[dict] | None:
    """The ``index.jsonl`` rows, or None when none has a ``layout``; a mix raises ``ValueError``."""
    index = samples_dir / "index.jsonl"
    rows = read_jsonl(index)
    with_layout = [r for r in rows if "layout" in r]
    if not with_layout:
        return None
    if len(with_layout) != len(rows):
        raise ValueError(f"{index}: {len(rows) - len(with_layout)} of {len(rows)} rows have no layout")
    for n, row in enumerate(rows, start=1):
        _check_layout(row["layout"], f"{index} line {n}")
    return rows


def ground_truth_layouts(dataset_dir: Path) -> dict[str, list[dict]]:
    """Image name -> normalised layout from a Shapes dataset's ``annotations.jsonl`` ({} for another
    dataset, or without one)."""
    annotations = dataset_dir / "annotations.jsonl"
    if not annotations.is_file() or not is_shapes_dataset(dataset_dir):
        return {}
    size = image_size_of(dataset_dir)
    return {r["name"]: shapes_layout(r["objects"], size) for r in read_jsonl(annotations) if "objects" in r}


def _mean(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def plan_scores(rows: list[dict], prompts_path: Path, dataset_dir: Path) -> dict:
    """``plan_miou``, ``plan_layout_sim`` and ``n_plans`` over the distinct prompts with ground truth: the
    prompt's own ``layout``, else its ``reference`` image's in a Shapes dataset."""
    prompts = {p["id"]: p for p in read_jsonl(prompts_path)}
    plans: dict[str, list[dict]] = {}
    for row in rows:
        if row["id"] not in prompts:
            raise ValueError(f"{prompts_path}: has no prompt {row['id']!r} (a sample's id)")
        plans.setdefault(row["id"], row["layout"])
    shapes_truth = ground_truth_layouts(dataset_dir)
    pairs = []
    for i, plan in plans.items():
        if prompts[i].get("layout") is not None:
            _check_layout(prompts[i]["layout"], f"{prompts_path}: prompt {i!r}")
            pairs.append((plan, prompts[i]["layout"]))
        elif prompts[i].get("reference") in shapes_truth:
            pairs.append((plan, shapes_truth[prompts[i]["reference"]]))
    return {"plan_miou": _mean([max_iou(plan, gt) for plan, gt in pairs]),
            "plan_layout_sim": _mean([layout_similarity(plan, gt) for plan, gt in pairs]),
            "n_plans": len(pairs)}


def layout_metric_family(ctx) -> dict | None:
    """The ``layout`` metric family (module docstring), or None for samples without plans."""
    rows = planned_samples(ctx.samples_dir)
    if rows is None:
        return None
    dataset = Path(ctx.inputs["dataset"])
    detected = rows if is_shapes_dataset(dataset) else []  # the detector reads Shapes images only
    objects = [o for r in detected for o in score_image(r["layout"], ctx.samples_dir / r["file"])]
    return {"layout_iou": _mean([o["iou"] for o in objects]),
            "layout_hit": _mean([o["iou"] >= HIT_IOU for o in objects]),
            "layout_inside": _mean([o["inside"] for o in objects]),
            "layout_objects": _mean([len(r["layout"]) for r in rows]),
            "n": len(rows),
            **plan_scores(rows, ctx.prompts_path, dataset)}
