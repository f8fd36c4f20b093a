"""Run the default experiment end to end and print wall time per stage and the Shapes accuracies.

    .venv/bin/python benchmarks/shapes_default.py [--configfile extra.yaml] [--cores 2] [--keep | --workdir .]

Runs ``snakemake`` in a fresh working directory (so every stage really runs), reads the
per-job benchmark files that the rules write, then scores each trained experiment against
the same network untrained (randomly initialised, same seed, same sampler) on its first prompt set
(``test``: single-object prompts test colour and shape; LPD's ``long``: the decomposer untrained on the
same trained SD3 base; LayoutLLM's drawer untrained, drawing the trained policy's plans), each prompt with
``--images-per-prompt`` seeds; for LAFITE also the trained
generator conditioned on random features instead of the prompts' CLIP features. Experiments without a
train stage (LPD's base alone) have no network of their own to re-initialise.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


CONTROLS = Path("results") / "benchmarks" / "controls"  # in the working directory: ignored by git, beside the run
SHARED_STAGES = {"dataset", "pretrained", "reference_stats"}  # results/benchmarks/{stage}/*.tsv


def stage_times(results: Path) -> dict[str, float]:
    """Seconds per stage, summed over its jobs, from Snakemake's ``benchmark:`` files."""
    times: dict[str, float] = defaultdict(float)
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        # per-experiment jobs write results/benchmarks/{exp}/{rule}[_{prompt_set}].tsv
        stage = tsv.parent.name if tsv.parent.name in SHARED_STAGES else tsv.stem.split("_")[0]
        with open(tsv) as f:
            times[stage] += float(next(csv.DictReader(f, delimiter="\t"))["s"])
    return dict(times)


def untrained_model(model_dir: Path, out_dir: Path, seed: int) -> Path:
    """A copy of a model folder whose components are re-initialised (same configs, same seed as training)."""
    import torch

    from t2i.models.folder import load_component, read_index

    shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
    for name in read_index(model_dir)["components"]:
        trained = load_component(model_dir, name)
        torch.manual_seed(seed)
        type(trained).from_config(trained.config).save_pretrained(out_dir / name)
    return out_dir


def random_text_features():
    """Patch LAFITE's CLIP text features into random vectors (seeded, one per text): the control of a
    generator conditioned on anything but the prompts (what the seed's replication measured, its
    captions being empty)."""
    from unittest import mock

    import torch

    from t2i.data.lafite_zip import HFClipEncoder

    def random_features(self, texts):
        g = torch.Generator().manual_seed(0)
        return torch.randn(len(texts), self.model.config.projection_dim, generator=g)

    return mock.patch.object(HFClipEncoder, "text_features", random_features)


def controls(workdir: Path, config: dict, exp_name: str, per_prompt: int) -> dict[str, dict]:
    """The trained network, the same network untrained and, for LAFITE, the trained G_ema on random
    features instead of the prompts' (if text conditioning transfers from language-free training, that
    scores far below the prompt-conditioned samples): each samples the test prompts ``per_prompt``
    times (seeds) and is scored like the evaluate rule scores."""
    from t2i import workflow as wf

    if not wf.trains(config, exp_name):
        return {}
    runs = {"trained": dict(trained=True), "untrained": dict(trained=False)}
    if config["experiments"][exp_name]["system"] == "lpd":  # its network is the decomposer and the SD3 base
        runs["untrained"] = dict(trained=False, untrained_base=True)
        runs["untrained decomposer, trained base"] = dict(trained=False)
    if config["experiments"][exp_name]["system"] == "lafite":
        runs["trained, random text features"] = dict(trained=True, patch=random_text_features)
    return {label: sample_and_score(workdir, config, exp_name, out_name=label.replace(", ", "_").replace(" ", "_"),
                                    per_prompt=per_prompt, **kw) for label, kw in runs.items()}


def reinitialised(pipeline: Path, network: str, cls, out_dir: Path, seed: int) -> Path:
    """A copy of a pipeline folder whose ``network`` subfolder (a ``cls``) is re-initialised (its text encoders
    are pretrained or trained separately: they stay)."""
    import torch

    shutil.copytree(pipeline, out_dir, dirs_exist_ok=True)
    torch.manual_seed(seed)
    cls.from_config(cls.load_config(pipeline / network)).save_pretrained(out_dir / network)
    return out_dir


def sample_and_score(workdir: Path, config: dict, exp_name: str, *, trained: bool, out_name: str, per_prompt: int,
                     patch=contextlib.nullcontext, untrained_base: bool = False) -> dict:
    """Sample the experiment's first prompt set with the trained (or re-initialised) model and score it like the
    evaluate rule (``untrained_base``: LPD's SD3 base re-initialised too)."""
    from t2i import workflow as wf
    from t2i.systems import get_system
    from t2i.utils.atomic import read_jsonl

    from diffusers import SD3Transformer2DModel

    from t2i.models.gligen import RelationUNet2DConditionModel

    exp = wf.stage_experiment(config, exp_name, "sample")
    prompt_set = config["experiments"][exp_name]["sample"]["prompt_sets"][0]
    inputs = {role: workdir / path
              for role, path in wf.input_folders(wf.stage_inputs(config, exp_name, "sample", prompt_set)).items()}
    if not trained:
        seed = config["experiments"][exp_name]["train"]["seed"]
        if "model" in inputs:
            inputs["model"] = untrained_model(inputs["model"], workdir / CONTROLS / f"untrained_{exp_name}", seed)
        if untrained_base:
            inputs["base"] = reinitialised(inputs["base"], "transformer", SD3Transformer2DModel,
                                           workdir / CONTROLS / f"untrained_base_{exp_name}", seed)
        if "drawer" in inputs:  # LayoutLLM: its policy plans as trained, the drawer is re-initialised
            inputs["drawer"] = reinitialised(inputs["drawer"], "unet", RelationUNet2DConditionModel,
                                             workdir / CONTROLS / f"untrained_drawer_{exp_name}", seed)
    prompts = inputs["dataset"] / "prompts" / f"{prompt_set}.jsonl"
    exp["sample"] = {**exp["sample"], "num_images": per_prompt * len(read_jsonl(prompts))}
    with patch():
        return score_samples(get_system(exp["system"]), exp, inputs, prompts, workdir / CONTROLS / out_name / exp_name)


def score_samples(system, exp: dict, inputs: dict[str, Path], prompts_path: Path, out: Path) -> dict:
    """Sample a prompt set into ``out`` with ``system`` and score it as the evaluate rule does."""
    from t2i.eval.shapes import score_folder
    from t2i.utils.atomic import read_jsonl

    out.mkdir(parents=True, exist_ok=True)
    system.sample(exp, inputs, read_jsonl(prompts_path), out)
    return score_folder(out, prompts_path)["aggregate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", help="config merged over config.yaml")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--images-per-prompt", type=int, default=5,
                        help="seeds per test prompt for the trained/untrained/random-feature comparison")
    parser.add_argument("--only", nargs="+", metavar="EXP", help="report (and control) only these experiments of run")
    parser.add_argument("--workdir", help="an existing working directory with config.yaml (e.g. the repository "
                                          "after README command 1): only the missing jobs run, the "
                                          "stage times are those of its results/benchmarks, and it is kept")
    args = parser.parse_args()

    if args.workdir:
        workdir, args.keep = Path(args.workdir).resolve(), True
    else:
        workdir = Path(tempfile.mkdtemp(prefix="t2i-bench-"))
        shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--cores", args.cores]
    if args.configfile:
        cmd += ["--configfile", str(Path(args.configfile).resolve())]
    start = time.time()
    subprocess.run(cmd, check=True)
    total = time.time() - start

    from t2i.config import load_config

    config = load_config(*(p for p in (workdir / "config.yaml", args.configfile) if p))
    print(f"\nthis snakemake call: {total:.1f} s wall ({args.cores} cores)")
    for rule, seconds in sorted(stage_times(workdir / "results").items(), key=lambda kv: -kv[1]):
        print(f"  {rule:<18} {seconds:8.1f} s")
    for exp_name in args.only or config["run"]:
        exp = config["experiments"][exp_name]
        for ps in exp["sample"]["prompt_sets"]:
            m = json.loads((workdir / "results" / exp_name / "metrics" / f"{ps}.json").read_text())
            shapes, fid = m.get("shapes", {}), m["fidelity"]
            print(f"\n{exp_name} / {ps}: prompt_acc {shapes.get('prompt_acc', float('nan')):.3f}  "
                  f"object_acc {shapes.get('object_acc', float('nan')):.3f}  FID {fid.get('fid', float('nan')):.2f}  "
                  f"IS {fid.get('isc_mean', float('nan')):.2f}")
            for kind, v in shapes.get("by_type", {}).items():
                print(f"    {kind:<9} prompt_acc {v['prompt_acc']:.3f}  object_acc {v['object_acc']:.3f}")
            if m.get("layout"):
                print("    layout   " + "  ".join(f"{k} {m['layout'][k]:.3f}" for k in
                                                 ("plan_miou", "plan_layout_sim", "layout_iou", "layout_inside")
                                                 if m["layout"].get(k) is not None))
        for label, acc in controls(workdir, config, exp_name, args.images_per_prompt).items():
            single = acc.get("by_type", {}).get("single", {})
            print(f"{exp_name} {label} / {exp['sample']['prompt_sets'][0]}, {args.images_per_prompt} images per "
                  f"prompt: prompt_acc "
                  f"{acc['prompt_acc']:.3f}  object_acc {acc['object_acc']:.3f}  "
                  f"single-object prompt_acc {single.get('prompt_acc', float('nan')):.3f}")
    if args.keep:
        print(f"\nworking directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
