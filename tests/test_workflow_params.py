"""The params slices decide what a config edit reruns: each rule sees only what its output depends on."""
import copy
from pathlib import Path

import yaml

from t2i import workflow as wf
from t2i.config import validate_config
from t2i.status import classify, owner, summarize

ROOT = Path(__file__).resolve().parents[1]
SLICES = {
    "prepare": wf.prepare_params,
    "train": wf.train_params,
    "sample": wf.sample_params,
    "evaluate": wf.evaluate_params,
}


def _changed(edit):
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    before = validate_config(raw)
    after_raw = copy.deepcopy(raw)
    edit(after_raw)
    after = validate_config(after_raw)
    return {rule for rule, fn in SLICES.items() if fn(before, "shapes_jit") != fn(after, "shapes_jit")}


def test_sample_knob_touches_only_sampling():
    assert _changed(lambda c: c["experiments"]["shapes_jit"]["sample"].update(cfg=3.0)) == {"sample"}


def test_adding_a_prompt_set_does_not_touch_existing_samples():
    assert _changed(lambda c: c["experiments"]["shapes_jit"]["sample"].update(prompt_sets=["test", "holdout", "long"])) == set()


def test_train_knob_touches_only_training():
    assert _changed(lambda c: c["experiments"]["shapes_jit"]["train"].update(blr=2e-3)) == {"train"}


def test_text_encoder_touches_prepare():
    assert _changed(lambda c: c["experiments"]["shapes_jit"]["text_encoder"].update(max_length=16)) == {"prepare"}


def test_dataset_seed_touches_prepare():
    assert _changed(lambda c: c["datasets"]["shapes32"].update(seed=5)) == {"prepare"}


def test_gpu_model_only_when_gpus_requested():
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["experiments"]["shapes_jit"]["resources"].update(gpu=2, gpu_model="a100")
    res = wf.heavy_resources(validate_config(raw), "shapes_jit")
    assert res["gpu"] == 2 and res["gpu_model"] == "a100"
    raw["experiments"]["shapes_jit"]["resources"].update(gpu=0)
    assert "gpu_model" not in wf.heavy_resources(validate_config(raw), "shapes_jit")


def test_status_summary_parsing():
    tsv = "output_file\tdate\trule\tlog-file(s)\tstatus\tplan\n" \
          "results/a/train/model.safetensors\tx\ttrain\t-\tok\tno update\n" \
          "results/a/train/model_config.json\tx\ttrain\t-\tparams changed\tupdate pending\n" \
          "results/a/samples/test\t-\tsample\t-\tmissing\tupdate pending\n" \
          "results/datasets/s/SHA256SUMS\tx\tdataset\t-\tok\tno update\n"
    table = summarize(tsv, ["a"])
    assert table == {"a": {"train": "stale", "sample": "missing"}, "shared": {"dataset": "done"}}
    assert classify("ok", "no update") == "done" and owner("results/report/index.html", ["a"]) == "shared"
