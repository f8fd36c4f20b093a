"""What a system hands the shared training loop (:func:`t2i.train.loop.run_training`): a ``TrainTask``.

The task owns the science (networks, losses, which optimizer steps when); the loop owns
the machinery (accelerate, device placement, DDP, mixed precision, data order, the lr
schedule, EMAs, weight snapshots, logging, the resumable state, signals, the export call).

- ``modules``: trainable modules by name. The loop prepares them with accelerate (DDP on
  several processes), saves them in the resumable state, and hands their final weights to
  ``export``.
- ``frozen``: modules that never train (a teacher, a frozen base, a text encoder). The loop
  moves them to the device in eval mode with gradients off; they are never in an optimizer,
  an EMA or any file the loop writes.
- ``optimizers``: one :class:`OptimizerSpec` per name, over parameter groups of ``modules``.
  Each group may carry ``lr_mult``: its lr is the schedule's lr times ``lr_mult`` (the schedule
  scales it, never overwrites it); a group with ``lr_mult == 0`` is frozen (``requires_grad``
  off) and left out of the optimizer and its state.
- ``ema``: which modules get an exponential moving average (:class:`EMASpec`).
- ``step(batch, step, ctx)``: one optimizer step's work (``step``: the optimizer steps done
  before this one, so the first is 0): forward passes, ``ctx.backward``,
  ``ctx.optimizer_step(name)`` for each optimizer it steps (two alternating phases for a GAN,
  lazy regularisation every k steps, ...). Randomness comes from torch's global RNG (seeded
  by the loop and restored on resume) or from the batch's own keys. Returns named scalars
  (detached 0-d tensors), averaged over the log window and over processes.
- ``batch_sampler(...)``: optional; the default is :class:`t2i.train.state.StepBatchSampler`.
  A system sampler (aspect-ratio buckets) must make the batch of step ``s`` a pure function
  of ``(seed, s)`` so a resumed run is bit-identical; it may yield any items its dataset
  accepts (e.g. ``(index, key)`` pairs that key per-item augmentation randomness by step).
- ``compile_modules``: optional; the names of the modules ``train.compile`` compiles (default:
  all of ``modules``).
- ``buffers`` (optional): tensors the task carries from step to step (e.g. StyleGAN's path-length
  mean), by name; the loop moves them to the device, saves them with the state and restores them
  in place on resume (mutate them in place in ``step``).
- ``on_log(row, out_dir, weights)`` (optional): called on the main process with each log row (after
  it is written to ``train_log.jsonl``), for a system's own logs (LAFITE's status line,
  ``stats.jsonl`` and image grids); ``weights()`` returns what ``export`` would get now.
- ``keep_checkpoints`` (optional int): at every save but the last, also ``export`` into
  ``checkpoints/checkpoint-<step>/`` beside the model, keeping the newest this many (LPD's checkpoint folders).
- ``identity``: JSON-able description of the task beyond the ``train:`` block (network
  configs); part of the resume identity together with the content hash of every input.
- ``export(weights, out_dir)``: write the checkpoint folder (``save_pretrained`` style) from
  ``weights[module] = state dict`` (the module's first EMA where it has one, else its raw
  weights). Runs on the main process only, into a temporary folder the loop renames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch


@dataclass
class OptimizerSpec:
    """One optimizer over parameter groups (dicts with ``params`` and optional ``lr_mult``, ``weight_decay``)."""

    groups: list[dict]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 0.0  # max gradient norm over this optimizer's parameters at each step (0: off)
    kind: str = "adamw"  # adamw | adam | adamw8bit (bitsandbytes, CUDA)
    decay: str = "constant"  # after the warmup: constant | cosine (to 0 at ``total_steps``)
    total_steps: int = 0


@dataclass
class EMASpec:
    """An EMA of module ``module``: one average per decay in ``decays``, or one average whose decay
    follows ``ramp(step)`` (e.g. StyleGAN's kimg ramp; ``step`` as in ``TrainTask.step``). The first
    average is the exported weights."""

    module: str
    decays: list[float] = field(default_factory=list)
    ramp: Callable[[int], float] | None = None


class StepContext(Protocol):
    """What ``TrainTask.step`` may use; implemented by the loop."""

    accelerator: Any
    step: int

    def module(self, name: str) -> torch.nn.Module:
        """The prepared (possibly DDP-wrapped, compiled) module ``name``: call it, don't reach into it."""

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """``accelerator.backward`` (mixed-precision scaling, DDP gradient sync)."""

    def optimizer_step(self, name: str) -> None:
        """Clip (``grad_clip``), step and zero the gradients of optimizer ``name``."""

    def zero_grad(self, name: str) -> None:
        """Drop the gradients of optimizer ``name`` (e.g. D's, accumulated by G's backward)."""

    def lr(self, name: str) -> float:
        """The scheduled base lr of optimizer ``name`` at this step (before ``lr_mult``)."""

    def log_images(self, tag: str, images: torch.Tensor) -> None:
        """Log pictures in [-1, 1] ``[N, 3, H, W]`` at this step (validation samples): ``images/<tag>/<step>.png``
        beside the model, TensorBoard, and W&B when ``report_to`` is wandb; main process only."""


@runtime_checkable
class TrainTask(Protocol):
    modules: dict[str, torch.nn.Module]
    frozen: dict[str, torch.nn.Module]
    optimizers: dict[str, OptimizerSpec]
    ema: list[EMASpec]
    identity: dict

    def step(self, batch: Any, step: int, ctx: StepContext) -> dict[str, torch.Tensor]: ...

    def export(self, weights: dict[str, dict[str, torch.Tensor]], out_dir: Path) -> None: ...
