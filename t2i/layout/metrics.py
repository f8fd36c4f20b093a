"""Layout-to-layout metrics of LayoutLLM-T2I's reward (``tools/metrics.py`` of the original).

A layout is a list of ``{"name": str, "box": [x0, y0, x1, y1]}`` with boxes in normalised xyxy
(``[0, 1]``). Names are compared after lower-casing and collapsing whitespace ("Red  Circle" is
"red circle"); only objects of the same name are ever matched.

- ``max_iou(pred, gt)``: per name, the Hungarian assignment that maximises the summed IoU; the sum
  over names is divided by the number of ground-truth objects (extra predictions cost nothing).
- ``layout_similarity(pred, gt)``: DocSim. A pair scores ``sqrt(min area) * 2^(-dc - 2 ds)`` (``dc``:
  distance of the centres, ``ds``: ``|dw| + |dh|``); the Hungarian total is divided by the number of
  assigned pairs, ``min(len(pred), len(gt))``, and layouts whose sizes differ by 3 or more score 0.
  Identical layouts score the mean of ``sqrt(area)``, not 1.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

MAX_SIZE_DIFF = 3  # DocSim: layouts whose object counts differ by this much or more score 0
SIZE_WEIGHT = 2.0  # DocSim's C_S: the size difference counts twice the centre distance
AREA_POWER = 0.5  # DocSim's C: pairs are weighted by min area ** 0.5


def normalise_name(name: str) -> str:
    """Lower-cased, with runs of whitespace collapsed to one space."""
    return " ".join(str(name).lower().split())


def _box(obj: dict) -> np.ndarray:
    box = np.asarray(obj["box"], dtype=np.float64)
    if box.shape != (4,):
        raise ValueError(f"layout object {obj!r}: box must be [x0, y0, x1, y1]")
    return box


def box_iou(a, b) -> float:
    """IoU of two xyxy boxes; 0 when they do not overlap or the union has no area."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    inter = inter_w * inter_h if inter_w > 0 and inter_h > 0 else 0.0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _by_name(layout: list[dict]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, obj in enumerate(layout):
        groups.setdefault(normalise_name(obj["name"]), []).append(i)
    return groups


def _assign(pred: list[dict], gt: list[dict], pair_score) -> list[tuple[int, int, float]]:
    """Per name, the Hungarian assignment maximising ``pair_score(pred_box, gt_box)``: ``(gt i, pred j, score)``."""
    pred_groups = _by_name(pred)
    out = []
    for name, gt_idx in _by_name(gt).items():
        pred_idx = pred_groups.get(name, [])
        if not pred_idx:
            continue
        scores = np.array([[pair_score(_box(pred[j]), _box(gt[i])) for j in pred_idx] for i in gt_idx])
        rows, cols = linear_sum_assignment(scores, maximize=True)
        out += [(gt_idx[r], pred_idx[c], float(scores[r, c])) for r, c in zip(rows, cols)]
    return out


def match_boxes(pred: list[dict], gt: list[dict]) -> dict[int, tuple[int, float]]:
    """Per-name Hungarian matching on IoU: ``{gt index: (pred index, IoU)}`` for every matched gt object."""
    return {i: (j, iou) for i, j, iou in _assign(pred, gt, box_iou)}


def max_iou(pred: list[dict], gt: list[dict]) -> float:
    """Maximum IoU of ``pred`` against ``gt``: matched IoUs summed, divided by ``len(gt)``.

    As the original's ``__compute_maximum_iou_for_layout`` (its first layout is the ground truth), except
    that boxes here are true xyxy: the original feeds ``[x, y, w, h]`` boxes to an IoU that reads them as
    ``[l, t, r, b]``. An empty ``gt`` scores 0.0 (the original divides by zero).
    """
    if not gt:
        return 0.0
    return sum(iou for _, iou in match_boxes(pred, gt).values()) / len(gt)


def _box_sim(a: np.ndarray, b: np.ndarray) -> float:
    """DocSim's pair score of two xyxy boxes (the original reads centre-size boxes; we convert)."""
    (wa, ha), (wb, hb) = a[2:] - a[:2], b[2:] - b[:2]
    centre_dist = np.hypot(*((a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2))
    size_diff = abs(wa - wb) + abs(ha - hb)
    weight = max(min(wa * ha, wb * hb), 0.0) ** AREA_POWER
    return float(weight * 2.0 ** (-centre_dist - SIZE_WEIGHT * size_diff))


def layout_similarity(pred: list[dict], gt: list[dict]) -> float:
    """DocSim-style LaySim of two layouts (symmetric): the mean score of the ``min(len(pred), len(gt))``
    pairs of the best assignment, pairs of different names scoring 0.

    The original runs one Hungarian over all pairs with cross-name scores 0; the per-name assignments here
    reach the same total. 0.0 when the object counts differ by ``MAX_SIZE_DIFF`` or more, or when either
    layout is empty (both as the original).
    """
    pairs = min(len(pred), len(gt))
    if pairs == 0 or abs(len(pred) - len(gt)) >= MAX_SIZE_DIFF:
        return 0.0
    return sum(score for _, _, score in _assign(pred, gt, _box_sim)) / pairs
