"""The interface every seed system implements (DESIGN.md, "A system module")."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class System(Protocol):
    """One seed system. ``exp`` is the stage's slice of the validated experiment (``t2i.workflow.stage_experiment``);
    ``inputs`` maps role -> folder: ``dataset`` always, the roles the system declares for the stage
    (``x-t2i.roles`` in its schema), ``prepared`` for train and ``model`` for sample."""

    def prepare(self, exp: dict, inputs: dict[str, Path], out_dir: Path) -> None:
        """Write the system-specific training format (e.g. cached text features) to ``out_dir``."""

    def train(self, exp: dict, inputs: dict[str, Path], out_dir: Path) -> None:
        """Build a ``TrainTask`` and run it with ``t2i.train.loop.run_training`` (exports ``out_dir/model``)."""

    def sample(self, exp: dict, inputs: dict[str, Path], prompts: list[dict], out_dir: Path) -> None:
        """Generate the prompt set through ``t2i.systems.sampling.run_sampling``."""
