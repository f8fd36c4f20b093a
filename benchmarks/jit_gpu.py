"""JiT-Text on one GPU through the workflow's own jobs, beside the seed's code (alfredplpl/JiT-T2I).

    python benchmarks/jit_gpu.py                                   # JiT-B/16-Text and JiT-L/16-Text, ours
    git clone https://github.com/alfredplpl/JiT-T2I .seed/JiT-T2I    # git-ignored; never committed
    python benchmarks/jit_gpu.py --seed-code .seed/JiT-T2I         # and the seed's, with our/seed ratios
    python benchmarks/jit_gpu.py --gpus 2 --presets JiT-B/16-Text  # the train job's scaling to 2 GPUs

Ours runs what the workflow's jobs run, on a 256-px caption-dir dataset written to disk and built by
the dataset job's code (``t2i.data.build``): ``prepare`` (the text cache), the ``train`` job
(``t2i.train.launch.launch_training``: PNG decoding in DataLoader workers, accelerate, bf16, compile
``auto``, two EMAs, state saves) and the ``sample`` job (``JiTSystem.sample``: prompt encoding, the
Heun ODE with CFG, PNG files). The experiment blocks come from ``t2i.config.load_config`` over
config.yaml, as in a workflow run; only Snakemake's bookkeeping is left out. The text encoder is a
random one-layer Llama as wide as llm-jp-3-3.7b (3072): training reads cached features, so its depth
costs nothing there.

Figures:
- FLOPs per image: counted by ``torch.utils.flop_counter`` on one forward and backward (matmuls,
  convolutions and attention); MFU = training FLOP/s over the dense bf16 peak (989 TFLOP/s on an
  H200) and over the measured matmul ceiling (8192^3 bf16 products).
- Training images/s: between train-log rows after the first window (which holds the compile); the
  window holding a state save gives the save's cost, amortised at the paper config's ``save_every``.
- Sampling images/s: sample jobs of 1 and 1 + ``--sample-batches`` batches after a warm-up job;
  the difference of their times over the extra images (per-job costs cancel), and the warm-up job's
  time (compile included).
- Scaling (``--gpus N``): the train job on 1 GPU and on N (``accelerate launch``, NCCL; gloo processes
  on a CPU) at the same per-GPU batch, images/s and efficiency ``ips_N / (N * ips_1)``; and on 1 GPU at
  the N-GPU run's global batch, whose loss curve (same data order, other noise draws) the N-GPU run
  should follow.
- The seed (``--seed-code``): its ``engine_jit.train_one_epoch`` on in-memory batches (its loop:
  ``loss.item()``, a synchronize and two per-tensor EMAs every step; no DDP wrapper on one GPU),
  as written (the LLM encodes 77 tokens per caption in every step: a random Llama of
  llm-jp-3-3.7b's shape, fp32 weights as ``from_pretrained`` gave at the time) and with the text
  precomputed (its projection fed pooled features); sampling through its ``Denoiser.generate`` as
  its ``evaluate`` calls it. Its ``-Text`` models need one work-around to construct:
  ``initialize_weights`` initialises a class-label table they do not have.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
H200_DENSE_BF16 = 989e12
LLM_JP_3_3_7B = dict(vocab_size=99584, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                     num_attention_heads=24, num_key_value_heads=24, max_position_embeddings=4096)
WORDS = ("red green blue yellow purple orange small large circle square triangle star left right above below "
         "near a an the of on in with two three one and photo picture").split()
PAPER_SAVE_EVERY = 2000  # configs/jit_coco.yaml
SEED_SAMPLE = dict(steps=50, method="heun", cfg=2.9, interval_min=0.1, interval_max=1.0)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_ceiling(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """FLOP/s of an ``n^3`` bf16 matrix product (mean of ``reps`` after three warm-ups)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def counted_flops(preset: str, size: int, text_dim: int, device: torch.device) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per image of our network, counted on a batch of two."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from t2i.models.jit import jit_from_preset

    model = jit_from_preset(preset, input_size=size, text_dim=text_dim).to(device)
    x, t, y = torch.randn(2, 3, size, size, device=device), torch.rand(2, device=device), torch.randn(2, text_dim, device=device)
    with sdpa_kernel(SDPBackend.MATH):  # attention as matrix products, counted on any device
        with FlopCounterMode(display=False) as fwd:
            out = model(x, t, y)
        with FlopCounterMode(display=False) as bwd:
            out.square().mean().backward()
    return fwd.get_total_flops() / 2, (fwd.get_total_flops() + bwd.get_total_flops()) / 2


# --------------------------------------------------------------------------------------------- inputs

def write_raw_dataset(root: Path, n: int, size: int) -> None:
    """``n`` photo-like JPEGs (smooth colour fields plus grain, PNG-compressible as photos are) and captions."""
    from concurrent.futures import ThreadPoolExecutor

    (root / "images").mkdir(parents=True)
    (root / "captions").mkdir()
    with ThreadPoolExecutor(8) as pool:  # threads: forking a process that holds CUDA can deadlock
        list(pool.map(write_item, [root] * n, range(n), [size] * n))


def write_item(root: Path, i: int, size: int, suffix: str = ".jpg") -> None:
    """Picture ``i`` (``images/<i>.jpg`` or ``.png``) and its caption (``captions/<i>.txt``) under ``root``."""
    from PIL import Image

    rng = np.random.default_rng(i)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-6, 7, (size, size, 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / "images" / f"{i:06d}{suffix}", quality=95)
    (root / "captions" / f"{i:06d}.txt").write_text(" ".join(rng.choice(WORDS, size=int(rng.integers(6, 16)))) + "\n")


def write_text_encoder(path: Path) -> None:
    """A random one-layer Llama with llm-jp-3-3.7b's width and a word-level tokenizer of ``WORDS`` that puts
    ``<s>`` first, as llm-jp's does (the empty caption of CFG is then one token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(path)
    config = {**LLM_JP_3_3_7B, "vocab_size": len(vocab), "num_hidden_layers": 1, "bos_token_id": 1, "eos_token_id": 2}
    LlamaModel(LlamaConfig(**config)).save_pretrained(path)


def experiment_config(presets: list[str], raw: Path, args) -> dict:
    """config.yaml plus one dataset and one jit experiment per preset, validated as a workflow run's."""
    from t2i.config import load_config

    experiments = {}
    for preset in presets:
        experiments[_exp_name(preset)] = {
            "system": "jit", "dataset": "bench256", "inputs": {"text_encoder": {"asset": "llm_jp_3_3_7b"}},
            "text": {"max_length": 77, "dtype": "bfloat16"},
            "model": {"preset": preset, "P_mean": -0.8, "P_std": 0.8, "noise_scale": 1.0},
            "train": {"steps": args.log_every * (1 + args.train_windows), "batch_size": args.batch[preset],
                      "blr": 5.0e-5, "ema_decays": [0.9999, 0.9996], "log_every": args.log_every,
                      "save_every": args.log_every * (1 + args.train_windows // 2), "mixed_precision": "bf16",
                      "num_workers": args.num_workers},
            "sample": {"prompt_sets": ["test"], "gen_bsz": args.gen_bsz, **SEED_SAMPLE}}
    overlay = {"run": list(experiments),
               "datasets": {"bench256": {"kind": "caption_dir", "path": str(raw), "image_size": args.size,
                                         "num_test": args.gen_bsz * (2 + args.sample_batches)}},
               "pretrained": {"llm_jp_3_3_7b": {"source": "huggingface", "repo_id": "llm-jp/llm-jp-3-3.7b"}},
               "experiments": experiments}
    path = raw.parent / "bench.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return load_config(ROOT / "config.yaml", path)


def _exp_name(preset: str) -> str:
    return "bench_" + preset.split("-")[1].replace("/", "")


# ---------------------------------------------------------------------------------------------- ours

def prepare_job(config: dict, name: str, dataset: Path, encoder: Path, work: Path) -> Path:
    """The prepare job's work (the text cache) and its ``SHA256SUMS``, as ``workflow_scripts/prepare.py`` writes them."""
    from t2i import workflow as wf
    from t2i.checkpoints.hashing import write_sha256sums
    from t2i.systems.jit import JiTSystem

    prepared = work / name / "prepare"
    if not (prepared / "SHA256SUMS").is_file():
        JiTSystem().prepare(wf.stage_experiment(config, name, "prepare"), {"dataset": dataset, "text_encoder": encoder},
                            prepared)
        write_sha256sums(prepared)
    return prepared


def train_job(exp: dict, dataset: Path, prepared: Path, out_dir: Path, processes: int) -> tuple[list[dict], float]:
    """The train job's launcher on ``processes`` GPUs (gloo processes on a CPU): its log rows and start time."""
    from t2i.train.launch import launch_training

    start = time.time()
    launch_training(exp, {"dataset": dataset, "prepared": prepared}, out_dir, num_processes=processes,
                    gpus=processes if torch.cuda.is_available() else 0)
    return [json.loads(line) for line in (out_dir / "model" / "train_log.jsonl").read_text().splitlines()], start


def train_rate(rows: list[dict], train: dict) -> tuple[float, float]:
    """(seconds per step, seconds per state save) from the log windows after the first row (which holds the
    compile); a save at step s falls in the window that ends at s + log_every."""
    every = train["log_every"]
    windows = [(b["time"] - a["time"], b["step"]) for a, b in zip(rows, rows[1:])]
    saved = [s for _, s in windows if (s - every) % train["save_every"] == 0]
    step_s = statistics.median(w for w, s in windows if s not in saved) / every
    save_s = max(0.0, statistics.mean(w for w, s in windows if s in saved) - step_s * every) if saved else 0.0
    return step_s, save_s


def ours(preset: str, config: dict, dataset: Path, encoder: Path, work: Path, args) -> dict:
    """Training and sampling figures of one preset through the prepare, train and sample jobs' code."""
    from t2i import workflow as wf
    from t2i.systems.jit import JiTSystem
    from t2i.utils.atomic import read_jsonl

    name, system = _exp_name(preset), JiTSystem()
    prepared = prepare_job(config, name, dataset, encoder, work)
    train_dir = work / name / "train"
    exp = wf.stage_experiment(config, name, "train")
    rows, start = train_job(exp, dataset, prepared, train_dir, 1)
    step_s, save_s = train_rate(rows, exp["train"])
    batch = exp["train"]["batch_size"]
    out = {"train_ips": batch / step_s, "save_s": save_s,
           "train_ips_paper_saves": batch / (step_s + save_s / PAPER_SAVE_EVERY), "first_row_s": rows[0]["time"] - start}

    sample_exp = wf.stage_experiment(config, name, "sample")
    prompts = read_jsonl(dataset / "prompts" / "test.jsonl")
    inputs = {"model": train_dir / "model", "text_encoder": encoder}
    timings = []
    for batches in (1, 1, 1 + args.sample_batches):  # warm-up, then two sizes
        job = copy.deepcopy(sample_exp)
        job["sample"]["num_images"] = batches * args.gen_bsz
        with tempfile.TemporaryDirectory(dir=work) as samples:
            sync()
            start = time.perf_counter()
            system.sample(job, inputs, prompts, Path(samples))
            timings.append(time.perf_counter() - start)
            assert len(list(Path(samples).glob("*.png"))) == batches * args.gen_bsz
    per_batch = (timings[2] - timings[1]) / args.sample_batches
    out.update(sample_warmup_s=timings[0], sample_job_fixed_s=timings[1] - per_batch, sample_ips=args.gen_bsz / per_batch)
    return out


def scaling(preset: str, config: dict, dataset: Path, encoder: Path, work: Path, gpus: int) -> dict:
    """The train job on 1 and ``gpus`` GPUs at the same per-GPU batch (images/s, scaling efficiency), and on
    1 GPU at the multi-GPU run's global batch: the loss curve the multi-GPU run should follow."""
    from t2i import workflow as wf

    name = _exp_name(preset)
    prepared = prepare_job(config, name, dataset, encoder, work)
    base = wf.stage_experiment(config, name, "train")
    per_gpu = base["train"]["batch_size"]
    runs = {}
    for label, processes, batch in (("1", 1, per_gpu), (str(gpus), gpus, gpus * per_gpu), ("1_same_global", 1, gpus * per_gpu)):
        exp = copy.deepcopy(base)
        exp["train"]["batch_size"] = batch
        rows, _ = train_job(exp, dataset, prepared, work / name / f"scaling-{label}", processes)
        runs[label] = {"ips": batch / train_rate(rows, exp["train"])[0], "loss": [r["loss"] for r in rows]}
    multi, single = runs[str(gpus)]["loss"], runs["1_same_global"]["loss"]
    return {"per_gpu_batch": per_gpu, "ips_1": runs["1"]["ips"], "ips_n": runs[str(gpus)]["ips"],
            "efficiency": runs[str(gpus)]["ips"] / (gpus * runs["1"]["ips"]), "loss_multi": multi, "loss_single": single,
            "loss_rel_diff": statistics.mean(abs(a - b) / b for a, b in zip(multi, single))}


# ---------------------------------------------------------------------------------------------- seed

class _RandomLLM:
    """Stands in for ``transformers.AutoModel`` in the seed's model file: a random Llama of llm-jp-3-3.7b's shape."""

    shape = LLM_JP_3_3_7B

    @classmethod
    def from_pretrained(cls, name: str):
        from transformers import LlamaConfig, LlamaModel

        return LlamaModel(LlamaConfig(**cls.shape))


class _PooledText(torch.nn.Module):
    """The seed's text path with the LLM run beforehand: its projection applied to pooled features,
    which travel in the ``input_ids`` slot (its caption dropout zeroes them like token ids)."""

    def __init__(self, projection: torch.nn.Linear):
        super().__init__()
        self.projection = projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.projection(input_ids)


def _import_seed(seed_dir: Path):
    sys.path.insert(0, str(seed_dir.resolve()))
    sys.modules.setdefault("torch_fidelity", types.ModuleType("torch_fidelity"))  # imported, unused by training
    import denoiser
    import engine_jit
    import model_jit

    model_jit.AutoModel = _RandomLLM
    # The work-around: initialize_weights initialises y_embedder.embedding_table, a class-label table that the
    # -Text models' LLMTextEncoder lacks (AttributeError); it initialises the projection instead.
    model_jit.LLMTextEncoder.embedding_table = property(lambda self: self.projection)
    return denoiser, engine_jit


def _seed_args(preset: str, batch: int, gen_bsz: int) -> argparse.Namespace:
    return argparse.Namespace(
        model=preset, img_size=256, class_num=1000, attn_dropout=0.0, proj_dropout=0.0, use_text_conditioning=True,
        llm_model_name="llm-jp/llm-jp-3-3.7b", freeze_llm=True, label_drop_prob=0.1, P_mean=-0.8, P_std=0.8,
        t_eps=0.05, noise_scale=1.0, ema_decay1=0.9999, ema_decay2=0.9996, sampling_method=SEED_SAMPLE["method"],
        num_sampling_steps=SEED_SAMPLE["steps"], cfg=SEED_SAMPLE["cfg"], interval_min=SEED_SAMPLE["interval_min"],
        interval_max=SEED_SAMPLE["interval_max"], batch_size=batch, gen_bsz=gen_bsz, lr=5e-5 * batch / 256,
        min_lr=0.0, warmup_epochs=5, epochs=600, lr_schedule="constant", weight_decay=0.0, log_freq=100)


class _TimedBatches:
    """In-memory batches for the seed's ``train_one_epoch``, recording when each is taken."""

    def __init__(self, batches: list, times: list[float]):
        self.batches, self.times = batches, times

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.times.append(time.perf_counter())
            yield batch


def seed(preset: str, seed_dir: Path, device: torch.device, args) -> dict:
    """The seed's training (as written, text precomputed) and sampling figures for one preset."""
    denoiser, engine = _import_seed(seed_dir)
    torch._dynamo.config.cache_size_limit = 128  # main_jit.py's setting
    batch = args.batch[preset]
    sa = _seed_args(preset, batch, args.seed_gen_bsz)
    with torch.device(device):
        model = denoiser.Denoiser(sa)
    model.ema_params1 = copy.deepcopy(list(model.parameters()))
    model.ema_params2 = copy.deepcopy(list(model.parameters()))
    optimizer = _seed_optimizer(model, sa)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 256, 256), dtype=torch.uint8, generator=g)
    tokens = torch.randint(2, 99584, (batch, 77), generator=g)
    mask = torch.ones(batch, 77, dtype=torch.long)
    out = {}

    def train_ips(batches: list, skip: int) -> float:
        times: list[float] = []
        engine.train_one_epoch(model, model, _TimedBatches(batches, times), optimizer, device, 0, args=sa)
        sync()
        times.append(time.perf_counter())
        return (len(times) - 1 - skip) * batch / (times[-1] - times[skip])

    out["train_ips_as_written"] = train_ips([(images, tokens, mask)] * (args.seed_steps + 5), skip=5)
    gen = torch.randint(2, 99584, (args.seed_gen_bsz, 77), generator=g).to(device)
    out["sample_ips_as_written"] = _seed_sample_ips(model, gen, torch.ones_like(gen))

    model.net.y_embedder = _PooledText(model.net.y_embedder.projection)
    model.ema_params1 = copy.deepcopy(list(model.parameters()))
    model.ema_params2 = copy.deepcopy(list(model.parameters()))
    optimizer = _seed_optimizer(model, sa)
    torch.cuda.empty_cache()
    pooled = torch.randn(batch, LLM_JP_3_3_7B["hidden_size"], generator=g)
    out["train_ips_text_precomputed"] = train_ips([(images, pooled, mask[:, :1])] * (args.seed_steps + 5), skip=5)
    return out


def _seed_optimizer(model, sa: argparse.Namespace) -> torch.optim.Optimizer:
    """main_jit.py's optimizer: its own weight-decay groups (trainable parameters only), AdamW betas (0.9, 0.95)."""
    from util import misc

    return torch.optim.AdamW(misc.add_weight_decay(model, sa.weight_decay), lr=sa.lr, betas=(0.9, 0.95))


def _seed_sample_ips(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> float:
    model.eval()
    with torch.amp.autocast("cuda", dtype=torch.bfloat16):
        steps, model.steps = model.steps, 2
        model.generate(input_ids=input_ids, attention_mask=attention_mask)  # compile warm-up
        model.steps = steps
        sync()
        start = time.perf_counter()
        model.generate(input_ids=input_ids, attention_mask=attention_mask)
        sync()
    model.train()
    return len(input_ids) / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["JiT-B/16-Text", "JiT-L/16-Text"])
    ap.add_argument("--images", type=int, default=1024, help="training images written to disk")
    ap.add_argument("--size", type=int, default=256, help="image side (the seed's code runs at 256 only)")
    ap.add_argument("--batch", type=int, help="training batch (default: the issue's, 128 for B and 64 for L)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--train-windows", type=int, default=12, help="timed log windows after the compile window")
    ap.add_argument("--num-workers", type=int, default=8)
    ap.add_argument("--gen-bsz", type=int, default=128)
    ap.add_argument("--sample-batches", type=int, default=3)
    ap.add_argument("--seed-code", type=Path, help="a checkout of alfredplpl/JiT-T2I (git-ignored .seed/JiT-T2I)")
    ap.add_argument("--seed-steps", type=int, default=20)
    ap.add_argument("--seed-gen-bsz", type=int, default=64, help="the seed's sampling batch (its LLM runs in each call)")
    ap.add_argument("--only", choices=["ours", "seed"], help="run one side only")
    ap.add_argument("--gpus", type=int, default=1, help="> 1: only the train job's scaling from 1 to this many GPUs "
                    "(gloo processes on a CPU), for the first preset")
    ap.add_argument("--work", type=Path, help="working folder, kept with a results.json (default: a temporary one)")
    args = ap.parse_args()
    args.batch = {p: args.batch or (64 if p.startswith("JiT-L") else 128) for p in args.presets}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    ceiling = matmul_ceiling(device) if device.type == "cuda" else float("nan")
    print(f"matmul ceiling (8192^3 bf16): {ceiling / 1e12:.0f} TFLOP/s; dense bf16 peak {H200_DENSE_BF16 / 1e12:.0f}")
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jit_gpu-")))
        results = {}
        if args.only != "seed" or args.gpus > 1:
            from t2i.data.build import build_dataset

            raw, encoder = work / "raw", work / "llm"
            start = time.perf_counter()
            write_raw_dataset(raw, args.images + args.gen_bsz * (2 + args.sample_batches), args.size)
            write_text_encoder(encoder)
            config = experiment_config(args.presets, raw, args)
            dataset = build_dataset(config["datasets"]["bench256"], work / "dataset")
            print(f"dataset: {args.images} training images, {args.size} px PNG ({time.perf_counter() - start:.0f} s to write and build)")
        if args.gpus > 1:
            r = results["scaling"] = scaling(args.presets[0], config, dataset, encoder, work, args.gpus)
            print(f"\n{args.presets[0]} train job, {r['per_gpu_batch']} images per GPU: 1 GPU {r['ips_1']:.1f} images/s, "
                  f"{args.gpus} GPUs {r['ips_n']:.1f} images/s: scaling efficiency {r['efficiency']:.1%}")
            print(f"  loss per log row, {args.gpus} GPUs vs 1 GPU at the same global batch "
                  f"(mean relative difference {r['loss_rel_diff']:.2%}):")
            print("  " + "  ".join(f"{a:.4f}/{b:.4f}" for a, b in zip(r["loss_multi"], r["loss_single"])))
        for preset in args.presets if args.gpus == 1 else []:
            fwd, train = counted_flops(preset, args.size, LLM_JP_3_3_7B["hidden_size"], device)
            r = results[preset] = {"fwd_flops": fwd, "train_flops": train}
            if args.only != "seed":
                r["ours"] = ours(preset, config, dataset, encoder, work, args)
            if args.seed_code and args.only != "ours":
                r["seed"] = seed(preset, args.seed_code, device, args)
            torch.cuda.empty_cache()
            report(preset, r, args, ceiling)
        if args.work:
            (work / "results.json").write_text(json.dumps(results, indent=1))


def report(preset: str, r: dict, args, ceiling: float) -> None:
    mfu = lambda ips: f"{ips * r['train_flops'] / H200_DENSE_BF16:5.1%} of peak, {ips * r['train_flops'] / ceiling:5.1%} of the ceiling"
    print(f"\n{preset} at {args.size} px: {r['fwd_flops'] / 1e9:.1f} GFLOP forward, {r['train_flops'] / 1e9:.1f} GFLOP "
          f"forward+backward per image (counted); batch {args.batch[preset]}, sampling batch {args.gen_bsz}, "
          f"{SEED_SAMPLE['steps']} Heun steps, CFG {SEED_SAMPLE['cfg']} in ({SEED_SAMPLE['interval_min']}, {SEED_SAMPLE['interval_max']})")
    o, s = r.get("ours"), r.get("seed")
    if o:
        print(f"  ours, train job:    {o['train_ips']:8.1f} images/s ({mfu(o['train_ips'])}); a state save "
              f"{o['save_s']:.1f} s: {o['train_ips_paper_saves']:.1f} images/s saving every {PAPER_SAVE_EVERY} steps; "
              f"first log row after {o['first_row_s']:.0f} s (start-up, compile, {args.log_every} steps)")
        print(f"  ours, sample job:   {o['sample_ips']:8.2f} images/s (PNG files included); warm-up job "
              f"{o['sample_warmup_s']:.0f} s, then {o['sample_job_fixed_s']:.1f} s per job besides its batches")
    if s:
        print(f"  seed, as written:   {s['train_ips_as_written']:8.1f} images/s training ({mfu(s['train_ips_as_written'])}), "
              f"{s['sample_ips_as_written']:.2f} images/s sampling (batch {args.seed_gen_bsz})")
        print(f"  seed, text precomputed: {s['train_ips_text_precomputed']:8.1f} images/s training "
              f"({mfu(s['train_ips_text_precomputed'])})")
    if o and s:
        print(f"  ours / seed: training {o['train_ips'] / s['train_ips_as_written']:.2f}x as written, "
              f"{o['train_ips'] / s['train_ips_text_precomputed']:.2f}x text precomputed; "
              f"sampling {o['sample_ips'] / s['sample_ips_as_written']:.2f}x")


if __name__ == "__main__":
    main()
