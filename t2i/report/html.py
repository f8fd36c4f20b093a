"""The cross-experiment report: one self-contained ``index.html`` plus ``metrics.csv``.

The page holds a sortable metrics table (one row per experiment x prompt set), each
experiment's sample grids with their prompts, its training curves, config (YAML) and
provenance. Pictures are embedded as base64 PNGs and also written beside the page
(``grids/``, ``curves/``).
"""
from __future__ import annotations

import base64
import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import jinja2
import yaml
from PIL import Image, ImageDraw, ImageFont

from t2i.report.curves import load_scalars, plot_curves
from t2i.utils.atomic import atomic_write_bytes, atomic_write_text, read_jsonl

TEMPLATES = Path(__file__).parent / "templates"

# Table columns shown first (by their last key), in this order; other metrics follow alphabetically.
COLUMN_ORDER = ("fid", "kid_mean", "isc_mean", "precision", "recall", "f_score", "prompt_acc", "object_acc",
                "count_acc", "relation_acc", "clip_score", "reference_isc_mean", "kid_std", "isc_std", "num_samples")
LABELS = {"fid": "FID", "kid_mean": "KID", "kid_std": "KID std", "isc_mean": "IS", "isc_std": "IS std",
          "reference_isc_mean": "IS of references", "f_score": "F-score", "clip_score": "CLIP score",
          "num_samples": "images", "n": "prompts"}
LOWER_IS_BETTER = {"fid", "kid_mean"}
HIGHER_IS_BETTER = {"isc_mean", "precision", "recall", "f_score", "clip_score"}
SKIPPED_SUBTREES = {"provenance", "per_prompt", "feature_layers"}
HIDDEN_IN_TABLE = {"extract_seconds", "images_per_second", "kid_subset_size", "num_reference", "clip_score_std",
                   "num_images", "wall_time_s"}
TABLE_DEPTH = 2  # the table shows `section.metric` leaves; deeper breakdowns (per caption type) are in the CSV
TILE = 128  # smallest tile edge in a sample grid (small images are scaled up, pixels kept sharp)


def flatten_metrics(metrics: dict | None) -> dict[str, float]:
    """Numeric leaves of a metrics JSON by dotted path (``fidelity.fid``, ``shapes.prompt_acc``).

    A top-level number that repeats a nested one of the same name (evaluate's convenience
    ``fid``) is dropped, so each figure has one column.
    """
    leaves: dict[str, float] = {}

    def walk(prefix: str, node: dict) -> None:
        for key, value in node.items():
            if key in SKIPPED_SUBTREES:
                continue
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                leaves[f"{prefix}{key}"] = value

    walk("", metrics or {})
    return {path: value for path, value in leaves.items()
            if "." in path or not any(p.endswith(f".{path}") and v == value for p, v in leaves.items())}


def _key(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def direction(path: str) -> str | None:
    key = _key(path)
    if key in LOWER_IS_BETTER:
        return "lower"
    if key in HIGHER_IS_BETTER or key.endswith("_acc"):
        return "higher"
    return None


def metric_rows(experiments: list[dict]) -> tuple[list[dict], list[str]]:
    """One row per experiment x prompt set, and every metric path in display order."""
    rows = [{"experiment": e["name"], "system": e["system"], "prompt_set": ps, "metrics": flatten_metrics(m)}
            for e in experiments for ps, m in e["metrics"].items()]
    paths = {p for r in rows for p in r["metrics"]}
    rank = {key: i for i, key in enumerate(COLUMN_ORDER)}
    ordered = sorted(paths, key=lambda p: (p.count("."), rank.get(_key(p), len(rank)), p))
    return rows, ordered


def _label(path: str, clashes: bool) -> str:
    """A column's label: its last key's; where two families share that key, plus the family's
    ``column_suffix`` ("FID" and "FID vs train split"), or the whole path for families without one."""
    from t2i.eval.registry import METRIC_FAMILIES

    label = LABELS.get(_key(path), _key(path).replace("_", " "))
    if not clashes:
        return label
    family = METRIC_FAMILIES.get(path.split(".", 1)[0]) if "." in path else None
    if family is None:
        return path
    return f"{label} {family.column_suffix}" if family.column_suffix else label


def table_columns(paths: list[str]) -> list[dict]:
    """The table's columns: shallow, non-bookkeeping paths, labelled by their last key (see :func:`_label`)."""
    shown = [p for p in paths if p.count(".") < TABLE_DEPTH and _key(p) not in HIDDEN_IN_TABLE]
    keys = [_key(p) for p in shown]
    labels = [_label(p, keys.count(_key(p)) > 1) for p in shown]
    if len(set(labels)) < len(labels):  # two families without suffixes: fall back to paths
        labels = [p if labels.count(lab) > 1 else lab for p, lab in zip(shown, labels)]
    return [{"path": p, "direction": direction(p), "label": lab} for p, lab in zip(shown, labels)]


def write_metrics_csv(path: Path, rows: list[dict], keys: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["experiment", "system", "prompt_set", *keys])
    for r in rows:
        writer.writerow([r["experiment"], r["system"], r["prompt_set"], *(r["metrics"].get(k, "") for k in keys)])
    atomic_write_text(path, buf.getvalue())


def _best_cells(rows: list[dict], paths: list[str]) -> set[tuple[int, str]]:
    """(row index, key) of the best value per prompt set, where a metric has a direction and rivals that differ."""
    best = set()
    for path in paths:
        sense = direction(path)
        by_set: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            if path in r["metrics"] and math.isfinite(r["metrics"][path]):
                by_set.setdefault(r["prompt_set"], []).append(i)
        for idx in by_set.values():
            values = [rows[i]["metrics"][path] for i in idx]
            if sense and len(set(values)) > 1:
                target = min(values) if sense == "lower" else max(values)
                best |= {(i, path) for i, v in zip(idx, values) if v == target}
    return best


def _fmt(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return ""


def _wrap(text: str, font: ImageFont.ImageFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; the last line ends in an ellipsis when text is cut."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        while lines[-1] and font.getlength(lines[-1] + "…") > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "…"
    return lines


def sample_grid(samples_dir: str | Path, max_images: int, *, columns: int = 8,
                caption_lines: int = 3) -> tuple[Image.Image, list[str]]:
    """A grid of the first ``max_images`` samples (index order), each captioned with its prompt."""
    samples_dir = Path(samples_dir)
    entries = read_jsonl(samples_dir / "index.jsonl")[:max_images]
    if not entries:
        raise ValueError(f"{samples_dir}/index.jsonl lists no samples")
    images = [Image.open(samples_dir / e["file"]).convert("RGB") for e in entries]
    edge = max(images[0].size)
    tile = edge * math.ceil(TILE / edge) if edge < TILE else min(edge, 2 * TILE)
    font = ImageFont.load_default(size=12)
    line_h, pad = 15, 8
    cols = min(columns, len(images))
    cell_w, cell_h = tile + pad, tile + pad + caption_lines * line_h + 4
    grid = Image.new("RGB", (cols * cell_w + pad, math.ceil(len(images) / cols) * cell_h + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, (img, entry) in enumerate(zip(images, entries)):
        x, y = pad + (i % cols) * cell_w, pad + (i // cols) * cell_h
        resample = Image.NEAREST if img.width < tile else Image.LANCZOS
        grid.paste(img.resize((tile, tile), resample), (x, y))
        for j, line in enumerate(_wrap(entry["prompt"], font, tile, caption_lines)):
            draw.text((x, y + tile + 3 + j * line_h), line, fill=(40, 40, 40), font=font)
    return grid, [e["prompt"] for e in entries]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


LENGTH_LABELS = {"object_acc": "obj", "count_acc": "cnt", "relation_acc": "rel", "prompt_acc": "prompt"}


def length_tables(experiments: list[dict]) -> list[dict]:
    """Per prompt set, Shapes accuracies by prompt-length bin (``shapes.by_length`` of the metrics) for every
    experiment that has them: the paper's accuracy-by-length comparison, side by side. Bins are the union over
    the experiments (a bin none of an experiment's samples fell in stays empty), ordered by length."""
    from t2i.eval.shapes import ACCURACIES

    found: dict[str, list[tuple[str, dict]]] = {}
    for e in experiments:
        for prompt_set, metrics in e["metrics"].items():
            by_length = ((metrics or {}).get("shapes") or {}).get("by_length")
            if by_length:
                found.setdefault(prompt_set, []).append((e["name"], by_length))
    tables = []
    for prompt_set, rows in found.items():
        if len(rows) < 2:
            continue
        bins = sorted({b for _, by_length in rows for b in by_length}, key=lambda b: int(b.split("-")[0]))
        tables.append({"prompt_set": prompt_set, "bins": bins, "metrics": [LENGTH_LABELS[k] for k in ACCURACIES],
                       "rows": [{"experiment": name, "cells": [
                           {"bin": b, "n": by_length.get(b, {}).get("n", 0),
                            "values": [_fmt(by_length.get(b, {}).get(k)) for k in ACCURACIES]} for b in bins]}
                           for name, by_length in rows]})
    return tables


def _experiment_section(exp: dict, out_dir: Path, grid_images: int) -> dict:
    name = exp["name"]
    grids = []
    for prompt_set, samples_dir in exp["samples_dirs"].items():
        if not (Path(samples_dir) / "index.jsonl").is_file():
            grids.append({"prompt_set": prompt_set, "missing": str(samples_dir)})
            continue
        grid, prompts = sample_grid(samples_dir, grid_images)
        png = _png(grid)
        file = f"grids/{name}__{prompt_set}.png"
        atomic_write_bytes(out_dir / file, png)
        grids.append({"prompt_set": prompt_set, "missing": None, "src": _data_uri(png), "file": file,
                      "prompts": prompts})
    curve = None
    scalars = load_scalars(exp["train_dir"]) if exp.get("train_dir") else {}
    if scalars:
        png = plot_curves(scalars, title=f"{name}: training")
        file = f"curves/{name}.png"
        atomic_write_bytes(out_dir / file, png)
        curve = {"src": _data_uri(png), "file": file, "tags": sorted(scalars)}
    plain_config = json.loads(json.dumps(exp.get("config") or {}, default=str))
    return {
        "name": name, "system": exp["system"], "grids": grids, "curve": curve,
        "config_yaml": yaml.safe_dump(plain_config, sort_keys=False, allow_unicode=True),
        "provenance_json": json.dumps(exp.get("provenance"), indent=2, sort_keys=True, default=str),
        "missing_metrics": [ps for ps, m in exp["metrics"].items() if m is None],
    }


def build_report(experiments: list[dict], out_dir: str | Path, *, grid_images: int = 16,
                 title: str = "t2i report") -> Path:
    """Write ``out_dir/index.html`` (self-contained) and ``out_dir/metrics.csv``; return the page's path.

    Each experiment dict has ``name``, ``system``, ``config``, ``metrics`` (prompt set -> metrics
    JSON or None), ``samples_dirs`` (prompt set -> dir), ``train_dir`` and ``provenance``.
    """
    out_dir = Path(out_dir)
    rows, paths = metric_rows(experiments)
    write_metrics_csv(out_dir / "metrics.csv", rows, paths)
    columns = table_columns(paths)
    best = _best_cells(rows, [c["path"] for c in columns])
    table = [{**r, "cells": [{"value": r["metrics"].get(c["path"]), "text": _fmt(r["metrics"].get(c["path"])),
                              "best": (i, c["path"]) in best} for c in columns]} for i, r in enumerate(rows)]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    page = env.get_template("report.html.j2").render(
        title=title,
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        columns=columns,
        rows=table,
        length_tables=length_tables(experiments),
        experiments=[_experiment_section(e, out_dir, grid_images) for e in experiments],
        css=(TEMPLATES / "report.css").read_text(),
        js=(TEMPLATES / "sortable.js").read_text(),
    )
    atomic_write_text(out_dir / "index.html", page)
    return out_dir / "index.html"
