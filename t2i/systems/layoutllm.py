"""LayoutLLM-T2I (seed 000): a policy picks in-context examples, a planner (an LLM) writes the layout, a GLIGEN
U-Net with the relation module draws it.

Stages:

- ``prepare``: the candidate examples and, for policy training, the training queries: from a candidate file in
  the original's structure (role ``candidates``) or drawn from a Shapes dataset's train split
  (``candidates.cand_number`` / ``train_number``); both are written as candidate files, with the CLIP text
  features of their captions (role ``clip``: ``get_text_features``, projected, not normalised, as the original).
- ``train`` (the policy, :mod:`t2i.layout.policy`): REINFORCE through the shared loop; a query's reward is
  ``reward.iou`` x max-IoU + ``reward.similarity`` x layout similarity of the parsed plan against the query's
  ground-truth boxes (``t2i.layout.metrics``), + ``reward.detector`` x the Shapes detector's prompt accuracy on
  the image the drawer (role ``drawer``) draws from the plan; a plan that parses empty is skipped, as the
  original skips it. ``policy.select: random`` (the ablation), or a ``model`` role holding the original's
  ``policy_weights.pt``, has no train stage.
- ``plan``: per prompt set, ``layouts/{prompt_set}.jsonl``: the picked examples, the planner's answer, the
  parsed layout (normalised xyxy), dropped-object counts and the prompt's relation triplets. Sampling knobs never
  rerun it.
- ``sample``: the drawer on each plan (:func:`t2i.latent.gligen.draw`: classifier-free guidance, scheduled
  sampling ``beta``); the clean image is the sample, the image with its boxes drawn is the ``boxes`` extra, and
  the row's ``layout`` feeds the ``layout`` metric family.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import torch

from t2i.utils.atomic import atomic_write_json, atomic_write_jsonl, read_jsonl

log = logging.getLogger(__name__)

SYSTEM = "layoutllm"
POLICY = "policy"
CANDIDATES, QUERIES, FEATURES, SUMMARY = "candidates.json", "train_queries.json", "features.safetensors", "summary.json"
TRAIN_SPEED_KEYS = ("save_every", "log_every")


# ---------------------------------------------------------------------------- CLIP text features

class ClipFeatures:
    """CLIP's projected text features (``get_text_features``; not normalised), as the policy reads them."""

    def __init__(self, folder: Path, device=None):
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        from t2i.text.sdxl_encoders import text_model

        self.model = text_model(CLIPTextModelWithProjection, Path(folder)).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.device = device or torch.device("cpu")
        self.model.to(self.device)

    @property
    def dim(self) -> int:
        return self.model.config.projection_dim

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            ids = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt").to(self.device)
            out.append(self.model(**ids).text_embeds.float().cpu())
        return torch.cat(out)


def _candidate_file(folder: Path) -> Path:
    folder = Path(folder)
    if folder.is_file():
        return folder
    files = sorted(folder.glob("*.json"))
    files = [f for f in files if f.name not in ("provenance.json",)]
    if len(files) != 1:
        raise ValueError(f"inputs.candidates: {folder} holds {len(files)} JSON files, not one candidate file")
    return files[0]


def read_prepared(prepared: Path) -> tuple[list[dict], list[dict], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    from t2i.layout.examples import read_candidates

    queries = read_candidates(prepared / QUERIES) if (prepared / QUERIES).is_file() else []
    return read_candidates(prepared / CANDIDATES), queries, load_file(prepared / FEATURES)


# ---------------------------------------------------------------------------- plans

def plan_layout(text: str, plan_cfg: dict, context: str) -> tuple[list[dict], int]:
    """An answer as a drawable layout (normalised xyxy) and its dropped-object count."""
    from t2i.layout.examples import xywh_to_xyxy
    from t2i.layout.parse import layout_or_empty, parse_layout

    parsed = parse_layout(text, plan_cfg["parser"])
    objects = layout_or_empty(parsed, plan_cfg["on_malformed"], context)
    return [{"name": o["name"], "box": xywh_to_xyxy(o["box"])} for o in objects], parsed.dropped


def select(exp: dict, policy, query: torch.Tensor, candidates: torch.Tensor, rng: np.random.Generator) -> list[int]:
    """The examples of one query (best last): the policy's top ``shot_number``, or a random pick."""
    from t2i.layout.policy import random_examples, top_examples

    k = exp["plan"]["shot_number"]
    if policy is None:
        return random_examples(rng, len(candidates), k)
    with torch.no_grad():
        return top_examples(policy.scores(query[None], candidates)[0], k)


def _relations(exp: dict):
    from t2i.layout.relations import RELATION_PARSERS

    return RELATION_PARSERS[exp["plan"]["relations"]]


# ---------------------------------------------------------------------------- policy training

class PolicyTask:
    """REINFORCE on the policy (module docstring); the drawer is frozen."""

    def __init__(self, policy, drawer, exp: dict, candidates: list[dict], queries: list[dict],
                 features: dict[str, torch.Tensor], planner):
        from t2i.models import public_config
        from t2i.train.task import OptimizerSpec

        t = exp["train"]
        self.exp, self.candidates, self.queries, self.features, self.planner = exp, candidates, queries, features, planner
        self.modules, self.frozen, self.ema = {POLICY: policy}, ({"drawer": drawer} if drawer is not None else {}), []
        self.optimizers = {POLICY: OptimizerSpec([{"params": list(policy.parameters())}], lr=t["lr"], kind="adam")}
        self.identity = {"policy": public_config(policy), "plan": exp["plan"], "reward": exp["reward"],
                         "candidates": exp["candidates"],
                         "train": {k: v for k, v in t.items() if k not in TRAIN_SPEED_KEYS}}
        self.relations = _relations(exp)

    def _rewards(self, ctx, plans: list[list[dict]], queries: list[dict], step: int) -> list[float]:
        from t2i.layout.examples import xywh_to_xyxy
        from t2i.layout.metrics import layout_similarity, max_iou

        w = self.exp["reward"]
        rewards = []
        for plan, q in zip(plans, queries):
            truth = [{"name": o["name"], "box": xywh_to_xyxy(o["box"])} for o in q["objects"]]
            rewards.append(w["iou"] * max_iou(plan, truth) + w["similarity"] * layout_similarity(plan, truth))
        if w["detector"]:
            for i, acc in enumerate(self._detector_scores(ctx, plans, queries, step)):
                rewards[i] += w["detector"] * acc
        return rewards

    def _detector_scores(self, ctx, plans: list[list[dict]], queries: list[dict], step: int) -> list[float]:
        from t2i.data.images import tensor_to_uint8
        from t2i.eval.shapes import detect, score_one
        from t2i.latent.gligen import draw, unconditional

        drawer, r = ctx.module("drawer"), self.exp["reward"]
        device = next(drawer.parameters()).device
        prompts = [q["caption"] for q in queries]
        relations = [self.relations(p) for p in prompts]
        c, h = drawer.unet.config.in_channels, drawer.unet.config.sample_size
        noise = torch.stack([torch.randn((c, h, h), generator=torch.Generator().manual_seed(int(
            np.random.default_rng([self.exp["train"]["seed"] % 2**64, step, q["index"], 3]).integers(2**62))))
            for q in queries]).to(device)  # per (step, query): independent of the batch's other queries
        x = draw(drawer, noise, drawer.conditions(prompts, plans, relations, device),
                 unconditional(drawer, relations, device) if r["cfg"] != 1 else None,
                 steps=r["draw_steps"], cfg=r["cfg"], beta=r["beta"], scheduler=r["scheduler"])
        images = tensor_to_uint8(drawer.decode(x))
        return [score_one(detect(img), q["spec"])["prompt_acc"] for img, q in zip(images, queries)]

    def step(self, batch: list[int], step: int, ctx) -> dict[str, torch.Tensor]:
        from t2i.layout.policy import reinforce_loss, sample_examples

        policy, exp = ctx.module(POLICY), self.exp
        device = next(policy.parameters()).device
        cand = self.features["candidates"].to(device)
        # PolicyNetwork.scores by hand: ``policy`` may be its DDP wrapper, whose forward is the Linear
        scores = policy(self.features["queries"][batch].to(device)) @ policy(cand).T
        log_probs, plans, queries = [], [], []
        for row, index in zip(scores, batch):
            q = {**self.queries[index], "index": index}
            rng = np.random.default_rng([exp["train"]["seed"] % 2**64, step, index])  # resumable, per query
            picks, logp = sample_examples(row, exp["plan"]["shot_number"], exp["train"]["policy_temperature"], rng)
            examples = [self.candidates[i] for i in picks[::-1]]  # reversed as the original (train_rl.py)
            answer = self.planner.answer(q["caption"], examples)
            layout, _ = plan_layout(answer, {**exp["plan"], "on_malformed": "empty"}, q["caption"])
            if layout:  # an empty parse is skipped, as the original
                log_probs.append(logp), plans.append(layout), queries.append(q)
        if not plans:
            return {"loss": torch.zeros((), device=device), "reward": torch.zeros((), device=device)}
        rewards = self._rewards(ctx, plans, queries, step)
        loss = reinforce_loss(log_probs, rewards)
        ctx.backward(loss)
        ctx.optimizer_step(POLICY)
        return {"loss": loss.detach(), "reward": torch.tensor(float(np.mean(rewards)), device=device)}

    def export(self, weights: dict, out_dir: Path) -> None:
        from t2i.models.policy import PolicyNetwork
        from t2i.models.folder import save_model_folder

        policy = PolicyNetwork.from_config(self.modules[POLICY].config)
        policy.load_state_dict(weights[POLICY])
        save_model_folder(out_dir, SYSTEM, {POLICY: policy})


def _indices(items: list[int]) -> list[int]:
    """The loop's batches are lists of query indices (a ``range`` is the dataset)."""
    return list(items)


def load_policy(source: Path, exp: dict, in_dim: int):
    """The policy to plan with: a layoutllm model folder, or a folder/file holding ``policy_weights.pt``."""
    from t2i.layout.policy import load_policy_weights
    from t2i.models.folder import INDEX, load_component

    source, size = Path(source), exp["policy"]["embedding_size"]
    if (source / INDEX).is_file():
        policy = load_component(source, POLICY, system=SYSTEM)
        if policy.config.in_dim != in_dim:
            raise ValueError(f"inputs.model: {source}'s policy reads {policy.config.in_dim}-d features, inputs.clip "
                             f"gives {in_dim}-d ones")
        return policy
    files = [source] if source.is_file() else sorted(source.glob("*.pt")) + sorted(source.glob("*.pth"))
    if len(files) != 1:
        raise ValueError(f"inputs.model: {source} holds {len(files)} .pt files, not one policy state dict")
    return load_policy_weights(files[0], in_dim, size)


# ---------------------------------------------------------------------------- the system

class LayoutLLMSystem:
    """The ``layoutllm`` system: prepare (examples) -> train (the policy) -> plan (layouts) -> sample (drawings)."""

    def prepare(self, exp: dict, inputs: dict[str, Path], out_dir: Path) -> None:
        from safetensors.torch import save_file

        from t2i.data.shapes import image_size_of
        from t2i.layout.examples import read_candidates, shapes_examples, split_candidates, write_candidates

        c, dataset = exp["candidates"], Path(inputs["dataset"])
        if "candidates" in inputs:
            candidates, queries = read_candidates(_candidate_file(inputs["candidates"])), []
            size = 512
        else:
            annotations = dataset / "annotations.jsonl"
            if not annotations.is_file():
                raise ValueError(f"{dataset}: without a `candidates` input, layoutllm draws its examples from a "
                                 "Shapes dataset's train split (annotations.jsonl with boxes)")
            rows = [r for r in read_jsonl(annotations) if r["split"] == "train"]
            size = image_size_of(dataset)
            cand_rows, query_rows = split_candidates(rows, c["cand_number"], c["train_number"], c["seed"])
            candidates, queries = shapes_examples(cand_rows, size), shapes_examples(query_rows, size)
        clip = ClipFeatures(inputs["clip"])
        write_candidates(out_dir / CANDIDATES, candidates, size)
        features = {"candidates": clip([e["caption"] for e in candidates]).contiguous()}
        if queries:
            write_candidates(out_dir / QUERIES, queries, size)
            features["queries"] = clip([e["caption"] for e in queries]).contiguous()
        save_file(features, out_dir / FEATURES)
        atomic_write_json(out_dir / SUMMARY, {"candidates": len(candidates), "train_queries": len(queries),
                                              "feature_dim": clip.dim})

    def train(self, exp: dict, inputs: dict[str, Path], out_dir: Path) -> None:
        from t2i.latent.gligen import GLIGENDrawer
        from t2i.layout.planner import make_planner
        from t2i.models.policy import PolicyNetwork
        from t2i.train.loop import run_training
        from t2i.workflow import llm_cache_dir

        candidates, queries, features = read_prepared(inputs["prepared"])
        if not queries:
            raise ValueError(f"{inputs['prepared']}: no training queries (a `candidates` file brings candidates "
                             "only): sample with a trained policy in the `model` role, or draw examples from a "
                             "Shapes dataset")
        t = exp["train"]
        if t["batch_size"] > len(queries):
            raise ValueError(f"train.batch_size {t['batch_size']} exceeds the {len(queries)} training queries "
                             "(candidates.train_number)")
        torch.manual_seed(t["seed"])
        policy = PolicyNetwork(in_dim=features["candidates"].shape[1],
                               embedding_size=exp["policy"]["embedding_size"])
        drawer = GLIGENDrawer.load(inputs["drawer"]) if exp["reward"]["detector"] else None
        task = PolicyTask(policy, drawer, exp, candidates, queries, features, make_planner(exp["plan"], llm_cache_dir()))
        steps = t["epochs"] * (len(queries) // t["batch_size"])  # the loop's epochs drop the remainder
        used = ("prepared", "drawer") if drawer is not None else ("prepared",)
        run_training(task, range(len(queries)),
                     {"steps": steps, "batch_size": t["batch_size"], "seed": t["seed"], "mixed_precision": "no",
                      "compile": False, "save_every": t["save_every"], "log_every": t["log_every"]},
                     out_dir, inputs={k: inputs[k] for k in used}, collate_fn=_indices)

    def plan(self, exp: dict, inputs: dict[str, Path], prompts: list[dict], out_path: Path) -> None:
        from t2i.layout.planner import make_planner
        from t2i.workflow import llm_cache_dir

        candidates, _, features = read_prepared(inputs["prepared"])
        cand = features["candidates"]
        policy = None
        if exp["policy"]["select"] == "policy":
            policy = load_policy(inputs["model"], exp, cand.shape[1]).eval()
        planner = make_planner(exp["plan"], llm_cache_dir())
        queries = ClipFeatures(inputs["clip"])([p["prompt"] for p in prompts])
        relations, rows, dropped = _relations(exp), [], 0
        for p, q in zip(prompts, queries):
            rng = np.random.default_rng([exp["plan"]["seed"] % 2**64, zlib.crc32(p["id"].encode())])  # by prompt id
            picks = select(exp, policy, q, cand, rng)
            examples = [candidates[k] for k in picks]
            answer = planner.answer(p["prompt"], examples)
            layout, n_dropped = plan_layout(answer, exp["plan"], f"prompt {p['id']!r}")
            dropped += n_dropped
            rows.append({"id": p["id"], "prompt": p["prompt"], "examples": [e["id"] for e in examples],
                         "answer": answer, "layout": layout, "dropped": n_dropped,
                         "relations": relations(p["prompt"]), "planner": planner.label})
        log.info("%d plans, %d objects dropped by the %s parser", len(rows), dropped, exp["plan"]["parser"])
        atomic_write_jsonl(out_path, rows)

    def sample(self, exp: dict, inputs: dict[str, Path], prompts: list[dict], out_dir: Path) -> None:
        from t2i.latent.gligen import GLIGENDrawer, draw, unconditional
        from t2i.systems.sampling import Generated, row_noise, run_sampling
        from t2i.utils.compile import compile_if_wanted
        from t2i.utils.device import default_device, sampling_dtype

        s, device = exp["sample"], default_device()
        plans = {r["id"]: r for r in read_jsonl(inputs["layouts"])}
        missing = [p["id"] for p in prompts if p["id"] not in plans]
        if missing:
            raise ValueError(f"{inputs['layouts']}: no plan for prompts {missing[:3]}")
        drawer = GLIGENDrawer.load(inputs["drawer"]).to(device).eval().cast(sampling_dtype(s["dtype"], device))
        drawer.unet = compile_if_wanted(drawer.unet, s["compile"], device)
        c, h = drawer.unet.config.in_channels, drawer.unet.config.sample_size

        def generate(rows: list[dict]) -> Generated:
            plan = [plans[r["id"]] for r in rows]
            layouts, relations = [p["layout"] for p in plan], [p["relations"] for p in plan]
            cond = drawer.conditions([r["prompt"] for r in rows], layouts, relations, device)
            uncond = unconditional(drawer, relations, device) if s["cfg"] != 1 else None
            x = draw(drawer, row_noise(rows, (c, h, h), device), cond, uncond, steps=s["steps"], cfg=s["cfg"],
                     beta=s["beta"], scheduler=s["scheduler"])
            images = drawer.decode(x)
            return Generated(images, {"boxes": overlay(images, layouts)}, [{"layout": lay} for lay in layouts])

        exp = {**exp, "sample": {**s, "num_images": s["num_images"] or s["num_per_prompt"] * len(prompts)}}
        run_sampling(exp, prompts, out_dir, generate)


def overlay(images: torch.Tensor, layouts: list[list[dict]]) -> torch.Tensor:
    """Images (in [-1, 1]) with their plans' boxes and names drawn, for people (metrics read the clean ones)."""
    from PIL import Image, ImageDraw

    from t2i.data.images import tensor_to_uint8

    out = []
    for pixels, layout in zip(tensor_to_uint8(images), layouts):
        size = max(pixels.shape[1], 256)
        img = Image.fromarray(pixels).resize((size, size), resample=Image.NEAREST)
        pen = ImageDraw.Draw(img)
        for obj in layout:
            box = [v * size for v in obj["box"]]
            pen.rectangle(box, outline=(0, 0, 0), width=max(1, size // 128))
            pen.text((box[0] + 2, box[1] + 1), obj["name"], fill=(0, 0, 0))
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1)
    return torch.stack(out)
