"""LCM-parameterised consistency student on a class-conditional UNet (discrete VP teachers).

f(x, sigma) = c_skip(t) x + c_out(t) x0_hat, with x0_hat = x - sigma eps(x / sqrt(1 + sigma^2), t - 1)
in VE coordinates and the LCM boundary scalings (PAPER.md):
    c_skip = sd^2 / ((s t)^2 + sd^2),  c_out = s t / sqrt((s t)^2 + sd^2),  sd = 0.5, s = 10,
where t is the paper's 1-indexed integer timestep (t >= 1 sits at sigma_{t-1}; t = 0 is sigma = 0,
where f(x, 0) = x). Off the grid t is the fractional timestep of sigma, plus one. This is the
`odebench` convention of the one consistency function, odebench.students.lcm.
"""
from __future__ import annotations

import torch
from torch import nn

from odebench.students.lcm import ODEBENCH, lcm_consistency, lcm_scalings  # noqa: F401 (lcm_scalings re-exported)


class UNetLCM(nn.Module):
    state_dtype = None  # the ODE state is the weights' dtype
    prediction = "epsilon"

    def __init__(self, unet, alphas_cumprod: torch.Tensor, null_class: int, sigma_data: float = 0.5,
                 timestep_scaling: float = 10.0) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("log_sigmas", ((1 - alphas_cumprod.double()) / alphas_cumprod.double()).sqrt().log(), persistent=False)
        self.null_class = int(null_class)
        self.sigma_data, self.timestep_scaling = float(sigma_data), float(timestep_scaling)

    @property
    def num_classes(self) -> int:
        return self.null_class  # labels 0..C-1, then the null label C used for the unconditional branch

    @property
    def sample_shape(self) -> tuple[int, ...]:
        cfg = self.unet.config
        return (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))

    def checkpoint_keys(self) -> list[str] | None:
        return None  # every tensor (a full fine-tune, or a LoRA merged at export)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        labels = torch.full((x.shape[0],), self.null_class, dtype=torch.long) if cond is None else cond.long()

        def model(x_vp, t):
            return self.unet(x_vp, t.to(x.dtype), class_labels=labels).sample

        return lcm_consistency(x, sigma, model, self.log_sigmas, self.prediction, ODEBENCH, self.sigma_data,
                               self.timestep_scaling)
