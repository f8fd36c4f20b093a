"""LongAlign metadata (luping-liu/LongAlign): long captions for images of several sources, as parquet files.

Rows have ``path`` (relative to an image root: ``coco2017/train2017/000000xxxxxx.jpg`` for COCO), a caption
(the first non-null of ``caption_column``, ``captions``, ``caption``, ``text``, ``prompt``; a list gives one
element, picked by the row's seeded generator) and ``source`` (coco, llava, sam, journeydb). The seed's loader
drops any row whose image fails to load, silently, and trains on whatever subset is left; here every missing
or unreadable image is counted and logged, and the build fails when the readable fraction falls under
``min_coverage``, naming the counts and the first missing files.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

CAPTION_KEYS = ("captions", "caption", "text", "prompt")


class CoverageError(ValueError):
    """Too few of the metadata's images could be read."""


@dataclass
class Coverage:
    """What became of the filtered metadata rows."""

    rows: int = 0
    kept: int = 0
    no_caption: int = 0
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        with_caption = self.rows - self.no_caption
        return self.kept / with_caption if with_caption else 0.0

    def summary(self) -> dict:
        return {"rows": self.rows, "kept": self.kept, "no_caption": self.no_caption, "missing": len(self.missing),
                "unreadable": len(self.unreadable), "coverage": self.fraction,
                "first_missing": self.missing[:5], "first_unreadable": self.unreadable[:5]}


def parquet_files(folder: Path) -> list[Path]:
    files = sorted(Path(folder).rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .parquet files (LongAlign metadata)")
    return files


def caption_of(row: dict, caption_column: str | None, rng: random.Random) -> str | None:
    """The first non-null of ``caption_column`` and :data:`CAPTION_KEYS`; one element of a list."""
    for key in ([caption_column] if caption_column else []) + list(CAPTION_KEYS):
        value = row.get(key)
        if isinstance(value, (list, tuple)):
            value = rng.choice(list(value)) if value else None
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def read_rows(files: list[Path], *, caption_column: str | None, source_column: str, source_filter: str,
              seed: int) -> tuple[list[dict], Coverage]:
    """``{"path", "caption", "source"}`` of every row whose source passes ``source_filter`` (comma-separated,
    case-insensitive; ``*``: all), in file order; rows without a caption are counted and left out."""
    import pyarrow.parquet as pq

    wanted = None if source_filter.strip() == "*" else {s.strip().lower() for s in source_filter.split(",")}
    coverage, rows = Coverage(), []
    for file in files:
        table = pq.read_table(file)
        if "path" not in table.column_names:
            raise ValueError(f"{file}: no `path` column (columns: {', '.join(table.column_names)})")
        for row in table.to_pylist():
            source = str(row.get(source_column) or "")
            if wanted is not None and source.lower() not in wanted:
                continue
            coverage.rows += 1
            caption = caption_of(row, caption_column, random.Random(f"{seed}:{row['path']}"))
            if caption is None:
                coverage.no_caption += 1
                continue
            rows.append({"path": row["path"], "caption": caption, "source": source})
    return rows, coverage


def readable(path: Path) -> bool:
    """Whether ``path`` is an image PIL can decode (header and data checked)."""
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except (OSError, ValueError, SyntaxError):
        return False


def check_images(rows: list[dict], image_root: Path, coverage: Coverage, min_coverage: float) -> list[dict]:
    """The rows whose image ``image_root / path`` exists and decodes, each with its ``file``; the rest are
    counted in ``coverage``. Raises :class:`CoverageError` under ``min_coverage``."""
    kept = []
    for row in rows:
        file = Path(image_root) / row["path"]
        if not file.is_file():
            coverage.missing.append(row["path"])
        elif not readable(file):
            coverage.unreadable.append(row["path"])
        else:
            kept.append({**row, "file": file})
    coverage.kept = len(kept)
    s = coverage.summary()
    log.info("LongAlign images: %d of %d rows kept (%d missing, %d unreadable, %d without a caption)",
             s["kept"], s["rows"], s["missing"], s["unreadable"], s["no_caption"])
    if coverage.fraction < min_coverage:
        raise CoverageError(
            f"only {s['kept']} of {s['rows'] - s['no_caption']} LongAlign images under {image_root} could be read "
            f"({s['coverage']:.1%} < min_coverage {min_coverage:.1%}): {s['missing']} missing "
            f"(e.g. {', '.join(s['first_missing']) or '-'}), {s['unreadable']} unreadable "
            f"(e.g. {', '.join(s['first_unreadable']) or '-'})")
    return kept


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (no second copy of a large image set), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
