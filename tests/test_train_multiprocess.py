"""``launch_training`` with 2 CPU processes (gloo through ``accelerate launch``) matches 1 process."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from t2i.train.launch import launch_training
from t2i.utils.device import ALLOW_CPU_ENV, NoGPUError

TESTS = Path(__file__).resolve().parent
CFG = {"steps": 100, "batch_size": 16, "lr": 1e-2, "warmup_steps": 10, "ema_decays": [0.9],
       "save_every": 50, "log_every": 10, "seed": 0}
EXP = {"name": "toy", "system": "toy_training:ToySystem", "train": CFG}


@pytest.fixture(autouse=True)
def toy_importable(monkeypatch):
    """The workers import ``toy_training`` from this folder; CPU stands in for the GPUs asked for."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv(ALLOW_CPU_ENV, "1")


def losses(out_dir):
    return [json.loads(line)["loss"] for line in (out_dir / "model" / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_follow_the_single_process_curve(tmp_path):
    launch_training(EXP, {}, tmp_path / "one", num_processes=1, gpus=1)
    launch_training(EXP, {}, tmp_path / "two", num_processes=2, gpus=2)
    assert (tmp_path / "two" / "state" / "random_states_1.pkl").exists()  # a second process really ran
    assert json.loads((tmp_path / "two" / "state" / "meta.json").read_text())["num_processes"] == 2
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 10
    for curve in (one, two):
        assert curve[-1] < 0.2 * curve[0]
    # Same global batches and data order; only the loss noise differs between the runs.
    assert two[0] == pytest.approx(one[0], rel=0.1)
    assert two[-1] == pytest.approx(one[-1], rel=0.3)
    assert (tmp_path / "two" / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_a_failing_worker_fails_the_launch(tmp_path):
    exp = {**EXP, "train": {**CFG, "batch_size": 15}}  # not divisible by 2 processes
    with pytest.raises(subprocess.CalledProcessError):
        launch_training(exp, {}, tmp_path / "out", num_processes=2, gpus=2)
    assert not (tmp_path / "out" / "model").exists()


def test_gpus_without_cuda_fail_before_launching(tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_CPU_ENV)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(NoGPUError, match="train toy: resources.gpu is 2"):
        launch_training(EXP, {}, tmp_path / "out", num_processes=2, gpus=2)
    assert not (tmp_path / "out").exists()
