"""Config look-ups the rules share (kept out of the .smk files so they are unit-tested).

A stage's job sees two views of its experiment:

- ``stage_params``: the canonical JSON (sorted keys) of the config slice its outputs depend
  on, minus speed-only knobs. It is the rule's ``params``, so Snakemake reruns the job exactly
  when that slice changes: reordering keys, or changing ``gen_bsz``, reruns nothing.
- ``stage_experiment``: the same slice with the speed knobs, which the job computes with.

Which blocks a stage depends on, and which input roles it reads, is declared by the system
(``x-t2i`` in its schema, :func:`t2i.config.system_spec`). Upstream changes reach a stage
through its input files (a new dataset, asset or upstream model reruns it), never through
params.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from t2i.config import EXTRACTOR_ASSETS, asset_refs, system_spec

RESULTS = "results"
STAGES = ("prepare", "train", "plan", "sample", "evaluate")
# Keys that change how fast a stage runs, never what it produces (a system adds its own in x-t2i.speed_keys).
SPEED_KEYS: dict[str, tuple[str, ...]] = {
    "train": ("save_every", "log_every", "num_workers", "compile"),
    "sample": ("gen_bsz", "compile"),
    "evaluate": ("batch_size",),
}
RESOURCE_KEYS = ("gpu", "gpu_model", "mem_mb", "runtime", "cpus_per_task")
DATASET_MARKER = "SHA256SUMS"  # written last by `rule dataset`: the dataset is complete


def expose_library(basedir: str) -> None:
    """Put the workflow's source tree on jobs' PYTHONPATH, so any job environment imports this t2i."""
    paths = [basedir] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != basedir]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)


def experiment(config: dict, name: str) -> dict:
    """The validated experiment block, with its ``name``."""
    return {"name": name, **config["experiments"][name]}


def dataset_config(config: dict, name: str) -> dict:
    return config["datasets"][name]


DOWNLOADS = f"{RESULTS}/downloads"


def _archive_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]


def archives(config: dict) -> dict[str, dict]:
    """Every image archive the datasets name, by file name under ``results/downloads/``: ``url``, ``sha256``
    and the ``folder`` it unzips into (one download and one unzip however many datasets name it)."""
    out: dict[str, dict] = {}
    for name, d in config["datasets"].items():
        if d["kind"] != "longalign" or not d.get("images_url"):
            continue
        file = _archive_name(d["images_url"])
        entry = {"url": d["images_url"], "sha256": d["images_sha256"],
                 "folder": d["images_folder"] or file.rsplit(".", 1)[0]}
        if out.setdefault(file, entry) != entry:
            raise ValueError(f"datasets.{name}: {file} is named with another URL, checksum or folder elsewhere")
        clash = [f for f, e in out.items() if e["folder"] == entry["folder"] and f != file]
        if clash:
            raise ValueError(f"datasets.{name}: {file} and {clash[0]} would both unzip into {entry['folder']}/ "
                             f"(set images_folder)")
    return out


def dataset_inputs(config: dict, name: str) -> dict[str, str]:
    """What ``rule dataset`` needs fetched first: ``images``, a longalign dataset's unzipped archive."""
    d = config["datasets"][name]
    if d["kind"] != "longalign" or not d.get("images_url"):
        return {}
    folder = archives(config)[_archive_name(d["images_url"])]["folder"]
    return {"images": f"{DOWNLOADS}/unzipped/{folder}"}


def asset_config(config: dict, name: str) -> dict:
    return config["pretrained"][name]


def asset_dependencies(config: dict, name: str) -> dict[str, str]:
    """An asset's upstream: a trained asset's ``dataset`` (its completion marker), and the assets its recipe or
    converter names (key -> asset folder)."""
    a = asset_config(config, name)
    dataset = {"dataset": dataset_done(a["dataset"])} if a["source"] == "trained" else {}
    return {**dataset, **{key: f"{RESULTS}/pretrained/{ref}" for key, ref in asset_refs(a).items()}}


def asset_mem_mb(config: dict, name: str) -> int:
    """Memory of an asset's job: a ``torch_parts`` checkpoint is merged whole in memory (LayoutLLM-T2I's parts
    are 7.4 GB), and converted after that; 8 GB does for the others."""
    return 24000 if asset_config(config, name)["source"] == "torch_parts" else 8000


def prompt_sets(config: dict, exp: str) -> list[str]:
    return list(config["experiments"][exp]["sample"]["prompt_sets"])


def canonical(value: Any) -> str:
    """JSON with sorted keys: equal configs give equal strings whatever their key order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def stage_experiment(config: dict, exp: str, stage: str) -> dict:
    """The slice of experiment ``exp`` that ``stage`` depends on: ``name``, ``system`` and the blocks
    the system declares for the stage, less those its ``block_roles`` tie to a role this experiment
    leaves empty (they do nothing there). ``sample`` leaves out ``prompt_sets`` (adding a prompt set
    must not resample the others)."""
    e = config["experiments"][exp]
    spec = system_spec(e["system"])
    needs = spec.get("block_roles", {})
    blocks = [b for b in spec["stages"][stage] if b not in needs or needs[b] in e["inputs"]]
    view = {"name": exp, "system": e["system"], **{b: e[b] for b in blocks}}
    if stage == "sample":
        view["sample"] = {k: v for k, v in e["sample"].items() if k != "prompt_sets"}
    return view


def speed_keys(system: str) -> dict[str, set[str]]:
    """Speed-only keys by block: the shared ones plus the system's ``x-t2i.speed_keys``."""
    extra = system_spec(system).get("speed_keys", {})
    return {block: set(SPEED_KEYS.get(block, ())) | set(extra.get(block, ())) for block in {*SPEED_KEYS, *extra}}


def without_speed_keys(view: dict) -> dict:
    """``view`` (with its ``system``) minus the speed-only knobs of every block."""
    speed = speed_keys(view["system"])
    return {block: ({k: v for k, v in value.items() if k not in speed[block]} if block in speed else value)
            for block, value in view.items()}


def stage_params(config: dict, exp: str, stage: str) -> str:
    """The rule params of ``stage`` of ``exp``: canonical, without speed knobs."""
    return canonical(without_speed_keys(stage_experiment(config, exp, stage)))


def dataset_dir(config: dict, exp: str) -> str:
    return f"{RESULTS}/datasets/{config['experiments'][exp]['dataset']}"


def dataset_done(dataset: str) -> str:
    """The file that marks a finished dataset."""
    return f"{RESULTS}/datasets/{dataset}/{DATASET_MARKER}"


def model_dir(exp: str) -> str:
    """An experiment's trained model folder (``save_pretrained`` style; what later stages read)."""
    return f"{RESULTS}/{exp}/train/model"


def source_path(ref: dict) -> str:
    """The folder that fills a role: ``{asset: A}`` -> its asset folder, ``{experiment: E}`` -> its model."""
    (kind, name), = ref.items()
    return f"{RESULTS}/pretrained/{name}" if kind == "asset" else model_dir(name)


def trains(config: dict, exp: str) -> bool:
    """Whether ``exp`` has a train stage: not where a ``model`` role is filled, nor where its system's
    ``x-t2i.untrained_when`` (``"block.key": [values]``) matches (e.g. LPD sampling its base alone)."""
    e = config["experiments"][exp]
    if "model" in e["inputs"]:
        return False
    for path, values in system_spec(e["system"]).get("untrained_when", {}).items():
        block, key = path.split(".")
        if e.get(block, {}).get(key) in values:
            return False
    return True


def model_stage(system: str) -> str:
    """The stage that reads an experiment's trained model (``x-t2i.model_stage``; ``sample`` unless a system
    trains something else, as LayoutLLM's policy, read by ``plan``)."""
    return system_spec(system).get("model_stage", "sample")


def plans(config: dict, exp: str) -> bool:
    """Whether ``exp``'s system has a ``plan`` stage (per-prompt-set layouts that sampling reads)."""
    return "plan" in system_spec(config["experiments"][exp]["system"])["stages"]


def layouts_path(exp: str, prompt_set: str) -> str:
    return f"{RESULTS}/{exp}/layouts/{prompt_set}.jsonl"


def llm_cache_dir() -> Path:
    """Where LLM answers are cached (by a hash of model, parameters and prompt): kept across reruns and shared by
    experiments, so an unchanged query is never paid for twice."""
    return Path(os.environ.get("T2I_LLM_CACHE", f"{RESULTS}/llm_cache"))


def stage_inputs(config: dict, exp: str, stage: str, prompt_set: str | None = None) -> dict[str, str]:
    """Named inputs of a stage's job: ``dataset`` (its completion marker), the system's roles that the
    stage reads, and the stage's own upstream: ``prepared`` for train and plan, ``model`` for the system's
    :func:`model_stage` (the experiment's trained model where it :func:`trains`), and for sample, in a
    system that plans, the prompt set's ``layouts``."""
    e = config["experiments"][exp]
    inputs = {"dataset": dataset_done(e["dataset"])}
    for role, spec in system_spec(e["system"])["roles"].items():
        if stage in spec["stages"] and role in e["inputs"]:
            inputs[role] = source_path(e["inputs"][role])
    if stage in ("train", "plan"):
        inputs["prepared"] = f"{RESULTS}/{exp}/prepared"
    if stage == model_stage(e["system"]) and trains(config, exp):
        inputs["model"] = model_dir(exp)
    if stage == "sample" and prompt_set is not None and plans(config, exp):
        inputs["layouts"] = layouts_path(exp, prompt_set)
    return inputs


def input_folders(named: dict[str, str]) -> dict[str, Path]:
    """Snakemake's named inputs as the folders a system reads (a dataset marker -> its dataset folder)."""
    return {role: Path(path).parent if Path(path).name == DATASET_MARKER else Path(path)
            for role, path in named.items()}


def stage_resources(config: dict, exp: str, stage: str) -> dict[str, Any]:
    """Scheduler resources of one of ``exp``'s jobs (names the slurm plugin reads).

    ``train`` uses the top-level ``resources``; other stages override single values and inherit
    the rest, with GPUs capped at 1. ``gpu_model`` is None unless the job asks for GPUs.
    """
    r = config["experiments"][exp]["resources"]
    values = {k: r[k] for k in RESOURCE_KEYS}
    if stage != "train":
        values["gpu"] = min(values["gpu"], 1)
        values.update({k: v for k, v in r.get(stage, {}).items() if v is not None})
    if not values["gpu"]:
        values["gpu_model"] = None
    return values


def scheduling_priorities(config: dict) -> dict[tuple[str, str], int]:
    """Snakemake ``priority`` of each experiment's jobs (key ``("experiment", name)``) and of each asset's job
    (``("asset", name)``): the highest ``resources.priority`` among the ``run`` experiments that wait on them,
    through every input of every stage (an experiment whose model another reads, the assets it reads, the
    assets those are trained from). Where jobs compete for cores Snakemake starts the higher first, so a long
    training and everything before it start early instead of last. Unlisted jobs have priority 0."""
    from t2i.eval.registry import family_inputs

    def upstream(kind: str, name: str):
        if kind == "asset":
            paths = list(asset_dependencies(config, name).values())
        else:
            paths = [p for stage in STAGES for p in stage_inputs(config, name, stage).values()]
            paths += [p for ps in prompt_sets(config, name) for p in family_inputs(config, name, ps).values()]
        for path in paths:
            parts = Path(path).parts
            if parts[:2] == (RESULTS, "pretrained"):
                yield "asset", parts[2]
            elif path == model_dir(parts[1]):
                yield "experiment", parts[1]

    priority: dict[tuple[str, str], int] = {}

    def raise_to(node: tuple[str, str], value: int) -> None:
        if node[0] == "experiment":
            value = max(value, config["experiments"][node[1]]["resources"]["priority"])
        if priority.get(node, -1) >= value:
            return
        priority[node] = value
        for up in upstream(*node):
            raise_to(up, value)

    for exp in config["run"]:
        raise_to(("experiment", exp), 0)
    return priority


def evaluation_gpu(config: dict, dataset: str) -> int:
    """GPUs for a dataset's reference statistics: 1 if any final experiment evaluating on it has one."""
    return int(any(stage_resources(config, exp, "evaluate")["gpu"] for exp in config["run"]
                   if config["experiments"][exp]["dataset"] == dataset))


def extractor_asset(config: dict, exp: str) -> str:
    """The asset holding the weights of the experiment's feature extractor."""
    ev = config["experiments"][exp]["evaluate"]
    return ev["extractor_asset"] or EXTRACTOR_ASSETS[ev["extractor"]]


def report_params(config: dict) -> str:
    """What the report shows: each final experiment's config (no resources, no speed knobs) and the report block."""
    shown = []
    for exp in config["run"]:
        e = experiment(config, exp)
        shown.append(without_speed_keys({k: v for k, v in e.items() if k != "resources"}))
    return canonical({"experiments": shown, "report": config["report"]})
