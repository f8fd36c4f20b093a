"""Image file helpers shared by the dataset builders and samplers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i.utils.atomic import atomic_path


def center_crop_resize(img: Image.Image, size: int, resample: int = Image.BICUBIC) -> Image.Image:
    """Center-crop to a square, then resize to ``size`` (bicubic unless ``resample`` says otherwise)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img if side == size else img.resize((size, size), resample)


def load_rgb(path: str | Path, size: int | None = None) -> Image.Image:
    """Open an image as RGB, optionally center-cropped and resized to ``size``."""
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    return center_crop_resize(img, size) if size else img


def save_png(img: Image.Image | np.ndarray, path: str | Path, compress_level: int = 6) -> None:
    """Write a PNG atomically (deterministic bytes for the same pixels and ``compress_level``, zlib's 0-9)."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", compress_level=compress_level)


def tensor_to_uint8(x) -> np.ndarray:
    """A CHW or NCHW tensor in [-1, 1] -> HWC / NHWC uint8 array, quantised where the tensor lives (a GPU
    sends a quarter of the float bytes, already in the layout PIL reads)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).contiguous().cpu().numpy()
