"""MLP consistency network for vector (GMM) teachers with the EDM-style boundary condition.

f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma), class)
c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),  c_out = (sigma - sigma_min) sd / sqrt(sd^2 + sigma^2)
(Song et al. 2023, consistency models, appendix C), so f(x, sigma_min) = x exactly;
c_in = 1/sqrt(sigma^2 + sd^2), c_noise = log(sigma)/4 (Karras et al. 2022, Table 1).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def edm_cm_scalings(sigma: torch.Tensor, sigma_data: float, sigma_min: float):
    """(c_skip, c_out, c_in, c_noise) of the EDM-style consistency parameterisation."""
    c_skip = sigma_data ** 2 / ((sigma - sigma_min) ** 2 + sigma_data ** 2)
    c_out = (sigma - sigma_min) * sigma_data / torch.sqrt(sigma_data ** 2 + sigma ** 2)
    c_in = 1.0 / torch.sqrt(sigma ** 2 + sigma_data ** 2)
    c_noise = torch.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


class FourierEmbedding(nn.Module):
    """Fixed random Fourier features of the scalar noise input (seeded, stored as a buffer)."""

    def __init__(self, dim: int, scale: float = 4.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = 2 * math.pi * t[:, None] * self.freqs[None].to(t)
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class MLPConsistency(nn.Module):
    def __init__(self, dim: int, sigma_data: float, sigma_min: float, hidden: int = 256, depth: int = 3,
                 emb_dim: int = 64, num_classes: int | None = None) -> None:
        super().__init__()
        self.dim, self.sigma_data, self.sigma_min = dim, float(sigma_data), float(sigma_min)
        self.num_classes = num_classes
        self.time_emb = FourierEmbedding(emb_dim)
        # one extra embedding row is the null class used for unconditional inputs
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        layers: list[nn.Module] = [nn.Linear(dim + emb_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    state_dtype = None  # the ODE state is the weights' dtype

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def checkpoint_keys(self) -> list[str] | None:
        return None  # every tensor

    def config(self) -> dict:
        return {"kind": "mlp", "dim": self.dim, "hidden": self.net[0].out_features,
                "depth": sum(isinstance(m, nn.Linear) for m in self.net) - 1,
                "emb_dim": self.time_emb.freqs.shape[0] * 2, "num_classes": self.num_classes}

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        # below sigma_min f is the identity (a flow grid ends at t = 0, where log sigma would be -inf)
        sigma = sigma.clamp_min(self.sigma_min)
        c_skip, c_out, c_in, c_noise = edm_cm_scalings(sigma, self.sigma_data, self.sigma_min)
        emb = self.time_emb(c_noise)
        if self.class_emb is not None:
            labels = torch.full_like(sigma, self.num_classes, dtype=torch.long) if cond is None else cond
            emb = emb + self.class_emb(labels)
        h = self.net(torch.cat([c_in[:, None] * x, emb.to(x.dtype)], dim=1))
        return c_skip[:, None] * x + c_out[:, None] * h
