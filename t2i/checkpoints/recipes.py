"""``source: trained`` assets: models the workflow trains itself (through the one training loop)
from a recipe and a dataset, where a paper run would download a pretrained one.

``RECIPES[name](cfg, dataset_dir, out_dir)`` writes the asset folder's content. The asset
rule gives it a verified dataset and a temporary folder that replaces the asset when done.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from PIL import Image


def _first_image_size(dataset_dir: Path) -> int:
    first = next((p for p in sorted((dataset_dir / "images").iterdir()) if p.suffix == ".png"), None)
    if first is None:
        raise FileNotFoundError(f"{dataset_dir}/images: no PNG images")
    with Image.open(first) as img:
        return img.width


def shapes_cnn(cfg: dict, dataset_dir: Path, out_dir: Path) -> dict:
    """The Shapes feature extractor of FID/KID/IS (``t2i.eval.shapes_classifier``)."""
    from t2i.eval.shapes_classifier import train_shapes_classifier

    return train_shapes_classifier(dataset_dir, out_dir, seed=cfg["seed"], steps=cfg["steps"],
                                   image_size=_first_image_size(dataset_dir), batch_size=cfg["batch_size"],
                                   lr=cfg["lr"])


def clip(cfg: dict, dataset_dir: Path, out_dir: Path) -> dict:
    """The Shapes CLIP (``t2i.text.shapes_clip``): a ``CLIPModel`` + tokenizer + processor folder."""
    from t2i.text.shapes_clip import train_shapes_clip

    return train_shapes_clip(dataset_dir, out_dir, cfg)


RECIPES: dict[str, Callable[[dict, Path, Path], dict]] = {
    "shapes-cnn": shapes_cnn,
    "clip": clip,
}
