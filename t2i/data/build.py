"""Build ``results/datasets/{name}/`` from its config block, whatever its kind.

The dataset is built in a hidden temporary folder beside the final one; its parts
(images/, captions/, prompts/, splits/, annotations.jsonl) are then moved into place
and ``SHA256SUMS`` is written last, so a killed job never leaves a dataset that
looks finished. Downloads are cached in ``.downloads/`` and resume after a kill.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import zipfile
from pathlib import Path

from t2i.checkpoints.hashing import write_sha256sums
from t2i.utils.atomic import atomic_write_jsonl
from t2i.utils.provenance import write_provenance

log = logging.getLogger(__name__)

PARTS = ("images", "captions", "prompts", "splits", "annotations.jsonl")


def build_dataset(cfg: dict, out_dir: str | Path, inputs: dict[str, Path] | None = None) -> Path:
    """Produce the dataset described by ``cfg`` (a validated ``datasets.<name>`` block) in ``out_dir``;
    ``inputs``: what the workflow's download rules fetched for it (``images``: an unzipped image archive)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        extra = None
        if cfg["kind"] == "longalign":
            extra = {"coverage": _build_longalign(cfg, tmp, out_dir / ".downloads", inputs or {})}
        else:
            BUILDERS[cfg["kind"]](cfg, tmp, out_dir / ".downloads")
        _move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_provenance(out_dir, cfg, seeds=cfg.get("seed"), extra=extra)
    write_sha256sums(out_dir, include=PARTS)
    return out_dir


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    (out_dir / "SHA256SUMS").unlink(missing_ok=True)
    for part in PARTS:
        src, dst = tmp / part, out_dir / part
        if not src.exists():
            raise FileNotFoundError(f"dataset builder did not produce {part!r} in {tmp}")
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()
        os.replace(src, dst)


def _build_shapes(cfg: dict, tmp: Path, downloads: Path) -> None:
    from t2i.data.shapes import generate

    generate(tmp, {k: v for k, v in cfg.items() if k != "kind"})


def _build_coco(cfg: dict, tmp: Path, downloads: Path) -> None:
    from t2i.data.coco import coco_captions_to_caption_dir
    from t2i.data.download import download_url

    ann_zip = download_url(cfg["annotations_url"], downloads / Path(cfg["annotations_url"]).name,
                           sha256=cfg["annotations_sha256"])
    img_zip = download_url(cfg["images_url"], downloads / Path(cfg["images_url"]).name, sha256=cfg["images_sha256"])
    ann_dir = _extract(ann_zip, downloads / "annotations")
    img_dir = _extract(img_zip, downloads / Path(cfg["images_url"]).stem)
    train_images = _single_subdir(img_dir)
    coco_captions_to_caption_dir(ann_dir / cfg["annotations_member"], train_images, tmp,
                                 image_size=cfg["image_size"], max_images=cfg["max_images"], split="train")
    if cfg["test_images_url"]:
        test_zip = download_url(cfg["test_images_url"], downloads / Path(cfg["test_images_url"]).name)
        test_images = _single_subdir(_extract(test_zip, downloads / Path(cfg["test_images_url"]).stem))
        coco_captions_to_caption_dir(ann_dir / cfg["test_annotations_member"], test_images, tmp,
                                     image_size=cfg["image_size"], max_images=cfg["num_test"], split="test",
                                     prompts_out=tmp / "prompts" / "test.jsonl")


def _build_caption_dir(cfg: dict, tmp: Path, downloads: Path) -> None:
    from t2i.data.captions import list_caption_pairs
    from t2i.data.images import load_rgb, save_png

    pairs = list_caption_pairs(Path(cfg["path"]))
    names = [name for name, _, _ in pairs]
    rng = random.Random(cfg["seed"])
    test = set(rng.sample(names, min(cfg["num_test"], len(names) - 1)))
    rows, prompts = [], []
    for name, image_path, caption in pairs:
        save_png(load_rgb(image_path, cfg["image_size"]), tmp / "images" / f"{name}.png")
        (tmp / "captions").mkdir(parents=True, exist_ok=True)
        (tmp / "captions" / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
        split = "test" if name in test else "train"
        rows.append({"name": name, "split": split, "caption": caption})
        if split == "test":
            prompts.append({"id": name, "prompt": caption, "reference": name, "spec": None})
    atomic_write_jsonl(tmp / "annotations.jsonl", rows)
    atomic_write_jsonl(tmp / "prompts" / "test.jsonl", prompts)
    for split in ("train", "test"):
        (tmp / "splits").mkdir(parents=True, exist_ok=True)
        (tmp / "splits" / f"{split}.txt").write_text("".join(r["name"] + "\n" for r in rows if r["split"] == split))


def _build_longalign(cfg: dict, tmp: Path, downloads: Path, inputs: dict[str, Path]) -> dict:
    """LongAlign metadata (a local parquet folder, or a Hub dataset repo fetched by huggingface_hub) over an image
    root (``image_root``, or the unzipped ``images_url`` archive the workflow's download rules fetched once for
    every dataset that names it); coverage checked (:mod:`t2i.data.longalign`). Images are hard-linked (copied
    where links are impossible) as ``images/<name><suffix>``; ``num_test`` seeded rows become the ``long``
    prompt set and the test split, the rest the train split. ``caption`` and ``long_caption`` are both the
    long caption. Returns the coverage summary (kept, missing, unreadable rows), recorded in the provenance."""
    from t2i.data.longalign import check_images, link_or_copy, parquet_files, read_rows

    source = Path(cfg["metadata"])
    if not source.is_dir():  # a Hub dataset repo id
        from t2i.data.hf import snapshot

        source = snapshot(cfg["metadata"], downloads / "metadata", revision=cfg["revision"], repo_type="dataset",
                          allow_patterns=["*.parquet", "**/*.parquet"])
    rows, coverage = read_rows(parquet_files(source), caption_column=cfg["caption_column"], source_column="source",
                               source_filter=cfg["source_filter"], seed=cfg["seed"])
    if cfg["image_root"]:
        root = Path(cfg["image_root"])
    elif "images" in inputs:
        root = Path(inputs["images"]).parent
    else:
        raise ValueError("a longalign dataset needs image_root or images_url (the folder its rows' paths start in)")
    if cfg["max_images"]:  # before the image check: a capped run reads only the images it keeps
        rows = rows[:cfg["max_images"]]
    rows = check_images(rows, root, coverage, cfg["min_coverage"])
    rng = random.Random(cfg["seed"])
    test = set(rng.sample(range(len(rows)), min(cfg["num_test"], max(0, len(rows) - 1))))
    annotations, prompts = [], []
    for i, row in enumerate(rows):
        name, split = f"{i:08d}", "test" if i in test else "train"
        file = name + row["file"].suffix.lower()
        link_or_copy(row["file"], tmp / "images" / file)
        (tmp / "captions").mkdir(parents=True, exist_ok=True)
        (tmp / "captions" / f"{name}.txt").write_text(row["caption"].replace("\n", " ") + "\n", encoding="utf-8")
        annotations.append({"name": name, "file": file, "split": split, "caption": row["caption"],
                            "long_caption": row["caption"], "source": row["source"], "path": row["path"]})
        if split == "test":
            prompts.append({"id": name, "prompt": row["caption"], "reference": name, "spec": None})
    atomic_write_jsonl(tmp / "annotations.jsonl", annotations)
    atomic_write_jsonl(tmp / "prompts" / "long.jsonl", prompts)
    for split in ("train", "test"):
        (tmp / "splits").mkdir(parents=True, exist_ok=True)
        (tmp / "splits" / f"{split}.txt").write_text("".join(r["name"] + "\n" for r in annotations
                                                             if r["split"] == split))
    return coverage.summary()


def _build_layout_prompts(cfg: dict, tmp: Path, downloads: Path) -> None:
    """Prompt sets with ground-truth layouts in LayoutLLM-T2I's file structure (COCO-NSS1K,
    :mod:`t2i.data.layout_prompts`): ``prompts/<set>.jsonl`` per set (the first ``max_prompts`` entries), and
    one ``test`` annotation row per distinct reference image (the first caption and layout seen). There are no
    images: ``images/`` and ``captions/`` stay empty."""
    from t2i.data.download import download_url
    from t2i.data.layout_prompts import read_layout_prompts
    from t2i.utils.secrets import redact_text

    annotations: dict[str, dict] = {}
    for name, source in cfg["sets"].items():
        if "url" in source:
            if source["sha256"] is None:
                log.warning("layout_prompts set %s: no sha256, %s is not verified", name, redact_text(source["url"]))
            key = hashlib.sha256(source["url"].encode()).hexdigest()[:12]  # a changed url is fetched anew
            path = download_url(source["url"], downloads / f"{name}-{key}.json", sha256=source["sha256"])
        else:
            path = Path(source["path"])
        prompts = read_layout_prompts(path)[:cfg["max_prompts"]]
        for p in prompts:
            annotations.setdefault(p["reference"], {"name": p["reference"], "split": "test", "caption": p["prompt"],
                                                    "layout": p["layout"]})
        atomic_write_jsonl(tmp / "prompts" / f"{name}.jsonl", prompts)
    for part in ("images", "captions", "splits"):
        (tmp / part).mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(tmp / "annotations.jsonl", list(annotations.values()))
    (tmp / "splits" / "test.txt").write_text("".join(n + "\n" for n in annotations), encoding="utf-8")


def unzip_into(zip_path: str | Path, dest: str | Path) -> None:
    """Unzip an archive into a temporary folder beside ``dest`` that replaces ``dest`` when complete (a failed
    or killed unzip leaves nothing that looks finished, and its leftovers are removed by the next attempt).
    Members that would land outside ``dest`` are refused."""
    from t2i.utils.atomic import atomic_dir

    with zipfile.ZipFile(zip_path) as zf:
        for member in zf.namelist():
            if Path(member).is_absolute() or ".." in Path(member).parts:
                raise ValueError(f"{zip_path}: member {member!r} would be written outside the folder")
        with atomic_dir(dest) as tmp:
            zf.extractall(tmp)


def _extract(zip_path: Path, dest: Path) -> Path:
    """Unzip once (a ``.complete`` marker makes a killed extraction start over)."""
    marker = dest / ".complete"
    if not marker.exists():
        shutil.rmtree(dest, ignore_errors=True)
        log.info("extracting %s", zip_path)
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(dest)
        marker.touch()
    return dest


def _single_subdir(path: Path) -> Path:
    """COCO zips hold one top folder (train2014/); return it, or ``path`` if there is none."""
    subdirs = [p for p in path.iterdir() if p.is_dir()]
    return subdirs[0] if len(subdirs) == 1 else path


BUILDERS = {"shapes": _build_shapes, "coco": _build_coco, "caption_dir": _build_caption_dir,
            "layout_prompts": _build_layout_prompts}
