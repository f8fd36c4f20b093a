"""Feature extractors for FID/KID/IS/precision-recall, chosen by name (``evaluate.extractor``).

- ``inception-v3-compat``: torch-fidelity's TF-compatible InceptionV3, loaded from a local
  weights file (placed by ``rule pretrained`` from ``INCEPTION_URL``). Nothing is ever
  downloaded here: a missing file raises ``ExtractorWeightsMissing``.
- ``shapes-cnn``: the Shapes classifier (``t2i.eval.shapes_classifier``), registered with
  torch-fidelity on import, so ``torch_fidelity.calculate_metrics(feature_extractor="shapes-cnn",
  feature_extractor_weights_path=...)`` works as well.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.helpers import vassert
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from t2i.checkpoints.hashing import sha256_file
from t2i.eval.shapes_classifier import WEIGHTS_NAME, load_shapes_classifier

# torch-fidelity's InceptionV3 weights, converted from TF's inception-2015-12-05 graph: the URL of
# torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3 (0.4.0). Until 2021 torch-fidelity
# used pytorch-fid's pt_inception-2015-12-05-6726825d.pth; the file name keeps the SHA-256 prefix
# (torch.hub's convention). SHA-256 and size (95,628,359 bytes) as pinned by other public projects.
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"

EXTRACTORS = ("shapes-cnn", "inception-v3-compat")
METRICS = ("fid", "kid", "isc", "prc")


class ExtractorWeightsMissing(FileNotFoundError):
    """The weights file of a feature extractor is not on disk."""


class FeatureExtractorShapesCNN(FeatureExtractorBase):
    """torch-fidelity wrapper of ShapesCNN: features ``feat``, ``logits_unbiased``, ``logits``."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.net = load_shapes_classifier(resolve_weights("shapes-cnn", feature_extractor_weights_path))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting image as torch.Tensor with dtype=torch.uint8")
        vassert(x.dim() == 4 and x.shape[1] == 3, f"Input is not Bx3xHxW: {x.shape}")
        out = self.net(x)
        return tuple(out[name].float() for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "feat", "logits_unbiased", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

    @staticmethod
    def can_be_compiled():
        return True

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)


if "shapes-cnn" not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor("shapes-cnn", FeatureExtractorShapesCNN)


def resolve_weights(name: str, path: str | Path | None) -> Path:
    """The weights file of extractor ``name`` given that file or the directory holding it.

    Raises ``ExtractorWeightsMissing`` with the file to place and where to get it.
    """
    filename = INCEPTION_FILENAME if name == "inception-v3-compat" else WEIGHTS_NAME
    if path is None:
        raise ExtractorWeightsMissing(f"{name}: no weights path given (never downloaded at metric time)")
    path = Path(path)
    if path.is_dir():
        path = path / filename
    if path.is_file():
        return path
    if name == "inception-v3-compat":
        raise ExtractorWeightsMissing(
            f"Inception weights not found: place {filename} at {path} (download {INCEPTION_URL}, "
            f"sha256 {INCEPTION_SHA256}; `snakemake results/pretrained/inception` fetches it where the "
            "internet is reachable)")
    raise ExtractorWeightsMissing(
        f"{name} weights not found: {path} (a `source: trained, recipe: shapes-cnn` asset, trained by "
        f"`rule pretrained` into results/pretrained/<asset>/)")


def feature_layers(name: str) -> dict[str, str]:
    """The feature layer each metric reads for extractor ``name`` (torch-fidelity's defaults)."""
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    return {m: cls.get_default_feature_layer_for_metric(m) for m in METRICS}


def create_extractor(name: str, weights_path: str | Path | None, *, device: str | torch.device = "cpu",
                     features: tuple[str, ...] | None = None) -> FeatureExtractorBase:
    """Build extractor ``name`` from local weights, in eval mode on ``device``.

    ``features`` defaults to every layer that FID/KID/IS/PRC read. The result carries
    ``weights_sha256`` so cached reference statistics can be matched to their weights.
    """
    if name not in EXTRACTORS:
        raise ValueError(f"evaluate.extractor: unknown feature extractor {name!r} (one of {', '.join(EXTRACTORS)})")
    path = resolve_weights(name, weights_path)
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    if features is None:
        wanted = set(feature_layers(name).values())
        features = tuple(f for f in cls.get_provided_features_list() if f in wanted)
    extractor = cls(name, list(features), feature_extractor_weights_path=str(path))
    extractor.weights_sha256 = sha256_file(path)
    return extractor.requires_grad_(False).eval().to(device)
