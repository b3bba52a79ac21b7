"""The probability-flow ODE of a teacher as a torchdiffeq right-hand side, in three variables.

sigma time:     dx/dsigma     = (x - D(x, sigma)) / sigma        (Karras et al. 2022, eq. 1)
log-sigma time: dx/dlog sigma = x - D(x, sigma)                  (u = log sigma, same ODE)
lambda time:    dy/dlambda    = D(y / lambda, 1 / lambda)        (y = x / sigma, lambda = 1 / sigma)

The lambda form is the data-prediction exponential integrator (Lu et al. 2022, DPM-Solver++ eq. 9-10,
with lambda = 1/sigma instead of log-SNR): from y = x/sigma, dy/dsigma = (dx/dsigma)/sigma - x/sigma^2
= -D/sigma^2 and dlambda/dsigma = -1/sigma^2, so dy/dlambda = D. The linear part x/sigma of the drift
is absorbed into the variables and integrated exactly; Euler in lambda is DDIM exactly:
x' = (sigma'/sigma) x + (1 - sigma'/sigma) D. For a single Gaussian N(mu, s^2 I) the flow is
y(lambda) = mu lambda + c sqrt(s^2 lambda^2 + 1) (c constant per sample), a smooth hyperbola that
becomes linear in lambda as sigma -> 0, which Runge-Kutta steps follow with few, long steps.
Log-sigma time keeps steps well scaled near sigma_min, where plain sigma time needs tiny dt.
"""
from __future__ import annotations

import torch

from odebench.teachers.base import Teacher

TIME_VARIABLES = ("lambda", "log-sigma", "sigma")


class PFODE(torch.nn.Module):
    """Drift of the PF-ODE in `time` variables; counts function evaluations and accepted/rejected steps."""

    def __init__(self, teacher: Teacher, cond: torch.Tensor | None, time: str = "log-sigma") -> None:
        super().__init__()
        if time not in TIME_VARIABLES:
            raise ValueError(f"unknown time variable {time!r}")
        self.teacher = teacher
        self.cond = cond
        self.time = time
        self.nfe = 0
        self.accepted = 0
        self.rejected = 0
        # for the solver's error messages: where it last evaluated, and how many drifts were not finite
        # (kept as tensors: no device sync per evaluation)
        self.last_t: torch.Tensor | None = None
        self.non_finite: torch.Tensor | int = 0

    def sigma_of(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level of time(s) t; torchdiffeq hands t in the state dtype, so go through float64."""
        return sigma_of(t, self.time)

    def forward(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        self.last_t = t
        sigma = self.sigma_of(t)
        # a per-sample t (shape (B,)) gives each sample its own noise level (per-sample step control)
        s = sigma.to(state.dtype)
        s_b = s.reshape(-1, *([1] * (state.dim() - 1))) if s.ndim else s
        x = to_x(state, s_b, self.time)
        d = self.teacher.denoise(x, s, self.cond)
        if self.time == "lambda":
            drift = d
        else:
            drift = x - d if self.time == "log-sigma" else (x - d) / s_b
        self.non_finite = self.non_finite + (~torch.isfinite(drift)).any()
        return drift

    # torchdiffeq calls these on adaptive solvers (>= 0.2.3).
    def callback_accept_step(self, t0, y0, dt) -> None:
        self.accepted += 1

    def callback_reject_step(self, t0, y0, dt) -> None:
        self.rejected += 1


def time_of(sigma: torch.Tensor, time: str) -> torch.Tensor:
    """The integration variable for noise level(s) sigma: log sigma, sigma or lambda = 1/sigma."""
    if time == "log-sigma":
        return torch.log(sigma)
    return 1.0 / sigma if time == "lambda" else sigma


def sigma_of(t: torch.Tensor, time: str) -> torch.Tensor:
    """Inverse of time_of, in float64."""
    t = t.double()
    if time == "log-sigma":
        return torch.exp(t)
    return 1.0 / t if time == "lambda" else t


def to_state(x: torch.Tensor, sigma, time: str) -> torch.Tensor:
    """The integrated state for x at noise level sigma: y = x / sigma in lambda time, else x."""
    return x / sigma if time == "lambda" else x


def to_x(state: torch.Tensor, sigma, time: str) -> torch.Tensor:
    """Inverse of to_state: x = sigma y in lambda time, else the state itself."""
    return state * sigma if time == "lambda" else state
