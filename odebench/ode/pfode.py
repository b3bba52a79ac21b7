"""The probability-flow ODE of a teacher as a torchdiffeq right-hand side.

sigma time:     dx/dsigma     = (x - D(x, sigma)) / sigma        (Karras et al. 2022, eq. 1)
log-sigma time: dx/dlog sigma = x - D(x, sigma)                  (u = log sigma, same ODE)
Log-sigma time keeps steps well scaled near sigma_min, where plain sigma time needs tiny dt.
"""
from __future__ import annotations

import torch

from odebench.teachers.base import Teacher


class PFODE(torch.nn.Module):
    """Drift of the PF-ODE; counts function evaluations and accepted/rejected steps."""

    def __init__(self, teacher: Teacher, cond: torch.Tensor | None, time: str = "log-sigma") -> None:
        super().__init__()
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
        # torchdiffeq hands t in the state dtype; go through float64 for the exp.
        return torch.exp(t.double()) if self.time == "log-sigma" else t.double()

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        self.last_t = t
        sigma = self.sigma_of(t).to(x.dtype)
        d = self.teacher.denoise(x, sigma, self.cond)
        drift = x - d if self.time == "log-sigma" else (x - d) / sigma
        self.non_finite = self.non_finite + (~torch.isfinite(drift)).any()
        return drift

    # torchdiffeq calls these on adaptive solvers (>= 0.2.3).
    def callback_accept_step(self, t0, y0, dt) -> None:
        self.accepted += 1

    def callback_reject_step(self, t0, y0, dt) -> None:
        self.rejected += 1


def time_of(sigma: torch.Tensor, time: str) -> torch.Tensor:
    """The integration variable for noise level(s) sigma."""
    return torch.log(sigma) if time == "log-sigma" else sigma
