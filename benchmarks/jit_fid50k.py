"""FID-50K of configs/jit_coco.yaml's JiT-B/16 experiment on one GPU, stage by stage, through the jobs' own code.

    python benchmarks/jit_fid50k.py                  # 50 000 prompts and reference images
    python benchmarks/jit_fid50k.py --images 5000    # a tenth, and the 50 000 projection

FID-50K is three jobs of the workflow: the reference statistics of the prompt set's images
(``t2i.eval.evaluate.write_reference_stats``, cached per dataset and extractor), sampling
(``JiTSystem.sample`` with jit_coco's sample block: 50 Heun steps, CFG 2.9 in (0.1, 1.0),
gen_bsz 128, PNG files) and evaluation (``evaluate_samples`` with jit_coco's evaluate block:
FID, IS and KID on Inception features). Each is timed as its job runs it, on the GPU that
jit_coco's resources give it. The inputs are stand-ins where speed does not depend on content:
a caption-dir test split of N prompts with N 256-px photo-like reference PNGs (written in threads;
building a dataset is not part of FID-50K), a JiT-B/16-Text model folder with random weights,
the random one-layer Llama of llm-jp-3-3.7b's width of ``jit_gpu.py`` as the text encoder, and
torch-fidelity's InceptionV3 with random weights unless ``--inception`` names the real file (the
figures FID, IS and KID are then meaningless; the time is not). With N below 50 000 every stage
is also projected to 50 000 linearly in N, which over-counts its fixed costs (start-up, compile,
the one matrix square root of FID).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from eval_speed import random_inception
from jit_gpu import ROOT, sync, write_item, write_text_encoder

EXPERIMENT = "jit_b16_coco256"
FULL = 50_000


def write_test_split(root: Path, n: int) -> Path:
    """A caption-dir dataset whose ``test`` prompt set is ``n`` captions with a 256-px reference image each."""
    from t2i.utils.atomic import atomic_write_jsonl

    (root / "images").mkdir(parents=True)
    (root / "captions").mkdir()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: write_item(root, i, 256, suffix=".png"), range(n)))
    prompts = [{"id": f"{i:06d}", "prompt": (root / "captions" / f"{i:06d}.txt").read_text().strip(),
                "reference": f"{i:06d}", "spec": None} for i in range(n)]
    atomic_write_jsonl(root / "prompts" / "test.jsonl", prompts)
    return root


def random_model(out: Path, preset: str, text_dim: int) -> Path:
    """A JiT model folder as the train job exports it, with the preset's initial (random) weights."""
    from t2i.models.folder import save_model_folder
    from t2i.models.jit import jit_from_preset
    from t2i.systems.jit import NETWORK

    torch.manual_seed(0)
    network = jit_from_preset(preset, input_size=256, text_dim=text_dim)
    for module in network.modules():  # the zero-initialised output layers would make every image grey
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
    save_model_folder(out, "jit", {NETWORK: network}, {"image_size": 256, "text_dim": text_dim,
                                                       "noise_scale": 1.0, "t_eps": 0.05})
    return out


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=FULL)
    ap.add_argument("--inception", type=Path, help="the real torch-fidelity weights file (default: random weights)")
    ap.add_argument("--work", type=Path, help="working folder, kept (default: a temporary one)")
    ap.add_argument("--preset", help="another network than jit_coco's (a quick CPU check: JiT-T/8-Text)")
    args = ap.parse_args()

    from t2i import workflow as wf
    from t2i.config import load_config
    from t2i.eval.evaluate import evaluate_samples, write_reference_stats
    from t2i.systems.jit import JiTSystem
    from t2i.utils.atomic import read_jsonl

    config = load_config(ROOT / "config.yaml", ROOT / "configs" / "jit_coco.yaml")
    sample_exp = wf.stage_experiment(config, EXPERIMENT, "sample")
    sample_exp["sample"]["num_images"] = args.images
    eval_exp = wf.stage_experiment(config, EXPERIMENT, "evaluate")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device: {device}, torch {torch.__version__}; {EXPERIMENT}: {args.images} images, "
          f"sample {json.dumps({k: sample_exp['sample'][k] for k in ('steps', 'method', 'cfg', 'gen_bsz')})}, "
          f"evaluate {eval_exp['evaluate']['metrics']} on {eval_exp['evaluate']['extractor']}")
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fid50k-")))
        start = time.perf_counter()
        dataset = write_test_split(work / "dataset", args.images)
        encoder = work / "llm"
        write_text_encoder(encoder)
        model = random_model(work / "model", args.preset or config["experiments"][EXPERIMENT]["model"]["preset"], 3072)
        inception = args.inception or random_inception(work / "inception" / "weights.pth")
        print(f"inputs written in {time.perf_counter() - start:.0f} s"
              f"{'' if args.inception else ' (Inception with random weights)'}")

        stats, samples = work / "reference_stats.npz", work / "samples"
        stages = {
            "reference statistics": lambda: write_reference_stats(dataset, "test", eval_exp["evaluate"]["extractor"],
                                                                  inception, stats),
            "sampling": lambda: JiTSystem().sample(sample_exp, {"model": model, "text_encoder": encoder},
                                                   read_jsonl(dataset / "prompts" / "test.jsonl"), samples),
            "evaluation": lambda: evaluate_samples(
                {**eval_exp, "evaluate": {**eval_exp["evaluate"], "families": ["fidelity"]}}, prompt_set="test",
                inputs={"samples": samples, "dataset": dataset, "reference": stats, "extractor": inception},
                out_path=work / "metrics.json"),
        }
        seconds = {name: timed(fn) for name, fn in stages.items()}
    scale = FULL / args.images
    for name, s in seconds.items():
        print(f"  {name:22s} {s:8.1f} s  ({args.images / s:7.1f} images/s)"
              + (f"; {s * scale / 60:6.1f} min projected for {FULL}" if scale != 1 else ""))
    total = sum(seconds.values())
    print(f"  {'FID-' + str(args.images):22s} {total / 60:8.1f} min" +
          (f"; {total * scale / 60:.1f} min projected for {FULL} (goal: 30)" if scale != 1 else " (goal: 30)"))


if __name__ == "__main__":
    main()
