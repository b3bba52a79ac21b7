"""Discrete-schedule adapter: a VP model trained on T integer timesteps, seen as an EDM denoiser.

For a VP schedule with cumulative alphas abar_t (Karras et al. 2022, Table 1, "VP" with discrete t):
  sigma_t = sqrt((1 - abar_t)/abar_t); the VE state is x = x_vp / sqrt(abar_t), so x_vp = c_in x
  with c_in = 1/sqrt(1 + sigma^2); pure noise x_vp = z at t = T-1 is x = z sqrt(1 + sigma_max^2).
  epsilon-prediction: D = x - sigma eps;  v-prediction: D = c_in^2 x - sigma c_in v;
  sample-prediction: D = the network output.
A noise level between two trained timesteps maps to a fractional timestep by linear interpolation
of log sigma over the table, as k-diffusion and diffusers' Euler scheduler do. The same adapter
serves the embedded digits UNet and SDXL.
"""
from __future__ import annotations

from abc import abstractmethod

import torch

from odebench.teachers.base import DISCRETE, VP, Teacher

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def denoised_from_prediction(x: torch.Tensor, s: torch.Tensor, c_in: torch.Tensor, out: torch.Tensor,
                             prediction: str) -> torch.Tensor:
    """D (the x0 estimate) in VE coordinates from a VP network's raw output at noise level s, c_in = 1/sqrt(1 + s^2):
    eps: x - s eps;  v (v = sqrt(abar) eps - sqrt(1 - abar) x0): c_in^2 x - s c_in v;  sample: the output itself."""
    if prediction == "epsilon":
        return x - s * out
    if prediction == "v_prediction":
        return c_in ** 2 * x - s * c_in * out
    return out


def scaled_linear_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000) -> torch.Tensor:
    """SD/SDXL schedule: betas = linspace(sqrt(b0), sqrt(b1), T)^2, abar = cumprod(1 - betas); float64."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigma_to_timestep(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional timestep of noise level(s) sigma: linear interpolation of log sigma over the
    increasing table `log_sigmas` (clamped to its range), float64."""
    ls = log_sigmas.to(sigma.device)
    log_sigma = sigma.double().clamp(float(ls[0].exp()), float(ls[-1].exp())).log()
    hi = torch.searchsorted(ls, log_sigma).clamp(1, ls.shape[0] - 1)
    lo = hi - 1
    w = (log_sigma - ls[lo]) / (ls[hi] - ls[lo])
    return lo.double() + w.clamp(0, 1)


class DiscreteVPTeacher(Teacher):
    """Subclasses implement `_model(x_in, t, cond)`: one pass of the network on VP input x_in at
    fractional timesteps t (B,), returning its raw prediction (eps or v).

    `timestep_shift` = 1 reproduces the paper's released DDIM code, which reads abar at index t-1
    but hands the network the integer t (PAPER.md); 0 (default) gives the network the timestep
    that belongs to sigma."""

    timestep_shift: float = 0.0
    capabilities = frozenset({DISCRETE})
    process = VP

    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str = "epsilon") -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}")
        self.alphas_cumprod = alphas_cumprod.double()
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()  # increasing in t
        self.log_sigmas = self.sigmas.log()
        self.prediction = prediction
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    @property
    def num_timesteps(self) -> int:
        return self.sigmas.shape[0]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep by linear interpolation of log sigma between trained timesteps (float64)."""
        return sigma_to_timestep(sigma, self.log_sigmas)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of sigma_to_t: log sigma interpolated at fractional t."""
        t = t.double().clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        w = t - lo
        ls = self.log_sigmas.to(t.device)
        return ((1 - w) * ls[lo] + w * ls[lo + 1]).exp()

    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The timestep the network sees at noise level sigma (float64)."""
        return self.sigma_to_t(sigma) + self.timestep_shift

    def with_timestep_shift(self, shift: float) -> "DiscreteVPTeacher":
        """A view of this teacher whose network sees sigma's timestep + shift (shares model and counter)."""
        import copy

        other = copy.copy(self)
        other.timestep_shift = float(shift)
        return other

    def ode_identity(self):
        ident = super().ode_identity()
        if self.timestep_shift:  # a different ODE; absent when 0 so existing cache keys stay valid
            ident["timestep_shift"] = self.timestep_shift
        return ident

    @abstractmethod
    def _model(self, x_in: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """Raw network output for VP input x_in at fractional timesteps t; cond None = unconditional."""

    def _scalings(self, x: torch.Tensor, sigma: torch.Tensor):
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return s, 1.0 / torch.sqrt(1.0 + s ** 2)

    def _to_denoised(self, x: torch.Tensor, s: torch.Tensor, c_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return denoised_from_prediction(x, s, c_in, out.to(x.dtype), self.prediction)

    def _denoise(self, x, sigma, cond):
        s, c_in = self._scalings(x, sigma)
        return self._to_denoised(x, s, c_in, self._model(x * c_in, self.model_timestep(sigma), cond))
