"""Read a layout out of an LLM answer.

``mode="compat"`` is LayoutLLM's regex unchanged: one ``name: [x, y, w, h]`` item per match,
floats with a decimal point only (an item written with ``0`` or ``1`` is dropped), names cut
to their last two words, values reported as given. ``mode="tolerant"`` also reads names of any
length, integers, ``(x, y, w, h)``, and JSON answers (optionally in a ```json fence), and clamps
boxes into the unit square. Both count the object-like items they could not read as ``dropped``.
"""
from __future__ import annotations

import ast
import json
import logging
import math
import re
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MODES = ("compat", "tolerant")
ON_MALFORMED = ("error", "empty")

# LayoutLLM utils.extract_prediction, verbatim.
COMPAT_PATTERN = re.compile(r"\b(\w+\s*\w*)\s*:\s*\[(\d+\.\d+),\s*(\d+\.\d+),\s*(\d+\.\d+),\s*(\d+\.\d+)\]")
_NUM = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
TOLERANT_PATTERN = re.compile(
    r"([^\n:\[\](){}]+?)\s*:\s*[\[(]\s*" + r"\s*,\s*".join([_NUM] * 4) + r"\s*[\])]")
# Anything shaped like ``name: [...]`` holding a digit, readable or not (square brackets only for compat).
_OBJECT_LIKE = {"compat": re.compile(r"[^\s:\[\]]\s*:\s*\[[^\[\]\n]*\d[^\[\]\n]*\]"),
                "tolerant": re.compile(r"[^\s:\[\](){}]\s*:\s*[\[(][^\[\]()\n]*\d[^\[\]()\n]*[\])]")}
_FENCE = re.compile(r"```[ \t]*(?:json|python|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_NAME_KEYS = ("name", "label", "object", "category", "phrase")
_BOX_KEYS = ("box", "bbox", "bounding_box")
_NAME_JUNK = " \t\"'`*-•,;"


class LayoutParseError(ValueError):
    """An LLM answer with no readable layout."""


@dataclass
class ParsedLayout:
    """Objects ``{"name", "box": [x, y, w, h]}`` read from ``answer``, with what was lost on the way."""

    objects: list[dict]
    dropped: int = 0   # object-like items not understood (and, tolerant, boxes with w or h <= 0)
    clamped: int = 0   # boxes moved into the unit square (tolerant only)
    answer: str = field(default="", repr=False)


def parse_layout(text: str, mode: str = "compat") -> ParsedLayout:
    """Parse an LLM answer in ``mode`` ("compat" or "tolerant")."""
    if mode not in MODES:
        raise ValueError(f"layout parse mode {mode!r} is not one of {', '.join(MODES)}")
    if not isinstance(text, str):
        raise TypeError(f"layout answer must be a string, not {type(text).__name__}")
    parsed = _parse_compat(text) if mode == "compat" else _parse_tolerant(text)
    parsed.answer = text
    level = logging.WARNING if parsed.dropped or parsed.clamped else logging.DEBUG
    log.log(level, "layout parse (%s): %d objects, %d dropped, %d clamped",
            mode, len(parsed.objects), parsed.dropped, parsed.clamped)
    return parsed


def layout_or_empty(parsed: ParsedLayout, on_malformed: str, context: str) -> list[dict]:
    """The parsed objects; when there are none, raise (``"error"``) or warn and return ``[]`` (``"empty"``)."""
    if on_malformed not in ON_MALFORMED:
        raise ValueError(f"on_malformed {on_malformed!r} is not one of {', '.join(ON_MALFORMED)}")
    if parsed.objects:
        return parsed.objects
    start = parsed.answer[:200] + ("..." if len(parsed.answer) > 200 else "")
    if on_malformed == "error":
        raise LayoutParseError(f"no layout in the LLM answer for {context!r} "
                               f"({parsed.dropped} object-like items not understood); answer starts: {start!r}")
    log.warning("no layout in the LLM answer for %r; using an empty layout; answer starts: %r", context, start)
    return []


# ---------------------------------------------------------------------------------------------- compat

def _parse_compat(text: str) -> ParsedLayout:
    matches = COMPAT_PATTERN.findall(text)
    objects = [{"name": m[0], "box": [float(v) for v in m[1:]]} for m in matches]
    dropped = max(0, len(_OBJECT_LIKE["compat"].findall(text)) - len(objects))
    return ParsedLayout(objects, dropped=dropped)


# -------------------------------------------------------------------------------------------- tolerant

def _parse_tolerant(text: str) -> ParsedLayout:
    items, dropped = _structured_items(text)
    if items is None:
        items, dropped = _regex_items(text)
    objects, clamped = [], 0
    for name, box in items:
        fixed = _clamp(box)
        if fixed is None:
            dropped += 1
            continue
        clamped += fixed != box
        objects.append({"name": name, "box": fixed})
    return ParsedLayout(objects, dropped=dropped, clamped=clamped)


def _regex_items(text: str) -> tuple[list[tuple[str, list[float]]], int]:
    items = []
    for m in TOLERANT_PATTERN.finditer(text):
        name = _clean_name(m.group(1))
        if name:
            items.append((name, [float(v) for v in m.groups()[1:]]))
    dropped = max(0, len(_OBJECT_LIKE["tolerant"].findall(text)) - len(items))
    return items, dropped


def _clean_name(raw: str) -> str:
    name = raw.strip().lstrip(_NAME_JUNK)
    name = re.sub(r"^\d+[.)]\s+", "", name)  # "1. cat"
    return name.strip(_NAME_JUNK)


def _structured_items(text: str) -> tuple[list | None, int]:
    """``(items, dropped)`` of a JSON (or Python-literal) answer; ``(None, 0)`` when it is not one."""
    for candidate in _structured_candidates(text):
        found = _items_from(_load_literal(candidate))
        if found is not None:
            return found
    return None, 0


def _structured_candidates(text: str) -> list[str]:
    fenced = [m.group(1).strip() for m in _FENCE.finditer(text)]
    body = fenced[0] if fenced else text.strip()
    starts = [i for i in (body.find("["), body.find("{")) if i >= 0]
    candidates = [body]
    if starts:  # prose around the JSON
        start = min(starts)
        end = max(body.rfind("]"), body.rfind("}"))
        if end > start:
            candidates.append(body[start:end + 1])
    return candidates


def _load_literal(text: str):
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _items_from(data) -> tuple[list, int] | None:
    """``(items, dropped)`` from a list of dicts, a dict name -> box, or a list of ``[name, box]``."""
    if isinstance(data, dict):
        nested = [v for k, v in data.items() if k in ("objects", "layout") and isinstance(v, list)]
        if nested:
            return _items_from(nested[0])
        single = _entry(data)
        entries = [single] if single[0] is not None and single[1] is not None else list(data.items())
    elif isinstance(data, (list, tuple)):
        entries = [_entry(e) for e in data]
    else:
        return None
    items = [(name.strip(), box) for name, box in ((n, _box(b)) for n, b in entries)
             if isinstance(name, str) and name.strip() and box is not None]
    if not items:
        return None
    return items, len(entries) - len(items)


def _entry(e) -> tuple:
    if isinstance(e, dict):
        name = next((e[k] for k in _NAME_KEYS if k in e), None)
        box = next((e[k] for k in _BOX_KEYS if k in e), None)
        return name, box
    if isinstance(e, (list, tuple)) and len(e) == 2:
        return e[0], e[1]
    return None, None


def _box(value) -> list[float] | None:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    return [float(v) for v in value]


def _clamp(box: list[float]) -> list[float] | None:
    """``box`` intersected with the unit square, or ``None`` when nothing of positive size is left."""
    if not all(math.isfinite(v) for v in box):
        return None
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return None
    if x >= 0 and y >= 0 and x + w <= 1 and y + h <= 1:
        return box
    x0, y0 = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
    x1, y1 = min(x + w, 1.0), min(y + h, 1.0)
    if x1 <= x0 or y1 <= y0:
        return None
    return [x0, y0, x1 - x0, y1 - y0]
