"""MS-COCO caption annotations -> the caption-dir layout (``images/``, ``captions/``, ``annotations.jsonl``).

One call converts one split (``captions_train2014.json`` + ``train2014/``); calling it
again with another split on the same ``out_dir`` adds that split's rows to
``annotations.jsonl`` and writes its own ``splits/{split}.txt`` and prompt set.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from t2i.data.images import load_rgb, save_png
from t2i.utils.atomic import atomic_path, atomic_write_jsonl, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)

CAPTION_POLICIES = ("first", "longest", "random")


class CocoFormatError(ValueError):
    """An annotation file or image folder that does not match what COCO ships."""


def coco_captions_to_caption_dir(annotations_json: str | os.PathLike, images_dir: str | os.PathLike,
                                 out_dir: str | os.PathLike, *, image_size: int | None = None,
                                 max_images: int | None = None, caption_policy: str = "first",
                                 prompts_out: str | os.PathLike | None = None, split: str = "train") -> list[dict]:
    """Convert one COCO captions split; return its ``annotations.jsonl`` rows.

    Images are taken in image-id order (the first ``max_images``). With ``image_size``
    they are center-cropped, resized and saved as PNG, otherwise copied unchanged.
    ``caption_policy`` picks the one caption of ``captions/NAME.txt``: ``first``
    (lowest annotation id), ``longest``, or ``random`` (seeded by the image id); every
    caption is kept in the row's ``captions``. The prompt set (``prompts_out``, default
    ``out_dir/prompts/{split}.jsonl``) has one row per image with the image as reference.
    """
    if caption_policy not in CAPTION_POLICIES:
        raise ValueError(f"caption_policy: {caption_policy!r} is not one of {', '.join(CAPTION_POLICIES)}")
    annotations_json, images_dir, out_dir = Path(annotations_json), Path(images_dir), Path(out_dir)
    images = _read_captions(annotations_json)[:max_images]
    missing = [img["file_name"] for img in images if not (images_dir / img["file_name"]).is_file()]
    if missing:
        raise CocoFormatError(f"{images_dir / missing[0]}: image file missing ({len(missing)} of the "
                              f"{len(images)} images listed in {annotations_json} are missing)")

    def convert(img: dict) -> dict:
        src = images_dir / img["file_name"]
        name = src.stem
        if image_size:
            save_png(load_rgb(src, image_size), out_dir / "images" / f"{name}.png")
        else:
            with atomic_path(out_dir / "images" / src.name) as tmp:
                shutil.copyfile(src, tmp)
        caption = _pick(img["captions"], caption_policy, img["id"])
        atomic_write_text(out_dir / "captions" / f"{name}.txt", caption + "\n")
        return {"name": name, "split": split, "caption": caption, "captions": img["captions"]}

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "captions").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL releases the GIL
        rows = list(tqdm(pool.map(convert, images), total=len(images), desc=f"COCO {split}", mininterval=2.0))

    index = out_dir / "annotations.jsonl"
    others = [r for r in read_jsonl(index) if r["split"] != split] if index.exists() else []
    atomic_write_jsonl(index, others + rows)
    atomic_write_text(out_dir / "splits" / f"{split}.txt", "".join(r["name"] + "\n" for r in rows))
    prompts_out = Path(prompts_out) if prompts_out else out_dir / "prompts" / f"{split}.jsonl"
    atomic_write_jsonl(prompts_out, [{"id": r["name"], "prompt": r["caption"], "reference": r["name"], "spec": None}
                                     for r in rows])
    log.info("COCO %s: %d images with captions written to %s", split, len(rows), out_dir)
    return rows


def _read_captions(path: Path) -> list[dict]:
    """Images of a COCO captions file (sorted by id), each with its ``captions`` (sorted by annotation id)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CocoFormatError(f"{path}: annotation file missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocoFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise CocoFormatError(f"{path}: not a COCO captions file (needs 'images' and 'annotations' lists)")
    try:
        images = {img["id"]: {"id": img["id"], "file_name": img["file_name"], "captions": []}
                  for img in data["images"]}
        for ann in sorted(data["annotations"], key=lambda a: a["id"]):
            if ann["image_id"] not in images:
                raise CocoFormatError(f"{path}: annotation {ann['id']} refers to image_id {ann['image_id']}, "
                                      "which is not in 'images'")
            images[ann["image_id"]]["captions"].append(_clean(ann["caption"]))
    except (KeyError, TypeError) as e:
        raise CocoFormatError(f"{path}: malformed image or annotation entry (missing or bad field {e})") from None
    names = [Path(img["file_name"]).stem for img in images.values()]
    if len(set(names)) != len(names):
        raise CocoFormatError(f"{path}: two images share a file name stem; names must be unique")
    with_captions = [images[i] for i in sorted(images) if images[i]["captions"]]
    if len(with_captions) < len(images):
        log.warning("%s: %d images have no caption and are skipped", path, len(images) - len(with_captions))
    return with_captions


def _clean(caption: str) -> str:
    """One line: COCO captions contain newlines, tabs and stray spaces."""
    return re.sub(r"\s+", " ", caption).strip()


def _pick(captions: list[str], policy: str, image_id: int) -> str:
    if policy == "longest":
        return max(captions, key=len)
    if policy == "random":
        return random.Random(image_id).choice(captions)
    return captions[0]
