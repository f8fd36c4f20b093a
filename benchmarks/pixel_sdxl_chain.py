"""Pixel-space SDXL's whole chain on Shapes, with the Shapes accuracy after every stage and its untrained control.

    python benchmarks/pixel_sdxl_chain.py --workdir DIR [--configfile extra.yaml] [--steps-scale 1.0]

Runs ``configs/shapes_pixel_sdxl_chain.yaml`` (merged over ``config.yaml`` and ``--configfile``) through the
stage functions the workflow's rules call, in the DAG's order: the dataset, the trained assets (Shapes CLIP,
Shapes VAE, the latent SDXL teacher), then for each experiment of the chain prepare, train, sample (``test``
prompts) and the Shapes detector's scores. It calls those functions directly instead of Snakemake (so it
also runs on a GPU machine without the workflow's scheduler) and reuses whatever DIR already holds.
``--steps-scale`` multiplies every stage's and asset's training steps (not the dataset's size).

Prints one JSON line per job: its wall time; the teacher's epsilon MSE (trained vs untrained) and its own Shapes
accuracy (sampled by diffusers' ``StableDiffusionXLPipeline`` from its folder, 30 Euler steps, CFG 4); per experiment
the whole-prompt and object accuracy and the single-object prompt accuracy (colour and shape); and the same
for the last experiment's network untrained (every component re-initialised with the training seed, sampled
the same way) as the control.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _scaled(cfg: dict, scale: float) -> None:
    for asset in cfg["pretrained"].values():
        if asset["source"] == "trained" and "steps" in asset:
            asset["steps"] = max(1, round(asset["steps"] * scale))
    for exp in cfg["experiments"].values():
        if "train" in exp and "steps" in exp["train"]:
            t = exp["train"]
            t["steps"] = max(1, round(t["steps"] * scale))
            if t.get("snapshot_every"):
                t["snapshot_every"] = max(1, round(t["snapshot_every"] * scale))


def _scores(samples: Path, prompts_jsonl: Path) -> dict:
    from t2i.eval.shapes import score_folder

    agg = score_folder(samples, prompts_jsonl)["aggregate"]
    return {"prompt_acc": agg["prompt_acc"], "object_acc": agg["object_acc"],
            "single_prompt_acc": agg["by_type"].get("single", {}).get("prompt_acc"), "n": agg["n"]}


def sample_teacher(folder: Path, prompts: list[dict], out_dir: Path) -> None:
    """The latent SDXL teacher's images for ``prompts`` through diffusers' own SDXL pipeline (one seed per row)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from t2i.systems.sampling import Generated, run_sampling

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)

    def generate(rows: list[dict]) -> Generated:
        images = pipe([r["prompt"] for r in rows], num_inference_steps=30, guidance_scale=4.0, output_type="pt",
                      generator=[torch.Generator(device).manual_seed(r["seed"]) for r in rows]).images
        return Generated(images * 2 - 1)

    run_sampling({"sample": {"num_images": None, "seed": 0, "gen_bsz": 100}}, prompts, out_dir, generate)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--configfile", type=Path, action="append", default=[])
    ap.add_argument("--steps-scale", type=float, default=1.0)
    args = ap.parse_args()

    from stages import build_asset, build_datasets, prepare_and_train, timed

    from t2i import workflow as wf
    from t2i.config import load_config
    from t2i.jobs import verified_inputs
    from t2i.systems import get_system
    from t2i.utils.atomic import atomic_dir, read_jsonl

    cfg = load_config(ROOT / "config.yaml", ROOT / "configs" / "shapes_pixel_sdxl_chain.yaml", *args.configfile)
    _scaled(cfg, args.steps_scale)
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(args.workdir)
    results = Path(wf.RESULTS)

    build_datasets(cfg, cfg["run"])
    for name in ("shapes-clip", "shapes-sdxl"):
        build_asset(cfg, name)
    teacher = json.loads((results / "pretrained" / "shapes-sdxl" / "metrics.json").read_text())
    print(json.dumps({"teacher_eps_mse": teacher["eps_mse"], "untrained": teacher["eps_mse_untrained"]}), flush=True)
    prompts_jsonl = Path(wf.dataset_done(cfg["experiments"][cfg["run"][0]]["dataset"])).parent / "prompts" / "test.jsonl"
    teacher_samples = results / "controls" / "teacher" / "samples" / "test"
    if not teacher_samples.is_dir():
        with atomic_dir(teacher_samples) as out:
            timed("sample teacher", sample_teacher, results / "pretrained" / "shapes-sdxl", read_jsonl(prompts_jsonl), out)
    print(json.dumps({"experiment": "shapes-sdxl (latent teacher)", **_scores(teacher_samples, prompts_jsonl)}),
          flush=True)

    def sample(exp_name: str, inputs: dict, samples: Path) -> dict:
        exp = wf.stage_experiment(cfg, exp_name, "sample")
        prompts_jsonl = Path(inputs["dataset"]) / "prompts" / "test.jsonl"
        if not samples.is_dir():
            with atomic_dir(samples) as out:
                timed(f"sample {samples.parent.parent.name}", get_system(exp["system"]).sample, exp, inputs,
                      read_jsonl(prompts_jsonl), out)
        return _scores(samples, prompts_jsonl)

    for exp_name in cfg["run"]:
        prepare_and_train(cfg, exp_name)
        inputs = verified_inputs(wf.stage_inputs(cfg, exp_name, "sample"))
        print(json.dumps({"experiment": exp_name, **sample(exp_name, inputs, results / exp_name / "samples" / "test")}),
              flush=True)

    from shapes_default import untrained_model

    last = cfg["run"][-1]
    control = results / "controls" / last
    if not (control / "model").is_dir():
        untrained_model(Path(wf.model_dir(last)), control / "model", seed=0)
    inputs = {**verified_inputs(wf.stage_inputs(cfg, last, "sample")), "model": control / "model"}
    print(json.dumps({"experiment": f"{last} untrained", **sample(last, inputs, control / "samples" / "test")}),
          flush=True)

if __name__ == "__main__":
    main()
