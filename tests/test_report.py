"""The HTML report: metrics.csv, grids and curves, and the page as headless Chromium renders it.

The Chromium tests skip where no chromium binary is installed; with ``T2I_REQUIRE_BROWSER=1``
(CI) they fail instead.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from t2i.report import build_report
from t2i.report.curves import load_scalars

LONG_PROMPT = ("a small red circle to the left of a large blue square, below a green triangle; "
               "the background is plain and nothing else is in the picture")


def write_samples(root: Path, prompts: list[str], colour: tuple[int, int, int]) -> Path:
    root.mkdir(parents=True)
    rows = []
    for i, prompt in enumerate(prompts):
        img = Image.new("RGB", (32, 32), (245, 245, 245))
        ImageDraw.Draw(img).ellipse((4 + i, 4, 20 + i, 20), fill=colour)
        img.save(root / f"{i:05d}.png")
        rows.append({"id": i, "prompt": prompt, "seed": i, "file": f"{i:05d}.png"})
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def metrics_json(fid: float, prompt_acc: float) -> dict:
    """Shaped like t2i.eval.evaluate's output."""
    return {"experiment": "x", "prompt_set": "test", "samples_dir": "somewhere",
            "shapes": {"object_acc": 0.9, "count_acc": 0.8, "relation_acc": 0.7, "prompt_acc": prompt_acc, "n": 5,
                       "by_type": {"single": {"prompt_acc": 1.0, "object_acc": 1.0, "n": 2}}},
            "fidelity": {"extractor": "shapes-cnn", "fid": fid, "kid_mean": fid / 1000, "kid_std": 0.001,
                         "isc_mean": 3.5, "isc_std": 0.1, "num_samples": 5, "num_reference": 5,
                         "images_per_second": 1234.5, "feature_layers": {"fid": "feat"}},
            "fid": fid, "provenance": {"wall_time_s": 1.0}}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    prompts = ["a red circle", "two blue squares", LONG_PROMPT, "a cyan triangle", "a yellow square"]

    alpha_train = root / "alpha" / "train"
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(alpha_train / "tensorboard"))
    for step in range(1, 101):
        writer.add_scalar("train_loss", 2.0 / step ** 0.5 + 0.05 * np.sin(step), step)
        writer.add_scalar("lr", 1e-3 * min(1.0, step / 10), step)
    writer.close()

    beta_train = root / "beta" / "train"
    (beta_train / "model").mkdir(parents=True)
    (beta_train / "model" / "train_log.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-4, "time": 0.0}) + "\n" for s in range(1, 40)))

    experiments = [
        {"name": "alpha", "system": "jit", "config": {"system": "jit", "train": {"steps": 100}, "out": Path("/x")},
         "metrics": {"test": metrics_json(12.5, 0.6), "holdout": metrics_json(30.0, 0.2)},
         "samples_dirs": {"test": write_samples(root / "alpha/samples/test", prompts, (230, 30, 30)),
                          "holdout": write_samples(root / "alpha/samples/holdout", prompts[:3], (30, 30, 230))},
         "train_dir": alpha_train, "provenance": {"git_commit": "abc123", "seeds": {"train": 0}}},
        {"name": "beta", "system": "lafite", "config": {"system": "lafite"},
         "metrics": {"test": metrics_json(8.25, 0.4), "holdout": None},
         "samples_dirs": {"test": write_samples(root / "beta/samples/test", prompts, (30, 200, 30)),
                          "holdout": write_samples(root / "beta/samples/holdout", prompts[:2], (20, 220, 230))},
         "train_dir": beta_train, "provenance": None},
    ]
    out = root / "report"
    assert build_report(experiments, out, grid_images=4) == out / "index.html"
    return out


def test_metrics_csv_has_one_row_per_experiment_and_prompt_set(report):
    with open(report / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    columns = reader.fieldnames
    assert columns[:6] == ["experiment", "system", "prompt_set", "fidelity.fid", "fidelity.kid_mean", "fidelity.isc_mean"]
    assert "fid" not in columns  # the top-level copy of fidelity.fid gets no second column
    assert not any("provenance" in k or "wall_time" in k or "feature_layers" in k for k in columns)
    assert [(r["experiment"], r["prompt_set"]) for r in rows] == [
        ("alpha", "test"), ("alpha", "holdout"), ("beta", "test"), ("beta", "holdout")]
    assert float(rows[0]["fidelity.fid"]) == 12.5 and float(rows[1]["shapes.prompt_acc"]) == 0.2
    assert rows[2]["system"] == "lafite"
    # the CSV keeps what the table leaves out: bookkeeping and per-caption-type breakdowns
    assert float(rows[0]["fidelity.images_per_second"]) == 1234.5
    assert float(rows[0]["shapes.by_type.single.prompt_acc"]) == 1.0
    assert rows[3]["fidelity.fid"] == "" and rows[3]["shapes.prompt_acc"] == ""  # no metrics yet: an empty row


def test_grids_and_curves_are_written_beside_the_page(report):
    grid = Image.open(report / "grids" / "alpha__test.png")
    assert grid.size == (4 * (128 + 8) + 8, 8 + 128 + 8 + 3 * 15 + 4)  # 4 of 5 images, 32 px scaled to 128
    assert Image.open(report / "grids" / "beta__holdout.png").size[0] == 2 * (128 + 8) + 8
    assert {p.name for p in (report / "curves").iterdir()} == {"alpha.png", "beta.png"}


def test_scalars_come_from_tensorboard_else_the_jsonl_log(report):
    results = report.parent
    tb = load_scalars(results / "alpha" / "train")
    assert set(tb) == {"train_loss", "lr"} and tb["lr"][0] == list(range(1, 101))
    log = load_scalars(results / "beta" / "train")
    assert set(log) == {"loss", "lr"} and log["loss"][1][:2] == [1.0, 0.5]
    assert load_scalars(results / "nowhere") == {}


def chromium(*args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium; skip (or, with T2I_REQUIRE_BROWSER=1, fail) without one."""
    binary = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if binary is None:
        msg = "no chromium binary (apt-get install chromium)"
        if os.environ.get("T2I_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{msg}; T2I_REQUIRE_BROWSER=1 requires it")
        pytest.skip(msg)
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120, check=True)


def test_page_renders_in_headless_chromium(report):
    dom = chromium("--dump-dom", (report / "index.html").as_uri()).stdout
    table = re.search(r'<table id="metrics-table" class="sortable" data-sortable="ready">.*?</table>', dom, re.S)
    assert table, "metrics table missing, or its sorting script did not run"
    assert re.findall(r'<tr data-exp="(\w+)" data-prompt-set="(\w+)"', table.group(0)) == [
        ("alpha", "test"), ("alpha", "holdout"), ("beta", "test"), ("beta", "holdout")]
    assert re.search(r'<td class="num best" data-sort="8.25">8.25</td>', table.group(0))  # beta's FID wins on test
    assert re.search(r'<td class="num best" data-sort="0.6">0.6</td>', table.group(0))  # alpha's prompt_acc wins
    assert table.group(0).count(" best") == 3  # FID, KID, prompt_acc; ties (IS, object_acc, ...) stay plain
    assert len(re.findall(r'<img class="grid" src="data:image/png;base64,', dom)) == 4
    assert len(re.findall(r'<img class="curve" src="data:image/png;base64,', dom)) == 2
    headers = re.findall(r'<th data-key="([\w.]+)"', table.group(0))
    assert headers[:6] == ["experiment", "system", "prompt_set", "fidelity.fid", "fidelity.kid_mean",
                           "fidelity.isc_mean"]
    assert "shapes.n" in headers and not any("by_type" in h or "images_per_second" in h for h in headers)
    assert LONG_PROMPT in dom and "git_commit" in dom and "steps: 100" in dom
    assert not re.search(r'(src|href)="(https?:)?//', dom)  # self-contained: nothing fetched from elsewhere


def test_clicking_a_header_sorts_the_table(report, tmp_path):
    page = (report / "index.html").read_text()
    click = """<script>document.querySelector('th[data-key="fidelity.fid"]').click()</script></body>"""
    (tmp_path / "sorted.html").write_text(page.replace("</body>", click))
    dom = chromium("--dump-dom", (tmp_path / "sorted.html").as_uri()).stdout
    order = re.findall(r'<tr data-exp="(\w+)" data-prompt-set="(\w+)"', dom)
    assert order == [("beta", "test"), ("alpha", "test"), ("alpha", "holdout"), ("beta", "holdout")]
    assert re.search(r'<th data-key="fidelity.fid" class="num" aria-sort="ascending">', dom)


def test_screenshot_shows_a_rendered_page(report, tmp_path):
    shot = tmp_path / "page.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,1800", "--hide-scrollbars", (report / "index.html").as_uri())
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 1800)
    assert len(img.getcolors(maxcolors=1 << 20)) > 200  # text, table and pictures, not a blank page


@pytest.mark.parametrize("require, outcome", [("1", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_chromium_fails_only_where_required(monkeypatch, require, outcome):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("T2I_REQUIRE_BROWSER", require)
    with pytest.raises(outcome, match="no chromium binary"):
        chromium("--version")


def test_columns_shared_by_two_families_are_named_by_family():
    from t2i.report.html import table_columns

    paths = ["fidelity.fid", "fidelity_train.fid", "shapes.prompt_acc", "fidelity.kid_mean", "a.score", "b.score"]
    labels = {c["path"]: c["label"] for c in table_columns(paths)}
    assert labels["fidelity.fid"] == "FID"
    assert labels["fidelity_train.fid"] == "FID vs train split"
    assert labels["fidelity.kid_mean"] == "KID"  # not shared: plain
    assert labels["a.score"] == "a.score" and labels["b.score"] == "b.score"  # unknown families: whole paths


def test_length_tables_put_every_experiments_bins_side_by_side():
    from t2i.report.html import length_tables

    def metrics(bins):
        return {"shapes": {"by_length": {b: {"object_acc": v, "count_acc": v, "relation_acc": None,
                                             "prompt_acc": v / 2, "n": 3} for b, v in bins.items()}}}

    experiments = [{"name": "a", "metrics": {"long": metrics({"10-20 words": 0.5, "21-30 words": 0.25}),
                                             "test": metrics({"3-5 words": 1.0})}},
                   {"name": "b", "metrics": {"long": metrics({"5-9 words": 0.75, "21-30 words": 1.0})}}]
    (table,) = length_tables(experiments)  # `test` has one experiment: nothing to compare
    assert table["prompt_set"] == "long" and table["bins"] == ["5-9 words", "10-20 words", "21-30 words"]
    a, b = table["rows"]
    assert [c["values"] for c in a["cells"]] == [["", "", "", ""], ["0.5", "0.5", "", "0.25"],
                                                 ["0.25", "0.25", "", "0.125"]]
    assert [c["n"] for c in b["cells"]] == [3, 0, 3]
