"""Gather what the report shows of each experiment from its results folder."""
from __future__ import annotations

import json
from pathlib import Path


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect_experiments(experiments: list[dict], results: Path) -> list[dict]:
    """One record per experiment: config, metrics and samples per prompt set, training folder, provenance."""
    records = []
    for exp in experiments:
        root = results / exp["name"]
        sets = exp["sample"]["prompt_sets"]
        records.append({
            "name": exp["name"],
            "system": exp["system"],
            "config": exp,
            "metrics": {ps: _read_json(root / "metrics" / f"{ps}.json") for ps in sets},
            "samples_dirs": {ps: root / "samples" / ps for ps in sets},
            "train_dir": root / "train",
            "provenance": _read_json(root / "train" / "model" / "provenance.json"),
        })
    return records
