"""Shapes-T2I: a generated text-to-image benchmark whose metrics mean something on a CPU.

Each image holds 1-3 flat shapes (``SHAPES``) in saturated colours (``PALETTE``) and two
sizes (``SIZES``) on a plain white background. Objects never overlap and keep a margin,
so counts and spatial relations are unambiguous. Everything is deterministic from the
seed: the same config gives byte-identical files (``provenance.json`` aside, which
records when it was written).

Every image has one of four caption types, mixed over the dataset:

- ``single``   attribute binding: "a small red circle"
- ``count``    counting: "two blue squares"
- ``relation`` spatial relation: "a small green triangle to the left of a large yellow circle"
- ``multi``    several groups: "a large red circle and two blue squares"

and a ``long_caption`` of several sentences that gives every object with its size and
position, then the relation between every two objects of distinct colour-shape pairs.

``generate(out_dir, cfg)`` writes::

    images/NAME.png, captions/NAME.txt     caption-dir layout (one caption line)
    annotations.jsonl                      name, split, caption, long_caption, tags, objects, relation
    prompts/{test,holdout,long}.jsonl      id, prompt, reference (image name), spec
    splits/{train,test,holdout}.txt        image names, one a line
    provenance.json

An object is ``{"shape", "color", "size", "box": [x0, y0, x1, y1]}`` in pixels (x1, y1
exclusive); ``relation`` is ``{"type": left_of|right_of|above|below, "a": i, "b": j}``
(indices into ``objects``: object ``a`` is <type> object ``b``) or null. The ``test`` split
draws from the training distribution; the colour-shape pairs of ``holdout_pairs`` never
appear in train or test images (nor their captions), and every ``holdout`` image holds at
least one of them. ``prompts/long.jsonl`` has the long captions of the test images.

A prompt's ``spec`` is the structured target that ``t2i.eval.shapes.score`` checks::

    {"type": "single" | "count" | "relation" | "multi",
     "objects": [{"color": "red", "shape": "circle", "count": 1}, ...],  # one per colour-shape pair
     "relation": {"type": "left_of", "a": 0, "b": 1} | null}             # indices into spec objects

Sizes and positions are described by captions but are not part of the spec.
"""
from __future__ import annotations

import json
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from t2i.utils.atomic import atomic_dir, atomic_write_jsonl, atomic_write_text
from t2i.utils.provenance import write_provenance

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
SIZE_FRACTION = {"small": 0.22, "large": 0.34}  # object side / image side
BACKGROUND = (255, 255, 255)
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
RELATION_WORDS = {"left_of": "to the left of", "right_of": "to the right of", "above": "above", "below": "below"}
SPLITS = ("train", "test", "holdout")
RELATION_MIN_RATIO = 2.0  # relation images: centre offset along the relation's axis / across it
CAPTION_TYPES = {"single": 0.25, "count": 0.2, "relation": 0.3, "multi": 0.25}  # sampling weights

_SUPERSAMPLE = 4  # shapes are drawn this much larger, then box-filtered down (anti-aliasing)
_MAX_LAYOUT_TRIES = 1000
_CANDIDATES = 32  # positions drawn at once per object
_CONFIG_KEYS = ("seed", "image_size", "num_train", "num_test", "max_objects", "holdout_pairs", "num_holdout")


def _recorded_config(dataset_dir: Path):
    """The dataset config its ``provenance.json`` records; ``FileNotFoundError`` without one, ``ValueError``
    for one that is unreadable or records none."""
    provenance = Path(dataset_dir) / "provenance.json"
    try:
        config = json.loads(provenance.read_text(encoding="utf-8"))["config"]
    except FileNotFoundError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{provenance}: cannot read the dataset's config ({e!r})") from e
    return config


def image_size_of(dataset_dir: Path) -> int:
    """A generated Shapes dataset's image side, from its ``provenance.json``."""
    try:
        return _recorded_config(dataset_dir)["image_size"]
    except (OSError, KeyError, TypeError, ValueError) as e:
        provenance = Path(dataset_dir) / "provenance.json"
        raise ValueError(f"{provenance}: cannot read config.image_size of the Shapes dataset ({e!r})") from e


def is_shapes_dataset(dataset_dir: Path) -> bool:
    """Whether ``dataset_dir`` holds a Shapes dataset: its ``provenance.json`` records a Shapes config
    (``kind: shapes``, or no ``kind``: :func:`generate` records its config without one); False without a
    ``provenance.json``."""
    try:
        config = _recorded_config(dataset_dir)
    except FileNotFoundError:
        return False
    return isinstance(config, dict) and config.get("kind", "shapes") == "shapes"


def margins(image_size: int) -> tuple[int, int]:
    """(border margin, minimum gap between objects) in pixels for an image side."""
    return max(1, round(0.05 * image_size)), max(2, round(0.06 * image_size))


def object_side(size: str, image_size: int) -> int:
    return round(SIZE_FRACTION[size] * image_size)


# ---------------------------------------------------------------------------- rendering

def render(objects: list[dict], image_size: int, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Draw ``objects`` (each with ``shape``, ``color`` and pixel ``box``) on a plain background."""
    big = image_size * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(img)
    for obj in objects:
        x0, y0, x1, y1 = (v * _SUPERSAMPLE for v in obj["box"])
        x1, y1 = x1 - 1, y1 - 1  # PIL's boxes are inclusive
        fill = PALETTE[obj["color"]]
        if obj["shape"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj["shape"] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif obj["shape"] == "triangle":
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj['shape']!r} (expected one of {', '.join(SHAPES)})")
    return img.resize((image_size, image_size), Image.BOX)


# ---------------------------------------------------------------------------- text

def relation_between(box_a, box_b) -> str:
    """The relation of box ``a`` to box ``b`` along the axis where their centres differ most."""
    dx = (box_b[0] + box_b[2]) - (box_a[0] + box_a[2])
    dy = (box_b[1] + box_b[3]) - (box_a[1] + box_a[3])
    if abs(dx) >= abs(dy):
        return "left_of" if dx > 0 else "right_of"
    return "above" if dy > 0 else "below"


def _groups(objects: list[dict]) -> list[tuple[str, str, list[int]]]:
    """(color, shape, object indices) per colour-shape pair, in order of first appearance."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, obj in enumerate(objects):
        groups.setdefault((obj["color"], obj["shape"]), []).append(i)
    return [(c, s, idx) for (c, s), idx in groups.items()]


def _group_of(groups, index: int) -> int:
    return next(g for g, (_, _, idx) in enumerate(groups) if index in idx)


def spec_of(objects: list[dict], relation: dict | None) -> dict:
    """The scorer's target for an image (see the module docstring)."""
    groups = _groups(objects)
    spec_objects = [{"color": c, "shape": s, "count": len(idx)} for c, s, idx in groups]
    spec_relation = None
    if relation is not None:
        spec_relation = {"type": relation["type"], "a": _group_of(groups, relation["a"]),
                         "b": _group_of(groups, relation["b"])}
    if relation is not None:
        kind = "relation"
    elif len(objects) == 1:
        kind = "single"
    elif len(groups) == 1:
        kind = "count"
    else:
        kind = "multi"
    return {"type": kind, "objects": spec_objects, "relation": spec_relation}


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption_of(objects: list[dict], relation: dict | None) -> str:
    """The short caption: every colour-shape group once (with its size when it has one object)."""
    groups = _groups(objects)

    def phrase(group) -> str:
        color, shape, idx = group
        if len(idx) == 1:
            return f"a {objects[idx[0]]['size']} {color} {shape}"
        return f"{COUNT_WORDS[len(idx)]} {color} {shape}s"

    if relation is not None:
        a, b = groups[_group_of(groups, relation["a"])], groups[_group_of(groups, relation["b"])]
        return f"{phrase(a)} {RELATION_WORDS[relation['type']]} {phrase(b)}"
    return _join([phrase(g) for g in groups])


def _position(box, image_size: int) -> str:
    """Where a box's centre lies on a 3x3 grid, as a phrase."""
    third = image_size / 3
    col = min(2, int((box[0] + box[2]) / 2 // third))
    row = min(2, int((box[1] + box[3]) / 2 // third))
    return [["in the top left corner", "at the top", "in the top right corner"],
            ["on the left", "in the centre", "on the right"],
            ["in the bottom left corner", "at the bottom", "in the bottom right corner"]][row][col]


def _names(objects: list[dict]) -> dict[int, str]:
    """A definite name for every object that one exists for: "the red circle", else "the small red circle"."""
    pairs = [(o["color"], o["shape"]) for o in objects]
    sized = [(o["size"], *p) for o, p in zip(objects, pairs)]
    names = {}
    for i, (pair, full) in enumerate(zip(pairs, sized)):
        if pairs.count(pair) == 1:
            names[i] = "the {} {}".format(*pair)
        elif sized.count(full) == 1:
            names[i] = "the {} {} {}".format(*full)
    return names


def long_caption_of(objects: list[dict], image_size: int) -> str:
    """Several sentences: the object count, every object with size and position, pairwise relations."""
    n = len(objects)
    sentences = [f"A picture of {COUNT_WORDS[n]} object{'s' if n > 1 else ''} on a white background."]
    sentences += [f"A {o['size']} {o['color']} {o['shape']} is {_position(o['box'], image_size)}." for o in objects]
    names = _names(objects)
    for i, j in combinations(sorted(names), 2):
        rel = RELATION_WORDS[relation_between(objects[i]["box"], objects[j]["box"])]
        sentences.append(f"{names[i].capitalize()} is {rel} {names[j]}.")
    return " ".join(sentences)


def tags_of(objects: list[dict], relation: dict | None) -> list[str]:
    """A tag list (seed-004 style): pairs, sized pairs, the object count, group counts, the relation."""
    groups = _groups(objects)
    tags = [f"{c} {s}" for c, s, _ in groups]
    tags += list(dict.fromkeys(f"{o['size']} {o['color']} {o['shape']}" for o in objects))
    tags.append(f"{COUNT_WORDS[len(objects)]} object{'s' if len(objects) > 1 else ''}")
    tags += [f"{COUNT_WORDS[len(idx)]} {c} {s}s" for c, s, idx in groups if len(idx) > 1]
    if relation is not None:
        a, b = objects[relation["a"]], objects[relation["b"]]
        tags.append(f"{a['color']} {a['shape']} {RELATION_WORDS[relation['type']]} {b['color']} {b['shape']}")
    return tags


# ---------------------------------------------------------------------------- sampling

def _clear_relation(a, b, gap: int) -> bool:
    """Whether boxes ``a`` and ``b`` are apart along their dominant axis, and their centres mostly along it."""
    dx = abs((a[0] + a[2]) - (b[0] + b[2]))
    dy = abs((a[1] + a[3]) - (b[1] + b[3]))
    if dx >= dy:
        return dx >= RELATION_MIN_RATIO * dy and (a[2] + gap <= b[0] or b[2] + gap <= a[0])
    return dy >= RELATION_MIN_RATIO * dx and (a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _layout(rng: np.random.Generator, sizes: list[str], image_size: int, with_relation: bool) -> list[list[int]]:
    """Boxes for objects of ``sizes``: inside the border margin, pairwise apart by the gap.

    Each object takes the first of a batch of random candidate positions that keeps the
    gap to the boxes already placed; if none does, the layout starts over. With
    ``with_relation`` the first two boxes must also be separated along the axis of their
    dominant relation, and their centres lie within ~27 degrees of it, so the relation is clear.
    """
    margin, gap = margins(image_size)
    for _ in range(_MAX_LAYOUT_TRIES):
        boxes: list[list[int]] = []
        for size in sizes:
            side = object_side(size, image_size)
            xy = rng.integers(margin, image_size - margin - side + 1, size=(_CANDIDATES, 2))
            ok = np.ones(_CANDIDATES, dtype=bool)
            for b in boxes:
                ok &= ((xy[:, 0] + side + gap <= b[0]) | (b[2] + gap <= xy[:, 0])
                       | (xy[:, 1] + side + gap <= b[1]) | (b[3] + gap <= xy[:, 1]))
            if not ok.any():
                break
            x0, y0 = (int(v) for v in xy[ok.argmax()])
            boxes.append([x0, y0, x0 + side, y0 + side])
        else:
            if not with_relation or _clear_relation(boxes[0], boxes[1], gap):
                return boxes
    raise RuntimeError(f"could not place {len(sizes)} objects in a {image_size}px image")


def _pick(rng: np.random.Generator, options: list) -> object:
    return options[int(rng.integers(len(options)))]


def _sample_pairs(rng: np.random.Generator, kind: str, max_objects: int, first_pairs: list, other_pairs: list) -> list:
    """The colour-shape pair of every object; the first group comes from ``first_pairs``."""
    if kind == "single":
        counts = [1]
    elif kind == "count":
        counts = [int(rng.integers(2, max_objects + 1))]
    elif kind == "relation":
        counts = [1, 1]
    else:  # multi: two or three objects in at least two groups
        counts = _pick(rng, [[1, 1], [1, 1, 1], [2, 1], [1, 2]] if max_objects == 3 else [[1, 1]])
    chosen = [_pick(rng, first_pairs)]
    for _ in counts[1:]:
        chosen.append(_pick(rng, [p for p in other_pairs if p not in chosen]))
    order = rng.permutation(len(counts))  # the forced (hold-out) group is not always named first
    return [chosen[g] for g in order for _ in range(counts[g])]


def _sample_image(rng: np.random.Generator, image_size: int, max_objects: int,
                  first_pairs: list, other_pairs: list) -> tuple[list[dict], dict | None]:
    kinds = list(CAPTION_TYPES) if max_objects > 1 else ["single"]
    weights = np.array([CAPTION_TYPES[k] for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    pairs = _sample_pairs(rng, kind, max_objects, first_pairs, other_pairs)
    sizes = [SIZES[int(rng.integers(len(SIZES)))] for _ in pairs]
    boxes = _layout(rng, sizes, image_size, with_relation=kind == "relation")
    objects = [{"shape": s, "color": c, "size": size, "box": box} for (c, s), size, box in zip(pairs, sizes, boxes)]
    relation = None
    if kind == "relation":
        a, b = (0, 1) if rng.random() < 0.5 else (1, 0)
        relation = {"type": relation_between(boxes[a], boxes[b]), "a": a, "b": b}
    return objects, relation


# ---------------------------------------------------------------------------- config

def _validate(cfg: dict) -> None:
    """Raise one ``ValueError`` naming the first bad key of a Shapes config."""
    def bad(key: str, why: str):
        return ValueError(f"shapes config: {key} {why} (got {cfg.get(key)!r})")

    for key in _CONFIG_KEYS:
        if key not in cfg:
            raise ValueError(f"shapes config: missing key {key!r}")
    unknown = sorted(set(cfg) - set(_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"shapes config: unknown key(s) {', '.join(map(repr, unknown))}")
    for key in ("seed", "image_size", "num_train", "num_test", "max_objects", "num_holdout"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool):
            raise bad(key, "must be an integer")
    for key, low in {"image_size": 32, "num_train": 1, "num_test": 1, "max_objects": 1, "num_holdout": 0}.items():
        if cfg[key] < low:
            raise bad(key, f"must be >= {low}")
    if cfg["max_objects"] > 3:
        raise bad("max_objects", "must be 1, 2 or 3")
    pairs = cfg["holdout_pairs"]
    if not isinstance(pairs, list):
        raise bad("holdout_pairs", "must be a list of 'colour shape' strings")
    for p in pairs:
        parts = p.split() if isinstance(p, str) else []
        if len(parts) != 2 or parts[0] not in PALETTE or parts[1] not in SHAPES:
            raise ValueError(f"shapes config: holdout_pairs has {p!r}; expected 'colour shape' with colour in "
                             f"{', '.join(PALETTE)} and shape in {', '.join(SHAPES)}")
    if len(set(pairs)) > len(PALETTE) * len(SHAPES) - 3:
        raise bad("holdout_pairs", "must leave at least three colour-shape pairs for training")
    if cfg["num_holdout"] > 0 and not pairs:
        raise bad("num_holdout", "must be 0 when holdout_pairs is empty")


# ---------------------------------------------------------------------------- generate

def generate(out_dir: str | Path, cfg: dict) -> None:
    """Write the Shapes-T2I dataset described by ``cfg`` to ``out_dir`` (layout: module docstring)."""
    _validate(cfg)
    start = time.time()
    out_dir = Path(out_dir)
    size, max_objects = cfg["image_size"], cfg["max_objects"]
    all_pairs = [(c, s) for c in PALETTE for s in SHAPES]
    held = {tuple(p.split()) for p in cfg["holdout_pairs"]}
    seen = [p for p in all_pairs if p not in held]
    plan = [("train", cfg["num_train"], seen, seen), ("test", cfg["num_test"], seen, seen),
            ("holdout", cfg["num_holdout"], [p for p in all_pairs if p in held], all_pairs)]

    rows: list[dict] = []
    with atomic_dir(out_dir / "images") as images, atomic_dir(out_dir / "captions") as captions, \
            tqdm(total=sum(n for _, n, _, _ in plan), desc="shapes", unit="img") as bar:
        for split, count, first_pairs, other_pairs in plan:
            for i in range(count):
                rng = np.random.default_rng([cfg["seed"] % 2**64, SPLITS.index(split), i])
                objects, relation = _sample_image(rng, size, max_objects, first_pairs, other_pairs)
                name = f"{split}_{i:05d}"
                caption = caption_of(objects, relation)
                render(objects, size).save(images / f"{name}.png", format="PNG")
                (captions / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
                rows.append({"name": name, "split": split, "caption": caption,
                             "long_caption": long_caption_of(objects, size), "tags": tags_of(objects, relation),
                             "objects": objects, "relation": relation})
                bar.update()

    atomic_write_jsonl(out_dir / "annotations.jsonl", rows)
    for split in SPLITS:
        atomic_write_text(out_dir / "splits" / f"{split}.txt",
                          "".join(r["name"] + "\n" for r in rows if r["split"] == split))

    def prompts(split: str, field: str) -> list[dict]:
        return [{"id": r["name"], "prompt": r[field], "reference": r["name"],
                 "spec": spec_of(r["objects"], r["relation"])} for r in rows if r["split"] == split]

    atomic_write_jsonl(out_dir / "prompts" / "test.jsonl", prompts("test", "caption"))
    atomic_write_jsonl(out_dir / "prompts" / "holdout.jsonl", prompts("holdout", "caption"))
    atomic_write_jsonl(out_dir / "prompts" / "long.jsonl", prompts("test", "long_caption"))
    write_provenance(out_dir, cfg, seeds=cfg["seed"], wall_time_s=round(time.time() - start, 3))
