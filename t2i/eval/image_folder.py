"""Fast image loading for metrics: threaded PNG decode into uint8 NCHW batches.

Pillow releases the GIL while it decodes, so a thread pool scales with cores without
the start-up and pickling cost of worker processes. Pixels are exactly what
torch-fidelity's own loader produces (``PIL.Image.open(path).convert("RGB")``), and
file order follows its convention (sorted by real path), so order-dependent metrics
(KID subsets, IS splits) draw the same samples.
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


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """One image as an HxWx3 uint8 array."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def default_workers() -> int:
    return min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def iter_batches(paths: Sequence[str | os.PathLike], batch_size: int, *, num_workers: int | None = None,
                 prefetch: int = 3, pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """Yield uint8 tensors of shape [B, 3, H, W], decoding ``prefetch`` batches ahead in threads.

    All images of one batch must share a size; a mismatch raises ``ValueError`` naming the file.
    """
    chunks = (paths[i:i + batch_size] for i in range(0, len(paths), batch_size))
    with ThreadPoolExecutor(max_workers=num_workers or default_workers()) as pool:
        pending: deque[tuple[Sequence, list]] = deque()

        def submit_next() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                pending.append((chunk, [pool.submit(load_rgb, p) for p in chunk]))

        for _ in range(max(1, prefetch)):
            submit_next()
        while pending:
            chunk, futures = pending.popleft()
            submit_next()
            arrays = [f.result() for f in futures]
            for p, a in zip(chunk, arrays):
                if a.shape != arrays[0].shape:
                    raise ValueError(f"{p}: size {a.shape[1]}x{a.shape[0]} differs from "
                                     f"{chunk[0]} ({arrays[0].shape[1]}x{arrays[0].shape[0]})")
            batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
            yield batch.pin_memory() if pin_memory else batch
