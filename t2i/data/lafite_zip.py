"""LAFITE's prepared dataset: the zip that the original ``dataset_tool.py`` writes and ``training/dataset.py`` reads.

Layout (interchangeable with the original): an uncompressed zip (``ZIP_STORED``) of
``{idx//1000:05d}/img{idx:08d}.png`` (PNG, ``compress_level=0``) and a root ``dataset.json``::

    {"labels": null,
     "clip_img_features": [[fname, [f floats]], ...],
     "clip_txt_features": [[fname, [[f floats] per caption line]], ...],
     "names": [[fname, source name], ...]}        # ours only; the original ignores it

Features are raw (unnormalised) CLIP outputs; ``f`` is the CLIP's projection size.

Writing follows the authors' protocol: centre crop to a square, lanczos resize to
``image_size``; the image feature comes from that resized image, randomly cropped to a side
in ``[int(0.99 S), S)`` (seeded per image here), bicubic-resized to the CLIP's input size,
normalised and encoded. One text feature per non-blank caption line; a line longer than the
tokenizer's context is split on ``.`` and ``,`` and the pieces' features averaged, as the
original does (a piece still too long is truncated). Two deliberate differences: grayscale,
palette and RGBA images are converted to RGB (the original drops grayscale ones), and an image
smaller than the CLIP input is resized up instead of padded with white.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
import zipfile
from pathlib import Path
from typing import Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from t2i.data.captions import list_caption_pairs
from t2i.data.images import center_crop_resize
from t2i.utils.atomic import atomic_path

log = logging.getLogger(__name__)

JSON_NAME = "dataset.json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed entry dates: the same inputs give the same bytes


def archive_name(idx: int) -> str:
    """The zip entry of image ``idx``, as ``dataset_tool.py`` names it."""
    return f"{idx // 1000:05d}/img{idx:08d}.png"


@runtime_checkable
class ClipEncoder(Protocol):
    """What the writer needs from a CLIP: raw image and text features."""

    input_size: int  # side of the square images ``image_features`` takes

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[N, 3, input_size, input_size]`` floats in [0, 1] (not normalised) -> ``[N, f]``."""

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """``[N, f]``; a text longer than the context is truncated."""

    def fits(self, text: str) -> bool:
        """Whether ``text`` fits the text context without truncation."""


class HFClipEncoder:
    """:class:`ClipEncoder` over a transformers ``CLIPModel`` and a processor (``.image_processor``, ``.tokenizer``)."""

    def __init__(self, model, processor, device: str | torch.device | None = None):
        self.device = torch.device(device or "cpu")
        self.model = model.eval().to(self.device)
        self.tokenizer = processor.tokenizer
        self.input_size = model.config.vision_config.image_size
        self.max_length = model.config.text_config.max_position_embeddings
        ip = processor.image_processor
        self.mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)

    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = ((pixels.float() - self.mean) / self.std).to(self.device, self.model.dtype)
        pooled = self.model.vision_model(pixel_values=x).pooler_output
        return self.model.visual_projection(pooled).float().cpu()

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        if self.tokenizer.pad_token is None:  # nothing to pad with: one text at a time
            return torch.cat([self._encode([t], padding=False) for t in texts])
        return self._encode(texts, padding=True)

    def _encode(self, texts: list[str], padding: bool) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=padding, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=tokens["input_ids"],
                                       attention_mask=tokens.get("attention_mask")).pooler_output
        return self.model.text_projection(pooled).float().cpu()

    def fits(self, text: str) -> bool:
        return len(self.tokenizer(text)["input_ids"]) <= self.max_length


def caption_dir_items(root: str | os.PathLike,
                      names: Sequence[str] | None = None) -> Iterable[tuple[str, Path, list[str]]]:
    """``(name, image path, caption lines)`` of a caption-dir folder (all images, or ``names`` in order)."""
    pairs = {name: (path, caption) for name, path, caption in list_caption_pairs(root)}
    for name in pairs if names is None else names:
        if name not in pairs:
            raise FileNotFoundError(f"{root}: no image named {name!r}")
        path, caption = pairs[name]
        yield name, path, caption.splitlines()


def feature_crop_box(name: str, size: int, seed: int) -> tuple[int, int, int]:
    """``(top, left, side)`` of the image-feature crop of image ``name`` (``custom_reshape`` of the original).

    The side is drawn from ``[int(0.99 size), size)`` and the offsets from ``[0, size - side)``,
    with the original's exclusive upper bounds, from a generator seeded by ``(seed, name)``.
    """
    rng = random.Random(f"{seed}/{name}")
    low = int(0.99 * size)
    side = low + rng.randrange(size - low)
    left = rng.randrange(size - side)
    top = rng.randrange(size - side)
    return top, left, side


def feature_pixels(image: np.ndarray, box: tuple[int, int, int], input_size: int) -> torch.Tensor:
    """HWC uint8 image -> its ``[3, input_size, input_size]`` CLIP input in [0, 1] (crop, bicubic resize)."""
    top, left, side = box
    x = torch.tensor(image).permute(2, 0, 1).float().div(255)[None, :, top:top + side, left:left + side]
    return F.interpolate(x, (input_size, input_size), mode="bicubic", align_corners=False)[0]


def split_long(line: str) -> list[str]:
    """The pieces of a line too long for the context: split on ``.`` then ``,`` (blank pieces dropped)."""
    return [p for part in line.split(".") for p in part.split(",") if p.strip()] or [line]


def _load_image(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        # dataset_tool.py --transform=center-crop: centred square crop, lanczos resize
        return np.asarray(center_crop_resize(im.convert("RGB"), size, Image.LANCZOS))


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="png", compress_level=0, optimize=False)
    return buf.getvalue()


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def write_dataset_zip(out_path: str | os.PathLike, items: Iterable[tuple[str, str | os.PathLike, Sequence[str]]], *,
                      image_size: int, clip, device: str | torch.device | None = None, batch_size: int = 64,
                      seed: int = 0) -> dict:
    """Write a LAFITE dataset zip from ``(name, image path, caption lines)`` items; return a summary.

    ``clip``: a :class:`ClipEncoder`, or a ``(CLIPModel, processor)`` pair run on ``device``.
    Unreadable images are logged and skipped. The summary counts ``images``, ``skipped``
    (with ``skipped_names``), ``captions``, ``long_captions`` (lines split as too long for the context),
    ``without_captions``, and gives ``feature_dim``, ``image_size`` and, with captions,
    ``matched_cosine`` (mean cosine of each caption's feature with its image's). The zip appears under
    its final name only when complete.
    """
    if image_size < 4 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 4 (got {image_size})")
    if not isinstance(clip, ClipEncoder):
        clip = HFClipEncoder(*clip, device=device)
    summary = {"images": 0, "skipped": 0, "skipped_names": [], "captions": 0, "long_captions": 0,
               "without_captions": 0, "image_size": image_size, "feature_dim": None}
    names, img_features, txt_features, cosines = [], [], [], []
    with atomic_path(out_path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for chunk in _chunks(items, batch_size):
            loaded = []
            for name, path, lines in chunk:
                try:
                    image = _load_image(Path(path), image_size)
                except Exception as e:  # a corrupt or non-image file must not end the job
                    log.warning("%s: skipped, not a readable image (%s: %s)", path, type(e).__name__, e)
                    summary["skipped"] += 1
                    summary["skipped_names"].append(name)
                    continue
                loaded.append((name, image, [line.strip() for line in lines if line.strip()]))
            if not loaded:
                continue
            pixels = torch.stack([feature_pixels(img, feature_crop_box(name, image_size, seed), clip.input_size)
                                  for name, img, _ in loaded])
            img_features.extend(clip.image_features(pixels).numpy().astype(np.float32))
            pieces = []  # per image, per caption line: the texts whose features average to the line's
            for _, _, lines in loaded:
                fits = [clip.fits(line) for line in lines]
                summary["long_captions"] += fits.count(False)
                pieces.append([[line] if ok else split_long(line) for line, ok in zip(lines, fits)])
            flat = [p for item in pieces for line in item for p in line]
            encoded = [clip.text_features(flat[i:i + batch_size]) for i in range(0, len(flat), batch_size)]
            encoded = torch.cat(encoded) if encoded else None
            at = 0
            for (name, img, lines), item, img_feature in zip(loaded, pieces, img_features[-len(loaded):]):
                feats = []
                for line in item:
                    feats.append(encoded[at:at + len(line)].mean(0).numpy().astype(np.float32))
                    at += len(line)
                    cosines.append(_cosine(img_feature, feats[-1]))
                txt_features.append(feats)
                summary["captions"] += len(feats)
                summary["without_captions"] += not feats
                zf.writestr(_entry(archive_name(len(names))), _png_bytes(img))
                names.append(name)
        if not names:
            raise ValueError(f"{out_path}: no readable images among the {summary['skipped']} given")
        summary["images"] = len(names)
        summary["feature_dim"] = int(img_features[0].shape[0])
        if cosines:  # what LAFITE's image_noise is calibrated to (t2i.gan.lafite.calibrated_image_noise)
            summary["matched_cosine"] = float(np.mean(cosines))
        with zf.open(_entry(JSON_NAME), "w", force_zip64=True) as f:
            _write_json(f, names, img_features, txt_features)
    log.info("%s: %d images, %d captions (%d split), %d without captions, %d skipped", out_path,
             summary["images"], summary["captions"], summary["long_captions"], summary["without_captions"],
             summary["skipped"])
    return summary


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _chunks(items: Iterable, n: int) -> Iterable[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_json(f, names: list[str], img_features: list[np.ndarray], txt_features: list[list[np.ndarray]]) -> None:
    """``dataset.json``, streamed entry by entry (COCO's is gigabytes)."""
    def write(text: str) -> None:
        f.write(text.encode("utf-8"))

    def listing(key: str, rows) -> None:
        write(f', "{key}": [')
        for i, row in enumerate(rows):
            write((", " if i else "") + json.dumps(row))
        write("]")

    write('{"labels": null')
    listing("clip_img_features", ([archive_name(i), v.tolist()] for i, v in enumerate(img_features)))
    listing("clip_txt_features", ([archive_name(i), [v.tolist() for v in t]] for i, t in enumerate(txt_features)))
    listing("names", ([archive_name(i), n] for i, n in enumerate(names)))
    write("}")


class LafiteZipDataset(torch.utils.data.Dataset):
    """A LAFITE dataset zip (ours, or one written by the original ``dataset_tool.py``).

    An item is ``index``, ``(index, flip)`` or ``(index, flip, key)``; it gives
    ``{"image": uint8 [3, S, S] (x-flipped when flip), "img_feature": float32 [f], "index"}``
    and, with a ``key``, ``"txt_feature"``: the caption picked by :meth:`caption_feature`. The
    image feature is that of the unflipped image, as in the original. Language-free training
    asks for no key; ground-truth-text modes pass one, and an image without captions then raises
    (the original returned Gaussian noise instead). ``require_captions`` checks every image up
    front. The zip is opened lazily in each process (DataLoader workers).
    """

    def __init__(self, path: str | os.PathLike, *, require_captions: bool = False):
        self.path = Path(path)
        self._zip, self._zip_pid = None, None
        zf = self._zipfile()
        Image.init()
        self.fnames = sorted(n for n in zf.namelist() if os.path.splitext(n)[1].lower() in Image.EXTENSION)
        if not self.fnames:
            raise ValueError(f"{self.path}: no images")
        if JSON_NAME not in zf.namelist():
            raise ValueError(f"{self.path}: no {JSON_NAME} (not a LAFITE dataset zip)")
        with zf.open(JSON_NAME) as f:
            meta = json.load(f)
        if not meta.get("clip_img_features"):
            raise ValueError(f"{self.path}: {JSON_NAME} has no clip_img_features (written without CLIP)")
        img = dict(meta["clip_img_features"])
        missing = [n for n in self.fnames if n not in img]
        if missing:
            raise ValueError(f"{self.path}: {len(missing)} image(s) without an image feature, e.g. {missing[0]}")
        self.img_features = np.asarray([img[n] for n in self.fnames], dtype=np.float32)
        self.feature_dim = self.img_features.shape[1]
        txt = dict(meta.get("clip_txt_features") or [])
        lists = [txt.get(n) or [] for n in self.fnames]
        self._txt_offsets = np.cumsum([0] + [len(t) for t in lists])
        rows = [row for t in lists for row in t]
        self._txt = np.asarray(rows, dtype=np.float32).reshape(len(rows), self.feature_dim)
        source = dict(meta.get("names") or [])
        self.names = [source.get(n, n) for n in self.fnames]
        self.image_size = self._image(0).shape[1]
        if require_captions:
            empty = [self.names[i] for i in range(len(self)) if not self.num_captions(i)]
            if empty:
                raise ValueError(f"{self.path}: {len(empty)} image(s) have no caption, e.g. {empty[0]!r}; "
                                 "training on ground-truth text needs a caption for every image")

    def __len__(self) -> int:
        return len(self.fnames)

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip, self._zip_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zip=None, _zip_pid=None)

    def _image(self, i: int) -> np.ndarray:
        with self._zipfile().open(self.fnames[i]) as f, Image.open(f) as im:
            return np.asarray(im.convert("RGB")).transpose(2, 0, 1)

    def num_captions(self, i: int) -> int:
        return int(self._txt_offsets[i + 1] - self._txt_offsets[i])

    def caption_features(self, i: int) -> np.ndarray:
        """All caption features of image ``i``: ``[num_captions, f]`` (possibly 0 rows)."""
        return self._txt[self._txt_offsets[i]:self._txt_offsets[i + 1]]

    def caption_feature(self, i: int, key: int) -> np.ndarray:
        """One caption feature of image ``i``, picked by the integer ``key`` (same key, same caption)."""
        n = self.num_captions(i)
        if not n:
            raise ValueError(f"{self.path}: image {self.names[i]!r} ({self.fnames[i]}) has no caption, and "
                             "ground-truth text was asked for")
        return self._txt[self._txt_offsets[i] + np.random.default_rng([key, i]).integers(n)]

    def __getitem__(self, item) -> dict:
        i, flip, key = (item, False, None) if isinstance(item, (int, np.integer)) else (*item, None)[:3]
        image = self._image(i)
        if flip:
            image = image[:, :, ::-1]
        out = {"image": torch.from_numpy(image.copy()), "img_feature": torch.from_numpy(self.img_features[i].copy()),
               "index": int(i)}
        if key is not None:
            out["txt_feature"] = torch.from_numpy(self.caption_feature(i, key).copy())
        return out
