"""LayoutLLM-T2I's drawing network: diffusers' GLIGEN U-Net (gated self-attention over grounding tokens) with
the paper's relation-aware module in every transformer block.

:class:`RelationCrossAttention` is the original's ``rela_fuse`` (``GLIGEN/ldm/modules/attention.py``, class
``RelationCrossAttention``), with the same parameter names so its weights load unchanged: ``norm3`` of the
visual tokens is mean-pooled inside each valid box (pixel cells ``int(x0*W) <= x < int(min(x1*W, W))``; the
boxes are read in order and the first padded or degenerate one ends the list), the box features cross-attend
to the relation-triplet embeddings and pass a feed-forward, both tanh-gated (alphas start at 0), and are added
back inside their boxes; the result is averaged over the box slots, ``h + sum_i mask_i * obj_i / slots``. The
block then takes ``(rela_fuse(x) + x) / 2``: the module is not an identity at alpha 0 (the layer-norm path),
and it is not switched off by scheduled sampling (``enable_fuser(False)`` only stops the gated fuser).

:class:`RelationTransformerBlock` is diffusers' ``BasicTransformerBlock`` with ``attention_type="gated"`` and
this module after the fuser: attn1 -> fuser -> rela_fuse -> attn2 -> ff, the original's order.
:class:`RelationUNet2DConditionModel` is ``UNet2DConditionModel`` whose blocks are these; its config adds
``relation_dim`` (the width of the relation embeddings: the text encoder's, 768 for CLIP-L). The relation
inputs travel in ``cross_attention_kwargs["relation"]`` (see :func:`relation_kwargs`) beside diffusers'
``"gligen"`` entry (which the U-Net replaces with the grounding tokens).
"""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import Attention, BasicTransformerBlock, FeedForward


class RelationCrossAttention(torch.nn.Module):
    """Box-pooled visual features attend to relation embeddings, then scatter back (module docstring)."""

    def __init__(self, dim: int, relation_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.attn = Attention(query_dim=dim, cross_attention_dim=relation_dim, heads=heads, dim_head=head_dim,
                              bias=False)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm1, self.norm2, self.norm3 = (torch.nn.LayerNorm(dim) for _ in range(3))
        self.alpha_attn = torch.nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = torch.nn.Parameter(torch.tensor(0.0))
        for m in self.modules():  # the original's init_parameters
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.xavier_normal_(m.weight)

    def forward(self, x: torch.Tensor, relation: dict | None) -> torch.Tensor:
        hidden = self.norm3(x)
        if relation is None:  # no boxes: nothing is pooled, the layer-norm path remains
            return hidden
        b, n, c = x.shape
        h, w = level_size(relation["size"], n)
        cells, means = relation["pooling"].get((h, w)) or box_pooling(relation["boxes"], relation["masks"], h, w)
        objects = means.to(hidden.dtype) @ hidden  # the mean inside each box; zero for invalid slots
        cells = cells.to(hidden.dtype)
        objects = objects + self.alpha_attn.tanh() * self.attn(self.norm1(objects),
                                                               encoder_hidden_states=relation["embeddings"].to(x.dtype))
        objects = objects + self.alpha_dense.tanh() * self.ff(self.norm2(objects))
        return hidden + (cells.transpose(1, 2) @ objects) / cells.shape[1]


def level_size(size: tuple[int, int], tokens: int) -> tuple[int, int]:
    """(h, w) of a U-Net level with ``tokens`` cells, for an input of ``size`` = (H, W)."""
    height, width = size
    factor = round((height * width / tokens) ** 0.5)
    return height // factor, width // factor


def box_cells(boxes: torch.Tensor, masks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[B, slots, h*w]`` 0/1: the cells of each valid box on an h x w grid (the original's integer
    truncation; a box is valid while every box before it is a real, non-degenerate one)."""
    scale = boxes.new_tensor([w, h, w, h])
    limit = boxes.new_tensor([w, h, w, h])
    x0, y0, x1, y1 = torch.minimum(boxes * scale, limit).to(torch.int64).unbind(-1)
    slots = torch.arange(boxes.shape[1], device=boxes.device)
    valid = (slots < masks.sum(-1, keepdim=True)) & (x0 != x1) & (y0 != y1)
    valid = valid.to(torch.int64).cumprod(-1).bool()
    ys = torch.arange(h, device=boxes.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=boxes.device).view(1, 1, 1, w)
    inside = ((ys >= y0[..., None, None]) & (ys < y1[..., None, None])
              & (xs >= x0[..., None, None]) & (xs < x1[..., None, None]))
    return (inside & valid[..., None, None]).flatten(2)


def box_pooling(boxes: torch.Tensor, masks: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cells, means)``, both ``[B, slots, h*w]``: :func:`box_cells` and the cells over their box's area, in
    float32 or wider (the box areas stay exact when the network runs in bf16)."""
    cells = box_cells(boxes, masks, h, w).to(torch.promote_types(boxes.dtype, torch.float32))
    return cells, cells / cells.sum(-1, keepdim=True).clamp(min=1)


class RelationTransformerBlock(BasicTransformerBlock):
    """diffusers' gated (GLIGEN) transformer block plus ``rela_fuse`` after the fuser (layer-norm blocks only)."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, *, relation_dim: int, **kwargs):
        super().__init__(dim, num_attention_heads, attention_head_dim, attention_type="gated", **kwargs)
        if self.norm_type != "layer_norm" or self.only_cross_attention or self.pos_embed is not None:
            raise ValueError("the relation module is defined for SD's layer-norm transformer blocks")
        self.rela_fuse = RelationCrossAttention(dim, relation_dim, num_attention_heads, attention_head_dim)

    @classmethod
    def like(cls, block: BasicTransformerBlock, relation_dim: int) -> "RelationTransformerBlock":
        """A relation block with the shape of diffusers' ``block`` (fresh weights)."""
        return cls(block.dim, block.num_attention_heads, block.attention_head_dim, relation_dim=relation_dim,
                   dropout=block.dropout, cross_attention_dim=block.cross_attention_dim,
                   activation_fn=block.activation_fn, attention_bias=block.attention_bias,
                   double_self_attention=block.double_self_attention, upcast_attention=block.attn1.upcast_attention,
                   norm_elementwise_affine=block.norm_elementwise_affine, norm_eps=block.norm1.eps)

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                timestep=None, cross_attention_kwargs=None, class_labels=None, added_cond_kwargs=None):
        kwargs = dict(cross_attention_kwargs or {})
        gligen, relation = kwargs.pop("gligen", None), kwargs.pop("relation", None)
        x = self.attn1(self.norm1(hidden_states), attention_mask=attention_mask, **kwargs) + hidden_states
        if gligen is not None:
            x = self.fuser(x, gligen["objs"])
        x = (self.rela_fuse(x, relation) + x) / 2
        x = self.attn2(self.norm2(x), encoder_hidden_states=encoder_hidden_states,
                       attention_mask=encoder_attention_mask, **kwargs) + x
        return self.ff(self.norm3(x)) + x


class RelationUNet2DConditionModel(UNet2DConditionModel):
    """``UNet2DConditionModel`` (``attention_type="gated"``) whose transformer blocks carry the relation module."""

    @register_to_config
    def __init__(self, relation_dim: int = 768, **kwargs):
        kwargs["attention_type"] = "gated"
        super().__init__(**kwargs)
        for module in list(self.modules()):
            blocks = getattr(module, "transformer_blocks", None)
            if blocks is not None:
                for i, block in enumerate(blocks):
                    blocks[i] = RelationTransformerBlock.like(block, relation_dim)

    @staticmethod
    def _get_init_keys(input_class):
        """The config keys ``from_config`` passes on: ours and every ``UNet2DConditionModel`` key."""
        return ConfigMixin._get_init_keys(input_class) | ConfigMixin._get_init_keys(UNet2DConditionModel)


def relation_kwargs(embeddings: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor,
                    size: tuple[int, int], levels: int = 0) -> dict:
    """``cross_attention_kwargs["relation"]``: relation embeddings ``[B, R, D]`` (zero rows pad), boxes
    ``[B, slots, 4]`` normalised xyxy, their masks ``[B, slots]`` and the U-Net input's (H, W); ``levels``: the
    box pooling of that many U-Net levels (H x W, then halved) computed here once, as a sampler does for all its
    steps (the boxes fix it), instead of in every block of every call."""
    pooling, (h, w) = {}, size
    for _ in range(levels):
        pooling[(h, w)] = box_pooling(boxes, masks, h, w)
        h, w = h // 2, w // 2
    return {"embeddings": embeddings, "boxes": boxes, "masks": masks, "size": tuple(size), "pooling": pooling}
