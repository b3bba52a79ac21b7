"""The two distillation targets; everything else in the loop is shared (PAPER.md, DESIGN.md section 4).

CM:        x_{n+1} = one teacher step t_n -> t_{n+1}; target = f_student(x_{n+1}, t_{n+1}) under no-grad.
Direct CM: the teacher solves from each item's own t_n to t_N on the grid; target = that endpoint.
A teacher step is DDIM (= Euler in sigma in VE coordinates), Euler (alias) or Heun; a step to
sigma = 0 returns D(x, sigma_n).
"""
from __future__ import annotations

from typing import Callable

import torch

SOLVERS = ("ddim", "euler", "heun")


def teacher_step(teacher, x: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor, cond, solver: str) -> torch.Tensor:
    """One solver step of the teacher PF-ODE dx/dsigma = (x - D)/sigma from s to s_next (per item)."""
    view = (-1,) + (1,) * (x.dim() - 1)
    d = teacher.denoise(x, s.to(x.dtype), cond)
    sv, nv = s.to(x.dtype).reshape(view), s_next.to(x.dtype).reshape(view)
    x_euler = d + (nv / sv) * (x - d)  # DDIM: x_next = D + sigma_next/sigma (x - D)
    if solver in ("ddim", "euler"):
        return x_euler
    # Heun (Karras Alg. 1): average the slopes at both ends where sigma_next > 0
    positive = s_next > 0
    if not bool(positive.any()):
        return x_euler
    d2 = teacher.denoise(x_euler, torch.where(positive, s_next, s).to(x.dtype), cond)
    slope = (x - d) / sv
    slope2 = (x_euler - d2) / torch.where(positive, s_next, s).to(x.dtype).reshape(view)
    x_heun = x + (nv - sv) * 0.5 * (slope + slope2)
    return torch.where(positive.reshape(view), x_heun, x_euler)


@torch.no_grad()
def cm_target(student: Callable, teacher, x_n, n: torch.Tensor, grid, cond, solver: str) -> torch.Tensor:
    """f_student(teacher_step(x_n, t_n -> t_{n+1}), t_{n+1}) (no EMA: the paper's released setting)."""
    x_next = teacher_step(teacher, x_n, grid.sigmas[n], grid.sigmas[n + 1], cond, solver)
    return student(x_next, n + 1)


@torch.no_grad()
def direct_target(teacher, x_n, n: torch.Tensor, grid, cond, solver: str) -> torch.Tensor:
    """The teacher's grid solution from each item's own t_n to t_N (items already there stay put)."""
    x = x_n.clone()
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
