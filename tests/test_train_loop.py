"""The shared training loop: schedule, EMA, data order, outputs, determinism."""
import json

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from t2i.train.ema import EMA
from t2i.train.loop import resolve_config, train_defaults
from t2i.train.schedule import lr_at, peak_lr
from t2i.train.state import StepBatchSampler
from toy_training import ToySystem, toy_model

CFG = {"steps": 60, "batch_size": 16, "lr": 1e-2, "warmup_steps": 5, "ema_decays": [0.9, 0.5],
       "save_every": 20, "log_every": 5, "seed": 0}


def train(out_dir, **overrides):
    return ToySystem().train({"train": {**CFG, **overrides}}, None, out_dir)


def read_rows(out_dir):
    return [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_peak_lr_scales_blr_by_global_batch_unless_lr_is_given():
    assert peak_lr({"blr": 1e-4, "batch_size": 512, "lr": None}) == pytest.approx(2e-4)
    assert peak_lr({"blr": 1e-4, "batch_size": 512, "lr": 3e-3}) == 3e-3


def test_warmup_is_linear_then_constant():
    assert [lr_at(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(0, 2.0, 0) == 2.0


def test_defaults_come_from_the_config_schema():
    defaults = train_defaults()
    assert defaults["betas"] == [0.9, 0.95] and defaults["mixed_precision"] == "auto"
    cfg = resolve_config({"steps": 7})
    assert cfg["steps"] == 7 and cfg["grad_clip"] == defaults["grad_clip"]


def _scalar_model():
    model = torch.nn.Linear(1, 1, bias=False)
    model.register_buffer("count", torch.tensor(0))
    with torch.no_grad():
        model.weight.fill_(0.0)
    return model


def test_ema_math_and_state_round_trip():
    model = _scalar_model()
    ema = EMA(model, [0.5, 0.9])
    for value, count in [(1.0, 1), (3.0, 2)]:
        with torch.no_grad():
            model.weight.fill_(value)
            model.count.fill_(count)
        ema.update(model)
    # 0.5: 0 -> 0.5 -> 1.75; 0.9: 0 -> 0.1 -> 0.39; integer buffers are copied.
    assert ema.weights(0.5)["weight"].item() == pytest.approx(1.75)
    assert ema.weights(0.9)["weight"].item() == pytest.approx(0.39)
    assert ema.weights(0.9)["count"].item() == 2
    restored = EMA(_scalar_model(), [0.5, 0.9])
    restored.load_state_dict(ema.state_dict())
    assert restored.weights(0.5)["weight"].item() == pytest.approx(1.75)
    assert restored.weights(0.9)["count"].item() == 2
    with pytest.raises(ValueError, match="decays"):
        EMA(model, [0.99]).load_state_dict(ema.state_dict())


def test_data_order_is_a_function_of_the_step():
    def batches(rank, world, start, stop):
        return list(StepBatchSampler(10, 4, rank=rank, world=world, seed=3, start=start, stop=stop))

    full = batches(0, 1, 0, 6)
    assert sorted(sum(full[:2], [])) == sorted(set(sum(full[:2], [])))  # no repeats within an epoch (2 batches)
    assert full[:2] != full[2:4]  # each epoch reshuffles
    assert batches(0, 1, 3, 6) == full[3:]  # resuming at step 3 continues the same order
    # Two processes split every global batch between them.
    assert [a + b for a, b in zip(batches(0, 2, 0, 6), batches(1, 2, 0, 6))] == full


def test_batch_size_errors_name_the_key():
    with pytest.raises(ValueError, match="train.batch_size .* larger than the dataset"):
        StepBatchSampler(8, 16, rank=0, world=1, seed=0, start=0, stop=1)
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        StepBatchSampler(64, 15, rank=0, world=2, seed=0, start=0, stop=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    return out, train(out)


def test_loss_decreases(trained):
    out, result = trained
    rows = read_rows(out)
    assert [r["step"] for r in rows] == list(range(5, 61, 5))
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"]
    assert result["loss"] == rows[-1]["loss"] and result["steps_run"] == 60
    assert rows[0]["lr"] == 1e-2 and rows[0]["time"] <= rows[-1]["time"]


def test_outputs_exist_and_load(trained):
    out, _ = trained
    model = load_file(out / "model.safetensors")
    assert_same_weights(model, load_file(out / "ema_0.9.safetensors"))
    raw, fast_ema = load_file(out / "raw.safetensors"), load_file(out / "ema_0.5.safetensors")
    assert not torch.equal(model["0.weight"], raw["0.weight"])
    assert not torch.equal(model["0.weight"], fast_ema["0.weight"])
    toy_model().load_state_dict(raw)  # strict: every key and shape matches
    toy_model().load_state_dict(model)
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["config"]["train"]["steps"] == 60 and provenance["step"] == 60
    assert json.loads((out / "state" / "meta.json").read_text())["step"] == 60
    assert not list(out.glob(".*"))  # no temporary files or directories left behind
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train_loss", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train_loss")] == list(range(5, 61, 5))


def test_same_seed_is_bit_identical_and_seed_matters(trained, tmp_path):
    out, _ = trained
    train(tmp_path / "again")
    for name in ("model.safetensors", "raw.safetensors", "ema_0.5.safetensors"):
        assert_same_weights(load_file(out / name), load_file(tmp_path / "again" / name))
    train(tmp_path / "other", seed=1)
    assert not torch.equal(load_file(out / "raw.safetensors")["0.weight"],
                           load_file(tmp_path / "other" / "raw.safetensors")["0.weight"])


def test_resume_state_needs_no_unpickling(trained):
    """Resuming unpickles nothing: the EMA is safetensors, accelerate's files load weights-only."""
    from accelerate.utils.other import load as accelerate_load  # what load_state uses: weights_only=True

    state = trained[0] / "state"
    assert (state / "extra.safetensors").is_file() and not list(state.glob("custom_checkpoint_*"))
    for path in state.glob("*"):
        if path.suffix in (".bin", ".pkl"):
            accelerate_load(path, weights_only=True)


def test_wants_compile_resolves_auto_by_device():
    from t2i.utils.compile import wants_compile

    assert wants_compile("auto", "cuda") and not wants_compile("auto", "cpu")
    assert wants_compile(True, "cpu") and not wants_compile(False, "cuda")


@pytest.mark.slow
def test_compiled_training_matches_eager_and_resumes_across_the_switch(tmp_path):
    """``compile: true`` trains the same network (same state keys, same curve) and may change between resumes."""
    import torch._dynamo

    eager = train(tmp_path / "eager", steps=20, compile=False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = train(tmp_path / "compiled", steps=20, compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the forward really went through dynamo
    a, b = load_file(tmp_path / "eager" / "model.safetensors"), load_file(tmp_path / "compiled" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-3)

    resumed = train(tmp_path / "eager", steps=30, compile=True)  # state saved eager, continued compiled
    assert resumed["resumed_from"] == 20 and resumed["steps_run"] == 10
