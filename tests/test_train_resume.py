"""Crash safety: SIGKILL/SIGTERM mid-run, resume bit-identically, raise steps, config changes."""
import json
import logging
import shutil
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from t2i.checkpoints.hashing import write_sha256sums
from toy_training import ToySystem, assert_same_weights, log_rows, saved_step, spawn, wait_for

CFG = {"steps": 200, "batch_size": 16, "lr": 1e-2, "warmup_steps": 10, "ema_decays": [0.9, 0.5],
       "save_every": 25, "log_every": 5, "seed": 0}
WEIGHTS = ("model/model.safetensors", "weights/net.raw.safetensors", "weights/net.ema-0.5.safetensors")


def train(out_dir, inputs=None, **overrides):
    return ToySystem().train({"train": {**CFG, **overrides}}, inputs or {}, out_dir)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    out = tmp_path / "run"
    proc = spawn(tmp_path, out, CFG, "first.log", sleep_s=0.02)  # slow steps: the kill lands mid-run
    wait_for(lambda: saved_step(out) > 0)
    proc.kill()
    proc.wait()
    assert not (out / "model").exists()

    proc = spawn(tmp_path, out, CFG, "second.log")
    assert proc.wait(timeout=120) == 0, (tmp_path / "second.log").read_text()
    log = (tmp_path / "second.log").read_text()
    resumed = int(log.split("resuming at step ")[1].split()[0])
    assert 0 < resumed < CFG["steps"]

    train(tmp_path / "reference")
    assert_same_weights(out, tmp_path / "reference", WEIGHTS)
    # The RNG and data order were restored exactly: the logged losses match too.
    reference = log_rows(tmp_path / "reference")
    assert [(r["step"], r["loss"]) for r in log_rows(out)] == [(r["step"], r["loss"]) for r in reference]


def test_sigterm_saves_the_current_step_and_fails(tmp_path):
    out = tmp_path / "run"
    cfg = {**CFG, "steps": 100_000, "save_every": 100_000}  # no periodic save before the signal
    proc = spawn(tmp_path, out, cfg, "run.log", sleep_s=0.005)
    wait_for(lambda: "starting fresh" in (tmp_path / "run.log").read_text())
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    step = saved_step(out)
    assert 0 < step < cfg["steps"]
    assert f"interrupted by SIGTERM at step {step}" in (tmp_path / "run.log").read_text()
    assert not (out / "model").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_raising_steps_runs_only_the_extra_steps(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    train(out, steps=20, log_every=1)
    started = time.time()
    result = train(out, steps=30, log_every=1)
    assert "resuming at step 20" in caplog.text
    assert result["resumed_from"] == 20 and result["steps_run"] == 10
    log = log_rows(out)
    assert [r["step"] for r in log] == list(range(1, 31))
    assert [r["step"] for r in log if r["time"] >= started] == list(range(21, 31))
    train(tmp_path / "direct", steps=30, log_every=1)
    assert_same_weights(out, tmp_path / "direct", WEIGHTS)


def test_changing_lr_starts_fresh(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    train(out, steps=10)
    started = time.time()
    result = train(out, steps=10, lr=2e-2)
    assert "starting fresh: train config changed (lr: 0.01 -> 0.02)" in caplog.text
    assert result["resumed_from"] == 0 and result["steps_run"] == 10
    assert all(r["time"] >= started for r in log_rows(out))
    train(tmp_path / "direct", steps=10, lr=2e-2)
    assert_same_weights(out, tmp_path / "direct", WEIGHTS)


def test_a_state_past_the_steps_stops_with_what_to_do_and_keeps_the_state(tmp_path):
    """Lowering train.steps below a saved state: its weights are not the model of the new steps (the old
    behaviour exported them under the shorter config), and deleting the state must be the user's choice."""
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    train(out, steps=20)
    with pytest.raises(ValueError, match=r"holds step 20, past train.steps=10.*delete .*state"):
        train(out, steps=10)
    assert json.loads((out / "state" / "meta.json").read_text())["step"] == 20
    shutil.rmtree(out / "state")
    train(out, steps=10)
    train(fresh, steps=10)
    shortened, reference = load_file(out / "model" / "model.safetensors"), load_file(fresh / "model" / "model.safetensors")
    assert all(torch.equal(shortened[k], reference[k]) for k in reference)


def _folder(path, content):
    path.mkdir(parents=True, exist_ok=True)
    (path / "data.txt").write_text(content)
    write_sha256sums(path)
    return path


def test_a_changed_input_starts_fresh_and_names_it(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out, encoder = tmp_path / "run", _folder(tmp_path / "encoder", "v1")
    train(out, {"text_encoder": encoder}, steps=10)
    (encoder / "data.txt").write_text("v1")  # rewritten, same content: resumes
    assert train(out, {"text_encoder": encoder}, steps=15)["resumed_from"] == 10
    _folder(encoder, "v2")
    result = train(out, {"text_encoder": encoder}, steps=15)
    assert "starting fresh: input changed: 'text_encoder'" in caplog.text and result["resumed_from"] == 0
    (tmp_path / "unhashed").mkdir()
    with pytest.raises(FileNotFoundError, match="input 'base' .*unhashed.* has no SHA256SUMS"):
        train(out, {"base": tmp_path / "unhashed"})


def test_a_swap_interrupted_by_a_kill_is_recovered(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    train(out, steps=20)
    shutil.move(out / "state", out / ".state.old")  # killed between the two renames of a save
    result = train(out, steps=30)
    assert result["resumed_from"] == 20 and not (out / ".state.old").exists()
