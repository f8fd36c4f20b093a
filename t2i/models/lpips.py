"""LPIPS perceptual distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features
as a Perceptual Metric"), VGG16 trunk, version 0.1: what the ``lpips`` package computes with
``lpips.LPIPS(net='vgg')``, written here so that a training loss needs neither that package nor
its download of the trunk at construction.

For images ``x``, ``y`` in [-1, 1] (B, 3, H, W):

1. each is shifted and scaled per channel, ``(x - SHIFT) / SCALE`` (the package's ScalingLayer);
2. torchvision's VGG16 ``features`` run up to relu5_3; the activations after relu1_2, relu2_2,
   relu3_3, relu4_3 and relu5_3 (``features`` indices 3, 8, 15, 22, 29) are kept;
3. each kept map is unit-normalised over channels at every pixel, ``f / (||f||_2 + 1e-10)``;
4. the squared difference of the two normalised maps is weighted per channel by the layer's
   learned non-negative weights (the package's ``lin0`` ... ``lin4``: 1x1 convolutions without bias,
   64/128/256/512/512 channels in, one out) and summed over channels;
5. averaged over the pixels of the layer, and summed over the five layers.

The result is one distance per image pair: ``forward`` returns shape ``[B]`` (the package returns
``[B, 1, 1, 1]``; ``ours == theirs.flatten()``).

Weights: the trunk is torchvision's ImageNet VGG16 (``vgg16-397923af.pth``, a whole VGG16 state dict
of which the ``features.*`` tensors are used), and the lin weights are the package's
``weights/v0.1/vgg.pth`` (keys ``lin{i}.model.1.weight``, shapes ``[1, C, 1, 1]``; index 0 of each
``model`` is a Dropout that holds no tensors). Both are read with ``torch.load(weights_only=True)``;
see ``LPIPS.from_files`` (the workflow fetches both as checksummed assets). ``LPIPS()`` alone has random weights (for tests).

Precision: the trunk runs in whatever the caller's autocast says (bf16 on CUDA is fine); the
normalisation, difference, weighting and averaging run in float32, so a loss under autocast is a
float32 tensor that does not lose the small per-pixel terms to bf16 rounding. The module is frozen
(no parameter requires grad) and in eval mode (it has no layer whose behaviour depends on the mode),
but gradients flow to ``x`` and ``y``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# ScalingLayer constants of lpips v0.1 (lpips/lpips.py): the [-1, 1] image moved to roughly
# ImageNet-normalised values.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# Output channels of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
CHANNELS = (64, 128, 256, 512, 512)
# Exclusive ends, in torchvision's vgg16().features, of the five slices of lpips' pretrained_networks.vgg16
# (range(0, 4), range(4, 9), range(9, 16), range(16, 23), range(23, 30)); features[30] (the last max-pool)
# is not used.
SLICE_ENDS = (4, 9, 16, 23, 30)
EPS = 1e-10
LIN_KEY = "lin{}.model.1.weight"



def _unit_normalise(f: torch.Tensor) -> torch.Tensor:
    """``f / (||f||_2 over channels + EPS)`` at every pixel. Where a pixel's features are all zero
    (ReLU outputs), ``vector_norm``'s backward stays finite where ``sqrt(sum(f**2))``'s gives NaN
    (inf * 0); the ReLU's backward zeroes that pixel's gradient either way, as in the original."""
    return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + EPS)


class LPIPS(nn.Module):
    """LPIPS-VGG v0.1 distance: ``LPIPS()(x, y)`` -> ``[B]`` for ``x``, ``y`` in [-1, 1] of shape
    (B, 3, H, W). ``LPIPS()`` has random weights; use ``from_files`` for the real ones."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import vgg16

        # torchvision's VGG16 built on the meta device (its 124M-number classifier is never allocated),
        # its `features` up to relu5_3 materialised and initialised as torchvision initialises them. A
        # sliced Sequential keeps torchvision's indices, so our keys are its "features.N.weight/bias".
        with torch.device("meta"):
            features = vgg16(weights=None).features[:SLICE_ENDS[-1]]
        self.features = features.to_empty(device="cpu")
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        # Non-negative like the learned weights (so distances are >= 0 here too), [1, C, 1, 1] like the file.
        self.lins = nn.ParameterList(nn.Parameter(torch.rand(1, c, 1, 1)) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS takes two (B, 3, H, W) images of one shape, "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        n = x.shape[0]
        head = self.shift.dtype  # float32 (float64 after .double()): the dtype of everything but the trunk
        # One trunk pass over both images.
        h = (torch.cat([x, y]).to(head) - self.shift) / self.scale
        total = x.new_zeros(n, dtype=head)
        layers = list(self.features)
        start = 0
        for end, lin in zip(SLICE_ENDS, self.lins):
            for layer in layers[start:end]:
                h = layer(h)
            start = end
            f = h.to(head)
            d = (_unit_normalise(f[:n]) - _unit_normalise(f[n:])).square()
            # The bias-free 1x1 conv as a weighted channel sum (elementwise, so autocast leaves it in
            # `head`), then the mean over the layer's pixels.
            total = total + (d * lin.to(head)).sum(dim=1).mean(dim=(1, 2))
        return total

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_files(cls, vgg_path: str | Path, lin_path: str | Path) -> "LPIPS":
        """LPIPS with torchvision's VGG16 state dict (``vgg16-397923af.pth``; its ``features.*`` tensors
        are used, ``classifier.*`` ignored) and the lpips package's v0.1 lin weights (``vgg.pth``).

        Strict: a missing, unexpected or wrongly shaped tensor raises ValueError naming the file and keys.
        """
        model = cls()
        vgg_sd = _load_state_dict(vgg_path)
        feats = {}
        unexpected = []
        for key, value in vgg_sd.items():
            if key.startswith("features."):
                feats[key[len("features."):]] = value
            elif not key.startswith("classifier."):
                unexpected.append(key)
        _copy_strict(vgg_path, {f"features.{k}": p for k, p in model.features.state_dict().items()},
                     {f"features.{k}": v for k, v in feats.items()}, unexpected)

        lin_sd = _load_state_dict(lin_path)
        _copy_strict(lin_path, {LIN_KEY.format(i): p for i, p in enumerate(model.lins)}, lin_sd, [])
        return model


def _load_state_dict(path: str | Path) -> dict:
    path = Path(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # missing or unreadable: as it is
        raise
    except Exception as e:  # unpickling refused or a corrupt file: say which file
        raise ValueError(f"{path}: not a tensors-only torch file ({type(e).__name__}: {e})") from e
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: holds a {type(sd).__name__}, not a state dict")
    return sd


def _copy_strict(path, targets: dict[str, torch.Tensor], source: dict, unexpected: list[str]) -> None:
    """Copy ``source[k]`` into each ``targets[k]``; every problem at once in one ValueError naming ``path``."""
    missing = sorted(k for k in targets if k not in source)
    unexpected = sorted(unexpected + [k for k in source if k not in targets])
    wrong = sorted(f"{k} {tuple(source[k].shape)} (wants {tuple(t.shape)})" if torch.is_tensor(source[k])
                   else f"{k} ({type(source[k]).__name__}, not a tensor)"
                   for k, t in targets.items() if k in source
                   and not (torch.is_tensor(source[k]) and source[k].shape == t.shape))
    problems = [f"{label}: {', '.join(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
    if problems:
        raise ValueError(f"{path}: not the expected LPIPS weights; " + "; ".join(problems))
    with torch.no_grad():
        for k, t in targets.items():
            t.copy_(source[k])
