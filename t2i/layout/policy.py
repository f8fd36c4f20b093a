"""LayoutLLM's example-selection policy: one ``Linear(in_dim -> embedding_size)`` over CLIP text features.

The original (``models/policy.py``, ``txt2img.py``, ``train_rl.py``): the query and every candidate caption are
embedded by CLIP's ``get_text_features`` (projected, not normalised), mapped by the Linear, and scored by dot
product. Inference takes the top ``shot_number`` by raw score and reverses them, so the best example sits next
to the query. Training is REINFORCE (PromptPG style): ``shot_number`` picks without replacement from
``softmax(scores / policy_temperature)``, log-probability = the sum of the picks' ``log p`` (the original's
simplification, kept), loss ``-(logp * reward).sum()`` over the batch, no baseline. ``policy_weights.pt`` is
the Linear's state dict (``weight`` [128, 768], ``bias`` [128]), read with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from t2i.models.policy import PolicyNetwork


def load_policy_weights(path: str | Path, in_dim: int, embedding_size: int) -> PolicyNetwork:
    """The original's ``policy_weights.pt`` (a Linear's state dict) as a :class:`PolicyNetwork`."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise ValueError(f"{path}: not a readable policy state dict ({e})") from None
    expected = {"weight": (embedding_size, in_dim), "bias": (embedding_size,)}
    shapes = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) else None
    if shapes != expected:
        raise ValueError(f"{path}: expected a Linear({in_dim} -> {embedding_size}) state dict {expected}, got {shapes}")
    policy = PolicyNetwork(in_dim=in_dim, embedding_size=embedding_size)
    policy.linear.load_state_dict(state)
    return policy


def top_examples(scores: torch.Tensor, k: int) -> list[int]:
    """The original's inference pick: the top ``k`` by raw score, reversed (best last)."""
    return scores.topk(min(k, scores.numel())).indices.tolist()[::-1]


def random_examples(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """``k`` distinct examples uniformly at random (the ablation the trained policy is compared with)."""
    return rng.choice(n, size=min(k, n), replace=False).tolist()


def sample_examples(scores: torch.Tensor, k: int, temperature: float, rng: np.random.Generator
                    ) -> tuple[list[int], torch.Tensor]:
    """Training's pick: ``k`` without replacement from ``softmax(scores / temperature)``, and the sum of their
    ``log p`` (differentiable)."""
    log_p = torch.log_softmax(scores / temperature, dim=-1)
    p = log_p.detach().exp().double().cpu().numpy()
    picks = rng.choice(len(p), size=min(k, len(p)), replace=False, p=p / p.sum()).tolist()
    return picks, log_p[picks].sum()


def reinforce_loss(log_probs: list[torch.Tensor], rewards: list[float]) -> torch.Tensor:
    """``-(logp * reward).sum()`` over the batch's samples (no baseline, as the original)."""
    return -(torch.stack(log_probs) * torch.tensor(rewards, dtype=log_probs[0].dtype,
                                                   device=log_probs[0].device)).sum()
