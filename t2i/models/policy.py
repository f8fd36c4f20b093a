"""LayoutLLM's example-selection policy network (``models/policy.py`` of the original): one Linear over CLIP text
features; selection and training are in :mod:`t2i.layout.policy`."""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class PolicyNetwork(ModelMixin, ConfigMixin):
    """``linear``: CLIP text features -> the scoring space."""

    @register_to_config
    def __init__(self, in_dim: int = 768, embedding_size: int = 128):
        super().__init__()
        self.linear = torch.nn.Linear(in_dim, embedding_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def scores(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``[Q, C]`` dot products of the mapped query and candidate features."""
        return self(query) @ self(candidates).T
