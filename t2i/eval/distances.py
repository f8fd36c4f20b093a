"""FID and KID from feature tensors, on whatever device the features are on.

The same estimators as torch-fidelity's ``metric_fid``/``metric_kid`` (its kernel settings,
subset draws and seed are read from ``torch_fidelity.defaults``), computed with torch
instead of NumPy on the CPU: torch-fidelity's FID takes the eigenvalues of the non-symmetric
product ``sigma_1 @ sigma_2`` (``np.linalg.eigvals``; about 20 s for 2048-d features on two
cores), here ``tr sqrt(sigma_1 sigma_2)`` is the trace of the square root of the symmetric
``S2 sigma_1 S2`` with ``S2 = sigma_2^(1/2)``, which the reference side caches, so one
symmetric eigenvalue problem remains. Both are computed in float64. torch-fidelity's FID is
float64 too, but its KID computes the polynomial kernels in the features' float32, and the
cancellation in ``k_xx + k_yy - 2 k_xy`` amplifies their rounding (which differs between CPUs'
BLAS kernels) to ~1e-3 of KID. So results equal torch-fidelity's on float64 features to
float64 rounding, and its float32 KID within that KID's rounding error (tests/test_fidelity.py).
"""
from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.defaults import DEFAULTS


def gaussian_statistics(features: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean and covariance (``np.cov``'s unbiased estimate) in float64."""
    x = features.double()
    mu = x.mean(dim=0)
    centered = x - mu
    return {"mu": mu, "sigma": centered.T @ centered / (len(x) - 1)}


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative rounding noise -> 0)."""
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor,
                     sigma2_sqrt: torch.Tensor | None = None) -> float:
    """``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2)`` (float64, on ``sigma1``'s device).

    ``sigma2_sqrt``: ``psd_sqrt(sigma2)`` if the caller has it cached.
    """
    mu1, sigma1, mu2, sigma2 = (t.to(sigma1.device, torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    root = psd_sqrt(sigma2) if sigma2_sqrt is None else sigma2_sqrt.to(sigma1.device, torch.float64)
    inner = root @ sigma1 @ root
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * tr_covmean)


def _polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    gamma = DEFAULTS["kid_kernel_poly_gamma"] or 1.0 / x.shape[1]
    return (x @ y.T * gamma + DEFAULTS["kid_kernel_poly_coef0"]) ** DEFAULTS["kid_kernel_poly_degree"]


def kernel_distance(features1: torch.Tensor, features2: torch.Tensor, *, subsets: int, subset_size: int,
                    seed: int) -> dict[str, float]:
    """KID: the unbiased MMD^2 of the polynomial kernel over random subsets, ``{"mean", "std"}``.

    Subsets are drawn exactly as torch-fidelity draws them (``RandomState(seed).choice`` without
    replacement, features1 then features2 for each subset); the subsets are cast to float64 for
    the kernels (see the module docstring).
    """
    n1, n2 = len(features1), len(features2)
    if subset_size > min(n1, n2):
        raise ValueError(f"KID subset size {subset_size} exceeds the number of images ({n1} and {n2})")
    features2 = features2.to(features1.device)
    rng = np.random.RandomState(seed)
    m = subset_size
    mmds = []
    for _ in range(subsets):
        i1 = torch.from_numpy(rng.choice(n1, m, replace=False)).to(features1.device)
        i2 = torch.from_numpy(rng.choice(n2, m, replace=False)).to(features1.device)
        x, y = features1[i1].double(), features2[i2].double()
        k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        mmds.append(within - 2 * k_xy.sum() / (m * m))
    values = torch.stack(mmds).cpu().numpy()
    return {"mean": float(values.mean()), "std": float(values.std())}
