"""LayoutLLM's few-shot layout prompt, reproduced word for word.

An in-context example is ``{"caption": str, "objects": [{"name": str, "box": [x, y, w, h]}]}``
with (x, y) the top-left corner, all normalised to [0, 1]. The caller orders the examples
as they should appear; LayoutLLM puts the best one last, next to the query.
"""
from __future__ import annotations

from numbers import Integral, Real
from typing import Sequence

SYSTEM_MESSAGE = "You are a helpful assistant."

PREFIX = (
    "Now you are an assistant to help me design a layout given a description. "
    'Concretely, a layout denotes a set of "object: bounding box" item. '
    '"object" means any object name in the world, while "bounding box" is formulated as [x, y, w, h], '
    'where "x, y" denotes the top left coordinate of the bounding box, "w" denotes the width, '
    'and "h" denotes the height. '
    'The six values "x, y, w, h, x+w, y+h" are all larger than 0 and smaller than 1. '
    "Next, I will give you several examples for you to understand this task."
)
QUERY_SUFFIX = ("(No explanation. Must give an output or try to imagine a possible output "
                "even if the given description is incomplete. )")


def _format_value(value) -> str:
    """One box value as the original prints it: ``str`` of ``round(v, 2)`` (ints stay ints)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"box value {value!r} is not a number")
    if isinstance(value, Integral):
        return str(int(value))
    return repr(round(float(value), 2))


def format_box(box: Sequence) -> str:
    """``[x, y, w, h]`` with each value rounded to 2 decimals, e.g. ``[0.1, 0.25, 0.3, 0.4]``."""
    if len(box) != 4:
        raise ValueError(f"box {list(box)!r} does not have 4 values [x, y, w, h]")
    return "[" + ", ".join(_format_value(v) for v in box) + "]"


def format_example(example: dict) -> str:
    """One in-context block: ``\\ninput: <caption>\\noutput: \\n<name>: [x, y, w, h]...\\n``."""
    lines = ["output: "] + [f"{obj['name']}: {format_box(obj['box'])}" for obj in example["objects"]]
    return "\ninput: " + example["caption"] + "\n" + "\n".join(lines) + "\n"


def format_query(query: str) -> str:
    return f"input: {query} {QUERY_SUFFIX}"


def build_prompt(examples: Sequence[dict], query: str) -> str:
    """The few-shot prompt for ``query`` with ``examples`` in the given order."""
    if not examples:
        raise ValueError("build_prompt needs at least one in-context example (the zero-shot template is not used)")
    for i, example in enumerate(examples):
        missing = [k for k in ("caption", "objects") if k not in example]
        if missing:
            raise ValueError(f"in-context example {i} lacks {', '.join(missing)}")
    blocks = "".join(format_example(e) for e in examples)
    return PREFIX + "\n" + blocks + "\n" + format_query(query)
