"""The caption-dir layout of seed 001 as a torch dataset: ``images/NAME.{png,jpg,jpeg}`` + ``captions/NAME.txt``.

Used for Shapes-T2I, COCO converted by ``t2i.data.coco`` and any user folder. An optional
``splits/{split}.txt`` (one name a line) selects a split.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i.data.images import load_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def list_caption_pairs(root: str | os.PathLike) -> list[tuple[str, Path, str]]:
    """``(name, image path, caption)`` for every image of ``root/images``, sorted by name.

    Raises ``FileNotFoundError`` naming the folder without images or the missing caption
    file, and ``ValueError`` naming a name that has two image files.
    """
    root = Path(root)
    images_dir, captions_dir = root / "images", root / "captions"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: no such folder (expected the caption-dir layout images/ + captions/)")
    images: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if path.stem in images:
            raise ValueError(f"{images_dir}: two images named {path.stem!r} ({images[path.stem].name}, {path.name})")
        images[path.stem] = path
    if not images:
        raise FileNotFoundError(f"{images_dir}: no {'/'.join(IMAGE_EXTENSIONS)} images")
    pairs = []
    for name, path in images.items():
        caption_path = captions_dir / f"{name}.txt"
        if not caption_path.is_file():
            raise FileNotFoundError(f"{caption_path}: missing caption for {path}")
        pairs.append((name, path, caption_path.read_text(encoding="utf-8").strip()))
    return pairs


class CaptionDirDataset(torch.utils.data.Dataset):
    """Images and captions of a caption-dir folder.

    ``split`` keeps the names listed in ``root/splits/{split}.txt`` when that file exists
    (all images otherwise); ``names`` keeps exactly these names, in this order. Items are
    ``{"image": float tensor [3, H, W] in [-1, 1], "caption": str, "name": str}``; with
    ``image_size`` every image is center-cropped and resized (bicubic) to that side.
    ``image_size`` reports the side of the items: the one asked for, or else that of the
    first image.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None, image_size: int | None = None,
                 names: list[str] | None = None):
        self.root = Path(root)
        pairs = {name: (path, caption) for name, path, caption in list_caption_pairs(self.root)}
        source = f"names argument for {self.root}"
        if names is None:
            split_file = self.root / "splits" / f"{split}.txt"
            if split is not None and split_file.is_file():
                names, source = split_file.read_text(encoding="utf-8").split(), str(split_file)
            else:
                names = list(pairs)
        missing = [n for n in names if n not in pairs]
        if missing:
            raise FileNotFoundError(f"{source}: {len(missing)} name(s) without an image in {self.root / 'images'}, "
                                    f"e.g. {missing[0]!r}")
        if not names:
            raise ValueError(f"{source}: selects no images")
        self.names = list(names)
        self._paths = [pairs[n][0] for n in self.names]
        self._captions = [pairs[n][1] for n in self.names]
        self._resize = image_size
        if image_size is None:
            with Image.open(self._paths[0]) as first:
                image_size = first.width
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.names)

    def caption(self, i: int) -> str:
        return self._captions[i]

    def pixels(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 ``[3, H, W]`` (a quarter of the float item's bytes: what a GPU job ships)."""
        img = load_rgb(self._paths[i], self._resize)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)

    def __getitem__(self, i: int) -> dict:
        return {"image": to_signed_unit(self.pixels(i)), "caption": self._captions[i], "name": self.names[i]}


def to_signed_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1]: ``x / 127.5 - 1`` as a CPU computes it, on any device (a table of
    the 256 values; CUDA divides by a scalar through its rounded reciprocal, 1 ulp off for 111 of them)."""
    return _signed_unit_table(pixels.device)[pixels.long()]


@functools.lru_cache(maxsize=None)
def _signed_unit_table(device: torch.device) -> torch.Tensor:
    return (torch.arange(256, dtype=torch.float32) / 127.5 - 1.0).to(device)
