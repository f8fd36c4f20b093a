"""The workflow through a real Slurm cluster (`.ci/slurm/start.sh` starts a one-node one here).

Each case runs one workflow twice, at the same time, in temporary directories: through Slurm
exactly as README's cluster section says (``--workflow-profile profiles/slurm``, only the status
polling made faster) and locally (``--workflow-profile profiles/local --cores 2``). The tests
check that every job went through ``sbatch`` (its Slurm job id in snakemake's log and in
``sacct``), that GPU rules were granted a ``gres/gpu`` and CPU rules none, and that the outputs
are byte-identical to the local run's. Two cases:

- ``tiny`` (``tests/slurm_workflow``): seconds per job; records the Slurm environment from
  inside each job, asks for a GPU model, and has a job that fails once and is retried.
- ``t2i``: the real Snakefile on a tiny config: one experiment on 1 GPU whose train job is
  pre-empted (SIGTERM) mid-run and resumed by the profile's retry, one on 2 GPUs that trains
  with 2 processes (gloo on this CPU machine) through the launcher the GPU path uses.

Runs where ``sinfo`` answers and skips elsewhere; with ``T2I_REQUIRE_SLURM=1`` (CI) a missing or
broken cluster fails instead.
"""
from __future__ import annotations

import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import yaml

from t2i.utils.device import ALLOW_CPU_ENV
from workflow_harness import SNAKEFILE, tiny_config

ROOT = Path(__file__).resolve().parents[1]
SLURM_PROFILE = ROOT / "profiles" / "slurm"
LOCAL_PROFILE = ROOT / "profiles" / "local"
# Poll sacct every few seconds instead of the profile's production cadence: the jobs take seconds.
FAST_POLLING = ("--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2")

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1200)]


@dataclass(frozen=True)
class SlurmCase:
    """One workflow to run through Slurm and locally."""

    name: str
    snakefile: Path
    config: Callable[[str | None], dict]  # the cluster's GPU type (or None) -> the run's config
    gpu_rules: frozenset[str]  # every Slurm job of these rules must hold gres/gpu
    cpu_rules: frozenset[str]  # ... and of these none
    compare: tuple[str, ...]  # globs (in the workdir) that must equal the local run's bytes
    local_args: tuple[str, ...] = ()
    # called in a thread while the Slurm run goes on: (workdir, stop event) -> what it did
    during_slurm: Callable[[Path, threading.Event], dict] | None = None
    timeout: int = 900


# ---- the cluster ------------------------------------------------------------------------------

def _run(cmd: list[str], timeout: int = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _slurm_problem() -> str | None:
    """Why Slurm cannot be used here, or None."""
    if shutil.which("sinfo") is None:
        return "`sinfo` is not installed"
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):  # Slurm would retry for a minute
        return f"SLURM_CONF={conf} does not exist"
    try:
        res = _run(["sinfo", "-h", "-o", "%P %a %T"])
    except subprocess.TimeoutExpired:
        return "`sinfo` did not answer within 30 s"
    if res.returncode != 0:
        return f"`sinfo` failed: {res.stderr.strip()}"
    return None


def _gpu_type(sinfo_gres: str) -> str | None:
    """The first GPU type in `sinfo -o %G` output (gpu:fakegpu:2 -> fakegpu), or None."""
    match = re.search(r"\bgpu:([A-Za-z_][\w.]*):\d+", sinfo_gres)
    return match.group(1) if match else None


@pytest.fixture(scope="module")
def slurm_cluster() -> str:
    """Skip (or, with T2I_REQUIRE_SLURM=1, fail) without a cluster; fail on a broken one."""
    problem = _slurm_problem()
    if problem:
        msg = f"no Slurm cluster: {problem} (start one with `sudo bash .ci/slurm/start.sh`)"
        if os.environ.get("T2I_REQUIRE_SLURM") == "1":
            pytest.fail(f"{msg}; T2I_REQUIRE_SLURM=1 requires it")
        pytest.skip(msg)
    nodes = _run(["sinfo", "-h", "-N", "-o", "%N %T %G"]).stdout
    if not re.search(r"\b(idle|mixed|allocated|completing)\b", nodes):
        pytest.fail(f"Slurm answers but no node is usable:\n{nodes}")
    acct = _run(["sacct", "-n", "-X", "-S", "now-1hours"])
    if acct.returncode != 0:  # the executor polls job states with sacct
        pytest.fail(f"`sinfo` answers but `sacct` does not (is slurmdbd up?): {acct.stderr.strip()}")
    return nodes


def _sacct(jobids: list[str]) -> dict[str, dict[str, str]]:
    fields = ["JobIDRaw", "JobName", "State", "Comment", "AllocTRES", "ExitCode"]
    res = _run(["sacct", "-X", "-P", "-n", "-j", ",".join(jobids), "-o", ",".join(fields)])
    assert res.returncode == 0, f"sacct failed: {res.stderr}"
    rows = [dict(zip(fields, line.split("|"))) for line in res.stdout.splitlines() if line.strip()]
    return {row["JobIDRaw"]: row for row in rows}


def _rule_of(row: dict[str, str]) -> str:
    """The rule of a Slurm job, from the comment the executor sets: rule_<name>[_wildcards_<...>]."""
    match = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", row["Comment"])
    assert match, f"Slurm job {row['JobIDRaw']} has no rule comment: {row}"
    return match.group(1)


def _gpus(tres: str) -> int:
    match = re.search(r"gres/gpu=(\d+)", tres)
    return int(match.group(1)) if match else 0


# ---- the cases --------------------------------------------------------------------------------

def _tiny_config(gpu_type: str | None) -> dict:
    # where the cluster's GPUs have a type (.ci/slurm: "fakegpu"), one GPU job asks for it by gpu_model
    return {"items": ["a", "b"], **({"gpu_model": gpu_type} if gpu_type else {})}


TRAIN_STEPS, PREEMPT_AT, MP_STEPS = 300, 20, 100


def _t2i_config(gpu_type: str | None) -> dict:
    """One 1-GPU experiment (pre-empted during training) and a 2-GPU copy that trains with 2 processes."""
    cfg = tiny_config()
    del cfg["datasets"]["shapes_b"], cfg["experiments"]["exp_b"], cfg["pretrained"]["cnn_b"]
    exp = cfg["experiments"]["exp_a"]
    exp["train"].update(steps=TRAIN_STEPS, save_every=10, log_every=10)
    exp["resources"].update(gpu=1, gpu_model=gpu_type, cpus_per_task=1)
    cfg["experiments"]["exp_mp"] = {**copy.deepcopy(exp), "resources": {**exp["resources"], "gpu": 2, "cpus_per_task": 2}}
    cfg["experiments"]["exp_mp"]["train"]["steps"] = MP_STEPS  # the lr schedule is the same: compare to exp_a's start
    cfg["run"] = ["exp_a", "exp_mp"]
    return cfg


def _slurm_job_of(comment_prefix: str) -> str | None:
    """The id of this user's running Slurm job whose comment starts with ``comment_prefix``."""
    res = _run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"])
    for line in res.stdout.splitlines():
        job, _, comment = line.partition("|")
        if comment.startswith(comment_prefix):
            return job
    return None


def _preempt_training(workdir: Path, stop: threading.Event) -> dict:
    """Once exp_a's training has saved step PREEMPT_AT, SIGTERM its Slurm job, as a pre-emption does."""
    meta = workdir / "results/exp_a/train/state/meta.json"
    while not stop.is_set():
        try:
            step = json.loads(meta.read_text())["step"]
        except (OSError, ValueError, KeyError):
            step = 0
        if step >= PREEMPT_AT:
            job = _slurm_job_of("rule_train_wildcards_exp_a")
            if job:
                res = _run(["scancel", "--signal=TERM", job])
                return {"job": job, "step": step, "scancel": res.returncode, "stderr": res.stderr}
        time.sleep(0.1)
    return {}


CASES = {
    "tiny": SlurmCase(
        name="tiny",
        snakefile=ROOT / "tests" / "slurm_workflow" / "Snakefile",
        config=_tiny_config,
        gpu_rules=frozenset({"gpu_step"}),
        cpu_rules=frozenset({"cpu_step", "flaky", "summary"}),
        compare=("results/data/*",),
    ),
    "t2i": SlurmCase(
        name="t2i",
        snakefile=SNAKEFILE,
        config=_t2i_config,
        gpu_rules=frozenset({"prepare", "train", "sample", "reference_stats", "evaluate"}),
        cpu_rules=frozenset({"dataset", "pretrained", "report"}),
        compare=("results/datasets/shapes_a/images/*.png", "results/datasets/shapes_a/captions/*.txt",
                 "results/datasets/shapes_a/annotations.jsonl", "results/datasets/shapes_a/prompts/*",
                 "results/exp_*/train/model/network/*.safetensors",
                 "results/exp_*/samples/test/*.png"),
        local_args=("--resources", "gpu=2"),  # exp_mp's train job asks for 2 (the local profile says 1)
        during_slurm=_preempt_training,
    ),
}


# ---- the runs ---------------------------------------------------------------------------------

def _snakemake_cmd(case: SlurmCase, workdir: Path, config: dict, *args: str) -> list[str]:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return [sys.executable, "-m", "snakemake", "-s", str(case.snakefile), "--directory", str(workdir),
            "--configfile", str(path), "--nocolor", *args]


def _env() -> dict[str, str]:
    """This environment minus the variables of a Slurm job we might be running in; the cluster's GPUs
    are placeholders, so GPU jobs may run on CPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    return {**env, ALLOW_CPU_ENV: "1"}


def _run_case(case: SlurmCase, gres: str, tmp_path_factory) -> SimpleNamespace:
    """Run the case through Slurm and locally (concurrently); return logs, Slurm jobs and sacct rows."""
    slurm_dir = tmp_path_factory.mktemp(f"{case.name}-slurm")
    local_dir = tmp_path_factory.mktemp(f"{case.name}-local")
    config = case.config(_gpu_type(gres))
    procs = {
        "slurm": subprocess.Popen(
            _snakemake_cmd(case, slurm_dir, config, "--workflow-profile", str(SLURM_PROFILE), *FAST_POLLING),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()),
        "local": subprocess.Popen(
            _snakemake_cmd(case, local_dir, config, "--workflow-profile", str(LOCAL_PROFILE), "--cores", "2",
                           "--retries", "1", *case.local_args),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()),
    }
    stop, during = threading.Event(), {}
    watcher = None
    if case.during_slurm is not None:
        watcher = threading.Thread(target=lambda: during.update(case.during_slurm(slurm_dir, stop)), daemon=True)
        watcher.start()
    logs = {}
    try:
        for name, proc in procs.items():
            try:
                logs[name], _ = proc.communicate(timeout=case.timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the {name} run of {case.name} took over {case.timeout} s") from None
            assert proc.returncode == 0, f"the {name} run of {case.name} failed ({proc.returncode}):\n{logs[name][-8000:]}"
    finally:
        stop.set()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        if watcher is not None:
            watcher.join(timeout=10)

    # the main process's log, without the job logs that --show-failed-logs prints in between
    log = re.sub(r"^Logfile .*:\n={80}\n.*?^={80}\n", "", logs["slurm"], flags=re.MULTILINE | re.DOTALL)
    run_id = re.search(r"SLURM run ID: (\S+)", log)
    assert run_id, f"no 'SLURM run ID' in the log: did the slurm executor run?\n{log[-4000:]}"
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log)
    # every job snakemake ran (localrules print as `localrule`), by its snakemake jobid
    remote_jobs = dict((jobid, rule) for rule, jobid in
                       re.findall(r"^rule (\w+):\n(?:    .*\n)*?    jobid: (\d+)$", log, re.MULTILINE))
    sacct = _sacct([slurm_id for _, slurm_id in submitted]) if submitted else {}
    return SimpleNamespace(case=case, config=config, slurm_dir=slurm_dir, local_dir=local_dir, log=log,
                           run_id=run_id.group(1), submitted=submitted, remote_jobs=remote_jobs, sacct=sacct,
                           during=during)


@pytest.fixture(scope="module")
def tiny(slurm_cluster, tmp_path_factory) -> SimpleNamespace:
    return _run_case(CASES["tiny"], slurm_cluster, tmp_path_factory)


@pytest.fixture(scope="module")
def t2i(slurm_cluster, tmp_path_factory) -> SimpleNamespace:
    return _run_case(CASES["t2i"], slurm_cluster, tmp_path_factory)


@pytest.fixture(params=list(CASES))
def runs(request) -> SimpleNamespace:
    return request.getfixturevalue(request.param)


def _jobs_of(runs: SimpleNamespace, rule: str, wildcard: str = "") -> list[dict[str, str]]:
    """sacct rows of one rule (and wildcard value), oldest first."""
    rows = [row for row in runs.sacct.values() if _rule_of(row) == rule and wildcard in row["Comment"]]
    return sorted(rows, key=lambda r: int(r["JobIDRaw"]))


# ---- every case -------------------------------------------------------------------------------

def test_every_job_went_through_sbatch(runs):
    assert runs.remote_jobs, f"snakemake ran no job outside localrules:\n{runs.log[-4000:]}"
    by_snakemake_job: dict[str, list[str]] = {}
    for jobid, slurm_id in runs.submitted:
        by_snakemake_job.setdefault(jobid, []).append(slurm_id)
    not_submitted = {j: r for j, r in runs.remote_jobs.items() if j not in by_snakemake_job}
    assert not not_submitted, f"jobs that never went through sbatch: {not_submitted}"

    all_ids = [slurm_id for _, slurm_id in runs.submitted]
    missing = [i for i in all_ids if i not in runs.sacct]
    assert not missing, f"Slurm job ids from snakemake's log that sacct does not know: {missing}"
    for jobid, slurm_ids in by_snakemake_job.items():
        for slurm_id in slurm_ids:
            row = runs.sacct[slurm_id]
            assert row["JobName"] == runs.run_id, row  # the executor names every job after its run
            assert _rule_of(row) == runs.remote_jobs[jobid], (jobid, row)
        last = runs.sacct[slurm_ids[-1]]
        assert last["State"] == "COMPLETED", f"the last Slurm job of snakemake job {jobid} is {last}"
    rules = {_rule_of(row) for row in runs.sacct.values()}
    expected = runs.case.gpu_rules | runs.case.cpu_rules
    assert expected <= rules, f"rules without a Slurm job: {sorted(expected - rules)}"


def test_gpu_rules_get_a_gpu_and_cpu_rules_none(runs):
    for row in runs.sacct.values():
        rule = _rule_of(row)
        assert rule in runs.case.gpu_rules | runs.case.cpu_rules, f"rule {rule} is in neither list: {row}"
        if rule in runs.case.gpu_rules:
            assert _gpus(row["AllocTRES"]) >= 1, f"GPU rule {rule} was not granted a GPU: {row}"
        else:
            assert _gpus(row["AllocTRES"]) == 0, f"CPU rule {rule} was granted a GPU: {row}"


def test_outputs_match_local_run(runs):
    def files(workdir: Path) -> dict[str, bytes]:
        found = {}
        for pattern in runs.case.compare:
            for path in glob.glob(str(workdir / pattern), recursive=True):
                if os.path.isfile(path):
                    found[os.path.relpath(path, workdir)] = Path(path).read_bytes()
        return found

    slurm, local = files(runs.slurm_dir), files(runs.local_dir)
    for pattern in runs.case.compare:
        assert glob.glob(str(runs.local_dir / pattern)), f"the local run wrote nothing matching {pattern}"
    assert sorted(slurm) == sorted(local)
    differ = [name for name in local if slurm[name] != local[name]]
    assert not differ, f"outputs that differ between the Slurm and the local run: {differ}"


# ---- tiny: the job's own view of its allocation, retries --------------------------------------

def test_jobs_see_exactly_their_allocation(tiny):
    env_files = sorted(glob.glob(str(tiny.slurm_dir / "results/env/*.json")))
    assert env_files, "no results/env/*.json written by the jobs"
    seen, models_seen = set(), set()
    for path in env_files:
        facts = json.loads(Path(path).read_text())
        assert facts["SLURM_JOB_ID"] in tiny.sacct, f"{path} was not written inside a Slurm job of this run: {facts}"
        rule = _rule_of(tiny.sacct[facts["SLURM_JOB_ID"]])
        seen.add(rule)
        tres = re.search(r"^\s*TRES=(\S*)", facts["scontrol"], re.MULTILINE)
        assert tres, f"no TRES in `scontrol show job` from inside the job:\n{facts['scontrol']}"
        if rule in tiny.case.gpu_rules:
            assert re.fullmatch(r"\d+", facts["CUDA_VISIBLE_DEVICES"] or ""), f"{rule}: {facts}"
            assert _gpus(tres.group(1)) == 1, f"{rule}: scontrol shows TRES={tres.group(1)}"
            model = facts["requested"]["gpu_model"]
            if model:  # --gpus=MODEL:1 was asked for and granted
                models_seen.add(model)
                assert re.search(rf"^\s*TresPerJob=gres:gpu:{re.escape(model)}:1$", facts["scontrol"], re.M), facts
        else:
            assert not facts["CUDA_VISIBLE_DEVICES"] and not facts["SLURM_JOB_GPUS"], f"{rule} sees a GPU: {facts}"
            assert _gpus(tres.group(1)) == 0, f"{rule}: scontrol shows TRES={tres.group(1)}"
    assert seen & tiny.case.gpu_rules and seen & tiny.case.cpu_rules, f"env files only from {seen}"
    asked = tiny.config.get("gpu_model")
    assert models_seen == ({asked} if asked else set()), f"gpu_model asked {asked}, granted {models_seen}"


def test_job_failing_once_is_retried(tiny):
    states = [row["State"] for row in _jobs_of(tiny, "flaky")]
    assert states == ["FAILED", "COMPLETED"], f"Slurm jobs of flaky: {states}"
    assert "Trying to restart job" in tiny.log


# ---- t2i: the real workflow -------------------------------------------------------------------

def _provenance(runs: SimpleNamespace, path: str) -> dict:
    return json.loads((runs.slurm_dir / path).read_text())


def test_train_jobs_ran_on_their_granted_gpus(t2i):
    for exp, gpus in (("exp_a", 1), ("exp_mp", 2)):
        prov = _provenance(t2i, f"results/{exp}/train/model/provenance.json")
        scheduler = prov["device"]["scheduler"]
        row = t2i.sacct[scheduler["SLURM_JOB_ID"]]
        assert _rule_of(row) == "train" and f"_wildcards_{exp}" in row["Comment"], row
        assert _gpus(row["AllocTRES"]) == gpus, row
        assert len(scheduler["CUDA_VISIBLE_DEVICES"].split(",")) == gpus, scheduler
        assert prov["num_processes"] == gpus, prov
    model = t2i.config["experiments"]["exp_a"]["resources"]["gpu_model"]
    if model:  # the rule hands the model to the plugin (the tiny case shows Slurm granting it)
        blocks = re.findall(r"^rule train:\n((?:    .*\n)+)", t2i.log, re.MULTILINE)
        exp_a = [b for b in blocks if "wildcards: exp=exp_a" in b]
        assert exp_a and all(f"gpu_model={model}" in b for b in exp_a), blocks


def test_preempted_training_is_resubmitted_and_resumes(t2i):
    assert t2i.during.get("job"), f"exp_a's training was never caught running to be pre-empted: {t2i.during}"
    assert t2i.during["scancel"] == 0, t2i.during
    trains = _jobs_of(t2i, "train", "_wildcards_exp_a")
    assert [row["JobIDRaw"] for row in trains][0] == t2i.during["job"]
    assert [row["State"] for row in trains][-1] == "COMPLETED" and len(trains) == 2, trains
    assert trains[0]["State"] != "COMPLETED", trains
    log = (t2i.slurm_dir / "results/logs/exp_a/train.log").read_text()
    resumed = re.search(r"resuming at step (\d+)", log)
    assert resumed and PREEMPT_AT <= int(resumed.group(1)) < TRAIN_STEPS, log[-3000:]
    # and its final weights equal the uninterrupted local run's (test_outputs_match_local_run[t2i])


def test_two_process_training_follows_the_one_process_curve(t2i):
    def losses(exp):
        rows = (t2i.slurm_dir / f"results/{exp}/train/model/train_log.jsonl").read_text().splitlines()
        return [json.loads(row)["loss"] for row in rows]

    one, two = losses("exp_a")[:MP_STEPS // 10], losses("exp_mp")
    assert len(one) == len(two) == MP_STEPS // 10
    meta = json.loads((t2i.slurm_dir / "results/exp_mp/train/state/meta.json").read_text())
    assert meta["num_processes"] == 2
    start, end = (lambda c: sum(c[:3]) / 3), (lambda c: sum(c[-3:]) / 3)
    for curve in (one, two):
        assert end(curve) < 0.75 * start(curve), curve
    # the same global batches in the same order: only the loss noise differs
    assert start(two) == pytest.approx(start(one), rel=0.2), (one, two)
    assert end(two) == pytest.approx(end(one), rel=0.3), (one, two)
