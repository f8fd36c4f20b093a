"""Params and inputs decide what a config edit reruns: each rule sees only what its output depends on."""
import copy
from pathlib import Path

import pytest
import yaml

from t2i import workflow as wf
from t2i.config import validate_config
from t2i.status import classify, owner, summarize

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "train", "sample", "evaluate")


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def _changed(raw, edit):
    """The stages (and the dataset, and the report) whose params an edit of config.yaml changes."""
    before = validate_config(raw)
    after_raw = copy.deepcopy(raw)
    edit(after_raw)
    after = validate_config(after_raw)
    changed = {stage for stage in STAGES
               if wf.stage_params(before, "shapes_jit", stage) != wf.stage_params(after, "shapes_jit", stage)}
    if wf.canonical(wf.dataset_config(before, "shapes32")) != wf.canonical(wf.dataset_config(after, "shapes32")):
        changed.add("dataset")
    if wf.report_params(before) != wf.report_params(after):
        changed.add("report")
    return changed


def _exp(c):
    return c["experiments"]["shapes_jit"]


@pytest.mark.parametrize("edit, expected", [
    (lambda c: _exp(c)["sample"].update(cfg=3.0), {"sample", "report"}),
    (lambda c: _exp(c)["sample"].update(prompt_sets=["test", "holdout", "long"]), {"report"}),
    (lambda c: _exp(c)["train"].update(blr=2e-3), {"train", "report"}),
    (lambda c: _exp(c)["text"].update(max_length=16), {"prepare", "sample", "report"}),
    (lambda c: _exp(c)["evaluate"].update(kid_subset_size=50), {"evaluate", "report"}),
    (lambda c: _exp(c)["resources"].update(mem_mb=9000, prepare={"runtime": 5}, priority=3), set()),
    (lambda c: c["datasets"]["shapes32"].update(seed=5), {"dataset"}),
    # speed-only knobs change nothing already produced
    (lambda c: _exp(c)["sample"].update(gen_bsz=7, compile=True), set()),
    (lambda c: _exp(c)["train"].update(log_every=1, save_every=3, num_workers=4, compile=True), set()),
    (lambda c: _exp(c)["evaluate"].update(batch_size=50), set()),
])
def test_an_edit_changes_exactly_these_params(raw, edit, expected):
    assert _changed(raw, edit) == expected


def test_key_order_changes_no_params(raw):
    """Swapping keys (or loading through yaml.safe_dump's sorted keys) reruns nothing."""
    def reorder(c):
        ds = c["datasets"]["shapes32"]
        c["datasets"]["shapes32"] = dict(reversed(list(ds.items())))
        c["experiments"]["shapes_jit"] = dict(reversed(list(_exp(c).items())))
        _exp(c)["train"] = dict(sorted(_exp(c)["train"].items()))

    assert _changed(raw, reorder) == set()
    assert _changed(raw, lambda c: c.update(yaml.safe_load(yaml.safe_dump(c, sort_keys=True)))) == set()


def test_stage_sees_only_its_blocks(raw):
    cfg = validate_config(raw)
    assert set(wf.stage_experiment(cfg, "shapes_jit", "train")) == {"name", "system", "model", "train"}
    assert "prompt_sets" not in wf.stage_experiment(cfg, "shapes_jit", "sample")["sample"]
    assert "gen_bsz" in wf.stage_experiment(cfg, "shapes_jit", "sample")["sample"]  # the job still gets it
    assert "gen_bsz" not in wf.stage_params(cfg, "shapes_jit", "sample")


def test_stage_inputs_by_role(raw):
    cfg = validate_config(raw)
    assert wf.stage_inputs(cfg, "shapes_jit", "prepare") == {
        "dataset": "results/datasets/shapes32/SHA256SUMS", "text_encoder": "results/pretrained/minilm"}
    assert wf.stage_inputs(cfg, "shapes_jit", "train") == {
        "dataset": "results/datasets/shapes32/SHA256SUMS", "prepared": "results/shapes_jit/prepared"}
    assert wf.stage_inputs(cfg, "shapes_jit", "sample") == {
        "dataset": "results/datasets/shapes32/SHA256SUMS", "text_encoder": "results/pretrained/minilm",
        "model": "results/shapes_jit/train/model"}
    raw = copy.deepcopy(raw)
    raw["experiments"]["ft"] = {**copy.deepcopy(_exp(raw)),
                                "inputs": {"text_encoder": {"asset": "minilm"}, "init": {"experiment": "shapes_jit"}}}
    cfg = validate_config(raw)
    assert wf.stage_inputs(cfg, "ft", "train")["init"] == "results/shapes_jit/train/model"
    assert wf.input_folders(wf.stage_inputs(cfg, "ft", "train")) == {
        "dataset": Path("results/datasets/shapes32"), "prepared": Path("results/ft/prepared"),
        "init": Path("results/shapes_jit/train/model")}


def test_stage_resources_inherit_the_train_job_with_one_gpu(raw):
    raw = copy.deepcopy(raw)
    _exp(raw)["resources"].update(gpu=8, gpu_model="h100", runtime=4320, prepare={"runtime": 120})
    cfg = validate_config(raw)
    train, prepare, sample = (wf.stage_resources(cfg, "shapes_jit", s) for s in ("train", "prepare", "sample"))
    assert train["gpu"] == 8 and train["runtime"] == 4320 and train["gpu_model"] == "h100"
    assert prepare["gpu"] == 1 and prepare["runtime"] == 120 and prepare["gpu_model"] == "h100"
    assert sample["gpu"] == 1 and sample["runtime"] == 4320
    assert wf.evaluation_gpu(cfg, "shapes32") == 1
    _exp(raw)["resources"].update(gpu=0)
    cfg = validate_config(raw)
    assert wf.stage_resources(cfg, "shapes_jit", "evaluate")["gpu_model"] is None
    assert wf.evaluation_gpu(cfg, "shapes32") == 0


def test_a_priority_reaches_every_job_the_experiment_waits_on(raw):
    """config.yaml gives LAFITE's long training priority 1: its CLIP and its evaluation's extractor start first;
    an experiment reading another's model raises that experiment and, through it, its assets."""
    p = wf.scheduling_priorities(validate_config(raw))
    assert p[("experiment", "shapes_lafite")] == 1
    assert p[("asset", "shapes-clip")] == p[("asset", "shapes-cnn")] == 1
    assert p[("experiment", "shapes_jit")] == p[("asset", "shapes-sd3")] == p[("asset", "minilm")] == 0
    raw = copy.deepcopy(raw)
    ft = copy.deepcopy(raw["experiments"]["shapes_pixel_sdxl"])
    ft["inputs"]["init"] = {"experiment": "shapes_pixel_sdxl"}
    ft["resources"]["priority"] = 5
    raw["experiments"]["pixel_ft"] = ft
    raw["run"] = ["pixel_ft", "shapes_lpd"]
    raw["experiments"]["shapes_lpd"]["resources"] = {"priority": 2}
    p = wf.scheduling_priorities(validate_config(raw))
    assert p[("experiment", "pixel_ft")] == p[("experiment", "shapes_pixel_sdxl")] == 5
    assert p[("asset", "shapes-clip")] == p[("asset", "shapes-cnn")] == 5
    assert p[("asset", "shapes-sd3")] == p[("asset", "minilm")] == 2  # the SD3 base and what it is trained from
    assert ("experiment", "shapes_jit") not in p and ("asset", "shapes-gligen") not in p


def test_status_summary_parsing():
    tsv = "output_file\tdate\trule\tlog-file(s)\tstatus\tplan\n" \
          "results/a/train/model\tx\ttrain\t-\tparams changed\tupdate pending\n" \
          "results/a/samples/test\t-\tsample\t-\tmissing\tupdate pending\n" \
          "results/datasets/s/SHA256SUMS\tx\tdataset\t-\tok\tno update\n"
    table = summarize(tsv, ["a"])
    assert table == {"a": {"train": "stale", "sample": "missing"}, "shared": {"dataset": "done"}}
    assert classify("ok", "no update") == "done" and owner("results/report/index.html", ["a"]) == "shared"


def test_each_fidelity_family_reads_its_own_reference(raw):
    from t2i.eval.registry import family_inputs

    raw = copy.deepcopy(raw)
    _exp(raw)["evaluate"]["families"] = ["shapes", "fidelity", "fidelity_train"]
    inputs = family_inputs(validate_config(raw), "shapes_jit", "test")
    assert inputs == {"extractor": "results/pretrained/shapes-cnn",
                      "reference": "results/datasets/shapes32/fidelity/shapes-cnn/shapes-cnn/test.npz",
                      "reference_train": "results/datasets/shapes32/fidelity/shapes-cnn/shapes-cnn/split-train.npz"}


def test_a_model_role_samples_an_asset_instead_of_training(raw):
    """LAFITE's `model` role (e.g. the original's snapshot, converted): sampling reads the asset, and
    nothing the experiment samples or evaluates needs its train stage."""
    raw = copy.deepcopy(raw)
    raw["pretrained"]["lafite-orig"] = {"source": "local", "path": "/data/network-snapshot-006000.pkl",
                                        "convert": "lafite-snapshot"}
    raw["experiments"]["orig"] = {**copy.deepcopy(raw["experiments"]["shapes_lafite"]),
                                  "inputs": {"clip": {"asset": "shapes-clip"}, "model": {"asset": "lafite-orig"}}}
    cfg = validate_config(raw)
    sample = wf.stage_inputs(cfg, "orig", "sample")
    assert sample["model"] == "results/pretrained/lafite-orig"
    assert all("/orig/" not in path for path in sample.values())
    assert wf.stage_inputs(cfg, "shapes_lafite", "sample")["model"] == "results/shapes_lafite/train/model"
    raw["pretrained"]["lafite-orig"]["convert"] = "stylegan3"
    with pytest.raises(Exception, match="convert"):
        validate_config(raw)


def test_lpd_experiments_that_sample_the_base_alone_have_no_train_stage(raw):
    config = validate_config(raw)
    assert wf.trains(config, "shapes_lpd") and not wf.trains(config, "shapes_lpd_base")
    assert not wf.trains(config, "shapes_lpd_sentences")
    assert "model" not in wf.stage_inputs(config, "shapes_lpd_base", "sample")
    assert wf.stage_inputs(config, "shapes_lpd", "sample")["model"] == wf.model_dir("shapes_lpd")


def test_an_image_archive_is_one_download_for_every_dataset_naming_it(raw):
    edited = copy.deepcopy(raw)
    url = "http://images.cocodataset.org/zips/train2017.zip"
    for name in ("la", "lb"):
        edited["datasets"][name] = {"kind": "longalign", "metadata": "luping-liu/LongAlign", "images_url": url,
                                    "images_folder": "coco2017"}
    config = validate_config(edited)
    assert wf.archives(config) == {"train2017.zip": {"url": url, "sha256": None, "folder": "coco2017"}}
    assert wf.dataset_inputs(config, "la") == wf.dataset_inputs(config, "lb") == {
        "images": "results/downloads/unzipped/coco2017"}
    assert wf.dataset_inputs(config, "shapes32") == {}
    edited["datasets"]["lb"]["images_folder"] = "elsewhere"
    with pytest.raises(ValueError, match="datasets.lb: train2017.zip is named with another URL, checksum or folder"):
        wf.archives(validate_config(edited))
    edited["datasets"]["lb"].update(images_url=url.replace("train", "val"), images_folder="coco2017")
    with pytest.raises(ValueError, match="val2017.zip and train2017.zip would both unzip into coco2017/"):
        wf.archives(validate_config(edited))
