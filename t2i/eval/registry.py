"""Metric families: one registry read by the config schema (``evaluate.families``), the evaluate
rule (which input files a family needs) and the evaluation itself.

A family is torch-free here: its ``inputs`` function runs when Snakemake builds the DAG, its
``compute`` ("module:function") is imported only inside the evaluate job. ``compute(ctx)``
returns the family's section of ``metrics/{prompt_set}.json``, or ``None`` where it does not
apply (e.g. Shapes accuracy on prompts without specs). Adding a metric (layout accuracy, a
per-component score) is one ``register_metric_family`` call and its name in the schema's enum.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from t2i import workflow as wf


@dataclass(frozen=True)
class MetricContext:
    """What a family computes from: the experiment slice, the prompt set, and the evaluate job's inputs."""

    exp: dict
    prompt_set: str
    inputs: dict[str, Path]  # samples, dataset, and each family's own inputs

    @property
    def samples_dir(self) -> Path:
        return self.inputs["samples"]

    @property
    def prompts_path(self) -> Path:
        return self.inputs["dataset"] / "prompts" / f"{self.prompt_set}.jsonl"


@dataclass(frozen=True)
class MetricFamily:
    name: str
    description: str
    compute: str  # "module:function" taking a MetricContext, returning a dict or None
    inputs: Callable[[dict, str, str], dict[str, str]] = field(default=lambda config, exp, prompt_set: {})
    column_suffix: str = ""  # the report's column label when a metric name is shared ("FID vs train split")

    def run(self, ctx: MetricContext) -> dict[str, Any] | None:
        module, func = self.compute.split(":")
        return getattr(importlib.import_module(module), func)(ctx)


METRIC_FAMILIES: dict[str, MetricFamily] = {}


def register_metric_family(family: MetricFamily) -> None:
    METRIC_FAMILIES[family.name] = family


def family_inputs(config: dict, exp: str, prompt_set: str) -> dict[str, str]:
    """The named input files of every family the experiment evaluates (for the evaluate rule)."""
    out: dict[str, str] = {}
    for name in config["experiments"][exp]["evaluate"]["families"]:
        out.update(METRIC_FAMILIES[name].inputs(config, exp, prompt_set))
    return out


TRAIN_REFERENCE = "split-train"  # reference statistics of the whole training split


def _fidelity_inputs_against(reference: str | None, key: str):
    """Inputs of a fidelity family: the extractor and, as input ``key``, the reference statistics of
    ``reference`` (None: the prompt set's own reference images)."""

    def inputs(config: dict, exp: str, prompt_set: str) -> dict[str, str]:
        e = config["experiments"][exp]
        asset = wf.extractor_asset(config, exp)
        return {"extractor": f"{wf.RESULTS}/pretrained/{asset}",
                key: f"{wf.RESULTS}/datasets/{e['dataset']}/fidelity/{e['evaluate']['extractor']}/{asset}/"
                     f"{reference or prompt_set}.npz"}

    return inputs


def _clip_inputs(config: dict, exp: str, prompt_set: str) -> dict[str, str]:
    asset = config["experiments"][exp]["evaluate"]["clip_asset"]
    return {"clip": f"{wf.RESULTS}/pretrained/{asset}"} if asset else {}


register_metric_family(MetricFamily(
    "shapes", "Shapes-T2I compositional accuracy (object, count, relation, prompt) from the analytic detector",
    "t2i.eval.shapes:score_metric_family"))
register_metric_family(MetricFamily(
    "fidelity", "FID / KID / IS / precision-recall against the prompt set's reference images (torch-fidelity's numbers)",
    "t2i.eval.fidelity:fidelity_metric_family", _fidelity_inputs_against(None, "reference")))
register_metric_family(MetricFamily(
    "fidelity_train", "the same against the whole training split (LAFITE's fid50k_full protocol)",
    "t2i.eval.fidelity:fidelity_train_metric_family", _fidelity_inputs_against(TRAIN_REFERENCE, "reference_train"),
    column_suffix="vs train split"))
register_metric_family(MetricFamily(
    "clip_score", "CLIP score of each image with its own prompt (needs evaluate.clip_asset)",
    "t2i.eval.clip_score:clip_score_metric_family", _clip_inputs))
register_metric_family(MetricFamily(
    "layout", "how images follow their planned layout (samples' index.jsonl `layout`; LayoutLLM): detector IoU, "
    "hit and inside rates, and plan vs ground-truth max-IoU and layout similarity",
    "t2i.eval.layout:layout_metric_family"))
