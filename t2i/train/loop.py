"""The one training loop every system uses: it runs a :class:`~t2i.train.task.TrainTask`.

A system builds the task (networks, optimizers, EMAs, one step's work, the export) and calls
:func:`run_training`; the loop owns everything else: device placement, DDP, bf16 autocast,
the data order, the lr schedules, EMAs, weight snapshots, logging, the resumable state,
signals and the final checkpoint folder.
"""
from __future__ import annotations

import math
import shutil
import signal
import sys
import time
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import send_to_device, set_seed
from safetensors.torch import save_file
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from t2i.checkpoints.hashing import write_sha256sums
from t2i.train.ema import EMASet
from t2i.train.schedule import lr_at
from t2i.train.state import StateDir, StepBatchSampler, handle_signals, identity, input_hashes
from t2i.train.task import OptimizerSpec, TrainTask
from t2i.utils.atomic import atomic_dir, atomic_path, atomic_write_jsonl, atomic_write_text
from t2i.utils.compile import compile_if_wanted
from t2i.utils.provenance import config_hash, write_provenance

log = get_logger(__name__)

# The train keys the loop reads, and their values where a train block leaves them out.
TRAIN_DEFAULTS = {"steps": 1000, "batch_size": 64, "seed": 0, "mixed_precision": "auto", "compile": "auto",
                  "num_workers": 0, "save_every": 500, "log_every": 50, "snapshot_every": 0, "report_to": "tensorboard"}
MODEL, WEIGHTS, SNAPSHOTS, TENSORBOARD, IMAGES = "model", "weights", "snapshots", "tensorboard", "images"
CHECKPOINTS = "checkpoints"


def _adamw8bit(groups: list[dict], **kwargs) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW with 8-bit states (what the pixel-SDXL seed's users need on 24 GB cards); CUDA only."""
    try:
        import bitsandbytes
    except ImportError:
        raise RuntimeError("optimizer adamw8bit needs the bitsandbytes package (pip install bitsandbytes); "
                           "use adamw without it") from None
    if not torch.cuda.is_available():
        raise RuntimeError("optimizer adamw8bit runs on CUDA only; use adamw on this machine")
    return bitsandbytes.optim.AdamW8bit(groups, **kwargs)


_OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "adamw8bit": _adamw8bit}


class TrainingInterrupted(SystemExit):
    """Raised after SIGTERM/SIGINT once the state is saved; exits with ``128 + signum``."""

    def __init__(self, signum: int, step: int):
        super().__init__(128 + signum)
        self.signum, self.step = signum, step

    def __str__(self) -> str:
        return f"training interrupted by {signal.Signals(self.signum).name} at step {self.step} (state saved)"


def resolve_config(cfg: dict) -> dict:
    """``cfg`` with missing loop keys filled from :data:`TRAIN_DEFAULTS`."""
    return {**TRAIN_DEFAULTS, **cfg}


def _mixed_precision(value: str) -> str:
    if value == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return value


def _accelerator(mixed_precision: str) -> Accelerator:
    """accelerate keeps one state per process and refuses a second run in it (a benchmark training a CLIP,
    then a GAN) another precision; outside a distributed run that state is this run's to set."""
    from accelerate.state import AcceleratorState

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=_mixed_precision(mixed_precision))


def _build_optimizer(spec: OptimizerSpec, fused: bool = False) -> tuple[torch.optim.Optimizer, list[float]]:
    """The torch optimizer of ``spec`` and each of its groups' ``lr_mult``; groups with ``lr_mult == 0``
    are frozen (``requires_grad`` off) and left out. ``fused``: torch's one-kernel Adam/AdamW (the same
    update; on CUDA it replaces a dozen ``foreach`` passes over the weights and states)."""
    groups, mults = [], []
    for group in spec.groups:
        params, mult = list(group["params"]), group.get("lr_mult", 1.0)
        if mult == 0:
            for p in params:
                p.requires_grad_(False)
            continue
        groups.append({**{k: v for k, v in group.items() if k != "lr_mult"}, "params": params})
        mults.append(mult)
    extra = {"fused": True} if fused and spec.kind in ("adamw", "adam") else {}
    optimizer = _OPTIMIZERS[spec.kind](groups, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps,
                                       weight_decay=spec.weight_decay, **extra)
    return optimizer, mults


def keep_fused(optimizer: torch.optim.Optimizer) -> None:
    """A fused optimizer stays fused after loading a state: ``load_state_dict`` takes every group's flags from
    the saved state, and one saved unfused (on a CPU, or before fusing) would turn the fused kernel off."""
    if optimizer.defaults.get("fused"):
        for group in optimizer.param_groups:
            group["fused"], group["foreach"] = True, None


def _describe(task: TrainTask) -> dict:
    """The task's part of the resume identity: its own ``identity``, optimizer specs and EMAs."""
    optimizers = {}
    for name, spec in task.optimizers.items():
        optimizers[name] = {f.name: getattr(spec, f.name) for f in fields(spec) if f.name != "groups"}
        optimizers[name]["groups"] = [{k: v for k, v in g.items() if k != "params"} for g in spec.groups]
    ema = [{"module": e.module, "decays": e.decays, "ramp": e.ramp is not None} for e in task.ema]
    return {"identity": task.identity, "optimizers": optimizers, "ema": ema}


class _Context:
    """What ``TrainTask.step`` may use (:class:`t2i.train.task.StepContext`)."""

    def __init__(self, accelerator: Accelerator, modules: dict, frozen: dict, optimizers: dict,
                 specs: dict[str, OptimizerSpec], mults: dict[str, list[float]]):
        self.accelerator, self.step = accelerator, 0
        self._modules, self._optimizers, self._specs, self._mults = {**frozen, **modules}, optimizers, specs, mults
        self._params = {name: [p for g in opt.param_groups for p in g["params"]] for name, opt in optimizers.items()}
        self._lr: dict[str, float] = {}
        self._metrics: _Metrics | None = None  # set once the loop's metrics exist

    def begin(self, step: int) -> None:
        """Set every optimizer's lr for step ``step`` (0-based)."""
        self.step = step
        for name, spec in self._specs.items():
            self._lr[name] = lr = lr_at(step, spec.lr, spec.warmup_steps, spec.decay, spec.total_steps)
            for group, mult in zip(self._optimizers[name].param_groups, self._mults[name]):
                group["lr"] = lr * mult

    def module(self, name: str) -> torch.nn.Module:
        return self._modules[name]

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        self.accelerator.backward(loss, **kwargs)

    def optimizer_step(self, name: str) -> None:
        if self._specs[name].grad_clip > 0:
            self.accelerator.clip_grad_norm_(self._params[name], self._specs[name].grad_clip)
        self._optimizers[name].step()
        self.zero_grad(name)

    def zero_grad(self, name: str) -> None:
        self._optimizers[name].zero_grad(set_to_none=True)

    def lr(self, name: str) -> float:
        return self._lr[name]

    def log_images(self, tag: str, images: torch.Tensor) -> None:
        """Log pictures in [-1, 1] at this step (main process; e.g. validation samples): PNG, TensorBoard, W&B."""
        self._metrics.images(tag, images, self.step + 1)

    def lrs(self) -> dict[str, float]:
        """Log keys: ``lr`` for a single optimizer, else ``lr/<name>``."""
        if len(self._lr) == 1:
            return {"lr": next(iter(self._lr.values()))}
        return {f"lr/{name}": lr for name, lr in self._lr.items()}


class _StopRequest:
    """Remembers a SIGTERM/SIGINT; the loop checks it between steps (all processes agree)."""

    def __init__(self) -> None:
        self.signum = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def agreed(self, accelerator: Accelerator) -> int:
        """The signal any process received (0 for none); a collective call when distributed."""
        if accelerator.num_processes == 1:
            return self.signum
        flags = accelerator.gather(torch.tensor([self.signum], device=accelerator.device))
        return int(flags.max().item())


class _Metrics:
    """The task's scalars, averaged over each log window and the processes, as ``train_log.jsonl`` rows
    and TensorBoard scalars (written by the main process only). Adding a step's scalars never syncs."""

    def __init__(self, accelerator: Accelerator, out_dir: Path, rows: list[dict], start: int, report_to: str = "tensorboard",
                 run_config: dict | None = None):
        self.acc, self.rows, self.out_dir = accelerator, rows, out_dir
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.writer = self.wandb = None
        if accelerator.is_main_process:
            # purge_step hides events a killed run logged after the state we resume from.
            self.writer = SummaryWriter(str(out_dir / TENSORBOARD), purge_step=start + 1 if start else None)
            if report_to == "wandb":
                self.wandb = _wandb_run(out_dir, run_config or {}, fresh=start == 0)

    def add(self, scalars: dict[str, torch.Tensor]) -> None:
        for name, value in scalars.items():
            self.sums[name] = self.sums.get(name, 0) + value.detach().float()
            self.counts[name] = self.counts.get(name, 0) + 1

    def emit(self, step: int, lrs: dict[str, float]) -> dict:
        """Average the window (one reduce over processes), record it, start a new window."""
        names = sorted(self.sums)
        values = []
        if names:
            means = torch.stack([self.sums[n] / self.counts[n] for n in names])
            values = self.acc.reduce(means, reduction="mean").tolist()
        scalars = dict(zip(names, values))
        for name, value in scalars.items():
            if name.startswith("loss") and not math.isfinite(value):
                raise FloatingPointError(f"{name} is {value} at step {step}")
        row = {"step": step, **scalars, **lrs, "time": time.time()}
        self.rows.append(row)
        self.sums, self.counts = {}, {}
        if self.writer is not None:
            for name, value in {**scalars, **lrs}.items():
                self.writer.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log({**scalars, **lrs}, step=step)
        return row

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        """Pictures in [-1, 1] ``[N, 3, H, W]``: a PNG row ``images/<tag>/<step>.png``, TensorBoard, W&B."""
        from t2i.data.images import save_png, tensor_to_uint8

        if not self.acc.is_main_process:
            return
        row = tensor_to_uint8(torch.cat(list(images.detach().float().cpu()), dim=-1))
        save_png(row, self.out_dir / IMAGES / tag / f"{step:07d}.png")
        self.writer.add_image(tag, (images.detach().float().cpu().clamp(-1, 1) + 1) / 2, step, dataformats="NCHW")
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(row)}, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_run(out_dir: Path, run_config: dict, fresh: bool):
    """A W&B run for ``report_to: wandb`` (imported only then): a new run for a fresh start, the same run (its id
    kept in ``wandb_run_id`` beside the state) when training resumes."""
    try:
        import wandb
    except ImportError:
        raise ImportError("train.report_to is wandb but the wandb package is not installed (pip install wandb)") from None
    id_file = out_dir / "wandb_run_id"
    if fresh or not id_file.is_file():
        atomic_write_text(id_file, uuid.uuid4().hex[:16])
    return wandb.init(dir=str(out_dir), id=id_file.read_text().strip(), resume="allow", name=out_dir.parent.name,
                      config=run_config)


class _StateTensors:
    """The EMAs and the task's own ``buffers`` (tensors it carries across steps, e.g. a running mean),
    one flat tensor dict in ``state/extra.safetensors``; buffers are restored in place."""

    def __init__(self, emas: EMASet, buffers: dict[str, torch.Tensor]):
        self.emas, self.buffers = emas, buffers

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.emas.state_dict(), **{f"task/{k}": v for k, v in self.buffers.items()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.emas.load_state_dict({k: v for k, v in state.items() if not k.startswith("task/")})
        missing = [k for k in self.buffers if f"task/{k}" not in state]
        if missing:
            raise ValueError(f"the saved state lacks the task's buffers {missing}")
        for k, v in self.buffers.items():
            v.copy_(state[f"task/{k}"])


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(_cpu(state), str(tmp))


def snapshot_path(out_dir: Path, module: str, step: int) -> Path:
    """Where the loop keeps ``module``'s raw weights after ``step`` (``train.snapshot_every``; post-hoc EMA reads them)."""
    return Path(out_dir) / SNAPSHOTS / f"{module}-{step:08d}.safetensors"


def _export_checkpoint(task, weights: dict, out_dir: Path, step: int) -> None:
    """``task.export`` into ``checkpoints/checkpoint-<step>/`` (the seed's name), keeping the newest
    ``task.keep_checkpoints`` of them."""
    with atomic_dir(out_dir / CHECKPOINTS / f"checkpoint-{step}") as tmp:
        task.export(weights, tmp)
    kept = sorted((out_dir / CHECKPOINTS).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in kept[:-task.keep_checkpoints]:
        shutil.rmtree(old)


def snapshot_step(path: Path) -> int:
    """The step of a :func:`snapshot_path`."""
    return int(path.stem.rsplit("-", 1)[1])


def _clean_outputs(out_dir: Path, start: int, steps: int) -> None:
    """Before training: drop the final outputs of an earlier run; on a fresh start also its curves and
    snapshots, on a resume the snapshots a killed run wrote after its last saved state."""
    if start < steps:
        for name in (MODEL, WEIGHTS):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    if start == 0:
        for name in (TENSORBOARD, SNAPSHOTS, CHECKPOINTS, IMAGES):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    for path in (out_dir / SNAPSHOTS).glob("*.safetensors"):
        if snapshot_step(path) > start:
            path.unlink()


def _export_weights(raw: dict[str, torch.nn.Module], emas: EMASet) -> dict[str, dict[str, torch.Tensor]]:
    """What ``export`` gets: each module's first EMA where it has one, else its raw weights (on the CPU)."""
    return {name: _cpu(next(iter(emas.variants(name).values()), module.state_dict())) for name, module in raw.items()}


def run_training(task: TrainTask, dataset: torch.utils.data.Dataset, cfg: dict, out_dir: str | Path, *,
                 inputs: dict[str, Path] | None = None, collate_fn: Callable | None = None) -> dict:
    """Run ``task`` for ``cfg["steps"]`` optimizer steps, resuming from ``out_dir/state/``.

    ``cfg`` is the ``train:`` block; the loop reads ``steps``, ``batch_size``, ``seed``,
    ``mixed_precision``, ``compile``, ``num_workers``, ``save_every``, ``log_every`` and
    ``snapshot_every`` (missing keys: :data:`TRAIN_DEFAULTS`). ``inputs`` (role -> folder with
    a ``SHA256SUMS``) are what the task was built from. A saved state is resumed only if the
    config (but for ``steps``, ``save_every``, ``log_every``, ``num_workers``, ``compile``,
    ``snapshot_every``), the task (identity, optimizers, EMAs) and every input's content match.

    Writes to ``out_dir``: ``model/`` (``task.export``'s folder plus ``train_log.jsonl``,
    ``provenance.json``, ``SHA256SUMS``), ``weights/<module>.raw.safetensors`` and
    ``weights/<module>.ema-<decay|ramp>.safetensors``, ``snapshots/<module>-<step>.safetensors``
    (every ``snapshot_every`` steps), ``tensorboard/`` and ``state/``. On SIGTERM/SIGINT it
    saves the state and raises :class:`TrainingInterrupted` (a ``SystemExit``, non-zero code).

    Returns ``{"step", "resumed_from", "steps_run", "wall_time_s", "last_log"}`` (the last log row).
    """
    t0 = time.time()
    cfg = resolve_config(cfg)
    out_dir = Path(out_dir)
    acc = _accelerator(cfg["mixed_precision"])
    set_seed(cfg["seed"], device_specific=True)
    steps = cfg["steps"]
    ident = identity(cfg, _describe(task), input_hashes(inputs))

    for module in task.modules.values():  # before the optimizers: a fused one wants its weights where it runs
        module.to(acc.device)
    built = {name: _build_optimizer(spec, fused=acc.device.type == "cuda") for name, spec in task.optimizers.items()}
    for module in task.frozen.values():
        module.to(acc.device).eval().requires_grad_(False)
    for name in getattr(task, "compile_modules", task.modules):
        compile_if_wanted({**task.frozen, **task.modules}[name], cfg["compile"], acc.device)
    objects = [*task.modules.values(), *(opt for opt, _ in built.values())]
    prepared = acc.prepare(*objects)
    prepared = list(prepared) if len(objects) > 1 else [prepared]
    modules = dict(zip(task.modules, prepared))
    optimizers = dict(zip(task.optimizers, prepared[len(modules):]))
    raw = {name: acc.unwrap_model(m) for name, m in modules.items()}
    emas = EMASet(task.ema, raw)
    buffers = getattr(task, "buffers", {})
    for name in buffers:
        buffers[name] = buffers[name].to(acc.device)
    ctx = _Context(acc, modules, task.frozen, optimizers, task.optimizers,
                   {name: mults for name, (_, mults) in built.items()})

    state = StateDir(out_dir, acc, tensors=_StateTensors(emas, buffers))
    start, rows = state.restore(ident, steps)
    for optimizer, _ in built.values():
        keep_fused(optimizer)
    if acc.is_main_process:
        _clean_outputs(out_dir, start, steps)

    sampler = (getattr(task, "batch_sampler", None) or StepBatchSampler)(
        dataset_size=len(dataset), global_batch=cfg["batch_size"], rank=acc.process_index,
        world=acc.num_processes, seed=cfg["seed"], start=start, stop=steps)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler,
        num_workers=cfg["num_workers"], collate_fn=collate_fn, pin_memory=acc.device.type == "cuda",
        # Its own generator: creating the iterator must not draw from the global RNG.
        generator=torch.Generator().manual_seed(cfg["seed"]))
    metrics = _Metrics(acc, out_dir, rows, start, cfg["report_to"], {"train": cfg, "identity": task.identity})
    ctx._metrics = metrics
    stop = _StopRequest()
    progress = tqdm(total=steps, initial=min(start, steps), desc="train", unit="step", dynamic_ncols=True,
                    mininterval=1 if sys.stderr.isatty() else 30,  # a job log gets a line every 30 s
                    disable=not acc.is_main_process)
    done, saved = start, start
    for module in modules.values():
        module.train()
    try:
        with handle_signals(stop):
            for done, batch in enumerate(loader, start=start + 1):  # done: optimizer steps after this one
                ctx.begin(done - 1)
                # pinned batches copy asynchronously: no wait for the previous step before launching this one
                scalars = task.step(send_to_device(batch, acc.device, non_blocking=acc.device.type == "cuda"),
                                    done - 1, ctx)
                emas.update(raw, done - 1)
                metrics.add(scalars)
                progress.update(1)
                if done % cfg["log_every"] == 0 or done == steps:
                    row = metrics.emit(done, ctx.lrs())
                    shown = {k: v for k, v in row.items() if k not in ("step", "time")}
                    progress.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
                    log.info(f"step {done}/{steps} " + " ".join(f"{k} {v:.5g}" for k, v in shown.items()))
                    if acc.is_main_process and hasattr(task, "on_log"):
                        task.on_log(row, out_dir, lambda: _export_weights(raw, emas))
                if cfg["snapshot_every"] and done % cfg["snapshot_every"] == 0 and acc.is_main_process:
                    for name, module in raw.items():
                        _save_weights(module.state_dict(), snapshot_path(out_dir, name, done))
                if done % cfg["save_every"] == 0 or done == steps:
                    state.save(done, ident, metrics.rows)
                    saved = done
                    if getattr(task, "keep_checkpoints", 0) and done < steps and acc.is_main_process:
                        _export_checkpoint(task, _export_weights(raw, emas), out_dir, done)
                signum = stop.agreed(acc)
                if signum:
                    if saved != done:
                        state.save(done, ident, metrics.rows)
                    interrupted = TrainingInterrupted(signum, done)
                    log.warning(str(interrupted))
                    raise interrupted
    finally:
        progress.close()
        metrics.close()

    if acc.is_main_process:
        for name, module in raw.items():
            _save_weights(module.state_dict(), out_dir / WEIGHTS / f"{name}.raw.safetensors")
            for label, weights in emas.variants(name).items():
                _save_weights(weights, out_dir / WEIGHTS / f"{name}.ema-{label}.safetensors")
        exported = _export_weights(raw, emas)
        with atomic_dir(out_dir / MODEL) as tmp:
            task.export(exported, tmp)
            atomic_write_jsonl(tmp / "train_log.jsonl", metrics.rows)
            write_provenance(tmp, {"train": cfg, "identity": task.identity,
                                   "inputs": {role: str(path) for role, path in (inputs or {}).items()}},
                             seeds=cfg["seed"], wall_time_s=time.time() - t0,
                             extra={"state_fingerprint": config_hash(ident), "step": done, "resumed_from": start,
                                    "num_processes": acc.num_processes, "mixed_precision": acc.mixed_precision})
            write_sha256sums(tmp)
    acc.wait_for_everyone()
    return {"step": done, "resumed_from": start, "steps_run": done - start, "wall_time_s": time.time() - t0,
            "last_log": metrics.rows[-1] if metrics.rows else None}
