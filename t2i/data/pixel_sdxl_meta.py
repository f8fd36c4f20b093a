"""Pixel-SDXL's training data (seed 004): the metadata JSON, aspect-ratio buckets, tag dropout
and a one-bucket-per-batch sampler keyed by the step.

Metadata format (one or more files)::

    {"path/to/img.jpg": {"tags": "tag1, tag2, ..., best quality, general", "image_size": [width, height]}, ...}

The last two tags are the quality and the rating tag: dropout never removes them. Paths are
absolute, relative to ``root`` (default: the metadata file's folder), or Windows drive paths
(``C:\\data\\x.jpg``), which are mapped under ``drive_root`` (``/mnt/c/data/x.jpg``, as WSL mounts
them). The entries of all files are concatenated (a path listed twice is an image seen twice
an epoch, as in the original) and sorted by path.

Sizes snap down to multiples of ``BucketRule.multiple`` (32); an image over ``max_pixels`` is
scaled to that area, to the floor/ceil combination whose aspect ratio is closest (floor when
that would upscale); an image under ``min_pixels`` after snapping is skipped and counted.

Batches: the loop builds its sampler as ``sampler_cls(dataset_size=..., global_batch=..., rank=...,
world=..., seed=..., start=..., stop=...)``; a task passes the bucket assignment by setting
``task.batch_sampler = dataset.batch_sampler`` (``BucketBatchSampler.factory(bucket_of)``, a
``functools.partial``). Items are ``(index, step)``: :class:`PixelSDXLDataset` draws the caption and
the flip/crop of an item from ``numpy`` generators keyed by ``(seed, step, index)``, so a resumed
run sees exactly the batches and augmentations of an uninterrupted one.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from t2i.data.captions import list_caption_pairs
from t2i.data.images import load_rgb
from t2i.data.shapes import tags_of
from t2i.train.state import StepBatchSampler
from t2i.utils.atomic import atomic_write_json, read_jsonl

log = logging.getLogger(__name__)

MAX_PIXELS_PER_IMAGE = 1024 * 1024
MIN_PIXELS_PER_IMAGE = 768 * 768
CAPTION_DROP_PROBABILITY = 0.1  # the whole caption -> "" (the unconditional branch of CFG)
TAG_DROP_PROBABILITY = 0.5  # upper end of the per-image tag drop probability
MIN_TAGS_PER_IMAGE = 15  # dropped tags are put back until this many (besides quality and rating) remain
KEPT_LAST_TAGS = 2  # quality, rating
_CAPTION_STREAM, _IMAGE_STREAM = 0, 1


# ---------------------------------------------------------------------------- buckets

@dataclass(frozen=True)
class BucketRule:
    """Snapping and bucketing constants; the defaults are the original's 1024-px ones."""

    multiple: int = 32
    max_pixels: int = MAX_PIXELS_PER_IMAGE
    min_pixels: int = MIN_PIXELS_PER_IMAGE

    def floor(self, x: float) -> int:
        return int(x) // self.multiple * self.multiple

    def ceil(self, x: float) -> int:
        return (int(x) + self.multiple - 1) // self.multiple * self.multiple

    def too_small(self, width: int, height: int) -> bool:
        """Skipped: under ``min_pixels`` (or a side under ``multiple``) after snapping down."""
        w, h = self.floor(width), self.floor(height)
        return w == 0 or h == 0 or w * h < self.min_pixels

    def bucket(self, width: int, height: int) -> tuple[int, int]:
        """The ``(width, height)`` an image of this size is resized and cropped to."""
        snapped = (self.floor(width), self.floor(height))
        if width * height <= self.max_pixels:
            return snapped
        scale = math.sqrt(self.max_pixels / (width * height))
        sw, sh = width * scale, height * scale
        candidates = [(w, h) for w, h in ((self.floor(sw), self.floor(sh)), (self.ceil(sw), self.floor(sh)),
                                          (self.floor(sw), self.ceil(sh)), (self.ceil(sw), self.ceil(sh)))
                      if w > 0 and h > 0]  # a zero side only occurs at extreme aspect ratios
        if not candidates:
            return snapped
        aspect = width / height
        best = min(candidates, key=lambda c: abs(c[0] / c[1] - aspect))  # first of equals, as the original
        return snapped if best[0] > width or best[1] > height else best


# ---------------------------------------------------------------------------- metadata

@dataclass(frozen=True)
class MetadataItem:
    path: Path
    tags: tuple[str, ...]
    size: tuple[int, int]  # (width, height) as the metadata gives it
    bucket: tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class PixelSDXLMetadata:
    """Usable items sorted by path, their buckets (``buckets[bucket_of[i]]``) and the skipped count."""

    items: list[MetadataItem]
    buckets: list[tuple[int, int]]
    bucket_of: list[int]
    skipped_too_small: int

    def summary(self) -> dict:
        counts = np.bincount(self.bucket_of, minlength=len(self.buckets))
        return {"items": len(self.items), "skipped_too_small": self.skipped_too_small,
                "buckets": {f"{w}x{h}": int(n) for (w, h), n in zip(self.buckets, counts)}}


def resolve_path(key: str, root: Path, drive_root: str | os.PathLike = "/mnt") -> Path:
    """A metadata key as a local path: ``X:\\a\\b`` -> ``drive_root/x/a/b``; relative -> under ``root``."""
    if len(key) > 2 and key[1] == ":":
        return Path(drive_root, key[0].lower(), key[2:].replace("\\", "/").lstrip("/"))
    path = Path(key)
    return path if path.is_absolute() else root / path


def _entry(file: Path, key: str, value) -> tuple[tuple[str, ...], tuple[int, int]]:
    """``(tags, (width, height))`` of one entry; ValueError naming the file and key when malformed."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{file}: entry {key!r}: {why}")

    if not isinstance(value, dict):
        raise bad(f'expected {{"tags": "...", "image_size": [w, h]}}, got {type(value).__name__}')
    tags = value.get("tags", "")
    if not isinstance(tags, str):
        raise bad(f'"tags" must be one comma-separated string, got {type(tags).__name__}')
    size = value.get("image_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise bad(f'"image_size" must be [width, height] (positive integers), got {size!r}')
    return tuple(t.strip() for t in tags.split(",") if t.strip()), (size[0], size[1])


def read_metadata(files: str | os.PathLike | Sequence[str | os.PathLike], *, root: str | os.PathLike | None = None,
                  drive_root: str | os.PathLike = "/mnt", rule: BucketRule = BucketRule()) -> PixelSDXLMetadata:
    """Read and merge metadata files (format: module docstring), skip the too-small images, bucket the rest.

    ``root``: the folder relative paths are under (default: each file's own folder). Raises
    ValueError naming the file (and key) of unreadable JSON or a malformed entry, or when no image
    is left.
    """
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not files:
        raise ValueError("no metadata files given")
    items, skipped = [], 0
    for file in map(Path, files):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{file}: not a readable metadata JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{file}: expected an object {{image path: {{tags, image_size}}}}, "
                             f"got {type(data).__name__}")
        base = Path(root) if root is not None else file.parent
        for key, value in data.items():
            tags, (w, h) = _entry(file, key, value)
            if rule.too_small(w, h):
                skipped += 1
                continue
            items.append(MetadataItem(resolve_path(key, base, drive_root), tags, (w, h), rule.bucket(w, h)))
    items.sort(key=lambda it: str(it.path))  # stable: a path listed twice keeps file order
    names = ", ".join(map(str, files))
    if not items:
        raise ValueError(f"{names}: no usable image ({skipped} smaller than {rule.min_pixels} pixels "
                         f"after snapping to multiples of {rule.multiple})")
    buckets = sorted({it.bucket for it in items})
    index = {b: i for i, b in enumerate(buckets)}
    log.info(f"{names}: {len(items)} images in {len(buckets)} buckets; {skipped} skipped as smaller than "
             f"{rule.min_pixels} pixels after snapping to multiples of {rule.multiple}")
    return PixelSDXLMetadata(items, buckets, [index[it.bucket] for it in items], skipped)


# ---------------------------------------------------------------------------- captions

def drop_tags(tags: Sequence[str], rng: np.random.Generator, max_drop: float = TAG_DROP_PROBABILITY,
              min_tags: int = MIN_TAGS_PER_IMAGE) -> list[str]:
    """The original's tag dropout: every tag but the last two is dropped with ``p ~ U(0, max_drop)``
    (one ``p`` per call), dropped tags are put back at random until ``min_tags`` remain (or none is
    left), the last two are added back, and the whole list is shuffled."""
    head, kept = list(tags[:-KEPT_LAST_TAGS]), list(tags[-KEPT_LAST_TAGS:])
    p = rng.uniform(0.0, max_drop)
    drop = rng.random(len(head)) < p
    retained = [t for t, d in zip(head, drop) if not d]
    dropped = [t for t, d in zip(head, drop) if d]
    if len(retained) < min_tags and dropped:
        retained += [dropped[i] for i in rng.permutation(len(dropped))[:min_tags - len(retained)]]
    out = retained + kept
    return [out[i] for i in rng.permutation(len(out))]


def make_caption(tags: Sequence[str], rng: np.random.Generator, caption_drop: float = CAPTION_DROP_PROBABILITY,
                 max_drop: float = TAG_DROP_PROBABILITY, min_tags: int = MIN_TAGS_PER_IMAGE) -> str:
    """``""`` with probability ``caption_drop``, else the :func:`drop_tags` tags joined by ``", "``."""
    if rng.random() < caption_drop:
        return ""
    return ", ".join(drop_tags(tags, rng, max_drop, min_tags))


def item_rng(seed: int, step: int, index: int, stream: int) -> np.random.Generator:
    """The generator of one item's randomness at one step (``stream``: caption or image)."""
    return np.random.default_rng([seed % 2**64, step, index, stream])


# ---------------------------------------------------------------------------- sampler

class BucketBatchSampler(StepBatchSampler):
    """Global batches of ``(index, step)`` drawn from one bucket each; step ``s``'s batch is a pure
    function of ``(seed, s)``.

    Epoch ``e`` (generator ``(seed, e)``): each bucket's items are permuted and cut into global
    batches, the last one padded with random items of the same bucket; the batches of all buckets
    are then permuted. An epoch has ``sum(ceil(n_bucket / global_batch))`` steps; process ``rank``
    takes slice ``rank`` of each global batch. Build it for the loop with :meth:`factory`.
    """

    def __init__(self, bucket_of: Sequence[int], dataset_size: int, global_batch: int, *, rank: int,
                 world: int, seed: int, start: int, stop: int):
        if len(bucket_of) != dataset_size:
            raise ValueError(f"bucket assignment has {len(bucket_of)} items, the dataset {dataset_size}")
        super().__init__(dataset_size, global_batch, rank=rank, world=world, seed=seed, start=start, stop=stop)
        bucket_of = np.asarray(bucket_of)
        self.members = [np.flatnonzero(bucket_of == b) for b in np.unique(bucket_of)]
        self.per_epoch = sum(-(-len(m) // global_batch) for m in self.members)

    @classmethod
    def factory(cls, bucket_of: Sequence[int]) -> functools.partial:
        """What ``task.batch_sampler`` takes: the loop's keyword call with the buckets bound."""
        return functools.partial(cls, list(bucket_of))

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """``[per_epoch, global_batch]`` item indices of epoch ``epoch``, in step order."""
        rng = np.random.default_rng([self.seed % 2**64, epoch])
        batches = []
        for members in self.members:
            order = rng.permutation(members)
            pad = -len(order) % self.global_batch
            order = np.concatenate([order, rng.choice(members, pad)])
            batches.append(order.reshape(-1, self.global_batch))
        batches = np.concatenate(batches)
        return batches[rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, plan = None, None
        for step in range(self.start, self.stop):
            e, i = divmod(step, self.per_epoch)
            if e != epoch:
                epoch, plan = e, self.epoch_batches(e)
            yield [(int(j), step) for j in plan[i, self.offset:self.offset + self.local_batch]]


# ---------------------------------------------------------------------------- dataset

class PixelSDXLDataset(torch.utils.data.Dataset):
    """Items ``(index, step)`` -> ``{"image": [3, h, w] in [-1, 1], "caption": str, "time_ids": [6]}``.

    The image is resized (lanczos) to cover its bucket, flipped with probability 0.5 (``flip``, as the
    original; off where captions name left and right) and randomly cropped to the bucket; ``time_ids`` are
    SDXL's ``(orig_h, orig_w, crop_top, crop_left, bucket_h, bucket_w)`` with the image file's own size as the original size. The caption is
    :func:`make_caption` of the item's tags. A padded batch that holds an item twice gives both
    copies the same draws (they share the key).
    """

    def __init__(self, meta: PixelSDXLMetadata, seed: int, caption_drop: float = CAPTION_DROP_PROBABILITY,
                 max_drop: float = TAG_DROP_PROBABILITY, min_tags: int = MIN_TAGS_PER_IMAGE, flip: bool = True):
        self.meta, self.seed, self.flip = meta, seed, flip
        self.caption_drop, self.max_drop, self.min_tags = caption_drop, max_drop, min_tags

    def __len__(self) -> int:
        return len(self.meta.items)

    @property
    def batch_sampler(self) -> functools.partial:
        return BucketBatchSampler.factory(self.meta.bucket_of)

    def caption(self, index: int, step: int) -> str:
        rng = item_rng(self.seed, step, index, _CAPTION_STREAM)
        return make_caption(self.meta.items[index].tags, rng, self.caption_drop, self.max_drop, self.min_tags)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, step = item
        it = self.meta.items[index]
        bw, bh = it.bucket
        img = load_rgb(it.path)
        ow, oh = img.size
        scale = max(bw / ow, bh / oh)
        size = (max(bw, int(ow * scale + 0.5)), max(bh, int(oh * scale + 0.5)))
        if size != img.size:
            img = img.resize(size, Image.LANCZOS)
        pixels = np.asarray(img)
        rng = item_rng(self.seed, step, index, _IMAGE_STREAM)
        if rng.random() < 0.5 and self.flip:
            pixels = pixels[:, ::-1]
        left, top = int(rng.integers(size[0] - bw + 1)), int(rng.integers(size[1] - bh + 1))
        pixels = pixels[top:top + bh, left:left + bw].copy()
        image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1.0
        time_ids = torch.tensor([oh, ow, top, left, bh, bw], dtype=torch.float32)
        return {"image": image, "caption": self.caption(index, step), "time_ids": time_ids}


# ---------------------------------------------------------------------------- writers

QUALITY, RATING = "best quality", "general"  # the two last tags of a written entry, which tag dropout keeps


def _write_metadata(out_path: Path, entries: Iterator[tuple[Path, list[str]]]) -> int:
    """Write ``{path relative to out_path's folder: {tags, image_size}}``; returns the entry count."""
    meta = {}
    for path, tags in entries:
        with Image.open(path) as im:
            size = list(im.size)
        key = Path(os.path.relpath(path.resolve(), out_path.parent.resolve())).as_posix()
        meta[key] = {"tags": ", ".join(tags), "image_size": size}
    atomic_write_json(out_path, meta)
    return len(meta)


def shapes_tags(objects: list[dict], relation: dict | None, quality: str, rating: str) -> list[str]:
    """Tags of a Shapes image: :func:`t2i.data.shapes.tags_of`, then every colour, shape and size
    alone, then ``quality`` and ``rating`` (the two that dropout keeps)."""
    tags = tags_of(objects, relation)
    for field in ("color", "shape", "size"):
        tags += [o[field] for o in objects]
    return [*dict.fromkeys(tags), quality, rating]


def write_shapes_metadata(root: str | os.PathLike, out_path: str | os.PathLike, *, split: str | None = "train",
                          quality: str = QUALITY, rating: str = RATING) -> int:
    """Write the metadata JSON of a Shapes dataset (caption-dir layout + ``annotations.jsonl``).

    Keeps the rows of ``split`` (all with None); paths are relative to ``out_path``'s folder, so
    :func:`read_metadata` reads the file back with its default ``root``. Returns the entry count.
    """
    root, out_path = Path(root), Path(out_path)
    annotations = root / "annotations.jsonl"
    if not annotations.is_file():
        raise FileNotFoundError(f"{annotations}: missing (a Shapes dataset has one row of objects per image)")
    paths = {name: path for name, path, _ in list_caption_pairs(root)}

    def entries() -> Iterator[tuple[Path, list[str]]]:
        for row in read_jsonl(annotations):
            if split is not None and row["split"] != split:
                continue
            if row["name"] not in paths:
                raise FileNotFoundError(f"{annotations}: {row['name']!r} has no image in {root / 'images'}")
            tags = shapes_tags(row["objects"], row.get("relation"), quality, rating)
            if any("," in t for t in tags):
                raise ValueError(f"{annotations}: {row['name']!r}: a tag contains a comma: {tags}")
            yield paths[row["name"]], tags

    count = _write_metadata(out_path, entries())
    if not count:
        raise ValueError(f"{annotations}: no rows of split {split!r}")
    return count


def write_caption_metadata(root: str | os.PathLike, out_path: str | os.PathLike, split: str = "train") -> int:
    """The metadata JSON of a caption-dir dataset: each image's caption line split at commas into tags,
    then :data:`QUALITY` and :data:`RATING`; paths relative to ``out_path``'s folder. Returns the entries."""
    from t2i.data.captions import CaptionDirDataset

    root, out_path = Path(root), Path(out_path)
    paths = {name: path for name, path, _ in list_caption_pairs(root)}
    data = CaptionDirDataset(root, split=split)

    def entries() -> Iterator[tuple[Path, list[str]]]:
        for i, name in enumerate(data.names):
            caption = data.caption(i)
            if len(caption.splitlines()) > 1:
                raise ValueError(f"{root / 'captions' / (name + '.txt')}: {len(caption.splitlines())} caption "
                                 "lines; pixel_sdxl takes one comma-separated tag line per image")
            yield paths[name], [t.strip() for t in caption.split(",") if t.strip()] + [QUALITY, RATING]

    return _write_metadata(out_path, entries())
