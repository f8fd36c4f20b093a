"""SD3's three text encoders as one module: captions -> CLIP context, T5 states and the pooled vector.

SD3 (and SD3.5) conditions its MMDiT on ``[CLIP-L ; CLIP-G penultimate states, zero-padded to the T5 width]``
followed by T5's last hidden states, and on the pooled vector ``[CLIP-L text_embeds ; CLIP-G text_embeds]``.
Prompts are padded to fixed lengths and encoded without an attention mask, as diffusers' pipeline does.
LPD keeps the CLIP part and replaces the T5 part by its decomposed tokens, so the three outputs stay apart.

Read from a diffusers SD3 pipeline folder (``text_encoder``, ``text_encoder_2``, ``text_encoder_3`` with their
tokenizers) or from three folders. The T5 role takes any transformers encoder with a tokenizer (a
``T5EncoderModel``; on Shapes the packaged MiniLM stands in for it, its last hidden states as T5's).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from t2i.text.sdxl_encoders import text_model

SD3_TEXT_FOLDERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2", "tokenizer_3")


def _t5_encoder(folder: Path):
    """The T5 role's encoder: ``T5EncoderModel`` for a T5 folder (the encoder of a full T5 is taken), else the
    folder's ``AutoModel`` (a BERT-style sentence encoder such as MiniLM)."""
    from transformers import AutoConfig, AutoModel, T5EncoderModel

    if AutoConfig.from_pretrained(folder, local_files_only=True).model_type in ("t5", "umt5"):
        return text_model(T5EncoderModel, folder)
    return text_model(AutoModel, folder)


class SD3TextEncoders(torch.nn.Module):
    """``forward(captions) -> (clip [B, Lc, DL + DG], t5 [B, Lt, Dt], pooled [B, PL + PG])`` (module docstring);
    :meth:`joint` puts the first two together as SD3's token sequence."""

    def __init__(self, clip_l, clip_g, t5, tokenizers, clip_max_length: int, t5_max_length: int):
        super().__init__()
        self.clip_l, self.clip_g, self.t5 = clip_l, clip_g, t5
        self.tokenizers = tuple(tokenizers)
        self.clip_max_length, self.t5_max_length = clip_max_length, t5_max_length
        self.clip_dim = clip_l.config.hidden_size + clip_g.config.hidden_size
        self.t5_dim = t5.config.d_model if hasattr(t5.config, "d_model") else t5.config.hidden_size
        self.pooled_dim = clip_l.config.projection_dim + clip_g.config.projection_dim
        if self.clip_dim > self.t5_dim:
            raise ValueError(f"the CLIP context ({clip_l.config.hidden_size} + {clip_g.config.hidden_size} wide) is "
                             f"wider than the T5 states ({self.t5_dim}) it is padded to: SD3 would crop it")

    @classmethod
    def load(cls, folders: tuple[Path, Path, Path], clip_max_length: int | None, t5_max_length: int | None,
             tokenizer_folders: tuple[Path, Path, Path] | None = None) -> "SD3TextEncoders":
        """CLIP-L, CLIP-G (``CLIPTextModelWithProjection``; a ``CLIPModel`` folder works) and the T5 role, each
        with its tokenizer in the same folder unless ``tokenizer_folders`` says where. ``None`` lengths: the
        tokenizers' ``model_max_length`` (the shorter CLIP's for both CLIPs; T5 at most 512); a CLIP length may
        not exceed its ``max_position_embeddings``."""
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        clip_l, clip_g = (text_model(CLIPTextModelWithProjection, Path(f)) for f in folders[:2])
        tokenizers = [AutoTokenizer.from_pretrained(Path(f), local_files_only=True)
                      for f in (tokenizer_folders or folders)]
        t5 = _t5_encoder(Path(folders[2]))
        if clip_max_length is None:
            clip_max_length = min(t.model_max_length for t in tokenizers[:2])
        if t5_max_length is None:
            t5_max_length = min(tokenizers[2].model_max_length, 512)
        for name, te in (("CLIP-L", clip_l), ("CLIP-G", clip_g)):
            if clip_max_length > te.config.max_position_embeddings:
                raise ValueError(f"a CLIP length of {clip_max_length} tokens exceeds {name}'s max_position_embeddings "
                                 f"{te.config.max_position_embeddings}")
        limit = getattr(t5.config, "max_position_embeddings", None)  # T5's relative positions have none
        if limit is not None and t5_max_length > limit:
            raise ValueError(f"a T5 length of {t5_max_length} tokens exceeds the T5 role's max_position_embeddings {limit}")
        for name, tok in zip(("CLIP-L", "CLIP-G", "T5"), tokenizers):
            if tok.pad_token is None:
                raise ValueError(f"the {name} tokenizer has no pad token (SD3 pads every prompt)")
        modules = [m.eval().requires_grad_(False) for m in (clip_l, clip_g, t5)]
        return cls(*modules, tokenizers, clip_max_length, t5_max_length)

    @classmethod
    def from_pipeline(cls, folder: Path, clip_max_length: int | None, t5_max_length: int | None) -> "SD3TextEncoders":
        """From a diffusers SD3 pipeline folder (``text_encoder{,_2,_3}`` and ``tokenizer{,_2,_3}``)."""
        folder = Path(folder)
        missing = [n for n in (*SD3_TEXT_FOLDERS, *TOKENIZER_FOLDERS) if not (folder / n).is_dir()]
        if missing:
            raise ValueError(f"{folder} is not an SD3 pipeline folder: no {', '.join(missing)}")
        return cls.load(tuple(folder / n for n in SD3_TEXT_FOLDERS), clip_max_length, t5_max_length,
                        tuple(folder / n for n in TOKENIZER_FOLDERS))

    def _ids(self, which: int, captions: list[str], length: int) -> torch.Tensor:
        ids = self.tokenizers[which](list(captions), padding="max_length", max_length=length, truncation=True,
                                     return_tensors="pt")["input_ids"]
        return ids.to(next(self.parameters()).device)

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        contexts, pooled = [], []
        for i, te in enumerate((self.clip_l, self.clip_g)):
            out = te(input_ids=self._ids(i, captions, self.clip_max_length), output_hidden_states=True)
            contexts.append(out.hidden_states[-2])
            pooled.append(out.text_embeds)
        t5 = self.t5(input_ids=self._ids(2, captions, self.t5_max_length))[0]
        return torch.cat(contexts, dim=-1), t5, torch.cat(pooled, dim=-1)

    def t5_mask(self, captions: list[str]) -> torch.Tensor:
        """``[B, Lt]`` True at the T5 role's real tokens, False at its padding (for a key-padding mask)."""
        return self.tokenizers[2](list(captions), padding="max_length", max_length=self.t5_max_length,
                                  truncation=True, return_tensors="pt")["attention_mask"].bool().to(
                                      next(self.parameters()).device)

    @staticmethod
    def joint(clip: torch.Tensor, t5: torch.Tensor) -> torch.Tensor:
        """SD3's token sequence ``[CLIP zero-padded to the T5 width ; T5]``."""
        return torch.cat([F.pad(clip, (0, t5.shape[-1] - clip.shape[-1])).to(t5.dtype), t5], dim=1)

    def save_pipeline_parts(self, out_dir: Path) -> None:
        """The three encoders and tokenizers in a diffusers SD3 pipeline folder's layout."""
        for te, tok, name, tok_name in zip((self.clip_l, self.clip_g, self.t5), self.tokenizers, SD3_TEXT_FOLDERS,
                                           TOKENIZER_FOLDERS):
            te.save_pretrained(Path(out_dir) / name)
            tok.save_pretrained(Path(out_dir) / tok_name)

