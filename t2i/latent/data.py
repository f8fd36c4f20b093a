"""The training data of the latent recipes: a Shapes dataset's train split as images and annotation rows, or as
pixel-SDXL items (image in [-1, 1], tag caption, SDXL ``time_ids``), the format the pixel-space students train on."""
from __future__ import annotations

from pathlib import Path

from t2i.data.pixel_sdxl_meta import BucketRule, PixelSDXLDataset, read_metadata, write_shapes_metadata
from t2i.utils.atomic import read_jsonl


def shapes_items(dataset_dir: Path, work: Path, *, seed: int, caption_drop: float, flip: bool) -> PixelSDXLDataset:
    """The train split of the Shapes dataset ``dataset_dir`` (metadata written into ``work``), one bucket at
    the images' own size, tag dropout as pixel-SDXL's (at least 4 tags: Shapes images carry 5-12)."""
    if not (dataset_dir / "annotations.jsonl").is_file():
        raise FileNotFoundError(f"{dataset_dir}/annotations.jsonl: the latent recipes need a Shapes dataset")
    work.mkdir(parents=True, exist_ok=True)
    write_shapes_metadata(dataset_dir, work / "metadata.json")
    meta = read_metadata(work / "metadata.json", rule=BucketRule(multiple=1, max_pixels=1 << 40, min_pixels=0))
    if len(meta.buckets) != 1:
        raise ValueError(f"{dataset_dir}: images of {len(meta.buckets)} sizes; the latent recipes take one size")
    return PixelSDXLDataset(meta, seed=seed, caption_drop=caption_drop, min_tags=4, flip=flip)


def shapes_train_split(dataset_dir: Path):
    """A Shapes dataset's train images ``[N, 3, H, W]`` in [-1, 1] and their annotation rows."""
    import torch

    from t2i.data.caption_items import image_tensor

    path = dataset_dir / "annotations.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the recipe trains on a Shapes dataset (annotations.jsonl)")
    rows = [r for r in read_jsonl(path) if r["split"] == "train"]
    if not rows:
        raise ValueError(f"{path}: no train images")
    return torch.stack([image_tensor(dataset_dir / "images" / f"{r['name']}.png") for r in rows]), rows
