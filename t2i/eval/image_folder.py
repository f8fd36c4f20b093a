"""Fast image loading for metrics: threaded decode into uint8 NCHW batches.

PNGs are decoded by torchvision's libpng op, which runs without the GIL, so a thread pool
scales with cores without the start-up and pickling cost of worker processes (Pillow's
decoder holds the GIL between chunks and stalls at a few threads). Pixels are exactly what
torch-fidelity's own loader produces (``PIL.Image.open(path).convert("RGB")``; other
formats and 16-bit PNGs go through Pillow itself), and file order follows its convention
(sorted by real path), so order-dependent metrics (KID subsets, IS splits) draw the same
samples. (torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they
are kept until a TorchCodec image decoder ships without an FFmpeg install.)
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_png, read_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def list_images(source: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Image files of a directory (non-recursive) or an explicit list, sorted by real path.

    Raises ``FileNotFoundError`` naming the directory or file that is missing or empty.
    """
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"image directory not found: {root}")
        files = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
        if not files:
            raise FileNotFoundError(f"no {'/'.join(IMAGE_EXTENSIONS)} images in {root}")
    else:
        files = [Path(p) for p in source]
        for p in files:
            if not p.is_file():
                raise FileNotFoundError(f"image not found: {p}")
        if not files:
            raise FileNotFoundError("empty image list")
    return sorted(files, key=os.path.realpath)


def decode_rgb(path: str | os.PathLike) -> torch.Tensor:
    """One image as a 3xHxW uint8 tensor, the pixels of ``PIL.Image.open(path).convert("RGB")``."""
    if str(path).lower().endswith(".png"):
        image = decode_png(read_file(str(path)), mode=ImageReadMode.RGB)
        if image.dtype == torch.uint8:
            return image
    return load_pil_rgb(path)


def load_pil_rgb(path: str | os.PathLike) -> torch.Tensor:
    """One image as a 3xHxW uint8 tensor through Pillow, as torch-fidelity loads it."""
    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def default_workers() -> int:
    return min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _size_error(path, shape, first, first_shape) -> ValueError:
    return ValueError(f"{path}: size {shape[2]}x{shape[1]} differs from {first} ({first_shape[2]}x{first_shape[1]})")


def _decode_stack(paths: Sequence[str | os.PathLike]) -> torch.Tensor:
    """Decode ``paths`` into one [n, 3, H, W] tensor; a size unlike the first image's raises ``ValueError``."""
    images = [decode_rgb(p) for p in paths]
    for p, image in zip(paths, images):
        if image.shape != images[0].shape:
            raise _size_error(p, image.shape, paths[0], images[0].shape)
    return torch.stack(images)


def iter_batches(paths: Sequence[str | os.PathLike], batch_size: int, *, num_workers: int | None = None,
                 prefetch: int = 3, pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """Yield uint8 tensors of shape [B, 3, H, W], decoding ``prefetch`` batches ahead in threads.

    Each batch is split into one slice per thread, decoded and stacked there, so the calling
    thread only joins the slices (into pinned memory when ``pin_memory``). All images of one
    batch must share a size; a mismatch raises ``ValueError`` naming the file.
    """
    workers = num_workers or default_workers()
    chunks = (paths[i:i + batch_size] for i in range(0, len(paths), batch_size))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[list] = deque()

        def submit_next() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                step = -(-len(chunk) // workers)
                slices = [chunk[i:i + step] for i in range(0, len(chunk), step)]
                pending.append([(part, pool.submit(_decode_stack, part)) for part in slices])

        for _ in range(max(1, prefetch)):
            submit_next()
        while pending:
            parts = [(part, future.result()) for part, future in pending.popleft()]
            submit_next()
            (first, first_images), tensors = parts[0], [images for _, images in parts]
            for part, images in parts:
                if images.shape[1:] != first_images.shape[1:]:
                    raise _size_error(part[0], images.shape[1:], first[0], first_images.shape[1:])
            shape = (sum(len(t) for t in tensors), *first_images.shape[1:])
            yield torch.cat(tensors, out=torch.empty(shape, dtype=torch.uint8, pin_memory=pin_memory))
