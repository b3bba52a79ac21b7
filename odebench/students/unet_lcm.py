"""LCM-parameterised consistency student on a class-conditional UNet (discrete VP teachers).

f(x, sigma) = c_skip(t) x + c_out(t) x0_hat, with x0_hat = x - sigma eps(x / sqrt(1 + sigma^2), t - 1)
in VE coordinates and the LCM boundary scalings (PAPER.md):
    c_skip = sd^2 / ((s t)^2 + sd^2),  c_out = s t / sqrt((s t)^2 + sd^2),  sd = 0.5, s = 10,
where t is the paper's 1-indexed integer timestep (t >= 1 sits at sigma_{t-1}; t = 0 is sigma = 0,
where f(x, 0) = x). Off the grid t is the fractional timestep of sigma, plus one.
"""
from __future__ import annotations

import torch
from torch import nn

from odebench.teachers.discrete import sigma_to_timestep


def lcm_scalings(t: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0):
    """(c_skip, c_out) of the LCM boundary condition at (paper) timesteps t."""
    st = timestep_scaling * t
    return sigma_data ** 2 / (st ** 2 + sigma_data ** 2), st / torch.sqrt(st ** 2 + sigma_data ** 2)


class UNetLCM(nn.Module):
    def __init__(self, unet, alphas_cumprod: torch.Tensor, null_class: int, sigma_data: float = 0.5,
                 timestep_scaling: float = 10.0) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("log_sigmas", ((1 - alphas_cumprod.double()) / alphas_cumprod.double()).sqrt().log(), persistent=False)
        self.null_class = int(null_class)
        self.sigma_data, self.timestep_scaling = float(sigma_data), float(timestep_scaling)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        at_zero = sigma <= 0
        t_unet = sigma_to_timestep(sigma.clamp_min(float(self.log_sigmas[0].exp())), self.log_sigmas)
        t_paper = torch.where(at_zero, torch.zeros_like(t_unet), t_unet + 1.0)
        c_skip, c_out = lcm_scalings(t_paper, self.sigma_data, self.timestep_scaling)
        view = (-1,) + (1,) * (x.dim() - 1)
        s = sigma.to(x.dtype).reshape(view)
        labels = torch.full((x.shape[0],), self.null_class, dtype=torch.long) if cond is None else cond.long()
        eps = self.unet(x / torch.sqrt(1 + s ** 2), t_unet.to(x.dtype), class_labels=labels).sample
        x0_hat = x - s * eps
        return c_skip.to(x.dtype).reshape(view) * x + c_out.to(x.dtype).reshape(view) * x0_hat
