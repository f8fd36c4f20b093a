"""Training curves for the report: scalars from TensorBoard event files (or ``train_log.jsonl``) to a PNG."""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from t2i.utils.atomic import read_jsonl

Series = tuple[list[int], list[float]]


def load_scalars(train_dir: str | Path) -> dict[str, Series]:
    """``{tag: (steps, values)}`` from ``train_dir/tensorboard`` event files, else from the model folder's
    ``train_log.jsonl``.

    Empty when the training folder has neither (e.g. a system that does not train).
    """
    train_dir = Path(train_dir)
    tb_dir = train_dir / "tensorboard"
    if tb_dir.is_dir() and any(tb_dir.glob("events.out.tfevents.*")):
        from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

        acc = EventAccumulator(str(tb_dir), size_guidance={SCALARS: 0})  # 0: keep every point
        acc.Reload()
        scalars = {tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
                   for tag in acc.Tags()["scalars"]}
        if scalars:
            return scalars
    log = train_dir / "model" / "train_log.jsonl"
    if not log.is_file():
        return {}
    rows = read_jsonl(log)
    keys = [k for k in rows[0] if k not in ("step", "time")] if rows else []
    return {k: ([r["step"] for r in rows if k in r], [float(r[k]) for r in rows if k in r]) for k in keys}


def _ema(values: list[float], weight: float = 0.9) -> list[float]:
    """TensorBoard-style exponential smoothing (debiased at the start)."""
    out, acc = [], 0.0
    for i, v in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight ** i))
    return out


def plot_curves(scalars: dict[str, Series], *, title: str = "", max_panels: int = 4) -> bytes:
    """One panel per scalar (loss-like tags first) as PNG bytes; losses get a smoothed line on top."""
    tags = sorted(scalars, key=lambda t: ("loss" not in t.lower(), t))[:max_panels]
    fig = Figure(figsize=(3.4 * len(tags), 2.6), dpi=110, layout="constrained")
    for ax, tag in zip(fig.subplots(1, len(tags), squeeze=False)[0], tags):
        steps, values = scalars[tag]
        if "loss" in tag.lower() and len(values) > 5:
            ax.plot(steps, values, color="#4c78a8", alpha=0.3, linewidth=1)
            ax.plot(steps, _ema(values), color="#4c78a8", linewidth=1.8)
        else:
            ax.plot(steps, values, color="#f58518", linewidth=1.6)
        positive = [v for v in values if v > 0]
        if len(positive) == len(values) and values and max(values) / min(values) > 30:
            ax.set_yscale("log")
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
