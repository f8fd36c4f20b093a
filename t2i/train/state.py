"""What makes a training run resumable: the data order as a function of the step, the
on-disk state (``out_dir/state/``), its fingerprint, and signal handling.

``state/`` holds accelerate's ``save_state`` (modules, optimizers, every process's RNG),
``extra.safetensors`` (the EMAs) plus ``train_log.jsonl`` (the log rows up to the saved step) and
``meta.json`` (step, fingerprint, the fingerprinted config). It is written to
``.state.tmp`` and swapped in by renames, so ``state/`` is always a complete state.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from safetensors.torch import load_file, save_file

from t2i.checkpoints.hashing import MANIFEST, sha256_file
from t2i.utils.atomic import atomic_write_json, atomic_write_jsonl, read_jsonl
from t2i.utils.provenance import config_hash

log = get_logger(__name__)

STATE = "state"
META = "meta.json"
LOG_ROWS = "train_log.jsonl"
EXTRA = "extra.safetensors"
_TMP, _OLD = ".state.tmp", ".state.old"

# Train keys that may change without invalidating a saved state.
RESUMABLE_KEYS = ("steps", "save_every", "log_every", "num_workers", "compile", "snapshot_every", "report_to")


class StepBatchSampler(torch.utils.data.Sampler):
    """This process's share of the global batch of every step in ``[start, stop)``.

    The batch of step ``s`` is a pure function of ``s`` (and the seed), so resuming at
    step ``k`` is starting the sampler at ``k``. Epoch ``e`` visits the dataset in a
    permutation drawn from ``(seed, e)`` and yields ``n // global_batch`` batches (the
    remainder is dropped); process ``rank`` takes slice ``rank`` of each global batch.
    """

    def __init__(self, dataset_size: int, global_batch: int, *, rank: int, world: int, seed: int,
                 start: int, stop: int):
        if global_batch % world:
            raise ValueError(f"train.batch_size ({global_batch}) must be divisible by the number of processes ({world})")
        if global_batch > dataset_size:
            raise ValueError(f"train.batch_size ({global_batch}) is larger than the dataset ({dataset_size} items)")
        self.n, self.global_batch, self.seed = dataset_size, global_batch, seed
        self.local_batch = global_batch // world
        self.offset = rank * self.local_batch
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        per_epoch = self.n // self.global_batch
        epoch, order = None, None
        for step in range(self.start, self.stop):
            e, i = divmod(step, per_epoch)
            if e != epoch:
                epoch, order = e, np.random.default_rng([self.seed, e]).permutation(self.n)
            first = i * self.global_batch + self.offset
            yield order[first:first + self.local_batch].tolist()


class StepKeyedBatchSampler(StepBatchSampler):
    """:class:`StepBatchSampler` whose items are ``(index, step)``: a dataset keys per-item randomness
    (augmentation, a caption pick) by the step, so a resumed run draws exactly what it would have."""

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step, batch in enumerate(super().__iter__(), start=self.start):
            yield [(i, step) for i in batch]


def input_hashes(inputs: dict[str, str | os.PathLike] | None) -> dict[str, str]:
    """``{role: sha256 of the folder's SHA256SUMS}``: the content identity of each input folder."""
    hashes = {}
    for role, folder in (inputs or {}).items():
        manifest = Path(folder) / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f"input {role!r} ({folder}) has no {MANIFEST}: cannot tell whether it changed "
                                    "since a saved training state (the rule that wrote it must list its files there)")
        hashes[role] = sha256_file(manifest)
    return hashes


def identity(cfg: dict, task: Any, inputs: dict[str, str]) -> dict:
    """What a saved state must match to be resumed: the train config minus ``RESUMABLE_KEYS``,
    the task's own description (``task``) and the input hashes, JSON-normalised."""
    train = {k: v for k, v in cfg.items() if k not in RESUMABLE_KEYS}
    # As it reads back from meta.json (tuples -> lists, paths -> strings), so the two compare.
    return json.loads(json.dumps({"train": train, "task": task, "inputs": inputs}, sort_keys=True, default=str))


def _why_different(saved: dict, current: dict) -> str:
    def changed(part: str) -> tuple[dict, dict, list[str]]:
        old, new = saved.get(part, {}), current[part]
        return old, new, [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]

    old, new, keys = changed("train")
    if keys:
        return "train config changed (" + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys) + ")"
    _, _, roles = changed("inputs")
    if roles:
        return "input changed: " + ", ".join(f"{role!r} ({MANIFEST} differs)" for role in roles)
    return "the task changed (" + ", ".join(changed("task")[2]) + ")"


class StateDir:
    """``out_dir/state/``: save, load, discard; every method is called by all processes."""

    def __init__(self, out_dir: str | Path, accelerator: Accelerator, tensors: Any = None):
        """``tensors``: an object with ``state_dict()``/``load_state_dict()`` of tensors only (the EMAs),
        kept in ``state/extra.safetensors`` so that resuming never unpickles it."""
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / STATE
        self.acc = accelerator
        self.tensors = tensors

    def _recover(self) -> None:
        """Finish a swap that a kill interrupted (keep the newest complete copy), drop leftovers."""
        tmp, old = self.out_dir / _TMP, self.out_dir / _OLD
        if not self.path.exists():
            for candidate in (tmp, old):
                if (candidate / META).exists():
                    os.replace(candidate, self.path)
                    break
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)

    def restore(self, ident: dict, steps: int) -> tuple[int, list[dict]]:
        """Load the saved state if its fingerprint matches ``ident``; else discard it.

        Returns ``(step, log rows)`` to continue from; ``(0, [])`` for a fresh start.
        """
        if self.acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._recover()
        self.acc.wait_for_everyone()
        meta_path = self.path / META
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else None
        self.acc.wait_for_everyone()  # every process has read meta.json before anyone changes state/
        if meta is None:
            log.info(f"starting fresh: no saved state in {self.path}")
            return 0, []
        if meta["fingerprint"] != config_hash(ident):
            log.warning(f"starting fresh: {_why_different(meta['identity'], ident)}; "
                        f"discarding the saved state (step {meta['step']})")
            self.discard()
            return 0, []
        if meta["step"] > steps:
            raise ValueError(f"{self.path} holds step {meta['step']}, past train.steps={steps}: its weights are not "
                             f"the model of {steps} steps. Raise train.steps to {meta['step']} or more to continue it, "
                             f"or delete {self.path} to train {steps} steps from scratch (a fresh run gives the same "
                             "model as the first part of the longer one)")
        try:
            self.acc.load_state(str(self.path))
            if self.tensors is not None:
                self.tensors.load_state_dict(load_file(self.path / EXTRA, device="cpu"))
        except Exception as e:
            raise RuntimeError(f"{self.path} matches this run's fingerprint but cannot be loaded ({e}); "
                               "delete it to start fresh") from e
        step = meta["step"]
        log.info(f"resuming at step {step}")
        return step, read_jsonl(self.path / LOG_ROWS)

    def save(self, step: int, ident: dict, log_rows: list[dict]) -> None:
        """Write the state at ``step`` to a temporary directory, then swap it in."""
        tmp, old = self.out_dir / _TMP, self.out_dir / _OLD
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp))
        self.acc.wait_for_everyone()  # every process has written its RNG state
        if self.acc.is_main_process:
            if self.tensors is not None:
                save_file({k: v.contiguous() for k, v in self.tensors.state_dict().items()}, str(tmp / EXTRA))
            atomic_write_jsonl(tmp / LOG_ROWS, log_rows)
            atomic_write_json(tmp / META, {"step": step, "fingerprint": config_hash(ident), "identity": ident,
                                           "num_processes": self.acc.num_processes, "saved_at": time.time()})
            if self.path.exists():
                os.replace(self.path, old)
            os.replace(tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    def discard(self) -> None:
        if self.acc.is_main_process:
            shutil.rmtree(self.path, ignore_errors=True)
        self.acc.wait_for_everyone()


@contextlib.contextmanager
def handle_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Route SIGTERM and SIGINT to ``handler`` for the duration (a no-op outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
