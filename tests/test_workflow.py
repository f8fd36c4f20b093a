"""The real workflow on a tiny config: full chain, reruns of exactly what an edit touches, resume after a kill."""
from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from workflow_harness import SNAKEFILE, planned_jobs, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A completed run of the tiny two-experiment config."""
    workdir = tmp_path_factory.mktemp("wf")
    write_config(workdir, tiny_config())
    snakemake(workdir, "--cores", "2")
    return workdir


def _edited(workdir: Path, edit) -> Path:
    cfg = tiny_config()
    edit(cfg)
    return write_config(workdir, cfg, "edited.yaml")


def _rules_of(jobs, exp=None):
    return {rule for rule, out in jobs if exp is None or f"/{exp}/" in out or out.startswith(f"results/{exp}/")}


def test_chain_outputs(done_run):
    r = done_run / "results"
    for exp in ("exp_a", "exp_b"):
        assert (r / exp / "train" / "model.safetensors").is_file()
        assert (r / exp / "train" / "state" / "meta.json").is_file()
        rows = [json.loads(line) for line in (r / exp / "samples" / "test" / "index.jsonl").read_text().splitlines()]
        assert len(rows) == 16 and all((r / exp / "samples" / "test" / row["file"]).is_file() for row in rows)
        metrics = json.loads((r / exp / "metrics" / "test.json").read_text())
        assert {"fid", "shapes"} <= set(metrics)
        assert (r / exp / "prepared" / "provenance.json").is_file()
    assert (r / "report" / "index.html").stat().st_size > 1000
    assert (r / "report" / "metrics.csv").read_text().count("\n") >= 3
    for log in ("dataset/shapes_a.log", "exp_a/train.log", "exp_a/sample_test.log"):
        assert (r / "logs" / log).stat().st_size > 0


def test_nothing_to_do_after_a_run(done_run):
    assert planned_jobs(done_run) == set()


def test_comment_edit_reruns_nothing(done_run):
    path = write_config(done_run, tiny_config(), "edited.yaml")
    path.write_text("# a comment\n" + path.read_text().replace("seed: 0\n", "seed: 0  # same seed\n", 1))
    assert planned_jobs(done_run, "--configfile", str(path)) == set()


def test_sample_knob_reruns_sample_evaluate_report(done_run):
    path = _edited(done_run, lambda c: c["experiments"]["exp_a"]["sample"].update(cfg=3.0))
    jobs = planned_jobs(done_run, "--configfile", str(path))
    assert _rules_of(jobs) == {"sample", "evaluate", "report"}
    assert _rules_of(jobs, "exp_b") == set()


def test_train_lr_reruns_train_and_downstream_only(done_run):
    path = _edited(done_run, lambda c: c["experiments"]["exp_a"]["train"].update(blr=2e-3))
    jobs = planned_jobs(done_run, "--configfile", str(path))
    assert _rules_of(jobs) == {"train", "sample", "evaluate", "report"}
    assert _rules_of(jobs, "exp_b") == set()


def test_dataset_seed_reruns_everything_of_its_experiments_only(done_run):
    path = _edited(done_run, lambda c: c["datasets"]["shapes_a"].update(seed=7))
    jobs = planned_jobs(done_run, "--configfile", str(path))
    assert _rules_of(jobs) == {"dataset", "shapes_extractor", "reference_stats", "prepare", "train", "sample",
                               "evaluate", "report"}
    assert all("shapes_b" not in out and "exp_b" not in out for _, out in jobs)


def test_new_experiment_runs_only_its_own_jobs(done_run):
    def add(cfg):
        cfg["experiments"]["exp_c"] = {**copy.deepcopy(cfg["experiments"]["exp_a"])}
        cfg["experiments"]["exp_c"]["sample"]["cfg"] = 1.5
        cfg["run"].append("exp_c")

    jobs = planned_jobs(done_run, "--configfile", str(_edited(done_run, add)))
    assert {(rule, out) for rule, out in jobs if rule != "report"} == {
        ("prepare", "results/exp_c/prepared"),
        ("train", "results/exp_c/train/model.safetensors"),
        ("sample", "results/exp_c/samples/test"),
        ("evaluate", "results/exp_c/metrics/test.json"),
    }


def test_raising_steps_continues_training(done_run, tmp_path):
    workdir = tmp_path / "wf"
    shutil.copytree(done_run, workdir, symlinks=True)
    cfg = tiny_config()
    cfg["experiments"]["exp_a"]["train"]["steps"] = 20
    write_config(workdir, cfg)
    snakemake(workdir, "--cores", "2", "results/exp_a/train/model.safetensors")
    log = (workdir / "results" / "logs" / "exp_a" / "train.log").read_text()
    assert "resuming at step 12" in log
    steps = [json.loads(line)["step"] for line in (workdir / "results/exp_a/train/train_log.jsonl").read_text().splitlines()]
    assert max(steps) == 20


def test_killed_training_resumes_to_identical_weights(done_run, tmp_path):
    cfg = tiny_config()
    cfg["run"] = ["exp_a"]
    cfg["experiments"]["exp_a"]["train"].update(steps=150, save_every=10)
    target = "results/exp_a/train/model.safetensors"

    reference = tmp_path / "reference"
    shutil.copytree(done_run, reference, symlinks=True)
    write_config(reference, cfg)
    snakemake(reference, "--cores", "1", target)

    killed = tmp_path / "killed"
    shutil.copytree(done_run, killed, symlinks=True)
    write_config(killed, cfg)
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(killed),
                             "--cores", "1", target], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    meta = killed / "results/exp_a/train/state/meta.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (meta.exists() and json.loads(meta.read_text())["step"] >= 20):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / target).exists(), "training finished before it could be killed"

    # snakemake itself was killed too (as on a power loss): its lock stays until --unlock
    locked = snakemake(killed, "--cores", "1", target, check=False)
    assert locked.returncode != 0 and "cannot be locked" in locked.stdout + locked.stderr
    snakemake(killed, "--unlock", target)
    snakemake(killed, "--cores", "1", "--rerun-incomplete", target)
    log = (killed / "results/logs/exp_a/train.log").read_text()
    assert "resuming at step" in log
    a, b = load_file(reference / target), load_file(killed / target)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_lint_passes():
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--lint"],
                         capture_output=True, text=True, cwd=SNAKEFILE.parent)
    assert res.returncode == 0, res.stdout + res.stderr
