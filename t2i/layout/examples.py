"""In-context examples: LayoutLLM's candidate file, read and written in the original's structure.

``train2014_candidate_32.json`` is ``{"id": [...], "data": [{"img_id", "name", "width", "height", "bbox",
"label", "captions"}, ...]}`` with ``bbox`` a list of ``[xc, yc, w, h]`` (centre format, normalised to [0, 1]),
``label`` the object names and ``captions`` one string. Examples here are ``{"id", "caption", "objects":
[{"name", "box": [x, y, w, h]}]}`` with top-left boxes (the LLM's format, ``t2i.layout.prompt``); a Shapes
dataset's train split gives them too, with ``spec`` (what the detector checks) and the ground-truth layout.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class CandidateFileError(ValueError):
    """A candidate file that is not in the original's structure; the message names the file and the entry."""


def xywh_to_xyxy(box) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def xyxy_to_xywh(box) -> list[float]:
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0]


def parse_example(entry, where: str) -> dict:
    """An entry of the original's structure (``captions``, ``label``, ``bbox`` centre-format) as ``{"caption",
    "objects"}`` with top-left ``[x, y, w, h]`` boxes; a malformed entry raises ``CandidateFileError`` at ``where``."""
    if not isinstance(entry, dict):
        raise CandidateFileError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [k for k in ("captions", "label", "bbox") if k not in entry]
    if missing:
        raise CandidateFileError(f"{where}: no {', '.join(missing)}")
    captions = entry["captions"]
    if isinstance(captions, list) and not captions:
        raise CandidateFileError(f"{where}: empty captions")
    caption = captions[0] if isinstance(captions, list) else captions
    labels, boxes = entry["label"], entry["bbox"]
    if not isinstance(caption, str) or not isinstance(labels, list) or not isinstance(boxes, list) \
            or len(labels) != len(boxes):
        raise CandidateFileError(f"{where}: captions must be a string, label and bbox lists of equal length")
    objects = []
    for name, box in zip(labels, boxes):
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise CandidateFileError(f"{where}: bbox {box!r} is not [xc, yc, w, h]")
        xc, yc, w, h = box
        objects.append({"name": str(name), "box": [xc - w / 2, yc - h / 2, w, h]})
    return {"caption": caption, "objects": objects, **({"spec": entry["spec"]} if "spec" in entry else {})}


def read_candidates(path: str | Path) -> list[dict]:
    """The examples of a candidate file (module docstring); ``id`` from its ``id`` list."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CandidateFileError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list) or not data["data"]:
        raise CandidateFileError(f"{path}: expected {{'id': [...], 'data': [...]}} with at least one example")
    ids = data.get("id") or list(range(len(data["data"])))
    if len(ids) != len(data["data"]):
        raise CandidateFileError(f"{path}: {len(ids)} ids for {len(data['data'])} examples")
    return [{"id": i, **parse_example(entry, f"{path}: data[{k}]")} for k, (i, entry) in enumerate(zip(ids, data["data"]))]


def write_candidates(path: str | Path, examples: list[dict], image_size: int) -> None:
    """Examples as a candidate file in the original's structure (centre-format boxes)."""
    from t2i.utils.atomic import atomic_write_json

    data = [{"img_id": e["id"], "name": e["id"], "width": image_size, "height": image_size,
             "bbox": [[x + w / 2, y + h / 2, w, h] for x, y, w, h in (o["box"] for o in e["objects"])],
             "label": [o["name"] for o in e["objects"]], "captions": e["caption"],
             **({"spec": e["spec"]} if "spec" in e else {})} for e in examples]
    atomic_write_json(path, {"id": [e["id"] for e in examples], "data": data})


def shapes_layout(objects: list[dict], width: int, height: int | None = None) -> list[dict]:
    """Shapes objects or detections (pixel ``box``, x1/y1 exclusive) as a layout: ``{"name": "<colour> <shape>",
    "box": normalised xyxy}`` (``height`` defaults to ``width``: Shapes images are square)."""
    height = height or width
    return [{"name": f"{o['color']} {o['shape']}",
             "box": [o["box"][0] / width, o["box"][1] / height, o["box"][2] / width, o["box"][3] / height]}
            for o in objects]


def shapes_examples(rows: list[dict], image_size: int) -> list[dict]:
    """Examples from Shapes annotation rows: short caption, ``"<colour> <shape>"`` objects, the detector's spec."""
    from t2i.data.shapes import spec_of

    return [{"id": r["name"], "caption": r["caption"], "spec": spec_of(r["objects"], r["relation"]),
             "objects": [{"name": o["name"], "box": xyxy_to_xywh(o["box"])}
                         for o in shapes_layout(r["objects"], image_size)]} for r in rows]


def split_candidates(rows: list[dict], cand_number: int, train_number: int, seed: int) -> tuple[list, list]:
    """``cand_number`` candidates and ``train_number`` policy-training queries, disjoint, drawn from ``rows``."""
    if cand_number + train_number > len(rows):
        raise ValueError(f"candidates.cand_number {cand_number} + train_number {train_number} exceed the "
                         f"{len(rows)} training images")
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order[:cand_number]], [rows[i] for i in order[cand_number:cand_number + train_number]]
