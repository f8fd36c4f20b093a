"""COCO-NSS1K prompt sets in LayoutLLM-T2I's file structure (``data/*.json`` of the original repo).

A file is a JSON list of ``{"img_id", "name", "width", "height", "bbox", "label", "captions"}``: ``bbox`` a
list of ``[xc, yc, w, h]`` (centre format, normalised to [0, 1]), ``label`` one name per box, ``captions`` one
string. Each entry becomes a prompt record ``{"id", "prompt", "reference", "spec": None, "layout"}`` with the
layout in normalised xyxy (``t2i.layout.metrics``). ``img_id`` may repeat within a file (five_category.json
has two such pairs): its first entry's id is ``"<img_id>"``, its k-th repeat's ``"<img_id>-<k>"``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from t2i.layout.examples import parse_example, xywh_to_xyxy

KEYS = ("img_id", "name", "width", "height", "bbox", "label", "captions")


def _record(entry, where: str, seen: Counter) -> dict:
    example = parse_example(entry, where)  # a dict with captions, label and bbox of equal length, boxes of 4 numbers
    missing = [k for k in KEYS if k not in entry]
    if missing:
        raise ValueError(f"{where}: no {', '.join(missing)}")
    if not isinstance(entry["captions"], str) or not entry["captions"].strip():
        raise ValueError(f"{where}: captions must be a non-empty string, got {entry['captions']!r}")
    if not isinstance(entry["name"], str) or not entry["name"].strip():
        raise ValueError(f"{where}: name must be a non-empty string (the image's file name), got {entry['name']!r}")
    img_id = entry["img_id"]
    if isinstance(img_id, bool) or not isinstance(img_id, (int, str)):
        raise ValueError(f"{where}: img_id must be an integer or a string, got {img_id!r}")
    repeat = seen[f"{img_id}"]
    seen[f"{img_id}"] += 1
    layout = [{"name": o["name"], "box": [min(1.0, max(0.0, v)) for v in xywh_to_xyxy(o["box"])]}
              for o in example["objects"]]
    return {"id": f"{img_id}-{repeat}" if repeat else f"{img_id}", "prompt": entry["captions"].strip(),
            "reference": entry["name"], "spec": None, "layout": layout}


def read_layout_prompts(path: str | Path) -> list[dict]:
    """The prompt records of one file (module docstring); a malformed file raises one ``ValueError`` naming
    the file, the entry index and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    seen: Counter = Counter()
    return [_record(entry, f"{path}: entry {k}", seen) for k, entry in enumerate(data)]
