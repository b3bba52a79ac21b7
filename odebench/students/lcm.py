"""The LCM consistency function of a discrete-VP student, once, for every source of students.

With i the (fractional) abar index of noise level sigma, x the VE state and x_vp = x / sqrt(1 + sigma^2):
    x0_hat = D(x, sigma) from the network's raw output at timestep i + a (eps, v or sample prediction,
             as the teacher's denoiser: odebench.teachers.discrete.denoised_from_prediction)
    f      = c_skip(i + b) x_skip + c_out(i + b) x0_hat,
    c_skip = sd^2 / ((s t)^2 + sd^2),  c_out = s t / sqrt((s t)^2 + sd^2),  sd = 0.5, s = 10  (PAPER.md)
and sigma = 0 taken as t = 0 (f = x there). A student's timestep convention fixes a, b and x_skip:
    lcm      (LCM-LoRA, LCM-SDXL, TCD, DMD2; diffusers' LCMScheduler)   a = 0, b = 0, x_skip = x_vp
    paper    (layer6ai-labs/direct-cms checkpoints, odebench's SDXL trainer)  a = 1, b = 1, x_skip = x_vp
    odebench (odebench's UNet students, odebench.students.unet_lcm)    a = 0, b = 1, x_skip = x
and the k sampling timesteps (`student_timesteps`):
    lcm:   LCMScheduler.set_timesteps (k of the 0-indexed 50-step grid, e.g. [999, 759, 499, 259])
    paper: round(linspace) over the 1-indexed 100-point grid ([1000], [1000, 500], [1000, 750, 500, 250]).
The function is differentiable (the trainers use it); evaluation wraps it in no_grad.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from odebench.errors import OdebenchError
from odebench.teachers.base import Guidance
from odebench.teachers.discrete import denoised_from_prediction, sigma_to_timestep

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


@dataclass(frozen=True)
class LCMConvention:
    """How a student's network is called and sampled (see the module docstring)."""

    name: str
    unet_offset: float  # a: UNet timestep = abar index + a
    scalings_offset: float  # b: c_skip / c_out at abar index + b
    skip: str  # "vp" (LCMScheduler: c_skip multiplies the VP latent) or "ve"
    schedule: str  # "lcm" (0-indexed LCMScheduler grid) or "paper" (1-indexed N-point grid)
    grid_steps: int  # original_inference_steps (lcm, 50) or the paper grid's N (100)
    trained_for: dict[str, Any] = field(default_factory=dict)  # guidance/grid the student was distilled on

    @property
    def index_offset(self) -> float:
        """Student timestep - abar index: 1 on the paper's 1-indexed grid, 0 on LCMScheduler's."""
        return 1.0 if self.schedule == "paper" else 0.0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "unet_timestep": f"abar index + {self.unet_offset:g}",
                "scalings_timestep": f"abar index + {self.scalings_offset:g}", "c_skip_on": self.skip,
                "schedule": self.schedule, "grid_steps": self.grid_steps, "trained_for": self.trained_for}


LCM = LCMConvention("lcm", 0, 0, "vp", "lcm", 50, {"guidance": "w ~ U[3, 15] (lcm form), sampled per item, zero uncond",
                                                  "grid": "0-indexed 50-step DDIM grid (skip 20)"})
PAPER = LCMConvention("paper", 1, 1, "vp", "paper", 100, {"guidance": Guidance(9.0, "imagen", "zeros").to_dict(),
                                                         "grid": "1-indexed 100-point DDIM grid"})
ODEBENCH = LCMConvention("odebench", 0, 1, "ve", "paper", 100, {})
CONVENTIONS = {"lcm": LCM, "paper": PAPER, "odebench": ODEBENCH}


def lcm_scalings(t: torch.Tensor, sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING):
    """(c_skip, c_out) of the LCM boundary condition at timesteps t."""
    st = timestep_scaling * t
    return sigma_data ** 2 / (st ** 2 + sigma_data ** 2), st / torch.sqrt(st ** 2 + sigma_data ** 2)


def lcm_consistency(x: torch.Tensor, sigma, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    log_sigmas: torch.Tensor, prediction: str = "epsilon", convention: LCMConvention = ODEBENCH,
                    sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING) -> torch.Tensor:
    """f(x, sigma) for VE states x (B, ...) at noise levels sigma (a number or (B,)); `model(x_vp, t)` is one
    network pass on the VP input at timesteps t ((B,) float64), returning its raw output."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
    at_zero = sigma <= 0
    index = sigma_to_timestep(sigma.clamp_min(float(log_sigmas[0].exp())), log_sigmas)
    t_scalings = torch.where(at_zero, torch.zeros_like(index), index + convention.scalings_offset)
    c_skip, c_out = lcm_scalings(t_scalings, sigma_data, timestep_scaling)
    view = (-1,) + (1,) * (x.dim() - 1)
    s = sigma.to(x.dtype).to(x.device).reshape(view)
    x_vp = x / torch.sqrt(1 + s ** 2)
    out = model(x_vp, index + convention.unet_offset).to(x.dtype)
    c_in = 1.0 / torch.sqrt(1.0 + s ** 2) if prediction == "v_prediction" else None
    x0_hat = denoised_from_prediction(x, s, c_in, out, prediction)
    skip = x if convention.skip == "ve" else x_vp
    return c_skip.to(x.dtype).to(x.device).reshape(view) * skip + c_out.to(x.dtype).to(x.device).reshape(view) * x0_hat


def student_timesteps(convention: LCMConvention, k: int, num_train_timesteps: int = 1000) -> list[int]:
    """The k sampling timesteps in the student's own indexing (descending)."""
    n = convention.grid_steps
    if k < 1 or k > n:
        raise OdebenchError(f"{k} sampling steps: expected 1..{n} for a {convention.name} student")
    if convention.schedule == "lcm":  # LCMScheduler.set_timesteps (diffusers), strength 1
        origin = (np.arange(1, n + 1) * (num_train_timesteps // n) - 1)[::-1]
        idx = np.floor(np.linspace(0, n, num=k, endpoint=False)).astype(np.int64)
    else:  # the paper's 1-indexed grid T, T - T/N, ..., T/N; its LCM scheduler rounds the linspace
        origin = (np.arange(1, n + 1) * (num_train_timesteps // n))[::-1]
        idx = np.linspace(0, n, num=k, endpoint=False).round().astype(np.int64)
    return [int(v) for v in origin[idx]]
