"""Planners: a prompt and its in-context examples -> an answer in the LLM's format (``name: [x, y, w, h]`` lines),
which the configured parser (``t2i.layout.parse``) reads, whoever wrote it.

- ``llm``: the few-shot prompt (``t2i.layout.prompt``) to an OpenAI-compatible chat model (``t2i.layout.llm``),
  answers cached on disk.
- ``offline_shapes``: no language model. It reads the objects a Shapes prompt names (colour, shape, count and
  size words) and adapts the boxes of the examples, best example first: the query's k-th object takes the box
  of the k-th object of the best example that has one (resized to the stated size, centre kept), so the
  examples the policy picks decide the layout (same object count, same relation and sizes give a plausible
  one); an object no example covers gets a free cell of a 3 x 3 grid. Labelled as offline in the report.
"""
from __future__ import annotations

import re
from pathlib import Path

from t2i.data.shapes import COUNT_WORDS, PALETTE, SHAPES, SIZE_FRACTION
from t2i.layout.prompt import build_prompt, format_box

_COUNTS = {"a": 1, "an": 1, **{w: n for n, w in COUNT_WORDS.items()}}
_MENTION = re.compile(rf"\b({'|'.join(_COUNTS)})\s+(?:(small|large)\s+)?({'|'.join(PALETTE)})\s+({'|'.join(SHAPES)})s?\b",
                      re.IGNORECASE)


def shapes_objects(prompt: str) -> list[dict]:
    """The objects a Shapes prompt names, in order, counts expanded: ``{"name", "size"}`` (size None if unsaid)."""
    objects = []
    for count, size, colour, shape in _MENTION.findall(prompt):
        objects += [{"name": f"{colour.lower()} {shape.lower()}", "size": size.lower() or None}] * _COUNTS[count.lower()]
    return objects


def _resized(box: list[float], size: str | None) -> list[float]:
    if size is None:
        return box
    x, y, w, h = box
    side = SIZE_FRACTION[size]
    x, y = min(max(x + w / 2 - side / 2, 0.0), 1 - side), min(max(y + h / 2 - side / 2, 0.0), 1 - side)
    return [x, y, side, side]


def _grid_cell(k: int) -> list[float]:
    side = SIZE_FRACTION["small"]
    row, col = divmod(k % 9, 3)
    return [(col + 0.5) / 3 - side / 2, (row + 0.5) / 3 - side / 2, side, side]


def offline_shapes_answer(prompt: str, examples: list[dict]) -> str:
    """The answer text of the offline planner (module docstring); ``examples`` best last, as the LLM sees them."""
    best_first = examples[::-1]
    lines = []
    for k, obj in enumerate(shapes_objects(prompt)):
        source = next((e["objects"][k]["box"] for e in best_first if len(e["objects"]) > k), None)
        box = _resized(source, obj["size"]) if source is not None else _grid_cell(k)
        lines.append(f"{obj['name']}: {format_box(box)}")
    return "\n".join(lines)


class OfflineShapesPlanner:
    """``answer(prompt, examples)`` by :func:`offline_shapes_answer`."""

    label = "offline (Shapes grammar, boxes adapted from the examples)"

    def answer(self, prompt: str, examples: list[dict]) -> str:
        return offline_shapes_answer(prompt, examples)


class LLMPlanner:
    """``answer(prompt, examples)``: the original's few-shot prompt to a chat model (``plan.llm``)."""

    def __init__(self, llm_cfg: dict, cache_dir: Path):
        from t2i.layout.llm import ChatLLM

        self.llm = ChatLLM.from_config(llm_cfg, cache_dir)
        self.label = f"LLM {llm_cfg['model']}"

    def answer(self, prompt: str, examples: list[dict]) -> str:
        return self.llm.complete(build_prompt(examples, prompt))


def make_planner(plan_cfg: dict, cache_dir: Path):
    if plan_cfg["planner"] == "llm":
        return LLMPlanner(plan_cfg["llm"], cache_dir)
    return OfflineShapesPlanner()
