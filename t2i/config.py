"""Load and validate the workflow config before Snakemake builds the DAG.

The JSON schema in ``t2i/schemas/config.schema.yaml`` checks types and unknown keys
and fills defaults; each system's own schema (``t2i/schemas/systems/{system}.schema.yaml``)
checks its ``model`` and ``sample`` blocks; cross references (``run`` -> experiments,
experiment -> dataset, -> text-encoder asset, -> system) are checked last. Every
failure is one ``ConfigError`` line that names the key path.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).parent / "schemas"
SCHEMA_PATH = SCHEMA_DIR / "config.schema.yaml"


class ConfigError(ValueError):
    """A config problem, reported as ``<key.path>: <what is wrong>``."""


@lru_cache(maxsize=None)
def _schema(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _fill_defaults(validator_cls):
    """Extend a jsonschema validator so that ``default`` values are filled in while validating."""
    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


_Validator = _fill_defaults(jsonschema.Draft202012Validator)


def _key_path(prefix: str, error: jsonschema.ValidationError) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in error.absolute_path]
    return ".".join(parts) or "<config>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"unknown key(s) {', '.join(map(repr, extra))}"
    return error.message


def validate_against(instance: dict, schema_path: Path, prefix: str = "") -> None:
    """Validate ``instance`` in place (defaults filled) or raise a one-line ``ConfigError``."""
    validator = _Validator(_schema(schema_path))
    errors = list(validator.iter_errors(instance))
    if errors:
        # The deepest error names the most specific key.
        error = max(errors, key=lambda e: len(e.absolute_path))
        raise ConfigError(f"{_key_path(prefix, error)}: {_describe(error)}")


def system_schema_path(system: str) -> Path:
    return SCHEMA_DIR / "systems" / f"{system}.schema.yaml"


def validate_config(config: dict) -> dict:
    """Return a validated deep copy of ``config`` with every default filled in."""
    from t2i.systems import SYSTEMS  # late import: systems import torch

    config = copy.deepcopy(config)
    validate_against(config, SCHEMA_PATH)
    for name, exp in config["experiments"].items():
        where = f"experiments.{name}"
        if exp["system"] not in SYSTEMS:
            raise ConfigError(f"{where}.system: unknown system {exp['system']!r} (known: {', '.join(sorted(SYSTEMS))})")
        sub = {"model": exp["model"], "sample": exp["sample"]}
        validate_against(sub, system_schema_path(exp["system"]), prefix=where)
        if exp["dataset"] not in config["datasets"]:
            raise ConfigError(f"{where}.dataset: no dataset named {exp['dataset']!r} in `datasets`")
        asset = exp["text_encoder"]["asset"]
        if asset not in config["pretrained"]:
            raise ConfigError(f"{where}.text_encoder.asset: no pretrained asset named {asset!r} in `pretrained`")
        clip = exp["evaluate"]["clip_asset"]
        if clip is not None and clip not in config["pretrained"]:
            raise ConfigError(f"{where}.evaluate.clip_asset: no pretrained asset named {clip!r} in `pretrained`")
        if exp["evaluate"]["extractor"] == "inception-v3-compat" and "inception" not in config["pretrained"]:
            raise ConfigError(f"{where}.evaluate.extractor: inception-v3-compat needs a pretrained asset named 'inception'")
    for i, name in enumerate(config["run"]):
        if name not in config["experiments"]:
            raise ConfigError(f"run[{i}]: no experiment named {name!r} in `experiments`")
    return config


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it."""
    return load_merged_config(path)


def _deep_update(base: dict, extra: dict) -> dict:
    """Merge ``extra`` into ``base`` the way Snakemake merges ``--configfile`` over ``configfile:``."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def load_merged_config(*paths: str | Path) -> dict:
    """Read several YAML configs, later ones merged over earlier ones, then validate."""
    raw: dict = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                _deep_update(raw, yaml.safe_load(f) or {})
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return validate_config(raw)
