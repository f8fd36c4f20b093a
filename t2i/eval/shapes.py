"""Compositional accuracy on Shapes-T2I: an analytic detector and a scorer against prompt specs.

``detect`` finds the flat shapes of an image without learning anything:

1. palette segmentation: a pixel belongs to an object when its chroma (max - min of RGB)
   reaches half of full saturation (white, grey and faint anti-aliased edges are
   background); its colour is the nearest palette colour after removing the white/black
   part of the mix (``(rgb - min) / (max - min)`` against the palette), and a pixel far
   from every palette colour is dropped. Blurred or darkened pixels keep their colour;
2. connected components per colour, after filling holes and an opening that strips the
   one-pixel fringes noise leaves on edges; components under a fraction of the image are specks;
3. shape from the fill ratio ``area / bbox area`` (square ~1, circle ~0.785, triangle ~0.5),
   made robust to blur by two more cues: a triangle's centroid sits below its bbox centre,
   and a square reaches its bbox corners (its extent along the diagonals equals the
   bbox's, a disc's is ~0.71 of it). Size from the bbox side relative to the image.

``score`` compares detections with a prompt's ``spec`` (see ``t2i.data.shapes``): per prompt
``object_acc`` (fraction of the named colour-shape groups present), ``count_acc`` (fraction
with exactly the asked count), ``relation_acc`` (bbox centres in the asked order along the
relation's axis; None without a relation) and ``prompt_acc`` (1 when every count and the
relation are right and no other object shares a named colour or shape).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from t2i.data.shapes import PALETTE, SIZE_FRACTION
from t2i.utils.atomic import read_jsonl

MIN_CHROMA = 128  # of 255 (half coverage): below it a pixel is background (white, grey or a faint edge)
MAX_COLOR_DIST = 0.4  # in the normalised colour cube; halfway between adjacent hues is 0.5
MIN_AREA_FRACTION = 0.005  # components smaller than this fraction of the image are specks
TRIANGLE_MAX_FILL = 0.6  # area / bbox area: triangle ~0.5, disc ~0.785, square ~1
TRIANGLE_MIN_LEAN = 0.045  # centroid offset below the bbox centre, in bbox heights: upright triangle ~1/6
SQUARE_MIN_DIAGONAL = 0.78  # extent along the diagonals / the bbox's: square 1, disc ~0.71
LARGE_MIN_SIDE = sum(SIZE_FRACTION.values()) / 2  # bbox side / image side
TYPES = ("single", "count", "relation", "multi")
ACCURACIES = ("object_acc", "count_acc", "relation_acc", "prompt_acc")

_COLORS = list(PALETTE)
_PALETTE_UNIT = np.array([PALETTE[c] for c in _COLORS], dtype=np.float32) / 255.0
_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)
_CROSS = ndimage.generate_binary_structure(2, 1)


def _as_rgb_array(image) -> np.ndarray:
    """HWC uint8 RGB from a PIL image, an HWC uint8 array or a path."""
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as img:
            return np.asarray(img.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def _segment(rgb: np.ndarray) -> np.ndarray:
    """Palette index per pixel, -1 for background and off-palette pixels."""
    rgb = rgb.astype(np.float32)
    lo, hi = rgb.min(axis=2), rgb.max(axis=2)
    chroma = hi - lo
    unit = (rgb - lo[..., None]) / np.maximum(chroma, 1)[..., None]
    dist = np.linalg.norm(unit[..., None, :] - _PALETTE_UNIT, axis=-1)
    labels = dist.argmin(axis=-1)
    labels[(chroma < MIN_CHROMA) | (dist.min(axis=-1) > MAX_COLOR_DIST)] = -1
    return labels


def _shape_of(ys: np.ndarray, xs: np.ndarray) -> str:
    """Classify one component from its pixel coordinates (relative to its bbox)."""
    h, w = ys.max() + 1, xs.max() + 1
    fill = len(ys) / (h * w)
    lean = (ys.mean() + 0.5) / h - 0.5  # > 0: the mass sits low, like an upright triangle's
    diagonal = (np.ptp(xs + ys) + np.ptp(xs - ys) + 2) / (2 * (w + h - 1))  # 1 for a square, 1/sqrt(2) for a disc
    if fill < TRIANGLE_MAX_FILL or abs(lean) > TRIANGLE_MIN_LEAN:
        return "triangle"
    return "square" if diagonal >= SQUARE_MIN_DIAGONAL else "circle"


def detect(image) -> list[dict]:
    """The shapes in ``image``: ``{color, shape, size, box: [x0, y0, x1, y1], area}`` each (x1, y1 exclusive)."""
    rgb = _as_rgb_array(image)
    h, w = rgb.shape[:2]
    labels = _segment(rgb)
    min_area = MIN_AREA_FRACTION * h * w
    found = []
    for k, color in enumerate(_COLORS):
        mask = ndimage.binary_opening(ndimage.binary_fill_holes(labels == k), structure=_CROSS)
        components, _ = ndimage.label(mask, structure=_EIGHT_NEIGHBOURS)
        for index, sl in enumerate(ndimage.find_objects(components), start=1):
            ys, xs = np.nonzero(components[sl] == index)
            if len(ys) < min_area:
                continue
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            side = max(x1 - x0, y1 - y0) / min(h, w)
            found.append({"color": color, "shape": _shape_of(ys, xs),
                          "size": "large" if side >= LARGE_MIN_SIDE else "small",
                          "box": [x0, y0, x1, y1], "area": len(ys)})
    return found


def _relation_holds(a: dict, b: dict, relation: str) -> bool:
    """Whether detection ``a`` is <relation> detection ``b``, by their bbox centres."""
    ax, ay = a["box"][0] + a["box"][2], a["box"][1] + a["box"][3]  # twice the centre
    bx, by = b["box"][0] + b["box"][2], b["box"][1] + b["box"][3]
    return {"left_of": ax < bx, "right_of": ax > bx, "above": ay < by, "below": ay > by}[relation]


def _largest(detections: list[dict]) -> dict:
    return max(detections, key=lambda d: d["area"])


def score_one(detections: list[dict], spec: dict) -> dict:
    """Accuracies of one image's detections against one spec."""
    groups = [[d for d in detections if (d["color"], d["shape"]) == (o["color"], o["shape"])] for o in spec["objects"]]
    present = [bool(g) for g in groups]
    counted = [len(g) == o["count"] for g, o in zip(groups, spec["objects"])]
    relation_ok = None
    if spec.get("relation"):
        rel = spec["relation"]
        a, b = groups[rel["a"]], groups[rel["b"]]
        relation_ok = bool(a and b and _relation_holds(_largest(a), _largest(b), rel["type"]))
    named_colors = {o["color"] for o in spec["objects"]}
    named_shapes = {o["shape"] for o in spec["objects"]}
    named_pairs = {(o["color"], o["shape"]) for o in spec["objects"]}
    extra = [d for d in detections if (d["color"], d["shape"]) not in named_pairs
             and (d["color"] in named_colors or d["shape"] in named_shapes)]
    return {
        "type": spec["type"],
        "object_acc": float(np.mean(present)),
        "count_acc": float(np.mean(counted)),
        "relation_acc": None if relation_ok is None else float(relation_ok),
        "prompt_acc": float(all(counted) and relation_ok is not False and not extra),
        "detected": [f"{d['color']} {d['shape']}" for d in detections],
    }


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def length_bins(word_counts: list[int]) -> list[tuple[int, int]]:
    """Up to three ``(lowest, highest)`` word-count bins holding about a third of the prompts each (the paper's
    accuracy-by-prompt-length view, at Shapes' scale): cut at the tertiles of ``word_counts``."""
    counts = np.asarray(sorted(word_counts))
    edges = sorted({int(np.quantile(counts, q, method="lower")) for q in (1 / 3, 2 / 3)} - {int(counts[-1])})
    bounds = [int(counts[0]) - 1, *edges, int(counts[-1])]
    return [(low + 1, high) for low, high in zip(bounds, bounds[1:]) if high > low]


def aggregate(per_prompt: list[dict], bins: list[tuple[int, int]] | None = None) -> dict:
    """Means over prompts (``relation_acc`` over prompts with a relation), per prompt type and, with ``bins``
    (entries need ``words``), per prompt-length bin (``by_length``, keyed ``"<low>-<high> words"``)."""
    out = {key: _mean([p[key] for p in per_prompt]) for key in ACCURACIES}
    out["n"] = len(per_prompt)
    if bins:
        out["by_length"] = {}
        for low, high in bins:
            rows = [p for p in per_prompt if low <= p["words"] <= high]
            if rows:
                out["by_length"][f"{low}-{high} words"] = {
                    **{key: _mean([p[key] for p in rows]) for key in ACCURACIES}, "n": len(rows)}
    out["by_type"] = {}
    for kind in TYPES:
        rows = [p for p in per_prompt if p["type"] == kind]
        if rows:
            out["by_type"][kind] = {"prompt_acc": _mean([p["prompt_acc"] for p in rows]),
                                    "object_acc": _mean([p["object_acc"] for p in rows]), "n": len(rows)}
    return out


def score(images, specs: list[dict]) -> dict:
    """Score images (PIL, HWC uint8 arrays or paths) against their specs, pairwise in order."""
    images, specs = list(images), list(specs)
    if len(images) != len(specs):
        raise ValueError(f"score: {len(images)} images but {len(specs)} specs")
    per_prompt = [score_one(detect(img), spec) for img, spec in zip(images, specs)]
    return {"per_prompt": per_prompt, "aggregate": aggregate(per_prompt)}


def score_folder(samples_dir: str | Path, prompts_jsonl: str | Path) -> dict:
    """Score a samples folder (``index.jsonl`` rows: id, prompt, seed, file) against a prompt set's specs.

    Samples of prompts without a spec are skipped; a sample whose id is not in the prompt
    set raises ``ValueError`` naming both files.
    """
    samples_dir = Path(samples_dir)
    prompts = read_jsonl(prompts_jsonl)
    specs = {p["id"]: p.get("spec") for p in prompts}
    words = {p["id"]: len(p["prompt"].split()) for p in prompts}
    rows = []
    for row in read_jsonl(samples_dir / "index.jsonl"):
        if row["id"] not in specs:
            raise ValueError(f"{samples_dir / 'index.jsonl'}: id {row['id']!r} is not in {prompts_jsonl}")
        if specs[row["id"]] is not None:
            rows.append(row)
    if not rows:
        raise ValueError(f"{samples_dir / 'index.jsonl'}: no samples of prompts with a spec in {prompts_jsonl}")
    result = score([samples_dir / r["file"] for r in rows], [specs[r["id"]] for r in rows])
    for row, entry in zip(rows, result["per_prompt"]):
        entry.update(id=row["id"], file=row["file"], seed=row.get("seed"), words=words[row["id"]])
    bins = length_bins([words[p["id"]] for p in prompts if p.get("spec")])  # the prompt set's, for every experiment
    result["aggregate"] = aggregate(result["per_prompt"], bins)
    return result


def score_metric_family(ctx) -> dict | None:
    """The ``shapes`` metric family: aggregate accuracies, or None for prompts without specs."""
    if not any(p.get("spec") for p in read_jsonl(ctx.prompts_path)):
        return None
    return score_folder(ctx.samples_dir, ctx.prompts_path)["aggregate"]
