"""The interface every seed system implements (DESIGN.md, "A system module")."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class System(Protocol):
    """One seed system. ``exp`` is the validated experiment dict plus its ``name``."""

    def prepare(self, exp: dict, dataset_dir: Path, pretrained_dir: Path, out_dir: Path) -> None:
        """Write the system-specific training format (e.g. cached text features) to ``out_dir``."""

    def train(self, exp: dict, prepared_dir: Path, out_dir: Path) -> None:
        """Train; resumes from ``out_dir/state`` when present. Writes ``out_dir/model.safetensors``."""

    def sample(self, exp: dict, ckpt_dir: Path, pretrained_dir: Path, prompts: list[dict], out_dir: Path) -> None:
        """Generate one PNG per prompt row and ``out_dir/index.jsonl``."""
