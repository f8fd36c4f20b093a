"""Config validation: defaults, one-line errors naming the key path, cross references."""
import copy
from pathlib import Path

import pytest
import yaml

from t2i.config import ConfigError, load_config, load_merged_config, validate_config

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
    (lambda c: c["experiments"]["shapes_jit"]["text_encoder"].update(asset="clip"),
     "experiments.shapes_jit.text_encoder.asset: no pretrained asset named 'clip'"),
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
    cfg = load_merged_config(ROOT / "config.yaml", extra)
    assert cfg["experiments"]["shapes_jit"]["train"]["steps"] == 7
    assert cfg["experiments"]["shapes_jit"]["train"]["batch_size"] == 64  # kept from config.yaml


def test_paper_configs_validate():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_merged_config(ROOT / "config.yaml", path)
        assert cfg["run"], path
