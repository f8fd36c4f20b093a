"""Load and validate the workflow config before Snakemake builds the DAG.

The shared schema (``t2i/schemas/config.schema.yaml``) checks the top level, datasets,
assets (each ``source`` with its own keys) and fills defaults; each experiment block is
then validated whole by its system's schema (``t2i/schemas/systems/{system}.schema.yaml``,
which reuses the shared definitions by ``$ref``); cross references come last: datasets,
assets and experiments named anywhere exist, input roles fit the system, and experiments
that feed each other form no cycle. Every failure is one ``ConfigError`` line that names
the key path.
"""
from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml
from referencing import Registry, Resource

SCHEMA_DIR = Path(__file__).parent / "schemas"
SCHEMA_PATH = SCHEMA_DIR / "config.schema.yaml"
# Default weights asset of each feature extractor (``evaluate.extractor_asset: null``).
EXTRACTOR_ASSETS = {"shapes-cnn": "shapes-cnn", "inception-v3-compat": "inception"}
# Keys of a trained asset's block that name the assets its recipe trains from (e.g. the latent SDXL's VAE).
RECIPE_ASSET_KEYS: dict[str, tuple[str, ...]] = {"latent-sdxl": ("vae", "text_encoder"), "sd3": ("text_encoder", "text_encoder_3"),
                                                 "gligen": ("text_encoder",)}
# Keys of an asset's block that name the assets its converter reads (e.g. the CLIP whose tokenizer a checkpoint lacks).
CONVERTER_ASSET_KEYS: dict[str, tuple[str, ...]] = {"layoutllm-gligen": ("clip",)}


class ConfigError(ValueError):
    """A config problem, reported as ``<key.path>: <what is wrong>``."""


def _load_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: schema file missing (is t2i installed with its package data?)") from None


@lru_cache(maxsize=None)
def _schema(path: Path) -> dict:
    return _load_yaml(path)


def system_schema_path(system: str) -> Path:
    return SCHEMA_DIR / "systems" / f"{system}.schema.yaml"


@lru_cache(maxsize=None)
def _registry() -> Registry:
    """Every schema by its ``$id``, so system schemas can ``$ref`` the shared definitions."""
    paths = [SCHEMA_PATH, *sorted((SCHEMA_DIR / "systems").glob("*.schema.yaml"))]
    return Registry().with_resources((_schema(p)["$id"], Resource.from_contents(_schema(p))) for p in paths)


def system_spec(system: str) -> dict:
    """The ``x-t2i`` section of a system's schema: its input ``roles``, the blocks of each of its ``stages``,
    ``speed_keys``, ``block_roles`` (a block that only acts where a role is filled) and ``untrained_when``
    (block settings under which an experiment has no train stage); torch-free."""
    return _schema(system_schema_path(system))["x-t2i"]


_NO_DEFAULT = object()


def _fill_defaults(validator_cls):
    """Extend a jsonschema validator so that ``default`` values are filled in while validating; a
    property that is only a ``$ref`` takes the default of the definition it refers to."""
    validate_properties = validator_cls.VALIDATORS["properties"]

    def default_of(validator, sub: dict):
        if "default" not in sub and "$ref" in sub:
            sub = validator._resolver.lookup(sub["$ref"]).contents  # jsonschema's own resolver (>= 4.18)
        return sub.get("default", _NO_DEFAULT)

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if isinstance(sub, dict) and key not in instance:
                    default = default_of(validator, sub)
                    if default is not _NO_DEFAULT:
                        instance[key] = copy.deepcopy(default)
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


_Validator = _fill_defaults(jsonschema.Draft202012Validator)


def _key_path(prefix: str, error: jsonschema.ValidationError) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in error.absolute_path]
    return ".".join(parts) or "<config>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"unknown key(s) {', '.join(map(repr, extra))}"
    if error.validator == "unevaluatedProperties":  # jsonschema names them: "('a', 'b' were unexpected)"
        names = re.search(r"\((.*) (?:was|were) unexpected\)", error.message)
        return f"unknown key(s) {names.group(1)}" if names else error.message
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    return error.message


def validate_against(instance: dict, schema: dict, prefix: str = "") -> None:
    """Validate ``instance`` in place (defaults filled) or raise a one-line ``ConfigError``."""
    validator = _Validator(schema, registry=_registry())
    errors = list(validator.iter_errors(instance))
    if errors:
        # The deepest error names the most specific key; among equals, the schema's first.
        error = max(errors, key=lambda e: len(e.absolute_path))
        raise ConfigError(f"{_key_path(prefix, error)}: {_describe(error)}")


def _check_experiment_refs(config: dict, name: str, exp: dict) -> None:
    where = f"experiments.{name}"
    if exp["dataset"] not in config["datasets"]:
        raise ConfigError(f"{where}.dataset: no dataset named {exp['dataset']!r} in `datasets`")
    roles = system_spec(exp["system"])["roles"]
    for role, ref in exp["inputs"].items():
        allowed = roles[role].get("from", ["asset", "experiment"])
        (kind, target), = ref.items()
        if kind not in allowed:
            raise ConfigError(f"{where}.inputs.{role}: role {role!r} of system {exp['system']!r} takes "
                              f"{' or '.join(allowed)}, not {kind}")
        table = "pretrained" if kind == "asset" else "experiments"
        if target not in config[table]:
            raise ConfigError(f"{where}.inputs.{role}.{kind}: no {kind} named {target!r} in `{table}`")
        if kind == "experiment" and target == name:
            raise ConfigError(f"{where}.inputs.{role}.experiment: an experiment cannot feed itself")


def _check_evaluation_refs(config: dict, name: str, exp: dict) -> None:
    where = f"experiments.{name}.evaluate"
    ev = exp["evaluate"]
    asset = ev["extractor_asset"] or EXTRACTOR_ASSETS[ev["extractor"]]
    if "fidelity" in ev["families"] and asset not in config["pretrained"]:
        raise ConfigError(f"{where}.extractor_asset: extractor {ev['extractor']} needs a pretrained asset "
                          f"named {asset!r} (or set extractor_asset)")
    if ev["clip_asset"] is not None and ev["clip_asset"] not in config["pretrained"]:
        raise ConfigError(f"{where}.clip_asset: no pretrained asset named {ev['clip_asset']!r} in `pretrained`")


def asset_refs(asset: dict) -> dict[str, str]:
    """The other assets an asset is built from: those its recipe trains from (:data:`RECIPE_ASSET_KEYS`) or its
    converter reads (:data:`CONVERTER_ASSET_KEYS`); key -> asset name."""
    keys = RECIPE_ASSET_KEYS.get(asset.get("recipe"), ()) if asset.get("source") == "trained" else ()
    keys += CONVERTER_ASSET_KEYS.get(asset.get("convert"), ())
    return {key: asset[key] for key in keys if asset.get(key) is not None}


def _check_asset_refs(config: dict) -> None:
    """A trained asset's dataset and the assets a recipe or converter names must exist, and assets may not be
    built from each other in a cycle."""
    def refs(name: str) -> list[tuple[str, str]]:
        return list(asset_refs(config["pretrained"][name]).items())

    for name, asset in config["pretrained"].items():
        if asset["source"] == "trained" and asset["dataset"] not in config["datasets"]:
            raise ConfigError(f"pretrained.{name}.dataset: no dataset named {asset['dataset']!r} in `datasets`")
        for key in CONVERTER_ASSET_KEYS.get(asset.get("convert"), ()):
            if asset.get(key) is None:
                raise ConfigError(f"pretrained.{name}.{key}: converter {asset['convert']} needs this asset")
        for key, target in refs(name):
            if target not in config["pretrained"]:
                raise ConfigError(f"pretrained.{name}.{key}: no pretrained asset named {target!r} in `pretrained`")
    for name in config["pretrained"]:  # every reference exists: follow them
        seen, todo = {name}, [t for _, t in refs(name)]
        while todo:
            target = todo.pop()
            if target == name:
                raise ConfigError(f"pretrained.{name}: assets built from each other in a cycle")
            if target not in seen:
                seen.add(target)
                todo += [t for _, t in refs(target)]


def _check_no_cycles(config: dict) -> None:
    """Experiments that feed each other (``inputs: {role: {experiment: ...}}``) must form a DAG."""
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise ConfigError(f"experiments.{name}.inputs: experiments feed each other in a cycle "
                              f"({' -> '.join(cycle)})")
        state[name] = "visiting"
        for ref in config["experiments"][name]["inputs"].values():
            if "experiment" in ref:
                visit(ref["experiment"], path + [name])
        state[name] = "done"

    for name in config["experiments"]:
        visit(name, [])


def validate_config(config: dict) -> dict:
    """Return a validated deep copy of ``config`` with every default filled in."""
    from t2i.systems import SYSTEMS  # the registry is torch-free

    config = copy.deepcopy(config)
    validate_against(config, _schema(SCHEMA_PATH))
    for name, exp in config["experiments"].items():
        where = f"experiments.{name}"
        if exp["system"] not in SYSTEMS:
            raise ConfigError(f"{where}.system: unknown system {exp['system']!r} (known: {', '.join(sorted(SYSTEMS))})")
        validate_against(exp, _schema(system_schema_path(exp["system"])), prefix=where)
        _check_experiment_refs(config, name, exp)
    _check_asset_refs(config)
    for i, name in enumerate(config["run"]):
        if name not in config["experiments"]:
            raise ConfigError(f"run[{i}]: no experiment named {name!r} in `experiments`")
        _check_evaluation_refs(config, name, config["experiments"][name])
    _check_no_cycles(config)
    return config


def experiment_defaults(exp: dict) -> dict:
    """One experiment block validated against its system's schema, every default filled (a deep copy): for code
    that runs a stage by hand (benchmarks), without the config around it."""
    exp = copy.deepcopy(exp)
    validate_against(exp, _schema(system_schema_path(exp["system"])), prefix="experiment")
    return exp


def _deep_update(base: dict, extra: dict) -> dict:
    """Merge ``extra`` into ``base`` the way Snakemake merges ``--configfile`` over ``configfile:``."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def load_config(*paths: str | Path) -> dict:
    """Read one or more YAML configs, later ones merged over earlier ones, then validate."""
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


