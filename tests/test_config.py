"""Config validation: defaults, one-line errors naming the key path, cross references."""
import copy
from pathlib import Path

import pytest

from t2i.workflow import STAGES
import yaml

from t2i.config import ConfigError, load_config, system_spec, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_default_config_validates_and_fills_defaults(raw):
    cfg = validate_config(raw)
    exp = cfg["experiments"]["shapes_jit"]
    assert exp["train"]["grad_clip"] == 1.0  # default filled
    assert exp["model"]["t_eps"] == 0.05  # system schema default filled
    assert exp["resources"]["gpu"] == 0
    assert "grad_clip" not in raw["experiments"]["shapes_jit"]["train"]  # input not mutated


def test_a_block_that_is_only_a_ref_gets_its_definitions_defaults(raw):
    """`evaluate: {$ref: ...}` in a system schema: an experiment without the block gets the shared
    definition's defaults (it is what the evaluate rule and the run's checks read)."""
    raw = copy.deepcopy(raw)
    del raw["experiments"]["shapes_lafite"]["evaluate"]
    ev = validate_config(raw)["experiments"]["shapes_lafite"]["evaluate"]
    assert ev["families"] == ["shapes", "fidelity", "clip_score"] and ev["extractor"] == "shapes-cnn"
    assert ev["clip_asset"] is None and ev["metrics"] == ["fid", "kid", "isc"]


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["experiments"]["shapes_jit"]["train"].update(lr="fast"),
     "experiments.shapes_jit.train.lr: 'fast' is not of type"),
    (lambda c: c["experiments"]["shapes_jit"].update(trian={}),
     "experiments.shapes_jit: unknown key(s) 'trian'"),
    (lambda c: c["experiments"]["shapes_jit"]["sample"].update(cfgg=2.0),
     "experiments.shapes_jit.sample: unknown key(s) 'cfgg'"),
    (lambda c: c["experiments"]["shapes_jit"]["model"].update(P_std=-1),
     "experiments.shapes_jit.model.P_std"),
    (lambda c: c["experiments"]["shapes_jit"].update(dataset="nope"),
     "experiments.shapes_jit.dataset: no dataset named 'nope'"),
    (lambda c: c["experiments"]["shapes_jit"].update(system="dalle"),
     "experiments.shapes_jit.system: unknown system 'dalle'"),
    (lambda c: c["experiments"]["shapes_jit"]["inputs"].update(text_encoder={"asset": "clip"}),
     "experiments.shapes_jit.inputs.text_encoder.asset: no asset named 'clip' in `pretrained`"),
    (lambda c: c["experiments"]["shapes_jit"]["inputs"].update(teacher={"asset": "minilm"}),
     "experiments.shapes_jit.inputs: unknown key(s) 'teacher'"),
    (lambda c: c["experiments"]["shapes_jit"]["inputs"].update(init={"experiment": "other"}),
     "experiments.shapes_jit.inputs.init.experiment: no experiment named 'other'"),
    (lambda c: c["experiments"]["shapes_jit"]["inputs"].update(init={"experiment": "shapes_jit"}),
     "experiments.shapes_jit.inputs.init.experiment: an experiment cannot feed itself"),
    (lambda c: c["experiments"]["shapes_jit"]["inputs"].pop("text_encoder"),
     "experiments.shapes_jit.inputs: 'text_encoder' is a required property"),
    (lambda c: c["experiments"]["shapes_jit"]["model"].update(preset="JiT-X/4-Text"),
     "experiments.shapes_jit.model.preset: 'JiT-X/4-Text' is not one of JiT-B/16-Text"),
    (lambda c: c["experiments"]["shapes_jit"]["train"].update(cond_dropout=0.1),
     "experiments.shapes_jit.train: unknown key(s) 'cond_dropout'"),
    (lambda c: c["experiments"]["shapes_jit"]["resources"].update(prepare={"runtim": 60}),
     "experiments.shapes_jit.resources.prepare: unknown key(s) 'runtim'"),
    (lambda c: c["experiments"]["shapes_jit"]["evaluate"].update(extractor_asset="nope"),
     "experiments.shapes_jit.evaluate.extractor_asset: extractor shapes-cnn needs a pretrained asset named 'nope'"),
    (lambda c: c["pretrained"]["inception"].update(sha265="0" * 64),
     "pretrained.inception: unknown key(s) 'sha265'"),
    (lambda c: c["pretrained"]["inception"].update(sha256="6726825d"),
     "pretrained.inception.sha256: '6726825d' does not match"),
    (lambda c: c["pretrained"].update(llm={"source": "huggingface", "repo_id": "a/b", "allow_pattern": ["*.json"]}),
     "pretrained.llm: unknown key(s) 'allow_pattern'"),
    (lambda c: c["pretrained"].update(x={"source": "ftp", "url": "x"}),
     "pretrained.x.source: 'ftp' is not one of url"),
    (lambda c: c["pretrained"]["shapes-cnn"].update(dataset="shapes64"),
     "pretrained.shapes-cnn.dataset: no dataset named 'shapes64'"),
    (lambda c: c.update(run=["shapes_jit", "missing_exp"]),
     "run[1]: no experiment named 'missing_exp'"),
    (lambda c: c["datasets"]["shapes32"].update(image_size=8),
     "datasets.shapes32.image_size: 8 is less than the minimum of 32"),
    (lambda c: c["datasets"]["shapes32"].update(holdout_pairs=["purple circle"]),
     "datasets.shapes32.holdout_pairs.0"),
    (lambda c: c["datasets"]["shapes32"].update(kind="imagenet"),
     "datasets.shapes32.kind"),
])
def test_bad_config_is_one_line_naming_the_key(raw, edit, message):
    cfg = copy.deepcopy(raw)
    edit(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_experiments_feeding_each_other_in_a_cycle_fail(raw):
    cfg = copy.deepcopy(raw)
    exps = cfg["experiments"]
    for name, other in (("a", "b"), ("b", "c"), ("c", "a")):
        exps[name] = {**copy.deepcopy(exps["shapes_jit"]), "inputs": {"text_encoder": {"asset": "minilm"},
                                                                      "init": {"experiment": other}}}
    with pytest.raises(ConfigError, match=r"experiments\.a\.inputs: experiments feed each other in a cycle "
                                          r"\(a -> b -> c -> a\)"):
        validate_config(cfg)


def test_key_order_does_not_change_the_validated_config(raw):
    """A config loaded with sorted keys (yaml.safe_dump's default) validates to the same content."""
    from t2i.workflow import canonical

    reordered = yaml.safe_load(yaml.safe_dump(raw, sort_keys=True))
    assert canonical(validate_config(reordered)) == canonical(validate_config(raw))


def test_schemas_agree_with_the_registries():
    """Enums in the torch-free schemas list exactly what the code registers."""
    from t2i.checkpoints.recipes import RECIPES
    from t2i.config import EXTRACTOR_ASSETS, SCHEMA_PATH, _schema
    from t2i.eval.extractors import EXTRACTORS
    from t2i.eval.registry import METRIC_FAMILIES
    from t2i.models.jit import JIT_PRESETS
    from t2i.systems import SYSTEMS

    shared = _schema(SCHEMA_PATH)["$defs"]
    evaluate = shared["evaluate"]["properties"]
    assert evaluate["families"]["items"]["enum"] == list(METRIC_FAMILIES)
    assert evaluate["extractor"]["enum"] == list(EXTRACTORS) == list(EXTRACTOR_ASSETS)
    trained = next(b["then"] for b in shared["asset"]["allOf"] if b["if"]["properties"]["source"]["const"] == "trained")
    assert trained["properties"]["recipe"]["enum"] == list(RECIPES)
    jit = _schema(ROOT / "t2i" / "schemas" / "systems" / "jit.schema.yaml")
    assert jit["properties"]["model"]["properties"]["preset"]["enum"] == list(JIT_PRESETS)
    for system in SYSTEMS:
        spec = system_spec(system)
        assert {"prepare", "train", "sample", "evaluate"} <= set(spec["stages"]) <= set(STAGES), system
        assert spec.get("model_stage", "sample") in spec["stages"], system
        assert all(set(r["stages"]) <= set(spec["stages"]) for r in spec["roles"].values()), system


def test_config_files_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [a\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_merged_config_overrides_nested_keys(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("experiments:\n  shapes_jit:\n    train: {steps: 7}\n")
    cfg = load_config(ROOT / "config.yaml", extra)
    assert cfg["experiments"]["shapes_jit"]["train"]["steps"] == 7
    assert cfg["experiments"]["shapes_jit"]["train"]["batch_size"] == 64  # kept from config.yaml


def test_paper_configs_validate():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(ROOT / "config.yaml", path)
        assert cfg["run"], path
