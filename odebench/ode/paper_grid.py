"""The paper's grid t_0 > t_1 > ... > t_N: the trainers' distillation grid and the DDIM-100 reference.

Discrete teachers use the paper's 1-indexed grid (PAPER.md): timesteps T, T - T/N, ..., T/N, 0;
timestep t >= 1 sits at noise level sigma_{t-1} of the training schedule and t = 0 is sigma = 0
(the x0 estimate). The LCM scalings see the integer t, as in the paper's code. Rectified-flow teachers
(FLOW_VELOCITY) use their own sampler's N-step grid: the FlowMatchEulerDiscreteScheduler levels their
pipeline samples N steps on (the shift, FLUX's sigmas and dynamic mu at the teacher's resolution), then
t = 0 (the x0 estimate), the flow analogue of the paper's grid (the teacher's DDIM schedule): it is the
discretisation the teacher is sampled on, and the shift puts the steps where its velocity field curves
at that resolution. Other continuous teachers use the Karras schedule of N + 1 levels from sigma_max
down to sigma_min.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from odebench.ode.grids import karras_sigmas
from odebench.ode.steps import METHODS, step


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
    """The N-interval grid of `teacher`: the paper's 1-indexed timestep grid for a discrete schedule
    (the DISCRETE capability), else N + 1 Karras levels."""
    from odebench.teachers.base import DISCRETE

    if teacher.has(DISCRETE):
        total = teacher.num_timesteps
        if total % n:
            raise ValueError(f"grid size N={n} must divide the {total} training timesteps")
        t = torch.arange(total, -1, -total // n, dtype=torch.float64)  # T, T - T/N, ..., 0
        sig = torch.cat([teacher.sigmas[(t[:-1] - 1).long()], torch.zeros(1, dtype=torch.float64)])
        return DistillGrid(sig, t, "discrete-1-indexed")
    from odebench.teachers.base import FLOW_VELOCITY

    if teacher.has(FLOW_VELOCITY):
        return flow_grid(teacher, n)
    sig = karras_sigmas(n + 1, teacher.sigma_min, teacher.sigma_max)
    return DistillGrid(sig, sig.clone(), "karras")


def flow_grid(teacher, n: int) -> DistillGrid:
    """A flow teacher's N-step FlowMatchEulerDiscreteScheduler levels t_0 = 1 > ... > t_{N-1} > t_N = 0, as its
    pipeline sets them (scheduler config and set_timesteps arguments); timesteps are diffusers' 1000 t."""
    import inspect

    from diffusers import FlowMatchEulerDiscreteScheduler

    init = set(inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters)
    sched = FlowMatchEulerDiscreteScheduler.from_config({k: v for k, v in teacher.scheduler_config().items() if k in init})
    sched.set_timesteps(n, **teacher.set_timesteps_kwargs(sched, n))
    sig = sched.sigmas.double()
    return DistillGrid(sig, sig * teacher.num_train_timesteps, "flow-sampler")


GRID_SOLVERS = tuple(METHODS)  # the step table's methods (odebench.ode.steps)


def teacher_step(teacher, x: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor, cond, solver: str) -> torch.Tensor:
    """One solver step of the teacher PF-ODE dx/dsigma = (x - D)/sigma from s to s_next (per item)."""
    return step(teacher, x, s, s_next, cond, solver)


@torch.no_grad()
def solve_on_grid(teacher, x: torch.Tensor, n: torch.Tensor, grid: DistillGrid, cond, solver: str = "ddim") -> torch.Tensor:
    """The teacher's grid solution from each item's own t_n to t_N (items already there stay put).
    From n = 0 with DDIM on the 100-point grid this is the paper's ODE-error reference."""
    x = x.clone()
    for m in range(int(n.min()), grid.n):
        active = n <= m
        if not bool(active.any()):
            continue
        idx = active.nonzero().squeeze(1)
        sub_cond = None if cond is None else cond[idx]
        stepped = teacher_step(teacher, x[idx], grid.sigmas[torch.full_like(idx, m)], grid.sigmas[torch.full_like(idx, m + 1)],
                               sub_cond, solver)
        x = x.index_copy(0, idx, stepped.to(x.dtype))
    return x

