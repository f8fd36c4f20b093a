"""``source: trained`` assets: models the workflow trains itself (through the one training loop)
from a recipe and a dataset, where a paper run would download a pretrained one.

``RECIPES[name](cfg, dataset_dir, out_dir, assets)`` writes the asset folder's content. The asset
rule gives it a verified dataset, the verified folders of the assets its block names
(``t2i.config.RECIPE_ASSET_KEYS``: key -> folder) and a temporary folder that replaces the asset when done.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from PIL import Image

from t2i.checkpoints.hashing import write_sha256sums
from t2i.utils.atomic import atomic_write_json
from t2i.utils.provenance import write_provenance


def finish_recipe(work: Path, out_dir: Path, metrics: dict, cfg: dict, start: float, dataset_dir: Path,
                  save: Callable[[Path], None] | None = None) -> None:
    """A recipe's last steps: ``save(out_dir)`` (the trained model's ``save_pretrained``), ``metrics.json``,
    drop the loop's folder ``work``, then ``provenance.json`` and ``SHA256SUMS`` over what is left."""
    if save is not None:
        save(out_dir)
    atomic_write_json(out_dir / "metrics.json", metrics)
    shutil.rmtree(work)
    write_provenance(out_dir, cfg, seeds={"train": cfg["seed"]}, wall_time_s=time.time() - start,
                     extra={"dataset_dir": str(dataset_dir)})
    write_sha256sums(out_dir)


def _first_image_size(dataset_dir: Path) -> int:
    first = next((p for p in sorted((dataset_dir / "images").iterdir()) if p.suffix == ".png"), None)
    if first is None:
        raise FileNotFoundError(f"{dataset_dir}/images: no PNG images")
    with Image.open(first) as img:
        return img.width


def shapes_cnn(cfg: dict, dataset_dir: Path, out_dir: Path, assets: dict[str, Path]) -> dict:
    """The Shapes feature extractor of FID/KID/IS (``t2i.eval.shapes_classifier``)."""
    from t2i.eval.shapes_classifier import train_shapes_classifier

    return train_shapes_classifier(dataset_dir, out_dir, seed=cfg["seed"], steps=cfg["steps"],
                                   image_size=_first_image_size(dataset_dir), batch_size=cfg["batch_size"],
                                   lr=cfg["lr"])


def clip(cfg: dict, dataset_dir: Path, out_dir: Path, assets: dict[str, Path]) -> dict:
    """The Shapes CLIP (``t2i.text.shapes_clip``): a ``CLIPModel`` + tokenizer + processor folder."""
    from t2i.text.shapes_clip import train_shapes_clip

    return train_shapes_clip(dataset_dir, out_dir, cfg)


def vae(cfg: dict, dataset_dir: Path, out_dir: Path, assets: dict[str, Path]) -> dict:
    """The Shapes VAE (``t2i.latent.vae``): a diffusers ``AutoencoderKL`` folder."""
    from t2i.latent.vae import train_shapes_vae

    return train_shapes_vae(dataset_dir, out_dir, cfg)


def latent_sdxl(cfg: dict, dataset_dir: Path, out_dir: Path, assets: dict[str, Path]) -> dict:
    """The Shapes latent SDXL (``t2i.latent.sdxl``): a ``StableDiffusionXLPipeline`` folder."""
    from t2i.latent.sdxl import train_latent_sdxl

    return train_latent_sdxl(dataset_dir, out_dir, cfg, assets)


def sd3(cfg: dict, dataset_dir: Path, out_dir: Path, assets: dict[str, Path]) -> dict:
    """The Shapes SD3 base (``t2i.latent.sd3``): an SD3 pipeline folder in pixel space."""
    from t2i.latent.sd3 import train_shapes_sd3

    return train_shapes_sd3(dataset_dir, out_dir, cfg, assets)


def gligen(cfg: dict, dataset_dir: Path, out_dir: Path, assets: dict[str, Path]) -> dict:
    """The Shapes drawer of layoutllm (``t2i.latent.gligen``): a GLIGEN pipeline folder with the relation module."""
    from t2i.latent.gligen import train_shapes_gligen

    return train_shapes_gligen(dataset_dir, out_dir, cfg, assets)


RECIPES: dict[str, Callable[[dict, Path, Path, dict[str, Path]], dict]] = {
    "shapes-cnn": shapes_cnn,
    "clip": clip,
    "vae": vae,
    "latent-sdxl": latent_sdxl,
    "sd3": sd3,
    "gligen": gligen,
}
