"""LAFITE's objective (drboog/Lafite ``training/loss.py``), as pure functions.

- :func:`perturb`: the text condition the generator sees. Ground-truth captions become
  ``normalize((1 - a1) t + a1 u)`` (``a1 = 0.1``); language-free training uses the CLIP *image*
  feature as a pseudo text feature ``normalize((1 - a2) h + a2 u)`` (``a2 = 0.75``, about the
  cosine of matched CLIP image-text pairs), with the same unit noise ``u`` for both; ``mixing_prob``
  picks pseudo over ground truth per sample (1.0: purely language-free).
- :func:`calibrated_image_noise`: that noise level for another CLIP, from its matched cosine.
- :func:`contrastive`: the original's ``contra_loss`` with its "incorrect" ``exp(cos / temp)``
  sharpening kept (the published hyper-parameters were tuned with it): per pair ``log(temp *
  softmax(...)_ii)``, over the first batch for each item of the second (``lam = 0``), the other
  direction (``lam = 1``) or a mix.
- :func:`r1_penalty`, :func:`path_length`: StyleGAN2's lazy regularisers.
- :func:`ema_beta`: G_ema's decay with the kimg ramp.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def perturb(image_features: torch.Tensor, text_features: torch.Tensor | None, *, mixing_prob: float,
            image_noise: float = 0.75, text_noise: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """The generator's condition from unit image features ``h`` and unit text features ``t`` (``[B, f]``).

    ``text_features`` may be None only for purely language-free training (``mixing_prob >= 0.99``).
    """
    u = unit(torch.randn(image_features.shape, generator=generator, device=image_features.device))
    pseudo = unit((1 - image_noise) * image_features + image_noise * u)
    if mixing_prob > 0.99:
        return pseudo
    if text_features is None:
        raise ValueError("mixing_prob < 1 uses ground-truth captions, but the batch has no text features")
    text = unit((1 - text_noise) * text_features + text_noise * u)
    if mixing_prob < 0.01:
        return text
    pick = torch.rand(text.shape[0], 1, generator=generator, device=text.device) < mixing_prob
    return torch.where(pick, pseudo, text)


def calibrated_image_noise(matched_cosine: float) -> float:
    """The ``image_noise`` whose pseudo text features keep, on average, ``matched_cosine`` to their
    image feature: ``a`` with ``(1 - a) / sqrt((1 - a)^2 + a^2) = c`` (``u`` is nearly orthogonal to
    ``h`` in CLIP's dimensions). The original's 0.75 gives ~0.32, about CLIP ViT-B/32's matched
    image-caption cosine; a CLIP whose captions sit closer to their images needs less noise."""
    c = min(max(matched_cosine, 1e-6), 1 - 1e-6)
    return 1 / (1 + c / math.sqrt(1 - c * c))


def contrastive(a: torch.Tensor, b: torch.Tensor, *, temp: float, lam: float) -> torch.Tensor:
    """Per-item ``[B]`` contrastive score of matching ``a[i]`` with ``b[i]`` (higher is better; the losses
    subtract ``weight * mean``). ``temp <= 0`` gives the plain cosine of each pair."""
    sim = F.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1)
    if temp <= 0:
        return sim.diagonal()
    sim = torch.exp(sim / temp)
    rows = torch.log(F.softmax(sim, dim=1).diagonal() * temp)  # for each a, over the b's
    cols = torch.log(F.softmax(sim, dim=0).diagonal() * temp)  # for each b, over the a's
    if lam == 0:
        return cols
    if lam == 1:
        return rows
    return lam * rows + (1 - lam) * cols


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """``|grad_x D(x)|^2`` per image (``real_images`` must require grad); differentiable (``create_graph``)."""
    (grads,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grads.square().sum(dim=[1, 2, 3])


def path_length(images: torch.Tensor, ws: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image path length ``|J_w^T y|`` for a random image-space direction ``y`` (StyleGAN2)."""
    noise = torch.randn(images.shape, generator=generator, device=images.device) / math.sqrt(images.shape[2] * images.shape[3])
    (grads,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    return grads.square().sum(2).mean(1).sqrt()


def ema_beta(batch_size: int, images_seen: int, *, ema_kimg: float, rampup: float | None) -> float:
    """G_ema's decay for one step: ``0.5 ** (batch / ema_nimg)``, ``ema_nimg = min(ema_kimg * 1000, images_seen * rampup)``."""
    ema_nimg = ema_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, images_seen * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


def lazy_regularization(lr: float, betas: tuple[float, float], interval: int) -> tuple[float, tuple[float, float]]:
    """lr and betas of an optimizer whose regulariser runs every ``interval`` steps (StyleGAN2's ``k / (k + 1)``)."""
    if not interval:
        return lr, betas
    ratio = interval / (interval + 1)
    return lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)
