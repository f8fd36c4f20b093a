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
import yaml
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
        assert (r / exp / "train" / "model" / "t2i_model.json").is_file()
        assert (r / exp / "train" / "model" / "SHA256SUMS").is_file()
        assert (r / exp / "train" / "state" / "meta.json").is_file()
        rows = [json.loads(line) for line in (r / exp / "samples" / "test" / "index.jsonl").read_text().splitlines()]
        assert len(rows) == 16 and all((r / exp / "samples" / "test" / row["file"]).is_file() for row in rows)
        metrics = json.loads((r / exp / "metrics" / "test.json").read_text())
        assert {"fid", "shapes"} <= set(metrics)
        assert (r / exp / "prepared" / "provenance.json").is_file()
        assert str(done_run) not in (r / exp / "prepared" / "manifest.json").read_text()  # no absolute paths
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
    assert _rules_of(jobs) == {"dataset", "pretrained", "reference_stats", "prepare", "train", "sample",
                               "evaluate", "report"}
    assert all("shapes_b" not in out and "exp_b" not in out for _, out in jobs)


def test_reordered_keys_rerun_nothing(done_run):
    path = write_config(done_run, tiny_config(), "edited.yaml")
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()), sort_keys=True))
    assert planned_jobs(done_run, "--configfile", str(path)) == set()


def test_speed_knobs_rerun_nothing(done_run):
    def edit(cfg):
        exp = cfg["experiments"]["exp_a"]
        exp["sample"].update(gen_bsz=3, compile=False)
        exp["train"].update(log_every=3, save_every=5, num_workers=1)
        exp["evaluate"].update(batch_size=7)
        exp["resources"].update(mem_mb=2500, evaluate={"runtime": 3})

    assert planned_jobs(done_run, "--configfile", str(_edited(done_run, edit))) == set()


def test_new_experiment_runs_only_its_own_jobs(done_run):
    def add(cfg):
        cfg["experiments"]["exp_c"] = {**copy.deepcopy(cfg["experiments"]["exp_a"])}
        cfg["experiments"]["exp_c"]["sample"]["cfg"] = 1.5
        cfg["run"].append("exp_c")

    jobs = planned_jobs(done_run, "--configfile", str(_edited(done_run, add)))
    assert {(rule, out) for rule, out in jobs if rule != "report"} == {
        ("prepare", "results/exp_c/prepared"),
        ("train", "results/exp_c/train/model"),
        ("sample", "results/exp_c/samples/test"),
        ("evaluate", "results/exp_c/metrics/test.json"),
    }


def test_raising_steps_continues_training(done_run, tmp_path):
    workdir = tmp_path / "wf"
    shutil.copytree(done_run, workdir, symlinks=True)
    cfg = tiny_config()
    cfg["experiments"]["exp_a"]["train"]["steps"] = 20
    write_config(workdir, cfg)
    snakemake(workdir, "--cores", "2", "results/exp_a/train/model")
    log = (workdir / "results" / "logs" / "exp_a" / "train.log").read_text()
    assert "resuming at step 12" in log
    steps = [json.loads(line)["step"] for line in (workdir / "results/exp_a/train/model/train_log.jsonl").read_text().splitlines()]
    assert max(steps) == 20


def test_killed_training_resumes_to_identical_weights(done_run, tmp_path):
    cfg = tiny_config()
    cfg["run"] = ["exp_a"]
    cfg["experiments"]["exp_a"]["train"].update(steps=150, save_every=10)
    target = "results/exp_a/train/model"
    weights = f"{target}/network/diffusion_pytorch_model.safetensors"

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
    a, b = load_file(reference / weights), load_file(killed / weights)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_lint_passes():
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--lint"],
                         capture_output=True, text=True, cwd=SNAKEFILE.parent)
    assert res.returncode == 0, res.stdout + res.stderr


def _chain(cfg):
    """exp_ft fine-tunes exp_a's network on shapes_b; only exp_ft is final."""
    ft = copy.deepcopy(cfg["experiments"]["exp_b"])
    ft["inputs"]["init"] = {"experiment": "exp_a"}
    ft["train"].update(steps=6, blr=5e-4)
    cfg["experiments"]["exp_ft"] = ft
    cfg["run"] = ["exp_ft"]


def test_two_stage_chain_fine_tunes_from_the_upstream_model(done_run, tmp_path):
    workdir = tmp_path / "chain"
    shutil.copytree(done_run, workdir, symlinks=True)
    cfg = tiny_config()
    _chain(cfg)
    write_config(workdir, cfg)
    jobs = planned_jobs(workdir)
    assert _rules_of(jobs) == {"prepare", "train", "sample", "evaluate", "report"}
    assert _rules_of(jobs, "exp_a") == set()  # the upstream stage is done and never sampled here
    snakemake(workdir, "--cores", "2")
    assert "initialised the network from results/exp_a/train/model" in (
        workdir / "results/logs/exp_ft/train.log").read_text()
    assert (workdir / "results/exp_ft/metrics/test.json").is_file()

    # an upstream change reruns the chain below it, and only that
    cfg["experiments"]["exp_a"]["train"]["blr"] = 2e-3
    write_config(workdir, cfg)
    jobs = planned_jobs(workdir)
    assert {(rule, out) for rule, out in jobs if rule in ("train", "prepare")} == {
        ("train", "results/exp_a/train/model"), ("train", "results/exp_ft/train/model")}
    assert _rules_of(jobs, "exp_ft") == {"train", "sample", "evaluate"} and "sample" not in _rules_of(jobs, "exp_a")


def test_changed_upstream_input_restarts_training_instead_of_resuming(done_run, tmp_path):
    """The resume identity holds each input's content hash: new upstream weights never resume stale state."""
    workdir = tmp_path / "stale"
    shutil.copytree(done_run, workdir, symlinks=True)
    cfg = tiny_config()
    _chain(cfg)
    write_config(workdir, cfg)
    snakemake(workdir, "--cores", "2", "results/exp_ft/train/model")
    cfg["experiments"]["exp_a"]["train"]["seed"] = 1  # new upstream weights, same exp_ft config
    cfg["experiments"]["exp_ft"]["train"]["steps"] = 8  # raising steps would resume if nothing else changed
    write_config(workdir, cfg)
    snakemake(workdir, "--cores", "2", "results/exp_ft/train/model")
    log = (workdir / "results/logs/exp_ft/train.log").read_text()
    assert "resuming at step" not in log and "starting fresh" in log and "init" in log.split("starting fresh")[1]
