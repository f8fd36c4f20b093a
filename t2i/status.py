"""Per-experiment stage status (done / stale / missing) from ``snakemake --summary``."""
from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

STAGES = ("dataset", "pretrained", "reference_stats", "prepare", "train", "plan", "sample", "evaluate", "report")
_SEVERITY = {"done": 0, "stale": 1, "missing": 2}


def classify(status: str, plan: str) -> str:
    """Map one summary row to done / stale / missing."""
    if status == "missing":
        return "missing"
    if status == "ok" and plan == "no update":
        return "done"
    return "stale"


def owner(output_file: str, experiments: list[str]) -> str:
    """The experiment an output belongs to, or ``shared`` (datasets, pretrained assets, report)."""
    parts = Path(output_file).parts
    if len(parts) > 1 and parts[1] in experiments:
        return parts[1]
    return "shared"


def summarize(summary_tsv: str, experiments: list[str]) -> dict[str, dict[str, str]]:
    """``{owner: {rule: state}}``, the worst state over each rule's outputs."""
    table: dict[str, dict[str, str]] = defaultdict(dict)
    rows = csv.DictReader(io.StringIO(summary_tsv), delimiter="\t")
    for row in rows:
        if not row.get("output_file") or not row.get("rule"):
            continue
        who, rule = owner(row["output_file"], experiments), row["rule"]
        state = classify(row["status"], row["plan"])
        if _SEVERITY[state] >= _SEVERITY.get(table[who].get(rule, "done"), 0):
            table[who][rule] = state
    return dict(table)


def run_summary(snakemake_args: list[str]) -> str:
    cmd = [sys.executable, "-m", "snakemake", "--summary", "--cores", "1", *snakemake_args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"snakemake --summary failed:\n{res.stderr.strip()}")
    return res.stdout[res.stdout.index("output_file"):] if "output_file" in res.stdout else ""


def format_table(table: dict[str, dict[str, str]]) -> str:
    lines = []
    for who in sorted(table, key=lambda w: (w != "shared", w)):
        stages = table[who]
        ordered = [s for s in STAGES if s in stages] + sorted(set(stages) - set(STAGES))
        lines.append(f"{who}: " + "  ".join(f"{s}={stages[s]}" for s in ordered))
    return "\n".join(lines)
