"""SDXL's two CLIP text encoders as one module: captions -> (context, pooled), as SDXL conditions its U-Net.

Used by pixel-space SDXL (its roles ``text_encoder_1/2``) and by the latent SDXL teacher the workflow
trains on Shapes; read from transformers CLIP folders or a diffusers SDXL pipeline folder.
"""
from __future__ import annotations

from pathlib import Path

import torch

ENCODER_ROLES = ("text_encoder_1", "text_encoder_2")  # also the folder names of trained encoders in a model folder


def _encoder_folders(folder: Path, suffix: str) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of one of SDXL's text encoders: a diffusers pipeline folder's
    ``text_encoder{suffix}/`` and ``tokenizer{suffix}/``, or else the folder itself (a transformers CLIP folder)."""
    if (folder / "model_index.json").is_file():
        return folder / f"text_encoder{suffix}", folder / f"tokenizer{suffix}"
    return folder, folder


def text_model(cls, folder: Path):
    """``cls.from_pretrained(folder)``, which may be a whole ``CLIPModel`` folder: its vision tower is left
    out without transformers' per-tensor report; a missing text tensor is an error."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ValueError(f"{folder}: no {cls.__name__} weights for {len(missing)} tensors, e.g. {missing[:3]}")
    return model


class SDXLTextEncoders(torch.nn.Module):
    """SDXL's two CLIP text encoders: captions -> ``(context [B, L, D1 + D2], pooled [B, P])``.

    Captions are padded to ``max_length`` and encoded without an attention mask, as SDXL does; the
    context is both encoders' penultimate hidden states concatenated, the pooled vector TE2's
    ``text_embeds``.
    """

    def __init__(self, te1, tokenizer1, te2, tokenizer2, max_length: int):
        super().__init__()
        self.te1, self.te2 = te1, te2
        self.tokenizers = (tokenizer1, tokenizer2)
        self.max_length = max_length
        self.context_dim = te1.config.hidden_size + te2.config.hidden_size
        self.pooled_dim = te2.config.projection_dim

    @classmethod
    def load(cls, dir1: Path, dir2: Path, max_length: int | None) -> "SDXLTextEncoders":
        """``CLIPTextModel`` + tokenizer from ``dir1``, ``CLIPTextModelWithProjection`` + tokenizer from ``dir2``:
        transformers CLIP folders, or a diffusers SDXL pipeline folder (its ``text_encoder``/``tokenizer``
        and ``text_encoder_2``/``tokenizer_2``).

        ``max_length`` None: the shorter tokenizer's ``model_max_length``; it may not exceed either
        encoder's ``max_position_embeddings``.
        """
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

        (model1, tok1), (model2, tok2) = _encoder_folders(Path(dir1), ""), _encoder_folders(Path(dir2), "_2")
        te1, te2 = text_model(CLIPTextModel, model1), text_model(CLIPTextModelWithProjection, model2)
        tokenizers = [AutoTokenizer.from_pretrained(d, local_files_only=True) for d in (tok1, tok2)]
        if max_length is None:
            max_length = min(t.model_max_length for t in tokenizers)
        for role, te, tok in (("text_encoder_1", te1, tokenizers[0]), ("text_encoder_2", te2, tokenizers[1])):
            if max_length > te.config.max_position_embeddings:
                raise ValueError(f"text.max_length {max_length} exceeds {role}'s max_position_embeddings "
                                 f"{te.config.max_position_embeddings}")
            if tok.pad_token is None:
                raise ValueError(f"inputs.{role}: its tokenizer has no pad token (SDXL pads every caption)")
        return cls(te1.eval().requires_grad_(False), tokenizers[0], te2.eval().requires_grad_(False), tokenizers[1],
                   max_length)

    def _ids(self, which: int, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizers[which](list(captions), padding="max_length", max_length=self.max_length,
                                     truncation=True, return_tensors="pt")["input_ids"]
        return ids.to(next(self.parameters()).device)

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
            h1 = self.te1(input_ids=self._ids(0, captions), output_hidden_states=True).hidden_states[-2]
            out2 = self.te2(input_ids=self._ids(1, captions), output_hidden_states=True)
        return torch.cat([h1, out2.hidden_states[-2]], dim=-1), out2.text_embeds

    def save_pretrained(self, out_dir: Path, weights: dict[str, torch.Tensor] | None = None) -> dict[str, str]:
        """Both encoders with their tokenizers as CLIP folders ``out_dir/text_encoder_{1,2}`` (``weights``: a
        state dict of this module to save instead of its own); returns the component classes for the index."""
        components = {}
        for i, (role, te) in enumerate(((ENCODER_ROLES[0], self.te1), (ENCODER_ROLES[1], self.te2))):
            prefix = f"te{i + 1}."
            state = None if weights is None else {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
            te.save_pretrained(Path(out_dir) / role, state_dict=state)
            self.tokenizers[i].save_pretrained(Path(out_dir) / role)
            components[role] = f"{type(te).__module__}:{type(te).__qualname__}"
        return components
