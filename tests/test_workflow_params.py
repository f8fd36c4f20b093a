"""The params slices decide what a config edit reruns: each rule sees only what its output depends on."""
import copy
from pathlib import Path

import yaml

from t2i import workflow as wf
from t2i.config import validate_config
from t2i.status import classify, owner, summarize

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "train", "sample", "evaluate")


def _changed(edit):
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    before = validate_config(raw)
    after_raw = copy.deepcopy(raw)
    edit(after_raw)
    after = validate_config(after_raw)
    changed = {stage for stage in STAGES
               if wf.stage_experiment(before, "shapes_jit", stage) != wf.stage_experiment(after, "shapes_jit", stage)}
    if wf.dataset_config(before, "shapes32") != wf.dataset_config(after, "shapes32"):
        changed.add("dataset")
    return changed


def test_sample_knob_touches_only_sampling():
    assert _changed(lambda c: c["experiments"]["shapes_jit"]["sample"].update(cfg=3.0)) == {"sample"}


def test_adding_a_prompt_set_does_not_touch_existing_samples():
    assert _changed(lambda c: c["experiments"]["shapes_jit"]["sample"].update(prompt_sets=["test", "holdout", "long"])) == set()


def test_train_knob_touches_only_training():
    assert _changed(lambda c: c["experiments"]["shapes_jit"]["train"].update(blr=2e-3)) == {"train"}


def test_text_encoder_touches_prepare_and_sample():
    # sampling encodes its prompts with the same encoder settings
    assert _changed(lambda c: c["experiments"]["shapes_jit"]["text_encoder"].update(max_length=16)) == {"prepare", "sample"}


def test_evaluate_knob_touches_only_evaluation():
    assert _changed(lambda c: c["experiments"]["shapes_jit"]["evaluate"].update(batch_size=50)) == {"evaluate"}


def test_resources_touch_no_output():
    assert _changed(lambda c: c["experiments"]["shapes_jit"]["resources"].update(mem_mb=9000)) == set()


def test_dataset_seed_touches_only_the_dataset():
    # downstream stages rerun because their input files change, not through their params
    assert _changed(lambda c: c["datasets"]["shapes32"].update(seed=5)) == {"dataset"}


def test_stage_sees_only_its_blocks():
    cfg = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    assert set(wf.stage_experiment(cfg, "shapes_jit", "train")) == {"name", "system", "model", "train"}
    assert "prompt_sets" not in wf.stage_experiment(cfg, "shapes_jit", "sample")["sample"]


def test_gpu_model_only_when_gpus_requested():
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    raw["experiments"]["shapes_jit"]["resources"].update(gpu=2, gpu_model="a100")
    res = wf.heavy_resources(validate_config(raw), "shapes_jit")
    assert res["gpu"] == 2 and res["gpu_model"] == "a100"
    raw["experiments"]["shapes_jit"]["resources"].update(gpu=0)
    assert wf.heavy_resources(validate_config(raw), "shapes_jit")["gpu_model"] is None


def test_status_summary_parsing():
    tsv = "output_file\tdate\trule\tlog-file(s)\tstatus\tplan\n" \
          "results/a/train/model.safetensors\tx\ttrain\t-\tok\tno update\n" \
          "results/a/train/model_config.json\tx\ttrain\t-\tparams changed\tupdate pending\n" \
          "results/a/samples/test\t-\tsample\t-\tmissing\tupdate pending\n" \
          "results/datasets/s/SHA256SUMS\tx\tdataset\t-\tok\tno update\n"
    table = summarize(tsv, ["a"])
    assert table == {"a": {"train": "stale", "sample": "missing"}, "shared": {"dataset": "done"}}
    assert classify("ok", "no update") == "done" and owner("results/report/index.html", ["a"]) == "shared"
