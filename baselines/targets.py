"""The two distillation targets; everything else in the loop is shared (PAPER.md, DESIGN.md section 4).

CM:        x_{n+1} = one teacher step t_n -> t_{n+1}; target = f_student(x_{n+1}, t_{n+1}) under no-grad.
Direct CM: the teacher solves from each item's own t_n to t_N on the grid; target = that endpoint.
A teacher step is DDIM (= Euler in sigma in VE coordinates), Euler (alias) or Heun; a step to
sigma = 0 returns D(x, sigma_n).
"""
from __future__ import annotations

from typing import Callable

import torch

from odebench.ode.paper_grid import GRID_SOLVERS as SOLVERS, solve_on_grid, teacher_step  # noqa: F401 (SOLVERS re-exported)


@torch.no_grad()
def cm_target(student: Callable, teacher, x_n, n: torch.Tensor, grid, cond, solver: str) -> torch.Tensor:
    """f_student(teacher_step(x_n, t_n -> t_{n+1}), t_{n+1}); `student` is the student itself (the paper) or its EMA."""
    x_next = teacher_step(teacher, x_n, grid.sigmas[n], grid.sigmas[n + 1], cond, solver)
    return student(x_next, n + 1)


@torch.no_grad()
def direct_target(teacher, x_n, n: torch.Tensor, grid, cond, solver: str) -> torch.Tensor:
    """The teacher's grid solution from each item's own t_n to t_N (the same solve as the DDIM-100 reference)."""
    return solve_on_grid(teacher, x_n, n, grid, cond, solver)
