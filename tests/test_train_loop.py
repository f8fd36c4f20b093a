"""The shared training loop: schedule, EMA, data order, outputs, determinism (on the toy task)."""
import json

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from t2i.train.ema import EMA
from t2i.train.loop import TRAIN_DEFAULTS, resolve_config
from t2i.train.optim import adamw_from_train_config, ema_from_train_config
from t2i.train.schedule import lr_at, peak_lr
from t2i.train.state import StepBatchSampler
from toy_training import ToySystem, assert_same_weights, log_rows, toy_model

CFG = {"steps": 60, "batch_size": 16, "lr": 1e-2, "warmup_steps": 5, "ema_decays": [0.9, 0.5],
       "save_every": 20, "log_every": 5, "seed": 0}


def train(out_dir, **overrides):
    return ToySystem().train({"train": {**CFG, **overrides}}, {}, out_dir)


def test_peak_lr_scales_blr_by_global_batch_unless_lr_is_given():
    assert peak_lr({"blr": 1e-4, "batch_size": 512, "lr": None}) == pytest.approx(2e-4)
    assert peak_lr({"blr": 1e-4, "batch_size": 512, "lr": 3e-3}) == 3e-3


def test_warmup_is_linear_then_constant_or_cosine():
    assert [lr_at(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(0, 2.0, 0) == 2.0
    cosine = [lr_at(s, 1.0, 2, "cosine", 6) for s in range(8)]
    assert cosine[:3] == [0.5, 1.0, 1.0] and cosine[4] == pytest.approx(0.5) and cosine[6:] == [0.0, 0.0]


def test_loop_defaults_and_the_conventional_optimizer():
    cfg = resolve_config({"steps": 7})
    assert cfg["steps"] == 7 and cfg["mixed_precision"] == TRAIN_DEFAULTS["mixed_precision"] == "auto"
    spec = adamw_from_train_config(toy_model(), {"blr": 1e-4, "batch_size": 512, "weight_decay": 0.1,
                                                 "warmup_steps": 3})
    assert spec.lr == pytest.approx(2e-4) and spec.betas == (0.9, 0.95) and spec.warmup_steps == 3
    decayed, plain = spec.groups
    assert decayed["weight_decay"] == 0.1 and all(p.ndim == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    assert ema_from_train_config("net", {"ema_decays": [0.5]}).decays == [0.5]


def _scalar_model():
    model = torch.nn.Linear(1, 1, bias=False)
    model.register_buffer("count", torch.tensor(0))
    with torch.no_grad():
        model.weight.fill_(0.0)
    return model


def test_ema_math_and_state_round_trip():
    model = _scalar_model()
    ema = EMA(model, [0.5, 0.9])
    for step, (value, count) in enumerate([(1.0, 1), (3.0, 2)]):
        with torch.no_grad():
            model.weight.fill_(value)
            model.count.fill_(count)
        ema.update(model, step)
    # 0.5: 0 -> 0.5 -> 1.75; 0.9: 0 -> 0.1 -> 0.39; integer buffers are copied.
    assert ema.weights(0.5)["weight"].item() == pytest.approx(1.75)
    assert ema.weights(0.9)["weight"].item() == pytest.approx(0.39)
    assert ema.weights(0.9)["count"].item() == 2
    restored = EMA(_scalar_model(), [0.5, 0.9])
    restored.load_state_dict(ema.state_dict())
    assert restored.weights(0.5)["weight"].item() == pytest.approx(1.75)
    assert restored.weights(0.9)["count"].item() == 2
    with pytest.raises(ValueError, match="differ"):
        EMA(model, [0.99]).load_state_dict(ema.state_dict())


def test_ema_ramp_uses_the_decay_of_each_step():
    model = _scalar_model()
    ema = EMA(model, ramp=lambda step: [0.0, 0.5][step])
    for step, value in enumerate([2.0, 4.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model, step)
    assert ema.labels == ["ramp"] and ema.weights("ramp")["weight"].item() == pytest.approx(3.0)  # 2, then 2 -> 3
    with pytest.raises(ValueError, match="not both"):
        EMA(model, [0.9], ramp=lambda step: 0.9)


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
    rows = log_rows(out)
    assert [r["step"] for r in rows] == list(range(5, 61, 5))
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"]
    assert result["last_log"] == rows[-1] and result["steps_run"] == 60
    assert rows[0]["lr"] == 1e-2 and rows[0]["time"] <= rows[-1]["time"]
    assert set(rows[0]) == {"step", "loss", "lr", "time"}


def test_outputs_exist_and_load(trained):
    from t2i.checkpoints.hashing import verify_sha256sums
    from t2i.report.curves import load_scalars

    out, _ = trained
    model = load_file(out / "model/model.safetensors")
    assert (out / "model/model.safetensors").read_bytes() == (out / "weights/net.ema-0.9.safetensors").read_bytes()
    raw, fast_ema = load_file(out / "weights/net.raw.safetensors"), load_file(out / "weights/net.ema-0.5.safetensors")
    assert not torch.equal(model["0.weight"], raw["0.weight"])
    assert not torch.equal(model["0.weight"], fast_ema["0.weight"])
    toy_model().load_state_dict(raw)  # strict: every key and shape matches
    toy_model().load_state_dict(model)
    assert {p.name for p in (out / "model").iterdir()} == {"model.safetensors", "config.json", "train_log.jsonl",
                                                           "provenance.json", "SHA256SUMS"}
    assert verify_sha256sums(out / "model") == 3
    provenance = json.loads((out / "model" / "provenance.json").read_text())
    assert provenance["config"]["train"]["steps"] == 60 and provenance["step"] == 60
    assert provenance["config"]["identity"] == {"model": "toy-mlp", "dim": 8}
    assert json.loads((out / "state" / "meta.json").read_text())["step"] == 60
    assert not list(out.glob(".*")) and not list(out.glob("*/.*"))  # no temporary files left behind
    assert not (out / "snapshots").exists()  # snapshot_every: 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"loss", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == list(range(5, 61, 5))
    curves = load_scalars(out)  # what the report plots
    assert set(curves) == {"loss", "lr"} and curves["loss"][0] == list(range(5, 61, 5))


def test_same_seed_is_bit_identical_and_seed_matters(trained, tmp_path):
    out, _ = trained
    train(tmp_path / "again")
    assert_same_weights(out, tmp_path / "again",
                        ("model/model.safetensors", "weights/net.raw.safetensors", "weights/net.ema-0.5.safetensors"))
    train(tmp_path / "other", seed=1)
    assert not torch.equal(load_file(out / "weights/net.raw.safetensors")["0.weight"],
                           load_file(tmp_path / "other/weights/net.raw.safetensors")["0.weight"])


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
    a, b = (load_file(tmp_path / run / "model" / "model.safetensors") for run in ("eager", "compiled"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert compiled["last_log"]["loss"] == pytest.approx(eager["last_log"]["loss"], rel=1e-3)

    resumed = train(tmp_path / "eager", steps=30, compile=True)  # state saved eager, continued compiled
    assert resumed["resumed_from"] == 20 and resumed["steps_run"] == 10


def test_runs_of_other_precisions_in_one_process(tmp_path, one_thread):
    """A benchmark or a recipe may train twice in one process: accelerate's per-process state must not refuse it."""
    train(tmp_path / "fp32", steps=4, mixed_precision="no")
    train(tmp_path / "bf16", steps=4, mixed_precision="bf16")
    assert json.loads((tmp_path / "bf16" / "model" / "provenance.json").read_text())["mixed_precision"] == "bf16"


class _PicturingTask:
    """The toy task that logs a picture every third step (as LPD logs its validation samples)."""

    def __new__(cls, cfg):
        from toy_training import ToyTask

        task = ToyTask(cfg)
        step = task.step

        def picturing(batch, i, ctx):
            out = step(batch, i, ctx)
            if (i + 1) % 3 == 0:
                ctx.log_images("validation/sample", torch.full((2, 3, 4, 5), (i + 1) / 10 - 1))
            return out

        task.step = picturing
        return task


def test_task_images_and_the_wandb_sink(tmp_path, monkeypatch):
    """Images a task logs land as PNG rows and TensorBoard images; report_to wandb sends scalars and images to a
    W&B run (a stand-in module: the real one is imported only for wandb), and without the package says so."""
    import sys
    import types

    from PIL import Image

    from t2i.train.loop import run_training
    from toy_training import ToyDataset

    cfg = {**CFG, "steps": 6, "log_every": 3, "save_every": 3}
    logged, inits = [], []
    fake = types.ModuleType("wandb")
    fake.Image = lambda array: ("image", array.shape)
    fake.init = lambda **kw: inits.append(kw) or types.SimpleNamespace(
        log=lambda data, step: logged.append((step, data)), finish=lambda: logged.append(("finished",)))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run_training(_PicturingTask(cfg), ToyDataset(), {**cfg, "report_to": "wandb", "mixed_precision": "no"}, tmp_path)
    with Image.open(tmp_path / "images" / "validation" / "sample" / "0000006.png") as img:
        assert img.size == (10, 4)  # the two pictures side by side
        assert img.getpixel((0, 0)) == (76, 76, 76)  # (-0.4 + 1) * 127.5 = 76.5, rounded to even
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("validation/sample")] == [3, 6]
    assert inits[0]["resume"] == "allow" and inits[0]["config"]["train"]["steps"] == 6
    assert inits[0]["id"] == (tmp_path / "wandb_run_id").read_text()  # a resumed run logs into the same W&B run
    assert [s for s, d in logged[:-1] if "loss" in d] == [3, 6] and logged[-1] == ("finished",)
    assert [s for s, d in logged[:-1] if "validation/sample" in d] == [3, 6]

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ImportError, match="report_to is wandb but the wandb package is not installed"):
        run_training(_PicturingTask(cfg), ToyDataset(), {**cfg, "report_to": "wandb"}, tmp_path / "again")
