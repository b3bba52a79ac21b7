"""The distillation grid t_0 > t_1 > ... > t_N shared by CM and Direct CM.

Discrete teachers use the paper's 1-indexed grid (PAPER.md): timesteps T, T - T/N, ..., T/N, 0;
timestep t >= 1 sits at noise level sigma_{t-1} of the training schedule and t = 0 is sigma = 0
(the x0 estimate). The LCM scalings see the integer t, as in the paper's code. Continuous
teachers use the Karras schedule of N + 1 levels from sigma_max down to sigma_min.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from odebench.ode.grids import karras_sigmas


@dataclass(frozen=True)
class DistillGrid:
    sigmas: torch.Tensor  # (N+1,) float64, descending; the last is 0 (discrete) or sigma_min
    timesteps: torch.Tensor  # (N+1,) float64: the paper's integer t (discrete) or sigma (continuous)
    kind: str

    @property
    def n(self) -> int:
        return self.sigmas.shape[0] - 1

    def describe(self) -> dict:
        return {"kind": self.kind, "N": self.n, "first": float(self.timesteps[0]), "last": float(self.timesteps[-1])}


def grid_for(teacher, n: int) -> DistillGrid:
    if hasattr(teacher, "sigmas") and hasattr(teacher, "num_timesteps"):  # discrete VP teacher
        total = teacher.num_timesteps
        if total % n:
            raise ValueError(f"grid size N={n} must divide the {total} training timesteps")
        t = torch.arange(total, -1, -total // n, dtype=torch.float64)  # T, T - T/N, ..., 0
        sig = torch.cat([teacher.sigmas[(t[:-1] - 1).long()], torch.zeros(1, dtype=torch.float64)])
        return DistillGrid(sig, t, "discrete-1-indexed")
    sig = karras_sigmas(n + 1, teacher.sigma_min, teacher.sigma_max)
    return DistillGrid(sig, sig.clone(), "karras")
