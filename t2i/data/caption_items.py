"""Image-caption training items whose caption dropout is keyed by the step.

Items are ``(index, step)`` (:class:`t2i.train.state.StepKeyedBatchSampler`): whether an item's caption is
replaced by the empty one at a step is drawn from ``(seed, step, index)``, so a resumed run sees exactly the
batches of an uninterrupted one, and an image keeps its caption at some steps and loses it at others.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from t2i.data.images import load_rgb
from t2i.train.state import StepKeyedBatchSampler

_DROP_STREAM = 7


def image_tensor(path: str | Path, size: int | None = None) -> torch.Tensor:
    """An image file as ``[3, H, W]`` in [-1, 1] (centre-cropped and resized to ``size`` when given)."""
    pixels = np.asarray(load_rgb(path, size), dtype=np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1


class CaptionItems(torch.utils.data.Dataset):
    """``{"image", "caption", "index"}`` items: ``image(i)`` gives image ``i``, ``captions[i]`` its caption,
    emptied with probability ``caption_drop`` per (step, item)."""

    batch_sampler = StepKeyedBatchSampler

    def __init__(self, image: Callable[[int], torch.Tensor], captions: list[str], caption_drop: float, seed: int):
        self.image, self.captions, self.caption_drop, self.seed = image, list(captions), caption_drop, seed

    def __len__(self) -> int:
        return len(self.captions)

    def caption(self, index: int, step: int) -> str:
        rng = np.random.default_rng([self.seed % 2**64, step, index, _DROP_STREAM])
        return "" if rng.random() < self.caption_drop else self.captions[index]

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, step = item
        return {"image": self.image(index), "caption": self.caption(index, step), "index": index}
