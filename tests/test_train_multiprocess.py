"""``launch`` with 2 CPU processes (gloo through ``accelerate launch``) matches 1 process."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from t2i.train.launch import launch
from toy_training import write_exp

TESTS = Path(__file__).resolve().parent
CFG = {"steps": 100, "batch_size": 16, "lr": 1e-2, "warmup_steps": 10, "ema_decays": [0.9],
       "save_every": 50, "log_every": 10, "seed": 0}

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def toy_importable(monkeypatch):
    """The workers import ``toy_training`` from this folder."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def losses(out_dir):
    return [json.loads(line)["loss"] for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


def test_two_processes_follow_the_single_process_curve(tmp_path):
    exp = write_exp(tmp_path / "exp.json", CFG)
    launch([exp, tmp_path, tmp_path / "one"], num_processes=1, cpu=True)
    launch([exp, tmp_path, tmp_path / "two"], num_processes=2, cpu=True)
    assert (tmp_path / "two" / "state" / "random_states_1.pkl").exists()  # a second process really ran
    assert json.loads((tmp_path / "two" / "state" / "meta.json").read_text())["num_processes"] == 2
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 10
    for curve in (one, two):
        assert curve[-1] < 0.2 * curve[0]
    # Same global batches and data order; only the loss noise differs between the runs.
    assert two[0] == pytest.approx(one[0], rel=0.1)
    assert two[-1] == pytest.approx(one[-1], rel=0.3)
    assert (tmp_path / "two" / "model.safetensors").exists()


def test_a_failing_worker_fails_the_launch(tmp_path):
    exp = write_exp(tmp_path / "exp.json", {**CFG, "batch_size": 15})  # not divisible by 2 processes
    with pytest.raises(subprocess.CalledProcessError):
        launch([exp, tmp_path, tmp_path / "out"], num_processes=2, cpu=True)
    assert not (tmp_path / "out" / "model.safetensors").exists()
