"""The one training loop every system uses: accelerate, AdamW, EMA, crash-safe resume.

A system builds its model, dataset and loss and calls :func:`run_training`; the loop
owns everything else: device placement, DDP, bf16 autocast, the data order, the lr
schedule, EMA, logging, the resumable state and the final weights.
"""
from __future__ import annotations

import math
import shutil
import signal
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import send_to_device, set_seed
from safetensors.torch import save_file
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from t2i.train.ema import EMA
from t2i.train.schedule import lr_at, peak_lr
from t2i.train.state import StateDir, StepBatchSampler, handle_signals, identity
from t2i.utils.atomic import atomic_path, atomic_write_jsonl
from t2i.utils.compile import compile_if_wanted
from t2i.utils.provenance import config_hash, write_provenance

log = get_logger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


class TrainingInterrupted(SystemExit):
    """Raised after SIGTERM/SIGINT once the state is saved; exits with ``128 + signum``."""

    def __init__(self, signum: int, step: int):
        super().__init__(128 + signum)
        self.signum, self.step = signum, step

    def __str__(self) -> str:
        return f"training interrupted by {signal.Signals(self.signum).name} at step {self.step} (state saved)"


@lru_cache(maxsize=None)
def train_defaults() -> dict:
    """Defaults of every ``train:`` key, read from the config schema (the one place they are defined)."""
    props = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))["$defs"]["train"]["properties"]
    return {key: spec["default"] for key, spec in props.items() if "default" in spec}


def resolve_config(cfg: dict) -> dict:
    """``cfg`` with missing keys filled from :func:`train_defaults`."""
    return {**train_defaults(), **cfg}


def _mixed_precision(value: str) -> str:
    if value == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return value


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and kernels only, not on biases and norm scales (1-d parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


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
    """Loss/lr rows for ``train_log.jsonl`` and TensorBoard (written by the main process only)."""

    def __init__(self, accelerator: Accelerator, out_dir: Path, rows: list[dict], start: int):
        self.acc, self.rows = accelerator, rows
        self.window_sum = torch.zeros((), device=accelerator.device)
        self.window_len = 0
        self.writer = None
        if accelerator.is_main_process:
            # purge_step hides events a killed run logged after the state we resume from.
            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start + 1 if start else None)

    def add(self, loss: torch.Tensor) -> None:
        self.window_sum += loss.detach().float()
        self.window_len += 1

    def emit(self, step: int, lr: float) -> dict:
        """Average the window over steps and processes, record it, start a new window."""
        loss = self.acc.reduce(self.window_sum, reduction="mean").item() / self.window_len
        if not math.isfinite(loss):
            raise FloatingPointError(f"train loss is {loss} at step {step}")
        row = {"step": step, "loss": loss, "lr": lr, "time": time.time()}
        self.rows.append(row)
        self.window_sum.zero_()
        self.window_len = 0
        if self.writer is not None:
            self.writer.add_scalar("train_loss", loss, step)
            self.writer.add_scalar("lr", lr, step)
        return row

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Atomically write ``state`` as safetensors, from contiguous CPU copies (safetensors refuses shared storage)."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}, str(tmp))


def _final_files(out_dir: Path) -> list[Path]:
    names = ["model.safetensors", "raw.safetensors", "train_log.jsonl", "provenance.json"]
    return [out_dir / n for n in names] + sorted(out_dir.glob("ema_*.safetensors"))


def run_training(model: torch.nn.Module, dataset: torch.utils.data.Dataset,
                 loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
                 cfg: dict, out_dir: str | Path, *, fingerprint: Any = None,
                 collate_fn: Callable | None = None) -> dict:
    """Train ``model`` for ``cfg["steps"]`` optimizer steps, resuming from ``out_dir/state/``.

    ``loss_fn(model, batch)`` returns a scalar loss; ``model`` is the prepared (possibly
    DDP-wrapped) module, so call it rather than reaching for its attributes, and draw
    randomness from torch's global RNG (seeded here, restored on resume). ``cfg`` is the
    ``train:`` block (missing keys get the schema defaults); ``fingerprint`` identifies
    what the config does not (model config, dataset). A saved state is resumed only if
    both match (``steps``, ``save_every``, ``log_every``, ``num_workers``, ``compile`` may
    change). With ``compile`` the module's forward is compiled in place before DDP wraps it.

    Writes to ``out_dir``: ``model.safetensors`` (EMA of ``ema_decays[0]``),
    ``ema_<decay>.safetensors``, ``raw.safetensors``, ``train_log.jsonl``, ``tensorboard/``,
    ``provenance.json``, and ``state/``. On SIGTERM/SIGINT it saves the state and raises
    :class:`TrainingInterrupted` (a ``SystemExit`` with a non-zero code).

    Returns ``{"step", "resumed_from", "steps_run", "loss", "wall_time_s"}``.
    """
    t0 = time.time()
    cfg = resolve_config(cfg)
    out_dir = Path(out_dir)
    acc = Accelerator(mixed_precision=_mixed_precision(cfg["mixed_precision"]))
    set_seed(cfg["seed"], device_specific=True)
    steps = cfg["steps"]

    compile_if_wanted(model, cfg["compile"], acc.device)
    peak = peak_lr(cfg)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg["weight_decay"]), lr=peak, betas=tuple(cfg["betas"]))
    model, optimizer = acc.prepare(model, optimizer)
    raw = acc.unwrap_model(model)
    ema = EMA(raw, cfg["ema_decays"])

    ident = identity(cfg, fingerprint)
    state = StateDir(out_dir, acc, tensors=ema)
    start, rows = state.restore(ident, steps)
    if start < steps and acc.is_main_process:
        for path in _final_files(out_dir):
            path.unlink(missing_ok=True)
        if start == 0:
            shutil.rmtree(out_dir / "tensorboard", ignore_errors=True)

    sampler = StepBatchSampler(len(dataset), cfg["batch_size"], rank=acc.process_index, world=acc.num_processes,
                               seed=cfg["seed"], start=start, stop=steps)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler,
        num_workers=cfg["num_workers"], collate_fn=collate_fn, pin_memory=acc.device.type == "cuda",
        # Its own generator: creating the iterator must not draw from the global RNG.
        generator=torch.Generator().manual_seed(cfg["seed"]))
    metrics = _Metrics(acc, out_dir, rows, start)
    stop = _StopRequest()
    progress = tqdm(total=steps, initial=min(start, steps), desc="train", unit="step", dynamic_ncols=True,
                    mininterval=1 if sys.stderr.isatty() else 30,  # a job log gets a line every 30 s
                    disable=not acc.is_main_process)
    step, saved = start, start
    model.train()
    try:
        with handle_signals(stop):
            for step, batch in enumerate(loader, start=start + 1):  # step = optimizer steps done after this one
                lr = lr_at(step - 1, peak, cfg["warmup_steps"])
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = loss_fn(model, send_to_device(batch, acc.device))
                acc.backward(loss)
                if cfg["grad_clip"] > 0:
                    acc.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                ema.update(raw)
                metrics.add(loss)
                progress.update(1)
                if step % cfg["log_every"] == 0 or step == steps:
                    row = metrics.emit(step, lr)
                    progress.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{lr:.3g}")
                    log.info(f"step {step}/{steps} loss {row['loss']:.5g} lr {lr:.4g}")
                if step % cfg["save_every"] == 0 or step == steps:
                    state.save(step, ident, metrics.rows)
                    saved = step
                signum = stop.agreed(acc)
                if signum:
                    if saved != step:
                        state.save(step, ident, metrics.rows)
                    interrupted = TrainingInterrupted(signum, step)
                    log.warning(str(interrupted))
                    raise interrupted
    finally:
        progress.close()
        metrics.close()

    if acc.is_main_process:
        for decay in ema.decays:
            _save_weights(ema.weights(decay), out_dir / f"ema_{decay}.safetensors")
        _save_weights(ema.weights(ema.decays[0]), out_dir / "model.safetensors")
        _save_weights(raw.state_dict(), out_dir / "raw.safetensors")
        atomic_write_jsonl(out_dir / "train_log.jsonl", metrics.rows)
        write_provenance(out_dir, {"train": cfg, "fingerprint": fingerprint}, seeds=cfg["seed"],
                         wall_time_s=time.time() - t0,
                         extra={"state_fingerprint": config_hash(ident), "step": step, "resumed_from": start,
                                "num_processes": acc.num_processes, "mixed_precision": acc.mixed_precision})
    acc.wait_for_everyone()
    return {"step": step, "resumed_from": start, "steps_run": step - start,
            "loss": metrics.rows[-1]["loss"] if metrics.rows else None, "wall_time_s": time.time() - t0}
