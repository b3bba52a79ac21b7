"""Noise-level grids for few-step samplers."""
from __future__ import annotations

import torch


def karras_sigmas(k: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """K noise levels from sigma_max to sigma_min (Karras et al. 2022, eq. 5), float64.

    sigma_i = (sigma_max^(1/rho) + i/(K-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho;
    K = 1 gives [sigma_max]. Samplers append a final step to sigma = 0.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    if k == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    ramp = torch.linspace(0, 1, k, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    sig[0], sig[-1] = sigma_max, sigma_min  # exact ends, no pow round-off
    return sig
