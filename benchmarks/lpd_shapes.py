"""LPD's comparison on Shapes: the base given the whole long prompt, the decomposer, the sentence split and one
query set, with Shapes accuracy by prompt length.

    python benchmarks/lpd_shapes.py --workdir DIR [--configfile configs/shapes_lpd_gpu.yaml] [--configfile ...]

Runs the ``lpd`` experiments of ``run`` (config.yaml merged with each ``--configfile``) through the stage
functions the workflow's rules call, in the DAG's order: the dataset, the trained assets (the Shapes CLIP and
the SD3 base), then per experiment prepare, train (where it trains), sample the ``long`` prompts and score them
with the Shapes detector. It calls those functions directly instead of Snakemake (so it also runs on a GPU
machine without the workflow's scheduler) and reuses whatever DIR already holds.

Prints one JSON line per job (its wall time), the base's velocity MSE (trained vs untrained), one line per
experiment (object, count, relation and whole-prompt accuracy, overall and per prompt-length bin), and the
decomposer's gains over the base given the whole prompt.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _rounded(d: dict) -> dict:
    from t2i.eval.shapes import ACCURACIES

    return {k: None if d.get(k) is None else round(d[k], 3) for k in ACCURACIES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--configfile", type=Path, action="append", default=[])
    args = ap.parse_args()

    from stages import build_asset, build_datasets, prepare_and_train, timed

    from t2i import workflow as wf
    from t2i.config import load_config
    from t2i.eval.shapes import ACCURACIES, score_folder
    from t2i.jobs import verified_inputs
    from t2i.systems import get_system
    from t2i.utils.atomic import atomic_dir, read_jsonl

    cfg = load_config(ROOT / "config.yaml", *(p.resolve() for p in args.configfile))
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(args.workdir)
    results = Path(wf.RESULTS)
    experiments = [e for e in cfg["run"] if cfg["experiments"][e]["system"] == "lpd"]

    build_datasets(cfg, experiments)
    bases = {ref["asset"] for e in experiments for ref in [cfg["experiments"][e]["inputs"]["base"]] if "asset" in ref}
    for name in sorted(bases):
        build_asset(cfg, name)
        metrics = json.loads((results / "pretrained" / name / "metrics.json").read_text())
        print(json.dumps({"base": name, "velocity_mse": metrics["velocity_mse"],
                          "untrained": metrics["velocity_mse_untrained"], "steps": metrics["steps"]}), flush=True)

    scores = {}
    for exp_name in experiments:
        system, out = get_system("lpd"), results / exp_name
        if wf.trains(cfg, exp_name):
            prepare_and_train(cfg, exp_name)
        inputs = verified_inputs(wf.stage_inputs(cfg, exp_name, "sample"))
        prompts_jsonl = Path(inputs["dataset"]) / "prompts" / "long.jsonl"
        samples = out / "samples" / "long"
        if not samples.is_dir():
            with atomic_dir(samples) as tmp:
                timed(f"sample {exp_name}", system.sample, wf.stage_experiment(cfg, exp_name, "sample"), inputs,
                      read_jsonl(prompts_jsonl), tmp)
        agg = score_folder(samples, prompts_jsonl)["aggregate"]
        scores[exp_name] = agg
        print(json.dumps({"experiment": exp_name, "compose": cfg["experiments"][exp_name]["sample"]["compose"],
                          **_rounded(agg), "n": agg["n"],
                          "by_length": {b: {**_rounded(v), "n": v["n"]} for b, v in agg["by_length"].items()}}),
              flush=True)

    by_compose = {cfg["experiments"][e]["sample"]["compose"]: e for e in experiments}
    if "decomposer" in by_compose and "prompt" in by_compose:
        d, b = scores[by_compose["decomposer"]], scores[by_compose["prompt"]]
        print(json.dumps({"decomposer_minus_base": {k: round(d[k] - b[k], 3) for k in ACCURACIES},
                          "by_length": {bin_: {k: round(d["by_length"][bin_][k] - v[k], 3) for k in ACCURACIES
                                               if v.get(k) is not None and d["by_length"][bin_].get(k) is not None}
                                        for bin_, v in b["by_length"].items() if bin_ in d["by_length"]}}),
              flush=True)


if __name__ == "__main__":
    main()
