"""The long-prompt decomposer of LPD (seed 003; wishhyt/long-prompt-decomposer-sd35's SD3 "t5" design).

N learned query sets ``[N, T, width]`` each read the long prompt's T5 hidden states through ``layers``
Perceiver blocks and become one component condition of T tokens. A block (Flamingo/ELLA style):

    q = LN(queries);  queries += MHA(q, kv=[q ; LN(text)]);  queries += MLP(LN(queries))

with LayerNorms without affine parameters (eps 1e-6), ``nn.MultiheadAttention(width, heads)`` and a
squared-ReLU MLP (width -> 4 width -> width). Each (sample, component) pair is its own row, so components
never attend to each other: they differ by their queries alone. There is no timestep input (it runs once per
sampling run) and no input or output projection: ``width`` is the T5 ``d_model``, which must also be the
SD3 transformer's ``joint_attention_dim`` (checked where the two meet).

The original attends to T5's padding tokens (SD3 pads every prompt to 512 without a mask); that stays the
default, and ``forward(..., text_mask=...)`` leaves them out instead. The config (``num_components``,
``num_tokens``, ``heads``, ``layers``, ``width``) is saved with the weights: the original saves none, and a
wrong ``heads`` loads its weights silently and computes something else (no tensor shape depends on it).
:func:`from_original_state_dict` reads the original's ``model.safetensors`` (``mask_head.connector.*``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

ORIGINAL_PREFIX = "mask_head.connector."
WEIGHTS = "model.safetensors"
LN_EPS = 1e-6


class PerceiverBlock(nn.Module):
    """One refinement of the queries by the text (module docstring); tensor names as the original's."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(width, 4 * width), "c_proj": nn.Linear(4 * width, width)})

    def forward(self, text: torch.Tensor, queries: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        width = queries.shape[-1]
        q = F.layer_norm(queries, (width,), eps=LN_EPS)
        kv = torch.cat([q, F.layer_norm(text, (width,), eps=LN_EPS)], dim=1)
        queries = queries + self.attn(q, kv, kv, key_padding_mask=key_padding_mask, need_weights=False)[0]
        h = F.layer_norm(queries, (width,), eps=LN_EPS)
        return queries + self.mlp["c_proj"](F.relu(self.mlp["c_fc"](h)).square())


class PromptDecomposer(ModelMixin, ConfigMixin):
    """``forward(text_states [B, L, width], text_mask [B, L] | None) -> [B, N, T, width]``: the N component
    conditions of each prompt (``out[:, i]`` is the original's ``i``-th list entry)."""

    @register_to_config
    def __init__(self, width: int, num_components: int = 4, num_tokens: int = 128, heads: int = 32, layers: int = 6):
        super().__init__()
        if width % heads:
            raise ValueError(f"decomposer_heads {heads} must divide the width {width} (the T5 d_model)")
        self.queries = nn.Parameter(width ** -0.5 * torch.randn(num_components, num_tokens, width))
        self.blocks = nn.ModuleList([PerceiverBlock(width, heads) for _ in range(layers)])

    def forward(self, text_states: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        if text_states.ndim != 3 or text_states.shape[-1] != c.width:
            raise ValueError(f"the decomposer takes text states [B, L, {c.width}], got {tuple(text_states.shape)}")
        batch, n = text_states.shape[0], c.num_components
        queries = self.queries.to(text_states.dtype).repeat(batch, 1, 1)  # rows (b0 c0, b0 c1, ...)
        text = text_states.repeat_interleave(n, dim=0)
        ignore = None
        if text_mask is not None:  # True where a key is left out: none of the queries, the text's padding
            pads = ~text_mask.to(torch.bool).repeat_interleave(n, dim=0)
            ignore = torch.cat([torch.zeros(pads.shape[0], c.num_tokens, dtype=torch.bool, device=pads.device), pads], 1)
        for block in self.blocks:
            queries = block(text, queries, ignore)
        return queries.reshape(batch, n, c.num_tokens, c.width)

    def save_pretrained(self, out_dir, **_) -> None:
        """``config.json`` (N, T, width, heads, layers) and ``model.safetensors`` (the original's file name)."""
        from safetensors.torch import save_file

        from t2i.utils.atomic import atomic_path

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.save_config(out_dir)
        with atomic_path(out_dir / WEIGHTS) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))

    @classmethod
    def from_pretrained(cls, source, expected: dict | None = None, **_) -> "PromptDecomposer":
        """A decomposer from a folder (``config.json`` + ``model.safetensors``) or a ``.safetensors`` file (ours,
        or the original's ``mask_head.connector.*``; its config from ``config.json`` beside it, else from
        ``expected``). ``expected`` (config keys) must agree with the file's config: the original saves none,
        and a wrong ``heads`` would load silently and compute something else."""
        from safetensors.torch import load_file

        source = Path(source)
        weights = source / WEIGHTS if source.is_dir() else source
        if not weights.is_file():
            raise ValueError(f"{source}: no decomposer weights ({WEIGHTS} in a folder, or a .safetensors file)")
        config_file = weights.parent / "config.json"
        config = ({k: v for k, v in cls.load_config(weights.parent).items() if not k.startswith("_")}
                  if config_file.is_file() else None)
        expected = expected or {}
        if config is not None:
            wrong = {k: (config.get(k), v) for k, v in expected.items() if config.get(k) != v}
            if wrong:
                raise ValueError(f"{source}: the decomposer was saved with " + ", ".join(
                    f"{k}={saved} where this experiment says {k}={want}" for k, (saved, want) in wrong.items()))
        state = load_file(str(weights))
        if any(k.startswith(ORIGINAL_PREFIX) for k in state):
            heads = (config or expected).get("heads")
            if heads is None:
                raise ValueError(f"{weights}: the original's weights record no heads: set decomposer.heads")
            model = from_original_state_dict(state, heads)
            saved = {k: v for k, v in model.config.items() if not k.startswith("_")}
            wrong = {k: (saved[k], v) for k, v in expected.items() if saved.get(k) != v}
            if wrong:
                raise ValueError(f"{weights}: its tensors say " + ", ".join(
                    f"{k}={have} where this experiment says {k}={want}" for k, (have, want) in wrong.items()))
            return model
        if config is None:
            missing = [k for k in ("width", "num_components", "num_tokens", "heads", "layers") if k not in expected]
            if missing:
                raise ValueError(f"{weights}: no config.json beside it and no {', '.join(missing)} given")
            config = expected
        model = cls(**config)
        model.load_state_dict(state, strict=True)
        return model


def from_original_state_dict(state_dict: dict[str, torch.Tensor], heads: int) -> PromptDecomposer:
    """A :class:`PromptDecomposer` from the original's weights (``mask_head.connector.latents`` and
    ``...perceiver_blocks.<k>.*``), strictly. ``heads`` is the one setting no tensor records: it must be the
    training run's ``--decomposer_heads`` (32 in the seed's command)."""
    latents = state_dict.get(ORIGINAL_PREFIX + "latents")
    if latents is None or latents.ndim != 3:
        raise ValueError(f"no {ORIGINAL_PREFIX}latents [N, T, width]: not the original decomposer's weights")
    blocks = {int(k[len(ORIGINAL_PREFIX + "perceiver_blocks."):].split(".")[0]) for k in state_dict
              if k.startswith(ORIGINAL_PREFIX + "perceiver_blocks.")}
    if blocks != set(range(len(blocks))):
        raise ValueError(f"perceiver blocks {sorted(blocks)} are not numbered 0..{len(blocks) - 1}")
    n, t, width = latents.shape
    model = PromptDecomposer(width=width, num_components=n, num_tokens=t, heads=heads, layers=len(blocks))
    ours = {}
    for key, value in state_dict.items():
        if not key.startswith(ORIGINAL_PREFIX):
            raise ValueError(f"unexpected tensor {key!r} (the original's decomposer keys start {ORIGINAL_PREFIX!r})")
        name = key[len(ORIGINAL_PREFIX):]
        ours["queries" if name == "latents" else name.replace("perceiver_blocks.", "blocks.", 1)] = value
    model.load_state_dict(ours, strict=True)
    return model
